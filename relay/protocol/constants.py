"""Numbers fixed by docs/protocol.md; change them only with the document and tests/vectors/."""

from __future__ import annotations

import struct
from enum import IntEnum

PROTOCOL_VERSION = 1
HEADER = struct.Struct("!BBHIQ")
HEADER_SIZE = HEADER.size  # 16
KEY_SIZE = 32
PUBLIC_KEY_SIZE = 32
TAG_SIZE = 16
HELLO_MIN_SIZE = HEADER_SIZE + PUBLIC_KEY_SIZE + TAG_SIZE  # 64
ACCEPT_SIZE = HEADER_SIZE + PUBLIC_KEY_SIZE + TAG_SIZE  # 64
DATA_MIN_SIZE = HEADER_SIZE + TAG_SIZE  # 32
UDP_MAX_PACKET = 1200
UDP_MAX_PLAINTEXT = UDP_MAX_PACKET - HEADER_SIZE - TAG_SIZE  # 1168
UDP_HELLO_PAD_TO = 1200
WS_MAX_PACKET = 65536
WS_MAX_PLAINTEXT = WS_MAX_PACKET - HEADER_SIZE - TAG_SIZE
REPLAY_WINDOW = 1024
RESUME_TOKEN_SIZE = 16
MAX_USER_ID_BYTES = 128
RESUMED_ELSEWHERE = "resumed elsewhere"
"""A WebSocket close reason (code 1000): the member's seat moved to a newer session; its client
does not take it back (docs/protocol.md 7.2)."""

LABEL_PSK = b"gs2relay/1 psk"
LABEL_HELLO = b"gs2relay/1 hello"
LABEL_SESSION = b"gs2relay/1 session"


class PacketType(IntEnum):
    HELLO = 1
    ACCEPT = 2
    DATA = 3


class ClientMsg(IntEnum):
    """Message type codes a client sends (section 5.1)."""

    JOIN = 1
    SEND = 2
    PROFILE = 3
    PING = 4
    BYE = 5
    PONG = 6
    SYNC = 7


class RelayMsg(IntEnum):
    """Message type codes the relay sends (section 5.2)."""

    WELCOME = 16
    JOIN = 17
    LEAVE = 18
    PROFILE = 19
    MESSAGE = 20
    PONG = 21
    ERROR = 22
    CLOSING = 23
    PING = 24


class LeaveReason(IntEnum):
    LEFT = 1
    TIMEOUT = 2
    KICKED = 3
    DISCONNECTED = 4


class CloseReason(IntEnum):
    DELETED = 1
    IDLE = 2
    LIFETIME = 3
    KICKED = 4
    SHUTDOWN = 5
    CAP_EXCEEDED = 6


class ErrorCode(IntEnum):
    BAD_REQUEST = 1
    RATE_LIMITED = 2
    ROOM_FULL = 3
    PAYLOAD_TOO_LARGE = 4
    PROFILE_TOO_LARGE = 5
    UNAUTHORIZED = 6
    OVERLOADED = 7
    NOT_JOINED = 8


class ProtocolError(ValueError):
    """Input that the protocol says to drop. `reason` is a short metric label."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail
