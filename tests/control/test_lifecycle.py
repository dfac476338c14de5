"""Room life with real relay processes (stand-ins running the real Agent) and the real control plane."""

from __future__ import annotations

import asyncio
import json
import os
import signal
from pathlib import Path

import httpx
import pytest

from relay.control.app import ControlPlane
from relay.control.errors import ApiError
from relay.host.spawner import pid_alive
from tests.control.helpers import create_namespace, login, make_config, oplog, ready_room, wait_for

pytestmark = pytest.mark.slow


async def test_register_heartbeat_delete_drains(cp: ControlPlane) -> None:
    async with httpx.AsyncClient(base_url=cp.url, timeout=5) as http:
        h = await login(http)
        ns = {
            "name": "life",
            "serverType": "relay",
            "serverSpec": "realtime1.nano",
            "logSetting": {"loggingNamespaceId": "grn:gs2:ap-northeast-1:o:log:game"},
        }
        assert (await http.post("/realtime/", json=ns, headers=h)).status_code == 200
        want = (await http.post("/realtime/life/room", json={"name": "r1"}, headers=h)).json()["item"]
        assert want["ipAddress"] is None
        item = await ready_room(http, h, "life", "r1")
        assert item["ipAddress"] == "127.0.0.1" and 0 < item["port"] < 65536
        assert item["encryptionKey"] and item["revision"] == 1
        pid = (await cp.store.get_room("life", "r1")).pid
        assert pid and pid_alive(pid)
        # Heartbeats arrive with live figures.
        rt = cp.state.runtime[("life", "r1")]
        await wait_for(lambda: rt.stats.get("rssBytes", 0) > 0)
        assert rt.stats["members"] == 0 and rt.stats["cpuSeconds"] > 0
        # /metrics shows the ready room and the provisioning time.
        metrics = (await http.get("/metrics")).text
        assert 'relay_control_rooms{state="ready"} 1.0' in metrics
        assert "relay_control_provision_seconds_count 1.0" in metrics
        assert 'method="wantRoom",status="200"' in metrics

        assert (await http.delete("/realtime/life/room/r1", headers=h)).status_code == 200
        assert (await http.get("/realtime/life/room/r1", headers=h)).status_code == 404
        # The agent sees the room gone on its next heartbeat, drains and the process exits.
        await wait_for(lambda: not pid_alive(pid), timeout=5)
    events = [(e["event"], e.get("reason")) for e in oplog(cp)]
    assert events == [("room.created", None), ("room.ready", None), ("room.deleted", "deleted")]
    stream = cp.config.data_dir / "logs" / "grn%3Ags2%3Aap-northeast-1%3Ao%3Alog%3Agame.jsonl"
    assert [json.loads(x)["event"] for x in stream.read_text().splitlines()] == [e for e, _ in events]


async def test_heartbeat_loss_cleans_up(cp: ControlPlane) -> None:
    async with httpx.AsyncClient(base_url=cp.url, timeout=5) as http:
        h = await login(http)
        await http.post(
            "/realtime/",
            json={"name": "hb", "serverType": "relay", "serverSpec": "realtime1.nano"},
            headers=h,
        )
        await http.post("/realtime/hb/room", json={"name": "frozen"}, headers=h)
        await ready_room(http, h, "hb", "frozen")
        pid = (await cp.store.get_room("hb", "frozen")).pid
        os.kill(pid, signal.SIGSTOP)  # the relay hangs: no more heartbeats
        try:
            await wait_for(lambda: ("hb", "frozen") not in cp.state.runtime, timeout=5)
            assert (await http.get("/realtime/hb/room/frozen", headers=h)).status_code == 404
            # The hung process is killed (SIGTERM cannot act on a stopped process: SIGKILL after the grace).
            await wait_for(lambda: not pid_alive(pid), timeout=5)
        finally:
            if pid_alive(pid):
                os.kill(pid, signal.SIGKILL)
    assert ("room.closed", "lost") in [(e["event"], e.get("reason")) for e in oplog(cp)]


async def test_a_relay_found_lost_ends_lost_though_it_wakes_to_report_shutdown(tmp_path: Path) -> None:
    """Found in review: a relay that only stalled (a VM pause, its CPU quota) and woke as the reaper
    stopped it reported `closed` "shutdown", its answer to the reaper's SIGTERM, and its room was
    recorded as shut down instead of lost."""
    async with (
        ControlPlane(make_config(tmp_path)) as cp,
        httpx.AsyncClient(base_url=cp.url, timeout=10) as http,
    ):
        h = await login(http)
        await create_namespace(http, h, "hb")
        await http.post("/realtime/hb/room", json={"name": "stall"}, headers=h)
        await ready_room(http, h, "hb", "stall")
        pid = (await cp.store.get_room("hb", "stall")).pid
        rt = cp.state.runtime[("hb", "stall")]
        os.kill(pid, signal.SIGSTOP)
        try:
            await wait_for(lambda: rt.ending is not None, timeout=10)
            os.kill(pid, signal.SIGCONT)  # awake with the reaper's SIGTERM pending: it reports
            await wait_for(lambda: ("hb", "stall") not in cp.state.runtime, timeout=10)
            await wait_for(lambda: not pid_alive(pid), timeout=10)
        finally:
            if pid_alive(pid):
                os.kill(pid, signal.SIGKILL)
    closes = [(e["event"], e.get("reason")) for e in oplog(cp) if e["event"] == "room.closed"]
    assert closes == [("room.closed", "lost")]


async def test_relay_exit_removes_record(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STANDIN_CRASH_AFTER", "0.3")
    async with (
        ControlPlane(make_config(tmp_path)) as cp,
        httpx.AsyncClient(base_url=cp.url, timeout=5) as http,
    ):
        h = await login(http)
        await http.post(
            "/realtime/",
            json={"name": "cr", "serverType": "relay", "serverSpec": "realtime1.nano"},
            headers=h,
        )
        await http.post("/realtime/cr/room", json={"name": "boom"}, headers=h)
        await ready_room(http, h, "cr", "boom")

        async def gone() -> bool:
            return (await http.get("/realtime/cr/room/boom", headers=h)).status_code == 404

        await wait_for(gone, timeout=5)
        closed = [e for e in oplog(cp) if e["event"] == "room.closed"]
        assert [e["reason"] for e in closed] == ["crash"] and "exit code 3" in closed[0]["detail"]


async def test_stop_with_relays_ends_rooms_as_shutdown(tmp_path: Path) -> None:
    """A control plane that stops its relays (relay dev) stops them while their agents can still
    report: each room ends as "shutdown", not as a crash after SIGKILL; wantRoom is refused
    (503, GS2's error) from the moment the stop begins, so no relay is started to outlive it."""
    cp = ControlPlane(make_config(tmp_path, stop_grace=5.0))
    await cp.start()
    async with httpx.AsyncClient(base_url=cp.url, timeout=5) as http:
        h = await login(http)
        await create_namespace(http, h, "down")
        for name in ("a", "b"):
            await http.post("/realtime/down/room", json={"name": name}, headers=h)
        for name in ("a", "b"):
            await ready_room(http, h, "down", name)
    pids = [(await cp.store.get_room("down", name)).pid for name in ("a", "b")]
    stopping = asyncio.create_task(cp.stop())
    await asyncio.sleep(0)  # the stop has begun
    with pytest.raises(ApiError) as refused:
        await cp.rooms.want_room("down", "late", [])
    assert refused.value.status == 503 and refused.value.errors[0].code == "realtime.room.error.stopping"
    await stopping
    assert not any(pid_alive(p) for p in pids)
    closed = sorted((e["roomName"], e["reason"]) for e in oplog(cp) if e["event"] == "room.closed")
    assert closed == [("a", "shutdown"), ("b", "shutdown")]
    assert not [e for e in oplog(cp) if e.get("roomName") == "late"]


async def test_delete_namespace_stops_every_room(cp: ControlPlane) -> None:
    async with httpx.AsyncClient(base_url=cp.url, timeout=5) as http:
        h = await login(http)
        await http.post(
            "/realtime/",
            json={"name": "all", "serverType": "relay", "serverSpec": "realtime1.nano"},
            headers=h,
        )
        for i in range(3):
            await http.post("/realtime/all/room", json={"name": f"r{i}"}, headers=h)
        for i in range(3):
            await ready_room(http, h, "all", f"r{i}")
        pids = [(await cp.store.get_room("all", f"r{i}")).pid for i in range(3)]
        r = await http.delete("/realtime/all", headers=h)
        assert r.status_code == 200
        assert (await http.get("/realtime/all/status", headers=h)).json() == {"status": "DELETED"}
        assert await cp.store.list_rooms("all", None, 10) == []
        await wait_for(lambda: not any(pid_alive(p) for p in pids), timeout=8)


async def test_restart_adopts_running_relays(tmp_path: Path) -> None:
    """A control plane that stops without stopping its relays finds them again on restart."""
    config = make_config(tmp_path, stop_relays_on_exit=False)
    first = ControlPlane(config)
    await first.start()
    async with httpx.AsyncClient(base_url=first.url, timeout=5) as http:
        h = await login(http)
        await http.post(
            "/realtime/",
            json={"name": "ad", "serverType": "relay", "serverSpec": "realtime1.nano"},
            headers=h,
        )
        await http.post("/realtime/ad/room", json={"name": "keep"}, headers=h)
        item = await ready_room(http, h, "ad", "keep")
    pid = (await first.store.get_room("ad", "keep")).pid
    port = first.port
    await first.stop()
    assert pid_alive(pid)
    second = ControlPlane(config.replace(port=port, stop_relays_on_exit=True))
    await second.start()
    try:
        assert second.provisioner.alive((await second.store.get_room("ad", "keep")).incarnation)
        rt = second.state.runtime[("ad", "keep")]
        sent = rt.last_heartbeat
        await wait_for(lambda: rt.last_heartbeat > sent, timeout=5)  # the agent's heartbeats reach us again
        room = await second.store.get_room("ad", "keep")
        assert room.port == item["port"] and room.pid == pid
    finally:
        await second.stop()
    await wait_for(lambda: not pid_alive(pid), timeout=5)


async def test_every_reason_a_room_ends_for_is_counted_from_zero(cp: ControlPlane) -> None:
    """A fresh control plane shows relay_control_rooms_closed_total at 0 for every reason a room
    can end for, so that an alert's increase() sees the first room lost after a start (a counter
    that first appears already at 1 has no increase to see: deploy/prometheus/alerts.yml)."""
    async with httpx.AsyncClient(base_url=cp.url, timeout=5) as http:
        metrics = (await http.get("/metrics")).text
    for reason in ("lost", "crash", "provision_failed", "register_timeout", "deleted", "idle", "other"):
        assert f'relay_control_rooms_closed_total{{reason="{reason}"}} 0.0' in metrics, reason
