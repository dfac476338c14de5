"""RelayLaunch: what one `relay serve` process is started with, written and read by one type.

The control plane's provisioner builds a RelayLaunch per room and turns it into a command line
and an environment (`argv()`, `env()`); the relay process turns them back (`parse()`), so the
two sides cannot disagree on a flag. Every setting (RelayLaunch's and RelayConfig's) is a flag
`--name` and a variable `RELAY_NAME`; a flag wins over its variable (relay/settings.py checks
both, and names the one that is wrong). Secrets (the room key, the agent secret) travel in the
environment, never in argv, which `ps` shows to every user of the machine:

    RELAY_ROOM_KEY, RELAY_AGENT_SECRET         secrets: the environment only when written
    RELAY_PORT, RELAY_TIER, RELAY_IDLE_TIMEOUT, ...  read when the flag is absent (a container)

Under Agones (AGONES_SDK_HTTP_PORT set) a relay starts without a room; the allocation brings
the room key, namespace and room later (relay/agent/agones.py).
"""

from __future__ import annotations

import argparse
import functools
import os
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Literal

from pydantic import Field, field_validator
from pydantic.dataclasses import dataclass

from relay.agent.config import (
    DEFAULT_HEARTBEAT_INTERVAL,
    DEFAULT_IDLE_HEARTBEAT_INTERVAL,
    AgentConfig,
    HeartbeatSeconds,
)
from relay.agent.http11 import url_problem
from relay.agent.tiers import get_tier
from relay.server.config import RelayConfig, doc
from relay.settings import (
    CONFIG,
    CommandParser,
    SettingsError,
    Surface,
    add_flags,
    env_layer,
    fields_of,
    flag_layer,
    merge,
    validate,
)

ENV_ROOM_KEY = "RELAY_ROOM_KEY"
ENV_AGENT_SECRET = "RELAY_AGENT_SECRET"
ENV_TOKEN_PUBLIC_KEY = "RELAY_TOKEN_PUBLIC_KEY"
ENV_CONTROL_URL = "RELAY_CONTROL_URL"
ENV_TIER = "RELAY_TIER"
ENV_CAPS = "RELAY_CAPS"
ENV_HEARTBEAT_INTERVAL = "RELAY_HEARTBEAT_INTERVAL"
ENV_IDLE_HEARTBEAT_INTERVAL = "RELAY_IDLE_HEARTBEAT_INTERVAL"
ENV_AGONES = "AGONES_SDK_HTTP_PORT"

CAPS_MODES = ("soft", "cgroup")

DASH_VALUE_FLAGS = ("--room-key", "--agent-secret", "--token-public-key", "--namespace", "--room")
"""Flags whose value may begin with "-": base64url (one time in 64) and GS2 names ("-x" is a
valid room name). argparse would take such a value for an option (a standby's rehearsal died of
it, a room named "-x" never got a relay, one named "-h" got `relay serve`'s help), so the value
after one of these is always taken as its value."""

# RelayConfig fields with flags of their own below; every other field is a tunable flag
_ROOM_FIELDS = ("room_key", "host", "port", "admin_host", "admin_port", "token_public_key")
TUNABLES = tuple(name for name in fields_of(RelayConfig) if name not in _ROOM_FIELDS)


class LaunchError(SettingsError):
    """A command line or environment that does not describe a relay (names the flag)."""


@dataclass(frozen=True, slots=True, config=CONFIG)
class RelayLaunch:
    relay: RelayConfig = Field(default_factory=RelayConfig)
    control_url: str | None = doc(
        None, "the control plane's internal API (its public URL + /internal); none: no agent, no registration"
    )
    namespace: str | None = doc(None, "the room's namespace (with control_url)")
    room: str | None = doc(None, "the room's name (with control_url)")
    incarnation: str | None = doc(
        None, "which incarnation of the room this relay serves (its reports name it; not a secret)"
    )
    agent_secret: str = doc(
        "",
        "the room's agent secret, for its reports (with control_url); a secret",
        secret=True,
        shown_default="none",
    )
    advertise_host: str | None = doc(None, "the ipAddress clients are told; none: the bound address")
    heartbeat_interval: HeartbeatSeconds = doc(
        DEFAULT_HEARTBEAT_INTERVAL, "seconds between heartbeats while anyone is in the room"
    )
    idle_heartbeat_interval: HeartbeatSeconds = doc(
        DEFAULT_IDLE_HEARTBEAT_INTERVAL, "seconds between heartbeats while the room is quiet"
    )
    tier: str | None = doc(
        None, 'the caps this relay keeps to, e.g. "realtime1.nano" (docs/tiers.md); none: no caps'
    )
    caps: Literal["soft", "cgroup"] = doc(
        "soft",
        "who enforces the tier: cgroup (a spawner or the container capped this process) or soft (in-process)",
    )
    log_level: Literal["debug", "info", "warning", "error"] = doc(
        "info", "the least severe log records written"
    )
    log_format: Literal["json", "text"] = doc("json", "log records on stderr as JSON lines or as plain text")

    @field_validator("tier")
    @classmethod
    def _tier(cls, value: str | None) -> str | None:
        if value:
            get_tier(value)  # ValueError naming the known tiers
        return value or None

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
            if value is not None:  # an empty value too: it reads back as given, not as unset
                out += [_flag(name), value]
        if self.caps != "soft":
            out += ["--caps", self.caps]
        defaults = RelayLaunch()
        for name in ("heartbeat_interval", "idle_heartbeat_interval", "log_level", "log_format"):
            if getattr(self, name) != getattr(defaults, name):
                out += [_flag(name), str(getattr(self, name))]
        for name in TUNABLES:
            value = getattr(r, name)
            if value == getattr(base, name):
                continue
            if isinstance(value, bool):  # --gs2-clients / --no-gs2-clients
                out.append(_flag(name) if value else "--no-" + name.replace("_", "-"))
            else:  # repr keeps a float's every digit; a path or name goes as it is
                out += [_flag(name), value if isinstance(value, str) else repr(value)]
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
        """Reads `relay serve` flags, then RELAY_* variables for what they leave out. Raises
        LaunchError naming the flag (or variable) that is wrong. `room_key_required` False reads
        flags meant for many rooms (the control plane's relay_extra_args)."""
        env = os.environ if environ is None else environ
        try:
            args = _parser().parse_args(bind_dash_values(list(argv)))
            merged = merge([env_layer(SURFACE, env), flag_layer(SURFACE, vars(args))])
            if not merged.values.get("room_key") and room_key_required and not env.get(ENV_AGONES):
                raise LaunchError(
                    f"--room-key (or {ENV_ROOM_KEY}) is required: the room's key, getRoom's encryptionKey"
                )
            launch = validate(cls, merged, relay=validate(RelayConfig, merged))
        except LaunchError:
            raise
        except SettingsError as exc:
            raise LaunchError(str(exc)) from None
        if launch.control_url and not (launch.namespace and launch.room):
            raise LaunchError("--control-url needs --namespace and --room (the room this relay reports)")
        if launch.control_url and (problem := url_problem(launch.control_url)):
            raise LaunchError(f"--control-url: {problem}")
        return launch

    def room_config(self) -> RelayConfig:
        """The relay's configuration as it runs: with a tier and no CPU budget of its own, the
        tier's CPU is its budget (it paces within it, relay/server/pacing.py)."""
        if self.tier and self.relay.cpu_budget is None:
            return replace(self.relay, cpu_budget=get_tier(self.tier).cpu)
        return self.relay

    def with_room(self, **relay: object) -> RelayLaunch:
        """A copy with RelayConfig fields replaced."""
        return replace(self, relay=replace(self.relay, **relay))  # type: ignore[arg-type]


SURFACE = Surface((RelayLaunch, RelayConfig), hidden=frozenset({"relay"}))
"""`relay serve`'s settings: a flag --name and a variable RELAY_NAME each."""

_AGENT_FIELDS = (
    "control_url",
    "namespace",
    "room",
    "incarnation",
    "agent_secret",
    "advertise_host",
    "heartbeat_interval",
    "idle_heartbeat_interval",
)

LAUNCH_ENV = SURFACE.env_names()
"""Every variable a relay reads for its launch: a spawner passes none of them on from its own
environment, so what a relay does is what its RelayLaunch says."""


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


def bind_dash_values(argv: list[str]) -> list[str]:
    """`--room -x` as `--room=-x` (DASH_VALUE_FLAGS)."""
    out: list[str] = []
    i = 0
    while i < len(argv):
        if argv[i] in DASH_VALUE_FLAGS and i + 1 < len(argv):
            out.append(f"{argv[i]}={argv[i + 1]}")
            i += 2
        else:
            out.append(argv[i])
            i += 1
    return out


@functools.cache
def _parser() -> argparse.ArgumentParser:
    """Built once, in the zygote template's rehearsal (relay/host/template.py): a relay forked
    from it then only parses, instead of building some forty actions in pages it shares with the
    template (each write there a copy-on-write fault on the way to registering). Nothing here
    comes from the environment: absent flags are absent, and the variables are read at parse
    time, so they are the relay's own."""
    p = CommandParser(
        prog="relay serve",
        description="Run one relay for one room: UDP and WebSocket on one port number. Every "
        "setting is a flag or a RELAY_* variable; a flag wins. See docs/operations.md.",
        add_help=False,  # parse() reads a launch and never exits; `relay serve --help` prints usage()
    )
    p.add_argument("-h", "--help", action="store_true", help="show this help and exit")
    groups = (
        ("the room", _ROOM_FIELDS),
        ("the agent (registration with a control plane)", _AGENT_FIELDS),
        ("caps", ("tier", "caps")),
        ("logs", ("log_level", "log_format")),
        ("limits and timing", TUNABLES),
    )
    for title, names in groups:
        add_flags(p.add_argument_group(title), SURFACE, names)
    return p


def usage() -> str:
    """`relay serve --help`."""
    return _parser().format_help()
