"""GS2 Containers in and out, sans-I/O (docs/gs2-clients.md).

In: `decode` parses one WebSocket message of a GS2 client (protobuf, with Google's parser),
checks the HMAC over `payload.value` exactly as it arrived (constant time), dispatches on
`messageType` (never on the type URL) and returns what the room understands: `Hello` (the
client's first message), or the native `Send`, `SetProfile` and `Bye`. Anything else raises
`Gs2Error`, which says what GS2 `Error` to answer before the connection is closed.

Out: the room queues the same native messages (relay/protocol/messages.py) for every session;
`Recipient` turns those bound for one GS2 client into Containers, one per message: messageType
from GS2's table only, `type.googleapis.com/<Name>` type URLs, the signature, the recipient's
own sequence number from 1 and the milliseconds since the room started. A Container is built
by joining protobuf-encoded pieces (tests check them against the library's serialization): its
body (type, payload, signature) does not depend on the recipient, so `Encoder` makes each body
once per flush and a recipient only appends its sequence number and the lifetime.
"""

from __future__ import annotations

import hashlib
import hmac
from array import array
from dataclasses import dataclass
from typing import Any

from google.protobuf.message import DecodeError

from relay.protocol import messages as m
from relay.protocol.constants import ErrorCode, ProtocolError
from relay.protocol.gs2.message_pb2 import (
    BinaryMessage,
    ByeRequest,
    Container,
    Error,
    HelloRequest,
    HelloResult,
    JoinNotification,
    LeaveNotification,
    Player,
    UpdateProfileNotification,
    UpdateProfileRequest,
)
from relay.protocol.gs2.relay_pb2 import RelayBinaryMessage

HELLO_REQUEST = Container.HELLO_REQUEST
HELLO_RESULT = Container.HELLO_RESULT
BYE_REQUEST = Container.BYE_REQUEST
UPDATE_PROFILE_REQUEST = Container.UPDATE_PROFILE_REQUEST
JOIN_NOTIFICATION = Container.JOIN_NOTIFICATION
LEAVE_NOTIFICATION = Container.LEAVE_NOTIFICATION
UPDATE_PROFILE_NOTIFICATION = Container.UPDATE_PROFILE_NOTIFICATION
BINARY_MESSAGE = Container.BINARY_MESSAGE
ERROR = Container.ERROR

CONTAINER_FIRST_BYTES = frozenset((0x08, 0x12, 0x1A, 0x20, 0x28))
"""The tag of each Container field (1 and 4, 5 varints; 2, 3 length-delimited): a Container's
first byte is one of them, a native HELLO's is its version (1), so the first binary message
of a WebSocket tells the two protocols apart."""

TYPE_URL_PREFIX = "type.googleapis.com/"
_NAMES = {
    HELLO_REQUEST: "HelloRequest",
    BYE_REQUEST: "ByeRequest",
    UPDATE_PROFILE_REQUEST: "UpdateProfileRequest",
    HELLO_RESULT: "HelloResult",
    JOIN_NOTIFICATION: "JoinNotification",
    LEAVE_NOTIFICATION: "LeaveNotification",
    UPDATE_PROFILE_NOTIFICATION: "UpdateProfileNotification",
    BINARY_MESSAGE: "BinaryMessage",
    ERROR: "Error",
}
"""Every type, with the message name its type URL carries (clients before 2021-11 unpacked the
Any by that name)."""
SERVER_TYPES = frozenset(
    (HELLO_RESULT, JOIN_NOTIFICATION, LEAVE_NOTIFICATION, UPDATE_PROFILE_NOTIFICATION, BINARY_MESSAGE, ERROR)
)
"""The only types a relay sends: an unknown type makes GS2's client throw."""

ERRORS = {
    ErrorCode.BAD_REQUEST: (400, "request"),
    ErrorCode.RATE_LIMITED: (429, "rate"),
    ErrorCode.ROOM_FULL: (503, "room"),
    ErrorCode.PAYLOAD_TOO_LARGE: (413, "data"),
    ErrorCode.PROFILE_TOO_LARGE: (413, "profile"),
    ErrorCode.UNAUTHORIZED: (401, "accessToken"),
    ErrorCode.OVERLOADED: (503, "room"),
    ErrorCode.NOT_JOINED: (400, "request"),
}
"""A native ERROR code as GS2 `Error` (statusCode, component): HTTP-style status numbers, the
component naming what was wrong, as GS2's REST errors do (docs/gs2-clients.md)."""


class Gs2Error(ProtocolError):
    """A client's message the relay refuses: `reason` is the drop counter; the client gets
    Error{component, statusCode, message} and its connection is closed."""

    def __init__(self, reason: str, status: int, component: str, text: str) -> None:
        super().__init__(reason, text)
        self.status = status
        self.component = component
        self.text = text


@dataclass(frozen=True, slots=True)
class Hello:
    """A client's HelloRequest: its access token and profile (it names no user id)."""

    access_token: str
    profile: bytes


ClientMessage = Hello | m.Send | m.SetProfile | m.Bye

_compare = hmac.compare_digest
_parse_container = Container.FromString
_parse_binary = BinaryMessage.FromString
_parse_relay = RelayBinaryMessage.FromString


_IPAD = bytes(x ^ 0x36 for x in range(256))
_OPAD = bytes(x ^ 0x5C for x in range(256))


class Signer:
    """A Container's signature: HMAC-SHA256 (RFC 2104) of the payload's value, keyed with the
    room key's ASCII (room_hmac_key). Made from the key's inner and outer hash
    states made once; hmac.digest sets them up on every call, more than half its cost, and the
    relay signs every message it sends and checks every one it gets."""

    __slots__ = ("_inner", "_outer")

    def __init__(self, key: bytes) -> None:
        if len(key) > 64:
            key = hashlib.sha256(key).digest()
        block = key.ljust(64, b"\0")
        self._inner = hashlib.sha256(block.translate(_IPAD))
        self._outer = hashlib.sha256(block.translate(_OPAD))

    def __call__(self, value: bytes) -> bytes:
        inner = self._inner.copy()
        inner.update(value)
        outer = self._outer.copy()
        outer.update(inner.digest())
        return outer.digest()


def room_hmac_key(room_key: str) -> bytes:
    """GS2's client signs with Encoding.ASCII.GetBytes(encryptionKey): getRoom's key, as text
    (the project's keys are base64url, ASCII)."""
    return room_key.encode("ascii")


def decode(data: bytes, signer: Signer, max_size: int) -> ClientMessage:
    """One WebSocket message of a GS2 client; raises Gs2Error (nothing of it may reach a room)."""
    if len(data) > max_size:
        raise Gs2Error("gs2_oversize", 413, "container", f"message over {max_size} bytes")
    try:
        container = _parse_container(data)
        value = container.payload.value
        if not _compare(signer(value), container.signature):
            raise Gs2Error("gs2_bad_signature", 401, "signature", "bad signature")
        kind = container.messageType
        if kind == BINARY_MESSAGE:
            relayed = _parse_relay(_parse_binary(value).data)
            targets = relayed.targetConnectionId
            return m.Send(relayed.data, tuple(targets) if targets else None)
        if kind == UPDATE_PROFILE_REQUEST:
            return m.SetProfile(UpdateProfileRequest.FromString(value).myProfile)
        if kind == HELLO_REQUEST:
            hello = HelloRequest.FromString(value)
            return Hello(hello.accessToken, hello.myProfile)
        if kind == BYE_REQUEST:
            ByeRequest.FromString(value)
            return m.Bye()
    except DecodeError as exc:
        raise Gs2Error("gs2_malformed", 400, "container", f"malformed message: {exc}") from None
    raise Gs2Error("gs2_unexpected", 400, "messageType", f"a client does not send type {kind}")


_SMALL = [bytes((n,)) for n in range(0x80)]


def _varint(n: int) -> bytes:
    """Protobuf's base-128 varint of a non-negative int (for the Containers built by hand); the
    one- to three-byte forms (sequence numbers, lifetimes) without a loop."""
    if n < 0x80:
        return _SMALL[n]
    if n < 0x4000:
        return bytes(((n & 0x7F) | 0x80, n >> 7))
    if n < 0x200000:
        return bytes(((n & 0x7F) | 0x80, ((n >> 7) & 0x7F) | 0x80, n >> 14))
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _type_field(kind: int) -> bytes:
    return b"\x08" + _varint(kind) if kind else b""


_HEADS = {
    kind: (_type_field(kind), b"\x0a" + _varint(len(url)) + url)
    for kind, url in ((k, (TYPE_URL_PREFIX + name).encode("ascii")) for k, name in _NAMES.items())
}
"""Per type: Container field 1, and Any field 1 (the type URL)."""
_MESSAGE_HEAD = b"\x93\x14"  # the first bytes of every native MESSAGE [20, sender, data]


def container_body(signer: Signer, kind: int, value: bytes) -> bytes:
    """Container fields 1 to 3: messageType, payload Any{type URL, value}, signature. Empty
    fields are left out, as protobuf's serializer does (so HELLO_REQUEST has no field 1)."""
    type_field, url_field = _HEADS[kind]
    any_ = url_field + b"\x12" + _varint(len(value)) + value if value else url_field
    return type_field + b"\x12" + _varint(len(any_)) + any_ + b"\x1a\x20" + signer(value)


def relay_value(sender: int, data: bytes) -> bytes:
    """BinaryMessage{data = RelayBinaryMessage{connectionId = sender, data}}: what a relayed
    message's payload carries (no targets: clients ignore them)."""
    inner = (b"\x08" + _varint(sender) if sender else b"") + (
        b"\x12" + _varint(len(data)) + data if data else b""
    )
    return b"\x0a" + _varint(len(inner)) + inner if inner else b""


def hello_value(access_token: str, profile: bytes) -> bytes:
    """A client's HelloRequest (load generators and the project's own GS2 clients)."""
    return HelloRequest(accessToken=access_token, myProfile=profile).SerializeToString()


def send_value(data: bytes, targets: list[int] | tuple[int, ...] = ()) -> bytes:
    """A client's BinaryMessage{RelayBinaryMessage{data, targets}} (empty targets: everyone)."""
    relayed = RelayBinaryMessage(data=data, targetConnectionId=targets).SerializeToString()
    return BinaryMessage(data=relayed).SerializeToString()


def profile_value(profile: bytes) -> bytes:
    return UpdateProfileRequest(myProfile=profile).SerializeToString()


def client_container(signer: Signer, kind: int, value: bytes) -> bytes:
    """A client's whole Container (no sequence number or lifetime: a client sets neither)."""
    return container_body(signer, kind, value)


def parse_server(data: bytes) -> tuple[int, Any]:
    """A relay's Container as a client reads it: (messageType, the payload's message), the
    signature not checked (as today's GS2 client); raises DecodeError."""
    container = _parse_container(data)
    kind = container.messageType
    value = container.payload.value
    if kind == BINARY_MESSAGE:
        return kind, _parse_relay(_parse_binary(value).data)
    parse = _SERVER_PARSERS.get(kind)
    return kind, parse(value) if parse is not None else None


_SERVER_PARSERS = {
    HELLO_RESULT: HelloResult.FromString,
    JOIN_NOTIFICATION: JoinNotification.FromString,
    LEAVE_NOTIFICATION: LeaveNotification.FromString,
    UPDATE_PROFILE_NOTIFICATION: UpdateProfileNotification.FromString,
    ERROR: Error.FromString,
}


def error_value(status: int, component: str, text: str) -> bytes:
    return Error(component=component, statusCode=status, message=text).SerializeToString()


class Encoder:
    """One room's side of every GS2 recipient: the HMAC key, when the room started, and what
    every recipient of one flush shares (a flush hands every recipient the same `now`)."""

    __slots__ = ("_at", "_flush", "controls", "signer", "started")

    def __init__(self, room_key: str, started: float) -> None:
        self.signer = Signer(room_hmac_key(room_key))
        self.started = started
        self._at: float | None = None
        self._flush: tuple[dict[bytes, bytes], dict[int, bytes], bytes] = ({}, {}, b"")
        self.controls: dict[bytes, bytes] = {}
        """This flush's membership news and errors as Container bodies (native item -> fields
        1 to 3)."""

    def begin(self, now: float) -> tuple[dict[bytes, bytes], dict[int, bytes], bytes]:
        """This flush's relayed messages' bodies (native MESSAGE -> Container fields 1 to 3), its
        Container tails (sequence number -> fields 4 and 5: the recipients of a flush number theirs
        from nearly the same numbers) and field 5, lifeTimeMilliSeconds since the room started.
        Made afresh for each `now`, so nothing outlives its flush."""
        if now != self._at:
            self._at = now
            if self.controls:
                self.controls = {}
            ms = int((now - self.started) * 1000) & 0xFFFFFFFF
            self._flush = ({}, {}, b"\x28" + _varint(ms) if ms else b"")
        return self._flush

    @property
    def lifetime(self) -> bytes:
        """Container field 5 of this flush."""
        return self._flush[2]

    def body(self, kind: int, value: bytes) -> bytes:
        return container_body(self.signer, kind, value)

    def message_body(self, item: bytes) -> bytes:
        """A native MESSAGE as the body of a BINARY_MESSAGE Container."""
        sender, data = m.decode_message(item)
        return container_body(self.signer, BINARY_MESSAGE, relay_value(sender, data))


class Recipient:
    """One GS2 client's side of the room's output: its sequence numbers, and the players it knows
    (connection id -> user id, profile), which a LeaveNotification names and native LEAVE does
    not. `user_id` and `profile` are its own (WELCOME carries neither).

    The last sequence number lives in `seq_cell`, a one-item `array("I")`, so that the relay's
    C lane (relay/server/_lane.c) numbers the Containers it builds for this client in place,
    through the array's buffer: as an attribute it cost a cold object and an int made per flush,
    3% of a GS2 relay's CPU in the deployed shape."""

    __slots__ = ("_parts", "encoder", "players", "profile", "seq_cell", "user_id", "welcomed")

    def __init__(self, encoder: Encoder, user_id: str, profile: bytes) -> None:
        self.encoder = encoder
        self.user_id = user_id
        self.profile = profile
        self.seq_cell = array("I", (0,))
        self.players: dict[int, tuple[str, bytes]] = {}
        self.welcomed = False
        self._parts: dict[int, m.Welcome] = {}

    @property
    def seq(self) -> int:
        """The sequence number of the last Container made for this client (0: none yet)."""
        return self.seq_cell[0]

    @seq.setter
    def seq(self, value: int) -> None:
        self.seq_cell[0] = value

    def containers(self, items: list[bytes], now: float) -> list[bytes]:
        """The Containers for the room's native messages `items`, in order (those GS2 has no
        message for, CLOSING and PONG, leave none)."""
        encoder = self.encoder
        messages, tails, lifetime = encoder.begin(now)
        out: list[bytes] = []
        append = out.append
        seq = self.seq
        for item in items:
            body = messages.get(item)  # the hot path: a relayed message, its body made this flush
            if body is None:
                if item[:2] == _MESSAGE_HEAD:
                    body = messages[item] = encoder.message_body(item)
                else:
                    body = self._control(item, encoder.controls)
                    if body is None:
                        continue
            seq = seq + 1 if seq < 0xFFFFFFFF else 1
            tail = tails.get(seq)
            if tail is None:  # fields 4 and 5
                tail = tails[seq] = b"\x20" + _varint(seq) + lifetime
            append(body + tail)
        self.seq = seq
        return out

    def container(self, kind: int, value: bytes, now: float) -> bytes:
        """One Container of the relay's own (an Error for a refused message), numbered in turn."""
        encoder = self.encoder
        encoder.begin(now)
        seq = self.seq
        self.seq = seq = seq + 1 if seq < 0xFFFFFFFF else 1
        return encoder.body(kind, value) + b"\x20" + _varint(seq) + encoder.lifetime

    def _player(self, cid: int) -> Player:
        user_id, profile = self.players.get(cid, ("", b""))
        return Player(connectionId=cid, userId=user_id, profile=profile)

    def _control(self, item: bytes, bodies: dict[bytes, bytes]) -> bytes | None:
        """Membership news and errors; the player table follows them for every recipient, and the
        body (the same for each of them) is made once per flush."""
        msg = m.decode_own(item)
        if isinstance(msg, m.Welcome):
            return self._welcome(msg)
        if isinstance(msg, m.MemberJoined):
            self.players[msg.connection_id] = (msg.user_id, msg.profile)
        elif isinstance(msg, m.MemberProfile):
            user_id = self.players.get(msg.connection_id, ("", b""))[0]
            self.players[msg.connection_id] = (user_id, msg.profile)
        elif not isinstance(msg, m.MemberLeft | m.Error):
            return None  # CLOSING (the close frame says why), PONG, PING: nothing in GS2
        body = bodies.get(item)
        if body is None:
            if isinstance(msg, m.MemberJoined):
                kind, value = JOIN_NOTIFICATION, JoinNotification(joinPlayer=self._player(msg.connection_id))
            elif isinstance(msg, m.MemberProfile):
                player = self._player(msg.connection_id)
                kind, value = UPDATE_PROFILE_NOTIFICATION, UpdateProfileNotification(updatePlayer=player)
            elif isinstance(msg, m.MemberLeft):
                kind, value = (
                    LEAVE_NOTIFICATION,
                    LeaveNotification(leavePlayer=self._player(msg.connection_id)),
                )
            else:
                status, component = ERRORS.get(msg.code, (400, "request"))
                kind, value = ERROR, Error(component=component, statusCode=status, message=msg.text)
            body = bodies[item] = self.encoder.body(kind, value.SerializeToString())
        if isinstance(msg, m.MemberLeft):
            self.players.pop(msg.connection_id, None)
        return body

    def _welcome(self, part: m.Welcome) -> bytes | None:
        """The first snapshot, whole, as HelloResult; later ones (a native client's SYNC) have no
        GS2 message."""
        if self.welcomed:
            return None
        self._parts[part.part] = part
        if len(self._parts) < max(1, part.parts):
            return None
        self.welcomed = True
        players = [p for w in self._parts.values() for p in w.members]
        self._parts = {}
        for p in players:
            self.players[p.connection_id] = (p.user_id, p.profile)
        result = HelloResult(
            myProfile=Player(connectionId=part.connection_id, userId=self.user_id, profile=self.profile),
            players=[
                Player(connectionId=p.connection_id, userId=p.user_id, profile=p.profile) for p in players
            ],
        )
        return self.encoder.body(HELLO_RESULT, result.SerializeToString())
