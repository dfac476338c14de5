"""Relays started the way the local provisioner starts them, for scenarios that measure the
deployed shape: one `relay serve` process per room (or N rooms per process, the
rooms-per-process tier: relay/host/group_spawner.py), forked from the zygote template
(relay/host/zygote.py), each in a cgroup of its own with the realtime1.nano caps where this host
lets us write cgroups (relay/host/capped_spawner.py), every relay pinned to the relay CPU.

The spawners are asyncio; a scenario's harness is not, so they run on an event loop in a thread
of their own for as long as the relays live.
"""

from __future__ import annotations

import asyncio
import os
import re
import tempfile
import threading
import time
from collections.abc import Coroutine
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, TypeVar

from relay.agent.launch import RelayLaunch
from relay.agent.tiers import NANO
from relay.control.app import make_spawner
from relay.control.config import ControlConfig, default_relay_command
from relay.host.capped_spawner import CappedSpawner
from relay.host.cgroups import describe
from relay.host.group_spawner import GroupSpawner
from relay.host.spawner import ProcessHandle, Spawner, relay_environment
from relay.protocol.keys import generate_room_key
from relay.server.config import RelayConfig

_LISTENING = re.compile(r"relay listening udp\+ws ([\d.]+):(\d+)")
T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class SpawnedRelay:
    host: str
    port: int
    key: str
    pid: int


class SpawnedRelays:
    """`count` relays, each its own process and room; `close()` stops them all."""

    def __init__(
        self,
        count: int,
        overrides: dict[str, Any] | None = None,
        relay_cpus: set[int] | None = None,
        capped: bool = True,
        timeout: float = 60.0,
        rooms_per_process: int = 1,
    ) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        self._logs = tempfile.TemporaryDirectory(prefix="spawned-relays-")
        # the control plane's own spawner, as `relay control` builds it (no warm standbys: every
        # relay here is wanted at once, and a standby would only sit on the relay CPU)
        config = ControlConfig(
            data_dir=Path(self._logs.name),
            relay_caps="auto" if capped else "off",
            relay_rooms_per_process=rooms_per_process,
            relay_warm_relays=0,
        )
        self._spawner: Spawner = make_spawner(config)
        capped_by = self._spawner.inner if isinstance(self._spawner, GroupSpawner) else self._spawner
        backend = capped_by.backend if isinstance(capped_by, CappedSpawner) else None
        grouped = rooms_per_process > 1  # the rooms-per-process tier, as `relay control --rooms-per-process`
        each = f"{rooms_per_process} rooms per relay process, " if grouped else ""
        owner = (
            f"each relay process in its own {NANO.name} x {rooms_per_process}"
            if grouped
            else f"each relay in its own {NANO.name}"
        )
        self.caps = (
            f"{each}{owner} cgroup ({describe(backend)})"
            if backend is not None
            else f"{each}soft {NANO.name} caps, in-process (no writable cgroup on this host)"
            if capped
            else f"{each}uncapped"
        )
        self._handles: list[ProcessHandle] = []
        self.relays: list[SpawnedRelay] = []
        try:
            self._run(self._start(count, overrides or {}, relay_cpus, timeout))
        except BaseException:
            self.close()
            raise

    def _run(self, coro: Coroutine[Any, Any, T], timeout: float = 300.0) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    async def _start(
        self, count: int, overrides: dict[str, Any], relay_cpus: set[int] | None, timeout: float
    ) -> None:
        base = RelayLaunch(replace(RelayConfig(), **overrides))
        command = default_relay_command()
        logs = Path(self._logs.name)
        keys = []
        pinned: set[int] = set()
        for n in range(count):
            key = generate_room_key()
            launch = replace(
                base.with_room(room_key=key, port=0),
                namespace="bench",
                room=f"room{n}",
                incarnation=f"bench-{n}",
            )
            handle = await self._spawner.spawn(
                [*command, *launch.argv()], relay_environment(launch.env()), logs / f"room{n}.log"
            )
            if relay_cpus and handle.pid not in pinned:
                os.sched_setaffinity(handle.pid, relay_cpus)
                pinned.add(handle.pid)
            self._handles.append(handle)
            keys.append(key)
        deadline = time.monotonic() + timeout
        for n, (key, handle) in enumerate(zip(keys, self._handles, strict=True)):
            log = logs / f"room{n}.log"
            while True:
                found = _LISTENING.search(log.read_text()) if log.exists() else None
                if found:
                    self.relays.append(SpawnedRelay(found.group(1), int(found.group(2)), key, handle.pid))
                    break
                if time.monotonic() > deadline:
                    raise TimeoutError(f"relay {n} did not listen within {timeout} s")
                await asyncio.sleep(0.01)

    async def _stop(self) -> None:
        for handle in self._handles:
            handle.terminate()
        await asyncio.gather(*(asyncio.wait_for(h.wait(), 10) for h in self._handles), return_exceptions=True)
        for handle in self._handles:
            handle.kill()
        close = getattr(self._spawner, "close", None)
        if close is not None:
            await close()

    def close(self) -> None:
        if self._thread.is_alive():
            try:
                self._run(self._stop(), 60)
            finally:
                self._loop.call_soon_threadsafe(self._loop.stop)
                self._thread.join(10)
        self._logs.cleanup()
