"""uvicorn's HTTP protocol with a deadline on receiving each request.

uvicorn closes a keep-alive connection idle between requests, but nothing else: a connection
that sends nothing, or trickles header lines or a body a byte at a time, stays open for as long
as its client likes, and enough of them take the control plane's file descriptors (the API, the
relays' agent API and the gateway share them). Here each request must arrive whole (request
line, headers and body) within `request_deadline` seconds of the connection opening or of its
first byte; a WebSocket upgrade leaves the deadline behind once its headers are in (the gateway
bounds its own sockets). The answer is not timed: a slow app is not a slow client.
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol


class DeadlineHttpProtocol(HttpToolsProtocol):
    request_deadline: float = 10.0
    """Seconds a request has to arrive whole; set per server by `with_request_deadline`."""

    _deadline: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()  # a connection that never sends a byte is a request that never arrives

    def on_message_begin(self) -> None:
        super().on_message_begin()
        if self._deadline is None:  # the next request on a kept-alive connection
            self._arm()

    def on_message_complete(self) -> None:
        self._disarm()
        super().on_message_complete()

    def handle_websocket_upgrade(self) -> None:
        self._disarm()
        super().handle_websocket_upgrade()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _arm(self) -> None:
        self._deadline = self.loop.call_later(self.request_deadline, self._expired)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _expired(self) -> None:
        self._deadline = None
        if not self.transport.is_closing():
            self.logger.info("closing %s: no whole request within %.1f s", self.client, self.request_deadline)
            self.transport.close()


def with_request_deadline(seconds: float) -> type[DeadlineHttpProtocol]:
    """The protocol class for one server (uvicorn.Config(http=...) takes a class, not arguments)."""
    attrs: dict[str, Any] = {"request_deadline": seconds}
    return type("DeadlineHttpProtocol", (DeadlineHttpProtocol,), attrs)
