"""Room tiers: the resources one relay may use, defined once (docs/tiers.md explains each figure).

GS2-Realtime sells rooms by server spec; realtime1.nano is the smallest and the one we match.
The local provisioner enforces a tier with cgroups (relay/host/cgroups.py); the relay keeps to
it from the inside as well (relay/agent/caps.py), so it degrades before the kernel steps in.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

MIB = 1 << 20


@dataclass(frozen=True, slots=True)
class Tier:
    name: str
    cpu: float
    """Share of one core. Enforced as a CFS quota per `cpu_period_us`."""
    memory_bytes: int
    """Hard memory cap (resident + kernel memory charged to the relay's cgroup; no swap)."""
    pids: int
    """Processes and threads; a relay needs a handful (event loop, resolver threads). The local
    provisioner's `pids.max`; a pod's only where the kubelet's podPidsLimit is set (docs/tiers.md
    says why the relay does not stand in for it)."""
    nofile: int
    """Open files and sockets: members' WebSocket connections count here. RLIMIT_NOFILE, which
    the relay sets itself in every caps mode (no cgroup counts open files)."""
    cpu_period_us: int = 10_000
    """Short CFS period: a relay throttled at 12.5% stalls at most ~9 ms per period, not the
    ~87 ms the default 100 ms period allows."""
    join_refusal_ratio: float = 0.9
    """Above this share of `memory_bytes` the relay refuses new joins (ERROR overloaded)."""

    @property
    def cpu_quota_us(self) -> int:
        return max(1000, round(self.cpu * self.cpu_period_us))

    @property
    def cpu_max(self) -> str:
        """cgroup v2 `cpu.max` value, e.g. "1250 10000"."""
        return f"{self.cpu_quota_us} {self.cpu_period_us}"

    @property
    def cpu_period_s(self) -> float:
        return self.cpu_period_us / 1e6


NANO = Tier(name="realtime1.nano", cpu=0.125, memory_bytes=64 * MIB, pids=32, nofile=1024)

TIERS: dict[str, Tier] = {NANO.name: NANO}
DEFAULT_TIER = NANO.name


def group_tier(tier: Tier, rooms: int) -> Tier:
    """The caps of one process serving `rooms` rooms of `tier` (relay/host/group.py): their CPU,
    memory and open files together; threads stay one process's."""
    return replace(
        tier, cpu=tier.cpu * rooms, memory_bytes=tier.memory_bytes * rooms, nofile=tier.nofile * rooms
    )


def get_tier(name: str) -> Tier:
    try:
        return TIERS[name]
    except KeyError:
        raise ValueError(f"unknown tier {name!r} (known: {', '.join(sorted(TIERS))})") from None
