"""The room: sessions, members, fan-out and coalescing. No sockets here.

Transports (relay/server/links.py) hand this module bytes and a `Link` (how to reach one peer);
the room answers by queueing messages on sessions. Everything queued for one session within one
event-loop pass is packed into as few DATA packets as fit and encrypted once per packet at the
end of the pass (`flush`), which is what makes a Python relay fast: the per-packet costs
(AES-GCM, a system call) are paid per recipient per pass, not per message.

A pass that reads a burst of datagrams (uvloop reads up to 32 in one go) flushes early once it
has held output for `max_coalesce_delay_udp`: a 1200-byte datagram holds little more than one
client packet's messages, so waiting for the burst's last datagram saved few packets and held
its first ones for the whole pass (p99 at half load fell from 1.6-2.8 ms to 0.3 ms, with the
same saturation rate). WebSocket input keeps the whole pass: its messages hold up to 64 KiB, and
flushing a burst early multiplied its writes (p99 at half load rose from 0.7 to 1.2-4.9 ms).

Input that docs/protocol.md says to drop is dropped and counted by reason, never raised.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Protocol

from relay.protocol import messages as m
from relay.protocol.constants import (
    DATA_MIN_SIZE,
    HEADER,
    HELLO_MIN_SIZE,
    PROTOCOL_VERSION,
    PUBLIC_KEY_SIZE,
    RESUME_TOKEN_SIZE,
    UDP_MAX_PACKET,
    CloseReason,
    ErrorCode,
    LeaveReason,
    PacketType,
    ProtocolError,
)
from relay.protocol.keys import decode_room_key, derive_psk
from relay.protocol.packets import Opener, Sealer, make_accept, verify_hello
from relay.protocol.tokens import TokenError, public_key_from_text, verify
from relay.server.config import RelayConfig
from relay.server.metrics import Counters
from relay.server.ratelimit import TokenBucket

log = logging.getLogger("relay.server")

UDP, WS = 0, 1
_unpack_header = HEADER.unpack_from
_DATA = int(PacketType.DATA)
_HELLO = int(PacketType.HELLO)
_UDP_MAX_HELLO = 1500
_COMPLETED_MEMORY = 4096  # e_c values remembered to ignore replayed HELLOs

# WebSocket close codes (RFC 6455)
WS_NORMAL, WS_GOING_AWAY, WS_POLICY, WS_TRY_AGAIN = 1000, 1001, 1008, 1013


class Link(Protocol):
    """How packets reach one peer. UDP links enforce the anti-amplification budget."""

    kind: int
    max_plaintext: int
    validated: bool

    def send(self, packet: bytes) -> bool: ...

    def close(self, code: int, reason: str) -> None: ...


class Session:
    """One handshake's keys and link; a member's seat may move between sessions (resume)."""

    __slots__ = (
        "accept",
        "client_public",
        "created",
        "dirty",
        "last_seen",
        "link",
        "member",
        "opener",
        "out",
        "sealer",
        "sid",
    )

    def __init__(self, sid: int, link: Link, k_c2s: bytes, k_s2c: bytes, accept: bytes, client_public: bytes):
        self.sid = sid
        self.link = link
        self.sealer = Sealer(k_s2c, sid)
        self.opener = Opener(k_c2s, strict=link.kind == WS)
        self.accept: bytes | None = accept
        self.client_public = client_public
        self.member: Member | None = None
        self.out: list[bytes] = []
        self.dirty = False
        self.created = self.last_seen = time.monotonic()


class Member:
    """A seat in the room: stable connection id, profile, rate limits; outlives a dropped link."""

    __slots__ = (
        "byte_bucket",
        "cid",
        "grace_until",
        "last_drop",
        "last_error",
        "msg_bucket",
        "over_since",
        "prefix",
        "profile",
        "resume_token",
        "session",
        "user_id",
    )

    def __init__(
        self, cid: int, user_id: str, profile: bytes, session: Session, config: RelayConfig, now: float
    ):
        self.cid = cid
        self.prefix = m.message_prefix(cid)
        self.user_id = user_id
        self.profile = profile
        self.session: Session | None = session
        self.resume_token = b""
        self.msg_bucket = TokenBucket(config.messages_per_second, config.message_burst, now)
        self.byte_bucket = TokenBucket(config.bytes_per_second, config.byte_burst, now)
        self.over_since = 0.0
        self.last_drop = 0.0
        self.last_error = -1e9
        self.grace_until = 0.0


class Room:
    """All state of one room. `on_close` is called once with the reason the room ended."""

    def __init__(self, config: RelayConfig, counters: Counters, on_close: Callable[[CloseReason, str], None]):
        self.config = config
        self.counters = counters
        self.psk = derive_psk(decode_room_key(config.room_key))
        self.token_key = public_key_from_text(config.token_public_key) if config.token_public_key else None
        self.on_close = on_close
        self.on_session: Callable[[], None] = lambda: None  # a session began (wakes the sweeper)
        self.sessions: dict[int, Session] = {}
        self.pending: dict[bytes, Session] = {}
        self.completed: OrderedDict[bytes, None] = OrderedDict()
        self.members: dict[int, Member] = {}
        self.resume_tokens: dict[bytes, Member] = {}
        self.next_cid = 1
        self.accepting_joins = True
        self.shed_optional = False
        self.closed = False
        self.started = self.last_activity = time.monotonic()
        self._dirty: list[Session] = []
        self._flush_scheduled = False
        self._batch_start = 0.0
        # no tick: a UDP pass flushes early once it has held output this long
        self._max_delay = config.max_coalesce_delay_udp if config.coalesce_tick <= 0 else math.inf
        self._loop = asyncio.get_event_loop()
        self._limits = {UDP: config.limits("udp"), WS: config.limits("ws")}
        self._max_payload = {UDP: config.max_payload_udp, WS: config.max_payload_ws}

    # ---- input -------------------------------------------------------------------------------

    def udp_datagram(self, data: bytes, addr: tuple, make_link: Callable[[tuple, int], Link]) -> None:
        """Entry point for every datagram; `make_link(addr, budget)` builds a UDP link."""
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
            if sess is None or sess.link.kind != UDP:
                c.drops["unknown_session"] += 1
                return
            if n > UDP_MAX_PACKET or not ctr:
                c.drops["oversize" if n > UDP_MAX_PACKET else "bad_data"] += 1
                return
            self._data(sess, data, ctr, addr)
            if self._flush_scheduled and time.perf_counter() - self._batch_start >= self._max_delay:
                self.flush()
        elif ptype == _HELLO:
            if sid or ctr or n < HELLO_MIN_SIZE or n > _UDP_MAX_HELLO:
                c.drops["bad_hello"] += 1
                return
            self._udp_hello(data, addr, make_link)
        else:
            c.drops["type"] += 1

    def _udp_hello(self, data: bytes, addr: tuple, make_link: Callable[[tuple, int], Link]) -> None:
        client_public = data[16 : 16 + PUBLIC_KEY_SIZE]
        pending = self.pending.get(client_public)
        if pending is not None:
            link = pending.link
            if getattr(link, "addr", None) == addr and pending.accept is not None:
                link.budget += len(data)  # type: ignore[attr-defined]
                link.send(pending.accept)  # a retransmitted HELLO gets the same ACCEPT
            else:
                self.counters.drops["hello_replay"] += 1
            return
        if client_public in self.completed:  # a replayed HELLO of a finished handshake: ignored
            self.counters.drops["hello_replay"] += 1
            return
        session = self._handshake(data, client_public, lambda: make_link(addr, len(data)))
        if session is not None:
            session.link.send(session.accept)  # type: ignore[arg-type]

    def ws_hello(self, data: bytes, link: Link) -> Session | None:
        """The first binary message of a WebSocket; None means close it (policy violation)."""
        c = self.counters
        c.packets_in[WS] += 1
        c.bytes_in[WS] += len(data)
        try:
            if len(data) < HELLO_MIN_SIZE:
                raise ProtocolError("bad_hello")
            version, ptype, flags, sid, ctr = _unpack_header(data)
            if version != PROTOCOL_VERSION or flags or ptype != _HELLO or sid or ctr:
                raise ProtocolError("bad_hello")
        except ProtocolError as exc:
            c.drops[exc.reason] += 1
            return None
        client_public = data[16 : 16 + PUBLIC_KEY_SIZE]
        if client_public in self.pending or client_public in self.completed:
            c.drops["hello_replay"] += 1
            return None
        session = self._handshake(data, client_public, lambda: link)
        if session is not None:
            link.send(session.accept)  # type: ignore[arg-type]
        return session

    def ws_data(self, session: Session, data: bytes) -> bool:
        """A later WebSocket message; False means the connection must be closed."""
        c = self.counters
        n = len(data)
        c.packets_in[WS] += 1
        c.bytes_in[WS] += n
        if n < DATA_MIN_SIZE:
            c.drops["short"] += 1
            return True
        version, ptype, flags, sid, ctr = _unpack_header(data)
        if version != PROTOCOL_VERSION or flags or ptype != _DATA or sid != session.sid or not ctr:
            c.drops["bad_data"] += 1
            return True
        self._data(session, data, ctr, None)
        return True

    def ws_closed(self, session: Session) -> None:
        """The WebSocket went away without BYE: keep the seat for the resume grace window."""
        member = session.member
        self._forget(session)
        if member is not None and member.session is session:
            member.session = None
            member.grace_until = time.monotonic() + self.config.resume_grace

    def _handshake(
        self, data: bytes, client_public: bytes, link_factory: Callable[[], Link]
    ) -> Session | None:
        c = self.counters
        if self.closed:
            c.drops["closed"] += 1
            return None
        try:
            verify_hello(self.psk, data)
        except ProtocolError:
            c.handshake_failures += 1
            c.drops["handshake"] += 1
            return None
        if len(self.pending) >= self.config.max_pending_handshakes:
            c.drops["handshake_flood"] += 1
            return None
        sid = self._new_sid()
        try:
            accept, keys = make_accept(self.psk, client_public, sid)
        except ProtocolError as exc:
            c.handshake_failures += 1
            c.drops[exc.reason] += 1
            return None
        session = Session(sid, link_factory(), keys.k_c2s, keys.k_s2c, accept, client_public)
        self.sessions[sid] = session
        self.pending[client_public] = session
        c.handshakes += 1
        self.on_session()
        return session

    def _new_sid(self) -> int:
        while True:
            sid = int.from_bytes(os.urandom(4), "big")
            if sid and sid not in self.sessions:
                return sid

    def _data(self, session: Session, data: bytes, ctr: int, addr: tuple | None) -> None:
        c = self.counters
        try:
            plaintext = session.opener.open(data, ctr)
        except ProtocolError as exc:
            if exc.reason == "decrypt":
                c.decrypt_failures += 1
            c.drops[exc.reason] += 1
            return
        link = session.link
        if session.accept is not None:  # first authenticated DATA: the handshake is complete
            session.accept = None
            self.pending.pop(session.client_public, None)
            self.completed[session.client_public] = None
            if len(self.completed) > _COMPLETED_MEMORY:
                self.completed.popitem(last=False)
        if addr is not None:
            if addr != link.addr:  # type: ignore[attr-defined]
                self._rebind(session, addr, len(data))
            elif not link.validated:
                if link.challenge:  # type: ignore[attr-defined]
                    link.budget += len(data)  # type: ignore[attr-defined]
                    # again: the first PING may not have fit the budget (or was lost)
                    self._queue(session, m.PathPing(link.challenge).encode())  # type: ignore[attr-defined]
                else:  # its keys needed the ACCEPT we sent to this address
                    link.validated = True
        try:
            msgs = m.decode_client(plaintext)
        except ProtocolError as exc:
            c.drops[exc.reason] += 1
            return
        now = time.monotonic()
        session.last_seen = now
        kind = link.kind
        c.messages_in[kind] += len(msgs)
        member = session.member
        if member is None:
            self._before_join(session, msgs, now)
            return
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
        for msg in msgs:
            t = type(msg)
            if t is m.Send:
                data = msg.data  # type: ignore[union-attr]
                n = len(data)
                if n <= max_payload and msg_take(1, now):
                    if byte_take(n, now):
                        if member.over_since:
                            self._rate_recovered(member, now)
                        encoded: bytes | None = encode_message(cid, data, prefix)
                    else:
                        member.msg_bucket.tokens += 1  # not spent: _accept_send takes it again
                        encoded = self._accept_send(member, session, msg, now)  # type: ignore[arg-type]
                else:
                    encoded = self._accept_send(member, session, msg, now)  # type: ignore[arg-type]
                if encoded is None:
                    if member.session is not session:  # kicked
                        return
                elif msg.targets is None:  # type: ignore[union-attr]
                    broadcast.append(encoded)
                else:
                    if broadcast:
                        self._broadcast(member, broadcast)
                        broadcast = []
                    self._targeted(member, msg.targets, encoded)  # type: ignore[union-attr]
                continue
            if broadcast:  # keep the sender's order: earlier broadcasts leave first
                self._broadcast(member, broadcast)
                broadcast = []
            if t is m.Ping:
                self._queue(session, m.Pong(msg.ping_id, msg.client_time_us).encode())  # type: ignore[union-attr]
            elif t is m.SetProfile:
                self._on_profile(member, session, msg.profile, now)  # type: ignore[union-attr]
            elif t is m.PathPong:
                if getattr(link, "challenge", 0) and msg.challenge == link.challenge:  # type: ignore[union-attr]
                    link.challenge = 0  # type: ignore[attr-defined]
                    link.validated = True
            elif t is m.Bye:
                self._remove(member, LeaveReason.LEFT)
                self._forget(session, WS_NORMAL, "bye")
                return
            elif t is m.Join or t is m.Sync:
                self._send_welcome(session, member, resumed=False)
            if member.session is not session:  # kicked while handling this packet
                return
        if broadcast:
            self._broadcast(member, broadcast)

    def _rebind(self, session: Session, addr: tuple, received: int) -> None:
        """NAT rebinding: move the session, unvalidated, and challenge the new address."""
        link = session.link
        link.addr = addr  # type: ignore[attr-defined]
        link.validated = False
        link.budget = received  # type: ignore[attr-defined]
        link.challenge = int.from_bytes(os.urandom(8), "big") or 1  # type: ignore[attr-defined]
        self.counters.rebinds += 1
        self._queue(session, m.PathPing(link.challenge).encode())  # type: ignore[attr-defined]

    def _before_join(self, session: Session, msgs: list[m.ClientMessage], now: float) -> None:
        for msg in msgs:
            t = type(msg)
            if t is m.Join:
                self._on_join(session, msg, now)  # type: ignore[arg-type]
                return
            if t is m.Ping:
                self._queue(session, m.Pong(msg.ping_id, msg.client_time_us).encode())  # type: ignore[union-attr]
            elif t is m.Bye:
                self._forget(session, WS_NORMAL, "bye")
                return
            elif t is m.PathPong:
                continue
            else:
                self.counters.drops["not_joined"] += 1
                self._queue(session, m.Error(ErrorCode.NOT_JOINED, "join first").encode())

    # ---- membership --------------------------------------------------------------------------

    def _on_join(self, session: Session, join: m.Join, now: float) -> None:
        config = self.config
        if self.token_key is not None:
            try:
                verify(self.token_key, join.access_token or "", join.user_id)
            except TokenError as exc:
                self._refuse(session, ErrorCode.UNAUTHORIZED, f"access token: {exc}", WS_POLICY)
                return
        if join.resume_token:
            seat = self.resume_tokens.get(join.resume_token)
            if seat is not None and seat.user_id == join.user_id:
                self._resume(seat, session)
                return
        if not self.accepting_joins:
            self._refuse(session, ErrorCode.OVERLOADED, "relay is not accepting joins", WS_TRY_AGAIN)
            return
        if len(self.members) >= config.max_players:
            self._refuse(session, ErrorCode.ROOM_FULL, f"room is full ({config.max_players})", WS_TRY_AGAIN)
            return
        if len(join.profile) > config.max_profile:
            self._refuse(session, ErrorCode.PROFILE_TOO_LARGE, "profile too large", WS_POLICY)
            return
        cid = self.next_cid
        self.next_cid += 1
        member = Member(cid, join.user_id, join.profile, session, config, now)
        joined = m.MemberJoined(cid, join.user_id, join.profile).encode()
        for other in self.members.values():
            if other.session is not None:
                self._queue(other.session, joined)
        self.members[cid] = member
        session.member = member
        self.last_activity = now
        self._send_welcome(session, member, resumed=False)
        log.info("member %d (%s) joined", cid, join.user_id)

    def _resume(self, member: Member, session: Session) -> None:
        old = member.session
        member.session = session
        session.member = member
        member.grace_until = 0.0
        if old is not None and old is not session:
            old.member = None
            self._forget(old, WS_NORMAL, "resumed elsewhere")
        self._send_welcome(session, member, resumed=True)
        log.info("member %d resumed", member.cid)

    def _send_welcome(self, session: Session, member: Member, resumed: bool) -> None:
        self.resume_tokens.pop(member.resume_token, None)
        member.resume_token = secrets.token_bytes(RESUME_TOKEN_SIZE)
        self.resume_tokens[member.resume_token] = member
        kind = session.link.kind
        builder = m.WelcomeBuilder(
            member.cid,
            member.resume_token,
            self._limits[kind],
            resumed,
            [m.Member(o.cid, o.user_id, o.profile) for o in self.members.values() if o is not member],
        )
        for part in builder.parts(session.link.max_plaintext):
            self._queue(session, part)

    def _refuse(self, session: Session, code: int, text: str, ws_code: int) -> None:
        self.counters.drops["join_refused"] += 1
        self._queue(session, m.Error(code, text).encode())
        self._flush_session(session)
        self._forget(session, ws_code, text)

    def _remove(self, member: Member, reason: int) -> None:
        if self.members.pop(member.cid, None) is None:
            return
        self.resume_tokens.pop(member.resume_token, None)
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
            self._forget(session, WS_POLICY, text)
        log.info("member %d kicked: %s", member.cid, text)

    def _forget(self, session: Session, ws_code: int = WS_NORMAL, reason: str = "") -> None:
        if self.sessions.pop(session.sid, None) is None:
            return
        self.pending.pop(session.client_public, None)
        session.out.clear()
        if session.link.kind == WS:
            session.link.close(ws_code, reason)

    # ---- messages ----------------------------------------------------------------------------

    def _rate_ok(self, member: Member, session: Session, nbytes: int, now: float) -> bool:
        if member.msg_bucket.take(1, now):
            if member.byte_bucket.take(nbytes, now):
                self._rate_recovered(member, now)
                return True
            member.msg_bucket.tokens += 1  # the message is dropped: it spends no message token
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
                if shed and s.link.kind == UDP:
                    self.counters.drops["shed"] += len(items)
                    continue
                queue_many(s, items)

    def _targeted(self, member: Member, targets: tuple[int, ...], encoded: bytes) -> None:
        members = self.members
        for cid in dict.fromkeys(targets) if len(targets) > 1 else targets:
            other = members.get(cid)
            if other is not None and other is not member and other.session is not None:
                if self.shed_optional and other.session.link.kind == UDP:
                    self.counters.drops["shed"] += 1
                    continue
                self._queue(other.session, encoded)

    def _on_profile(self, member: Member, session: Session, profile: bytes, now: float) -> None:
        if len(profile) > self.config.max_profile:
            self.counters.drops["profile_too_large"] += 1
            self._queue(session, m.Error(ErrorCode.PROFILE_TOO_LARGE, "profile too large").encode())
            return
        if not self._rate_ok(member, session, len(profile), now):
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
        self._batch_start = time.perf_counter()
        tick = self.config.coalesce_tick
        if tick > 0:
            self._loop.call_later(tick, self.flush)
        else:
            self._loop.call_soon(self.flush)

    def flush(self) -> None:
        """Packs and seals everything queued this pass: one packet per recipient where it fits."""
        self._flush_scheduled = False
        dirty = self._dirty
        if not dirty:
            return
        self._dirty = []
        for session in dirty:
            try:
                self._flush_session(session)
            except Exception:  # one broken session must not stall the others in this pass
                session.dirty = False
                session.out = []
                self.counters.drops["internal_error"] += 1
                log.exception("flush of session %d failed", session.sid)
        self.counters.observe_fanout(time.perf_counter() - self._batch_start)

    def _flush_session(self, session: Session) -> None:
        session.dirty = False
        out = session.out
        if not out:
            return
        session.out = []
        link = session.link
        c = self.counters
        kind = link.kind
        c.messages_out[kind] += len(out)
        limit = link.max_plaintext
        seal = session.sealer.seal
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
                c.drops["send_failed" if link.validated else "amplification"] += 1
        if kind == WS and getattr(link, "buffered", 0) > self.config.ws_send_buffer:
            member = session.member
            if member is not None:
                self.kick(member, "send buffer overflow")
            else:
                self._forget(session, WS_POLICY, "send buffer overflow")

    # ---- time --------------------------------------------------------------------------------

    @property
    def quiet(self) -> bool:
        """Nobody to watch: sweep() can only find the room idle or over its lifetime."""
        return not self.sessions and not self.members

    def next_deadline(self) -> float:
        """When a quiet room next needs a sweep (monotonic): its idle or lifetime end."""
        return min(self.last_activity + self.config.idle_timeout, self.started + self.config.lifetime)

    def sweep(self) -> None:
        """Called periodically: keepalive, resume grace, stale handshakes, idle and lifetime."""
        if self.closed:
            return
        now = time.monotonic()
        config = self.config
        for member in list(self.members.values()):
            session = member.session
            if session is None:
                if now >= member.grace_until:
                    self._remove(member, LeaveReason.DISCONNECTED)
            elif now - session.last_seen > config.keepalive_timeout:
                self._remove(member, LeaveReason.TIMEOUT)
                self._forget(session, WS_GOING_AWAY, "keepalive timeout")
        for session in list(self.sessions.values()):
            if session.member is None and now - session.last_seen > config.handshake_timeout:
                self._forget(session, WS_GOING_AWAY, "no join")
        if now - self.last_activity > config.idle_timeout:
            self.close(CloseReason.IDLE, "no communication")
        elif now - self.started > config.lifetime:
            self.close(CloseReason.LIFETIME, "room lifetime reached")

    def close(self, reason: CloseReason, text: str = "") -> None:
        """CLOSING to every session, flushed now; then the room accepts nothing more."""
        if self.closed:
            return
        self.closed = True
        closing = m.Closing(reason, text).encode()
        for session in list(self.sessions.values()):
            self._queue(session, closing)
        self.flush()
        for session in list(self.sessions.values()):
            self._forget(session, WS_GOING_AWAY if reason == CloseReason.SHUTDOWN else WS_NORMAL, text)
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
