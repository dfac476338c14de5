"""`python -m loadtest.idlecost`: what a relay process costs a core while nothing is sent.

`--relays` relays started as the local provisioner starts them (loadtest/spawned.py: forked from
the zygote template, each in its realtime1.nano cgroup where this host allows, all on the relay
CPU), each with `--members` UDP members of the Python client (relay/client) that join and then
send nothing but the client's own keepalive PING (every 2 s); the relays' CPU
(/proc/PID/schedstat) and context switches over `--seconds`. What is left is the relay's own
timers (the room's keepalive deadlines, the caps guard's looks) and the members' keepalives: the
fixed cost of a room, which on a host of many rooms per core is paid beside the messages
(docs/architecture.md). No control plane: agent heartbeats are not counted (the `density`
scenario counts them for empty rooms). Loopback only; bounded by `--relays` x `--members`
clients and `--seconds`.

    python -m loadtest.idlecost --relays 50 --members 4 --seconds 20
    python -m loadtest.idlecost --relays 50 --members 0     # empty rooms
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import time
from typing import Any

import relay.client as rc
from loadtest.machine import context_switches, cpu_ns
from loadtest.spawned import SpawnedRelays


async def _measure(relays: SpawnedRelays, members: int, seconds: float) -> dict[str, Any]:
    clients = []
    try:
        for r in relays.relays:
            for m in range(members):
                clients.append(await rc.connect(r.host, r.port, r.key, f"u{m}", transport="udp"))
        await asyncio.sleep(3)  # past the joins' own work
        pids = sorted({r.pid for r in relays.relays})
        cpu, switches, start = sum(map(cpu_ns, pids)), sum(map(context_switches, pids)), time.monotonic()
        await asyncio.sleep(seconds)
        window = time.monotonic() - start
        cpu = sum(map(cpu_ns, pids)) - cpu
        switches = sum(map(context_switches, pids)) - switches
    finally:
        for c in clients:
            await c.close()
    return {
        "relays": len(pids),
        "members_per_relay": members,
        "seconds": round(window, 2),
        "cpu_us_per_relay_s": round(cpu / 1e3 / window / len(pids), 1),
        "cpu_percent_all": round(100 * cpu / 1e9 / window, 2),
        "context_switches_per_relay_s": round(switches / window / len(pids), 2),
    }


def run(
    relays: int = 50, members: int = 4, seconds: float = 20.0, relay_cpu: int = 0, load_cpu: int = 1
) -> dict[str, Any]:
    """The measurement; this process (the members) is pinned to `load_cpu` where it exists."""
    cpus = os.sched_getaffinity(0)
    if load_cpu in cpus:
        os.sched_setaffinity(0, {load_cpu})
    spawned = SpawnedRelays(relays, relay_cpus={relay_cpu} if relay_cpu in cpus else None)
    try:
        return {"caps": spawned.caps, **asyncio.run(_measure(spawned, members, seconds))}
    finally:
        spawned.close()
        os.sched_setaffinity(0, cpus)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m loadtest.idlecost", description=__doc__.split("\n\n")[0])
    p.add_argument("--relays", type=int, default=50)
    p.add_argument("--members", type=int, default=4)
    p.add_argument("--seconds", type=float, default=20.0)
    p.add_argument("--relay-cpu", type=int, default=0)
    p.add_argument("--load-cpu", type=int, default=1)
    a = p.parse_args(argv)
    if not (1 <= a.relays <= 500 and 0 <= a.members <= 32 and 0 < a.seconds <= 600):
        p.error("--relays 1..500, --members 0..32, --seconds up to 600")
    result = run(a.relays, a.members, a.seconds, a.relay_cpu, a.load_cpu)
    print(json.dumps(result))
    print(
        f"{result['relays']} relays, {a.members} silent members each: "
        f"{result['cpu_us_per_relay_s']} us of CPU per relay per second "
        f"({result['cpu_percent_all']}% of a core for all), "
        f"{result['context_switches_per_relay_s']} context switches per relay per second"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
