"""The two records the control plane keeps: namespaces and rooms (plain data, no I/O)."""

from __future__ import annotations

import dataclasses
import hashlib
import secrets
import time
from dataclasses import dataclass, field
from typing import Any

from relay.protocol.constants import CloseReason

NAMESPACE_ACTIVE = "ACTIVE"
NAMESPACE_DELETED = "DELETED"

ROOM_PENDING = "pending"
"""Stored, relay requested, not registered yet: no address shown."""
ROOM_READY = "ready"
"""The relay's agent registered: ipAddress, port and encryptionKey are shown."""
ROOM_STATES = (ROOM_PENDING, ROOM_READY)

RELAY_CLOSE_REASONS = frozenset(reason.name.lower() for reason in CloseReason)
"""What a relay's `closed` report may say (relay/agent/agent.py: reason_text); any other word is
ended as "other": the reason is a metric label, and its values must stay few."""
ROOM_END_REASONS = RELAY_CLOSE_REASONS | {"other", "crash", "lost", "register_timeout", "provision_failed"}
"""Every reason a room ends for (relay/control/rooms.py: end_room): the relay's, or the control
plane's own. /metrics shows each from the start at 0, so that an alert's increase() sees the
first one (a counter that appears already at 1 has no increase to see)."""


def now_ms() -> int:
    return int(time.time() * 1000)


def new_incarnation() -> str:
    """A fresh public id for one incarnation of a room (relay/agent/launch.py: --incarnation)."""
    return secrets.token_hex(8)


@dataclass
class NamespaceRecord:
    name: str
    server_type: str
    server_spec: str
    description: str | None = None
    transaction_setting: dict[str, Any] | None = None
    transaction_setting_v2: dict[str, Any] | None = None
    create_notification: dict[str, Any] | None = None
    log_setting: dict[str, Any] | None = None
    status: str = NAMESPACE_ACTIVE
    created_at: int = field(default_factory=now_ms)
    updated_at: int = field(default_factory=now_ms)
    revision: int = 0

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> NamespaceRecord:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


@dataclass
class RoomRecord:
    namespace: str
    name: str
    encryption_key: str
    agent_secret: str
    notification_user_ids: list[str] = field(default_factory=list)
    incarnation: str = field(default_factory=new_incarnation)
    """This incarnation of the room, public (its relay's command line carries it): the relay, its
    exit and its agent's reports belong to it, never to the room's name, which a later room reuses.
    A new one is written before recovery starts the room another relay."""
    state: str = ROOM_PENDING
    ip_address: str | None = None
    port: int | None = None
    admin_port: int | None = None
    pid: int | None = None
    """pid of the relay process (set at spawn, confirmed at register); used to find it after restart."""
    provisioned_at: int | None = None
    """Unix ms when the provisioner was asked for a relay (None: not yet, e.g. killed mid-want)."""
    node: str | None = None
    """The control-plane node whose relay serves the room (Cluster.node_id; None with one node):
    the one that starts it, adopts it after a restart and stops it."""
    created_at: int = field(default_factory=now_ms)
    updated_at: int = field(default_factory=now_ms)
    revision: int = 0

    @property
    def ready(self) -> bool:
        return self.state == ROOM_READY

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RoomRecord:
        names = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in data.items() if k in names}
        if "incarnation" not in values:  # stored before incarnations: one derived from its secret
            values["incarnation"] = hashlib.sha256(str(data["agent_secret"]).encode()).hexdigest()[:16]
        return cls(**values)
