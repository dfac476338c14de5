"""A real cgroup backend whose groups a test wraps, to make a move fail or stall as a killed or
slow host would: the one base for those test doubles, so each says only what it changes."""

from __future__ import annotations

from relay.agent.tiers import Tier
from relay.host import cgroups


class WrappedBackend:
    """The real backend; `create` hands out `wrap(group)` and keeps the real group in `groups`
    for the test to inspect and remove. No sweep: the test's groups are its own."""

    def __init__(self, backend: cgroups.Backend) -> None:
        self.backend = backend
        self.version = backend.version
        self.groups: list[cgroups.Cgroup] = []

    def wrap(self, group: cgroups.Cgroup) -> cgroups.Cgroup:
        raise NotImplementedError

    def sweep(self) -> int:
        return 0

    def create(self, name: str, tier: Tier, cpu_capped: bool = True) -> cgroups.Cgroup:
        group = self.backend.create(name, tier, cpu_capped)
        self.groups.append(group)
        return self.wrap(group)

    def find(self, pid: int) -> cgroups.Cgroup | None:
        return self.backend.find(pid)

    def move_in(self, pid: int, group: cgroups.Cgroup) -> None:
        self.backend.move_in(pid, group)
