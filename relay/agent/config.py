"""AgentConfig: what the agent inside a relay needs to report its room to a control plane."""

from __future__ import annotations

from dataclasses import dataclass

from relay.server.config import doc

DEFAULT_HEARTBEAT_INTERVAL = 2.0
DEFAULT_IDLE_HEARTBEAT_INTERVAL = 30.0
MIN_HEARTBEAT_INTERVAL = 0.05


@dataclass(frozen=True, slots=True)
class AgentConfig:
    control_url: str = doc("", "base URL of the control plane's internal API (…/internal)")
    namespace: str = doc("", "the room's namespace name")
    room: str = doc("", "the room's name")
    incarnation: str | None = doc(
        None, "the incarnation of the room this relay serves, named in every report (None: none named)"
    )
    agent_secret: str = doc("", "the room's agent secret (Authorization: Bearer); a secret")
    advertise_host: str | None = doc(
        None, "the ipAddress clients are told; None: the relay's bound address, or this host's own"
    )
    heartbeat_interval: float = doc(
        DEFAULT_HEARTBEAT_INTERVAL, "seconds between heartbeats while anyone is in the room"
    )
    idle_heartbeat_interval: float = doc(
        DEFAULT_IDLE_HEARTBEAT_INTERVAL,
        "seconds between heartbeats while the room is quiet (never shorter than heartbeat_interval)",
    )

    def __post_init__(self) -> None:
        if not self.control_url or not self.namespace or not self.room:
            raise ValueError("the agent needs control_url, namespace and room")
        if not self.heartbeat_interval >= MIN_HEARTBEAT_INTERVAL:
            raise ValueError(f"heartbeat_interval must be at least {MIN_HEARTBEAT_INTERVAL} seconds")
        if not self.idle_heartbeat_interval >= MIN_HEARTBEAT_INTERVAL:
            raise ValueError(f"idle_heartbeat_interval must be at least {MIN_HEARTBEAT_INTERVAL} seconds")

    @property
    def quiet_interval(self) -> float:
        """The idle interval, never shorter than the active one."""
        return max(self.heartbeat_interval, self.idle_heartbeat_interval)
