"""A throw-away PostgreSQL server for tests and benchmarks: `initdb` and `pg_ctl` in a temporary
directory, listening on 127.0.0.1 only, on a free port, removed when done.

    with PostgresServer.start() as pg:          # or PostgresServer.from_env() (below)
        url = pg.create_database("t1")          # postgresql://postgres@127.0.0.1:PORT/t1

`RELAY_TEST_POSTGRES_DSN` names a server to use instead (its user must be allowed CREATE
DATABASE); each caller still gets databases of its own. initdb refuses to run as root: as root
the server runs as the `postgres` user (Debian's package creates it), in a directory it owns.
`unavailable()` says why none can be had here (no binaries), for a skip with its reason.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

from loadtest.controlplane import free_port

DSN_ENV = "RELAY_TEST_POSTGRES_DSN"
REQUIRE_ENV = "RELAY_REQUIRE_POSTGRES"
"""Set (to 1) where PostgreSQL must be there (CI): its tests then run or fail, never skip."""


def binaries() -> Path | None:
    """The folder holding initdb and pg_ctl: on PATH, else Debian's /usr/lib/postgresql/<v>/bin."""
    found = shutil.which("initdb")
    if found and shutil.which("pg_ctl"):
        return Path(found).resolve().parent
    for folder in sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=_version, reverse=True):
        if (Path(folder) / "initdb").exists() and (Path(folder) / "pg_ctl").exists():
            return Path(folder)
    return None


def _version(folder: str) -> float:
    with contextlib.suppress(ValueError):
        return float(Path(folder).parent.name)
    return 0.0


def unavailable() -> str | None:
    """Why no PostgreSQL server can be had here, or None."""
    if os.environ.get(DSN_ENV):
        return None
    try:
        import psycopg  # noqa: F401
    except ImportError:
        return "psycopg is not installed (pip install 'gs2-relay[postgres]')"
    if binaries() is None:
        return "no initdb/pg_ctl (apt-get install postgresql, or set RELAY_TEST_POSTGRES_DSN)"
    if os.geteuid() == 0:
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            return "running as root and there is no `postgres` user to run initdb as"
    return None


class PostgresServer:
    def __init__(self, base_url: str, folder: Path | None = None, bin_dir: Path | None = None) -> None:
        self.base_url = base_url.rstrip("/")
        """postgresql://user@host:port (no database)."""
        self.folder = folder
        self.bin_dir = bin_dir
        self.databases: list[str] = []

    @classmethod
    def from_env(cls) -> PostgresServer:
        """RELAY_TEST_POSTGRES_DSN's server when set, else a throw-away one."""
        dsn = os.environ.get(DSN_ENV)
        if dsn:
            return cls(dsn.rsplit("/", 1)[0] if dsn.count("/") > 2 else dsn)
        return cls.start()

    @classmethod
    def start(cls, timeout: float = 60.0) -> PostgresServer:
        bin_dir = binaries()
        if bin_dir is None:
            raise RuntimeError("no initdb/pg_ctl found")
        folder = Path(tempfile.mkdtemp(prefix="relay-pg-"))
        as_user: list[str] = []
        if os.geteuid() == 0:
            user = pwd.getpwnam("postgres")
            os.chown(folder, user.pw_uid, user.pw_gid)
            as_user = ["runuser", "-u", "postgres", "--"]
        data, port = folder / "data", free_port()
        server = cls(f"postgresql://postgres@127.0.0.1:{port}", folder, bin_dir)
        try:
            subprocess.run(
                [*as_user, str(bin_dir / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust",
                 "--no-sync", "-E", "UTF8", "--locale=C"],
                check=True, capture_output=True, timeout=timeout,
            )  # fmt: skip
            options = (
                f"-c listen_addresses=127.0.0.1 -c port={port} -c unix_socket_directories={folder} "
                "-c max_connections=200 -c shared_buffers=32MB"
            )
            subprocess.run(
                [*as_user, str(bin_dir / "pg_ctl"), "-D", str(data), "-o", options,
                 "-l", str(folder / "server.log"), "-w", "-t", str(int(timeout)), "start"],
                check=True, capture_output=True, timeout=timeout + 5,
            )  # fmt: skip
        except BaseException:
            server.stop()
            raise
        return server

    def create_database(self, name: str | None = None) -> str:
        """A new, empty database; its URL."""
        import psycopg

        name = name or "relay_" + uuid.uuid4().hex[:12]
        with psycopg.connect(self.base_url + "/postgres", autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')  # type: ignore[arg-type]  # a name we made
        self.databases.append(name)
        return f"{self.base_url}/{name}"

    def drop_databases(self) -> None:
        """Drops the databases this object created (on a server it did not start)."""
        import psycopg

        with (
            contextlib.suppress(psycopg.Error),
            psycopg.connect(self.base_url + "/postgres", autocommit=True) as conn,
        ):
            for name in self.databases:
                with contextlib.suppress(psycopg.Error):
                    conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')  # type: ignore[arg-type]
        self.databases.clear()

    def server_pids(self) -> list[int]:
        """The server's processes (postmaster first, then its children), for CPU accounting."""
        if self.folder is None:
            return []
        pid_file = self.folder / "data" / "postmaster.pid"
        with contextlib.suppress(OSError, ValueError):
            main = int(pid_file.read_text().split()[0])
            children = Path(f"/proc/{main}/task/{main}/children").read_text().split()
            return [main, *(int(c) for c in children)]
        return []

    def stop(self) -> None:
        """Stops a server this object started and removes its folder; else drops its databases."""
        if self.folder is None:
            self.drop_databases()
            return
        data = self.folder / "data"
        if self.bin_dir is not None and (data / "postmaster.pid").exists():
            as_user = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
            subprocess.run(
                [*as_user, str(self.bin_dir / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop"],
                capture_output=True, timeout=60, check=False,
            )  # fmt: skip
        shutil.rmtree(self.folder, ignore_errors=True)
        self.folder = None

    def __enter__(self) -> PostgresServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


@contextlib.contextmanager
def server() -> Iterator[PostgresServer]:
    """A server for the duration: RELAY_TEST_POSTGRES_DSN's, or a throw-away one."""
    pg = PostgresServer.from_env()
    try:
        yield pg
    finally:
        pg.stop()
