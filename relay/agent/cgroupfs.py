"""Where this process sits in the cgroup hierarchies, read from /proc (nothing is written here).

The host (relay/host/cgroups.py) creates one cgroup per relay under PARENT_NAME; the caps guard
inside a relay (relay/agent/caps.py) reads its usage and limits from the cgroup it finds itself
in (`own_cgroup_dir`): that group, or under Kubernetes its container's.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

PARENT_NAME = "relay-caps"
"""The cgroup, inside the spawning process's own, under which every relay gets a group."""
V1_CONTROLLERS = ("cpu", "cpuacct", "memory", "pids")


def own_cgroups(proc_cgroup: str) -> tuple[str | None, dict[str, str]]:
    """Parses /proc/self/cgroup: (v2 path or None, {v1 controller: path})."""
    v2: str | None = None
    v1: dict[str, str] = {}
    for line in proc_cgroup.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        _, controllers, path = parts
        if controllers == "":
            v2 = path
        for controller in controllers.split(","):
            if controller:
                v1[controller] = path
    return v2, v1


def mounts(mounts: str) -> tuple[Path | None, dict[str, Path]]:
    """(cgroup2 mount point, {v1 controller: mount point}) from /proc/self/mounts."""
    v2: Path | None = None
    v1: dict[str, Path] = {}
    for line in mounts.splitlines():
        fields = line.split()
        if len(fields) < 4:
            continue
        point, fstype, options = Path(fields[1].replace("\\040", " ")), fields[2], fields[3].split(",")
        if fstype == "cgroup2" and v2 is None:
            v2 = point
        elif fstype == "cgroup":
            for option in options:
                if option in V1_CONTROLLERS:
                    v1.setdefault(option, point)
    return v2, v1


def _unescape(field: str) -> str:
    r"""A path from /proc/self/mountinfo: the kernel writes space, tab, newline and backslash as
    octal escapes (\040, \011, \012, \134)."""
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


@dataclass(frozen=True, slots=True)
class CgroupMount:
    """One cgroup hierarchy's mount: `root` is the cgroup shown at `point` (mountinfo's fourth
    field), "/" for a whole hierarchy, a container's own cgroup where only that is bind-mounted."""

    point: Path
    root: str
    version: int
    controllers: frozenset[str]
    """v1: the controllers this hierarchy carries; v2: empty (each cgroup lists its own)."""


def cgroup_mounts(mountinfo: str) -> list[CgroupMount]:
    """The cgroup hierarchies' mounts in /proc/self/mountinfo, in order."""
    found: list[CgroupMount] = []
    for line in mountinfo.splitlines():
        before, _, after = line.partition(" - ")
        fields, tail = before.split(), after.split()
        if len(fields) < 5 or len(tail) < 3 or tail[0] not in ("cgroup", "cgroup2"):
            continue
        root, point = _unescape(fields[3]), Path(_unescape(fields[4]))
        if tail[0] == "cgroup2":
            found.append(CgroupMount(point, root, 2, frozenset()))
        else:
            controllers = frozenset(tail[2].split(",")) & frozenset(V1_CONTROLLERS)
            if controllers:
                found.append(CgroupMount(point, root, 1, controllers))
    return found


def _under(mount: CgroupMount, path: str) -> Path | None:
    """Where cgroup `path` is under `mount`, or None when the mount shows another part of the
    hierarchy (or `path` lies outside this cgroup namespace: "/.." paths)."""
    root = mount.root.rstrip("/")
    if ".." in path.split("/") or (path != root and not path.startswith(root + "/")):
        return None
    directory = mount.point / path[len(root) :].lstrip("/")
    return directory if directory.is_dir() else None


def own_cgroup_dir(controller: str, proc: Path = Path("/proc/self")) -> tuple[int, Path] | None:
    """(version, directory) of the cgroup `proc` is in for `controller` (cpu, memory or pids):
    in the v1 hierarchy that carries it, else in v2 where its cgroup offers it; None when none
    does. Whatever made the cgroup: the local spawner's relay group and a Kubernetes container
    are found alike. /proc/self/cgroup gives the path from the cgroup namespace's root and each
    mount shows the hierarchy from its own root, so a container with a namespace of its own
    ("0::/", the usual case) finds its files at the mount point (/sys/fs/cgroup/memory.current
    on v2, /sys/fs/cgroup/memory/memory.usage_in_bytes on v1), and one without finds them
    through the bind mount of its own cgroup."""
    try:
        v2_path, v1_paths = own_cgroups((proc / "cgroup").read_text())
        found = cgroup_mounts((proc / "mountinfo").read_text())
    except OSError:
        return None
    v1_path = v1_paths.get(controller)
    if v1_path is not None:
        for mount in found:
            if mount.version == 1 and controller in mount.controllers:
                directory = _under(mount, v1_path)
                if directory is not None:
                    return 1, directory
    if v2_path is not None:
        for mount in found:
            directory = _under(mount, v2_path) if mount.version == 2 else None
            if directory is not None and controller in _offered(directory):
                return 2, directory
    return None


def _offered(directory: Path) -> list[str]:
    """The controllers a v2 cgroup has (its cgroup.controllers)."""
    try:
        return (directory / "cgroup.controllers").read_text().split()
    except OSError:
        return []
