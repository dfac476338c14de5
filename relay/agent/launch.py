"""RelayLaunch: what one `relay serve` process is started with, written and read by one type.

The control plane's provisioner builds a RelayLaunch per room and turns it into a command line
and an environment (`argv()`, `env()`); the relay process turns them back (`parse()`), so the
two sides cannot disagree on a flag. Secrets (the room key, the agent secret) travel in the
environment, never in argv, which `ps` shows to every user of the machine:

    RELAY_ROOM_KEY, RELAY_AGENT_SECRET         secrets: the environment only when written
    RELAY_TOKEN_PUBLIC_KEY, RELAY_CONTROL_URL, RELAY_TIER, RELAY_CAPS,
    RELAY_HEARTBEAT_INTERVAL, RELAY_IDLE_HEARTBEAT_INTERVAL
                                               read when the flag is absent

Under Agones (AGONES_SDK_HTTP_PORT set) a relay starts without a room; the allocation brings
the room key, namespace and room later (relay/agent/agones.py).
"""

from __future__ import annotations

import argparse
import functools
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields, replace

from relay.agent.config import DEFAULT_HEARTBEAT_INTERVAL, DEFAULT_IDLE_HEARTBEAT_INTERVAL, AgentConfig
from relay.agent.tiers import get_tier
from relay.protocol.keys import decode_room_key
from relay.server.config import RelayConfig, doc, field_doc

ENV_ROOM_KEY = "RELAY_ROOM_KEY"
ENV_AGENT_SECRET = "RELAY_AGENT_SECRET"
ENV_TOKEN_PUBLIC_KEY = "RELAY_TOKEN_PUBLIC_KEY"
ENV_CONTROL_URL = "RELAY_CONTROL_URL"
ENV_TIER = "RELAY_TIER"
ENV_CAPS = "RELAY_CAPS"
ENV_HEARTBEAT_INTERVAL = "RELAY_HEARTBEAT_INTERVAL"
ENV_IDLE_HEARTBEAT_INTERVAL = "RELAY_IDLE_HEARTBEAT_INTERVAL"
ENV_AGONES = "AGONES_SDK_HTTP_PORT"

LAUNCH_ENV = (
    ENV_ROOM_KEY,
    ENV_AGENT_SECRET,
    ENV_TOKEN_PUBLIC_KEY,
    ENV_CONTROL_URL,
    ENV_TIER,
    ENV_CAPS,
    ENV_HEARTBEAT_INTERVAL,
    ENV_IDLE_HEARTBEAT_INTERVAL,
)
"""Every variable a relay reads for its launch: a spawner passes none of them on from its own
environment, so what a relay does is what its RelayLaunch says."""

CAPS_MODES = ("soft", "cgroup")

SECRET_FLAGS = ("--room-key", "--agent-secret", "--token-public-key")
"""Their values are base64url, which begins with "-" one time in 64: argparse would take such a
value for an option (a standby's rehearsal died of it, and `relay serve --room-key KEY` with
a key from getRoom would too), so the value after one of these is always taken as its value."""

# RelayConfig fields with flags of their own below; every other field is a tunable flag
_ROOM_FIELDS = ("room_key", "host", "port", "admin_host", "admin_port", "token_public_key")
TUNABLES = tuple(f.name for f in fields(RelayConfig) if f.name not in _ROOM_FIELDS)


class LaunchError(ValueError):
    """A command line or environment that does not describe a relay (names the flag)."""


@dataclass(frozen=True, slots=True)
class RelayLaunch:
    relay: RelayConfig = field(default_factory=RelayConfig)
    control_url: str | None = doc(None, "the control plane's internal API; None: no agent")
    namespace: str | None = doc(None, "the room's namespace (with control_url)")
    room: str | None = doc(None, "the room's name (with control_url)")
    incarnation: str | None = doc(
        None, "which incarnation of the room this relay serves (public: its reports name it)"
    )
    agent_secret: str = doc("", "the room's agent secret; a secret")
    advertise_host: str | None = doc(None, "the ipAddress clients are told")
    heartbeat_interval: float = doc(DEFAULT_HEARTBEAT_INTERVAL, "seconds between heartbeats, room in use")
    idle_heartbeat_interval: float = doc(DEFAULT_IDLE_HEARTBEAT_INTERVAL, "seconds between heartbeats, quiet")
    tier: str | None = doc(None, 'the caps this relay keeps to, e.g. "realtime1.nano"; None: none')
    caps: str = doc("soft", '"cgroup": the spawner capped this process; "soft": kept in-process only')
    log_level: str = doc("info", "debug, info, warning or error")

    def agent(self) -> AgentConfig | None:
        """The agent's configuration; None when there is no control plane to report to."""
        if not self.control_url:
            return None
        return AgentConfig(
            control_url=self.control_url,
            namespace=self.namespace or "",
            room=self.room or "",
            incarnation=self.incarnation,
            agent_secret=self.agent_secret,
            advertise_host=self.advertise_host,
            heartbeat_interval=self.heartbeat_interval,
            idle_heartbeat_interval=self.idle_heartbeat_interval,
        )

    # ---- writing -----------------------------------------------------------------------------

    def argv(self) -> list[str]:
        """The flags after `relay serve`: every setting that is not a default, no secrets."""
        r, base = self.relay, RelayConfig()
        out = ["--host", r.host, "--port", str(r.port)]
        if r.admin_port is not None:
            out += ["--admin-port", str(r.admin_port)]
        if r.admin_host != base.admin_host:
            out += ["--admin-host", r.admin_host]
        if r.token_public_key:
            out += ["--token-public-key", r.token_public_key]
        for name in ("control_url", "namespace", "room", "incarnation", "advertise_host", "tier"):
            value = getattr(self, name)
            if value:
                out += [_flag(name), value]
        if self.caps != "soft":
            out += ["--caps", self.caps]
        defaults = RelayLaunch()
        for name in ("heartbeat_interval", "idle_heartbeat_interval", "log_level"):
            if getattr(self, name) != getattr(defaults, name):
                out += [_flag(name), str(getattr(self, name))]
        for name in TUNABLES:
            value = getattr(r, name)
            if value == getattr(base, name):
                continue
            if isinstance(value, bool):  # --gs2-clients / --no-gs2-clients
                out.append(_flag(name) if value else "--no-" + name.replace("_", "-"))
            else:
                out += [_flag(name), repr(value)]
        return out

    def env(self) -> dict[str, str]:
        """The secrets, for the relay's environment."""
        out = {ENV_ROOM_KEY: self.relay.room_key}
        if self.agent_secret:
            out[ENV_AGENT_SECRET] = self.agent_secret
        return out

    # ---- reading -----------------------------------------------------------------------------

    @classmethod
    def parse(
        cls, argv: Sequence[str], environ: Mapping[str, str] | None = None, room_key_required: bool = True
    ) -> RelayLaunch:
        """Reads `relay serve` flags, then the environment for what they leave out. Raises
        LaunchError naming the flag (or variable) that is wrong. `room_key_required` False reads
        flags meant for many rooms (the control plane's relay_extra_args)."""
        env = os.environ if environ is None else environ
        parser = _parser()
        try:
            args = parser.parse_args(_bind_secret_values(list(argv)))
        except _ParseError as exc:
            raise LaunchError(str(exc)) from None
        room_key = args.room_key or env.get(ENV_ROOM_KEY, "")
        if room_key or (room_key_required and not env.get(ENV_AGONES)):
            try:
                decode_room_key(room_key)
            except ValueError as exc:
                where = "--room-key" if args.room_key else f"--room-key (or {ENV_ROOM_KEY})"
                raise LaunchError(f"{where}: {exc}") from None
        tier = args.tier or env.get(ENV_TIER) or None
        if tier:
            try:
                get_tier(tier)
            except ValueError as exc:
                raise LaunchError(f"--tier: {exc}") from None
        caps = args.caps or env.get(ENV_CAPS) or "soft"
        if caps not in CAPS_MODES:
            raise LaunchError(f"--caps (or {ENV_CAPS}): must be one of {', '.join(CAPS_MODES)}, not {caps!r}")
        relay = RelayConfig(
            room_key=room_key,
            host=args.host,
            port=args.port,
            admin_host=args.admin_host,
            admin_port=args.admin_port,
            token_public_key=args.token_public_key or env.get(ENV_TOKEN_PUBLIC_KEY) or None,
            **{name: getattr(args, name) for name in TUNABLES},
        )
        launch = cls(
            relay=relay,
            control_url=args.control_url or env.get(ENV_CONTROL_URL) or None,
            namespace=args.namespace,
            room=args.room,
            incarnation=args.incarnation,
            agent_secret=args.agent_secret or env.get(ENV_AGENT_SECRET, ""),
            advertise_host=args.advertise_host,
            heartbeat_interval=_seconds(
                args.heartbeat_interval, env, ENV_HEARTBEAT_INTERVAL, DEFAULT_HEARTBEAT_INTERVAL
            ),
            idle_heartbeat_interval=_seconds(
                args.idle_heartbeat_interval,
                env,
                ENV_IDLE_HEARTBEAT_INTERVAL,
                DEFAULT_IDLE_HEARTBEAT_INTERVAL,
            ),
            tier=tier,
            caps=caps,
            log_level=args.log_level,
        )
        try:
            launch.agent()
        except ValueError as exc:
            raise LaunchError(f"--control-url: {exc}") from None
        return launch

    def with_room(self, **relay: object) -> RelayLaunch:
        """A copy with RelayConfig fields replaced."""
        return replace(self, relay=replace(self.relay, **relay))  # type: ignore[arg-type]


def caps_env(tier: str, mode: str) -> dict[str, str]:
    """The environment by which a spawner tells a relay which tier it keeps to and who enforces
    it (relay/host/capped_spawner.py: it wraps any spawner, so it cannot rewrite argv)."""
    if mode not in CAPS_MODES:
        raise ValueError(f"caps mode must be one of {CAPS_MODES}")
    return {ENV_TIER: tier, ENV_CAPS: mode}


def room_of(args: Sequence[str]) -> tuple[str | None, str | None]:
    """(namespace, room) named by a `relay serve` command line, e.g. /proc/PID/cmdline's."""
    found = _flag_values(args, ("--namespace", "--room"))
    return found["--namespace"], found["--room"]


def incarnation_of(args: Sequence[str]) -> str | None:
    """The room incarnation a `relay serve` command line serves (None: a relay that names none)."""
    return _flag_values(args, ("--incarnation",))["--incarnation"]


def _flag_values(args: Sequence[str], flags: tuple[str, ...]) -> dict[str, str | None]:
    found: dict[str, str | None] = dict.fromkeys(flags)
    for i, arg in enumerate(args):
        for flag in flags:
            if arg == flag and i + 1 < len(args):
                found[flag] = args[i + 1]
            elif arg.startswith(flag + "="):
                found[flag] = arg.split("=", 1)[1]
    return found


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _seconds(flag: float | None, env: Mapping[str, str], variable: str, default: float) -> float:
    if flag is not None:
        return flag
    text = env.get(variable, "").strip()
    if not text:
        return default
    try:
        return float(text)
    except ValueError:
        raise LaunchError(f"{variable}: {text!r} is not a number of seconds") from None


def _bind_secret_values(argv: list[str]) -> list[str]:
    out: list[str] = []
    i = 0
    while i < len(argv):
        if argv[i] in SECRET_FLAGS and i + 1 < len(argv):
            out.append(f"{argv[i]}={argv[i + 1]}")
            i += 2
        else:
            out.append(argv[i])
            i += 1
    return out


class _ParseError(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    """Raises instead of exiting, so a caller (a standby, a test) decides what a bad line does."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise _ParseError(message)


@functools.cache
def _parser() -> argparse.ArgumentParser:
    """Built once, in the zygote template's rehearsal (relay/host/template.py): a relay forked
    from it then only parses, instead of building some forty actions in pages it shares with the
    template (each write there a copy-on-write fault on the way to registering). Defaults that
    come from the environment are read at parse time, not here, so they are the relay's own."""
    base = RelayConfig()
    p = _Parser(
        prog="relay serve",
        description="Run one relay for one room: UDP and WebSocket on one port number.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        add_help=False,  # parse() reads a launch and never exits; `relay serve --help` prints usage()
    )
    room = p.add_argument_group("the room")
    room.add_argument("--host", default=base.host, help=field_doc(RelayConfig, "host"))
    room.add_argument("--port", type=int, default=base.port, help=field_doc(RelayConfig, "port"))
    room.add_argument("--room-key", help=f"{field_doc(RelayConfig, 'room_key')} (or env {ENV_ROOM_KEY})")
    room.add_argument("--admin-host", default=base.admin_host, help=field_doc(RelayConfig, "admin_host"))
    room.add_argument("--admin-port", type=int, default=None, help=field_doc(RelayConfig, "admin_port"))
    room.add_argument(
        "--token-public-key",
        help=f"{field_doc(RelayConfig, 'token_public_key')} (or env {ENV_TOKEN_PUBLIC_KEY})",
    )
    agent = p.add_argument_group("the agent (registration with a control plane)")
    agent.add_argument(
        "--control-url", help=f"{field_doc(RelayLaunch, 'control_url')} (or env {ENV_CONTROL_URL})"
    )
    agent.add_argument("--namespace", help=field_doc(RelayLaunch, "namespace"))
    agent.add_argument("--room", help=field_doc(RelayLaunch, "room"))
    agent.add_argument("--incarnation", help=field_doc(RelayLaunch, "incarnation"))
    agent.add_argument(
        "--agent-secret", help=f"{field_doc(RelayLaunch, 'agent_secret')} (or env {ENV_AGENT_SECRET})"
    )
    agent.add_argument("--advertise-host", help=field_doc(RelayLaunch, "advertise_host"))
    agent.add_argument(
        "--heartbeat-interval",
        type=float,
        help=f"{field_doc(RelayLaunch, 'heartbeat_interval')} (or env {ENV_HEARTBEAT_INTERVAL}; "
        f"default {DEFAULT_HEARTBEAT_INTERVAL})",
    )
    agent.add_argument(
        "--idle-heartbeat-interval",
        type=float,
        help=f"{field_doc(RelayLaunch, 'idle_heartbeat_interval')} (or env {ENV_IDLE_HEARTBEAT_INTERVAL}; "
        f"default {DEFAULT_IDLE_HEARTBEAT_INTERVAL})",
    )
    caps = p.add_argument_group("caps")
    caps.add_argument("--tier", help=f"{field_doc(RelayLaunch, 'tier')} (or env {ENV_TIER})")
    caps.add_argument(
        "--caps",
        choices=CAPS_MODES,
        help=f"{field_doc(RelayLaunch, 'caps')} (or env {ENV_CAPS}; default soft)",
    )
    p.add_argument("--log-level", default="info", choices=("debug", "info", "warning", "error"))
    limits = p.add_argument_group("limits and timing")
    types = {f.name: f.type for f in fields(RelayConfig)}
    for name in TUNABLES:
        if types[name] in (bool, "bool"):  # a switch: --name and --no-name
            limits.add_argument(
                _flag(name),
                action=argparse.BooleanOptionalAction,
                default=getattr(base, name),
                help=field_doc(RelayConfig, name),
            )
            continue
        kind = float if types[name] in (float, "float") else int
        limits.add_argument(
            _flag(name), type=kind, default=getattr(base, name), help=field_doc(RelayConfig, name)
        )
    return p


def usage() -> str:
    """`relay serve --help`."""
    return _parser().format_help()
