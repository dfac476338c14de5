"""Shared bits of the relay server tests: short timeouts, waiting for a condition, counters."""

from __future__ import annotations

import asyncio
import json
import re
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import relay.client as rc
from relay.embedded import EmbeddedRoom
from relay.server import rides

from .rawpeer import UdpPeer, WsPeer

# Short liveness times so timeouts show within a second (docs: keep tests fast).
FAST: dict[str, Any] = {"keepalive_timeout": 0.6, "resume_grace": 0.8, "idle_timeout": 30.0}


async def eventually(check: Callable[[], object], timeout: float = 2.0, what: str = "condition") -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not check():
        assert loop.time() < deadline, f"{what} not reached within {timeout} s"
        await asyncio.sleep(0.01)


async def passes(seconds: float, every: float = 0.005) -> None:
    """A room in play for `seconds`, as far as its loop's rides see it: a pass every `every`,
    the rides due run at its end (relay/server/rides.py)."""
    riding = rides.for_loop(asyncio.get_running_loop())
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        await asyncio.sleep(every)
        now = time.monotonic()
        if now >= riding.due:
            riding.run(now)


def drops(room: EmbeddedRoom) -> dict[str, int]:
    """A copy of the relay's drop counters by reason."""
    return dict(room.relay.counters.drops)


def metric(text: str, name: str, **labels: str) -> float:
    """The value of a sample `name{labels}` in a Prometheus text page; 0 where it is absent."""
    want = ",".join(f'{k}="{v}"' for k, v in labels.items())
    pattern = re.escape(name) + (r"\{" + re.escape(want) + r"\}" if want else "") + r" (\S+)"
    found = re.search(r"^" + pattern + r"$", text, re.M)
    return float(found.group(1)) if found else 0.0


def connections(room: EmbeddedRoom) -> tuple[int, int]:
    """(TLS, plain) TCP connections the relay holds, from its /metrics page."""
    text = room.relay.metrics.render().decode()
    tls = int(metric(text, "relay_tls_connections"))
    return tls, int(metric(text, "relay_ws_connections")) - tls


def moved(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    """The drop reasons whose count changed, with the difference."""
    return {k: after.get(k, 0) - before.get(k, 0) for k in after if after.get(k, 0) != before.get(k, 0)}


async def client(
    room: EmbeddedRoom,
    user: str,
    transport: str = "udp",
    port: int | None = None,
    timeout: float = 3,
    **kw: Any,
) -> rc.Client:
    """A client of the room, at its own port or at `port` (a proxy in front of it)."""
    port = room.port if port is None else port
    return await rc.connect(room.host, port, room.key, user, transport=transport, timeout=timeout, **kw)


async def exchange(a: rc.Client, b: rc.Client, data: bytes = b"still here") -> None:
    """a -> b and b -> a both deliver (the room still serves its members)."""
    a.send(data)
    assert await b.next_event_of(rc.Received, 3, lambda e: e.data == data) == rc.Received(
        a.connection_id, data
    )
    b.send(data + b"!")
    got = await a.next_event_of(rc.Received, 3, lambda e: e.data == data + b"!")
    assert got == rc.Received(b.connection_id, data + b"!")


def no_events_of(c: rc.Client, *kinds: type) -> list[object]:
    """Queued events of these kinds (drains the queue)."""
    return [e for e in c.drain_events() if isinstance(e, kinds)]


async def open_peer(room: EmbeddedRoom, transport: str) -> UdpPeer | WsPeer:
    """A raw peer on `transport` that has not sent anything yet."""
    if transport == "udp":
        return await UdpPeer.open(room.key, room.port)
    return await WsPeer.open(room.key, room.port)


async def close_peer(peer: UdpPeer | WsPeer) -> None:
    if isinstance(peer, UdpPeer):
        peer.close()
    else:
        await peer.aclose()


async def serve_process(key: str, *flags: str) -> tuple[asyncio.subprocess.Process, dict[str, Any]]:
    """`relay serve` (the relay as deployed, on uvloop) for the room `key` on 127.0.0.1 with
    `flags`, and its first log line (JSON on stderr: where it listens). The caller ends it."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "relay.cli",
        "serve",
        "--room-key",
        key,
        "--host",
        "127.0.0.1",
        *flags,
        cwd=Path(__file__).resolve().parents[2],
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    assert proc.stderr is not None
    return proc, json.loads(await asyncio.wait_for(proc.stderr.readline(), 15))
