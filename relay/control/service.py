"""What the control plane does, independent of HTTP: namespaces, rooms, relay life and recovery.

Room life: wantRoom stores a pending record (durably) and answers; a background task asks the
provisioner for a relay; the relay's agent registers (record becomes ready: address shown,
create notification pushed); heartbeats keep it alive; it ends by deleteRoom (record removed,
the next heartbeat answers 404 so the agent drains with CLOSING "deleted"; a stop after a grace
as backstop), by the agent reporting `closed`, by the process exiting without a report
("crash"), or by missing heartbeats ("lost"). Every end removes the record and is logged.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import secrets
import time
from dataclasses import dataclass, field
from typing import Any, TypeVar

from relay.agent.wire import Closed, Heartbeat, HeartbeatAnswer, Registration, WireError
from relay.control.auth import Authority
from relay.control.config import ControlConfig
from relay.control.errors import bad_request, conflict, not_found, unauthorized
from relay.control.gateway import CREATE_ISSUER, Gateway
from relay.control.metrics import ControlMetrics
from relay.control.oplog import OperationLog
from relay.control.provisioner import NullProvisioner, Provisioner, RelayRequest
from relay.control.records import (
    NAMESPACE_ACTIVE,
    NAMESPACE_DELETED,
    ROOM_PENDING,
    ROOM_READY,
    NamespaceRecord,
    RoomRecord,
    now_ms,
)
from relay.control.store import Store
from relay.control.validation import NamespaceInput, encode_page_token
from relay.protocol.keys import generate_room_key

log = logging.getLogger("relay.control.service")

_Body = TypeVar("_Body", Registration, Heartbeat, Closed)

CLOSE_REASONS = ("deleted", "idle", "lifetime", "shutdown", "crash", "cap_exceeded", "kicked")


@dataclass(slots=True)
class RoomRuntime:
    """In-memory liveness of one room (not persisted: rebuilt with a fresh grace after restart)."""

    state: str
    since: float = field(default_factory=time.monotonic)
    last_heartbeat: float = field(default_factory=time.monotonic)
    lost_after: float = 0.0  # silence after which a ready relay is lost: missed_heartbeats promised gaps
    agent_secret: str = ""  # the record's, so a heartbeat is checked without a store read
    stats: dict[str, Any] = field(default_factory=dict)


def notifications_enabled(ns: NamespaceRecord) -> bool:
    """GS2's NotificationSetting.enable defaults to "Enabled" when the setting is given."""
    setting = ns.create_notification
    return setting is not None and setting.get("enable") in (None, "Enabled")


def logging_namespace(ns: NamespaceRecord | None) -> str | None:
    if ns is None or not ns.log_setting:
        return None
    value = ns.log_setting.get("loggingNamespaceId")
    return value if isinstance(value, str) and value else None


class RealtimeService:
    def __init__(
        self,
        config: ControlConfig,
        store: Store,
        provisioner: Provisioner,
        authority: Authority,
        gateway: Gateway,
        oplog: OperationLog,
        metrics: ControlMetrics,
        internal_url: str,
    ) -> None:
        self.config = config
        self.store = store
        self.provisioner = provisioner
        self.authority = authority
        self.gateway = gateway
        self.oplog = oplog
        self.metrics = metrics
        self.internal_url = internal_url
        self.runtime: dict[tuple[str, str], RoomRuntime] = {}
        self._lock = asyncio.Lock()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._reaper: asyncio.Task[None] | None = None
        provisioner.set_exit_callback(self._on_relay_exit)

    # --- life ------------------------------------------------------------------------------
    def room_counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for rt in self.runtime.values():
            counts[rt.state] = counts.get(rt.state, 0) + 1
        return counts

    def _spawn(self, coro: Any) -> asyncio.Task[Any]:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def start(self) -> None:
        await self.provisioner.start()  # e.g. the zygote template, before any room is wanted
        await self.recover()
        self._reaper = asyncio.get_running_loop().create_task(self._reap_loop())

    async def stop(self) -> None:
        if self._reaper is not None:
            self._reaper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reaper
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.provisioner.close(stop_all=self.config.stop_relays_on_exit)

    async def recover(self) -> None:
        """Adopts relays still running from an earlier run; cleans up rooms whose relay is gone;
        provisions rooms that were acknowledged but never got a relay."""
        local = not isinstance(self.provisioner, NullProvisioner)
        for room in await self.store.list_all_rooms():
            key = (room.namespace, room.name)
            ns = await self.store.get_namespace(room.namespace)
            if ns is None or ns.status != NAMESPACE_ACTIVE:
                await self._end_room(room, "deleted", ns, stop=True)
                continue
            if room.pid is None and room.provisioned_at is None:
                self.runtime[key] = RoomRuntime(ROOM_PENDING, agent_secret=room.agent_secret)
                self._spawn(self._provision(room))
            elif self.provisioner.adopt(room.namespace, room.name, room.pid) or not local:
                # its agent may be keeping the quiet room's long gap: that much grace
                self.runtime[key] = RoomRuntime(
                    room.state, lost_after=self.config.idle_lost_after, agent_secret=room.agent_secret
                )
            else:
                await self._end_room(room, "crash", ns, stop=False)
        log.info("recovered %d rooms", len(self.runtime))

    # --- namespaces ------------------------------------------------------------------------
    async def _active_namespace(self, name: str) -> NamespaceRecord:
        ns = await self.store.get_namespace(name)
        if ns is None or ns.status != NAMESPACE_ACTIVE:
            raise not_found(
                "namespace", f"namespace {name} not found", "realtime.namespace.namespace.error.notFound"
            )
        return ns

    async def create_namespace(self, name: str, inp: NamespaceInput) -> NamespaceRecord:
        async with self._lock:
            old = await self.store.get_namespace(name)
            if old is not None and old.status == NAMESPACE_ACTIVE:
                raise conflict(
                    "name", f"namespace {name} already exists", "realtime.namespace.name.error.duplicate"
                )
            rec = NamespaceRecord(
                name=name,
                server_type=inp.server_type,
                server_spec=inp.server_spec,
                description=inp.description,
                transaction_setting=inp.transaction_setting,
                transaction_setting_v2=inp.transaction_setting_v2,
                create_notification=inp.create_notification,
                log_setting=inp.log_setting,
                revision=0 if old is None else old.revision + 1,
            )
            await self.store.put_namespace(rec)
            return rec

    async def get_namespace(self, name: str) -> NamespaceRecord:
        return await self._active_namespace(name)

    async def namespace_status(self, name: str) -> str:
        ns = await self.store.get_namespace(name)
        if ns is None:
            raise not_found(
                "namespace", f"namespace {name} not found", "realtime.namespace.namespace.error.notFound"
            )
        return ns.status

    async def update_namespace(self, name: str, inp: NamespaceInput) -> NamespaceRecord:
        async with self._lock:
            rec = await self._active_namespace(name)
            rec.description = inp.description
            rec.transaction_setting = inp.transaction_setting
            rec.transaction_setting_v2 = inp.transaction_setting_v2
            rec.server_type = inp.server_type
            rec.server_spec = inp.server_spec
            rec.create_notification = inp.create_notification
            rec.log_setting = inp.log_setting
            rec.updated_at = max(now_ms(), rec.updated_at)
            rec.revision += 1
            await self.store.put_namespace(rec)
            return rec

    async def delete_namespace(self, name: str) -> NamespaceRecord:
        async with self._lock:
            rec = await self._active_namespace(name)
            rec.status = NAMESPACE_DELETED
            rec.updated_at = max(now_ms(), rec.updated_at)
            rec.revision += 1
            await self.store.put_namespace(rec)
            rooms = []
            after: str | None = None
            while True:
                page = await self.store.list_rooms(name, after, 1000)
                rooms += page
                if len(page) < 1000:
                    break
                after = page[-1].name
            for room in rooms:
                await self._end_room(room, "deleted", rec, stop=True, event="room.deleted")
            return rec

    async def describe_namespaces(
        self, prefix: str | None, after: str | None, limit: int
    ) -> tuple[list[NamespaceRecord], str | None]:
        items = await self.store.list_namespaces(prefix, after, limit + 1)
        more = len(items) > limit
        items = items[:limit]
        return items, encode_page_token("namespaces", items[-1].name) if more else None

    # --- rooms -----------------------------------------------------------------------------
    async def want_room(self, namespace: str, name: str, user_ids: list[str]) -> RoomRecord:
        async with self._lock:
            ns = await self._active_namespace(namespace)
            if await self.store.get_room(namespace, name) is not None:
                raise conflict("name", f"room {name} already exists", "realtime.room.name.error.duplicate")
            room = RoomRecord(
                namespace=namespace,
                name=name,
                encryption_key=generate_room_key(),
                agent_secret=secrets.token_urlsafe(32),
                notification_user_ids=user_ids,
            )
            await self.store.put_room(room)
            self.runtime[(namespace, name)] = RoomRuntime(ROOM_PENDING, agent_secret=room.agent_secret)
        self.oplog.write(
            "room.created", namespace, name, logging_namespace(ns), notificationUserIds=len(user_ids)
        )
        self._spawn(self._provision(room))
        return room

    async def _provision(self, room: RoomRecord) -> None:
        request = RelayRequest(
            namespace=room.namespace,
            room=room.name,
            room_key=room.encryption_key,
            agent_secret=room.agent_secret,
            control_url=self.internal_url,
            heartbeat_interval=self.config.heartbeat_interval,
            idle_heartbeat_interval=self.config.idle_heartbeat_interval,
            token_public_key=self.authority.public_key_text
            if self.config.relay_require_user_tokens
            else None,
        )
        try:
            pid = await self.provisioner.provision(request)
        except Exception as exc:
            log.exception("provisioning %s/%s failed", room.namespace, room.name)
            async with self._lock:
                current = await self.store.get_room(room.namespace, room.name)
                if current is not None and current.agent_secret == room.agent_secret:
                    ns = await self.store.get_namespace(room.namespace)
                    await self._end_room(current, "provision_failed", ns, stop=False, detail=str(exc))
            return
        async with self._lock:
            current = await self.store.get_room(room.namespace, room.name)
            if current is None or current.agent_secret != room.agent_secret:
                # Deleted while the process was starting: make sure it goes away.
                self._spawn(self.provisioner.stop(room.namespace, room.name))
                return
            if current.pid is None:
                current.pid = pid
            current.provisioned_at = now_ms()
            await self.store.put_room(current)

    async def _room(self, namespace: str, name: str) -> RoomRecord:
        room = await self.store.get_room(namespace, name)
        if room is None:
            raise not_found("room", f"room {name} not found", "realtime.room.room.error.notFound")
        return room

    async def get_room(self, namespace: str, name: str) -> RoomRecord:
        await self._active_namespace(namespace)
        return await self._room(namespace, name)

    async def describe_rooms(
        self, namespace: str, after: str | None, limit: int
    ) -> tuple[list[RoomRecord], str | None]:
        await self._active_namespace(namespace)
        items = await self.store.list_rooms(namespace, after, limit + 1)
        more = len(items) > limit
        items = items[:limit]
        return items, encode_page_token("rooms:" + namespace, items[-1].name) if more else None

    async def delete_room(self, namespace: str, name: str) -> RoomRecord:
        async with self._lock:
            ns = await self._active_namespace(namespace)
            room = await self._room(namespace, name)
            await self._end_room(room, "deleted", ns, stop=True, event="room.deleted")
            return room

    async def _end_room(
        self,
        room: RoomRecord,
        reason: str,
        ns: NamespaceRecord | None,
        stop: bool,
        event: str = "room.closed",
        detail: str | None = None,
    ) -> None:
        """Removes the record (durably), logs why, and makes sure the relay goes away."""
        key = (room.namespace, room.name)
        removed = await self.store.delete_room(room.namespace, room.name)
        rt = self.runtime.pop(key, None)
        if not removed and rt is None:
            return
        self.metrics.rooms_closed.labels(reason).inc()
        self.oplog.write(
            event,
            room.namespace,
            room.name,
            logging_namespace(ns),
            reason=reason,
            pid=room.pid,
            detail=detail,
        )
        if stop:
            self._spawn(self._stop_relay(room, drain=room.state == ROOM_READY and reason == "deleted"))

    async def _stop_relay(self, room: RoomRecord, drain: bool) -> None:
        """deleteRoom: tell the relay at once (a local one drains with CLOSING "deleted" on
        SIGUSR1; any agent sees the 404 on its next heartbeat), give it one lost-window to go,
        then SIGTERM (SIGKILL after the grace)."""
        if drain and self.provisioner.alive(room.namespace, room.name):
            self.provisioner.notify_deleted(room.namespace, room.name, room.pid)
            deadline = time.monotonic() + self.config.lost_after + 1.0
            while time.monotonic() < deadline and self.provisioner.alive(room.namespace, room.name):
                await asyncio.sleep(0.05)
        await self.provisioner.stop(room.namespace, room.name, room.pid)

    # --- agent internal API ----------------------------------------------------------------
    async def _agent_room(self, namespace: str, name: str, secret: str | None) -> RoomRecord:
        room = await self.store.get_room(namespace, name)
        if room is None:
            raise not_found("room", "room not found", "realtime.room.room.error.notFound")
        _check_secret(secret, room.agent_secret)
        return room

    async def register(self, namespace: str, name: str, secret: str | None, body: Any) -> None:
        registration = _read(Registration, body)
        ip, port, admin_port, pid = (
            registration.ip_address,
            registration.port,
            registration.admin_port,
            registration.pid,
        )
        lost_after = self._lost_after(registration.next_heartbeat)
        async with self._lock:
            room = await self._agent_room(namespace, name, secret)
            first = room.state != ROOM_READY
            room.state = ROOM_READY
            room.ip_address, room.port, room.admin_port = ip, port, admin_port
            if pid is not None:
                room.pid = pid
            room.updated_at = max(now_ms(), room.updated_at)
            room.revision += 1
            await self.store.put_room(room)
            rt = self.runtime.setdefault((namespace, name), RoomRuntime(ROOM_READY))
            rt.agent_secret = room.agent_secret
            provision_s = time.monotonic() - rt.since
            rt.state = ROOM_READY
            rt.last_heartbeat = time.monotonic()
            rt.lost_after = lost_after
            ns = await self.store.get_namespace(namespace)
        if pid is not None:
            self.provisioner.adopt(namespace, name, pid)
        self.provisioner.registered(namespace, name)  # ends a capped relay's start-up CPU boost
        if not first:
            return
        self.metrics.provision_seconds.observe(provision_s)
        self.oplog.write(
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

    async def heartbeat(self, namespace: str, name: str, secret: str | None, body: Any) -> dict[str, bool]:
        beat = _read(Heartbeat, body)
        lost_after = self._lost_after(beat.next_heartbeat)
        rt = self.runtime.get((namespace, name))
        if rt is None or not rt.agent_secret:  # not one of ours now: the record decides 404 or 401
            await self._agent_room(namespace, name, secret)
            self.metrics.heartbeats.inc()
            return HeartbeatAnswer(deleted=True).to_json()
        _check_secret(secret, rt.agent_secret)
        self.metrics.heartbeats.inc()
        rt.last_heartbeat = time.monotonic()
        rt.lost_after = lost_after
        rt.stats = beat.stats()
        return HeartbeatAnswer(deleted=False).to_json()

    def _lost_after(self, gap: float | None) -> float:
        """missed_heartbeats of the gap the agent promised (nextHeartbeatSeconds, held between the
        two configured intervals; an agent that says nothing keeps heartbeat_interval)."""
        if gap is None:
            gap = self.config.heartbeat_interval
        cfg = self.config
        return min(max(gap, cfg.heartbeat_interval), cfg.longest_heartbeat_gap) * cfg.missed_heartbeats

    async def closed(self, namespace: str, name: str, secret: str | None, body: Any) -> None:
        reason = _read(Closed, body).reason
        async with self._lock:
            room = await self._agent_room(namespace, name, secret)
            ns = await self.store.get_namespace(namespace)
            await self._end_room(room, reason, ns, stop=False)

    async def _on_relay_exit(self, namespace: str, name: str, code: int | None, reason: str | None) -> None:
        async with self._lock:
            room = await self.store.get_room(namespace, name)
            if room is None:
                return
            ns = await self.store.get_namespace(namespace)
            await self._end_room(room, reason or "crash", ns, stop=False, detail=f"exit code {code}")

    # --- liveness --------------------------------------------------------------------------
    async def _reap_loop(self) -> None:
        while True:
            await asyncio.sleep(self.config.sweep_interval)
            try:
                await self.reap_once()
            except Exception:
                log.exception("reaper pass failed")

    async def reap_once(self) -> None:
        now = time.monotonic()
        for key, rt in list(self.runtime.items()):
            if rt.state == ROOM_READY and now - rt.last_heartbeat > rt.lost_after:
                reason = "lost"
            elif rt.state == ROOM_PENDING and now - rt.since > self.config.register_timeout:
                reason = "register_timeout"
            else:
                continue
            async with self._lock:
                if self.runtime.get(key) is not rt:
                    continue
                room = await self.store.get_room(*key)
                ns = await self.store.get_namespace(key[0])
                if room is None:
                    self.runtime.pop(key, None)
                    continue
                log.warning("room %s/%s: %s", key[0], key[1], reason)
                await self._end_room(room, reason, ns, stop=True)


def _check_secret(given: str | None, expected: str) -> None:
    if given is None or not hmac.compare_digest(given.encode(), expected.encode()):
        raise unauthorized("bad agent secret", "realtime.agent.error.unauthorized")


def _read(kind: type[_Body], body: Any) -> _Body:
    """An agent's body (relay/agent/wire.py), or GS2's 400 naming the bad field."""
    try:
        return kind.from_json(body)  # type: ignore[attr-defined, no-any-return]
    except WireError as exc:
        raise bad_request(exc.field, str(exc), f"realtime.agent.{exc.field}.error.invalid") from None
