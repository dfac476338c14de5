"""One bot phase against running rooms: start bot processes, play, gather, account."""

from __future__ import annotations

import time
from typing import Any

from loadtest import hist as hdr
from loadtest.botpool import BotPlan, BotPool, Churn, split
from loadtest.bots import Behaviour
from loadtest.machine import cpu_percent, sample
from loadtest.progress import Live
from loadtest.streams import account


def run_phase(
    rooms: list[tuple[str, int, str]],
    bots: list[tuple[int, str, int]],
    behaviour: Behaviour,
    seconds: float,
    *,
    step: int = 0,
    workers: int = 1,
    load_cpus: str | None = None,
    churn: Churn | None = None,
    drain_seconds: float = 1.0,
    relay_pids: list[int] | None = None,
    live: Live | None = None,
    label: str = "",
    on_tick: Any = None,
) -> dict[str, Any]:
    """Plays `bots` (index, transport, room number) for `seconds`; returns accounted figures."""
    plans = [
        BotPlan(tuple(rooms), tuple(chunk), behaviour, seconds, drain_seconds, step, churn or Churn())
        for chunk in split(bots, workers)
    ]
    pool = BotPool(plans, load_cpus)
    try:
        t0 = time.monotonic()
        connected = pool.connected(timeout=60)
        connect_s = time.monotonic() - t0
        pids = relay_pids or []
        start = pool.go()

        def tick() -> None:
            if live is not None:
                live.update(
                    rates=f"{label}: {min(seconds, max(0.0, time.monotonic() - start)):.0f}/{seconds:.0f} s"
                )
            if on_tick is not None:
                on_tick()

        # CPU over the play window alone: the drain after it (a second, the relay idle) would
        # dilute a step's figure by a tenth, and the tier's headroom is judged on it
        _until(start, tick)
        before = [sample(p) for p in pids]
        load_before = [sample(p.pid) for p in pool.procs]
        _until(start + seconds, tick)
        after = [sample(p) for p in pids]
        load_after = [sample(p.pid) for p in pool.procs]
        results = pool.results(timeout=drain_seconds + 60, on_wait=tick)
    finally:
        pool.close()
    addressed = {r["user_id"]: r["addressed"] for r in results}
    received = {r["user_id"]: r["received"] for r in results}
    accounting = account(addressed, received)
    latency = hdr.merge([r["latency_hist"] for r in results])
    events: dict[str, int] = {}
    for r in results:
        for k, v in r["events"].items():
            events[k] = events.get(k, 0) + v
    joins = sorted(r["join_s"] for r in results if r["join_s"] is not None)
    return {
        "bots": len(bots),
        "connected": connected,
        "connect_s": connect_s,
        "seconds": seconds,
        "sent": sum(r["sent"] for r in results),
        "accounting": accounting,
        "totals": accounting["totals"],
        "latency": hdr.summary(latency),
        "latency_hist": hdr.encode(latency),
        "events": events,
        "errors": [e for r in results for e in r["errors"]][:20],
        "join_ms": [1000 * j for j in joins],
        "relay_cpu_percent": sum(cpu_percent(a, b) for a, b in zip(before, after, strict=True)),
        "load_cpu_percent": sum(cpu_percent(a, b) for a, b in zip(load_before, load_after, strict=True)),
        "relay_samples": [s.to_json() if s else None for s in after],
        "results_from": len(results),
        "bot_results": results,
    }


def _until(when: float, tick: Any) -> None:
    """Sleeps until `when` (monotonic), calling `tick()` about twice a second."""
    while (left := when - time.monotonic()) > 0:
        time.sleep(min(0.5, left))
        tick()
