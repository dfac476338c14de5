"""Warm relays: processes forked, capped and rehearsed before any room wants them.

    spawner = WarmPool(CappedSpawner(ZygoteSpawner()), size=2)   # a Spawner like any other
    handle = await spawner.spawn(argv, env, log_path)            # a standby, now this room's relay

A zygote fork still leaves a room waiting for the child's own start: the fork, the cgroup
placement and, above all, the copy-on-write faults of running the relay code for the first time
(relay/host/standby.py). The pool keeps `size` standbys (`relay serve --standby`) that do all of
that ahead of demand; a spawn of this interpreter's `relay serve` takes the oldest one that has
finished rehearsing and hands it the spawn request (argv, env, log path) through its stdin, and
the pool forks a replacement in the background, in the next lull (no room waiting for a fresh
fork, none wanted for 50 ms): rooms come first, a pool drained by a burst refills after it. A
standby still rehearsing is never handed a room (it would start slower than a fresh fork): when
none is ready, or the standby cannot be handed its room, the spawn goes to the inner spawner as
before. So does a spawn request larger than a standby reads (standby.MAX_ASSIGNMENT, 1 MiB, mostly
the environment; the template's channel takes it), leaving the standbys for the next rooms and
counting no failure. A warm relay is an optimisation, never a dependency.

A standby costs what an idle room costs (its unique memory); it holds no room secret until it is
assigned, and listens on no port. It exits by itself when its stdin closes (the pool or the
zygote template went away), so a control-plane restart leaves none behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
import time
from collections import deque
from collections.abc import Mapping, Sequence
from pathlib import Path

from relay.host.spawner import ProcessHandle, Spawner, relay_environment
from relay.host.standby import MAX_ASSIGNMENT, STANDBY_FLAG, assignment_fits
from relay.host.zygote import serve_args

log = logging.getLogger("relay.host.warm_pool")

MAX_RETRY_DELAY = 30.0
REHEARSAL_TIMEOUT = 30.0
"""A standby that has not said it rehearsed by then is handed out anyway (it does start)."""


class WarmPool:
    def __init__(
        self,
        inner: Spawner,
        size: int = 2,
        python: str = sys.executable,
        log_path: Path | None = None,
        retry_delay: float = 0.5,
        refill_after: float = 0.05,
    ) -> None:
        self.inner = inner
        self.size = size
        self.python = python
        self.log_path = log_path
        self.retry_delay = retry_delay
        self.refill_after = refill_after  # seconds without a spawn before a standby is forked
        self._last_spawn = 0.0
        self.handed_out = 0  # rooms given a standby
        self.forked = 0  # rooms given a fresh fork: no standby was ready, or it could not take the room
        self.failures = 0  # standbys that could not be started, died idle or refused a room, in a row
        self._ready: deque[ProcessHandle] = deque()  # rehearsed, oldest first
        self._idle: dict[int, ProcessHandle] = {}  # every idle standby, rehearsed or not
        self._watchers: dict[int, asyncio.Task[None]] = {}
        self._reaping: set[asyncio.Task[int | None]] = set()  # standbys killed, not yet gone
        self._filler: asyncio.Task[None] | None = None
        self._closed = False
        self._cold = 0  # spawns the inner spawner is doing for rooms right now
        self._no_cold = asyncio.Event()
        self._no_cold.set()

    @property
    def standby_argv(self) -> list[str]:
        return [self.python, "-m", "relay.cli", "serve", STANDBY_FLAG]

    @property
    def ready_pids(self) -> list[int]:
        """Standbys that have rehearsed and wait for a room."""
        return [h.pid for h in self._ready]

    @property
    def standby_pids(self) -> list[int]:
        """Every idle standby, rehearsing or ready."""
        return list(self._idle)

    async def start(self) -> None:
        start = getattr(self.inner, "start", None)
        if start is not None:
            await start()
        self._refill()

    async def spawn(
        self, argv: Sequence[str], env: Mapping[str, str], log_path: Path | None
    ) -> ProcessHandle:
        self._last_spawn = time.monotonic()
        warm = serve_args(argv, self.python) is not None
        if warm and self._ready and not assignment_fits(argv, env, log_path):
            log.warning("a spawn request over a standby's %d bytes: a fresh fork", MAX_ASSIGNMENT)
            warm = False  # the standbys wait for the next room
        if warm:
            while self._ready:
                handle = self._ready.popleft()
                self._idle.pop(handle.pid, None)
                watcher = self._watchers.pop(handle.pid, None)
                if watcher is not None:
                    watcher.cancel()
                if await self._assign(handle, argv, env, log_path):
                    self.handed_out += 1
                    self.failures = 0
                    self._refill()
                    return handle
            self._refill()
        self.forked += 1
        self._cold += 1
        self._no_cold.clear()
        try:
            return await self.inner.spawn(argv, env, log_path)
        finally:
            self._cold -= 1
            if not self._cold:
                self._no_cold.set()

    async def _assign(
        self, handle: ProcessHandle, argv: Sequence[str], env: Mapping[str, str], log_path: Path | None
    ) -> bool:
        """Hands a standby (out of the pool's lists by now) its room; False if it could not take
        it. One that failed, or whose spawn was cancelled meanwhile (it may have its room, and
        nobody else holds its handle), is killed."""
        try:
            await handle.assign(argv, env, log_path)  # type: ignore[attr-defined]
        except Exception as exc:
            log.warning("standby pid %s could not take its room (%r): starting another", handle.pid, exc)
            self.failures += 1
            handle.kill()
            self._reap(handle)
            return False
        except BaseException:
            handle.kill()
            self._reap(handle)
            raise
        return True

    def adopt(self, pid: int) -> ProcessHandle | None:
        """A relay an earlier control plane started: the inner spawner's handle for it, if it has one."""
        adopt = getattr(self.inner, "adopt", None)
        return None if adopt is None else adopt(pid)

    def _refill(self) -> None:
        if not self._closed and self.size > 0 and (self._filler is None or self._filler.done()):
            self._filler = asyncio.get_running_loop().create_task(self._fill())

    async def _fill(self) -> None:
        env = relay_environment()
        while not self._closed and len(self._idle) < self.size:
            if self.failures:
                await asyncio.sleep(min(MAX_RETRY_DELAY, self.retry_delay * 2 ** min(self.failures - 1, 10)))
            await self._lull()
            try:
                handle = await self.inner.spawn(self.standby_argv, env, self.log_path)
            except Exception:
                log.exception("could not start a standby relay")
                self.failures += 1
                continue
            if not callable(getattr(handle, "assign", None)):
                log.warning("this spawner cannot hand a standby its room: no warm relays")
                handle.kill()
                self._reap(handle)
                self.size = 0
                return
            if self._closed:
                handle.terminate()
                self._reap(handle)
                return
            self._idle[handle.pid] = handle
            self._watchers[handle.pid] = asyncio.get_running_loop().create_task(self._watch(handle))

    async def _lull(self) -> None:
        """Rooms first: while rooms are being spawned (a burst, or one after another) the template
        and the CPU are theirs, and a standby forked in between would only delay them; it is
        forked once no room waits for a fresh fork and none was wanted for `refill_after`."""
        while True:
            await self._no_cold.wait()
            wait = self._last_spawn + self.refill_after - time.monotonic()
            if wait <= 0 and self._no_cold.is_set():
                return
            await asyncio.sleep(max(wait, 0.001))

    async def _watch(self, handle: ProcessHandle) -> None:
        """Puts the standby in line once it has rehearsed; one that ends while idle leaves the pool
        (and is replaced). Cancelled when the standby is handed a room."""
        exited = asyncio.ensure_future(handle.wait())
        said: asyncio.Future[None] | None = None
        try:
            rehearsed = getattr(handle, "rehearsed", None)
            if rehearsed is not None:
                said = asyncio.ensure_future(rehearsed())
                await asyncio.wait(
                    {exited, said}, timeout=REHEARSAL_TIMEOUT, return_when=asyncio.FIRST_COMPLETED
                )
                said.cancel()
            if not exited.done():
                self._ready.append(handle)
            code = await exited
        finally:
            exited.cancel()
            if said is not None:  # closed during the rehearsal
                said.cancel()
        self._watchers.pop(handle.pid, None)
        self._idle.pop(handle.pid, None)
        with contextlib.suppress(ValueError):
            self._ready.remove(handle)
        if not self._closed:
            log.warning("standby relay pid %s exited idle with %s", handle.pid, code)
            self.failures += 1
            self._refill()

    def _reap(self, handle: ProcessHandle) -> None:
        """Waits for a killed standby in the background (a capped one's cgroup goes then); close()
        waits for these too."""
        task = asyncio.get_running_loop().create_task(handle.wait())
        self._reaping.add(task)
        task.add_done_callback(self._reaped)

    def _reaped(self, task: asyncio.Task[int | None]) -> None:
        self._reaping.discard(task)
        if not task.cancelled():
            task.exception()

    async def close(self) -> None:
        """Stops the standbys (relays already handed out keep running), then the inner spawner."""
        self._closed = True
        if self._filler is not None:
            self._filler.cancel()
            await asyncio.gather(self._filler, return_exceptions=True)
        self._ready.clear()
        watchers = dict(self._watchers)
        for task in watchers.values():
            task.cancel()
        await asyncio.gather(*watchers.values(), return_exceptions=True)
        self._watchers.clear()
        handles, self._idle = list(self._idle.values()), {}
        for handle in handles:
            handle.terminate()
        waits = [*(asyncio.ensure_future(h.wait()) for h in handles), *self._reaping]
        if waits:
            await asyncio.wait(waits, timeout=5.0)
        close = getattr(self.inner, "close", None)
        if close is not None:
            await close()
