"""GS2 game clients on a real relay (loopback), driven by tests/gs2/wireclient.py, a client written
from the research note on GS2's wire alone: hello, membership, relay messages, profiles, what is
refused (nothing of it reaches the room), limits, keepalive, and rooms shared with native UDP
and WebSocket members."""

from __future__ import annotations

import asyncio
import base64
import os
import socket
import time
from collections.abc import AsyncIterator

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

import relay.client as rc
from relay.embedded import EmbeddedRoom, room
from relay.protocol import tokens
from relay.protocol.constants import LeaveReason
from relay.server.transport import GS2
from tests.server.helpers import drops, eventually, moved

from . import wireclient as g

SIGNER = Ed25519PrivateKey.generate()
PUBLIC = tokens.public_key_to_text(SIGNER.public_key())


def token(user: str, ttl: int = 3600) -> str:
    """A user access token as the control plane mints it (`relay token`, /auth/login)."""
    return tokens.mint(SIGNER, user, ttl)


@pytest.fixture
async def r() -> AsyncIterator[EmbeddedRoom]:
    async with room(token_public_key=PUBLIC) as embedded:
        yield embedded


async def gs2(r: EmbeddedRoom, user: str, profile: bytes = b"") -> g.Gs2Client:
    return await g.Gs2Client.join(r.port, r.key, token(user), profile)


async def native(r: EmbeddedRoom, user: str, transport: str) -> rc.Client:
    return await rc.connect(
        r.host, r.port, r.key, user, transport=transport, timeout=3, access_token=token(user), profile=b"n"
    )


async def test_hello_membership_messages_and_profiles(r: EmbeddedRoom) -> None:
    a = await gs2(r, "ann", b"a0")
    assert a.my == g.Player(1, "ann", b"a0") and a.players == {}
    b = await gs2(r, "bob", b"b0")
    assert b.my == g.Player(2, "bob", b"b0")
    assert b.players == {1: g.Player(1, "ann", b"a0")}  # the others, not the caller
    assert (await a.next()).body == g.Player(2, "bob", b"b0")  # JoinNotification
    c = await gs2(r, "cy")
    for x in (a, b):
        got = await x.next()
        assert got.kind == g.JOIN_NOTIFICATION and got.body.connection_id == 3

    await a.send(b"to everyone")  # broadcast: the others, not the sender
    for x in (b, c):
        got = await x.next()
        assert got.kind == g.BINARY_MESSAGE and got.body == g.Relayed(1, b"to everyone", ())
    await b.send(b"to cy and nobody", (3, 2, 77))  # targeted: itself and unknown ids skipped
    assert (await c.next()).body == g.Relayed(2, b"to cy and nobody", ())
    await c.update_profile(b"c1")  # no answer to the sender, a notification to the others
    for x in (a, b):
        got = await x.next()
        assert got.kind == g.UPDATE_PROFILE_NOTIFICATION and got.body == g.Player(3, "cy", b"c1")
    assert await a.nothing(0.2) == [] and await b.nothing(0.05) == [] and await c.nothing(0.05) == []

    await c.close()  # GS2 clients leave by closing; nobody resumes: the leave is at once
    for x in (a, b):
        got = await x.next(1.0)
        assert got.kind == g.LEAVE_NOTIFICATION and got.body == g.Player(3, "cy", b"c1")
    # every Container numbered per recipient from 1; the lifetime counts from the room's start
    for x in (a, b):
        assert x.sequences == list(range(1, len(x.sequences) + 1))
    await asyncio.sleep(0.05)
    await a.send(b"late")
    got = await b.next()
    room_ms = (time.monotonic() - r.relay.room.started) * 1000
    assert room_ms - 200 < got.lifetime_ms <= room_ms
    assert r.relay.counters.messages_in[GS2] >= 5 and r.relay.counters.messages_out[GS2] >= 10
    await a.close()
    await b.close()


async def test_the_upgrade_answer_is_plain() -> None:
    """websocket-sharp refuses a 101 with headers it did not ask for; WebGL builds send Origin."""
    async with room() as r:
        reader, writer = await asyncio.open_connection("127.0.0.1", r.port)
        key = base64.b64encode(os.urandom(16)).decode()
        writer.write(
            (
                f"GET / HTTP/1.1\r\nUser-Agent: websocket-sharp/1.0\r\nHost: 127.0.0.1:{r.port}\r\n"
                "Upgrade: websocket\r\nConnection: Upgrade\r\nOrigin: https://game.example\r\n"
                f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
            ).encode()
        )
        head = (await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 3)).decode().lower()
        writer.close()
        assert head.startswith("http/1.1 101")
        assert "sec-websocket-protocol" not in head and "sec-websocket-extensions" not in head
        # and through a client library, with an Origin
        client = await g.Gs2Client.open(r.port, r.key, origin="https://game.example")
        await client.hello(tokens.mint(SIGNER, "webgl"))
        assert (await client.next()).kind == g.HELLO_RESULT
        await client.close()


async def _refused(
    r: EmbeddedRoom, first: bytes | None, then: bytes | None = None
) -> tuple[g.Received, tuple[int | None, str]]:
    """A client that sends `first` (None: a good hello) and `then`: the Error it gets, the close."""
    client = await g.Gs2Client.open(r.port, r.key)
    if first is None:
        await client.hello(token("mallory"))
        assert (await client.next()).kind == g.HELLO_RESULT
    else:
        await client.send_raw(first)
    if then is not None:
        await client.send_raw(then)
    error = await client.next_of(g.ERROR)
    return error, await client.closed()


def signed(kind: int, value: bytes, key: bytes) -> bytes:
    return g.container(kind, value, key)


@pytest.mark.parametrize(
    ("case", "component", "status", "reason"),
    [
        ("bad signature", "signature", 401, "gs2_bad_signature"),
        ("bad token", "accessToken", 401, "gs2_bad_token"),
        ("no token", "accessToken", 401, "gs2_bad_token"),
        ("expired token", "accessToken", 401, "gs2_bad_token"),
        ("project token", "accessToken", 401, "gs2_bad_token"),
        ("malformed", "container", 400, "gs2_malformed"),
        ("message before hello", "messageType", 400, "gs2_unexpected"),
        ("bad signature after hello", "signature", 401, "gs2_bad_signature"),
        ("oversize", "container", 413, "gs2_oversize"),
        ("a second hello", "messageType", 400, "gs2_unexpected"),
        ("a server's message", "messageType", 400, "gs2_unexpected"),
    ],
)
async def test_refused_with_error_then_closed(
    r: EmbeddedRoom, case: str, component: str, status: int, reason: str
) -> None:
    """GS2 Error{component, statusCode}, a close with 1008, counted; nothing reaches the room:
    a member already there sees no join, no message, and (for a joined offender) only its leave."""
    key = r.key.encode()
    watcher = await native(r, "watcher", "ws")
    before = drops(r)
    hello = g.hello_value
    cases: dict[str, tuple[bytes | None, bytes | None]] = {
        "bad signature": (signed(g.HELLO_REQUEST, hello(token("m"), b""), b"not the room key"), None),
        "bad token": (signed(g.HELLO_REQUEST, hello(token("m")[:-6] + "AAAAAA", b""), key), None),
        "no token": (signed(g.HELLO_REQUEST, hello("", b""), key), None),
        "expired token": (signed(g.HELLO_REQUEST, hello(token("m", ttl=-1), b""), key), None),
        "project token": (
            signed(g.HELLO_REQUEST, hello(tokens.mint(SIGNER, "m", issuer="gs2relay-project"), b""), key),
            None,
        ),
        "malformed": (b"\x12\xff\xff\xff\xff\x0f", None),
        "message before hello": (signed(g.BINARY_MESSAGE, g.relay_value(b"sneaky"), key), None),
        "bad signature after hello": (None, signed(g.BINARY_MESSAGE, g.relay_value(b"forged"), b"wrong")),
        "oversize": (None, signed(g.BINARY_MESSAGE, g.relay_value(b"x" * 20000), key)),
        "a second hello": (None, signed(g.HELLO_REQUEST, hello(token("mallory"), b""), key)),
        "a server's message": (None, signed(g.JOIN_NOTIFICATION, b"", key)),
    }
    error, (code, _) = await _refused(r, *cases[case])
    assert (error.body.component, error.body.status) == (component, status)
    assert code == 1008
    assert moved(before, drops(r)).get(reason) == 1
    await asyncio.sleep(0.1)
    events = watcher.drain_events()
    assert not [e for e in events if isinstance(e, rc.Received)]
    joined_first = cases[case][0] is None
    assert [type(e) for e in events] == ([rc.Joined, rc.Left] if joined_first else [])
    if joined_first:
        assert events[1].reason == LeaveReason.KICKED
    assert list(r.relay.room.members) == [watcher.connection_id]
    await watcher.close()


async def test_room_limits_apply_to_gs2_members() -> None:
    """The room's own refusals reach a GS2 client as Error: full room (then 1013), a profile or
    payload over its limit (the message is dropped, the member stays)."""
    async with room(token_public_key=PUBLIC, max_players=2, max_profile=8, max_payload_ws=100) as r:
        a = await gs2(r, "a")
        big = await g.Gs2Client.open(r.port, r.key)
        await big.hello(token("big"), b"p" * 9)
        error = await big.next_of(g.ERROR)
        assert (error.body.component, error.body.status) == ("profile", 413)
        assert (await big.closed())[0] == 1008
        b = await gs2(r, "b")
        full = await g.Gs2Client.open(r.port, r.key)
        await full.hello(token("c"))
        error = await full.next_of(g.ERROR)
        assert (error.body.component, error.body.status) == ("room", 503)
        assert (await full.closed())[0] == 1013
        await a.send(b"x" * 101)
        error = await a.next_of(g.ERROR)
        assert (error.body.component, error.body.status) == ("data", 413)
        await a.update_profile(b"p" * 9)
        assert (await a.next_of(g.ERROR)).body.component == "profile"
        await a.send(b"fits")
        assert (await b.next_of(g.BINARY_MESSAGE)).body.data == b"fits"
        for c in (a, b):
            await c.close()


async def test_a_flood_is_rate_limited_then_kicked() -> None:
    """As a native member's: over the rate, messages are dropped with an Error (at most one a
    second); over it for abuse_kick_after, the member is kicked (close 1008, KICKED to the others)."""
    async with room(
        token_public_key=PUBLIC, messages_per_second=50, message_burst=20, abuse_kick_after=0.6
    ) as r:
        flooder = await gs2(r, "flooder")
        honest = await native(r, "honest", "udp")
        await flooder.next_of(g.JOIN_NOTIFICATION)
        sent = 0
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline:
            try:
                for _ in range(20):
                    await flooder.send(b"flood")
                    sent += 1
            except Exception:  # closed by the relay
                break
            await asyncio.sleep(0.005)
        code, text = await flooder.closed()
        assert code == 1008 and "rate limit" in text
        errors = [x.body for x in flooder.received if x.kind == g.ERROR]
        assert 1 <= len(errors) <= 3 and {(e.component, e.status) for e in errors} == {("rate", 429)}
        await asyncio.sleep(0.1)
        events = honest.drain_events()
        received = [e for e in events if isinstance(e, rc.Received)]
        assert 20 <= len(received) < sent / 2  # the burst and the rate, not the flood
        assert drops(r).get("rate_limited", 0) > 0
        assert drops(r).get("rate_limited_unread", 0) > 0  # checked neither signed nor parsed
        assert [e.reason for e in events if isinstance(e, rc.Left)] == [LeaveReason.KICKED]
        await honest.close()


async def test_a_mixed_room() -> None:
    """GS2, native UDP and native WebSocket members in one room see each other join and leave,
    get each other's broadcasts and targeted messages and profiles, with the same connection ids."""
    async with room(token_public_key=PUBLIC) as r:
        udp = await native(r, "udp-user", "udp")
        gs = await gs2(r, "gs2-user", b"g0")
        ws = await native(r, "ws-user", "ws")
        assert gs.players == {udp.connection_id: g.Player(udp.connection_id, "udp-user", b"n")}
        assert (await gs.next()).body == g.Player(ws.connection_id, "ws-user", b"n")
        joined = await udp.next_event_of(rc.Joined, 2)
        assert joined == rc.Joined(gs.my.connection_id, "gs2-user", b"g0")
        assert ws.members[gs.my.connection_id].user_id == "gs2-user"

        await gs.send(b"from gs2")
        for n in (udp, ws):
            got = await n.next_event_of(rc.Received, 2)
            assert got == rc.Received(gs.my.connection_id, b"from gs2")
        udp.send(b"from udp", targets=[gs.my.connection_id])
        assert (await gs.next_of(g.BINARY_MESSAGE)).body == g.Relayed(udp.connection_id, b"from udp", ())
        ws.send(b"from ws")
        assert (await gs.next_of(g.BINARY_MESSAGE)).body == g.Relayed(ws.connection_id, b"from ws", ())
        await gs.send(b"only ws", (ws.connection_id,))
        assert (await ws.next_event_of(rc.Received, 2)).data == b"only ws"

        await gs.update_profile(b"g1")
        for n in (udp, ws):
            changed = await n.next_event_of(rc.ProfileChanged, 2)
            assert changed == rc.ProfileChanged(gs.my.connection_id, b"g1")
        ws.update_profile(b"w1")
        got = await gs.next_of(g.UPDATE_PROFILE_NOTIFICATION)
        assert got.body == g.Player(ws.connection_id, "ws-user", b"w1")

        await ws.close()  # native BYE: GS2 sees the leave with the last profile
        got = await gs.next_of(g.LEAVE_NOTIFICATION)
        assert got.body == g.Player(ws.connection_id, "ws-user", b"w1")
        await gs.close()
        left = await udp.next_event_of(rc.Left, 2, lambda e: e.connection_id == gs.my.connection_id)
        assert left.reason == LeaveReason.LEFT  # a client's close: it left
        assert not udp.drain_events()
        await udp.close()


async def test_bye_request_and_a_lost_connection() -> None:
    async with room(token_public_key=PUBLIC) as r:
        watcher = await native(r, "watcher", "udp")
        a = await gs2(r, "a")
        await a.bye()  # defined by GS2 though its client never sends it: a graceful leave
        assert await a.closed() == (1000, "bye")
        assert (await watcher.next_event_of(rc.Left, 2)).reason == LeaveReason.LEFT
        b = await gs2(r, "b")
        b.ws.transport.abort()  # no close frame: the connection is lost
        assert (await watcher.next_event_of(rc.Left, 2)).reason == LeaveReason.DISCONNECTED
        await eventually(lambda: list(r.relay.room.members) == [watcher.connection_id])
        await watcher.close()


async def test_keepalive_is_the_relays_pings() -> None:
    """GS2 clients send nothing while idle: the relay pings them (keepalive_timeout / 4) and a pong
    keeps the member; a client that answers no ping is dropped at the keepalive timeout. Pings
    are not room traffic: a room of only idle GS2 clients still ends idle."""
    async with room(token_public_key=PUBLIC, keepalive_timeout=0.6, idle_timeout=2.0) as r:
        watcher = await native(r, "watcher", "ws")
        alive = await gs2(r, "alive")
        mute = await gs2(r, "mute")
        mute.ws.transport.pause_reading()  # it reads nothing more, so it answers no ping
        await asyncio.sleep(1.5)  # past two keepalive timeouts: only the answering one stays
        assert {m.user_id for m in r.relay.room.members.values()} == {"watcher", "alive"}
        left = [e for e in watcher.drain_events() if isinstance(e, rc.Left)]
        assert [e.reason for e in left] == [LeaveReason.TIMEOUT]
        mute.ws.transport.resume_reading()
        assert (await mute.closed(1)) == (1001, "keepalive timeout")
        await watcher.close()
        await eventually(lambda: r.relay.room.closed, 3.0, "the idle room's end")
        assert (await alive.closed(1)) == (1000, "no communication")


async def test_the_relays_pings_to_its_gs2_clients_fall_due_together() -> None:
    """Found measuring idle relays: each GS2 connection had a ping timer of its own, an interval
    from its hello, so a room of four GS2 clients woke its relay process four times per interval
    to ping (a wake-up costs more than the pings on a host of many relays). The pings fall due
    on the interval's multiples of the loop's clock now: one wake-up pings them all, and each
    client is still pinged every interval."""
    async with room(token_public_key=PUBLIC, keepalive_timeout=1.2) as r:  # a ping every 0.3 s
        clients = []
        for user in ("a", "b", "c"):
            clients.append(await gs2(r, user))
            await asyncio.sleep(0.11)  # hellos apart, as players arrive
        conns = [c for c in r.relay._ws if c._pinger is not None]
        assert len(conns) == 3
        due = {c._pinger.when() for c in conns if c._pinger is not None}
        assert len(due) == 1, due  # one instant for all three
        first = due.pop()
        await asyncio.sleep(max(0.0, first - asyncio.get_running_loop().time()) + 0.05)
        later = {c._pinger.when() for c in conns if c._pinger is not None}
        assert len(later) == 1 and later.pop() == pytest.approx(first + 0.3)
        await asyncio.sleep(0.7)  # pinged and answered: still members
        assert len(r.relay.room.members) == 3
        for client in clients:
            await client.close()


async def test_without_a_token_key_the_room_key_is_the_credential() -> None:
    """Without token_public_key a token's claims name the user (unverified, as a native JOIN's
    user id is taken); a string that is no token is still refused."""
    async with room() as r:
        other = Ed25519PrivateKey.generate()
        a = await g.Gs2Client.join(r.port, r.key, tokens.mint(other, "anyone", ttl_s=-10))
        assert a.my is not None and a.my.user_id == "anyone"
        error, (code, _) = await _refused(
            r, signed(g.HELLO_REQUEST, g.hello_value("opaque", b""), r.key.encode())
        )
        assert error.body.component == "accessToken" and code == 1008
        await a.close()


async def test_the_gs2_listener_can_be_turned_off() -> None:
    """gs2_clients=False: a Container is a bad native HELLO, closed with 1008 and no answer."""
    async with room(token_public_key=PUBLIC, gs2_clients=False) as r:
        client = await g.Gs2Client.open(r.port, r.key)
        await client.hello(token("a"))
        assert (await client.closed()) == (1008, "handshake failed")
        assert not r.relay.room.sessions and r.relay.counters.packets_in[GS2] == 0


async def test_metrics_have_a_gs2_label(r: EmbeddedRoom) -> None:
    from relay.server.metrics import RelayMetrics

    a = await gs2(r, "a")
    b = await gs2(r, "b")
    await a.send(b"m")
    await b.next_of(g.BINARY_MESSAGE)
    text = RelayMetrics(r.relay.counters, dict).render().decode()
    assert 'relay_messages_in_total{transport="gs2"} 3.0' in text  # two hellos (JOINs), one message
    assert 'relay_messages_out_total{transport="gs2"}' in text
    await a.close()
    await b.close()


async def test_the_relays_pings_are_held_to_the_send_buffer() -> None:
    """A GS2 client that keeps sending and never reads stays a member (its messages keep it), and
    the relay's keepalive pings pile up unread. Before, only the room's output was held to
    ws_send_buffer there: with the buffer just under the limit, pings took it past and nothing
    looked (by 2 bytes a ping, for the room's lifetime). Now a ping that takes it past kicks the
    member as the room's output would."""
    limit = 16384
    async with room(
        token_public_key=PUBLIC,
        ws_send_buffer=limit,
        keepalive_timeout=1.6,  # a ping every 0.4 s
        messages_per_second=0,
        bytes_per_second=0,
    ) as r:
        sender = await native(r, "sender", "ws")
        victim = await gs2(r, "victim")
        assert victim.my is not None
        conn = next(c for c in r.relay._ws if c.peer is not None)
        assert conn.transport is not None
        # small kernel buffers on both ends (set, so not autotuned): the relay's own fills soon
        conn.transport.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        victim.ws.transport.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        victim.ws.transport.pause_reading()  # it reads nothing more, nor answers a ping

        async def keep_sending() -> None:  # its messages keep its seat (they go to the sender)
            while True:
                await victim.send(b"here")
                await asyncio.sleep(0.1)

        keeper = asyncio.create_task(keep_sending())
        out = r.relay.counters.messages_out

        async def to_victim(size: int) -> int:
            """What one message of `size` bytes to the victim adds to the relay's buffer for it."""
            before, written = conn.link.buffered, out[GS2]
            sender.send(b"m" * size)
            await eventually(lambda: out[GS2] > written, 2, "the message written to the victim")
            return conn.link.buffered - before

        try:
            for _ in range(2000):  # until the kernel takes no more (a few KiB)
                if conn.link.buffered:
                    break
                await to_victim(1000)
            overhead = await to_victim(200) - 200  # the Container and frame around the data
            while (gap := limit - 5 - conn.link.buffered - overhead) > 0:  # to 5 under the limit
                await to_victim(gap if gap <= 1000 else min(1000, gap - overhead - 200))
            assert 0 <= limit - conn.link.buffered <= 10, conn.link.buffered
            assert victim.my.connection_id in r.relay.room.members
            # from here the room writes it nothing: only pings (2 bytes each) take it past
            left = await sender.next_event_of(rc.Left, 4)
            assert left == rc.Left(victim.my.connection_id, LeaveReason.KICKED)
            assert victim.my.connection_id not in r.relay.room.members
        finally:
            keeper.cancel()
            victim.ws.transport.abort()
        await sender.close()


@pytest.mark.parametrize("tick", [0.0, 0.3])
async def test_an_aborted_relay_writes_nothing_after_it(tick: float) -> None:
    """Found in review: abort() (a group process's kill of one room) left the room's members in
    place, so a GS2 member's lost connection (a leave at once) queued its LEAVE for the others
    and the flush wrote into the closed UDP socket (an internal error, logged); with
    coalesce_tick, a flush queued before the abort did the same a tick later. Now nothing queued
    leaves after an abort and nothing of the relay stays scheduled."""
    async with room(token_public_key=PUBLIC, coalesce_tick=tick) as r:
        udp = await native(r, "udp", "udp")
        a = await gs2(r, "a")
        await eventually(lambda: len(r.relay.room.members) == 2, 2, "both members")
        loop = asyncio.get_running_loop()
        written = r.relay.counters.messages_in[GS2]
        await a.send(b"in flight")  # for the UDP member, flushed a tick later (or this pass)
        await eventually(lambda: r.relay.counters.messages_in[GS2] > written, 2, "the message read")
        r.relay.abort()
        await asyncio.sleep(tick + 0.2)  # past the tick; the connections' ends handled
        assert not r.relay.counters.drops["internal_error"]
        assert not r.relay._ws
        scheduled = [h for h in loop._scheduled if not h.cancelled()]  # type: ignore[attr-defined]
        assert not [h for h in scheduled if "flush" in repr(h)], scheduled
        await udp.close()
