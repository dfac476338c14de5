"""Relay log retention: ended rooms' logs go after keep_seconds, running ones are only ever cut."""

from __future__ import annotations

import asyncio
import json
import os
import time
from pathlib import Path

import httpx

from relay.control.app import ControlPlane
from relay.control.config import default_relay_command
from relay.control.oplog import OperationLog, stream_file
from relay.control.provisioner import LocalProvisioner, RelayRequest
from relay.control.relay_logs import LogRetention, prune
from relay.protocol.keys import generate_room_key
from tests.control.helpers import REAL_RELAY, create_namespace, login, make_config, ready_room, wait_for
from tests.host.test_zygote import listening

DAY = 86400.0


def write(path: Path, text: str, age: float = 0.0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    then = time.time() - age
    os.utime(path, (then, then))
    return path


def test_ended_rooms_logs_go_once_stale_running_ones_stay(tmp_path: Path) -> None:
    old_ended = write(tmp_path / "ns" / "gone.log", "x", age=2 * DAY)
    old_copy = write(tmp_path / "ns" / "gone.log.1", "x", age=2 * DAY)
    recent_ended = write(tmp_path / "ns" / "recent.log", "x", age=60)
    old_running = write(tmp_path / "ns" / "live.log", "x", age=2 * DAY)
    other_ns = write(tmp_path / "other" / "live.log", "x", age=2 * DAY)  # same room name, other namespace
    not_a_log = write(tmp_path / "ns" / "notes.txt", "x", age=2 * DAY)
    standby = write(tmp_path / "standby.log", "x", age=2 * DAY)

    result = prune(tmp_path, lambda ns, room: (ns, room) == ("ns", "live"), LogRetention(DAY, 1 << 20))

    assert (result.removed, result.cut) == (3, 0)
    assert not old_ended.exists() and not old_copy.exists() and not other_ns.exists()
    assert recent_ended.exists() and old_running.exists() and not_a_log.exists() and standby.exists()
    assert (tmp_path / "other").is_dir()  # directories stay: a room starting there must find it


def test_zero_keep_seconds_keeps_everything(tmp_path: Path) -> None:
    old = write(tmp_path / "ns" / "gone.log", "x", age=30 * DAY)
    assert prune(tmp_path, lambda ns, room: False, LogRetention(0, 0)).removed == 0
    assert old.exists()


def test_large_logs_are_cut_and_writers_go_on_at_the_new_end(tmp_path: Path) -> None:
    live = tmp_path / "ns" / "live.log"
    live.parent.mkdir()
    fd = os.open(live, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)  # as a relay writes its log
    standby = write(tmp_path / "standby.log", "s" * 200)
    small = write(tmp_path / "ns" / "small.log", "tiny")
    try:
        os.write(fd, b"a" * 150)
        result = prune(tmp_path, lambda ns, room: room in ("live", "small"), LogRetention(DAY, 100))
        assert (result.removed, result.cut) == (0, 2)
        assert (tmp_path / "ns" / "live.log.1").read_bytes() == b"a" * 150
        assert (tmp_path / "standby.log.1").read_text() == "s" * 200
        assert live.stat().st_size == 0 and standby.stat().st_size == 0
        assert small.read_text() == "tiny" and not (tmp_path / "ns" / "small.log.1").exists()
        os.write(fd, b"after the cut\n")
        assert live.read_bytes() == b"after the cut\n"  # no hole where the old bytes were
    finally:
        os.close(fd)


def test_missing_directory_is_nothing_to_do(tmp_path: Path) -> None:
    assert prune(tmp_path / "absent", lambda ns, room: False, LogRetention()).removed == 0


async def test_provisioner_prunes_around_its_running_relays(tmp_path: Path) -> None:
    """A real relay keeps its log however old its last line; once it has exited, the log goes."""
    ended = write(tmp_path / "ns" / "ended.log", "x", age=10)
    provisioner = LocalProvisioner(
        relay_command=default_relay_command(),
        log_dir=tmp_path,
        log_retention=LogRetention(keep_seconds=0.5, max_bytes=1 << 20),
        prune_interval=0.05,
    )
    await provisioner.start()
    try:
        key = generate_room_key()
        request = RelayRequest("ns", "live", "i1", key, "secret", "http://127.0.0.1:9", 30, 30)
        await provisioner.provision(request)
        log = tmp_path / "ns" / "live.log"
        await listening(log)
        deadline = time.monotonic() + 5
        while ended.exists():
            assert time.monotonic() < deadline, "the ended room's log was never removed"
            await asyncio.sleep(0.05)
        then = time.time() - 60
        os.utime(log, (then, then))  # as if the relay had been quiet for a minute
        await asyncio.sleep(0.3)  # several passes
        assert log.exists()
        await provisioner.stop("i1")
        os.utime(log, (then, then))
        deadline = time.monotonic() + 5
        while log.exists():
            assert time.monotonic() < deadline, "the log outlived its relay by more than keep_seconds"
            await asyncio.sleep(0.05)
    finally:
        await provisioner.close(stop_all=True)


async def test_names_dot_and_dotdot_keep_their_logs_inside_their_own_folder(tmp_path: Path) -> None:
    """Issue 19, defect 6: namespace `..` made a room's output land in the operation log (`..` /
    `operations`), namespace `.` in the standbys' shared log (`.` / `standby`)."""
    config = make_config(tmp_path, relay_command=REAL_RELAY)
    rooms = [("..", "operations"), (".", "standby"), ("..", "standby"), ("x.y", "z"), ("x", "y.z")]
    async with ControlPlane(config) as cp, httpx.AsyncClient(base_url=cp.url, timeout=5) as http:
        h = await login(http)
        for ns in {ns for ns, _ in rooms}:
            await create_namespace(http, h, ns)
        for ns, room in rooms:  # %2E: a client would otherwise resolve `..` in the path itself
            r = await http.post(f"/realtime/{ns.replace('.', '%2E')}/room", json={"name": room}, headers=h)
            assert r.status_code == 200, r.text
        for ns, room in rooms:
            await ready_room(http, h, ns.replace(".", "%2E"), room)
        provisioner = cp.provisioner
        assert isinstance(provisioner, LocalProvisioner) and provisioner.log_dir is not None
        logs = [provisioner.log_path(ns, room) for ns, room in rooms]
        assert len(set(logs)) == len(rooms)
        own = {provisioner.log_dir / "standby.log", cp.config.operation_log_path}
        for log in logs:
            assert log is not None and log not in own
            assert log.resolve().parent.parent == provisioner.log_dir.resolve()  # relay-logs/<ns>/<room>.log
            await wait_for(lambda log=log: "relay listening" in log.read_text())
    for line in cp.config.operation_log_path.read_text().splitlines():
        json.loads(line)  # JSON lines only: no relay wrote there


def test_logging_namespace_streams_are_one_file_each(tmp_path: Path) -> None:
    """GRNs that differ only where characters were replaced by `_` shared one stream."""
    oplog = OperationLog(tmp_path / "operations.log", tmp_path / "logs")
    grns = ["grn:gs2:r:o:log:game", "grn:gs2:r:o:log_game", "grn_gs2_r_o_log_game", "grn:" + "x" * 1000]
    for grn in grns:
        oplog.write("room.created", "ns", "r", grn)
    streams = {stream_file(tmp_path / "logs", grn) for grn in grns}
    assert len(streams) == len(grns)
    assert all(p.parent == tmp_path / "logs" and p.exists() and len(p.name) < 255 for p in streams)
