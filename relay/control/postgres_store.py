"""PostgreSQL store, and the coordination of several control-plane nodes sharing one database.

Driver: psycopg 3, async, with psycopg_pool. It was already this project's optional dependency;
it is libpq, so a store URL means what it means to psql (sslmode, service files, PGPASSFILE,
PGHOST...); it has LISTEN/NOTIFY as an async iterator on a plain connection and a pool that
checks and replaces broken connections; and statements a connection runs often are prepared on
the server by themselves. asyncpg is faster per query, but a control-plane request costs far
more in HTTP and Python than in the driver (BENCHMARKS.md), and it would be a second driver.

Schema: `MIGRATIONS`, each applied once, in order, in a transaction, when a node starts, under an
advisory lock: nodes starting at once apply them one at a time, and the later ones find them
applied. A database whose schema is newer than this code is refused. Records are the same JSON
text SQLite keeps (not jsonb, which refuses a "\\u0000" a description may hold), and names sort
as "C" (by code point, as in SQLite: listings and page tokens agree whichever store holds them).
Every statement is its own transaction (autocommit), so a write returned is committed: durable
before the API answers, with the server's synchronous_commit (on by default). Heartbeats alone
commit asynchronously: the last moment of them lost in a server crash costs nothing.

Coordination (`PostgresCluster`, relay/control/cluster.py): a room's read-modify-write holds
advisory locks (the room's, and its namespace's shared) on the connection its statements use;
each node keeps one more connection, its session, which holds its node lock (whether a node is
alive is whether its lock is held: pg_locks), LISTENs for the other nodes' events, and takes the
leader lock when free. A node that dies loses its session, and with it its locks: another node
leads within `sweep_interval`. Liveness is a deadline per room, which any node's heartbeat
moves and the leader's reaper reads with the database's clock (no two nodes' clocks compared).
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import hashlib
import json
import logging
import secrets
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import psycopg
from psycopg_pool import AsyncConnectionPool

from relay.control.cluster import EventHandler, Overdue
from relay.control.errors import ApiError, store_unavailable
from relay.control.records import NAMESPACE_ACTIVE, ROOM_READY, NamespaceRecord, RoomRecord

if TYPE_CHECKING:
    from relay.control.config import ControlConfig

log = logging.getLogger("relay.control.postgres_store")

# The first of the two int4 keys of every advisory lock taken here (keep the database the control
# plane's own: another application's advisory locks could meet these).
MIGRATE_LOCK = 0x726C0001
NAMESPACE_LOCK = 0x726C0002
ROOM_LOCK = 0x726C0003
NODE_LOCK = 0x726C0004
LEADER_LOCK = 0x726C0005

CHANNEL = "relay_events"
NOTIFY_BYTES = 7900
"""Largest NOTIFY payload sent (PostgreSQL's limit is 8000 bytes): longer user lists are split."""
LOCK_TIMEOUT = "10s"
"""A lock not granted in this long fails the call with 503 (a node stopped while holding one)."""
POOL_TIMEOUT = 10.0
"""Seconds a call waits for a pooled connection (or the pool for its first ones) before 503."""
OWNER_SECONDS = 1.0
"""How long a registration taken for another node's relay waits for that node to end the relay's
start-up (its CPU quota) before the address is shown anyway (that node may be gone)."""
CLAIM_SECONDS = 30.0
"""How long a starting node waits for its node lock (its previous process's session may not have
been dropped yet) before it refuses to start: another live node has its node_id."""
OVERDUE_BATCH = 1000

MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (
        """CREATE TABLE namespaces (
            name text COLLATE "C" PRIMARY KEY,
            status text NOT NULL,
            data text NOT NULL)""",
        # since: this incarnation's start; deadline: when the reaper ends the room unless its relay
        # is heard from (registration, heartbeat) before. node: Cluster.node_id of its relay.
        """CREATE TABLE rooms (
            namespace text COLLATE "C" NOT NULL,
            name text COLLATE "C" NOT NULL,
            data text NOT NULL,
            incarnation text NOT NULL,
            state text NOT NULL,
            node text,
            secret_hash bytea NOT NULL,
            since timestamptz NOT NULL,
            deadline timestamptz NOT NULL,
            PRIMARY KEY (namespace, name))""",
        "CREATE INDEX rooms_deadline ON rooms (deadline)",
        "CREATE INDEX rooms_pending ON rooms (node) WHERE state = 'pending'",
        "CREATE TABLE settings (name text PRIMARY KEY, value text NOT NULL)",
    ),
)
"""Version N is MIGRATIONS[N - 1]. Append, never edit: a database keeps the versions it applied."""

_PUT_ROOM = """
INSERT INTO rooms (namespace, name, data, incarnation, state, node, secret_hash, since, deadline)
VALUES (%s, %s, %s, %s, %s, %s, %s, now(), now() + make_interval(secs => %s::float8))
ON CONFLICT (namespace, name) DO UPDATE SET
    data = EXCLUDED.data, state = EXCLUDED.state, node = EXCLUDED.node,
    secret_hash = EXCLUDED.secret_hash, incarnation = EXCLUDED.incarnation,
    since = CASE WHEN rooms.incarnation = EXCLUDED.incarnation THEN rooms.since ELSE EXCLUDED.since END,
    deadline = CASE WHEN rooms.incarnation = EXCLUDED.incarnation THEN rooms.deadline
                    ELSE EXCLUDED.deadline END
"""
_HEARTBEAT = """
UPDATE rooms SET deadline = now() + make_interval(secs => %s::float8)
FROM (SELECT set_config('synchronous_commit', 'off', true)) AS this_commit_asynchronous
WHERE namespace = %s AND name = %s AND secret_hash = %s AND (%s::text IS NULL OR incarnation = %s)
"""
_ORPHANS = """
SELECT data FROM rooms
WHERE state = 'pending' AND node IS DISTINCT FROM %s AND (node IS NULL OR
    (hashtext(node) & 2147483647)::bigint::oid NOT IN (
        SELECT objid FROM pg_locks
        WHERE locktype = 'advisory' AND classid = %s::bigint::oid AND objsubid = 2 AND granted
          AND database = (SELECT oid FROM pg_database WHERE datname = current_database())))
"""


def migrate(url: str) -> int:
    """Applies the migrations the database lacks, one node at a time; returns its version."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("SELECT pg_advisory_lock(%s::int4, 0)", (MIGRATE_LOCK,))
        try:
            conn.execute(
                "CREATE TABLE IF NOT EXISTS relay_schema ("
                "version integer PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
            )
            applied = {row[0] for row in conn.execute("SELECT version FROM relay_schema")}
            if applied and max(applied) > len(MIGRATIONS):
                raise psycopg.errors.FeatureNotSupported(
                    f"the database's schema is version {max(applied)}; this control plane knows "
                    f"{len(MIGRATIONS)}: run the newer release"
                )
            for version, statements in enumerate(MIGRATIONS, 1):
                if version in applied:
                    continue
                with conn.transaction():
                    for sql in statements:
                        conn.execute(sql)  # type: ignore[arg-type]  # constant SQL
                    conn.execute("INSERT INTO relay_schema (version) VALUES (%s)", (version,))
                log.info("schema migration %d applied", version)
        finally:
            with contextlib.suppress(psycopg.Error):
                conn.execute("SELECT pg_advisory_unlock(%s::int4, 0)", (MIGRATE_LOCK,))
    return len(MIGRATIONS)


def secret_hash(secret: str) -> bytes:
    """What the rooms table keeps of an agent secret: compared by the database (a heartbeat is one
    UPDATE), a hash's comparison tells a caller nothing about the secret, unlike the secret's."""
    return hashlib.sha256(secret.encode("utf-8", "surrogatepass")).digest()


def lock_key(text: str) -> int:
    """A name as the second int4 key of an advisory lock (a collision only serialises more)."""
    digest = hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=4).digest()
    return int.from_bytes(digest, "big", signed=True)


def _unavailable(exc: psycopg.Error) -> ApiError:
    log.error("PostgreSQL store: %s", exc)
    return store_unavailable(f"PostgreSQL {exc.sqlstate or type(exc).__name__}")  # no server address


@dataclass(frozen=True, slots=True)
class _Held:
    """The connection that holds a task's locks: the task's statements run on it."""

    store: PostgresStore
    conn: psycopg.AsyncConnection[Any]
    task: asyncio.Task[Any] | None


_HELD: contextvars.ContextVar[_Held | None] = contextvars.ContextVar("relay_postgres_held", default=None)


async def _close(conn: psycopg.AsyncConnection[Any]) -> None:
    """Ends the connection's session, and every lock it holds: it never goes back to the pool with one."""
    with contextlib.suppress(Exception):
        await conn.close()


class PostgresStore:
    def __init__(self, url: str, pool_size: int = 10, register_timeout: float = 60.0) -> None:
        self.url = url
        self.pool_size = max(1, pool_size)
        self.register_timeout = register_timeout
        """A room wanted now is ended unless its relay registers this long after (the reaper)."""
        self._pool: AsyncConnectionPool[psycopg.AsyncConnection[Any]] | None = None
        self._migrated = False

    def migrate(self) -> None:
        if not self._migrated:
            migrate(self.url)
            self._migrated = True

    def setting(self, name: str, create: Callable[[], str]) -> str:
        """Cluster.setting: a row of `settings`, inserted by whichever node asks first."""
        try:
            self.migrate()
            with psycopg.connect(self.url, autocommit=True) as conn:
                read = "SELECT value FROM settings WHERE name = %s"
                row = conn.execute(read, (name,)).fetchone()
                if row is None:
                    conn.execute(
                        "INSERT INTO settings (name, value) VALUES (%s, %s) ON CONFLICT (name) DO NOTHING",
                        (name, create()),
                    )
                    row = conn.execute(read, (name,)).fetchone()
                assert row is not None
                return str(row[0])
        except psycopg.Error as exc:
            raise ConnectionError(f"PostgreSQL store: {exc}") from None

    async def open(self) -> None:
        """Migrates, then opens the pool; a database that cannot be reached now is an error."""
        try:
            await asyncio.to_thread(self.migrate)
            self._pool = AsyncConnectionPool(  # all open from the start: a new backend costs tens of ms
                self.url,
                min_size=self.pool_size,
                max_size=self.pool_size,
                kwargs={"autocommit": True},
                configure=self._configure,
                timeout=POOL_TIMEOUT,
                name="relay-control",
                open=False,
            )
            await self._pool.open(wait=True, timeout=POOL_TIMEOUT)
        except psycopg.Error as exc:
            await self.close()
            raise ConnectionError(f"PostgreSQL store: {exc}") from None

    @staticmethod
    async def _configure(conn: psycopg.AsyncConnection[Any]) -> None:
        await conn.execute(f"SET lock_timeout = '{LOCK_TIMEOUT}'")

    async def close(self) -> None:
        if self._pool is not None:
            await self._pool.close()
            self._pool = None

    def cluster(self, node_id: str, config: ControlConfig) -> PostgresCluster:
        return PostgresCluster(self, node_id, config.sweep_interval)

    @property
    def pool(self) -> AsyncConnectionPool[psycopg.AsyncConnection[Any]]:
        if self._pool is None:
            raise store_unavailable("the store is not open")
        return self._pool

    @contextlib.asynccontextmanager
    async def _connection(self) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
        """The connection holding this task's locks (PostgresCluster.lock), else a pooled one."""
        held = _HELD.get()
        if held is not None and held.store is self and held.task is asyncio.current_task():
            yield held.conn
            return
        async with self.pool.connection() as conn:
            yield conn

    async def execute(self, sql: str, args: Sequence[Any] = ()) -> tuple[list[tuple[Any, ...]], int]:
        """(rows, rowcount); a failure is the API's 503 and, each statement being its own
        transaction, has changed nothing."""
        try:
            async with self._connection() as conn:
                cur = await conn.execute(sql, args)  # type: ignore[arg-type]  # constant SQL
                rows = await cur.fetchall() if cur.description is not None else []
                return rows, cur.rowcount
        except psycopg.Error as exc:
            raise _unavailable(exc) from None

    # --- namespaces ------------------------------------------------------------------------
    async def get_namespace(self, name: str) -> NamespaceRecord | None:
        if "\0" in name:  # PostgreSQL text holds no NUL, and no name has one
            return None
        rows, _ = await self.execute("SELECT data FROM namespaces WHERE name = %s", (name,))
        return NamespaceRecord.from_dict(json.loads(rows[0][0])) if rows else None

    async def list_namespaces(
        self, name_prefix: str | None, after: str | None, limit: int
    ) -> list[NamespaceRecord]:
        sql = "SELECT data FROM namespaces WHERE status = %s"
        args: list[Any] = [NAMESPACE_ACTIVE]
        if name_prefix:
            if "\0" in name_prefix:
                return []
            sql += " AND starts_with(name, %s)"
            args.append(name_prefix)
        rows, _ = await self.execute(*_page(sql, args, after, limit))
        return [NamespaceRecord.from_dict(json.loads(r[0])) for r in rows]

    async def put_namespace(self, record: NamespaceRecord) -> None:
        await self.execute(
            "INSERT INTO namespaces (name, status, data) VALUES (%s, %s, %s) "
            "ON CONFLICT (name) DO UPDATE SET status = EXCLUDED.status, data = EXCLUDED.data",
            (record.name, record.status, json.dumps(record.to_dict(), separators=(",", ":"))),
        )

    # --- rooms -----------------------------------------------------------------------------
    async def get_room(self, namespace: str, name: str) -> RoomRecord | None:
        if "\0" in namespace or "\0" in name:
            return None
        rows, _ = await self.execute(
            "SELECT data FROM rooms WHERE namespace = %s AND name = %s", (namespace, name)
        )
        return RoomRecord.from_dict(json.loads(rows[0][0])) if rows else None

    async def list_rooms(self, namespace: str, after: str | None, limit: int) -> list[RoomRecord]:
        if "\0" in namespace:
            return []
        rows, _ = await self.execute(
            *_page("SELECT data FROM rooms WHERE namespace = %s", [namespace], after, limit)
        )
        return [RoomRecord.from_dict(json.loads(r[0])) for r in rows]

    async def list_all_rooms(self) -> list[RoomRecord]:
        rows, _ = await self.execute("SELECT data FROM rooms ORDER BY namespace, name")
        return [RoomRecord.from_dict(json.loads(r[0])) for r in rows]

    async def put_room(self, record: RoomRecord) -> None:
        """Insert or replace; a new incarnation starts its register_timeout from now."""
        await self.execute(
            _PUT_ROOM,
            (
                record.namespace,
                record.name,
                json.dumps(record.to_dict(), separators=(",", ":")),
                record.incarnation,
                record.state,
                record.node,
                secret_hash(record.agent_secret),
                self.register_timeout,
            ),
        )

    async def delete_room(self, namespace: str, name: str) -> bool:
        if "\0" in namespace or "\0" in name:
            return False
        _, count = await self.execute(
            "DELETE FROM rooms WHERE namespace = %s AND name = %s", (namespace, name)
        )
        return count > 0


def _page(sql: str, args: list[Any], after: str | None, limit: int) -> tuple[str, list[Any]]:
    """The listing's names after `after`, in name order, at most `limit`. The position is cut at
    its first NUL: no name holds one, so the names after "ab\\0x" are exactly those after "ab"
    (and PostgreSQL text cannot hold the NUL)."""
    if after is not None:
        sql += " AND name > %s"
        args = [*args, after.split("\0", 1)[0]]
    return sql + " ORDER BY name LIMIT %s", [*args, limit]


def _payloads(event: dict[str, Any]) -> list[str]:
    """The event as NOTIFY payloads under NOTIFY_BYTES each: a long user list goes in parts."""
    users = event.get("users")
    if not users:
        return [json.dumps(event, separators=(",", ":"))]
    room = NOTIFY_BYTES - len(json.dumps({**event, "users": []}, separators=(",", ":")))
    parts: list[list[str]] = [[]]
    size = 0
    for user in users:
        cost = len(json.dumps(user)) + 1  # ASCII (json.dumps escapes the rest): bytes = characters
        if parts[-1] and size + cost > room:
            parts.append([])
            size = 0
        parts[-1].append(user)
        size += cost
    return [json.dumps({**event, "users": part}, separators=(",", ":")) for part in parts]


class PostgresCluster:
    """Several nodes on one PostgreSQL database (relay/control/cluster.py says what each method is)."""

    def __init__(self, store: PostgresStore, node_id: str, interval: float) -> None:
        self.store = store
        self.node_id: str | None = node_id
        self.interval = interval
        """Seconds between a follower's tries for the leader lock (config.sweep_interval)."""
        self._leader = False
        self._on_event: EventHandler | None = None
        self._session: asyncio.Task[None] | None = None
        self._deliveries: set[asyncio.Task[None]] = set()
        self._asked: dict[str, asyncio.Future[None]] = {}  # owner_registered: token -> its answer

    def mine(self, room: RoomRecord) -> bool:
        return room.node == self.node_id

    def setting(self, name: str, create: Callable[[], str]) -> str:
        return self.store.setting(name, create)

    @contextlib.asynccontextmanager
    async def lock(self, namespace: str, room: str | None = None) -> AsyncIterator[None]:
        """Advisory locks on a connection of the pool, which the task's statements then use: a
        namespace's lock alone (namespace calls), or its shared lock and the room's (room calls:
        rooms of one namespace at once, never while the namespace is created or deleted)."""
        if room is None:
            sql, args = "SELECT pg_advisory_lock(%s::int4, %s::int4)", (NAMESPACE_LOCK, lock_key(namespace))
        else:
            sql = "SELECT pg_advisory_lock_shared(%s::int4, %s::int4), pg_advisory_lock(%s::int4, %s::int4)"
            args = (NAMESPACE_LOCK, lock_key(namespace), ROOM_LOCK, lock_key(f"{namespace}/{room}"))
        store = self.store
        try:
            async with store.pool.connection() as conn:
                try:
                    await conn.execute(sql, args)
                except BaseException:  # cancelled or refused: whatever the server granted goes too
                    await _close(conn)
                    raise
                token = _HELD.set(_Held(store, conn, asyncio.current_task()))
                try:
                    yield
                finally:
                    _HELD.reset(token)
                    await self._unlock(conn)
        except psycopg.Error as exc:
            raise _unavailable(exc) from None

    @staticmethod
    async def _unlock(conn: psycopg.AsyncConnection[Any]) -> None:
        try:
            await conn.execute("SELECT pg_advisory_unlock_all()")
        except Exception:
            log.warning("a lock was not released: its connection is closed instead", exc_info=True)
            await _close(conn)
        except BaseException:
            await _close(conn)
            raise

    def leader(self) -> bool:
        return self._leader

    async def start(self, on_event: EventHandler) -> None:
        """Opens this node's session: claims its node lock and LISTENs; the leader lock follows
        when it is free. Fails (ConnectionError) when the database or the node lock cannot be had."""
        self._on_event = on_event
        loop = asyncio.get_running_loop()
        claimed: asyncio.Future[None] = loop.create_future()
        self._session = loop.create_task(self._run_session(claimed))
        try:
            await claimed
        except BaseException:
            await self.close()
            raise

    async def close(self) -> None:
        self._leader = False
        tasks = [t for t in (self._session, *self._deliveries) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._session = None

    async def _run_session(self, claimed: asyncio.Future[None]) -> None:
        delay = 0.2
        while True:
            try:
                conn = await psycopg.AsyncConnection.connect(self.store.url, autocommit=True)
                async with conn:
                    await self._claim(conn)
                    await conn.execute(f"LISTEN {CHANNEL}")
                    if not claimed.done():
                        claimed.set_result(None)
                    delay = 0.2
                    await self._serve_session(conn)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self._leader = False
                if not claimed.done():
                    claimed.set_exception(ConnectionError(f"PostgreSQL cluster session: {exc}"))
                    return
                log.warning("node %s lost its cluster session (%s); again in %.1fs", self.node_id, exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)

    async def _claim(self, conn: psycopg.AsyncConnection[Any]) -> None:
        """This node's lock: held as long as its session lives, so the others see it alive."""
        deadline = time.monotonic() + CLAIM_SECONDS
        claim = "SELECT pg_try_advisory_lock(%s::int4, hashtext(%s) & 2147483647)"
        while True:
            row = await (await conn.execute(claim, (NODE_LOCK, self.node_id))).fetchone()
            if row is not None and row[0]:
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"node id {self.node_id!r} is held by another running control plane")
            log.warning("node id %s is still held (a previous process of it?): waiting", self.node_id)
            await asyncio.sleep(0.5)

    async def _serve_session(self, conn: psycopg.AsyncConnection[Any]) -> None:
        """Tries for the leader lock while it has not got it, and hands on the other nodes' events."""
        while True:
            if not self._leader:
                cur = await conn.execute("SELECT pg_try_advisory_lock(%s::int4, 0)", (LEADER_LOCK,))
                row = await cur.fetchone()
                if row is not None and row[0]:
                    self._leader = True
                    log.info("node %s leads (reaper, takeovers)", self.node_id)
            async for note in conn.notifies(timeout=self.interval):
                self._dispatch(note.payload)

    def _dispatch(self, payload: str) -> None:
        try:
            event = json.loads(payload)
        except ValueError:
            return
        if not isinstance(event, dict) or event.get("from") == self.node_id or self._on_event is None:
            return
        if event.get("event") == "registered":  # an owner's answer: for whoever asked, nobody else
            asked = self._asked.get(str(event.get("token")))
            if asked is not None and not asked.done():
                asked.set_result(None)
            return
        task = asyncio.get_running_loop().create_task(self._deliver(self._on_event, event))
        self._deliveries.add(task)
        task.add_done_callback(self._deliveries.discard)

    @staticmethod
    async def _deliver(handler: EventHandler, event: dict[str, Any]) -> None:
        try:
            await handler(event)
        except Exception:
            log.exception("event %r from node %r failed", event.get("event"), event.get("from"))

    async def publish(self, event: dict[str, Any]) -> None:
        try:
            for payload in _payloads({**event, "from": self.node_id}):
                await self.store.execute("SELECT pg_notify(%s, %s)", (CHANNEL, payload))
        except ApiError:
            log.warning(
                "the other nodes did not hear of %s %s/%s",
                event.get("event"),
                event.get("namespace"),
                event.get("room"),
            )

    async def owner_registered(self, room: RoomRecord) -> None:
        """Asks the relay's node (an event naming it) and waits for its "registered" answer."""
        if room.node in (None, self.node_id):
            return
        token = secrets.token_hex(8)
        self._asked[token] = asked = asyncio.get_running_loop().create_future()
        try:
            ask = {"event": "registering", "namespace": room.namespace, "room": room.name}
            await self.publish({**ask, "incarnation": room.incarnation, "to": room.node, "token": token})
            try:
                await asyncio.wait_for(asked, OWNER_SECONDS)
            except TimeoutError:
                log.warning(
                    "node %s did not end the start-up of %s/%s's relay", room.node, room.namespace, room.name
                )
        finally:
            del self._asked[token]

    # --- liveness --------------------------------------------------------------------------------
    async def registered(self, room: RoomRecord, lost_after: float) -> float | None:
        rows, _ = await self.store.execute(
            "UPDATE rooms SET deadline = now() + make_interval(secs => %s::float8) "
            "WHERE namespace = %s AND name = %s AND incarnation = %s "
            "RETURNING extract(epoch FROM now() - since)::float8",
            (lost_after, room.namespace, room.name, room.incarnation),
        )
        return float(rows[0][0]) if rows else None

    async def heartbeat(
        self,
        namespace: str,
        name: str,
        secret: str | None,
        incarnation: str | None,
        lost_after: float,
        stats: dict[str, Any],
    ) -> bool:
        if secret is None or "\0" in namespace or "\0" in name or (incarnation and "\0" in incarnation):
            return False
        args = (lost_after, namespace, name, secret_hash(secret), incarnation, incarnation)
        _, count = await self.store.execute(_HEARTBEAT, args)
        return count > 0

    async def watch(self, room: RoomRecord, grace: float) -> None:
        await self.store.execute(
            "UPDATE rooms SET deadline = now() + make_interval(secs => %s::float8) "
            "WHERE namespace = %s AND name = %s AND incarnation = %s",
            (grace, room.namespace, room.name, room.incarnation),
        )

    async def overdue(self, register_timeout: float) -> list[Overdue]:
        """Past their deadline (a pending room's was set from register_timeout when wanted)."""
        rows, _ = await self.store.execute(
            "SELECT namespace, name, incarnation, state FROM rooms WHERE deadline < now() "
            "ORDER BY deadline LIMIT %s",
            (OVERDUE_BATCH,),
        )
        return [
            Overdue(ns, name, incarnation, "lost" if state == ROOM_READY else "register_timeout")
            for ns, name, incarnation, state in rows
        ]

    async def orphans(self) -> list[RoomRecord]:
        rows, _ = await self.store.execute(_ORPHANS, (self.node_id, NODE_LOCK))
        return [RoomRecord.from_dict(json.loads(r[0])) for r in rows]
