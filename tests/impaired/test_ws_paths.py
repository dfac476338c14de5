"""The project's WebSocket client and a real relay through a TCP path that stalls (stops
forwarding, stays open) or is cut (both sides reset) (tests/impaired/proxy.py): the client
notices silence or the reset and resumes its seat as docs/protocol.md section 6 says."""

from __future__ import annotations

import asyncio

import pytest

import relay.client as rc
from relay.embedded import room
from relay.protocol.constants import LeaveReason
from tests.server.helpers import client, exchange, no_events_of

from .proxy import TcpProxy

pytestmark = pytest.mark.timeout(60)


async def test_a_stalled_websocket_is_noticed_by_its_silence_and_resumed() -> None:
    """The TCP path stops forwarding without closing: the client hears no PONG for its silence
    timeout (3 PINGs), reports the connection lost and resumes over a new connection before the
    relay's keepalive timeout gives the seat away: same connection id, the others notice nothing.
    The silent connection is dropped, not closed: a closing handshake with a silent peer waited
    1 s (websockets' close_timeout) before the resume began, and the seat was gone by then."""
    quick = rc.ClientConfig(ping_interval=0.1, silence_timeout=0.35)
    async with room(keepalive_timeout=1.0, resume_grace=1.0) as r, TcpProxy(r.port) as proxy:
        a = await client(r, "alice", "ws", port=proxy.port, config=quick)
        b = await client(r, "bob", "ws")
        await exchange(a, b)
        cid = a.connection_id
        proxy.stall()
        b.send(b"held in the stalled path")
        assert await a.next_event_of(rc.ConnectionLost, 5) == rc.ConnectionLost("silence")
        assert await a.next_event_of(rc.Resumed, 5) == rc.Resumed(cid, kept_seat=True)
        assert proxy.accepted == 2
        assert no_events_of(b, rc.Left, rc.Joined) == []  # it would have come before the resume
        await exchange(a, b, b"after the stall")
        await a.close()
        await b.close()


async def test_a_cut_websocket_resumes_within_the_grace() -> None:
    """Both ends of the TCP connection are reset and the path refuses connections for a while,
    less than the resume grace: the client sees the transport closed at once, retries, and
    resumes its seat, which the relay held for the grace (the others see no LEAVE)."""
    async with room(keepalive_timeout=1.6, resume_grace=1.6) as r, TcpProxy(r.port) as proxy:
        a = await client(r, "alice", "ws", port=proxy.port)
        b = await client(r, "bob", "udp")
        await exchange(a, b)
        cid = a.connection_id
        proxy.refusing = True
        proxy.cut()
        assert await a.next_event_of(rc.ConnectionLost, 5) == rc.ConnectionLost("transport closed")
        await asyncio.sleep(0.5)  # several sweeps of the room: only the grace keeps the seat
        proxy.refusing = False
        assert await a.next_event_of(rc.Resumed, 5) == rc.Resumed(cid, kept_seat=True)
        assert proxy.refused >= 1 and proxy.accepted == 2
        assert no_events_of(b, rc.Left, rc.Joined) == []  # it would have come before the resume
        await exchange(a, b, b"after the cut")
        await a.close()
        await b.close()


async def test_a_websocket_down_past_the_grace_resumes_as_a_fresh_join() -> None:
    """The path stays down past the resume grace: the others get LEAVE disconnected, and the
    client, still within its own reconnect window, comes back as a new member."""
    async with room(keepalive_timeout=1.6, resume_grace=0.8) as r, TcpProxy(r.port) as proxy:
        a = await client(r, "alice", "ws", port=proxy.port, timeout=5)
        b = await client(r, "bob", "udp")
        await exchange(a, b)
        old = a.connection_id
        proxy.refusing = True
        proxy.cut()
        assert await b.next_event_of(rc.Left, 5) == rc.Left(old, LeaveReason.DISCONNECTED)
        proxy.refusing = False
        resumed = await a.next_event_of(rc.Resumed, 10)
        assert resumed.kept_seat is False and resumed.connection_id != old
        assert await b.next_event_of(rc.Joined, 5) == rc.Joined(resumed.connection_id, "alice", b"")
        await exchange(a, b, b"a new seat")
        await a.close()
        await b.close()
