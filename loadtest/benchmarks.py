"""`python -m loadtest benchmarks`: reruns the headline scenarios and rewrites BENCHMARKS.md.

The deployed shape leads (fleet-shape: many rooms per core, a relay process each, one message
per packet), then the one-process peak (throughput); both run `--runs` times with the C relay
measured in the same run, and medians are reported beside every run's figures; flood, nano and
fleet run once each (their results are searches and latency distributions, not a single rate).
Each run's full results stay in results/benchmarks-<timestamp>/.
"""

from __future__ import annotations

import os
import shlex
import time
from pathlib import Path
from typing import Any

from loadtest.machine import machine_info
from loadtest.report import Report, median, pair_ms, results_dir, table
from relay.agent.tiers import NANO

REPO_ROOT = Path(__file__).resolve().parent.parent
GROUP_ROOMS = 25
"""Rooms per relay process in the rooms-per-process tier's figures (docs/tiers.md)."""
ONE_PROCESS = 100
"""Every room of the shape in one process: issue 20's one-process target (1.6x the C relay)."""
_AFFINITY = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else None


def _run(scenario: str, argv: list[str], out: Path, progress: bool | None) -> tuple[Report, Any]:
    from loadtest.arguments import build_parser
    from loadtest.scenarios.runners import RUNNERS

    # Scenarios pin this process to their load CPUs, and whatever it starts inherits that: put it
    # back first, or a later scenario's control plane and relays would share one core.
    if _AFFINITY is not None:
        os.sched_setaffinity(0, _AFFINITY)

    args = build_parser().parse_args([scenario, *argv, "--out", str(out)])
    report = Report(
        scenario,
        results_dir(scenario, out),
        config={},
        command="python -m loadtest " + shlex.join([scenario, *argv]),
    )
    if not progress:
        args.no_progress = True
    result = RUNNERS[scenario](args, report)
    report.write()
    return report, result


def regenerate(args: Any, command: str) -> int:
    runs = max(1, args.runs)
    skip = {s for s in args.skip.split(",") if s}
    base = results_dir("benchmarks", args.out)
    progress = False if args.no_progress else None
    quick = ["--quick"] if args.quick else []
    started = time.strftime("%Y-%m-%d %H:%M:%S %Z")
    sections: list[str] = []
    commands: list[str] = [command]

    if "fleet-shape" not in skip:
        # one process per room, the rooms-per-process tier, every room in one process: alternating
        # within each run
        shapes = {
            n: [*quick, *(["--rooms-per-process", str(n)] if n > 1 else [])]
            for n in (1, GROUP_ROOMS, ONE_PROCESS)
        }
        for fs_argv in shapes.values():
            commands.append("python -m loadtest fleet-shape " + shlex.join(fs_argv) + f"   (x{runs})")
        fs_runs: dict[int, list[dict[str, Any]]] = {n: [] for n in shapes}
        try:
            for i in range(runs):
                for n, fs_argv in shapes.items():
                    name = f"fleet-shape-{i + 1}" + (f"-grouped-{n}" if n > 1 else "")
                    report, result = _run("fleet-shape", fs_argv, base / name, progress)
                    fs_runs[n].append(result)
                    print(f"benchmarks: {name} done ({report.out})")
            for n, per_run in fs_runs.items():
                sections += _fleet_shape_section(per_run, n)
            sections += [
                "The best case follows (one room, coalesced input): a peak, not the deployed shape.",
                "",
            ]
        except Exception as exc:
            done = [
                line for n, per_run in fs_runs.items() if per_run for line in _fleet_shape_section(per_run, n)
            ]
            sections += _failed("Deployed shape", exc, done)
    if "throughput" not in skip:
        tp_argv = [*quick]
        commands.append("python -m loadtest throughput " + shlex.join(tp_argv) + f"   (x{runs})")
        per_run = []
        try:
            for i in range(runs):
                report, result = _run("throughput", tp_argv, base / f"throughput-{i + 1}", progress)
                per_run.append(result)
                print(f"benchmarks: throughput run {i + 1}/{runs} done ({report.out})")
            sections += _throughput_section(per_run)
        except Exception as exc:  # the document still says what ran and what failed
            sections += _failed("Throughput", exc, per_run and _throughput_section(per_run))
    if "nano" not in skip:  # run as often as the others: issue 20's tier target is "every run"
        commands.append("python -m loadtest nano " + shlex.join(quick) + f"   (x{runs})")
        nano_runs: list[tuple[Report, dict[str, Any]]] = []
        try:
            for i in range(runs):
                nano_runs.append(_run("nano", quick, base / f"nano-{i + 1}", progress))
                print(f"benchmarks: nano run {i + 1}/{runs} done ({nano_runs[-1][0].out})")
            sections += _nano_section(nano_runs)
        except Exception as exc:
            sections += _failed("nano", exc, nano_runs and _nano_section(nano_runs))
    parts = (
        ("flood", "flood", _flood_section),
        ("fleet", "fleet", _fleet_section),
        ("density", "density", _density_section),
        ("stores", "stores", _stores_section),
    )
    for name, title, render in parts:
        if name in skip:
            continue
        commands.append(f"python -m loadtest {name} " + shlex.join(quick))
        try:
            report, result = _run(name, quick, base / name, progress)
            sections += render(result, report)
        except Exception as exc:
            sections += _failed(title, exc, None)
    if "firsttouch" not in skip:
        from loadtest import firsttouch

        sizes = {"rooms": 3, "hold_gib": 0.05, "touch_gib": 0.05, "settle_limit": 3} if args.quick else {}
        flags = [f"--{k.replace('_', '-')}={v}" for k, v in sizes.items()]
        commands.append("python -m loadtest.firsttouch " + shlex.join(flags))
        try:
            sections += _firsttouch_section(firsttouch.run(**sizes))
        except Exception as exc:
            sections += _failed("firsttouch", exc, None)

    info = machine_info()
    doc = [
        "# Benchmarks",
        "",
        "Generated by `python -m loadtest benchmarks` (loadtest/benchmarks.py); rerun it rather than "
        "editing by hand.",
        "",
        f"- Run: {started}",
        f"- Machine: {info['cpu_model']}, {info['cores']} cores, {info['memory_mb']:,} MB RAM, "
        f"Linux {info['kernel']}, Python {info['python']}",
        "- Placement: relay on CPU 0; every load process (senders, receivers, bots, harness) on CPU 1; "
        "loopback only.",
        f"- Results of this run: `{base}/`",
        "",
        "Commands (from the repository root, venv active):",
        "",
        "```",
        *commands,
        "```",
        "",
        "## What the figures mean",
        "",
        "- **Delivered messages/s**: 100-byte messages arriving at recipients per second of the sending "
        "window (what a relay that fell behind delivers from its queues after the window is not counted "
        "as rate). A 4-player room has a fan-out of 3, so every message sent is due 3 deliveries. "
        "The C baseline's figure is datagrams out of its relay per second (each datagram is one "
        "100-byte message, no crypto, no rooms), measured in the same run on the same CPUs "
        "(`loadtest/c/udp_reference.c`, written for this project: recvmmsg/sendmmsg in batches of 64).",
        "- **Datagrams** (in the per-step tables of each run's summary.md) are packets arriving at "
        "recipients: UDP datagrams or WebSocket messages, each holding several coalesced messages.",
        "- **Saturation**: offered load rises 1.5x per step until deliveries fall more than 5% short of "
        "what was due (lost, or still queued when the window closed) or stop growing; the best step's "
        "delivered rate is reported. *Saturated* says whether that stop came with the relay busy (70% "
        'of its core or more); "no" means the figure is what it was offered (the steps ran out, the '
        "load generator fell behind, or the relay's core was taken), not its limit. The C baseline is "
        'offered a fixed rate: "no" there means it forwarded all of it, or lost datagrams with '
        "its core not busy.",
        "- **Relay CPU**: utime+stime of the relay process (its CPU-time clock) over the step (loopback "
        "delivery work done in softirq is not charged to it; the per-step tables also give the relay "
        "core's busy share from /proc/stat).",
        "- **Latency** (one-way, one host, HDR histograms), measured at half of the saturation rate with "
        "every packet decrypted. *Added* (the p50 / p99 at half load column) is what the relay adds: the "
        "kernel's receive timestamp of the packet at the recipient's socket (SO_TIMESTAMPNS, read with "
        "recvmsg) minus time.time_ns() taken just before the sender's send() that handed the packet to "
        "the kernel. Both are CLOCK_REALTIME on the same host, so no clock offset enters; the figure "
        "holds the relay's queueing and processing plus loopback (tens of microseconds), and none of the "
        "load generator's lag. A TCP read carries the stamp of the last segment it read, so on WebSocket "
        "the receivers read frame by frame (the header, then the rest), each read ending with a frame's "
        "last byte. GS2 carries one message a frame, so two reads a frame would put the one load core "
        "seconds behind (as it did up to bench-s41, whose GS2 half-load figures were the load's backlog "
        "in the relay's send queues): its receivers read what is queued, and only the frame that ends a "
        "read gets that read's stamp. Its added figure is therefore a sample, in which frames that "
        "arrive together count once. *End to end* runs from the packet's scheduled send time to when the "
        "receiving worker got round to it (CLOCK_MONOTONIC): it also holds the senders' lateness and the "
        "time packets waited in recipients' sockets while the one load core was busy, so it overstates "
        "the relay (the per-run summaries give the senders' lateness p99 too). The saturation steps "
        "sample one packet in 16 and record only end-to-end latency. A second latency step runs at "
        "*half of the sustained rate*: the saturation rate is reached with queues and some loss, and "
        "half of it still keeps the relay's core 70-90% busy (far less coalescing per packet at the "
        "lower rate).",
        "- **Sustained**: the best step that lost at most 0.1% with end-to-end p99 at most 5 ms: what "
        "the relay serves well, where saturation is what it pushes through flat out (with queues and "
        "loss).",
        "- **Load generator**: senders seal all packets of a step before it starts (8 messages "
        "coalesced per packet, as a client coalesces what one loop pass produced) and only send() in "
        "the timed window; receivers count messages from packet lengths and decrypt one packet in "
        "16. At half load every packet is read with recvmsg for its kernel timestamp, with each "
        "packet's send time recorded, and held: all are decrypted and timed after the window, so the "
        "one load core is free to send on time (decrypting them in the window made the senders late "
        "by 1-4 ms at p99, and a late sender's catch-up burst queued at the relay).",
        "",
        *sections,
    ]
    output = Path(args.output) if args.output else REPO_ROOT / "BENCHMARKS.md"
    output.write_text("\n".join(doc).rstrip() + "\n")
    print(f"benchmarks: wrote {output}")
    return 0


def _failed(title: str, exc: Exception, partial: list[str] | None) -> list[str]:
    print(f"benchmarks: {title} failed: {exc!r}")
    return [f"## {title}", "", f"**Failed**: `{exc!r}`", "", *(partial or [])]


def _fleet_shape_section(per_run: list[dict[str, Any]], rooms_per_process: int = 1) -> list[str]:
    from loadtest.scenarios.fleetshape import (
        LOAD_CORE_NOTE,
        STEAL_NOTE,
        _c_cpu,
        c_per_room_cpu,
        floor_table,
        steal_cell,
        warmup_note,
    )

    first = per_run[0]
    grouped = rooms_per_process > 1
    c_rooms = [c_per_room_cpu(r) for r in per_run]
    per_room = not grouped and any(c_rooms)
    rows = []
    for transport in first["shape"]:
        shapes = [r["shape"][transport] for r in per_run]
        cpus = [s["relay_cpu_percent"] for s in shapes]
        c_cpus = [_c_cpu(r) for r in per_run]
        ratios = [c and cpu / c for cpu, c in zip(cpus, c_cpus, strict=True)]
        added = [s["added"] for s in shapes]
        e2e = [s["end_to_end"] for s in shapes]
        load_busy = [s.get("load_core_busy_percent") for s in shapes]
        rows.append(
            [
                transport,
                first["shape"][transport]["rooms"],
                f"{first['shape'][transport]['offered_per_s']:,.0f}",
                median(cpus),
                median(c_cpus),
                median(ratios),
                *(
                    [median(c_rooms), median([c and cpu / c for cpu, c in zip(cpus, c_rooms, strict=True)])]
                    if per_room
                    else []
                ),
                median([s["cpu_us_per_message_in"] for s in shapes]),
                median([s["context_switches_per_message_in"] for s in shapes]),
                " / ".join(
                    f"{median([a.get(k) for a in added]) or 0:.3g}" for k in ("p50_ms", "p99_ms", "p99.9_ms")
                ),
                " / ".join(
                    f"{median([a.get(k) for a in e2e]) or 0:.3g}" for k in ("p50_ms", "p99_ms", "p99.9_ms")
                ),
                sum(s["lost"] for s in shapes),
                ", ".join(f"{r:.2f}" if r else "-" for r in ratios),
                ", ".join(f"{a.get('p99.9_ms', 0):.3g}" if a.get("count") else "-" for a in added),
                ", ".join(f"{b:.0f}" if b is not None else "-" for b in load_busy),
                ", ".join(steal_cell(s.get("relay_core_steal_percent")) for s in shapes),
            ]
        )
    rooms = [r.get("rooms_per_core") for r in per_run]
    caps = first["shape"][next(iter(first["shape"]))]["caps"] if first["shape"] else "-"
    if rooms_per_process == ONE_PROCESS:
        head = [
            f"## One process for all {rooms_per_process} rooms",
            "",
            f"The same rooms, players and rates again, every room in one relay process "
            f"(`--rooms-per-process {rooms_per_process}`; {caps}): no per-room process to wake, the "
            "shape of issue 20's one-process target. All relays on CPU 0, the load on CPU 1; the C relay "
            f"measured again in the same run. Medians of {len(per_run)} runs.",
        ]
    elif grouped:
        head = [
            f"## The rooms-per-process tier: the same shape, {rooms_per_process} rooms per relay process",
            "",
            f"The same rooms, players and rates as above, with the control plane's "
            f"`--rooms-per-process {rooms_per_process}` (docs/tiers.md): each room still its own relay "
            f"(port, key, agent, limits) but {rooms_per_process} of them share a process and its caps; "
            f"{caps}; all relays on CPU 0, the load on CPU 1; the C relay measured again in the same run. "
            f"Medians of {len(per_run)} runs.",
        ]
    else:
        head = [
            "## The deployed shape: many rooms per core, one relay process each, one message per packet",
            "",
            f"What a host runs: every room its own relay process, forked from the zygote template as the "
            f"local provisioner forks it; {caps}; all relays on CPU 0, the load on CPU 1. 4 players per "
            "room, each sending one 100-byte message per packet at its own phase of the tick; the C "
            "per-packet relay forwards the same offered rate in the same run. Medians of "
            f"{len(per_run)} runs; relay CPU is all relay processes together (/proc).",
        ]
    return [
        *head,
        "",
        *table(
            [
                "transport",
                "rooms",
                "msg/s in",
                "relay CPU %",
                "C relay CPU % (same rate)",
                "x C",
                *(["C relay, a process per room, CPU %", "x C per room"] if per_room else []),
                "CPU us per message in",
                "context switches per message",
                "added p50 / p99 / p99.9 ms",
                "end to end p50 / p99 / p99.9 ms",
                "lost",
                "x C per run",
                "added p99.9 ms per run",
                "load core busy % per run",
                "relay core steal % per run",
            ],
            rows,
        ),
        "",
        LOAD_CORE_NOTE,
        "",
        STEAL_NOTE,
        "",
        *warmup_note(first),
        *(_c_per_room_note(per_run) if per_room else []),
        *floor_table(per_run),
        "Rooms per core (4 players x 20 Hz, UDP, added p99 <= 5 ms, no loss): "
        f"**{median([r or 0 for r in rooms]) or 'none of those tried'}** (median; per run: "
        + ", ".join(str(r) if r else "none tried held" for r in rooms)
        + ")"
        + _stolen_note(per_run),
        "",
    ]


def _same_rate_note(per_run: list[dict[str, Any]]) -> str:
    """GS2 against WebSocket at one offered rate per run (throughput.gs2_vs_ws_same_rate): GS2's
    highest step is its load generator's limit, so the ratio above compares two loads."""
    same = [r.get("gs2_vs_ws_same_rate") for r in per_run]
    ratios = [s["ratio"] for s in same if s]
    if not ratios:
        return ""
    return (
        " GS2's highest step can be its load generator's limit (its bots read a frame a message), "
        "not the relay's: at one offered rate, the highest step both delivered in full below the first "
        "rate at which either load process was busy, GS2 "
        f"was at {median(ratios):.2f}x (per run: "
        + ", ".join(f"{s['ratio']:.2f} at {s['delivered_per_s']:,.0f}/s" if s else "-" for s in same)
        + ")."
    )


def _stolen_note(per_run: list[dict[str, Any]]) -> str:
    """Which search steps were measured again after steal (fleetshape.search), if any."""
    from loadtest.scenarios.fleetshape import STOLEN_RULE

    stolen = [
        f"{r['rooms']} rooms in run {k}"
        for k, run in enumerate(per_run, 1)
        for r in run.get("search", ())
        if r.get("stolen")
    ]
    return f". {STOLEN_RULE} Measured again: {', '.join(stolen)}" if stolen else ""


def _c_per_room_note(per_run: list[dict[str, Any]]) -> list[str]:
    """What the shape costs with no interpreter: the C relay run as one process per room."""
    from loadtest.scenarios.fleetshape import _c_cpu

    measured = [r for r in per_run if (r.get("c_per_room") or {}).get("relay_cpu_percent")]
    runs = [r["c_per_room"] for r in measured]
    ones = [_c_cpu(r) for r in measured]
    shares = [c and room["relay_cpu_percent"] / c for room, c in zip(runs, ones, strict=True)]
    return [
        "*C relay, a process per room*: the same C relay started once per room, each process "
        "forwarding only its room's datagrams, under the same spread load (`baseline.run_per_room`, "
        "loadtest/baseline.py): what the one-process-per-room shape costs with no interpreter. "
        f"{median([r['cpu_us_per_message_in'] for r in runs]) or 0:.0f} us of CPU and "
        f"{median([r['context_switches_per_message_in'] for r in runs]) or 0:.2f} context switches per "
        "message in "
        f"(medians of {len(runs)} runs), {median(shares) or 0:.2f}x the one C process at the same rate "
        f"(per run: {', '.join(f'{x:.2f}' if x else '-' for x in shares)}). *x C* compares with the "
        "one C process, as issue 20's targets do; *x C per room* with the C relay in the same shape.",
        "",
    ]


def _flood_section(result: dict[str, Any], report: Report) -> list[str]:
    return [
        "## flood: attacks on a room (figures in docs/security.md)",
        "",
        *report.markdown,
        "",
    ]


def _throughput_section(per_run: list[dict[str, Any]]) -> list[str]:
    transports = list(per_run[0]["transports"]) if per_run else []
    rows = []
    base = [r.get("baseline", {}).get("delivered_per_s") for r in per_run]
    base_saturated = [r.get("baseline", {}).get("saturated") for r in per_run]
    rows.append(
        [
            "C baseline (UDP, per packet, no crypto)",
            median(base),
            1.0,
            None,
            None,
            None,
            None,
            None,
            None,
            None if None in base_saturated else "yes" if all(base_saturated) else "no",
            ", ".join(f"{b:,.0f}" if b else "-" for b in base),
        ]
    )
    for t in transports:
        rates = [r["transports"][t]["saturation"]["delivered_per_s"] for r in per_run]
        ratios = [r["transports"][t].get("ratio_to_baseline") for r in per_run]
        cpu = [r["transports"][t]["saturation"]["relay_cpu_percent"] for r in per_run]
        kept = [r["transports"][t].get("sustained", {}).get("delivered_per_s") for r in per_run]
        kept_ratios = [r["transports"][t].get("sustained_ratio_to_baseline") for r in per_run]
        halves = [r["transports"][t]["half_load"] for r in per_run]
        p50 = [h.get("added_latency", {}).get("p50_ms") for h in halves]
        p99 = [h.get("added_latency", {}).get("p99_ms") for h in halves]
        e2e50 = [h["latency"].get("p50_ms") for h in halves]
        e2e99 = [h["latency"].get("p99_ms") for h in halves]
        kept_halves = [r["transports"][t].get("half_sustained") or {} for r in per_run]
        k50 = [h.get("added_latency", {}).get("p50_ms") for h in kept_halves]
        k99 = [h.get("added_latency", {}).get("p99_ms") for h in kept_halves]
        rows.append(
            [
                f"Python relay, {t}",
                median(rates),
                median(ratios),
                median(cpu),
                median(kept),
                median(kept_ratios),
                pair_ms(median(p50), median(p99)),
                pair_ms(median(e2e50), median(e2e99)),
                pair_ms(median(k50), median(k99)),
                None,
                ", ".join(f"{x:,.0f}" for x in rates),
            ]
        )
        rows[-1][9] = "yes" if all(r["transports"][t]["saturation"]["reached"] for r in per_run) else "no"
    gs2 = [r.get("gs2_cpu_vs_ws") for r in per_run]
    gs2_line = (
        [
            f"GS2 game clients ([docs/gs2-clients.md](docs/gs2-clients.md)): relay CPU per delivered message "
            f"at saturation {median(gs2):.2f}x the WebSocket path's, in the same run (per run: "
            + ", ".join(f"{x:.2f}" if x else "-" for x in gs2)
            + "; the target is at most 1.3x)."
            + _same_rate_note(per_run),
            "",
        ]
        if any(gs2)
        else []
    )
    return [
        "## Peak throughput (best case): one relay core, one process, 4-player rooms, 8 messages "
        "per packet, encryption on",
        "",
        f"Medians of {len(per_run)} runs (each run measures the C baseline too; the ratio is per run, then "
        "the median). The machine is shared with other work, so runs spread: a step where the relay falls "
        "short while using under 70% of its core was starved by something else and is repeated, unless the "
        "load process was the busy one (at least 95% of its core): that is the load generator's limit, "
        "reported as such (GS2's, at one message a frame). The per-run column shows the spread.",
        "",
        *table(
            [
                "",
                "delivered msg/s (highest step)",
                "x C baseline",
                "relay CPU %",
                "sustained msg/s (loss <= 0.1%, p99 <= 5 ms)",
                "x C baseline",
                "p50 / p99 ms at half load (added)",
                "end-to-end p50 / p99 ms at half load",
                "p50 / p99 ms at half of sustained (added)",
                "saturated",
                "per run",
            ],
            rows,
        ),
        "",
        *gs2_line,
    ]


NANO_DETAIL_PLAYERS = 16
"""The nano section details every run's steps from this many players up (the tier's headroom)."""


def _nano_section(runs: list[tuple[Report, dict[str, Any]]]) -> list[str]:
    runs = [(report, result) for report, result in runs if result and "transports" in result]
    if not runs:
        return ["## nano", "", "Not run: no result", ""]
    from loadtest.scenarios.nano import (
        GS2_NANO_HZ,
        GS2_NANO_PLAYERS,
        HEADROOM_CAP_SHARE,
        HEADROOM_P99_MS,
        largest_with_headroom,
        tier_rows,
        with_headroom,
    )

    first_report, first = runs[0]
    rows = [
        [
            *row,
            "; ".join(
                f"run {i + 1}: " + ", ".join(f"{s['players']}x{s['hz']:g} ({s['why']})" for s in failed)
                for i, failed in enumerate(
                    [s for s in result["transports"][row[0]]["steps"] if not s["held"]] for _, result in runs
                )
                if failed
            )
            or "every step held",
        ]
        for row in tier_rows(first)
    ]
    cap = NANO.cpu * 100
    detail = []
    for transport in first["transports"]:
        per_step: dict[tuple[int, float], list[dict[str, Any] | None]] = {}
        for i, (_, result) in enumerate(runs):
            for step in result["transports"].get(transport, {}).get("steps", []):
                if step["players"] >= NANO_DETAIL_PLAYERS:
                    per_step.setdefault((step["players"], step["hz"]), [None] * len(runs))[i] = step
        for (players, hz), steps in per_step.items():
            ran = [s for s in steps if s is not None]
            detail.append(
                [
                    transport,
                    f"{players} x {hz:g} Hz",
                    ", ".join(
                        f"{s['relay_cpu_percent']:.1f} ({s['relay_cpu_percent'] / cap:.0%})" if s else "-"
                        for s in steps
                    ),
                    ", ".join(
                        f"{s['latency'].get('p50_ms', 0):.3g} / {s['latency'].get('p99_ms', 0):.3g}"
                        if s
                        else "-"
                        for s in steps
                    ),
                    ", ".join(str(s["totals"]["lost"]) if s else "-" for s in steps),
                    f"{sum(s['held'] for s in ran)} of {len(steps)}",
                    f"{sum(with_headroom(s) for s in ran)} of {len(steps)}",
                ]
            )
    headroom = (
        f"the relay at {HEADROOM_CAP_SHARE:.0%} of the cap's CPU or less, p99 under {HEADROOM_P99_MS:g} ms"
    )
    largest = []
    for transport in first["transports"]:
        best = largest_with_headroom(
            [result["transports"].get(transport, {}).get("steps", []) for _, result in runs]
        )
        largest.append(f"{transport} {best['players']} x {best['hz']:g} Hz" if best else f"{transport} none")
    return [
        "## nano: one room at and above GS2's realtime1.nano load (8 players x 3 msg/s)",
        "",
        *[f"- {n}" for n in first_report.notes],
        f"- {len(runs)} runs; the relay is given the tier's CPU budget (`relay serve --tier` does), so it "
        "paces its reads near the cap (docs/tiers.md)",
        "",
        "A step holds when WebSocket loses nothing, UDP loses < 0.1%, p99 < 20 ms.",
        "",
        *table(
            [
                "transport",
                "highest step that held (run 1)",
                "msg/s sent",
                "x GS2 nano",
                "realtime1.nano",
                "failed steps",
            ],
            rows,
        ),
        "",
        f"Every run's steps from {NANO_DETAIL_PLAYERS} players up (end-to-end latency at the bots; relay "
        f"CPU as a share of a core, and of the cap's {cap:g}%):",
        "",
        *table(
            [
                "transport",
                "step",
                "relay CPU % per run (of the cap)",
                "p50 / p99 ms per run",
                "lost per run",
                "held",
                "with headroom",
            ],
            detail,
        ),
        "",
        f"*With headroom* is issue 20's target for the tier: {headroom}, nothing lost. The largest "
        f"step with it in every run (GS2 states {GS2_NANO_PLAYERS} x {GS2_NANO_HZ} Hz for "
        f"realtime1.nano): " + "; ".join(largest) + ".",
        "",
    ]


def _fleet_section(result: dict[str, Any], report: Report) -> list[str]:
    if not result or "skipped" in result:
        return ["## fleet", "", f"Not run: {result.get('skipped') if result else 'no result'}", ""]
    rows = [
        [name, x.get("count"), x.get("p50_ms"), x.get("p90_ms"), x.get("p99_ms"), x.get("max_ms")]
        for name, x in (
            ("provisioning (wantRoom -> address)", result["provisioning_ms"]),
            ("join (connect -> WELCOME)", result["join_ms"]),
            ("deletion (deleteRoom -> relay exited)", result["deletion_ms"]),
        )
    ]
    rpm = result["rooms_per_machine"]
    return [
        "## fleet: rooms through the control plane",
        "",
        f"{result['ready']}/{result['wanted']} rooms ready.",
        "",
        *table(["latency (ms)", "count", "p50", "p90", "p99", "max"], rows),
        "",
        f"Rooms per machine (estimate): {rpm['estimate']} (by memory {rpm['by_memory']}, "
        f"by CPU {rpm['by_cpu']}; "
        f"idle relay RSS {result['relay_rss_mb_median'] or 0:.1f} MB).",
        "",
    ]


def _density_section(result: dict[str, Any], report: Report) -> list[str]:
    if not result or "skipped" in result:
        return ["## density", "", f"Not run: {result.get('skipped') if result else 'no result'}", ""]
    from loadtest.scenarios.density import markdown

    body = markdown(result)[2:]  # without its "## Result" heading
    return [
        "## density: room start latency, idle memory per room, rooms per machine",
        "",
        "Through `relay dev` as shipped: warm relays (2 standbys), zygote spawner, every relay in its own"
        " realtime1.nano cgroup. getRoom is polled every 2 ms in the first two runs; the third waits for "
        "the room-ready push on /gateway (GS2's notificationUserIds) and then calls getRoom once. The "
        "three take turns, 100 rooms each at a time, so each meets the machine as it fills (0 to 900 "
        "rooms held) alike. Back to back, every room after the first two gets a fresh fork, whose start "
        "writes some 1,600 pages it shared with the template (copy-on-write: each a new page), 1,200 of "
        "them before it registers. This VM reports free memory to its host (free page reporting), and "
        "writing a page the guest had reported is a fault on the host too: once the guest's recently "
        "freed memory is spent (a machine filling with rooms), those host faults set a fresh fork's start"
        " time, and with it the back-to-back tails here (next section). Paced starts (the second run) "
        "take standbys, which paid for their pages ahead of demand.",
        "",
        *body,
        "",
    ]


def _stores_section(result: dict[str, Any], report: Report) -> list[str]:
    if not result or "skipped" in result:
        return ["## stores", "", f"Not run: {result.get('skipped') if result else 'no result'}", ""]
    from loadtest.scenarios.stores import StoresConfig, markdown

    body = markdown(result, StoresConfig(**report.config))[2:]  # without its "## Result" heading
    skipped = result.get("postgresql_skipped")
    return [
        "## stores: the control plane on SQLite and PostgreSQL, one node and two",
        "",
        "Each node is `relay dev --provisioner none` (a wantRoom is the control plane and its store); the "
        "load generator is one asyncio process writing prepared HTTP/1.1 requests on keep-alive "
        "connections spread over the nodes, on the same machine. Two nodes share one PostgreSQL database "
        '(docs/operations.md, "Several nodes"); on a 2-core machine the nodes, PostgreSQL and the load '
        "generator share the same two cores, so two nodes cannot double one node's figure: the last "
        "column says what held it (CPU of each part while getRoom ran)."
        + (f" PostgreSQL was not available: {skipped}." if skipped else ""),
        "",
        *body,
        "",
    ]


def _firsttouch_section(result: dict[str, Any]) -> list[str]:
    from loadtest import firsttouch

    return [
        "## firsttouch: is this machine's memory slow the first time it is written?",
        "",
        "Rooms wanted back to back through `relay dev --warm-relays 0` (every one a fresh fork), with "
        "the machine as it is; beside a process holding memory it has written; and, that process still "
        "there, right after more memory was written and freed. On a guest with free page reporting the "
        "second is far slower and the third as fast as the first: the cost is the host's, of pages the "
        "guest had reported free, not the relay's (docs/operations.md: what it means for the warm pool).",
        "",
        *firsttouch.markdown(result),
        "",
    ]
