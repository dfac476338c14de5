"""What namespaces.py, rooms.py and agent_api.py share, held once: the store, the cluster (the lock,
liveness, leadership, events: relay/control/cluster.py), the rooms this node holds, and the
background tasks they start.

The cluster's lock orders every read-modify-write of the records, so a deleteRoom, a registration
and the reaper never act on the same room at once, on this node or any other. `runtime` is this
node's rooms (with one node: every room), not persisted: after a restart rooms.py rebuilds it with
a fresh grace.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from typing import Any

from relay.control.cluster import Cluster, LocalCluster, RoomKey, RoomRuntime
from relay.control.config import ControlConfig
from relay.control.errors import ApiError, not_found
from relay.control.metrics import ControlMetrics
from relay.control.oplog import OperationLog
from relay.control.provisioner import Provisioner
from relay.control.records import NAMESPACE_ACTIVE, NamespaceRecord
from relay.control.store import Store
from relay.control.targets import PrometheusTargets

log = logging.getLogger("relay.control.state")

__all__ = [
    "ControlState",
    "RoomKey",
    "RoomRuntime",
    "logging_namespace",
    "namespace_not_found",
    "open_cluster",
]


def open_cluster(
    config: ControlConfig, store: Store, node_id: str, runtime: dict[RoomKey, RoomRuntime]
) -> Cluster:
    """The store's cluster where several nodes share it (PostgreSQL), else this node alone."""
    return store.cluster(node_id, config) or LocalCluster(runtime, config.data_dir)


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
        node_id: str,
    ) -> None:
        self.config = config
        self.store = store
        self.provisioner = provisioner
        self.oplog = oplog
        self.metrics = metrics
        self.runtime: dict[RoomKey, RoomRuntime] = {}
        self.targets = PrometheusTargets(config.prometheus_targets_path, self.runtime)
        """This node's ready relays' /metrics, for Prometheus (relay/control/targets.py)."""
        self.cluster = open_cluster(config, store, node_id, self.runtime)
        self._tasks: set[asyncio.Task[Any]] = set()
        self.serving = False
        """Started and not stopping: /readyz says so (relay/control/api.py)."""

    def forget(self, key: RoomKey, incarnation: str) -> None:
        """Drops this node's entry for that incarnation of the room, if it still has one (the
        room ended, or has another incarnation now, possibly through another node)."""
        rt = self.runtime.get(key)
        if rt is not None and rt.incarnation == incarnation:
            del self.runtime[key]

    def room_counts(self) -> dict[str, int]:
        """This node's rooms by state (with one node: every room)."""
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
