"""Keeping a relay inside its tier from the inside, with or without the kernel's help.

Hard caps (cgroups, relay/host/cgroups.py) stop a relay from taking more than its share, but
the kernel's answers are blunt: an OOM kill ends the room, throttling stalls everyone in it.
`CapsGuard` degrades first, looking every second while anyone is in the room, on a pass the
relay has anyway (an empty room grows nothing: it looks every minute, and at once when a
session begins; a relay far from its caps whose pacer would say when its CPU came near looks
every ten seconds, reading its memory as each session begins):
- memory at `tier.join_refusal_ratio` (90%) of the cap: new JOINs get ERROR overloaded, members
  already in keep playing; joins open again below 85%.
- CPU at 90% of the budget: `shed_optional`, so fan-out to UDP members (unreliable by contract)
  is dropped first while WebSocket members still get everything; off again below 70%.
In cgroup mode the guard reads the cgroup the relay is in (`OwnCgroup`: the local spawner's
group, or a Kubernetes container's), and where that cgroup's memory limit or CPU quota is below
the tier's, the cap or budget is the cgroup's: the kernel acts at its own figures, not the tier's.
Open files are no cgroup's to cap: every mode sets RLIMIT_NOFILE (`apply_limits`).

Where no cgroup is available the caps are soft (`mode="soft"`): setrlimit bounds open files and
address space, and the guard itself enforces the memory cap on the process's private memory
(the room closes with CLOSING "cap exceeded"). CPU then has no hard cap, only the shedding above.
A warning says so.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import os
import resource
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Protocol

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from relay.agent.cgroupfs import own_cgroup_dir
from relay.agent.tiers import Tier, get_tier
from relay.protocol.constants import CloseReason
from relay.server import pacing, rides

log = logging.getLogger("relay.agent.caps")

JOINS_REOPEN_RATIO = 0.85
SHED_ON = 0.9
SHED_OFF = 0.7


def cpu_seconds() -> float:
    """The process's CPU time, every thread's, user and system: getrusage's figure in one call
    that makes no struct (the guard reads it at every look)."""
    return time.process_time()


def rss_bytes(proc: Path = Path("/proc/self"), read: Callable[[Path], str] = Path.read_text) -> int:
    try:
        return int(read(proc / "statm").split()[1]) * resource.getpagesize()
    except (OSError, ValueError, IndexError):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


_PRIVATE_FIELDS = ("Private_Clean:", "Private_Dirty:", "Swap:")


def private_bytes(proc: Path = Path("/proc/self")) -> int:
    """The memory only this process holds, resident or swapped out: what its room costs where no
    cgroup counts it. RSS also counts the pages it shares: the interpreter's and libraries' code
    (26 MiB of a plain subprocess relay's 58 MiB idle RSS, which read as over the nano tier's
    join-refusal line: every JOIN refused) and, forked from the zygote template, the template's
    heap. A read walks the page tables (about 0.5 ms): the guard reads once a second at most."""
    try:
        lines = (proc / "smaps_rollup").read_text().splitlines()
        return 1024 * sum(int(line.split()[1]) for line in lines if line.startswith(_PRIVATE_FIELDS))
    except (OSError, ValueError, IndexError):  # no smaps_rollup before Linux 4.14
        return rss_bytes(proc)


def cgroup_memory_file(proc: Path = Path("/proc/self")) -> Path | None:
    """The memory usage file of the cgroup this process is in (`own_cgroup_dir`), else None: the
    relay's own group under the local spawner, its container's under Kubernetes. Only searching
    for the local spawner's groups (named under "relay-caps") left a pod's relay guarding its
    private memory, not the container's usage, which is what the kernel OOM-kills on.

    The cgroup's figure is what the kernel compares with the cap (it excludes pages shared with
    a zygote parent that RSS would count, and includes kernel memory RSS would not). The root
    of a v2 hierarchy has no memory.current: a process there is in no cgroup that caps it.

    A cgroup that holds other processes is not the relay's own: a relay the local spawner has
    not moved into its group yet (or whose control plane was killed before it could) sits in
    the control plane's, whose usage is every process's there; judged against the tier's cap,
    that refused every JOIN. Such a relay reads its private memory until it is moved."""
    usage = _memory_usage_file(proc)
    return None if usage is None or _shared(usage.parent, proc) else usage


def _memory_usage_file(proc: Path) -> Path | None:
    """The usage file of the memory cgroup `proc` is in, whoever else is in it."""
    found = own_cgroup_dir("memory", proc)
    if found is None:
        return None
    version, directory = found
    usage = directory / ("memory.usage_in_bytes" if version == 1 else "memory.current")
    return usage if usage.is_file() else None


def _shared(directory: Path, proc: Path, read: Callable[[Path], str] = Path.read_text) -> bool:
    """Whether the cgroup at `directory` holds a process other than `proc`'s (its cgroup.procs,
    read with `read`; one that cannot be read says nothing)."""
    try:
        pids = read(directory / "cgroup.procs").split()
        own = proc.resolve().name
    except OSError:
        return False
    return any(pid != own for pid in pids) if own.isdigit() else False


def inactive_file_bytes(memory_stat: str) -> int:
    """The page cache the kernel reclaims first (v1's hierarchical total where there is one)."""
    fields = dict(line.split(" ", 1) for line in memory_stat.splitlines() if " " in line)
    return int(fields.get("total_inactive_file", fields.get("inactive_file", "0")))


def memory_reader(proc: Path = Path("/proc/self")) -> Callable[[], int]:
    """The working set the guard compares with the cap: the cgroup's usage less its inactive
    page cache, as kubelet counts it. Usage alone counts the cache of every file the relay wrote
    (its log): 80 MiB of log read as a full nano cap and refused joins for good, though the
    kernel reclaims that cache long before it would kill the relay. Without a cgroup: the
    process's private memory (`private_bytes`)."""
    path = cgroup_memory_file(proc)
    return lambda: working_set(path, proc)


def working_set(
    usage_file: Path | None,
    proc: Path = Path("/proc/self"),
    read: Callable[[Path], str] = Path.read_text,
    exact_from: int = 0,
) -> int:
    """`memory_reader`'s figure for the cgroup whose usage file is `usage_file` (None: none),
    its files read with `read`. Where the usage is under `exact_from`, the usage itself: the
    working set is at most that, so nothing compared with a line above it changes, and
    memory.stat (forty lines for the kernel to format and us to parse) goes unread."""
    if usage_file is None:
        return private_bytes(proc)
    try:
        usage = int(read(usage_file))
    except (OSError, ValueError):
        return private_bytes(proc)
    if usage < exact_from:
        return usage
    try:
        return max(0, usage - inactive_file_bytes(read(usage_file.with_name("memory.stat"))))
    except (OSError, ValueError):
        return usage


UNLIMITED = 1 << 62
"""At or above this a v1 memory limit means none (v1 writes "no limit" as 9223372036854771712)."""


def _numbers(path: Path, read: Callable[[Path], str] = Path.read_text) -> list[int | None]:
    """The words of a one-line cgroup file as numbers, "max" (v2's "no limit") as None; [] when
    it cannot be read."""
    try:
        return [None if word == "max" else int(word) for word in read(path).split()]
    except (OSError, ValueError):
        return []


def _number(path: Path, read: Callable[[Path], str] = Path.read_text) -> int | None:
    """The first of `_numbers`: None for "max", or when it cannot be read."""
    return next(iter(_numbers(path, read)), None)


class KeptFiles:
    """Small kernel files (procfs, cgroupfs) kept open, each read from its start with one pread.
    Reading one by its path cost an open, two fstats, an ioctl, two lseeks, two reads and a
    close: about 17 us against 1.3 us on the development machine, and the guard reads six every
    second in every relay process: on a host of a hundred relays on a core, about 1% of it
    (docs/architecture.md). Each file is opened at its first read, in the process that reads it
    (an open /proc/self/... is that process's for good)."""

    READ_MAX = 1 << 16

    def __init__(self) -> None:
        self._fds: dict[Path, int] = {}

    def read(self, path: Path) -> str:
        """The file's text now; OSError (the file closed, opened anew next time) as a path's read."""
        fd = self._fds.get(path)
        try:
            if fd is None:
                fd = self._fds[path] = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            return os.pread(fd, self.READ_MAX, 0).decode()
        except (OSError, UnicodeDecodeError) as exc:
            self._close(path)
            raise exc if isinstance(exc, OSError) else OSError(f"{path}: not text") from exc

    def _close(self, path: Path) -> None:
        fd = self._fds.pop(path, None)
        if fd is not None:
            with contextlib.suppress(OSError):
                os.close(fd)

    def close(self, keep: Path | None = None) -> None:
        """Closes every file but `keep`."""
        for path in list(self._fds):
            if path != keep:
                self._close(path)


class OwnCgroup:
    """The cgroup this process is in and the limits it puts on it, as the guard reads them in
    cgroup mode. Under the local spawner they are the tier's; under Kubernetes they are the
    container's `resources.limits` (the Fleet's: 125m and 64Mi), which an operator may set below
    the tier, and then the kernel throttles and kills at those. Read at every look: a pod's
    limits can be resized in place, and a relay's CPU quota starts once its start-up boost ends."""

    def __init__(self, proc: Path = Path("/proc/self")) -> None:
        self.proc = proc
        self.files = KeptFiles()
        self.memory_usage: Path | None = None
        """The usage file (memory.current, v1's memory.usage_in_bytes); None: none found."""
        self._shared_usage: Path | None = None  # the usage file of a memory cgroup others are in too
        self._cpu: tuple[int, Path] | None = None
        self._pids: tuple[int, Path] | None = None
        self._seen: str | None = None
        self.refresh()

    def refresh(self) -> bool:
        """Finds the cgroup anew when the process has moved since the last look (True then): the
        local spawner moves a relay into its group while the relay starts, which can be after
        its guard was made, and the guard must not keep reading the spawner's own cgroup."""
        try:
            seen: str | None = self.files.read(self.proc / "cgroup")
        except OSError:
            seen = None
        if seen == self._seen:
            return self._alone()
        self._seen = seen
        self.files.close(keep=self.proc / "cgroup")  # the files of the group it has left
        usage = _memory_usage_file(self.proc)
        self._shared_usage = usage if usage is not None and _shared(usage.parent, self.proc) else None
        self.memory_usage = None if self._shared_usage is not None else usage
        self._cpu = own_cgroup_dir("cpu", self.proc)
        self._pids = own_cgroup_dir("pids", self.proc)
        return True

    def _alone(self) -> bool:
        """Whether the memory cgroup that held other processes at the last look is the relay's
        own now (True: read from here on). The spawner moves a relay into a group of its name,
        which can still hold a process of the room's last incarnation on its way out; judged by
        the move alone, the relay read its private memory (a page-table walk a look) for good."""
        shared = self._shared_usage
        if shared is None or _shared(shared.parent, self.proc, self.files.read):
            return False
        self.files.close(keep=self.proc / "cgroup")
        self.memory_usage, self._shared_usage = shared, None
        return True

    def memory(self, exact_from: int = 0) -> int:
        """The working set (`memory_reader`); under `exact_from`, perhaps the usage (`working_set`)."""
        return working_set(self.memory_usage, self.proc, self.files.read, exact_from)

    def memory_limit(self) -> int | None:
        """memory.max (v1: memory.limit_in_bytes) in bytes; None where no limit is set."""
        usage = self.memory_usage
        if usage is None:
            return None
        name = "memory.max" if usage.name == "memory.current" else "memory.limit_in_bytes"
        limit = _number(usage.with_name(name), self.files.read)
        return limit if limit is not None and limit < UNLIMITED else None

    def cpu_limit(self) -> float | None:
        """The CFS quota in cores, cpu.max (v1: cpu.cfs_quota_us / cpu.cfs_period_us); None where
        there is none (v2 "max", v1 -1)."""
        if self._cpu is None:
            return None
        version, directory = self._cpu
        read = self.files.read
        if version == 2:
            quota, period = [*_numbers(directory / "cpu.max", read), None, None][:2]
        else:
            quota = _number(directory / "cpu.cfs_quota_us", read)
            period = _number(directory / "cpu.cfs_period_us", read)
        if quota is None or period is None or quota <= 0 or period <= 0:
            return None
        return quota / period

    def pids_limit(self) -> int | None:
        """pids.max; None where no pids cgroup limits this one (it says nothing of an ancestor's,
        such as a pod's podPidsLimit, which a container's cgroup namespace hides)."""
        if self._pids is None:
            return None
        return _number(self._pids[1] / "pids.max", self.files.read)

    def describe(self) -> str:
        """One line for the log: where the guard reads, and what the kernel caps here."""
        return (
            f"memory from {self.memory_usage or 'private memory (no memory cgroup found)'}"
            f" (limit {self.memory_limit() or 'none'}), CPU quota {self.cpu_limit() or 'none'} cores,"
            f" pids.max {self.pids_limit() or 'none'}"
        )


M_ARENA_MAX = -8
"""glibc's mallopt() parameter: how many malloc arenas threads may have."""


def one_malloc_arena() -> None:
    """Every thread allocates from the main malloc arena (glibc; elsewhere nothing happens). A
    thread's own arena reserves 64 MiB of address space: the resolver threads of a relay whose
    control URL names a host took three, 192 MiB of the 256 MiB of room RLIMIT_AS leaves, and the
    relay would have met MemoryError far below its memory cap. They allocate little and rarely,
    so sharing one arena costs nothing measurable."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None).mallopt(M_ARENA_MAX, 1)


def apply_limits(tier: Tier, mode: str) -> None:
    """The limits a relay keeping to `tier` puts on itself, before any thread starts: open files
    in every mode (`limit_open_files`), and in soft mode the rest (`apply_soft_limits`)."""
    if mode == "soft":
        apply_soft_limits(tier)
    else:
        limit_open_files(tier)


def limit_open_files(tier: Tier) -> None:
    """RLIMIT_NOFILE at the tier's `nofile` (or the hard limit, if lower). No cgroup controller
    counts open files: neither the local spawner's group nor a pod's resources.limits cap them,
    so a relay in cgroup mode sets this as a soft-capped one does (else it keeps what it
    inherited: a container runtime's 1048576, or the control plane's limit)."""
    nofile_hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    limit = tier.nofile if nofile_hard == resource.RLIM_INFINITY else min(tier.nofile, nofile_hard)
    resource.setrlimit(resource.RLIMIT_NOFILE, (limit, limit))


def apply_soft_limits(tier: Tier) -> None:
    """setrlimit where the kernel cannot cap the group: open files, and address space as a
    backstop (current size plus four times the cap: Python reserves far more address space than
    it touches, so the guard's check of private memory is the real memory cap). Before any
    thread starts: threads then share one malloc arena (`one_malloc_arena`)."""
    one_malloc_arena()
    limit_open_files(tier)
    with contextlib.suppress(OSError, ValueError, IndexError):
        with open("/proc/self/statm") as f:
            vm = int(f.read().split()[0]) * resource.getpagesize()
        cap = vm + 4 * tier.memory_bytes
        _, as_hard = resource.getrlimit(resource.RLIMIT_AS)
        if as_hard == resource.RLIM_INFINITY:
            resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
        elif cap < as_hard:
            resource.setrlimit(resource.RLIMIT_AS, (cap, as_hard))


class Guarded(Protocol):
    """What the guard steers (relay/server/app.py's Relay)."""

    accepting_joins: bool
    shed_optional: bool

    @property
    def quiet(self) -> bool: ...

    def pace_within(self, budget: float) -> None:
        """The CPU budget, given at the first look and whenever it changes: kept till then."""

    async def close(self, reason: CloseReason, text: str = "") -> None: ...


class SessionsHeard(Guarded, Protocol):
    """A relay that says when a session begins (an empty room's guard then looks at once)."""

    def add_session_listener(self, callback: Callable[[], None]) -> None: ...


CALM_INTERVAL = 10.0
"""Seconds between the looks of a relay in play whose CPU and memory are far from its caps, and
whose pacer would say at once if CPU came near (`CapsGuard._choose_interval`): the looks each
second were 9% of the CPU of a hundred such relays on a core (docs/architecture.md)."""

FULL_LOOK_EVERY = 10
"""Of the guard's looks, one in this many also reads what seldom changes: which cgroup the relay
is in (/proc/self/cgroup) and that cgroup's limits. The others read the memory usage and the
CPU time. A look that read all of it cost about 200 us of CPU in a relay among a hundred on a
core (the cgroup's line alone about 70 us): 2% of that core for the looks
(docs/architecture.md). The first look reads all, so a relay's first members meet its caps."""


class CapsGuard:
    """Watches memory and CPU against the tier; `mode` is "cgroup" (kernel enforces) or "soft".
    In cgroup mode it reads `cgroup` (by default the one this process is in): its membership
    and limits every `full_look_every` looks (FULL_LOOK_EVERY) and at every calm one, its usage
    at every look.

    While anyone is in the room, a look comes at the end of the relay's first pass `interval`
    seconds after the last (relay/server/rides.py): no wake-up of its own while the room plays
    or its members PING, its own timer only where no pass came (members gone silent). Where
    nothing it acts on is near and the loop's pacer would say when CPU came near, the looks are
    `calm_interval` apart (`_choose_interval`)."""

    def __init__(
        self,
        relay: Guarded,
        tier: Tier,
        mode: str = "cgroup",
        interval: float = 1.0,
        quiet_interval: float = 60.0,
        calm_interval: float = CALM_INTERVAL,
        read_memory: Callable[[], int] | None = None,
        read_cpu: Callable[[], float] = cpu_seconds,
        cgroup: OwnCgroup | None = None,
        full_look_every: int = FULL_LOOK_EVERY,
    ) -> None:
        self.relay = relay
        self.tier = tier
        self.mode = mode
        self.interval = interval
        self.quiet_interval = quiet_interval
        self.calm_interval = calm_interval
        self.cgroup = cgroup if cgroup is not None or mode != "cgroup" else OwnCgroup()
        self.read_memory = read_memory or (self.cgroup.memory if self.cgroup else private_bytes)
        # where memory is read exactly only from the lowest line the guard acts at; None: a reader
        # was given, or there is no cgroup
        self._memory_cgroup = self.cgroup if read_memory is None else None
        self.read_cpu = read_cpu
        self.full_look_every = full_look_every
        self.looks = 0
        self._caps = (tier.memory_bytes, tier.cpu)  # (memory_cap(), cpu_budget()) at the last full look
        self.memory = 0
        self.cpu_share = 0.0
        self.exceeded = False
        self._last: tuple[float, float] | None = None
        self._paced_within = -1.0  # the budget the relay was last given (`pace_within`)
        self._described = False
        self._task: asyncio.Task[None] | None = None
        self._woken = asyncio.Event()
        self._periodic = rides.Periodic(interval, self._look_on_pass)
        self._pacer: pacing.LoopPacer | None = None  # the loop's, where it paces (`start`)
        self._calm = False  # the looks come every `calm_interval` (`_choose_interval`)
        self._handed_back = asyncio.Event()  # the looks on passes are over (`_look_on_pass`)
        self._over_cap = False

    def wake(self) -> None:
        """A session began (`Relay.add_session_listener`): an empty room's guard looks now, not
        at the end of its quiet interval, so that its first members meet fresh figures; and
        between calm looks the memory is read now, the session's JOIN coming next (joins are
        refused on the figure of the moment, not on one up to `calm_interval` old)."""
        if self._calm:
            self._gate_joins(self._memory_now())
        self._woken.set()

    def hurry(self) -> None:
        """The relay began to pace (relay/server/pacing.py): its CPU is near its budget, so the
        looks come every `interval` from now on, the first a whole interval's share from now."""
        if self._periodic.running:
            now = time.monotonic()
            self._last = (now, self.read_cpu())
            self._calm = False
            self._periodic.every(self.interval, now)

    def _choose_interval(self, now: float) -> None:
        """Every `calm_interval` while nothing the guard acts on is near and it would know at
        once if CPU came near: in cgroup mode with a memory cgroup (the kernel caps memory, and
        each session reads it for its JOIN: `wake`), the relay not pacing under a pacer with a
        budget (which reads its CPU every 100 ms and begins to pace at PACE_ON, 55%, of it,
        under SHED_ON's 90%: `hurry`), not shedding, not refusing joins. Otherwise every
        `interval`."""
        pacer, relay, cgroup = self._pacer, self.relay, self._memory_cgroup
        self._calm = calm = (
            self.mode == "cgroup"
            and cgroup is not None
            and cgroup.memory_usage is not None
            and pacer is not None
            and pacer.pacer.budget > 0
            and not pacer.pacing
            and not relay.shed_optional
            and relay.accepting_joins
        )
        self._periodic.every(self.calm_interval if calm else self.interval, now)  # or from its start

    @property
    def fallbacks(self) -> int:
        """Looks in a room with members that the guard's own timer woke for (no pass came)."""
        return self._periodic.fallbacks

    def start(self) -> None:
        if self.mode == "soft":
            log.warning("caps are soft: no writable cgroup; enforcing %s in-process", self.tier.name)
        loop = asyncio.get_running_loop()
        self._pacer = pacing.for_loop(loop)
        if self._pacer is not None:
            self._pacer.add_pace_listener(self.hurry)
        self._task = loop.create_task(self._run())

    def stop(self) -> None:
        self._periodic.stop()
        if self._pacer is not None:  # the loop's pacer outlives the guard
            self._pacer.remove_pace_listener(self.hurry)
            self._pacer = None
        if self._task is not None:
            self._task.cancel()

    async def _run(self) -> None:
        """The looks of an empty room (nothing grows there, and each look is a wake-up): every
        `quiet_interval`, and at once when a session begins. While anyone is in the room the
        looks ride on its passes (`_look_on_pass`) until it is empty again."""
        while True:
            self._woken.clear()
            if self.relay.quiet:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._woken.wait(), self.quiet_interval)
            now = time.monotonic()
            await self.check(now)
            if not self.relay.quiet:
                self._handed_back.clear()
                self._choose_interval(now)
                self._periodic.start()
                await self._handed_back.wait()
                if self._over_cap:
                    await self._close_over_cap()

    def _look_on_pass(self, now: float) -> None:
        """A look at the end of a pass: back to the task once the room is empty, or over its
        soft cap (closing it awaits)."""
        self._over_cap = self.look(now)
        if self._over_cap or self.relay.quiet:
            self._periodic.stop()
            self._handed_back.set()
        else:
            self._choose_interval(now)

    def memory_cap(self) -> int:
        """The tier's memory cap, or the cgroup's limit where that is lower: where the kernel
        kills, so that joins are refused at 90% of that."""
        limit = self.cgroup.memory_limit() if self.cgroup is not None else None
        return self.tier.memory_bytes if limit is None else min(limit, self.tier.memory_bytes)

    def cpu_budget(self) -> float:
        """The tier's CPU share, or the cgroup's quota where that is lower: shedding at 90% of a
        budget above the quota would never start, the kernel throttling first."""
        limit = self.cgroup.cpu_limit() if self.cgroup is not None else None
        return self.tier.cpu if limit is None else min(limit, self.tier.cpu)

    async def check(self, now: float) -> None:
        """A look (`look`), closing the room where it is over its soft cap."""
        if self.look(now):
            await self._close_over_cap()

    async def _close_over_cap(self) -> None:
        await self.relay.close(CloseReason.CAP_EXCEEDED, "memory cap exceeded")

    def look(self, now: float) -> bool:
        """Memory first (True: over the soft cap, the room must close), then CPU; a full look
        (one in `full_look_every`, and every one after a calm interval, so at least every ten
        seconds either way) first finds the cgroup and its limits anew."""
        cgroup = self.cgroup
        if self._calm or self.looks % self.full_look_every == 0:
            if cgroup is not None and (cgroup.refresh() or not self._described):
                self._described = True  # no memory cgroup in cgroup mode: who caps this relay?
                level = logging.INFO if cgroup.memory_usage is not None else logging.WARNING
                log.log(level, "caps: %s in its cgroup: %s", self.tier.name, cgroup.describe())
            self._caps = (self.memory_cap(), self.cpu_budget())
        self.looks += 1
        memory = self._memory_now()
        cap = self._caps[0]
        if self.mode == "soft" and memory > cap and not self.exceeded:
            self.exceeded = True
            log.error("memory %d bytes over the %s cap of %d: closing the room", memory, self.tier.name, cap)
            return True
        self._gate_joins(memory)
        self._check_cpu(now)
        return False

    def _memory_now(self) -> int:
        """The memory as the guard compares it (`read_memory`, exact only from the lowest line it
        acts at), kept as `memory`."""
        source = self._memory_cgroup
        if source is not None:
            lowest = min(JOINS_REOPEN_RATIO, self.tier.join_refusal_ratio)
            self.memory = memory = source.memory(int(self._caps[0] * lowest))
        else:
            self.memory = memory = self.read_memory()
        return memory

    def _gate_joins(self, memory: int) -> None:
        """Joins refused from `join_refusal_ratio` of the cap, open again under JOINS_REOPEN_RATIO."""
        relay, cap = self.relay, self._caps[0]
        if relay.accepting_joins and memory >= cap * self.tier.join_refusal_ratio:
            relay.accepting_joins = False
            log.warning("memory %d of %d bytes: refusing new joins", memory, cap)
        elif not relay.accepting_joins and memory < cap * JOINS_REOPEN_RATIO:
            relay.accepting_joins = True
            log.info("memory %d of %d bytes: accepting joins again", memory, cap)

    def _check_cpu(self, now: float) -> None:
        cpu = self.read_cpu()
        last, self._last = self._last, (now, cpu)
        if last is None or now <= last[0]:
            return
        self.cpu_share = share = (cpu - last[1]) / (now - last[0])
        budget = self._caps[1]
        relay = self.relay
        if budget != self._paced_within:  # the loop's pacer keeps it (relay/server/pacing.py)
            relay.pace_within(budget)
            self._paced_within = budget
        if not relay.shed_optional and share >= budget * SHED_ON:
            relay.shed_optional = True
            log.warning("CPU %.0f%%, budget %.0f%%: shedding UDP fan-out", share * 100, budget * 100)
        elif relay.shed_optional and share < budget * SHED_OFF:
            relay.shed_optional = False


class CapsCollector(Collector):
    """The relay's use against its caps, read at scrape time (deploy/grafana's CPU and memory
    panels, deploy/prometheus' alerts): what the guard itself compares, the caps included (a pod
    limited below its tier is near its cap at the pod's limit, not the tier's)."""

    def __init__(self, guard: CapsGuard) -> None:
        self.guard = guard

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        guard, tier = self.guard, self.guard.tier
        labels = ["tier"]
        for family, value in (
            (
                CounterMetricFamily("relay_cpu_seconds", "CPU time used by the relay", labels=labels),
                guard.read_cpu(),
            ),
            (
                GaugeMetricFamily("relay_memory_bytes", "Memory charged against the cap", labels=labels),
                guard.read_memory(),
            ),
            (
                GaugeMetricFamily(
                    "relay_tier_cpu_cores",
                    "The CPU cap: the tier's, or its cgroup's lower quota",
                    labels=labels,
                ),
                guard.cpu_budget(),
            ),
            (
                GaugeMetricFamily(
                    "relay_tier_memory_bytes",
                    "The memory cap: the tier's, or its cgroup's lower limit",
                    labels=labels,
                ),
                guard.memory_cap(),
            ),
            (
                GaugeMetricFamily("relay_shedding", "1 while UDP fan-out is shed for CPU", labels=labels),
                1.0 if guard.relay.shed_optional else 0.0,
            ),
        ):
            family.add_metric([tier.name], float(value))
            yield family


def guard_relay(
    relay: SessionsHeard, tier_name: str | None, mode: str, registry: CollectorRegistry | None = None
) -> CapsGuard | None:
    """Starts the guard for a relay that keeps to a tier (None: no tier, no guard), exported
    through `registry` (the relay's /metrics) when given."""
    if not tier_name:
        return None
    guard = CapsGuard(relay, get_tier(tier_name), mode)
    relay.add_session_listener(guard.wake)
    guard.start()
    if registry is not None:
        registry.register(CapsCollector(guard))
    return guard
