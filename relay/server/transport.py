"""What the room knows of transports: their kinds, why it lets one go, and the writer interface
(`Link`) through which its packets leave.

The room hands a Link sealed packets and never touches a socket. A WebSocket link is the
transport adapter's (relay/server/links.py). A UDP link is a `UdpPath` (relay/server/paths.py):
the room owns the path's state (address, validation, byte budget) and writes through the
datagram writer the UDP adapter gave it. A GS2 game client's link (relay/server/gs2.py) is a
`MessageLink`: its session has no keys, and the room hands it the encoded messages themselves,
which it turns into its own wire's messages.
"""

from __future__ import annotations

from enum import Enum
from typing import Protocol

from relay.protocol.constants import RESUMED_ELSEWHERE

UDP, WS, GS2 = 0, 1, 2
"""Transport kinds, also the index into the per-transport counters (relay/server/metrics.py).
GS2: a GS2 game client on the WebSocket port (docs/gs2-clients.md)."""


class Disconnect(Enum):
    """Why the room lets a session's transport go. Only a WebSocket has a connection to close;
    relay/server/links.py maps each to its close code (docs/protocol.md section 10)."""

    BYE = "bye"  # the member said BYE
    RESUMED_ELSEWHERE = RESUMED_ELSEWHERE  # its seat moved to a newer session
    ROOM_CLOSED = "room closed"  # idle, lifetime, deleted: CLOSING was sent
    SHUTDOWN = "shutdown"  # the relay is stopping: CLOSING was sent
    TIMEOUT = "timeout"  # keepalive timeout, or no JOIN within the handshake timeout
    RETRY_LATER = "retry later"  # JOIN refused for now: room full, not accepting joins
    VIOLATION = "violation"  # JOIN refused for good, kicked, a reader that cannot keep up


class Link(Protocol):
    """How packets reach one peer."""

    kind: int  # UDP, WS or GS2
    max_plaintext: int  # the largest DATA plaintext this transport carries

    def send(self, packet: bytes) -> bool:
        """Hands one sealed packet on; False when it could not be (closed, over a budget)."""
        ...

    def close(self, why: Disconnect, text: str) -> None:
        """The session is over (a WebSocket closes; UDP has nothing to close)."""
        ...

    @property
    def buffered(self) -> int:
        """Bytes written but not yet taken by the peer (a WebSocket's send buffer; UDP 0)."""
        ...


class MessageLink(Link, Protocol):
    """The link of a session without keys (a GS2 client's): the room neither packs nor seals
    for it, it hands over each flush's messages as they are."""

    def write(self, items: list[bytes], now: float) -> tuple[int, int]:
        """The room's encoded messages for this peer, at the flush of `now`: (packets, bytes)
        written; (0, 0) when nothing could be."""
        ...
