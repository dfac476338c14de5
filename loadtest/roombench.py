"""`python -m loadtest.roombench`: the relay room's own CPU per message, in memory.

The room is sans-I/O (relay/server/room.py), so it can be timed without sockets, the kernel or
a load generator: `--members` UDP members (4; 32 fills a nano room) join through the real
handshake, then every member's packets (each `--batch` 100-byte broadcasts, sealed before the
clock starts) are handed to the room one after another, with a flush every `--pass-size`
datagrams (one event-loop pass of a busy relay) into a datagram writer that only counts. What is
timed is the room's decrypt, decode, limits, fan-out, packing and sealing: what a relay process
spends besides system calls and wake-ups.
CPU time (process_time) of `--repeat` runs; the least is the figure (the others were disturbed).

    python -m loadtest.roombench --batch 1      # a message per packet, as game clients send
    python -m loadtest.roombench --batch 8      # coalesced input (the throughput peak's shape)
    python -m loadtest.roombench --members 32   # a full nano room: fan-out 31
    python -m loadtest.roombench --rooms 100    # packets dealt over 100 rooms: one process's
                                                # rooms, each met with colder caches
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import random
import time
from dataclasses import asdict, dataclass, replace
from typing import Any

from relay.protocol.client import ClientConnection, ClientState
from relay.protocol.keys import generate_room_key
from relay.server.config import RelayConfig
from relay.server.metrics import Counters
from relay.server.room import Room


@dataclass(frozen=True, slots=True)
class RoomBench:
    batch: int = 1
    datagrams: int = 20_000
    pass_size: int = 4
    payload_size: int = 100
    repeat: int = 5
    members: int = 4  # 32: the nano tier's full room (fan-out 31)
    rooms: int = 1  # more: each packet goes to a room drawn at random (a group process's rooms)


def _joined_room(seed: int, members: int) -> tuple[Room, list[tuple[ClientConnection, tuple[str, int]]]]:
    """A room whose rate limits are off (the room's work is measured, not its limiter) and `members`
    members joined through the real handshake."""
    key = generate_room_key()
    config = replace(
        RelayConfig(room_key=key),
        messages_per_second=0,
        message_burst=0,
        bytes_per_second=0,
        byte_burst=0,
        keepalive_timeout=1e9,
        idle_timeout=1e9,
        max_coalesce_delay_udp=math.inf,  # the bench flushes every pass, not by the clock
    )
    room = Room(config, Counters(), 0.0, random.Random(seed).randbytes)
    clients = [(ClientConnection(key, f"m{i}"), ("192.0.2.1", 40000 + i)) for i in range(members)]
    by_addr = {addr: client for client, addr in clients}
    outbox: list[tuple[bytes, Any]] = []
    room.udp_writer = lambda packet, addr: outbox.append((packet, addr))
    for client, addr in clients:
        for packet in client.initiate(0.0):
            room.udp_datagram(packet, addr, 0.0)
        for _ in range(20):
            room.flush(0.0)
            for packet, to in outbox:
                by_addr[to].receive(packet, 0.0)
            outbox.clear()
            moved = False
            for other, other_addr in clients:
                for packet in other.datagrams_to_send():
                    room.udp_datagram(packet, other_addr, 0.0)
                    moved = True
            if not moved:
                break
    if any(client.state is not ClientState.JOINED for client, _ in clients):
        raise RuntimeError("the bench room's members did not join")
    return room, clients


def run(bench: RoomBench) -> dict[str, Any]:
    runs: list[float] = []
    sent = 0
    for attempt in range(bench.repeat):
        joined = [_joined_room(attempt * bench.rooms + r, bench.members) for r in range(bench.rooms)]
        counted = [0]

        def count(packet: bytes, addr: Any, counted: list[int] = counted) -> None:
            counted[0] += 1

        for room, _ in joined:
            for session in room.sessions.values():
                assert session.path is not None
                session.path.sendto = count
        payload = bytes(bench.payload_size)
        deal = random.Random(attempt)
        packets = []
        for i in range(bench.datagrams):
            room, clients = joined[deal.randrange(bench.rooms)]
            client, addr = clients[i % bench.members]
            for _ in range(bench.batch):
                client.send(payload)
            packets.append((room.udp_datagram, room.flush, client.datagrams_to_send()[0], addr))
        clock = time.monotonic
        gc.collect()
        started = time.process_time()
        touched: dict[Any, None] = {}  # the flushes of the rooms this pass fed
        for i, (feed, flush, packet, addr) in enumerate(packets, 1):
            feed(packet, addr, clock())
            touched[flush] = None
            if i % bench.pass_size == 0:
                for room_flush in touched:
                    room_flush(clock())
                touched.clear()
        for room, _ in joined:
            room.flush(clock())
        runs.append(time.process_time() - started)
        sent = counted[0]
        dropped = [dict(room.counters.drops) for room, _ in joined if room.counters.drops]
        if dropped:
            raise RuntimeError(f"the bench rooms dropped input: {dropped[0]}")
    messages = bench.datagrams * bench.batch
    best = min(runs)
    return {
        "bench": asdict(bench),
        "messages_in": messages,
        "packets_out_per_run": sent,
        "us_per_message_in": round(1e6 * best / messages, 3),
        "us_per_datagram_in": round(1e6 * best / bench.datagrams, 3),
        "runs_s": [round(r, 4) for r in runs],
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m loadtest.roombench", description=__doc__.split("\n\n")[0])
    defaults = RoomBench()
    p.add_argument("--batch", type=int, default=defaults.batch, help="messages per client packet")
    p.add_argument("--datagrams", type=int, default=defaults.datagrams, help="client packets per run")
    p.add_argument("--pass-size", type=int, default=defaults.pass_size, help="datagrams per flush")
    p.add_argument("--repeat", type=int, default=defaults.repeat, help="runs; the least CPU time is kept")
    p.add_argument("--members", type=int, default=defaults.members, help="members in the room")
    p.add_argument("--rooms", type=int, default=defaults.rooms, help="rooms the packets are dealt over")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    a = p.parse_args(argv)
    result = run(
        RoomBench(a.batch, a.datagrams, a.pass_size, repeat=a.repeat, members=a.members, rooms=a.rooms)
    )
    if a.json:
        print(json.dumps(result))
    else:
        print(
            f"room CPU: {result['us_per_message_in']} us per message in ({a.batch} per packet, "
            f"fan-out {a.members - 1}, a flush every {a.pass_size} datagrams, {a.rooms} room(s); "
            f"least of {a.repeat} runs)"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
