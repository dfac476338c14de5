"""`python -m loadtest.sendbench`: CPU per UDP datagram a relay pass sends, one `sendto` each
(the transport's) against the relay's writer, which sends a pass in one sendmmsg
(relay/server/links.py UdpWriter, relay/server/_datagrams.c).

One uvloop process (pin it: `taskset -c 0`) sends `--members` 300-byte datagrams a pass to as
many loopback sockets of its own, `--passes` passes a round, the two ways taking turns for
`--rounds` rounds; CPU time (process_time) of the sends alone, the receivers drained between
passes off the clock. Loopback only; it stops by itself.

    taskset -c 0 python -m loadtest.sendbench --members 32   # a full nano room's pass
    taskset -c 0 python -m loadtest.sendbench --members 3    # the deployed shape's fan-out
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import time
from dataclasses import asdict, dataclass
from typing import Any

import uvloop

from relay.server.links import SEND_BATCH, UdpWriter
from relay.server.metrics import Counters


@dataclass(frozen=True)
class SendBench:
    members: int = 32
    passes: int = 2000
    rounds: int = 3
    size: int = 300


def _drain(sockets: list[socket.socket]) -> int:
    got = 0
    for sock in sockets:
        try:
            while True:
                sock.recv(2048)
                got += 1
        except BlockingIOError:
            pass
    return got


async def _measure(config: SendBench) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    own = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    own.bind(("127.0.0.1", 0))
    own.setblocking(False)
    peers = []
    for _ in range(config.members):
        peer = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        peer.bind(("127.0.0.1", 0))
        peer.setblocking(False)
        peers.append(peer)
    transport, _ = await loop.create_datagram_endpoint(asyncio.DatagramProtocol, sock=own)
    try:
        writer = UdpWriter(own, Counters())
        writer.attach(transport.sendto)
        addrs = [p.getsockname() for p in peers]
        packet = os.urandom(config.size)
        figures: dict[str, list[float]] = {"sendto": [], "batch": []}
        received = 0
        for _ in range(config.rounds):
            for way in figures:
                spent = 0.0
                for _ in range(config.passes):
                    start = time.process_time()
                    if way == "sendto":
                        send = transport.sendto
                        for addr in addrs:
                            send(packet, addr)
                    else:
                        writer.hold()
                        send = writer.sendto
                        for addr in addrs:
                            send(packet, addr)
                        writer.release()
                    spent += time.process_time() - start
                    received += _drain(peers)
                figures[way].append(spent / config.passes / config.members * 1e6)
        await asyncio.sleep(0.05)  # any still on their way (a softirq the kernel deferred)
        received += _drain(peers)
    finally:
        transport.close()
        for peer in peers:
            peer.close()
    return {
        "config": asdict(config),
        "send_batch_built": SEND_BATCH is not None,
        "us_per_datagram": figures,
        "received": received,
    }


def run(config: SendBench) -> dict[str, Any]:
    return uvloop.run(_measure(config))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m loadtest.sendbench", description=__doc__.split("\n\n")[0])
    p.add_argument("--members", type=int, default=SendBench.members, help="datagrams a pass (one a member)")
    p.add_argument("--passes", type=int, default=SendBench.passes, help="passes a round")
    p.add_argument("--rounds", type=int, default=SendBench.rounds, help="rounds, the two ways taking turns")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    args = p.parse_args(argv)
    result = run(SendBench(args.members, args.passes, args.rounds))
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    if not result["send_batch_built"]:
        print("relay/server/_datagrams.c not in use (not built, or RELAY_PURE_PYTHON): both ways are sendto")
    for way, values in result["us_per_datagram"].items():
        print(
            f"{way:>6}: " + " ".join(f"{v:.2f}" for v in values) + f" us a datagram ({args.members} a pass)"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
