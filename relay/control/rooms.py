"""Rooms from wantRoom to their end, and their recovery after a restart.

wantRoom stores a pending record (durably) and answers at once; a background task asks the
provisioner for a relay, whose agent then registers (agent_api.py). The record's incarnation
names that relay: its exit and its agent's reports act on this room and on no later room of the
same name. Every end (deleteRoom, the
agent's `closed`, the process exiting without a report: "crash", the reaper's "lost") goes
through `Rooms.end_room`: the record is removed, the end logged and counted, and the relay made
to go away.
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

CLOSE_REASONS = ("deleted", "idle", "lifetime", "shutdown", "crash", "cap_exceeded", "kicked")


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
        incarnation written first, so that a relay the search missed cannot act for the room."""
        state, provisioner = self.state, self.state.provisioner
        local = not isinstance(provisioner, NullProvisioner)
        running = provisioner.running_relays()
        for room in await state.store.list_all_rooms():
            key = (room.namespace, room.name)
            pids = running.get(room.incarnation, [])
            pid = room.pid if room.pid in pids or not pids else pids[0]
            adopted = provisioner.adopt(room.namespace, room.name, room.incarnation, pid)
            ns = await state.store.get_namespace(room.namespace)
            if ns is None or ns.status != NAMESPACE_ACTIVE:
                await self.end_room(room, "deleted", ns, stop=True)
            elif adopted or (not local and room.provisioned_at is not None):
                if pid != room.pid:
                    room.pid = pid
                    await state.store.put_room(room)
                # its agent may be keeping the quiet room's long gap: that much grace
                state.runtime[key] = RoomRuntime.of(room, lost_after=state.config.idle_lost_after)
                if room.state == ROOM_READY and room.admin_port:
                    target = provisioner.metrics_target(room.ip_address or "", room.admin_port)
                    state.targets.add(key, room.incarnation, target)
            elif room.provisioned_at is None:
                if local:
                    room.incarnation = new_incarnation()
                    await state.store.put_room(room)
                state.runtime[key] = RoomRuntime.of(room)
                state.spawn(self._provision(room))
            else:
                await self.end_room(room, "crash", ns, stop=False)
        log.info("recovered %d rooms", len(state.runtime))

    async def want_room(self, namespace: str, name: str, user_ids: list[str]) -> RoomRecord:
        state = self.state
        async with state.lock:
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
            )
            await state.store.put_room(room)
            state.runtime[(namespace, name)] = RoomRuntime.of(room)
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
        )
        try:
            pid = await state.provisioner.provision(request)
        except Exception as exc:
            log.exception("provisioning %s/%s failed", room.namespace, room.name)
            async with state.lock:
                current = await state.store.get_room(room.namespace, room.name)
                if current is not None and current.incarnation == room.incarnation:
                    ns = await state.store.get_namespace(room.namespace)
                    await self.end_room(current, "provision_failed", ns, stop=False, detail=str(exc))
            return
        async with state.lock:
            current = await state.store.get_room(room.namespace, room.name)
            if current is None or current.incarnation != room.incarnation:
                # Deleted while the process was starting: make sure it goes away.
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
        async with self.state.lock:
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
        """The one way a room ends, so every end is logged and counted once however it came.
        Callers hold the lock (recovery runs before any request) and pass the room's current
        record, having checked its incarnation where the end came from a relay."""
        state = self.state
        removed = await state.store.delete_room(room.namespace, room.name)
        rt = state.runtime.pop((room.namespace, room.name), None)
        state.targets.remove((room.namespace, room.name))
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
        if stop:
            state.spawn(self._stop_relay(room, drain=room.state == ROOM_READY and reason == "deleted"))

    async def _stop_relay(self, room: RoomRecord, drain: bool) -> None:
        """deleteRoom: tell the relay at once (a local one drains with CLOSING "deleted" on
        SIGUSR1; any agent sees the 404 on its next heartbeat), give it one lost-window to go,
        then SIGTERM (SIGKILL after the grace)."""
        provisioner, incarnation = self.state.provisioner, room.incarnation
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
        async with state.lock:
            room = await state.store.get_room(namespace, name)
            if room is None or room.incarnation != incarnation:
                return
            rt = state.runtime.get((namespace, name))
            why = reason or (rt.ending if rt is not None and rt.ending else "crash")
            ns = await state.store.get_namespace(namespace)
            await self.end_room(room, why, ns, stop=False, detail=f"exit code {code}")
