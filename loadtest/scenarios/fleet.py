"""`fleet`: rooms through the control plane, as a game backend drives them.

Many rooms are wanted at once (wantRoom), each polled with getRoom until its address is set
(provisioning latency: from wantRoom to a usable address), bots join every room (join latency:
connect() to WELCOME), play briefly, and the rooms are deleted (deletion latency: deleteRoom
until the relay process is gone). Rooms per machine is an estimate from what the rooms used:
min(memory available / RSS per idle room, one core per room's CPU at the played load x cores).
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import asdict, dataclass
from typing import Any
from urllib.parse import urlsplit

import httpx

from loadtest import controlplane
from loadtest import hist as hdr
from loadtest.bots import Behaviour
from loadtest.controlplane import ControlPlane
from loadtest.loopback import loopback_problem
from loadtest.machine import machine_info, parse_cpus, pin, pss_bytes, sample
from loadtest.phase import run_phase
from loadtest.progress import Live
from loadtest.report import Report, plot_histogram, table
from relay.host.spawner import pid_alive


@dataclass(frozen=True, slots=True)
class FleetConfig:
    rooms: int = 20
    players: int = 4
    hz: float = 3.0
    play_seconds: float = 5.0
    poll_interval: float = 0.05
    ready_timeout: float = 60.0
    workers: int = 2
    load_cpus: str | None = None
    control_url: str | None = None

    @classmethod
    def quick(cls, **kw: Any) -> FleetConfig:
        base: dict[str, Any] = {"rooms": 2, "players": 2, "play_seconds": 1.0, "workers": 1}
        base.update(kw)
        return cls(**base)


def _pct(values: list[float]) -> dict[str, Any]:
    h = hdr.new()
    for v in values:
        hdr.record_us(h, v * 1_000_000)
    return hdr.summary(h)


async def provision(cp: ControlPlane, ns: str, names: list[str], config: FleetConfig) -> dict[str, Any]:
    async with httpx.AsyncClient(timeout=30.0) as http:
        await cp.login(http)
        await cp.create_namespace(http, ns)

        async def one(name: str) -> dict[str, Any]:
            t0 = time.monotonic()
            await cp.want_room(http, ns, name)
            want_s = time.monotonic() - t0
            while time.monotonic() - t0 < config.ready_timeout:
                item = await cp.get_room(http, ns, name)
                if item and item.get("ipAddress") and item.get("port"):
                    problem = loopback_problem(item["ipAddress"])
                    if problem:  # a control plane elsewhere hands out its relays' addresses
                        return {"name": name, "want_ms": 1000 * want_s, "ready_ms": None, "error": problem}
                    return {
                        "name": name,
                        "want_ms": 1000 * want_s,
                        "ready_ms": 1000 * (time.monotonic() - t0),
                        "host": item["ipAddress"],
                        "port": int(item["port"]),
                        "key": item["encryptionKey"],
                    }
                await asyncio.sleep(config.poll_interval)
            return {"name": name, "want_ms": 1000 * want_s, "ready_ms": None, "error": "not ready in time"}

        rooms = await asyncio.gather(*(one(n) for n in names), return_exceptions=True)
    return {"rooms": [r if isinstance(r, dict) else {"error": repr(r)} for r in rooms]}


async def _delete(cp: ControlPlane, ns: str, names: list[str], pids: list[int]) -> list[float]:
    async with httpx.AsyncClient(timeout=30.0) as http:
        await cp.login(http)
        t0 = time.monotonic()
        await asyncio.gather(*(cp.delete_room(http, ns, n) for n in names), return_exceptions=True)
        gone: dict[int, float] = {}
        while len(gone) < len(pids) and time.monotonic() - t0 < 15:
            for pid in pids:
                if pid not in gone and not pid_alive(pid):
                    gone[pid] = 1000 * (time.monotonic() - t0)
            await asyncio.sleep(0.02)
        listed = [await cp.get_room(http, ns, n) for n in names]
        await cp.delete_namespace(http, ns)
    return [gone.get(p, float("nan")) for p in pids] + [float("nan")] * sum(1 for x in listed if x)


def run(config: FleetConfig, report: Report, progress: bool | None = None) -> dict[str, Any]:
    pin(parse_cpus(config.load_cpus))
    reason = (
        loopback_problem(urlsplit(config.control_url).hostname or "")
        if config.control_url
        else controlplane.available()
    )
    if config.control_url and reason:
        reason = f"--control-url: {reason}; the load tests send only to 127.0.0.0/8 or ::1"
    report.config = asdict(config)
    if reason:
        report.note(f"skipped: {reason}")
        report.markdown = [f"Skipped: {reason}"]
        report.results = {"skipped": reason}
        print(f"fleet skipped: {reason}")
        return report.results
    cp = ControlPlane(config.control_url) if config.control_url else ControlPlane.start()
    ns = f"loadtest{int(time.time())}"
    names = [f"room{i}" for i in range(config.rooms)]
    try:
        with Live("fleet", total=config.play_seconds, enabled=progress) as live:
            live.update(rates=f"wanting {config.rooms} rooms")
            prov = asyncio.run(provision(cp, ns, names, config))
            ready = [r for r in prov["rooms"] if r.get("ready_ms") is not None]
            live.log(f"fleet: {len(ready)}/{config.rooms} rooms ready")
            pids = cp.relay_pids(ns)
            idle = [s for s in (sample(p) for p in pids) if s]
            pss = sorted(x for x in (pss_bytes(p) for p in pids) if x)
            rooms = [(r["host"], r["port"], r["key"]) for r in ready]
            bots = [
                (r * config.players + i, ("udp", "ws")[i % 2], r)
                for r in range(len(rooms))
                for i in range(config.players)
            ]
            phase = (
                run_phase(
                    rooms,
                    bots,
                    Behaviour(hz=config.hz),
                    config.play_seconds,
                    workers=min(config.workers, max(1, len(bots))),
                    load_cpus=config.load_cpus,
                    relay_pids=pids,
                    live=live,
                    label="fleet play",
                )
                if bots
                else None
            )
            deleted_ms = asyncio.run(_delete(cp, ns, names, pids))
    finally:
        if config.control_url is None:
            cp.stop()
    info = machine_info()
    rss = sorted(s.rss_bytes for s in idle)
    rss_median = rss[len(rss) // 2] if rss else None
    cpu_per_room = phase["relay_cpu_percent"] / max(1, len(pids)) if phase else None
    pss_median = pss[len(pss) // 2] if pss else None
    per_room_mem = pss_median or rss_median
    by_mem = int(info["memory_mb"] * 2**20 * 0.8 / per_room_mem) if per_room_mem else None
    by_cpu = int(100 * (info["cores"] or 1) * 0.8 / cpu_per_room) if cpu_per_room else None
    results = {
        "namespace": ns,
        "wanted": config.rooms,
        "ready": len(ready),
        "provisioning_ms": _pct([r["ready_ms"] / 1000 for r in ready]),
        "want_call_ms": _pct([r["want_ms"] / 1000 for r in prov["rooms"] if "want_ms" in r]),
        "join_ms": _pct([j / 1000 for j in phase["join_ms"]]) if phase else {"count": 0},
        "deletion_ms": _pct([d / 1000 for d in deleted_ms if d == d]),
        "not_deleted": sum(1 for d in deleted_ms if d != d),
        "relay_processes": len(pids),
        "relay_rss_mb_median": rss_median / 2**20 if rss_median else None,
        "relay_pss_mb_median": pss_median / 2**20 if pss_median else None,
        "relay_cpu_percent_per_room": cpu_per_room,
        "rooms_per_machine": {
            "by_memory": by_mem,
            "by_cpu": by_cpu,
            "estimate": min(x for x in (by_mem, by_cpu) if x) if (by_mem or by_cpu) else None,
        },
        "play": {k: v for k, v in (phase or {}).items() if k != "bot_results"},
        "rooms": prov["rooms"],
    }
    report.results = results
    errors = [r for r in prov["rooms"] if "error" in r]
    if errors:
        report.note(f"{len(errors)} rooms failed to provision: {errors[0].get('error')}")
    p, j, d = results["provisioning_ms"], results["join_ms"], results["deletion_ms"]
    report.markdown = [
        "## Result",
        "",
        f"{len(ready)}/{config.rooms} rooms ready; {config.players} bots per room at {config.hz:g} Hz for "
        f"{config.play_seconds:g} s.",
        "",
        *table(
            ["latency (ms)", "count", "p50", "p90", "p99", "max"],
            [
                [name, x.get("count"), x.get("p50_ms"), x.get("p90_ms"), x.get("p99_ms"), x.get("max_ms")]
                for name, x in (
                    ("provisioning (wantRoom -> address)", p),
                    ("join (connect -> WELCOME)", j),
                    ("deletion (deleteRoom -> relay exited)", d),
                )
            ],
        ),
        "",
        f"Relay memory per room (median): RSS {results['relay_rss_mb_median'] or 0:.1f} MB, PSS "
        f"{results['relay_pss_mb_median'] or 0:.1f} MB (shared pages split); relay CPU per room at "
        f"{config.players} x {config.hz:g} Hz: {cpu_per_room or 0:.1f}%. Rooms per machine (80% of memory, "
        f"80% of {info['cores']} cores): by memory {by_mem}, by CPU "
        f"{by_cpu if by_cpu else 'not measured (no relay CPU time in the play phase)'}.",
    ]
    if plot_histogram(
        report.out / "provisioning.png",
        {"provisioning": [r["ready_ms"] for r in ready], "join": list(phase["join_ms"]) if phase else []},
        "fleet: provisioning and join latency",
        "ms",
    ):
        report.plots.append("provisioning.png")
    return results


def config_from_args(args: Any) -> FleetConfig:
    kw: dict[str, Any] = {}
    for name in ("rooms", "players", "play_seconds", "control_url"):
        if getattr(args, name, None) is not None:
            kw[name] = getattr(args, name)
    return FleetConfig.quick(**kw) if getattr(args, "quick", False) else FleetConfig(**kw)
