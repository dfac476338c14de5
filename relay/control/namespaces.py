"""GS2-Realtime namespaces: create, read, update, delete, list.

A deleted namespace keeps its record (status DELETED, so getNamespaceStatus still answers and a
re-created one continues its revision) and ends all its rooms.
"""

from __future__ import annotations

from relay.control.errors import conflict
from relay.control.records import NAMESPACE_ACTIVE, NAMESPACE_DELETED, NamespaceRecord, RoomRecord, now_ms
from relay.control.rooms import Rooms
from relay.control.state import ControlState, namespace_not_found
from relay.control.validation import NamespaceInput, paginate

ROOMS_PAGE = 1000


class Namespaces:
    def __init__(self, state: ControlState, rooms: Rooms) -> None:
        self.state = state
        self.rooms = rooms

    async def create_namespace(self, name: str, inp: NamespaceInput) -> NamespaceRecord:
        store = self.state.store
        async with self.state.cluster.lock(name):
            old = await store.get_namespace(name)
            if old is not None and old.status == NAMESPACE_ACTIVE:
                raise conflict(
                    "name", f"namespace {name} already exists", "realtime.namespace.name.error.duplicate"
                )
            if old is not None:  # rooms a failed delete left behind are not the new namespace's
                await self._end_rooms(old, await self.all_rooms(name))
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
            await store.put_namespace(rec)
            return rec

    async def get_namespace(self, name: str) -> NamespaceRecord:
        return await self.state.active_namespace(name)

    async def namespace_status(self, name: str) -> str:
        ns = await self.state.store.get_namespace(name)
        if ns is None:
            raise namespace_not_found(name)
        return ns.status

    async def update_namespace(self, name: str, inp: NamespaceInput) -> NamespaceRecord:
        async with self.state.cluster.lock(name):
            rec = await self.state.active_namespace(name)
            rec.description = inp.description
            rec.transaction_setting = inp.transaction_setting
            rec.transaction_setting_v2 = inp.transaction_setting_v2
            rec.server_type = inp.server_type
            rec.server_spec = inp.server_spec
            rec.create_notification = inp.create_notification
            rec.log_setting = inp.log_setting
            rec.updated_at = max(now_ms(), rec.updated_at)
            rec.revision += 1
            await self.state.store.put_namespace(rec)
            return rec

    async def delete_namespace(self, name: str) -> NamespaceRecord:
        """Marks it deleted (no room of it is wanted from then on, on any node), then ends its
        rooms. A store error between the two leaves it deleted with rooms still running: asking
        again ends them (a deleted namespace without rooms is a 404, as GS2 answers)."""
        async with self.state.cluster.lock(name):
            rec = await self.state.store.get_namespace(name)
            rooms = await self.all_rooms(name) if rec is not None else []
            if rec is None or (rec.status != NAMESPACE_ACTIVE and not rooms):
                raise namespace_not_found(name)
            if rec.status == NAMESPACE_ACTIVE:
                rec.status = NAMESPACE_DELETED
                rec.updated_at = max(now_ms(), rec.updated_at)
                rec.revision += 1
                await self.state.store.put_namespace(rec)
            await self._end_rooms(rec, rooms)
            return rec

    async def _end_rooms(self, rec: NamespaceRecord, rooms: list[RoomRecord]) -> None:
        for room in rooms:
            await self.rooms.end_room(room, "deleted", rec, stop=True, event="room.deleted")

    async def all_rooms(self, namespace: str) -> list[RoomRecord]:
        rooms: list[RoomRecord] = []
        after: str | None = None
        while True:
            page = await self.state.store.list_rooms(namespace, after, ROOMS_PAGE)
            rooms += page
            if len(page) < ROOMS_PAGE:
                return rooms
            after = page[-1].name

    async def describe_namespaces(
        self, prefix: str | None, after: str | None, limit: int
    ) -> tuple[list[NamespaceRecord], str | None]:
        return paginate(await self.state.store.list_namespaces(prefix, after, limit + 1), limit, "namespaces")
