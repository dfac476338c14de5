"""Rides (relay/server/rides.py): periodic work on a pass the relay has anyway, and the caps
guard's look riding on a real relay's passes while its room plays."""

from __future__ import annotations

import asyncio
import logging
import math
import time

import pytest

from relay.agent.caps import CapsGuard
from relay.agent.tiers import NANO
from relay.embedded import room
from relay.protocol import messages as m
from relay.server import rides
from relay.server.rides import Periodic, Rides, for_loop, pass_after

from .helpers import passes
from .rawpeer import UdpPeer


def test_a_ride_runs_once_on_the_first_pass_at_or_after_its_time() -> None:
    rides, ran = Rides(), []
    rides.ride("guard", 10.0, ran.append)
    assert rides.due == 10.0
    rides.run(9.9)
    assert ran == []
    rides.run(10.2)
    rides.run(11.0)
    assert ran == [10.2] and rides.due == math.inf


def test_each_owner_has_one_ride_and_the_earliest_is_due() -> None:
    rides, ran = Rides(), []
    rides.ride("a", 5.0, lambda now: ran.append(("a", now)))
    rides.ride("a", 7.0, lambda now: ran.append(("a2", now)))  # replaces a's first
    rides.ride("b", 6.0, lambda now: ran.append(("b", now)))
    assert rides.due == 6.0
    rides.run(6.5)
    assert ran == [("b", 6.5)] and rides.due == 7.0
    rides.cancel("a")
    rides.run(8.0)
    assert ran == [("b", 6.5)] and rides.due == math.inf


def test_a_failing_ride_is_logged_and_the_others_run(caplog: pytest.LogCaptureFixture) -> None:
    rides, ran = Rides(), []

    def fail(now: float) -> None:
        raise RuntimeError("boom")

    rides.ride("bad", 1.0, fail)
    rides.ride("good", 1.0, ran.append)
    with caplog.at_level(logging.ERROR, "relay.server"):
        rides.run(2.0)
    assert ran == [2.0]
    assert "ride" in caplog.text and "boom" in caplog.text
    caplog.clear()  # the error this test asked for (every server test fails on a relay's error)


async def test_a_task_sleeping_for_a_pass_wakes_on_the_first_after_its_time_or_on_its_own_timer() -> None:
    loop = asyncio.get_running_loop()
    rides = for_loop(loop)

    def a_pass() -> None:  # what a relay's flush does at the end of its pass
        now = time.monotonic()
        if now >= rides.due:
            rides.run(now)

    start = time.monotonic()
    for delay in (0.02, 0.08, 0.12):
        loop.call_later(delay, a_pass)
    assert await pass_after(0.05, 0.5)  # the pass at 0.08, not the one at 0.02
    assert 0.07 <= time.monotonic() - start < 0.3
    await asyncio.sleep(0.06)  # past the pass at 0.12 (a wait from 0.08 could have ended there)
    start = time.monotonic()
    assert not await pass_after(0.05, 0.1)  # no pass came: its own timer
    assert time.monotonic() - start >= 0.09
    assert rides.due == math.inf


async def test_a_periodic_wait_is_spread_so_rooms_that_started_together_drift_apart(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Each wait is its period give or take SPREAD of it, at random: here the shortest draw,
    so a pass at 0.8 of the period ends it."""
    loop = asyncio.get_running_loop()
    riding = for_loop(loop)
    draws: list[tuple[float, float]] = []

    def shortest(low: float, high: float) -> float:
        draws.append((low, high))
        return low

    monkeypatch.setattr(rides.random, "uniform", shortest)
    start = time.monotonic()
    loop.call_later(0.08, lambda: riding.run(time.monotonic()))  # a relay's pass at 0.08
    assert await pass_after(0.1, 0.5)
    assert 0.07 <= time.monotonic() - start < 0.1
    assert draws == [(1 - rides.SPREAD, 1 + rides.SPREAD)]
    assert riding.due == math.inf


async def test_periodic_work_runs_on_passes_and_arms_its_timer_only_every_few_runs() -> None:
    """A room that passes every 5 ms, a run due every 50 ms: each run on a pass, none from its
    timer, and the timer moved on at one run in two or three (0.1 s of slack), not at each."""
    loop = asyncio.get_running_loop()
    riding = for_loop(loop)
    ran: list[float] = []
    timers: dict[int, object] = {}  # each held, so that no id is used again

    def run(now: float) -> None:
        ran.append(now)
        timers[id(periodic._timer)] = periodic._timer

    periodic = Periodic(0.05, run, slack=0.1)
    periodic.start()
    try:
        for _ in range(120):  # 0.6 s of passes
            await asyncio.sleep(0.005)
            now = time.monotonic()
            if now >= riding.due:
                riding.run(now)
        assert 8 <= len(ran) <= 16
        assert periodic.fallbacks == 0
        assert len(timers) <= 0.6 * len(ran)
    finally:
        periodic.stop()
    assert riding.due == math.inf and not periodic.running


async def test_periodic_work_runs_from_its_own_timer_where_no_pass_comes() -> None:
    ran: list[float] = []
    periodic = Periodic(0.02, ran.append, slack=0.02)
    start = time.monotonic()
    periodic.start()
    try:
        await asyncio.sleep(0.5)
    finally:
        periodic.stop()
    # a period, then its slack and TIMER_STRIDE periods: every 0.075-0.085 s
    assert periodic.fallbacks == len(ran) >= 4
    assert ran[0] - start >= 0.02 * (1 - rides.SPREAD) + 0.02 + rides.TIMER_STRIDE * 0.02
    count = len(ran)
    await asyncio.sleep(0.15)
    assert len(ran) == count  # stopped: its timer with it


async def test_periodic_work_given_a_shorter_period_runs_within_it_and_a_longer_one_waits() -> None:
    """The caps guard's looks: every ten seconds while its relay is calm, every second from the
    moment it paces (`Periodic.every`), and every ten again once calm."""
    riding = for_loop(asyncio.get_running_loop())
    ran: list[float] = []
    periodic = Periodic(10.0, ran.append)
    periodic.start()
    try:
        await passes(0.1)
        assert ran == []  # ten seconds away
        now = time.monotonic()
        periodic.every(0.02, now)
        assert riding.due <= now + 0.02 * (1 + rides.SPREAD)
        await passes(0.2)
        assert 5 <= len(ran) <= 12 and periodic.fallbacks == 0
        periodic.every(0.5, time.monotonic())  # longer: the run already due stays where it is
        await passes(0.05)
        count = len(ran)
        await passes(0.2)
        assert len(ran) == count  # and the next comes half a second after it
        periodic.every(10.0, time.monotonic())
    finally:
        periodic.stop()


async def test_periodic_work_that_stops_itself_runs_no_more_and_a_failure_is_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    riding = for_loop(asyncio.get_running_loop())
    ran: list[float] = []

    def once(now: float) -> None:
        ran.append(now)
        periodic.stop()

    periodic = Periodic(0.01, once, slack=0.02)
    periodic.start()
    periodic.start()  # running: nothing changes
    await asyncio.sleep(0.02)
    riding.run(time.monotonic())
    await asyncio.sleep(0.05)
    assert len(ran) == 1 and riding.due == math.inf and not periodic.running

    def fail(now: float) -> None:
        raise RuntimeError("boom")

    failing = Periodic(0.01, fail, slack=0.02)
    with caplog.at_level(logging.ERROR, "relay.server"):
        failing.start()
        await asyncio.sleep(0.1)  # its own timer (at 0.05 s), at least once
        failing.stop()
    assert failing.fallbacks >= 1 and "boom" in caplog.text
    caplog.clear()  # the error this test asked for


class _Counting:
    """A reading of the guard's (memory or CPU), counting the looks that read it."""

    def __init__(self) -> None:
        self.reads = 0

    def __call__(self) -> int:
        self.reads += 1
        return 0


async def test_the_guard_looks_on_passes_while_the_room_plays_and_on_its_timer_once_silent(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    interval = 0.1
    monkeypatch.setattr(rides, "QUIET_PASS", interval)  # these members send no PING when quiet
    async with room() as r:
        looks, cpu = _Counting(), _Counting()  # a look reads the memory first, then the CPU
        guard = CapsGuard(r.relay, NANO, "soft", interval=interval, read_memory=looks, read_cpu=cpu)
        r.relay.add_session_listener(guard.wake)
        guard.start()
        try:
            assert looks.reads == 0  # an empty room: the long wait
            a = await UdpPeer.open(r.key, r.port)
            b = await UdpPeer.open(r.key, r.port)
            await a.start("a")
            await b.start("b")
            await a.expect(m.MemberJoined)
            start = looks.reads
            assert start >= 1  # a session began: it looked at once
            for _ in range(60):  # 1.2 s of play at 50 Hz
                a.send(m.Send(b"tick").encode())
                await asyncio.sleep(0.02)
            playing = looks.reads - start
            assert 6 <= playing <= 13  # about one an interval
            assert guard.fallbacks == 0  # every one of them on a pass: no wake-up of its own
            assert cpu.reads == looks.reads  # each look read both
            await asyncio.sleep(12 * interval)  # members in the room, nobody sends
            assert guard.fallbacks >= 2  # its own timer, every fourth interval (rides.Periodic)
            assert looks.reads - start - playing >= 2
            a.close()
            b.close()
        finally:
            guard.stop()
        await asyncio.sleep(0.01)  # the guard's task ends
        assert for_loop(asyncio.get_running_loop()).due == math.inf  # stopped: no ride left
