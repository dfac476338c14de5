"""A room's relay belongs to one incarnation of the room, never to its name: the exit of an earlier
room's relay, or the report of a relay that is not the room's, cannot end the room now holding
that name. Stand-in relays (the real Agent) against the real control plane."""

from __future__ import annotations

import asyncio
import json
import random
from pathlib import Path

import httpx
import pytest

from relay.control.app import ControlPlane
from relay.host.spawner import pid_alive
from tests.control.helpers import (
    create_namespace,
    login,
    make_config,
    oplog,
    ready_room,
    relay_pids,
    wait_for,
)

pytestmark = pytest.mark.slow


async def test_a_room_wanted_again_right_after_delete_keeps_its_new_relay(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 19, defect 1: the old relay's exit was blamed on the new room of the same name."""
    monkeypatch.setenv("STANDIN_EXIT_DELAY", "0.3")  # the old relay takes a while to go
    async with (
        ControlPlane(make_config(tmp_path)) as cp,
        httpx.AsyncClient(base_url=cp.url, timeout=5) as http,
    ):
        h = await login(http)
        await create_namespace(http, h, "again")
        for _ in range(3):
            assert (await http.post("/realtime/again/room", json={"name": "r"}, headers=h)).status_code == 200
            await ready_room(http, h, "again", "r")
            old = (await cp.store.get_room("again", "r")).pid
            assert (await http.delete("/realtime/again/room/r", headers=h)).status_code == 200
            assert (await http.post("/realtime/again/room", json={"name": "r"}, headers=h)).status_code == 200
            await wait_for(lambda old=old: not pid_alive(old), timeout=5)
            await asyncio.sleep(0.5)  # the old relay's exit has been seen by now
            item = await ready_room(http, h, "again", "r")
            assert item["name"] == "r"
            new = (await cp.store.get_room("again", "r")).pid
            assert new != old and pid_alive(new)
            assert relay_pids("again", cp.url) == {"r": [new]}
            assert (await http.delete("/realtime/again/room/r", headers=h)).status_code == 200
            await wait_for(lambda new=new: not pid_alive(new), timeout=5)
        reasons = [e.get("reason") for e in oplog(cp) if e["event"] in ("room.closed", "room.deleted")]
        assert reasons == ["deleted"] * 6, reasons


async def test_reports_of_another_incarnation_cannot_touch_the_live_room(tmp_path: Path) -> None:
    """A relay holding the room's secret but serving another incarnation (a twin left by a crash)
    is told the room is gone, and its register, heartbeat and closed change nothing."""
    async with (
        ControlPlane(make_config(tmp_path, provisioner="none")) as cp,
        httpx.AsyncClient(base_url=cp.url, timeout=5) as http,
    ):
        h = await login(http)
        await create_namespace(http, h, "twin")
        assert (await http.post("/realtime/twin/room", json={"name": "r"}, headers=h)).status_code == 200
        record = await cp.store.get_room("twin", "r")
        auth = {"Authorization": f"Bearer {record.agent_secret}"}
        base = f"{cp.internal_url}/rooms/twin/r"
        mine = {"ipAddress": "127.0.0.1", "port": 4000, "pid": 11}  # an agent that names none
        assert (await http.post(f"{base}/register", json=mine, headers=auth)).status_code == 200
        stale = "0123456789abcdef"
        other = {"ipAddress": "127.0.0.1", "port": 5000, "pid": 22, "incarnation": stale}
        for kind, body in (
            ("register", other),
            ("heartbeat", {"members": 0, "incarnation": stale}),
            ("closed", {"reason": "idle", "incarnation": stale}),
        ):
            r = await http.post(f"{base}/{kind}", json=body, headers=auth)
            assert r.status_code == 404, (kind, r.text)
        item = (await http.get("/realtime/twin/room/r", headers=h)).json()["item"]
        assert item["port"] == 4000
        assert (await cp.store.get_room("twin", "r")).pid == 11
        r = await http.post(f"{base}/heartbeat", json={"members": 1}, headers=auth)
        assert r.status_code == 200 and r.json() == {"deleted": False}
        assert [e["event"] for e in oplog(cp)] == ["room.created", "room.ready"]


async def test_churn_of_the_same_names_leaves_every_acknowledged_room_with_one_relay(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """want / delete / want the same few names from concurrent callers while old relays exit
    slowly; then every room acknowledged last is there, ready, with exactly one relay."""
    monkeypatch.setenv("STANDIN_EXIT_DELAY", "0.4")
    names = [f"n{i}" for i in range(3)]
    rng = random.Random(19)
    async with (
        ControlPlane(make_config(tmp_path)) as cp,
        httpx.AsyncClient(base_url=cp.url, timeout=10) as http,
    ):
        h = await login(http)
        await create_namespace(http, h, "churn")

        async def caller(seed: int) -> None:
            mine = random.Random(seed)
            for _ in range(8):
                name = mine.choice(names)
                if mine.random() < 0.5:
                    r = await http.post("/realtime/churn/room", json={"name": name}, headers=h)
                    assert r.status_code in (200, 409), r.text
                else:
                    r = await http.delete(f"/realtime/churn/room/{name}", headers=h)
                    assert r.status_code in (200, 404), r.text
                await asyncio.sleep(mine.uniform(0, 0.15))

        await asyncio.wait_for(asyncio.gather(*(caller(rng.randrange(1 << 30)) for _ in range(4))), 60)
        for name in names:  # the last word on each name: a room wanted now
            await http.delete(f"/realtime/churn/room/{name}", headers=h)
            r = await http.post("/realtime/churn/room", json={"name": name}, headers=h)
            assert r.status_code == 200, r.text
        await asyncio.sleep(2.0)  # every earlier relay has drained and exited slowly by now
        for name in names:
            await ready_room(http, h, "churn", name)

        async def one_relay_each() -> bool:
            found = relay_pids("churn", cp.url)
            return all(len(found.get(n, [])) == 1 for n in names) and len(found) == len(names)

        await wait_for(one_relay_each, timeout=10)
        found = relay_pids("churn", cp.url)
        for name in names:
            assert found[name] == [(await cp.store.get_room("churn", name)).pid]
        listed = (await http.get("/realtime/churn/room", headers=h)).json()["items"]
        assert sorted(r["name"] for r in listed) == names
        closed = [e for e in oplog(cp) if e["event"] == "room.closed"]
        assert closed == [], json.dumps(closed)  # no room was ever blamed for another's exit
