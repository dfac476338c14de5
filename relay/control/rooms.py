"""Rooms from wantRoom to their end, and their recovery after a restart.

wantRoom stores a pending record (durably) and answers at once; a background task asks the
provisioner for a relay, whose agent then registers (agent_api.py). The record's incarnation
names that relay: its exit and its agent's reports act on this room and on no later room of the
same name. Every end (deleteRoom, the
agent's `closed`, the process exiting without a report: "crash", the reaper's "lost") goes
through `Rooms.end_room`: the record is removed, the end logged and counted, and the relay made
to go away, wherever it runs (the other nodes hear of the end: `Cluster.publish`).

With several nodes (relay/control/cluster.py) a room's relay is the node's that took wantRoom
(`RoomRecord.node`): only that node starts it, adopts it after a restart and signals its process.
A node that dies before its room's relay registered leaves the room pending; the leader gives it
a new incarnation and a relay of its own (`take_over`), so the room is provisioned by one node
and never stuck, and a relay the dead node may still have started is refused by incarnation.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time

from relay.control.auth import Authority
from relay.control.errors import conflict, not_found, unavailable
from relay.control.provisioner import NullProvisioner, RelayRequest
from relay.control.records import (
    NAMESPACE_ACTIVE,
    ROOM_READY,
    NamespaceRecord,
    RoomRecord,
    new_incarnation,
    now_ms,
)
from relay.control.state import ControlState, RoomRuntime, logging_namespace
from relay.control.validation import paginate
from relay.protocol.keys import generate_room_key

log = logging.getLogger("relay.control.rooms")


class Rooms:
    def __init__(self, state: ControlState, authority: Authority, internal_url: str) -> None:
        self.state = state
        self.authority = authority
        self.internal_url = internal_url
        state.provisioner.set_exit_callback(self._on_relay_exit)

    async def recover(self) -> None:
        """After a restart: adopts the relays still running, found by the incarnation their command
        line names (one spawned just before a crash has no pid on record yet); ends the rooms whose
        relay is gone; starts relays for the rooms acknowledged that never had one, under a new
        incarnation written first, so that a relay the search missed cannot act for the room.
        Only this node's rooms: another node's relay is that node's to adopt."""
        state, cluster, provisioner = self.state, self.state.cluster, self.state.provisioner
        running = provisioner.running_relays()
        for listed in await state.store.list_all_rooms():
            if not cluster.mine(listed):
                continue
            async with cluster.lock(listed.namespace, listed.name):
                room = await state.store.get_room(listed.namespace, listed.name)
                if room is None or room.incarnation != listed.incarnation:
                    continue  # ended, or taken over, while this node was away
                await self._recover(room, running.get(room.incarnation, []))
        log.info("recovered %d rooms", len(state.runtime))

    async def _recover(self, room: RoomRecord, pids: list[int]) -> None:
        state, provisioner = self.state, self.state.provisioner
        pid = room.pid if room.pid in pids or not pids else pids[0]
        adopted = provisioner.adopt(room.namespace, room.name, room.incarnation, pid)
        ns = await state.store.get_namespace(room.namespace)
        if ns is None or ns.status != NAMESPACE_ACTIVE:
            await self.end_room(room, "deleted", ns, stop=True)
        elif adopted or (not self.local and room.provisioned_at is not None):
            if pid != room.pid:
                room.pid = pid
                await state.store.put_room(room)
            # its agent may be keeping the quiet room's long gap: that much grace
            grace = state.config.idle_lost_after if room.ready else state.config.register_timeout
            rt = state.runtime[(room.namespace, room.name)] = RoomRuntime.of(room, lost_after=grace)
            await state.cluster.watch(room, grace)
            if room.state == ROOM_READY and room.admin_port:
                rt.metrics_target = provisioner.metrics_target(room.ip_address or "", room.admin_port)
        elif room.provisioned_at is None:
            await self._restart(room)
        else:
            await self.end_room(room, "crash", ns, stop=False)

    @property
    def local(self) -> bool:
        """Whether this node starts relays itself (not records only)."""
        return not isinstance(self.state.provisioner, NullProvisioner)

    async def _restart(self, room: RoomRecord) -> None:
        """Provisions an acknowledged room that has no relay. A local relay gets a new incarnation,
        written first: a relay started for the old one (and missed) can no longer act for the room.
        Callers hold the room's lock."""
        state = self.state
        if self.local:
            room.incarnation = new_incarnation()
            room.node, room.pid, room.provisioned_at = state.cluster.node_id, None, None
            await state.store.put_room(room)
        state.runtime[(room.namespace, room.name)] = RoomRuntime.of(room)
        state.spawn(self._provision(room))

    async def take_over(self, orphan: RoomRecord) -> None:
        """The leader: a room left pending by a node that died gets a relay of this node (if this
        host has room for it; otherwise it waits, and register_timeout ends it)."""
        state, cluster = self.state, self.state.cluster
        if not self.local or state.provisioner.capacity_refusal(len(state.runtime)) is not None:
            return
        async with cluster.lock(orphan.namespace, orphan.name):
            room = await state.store.get_room(orphan.namespace, orphan.name)
            if room is None or room.incarnation != orphan.incarnation or room.ready:
                return
            log.warning(
                "room %s/%s: its node %s is gone; provisioning it here", room.namespace, room.name, room.node
            )
            await self._restart(room)

    async def want_room(self, namespace: str, name: str, user_ids: list[str]) -> RoomRecord:
        state = self.state
        if not state.serving:  # a relay started now would outlive the stopping control plane
            raise unavailable("room", "the control plane is stopping", "realtime.room.error.stopping")
        async with state.cluster.lock(namespace, name):
            ns = await state.active_namespace(namespace)
            if await state.store.get_room(namespace, name) is not None:
                raise conflict("name", f"room {name} already exists", "realtime.room.name.error.duplicate")
            refusal = state.provisioner.capacity_refusal(len(state.runtime))
            if refusal is not None:
                raise unavailable(
                    "room", f"no capacity for another room: {refusal}", "realtime.room.error.noCapacity"
                )
            room = RoomRecord(
                namespace=namespace,
                name=name,
                encryption_key=generate_room_key(),
                agent_secret=secrets.token_urlsafe(32),
                notification_user_ids=user_ids,
                node=state.cluster.node_id,
            )
            # counted before the await: wants of other names may pass the capacity check
            # meanwhile (a PostgreSQL cluster's lock is per room) and must see this one
            state.runtime[(namespace, name)] = RoomRuntime.of(room)
            try:
                await state.store.put_room(room)
            except BaseException:
                state.runtime.pop((namespace, name), None)
                raise
        state.oplog.write(
            "room.created", namespace, name, logging_namespace(ns), notificationUserIds=len(user_ids)
        )
        state.spawn(self._provision(room))
        return room

    async def _provision(self, room: RoomRecord) -> None:
        state, config = self.state, self.state.config
        request = RelayRequest(
            namespace=room.namespace,
            room=room.name,
            incarnation=room.incarnation,
            room_key=room.encryption_key,
            agent_secret=room.agent_secret,
            control_url=self.internal_url,
            heartbeat_interval=config.heartbeat_interval,
            idle_heartbeat_interval=config.idle_heartbeat_interval,
            token_public_key=self.authority.public_key_text if config.relay_require_user_tokens else None,
            gs2_clients=config.relay_gs2_clients,
        )
        try:
            pid = await state.provisioner.provision(request)
        except Exception as exc:
            log.exception("provisioning %s/%s failed", room.namespace, room.name)
            async with state.cluster.lock(room.namespace, room.name):
                current = await state.store.get_room(room.namespace, room.name)
                if current is not None and current.incarnation == room.incarnation:
                    ns = await state.store.get_namespace(room.namespace)
                    await self.end_room(current, "provision_failed", ns, stop=False, detail=str(exc))
                else:
                    state.forget((room.namespace, room.name), room.incarnation)
            return
        async with state.cluster.lock(room.namespace, room.name):
            current = await state.store.get_room(room.namespace, room.name)
            if current is None or current.incarnation != room.incarnation:
                # Deleted (or taken over) while the process was starting: make sure it goes away.
                state.forget((room.namespace, room.name), room.incarnation)
                state.spawn(state.provisioner.stop(room.incarnation))
                return
            if current.pid is None:
                current.pid = pid
            current.provisioned_at = now_ms()
            await state.store.put_room(current)

    async def _room(self, namespace: str, name: str) -> RoomRecord:
        room = await self.state.store.get_room(namespace, name)
        if room is None:
            raise not_found("room", f"room {name} not found", "realtime.room.room.error.notFound")
        return room

    async def get_room(self, namespace: str, name: str) -> RoomRecord:
        await self.state.active_namespace(namespace)
        return await self._room(namespace, name)

    async def describe_rooms(
        self, namespace: str, after: str | None, limit: int
    ) -> tuple[list[RoomRecord], str | None]:
        await self.state.active_namespace(namespace)
        items = await self.state.store.list_rooms(namespace, after, limit + 1)
        return paginate(items, limit, "rooms:" + namespace)

    async def delete_room(self, namespace: str, name: str) -> RoomRecord:
        async with self.state.cluster.lock(namespace, name):
            ns = await self.state.active_namespace(namespace)
            room = await self._room(namespace, name)
            await self.end_room(room, "deleted", ns, stop=True, event="room.deleted")
            return room

    async def end_room(
        self,
        room: RoomRecord,
        reason: str,
        ns: NamespaceRecord | None,
        stop: bool,
        event: str = "room.closed",
        detail: str | None = None,
    ) -> None:
        """The one way a room ends, so every end is logged and counted once however it came (on
        whichever node). Callers hold the room's lock and pass its current record, having checked
        its incarnation where the end came from a relay. The other nodes hear of it: the one whose
        relay it is stops it, where `stop` says so."""
        state = self.state
        removed = await state.store.delete_room(room.namespace, room.name)
        rt = state.runtime.pop((room.namespace, room.name), None)
        if not removed and rt is None:
            return
        state.metrics.rooms_closed.labels(reason).inc()
        state.oplog.write(
            event,
            room.namespace,
            room.name,
            logging_namespace(ns),
            reason=reason,
            pid=room.pid,
            detail=detail,
        )
        drain = room.state == ROOM_READY and reason == "deleted"
        if stop:
            state.spawn(self._stop_relay(room.incarnation, drain))
        ended = {"event": "ended", "namespace": room.namespace, "room": room.name}
        await state.cluster.publish({**ended, "incarnation": room.incarnation, "stop": stop, "drain": drain})

    def on_ended(self, namespace: str, name: str, incarnation: str, stop: bool, drain: bool) -> None:
        """Another node ended a room: this node forgets it, and stops its relay if it runs here."""
        state = self.state
        state.forget((namespace, name), incarnation)
        if stop and state.provisioner.alive(incarnation):
            state.spawn(self._stop_relay(incarnation, drain))

    async def _stop_relay(self, incarnation: str, drain: bool) -> None:
        """deleteRoom: tell the relay at once (a local one drains with CLOSING "deleted" on
        SIGUSR1; any agent sees the 404 on its next heartbeat), give it one lost-window to go,
        then SIGTERM (SIGKILL after the grace)."""
        provisioner = self.state.provisioner
        if drain and provisioner.alive(incarnation):
            provisioner.notify_deleted(incarnation)
            deadline = time.monotonic() + self.state.config.lost_after + 1.0
            while time.monotonic() < deadline and provisioner.alive(incarnation):
                await asyncio.sleep(0.05)
        await provisioner.stop(incarnation)

    async def _on_relay_exit(
        self, namespace: str, name: str, incarnation: str, code: int | None, reason: str | None
    ) -> None:
        """The provisioner saw a relay go. Its room ends if that was the room's relay (a later
        room of the same name has another incarnation): with the reason the exit gives, else the
        one the room was already ending for (the reaper's "lost"), else "crash" (no report came)."""
        state = self.state
        async with state.cluster.lock(namespace, name):
            room = await state.store.get_room(namespace, name)
            if room is None or room.incarnation != incarnation:
                state.forget((namespace, name), incarnation)
                return
            rt = state.runtime.get((namespace, name))
            why = reason or (rt.ending if rt is not None and rt.ending else "crash")
            ns = await state.store.get_namespace(namespace)
            await self.end_room(room, why, ns, stop=False, detail=f"exit code {code}")
