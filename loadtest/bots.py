"""Player bots on the project's Python client (relay.client): they behave like players.

A bot sends at `hz` with jitter, payload sizes drawn from a distribution, a mix of broadcasts
and targeted sends, profile updates every so often, and (for churn) leaves, rejoins and
dropped connections that the client resumes. Every payload carries the loadtest header
(loadtest.payload) so receivers measure one-way latency, loss, duplicates and reordering.

Accounting: a sender counts, per recipient user id, what it addressed to whom (from its member
table at send time); a receiver counts, per sender, what arrived. The harness joins the two
(loadtest.streams.account), so sent + unaddressed = delivered + lost per recipient.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import ssl
import time
from dataclasses import dataclass, field
from typing import Any

from loadtest import hist as hdr
from loadtest import payload as bot_payload
from loadtest.loopback import require_loopback
from loadtest.streams import RecipientStats


def unverified_tls() -> ssl.SSLContext:
    """A client context that takes any certificate: the load tests' own relays on loopback."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


@dataclass(frozen=True, slots=True)
class Behaviour:
    """How a bot plays. Defaults: GS2's realtime1.nano reference player (3 msg/s)."""

    hz: float = 3.0
    payload_sizes: tuple[int, ...] = (32, 64, 100, 200)
    payload_weights: tuple[float, ...] = (0.3, 0.3, 0.3, 0.1)
    targeted_fraction: float = 0.2  # share of sends to one random member instead of everyone
    profile_every: float = 5.0  # seconds between profile updates (0 = never)
    jitter: float = 0.2  # +-20% on each send interval


def user_id(index: int) -> str:
    return f"bot{index}"


def index_of(user: str) -> int | None:
    return int(user[3:]) if user.startswith("bot") and user[3:].isdigit() else None


@dataclass(eq=False)
class Bot:
    """One player: a relay.client connection plus its counters."""

    index: int
    transport: str
    behaviour: Behaviour
    client: Any = None
    seq: int = 0
    step: int = 0
    addressed: dict[str, int] = field(default_factory=dict)
    arrivals: RecipientStats = field(default_factory=RecipientStats)
    latency: Any = field(default_factory=hdr.new)
    events: dict[str, int] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    sent: int = 0
    join_s: float | None = None
    _rng: random.Random = field(default_factory=random.Random)
    _reader: Any = None

    @property
    def user_id(self) -> str:
        return user_id(self.index)

    async def connect(self, host: str, port: int, room_key: str, timeout: float = 10.0, **kw: Any) -> None:
        """Joins on the bot's transport: "udp" or "ws" (relay.client), "wss" (relay.client's ws
        over TLS, to a relay with a certificate: not verified, the load is the relay's to carry),
        or "gs2" (GS2's game client wire, loadtest/gs2client.py)."""
        if self.transport == "gs2":
            from loadtest.gs2client import connect
        else:
            from relay.client import connect

        require_loopback(host, "relay address")
        transport = self.transport
        if transport == "wss":
            transport, kw["tls"] = "ws", unverified_tls()
        t0 = time.monotonic()
        self.client = await connect(
            host, port, room_key, self.user_id, profile=b"p0", transport=transport, timeout=timeout, **kw
        )
        self.join_s = time.monotonic() - t0
        if hasattr(self.client, "on_event"):
            self.client.on_event = self._on_event
        else:  # a client without the callback: read its event stream in a task
            self._reader = asyncio.ensure_future(self._read_events())

    async def _read_events(self) -> None:
        async for event in self.client.events():
            self._on_event(event)

    def _count(self, name: str) -> None:
        self.events[name] = self.events.get(name, 0) + 1

    def send_one(self) -> None:
        """One message: broadcast, or to one random member; counts who it was addressed to."""
        client = self.client
        members = list(client.members.values())
        if not members:
            return
        b = self.behaviour
        size = self._rng.choices(b.payload_sizes, b.payload_weights)[0]
        self.seq += 1
        data = bot_payload.build(size, self.step, self.index, self.seq, time.monotonic_ns())
        if self._rng.random() < b.targeted_fraction:
            target = self._rng.choice(members)
            client.send(data, targets=[target.connection_id])
            recipients = [target]
        else:
            client.send(data)
            recipients = members
        for m in recipients:
            self.addressed[m.user_id] = self.addressed.get(m.user_id, 0) + 1
        self.sent += 1

    async def play(self, until: float) -> None:
        """Sends at hz (jittered) until `until` (monotonic s), with periodic profile updates."""
        b = self.behaviour
        interval = 1.0 / b.hz if b.hz > 0 else None
        next_profile = time.monotonic() + b.profile_every * self._rng.random() if b.profile_every else None
        next_send = time.monotonic() + (interval or 0) * self._rng.random()
        while True:
            now = time.monotonic()
            if now >= until:
                return
            if interval is not None and now >= next_send:
                try:
                    self.send_one()
                except Exception as exc:  # a closed client: stop sending, report it
                    self.errors.append(f"send: {exc!r}")
                    return
                next_send += interval * (1 + b.jitter * (2 * self._rng.random() - 1))
                if next_send < now - 1.0:  # far behind (a stall): do not burst to catch up
                    next_send = now
            if next_profile is not None and now >= next_profile:
                with contextlib.suppress(Exception):
                    self.client.update_profile(f"p{self.seq}".encode())
                    self._count("profile_sent")
                next_profile = now + b.profile_every
            wake = min(x for x in (next_send if interval else until, next_profile or until, until))
            await asyncio.sleep(max(0.0, wake - time.monotonic()))

    def _on_event(self, event: Any) -> None:
        """The client's event callback (cheaper than iterating events(): no queue, no task)."""
        if type(event).__name__ == "Received":
            parsed = bot_payload.parse(event.data)
            if parsed is None:
                self._count("foreign")
                return
            step, sender, seq, sent_ns = parsed
            if step != (self.step & 0xFFFF):
                self._count("other_step")
                return
            hdr.record_us(self.latency, (time.monotonic_ns() - sent_ns) / 1000)
            self.arrivals.arrive(sender, seq)
        else:
            self._count(type(event).__name__)

    async def listen(self) -> None:
        """Events arrive through the callback set at connect(); this only waits to be cancelled."""
        await asyncio.Event().wait()

    async def close(self) -> None:
        if self.client is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.client.close(), 2.0)

    def result(self) -> dict[str, Any]:
        return {
            "user_id": self.user_id,
            "transport": self.transport,
            "sent": self.sent,
            "addressed": dict(self.addressed),
            "received": {user_id(int(k)): v for k, v in self.arrivals.to_json().items()},
            "latency_hist": hdr.encode(self.latency),
            "events": dict(self.events),
            "errors": self.errors[:5],
            "join_s": self.join_s,
        }


_pending: set[asyncio.Future[Any]] = set()  # keeps fire-and-forget closes alive until they finish


def drop_transport(client: Any) -> bool:
    """Cuts a client's transport under it (no BYE) so it must resume, as a lost connection would.

    relay.client may expose `drop()` / `_drop_transport()` for tests; otherwise close whatever
    socket or websocket it holds. Returns False when nothing could be dropped.
    """
    for name in ("drop", "drop_transport", "_drop_transport", "simulate_drop"):
        fn = getattr(client, name, None)
        if callable(fn):
            result = fn()
            if asyncio.iscoroutine(result):
                _pending.add(asyncio.ensure_future(result))
            return True
    for name in ("_link", "_transport", "_ws", "_websocket", "_sock"):
        obj = getattr(client, name, None)
        close = getattr(obj, "abort", None) or getattr(obj, "close", None)
        if callable(close) and not isinstance(obj, str):
            result = close()
            if asyncio.iscoroutine(result):
                _pending.add(asyncio.ensure_future(result))
            return True
    return False
