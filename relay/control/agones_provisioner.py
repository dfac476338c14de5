"""Relays as Agones GameServers: the control plane's provisioner on Kubernetes (`--provisioner agones`).

    wantRoom -> POST /apis/allocation.agones.dev/v1/namespaces/{ns}/gameserverallocations

The allocation picks a Ready GameServer of the relay Fleet and patches the room onto it: the
annotations relay/agent/agones.py reads (namespace, room, room key, agent secret, control URL,
incarnation) and the incarnation as a label, so a room's relay can be found again after a
restart. Its answer names the GameServer, its address and host port. The relay sees the
annotations through its SDK sidecar, binds, and its agent registers that address: the room is
ready exactly as with a local relay (the address is shown only once the relay serves).

A fleet with no Ready GameServer answers UnAllocated (Contention when allocations race): retried
with backoff for `allocate_for` seconds while the FleetAutoscaler's buffer refills, then the
room fails ("provision_failed"). deleteRoom marks the GameServer (ANNOTATION_DELETED: the relay
drains with CLOSING "deleted") and deletes it; a lost relay's GameServer is deleted. Agones
stops the pod and the Fleet replaces it. A GameServer that vanishes on its own (the relay ended,
the node died) is seen by a periodic list and ends its room like a local relay's exit.

The Kubernetes calls go through the official `kubernetes` client (the `agones` extra), which is
synchronous: each call runs in a worker thread. Tested against a fake API server
(tests/deploy/fake_kube.py), not a cluster.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from relay.agent.agones import (
    ANNOTATION_AGENT_SECRET,
    ANNOTATION_CONTROL_URL,
    ANNOTATION_DELETED,
    ANNOTATION_GS2_CLIENTS,
    ANNOTATION_INCARNATION,
    ANNOTATION_NAMESPACE,
    ANNOTATION_ROOM,
    ANNOTATION_ROOM_KEY,
    ANNOTATION_TOKEN_PUBLIC_KEY,
    LABEL_INCARNATION,
)
from relay.agent.control_client import backoff
from relay.control.provisioner import ExitCallback, RelayRequest

log = logging.getLogger("relay.control.agones")

ALLOCATION = ("allocation.agones.dev", "v1", "gameserverallocations")
GAMESERVERS = ("agones.dev", "v1", "gameservers")
FLEET_LABEL = "agones.dev/fleet"
REQUEST_TIMEOUT = 10.0


class AllocationError(RuntimeError):
    """No GameServer could be had for the room (its reason is logged with the room's end)."""


@dataclass(frozen=True, slots=True)
class Allocation:
    """What the allocation's answer says about the room's relay."""

    namespace: str
    room: str
    game_server: str  # "" for a room adopted while the GameServers could not be listed
    address: str = ""
    port: int | None = None
    node: str = ""
    since: float = 0.0  # time.monotonic() of the allocation: a list begun before it may miss it


def allocation_body(fleet: str, request: RelayRequest) -> dict[str, Any]:
    """A GameServerAllocation for the room (allocation.agones.dev/v1, as the Agones reference
    documents it): a Ready GameServer of the fleet, packed, with the room in its metadata."""
    annotations = {
        ANNOTATION_NAMESPACE: request.namespace,
        ANNOTATION_ROOM: request.room,
        ANNOTATION_ROOM_KEY: request.room_key,
        ANNOTATION_AGENT_SECRET: request.agent_secret,
        ANNOTATION_CONTROL_URL: request.control_url,
        ANNOTATION_INCARNATION: request.incarnation,
    }
    if request.token_public_key:
        annotations[ANNOTATION_TOKEN_PUBLIC_KEY] = request.token_public_key
    if not request.gs2_clients:
        annotations[ANNOTATION_GS2_CLIENTS] = "false"
    return {
        "apiVersion": "allocation.agones.dev/v1",
        "kind": "GameServerAllocation",
        "spec": {
            "selectors": [{"matchLabels": {FLEET_LABEL: fleet}, "gameServerState": "Ready"}],
            "scheduling": "Packed",
            "metadata": {"labels": {LABEL_INCARNATION: request.incarnation}, "annotations": annotations},
        },
    }


def read_allocation(answer: dict[str, Any], request: RelayRequest) -> Allocation | None:
    """The allocated GameServer; None for UnAllocated or Contention (try again)."""
    status = answer.get("status") or {}
    if status.get("state") != "Allocated":
        return None
    ports = [p for p in status.get("ports") or [] if isinstance(p, dict)]
    chosen = next((p for p in ports if p.get("name") == "default"), ports[0] if ports else None)
    port = chosen.get("port") if chosen else None
    return Allocation(
        namespace=request.namespace,
        room=request.room,
        game_server=str(status.get("gameServerName") or ""),
        address=str(status.get("address") or ""),
        port=int(port) if isinstance(port, int) else None,
        node=str(status.get("nodeName") or ""),
        since=time.monotonic(),
    )


class AgonesProvisioner:
    def __init__(
        self,
        namespace: str,
        fleet: str,
        kubeconfig: Path | None = None,
        allocate_for: float = 10.0,
        sync_interval: float = 30.0,
    ) -> None:
        self.namespace = namespace
        self.fleet = fleet
        self.kubeconfig = kubeconfig
        self.allocate_for = allocate_for
        self.sync_interval = sync_interval
        self._api: Any = None  # kubernetes.client.CustomObjectsApi, made in start()
        self._allocations: dict[str, Allocation] = {}  # by incarnation: the rooms' relays
        self._listed: dict[str, str] | None = {}  # incarnation -> GameServer, listed at start
        self._ending: set[asyncio.Task[None]] = set()
        self._sync: asyncio.Task[None] | None = None
        self._on_exit: ExitCallback | None = None

    def set_exit_callback(self, callback: ExitCallback) -> None:
        self._on_exit = callback

    # --- the Kubernetes API ------------------------------------------------------------------------

    def _client(self) -> Any:
        from kubernetes import client, config

        if self.kubeconfig is not None:
            return client.CustomObjectsApi(config.new_client_from_config(config_file=str(self.kubeconfig)))
        configuration = client.Configuration()
        config.load_incluster_config(client_configuration=configuration)
        return client.CustomObjectsApi(client.ApiClient(configuration))

    async def _call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        return await asyncio.to_thread(
            getattr(self._api, method), *args, _request_timeout=REQUEST_TIMEOUT, **kwargs
        )

    async def _list_ours(self) -> dict[str, str]:
        """incarnation -> GameServer name, for every GameServer carrying a room's label."""
        answer = await self._call(
            "list_namespaced_custom_object",
            *GAMESERVERS[:2],
            self.namespace,
            GAMESERVERS[2],
            label_selector=LABEL_INCARNATION,
        )
        found: dict[str, str] = {}
        for item in answer.get("items") or []:
            meta = item.get("metadata") or {}
            incarnation = (meta.get("labels") or {}).get(LABEL_INCARNATION)
            if incarnation and not meta.get("deletionTimestamp"):
                found[incarnation] = meta.get("name", "")
        return found

    async def _delete(self, name: str, mark_deleted: bool) -> None:
        from kubernetes.client.exceptions import ApiException

        group, version, plural = GAMESERVERS
        try:
            if mark_deleted:
                patch = {"metadata": {"annotations": {ANNOTATION_DELETED: "true"}}}
                await self._call(
                    "patch_namespaced_custom_object", group, version, self.namespace, plural, name, patch
                )
            await self._call("delete_namespaced_custom_object", group, version, self.namespace, plural, name)
        except ApiException as exc:
            if exc.status != 404:  # already gone: what we wanted
                raise

    # --- the Provisioner protocol ------------------------------------------------------------------

    async def start(self) -> None:
        """Connects, and lists the GameServers that serve rooms (adopt() after a restart)."""
        self._api = await asyncio.to_thread(self._client)
        try:
            self._listed = await self._list_ours()
        except Exception as exc:
            # Unknown: every recorded room is kept until a list says otherwise (sync()).
            log.warning("cannot list GameServers (%r): keeping every recorded room", exc)
            self._listed = None
        self._sync = asyncio.get_running_loop().create_task(self._sync_loop())

    async def provision(self, request: RelayRequest) -> int | None:
        from kubernetes.client.exceptions import ApiException

        body = allocation_body(self.fleet, request)
        group, version, plural = ALLOCATION
        deadline = time.monotonic() + self.allocate_for
        attempt = 0
        while True:
            why: str
            try:
                answer = await self._call(
                    "create_namespaced_custom_object", group, version, self.namespace, plural, body
                )
                allocation = read_allocation(answer, request)
                if allocation is not None:
                    break
                why = str((answer.get("status") or {}).get("state") or "no state")
            except ApiException as exc:
                if exc.status not in (429, 500, 502, 503, 504):
                    raise AllocationError(f"allocation refused: HTTP {exc.status} {exc.reason}") from None
                why = f"HTTP {exc.status}"
            except OSError as exc:  # urllib3's connection errors are OSErrors too
                why = repr(exc)
            delay = backoff(attempt, base=0.1, cap=2.0)
            if time.monotonic() + delay > deadline:
                raise AllocationError(f"no GameServer of fleet {self.fleet} allocated ({why})")
            log.info("allocation for %s/%s: %s; retry in %.2fs", request.namespace, request.room, why, delay)
            attempt += 1
            await asyncio.sleep(delay)
        self._allocations[request.incarnation] = allocation
        log.info(
            "room %s/%s: GameServer %s at %s:%s (node %s)",
            request.namespace,
            request.room,
            allocation.game_server,
            allocation.address,
            allocation.port,
            allocation.node,
        )
        return None

    def allocation(self, incarnation: str) -> Allocation | None:
        """What the allocation answered for that incarnation's relay."""
        return self._allocations.get(incarnation)

    async def stop(self, incarnation: str) -> None:
        await self._end(incarnation, mark_deleted=False)

    async def _end(self, incarnation: str, mark_deleted: bool) -> None:
        allocation = self._allocations.get(incarnation)
        if allocation is None or not allocation.game_server:
            return
        try:
            await self._delete(allocation.game_server, mark_deleted)
        except Exception:
            log.exception("deleting GameServer %s failed", allocation.game_server)
            return
        self._allocations.pop(incarnation, None)

    def running_relays(self) -> dict[str, list[int]]:
        return {}  # no relay runs on this host

    def adopt(self, namespace: str, room: str, incarnation: str, pid: int | None) -> bool:
        """After a restart: the room's GameServer was listed at start (or could not be listed)."""
        if self._listed is not None and incarnation not in self._listed:
            return False
        name = (self._listed or {}).get(incarnation, "")
        self._allocations[incarnation] = Allocation(namespace, room, name)
        return True

    def alive(self, incarnation: str) -> bool | None:
        """While its GameServer is ours; a deleted room's turns False once it is deleted."""
        return incarnation in self._allocations

    async def registered(self, incarnation: str) -> None:
        pass  # the pod's limits are its caps from its start

    def notify_deleted(self, incarnation: str) -> None:
        task = asyncio.get_running_loop().create_task(self._end(incarnation, mark_deleted=True))
        self._ending.add(task)
        task.add_done_callback(self._ending.discard)

    def capacity_refusal(self, rooms: int) -> str | None:
        return None  # the fleet says no: UnAllocated, after allocate_for

    def metrics_target(self, ip_address: str, admin_port: int) -> str | None:
        return None  # Prometheus finds relay pods itself (deploy/k8s: the PodMonitor)

    async def _sync_loop(self) -> None:
        while True:
            await asyncio.sleep(self.sync_interval)
            try:
                await self.sync()
            except Exception as exc:
                log.warning("listing GameServers failed: %r", exc)

    async def sync(self) -> None:
        """Forgets the allocations whose GameServer is gone, and reports each as its relay's exit
        (its room ends unless its agent already said why)."""
        listed_at = time.monotonic()
        found = await self._list_ours()
        gone = []
        for incarnation, allocation in list(self._allocations.items()):
            if incarnation in found and not allocation.game_server:
                self._allocations[incarnation] = Allocation(
                    allocation.namespace, allocation.room, found[incarnation]
                )
            elif incarnation not in found and allocation.since < listed_at:
                gone.append(incarnation)
        for incarnation in gone:
            allocation = self._allocations.pop(incarnation)
            log.info(
                "GameServer %s of %s/%s is gone",
                allocation.game_server,
                allocation.namespace,
                allocation.room,
            )
            if self._on_exit is not None:
                await self._on_exit(allocation.namespace, allocation.room, incarnation, None, None)

    async def close(self, stop_all: bool) -> None:
        if self._sync is not None:
            self._sync.cancel()
            await asyncio.gather(self._sync, return_exceptions=True)
        if stop_all:
            await asyncio.gather(*(self.stop(inc) for inc in list(self._allocations)), return_exceptions=True)
        with contextlib.suppress(Exception):
            await asyncio.gather(*self._ending, return_exceptions=True)
        if self._api is not None:
            with contextlib.suppress(Exception):
                self._api.api_client.close()
