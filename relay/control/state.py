"""What namespaces.py, rooms.py and agent_api.py share, held once: the store, the lock, each room's
in-memory liveness, and the background tasks they start.

One lock orders every read-modify-write of the records, so a deleteRoom, a registration and the
reaper never act on the same room at once. The liveness is not persisted: after a restart
rooms.py rebuilds it with a fresh grace.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import Any

from relay.control.config import ControlConfig
from relay.control.errors import ApiError, not_found
from relay.control.metrics import ControlMetrics
from relay.control.oplog import OperationLog
from relay.control.provisioner import Provisioner
from relay.control.records import NAMESPACE_ACTIVE, NamespaceRecord, RoomRecord
from relay.control.store import Store
from relay.control.targets import PrometheusTargets

log = logging.getLogger("relay.control.state")

RoomKey = tuple[str, str]
"""(namespace, room name)."""


@dataclass(slots=True)
class RoomRuntime:
    """In-memory liveness of one room: the reaper and heartbeats read it without a store read."""

    state: str
    incarnation: str  # the record's: whose relay's reports count
    agent_secret: str  # the record's, so a heartbeat is checked without a store read
    since: float = field(default_factory=time.monotonic)
    last_heartbeat: float = field(default_factory=time.monotonic)
    lost_after: float = 0.0  # silence after which a ready relay is lost: missed_heartbeats promised gaps
    stats: dict[str, Any] = field(default_factory=dict)
    ending: str | None = None
    """Why the room is ending while its local relay is being stopped (the reaper's "lost"): the
    room ends when the relay's exit is seen, with the reason the exit gives if it gives one."""

    @classmethod
    def of(cls, room: RoomRecord, lost_after: float = 0.0) -> RoomRuntime:
        return cls(room.state, room.incarnation, room.agent_secret, lost_after=lost_after)


def namespace_not_found(name: str) -> ApiError:
    return not_found(
        "namespace", f"namespace {name} not found", "realtime.namespace.namespace.error.notFound"
    )


def logging_namespace(ns: NamespaceRecord | None) -> str | None:
    """The namespace's loggingNamespaceId, where its room events also go (oplog.py)."""
    if ns is None or not ns.log_setting:
        return None
    value = ns.log_setting.get("loggingNamespaceId")
    return value if isinstance(value, str) and value else None


class ControlState:
    """The one copy of the state the realtime service's parts act on."""

    def __init__(
        self,
        config: ControlConfig,
        store: Store,
        provisioner: Provisioner,
        oplog: OperationLog,
        metrics: ControlMetrics,
    ) -> None:
        self.config = config
        self.store = store
        self.provisioner = provisioner
        self.oplog = oplog
        self.metrics = metrics
        self.runtime: dict[RoomKey, RoomRuntime] = {}
        self.targets = PrometheusTargets(config.prometheus_targets_path)
        """The ready relays' /metrics, for Prometheus (relay/control/targets.py)."""
        self.lock = asyncio.Lock()
        self._tasks: set[asyncio.Task[Any]] = set()
        self.serving = False
        """Started and not stopping: /readyz says so (relay/control/api.py)."""

    def room_counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for rt in self.runtime.values():
            counts[rt.state] = counts.get(rt.state, 0) + 1
        return counts

    async def active_namespace(self, name: str) -> NamespaceRecord:
        """The namespace a call may act in; a deleted one answers GS2's 404 like a missing one."""
        ns = await self.store.get_namespace(name)
        if ns is None or ns.status != NAMESPACE_ACTIVE:
            raise namespace_not_found(name)
        return ns

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        """Runs work an answer must not wait for, kept referenced until done and cancelled on stop."""
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._done)
        return task

    def _done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("background task failed", exc_info=task.exception())

    async def cancel_tasks(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
