"""Spawns given up on leave nothing behind, with real processes: a zygote reply that comes too late
or to a cancelled spawn, a template that dies between its fork and its reply, a standby whose
handout is cancelled, a relay cancelled while it is moved into its cgroup, a room cancelled while
its group starts it (a control plane stopping cancels the spawns in flight, then closes its
spawner), a relay whose spawn was under way as its provisioner stopped every relay (stopped once
it is spawned; none spawned after); and a room no group can take fails alone, after a bounded
number of groups."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest

from relay.agent.tiers import NANO
from relay.control.config import default_relay_command
from relay.control.provisioner import LocalProvisioner, RelayRequest, relay_processes
from relay.host import cgroups
from relay.host.capped_spawner import CappedHandle, CappedSpawner
from relay.host.frames import MAX_FRAME, encode_frame, read_frame
from relay.host.group import parse_group_argv
from relay.host.group_spawner import ASSIGN_ATTEMPTS, GroupRoomHandle, GroupSpawner, ask_rooms
from relay.host.spawner import ProcessHandle, SubprocessSpawner, pid_alive, relay_environment
from relay.host.template import CMDLINE_ROOM
from relay.host.warm_pool import WarmPool
from relay.host.zygote import ZygoteSpawner
from relay.protocol.keys import generate_room_key
from tests.control.helpers import wait_for
from tests.host.test_caps import BACKEND, group_dirs, needs_cgroups
from tests.host.wrapped_backend import WrappedBackend

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="fork + /proc")


def room(incarnation: str, **extra_env: str) -> tuple[list[str], dict[str, str]]:
    """A room's `relay serve` argv and environment (no control plane: no agent)."""
    argv = [*default_relay_command(), "--host", "127.0.0.1", "--port", "0", "--admin-port", "0"]
    argv += ["--namespace", "ns", "--room", "r", "--incarnation", incarnation]
    return argv, relay_environment({"RELAY_ROOM_KEY": generate_room_key(), **extra_env})


def relays_of(incarnation: str) -> list[int]:
    return sorted(relay_processes().get(incarnation, []))


def kill_all(pids: Sequence[int]) -> None:
    for pid in pids:
        if pid_alive(pid):
            os.kill(pid, signal.SIGKILL)


@pytest.fixture
def incarnation(request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh incarnation; whatever still runs as its relay at the end is killed."""
    name = f"given-up-{os.getpid()}-{request.node.name[-24:]}"
    yield name
    kill_all(relays_of(name))


# ---- the zygote --------------------------------------------------------------------------------


async def test_a_child_whose_template_dies_before_replying_exits(tmp_path: Path, incarnation: str) -> None:
    """The template forks, then cannot tell its spawner the pid (here: the spawner's end of the
    channel is closed, so its reply fails and it exits): the child never becomes a relay."""
    template = subprocess.Popen(
        [sys.executable, "-m", "relay.host.template", " " * CMDLINE_ROOM],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        env=relay_environment(),
        start_new_session=True,
    )
    assert template.stdin is not None and template.stdout is not None
    try:
        ready = await asyncio.to_thread(read_frame, template.stdout.fileno(), MAX_FRAME)
        assert ready == {"ready": template.pid}
        template.stdout.close()
        argv, env = room(incarnation)
        template.stdin.write(
            encode_frame({"id": 0, "argv": argv, "env": env, "log_path": str(tmp_path / "r.log")})
        )
        template.stdin.flush()
        assert await asyncio.to_thread(template.wait, 10) == 0
        await asyncio.sleep(1.0)  # long enough for a fork to have become a relay
        assert relays_of(incarnation) == []
        assert "listening" not in ((tmp_path / "r.log").read_text() if (tmp_path / "r.log").exists() else "")
    finally:
        template.kill()
        template.wait()


async def test_a_spawn_whose_reply_times_out_leaves_only_its_handles_relay(
    tmp_path: Path, incarnation: str
) -> None:
    """The control plane's loop stalls while the template forks and replies: the reply is read
    only after the timeout has fired. That child is killed, the template given up, and the room
    ends up with one relay (from the next template), the one its handle is for."""
    spawner = ZygoteSpawner(reply_timeout=0.5)
    await spawner.start()
    try:
        task = asyncio.create_task(spawner.spawn(*room(incarnation), tmp_path / "r.log"))
        await asyncio.sleep(0)  # its first step sends the request
        time.sleep(1.5)  # a stalled event loop
        handle = await task
        await wait_for(lambda: handle.pid in relays_of(incarnation))
        await asyncio.sleep(0.5)
        assert relays_of(incarnation) == [handle.pid]
        handle.kill()
        await asyncio.wait_for(handle.wait(), 5)
    finally:
        await spawner.close()


async def test_a_cancelled_zygote_spawn_leaves_no_relay(tmp_path: Path, incarnation: str) -> None:
    """Cancelled after its request went out: the child is killed when the reply comes."""
    spawner = ZygoteSpawner()
    await spawner.start()
    try:
        task = asyncio.create_task(spawner.spawn(*room(incarnation), tmp_path / "r.log"))
        await asyncio.sleep(0)  # its first step sends the request
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    finally:
        await spawner.close()
    await asyncio.sleep(1.0)
    assert relays_of(incarnation) == []


# ---- the warm pool -------------------------------------------------------------------------------


async def test_a_cancelled_handout_stops_the_standby_and_removes_its_group(
    tmp_path: Path, incarnation: str
) -> None:
    pool = WarmPool(CappedSpawner(ZygoteSpawner(), NANO, BACKEND), size=1, log_path=tmp_path / "standby.log")
    await pool.start()
    try:
        await wait_for(lambda: pool.ready_pids, 30)
        standby = pool._ready[0]
        assert isinstance(standby, CappedHandle)
        dirs = [] if standby.group is None else group_dirs(standby.group)
        task = asyncio.create_task(pool.spawn(*room(incarnation), tmp_path / "r.log"))
        while pool.ready_pids:  # taken out of the pool, its room on its way
            await asyncio.sleep(0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await wait_for(lambda: not pid_alive(standby.pid), 5)
    finally:
        await pool.close()
    assert relays_of(incarnation) == []
    assert not any(p.exists() for p in dirs)


# ---- the cgroup caps -----------------------------------------------------------------------------


class SlowGroup:
    """A real cgroup that takes its time to move a pid in (as a v1 migration can)."""

    def __init__(self, group: cgroups.Cgroup, adding: threading.Event) -> None:
        self.group = group
        self.adding = adding

    def add(self, pid: int) -> None:
        self.adding.set()
        time.sleep(0.3)
        self.group.add(pid)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.group, name)


class SlowBackend(WrappedBackend):
    def __init__(self, backend: cgroups.Backend) -> None:
        super().__init__(backend)
        self.adding = threading.Event()

    def wrap(self, group: cgroups.Cgroup) -> cgroups.Cgroup:
        return SlowGroup(group, self.adding)  # type: ignore[return-value]


class Recording:
    """A subprocess spawner that remembers what it started."""

    def __init__(self) -> None:
        self.inner = SubprocessSpawner()
        self.pids: list[int] = []

    async def spawn(
        self, argv: Sequence[str], env: Mapping[str, str], log_path: Path | None
    ) -> ProcessHandle:
        handle = await self.inner.spawn(argv, env, log_path)
        self.pids.append(handle.pid)
        return handle


@needs_cgroups
async def test_a_spawn_cancelled_while_its_relay_is_capped_stops_it_and_removes_its_group() -> None:
    assert BACKEND is not None
    backend, inner = SlowBackend(BACKEND), Recording()
    spawner = CappedSpawner(inner, NANO, backend)
    argv = [sys.executable, "-c", "import time; time.sleep(30)", "--namespace", "n", "--room", "r"]
    try:
        task = asyncio.create_task(spawner.spawn(argv, dict(os.environ), None))
        await wait_for(backend.adding.is_set)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await spawner.close()
        [pid] = inner.pids
        assert not pid_alive(pid)
        assert not any(p.exists() for g in backend.groups for p in group_dirs(g))
    finally:
        kill_all(inner.pids)
        await asyncio.sleep(0.1)
        for group in backend.groups:
            group.remove()


# ---- a provisioner stopping every relay ----------------------------------------------------------

SLEEPER = (sys.executable, "-c", "import time; time.sleep(60)", "serve")
"""A relay's command line as the provisioner and recovery see it (`serve`, its incarnation), that
only sleeps: SIGTERM ends it at once."""


class Gated:
    """A subprocess spawner whose spawns wait for `go`: a spawn under way while the test acts."""

    def __init__(self) -> None:
        self.inner = SubprocessSpawner()
        self.go = asyncio.Event()
        self.spawning = asyncio.Event()
        self.pids: list[int] = []

    async def spawn(
        self, argv: Sequence[str], env: Mapping[str, str], log_path: Path | None
    ) -> ProcessHandle:
        self.spawning.set()
        await self.go.wait()
        handle = await self.inner.spawn(argv, env, log_path)
        self.pids.append(handle.pid)
        return handle


def request(incarnation: str) -> RelayRequest:
    return RelayRequest(
        namespace="ns",
        room="r",
        incarnation=incarnation,
        room_key=generate_room_key(),
        agent_secret="secret",
        control_url="http://127.0.0.1:9/internal",
        heartbeat_interval=1.0,
        idle_heartbeat_interval=1.0,
    )


async def test_stopping_every_relay_stops_one_spawned_meanwhile_and_starts_none_after(
    incarnation: str,
) -> None:
    """Found in review: a control plane told to stop its relays on exit left some running. Its
    provisioner's close(stop_all=True) stopped the relays it tracked at that moment; a relay whose
    spawn was under way (a wantRoom answered as the stop began, its HTTP server still serving)
    was tracked just after and never stopped, and one provisioned after the close was started
    all the same (from a fresh zygote template). Now the close stops the relay once its spawn
    returns, and a provisioning after it is cancelled before anything starts."""
    spawner = Gated()
    provisioner = LocalProvisioner(SLEEPER, spawner=spawner, stop_grace=2.0)
    later = incarnation + "-later"
    try:
        provisioning = asyncio.create_task(provisioner.provision(request(incarnation)))
        await wait_for(spawner.spawning.is_set, 5)
        closing = asyncio.create_task(provisioner.close(stop_all=True))
        await asyncio.sleep(0)  # the close has begun, the spawn is still under way
        spawner.go.set()
        pid = await asyncio.wait_for(provisioning, 10)
        await asyncio.wait_for(closing, 10)
        assert not pid_alive(pid) and relays_of(incarnation) == []
        with pytest.raises(asyncio.CancelledError):
            await asyncio.wait_for(provisioner.provision(request(later)), 10)
        assert spawner.pids == [pid] and relays_of(later) == []
    finally:
        kill_all(relays_of(later))


# ---- rooms in group processes --------------------------------------------------------------------


@pytest.fixture
def sockets() -> Iterator[Path]:
    """A short private folder for group sockets (a Unix socket's path is at most 107 bytes)."""
    path = Path(tempfile.mkdtemp(prefix="rg-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


async def test_a_room_cancelled_while_its_group_starts_it_is_dropped_and_still_counted(sockets: Path) -> None:
    """The group is told to drop the room; its seat is free once the group says it has, and the
    next room takes it; closing the spawner then leaves no room and no group behind."""
    spawner = GroupSpawner(SubprocessSpawner(), 2, socket_dir=sockets)
    tag = str(os.getpid())
    handles: list[GroupRoomHandle] = []
    try:
        a = await spawner.spawn(*room(f"a{tag}"), None)
        assert isinstance(a, GroupRoomHandle)
        handles.append(a)
        group = a.group
        task = asyncio.create_task(spawner.spawn(*room(f"b{tag}"), None))
        while f"b{tag}" not in group.rooms:  # its assignment is on its way
            await asyncio.sleep(0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await wait_for(lambda: group.seats_taken == 1, 5)
        assert ask_rooms(group.path) == [f"a{tag}"]
        c = await spawner.spawn(*room(f"c{tag}"), None)
        assert isinstance(c, GroupRoomHandle)
        handles.append(c)
        assert c.pid == a.pid and sorted(ask_rooms(group.path)) == [f"a{tag}", f"c{tag}"]
        for handle in handles:
            handle.kill()
        await asyncio.wait_for(asyncio.gather(*(h.wait() for h in handles)), 5)
        await spawner.close()
        await wait_for(lambda: not pid_alive(a.pid), 5)
    finally:
        kill_all(spawner.group_pids)
        await spawner.close()


async def test_an_assignment_too_large_for_a_group_fails_alone(sockets: Path) -> None:
    """Refused before it is sent: the group and its room go on, no other group is started."""
    spawner = GroupSpawner(SubprocessSpawner(), 4, socket_dir=sockets)
    tag = str(os.getpid())
    try:
        a = await spawner.spawn(*room(f"a{tag}"), None)
        with pytest.raises(OSError, match="over a group's"):
            await asyncio.wait_for(spawner.spawn(*room(f"b{tag}", BIG="x" * (1 << 20)), None), 5)
        await asyncio.sleep(0.3)
        assert spawner.group_pids == [a.pid] and ask_rooms(a.group.path) == [f"a{tag}"]  # type: ignore[attr-defined]
        a.kill()
        await asyncio.wait_for(a.wait(), 5)
    finally:
        kill_all(spawner.group_pids)
        await spawner.close()


DROPPING_GROUP = """
import socket, sys
server = socket.socket(socket.AF_UNIX)
server.bind(sys.argv[1])
server.listen()
connection, _ = server.accept()
connection.recv(1 << 16)
"""


class DroppingGroups:
    """Starts, for each group, a process that listens on the group's socket and goes away at the
    first request: a group gone while taking its room, every time."""

    def __init__(self) -> None:
        self.inner = SubprocessSpawner()
        self.started = 0

    async def spawn(
        self, argv: Sequence[str], env: Mapping[str, str], log_path: Path | None
    ) -> ProcessHandle:
        parsed = parse_group_argv(list(argv[argv.index("serve") + 1 :]))
        assert parsed is not None
        self.started += 1
        return await self.inner.spawn([sys.executable, "-c", DROPPING_GROUP, parsed[0]], env, log_path)


async def test_a_room_whose_groups_keep_going_away_fails_after_a_few(sockets: Path) -> None:
    inner = DroppingGroups()
    spawner = GroupSpawner(inner, 2, socket_dir=sockets)
    try:
        with pytest.raises(OSError, match="went away"):
            await asyncio.wait_for(spawner.spawn(*room(f"a{os.getpid()}"), None), 10)
        assert inner.started == ASSIGN_ATTEMPTS
    finally:
        kill_all(spawner.group_pids)
        await spawner.close()
