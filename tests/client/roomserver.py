"""The real relay room (relay/server/room.py) behind a test transport of its own: UDP and a
websockets server on one loopback port. The room is sans-I/O, so any transport can drive it; this
one can be steered where the relay's own cannot (going silent, dropping a WebSocket without a
close). Tests against the relay as shipped live in test_live.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field, replace
from typing import Any

from websockets.asyncio.server import Server, ServerConnection, serve

from relay.protocol.constants import WS_MAX_PLAINTEXT
from relay.protocol.keys import generate_room_key
from relay.server.config import RelayConfig
from relay.server.links import CLOSE_CODES
from relay.server.metrics import Counters
from relay.server.room import Room
from relay.server.sessions import Session
from relay.server.transport import WS, Disconnect


class _WsLink:
    kind = WS
    max_plaintext = WS_MAX_PLAINTEXT
    buffered = 0

    def __init__(self, server: RoomServer, ws: ServerConnection) -> None:
        self.server = server
        self.ws = ws

    def send(self, packet: bytes) -> bool:
        if not self.server.silent:
            asyncio.get_running_loop().create_task(_ws_send(self.ws, packet))
        return True

    def close(self, why: Disconnect, text: str) -> None:
        asyncio.get_running_loop().create_task(self.ws.close(CLOSE_CODES[why], text[:100]))


@dataclass
class RoomServer:
    room: Room
    key: str
    host: str = "127.0.0.1"
    port: int = 0
    udp: asyncio.DatagramTransport | None = None
    ws_server: Server | None = None
    ws_peers: set[ServerConnection] = field(default_factory=set)
    silent: bool = False  # when True everything the room sends is lost (a relay gone quiet)

    def flush_soon(self, delay: float) -> None:
        asyncio.get_running_loop().call_soon(lambda: self.room.flush(time.monotonic()))

    def datagram(self, data: bytes, addr: Any) -> None:
        self.room.udp_datagram(data, addr, time.monotonic())

    def sendto(self, packet: bytes, addr: Any) -> None:
        if not self.silent and self.udp is not None:
            self.udp.sendto(packet, addr)

    async def websocket(self, ws: ServerConnection) -> None:
        self.ws_peers.add(ws)
        session: Session | None = None
        try:
            async for message in ws:
                if not isinstance(message, bytes):
                    continue
                if session is None:
                    session = self.room.ws_hello(message, _WsLink(self, ws), time.monotonic())
                    if session is None:
                        await ws.close(1008, "handshake failed")
                else:
                    self.room.ws_data(session, message, time.monotonic())
        finally:
            self.ws_peers.discard(ws)
            if session is not None:
                self.room.ws_closed(session, time.monotonic())

    async def drop_websockets(self) -> None:
        """Closes every WebSocket without CLOSING (a lost transport)."""
        for ws in list(self.ws_peers):
            await ws.close()

    async def run_timers(self) -> None:
        while not self.room.closed:
            await asyncio.sleep(max(0.0, min(self.room.timer(), time.monotonic() + 0.05) - time.monotonic()))
            self.room.handle_timer(time.monotonic())


async def _ws_send(ws: ServerConnection, packet: bytes) -> None:
    with contextlib.suppress(Exception):
        await ws.send(packet)


class _Udp(asyncio.DatagramProtocol):
    def __init__(self, server: RoomServer) -> None:
        self.server = server

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.server.datagram(data, addr)


@contextlib.asynccontextmanager
async def serve_room(**overrides: Any) -> AsyncIterator[RoomServer]:
    """A room with RelayConfig `overrides`, served on a free loopback port."""
    key = generate_room_key()
    room = Room(replace(RelayConfig(room_key=key), **overrides), Counters(), time.monotonic())
    server = RoomServer(room, key)
    room.on_flush = server.flush_soon
    loop = asyncio.get_running_loop()
    for _ in range(20):  # UDP first on an ephemeral port, then TCP on the same number
        udp, _ = await loop.create_datagram_endpoint(lambda: _Udp(server), local_addr=("127.0.0.1", 0))
        port = udp.get_extra_info("sockname")[1]
        try:
            server.ws_server = await serve(server.websocket, "127.0.0.1", port, compression=None)
        except OSError:
            udp.close()
            continue
        server.udp, server.port = udp, port
        room.udp_writer = server.sendto
        break
    else:
        raise RuntimeError("no free port for UDP and TCP")
    timers = loop.create_task(server.run_timers())
    try:
        yield server
    finally:
        timers.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await timers
        assert server.udp is not None and server.ws_server is not None
        server.udp.close()
        server.ws_server.close()
        await server.ws_server.wait_closed()
