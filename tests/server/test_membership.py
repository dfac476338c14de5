"""Joining, messaging, membership events, resume and keepalive against a real in-process relay."""

from __future__ import annotations

import asyncio

import pytest

import relay.client as rc
from relay.embedded import room
from relay.protocol import messages as m
from relay.protocol.constants import LeaveReason

from .helpers import FAST, client, close_peer, exchange, no_events_of, open_peer
from .rawpeer import UdpPeer, WsPeer

pytestmark = pytest.mark.timeout(20)


@pytest.mark.parametrize("transport", ["udp", "ws"])
async def test_join_and_welcome_contents(transport: str) -> None:
    """WELCOME: connection ids from 1 upward, a 16-byte resume token, the configured limits of the
    transport, and every other member with user id and profile; the others get JOIN."""
    async with room(keepalive_timeout=5.0, resume_grace=4.0, max_players=7, max_profile=300) as r:
        a = await open_peer(r, transport)
        b = await open_peer(r, transport)
        wa = await a.start("alice", b"profile-a")
        assert wa.connection_id == 1
        assert (wa.more, wa.resumed, wa.members) == (False, False, ())
        assert len(wa.resume_token) == 16
        payload = 1100 if transport == "udp" else 16384
        assert wa.limits == m.Limits(7, payload, 300, 100, 65536, 5000, 4000)
        wb = await b.start("bob", b"profile-b")
        assert wb.connection_id == 2
        assert wb.members == (m.Member(1, "alice", b"profile-a"),)
        assert wb.resume_token != wa.resume_token
        assert await a.expect(m.MemberJoined) == m.MemberJoined(2, "bob", b"profile-b")
        assert r.relay.stats().members == 2
        for peer in (a, b):
            await close_peer(peer)


@pytest.mark.parametrize("transport", ["udp", "ws"])
async def test_client_join_sees_members(transport: str) -> None:
    async with room(**FAST) as r:
        a = await client(r, "alice", transport, profile=b"pa")
        b = await client(r, "bob", transport, profile=b"pb")
        assert b.members == {a.connection_id: rc.Member(a.connection_id, "alice", b"pa")}
        assert b.limits is not None and b.limits.keepalive_timeout_ms == 600
        assert await a.next_event_of(rc.Joined, 3) == rc.Joined(b.connection_id, "bob", b"pb")
        await a.close()
        await b.close()


async def test_broadcast_and_targeted_sends() -> None:
    """targets None: every other member; a list: only those ids, once each; unknown ids and the
    sender's own id are skipped; an empty list means everyone."""
    async with room(**FAST) as r:
        a, b, c = [await client(r, name) for name in ("a", "b", "c")]
        a.send(b"to all")
        for other in (b, c):
            assert await other.next_event_of(rc.Received, 3) == rc.Received(a.connection_id, b"to all")
        a.send(b"to b", targets=[b.connection_id, 9999, a.connection_id, b.connection_id])
        a.send(b"empty list", targets=[])
        assert await b.next_event_of(rc.Received, 3) == rc.Received(a.connection_id, b"to b")
        assert await b.next_event_of(rc.Received, 3) == rc.Received(a.connection_id, b"empty list")
        assert await c.next_event_of(rc.Received, 3) == rc.Received(a.connection_id, b"empty list")
        await asyncio.sleep(0.3)
        assert no_events_of(b, rc.Received) == []  # the duplicate target got one copy
        assert no_events_of(c, rc.Received) == []
        assert no_events_of(a, rc.Received) == []  # never to oneself
        for x in (a, b, c):
            await x.close()


async def test_mixed_room_udp_and_ws() -> None:
    async with room(**FAST) as r:
        u = await client(r, "udp-member", "udp")
        w = await client(r, "ws-member", "ws")
        w2 = await client(r, "ws-member-2", "ws")
        await exchange(u, w, b"udp<->ws")
        await exchange(w2, u, b"ws<->udp")
        u.send(b"x" * 1000)
        for other in (w, w2):
            got = await other.next_event_of(rc.Received, 3, lambda e: e.data[:1] == b"x")
            assert got == rc.Received(u.connection_id, b"x" * 1000)
        for x in (u, w, w2):
            await x.close()


async def test_join_leave_and_profile_events() -> None:
    async with room(**FAST) as r:
        a = await client(r, "a", "udp")
        b = await client(r, "b", "ws")
        c = await client(r, "carol", "ws", profile=b"v1")
        for other in (a, b):
            assert await other.next_event_of(rc.Joined, 3, lambda e: e.user_id == "carol") == rc.Joined(
                c.connection_id, "carol", b"v1"
            )
        c.update_profile(b"v2")
        for other in (a, b):
            got = await other.next_event_of(rc.ProfileChanged, 3)
            assert got == rc.ProfileChanged(c.connection_id, b"v2")
            assert other.members[c.connection_id].profile == b"v2"
        await c.close()  # BYE
        for other in (a, b):
            assert await other.next_event_of(rc.Left, 3) == rc.Left(c.connection_id, LeaveReason.LEFT)
        assert r.relay.stats().members == 2
        await a.close()
        await b.close()


async def test_resume_within_grace_keeps_the_seat_silently() -> None:
    async with room(**FAST) as r:
        a = await client(r, "a", "udp")
        b = await client(r, "b", "ws")
        await a.next_event_of(rc.Joined, 3)
        cid = b.connection_id
        old_token = b.connection.resume_token
        b.drop()  # TCP gone without BYE
        assert await b.next_event_of(rc.Resumed, 3) == rc.Resumed(cid, True)
        assert b.connection_id == cid
        assert b.connection.resume_token != old_token  # every WELCOME carries a fresh one
        b.send(b"back")
        assert await a.next_event_of(rc.Received, 3) == rc.Received(cid, b"back")
        await asyncio.sleep(1.2)  # past the grace window: the seat must not expire behind us
        assert no_events_of(a, rc.Left, rc.Joined) == []
        assert set(r.relay.room.members) == {a.connection_id, cid}
        await exchange(a, b)
        await a.close()
        await b.close()


async def test_resume_after_grace_is_a_fresh_join() -> None:
    async with room(**FAST) as r:
        a = await client(r, "a", "udp")
        b = await client(r, "b", "ws", reconnect=False)
        await a.next_event_of(rc.Joined, 3)
        cid = b.connection_id
        token = b.connection.resume_token
        assert token is not None
        b.drop()
        # the seat is held for resume_grace (0.8 s), then the others get LEAVE 4
        await asyncio.sleep(0.5)
        assert cid in r.relay.room.members
        assert await a.next_event_of(rc.Left, 2) == rc.Left(cid, LeaveReason.DISCONNECTED)
        late = await WsPeer.open(r.key, r.port)
        await late.handshake()
        welcome = await late.join("b", resume_token=token)
        assert welcome.resumed is False
        assert welcome.connection_id not in (cid, a.connection_id)
        assert welcome.connection_id > cid  # never reused
        assert await a.next_event_of(rc.Joined, 2) == rc.Joined(welcome.connection_id, "b", b"")
        await late.aclose()
        await a.close()


async def test_resume_token_is_bound_to_the_user_id() -> None:
    async with room(keepalive_timeout=5.0, resume_grace=5.0) as r:
        a = await client(r, "a", "udp")
        b = await client(r, "b", "ws", reconnect=False)
        token = b.connection.resume_token
        b.drop()
        thief = await WsPeer.open(r.key, r.port)
        await thief.handshake()
        welcome = await thief.join("mallory", resume_token=token)
        assert welcome.resumed is False
        assert welcome.connection_id != b.connection_id
        assert b.connection_id in r.relay.room.members  # the seat is still held for b
        await thief.aclose()
        await a.close()


async def test_keepalive_timeout_removes_a_silent_udp_member() -> None:
    async with room(**FAST) as r:
        a = await client(r, "a", "udp")
        w = await client(r, "w", "ws")
        silent = await UdpPeer.open(r.key, r.port)
        await silent.start("silent")  # and then never sends again
        sid = silent.session_id
        for other in (a, w):
            await other.next_event_of(rc.Joined, 3, lambda e: e.user_id == "silent")
        t0 = asyncio.get_running_loop().time()
        for other in (a, w):
            got = await other.next_event_of(rc.Left, 3)
            assert got == rc.Left(silent.connection_id, LeaveReason.TIMEOUT)
        assert asyncio.get_running_loop().time() - t0 < 1.5
        assert silent.connection_id not in r.relay.room.members
        assert sid not in r.relay.room.sessions
        # the live clients, which keep pinging, are still members
        assert set(r.relay.room.members) == {a.connection_id, w.connection_id}
        await exchange(a, w)
        silent.close()
        await a.close()
        await w.close()


async def test_websocket_connections_have_nodelay() -> None:
    """Nagle off on every accepted WebSocket connection: small frames go out at once instead of
    waiting up to ~40 ms for the peer's delayed ACK (asyncio sets it only for a TCP listener)."""
    import socket

    async with room(**FAST) as r:
        a = await client(r, "alice", "ws")
        connections = list(r.relay._ws)
        assert connections
        for conn in connections:
            assert conn.transport is not None
            sock = conn.transport.get_extra_info("socket")
            assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
        await a.close()
