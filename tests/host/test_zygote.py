"""The zygote spawner with real processes: relays forked from the pre-imported template serve
clients, exit codes come back like asyncio's, memory is shared with the template, a dead
template is replaced, one whose channel breaks is killed and replaced, and the local provisioner
runs on it."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

import relay.client as rc
from relay.control.config import default_relay_command
from relay.control.provisioner import LocalProvisioner, RelayRequest, pid_is_relay
from relay.host.spawner import ProcessHandle, Spawner, SubprocessSpawner, pid_alive
from relay.host.zygote import ZygoteSpawner
from relay.protocol.keys import generate_room_key
from tests.control.helpers import wait_for

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="fork + /proc")

LISTENING = re.compile(r"relay listening udp\+ws ([\d.]+):(\d+)", re.MULTILINE)


@dataclass
class Started:
    handle: ProcessHandle
    log: Path
    key: str
    spawned_at: float


class Relays:
    """Starts relays through a spawner and kills whatever is left at the end of the test."""

    def __init__(self, spawner: Spawner, tmp_path: Path) -> None:
        self.spawner = spawner
        self.tmp_path = tmp_path
        self.started: list[Started] = []

    async def start(self, name: str, *extra: str) -> Started:
        key = generate_room_key()
        argv = [*default_relay_command(), "--host", "127.0.0.1", "--port", "0", "--admin-port", "0"]
        log = self.tmp_path / f"{name}.log"
        t0 = time.perf_counter()
        handle = await self.spawner.spawn([*argv, *extra], {**os.environ, "RELAY_ROOM_KEY": key}, log)
        self.started.append(Started(handle, log, key, t0))
        return self.started[-1]

    async def close(self) -> None:
        for s in self.started:
            s.handle.kill()
            await asyncio.wait_for(s.handle.wait(), 5)


@pytest.fixture
async def spawner() -> AsyncIterator[ZygoteSpawner]:
    z = ZygoteSpawner()
    try:
        yield z
    finally:
        await z.close()


@pytest.fixture
async def relays(spawner: ZygoteSpawner, tmp_path: Path) -> AsyncIterator[Relays]:
    r = Relays(spawner, tmp_path)
    try:
        yield r
    finally:
        await r.close()


async def listening(log: Path, timeout: float = 10.0) -> tuple[str, int, float]:
    """host, port and the time (perf_counter) the relay's listening line was first seen."""
    deadline = time.perf_counter() + timeout
    while True:
        text = log.read_text() if log.exists() else ""
        if match := LISTENING.search(text):
            return match.group(1), int(match.group(2)), time.perf_counter()
        assert time.perf_counter() < deadline, f"no listening line in {log}:\n{text}"
        await asyncio.sleep(0.001)


def memory(pid: int) -> tuple[int, int]:
    """(USS, RSS) in kB from /proc/PID/smaps_rollup."""
    rows = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:])
    kb = {k: int(v.split()[0]) for k, v in rows.items()}
    return kb["Private_Clean"] + kb["Private_Dirty"], kb["Rss"]


def parent_of(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


async def test_forked_relay_serves_and_exits_0_on_sigterm(relays: Relays) -> None:
    s = await relays.start("a")
    host, port, _ = await listening(s.log)
    client = await rc.connect(host, port, s.key, "u1", transport="udp", timeout=3)
    try:
        assert client.connection_id is not None
        s.handle.terminate()
        assert await asyncio.wait_for(s.handle.wait(), 5) == 0
    finally:
        await client.close()


async def test_kill_reports_minus_9(relays: Relays) -> None:
    s = await relays.start("b")
    await listening(s.log)
    s.handle.kill()
    assert await asyncio.wait_for(s.handle.wait(), 5) == -signal.SIGKILL


async def test_child_of_template_shares_memory(
    spawner: ZygoteSpawner, relays: Relays, capsys: pytest.CaptureFixture[str]
) -> None:
    s = await relays.start("c", "--namespace", "ns", "--room", "r1", "--incarnation", "i1")
    await listening(s.log)
    await asyncio.sleep(0.3)  # idle
    assert parent_of(s.handle.pid) == spawner.template_pid != os.getpid()
    assert pid_is_relay(s.handle.pid, "ns", "r1", "i1")  # its cmdline is the relay's own, for adopt()
    assert not pid_is_relay(s.handle.pid, "ns", "r1", "i2")  # another incarnation of the room
    uss, rss = memory(s.handle.pid)
    with capsys.disabled():
        print(f"\nidle forked relay: USS {uss} kB, RSS {rss} kB ({uss / rss:.0%})")
    assert uss < 0.6 * rss


async def test_spawn_to_listening_time(
    spawner: ZygoteSpawner, relays: Relays, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    await spawner.start()  # the template's own start-up (imports) is not part of a room's start
    s = await relays.start("d")
    forked = (await listening(s.log))[2] - s.spawned_at
    plain = Relays(SubprocessSpawner(), tmp_path)
    p = await plain.start("d-plain")
    try:
        exec_time = (await listening(p.log))[2] - p.spawned_at
    finally:
        await plain.close()
    with capsys.disabled():
        print(f"\nspawn -> listening: zygote {forked * 1000:.1f} ms, subprocess {exec_time * 1000:.1f} ms")


async def test_dead_template_is_replaced(spawner: ZygoteSpawner, relays: Relays) -> None:
    orphan = await relays.start("e1")
    await listening(orphan.log)
    first = spawner.template_pid
    assert first is not None
    os.kill(first, signal.SIGKILL)
    s = await relays.start("e2")
    host, port, _ = await listening(s.log)
    assert spawner.template_pid not in (None, first)
    client = await rc.connect(host, port, s.key, "u1", transport="udp", timeout=3)
    await client.close()
    orphan.handle.terminate()  # the dead template's child is still watched (by pid)
    assert await asyncio.wait_for(orphan.handle.wait(), 5) is None


def channel_to_spawner(template: int) -> str:
    """/proc's path of the template's end of the pipe this process (its spawner) reads it from."""

    def pipes(pid: int) -> dict[int, str]:
        links = {}
        for fd in os.listdir(f"/proc/{pid}/fd"):
            with contextlib.suppress(OSError):  # listdir's own descriptor, closed by now
                links[int(fd)] = os.readlink(f"/proc/{pid}/fd/{fd}")
        return {fd: link for fd, link in links.items() if link.startswith("pipe:")}

    ours = pipes(os.getpid())
    ours_only = {link for fd, link in ours.items() if fd > 2} - {ours.get(fd) for fd in (0, 1, 2)}
    for fd, link in pipes(template).items():
        flags = Path(f"/proc/{template}/fdinfo/{fd}").read_text().split("flags:")[1].split()[0]
        if link in ours_only and int(flags, 8) & os.O_WRONLY:
            return f"/proc/{template}/fd/{fd}"
    raise AssertionError(f"no channel to this process in template {template}")


async def test_a_template_whose_channel_breaks_is_killed_and_replaced(
    spawner: ZygoteSpawner, relays: Relays
) -> None:
    """Its channel holds what the template never sends (here a frame header over MAX_FRAME, written
    into its end of the pipe): nothing more it says can be read, so it is killed rather than left
    running unused, and the next spawn forks from a new template."""
    await spawner.start()
    first = spawner.template_pid
    assert first is not None
    fd = os.open(channel_to_spawner(first), os.O_WRONLY)
    try:
        os.write(fd, b"\xff\xff\xff\xff")
    finally:
        os.close(fd)
    await wait_for(lambda: not pid_alive(first), 5)
    s = await relays.start("f")
    await listening(s.log)
    assert parent_of(s.handle.pid) == spawner.template_pid not in (None, first)


async def test_non_serve_command_falls_back_to_subprocess(spawner: ZygoteSpawner) -> None:
    handle = await spawner.spawn([sys.executable, "-c", "raise SystemExit(3)"], dict(os.environ), None)
    assert await asyncio.wait_for(handle.wait(), 10) == 3
    assert spawner.template_pid is None  # never started for it


async def test_local_provisioner_on_zygote(spawner: ZygoteSpawner, tmp_path: Path) -> None:
    provisioner = LocalProvisioner(relay_command=default_relay_command(), spawner=spawner, log_dir=tmp_path)
    exits: list[tuple[str, str, str, int | None]] = []

    async def on_exit(namespace: str, room: str, incarnation: str, code: int | None, *_: object) -> None:
        exits.append((namespace, room, incarnation, code))

    provisioner.set_exit_callback(on_exit)
    request = RelayRequest("ns", "room1", "i1", generate_room_key(), "secret", "http://127.0.0.1:9", 0.2, 0.2)
    pid = await provisioner.provision(request)
    try:
        await listening(tmp_path / "ns" / "room1.log")
        assert pid is not None and parent_of(pid) == spawner.template_pid
        assert provisioner.alive("i1")
        await provisioner.stop("i1")
        await asyncio.sleep(0)
        assert exits == [("ns", "room1", "i1", 0)]
    finally:
        await provisioner.close(stop_all=True)
