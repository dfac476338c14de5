"""Driving clients/js from pytest: a Node process speaking JSON lines (clients/js/test/rpc.ts),
a TCP proxy whose connections a test can cut (a dropped connection, for real), and what a relay
with a certificate says of the TLS handshakes its clients refused."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

from relay.embedded import EmbeddedRoom

Event = dict[str, Any]


class JsError(Exception):
    def __init__(self, answer: dict[str, Any]) -> None:
        super().__init__(f"{answer.get('name')}: {answer.get('error')}")
        self.name = answer.get("name")
        self.code = answer.get("code")


class JsRemote:
    """One Node process running a script built from clients/js/test; `call` sends an op and waits
    for its answer; events it prints are kept in `events` (in arrival order)."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.events: list[Event] = []
        self._answers: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._next = 0
        self._changed = asyncio.Event()
        self._stderr = bytearray()
        self._readers = [asyncio.ensure_future(self._read()), asyncio.ensure_future(self._read_stderr())]

    @classmethod
    @contextlib.asynccontextmanager
    async def run(
        cls, node: list[str], script: Path, env: dict[str, str] | None = None
    ) -> AsyncIterator[JsRemote]:
        """`env`: the process's whole environment (default this one's), e.g. with
        NODE_EXTRA_CA_CERTS, which Node reads only at start."""
        proc = await asyncio.create_subprocess_exec(
            *node,
            str(script),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            limit=1 << 24,
            env=env,
        )
        remote = cls(proc)
        try:
            yield remote
        finally:
            await remote.close()

    async def _read(self) -> None:
        assert self.proc.stdout is not None
        while line := await self.proc.stdout.readline():
            message = json.loads(line)
            if "event" in message:
                self.events.append(message)
                self._changed.set()
            elif (future := self._answers.pop(message["id"], None)) is not None and not future.done():
                future.set_result(message)
        for future in self._answers.values():
            if not future.done():
                future.set_exception(RuntimeError(f"node exited:\n{self.stderr}"))

    async def _read_stderr(self) -> None:
        assert self.proc.stderr is not None
        while chunk := await self.proc.stderr.read(65536):
            self._stderr += chunk
            del self._stderr[: max(0, len(self._stderr) - 65536)]

    @property
    def stderr(self) -> str:
        return self._stderr.decode(errors="replace")

    async def call(self, op: str, timeout: float = 10.0, **args: Any) -> Any:
        assert self.proc.stdin is not None
        self._next += 1
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._answers[self._next] = future
        self.proc.stdin.write(json.dumps({"id": self._next, "op": op, "args": args}).encode() + b"\n")
        await self.proc.stdin.drain()
        try:
            answer = await asyncio.wait_for(future, timeout)
        except TimeoutError:
            raise TimeoutError(f"{op} took over {timeout} s; node stderr:\n{self.stderr}") from None
        if not answer["ok"]:
            raise JsError(answer)
        return answer["result"]

    def seen(self, match: Callable[[Event], bool] | None = None, **fields: Any) -> list[Event]:
        """The events so far that have these fields (and pass `match`)."""
        return [
            e
            for e in self.events
            if all(e.get(k) == v for k, v in fields.items()) and (match is None or match(e))
        ]

    async def expect(
        self, match: Callable[[Event], bool] | None = None, timeout: float = 5.0, **fields: Any
    ) -> Event:
        """The first event with these fields, waiting up to `timeout` for it."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not (found := self.seen(match, **fields)):
            left = deadline - loop.time()
            if left <= 0:
                raise AssertionError(f"no event {fields} within {timeout} s; events: {self.events[-20:]}")
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), left)
        return found[0]

    async def close(self) -> None:
        if self.proc.returncode is None:
            with contextlib.suppress(Exception):
                await self.call("exit", timeout=5)
            try:
                await asyncio.wait_for(self.proc.wait(), 10)
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()
        for reader in self._readers:
            reader.cancel()
        await asyncio.gather(*self._readers, return_exceptions=True)


class CutProxy:
    """TCP on 127.0.0.1 forwarded to `port`. `cut()` aborts every connection through it (both
    sides see a reset, as when a network path dies); while `refusing`, new connections are
    aborted as soon as they are accepted."""

    def __init__(self, port: int) -> None:
        self.target = port
        self.refusing = False
        self.port = 0
        self.accepted = 0
        self._server: asyncio.Server | None = None
        self._transports: set[asyncio.BaseTransport] = set()

    async def __aenter__(self) -> CutProxy:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.cut()
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()

    def cut(self) -> None:
        for t in list(self._transports):
            t.abort()
        self._transports.clear()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        if self.refusing:
            writer.transport.abort()
            return
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target)
        except OSError:
            writer.transport.abort()
            return
        self._transports |= {writer.transport, up_writer.transport}

        async def pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(OSError):
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            dst.transport.abort()

        await asyncio.gather(pump(reader, up_writer), pump(up_reader, writer))
        self._transports -= {writer.transport, up_writer.transport}


def hexs(text: str | bytes) -> str:
    return (text.encode() if isinstance(text, str) else text).hex()


async def tls_handshakes_failed(room: EmbeddedRoom, expected: int) -> None:
    """The relay counts `expected` TLS handshakes that failed (it learns of one from the
    client's alert, about when the client reports its error)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 3
    while (failed := room.relay.counters.drops.get("tls_handshake", 0)) != expected:
        assert loop.time() < deadline, f"{failed} failed TLS handshakes, not {expected}"
        await asyncio.sleep(0.01)
