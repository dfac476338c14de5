"""The one WebSocket frame codec (relay/protocol/wsframes.py) on its own, without sockets: the
frames it writes are websockets' bytes (and RFC 6455's examples), what it reads comes back whole
at every length boundary and over any split of the stream, and a partial header is never read
as a frame. The relay, the load generator and the test peers all rely on these."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from websockets.frames import Frame, Opcode

from relay.protocol.wsframes import (
    BINARY,
    CLOSE,
    PING,
    PONG,
    TEXT,
    ZERO_MASK,
    client_frame,
    encode_frame,
    missing,
    parse_head,
    read_frames,
    server_binary_frames,
    server_frame,
    take_frames,
)

# payload lengths on both sides of the 7-bit, 16-bit and 64-bit length encodings
BOUNDARY = (0, 1, 124, 125, 126, 127, 65534, 65535, 65536, 65537)
KEY = b"\x9a\x0b\xc3\x7f"
FIN_BINARY = 0x82  # the first byte of an unfragmented binary frame
MASKS = (None, ZERO_MASK, KEY)
CONTROL = {PING, PONG, CLOSE}
FAST = settings(max_examples=150, deadline=None)


def _payload(n: int) -> bytes:
    return (bytes(range(256)) * (n // 256 + 1))[:n]


def _length_field_end(n: int) -> int:
    """Bytes up to the end of the length field: the header without the mask key."""
    return 2 if n < 126 else 4 if n < 65536 else 10


def _their_key(wire: bytes) -> bytes:
    """The mask key websockets drew for a masked frame it wrote."""
    head = parse_head(wire)
    assert head is not None and head[1]
    return wire[head[2] - 4 : head[2]]


_frames = st.lists(
    st.tuples(st.sampled_from((BINARY, TEXT, PING, PONG, CLOSE)), st.binary(max_size=300)).map(
        lambda f: (f[0], f[1][:125] if f[0] in CONTROL else f[1])
    ),
    max_size=6,
)


# ---- writing ---------------------------------------------------------------------------------


def test_rfc6455_examples() -> None:
    """RFC 6455 section 5.7, byte for byte."""
    hello = bytes((0x48, 0x65, 0x6C, 0x6C, 0x6F))
    assert server_frame(TEXT, hello) == bytes((0x81, 0x05)) + hello
    masked = bytes((0x81, 0x85, 0x37, 0xFA, 0x21, 0x3D, 0x7F, 0x9F, 0x4D, 0x51, 0x58))
    assert client_frame(TEXT, hello, bytes((0x37, 0xFA, 0x21, 0x3D))) == masked
    assert server_frame(BINARY, bytes(256))[:4] == bytes((0x82, 0x7E, 0x01, 0x00))
    assert server_frame(BINARY, bytes(65536))[:10] == bytes((0x82, 0x7F, 0, 0, 0, 0, 0, 1, 0, 0))


@pytest.mark.parametrize("n", BOUNDARY)
def test_server_frames_are_websockets_bytes(n: int) -> None:
    data = _payload(n)
    expected = Frame(Opcode.BINARY, data).serialize(mask=False, extensions=[])
    assert server_frame(BINARY, data) == expected
    assert encode_frame(BINARY, data) == expected


def test_server_binary_frames_are_each_payloads_frame_back_to_back() -> None:
    """A GS2 client's Containers of one flush, in one write: every length's header, in order."""
    payloads = [_payload(n) for n in (*BOUNDARY, *range(130))]
    expected = b"".join(Frame(Opcode.BINARY, p).serialize(mask=False, extensions=[]) for p in payloads)
    assert server_binary_frames(payloads) == expected
    assert server_binary_frames([]) == b""


@pytest.mark.parametrize("n", BOUNDARY)
def test_client_frames_are_websockets_bytes(n: int) -> None:
    data = _payload(n)
    theirs = Frame(Opcode.BINARY, data).serialize(mask=True, extensions=[])
    # under the key websockets drew, the very same bytes
    assert client_frame(BINARY, data, _their_key(theirs)) == theirs
    # under the zero key: the same header, and both parse to the payload
    ours = client_frame(BINARY, data)
    field = _length_field_end(n)
    assert ours[:field] == theirs[:field] and len(ours) == len(theirs)
    assert ours[field : field + 4] == ZERO_MASK and ours[field + 4 :] == data
    assert read_frames(bytearray(ours)) == read_frames(bytearray(theirs)) == [(BINARY, data)]


@FAST
@given(frames=_frames)
def test_any_frame_is_what_websockets_writes(frames: list[tuple[int, bytes]]) -> None:
    for opcode, data in frames:
        frame = Frame(Opcode(opcode), data)
        assert server_frame(opcode, data) == frame.serialize(mask=False, extensions=[])
        theirs = frame.serialize(mask=True, extensions=[])
        assert client_frame(opcode, data, _their_key(theirs)) == theirs
        assert read_frames(bytearray(client_frame(opcode, data))) == [(opcode, data)]


# ---- reading ---------------------------------------------------------------------------------


@pytest.mark.parametrize("mask", MASKS)
def test_round_trip_at_the_length_boundaries(mask: bytes | None) -> None:
    frames = [(BINARY, _payload(n)) for n in BOUNDARY] + [(PING, b"p"), (PONG, b""), (CLOSE, b"\x03\xe8")]
    wire = b"".join(encode_frame(opcode, data, mask) for opcode, data in frames)
    buf = bytearray(wire + b"\x82")  # and the first byte of one more
    assert read_frames(buf) == frames
    assert buf == b"\x82"
    if mask is not None:  # a client's frames: what the relay takes
        taken = frames[:-1]  # not the close
        wire = b"".join(encode_frame(opcode, data, mask) for opcode, data in taken)
        assert take_frames(bytearray(wire), 1 << 17) == (taken, len(wire), False)


def test_a_masked_frame_decodes_to_its_payload() -> None:
    data = b"a payload long enough that every byte of the key is used, several times over"
    wire = client_frame(BINARY, data, KEY)
    assert wire[6:] != data  # masked on the wire
    assert read_frames(bytearray(wire)) == [(BINARY, data)]
    assert take_frames(bytearray(wire), 1000) == ([(BINARY, data)], len(wire), False)


@FAST
@given(frames=_frames, cuts=st.lists(st.integers(0, 2000), max_size=6), mask=st.sampled_from(MASKS))
def test_read_frames_over_any_split(
    frames: list[tuple[int, bytes]], cuts: list[int], mask: bytes | None
) -> None:
    """Fed a stream in arbitrary pieces, it gives every frame once, in order, and keeps a
    partial one until the rest comes."""
    wire = b"".join(encode_frame(opcode, data, mask) for opcode, data in frames)
    points = sorted({min(c, len(wire)) for c in cuts} | {0, len(wire)})
    buf = bytearray()
    got: list[tuple[int, bytes]] = []
    for a, b in itertools.pairwise(points):
        buf += wire[a:b]
        got += read_frames(buf)
    assert got == frames
    assert buf == b""


@pytest.mark.parametrize("mask", (None, KEY))
@pytest.mark.parametrize("n", (0, 125, 126, 65535, 65536))
def test_an_incomplete_header_is_not_a_frame(n: int, mask: bytes | None) -> None:
    """parse_head gives None for every prefix that ends inside the length field (at any
    position and with an `end` bound too), and the frame's layout from its end on; `missing`
    asks for the rest of the header first, then for the rest of the frame."""
    wire = encode_frame(BINARY, _payload(n), mask)
    field = _length_field_end(n)
    start = field + (4 if mask else 0)
    for cut in range(field):
        assert parse_head(wire[:cut]) is None
        assert parse_head(bytearray(b"\x82\x00" + wire[:cut]), 2) is None
        assert parse_head(wire, 0, cut) is None
        assert missing(wire[:cut]) == (2 - cut if cut < 2 else field - cut)
    for cut in sorted({field, start, start + n // 2, len(wire)}):
        assert parse_head(wire[:cut]) == (FIN_BINARY, mask is not None, start, n)
        assert missing(wire[:cut]) == len(wire) - cut
    assert missing(wire + b"\x82") == 0


@settings(max_examples=100, deadline=None)
@given(frames=_frames, mask=st.sampled_from(MASKS), data=st.data())
def test_reading_what_missing_asks_for_stops_at_each_frame_end(
    frames: list[tuple[int, bytes]], mask: bytes | None, data: st.DataObject
) -> None:
    """A reader that asks for `missing` bytes (and may get fewer, as TCP gives) never reads into
    the next frame: whenever nothing is missing, its buffer holds exactly one frame."""
    wires = [encode_frame(opcode, payload, mask) for opcode, payload in frames]
    stream = b"".join(wires)
    pos = 0
    buf = bytearray()
    whole: list[bytes] = []
    while pos < len(stream):
        want = missing(buf)
        if not want:
            whole.append(bytes(buf))
            read_frames(buf)
            continue
        got = data.draw(st.integers(1, want))
        buf += stream[pos : pos + got]
        pos += got
    if buf:
        assert missing(buf) == 0
        whole.append(bytes(buf))
    assert whole == wires
