"""`python -m loadtest.idlecost`: what a relay process costs a core while nothing is sent.

`--relays` relays started as the local provisioner starts them (loadtest/spawned.py: forked from
the zygote template, each in its realtime1.nano cgroup where this host allows, all on the relay
CPU), each with `--members` UDP members of the Python client (relay/client) that join and then
send nothing but the client's own keepalive PING (every 2 s); the relays' CPU
(/proc/PID/schedstat) and context switches over `--seconds`. What is left is the relay's own
timers (the room's keepalive deadlines, the caps guard's looks) and the members' keepalives: the
fixed cost of a room, which on a host of many rooms per core is paid beside the messages
(docs/architecture.md). Without a control plane no agent heartbeats; with `--control-plane` the
rooms are wanted through `relay dev` as shipped (no standbys; its relays moved to the relay CPU,
the control plane on the load CPU) and their agents heartbeat it (every 2 s while anyone is in
a room, every 30 s while it is empty; `--heartbeat-interval` tries another), and its CPU is read
as well. Loopback only; bounded by `--relays` x `--members` clients and `--seconds`.

    python -m loadtest.idlecost --relays 50 --members 4 --seconds 20
    python -m loadtest.idlecost --relays 50 --members 0     # empty rooms
    python -m loadtest.idlecost --relays 50 --members 4 --control-plane
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import time
from pathlib import Path
from typing import Any

import httpx

import relay.client as rc
from loadtest.controlplane import ControlPlane
from loadtest.machine import context_switches, cpu_ns
from loadtest.spawned import SpawnedRelay, SpawnedRelays

SETTLE = 3.0
"""Seconds between the last join and the measurement: the joins' own work is over by then."""


async def _measure(
    rooms: list[SpawnedRelay],
    members: int,
    seconds: float,
    control: int | None = None,
    settle: float = SETTLE,
) -> dict[str, Any]:
    """Joins the members, then reads the relays' (and the control plane's) CPU over `seconds`."""
    clients = []
    try:
        for r in rooms:
            for m in range(members):
                clients.append(await rc.connect(r.host, r.port, r.key, f"u{m}", transport="udp"))
        await asyncio.sleep(settle)
        pids = sorted({r.pid for r in rooms})
        cpu, switches, start = sum(map(cpu_ns, pids)), sum(map(context_switches, pids)), time.monotonic()
        control_cpu = cpu_ns(control) if control else 0
        await asyncio.sleep(seconds)
        window = time.monotonic() - start
        cpu = sum(map(cpu_ns, pids)) - cpu
        switches = sum(map(context_switches, pids)) - switches
        control_cpu = (cpu_ns(control) if control else 0) - control_cpu
    finally:
        for c in clients:
            await c.close()
    result: dict[str, Any] = {
        "relays": len(pids),
        "members_per_relay": members,
        "seconds": round(window, 2),
        "cpu_us_per_relay_s": round(cpu / 1e3 / window / len(pids), 1),
        "cpu_percent_all": round(100 * cpu / 1e9 / window, 2),
        "context_switches_per_relay_s": round(switches / window / len(pids), 2),
    }
    if control:
        result["control_plane_cpu_percent"] = round(100 * control_cpu / 1e9 / window, 2)
    return result


def _room_of(pid: int) -> str | None:
    """The room a relay's command line names (`--room NAME` or `--room=NAME`)."""
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return None
    for i, arg in enumerate(argv):
        if arg == "--room" and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith("--room="):
            return arg.split("=", 1)[1]
    return None


async def _through_control_plane(
    cp: ControlPlane, relays: int, members: int, seconds: float, relay_cpus: set[int] | None, settle: float
) -> dict[str, Any]:
    async with httpx.AsyncClient(timeout=30.0) as http:
        await cp.login(http)
        ns = f"idle{int(time.time())}"
        await cp.create_namespace(http, ns)
        try:
            items = {}
            for n in range(relays):
                name = f"r{n}"
                await cp.want_room(http, ns, name)
                deadline = time.monotonic() + 30
                while not (item := await cp.get_room(http, ns, name) or {}).get("ipAddress"):
                    if time.monotonic() > deadline:
                        raise TimeoutError(f"room {name} not ready in 30 s")
                    await asyncio.sleep(0.01)
                items[name] = item
            pids = {_room_of(pid): pid for pid in cp.relay_pids(ns)}
            rooms = [
                SpawnedRelay(item["ipAddress"], item["port"], item["encryptionKey"], pids[name])
                for name, item in items.items()
                if name in pids
            ]
            if len(rooms) != relays:
                raise RuntimeError(f"found {len(rooms)} of {relays} relay processes")
            if relay_cpus:
                for r in rooms:
                    os.sched_setaffinity(r.pid, relay_cpus)
            return await _measure(rooms, members, seconds, cp.proc.pid if cp.proc else None, settle)
        finally:
            await cp.delete_namespace(http, ns)


def run(
    relays: int = 50,
    members: int = 4,
    seconds: float = 20.0,
    relay_cpu: int = 0,
    load_cpu: int = 1,
    control_plane: bool = False,
    heartbeat_interval: float | None = None,
    settle: float = SETTLE,
) -> dict[str, Any]:
    """The measurement; this process (the members) and the control plane are pinned to
    `load_cpu`, the relays to `relay_cpu`, where those exist."""
    cpus = os.sched_getaffinity(0)
    relay_cpus = {relay_cpu} if relay_cpu in cpus else None
    if load_cpu in cpus:
        os.sched_setaffinity(0, {load_cpu})  # the control plane started below inherits it
    try:
        if not control_plane:
            spawned = SpawnedRelays(relays, relay_cpus=relay_cpus)
            try:
                return {
                    "caps": spawned.caps,
                    **asyncio.run(_measure(spawned.relays, members, seconds, settle=settle)),
                }
            finally:
                spawned.close()
        extra = ["--warm-relays", "0"]
        if heartbeat_interval is not None:
            extra += ["--heartbeat-interval", f"{heartbeat_interval:g}"]
        cp = ControlPlane.start(extra_args=extra)
        try:
            got = asyncio.run(_through_control_plane(cp, relays, members, seconds, relay_cpus, settle))
            return {"caps": "relay dev as shipped (zygote, nano caps)", **got}
        finally:
            cp.stop()
    finally:
        os.sched_setaffinity(0, cpus)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m loadtest.idlecost", description=__doc__.split("\n\n")[0])
    p.add_argument("--relays", type=int, default=50)
    p.add_argument("--members", type=int, default=4)
    p.add_argument("--seconds", type=float, default=20.0)
    p.add_argument("--relay-cpu", type=int, default=0)
    p.add_argument("--load-cpu", type=int, default=1)
    p.add_argument("--control-plane", action="store_true", help="rooms through relay dev, heartbeats counted")
    p.add_argument("--heartbeat-interval", type=float, default=None, help="with --control-plane (default 2)")
    a = p.parse_args(argv)
    if not (1 <= a.relays <= 500 and 0 <= a.members <= 32 and 0 < a.seconds <= 600):
        p.error("--relays 1..500, --members 0..32, --seconds up to 600")
    result = run(
        a.relays, a.members, a.seconds, a.relay_cpu, a.load_cpu, a.control_plane, a.heartbeat_interval
    )
    print(json.dumps(result))
    print(
        f"{result['relays']} relays, {a.members} silent members each: "
        f"{result['cpu_us_per_relay_s']} us of CPU per relay per second "
        f"({result['cpu_percent_all']}% of a core for all), "
        f"{result['context_switches_per_relay_s']} context switches per relay per second"
        + (
            f"; the control plane: {result['control_plane_cpu_percent']}% of a core"
            if "control_plane_cpu_percent" in result
            else ""
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
