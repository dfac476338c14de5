"""The agents' internal API (register, heartbeat, closed) and the reaper that ends the rooms whose
relay went silent.

Each room's agent authenticates with the room's own secret. Registration makes the room ready
(its address shown, the create notification pushed); heartbeats only touch the in-memory
liveness, so they cost no store write. A relay is lost after `missed_heartbeats` of the gaps its
agent promised (nextHeartbeatSeconds), and a pending room after `register_timeout`.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import time
from collections.abc import Callable
from typing import Any, TypeVar

from relay.agent.wire import Closed, Heartbeat, HeartbeatAnswer, Registration, WireError
from relay.control.errors import ApiError, bad_request, not_found
from relay.control.gateway import CREATE_ISSUER, Gateway
from relay.control.records import ROOM_PENDING, ROOM_READY, NamespaceRecord, RoomRecord, now_ms
from relay.control.rooms import Rooms
from relay.control.state import ControlState, RoomRuntime, logging_namespace

log = logging.getLogger("relay.control.agent_api")

_Body = TypeVar("_Body", Registration, Heartbeat, Closed)


def notifications_enabled(ns: NamespaceRecord) -> bool:
    """GS2's NotificationSetting.enable defaults to "Enabled" when the setting is given."""
    setting = ns.create_notification
    return setting is not None and setting.get("enable") in (None, "Enabled")


class AgentApi:
    def __init__(self, state: ControlState, rooms: Rooms, gateway: Gateway) -> None:
        self.state = state
        self.rooms = rooms
        self.gateway = gateway
        self._reaper: asyncio.Task[None] | None = None

    async def _agent_room(
        self, namespace: str, name: str, secret: str | None, incarnation: str | None
    ) -> RoomRecord:
        """The room whose relay this caller is: its secret, and the room's incarnation when the
        body names one. Anything else is one answer, 404, whether the room is missing or the
        caller wrong: the internal API tells a caller without the secret nothing."""
        room = await self.state.store.get_room(namespace, name)
        if room is None or not _owns(room.agent_secret, room.incarnation, secret, incarnation):
            raise _no_such_room()
        return room

    async def register(self, namespace: str, name: str, secret: str | None, body: dict[str, Any]) -> None:
        registration = _read(Registration.from_json, body)
        ip, port, admin_port, pid = (
            registration.ip_address,
            registration.port,
            registration.admin_port,
            registration.pid,
        )
        lost_after = self._lost_after(registration.next_heartbeat)
        state = self.state
        room = await self._agent_room(namespace, name, secret, registration.incarnation)
        if pid is not None:  # a local relay not tracked yet (started by an earlier control plane)
            state.provisioner.adopt(namespace, name, room.incarnation, pid)
        # A capped relay's CPU quota goes on before its address can be read: a room is never
        # reachable uncapped (the start-up boost ends here).
        await state.provisioner.registered(room.incarnation)
        async with state.lock:
            room = await self._agent_room(namespace, name, secret, registration.incarnation)
            first = room.state != ROOM_READY
            room.state = ROOM_READY
            room.ip_address, room.port, room.admin_port = ip, port, admin_port
            if pid is not None:
                room.pid = pid
            room.updated_at = max(now_ms(), room.updated_at)
            room.revision += 1
            await state.store.put_room(room)
            rt = state.runtime.get((namespace, name))
            if rt is None or rt.incarnation != room.incarnation:
                rt = state.runtime[(namespace, name)] = RoomRuntime.of(room)
            provision_s = time.monotonic() - rt.since
            rt.state = ROOM_READY
            rt.last_heartbeat = time.monotonic()
            rt.lost_after = lost_after
            target = state.provisioner.metrics_target(ip, admin_port) if admin_port else None
            state.targets.add((namespace, name), room.incarnation, target)
            ns = await state.store.get_namespace(namespace)
        if not first:
            return
        state.metrics.provision_seconds.observe(provision_s)
        state.oplog.write(
            "room.ready",
            namespace,
            name,
            logging_namespace(ns),
            ipAddress=ip,
            port=port,
            pid=pid,
            provisionSeconds=round(provision_s, 3),
        )
        if ns is not None and notifications_enabled(ns):
            payload = {"namespaceName": namespace, "roomName": name}
            subject = f"Room {name} in namespace {namespace} is ready"
            await self.gateway.push(room.notification_user_ids, CREATE_ISSUER, subject, payload)
            self.gateway.webhook(CREATE_ISSUER, subject, list(room.notification_user_ids), payload)

    async def heartbeat(
        self, namespace: str, name: str, secret: str | None, body: dict[str, Any]
    ) -> dict[str, Any]:
        beat = _read(Heartbeat.from_json, body)
        lost_after = self._lost_after(beat.next_heartbeat)
        metrics = self.state.metrics
        rt = self.state.runtime.get((namespace, name))
        if rt is None:  # not one of ours now: the record decides whether this caller hears so
            await self._agent_room(namespace, name, secret, beat.incarnation)
            metrics.heartbeats.inc()
            return HeartbeatAnswer(deleted=True).to_json()
        if not _owns(rt.agent_secret, rt.incarnation, secret, beat.incarnation):
            raise _no_such_room()
        metrics.heartbeats.inc()
        rt.last_heartbeat = time.monotonic()
        rt.lost_after = lost_after
        rt.stats = beat.stats()
        return HeartbeatAnswer(deleted=False).to_json()

    def _lost_after(self, gap: float | None) -> float:
        """missed_heartbeats of the gap the agent promised (nextHeartbeatSeconds, held between the
        two configured intervals; an agent that says nothing keeps heartbeat_interval)."""
        cfg = self.state.config
        if gap is None:
            gap = cfg.heartbeat_interval
        return min(max(gap, cfg.heartbeat_interval), cfg.longest_heartbeat_gap) * cfg.missed_heartbeats

    async def closed(self, namespace: str, name: str, secret: str | None, body: dict[str, Any]) -> None:
        closed = _read(Closed.from_json, body)
        async with self.state.lock:
            room = await self._agent_room(namespace, name, secret, closed.incarnation)
            ns = await self.state.store.get_namespace(namespace)
            await self.rooms.end_room(room, closed.reason, ns, stop=False)

    # --- the reaper ----------------------------------------------------------------------------
    def start_reaper(self) -> None:
        self._reaper = asyncio.get_running_loop().create_task(self._reap_loop())

    async def stop_reaper(self) -> None:
        if self._reaper is not None:
            self._reaper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reaper

    async def _reap_loop(self) -> None:
        while True:
            await asyncio.sleep(self.state.config.sweep_interval)
            try:
                await self.reap_once()
            except Exception:
                log.exception("reaper pass failed")

    async def reap_once(self) -> None:
        """Ends the rooms past their window; the lock is taken per room, so answers are not held up.
        A lost relay of this host is stopped first and its room ends when its exit is seen, with
        the reason the exit gives where it gives one: a relay the kernel is OOM-killing goes
        silent before it dies, and "cap_exceeded" is what happened to it."""
        state = self.state
        now = time.monotonic()
        for key, rt in list(state.runtime.items()):
            if rt.ending is not None:
                continue
            if rt.state == ROOM_READY and now - rt.last_heartbeat > rt.lost_after:
                reason = "lost"
            elif rt.state == ROOM_PENDING and now - rt.since > state.config.register_timeout:
                reason = "register_timeout"
            else:
                continue
            async with state.lock:
                if state.runtime.get(key) is not rt:
                    continue  # ended or replaced while we waited for the lock
                room = await state.store.get_room(*key)
                ns = await state.store.get_namespace(key[0])
                if room is None or room.incarnation != rt.incarnation:
                    state.runtime.pop(key, None)
                    continue
                log.warning("room %s/%s: %s", key[0], key[1], reason)
                if state.provisioner.alive(rt.incarnation):
                    rt.ending = reason
                    state.spawn(self._stop_then_end(key, rt))
                else:
                    await self.rooms.end_room(room, reason, ns, stop=True)

    async def _stop_then_end(self, key: tuple[str, str], rt: RoomRuntime) -> None:
        """Stops a lost local relay; its exit ends the room (Rooms._on_relay_exit). Should the exit
        never be seen, the room ends here for the reason it was ending for."""
        state = self.state
        await state.provisioner.stop(rt.incarnation)
        async with state.lock:
            room = await state.store.get_room(*key)
            if state.runtime.get(key) is rt and room is not None and room.incarnation == rt.incarnation:
                ns = await state.store.get_namespace(key[0])
                await self.rooms.end_room(room, rt.ending or "lost", ns, stop=True)


def _owns(secret: str, incarnation: str, given_secret: str | None, given_incarnation: str | None) -> bool:
    """The caller holds the room's secret and, when it names an incarnation, serves this one."""
    secret_ok = given_secret is not None and hmac.compare_digest(given_secret.encode(), secret.encode())
    return secret_ok and given_incarnation in (None, incarnation)


def _no_such_room() -> ApiError:
    return not_found("room", "no such room for this agent", "realtime.agent.room.error.notFound")


def _read(parse: Callable[[dict[str, Any]], _Body], body: dict[str, Any]) -> _Body:
    """An agent's body (relay/agent/wire.py), or GS2's 400 naming the bad field."""
    try:
        return parse(body)
    except WireError as exc:
        raise bad_request(exc.field, str(exc), f"realtime.agent.{exc.field}.error.invalid") from None
