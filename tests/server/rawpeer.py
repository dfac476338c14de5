"""Hand-driven relay peers for the server tests: every byte on the wire is the test's choice.

Built on relay.protocol (ClientHello, Sealer, Opener, the message classes), so a raw peer speaks
exactly the normative protocol but can also stop sending, stop reading, replay, corrupt or move
address, which the real client (relay.client) never does.

- `UdpPeer`: one UDP socket; `rebind()` swaps in a fresh socket (a new source address).
- `WsPeer`: one TCP connection driving websockets' sans-I/O client protocol, so the test decides
  when (and whether) bytes are read; `close_code` is the code of the relay's close frame.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from typing import Any

from websockets.client import ClientProtocol
from websockets.frames import Frame, Opcode
from websockets.http11 import Response
from websockets.uri import parse_uri

from relay.protocol import messages as m
from relay.protocol.constants import HEADER_SIZE, UDP_HELLO_PAD_TO, PacketType, ProtocolError
from relay.protocol.keys import decode_room_key, derive_psk
from relay.protocol.packets import ClientHello, Opener, Sealer, SessionKeys, parse_header

HOST = "127.0.0.1"


class NoAnswer(AssertionError):
    """Nothing arrived within the wait."""


class RawPeer:
    """The session half shared by both transports: handshake state, keys, sealing, decoding."""

    strict = False

    def __init__(self, room_key: str) -> None:
        self.psk = derive_psk(decode_room_key(room_key))
        self.hello: ClientHello | None = None
        self.keys: SessionKeys | None = None
        self.sealer: Sealer | None = None
        self.opener: Opener | None = None
        self.welcome: m.Welcome | None = None
        self.inbox: list[m.RelayMessage] = []  # decoded messages not yet taken by expect()

    # ---- transport (subclasses) ----

    def send_raw(self, packet: bytes) -> None:
        raise NotImplementedError

    async def recv_packet(self, timeout: float) -> bytes:
        raise NotImplementedError

    # ---- session ----

    @property
    def session_id(self) -> int:
        assert self.keys is not None
        return self.keys.session_id

    @property
    def connection_id(self) -> int:
        assert self.welcome is not None
        return self.welcome.connection_id

    def make_hello(self, pad_to: int) -> bytes:
        self.hello = ClientHello.create(self.psk, pad_to=pad_to)
        return self.hello.packet

    def finish(self, accept: bytes) -> None:
        assert self.hello is not None
        self.keys = self.hello.finish(accept)
        self.sealer = Sealer(self.keys.k_c2s, self.keys.session_id)
        self.opener = Opener(self.keys.k_s2c, strict=self.strict)

    async def handshake(self, pad_to: int = 0, timeout: float = 2.0) -> bytes:
        """Sends a HELLO, verifies the ACCEPT and derives the keys; returns the ACCEPT."""
        self.send_raw(self.make_hello(pad_to))
        accept = await self.recv_packet(timeout)
        self.finish(accept)
        return accept

    def seal(self, *encoded: bytes) -> bytes:
        """One DATA packet holding these encoded messages (the next counter)."""
        assert self.sealer is not None
        return self.sealer.seal(b"".join(encoded))

    def send(self, *encoded: bytes) -> bytes:
        packet = self.seal(*encoded)
        self.send_raw(packet)
        return packet

    def decode(self, packet: bytes) -> list[m.RelayMessage]:
        """Authenticates and decodes one packet from the relay (ProtocolError if it is bad)."""
        assert self.opener is not None
        header = parse_header(packet)
        if header.type != PacketType.DATA or header.session_id != self.session_id:
            raise ProtocolError("unexpected", f"type {header.type} session {header.session_id}")
        return m.decode_relay(self.opener.open(packet, header.counter))

    async def next_message(self, timeout: float = 2.0) -> m.RelayMessage:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not self.inbox:
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise NoAnswer("no message in time")
            self.inbox.extend(self.decode(await self.recv_packet(remaining)))
        return self.inbox.pop(0)

    async def expect(self, kind: type, timeout: float = 2.0, where: Any = None) -> Any:
        """The next message of `kind` (matching `where`); other messages are discarded."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            msg = await self.next_message(max(0.0, deadline - loop.time()))
            if isinstance(msg, kind) and (where is None or where(msg)):
                return msg

    async def quiet(self, wait: float = 0.3) -> list[m.RelayMessage]:
        """Every message that arrives within `wait` seconds."""
        got: list[m.RelayMessage] = []
        with contextlib.suppress(NoAnswer):
            while True:
                got.append(await self.next_message(wait))
        return got

    async def join(
        self, user_id: str, profile: bytes = b"", resume_token: bytes | None = None, timeout: float = 2.0
    ) -> m.Welcome:
        """JOIN and collect the WELCOME parts; returns the last part with every member in it."""
        self.send(m.Join(user_id, profile, None, resume_token).encode())
        members: list[m.Member] = []
        while True:
            welcome = await self.expect(m.Welcome, timeout)
            members.extend(welcome.members)
            if not welcome.more:
                break
        self.welcome = m.Welcome(
            welcome.connection_id,
            welcome.resume_token,
            welcome.limits,
            tuple(members),
            False,
            welcome.resumed,
        )
        return self.welcome

    async def start(self, user_id: str, profile: bytes = b"", pad_to: int | None = None) -> m.Welcome:
        await self.handshake(self.default_pad if pad_to is None else pad_to)
        return await self.join(user_id, profile)

    default_pad = 0


class _UdpProtocol(asyncio.DatagramProtocol):
    def __init__(self, peer: UdpPeer) -> None:
        self.peer = peer

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr: tuple) -> None:
        if self.transport is not self.peer.transport:
            self.peer.old_received += 1
            return
        self.peer.received_bytes += len(data)
        self.peer.packets.put_nowait(data)


class UdpPeer(RawPeer):
    """A raw UDP client. `sent_bytes` / `received_bytes` count what crossed the current socket."""

    default_pad = UDP_HELLO_PAD_TO

    def __init__(self, room_key: str, port: int) -> None:
        super().__init__(room_key)
        self.port = port
        self.transport: asyncio.DatagramTransport | None = None
        self.packets: asyncio.Queue[bytes] = asyncio.Queue()
        self.sent_bytes = 0
        self.received_bytes = 0
        self.old_transports: list[asyncio.DatagramTransport] = []  # earlier sockets, still open
        self.old_received = 0  # datagrams that reached an earlier socket after a rebind

    @classmethod
    async def open(cls, room_key: str, port: int) -> UdpPeer:
        peer = cls(room_key, port)
        await peer.rebind()
        return peer

    async def rebind(self) -> None:
        """A fresh socket (new source port); the counters restart for the new address. The old
        socket stays open so a test can see that nothing reaches it any more (`old_received`)."""
        if self.transport is not None:
            self.old_transports.append(self.transport)
        loop = asyncio.get_running_loop()
        self.packets = asyncio.Queue()
        self.sent_bytes = self.received_bytes = 0
        self.transport, _ = await loop.create_datagram_endpoint(
            lambda: _UdpProtocol(self), local_addr=(HOST, 0), remote_addr=(HOST, self.port)
        )

    @property
    def address(self) -> tuple:
        assert self.transport is not None
        return self.transport.get_extra_info("sockname")

    def send_raw(self, packet: bytes) -> None:
        assert self.transport is not None
        self.sent_bytes += len(packet)
        self.transport.sendto(packet)

    async def recv_packet(self, timeout: float) -> bytes:
        try:
            return await asyncio.wait_for(self.packets.get(), timeout)
        except TimeoutError:
            raise NoAnswer(f"no datagram within {timeout} s") from None

    async def silence(self, wait: float = 0.3) -> list[bytes]:
        """Raw datagrams that arrive within `wait` seconds (undecoded)."""
        got: list[bytes] = []
        with contextlib.suppress(NoAnswer):
            while True:
                got.append(await self.recv_packet(wait))
        return got

    def close(self) -> None:
        for transport in [*self.old_transports, self.transport]:
            if transport is not None:
                transport.close()
        self.old_transports = []
        self.transport = None


class WsPeer(RawPeer):
    """A raw WebSocket client over a plain TCP connection (websockets' sans-I/O ClientProtocol).

    Nothing is read unless the test awaits a packet, so a peer that stops awaiting is a reader
    that never reads; `rcvbuf` shrinks the kernel's receive buffer to make that show quickly.
    """

    strict = True

    def __init__(self, room_key: str) -> None:
        super().__init__(room_key)
        self.proto = ClientProtocol(parse_uri("ws://127.0.0.1/"), max_size=None)
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None
        self.frames: list[Frame] = []
        self.opened = False

    @classmethod
    async def open(cls, room_key: str, port: int, rcvbuf: int | None = None, timeout: float = 2.0) -> WsPeer:
        peer = cls(room_key)
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if rcvbuf is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, (HOST, port))
        peer.reader, peer.writer = await asyncio.open_connection(sock=sock, limit=4096)
        peer.proto.send_request(peer.proto.connect())
        peer._write()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while peer.proto.handshake_exc is None and not peer.opened:
            await peer._read(deadline - loop.time())
        if peer.proto.handshake_exc is not None:
            raise peer.proto.handshake_exc
        return peer

    def _write(self) -> None:
        assert self.writer is not None
        for chunk in self.proto.data_to_send():
            if chunk:
                self.writer.write(chunk)

    async def _read(self, timeout: float) -> None:
        assert self.reader is not None
        if timeout <= 0:
            raise NoAnswer("websocket: nothing in time")
        try:
            data = await asyncio.wait_for(self.reader.read(65536), timeout)
        except TimeoutError:
            raise NoAnswer(f"websocket: nothing within {timeout:.2f} s") from None
        if data:
            self.proto.receive_data(data)
        else:
            self.proto.receive_eof()
        self._write()  # answers to close frames
        for event in self.proto.events_received():
            if isinstance(event, Response):
                self.opened = True
            else:
                self.frames.append(event)
        if not data and not self.frames:
            raise EOFError("websocket: connection closed")

    def send_raw(self, packet: bytes) -> None:
        self.proto.send_binary(packet)
        self._write()

    def send_text(self, text: str) -> None:
        self.proto.send_text(text.encode())
        self._write()

    async def recv_packet(self, timeout: float) -> bytes:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            while self.frames:
                frame = self.frames.pop(0)
                if frame.opcode is Opcode.BINARY:
                    return bytes(frame.data)
                if frame.opcode is Opcode.CLOSE:
                    raise EOFError(f"websocket closed by the relay: {self.close_code}")
            await self._read(deadline - loop.time())

    async def wait_closed(self, timeout: float = 2.0) -> int | None:
        """Reads (discarding packets) until the relay closes; returns its close code."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            try:
                await self.recv_packet(max(0.0, deadline - loop.time()))
            except EOFError:
                return self.close_code

    @property
    def close_code(self) -> int | None:
        close = self.proto.close_rcvd
        return None if close is None else close.code

    async def aclose(self) -> None:
        if self.writer is not None:
            self.writer.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.writer.wait_closed(), 1.0)


def flip(packet: bytes, index: int, mask: int = 0x01) -> bytes:
    """The packet with one byte changed."""
    return packet[:index] + bytes([packet[index] ^ mask]) + packet[index + 1 :]


def header_of(packet: bytes) -> bytes:
    return packet[:HEADER_SIZE]
