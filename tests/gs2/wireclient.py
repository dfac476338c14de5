"""A GS2-Realtime game client as GS2's Unity SDK behaves, written from the research note on the
GS2 client wire alone (docs/gs2-clients.md names it), not from the relay's code: its own
minimal protobuf encoding and parsing, and the `websockets` library for the WebSocket (no
subprotocol, no extension, binary frames; it answers pings as websocket-sharp does).

Every Container it receives is checked as GS2 clients before 2022 did: the signature is
HMAC-SHA256(ASCII room key, payload.value), and the type URL names the message
(`type.googleapis.com/<Name>`); current clients ignore both.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
from dataclasses import dataclass, field
from typing import Any

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

# Container.MessageType (the note's table 2.3)
HELLO_REQUEST = 0
HELLO_RESULT = 1
BYE_REQUEST = 2
UPDATE_PROFILE_REQUEST = 0x10000000
JOIN_NOTIFICATION = 0x20000000
LEAVE_NOTIFICATION = 0x20000001
UPDATE_PROFILE_NOTIFICATION = 0x20000002
BINARY_MESSAGE = 0x30000000
ERROR = 0x7FFFFFFF
NAMES = {
    HELLO_RESULT: "HelloResult",
    JOIN_NOTIFICATION: "JoinNotification",
    LEAVE_NOTIFICATION: "LeaveNotification",
    UPDATE_PROFILE_NOTIFICATION: "UpdateProfileNotification",
    BINARY_MESSAGE: "BinaryMessage",
    ERROR: "Error",
}
CLIENT_TYPE_URL = "type.googleapis.com"  # what today's client writes (no message name)


# ---- protobuf, just enough --------------------------------------------------------------------


def varint(n: int) -> bytes:
    out = bytearray()
    while True:
        low = n & 0x7F
        n >>= 7
        if n:
            out.append(low | 0x80)
        else:
            out.append(low)
            return bytes(out)


def uint_field(number: int, value: int) -> bytes:
    return varint(number << 3) + varint(value) if value else b""


def bytes_field(number: int, value: bytes) -> bytes:
    return varint(number << 3 | 2) + varint(len(value)) + value if value else b""


def read_varint(data: bytes, pos: int) -> tuple[int, int]:
    shift = result = 0
    while True:
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7


def fields(data: bytes) -> dict[int, list[Any]]:
    """Field number -> values (ints for varints, bytes for length-delimited), in order."""
    out: dict[int, list[Any]] = {}
    pos = 0
    while pos < len(data):
        key, pos = read_varint(data, pos)
        number, wire_type = key >> 3, key & 7
        if wire_type == 0:
            value, pos = read_varint(data, pos)
        elif wire_type == 2:
            length, pos = read_varint(data, pos)
            value = data[pos : pos + length]
            pos += length
        else:
            raise ValueError(f"wire type {wire_type}")
        out.setdefault(number, []).append(value)
    return out


def one(f: dict[int, list[Any]], number: int, default: Any) -> Any:
    return f[number][-1] if number in f else default


def packed_uints(f: dict[int, list[Any]], number: int) -> list[int]:
    out: list[int] = []
    for value in f.get(number, []):
        if isinstance(value, int):
            out.append(value)
        else:
            pos = 0
            while pos < len(value):
                n, pos = read_varint(value, pos)
                out.append(n)
    return out


# ---- messages ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Player:
    connection_id: int
    user_id: str
    profile: bytes

    @classmethod
    def parse(cls, data: bytes) -> Player:
        f = fields(data)
        return cls(one(f, 1, 0), one(f, 2, b"").decode(), one(f, 3, b""))


@dataclass(frozen=True)
class Received:
    """One Container from the relay, its payload already read by type."""

    kind: int
    value: bytes
    sequence: int
    lifetime_ms: int
    body: Any = None


@dataclass(frozen=True)
class Relayed:
    sender: int
    data: bytes
    targets: tuple[int, ...]


@dataclass(frozen=True)
class ErrorMessage:
    component: str
    status: int
    message: str


def container(kind: int, value: bytes, key: bytes, type_url: str = CLIENT_TYPE_URL) -> bytes:
    """A client's Container: type (absent for HELLO_REQUEST), Any, signature; no seq/lifetime."""
    any_ = bytes_field(1, type_url.encode()) + bytes_field(2, value)
    signature = hmac.new(key, value, hashlib.sha256).digest()
    return uint_field(1, kind) + bytes_field(2, any_) + bytes_field(3, signature)


def hello_value(token: str, profile: bytes) -> bytes:
    return bytes_field(1, token.encode()) + bytes_field(2, profile)


def relay_value(data: bytes, targets: tuple[int, ...] = ()) -> bytes:
    packed = b"".join(varint(t) for t in targets)
    inner = bytes_field(2, data) + bytes_field(3, packed)
    return bytes_field(1, inner)  # BinaryMessage{data = RelayBinaryMessage}


def parse_container(data: bytes, key: bytes) -> Received:
    """A relay's Container, checked: signature, type URL, a type from the table."""
    f = fields(data)
    kind = one(f, 1, 0)
    any_ = fields(one(f, 2, b""))
    type_url = one(any_, 1, b"").decode()
    value = one(any_, 2, b"")
    signature = one(f, 3, b"")
    assert kind in NAMES, f"type {kind:#x} is not one a relay sends"
    assert type_url == f"type.googleapis.com/{NAMES[kind]}", type_url
    assert hmac.compare_digest(signature, hmac.new(key, value, hashlib.sha256).digest()), "bad signature"
    body: Any
    inner = fields(value)
    if kind == HELLO_RESULT:
        body = (Player.parse(one(inner, 1, b"")), [Player.parse(p) for p in inner.get(2, [])])
    elif kind in (JOIN_NOTIFICATION, LEAVE_NOTIFICATION, UPDATE_PROFILE_NOTIFICATION):
        body = Player.parse(one(inner, 1, b""))
    elif kind == BINARY_MESSAGE:
        relayed = fields(one(inner, 1, b""))
        body = Relayed(one(relayed, 1, 0), one(relayed, 2, b""), tuple(packed_uints(relayed, 3)))
    else:
        body = ErrorMessage(one(inner, 1, b"").decode(), one(inner, 2, 0), one(inner, 3, b"").decode())
    return Received(kind, value, one(f, 4, 0), one(f, 5, 0), body)


# ---- the client ---------------------------------------------------------------------------------


@dataclass(eq=False)
class Gs2Client:
    """One RelayRealtimeSession: open, HelloRequest, then relay messages and profile updates."""

    ws: ClientConnection
    key: bytes
    my: Player | None = None
    players: dict[int, Player] = field(default_factory=dict)
    sequences: list[int] = field(default_factory=list)
    received: list[Received] = field(default_factory=list)  # what closed() read

    @classmethod
    async def open(cls, port: int, room_key: str, origin: str | None = None) -> Gs2Client:
        ws = await connect(
            f"ws://127.0.0.1:{port}/",
            compression=None,
            user_agent_header="websocket-sharp/1.0",
            origin=origin,  # type: ignore[arg-type]
            ping_interval=None,  # the client sends no pings; it answers the relay's
            max_size=None,
            open_timeout=3,
        )
        return cls(ws, room_key.encode("ascii"))

    @classmethod
    async def join(cls, port: int, room_key: str, token: str, profile: bytes = b"") -> Gs2Client:
        """Opens, says hello and waits for HelloResult (raises on an Error)."""
        client = await cls.open(port, room_key)
        await client.hello(token, profile)
        got = await client.next()
        if got.kind != HELLO_RESULT:
            raise ConnectionError(f"hello refused: {got.body}")
        return client

    async def hello(self, token: str, profile: bytes = b"") -> None:
        await self.send_raw(container(HELLO_REQUEST, hello_value(token, profile), self.key))

    async def send(self, data: bytes, targets: tuple[int, ...] = ()) -> None:
        await self.send_raw(container(BINARY_MESSAGE, relay_value(data, targets), self.key))

    async def update_profile(self, profile: bytes) -> None:
        await self.send_raw(container(UPDATE_PROFILE_REQUEST, bytes_field(1, profile), self.key))

    async def bye(self) -> None:
        await self.send_raw(container(BYE_REQUEST, b"", self.key))

    async def send_raw(self, data: bytes) -> None:
        await self.ws.send(data)

    async def next(self, timeout: float = 3.0) -> Received:
        """The next Container (the player table follows HelloResult and notifications)."""
        data = await asyncio.wait_for(self.ws.recv(), timeout)
        assert isinstance(data, bytes), "a relay sends binary frames only"
        got = parse_container(data, self.key)
        self.sequences.append(got.sequence)
        if got.kind == HELLO_RESULT:
            self.my, players = got.body
            self.players.update({p.connection_id: p for p in players})
        elif got.kind in (JOIN_NOTIFICATION, UPDATE_PROFILE_NOTIFICATION):
            self.players[got.body.connection_id] = got.body
        elif got.kind == LEAVE_NOTIFICATION:
            self.players.pop(got.body.connection_id, None)
        return got

    async def next_of(self, kind: int, timeout: float = 3.0) -> Received:
        """The next Container of `kind`, skipping others."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            got = await self.next(max(0.01, deadline - loop.time()))
            if got.kind == kind:
                return got

    async def closed(self, timeout: float = 3.0) -> tuple[int | None, str]:
        """Reads until the relay closes; its close code and reason."""
        try:
            async with asyncio.timeout(timeout):
                while True:
                    self.received.append(await self.next(timeout))
        except ConnectionClosed:
            pass
        rcvd = self.ws.protocol.close_rcvd
        return (rcvd.code, rcvd.reason) if rcvd is not None else (None, "")

    async def nothing(self, seconds: float = 0.3) -> list[Received]:
        """What arrives within `seconds` (expected: nothing)."""
        out = []
        try:
            while True:
                out.append(await self.next(seconds))
        except TimeoutError:
            return out

    async def close(self) -> None:
        await self.ws.close()
