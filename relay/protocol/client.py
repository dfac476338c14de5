"""The client side of docs/protocol.md as a sans-I/O state machine (the h11 / aioquic style).

`ClientConnection` owns no socket and no clock: the caller feeds it received packets and the
current time, and takes back packets to send, events and the next timer deadline. The asyncio
adapters in `relay.client` (and the load-test bots) drive it; tests drive it against the relay's
own room in memory (tests/protocol/harness.py), which is sans-I/O too. Malformed or
unauthenticated input is dropped and counted in `stats.dropped`, never raised.

Life of a connection:

    IDLE --initiate--> HANDSHAKE --ACCEPT--> JOINING --last WELCOME part--> JOINED
      JOINED --silence / connection_lost()--> LOST --reconnect()--> HANDSHAKE ...
      any --bye() / CLOSING / refused JOIN--> CLOSED

Reliability over UDP (section 6): the identical HELLO is resent every `hello_interval` until an
ACCEPT arrives, JOIN (new counter each time) every `join_interval` until the WELCOME is complete,
and a PING goes out every `ping_interval` (capped at a quarter of the relay's keepalive timeout),
which both keeps the seat and measures the RTT. Over WebSocket nothing is retransmitted.

A client that is sending data keeps its seat with that data; its PING, which then only measures
the RTT, rides in its next DATA packet once due (`datagrams_to_send(now)`), waiting up to a
quarter interval more for one, so that it costs the relay no wake-up of its own.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import Enum

from relay.protocol.constants import (
    UDP_HELLO_PAD_TO,
    UDP_MAX_PLAINTEXT,
    WS_MAX_PLAINTEXT,
    PacketType,
    ProtocolError,
)
from relay.protocol.keys import decode_room_key, derive_psk
from relay.protocol.messages import (
    WELCOME_ENTRY_BYTES,
    Bye,
    Closing,
    Error,
    Join,
    Limits,
    Member,
    MemberJoined,
    MemberLeft,
    MemberProfile,
    Message,
    PathPing,
    PathPong,
    Ping,
    Pong,
    RelayMessage,
    SetProfile,
    Sync,
    Welcome,
    decode_relay,
    encode_send,
    fits_welcome_entry,
)
from relay.protocol.packets import ClientHello, Opener, Sealer, parse_header

__all__ = [
    "LEAVE_UNSEEN",
    "ClientConfig",
    "ClientConnection",
    "ClientEvent",
    "ClientState",
    "ClientStats",
    "ClosingEvent",
    "ConnectionClosedError",
    "ConnectionLost",
    "ErrorEvent",
    "Joined",
    "Left",
    "Member",
    "ProfileChanged",
    "Received",
    "Resumed",
    "Welcomed",
]

LEAVE_UNSEEN = 0
"""`Left.reason` for a member that vanished from a fresh WELCOME snapshot (its LEAVE was lost)."""

_HELD_MAX = 4096  # relay messages held while a JOIN waits for its WELCOME (UDP reordering)
_BYE = Bye().encode()
_SYNC = Sync().encode()


class ConnectionClosedError(RuntimeError):
    """send() or update_profile() after the connection was closed (BYE, CLOSING, refused)."""


# ---- events -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Welcomed:
    """The first WELCOME of this connection is complete (the adapters' connect() returns on it)."""

    connection_id: int
    resumed: bool


@dataclass(frozen=True, slots=True)
class Resumed:
    """A reconnect completed. `kept_seat` False: the seat had expired and this is a fresh join with
    a new connection id (members who changed meanwhile were reported as Joined/Left)."""

    connection_id: int
    kept_seat: bool = True


@dataclass(frozen=True, slots=True)
class Joined:
    connection_id: int
    user_id: str
    profile: bytes


@dataclass(frozen=True, slots=True)
class Left:
    """`reason` is a LeaveReason, or LEAVE_UNSEEN (0) when found missing from a snapshot."""

    connection_id: int
    reason: int


@dataclass(frozen=True, slots=True)
class ProfileChanged:
    connection_id: int
    profile: bytes


@dataclass(frozen=True, slots=True)
class Received:
    sender: int
    data: bytes


@dataclass(frozen=True, slots=True)
class ErrorEvent:
    """An ERROR from the relay. Before the WELCOME it means the JOIN was refused (state CLOSED)."""

    code: int
    text: str


@dataclass(frozen=True, slots=True)
class ClosingEvent:
    """The relay ended this member's session (CloseReason); the connection is CLOSED."""

    reason: int
    text: str


@dataclass(frozen=True, slots=True)
class ConnectionLost:
    """Nothing authenticated arrived for the silence timeout, or the adapter reported the transport
    gone. The seat may still be held: call reconnect() to resume it."""

    reason: str


ClientEvent = (
    Welcomed
    | Resumed
    | Joined
    | Left
    | ProfileChanged
    | Received
    | ErrorEvent
    | ClosingEvent
    | ConnectionLost
)


# ---- configuration and state --------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ClientConfig:
    """Client timing and queue sizes; the defaults follow docs/protocol.md section 6."""

    hello_interval: float = 0.25  # UDP: resend the identical HELLO until ACCEPT
    join_interval: float = 0.5  # UDP: resend JOIN until the WELCOME is complete
    ping_interval: float = 2.0  # keepalive + RTT probe; capped at keepalive_timeout / 4
    silence_timeout: float | None = None  # None: the relay's keepalive timeout from WELCOME
    sync_interval: float = 1.0  # at most one SYNC per this many seconds
    sync_attempts: int = 3  # a SYNC without a complete WELCOME in reply is sent this often at most
    max_queued: int = 4096  # messages queued while not joined; beyond that they are dropped
    rtt_gain: float = 0.125  # smoothing of `rtt` (RFC 6298 alpha)


class ClientState(Enum):
    IDLE = "idle"
    HANDSHAKE = "handshake"
    JOINING = "joining"
    JOINED = "joined"
    LOST = "lost"
    CLOSED = "closed"


class ClientStats:
    """Raw counters for tests and bots. `dropped` maps a reason (a ProtocolError reason or one of
    unknown_session, unexpected, dup_accept, stale_welcome, queue_full) to a count."""

    __slots__ = (
        "bytes_received",
        "bytes_sent",
        "dropped",
        "hello_sent",
        "join_sent",
        "messages_received",
        "messages_sent",
        "packets_received",
        "packets_sent",
        "pings_sent",
        "pongs_received",
        "reconnects",
        "syncs_sent",
    )

    def __init__(self) -> None:
        self.packets_sent = self.packets_received = self.bytes_sent = self.bytes_received = 0
        self.messages_sent = self.messages_received = 0
        self.hello_sent = self.join_sent = self.pings_sent = self.pongs_received = 0
        self.syncs_sent = self.reconnects = 0
        self.dropped: dict[str, int] = {}

    def drop(self, reason: str) -> None:
        self.dropped[reason] = self.dropped.get(reason, 0) + 1

    def as_dict(self) -> dict[str, object]:
        names = self.__slots__
        return {name: dict(self.dropped) if name == "dropped" else getattr(self, name) for name in names}


def _room_key_bytes(room_key: str | bytes) -> bytes:
    if isinstance(room_key, bytes):
        if len(room_key) != 32:
            raise ValueError("a raw room key is 32 bytes")
        return room_key
    return decode_room_key(room_key)


@dataclass(slots=True)
class _Outgoing:
    control: list[bytes] = field(default_factory=list)  # JOIN / PING / PONG / SYNC / BYE
    data: list[bytes] = field(default_factory=list)  # SEND / PROFILE, in call order
    raw: list[bytes] = field(default_factory=list)  # whole packets (HELLO)


# ---- the state machine --------------------------------------------------------------------------


class ClientConnection:
    """One client of one room. Not thread-safe; every method is O(work) and never blocks."""

    __slots__ = (
        "_data_sent_at",
        "_departed",
        "_held",
        "_hello",
        "_joined_before",
        "_last_rx",
        "_max_plaintext",
        "_next_hello",
        "_next_join",
        "_next_ping",
        "_next_sync",
        "_opener",
        "_out",
        "_parts",
        "_parts_key",
        "_ping_id",
        "_psk",
        "_sealer",
        "_session_id",
        "_sync_attempts",
        "_sync_due",
        "_udp",
        "access_token",
        "config",
        "connection_id",
        "latest_rtt",
        "limits",
        "members",
        "profile",
        "resume_token",
        "rtt",
        "state",
        "stats",
        "transport",
        "user_id",
    )

    def __init__(
        self,
        room_key: str | bytes,
        user_id: str,
        profile: bytes = b"",
        access_token: str | None = None,
        transport: str = "udp",
        resume_token: bytes | None = None,
        config: ClientConfig | None = None,
    ) -> None:
        if transport not in ("udp", "ws"):
            raise ValueError("transport is 'udp' or 'ws'")
        if not user_id or len(user_id.encode()) > 128:
            raise ValueError("user_id is 1 to 128 bytes of UTF-8")
        self._psk = derive_psk(_room_key_bytes(room_key))
        self.user_id = user_id
        self.profile = bytes(profile)
        self.access_token = access_token
        self.transport = transport
        self.resume_token = resume_token
        self.config = config or ClientConfig()
        self._udp = transport == "udp"
        self._max_plaintext = UDP_MAX_PLAINTEXT if self._udp else WS_MAX_PLAINTEXT
        self.state = ClientState.IDLE
        self.stats = ClientStats()
        self.connection_id: int | None = None
        self.members: dict[int, Member] = {}
        self.limits: Limits | None = None
        self.rtt: float | None = None
        self.latest_rtt: float | None = None
        self._out = _Outgoing()
        self._hello: ClientHello | None = None
        self._sealer: Sealer | None = None
        self._opener: Opener | None = None
        self._session_id = 0
        self._parts: dict[int, tuple[Member, ...]] = {}  # part number -> its members
        self._parts_key: tuple[int, bytes] | None = None  # (connection id, resume token) of those
        self._sync_due = 0.0  # a SYNC unanswered then (lost, or refused by a busy relay) goes again
        self._sync_attempts = 0
        self._held: list[RelayMessage] = []
        self._departed: set[int] = set()
        self._joined_before = False
        self._last_rx = 0.0
        self._next_hello = self._next_join = self._next_ping = self._next_sync = 0.0
        self._data_sent_at = -1.0  # when data last went out (with `now`: datagrams_to_send(now))
        self._ping_id = 0

    # ---- properties ----

    @property
    def max_plaintext(self) -> int:
        """The largest DATA plaintext this transport allows (one message must fit in it)."""
        return self._max_plaintext

    @property
    def session_id(self) -> int:
        return self._session_id

    @property
    def ping_interval(self) -> float:
        interval = self.config.ping_interval
        if self.limits is not None and self.limits.keepalive_timeout_ms:
            interval = min(interval, self.limits.keepalive_timeout_ms / 4000)
        return interval

    @property
    def silence_timeout(self) -> float:
        if self.config.silence_timeout is not None:
            return self.config.silence_timeout
        if self.limits is not None and self.limits.keepalive_timeout_ms:
            return self.limits.keepalive_timeout_ms / 1000
        return 10.0

    @property
    def has_output(self) -> bool:
        """True when datagrams_to_send() would return something (adapters schedule a flush)."""
        out = self._out
        return bool(out.raw or out.control or (out.data and self.state is ClientState.JOINED))

    # ---- starting, resuming, ending ----

    def initiate(self, now: float) -> list[bytes]:
        """Starts the handshake; returns the HELLO to send."""
        if self.state is not ClientState.IDLE:
            raise RuntimeError(f"initiate() in state {self.state.value}")
        self._start_handshake(now)
        return self.datagrams_to_send()

    def reconnect(self, now: float) -> list[bytes]:
        """A new session (fresh ephemeral key) that JOINs with the resume token; the caller has a
        new transport (WS) or keeps the socket (UDP). Returns the HELLO to send."""
        if self.state is ClientState.CLOSED:
            raise RuntimeError("reconnect() on a closed connection")
        self.stats.reconnects += 1
        self._start_handshake(now)
        return self.datagrams_to_send()

    def connection_lost(self, now: float) -> list[ClientEvent]:
        """The adapter saw the transport go (WS closed without CLOSING); the seat may be held."""
        if self.state in (ClientState.CLOSED, ClientState.LOST, ClientState.IDLE):
            return []
        self._lose()
        return [ConnectionLost("transport closed")]

    def bye(self) -> list[bytes]:
        """Flushes what is queued, then BYE; the connection is CLOSED afterwards."""
        state = self.state
        packets: list[bytes] = []
        if state in (ClientState.JOINED, ClientState.JOINING):
            self._out.raw.clear()
            self._out.control.append(_BYE)
            packets = self.datagrams_to_send()
        self._close()
        return packets

    def close(self) -> None:
        """Forgets the session without telling the relay (the adapters use bye())."""
        self._close()

    # ---- sending ----

    def send(self, data: bytes, targets: Iterable[int] | None = None) -> None:
        """Queues a SEND; `targets` None means everyone else. Raises ValueError if it cannot fit
        one packet (caller error); the relay's own payload limit is answered with ERROR 4."""
        if self.state is ClientState.CLOSED:
            raise ConnectionClosedError("send() on a closed connection")
        message = encode_send(data, targets)
        if len(message) > self._max_plaintext:
            raise ValueError(f"message of {len(data)} bytes does not fit one {self.transport} packet")
        self._queue_data(message)

    def update_profile(self, profile: bytes) -> None:
        """Queues a PROFILE when joined; the next JOIN (first or resumed) carries it anyway."""
        if self.state is ClientState.CLOSED:
            raise ConnectionClosedError("update_profile() on a closed connection")
        profile = bytes(profile)
        message = SetProfile(profile).encode()
        if len(message) > self._max_plaintext:
            raise ValueError("profile does not fit one packet")
        limit = self.limits.max_profile if self.limits is not None else len(profile)
        if len(profile) > limit or not fits_welcome_entry(self.user_id, profile):
            # the relay would answer ERROR 5, and this profile would then spoil the next JOIN
            raise ValueError(
                f"profile of {len(profile)} bytes over the room's limit ({limit}, and {WELCOME_ENTRY_BYTES} "
                "with the user id)"
            )
        self.profile = profile
        if self.state is ClientState.JOINED:
            self._queue_data(message)

    def ping(self, now: float) -> None:
        """Queues a PING now (the timer sends one every ping_interval anyway); the PONG sets rtt."""
        if self.state not in (ClientState.JOINING, ClientState.JOINED):
            return
        self._ping_id += 1
        self._out.control.append(Ping(self._ping_id, max(0, int(now * 1e6))).encode())
        self.stats.pings_sent += 1
        self._next_ping = now + self.ping_interval

    def sync(self, now: float) -> None:
        """Asks for a fresh member snapshot (rate limited to one per sync_interval). One not
        answered within sync_interval is asked again, up to `sync_attempts` times in all."""
        if self.state is ClientState.JOINED and now >= self._next_sync:
            self._next_sync = now + self.config.sync_interval
            self._out.control.append(_SYNC)
            self.stats.syncs_sent += 1
            if not self._sync_due:
                self._sync_attempts = 0
            self._sync_attempts += 1
            self._sync_due = self._next_sync

    def datagrams_to_send(self, now: float | None = None) -> list[bytes]:
        """Everything due, sealed: HELLO as is, then messages coalesced into as few DATA packets
        as fit. Before the WELCOME only control messages go; user data waits for it. With `now`,
        a PING that is due rides with the data (the timer waits a little longer for that while
        data flows: `timer()`)."""
        out = self._out
        packets = out.raw
        out.raw = []
        state = self.state
        if state is ClientState.JOINED and out.data and now is not None:
            self._data_sent_at = now
            if now >= self._next_ping:
                self.ping(now)
        if state is ClientState.JOINED:
            messages = out.control + out.data if out.control else out.data
            out.control = []
            out.data = []
        elif state is ClientState.JOINING:
            messages = out.control
            out.control = []
        else:
            messages = []
        if messages:
            self._pack(messages, packets)
        if packets:
            stats = self.stats
            stats.packets_sent += len(packets)
            stats.bytes_sent += sum(map(len, packets))
        return packets

    # ---- timers ----

    def timer(self) -> float | None:
        """The next time handle_timer() has work, or None."""
        state = self.state
        if state is ClientState.JOINED:
            due = min(self._ping_due(), self._last_rx + self.silence_timeout)
            return min(due, self._sync_due) if self._sync_due else due
        if not self._udp:
            return None
        if state is ClientState.HANDSHAKE:
            return self._next_hello
        if state is ClientState.JOINING:
            return self._next_join
        return None

    def _ping_due(self) -> float:
        """When the timer sends the PING: when due, or a quarter interval later where data went
        out since the last one (the next DATA packet carries it then, if it comes by)."""
        interval = self.ping_interval
        if self._data_sent_at >= self._next_ping - interval:
            return self._next_ping + interval / 4
        return self._next_ping

    def handle_timer(self, now: float) -> list[ClientEvent]:
        state = self.state
        if state is ClientState.JOINED:
            if now - self._last_rx >= self.silence_timeout:
                self._lose()
                return [ConnectionLost("silence")]
            if now >= self._ping_due():
                self.ping(now)
            if self._sync_due and now >= self._sync_due:  # no (complete) answer to the SYNC
                if self._sync_attempts < self.config.sync_attempts:
                    self._next_sync = now
                    self.sync(now)  # another attempt of the same SYNC
                else:
                    self._sync_due = 0.0
        elif self._udp and state is ClientState.HANDSHAKE:
            if now >= self._next_hello and self._hello is not None:
                self._out.raw.append(self._hello.packet)
                self.stats.hello_sent += 1
                self._next_hello = now + self.config.hello_interval
        elif self._udp and state is ClientState.JOINING and now >= self._next_join:
            self._queue_join(now)
        return []

    # ---- receiving ----

    def receive(self, packet: bytes, now: float) -> list[ClientEvent]:
        """Feeds one received packet; returns the events it caused. Never raises for bad input."""
        stats = self.stats
        stats.packets_received += 1
        stats.bytes_received += len(packet)
        try:
            header = parse_header(packet)
            ptype = header.type
            if ptype == PacketType.DATA:
                opener = self._opener
                if opener is None or header.session_id != self._session_id:
                    stats.drop("unknown_session")
                    return []
                messages = decode_relay(opener.open(packet, header.counter))
            elif ptype == PacketType.ACCEPT:
                self._on_accept(packet, now)
                return []
            else:
                stats.drop("unexpected")
                return []
        except ProtocolError as exc:
            stats.drop(exc.reason)
            return []
        if self.state is ClientState.CLOSED:
            stats.drop("closed")
            return []
        self._last_rx = now
        stats.messages_received += len(messages)
        events: list[ClientEvent] = []
        handle = self._handle
        for message in messages:
            handle(message, now, events)
        return events

    # ---- internals ----

    def _start_handshake(self, now: float) -> None:
        self._hello = ClientHello.create(self._psk, pad_to=UDP_HELLO_PAD_TO if self._udp else 0)
        self._sealer = self._opener = None
        self._session_id = 0
        self._parts = {}
        self._parts_key = None
        self._held = []
        self._out.raw = [self._hello.packet]
        self._out.control = []
        self.stats.hello_sent += 1
        self._next_hello = now + self.config.hello_interval
        self.state = ClientState.HANDSHAKE

    def _on_accept(self, packet: bytes, now: float) -> None:
        hello = self._hello
        if self.state is not ClientState.HANDSHAKE or hello is None:
            self.stats.drop("dup_accept")
            return
        keys = hello.finish(packet)  # ProtocolError if it is not the answer to our HELLO
        self._hello = None
        self._session_id = keys.session_id
        self._sealer = Sealer(keys.k_c2s, keys.session_id)
        self._opener = Opener(keys.k_s2c, strict=not self._udp)
        self._last_rx = now
        self.state = ClientState.JOINING
        self._out.raw = []
        self._queue_join(now)
        self._next_ping = now + self.ping_interval

    def _queue_join(self, now: float) -> None:
        join = Join(self.user_id, self.profile, self.access_token, self.resume_token)
        self._out.control.append(join.encode())
        self.stats.join_sent += 1
        self._next_join = now + self.config.join_interval

    def _queue_data(self, message: bytes) -> None:
        out = self._out
        if self.state is not ClientState.JOINED and len(out.data) >= self.config.max_queued:
            self.stats.drop("queue_full")
            return
        out.data.append(message)
        self.stats.messages_sent += 1

    def _pack(self, messages: list[bytes], packets: list[bytes]) -> None:
        sealer = self._sealer
        if sealer is None:  # cannot happen in JOINING/JOINED; keep bad states from raising
            return
        seal = sealer.seal
        limit = self._max_plaintext
        if len(messages) == 1:
            packets.append(seal(messages[0]))
            return
        chunk: list[bytes] = []
        size = 0
        for message in messages:
            n = len(message)
            if size + n > limit and chunk:
                packets.append(seal(b"".join(chunk)))
                chunk = []
                size = 0
            chunk.append(message)
            size += n
        if chunk:
            packets.append(seal(b"".join(chunk)))

    def _lose(self) -> None:
        self.state = ClientState.LOST
        self._sealer = self._opener = None
        self._session_id = 0
        self._out.raw = []
        self._out.control = []

    def _close(self) -> None:
        self.state = ClientState.CLOSED
        self._hello = None
        self._sealer = self._opener = None
        self._session_id = 0
        self._out = _Outgoing()

    def _handle(self, msg: RelayMessage, now: float, events: list[ClientEvent]) -> None:
        kind = type(msg)
        if kind is Message:
            if self.state is ClientState.JOINING:
                self._hold(msg)
                return
            sender = msg.sender
            if sender not in self.members and sender not in self._departed and sender != self.connection_id:
                self.sync(now)
            events.append(Received(sender, msg.data))
        elif kind is Pong:
            self._on_pong(msg, now)
        elif kind is Welcome:
            self._on_welcome(msg, now, events)
        elif kind is PathPing:
            self._out.control.append(PathPong(msg.challenge).encode())
        elif kind is Error:
            if self.state is ClientState.JOINING:
                self._close()  # a refused JOIN: the relay has forgotten the session
            events.append(ErrorEvent(msg.code, msg.text))
        elif kind is Closing:
            self._close()
            events.append(ClosingEvent(msg.reason, msg.text))
        elif self.state is ClientState.JOINING:
            self._hold(msg)
        elif kind is MemberJoined:
            self._on_member_joined(msg, events)
        elif kind is MemberLeft:
            cid = msg.connection_id
            self._departed.add(cid)
            if self.members.pop(cid, None) is not None:
                events.append(Left(cid, msg.reason))
        elif kind is MemberProfile:
            member = self.members.get(msg.connection_id)
            if member is None:
                self.sync(now)
            else:
                self.members[member.connection_id] = Member(member.connection_id, member.user_id, msg.profile)
                events.append(ProfileChanged(member.connection_id, msg.profile))

    def _hold(self, msg: RelayMessage) -> None:
        if len(self._held) < _HELD_MAX:
            self._held.append(msg)
        else:
            self.stats.drop("held_overflow")

    def _on_member_joined(self, msg: MemberJoined, events: list[ClientEvent]) -> None:
        cid = msg.connection_id
        if cid == self.connection_id or cid in self._departed:
            return
        old = self.members.get(cid)
        self.members[cid] = Member(cid, msg.user_id, msg.profile)
        if old is None:
            events.append(Joined(cid, msg.user_id, msg.profile))
        elif old.profile != msg.profile:
            events.append(ProfileChanged(cid, msg.profile))

    def _on_pong(self, msg: Pong, now: float) -> None:
        sample = now - msg.client_time_us / 1e6
        if not 0.0 <= sample < 60.0:
            self.stats.drop("bad_pong")
            return
        self.stats.pongs_received += 1
        self.latest_rtt = sample
        rtt = self.rtt
        self.rtt = sample if rtt is None else rtt + (sample - rtt) * self.config.rtt_gain

    def _on_welcome(self, msg: Welcome, now: float, events: list[ClientEvent]) -> None:
        """Parts of one snapshot share a resume token, and say their number and how many there
        are: the snapshot is complete when every part is in, in any order. A part of another
        snapshot starts over (a lost part never completes a snapshot; the JOIN or SYNC that
        asked for it is retransmitted). A relay of an earlier revision numbers no part: its
        parts arrive in order and `more` marks all but the last."""
        key = (msg.connection_id, msg.resume_token)
        if msg.parts == 0:  # unnumbered: in order, `more` on all but the last
            key = (msg.connection_id, b"")
            if self._parts_key != key:
                self._parts = {}
            self._parts[len(self._parts)] = msg.members
            complete = not msg.more
        else:
            if self._parts_key != key:
                self._parts = {}
            self._parts[msg.part] = msg.members
            complete = len(self._parts) == msg.parts
        self._parts_key = key
        if not complete:
            return
        cid = msg.connection_id
        snapshot = {
            m.connection_id: m for part in self._parts.values() for m in part if m.connection_id != cid
        }
        self._parts = {}
        self._parts_key = None
        if self.state is ClientState.JOINED:
            if cid != self.connection_id:
                self.stats.drop("stale_welcome")
                return
            self.resume_token = msg.resume_token
            self.limits = msg.limits
            self._apply_snapshot(snapshot, events)
            return
        previous = self.connection_id
        self.connection_id = cid
        self.resume_token = msg.resume_token
        self.limits = msg.limits
        self.state = ClientState.JOINED
        self._next_ping = now + self.ping_interval
        self._next_sync = now
        if self._joined_before:
            self._apply_snapshot(snapshot, events)
            events.append(Resumed(cid, msg.resumed and cid == previous))
        else:
            self._joined_before = True
            self.members = snapshot
            events.append(Welcomed(cid, msg.resumed))
        held = self._held
        self._held = []
        for message in held:
            self._handle(message, now, events)

    def _apply_snapshot(self, snapshot: dict[int, Member], events: list[ClientEvent]) -> None:
        old = self.members
        for cid in old:
            if cid not in snapshot:
                self._departed.add(cid)
                events.append(Left(cid, LEAVE_UNSEEN))
        for cid, member in snapshot.items():
            before = old.get(cid)
            if before is None:
                self._departed.discard(cid)
                events.append(Joined(cid, member.user_id, member.profile))
            elif before.profile != member.profile:
                events.append(ProfileChanged(cid, member.profile))
        self.members = snapshot
