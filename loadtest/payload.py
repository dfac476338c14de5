"""The bot payload: a small header inside every SEND's data so receivers can measure the path.

Layout (big-endian, 20 bytes, then filler up to the payload size):
magic u16 | step u16 | sender u32 | seq u32 | send time u64 (ns)

All bots run on one host. Bots stamp CLOCK_MONOTONIC ns, so a receiver subtracts the send time
from its own monotonic clock to get one-way latency. The throughput generator seals its packets
before a step starts, so it stamps each message with its *scheduled* send time relative to the
step's start (receivers add the start back); a sender running late then shows up as latency,
which is the honest reading (no coordinated omission). `seq` counts per sender from 1; `step`
lets a receiver ignore late arrivals from an earlier load step.
"""

from __future__ import annotations

import struct

MAGIC = 0x6C54  # "lT"
HEADER = struct.Struct("!HHIIQ")
HEADER_SIZE = HEADER.size
_pack = HEADER.pack_into
_unpack = HEADER.unpack_from


def build(size: int, step: int, sender: int, seq: int, sent_ns: int) -> bytes:
    """A payload of exactly `size` bytes (at least HEADER_SIZE)."""
    buf = bytearray(max(size, HEADER_SIZE))
    _pack(buf, 0, MAGIC, step & 0xFFFF, sender, seq, sent_ns)
    return bytes(buf)


def parse(data: bytes | memoryview, offset: int = 0) -> tuple[int, int, int, int] | None:
    """(step, sender, seq, sent_ns), or None when the data is not a bot payload."""
    if len(data) - offset < HEADER_SIZE:
        return None
    magic, step, sender, seq, sent_ns = _unpack(data, offset)
    if magic != MAGIC:
        return None
    return step, sender, seq, sent_ns
