"""Hard caps for relay processes with cgroups: v2 where delegated, v1 where that is what the host has.

    backend = detect()                      # None: no writable cgroups (caps stay soft)
    group = backend.create("ns-room", NANO) # a fresh cgroup per relay, limits written
    group.add(pid)                          # before the relay has done any real work
    ...
    group.oom_killed(), group.cpu_usage_s(), group.remove()

One `CgroupV2` or `CgroupV1` per relay, under a parent cgroup of our own ("relay-caps") inside
the cgroup this process already runs in, so the host's own hierarchy is never touched. The
kernel does the enforcing: a relay over its memory cap is OOM-killed (the group's OOM counter
then says why it died), one over its CPU quota is throttled every `cpu_period_us`.

The parent's CPU weight is its groups' together (`weigh`), as kubelet weighs the cgroup its pods
share: at the default weight of one task, a hundred relays woke behind any other task on their
core, which ran its whole slice first (docs/architecture.md).
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import time
from pathlib import Path
from typing import Protocol

from relay.agent.cgroupfs import PARENT_NAME, V1_CONTROLLERS, mounts, own_cgroups
from relay.agent.tiers import Tier

log = logging.getLogger("relay.host.cgroups")

CGROUP_ROOT = Path("/sys/fs/cgroup")
NO_QUOTA_PERIOD_US = 100_000  # the kernel's default period, written with "max" (no quota)
_SAFE_NAME = re.compile(r"[^A-Za-z0-9_.-]")


class CgroupError(OSError):
    pass


class Cgroup(Protocol):
    version: int

    def add(self, pid: int) -> None: ...

    def oom_killed(self) -> bool: ...

    def cpu_usage_s(self) -> float: ...

    def throttled(self) -> tuple[int, float]:
        """(periods throttled, seconds throttled)."""
        ...

    def memory_bytes(self) -> int: ...

    def limit_cpu(self, tier: Tier | None) -> None:
        """The tier's CPU quota, or None for none (a relay's start-up boost)."""
        ...

    def idle_cpu(self, idle: bool) -> None:
        """The lowest CPU weight (idle) or the default: a standby relay (relay/host/warm_pool.py)
        only takes CPU that no room and no starting relay wants."""
        ...

    def remove(self) -> None: ...


class Backend(Protocol):
    version: int

    def sweep(self) -> int: ...

    def create(self, name: str, tier: Tier, cpu_capped: bool = True) -> Cgroup: ...

    def find(self, pid: int) -> Cgroup | None:
        """The relay group `pid` runs in, if it is one of ours (a relay an earlier control plane
        started and this one adopts), else None."""
        ...

    def move_in(self, pid: int, group: Cgroup) -> None:
        """Moves `pid` into `group` wherever it is now, and removes any other group of ours it
        was partly in: a relay an earlier control plane was killed before moving in (or before
        it had moved it into every v1 hierarchy) must not stay outside its caps."""
        ...


def safe_name(name: str) -> str:
    """A room's name as one path component (no separators, no dot-files)."""
    return _SAFE_NAME.sub("_", name).lstrip(".")[:200] or "_"


def _write(path: Path, value: str) -> None:
    try:
        path.write_text(value)
    except OSError as exc:
        raise CgroupError(exc.errno, f"cannot write {value!r} to {path}: {exc.strerror}") from None


def _read_int(path: Path, default: int = 0) -> int:
    try:
        return int(path.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return default


def _read_keyed(path: Path) -> dict[str, int]:
    """`key value` lines (cpu.stat, memory.events, memory.oom_control)."""
    out: dict[str, int] = {}
    with contextlib.suppress(OSError):
        for line in path.read_text().splitlines():
            key, _, value = line.partition(" ")
            with contextlib.suppress(ValueError):
                out[key] = int(value)
    return out


def _rmdir(path: Path) -> None:
    """Removes a group; one already gone (another remover got there first) is no warning."""
    try:
        path.rmdir()
    except FileNotFoundError:
        pass
    except OSError as exc:
        log.warning("cannot remove %s: %s", path, exc)


def _group_name(pid: int, parent: Path, path: str | None) -> str | None:
    """The name of pid's group when its cgroup `path` is a child of our parent directory."""
    if path is None or Path(path).parent.name != PARENT_NAME:
        return None
    name = Path(path).name
    return name if (parent / name).is_dir() else None


def _proc_cgroups(pid: int) -> tuple[str | None, dict[str, str]]:
    try:
        return own_cgroups(Path(f"/proc/{pid}/cgroup").read_text())
    except OSError:
        return None, {}


CPU_WEIGHT_FILES = {1: ("cpu.shares", 1024, 262_144), 2: ("cpu.weight", 100, 10_000)}
"""Per cgroup version: the CPU weight's file, a group's default weight and the most it takes."""


def weigh(parent: Path, version: int) -> None:
    """Sets the parent's CPU weight to the default weight times the groups in it (at least one,
    at most the kernel's ceiling): what its relays would weigh as plain tasks beside the host's.
    At one task's weight, a hundred relays sharing a core lost to every task outside the parent
    that woke: the parent as a whole had used far more than its share, so the other task ran
    first and for its whole slice, and relays' packets waited behind it (added p99 of the
    deployed shape 3.4-6.3 ms; 0.7-1.2 ms weighed; docs/architecture.md). Called whenever a
    group is made or removed; a failure is logged, the caps themselves stay."""
    name, each, most = CPU_WEIGHT_FILES[version]
    try:
        with os.scandir(parent) as entries:  # the entries' types come with them: no stat each
            groups = sum(1 for entry in entries if entry.is_dir(follow_symlinks=False))
        _write(parent / name, str(min(most, each * max(1, groups))))
    except OSError as exc:
        log.warning("cannot weigh %s: %s", parent, exc)


SWEEP_MIN_AGE_S = 60.0


def sweep_empty(parents: list[Path], min_age: float = SWEEP_MIN_AGE_S) -> int:
    """Removes relay groups left without a process (a control plane that was killed, relays that
    outlived it); groups still holding a relay stay, and so do groups younger than `min_age`: another
    control plane on this host may have just made one and not yet moved its relay in. Returns how
    many went."""
    removed = 0
    born_before = time.time() - min_age
    for parent in dict.fromkeys(parents):
        try:
            children = list(parent.iterdir())
        except OSError:
            continue
        for child in children:
            try:  # each on its own: one group going away meanwhile must not stop the sweep
                procs = child / "cgroup.procs"
                if (
                    child.is_dir()
                    and child.stat().st_mtime <= born_before
                    and procs.exists()
                    and not procs.read_text().strip()
                ):
                    child.rmdir()
                    removed += 1
            except OSError:
                continue
    return removed


# ---- cgroup v2 ----------------------------------------------------------------------------------


class CgroupV2:
    version = 2

    def __init__(self, path: Path) -> None:
        self.path = path

    def add(self, pid: int) -> None:
        _write(self.path / "cgroup.procs", str(pid))

    def oom_killed(self) -> bool:
        return _read_keyed(self.path / "memory.events").get("oom_kill", 0) > 0

    def cpu_usage_s(self) -> float:
        return _read_keyed(self.path / "cpu.stat").get("usage_usec", 0) / 1e6

    def throttled(self) -> tuple[int, float]:
        stat = _read_keyed(self.path / "cpu.stat")
        return stat.get("nr_throttled", 0), stat.get("throttled_usec", 0) / 1e6

    def memory_bytes(self) -> int:
        return _read_int(self.path / "memory.current")

    def limit_cpu(self, tier: Tier | None) -> None:
        _write(self.path / "cpu.max", tier.cpu_max if tier else f"max {NO_QUOTA_PERIOD_US}")

    def idle_cpu(self, idle: bool) -> None:
        _write(self.path / "cpu.weight", "1" if idle else "100")

    def remove(self) -> None:
        if (self.path / "memory.reclaim").exists():  # see CgroupV1.remove
            with contextlib.suppress(OSError):
                (self.path / "memory.reclaim").write_text(str(1 << 40))
        _rmdir(self.path)
        weigh(self.path.parent, self.version)


class CgroupV2Backend:
    """A delegated v2 subtree: `parent` must offer cpu, memory and pids to its children."""

    version = 2

    def __init__(self, parent: Path) -> None:
        self.parent = parent

    def sweep(self) -> int:
        removed = sweep_empty([self.parent])
        weigh(self.parent, self.version)
        return removed

    def find(self, pid: int) -> CgroupV2 | None:
        name = _group_name(pid, self.parent, _proc_cgroups(pid)[0])
        return None if name is None else CgroupV2(self.parent / name)

    def move_in(self, pid: int, group: Cgroup) -> None:
        group.add(pid)  # one hierarchy: a process is in one group, never partly in another

    def create(self, name: str, tier: Tier, cpu_capped: bool = True) -> CgroupV2:
        path = self.parent / safe_name(name)
        path.mkdir(exist_ok=True)
        group = CgroupV2(path)
        group.limit_cpu(tier if cpu_capped else None)
        _write(path / "memory.max", str(tier.memory_bytes))
        if (path / "memory.swap.max").exists():
            _write(path / "memory.swap.max", "0")
        if (path / "memory.oom.group").exists():  # kill the whole relay, never half of it
            _write(path / "memory.oom.group", "1")
        _write(path / "pids.max", str(tier.pids))
        weigh(self.parent, self.version)
        return group

    @classmethod
    def prepare(cls, own: Path) -> CgroupV2Backend:
        """Makes `own/relay-caps` with cpu, memory and pids enabled for its children.

        v2's "no internal processes" rule: a cgroup with processes cannot hand controllers to
        children, so the parent we create holds no process, only relays' groups."""
        wanted = {"cpu", "memory", "pids"}
        available = set((own / "cgroup.controllers").read_text().split())
        if not wanted <= available:
            raise CgroupError(0, f"{own} lacks controllers {sorted(wanted - available)}")
        parent = own / PARENT_NAME
        parent.mkdir(exist_ok=True)
        if not wanted <= set((parent / "cgroup.controllers").read_text().split()):
            _write(own / "cgroup.subtree_control", " ".join("+" + c for c in sorted(wanted)))
        _write(parent / "cgroup.subtree_control", " ".join("+" + c for c in sorted(wanted)))
        return cls(parent)


# ---- cgroup v1 ----------------------------------------------------------------------------------


class CgroupV1:
    version = 1

    def __init__(self, paths: dict[str, Path]) -> None:
        self.paths = paths  # controller -> this relay's directory in that hierarchy

    def add(self, pid: int) -> None:
        for path in self.paths.values():
            _write(path / "cgroup.procs", str(pid))

    def oom_killed(self) -> bool:
        control = _read_keyed(self.paths["memory"] / "memory.oom_control")
        if "oom_kill" in control:
            return control["oom_kill"] > 0
        return _read_int(self.paths["memory"] / "memory.failcnt") > 0  # kernels before 4.13

    def cpu_usage_s(self) -> float:
        if "cpuacct" in self.paths:
            return _read_int(self.paths["cpuacct"] / "cpuacct.usage") / 1e9
        return 0.0

    def throttled(self) -> tuple[int, float]:
        stat = _read_keyed(self.paths["cpu"] / "cpu.stat")
        return stat.get("nr_throttled", 0), stat.get("throttled_time", 0) / 1e9

    def memory_bytes(self) -> int:
        return _read_int(self.paths["memory"] / "memory.usage_in_bytes")

    def limit_cpu(self, tier: Tier | None) -> None:
        cpu = self.paths["cpu"]
        if tier is None:
            _write(cpu / "cpu.cfs_quota_us", "-1")
            return
        _write(cpu / "cpu.cfs_period_us", str(tier.cpu_period_us))
        _write(cpu / "cpu.cfs_quota_us", str(tier.cpu_quota_us))

    def idle_cpu(self, idle: bool) -> None:
        _write(self.paths["cpu"] / "cpu.shares", "2" if idle else "1024")

    def remove(self) -> None:
        # Reclaim what is still charged (the relay's log in the page cache, mostly) first:
        # otherwise the removed group lingers in the kernel as a dying memory cgroup, and a
        # thousand of those slow every later cgroup operation on the machine.
        with contextlib.suppress(OSError):
            (self.paths["memory"] / "memory.force_empty").write_text("0")
        for path in self.paths.values():
            _rmdir(path)
        weigh(self.paths["cpu"].parent, self.version)


class CgroupV1Backend:
    """One parent directory per controller hierarchy (cpu and cpuacct may share one mount)."""

    version = 1

    def __init__(self, parents: dict[str, Path]) -> None:
        self.parents = parents

    def sweep(self) -> int:
        removed = sweep_empty(list(self.parents.values()))
        weigh(self.parents["cpu"], self.version)
        return removed

    def _names(self, pid: int) -> dict[str, str | None]:
        """Controller -> the name of our group pid is in there (None: none of ours)."""
        paths = _proc_cgroups(pid)[1]
        return {c: _group_name(pid, parent, paths.get(c)) for c, parent in self.parents.items()}

    def find(self, pid: int) -> CgroupV1 | None:
        names = self._names(pid)
        if None in names.values() or len(set(names.values())) != 1:
            return None
        return CgroupV1({c: parent / str(names[c]) for c, parent in self.parents.items()})

    def move_in(self, pid: int, group: Cgroup) -> None:
        before = set(self._names(pid).values())
        group.add(pid)
        for name in before - {None, *self._names(pid).values()}:
            # it held this relay alone, in some hierarchies (its copies in the others are empty)
            CgroupV1({c: parent / str(name) for c, parent in self.parents.items()}).remove()

    def create(self, name: str, tier: Tier, cpu_capped: bool = True) -> CgroupV1:
        paths: dict[str, Path] = {}
        for controller, parent in self.parents.items():
            path = parent / safe_name(name)
            path.mkdir(exist_ok=True)
            paths[controller] = path
        group = CgroupV1(paths)
        group.limit_cpu(tier if cpu_capped else None)
        memory = paths["memory"]
        _write(memory / "memory.limit_in_bytes", str(tier.memory_bytes))
        if (memory / "memory.memsw.limit_in_bytes").exists():  # no escaping the cap into swap
            with contextlib.suppress(CgroupError):
                _write(memory / "memory.memsw.limit_in_bytes", str(tier.memory_bytes))
        _write(paths["pids"] / "pids.max", str(tier.pids))
        weigh(self.parents["cpu"], self.version)
        return group

    @classmethod
    def prepare(cls, parents: dict[str, Path]) -> CgroupV1Backend:
        made: dict[str, Path] = {}
        for controller, own in parents.items():
            parent = own / PARENT_NAME
            parent.mkdir(exist_ok=True)
            made[controller] = parent
        return cls(made)


# ---- detection ----------------------------------------------------------------------------------


def detect(proc: Path = Path("/proc/self")) -> Backend | None:
    """The best writable backend on this host, or None (then caps are soft)."""
    try:
        v2_path, v1_paths = own_cgroups((proc / "cgroup").read_text())
        v2_mount, v1_mounts = mounts((proc / "mounts").read_text())
    except OSError:
        return None
    if v2_mount is not None and v2_path is not None:
        try:
            return CgroupV2Backend.prepare(v2_mount / v2_path.lstrip("/"))
        except (OSError, ValueError) as exc:
            log.debug("cgroup v2 not usable: %s", exc)
    required = ("cpu", "memory", "pids")
    if all(c in v1_mounts and c in v1_paths for c in required):
        wanted = [c for c in V1_CONTROLLERS if c in v1_mounts and c in v1_paths]
        parents = {c: v1_mounts[c] / v1_paths[c].lstrip("/") for c in wanted}
        try:
            return CgroupV1Backend.prepare(parents)
        except OSError as exc:
            log.debug("cgroup v1 not usable: %s", exc)
    return None


def describe(backend: Backend | None) -> str:
    return "none (soft caps)" if backend is None else f"cgroup v{backend.version}"
