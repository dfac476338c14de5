"""The bodies the agent and the control plane's internal API exchange (docs/operations.md), one
typed class each, written by the agent (relay/agent/control_client.py) and read by the control
plane (relay/control/agent_api.py) with the same code, so the two cannot drift apart.

    POST /internal/rooms/{ns}/{room}/register   Registration  -> {}
    POST /internal/rooms/{ns}/{room}/heartbeat  Heartbeat     -> HeartbeatAnswer
    POST /internal/rooms/{ns}/{room}/closed     Closed        -> {}

`from_json` checks every field and raises WireError naming the first bad one; what it returns
is well-formed. Unknown keys are ignored (an older control plane reading a newer agent).

Each body names the room's incarnation its relay serves (`incarnation`, relay/agent/launch.py),
so that a relay of an earlier or a parallel incarnation of a room's name, which may hold the same
secret (a twin left by a crash), is told the room is not its own and cannot change it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


class WireError(ValueError):
    """A body that does not have the documented shape; `field` names the offending key."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


MAX_NEXT_HEARTBEAT = 1e6
MAX_REASON = 64
MAX_INCARNATION = 64


def _int_in(value: Any, low: int, high: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and low <= value <= high


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _object(body: Any) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise WireError("body", "the body must be a JSON object")
    return body


def _next_heartbeat(body: dict[str, Any]) -> float | None:
    gap = body.get("nextHeartbeatSeconds")
    if gap is None:
        return None
    if not _number(gap) or not 0 < gap < MAX_NEXT_HEARTBEAT:
        raise WireError("nextHeartbeatSeconds", "nextHeartbeatSeconds must be a positive number of seconds")
    return float(gap)


def _incarnation(body: dict[str, Any]) -> str | None:
    value = body.get("incarnation")
    if value is None:
        return None
    if not isinstance(value, str) or not 0 < len(value) <= MAX_INCARNATION or not value.isascii():
        raise WireError("incarnation", f"incarnation must be an ASCII string of 1..{MAX_INCARNATION}")
    return value


@dataclass(frozen=True, slots=True)
class Registration:
    """The relay is listening: where clients reach it, and when its first heartbeat comes."""

    ip_address: str
    port: int
    admin_port: int | None = None
    pid: int | None = None
    next_heartbeat: float | None = None
    incarnation: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "ipAddress": self.ip_address,
            "port": self.port,
            "adminPort": self.admin_port,
            "pid": self.pid,
            "nextHeartbeatSeconds": self.next_heartbeat,
            "incarnation": self.incarnation,
        }

    @classmethod
    def from_json(cls, body: Any) -> Registration:
        body = _object(body)
        ip, port = body.get("ipAddress"), body.get("port")
        admin_port, pid = body.get("adminPort"), body.get("pid")
        if not isinstance(ip, str) or not 0 < len(ip) <= 128:
            raise WireError("ipAddress", "ipAddress must be a string of 1..128")
        if not _int_in(port, 1, 65535):
            raise WireError("port", "port must be 1..65535")
        if admin_port is not None and not _int_in(admin_port, 0, 65535):
            raise WireError("adminPort", "adminPort must be 0..65535")
        if pid is not None and not _int_in(pid, 1, 2**31):
            raise WireError("pid", "pid must be a positive integer")
        return cls(ip, port, admin_port, pid, _next_heartbeat(body), _incarnation(body))


@dataclass(frozen=True, slots=True)
class Heartbeat:
    """Live figures of the room, and when the next heartbeat comes (its promise)."""

    members: int = 0
    messages_per_second: float = 0.0
    cpu_seconds: float = 0.0
    rss_bytes: int = 0
    next_heartbeat: float | None = None
    incarnation: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "members": self.members,
            "messagesPerSecond": self.messages_per_second,
            "cpuSeconds": self.cpu_seconds,
            "rssBytes": self.rss_bytes,
            "nextHeartbeatSeconds": self.next_heartbeat,
            "incarnation": self.incarnation,
        }

    @classmethod
    def from_json(cls, body: Any) -> Heartbeat:
        body = _object(body)
        members, rate = body.get("members", 0), body.get("messagesPerSecond", 0.0)
        cpu, rss = body.get("cpuSeconds", 0.0), body.get("rssBytes", 0)
        if not _int_in(members, 0, 2**31):
            raise WireError("members", "members must be a count")
        if not _number(rate) or rate < 0:
            raise WireError("messagesPerSecond", "messagesPerSecond must be a number of 0 or more")
        if not _number(cpu) or cpu < 0:
            raise WireError("cpuSeconds", "cpuSeconds must be a number of 0 or more")
        if not _int_in(rss, 0, 2**63):
            raise WireError("rssBytes", "rssBytes must be a count of bytes")
        return cls(members, float(rate), float(cpu), rss, _next_heartbeat(body), _incarnation(body))

    def stats(self) -> dict[str, Any]:
        """The live figures as the control plane keeps them."""
        return {
            "members": self.members,
            "messagesPerSecond": self.messages_per_second,
            "cpuSeconds": self.cpu_seconds,
            "rssBytes": self.rss_bytes,
        }


@dataclass(frozen=True, slots=True)
class HeartbeatAnswer:
    deleted: bool = False

    def to_json(self) -> dict[str, Any]:
        return {"deleted": self.deleted}

    @classmethod
    def from_json(cls, body: Any) -> HeartbeatAnswer:
        return cls(bool(body.get("deleted"))) if isinstance(body, dict) else cls()


@dataclass(frozen=True, slots=True)
class Closed:
    """Why the room ended (deleted, idle, lifetime, shutdown, cap_exceeded, ...)."""

    reason: str
    incarnation: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {"reason": self.reason, "incarnation": self.incarnation}

    @classmethod
    def from_json(cls, body: Any) -> Closed:
        body = _object(body)
        reason = body.get("reason")
        if not isinstance(reason, str) or not 0 < len(reason) <= MAX_REASON:
            raise WireError("reason", f"reason must be a string of 1..{MAX_REASON}")
        return cls(reason, _incarnation(body))
