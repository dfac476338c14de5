"""One keep-alive HTTP/1.1 connection to one origin, for the agent's calls to the control plane.

    client = Http11Client("http://127.0.0.1:7700/internal", timeout=5.0)
    status, body = await client.request("POST", "/rooms/ns/r/heartbeat", b"{...}", headers)
    await client.aclose()

Why a client of our own: a relay makes a handful of small POSTs to one host, the heartbeat every
2 s while its room plays, and each runs with the caches cold. httpx's layers (httpx, httpcore,
anyio) cost about 0.7 ms of CPU a call warm; h11 under asyncio streams, which came next, 70 us
warm and about 0.5 ms of a relay's CPU a heartbeat as deployed (docs/architecture.md). The
request here is one formatted string, the answer is read by `AnswerReader` (sans-I/O, below)
straight from the protocol's `data_received`. It reads what any HTTP/1.1 server may send back:
a Content-Length, chunked or close-delimited body, interim 1xx answers, `Connection: close`,
an HTTP/1.0 peer; anything else is an HttpError, never a guess.

Requests go one at a time. Any error (refused, reset, timeout, malformed answer, cancellation
mid-request) closes the connection, so the next request starts on a fresh one; the caller
decides whether to retry. Bodies are at most `max_body` bytes, the head at most MAX_HEAD.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import socket
import ssl
from collections.abc import Sequence
from urllib.parse import urlsplit

MAX_BODY = 1 << 20
MAX_HEAD = 64 * 1024
"""Bytes of an answer's status line and headers (and of a chunked body's trailers)."""
MAX_CHUNK_LINE = 1024

_TLS = ssl.create_default_context()
"""Built once at import (the CA bundle costs tens of ms of CPU): a relay forked from the zygote
template inherits it instead of building one at 12.5% of a core while its room waits."""

_STATUS = re.compile(rb"HTTP/1\.([01]) ([0-9]{3})(?: [^\r\n]*)?")
_HEADER = re.compile(rb"([!#$%&'*+\-.^_`|~0-9A-Za-z]+):[ \t]*([^\r\n\x00]*?)[ \t]*")
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_CHUNK_SIZE = re.compile(rb"([0-9A-Fa-f]{1,16})[ \t]*(?:;[^\r\n]*)?")
_UNSAFE = re.compile(r"[\x00\r\n]")


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


def encode_request(
    method: str, target: str, host: str, body: bytes, headers: Sequence[tuple[str, str]] = ()
) -> bytes:
    """The request's bytes; ValueError for a method or header name that is not a token, or a
    CR, LF or NUL anywhere (a header injected into the request, or a request smuggled after it)."""
    if not _TOKEN.fullmatch(method) or _UNSAFE.search(target) or " " in target or not target:
        raise ValueError(f"bad request line: {method!r} {target!r}")
    lines = [f"{method} {target} HTTP/1.1", f"Host: {host}"]
    if body or method in ("POST", "PUT"):
        lines.append(f"Content-Length: {len(body)}")
    for name, value in headers:
        if not _TOKEN.fullmatch(name) or _UNSAFE.search(value):
            raise ValueError(f"bad header: {name!r}")
        lines.append(f"{name}: {value}")
    lines.append("\r\n")
    return "\r\n".join(lines).encode("latin-1") + body


class AnswerReader:
    """Reads one answer to a request from the bytes that arrive, in any pieces (sans-I/O).

    `feed(data)` returns True once the answer is whole (`status`, `body`, `keep_alive`, and
    `extra`: bytes past its end, which a well-behaved server never sends); `eof()` says the
    peer closed and returns True when that ended a close-delimited body. HttpError for anything
    malformed or over the limits (RFC 9112: 6.3 for the body's framing)."""

    def __init__(self, head_request: bool = False, max_body: int = MAX_BODY) -> None:
        self.status = 0
        self.body = b""
        self.keep_alive = False
        self.extra = b""
        self.started = False  # some of the answer has arrived
        self._head_request = head_request
        self._max_body = max_body
        self._buf = bytearray()
        self._chunks: list[bytes] = []
        self._size = 0
        self._state = self._head
        self._length = 0  # bytes left of a Content-Length body or of the current chunk

    def feed(self, data: bytes) -> bool:
        if self._state is None:
            self.extra += data
            return True
        if data:
            self.started = True
            self._buf += data
        while self._state is not None and self._state():
            pass
        return self._state is None

    def eof(self) -> bool:
        if self._state == self._until_close:
            self._finish()
            return True
        if self._state is None:
            return True
        raise HttpError("connection closed before the answer ended")

    # ---- states: each consumes what it can, True to go on --------------------------------
    def _line(self, limit: int, what: str) -> bytes | None:
        end = self._buf.find(b"\r\n")
        if end < 0:
            if len(self._buf) > limit:
                raise HttpError(f"{what} longer than {limit} bytes")
            return None
        line = bytes(self._buf[:end])
        del self._buf[: end + 2]
        return line

    def _head(self) -> bool:
        end = self._buf.find(b"\r\n\r\n")
        if end < 0:
            if len(self._buf) > MAX_HEAD:
                raise HttpError(f"answer head longer than {MAX_HEAD} bytes")
            return False
        if end > MAX_HEAD:
            raise HttpError(f"answer head longer than {MAX_HEAD} bytes")
        lines = bytes(self._buf[:end]).split(b"\r\n")
        del self._buf[: end + 4]
        found = _STATUS.fullmatch(lines[0])
        if found is None:
            raise HttpError(f"not an HTTP/1.x status line: {lines[0][:80]!r}")
        minor, status = int(found.group(1)), int(found.group(2))
        fields: dict[bytes, list[bytes]] = {}
        for line in lines[1:]:
            field = _HEADER.fullmatch(line)
            if field is None:  # obs-fold, a bare name, a space before the colon: all refused
                raise HttpError(f"malformed header line: {line[:80]!r}")
            fields.setdefault(field.group(1).lower(), []).append(field.group(2))
        if 100 <= status < 200:
            if status == 101:
                raise HttpError("the server switched protocols")
            return True  # an interim answer (100 Continue, 103 Early Hints): the real one follows
        self.status = status
        connection = {t.strip().lower() for v in fields.get(b"connection", []) for t in v.split(b",")}
        self.keep_alive = (b"close" not in connection) if minor == 1 else (b"keep-alive" in connection)
        coding = [t.strip().lower() for v in fields.get(b"transfer-encoding", []) for t in v.split(b",")]
        lengths = {v.strip() for v in fields.get(b"content-length", [])}
        if self._head_request or status in (204, 304):
            self._finish()
        elif coding:
            if coding[-1] != b"chunked" or minor == 0:
                raise HttpError(f"unsupported transfer coding: {b', '.join(coding)!r}")
            self.keep_alive = self.keep_alive and not lengths  # both: a smuggling attempt's mark
            self._state = self._chunk_size
        elif lengths:
            if len(lengths) != 1 or not next(iter(lengths)).isdigit():
                raise HttpError(f"bad Content-Length: {sorted(lengths)!r}")
            self._length = int(next(iter(lengths)))
            if self._length > self._max_body:
                raise HttpError(f"answer larger than {self._max_body} bytes")
            self._state = self._fixed
        else:
            self.keep_alive = False  # the body ends when the server closes
            self._state = self._until_close
        return True

    def _take(self, n: int) -> None:
        self._size += n
        if self._size > self._max_body:
            raise HttpError(f"answer larger than {self._max_body} bytes")
        self._chunks.append(bytes(self._buf[:n]))
        del self._buf[:n]

    def _fixed(self) -> bool:
        n = min(self._length, len(self._buf))
        if n:
            self._take(n)
            self._length -= n
        if self._length:
            return False
        self._finish()
        return True

    def _chunk_size(self) -> bool:
        line = self._line(MAX_CHUNK_LINE, "chunk size line")
        if line is None:
            return False
        found = _CHUNK_SIZE.fullmatch(line)
        if found is None:
            raise HttpError(f"bad chunk size line: {line[:80]!r}")
        self._length = int(found.group(1), 16)
        self._state = self._chunk_data if self._length else self._trailers
        return True

    def _chunk_data(self) -> bool:
        n = min(self._length, len(self._buf))
        if n:
            self._take(n)
            self._length -= n
        if self._length or len(self._buf) < 2:
            return False
        if self._buf[:2] != b"\r\n":
            raise HttpError("chunk not followed by CRLF")
        del self._buf[:2]
        self._state = self._chunk_size
        return True

    def _trailers(self) -> bool:
        while (line := self._line(MAX_HEAD, "trailer section")) is not None:
            if not line:
                self._finish()
                return True
            if _HEADER.fullmatch(line) is None:
                raise HttpError(f"malformed trailer line: {line[:80]!r}")
        return False

    def _until_close(self) -> bool:
        if self._buf:
            self._take(len(self._buf))
        return False

    def _finish(self) -> None:
        self.body = b"".join(self._chunks)
        self.extra = bytes(self._buf)
        self._buf.clear()
        self._state = None


class _Wire(asyncio.Protocol):
    """The connection's protocol: hands what arrives to the reader of the request in flight."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.reader: AnswerReader | None = None
        self.answered: asyncio.Future[AnswerReader] | None = None
        self.lost = False  # closed, reset, or sent something while no request was in flight

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # small requests, no Nagle

    def data_received(self, data: bytes) -> None:
        reader, answered = self.reader, self.answered
        if reader is None or answered is None or answered.done():
            self.lost = True  # bytes no request asked for: the connection is not to be reused
            return
        try:
            if reader.feed(data):
                answered.set_result(reader)
        except HttpError as exc:
            answered.set_exception(exc)

    def eof_received(self) -> bool | None:
        self._ended(None)
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self._ended(exc)

    def _ended(self, exc: Exception | None) -> None:
        self.lost = True
        reader, answered = self.reader, self.answered
        if reader is None or answered is None or answered.done():
            return
        try:
            if exc is None and reader.eof():
                answered.set_result(reader)
                return
        except HttpError as error:
            exc = error
        answered.set_exception(exc or HttpError("connection closed before the answer ended"))


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
        self._wire: _Wire | None = None
        self._lock = asyncio.Lock()

    async def request(
        self, method: str, path: str, body: bytes = b"", headers: Sequence[tuple[str, str]] = ()
    ) -> tuple[int, bytes]:
        """(status, body) of `method` on prefix + `path`; HttpError if it could not be had. A kept
        connection the server dropped without our noticing (its keep-alive timeout ran out just as
        we sent) is retried once on a fresh one, if no answer had begun."""
        try:
            request = encode_request(method, self.prefix + path, self._host_header, body, headers)
        except ValueError as exc:
            raise HttpError(str(exc)) from exc
        async with self._lock:
            for attempt in (1, 2):
                reused = self._usable()
                reader = AnswerReader(method == "HEAD", self.max_body)
                try:
                    async with asyncio.timeout(self.timeout):
                        return await self._exchange(request, reader)
                except TimeoutError as exc:
                    self._drop()
                    raise HttpError(f"{method} {path}: timed out after {self.timeout} s") from exc
                except (OSError, HttpError) as exc:
                    self._drop()
                    if reused and not reader.started and attempt == 1:
                        continue
                    raise HttpError(
                        f"{method} {path}: {exc}"
                        if isinstance(exc, HttpError)
                        else f"{method} {path}: {exc!r}"
                    ) from exc
                except BaseException:  # cancelled mid-request: the connection's state is unknown
                    self._drop()
                    raise
            raise AssertionError("unreachable")

    def _usable(self) -> bool:
        """A kept connection that is idle and that the server has not closed (EOF already seen)."""
        wire = self._wire
        return (
            wire is not None
            and not wire.lost
            and wire.transport is not None
            and not wire.transport.is_closing()
        )

    async def _exchange(self, request: bytes, reader: AnswerReader) -> tuple[int, bytes]:
        if not self._usable():
            await self._connect()
        wire = self._wire
        assert wire is not None and wire.transport is not None
        wire.reader = reader
        answered = wire.answered = asyncio.get_running_loop().create_future()
        wire.transport.write(request)
        await answered
        wire.reader = wire.answered = None
        if not reader.keep_alive or reader.extra:
            self._drop()  # "Connection: close", an HTTP/1.0 peer, or bytes past the answer
        return reader.status, reader.body

    async def _connect(self) -> None:
        self._drop()
        tls = _TLS if self.tls else None
        _, self._wire = await asyncio.get_running_loop().create_connection(
            _Wire, self.host, self.port, ssl=tls, server_hostname=self.host if tls else None
        )

    def _drop(self) -> None:
        wire, self._wire = self._wire, None
        if wire is not None and wire.transport is not None:
            wire.reader = wire.answered = None
            wire.transport.close()

    async def aclose(self) -> None:
        self._drop()
