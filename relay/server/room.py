"""The room: members, fan-out, coalescing, limits and liveness, as a sans-I/O state machine.

No socket, no event loop, no clock and no randomness of its own, in the manner of h11 and
aioquic: the transport adapters (relay/server/links.py, app.py) hand it bytes with the time
they arrived, and it answers by handing sealed packets to each session's `Link` (the writer
interface, relay/server/transport.py). It asks for what it cannot do itself:

- `on_flush(delay)`: output is queued; call `flush(now)` within `delay` seconds (0: at the end of
  this event-loop pass). Everything queued for one session in a pass is packed into as few DATA
  packets as fit and sealed once per packet (`flush`), which is what makes a Python relay fast:
  the per-packet costs (AES-GCM, a system call) are paid per recipient per pass, not per message.
- `timer()` / `handle_timer(now)`: when it next needs to be woken (keepalives, resume grace,
  stale handshakes, idle and lifetime ends), and the wake itself.
- `on_timer()`: `timer()` may have come earlier (a session began, or a member's connection
  dropped into its resume grace): read it again. Nothing else brings it forward, a message
  least of all, so the room is woken at its earliest deadline and not swept on a period: on a
  host of many relay processes every wake-up of one costs some hundreds of microseconds of CPU
  (docs/architecture.md).
- `on_session()`: a session began (what sleeps long while the room is quiet wakes up).
- `on_close(reason, text)`: the room ended.
- `offer_udp(session)`: a member's UDP session, on a validated path, whose packet the room just
  handled: the adapter may relay its next packets in C (relay/server/_lane.c), which checks the
  room's state at each packet and hands back all but the plain SENDs (`udp_opened` takes one
  it opened).

A pass that reads a burst of datagrams (uvloop reads up to 32 in one go) flushes early once it
has held output for `max_coalesce_delay_udp`: a 1200-byte datagram holds little more than one
client packet's messages, so waiting for the burst's last datagram saved few packets and held
its first ones for the whole pass (p99 at half load fell from 1.6-2.8 ms to 0.3 ms, with the
same saturation rate). WebSocket input keeps the whole pass: its messages hold up to 64 KiB, and
flushing a burst early multiplied its writes (p99 at half load rose from 0.7 to 1.2-4.9 ms).
A relay that paces its reads (relay/server/pacing.py) through the transport sets `held`: its
passes gather what came while it rested, and are flushed whole (the port read in C rests after
each read and packs the read per recipient itself).

The handshake lives in handshake.py, a UDP member's address validation in paths.py. Input that
docs/protocol.md says to drop is dropped and counted by reason, never raised.

Another wire's adapter hands the room decoded messages instead of packets: a GS2 game client
(relay/server/gs2.py) gets a session without keys (`open_session`), its messages go through
`handle_messages` like those of a decrypted packet, and its link turns the same native messages
every session gets into its own wire's at the flush (transport.MessageLink). Such a client
cannot resume: its connection's end is its member's (`end_session`).
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable
from typing import Any, cast

from relay.protocol import messages as m
from relay.protocol.constants import (
    DATA_MIN_SIZE,
    HEADER,
    HELLO_MIN_SIZE,
    MAX_USER_ID_BYTES,
    PROTOCOL_VERSION,
    RESUME_TOKEN_SIZE,
    UDP_HELLO_PAD_TO,
    UDP_MAX_PACKET,
    CloseReason,
    ErrorCode,
    LeaveReason,
    PacketType,
    ProtocolError,
)
from relay.protocol.keys import decode_room_key, derive_psk
from relay.protocol.tokens import USER_ISSUER, TokenError, public_key_from_text, read_claims, verify
from relay.server.config import RelayConfig
from relay.server.handshake import Handshakes, client_public
from relay.server.metrics import Counters
from relay.server.paths import SendTo, UdpPath
from relay.server.ratelimit import TokenBucket
from relay.server.sessions import Member, Session
from relay.server.transport import UDP, WS, Disconnect, Link, MessageLink

log = logging.getLogger("relay.server")

_unpack_header = HEADER.unpack_from
_DATA = int(PacketType.DATA)
_HELLO = int(PacketType.HELLO)
HELLO_MAX_SIZE = 1500
"""The largest HELLO on either transport (docs/protocol.md 4.1); over UDP it is also at least
UDP_HELLO_PAD_TO (1200), which funds the ACCEPT (7.3)."""
SNAPSHOTS_PER_SECOND = 4
"""A member's SYNCs (and repeated JOINs) get fresh snapshots at most this often (a burst of as
many), and their bytes come out of the member's byte budget: replies to a member's own requests
stay bounded (docs/security.md). Refused ones are dropped: the client asks again."""
MIN_TIMER_GAP = 0.02
"""Seconds between two of the room's timer wake-ups at least: deadlines that fall closer
together are handled in one wake."""


def _no_udp(packet: bytes, addr: Any) -> None:
    raise RuntimeError("the room has no UDP writer (udp_writer)")


class Room:
    """All state of one room. `now` is the caller's clock (seconds, monotonic); `rand(n)` gives
    n random bytes (session ids, path challenges, resume tokens); `wall_offset` turns the
    caller's clock into Unix time (for the expiry of user access tokens)."""

    # slots: the C lane reads a room's flags and tables at every pass (relay/server/_lane.c), and
    # a slot is a load at a known offset where an instance dict is a lookup (cold at each wake-up)
    __slots__ = (
        "_dirty",
        "_flush_scheduled",
        "_last_sweep",
        "_limits",
        "_max_delay",
        "_max_payload",
        "_now",
        "_tick",
        "accepting_joins",
        "batch_start",
        "closed",
        "config",
        "counters",
        "handshakes",
        "held",
        "last_activity",
        "members",
        "next_cid",
        "offer_udp",
        "on_close",
        "on_flush",
        "on_session",
        "on_timer",
        "rand",
        "resume_tokens",
        "sessions",
        "shed_optional",
        "started",
        "token_key",
        "udp_backlogged",
        "udp_writer",
        "wall_offset",
    )

    def __init__(
        self,
        config: RelayConfig,
        counters: Counters,
        now: float,
        rand: Callable[[int], bytes] = os.urandom,
        wall_offset: float = 0.0,
    ) -> None:
        self.config = config
        self.counters = counters
        self.rand = rand
        self.wall_offset = wall_offset
        psk = derive_psk(decode_room_key(config.room_key))
        self.handshakes = Handshakes(psk, counters, config.max_pending_handshakes, rand)
        self.token_key = public_key_from_text(config.token_public_key) if config.token_public_key else None
        # what the room asks of whoever drives it (see the module docstring)
        self.on_flush: Callable[[float], None] = lambda delay: None
        self.on_session: Callable[[], None] = lambda: None
        self.on_timer: Callable[[], None] = lambda: None
        self.on_close: Callable[[CloseReason, str], None] = lambda reason, text: None
        # a UDP member's session on a validated path, after each of its packets the room handled:
        # the adapter may relay its next ones in C (relay/server/_lane.c), under the room's rules
        self.offer_udp: Callable[[Session], None] = lambda session: None
        self.udp_writer: SendTo = _no_udp
        self.udp_backlogged = False  # the UDP adapter's transport is over its high-water mark
        self.sessions: dict[int, Session] = {}
        self.members: dict[int, Member] = {}
        self.resume_tokens: dict[bytes, Member] = {}
        self.next_cid = 1
        self.accepting_joins = True
        self.shed_optional = False
        self.closed = False
        self.started = self.last_activity = now
        self._last_sweep = now
        self._now = now  # the time of the input being handled
        self._dirty: list[Session] = []
        self._flush_scheduled = False
        self.batch_start = 0.0  # when the output awaiting the next flush began (its first input)
        self._tick = config.coalesce_tick if config.coalesce_tick > 0 else 0.0
        # no tick: a UDP pass flushes early once it has held output this long
        self._max_delay = config.max_coalesce_delay_udp if config.coalesce_tick <= 0 else math.inf
        self.held = False  # the relay paces its reads: a UDP pass is flushed whole, as a tick's
        # by transport kind (a GS2 client is on the WebSocket port, with its limits)
        self._limits = [config.limits("udp"), config.limits("ws"), config.limits("gs2")]
        self._max_payload = [config.max_payload_udp, config.max_payload_ws, config.max_payload_ws]

    @property
    def pending(self) -> dict[bytes, Session]:
        """Handshakes answered and not yet completed."""
        return self.handshakes.pending

    # ---- input -------------------------------------------------------------------------------

    def udp_datagram(self, data: bytes, addr: Any, now: float) -> None:
        """Every datagram that reaches the room's port, with the time it was read."""
        if self._flush_scheduled and now - self.batch_start >= self._max_delay and not self.held:
            self.flush(now)  # the burst so far leaves before this datagram is handled
        self._now = now
        n = len(data)
        c = self.counters
        c.packets_in[UDP] += 1
        c.bytes_in[UDP] += n
        if n < DATA_MIN_SIZE:
            c.drops["short"] += 1
            return
        version, ptype, flags, sid, ctr = _unpack_header(data)
        if version != PROTOCOL_VERSION or flags:
            c.drops["version" if version != PROTOCOL_VERSION else "flags"] += 1
            return
        if ptype == _DATA:
            sess = self.sessions.get(sid)
            if sess is None or sess.path is None:
                c.drops["unknown_session"] += 1
                return
            if n > UDP_MAX_PACKET or not ctr:
                c.drops["oversize" if n > UDP_MAX_PACKET else "bad_data"] += 1
                return
            self._data(sess, data, ctr, addr, now)
        elif ptype == _HELLO:
            if sid or ctr or n > HELLO_MAX_SIZE:
                c.drops["bad_hello"] += 1
                return
            if n < UDP_HELLO_PAD_TO:  # unpadded: answering it could amplify (7.3)
                c.drops["hello_unpadded"] += 1
                return
            if self.handshakes.repeated_udp(client_public(data), addr, n):
                return
            session = self._open(data, lambda: UdpPath(self.udp_writer, addr, n), now)
            if session is not None and session.accept is not None:
                session.link.send(session.accept)
        else:
            c.drops["type"] += 1

    def ws_hello(self, data: bytes, link: Link, now: float) -> Session | None:
        """The first binary message of a WebSocket; None means close it (policy violation)."""
        self._now = now
        c = self.counters
        c.packets_in[WS] += 1
        c.bytes_in[WS] += len(data)
        try:
            if not HELLO_MIN_SIZE <= len(data) <= HELLO_MAX_SIZE:
                raise ProtocolError("bad_hello")
            version, ptype, flags, sid, ctr = _unpack_header(data)
            if version != PROTOCOL_VERSION or flags or ptype != _HELLO or sid or ctr:
                raise ProtocolError("bad_hello")
        except ProtocolError as exc:
            c.drops[exc.reason] += 1
            return None
        if self.handshakes.seen(client_public(data)):
            c.drops["hello_replay"] += 1
            return None
        session = self._open(data, lambda: link, now)
        if session is not None and session.accept is not None:
            link.send(session.accept)
        return session

    def ws_data(self, session: Session, data: bytes, now: float) -> None:
        """A later binary message of the WebSocket that carries `session`."""
        self._now = now
        c = self.counters
        n = len(data)
        c.packets_in[WS] += 1
        c.bytes_in[WS] += n
        if n < DATA_MIN_SIZE:
            c.drops["short"] += 1
            return
        version, ptype, flags, sid, ctr = _unpack_header(data)
        if version != PROTOCOL_VERSION:  # a version this relay does not speak: close (7.2, 10)
            c.drops["version"] += 1
            self._ws_violation(session, "unknown version", now)
            return
        if flags or ptype != _DATA or sid != session.sid or not ctr:
            c.drops["bad_data"] += 1
            return
        self._data(session, data, ctr, None, now)

    def ws_closed(self, session: Session, now: float) -> None:
        """The WebSocket went away without BYE: keep the seat for the resume grace window."""
        member = session.member
        self._forget(session)
        if member is not None and member.session is session:
            member.session = None
            member.grace_until = now + self.config.resume_grace
            self.on_timer()

    def _ws_violation(self, session: Session, text: str, now: float) -> None:
        """Closes a WebSocket with 1008; its seat is held as for any dropped connection."""
        link = session.link
        self.ws_closed(session, now)
        link.close(Disconnect.VIOLATION, text)

    def _open(self, hello: bytes, link: Callable[[], Link], now: float) -> Session | None:
        if self.closed:
            self.counters.drops["closed"] += 1
            return None
        session = self.handshakes.open(hello, link, self.sessions, now)
        if session is not None:
            self.sessions[session.sid] = session
            self.on_session()
            self.on_timer()
        return session

    def open_session(self, link: MessageLink, now: float) -> Session | None:
        """A session without the handshake: its client authenticated in its own way (a GS2
        client: the room key's HMAC on its HelloRequest) and its link encodes the room's messages
        itself. None when the room has closed."""
        if self.closed:
            self.counters.drops["closed"] += 1
            return None
        session = Session(self.handshakes.new_sid(self.sessions), link, None, None, None, b"", now)
        self.sessions[session.sid] = session
        self.on_session()
        self.on_timer()
        return session

    def user_of(self, token: str, now: float) -> str:
        """The user a user access token is for, for clients that name none but the token's (GS2's
        HelloRequest); raises TokenError. With a token key the token is verified as a JOIN's is
        (signature, issuer, expiry at the caller's clock); without one its claims are read as a
        native JOIN's claimed user id is taken: the room key is then the only credential."""
        if self.token_key is not None:
            user_id = verify(self.token_key, token, None, now + self.wall_offset, USER_ISSUER).sub
        else:
            user_id = read_claims(token).sub
        if not user_id or len(user_id.encode()) > MAX_USER_ID_BYTES:
            raise TokenError(f"user id must be 1 to {MAX_USER_ID_BYTES} bytes of UTF-8")
        return user_id

    def alive(self, session: Session, now: float) -> None:
        """A sign of life below the room's messages (a GS2 connection's answer to a WebSocket
        ping): it keeps the session from its keepalive timeout, and is no room traffic (idle)."""
        session.last_seen = now

    def end_session(
        self, session: Session, now: float, reason: LeaveReason, why: Disconnect | None, text: str = ""
    ) -> None:
        """The end of a session whose client cannot resume (GS2's): its member leaves at once
        (LEAVE `reason` to the others); `why` closes its link (None: it is already gone)."""
        self._now = now
        member = session.member
        if member is not None and member.session is session:
            self._remove(member, reason)
        self._forget(session, why, text)

    def _data(self, session: Session, data: bytes, ctr: int, addr: Any, now: float) -> None:
        c = self.counters
        if now < session.muted_until:
            # its member spent its message tokens (authenticated traffic did that, so a forged
            # packet cannot bring this on): every message in it would be dropped by the rate
            # limit, so it is dropped before the AEAD, which a flood would otherwise pay per packet
            c.drops["rate_limited_unread"] += 1
            return
        try:
            plaintext = session.opener.open(data, ctr)
        except ProtocolError as exc:
            if exc.reason == "decrypt":
                c.decrypt_failures += 1
            c.drops[exc.reason] += 1
            return
        self.udp_opened(session, data, plaintext, ctr, addr, now)

    def udp_opened(
        self, session: Session, data: bytes, plaintext: bytes, ctr: int, addr: Any, now: float
    ) -> None:
        """A UDP session's DATA packet, counted and opened: by `_data`, or by the adapter's C
        path (relay/server/_lane.c), which hands on what it does not relay itself."""
        c = self.counters
        if session.accept is not None:  # first authenticated DATA: the handshake is complete
            self.handshakes.complete(session)
        path = session.path
        if path is not None:
            if addr != path.addr:
                # only the newest packet moves the session (RFC 9000 9.3): one from the old
                # address that the path reordered past the move must not take it back there
                if ctr == session.opener.top:
                    self._rebind(session, path, addr, len(data))
            elif not path.validated:
                if path.challenge:
                    path.credit(len(data))
                    # again, with each packet from the address until it answers (it may be lost)
                    path.ping_due = True
                    self._mark(session)
                else:  # its keys needed the ACCEPT we sent to this address
                    path.validated = True
        try:
            msgs = m.decode_client(plaintext)
        except ProtocolError as exc:
            c.drops[exc.reason] += 1
            if exc.reason == "bad_user_id" and session.member is None:  # a JOIN the relay can name
                self._refuse(session, ErrorCode.BAD_REQUEST, str(exc.detail), Disconnect.VIOLATION)
            return
        self.handle_messages(session, msgs, now)
        member = session.member
        if member is not None and path is not None and path.validated and member.session is session:
            self.offer_udp(session)

    def handle_messages(self, session: Session, msgs: list[m.ClientMessage], now: float) -> None:
        """A session's messages, authenticated and decoded: a DATA packet's, or those another
        wire's adapter decoded (a GS2 client's, relay/server/gs2.py)."""
        self._now = now
        session.last_seen = now
        kind = session.link.kind
        self.counters.messages_in[kind] += len(msgs)
        member = session.member
        if member is None:
            self._before_join(session, msgs, now)
        else:
            self._member_messages(session, member, msgs, now)

    def _member_messages(
        self, session: Session, member: Member, msgs: list[m.ClientMessage], now: float
    ) -> None:
        kind = session.link.kind
        self.last_activity = now
        broadcast: list[bytes] = []  # consecutive broadcasts go out with one extend per recipient
        # a SEND within its limits is accepted inline (the per-message hot path); anything else
        # goes through _accept_send, which drops, counts, answers and kicks
        max_payload = self._max_payload[kind]
        msg_take = member.msg_bucket.take
        byte_take = member.byte_bucket.take
        encode_message = m.encode_message
        cid = member.cid
        prefix = member.prefix
        items: list[Any] = msgs  # SENDs are told apart by `type(msg) is`, cheaper than isinstance
        for msg in items:
            if type(msg) is m.Send:
                send: m.Send = msg
                payload = send.data
                n = len(payload)
                if n <= max_payload and msg_take(1, now):
                    if byte_take(n, now):
                        if member.over_since:
                            self._rate_recovered(member, now)
                        encoded: bytes | None = encode_message(cid, payload, prefix)
                    else:
                        member.msg_bucket.tokens += 1  # not spent: _accept_send takes it again
                        encoded = self._accept_send(member, session, send, now)
                else:
                    encoded = self._accept_send(member, session, send, now)
                if encoded is None:
                    if member.session is not session:  # kicked
                        return
                elif send.targets is None:
                    broadcast.append(encoded)
                else:
                    if broadcast:
                        self._broadcast(member, broadcast)
                        broadcast = []
                    self._targeted(member, send.targets, encoded)
                continue
            if broadcast:  # keep the sender's order: earlier broadcasts leave first
                self._broadcast(member, broadcast)
                broadcast = []
            if isinstance(msg, m.Bye):
                self._remove(member, LeaveReason.LEFT)
                self._forget(session, Disconnect.BYE, "bye")
                return
            if isinstance(msg, m.SetProfile):
                self._on_profile(member, session, msg.profile, now)
            elif self._rate_ok(member, session, 0, now):  # every kind counts against the rate
                if isinstance(msg, m.Ping):
                    self._queue(session, m.Pong(msg.ping_id, msg.client_time_us).encode())
                elif isinstance(msg, m.PathPong):
                    if session.path is not None:
                        session.path.confirm(msg.challenge)
                elif isinstance(msg, m.Join | m.Sync):
                    self._snapshot(session, member, now)
            if member.session is not session:  # kicked while handling this packet
                return
        if broadcast:
            self._broadcast(member, broadcast)

    def _rebind(self, session: Session, path: UdpPath, addr: Any, received: int) -> None:
        """NAT rebinding: move the session, unvalidated, and challenge the new address (the
        challenge leaves alone at the flush, ahead of anything queued, so it fits the budget)."""
        path.rebind(addr, received, int.from_bytes(self.rand(8), "big") or 1)
        self.counters.rebinds += 1
        self._mark(session)

    def _snapshot(self, session: Session, member: Member, now: float) -> None:
        """A SYNC or a repeated JOIN: a fresh WELCOME, at most SNAPSHOTS_PER_SECOND and paid for
        from the member's byte budget; otherwise dropped (the client asks again)."""
        if not member.snapshot_bucket.take(1, now):
            self.counters.drops["snapshot_rate"] += 1
            return
        token = self.rand(RESUME_TOKEN_SIZE)
        parts = self._welcome_parts(session, member, token, resumed=False)
        if not member.byte_bucket.take(sum(map(len, parts)), now):
            self.counters.drops["snapshot_over_budget"] += 1
            return
        self._issue_welcome(session, member, token, parts, now)

    def _before_join(self, session: Session, msgs: list[m.ClientMessage], now: float) -> None:
        bucket = session.bucket
        if bucket is None:
            config = self.config
            session.bucket = bucket = TokenBucket(config.messages_per_second, config.message_burst, now)
        for i, msg in enumerate(msgs):
            if not bucket.take(1, now):  # before its JOIN a session is held to the member rate too
                self.counters.drops["rate_limited"] += len(msgs) - i  # this and the rest, unread
                return
            if isinstance(msg, m.Join):
                self._on_join(session, msg, now)
                rest = msgs[i + 1 :]
                member = session.member
                if rest and member is not None:  # what a client sent behind its JOIN, in one packet
                    self._member_messages(session, member, rest, now)
                elif rest:
                    self.counters.drops["not_joined"] += len(rest)
                return
            if isinstance(msg, m.Ping):
                self._queue(session, m.Pong(msg.ping_id, msg.client_time_us).encode())
            elif isinstance(msg, m.Bye):
                self._forget(session, Disconnect.BYE, "bye")
                return
            elif isinstance(msg, m.PathPong):
                continue
            else:
                self.counters.drops["not_joined"] += 1
                self._queue(session, m.Error(ErrorCode.NOT_JOINED, "join first").encode())

    # ---- membership --------------------------------------------------------------------------

    def _on_join(self, session: Session, join: m.Join, now: float) -> None:
        config = self.config
        if self.token_key is not None:
            if not join.access_token:
                text = "access token: missing (this relay admits only members with a user access token)"
                self._refuse(session, ErrorCode.UNAUTHORIZED, text, Disconnect.VIOLATION)
                return
            try:
                verify(self.token_key, join.access_token, join.user_id, now + self.wall_offset, USER_ISSUER)
            except TokenError as exc:
                self._refuse(session, ErrorCode.UNAUTHORIZED, f"access token: {exc}", Disconnect.VIOLATION)
                return
        if join.resume_token:
            seat = self.resume_tokens.get(join.resume_token)
            if seat is not None and seat.user_id == join.user_id:
                self._resume(seat, session, now)
                return
        if not self.accepting_joins:
            self._refuse(
                session, ErrorCode.OVERLOADED, "relay is not accepting joins", Disconnect.RETRY_LATER
            )
            return
        if len(self.members) >= config.max_players:
            self._refuse(
                session, ErrorCode.ROOM_FULL, f"room is full ({config.max_players})", Disconnect.RETRY_LATER
            )
            return
        if len(join.profile) > config.max_profile:
            self._refuse(session, ErrorCode.PROFILE_TOO_LARGE, "profile too large", Disconnect.VIOLATION)
            return
        if not m.fits_welcome_entry(join.user_id, join.profile):
            text = f"user id and profile over {m.WELCOME_ENTRY_BYTES} bytes together"
            self._refuse(session, ErrorCode.PROFILE_TOO_LARGE, text, Disconnect.VIOLATION)
            return
        cid = self.next_cid
        self.next_cid += 1
        member = Member(cid, join.user_id, join.profile, session, config, now)
        member.snapshot_bucket = TokenBucket(SNAPSHOTS_PER_SECOND, SNAPSHOTS_PER_SECOND, now)
        joined = m.MemberJoined(cid, join.user_id, join.profile).encode()
        for other in self.members.values():
            if other.session is not None:
                self._queue(other.session, joined)
        self.members[cid] = member
        session.member = member
        self.last_activity = now
        self._send_welcome(session, member, False, now)
        log.info("member %d (%s) joined", cid, join.user_id)

    def _resume(self, member: Member, session: Session, now: float) -> None:
        old = member.session
        member.session = session
        session.member = member
        member.grace_until = 0.0
        if old is not None and old is not session:
            old.member = None
            self._forget(old, Disconnect.RESUMED_ELSEWHERE, "resumed elsewhere")
        self._send_welcome(session, member, True, now)
        log.info("member %d resumed", member.cid)

    def _send_welcome(self, session: Session, member: Member, resumed: bool, now: float) -> None:
        token = self.rand(RESUME_TOKEN_SIZE)
        self._issue_welcome(session, member, token, self._welcome_parts(session, member, token, resumed), now)

    def _welcome_parts(self, session: Session, member: Member, token: bytes, resumed: bool) -> list[bytes]:
        """The snapshot's numbered parts, each fitting one packet of the session's transport."""
        builder = m.WelcomeBuilder(
            member.cid,
            token,
            self._limits[session.link.kind],
            resumed,
            [m.Member(o.cid, o.user_id, o.profile) for o in self.members.values() if o is not member],
        )
        return builder.parts(session.link.max_plaintext)

    def _issue_welcome(
        self, session: Session, member: Member, token: bytes, parts: list[bytes], now: float
    ) -> None:
        """Sends a snapshot; its resume token and the one before it resume the seat from now on
        (this WELCOME may be lost over UDP, and its client then still holds the one before)."""
        self.resume_tokens.pop(member.previous_token, None)
        member.previous_token = member.resume_token
        member.resume_token = token
        self.resume_tokens[token] = member
        self._queue_many(session, parts)

    def _refuse(self, session: Session, code: int, text: str, why: Disconnect) -> None:
        self.counters.drops["join_refused"] += 1
        self._queue(session, m.Error(code, text).encode())
        self._flush_session(session)
        self._forget(session, why, text)

    def _remove(self, member: Member, reason: int) -> None:
        if self.members.pop(member.cid, None) is None:
            return
        self.resume_tokens.pop(member.resume_token, None)
        self.resume_tokens.pop(member.previous_token, None)
        session = member.session
        member.session = None
        if session is not None:
            session.member = None
        left = m.MemberLeft(member.cid, reason).encode()
        for other in self.members.values():
            if other.session is not None:
                self._queue(other.session, left)
        log.info("member %d left (reason %d)", member.cid, reason)

    def kick(self, member: Member, text: str) -> None:
        session = member.session
        # remove first: flushing the CLOSING to a still-overflowing WS reader must not kick again
        self._remove(member, LeaveReason.KICKED)
        if session is not None:
            self._queue(session, m.Closing(CloseReason.KICKED, text).encode())
            self._flush_session(session)
            self._forget(session, Disconnect.VIOLATION, text)
        log.info("member %d kicked: %s", member.cid, text)

    def _forget(self, session: Session, why: Disconnect | None = None, text: str = "") -> None:
        """Drops a session; `why` closes its transport (None: it is already gone)."""
        if self.sessions.pop(session.sid, None) is None:
            return
        self.handshakes.abandon(session)
        session.out.clear()
        if why is not None:
            session.link.close(why, text)

    # ---- messages ----------------------------------------------------------------------------

    def _rate_ok(self, member: Member, session: Session, nbytes: int, now: float) -> bool:
        if member.msg_bucket.take(1, now):
            if member.byte_bucket.take(nbytes, now):
                self._rate_recovered(member, now)
                return True
            member.msg_bucket.tokens += 1  # the message is dropped: it spends no message token
        else:
            bucket = member.msg_bucket  # no message token: none until (1 - tokens) / rate from now
            session.muted_until = now + (1.0 - bucket.tokens) / bucket.rate
        self.counters.drops["rate_limited"] += 1
        member.last_drop = now
        if not member.over_since:
            member.over_since = now
        elif now - member.over_since >= self.config.abuse_kick_after:
            self.kick(member, "rate limit exceeded")
            return False
        if now - member.last_error >= 1.0:
            member.last_error = now
            self._queue(session, m.Error(ErrorCode.RATE_LIMITED, "rate limit exceeded").encode())
        return False

    @staticmethod
    def _rate_recovered(member: Member, now: float) -> None:
        """Within its rate again: a member that stays so for a second is no longer abusing."""
        if member.over_since and now - member.last_drop > 1.0:
            member.over_since = 0.0

    def _accept_send(self, member: Member, session: Session, msg: m.Send, now: float) -> bytes | None:
        """Checks size and rate; the MESSAGE bytes to fan out, or None if dropped."""
        data = msg.data
        if len(data) > self._max_payload[session.link.kind]:
            if self._rate_ok(member, session, 0, now):  # a refusal is a message: rate limited too
                self.counters.drops["payload_too_large"] += 1
                self._queue(session, m.Error(ErrorCode.PAYLOAD_TOO_LARGE, "payload too large").encode())
            return None
        if not self._rate_ok(member, session, len(data), now):
            return None
        return m.encode_message(member.cid, data, member.prefix)

    def _broadcast(self, member: Member, items: list[bytes]) -> None:
        shed = self.shed_optional
        queue_many = self._queue_many
        for other in self.members.values():
            s = other.session
            if s is not None and other is not member:
                if shed and s.path is not None:
                    self.counters.drops["shed"] += len(items)
                    continue
                queue_many(s, items)

    def _targeted(self, member: Member, targets: tuple[int, ...], encoded: bytes) -> None:
        members = self.members
        for cid in dict.fromkeys(targets) if len(targets) > 1 else targets:
            other = members.get(cid)
            if other is not None and other is not member and other.session is not None:
                if self.shed_optional and other.session.path is not None:
                    self.counters.drops["shed"] += 1
                    continue
                self._queue(other.session, encoded)

    def _on_profile(self, member: Member, session: Session, profile: bytes, now: float) -> None:
        n = len(profile)
        if n > self.config.max_profile or not m.fits_welcome_entry(member.user_id, profile):
            if self._rate_ok(member, session, 0, now):  # a refusal is a message: rate limited too
                self.counters.drops["profile_too_large"] += 1
                self._queue(session, m.Error(ErrorCode.PROFILE_TOO_LARGE, "profile too large").encode())
            return
        if not self._rate_ok(member, session, n, now):
            return
        member.profile = profile
        changed = m.MemberProfile(member.cid, profile).encode()
        for other in self.members.values():
            if other is not member and other.session is not None:
                self._queue(other.session, changed)

    # ---- output ------------------------------------------------------------------------------

    def _queue(self, session: Session, item: bytes) -> None:
        session.out.append(item)
        if not session.dirty:
            session.dirty = True
            self._dirty.append(session)
            if not self._flush_scheduled:
                self._schedule_flush()

    def _queue_many(self, session: Session, items: list[bytes]) -> None:
        session.out.extend(items)
        if not session.dirty:
            session.dirty = True
            self._dirty.append(session)
            if not self._flush_scheduled:
                self._schedule_flush()

    def _schedule_flush(self) -> None:
        self._flush_scheduled = True
        self.batch_start = self._now
        self.on_flush(self._tick)

    def flush(self, now: float) -> None:
        """Packs and seals everything queued since the last flush: one packet per recipient where
        it fits, handed to each session's link."""
        self._flush_scheduled = False
        dirty = self._dirty
        if not dirty:
            return
        self._now = now  # the time of this flush (a GS2 link's lifetime field)
        self._dirty = []
        for session in dirty:
            try:
                self._flush_session(session)
            except Exception:  # one broken session must not stall the others in this pass
                session.dirty = False
                session.out = []
                self.counters.drops["internal_error"] += 1
                log.exception("flush of session %d failed", session.sid)
        self.counters.observe_fanout(now - self.batch_start)

    def _mark(self, session: Session) -> None:
        """The session has something for the next flush besides its queue (a path challenge)."""
        if not session.dirty:
            session.dirty = True
            self._dirty.append(session)
            if not self._flush_scheduled:
                self._schedule_flush()

    def _flush_session(self, session: Session) -> None:
        session.dirty = False
        path = session.path
        if path is not None and path.ping_due:
            self._send_challenge(session, path)
        out = session.out
        if not out:
            return
        session.out = []
        if path is not None and self.udp_backlogged:  # unreliable by contract: dropped, not queued
            self.counters.drops["udp_send_buffer"] += len(out)
            return
        sealer = session.sealer
        if sealer is None:
            self._write_messages(session, out)
            return
        link = session.link
        c = self.counters
        kind = link.kind
        c.messages_out[kind] += len(out)
        limit = link.max_plaintext
        seal = sealer.seal
        chunks = out if len(out) == 1 else _pack(out, limit)
        for chunk in chunks:
            if len(chunk) > limit:  # one message larger than this transport carries (WS -> UDP)
                c.drops["too_large_for_transport"] += 1
                continue
            packet = seal(chunk)
            if link.send(packet):
                c.packets_out[kind] += 1
                c.bytes_out[kind] += len(packet)
            else:
                path = session.path
                c.drops["amplification" if path is not None and not path.validated else "send_failed"] += 1
        if kind == WS and link.buffered > self.config.ws_send_buffer:
            self.overflow(session)

    def _write_messages(self, session: Session, out: list[bytes]) -> None:
        """A keyless session's flush: its link encodes the messages itself (a GS2 client's)."""
        link = cast(MessageLink, session.link)
        c = self.counters
        kind = link.kind
        c.messages_out[kind] += len(out)
        packets, nbytes = link.write(out, self._now)
        c.packets_out[kind] += packets
        c.bytes_out[kind] += nbytes
        if link.buffered > self.config.ws_send_buffer:
            self.overflow(session)

    def overflow(self, session: Session) -> None:
        """A WebSocket reader that cannot keep up is disconnected, not buffered without end."""
        member = session.member
        if member is not None:
            self.kick(member, "send buffer overflow")
        else:
            self._forget(session, Disconnect.VIOLATION, "send buffer overflow")

    def _send_challenge(self, session: Session, path: UdpPath) -> None:
        """The path challenge in a packet of its own, ahead of anything queued (7.3), so it always
        gets through (one packed with waiting traffic overflowed the budget and was lost). It
        spends the address's budget, and goes even when the budget is smaller than it: one per
        authenticated packet from the address, 43 bytes for at least 34 (at most 1.3 times)."""
        path.ping_due = False
        packet = session.sealer.seal(m.PathPing(path.challenge).encode())
        path.budget = max(0, path.budget - len(packet))
        path.sendto(packet, path.addr)
        c = self.counters
        c.packets_out[UDP] += 1
        c.bytes_out[UDP] += len(packet)

    # ---- time --------------------------------------------------------------------------------

    @property
    def quiet(self) -> bool:
        """Nobody to watch: the room can only end idle or at its lifetime."""
        return not self.sessions and not self.members

    def next_deadline(self) -> float:
        """When a quiet room ends: its idle or lifetime end."""
        return min(self.last_activity + self.config.idle_timeout, self.started + self.config.lifetime)

    def timer(self) -> float:
        """When `handle_timer` next has work: the earliest of the members' keepalive and resume
        grace ends, the handshakes' ends and the room's idle and lifetime ends (a quiet room has
        only the last two), never sooner than MIN_TIMER_GAP after the last wake. Infinity once
        the room is closed. A pass over the room's members: read once per wake, not per message."""
        if self.closed:
            return math.inf
        config = self.config
        due = self.next_deadline()
        keepalive, handshake = config.keepalive_timeout, config.handshake_timeout
        for member in self.members.values():
            session = member.session
            end = member.grace_until if session is None else session.last_seen + keepalive
            if end < due:
                due = end
        for session in self.sessions.values():
            if session.member is None and session.last_seen + handshake < due:
                due = session.last_seen + handshake
        return max(due, self._last_sweep + MIN_TIMER_GAP)

    def handle_timer(self, now: float) -> None:
        """Keepalive, resume grace, stale handshakes, idle and lifetime."""
        if self.closed:
            return
        self._now = now
        self._last_sweep = now
        config = self.config
        for member in list(self.members.values()):
            session = member.session
            if session is None:
                if now >= member.grace_until:
                    self._remove(member, LeaveReason.DISCONNECTED)
            elif now - session.last_seen >= config.keepalive_timeout:
                self._remove(member, LeaveReason.TIMEOUT)
                self._forget(session, Disconnect.TIMEOUT, "keepalive timeout")
        for session in list(self.sessions.values()):
            if session.member is None and now - session.last_seen >= config.handshake_timeout:
                self._forget(session, Disconnect.TIMEOUT, "no join")
        # at the deadline itself: a quiet room is woken exactly then (timer()), and closes
        if now - self.last_activity >= config.idle_timeout:
            self.close(CloseReason.IDLE, "no communication", now)
        elif now - self.started >= config.lifetime:
            self.close(CloseReason.LIFETIME, "room lifetime reached", now)

    def abort(self) -> None:
        """The room ends now without CLOSING (its relay drops every connection itself): what is
        queued is dropped, and a connection's end after this reaches nobody (a GS2 member's
        LEAVE would be queued for members whose sockets are closed)."""
        self.closed = True
        for session in self._dirty:
            session.dirty = False
            session.out = []
        self._dirty = []
        self.members.clear()
        self.resume_tokens.clear()

    def close(self, reason: CloseReason, text: str, now: float) -> None:
        """CLOSING to every session, flushed now; then the room accepts nothing more."""
        if self.closed:
            return
        self.closed = True
        self._now = now
        closing = m.Closing(reason, text).encode()
        for session in list(self.sessions.values()):
            self._queue(session, closing)
        self.flush(now)
        why = Disconnect.SHUTDOWN if reason == CloseReason.SHUTDOWN else Disconnect.ROOM_CLOSED
        for session in list(self.sessions.values()):
            self._forget(session, why, text)
        self.members.clear()
        self.resume_tokens.clear()
        log.info("room closed: %s %s", reason.name.lower(), text)
        self.on_close(reason, text)


def _pack(items: list[bytes], limit: int) -> list[bytes]:
    """Greedy packing of encoded messages, in order, into plaintexts of at most `limit` bytes."""
    if sum(map(len, items)) <= limit:  # the common case, without a Python loop per message
        return [b"".join(items)]
    chunks: list[bytes] = []
    start = 0
    size = 0
    for i, item in enumerate(items):
        n = len(item)
        if size + n > limit and i > start:
            chunks.append(b"".join(items[start:i]))
            start = i
            size = 0
        size += n
    chunks.append(b"".join(items[start:]))
    return chunks
