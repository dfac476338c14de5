"""`relay dev`, `relay control` and `relay token` (relay/cli.py dispatches here).

Settings come from, lowest first: ControlConfig defaults, a JSON config file (--config),
RELAY_* environment variables, then flags.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import sys
from pathlib import Path
from typing import Any

import uvloop

from relay.control.auth import Setting, load_signing_key
from relay.control.config import ControlConfig
from relay.protocol import tokens


def _parser(prog: str, dev: bool) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description=__doc__)
    p.add_argument("--config", help="JSON config file (keys as ControlConfig fields)")
    p.add_argument("--host", help="bind address (default 127.0.0.1)")
    p.add_argument("--port", type=int, help="port (default 7700; 0 = any free port)")
    p.add_argument("--data-dir", help="data directory (default ./.relay)")
    p.add_argument(
        "--store",
        help="postgresql://user:password@host:port/db to share one database between several nodes "
        "(default: SQLite in the data dir; env RELAY_STORE_URL)",
    )
    p.add_argument("--node-id", help="this node's name among several (default <hostname>:<port>)")
    p.add_argument("--client-id", help="project client id (env RELAY_CLIENT_ID)")
    p.add_argument("--client-secret", help="project client secret (env RELAY_CLIENT_SECRET)")
    p.add_argument("--region")
    p.add_argument("--owner-id")
    p.add_argument("--public-url", help="base URL relays use to reach this control plane")
    p.add_argument("--provisioner", choices=["local", "agones", "none"])
    p.add_argument("--agones-namespace", help="namespace of the relay Fleet (--provisioner agones)")
    p.add_argument("--agones-fleet", help="the relay Fleet to allocate from (--provisioner agones)")
    p.add_argument("--agones-kubeconfig", help="kubeconfig file; default: the pod's service account")
    p.add_argument("--relay-host", help="--host for spawned relays")
    p.add_argument("--advertise-host", help="ipAddress clients are told for local relays")
    p.add_argument("--heartbeat-interval", type=float)
    p.add_argument("--idle-heartbeat-interval", type=float)
    p.add_argument("--missed-heartbeats", type=int)
    p.add_argument("--webhook-url", help="POST room-ready notifications here")
    p.add_argument("--operation-log", help="operation log path (default <data dir>/operations.log)")
    p.add_argument(
        "--require-user-tokens",
        action="store_true",
        default=None,
        help="relays refuse JOIN without a user access token",
    )
    p.add_argument(
        "--gs2-clients",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="relays accept GS2 game clients (GS2's own wire, not encrypted) beside native ones "
        "(default: yes; docs/gs2-clients.md)",
    )
    p.add_argument(
        "--relay-caps",
        choices=["auto", "cgroup", "soft", "off"],
        help="how relay tier caps are enforced (default auto: cgroups where writable, else soft)",
    )
    p.add_argument(
        "--warm-relays",
        type=int,
        help="relays kept started ahead of demand (default 2; 0: none; env RELAY_RELAY_WARM_RELAYS)",
    )
    p.add_argument("--log-level", choices=["debug", "info", "warning", "error"])
    if not dev:
        p.add_argument(
            "--stop-relays-on-exit",
            action="store_true",
            default=None,
            help="stop every relay when the control plane exits (default: leave them serving)",
        )
    return p


def build_config(args: argparse.Namespace, dev: bool, environ: dict[str, str] | None = None) -> ControlConfig:
    base = ControlConfig(stop_relays_on_exit=dev, demo=dev)
    if args.config:
        base = ControlConfig.from_file(args.config, base)
    base = ControlConfig.from_env(base, environ)
    flags: dict[str, Any] = {
        "host": args.host,
        "port": args.port,
        "data_dir": args.data_dir,
        "store_url": args.store,
        "node_id": args.node_id,
        "client_id": args.client_id,
        "client_secret": args.client_secret,
        "region": args.region,
        "owner_id": args.owner_id,
        "public_url": args.public_url,
        "provisioner": args.provisioner,
        "agones_namespace": args.agones_namespace,
        "agones_fleet": args.agones_fleet,
        "agones_kubeconfig": args.agones_kubeconfig,
        "relay_host": args.relay_host,
        "advertise_host": args.advertise_host,
        "heartbeat_interval": args.heartbeat_interval,
        "idle_heartbeat_interval": args.idle_heartbeat_interval,
        "missed_heartbeats": args.missed_heartbeats,
        "webhook_url": args.webhook_url,
        "operation_log": args.operation_log,
        "relay_require_user_tokens": args.require_user_tokens,
        "relay_gs2_clients": args.gs2_clients,
        "relay_caps": args.relay_caps,
        "relay_warm_relays": args.warm_relays,
        "log_level": args.log_level,
        "stop_relays_on_exit": getattr(args, "stop_relays_on_exit", None),
    }
    return ControlConfig.from_mapping(flags, base)


def _banner(cp: Any, dev: bool) -> str:
    url = cp.url
    a = cp.authority
    lines = [
        f"gs2-relay control plane on {url}  (pid {os.getpid()}, data {cp.config.data_dir.resolve()})",
        f"  GS2 REST: {url}/realtime   login: {url}/identifier/projectToken/login",
        f"  OpenAPI: {url}/openapi.json",
        f"  gateway: ws://{url.split('://', 1)[1]}/gateway?token=<user token>   metrics: {url}/metrics",
        f"  RELAY_CLIENT_ID={a.client_id}",
        f"  RELAY_CLIENT_SECRET={a.client_secret}",
        f"  token public key (relay --token-public-key): {a.public_key_text}",
    ]
    if cp.demo_mounted:
        lines.append(f"  demo page: {url}/demo/")
    if dev:
        login = (
            f"T=$(curl -s -XPOST {url}/identifier/projectToken/login -d "
            f'\'{{"client_id":"{a.client_id}","client_secret":"{a.client_secret}"}}\' '
            "| python3 -c 'import json,sys;print(json.load(sys.stdin)[\"access_token\"])')"
        )
        lines += [
            "",
            "Try it (login first, then three steps):",
            f"  {login}",
            f'  curl -s -XPOST {url}/realtime/ -H "Authorization: Bearer $T" '
            '-d \'{"name":"ns1","serverType":"relay","serverSpec":"realtime1.nano"}\'',
            f'  curl -s -XPOST {url}/realtime/ns1/room -H "Authorization: Bearer $T" '
            '-d \'{"name":"room1"}\'',
            f"  {Path(sys.executable).name} -m relay.control.example --url {url} "
            "--namespace ns1 --room room1",
        ]
    return "\n".join(lines)


async def _serve(config: ControlConfig, dev: bool) -> int:
    from relay.control.app import ControlPlane

    cp = ControlPlane(config)
    await cp.start()
    print(_banner(cp, dev), flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    serve = loop.create_task(cp.serve_forever())
    waiter = loop.create_task(stop.wait())
    await asyncio.wait({serve, waiter}, return_when=asyncio.FIRST_COMPLETED)
    waiter.cancel()
    await cp.stop()
    return 0


def _main(argv: list[str] | None, dev: bool) -> int:
    args = _parser("relay dev" if dev else "relay control", dev).parse_args(argv)
    config = build_config(args, dev)
    logging.basicConfig(
        level=getattr(logging, config.log_level.upper(), logging.INFO),
        format='{"time":"%(asctime)s","level":"%(levelname)s","logger":"%(name)s","message":"%(message)s"}',
        stream=sys.stderr,
    )
    try:
        return uvloop.run(_serve(config, dev))
    except KeyboardInterrupt:
        return 0
    except OSError as exc:
        print(f"cannot start the control plane: {exc}", file=sys.stderr)
        return 1


def dev_main(argv: list[str] | None = None) -> int:
    """Everything on this machine: control plane on 127.0.0.1:7700, data in ./.relay, local relays."""
    return _main(argv, dev=True)


def control_main(argv: list[str] | None = None) -> int:
    """The control plane alone (relays keep serving when it stops, unless --stop-relays-on-exit)."""
    return _main(argv, dev=False)


def shared_setting(config: ControlConfig) -> Setting:
    """Where the control plane keeps what its nodes share (its signing key): the same place
    `ControlPlane` reads it from (relay/control/state.py: open_cluster)."""
    from relay.control.state import open_cluster
    from relay.control.store import open_store

    return open_cluster(config, open_store(config), config.node_id or "relay-token", {}).setting


def token_main(argv: list[str] | None = None) -> int:
    """Prints a user access token (last line) signed with the data dir's key."""
    p = argparse.ArgumentParser(prog="relay token", description=token_main.__doc__)
    p.add_argument("--user", required=True, help="user id the token is for")
    p.add_argument("--ttl", type=int, help="lifetime in seconds (default: user_token_ttl, 3600)")
    p.add_argument("--data-dir", help="data directory of the control plane (default ./.relay)")
    p.add_argument("--store", help="the control plane's PostgreSQL store, where its key is kept")
    p.add_argument("--config", help="JSON config file")
    args = p.parse_args(argv)
    base = ControlConfig.from_file(args.config) if args.config else ControlConfig()
    config = ControlConfig.from_env(base)
    if args.data_dir:
        config = config.replace(data_dir=Path(args.data_dir))
    if args.store:
        config = config.replace(store_url=args.store)
    key = load_signing_key(shared_setting(config))
    ttl = args.ttl or config.user_token_ttl
    from relay.control.auth import USER_ISSUER

    print(f"# user {args.user}, valid {ttl}s, public key {tokens.public_key_to_text(key.public_key())}")
    print(tokens.mint(key, args.user, ttl, issuer=USER_ISSUER))
    return 0
