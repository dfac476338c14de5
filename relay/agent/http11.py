"""One keep-alive HTTP/1.1 connection to one origin, for the agent's calls to the control plane.

h11 (sans-I/O) does the protocol; this is the thin asyncio adapter around it. Why not httpx: a
relay makes a handful of small POSTs to one host, and httpx's layers (httpx, httpcore, anyio)
cost about 0.7 ms of CPU a call against 0.1 ms here; worse, a relay forked from the zygote
template runs them for the first time at start-up, and the copy-on-write faults of that first
request were a quarter of a fresh relay's start (about 600 pages, 5 ms, before registration).

    client = Http11Client("http://127.0.0.1:7700/internal", timeout=5.0)
    status, body = await client.request("POST", "/rooms/ns/r/heartbeat", b"{...}", headers)
    await client.aclose()

Requests go one at a time. Any error (refused, reset, timeout, malformed answer, cancellation
mid-request) closes the connection, so the next request starts on a fresh one; the caller
decides whether to retry. Bodies are read with h11's framing (Content-Length or chunked), at
most `max_body` bytes.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
from collections.abc import Sequence
from urllib.parse import urlsplit

import h11

MAX_BODY = 1 << 20

_TLS = ssl.create_default_context()
"""Built once at import (the CA bundle costs tens of ms of CPU): a relay forked from the zygote
template inherits it instead of building one at 12.5% of a core while its room waits."""


class HttpError(Exception):
    """The request did not complete: connection, timeout or protocol failure."""


def url_problem(base_url: str) -> str | None:
    """Why this client cannot talk to `base_url`, or None: checked where the URL is read
    (relay/agent/launch.py) as well, so that a bad one is refused before the relay binds."""
    try:
        url = urlsplit(base_url)
        url.port  # noqa: B018 - raises on a port that is not a number
    except ValueError as exc:
        return f"not an http(s) URL: {base_url!r} ({exc})"
    if url.scheme not in ("http", "https") or not url.hostname:
        return f"not an http(s) URL: {base_url!r}"
    return None


class Http11Client:
    def __init__(self, base_url: str, timeout: float = 5.0, max_body: int = MAX_BODY) -> None:
        problem = url_problem(base_url)
        if problem:
            raise ValueError(problem)
        url = urlsplit(base_url)
        self.host = url.hostname
        self.port = url.port or (443 if url.scheme == "https" else 80)
        self.tls = url.scheme == "https"
        self.prefix = url.path.rstrip("/")
        self.timeout = timeout
        self.max_body = max_body
        self._host_header = url.netloc.rsplit("@", 1)[-1]
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._conn: h11.Connection | None = None
        self._lock = asyncio.Lock()
        self._answered = False

    async def request(
        self, method: str, path: str, body: bytes = b"", headers: Sequence[tuple[str, str]] = ()
    ) -> tuple[int, bytes]:
        """(status, body) of `method` on prefix + `path`; HttpError if it could not be had. A kept
        connection the server dropped without our noticing (its keep-alive timeout ran out just as
        we sent) is retried once on a fresh one, if no answer had begun."""
        async with self._lock:
            for attempt in (1, 2):
                reused = self._usable()
                try:
                    async with asyncio.timeout(self.timeout):
                        return await self._exchange(method, path, body, headers)
                except TimeoutError as exc:
                    self._drop()
                    raise HttpError(f"{method} {path}: timed out after {self.timeout} s") from exc
                except (OSError, h11.ProtocolError, EOFError) as exc:
                    answered = self._answered
                    self._drop()
                    if reused and not answered and attempt == 1:
                        continue
                    raise HttpError(f"{method} {path}: {exc!r}") from exc
                except BaseException:  # cancelled mid-request: the connection's state is unknown
                    self._drop()
                    raise
            raise AssertionError("unreachable")

    def _usable(self) -> bool:
        """A kept connection that is idle and that the server has not closed (EOF already seen)."""
        return (
            self._conn is not None
            and self._conn.our_state is h11.IDLE
            and self._reader is not None
            and not self._reader.at_eof()
            and self._writer is not None
            and not self._writer.is_closing()
        )

    async def _exchange(
        self, method: str, path: str, body: bytes, headers: Sequence[tuple[str, str]]
    ) -> tuple[int, bytes]:
        if not self._usable():
            await self._connect()
        conn, reader, writer = self._conn, self._reader, self._writer
        assert conn is not None and reader is not None and writer is not None
        self._answered = False
        framing = [("Content-Length", str(len(body)))] if body or method in ("POST", "PUT") else []
        request = h11.Request(
            method=method,
            target=self.prefix + path,
            headers=[("Host", self._host_header), *framing, *headers],
        )
        out = conn.send(request) + (conn.send(h11.Data(data=body)) if body else b"")
        writer.write(out + conn.send(h11.EndOfMessage()))
        await writer.drain()
        status = 0
        chunks: list[bytes] = []
        size = 0
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                conn.receive_data(await reader.read(65536))  # b"": closed; h11 raises or ends the body
                continue
            if isinstance(event, h11.Response):
                self._answered = True
                status = event.status_code
            elif isinstance(event, h11.Data):
                size += len(event.data)
                if size > self.max_body:
                    raise EOFError(f"answer larger than {self.max_body} bytes")
                chunks.append(bytes(event.data))
            elif isinstance(event, h11.EndOfMessage):
                break
            elif isinstance(event, h11.ConnectionClosed):
                raise EOFError("connection closed before the answer ended")
        if conn.our_state is h11.DONE and conn.their_state is h11.DONE:
            conn.start_next_cycle()  # keep-alive
        else:
            self._drop()  # "Connection: close", or an HTTP/1.0 peer
        return status, b"".join(chunks)

    async def _connect(self) -> None:
        self._drop()
        tls = _TLS if self.tls else None
        reader, writer = await asyncio.open_connection(
            self.host, self.port, ssl=tls, server_hostname=self.host if tls else None
        )
        sock = writer.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # small requests, no Nagle
        self._reader, self._writer = reader, writer
        self._conn = h11.Connection(h11.CLIENT, max_incomplete_event_size=64 * 1024)

    def _drop(self) -> None:
        if self._writer is not None:
            self._writer.close()
        self._reader = self._writer = None
        self._conn = None

    async def aclose(self) -> None:
        writer = self._writer
        self._drop()
        if writer is not None:
            with contextlib.suppress(Exception):
                await writer.wait_closed()
