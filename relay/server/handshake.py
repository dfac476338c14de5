"""The relay's side of the handshake (docs/protocol.md 5.1): HELLO in, ACCEPT out, and the
memory that makes each HELLO good for one session.

A HELLO is verified against the room's pre-shared key, answered with an ACCEPT, and its session
is pending until the first authenticated DATA. A retransmitted HELLO (the same ephemeral key
e_c) from the same UDP address gets the same ACCEPT again; from anywhere else, or once its
handshake has completed (the last `COMPLETED_MEMORY` are remembered), it is a replay: dropped.
At most `max_pending` handshakes are pending at once (a flood of valid HELLOs cannot hold the
room's memory).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Container

from relay.protocol.constants import PUBLIC_KEY_SIZE, ProtocolError
from relay.protocol.packets import make_accept, verify_hello
from relay.server.metrics import Counters
from relay.server.sessions import Session
from relay.server.transport import Link

COMPLETED_MEMORY = 4096
"""e_c values of completed handshakes remembered, to ignore their HELLOs replayed."""

_E_C = slice(16, 16 + PUBLIC_KEY_SIZE)  # the client's ephemeral public key inside a HELLO


def client_public(hello: bytes) -> bytes:
    return hello[_E_C]


class Handshakes:
    def __init__(
        self, psk: bytes, counters: Counters, max_pending: int, rand: Callable[[int], bytes]
    ) -> None:
        self.psk = psk
        self.counters = counters
        self.max_pending = max_pending
        self.rand = rand
        self.pending: dict[bytes, Session] = {}
        self.completed: OrderedDict[bytes, None] = OrderedDict()

    def seen(self, e_c: bytes) -> bool:
        """A HELLO with this key was answered before (pending or completed)."""
        return e_c in self.pending or e_c in self.completed

    def repeated_udp(self, e_c: bytes, addr: object, received: int) -> bool:
        """A HELLO whose key was seen before, over UDP: answered again when it is a retransmission
        from the same address of a handshake still pending, else dropped as a replay. False:
        a new key, for `open`."""
        pending = self.pending.get(e_c)
        if pending is not None:
            path = pending.path
            if path is not None and path.addr == addr and pending.accept is not None:
                path.credit(received)
                path.send(pending.accept)
            else:
                self.counters.drops["hello_replay"] += 1
            return True
        if e_c in self.completed:
            self.counters.drops["hello_replay"] += 1
            return True
        return False

    def open(
        self, hello: bytes, link: Callable[[], Link], taken: Container[int], now: float
    ) -> Session | None:
        """Verifies a new HELLO and makes its session (ACCEPT in `session.accept`, not yet sent);
        None when it is dropped (counted by reason). `link()` is called only for a good HELLO."""
        c = self.counters
        try:
            verify_hello(self.psk, hello)
        except ProtocolError:
            c.handshake_failures += 1
            c.drops["handshake"] += 1
            return None
        if len(self.pending) >= self.max_pending:
            c.drops["handshake_flood"] += 1
            return None
        sid = self.new_sid(taken)
        e_c = client_public(hello)
        try:
            accept, keys = make_accept(self.psk, e_c, sid)
        except ProtocolError as exc:
            c.handshake_failures += 1
            c.drops[exc.reason] += 1
            return None
        session = Session(sid, link(), keys.k_c2s, keys.k_s2c, accept, e_c, now)
        self.pending[e_c] = session
        c.handshakes += 1
        return session

    def complete(self, session: Session) -> None:
        """The session's first authenticated DATA: its HELLO is spent."""
        session.accept = None
        self.pending.pop(session.client_public, None)
        self.completed[session.client_public] = None
        if len(self.completed) > COMPLETED_MEMORY:
            self.completed.popitem(last=False)

    def abandon(self, session: Session) -> None:
        """A session that goes away (whether or not its handshake completed)."""
        self.pending.pop(session.client_public, None)

    def new_sid(self, taken: Container[int]) -> int:
        """A random non-zero session id not in `taken`."""
        while True:
            sid = int.from_bytes(self.rand(4), "big")
            if sid and sid not in taken:
                return sid
