"""The relay's own reading of common WebSocket frames (relay/protocol/wsframes.py), against
websockets' serializer; and a connection that hands the stream to websockets' parser for what
it does not take (a close, text, a fragment) while its binary frames and pings keep working
over real sockets."""

from __future__ import annotations

import asyncio
import os

from hypothesis import given, settings
from hypothesis import strategies as st
from websockets.frames import Close, Frame, Opcode

import relay.client as rc
from relay.embedded import room
from relay.protocol import messages as m
from relay.protocol.constants import WS_MAX_PACKET
from relay.protocol.wsframes import take_frames

from .helpers import FAST, client, exchange
from .rawpeer import WsPeer

MAX = 1000
TAKEN = {Opcode.BINARY, Opcode.PING, Opcode.PONG}


def _wire(frame: Frame, masked: bool = True, nofin: bool = False, rsv1: bool = False) -> bytes:
    """websockets' bytes for a valid frame; `nofin` / `rsv1` then make it one it would refuse."""
    wire = bytearray(frame.serialize(mask=masked, extensions=[]))
    wire[0] &= ~0x80 if nofin else 0xFF
    wire[0] |= 0x40 if rsv1 else 0
    return bytes(wire)


@st.composite
def _frames(draw: st.DrawFn) -> tuple[bytes, tuple[int, bytes] | None]:
    """A frame's bytes, and what take_frames should give for it (None: not taken)."""
    opcode = draw(st.sampled_from([Opcode.BINARY] * 3 + [Opcode.PING, Opcode.PONG, Opcode.TEXT, Opcode.CONT]))
    control = opcode in (Opcode.PING, Opcode.PONG)
    data = draw(st.binary(max_size=125 if control else 300) | st.binary(min_size=MAX - 1, max_size=MAX + 1))
    if control and len(data) > 125:
        data = data[:125]
    masked = draw(st.just(True) | st.booleans())
    nofin = draw(st.just(False) | st.booleans())
    rsv1 = draw(st.just(False) | st.booleans())
    wire = _wire(Frame(opcode, data), masked, nofin, rsv1)
    taken = opcode in TAKEN and masked and not nofin and not rsv1 and len(data) <= MAX
    return wire, ((opcode.value, data) if taken else None)


@settings(max_examples=300, deadline=None)
@given(frames=st.lists(_frames(), max_size=8), cut=st.integers(0, 4000))
def test_takes_the_simple_frames_up_to_the_first_other(
    frames: list[tuple[bytes, tuple[int, bytes] | None]], cut: int
) -> None:
    wire = b"".join(w for w, _ in frames)
    buf = bytearray(wire[:cut])
    got, used, other = take_frames(buf, MAX)
    expected: list[tuple[int, bytes]] = []
    pos = 0
    stopped_at_other = False
    for frame_wire, taken in frames:
        if taken is None:
            # the reader tells it apart once its header is whole: 2 bytes, or 4 or 10 with an
            # extended length (a frame over the limit is known by its length)
            length = frame_wire[1] & 0x7F
            stopped_at_other = pos + (2 if length < 126 else 4 if length == 126 else 10) <= len(buf)
            break
        if pos + len(frame_wire) > len(buf):
            break
        expected.append(taken)
        pos += len(frame_wire)
    assert got == expected
    assert used == pos
    assert other == stopped_at_other


def test_extended_lengths_and_a_split_header() -> None:
    frames = [Frame(Opcode.BINARY, os.urandom(n)) for n in (0, 125, 126, 65535, 65536)]
    wire = b"".join(_wire(f) for f in frames)
    got, used, other = take_frames(bytearray(wire), 1 << 20)
    assert got == [(2, f.data) for f in frames] and used == len(wire) and not other
    for cut in (1, 3, 9, 13):  # inside the 2-, 4- and 10-byte headers and the mask
        assert take_frames(bytearray(_wire(frames[4])[:cut]), 1 << 20) == ([], 0, False)


def test_what_it_does_not_take() -> None:
    long_ping = bytes((0x89, 0x80 | 126)) + (126).to_bytes(2, "big") + bytes(4) + bytes(126)
    for wire in [
        _wire(Frame(Opcode.BINARY, b"x"), masked=False),  # a client must mask
        _wire(Frame(Opcode.BINARY, b"x", fin=False)),  # a fragment
        _wire(Frame(Opcode.PING, b"x"), nofin=True),  # a fragmented control frame
        _wire(Frame(Opcode.BINARY, b"x"), rsv1=True),  # no extension was negotiated
        _wire(Frame(Opcode.TEXT, b"x")),
        _wire(Frame(Opcode.CLOSE, Close(1000, "").serialize())),
        _wire(Frame(Opcode.BINARY, bytes(MAX + 1))),  # over the size limit
        long_ping,  # a control frame over 125 bytes
    ]:
        ahead = _wire(Frame(Opcode.BINARY, b"ok"))
        assert take_frames(bytearray(ahead + wire), MAX) == ([(2, b"ok")], len(ahead), True)


async def test_pings_are_answered_and_play_goes_on() -> None:
    async with room(**FAST) as r:
        a = await client(r, "a", "ws")
        peer = await WsPeer.open(r.key, r.port)
        await peer.start("p")
        peer.proto.send_ping(b"are you there")
        peer._write()
        peer.send(m.Send(b"after the ping").encode())
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 2
        while not any(f.opcode is Opcode.PONG for f in peer.frames):
            await peer._read(deadline - loop.time())
        pong = next(f for f in peer.frames if f.opcode is Opcode.PONG)
        assert pong.data == b"are you there"
        got = await a.next_event_of(rc.Received, 2, lambda e: e.data == b"after the ping")
        assert got.sender == peer.connection_id
        await a.close()
        await peer.aclose()


async def test_a_text_frame_after_play_is_still_refused_by_websockets_path() -> None:
    async with room(**FAST) as r:
        a = await client(r, "a", "ws")
        b = await client(r, "b", "ws")
        peer = await WsPeer.open(r.key, r.port)
        await peer.start("p")
        peer.send(m.Send(b"fine").encode())
        peer.send_text("not binary")
        assert await peer.wait_closed() == 1008
        assert r.relay.counters.drops["ws_text"] == 1
        await exchange(a, b)  # the room still serves
        await a.close()
        await b.close()
        await peer.aclose()


async def test_a_client_close_gets_the_close_handshake() -> None:
    async with room(**FAST) as r:
        peer = await WsPeer.open(r.key, r.port)
        await peer.start("p")
        peer.proto.send_close(1000, "bye")
        peer._write()
        assert await peer.wait_closed() == 1000
        await peer.aclose()


async def test_a_fragmented_binary_message_is_joined_and_play_goes_on() -> None:
    async with room(**FAST) as r:
        a = await client(r, "a", "ws")
        peer = await WsPeer.open(r.key, r.port)
        await peer.start("p")
        packet = peer.seal(m.Send(b"in three pieces").encode())
        peer.proto.send_binary(packet[:10], fin=False)
        peer.proto.send_ping(b"between fragments")  # control frames may come in between
        peer.proto.send_continuation(packet[10:20], fin=False)
        peer.proto.send_continuation(packet[20:], fin=True)
        peer._write()
        got = await a.next_event_of(rc.Received, 2, lambda e: e.data == b"in three pieces")
        assert got.sender == peer.connection_id
        peer.send(m.Send(b"and whole again").encode())
        await a.next_event_of(rc.Received, 2, lambda e: e.data == b"and whole again")
        await a.close()
        await peer.aclose()


async def test_a_fragmented_message_over_the_packet_limit_is_closed_with_1009() -> None:
    async with room(**FAST) as r:
        peer = await WsPeer.open(r.key, r.port)
        await peer.start("p")
        peer.proto.send_binary(bytes(WS_MAX_PACKET), fin=False)
        peer.proto.send_continuation(b"one byte too many", fin=True)
        peer._write()
        assert await peer.wait_closed() == 1009  # websockets' max_size counts the whole message
        await peer.aclose()
