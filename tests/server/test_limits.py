"""Every limit of docs/protocol.md section 9 enforced: players, payload, profile, rate, slow reader,
refusing joins. Refusals are checked on the wire with raw peers (ERROR code, WS close code)."""

from __future__ import annotations

import asyncio
import itertools

import pytest

import relay.client as rc
from relay.embedded import room
from relay.protocol import messages as m
from relay.protocol.constants import CloseReason, ErrorCode, LeaveReason
from relay.protocol.wsframes import BINARY, CONT, FIN, MASKED, PING, ZERO_MASK, client_frame

from .helpers import FAST, client, drops, eventually, exchange, moved, no_events_of
from .rawpeer import NoAnswer, UdpPeer, WsPeer

pytestmark = pytest.mark.timeout(30)


async def _refused_on_both_transports(r, code: int) -> None:  # type: ignore[no-untyped-def]
    """A raw UDP and a raw WS JOIN both get ERROR `code`; the relay forgets the session (UDP: no
    further answer; WS: closed with 1013) and keeps no member or session for it."""
    sessions = set(r.relay.room.sessions)
    members = set(r.relay.room.members)
    udp = await UdpPeer.open(r.key, r.port)
    await udp.handshake(pad_to=1200)
    udp.send(m.Join("late-udp", b"").encode())
    assert await udp.expect(m.Error) == m.Error(code, (await _text(code, r)))
    udp.send(m.Ping(1, 1).encode())  # the session is gone: no PONG
    assert await udp.silence(0.2) == []
    ws = await WsPeer.open(r.key, r.port)
    await ws.handshake()
    ws.send(m.Join("late-ws", b"").encode())
    err = await ws.expect(m.Error)
    assert err.code == code
    assert await ws.wait_closed() == 1013
    assert set(r.relay.room.sessions) == sessions
    assert set(r.relay.room.members) == members
    udp.close()
    await ws.aclose()


async def _text(code: int, r) -> str:  # type: ignore[no-untyped-def]
    return (
        f"room is full ({r.relay.config.max_players})"
        if code == ErrorCode.ROOM_FULL
        else "relay is not accepting joins"
    )


async def test_max_players() -> None:
    async with room(max_players=2, **FAST) as r:
        a = await client(r, "a", "udp")
        b = await client(r, "b", "ws")
        await _refused_on_both_transports(r, ErrorCode.ROOM_FULL)
        for transport in ("udp", "ws"):
            with pytest.raises(rc.JoinRefused) as refused:
                await client(r, "c", transport)
            assert refused.value.code == ErrorCode.ROOM_FULL
        assert no_events_of(a, rc.Joined) == [rc.Joined(b.connection_id, "b", b"")]
        await b.close()  # a seat frees up
        c = await client(r, "c", "udp")
        await exchange(a, c)
        await a.close()
        await c.close()


async def test_not_accepting_joins() -> None:
    async with room(**FAST) as r:
        a = await client(r, "a", "ws")
        r.relay.accepting_joins = False
        await _refused_on_both_transports(r, ErrorCode.OVERLOADED)
        with pytest.raises(rc.JoinRefused) as refused:
            await client(r, "b", "udp")
        assert refused.value.code == ErrorCode.OVERLOADED
        r.relay.accepting_joins = True
        b = await client(r, "b", "udp")
        await exchange(a, b)
        await a.close()
        await b.close()


@pytest.mark.parametrize(("transport", "limit"), [("udp", 100), ("ws", 200)])
async def test_payload_too_large(transport: str, limit: int) -> None:
    async with room(max_payload_udp=100, max_payload_ws=200, **FAST) as r:
        sender = await client(r, "sender", transport)
        other = await client(r, "other", "ws")
        before = drops(r)
        sender.send(b"A" * (limit + 1))
        assert await sender.next_event_of(rc.ErrorEvent, 3) == rc.ErrorEvent(
            ErrorCode.PAYLOAD_TOO_LARGE, "payload too large"
        )
        assert moved(before, drops(r)) == {"payload_too_large": 1}
        sender.send(b"B" * limit)  # exactly the limit is fine
        assert await other.next_event_of(rc.Received, 3) == rc.Received(sender.connection_id, b"B" * limit)
        assert no_events_of(other, rc.Received) == []  # the oversized one never arrived
        await sender.close()
        await other.close()


async def test_profile_too_large() -> None:
    async with room(max_profile=50, **FAST) as r:
        for transport in ("udp", "ws"):
            with pytest.raises(rc.JoinRefused) as refused:
                await client(r, "big", transport, profile=b"p" * 51)
            assert refused.value.code == ErrorCode.PROFILE_TOO_LARGE
        a = await client(r, "a", "udp", profile=b"p" * 50)
        b = await client(r, "b", "ws")
        assert b.members[a.connection_id].profile == b"p" * 50
        with pytest.raises(ValueError):  # the client refuses it before the relay would
            a.update_profile(b"q" * 51)
        raw = await UdpPeer.open(r.key, r.port)
        await raw.start("raw")
        raw.send(m.SetProfile(b"q" * 51).encode())  # a client that does not check
        assert (await raw.expect(m.Error)).code == ErrorCode.PROFILE_TOO_LARGE
        raw.close()
        a.update_profile(b"ok")
        assert await b.next_event_of(rc.ProfileChanged, 3) == rc.ProfileChanged(a.connection_id, b"ok")
        assert no_events_of(b, rc.ProfileChanged) == []  # the oversized profile was never shown
        assert r.relay.room.members[a.connection_id].profile == b"ok"
        await a.close()
        await b.close()


async def test_rate_limit_drops_errors_once_per_second_and_kicks_abuse() -> None:
    async with room(
        messages_per_second=20, message_burst=20, abuse_kick_after=1.0, keepalive_timeout=5.0
    ) as r:
        abuser = await client(r, "abuser", "ws")
        watcher = await client(r, "watcher", "ws")
        bystander = await client(r, "bystander", "udp")
        loop = asyncio.get_running_loop()
        before = drops(r)
        t0 = loop.time()
        for i in range(60):  # one burst: 20 pass, 40 are dropped
            abuser.send(b"%d" % i)
        await asyncio.sleep(0.2)
        got = [e for e in watcher.drain_events() if isinstance(e, rc.Received)]
        assert 20 <= len(got) <= 25
        assert 35 <= moved(before, drops(r))["rate_limited"] <= 40
        errors = no_events_of(abuser, rc.ErrorEvent)
        assert errors == [rc.ErrorEvent(ErrorCode.RATE_LIMITED, "rate limit exceeded")]
        # keep abusing: more drops, still at most one ERROR per second, then the kick
        kicked: list[rc.Event] = []
        error_times = [t0]
        while loop.time() - t0 < 3.0 and not kicked:
            for i in range(30):
                abuser.send(b"more %d" % i)
            await asyncio.sleep(0.1)
            for e in abuser.drain_events():
                if isinstance(e, rc.ErrorEvent):
                    assert e.code == ErrorCode.RATE_LIMITED
                    error_times.append(loop.time())
                elif isinstance(e, rc.ClosingEvent):
                    kicked.append(e)
        assert kicked == [rc.ClosingEvent(CloseReason.KICKED, "rate limit exceeded")]
        assert 0.9 <= loop.time() - t0 <= 2.5  # abuse_kick_after = 1 s of continuous excess
        gaps = [b - a for a, b in itertools.pairwise(error_times)]
        assert all(gap >= 0.85 for gap in gaps), gaps  # at most one ERROR 2 per second
        for other in (watcher, bystander):
            got = await other.next_event_of(rc.Left, 3)
            assert got == rc.Left(abuser.connection_id, LeaveReason.KICKED)
        assert abuser.connection_id not in r.relay.room.members
        await exchange(watcher, bystander)
        await watcher.close()
        await bystander.close()


async def test_a_message_dropped_for_bytes_spends_no_message_token() -> None:
    async with room(
        messages_per_second=1, message_burst=10, bytes_per_second=300, byte_burst=300, keepalive_timeout=5.0
    ) as r:
        a = await client(r, "a", "ws")
        b = await client(r, "b", "ws")
        for i in range(5):  # 3 fit the byte budget; 2 are dropped for bytes
            a.send(bytes([i]) * 100)
        await asyncio.sleep(0.2)
        assert len([e for e in b.drain_events() if isinstance(e, rc.Received)]) == 3
        for _ in range(7):  # empty payloads need no byte token; 10 - 3 message tokens are left
            a.send(b"")
        await asyncio.sleep(0.2)
        assert len([e for e in b.drain_events() if isinstance(e, rc.Received)]) == 7
        await a.close()
        await b.close()


async def test_slow_websocket_reader_is_disconnected() -> None:
    async with room(
        ws_send_buffer=32768,
        messages_per_second=0,
        bytes_per_second=0,
        keepalive_timeout=5.0,
    ) as r:
        slow = await WsPeer.open(r.key, r.port, rcvbuf=4096)
        await slow.start("slow")  # handshake and JOIN, then it never reads again
        sender = await client(r, "sender", "ws")
        watcher = await client(r, "watcher", "ws")
        big = b"z" * 16000
        left: list[rc.Left] = []
        sent = 0
        while not left and sent < 4000:  # at most 64 MB: the kick comes long before
            for _ in range(8):
                sender.send(big)
                sent += 1
            await asyncio.sleep(0.005)
            left = [e for e in watcher.drain_events() if isinstance(e, rc.Left)]
        assert left == [rc.Left(slow.connection_id, LeaveReason.KICKED)]
        assert slow.connection_id not in r.relay.room.members
        assert slow.session_id not in r.relay.room.sessions
        assert sender.connection_id in r.relay.room.members  # only the slow reader pays
        await eventually(lambda: len(r.relay._ws) == 2, 3, "the slow reader's TCP connection closed")
        await exchange(sender, watcher)
        await slow.aclose()
        await sender.close()
        await watcher.close()


async def test_join_before_welcome_only_join_ping_bye() -> None:
    """Before JOIN a session may only send JOIN, PING and BYE: SEND gets ERROR 8 and goes nowhere."""
    async with room(**FAST) as r:
        a = await client(r, "a", "ws")
        raw = await UdpPeer.open(r.key, r.port)
        await raw.handshake(pad_to=1200)
        raw.send(m.Send(b"sneaky").encode())
        assert await raw.expect(m.Error) == m.Error(ErrorCode.NOT_JOINED, "join first")
        raw.send(m.Ping(7, 42).encode())
        assert await raw.expect(m.Pong) == m.Pong(7, 42)
        await asyncio.sleep(0.1)
        assert no_events_of(a, rc.Received) == []
        with pytest.raises(NoAnswer):
            await raw.next_message(0.1)
        raw.close()
        await a.close()


async def test_ws_payload_too_large_for_udp_members_is_dropped_for_them_only() -> None:
    async with room(**FAST) as r:
        sender = await client(r, "sender", "ws")
        ws_peer = await client(r, "ws-peer", "ws")
        udp_peer = await client(r, "udp-peer", "udp")
        before = drops(r)
        big = b"W" * 5000  # within the WebSocket payload limit, far over one datagram
        sender.send(big)
        assert await ws_peer.next_event_of(rc.Received, 3) == rc.Received(sender.connection_id, big)
        await eventually(lambda: moved(before, drops(r)).get("too_large_for_transport") == 1)
        sender.send(b"small")  # the UDP member still gets what fits
        assert await udp_peer.next_event_of(rc.Received, 3) == rc.Received(sender.connection_id, b"small")
        for c in (sender, ws_peer, udp_peer):
            await c.close()


async def test_messages_behind_a_join_in_one_packet_are_handled_and_refusals_are_rate_limited() -> None:
    """Before: what a client sent behind its JOIN in the same packet was dropped uncounted, and a
    SEND or PROFILE over its size limit was answered with ERROR without taking from the message
    rate (a member could have every oversized message answered, at any rate, never muted). Now
    the messages behind a JOIN are the new member's, and a refusal takes a message token."""
    async with room(**FAST, messages_per_second=5, message_burst=5, abuse_kick_after=60.0) as r:
        watcher = await client(r, "watcher", "ws")
        raw = await UdpPeer.open(r.key, r.port)
        await raw.handshake(pad_to=1200)
        raw.send(m.Join("eager").encode(), m.Send(b"right behind the join").encode())
        await raw.expect(m.Welcome)
        got = await watcher.next_event_of(rc.Received, timeout=2)
        assert got is not None and got.data == b"right behind the join"
        before = drops(r)
        too_big = m.Send(b"x" * 1101).encode()  # max_payload_udp is 1100
        for _ in range(10):  # the SEND took one of the burst of 5; a token comes every 0.2 s
            raw.send(too_big)
        await raw.expect(m.Error, where=lambda e: e.code == ErrorCode.PAYLOAD_TOO_LARGE)
        await raw.expect(m.Error, where=lambda e: e.code == ErrorCode.RATE_LIMITED)
        change = moved(before, drops(r))
        limited = change.get("rate_limited", 0) + change.get("rate_limited_unread", 0)
        assert change.get("payload_too_large", 0) + limited == 10, change
        assert 4 <= change.get("payload_too_large", 0) <= 5, change
        raw.close()
        await watcher.close()


@pytest.mark.parametrize("parser", ["relay", "websockets"])
async def test_a_websocket_that_pings_and_never_reads_is_disconnected(parser: str) -> None:
    """Before: every PING was answered with a PONG written to the connection, and only the room's
    own output was held to ws_send_buffer: a member that pinged and never read grew the relay's
    memory at its upload rate (5 MB past a 256 KiB limit, found by fuzzing). Pongs count now,
    the relay's own and websockets' (which parses the stream after a fragmented message)."""
    async with room(ws_send_buffer=32768, keepalive_timeout=10.0) as r:
        pinger = await WsPeer.open(r.key, r.port, rcvbuf=4096)
        await pinger.start("pinger")  # handshake and JOIN, then it never reads again
        watcher = await client(r, "watcher", "ws")
        assert pinger.writer is not None
        if parser == "websockets":  # a message in two fragments (a malformed packet, dropped)
            pinger.writer.write(bytes((BINARY, MASKED | 1)) + ZERO_MASK + b"x")
            pinger.writer.write(bytes((FIN | CONT, MASKED | 1)) + ZERO_MASK + b"y")
            before = drops(r)
            await eventually(lambda: moved(before, drops(r)), 2, "the fragments read")
        pings = client_frame(PING, b"p" * 125) * 1000
        left: list[rc.Left] = []
        sent = 0
        while not left and sent < 300:  # at most 40 MB of pings: the kick comes long before
            pinger.writer.write(pings)
            await pinger.writer.drain()
            sent += 1
            await asyncio.sleep(0.002)
            left = [e for e in watcher.drain_events() if isinstance(e, rc.Left)]
        assert left == [rc.Left(pinger.connection_id, LeaveReason.KICKED)]
        assert pinger.connection_id not in r.relay.room.members
        await watcher.close()
        await pinger.aclose()
