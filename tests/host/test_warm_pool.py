"""The warm pool with real processes: standbys forked from the zygote template wait without a room
or a port, take a room's spawn request through their stdin and serve it as that room's relay
(same pid, the room's own command line for adoption), are replaced in the background, leave no
process behind when the pool or the template goes, and never block a spawn when they fail or
its request is too large for them."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

import relay.client as rc
from relay.agent.tiers import NANO
from relay.control.app import ControlPlane
from relay.control.metrics import ControlMetrics
from relay.control.provisioner import pid_is_relay
from relay.host import cgroups
from relay.host.capped_spawner import CappedHandle, CappedSpawner
from relay.host.spawner import pid_alive
from relay.host.standby import MAX_ASSIGNMENT, encode_assignment, read_assignment
from relay.host.warm_pool import WarmPool
from relay.host.zygote import ZygoteSpawner
from tests.control.helpers import REAL_RELAY, create_namespace, login, make_config, ready_room, wait_for
from tests.host.test_caps import BACKEND, cpu_quota, needs_cgroups
from tests.host.test_zygote import Relays, listening, parent_of

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="fork + /proc")


def cmdline(pid: int) -> list[str]:
    return [a.decode() for a in Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0") if a]


def sockets(pid: int) -> int:
    """Sockets the process holds besides its stdin (a standby's socket pair with the template)."""
    fds = [fd for fd in os.listdir(f"/proc/{pid}/fd") if fd != "0"]
    return sum(1 for fd in fds if os.readlink(f"/proc/{pid}/fd/{fd}").startswith("socket:"))


@pytest.fixture
async def pool(tmp_path: Path) -> AsyncIterator[WarmPool]:
    p = WarmPool(ZygoteSpawner(), size=2, log_path=tmp_path / "standby.log")
    await p.start()
    try:
        yield p
    finally:
        await p.close()


async def test_standbys_wait_with_no_room_and_no_socket(pool: WarmPool) -> None:
    await wait_for(lambda: len(pool.ready_pids) == 2)
    template = pool.inner.template_pid  # type: ignore[attr-defined]
    for pid in pool.ready_pids:
        assert parent_of(pid) == template
        await wait_for(lambda: cmdline(pid)[-2:] == ["serve", "--standby"])  # noqa: B023
    await asyncio.sleep(0.5)  # the rehearsal's throw-away relay is closed again
    assert all(sockets(pid) == 0 for pid in pool.ready_pids)


async def test_a_standby_becomes_the_rooms_relay(pool: WarmPool, tmp_path: Path) -> None:
    await wait_for(lambda: len(pool.ready_pids) == 2)
    standbys = set(pool.ready_pids)
    relays = Relays(pool, tmp_path)
    try:
        s = await relays.start("a", "--namespace", "ns", "--room", "r1", "--incarnation", "i1")
        assert s.handle.pid in standbys and pool.handed_out == 1
        host, port, _ = await listening(s.log)
        assert pid_is_relay(s.handle.pid, "ns", "r1", "i1")  # the room's own flags, for adopt()
        assert "--standby" not in cmdline(s.handle.pid)
        a = await rc.connect(host, port, s.key, "a", transport="udp", timeout=3)
        b = await rc.connect(host, port, s.key, "b", transport="ws", timeout=3)
        try:
            a.send(b"warm")
            assert (await b.next_event_of(rc.Received, timeout=3)).data == b"warm"
        finally:
            await a.close()
            await b.close()
        await wait_for(lambda: len(pool.ready_pids) == 2)  # replaced in the background
        assert s.handle.pid not in pool.ready_pids
        s.handle.terminate()
        assert await asyncio.wait_for(s.handle.wait(), 5) == 0
    finally:
        await relays.close()


async def test_a_standby_still_rehearsing_is_not_handed_a_room(pool: WarmPool, tmp_path: Path) -> None:
    relays = Relays(pool, tmp_path)
    try:
        # at once after start: the standbys are being forked or are rehearsing, none has said "R"
        s = await relays.start("early")
        assert pool.handed_out == 0 and s.handle.pid not in pool.standby_pids
        await listening(s.log)
        await wait_for(lambda: len(pool.ready_pids) == 2)
        assert sorted(pool.ready_pids) == sorted(pool.standby_pids)
    finally:
        await relays.close()


async def test_empty_pool_spawns_cold(tmp_path: Path) -> None:
    pool = WarmPool(ZygoteSpawner(), size=0)
    await pool.start()
    relays = Relays(pool, tmp_path)
    try:
        s = await relays.start("cold")
        await listening(s.log)
        assert pool.handed_out == 0
    finally:
        await relays.close()
        await pool.close()


async def test_dead_standby_is_skipped_and_replaced(pool: WarmPool, tmp_path: Path) -> None:
    await wait_for(lambda: len(pool.ready_pids) == 2)
    first, second = pool.ready_pids
    os.kill(first, signal.SIGKILL)
    await wait_for(lambda: first not in pool.ready_pids)
    relays = Relays(pool, tmp_path)
    try:
        s = await relays.start("b")
        assert s.handle.pid == second
        await listening(s.log)
        await wait_for(lambda: len(pool.ready_pids) == 2, timeout=15)
    finally:
        await relays.close()


async def test_a_spawn_request_too_large_for_a_standby_is_forked_fresh(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A standby would not read it (it would exit, "bad assignment"): the room is forked fresh
    through the template's channel, and the standby, neither used up nor counted as failed,
    takes the next room."""
    pool = WarmPool(ZygoteSpawner(), size=1, log_path=tmp_path / "standby.log")
    await pool.start()
    relays = Relays(pool, tmp_path)
    try:
        [standby] = await wait_for(lambda: pool.ready_pids, 30)
        monkeypatch.setenv("BIG", "x" * MAX_ASSIGNMENT)
        big = await relays.start("big")
        monkeypatch.delenv("BIG")
        assert big.handle.pid != standby
        await listening(big.log)
        assert pool.ready_pids == [standby] and pool.failures == 0 and pool.handed_out == 0
        small = await relays.start("small")
        assert small.handle.pid == standby and pool.handed_out == 1
        await listening(small.log)
    finally:
        await relays.close()
        await pool.close()


async def test_close_and_template_death_leave_no_standby(tmp_path: Path) -> None:
    pool = WarmPool(ZygoteSpawner(), size=2)
    await pool.start()
    await wait_for(lambda: len(pool.ready_pids) == 2)
    pids = pool.ready_pids
    await pool.close()
    await wait_for(lambda: not any(pid_alive(p) for p in pids))

    pool = WarmPool(ZygoteSpawner(), size=2)
    await pool.start()
    try:
        await wait_for(lambda: len(pool.ready_pids) == 2)
        pids = pool.ready_pids
        os.kill(pool.inner.template_pid, signal.SIGKILL)  # type: ignore[attr-defined,arg-type]
        await wait_for(lambda: not any(pid_alive(p) for p in pids))  # their stdin closed: they leave
    finally:
        pool.size = 0
        await pool.close()


def cpu_weight(group: cgroups.Cgroup) -> int:
    if isinstance(group, cgroups.CgroupV1):
        return int((group.paths["cpu"] / "cpu.shares").read_text())
    assert isinstance(group, cgroups.CgroupV2)
    return int((group.path / "cpu.weight").read_text())


def cgroup_of(pid: int) -> str:
    return Path(f"/proc/{pid}/cgroup").read_text()


@needs_cgroups
async def test_capped_standby_idles_at_the_lowest_weight_and_is_cpu_capped_from_its_start(
    tmp_path: Path,
) -> None:
    pool = WarmPool(CappedSpawner(ZygoteSpawner(), NANO, BACKEND), size=1, log_path=tmp_path / "standby.log")
    await pool.start()
    relays = Relays(pool, tmp_path)
    try:
        await wait_for(lambda: len(pool.ready_pids) == 1)
        standby = pool._ready[0]
        assert isinstance(standby, CappedHandle) and standby.group is not None
        assert cpu_weight(standby.group) == (2 if standby.group.version == 1 else 1)
        assert cpu_quota(standby.group) == NANO.cpu_quota_us  # capped from its start: never a boost
        template = pool.inner.inner.template_pid  # type: ignore[attr-defined]
        await wait_for(lambda: cgroup_of(standby.pid) != cgroup_of(template))  # moved into its own group

        s = await relays.start("capped", "--namespace", "ns", "--room", "rc")
        assert s.handle is standby
        assert cpu_weight(standby.group) == (1024 if standby.group.version == 1 else 100)
        host, port, _ = await listening(s.log)
        assert cpu_quota(standby.group) == NANO.cpu_quota_us  # its room is never reachable uncapped
        standby.registered()
        assert cpu_quota(standby.group) == NANO.cpu_quota_us
        a = await rc.connect(host, port, s.key, "a", transport="udp", timeout=3)
        await a.close()
    finally:
        await relays.close()
        await pool.close()


def test_assignment_frames_are_checked() -> None:
    r, w = os.pipe()
    os.write(w, encode_assignment(["python", "-m", "relay.cli", "serve", "--port", "0"], {"A": "1"}, None))
    os.close(w)
    assert read_assignment(r) == {
        "argv": ["python", "-m", "relay.cli", "serve", "--port", "0"],
        "env": {"A": "1"},
        "log_path": None,
    }
    assert read_assignment(r) is None  # end of file: no room, a clean exit
    os.close(r)
    for bad in (
        encode_assignment(["rm", "-rf", "/"], {}, None),
        encode_assignment(["relay", "serve"], {"A": 1}, None),  # type: ignore[dict-item]
        b"\x7f\xff\xff\xff",
        b"\x00\x00\x00\x02{]",
        b"\x00\x00\x00\x02[]",
    ):
        r, w = os.pipe()
        os.write(w, bad)
        os.close(w)
        with pytest.raises(ValueError):
            read_assignment(r)
        os.close(r)


def test_make_spawner_uses_warm_relays_only_for_this_interpreters_relay(tmp_path: Path) -> None:
    from relay.control.app import make_spawner
    from tests.control.helpers import REAL_RELAY, STANDIN, make_config

    assert isinstance(make_spawner(make_config(tmp_path, relay_command=REAL_RELAY)), WarmPool)
    for other in (
        make_config(tmp_path, relay_command=STANDIN),  # another program: nothing to rehearse
        make_config(tmp_path, relay_command=REAL_RELAY, relay_warm_relays=0),
        make_config(tmp_path, relay_command=REAL_RELAY, relay_spawner="subprocess"),
    ):
        assert not isinstance(make_spawner(other), WarmPool)
    with pytest.raises(ValueError, match="relay_warm_relays"):
        make_spawner(make_config(tmp_path, relay_command=REAL_RELAY, relay_warm_relays=-1))


class Gated:
    """A real spawner whose spawns for rooms wait at a gate (standbys pass): a burst held open."""

    def __init__(self, inner: ZygoteSpawner) -> None:
        self.inner = inner
        self.gate = asyncio.Event()
        self.standby_spawns = 0

    async def spawn(self, argv, env, log_path):  # type: ignore[no-untyped-def]
        if "--standby" in argv:
            self.standby_spawns += 1
        else:
            await self.gate.wait()
        return await self.inner.spawn(argv, env, log_path)

    async def start(self) -> None:
        await self.inner.start()

    async def close(self) -> None:
        await self.inner.close()


async def test_no_standby_is_forked_while_a_room_waits_for_a_fresh_fork(tmp_path: Path) -> None:
    gated = Gated(ZygoteSpawner())
    pool = WarmPool(gated, size=1)
    await pool.start()
    relays = Relays(pool, tmp_path)
    try:
        await wait_for(lambda: len(pool.ready_pids) == 1)
        assert gated.standby_spawns == 1
        warm = await relays.start("warm")  # takes the standby
        cold = asyncio.ensure_future(relays.start("cold"))  # a fresh fork, held at the gate
        await asyncio.sleep(0.5)
        assert gated.standby_spawns == 1 and not pool.standby_pids  # the room comes first
        gated.gate.set()
        await cold
        await wait_for(lambda: len(pool.ready_pids) == 1)  # then the pool refills
        assert gated.standby_spawns == 2
        for s in relays.started:
            await listening(s.log)
        assert warm.handle.pid != relays.started[-1].handle.pid
    finally:
        await relays.close()
        await pool.close()


def _pool_samples(metrics: ControlMetrics) -> dict[str, float]:
    """The warm pool's samples on the control plane's /metrics, by name and label."""
    found = {}
    for family in text_string_to_metric_families(metrics.render().decode()):
        for s in family.samples:
            if s.name.startswith(("relay_control_warm_relays", "relay_control_room_spawns")):
                found[s.name + "".join(f":{v}" for v in s.labels.values())] = s.value
    return found


async def test_the_pools_metrics_say_how_many_standbys_are_ready_and_how_rooms_started(
    tmp_path: Path,
) -> None:
    """An operator sees a pool that rooms drain faster than it refills: forks, not standbys."""
    gated = Gated(ZygoteSpawner())
    pool = WarmPool(gated, size=1)
    metrics = ControlMetrics(lambda: {})
    metrics.watch_warm_pool(pool)
    await pool.start()
    relays = Relays(pool, tmp_path)
    try:
        await wait_for(lambda: len(pool.ready_pids) == 1)
        assert _pool_samples(metrics) == {
            "relay_control_warm_relays:ready": 1,
            "relay_control_warm_relays:rehearsing": 0,
            "relay_control_warm_relays_wanted": 1,
            "relay_control_room_spawns_total:standby": 0,
            "relay_control_room_spawns_total:fork": 0,
        }
        await relays.start("warm")
        cold = asyncio.ensure_future(relays.start("cold"))  # no standby ready: a fresh fork
        await wait_for(lambda: pool.forked == 1)
        seen = _pool_samples(metrics)
        assert seen["relay_control_warm_relays:ready"] == 0
        assert seen["relay_control_room_spawns_total:standby"] == 1
        assert seen["relay_control_room_spawns_total:fork"] == 1
        gated.gate.set()
        await cold
        await wait_for(lambda: _pool_samples(metrics)["relay_control_warm_relays:ready"] == 1)
    finally:
        await relays.close()
        await pool.close()


async def test_a_control_plane_with_warm_relays_shows_them_on_its_metrics(tmp_path: Path) -> None:
    config = make_config(tmp_path, relay_command=REAL_RELAY, relay_warm_relays=2)
    async with ControlPlane(config) as cp, httpx.AsyncClient(base_url=cp.url, timeout=5) as http:
        ready = "relay_control_warm_relays:ready"
        await wait_for(lambda: _pool_samples(cp.metrics).get(ready) == 2, timeout=20)
        scraped = (await http.get("/metrics")).text
        assert 'relay_control_warm_relays{state="ready"} 2.0' in scraped
        assert "relay_control_warm_relays_wanted 2.0" in scraped
        h = await login(http)
        await create_namespace(http, h, "ns")
        assert (await http.post("/realtime/ns/room", json={"name": "r"}, headers=h)).status_code == 200
        await ready_room(http, h, "ns", "r")
        assert 'relay_control_room_spawns_total{how="standby"} 1.0' in (await http.get("/metrics")).text
