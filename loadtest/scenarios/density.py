"""`density`: how fast a room gets a relay, and how many idle rooms one machine holds.

1. Cold start: `relay serve` as a fresh interpreter (no template), spawn to "listening", a few
   times; and the unique memory of such a relay when idle, for comparison.
2. wantRoom -> getRoom showing ipAddress, one room at a time, through `relay dev` (warm relays,
   zygote spawner and cgroup caps, as shipped), polling getRoom every 2 ms: back to back (the
   next room wanted as soon as the last is ready: the machine never rests, and the pool of warm
   relays is refilled under load), then paced (one room every `paced_gap` seconds, as a
   matchmaker opening 10 matches a second; the pool is refilled between rooms). Polling every
   2 ms costs the machine: each getRoom is about 1 ms of the control plane's CPU and 1 ms of the
   caller's, on the same two cores the starting relay needs. So a third run, back to back again,
   does what GS2 documents instead: wantRoom lists a user in notificationUserIds, that user's
   /gateway socket receives the room-ready push, and one getRoom then shows the address. The
   three runs take turns (`turns` blocks of each), so each meets the machine as it fills alike.
3. Fill: idle rooms are wanted in batches until `hold_rooms` are ready or the machine's
   MemAvailable falls to `memory_floor_mb`; they are held a while, a few are checked to serve
   (two clients exchange a message), then every relay's USS and PSS is read from
   /proc/PID/smaps_rollup and MemAvailable's drop per room is taken as what a room costs the
   machine (page tables, cgroups and socket buffers included). Over the hold, the CPU the held
   relays used (/proc/PID/schedstat) and the control plane's (their heartbeats): what an empty
   room costs a core while it waits for its players.

Relays run with --idle-timeout 3600 (an empty room would otherwise close after 60 s); heartbeats
are as shipped (every 30 s from a quiet room, every 2 s from one with members).
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from typing import Any

import httpx
import websockets

from loadtest import controlplane
from loadtest.controlplane import ControlPlane
from loadtest.machine import cpu_ns, machine_info, smaps
from loadtest.report import Report, table
from relay.protocol.keys import generate_room_key

GIB = 1 << 30
TARGET_MACHINE_GIB = 24


@dataclass(frozen=True, slots=True)
class DensityConfig:
    cold_runs: int = 5
    sequential_rooms: int = 300  # per phase: a p99 of 100 samples would be their maximum
    hold_rooms: int = 1000
    batch: int = 10
    memory_floor_mb: int = 3072
    hold_seconds: float = 30.0  # a heartbeat from every quiet room falls in it
    poll_interval: float = 0.002
    paced_gap: float = 0.1
    turns: int = 3  # the three runs take turns, sequential_rooms / turns rooms at a time
    check_rooms: int = 3

    @classmethod
    def quick(cls, **kw: Any) -> DensityConfig:
        base: dict[str, Any] = {"cold_runs": 1, "sequential_rooms": 3, "hold_rooms": 11, "hold_seconds": 0.5}
        base.update(kw)
        return cls(**base)


def mem_available() -> int:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return 0


def _pcts(values: list[float]) -> dict[str, float | int]:
    if not values:
        return {"count": 0}
    s = sorted(values)

    def at(q: float) -> float:
        return s[min(len(s) - 1, int(q * len(s)))]

    return {"count": len(s), "p50": at(0.5), "p90": at(0.9), "p99": at(0.99), "max": s[-1]}


def cold_start(runs: int) -> dict[str, Any]:
    """A relay from nothing: a new interpreter imports everything, binds, logs "listening"."""
    times: list[float] = []
    idle: dict[str, int] = {}
    for i in range(runs):
        env = {**os.environ, "RELAY_ROOM_KEY": generate_room_key()}
        t0 = time.monotonic()
        proc = subprocess.Popen(
            [sys.executable, "-m", "relay.cli", "serve", "--host", "127.0.0.1", "--port", "0"],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,  # its log, whose first line says where it listens
            text=True,
        )
        try:
            assert proc.stderr is not None
            line = proc.stderr.readline()
            if "listening" not in line:
                raise RuntimeError(f"relay serve did not start: {line!r}")
            times.append(1000 * (time.monotonic() - t0))
            if i == runs - 1:
                time.sleep(0.5)
                idle = smaps(proc.pid)
        finally:
            proc.terminate()
            proc.wait(5)
    return {"ms": _pcts(times), "runs_ms": times, "idle": idle}


async def _ready(
    cp: ControlPlane, http: httpx.AsyncClient, ns: str, name: str, config: DensityConfig
) -> dict:
    t0 = time.monotonic()
    await cp.want_room(http, ns, name)
    while time.monotonic() - t0 < 30:
        item = await cp.get_room(http, ns, name)
        if item and item.get("ipAddress"):
            return {**item, "ready_ms": 1000 * (time.monotonic() - t0)}
        await asyncio.sleep(config.poll_interval)
    raise TimeoutError(f"room {name} not ready in 30 s")


NOTIFIED_USER = "density-matchmaker"


async def _ready_notified(
    cp: ControlPlane, http: httpx.AsyncClient, ws: Any, ns: str, name: str
) -> dict[str, Any]:
    """wantRoom naming NOTIFIED_USER, wait for its room-ready push on /gateway, then one getRoom."""
    t0 = time.monotonic()
    await cp.want_room(http, ns, name, notify=[NOTIFIED_USER])
    while True:
        left = 30 - (time.monotonic() - t0)
        if left <= 0:
            raise TimeoutError(f"no room-ready push for {name} in 30 s")
        msg = json.loads(await asyncio.wait_for(ws.recv(), left))
        if msg.get("issuer") == "Gs2Realtime:Create" and json.loads(msg["payload"]).get("roomName") == name:
            break
    item = await cp.get_room(http, ns, name)
    if not item or not item.get("ipAddress"):
        raise RuntimeError(f"room {name} pushed as ready but getRoom shows no address: {item!r}")
    return {**item, "ready_ms": 1000 * (time.monotonic() - t0)}


async def _serves(item: dict[str, Any]) -> bool:
    from relay.client import Received, connect

    a = await connect(item["ipAddress"], item["port"], item["encryptionKey"], "a")
    b = await connect(item["ipAddress"], item["port"], item["encryptionKey"], "b")
    try:
        a.send(b"hello")
        event = await b.next_event_of(Received, timeout=5)
        return event.data == b"hello"
    finally:
        await a.close()
        await b.close()


async def _drive(cp: ControlPlane, config: DensityConfig) -> dict[str, Any]:
    ns = f"density{int(time.time())}"
    limits = httpx.Limits(max_connections=config.batch * 2)
    async with httpx.AsyncClient(timeout=30.0, limits=limits) as http:
        await cp.login(http)
        await cp.create_namespace(http, ns, notify=True)
        token = await cp.user_token(http, NOTIFIED_USER)
        sequential: list[dict[str, Any]] = []
        paced: list[dict[str, Any]] = []
        notified: list[dict[str, Any]] = []
        async with websockets.connect(cp.gateway_url, additional_headers={"X-GS2-ACCESS-TOKEN": token}) as ws:
            welcome = json.loads(await asyncio.wait_for(ws.recv(), 10))
            if welcome.get("type") != "welcome":
                raise RuntimeError(f"/gateway did not welcome us: {welcome!r}")
            # In turns, so that each run meets the machine as it fills (rooms held, memory used)
            # alike, instead of the last run meeting the fullest machine.
            n, turns = config.sequential_rooms, max(1, min(config.turns, config.sequential_rooms))
            for turn in range(turns):
                share = range(turn * n // turns, (turn + 1) * n // turns)
                sequential += [await _ready(cp, http, ns, f"seq{i}", config) for i in share]
                for i in share:
                    await asyncio.sleep(config.paced_gap)
                    paced.append(await _ready(cp, http, ns, f"paced{i}", config))
                notified += [await _ready_notified(cp, http, ws, ns, f"note{i}") for i in share]
        before = mem_available()
        held: list[dict[str, Any]] = [*sequential, *paced, *notified]
        t_fill = time.monotonic()
        stop_reason = f"{config.hold_rooms} rooms"
        while len(held) < config.hold_rooms:
            if mem_available() < config.memory_floor_mb << 20:
                stop_reason = f"MemAvailable below {config.memory_floor_mb} MB"
                break
            n = min(config.batch, config.hold_rooms - len(held))
            names = [f"r{len(held) + i}" for i in range(n)]
            got = await asyncio.gather(
                *(_ready(cp, http, ns, x, config) for x in names), return_exceptions=True
            )
            errors = [g for g in got if isinstance(g, BaseException)]
            held += [g for g in got if isinstance(g, dict)]
            if errors:
                stop_reason = f"provisioning failed: {errors[0]!r}"
                break
        fill_s = time.monotonic() - t_fill
        server = cp.provision_seconds(ns)
        pids = cp.relay_pids(ns)
        control = cp.proc.pid if cp.proc is not None else None
        cpu_before = [cpu_ns(pid) for pid in pids], cpu_ns(control) if control else 0
        t_hold = time.monotonic()
        await asyncio.sleep(config.hold_seconds)
        held_for = time.monotonic() - t_hold
        relays_cpu_s = sum(cpu_ns(pid) - b for pid, b in zip(pids, cpu_before[0], strict=True)) / 1e9
        control_cpu_s = ((cpu_ns(control) if control else 0) - cpu_before[1]) / 1e9
        after = mem_available()
        mem = [smaps(p) for p in pids]
        sample = random.sample(held, min(config.check_rooms, len(held)))
        serving = [await _serves(item) for item in sample]
        probe = random.sample(held, min(50, len(held)))
        listed = [await cp.get_room(http, ns, item["name"]) for item in probe]
        still = sum(1 for item in listed if item)
        await cp.delete_namespace(http, ns)
    uss = [m["uss"] / 2**20 for m in mem if m["rss"]]
    pss = [m["pss"] / 2**20 for m in mem if m["rss"]]
    rss = [m["rss"] / 2**20 for m in mem if m["rss"]]
    new_rooms = max(1, len(held) - len(sequential) - len(paced) - len(notified))

    def server_ms(rooms: list[dict[str, Any]]) -> dict[str, float | int]:
        return _pcts([1000 * server[r["name"]] for r in rooms if r["name"] in server])

    return {
        "namespace": ns,
        "paced_gap": config.paced_gap,
        "want_to_ready_ms": _pcts([r["ready_ms"] for r in sequential]),
        "want_to_ready_paced_ms": _pcts([r["ready_ms"] for r in paced]),
        "want_to_ready_notified_ms": _pcts([r["ready_ms"] for r in notified]),
        # the control plane's own view: wantRoom received -> the relay's registration handled
        "server_ready_ms": server_ms(sequential),
        "server_ready_paced_ms": server_ms(paced),
        "server_ready_notified_ms": server_ms(notified),
        "held_rooms": len(held),
        "relay_processes": len(pids),
        "fill_stop": stop_reason,
        "fill_seconds": fill_s,
        "uss_mb": _pcts(uss),
        "pss_mb": _pcts(pss),
        "rss_mb": _pcts(rss),
        "mem_available_drop_mb_per_room": (before - after) / 2**20 / new_rooms,
        "hold_seconds": held_for,
        "idle_relay_cpu_us_per_room_s": 1e6 * relays_cpu_s / held_for / max(1, len(pids)),
        "idle_relays_cpu_percent": 100 * relays_cpu_s / held_for,
        "idle_control_plane_cpu_percent": 100 * control_cpu_s / held_for,
        "checked_serving": serving,
        "still_listed_of_50": still,
    }


def run(config: DensityConfig, report: Report, progress: bool | None = None) -> dict[str, Any]:
    report.config = asdict(config)
    reason = controlplane.available()
    if reason:
        report.note(f"skipped: {reason}")
        report.results = {"skipped": reason}
        return report.results
    results: dict[str, Any] = {"machine": machine_info(), "cold_start": cold_start(config.cold_runs)}
    cold = results["cold_start"]
    print(f"density: cold start p50 {cold['ms'].get('p50', 0):.0f} ms", flush=True)
    os.environ["RELAY_RELAY_EXTRA_ARGS"] = "--idle-timeout 3600"
    try:
        cp = ControlPlane.start()
    finally:
        os.environ.pop("RELAY_RELAY_EXTRA_ARGS")
    try:
        results.update(asyncio.run(_drive(cp, config)))
    finally:
        cp.stop()
    per_room = max(results["uss_mb"].get("p50", 0), results["mem_available_drop_mb_per_room"])
    results["rooms_per_24gib"] = int(TARGET_MACHINE_GIB * 1024 * 0.9 / per_room) if per_room else None
    report.results = results
    report.markdown = markdown(results)
    return results


def markdown(r: dict[str, Any]) -> list[str]:
    w, u, p, c = r["want_to_ready_ms"], r["uss_mb"], r["pss_mb"], r["cold_start"]
    wp = r.get("want_to_ready_paced_ms", {})
    sr, srp = r.get("server_ready_ms", {}), r.get("server_ready_paced_ms", {})
    srn, wn = r.get("server_ready_notified_ms", {}), r.get("want_to_ready_notified_ms", {})
    idle = c.get("idle") or {}
    return [
        "## Result",
        "",
        *table(
            ["figure", "count", "p50", "p90", "p99", "max"],
            [
                [
                    "wantRoom -> getRoom shows ipAddress, back to back (ms)",
                    w.get("count"),
                    w.get("p50"),
                    w.get("p90"),
                    w.get("p99"),
                    w.get("max"),
                ],
                [
                    f"wantRoom -> getRoom shows ipAddress, one room every {r.get('paced_gap', 0.1):g} s (ms)",
                    wp.get("count"),
                    wp.get("p50"),
                    wp.get("p90"),
                    wp.get("p99"),
                    wp.get("max"),
                ],
                *(
                    [label, x.get("count"), x.get("p50"), x.get("p90"), x.get("p99"), x.get("max")]
                    for label, x in (
                        ("wantRoom -> ready push (/gateway) -> getRoom has ipAddress, back to back (ms)", wn),
                        ("control plane alone, back to back: wantRoom received -> relay registered (ms)", sr),
                        ("control plane alone, paced (ms)", srp),
                        ("control plane alone, notified (ms)", srn),
                    )
                    if x.get("count")
                ),
                [
                    "cold start, no template: spawn -> listening (ms)",
                    c["ms"].get("count"),
                    c["ms"].get("p50"),
                    c["ms"].get("p90"),
                    c["ms"].get("p99"),
                    c["ms"].get("max"),
                ],
                [
                    "idle room USS (MiB)",
                    u.get("count"),
                    u.get("p50"),
                    u.get("p90"),
                    u.get("p99"),
                    u.get("max"),
                ],
                [
                    "idle room PSS (MiB)",
                    p.get("count"),
                    p.get("p50"),
                    p.get("p90"),
                    p.get("p99"),
                    p.get("max"),
                ],
            ],
        ),
        "",
        f"- Rooms held at once: {r['held_rooms']} ({r['relay_processes']} relay processes; stopped at: "
        f"{r['fill_stop']}; filled in {r['fill_seconds']:.1f} s). Checked serving: {r['checked_serving']}; "
        f"{r['still_listed_of_50']} of 50 sampled rooms still listed after the hold.",
        f"- MemAvailable fell {r['mem_available_drop_mb_per_room']:.1f} MiB per room while filling "
        "(everything a room costs the machine: its private pages, page tables, cgroup, sockets).",
        *(
            [
                f"- CPU of the {r['relay_processes']} idle relays over {r['hold_seconds']:.0f} s of the "
                f"hold: {r['idle_relay_cpu_us_per_room_s']:.0f} us per room per second, "
                f"{r['idle_relays_cpu_percent']:.1f}% of a core for all of them (a heartbeat every 30 s, "
                f"the caps guard's look every 60 s); the control plane receiving their heartbeats: "
                f"{r['idle_control_plane_cpu_percent']:.1f}% of a core."
            ]
            if "idle_relay_cpu_us_per_room_s" in r
            else []
        ),
        f"- A relay started without the template, idle: USS {idle.get('uss', 0) / 2**20:.1f} MiB, "
        f"RSS {idle.get('rss', 0) / 2**20:.1f} MiB.",
        f"- Idle nano rooms on a {TARGET_MACHINE_GIB} GiB machine (90% of memory / the larger of USS and "
        f"the MemAvailable drop per room): {r['rooms_per_24gib']:,}.",
    ]


def config_from_args(args: Any) -> DensityConfig:
    kw: dict[str, Any] = {}
    for name in ("hold_rooms", "sequential_rooms", "cold_runs"):
        if getattr(args, name, None) is not None:
            kw[name] = getattr(args, name)
    return DensityConfig.quick(**kw) if getattr(args, "quick", False) else DensityConfig(**kw)
