"""Pacing: a relay near its CPU budget reads its sockets less often, instead of being throttled.

A relay is woken for every packet that arrives and fans each one out at once. In a 32-player
room at 30 Hz that is 960 wake-ups and 29,760 sends a second, and on a virtual machine a
wake-up and a loopback send each cost about as much as the room's own work on a message
(docs/architecture.md). Capped at realtime1.nano (an eighth of a core), that load took 88-94%
of the cap, and the kernel's throttling then stalled the room for most of a 10 ms period at a
time: p99 went to 25-157 ms.

So a relay whose CPU (read every `WINDOW` seconds, smoothed) reaches `PACE_ON` of its budget
paces itself. After a pass that flushed output, it sleeps until `pace` seconds after that pass's
first input was read, and only then reads again (once a pass: output whose input was read before
the last rest ended does not rest again). The next pass finds every packet that came in
the meantime, and each member gets one packet holding all of their messages, so the same
messages take fewer wake-ups, reads and sends. A message waits at most `pace` longer, so the
pace is kept as short as holds the CPU at `PACE_TARGET` of the budget: it starts at `MIN_PACE`
and is scaled each window by the share over the target, up to the relay's `max_pace` (8 ms:
under one period of the tiers' CPU caps, 10 ms; a busy room's p99 sits at the longest pace, which
it reaches at once after a window at `PACE_AT_ONCE`). It stops when the shortest pace holds the CPU
under `PACE_OFF`. A pass that read a full batch of datagrams
(more are waiting), or that already took longer than the pace, does not sleep, so a saturated
relay loses no time to it. A relay with no budget never paces (`RelayConfig.cpu_budget`;
`relay serve` sets its tier's).

`Pacer` is the controller, pure: CPU readings in, the pace out; relay/server/_pacing.c's where
that extension was built (so the port's read in C, relay/server/_lane.c, samples an unpaced
relay's window with no Python call), else `PyPacer` here, the same bit for bit (`NATIVE` says
which). `LoopPacer` is its event-loop side. There is one per event loop, shared by the rooms a
process serves: a group's rooms sleep once per pass, not once each, and its budget is the sum of
theirs. Only uvloop's loop is paced: asyncio's own reads one datagram a wake, so a rest would
hold each datagram rather than gather them.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass

from relay.settings import native

WINDOW = 0.1
"""Seconds of CPU readings per controller step (on a pass's end, so a quiet relay reads none)."""
SMOOTHING = 0.3
"""Weight of the newest window in the share the controller acts on: one window's reading swings
with the packets that happened to fall in it, and a pace shortened on one low reading put a relay
near its cap over it in the next."""
PACE_TARGET = 0.55
"""Share of the budget a paced relay holds: the pace is the shortest that keeps it there (within
issue 20's 60%), since the pace is what every message waits at most."""
PACE_ON = PACE_TARGET
"""Share of the budget at or over which an unpaced relay starts pacing."""
PACE_AT_ONCE = 0.8
"""Share of the budget at or over which the pace goes to its longest at once: a room that
arrives all together (a match starting) would otherwise be throttled while the pace grows."""
PACE_OFF = 0.25
"""Share of the budget under which a relay at the shortest pace stops pacing (the gap keeps a
relay that paces at its shortest from stopping and starting)."""
MAX_STEP = 1.5
"""The most the pace changes by (times, or divided) in one window."""
DATAGRAMS_PER_READ = 32
"""Datagrams uvloop (libuv) reads from a socket in one wake at most."""
MIN_PACE = 0.001
"""Seconds: the first pace, and the shortest kept."""


@dataclass(slots=True)
class PyPacer:
    """The controller: `sample(now, cpu)` every WINDOW seconds or more; `pace` is what to keep.

    A pass costs about the same whatever it carries (a send per member), so the relay's CPU is
    about `per_pass / pace + per_message x rate`: the pace is scaled by the smoothed share over
    PACE_TARGET each window, which settles where the share is PACE_TARGET (the per-message part
    only slows the approach), or at `max_pace` where even that is more."""

    budget: float = 0.0  # cores; 0: never pace
    max_pace: float = 0.01
    pace: float = 0.0
    share: float = 0.0  # smoothed, of the budget
    next_sample: float = -math.inf
    lane_due: float = -math.inf
    """When a relay whose UDP port is read in C (relay/server/_lane.c) next tells the pacer of a
    read: after every read while it paces (it rests then), else when its CPU window ends (where
    the pacer is the C one, the lane then samples it itself, with time.process_time's clock, and
    tells the relay only if that starts the pace). A field, kept by `sample` and `settle`: the
    lane reads it at every read, where a property would be a Python call at each wake-up."""
    _last: tuple[float, float] | None = None

    def sample(self, now: float, cpu: float) -> float:
        """`cpu`: the process's CPU seconds so far, read at `now` (seconds, monotonic)."""
        pace = self._step(now, cpu)
        self.settle()
        return pace

    def settle(self) -> None:
        """`lane_due` anew, after `pace` or `next_sample` changed."""
        self.lane_due = -math.inf if self.pace else self.next_sample

    def _step(self, now: float, cpu: float) -> float:
        last, self._last = self._last, (now, cpu)
        self.next_sample = now + WINDOW
        if last is None or now <= last[0]:
            return self.pace
        budget = self.budget
        if budget <= 0:
            self.pace = self.share = 0.0
            return 0.0
        reading = (cpu - last[1]) / (now - last[0]) / budget  # of the budget, over the window
        if reading >= PACE_AT_ONCE:  # throttling is near: no time to approach
            # smoothed from PACE_AT_ONCE, not from the burst's reading, which would hold the
            # longest pace for a second after the burst
            self.share = max(self.share, PACE_AT_ONCE)
            self.pace = self.max_pace
            return self.pace
        self.share = share = self.share + SMOOTHING * (reading - self.share)
        if not self.pace:
            if share >= PACE_ON:
                self.pace = min(self.max_pace, MIN_PACE)
            return self.pace
        pace = self.pace * min(MAX_STEP, max(1 / MAX_STEP, share / PACE_TARGET))
        if pace < MIN_PACE:
            pace = MIN_PACE if share >= PACE_OFF else 0.0
        self.pace = min(self.max_pace, pace)
        return self.pace


def _native() -> type | None:
    """The C Pacer, if built and not refused by RELAY_PURE_PYTHON. Where it is built it gets this
    module's constants either way, so that it can be held to PyPacer under RELAY_PURE_PYTHON too
    (tests/server/test_pacing_native.py)."""
    with contextlib.suppress(ImportError):
        from relay.server import _pacing

        _pacing.configure(
            window=WINDOW,
            smoothing=SMOOTHING,
            pace_target=PACE_TARGET,
            pace_on=PACE_ON,
            pace_at_once=PACE_AT_ONCE,
            pace_off=PACE_OFF,
            max_step=MAX_STEP,
            min_pace=MIN_PACE,
        )
    built = native("relay.server._pacing")
    return built.Pacer if built is not None else None


_built = _native()
NATIVE = _built is not None
"""Whether Pacer is relay/server/_pacing.c's."""
Pacer: type[PyPacer] = _built if _built is not None else PyPacer


class LoopPacer:
    """The pacer of one event loop (`for_loop`): relays `join` it with their budget, and tell it
    of each pass that flushed output (`passed`); at the end of that pass it sleeps for the pace."""

    def __init__(
        self, read_cpu: Callable[[], float] = time.process_time, sleep: Callable[[float], None] = time.sleep
    ) -> None:
        self.pacer = Pacer()
        self._read_cpu = read_cpu
        self._sleep = sleep
        self._budgets: dict[object, tuple[float, float]] = {}  # relay -> (budget, max_pace)
        self._cap = math.inf  # the process's CPU quota where lower than its relays' budgets
        self._first = math.inf  # when the first input of this pass's output arrived
        self._flushes = 0  # flushes scheduled in this pass and not yet run
        self._full = False  # a relay's pass read a full batch of datagrams
        self._rested_until = -math.inf  # when the last rest ended (monotonic)
        self._paced = False  # the pace at the last rest was not 0
        self._pace_listeners: list[Callable[[], None]] = []

    def join(self, relay: object, budget: float, max_pace: float) -> None:
        self._budgets[relay] = (budget, max_pace)
        self._recount()

    def leave(self, relay: object) -> None:
        if self._budgets.pop(relay, None) is not None:
            self._recount()

    def limit(self, cap: float) -> None:
        """The process may use no more than `cap` cores (the caps guard read its cgroup's quota,
        a pod limited below its tier): the budget is the lower of the two."""
        self._cap = cap
        self._recount()

    def _recount(self) -> None:
        pacer = self.pacer
        pacer.budget = min(self._cap, sum(budget for budget, _ in self._budgets.values()))
        pacer.max_pace = min((pace for _, pace in self._budgets.values()), default=0.0)
        pacer.pace = min(pacer.pace, pacer.max_pace)
        pacer.settle()

    def add_pace_listener(self, callback: Callable[[], None]) -> None:
        """`callback()` whenever the loop begins to pace: its CPU has reached PACE_ON of its
        budget (the caps guard then looks at it every second, not every ten)."""
        self._pace_listeners.append(callback)

    def remove_pace_listener(self, callback: Callable[[], None]) -> None:
        with contextlib.suppress(ValueError):
            self._pace_listeners.remove(callback)

    @property
    def pacing(self) -> bool:
        return self.pacer.pace > 0

    def scheduled(self) -> None:
        """A relay scheduled its flush for the end of this pass."""
        self._flushes += 1

    def passed(self, first_input: float, full: bool = False) -> None:
        """A relay flushed output whose first input arrived at `first_input` (monotonic); `full`:
        its pass read as many datagrams as one wake reads, so more are waiting and this pass
        does not rest. The last flush of the pass rests: sleeping in a callback of its own would
        let the next poll's input in before it, and hold that input's output for the sleep."""
        if first_input < self._first:
            self._first = first_input
        self._full = self._full or full
        self._flushes -= 1
        if self._flushes <= 0:
            self._flushes = 0
            self._rest()

    def _rest(self) -> None:
        """Sleeps until `pace` after the pass's first input; not for output whose input was read
        before the last rest ended: it waited through that one (a pass whose reads were flushed
        at two points, the UDP port's read and its WebSocket members' `ws_flush`)."""
        first, self._first = self._first, math.inf
        full, self._full = self._full, False
        now = time.monotonic()
        pacer = self.pacer
        if now >= pacer.next_sample:
            pacer.sample(now, self._read_cpu())
        paced = pacer.pace > 0
        if paced and not self._paced:  # the pace begins (here, or in the lane's own sample)
            for callback in self._pace_listeners:
                callback()
        self._paced = paced
        wait = first + pacer.pace - now
        if pacer.pace and wait > 0 and not full and first >= self._rested_until:
            self._sleep(wait)
            self._rested_until = now + wait


_pacers: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, LoopPacer] = weakref.WeakKeyDictionary()


def for_loop(loop: asyncio.AbstractEventLoop) -> LoopPacer | None:
    """The pacer of `loop`, made on first use; None unless `loop` is uvloop's (as `relay serve`'s
    is). asyncio's own loop reads one datagram a wake, so a rest would hold every datagram for
    a pace, not gather them."""
    if not type(loop).__module__.startswith("uvloop"):
        return None
    pacer = _pacers.get(loop)
    if pacer is None:
        pacer = _pacers[loop] = LoopPacer()
    return pacer
