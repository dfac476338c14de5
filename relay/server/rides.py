"""Periodic work that rides on a pass the relay has anyway, instead of waking the process.

Every wake-up of a relay process costs some hundreds of microseconds of CPU on a virtual
machine, whatever the process does once awake (docs/architecture.md): the caps guard's look
each second cost about that, nearly all of it the wake-up. A room in play passes every few
milliseconds. So periodic work asks for the first pass at or after its time (`Rides.ride`; a
task sleeps with `pass_after`; a plain function runs with `Periodic`), with a timer of its own
only as a fallback, for a room that falls silent. One `Rides` per event loop (`for_loop`): every
relay a process serves runs the rides that are due at the end of its flush and of its timer
(relay/server/app.py), so a group's guard rides on any of its rooms.
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
import time
import weakref
from collections.abc import Callable

log = logging.getLogger("relay.server")

Rider = Callable[[float], None]
"""Called with the pass's monotonic time."""


class Rides:
    """The rides of one event loop: `due` is the earliest (inf: none), for a test per pass."""

    __slots__ = ("_riders", "due")

    def __init__(self) -> None:
        self.due = math.inf
        self._riders: dict[object, tuple[float, Rider]] = {}

    def ride(self, owner: object, at: float, rider: Rider) -> None:
        """`rider(now)` once, at the end of the first pass at or after `at` (monotonic); replaces
        what `owner` asked for before."""
        self._riders[owner] = (at, rider)
        self._recount()

    def cancel(self, owner: object) -> None:
        if self._riders.pop(owner, None) is not None:
            self._recount()

    def run(self, now: float) -> None:
        """The end of a pass at `now`: the rides due run (each once; a failure is logged, the
        pass goes on)."""
        due = [(owner, rider) for owner, (at, rider) in self._riders.items() if at <= now]
        for owner, _ in due:
            del self._riders[owner]
        self._recount()
        for _, rider in due:
            try:
                rider(now)
            except Exception:
                log.exception("a ride on the relay's pass failed")

    def _recount(self) -> None:
        self.due = min((at for at, _ in self._riders.values()), default=math.inf)


QUIET_PASS = 2.25
"""Seconds within which a room with members passes even while none of them sends: their clients
PING every 2 s (docs/protocol.md 6; both of the project's clients), and members who joined
together PING together, so a quiet room's passes come in a burst every 2 s. A ride that may wait
this long beyond its time catches the next burst."""


SPREAD = 0.25
"""`pass_after` waits `least` give or take this share of it, at random. Its callers are periodic
(the caps guard each second, the agent's heartbeat), and a periodic ride stays where it fell:
the rooms of a host that started together, or fell silent and resumed together, looked and
heartbeated in the same few milliseconds of every second from then on, and at 250 rooms on a
core packets waited 1-2 ms for it once a second (`perf sched`, docs/architecture.md, "The
rooms-per-core search"). The spread scatters them within a few periods, and keeps the mean
period."""


async def pass_after(least: float, most: float | None = None) -> bool:
    """Returns at the end of the loop's first pass `least` seconds (give or take SPREAD of it)
    from now or later (True), or `most` seconds from now (default that wait plus QUIET_PASS)
    where none came by then (False): a periodic task's sleep that wakes the process only where
    nothing else did."""
    least *= random.uniform(1 - SPREAD, 1 + SPREAD)
    if most is None:
        most = least + QUIET_PASS
    loop = asyncio.get_running_loop()
    rides = for_loop(loop)
    done: asyncio.Future[bool] = loop.create_future()

    def wake(rode: bool) -> None:
        if not done.done():
            done.set_result(rode)

    rides.ride(done, time.monotonic() + least, lambda now: wake(True))
    fallback = loop.call_later(most, wake, False)
    try:
        return await done
    finally:
        fallback.cancel()
        rides.cancel(done)


TIMER_STRIDE = 2
"""How many periods beyond its slack `Periodic` sets its timer when it moves it: the larger, the
fewer moves (each a timer cancelled and one armed) and the later a silent room's run."""


class Periodic:
    """`rider(now)` every `period` seconds, give or take SPREAD of it, called from the end of the
    loop's first pass at or after its time (`Rides`): periodic work with no task, future or timer
    of its own per run (a task that slept in `pass_after` met all three cold at every run).
    Where no pass comes (members gone silent) a timer runs it, from half `slack` to `slack` plus
    TIMER_STRIDE periods after its time: a run moves that timer on only where it would come
    sooner than half `slack` after the next run's time, and then by that much, so a room that
    passes at least every half `slack` moves it every few runs and never meets it."""

    __slots__ = ("_deadline", "_due", "_loop", "_rides", "_timer", "fallbacks", "period", "rider", "slack")

    def __init__(self, period: float, rider: Rider, slack: float | None = None) -> None:
        self.period = period
        self.rider = rider
        self.slack = QUIET_PASS if slack is None else slack
        self.fallbacks = 0
        """Runs its own timer made (no pass came)."""
        self._loop: asyncio.AbstractEventLoop | None = None
        self._rides: Rides | None = None  # None: stopped
        self._timer: asyncio.TimerHandle | None = None
        self._deadline = -math.inf  # the timer's, monotonic (-inf: none)
        self._due = math.inf  # the next run's, monotonic (inf: none)

    @property
    def running(self) -> bool:
        return self._rides is not None

    def start(self) -> None:
        """Runs from now on, the first run a period from now; while running, nothing changes."""
        if self._rides is None:
            loop = asyncio.get_running_loop()
            self._loop, self._rides = loop, for_loop(loop)
            self._next(time.monotonic())

    def every(self, period: float, now: float) -> None:
        """Runs every `period` from now on (from its start, if stopped): where the next run is
        due later than a `period` (give or take SPREAD) from `now`, it comes that far from `now`."""
        self.period = period
        if self._rides is not None and self._due > now + period * (1 + SPREAD):
            self._next(now)

    def stop(self) -> None:
        """No run from now on (the rider may call this)."""
        if self._rides is not None:
            self._rides.cancel(self)
            self._rides = None
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._deadline = -math.inf

    def _next(self, now: float) -> None:
        rides, loop = self._rides, self._loop
        assert rides is not None and loop is not None
        self._due = due = now + self.period * random.uniform(1 - SPREAD, 1 + SPREAD)
        rides.ride(self, due, self._ride)
        if self._deadline < due + self.slack / 2:
            if self._timer is not None:
                self._timer.cancel()
            self._deadline = due + self.slack + TIMER_STRIDE * self.period
            self._timer = loop.call_later(self._deadline - now, self._fallback)

    def _ride(self, now: float) -> None:
        self._next(now)
        self.rider(now)  # a failure is Rides.run's to log

    def _fallback(self) -> None:
        self._timer, self._deadline = None, -math.inf
        if self._rides is None:
            return
        self.fallbacks += 1
        now = time.monotonic()
        self._next(now)  # in place of the ride no pass came for
        try:
            self.rider(now)
        except Exception:
            log.exception("a periodic ride failed on its own timer")


_rides: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Rides] = weakref.WeakKeyDictionary()


def for_loop(loop: asyncio.AbstractEventLoop) -> Rides:
    """The rides of `loop`, made on first use."""
    rides = _rides.get(loop)
    if rides is None:
        rides = _rides[loop] = Rides()
    return rides
