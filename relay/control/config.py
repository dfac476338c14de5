"""Every setting of the control plane in one typed place (a frozen dataclass with documented defaults).

`ControlConfig.from_env()` reads RELAY_* environment variables; the CLI layers flags and an
optional JSON config file on top (see relay/control/cli.py and docs/operations.md).
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


def default_relay_command() -> tuple[str, ...]:
    """How the local provisioner starts one relay: `python -m relay.cli serve` of this interpreter."""
    return (sys.executable, "-m", "relay.cli", "serve")


@dataclass(frozen=True)
class ControlConfig:
    # --- listening -------------------------------------------------------------------------
    host: str = "127.0.0.1"
    """Address the HTTP API, gateway and internal API bind to."""
    port: int = 7700
    """TCP port (0 picks a free one; the bound port is then in ControlPlane.port)."""
    public_url: str | None = None
    """Base URL relays use to reach /internal; default http://{host}:{port} (0.0.0.0 -> 127.0.0.1)."""

    demo: bool = False
    """Serve the demo page at /demo and its dev-only API (relay/control/demo_api.py): `relay dev`
    turns it on; it stays off unless `host` is a loopback address (docs/security.md)."""

    # --- identity --------------------------------------------------------------------------
    region: str = "ap-northeast-1"
    """Region used in GRNs (grn:gs2:{region}:{ownerId}:realtime:...)."""
    owner_id: str = "owner-0001"
    """Owner id used in GRNs and returned by login."""
    client_id: str | None = None
    """Project credential id; None means `relay dev` generates and persists one in the data dir."""
    client_secret: str | None = None
    project_token_ttl: int = 3600
    """Lifetime in seconds of a project token returned by login."""
    user_token_ttl: int = 3600
    """Default lifetime in seconds of a minted user access token."""

    # --- storage ---------------------------------------------------------------------------
    data_dir: Path = Path(".relay")
    """Holds control.db (SQLite), signing.key, credentials.json and the operation logs."""
    store_url: str | None = None
    """None: embedded SQLite at {data_dir}/control.db (one node). `sqlite:///path` for another
    file. `postgresql://user:password@host:port/database` (or `postgres://`, any libpq URL):
    PostgreSQL, which several control-plane nodes share (docs/operations.md, "Several nodes");
    `relay control --store`, RELAY_STORE_URL."""
    store_pool_size: int = 10
    """PostgreSQL: connections a node keeps open for requests (plus one for its cluster session:
    its node lock, leadership and LISTEN), all opened at start: a request never waits for a new
    server backend. Ignored with SQLite."""
    node_id: str | None = None
    """PostgreSQL: this node's name among the nodes sharing the store, written into every room whose
    relay it starts, so that after a restart it adopts them again and the others know whose they
    are. Two running nodes must not share one (the second waits for the first's claim, then fails
    to start). None: `<hostname>:<port>`. Ignored with SQLite."""

    # --- provisioning ----------------------------------------------------------------------
    provisioner: str = "local"
    """"local" (one relay process per room on this machine), "agones" (a GameServerAllocation per
    room from an Agones Fleet: relay/control/agones_provisioner.py, docs/agones.md) or "none"
    (records only: something else starts relays and they register)."""
    agones_namespace: str = "default"
    """With "agones": the Kubernetes namespace of the relay Fleet, where allocations are made."""
    agones_fleet: str = "gs2-relay"
    """With "agones": the Fleet whose Ready GameServers rooms get (its agones.dev/fleet label)."""
    agones_kubeconfig: Path | None = None
    """With "agones": None uses the pod's service account (in the cluster); else a kubeconfig
    file (a control plane outside the cluster)."""
    agones_allocate_for: float = 10.0
    """With "agones": seconds a room's allocation is retried while the fleet has no Ready
    GameServer (UnAllocated), as the FleetAutoscaler adds some; then the room fails
    ("provision_failed"). Keep the FleetAutoscaler's buffer above the rooms wanted in that time."""
    relay_command: tuple[str, ...] = field(default_factory=default_relay_command)
    """argv prefix that starts one relay; the provisioner appends the `relay serve` flags."""
    relay_host: str = "127.0.0.1"
    """--host given to spawned relays (0.0.0.0 to serve other machines)."""
    advertise_host: str | None = None
    """--advertise-host given to spawned relays: the ipAddress clients are told."""
    relay_extra_args: tuple[str, ...] = ()
    """Extra flags appended to every `relay serve` (e.g. --idle-timeout 30)."""
    relay_require_user_tokens: bool = False
    """Hand relays --token-public-key, so JOIN must carry a user access token for its user id
    (and a GS2 client's HelloRequest a verified one)."""
    relay_gs2_clients: bool = True
    """Relays accept GS2 game clients (GS2's Unity SDK, its own wire: signed, not encrypted) on
    their WebSocket port beside native clients; False hands them --no-gs2-clients
    (docs/gs2-clients.md, docs/security.md)."""
    stop_grace: float = 3.0
    """Seconds between SIGTERM and SIGKILL when a relay is stopped."""
    relay_spawner: str = "zygote"
    """"zygote": fork relays from a pre-imported template (relay/host/zygote.py: ready in
    milliseconds, shared memory); "subprocess": a fresh interpreter per relay (slower, simpler).
    Commands other than this interpreter's `relay serve` always run as a subprocess."""
    relay_warm_relays: int = 2
    """With the zygote spawner: relays kept forked, capped and rehearsed before any room wants them
    (relay/host/warm_pool.py), so a wanted room gets one in a few milliseconds. Each costs what
    an idle room costs (about 6 MiB). 0: none."""
    relay_tier: str = "realtime1.nano"
    """Caps every local relay keeps to (relay/agent/tiers.py, docs/tiers.md)."""
    relay_caps: str = "auto"
    """"auto": cgroups where this host lets us write them, else soft in-process caps with a
    warning; "cgroup": refuse to start without cgroups; "soft": in-process only; "off": none."""
    stop_relays_on_exit: bool = False
    """Stop every relay when the control plane shuts down (True for `relay dev`)."""
    max_rooms: int = 2000
    """Rooms (starting or ready) the local provisioner runs on this host at once; wantRoom beyond
    answers GS2's 503 ServiceUnavailable (realtime.room.error.noCapacity). 0: no count limit.
    Size it with docs/operations.md ("Capacity")."""
    memory_headroom_rooms: float = 8.0
    """A local room is refused (503, as above) while this host's MemAvailable is below this many
    tier memory caps (realtime1.nano: 8 x 64 MiB = 512 MiB): room for the new relay and a few
    others to grow to their caps before the kernel has to choose whom to kill. 0: no check."""

    # --- abuse -----------------------------------------------------------------------------
    login_failures_per_source: int = 10
    """Failed project logins one source address may make per login_failure_window; past them it
    gets 429 (identifier.projectToken.error.tooManyRequests, Retry-After) until tries come back,
    even for the right secret. Behind a proxy every client is the proxy's address. 0: no limit."""
    login_failures_per_client: int = 100
    """Failed logins per login_failure_window naming one client id, from any source (guesses
    spread over many addresses); larger than the per-source budget, so one source alone cannot
    lock the client out. 0: no limit."""
    login_failure_window: float = 60.0
    """Seconds in which the failed-login budgets above refill completely (evenly)."""

    # --- liveness --------------------------------------------------------------------------
    heartbeat_interval: float = 2.0
    """Seconds between agent heartbeats while anyone is in the room (handed to relays as
    RELAY_HEARTBEAT_INTERVAL)."""
    idle_heartbeat_interval: float = 30.0
    """Seconds between heartbeats of a quiet room, nobody in it (RELAY_IDLE_HEARTBEAT_INTERVAL).
    Idle rooms heartbeating every 2 s kept a 2-core machine of 300 of them 40% busy. A local
    relay's exit is seen at once anyway, and deleteRoom is pushed to it."""
    missed_heartbeats: int = 3
    """A registered relay silent for this many of the gaps its agent promised (one of the two
    intervals above) is marked lost and removed."""
    register_timeout: float = 60.0
    """A room whose relay has not registered this long after provisioning is failed and removed."""
    sweep_interval: float = 0.5
    """How often the reaper looks for lost relays."""

    # --- notifications / logs --------------------------------------------------------------
    webhook_url: str | None = None
    """If set, every room-ready push is also POSTed here as JSON."""
    operation_log: Path | None = None
    """JSON-lines operation log; default {data_dir}/operations.log."""
    relay_log_keep_seconds: float = 86400.0
    """A local relay's log ({data_dir}/relay-logs/<namespace>/<room>.log) is removed this long
    after its last write once the room has ended (relay/control/relay_logs.py); 0 keeps them all."""
    relay_log_max_bytes: int = 16 << 20
    """A running relay's log, or standby.log, past this size is cut (copied to <log>.1, then
    truncated); 0: never."""
    prometheus_targets: Path | None = None
    """Where the ready relays' /metrics endpoints are listed for Prometheus' file_sd_configs
    (relay/control/targets.py, deploy/prometheus/); default {data_dir}/prometheus/relays.json."""
    log_level: str = "info"

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
        return dataclasses.replace(self, **changes)

    @classmethod
    def from_mapping(cls, values: dict[str, Any], base: ControlConfig | None = None) -> ControlConfig:
        """Applies known keys (snake_case, as the field names) and ignores None values."""
        base = base or cls()
        names = {f.name: f for f in dataclasses.fields(cls)}
        changes: dict[str, Any] = {}
        for key, value in values.items():
            key = key.replace("-", "_")
            if key not in names or value is None:
                continue
            current = getattr(base, key)
            if "Path" in str(names[key].type):  # Path or Path | None
                value = Path(value)
            elif isinstance(current, bool):
                value = value if isinstance(value, bool) else str(value).lower() in ("1", "true", "yes")
            elif isinstance(current, int) and not isinstance(current, bool):
                value = int(value)
            elif isinstance(current, float):
                value = float(value)
            elif isinstance(current, tuple):
                value = tuple(value.split()) if isinstance(value, str) else tuple(value)
            changes[key] = value
        return dataclasses.replace(base, **changes)

    @classmethod
    def from_file(cls, path: str | os.PathLike[str], base: ControlConfig | None = None) -> ControlConfig:
        return cls.from_mapping(json.loads(Path(path).read_text()), base)

    @classmethod
    def from_env(
        cls, base: ControlConfig | None = None, environ: dict[str, str] | None = None
    ) -> ControlConfig:
        """RELAY_<FIELD> for every field, e.g. RELAY_CLIENT_ID, RELAY_DATA_DIR, RELAY_WEBHOOK_URL."""
        env = os.environ if environ is None else environ
        values = {
            f.name: env[f"RELAY_{f.name.upper()}"]
            for f in dataclasses.fields(cls)
            if f"RELAY_{f.name.upper()}" in env
        }
        # RELAY_PORT / RELAY_HOST are also read by `relay serve`; the control plane uses its own names.
        values.pop("port", None)
        values.pop("host", None)
        for name in ("host", "port"):
            if f"RELAY_CONTROL_{name.upper()}" in env:
                values[name] = env[f"RELAY_CONTROL_{name.upper()}"]
        return cls.from_mapping(values, base)
