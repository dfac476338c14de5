"""Transports under the client: one UDP socket or one WebSocket, each moving whole packets.

A link calls `sink.packet_received(data)` for every packet and `sink.link_lost(link)` once when
it is gone; `send_many(packets)` is synchronous (no task, no await per packet), so a client can
flush everything one event-loop pass produced at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from typing import Protocol

from websockets.asyncio.client import ClientConnection as WsConnection
from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import ConnectionClosed
from websockets.protocol import State as WsState

from relay.protocol.constants import WS_MAX_PACKET


class LinkSink(Protocol):
    def packet_received(self, data: bytes) -> None: ...

    def link_lost(self, link: Link) -> None: ...

    def link_error(self, reason: str, exc: Exception | None = None) -> None: ...


class Link(Protocol):
    closed: bool
    close_code: int | None
    """The WebSocket close code the relay sent (1008: it refused the handshake); None for UDP."""
    close_reason: str
    """The WebSocket close reason the relay sent ("resumed elsewhere": the seat moved); "" for UDP."""

    def send_many(self, packets: list[bytes]) -> None: ...

    def abort(self) -> None: ...

    async def close(self) -> None: ...


class _UdpProtocol(asyncio.DatagramProtocol):
    __slots__ = ("link",)

    def __init__(self, link: UdpLink) -> None:
        self.link = link

    def datagram_received(self, data: bytes, addr: object) -> None:
        self.link.sink.packet_received(data)

    def error_received(self, exc: Exception) -> None:  # ICMP unreachable and the like
        self.link.sink.link_error("socket_error", exc)

    def connection_lost(self, exc: Exception | None) -> None:
        self.link.closed = True
        self.link.sink.link_lost(self.link)


class UdpLink:
    """A connected UDP socket. UDP has no 'connection' to lose: silence is detected above."""

    __slots__ = ("close_code", "close_reason", "closed", "sink", "transport")

    def __init__(self, sink: LinkSink) -> None:
        self.sink = sink
        self.transport: asyncio.DatagramTransport | None = None
        self.closed = False
        self.close_code: int | None = None
        self.close_reason = ""

    @classmethod
    async def open(cls, sink: LinkSink, host: str, port: int) -> UdpLink:
        link = cls(sink)
        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_datagram_endpoint(
            lambda: _UdpProtocol(link), remote_addr=(host, port)
        )
        link.transport = transport
        return link

    def send_many(self, packets: list[bytes]) -> None:
        transport = self.transport
        if transport is None or self.closed:
            return
        sendto = transport.sendto
        for packet in packets:
            sendto(packet)

    def abort(self) -> None:
        """Closes the socket at once; link_lost follows (used to simulate a lost transport)."""
        if self.transport is not None:
            self.transport.abort()

    async def close(self) -> None:
        if self.transport is not None and not self.closed:
            self.closed = True
            self.transport.close()


class WsLink:
    """One WebSocket connection (websockets' asyncio client) carrying one session.

    Sending writes frames straight through the connection's sans-I/O protocol object and its
    transport (what websockets' own send() does, minus the await), so send stays synchronous;
    a single reader task per connection feeds received packets to the sink.
    """

    __slots__ = ("close_code", "close_reason", "closed", "reader", "sink", "ws")

    def __init__(self, sink: LinkSink, ws: WsConnection) -> None:
        self.sink = sink
        self.ws = ws
        self.closed = False
        self.close_code: int | None = None
        self.close_reason = ""
        self.reader: asyncio.Task[None] | None = None

    @classmethod
    async def open(
        cls, sink: LinkSink, host: str, port: int, timeout: float, tls: ssl.SSLContext | None = None
    ) -> WsLink:
        """`tls`: wss:// with that context (the certificate checked for `host`)."""
        netloc = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        ws = await ws_connect(
            f"{'wss' if tls is not None else 'ws'}://{netloc}/",
            ssl=tls,
            compression=None,
            max_size=WS_MAX_PACKET,
            open_timeout=timeout,
            ping_interval=None,  # the protocol's own PING keeps the seat and measures RTT
            close_timeout=1.0,
            user_agent_header=None,
        )
        link = cls(sink, ws)
        link.reader = asyncio.get_running_loop().create_task(link._read())
        return link

    async def _read(self) -> None:
        ws = self.ws
        sink = self.sink
        try:
            async for message in ws:
                if type(message) is bytes:
                    sink.packet_received(message)
                else:
                    sink.link_error("ws_text")
        except ConnectionClosed:
            pass
        except OSError:
            pass
        finally:
            self.closed = True
            self.close_code = ws.close_code
            self.close_reason = ws.close_reason or ""
            sink.link_lost(self)

    def send_many(self, packets: list[bytes]) -> None:
        ws = self.ws
        protocol = ws.protocol
        if self.closed or protocol.state is not WsState.OPEN:
            return
        send_binary = protocol.send_binary
        for packet in packets:
            send_binary(packet)
        ws.send_data()

    def abort(self) -> None:
        """Drops the TCP connection without a close handshake; the reader then reports it lost."""
        self.ws.transport.abort()

    async def close(self) -> None:
        self.closed = True
        with contextlib.suppress(Exception):
            await self.ws.close()
        if self.reader is not None and self.reader is not asyncio.current_task():
            await asyncio.wait({self.reader}, timeout=1.0)
