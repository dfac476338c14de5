"""One contract for both stores (relay/control/store.py, cluster.py): every test runs against the
embedded SQLite store and against a real PostgreSQL server (a throw-away one, or
RELAY_TEST_POSTGRES_DSN's). The records, their order and paging, names no record can have, and
the cluster each store comes with: its lock, and the liveness the reaper reads."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from relay.control.cluster import Cluster, RoomKey, RoomRuntime
from relay.control.config import ControlConfig
from relay.control.records import NAMESPACE_DELETED, ROOM_READY, NamespaceRecord, RoomRecord
from relay.control.sqlite_store import SQLiteStore
from relay.control.state import open_cluster
from relay.control.store import Store

REGISTER_TIMEOUT = 0.4


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'control.db'}"
    return str(request.getfixturevalue("postgres_url"))


def open_store(url: str) -> Store:
    if url.startswith("sqlite:///"):
        return SQLiteStore(url.removeprefix("sqlite:///"))
    from relay.control.postgres_store import PostgresStore

    return PostgresStore(url, register_timeout=REGISTER_TIMEOUT)


@pytest.fixture
async def store(store_url: str) -> AsyncIterator[Store]:
    opened = open_store(store_url)
    await opened.open()
    try:
        yield opened
    finally:
        await opened.close()


class Node:
    """A store with its cluster, used as ControlState uses them."""

    def __init__(self, store: Store, tmp_path: Path, node_id: str = "node-a") -> None:
        self.store = store
        self.runtime: dict[RoomKey, RoomRuntime] = {}
        config = ControlConfig(data_dir=tmp_path, sweep_interval=0.05, register_timeout=REGISTER_TIMEOUT)
        self.cluster: Cluster = open_cluster(config, store, node_id, self.runtime)

    async def want(self, room: RoomRecord) -> None:
        """What wantRoom does: the record, then this node's runtime entry."""
        room.node = self.cluster.node_id
        await self.store.put_room(room)
        self.runtime[(room.namespace, room.name)] = RoomRuntime.of(room)

    async def register(self, room: RoomRecord, lost_after: float) -> float | None:
        room.state = ROOM_READY
        await self.store.put_room(room)
        self.runtime[(room.namespace, room.name)].state = ROOM_READY
        return await self.cluster.registered(room, lost_after)


async def events(_: dict[str, object]) -> None:
    pass


@pytest.fixture
async def node(store: Store, tmp_path: Path) -> AsyncIterator[Node]:
    made = Node(store, tmp_path)
    await made.cluster.start(events)
    try:
        yield made
    finally:
        await made.cluster.close()


def ns(name: str, status: str = "ACTIVE", **extra: object) -> NamespaceRecord:
    return NamespaceRecord(
        name=name, server_type="relay", server_spec="realtime1.nano", status=status, **extra
    )  # type: ignore[arg-type]


def room(namespace: str, name: str, **extra: object) -> RoomRecord:
    return RoomRecord(namespace=namespace, name=name, encryption_key="k", agent_secret="s-" + name, **extra)  # type: ignore[arg-type]


# --- records -------------------------------------------------------------------------------------
async def test_namespace_round_trip_and_replace(store: Store) -> None:
    record = ns(
        "ns-1",
        description='quote " backslash \\ nul \u0000 and \u65e5\u672c',
        log_setting={"loggingNamespaceId": "grn:x"},
        create_notification={"enable": "Enabled"},
    )
    assert await store.get_namespace("ns-1") is None
    await store.put_namespace(record)
    assert await store.get_namespace("ns-1") == record
    record.description, record.revision = "second", 1
    await store.put_namespace(record)
    assert await store.get_namespace("ns-1") == record
    assert await store.get_namespace("ns-1\x00") is None  # a name no record can have
    assert [n.name for n in await store.list_namespaces(None, None, 10)] == ["ns-1"]


async def test_namespace_listing_order_prefix_and_pages(store: Store) -> None:
    names = ["b", "B", "a.1", "a-1", "a_1", "A", "ab", "a", "0", "_"]
    for name in names:
        await store.put_namespace(ns(name))
    await store.put_namespace(ns("a-gone", status=NAMESPACE_DELETED))

    async def listed(prefix: str | None = None, after: str | None = None, limit: int = 100) -> list[str]:
        return [n.name for n in await store.list_namespaces(prefix, after, limit)]

    assert await listed() == sorted(names)  # by code point, deleted ones left out
    assert await listed("a") == ["a", "a-1", "a.1", "a_1", "ab"]  # case counts: not "A"
    assert await listed("A") == ["A"]
    assert await listed("a_") == ["a_1"]  # `_` and `%` are plain characters in a prefix
    assert await listed("%") == []
    assert await listed("a\x00") == []
    assert await listed(after="a") == sorted(names)[sorted(names).index("a") + 1 :]
    assert await listed(after="a\x00zz") == await listed(after="a")  # no name holds a NUL
    assert await listed("a", after="a-1", limit=2) == ["a.1", "a_1"]
    pages, after = [], None
    while page := await listed(after=after, limit=3):
        pages.append(page)
        after = page[-1]
    assert [n for p in pages for n in p] == sorted(names) and len(pages) == 4


async def test_room_round_trip_replace_and_delete(store: Store) -> None:
    record = room("ns", "r", notification_user_ids=["alice", "\u00e9\u00e8", "nul\u0000"], node="n1")
    await store.put_room(record)
    assert await store.get_room("ns", "r") == record
    record.state, record.ip_address, record.port, record.pid = ROOM_READY, "127.0.0.1", 4000, 12
    await store.put_room(record)
    assert await store.get_room("ns", "r") == record
    assert await store.get_room("ns", "r\x00") is None
    assert await store.get_room("other", "r") is None
    assert await store.delete_room("ns", "r") is True
    assert await store.delete_room("ns", "r") is False
    assert await store.get_room("ns", "r") is None


async def test_room_listings(store: Store) -> None:
    for namespace, name in [("n2", "b"), ("n1", "c"), ("n1", "a"), ("n1", "B"), ("n10", "a")]:
        await store.put_room(room(namespace, name))
    assert [r.name for r in await store.list_rooms("n1", None, 10)] == ["B", "a", "c"]
    assert [r.name for r in await store.list_rooms("n1", "B", 1)] == ["a"]
    assert [r.name for r in await store.list_rooms("n1", "a\x00", 10)] == ["c"]
    assert await store.list_rooms("n1\x00", None, 10) == []
    everything = [(r.namespace, r.name) for r in await store.list_all_rooms()]
    assert everything == [("n1", "B"), ("n1", "a"), ("n1", "c"), ("n10", "a"), ("n2", "b")]


async def test_a_returned_write_is_there_for_another_opening_of_the_store(store_url: str) -> None:
    """What one node wrote, another node (or this one after a restart) reads."""
    first, second = open_store(store_url), open_store(store_url)
    await first.open()
    await second.open()
    try:
        await first.put_namespace(ns("shared"))
        await first.put_room(room("shared", "r"))
        assert (await second.get_namespace("shared")) == (await first.get_namespace("shared"))
        assert [r.name for r in await second.list_rooms("shared", None, 10)] == ["r"]
        assert await second.delete_room("shared", "r") is True
        assert await first.get_room("shared", "r") is None
    finally:
        await first.close()
        await second.close()


# --- the cluster the store comes with -----------------------------------------------------------
async def test_the_lock_excludes_the_same_room_and_its_namespace(node: Node) -> None:
    inside: list[str] = []
    overlaps: list[tuple[str, str]] = []

    async def hold(label: str, namespace: str, name: str | None) -> None:
        async with node.cluster.lock(namespace, name):
            overlaps.extend((label, other) for other in inside)
            inside.append(label)
            await node.store.get_namespace(namespace)  # a statement while holding it
            await asyncio.sleep(0.05)
            inside.remove(label)

    await asyncio.gather(
        hold("room-1", "ns", "r"),
        hold("room-2", "ns", "r"),
        hold("namespace", "ns", None),
        hold("room-3", "ns", "r"),
    )
    assert overlaps == []
    assert inside == []


async def test_a_failure_inside_the_lock_releases_it(node: Node) -> None:
    with pytest.raises(RuntimeError):
        async with node.cluster.lock("ns", "r"):
            raise RuntimeError("refused")
    await asyncio.wait_for(_enter(node.cluster, "ns", "r"), 2)
    await asyncio.wait_for(_enter(node.cluster, "ns", None), 2)


async def _enter(cluster: Cluster, namespace: str, name: str | None) -> None:
    async with cluster.lock(namespace, name):
        pass


async def test_liveness_registration_heartbeats_and_overdue(node: Node) -> None:
    quiet, talking, late = room("ns", "quiet"), room("ns", "talking"), room("ns", "late")
    for r in (quiet, talking, late):
        await node.want(r)
    assert await node.cluster.overdue(REGISTER_TIMEOUT) == []
    waited = await node.register(quiet, lost_after=0.3)
    assert waited is not None and 0 <= waited < 5
    await node.register(talking, lost_after=0.3)
    for _ in range(6):
        await asyncio.sleep(0.1)
        assert await node.cluster.heartbeat(
            "ns", "talking", "s-talking", talking.incarnation, 0.3, {"members": 1}
        )
        assert await node.cluster.heartbeat("ns", "talking", "s-talking", None, 0.3, {})  # an older agent
    # The wrong secret, another incarnation, another room: not this room's relay, nothing moved.
    assert not await node.cluster.heartbeat("ns", "quiet", "s-talking", None, 0.3, {})
    assert not await node.cluster.heartbeat("ns", "quiet", None, None, 0.3, {})
    assert not await node.cluster.heartbeat("ns", "quiet", "s-quiet", "0123456789abcdef", 0.3, {})
    assert not await node.cluster.heartbeat("ns", "missing", "s-quiet", None, 0.3, {})
    due = {(d.name, d.reason) for d in await node.cluster.overdue(REGISTER_TIMEOUT)}
    assert due == {("quiet", "lost"), ("late", "register_timeout")}
    assert {d.incarnation for d in await node.cluster.overdue(REGISTER_TIMEOUT)} == {
        quiet.incarnation,
        late.incarnation,
    }


async def test_a_pending_room_watched_after_a_restart_gets_its_grace(node: Node) -> None:
    r = room("ns", "adopted")
    await node.want(r)
    await asyncio.sleep(REGISTER_TIMEOUT + 0.1)
    assert [d.name for d in await node.cluster.overdue(REGISTER_TIMEOUT)] == ["adopted"]
    node.runtime[("ns", "adopted")] = RoomRuntime.of(r, lost_after=5.0)  # as recovery makes it
    await node.cluster.watch(r, 5.0)
    r.state = ROOM_READY
    await node.store.put_room(r)
    node.runtime[("ns", "adopted")].state = ROOM_READY
    assert await node.cluster.overdue(REGISTER_TIMEOUT) == []


async def test_a_shared_setting_is_kept_once(node: Node) -> None:
    first = node.cluster.setting("signing.key", lambda: "one")
    assert first == "one"
    assert node.cluster.setting("signing.key", lambda: "two") == "one"
