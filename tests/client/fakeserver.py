"""The test FakeRelay (tests/protocol/fakerelay.py) behind real loopback sockets: UDP and a
WebSocket server on one port. It lets the client adapters be tested in ways the real relay
cannot be steered into (dropping a WebSocket without CLOSING, going silent, refusing joins);
tests against the real relay live in test_live.py.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from websockets.asyncio.server import Server, ServerConnection, serve

from relay.protocol.constants import PacketType, ProtocolError
from relay.protocol.keys import generate_room_key
from relay.protocol.packets import parse_header
from tests.protocol.fakerelay import FakeRelay


@dataclass
class FakeServer:
    relay: FakeRelay
    key: str
    host: str = "127.0.0.1"
    port: int = 0
    udp: asyncio.DatagramTransport | None = None
    ws_server: Server | None = None
    udp_peers: dict[int, tuple[str, int]] = field(default_factory=dict)
    ws_peers: dict[int, ServerConnection] = field(default_factory=dict)
    silent: bool = False  # when True nothing is answered (a relay gone quiet)

    def route(self, answers: list[tuple[int, bytes]], origin: object) -> None:
        for sid, packet in answers:
            if sid not in self.udp_peers and sid not in self.ws_peers:
                if isinstance(origin, tuple):
                    self.udp_peers[sid] = origin
                else:
                    self.ws_peers[sid] = origin  # type: ignore[assignment]
            if sid in self.udp_peers and self.udp is not None:
                self.udp.sendto(packet, self.udp_peers[sid])
            elif sid in self.ws_peers:
                ws = self.ws_peers[sid]
                asyncio.get_running_loop().create_task(_ws_send(ws, packet))

    def handle(self, packet: bytes, origin: object) -> None:
        if self.silent:
            return
        with contextlib.suppress(ProtocolError):
            if parse_header(packet).type == PacketType.HELLO and not isinstance(origin, tuple):
                self.ws_peers = {k: v for k, v in self.ws_peers.items() if v is not origin}
        self.route(self.relay.handle(packet), origin)

    async def drop_websockets(self) -> None:
        """Closes every WebSocket without CLOSING (a lost transport)."""
        for ws in list(self.ws_peers.values()):
            await ws.close()


async def _ws_send(ws: ServerConnection, packet: bytes) -> None:
    with contextlib.suppress(Exception):
        await ws.send(packet)


class _Udp(asyncio.DatagramProtocol):
    def __init__(self, server: FakeServer) -> None:
        self.server = server

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.server.handle(data, addr)


@contextlib.asynccontextmanager
async def fake_room(transport: str = "udp", **relay_kwargs: object) -> AsyncIterator[FakeServer]:
    key = generate_room_key()
    server = FakeServer(FakeRelay(key, transport, **relay_kwargs), key)  # type: ignore[arg-type]
    loop = asyncio.get_running_loop()

    async def on_ws(ws: ServerConnection) -> None:
        async for message in ws:
            if isinstance(message, bytes):
                server.handle(message, ws)

    for _ in range(20):  # UDP first on an ephemeral port, then TCP on the same number
        udp, _ = await loop.create_datagram_endpoint(lambda: _Udp(server), local_addr=("127.0.0.1", 0))
        port = udp.get_extra_info("sockname")[1]
        try:
            server.ws_server = await serve(on_ws, "127.0.0.1", port, compression=None)
        except OSError:
            udp.close()
            continue
        server.udp, server.port = udp, port
        break
    else:
        raise RuntimeError("no free port for UDP and TCP")
    try:
        yield server
    finally:
        server.udp.close()
        server.ws_server.close()
        await server.ws_server.wait_closed()
