"""Bot processes: several uvloop processes pinned to the load CPUs, driven by the harness.

The harness hands each process a `BotPlan` (its bots, the room(s), the behaviour, churn). A
process connects its bots and answers "connected"; the harness then sends one common start time
(CLOCK_MONOTONIC, shared by every process on the host), the bots play until the end time, keep
listening for a drain period, and the process answers with every bot's counters.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import random
import time
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, wait
from typing import Any

from loadtest.bots import Behaviour, Bot, drop_transport, index_of
from loadtest.machine import parse_cpus, pin


@dataclass(frozen=True, slots=True)
class Churn:
    """Per bot, on average every `every` seconds one of: leave and rejoin, or drop and resume."""

    every: float = 0.0  # 0 = no churn
    drop_share: float = 0.5  # share of churn events that drop the transport (resume) instead of leaving
    away_seconds: float = 0.5  # pause between a leave and the rejoin


@dataclass(frozen=True, slots=True)
class BotPlan:
    rooms: tuple[tuple[str, int, str], ...]  # (host, port, room key) per room
    bots: tuple[tuple[int, str, int], ...]  # (bot index, transport, room number)
    behaviour: Behaviour = field(default_factory=Behaviour)
    seconds: float = 5.0
    drain_seconds: float = 1.0
    step: int = 0
    churn: Churn = field(default_factory=Churn)
    connect_timeout: float = 10.0
    cpus: frozenset[int] | None = None


async def _churn(bot: Bot, plan: BotPlan, room: tuple[str, int, str], until: float) -> None:
    """Plays with interruptions: leave + rejoin (new connection id) or a dropped transport (resume)."""
    rng = random.Random(bot.index)
    while time.monotonic() < until:
        stay = rng.expovariate(1 / plan.churn.every)
        listener = asyncio.ensure_future(bot.listen())
        await bot.play(min(until, time.monotonic() + stay))
        if time.monotonic() >= until:
            listener.cancel()
            return
        if rng.random() < plan.churn.drop_share and drop_transport(bot.client):
            bot._count("dropped")
            await bot.play(min(until, time.monotonic() + plan.churn.away_seconds))
            listener.cancel()
            continue
        listener.cancel()
        await bot.close()
        bot._count("left")
        await asyncio.sleep(plan.churn.away_seconds)
        try:
            await bot.connect(*room, timeout=plan.connect_timeout)
            bot._count("rejoined")
        except Exception as exc:
            bot.errors.append(f"rejoin: {exc!r}")
            return


async def _run(conn: Connection, plan: BotPlan) -> None:
    loop = asyncio.get_running_loop()
    bots = [Bot(i, t, plan.behaviour, step=plan.step) for i, t, _ in plan.bots]
    rooms = [plan.rooms[r] for _, _, r in plan.bots]
    results = await asyncio.gather(
        *(b.connect(*room, timeout=plan.connect_timeout) for b, room in zip(bots, rooms, strict=True)),
        return_exceptions=True,
    )
    failed = []
    for b, r in zip(bots, results, strict=True):
        if isinstance(r, BaseException):
            b.errors.append(f"connect: {r!r}")
            failed.append(b.user_id)
    conn.send(("connected", {"ok": len(bots) - len(failed), "failed": failed}))
    kind, args = await loop.run_in_executor(None, conn.recv)
    if kind != "go":
        return
    start = args["start"]
    await asyncio.sleep(max(0.0, start - time.monotonic()))
    until = start + plan.seconds
    live = [b for b in bots if b.client is not None]
    if plan.churn.every > 0:
        tasks = [
            asyncio.ensure_future(_churn(b, plan, room, until))
            for b, room in zip(bots, rooms, strict=True)
            if b.client is not None
        ]
        await asyncio.gather(*tasks, return_exceptions=True)
        listeners = [asyncio.ensure_future(b.listen()) for b in live if b.client is not None]
    else:
        listeners = [asyncio.ensure_future(b.listen()) for b in live]
        await asyncio.gather(*(b.play(until) for b in live))
    await _drain(live, plan.drain_seconds)
    for task in listeners:
        task.cancel()
    conn.send(("result", {"bots": [b.result() for b in bots]}))
    await asyncio.gather(*(b.close() for b in live), return_exceptions=True)


async def _drain(bots: list[Bot], seconds: float) -> None:
    """Waits `seconds` for late deliveries, or less once each message these bots addressed to
    one another has arrived. Only where every bot in their rooms is one of these (a sender in
    another process could still have some in flight); a message lost keeps it waiting the whole
    drain, so loss reads as before. A moment more after the last arrival lets a duplicate show."""
    ours = {b.user_id: b for b in bots}
    whole = all(
        m.user_id in ours
        for b in bots
        for m in getattr(b.client, "members", {}).values()
        if index_of(m.user_id) is not None
    )
    end = time.monotonic() + seconds
    while (left := end - time.monotonic()) > 0:
        if whole and _all_arrived(bots, ours):
            await asyncio.sleep(min(left, 0.05))
            return
        await asyncio.sleep(min(left, 0.02))


def _all_arrived(bots: list[Bot], ours: dict[str, Bot]) -> bool:
    for sender in bots:
        for user, due in sender.addressed.items():
            recipient = ours.get(user)
            if recipient is None:
                continue  # not a bot (an attacker's member): nothing it receives is counted
            stream = recipient.arrivals.streams.get(sender.index)
            if (stream.delivered if stream is not None else 0) < due:
                return False
    return True


def bot_main(conn: Connection, plan: BotPlan) -> None:
    """Process entry: pin, uvloop, run the plan."""
    pin(set(plan.cpus) if plan.cpus else None)
    with contextlib.suppress(ImportError):
        import uvloop

        uvloop.install()
    try:
        asyncio.run(_run(conn, plan))
    except Exception as exc:
        with contextlib.suppress(Exception):
            conn.send(("error", repr(exc)))


class BotPool:
    """Starts bot processes for one phase, synchronises their start, gathers their results."""

    def __init__(self, plans: list[BotPlan], cpus: str | None = None) -> None:
        ctx = multiprocessing.get_context("spawn")
        pinned = parse_cpus(cpus)
        self.conns: list[Connection] = []
        self.procs: list[Any] = []
        for plan in plans:
            if pinned:
                plan = BotPlan(**{**_fields(plan), "cpus": frozenset(pinned)})
            parent, child = ctx.Pipe()
            proc = ctx.Process(target=bot_main, args=(child, plan), daemon=True)
            proc.start()
            self.conns.append(parent)
            self.procs.append(proc)

    def connected(self, timeout: float = 60.0) -> dict[str, Any]:
        ok, failed = 0, []
        for conn in self.conns:
            if not conn.poll(timeout):
                raise TimeoutError("bot process did not connect its bots")
            kind, info = conn.recv()
            if kind != "connected":
                raise RuntimeError(f"bot process failed: {info}")
            ok += info["ok"]
            failed += info["failed"]
        return {"ok": ok, "failed": failed}

    def go(self, delay: float = 0.3) -> float:
        start = time.monotonic() + delay
        for conn in self.conns:
            conn.send(("go", {"start": start}))
        return start

    def results(self, timeout: float, on_wait: Any = None) -> list[dict[str, Any]]:
        """Every bot's result; `on_wait()` is called about twice a second while waiting."""
        bots: list[dict[str, Any]] = []
        pending = list(self.conns)
        deadline = time.monotonic() + timeout
        while pending and time.monotonic() < deadline:
            for conn in wait(pending, timeout=0.5):
                pending.remove(conn)
                try:
                    kind, info = conn.recv()
                except EOFError:
                    continue
                if kind == "result":
                    bots += info["bots"]
            if on_wait is not None:
                on_wait()
        return bots

    def close(self) -> None:
        for conn in self.conns:
            with contextlib.suppress(OSError):
                conn.send(("stop", {}))
        for proc in self.procs:
            proc.join(5)
            if proc.is_alive():
                proc.kill()
                proc.join(1)


def _fields(plan: BotPlan) -> dict[str, Any]:
    return {f: getattr(plan, f) for f in plan.__dataclass_fields__}


def split(bots: list[tuple[int, str, int]], processes: int) -> list[list[tuple[int, str, int]]]:
    """Deals bots round-robin over processes (empty lists dropped)."""
    out: list[list[tuple[int, str, int]]] = [[] for _ in range(max(1, processes))]
    for i, b in enumerate(bots):
        out[i % len(out)].append(b)
    return [o for o in out if o]
