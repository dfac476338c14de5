"""The common case of RFC 6455 frames, read and written without websockets' machinery.

A relay's WebSocket input is almost all unfragmented, masked binary frames (one DATA packet
each), with a rare ping. websockets' sans-I/O parser is a generator that makes several calls,
an object and a list per frame; `take_frames` reads the common frames straight from a buffer
and stops at the first frame it does not handle, which the connection then hands, with
everything after it, to websockets' parser (relay/server/links.py), so closes, fragments, text,
unmasked or oversized frames and protocol errors keep websockets' complete handling.
`server_frame` writes the relay's own frames (unmasked, unfragmented, no extension).
"""

from __future__ import annotations

import struct

from websockets.frames import apply_mask  # the C version where websockets built it

BINARY = 0x2
PING = 0x9
PONG = 0xA
_FIN = 0x80
_MASKED = 0x80
_SIMPLE_HEADS = frozenset((_FIN | BINARY, _FIN | PING, _FIN | PONG))  # FIN set, RSV clear
_MAX_CONTROL = 125
_HEAD16 = struct.Struct("!BBH").pack  # FIN + opcode, 126, 16-bit length
_HEAD64 = struct.Struct("!BBQ").pack  # FIN + opcode, 127, 64-bit length


def take_frames(buf: bytearray, max_size: int) -> tuple[list[tuple[int, bytes]], int, bool]:
    """The complete simple frames at the front of `buf`: ([(opcode, payload)], bytes they used,
    whether the next frame is one this module does not handle).

    Simple: FIN set, RSV bits clear, masked, opcode binary (payload at most `max_size`), ping or
    pong (payload at most 125). An incomplete simple frame at the end is left for more input.
    """
    frames: list[tuple[int, bytes]] = []
    pos = 0
    end = len(buf)
    while end - pos >= 2:
        b0 = buf[pos]
        b1 = buf[pos + 1]
        if b0 not in _SIMPLE_HEADS or not b1 & _MASKED:
            return frames, pos, True
        length = b1 & 0x7F
        head = pos + 2
        if length == 126:
            if end - pos < 4:
                break
            length = (buf[pos + 2] << 8) | buf[pos + 3]
            head = pos + 4
        elif length == 127:
            if end - pos < 10:
                break
            length = int.from_bytes(buf[pos + 2 : pos + 10], "big")
            head = pos + 10
        opcode = b0 & 0x0F
        if length > (max_size if opcode == BINARY else _MAX_CONTROL):
            return frames, pos, True
        stop = head + 4 + length
        if stop > end:
            break
        frames.append((opcode, apply_mask(buf[head + 4 : stop], buf[head : head + 4])))
        pos = stop
    return frames, pos, False


def server_frame(opcode: int, payload: bytes) -> bytes:
    """One unfragmented, unmasked frame: a 2-, 4- or 10-byte header and the payload (RFC 6455
    5.2), the bytes websockets' serializer makes when no extension is negotiated."""
    n = len(payload)
    if n < 126:
        return bytes((_FIN | opcode, n)) + payload
    if n < 65536:
        return _HEAD16(_FIN | opcode, 126, n) + payload
    return _HEAD64(_FIN | opcode, 127, n) + payload
