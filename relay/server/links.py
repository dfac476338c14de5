"""Transports: thin adapters between sockets and the room (relay/server/room.py).

UDP is a DatagramProtocol; WebSocket is a plain asyncio.Protocol driving websockets' sans-I/O
`ServerProtocol`, so a connection costs no task and no async iterator, and the room can write
frames synchronously from its flush. websockets does the opening handshake, closes and anything
unusual; the frames of play (binary in and out, ping) are read and written here
(relay/protocol/wsframes.py): websockets' per-frame generator calls, objects and lists were a
large share of a busy WebSocket relay's core.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from websockets.frames import Frame, Opcode
from websockets.http11 import Request
from websockets.protocol import State
from websockets.server import ServerProtocol

from relay.protocol.constants import UDP_MAX_PLAINTEXT, WS_MAX_PACKET, WS_MAX_PLAINTEXT
from relay.protocol.wsframes import BINARY, PING, PONG, server_frame, take_frames
from relay.server.room import UDP, WS, WS_POLICY, Room, Session

log = logging.getLogger("relay.server")

MAX_REQUEST = 65536  # bytes of an opening handshake without its end: websockets gets to refuse it


class UdpLink:
    """A UDP peer address with the anti-amplification budget of docs/protocol.md 7.3."""

    __slots__ = ("addr", "budget", "challenge", "sendto", "validated")
    kind = UDP
    max_plaintext = UDP_MAX_PLAINTEXT

    def __init__(self, sendto, addr: tuple, budget: int) -> None:
        self.sendto = sendto
        self.addr = addr
        self.budget = budget
        self.validated = False
        self.challenge = 0

    def send(self, packet: bytes) -> bool:
        if not self.validated:
            if len(packet) > self.budget:
                return False
            self.budget -= len(packet)
        self.sendto(packet, self.addr)
        return True

    def close(self, code: int, reason: str) -> None:
        """UDP has no connection to close; the room forgets the session."""


class UdpProtocol(asyncio.DatagramProtocol):
    def __init__(self, room: Room) -> None:
        self.room = room
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        sendto = transport.sendto  # type: ignore[attr-defined]
        self._make_link = lambda addr, budget: UdpLink(sendto, addr, budget)

    def datagram_received(self, data: bytes, addr: tuple) -> None:
        try:
            self.room.udp_datagram(data, addr, self._make_link)
        except Exception:  # never let one datagram stop the room
            self.room.counters.drops["internal_error"] += 1
            log.exception("datagram handler failed")

    def error_received(self, exc: Exception) -> None:
        self.room.counters.drops["socket_error"] += 1


class WsLink:
    __slots__ = ("conn",)
    kind = WS
    max_plaintext = WS_MAX_PLAINTEXT
    validated = True

    def __init__(self, conn: WsConnection) -> None:
        self.conn = conn

    def send(self, packet: bytes) -> bool:
        return self.conn.send_packet(packet)

    def close(self, code: int, reason: str) -> None:
        self.conn.close(code, reason)

    @property
    def buffered(self) -> int:
        transport = self.conn.transport
        return transport.get_write_buffer_size() if transport is not None else 0


class WsConnection(asyncio.Protocol):
    """One WebSocket connection carrying one session (docs/protocol.md 7.2)."""

    def __init__(self, room: Room, connections: set[WsConnection]) -> None:
        self.room = room
        self.connections = connections
        self.proto = ServerProtocol(max_size=WS_MAX_PACKET, extensions=None)  # send_packet relies on none
        self.transport: asyncio.Transport | None = None
        self.session: Session | None = None
        self.link = WsLink(self)
        self._closing = False
        # Input not yet parsed while this connection reads its own frames (relay/protocol/wsframes.py);
        # None once websockets' parser has the stream (after the first frame it does not take).
        self._buf: bytearray | None = bytearray()
        self._fragments: list[bytes] | None = None  # a binary message arriving in fragments

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.connections.add(self)

    def data_received(self, data: bytes) -> None:
        buf = self._buf
        if buf is None:
            self._receive(data)
            return
        buf += data
        if self.proto.state is State.CONNECTING:
            # websockets gets the HTTP request and nothing after it, so its parser, if handed the
            # stream later, starts at a frame boundary
            end = buf.find(b"\r\n\r\n")
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
        try:
            for opcode, payload in frames:
                if opcode == BINARY:
                    self._binary(payload)
                elif opcode == PING:
                    self._pong(payload)
        except Exception:
            self.room.counters.drops["internal_error"] += 1
            log.exception("websocket handler failed")
            self.close(1011, "internal error")
        if other and self._buf is not None:
            self._hand_over()

    def _hand_over(self) -> None:
        """From here on websockets parses this stream: a close, a fragment, text, a bad frame."""
        rest = bytes(self._buf or b"")
        self._buf = None
        if rest:
            self._receive(rest)

    def _receive(self, data: bytes) -> None:
        proto = self.proto
        proto.receive_data(data)
        try:
            for event in proto.events_received():
                if isinstance(event, Request):
                    proto.send_response(proto.accept(event))
                elif isinstance(event, Frame):
                    self._frame(event)
        except Exception:
            self.room.counters.drops["internal_error"] += 1
            log.exception("websocket handler failed")
            self.close(1011, "internal error")
        self._write()

    def _binary(self, data: bytes) -> None:
        if self._closing:
            return
        if self.session is None:
            self.session = self.room.ws_hello(data, self.link)
            if self.session is None:
                self.close(WS_POLICY, "handshake failed")
        else:
            self.room.ws_data(self.session, data)

    def _pong(self, payload: bytes) -> None:
        transport = self.transport
        if transport is not None and not self._closing and self.proto.state is State.OPEN:
            transport.write(server_frame(PONG, payload))

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

    def _write(self) -> None:
        transport = self.transport
        if transport is None:
            return
        for chunk in self.proto.data_to_send():
            if chunk:
                transport.write(chunk)
            else:  # SEND_EOF
                with contextlib.suppress(Exception):
                    transport.close()
        if self.proto.state is State.CLOSED and not transport.is_closing():
            transport.close()

    def send_packet(self, packet: bytes) -> bool:
        """One binary frame written straight to the transport (wsframes.server_frame): websockets'
        send_binary builds the same bytes at several times the cost, per recipient per pass.
        Whatever websockets queued (a pong, a close) was written when it was queued, so order is
        kept."""
        transport = self.transport
        if transport is None or self._closing or self.proto.state is not State.OPEN:
            return False
        transport.write(server_frame(BINARY, packet))
        return True

    def close(self, code: int, reason: str) -> None:
        if self._closing:
            return
        self._closing = True
        session, self.session = self.session, None
        if session is not None:
            self.room.ws_closed(session)
        if self.proto.state is State.OPEN:
            self.proto.send_close(code, reason[:120])
            self._write()
        if self.transport is not None:
            transport = self.transport
            asyncio.get_event_loop().call_later(1.0, transport.abort)

    def connection_lost(self, exc: Exception | None) -> None:
        self.connections.discard(self)
        session, self.session = self.session, None
        self._closing = True
        if session is not None:
            self.room.ws_closed(session)
        self.transport = None

    def eof_received(self) -> bool | None:
        self.proto.receive_eof()
        self._write()
        return None
