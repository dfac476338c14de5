"""The frames the host's processes exchange (the zygote template, its spawner and standby relays;
a group process and its spawner): a 4-byte big-endian length, then a JSON object. One reader
for every kind of stream: a blocking fd, any blocking `read(n)` (a socket's file), asyncio."""

from __future__ import annotations

import asyncio
import json
import os
import struct
from collections.abc import Callable, Mapping
from typing import Any

HEADER = struct.Struct("!I")
MAX_FRAME = 16 << 20
"""Bytes of one frame between the zygote template and its spawner, either way."""


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
    return read_frame_with(lambda size: read_exact(fd, size), max_size)


def read_frame_with(read: Callable[[int], bytes | None], max_size: int) -> dict[str, Any] | None:
    """One frame's object through `read(n)`, which returns n bytes or None at the end; None at the
    end. ValueError as read_frame."""
    header = read(HEADER.size)
    if header is None:
        return None
    body = read(_body_size(header, max_size))
    return None if body is None else _decode(body)


async def read_frame_async(reader: asyncio.StreamReader, max_size: int) -> dict[str, Any] | None:
    """One frame's object from an asyncio stream; None at its end between frames. ValueError as
    read_frame, or if the stream ends inside a frame."""
    try:
        header = await reader.readexactly(HEADER.size)
    except asyncio.IncompleteReadError as exc:
        if exc.partial:
            raise ValueError("truncated frame") from None
        return None
    try:
        body = await reader.readexactly(_body_size(header, max_size))
    except asyncio.IncompleteReadError:
        raise ValueError("truncated frame") from None
    return _decode(body)


def _body_size(header: bytes, max_size: int) -> int:
    (size,) = HEADER.unpack(header)
    if size > max_size:
        raise ValueError(f"frame of {size} bytes")
    return size


def _decode(body: bytes) -> dict[str, Any]:
    message = json.loads(body)
    if not isinstance(message, dict):
        raise ValueError("a frame must hold a JSON object")
    return message


def write_frame(fd: int, message: Mapping[str, Any]) -> None:
    data = memoryview(encode_frame(message))
    while data:
        data = data[os.write(fd, data) :]
