"""The asyncio client: `await connect(...)` gives a joined `Client` over UDP or WebSocket.

All protocol logic lives in the sans-I/O `relay.protocol.client.ClientConnection`; this module
only moves its packets, runs its one timer and hands its events to the caller. Costs per message
are kept flat for the load-test bots: send() queues and schedules at most one flush per event
loop pass (so everything sent in one pass is coalesced into as few packets as fit), received
packets are handled in the transport callback, and no task is created per message (the only
tasks are a WebSocket's reader and a reconnect in progress).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterable

from relay.protocol.client import (
    ClientConfig,
    ClientConnection,
    ClientEvent,
    ClientState,
    ClientStats,
    ClosingEvent,
    ConnectionLost,
    ErrorEvent,
    Member,
    Welcomed,
)
from relay.protocol.constants import RESUMED_ELSEWHERE, ProtocolError
from relay.protocol.messages import Limits

from .errors import ConnectError, JoinRefused, Unreachable, WrongRoomKey
from .events import Disconnected
from .links import Link, UdpLink, WsLink

log = logging.getLogger(__name__)

_RECONNECT_BACKOFF_MAX = 1.0
_OPEN_ERRORS = (OSError, asyncio.TimeoutError, ConnectError, ProtocolError, ValueError)
_POLICY_VIOLATION = 1008  # a relay's WebSocket close for a HELLO it cannot authenticate
_NORMAL = 1000


async def _tcp_answers(host: str, port: int, timeout: float) -> bool:
    """Whether something accepts TCP on host:port: a relay serves WebSocket on its UDP port's
    number, so after a silent UDP handshake this tells "no relay there" from "the relay ignored
    us" (which it does to a HELLO made with another room's key)."""
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
    except (OSError, TimeoutError):
        return False
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return True


class Client:
    """A joined member of one room. Create it with `connect()`."""

    __slots__ = (
        "_closing",
        "_conn",
        "_ended",
        "_events",
        "_flush_pending",
        "_host",
        "_link",
        "_loop",
        "_port",
        "_reconnect",
        "_reconnect_task",
        "_timeout",
        "_timer",
        "_tls",
        "_waiter",
        "_welcome",
        "on_event",
    )

    def __init__(
        self,
        conn: ClientConnection,
        host: str,
        port: int,
        timeout: float,
        reconnect: bool,
        max_events: int | None = 100_000,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        self._conn = conn
        self._tls = tls
        self._host = host
        self._port = port
        self._timeout = timeout
        self._reconnect = reconnect
        self._loop = asyncio.get_running_loop()
        self._link: Link | None = None
        self._events: deque[ClientEvent | Disconnected] = deque(maxlen=max_events)
        self._waiter: asyncio.Future[None] | None = None
        self._welcome: asyncio.Future[None] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._reconnect_task: asyncio.Task[None] | None = None
        self._flush_pending = False
        self._ended = False
        self._closing = False
        self.on_event: Callable[[ClientEvent | Disconnected], None] | None = None
        """When set, events go to this callback instead of the queue (cheapest for bots)."""

    # ---- what callers read ----

    @property
    def connection_id(self) -> int | None:
        return self._conn.connection_id

    @property
    def members(self) -> dict[int, Member]:
        """Every other member: connection id -> Member(connection_id, user_id, profile)."""
        return self._conn.members

    @property
    def rtt(self) -> float | None:
        """Smoothed round-trip time in seconds from PING/PONG, None before the first PONG."""
        return self._conn.rtt

    @property
    def limits(self) -> Limits | None:
        return self._conn.limits

    @property
    def user_id(self) -> str:
        return self._conn.user_id

    @property
    def transport(self) -> str:
        return self._conn.transport

    @property
    def state(self) -> ClientState:
        return self._conn.state

    @property
    def closed(self) -> bool:
        return self._ended

    @property
    def stats(self) -> ClientStats:
        """Raw counters: packets/bytes/messages in and out, `dropped` by reason, reconnects."""
        return self._conn.stats

    @property
    def connection(self) -> ClientConnection:
        """The sans-I/O state machine underneath (for tests and bots)."""
        return self._conn

    # ---- what callers do ----

    def send(self, data: bytes, targets: Iterable[int] | None = None) -> None:
        """Queues `data` for every other member (or only `targets`); sent at the end of this loop
        pass, coalesced with everything else queued in it. Unreliable over UDP."""
        self._conn.send(data, targets)
        if not self._flush_pending:
            self._flush_pending = True
            self._loop.call_soon(self._flush)

    def update_profile(self, profile: bytes) -> None:
        """Sends PROFILE; ValueError past the room's profile limit (the relay would refuse it)."""
        self._conn.update_profile(profile)
        self._schedule_flush()

    def ping(self) -> None:
        """Sends a PING now; `rtt` updates when the PONG arrives."""
        self._conn.ping(self._loop.time())
        self._schedule_flush()

    def sync(self) -> None:
        """Asks the relay for a fresh member snapshot (done by itself on unknown senders)."""
        self._conn.sync(self._loop.time())
        self._schedule_flush()

    def drain_events(self) -> list[ClientEvent | Disconnected]:
        """Takes every queued event at once without waiting."""
        events = list(self._events)
        self._events.clear()
        return events

    async def next_event(self, timeout: float | None = None) -> ClientEvent | Disconnected | None:
        """The next event; None once the client is closed and every event was read. Raises
        TimeoutError when nothing comes within `timeout` seconds."""
        events = self._events
        if events:
            return events.popleft()
        if self._ended:
            return None
        waiter = self._loop.create_future()
        self._waiter = waiter
        try:
            if timeout is None:
                await waiter
            else:
                await asyncio.wait_for(waiter, timeout)
        finally:
            self._waiter = None
        return events.popleft() if events else None

    async def next_event_of(
        self,
        kind: type | tuple[type, ...],
        timeout: float = 5.0,
        where: Callable[[object], bool] | None = None,
    ) -> ClientEvent | Disconnected:
        """The next event of `kind` (matching `where`); other events read meanwhile are DISCARDED.
        Raises TimeoutError, or ConnectError if the client ends first. Meant for tests and bots."""
        deadline = self._loop.time() + timeout
        while True:
            event = await self.next_event(max(0.0, deadline - self._loop.time()))
            if event is None:
                raise ConnectError("client closed while waiting for an event")
            if isinstance(event, kind) and (where is None or where(event)):
                return event

    async def events(self) -> AsyncIterator[ClientEvent | Disconnected]:
        """Every event until the client is closed."""
        while True:
            event = await self.next_event()
            if event is None:
                return
            yield event

    async def close(self) -> None:
        """Sends BYE (after whatever is still queued) and closes the transport."""
        if self._closing:
            return
        self._closing = True
        task = self._reconnect_task
        if task is not None and task is not asyncio.current_task():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        link = self._link
        packets = self._conn.bye()
        if link is not None:
            link.send_many(packets)
            await link.close()
        self._end()

    def drop(self) -> None:
        """Cuts the transport under the client without BYE, as a network failure would: the
        client then resumes (reconnect=True) or ends with Disconnected. For tests and bots."""
        if self._link is not None and not self._closing:
            self._link.abort()

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # ---- starting and resuming ----

    async def _open_link(self) -> Link:
        conn = self._conn
        where = f"{self._host}:{self._port} ({conn.transport})"
        try:
            if conn.transport == "ws":
                return await WsLink.open(self, self._host, self._port, self._timeout, self._tls)
            return await UdpLink.open(self, self._host, self._port)
        except (ConnectionRefusedError, TimeoutError) as exc:
            why = "nothing listens there" if isinstance(exc, ConnectionRefusedError) else "no answer"
            raise Unreachable(f"cannot reach a relay at {where}: {why}") from exc
        except _OPEN_ERRORS as exc:
            raise ConnectError(f"cannot reach a relay at {where}: {exc}") from exc
        except Exception as exc:  # websockets' handshake errors (InvalidStatus, InvalidURI, ...)
            raise ConnectError(f"cannot reach a relay at {where}: {exc}") from exc

    async def _handshake(self, first: bool) -> None:
        """Sends HELLO (the sans-I/O machine retransmits) and waits for the WELCOME."""
        conn = self._conn
        self._welcome = self._loop.create_future()
        now = self._loop.time()
        packets = conn.initiate(now) if first else conn.reconnect(now)
        assert self._link is not None
        self._link.send_many(packets)
        self._arm_timer()
        try:
            await asyncio.wait_for(asyncio.shield(self._welcome), self._timeout)
        except TimeoutError:
            raise await self._silence() from None
        finally:
            self._welcome = None

    async def _silence(self) -> ConnectError:
        """Why a handshake got no answer within the timeout, as far as can be told."""
        transport = self._conn.transport
        where = f"{self._host}:{self._port} ({transport})"
        waited = f"no answer within {self._timeout:g} s"
        if transport == "udp":
            if not await _tcp_answers(self._host, self._port, min(1.0, self._timeout)):
                return Unreachable(
                    f"cannot reach a relay at {where}: {waited}, and nothing listens on its TCP port "
                    "(a wrong address, a firewall, or a room that has ended)"
                )
            return WrongRoomKey(
                f"the relay at {where} ignored the handshake ({waited}; its TCP port answers): "
                "most likely the wrong room key (a relay never answers a HELLO made with another key)"
            )
        return ConnectError(f"the relay at {where} did not complete the handshake: {waited}")

    async def _start(self) -> None:
        self._link = await self._open_link()
        try:
            await self._handshake(first=True)
        except BaseException:
            self._closing = True
            self._conn.close()
            await self._link.close()
            self._end()
            raise

    def _start_reconnect(self) -> None:
        if self._reconnect_task is None and not self._closing:
            self._reconnect_task = self._loop.create_task(self._reconnect_loop())

    async def _reconnect_loop(self) -> None:
        conn = self._conn
        limits = conn.limits
        window = limits.resume_grace_ms / 1000 if limits is not None and limits.resume_grace_ms else 15.0
        deadline = self._loop.time() + max(window, self._timeout)
        backoff = 0.05
        reason = "resume window passed"
        try:
            while not self._closing and conn.state is not ClientState.CLOSED:
                remaining = deadline - self._loop.time()
                if remaining <= 0:
                    break
                try:
                    if conn.transport == "ws" or self._link is None or self._link.closed:
                        old = self._link
                        self._link = None
                        if old is not None:
                            # it went silent or failed its handshake: a closing handshake would
                            # only wait (close_timeout) for an answer, and hold up the resume
                            old.abort()
                            await old.close()
                        self._link = await asyncio.wait_for(self._open_link(), remaining)
                    await self._handshake(first=False)
                    return
                except JoinRefused as exc:
                    reason = str(exc)
                    break
                except (ConnectError, TimeoutError) as exc:
                    reason = str(exc) or "timeout"
                    if conn.state is ClientState.CLOSED:
                        break
                await asyncio.sleep(min(backoff, max(0.0, deadline - self._loop.time())))
                backoff = min(backoff * 2, _RECONNECT_BACKOFF_MAX)
            if not self._closing:
                conn.close()
                self._deliver(Disconnected(reason))
                self._closing = True
                if self._link is not None:
                    await self._link.close()
                self._end()
        finally:
            self._reconnect_task = None

    # ---- LinkSink: called by the transport ----

    def packet_received(self, data: bytes) -> None:
        conn = self._conn
        try:
            events = conn.receive(data, self._loop.time())
        except Exception:  # a bug, not bad input (that is dropped inside); keep the client alive
            log.exception("client: error handling a packet")
            conn.stats.drop("internal_error")
            return
        if events:
            self._dispatch(events)
        if conn.has_output:
            self._schedule_flush()
        elif self._timer is None:
            self._arm_timer()

    def link_lost(self, link: Link) -> None:
        if link is not self._link or self._closing or self._ended:
            return
        conn = self._conn
        if conn.state is ClientState.CLOSED:  # CLOSING or a refused JOIN came first
            self._closing = True
            self._end()
            return
        if link.close_code == _NORMAL and link.close_reason == RESUMED_ELSEWHERE:
            # another client resumed this seat with our token (a copied session): taking it back
            # would only take it from that one, which would take it back, without end
            conn.close()
            self._deliver(Disconnected(RESUMED_ELSEWHERE))
            self._finish()
            return
        if self._welcome is not None:  # lost during a handshake: that attempt failed
            where = f"{self._host}:{self._port} ({conn.transport})"
            if link.close_code == _POLICY_VIOLATION:
                error: ConnectError = WrongRoomKey(
                    f"the relay at {where} refused the handshake (WebSocket close 1008): "
                    "the wrong room key (or another protocol version)"
                )
            else:
                error = ConnectError(f"the relay at {where} closed the connection during the handshake")
            self._resolve_welcome(error)
            return
        self._dispatch(conn.connection_lost(self._loop.time()))

    def link_error(self, reason: str, exc: Exception | None = None) -> None:
        self._conn.stats.drop(reason)
        if isinstance(exc, ConnectionRefusedError) and self._welcome is not None:
            # ICMP port unreachable for our HELLO: nothing listens there (no need to wait it out)
            where = f"{self._host}:{self._port} ({self._conn.transport})"
            self._resolve_welcome(Unreachable(f"cannot reach a relay at {where}: nothing listens there"))

    # ---- internals ----

    def _dispatch(self, events: list[ClientEvent]) -> None:
        for event in events:
            kind = type(event)
            if kind is Welcomed:
                self._resolve_welcome(None)
                continue
            self._deliver(event)
            if kind is ConnectionLost:
                if self._reconnect and not self._closing:
                    self._start_reconnect()
                else:
                    self._conn.close()
                    self._deliver(Disconnected(event.reason))
                    self._finish()
            elif kind is ClosingEvent or (kind is ErrorEvent and self._conn.state is ClientState.CLOSED):
                if self._welcome is not None:
                    if kind is ErrorEvent:
                        self._resolve_welcome(JoinRefused(event.code, event.text))
                    else:
                        self._resolve_welcome(ConnectError(f"relay closing: {event.reason} {event.text}"))
                else:
                    self._finish()
            elif self._welcome is not None and self._conn.state is ClientState.JOINED:
                self._resolve_welcome(None)  # Resumed

    def _resolve_welcome(self, exc: BaseException | None) -> None:
        waiter = self._welcome
        if waiter is not None and not waiter.done():
            if exc is None:
                waiter.set_result(None)
            else:
                waiter.set_exception(exc)

    def _deliver(self, event: ClientEvent | Disconnected) -> None:
        callback = self.on_event
        if callback is not None:
            try:
                callback(event)
            except Exception:  # the caller's bug must not kill the transport callback
                log.exception("client: on_event callback failed")
            return
        events = self._events
        if len(events) == events.maxlen:
            self._conn.stats.drop("event_overflow")  # the oldest unread event is discarded
        events.append(event)
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _finish(self) -> None:
        """The session is over (CLOSING, refused, gave up): close the transport in the background."""
        if self._closing:
            return
        self._closing = True
        link = self._link
        if link is not None:
            self._loop.create_task(link.close())
        self._end()

    def _end(self) -> None:
        self._ended = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _schedule_flush(self) -> None:
        if not self._flush_pending:
            self._flush_pending = True
            self._loop.call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_pending = False
        packets = self._conn.datagrams_to_send(self._loop.time())
        link = self._link
        if packets and link is not None:
            link.send_many(packets)
        self._arm_timer()

    def _arm_timer(self) -> None:
        if self._ended:
            return
        when = self._conn.timer()
        handle = self._timer
        if when is None:
            if handle is not None:
                handle.cancel()
                self._timer = None
            return
        if handle is not None:
            if handle.when() <= when:
                return  # fires first; it re-arms for the later deadline
            handle.cancel()
        self._timer = self._loop.call_at(when, self._on_timer, when)

    def _on_timer(self, when: float) -> None:
        self._timer = None
        events = self._conn.handle_timer(max(self._loop.time(), when))
        if events:
            self._dispatch(events)
        self._flush()


async def connect(
    host: str,
    port: int,
    room_key: str | bytes,
    user_id: str,
    profile: bytes = b"",
    transport: str = "udp",
    access_token: str | None = None,
    timeout: float = 5.0,
    reconnect: bool = True,
    *,
    resume_token: bytes | None = None,
    config: ClientConfig | None = None,
    max_events: int | None = 100_000,
    tls: ssl.SSLContext | bool = False,
) -> Client:
    """Joins the room at host:port; returns once the WELCOME is complete.

    Raises JoinRefused(code, text) when the relay refuses the JOIN, WrongRoomKey when a relay is
    there but will not complete the handshake (the wrong key), Unreachable when no relay is there,
    and ConnectError (their base) for anything else within `timeout` seconds. With `reconnect`, a
    lost transport (WS closed without CLOSING, or UDP silence past the keepalive timeout) is
    resumed with the resume token; `Resumed` is emitted on success and `Disconnected` once the
    resume window has passed. `max_events` bounds the unread event queue (the oldest are dropped;
    None: unbounded). `tls` (WebSocket only): wss:// instead of ws:// to a relay with a TLS
    certificate, verified against the system's CAs (True) or the context's; `host` is the name
    checked against the certificate, so give the relay's DNS name, not its address.
    """
    if tls and transport != "ws":
        raise ValueError("tls is for transport='ws' (UDP is encrypted end to end already)")
    context = ssl.create_default_context() if tls is True else tls or None
    conn = ClientConnection(room_key, user_id, profile, access_token, transport, resume_token, config)
    client = Client(conn, host, port, timeout, reconnect, max_events, context)
    await client._start()
    return client
