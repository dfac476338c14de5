"""A minimal blocking client of docs/protocol.md for the throughput load generator.

The Python client (relay.client) is what bots use; this one exists because a load generator
sharing one core must spend far less per delivered message than the relay: it completes the
handshake and JOIN with the protocol primitives, then hands out pre-sealed packets and raw
sockets so the timed window is only send() and recv() calls. UDP and WebSocket (frames from
relay/protocol/wsframes.py, masked with the all-zero key, so pre-built frames need no per-send
masking), and "gs2": a GS2 game client on the WebSocket port (relay/protocol/gs2/wire.py: one
signed Container per message, per WebSocket message; HelloRequest instead of the handshake and
JOIN; no PING of its own, it answers the relay's WebSocket pings).
"""

from __future__ import annotations

import base64
import contextlib
import os
import socket
import time
from dataclasses import dataclass, field

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from google.protobuf.message import DecodeError

from loadtest.gs2client import news
from relay.protocol import tokens
from relay.protocol.constants import HEADER_SIZE, UDP_HELLO_PAD_TO, PacketType, ProtocolError
from relay.protocol.gs2 import wire
from relay.protocol.keys import decode_room_key, derive_psk
from relay.protocol.messages import (
    Bye,
    Error,
    Join,
    Member,
    MemberJoined,
    MemberLeft,
    Ping,
    RelayMessage,
    Welcome,
    decode_relay,
    encode_send,
)
from relay.protocol.packets import ClientHello, Opener, Sealer, parse_header
from relay.protocol.wsframes import BINARY, CLOSE, PING, PONG, client_frame, read_frames

_SO_RCVBUFFORCE = 33
_SO_SNDBUFFORCE = 32
SOCKET_BUFFER = 8 << 20


def _grow_buffers(sock: socket.socket) -> None:
    for force, plain in ((_SO_RCVBUFFORCE, socket.SO_RCVBUF), (_SO_SNDBUFFORCE, socket.SO_SNDBUF)):
        try:
            sock.setsockopt(socket.SOL_SOCKET, force, SOCKET_BUFFER)
        except OSError:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, plain, SOCKET_BUFFER)


@dataclass(eq=False)
class RawSession:
    """One joined member: its socket, keys and what the handshake told it."""

    transport: str
    sock: socket.socket
    user_id: str
    session_id: int
    sealer: Sealer
    opener: Opener
    decrypt: object  # AESGCM(k_s2c).decrypt, for sampled packets outside the replay window
    connection_id: int = 0
    members: dict[int, Member] = field(default_factory=dict)
    # WebSocket: bytes read and not yet taken as whole frames (the receivers parse it in place)
    ws_in: bytearray = field(default_factory=bytearray)
    closed: bool = False
    gs2_signer: wire.Signer | None = None  # "gs2": signs with the room key (it has no sealer)

    def packet(self, plaintext: bytes) -> bytes:
        """Seals one DATA packet and frames it for the transport (the next counter)."""
        sealed = self.sealer.seal(plaintext)
        return client_frame(BINARY, sealed) if self.transport == "ws" else sealed

    def sends(self, payloads: list[bytes], targets: list[int] | None) -> bytes:
        """What one client packet of SENDs is on the wire: a sealed DATA packet of them, or for
        "gs2" a WebSocket message (a signed Container) per SEND, back to back."""
        if self.transport != "gs2":
            return self.packet(b"".join(encode_send(p, targets or None) for p in payloads))
        signer, value = self.gs2_signer, wire.send_value
        assert signer is not None
        return b"".join(
            client_frame(BINARY, wire.client_container(signer, wire.BINARY_MESSAGE, value(p, targets or ())))
            for p in payloads
        )

    def send_now(self, plaintext: bytes) -> None:
        """Blocking-ish send of one control packet (JOIN, PING, BYE) outside the timed window."""
        data = self.packet(plaintext)
        try:
            self.sock.sendall(data) if self.transport == "ws" else self.sock.send(data)
        except (BlockingIOError, InterruptedError):
            pass
        except OSError:
            self.closed = True

    def ping(self) -> None:
        if self.transport != "gs2":  # a GS2 client has no ping: it answers the relay's
            self.send_now(Ping(1, time.monotonic_ns() // 1000).encode())

    def bye(self) -> None:
        if not self.closed and self.transport != "gs2":  # GS2's client just closes
            self.send_now(Bye().encode())

    def close(self) -> None:
        if self.transport != "udp" and not self.closed:
            with contextlib.suppress(OSError):
                self.sock.settimeout(0.2)
                self.sock.sendall(client_frame(CLOSE, (1000).to_bytes(2, "big")))  # normal closure
        self.closed = True
        with contextlib.suppress(OSError):
            self.sock.close()

    def relay_messages(self, packet: bytes) -> list[RelayMessage]:
        """The messages of one of this session's DATA packets from the relay; none for anything
        else (not DATA, not authentic, replayed, malformed), which a client drops."""
        try:
            header = parse_header(packet)
            if header.type != PacketType.DATA:
                return []
            return decode_relay(self.opener.open(packet, header.counter))
        except ProtocolError:
            return []

    def handle_control(self, plaintext: bytes) -> None:
        """Applies JOIN/LEAVE/WELCOME news to the member table; anything else is ignored."""
        try:
            messages = decode_relay(plaintext)
        except ProtocolError:
            return
        self._news(messages)

    def _news(self, messages: list[RelayMessage]) -> None:
        for msg in messages:
            if isinstance(msg, MemberJoined):
                self.members[msg.connection_id] = Member(msg.connection_id, msg.user_id, msg.profile)
            elif isinstance(msg, MemberLeft):
                self.members.pop(msg.connection_id, None)
            elif isinstance(msg, Welcome):
                for m in msg.members:
                    self.members[m.connection_id] = m

    def handle_gs2(self, container: bytes) -> None:
        """A GS2 Container other than a relayed message: membership news for the table."""
        with contextlib.suppress(DecodeError):
            news(self.members, *wire.parse_server(container))

    def poll_control(self, seconds: float = 0.0) -> None:
        """Reads whatever is queued (membership news) for up to `seconds`, without blocking after."""
        deadline = time.monotonic() + seconds
        while True:
            for packet in _recv_packets(self, max(0.0, deadline - time.monotonic())):
                if self.transport == "gs2":
                    self.handle_gs2(packet)
                else:
                    self._news(self.relay_messages(packet))
            if time.monotonic() >= deadline:
                return


def _recv_packets(session: RawSession, timeout: float) -> list[bytes]:
    sock = session.sock
    sock.settimeout(timeout if timeout > 0 else 0.0)
    try:
        if session.transport == "udp":
            packets = [sock.recv(65536)]
            sock.setblocking(False)
            while True:
                try:
                    packets.append(sock.recv(65536))
                except (BlockingIOError, InterruptedError):
                    return packets
        data = sock.recv(1 << 20)
        if not data:
            session.closed = True
            return []
        session.ws_in += data
        out = []
        for opcode, payload in read_frames(session.ws_in):
            if opcode == BINARY:
                out.append(payload)
            elif opcode == PING:
                sock.sendall(client_frame(PONG, payload))
            elif opcode == CLOSE:
                session.closed = True
        return out
    except (TimeoutError, BlockingIOError, InterruptedError):
        return []
    finally:
        sock.setblocking(False)


def _ws_connect(host: str, port: int, timeout: float) -> tuple[socket.socket, bytes]:
    """A TCP connection past the WebSocket upgrade, and the bytes that came after the response."""
    sock = socket.create_connection((host, port), timeout=timeout)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    _grow_buffers(sock)
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall(
        (
            f"GET / HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        ).encode()
    )
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(4096)
        if not chunk:
            raise ConnectionError("websocket upgrade: connection closed")
        data += chunk
    head, rest = data.split(b"\r\n\r\n", 1)
    if b" 101 " not in head.split(b"\r\n", 1)[0]:
        raise ConnectionError(f"websocket upgrade refused: {head[:80]!r}")
    return sock, rest


def connect(
    host: str, port: int, room_key: str, user_id: str, transport: str = "udp", timeout: float = 5.0
) -> RawSession:
    """Handshake + JOIN; returns once the WELCOME snapshot is complete. Raises on failure."""
    if transport == "gs2":
        return _gs2_connect(host, port, room_key, user_id, timeout)
    psk = derive_psk(decode_room_key(room_key))
    deadline = time.monotonic() + timeout
    ws_in = bytearray()
    if transport == "ws":
        sock, early = _ws_connect(host, port, timeout)
        ws_in += early
        hello = ClientHello.create(psk)
        sock.sendall(client_frame(BINARY, hello.packet))
    elif transport == "udp":
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        _grow_buffers(sock)
        sock.connect((host, port))
        hello = ClientHello.create(psk, pad_to=UDP_HELLO_PAD_TO)
    else:
        raise ValueError(f"unknown transport {transport!r}")
    probe = RawSession(
        transport, sock, user_id, 0, Sealer(bytes(32), 1), Opener(bytes(32)), None, ws_in=ws_in
    )
    keys = None
    while keys is None:
        if time.monotonic() > deadline:
            sock.close()
            raise TimeoutError(f"{user_id}: no ACCEPT")
        if transport == "udp":
            sock.send(hello.packet)
        for packet in _recv_packets(probe, 0.25):
            try:
                keys = hello.finish(packet)
                break
            except ProtocolError:
                continue
        if probe.closed:
            raise ConnectionError(f"{user_id}: closed during handshake")
    session = RawSession(
        transport,
        sock,
        user_id,
        keys.session_id,
        Sealer(keys.k_c2s, keys.session_id),
        Opener(keys.k_s2c, strict=transport == "ws"),
        AESGCM(keys.k_s2c).decrypt,
        ws_in=ws_in,
    )
    join = Join(user_id).encode()
    next_join = 0.0
    while True:
        now = time.monotonic()
        if now > deadline:
            session.close()
            raise TimeoutError(f"{user_id}: no WELCOME")
        if now >= next_join and (transport == "udp" or next_join == 0.0):
            session.send_now(join)
            next_join = now + 0.3
        for packet in _recv_packets(session, 0.1):
            for msg in session.relay_messages(packet):
                if isinstance(msg, Welcome):
                    session.connection_id = msg.connection_id
                    for m in msg.members:
                        session.members[m.connection_id] = m
                    if not msg.more:
                        session.sock.setblocking(False)
                        return session
                elif isinstance(msg, Error):
                    session.close()
                    raise ConnectionError(f"{user_id}: join refused, error {msg.code}")
        if session.closed:
            raise ConnectionError(f"{user_id}: closed during join")


_GS2_SIGNER = Ed25519PrivateKey.generate()


def _gs2_connect(host: str, port: int, room_key: str, user_id: str, timeout: float) -> RawSession:
    """A GS2 client's start: upgrade, HelloRequest (a token the load's relays, with no token key,
    read the user from), HelloResult."""
    deadline = time.monotonic() + timeout
    sock, early = _ws_connect(host, port, timeout)
    signer = wire.Signer(wire.room_hmac_key(room_key))
    hello = wire.hello_value(tokens.mint(_GS2_SIGNER, user_id), b"")
    sock.sendall(client_frame(BINARY, wire.client_container(signer, wire.HELLO_REQUEST, hello)))
    session = RawSession(
        "gs2",
        sock,
        user_id,
        0,
        Sealer(bytes(32), 1),
        Opener(bytes(32)),
        None,
        ws_in=bytearray(early),
        gs2_signer=signer,
    )
    while time.monotonic() < deadline:
        for packet in _recv_packets(session, 0.1):
            try:
                kind, body = wire.parse_server(packet)
            except DecodeError:
                continue
            news(session.members, kind, body)
            if kind == wire.HELLO_RESULT:
                session.connection_id = body.myProfile.connectionId
                sock.setblocking(False)
                return session
            if kind == wire.ERROR:
                session.close()
                raise ConnectionError(f"{user_id}: hello refused: {body.message}")
        if session.closed:
            raise ConnectionError(f"{user_id}: closed during hello")
    session.close()
    raise TimeoutError(f"{user_id}: no HelloResult")


NONCE_PAD = b"\x00\x00\x00\x00"


def open_sample(session: RawSession, packet: bytes) -> bytes | None:
    """Decrypts a DATA packet without touching the replay window (sampled packets only)."""
    try:
        return session.decrypt(NONCE_PAD + packet[8:16], packet[HEADER_SIZE:], packet[:HEADER_SIZE])  # type: ignore[operator]
    except Exception:
        return None
