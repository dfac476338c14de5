"""How a room ends (idle, lifetime, SIGTERM drain of a real `relay serve` process) and the admin port."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import re
import signal
import socket
import weakref
from dataclasses import replace

import pytest

import relay.client as rc
import relay.server.metrics as relay_metrics
from relay.embedded import room
from relay.protocol import packets
from relay.protocol.constants import UDP_HELLO_PAD_TO, CloseReason
from relay.protocol.keys import generate_room_key
from relay.protocol.wsframes import PING, client_frame
from relay.server import links, pacing, ratelimit
from relay.server.app import Relay
from relay.server.config import RelayConfig

from .helpers import FAST, client, drops, eventually, metric, serve_process
from .rawpeer import UdpPeer, WsPeer

pytestmark = pytest.mark.timeout(30)


async def _closing(c: rc.Client, timeout: float = 3.0) -> rc.ClosingEvent:
    got = await c.next_event_of(rc.ClosingEvent, timeout)
    assert c.connection.state.value == "closed"
    return got  # type: ignore[return-value]


async def test_idle_room_closes_with_reason_idle() -> None:
    # keepalive 10 s: the clients' first PING is 2 s away, so nothing counts as activity after JOIN
    async with room(keepalive_timeout=10.0, idle_timeout=1.0) as r:
        a = await client(r, "a", "udp")
        b = await client(r, "b", "ws")
        t0 = asyncio.get_running_loop().time()
        for c in (a, b):
            assert (await _closing(c)).reason == CloseReason.IDLE
        assert 0.8 < asyncio.get_running_loop().time() - t0 < 2.5
        assert await asyncio.wait_for(r.relay.wait_closed(), 2) == CloseReason.IDLE
        assert r.relay.stats().members == 0


async def test_activity_keeps_a_room_from_idling() -> None:
    async with room(keepalive_timeout=10.0, idle_timeout=0.6) as r:
        a = await client(r, "a", "udp")
        b = await client(r, "b", "udp")
        for i in range(8):  # 1.2 s of traffic, twice the idle timeout
            a.send(b"%d" % i)
            await asyncio.sleep(0.15)
        assert not r.relay.room.closed
        assert (await _closing(a)).reason == CloseReason.IDLE  # and idles once it stops
        assert await asyncio.wait_for(r.relay.wait_closed(), 2) == CloseReason.IDLE
        await b.close()


async def test_lifetime_closes_an_active_room() -> None:
    async with room(keepalive_timeout=0.6, idle_timeout=30.0, lifetime=1.0) as r:
        a = await client(r, "a", "udp")
        b = await client(r, "b", "ws")
        for c in (a, b):
            assert (await _closing(c)).reason == CloseReason.LIFETIME
        assert await asyncio.wait_for(r.relay.wait_closed(), 2) == CloseReason.LIFETIME


async def test_sigterm_drains_members_and_exits_zero() -> None:
    key = generate_room_key()
    # its log is JSON lines on stderr; the first says where it listens, once
    proc, listening = await serve_process(key, "--port", "0")
    try:
        assert re.match(r"relay listening udp\+ws [\d.]+:\d+$", listening["message"]), listening
        # the C part it runs (none where not built, or with RELAY_PURE_PYTHON=1)
        built = (
            ("aead", packets.NATIVE),
            ("sendmmsg", links.SEND_BATCH is not None),
            ("ratelimit", ratelimit.NATIVE),
            ("pacing", pacing.NATIVE),
            ("lane", links.LANE is not None),
        )
        assert listening["native"] == [name for name, yes in built if yes]
        host, port = listening["host"], listening["port"]
        members = [
            await rc.connect(host, port, key, f"m{i}", transport=t, timeout=3)
            for i, t in enumerate(["udp", "ws", "udp", "ws"])
        ]
        t0 = asyncio.get_running_loop().time()
        proc.send_signal(signal.SIGTERM)
        for c in members:
            got = await _closing(c)
            assert got.reason == CloseReason.SHUTDOWN
        code = await asyncio.wait_for(proc.wait(), 2.0)
        assert code == 0
        assert asyncio.get_running_loop().time() - t0 < 2.0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def _get(port: int, path: str) -> tuple[int, str]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET {path} HTTP/1.0\r\nHost: x\r\n\r\n".encode())
    await writer.drain()
    raw = await asyncio.wait_for(reader.read(), 3)
    writer.close()
    with contextlib.suppress(Exception):
        await writer.wait_closed()
    head, _, body = raw.decode().partition("\r\n\r\n")
    return int(head.split()[1]), body


async def test_admin_metrics_and_healthz() -> None:
    async with room(admin_port=0, keepalive_timeout=5.0) as r:
        port = r.relay.admin_port
        assert port
        status, body = await _get(port, "/healthz")
        assert (status, json.loads(body)) == (200, {"status": "ok", "component": "relay", "members": 0})
        status, body = await _get(port, "/readyz")
        assert status == 200 and json.loads(body)["status"] == "ready"
        a = await client(r, "a", "udp")
        b = await client(r, "b", "ws")
        a.send(b"hi")
        await b.next_event_of(rc.Received, 3)
        status, text = await _get(port, "/metrics")
        assert status == 200
        for name in (
            "relay_messages_in_total",
            "relay_messages_out_total",
            "relay_bytes_in_total",
            "relay_handshakes_total",
            "relay_members",
            "relay_fanout_seconds_bucket",
        ):
            assert name in text, name
        assert metric(text, "relay_members") == 2
        assert metric(text, "relay_handshakes_total") >= 2
        # every flush so far (WELCOMEs, JOINs, the message) in the histogram, buckets cumulative
        flushes = metric(text, "relay_fanout_seconds_count")
        assert flushes >= 3 and metric(text, "relay_fanout_seconds_bucket", le="+Inf") == flushes
        assert 0 < metric(text, "relay_fanout_seconds_bucket", le="0.1") <= flushes
        assert 0 < metric(text, "relay_fanout_seconds_sum") < flushes
        short_before = metric(text, "relay_dropped_total", reason="short")
        junk = await UdpPeer.open(r.key, r.port)
        for _ in range(3):
            junk.send_raw(b"\x01\x03too short")
        await asyncio.sleep(0.1)
        assert drops(r)["short"] >= 3
        _, text = await _get(port, "/metrics")
        assert metric(text, "relay_dropped_total", reason="short") == short_before + 3
        status, _ = await _get(port, "/nothing-here")
        assert status == 404
        junk.close()
        await a.close()
        await b.close()


def test_metrics_labels_go_on_every_series_of_the_registry() -> None:
    """A relay that must name its room itself (under Agones) labels every series it serves,
    the collectors registered beside the relay's own (the caps guard's) included."""
    from prometheus_client import Gauge

    from relay.server.metrics import Counters, RelayMetrics

    metrics = RelayMetrics(Counters(), lambda: {"members": 2.0})
    Gauge("relay_extra", "a collector beside the relay's own", registry=metrics.registry).set(7)
    plain = metrics.render().decode()
    assert 'relay_messages_in_total{transport="udp"} 0.0' in plain and "relay_extra 7.0" in plain
    metrics.labels = {"gs2_namespace": "ns", "gs2_room": 'a "room"'}
    text = metrics.render().decode()
    assert 'relay_messages_in_total{gs2_namespace="ns",gs2_room="a \\"room\\"",transport="udp"} 0.0' in text
    assert 'relay_members{gs2_namespace="ns",gs2_room="a \\"room\\""} 2.0' in text
    assert 'relay_extra{gs2_namespace="ns",gs2_room="a \\"room\\""} 7.0' in text
    series = [line for line in text.splitlines() if line and not line.startswith("#")]
    assert series and all('gs2_room="a \\"room\\""' in line for line in series)


@pytest.mark.parametrize("transport", ["udp", "ws"])
async def test_session_listeners_hear_a_session_begin(transport: str) -> None:
    """What sleeps long while a room is quiet (the agent's heartbeat) is woken by a handshake."""
    async with room() as r:
        began: list[int] = []
        r.relay.add_session_listener(lambda: began.append(len(r.relay.room.sessions)))
        assert r.relay.stats().members == 0 and not began
        a = await client(r, "a", transport)
        assert began and r.relay.stats().members == 1
        await a.close()


async def _closed_by_peer(reader: asyncio.StreamReader, within: float) -> bool:
    """True if the other end closed (EOF or reset) within `within` seconds, sending nothing."""
    try:
        return await asyncio.wait_for(reader.read(1), within) == b""
    except ConnectionError:
        return True
    except TimeoutError:
        return False


async def test_the_admin_port_holds_few_slow_clients_briefly(monkeypatch: pytest.MonkeyPatch) -> None:
    """The admin server shares the relay's file descriptors (1,024 at realtime1.nano) with its
    players: connections past ADMIN_CONNECTIONS are closed as accepted, one that trickles its
    request is closed at ADMIN_DEADLINE, a line past ADMIN_LINE at once; scrapes then go on."""
    monkeypatch.setattr(relay_metrics, "ADMIN_DEADLINE", 0.5)
    async with room(admin_port=0) as r:
        port = r.relay.admin_port
        assert port
        slow = [await asyncio.open_connection("127.0.0.1", port) for _ in range(20)]
        for _, writer in slow:
            writer.write(b"GET /metrics HTTP/1.0\r\nHost: x\r\n")  # and never the blank line
        refused = await asyncio.gather(*(_closed_by_peer(reader, 0.3) for reader, _ in slow))
        assert sum(refused) == 20 - relay_metrics.ADMIN_CONNECTIONS  # the rest are being served
        assert all(await asyncio.gather(*(_closed_by_peer(reader, 1.0) for reader, _ in slow)))
        for _, writer in slow:
            writer.close()
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /metrics HTTP/1.0\r\nX: " + b"y" * relay_metrics.ADMIN_LINE + b"\r\n\r\n")
        assert await _closed_by_peer(reader, 0.3)
        writer.close()
        status, body = await _get(port, "/metrics")
        assert status == 200 and "relay_messages_in" in body
        assert r.relay._admin is not None and r.relay._admin.open == 0


async def test_closing_the_relay_drops_its_open_admin_connections() -> None:
    """Found in review: the relay's close stopped the admin server listening but left the
    connections being answered (and their tasks) for up to ADMIN_DEADLINE after it."""
    async with room(admin_port=0) as r:
        port = r.relay.admin_port
        assert port and r.relay._admin is not None
        slow = [await asyncio.open_connection("127.0.0.1", port) for _ in range(3)]
        for _, writer in slow:
            writer.write(b"GET /metrics HTTP/1.0\r\n")  # and never the blank line
        await eventually(lambda: r.relay._admin is not None and r.relay._admin.open == 3, 2, "3 open")
        admin = r.relay._admin
        await r.relay.close(CloseReason.SHUTDOWN, "test")
        assert all(await asyncio.gather(*(_closed_by_peer(reader, 0.5) for reader, _ in slow)))
        await eventually(lambda: admin.open == 0, 1, "the connections' tasks ended")
        for _, writer in slow:
            writer.close()


async def test_an_aborted_relay_is_closed_and_a_close_after_it_sends_nothing() -> None:
    """Found in review: abort() (a group process's kill of one room) left the room open: /healthz
    still said alive, and a close() racing it (SIGTERM) flushed CLOSING into the closed UDP
    socket (an internal_error on the standard event loop)."""
    async with room() as r:
        a = await client(r, "a", "udp")
        r.relay.abort()
        alive, body = r.relay.health()
        assert not alive and body["status"] == "unavailable"
        await r.relay.close(CloseReason.SHUTDOWN, "after the abort")
        assert not r.relay.counters.drops["internal_error"]
        assert await r.relay.wait_closed() == CloseReason.SHUTDOWN
        await a.close()


def _scheduled(loop: asyncio.AbstractEventLoop) -> set[asyncio.TimerHandle]:
    """The loop's timers not cancelled (the standard loop keeps them in `_scheduled`)."""
    return {h for h in loop._scheduled if not h.cancelled()}  # type: ignore[attr-defined]


async def test_a_closed_relay_leaves_no_connection_and_nothing_scheduled() -> None:
    """Found in review: after close() a relay left a 1 s abort timer per WebSocket it had closed
    (holding its transport), and a connection still waiting in the doorway with unsent bytes
    (pongs its peer never read) stayed open, its 5 s doorway timer scheduled, until that timer
    fired. In a process whose loop other relays share (embedding, a group of rooms) those outlive
    the room. Now close() returns with every connection gone and none of its timers left."""
    loop = asyncio.get_running_loop()
    before = _scheduled(loop)
    async with room(ws_send_buffer=1 << 20, drain_timeout=0.2, **FAST) as r:
        members = [await WsPeer.open(r.key, r.port) for _ in range(2)]
        for i, peer in enumerate(members):
            await peer.start(f"m{i}")
        udp = await UdpPeer.open(r.key, r.port)
        await udp.start("u")
        waiting = await WsPeer.open(r.key, r.port, rcvbuf=4096)  # upgraded, no HELLO: in the doorway
        conn = next(c for c in r.relay._ws if c.session is None)
        assert conn.transport is not None and waiting.writer is not None
        conn.transport.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        pings = client_frame(PING, b"p" * 125) * 100
        for _ in range(1000):  # pongs it never reads, held in the relay's buffer for it
            if conn.link.buffered:
                break
            waiting.writer.write(pings)
            await waiting.writer.drain()
            await asyncio.sleep(0.005)
        assert conn.link.buffered
        relay = r.relay
        connections = [weakref.ref(c) for c in relay._ws]
        transports = [weakref.ref(c.transport) for c in relay._ws if c.transport is not None]
        assert len(connections) == len(transports) == 3
    assert not relay._ws, "connections still open after close()"
    left = _scheduled(loop) - before
    assert not left, f"still scheduled after close(): {[h._callback for h in left]}"
    del conn
    gc.collect()
    assert [ref() for ref in connections + transports] == [None] * 6
    for peer in [*members, waiting]:
        await peer.aclose()
    udp.close()


@pytest.mark.parametrize("tick", [0.0, 5.0])
async def test_a_closed_relay_leaves_neither_its_sweeper_nor_a_flush_scheduled(tick: float) -> None:
    """Found in review: a quiet room's sweeper sleeps in a wait_for whose timeout (the room's idle
    end) was still scheduled when close() returned (its task cancelled, not yet unwound); with
    coalesce_tick the CLOSING that close() queues scheduled a flush a tick later (close() flushes
    at once), which then fired on the closed room."""
    loop = asyncio.get_running_loop()
    before = _scheduled(loop)
    async with room(coalesce_tick=tick, **FAST) as r:
        peer = await UdpPeer.open(r.key, r.port)
        if tick:
            await peer.handshake(pad_to=UDP_HELLO_PAD_TO)  # a session: close() queues CLOSING for it
        else:
            await eventually(lambda: r.relay.room is not None and r.relay.room.quiet, 1, "quiet")
            await asyncio.sleep(0.05)  # the sweeper asleep until the idle end
    left = _scheduled(loop) - before
    assert not left, f"still scheduled after close(): {[h._callback for h in left]}"
    peer.close()


async def test_a_relay_whose_admin_server_cannot_start_leaves_its_port_free() -> None:
    """Found in review: an admin host the resolver refuses (a NUL in it: a group's assignment can
    carry one, argv cannot) raised out of start() with the room's UDP and TCP sockets still
    listening; only a taken admin port closed them."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    config = replace(RelayConfig(), room_key=generate_room_key(), port=port, admin_port=0, admin_host="\x00")
    with pytest.raises((ValueError, OSError)):  # asyncio's loop says ValueError, uvloop's gaierror
        await Relay(config).start()

    def port_free() -> bool:  # a listener's close completes a loop pass later
        with socket.socket() as tcp, socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            try:
                tcp.bind(("127.0.0.1", port))
                udp.bind(("127.0.0.1", port))
            except OSError:
                return False
            return True

    await eventually(port_free, 2, "the room's port closed again")
