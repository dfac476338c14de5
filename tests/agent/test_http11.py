"""The agent's HTTP/1.1 client against real sockets: servers that answer as uvicorn, nginx or a
broken peer would."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from relay.agent.http11 import Http11Client, HttpError

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
