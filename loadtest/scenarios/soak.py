"""`soak`: a long run with churn; the relay's memory stays flat and nothing leaks.

One relay process; bots (UDP and WebSocket) play with churn: each bot, every `churn_every`
seconds on average, either leaves and rejoins (a new member) or has its transport cut under it
and resumes, and updates its profile periodically. The harness reads the relay's /proc every
second (RSS, open fds, threads) and its asyncio task count and member figures (printed by the
relay host), before, during and after the run. Leak checks after every bot has left and a
settle period: fds and tasks back to their idle values, no members or sessions left, and the
RSS growth over the second half of the run under `rss_slope_limit_mb_per_min`.
"""

from __future__ import annotations

import threading
import time
from dataclasses import asdict, dataclass
from typing import Any

from loadtest.botpool import Churn
from loadtest.bots import Behaviour
from loadtest.machine import parse_cpus, pin, sample
from loadtest.phase import run_phase
from loadtest.progress import Live
from loadtest.relayhost import RelayProcess
from loadtest.report import Report, plot_timeseries, table


@dataclass(frozen=True, slots=True)
class SoakConfig:
    seconds: float = 120.0
    players: int = 16
    hz: float = 10.0
    churn_every: float = 8.0
    drop_share: float = 0.5
    workers: int = 2
    settle_seconds: float = 3.0
    resume_grace: float = 2.0
    rss_slope_limit_mb_per_min: float = 2.0
    fd_slack: int = 2
    relay_cpus: str = "0"
    load_cpus: str = "1"
    relay_factory: str | None = None

    @classmethod
    def quick(cls, **kw: Any) -> SoakConfig:
        base: dict[str, Any] = {
            "seconds": 5.0,
            "players": 6,
            "hz": 5.0,
            "churn_every": 1.5,
            "workers": 1,
            "settle_seconds": 2.0,
            "resume_grace": 1.0,
        }
        base.update(kw)
        return cls(**base)


def slope_per_min(points: list[tuple[float, float]]) -> float:
    """Least-squares slope of (seconds, value) points, per minute."""
    if len(points) < 2:
        return 0.0
    n = len(points)
    mx = sum(p[0] for p in points) / n
    my = sum(p[1] for p in points) / n
    den = sum((p[0] - mx) ** 2 for p in points)
    return 60.0 * sum((p[0] - mx) * (p[1] - my) for p in points) / den if den else 0.0


def run(config: SoakConfig, report: Report, progress: bool | None = None) -> dict[str, Any]:
    pin(parse_cpus(config.load_cpus))
    relay = RelayProcess(
        {"resume_grace": config.resume_grace, "keepalive_timeout": 5.0},
        config.relay_cpus,
        config.relay_factory,
        stats_interval=1.0,
    )
    samples: list[dict[str, Any]] = []
    stop = threading.Event()
    t0 = time.monotonic()

    def sampler() -> None:
        while not stop.is_set():
            s = sample(relay.pid)
            if s is not None:
                samples.append({**s.to_json(), "t": s.at - t0})
            stop.wait(1.0)

    thread = threading.Thread(target=sampler, daemon=True)
    try:
        time.sleep(1.2)
        idle_before = sample(relay.pid)
        tasks_before = relay.stats[-1]["tasks"] if relay.stats else None
        thread.start()
        bots = [(i, ("udp", "ws")[i % 2], 0) for i in range(config.players)]
        played = [time.monotonic() - t0]
        with Live("soak", total=config.seconds, enabled=progress) as live:
            phase = run_phase(
                [(relay.host, relay.port, relay.key)],
                bots,
                Behaviour(hz=config.hz, profile_every=2.0),
                config.seconds,
                workers=min(config.workers, config.players),
                load_cpus=config.load_cpus,
                churn=Churn(every=config.churn_every, drop_share=config.drop_share),
                relay_pids=[relay.pid],
                live=live,
                label="soak",
            )
        played.append(time.monotonic() - t0)
        time.sleep(config.settle_seconds + config.resume_grace)
        idle_after = sample(relay.pid)
        tasks_after = relay.stats[-1]["tasks"] if relay.stats else None
        relay_after = relay.stats[-1].get("relay") if relay.stats else None
    finally:
        stop.set()
        relay.stop()
    half = [
        (s["t"], s["rss_bytes"] / 2**20)
        for s in samples
        if s["t"] >= (samples[-1]["t"] / 2 if samples else 0)
    ]
    rss_slope = slope_per_min(half)
    checks = {
        "fds_back_to_idle": bool(
            idle_before and idle_after and idle_after.fds <= idle_before.fds + config.fd_slack
        ),
        "tasks_back_to_idle": (tasks_after <= tasks_before + 1)
        if tasks_before is not None and tasks_after is not None
        else None,
        "no_members_left": (relay_after or {}).get("members") == 0 if relay_after else None,
        "no_sessions_left": (relay_after or {}).get("sessions") == 0 if relay_after else None,
        "rss_flat": rss_slope <= config.rss_slope_limit_mb_per_min,
    }
    results = {
        "phase": phase,
        "idle_before": idle_before.to_json() if idle_before else None,
        "idle_after": idle_after.to_json() if idle_after else None,
        "tasks_before": tasks_before,
        "tasks_after": tasks_after,
        "relay_stats_after": relay_after,
        "rss_slope_mb_per_min_second_half": rss_slope,
        "samples": samples,
        "relay_task_series": [{"t": s["at"] - t0, "tasks": s["tasks"]} for s in relay.stats],
        "played_s": played,  # bots connecting and playing, with churn (seconds since the relay started)
        "checks": checks,
        "passed": all(v is not False for v in checks.values()),
    }
    report.config = asdict(config)
    report.results = results
    if tasks_before is None:
        report.note("the relay host printed no task counts: task leak check not made")
    t = phase["totals"]
    report.markdown = [
        "## Result",
        "",
        f"{config.players} bots (UDP and WS alternating) at {config.hz:g} Hz for {config.seconds:g} s; "
        f"churn every {config.churn_every:g} s per bot on average ({100 * config.drop_share:.0f}% dropped "
        "connections that resume, the rest leave and rejoin).",
        "",
        *table(
            ["check", "result"],
            [[k, {True: "ok", False: "FAILED", None: "not measured"}[v]] for k, v in checks.items()],
        ),
        "",
        *table(
            ["", "RSS MB", "fds", "threads", "asyncio tasks"],
            [
                [
                    "idle before",
                    idle_before.rss_bytes / 2**20 if idle_before else None,
                    idle_before.fds if idle_before else None,
                    idle_before.threads if idle_before else None,
                    tasks_before,
                ],
                [
                    "idle after",
                    idle_after.rss_bytes / 2**20 if idle_after else None,
                    idle_after.fds if idle_after else None,
                    idle_after.threads if idle_after else None,
                    tasks_after,
                ],
            ],
        ),
        "",
        f"RSS slope over the second half: {rss_slope:+.2f} MB/min. Churn events: {phase['events']}.",
        "",
        f"Messages: sent {t['sent']:,} (per addressed recipient), delivered {t['delivered']:,}, lost "
        f"{t['lost']:,} ({100 * t['loss_ratio']:.2f}%; churn loses what is addressed to a member that is "
        f"away), duplicates {t['duplicates']}, reordered {t['reordered']}.",
    ]
    if plot_timeseries(
        report.out / "relay_resources.png",
        [
            ("RSS MB", {"rss": ([s["t"] for s in samples], [s["rss_bytes"] / 2**20 for s in samples])}),
            ("open fds", {"fds": ([s["t"] for s in samples], [s["fds"] for s in samples])}),
            (
                "asyncio tasks",
                {
                    "tasks": (
                        [p["t"] for p in results["relay_task_series"]],
                        [p["tasks"] for p in results["relay_task_series"]],
                    )
                },
            ),
        ],
        "soak: relay resources over time",
        xlabel="time since the relay started (s)",
        spans=[(played[0], played[1], "bots playing, with churn")],
        from_zero=True,
    ):
        report.plots.append("relay_resources.png")
    return results


def config_from_args(args: Any) -> SoakConfig:
    kw: dict[str, Any] = {}
    if getattr(args, "seconds", None) is not None:
        kw["seconds"] = args.seconds
    if getattr(args, "players", None) is not None:
        kw["players"] = args.players
    return SoakConfig.quick(**kw) if getattr(args, "quick", False) else SoakConfig(**kw)
