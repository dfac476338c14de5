"""Embedded SQLite store: one file, WAL, synchronous=FULL, one writer thread.

Every statement runs on a single dedicated thread that owns the connection, so the event loop
never blocks on disk and writes are serialised without locks. synchronous=FULL makes each commit
durable before the awaiting API call answers (an acknowledged write survives SIGKILL and power
loss of the process).

A statement SQLite refuses (disk full, a read-only or failing file system) changes nothing (each
is its own transaction) and raises errors.store_unavailable (the API's 503). The connection is
then closed, and opened again by the next call: a closed one holds no file open for writing (the
file system can be remounted), and one opened while its file was read-only stays read-only even
once the file system is writable again (a write it refuses as read-only is tried once more on a
fresh connection).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import sqlite3
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from relay.control.errors import store_unavailable
from relay.control.records import NAMESPACE_ACTIVE, NamespaceRecord, RoomRecord

if TYPE_CHECKING:
    from relay.control.cluster import Cluster
    from relay.control.config import ControlConfig

log = logging.getLogger("relay.control.sqlite_store")

T = TypeVar("T")

SCHEMA = """
CREATE TABLE IF NOT EXISTS namespaces (
    name TEXT PRIMARY KEY,
    status TEXT NOT NULL,
    data TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS rooms (
    namespace TEXT NOT NULL,
    name TEXT NOT NULL,
    data TEXT NOT NULL,
    PRIMARY KEY (namespace, name)
);
"""


class SQLiteStore:
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sqlite-store")
        self._conn: sqlite3.Connection | None = None

    async def _run(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        def call() -> T:
            for attempt in range(2):
                try:
                    return fn(self._connection())
                except sqlite3.Error as exc:
                    self._disconnect()
                    read_only = getattr(exc, "sqlite_errorname", "").startswith("SQLITE_READONLY")
                    if read_only and not attempt:
                        continue  # a connection opened while the file was read-only: once afresh
                    log.error("store %s: %s", self.path, exc)
                    raise store_unavailable(str(exc)) from None
            raise AssertionError("unreachable")

        return await asyncio.get_running_loop().run_in_executor(self._executor, call)

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(str(self.path), isolation_level=None, check_same_thread=False)
            try:
                conn.execute("PRAGMA journal_mode=WAL")
                conn.execute("PRAGMA synchronous=FULL")
                conn.execute("PRAGMA busy_timeout=5000")
                conn.executescript(SCHEMA)
            except BaseException:
                conn.close()
                raise
            self._conn = conn
        return self._conn

    def _disconnect(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(sqlite3.Error):
                self._conn.close()
            self._conn = None

    async def open(self) -> None:
        """Opens the database now (a store that cannot be opened at start is an error to report)."""

        def connect() -> None:
            self._connection()

        await asyncio.get_running_loop().run_in_executor(self._executor, connect)

    async def close(self) -> None:
        await asyncio.get_running_loop().run_in_executor(self._executor, self._disconnect)
        self._executor.shutdown(wait=True)

    def cluster(self, node_id: str, config: ControlConfig) -> Cluster | None:
        return None  # one process owns the file: the control plane is one node

    # --- namespaces ------------------------------------------------------------------------
    async def get_namespace(self, name: str) -> NamespaceRecord | None:
        def q(c: sqlite3.Connection) -> NamespaceRecord | None:
            row = c.execute("SELECT data FROM namespaces WHERE name = ?", (name,)).fetchone()
            return NamespaceRecord.from_dict(json.loads(row[0])) if row else None

        return await self._run(q)

    async def list_namespaces(
        self, name_prefix: str | None, after: str | None, limit: int
    ) -> list[NamespaceRecord]:
        def q(c: sqlite3.Connection) -> list[NamespaceRecord]:
            sql = "SELECT data FROM namespaces WHERE status = ?"
            args: list[Any] = [NAMESPACE_ACTIVE]
            if name_prefix:  # not LIKE: SQLite's LIKE ignores the case of ASCII letters
                sql += " AND substr(name, 1, length(?)) = ?"
                args += [name_prefix, name_prefix]
            if after is not None:
                sql += " AND name > ?"
                args.append(after)
            sql += " ORDER BY name LIMIT ?"
            args.append(limit)
            return [NamespaceRecord.from_dict(json.loads(r[0])) for r in c.execute(sql, args)]

        return await self._run(q)

    async def put_namespace(self, record: NamespaceRecord) -> None:
        data = json.dumps(record.to_dict(), separators=(",", ":"))

        def q(c: sqlite3.Connection) -> None:
            c.execute(
                "INSERT OR REPLACE INTO namespaces (name, status, data) VALUES (?, ?, ?)",
                (record.name, record.status, data),
            )

        await self._run(q)

    # --- rooms -----------------------------------------------------------------------------
    async def get_room(self, namespace: str, name: str) -> RoomRecord | None:
        def q(c: sqlite3.Connection) -> RoomRecord | None:
            row = c.execute(
                "SELECT data FROM rooms WHERE namespace = ? AND name = ?", (namespace, name)
            ).fetchone()
            return RoomRecord.from_dict(json.loads(row[0])) if row else None

        return await self._run(q)

    async def list_rooms(self, namespace: str, after: str | None, limit: int) -> list[RoomRecord]:
        def q(c: sqlite3.Connection) -> list[RoomRecord]:
            sql = "SELECT data FROM rooms WHERE namespace = ?"
            args: list[Any] = [namespace]
            if after is not None:
                sql += " AND name > ?"
                args.append(after)
            sql += " ORDER BY name LIMIT ?"
            args.append(limit)
            return [RoomRecord.from_dict(json.loads(r[0])) for r in c.execute(sql, args)]

        return await self._run(q)

    async def list_all_rooms(self) -> list[RoomRecord]:
        def q(c: sqlite3.Connection) -> list[RoomRecord]:
            rows = c.execute("SELECT data FROM rooms ORDER BY namespace, name")
            return [RoomRecord.from_dict(json.loads(r[0])) for r in rows]

        return await self._run(q)

    async def put_room(self, record: RoomRecord) -> None:
        data = json.dumps(record.to_dict(), separators=(",", ":"))

        def q(c: sqlite3.Connection) -> None:
            c.execute(
                "INSERT OR REPLACE INTO rooms (namespace, name, data) VALUES (?, ?, ?)",
                (record.namespace, record.name, data),
            )

        await self._run(q)

    async def delete_room(self, namespace: str, name: str) -> bool:
        def q(c: sqlite3.Connection) -> bool:
            cur = c.execute("DELETE FROM rooms WHERE namespace = ? AND name = ?", (namespace, name))
            return cur.rowcount > 0

        return await self._run(q)
