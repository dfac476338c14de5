"""The storage interface the control plane is written against.

Everything above this module (service, API, reaper) talks to `Store` only: SQLite
(sqlite_store.py, embedded, one node) or PostgreSQL (postgres_store.py, several nodes on one
database, which also coordinates them: `Store.cluster`). `open_store(config)` picks the backend
from `ControlConfig.store_url`. Writes are acknowledged only once durable: a record returned to
an API caller survives SIGKILL. tests/control/test_store_contract.py holds both to this contract.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol, runtime_checkable

from relay.control.records import NamespaceRecord, RoomRecord
from relay.settings import SettingsError

if TYPE_CHECKING:
    from relay.control.cluster import Cluster
    from relay.control.config import ControlConfig


@runtime_checkable
class Store(Protocol):
    """A method that cannot reach the data (disk full, read-only, I/O error) raises
    errors.store_unavailable's 503 and has changed nothing; the next call tries again."""

    async def open(self) -> None: ...

    async def close(self) -> None: ...

    async def get_namespace(self, name: str) -> NamespaceRecord | None:
        """The record whatever its status (ACTIVE or DELETED tombstone), or None."""
        ...

    async def list_namespaces(
        self, name_prefix: str | None, after: str | None, limit: int
    ) -> list[NamespaceRecord]:
        """ACTIVE namespaces whose name starts with name_prefix (case counts), ordered by name
        (by code point), names > after, at most limit."""
        ...

    async def put_namespace(self, record: NamespaceRecord) -> None:
        """Insert or replace (by name)."""
        ...

    async def get_room(self, namespace: str, name: str) -> RoomRecord | None: ...

    async def list_rooms(self, namespace: str, after: str | None, limit: int) -> list[RoomRecord]:
        """Rooms of a namespace ordered by name, names > after, at most limit."""
        ...

    async def list_all_rooms(self) -> list[RoomRecord]: ...

    async def put_room(self, record: RoomRecord) -> None:
        """Insert or replace (by namespace and name)."""
        ...

    async def delete_room(self, namespace: str, name: str) -> bool:
        """True if a record was removed."""
        ...

    def cluster(self, node_id: str, config: ControlConfig) -> Cluster | None:
        """How the nodes sharing this store act as one (relay/control/cluster.py); None: only one
        node uses it, and the control plane is a `LocalCluster`."""
        ...


POSTGRES_SCHEMES = ("postgresql://", "postgres://")


def open_store(config: ControlConfig) -> Store:
    url = config.store_url
    if url is None or url.startswith("sqlite:///"):
        from relay.control.sqlite_store import SQLiteStore

        return SQLiteStore(config.db_path)
    if url.startswith(POSTGRES_SCHEMES):
        try:
            from relay.control.postgres_store import PostgresStore
        except ImportError as exc:
            raise SettingsError(
                f"store_url: postgresql:// needs psycopg: pip install 'gs2-relay[postgres]' ({exc})"
            ) from None
        return PostgresStore(url, config.store_pool_size, config.register_timeout)
    raise SettingsError(f"store_url {url!r} is not supported (sqlite:///PATH or postgresql://...)")
