"""The interpreter's floor: the least a Python relay process does per packet, to measure beside
the C relay and the relay itself (`baseline.run_per_room`, the fleet-shape's floor table).

A twin of `udp_reference relay` (loadtest/c/udp_reference.c): the same command line and the same
report line, so loadtest/baseline.py runs either. It is an asyncio protocol on uvloop, as the
relay's UDP adapter is, whose `datagram_received` sends the datagram on to FANOUT fixed loopback
ports with one `sendto` each: no rooms, no sessions, no limits, no msgpack. `--aead` adds the
relay's cryptography per message in: one AES-256-GCM open of a packet of the datagram's size,
and one seal (a counter nonce, the 16-byte header as associated data) per recipient, so what it
sends is as long as the relay's DATA packets. Its keys are fixed and public: it measures the
work, it protects nothing. `--rooms N` binds N consecutive ports in one process
(every room of a process, as the rooms-per-process tier serves them).

What it measures: the relay's CPU per message minus this floor's is what rooms, sessions and
their rules cost; this floor minus the C relay's is what waking a Python interpreter per packet
costs, whatever it then does (docs/architecture.md).

    python loadtest/floor_relay.py relay PORT SECONDS FANOUT FIRST_DEST [--rooms N] [--aead]

Run as a file, not as `-m loadtest...`: a relay process imports uvloop (and cryptography with
--aead) and nothing of the project. Loopback only; it stops by itself, SECONDS after its first
datagram (or after a minute with none), with no timer while it relays (a timer's wake-ups would
be counted as the floor's).
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import socket
import struct
import time
from collections.abc import Callable

import uvloop

HEADER = struct.Struct("!BBHIQ")  # the relay's DATA header (relay/protocol/constants.py): 16 bytes
NONCE_PAD = bytes(4)  # a DATA nonce: 4 zero bytes, then the header's 8-byte counter
IDLE_LIMIT = 60.0  # seconds without a first datagram before it gives up (100 of them start slowly)


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


class Counts:
    """What every port of the process received and sent, from the first datagram to the end."""

    def __init__(self) -> None:
        self.received = 0
        self.sent = 0
        self.first: tuple[float, float] | None = None  # (monotonic, CPU seconds) at the first datagram
        self.last = 0.0  # monotonic, at the last
        self.cpu_end = 0.0  # CPU seconds SECONDS after the first (idle since the last: no timers)


class Forward(asyncio.DatagramProtocol):
    """One port's relay: every datagram to each destination, sealed first with `aead`."""

    def __init__(
        self, counts: Counts, dests: list[tuple[str, int]], aead: bool, started: asyncio.Event
    ) -> None:
        self.counts = counts
        self.dests = dests
        self.started = started
        self.transport: asyncio.DatagramTransport | None = None
        self.seal: Callable[[bytes, bytes, bytes], bytes] | None = None
        self.counter = 0
        self.sealed: dict[int, bytes] = {}  # a packet per size, sealed once, opened each time
        if aead:
            from cryptography.hazmat.primitives.ciphers.aead import AESGCM

            self.seal = AESGCM(bytes(range(32))).encrypt  # server to client: 32-byte keys, as the relay's
            inbound = AESGCM(bytes(range(32, 64)))  # client to server
            self.open, self.seal_in = inbound.decrypt, inbound.encrypt

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        counts = self.counts
        if counts.first is None:
            counts.first = (time.monotonic(), _cpu())
            self.started.set()
        counts.received += 1
        sendto = self.transport.sendto  # type: ignore[union-attr]
        seal = self.seal
        if seal is None:
            for dest in self.dests:
                sendto(data, dest)
        else:
            self._open(data)
            body = data[HEADER.size :]
            for dest in self.dests:
                self.counter = counter = self.counter + 1
                header = HEADER.pack(1, 2, 0, 1, counter)
                sendto(header + seal(NONCE_PAD + header[8:], body, header), dest)
        counts.sent += len(self.dests)
        counts.last = time.monotonic()

    def _open(self, data: bytes) -> None:
        """An open's work: the datagram is plain (the C sender's), so a sealed packet of its size
        made once is opened in its place."""
        n = len(data)
        packet = self.sealed.get(n)
        if packet is None:
            header = HEADER.pack(1, 2, 0, 1, 1)
            body = bytes(max(0, n - HEADER.size - 16))
            packet = self.sealed[n] = header + self.seal_in(NONCE_PAD + header[8:], body, header)
        self.open(NONCE_PAD + packet[8:16], packet[HEADER.size :], packet[: HEADER.size])


async def serve(port: int, seconds: float, fanout: int, first_dest: int, rooms: int, aead: bool) -> Counts:
    loop = asyncio.get_running_loop()
    counts = Counts()
    started = asyncio.Event()
    dests = [("127.0.0.1", first_dest + d) for d in range(fanout)]
    transports = []
    for k in range(rooms):
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        for opt in (socket.SO_RCVBUF, socket.SO_SNDBUF):
            sock.setsockopt(socket.SOL_SOCKET, opt, 8 << 20)
        sock.bind(("127.0.0.1", port + k))
        transport, _ = await loop.create_datagram_endpoint(
            lambda: Forward(counts, dests, aead, started), sock=sock
        )
        transports.append(transport)
    try:  # no timer of its own while it relays: the floor is the datagrams' work alone
        await asyncio.wait_for(started.wait(), IDLE_LIMIT)
        assert counts.first is not None
        await asyncio.sleep(counts.first[0] + seconds - time.monotonic())
        counts.cpu_end = _cpu()
    except TimeoutError:
        pass
    finally:
        for transport in transports:
            transport.close()
    return counts


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="floor_relay", description=__doc__.split("\n\n")[0])
    parser.add_argument("role", choices=["relay"])
    parser.add_argument("port", type=int)
    parser.add_argument("seconds", type=float)
    parser.add_argument("fanout", type=int)
    parser.add_argument("first_dest", type=int)
    parser.add_argument("--rooms", type=int, default=1, help="consecutive ports served by this process")
    parser.add_argument("--aead", action="store_true", help="an AES-GCM open and a seal per recipient")
    args = parser.parse_args(argv)
    seconds = min(args.seconds, 60.0)  # bounded, whatever it is asked
    counts = uvloop.run(
        serve(args.port, seconds, args.fanout, args.first_dest, max(1, args.rooms), args.aead)
    )
    if counts.first is None or not counts.cpu_end:
        print("relay: 0 datagrams/s in, 0/s out, cpu 0%")
        return
    span = max(counts.last - counts.first[0], 1e-9)  # rates over the traffic, as the C relay's
    cpu = 100 * (counts.cpu_end - counts.first[1]) / span
    print(
        f"relay: {counts.received / span:.0f} datagrams/s in, {counts.sent / span:.0f}/s out, cpu {cpu:.0f}%"
    )


if __name__ == "__main__":
    main()
