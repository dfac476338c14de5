"""RFC 6455 frames: the one codec the relay, the load generator and the test peers share.

A relay's WebSocket input is almost all unfragmented, masked binary frames (one DATA packet
each), with a rare ping. websockets' sans-I/O parser is a generator that makes several calls,
an object and a list per frame; `take_frames` reads the common frames straight from a buffer
and stops at the first frame it does not handle, which the relay's connection then hands, with
everything after it, to websockets' parser (relay/server/links.py), so closes, fragments, text,
unmasked or oversized frames and protocol errors keep websockets' complete handling.

Writing: `encode_frame` makes one unfragmented frame with no extension, unmasked (a server's,
`server_frame`) or masked with a given key (a client's, `client_frame`). Reading without
copying: `parse_head` says where the frame at a position starts and ends, and `missing` how many
bytes it still lacks, so a reader can stop each read at a frame's end (the load generator does,
to give each frame the kernel receive stamp of its own last byte).
"""

from __future__ import annotations

import struct

from websockets.frames import apply_mask  # the C version where websockets built it

CONT = 0x0
TEXT = 0x1
BINARY = 0x2
CLOSE = 0x8
PING = 0x9
PONG = 0xA
FIN = 0x80
MASKED = 0x80
MAX_CONTROL = 125
ZERO_MASK = b"\x00\x00\x00\x00"
"""A client may mask with any key; XOR with zeros leaves the payload as it is, so a load
generator can build frames once and send them many times."""

_SIMPLE_HEADS = frozenset((FIN | BINARY, FIN | PING, FIN | PONG))  # FIN set, RSV clear
_HEAD16 = struct.Struct("!BBH").pack  # FIN + opcode, 126, 16-bit length
_HEAD64 = struct.Struct("!BBQ").pack  # FIN + opcode, 127, 64-bit length


def parse_head(buf: bytes | bytearray, pos: int = 0, end: int = -1) -> tuple[int, bool, int, int] | None:
    """The frame starting at buf[pos]: (first byte, masked, payload start, payload length), the
    payload start counting the mask key; None while its header is incomplete. The payload may
    still be incomplete (start + length > end)."""
    if end < 0:
        end = len(buf)
    if end - pos < 2:
        return None
    b1 = buf[pos + 1]
    length = b1 & 0x7F
    start = pos + 2
    if length == 126:
        if end - pos < 4:
            return None
        length = (buf[pos + 2] << 8) | buf[pos + 3]
        start = pos + 4
    elif length == 127:
        if end - pos < 10:
            return None
        length = int.from_bytes(buf[pos + 2 : pos + 10], "big")
        start = pos + 10
    masked = bool(b1 & MASKED)
    return buf[pos], masked, start + 4 if masked else start, length


def take_frames(buf: bytearray, max_size: int) -> tuple[list[tuple[int, bytes]], int, bool]:
    """The complete simple client frames at the front of `buf`: ([(opcode, payload)], bytes they
    used, whether the next frame is one this module does not handle).

    Simple: FIN set, RSV bits clear, masked, opcode binary (payload at most `max_size`), ping or
    pong (payload at most 125). An incomplete simple frame at the end is left for more input.
    """
    frames: list[tuple[int, bytes]] = []
    pos = 0
    end = len(buf)
    while True:
        if end - pos >= 2 and (buf[pos] not in _SIMPLE_HEADS or not buf[pos + 1] & MASKED):
            return frames, pos, True  # told apart by its first two bytes, before its length
        head = parse_head(buf, pos, end)
        if head is None:
            break
        b0, _, start, length = head
        opcode = b0 & 0x0F
        if length > (max_size if opcode == BINARY else MAX_CONTROL):
            return frames, pos, True
        stop = start + length
        if stop > end:
            break
        frames.append((opcode, apply_mask(buf[start:stop], buf[start - 4 : start])))
        pos = stop
    return frames, pos, False


def read_frames(buf: bytearray) -> list[tuple[int, bytes]]:
    """Every complete frame at the front of `buf`, as (opcode, unmasked payload), taken out of
    `buf`: a client's reading of a server's frames (any opcode; fragments are not joined)."""
    frames: list[tuple[int, bytes]] = []
    pos = 0
    while (head := parse_head(buf, pos)) is not None and head[2] + head[3] <= len(buf):
        b0, masked, start, length = head
        pos = start + length
        payload = bytes(buf[start:pos])
        frames.append((b0 & 0x0F, apply_mask(payload, buf[start - 4 : start]) if masked else payload))
    del buf[:pos]
    return frames


def missing(buf: bytes | bytearray, pos: int = 0, end: int = -1) -> int:
    """Bytes the frame starting at buf[pos] still lacks: while its header is incomplete, only
    those that complete the header (its length is not known yet); then those up to the frame's
    last byte; 0 once it is whole. Reading exactly this many never reads into the next frame."""
    if end < 0:
        end = len(buf)
    have = end - pos
    if have < 2:
        return 2 - have
    head = parse_head(buf, pos, end)
    if head is None:
        return (4 if buf[pos + 1] & 0x7F == 126 else 10) - have
    stop = head[2] + head[3]
    return stop - end if stop > end else 0


def encode_frame(opcode: int, payload: bytes, mask: bytes | None = None) -> bytes:
    """One unfragmented frame: a 2-, 4- or 10-byte header (RFC 6455 5.2), the mask key if any,
    and the payload (masked with it), as websockets' serializer makes it with no extension."""
    n = len(payload)
    bit = MASKED if mask is not None else 0
    if n < 126:
        head = bytes((FIN | opcode, bit | n))
    elif n < 65536:
        head = _HEAD16(FIN | opcode, bit | 126, n)
    else:
        head = _HEAD64(FIN | opcode, bit | 127, n)
    if mask is None:
        return head + payload
    return head + mask + (payload if mask == ZERO_MASK else apply_mask(payload, mask))


def server_frame(opcode: int, payload: bytes) -> bytes:
    """A server's frame: unmasked."""
    n = len(payload)
    if n < 126:
        return bytes((FIN | opcode, n)) + payload
    return encode_frame(opcode, payload)


_BINARY_HEADS = [bytes((FIN | BINARY, n)) for n in range(126)]
"""A server's binary frame's header for each payload length under 126."""


def server_binary_frames(payloads: list[bytes]) -> bytes:
    """Several binary server frames back to back (a GS2 client's Containers of one flush): the
    same bytes as joining server_frame(BINARY, p) of each, with one join."""
    parts: list[bytes] = []
    append = parts.append
    heads = _BINARY_HEADS
    for payload in payloads:
        n = len(payload)
        if n < 126:
            append(heads[n])
        elif n < 65536:
            append(_HEAD16(FIN | BINARY, 126, n))
        else:
            append(_HEAD64(FIN | BINARY, 127, n))
        append(payload)
    return b"".join(parts)


def client_frame(opcode: int, payload: bytes, mask: bytes = ZERO_MASK) -> bytes:
    """A client's frame: masked (with the all-zero key unless told otherwise)."""
    return encode_frame(opcode, payload, mask)
