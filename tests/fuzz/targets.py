"""Coverage-guided fuzz targets (atheris, libFuzzer's engine) over every decoder and both sides'
state machines. Each target takes the fuzzer's bytes and may only fail the way the code's
contract says (ProtocolError for a bad packet, and so on); anything else is a crash.

    python -m tests.fuzz NAME [libFuzzer flags] [corpus dirs]
    python -m tests.fuzz room_authenticated -max_total_time=3600   # a long run

`make test` runs every target for a few seconds (tests/fuzz/test_targets.py); RELAY_FUZZ_SECONDS
sets how long. The targets that need a room build one in memory (the room is sans-I/O): members
joined through the real handshake, then the fuzz input reaches the room raw, or sealed with a
member's keys so that it gets past authentication to the message handlers. A GS2 game client
is in that room too (relay/server/gs2.py), so what native members make the room send is also
turned into GS2 Containers, and `gs2_peer` hands it the fuzz input raw or signed with the room
key (past the HMAC, into the Any's decoding and the room).
"""

from __future__ import annotations

import contextlib
import json
import random
import sys
from collections.abc import Callable
from dataclasses import replace

import msgpack
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from google.protobuf.any_pb2 import Any

from relay.agent.launch import LaunchError, RelayLaunch
from relay.agent.wire import Closed, Heartbeat, Registration, WireError
from relay.protocol import messages as m
from relay.protocol import tokens
from relay.protocol.client import ClientConnection, ClientState
from relay.protocol.constants import ProtocolError
from relay.protocol.gs2 import wire
from relay.protocol.gs2.message_pb2 import Container, HelloRequest
from relay.protocol.keys import decode_room_key, derive_psk, generate_room_key
from relay.protocol.packets import ClientHello, Sealer, parse_header, verify_hello
from relay.protocol.wsframes import parse_head, read_frames, take_frames
from relay.server.config import RelayConfig
from relay.server.gs2 import Gs2Peer
from relay.server.metrics import Counters
from relay.server.room import Room
from relay.server.transport import Disconnect

Target = Callable[[bytes], None]


class _World:
    """A room with two UDP members and one WebSocket member, joined in memory."""

    def __init__(self) -> None:
        from tests.protocol.harness import Net

        self.key = generate_room_key()
        config = replace(RelayConfig(room_key=self.key), keepalive_timeout=1e9, idle_timeout=1e9)
        self.room = Room(config, Counters(), 0.0, random.Random(1).randbytes)
        self.net = Net(self.room)
        self.a = ClientConnection(self.key, "a")
        self.b = ClientConnection(self.key, "b")
        self.w = ClientConnection(self.key, "w", transport="ws")
        for client in (self.a, self.b, self.w):
            self.net.join(client)
            assert client.state is ClientState.JOINED
        self.now = 0.0
        self.encoder = wire.Encoder(self.key, self.room.started)
        self.gs2, self.sink = self.gs2_join()

    def gs2_join(self) -> tuple[Gs2Peer, MemorySink]:
        """A GS2 client in the room (no token key: its token's claims name it)."""
        sink = MemorySink()
        peer = Gs2Peer(self.room, self.encoder, sink)
        token = tokens.mint(Ed25519PrivateKey.generate(), "gs2-player")
        hello = HelloRequest(accessToken=token).SerializeToString()
        peer.receive(gs2_container(Container.HELLO_REQUEST, hello, self.encoder.signer), 0)
        self.net.flush()
        assert peer.session is not None and peer.session.member is not None, sink.sent
        return peer, sink

    def check(self) -> None:
        """What must hold whatever came in: no handler failed, and every Container the GS2 client
        got is one GS2's client parses (a type from its table, signed with the room key)."""
        assert not self.room.counters.drops["internal_error"], self.room.counters.drops
        self.net.to_client.clear()
        signer = self.encoder.signer
        for data in self.sink.sent:
            container = Container.FromString(data)
            assert container.messageType in wire.SERVER_TYPES and container.sequenceNumber
            assert container.signature == signer(container.payload.value)
        self.sink.sent.clear()


class MemorySink:
    """A GS2 client's connection in memory: what its peer wrote, and how it was closed."""

    buffered = 0

    def __init__(self) -> None:
        self.sent: list[bytes] = []
        self.closed: tuple[Disconnect, str] | None = None

    def send_many(self, payloads: list[bytes]) -> int:
        if self.closed is not None:
            return 0
        self.sent += payloads
        return sum(map(len, payloads))

    def close(self, why: Disconnect, text: str) -> None:
        self.closed = (why, text)


def gs2_container(kind: int, value: bytes, signer: wire.Signer) -> bytes:
    """A GS2 client's Container, signed by `signer`."""
    return Container(
        messageType=kind,
        payload=Any(type_url="type.googleapis.com", value=value),
        signature=signer(value),
    ).SerializeToString()


_world: _World | None = None


def world() -> _World:
    global _world
    if _world is None:
        _world = _World()
    return _world


def client_messages(data: bytes) -> None:
    try:
        for msg in m.decode_client(data):
            msg.encode()  # what decodes encodes again
    except ProtocolError:
        pass


def relay_messages(data: bytes) -> None:
    with contextlib.suppress(ProtocolError):
        m.decode_relay(data)


def packet_header(data: bytes) -> None:
    with contextlib.suppress(ProtocolError):
        parse_header(data)


_psk = derive_psk(decode_room_key(generate_room_key()))
_hello = ClientHello.create(_psk)


def handshake(data: bytes) -> None:
    """Both ends of the handshake: a HELLO the relay verifies, an ACCEPT the client finishes."""
    for step in (lambda: verify_hello(_psk, data), lambda: _hello.finish(data)):
        with contextlib.suppress(ProtocolError):
            step()


def websocket_frames(data: bytes) -> None:
    _frames, used, _ = take_frames(bytearray(data), 65536)
    assert 0 <= used <= len(data)
    buf = bytearray(data)
    read_frames(buf)
    assert len(buf) <= len(data)
    parse_head(data)


def room_udp(data: bytes) -> None:
    """Raw datagrams from four addresses (two of them the members')."""
    w = world()
    w.now += 0.001
    addrs = [w.net.address(w.a), w.net.address(w.b), ("192.0.2.9", 1), ("192.0.2.9", 2)]
    w.room.udp_datagram(data[1:], addrs[data[0] % 4] if data else addrs[2], w.now)
    w.net.flush()
    w.room.handle_timer(w.now)
    w.check()


def room_authenticated(data: bytes) -> None:
    """The fuzz input as the plaintext of a member's DATA packet: past the AEAD, into the
    message decoder and every handler (rate limits off: they would only cut the run short)."""
    w = world()
    w.now += 0.05
    sender = (w.a, w.b, w.w)[data[0] % 3] if data else w.a
    if sender.state is not ClientState.JOINED or sender._sealer is None:
        return
    packet = sender._sealer.seal(data[1:])
    w.net.now = w.now
    w.net.up(sender, [packet])
    w.net.down()
    w.check()
    for client in (w.a, w.b, w.w):  # a kicked or departed member comes back for more
        if client.state is not ClientState.JOINED:
            replacement = ClientConnection(w.key, client.user_id, transport=client.transport)
            w.net.join(replacement)
            if client is w.a:
                w.a = replacement
            elif client is w.b:
                w.b = replacement
            else:
                w.w = replacement


_GS2_KINDS = sorted(Container.MessageType.values())


def gs2_peer(data: bytes) -> None:
    """A joined GS2 client's message: the fuzz input raw (first byte even), or the Any value of a
    Container signed with the room key (odd; the second byte picks the type). Whatever it is,
    the relay answers it or refuses it (GS2 Error, the connection closed, the member gone), and
    the native members are unaffected."""
    w = world()
    w.now += 0.01
    w.net.now = w.now
    if data[:1] and data[0] & 1:
        kind = _GS2_KINDS[data[1] % len(_GS2_KINDS)] if len(data) > 1 else Container.BINARY_MESSAGE
        message = gs2_container(kind, data[2:], w.encoder.signer)
    else:
        message = data[1:]
    peer, sink = w.gs2, w.sink
    drops = w.room.counters.drops
    refusals = sum(n for reason, n in drops.items() if reason.startswith("gs2_"))
    peer.receive(message, w.now)
    w.net.flush()
    w.net.down()
    refused = sink.closed is not None  # refused, or a BYE, or kicked by the room
    if refused:
        assert peer.session is None
    if sum(n for reason, n in drops.items() if reason.startswith("gs2_")) > refusals:
        assert refused and Container.FromString(sink.sent[-1]).messageType == Container.ERROR
    w.check()
    members = w.room.members
    for client in (w.a, w.b, w.w):
        assert client.state is ClientState.JOINED and client.connection_id in members
    if refused:
        assert len(members) == 3
        w.gs2, w.sink = w.gs2_join()
    else:
        assert peer.session is not None and peer.session.sid in w.room.sessions


def client_authenticated(data: bytes) -> None:
    """The fuzz input as the plaintext of the relay's DATA packet to a joined client."""
    w = world()
    session = w.room.sessions.get(w.a.session_id)
    if session is None or w.a.state is not ClientState.JOINED:
        return
    w.now += 0.01
    w.a.receive(session.sealer.seal(data), w.now)
    w.a.handle_timer(w.now)
    w.a.datagrams_to_send()


_token_key = Ed25519PrivateKey.generate().public_key()


def access_tokens(data: bytes) -> None:
    text = data.decode("utf-8", errors="surrogateescape")
    with contextlib.suppress(tokens.TokenError):
        tokens.verify(_token_key, text, "u", 0.0, tokens.USER_ISSUER)
    with contextlib.suppress(tokens.TokenError):  # a relay without a token key reads the claims
        tokens.read_claims(text)


def agent_bodies(data: bytes) -> None:
    try:
        body = json.loads(data)
    except ValueError:
        return
    for kind in (Registration, Heartbeat, Closed):
        try:
            parsed = kind.from_json(body)
        except WireError:
            continue
        assert kind.from_json(parsed.to_json()) == parsed


def relay_launch(data: bytes) -> None:
    args = data.decode("utf-8", errors="replace").split("\x00")
    try:
        launch = RelayLaunch.parse(args, {})
    except LaunchError:
        return
    assert RelayLaunch.parse(launch.argv(), launch.env()) == launch


TARGETS: dict[str, Target] = {
    "client_messages": client_messages,
    "relay_messages": relay_messages,
    "packet_header": packet_header,
    "handshake": handshake,
    "websocket_frames": websocket_frames,
    "room_udp": room_udp,
    "room_authenticated": room_authenticated,
    "client_authenticated": client_authenticated,
    "gs2_peer": gs2_peer,
    "access_tokens": access_tokens,
    "agent_bodies": agent_bodies,
    "relay_launch": relay_launch,
}


def seeds(name: str) -> list[bytes]:
    """Valid inputs to start a target's corpus from (the fuzzer mutates them)."""
    pack = msgpack.packb
    client = [
        m.Join("alice", b"p", None, b"t" * 16).encode(),
        m.Send(b"hello", None).encode() + m.Send(b"x", (1, 2)).encode(),
        m.SetProfile(b"lvl").encode() + m.Ping(1, 2).encode() + m.Sync().encode(),
        m.PathPong(7).encode() + m.Bye().encode(),
    ]
    relay = [
        b"".join(m.WelcomeBuilder(3, b"t" * 16, m.Limits(), False, [m.Member(1, "a", b"p")]).parts(1168)),
        m.MemberJoined(4, "c", b"").encode() + m.MemberLeft(4, 1).encode() + m.Message(1, b"hi").encode(),
        m.Pong(1, 2).encode()
        + m.Error(2, "x").encode()
        + m.Closing(1, "y").encode()
        + m.PathPing(9).encode(),
    ]
    if name in ("client_messages", "room_authenticated"):
        return [b"\x00" + s for s in client] if name == "room_authenticated" else client
    if name in ("relay_messages", "client_authenticated"):
        return relay
    if name in ("packet_header", "handshake", "room_udp"):
        return [ClientHello.create(_psk, pad_to=1200).packet, Sealer(bytes(32), 5).seal(b"\x91\x05")]
    if name == "websocket_frames":
        from relay.protocol.wsframes import BINARY, PING, client_frame, server_frame

        return [
            client_frame(BINARY, b"x" * 200) + client_frame(PING, b"p"),
            server_frame(BINARY, b"y" * 70000),
        ]
    if name == "gs2_peer":
        relayed = wire.relay_value(0, b"hello") + b"\x1a\x02\x01\x02"
        return [
            b"\x00" + gs2_container(Container.BINARY_MESSAGE, relayed, wire.Signer(b"another room's key")),
            b"\x01" + bytes([_GS2_KINDS.index(Container.BINARY_MESSAGE)]) + relayed,
            b"\x01" + bytes([_GS2_KINDS.index(Container.UPDATE_PROFILE_REQUEST)]) + b"\x0a\x03lvl",
            b"\x01" + bytes([_GS2_KINDS.index(Container.HELLO_REQUEST)]) + b"\x0a\x01x",
            b"\x00\x12\xff\xff\xff\xff\x0f",
        ]
    if name == "access_tokens":
        # claims; nested arrays (deeper ones raised RecursionError); a lone surrogate in sub
        return [
            b"eyJzdWIiOiJ1In0.c2ln",
            b"W1tbW1tbW1tbW1tbW1tbW1tb.c2ln",
            b"eyJzdWIiOiJcdWQ4MDAiLCJpYXQiOjAsImV4cCI6MX0.c2ln",
        ]
    if name == "agent_bodies":
        return [json.dumps(Registration("1.2.3.4", 5, 6, 7, 2.0).to_json()).encode(), b'{"reason":"idle"}']
    if name == "relay_launch":
        return [b"--room-key\x00" + generate_room_key().encode() + b"\x00--port\x007000"]
    return [pack(0)]


def main(argv: list[str]) -> int:
    """Runs one target under atheris (tests/fuzz/__main__.py imports this module with the relay's
    code instrumented for coverage)."""
    import atheris

    if not argv or argv[0] not in TARGETS:
        print(f"usage: python -m tests.fuzz {{{','.join(TARGETS)}}} [libFuzzer flags]", file=sys.stderr)
        return 2
    name = argv[0]
    if name in ("room_udp", "room_authenticated", "client_authenticated", "gs2_peer"):
        world()  # built before the run starts
    atheris.Setup([sys.argv[0], *argv[1:]], TARGETS[name])
    atheris.Fuzz()
    return 0
