"""The agents' internal API (register, heartbeat, closed) and the reaper that ends the rooms whose
relay went silent.

Each room's agent authenticates with the room's own secret. Registration makes the room ready
(its address shown, the create notification pushed to the users connected to any node, the
webhook posted once, by the node that took the registration); heartbeats only touch the
cluster's liveness (one node: in memory, no store write; several: one row's deadline). A relay is
lost after `missed_heartbeats` of the gaps its agent promised (nextHeartbeatSeconds), and a
pending room after `register_timeout`; the reaper runs on the cluster's leader only.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any, TypeVar

from relay.agent.wire import Closed, Heartbeat, HeartbeatAnswer, Registration, WireError
from relay.control.cluster import RoomKey, RoomRuntime, owns
from relay.control.errors import ApiError, bad_request, not_found
from relay.control.gateway import CREATE_ISSUER, Gateway
from relay.control.records import RELAY_CLOSE_REASONS, ROOM_READY, NamespaceRecord, RoomRecord, now_ms
from relay.control.rooms import Rooms
from relay.control.state import ControlState, logging_namespace

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
        if room is None or not owns(room.agent_secret, room.incarnation, secret, incarnation):
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
        state, cluster, key = self.state, self.state.cluster, (namespace, name)
        room = await self._agent_room(namespace, name, secret, registration.incarnation)
        if pid is not None and cluster.mine(room):  # our relay, not tracked yet (an earlier run's)
            state.provisioner.adopt(namespace, name, room.incarnation, pid)
        # A capped relay's CPU quota goes on before its address can be read: a room is never
        # reachable uncapped (the start-up boost ends here, or on the node whose relay it is).
        await state.provisioner.registered(room.incarnation)
        await cluster.owner_registered(room)
        async with cluster.lock(namespace, name):
            room = await self._agent_room(namespace, name, secret, registration.incarnation)
            first = room.state != ROOM_READY
            room.state = ROOM_READY
            room.ip_address, room.port, room.admin_port = ip, port, admin_port
            if pid is not None:
                room.pid = pid
            room.updated_at = max(now_ms(), room.updated_at)
            room.revision += 1
            await state.store.put_room(room)
            rt = state.runtime.get(key)
            if (rt is None or rt.incarnation != room.incarnation) and cluster.mine(room):
                rt = state.runtime[key] = RoomRuntime.of(room)
            target = state.provisioner.metrics_target(ip, admin_port) if admin_port else None
            if rt is not None and rt.incarnation == room.incarnation:
                rt.state = ROOM_READY
                rt.metrics_target = target  # the owner lists its relays
            provision_s = await cluster.registered(room, lost_after)
            ns = await state.store.get_namespace(namespace)
        if not first:
            return
        if provision_s is not None:
            state.metrics.provision_seconds.observe(provision_s)
        state.oplog.write(
            "room.ready",
            namespace,
            name,
            logging_namespace(ns),
            ipAddress=ip,
            port=port,
            pid=pid,
            provisionSeconds=None if provision_s is None else round(provision_s, 3),
        )
        notify = ns is not None and notifications_enabled(ns)
        users = list(room.notification_user_ids) if notify else []
        ready = {"event": "ready", "namespace": namespace, "room": name, "incarnation": room.incarnation}
        # the other nodes push to their users; the relay's own node lists it for Prometheus
        await cluster.publish({**ready, "users": users, "target": target})
        if notify:
            subject, payload = _created(namespace, name)
            await self.gateway.push(users, CREATE_ISSUER, subject, payload)
            self.gateway.webhook(CREATE_ISSUER, subject, users, payload)  # here only: once

    async def heartbeat(
        self, namespace: str, name: str, secret: str | None, body: dict[str, Any]
    ) -> dict[str, Any]:
        beat = _read(Heartbeat.from_json, body)
        lost_after = self._lost_after(beat.next_heartbeat)
        metrics = self.state.metrics
        heard = await self.state.cluster.heartbeat(
            namespace, name, secret, beat.incarnation, lost_after, beat.stats()
        )
        if not heard:  # not a watched room's relay: the record decides whether this caller hears so
            await self._agent_room(namespace, name, secret, beat.incarnation)
        metrics.heartbeats.inc()
        return HeartbeatAnswer(deleted=not heard).to_json()

    def _lost_after(self, gap: float | None) -> float:
        """missed_heartbeats of the gap the agent promised (nextHeartbeatSeconds, held between the
        two configured intervals; an agent that says nothing keeps heartbeat_interval)."""
        cfg = self.state.config
        if gap is None:
            gap = cfg.heartbeat_interval
        return min(max(gap, cfg.heartbeat_interval), cfg.longest_heartbeat_gap) * cfg.missed_heartbeats

    async def closed(self, namespace: str, name: str, secret: str | None, body: dict[str, Any]) -> None:
        closed = _read(Closed.from_json, body)
        async with self.state.cluster.lock(namespace, name):
            room = await self._agent_room(namespace, name, secret, closed.incarnation)
            ns = await self.state.store.get_namespace(namespace)
            reason = closed.reason if closed.reason in RELAY_CLOSE_REASONS else "other"  # a metric label
            rt = self.state.runtime.get((namespace, name))
            if reason == "shutdown" and rt is not None and rt.incarnation == closed.incarnation and rt.ending:
                reason = rt.ending  # stopped by this control plane for that (the reaper's "lost")
            detail = None if reason == closed.reason else f"the relay said {closed.reason!r}"
            await self.rooms.end_room(room, reason, ns, stop=False, detail=detail)

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
        Runs on the cluster's leader only. A lost relay of this host is stopped first and its room
        ends when its exit is seen, with the reason the exit gives where it gives one: a relay the
        kernel is OOM-killing goes silent before it dies, and "cap_exceeded" is what happened to it.
        Another node's relay is stopped by that node once it hears of the end. Then the leader
        takes over the rooms a dead node left pending."""
        state, cluster = self.state, self.state.cluster
        if not cluster.leader():
            return
        for due in await cluster.overdue(state.config.register_timeout):
            if self._ending(due.key, due.incarnation):
                continue  # its relay is being stopped
            async with cluster.lock(due.namespace, due.name):
                room = await state.store.get_room(*due.key)
                if room is None or room.incarnation != due.incarnation:
                    state.forget(due.key, due.incarnation)  # ended or replaced while we waited
                    continue
                if self._ending(due.key, due.incarnation):
                    continue
                ns = await state.store.get_namespace(due.namespace)
                log.warning("room %s/%s: %s", due.namespace, due.name, due.reason)
                rt = state.runtime.get(due.key)
                if (
                    rt is not None
                    and rt.incarnation == due.incarnation
                    and state.provisioner.alive(due.incarnation)
                ):
                    rt.ending = due.reason
                    state.spawn(self._stop_then_end(due.key, rt))
                else:
                    await self.rooms.end_room(room, due.reason, ns, stop=True)
        for orphan in await cluster.orphans():
            await self.rooms.take_over(orphan)

    def _ending(self, key: RoomKey, incarnation: str) -> bool:
        rt = self.state.runtime.get(key)
        return rt is not None and rt.incarnation == incarnation and rt.ending is not None

    async def _stop_then_end(self, key: RoomKey, rt: RoomRuntime) -> None:
        """Stops a lost local relay; its exit ends the room (Rooms._on_relay_exit). Should the exit
        never be seen, the room ends here for the reason it was ending for."""
        state = self.state
        await state.provisioner.stop(rt.incarnation)
        async with state.cluster.lock(*key):
            room = await state.store.get_room(*key)
            if state.runtime.get(key) is rt and room is not None and room.incarnation == rt.incarnation:
                ns = await state.store.get_namespace(key[0])
                await self.rooms.end_room(room, rt.ending or "lost", ns, stop=True)

    # --- what the other nodes tell this one ---------------------------------------------------
    async def on_event(self, event: dict[str, Any]) -> None:
        """Another node's registration made a room ready (push to the users connected here), is
        about to show this node's relay (end its start-up, then answer), or a room ended (forget
        it; stop its relay if it runs here). Events are best effort: a relay also learns of its
        room's end from its next heartbeat."""
        namespace, name, incarnation = event["namespace"], event["room"], event["incarnation"]
        cluster = self.state.cluster
        if event["event"] == "registering" and event.get("to") == cluster.node_id:
            await self.state.provisioner.registered(incarnation)
            answer = {"event": "registered", "namespace": namespace, "room": name, "incarnation": incarnation}
            await cluster.publish({**answer, "token": event.get("token")})
        elif event["event"] == "ended":
            self.rooms.on_ended(
                namespace, name, incarnation, bool(event.get("stop")), bool(event.get("drain"))
            )
        elif event["event"] == "ready":
            rt = self.state.runtime.get((namespace, name))
            if rt is not None and rt.incarnation == incarnation:
                rt.state = ROOM_READY
                target = event.get("target")  # this node's relay, registered through another
                rt.metrics_target = target if isinstance(target, str) else None
            users = [u for u in event.get("users") or () if isinstance(u, str)]
            if users:
                await self.gateway.push(users, CREATE_ISSUER, *_created(namespace, name))


def _created(namespace: str, name: str) -> tuple[str, dict[str, Any]]:
    """The room-ready notification's subject and payload."""
    return f"Room {name} in namespace {namespace} is ready", {"namespaceName": namespace, "roomName": name}


def _no_such_room() -> ApiError:
    return not_found("room", "no such room for this agent", "realtime.agent.room.error.notFound")


def _read(parse: Callable[[dict[str, Any]], _Body], body: dict[str, Any]) -> _Body:
    """An agent's body (relay/agent/wire.py), or GS2's 400 naming the bad field."""
    try:
        return parse(body)
    except WireError as exc:
        raise bad_request(exc.field, str(exc), f"realtime.agent.{exc.field}.error.invalid") from None
