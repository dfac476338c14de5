"""`relay dev`, `relay control` and `relay token`: the control plane from the command line.

Every setting is a flag, a RELAY_* variable and a key of the --config file (relay/settings.py,
relay/control/config.py); a wrong one is one line on stderr and exit status 2. A port that cannot
be listened on, or another failure to start, is one line and exit status 1.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
from typing import Any

import uvloop

from relay.agent.launch import RelayLaunch
from relay.control.auth import SIGNING_KEY_FILE, USER_ISSUER, Setting, file_setting, read_signing_key
from relay.control.config import DEV_DEFAULTS, SURFACE, ControlConfig
from relay.logs import configure
from relay.protocol import tokens
from relay.settings import (
    EXIT_FAILURE,
    CommandParser,
    ListenError,
    SettingsError,
    add_flags,
    fail,
    os_error,
    typed_command,
)

DESCRIPTIONS = {
    True: "Run the whole system on this machine: the control plane on http://127.0.0.1:7700, "
    "data in ./.relay, a relay process per room, the demo page. Ctrl-C stops it and its relays.",
    False: "Run the control plane: the GS2-Realtime API, the gateway, and relays for rooms (one "
    "process per room, or Agones). Relays keep serving when it stops, unless "
    "--stop-relays-on-exit.",
}
EPILOG = (
    "Every flag is also a RELAY_* variable (shown with it) and a key of the --config file; a flag "
    "wins over a variable, a variable over the file. docs/operations.md lists them all."
)


def _parser(prog: str, dev: bool) -> argparse.ArgumentParser:
    p = CommandParser(prog=prog, description=DESCRIPTIONS[dev], epilog=EPILOG)
    p.add_argument(
        "--config",
        metavar="FILE",
        help='a JSON file of settings by name, e.g. {"heartbeat_interval": 1}; a name that is not '
        "a setting is refused",
    )
    add_flags(p, SURFACE, defaults=DEV_DEFAULTS if dev else None)
    return p


def build_config(args: argparse.Namespace, dev: bool, environ: dict[str, str] | None = None) -> ControlConfig:
    """The command's settings: its defaults, --config, RELAY_* variables, then its flags."""
    given = {k: v for k, v in vars(args).items() if k != "config"}
    return ControlConfig.load(
        flags=given, environ=environ, file=args.config, defaults=DEV_DEFAULTS if dev else None
    )


def _banner(cp: Any, dev: bool) -> str:
    url = cp.url
    a = cp.authority
    lines = [
        f"gs2-relay control plane on {url}  (pid {os.getpid()}, data {cp.config.data_dir.resolve()})",
        f"  GS2 REST: {url}/realtime   login: {url}/identifier/projectToken/login",
        f"  OpenAPI: {url}/openapi.json",
        f"  gateway: ws://{url.split('://', 1)[1]}/gateway?token=<user token>   metrics: {url}/metrics",
        "  project credentials (for an SDK; paste into another shell):",
        f"    export RELAY_CLIENT_ID={a.client_id}",
        f"    export RELAY_CLIENT_SECRET={a.client_secret}",
        f"  token public key (relay serve --token-public-key): {a.public_key_text}",
    ]
    if cp.demo_mounted:
        lines.append(f"  demo page: {url}/demo/")
    if dev:
        idle = _idle_timeout(cp.config)
        lines += [
            "",
            "Try it, in another terminal from this folder: it makes namespace ns1 and room room1,",
            f"joins the room and says hello (a room nobody is in closes after {idle:g} s, and its record",
            "goes with it; running this again makes it anew):",
            f"  {typed_command()} -m relay.control.example --url {url} --namespace ns1 --room room1",
        ]
    return "\n".join(lines)


def _idle_timeout(config: ControlConfig) -> float:
    """The idle timeout local relays get (relay_extra_args may set one)."""
    return RelayLaunch.parse(
        list(config.relay_extra_args), environ={}, room_key_required=False
    ).relay.idle_timeout


async def _serve(config: ControlConfig, dev: bool) -> int:
    from relay.control.app import ControlPlane

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    # before the start (seconds: the zygote template, adopting relays): a SIGTERM meanwhile is a
    # stop once started, not the default death that leaves --stop-relays-on-exit's relays running
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    cp = ControlPlane(config)
    await cp.start()
    print(_banner(cp, dev), flush=True)
    serve = loop.create_task(cp.serve_forever())
    waiter = loop.create_task(stop.wait())
    await asyncio.wait({serve, waiter}, return_when=asyncio.FIRST_COMPLETED)
    waiter.cancel()
    await cp.stop()
    return 0


def _main(argv: list[str] | None, dev: bool) -> int:
    prog = "relay dev" if dev else "relay control"
    try:
        config = build_config(_parser(prog, dev).parse_args(argv), dev)
    except SettingsError as exc:
        return fail(prog, exc)
    configure(config.log_level, config.log_format)
    try:
        return uvloop.run(_serve(config, dev))
    except KeyboardInterrupt:
        return 0
    except SettingsError as exc:  # a setting only starting could judge (store_url, relay_caps)
        return fail(prog, exc)
    except ListenError as exc:
        return fail(
            prog, os_error(exc, f"cannot listen on {exc.where}", "choose another with --port"), EXIT_FAILURE
        )
    except OSError as exc:  # the data dir cannot be made or written, ...
        what = f"{exc.filename}: {(exc.strerror or str(exc)).lower()}" if exc.filename else str(exc)
        return fail(prog, f"cannot start the control plane: {what}", EXIT_FAILURE)


def dev_main(argv: list[str] | None = None) -> int:
    """Everything on this machine: control plane on 127.0.0.1:7700, data in ./.relay, local relays."""
    return _main(argv, dev=True)


def control_main(argv: list[str] | None = None) -> int:
    """The control plane alone (relays keep serving when it stops, unless --stop-relays-on-exit)."""
    return _main(argv, dev=False)


def shared_setting(config: ControlConfig) -> Setting:
    """Where the control plane keeps what its nodes share (its signing key): the same place
    `ControlPlane` reads it from (relay/control/state.py: open_cluster). With SQLite that is the
    data dir, read without opening the store (which would make a database where none was)."""
    if not config.store_url or config.store_url.startswith("sqlite:"):
        return file_setting(config.data_dir)
    from relay.control.state import open_cluster
    from relay.control.store import open_store

    return open_cluster(config, open_store(config), config.node_id or "relay-token", {}).setting


def token_main(argv: list[str] | None = None) -> int:
    """Prints a user access token (last line) signed with the control plane's key."""
    prog = "relay token"
    p = CommandParser(
        prog=prog,
        description="Print a user access token (on the last line) that the control plane and its "
        "relays accept, signed with the control plane's key in its data folder.",
    )
    p.add_argument("--user", required=True, help="the user id the token is for")
    p.add_argument(
        "--ttl",
        dest="user_token_ttl",
        metavar="SECONDS",
        default=argparse.SUPPRESS,
        help="how long it stays valid (default: the user_token_ttl setting, 3600)",
    )
    p.add_argument(
        "--data-dir",
        dest="data_dir",
        metavar="DIR",
        default=argparse.SUPPRESS,
        help="the control plane's data folder, which holds its signing key (default: ./.relay; env "
        "RELAY_DATA_DIR)",
    )
    p.add_argument(
        "--store",
        dest="store_url",
        metavar="URL",
        default=argparse.SUPPRESS,
        help="the control plane's PostgreSQL store, which keeps its key when several nodes share "
        "it (default: none, the data folder's key; env RELAY_STORE_URL)",
    )
    p.add_argument("--config", metavar="FILE", help="the control plane's JSON config file")
    try:
        args = p.parse_args(argv)
        names = ("user_token_ttl", "data_dir", "store_url")
        given = {k: getattr(args, k) for k in names if hasattr(args, k)}
        config = ControlConfig.load(flags=given, file=args.config, flag_names={"user_token_ttl": "--ttl"})
        if not args.user.strip():
            raise SettingsError("--user: a user id is required")
        key = read_signing_key(shared_setting(config))
    except SettingsError as exc:
        return fail(prog, exc)
    except (ConnectionError, OSError) as exc:  # the PostgreSQL store cannot be reached
        return fail(prog, f"cannot read the signing key: {exc}", EXIT_FAILURE)
    if key is None:
        if config.store_url and not config.store_url.startswith("sqlite:"):
            return fail(
                prog, "no signing key in the store's settings: no control plane has started on it yet"
            )
        return fail(
            prog,
            f"no signing key at {(config.data_dir / SIGNING_KEY_FILE).resolve()}: run this in the folder "
            "`relay dev` runs in, or point at the control plane's data folder with --data-dir DIR (or "
            "RELAY_DATA_DIR), or at its PostgreSQL store with --store URL",
        )
    ttl = config.user_token_ttl
    print(f"# user {args.user}, valid {ttl}s, public key {tokens.public_key_to_text(key.public_key())}")
    print(tokens.mint(key, args.user, ttl, issuer=USER_ISSUER))
    return 0
