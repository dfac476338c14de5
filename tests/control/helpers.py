"""Shared test helpers: control planes on port 0 (in-process task or background thread) and the SDK."""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx

from relay.control.app import ControlPlane
from relay.control.config import ControlConfig

CLIENT_ID = "test-client"
CLIENT_SECRET = "test-secret-0123456789"
STANDIN = (sys.executable, "-m", "tests.control.standin_relay")
REAL_RELAY = (sys.executable, "-m", "relay.cli", "serve")


def make_config(data_dir: Path, **overrides: Any) -> ControlConfig:
    base = ControlConfig(
        host="127.0.0.1",
        port=0,
        data_dir=data_dir,
        client_id=CLIENT_ID,
        client_secret=CLIENT_SECRET,
        relay_command=STANDIN,
        heartbeat_interval=0.2,
        idle_heartbeat_interval=0.4,  # stand-in relays are always quiet
        missed_heartbeats=3,
        sweep_interval=0.05,
        stop_grace=1.0,
        register_timeout=15.0,
        stop_relays_on_exit=True,
    )
    return base.replace(**overrides)


@contextlib.contextmanager
def threaded_control_plane(config: ControlConfig) -> Iterator[ControlPlane]:
    """Runs a control plane on its own event loop thread, for synchronous callers (the gs2 SDK)."""
    loop = asyncio.new_event_loop()
    started = threading.Event()
    box: dict[str, Any] = {}

    async def run() -> None:
        cp = ControlPlane(config)
        await cp.start()
        box["cp"] = cp
        box["stop"] = asyncio.Event()
        started.set()
        await box["stop"].wait()
        await cp.stop()

    def target() -> None:
        try:
            loop.run_until_complete(run())
        except BaseException as exc:
            box["error"] = exc
            started.set()

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    started.wait(20)
    if "error" in box:
        raise box["error"]
    try:
        yield box["cp"]
    finally:
        loop.call_soon_threadsafe(box["stop"].set)
        thread.join(20)
        loop.close()


def gs2_client(url: str) -> tuple[Any, Any]:
    from gs2 import core, realtime

    session = core.Gs2RestSession(
        core.BasicGs2Credential(CLIENT_ID, CLIENT_SECRET), "ap-northeast-1", steady_endpoint=url
    )
    session.connect()
    return session, realtime.Gs2RealtimeRestClient(session)


async def wait_for(predicate: Callable[[], Any], timeout: float = 10.0, interval: float = 0.05) -> Any:
    """Polls `predicate` (a coroutine it returns is awaited) until it is truthy; its value."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError("condition not met in time")
        await asyncio.sleep(interval)


async def settles(
    get: Callable[[], Any], expected: Any, timeout: float = 10.0, context: Callable[[], Any] = lambda: None
) -> None:
    """Polls `get()` until it equals `expected`; a timeout says what it last was and `context()`
    (a flaky count of relays is diagnosed from that, not rerun)."""
    value: Any = None

    def equal() -> bool:
        nonlocal value
        value = get()
        return value == expected

    try:
        await wait_for(equal, timeout=timeout)
    except TimeoutError:
        seen = f"still {value!r} after {timeout} s, expected {expected!r}"
        raise AssertionError(f"{seen}; {context()}") from None


async def login(http: httpx.AsyncClient) -> dict[str, str]:
    """Project-token login; the headers every GS2 REST call carries."""
    r = await http.post(
        "/identifier/projectToken/login", json={"client_id": CLIENT_ID, "client_secret": CLIENT_SECRET}
    )
    r.raise_for_status()
    return {"Authorization": "Bearer " + r.json()["access_token"], "X-GS2-CLIENT-ID": CLIENT_ID}


async def ready_room(http: httpx.AsyncClient, h: dict[str, str], ns: str, room: str) -> dict:
    """Waits until getRoom shows the relay's address."""

    async def ready() -> dict | None:
        r = await http.get(f"/realtime/{ns}/room/{room}", headers=h)
        assert r.status_code == 200, f"{ns}/{room}: {r.status_code} {r.text}"
        item = r.json()["item"]
        return item if item["ipAddress"] else None

    return await wait_for(ready, timeout=15)


def ended_rooms(data_dir: Path) -> list[str]:
    """The rooms a node's operation log says ended and why: what a failed count is read against."""
    path = data_dir / "operations.log"
    events = [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []
    return [f"{e['roomName']}: {e['reason']}" for e in events if e["event"] == "room.closed"]


def oplog(cp: ControlPlane) -> list[dict[str, Any]]:
    """The operation log's records, oldest first."""
    path = cp.config.operation_log_path
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def relay_pids(namespace: str, control_url: str | None = None) -> dict[str, list[int]]:
    """The relay processes on this machine that report to the control plane at `control_url`, for
    rooms of `namespace`, by room name, read from their command lines (as the provisioner finds
    them after a restart); other test runs' relays on this machine are not counted. Without
    `control_url` (several nodes, a namespace no other run uses): every relay of `namespace`."""
    from relay.agent.launch import room_of
    from relay.host.spawner import commands, pid_alive

    found: dict[str, list[int]] = {}
    for pid, args in commands():
        ns, room = room_of(args)
        # --control-url[=]URL/internal
        ours = control_url is None or any(control_url.rstrip("/") + "/" in a for a in args)
        if ns == namespace and room is not None and ours and pid_alive(pid):
            found.setdefault(room, []).append(pid)
    return found


async def create_namespace(http: httpx.AsyncClient, h: dict[str, str], name: str, **extra: Any) -> None:
    body = {"name": name, "serverType": "relay", "serverSpec": "realtime1.nano", **extra}
    r = await http.post("/realtime/", json=body, headers=h)
    assert r.status_code == 200, r.text
