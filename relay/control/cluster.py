"""How the control plane's nodes act as one: a single node beside its SQLite file (`LocalCluster`),
or several nodes sharing one PostgreSQL database (`postgres_store.PostgresCluster`).

rooms.py, namespaces.py and agent_api.py are written against `Cluster` only:

- `lock(namespace, room)`: the lock every read-modify-write of the records takes (one node: one
  asyncio lock, as before; several: PostgreSQL advisory locks, so two nodes never act on one room
  at once).
- `leader()`: whether this node runs the work done once for all nodes: the reaper (lost relays,
  rooms that never registered) and taking over the pending rooms of a node that died.
- liveness (`registered`, `heartbeat`, `watch`, `overdue`): what the reaper reads. One node keeps
  it in memory (`RoomRuntime`, no store write per heartbeat); several keep a deadline per room in
  the database, since a relay's agent may heartbeat to any node.
- `publish(event)`: tells the other nodes that a room became ready (they push to the users
  connected to their /gateway) or ended (the node whose relay it is stops it).
- `setting(name, create)`: a value every node shares (the signing key, generated credentials).
"""

from __future__ import annotations

import asyncio
import hmac
import time
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from relay.control.auth import file_setting
from relay.control.records import ROOM_PENDING, ROOM_READY, RoomRecord

RoomKey = tuple[str, str]
"""(namespace, room name)."""

EventHandler = Callable[[dict[str, Any]], Awaitable[None]]
"""Receives what another node published (relay/control/agent_api.py: AgentApi.on_event)."""


@dataclass(slots=True)
class RoomRuntime:
    """What this node keeps in memory about a room it holds (one node: every room): its state for
    the counts and the capacity check, and, with one node, its liveness, read by heartbeats and the
    reaper without a store read."""

    state: str
    incarnation: str  # the record's: whose relay's reports count
    agent_secret: str  # the record's, so a heartbeat is checked without a store read
    since: float = field(default_factory=time.monotonic)
    last_heartbeat: float = field(default_factory=time.monotonic)
    lost_after: float = 0.0  # silence after which a ready relay is lost: missed_heartbeats promised gaps
    stats: dict[str, Any] = field(default_factory=dict)
    metrics_target: str | None = None
    """host:port of the ready relay's /metrics, for Prometheus (relay/control/targets.py)."""
    ending: str | None = None
    """Why the room is ending while its local relay is being stopped (the reaper's "lost"): the
    room ends when the relay's exit is seen, with the reason the exit gives if it gives one."""

    @classmethod
    def of(cls, room: RoomRecord, lost_after: float = 0.0) -> RoomRuntime:
        return cls(room.state, room.incarnation, room.agent_secret, lost_after=lost_after)


@dataclass(frozen=True, slots=True)
class Overdue:
    """A room the reaper ends: its relay went silent ("lost") or never registered ("register_timeout")."""

    namespace: str
    name: str
    incarnation: str
    reason: str

    @property
    def key(self) -> RoomKey:
        return (self.namespace, self.name)


def owns(secret: str, incarnation: str, given_secret: str | None, given_incarnation: str | None) -> bool:
    """The caller holds the room's secret and, when it names an incarnation, serves this one."""
    secret_ok = given_secret is not None and hmac.compare_digest(given_secret.encode(), secret.encode())
    return secret_ok and given_incarnation in (None, incarnation)


@runtime_checkable
class Cluster(Protocol):
    node_id: str | None
    """This node's name, written into the rooms whose relay it starts; None: the only node."""

    def mine(self, room: RoomRecord) -> bool:
        """Whether the room's relay is this node's to start, adopt after a restart and stop."""
        ...

    def setting(self, name: str, create: Callable[[], str]) -> str:
        """A value every node shares: the one kept, or create()'s, kept by whoever asked first.
        Synchronous: read while the control plane is built, before its loop serves anything."""
        ...

    def lock(self, namespace: str, room: str | None = None) -> AbstractAsyncContextManager[Any]:
        """Held around every read-modify-write of a room (namespace and room given) or of a
        namespace (room None; excludes every room operation in that namespace)."""
        ...

    def leader(self) -> bool:
        """Whether this node runs the once-for-all-nodes work now (the reaper, takeovers)."""
        ...

    async def start(self, on_event: EventHandler) -> None:
        """Joins the cluster before the node serves; `on_event` hears the other nodes' events."""
        ...

    async def close(self) -> None: ...

    async def publish(self, event: dict[str, Any]) -> None:
        """Tells every other node (best effort: a failure is logged, never raised)."""
        ...

    async def registered(self, room: RoomRecord, lost_after: float) -> float | None:
        """The room's relay registered: it is lost after `lost_after` seconds of silence from now.
        Returns how long the room waited for it (None where this node cannot tell)."""
        ...

    async def owner_registered(self, room: RoomRecord) -> None:
        """Before this node shows another node's relay's address: that node has ended the relay's
        start-up (Provisioner.registered: its CPU quota on), or did not answer within a second.
        At once for this node's own rooms (the caller's provisioner does it) and with one node."""
        ...

    async def heartbeat(
        self,
        namespace: str,
        name: str,
        secret: str | None,
        incarnation: str | None,
        lost_after: float,
        stats: dict[str, Any],
    ) -> bool:
        """Records a heartbeat of the room's relay; False when the caller is not the relay of a
        room this cluster watches (the record then decides the answer)."""
        ...

    async def watch(self, room: RoomRecord, grace: float) -> None:
        """After a restart: the room is given `grace` seconds from now to be heard from."""
        ...

    async def overdue(self, register_timeout: float) -> list[Overdue]:
        """The rooms whose relay is silent past its window, or unregistered past register_timeout."""
        ...

    async def orphans(self) -> list[RoomRecord]:
        """Pending rooms whose node is gone (it died before their relay registered)."""
        ...


class LocalCluster:
    """One node: every room is its own, it is always the leader, nobody else hears its events,
    liveness is the `RoomRuntime` it keeps for every room, and shared settings are files in its
    data dir (signing.key, credentials.json)."""

    node_id: str | None = None

    def __init__(self, runtime: dict[RoomKey, RoomRuntime], data_dir: Path) -> None:
        self.runtime = runtime
        self._setting = file_setting(data_dir)
        self._lock = asyncio.Lock()

    def mine(self, room: RoomRecord) -> bool:
        return True

    def setting(self, name: str, create: Callable[[], str]) -> str:
        return self._setting(name, create)

    def lock(self, namespace: str, room: str | None = None) -> AbstractAsyncContextManager[Any]:
        return self._lock  # one lock for every record: one node's writes are one at a time anyway

    def leader(self) -> bool:
        return True

    async def start(self, on_event: EventHandler) -> None:
        pass

    async def close(self) -> None:
        pass

    async def publish(self, event: dict[str, Any]) -> None:
        pass

    async def registered(self, room: RoomRecord, lost_after: float) -> float | None:
        rt = self.runtime.get((room.namespace, room.name))
        if rt is None or rt.incarnation != room.incarnation:
            return None
        rt.last_heartbeat = time.monotonic()
        rt.lost_after = lost_after
        return rt.last_heartbeat - rt.since

    async def owner_registered(self, room: RoomRecord) -> None:
        pass

    async def heartbeat(
        self,
        namespace: str,
        name: str,
        secret: str | None,
        incarnation: str | None,
        lost_after: float,
        stats: dict[str, Any],
    ) -> bool:
        rt = self.runtime.get((namespace, name))
        if rt is None or not owns(rt.agent_secret, rt.incarnation, secret, incarnation):
            return False
        rt.last_heartbeat = time.monotonic()
        rt.lost_after = lost_after
        rt.stats = stats
        return True

    async def watch(self, room: RoomRecord, grace: float) -> None:
        pass  # the RoomRuntime the caller keeps for the room starts its window

    async def overdue(self, register_timeout: float) -> list[Overdue]:
        now = time.monotonic()
        found = []
        for (namespace, name), rt in self.runtime.items():
            if rt.ending is not None:
                continue
            if rt.state == ROOM_READY and now - rt.last_heartbeat > rt.lost_after:
                found.append(Overdue(namespace, name, rt.incarnation, "lost"))
            elif rt.state == ROOM_PENDING and now - rt.since > register_timeout:
                found.append(Overdue(namespace, name, rt.incarnation, "register_timeout"))
        return found

    async def orphans(self) -> list[RoomRecord]:
        return []
