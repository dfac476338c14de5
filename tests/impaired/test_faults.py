"""Faults of a whole relay process (`relay serve`, a real subprocess): killed with SIGKILL, its
room is reported lost by the control plane within the heartbeat timeout and its members are told
by their clients, cleanly; without its control plane it keeps serving its room."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

import relay.client as rc
from loadtest.controlplane import free_port
from relay.agent.launch import ENV_AGENT_SECRET, ENV_ROOM_KEY, LAUNCH_ENV
from relay.control.app import ControlPlane
from relay.host.spawner import ProcessHandle, SubprocessSpawner, pid_alive
from relay.protocol.constants import CloseReason
from relay.protocol.keys import generate_room_key
from tests.control.helpers import REAL_RELAY, login, make_config, oplog, ready_room, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.timeout(90)]

HOST = "127.0.0.1"
LISTENING = re.compile(r"relay listening udp\+ws [\d.]+:(\d+)", re.MULTILINE)
HEARTBEAT = 0.2  # the control plane's and the relay's; a room in use is lost after 3 of them
LIVENESS = ("--keepalive-timeout", "0.6", "--resume-grace", "0.6", "--heartbeat-interval", str(HEARTBEAT))


@contextlib.asynccontextmanager
async def relay_serve(
    log: Path, room_key: str, *flags: str, secret: str = ""
) -> AsyncIterator[tuple[int, int]]:
    """A real `relay serve` (the project's spawner, output to `log`): (pid, port) once it listens;
    killed at the end if still alive."""
    env = {k: v for k, v in os.environ.items() if k not in LAUNCH_ENV}
    env |= {ENV_ROOM_KEY: room_key, ENV_AGENT_SECRET: secret}
    argv = [*REAL_RELAY, "--host", HOST, "--port", "0", *flags]
    handle: ProcessHandle = await SubprocessSpawner().spawn(argv, env, log)
    try:

        def port() -> int | None:
            found = LISTENING.search(log.read_text()) if log.exists() else None
            return int(found.group(1)) if found else None

        yield handle.pid, await wait_for(port, timeout=30)
    finally:
        if pid_alive(handle.pid):
            handle.kill()
        await asyncio.wait_for(handle.wait(), 10)


async def until_ended(client: rc.Client, timeout: float = 20.0) -> list[object]:
    """Every event up to the end of the client's stream (TimeoutError: it hung)."""
    events: list[object] = []
    async with asyncio.timeout(timeout):
        while (event := await client.next_event()) is not None:
            events.append(event)
    return events


async def test_a_killed_relay_is_reported_lost_and_its_members_told(tmp_path: Path) -> None:
    """SIGKILL: no CLOSING, no `closed` report, only silence. The control plane (external
    provisioning: it is not the relay's parent and learns only from heartbeats) removes the room
    as lost after three of the gaps its agent promised while the room was in use; each member's
    client reports ConnectionLost, fails to resume and ends with Disconnected, without an
    exception and without hanging, on either transport."""
    config = make_config(
        tmp_path, provisioner="none", heartbeat_interval=HEARTBEAT, idle_heartbeat_interval=30
    )
    async with ControlPlane(config) as cp, httpx.AsyncClient(base_url=cp.url, timeout=5) as http:
        h = await login(http)
        body = {"name": "f", "serverType": "relay", "serverSpec": "realtime1.nano"}
        assert (await http.post("/realtime/", json=body, headers=h)).status_code == 200
        await http.post("/realtime/f/room", json={"name": "doomed"}, headers=h)
        record = await cp.store.get_room("f", "doomed")
        assert record is not None
        agent = ("--control-url", cp.internal_url, "--namespace", "f", "--room", "doomed")
        async with relay_serve(
            tmp_path / "relay.log", record.encryption_key, *agent, *LIVENESS, secret=record.agent_secret
        ) as (pid, port):
            item = await ready_room(http, h, "f", "doomed")
            assert item["port"] == port
            members = [
                await rc.connect(
                    item["ipAddress"], port, item["encryptionKey"], f"m-{t}", transport=t, timeout=1
                )
                for t in ("udp", "ws")
            ]
            rt = cp.state.runtime[("f", "doomed")]
            await wait_for(lambda: rt.stats.get("members") == 2, timeout=10)
            assert rt.lost_after == pytest.approx(3 * HEARTBEAT)  # not the quiet room's 3 x 30 s
            for c in members:
                c.drain_events()
            os.kill(pid, signal.SIGKILL)
            ended = await asyncio.gather(*(until_ended(c) for c in members))
            await wait_for(lambda: ("f", "doomed") not in cp.state.runtime, timeout=10)
        assert (await http.get("/realtime/f/room/doomed", headers=h)).status_code == 404
    closed = [e for e in oplog(cp) if e["event"] == "room.closed"]
    assert [e["reason"] for e in closed] == ["lost"]
    for c, events in zip(members, ended, strict=True):
        assert [type(e) for e in events] == [rc.ConnectionLost, rc.Disconnected], (c.transport, events)
        assert c.closed
        await c.close()  # harmless once ended


async def test_a_relay_without_its_control_plane_keeps_serving(tmp_path: Path) -> None:
    """The control URL points at a closed port: the agent keeps trying to register, with
    backoff (a handful of attempts, not a busy loop), while members join and exchange every
    message; SIGTERM still ends the room with CLOSING and the process exits."""
    n = 80
    key = generate_room_key()
    nowhere = f"http://{HOST}:{free_port()}/internal"
    agent = ("--control-url", nowhere, "--namespace", "f", "--room", "orphan")
    log = tmp_path / "relay.log"
    async with relay_serve(log, key, *agent, *LIVENESS, secret="s") as (pid, port):
        a = await rc.connect(HOST, port, key, "a", transport="udp", timeout=5)
        b = await rc.connect(HOST, port, key, "b", transport="ws", timeout=5)
        for i in range(n):  # 2 s of play, across several registration attempts
            a.send(b"a%d" % i)
            b.send(b"b%d" % i)
            await asyncio.sleep(0.025)
        got: dict[rc.Client, list[bytes]] = {a: [], b: []}
        for me in (a, b):
            async with asyncio.timeout(10):
                while len(got[me]) < n:
                    event = await me.next_event()
                    assert not isinstance(event, rc.ConnectionLost | rc.Disconnected | None), event
                    if isinstance(event, rc.Received):
                        got[me].append(event.data)
        for me, prefix in ((a, b"b"), (b, b"a")):  # every one, once (loopback loses nothing)
            assert sorted(got[me]) == sorted(prefix + b"%d" % i for i in range(n))
        # logged at the 1st, 2nd, 4th, 8th, ... failure (JSON lines, each with its count)
        records = [json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]
        attempts = max(r.get("failures", 0) for r in records if "register failed" in r["message"])
        assert 2 <= attempts <= 30, attempts
        os.kill(pid, signal.SIGTERM)
        for c in (a, b):
            closing = await c.next_event_of(rc.ClosingEvent, 10)
            assert closing.reason == CloseReason.SHUTDOWN
        await wait_for(lambda: not pid_alive(pid), timeout=10)
