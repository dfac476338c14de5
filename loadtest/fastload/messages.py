"""The msgpack the generator counts by hand, so receivers pay no decoder per message.

Senders build SENDs with the protocol's own `encode_send`; receivers count the MESSAGEs of a
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
