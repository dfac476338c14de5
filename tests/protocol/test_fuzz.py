"""Every decoder, fed random bytes, mutated valid packets and random msgpack: only ProtocolError
(or a clean result) may come out, and ClientConnection.receive never raises at all."""

from __future__ import annotations

import contextlib
import functools
from typing import Any

import msgpack
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from relay.protocol import messages as m
from relay.protocol.client import ClientConnection, ClientState
from relay.protocol.constants import ProtocolError
from relay.protocol.keys import derive_psk
from relay.protocol.packets import ClientHello, Opener, Sealer, make_accept, parse_header, verify_hello

from .harness import new_room

FUZZ = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@functools.cache
def fixture() -> dict[str, Any]:
    """One handshake's worth of valid packets to mutate (built once: keys are slow to make)."""
    psk = derive_psk(bytes(range(32)))
    hello = ClientHello.create(psk, pad_to=1200)
    accept, keys = make_accept(psk, hello.public, 77)
    c2s = Sealer(keys.k_c2s, 77)
    s2c = Sealer(keys.k_s2c, 77)
    client_data = c2s.seal(m.Join("u", b"p").encode() + m.Send(b"x", (1, 2)).encode())
    limits = m.Limits()
    welcome = m.Welcome(1, bytes(16), limits, (m.Member(2, "v", b"q"),)).encode()
    relay_data = s2c.seal(welcome + m.encode_message(2, b"hi") + m.PathPing(5).encode())
    return {
        "psk": psk,
        "hello": hello,
        "accept": accept,
        "keys": keys,
        "client_data": client_data,
        "relay_data": relay_data,
        "valid": [hello.packet, accept, client_data, relay_data],
    }


def only_protocol_errors(fn: Any, *args: Any) -> None:
    with contextlib.suppress(ProtocolError):
        fn(*args)


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    packet = bytearray(draw(st.sampled_from(fixture()["valid"])))
    for _ in range(draw(st.integers(1, 4))):
        action = draw(st.sampled_from(["flip", "truncate", "extend", "set"]))
        if action == "flip" and packet:
            i = draw(st.integers(0, len(packet) - 1))
            packet[i] ^= draw(st.integers(1, 255))
        elif action == "truncate":
            del packet[draw(st.integers(0, len(packet))) :]
        elif action == "extend":
            packet += draw(st.binary(max_size=64))
        elif action == "set" and len(packet) >= 16:
            i = draw(st.integers(0, 15))
            packet[i] = draw(st.sampled_from([0, 1, 2, 3, 4, 255]))
    return bytes(packet)


packets = st.one_of(st.binary(max_size=1300), mutated())

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**63), 2**64 - 1),
    st.floats(allow_nan=False),
    st.text(max_size=20),
    st.binary(max_size=20),
)
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=5), max_leaves=12)
codes = st.one_of(st.sampled_from([*range(0, 26), 1.0, True, -1, 2**40]), values)
message_arrays = st.lists(values, max_size=8).flatmap(lambda rest: codes.map(lambda code: [code, *rest]))


cids = st.integers(0, 6)
users = st.text(min_size=1, max_size=4)
small = st.binary(max_size=6)
members = st.builds(m.Member, cids, users, small)
relay_messages = st.one_of(
    st.builds(m.Message, cids, small),
    st.builds(
        m.Welcome,
        cids,
        st.binary(min_size=16, max_size=16),
        st.just(m.Limits()),
        st.lists(members, max_size=3).map(tuple),
        st.booleans(),
        st.booleans(),
    ),
    st.builds(m.MemberJoined, cids, users, small),
    st.builds(m.MemberLeft, cids, st.integers(0, 5)),
    st.builds(m.MemberProfile, cids, small),
    st.builds(m.Pong, st.integers(0, 9), st.integers(0, 2**64 - 1)),
    st.builds(m.Error, st.integers(0, 9), st.text(max_size=4)),
    st.builds(m.Closing, st.integers(0, 9), st.text(max_size=4)),
    st.builds(m.PathPing, st.integers(0, 2**64 - 1)),
)


@st.composite
def plaintexts(draw: st.DrawFn) -> bytes:
    """Concatenated msgpack: well-formed relay messages with odd values, message-like arrays,
    other values, sometimes cut short."""
    valid = relay_messages.map(lambda msg: msg.encode())
    loose = st.one_of(message_arrays, values).map(lambda item: msgpack.packb(item, use_bin_type=True))
    raw = b"".join(draw(st.lists(st.one_of(valid, valid, loose), max_size=4)))
    if draw(st.booleans()) and raw:
        cut = draw(st.integers(0, len(raw)))
        raw = raw[:cut] + draw(st.binary(max_size=8))
    return raw


@FUZZ
@given(packets)
def test_parse_header(packet: bytes) -> None:
    only_protocol_errors(parse_header, packet)


@FUZZ
@given(st.one_of(st.binary(max_size=300), plaintexts()))
def test_decode_client_and_relay(plaintext: bytes) -> None:
    only_protocol_errors(m.decode_client, plaintext)
    only_protocol_errors(m.decode_relay, plaintext)


@FUZZ
@given(packets)
def test_opener_open(packet: bytes) -> None:
    """Opener.open's contract is a packet that parse_header accepted (the hot path checks once)."""
    keys = fixture()["keys"]
    try:
        header = parse_header(packet)
    except ProtocolError:
        return
    for key in (keys.k_c2s, keys.k_s2c):
        for strict in (False, True):
            only_protocol_errors(Opener(key, strict).open, packet, header.counter)


@FUZZ
@given(packets)
def test_verify_hello_and_finish(packet: bytes) -> None:
    f = fixture()

    def hello(p: bytes) -> None:
        parse_header(p)
        verify_hello(f["psk"], p)

    only_protocol_errors(hello, packet)
    only_protocol_errors(f["hello"].finish, packet)


def joined_client() -> tuple[ClientConnection, Any, Any]:
    key, relay, net = new_room()
    client = ClientConnection(key, "fuzz")
    net.join(client)
    assert client.state is ClientState.JOINED
    return client, relay, net


@FUZZ
@given(st.lists(packets, max_size=5))
def test_client_receive_never_raises(batch: list[bytes]) -> None:
    client = ClientConnection(bytes(range(32)), "fuzz")
    client.initiate(0.0)
    for packet in batch:
        client.receive(packet, 1.0)
        client.handle_timer(2.0)
        client.datagrams_to_send()


@FUZZ
@given(st.lists(plaintexts(), min_size=1, max_size=3))
def test_client_receive_of_authentic_garbage_never_raises(batch: list[bytes]) -> None:
    """Correctly sealed packets whose plaintext is random: the message handlers must cope."""
    client, relay, _ = joined_client()
    session = relay.sessions[client.session_id]  # its sealer is the relay's key for this client
    for plaintext in batch:
        client.receive(session.sealer.seal(plaintext), 1.0)
        client.handle_timer(5.0)
        client.datagrams_to_send()
    assert client.state in (ClientState.JOINED, ClientState.CLOSED, ClientState.LOST)
