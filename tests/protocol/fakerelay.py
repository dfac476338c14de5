"""A tiny sans-I/O relay built only from the protocol primitives, for driving ClientConnection in
tests without sockets. It follows docs/protocol.md sections 4 to 6 closely enough for a client
(handshake with repeated-HELLO answers, JOIN/WELCOME parts, resume, fan-out, PING/PONG, SYNC),
and skips what a client cannot observe (rate limits, address validation, timeouts).
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field

from relay.protocol import messages as m
from relay.protocol.constants import (
    UDP_MAX_PLAINTEXT,
    WS_MAX_PLAINTEXT,
    ErrorCode,
    LeaveReason,
    PacketType,
    ProtocolError,
)
from relay.protocol.keys import decode_room_key, derive_psk
from relay.protocol.packets import Opener, Sealer, make_accept, parse_header, verify_hello


@dataclass
class Session:
    session_id: int
    sealer: Sealer
    opener: Opener
    connection_id: int = 0
    user_id: str = ""
    profile: bytes = b""
    resume_token: bytes = b""
    received: list[m.ClientMessage] = field(default_factory=list)


class FakeRelay:
    """`handle(packet)` returns [(session_id, packet)] to deliver; HELLO answers carry the new id."""

    def __init__(
        self,
        room_key: str,
        transport: str = "udp",
        limits: m.Limits | None = None,
        refuse: int | None = None,
    ) -> None:
        self.psk = derive_psk(decode_room_key(room_key))
        self.strict = transport == "ws"
        self.max_plaintext = WS_MAX_PLAINTEXT if self.strict else UDP_MAX_PLAINTEXT
        self.limits = limits or m.Limits()
        self.refuse = refuse
        self.sessions: dict[int, Session] = {}
        self.pending: dict[bytes, tuple[bytes, int]] = {}  # e_c -> (ACCEPT, session id)
        self.seats: dict[bytes, Session] = {}  # resume token -> session holding the seat
        self.next_cid = 1
        self.dropped: list[str] = []
        self.path_pongs: list[int] = []

    @property
    def members(self) -> list[Session]:
        return [s for s in self.sessions.values() if s.connection_id]

    def handle(self, packet: bytes) -> list[tuple[int, bytes]]:
        try:
            header = parse_header(packet)
            if header.type == PacketType.HELLO:
                return self._hello(packet)
            session = self.sessions.get(header.session_id)
            if header.type != PacketType.DATA or session is None:
                raise ProtocolError("unknown_session")
            msgs = m.decode_client(session.opener.open(packet, header.counter))
        except ProtocolError as exc:
            self.dropped.append(exc.reason)
            return []
        out: list[tuple[int, bytes]] = []
        for msg in msgs:
            session.received.append(msg)
            self._message(session, msg, out)
        return out

    def seal_to(self, session: Session, *encoded: bytes) -> tuple[int, bytes]:
        return session.session_id, session.sealer.seal(b"".join(encoded))

    def _hello(self, packet: bytes) -> list[tuple[int, bytes]]:
        e_c = verify_hello(self.psk, packet)
        if e_c in self.pending:  # a repeated HELLO gets the same ACCEPT
            accept, sid = self.pending[e_c]
            return [(sid, accept)]
        sid = secrets.randbelow(2**32 - 1) + 1
        accept, keys = make_accept(self.psk, e_c, sid)
        self.pending[e_c] = (accept, sid)
        self.sessions[sid] = Session(sid, Sealer(keys.k_s2c, sid), Opener(keys.k_c2s, strict=self.strict))
        return [(sid, accept)]

    def welcome_parts(self, session: Session, resumed: bool) -> list[tuple[int, bytes]]:
        session.resume_token = secrets.token_bytes(16)
        self.seats[session.resume_token] = session
        others = [m.Member(s.connection_id, s.user_id, s.profile) for s in self.members if s is not session]
        builder = m.WelcomeBuilder(session.connection_id, session.resume_token, self.limits, resumed, others)
        return [self.seal_to(session, part) for part in builder.parts(self.max_plaintext)]

    def _broadcast(self, sender: Session, encoded: bytes, out: list[tuple[int, bytes]]) -> None:
        for other in self.members:
            if other is not sender:
                out.append(self.seal_to(other, encoded))

    def _message(self, session: Session, msg: m.ClientMessage, out: list[tuple[int, bytes]]) -> None:
        if isinstance(msg, m.Join):
            if session.connection_id:
                out.extend(self.welcome_parts(session, resumed=False))
                return
            if self.refuse is not None:
                out.append(self.seal_to(session, m.Error(self.refuse, "refused").encode()))
                del self.sessions[session.session_id]
                return
            old = self.seats.pop(msg.resume_token, None) if msg.resume_token else None
            if old is not None and old.user_id == msg.user_id and old.session_id in self.sessions:
                del self.sessions[old.session_id]
                session.connection_id = old.connection_id
                session.user_id, session.profile = old.user_id, msg.profile
                out.extend(self.welcome_parts(session, resumed=True))
                return
            session.connection_id = self.next_cid
            self.next_cid += 1
            session.user_id, session.profile = msg.user_id, msg.profile
            out.extend(self.welcome_parts(session, resumed=False))
            self._broadcast(
                session, m.MemberJoined(session.connection_id, msg.user_id, msg.profile).encode(), out
            )
        elif isinstance(msg, m.Ping):
            out.append(self.seal_to(session, m.Pong(msg.ping_id, msg.client_time_us).encode()))
        elif isinstance(msg, m.Bye):
            del self.sessions[session.session_id]
            if session.connection_id:
                self._broadcast(session, m.MemberLeft(session.connection_id, LeaveReason.LEFT).encode(), out)
        elif not session.connection_id:
            out.append(self.seal_to(session, m.Error(ErrorCode.NOT_JOINED, "not joined").encode()))
        elif isinstance(msg, m.Send):
            encoded = m.encode_message(session.connection_id, msg.data)
            for other in self.members:
                if other is session:
                    continue
                if msg.targets is None or other.connection_id in msg.targets:
                    out.append(self.seal_to(other, encoded))
        elif isinstance(msg, m.SetProfile):
            session.profile = msg.profile
            self._broadcast(session, m.MemberProfile(session.connection_id, msg.profile).encode(), out)
        elif isinstance(msg, m.Sync):
            out.extend(self.welcome_parts(session, resumed=False))
        elif isinstance(msg, m.PathPong):
            self.path_pongs.append(msg.challenge)
