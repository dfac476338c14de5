"""The agent core against the real control plane, with an in-process stand-in relay object."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from relay.agent.agent import Agent, detect_address, reason_text
from relay.agent.config import AgentConfig
from relay.agent.control_client import backoff
from relay.agent.wire import Closed, Heartbeat, HeartbeatAnswer, Registration, WireError
from relay.control.app import ControlPlane
from relay.protocol.constants import CloseReason
from relay.server.app import RelayStats
from tests.control.helpers import CLIENT_ID, CLIENT_SECRET, make_config, wait_for


class FakeRelay:
    """The relay interface the agent uses (host, port, admin_port, stats, close, wait_closed)."""

    def __init__(self) -> None:
        self.host = "127.0.0.1"
        self.port = 40001
        self.admin_port = 40002
        self.messages_in = 0
        self.members = 2
        self.closed: asyncio.Future[CloseReason] = asyncio.get_running_loop().create_future()
        self.close_calls: list[CloseReason] = []
        self.session_listeners: list[Callable[[], None]] = []

    def stats(self) -> RelayStats:
        return RelayStats(self.members, 0, self.messages_in, 0, 0, 0, 0.0, 0.0)

    def add_session_listener(self, callback: Callable[[], None]) -> None:
        self.session_listeners.append(callback)

    async def close(self, reason: CloseReason, text: str = "") -> None:
        self.close_calls.append(reason)
        if not self.closed.done():
            self.closed.set_result(reason)

    async def wait_closed(self) -> CloseReason:
        return await asyncio.shield(self.closed)


async def make_room(cp: ControlPlane, ns: str, room: str) -> str:
    """A room record whose relay we play ourselves (the plane runs the no-op provisioner)."""
    async with httpx.AsyncClient(base_url=cp.url, timeout=5) as http:
        r = await http.post(
            "/identifier/projectToken/login", json={"client_id": CLIENT_ID, "client_secret": CLIENT_SECRET}
        )
        h = {"Authorization": "Bearer " + r.json()["access_token"]}
        await http.post(
            "/realtime/", json={"name": ns, "serverType": "relay", "serverSpec": "realtime1.nano"}, headers=h
        )
        await http.post(f"/realtime/{ns}/room", json={"name": room}, headers=h)
    return (await cp.store.get_room(ns, room)).agent_secret


def agent_config(cp: ControlPlane, ns: str, room: str, secret: str, **extra: Any) -> AgentConfig:
    return AgentConfig(
        control_url=cp.internal_url,
        namespace=ns,
        room=room,
        agent_secret=secret,
        advertise_host=None,
        heartbeat_interval=0.1,
        **extra,
    )


async def test_register_heartbeat_and_idle_close(tmp_path: Path) -> None:
    async with ControlPlane(make_config(tmp_path, provisioner="none")) as cp:
        secret = await make_room(cp, "ag", "r")
        relay = FakeRelay()
        agent = Agent(relay, agent_config(cp, "ag", "r", secret))
        await agent.start()
        await asyncio.wait_for(agent.registered.wait(), 5)
        room = await cp.store.get_room("ag", "r")
        assert (room.state, room.ip_address, room.port, room.admin_port) == (
            "ready",
            "127.0.0.1",
            40001,
            40002,
        )
        relay.messages_in = 1000
        rt = cp.state.runtime[("ag", "r")]
        await wait_for(lambda: rt.stats.get("messagesPerSecond", 0) > 0)
        assert rt.stats["members"] == 2
        # The room idles out: the agent reports it and the record goes.
        await relay.close(CloseReason.IDLE)
        await wait_for(lambda: ("ag", "r") not in cp.state.runtime)
        await agent.stop(CloseReason.IDLE)
        assert agent.closed_reason == "idle"
        assert closed_reports(cp) == 1
        assert await cp.store.get_room("ag", "r") is None
        lines = [json.loads(x) for x in cp.config.operation_log_path.read_text().splitlines()]
        assert lines[-1]["event"] == "room.closed" and lines[-1]["reason"] == "idle"


async def test_delete_drains_relay(tmp_path: Path) -> None:
    async with ControlPlane(make_config(tmp_path, provisioner="none")) as cp:
        secret = await make_room(cp, "dr", "r")
        relay = FakeRelay()
        agent = Agent(relay, agent_config(cp, "dr", "r", secret))
        await agent.start()
        await asyncio.wait_for(agent.registered.wait(), 5)
        room = await cp.store.get_room("dr", "r")
        await cp.rooms.delete_room("dr", "r")
        assert await asyncio.wait_for(relay.wait_closed(), 5) == CloseReason.DELETED
        assert agent.deleted and relay.close_calls == [CloseReason.DELETED]
        await agent.stop(CloseReason.DELETED)
        await agent.stop(CloseReason.SHUTDOWN)  # a later stop reports no other end
        assert room is not None and agent.closed_reason == "deleted"
        # the control plane ended the room itself: a report would find no room, and the relay
        # would wait for its answer, behind the control plane's work on the deletes, to exit
        assert closed_reports(cp) == 0


def closed_reports(cp: ControlPlane) -> int:
    """`closed` reports the control plane answered, whatever the answer."""
    return sum(
        int(sample.value)
        for metric in cp.state.metrics.registry.collect()
        for sample in metric.samples
        if sample.name == "relay_control_api_requests_total" and sample.labels["method"] == "internal.closed"
    )


async def test_registration_retries_until_control_plane_is_up(tmp_path: Path) -> None:
    """A relay started while its control plane is away (a restart) registers soon after it is
    back, however long it was away: the retries' backoff is capped at register_retry_cap (2 s;
    at the 10 s it was, a relay that had failed for 4 s then waited up to 6.4 s more, its room
    unjoinable all that while)."""
    config = make_config(tmp_path, provisioner="none")
    async with ControlPlane(config) as first:
        secret = await make_room(first, "late", "r")
        port = first.port
    cp = ControlPlane(config.replace(port=port))  # same data, bound, not answering yet
    relay = FakeRelay()
    agent = Agent(relay, agent_config(cp, "late", "r", secret))
    assert agent.config.register_retry_cap == 2.0
    await agent.start()
    await asyncio.sleep(4.0)
    assert not agent.registered.is_set()
    await cp.start()
    try:
        await asyncio.wait_for(agent.registered.wait(), agent.config.register_retry_cap + 1.0)
        assert (await cp.store.get_room("late", "r")).state == "ready"
        await relay.close(CloseReason.SHUTDOWN)
        await agent.stop(CloseReason.SHUTDOWN)
        assert await cp.store.get_room("late", "r") is None
    finally:
        await cp.stop()


async def test_wrong_secret_is_refused_as_if_the_room_did_not_exist(tmp_path: Path) -> None:
    """Issue 19, defect 7: a caller without the room's secret cannot tell which rooms exist."""
    async with ControlPlane(make_config(tmp_path, provisioner="none")) as cp, httpx.AsyncClient() as http:
        await make_room(cp, "sec", "r")
        body = {"ipAddress": "127.0.0.1", "port": 1, "adminPort": None, "pid": 1}
        answers = set()
        for room, headers in (
            ("r", {"Authorization": "Bearer wrong"}),
            ("r", {}),
            ("missing", {"Authorization": "Bearer wrong"}),
            ("missing", {}),
        ):
            for kind, sent in (("register", body), ("heartbeat", {}), ("closed", {"reason": "idle"})):
                r = await http.post(f"{cp.internal_url}/rooms/sec/{room}/{kind}", json=sent, headers=headers)
                answers.add((r.status_code, r.text))
        assert len(answers) == 1 and next(iter(answers))[0] == 404, answers
        assert (await cp.store.get_room("sec", "r")).state == "pending"


GOOD_REGISTRATION = {"ipAddress": "10.0.0.5", "port": 7800, "adminPort": 7801, "pid": 42}


@pytest.mark.parametrize(
    ("kind", "body", "field"),
    [
        (Registration, [], "body"),
        (Registration, {**GOOD_REGISTRATION, "ipAddress": ""}, "ipAddress"),
        (Registration, {**GOOD_REGISTRATION, "port": 0}, "port"),
        (Registration, {**GOOD_REGISTRATION, "port": True}, "port"),  # a bool is no port
        (Registration, {**GOOD_REGISTRATION, "adminPort": 70000}, "adminPort"),
        (Registration, {**GOOD_REGISTRATION, "pid": -1}, "pid"),
        (Registration, {**GOOD_REGISTRATION, "nextHeartbeatSeconds": 0}, "nextHeartbeatSeconds"),
        (Registration, {**GOOD_REGISTRATION, "incarnation": "é"}, "incarnation"),
        (Heartbeat, {"members": -1}, "members"),
        (Heartbeat, {"members": False}, "members"),
        (Heartbeat, {"messagesPerSecond": -0.5}, "messagesPerSecond"),
        (Heartbeat, {"cpuSeconds": "1"}, "cpuSeconds"),
        (Heartbeat, {"rssBytes": 1.5}, "rssBytes"),
        (Heartbeat, {"nextHeartbeatSeconds": 1e9}, "nextHeartbeatSeconds"),
        (Heartbeat, {"incarnation": "x" * 65}, "incarnation"),
        (Closed, {}, "reason"),
        (Closed, {"reason": "r" * 65}, "reason"),
    ],
)
def test_agent_bodies_name_the_first_field_they_cannot_carry(kind: Any, body: Any, field: str) -> None:
    """The control plane answers such a body with a 400 naming the field (relay/agent/wire.py)."""
    with pytest.raises(WireError) as refused:
        kind.from_json(body)
    assert refused.value.field == field


def test_agent_bodies_round_trip() -> None:
    registration = Registration.from_json({**GOOD_REGISTRATION, "incarnation": "i-1", "unknown": 1})
    assert Registration.from_json(registration.to_json()) == registration
    beat = Heartbeat.from_json({"members": 3, "messagesPerSecond": 2, "cpuSeconds": 0.5, "rssBytes": 9})
    assert beat.messages_per_second == 2.0 and Heartbeat.from_json(beat.to_json()) == beat
    assert Closed.from_json({"reason": "idle"}) == Closed("idle")
    assert (
        HeartbeatAnswer.from_json(None) == HeartbeatAnswer()
        and HeartbeatAnswer.from_json({"deleted": 1}).deleted
    )


def test_helpers() -> None:
    assert reason_text(CloseReason.LIFETIME) == "lifetime" and reason_text("cap_exceeded") == "cap_exceeded"
    assert detect_address("10.1.2.3") == "10.1.2.3"
    assert not detect_address("0.0.0.0").startswith("0.")
    delays = [backoff(a, base=0.1, cap=1.0) for a in range(20)]
    assert all(0.01 <= d <= 1.0 for d in delays)


async def test_http_connections_have_nodelay(tmp_path: Path) -> None:
    """Every accepted API connection has Nagle off (asyncio enables TCP_NODELAY only when the
    listener is explicitly TCP): without it each keep-alive response to a GS2 SDK or an agent
    waited ~40 ms for a delayed ACK. Read on the server's side of a live connection."""
    import socket

    async with (
        ControlPlane(make_config(tmp_path, provisioner="none")) as cp,
        httpx.AsyncClient(base_url=cp.url) as http,
    ):
        assert (await http.get("/healthz")).status_code == 200  # the connection stays open
        assert cp._server is not None
        connections = list(cp._server.server_state.connections)
        assert connections
        for conn in connections:
            sock = conn.transport.get_extra_info("socket")  # type: ignore[attr-defined]
            assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)


async def test_quiet_room_heartbeats_at_the_idle_interval_until_a_session_begins(tmp_path: Path) -> None:
    """A room nobody is in promises (and keeps) the long gap; the control plane widens its lost
    window to match; a session beginning brings the next heartbeat forward with the short gap."""
    config = make_config(tmp_path, provisioner="none", heartbeat_interval=0.1, idle_heartbeat_interval=30.0)
    async with ControlPlane(config) as cp:
        secret = await make_room(cp, "qt", "r")
        relay = FakeRelay()
        relay.members = 0
        agent = Agent(relay, agent_config(cp, "qt", "r", secret, idle_heartbeat_interval=30.0))
        await agent.start()
        await asyncio.wait_for(agent.registered.wait(), 5)
        rt = cp.state.runtime[("qt", "r")]
        assert rt.lost_after == 30.0 * 3
        await asyncio.sleep(0.6)  # six short intervals: a quiet room sends nothing
        assert agent.heartbeats_sent == 0
        cp.state.runtime[("qt", "r")].last_heartbeat -= 10  # silent 10 s: within the quiet window
        await cp.agents.reap_once()
        assert ("qt", "r") in cp.state.runtime
        relay.members = 1
        for listener in relay.session_listeners:
            listener()
        await wait_for(lambda: agent.heartbeats_sent >= 1, timeout=2)
        await wait_for(lambda: rt.lost_after == pytest.approx(0.1 * 3), timeout=2)
        await wait_for(lambda: agent.heartbeats_sent >= 4, timeout=2)  # every 0.1 s now
        relay.members = 0  # everyone left: the next heartbeat promises the long gap again
        await wait_for(lambda: rt.lost_after == 30.0 * 3, timeout=2)
        await asyncio.sleep(0.2)  # the agent counts that heartbeat once its answer is back
        sent = agent.heartbeats_sent
        await asyncio.sleep(0.5)
        assert agent.heartbeats_sent == sent
        await relay.close(CloseReason.SHUTDOWN)
        await agent.stop(CloseReason.SHUTDOWN)


async def test_heartbeat_gap_is_checked_and_bounded(tmp_path: Path) -> None:
    config = make_config(tmp_path, provisioner="none", heartbeat_interval=1.0, idle_heartbeat_interval=20.0)
    async with ControlPlane(config) as cp, httpx.AsyncClient() as http:
        secret = await make_room(cp, "gap", "r")
        headers = {"Authorization": f"Bearer {secret}"}
        base = f"{cp.internal_url}/rooms/gap/r"
        body = {"ipAddress": "127.0.0.1", "port": 1, "adminPort": None, "pid": 1}
        # no promise (an older agent): the short interval
        assert (await http.post(f"{base}/register", json=body, headers=headers)).status_code == 200
        rt = cp.state.runtime[("gap", "r")]
        assert rt.lost_after == 3.0
        for sent, window in ((5, 15.0), (1e5, 60.0), (0.01, 3.0)):  # held between the two intervals
            r = await http.post(f"{base}/heartbeat", json={"nextHeartbeatSeconds": sent}, headers=headers)
            assert r.status_code == 200 and rt.lost_after == window, sent
        for bad in ("5", -1, 0, True, 1e9, [1]):
            r = await http.post(f"{base}/heartbeat", json={"nextHeartbeatSeconds": bad}, headers=headers)
            assert r.status_code == 400, bad
            assert json.loads(r.json()["message"])[0]["component"] == "nextHeartbeatSeconds"
            assert rt.lost_after == 3.0  # unchanged
        # checked against the record's secret without a store read; other rooms are the store's word
        beat = {"nextHeartbeatSeconds": 1}
        r = await http.post(f"{base}/heartbeat", json=beat, headers={"Authorization": "Bearer nope"})
        assert r.status_code == 404
        r = await http.post(f"{cp.internal_url}/rooms/gap/none/heartbeat", json=beat, headers=headers)
        assert r.status_code == 404


async def test_a_session_begun_during_a_heartbeat_still_shortens_the_pause(tmp_path: Path) -> None:
    """The listener fired while the last heartbeat was on its way (the room was quiet when its
    gap was chosen); the pause that follows must not sleep the quiet room's 30 s."""
    cp = ControlPlane(make_config(tmp_path, provisioner="none"))  # never started: not needed here
    relay = FakeRelay()
    relay.members = 1
    agent = Agent(relay, agent_config(cp, "p", "r", "s", idle_heartbeat_interval=30.0))
    for listener in relay.session_listeners:
        listener()
    t0 = asyncio.get_running_loop().time()
    await asyncio.wait_for(agent._pause(30.0), 2)
    assert asyncio.get_running_loop().time() - t0 < 1.0
    relay.members = 0  # quiet, and nobody began since: the long pause holds
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(agent._pause(30.0), 0.5)
