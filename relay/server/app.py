"""Relay: one room's process-level object, the I/O around the sans-I/O room. Binds one port
number for UDP and TCP (WebSocket), owns the event loop's side of the room (its flushes at the
end of each pass, its timer, the clock), serves the admin port, and reports why the room ended.

    relay = Relay(RelayConfig(room_key=key))
    await relay.start()
    ...
    reason = await relay.wait_closed()
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import math
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

from relay.protocol.constants import WS_MAX_PLAINTEXT, CloseReason
from relay.protocol.gs2.wire import Encoder, room_hmac_key
from relay.protocol.packets import NATIVE
from relay.server import pacing, rides
from relay.server.config import RelayConfig
from relay.server.gs2 import max_message
from relay.server.links import LANE, SEND_BATCH, Doorway, UdpLane, UdpProtocol, UdpWriter, WsConnection
from relay.server.metrics import AdminServer, Counters, RelayMetrics
from relay.server.ratelimit import NATIVE as BUCKETS
from relay.server.room import Room
from relay.server.tls import Certificate, TlsTerminator
from relay.server.transport import UDP
from relay.settings import ListenError

NATIVE_PARTS = [
    name
    for name, built in (
        ("aead", NATIVE),
        ("sendmmsg", SEND_BATCH is not None),
        ("ratelimit", BUCKETS),
        ("pacing", pacing.NATIVE),
        ("lane", LANE is not None),
    )
    if built
]
"""The pieces of the C part in use: DATA sealing and opening, a pass's datagrams in one call,
token buckets, the pacer's controller, the UDP port read in C (relay/server/_lane.c; not with a
coalescing tick)."""

log = logging.getLogger("relay.server")


@dataclass(frozen=True, slots=True)
class RelayStats:
    members: int
    sessions: int
    messages_in: int
    messages_out: int
    bytes_in: int
    bytes_out: int
    started_at: float
    last_activity: float


def bind_pair(host: str, port: int, attempts: int = 50) -> tuple[socket.socket, socket.socket]:
    """A TCP listener and a UDP socket on the same port number (port 0: one free for both)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    last_error: OSError | None = None
    for _ in range(attempts if port == 0 else 1):
        # proto IPPROTO_TCP, not 0: asyncio sets TCP_NODELAY only on accepted sockets whose
        # listener says TCP, and without it Nagle holds small WebSocket frames for ~40 ms.
        tcp = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            tcp.bind((host, port))
            chosen = tcp.getsockname()[1]
            udp = socket.socket(family, socket.SOCK_DGRAM)
            try:
                udp.bind((host, chosen))
            except OSError as exc:
                udp.close()
                raise exc
        except OSError as exc:
            tcp.close()
            last_error = exc
            if exc.errno != errno.EADDRINUSE:
                raise
            continue
        for sock in (tcp, udp):
            sock.setblocking(False)
        for opt in (socket.SO_RCVBUF, socket.SO_SNDBUF):
            with contextlib.suppress(OSError):
                udp.setsockopt(socket.SOL_SOCKET, opt, 4 << 20)
        tcp.listen(256)
        return tcp, udp
    raise last_error or OSError("no free port for UDP and TCP")


class Relay:
    def __init__(self, config: RelayConfig) -> None:
        self.config = config
        self.counters = Counters()
        self.metrics = RelayMetrics(self.counters, self._gauges)
        self.room: Room | None = None
        self.host = config.host
        self.port = 0
        self.admin_port: int | None = None
        self._closed: asyncio.Future[CloseReason] | None = None
        self._ws: set[WsConnection] = set()
        self._tcp_server: asyncio.Server | None = None
        self._udp_transport: asyncio.DatagramTransport | None = None
        self._udp_lane: UdpLane | None = None
        self._admin: AdminServer | None = None
        self._doorway: Doorway | None = None
        self._flush_timer: asyncio.TimerHandle | None = None  # a tick's flush (coalesce_tick > 0)
        self._wake: asyncio.TimerHandle | None = None  # the room's next timer (`_arm_timer`)
        self._loop_lag = 0.0
        self._started_wall = time.time()
        self._session_listeners: list[Callable[[], None]] = []
        self._pacer: pacing.LoopPacer | None = None  # with a CPU budget (relay/server/pacing.py)
        self._rides: rides.Rides | None = None  # the loop's (relay/server/rides.py)
        self._tls: TlsTerminator | None = None  # with a certificate (relay/server/tls.py)

    # the Relay interface used by the agent (relay/agent) and tests

    @property
    def accepting_joins(self) -> bool:
        return self.room.accepting_joins if self.room else False

    @accepting_joins.setter
    def accepting_joins(self, value: bool) -> None:
        if self.room is not None:
            self.room.accepting_joins = value

    @property
    def shed_optional(self) -> bool:
        return self.room.shed_optional if self.room else False

    @shed_optional.setter
    def shed_optional(self, value: bool) -> None:
        if self.room is not None:
            self.room.shed_optional = value

    @property
    def quiet(self) -> bool:
        """Nobody in the room (nor handshaking): the caps guard then looks less often."""
        return self.room.quiet if self.room else True

    async def start(self) -> None:
        """Raises TlsError when the TLS certificate cannot be loaded, ListenError when a port
        cannot be bound: nothing is left listening either way."""
        loop = asyncio.get_running_loop()
        now = time.monotonic()
        tls = None
        if self.config.tls_cert and self.config.tls_key:
            certificate = Certificate(self.config.tls_cert, self.config.tls_key, now)
            tls = TlsTerminator(certificate, self.config.tls_handshakes_per_second, self.counters, now)
        self._tls = tls
        self._closed = loop.create_future()
        self.room = room = Room(self.config, self.counters, now, wall_offset=time.time() - now)
        room.on_session = self._session_began
        room.on_timer = self._arm_timer
        room.on_close = self._room_closed
        call_soon, call_later, monotonic = loop.call_soon, loop.call_later, time.monotonic
        room_flush = room.flush
        self._rides = riding = rides.for_loop(loop)  # periodic work due rides on the pass
        try:
            tcp, udp = bind_pair(self.config.host, self.config.port)
        except OSError as exc:
            raise ListenError(exc, f"{self.config.host}:{self.config.port} (udp and tcp)") from exc
        # the pass's datagrams leave together, in one sendmmsg where relay/server/_datagrams.c is built
        writer = UdpWriter(udp, self.counters)
        hold, release = writer.hold, writer.release

        def flush(now: float) -> None:
            hold()
            try:
                room_flush(now)
            finally:
                release()

        def flush_now() -> None:
            now = monotonic()
            flush(now)
            if now >= riding.due:
                riding.run(now)

        def on_flush(delay: float) -> None:  # the room asks: at the end of this pass, or after a tick
            if delay > 0:
                self._flush_timer = call_later(delay, flush_now)  # kept: cancelled when the relay ends
            else:
                call_soon(flush_now)

        pacer = pacing.for_loop(loop) if self.config.cpu_budget else None
        laned = LANE is not None and self.config.coalesce_tick <= 0  # the port read in C
        # what runs at the end of a pass the port read in C relayed (relay/server/_lane.c)
        hooks: list[tuple[object, str, Callable[[float], None]]] = [(riding, "due", riding.run)]
        ws_hooks = hooks.copy()  # ...and at the end of a pass that read members' WebSocket frames
        if pacer is not None:  # the pass's flush, then the pacer's rest (relay/server/pacing.py)
            self._pacer = pacer
            pacer.join(self, self.config.cpu_budget, self.config.max_pace)
            scheduled, passed, packets_in = pacer.scheduled, pacer.passed, self.counters.packets_in
            pace = pacer.pacer
            read_before = 0  # UDP datagrams read when the pacer last heard of a pass

            def rest(first_input: float) -> None:  # a pass that read a full batch has more waiting
                nonlocal read_before
                datagrams = packets_in[UDP] - read_before
                read_before = packets_in[UDP]
                passed(first_input, datagrams >= pacing.DATAGRAMS_PER_READ)

            def flush_paced() -> None:
                now = monotonic()
                try:
                    flush(now)
                    if now >= riding.due:
                        riding.run(now)
                finally:
                    rest(room.batch_start)
                    if not laned:  # the lane's read packs a pass per recipient itself
                        # what gathered while it rested leaves together: the room's pass, held whole
                        room.held = pace.pace > 0

            def on_flush_paced(delay: float) -> None:
                if delay > 0:
                    on_flush(delay)
                else:
                    scheduled()
                    call_soon(flush_paced)

            room.on_flush = on_flush_paced

            def lane_passed(now: float) -> None:  # a read: its CPU window over, or it paces
                scheduled()
                rest(now)

            def port_passed(now: float) -> None:  # the port's read: rests after this poll's reads
                scheduled()
                if pace.pace:
                    # Resting here, at the end of the port's read, a WebSocket member's socket
                    # ready in the same poll was read after the rest and rested again at its
                    # flush (the port's input then waited two paces), and in a process of
                    # several rooms each room's port rested in turn. Deferred past the poll's
                    # other reads, the pass rests once, after its last read; what a read of
                    # that poll flushes later does not rest again (LoopPacer._rest).
                    call_soon(rest, now)
                else:
                    rest(now)

            hooks.append((pace, "lane_due", port_passed))
            ws_hooks.append((pace, "lane_due", lane_passed))
        else:
            room.on_flush = on_flush
        self.port = tcp.getsockname()[1]
        if laned:
            # the port read in C: its output leaves at the end of each read, packed per recipient
            # (a relay that ticks must not send so: it gets the transport). One that paces rests
            # after each read (`Pacer.lane_due`), so a read finds what came during the rest and
            # its recipients get it together, as from the room's held pass.
            self._udp_lane = UdpLane(udp, room, writer, LANE, tuple(hooks))
            # members' WebSocket frames are read there too (WsConnection), each socket its own read:
            # their output leaves once a pass, at its end, and the same hooks run then (or at a
            # read's end, where no other read of the pass could share its sends: ws_flush_now)
            lane = self._udp_lane.lane
            lane.ws_limits(
                self.config.max_payload_ws,
                WS_MAX_PLAINTEXT,
                self.config.ws_send_buffer,
                tuple(ws_hooks),
                partial(call_soon, lane.ws_flush),
            )
        else:
            self._udp_transport, _ = await loop.create_datagram_endpoint(
                lambda: UdpProtocol(room, writer), sock=udp
            )
        self._doorway = doorway = Doorway(
            self.config.max_pending_connections, self.config.connect_timeout, self.counters
        )
        gs2 = Encoder(self.config.room_key, room.started) if self.config.gs2_clients else None
        if gs2 is not None and self._udp_lane is not None:  # GS2 clients' connections read in C too
            key = room_hmac_key(self.config.room_key)
            self._udp_lane.lane.gs2_limits(key, room.started, max_message(room))
        self._tcp_server = await loop.create_server(
            lambda: WsConnection(
                room, self._ws, doorway, gs2, tls, self._udp_lane.lane if self._udp_lane is not None else None
            ),
            sock=tcp,
        )
        if self.config.admin_port is not None:
            self._admin = AdminServer(self.metrics, self.health, self.readiness)
            try:
                self.admin_port = await self._admin.start(self.config.admin_host, self.config.admin_port)
            except BaseException as exc:  # taken, or a host no resolver takes: nothing left listening
                self._close_udp()
                self._tcp_server.close()
                if not isinstance(exc, OSError):
                    raise
                where = f"{self.config.admin_host}:{self.config.admin_port} (the admin port)"
                raise ListenError(exc, where) from exc
        self._arm_timer()
        admin = f" admin {self.config.admin_host}:{self.admin_port}" if self.admin_port else ""
        log.info(
            "relay listening %s %s:%d%s",
            "udp+ws+wss" if tls is not None else "udp+ws",
            self.host,
            self.port,
            admin,
            # "native": the pieces of the C part this relay runs (docs/architecture.md); none on an
            # install without a compiler, or with RELAY_PURE_PYTHON=1
            extra={
                "host": self.host,
                "port": self.port,
                "admin_port": self.admin_port,
                "native": NATIVE_PARTS,
            },
        )

    def health(self) -> tuple[bool, dict[str, object]]:
        """/healthz: alive while the room is open (the same shape as the control plane's)."""
        room = self.room
        alive = room is not None and not room.closed
        body: dict[str, object] = {"status": "ok" if alive else "unavailable", "component": "relay"}
        if not alive:
            body["reason"] = "the room has closed"
        body["members"] = len(room.members) if room else 0
        return alive, body

    def readiness(self) -> tuple[bool, dict[str, object]]:
        """/readyz: ready to take members: open, accepting joins, a seat free."""
        room = self.room
        members = len(room.members) if room else 0
        reason = (
            "the room has closed"
            if room is None or room.closed
            else "not accepting joins (over its caps)"
            if not room.accepting_joins
            else "the room is full"
            if members >= self.config.max_players
            else None
        )
        status = "ready" if reason is None else "unavailable"
        body: dict[str, object] = {"status": status, "component": "relay"}
        if reason is not None:
            body["reason"] = reason
        body |= {"members": members, "maxPlayers": self.config.max_players}
        return reason is None, body

    def _arm_timer(self) -> None:
        """Schedules the room's next wake-up at `Room.timer()`, or brings it forward (the room
        calls this when its timer may have come earlier): one timer at the earliest deadline,
        whether anyone is in the room or not, so a machine of idle or busy rooms is not a machine
        of periodic sweeps."""
        room = self.room
        if room is None or room.closed:
            return
        due = room.timer()
        if due == math.inf:
            return
        loop = asyncio.get_running_loop()
        when = loop.time() + max(0.0, due - time.monotonic())
        armed = self._wake
        if armed is not None:
            if armed.when() <= when:
                return
            armed.cancel()
        self._wake = loop.call_at(when, self._on_timer, when)

    def _on_timer(self, scheduled: float) -> None:
        self._wake = None
        self._loop_lag = max(0.0, asyncio.get_running_loop().time() - scheduled)
        room = self.room
        if room is None:
            return
        now = time.monotonic()
        try:
            room.handle_timer(now)
        except Exception:
            log.exception("room timer failed")
        self._arm_timer()
        riding = self._rides
        if riding is not None and now >= riding.due:  # a wake-up anyway
            riding.run(now)

    def pace_within(self, budget: float) -> None:
        """The caps guard's CPU budget (the tier's, or its cgroup's quota where lower): a relay that
        paces (a `cpu_budget` of its own) paces against the lower of the two."""
        if self._pacer is not None:
            self._pacer.limit(budget)

    def add_session_listener(self, callback: Callable[[], None]) -> None:
        """`callback()` whenever a session begins: wakes whatever sleeps longer while the room is
        quiet (the agent's heartbeat)."""
        self._session_listeners.append(callback)

    def _session_began(self) -> None:
        for callback in self._session_listeners:
            callback()

    def _gauges(self) -> dict[str, float | None]:
        room = self.room
        tls = self._tls
        buffered = sum(c.link.buffered for c in self._ws)
        return {
            "members": len(room.members) if room else 0,
            "sessions": len(room.sessions) if room else 0,
            "pending_handshakes": len(room.pending) if room else 0,
            "ws_send_buffer_bytes": buffered,
            "ws_connections": len(self._ws),  # TCP connections of the port, sessions or not
            "tls_connections": sum(1 for c in self._ws if c.secure),
            # Unix seconds; no sample without a certificate (deploy/prometheus: RelayTlsCertificateExpiring)
            "tls_certificate_expiry_timestamp_seconds": tls.certificate.not_after if tls else None,
            "event_loop_lag_seconds": self._loop_lag,
            "accepting_joins": 1.0 if self.accepting_joins else 0.0,
            "pace_seconds": self._pacer.pacer.pace if self._pacer is not None else 0.0,
            # the longest it paces (0: it never paces): at it for long, the room is busier than
            # its tier at the latency the tier promises (deploy/prometheus: RelayPacedAtLongest)
            "max_pace_seconds": self._pacer.pacer.max_pace if self._pacer is not None else 0.0,
        }

    def stats(self) -> RelayStats:
        c = self.counters
        room = self.room
        return RelayStats(
            members=len(room.members) if room else 0,
            sessions=len(room.sessions) if room else 0,
            messages_in=sum(c.messages_in),
            messages_out=sum(c.messages_out),
            bytes_in=sum(c.bytes_in),
            bytes_out=sum(c.bytes_out),
            started_at=self._started_wall,
            last_activity=self._started_wall + ((room.last_activity - room.started) if room else 0.0),
        )

    def _room_closed(self, reason: CloseReason, text: str) -> None:
        asyncio.get_running_loop().create_task(self._shutdown(reason))

    async def close(self, reason: CloseReason = CloseReason.SHUTDOWN, text: str = "") -> None:
        """CLOSING to every member, flush, stop listening; wait_closed() then returns `reason`.
        When it returns (as when wait_closed() does) every connection is gone and nothing of the
        relay is left scheduled on the loop, which other relays may share."""
        if self.room is None:
            return
        if not self.room.closed:
            self.room.close(reason, text, time.monotonic())
        if self._closed is not None:
            await asyncio.shield(self._closed)

    async def _shutdown(self, reason: CloseReason) -> None:
        try:
            if self._tcp_server is not None:
                self._tcp_server.close()
            deadline = time.monotonic() + self.config.drain_timeout
            while any(c.link.buffered for c in self._ws) and time.monotonic() < deadline:
                await asyncio.sleep(0.01)
            await asyncio.sleep(0)  # let the last UDP writes leave
            self._close_sockets(abort=False)
            for _ in range(100):  # each connection_lost comes within a pass or two
                if not self._ws:
                    break
                await asyncio.sleep(0.001)
            if self._admin is not None:
                await self._admin.close()
            self._stop()
        finally:
            self._ended(reason)

    def abort(self) -> None:
        """Stops listening and drops every connection now: no CLOSING, no drain. What a room in a
        group process gets where a room of its own process would get SIGKILL (relay/host/group.py)."""
        if self.room is not None:
            self.room.abort()  # takes nothing more, and a close() after it flushes nothing
        self._close_sockets(abort=True)
        if self._admin is not None:
            asyncio.get_running_loop().create_task(self._admin.close())
        self._stop()
        self._ended(CloseReason.SHUTDOWN)

    def _close_sockets(self, abort: bool) -> None:
        """The listeners and every connection: closed, or aborted with `abort` or when bytes are
        still unsent after the drain (a close would wait for a reader that never reads, and
        hold its descriptor past the relay's end)."""
        if self._tcp_server is not None:
            self._tcp_server.close()
        self._close_udp()
        for conn in list(self._ws):
            transport = conn.transport
            if transport is not None:
                if abort or transport.get_write_buffer_size():
                    transport.abort()
                else:
                    transport.close()
        if self._doorway is not None:
            self._doorway.close()

    def _close_udp(self) -> None:
        if self._udp_transport is not None:
            self._udp_transport.close()
        if self._udp_lane is not None:
            self._udp_lane.close()
            self._udp_lane = None

    def _stop(self) -> None:
        """Cancels the room's timer and its pending flush: nothing of the relay stays scheduled."""
        for handle in (self._flush_timer, self._wake):
            if handle is not None:
                handle.cancel()
        if self._pacer is not None:
            self._pacer.leave(self)

    def _ended(self, reason: CloseReason) -> None:
        if self._closed is not None and not self._closed.done():
            self._closed.set_result(reason)

    async def wait_closed(self) -> CloseReason:
        assert self._closed is not None, "start() first"
        return await asyncio.shield(self._closed)
