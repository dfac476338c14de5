"""The agent's HTTP/1.1 client against real sockets: servers that answer as uvicorn, nginx or a
broken peer would."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
from hypothesis import given
from hypothesis import strategies as st

from relay.agent.http11 import MAX_HEAD, AnswerReader, Http11Client, HttpError, encode_request

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@contextlib.asynccontextmanager
async def server(handler: Handler) -> AsyncIterator[tuple[int, list[int]]]:
    """A TCP server on 127.0.0.1; yields its port and a list that counts accepted connections."""
    accepted: list[int] = []

    async def on_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.append(1)
        try:
            await handler(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.CancelledError):
            pass
        finally:
            writer.close()

    srv = await asyncio.start_server(on_connect, "127.0.0.1", 0)
    try:
        yield srv.sockets[0].getsockname()[1], accepted
    finally:
        srv.close()


async def read_request(reader: asyncio.StreamReader) -> tuple[str, dict[str, str], bytes]:
    head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in head[1:] if line)}
    body = await reader.readexactly(int(headers.get("content-length", "0")))
    return head[0], headers, body


def answer(body: bytes, extra: str = "") -> bytes:
    return f"HTTP/1.1 200 OK\r\nContent-Length: {len(body)}\r\n{extra}\r\n".encode() + body


async def keep_alive(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while True:
        line, headers, body = await read_request(reader)
        writer.write(answer(b"%s|%s|%s" % (line.encode(), headers["host"].encode(), body)))


async def test_requests_share_one_kept_connection_and_carry_the_prefix() -> None:
    async with server(keep_alive) as (port, accepted):
        client = Http11Client(f"http://127.0.0.1:{port}/internal/")
        for i in range(5):
            status, body = await client.request("POST", f"/rooms/r/{i}", b"{}", [("X-A", "b")])
            assert status == 200
            assert body == f"POST /internal/rooms/r/{i} HTTP/1.1|127.0.0.1:{port}|{{}}".encode()
        status, body = await client.request("GET", "/healthz")
        assert body.startswith(b"GET /internal/healthz HTTP/1.1")
        assert len(accepted) == 1
        await client.aclose()


async def test_chunked_answers_and_connection_close() -> None:
    async def chunked(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 404 Not Found\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n")
        writer.write(b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n")
        await writer.drain()

    async with server(chunked) as (port, accepted):
        client = Http11Client(f"http://127.0.0.1:{port}")
        assert await client.request("POST", "/x", b"1") == (404, b"hello world")
        assert await client.request("POST", "/x", b"2") == (404, b"hello world")
        assert len(accepted) == 2  # the server said close: a new connection each time
        await client.aclose()


async def test_a_connection_the_server_dropped_is_replaced_without_an_error() -> None:
    """uvicorn closes kept connections after 5 s idle; a quiet room heartbeats every 30 s."""

    async def one_answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(answer(b"ok"))
        await writer.drain()  # then closes, without "Connection: close"

    async with server(one_answer) as (port, accepted):
        client = Http11Client(f"http://127.0.0.1:{port}")
        assert await client.request("POST", "/a", b"1") == (200, b"ok")
        await asyncio.sleep(0.05)  # the close arrives while the connection is idle
        assert await client.request("POST", "/b", b"2") == (200, b"ok")
        assert await client.request("POST", "/c", b"3") == (200, b"ok")  # close not yet seen: retried
        assert len(accepted) == 3
        await client.aclose()


async def test_failures_are_http_errors_and_the_next_request_reconnects() -> None:
    behaviour = ["garbage"]

    async def flaky(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            await read_request(reader)
            mode = behaviour[0]
            if mode == "garbage":
                writer.write(b"NOT HTTP AT ALL\r\n\r\n")
            elif mode == "huge":
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 5000000\r\n\r\n" + b"x" * 2_000_000)
            elif mode == "silent":
                await asyncio.sleep(10)
            elif mode == "cut":
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc")
                await writer.drain()
                return
            else:
                writer.write(answer(b"fine"))
            await writer.drain()

    async with server(flaky) as (port, accepted):
        client = Http11Client(f"http://127.0.0.1:{port}", timeout=0.3)
        for mode in ("garbage", "huge", "silent", "cut"):
            behaviour[0] = mode
            with pytest.raises(HttpError):
                await client.request("POST", "/x", b"1")
            behaviour[0] = "ok"
            assert await client.request("POST", "/x", b"1") == (200, b"fine"), mode
        assert len(accepted) == 5  # each failure dropped the connection it was on
        await client.aclose()

    client = Http11Client(f"http://127.0.0.1:{port}", timeout=1.0)  # nobody listens there now
    with pytest.raises(HttpError):
        await client.request("POST", "/x", b"1")


async def test_cancelled_request_leaves_no_half_used_connection() -> None:
    release = asyncio.Event()

    async def slow_then_fine(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            await read_request(reader)
            await release.wait()
            writer.write(answer(b"late"))
            await writer.drain()

    async with server(slow_then_fine) as (port, accepted):
        client = Http11Client(f"http://127.0.0.1:{port}")
        task = asyncio.create_task(client.request("POST", "/x", b"1"))
        await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        release.set()
        # the late answer to the cancelled request is never taken for this one's
        assert await client.request("POST", "/y", b"2") == (200, b"late")
        assert len(accepted) == 2
        await client.aclose()


def test_only_http_urls() -> None:
    for url in ("ftp://x/", "127.0.0.1:80", "http:///nohost"):
        with pytest.raises(ValueError):
            Http11Client(url)
    c = Http11Client("https://control.example:8443/internal")
    assert (c.host, c.port, c.tls, c.prefix) == ("control.example", 8443, True, "/internal")


# ---- the answer reader and the request encoder, without sockets ---------------------------------

CHUNKED = (
    b"HTTP/1.1 100 Continue\r\n\r\n"
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nX-Note:  spaced value \t\r\n\r\n"
    b"5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nX-Trailer: t\r\n\r\n"
)


@given(st.lists(st.integers(min_value=0, max_value=len(CHUNKED)), max_size=8))
def test_an_answer_in_any_pieces_reads_the_same(cuts: list[int]) -> None:
    reader = AnswerReader()
    ends = sorted(set(cuts))
    pieces = [CHUNKED[a:b] for a, b in zip([0, *ends], [*ends, len(CHUNKED)], strict=True) if b > a]
    results = [reader.feed(piece) for piece in pieces]
    assert results[-1] and not any(results[:-1])  # whole at its last byte, not before
    assert (reader.status, reader.body, reader.keep_alive, reader.extra) == (200, b"hello world", True, b"")


def test_framings_and_keep_alive() -> None:
    def one(data: bytes, head: bool = False) -> AnswerReader:
        reader = AnswerReader(head)
        assert reader.feed(data)
        return reader

    fixed = one(b"HTTP/1.1 201 Created\r\ncontent-length: 3\r\n\r\nabcEXTRA")
    assert (fixed.status, fixed.body, fixed.keep_alive, fixed.extra) == (201, b"abc", True, b"EXTRA")
    assert one(b"HTTP/1.1 204 No Content\r\n\r\n").body == b""
    assert one(b"HTTP/1.1 200 OK\r\nContent-Length: 99\r\n\r\n", head=True).body == b""
    assert not one(
        b"HTTP/1.1 200 OK\r\nConnection: keep-alive, close\r\nContent-Length: 0\r\n\r\n"
    ).keep_alive
    assert not one(b"HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n").keep_alive
    assert one(b"HTTP/1.0 200 OK\r\nConnection: Keep-Alive\r\nContent-Length: 0\r\n\r\n").keep_alive
    assert one(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 2\r\n\r\nok").body == b"ok"

    until_close = AnswerReader()
    assert not until_close.feed(b"HTTP/1.1 200 OK\r\n\r\nsome")
    assert not until_close.feed(b" more")
    assert until_close.eof() and until_close.body == b"some more" and not until_close.keep_alive

    cut = AnswerReader()
    assert not cut.feed(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc")
    with pytest.raises(HttpError, match="closed before"):
        cut.eof()


@pytest.mark.parametrize(
    "data",
    [
        b"NOT HTTP AT ALL\r\n\r\n",
        b"HTTP/2 200 OK\r\n\r\n",
        b"HTTP/1.1 20 OK\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nX: a\r\n folded\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nBad Name: a\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nX : a\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 2000000\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nabcd\r\n",
        b"HTTP/1.1 101 Switching Protocols\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nX: " + b"a" * MAX_HEAD + b"\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nX: " + b"a" * (MAX_HEAD + 10),
    ],
)
def test_malformed_or_oversized_answers_are_errors(data: bytes) -> None:
    with pytest.raises(HttpError):
        AnswerReader().feed(data)


def test_a_chunked_body_is_held_to_the_limit_as_it_arrives() -> None:
    reader = AnswerReader(max_body=10)
    assert not reader.feed(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nffffff\r\n0123456789")
    with pytest.raises(HttpError, match="larger than 10"):
        reader.feed(b"x")


def test_requests_are_one_string_and_refuse_injection() -> None:
    request = encode_request("POST", "/p/q", "h:1", b"{}", [("Authorization", "Bearer s")])
    assert (
        request
        == b"POST /p/q HTTP/1.1\r\nHost: h:1\r\nContent-Length: 2\r\nAuthorization: Bearer s\r\n\r\n{}"
    )
    assert encode_request("GET", "/", "h", b"") == b"GET / HTTP/1.1\r\nHost: h\r\n\r\n"
    for bad in (
        lambda: encode_request("GET", "/a b", "h", b""),
        lambda: encode_request("GET", "/a\r\nX: y", "h", b""),
        lambda: encode_request("GE T", "/", "h", b""),
        lambda: encode_request("GET", "/", "h", b"", [("X", "a\r\nInjected: 1")]),
        lambda: encode_request("GET", "/", "h", b"", [("X:Y", "a")]),
    ):
        with pytest.raises(ValueError):
            bad()


async def test_a_request_that_cannot_be_written_is_an_http_error_and_sends_nothing() -> None:
    client = Http11Client("http://127.0.0.1:9")  # never connected: the request is refused first
    with pytest.raises(HttpError, match="bad header"):
        await client.request("POST", "/x", b"", [("X", "a\nb")])
