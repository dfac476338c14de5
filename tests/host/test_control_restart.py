"""The data plane never depends on the control plane: a real `relay control` is SIGKILLed and
restarted while two WebSocket members of a real relay keep exchanging messages; nothing is lost,
and the relay's agent finds the new control plane (heartbeats resume, the room stays listed).
The relay is a warm one (a standby given the room), as `relay control` starts them by default:
the new control plane adopts it by its command line, and the old control plane's idle standbys
leave with it."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sqlite3
from pathlib import Path

import httpx
import pytest

import relay.client as rc
from loadtest.controlplane import free_port
from relay.control.records import RoomRecord
from relay.host.spawner import pid_alive
from relay.protocol.constants import CloseReason
from tests.control.helpers import login, ready_room, wait_for
from tests.control.test_durability import start_control
from tests.server.helpers import metric

pytestmark = pytest.mark.slow

MESSAGES = 200  # each way, one every 10 ms: the run spans the kill and the restart


async def test_members_keep_playing_while_the_control_plane_is_killed_and_restarted(tmp_path: Path) -> None:
    data, log, port = tmp_path / "data", tmp_path / "control.log", free_port()
    control = ("local", "--heartbeat-interval", "0.3")
    proc, url = await start_control(data, log, port, *control)
    relay_pid = None
    try:
        async with httpx.AsyncClient(base_url=url, timeout=5) as http:
            # rehearsed, not only started: a room wanted while both still rehearse gets a fresh fork
            await wait_for(lambda: ready_standbys(http), timeout=15)
            warm = standby_pids(proc.pid)
            h = await login(http)
            body = {"name": "keep", "serverType": "relay", "serverSpec": "realtime1.nano"}
            assert (await http.post("/realtime/", json=body, headers=h)).status_code == 200
            await http.post("/realtime/keep/room", json={"name": "match"}, headers=h)
            item = await ready_room(http, h, "keep", "match")
        relay_pid = await asyncio.to_thread(_relay_pid, data, "match")
        assert relay_pid is not None
        template = _parent(relay_pid)
        assert relay_pid in warm  # the room got a standby, not a fresh fork
        idle = {p for p in standby_pids() if _parent(p) == template}
        assert idle, "the pool was refilled"
        a = await rc.connect(item["ipAddress"], item["port"], item["encryptionKey"], "a", transport="ws")
        b = await rc.connect(item["ipAddress"], item["port"], item["encryptionKey"], "b", transport="ws")
        got: dict[str, list[bytes]] = {"a": [], "b": []}

        async def play(me: rc.Client, other: rc.Client, name: str) -> None:
            for i in range(MESSAGES):
                me.send(b"%s%d" % (name.encode(), i))
                await asyncio.sleep(0.01)

        async def collect(client: rc.Client, name: str) -> None:
            while len(got[name]) < MESSAGES:
                event = await client.next_event_of(rc.Received, timeout=10)
                got[name].append(event.data)

        tasks = [
            asyncio.create_task(play(a, b, "a")),
            asyncio.create_task(play(b, a, "b")),
            asyncio.create_task(collect(b, "b")),
            asyncio.create_task(collect(a, "a")),
        ]
        await asyncio.sleep(0.4)
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        await asyncio.sleep(0.8)  # control plane down: heartbeats fail, play goes on
        await wait_for(lambda: not any(pid_alive(p) for p in idle), timeout=5)  # no orphaned standby
        proc, url = await start_control(data, log, port, *control)
        await asyncio.wait_for(asyncio.gather(*tasks), 20)
        # WebSocket is reliable: every message, in order, both ways, across the outage.
        assert got["b"] == [b"a%d" % i for i in range(MESSAGES)]
        assert got["a"] == [b"b%d" % i for i in range(MESSAGES)]
        async with httpx.AsyncClient(base_url=url, timeout=5) as http:
            h = await login(http)
            # The new control plane adopted the relay and hears its heartbeats again: after
            # several lost-windows (3 x 0.3 s) the room is still there.
            await asyncio.sleep(2.0)
            r = await http.get("/realtime/keep/room/match", headers=h)
            assert r.status_code == 200 and r.json()["item"]["port"] == item["port"]
            assert await asyncio.to_thread(_relay_pid, data, "match") == relay_pid
            assert (await http.delete("/realtime/keep/room/match", headers=h)).status_code == 200
        closing = await a.next_event_of(rc.ClosingEvent, timeout=5)
        assert closing.reason == CloseReason.DELETED
        if relay_pid is not None:
            await wait_for(lambda: not pid_alive(relay_pid), timeout=5)
        await a.close()
        await b.close()
    finally:
        proc.terminate()
        proc.wait(10)
        if relay_pid is not None and pid_alive(relay_pid):
            os.kill(relay_pid, signal.SIGKILL)


def standby_pids(control_pid: int | None = None) -> set[int]:
    """Idle standbys (`relay serve --standby`) on this machine, or those forked by the zygote
    template of the control plane `control_pid`."""
    found = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                args = (entry / "cmdline").read_bytes().rstrip(b"\0").split(b"\0")
            except OSError:
                continue
            if args[-2:] == [b"serve", b"--standby"]:
                found.add(int(entry.name))
    if control_pid is not None:
        found = {p for p in found if _parent(_parent(p)) == control_pid}
    return found


async def ready_standbys(http: httpx.AsyncClient, wanted: int = 2) -> bool:
    """Whether the control plane's warm pool has `wanted` standbys that rehearsed, as its /metrics
    says."""
    text = (await http.get("/metrics")).text
    return metric(text, "relay_control_warm_relays", state="ready") >= wanted


def _parent(pid: int) -> int:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except OSError:
        return 0


def _relay_pid(data: Path, room: str) -> int | None:
    """The relay's pid as the control plane recorded it (the GS2 API does not expose it)."""
    with sqlite3.connect(data / "control.db") as db:
        row = db.execute("SELECT data FROM rooms WHERE name = ?", (room,)).fetchone()
    return RoomRecord.from_dict(json.loads(row[0])).pid if row else None
