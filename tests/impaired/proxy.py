"""Impaired network paths in userspace, for tests (this kernel has no netem): loopback only,
asyncio, bounded in flows, connections and datagrams in flight, and closed with everything
it holds.

- `UdpProxy` sits between UDP clients and a relay. Each direction (`up`: client to relay,
  `down`: relay to client) drops, delays, duplicates and reorders datagrams by its `Impairment`,
  drawing from its own seeded `random.Random` (the same draws per datagram whatever happens to
  it, so a seed fixes the fate of the n-th datagram of a direction). `blackhole()` drops a
  direction until `heal()`; `rebind()` moves every flow to a new upstream source port, as a NAT
  that lost its mapping (what comes back to an old port is dropped and counted, `stale`).
- `TcpProxy` forwards TCP connections (WebSocket) and can `stall()` the ones open now (stop
  forwarding without closing: TCP's own keepalives would not notice either) or `cut()` them
  (both sides reset at once, as a middlebox that forgets a connection); while `refusing`, new
  connections are reset as they come (the path is down).

Counters (`Direction`) say what the path did, so a test can compare what the endpoints saw
with what the network really did (e.g. a relay's replay drops against the duplicates).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import random
import socket
import struct
from collections.abc import Callable
from dataclasses import dataclass, field

from relay.protocol.constants import PacketType

HOST = "127.0.0.1"
_DATA = int(PacketType.DATA)
_LINGER_RESET = struct.pack("ii", 1, 0)  # SO_LINGER on, 0 s: close() sends RST, not FIN
_Send = Callable[[bytes], object]
_Stream = tuple[asyncio.StreamReader, asyncio.StreamWriter]


@dataclass(frozen=True, slots=True)
class Impairment:
    """What one direction does to each datagram, independently: `loss` and `duplicate` are
    probabilities; a delivered datagram waits `delay` plus up to `jitter` seconds, and with
    probability `reorder` another `reorder_delay` (so later ones overtake it)."""

    loss: float = 0.0
    duplicate: float = 0.0
    reorder: float = 0.0
    delay: float = 0.0
    jitter: float = 0.0
    reorder_delay: float = 0.03


@dataclass(slots=True)
class Direction:
    """One direction's impairment, its randomness and what it did (datagrams)."""

    impairment: Impairment
    rand: random.Random
    received: int = 0
    delivered: int = 0  # copies written out, duplicates included
    dropped: int = 0  # lost by `loss`
    blackholed: int = 0
    duplicated: int = 0  # datagrams delivered twice
    duplicated_data: int = 0  # of which DATA packets (the replay window's to drop)
    reordered: int = 0
    overflow: int = 0  # dropped: too many in flight
    stale: int = 0  # down only: arrived at an upstream port the NAT had already left
    blackhole: bool = False


@dataclass(slots=True)
class _Flow:
    client: tuple[str, int]
    upstream: socket.socket
    old: list[socket.socket] = field(default_factory=list)


class UdpProxy:
    """`async with UdpProxy(relay_port, up=Impairment(loss=0.2), seed=1) as proxy:` clients
    then talk to `proxy.port`. One flow (an upstream socket) per client address."""

    def __init__(
        self,
        target_port: int,
        up: Impairment | None = None,
        down: Impairment | None = None,
        seed: int = 0,
        max_flows: int = 16,
        max_in_flight: int = 4096,
    ) -> None:
        self.target = (HOST, target_port)
        self.up = Direction(up or Impairment(), random.Random(f"{seed}/up"))
        self.down = Direction(down or Impairment(), random.Random(f"{seed}/down"))
        self.max_flows = max_flows
        self.max_in_flight = max_in_flight
        self.flows: dict[tuple[str, int], _Flow] = {}
        self.refused_flows = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._listen: socket.socket | None = None
        self._timers: dict[int, asyncio.TimerHandle] = {}  # datagrams (and copies) delayed
        self._next_timer = itertools.count()

    @property
    def port(self) -> int:
        assert self._listen is not None, "start() first"
        return int(self._listen.getsockname()[1])

    async def start(self) -> UdpProxy:
        self._loop = asyncio.get_running_loop()
        self._listen = _udp_socket()
        self._loop.add_reader(self._listen.fileno(), self._read_clients)
        return self

    async def __aenter__(self) -> UdpProxy:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        for handle in self._timers.values():
            handle.cancel()
        self._timers.clear()
        for flow in self.flows.values():
            for sock in (flow.upstream, *flow.old):
                self._close_socket(sock)
        self.flows.clear()
        if self._listen is not None:
            self._close_socket(self._listen)
            self._listen = None

    # ---- what a test does to the path ----

    def blackhole(self, up: bool = True, down: bool = True) -> None:
        """Drops everything in the chosen directions until heal()."""
        self.up.blackhole = self.up.blackhole or up
        self.down.blackhole = self.down.blackhole or down

    def heal(self) -> None:
        self.up.blackhole = self.down.blackhole = False

    def rebind(self) -> list[int]:
        """NAT rebinding: every flow gets a new upstream source port (the new ports). The old
        sockets stay open so that what still reaches them is seen (`down.stale`) and dropped."""
        assert self._loop is not None
        ports = []
        for flow in self.flows.values():
            self._loop.remove_reader(flow.upstream.fileno())
            flow.old.append(flow.upstream)
            self._loop.add_reader(flow.upstream.fileno(), self._read_stale, flow.upstream)
            flow.upstream = self._upstream_socket(flow.client)
            ports.append(int(flow.upstream.getsockname()[1]))
        return ports

    def upstream_address(self, client: tuple[str, int] | None = None) -> tuple[str, int]:
        """The address the relay sees for a client (the only one when `client` is None)."""
        flow = self.flows[client] if client is not None else next(iter(self.flows.values()))
        host, port = flow.upstream.getsockname()[:2]
        return str(host), int(port)

    async def settled(self, timeout: float = 5.0) -> None:
        """Waits until nothing delayed is left in flight."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while self._timers:
            assert loop.time() < deadline, f"{len(self._timers)} datagrams still in flight"
            await asyncio.sleep(0.01)

    # ---- forwarding ----

    def _read_clients(self) -> None:
        listen = self._listen
        assert listen is not None
        for _ in range(64):  # a bounded batch per wake-up, like any event loop reader
            try:
                data, addr = listen.recvfrom(65536)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:  # ICMP from a client that went away
                continue
            client = (str(addr[0]), int(addr[1]))
            flow = self.flows.get(client)
            if flow is None:
                if len(self.flows) >= self.max_flows:
                    self.refused_flows += 1
                    continue
                flow = self.flows[client] = _Flow(client, self._upstream_socket(client))
            self._pass(self.up, data, flow.upstream.send)

    def _read_relay(self, client: tuple[str, int]) -> None:
        flow = self.flows.get(client)
        listen = self._listen
        if flow is None or listen is None:
            return
        for _ in range(64):
            try:
                data = flow.upstream.recv(65536)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:  # ICMP port unreachable: the relay is gone
                continue
            self._pass(self.down, data, lambda d: listen.sendto(d, client))

    def _read_stale(self, sock: socket.socket) -> None:
        for _ in range(64):
            try:
                sock.recv(65536)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                continue
            self.down.stale += 1

    def _pass(self, d: Direction, data: bytes, send: _Send) -> None:
        """One datagram through one direction. Every datagram takes the same five draws."""
        d.received += 1
        imp = d.impairment
        r = d.rand
        lost, dup, late, jitter, gap = r.random(), r.random(), r.random(), r.random(), r.random()
        if d.blackhole:
            d.blackholed += 1
            return
        if lost < imp.loss:
            d.dropped += 1
            return
        delay = imp.delay + jitter * imp.jitter
        if late < imp.reorder:
            d.reordered += 1
            delay += imp.reorder_delay
        self._later(d, delay, data, send)
        if dup < imp.duplicate:
            d.duplicated += 1
            if len(data) > 1 and data[1] == _DATA:
                d.duplicated_data += 1
            self._later(d, delay + gap * 0.005, data, send)

    def _later(self, d: Direction, delay: float, data: bytes, send: _Send) -> None:
        if delay <= 0:
            self._write(d, data, send)
            return
        if len(self._timers) >= self.max_in_flight:
            d.overflow += 1
            return
        assert self._loop is not None
        key = next(self._next_timer)
        self._timers[key] = self._loop.call_later(delay, self._fire, key, d, data, send)

    def _fire(self, key: int, d: Direction, data: bytes, send: _Send) -> None:
        del self._timers[key]
        self._write(d, data, send)

    @staticmethod
    def _write(d: Direction, data: bytes, send: _Send) -> None:
        with contextlib.suppress(OSError):  # a full buffer or a closed socket: the network lost it
            send(data)
            d.delivered += 1

    def _upstream_socket(self, client: tuple[str, int]) -> socket.socket:
        assert self._loop is not None
        sock = _udp_socket()
        sock.connect(self.target)
        self._loop.add_reader(sock.fileno(), self._read_relay, client)
        return sock

    def _close_socket(self, sock: socket.socket) -> None:
        if self._loop is not None and sock.fileno() >= 0:
            self._loop.remove_reader(sock.fileno())
        sock.close()


def _udp_socket() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setblocking(False)
    sock.bind((HOST, 0))
    return sock


class _Pipe:
    """One proxied TCP connection: two pumps, one per direction, and a switch to stall both."""

    def __init__(self, client: _Stream, relay: _Stream) -> None:
        self.flowing = asyncio.Event()
        self.flowing.set()
        self.writers = (client[1], relay[1])
        loop = asyncio.get_running_loop()
        self.tasks = (
            loop.create_task(self._pump(client[0], relay[1])),
            loop.create_task(self._pump(relay[0], client[1])),
        )

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                await self.flowing.wait()  # stalled: read nothing, write nothing, close nothing
                data = await reader.read(65536)
                if not data:
                    break
                await self.flowing.wait()
                writer.write(data)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            for w in self.writers:  # one side ended: so does the other (FIN, or RST after a cut)
                w.close()

    def cut(self) -> None:
        """Resets both TCP connections now (RST, whatever is buffered)."""
        for w in self.writers:
            sock = w.get_extra_info("socket")
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)
            w.transport.abort()
        for task in self.tasks:
            task.cancel()


class TcpProxy:
    """`async with TcpProxy(relay_port) as proxy:` clients then connect to `proxy.port`."""

    def __init__(self, target_port: int, max_connections: int = 16) -> None:
        self.target_port = target_port
        self.max_connections = max_connections
        self.pipes: list[_Pipe] = []
        self.accepted = 0
        self.refused = 0
        self.refusing = False
        self._server: asyncio.Server | None = None

    @property
    def port(self) -> int:
        assert self._server is not None, "start() first"
        return int(self._server.sockets[0].getsockname()[1])

    async def start(self) -> TcpProxy:
        self._server = await asyncio.start_server(self._accept, HOST, 0)
        return self

    async def __aenter__(self) -> TcpProxy:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.pipes = [p for p in self.pipes if not all(t.done() for t in p.tasks)]  # ended ones go
        if self.refusing or len(self.pipes) >= self.max_connections:
            self.refused += 1
            writer.transport.abort()
            return
        self.accepted += 1
        try:
            upstream = await asyncio.open_connection(HOST, self.target_port)
        except OSError:
            writer.transport.abort()
            return
        self.pipes.append(_Pipe((reader, writer), upstream))

    def stall(self) -> None:
        """The connections open now stop forwarding (and stay open); new ones flow."""
        for pipe in self.pipes:
            pipe.flowing.clear()

    def cut(self) -> None:
        """The connections open now are reset on both sides; new ones flow."""
        pipes, self.pipes = self.pipes, []
        for pipe in pipes:
            pipe.cut()

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        pipes, self.pipes = self.pipes, []
        for pipe in pipes:
            pipe.cut()
        await asyncio.gather(*(t for p in pipes for t in p.tasks), return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()
