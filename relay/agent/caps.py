"""Keeping a relay inside its tier from the inside, with or without the kernel's help.

Hard caps (cgroups, relay/host/cgroups.py) stop a relay from taking more than its share, but
the kernel's answers are blunt: an OOM kill ends the room, throttling stalls everyone in it.
`CapsGuard` degrades first, every second (every five while the room is empty):
- memory at `tier.join_refusal_ratio` (90%) of the cap: new JOINs get ERROR overloaded, members
  already in keep playing; joins open again below 85%.
- CPU at 90% of the budget: `shed_optional`, so fan-out to UDP members (unreliable by contract)
  is dropped first while WebSocket members still get everything; off again below 70%.

Where no cgroup is available the caps are soft (`mode="soft"`): setrlimit bounds open files and
address space, and the guard itself enforces the memory cap (the room closes with CLOSING
"cap exceeded"). CPU then has no hard cap, only the shedding above. A warning says so.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import resource
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Protocol

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from relay.agent.cgroupfs import PARENT_NAME, mounts, own_cgroups
from relay.agent.tiers import Tier, get_tier
from relay.protocol.constants import CloseReason

log = logging.getLogger("relay.agent.caps")

JOINS_REOPEN_RATIO = 0.85
SHED_ON = 0.9
SHED_OFF = 0.7


def cpu_seconds() -> float:
    t = resource.getrusage(resource.RUSAGE_SELF)
    return t.ru_utime + t.ru_stime


def rss_bytes() -> int:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * resource.getpagesize()
    except (OSError, ValueError, IndexError):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def cgroup_memory_file(proc: Path = Path("/proc/self")) -> Path | None:
    """This process's memory usage file when it sits in a relay cap group, else None.

    The cgroup's figure is what the kernel compares with the cap (it excludes pages shared with
    a zygote parent that RSS would count, and includes kernel memory RSS would not)."""
    try:
        v2_path, v1_paths = own_cgroups((proc / "cgroup").read_text())
        v2_mount, v1_mounts = mounts((proc / "mounts").read_text())
    except OSError:
        return None
    if v1_paths.get("memory") and "memory" in v1_mounts and PARENT_NAME in v1_paths["memory"]:
        return v1_mounts["memory"] / v1_paths["memory"].lstrip("/") / "memory.usage_in_bytes"
    if v2_path and v2_mount and PARENT_NAME in v2_path:
        return v2_mount / v2_path.lstrip("/") / "memory.current"
    return None


def inactive_file_bytes(memory_stat: str) -> int:
    """The page cache the kernel reclaims first (v1's hierarchical total where there is one)."""
    fields = dict(line.split(" ", 1) for line in memory_stat.splitlines() if " " in line)
    return int(fields.get("total_inactive_file", fields.get("inactive_file", "0")))


def memory_reader(proc: Path = Path("/proc/self")) -> Callable[[], int]:
    """The working set the guard compares with the cap: the cgroup's usage less its inactive
    page cache, as kubelet counts it. Usage alone counts the cache of every file the relay wrote
    (its log): 80 MiB of log read as a full nano cap and refused joins for good, though the
    kernel reclaims that cache long before it would kill the relay."""
    path = cgroup_memory_file(proc)
    if path is None:
        return rss_bytes
    stat = path.with_name("memory.stat")

    def read() -> int:
        try:
            usage = int(path.read_text())
        except (OSError, ValueError):
            return rss_bytes()
        try:
            return max(0, usage - inactive_file_bytes(stat.read_text()))
        except (OSError, ValueError):
            return usage

    return read


def apply_soft_limits(tier: Tier) -> None:
    """setrlimit where the kernel cannot cap the group: open files, and address space as a
    backstop (current size plus four times the cap: Python reserves far more address space than
    it touches, so the guard's RSS check is the real memory cap)."""
    nofile_hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    limit = tier.nofile if nofile_hard == resource.RLIM_INFINITY else min(tier.nofile, nofile_hard)
    resource.setrlimit(resource.RLIMIT_NOFILE, (limit, limit))
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

    async def close(self, reason: CloseReason, text: str = "") -> None: ...


class CapsGuard:
    """Watches memory and CPU against the tier; `mode` is "cgroup" (kernel enforces) or "soft"."""

    def __init__(
        self,
        relay: Guarded,
        tier: Tier,
        mode: str = "cgroup",
        interval: float = 1.0,
        quiet_interval: float = 5.0,
        read_memory: Callable[[], int] | None = None,
        read_cpu: Callable[[], float] = cpu_seconds,
    ) -> None:
        self.relay = relay
        self.tier = tier
        self.mode = mode
        self.interval = interval
        self.quiet_interval = quiet_interval
        self.read_memory = read_memory or memory_reader()
        self.read_cpu = read_cpu
        self.memory = 0
        self.cpu_share = 0.0
        self.exceeded = False
        self._last: tuple[float, float] | None = None
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self.mode == "soft":
            log.warning("caps are soft: no writable cgroup; enforcing %s in-process", self.tier.name)
        self._task = asyncio.get_running_loop().create_task(self._run())

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()

    async def _run(self) -> None:
        while True:
            # nobody in the room: nothing grows fast
            await asyncio.sleep(self.quiet_interval if self.relay.quiet else self.interval)
            await self.check(time.monotonic())

    async def check(self, now: float) -> None:
        """One pass: memory first (it can end the room), then CPU."""
        self.memory = memory = self.read_memory()
        cap = self.tier.memory_bytes
        relay = self.relay
        if self.mode == "soft" and memory > cap and not self.exceeded:
            self.exceeded = True
            log.error("memory %d bytes over the %s cap of %d: closing the room", memory, self.tier.name, cap)
            await relay.close(CloseReason.CAP_EXCEEDED, "memory cap exceeded")
            return
        if relay.accepting_joins and memory >= cap * self.tier.join_refusal_ratio:
            relay.accepting_joins = False
            log.warning("memory %d of %d bytes: refusing new joins", memory, cap)
        elif not relay.accepting_joins and memory < cap * JOINS_REOPEN_RATIO:
            relay.accepting_joins = True
            log.info("memory %d of %d bytes: accepting joins again", memory, cap)
        self._check_cpu(now)

    def _check_cpu(self, now: float) -> None:
        cpu = self.read_cpu()
        last, self._last = self._last, (now, cpu)
        if last is None or now <= last[0]:
            return
        self.cpu_share = share = (cpu - last[1]) / (now - last[0])
        budget = self.tier.cpu
        relay = self.relay
        if not relay.shed_optional and share >= budget * SHED_ON:
            relay.shed_optional = True
            log.warning("CPU %.0f%%, budget %.0f%%: shedding UDP fan-out", share * 100, budget * 100)
        elif relay.shed_optional and share < budget * SHED_OFF:
            relay.shed_optional = False


class CapsCollector(Collector):
    """The relay's use against its tier, read at scrape time (deploy/grafana's CPU and memory
    panels, deploy/prometheus' throttling alerts): what the guard itself compares."""

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
            (GaugeMetricFamily("relay_tier_cpu_cores", "The tier's CPU cap", labels=labels), tier.cpu),
            (
                GaugeMetricFamily("relay_tier_memory_bytes", "The tier's memory cap", labels=labels),
                tier.memory_bytes,
            ),
            (
                GaugeMetricFamily("relay_shedding", "1 while UDP fan-out is shed for CPU", labels=labels),
                1.0 if guard.relay.shed_optional else 0.0,
            ),
        ):
            family.add_metric([tier.name], float(value))
            yield family


def guard_relay(
    relay: Guarded, tier_name: str | None, mode: str, registry: CollectorRegistry | None = None
) -> CapsGuard | None:
    """Starts the guard for a relay that keeps to a tier (None: no tier, no guard), exported
    through `registry` (the relay's /metrics) when given."""
    if not tier_name:
        return None
    guard = CapsGuard(relay, get_tier(tier_name), mode)
    guard.start()
    if registry is not None:
        registry.register(CapsCollector(guard))
    return guard
