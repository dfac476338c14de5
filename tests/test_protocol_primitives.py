"""Round trips and rejections of the low-level protocol pieces (no sockets)."""

from __future__ import annotations

import pytest

from relay.protocol import keys, packets
from relay.protocol import messages as m
from relay.protocol.constants import UDP_MAX_PLAINTEXT, ProtocolError


def _session() -> tuple[packets.SessionKeys, packets.SessionKeys]:
    psk = keys.derive_psk(keys.decode_room_key(keys.generate_room_key()))
    hello = packets.ClientHello.create(psk, pad_to=1200)
    assert len(hello.packet) == 1200
    packets.parse_header(hello.packet)
    accept, server = packets.make_accept(psk, packets.verify_hello(psk, hello.packet), 7)
    return hello.finish(accept), server


def test_handshake_agrees_and_data_round_trips() -> None:
    client, server = _session()
    assert client == server
    packet = packets.Sealer(client.k_c2s, 7).seal(m.Send(b"hi", (2, 3)).encode())
    header = packets.parse_header(packet)
    opener = packets.Opener(server.k_c2s)
    assert m.decode_client(opener.open(packet, header.counter)) == [m.Send(b"hi", (2, 3))]
    with pytest.raises(ProtocolError, match="replay"):
        opener.open(packet, header.counter)


def test_wrong_room_key_fails_hello() -> None:
    psk = keys.derive_psk(keys.decode_room_key(keys.generate_room_key()))
    other = keys.derive_psk(keys.decode_room_key(keys.generate_room_key()))
    hello = packets.ClientHello.create(psk)
    with pytest.raises(ProtocolError, match="decrypt"):
        packets.verify_hello(other, hello.packet)


def test_welcome_splits_to_fit_a_datagram() -> None:
    members = [m.Member(i, f"user{i}", bytes(1000)) for i in range(1, 6)]
    parts = m.WelcomeBuilder(9, bytes(16), m.Limits(), members=members).parts(UDP_MAX_PLAINTEXT)
    assert len(parts) == 5 and all(len(p) <= UDP_MAX_PLAINTEXT for p in parts)
    decoded = m.decode_relay(b"".join(parts))
    assert [w.more for w in decoded] == [True] * 4 + [False]
    assert [mem for w in decoded for mem in w.members] == members


@pytest.mark.parametrize(
    "garbage",
    [
        b"\xc0\x92",  # a top-level nil (looks like the sentinel), then an array still open
        b"\x90\xc0\x93\x01",  # a message, a nil, then an array of three with one element
        b"\xc0\xc4\x05ab",  # a nil, then a bin still waiting for bytes
        b"\x92",  # only an open array (swallows the sentinel)
    ],
)
def test_truncated_plaintext_leaves_nothing_for_the_next_packet(garbage: bytes) -> None:
    """The decoder is reused across packets: a pending object must never leak into the next."""
    with pytest.raises(ProtocolError):
        m.decode_relay(garbage)
    assert m.decode_relay(m.Pong(1, 2).encode()) == [m.Pong(1, 2)]
    assert m.decode_client(m.Ping(3, 4).encode()) == [m.Ping(3, 4)]
