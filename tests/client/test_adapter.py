"""The asyncio client over real loopback sockets, against the real room behind a test transport
that can go silent or drop WebSockets (tests/client/roomserver.py)."""

from __future__ import annotations

import asyncio
import time

import pytest

import relay.client as rc
from relay.protocol.constants import CloseReason, ErrorCode, LeaveReason

from .roomserver import serve_room

pytestmark = pytest.mark.timeout(30)
FAST = {"keepalive_timeout": 1.0, "resume_grace": 3.0}


@pytest.mark.parametrize("transport", ["udp", "ws"])
async def test_connect_send_receive_close(transport: str) -> None:
    async with serve_room() as room:
        a = await rc.connect(room.host, room.port, room.key, "alice", b"pa", transport=transport, timeout=2)
        b = await rc.connect(room.host, room.port, room.key, "bob", b"pb", transport=transport, timeout=2)
        assert b.members == {a.connection_id: rc.Member(a.connection_id, "alice", b"pa")}
        assert await a.next_event(2) == rc.Joined(b.connection_id, "bob", b"pb")
        for i in range(50):
            a.send(b"m%d" % i)
        got = [await b.next_event_of(rc.Received, 2) for _ in range(50)]
        assert [e.data for e in got] == [b"m%d" % i for i in range(50)]
        assert {e.sender for e in got} == {a.connection_id}
        assert b.stats.packets_received < 50 + 5  # coalesced: one pass, few packets
        b.update_profile(b"new")
        assert await a.next_event(2) == rc.ProfileChanged(b.connection_id, b"new")
        a.ping()
        for _ in range(100):
            if a.rtt is not None:
                break
            await asyncio.sleep(0.01)
        assert a.rtt is not None and 0 <= a.rtt < 1
        await b.close()
        assert await a.next_event(2) == rc.Left(b.connection_id, LeaveReason.LEFT)
        assert b.closed and await b.next_event(0.1) is None
        await a.close()
        assert [e async for e in a.events()] == []


@pytest.mark.parametrize("transport", ["udp", "ws"])
async def test_refused_join_raises(transport: str) -> None:
    async with serve_room(max_players=1) as room:
        first = await rc.connect(room.host, room.port, room.key, "first", transport=transport, timeout=2)
        with pytest.raises(rc.JoinRefused) as info:
            await rc.connect(room.host, room.port, room.key, "u", transport=transport, timeout=2)
        assert info.value.code == ErrorCode.ROOM_FULL
        await first.close()


async def test_no_answer_times_out() -> None:
    async with serve_room() as room:
        room.silent = True
        loop = asyncio.get_running_loop()
        start = loop.time()
        # its TCP port answers: a relay that ignores the handshake (which it does to a wrong key)
        with pytest.raises(rc.WrongRoomKey, match="ignored the handshake"):
            await rc.connect(room.host, room.port, room.key, "u", timeout=0.5)
        assert loop.time() - start < 2


async def test_ws_unreachable_raises_connect_error() -> None:
    async with serve_room() as room:
        port = room.port
    with pytest.raises(rc.ConnectError, match="cannot reach"):
        await rc.connect("127.0.0.1", port, room.key, "u", transport="ws", timeout=1)


async def test_ws_drop_is_resumed_with_the_same_connection_id() -> None:
    async with serve_room(**FAST) as room:
        a = await rc.connect(room.host, room.port, room.key, "a", transport="ws", timeout=2)
        b = await rc.connect(room.host, room.port, room.key, "b", transport="ws", timeout=2)
        await a.next_event_of(rc.Joined)
        cid = b.connection_id
        await room.drop_websockets()
        assert isinstance(await b.next_event(2), rc.ConnectionLost)
        assert await b.next_event(3) == rc.Resumed(cid, True)
        assert b.stats.reconnects == 1
        b.send(b"after")
        event = await a.next_event_of(rc.Received, 3)
        assert event == rc.Received(cid, b"after")
        await a.close()
        await b.close()


async def test_udp_silence_is_detected_and_resumed() -> None:
    async with serve_room(**FAST) as room:
        client = await rc.connect(room.host, room.port, room.key, "u", timeout=2)
        cid = client.connection_id
        room.silent = True
        assert await client.next_event(3) == rc.ConnectionLost("silence")
        room.silent = False
        assert await client.next_event(3) == rc.Resumed(cid, True)
        await client.close()


async def test_without_reconnect_a_drop_ends_the_stream() -> None:
    async with serve_room(**FAST) as room:
        client = await rc.connect(room.host, room.port, room.key, "u", transport="ws", reconnect=False)
        await room.drop_websockets()
        events = [e async for e in client.events()]
        assert [type(e) for e in events] == [rc.ConnectionLost, rc.Disconnected]
        assert client.closed


async def test_resume_gives_up_after_the_window() -> None:
    async with serve_room(keepalive_timeout=0.6, resume_grace=0.5) as room:
        client = await rc.connect(room.host, room.port, room.key, "u", timeout=0.3)
        room.silent = True
        events = [e async for e in client.events()]
        assert [type(e) for e in events] == [rc.ConnectionLost, rc.Disconnected]


async def test_closing_from_the_relay_ends_the_stream() -> None:
    async with serve_room() as room:
        client = await rc.connect(room.host, room.port, room.key, "u", timeout=2)
        room.room.close(CloseReason.DELETED, "bye", time.monotonic())
        assert [e async for e in client.events()] == [rc.ClosingEvent(CloseReason.DELETED, "bye")]
        assert client.closed


async def test_on_event_callback_gets_events_without_the_queue() -> None:
    async with serve_room() as room:
        a = await rc.connect(room.host, room.port, room.key, "a", timeout=2)
        seen: list[object] = []
        a.on_event = seen.append
        b = await rc.connect(room.host, room.port, room.key, "b", timeout=2)
        b.send(b"x", targets=[a.connection_id])
        for _ in range(200):
            if len(seen) >= 2:
                break
            await asyncio.sleep(0.01)
        assert seen == [rc.Joined(b.connection_id, "b", b""), rc.Received(b.connection_id, b"x")]
        assert a.drain_events() == []
        await a.close()
        await b.close()


@pytest.mark.parametrize("transport", ["udp", "ws"])
async def test_drop_cuts_the_transport_and_the_client_resumes(transport: str) -> None:
    async with serve_room(**FAST) as room:
        a = await rc.connect(room.host, room.port, room.key, "a", transport=transport, timeout=2)
        b = await rc.connect(room.host, room.port, room.key, "b", transport=transport, timeout=2)
        cid = b.connection_id
        b.drop()
        assert await b.next_event(2) == rc.ConnectionLost("transport closed")
        assert await b.next_event(3) == rc.Resumed(cid, True)
        b.send(b"back", targets=[a.connection_id])
        assert await a.next_event_of(rc.Received, 3) == rc.Received(cid, b"back")
        await a.close()
        await b.close()
