"""The caps guard in cgroup mode reads the cgroup its relay is actually in, whoever made it: the
local spawner's group or, under Kubernetes, the container's, whose limits the pod spec sets. The
layouts a pod shows from inside are built as files (a /proc/self and a cgroupfs tree in
tmp_path); one real v1 cgroup checks the same against the kernel; real `relay serve` processes
check the limits a relay sets on itself."""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import uvloop

from loadtest.controlplane import free_port
from relay.agent import caps, cgroupfs
from relay.agent.agones import ENV_PORT
from relay.agent.launch import ENV_ROOM_KEY
from relay.agent.tiers import NANO
from relay.host.spawner import relay_environment
from relay.protocol.keys import generate_room_key
from relay.server import pacing
from tests.control.helpers import REAL_RELAY, wait_for
from tests.server.helpers import passes

MIB = 1 << 20
POD = "/kubepods/burstable/pod7c1e/3f2a9b"  # a container's cgroup without a namespace of its own


class RelayStub:
    """The things the guard steers."""

    def __init__(self) -> None:
        self.accepting_joins = True
        self.shed_optional = False
        self.quiet = False
        self.closed: list[object] = []
        self.budgets: list[float] = []  # each pace_within's

    def pace_within(self, budget: float) -> None:
        self.budgets.append(budget)

    async def close(self, reason: object, text: str = "") -> None:
        self.closed.append(reason)


def write(directory: Path, files: dict[str, str]) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (directory / name).write_text(text)


def v2_files(current: int, inactive: int, memory_max: str, cpu_max: str) -> dict[str, str]:
    return {
        "cgroup.controllers": "cpuset cpu io memory hugetlb pids\n",
        "memory.current": f"{current}\n",
        "memory.stat": f"anon {current - inactive}\nfile {inactive}\ninactive_file {inactive}\n",
        "memory.max": f"{memory_max}\n",
        "cpu.max": f"{cpu_max}\n",
        "pids.max": "max\n",
    }


def fake_proc(tmp_path: Path, cgroup: str, mounts: list[tuple[str, str, str, str]]) -> Path:
    """A /proc/<pid> with `cgroup` as its /proc/self/cgroup and `mounts` ((root, point, fstype,
    super options)) in both mountinfo (which the guard reads) and mounts (which it read before)."""
    proc = tmp_path / "proc"
    info = "".join(
        f"{30 + n} 25 0:{26 + n} {root} {point} rw,nosuid,nodev,noexec,relatime - {fstype} cgroup {options}\n"
        for n, (root, point, fstype, options) in enumerate(mounts)
    )
    legacy = "".join(f"cgroup {point} {fstype} {options} 0 0\n" for _, point, fstype, options in mounts)
    write(proc, {"cgroup": cgroup, "mountinfo": info, "mounts": legacy})
    return proc


def pod_layout(tmp_path: Path, layout: str) -> Path:
    """A relay container as the kernel shows it from inside, 40 MiB in use of which 10 MiB is
    inactive page cache, limits 64Mi and 125m (12500 us per 100 ms: Kubernetes' period)."""
    fs = tmp_path / "sys/fs/cgroup"
    if layout.startswith("v2"):
        path = "/" if layout == "v2 namespaced" else POD
        write(fs, v2_files(40 * MIB, 10 * MIB, str(64 * MIB), "12500 100000"))
        return fake_proc(tmp_path, f"0::{path}\n", [(path, str(fs), "cgroup2", "rw")])
    path = "/" if layout == "v1 namespaced" else POD
    memory = {
        "memory.usage_in_bytes": f"{40 * MIB}\n",
        "memory.stat": f"cache {12 * MIB}\ninactive_file 0\ntotal_inactive_file {10 * MIB}\n",
        "memory.limit_in_bytes": f"{64 * MIB}\n",
    }
    write(fs / "memory", memory)
    write(fs / "cpu,cpuacct", {"cpu.cfs_quota_us": "12500\n", "cpu.cfs_period_us": "100000\n"})
    write(fs / "pids", {"pids.max": "max\n"})
    mounts = [
        (path, str(fs / "cpu,cpuacct"), "cgroup", "rw,cpu,cpuacct"),
        (path, str(fs / "memory"), "cgroup", "rw,memory"),
        (path, str(fs / "pids"), "cgroup", "rw,pids"),
    ]
    cgroup = f"11:memory:{path}\n5:cpu,cpuacct:{path}\n3:pids:{path}\n1:name=systemd:{path}\n0::{path}\n"
    return fake_proc(tmp_path, cgroup, mounts)


LAYOUTS = ["v2 namespaced", "v2 bind-mounted", "v1 namespaced", "v1 bind-mounted"]


async def test_a_guard_reads_memory_stat_only_near_a_line_it_acts_at(tmp_path: Path) -> None:
    """The working set (usage less inactive page cache) matters only near the lines the guard acts
    at; below the lowest (joins reopen at 85% of the cap) the usage, an upper bound, decides the
    same, and the look leaves memory.stat unread: in a relay among a hundred on a core that
    file was about a third of a look's CPU (docs/architecture.md)."""
    proc = pod_layout(tmp_path, "v1 namespaced")  # 40 MiB used, 10 MiB of it inactive cache
    stat = tmp_path / "sys/fs/cgroup/memory/memory.stat"
    read: list[Path] = []

    def reading(path: Path) -> str:
        read.append(path)
        return path.read_text()

    usage = tmp_path / "sys/fs/cgroup/memory/memory.usage_in_bytes"
    assert caps.working_set(usage, proc, reading, exact_from=41 * MIB) == 40 * MIB
    assert stat not in read
    assert caps.working_set(usage, proc, reading, exact_from=40 * MIB) == 30 * MIB
    assert stat in read
    relay = RelayStub()
    guard = caps.CapsGuard(relay, NANO, "cgroup", read_cpu=lambda: 0.0, cgroup=caps.OwnCgroup(proc))
    await guard.check(0.0)
    assert guard.memory == 40 * MIB  # under 85% of 64 MiB (54.4): the usage
    usage.write_text(f"{60 * MIB}\n")  # 50 MiB of working set: over the line, under the refusal
    await guard.check(1.0)
    assert guard.memory == 50 * MIB and relay.accepting_joins
    usage.write_text(f"{70 * MIB}\n")
    await guard.check(2.0)
    assert guard.memory == 60 * MIB and not relay.accepting_joins  # over 90% of 64 MiB


@pytest.mark.parametrize("layout", LAYOUTS)
def test_a_pods_relay_reads_its_containers_cgroup(tmp_path: Path, layout: str) -> None:
    """Found in review: only groups under the local spawner's "relay-caps" were recognised, so a
    relay in a pod (`--caps cgroup`) guarded its private memory, not the container's usage that
    the kernel OOM-kills on. With the container's own cgroup namespace (the usual case) the
    files are at the mount point; without, at the bind mount of the container's cgroup."""
    proc = pod_layout(tmp_path, layout)
    fs = tmp_path / "sys/fs/cgroup"
    usage = caps.cgroup_memory_file(proc)
    if layout.startswith("v2"):
        assert usage == fs / "memory.current"
    else:
        assert usage == fs / "memory/memory.usage_in_bytes"
    assert caps.memory_reader(proc)() == 30 * MIB  # usage less the inactive page cache
    cgroup = caps.OwnCgroup(proc)
    assert (cgroup.memory(), cgroup.memory_limit(), cgroup.cpu_limit()) == (30 * MIB, 64 * MIB, 0.125)
    assert cgroup.pids_limit() is None  # Kubernetes puts no pids limit on a container


def test_the_v2_root_is_no_cap_and_a_path_outside_the_namespace_is_not_followed(tmp_path: Path) -> None:
    """A process in v2's root cgroup (no memory.current there) or outside its cgroup namespace
    ("/.." paths) has no cgroup of its own to read: its private memory is guarded instead."""
    fs = tmp_path / "sys/fs/cgroup"
    write(fs, {"cgroup.controllers": "cpu memory pids\n"})
    write(tmp_path / "sys/fs/other", v2_files(MIB, 0, "max", "max 100000"))
    assert caps.cgroup_memory_file(fake_proc(tmp_path, "0::/\n", [("/", str(fs), "cgroup2", "rw")])) is None
    escaped = fake_proc(tmp_path, "0::/../other\n", [("/", str(fs), "cgroup2", "rw")])
    assert cgroupfs.own_cgroup_dir("memory", escaped) is None


async def test_joins_are_refused_at_90_percent_of_a_pod_limit_below_the_tier(tmp_path: Path) -> None:
    """The cap is where the kernel kills: a container limited below the tier (an operator's
    48Mi, or a pod resized in place) refuses joins at 90% of that limit, not of the tier's
    64 MiB, which the relay would never reach alive. Read at every full look: one in
    FULL_LOOK_EVERY (the looks between read only the usage and the CPU time)."""
    fs = tmp_path / "sys/fs/cgroup"
    write(fs, v2_files(50 * MIB, 0, "max", "max 100000"))
    proc = fake_proc(tmp_path, "0::/\n", [("/", str(fs), "cgroup2", "rw")])
    relay = RelayStub()
    guard = caps.CapsGuard(relay, NANO, "cgroup", read_cpu=lambda: 0.0, cgroup=caps.OwnCgroup(proc))
    await guard.check(0.0)
    assert relay.accepting_joins  # no limit of its own: the tier's 64 MiB (refusal at 57.6)
    (fs / "memory.max").write_text(f"{48 * MIB}\n")
    for n in range(1, caps.FULL_LOOK_EVERY):
        await guard.check(float(n))
        assert relay.accepting_joins  # not read yet: a look that reads the usage only
    await guard.check(float(caps.FULL_LOOK_EVERY))
    assert not relay.accepting_joins and guard.memory_cap() == 48 * MIB
    # /metrics shows the cap it compares with (RelayMemoryNearCap divides by it)
    exported = {f.name: f.samples[0].value for f in caps.CapsCollector(guard).collect()}
    assert exported["relay_tier_memory_bytes"] == 48 * MIB and exported["relay_memory_bytes"] == 50 * MIB
    (fs / "memory.max").write_text(f"{128 * MIB}\n")  # a limit above the tier's: the tier's
    assert guard.memory_cap() == NANO.memory_bytes
    for n in range(caps.FULL_LOOK_EVERY):
        await guard.check(caps.FULL_LOOK_EVERY + 1.0 + n)
    assert relay.accepting_joins  # 50 MiB < 85% of 64 MiB
    assert not relay.closed  # in cgroup mode the kernel acts over the cap, not the guard


async def test_the_cpu_budget_is_the_containers_quota_where_that_is_lower(tmp_path: Path) -> None:
    """Shedding starts at 90% of the budget: with a pod quota of 100m under the tier's 125m, a
    budget of the tier's would start shedding at 112.5m, which the kernel never lets it reach."""
    fs = tmp_path / "sys/fs/cgroup"
    write(fs, v2_files(MIB, 0, "max", "10000 100000"))
    proc = fake_proc(tmp_path, "0::/\n", [("/", str(fs), "cgroup2", "rw")])
    cpu = [0.0]
    relay = RelayStub()
    guard = caps.CapsGuard(relay, NANO, "cgroup", read_cpu=lambda: cpu[0], cgroup=caps.OwnCgroup(proc))
    assert guard.cpu_budget() == 0.1
    await guard.check(0.0)
    cpu[0] = 0.095  # 95m over one second
    await guard.check(1.0)
    assert relay.shed_optional
    assert relay.budgets == [0.1]  # the relay paces against the quota too
    exported = {f.name: f.samples[0].value for f in caps.CapsCollector(guard).collect()}
    assert exported["relay_tier_cpu_cores"] == 0.1
    (fs / "cpu.max").write_text("max 100000\n")  # no quota (a local relay's start-up boost)
    assert guard.cpu_budget() == NANO.cpu
    for n in range(2, caps.FULL_LOOK_EVERY + 1):  # the next full look reads the quota again
        await guard.check(float(n))
    # given again only when it changed: a look costs what it does at every look (about 90 us in
    # a relay among a hundred on a core, docs/architecture.md), and the relay keeps its budget
    assert relay.budgets == [0.1, NANO.cpu]


def test_a_calm_relay_is_looked_at_every_ten_seconds_and_every_second_once_it_paces(tmp_path: Path) -> None:
    """A relay in play far from its caps, whose pacer reads its CPU every 100 ms, is looked at
    every `calm_interval` (a look each second was 9% of the CPU of a hundred relays on a core);
    the joins it admits meanwhile read the memory themselves, as their session begins; and
    from the moment it paces, its CPU near its budget, the looks come every `interval`."""
    fs = tmp_path / "sys/fs/cgroup"
    write(fs, v2_files(5 * MIB, 0, str(64 * MIB), "12500 100000"))
    proc = fake_proc(tmp_path, "0::/\n", [("/", str(fs), "cgroup2", "rw")])

    async def play() -> None:
        loop = asyncio.get_running_loop()
        pacer = pacing.for_loop(loop)  # uvloop's: `relay serve`'s relays pace
        assert pacer is not None
        pacer.join("room", NANO.cpu, 0.008)
        relay = RelayStub()
        burn = [0.0]  # cores
        guard = caps.CapsGuard(
            relay,
            NANO,
            "cgroup",
            interval=0.05,
            calm_interval=10.0,
            read_cpu=lambda: burn[0] * time.monotonic(),
            cgroup=caps.OwnCgroup(proc),
        )

        guard.start()
        try:
            await passes(0.3)
            assert guard.looks == 1  # the first, at once; then calm
            (fs / "memory.current").write_text(f"{60 * MIB}\n")  # over 90% of 64 MiB
            guard.wake()  # a session began: its JOIN comes next
            assert not relay.accepting_joins and guard.looks == 1
            (fs / "memory.current").write_text(f"{5 * MIB}\n")
            guard.wake()
            assert relay.accepting_joins
            pacer.pacer.pace, pacer.pacer.next_sample = 0.001, math.inf  # the lane began the pace
            pacer.scheduled()
            pacer.passed(time.monotonic())
            burn[0] = 0.5  # half a core from now: over the budget
            await passes(0.3)
            assert 4 <= guard.looks <= 9 and relay.shed_optional
        finally:
            guard.stop()
            pacer.leave("room")
        assert pacer._pace_listeners == []  # the loop's pacer, which outlives it, lets it go

    uvloop.run(play())


async def test_a_relay_moved_into_its_group_after_its_guard_started_reads_the_group(tmp_path: Path) -> None:
    """The local spawner moves a relay into its group while the relay starts, which can be after
    its guard was made: the guard must not stay on the spawner's own cgroup (every relay's
    memory together, in v1's hierarchical usage)."""
    fs = tmp_path / "sys/fs/cgroup"
    write(fs / "control", v2_files(900 * MIB, 0, "max", "max 100000"))
    write(fs / "control/relay-caps/ns.room.1", v2_files(5 * MIB, 0, str(64 * MIB), "1250 10000"))
    proc = fake_proc(tmp_path, "0::/control\n", [("/", str(fs), "cgroup2", "rw")])
    relay = RelayStub()
    guard = caps.CapsGuard(relay, NANO, "cgroup", read_cpu=lambda: 0.0, cgroup=caps.OwnCgroup(proc))
    (proc / "cgroup").write_text("0::/control/relay-caps/ns.room.1\n")  # the spawner's move
    await guard.check(0.0)
    assert guard.memory == 5 * MIB and relay.accepting_joins


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


async def test_a_guard_keeps_its_files_open_and_still_sees_them_change(tmp_path: Path) -> None:
    """The guard reads its cgroup's files every second in every relay: it keeps them open and
    reads each with one pread (`caps.KeptFiles`), and what it reads is still the file's present
    text: usage, limits resized in place (a pod's in-place resize), and its own cgroup again
    after a move, whose old group's files it then lets go (no descriptor left per move). Every
    look here is a full one (membership and limits read too)."""
    fs = tmp_path / "sys/fs/cgroup"
    for n in (1, 2):
        write(fs / f"relay-caps/ns.room.{n}", v2_files(5 * MIB, 0, str(64 * MIB), "12500 100000"))
    proc = fake_proc(tmp_path, "0::/relay-caps/ns.room.1\n", [("/", str(fs), "cgroup2", "rw")])
    relay = RelayStub()
    own = caps.OwnCgroup(proc)
    guard = caps.CapsGuard(relay, NANO, "cgroup", read_cpu=lambda: 0.0, cgroup=own, full_look_every=1)
    await guard.check(0.0)
    held = open_fds()
    assert held > 0 and (guard.memory, guard.memory_cap(), guard.cpu_budget()) == (5 * MIB, 64 * MIB, 0.125)
    group = fs / "relay-caps/ns.room.1"
    (group / "memory.current").write_text(f"{40 * MIB}\n")  # rewritten in place, as the kernel's
    (group / "memory.max").write_text(f"{32 * MIB}\n")
    (group / "cpu.max").write_text("6250 100000\n")
    await guard.check(1.0)
    assert (guard.memory, guard.memory_cap(), guard.cpu_budget()) == (40 * MIB, 32 * MIB, 0.0625)
    assert not relay.accepting_joins  # 40 MiB is over 90% of the resized 32 MiB
    assert open_fds() == held + 1  # the same files, not opened again; and memory.stat, read
    # only now that the usage is near a line the guard acts at (`caps.working_set`)
    for n in (2, 1, 2, 1, 2):
        (proc / "cgroup").write_text(f"0::/relay-caps/ns.room.{n}\n")
        await guard.check(2.0 + n)
    assert guard.cgroup is not None
    assert guard.cgroup.memory_usage == fs / "relay-caps/ns.room.2/memory.current"
    assert guard.memory == 5 * MIB and open_fds() == held
    guard.cgroup.files.close()
    assert open_fds() < held


# ---- a real cgroup ------------------------------------------------------------------------------


@contextlib.contextmanager
def v1_cgroup(name: str) -> Iterator[dict[str, Path]]:
    """A v1 memory and cpu cgroup of this test's own, under the test process's, named as no
    relay group is; removed at the end. Skips where this host has no writable v1 hierarchies."""
    paths = cgroupfs.own_cgroups(Path("/proc/self/cgroup").read_text())[1]
    points = cgroupfs.mounts(Path("/proc/self/mounts").read_text())[1]
    own = {c: points[c] / paths[c].lstrip("/") for c in ("memory", "cpu") if c in paths and c in points}
    if len(own) != 2 or not all(os.access(directory, os.W_OK) for directory in own.values()):
        pytest.skip("no writable cgroup v1 memory and cpu hierarchies on this host")
    dirs = {c: directory / name for c, directory in own.items()}
    made: list[Path] = []
    try:
        for directory in dirs.values():
            directory.mkdir()
            made.append(directory)
        yield dirs
    finally:
        for directory in made:
            with contextlib.suppress(OSError):
                (directory / "memory.force_empty").write_text("0")
            directory.rmdir()


GUARDED = """
import asyncio, sys
from relay.agent import caps
from relay.agent.tiers import NANO

class Room:
    accepting_joins, shed_optional, quiet = True, False, False

    def pace_within(self, budget):
        pass

    async def close(self, reason, text=""):
        pass

loop = asyncio.new_event_loop()
cpu = [0.0]
sys.stdin.readline()  # moved into its cgroup meanwhile: what it touches from here is charged there
held = b"x" * (30 << 20)
print("held", flush=True)
sys.stdin.readline()  # its limit is set meanwhile
guard = caps.CapsGuard(Room(), NANO, "cgroup", read_cpu=lambda: cpu[0])
loop.run_until_complete(guard.check(0.0))
cpu[0] = 0.095  # 95m over one second
loop.run_until_complete(guard.check(1.0))
print(guard.relay.accepting_joins, guard.relay.shed_optional, guard.memory, flush=True)
sys.stdin.readline()
"""


def test_a_guard_in_a_cgroup_limited_below_the_tier_degrades_at_the_cgroups_limits() -> None:
    """What a relay in a pod on a v1 node (no cgroup namespace) meets, on the real kernel: a
    cgroup named by someone else (a pod limited below the tier: 100m, and 2 MiB over the 31 MiB
    or so in use), the process moved in, its guard made as `relay serve` makes it. The usage is
    over 90% of the limit: joins are refused (the private memory the guard read before, about
    46 MiB with the interpreter's, was under 90% of the tier's 64 MiB); 95m is over 90% of
    100m: UDP fan-out is shed."""
    with v1_cgroup(f"pod-test-{os.getpid()}") as dirs:
        (dirs["cpu"] / "cpu.cfs_period_us").write_text("100000")
        (dirs["cpu"] / "cpu.cfs_quota_us").write_text("10000")
        child = subprocess.Popen(
            [sys.executable, "-c", GUARDED], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        assert child.stdin is not None and child.stdout is not None
        try:
            for directory in dirs.values():
                (directory / "cgroup.procs").write_text(str(child.pid))
            child.stdin.write("go\n")
            child.stdin.flush()
            assert child.stdout.readline().strip() == "held"
            limit = int((dirs["memory"] / "memory.usage_in_bytes").read_text()) + 2 * MIB
            (dirs["memory"] / "memory.limit_in_bytes").write_text(str(limit))
            child.stdin.write("check\n")
            child.stdin.flush()
            accepting, shedding, memory = child.stdout.readline().split()
            assert (accepting, shedding) == ("False", "True"), (memory, limit)
            assert 30 * MIB <= int(memory) < limit  # the cgroup's working set
            proc = Path(f"/proc/{child.pid}")
            assert caps.cgroup_memory_file(proc) == dirs["memory"] / "memory.usage_in_bytes"
            cgroup = caps.OwnCgroup(proc)
            assert (cgroup.memory_limit(), cgroup.cpu_limit()) == (limit, 0.1)
        finally:
            child.kill()
            child.wait()


# ---- limits a relay sets on itself --------------------------------------------------------------


def open_files_limit(pid: int) -> tuple[int, int]:
    found = re.search(r"^Max open files\s+(\d+)\s+(\d+)", Path(f"/proc/{pid}/limits").read_text(), re.M)
    assert found is not None
    return int(found.group(1)), int(found.group(2))


@contextlib.asynccontextmanager
async def relay_serve(
    log: Path, *args: str, env: dict[str, str]
) -> AsyncIterator[asyncio.subprocess.Process]:
    """A real `relay serve` with stderr in `log`; SIGKILLed at the end."""
    with log.open("wb") as out:
        process = await asyncio.create_subprocess_exec(
            *REAL_RELAY, *args, env=relay_environment(env), stdout=out, stderr=out
        )
    try:
        yield process
    finally:
        if process.returncode is None:
            process.send_signal(signal.SIGKILL)
        await asyncio.wait_for(process.wait(), 10)


needs_headroom = pytest.mark.skipif(
    open_files_limit(os.getpid())[1] <= NANO.nofile,
    reason="this process's hard open-files limit is already at or under the tier's",
)
CGROUP_NANO = ("--tier", NANO.name, "--caps", "cgroup")


@pytest.mark.slow
@needs_headroom
async def test_a_relay_capped_by_a_cgroup_still_limits_its_open_files(tmp_path: Path) -> None:
    """Found in review: RLIMIT_NOFILE was set in soft mode only, but no cgroup counts open files
    (neither the local spawner's group nor a pod's limits): a relay in cgroup mode kept the
    limit it inherited (a container runtime's 1048576) instead of the tier's 1024."""
    log = tmp_path / "relay.log"
    args = ("--host", "127.0.0.1", "--port", str(free_port()), "--admin-port", "0", *CGROUP_NANO)
    async with relay_serve(log, *args, env={ENV_ROOM_KEY: generate_room_key()}) as process:
        await wait_for(lambda: "relay listening" in log.read_text(), timeout=30)
        assert open_files_limit(process.pid) == (NANO.nofile, NANO.nofile)


@pytest.mark.slow
@needs_headroom
async def test_a_relay_waiting_for_an_agones_allocation_limits_its_open_files(tmp_path: Path) -> None:
    """The Fleet's relays start without a room (`relay serve --tier realtime1.nano --caps
    cgroup`, deploy/k8s/fleet.yaml) and take one when allocated: the limit is set before that
    wait. Here no sidecar answers, so the relay is still retrying it when it is looked at."""
    log = tmp_path / "relay.log"
    args = ("--host", "127.0.0.1", "--port", str(free_port()), *CGROUP_NANO)
    async with relay_serve(log, *args, env={ENV_PORT: str(free_port())}) as process:
        await wait_for(lambda: "AGONES_SDK_HTTP_PORT right?" in log.read_text(), timeout=30)
        assert open_files_limit(process.pid) == (NANO.nofile, NANO.nofile)


def test_a_cgroup_holding_other_processes_is_not_the_relays_own() -> None:
    """Found in review: a relay not yet moved into its group (or left outside it by a control
    plane killed mid-move) sits in the control plane's cgroup, and read that cgroup's usage, every
    process's there, against the tier's 64 MiB: it refused every JOIN. A cgroup holding another
    process is not read; the relay reads its private memory until it is alone in its own."""
    with v1_cgroup(f"shared-test-{os.getpid()}") as dirs:
        # the relay writes 16 MiB once it is in the cgroup (cgroup v1 does not move what a
        # process was charged before it moved: a figure from before the move could be ~0)
        grow = (
            "import sys, time; sys.stdin.readline(); b = bytearray(b'1') * (16 << 20); "
            "print(1, flush=True); time.sleep(30)"
        )
        relay = subprocess.Popen([sys.executable, "-c", grow], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
        try:
            for pid in (relay.pid, other.pid):
                (dirs["memory"] / "cgroup.procs").write_text(str(pid))
            proc = Path(f"/proc/{relay.pid}")
            assert caps.cgroup_memory_file(proc) is None
            cgroup = caps.OwnCgroup(proc)
            assert cgroup.memory_usage is None  # the guard reads private memory
            assert not cgroup.refresh()  # still shared: still private memory
            other.kill()
            other.wait()
            usage = dirs["memory"] / "memory.usage_in_bytes"
            assert caps.cgroup_memory_file(proc) == usage
            # Found measuring: the relay moved in was never looked at again, its own cgroup
            # unchanged, and read its private memory for good. Alone now, it reads the cgroup.
            assert cgroup.refresh()
            assert cgroup.memory_usage == usage
            assert relay.stdin is not None and relay.stdout is not None
            relay.stdin.write(b"\n")
            relay.stdin.flush()
            assert relay.stdout.readline() == b"1\n"
            assert cgroup.memory() >= 16 << 20 and not cgroup.refresh()  # the cgroup's figure
        finally:
            for child in (relay, other):
                child.kill()
                child.wait()
