"""The frames the zygote template, its spawner and standby relays exchange: a 4-byte big-endian
length, then a JSON object. Blocking helpers here; the spawner's asyncio side reads `HEADER` and
the body itself (relay/host/zygote.py)."""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Mapping
from typing import Any

HEADER = struct.Struct("!I")


def encode_frame(message: Mapping[str, Any]) -> bytes:
    body = json.dumps(message, separators=(",", ":")).encode()
    return HEADER.pack(len(body)) + body


def read_exact(fd: int, size: int) -> bytes | None:
    """`size` bytes from a blocking fd; None on end of file."""
    chunks: list[bytes] = []
    while size:
        chunk = os.read(fd, size)
        if not chunk:
            return None
        chunks.append(chunk)
        size -= len(chunk)
    return b"".join(chunks)


def read_frame(fd: int, max_size: int) -> dict[str, Any] | None:
    """One frame's object from a blocking fd; None on end of file. ValueError if it is larger than
    `max_size`, not JSON, or not an object."""
    header = read_exact(fd, HEADER.size)
    if header is None:
        return None
    (size,) = HEADER.unpack(header)
    if size > max_size:
        raise ValueError(f"frame of {size} bytes")
    body = read_exact(fd, size)
    if body is None:
        return None
    message = json.loads(body)
    if not isinstance(message, dict):
        raise ValueError("a frame must hold a JSON object")
    return message


def write_frame(fd: int, message: Mapping[str, Any]) -> None:
    data = memoryview(encode_frame(message))
    while data:
        data = data[os.write(fd, data) :]
