"""The provisioner's side of the caps: every relay it spawns goes into a cgroup of its own.

`CappedSpawner(inner)` wraps any Spawner (plain subprocess, zygote): it creates the relay's
group with the tier's limits, spawns, moves the new pid in at once, and tells the relay through
its environment which tier it runs and whether the kernel enforces it (RELAY_TIER, RELAY_CAPS =
"cgroup" or "soft"). When the relay exits, the group's OOM counter says whether the kernel killed
it for memory: the handle's `exit_reason` is then "cap_exceeded", which the control plane
records as the room's close reason. Without writable cgroups it warns once and the relays keep
to their caps softly (relay/agent/caps.py).

Start-up boost: memory and pids are capped from the first instant, the CPU quota from the moment
the relay registers its address (`registered()`, called by the provisioner before the address
is shown to anyone), or after `boost_seconds` at the latest. A fresh relay's start costs a few
tens of milliseconds of CPU; at 12.5% of a core that would be several hundred milliseconds of
wall time while the room waits for an address. No member can be in the room before it
registers, so the boost never serves play.
A standby (`relay serve --standby`, the warm pool) has its CPU quota from its start and never a
boost: it is idle, its start was rehearsed (about 1 ms of CPU left), and so no room it is handed
is ever reachable uncapped. Until it has a room it also runs at the lowest CPU weight, so its
rehearsal only takes CPU that rooms and starting relays leave idle; when it is assigned a room
(`CappedHandle.assign`) its weight returns to the default.
A relay started by an earlier control plane is adopted into its group (`CappedSpawner.adopt`),
its quota put on at once. That control plane may have been killed after the spawn and before the
move (or, in cgroup v1, between one hierarchy and the next): the relay then runs outside its caps
until the adopting control plane moves it into the group made for it, which it finds by name (a
relay's group is named after its room and incarnation, both on its command line).
A spawn cancelled while its relay is being moved into its group (a control plane stopping) stops
that relay and removes the group (`close()` waits for both).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

from relay.agent.launch import caps_env, incarnation_of, room_of
from relay.agent.tiers import NANO, Tier
from relay.host.cgroups import Backend, Cgroup, CgroupError, describe, detect, safe_name
from relay.host.group import group_of
from relay.host.spawner import PidHandle, ProcessHandle, Spawner, SubprocessSpawner, cmdline
from relay.host.standby import is_standby

log = logging.getLogger("relay.host.capped_spawner")

CAP_EXCEEDED = "cap_exceeded"
_UNSET = object()


def tier_env(tier: Tier, group: Cgroup | None) -> dict[str, str]:
    """What tells a relay its caps (relay/agent/launch.py reads these): the kernel enforces them
    when the relay has a group, the relay itself ("soft") when not."""
    return caps_env(tier.name, "soft" if group is None else "cgroup")


async def remove_group(group: Cgroup) -> None:
    """Removes an exited relay's group in a thread: a v1 memory group's `force_empty` reclaims
    its pages there and then (about 4 ms for a relay that wrote 4 MiB), and with twenty rooms
    deleted at once the control plane's loop spent over half its time in it, their deleteRoom
    answers waiting (docs/architecture.md). Shielded: a caller cancelled meanwhile leaves it to
    finish."""
    await asyncio.shield(asyncio.to_thread(group.remove))


def relay_command(pid: int) -> list[str] | None:
    """pid's command line if it is a relay's (`relay serve` for a room's incarnation, or a group
    of rooms), else None (also when it is gone)."""
    try:
        argv = cmdline(pid)
    except OSError:
        return None
    return argv if "serve" in argv and (incarnation_of(argv) or group_of(argv)) else None


class CappedHandle:
    __slots__ = ("_boost", "boost_seconds", "exit_reason", "group", "inner", "pid", "tier")

    def __init__(
        self,
        inner: ProcessHandle,
        group: Cgroup | None,
        tier: Tier,
        boost_seconds: float,
        boost: bool = True,
    ) -> None:
        self.inner = inner
        self.group = group
        self.tier = tier
        self.pid = inner.pid
        self.boost_seconds = boost_seconds
        self.exit_reason: str | None = None
        self._boost: asyncio.TimerHandle | None = None
        if boost and group is not None:  # the quota goes on at registration, or after the boost
            self._boost = asyncio.get_running_loop().call_later(self.boost_seconds, self.registered)

    async def assign(self, argv: Sequence[str], env: Mapping[str, str], log_path: Path | None) -> None:
        """A standby gets its room: the same environment a capped spawn would have (its CPU quota
        stays on: its start was rehearsed, and its room must not be reachable uncapped)."""
        assign = getattr(self.inner, "assign", None)
        if assign is None:
            raise OSError(f"relay pid {self.pid} is not a standby")
        if self.group is not None:
            self.group.idle_cpu(False)
        await assign(argv, {**env, **tier_env(self.tier, self.group)}, log_path)

    async def rehearsed(self) -> None:
        """A standby's rehearsal is over (at once where the inner handle cannot tell)."""
        rehearsed = getattr(self.inner, "rehearsed", None)
        if rehearsed is not None:
            await rehearsed()

    def registered(self) -> None:
        """Ends the start-up boost: the tier's CPU quota from now on."""
        if self._boost is not None:
            self._boost.cancel()
            self._boost = None
            if self.group is not None:
                try:
                    self.group.limit_cpu(self.tier)
                except CgroupError:
                    log.exception("could not apply the CPU quota to relay pid %s: stopping it", self.pid)
                    self.inner.kill()

    async def wait(self) -> int | None:
        code = await self.inner.wait()
        if self._boost is not None:
            self._boost.cancel()
            self._boost = None
        group = self.group
        if group is not None:
            if group.oom_killed():
                self.exit_reason = CAP_EXCEEDED
                log.warning("relay pid %s was killed for going over its memory cap", self.pid)
            self.group = None
            await remove_group(group)
        return code

    def terminate(self) -> None:
        self.inner.terminate()

    def kill(self) -> None:
        self.inner.kill()


class CappedSpawner:
    def __init__(
        self,
        inner: Spawner | None = None,
        tier: Tier = NANO,
        backend: object = _UNSET,
        boost_seconds: float = 5.0,
    ) -> None:
        self.inner: Spawner = inner or SubprocessSpawner()
        self.tier = tier
        self.boost_seconds = boost_seconds
        self.backend: Backend | None = detect() if backend is _UNSET else backend  # type: ignore[assignment]
        self._serial = itertools.count(1)
        self._undoing: set[asyncio.Task[None]] = set()  # relays stopped uncapped, groups to remove
        if self.backend is None:
            log.warning("no writable cgroup on this host: %s caps are soft (in-process only)", tier.name)
        else:
            swept = self.backend.sweep()
            log.info("relay caps: %s, %s (%d stale groups removed)", tier.name, describe(self.backend), swept)

    async def spawn(self, argv: Sequence[str], env: Mapping[str, str], log_path: Path | None) -> CappedHandle:
        group = self._create(argv)
        try:
            handle = await self.inner.spawn(argv, {**env, **tier_env(self.tier, group)}, log_path)
        except BaseException:
            if group is not None:
                group.remove()
            raise
        if group is not None:
            await self._place(handle, group)
        return CappedHandle(handle, group, self.tier, self.boost_seconds, boost=not is_standby(argv))

    def _name(self, argv: Sequence[str]) -> str:
        """A relay's group's name: its room and incarnation, so that a control plane adopting the
        relay finds the very group its spawner made for it (`adopt`); where the command line names
        no incarnation (a standby, a group process), a serial unique across control-plane restarts.
        The room part is what a long name loses, never the unique tail."""
        namespace, room_name = room_of(argv)
        room = f"{namespace or ''}.{room_name}" if room_name else "warm"
        tail = incarnation_of(argv) or f"{os.getpid()}-{next(self._serial)}"
        return f"{safe_name(room)[:150]}.{safe_name(tail)[:50]}"

    def _create(self, argv: Sequence[str]) -> Cgroup | None:
        """The relay's own group, named after its room (None without cgroups)."""
        if self.backend is None:
            return None
        standby = is_standby(argv)
        group = self.backend.create(
            self._name(argv), self.tier, cpu_capped=standby or self.boost_seconds <= 0
        )
        if standby:
            group.idle_cpu(True)
        return group

    async def _place(self, handle: ProcessHandle, group: Cgroup) -> None:
        """Moves the relay into its group. In a thread: a v1 migration waits out an RCU grace
        period (5-20 ms here), which must not stall the control plane's event loop; the relay
        starts meanwhile. A relay that cannot be capped, or whose spawn is cancelled meanwhile
        (nobody would hold its handle), is killed and its group removed once it is gone."""
        add = asyncio.ensure_future(asyncio.to_thread(group.add, handle.pid))
        try:
            await asyncio.shield(add)  # cancelled or not, the thread writes the pid: undo waits for it
        except BaseException as exc:
            if isinstance(exc, CgroupError):
                log.exception("could not cap relay pid %s: stopping it", handle.pid)
            handle.kill()
            undo = asyncio.get_running_loop().create_task(self._undo(handle, group, add))
            self._undoing.add(undo)
            undo.add_done_callback(self._undoing.discard)
            await asyncio.shield(undo)
            raise

    @staticmethod
    async def _undo(handle: ProcessHandle, group: Cgroup, add: asyncio.Future[None]) -> None:
        with contextlib.suppress(Exception):  # its error, if any, is the caller's
            await add
        await handle.wait()
        await remove_group(group)

    def adopt(self, pid: int) -> CappedHandle | None:
        """A relay an earlier control plane started: watched by pid, in its group with every cap
        on, its CPU quota too (its boost, if it was still in it, ends here). One that control
        plane was killed before moving in (wholly, or into every v1 hierarchy) is moved now,
        into the group made for it, so that no relay is left uncapped for life; one that cannot
        be is stopped, as a spawn's would be. In the event loop: this is a control plane's start,
        and a move (rare) takes tens of milliseconds at most. None without cgroups, or for a
        process that is no relay (only a relay is ever moved into a group)."""
        if self.backend is None:
            return None
        handle = PidHandle(pid)
        group = self.backend.find(pid)
        if group is not None:
            try:
                group.limit_cpu(self.tier)
            except CgroupError:
                log.exception("could not apply the CPU quota to adopted relay pid %s", pid)
            return CappedHandle(handle, group, self.tier, self.boost_seconds, boost=False)
        argv = relay_command(pid)
        if argv is None:
            return None
        try:
            group = self.backend.create(self._name(argv), self.tier)
            self.backend.move_in(pid, group)
        except OSError:  # CgroupError, or the relay gone meanwhile
            log.exception("could not cap adopted relay pid %s: stopping it", pid)
            handle.kill()
        else:
            log.warning("adopted relay pid %s was outside its group: moved in, capped", pid)
        return CappedHandle(handle, group, self.tier, self.boost_seconds, boost=False)

    async def start(self) -> None:
        start = getattr(self.inner, "start", None)
        if start is not None:
            await start()

    async def close(self) -> None:
        if self._undoing:
            await asyncio.wait(self._undoing, timeout=5.0)
        close = getattr(self.inner, "close", None)
        if close is not None:
            await close()
