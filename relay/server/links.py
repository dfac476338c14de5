"""Transports: thin adapters between sockets and the sans-I/O room (relay/server/room.py).

They own the sockets and read the clock: each datagram or WebSocket read is handed to the room
with the time it arrived. UDP is a DatagramProtocol that gives the room its datagram writer
(the room keeps each UDP peer's path, relay/server/paths.py). WebSocket is a plain
asyncio.Protocol driving websockets' sans-I/O `ServerProtocol`, so a connection costs no task
and no async iterator, and the room can write frames synchronously from its flush: the
connection is the session's `Link`. websockets does the opening handshake, closes and anything
unusual; the frames of play (binary in and out, ping) are read and written with the project's
codec (relay/protocol/wsframes.py): websockets' per-frame generator calls, objects and lists
were a large share of a busy WebSocket relay's core.

Where relay/server/_lane.c is built, a native member's connection is read in C once it has
joined, as the UDP port is (`WsConnection._enter_lane`): the transport stops reading and the loop
calls the lane for a dup of the socket; the lane gives back a payload it does not relay
(`lane_binary`) and, for good, the reading itself at a frame it does not read or the stream's
end (`lane_hand_back`). TLS connections and GS2 clients' are never read there.

The same port serves GS2 game clients (docs/gs2-clients.md): a connection whose first binary
message is a protobuf Container, not a HELLO, is a GS2 client's from then on, and its messages
go to a `Gs2Peer` (relay/server/gs2.py). GS2 clients send no keepalive of their own, so the
relay pings such a connection every quarter of the keepalive timeout and its pongs keep it.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import math
import os
import socket
import struct
from collections.abc import Callable
from time import monotonic
from typing import TYPE_CHECKING, Any, cast

from websockets.frames import Frame, Opcode
from websockets.http11 import Request
from websockets.protocol import State
from websockets.server import ServerProtocol

from relay.protocol.constants import UDP_MAX_PLAINTEXT, WS_MAX_PACKET, WS_MAX_PLAINTEXT
from relay.protocol.gs2.wire import CONTAINER_FIRST_BYTES, Encoder
from relay.protocol.wsframes import BINARY, PING, PONG, server_binary_frames, server_frame, take_frames
from relay.server.gs2 import Gs2Peer
from relay.server.metrics import FANOUT_BOUNDS, Counters
from relay.server.room import Room
from relay.server.sessions import Session
from relay.server.tls import HANDSHAKE_RECORD, TlsLayer, TlsTerminator
from relay.server.transport import WS, Disconnect
from relay.settings import native

if TYPE_CHECKING:  # the C part's types (relay/server/_lane.pyi)
    from relay.server._lane import Entry, Lane

log = logging.getLogger("relay.server")

MAX_REQUEST = 65536  # bytes of an opening handshake without its end: websockets gets to refuse it


SendBatch = Callable[[int, list[bytes], list[bytes], int], tuple[int, int]]
"""relay/server/_datagrams.c's send_batch(fd, packets, names, start) -> (sent, errno)."""


def _built_send_batch() -> SendBatch | None:
    """None (RELAY_PURE_PYTHON, or not built here): every datagram through the transport."""
    built = native("relay.server._datagrams")
    return built.send_batch if built is not None else None


SEND_BATCH = _built_send_batch()
"""relay/server/_datagrams.c's send_batch where that extension is built (and not refused by
RELAY_PURE_PYTHON), else None."""


def sockaddr(family: int, addr: tuple[Any, ...]) -> bytes:
    """The packed `struct sockaddr_in` or `sockaddr_in6` (Linux) of an address as asyncio gives
    it: the family in the host's order, the port and flow label in the network's."""
    port = addr[1].to_bytes(2, "big")
    if family == socket.AF_INET:
        return _FAMILY.pack(socket.AF_INET) + port + socket.inet_pton(socket.AF_INET, addr[0]) + bytes(8)
    flow, scope = (addr[2], addr[3]) if len(addr) >= 4 else (0, 0)
    host = socket.inet_pton(socket.AF_INET6, addr[0].partition("%")[0])
    return _FAMILY.pack(socket.AF_INET6) + port + flow.to_bytes(4, "big") + host + _SCOPE.pack(scope)


UNPACKABLE = (ValueError, OSError, IndexError, AttributeError)
"""What `sockaddr` raises for an address of a form it cannot pack."""
_FAMILY = struct.Struct("=H")
_SCOPE = struct.Struct("=I")


class UdpWriter:
    """The room's datagram writer (`room.udp_writer`). While `held` (the room's flush: the relay
    holds it around the call) it gathers the pass's datagrams, and `release` sends them with one
    sendmmsg (relay/server/_datagrams.c); otherwise, or without that extension, each goes through
    the transport's `sendto` as it comes. A full socket buffer hands the rest to the transport,
    which queues them and pauses the room's UDP output past its high-water mark, as for any
    datagram; a datagram the kernel refuses is counted (drops "socket_error") and skipped."""

    NAMES_KEPT = 4096
    """Packed addresses remembered (one per peer address; forgotten all at once past this)."""

    def __init__(
        self, sock: socket.socket, counters: Counters, send_batch: SendBatch | None = SEND_BATCH
    ) -> None:
        """`send_batch`: None sends each datagram through the transport."""
        self._sock = sock  # its descriptor is read at each batch: -1 once the transport closed it
        self._family = sock.family
        self._counters = counters
        self._send_batch = send_batch
        self._sendto: Callable[[bytes, Any], None] = _not_connected
        self._packets: list[bytes] = []
        self._addrs: list[Any] = []
        self._names: dict[Any, bytes] = {}
        self.held = False

    def attach(self, sendto: Callable[[bytes, Any], None]) -> None:
        """The transport's sendto, once the endpoint exists."""
        self._sendto = sendto

    def sendto(self, packet: bytes, addr: Any) -> None:
        if self.held:
            self._packets.append(packet)
            self._addrs.append(addr)
        else:
            self._sendto(packet, addr)

    def hold(self) -> None:
        self.held = self._send_batch is not None and self._sock.fileno() >= 0

    def release(self) -> None:
        self.held = False
        packets, addrs = self._packets, self._addrs
        if not packets:
            return
        self._packets, self._addrs = [], []
        # closed meanwhile: its number may already be another socket's, which must get nothing
        fd = self._sock.fileno()
        names = self._names_of(addrs) if len(packets) > 1 and fd >= 0 else None
        if names is None:
            self._through_transport(packets, addrs, 0)
            return
        count, done = len(packets), 0
        send_batch = cast(SendBatch, self._send_batch)
        while done < count:
            sent, error = send_batch(fd, packets, names, done)
            done += sent
            if done >= count:
                break
            if error in (errno.EAGAIN, errno.EWOULDBLOCK):  # the transport queues the rest
                self._through_transport(packets, addrs, done)
                break
            self._counters.drops["socket_error"] += 1  # as the transport's error_received counts
            done += 1

    def _names_of(self, addrs: list[Any]) -> list[bytes] | None:
        """The packed address of each; None if one is of a form it cannot pack (the transport's
        to judge then)."""
        names = self._names
        if len(names) > self.NAMES_KEPT:
            names.clear()
        family = self._family
        packed = []
        try:
            for addr in addrs:
                name = names.get(addr)
                if name is None:
                    name = names[addr] = sockaddr(family, addr)
                packed.append(name)
        except UNPACKABLE:
            return None
        return packed

    def _through_transport(self, packets: list[bytes], addrs: list[Any], start: int) -> None:
        sendto = self._sendto
        for i in range(start, len(packets)):
            sendto(packets[i], addrs[i])


def _not_connected(packet: bytes, addr: Any) -> None:
    raise RuntimeError("the UDP writer has no transport yet")


class UdpProtocol(asyncio.DatagramProtocol):
    def __init__(self, room: Room, writer: UdpWriter | None = None) -> None:
        """`writer`: the room's datagram writer (None: the transport's sendto itself)."""
        self.room = room
        self.writer = writer
        self.transport: asyncio.DatagramTransport | None = None
        self._handle = room.udp_datagram

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        udp = cast(asyncio.DatagramTransport, transport)  # uvloop's is not a subclass
        self.transport = udp
        if self.writer is not None:
            self.writer.attach(udp.sendto)
            self.room.udp_writer = self.writer.sendto
        else:
            self.room.udp_writer = udp.sendto

    def datagram_received(self, data: bytes, addr: tuple[str | Any, int]) -> None:
        try:
            self._handle(data, addr, monotonic())
        except Exception:  # never let one datagram stop the room
            self.room.counters.drops["internal_error"] += 1
            log.exception("datagram handler failed")

    def error_received(self, exc: Exception) -> None:
        self.room.counters.drops["socket_error"] += 1

    def pause_writing(self) -> None:
        """The socket takes no more (the kernel's send queue is full: a congested or shaped
        egress) and the transport's own queue passed its high-water mark: the room drops UDP
        output until it drains, instead of the transport queueing it without bound."""
        self.room.udp_backlogged = True

    def resume_writing(self) -> None:
        self.room.udp_backlogged = False


def _built_lane() -> type | None:
    """relay/server/_lane.c's Lane where it and the pieces it spends (relay/protocol/_aead.c's
    Sealer and Opener, relay/server/_ratelimit.c's TokenBucket) are built and in use."""
    built = native("relay.server._lane")
    if built is None:
        return None
    from relay.protocol.packets import NATIVE as aead_built
    from relay.server.ratelimit import NATIVE as buckets_built

    return built.Lane if aead_built and buckets_built else None


LANE = _built_lane()
"""relay/server/_lane.c's Lane where it can run (built, and not refused by RELAY_PURE_PYTHON),
else None."""


class UdpLane:
    """The room's UDP port read in C (relay/server/_lane.c), in place of `UdpProtocol` and its
    transport: the loop calls the lane when the socket is readable, the lane relays members'
    plain SENDs itself and hands every other datagram to the room, as the transport did. What
    the room sends itself goes out through the room's `UdpWriter` (one sendmmsg a flush) or this
    adapter's `sendto`. Without a transport nothing queues a datagram the socket's buffer has no
    room for: it is dropped and counted (drops "udp_send_buffer"), and the room drops its UDP
    output until the socket is writable again, as a transport over its high-water mark made it."""

    def __init__(
        self,
        sock: socket.socket,
        room: Room,
        writer: UdpWriter,
        lane: type,
        hooks: tuple[tuple[object, str, Callable[[float], None]], ...] = (),
    ) -> None:
        """`hooks`: what the relay runs at the end of a pass, each `(obj, attribute, run)`:
        `run(now)` at the end of a read where `now >= obj.attribute`."""
        sock.setblocking(False)
        self.room = room
        self._sock = sock
        self._family = sock.family
        self._loop = asyncio.get_running_loop()
        self._watching_writable = False
        self._udp_datagram = room.udp_datagram
        self._udp_opened = room.udp_opened
        limits = room.config
        self.lane = lane(
            sock.fileno(),
            room,
            room.counters,
            self._punt,
            self._punt_opened,
            limits.max_payload_udp,
            UDP_MAX_PLAINTEXT,
            hooks,
            FANOUT_BOUNDS,
            self._full,
        )
        writer.attach(self.sendto)
        room.udp_writer = writer.sendto
        room.offer_udp = self._offer
        self._loop.add_reader(sock.fileno(), self.lane.read)

    def _punt(self, data: bytes, addr: Any, now: float) -> None:
        try:
            self._udp_datagram(data, addr, now)
        except Exception:  # never let one datagram stop the room
            self.room.counters.drops["internal_error"] += 1
            log.exception("datagram handler failed")

    def _punt_opened(
        self, session: Session, data: bytes, plaintext: bytes, ctr: int, addr: Any, now: float
    ) -> None:
        try:
            self._udp_opened(session, data, plaintext, ctr, addr, now)
        except Exception:
            self.room.counters.drops["internal_error"] += 1
            log.exception("datagram handler failed")

    def _offer(self, session: Session) -> None:
        path, member = session.path, session.member
        if path is None or member is None:
            return
        try:
            name = sockaddr(self._family, path.addr)
        except UNPACKABLE:
            return  # an address it cannot pack: the room keeps the session's packets
        self.lane.offer(session, member, path, name)

    def sendto(self, packet: bytes, addr: Any) -> None:
        try:
            self._sock.sendto(packet, addr)
        except BlockingIOError:
            self.room.counters.drops["udp_send_buffer"] += 1
            self._full()
        except OSError:
            self.room.counters.drops["socket_error"] += 1

    def _full(self) -> None:
        """The socket's send buffer is full (the lane met it too): until it drains, the room
        drops its UDP output, and so does the lane."""
        if not self._watching_writable:
            self._watching_writable = True
            self.room.udp_backlogged = True
            self._loop.add_writer(self._sock.fileno(), self._writable)

    def _writable(self) -> None:
        self._loop.remove_writer(self._sock.fileno())
        self._watching_writable = False
        self.room.udp_backlogged = False

    def close(self) -> None:
        fd = self._sock.fileno()
        if fd >= 0:
            self._loop.remove_reader(fd)
            if self._watching_writable:
                self._loop.remove_writer(fd)
        self.lane.close()
        self._sock.close()


CLOSE_CODES = {
    Disconnect.BYE: 1000,
    Disconnect.RESUMED_ELSEWHERE: 1000,
    Disconnect.ROOM_CLOSED: 1000,
    Disconnect.SHUTDOWN: 1001,
    Disconnect.TIMEOUT: 1001,
    Disconnect.RETRY_LATER: 1013,
    Disconnect.VIOLATION: 1008,
}
"""The WebSocket close code for each reason the room lets a session go (RFC 6455 7.4.1;
docs/protocol.md section 10)."""
WS_POLICY = CLOSE_CODES[Disconnect.VIOLATION]


class WsLink:
    __slots__ = ("conn",)
    kind = WS
    max_plaintext = WS_MAX_PLAINTEXT

    def __init__(self, conn: WsConnection) -> None:
        self.conn = conn

    def send(self, packet: bytes) -> bool:
        return self.conn.send_packet(packet)

    def send_many(self, payloads: list[bytes]) -> int:
        return self.conn.send_packets(payloads)

    def close(self, why: Disconnect, text: str) -> None:
        self.conn.close(CLOSE_CODES[why], text)

    @property
    def buffered(self) -> int:
        transport = self.conn.transport
        return transport.get_write_buffer_size() if transport is not None else 0


class Doorway:
    """TCP connections that have no session yet (no upgrade, or no valid HELLO): each gets
    `timeout` seconds to become one, and at most `limit` wait at once (the oldest is closed for
    a newer one). A thousand half-open connections then cost the relay a bounded number of file
    descriptors and never keep a real client out (docs/security.md)."""

    def __init__(self, limit: int, timeout: float, counters: Counters) -> None:
        self.limit = limit
        self.timeout = timeout
        self.counters = counters
        self.waiting: dict[WsConnection, asyncio.TimerHandle] = {}  # oldest first

    def enter(self, conn: WsConnection) -> None:
        if len(self.waiting) >= self.limit:
            oldest = next(iter(self.waiting))
            self.counters.drops["ws_pending_overflow"] += 1
            oldest.abort()
        loop = asyncio.get_running_loop()
        self.waiting[conn] = loop.call_later(self.timeout, self._expire, conn)

    def _expire(self, conn: WsConnection) -> None:
        if conn in self.waiting:
            self.counters.drops["ws_connect_timeout"] += 1
            conn.abort()

    def leave(self, conn: WsConnection) -> None:
        timer = self.waiting.pop(conn, None)
        if timer is not None:
            timer.cancel()

    def close(self) -> None:
        """The relay is closing: every connection still waiting is dropped and its timer
        cancelled, so nothing of the relay stays scheduled on a loop it shares (embedding, a
        group of rooms in one process)."""
        for conn in list(self.waiting):
            conn.abort()


class WsConnection(asyncio.Protocol):
    """One WebSocket connection carrying one session (docs/protocol.md 7.2)."""

    def __init__(
        self,
        room: Room,
        connections: set[WsConnection],
        doorway: Doorway | None = None,
        gs2: Encoder | None = None,
        tls: TlsTerminator | None = None,
        lane: Lane | None = None,
    ) -> None:
        """`gs2`: the room's GS2 encoder, when GS2 clients are accepted (None: native only);
        `tls`: the relay's TLS terminator, when it has a certificate (relay/server/tls.py)."""
        self.room = room
        self.tls = tls
        self._tls_layer: TlsLayer | None = None
        self.connections = connections
        self.doorway = doorway
        self.gs2 = gs2
        self.peer: Gs2Peer | None = None  # a GS2 client's connection
        self._pinger: asyncio.TimerHandle | None = None
        self._abort_later: asyncio.TimerHandle | None = None  # close()'s backstop, until connection_lost
        self.proto = ServerProtocol(max_size=WS_MAX_PACKET, extensions=None)  # send_packet relies on none
        self.transport: asyncio.Transport | None = None
        self.session: Session | None = None
        self.link = WsLink(self)
        self._closing = False
        # Input not yet parsed while this connection reads its own frames (relay/protocol/wsframes.py);
        # None once websockets' parser has the stream (after the first frame it does not take).
        self._buf: bytearray | None = bytearray()
        self._fragments: list[bytes] | None = None  # a binary message arriving in fragments
        self._now = 0.0  # when the input being handled was read
        self._refused = False  # the upgrade was refused (and counted)
        # the port read in C (relay/server/_lane.c) reads a native member's frames once it joined
        self._lane = lane
        self._lane_entry: Entry | None = None
        self._lane_fd = -1
        self._lane_tried = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        self.connections.add(self)
        if self.room.closed:  # accepted as the listener closed: nothing would ever close it
            self.transport.abort()
        elif self.doorway is not None:
            self.doorway.enter(self)

    def abort(self) -> None:
        """Drops the connection without a close handshake (it never became a session)."""
        if self.doorway is not None:
            self.doorway.leave(self)
        if self.transport is not None:
            self.transport.abort()

    def data_received(self, data: bytes) -> None:
        buf = self._buf
        if buf is None:
            self._receive(data)
            return
        if (
            not buf
            and self.tls is not None
            and data[0] == HANDSHAKE_RECORD
            and self._tls_layer is None
            and self.proto.state is State.CONNECTING
        ):  # a TLS connection's first read
            self._start_tls(data)
            return
        buf += data
        if self.proto.state is State.CONNECTING:
            # websockets gets the HTTP request and nothing after it, so its parser, if handed the
            # stream later, starts at a frame boundary. The bytes before this read hold no end of
            # the request (it would have been taken): the search starts 3 bytes before them, so a
            # request trickled in byte by byte costs its length, not its length squared.
            end = buf.find(b"\r\n\r\n", max(0, len(buf) - len(data) - 3))
            if end < 0:
                if len(buf) > MAX_REQUEST:
                    self._hand_over()  # websockets refuses it as it would have
                return
            request = bytes(buf[: end + 4])
            del buf[: end + 4]
            self._receive(request)
            if self.proto.state is not State.OPEN:
                self._hand_over()
                return
        frames, used, other = take_frames(buf, WS_MAX_PACKET)
        del buf[:used]
        self._now = monotonic()
        peer = self.peer
        try:
            if peer is not None:  # a GS2 client: its messages of this read go to the room at once
                self._gs2_frames(peer, frames)
            else:
                for opcode, payload in frames:
                    if opcode == BINARY:
                        self._binary(payload)  # the first may make this a GS2 client's connection
                    else:
                        self._control(opcode, payload)
        except Exception:
            self._failed()
        if other and self._buf is not None:
            self._hand_over()
        elif not self._lane_tried and self._lane is not None:
            self._enter_lane()

    def _failed(self) -> None:
        """A handler raised: counted, logged, and the connection closed (1011), as a room's error
        kills nothing but the connection it came from."""
        self.room.counters.drops["internal_error"] += 1
        log.exception("websocket handler failed")
        self.close(1011, "internal error")

    @property
    def secure(self) -> bool:
        """A TLS connection (wss://)."""
        return self._tls_layer is not None

    def _start_tls(self, first: bytes) -> None:
        """The TLS layer takes the transport over; this connection reads and writes through it
        from now on, plaintext as on a plain one."""
        assert self.tls is not None and self.transport is not None
        layer = self.tls.start(
            self.transport, self.data_received, self.connection_lost, self.eof_received, monotonic()
        )
        if layer is not None:
            self._tls_layer = layer
            self.transport = cast(asyncio.Transport, layer)
            layer.data_received(first)

    def _hand_over(self) -> None:
        """From here on websockets parses this stream: a close, a fragment, text, a bad frame."""
        rest = bytes(self._buf or b"")
        self._buf = None
        if rest:
            self._receive(rest)

    def _receive(self, data: bytes) -> None:
        self._now = monotonic()
        proto = self.proto
        proto.receive_data(data)
        try:
            for event in proto.events_received():
                if isinstance(event, Request):
                    proto.send_response(proto.accept(event))
                elif isinstance(event, Frame):
                    self._frame(event)
        except Exception:
            self._failed()
        if proto.handshake_exc is not None and not self._refused:
            self._refused = True  # websockets answered the upgrade 400, 426, 505, ...: counted once
            self.room.counters.drops["ws_upgrade_refused"] += 1
        self._write()

    def _binary(self, data: bytes) -> None:
        if self._closing:
            return
        session = self.session
        if session is not None:
            if self.peer is None:
                self.room.ws_data(session, data, self._now)
            else:
                self.peer.receive(data, self._now)
        elif self.peer is not None:  # a GS2 client refused before its session: it is closing
            return
        elif self.gs2 is not None and data and data[0] in CONTAINER_FIRST_BYTES:
            self._gs2(data)
        else:
            self.session = self.room.ws_hello(data, self.link, self._now)
            if self.session is None:
                self.close(WS_POLICY, "handshake failed")
            elif self.doorway is not None:
                self.doorway.leave(self)

    def _enter_lane(self) -> None:
        """A member on a plain connection (a native one, or a GS2 client): its frames are read in
        C from now on (a dup of the socket, the transport paused), until a frame C does not read
        or the stream's end hands the reading back (`lane_hand_back`); tried once a connection,
        at the end of the first read after its join that leaves no frame half read."""
        session, transport, peer = self.session, self.transport, self.peer
        lane = self._lane
        if lane is None or session is None or session.member is None or self._buf:  # not yet: a later read
            return
        self._lane_tried = True
        if (
            transport is None
            or self._closing
            or self._tls_layer is not None
            or self.proto.state is not State.OPEN
            or self._buf is None  # websockets' parser has the stream
            or (peer is not None and peer.over)
        ):
            return
        sock = transport.get_extra_info("socket")
        if sock is None:
            return
        fd = os.dup(sock.fileno())
        recipient = peer.recipient if peer is not None else None
        entry = lane.ws_offer(session, session.member, fd, self, transport, recipient)
        if entry is None:
            os.close(fd)
            return
        self._lane_entry, self._lane_fd = entry, fd
        transport.pause_reading()
        asyncio.get_running_loop().add_reader(fd, lane.ws_read, entry)

    def _leave_lane(self) -> None:
        fd, entry, lane = self._lane_fd, self._lane_entry, self._lane
        if fd < 0 or entry is None or lane is None:
            return
        self._lane_fd, self._lane_entry = -1, None
        asyncio.get_running_loop().remove_reader(fd)
        lane.ws_forget(entry)
        os.close(fd)
        if self.transport is not None and not self.transport.is_closing():
            self.transport.resume_reading()

    def lane_binary(self, data: bytes, now: float) -> None:
        """A frame's payload the lane read but does not relay itself: the room's, as read here."""
        self._now = now
        try:
            self._binary(data)
        except Exception:
            self._failed()

    def lane_control(self, opcode: int, payload: bytes, now: float) -> None:
        """A ping or a pong the lane read: answered, or a GS2 client's sign of life, as read here."""
        self._now = now
        try:
            self._control(opcode, payload)
        except Exception:
            self._failed()

    def _control(self, opcode: int, payload: bytes) -> None:
        """A ping (answered) or a pong (a GS2 client's sign of life)."""
        if opcode == PING:
            self._pong(payload)
        elif self.peer is not None:
            self.peer.pong(self._now)

    def lane_hand_back(self, rest: bytes) -> None:
        """The lane met a frame it does not read, or the stream's end: reading is this
        connection's again, from `rest` on."""
        self._leave_lane()
        if rest and self.transport is not None:
            self.data_received(rest)

    def _gs2(self, hello: bytes) -> None:
        """The first message is a GS2 Container: a GS2 client's connection from now on."""
        assert self.gs2 is not None
        peer = self.peer = Gs2Peer(self.room, self.gs2, self.link)
        peer.receive(hello, self._now)
        self.session = peer.session
        if self.session is not None:
            if self.doorway is not None:
                self.doorway.leave(self)
            self._ping_later()

    def _gs2_frames(self, peer: Gs2Peer, frames: list[tuple[int, bytes]]) -> None:
        """A GS2 client sends one message per WebSocket message: those of one read are handed over
        together, as a native packet's messages are (consecutive broadcasts, one queue extend)."""
        batch = []
        for opcode, payload in frames:
            if opcode == BINARY:
                batch.append(payload)
            else:
                self._control(opcode, payload)
        if batch and not self._closing:
            peer.receive_many(batch, self._now)

    def _ping_later(self) -> None:
        """The next keepalive ping, at the next multiple of the interval on the loop's clock:
        the GS2 connections of a relay are pinged in one pass, one wake-up of its process for
        all of them rather than one each (a wake-up costs more than the pings on a host of many
        relays, docs/architecture.md). The first may come sooner than an interval after the
        hello; each later one an interval after the last (a timer that fires a hair before its
        point, by the clock's rounding, skips to the next one rather than pinging twice)."""
        loop = asyncio.get_running_loop()
        interval = self.room.config.keepalive_timeout / 4
        grid = math.floor(loop.time() / interval + 0.01) + 1
        self._pinger = loop.call_at(grid * interval, self._ping)

    def _ping(self) -> None:
        """A GS2 client's keepalive: it answers WebSocket pings (its library does), nothing else.
        A client that keeps sending and never reads stays a member, so its pings are held to
        the send buffer as the room's output is."""
        transport = self.transport
        if transport is None or self._closing or self.proto.state is not State.OPEN:
            return
        self._put(transport, server_frame(PING, b""))
        self._hold_to_send_buffer(transport)
        if not self._closing:
            self._ping_later()

    def _pong(self, payload: bytes) -> None:
        transport = self.transport
        if transport is not None and not self._closing and self.proto.state is State.OPEN:
            self._put(transport, server_frame(PONG, payload))
            self._hold_to_send_buffer(transport)

    def _hold_to_send_buffer(self, transport: asyncio.Transport) -> None:
        """Pongs (or a GS2 client's pings) piling up unread (a client that pings and never
        reads): the room's send-buffer limit holds here too, or the relay's memory would grow
        at the client's upload rate."""
        if transport.get_write_buffer_size() <= self.room.config.ws_send_buffer:
            return
        session = self.session
        if session is not None:
            self.room.overflow(session)
        else:
            self.room.counters.drops["ws_send_buffer"] += 1
            self.close(WS_POLICY, "send buffer overflow")

    def _frame(self, frame: Frame) -> None:
        """A frame from websockets' parser. A binary message may come in fragments (RFC 6455
        5.4): they are joined here; websockets checks their order and closes with 1009 once
        their total passes the packet limit (its max_size counts the whole message)."""
        opcode = frame.opcode
        if opcode is Opcode.BINARY and frame.fin:
            self._binary(frame.data)
        elif opcode is Opcode.BINARY or opcode is Opcode.CONT:
            if opcode is Opcode.BINARY:
                self._fragments = []
            parts = self._fragments
            if parts is None:  # the rest of a text message, already refused
                return
            parts.append(frame.data)
            if frame.fin:
                self._fragments = None
                self._binary(b"".join(parts))
        elif opcode is Opcode.TEXT:
            self.room.counters.drops["ws_text"] += 1
            self.close(WS_POLICY, "binary frames only")
        elif opcode is Opcode.PONG and self.peer is not None:
            self.peer.pong(self._now)

    def _put(self, transport: asyncio.Transport, data: bytes) -> None:
        """Every write of this connection's. The lane writes a member's frames to the socket
        itself while the transport holds nothing queued, and asks the transport only after a
        write here (its entry's `queued`, relay/server/_lane.c), so a write that bypassed this
        could let the lane's frames overtake bytes the transport queued."""
        transport.write(data)
        entry = self._lane_entry
        if entry is not None:
            entry.queued = 1

    def _write(self) -> None:
        transport = self.transport
        if transport is None:
            return
        for chunk in self.proto.data_to_send():
            if chunk:
                self._put(transport, chunk)
            else:  # SEND_EOF
                with contextlib.suppress(Exception):
                    transport.close()
        if self.proto.state is State.CLOSED and not transport.is_closing():
            transport.close()
        elif not self._closing:
            self._hold_to_send_buffer(transport)  # websockets' own pongs, once its parser has the stream

    def send_packet(self, packet: bytes) -> bool:
        """One binary frame written straight to the transport (wsframes.server_frame): websockets'
        send_binary builds the same bytes at several times the cost, per recipient per pass.
        Whatever websockets queued (a pong, a close) was written when it was queued, so order is
        kept."""
        transport = self.transport
        if transport is None or self._closing or self.proto.state is not State.OPEN:
            return False
        self._put(transport, server_frame(BINARY, packet))
        return True

    def send_packets(self, packets: list[bytes]) -> int:
        """Several binary frames in one write (a GS2 client's Containers of one flush); the
        bytes written, 0 when the connection is not open."""
        transport = self.transport
        if transport is None or self._closing or self.proto.state is not State.OPEN:
            return 0
        data = server_binary_frames(packets)
        self._put(transport, data)
        return len(data)

    def close(self, code: int, reason: str) -> None:
        if self._closing:
            return
        self._leave_lane()
        self._closing = True
        self._session_ended(clean=False)
        if self.proto.state is State.OPEN:
            self.proto.send_close(code, reason[:120])
            self._write()
        if self.transport is not None:
            transport = self.transport
            self._abort_later = asyncio.get_running_loop().call_later(1.0, transport.abort)

    def connection_lost(self, exc: Exception | None) -> None:
        self._leave_lane()
        self.connections.discard(self)
        if self.doorway is not None:
            self.doorway.leave(self)
        if self._abort_later is not None:  # gone already: the backstop would hold the transport
            self._abort_later.cancel()
            self._abort_later = None
        self._closing = True
        self._session_ended(clean=self.proto.close_rcvd is not None)
        self.transport = None

    def _session_ended(self, clean: bool) -> None:
        """The room hears that the session's connection is gone: a native member's seat waits
        for a resume; a GS2 client's member leaves (`clean`: the client closed, as GS2's do)."""
        if self._pinger is not None:
            self._pinger.cancel()
            self._pinger = None
        session, self.session = self.session, None
        if self.peer is not None:
            self.peer.lost(monotonic(), clean)
        elif session is not None:
            self.room.ws_closed(session, monotonic())

    def eof_received(self) -> bool | None:
        self.proto.receive_eof()
        self._write()
        return None
