"""The msgpack the generator writes and counts by hand, so neither side pays an encoder per message.

Senders build SENDs once per step (`send_message_bytes`); receivers count the MESSAGEs of a
packet from its length (`message_size`, `PACKET_OVERHEAD`), since every MESSAGE of a step has the
same size.
"""

from __future__ import annotations

PACKET_OVERHEAD = 32  # DATA header + tag


def message_size(payload_size: int, sender_id: int = 1) -> int:
    """Bytes of one relay MESSAGE [20, sender, bin] in a plaintext (the length-count divisor)."""
    sender_len = 1 if sender_id < 128 else 2 if sender_id < 256 else 3
    bin_head = 2 if payload_size < 256 else 3
    return 2 + sender_len + bin_head + payload_size


def send_message_bytes(data: bytes, targets: list[int] | None) -> bytes:
    """A client SEND [2, data, targets] in msgpack, built by hand (same bytes as Send.encode)."""
    n = len(data)
    head = b"\x93\x02" + (b"\xc4" + bytes((n,)) if n < 256 else b"\xc5" + n.to_bytes(2, "big"))
    if not targets:
        tail = b"\xc0"
    else:
        tail = bytes((0x90 | len(targets),)) + b"".join(
            bytes((t,)) if t < 128 else b"\xcc" + bytes((t,)) if t < 256 else b"\xcd" + t.to_bytes(2, "big")
            for t in targets
        )
    return head + data + tail
