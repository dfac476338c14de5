"""ClientConnection driven against the real relay room, both in memory (tests/protocol/harness.py):
no socket, no event loop, a manual clock."""

from __future__ import annotations

import pytest

from relay.protocol import messages as m
from relay.protocol.client import (
    LEAVE_UNSEEN,
    ClientConfig,
    ClientConnection,
    ClientState,
    ClosingEvent,
    ConnectionClosedError,
    ConnectionLost,
    ErrorEvent,
    Joined,
    Left,
    ProfileChanged,
    Received,
    Resumed,
    Welcomed,
)
from relay.protocol.constants import (
    HELLO_MIN_SIZE,
    UDP_MAX_PACKET,
    CloseReason,
    ErrorCode,
    LeaveReason,
    PacketType,
)
from relay.protocol.packets import parse_header
from relay.server.transport import UDP, Disconnect

from .harness import Net, new_room


def _client(key: str, user: str, transport: str = "udp", **kwargs: object) -> ClientConnection:
    return ClientConnection(key, user, transport=transport, **kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize("transport", ["udp", "ws"])
def test_two_clients_join_and_exchange(transport: str) -> None:
    key, _relay, net = new_room(transport)
    a = _client(key, "alice", transport, profile=b"pa")
    b = _client(key, "bob", transport, profile=b"pb")
    net.join(a)
    assert a.state is ClientState.JOINED and net.take(a) == [Welcomed(a.connection_id, False)]
    net.join(b)
    assert net.take(b) == [Welcomed(b.connection_id, False)]
    assert b.members == {a.connection_id: m.Member(a.connection_id, "alice", b"pa")}
    assert net.take(a) == [Joined(b.connection_id, "bob", b"pb")]
    a.send(b"hello")
    b.update_profile(b"new")
    net.pump(a, b)
    assert net.take(b) == [Received(a.connection_id, b"hello")]
    assert net.take(a) == [ProfileChanged(b.connection_id, b"new")]
    assert a.members[b.connection_id].profile == b"new"
    net.up(b, b.bye())
    net.down()
    assert b.state is ClientState.CLOSED
    assert net.take(a) == [Left(b.connection_id, LeaveReason.LEFT)]
    assert a.members == {}


def test_udp_hello_is_padded_and_ws_hello_is_not() -> None:
    key, _, _ = new_room()
    udp = _client(key, "u").initiate(0.0)
    ws = _client(key, "w", "ws").initiate(0.0)
    assert [len(p) for p in udp] == [UDP_MAX_PACKET] and [len(p) for p in ws] == [HELLO_MIN_SIZE]
    assert parse_header(udp[0]).type == PacketType.HELLO


def test_hello_is_resent_identically_until_accept() -> None:
    key, _room, net = new_room()
    client = _client(key, "u")
    first = client.initiate(0.0)
    assert client.timer() == pytest.approx(0.25)
    assert client.handle_timer(0.1) == [] and client.datagrams_to_send() == []
    client.handle_timer(0.25)
    again = client.datagrams_to_send()
    assert again == first
    # the relay answers a repeated HELLO with the very same ACCEPT; the second one is ignored
    net.up(client, first)
    net.up(client, again)
    answers = [packet for _, packet in net.to_client]
    net.to_client.clear()
    assert len(answers) == 2 and answers[0] == answers[1]
    for packet in answers:
        client.receive(packet, 0.3)
    assert client.state is ClientState.JOINING
    assert client.stats.dropped == {"dup_accept": 1}


def test_join_is_retransmitted_with_new_counters_until_welcome() -> None:
    key, _relay, net = new_room()
    client = _client(key, "u")
    joins: list[int] = []

    def lose_joins(packet: bytes) -> bool:
        header = parse_header(packet)
        if header.type == PacketType.DATA and len(joins) < 2:
            joins.append(header.counter)
            return True
        return False

    net.drop_up = lose_joins
    net.join(client)
    assert client.state is ClientState.JOINING
    net.advance(0.5, client)
    assert client.state is ClientState.JOINING
    net.advance(0.5, client)
    assert client.state is ClientState.JOINED
    assert joins == [1, 2] and client.stats.join_sent == 3
    assert [type(e) for e in net.take(client)] == [Welcomed]


def test_welcome_in_parts_completes_only_with_the_last_part() -> None:
    key, _relay, net = new_room()
    others = [_client(key, f"user{i}", profile=bytes(900)) for i in range(4)]
    for other in others:
        net.join(other)
    late = _client(key, "late")
    held: list[bytes] = []
    net.drop_down = lambda packet: parse_header(packet).type == PacketType.DATA and not held.append(packet)
    net.join(late)
    held = [p for p in held if parse_header(p).session_id == late.session_id]
    assert len(held) == 4  # one member of 900 bytes per part
    assert all(len(p) <= UDP_MAX_PACKET for p in held)
    for packet in held[:-1]:
        assert late.receive(packet, 0.0) == []
        assert late.state is ClientState.JOINING
    assert late.receive(held[-1], 0.0) == [Welcomed(late.connection_id, False)]
    assert sorted(late.members) == sorted(o.connection_id for o in others)


def test_replayed_and_tampered_packets_are_dropped_and_counted() -> None:
    key, _relay, net = new_room()
    a, b = _client(key, "a"), _client(key, "b")
    net.join(a)
    net.join(b)
    net.take(b)
    for data in (b"one", b"two"):
        a.send(data)
        net.up(a, a.datagrams_to_send())
    (_, first), (_, second) = net.to_client
    net.to_client.clear()
    assert b.receive(first, 0.0) == [Received(a.connection_id, b"one")]
    assert b.receive(first, 0.0) == []
    for offset, bit in ((len(second) - 1, 1), (20, 0x80), (2, 1), (4, 0xFF), (0, 2), (1, 7)):
        mutated = bytearray(second)
        mutated[offset] ^= bit
        assert b.receive(bytes(mutated), 0.0) == []
    assert b.receive(second[:31], 0.0) == []
    # forgeries did not move the replay window: the genuine packet is still accepted once
    assert b.receive(second, 0.0) == [Received(a.connection_id, b"two")]
    assert b.stats.dropped == {
        "replay": 1,
        "decrypt": 2,
        "flags": 1,
        "unknown_session": 1,
        "version": 1,
        "type": 1,
        "short": 1,
    }


def test_ws_requires_strictly_increasing_counters() -> None:
    key, _relay, net = new_room("ws")
    a, b = _client(key, "a", "ws"), _client(key, "b", "ws")
    net.join(a)
    net.join(b)
    net.take(b)
    a.send(b"1")
    net.up(a, a.datagrams_to_send())
    a.send(b"2")
    net.up(a, a.datagrams_to_send())
    (_, first), (_, second) = net.to_client
    net.to_client.clear()
    assert b.receive(second, 0.0) == [Received(a.connection_id, b"2")]
    assert b.receive(first, 0.0) == []
    assert b.stats.dropped == {"replay": 1}


def test_udp_accepts_reordered_packets_within_the_window() -> None:
    key, _relay, net = new_room()
    a, b = _client(key, "a"), _client(key, "b")
    net.join(a)
    net.join(b)
    for data in (b"1", b"2"):
        a.send(data)
        net.up(a, a.datagrams_to_send())
    (_, first), (_, second) = net.to_client
    net.to_client.clear()
    assert b.receive(second, 0.0) == [Received(a.connection_id, b"2")]
    assert b.receive(first, 0.0) == [Received(a.connection_id, b"1")]


def test_rtt_from_pong_and_keepalive_pings() -> None:
    key, _relay, net = new_room(keepalive_timeout=4.0)
    client = _client(key, "u")
    net.join(client)
    assert client.ping_interval == 1.0 and client.rtt is None
    client.ping(net.now)
    net.up(client, client.datagrams_to_send())
    net.now += 0.05
    net.down()
    assert client.rtt == pytest.approx(0.05)
    pings = client.stats.pings_sent
    net.advance(3.5, client)  # a PING per second keeps answers coming: no silence
    assert client.stats.pings_sent == pings + 3
    assert client.state is ClientState.JOINED


def test_silence_past_the_keepalive_timeout_is_a_lost_connection() -> None:
    key, _relay, net = new_room(keepalive_timeout=1.0)
    client = _client(key, "u")
    net.join(client)
    net.take(client)
    net.drop_down = lambda packet: True
    net.advance(1.1, client)
    assert net.take(client) == [ConnectionLost("silence")]
    assert client.state is ClientState.LOST and client.timer() is None


def test_a_rebound_client_answers_the_path_challenge_and_keeps_its_seat() -> None:
    key, room, net = new_room()
    a, b = _client(key, "a"), _client(key, "b")
    net.join(a)
    net.join(b)
    net.take(a)
    net.take(b)
    path = room.sessions[b.session_id].path
    assert path is not None and path.validated
    net.move(b, ("192.0.2.1", 50000))  # NAT rebinding: same session, new source address
    b.send(b"from elsewhere")
    net.pump(a, b)
    assert path.addr == ("192.0.2.1", 50000) and path.validated and not path.challenge
    assert room.counters.rebinds == 1
    assert net.take(a) == [Received(b.connection_id, b"from elsewhere")]
    a.send(b"reaches the new address", targets=[b.connection_id])
    net.pump(a, b)
    assert net.take(b) == [Received(a.connection_id, b"reaches the new address")]


def test_message_from_unknown_sender_triggers_one_sync() -> None:
    key, _relay, net = new_room()
    a, b = _client(key, "a"), _client(key, "b")
    net.join(a)
    net.drop_down = lambda packet: parse_header(packet).session_id == a.session_id
    net.join(b)  # a misses b's JOIN notification
    net.drop_down = lambda packet: False
    net.take(a)
    b.send(b"x")
    b.send(b"y")
    net.pump(b)
    assert [type(e) for e in net.take(a)] == [Received, Received]  # one packet, one SYNC
    net.pump(a, b)
    assert a.stats.syncs_sent == 1
    events = net.take(a)
    assert Received(b.connection_id, b"y") in events or a.members.get(b.connection_id) is not None
    assert b.connection_id in a.members
    assert any(isinstance(e, Joined) and e.connection_id == b.connection_id for e in events)


def test_resume_keeps_the_seat() -> None:
    key, relay, net = new_room()
    a, b = _client(key, "a"), _client(key, "b")
    net.join(a)
    net.join(b)
    cid = b.connection_id
    token = b.resume_token
    assert token is not None and len(token) == 16
    net.take(a)
    assert b.connection_lost(net.now) == [ConnectionLost("transport closed")]
    net.up(b, b.reconnect(net.now))
    net.down()
    net.pump(a, b)
    assert b.connection_id == cid and b.resume_token != token
    assert net.take(b)[-1] == Resumed(cid, True)
    assert net.take(a) == []  # the others see neither LEAVE nor JOIN
    assert set(relay.members) == {a.connection_id, cid}


def test_resume_with_an_expired_seat_is_a_fresh_join_with_a_diff() -> None:
    key, room, net = new_room(keepalive_timeout=1.0)
    a, b, c = _client(key, "a"), _client(key, "b"), _client(key, "c")
    for client in (a, b, c):
        net.join(client)
    old = b.connection_id
    b.connection_lost(net.now)  # b goes quiet; the room drops its seat after the keepalive timeout
    net.advance(1.5, a, c)
    assert old not in room.members
    assert Left(old, LeaveReason.TIMEOUT) in net.take(a)
    net.up(c, c.bye())  # c leaves while b is away
    net.to_client.clear()
    net.up(b, b.reconnect(net.now))
    net.down()
    net.pump(a, b)
    events = net.take(b)
    assert events[-1] == Resumed(b.connection_id, False) and b.connection_id != old
    assert Left(c.connection_id, LEAVE_UNSEEN) in events
    assert set(b.members) == {a.connection_id}


def test_resume_token_given_at_construction_is_sent() -> None:
    """A process that restarts with its saved resume token takes its old seat back."""
    key, room, net = new_room()
    first = _client(key, "u")
    net.join(first)
    cid, token = first.connection_id, first.resume_token
    assert token is not None
    again = _client(key, "u", resume_token=token)
    net.join(again)
    assert net.take(again) == [Welcomed(cid, True)]
    assert again.connection_id == cid and set(room.members) == {cid}
    stranger = _client(key, "v", resume_token=token)  # another user id: no seat of its own
    net.join(stranger)
    assert stranger.connection_id not in (0, cid)


@pytest.mark.parametrize("transport", ["udp", "ws"])
def test_refused_join_closes_with_an_error_event(transport: str) -> None:
    key, _relay, net = new_room(max_players=0)
    client = _client(key, "u", transport, access_token="tok")
    net.join(client)
    assert net.take(client) == [ErrorEvent(ErrorCode.ROOM_FULL, "room is full (0)")]
    assert client.state is ClientState.CLOSED and client.timer() is None
    assert net.closes == ([(Disconnect.RETRY_LATER, "room is full (0)")] if transport == "ws" else [])


@pytest.mark.parametrize("transport", ["udp", "ws"])
def test_closing_ends_the_connection(transport: str) -> None:
    key, room, net = new_room()
    client = _client(key, "u", transport)
    net.join(client)
    net.take(client)
    room.close(CloseReason.DELETED, "deleted", net.now)
    net.down()
    assert net.take(client) == [ClosingEvent(CloseReason.DELETED, "deleted")]
    assert client.state is ClientState.CLOSED and client.datagrams_to_send() == []
    assert net.room_closed == [(CloseReason.DELETED, "deleted")]


def test_a_room_left_without_a_word_times_out_its_member_then_closes_idle() -> None:
    key, room, net = new_room(idle_timeout=5.0, keepalive_timeout=1.0)
    a, b = _client(key, "a"), _client(key, "b")
    net.join(a)
    net.join(b)
    net.advance(2.0, a)  # b has vanished (no BYE, no more packets); a's pings keep it
    assert Left(b.connection_id, LeaveReason.TIMEOUT) in net.take(a)
    a.close()  # a vanishes too
    net.advance(5.0)
    assert room.quiet and net.room_closed == [(CloseReason.IDLE, "no communication")]
    assert room.closed and room.timer() == float("inf")


@pytest.mark.parametrize(("transport", "per_packet"), [("udp", 5), ("ws", 60)])
def test_sends_are_coalesced_into_packets_that_fit(transport: str, per_packet: int) -> None:
    key, _relay, net = new_room(transport)
    a, b = _client(key, "a", transport), _client(key, "b", transport)
    net.join(a)
    net.join(b)
    net.take(b)
    for i in range(60):
        a.send(bytes([i]) * 200)
    packets = a.datagrams_to_send()
    assert len(packets) == 60 // per_packet
    assert all(len(p) <= a.max_plaintext + 32 for p in packets)
    net.up(a, packets)
    net.down()
    assert [e.data[0] for e in net.take(b) if isinstance(e, Received)] == list(range(60))


def test_data_waits_for_the_welcome_and_too_large_is_refused() -> None:
    key, relay, net = new_room()
    a, b = _client(key, "a"), _client(key, "b")
    net.join(a)
    b.send(b"early")  # queued before the handshake; goes out after the WELCOME
    with pytest.raises(ValueError):
        b.send(bytes(2000))
    net.up(b, b.initiate(net.now))
    net.down()
    join = b.datagrams_to_send()
    assert len(join) == 1 and b.state is ClientState.JOINING  # the JOIN alone, data waits
    before = relay.counters.messages_in[0]
    net.up(b, join)
    assert relay.counters.messages_in[0] == before + 1  # the JOIN alone
    net.down()
    net.pump(b, a)
    assert Received(b.connection_id, b"early") in net.take(a)


def test_queue_is_bounded_while_not_joined() -> None:
    key, _, _ = new_room()
    client = ClientConnection(key, "u", config=ClientConfig(max_queued=3))
    for _ in range(5):
        client.send(b"x")
    assert client.stats.dropped == {"queue_full": 2}


def test_bad_constructor_arguments() -> None:
    key, _, _ = new_room()
    with pytest.raises(ValueError):
        ClientConnection(key, "u", transport="tcp")
    with pytest.raises(ValueError):
        ClientConnection(key, "")
    with pytest.raises(ValueError):
        ClientConnection("short", "u")


def test_net_helper_is_quiet_when_nothing_moves() -> None:
    key, _relay, net = new_room()
    assert isinstance(net, Net)
    client = _client(key, "u")
    net.join(client)
    before = client.stats.packets_sent
    net.pump(client)
    assert client.stats.packets_sent == before


def test_sending_on_a_closed_connection_raises() -> None:
    key, _relay, net = new_room()
    client = _client(key, "u")
    net.join(client)
    net.up(client, client.bye())
    with pytest.raises(ConnectionClosedError):
        client.send(b"x")
    with pytest.raises(ConnectionClosedError):
        client.update_profile(b"x")


def test_a_profile_the_relay_would_refuse_is_refused_locally_and_not_kept() -> None:
    """Found in review: update_profile kept a profile the relay then refused (ERROR 5), and the
    next JOIN (a fresh join after a resume window) carried it and was refused in turn. Past the
    room's max_profile, or past WELCOME_ENTRY_BYTES with the user id, it is a ValueError now."""
    key, room, net = new_room(max_profile=100)
    user = "u" * 100
    client = _client(key, user)
    net.join(client)
    with pytest.raises(ValueError, match="limit"):
        client.update_profile(bytes(101))
    assert client.profile == b""
    client.update_profile(bytes(100))
    net.pump(client)
    assert client.profile == bytes(100) and room.members[client.connection_id].profile == bytes(100)
    key, room, net = new_room()
    client = _client(key, user)
    net.join(client)
    with pytest.raises(ValueError, match="limit"):
        client.update_profile(bytes(m.WELCOME_ENTRY_BYTES - len(user) + 1))
    client.update_profile(bytes(m.WELCOME_ENTRY_BYTES - len(user)))
    net.pump(client)
    assert not [e for e in net.take(client) if isinstance(e, ErrorEvent)]


def test_a_sending_clients_ping_rides_in_its_data_and_an_idle_ones_goes_alone() -> None:
    """A PING of its own is a wake-up of the relay's process for one message; a client that is
    sending anyway puts it in its next DATA packet once due."""
    key, room, net = new_room(keepalive_timeout=8.0)
    a, b = _client(key, "a"), _client(key, "b")
    net.join(a)
    net.join(b)
    assert a.ping_interval == 2.0
    a_pings, b_pings, a_packets = a.stats.pings_sent, b.stats.pings_sent, a.stats.packets_sent
    datagrams = room.counters.packets_in[UDP]
    sends = 0
    for _ in range(200):  # 10 s of a at 20 Hz; b sends nothing
        net.advance(0.05, a, b)
        a.send(b"tick")
        sends += 1
        net.up(a, a.datagrams_to_send(net.now))
        net.down()
    assert a.stats.packets_sent - a_packets == sends  # no packet of a's but its data packets
    assert 4 <= a.stats.pings_sent - a_pings <= 5  # still one every 2 s, inside them
    assert a.rtt is not None
    assert 4 <= b.stats.pings_sent - b_pings <= 5  # the idle one's on its timer, as before
    # what woke the relay: a's data packets and b's PINGs
    assert room.counters.packets_in[UDP] - datagrams == sends + b.stats.pings_sent - b_pings
    assert a.state is ClientState.JOINED and b.state is ClientState.JOINED


def test_a_ping_waits_a_quarter_interval_for_data_then_goes_alone() -> None:
    key, _room, net = new_room(keepalive_timeout=8.0)
    a = _client(key, "a")
    net.join(a)
    a.send(b"once")
    net.up(a, a.datagrams_to_send(net.now))  # data since the last PING: the next may wait for more
    assert a.timer() == pytest.approx(net.now + 2.0 + 0.5)  # due at 2 s, a quarter more
    pings = a.stats.pings_sent
    net.advance(2.4, a)
    assert a.stats.pings_sent == pings  # waiting for data to ride on
    net.advance(0.2, a)
    assert a.stats.pings_sent == pings + 1  # none came: alone
    net.advance(2.1, a)
    assert a.stats.pings_sent == pings + 2  # no data since: on time again
