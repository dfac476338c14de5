"""The client against the real relay (relay.embedded.room(), in-process) over both transports."""

from __future__ import annotations

import asyncio
import importlib
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

import relay.client as rc
from relay.protocol import tokens
from relay.protocol.constants import CloseReason, ErrorCode, LeaveReason

pytestmark = pytest.mark.timeout(30)
FAST = {"keepalive_timeout": 1.0, "resume_grace": 3.0}


@pytest.fixture
def embedded() -> Any:
    """relay.embedded, imported per test so that, while it is missing, these tests fail one by one
    instead of breaking the collection of the whole suite."""
    return importlib.import_module("relay.embedded")


async def _eventually(check: object, timeout: float = 2.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not check():  # type: ignore[operator]
        assert loop.time() < deadline, "condition not reached in time"
        await asyncio.sleep(0.01)


@pytest.mark.parametrize(("ta", "tb"), [("udp", "udp"), ("ws", "ws"), ("udp", "ws")])
async def test_connect_send_receive_close(embedded: Any, ta: str, tb: str) -> None:
    async with embedded.room(**FAST) as room:
        a = await rc.connect(room.host, room.port, room.key, "alice", b"pa", transport=ta, timeout=3)
        b = await rc.connect(room.host, room.port, room.key, "bob", b"pb", transport=tb, timeout=3)
        assert a.connection_id != b.connection_id
        assert b.members == {a.connection_id: rc.Member(a.connection_id, "alice", b"pa")}
        assert await a.next_event_of(rc.Joined, 3) == rc.Joined(b.connection_id, "bob", b"pb")
        for i in range(20):
            a.send(b"%d" % i)
        got = [await b.next_event_of(rc.Received, 3) for _ in range(20)]
        assert {e.sender for e in got} == {a.connection_id}
        assert sorted(int(e.data) for e in got) == list(range(20))
        b.send(b"direct", targets=[a.connection_id])
        assert await a.next_event_of(rc.Received, 3) == rc.Received(b.connection_id, b"direct")
        b.update_profile(b"new")
        assert await a.next_event_of(rc.ProfileChanged, 3) == rc.ProfileChanged(b.connection_id, b"new")
        a.ping()
        await _eventually(lambda: a.rtt is not None)
        await b.close()
        assert await a.next_event_of(rc.Left, 3) == rc.Left(b.connection_id, LeaveReason.LEFT)
        await a.close()
        assert a.closed and b.closed


@pytest.mark.parametrize("transport", ["udp", "ws"])
async def test_keepalive_holds_the_seat(embedded: Any, transport: str) -> None:
    async with embedded.room(**FAST) as room:
        a = await rc.connect(room.host, room.port, room.key, "a", transport=transport, timeout=3)
        b = await rc.connect(room.host, room.port, room.key, "b", transport=transport, timeout=3)
        await asyncio.sleep(2.5)  # more than twice the keepalive timeout, sending nothing
        assert a.drain_events() == [rc.Joined(b.connection_id, "b", b"")]
        assert set(b.members) == {a.connection_id}
        await a.close()
        await b.close()


@pytest.mark.parametrize("transport", ["udp", "ws"])
async def test_refused_joins(embedded: Any, transport: str) -> None:
    async with embedded.room(max_players=1) as room:
        first = await rc.connect(room.host, room.port, room.key, "a", transport=transport, timeout=3)
        with pytest.raises(rc.JoinRefused) as full:
            await rc.connect(room.host, room.port, room.key, "b", transport=transport, timeout=3)
        assert full.value.code == ErrorCode.ROOM_FULL
        await first.close()
    async with embedded.room() as room:
        room.relay.accepting_joins = False
        with pytest.raises(rc.JoinRefused) as overloaded:
            await rc.connect(room.host, room.port, room.key, "a", transport=transport, timeout=3)
        assert overloaded.value.code == ErrorCode.OVERLOADED


@pytest.mark.parametrize("transport", ["udp", "ws"])
async def test_access_tokens_bind_the_user(embedded: Any, transport: str) -> None:
    signing = Ed25519PrivateKey.generate()
    public = tokens.public_key_to_text(signing.public_key())
    async with embedded.room(token_public_key=public) as room:
        with pytest.raises(rc.JoinRefused) as missing:
            await rc.connect(room.host, room.port, room.key, "u", transport=transport, timeout=3)
        assert missing.value.code == ErrorCode.UNAUTHORIZED and "access token: missing" in missing.value.text
        with pytest.raises(rc.JoinRefused):
            other = tokens.mint(signing, "someone-else")
            await rc.connect(room.host, room.port, room.key, "u", transport=transport, access_token=other)
        token = tokens.mint(signing, "u")
        client = await rc.connect(
            room.host, room.port, room.key, "u", transport=transport, access_token=token
        )
        assert client.connection_id is not None
        await client.close()


@pytest.mark.parametrize("transport", ["udp", "ws"])
async def test_relay_close_sends_closing(embedded: Any, transport: str) -> None:
    async with embedded.room() as room:
        client = await rc.connect(room.host, room.port, room.key, "u", transport=transport, timeout=3)
        await room.relay.close(CloseReason.SHUTDOWN, "bye")
        events = [e async for e in client.events()]
        assert events == [rc.ClosingEvent(CloseReason.SHUTDOWN, "bye")]


@pytest.mark.parametrize("transport", ["udp", "ws"])
async def test_lost_transport_is_resumed_without_the_others_noticing(embedded: Any, transport: str) -> None:
    async with embedded.room(**FAST) as room:
        a = await rc.connect(room.host, room.port, room.key, "a", transport=transport, timeout=3)
        b = await rc.connect(room.host, room.port, room.key, "b", transport=transport, timeout=3)
        await a.next_event_of(rc.Joined, 3)
        cid = b.connection_id
        b.drop()
        assert await b.next_event_of(rc.Resumed, 5) == rc.Resumed(cid, True)
        b.send(b"back")
        assert await a.next_event_of(rc.Received, 3) == rc.Received(cid, b"back")
        assert not [e for e in a.drain_events() if isinstance(e, rc.Left | rc.Joined)]
        await a.close()
        await b.close()


async def test_a_client_whose_seat_was_resumed_elsewhere_does_not_take_it_back(embedded: Any) -> None:
    """Found in review: two clients holding one resume token (a copied session, a duplicated
    browser tab) took the seat from each other without end, the older one resuming at once when
    the relay closed its WebSocket with "resumed elsewhere". Now that close ends it."""
    async with embedded.room(**FAST) as room:
        watcher = await rc.connect(room.host, room.port, room.key, "w", transport="ws", timeout=3)
        first = await rc.connect(room.host, room.port, room.key, "u", transport="ws", timeout=3)
        cid = first.connection_id
        token = first._conn.resume_token
        copy = await rc.connect(
            room.host, room.port, room.key, "u", transport="ws", resume_token=token, timeout=3
        )
        assert copy.connection_id == cid
        assert await first.next_event_of(rc.Disconnected, 3) == rc.Disconnected("resumed elsewhere")
        await asyncio.sleep(0.5)  # time enough for many take-backs, had there been any
        assert room.relay.counters.handshakes == 3  # the watcher, the first and the copy: no more
        copy.send(b"still here")
        assert await watcher.next_event_of(rc.Received, 3) == rc.Received(cid, b"still here")
        await first.close()
        await copy.close()
        await watcher.close()


@pytest.mark.parametrize("transport", ["udp", "ws"])
async def test_wrong_room_key_and_no_relay_are_told_apart(embedded: Any, transport: str) -> None:
    """A wrong key and an address with no relay used to read alike ("no WELCOME within 3 s"):
    the first is WrongRoomKey, the second Unreachable, each saying so, neither a long wait."""
    from relay.protocol.keys import generate_room_key

    loop = asyncio.get_running_loop()
    async with embedded.room() as room:
        start = loop.time()
        with pytest.raises(rc.WrongRoomKey, match="room key") as wrong:
            await rc.connect(room.host, room.port, generate_room_key(), "u", transport=transport, timeout=1)
        assert not isinstance(wrong.value, rc.Unreachable)
        assert loop.time() - start < 3
        port = room.port
    start = loop.time()
    with pytest.raises(rc.Unreachable, match="cannot reach a relay at") as gone:
        await rc.connect("127.0.0.1", port, room.key, "u", transport=transport, timeout=1)
    assert "room key" not in str(gone.value)
    assert loop.time() - start < 3
