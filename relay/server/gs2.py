"""A GS2 game client in the room (docs/gs2-clients.md), sans-I/O like the room itself.

GS2's Unity SDK opens a plain WebSocket to the relay's port and speaks protobuf Containers
(relay/protocol/gs2/wire.py). The WebSocket adapter (relay/server/links.py) tells such a client
from a native one by its first binary message and hands every binary message of it to a
`Gs2Peer`, which:

- checks each message (size, protobuf, the HMAC with the room key) and answers anything wrong
  with GS2's `Error` and a close: nothing of it reaches the room;
- admits the client on its HelloRequest: the user its access token names (Room.user_of), a
  session without keys (Room.open_session), then the room's own JOIN, so that limits, rate
  limits, keepalive and lifetime are those of every member;
- hands the room the client's messages as native SEND, PROFILE and BYE (Room.handle_messages);
- is the session's link (transport.MessageLink): the native messages the room queues for it
  become Containers (wire.Recipient), written to its connection in one write per flush;
- ends its member at once when the connection ends (GS2 clients cannot resume).

The connection it writes to is a `Sink`: links.py's WebSocket link, or a test's memory.
"""

from __future__ import annotations

import logging
from typing import Protocol

from relay.protocol import messages as m
from relay.protocol.constants import LeaveReason
from relay.protocol.gs2 import wire
from relay.protocol.tokens import TokenError
from relay.server.room import Room
from relay.server.sessions import Session
from relay.server.transport import GS2, Disconnect

log = logging.getLogger("relay.server")

SNAPSHOT_LIMIT = 1 << 22
"""The room's WELCOME to a GS2 client is one part (it becomes one HelloResult): 32 members with
1 KiB profiles are about 40 KiB."""
MESSAGE_OVERHEAD = 1024
"""Bytes a GS2 message may have beyond its data or profile (Container, Any, signature, target
ids); a larger one is refused whole."""


class Sink(Protocol):
    """The connection a GS2 peer writes to (one binary WebSocket message per Container)."""

    def send_many(self, payloads: list[bytes]) -> int:
        """Writes each payload as one binary message, in one write; the bytes written (0: closed)."""
        ...

    def close(self, why: Disconnect, text: str) -> None: ...

    @property
    def buffered(self) -> int: ...


def max_message(room: Room) -> int:
    """The largest message a GS2 client of `room` may send: its data or profile limit, or an
    access token of 4 KiB, with the Container's overhead."""
    config = room.config
    return max(config.max_payload_ws, config.max_profile, 4096) + MESSAGE_OVERHEAD


class Gs2Peer:
    """One GS2 client's connection: its input checked and handed to the room, and the room's
    link for its session."""

    kind = GS2
    max_plaintext = SNAPSHOT_LIMIT

    def __init__(self, room: Room, encoder: wire.Encoder, sink: Sink) -> None:
        self.room = room
        self.sink = sink
        self.signer = encoder.signer
        self.max_size = max_message(room)
        self.recipient = wire.Recipient(encoder, "", b"")
        self.session: Session | None = None
        self.over = False

    # ---- input -------------------------------------------------------------------------------

    def receive(self, data: bytes, now: float) -> None:
        """One binary WebSocket message of the client."""
        self.receive_many([data], now)

    def receive_many(self, messages: list[bytes], now: float) -> None:
        """Binary WebSocket messages of the client read together: handed to the room together
        (as a native packet's are), up to the first one refused."""
        c = self.room.counters
        c.packets_in[GS2] += len(messages)
        c.bytes_in[GS2] += sum(map(len, messages))
        session = self.session
        if session is not None and now < session.muted_until:  # no message token: as room._data
            c.drops["rate_limited_unread"] += len(messages)
            return
        decode, signer, max_size = wire.decode, self.signer, self.max_size
        msgs: list[m.ClientMessage] = []
        for data in messages:
            if self.over:
                return
            try:
                msg = decode(data, signer, max_size)
            except wire.Gs2Error as exc:
                self._hand_over(msgs, now)
                self.refuse(exc, now)
                return
            if type(msg) is not wire.Hello:
                if self.session is None:
                    error = wire.Gs2Error("gs2_unexpected", 400, "messageType", "HelloRequest first")
                    self.refuse(error, now)
                    return
                msgs.append(msg)  # type: ignore[arg-type]
            elif self.session is None:
                self._hello(msg, now)
            else:
                self._hand_over(msgs, now)
                self.refuse(wire.Gs2Error("gs2_unexpected", 400, "messageType", "a second HelloRequest"), now)
                return
        self._hand_over(msgs, now)

    def _hand_over(self, msgs: list[m.ClientMessage], now: float) -> None:
        session = self.session
        if msgs and session is not None and not self.over:
            self.room.handle_messages(session, msgs, now)

    def _hello(self, hello: wire.Hello, now: float) -> None:
        room = self.room
        try:
            user_id = room.user_of(hello.access_token, now)
        except TokenError as exc:
            self.refuse(wire.Gs2Error("gs2_bad_token", 401, "accessToken", f"access token: {exc}"), now)
            return
        session = room.open_session(self, now)
        if session is None:
            self.refuse(wire.Gs2Error("gs2_room_closed", 503, "room", "the room has closed"), now)
            return
        self.session = session
        self.recipient.user_id = user_id
        self.recipient.profile = hello.profile
        # the room's JOIN: verified again there as any JOIN's token is, limits, WELCOME
        room.handle_messages(session, [m.Join(user_id, hello.profile, hello.access_token)], now)
        if session.member is not None:
            log.info("gs2 client %s joined as %d", user_id, session.member.cid)

    def refuse(self, error: wire.Gs2Error, now: float) -> None:
        """GS2 Error, then the connection closes; a member leaves at once (counted by reason)."""
        self.room.counters.drops[error.reason] += 1
        value = wire.error_value(error.status, error.component, error.text)
        self.sink.send_many([self.recipient.container(wire.ERROR, value, now)])
        session = self.session
        if session is not None:
            self.room.end_session(session, now, LeaveReason.KICKED, Disconnect.VIOLATION, error.text)
        else:
            self.close(Disconnect.VIOLATION, error.text)

    def pong(self, now: float) -> None:
        """The client answered a WebSocket ping: GS2 clients send nothing else while idle."""
        if self.session is not None:
            self.room.alive(self.session, now)

    def lost(self, now: float, clean: bool) -> None:
        """The connection ended (`clean`: with the client's close frame): its member leaves now,
        as one that said BYE when the client closed, else as disconnected."""
        self.over = True
        session, self.session = self.session, None
        if session is not None:
            self.room.end_session(session, now, LeaveReason.LEFT if clean else LeaveReason.DISCONNECTED, None)

    # ---- the session's link (transport.MessageLink) -------------------------------------------

    def write(self, items: list[bytes], now: float) -> tuple[int, int]:
        containers = self.recipient.containers(items, now)
        if not containers:
            return 0, 0
        nbytes = self.sink.send_many(containers)
        return (len(containers), nbytes) if nbytes else (0, 0)

    def send(self, packet: bytes) -> bool:
        """One binary message as it is (the room sends a keyless session no packet of its own)."""
        return self.sink.send_many([packet]) > 0

    def close(self, why: Disconnect, text: str) -> None:
        """The room let the session go (or the peer refused the client): the connection closes."""
        self.over = True
        self.session = None
        self.sink.close(why, text)

    @property
    def buffered(self) -> int:
        return self.sink.buffered
