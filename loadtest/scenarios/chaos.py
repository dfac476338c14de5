"""`chaos`: relays (and the control plane, when there is one) die during a run.

Several rooms, each its own relay process, with bots playing in all of them. A third of the way
in, room 0's relay is killed with SIGKILL (a crash: no CLOSING, members find out by silence);
two thirds in, room 1's relay gets SIGTERM (a shutdown: CLOSING to every member, then exit).
When the control plane is available a further room is created through it and the control
plane is SIGKILLed halfway: relays never need it to keep serving. The report gives, per room,
what was sent, delivered and lost, and why: losses in a killed room are everything addressed
after its death; the surviving rooms must lose nothing beyond UDP noise.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from dataclasses import asdict, dataclass
from typing import Any

from loadtest import controlplane
from loadtest import hist as hdr
from loadtest.bots import Behaviour
from loadtest.controlplane import ControlPlane
from loadtest.machine import parse_cpus, pin
from loadtest.phase import run_phase
from loadtest.progress import Live
from loadtest.relayhost import RelayProcess
from loadtest.report import Report, plot_latency_cdf, table
from loadtest.scenarios import fleet
from loadtest.streams import account

PLAYERS_PER_ROOM = 4


@dataclass(frozen=True, slots=True)
class ChaosConfig:
    rooms: int = 4
    seconds: float = 15.0
    hz: float = 10.0
    workers: int = 2
    surviving_loss_limit: float = 0.001
    relay_cpus: str = "0"
    load_cpus: str = "1"
    relay_factory: str | None = None
    control_plane: bool = True  # also play in a room made by `relay dev`, and SIGKILL the control plane

    @classmethod
    def quick(cls, **kw: Any) -> ChaosConfig:
        base: dict[str, Any] = {"rooms": 3, "seconds": 4.0, "workers": 1}
        base.update(kw)
        return cls(**base)


def run(config: ChaosConfig, report: Report, progress: bool | None = None) -> dict[str, Any]:
    pin(parse_cpus(config.load_cpus))
    rooms = max(2, config.rooms)
    relays = [
        RelayProcess({"keepalive_timeout": 3.0}, config.relay_cpus, config.relay_factory)
        for _ in range(rooms)
    ]
    addresses = [(r.host, r.port, r.key) for r in relays]
    cp, cp_note = _control_plane_room() if config.control_plane else (None, "control plane part disabled")
    if cp is not None:
        addresses.append(cp[1])  # room number `rooms`: the one the control plane provisioned
    bots = [
        (r * PLAYERS_PER_ROOM + i, ("udp", "ws")[i % 2], r)
        for r in range(len(addresses))
        for i in range(PLAYERS_PER_ROOM)
    ]
    plan = [
        (config.seconds / 3, 0, "SIGKILL", "crash: no CLOSING; members notice only by silence"),
        (2 * config.seconds / 3, 1, "SIGTERM", "shutdown: CLOSING to every member, then exit"),
    ]
    events: list[dict[str, Any]] = []
    start_holder: dict[str, float] = {}

    def on_tick() -> None:
        start = start_holder.setdefault("start", time.monotonic())
        elapsed = time.monotonic() - start
        for at, room, sig, why in plan:
            if elapsed >= at and not any(e["room"] == room for e in events):
                relay = relays[room]
                (relay.kill if sig == "SIGKILL" else relay.stop)()
                events.append(
                    {
                        "room": room,
                        "signal": sig,
                        "at_s": elapsed,
                        "why": why,
                        "exit_code": relay.proc.returncode,
                    }
                )
        if (
            cp is not None
            and elapsed >= config.seconds / 2
            and not any(e["room"] == "control" for e in events)
        ):
            cp[0].kill()
            events.append(
                {
                    "room": "control",
                    "signal": "SIGKILL",
                    "at_s": elapsed,
                    "why": "the control plane died; relays must not need it to keep serving",
                }
            )

    try:
        with Live("chaos", total=config.seconds, enabled=progress) as live:
            phase = run_phase(
                addresses,
                bots,
                Behaviour(hz=config.hz, targeted_fraction=0.0, profile_every=0.0),
                config.seconds,
                workers=min(config.workers, len(bots)),
                load_cpus=config.load_cpus,
                relay_pids=[r.pid for r in relays],
                live=live,
                label="chaos",
                on_tick=on_tick,
            )
        alive_after = [r.alive() for r in relays] + [True] * (len(addresses) - rooms)
    finally:
        for r in relays:
            r.stop()
        if cp is not None:
            cp[0].stop()
            # Its relay outlived the killed control plane, as it must; the run is over: stop it
            # rather than leave it to its idle timeout.
            for pid in cp[0].relay_pids(cp[2]):
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGTERM)
    per_room: dict[int, dict[str, Any]] = {}
    by_user = {b["user_id"]: b for b in phase["bot_results"]}
    for room in range(len(addresses)):
        users = [f"bot{i}" for i, _, r in bots if r == room]
        mine = [by_user[u] for u in users if u in by_user]
        acc = account(
            {b["user_id"]: {k: v for k, v in b["addressed"].items() if k in users} for b in mine},
            {b["user_id"]: b["received"] for b in mine},
        )
        event = next((e for e in events if e["room"] == room), None)
        through_cp = room >= rooms
        if event and acc["totals"]["lost"] == 0:
            why = (
                f"relay {event['signal']} at {event['at_s']:.1f} s ({event['why']}): nothing lost, the "
                "members were told and stopped addressing the room"
            )
        elif event:
            why = (
                f"relay {event['signal']} at {event['at_s']:.1f} s ({event['why']}): what members "
                "addressed to the room after that (they learn of it only when they give up), plus what was "
                "in flight"
            )
        elif through_cp:
            why = "nothing should be lost: provisioned by the control plane, which was SIGKILLed mid-run"
        else:
            why = "nothing should be lost: the room kept its relay"
        per_room[room] = {
            "totals": acc["totals"],
            "killed": event,
            "via_control_plane": through_cp,
            "alive_at_end": alive_after[room],
            "latency": hdr.summary(hdr.merge([b["latency_hist"] for b in mine])),
            "events": {
                k: sum(b["events"].get(k, 0) for b in mine) for k in {k for b in mine for k in b["events"]}
            },
            "why_lost": why,
        }
    survivors = [p for p in per_room.values() if p["killed"] is None]
    survived_ok = all(
        p["totals"]["loss_ratio"] <= config.surviving_loss_limit and p["totals"]["delivered"] > 0
        for p in survivors
    )
    results = {
        "rooms": per_room,
        "events": events,
        "surviving_rooms_kept_delivering": survived_ok,
        "control_plane": cp_note,
    }
    report.note(results["control_plane"])
    report.config = asdict(config)
    report.results = results
    report.markdown = [
        "## Result",
        "",
        f"{len(per_room)} rooms ({rooms} relay processes started here"
        f"{', 1 through the control plane' if len(per_room) > rooms else ''}) x {PLAYERS_PER_ROOM} bots at "
        f"{config.hz:g} Hz for {config.seconds:g} s. "
        f"Surviving rooms kept delivering: {'yes' if survived_ok else 'NO'}.",
        "",
        *table(
            ["room", "relay", "sent", "delivered", "lost", "loss %", "p99 ms", "what was lost and why"],
            [
                [
                    room,
                    f"{p['killed']['signal']} at {p['killed']['at_s']:.1f} s" if p["killed"] else "survived",
                    p["totals"]["sent"],
                    p["totals"]["delivered"],
                    p["totals"]["lost"],
                    100 * p["totals"]["loss_ratio"],
                    p["latency"].get("p99_ms"),
                    p["why_lost"],
                ]
                for room, p in per_room.items()
            ],
        ),
    ]
    hists = {
        f"room {room}": hdr.merge(
            [
                b["latency_hist"]
                for b in phase["bot_results"]
                if int(b["user_id"][3:]) // PLAYERS_PER_ROOM == room
            ]
        )
        for room in per_room
    }
    if plot_latency_cdf(report.out / "latency_cdf.png", hists, "chaos: latency per room"):
        report.plots.append("latency_cdf.png")
    return results


def _control_plane_room() -> tuple[tuple[ControlPlane, tuple[str, int, str], str] | None, str]:
    """Starts `relay dev`, wants one room and waits for its address; (None, why) when it cannot."""
    reason = controlplane.available()
    if reason:
        return None, f"control plane not exercised: {reason}"
    try:
        cp = ControlPlane.start()
    except Exception as exc:
        return None, f"control plane not exercised: it did not start ({exc})"
    ns = f"chaos{int(time.time())}"
    try:
        prov = asyncio.run(fleet.provision(cp, ns, ["chaosroom"], fleet.FleetConfig(rooms=1)))
        room = prov["rooms"][0]
        if room.get("ready_ms") is None:
            raise RuntimeError(room.get("error", "not ready"))
    except Exception as exc:
        cp.stop()
        return None, f"control plane not exercised: its room did not become ready ({exc!r})"
    note = (
        f"one extra room was created through the control plane (ready in {room['ready_ms']:.0f} ms); "
        "the control plane was SIGKILLed halfway through"
    )
    return (cp, (room["host"], room["port"], room["key"]), ns), note


def config_from_args(args: Any) -> ChaosConfig:
    kw: dict[str, Any] = {}
    if getattr(args, "rooms", None) is not None:
        kw["rooms"] = args.rooms
    if getattr(args, "seconds", None) is not None:
        kw["seconds"] = args.seconds
    return ChaosConfig.quick(**kw) if getattr(args, "quick", False) else ChaosConfig(**kw)
