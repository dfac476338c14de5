"""The SQLite store on a real file system that fills up or turns read-only under the running
control plane: every call that cannot reach its data answers GS2's 503, changes nothing and
corrupts nothing; once space (or write access) returns, service resumes by itself."""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from relay.control.app import ControlPlane
from relay.control.errors import store_unavailable
from relay.control.sqlite_store import SQLiteStore
from tests.control.helpers import create_namespace, login, make_config, ready_room, relay_pids, wait_for

pytestmark = pytest.mark.slow


def mount(*args: str) -> bool:
    return subprocess.run(["mount", *args], capture_output=True).returncode == 0


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 4 MiB tmpfs of our own (a real file system that can fill up and be remounted)."""
    path = tmp_path / "disk"
    path.mkdir()
    if os.geteuid() != 0 or not mount("-t", "tmpfs", "-o", "size=4m", "tmpfs", str(path)):
        pytest.skip("needs to mount a tmpfs (root)")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def fill(disk: Path) -> Path:
    """Writes a file until the file system has no space left."""
    filler = disk / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        with contextlib.suppress(OSError):
            while True:
                os.write(fd, bytes(64 << 10))
        with contextlib.suppress(OSError):
            while True:
                os.write(fd, bytes(512))
    finally:
        os.close(fd)
    return filler


def unavailable(r: httpx.Response) -> bool:
    return (
        r.status_code == 503 and json.loads(r.json()["message"])[0]["code"] == "core.store.error.unavailable"
    )


def integrity(db: Path) -> str:
    with sqlite3.connect(db) as conn:
        return str(conn.execute("PRAGMA integrity_check").fetchone()[0])


async def test_a_full_then_read_only_disk_answers_503_and_service_resumes(small_disk: Path) -> None:
    config = make_config(small_disk / "data", provisioner="none")
    async with ControlPlane(config) as cp, httpx.AsyncClient(base_url=cp.url, timeout=10) as http:
        h = await login(http)
        await create_namespace(http, h, "ns")
        assert (await http.post("/realtime/ns/room", json={"name": "kept"}, headers=h)).status_code == 200

        filler = fill(small_disk)
        assert (await http.get("/realtime/ns/room/kept", headers=h)).status_code == 200  # reads still work
        big = {"name": "later", "notificationUserIds": [f"user-{i:04d}-" + "x" * 100 for i in range(1000)]}
        r = await http.post("/realtime/ns/room", json=big, headers=h)
        assert unavailable(r), r.text  # the disk is full
        body = {
            "name": "ns2",
            "serverType": "relay",
            "serverSpec": "realtime1.nano",
            "description": "d" * 1000,
        }
        assert unavailable(await http.post("/realtime/", json=body, headers=h))

        # After a refused write the store holds no file open for writing, so the file system can be
        # made read-only under the running control plane.
        assert mount("-o", "remount,ro", str(small_disk))
        try:
            for r in (
                await http.post("/realtime/ns/room", json={"name": "later"}, headers=h),
                await http.delete("/realtime/ns/room/kept", headers=h),
            ):
                assert unavailable(r), r.text  # a write cannot be made: refused, nothing changed
            r = await http.get("/realtime/ns/room/kept", headers=h)
            assert r.status_code == 200 or unavailable(r), r.text  # a read is answered where SQLite can
            assert (await http.get("/healthz")).status_code == 200  # the process itself is fine
        finally:
            assert mount("-o", "remount,rw", str(small_disk))

        filler.unlink()  # space and write access are back: the next calls simply work
        assert (await http.post("/realtime/ns/room", json=big, headers=h)).status_code == 200
        assert (await http.post("/realtime/", json=body, headers=h)).status_code == 200
        names = [r["name"] for r in (await http.get("/realtime/ns/room", headers=h)).json()["items"]]
        assert names == ["kept", "later"]
        assert (await http.delete("/realtime/ns/room/kept", headers=h)).status_code == 200
    assert integrity(config.db_path) == "ok"


class FailingDeletes(SQLiteStore):
    """The real SQLite store, one of whose room deletes fails as a full disk would make it."""

    fail_at: int | None = None  # the n-th delete_room from arming fails

    async def delete_room(self, namespace: str, name: str) -> bool:
        if self.fail_at is not None:
            self.fail_at -= 1
            if self.fail_at == 0:
                raise store_unavailable("injected: disk full")
        return await super().delete_room(namespace, name)


async def test_a_namespace_delete_cut_short_by_the_store_is_finished_by_asking_again(tmp_path: Path) -> None:
    """Found in review: deleteNamespace marks the namespace deleted, then ends its rooms; a store
    error between them answered 503 but left it deleted with rooms whose relays ran on, that no
    call could reach (404 for deleteNamespace and deleteRoom alike), still counted against
    max_rooms, and back in the listing of a namespace re-created under the name. Now asking
    again ends them, and so does re-creating the namespace."""
    config = make_config(tmp_path)
    store = FailingDeletes(config.db_path)
    async with (
        ControlPlane(config, store=store) as cp,
        httpx.AsyncClient(base_url=cp.url, timeout=30) as http,
    ):
        h = await login(http)
        for round_ in ("delete again", "create again"):
            await create_namespace(http, h, "game")
            for room in ("r1", "r2", "r3"):
                assert (
                    await http.post("/realtime/game/room", json={"name": room}, headers=h)
                ).status_code == 200
                await ready_room(http, h, "game", room)
            store.fail_at = 2
            assert unavailable(await http.delete("/realtime/game", headers=h))
            store.fail_at = None
            assert len(cp.state.runtime) == 2  # r1 ended; r2 and r3 left behind
            if round_ == "delete again":
                assert (await http.delete("/realtime/game", headers=h)).status_code == 200
                assert (await http.delete("/realtime/game", headers=h)).status_code == 404  # done
            else:
                await create_namespace(http, h, "game")
                assert (await http.get("/realtime/game/room", headers=h)).json()["items"] == []
                assert (await http.delete("/realtime/game", headers=h)).status_code == 200
            assert not cp.state.runtime
            assert await store.list_rooms("game", None, 10) == []
            await wait_for(lambda: not relay_pids("game", cp.url), 10)
