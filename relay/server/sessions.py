"""What the room holds per peer: sessions (one handshake's keys and the link it came over) and
seats (members, which outlive a dropped link: resume)."""

from __future__ import annotations

from relay.protocol import messages as m
from relay.protocol.packets import Opener, Sealer
from relay.server.config import RelayConfig
from relay.server.paths import UdpPath
from relay.server.ratelimit import TokenBucket
from relay.server.transport import WS, Link


class Session:
    """One handshake's keys and link; a member's seat may move between sessions (resume)."""

    __slots__ = (
        "accept",
        "bucket",
        "client_public",
        "dirty",
        "last_seen",
        "link",
        "member",
        "muted_until",
        "opener",
        "out",
        "path",
        "sealer",
        "sid",
    )

    def __init__(
        self,
        sid: int,
        link: Link,
        k_c2s: bytes | None,
        k_s2c: bytes | None,
        accept: bytes | None,
        client_public: bytes,
        now: float,
    ) -> None:
        """Keys None: a session whose client authenticated in its own way and whose link encodes
        the room's messages itself (a GS2 client: relay/server/transport.py MessageLink)."""
        self.sid = sid
        self.link = link
        self.path: UdpPath | None = link if isinstance(link, UdpPath) else None
        self.sealer = Sealer(k_s2c, sid) if k_s2c is not None else None
        self.opener = Opener(k_c2s, strict=link.kind == WS) if k_c2s is not None else None
        self.accept = accept  # until the first authenticated DATA: resent on a repeated HELLO
        self.client_public = client_public
        self.member: Member | None = None
        self.out: list[bytes] = []  # encoded messages waiting for this pass's flush
        self.dirty = False
        self.last_seen = now
        self.bucket: TokenBucket | None = None  # the message rate before the JOIN is admitted
        # its member has no message token until then: its packets are dropped unread (room._data)
        self.muted_until = 0.0


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
        "previous_token",
        "profile",
        "resume_token",
        "session",
        "snapshot_bucket",
        "user_id",
    )

    def __init__(
        self, cid: int, user_id: str, profile: bytes, session: Session, config: RelayConfig, now: float
    ) -> None:
        self.cid = cid
        self.prefix = m.message_prefix(cid)
        self.user_id = user_id
        self.profile = profile
        self.session: Session | None = session
        self.resume_token = b""
        self.previous_token = b""  # still resumes: the WELCOME that replaced it may be lost (UDP)
        self.msg_bucket = TokenBucket(config.messages_per_second, config.message_burst, now)
        self.byte_bucket = TokenBucket(config.bytes_per_second, config.byte_burst, now)
        self.over_since = 0.0  # when it went over a rate limit (0: within its limits)
        self.last_drop = 0.0
        self.last_error = -1e9  # when it was last told ERROR rate limited
        self.grace_until = 0.0  # a seat without a session is kept until then
        self.snapshot_bucket = TokenBucket(0, 0, now)  # SYNC answers (room.SNAPSHOTS_PER_SECOND)
