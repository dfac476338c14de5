"""The relay's room driven entirely in memory: the real Room and real client state machines, no
socket and no event loop (tests/protocol/harness.py), a manual clock and seeded randomness. What
the socket tests show with real timing, these show exactly."""

from __future__ import annotations

import asyncio
import random
from dataclasses import replace

import pytest

from relay.protocol import messages as m
from relay.protocol.client import (
    ClientConnection,
    ClientState,
    ClosingEvent,
    ErrorEvent,
    Joined,
    Left,
    ProfileChanged,
    Received,
    Resumed,
    Welcomed,
)
from relay.protocol.constants import CloseReason, ErrorCode, LeaveReason
from relay.server.config import RelayConfig
from relay.server.metrics import Counters
from relay.server.room import Room
from relay.server.transport import Disconnect
from tests.protocol.harness import Net, new_room


def _client(key: str, user: str, transport: str = "udp", **kwargs: object) -> ClientConnection:
    return ClientConnection(key, user, transport=transport, **kwargs)  # type: ignore[arg-type]


def test_two_clients_on_both_transports_play_in_memory() -> None:
    with pytest.raises(RuntimeError):
        asyncio.get_running_loop()  # no event loop anywhere in this test
    key, room, net = new_room()
    udp = _client(key, "alice", "udp", profile=b"pa")
    ws = _client(key, "bob", "ws", profile=b"pb")
    net.join(udp)
    net.join(ws)
    assert net.take(udp) == [Welcomed(udp.connection_id, False), Joined(ws.connection_id, "bob", b"pb")]
    assert net.take(ws) == [Welcomed(ws.connection_id, False)]
    assert ws.members == {udp.connection_id: m.Member(udp.connection_id, "alice", b"pa")}
    udp.send(b"to everyone")
    ws.send(b"to alice", targets=[udp.connection_id])
    ws.update_profile(b"pb2")
    net.pump(udp, ws)
    assert net.take(ws) == [Received(udp.connection_id, b"to everyone")]
    assert net.take(udp) == [
        Received(ws.connection_id, b"to alice"),
        ProfileChanged(ws.connection_id, b"pb2"),
    ]
    net.up(ws, ws.bye())
    net.down()
    assert net.take(udp) == [Left(ws.connection_id, LeaveReason.LEFT)]
    assert net.closes == [(Disconnect.BYE, "bye")]
    assert set(room.members) == {udp.connection_id}
    assert room.counters.drops == {}


def test_the_room_asks_for_one_flush_per_pass_and_seals_once_per_recipient() -> None:
    key, room, net = new_room()
    a, b, c = _client(key, "a"), _client(key, "b"), _client(key, "c")
    for client in (a, b, c):
        net.join(client)
    asked: list[float] = []
    room.on_flush = asked.append
    for i in range(5):
        a.send(b"m%d" % i)
    packets = a.datagrams_to_send()
    a.send(b"late")
    packets += a.datagrams_to_send()  # two client packets handled in the same pass
    for packet in packets:
        room.udp_datagram(packet, net.address(a), net.now)
    assert asked == [0.0]  # asked once, at the first queued message; nothing sent yet
    assert net.to_client == []
    room.flush(net.now)
    assert sorted(client.session_id for client, _ in net.to_client) == sorted([b.session_id, c.session_id])
    net.down()
    assert [e.data for e in net.take(b) if isinstance(e, Received)] == [
        b"m0",
        b"m1",
        b"m2",
        b"m3",
        b"m4",
        b"late",
    ]


def test_a_coalescing_tick_asks_for_a_later_flush() -> None:
    key, room, net = new_room(coalesce_tick=0.02)
    a, b = _client(key, "a"), _client(key, "b")
    net.join(a)
    net.join(b)
    asked: list[float] = []
    room.on_flush = asked.append
    a.send(b"x")
    for packet in a.datagrams_to_send():
        room.udp_datagram(packet, net.address(a), net.now)
    assert asked == [0.02]


def test_a_burst_held_past_the_delay_leaves_before_the_next_datagram() -> None:
    key, room, net = new_room(max_coalesce_delay_udp=0.001)
    a, b = _client(key, "a"), _client(key, "b")
    net.join(a)
    net.join(b)
    net.take(b)
    burst = []
    for i in range(3):
        a.send(b"%d" % i)
        burst += a.datagrams_to_send()
    room.udp_datagram(burst[0], net.address(a), net.now)
    room.udp_datagram(burst[1], net.address(a), net.now + 0.0005)  # within the delay: held
    assert net.to_client == []
    room.udp_datagram(burst[2], net.address(a), net.now + 0.0015)  # past it: 0 and 1 leave first
    assert len(net.to_client) == 1
    net.down()
    assert [e.data for e in net.take(b) if isinstance(e, Received)] == [b"0", b"1"]


def test_an_unvalidated_address_gets_no_more_bytes_than_it_sent() -> None:
    """Anti-amplification after NAT rebinding, with traffic waiting for the member: whatever the
    room sends to the new address before it is validated stays within what came from it."""
    key, room, net = new_room()
    a, b = _client(key, "a"), _client(key, "b")
    net.join(a)
    net.join(b)
    new = ("192.0.2.1", 50001)
    sent_to_new: list[int] = []
    real = room.udp_writer

    def writer(packet: bytes, addr: object) -> None:
        if addr == new:
            sent_to_new.append(len(packet))
        real(packet, addr)

    room.udp_writer = writer
    path = room.sessions[b.session_id].path
    assert path is not None
    path.sendto = writer  # the path writes through the writer it was made with
    for i in range(20):
        a.send(bytes(900) + b"%d" % i, targets=[b.connection_id])
    net.up(a, a.datagrams_to_send())  # 20 large messages queued for b
    net.to_client.clear()
    net.move(b, new)
    b.ping(net.now)
    small = b.datagrams_to_send()
    received = sum(map(len, small))
    net.up(b, small)
    # the budget, except that the challenge always goes: 43 bytes for a packet of at least 34
    assert not path.validated and sum(sent_to_new) <= max(received, 43 * len(small))
    assert room.counters.drops["amplification"] >= 1


def test_a_late_packet_from_the_old_address_does_not_move_the_session_back() -> None:
    """NAT rebinding with reordering: the packet sent just before the move arrives after the
    first one from the new address. It is delivered, but only the newest packet moves a session
    (7.3): the session stays at the new address, challenged once, and b's traffic goes there.
    (It went back to the old address, which the NAT no longer maps, and again to the new one on
    b's next packet, challenged each time; tests/impaired found it.)"""
    key, room, net = new_room()
    a, b = _client(key, "a"), _client(key, "b")
    net.join(a)
    net.join(b)
    old, new = net.address(b), ("192.0.2.1", 50001)
    b.send(b"sent before the move")
    late = b.datagrams_to_send()
    net.move(b, new)
    b.send(b"sent after the move")
    net.up(b, b.datagrams_to_send())
    room.udp_datagram(late[0], old, net.now)  # reordered past the move, from the old address
    room.flush(net.now)
    path = room.sessions[b.session_id].path
    assert path is not None and path.addr == new and room.counters.rebinds == 1
    net.pump(a, b)  # b answers the challenge from the new address
    assert path.validated and path.addr == new
    assert sorted(e.data for e in net.take(a) if isinstance(e, Received)) == [
        b"sent after the move",
        b"sent before the move",
    ]
    a.send(b"to b")
    net.pump(a, b)
    assert [e for e in net.take(b) if isinstance(e, Received)] == [Received(a.connection_id, b"to b")]


def test_a_member_over_its_rate_is_told_then_kicked() -> None:
    key, room, net = new_room(messages_per_second=10, message_burst=10, abuse_kick_after=3.0)
    a, b = _client(key, "a"), _client(key, "b")
    net.join(a)
    net.join(b)
    net.take(a)
    events: list[object] = []
    for _ in range(40):  # 4 s at 100 messages/s, ten times its rate
        for _ in range(10):
            a.send(b"spam")
        net.up(a, a.datagrams_to_send())
        net.down()
        events += net.take(a)
        net.now += 0.1
        if a.state is ClientState.CLOSED:
            break
    told = [e for e in events if isinstance(e, ErrorEvent) and e.code == ErrorCode.RATE_LIMITED]
    assert 3 <= len(told) <= 4  # at most once a second, until the kick after 3 s over the limit
    assert events[-1] == ClosingEvent(CloseReason.KICKED, "rate limit exceeded")
    assert a.state is ClientState.CLOSED
    assert a.connection_id not in room.members
    assert Left(a.connection_id, LeaveReason.KICKED) in net.take(b)
    assert room.counters.drops["rate_limited"] > 0


def test_a_dropped_websocket_resumes_within_the_grace_and_not_after() -> None:
    key, room, net = new_room(resume_grace=2.0, keepalive_timeout=5.0)
    a, b = _client(key, "a", "ws"), _client(key, "b", "ws")
    net.join(a)
    net.join(b)
    net.take(a)
    cid = b.connection_id
    net.drop_websocket(b)
    net.take(b)
    b.connection_lost(net.now)
    net.advance(1.0, a)
    net.up(b, b.reconnect(net.now))
    net.down()
    net.pump(a, b)
    assert net.take(b)[-1] == Resumed(cid, True)
    net.drop_websocket(b)
    b.connection_lost(net.now)
    net.advance(2.5, a)  # past the grace: the seat is gone
    assert Left(cid, LeaveReason.DISCONNECTED) in net.take(a)
    assert cid not in room.members


def test_the_room_is_woken_at_its_earliest_deadline_not_swept_on_a_period(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Found measuring idle relays: the room was swept every half second while anyone was in it,
    two wake-ups a second of every relay process (about 200 us of CPU each on a host of many). It
    is woken at its earliest deadline now: members that keep talking push their keepalive end
    on, one that goes silent is dropped at its end exactly, and a connection dropped into its
    resume grace brings the timer forward (`on_timer`)."""
    key, room, net = new_room(keepalive_timeout=5.0, resume_grace=2.0, idle_timeout=60.0)
    a, b, c = _client(key, "a"), _client(key, "b"), _client(key, "c", "ws")
    for client in (a, b, c):
        net.join(client)
    assert room.timer() == pytest.approx(5.0)  # the joins' keepalive ends; nothing sooner
    wakes: list[float] = []
    handle = Room.handle_timer  # a Room has __slots__: its method is watched on the class
    monkeypatch.setattr(Room, "handle_timer", lambda self, now: (wakes.append(now), handle(self, now)))
    for _ in range(35):  # a and c talk every 0.1 s for 3.5 s; b is silent
        net.now += 0.1
        for client in (a, c):
            client.send(b"tick")
            net.up(client, client.datagrams_to_send())
        net.advance(0.0, a, c)
    assert wakes == [] and set(room.members) == {a.connection_id, b.connection_id, c.connection_id}
    net.advance(1.5, a, c)  # b's keepalive end, 5 s after its last packet, and no wake before it
    assert wakes == [pytest.approx(5.0)]
    assert b.connection_id not in room.members
    last_heard = min(room.members[x.connection_id].session.last_seen for x in (a, c))  # type: ignore[union-attr]
    assert last_heard >= 3.5 and room.timer() == pytest.approx(last_heard + 5.0)  # a's or c's end
    asked: list[bool] = []
    room.on_timer = lambda: asked.append(True)
    net.drop_websocket(c)
    assert asked == [True] and room.timer() == pytest.approx(5.0 + 2.0)  # c's seat, held 2 s
    net.advance(2.0, a)
    assert c.connection_id not in room.members and wakes[-1] == pytest.approx(7.0)


def _resume_after_lost_welcomes(lost: int) -> tuple[Room, Net, ClientConnection, ClientConnection, int]:
    """Members a and b; b's next `lost` SYNC answers (each a WELCOME with a new resume token)
    are lost, then its transport drops and it reconnects with the token it still holds."""
    key, room, net = new_room(keepalive_timeout=5.0)
    a, b = _client(key, "a"), _client(key, "b")
    net.join(a)
    net.join(b)
    net.take(a)
    cid, held = b.connection_id, b.resume_token
    for _ in range(lost):
        net.up(b, [b._sealer.seal(m.Sync().encode())])  # type: ignore[union-attr]
        net.to_client = [(c, p) for c, p in net.to_client if c is not b]  # its WELCOME is lost
    assert b.resume_token == held
    b.connection_lost(net.now)
    net.up(b, b.reconnect(net.now))
    net.down()
    net.pump(a, b)
    return room, net, a, b, cid


def test_the_token_before_a_lost_welcome_still_resumes_and_one_older_does_not() -> None:
    """A SYNC's WELCOME brings a new resume token; over UDP it can be lost, and the client then
    holds the token before it. That one still resumes the seat (it used to be a fresh join, the
    user holding two seats until the old one timed out); one two WELCOMEs old does not."""
    room, net, a, b, cid = _resume_after_lost_welcomes(2)  # two WELCOMEs old: a fresh join
    assert Resumed(b.connection_id, False) in net.take(b) and b.connection_id != cid
    assert Joined(b.connection_id, "b", b"") in net.take(a)

    room, net, a, b, cid = _resume_after_lost_welcomes(1)
    assert net.take(b)[-1] == Resumed(cid, True)
    assert net.take(a) == [] and list(room.members) == [a.connection_id, cid]


def test_randomness_comes_from_the_caller() -> None:
    """Two rooms given the same random source hand out the same session ids and resume tokens."""
    outcomes = []
    for _ in range(2):
        key, _room, net = new_room(seed=7)
        client = _client(key, "u")
        net.join(client)
        outcomes.append((client.session_id, client.resume_token))
    assert outcomes[0] == outcomes[1]
    key, _room, net = new_room(seed=8)
    client = _client(key, "u")
    net.join(client)
    assert (client.session_id, client.resume_token) != outcomes[0]


def test_a_room_needs_no_clock_of_its_own() -> None:
    """Times are the caller's: a room started at t=1000 ends idle at t=1000 + idle_timeout."""
    key = new_room()[0]
    room = Room(replace(RelayConfig(room_key=key), idle_timeout=30.0), Counters(), 1000.0, random.randbytes)
    ended: list[CloseReason] = []
    room.on_close = lambda reason, text: ended.append(reason)
    assert room.timer() == 1030.0
    room.handle_timer(1029.9)
    assert not ended
    room.handle_timer(1030.0)
    assert ended == [CloseReason.IDLE]


def test_shedding_drops_udp_fan_out_and_keeps_websocket_members_whole() -> None:
    """What the caps guard turns on at 90% of the CPU budget (relay/agent/caps.py): fan-out to UDP
    members (unreliable by contract) is dropped and counted, broadcast or targeted; WebSocket
    members still get everything; off again, UDP members get messages again."""
    key, room, net = new_room()
    a, u, w = _client(key, "a"), _client(key, "u"), _client(key, "w", "ws")
    for client in (a, u, w):
        net.join(client)
    for client in (a, u, w):
        net.take(client)
    room.shed_optional = True
    a.send(b"all")
    a.send(b"to u", targets=[u.connection_id])
    a.send(b"to w", targets=[w.connection_id])
    net.pump(a, u, w)
    assert net.take(w) == [Received(a.connection_id, b"all"), Received(a.connection_id, b"to w")]
    assert not [e for e in net.take(u) if isinstance(e, Received)]
    assert room.counters.drops["shed"] == 2
    room.shed_optional = False
    a.send(b"again")
    net.pump(a, u, w)
    assert [e for e in net.take(u) if isinstance(e, Received)] == [Received(a.connection_id, b"again")]
    assert room.counters.drops["shed"] == 2


def test_a_packets_messages_reach_the_others_in_the_order_sent() -> None:
    """Consecutive broadcasts are queued together (one extend per recipient); a message of
    another kind between them must not overtake the ones before it, nor fall behind the ones after."""
    key, _, net = new_room()
    a, b = _client(key, "a"), _client(key, "b", "ws")
    net.join(a)
    net.join(b)
    net.take(b)
    a.send(b"one")
    a.send(b"two")
    a.update_profile(b"new")
    a.send(b"three")
    packets = a.datagrams_to_send()
    assert len(packets) == 1  # all four in one client packet
    net.up(a, packets)
    net.down()
    assert net.take(b) == [
        Received(a.connection_id, b"one"),
        Received(a.connection_id, b"two"),
        ProfileChanged(a.connection_id, b"new"),
        Received(a.connection_id, b"three"),
    ]
