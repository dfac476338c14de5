"""Embedding a relay in your own asyncio program, for local development and tests.

    import relay.embedded
    import relay.client

    async with relay.embedded.room(max_players=8) as room:
        alice = await relay.client.connect(room.host, room.port, room.key, "alice")
        bob = await relay.client.connect(room.host, room.port, room.key, "bob", transport="ws")
        alice.send(b"hello")
        print(await bob.next_event(timeout=1))

The relay runs in the caller's event loop on 127.0.0.1 with a fresh room key. Keyword
arguments override RelayConfig fields (see relay/server/config.py for every knob).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from typing import Any

from relay.protocol.constants import CloseReason
from relay.protocol.keys import generate_room_key
from relay.server.app import Relay
from relay.server.config import RelayConfig


@dataclass(frozen=True, slots=True)
class EmbeddedRoom:
    host: str
    port: int
    key: str
    relay: Relay


@contextlib.asynccontextmanager
async def room(**overrides: Any) -> AsyncIterator[EmbeddedRoom]:
    overrides.setdefault("room_key", generate_room_key())
    config = replace(RelayConfig(), **overrides)
    relay = Relay(config)
    await relay.start()
    try:
        yield EmbeddedRoom(relay.host, relay.port, config.room_key, relay)
    finally:
        await relay.close(CloseReason.SHUTDOWN, "embedded room closed")
