"""What an independent implementation and an attacker found (issue #13), each as a regression test
against the real room in memory (tests/protocol/harness.py): manual clock, every byte counted."""

from __future__ import annotations

import base64

import msgpack
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from relay.protocol import messages as m
from relay.protocol import tokens
from relay.protocol.client import ClientConnection, ErrorEvent, Received, Welcomed
from relay.protocol.constants import MAX_USER_ID_BYTES, UDP_HELLO_PAD_TO, ErrorCode, PacketType
from relay.protocol.gs2 import wire
from relay.protocol.gs2.message_pb2 import Container, HelloRequest, HelloResult
from relay.protocol.keys import decode_room_key, derive_psk
from relay.protocol.packets import ClientHello, Opener, Sealer, parse_header
from relay.server.gs2 import Gs2Peer
from relay.server.room import Room
from relay.server.transport import Disconnect
from tests.fuzz.targets import MemorySink, gs2_container
from tests.protocol.harness import Net, new_room


def _client(key: str, user: str, transport: str = "udp", **kwargs: object) -> ClientConnection:
    return ClientConnection(key, user, transport=transport, **kwargs)  # type: ignore[arg-type]


def _bytes_to(net: Net, client: ClientConnection) -> int:
    return sum(len(p) for c, p in net.to_client if c is client)


def _full_room(key: str, net: Net, others: int, profile: int) -> list[ClientConnection]:
    members = [_client(key, f"m{i}", profile=bytes(profile)) for i in range(others)]
    for member in members:
        net.join(member)
    return members


@pytest.mark.parametrize("transport", ["udp", "ws"])
def test_a_sync_flood_is_rate_limited_and_its_answers_stay_small(transport: str) -> None:
    """Before: 590 SYNCs in 3 s brought back 150 times their bytes, with no ERROR. Now a SYNC is a
    message like any other (rate limited), snapshots come at most 4 a second and out of the
    member's byte budget: the answers stay within a few times what asked for them."""
    key, room, net = new_room()
    _full_room(key, net, 4, profile=1000)  # a 5-member room of 1000-byte profiles
    flooder = _client(key, "flooder", transport)
    net.join(flooder)
    net.take(flooder)
    sent = received = 0
    welcomes = 0
    for _ in range(600):  # 3 s at 200 SYNCs a second, one a packet
        packet = flooder._sealer.seal(m.Sync().encode())  # type: ignore[union-attr]
        sent += len(packet)
        net.up(flooder, [packet])
        received += _bytes_to(net, flooder)
        welcomes += sum(1 for c, p in net.to_client if c is flooder and len(p) > 1000)
        net.down()
        net.now += 0.005
    assert flooder.state.value == "joined"  # over the rate for 3 s: not yet kicked (5 s)
    parts = 4 if transport == "udp" else 1  # a 1000-byte profile a part over UDP
    assert welcomes <= (4 + 4 * 3) * parts  # the snapshot rate: 4 at once, then 4 a second
    assert received <= 4 * sent, (received, sent)  # the flood: 150 times before
    assert room.counters.drops["rate_limited"] > 0
    assert room.counters.drops["snapshot_rate"] + room.counters.drops["snapshot_over_budget"] > 0
    errors = [e for e in net.take(flooder) if isinstance(e, ErrorEvent)]
    assert errors and all(e.code == ErrorCode.RATE_LIMITED for e in errors)


def test_a_ping_flood_spends_the_message_rate_and_is_kicked() -> None:
    """Before: 300 PINGs got 300 PONGs and the member's SENDs went on. Now PINGs are messages."""
    key, room, net = new_room(abuse_kick_after=2.0)
    watcher = _client(key, "watcher")
    flooder = _client(key, "flooder")
    net.join(watcher)
    net.join(flooder)
    pongs = 0
    for _ in range(40):  # 300 PINGs a second for up to 4 s
        packet = flooder._sealer.seal(m.Ping(1, 1).encode() * 30)  # type: ignore[union-attr]
        net.up(flooder, [packet])
        pongs += sum(1 for c, p in net.to_client if c is flooder and parse_header(p).type == PacketType.DATA)
        net.down()
        net.now += 0.1
        if flooder.state.value == "closed":
            break
    assert flooder.state.value == "closed"  # kicked
    assert flooder.connection_id not in room.members
    assert room.counters.drops["rate_limited"] > 0


@pytest.mark.parametrize("transport", ["udp", "ws"])
def test_a_member_without_message_tokens_has_its_packets_dropped_unread(transport: str) -> None:
    """Every packet of a 100k msg/s flood was decrypted before its messages were dropped by the
    rate limit (the flood's cost, and the honest members' added latency). Once the member's
    message tokens are spent, its packets are dropped before the AEAD until the next token is
    due; then one gets through again. A forged packet with its session id spends no tokens, so it
    cannot silence a member that is within its rate."""
    key, room, net = new_room(messages_per_second=100, message_burst=100)
    watcher, flooder = _client(key, "watcher"), _client(key, "flooder", transport)
    net.join(watcher)
    net.join(flooder)
    net.take(watcher)
    if transport == "udp":  # a forger with the member's session id (UDP: any source address)
        forger = Sealer(bytes(32), flooder._sealer.session_id, counter=1000)  # type: ignore[union-attr]
        for _ in range(150):  # they fail the AEAD and leave the member's rate alone
            room.udp_datagram(forger.seal(m.Send(b"forged", None).encode()), ("192.0.2.9", 9), net.now)
        assert room.counters.decrypt_failures == 150
    flooder.send(b"within its rate")
    net.up(flooder, flooder.datagrams_to_send())
    net.down()
    assert [e.data for e in net.take(watcher) if isinstance(e, Received)] == [b"within its rate"]

    def one_packet_of(count: int) -> None:
        for _ in range(count):
            flooder.send(b"x")
        net.up(flooder, flooder.datagrams_to_send())

    one_packet_of(150)  # the bucket's 99 tokens, then 51 messages over the rate
    decrypted = room.counters.decrypt_failures, dict(room.counters.drops)
    for _ in range(20):  # within the 10 ms until the next token: none of these is decrypted
        one_packet_of(8)
    assert room.counters.drops["rate_limited_unread"] == 20
    assert room.counters.decrypt_failures == decrypted[0]
    assert room.counters.drops["rate_limited"] == decrypted[1]["rate_limited"]
    net.down()
    assert len([e for e in net.take(watcher) if isinstance(e, Received)]) == 99
    net.now += 0.011  # a token is due: the next packet is read, its first message delivered
    one_packet_of(8)
    net.down()
    assert len([e for e in net.take(watcher) if isinstance(e, Received)]) == 1
    assert room.counters.drops["rate_limited_unread"] == 20
    assert flooder.state.value == "joined"


@pytest.mark.parametrize("transport", ["udp", "ws"])
@pytest.mark.parametrize("user_id", ["", "u" * 129, "é" * 65])
def test_a_join_with_a_bad_user_id_gets_error_bad_request(transport: str, user_id: str) -> None:
    """Before: dropped as malformed, so a client retransmitted its JOIN forever."""
    key, room, net = new_room()
    psk = derive_psk(decode_room_key(key))
    hello = ClientHello.create(psk, pad_to=UDP_HELLO_PAD_TO if transport == "udp" else 0)
    client = _client(key, "stand-in", transport)  # only as a mailbox for what the room sends
    if transport == "udp":
        room.udp_datagram(hello.packet, net.address(client), net.now)
    else:
        net._ws_up(client, hello.packet)
    ((_, accept),) = net.to_client
    net.to_client.clear()
    keys = hello.finish(accept)
    sealer, opener = Sealer(keys.k_c2s, keys.session_id), Opener(keys.k_s2c)
    join = sealer.seal(msgpack.packb([1, user_id, b"", None, None], use_bin_type=True))
    net.up(client, [join])
    answers = [p for c, p in net.to_client if c is client and p]
    assert len(answers) == 1
    (error,) = m.decode_relay(opener.open(answers[0], parse_header(answers[0]).counter))
    assert isinstance(error, m.Error) and error.code == ErrorCode.BAD_REQUEST
    assert "1 to 128 bytes" in error.text
    assert keys.session_id not in room.sessions and not room.members
    net.down()
    if transport == "ws":
        assert net.closes == [(Disconnect.VIOLATION, error.text)]
    net.to_client.clear()
    net.up(client, [sealer.seal(msgpack.packb([1, user_id, b"", None, None], use_bin_type=True))])
    assert net.to_client in ([], [(client, b"")])  # a retransmission: the session is gone


def test_a_lost_welcome_part_is_noticed_and_asked_for_again() -> None:
    """Before: WELCOME parts carried no number; after a SYNC whose second packet was lost, a client
    believed the room had 4 members when it had 5."""
    key, _room, net = new_room()
    others = _full_room(key, net, 4, profile=900)  # one member per UDP part
    late = _client(key, "late")
    net.join(late)
    assert len(late.members) == 4
    fifth = _client(key, "fifth", profile=bytes(900))
    net.drop_down = lambda packet: parse_header(packet).session_id == late.session_id  # late misses it
    net.join(fifth)
    net.drop_down = lambda packet: False
    assert len(late.members) == 4
    late.sync(net.now)
    net.up(late, late.datagrams_to_send())
    parts = [p for c, p in net.to_client if c is late]
    assert len(parts) == 5  # five others: five parts
    for i, (client, packet) in enumerate(list(net.to_client)):
        if client is late and i != 1:  # the second part is lost
            late.receive(packet, net.now)
    net.to_client.clear()
    assert len(late.members) == 4  # incomplete: not applied
    net.advance(1.1, late, *others, fifth)  # the SYNC is asked again
    assert len(late.members) == 5
    assert late.stats.syncs_sent >= 2


def test_a_rebinding_challenge_gets_through_while_traffic_waits() -> None:
    """Before: the challenge shared a packet with the waiting traffic, which overflowed the new
    address's budget and was dropped whole: the member heard nothing until it sent again."""
    key, room, net = new_room()
    a, b = _client(key, "a"), _client(key, "b")
    net.join(a)
    net.join(b)
    net.take(b)
    for i in range(30):
        a.send(bytes(500) + b"%d" % i, targets=[b.connection_id])
    net.up(a, a.datagrams_to_send())  # 30 large messages on their way to b...
    net.to_client.clear()  # ...lost as b's NAT binding changes
    net.move(b, ("192.0.2.1", 50002))
    b.ping(net.now)
    net.up(b, b.datagrams_to_send())  # one small packet from the new address
    to_b = [p for c, p in net.to_client if c is b]
    assert to_b, "the challenge went out"
    net.down()
    net.pump(a, b)  # b answers the challenge
    path = room.sessions[b.session_id].path
    assert path is not None and path.validated
    a.send(b"after", targets=[b.connection_id])
    net.pump(a, b)
    assert Received(a.connection_id, b"after") in net.take(b)


def test_welcome_parts_are_numbered() -> None:
    members = [m.Member(i, f"user{i}", bytes(900)) for i in range(1, 5)]
    builder = m.WelcomeBuilder(9, b"t" * 16, m.Limits(), False, members)
    welcomes = [msg for part in builder.parts(1168) for msg in m.decode_relay(part)]
    assert [(w.part, w.parts, w.more) for w in welcomes] == [(i, 4, i < 3) for i in range(4)]
    assert all(isinstance(w, m.Welcome) and w.resume_token == b"t" * 16 for w in welcomes)
    assert [mm for w in welcomes for mm in w.members] == members
    (single,) = m.decode_relay(m.WelcomeBuilder(9, b"t" * 16, m.Limits()).parts(1168)[0])
    assert (single.part, single.parts, single.more) == (0, 1, False)
    with pytest.raises(m.ProtocolError):  # a part number past the count
        m.decode_relay(msgpack.packb([16, 9, b"t" * 16, m.Limits().to_wire(), [], False, False, 2, 2]))


def test_a_relay_admits_user_tokens_only_checked_against_the_callers_clock() -> None:
    """`iss` must be the user issuer (a project token is signed with the same key), `sub` the
    user id, `exp` in the future of the wall clock the room is given (it reads none itself)."""
    signing = Ed25519PrivateKey.generate()
    public = tokens.public_key_to_text(signing.public_key())
    key, room, net = new_room(token_public_key=public)
    room.wall_offset = 1_800_000_000.0  # the room's now 0 is this Unix time
    wall = room.wall_offset
    cases = [
        (tokens.mint(signing, "u", 60, now=wall), None),
        (tokens.mint(signing, "u", 60, now=wall - 61), "expired"),
        (tokens.mint(signing, "other", 60, now=wall), "another user"),
        (tokens.mint(signing, "u", 60, issuer="gs2relay-project", now=wall), "not a user access token"),
        (tokens.mint(Ed25519PrivateKey.generate(), "u", 60, now=wall), "bad signature"),
    ]
    for token, refused in cases:
        client = _client(key, "u", access_token=token)
        net.join(client)
        events = net.take(client)
        if refused is None:
            assert events == [Welcomed(client.connection_id, False)]
        else:
            assert len(events) == 1 and isinstance(events[0], ErrorEvent), events
            assert events[0].code == ErrorCode.UNAUTHORIZED and refused in events[0].text


def _gs2_hello(room: Room, token: str) -> tuple[Gs2Peer, MemorySink]:
    encoder = wire.Encoder(room.config.room_key, room.started)
    sink = MemorySink()
    peer = Gs2Peer(room, encoder, sink)
    hello = HelloRequest(accessToken=token).SerializeToString()
    peer.receive(gs2_container(Container.HELLO_REQUEST, hello, encoder.signer), 0.0)
    room.flush(0.0)
    return peer, sink


def _claims_token(claims: bytes) -> str:
    return base64.urlsafe_b64encode(claims).rstrip(b"=").decode() + ".c2ln"


@pytest.mark.parametrize(
    "claims",
    [b'{"sub":"\\ud800","iat":0,"exp":1}', b"[" * 2000, b'{"sub":{"a":1},"iat":0,"exp":1}'],
    ids=["lone-surrogate", "nested-2000", "sub-not-a-string"],
)
def test_a_gs2_hello_with_hostile_token_claims_is_refused(claims: bytes) -> None:
    """Found by fuzzing: a relay without a token key reads a GS2 client's token claims unchecked,
    and a user id no UTF-8 can carry (UnicodeEncodeError) or a body of nested arrays
    (RecursionError) raised out of the handler: a traceback and a 1011 close instead of GS2's
    Error. Both, and a user id that is not a string, are a bad token now."""
    _, room, _ = new_room()
    with pytest.raises(tokens.TokenError):
        tokens.read_claims(_claims_token(claims))
    _, sink = _gs2_hello(room, _claims_token(claims))
    assert room.counters.drops == {"gs2_bad_token": 1}
    assert not room.sessions and not room.members
    assert sink.closed is not None and len(sink.sent) == 1
    assert Container.FromString(sink.sent[0]).messageType == Container.ERROR


def test_every_member_fits_a_udp_welcome() -> None:
    """Found by fuzzing: a member with a 128-byte user id and a 1,024-byte profile (each within
    its limit) made a WELCOME part of 1,205 bytes, larger than a UDP datagram holds: every UDP
    client joining after it was admitted (the others saw it join) and never welcomed. A user id
    and profile together are now held to what one WELCOME part carries over UDP."""
    key, room, net = new_room()
    budget = m.WELCOME_ENTRY_BYTES
    assert room.config.max_profile + MAX_USER_ID_BYTES > budget  # the defaults allowed it
    big = _client(key, "u" * MAX_USER_ID_BYTES, "ws", profile=bytes(budget - MAX_USER_ID_BYTES + 1))
    net.join(big)
    assert big.state.value == "closed"
    assert [e.code for e in net.take(big) if isinstance(e, ErrorEvent)] == [ErrorCode.PROFILE_TOO_LARGE]
    largest = _client(key, "u" * MAX_USER_ID_BYTES, "ws", profile=bytes(budget - MAX_USER_ID_BYTES))
    net.join(largest)
    assert largest.state.value == "joined"
    udp = _client(key, "udp")
    net.join(udp)
    assert udp.state.value == "joined" and largest.connection_id in udp.members
    assert udp.members[largest.connection_id].profile == bytes(budget - MAX_USER_ID_BYTES)
    with pytest.raises(ValueError):  # the client refuses it before the relay would
        largest.update_profile(bytes(budget - MAX_USER_ID_BYTES + 1))
    too_big = m.SetProfile(bytes(budget - MAX_USER_ID_BYTES + 1)).encode()  # a client that does not check
    net.up(largest, [largest._sealer.seal(too_big)])  # type: ignore[union-attr]
    net.pump(largest, udp)
    assert [e.code for e in net.take(largest) if isinstance(e, ErrorEvent)] == [ErrorCode.PROFILE_TOO_LARGE]
    assert udp.members[largest.connection_id].profile == bytes(budget - MAX_USER_ID_BYTES)
    assert not room.counters.drops["too_large_for_transport"]


def test_a_gs2_client_is_welcomed_into_a_room_of_large_profiles() -> None:
    """Found by fuzzing: a GS2 client's snapshot is one WELCOME part, and the relay read it back
    with a client's msgpack limits (128 KiB): in a room of 150 members with 1 KiB profiles the
    GS2 client stayed a member that never got its HelloResult (internal_error at every flush)."""
    key, room, net = new_room(max_players=150)
    profile = bytes(room.config.max_profile)
    for i in range(130):
        net.join(_client(key, f"member-{i:08d}", "ws", profile=profile))
    token = tokens.mint(Ed25519PrivateKey.generate(), "gs2-player")
    _, sink = _gs2_hello(room, token)
    assert not room.counters.drops["internal_error"], room.counters.drops
    results = [Container.FromString(d) for d in sink.sent]
    assert [c.messageType for c in results] == [Container.HELLO_RESULT]
    hello = HelloResult.FromString(results[0].payload.value)
    assert len(hello.players) == 130 and {p.profile for p in hello.players} == {profile}
    assert sum(len(p.profile) for p in hello.players) > 1 << 17
