"""The load-test command line's grammar: one subcommand per scenario, and its knobs.

Apart from loadtest/cli.py, which runs a scenario: `benchmarks` parses each scenario's arguments
the same way to rerun it, and cli.py in turn runs `benchmarks`, so both import this instead of
each other.
"""

from __future__ import annotations

import argparse

USAGE = """The load-test command line: one subcommand per scenario, each bounded and stopping by itself.

    python -m loadtest baseline   [--quick]      the C per-packet UDP relay (loadtest/c/udp_reference.c)
    python -m loadtest throughput [--quick]      delivered msg/s on one relay core, UDP, WS and GS2
    python -m loadtest nano       [--quick]      one room, N players at H Hz, GS2's 8 x 3/s and above
    python -m loadtest fleet      [--quick]      rooms through the control plane: provision, join, delete
    python -m loadtest density    [--quick]      start latency, idle memory per room, rooms per machine
    python -m loadtest soak       [--quick]      churn for a while; memory, fds and tasks stay flat
    python -m loadtest chaos      [--quick]      kill relays and the control plane mid-run
    python -m loadtest fleet-shape [--quick]     R rooms x 4 x 20 Hz, a relay process each, vs the C relay
    python -m loadtest flood      [--quick]      attacks on a room: what the attacker buys, what members feel
    python -m loadtest stores     [--quick]      getRoom/wantRoom on SQLite and PostgreSQL, one node and two
    python -m loadtest benchmarks [--runs 3]     regenerate BENCHMARKS.md

Every run writes ./results/<scenario>-<timestamp>/ (or --out): result.json, summary.md, PNGs.
"""
"""What `python -m loadtest --help` prints above the subcommands."""


def positive(text: str) -> int:
    """A count that must be at least 1 (rooms, room counts): argparse's type, so that 0 is
    refused with the option's name rather than failing deep in a run."""
    try:
        n = int(text)
    except ValueError:
        n = 0
    if n < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of at least 1")
    return n


def positives(text: str) -> str:
    """A comma list of `positive` counts, kept as written (the scenario splits it)."""
    for part in text.split(","):
        positive(part)
    return text


def _common(p: argparse.ArgumentParser) -> None:
    """The options every scenario takes."""
    p.add_argument("--quick", action="store_true", help="tiny, fast configuration (seconds)")
    p.add_argument("--out", default=None, help="results folder (default ./results/<scenario>-<time>/)")
    p.add_argument("--no-progress", action="store_true", help="no live progress bar")


def build_parser() -> argparse.ArgumentParser:
    """Every scenario's subcommand; `benchmarks` parses each scenario's rerun with it too."""
    parser = argparse.ArgumentParser(
        prog="python -m loadtest", description=USAGE, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="scenario", required=True)

    p = sub.add_parser("baseline", help="C per-packet UDP relay ceiling")
    _common(p)
    p.add_argument("--seconds", type=float, default=None)
    p.add_argument("--pps", type=int, default=None, help="offered datagrams/s (0 = flat out)")
    p.add_argument("--runs", type=int, default=1)

    p = sub.add_parser("throughput", help="delivered msg/s on one relay core")
    _common(p)
    p.add_argument(
        "--transports", default=None, help="comma list of udp, ws, gs2, mixed (default udp,ws,gs2)"
    )
    p.add_argument("--rooms", type=int, default=None, help="relay processes on the relay CPU (1 room each)")
    p.add_argument("--groups", type=int, default=None, help="groups of 4 members per relay")
    p.add_argument("--workers", type=int, default=None, help="load processes")
    p.add_argument("--batch", type=int, default=None, help="messages coalesced per client packet")
    p.add_argument("--payload-size", type=int, default=None)
    p.add_argument("--step-seconds", type=float, default=None)
    p.add_argument("--start-rate", type=float, default=None, help="offered msg/s at the first step")
    p.add_argument("--growth", type=float, default=None)
    p.add_argument("--max-steps", type=int, default=None)
    p.add_argument("--half-load-seconds", type=float, default=None)
    p.add_argument("--sample-every", type=int, default=None)
    p.add_argument("--coalesce-tick", type=float, default=None)
    p.add_argument("--max-coalesce-delay-udp", type=float, default=None, help="relay override (s)")
    p.add_argument("--relay-cpus", default=None)
    p.add_argument("--load-cpus", default=None)
    p.add_argument("--baseline-pps", type=int, default=None)
    p.add_argument("--baseline-seconds", type=float, default=None)
    p.add_argument("--no-baseline", action="store_true")
    p.add_argument(
        "--relay-profile",
        default=None,
        help="cProfile the relay; pstats to PATH.<transport>.<steps|half>.<n>",
    )

    p = sub.add_parser("nano", help="one room at and above GS2's realtime1.nano load")
    _common(p)
    p.add_argument("--steps", default=None, help="players x hz list, e.g. 8x3,8x10,16x30")
    p.add_argument("--step-seconds", type=float, default=None)
    p.add_argument(
        "--transports",
        default=None,
        help="comma list of ws, udp, gs2, mixed, wss (WS over TLS) (default ws,udp,gs2)",
    )
    p.add_argument("--workers", type=int, default=None)

    p = sub.add_parser("fleet", help="rooms through the control plane")
    _common(p)
    p.add_argument("--rooms", type=int, default=None)
    p.add_argument("--players", type=int, default=None, help="players per room")
    p.add_argument("--play-seconds", type=float, default=None)
    p.add_argument("--control-url", default=None, help="use a running control plane instead of starting one")

    p = sub.add_parser("density", help="room start latency, idle memory per room, rooms per machine")
    _common(p)
    p.add_argument("--hold-rooms", type=int, default=None, help="idle rooms to hold at once (default 1000)")
    p.add_argument("--sequential-rooms", type=int, default=None, help="rooms timed one at a time")
    p.add_argument("--cold-runs", type=int, default=None)

    p = sub.add_parser("soak", help="long run with churn")
    _common(p)
    p.add_argument("--seconds", type=float, default=None)
    p.add_argument("--players", type=int, default=None)

    p = sub.add_parser("chaos", help="kill relays and the control plane mid-run")
    _common(p)
    p.add_argument("--rooms", type=int, default=None)
    p.add_argument("--seconds", type=float, default=None)

    p = sub.add_parser("fleet-shape", help="the deployed shape: one relay process per room vs the C relay")
    _common(p)
    p.add_argument("--rooms", type=positive, default=None, help="rooms (relay processes), 4 players each")
    p.add_argument("--hz", type=float, default=None, help="messages/s per player (one per packet)")
    p.add_argument("--transports", default=None)
    p.add_argument("--step-seconds", type=float, default=None)
    p.add_argument(
        "--search", type=positives, default=None, help="comma list of room counts tried for rooms per core"
    )
    p.add_argument("--search-seconds", type=float, default=None)
    p.add_argument(
        "--warmup-seconds", type=float, default=None, help="each step's first seconds, out of its latencies"
    )
    p.add_argument("--workers", type=int, default=None)
    p.add_argument("--relay-cpus", default=None)
    p.add_argument("--load-cpus", default=None)
    p.add_argument("--no-baseline", action="store_true")
    p.add_argument("--uncapped", action="store_true", help="no cgroup caps (the caps' own cost)")
    p.add_argument(
        "--rooms-per-process",
        type=positive,
        default=None,
        help="N rooms per relay process (the rooms-per-process tier)",
    )

    p = sub.add_parser("flood", help="attacks on a room: what the attacker buys, what honest members feel")
    _common(p)
    p.add_argument(
        "--attacks", default=None, help="comma list of send,ping,sync,profile,hello,halfopen,nonreader"
    )
    p.add_argument("--phase-seconds", type=float, default=None)
    p.add_argument("--transport", default=None, help="the honest members' transport (udp, ws)")

    p = sub.add_parser("stores", help="the control plane on SQLite and PostgreSQL, one node and two")
    _common(p)
    p.add_argument("--seconds", type=float, default=None, help="seconds per measured phase")
    p.add_argument("--concurrency", type=int, default=None, help="keep-alive connections, over the nodes")
    p.add_argument(
        "--ready-rooms", type=int, default=None, help="rooms timed from wantRoom to ready, per store"
    )

    p = sub.add_parser("benchmarks", help="regenerate BENCHMARKS.md")
    _common(p)
    p.add_argument("--runs", type=int, default=3, help="runs per figure (medians reported)")
    p.add_argument("--output", default=None, help="file to write (default BENCHMARKS.md at the repo root)")
    p.add_argument(
        "--skip",
        default="",
        help="comma list of parts to skip: fleet-shape,throughput,flood,nano,fleet,density,stores,firsttouch",
    )
    return parser
