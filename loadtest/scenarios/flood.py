"""`flood`: what an attacker buys, and what it costs the room's honest members.

For each attack (loadtest/attackers.py) a fresh relay (pinned to the relay CPU, its default
limits) serves a room of honest members (bots on the project's client, playing at `hz`), first
unloaded, then with the attacker running beside them (on the load CPU too, at SCHED_IDLE, so
that the bots' latency is the relay's doing, not their CPU's). An attack holds when no honest member is
disconnected or loses anything, their added p99 stays within `p99_factor` of the unloaded
phase's (and under `p99_floor_ms`, so that a tiny unloaded p99 does not make noise a failure),
and the relay sends the attacker at most `bytes_factor` times what it received from it.
The figures go to docs/security.md.
"""

from __future__ import annotations

import multiprocessing
from dataclasses import asdict, dataclass
from typing import Any

from loadtest.attackers import KINDS, MEMBER_FLOODS, Attack, attacker_main
from loadtest.bots import Behaviour
from loadtest.machine import parse_cpus, pin
from loadtest.phase import run_phase
from loadtest.progress import Live
from loadtest.relayhost import RelayProcess
from loadtest.report import Report, table


@dataclass(frozen=True, slots=True)
class FloodConfig:
    attacks: tuple[str, ...] = KINDS
    members: int = 4
    hz: float = 30.0
    transport: str = "udp"  # the honest members'
    phase_seconds: float = 6.0  # past the relay's 5 s of abuse before a kick
    member_rate: float = 100_000.0  # messages/s of a member flood
    hello_rate: float = 10_000.0
    half_open: int = 1000
    p99_factor: float = 2.0
    p99_floor_ms: float = 5.0
    bytes_factor: float = 1.0
    relay_cpus: str = "0"
    load_cpus: str = "1"

    @classmethod
    def quick(cls, **kw: Any) -> FloodConfig:
        base: dict[str, Any] = {
            "members": 2,
            "hz": 10.0,
            "phase_seconds": 1.5,
            "member_rate": 20_000.0,
            "hello_rate": 2_000.0,
            "half_open": 600,  # well past max_pending_connections (256), even with some refused
        }
        base.update(kw)
        return cls(**base)


def _attack(config: FloodConfig, kind: str) -> Attack:
    rate = {"hello": config.hello_rate, "halfopen": float(config.half_open)}.get(kind, config.member_rate)
    return Attack(kind, rate, config.phase_seconds)


def _members_phase(
    relay: RelayProcess, config: FloodConfig, step: int, live: Live, label: str
) -> dict[str, Any]:
    bots = [(step * 100 + i, config.transport, 0) for i in range(config.members)]
    return run_phase(
        [(relay.host, relay.port, relay.key)],
        bots,
        Behaviour(hz=config.hz, targeted_fraction=0.2),
        config.phase_seconds,
        step=step,
        load_cpus=config.load_cpus,
        relay_pids=[relay.pid],
        live=live,
        label=label,
    )


def _honest(phase: dict[str, Any]) -> dict[str, Any]:
    """What the honest members went through in a phase (their broadcasts also go to the
    attacker, a member too: only deliveries to honest members count)."""
    events = phase["events"]
    honest = {k: v for k, v in phase["accounting"]["per_recipient"].items() if not k.startswith("attacker")}
    return {
        "joined": phase["connected"]["ok"],
        "failed_to_join": len(phase["connected"]["failed"]),
        "disconnected": sum(events.get(k, 0) for k in ("ConnectionLost", "Disconnected", "ClosingEvent")),
        "errors": events.get("ErrorEvent", 0),
        "lost": sum(r["lost"] for r in honest.values()),
        "delivered": sum(r["delivered"] for r in honest.values()),
        "p99_ms": phase["latency"].get("p99_ms"),
        "relay_cpu_percent": phase.get("relay_cpu_percent"),
    }


def verdict(
    config: FloodConfig, kind: str, quiet: dict[str, Any], attacked: dict[str, Any], attacker: dict[str, Any]
) -> list[str]:
    """Why the attack was not held (empty: held)."""
    why = []
    if not attacker.get("ok"):
        why.append(f"attacker failed: {attacker.get('error')}")
    if attacked["failed_to_join"] or attacked["disconnected"] or attacked["errors"]:
        why.append(
            f"honest members hurt: {attacked['failed_to_join']} not joined, "
            f"{attacked['disconnected']} dropped, {attacked['errors']} errors"
        )
    if attacked["lost"]:
        why.append(f"honest members lost {attacked['lost']} messages")
    p99, base = attacked["p99_ms"], quiet["p99_ms"]
    if p99 is None:
        why.append("nothing delivered to honest members")
    elif base is not None and p99 > max(config.p99_factor * base, config.p99_floor_ms):
        why.append(f"p99 {p99:.2f} ms > {config.p99_factor:g} x {base:.2f} ms")
    bytes_in, bytes_out = attacker.get("bytes_in", 0), attacker.get("bytes_out", 0)
    # a non-reader is a member: what it is sent is the room's traffic, not answers to it
    if kind != "nonreader" and bytes_out > config.bytes_factor * max(bytes_in, 1):
        why.append(f"attacker got {bytes_out} bytes for {bytes_in}")
    return why


def run(config: FloodConfig, report: Report, progress: bool | None = None) -> dict[str, Any]:
    pin(parse_cpus(config.load_cpus))
    results: dict[str, Any] = {}
    ctx = multiprocessing.get_context("fork")
    with Live("flood", total=len(config.attacks), enabled=progress) as live:
        for n, kind in enumerate(config.attacks, start=1):
            relay = RelayProcess({}, config.relay_cpus)
            try:
                quiet = _honest(_members_phase(relay, config, 2 * n, live, f"{kind}: unloaded"))
                ours, theirs = ctx.Pipe()
                attack = _attack(config, kind)
                proc = ctx.Process(
                    target=attacker_main,
                    args=(theirs, attack, relay.host, relay.port, relay.key, config.load_cpus),
                    daemon=True,
                )
                proc.start()
                ours.recv()  # ready
                ours.send("go")
                attacked = _honest(_members_phase(relay, config, 2 * n + 1, live, f"{kind}: attacked"))
                attacker = (
                    ours.recv()
                    if ours.poll(config.phase_seconds + 30)
                    else {"ok": False, "error": "no answer"}
                )
                proc.join(5)
                relay_alive = relay.alive()
                drops_after = relay.stats[-1] if relay.stats else {}
            finally:
                relay.stop()
            why = verdict(config, kind, quiet, attacked, attacker)
            if not relay_alive:
                why.append("the relay died")
            results[kind] = {
                "attack": asdict(attack),
                "unloaded": quiet,
                "attacked": attacked,
                "attacker": attacker,
                "held": not why,
                "why": "; ".join(why) or "held",
                "relay": drops_after,
            }
            live.update(advance=1)
            live.log(f"flood {kind}: {results[kind]['why']}")
    report.config = asdict(config)
    report.results = {"attacks": results}
    rows = []
    for kind, r in results.items():
        a = r["attacker"]
        bytes_in, bytes_out = a.get("bytes_in", 0), a.get("bytes_out", 0)
        rows.append(
            [
                kind,
                f"{a.get('rate', a.get('messages_sent', 0)):,.0f}"
                if kind != "halfopen"
                else f"{a.get('messages_sent', 0)} conns",
                r["unloaded"]["p99_ms"],
                r["attacked"]["p99_ms"],
                r["attacked"]["disconnected"] + r["attacked"]["failed_to_join"],
                r["attacked"]["lost"],
                bytes_in,
                bytes_out,
                round(bytes_out / bytes_in, 4) if bytes_in else None,
                "yes" if a.get("closed_by_relay") else "no" if kind in (*MEMBER_FLOODS, "nonreader") else "-",
                r["attacked"]["relay_cpu_percent"],
                r["why"],
            ]
        )
    report.markdown = [
        f"## Attacks on a room of {config.members} honest members "
        f"({config.transport}, {config.hz:g} Hz each)",
        "",
        "The attacker shares the load CPU with the honest bots at SCHED_IDLE (the bots' latency "
        "then shows what the relay does to them, not their own CPU busy with the flood).",
        "",
        *table(
            [
                "attack",
                "attacker rate (msg/s)",
                "honest p99 ms unloaded",
                "honest p99 ms attacked",
                "honest members dropped",
                "honest messages lost",
                "bytes attacker -> relay",
                "bytes relay -> attacker",
                "out / in",
                "attacker closed by relay",
                "relay CPU %",
                "verdict",
            ],
            rows,
        ),
    ]
    return results


def config_from_args(args: Any) -> FloodConfig:
    kw: dict[str, Any] = {}
    if getattr(args, "attacks", None):
        kw["attacks"] = tuple(args.attacks.split(","))
    if getattr(args, "phase_seconds", None) is not None:
        kw["phase_seconds"] = args.phase_seconds
    if getattr(args, "transport", None):
        kw["transport"] = args.transport
    return FloodConfig.quick(**kw) if getattr(args, "quick", False) else FloodConfig(**kw)
