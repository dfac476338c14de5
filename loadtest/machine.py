"""The machine a run happened on, CPU pinning, and what /proc says about a process."""

from __future__ import annotations

import contextlib
import os
import platform
import time
from dataclasses import asdict, dataclass
from typing import Any

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")


def machine_info() -> dict[str, Any]:
    """CPU model, cores, kernel and memory: stated in every report."""
    model = platform.processor() or "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    mem_kb = 0
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    mem_kb = int(line.split()[1])
    except OSError:
        pass
    return {
        "cpu_model": model,
        "cores": os.cpu_count(),
        "kernel": platform.release(),
        "system": platform.system(),
        "python": platform.python_version(),
        "memory_mb": mem_kb // 1024,
        "hostname": platform.node(),
    }


def parse_cpus(spec: str | None) -> set[int] | None:
    """'0', '1-3', '0,2' -> a CPU set; None or '' means no pinning. CPUs beyond the machine fold back."""
    if not spec:
        return None
    cpus: set[int] = set()
    for part in spec.split(","):
        if "-" in part:
            lo, hi = part.split("-", 1)
            cpus.update(range(int(lo), int(hi) + 1))
        else:
            cpus.add(int(part))
    count = os.cpu_count() or 1
    return {c % count for c in cpus}


def pin(cpus: set[int] | None, pid: int = 0) -> None:
    """Pins a process (0 = this one) to a CPU set; silently a no-op where affinity is unsupported."""
    if cpus and hasattr(os, "sched_setaffinity"):
        with contextlib.suppress(OSError):
            os.sched_setaffinity(pid, cpus)


@dataclass(frozen=True, slots=True)
class ProcSample:
    """One reading of a process: CPU seconds used so far, resident memory, open fds, threads."""

    at: float
    cpu_s: float
    rss_bytes: int
    fds: int
    threads: int

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def sample(pid: int) -> ProcSample | None:
    """Reads /proc/PID/stat and /proc/PID/fd; None once the process is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
        fields = stat[stat.rindex(")") + 2 :].split()
        utime, stime = int(fields[11]), int(fields[12])
        threads, rss_pages = int(fields[17]), int(fields[21])
        try:
            fds = len(os.listdir(f"/proc/{pid}/fd"))
        except OSError:
            fds = -1
    except (OSError, ValueError, IndexError):
        return None
    ns = _cpu_clock_ns(pid)
    cpu_s = ns / 1e9 if ns is not None else (utime + stime) / CLOCK_TICKS
    return ProcSample(time.monotonic(), cpu_s, rss_pages * PAGE_SIZE, fds, threads)


@dataclass(frozen=True, slots=True)
class CpuSample:
    """CPU seconds a process used so far, read at `at` (monotonic): all a step's CPU figure needs."""

    at: float
    cpu_s: float


def cpu_sample(pid: int) -> CpuSample | None:
    """`sample`'s CPU reading alone: one clock read, where `sample` opens /proc files. A harness
    that reads hundreds of relays mid-step runs on the load core, and `sample`'s file reads for
    250 relays (some 25 ms) held the senders back, whose catch-up burst then queued at the
    relays as added latency (docs/architecture.md, "The rooms-per-core search")."""
    ns = _cpu_clock_ns(pid)
    if ns is None:
        full = sample(pid)
        return CpuSample(full.at, full.cpu_s) if full is not None else None
    return CpuSample(time.monotonic(), ns / 1e9)


def cpu_percent(before: ProcSample | CpuSample | None, after: ProcSample | CpuSample | None) -> float:
    """Share of one core used between two samples, in percent."""
    if before is None or after is None or after.at <= before.at:
        return 0.0
    return 100.0 * (after.cpu_s - before.cpu_s) / (after.at - before.at)


def _cpu_clock_ns(pid: int) -> int | None:
    """The process's CPU-time clock (Linux's clock_getcpuclockid: every thread's, those ended
    too), in ns; None where it cannot be read. /proc/PID/stat gives the same total in clock
    ticks, which round away the few ms a small process uses in a short step (a 1 s step of a
    quiet relay read 0)."""
    try:
        return time.clock_gettime_ns(((~pid) << 3) | 2)  # MAKE_PROCESS_CPUCLOCK(pid, CPUCLOCK_SCHED)
    except (OSError, OverflowError, AttributeError):
        return None


def cpu_ns(pid: int) -> int:
    """CPU time a process has run so far, in ns (0 once it is gone): exact where /proc/PID/stat's
    clock ticks would round away the few ms each of many small processes uses in a step."""
    ns = _cpu_clock_ns(pid)
    if ns is not None:
        return ns
    try:
        with open(f"/proc/{pid}/schedstat") as f:  # the main thread's
            return int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return 0


def context_switches(pid: int) -> int:
    """Voluntary and involuntary context switches of a process so far, all its threads (0 once it
    is gone): /proc/PID/status counts its main thread's alone, so a relay with a thread of its own
    would read cheaper than it is. A thread that ended meanwhile takes its count with it."""
    total = 0
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return 0
    for task in tasks:
        try:
            with open(f"/proc/{pid}/task/{task}/status") as f:
                total += sum(int(line.split()[1]) for line in f if "ctxt_switches" in line)
        except (OSError, ValueError, IndexError):
            continue  # ended between the listing and the read
    return total


CpuTimes = dict[int, tuple[int, int, int]]
"""Per CPU (busy, total, steal) jiffies: what `cpu_times` reads."""


def cpu_times() -> CpuTimes:
    """Per CPU (busy, total, steal) jiffies from /proc/stat; busy includes irq and softirq time.

    On loopback the kernel delivers a datagram to the receiving socket in softirq context on the
    sending CPU, time that /proc/PID/stat does not charge to the process: the relay core's busy
    share is the truer saturation figure. Steal (the hypervisor running something else on this
    virtual CPU) is in the total, not in busy: nothing of ours ran then, yet whatever was
    runnable on that CPU waited.
    """
    out: CpuTimes = {}
    try:
        with open("/proc/stat") as f:
            for line in f:
                if line.startswith("cpu") and line[3].isdigit():
                    name, *vals = line.split()
                    nums = [int(v) for v in vals[:8]]
                    idle, steal = nums[3] + nums[4], nums[7] if len(nums) > 7 else 0
                    out[int(name[3:])] = (sum(nums) - idle - steal, sum(nums), steal)
    except OSError:
        pass
    return out


def busy_percent(before: CpuTimes, after: CpuTimes, cpus: set[int]) -> float:
    """Busy share of a CPU set between two cpu_times() readings, in percent of one CPU."""
    return _share(before, after, cpus, 0)


def steal_percent(before: CpuTimes, after: CpuTimes, cpus: set[int]) -> float:
    """Stolen share of a CPU set between two cpu_times() readings, in percent of one CPU: a
    stall that no process's CPU time shows (a latency tail with its relay idle)."""
    return _share(before, after, cpus, 2)


def _share(before: CpuTimes, after: CpuTimes, cpus: set[int], field: int) -> float:
    part = total = 0
    for c in cpus:
        if c in before and c in after:
            part += after[c][field] - before[c][field]
            total += after[c][1] - before[c][1]
    return 100.0 * part / total * len(cpus) if total else 0.0


def wait_until_idle(busy_below: float = 10.0, window: float = 0.5, limit: float = 60.0) -> float:
    """Waits until the machine's CPUs, all together, were busy less than `busy_below` percent over
    one `window` (or `limit` seconds passed); returns the seconds waited. A step then starts once
    the last one's processes (a thousand relays exiting, say) are done, not in their wake."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < limit:
        before = cpu_times()
        time.sleep(window)
        after = cpu_times()
        if busy_percent(before, after, set(after)) / max(1, len(after)) < busy_below:
            break
    return time.monotonic() - t0


def smaps(pid: int) -> dict[str, int]:
    """Rss, Pss and Uss (private clean + dirty) in bytes from /proc/PID/smaps_rollup; zeros if gone.
    PSS splits shared pages between their users (the fair per-room figure); USS is what the
    process alone holds (what its exit would free)."""
    out = {"rss": 0, "pss": 0, "uss": 0}
    with contextlib.suppress(OSError, ValueError, IndexError), open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            key, _, rest = line.partition(":")
            value = int(rest.split()[0]) * 1024 if rest.strip() else 0
            if key == "Rss":
                out["rss"] = value
            elif key == "Pss":
                out["pss"] = value
            elif key in ("Private_Clean", "Private_Dirty"):
                out["uss"] += value
    return out


def pss_bytes(pid: int) -> int | None:
    """Proportional set size (shared pages split between their users): the fair per-room memory."""
    return smaps(pid)["pss"] or None
