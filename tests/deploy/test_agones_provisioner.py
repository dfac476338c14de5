"""The control plane's Agones provisioner (`relay control --provisioner agones`) against a fake
Kubernetes API server (tests/deploy/fake_kube.py) and, for the whole path, the relay's real Agones
agent (relay/agent/agones.py) behind the fake SDK sidecar of tests/agent/test_agones.py. What
cannot run here is faked: the API server and the sidecar; the provisioner's Kubernetes client,
the control plane, the relay, its agent and the gs2 SDK are the real ones."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import pytest
from gs2 import core, realtime

import relay.client as rc
from loadtest.controlplane import free_port
from relay.agent import agones
from relay.agent.agones import LABEL_INCARNATION, AgonesSDK, run_agones
from relay.agent.launch import RelayLaunch
from relay.agent.wire import Registration
from relay.control.agones_provisioner import AgonesProvisioner, AllocationError, allocation_body
from relay.control.app import ControlPlane
from relay.control.provisioner import RelayRequest
from relay.protocol.constants import CloseReason
from relay.protocol.keys import generate_room_key
from relay.server.config import RelayConfig
from tests.agent.test_agones import FakeSidecar, sidecar_up
from tests.control.helpers import (
    create_namespace,
    gs2_client,
    login,
    make_config,
    threaded_control_plane,
    wait_for,
)
from tests.deploy.fake_kube import TOKEN, FakeGameServer, FakeKube
from tests.deploy.helpers import players_talk

NS = "gs2"  # the Kubernetes namespace of the fleet
CREATE_NS = (
    realtime.CreateNamespaceRequest()
    .with_name("game")
    .with_server_type("relay")
    .with_server_spec("realtime1.nano")
)


@pytest.fixture
async def kube() -> AsyncIterator[FakeKube]:
    server = FakeKube(NS)
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


def request(incarnation: str = "0123456789abcdef", room: str = "room1") -> RelayRequest:
    return RelayRequest(
        namespace="game",
        room=room,
        incarnation=incarnation,
        room_key=generate_room_key(),
        agent_secret="agent-secret",
        control_url="http://control.example:7700/internal",
        heartbeat_interval=2.0,
        idle_heartbeat_interval=30.0,
    )


async def started(kube: FakeKube, tmp_path: Path, **extra: Any) -> AgonesProvisioner:
    provisioner = AgonesProvisioner(NS, "gs2-relay", kube.kubeconfig(tmp_path), **extra)
    await provisioner.start()
    return provisioner


async def test_allocation_request_answer_and_delete(kube: FakeKube, tmp_path: Path) -> None:
    kube.add(FakeGameServer("other-fleet-1", 7001, fleet="other"))
    kube.add(FakeGameServer("gs2-relay-abcde", 7002))
    provisioner = await started(kube, tmp_path)
    try:
        wanted = request()
        assert await provisioner.provision(wanted) is None  # no local process, no pid
        sent = kube.allocations()[-1]
        assert sent["apiVersion"] == "allocation.agones.dev/v1" and sent["kind"] == "GameServerAllocation"
        assert sent["spec"]["selectors"] == [
            {"matchLabels": {"agones.dev/fleet": "gs2-relay"}, "gameServerState": "Ready"}
        ]
        assert sent["spec"]["metadata"]["labels"] == {LABEL_INCARNATION: wanted.incarnation}
        assert sent["spec"]["metadata"]["annotations"] == {
            agones.ANNOTATION_NAMESPACE: "game",
            agones.ANNOTATION_ROOM: "room1",
            agones.ANNOTATION_ROOM_KEY: wanted.room_key,
            agones.ANNOTATION_AGENT_SECRET: "agent-secret",
            agones.ANNOTATION_CONTROL_URL: "http://control.example:7700/internal",
            agones.ANNOTATION_INCARNATION: wanted.incarnation,
        }
        allocation = provisioner.allocation(wanted.incarnation)
        assert allocation is not None
        assert (allocation.game_server, allocation.address, allocation.port, allocation.node) == (
            "gs2-relay-abcde",
            "127.0.0.1",
            7002,
            "node-1",
        )
        gs = kube.gameservers["gs2-relay-abcde"]
        assert gs.state == "Allocated" and gs.annotations[agones.ANNOTATION_ROOM_KEY] == wanted.room_key
        assert kube.gameservers["other-fleet-1"].state == "Ready"  # the selector held
        assert provisioner.alive(wanted.incarnation)

        await provisioner.stop(wanted.incarnation)  # a lost relay: its GameServer is deleted
        assert "gs2-relay-abcde" not in kube.gameservers
        assert not provisioner.alive(wanted.incarnation)
        assert ("DELETE", f"/apis/agones.dev/v1/namespaces/{NS}/gameservers/gs2-relay-abcde") in [
            (m, p) for m, p, _ in kube.requests
        ]
        await provisioner.stop(wanted.incarnation)  # twice: nothing left to do, no error
    finally:
        await provisioner.close(stop_all=False)


def test_an_allocation_says_when_gs2_clients_are_off() -> None:
    """relay_gs2_clients: false travels with the room (the relay reads the annotation)."""
    wanted = request()
    on = allocation_body("f", wanted)["spec"]["metadata"]["annotations"]
    assert agones.ANNOTATION_GS2_CLIENTS not in on
    off = allocation_body("f", replace(wanted, gs2_clients=False))["spec"]["metadata"]["annotations"]
    assert off[agones.ANNOTATION_GS2_CLIENTS] == "false"


async def test_no_gameserver_available_is_retried_then_refused(kube: FakeKube, tmp_path: Path) -> None:
    provisioner = await started(kube, tmp_path, allocate_for=0.6)
    try:
        with pytest.raises(AllocationError, match="UnAllocated"):
            await provisioner.provision(request())
        assert len(kube.allocations()) >= 2  # retried while the fleet had nothing Ready

        # The FleetAutoscaler's buffer refills while a room waits: the retry gets it.
        waiting = asyncio.create_task(provisioner.provision(request("fedcba9876543210")))
        await wait_for(lambda: len(kube.allocations()) >= 5)
        kube.add(FakeGameServer("gs2-relay-late", 7003))
        await asyncio.wait_for(waiting, 5)
        assert provisioner.allocation("fedcba9876543210").game_server == "gs2-relay-late"
    finally:
        await provisioner.close(stop_all=True)
    assert kube.gameservers == {}  # stop_all ended every GameServer it held


async def test_refused_allocation_and_bad_token(kube: FakeKube, tmp_path: Path) -> None:
    """An allocation the API refuses (422) or a token it does not know (401) fails at once."""
    kube.add(FakeGameServer("gs2-relay-abcde", 7002))
    provisioner = await started(kube, tmp_path)
    try:
        with pytest.raises(AllocationError, match="HTTP 422"):
            await provisioner.provision(request(incarnation="not a label value!"))
        assert len(kube.allocations()) == 1 and kube.gameservers["gs2-relay-abcde"].state == "Ready"
    finally:
        await provisioner.close(stop_all=False)
    other = tmp_path / "other"
    other.mkdir()
    kubeconfig = kube.kubeconfig(other)
    kubeconfig.write_text(kubeconfig.read_text().replace(TOKEN, "a-token-it-does-not-know"))
    wrong = AgonesProvisioner(NS, "gs2-relay", kubeconfig)
    await wrong.start()  # the list fails too: every recorded room would be kept
    try:
        assert wrong.adopt("game", "a", "aaaaaaaaaaaaaaaa", None)
        with pytest.raises(AllocationError, match="HTTP 401"):
            await wrong.provision(request())
    finally:
        await wrong.close(stop_all=False)
    assert kube.gameservers["gs2-relay-abcde"].state == "Ready"


async def test_restart_adopts_listed_gameservers_and_sees_them_go(kube: FakeKube, tmp_path: Path) -> None:
    kube.add(FakeGameServer("gs-a", 7004, state="Allocated", labels={LABEL_INCARNATION: "aaaaaaaaaaaaaaaa"}))
    kube.add(FakeGameServer("gs-idle", 7005))
    provisioner = await started(kube, tmp_path)
    exits: list[tuple[str, str, str]] = []

    async def on_exit(ns: str, room: str, incarnation: str, code: int | None, reason: str | None) -> None:
        exits.append((ns, room, incarnation))

    provisioner.set_exit_callback(on_exit)
    try:
        assert provisioner.adopt("game", "a", "aaaaaaaaaaaaaaaa", None)
        assert not provisioner.adopt("game", "b", "bbbbbbbbbbbbbbbb", None)  # its GameServer is gone
        await provisioner.sync()
        assert exits == []
        del kube.gameservers["gs-a"]  # the relay ended, or its node died
        await provisioner.sync()
        assert exits == [("game", "a", "aaaaaaaaaaaaaaaa")]
        assert not provisioner.alive("aaaaaaaaaaaaaaaa")
    finally:
        await provisioner.close(stop_all=False)


@contextlib.asynccontextmanager
async def agones_relay(
    kube: FakeKube, name: str
) -> AsyncIterator[tuple[FakeSidecar, asyncio.Task[CloseReason]]]:
    """A relay pod: the real `relay serve` Agones mode against its own fake sidecar, its GameServer
    in the fake API server. Host port = container port, so clients reach getRoom's address."""
    port = free_port()
    async with sidecar_up() as sidecar:
        sidecar.gameserver["status"]["ports"] = [{"name": "default", "port": port}]
        sidecar.meta["name"] = name
        kube.add(FakeGameServer(name, port, sidecar=sidecar))
        sdk = AgonesSDK(sidecar.port, retry_for=5)
        base = RelayLaunch(
            RelayConfig(host="127.0.0.1", port=port), heartbeat_interval=0.2, idle_heartbeat_interval=0.4
        )
        task = asyncio.create_task(run_agones(base, sdk, health_interval=0.1, poll_interval=0.5))
        try:
            await wait_for(lambda: sidecar.state == "Ready")
            yield sidecar, task
        finally:
            if not task.done():
                task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            await sdk.aclose()


@contextlib.asynccontextmanager
async def control_plane_thread(config: Any) -> AsyncIterator[Any]:
    """A control plane on its own thread and loop, started and stopped from a worker thread: this
    loop keeps serving the fake API server its Kubernetes calls meanwhile."""
    context = threaded_control_plane(config)
    cp = await asyncio.to_thread(context.__enter__)
    try:
        yield cp
    finally:
        await asyncio.to_thread(context.__exit__, None, None, None)


def agones_config(kube: FakeKube, tmp_path: Path, **extra: Any) -> Any:
    """A control plane that allocates from the fake API server's fleet."""
    kubeconfig = kube.kubeconfig(tmp_path)
    return make_config(
        tmp_path, provisioner="agones", agones_namespace=NS, agones_kubeconfig=kubeconfig, **extra
    )


def _sdk_calls(url: str, calls: list[tuple[str, Any]]) -> list[Any]:
    """Runs gs2 SDK calls in order (synchronous: called in a thread)."""
    session, client = gs2_client(url)
    try:
        return [getattr(client, method)(req) for method, req in calls]
    finally:
        session.disconnect()


async def test_want_room_allocates_registers_and_delete_drains(kube: FakeKube, tmp_path: Path) -> None:
    """wantRoom -> GameServerAllocation -> the relay's Agones agent registers -> getRoom shows the
    allocation's address -> clients play -> deleteRoom: CLOSING "deleted", the GameServer goes."""
    config = agones_config(kube, tmp_path, heartbeat_interval=0.2, idle_heartbeat_interval=0.4)
    async with (
        control_plane_thread(config) as cp,
        agones_relay(kube, "gs2-relay-one") as (sidecar, relay_task),
    ):
        want = realtime.WantRoomRequest().with_namespace_name("game").with_name("room1")
        await asyncio.to_thread(_sdk_calls, cp.url, [("create_namespace", CREATE_NS), ("want_room", want)])
        get = realtime.GetRoomRequest().with_namespace_name("game").with_room_name("room1")

        async def address() -> realtime.Room | None:
            (got,) = await asyncio.to_thread(_sdk_calls, cp.url, [("get_room", get)])
            return got.item if got.item.ip_address else None

        room = await wait_for(address, timeout=10)
        allocation = cp.provisioner.allocation(kube.gameservers["gs2-relay-one"].labels[LABEL_INCARNATION])
        assert (room.ip_address, room.port) == (allocation.address, allocation.port)
        assert sidecar.meta["annotations"][agones.ANNOTATION_ROOM_KEY] == room.encryption_key

        a, b = await players_talk(room.ip_address, room.port, room.encryption_key)

        delete = realtime.DeleteRoomRequest().with_namespace_name("game").with_room_name("room1")
        await asyncio.to_thread(_sdk_calls, cp.url, [("delete_room", delete)])
        assert (await a.next_event_of(rc.ClosingEvent, 5)).reason == CloseReason.DELETED
        assert await asyncio.wait_for(relay_task, 5) == CloseReason.DELETED
        assert sidecar.meta["annotations"][agones.ANNOTATION_DELETED] == "true"
        assert ("POST", "/shutdown", {}) in sidecar.calls
        await wait_for(lambda: "gs2-relay-one" not in kube.gameservers)
        await a.close()
        await b.close()
        with pytest.raises(core.NotFoundException):
            await asyncio.to_thread(_sdk_calls, cp.url, [("get_room", get)])


async def test_empty_fleet_fails_the_room(kube: FakeKube, tmp_path: Path) -> None:
    config = agones_config(kube, tmp_path, agones_allocate_for=0.5)
    async with control_plane_thread(config) as cp:
        want = realtime.WantRoomRequest().with_namespace_name("game").with_name("room1")
        await asyncio.to_thread(_sdk_calls, cp.url, [("create_namespace", CREATE_NS), ("want_room", want)])
        get = realtime.GetRoomRequest().with_namespace_name("game").with_room_name("room1")

        async def gone() -> bool:
            try:
                await asyncio.to_thread(_sdk_calls, cp.url, [("get_room", get)])
            except core.NotFoundException:
                return True
            return False

        await wait_for(gone, timeout=10)
        async with httpx.AsyncClient() as http:
            metrics = (await http.get(cp.url + "/metrics")).text
        assert 'relay_control_rooms_closed_total{reason="provision_failed"} 1.0' in metrics
        assert len(kube.allocations()) >= 2


async def test_a_lost_relay_ends_its_gameserver(kube: FakeKube, tmp_path: Path) -> None:
    """A relay that registered and went silent is lost: the reaper has its GameServer deleted."""
    kube.add(FakeGameServer("gs2-relay-mute", 7006))
    config = agones_config(kube, tmp_path, heartbeat_interval=0.2, idle_heartbeat_interval=0.2)
    async with ControlPlane(config) as cp, httpx.AsyncClient(base_url=cp.url, timeout=5) as http:
        h = await login(http)
        await create_namespace(http, h, "game")
        assert (await http.post("/realtime/game/room", json={"name": "mute"}, headers=h)).status_code == 200
        await wait_for(lambda: kube.gameservers["gs2-relay-mute"].state == "Allocated")
        notes = kube.gameservers["gs2-relay-mute"].annotations
        registration = Registration("127.0.0.1", 7006, None, None, 0.2, notes[agones.ANNOTATION_INCARNATION])
        r = await http.post(
            "/internal/rooms/game/mute/register",
            json=registration.to_json(),
            headers={"Authorization": "Bearer " + notes[agones.ANNOTATION_AGENT_SECRET]},
        )
        assert r.status_code == 200, r.text
        await wait_for(lambda: "gs2-relay-mute" not in kube.gameservers)  # no heartbeat came

        async def room_gone() -> bool:  # the reaper deletes the GameServer first, then the record
            return (await http.get("/realtime/game/room/mute", headers=h)).status_code == 404

        await wait_for(room_gone, timeout=5)
        metrics = (await http.get("/metrics")).text
        assert 'relay_control_rooms_closed_total{reason="lost"} 1.0' in metrics
