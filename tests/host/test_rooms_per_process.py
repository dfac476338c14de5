"""The rooms-per-process tier (`relay control --rooms-per-process N`): a real control plane puts
rooms into shared relay processes (relay/host/group_spawner.py, relay/host/group.py), each room
still its own port, key, agent and log. Rooms sharing a process do not see each other's
messages; deleting one drains it alone; the group's rooms survive a SIGKILLed control plane and
are adopted by the next one; a group exits once its rooms are gone."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
from pathlib import Path

import httpx
import pytest

import relay.client as rc
from loadtest.controlplane import free_port
from relay.agent.launch import RelayLaunch
from relay.control.config import default_relay_command
from relay.host.group import group_of
from relay.host.group_spawner import SOCKET_DIR_PREFIX, GroupSpawner
from relay.host.spawner import SubprocessSpawner, cmdline, commands, pid_alive, relay_environment
from relay.protocol.constants import CloseReason
from relay.protocol.keys import generate_room_key
from relay.server.config import RelayConfig
from tests.control.helpers import login, ready_room, wait_for
from tests.control.test_durability import start_control
from tests.host.test_control_restart import _relay_pid

pytestmark = pytest.mark.slow


def group_pids() -> set[int]:
    return {pid for pid, command in commands() if group_of(command) is not None}


async def test_rooms_share_processes_apart_and_outlive_a_control_plane_restart(tmp_path: Path) -> None:
    data, log, port = tmp_path / "data", tmp_path / "control.log", free_port()
    control = ("local", "--heartbeat-interval", "0.3", "--rooms-per-process", "2")
    before = group_pids()
    proc, url = await start_control(data, log, port, *control)
    pids: set[int] = set()
    folder: Path | None = None
    try:
        async with httpx.AsyncClient(base_url=url, timeout=5) as http:
            h = await login(http)
            body = {"name": "grp", "serverType": "relay", "serverSpec": "realtime1.nano"}
            assert (await http.post("/realtime/", json=body, headers=h)).status_code == 200
            items = {}
            for name in ("r1", "r2", "r3"):
                assert (
                    await http.post("/realtime/grp/room", json={"name": name}, headers=h)
                ).status_code == 200
                items[name] = await ready_room(http, h, "grp", name)
        room_pids = {name: await asyncio.to_thread(_relay_pid, data, name) for name in items}
        pids = set(room_pids.values())  # type: ignore[arg-type]
        sockets = {pid: Path(group_of(cmdline(pid))[0]) for pid in pids}  # type: ignore[index]
        folder = sockets[room_pids["r1"]].parent
        assert folder.name.startswith(SOCKET_DIR_PREFIX) and sockets[room_pids["r3"]].parent == folder
        # two rooms to a process: r1 and r2 in one group, r3 in a second
        assert room_pids["r1"] == room_pids["r2"] != room_pids["r3"]
        assert pids <= group_pids() - before
        assert len({item["port"] for item in items.values()}) == 3
        for name in items:  # each room writes its own log, as a room's own process would
            assert "relay listening" in (data / "relay-logs" / "grp" / f"{name}.log").read_text()

        def join(name: str, who: str) -> asyncio.Task[rc.Client]:
            item = items[name]
            return asyncio.ensure_future(
                rc.connect(item["ipAddress"], item["port"], item["encryptionKey"], who, transport="ws")
            )

        a1, b1, a2 = await asyncio.gather(join("r1", "a1"), join("r1", "b1"), join("r2", "a2"))
        b2 = await rc.connect(
            items["r2"]["ipAddress"], items["r2"]["port"], items["r2"]["encryptionKey"], "b2", transport="udp"
        )
        a1.send(b"to r1")
        a2.send(b"to r2")
        assert (await b1.next_event_of(rc.Received, timeout=5)).data == b"to r1"
        assert (await b2.next_event_of(rc.Received, timeout=5)).data == b"to r2"
        assert not [e for e in b1.drain_events() if isinstance(e, rc.Received)]  # nothing of r2's

        # the control plane dies; the groups keep serving; the next one adopts their rooms
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        a1.send(b"while away")
        assert (await b1.next_event_of(rc.Received, timeout=5)).data == b"while away"
        proc, url = await start_control(data, log, port, *control)
        async with httpx.AsyncClient(base_url=url, timeout=5) as http:
            h = await login(http)
            await asyncio.sleep(1.5)  # several lost-windows (3 x 0.3 s): heartbeats reach it
            for name, item in items.items():
                r = await http.get(f"/realtime/grp/room/{name}", headers=h)
                assert r.status_code == 200 and r.json()["item"]["port"] == item["port"], name
            # deleting an adopted room drains it alone; its neighbour in the process plays on
            assert (await http.delete("/realtime/grp/room/r1", headers=h)).status_code == 200
            assert (await a1.next_event_of(rc.ClosingEvent, timeout=5)).reason == CloseReason.DELETED
            a2.send(b"still here")
            assert (await b2.next_event_of(rc.Received, timeout=5)).data == b"still here"
            assert pid_alive(room_pids["r2"])  # type: ignore[arg-type]
            # the last room of a group gone: the group exits
            assert (await http.delete("/realtime/grp/room/r2", headers=h)).status_code == 200
            assert (await a2.next_event_of(rc.ClosingEvent, timeout=5)).reason == CloseReason.DELETED
            await wait_for(lambda: not pid_alive(room_pids["r2"]), timeout=10)  # type: ignore[arg-type]
            r = await http.get("/realtime/grp/room/r1", headers=h)
            assert r.status_code == 404
            # the first control plane's socket folder: r3's group is still in it; killed (no
            # unlink of its own), its socket goes, and with the last one the folder
            assert folder.is_dir() and sockets[room_pids["r3"]].exists()
            os.kill(room_pids["r3"], signal.SIGKILL)  # type: ignore[arg-type]
            await wait_for(lambda: not folder.exists(), timeout=10)
        for client in (a1, b1, a2, b2):
            await client.close()
    finally:
        proc.terminate()
        proc.wait(10)
        for pid in pids:
            if pid_alive(pid):
                os.kill(pid, signal.SIGKILL)
        if folder is not None:  # a failure above left groups' sockets there
            shutil.rmtree(folder, ignore_errors=True)


async def test_a_wedged_group_is_killed_and_its_rooms_end_with_it(tmp_path: Path) -> None:
    """SIGKILL for a room in a group is a `kill` request; a group that does not drop the room (here:
    stopped with SIGSTOP) is killed whole, and every room in it ends with the group's exit."""
    spawner = GroupSpawner(SubprocessSpawner(), 2, socket_dir=tmp_path)
    command = default_relay_command()
    handles = []
    try:
        for n in range(2):
            launch = RelayLaunch(RelayConfig(room_key=generate_room_key()), incarnation=f"inc{n}")
            log = tmp_path / f"room{n}.log"
            handles.append(
                await spawner.spawn([*command, *launch.argv()], relay_environment(launch.env()), log)
            )
        assert handles[0].pid == handles[1].pid and spawner.group_pids == [handles[0].pid]
        os.kill(handles[0].pid, signal.SIGSTOP)
        handles[0].terminate()  # not answered
        await asyncio.sleep(0.2)
        handles[0].kill()
        codes = await asyncio.wait_for(asyncio.gather(*(h.wait() for h in handles)), 10)
        assert codes == [-signal.SIGKILL, -signal.SIGKILL]
        assert spawner.group_pids == []
    finally:
        for h in handles:
            if pid_alive(h.pid):
                os.kill(h.pid, signal.SIGKILL)
        await spawner.close()


async def test_the_socket_folder_goes_with_the_last_group() -> None:
    """Found in review: every GroupSpawner made a folder for its groups' sockets and none was ever
    removed (222 on the development machine). It goes at close when no group serves a room
    (one that does keeps its socket there, for the next control plane to adopt it by)."""
    spawner = GroupSpawner(SubprocessSpawner(), 2)
    folder = spawner.socket_dir
    command = default_relay_command()
    launch = RelayLaunch(RelayConfig(room_key=generate_room_key()), incarnation="inc-folder")
    handle = await spawner.spawn([*command, *launch.argv()], relay_environment(launch.env()), None)
    try:
        assert folder.is_dir() and list(folder.iterdir())  # the group's socket
        handle.kill()  # the group drops the room (an emptied group may stay, as warm seats)
        await asyncio.wait_for(handle.wait(), 10)
    finally:
        if pid_alive(handle.pid):
            os.kill(handle.pid, signal.SIGKILL)
        await spawner.close()
    assert not folder.exists()
