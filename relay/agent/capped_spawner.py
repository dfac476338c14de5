"""The provisioner's side of the caps: every relay it spawns goes into a cgroup of its own.

`CappedSpawner(inner)` wraps any Spawner (plain subprocess, zygote): it creates the relay's
group with the tier's limits, spawns, moves the new pid in at once, and tells the relay through
its environment which tier it runs and whether the kernel enforces it (RELAY_TIER, RELAY_CAPS =
"cgroup" or "soft"). When the relay exits, the group's OOM counter says whether the kernel killed
it for memory: the handle's `exit_reason` is then "cap_exceeded", which the control plane
records as the room's close reason. Without writable cgroups it warns once and the relays keep
to their caps softly (relay/agent/caps.py).
"""

from __future__ import annotations

import itertools
import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

from relay.agent.cgroups import Backend, Cgroup, CgroupError, describe, detect
from relay.agent.tiers import NANO, Tier
from relay.control.provisioner import ProcessHandle, Spawner, SubprocessSpawner

log = logging.getLogger("relay.agent.capped_spawner")

CAP_EXCEEDED = "cap_exceeded"
_UNSET = object()


def _flag(argv: Sequence[str], name: str) -> str:
    try:
        return argv[list(argv).index(name) + 1]
    except (ValueError, IndexError):
        return ""


class CappedHandle:
    __slots__ = ("exit_reason", "group", "inner", "pid")

    def __init__(self, inner: ProcessHandle, group: Cgroup | None) -> None:
        self.inner = inner
        self.group = group
        self.pid = inner.pid
        self.exit_reason: str | None = None

    async def wait(self) -> int | None:
        code = await self.inner.wait()
        group = self.group
        if group is not None:
            if group.oom_killed():
                self.exit_reason = CAP_EXCEEDED
                log.warning("relay pid %s was killed for going over its memory cap", self.pid)
            group.remove()
            self.group = None
        return code

    def terminate(self) -> None:
        self.inner.terminate()

    def kill(self) -> None:
        self.inner.kill()


class CappedSpawner:
    def __init__(self, inner: Spawner | None = None, tier: Tier = NANO, backend: object = _UNSET) -> None:
        self.inner: Spawner = inner or SubprocessSpawner()
        self.tier = tier
        self.backend: Backend | None = detect() if backend is _UNSET else backend  # type: ignore[assignment]
        self._serial = itertools.count(1)
        if self.backend is None:
            log.warning("no writable cgroup on this host: %s caps are soft (in-process only)", tier.name)
        else:
            log.info("relay caps: %s, %s", tier.name, describe(self.backend))

    @property
    def mode(self) -> str:
        return "soft" if self.backend is None else "cgroup"

    async def spawn(self, argv: Sequence[str], env: Mapping[str, str], log_path: Path | None) -> CappedHandle:
        env = {**env, "RELAY_TIER": self.tier.name, "RELAY_CAPS": self.mode}
        group = None
        if self.backend is not None:
            serial = f"{os.getpid()}-{next(self._serial)}"  # unique across control-plane restarts
            name = f"{_flag(argv, '--namespace')}.{_flag(argv, '--room')}.{serial}"
            group = self.backend.create(name, self.tier)
        try:
            handle = await self.inner.spawn(argv, env, log_path)
        except BaseException:
            if group is not None:
                group.remove()
            raise
        if group is not None:
            try:
                group.add(handle.pid)
            except CgroupError:
                log.exception("could not cap relay pid %s: stopping it", handle.pid)
                handle.kill()
                await handle.wait()
                group.remove()
                raise
        return CappedHandle(handle, group)

    async def close(self) -> None:
        close = getattr(self.inner, "close", None)
        if close is not None:
            await close()
