"""Messages (docs/protocol.md section 5): msgpack arrays, several per DATA plaintext.

Each message type is a small frozen dataclass with `encode()`; `decode_client` and
`decode_relay` parse a whole plaintext and raise ProtocolError if any message is malformed,
so a receiver drops the packet whole. Unknown type codes are skipped, extra elements ignored.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import msgpack

from relay.protocol.constants import (
    MAX_USER_ID_BYTES,
    RESUME_TOKEN_SIZE,
    UDP_MAX_PLAINTEXT,
    ClientMsg,
    ProtocolError,
    RelayMsg,
)

_packb = msgpack.Packer(use_bin_type=True, autoreset=True).pack
_LIMITS = {
    "max_buffer_size": 1 << 17,
    "max_str_len": 1 << 16,
    "max_bin_len": 1 << 17,
    "max_array_len": 4096,
    "max_map_len": 64,
}


class _StreamDecoder:
    """One reusable msgpack Unpacker: creating one with limits costs more than decoding a packet.

    A plaintext is whole objects only if they end exactly at its last byte: `tell()` (bytes
    consumed so far) says when they do, and a truncated object raises OutOfData. Iterating the
    unpacker instead ends every packet with a StopIteration, whose traceback msgpack's Cython
    code builds at about a microsecond per packet. Any error replaces the unpacker, so nothing
    a bad packet left pending leaks into the next one.
    """

    __slots__ = ("unpacker",)

    def __init__(self) -> None:
        self.unpacker = msgpack.Unpacker(raw=False, use_list=True, strict_map_key=True, **_LIMITS)

    def decode(self, plaintext: bytes) -> list[Any]:
        if not plaintext:
            raise ProtocolError("malformed", "empty")
        unpacker = self.unpacker
        tell = unpacker.tell
        end = tell() + len(plaintext)
        try:
            unpacker.feed(plaintext)
            unpack = unpacker.unpack
            items = [unpack()]
            while tell() < end:
                items.append(unpack())
        except Exception as exc:  # msgpack raises several types for corrupt input
            self.__init__()  # type: ignore[misc]
            raise ProtocolError("malformed", f"msgpack: {exc.__class__.__name__}") from None
        return items


_unpack_all = _StreamDecoder().decode


def _uint(value: Any) -> int:
    if type(value) is not int or value < 0:
        raise ProtocolError("malformed", "expected uint")
    return value


def _bin(value: Any) -> bytes:
    if type(value) is not bytes:
        raise ProtocolError("malformed", "expected bin")
    return value


def _str(value: Any) -> str:
    if type(value) is not str:
        raise ProtocolError("malformed", "expected str")
    return value


def _bool(value: Any) -> bool:
    if type(value) is not bool:
        raise ProtocolError("malformed", "expected bool")
    return value


def _opt(check: Any, value: Any) -> Any:
    return None if value is None else check(value)


def _uint_list(value: Any) -> tuple[int, ...]:
    if type(value) is not list:
        raise ProtocolError("malformed", "expected array")
    return tuple(_uint(v) for v in value)


def _user_id(value: Any) -> str:
    user_id = _str(value)
    if not user_id or len(user_id.encode()) > MAX_USER_ID_BYTES:
        raise ProtocolError("bad_user_id", f"user_id must be 1 to {MAX_USER_ID_BYTES} bytes of UTF-8")
    return user_id


# ---- client to relay ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Join:
    user_id: str
    profile: bytes = b""
    access_token: str | None = None
    resume_token: bytes | None = None

    def encode(self) -> bytes:
        return _packb([ClientMsg.JOIN, self.user_id, self.profile, self.access_token, self.resume_token])


@dataclass(slots=True)
class Send:
    """Not frozen: the relay builds one per received message and frozen init costs ~3x."""

    data: bytes
    targets: tuple[int, ...] | None = None

    def encode(self) -> bytes:
        return _packb([ClientMsg.SEND, self.data, None if self.targets is None else list(self.targets)])


@dataclass(frozen=True, slots=True)
class SetProfile:
    profile: bytes

    def encode(self) -> bytes:
        return _packb([ClientMsg.PROFILE, self.profile])


@dataclass(frozen=True, slots=True)
class Ping:
    ping_id: int
    client_time_us: int

    def encode(self) -> bytes:
        return _packb([ClientMsg.PING, self.ping_id, self.client_time_us])


@dataclass(frozen=True, slots=True)
class Bye:
    def encode(self) -> bytes:
        return _packb([ClientMsg.BYE])


@dataclass(frozen=True, slots=True)
class PathPong:
    challenge: int

    def encode(self) -> bytes:
        return _packb([ClientMsg.PONG, self.challenge])


@dataclass(frozen=True, slots=True)
class Sync:
    def encode(self) -> bytes:
        return _packb([ClientMsg.SYNC])


ClientMessage = Join | Send | SetProfile | Ping | Bye | PathPong | Sync

_SEND = int(ClientMsg.SEND)


def encode_send(data: bytes, targets: Iterable[int] | None = None) -> bytes:
    """SEND without building a dataclass (same bytes as Send.encode): the client's hot path."""
    return _packb([_SEND, data, None if targets is None else list(targets)])


_C_SEND = int(ClientMsg.SEND)


def _client_message(item: Any) -> ClientMessage | None:
    if type(item) is not list or not item:
        raise ProtocolError("malformed", "not an array")
    code = item[0]
    if type(code) is not int:  # a float or bool would compare equal to a code
        raise ProtocolError("malformed", "type code")
    n = len(item)
    if code == _C_SEND and n >= 3:  # the hot path, checked inline
        data = item[1]
        targets = item[2]
        if type(data) is not bytes:
            raise ProtocolError("malformed", "expected bin")
        return Send(data, None if targets is None or targets == [] else _uint_list(targets))
    try:
        if code == ClientMsg.PING and n >= 3:
            return Ping(_uint(item[1]), _uint(item[2]))
        if code == ClientMsg.JOIN and n >= 5:
            return Join(_user_id(item[1]), _bin(item[2]), _opt(_str, item[3]), _opt(_bin, item[4]))
        if code == ClientMsg.PROFILE and n >= 2:
            return SetProfile(_bin(item[1]))
        if code == ClientMsg.BYE:
            return Bye()
        if code == ClientMsg.PONG and n >= 2:
            return PathPong(_uint(item[1]))
        if code == ClientMsg.SYNC:
            return Sync()
    except TypeError:
        raise ProtocolError("malformed", "field type") from None
    if code in ClientMsg._value2member_map_:
        raise ProtocolError("malformed", f"type {code} too short")
    return None  # unknown type code: ignored


def decode_client(plaintext: bytes) -> list[ClientMessage]:
    return [m for m in map(_client_message, _unpack_all(plaintext)) if m is not None]


# ---- relay to client ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Limits:
    max_players: int = 32
    max_payload: int = 1100
    max_profile: int = 1024
    messages_per_second: int = 100
    bytes_per_second: int = 65536
    keepalive_timeout_ms: int = 10_000
    resume_grace_ms: int = 15_000

    def to_wire(self) -> list[int]:
        return [
            self.max_players,
            self.max_payload,
            self.max_profile,
            self.messages_per_second,
            self.bytes_per_second,
            self.keepalive_timeout_ms,
            self.resume_grace_ms,
        ]

    @classmethod
    def from_wire(cls, value: Any) -> Limits:
        if type(value) is not list or len(value) < 7:
            raise ProtocolError("malformed", "limits")
        return cls(*(_uint(v) for v in value[:7]))


@dataclass(frozen=True, slots=True)
class Member:
    connection_id: int
    user_id: str
    profile: bytes

    def to_wire(self) -> list[Any]:
        return [self.connection_id, self.user_id, self.profile]

    @classmethod
    def from_wire(cls, value: Any) -> Member:
        if type(value) is not list or len(value) < 3:
            raise ProtocolError("malformed", "member")
        return cls(_uint(value[0]), _user_id(value[1]), _bin(value[2]))


@dataclass(frozen=True, slots=True)
class Welcome:
    """One part of a member snapshot. Every part of one snapshot carries the same resume token;
    `part` (from 0) and `parts` say which part this is and how many there are (a relay of an
    earlier revision sends neither: `parts` 0, and `more` alone marks all but the last)."""

    connection_id: int
    resume_token: bytes
    limits: Limits
    members: tuple[Member, ...] = ()
    more: bool = False
    resumed: bool = False
    part: int = 0
    parts: int = 1

    def encode(self) -> bytes:
        return _packb(
            [
                RelayMsg.WELCOME,
                self.connection_id,
                self.resume_token,
                self.limits.to_wire(),
                [m.to_wire() for m in self.members],
                self.more,
                self.resumed,
                self.part,
                self.parts,
            ]
        )


@dataclass(frozen=True, slots=True)
class MemberJoined:
    connection_id: int
    user_id: str
    profile: bytes

    def encode(self) -> bytes:
        return _packb([RelayMsg.JOIN, self.connection_id, self.user_id, self.profile])


@dataclass(frozen=True, slots=True)
class MemberLeft:
    connection_id: int
    reason: int

    def encode(self) -> bytes:
        return _packb([RelayMsg.LEAVE, self.connection_id, self.reason])


@dataclass(frozen=True, slots=True)
class MemberProfile:
    connection_id: int
    profile: bytes

    def encode(self) -> bytes:
        return _packb([RelayMsg.PROFILE, self.connection_id, self.profile])


@dataclass(slots=True)
class Message:
    """Not frozen: clients build one per received message and frozen init costs ~3x."""

    sender: int
    data: bytes

    def encode(self) -> bytes:
        return _packb([RelayMsg.MESSAGE, self.sender, self.data])


@dataclass(frozen=True, slots=True)
class Pong:
    ping_id: int
    client_time_us: int

    def encode(self) -> bytes:
        return _packb([RelayMsg.PONG, self.ping_id, self.client_time_us])


@dataclass(frozen=True, slots=True)
class Error:
    code: int
    text: str = ""

    def encode(self) -> bytes:
        return _packb([RelayMsg.ERROR, self.code, self.text])


@dataclass(frozen=True, slots=True)
class Closing:
    reason: int
    text: str = ""

    def encode(self) -> bytes:
        return _packb([RelayMsg.CLOSING, self.reason, self.text])


@dataclass(frozen=True, slots=True)
class PathPing:
    challenge: int

    def encode(self) -> bytes:
        return _packb([RelayMsg.PING, self.challenge])


RelayMessage = (
    Welcome | MemberJoined | MemberLeft | MemberProfile | Message | Pong | Error | Closing | PathPing
)


def message_prefix(sender: int) -> bytes:
    """The bytes every MESSAGE from `sender` starts with: array of 3, type 20, the sender id."""
    return b"\x93\x14" + _packb(sender)


def encode_message(sender: int, data: bytes, prefix: bytes | None = None) -> bytes:
    """MESSAGE without building a dataclass or a list: the relay's fan-out hot path.

    Same bytes as Message(sender, data).encode() (msgpack bin 8/16/32 chosen by length).
    """
    n = len(data)
    if prefix is None:
        prefix = message_prefix(sender)
    if n < 256:
        return prefix + bytes((0xC4, n)) + data
    if n < 65536:
        return prefix + b"\xc5" + n.to_bytes(2, "big") + data
    return prefix + b"\xc6" + n.to_bytes(4, "big") + data


def decode_message(item: bytes) -> tuple[int, bytes]:
    """(sender, data) of a MESSAGE the relay itself encoded (encode_message): for a relay that
    re-encodes its own messages for another wire (GS2), with none of decode_relay's checks,
    which cost twenty times this."""
    _, sender, data = msgpack.unpackb(item)
    return sender, data


def decode_own(item: bytes) -> RelayMessage | None:
    """One message the relay itself encoded, for a relay that re-encodes its membership news for
    another wire (GS2): without a client's size limits, which a room's own snapshot may pass (a
    GS2 client's WELCOME is one part of up to 4 MiB)."""
    return _relay_message(msgpack.unpackb(item, raw=False))


def _relay_message(item: Any) -> RelayMessage | None:
    if type(item) is not list or not item:
        raise ProtocolError("malformed", "not an array")
    code = item[0]
    if type(code) is not int:  # a float or bool would compare equal to a code
        raise ProtocolError("malformed", "type code")
    n = len(item)
    if code == RelayMsg.MESSAGE and n >= 3:
        return Message(_uint(item[1]), _bin(item[2]))
    if code == RelayMsg.WELCOME and n >= 7:
        members = item[4]
        if type(members) is not list:
            raise ProtocolError("malformed", "members")
        part, parts = (_uint(item[7]), _uint(item[8])) if n >= 9 else (0, 0)
        if n >= 9 and not part < parts:
            raise ProtocolError("malformed", "welcome part")
        return Welcome(
            _uint(item[1]),
            _bin(item[2]),
            Limits.from_wire(item[3]),
            tuple(Member.from_wire(m) for m in members),
            _bool(item[5]),
            _bool(item[6]),
            part,
            parts,
        )
    if code == RelayMsg.JOIN and n >= 4:
        return MemberJoined(_uint(item[1]), _user_id(item[2]), _bin(item[3]))
    if code == RelayMsg.LEAVE and n >= 3:
        return MemberLeft(_uint(item[1]), _uint(item[2]))
    if code == RelayMsg.PROFILE and n >= 3:
        return MemberProfile(_uint(item[1]), _bin(item[2]))
    if code == RelayMsg.PONG and n >= 3:
        return Pong(_uint(item[1]), _uint(item[2]))
    if code == RelayMsg.ERROR and n >= 3:
        return Error(_uint(item[1]), _str(item[2]))
    if code == RelayMsg.CLOSING and n >= 3:
        return Closing(_uint(item[1]), _str(item[2]))
    if code == RelayMsg.PING and n >= 2:
        return PathPing(_uint(item[1]))
    if code in RelayMsg._value2member_map_:
        raise ProtocolError("malformed", f"type {code} too short")
    return None


def decode_relay(plaintext: bytes) -> list[RelayMessage]:
    return [m for m in map(_relay_message, _unpack_all(plaintext)) if m is not None]


def _welcome_entry_bytes() -> int:
    most = 0xFFFFFFFF
    one = Member(most, "", b"")
    empty = Welcome(most, bytes(RESUME_TOKEN_SIZE), Limits(*[most] * 7), (one,), True, True, most, most)
    return UDP_MAX_PLAINTEXT - len(empty.encode()) - 2  # str 8 and bin 16 headers: 2 bytes more


WELCOME_ENTRY_BYTES = _welcome_entry_bytes()
"""The most a member's user id (UTF-8) and profile may hold together: one member's WELCOME part
then fits a UDP datagram at the largest field sizes, so every member can be welcomed over UDP
(a WELCOME part holds one member or more; a larger one could reach no UDP client)."""


def fits_welcome_entry(user_id: str, profile: bytes) -> bool:
    """Whether a member with this user id and profile stays within WELCOME_ENTRY_BYTES: the one
    test the relay holds JOIN and PROFILE to, and a client holds itself to before sending."""
    return len(profile) <= WELCOME_ENTRY_BYTES - len(user_id.encode())


@dataclass(slots=True)
class WelcomeBuilder:
    """Splits a member snapshot into WELCOME parts that each fit `max_plaintext` bytes."""

    connection_id: int
    resume_token: bytes
    limits: Limits
    resumed: bool = False
    members: list[Member] = field(default_factory=list)

    def parts(self, max_plaintext: int) -> list[bytes]:
        """The encoded parts, numbered: members go into a part while it still fits (measured
        with the largest part number and count this snapshot could need)."""
        chunks: list[list[Member]] = []
        chunk: list[Member] = []
        most = len(self.members) + 1
        for member in self.members:
            trial = Welcome(
                self.connection_id,
                self.resume_token,
                self.limits,
                (*chunk, member),
                True,
                self.resumed,
                most,
                most,
            )
            if chunk and len(trial.encode()) > max_plaintext:
                chunks.append(chunk)
                chunk = [member]
            else:
                chunk.append(member)
        chunks.append(chunk)
        count = len(chunks)
        return [
            Welcome(
                self.connection_id,
                self.resume_token,
                self.limits,
                tuple(members),
                index < count - 1,
                self.resumed,
                index,
                count,
            ).encode()
            for index, members in enumerate(chunks)
        ]
