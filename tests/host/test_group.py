"""A group process's rooms, in this process (relay/host/group.py's RoomGroup, driven by the
requests its spawner sends): each room a real relay on loopback; what it refuses; a killed room
goes alone and silently; a room that fails to start leaves nothing behind; over the group's CPU
budget only the rooms over their share shed."""

from __future__ import annotations

import asyncio
import logging
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import uvloop

import relay.client as rc
from loadtest.controlplane import free_port
from relay.agent.tiers import NANO, group_tier
from relay.control.app import ControlPlane
from relay.host.group import RoomGroup, group_argv, parse_group_argv
from relay.logs import RoutedStream
from relay.protocol.constants import CloseReason
from relay.protocol.keys import generate_room_key
from relay.server import pacing
from tests.control.helpers import make_config, wait_for
from tests.control.test_agent import make_room


def assign(incarnation: str, key: str, **extra: str) -> dict[str, Any]:
    flags = [f for k, v in {"port": "0", **extra}.items() for f in (f"--{k.replace('_', '-')}", v)]
    argv = ["python", "-m", "relay.cli", "serve", "--incarnation", incarnation, *flags]
    return {"op": "assign", "argv": argv, "env": {"RELAY_ROOM_KEY": key}, "log_path": None}


async def stopped(group: RoomGroup) -> None:
    for room in list(group.rooms.values()):
        room.task.cancel()
    await asyncio.gather(*(r.task for r in list(group.rooms.values())), return_exceptions=True)


@pytest.fixture
def routed_logs() -> Iterator[None]:
    """The group process's logging (relay.logs.configure with a RoutedStream), for this test."""
    handler = logging.StreamHandler(RoutedStream(sys.stderr))
    root = logging.getLogger()
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    yield
    root.removeHandler(handler)
    root.setLevel(level)


async def test_rooms_are_relays_of_their_own_and_refusals_change_nothing(
    tmp_path: Path, routed_logs: None
) -> None:
    group = RoomGroup(2, None, "soft")
    k1, k2 = generate_room_key(), generate_room_key()
    try:
        log = tmp_path / "ns" / "one.log"
        first = await group._handle({**assign("one", k1), "log_path": str(log)})
        assert first is not None and first["op"] == "assigned"
        second = await group._handle(assign("two", k2))
        assert second is not None and second["op"] == "assigned" and second["port"] != first["port"]
        assert "relay listening" in log.read_text()  # the room's own records in its own log
        for bad, why in (
            (assign("three", generate_room_key()), "full"),
            (assign("one", k1), "already served"),
            ({"op": "assign", "argv": ["ls"], "env": {}}, "serve"),
            ({"op": "assign", "argv": ["serve"], "env": {"RELAY_ROOM_KEY": k1}}, "incarnation"),
            ({"op": "assign", "argv": ["serve", "--incarnation", "i"], "env": {}}, "room-key"),
            ({"op": "assign", "argv": ["serve", "--port", "x"], "env": {"RELAY_ROOM_KEY": k1}}, "port"),
            ({"op": "launch"}, "unknown op"),
        ):
            answer = await group._handle(bad)
            assert answer is not None and answer["op"] == "refused" and why in answer["error"], (bad, answer)
        listed = await group._handle({"op": "rooms"})
        assert listed is not None and {r["incarnation"] for r in listed["rooms"]} == {"one", "two"}

        a = await rc.connect("127.0.0.1", first["port"], k1, "a", transport="udp")
        b = await rc.connect("127.0.0.1", first["port"], k1, "b", transport="ws")
        c = await rc.connect("127.0.0.1", second["port"], k2, "c", transport="ws")
        d = await rc.connect("127.0.0.1", second["port"], k2, "d", transport="udp")
        with pytest.raises((rc.ClientError, OSError, TimeoutError)):  # the other room's key is not this one's
            await rc.connect("127.0.0.1", first["port"], k2, "x", transport="ws", timeout=1.0)
        a.send(b"one")
        c.send(b"two")
        assert (await b.next_event_of(rc.Received, timeout=5)).data == b"one"
        assert (await d.next_event_of(rc.Received, timeout=5)).data == b"two"

        # "kill": the room's sockets close at once; its neighbour plays on
        await group._handle({"op": "stop", "incarnation": "one", "reason": "kill"})
        await asyncio.wait_for(asyncio.shield(asyncio.ensure_future(_gone(group, "one"))), 5)
        c.send(b"after")
        assert (await d.next_event_of(rc.Received, timeout=5)).data == b"after"
        # "deleted": CLOSING deleted to its members
        await group._handle({"op": "stop", "incarnation": "two", "reason": "deleted"})
        closing = await c.next_event_of(rc.ClosingEvent, timeout=5)
        assert closing.reason == CloseReason.DELETED
        await asyncio.wait_for(_gone(group, "two"), 5)
        for client in (a, b, c, d):
            await client.close()
    finally:
        await stopped(group)


async def _gone(group: RoomGroup, incarnation: str) -> None:
    while incarnation in group.rooms:
        await asyncio.sleep(0.01)


async def test_a_killed_room_stops_without_a_word(tmp_path: Path) -> None:
    """A kill is the per-room SIGKILL: the room's heartbeats stop and it sends no `closed` report
    (which the control plane would record as "shutdown"); the control plane learns of the end from
    the spawner, as of a killed process's exit. Until then the room's record stays."""
    config = make_config(tmp_path, provisioner="none", heartbeat_interval=10.0, idle_heartbeat_interval=10.0)
    async with ControlPlane(config) as cp:
        secret = await make_room(cp, "k", "r")
        record = await cp.store.get_room("k", "r")
        assert record is not None
        agent = {"control_url": cp.internal_url, "namespace": "k", "room": "r"}
        beats = {"heartbeat_interval": "0.1", "idle_heartbeat_interval": "0.1"}
        request = assign(record.incarnation, generate_room_key(), **agent, **beats)
        request["env"]["RELAY_AGENT_SECRET"] = secret
        group = RoomGroup(1, None, "soft")
        try:
            answer = await group._handle(request)
            assert answer is not None and answer["op"] == "assigned", answer
            rt = cp.state.runtime[("k", "r")]
            registered_at = await wait_for(lambda: rt.state == "ready" and rt.last_heartbeat)
            await wait_for(lambda: rt.last_heartbeat > registered_at)  # heartbeating
            await group._handle({"op": "stop", "incarnation": record.incarnation, "reason": "kill"})
            await asyncio.wait_for(_gone(group, record.incarnation), 5)
            await asyncio.sleep(0.3)  # a heartbeat on its way when the room was killed lands
            last = rt.last_heartbeat
            await asyncio.sleep(1.0)  # a report takes milliseconds on loopback
            after = await cp.store.get_room("k", "r")
            assert after is not None and after.incarnation == record.incarnation  # no `closed` came
            assert rt.last_heartbeat == last  # nor any heartbeat
        finally:
            await stopped(group)


async def test_a_room_that_fails_after_its_relay_started_leaves_nothing_behind() -> None:
    """Its agent cannot start (a control URL no HTTP client takes) once its relay listens: the
    room is refused, and its port and its seat are free again."""
    group = RoomGroup(1, None, "soft")
    port = free_port()
    try:
        agent = {"control_url": "ftp://control/internal", "namespace": "n", "room": "r"}
        answer = await group._handle(assign("bad", generate_room_key(), port=str(port), **agent))
        assert answer is not None and answer["op"] == "refused" and "http" in answer["error"], answer
        assert not group.rooms
        answer = await group._handle(assign("good", generate_room_key(), port=str(port)))
        assert answer is not None and answer["op"] == "assigned" and answer["port"] == port, answer
    finally:
        await stopped(group)


async def test_over_the_cpu_budget_only_the_rooms_over_their_share_shed() -> None:
    group = RoomGroup(3, group_tier(NANO, 3), "soft")
    keys = [generate_room_key() for _ in range(3)]
    try:
        ports = []
        for n, key in enumerate(keys):
            answer = await group._handle(assign(f"r{n}", key))
            assert answer is not None
            ports.append(answer["port"])
        clients = [
            await rc.connect("127.0.0.1", port, key, who, transport="ws")
            for port, key in zip(ports, keys, strict=True)
            for who in ("a", "b")
        ]
        group.sample()
        for _ in range(50):  # room r0 is busy; r1 a little; r2 quiet
            clients[0].send(b"x")
        clients[2].send(b"y")
        await clients[1].next_event_of(rc.Received, timeout=5)
        await clients[3].next_event_of(rc.Received, timeout=5)
        await asyncio.sleep(0.2)
        group.sample()
        group.shed_optional = True  # what the guard does at 90% of the group's budget
        shed = [group.rooms[f"r{n}"].served.relay.shed_optional for n in range(3)]  # type: ignore[union-attr]
        assert shed == [True, False, False]
        group.shed_optional = False
        shed = [group.rooms[f"r{n}"].served.relay.shed_optional for n in range(3)]  # type: ignore[union-attr]
        assert shed == [False, False, False]
        group.accepting_joins = False  # memory near the group's cap: no room takes joins
        assert not any(r.served.relay.accepting_joins for r in group.rooms.values())  # type: ignore[union-attr]
        for client in clients:
            await client.close()
    finally:
        await stopped(group)


def test_a_room_that_starts_after_the_guard_gave_the_budget_paces_within_it() -> None:
    """The guard gives the group its CPU budget when it changes, not at every look
    (relay/agent/caps.py): a room the group starts later gets it from the group. On uvloop, as
    a group process runs: the relay paces on no other loop."""

    async def budget_of_a_later_room() -> float:
        group = RoomGroup(2, group_tier(NANO, 2), "soft")
        group.pace_within(0.01)  # the guard's look, before any room
        try:
            answer = await group._handle(assign("r0", generate_room_key(), cpu_budget="0.5"))
            assert answer is not None
            pacer = pacing.for_loop(asyncio.get_running_loop())
            assert pacer is not None
            return pacer.pacer.budget
        finally:
            await stopped(group)

    assert uvloop.run(budget_of_a_later_room()) == 0.01


def test_group_command_lines() -> None:
    assert parse_group_argv(["--group", "/run/g.sock", "--group-rooms", "8"]) == ("/run/g.sock", 8)
    for bad in (
        ["--group", "/run/g.sock"],
        ["--group", "/run/g.sock", "--group-rooms", "0"],
        ["--group", "/run/g.sock", "--group-rooms", "many"],
        ["--room-key", "k", "--group-rooms", "2", "x"],
    ):
        assert parse_group_argv(bad) is None
    tier = group_tier(NANO, 4)
    assert (tier.cpu, tier.memory_bytes, tier.nofile, tier.pids) == (
        0.5,
        4 * NANO.memory_bytes,
        4096,
        NANO.pids,
    )


@pytest.mark.slow
async def test_a_group_capped_by_a_cgroup_limits_its_open_files(tmp_path: Path) -> None:
    """No cgroup counts open files, so a group sets RLIMIT_NOFILE to its rooms' tier times N in
    every caps mode; in cgroup mode it kept the limit it inherited (review finding)."""
    from tests.agent.test_own_cgroup import open_files_limit

    tier = group_tier(NANO, 2)
    hard = open_files_limit(os.getpid())[1]
    if hard <= tier.nofile:
        pytest.skip(f"this process's hard open-files limit ({hard}) is already at or under {tier.nofile}")
    socket_path = tmp_path / "g.sock"
    env = {**os.environ, "RELAY_TIER": NANO.name, "RELAY_CAPS": "cgroup"}
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "relay.cli", "serve", *group_argv(str(socket_path), 2), env=env
    )
    try:
        await wait_for(socket_path.exists, timeout=30)
        assert open_files_limit(process.pid) == (tier.nofile, tier.nofile)
    finally:
        process.kill()
        await process.wait()
