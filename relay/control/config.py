"""Every setting of the control plane in one typed place: a frozen pydantic dataclass whose
attribute docstrings are the help of its flags and the settings table of docs/operations.md.

Values are checked when a ControlConfig is made: a wrong type or a value out of range is a
ValidationError in code, and one line naming the setting and its source on the command line
(`ControlConfig.load`, relay/settings.py). Sources, lowest first: defaults, a JSON file
(--config), RELAY_* variables (RELAY_<NAME>; host and port are RELAY_CONTROL_HOST/PORT, since
RELAY_HOST/RELAY_PORT are `relay serve`'s), flags.
"""

from __future__ import annotations

import dataclasses
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, field_validator, model_validator
from pydantic.dataclasses import dataclass

from relay.agent.config import HeartbeatSeconds
from relay.agent.launch import RelayLaunch
from relay.agent.tiers import get_tier
from relay.server.config import Count, Port, Positive, Seconds, SecondsOrZero
from relay.server.tls import server_context
from relay.settings import (
    CONFIG,
    Layer,
    Surface,
    Words,
    defaults_layer,
    env_layer,
    file_layer,
    flag_layer,
    merge,
    validate,
)


def default_relay_command() -> tuple[str, ...]:
    """How the local provisioner starts one relay: `python -m relay.cli serve` of this interpreter."""
    return (sys.executable, "-m", "relay.cli", "serve")


STORE_SCHEMES = ("sqlite:///", "postgresql://", "postgres://")
"""The stores built in (relay/control/store.py: open_store)."""


def _url(value: str | None) -> str | None:
    if value and not value.startswith(("http://", "https://")):
        raise ValueError("must be an http:// or https:// URL")
    return value or None


@dataclass(frozen=True, config=CONFIG)
class ControlConfig:
    # --- listening -------------------------------------------------------------------------
    host: str = "127.0.0.1"
    """Address the API, the gateway and the relays' internal API listen on (0.0.0.0: every
    address)."""
    port: Port = 7700
    """Port of the API (0: any free port)."""
    public_url: str | None = Field(default=None, json_schema_extra={"shown_default": "http://HOST:PORT"})
    """Base URL relays reach this control plane at (its /internal API)."""
    api_tls_cert: Path | None = None
    """PEM certificate chain: the API, /gateway and /internal are served over HTTPS (reloaded
    when the file changes). This node's relays verify it at public_url, or without one at this
    node's own address (checked at the start); a private CA reaches them as SSL_CERT_FILE."""
    api_tls_key: Path | None = None
    """PEM private key of api_tls_cert; both or neither."""

    demo: bool = Field(default=False, json_schema_extra={"shown_default": "false (relay dev: true)"})
    """Serve the demo page at /demo/ and its dev-only API; only on a loopback host
    (docs/security.md)."""

    # --- identity --------------------------------------------------------------------------
    region: str = "ap-northeast-1"
    """Region in GRNs (grn:gs2:REGION:OWNER:realtime:...)."""
    owner_id: str = "owner-0001"
    """Owner id in GRNs and in the login answer."""
    client_id: str | None = Field(default=None, json_schema_extra={"shown_default": "generated"})
    """Project client id for login; when it or the secret is unset, a pair is generated once and
    kept in DATA_DIR/credentials.json."""
    client_secret: str | None = Field(
        default=None, json_schema_extra={"shown_default": "generated", "secret": True}
    )
    """Project client secret for login."""
    project_token_ttl: Positive = 3600
    """Seconds a project token from login stays valid."""
    user_token_ttl: Positive = 3600
    """Seconds a user access token stays valid unless its minting says otherwise."""

    # --- storage ---------------------------------------------------------------------------
    data_dir: Path = Path(".relay")
    """Folder of everything kept: the store (SQLite), signing.key, credentials.json, logs."""
    store_url: str | None = Field(
        default=None, json_schema_extra={"shown_default": "DATA_DIR/control.db", "secret": True}
    )
    """Where room records are kept: none for SQLite in the data dir (one node), sqlite:///PATH
    for another file, or postgresql://USER:PASSWORD@HOST:PORT/DATABASE (postgres:// too), which
    several control-plane nodes share (docs/operations.md, "Several nodes")."""
    store_pool_size: Positive = 10
    """PostgreSQL: connections a node keeps open for requests (plus one for its cluster session),
    all opened at start. Ignored with SQLite."""
    node_id: str | None = Field(default=None, json_schema_extra={"shown_default": "HOSTNAME:PORT"})
    """PostgreSQL: this node's name among those sharing the store; after a restart it adopts the
    relays it started under it. Two running nodes must not share one. Ignored with SQLite."""

    # --- provisioning ----------------------------------------------------------------------
    provisioner: Literal["local", "agones", "none"] = "local"
    """How rooms get relays: local (one relay process per room on this machine), agones (a
    GameServerAllocation per room, docs/agones.md) or none (records only; relays are started
    elsewhere and register)."""
    agones_namespace: str = "default"
    """With agones: the Kubernetes namespace of the relay Fleet."""
    agones_fleet: str = "gs2-relay"
    """With agones: the Fleet rooms are allocated from."""
    agones_kubeconfig: Path | None = Field(default=None, json_schema_extra={"shown_default": "in-cluster"})
    """With agones: a kubeconfig file; none uses the pod's service account."""
    agones_allocate_for: Seconds = 10.0
    """With agones: seconds an allocation is retried while the Fleet has no Ready relay, before
    the room fails (provision_failed)."""
    relay_command: Words = Field(
        default_factory=default_relay_command,
        json_schema_extra={"shown_default": "this Python's relay serve"},
    )
    """Command that starts one relay; the room's `relay serve` flags are appended."""
    relay_host: str = "127.0.0.1"
    """Address local relays listen on (0.0.0.0 to serve other machines)."""
    advertise_host: str | None = Field(default=None, json_schema_extra={"shown_default": "relay_host"})
    """Address clients are told to reach local relays at (getRoom's ipAddress)."""
    relay_extra_args: Words = ()
    """Extra `relay serve` flags for every local relay, e.g. "--idle-timeout 30"."""
    relay_require_user_tokens: bool = False
    """Relays refuse a JOIN without a user access token for its user id (`relay token`, or the
    /auth/login API)."""
    relay_gs2_clients: bool = True
    """Relays accept GS2 game clients (GS2's own wire: signed, not encrypted) beside native ones
    (docs/gs2-clients.md, docs/security.md)."""
    stop_grace: Seconds = 3.0
    """Seconds between SIGTERM and SIGKILL when a relay is stopped."""
    relay_spawner: Literal["zygote", "subprocess"] = "zygote"
    """How local relays start: zygote (forked from a pre-imported template: milliseconds, shared
    memory) or subprocess (a fresh interpreter each)."""
    relay_warm_relays: Count = 2
    """Standby relays kept started ahead of demand (zygote only), each costing what an idle room
    costs; 0: none."""
    relay_rooms_per_process: Positive = 1
    """Rooms one local relay process serves: 1, a process per room (isolation: a room's crash or
    caps are its own); N > 1, the rooms-per-process tier: rooms share a process and its caps (the
    tier's times N, one cgroup) and a crash, for far less CPU per message (docs/tiers.md); no
    warm standbys then (a group's free seats are its warm relays)."""
    relay_tier: str = "realtime1.nano"
    """Caps every local relay keeps to (docs/tiers.md)."""
    relay_caps: Literal["auto", "cgroup", "soft", "off"] = "auto"
    """How the caps are enforced: auto (cgroups where this host lets us, else soft), cgroup
    (refuse to start without), soft (in-process), off."""
    stop_relays_on_exit: bool = Field(
        default=False, json_schema_extra={"shown_default": "false (relay dev: true)"}
    )
    """Stop every relay when the control plane stops (otherwise they keep serving, and the next
    start adopts them)."""
    max_rooms: Count = 2000
    """Rooms (starting or ready) this host runs at once; wantRoom beyond answers 503. 0: no
    limit. See Capacity in docs/operations.md."""
    memory_headroom_rooms: Annotated[float, Field(ge=0)] = 8.0
    """A room is refused (503) while free memory is below this many tier memory caps (8 x 64 MiB
    = 512 MiB); 0: no check."""

    # --- abuse -----------------------------------------------------------------------------
    login_failures_per_source: Count = 10
    """Failed project logins one address may make per login_failure_window before login answers
    429, even to the right secret. Behind a proxy every client is the proxy. 0: no limit."""
    login_failures_per_client: Count = 100
    """Failed logins per login_failure_window naming one client id, from any address. 0: no
    limit."""
    login_failure_window: Seconds = 60.0
    """Seconds in which both failed-login budgets refill (evenly)."""
    request_deadline: Seconds = 10.0
    """Seconds an HTTP request has to arrive whole (headers and body) from its connection's
    opening or its first byte; a client slower than that is disconnected, so trickling clients
    cannot hold the control plane's file descriptors."""
    gateway_sockets_per_user: Positive = 4
    """/gateway WebSockets one user may hold at once; a newer one closes the oldest (4409), so a
    client reconnecting past a half-open socket is never locked out and one token cannot hold
    the control plane's sockets."""

    # --- liveness --------------------------------------------------------------------------
    heartbeat_interval: HeartbeatSeconds = 2.0
    """Seconds between a relay's heartbeats while anyone is in its room."""
    idle_heartbeat_interval: HeartbeatSeconds = 30.0
    """Seconds between heartbeats of a quiet room (nobody in it)."""
    missed_heartbeats: Positive = 3
    """A relay silent for this many of its promised heartbeat gaps is lost: its record is removed
    and its process stopped."""
    register_timeout: Seconds = 60.0
    """Seconds a new relay has to register before its room fails (register_timeout)."""
    sweep_interval: Seconds = 0.5
    """Seconds between looks for lost relays."""

    # --- notifications / logs --------------------------------------------------------------
    webhook_url: str | None = None
    """Room-ready notifications are also POSTed to this URL."""
    operation_log: Path | None = Field(
        default=None, json_schema_extra={"shown_default": "DATA_DIR/operations.log"}
    )
    """The operation log (JSON lines: rooms created, ready, closed and why)."""
    relay_log_keep_seconds: SecondsOrZero = 86400.0
    """An ended room's relay log is removed this long after its last write; 0: kept forever."""
    relay_log_max_bytes: Count = Field(
        default=16 << 20, json_schema_extra={"shown_default": "16777216 (16 MiB)"}
    )
    """A running relay's log past this size is cut (copied to LOG.1, then emptied); 0: never."""
    prometheus_targets: Path | None = Field(
        default=None, json_schema_extra={"shown_default": "DATA_DIR/prometheus/relays.json"}
    )
    """The ready relays' /metrics endpoints, as a Prometheus file_sd list."""
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    """The least severe log records written."""
    log_format: Literal["json", "text"] = "json"
    """Log records on stderr as JSON lines or as plain text."""

    @model_validator(mode="after")
    def _api_tls(self) -> ControlConfig:
        if bool(self.api_tls_cert) != bool(self.api_tls_key):
            raise ValueError("api_tls_cert and api_tls_key go together: give both or neither")
        if self.api_tls_cert and self.api_tls_key:
            server_context(str(self.api_tls_cert), str(self.api_tls_key))  # TlsError names the files
        return self

    @field_validator("relay_tier")
    @classmethod
    def _tier(cls, value: str) -> str:
        get_tier(value)  # ValueError naming the known tiers
        return value

    @field_validator("public_url", "webhook_url")
    @classmethod
    def _urls(cls, value: str | None) -> str | None:
        return _url(value)

    @field_validator("store_url")
    @classmethod
    def _store(cls, value: str | None) -> str | None:
        if value and not value.startswith(STORE_SCHEMES):
            raise ValueError(
                f"must be {' or '.join(s + '...' for s in STORE_SCHEMES)} (or none: SQLite in the data dir)"
            )
        return value or None

    @field_validator("relay_extra_args")
    @classmethod
    def _extra_args(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        relay = RelayLaunch.parse(list(value), environ={}, room_key_required=False).relay  # names the flag
        if relay.tls_cert and relay.tls_key:  # every relay would fail to start: say so once, now
            server_context(relay.tls_cert, relay.tls_key)
        return value

    @property
    def db_path(self) -> Path:
        if self.store_url and self.store_url.startswith("sqlite:///"):
            return Path(self.store_url.removeprefix("sqlite:///"))
        return self.data_dir / "control.db"

    @property
    def operation_log_path(self) -> Path:
        return self.operation_log or self.data_dir / "operations.log"

    @property
    def prometheus_targets_path(self) -> Path:
        return self.prometheus_targets or self.data_dir / "prometheus" / "relays.json"

    @property
    def lost_after(self) -> float:
        return self.heartbeat_interval * self.missed_heartbeats

    @property
    def longest_heartbeat_gap(self) -> float:
        """The longest gap an agent may promise (a quiet room's; never below the active one)."""
        return max(self.heartbeat_interval, self.idle_heartbeat_interval)

    @property
    def idle_lost_after(self) -> float:
        return self.longest_heartbeat_gap * self.missed_heartbeats

    def replace(self, **changes: Any) -> ControlConfig:
        """A copy with `changes`, checked as a new ControlConfig is."""
        return dataclasses.replace(self, **changes)

    @classmethod
    def load(
        cls,
        flags: Mapping[str, Any] | None = None,
        environ: Mapping[str, str] | None = None,
        file: str | os.PathLike[str] | None = None,
        defaults: Mapping[str, Any] | None = None,
        defaults_of: str = "relay dev",
        flag_names: Mapping[str, str] | None = None,
    ) -> ControlConfig:
        """The settings of a command: `defaults` (a command's own, e.g. `relay dev`'s), the
        JSON `file`, RELAY_* variables (this process's when `environ` is None), then `flags`.
        SettingsError (one line, naming the setting and where it was given) when one is wrong."""
        layers: list[Layer] = []
        if defaults:
            layers.append(defaults_layer(defaults, defaults_of))
        if file is not None:
            layers.append(file_layer(SURFACE, file))
        layers.append(env_layer(SURFACE, os.environ if environ is None else environ))
        if flags:
            layers.append(flag_layer(SURFACE, flags, flag_names))
        return validate(cls, merge(layers))

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> ControlConfig:
        """Defaults and RELAY_* variables alone."""
        return cls.load(environ=environ)


SURFACE = Surface(
    (ControlConfig,),
    env={"host": "RELAY_CONTROL_HOST", "port": "RELAY_CONTROL_PORT"},
    flags={
        "store_url": "--store",
        "relay_require_user_tokens": "--require-user-tokens",
        "relay_gs2_clients": "--gs2-clients",
        "relay_warm_relays": "--warm-relays",
        "relay_rooms_per_process": "--rooms-per-process",
    },
)
"""The control plane's settings: --flag, RELAY_* variable and config file key for each field."""

DEV_DEFAULTS: Mapping[str, Any] = {"stop_relays_on_exit": True, "demo": True}
"""What `relay dev` changes from `relay control`: relays stop with it, and the demo page is on."""
