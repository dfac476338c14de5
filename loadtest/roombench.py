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
    python -m loadtest.roombench --gs2 --members 32 --pass-size 32
                                                # GS2 game clients: a Container per message in,
                                                # one per message and recipient out
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

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from relay.protocol import tokens
from relay.protocol.client import ClientConnection, ClientState
from relay.protocol.gs2 import wire
from relay.protocol.keys import generate_room_key
from relay.protocol.wsframes import server_binary_frames
from relay.server.config import RelayConfig
from relay.server.gs2 import Gs2Peer
from relay.server.metrics import Counters
from relay.server.room import Room
from relay.server.transport import Disconnect


@dataclass(frozen=True, slots=True)
class RoomBench:
    batch: int = 1
    datagrams: int = 20_000
    pass_size: int = 4
    payload_size: int = 100
    repeat: int = 5
    members: int = 4  # 32: the nano tier's full room (fan-out 31)
    rooms: int = 1  # more: each packet goes to a room drawn at random (a group process's rooms)
    gs2: bool = False  # members are GS2 game clients (relay/server/gs2.py), not UDP clients


class _FramingSink:
    """A GS2 member's connection: its Containers framed as the WebSocket link frames them (one
    binary frame each, one write), then counted."""

    buffered = 0

    def __init__(self, counted: list[int]) -> None:
        self.counted = counted

    def send_many(self, payloads: list[bytes]) -> int:
        self.counted[0] += len(payloads)
        return len(server_binary_frames(payloads))

    def close(self, why: Disconnect, text: str) -> None:
        raise RuntimeError(f"the bench room closed a GS2 member: {why} {text}")


class _Gs2Member:
    """A GS2 member's input as the bench feeds a UDP member's: (packet, address, now)."""

    __slots__ = ("peer", "signer")

    def __init__(self, peer: Gs2Peer, signer: wire.Signer) -> None:
        self.peer = peer
        self.signer = signer

    def __call__(self, container: bytes, addr: Any, now: float) -> None:
        self.peer.receive(container, now)

    def send(self, payload: bytes) -> bytes:
        return wire.client_container(self.signer, wire.BINARY_MESSAGE, wire.send_value(payload))


def _room(seed: int) -> tuple[Room, str]:
    """A room whose rate limits are off (the room's work is measured, not its limiter)."""
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
    return Room(config, Counters(), 0.0, random.Random(seed).randbytes), key


def _joined_gs2_room(seed: int, members: int, counted: list[int]) -> tuple[Room, list[_Gs2Member]]:
    """`members` GS2 game clients joined by their HelloRequest (no token key: the token's claims
    name the user, as `relay serve` reads them without one)."""
    room, key = _room(seed)
    encoder = wire.Encoder(key, room.started)
    minter = Ed25519PrivateKey.generate()
    joined = []
    for i in range(members):
        peer = Gs2Peer(room, encoder, _FramingSink(counted))
        hello = wire.hello_value(tokens.mint(minter, f"m{i}"), b"")
        peer.receive(wire.client_container(encoder.signer, wire.HELLO_REQUEST, hello), 0.0)
        room.flush(0.0)
        if peer.session is None or peer.session.member is None:
            raise RuntimeError("the bench room's GS2 members did not join")
        joined.append(_Gs2Member(peer, encoder.signer))
    return room, joined


def _joined_room(seed: int, members: int) -> tuple[Room, list[tuple[ClientConnection, tuple[str, int]]]]:
    """`members` UDP members joined through the real handshake."""
    room, key = _room(seed)
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
        counted = [0]
        payload = bytes(bench.payload_size)
        deal = random.Random(attempt)
        packets: list[tuple[Any, Any, bytes, Any]] = []
        if bench.gs2:  # one message per Container: GS2's wire has no batching
            rooms = [
                _joined_gs2_room(attempt * bench.rooms + r, bench.members, counted)
                for r in range(bench.rooms)
            ]
            for i in range(bench.datagrams):
                room, peers = rooms[deal.randrange(bench.rooms)]
                peer = peers[i % bench.members]
                packets.append((peer, room.flush, peer.send(payload), None))
            joined: list[tuple[Room, Any]] = list(rooms)
        else:
            joined = [_joined_room(attempt * bench.rooms + r, bench.members) for r in range(bench.rooms)]

            def count(packet: bytes, addr: Any, counted: list[int] = counted) -> None:
                counted[0] += 1

            for room, _ in joined:
                for session in room.sessions.values():
                    assert session.path is not None
                    session.path.sendto = count
            for i in range(bench.datagrams):
                room, clients = joined[deal.randrange(bench.rooms)]
                client, addr = clients[i % bench.members]
                for _ in range(bench.batch):
                    client.send(payload)
                packets.append((room.udp_datagram, room.flush, client.datagrams_to_send()[0], addr))
        counted[0] = 0  # the joins' Containers
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
    p.add_argument("--gs2", action="store_true", help="GS2 game clients (one message per Container)")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    a = p.parse_args(argv)
    if a.gs2 and a.batch != 1:
        p.error("--gs2: a GS2 client's Container carries one message (--batch 1)")
    bench = RoomBench(
        a.batch, a.datagrams, a.pass_size, repeat=a.repeat, members=a.members, rooms=a.rooms, gs2=a.gs2
    )
    result = run(bench)
    if a.json:
        print(json.dumps(result))
    else:
        print(
            f"room CPU: {result['us_per_message_in']} us per message in "
            f"({'GS2 clients' if a.gs2 else f'{a.batch} per packet'}, "
            f"fan-out {a.members - 1}, a flush every {a.pass_size} datagrams, {a.rooms} room(s); "
            f"least of {a.repeat} runs)"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
