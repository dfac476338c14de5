"""A host refuses the room it has no room for: wantRoom answers GS2's 503 (ServiceUnavailable,
realtime.room.error.noCapacity) once max_rooms run, or while memory is short of the headroom;
nothing is stored, and the room can be wanted again once there is room."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import httpx
import pytest
from gs2 import core, realtime

from relay.control.app import ControlPlane
from relay.host.capacity import Capacity, available_memory
from tests.control.helpers import (
    create_namespace,
    gs2_client,
    login,
    make_config,
    ready_room,
    threaded_control_plane,
)

pytestmark = pytest.mark.slow


def no_capacity(r: httpx.Response) -> bool:
    return (
        r.status_code == 503
        and json.loads(r.json()["message"])[0]["code"] == "realtime.room.error.noCapacity"
    )


async def test_rooms_past_max_rooms_are_refused_until_one_ends(tmp_path: Path) -> None:
    """Issue 19, defect 8: nothing ever refused a room (300 of them at 5.9 MiB all started)."""
    async with (
        ControlPlane(make_config(tmp_path, max_rooms=2)) as cp,
        httpx.AsyncClient(base_url=cp.url, timeout=5) as http,
    ):
        h = await login(http)
        await create_namespace(http, h, "cap")
        for name in ("a", "b"):
            assert (await http.post("/realtime/cap/room", json={"name": name}, headers=h)).status_code == 200
        r = await http.post("/realtime/cap/room", json={"name": "c"}, headers=h)
        assert no_capacity(r), r.text
        assert (await http.get("/realtime/cap/room/c", headers=h)).status_code == 404  # nothing stored
        assert len(cp.state.runtime) == 2
        await ready_room(http, h, "cap", "a")
        assert (await http.delete("/realtime/cap/room/a", headers=h)).status_code == 200
        assert (await http.post("/realtime/cap/room", json={"name": "c"}, headers=h)).status_code == 200
        await ready_room(http, h, "cap", "c")


async def test_max_rooms_holds_against_wants_of_many_names_at_once_on_postgresql(
    tmp_path: Path, postgres_url: str
) -> None:
    """Found in review: the capacity check and the room's counting had the store write between
    them, and a PostgreSQL cluster's lock is per room: 20 wants of different names at once at
    max_rooms 3 started 6 rooms (SQLite's one lock kept it to 3)."""
    config = make_config(tmp_path, max_rooms=3, memory_headroom_rooms=0, store_url=postgres_url)
    async with ControlPlane(config) as cp, httpx.AsyncClient(base_url=cp.url, timeout=30) as http:
        h = await login(http)
        await create_namespace(http, h, "cap")
        wants = [http.post("/realtime/cap/room", json={"name": f"r{i}"}, headers=h) for i in range(20)]
        answers = await asyncio.gather(*wants)
        assert sorted(r.status_code for r in answers) == [200] * 3 + [503] * 17
        assert all(no_capacity(r) for r in answers if r.status_code != 200)
        assert len(cp.state.runtime) == 3
        listed = (await http.get("/realtime/cap/room", headers=h)).json()["items"]
        assert len(listed) == 3


def test_a_host_short_of_memory_headroom_refuses_through_the_sdk(tmp_path: Path) -> None:
    free = available_memory()
    assert free is not None
    config = make_config(tmp_path, memory_headroom_rooms=2 * free / (64 << 20))  # twice what is free
    with threaded_control_plane(config) as cp:
        session, client = gs2_client(cp.url)
        try:
            client.create_namespace(
                realtime.CreateNamespaceRequest()
                .with_name("mem")
                .with_server_type("relay")
                .with_server_spec("realtime1.nano")
            )
            with pytest.raises(core.ServiceUnavailableException):
                client.want_room(realtime.WantRoomRequest().with_namespace_name("mem").with_name("r"))
            assert (
                client.describe_rooms(realtime.DescribeRoomsRequest().with_namespace_name("mem")).items == []
            )
        finally:
            session.disconnect()


def test_capacity_reasons(tmp_path: Path) -> None:
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal: 8000000 kB\nMemAvailable: 1048576 kB\n")  # 1 GiB available
    assert Capacity(max_rooms=3).refusal(2, meminfo) is None
    assert "maximum of 3 rooms" in str(Capacity(max_rooms=3).refusal(3, meminfo))
    assert Capacity(headroom_bytes=512 << 20).refusal(10_000, meminfo) is None
    assert "1024 MiB of memory available" in str(Capacity(headroom_bytes=2 << 30).refusal(0, meminfo))
    assert Capacity().refusal(1_000_000, meminfo) is None  # 0: no limit
