"""Where this process sits in the cgroup hierarchies, read from /proc (nothing is written here).

The host (relay/host/cgroups.py) creates one cgroup per relay under PARENT_NAME; the caps guard
inside a relay (relay/agent/caps.py) reads its own usage from the group it finds itself in.
"""

from __future__ import annotations

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
