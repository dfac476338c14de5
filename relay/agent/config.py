"""AgentConfig: what the agent inside a relay needs to report its room to a control plane."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field
from pydantic.dataclasses import dataclass

from relay.server.config import Seconds, doc
from relay.settings import CONFIG

DEFAULT_HEARTBEAT_INTERVAL = 2.0
DEFAULT_IDLE_HEARTBEAT_INTERVAL = 30.0
MIN_HEARTBEAT_INTERVAL = 0.05

HeartbeatSeconds = Annotated[float, Field(ge=MIN_HEARTBEAT_INTERVAL)]
Name = Annotated[str, Field(min_length=1)]


@dataclass(frozen=True, slots=True, config=CONFIG)
class AgentConfig:
    control_url: Name = doc("", "base URL of the control plane's internal API (…/internal)")
    namespace: Name = doc("", "the room's namespace name")
    room: Name = doc("", "the room's name")
    incarnation: str | None = doc(
        None, "the incarnation of the room this relay serves, named in every report (None: none named)"
    )
    agent_secret: str = doc("", "the room's agent secret (Authorization: Bearer); a secret", secret=True)
    advertise_host: str | None = doc(
        None, "the ipAddress clients are told; None: the relay's bound address, or this host's own"
    )
    heartbeat_interval: HeartbeatSeconds = doc(
        DEFAULT_HEARTBEAT_INTERVAL, "seconds between heartbeats while anyone is in the room"
    )
    idle_heartbeat_interval: HeartbeatSeconds = doc(
        DEFAULT_IDLE_HEARTBEAT_INTERVAL,
        "seconds between heartbeats while the room is quiet (never shorter than heartbeat_interval)",
    )

    register_retry_cap: Seconds = doc(
        2.0,
        "the longest wait (full jitter) between register attempts: a relay not registered is a room "
        "nobody can join, and only relays started while the control plane was away retry",
    )

    @property
    def quiet_interval(self) -> float:
        """The idle interval, never shorter than the active one."""
        return max(self.heartbeat_interval, self.idle_heartbeat_interval)
