"""`fleet-shape`: the relay as it is deployed, measured against the C relay at the same rate.

R rooms x 4 players x H Hz: every room is its own relay process, started as the local
provisioner starts it (forked from the zygote template, each in its own realtime1.nano cgroup
where this host allows: loadtest/spawned.py), all of them pinned to the relay CPU; every client
packet carries one message, and each member's sends are spread over the tick at its own phase
(not synchronised, room-mates included: `spread_phase` in loadtest/fastload/sender.py). All
load runs on the load CPU (the throughput scenario's generator, loadtest/fastload/). The C
per-packet relay forwards the same offered rate in the same run, once as one process (the
reference issue 20's targets name) and, with one room per relay process, once as a process per
room under the same spread load (`baseline.run_per_room`): what the shape itself costs, with no
interpreter. And the interpreter's floor in the same processes (loadtest/floor_relay.py: uvloop
and a sendto per recipient, then with the relay's AES-GCM added), what no Python relay process
goes below at this load.

Figures: the relay processes' CPU together (from /proc) per message in and as a ratio to the C
relay's; context switches per message; added latency (kernel receive stamp minus send, every
packet) and end to end, p50 / p99 / p99.9; and **rooms per core**: the most rooms at 4 players
x 20 Hz whose added p99 stays at or under `p99_limit_ms` with no loss.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from typing import Any

from loadtest import baseline as c_baseline
from loadtest.machine import context_switches, parse_cpus, pin
from loadtest.progress import Live
from loadtest.report import Report, median, table
from loadtest.scenarios.throughput import GROUP_SIZE, Load, ThroughputConfig
from loadtest.spawned import SpawnedRelays

FLOOR_RELAYS = {
    "c-aead": "C relay + AES-GCM (an open, a seal per recipient), a process per room",
    "python": "Python floor: uvloop, a sendto per recipient, nothing else",
    "python-aead": "Python floor + AES-GCM (an open, a seal per recipient)",
}
"""What the relay is set beside at the same load in its own shape (`baseline.run_per_room`): the C
relay doing the relay's AES-GCM work (the least a native data path would cost; a process per
room only), and the interpreter's floor (loadtest/floor_relay.py) in as many processes as the
relay's rooms take, without and with that work."""


@dataclass(frozen=True, slots=True)
class FleetShapeConfig:
    rooms: int = 100
    hz: float = 20.0
    transports: tuple[str, ...] = ("udp", "ws", "gs2")  # gs2: GS2 game clients (throughput.py)
    step_seconds: float = 10.0
    payload_size: int = 100
    workers: int = 1
    relay_cpus: str = "0"
    load_cpus: str = "1"
    capped: bool = True
    search: tuple[int, ...] = (100, 150, 200, 250, 300, 400)  # rooms tried for rooms per core (UDP)
    search_down: tuple[int, ...] = (75, 50, 25, 10)  # tried, largest first, when the first fails
    search_seconds: float = 5.0
    warmup_seconds: float = 0.5  # of each step, its latencies not recorded (warmup_note)
    p99_limit_ms: float = 5.0
    baseline: bool = True
    rooms_per_process: int = 1  # > 1: the rooms-per-process tier (relay/host/group_spawner.py)

    @classmethod
    def quick(cls, **kw: Any) -> FleetShapeConfig:
        base: dict[str, Any] = {
            "rooms": 3,
            "hz": 10.0,
            "transports": ("udp",),
            "step_seconds": 1.0,
            "search": (2, 4),
            "search_down": (1,),
            "search_seconds": 1.0,
            "warmup_seconds": 0.2,
            "baseline": False,
        }
        base.update(kw)
        return cls(**base)


def measure(
    config: FleetShapeConfig, rooms: int, transport: str, seconds: float, live: Live
) -> dict[str, Any]:
    """One timed step of `rooms` relays at 4 x hz each; every packet stamped (full mode), the
    first `warmup_seconds` out of its latencies (warmup_note)."""
    overrides = {"keepalive_timeout": 120.0, "idle_timeout": 600.0}  # set-up is slow at 400 rooms
    relays = SpawnedRelays(
        rooms,
        overrides,
        parse_cpus(config.relay_cpus) or {0},
        capped=config.capped,
        rooms_per_process=config.rooms_per_process,
    )
    load = None
    try:
        tconfig = ThroughputConfig(
            transports=(transport,),
            rooms=rooms,
            groups=1,
            workers=config.workers,
            payload_size=config.payload_size,
            batch=1,
            relay_cpus=config.relay_cpus,
            load_cpus=config.load_cpus,
            sample_every=1,
        )
        load = Load(tconfig, transport, relays=relays.relays)
        offered = rooms * GROUP_SIZE * config.hz
        pids = set(r.pid for r in relays.relays)  # rooms may share a process
        switches_before = sum(context_switches(pid) for pid in pids)
        warmup = min(config.warmup_seconds, seconds / 2)
        step = load.step(1, offered, seconds, True, live, [], warmup=warmup)
        switches = sum(context_switches(pid) for pid in pids) - switches_before
    finally:
        if load is not None:
            load.close()
        relays.close()
    sent = step["sent_messages"]
    cpu = step["relay_cpu_percent"]
    return {
        "rooms": rooms,
        "transport": transport,
        "offered_per_s": offered,
        "sent_messages": sent,
        "due": step["due_deliveries"],
        "delivered": step["delivered"],
        "lost": step["lost"],
        "relay_cpu_percent": cpu,
        "relay_core_busy_percent": step.get("relay_core_busy_percent"),
        # the load's core too, over the same window (LOAD_CORE_NOTE says what it can tell: the
        # workers keep it near 100 under any heavy load, so it shows a heavy load, not a late one)
        "load_core_busy_percent": step.get("load_core_busy_percent"),
        "relay_core_steal_percent": step.get("relay_core_steal_percent"),  # STEAL_NOTE
        "cpu_us_per_message_in": round(cpu / 100 * seconds / sent * 1e6, 2) if sent else None,
        "context_switches_per_message_in": round(switches / sent, 3) if sent else None,
        "added": step["added_latency"],
        "warmup_seconds": warmup,  # the latencies' window starts this long into the step
        "end_to_end": step["latency"],
        "caps": relays.caps,
    }


LOAD_CORE_NOTE = (
    "*Load core busy %*: the bots' core over the same window. Its workers go over all their "
    "members between sends, so it reads near 100 whenever the load is heavy. What the load side "
    "itself adds (late sends, late reads) is *end to end* less *added*; a WebSocket relay whose "
    "readers fell that far behind would queue its writes in its transports, which costs it more "
    "per message, so read a dearer relay beside a large gap there, not beside this figure alone."
)
"""What the load core column says (the fleet-shape summary and BENCHMARKS.md)."""

STEAL_NOTE = (
    "*Relay core steal %*: time the hypervisor gave the relay core's virtual CPU to something "
    "else over the same window (/proc/stat). No process is charged for it, yet every relay "
    "runnable then waited: a p99.9 tail of tens of ms beside a non-zero figure here is the "
    "machine, not the relay."
)
"""What the steal column says (the fleet-shape summary and BENCHMARKS.md)."""


def warmup_note(results: dict[str, Any]) -> list[str]:
    """What the warm-up leaves out (the fleet-shape summary and BENCHMARKS.md); none for results
    measured without one."""
    warmup = max((r.get("warmup_seconds", 0.0) for r in results["shape"].values()), default=0.0)
    if not warmup:
        return []
    return [
        "*Warm-up*: every step starts all its rooms at one instant, after seconds of silence while "
        "the load sealed the step's packets, and each relay's first passes are dear: a cold cache, "
        "and the periodic work that fell due in the silence (the caps guard's look, the pacer's CPU "
        "reading). At 250 rooms the first wake-ups cost some 150 us each against 25 in play and "
        "held the relay core for 50-80 ms, packets waiting up to 33-53 ms (`perf sched timehist`, "
        "docs/architecture.md). A host's rooms do not start together, so the latency "
        f"columns leave out the messages sent in each step's first {warmup:g} s; its losses and "
        "the relays' CPU are counted.",
        "",
    ]


def _held(config: FleetShapeConfig, result: dict[str, Any]) -> bool:
    p99 = result["added"].get("p99_ms")
    return result["lost"] == 0 and p99 is not None and p99 <= config.p99_limit_ms


STOLEN_PERCENT = 0.5
"""Steal on the relay core (% of a search step) at which a step that failed is measured once
more. A 5 s step that lost 25 ms of its core to the hypervisor (0.5%) queues every relay's
packets behind that gap, enough to set the p99 (bench-s43 and s44: each failing step that read
2.0% steal had a p99 of 57-67 ms at 34-63% of the core, where its neighbours held)."""


STOLEN_RULE = (
    f"A step that failed with {STOLEN_PERCENT:g}% or more of the relay core stolen by the "
    "hypervisor was measured once more, and the second measurement counts."
)


def search(config: FleetShapeConfig, step: Callable[[int], dict[str, Any]]) -> list[dict[str, Any]]:
    """Rooms per core's steps: `config.search` upwards while they hold, else `search_down`
    downwards until one does; `step(rooms)` measures one. A step that failed with
    STOLEN_PERCENT or more steal on the relay core is measured again, and the second counts:
    both are returned, the first marked `stolen`, so the table shows why."""

    steps: list[dict[str, Any]] = []

    def held(rooms: int) -> dict[str, Any]:
        result = step(rooms)
        result["held"] = _held(config, result)
        if not result["held"] and (result.get("relay_core_steal_percent") or 0.0) >= STOLEN_PERCENT:
            result["stolen"] = True
            steps.append(result)
            result = step(rooms)
            result["held"] = _held(config, result)
        steps.append(result)
        return result

    for rooms in config.search:
        if not held(rooms)["held"]:
            break
    if steps and not any(r["held"] for r in steps):
        # the first size failed: the figure is still a number, found below it
        for rooms in (r for r in config.search_down if r < config.search[0]):
            if held(rooms)["held"]:
                break
    return steps


def run(config: FleetShapeConfig, report: Report, progress: bool | None = None) -> dict[str, Any]:
    pin(parse_cpus(config.load_cpus))
    results: dict[str, Any] = {"shape": {}, "search": []}
    with Live("fleet-shape", total=len(config.transports) + len(config.search), enabled=progress) as live:
        for transport in config.transports:
            result = measure(config, config.rooms, transport, config.step_seconds, live)
            results["shape"][transport] = result
            live.update(advance=1)
            live.log(
                f"fleet-shape {transport} {config.rooms} rooms: relay CPU "
                f"{result['relay_cpu_percent']:.1f}%, added p99 {result['added'].get('p99_ms')} ms"
            )
        if config.baseline:
            offered = int(config.rooms * GROUP_SIZE * config.hz)
            c = c_baseline.run(
                c_baseline.BaselineConfig(
                    seconds=config.step_seconds,
                    offered_pps=offered,
                    relay_cpus=config.relay_cpus,
                    load_cpus=config.load_cpus,
                )
            )
            results["c_baseline"] = c
            same_load = c_baseline.PerRoomConfig(
                rooms=config.rooms,
                players=GROUP_SIZE,
                hz=config.hz,
                seconds=config.step_seconds,
                size=config.payload_size,
                relay_cpus=config.relay_cpus,
                load_cpus=config.load_cpus,
                rooms_per_process=config.rooms_per_process,
            )
            if config.rooms_per_process == 1:
                results["c_per_room"] = c_baseline.run_per_room(same_load)
            results["floor"] = {
                relay: c_baseline.run_per_room(replace(same_load, relay=relay))
                for relay in FLOOR_RELAYS
                if relay != "c-aead" or config.rooms_per_process == 1  # the C relay serves one room
            }

        def step(rooms: int) -> dict[str, Any]:
            result = measure(config, rooms, "udp", config.search_seconds, live)
            live.update(advance=1)
            return result

        results["search"] = search(config, step)
    held = [r["rooms"] for r in results["search"] if r["held"]]
    results["rooms_per_core"] = max(held) if held else None
    report.config = asdict(config)
    report.results = results
    report.markdown = markdown(config, results)
    return results


def _c_cpu(results: dict[str, Any]) -> float | None:
    c = results.get("c_baseline") or {}
    with contextlib.suppress(KeyError, TypeError, IndexError):
        return float(c["runs"][0]["relay_cpu_percent"]) if "runs" in c else float(c["relay_cpu_percent"])
    return None


def c_per_room_cpu(results: dict[str, Any]) -> float | None:
    """The C relay's CPU as deployed (one process per room, `baseline.run_per_room`), if measured."""
    c = results.get("c_per_room") or {}
    return c.get("relay_cpu_percent")


def floor_table(per_run: list[dict[str, Any]]) -> list[str]:
    """The UDP relay beside what it cannot go below at the same load (medians of the runs): the C
    relay as one process and, with a process per room, as deployed, without and with the relay's
    AES-GCM; the interpreter's floor (loadtest/floor_relay.py) in the relay's processes, the same
    two. Empty where the runs measured no floor; a row that could not run says why."""
    runs = [r for r in per_run if r.get("floor") and "udp" in r["shape"]]
    if not runs:
        return []
    c_cpu = [_c_cpu(r) for r in runs]

    def row(name: str, measured: list[dict[str, Any]], fanout: int = GROUP_SIZE - 1) -> list[Any]:
        cpu = [m.get("relay_cpu_percent") for m in measured]
        delivered = [
            100 * m["received_per_s"] / (fanout * m["sent_per_s"]) if m.get("sent_per_s") else None
            for m in measured
        ]
        per_msg = [
            m.get("cpu_us_per_message_in")
            or (m["relay_cpu_percent"] * 1e4 / m["sent_per_s"] if m.get("sent_per_s") else None)
            for m in measured
        ]
        ratios = [x and c and x / c for x, c in zip(cpu, c_cpu, strict=True)]
        processes = median([m.get("processes", 1) for m in measured])
        return [
            name,
            f"{processes:g}" if processes else "-",
            median(cpu),
            median(per_msg),
            median(ratios),
            _percent(median(delivered)),
        ]

    ours = [r["shape"]["udp"] for r in runs]
    rows = [row("C relay, one process", [r["c_baseline"] for r in runs])]
    if all(r.get("c_per_room", {}).get("relay_cpu_percent") for r in runs):
        rows.append(row("C relay, a process per room", [r["c_per_room"] for r in runs]))
    for relay, name in FLOOR_RELAYS.items():
        if all((r["floor"].get(relay) or {}).get("relay_cpu_percent") for r in runs):
            rows.append(row(name, [r["floor"][relay] for r in runs]))
    rows.append(
        [
            "this relay (UDP)",
            str(runs[0]["floor"]["python"].get("processes", "-")),  # the floor runs in its processes
            median([o["relay_cpu_percent"] for o in ours]),
            median([o["cpu_us_per_message_in"] for o in ours]),
            median([o["relay_cpu_percent"] / c if c else None for o, c in zip(ours, c_cpu, strict=True)]),
            _percent(median([100 * o["delivered"] / o["due"] if o.get("due") else None for o in ours])),
        ]
    )
    skipped = {
        FLOOR_RELAYS[relay]: reason
        for r in runs
        for relay, measured in r["floor"].items()
        if (reason := (measured or {}).get("skipped"))
    }
    return [
        "The floor at this load (UDP): the interpreter's least per packet in the same processes "
        "(loadtest/floor_relay.py), beside the C relay"
        + (f"; medians of {len(runs)} runs" if len(runs) > 1 else ""),
        "",
        *table(["relay", "processes", "CPU %", "CPU us per message in", "x C", "delivered %"], rows),
        "",
        *(f"*{name}*: not run: {reason}" for name, reason in skipped.items()),
        *([""] if skipped else []),
    ]


def _percent(share: float | None) -> str:
    """Delivered, as a whole percent: the rates it comes from span slightly different windows."""
    return "-" if share is None else f"{share:.0f}"


def steal_cell(share: float | None) -> str:
    """Steal to a tenth of a percent, "-" for a run from before it was recorded: a tenth of a
    percent of a 20 s window is a 20 ms stall."""
    return "-" if share is None else f"{share:.1f}"


def _held_cell(result: dict[str, Any]) -> str:
    if result["held"]:
        return "yes"
    return "no: steal, measured again" if result.get("stolen") else "no"


def _lat(summary: dict[str, Any]) -> str:
    if not summary.get("count"):
        return "-"
    return " / ".join(f"{summary.get(k, 0):.3g}" for k in ("p50_ms", "p99_ms", "p99.9_ms"))


def markdown(config: FleetShapeConfig, results: dict[str, Any]) -> list[str]:
    c_cpu = _c_cpu(results)
    c_room = c_per_room_cpu(results)
    rows = []
    for transport, r in results["shape"].items():
        ratio = round(r["relay_cpu_percent"] / c_cpu, 2) if c_cpu else None
        rows.append(
            [
                transport,
                r["rooms"],
                f"{r['offered_per_s']:,.0f}",
                r["relay_cpu_percent"],
                c_cpu,
                ratio,
                c_room,
                round(r["relay_cpu_percent"] / c_room, 2) if c_room else None,
                r["cpu_us_per_message_in"],
                r["context_switches_per_message_in"],
                _lat(r["added"]),
                _lat(r["end_to_end"]),
                r["lost"],
                r.get("load_core_busy_percent"),
                steal_cell(r.get("relay_core_steal_percent")),
            ]
        )
    first = next(iter(results["shape"].values()), {})
    md = [
        f"## Deployed shape: {config.rooms} rooms x {GROUP_SIZE} players x {config.hz:g} Hz, "
        f"{_processes(config)}, one message per packet",
        "",
        f"Relays: {first.get('caps', '-')}; all on CPU {config.relay_cpus}, "
        f"the load on CPU {config.load_cpus}.",
        "",
        *table(
            [
                "transport",
                "rooms",
                "msg/s in",
                "relay CPU % (all relays)",
                "C relay CPU % (same rate)",
                "x C",
                "C relay, a process per room, CPU %",
                "x C per room",
                "CPU us per message in",
                "context switches per message",
                "added p50 / p99 / p99.9 ms",
                "end to end p50 / p99 / p99.9 ms",
                "lost",
                "load core busy %",
                "relay core steal %",
            ],
            rows,
        ),
        "",
        LOAD_CORE_NOTE,
        "",
        STEAL_NOTE,
        "",
        *warmup_note(results),
        *floor_table([results]),
        f"## Rooms per core (4 players x {config.hz:g} Hz, UDP): "
        f"added p99 <= {config.p99_limit_ms:g} ms, no loss",
        "",
        *table(
            ["rooms", "relay CPU %", "added p50 / p99 / p99.9 ms", "lost", "relay core steal %", "held"],
            [
                [
                    r["rooms"],
                    r["relay_cpu_percent"],
                    _lat(r["added"]),
                    r["lost"],
                    steal_cell(r.get("relay_core_steal_percent")),
                    _held_cell(r),
                ]
                for r in results["search"]
            ],
        ),
        "",
        f"Rooms per core: **{results['rooms_per_core'] or 'none of those tried'}**. {STOLEN_RULE}",
    ]
    return md


def _processes(config: FleetShapeConfig) -> str:
    n = config.rooms_per_process
    return (
        "one relay process per room"
        if n == 1
        else f"{n} rooms per relay process (the rooms-per-process tier)"
    )


def config_from_args(args: Any) -> FleetShapeConfig:
    kw: dict[str, Any] = {}
    names = (
        "rooms",
        "hz",
        "step_seconds",
        "search_seconds",
        "warmup_seconds",
        "relay_cpus",
        "load_cpus",
        "workers",
        "rooms_per_process",
    )
    for name in names:
        v = getattr(args, name, None)
        if v is not None:
            kw[name] = v
    if getattr(args, "transports", None):
        kw["transports"] = tuple(args.transports.split(","))
    if getattr(args, "search", None):
        kw["search"] = tuple(int(n) for n in args.search.split(","))
    if getattr(args, "no_baseline", False):
        kw["baseline"] = False
    if getattr(args, "uncapped", False):
        kw["capped"] = False
    return FleetShapeConfig.quick(**kw) if getattr(args, "quick", False) else FleetShapeConfig(**kw)
