"""Several control-plane nodes on one real PostgreSQL database (docs/operations.md, "Several
nodes"): any node answers any call (through the gs2 SDK), page and project tokens work across
them, a room-ready push reaches a user on another node's /gateway and the webhook fires once,
lost relays are reaped once, a node that dies mid-provisioning leaves no room stuck, and a node
SIGKILLed in a burst of wantRoom/deleteRoom loses nothing it acknowledged."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import websockets
from gs2 import core, realtime

from loadtest.controlplane import free_port
from relay.agent.tiers import NANO
from relay.control import postgres_store
from relay.control.app import ControlPlane
from relay.control.config import ControlConfig
from relay.control.postgres_store import MIGRATIONS, PostgresStore
from relay.control.records import RoomRecord
from tests.control.balancer import Balancer
from tests.control.helpers import (
    CLIENT_ID,
    CLIENT_SECRET,
    REAL_RELAY,
    STANDIN,
    create_namespace,
    ended_rooms,
    gs2_client,
    login,
    make_config,
    oplog,
    ready_room,
    relay_pids,
    settles,
    threaded_control_plane,
    wait_for,
)
from tests.control.test_durability import start_control
from tests.control.test_sdk import create_ns
from tests.host.test_caps import needs_cgroups, pid_cpu_quota

pytestmark = pytest.mark.slow


def unique(prefix: str) -> str:
    """A namespace no other test run on this machine uses (relays are found by namespace)."""
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def gone(cp: ControlPlane, ns: str, room: str) -> Any:
    """A wait_for predicate: the room's record is gone."""

    async def check() -> bool:
        return await cp.store.get_room(ns, room) is None

    return check


def node_config(tmp_path: Path, node: str, url: str, **overrides: Any) -> ControlConfig:
    return make_config(tmp_path / node, store_url=url, node_id=node, **overrides)


@contextlib.asynccontextmanager
async def nodes(*configs: ControlConfig) -> AsyncIterator[list[ControlPlane]]:
    planes = [ControlPlane(config) for config in configs]
    try:
        for plane in planes:
            await plane.start()
        yield planes
    finally:
        for plane in planes:
            await plane.stop()


async def register(http: httpx.AsyncClient, cp: ControlPlane, ns: str, room: str, port: int = 4000) -> None:
    """Plays the room's relay: registers it through this node's internal API."""
    record = await cp.store.get_room(ns, room)
    assert record is not None
    body = {"ipAddress": "127.0.0.1", "port": port, "incarnation": record.incarnation}
    r = await http.post(
        f"{cp.internal_url}/rooms/{ns}/{room}/register",
        json=body,
        headers={"Authorization": f"Bearer {record.agent_secret}"},
    )
    assert r.status_code == 200, r.text


def test_migrations_run_once_when_nodes_start_together(postgres_url: str) -> None:
    """Four nodes migrating one empty database at once: each waits its turn, each version is
    applied once; a database newer than the code is refused."""
    import threading

    errors: list[BaseException] = []

    def migrate() -> None:
        try:
            postgres_store.migrate(postgres_url)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=migrate) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert errors == []
    import psycopg

    with psycopg.connect(postgres_url, autocommit=True) as conn:
        versions = [row[0] for row in conn.execute("SELECT version FROM relay_schema ORDER BY version")]
        assert versions == list(range(1, len(MIGRATIONS) + 1))
        conn.execute("INSERT INTO relay_schema (version) VALUES (%s)", (len(MIGRATIONS) + 1,))
    with pytest.raises(psycopg.errors.FeatureNotSupported):
        postgres_store.migrate(postgres_url)
    with pytest.raises(ConnectionError, match="newer release"):
        PostgresStore(postgres_url).setting("signing.key", lambda: "x")


def test_any_node_answers_through_the_sdk(tmp_path: Path, postgres_url: str) -> None:
    """The gs2 SDK against each of two nodes: what one wrote the other reads, its page tokens
    continue on the other, and one node's conflicts are the other's."""
    with (
        threaded_control_plane(node_config(tmp_path, "a", postgres_url, provisioner="none")) as a,
        threaded_control_plane(node_config(tmp_path, "b", postgres_url, provisioner="none")) as b,
    ):
        (session_a, sdk_a), (session_b, sdk_b) = gs2_client(a.url), gs2_client(b.url)
        try:
            made = create_ns(sdk_a, "game", description="on a")
            assert sdk_b.get_namespace(
                realtime.GetNamespaceRequest().with_namespace_name("game")
            ).item.to_dict() == (made.to_dict())
            for i, sdk in enumerate((sdk_a, sdk_b) * 3):
                sdk.want_room(realtime.WantRoomRequest().with_namespace_name("game").with_name(f"r-{i}"))
            got = sdk_b.get_room(
                realtime.GetRoomRequest().with_namespace_name("game").with_room_name("r-0")
            ).item
            assert got.name == "r-0" and got.ip_address is None
            with pytest.raises(core.ConflictException):  # wanted on a, wanted again on b
                sdk_b.want_room(realtime.WantRoomRequest().with_namespace_name("game").with_name("r-0"))
            names, token, turn = [], None, 0
            while True:  # each page from the other node, resuming from the last one's token
                sdk = (sdk_a, sdk_b)[turn % 2]
                page = sdk.describe_rooms(
                    realtime.DescribeRoomsRequest()
                    .with_namespace_name("game")
                    .with_limit(4)
                    .with_page_token(token)
                )
                names += [r.name for r in page.items]
                token, turn = page.next_page_token, turn + 1
                if token is None:
                    break
            assert names == [f"r-{i}" for i in range(6)] and turn == 2
            sdk_b.delete_room(realtime.DeleteRoomRequest().with_namespace_name("game").with_room_name("r-0"))
            with pytest.raises(core.NotFoundException):
                sdk_a.get_room(realtime.GetRoomRequest().with_namespace_name("game").with_room_name("r-0"))
            sdk_b.update_namespace(
                realtime.UpdateNamespaceRequest()
                .with_namespace_name("game")
                .with_description("on b")
                .with_server_type("relay")
                .with_server_spec("realtime1.nano")
            )
            again = sdk_a.get_namespace(realtime.GetNamespaceRequest().with_namespace_name("game")).item
            assert again.description == "on b" and again.revision == 1
            # One signing key for all: a token minted by one node is good on the other.
            assert b.authority.verify_project_token(session_a.project_token)
            assert a.authority.public_key_text == b.authority.public_key_text
        finally:
            session_a.disconnect()
            session_b.disconnect()


class Hooks:
    """A webhook receiver on loopback that counts the POSTs it is sent."""

    def __init__(self) -> None:
        self.bodies: list[dict[str, Any]] = []
        self._server: asyncio.AbstractServer | None = None
        self.url = ""

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.url = f"http://127.0.0.1:{self._server.sockets[0].getsockname()[1]}/hook"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        length = next(
            int(line.split(b":", 1)[1])
            for line in head.split(b"\r\n")
            if line.lower().startswith(b"content-length")
        )
        self.bodies.append(json.loads(await reader.readexactly(length)))
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}")
        await writer.drain()
        writer.close()

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()


async def test_a_room_ready_on_one_node_is_pushed_from_every_node_and_posted_once(
    tmp_path: Path, postgres_url: str
) -> None:
    hooks = Hooks()
    await hooks.start()
    configs = [
        node_config(tmp_path, name, postgres_url, provisioner="none", webhook_url=hooks.url) for name in "ab"
    ]
    try:
        async with nodes(*configs) as (a, b), httpx.AsyncClient(timeout=5) as http:
            http.base_url = httpx.URL(a.url)
            h = await login(http)
            await create_namespace(http, h, "push", createNotification={})
            tokens = {}
            for user in ("alice", "bob", "carol"):
                tokens[user] = (await http.post("/auth/login", json={"userId": user}, headers=h)).json()[
                    "token"
                ]
            sockets = {}
            for user, node in (("alice", b), ("bob", a), ("carol", b)):
                ws = await websockets.connect(
                    node.url.replace("http://", "ws://") + f"/gateway?token={tokens[user]}"
                )
                assert json.loads(await ws.recv())["type"] == "welcome"
                sockets[user] = ws
            users = ["alice", "bob", *(f"absent-{i:04d}-{'x' * 100}" for i in range(150))]  # NOTIFY in parts
            r = await http.post(
                "/realtime/push/room", json={"name": "r", "notificationUserIds": users}, headers=h
            )
            assert r.status_code == 200
            await register(http, a, "push", "r")  # the relay registers with node a
            for user in ("alice", "bob"):  # alice on b (another node), bob on a
                msg = json.loads(await asyncio.wait_for(sockets[user].recv(), 5))
                assert msg["issuer"] == "Gs2Realtime:Create" and msg["userId"] == user
                assert json.loads(msg["payload"]) == {"namespaceName": "push", "roomName": "r"}
            with pytest.raises(TimeoutError):  # carol was not listed
                await asyncio.wait_for(sockets["carol"].recv(), 0.5)
            with pytest.raises(TimeoutError):  # alice got it once, not once per part or node
                await asyncio.wait_for(sockets["alice"].recv(), 0.5)
            await wait_for(lambda: hooks.bodies, timeout=5)
            await asyncio.sleep(0.5)
            assert len(hooks.bodies) == 1 and hooks.bodies[0]["userIds"] == users  # once, not per node
            ready = [e for cp in (a, b) for e in oplog(cp) if e["event"] == "room.ready"]
            assert len(ready) == 1
            for ws in sockets.values():
                await ws.close()
    finally:
        await hooks.stop()


async def test_a_relay_is_listed_for_prometheus_by_its_own_node_wherever_it_registered(
    tmp_path: Path, postgres_url: str
) -> None:
    """Room on node a, its relay registering through node b: a's file_sd list names it (a is
    where Prometheus learns a's relays), b's does not; the room deleted through b leaves a's list."""
    ns = unique("targets")
    configs = [node_config(tmp_path, name, postgres_url, provisioner="none") for name in "ab"]
    async with nodes(*configs) as (a, b), httpx.AsyncClient(timeout=5) as http:
        http.base_url = httpx.URL(a.url)
        h = await login(http)
        await create_namespace(http, h, ns)
        assert (await http.post(f"/realtime/{ns}/room", json={"name": "r"}, headers=h)).status_code == 200
        record = await a.store.get_room(ns, "r")
        assert record is not None
        body = {"ipAddress": "127.0.0.1", "port": 4000, "adminPort": 4100, "incarnation": record.incarnation}
        r = await http.post(
            f"{b.internal_url}/rooms/{ns}/r/register",
            json=body,
            headers={"Authorization": f"Bearer {record.agent_secret}"},
        )
        assert r.status_code == 200, r.text

        def listed(cp: ControlPlane) -> list[tuple[str, str]]:
            return [(g["labels"]["gs2_room"], g["targets"][0]) for g in json.loads(cp.state.targets.render())]

        await wait_for(lambda: listed(a) == [("r", "127.0.0.1:4100")], timeout=5)
        assert listed(b) == []
        r = await http.delete(f"{b.url}/realtime/{ns}/room/r", headers=h)
        assert r.status_code == 200, r.text
        await wait_for(lambda: listed(a) == [], timeout=5)


async def test_lost_relays_are_reaped_once_and_the_leader_moves(
    tmp_path: Path, postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One leader at a time reaps: a silent relay's room ends once across the nodes; when the
    leader stops, the other node leads and reaps."""
    configs = [node_config(tmp_path, name, postgres_url, provisioner="none") for name in "ab"]
    async with nodes(*configs) as (a, b), httpx.AsyncClient(base_url=b.url, timeout=5) as http:
        h = await login(http)
        await create_namespace(http, h, "reap")
        await wait_for(lambda: a.state.cluster.leader() or b.state.cluster.leader(), timeout=5)
        for _ in range(10):
            assert [a.state.cluster.leader(), b.state.cluster.leader()].count(True) == 1
            await asyncio.sleep(0.02)
        looked: list[tuple[str, bool]] = []  # (node, leading) at each look for overdue rooms
        for cp in (a, b):
            cluster, overdue = cp.state.cluster, cp.state.cluster.overdue

            async def spy(timeout: float, cluster: Any = cluster, overdue: Any = overdue) -> Any:
                looked.append((cluster.node_id, cluster.leader()))
                return await overdue(timeout)

            monkeypatch.setattr(cluster, "overdue", spy)
        for name in ("r1", "r2"):
            assert (await http.post("/realtime/reap/room", json={"name": name}, headers=h)).status_code == 200
            await register(http, b, "reap", name)
        record = await a.store.get_room("reap", "r2")
        assert record is not None
        auth = {"Authorization": f"Bearer {record.agent_secret}"}
        beat = {"members": 1, "incarnation": record.incarnation}

        async def keep_r2_alive() -> None:  # its agent heartbeats to the node that is not leading
            while True:
                follower = b if a.state.cluster.leader() else a
                await http.post(f"{follower.internal_url}/rooms/reap/r2/heartbeat", json=beat, headers=auth)
                await asyncio.sleep(0.1)

        alive = asyncio.create_task(keep_r2_alive())
        try:
            await wait_for(gone(a, "reap", "r1"), timeout=5)
            await asyncio.sleep(1.0)  # both reapers had every chance to end it again
            closed = [e for cp in (a, b) for e in oplog(cp) if e["event"] == "room.closed"]
            assert [(e["roomName"], e["reason"]) for e in closed] == [("r1", "lost")]
            assert await a.store.get_room("reap", "r2") is not None  # heard through the other node
            assert len(looked) > 10 and all(leading for _, leading in looked)  # only the leader looks
            assert len({node for node, _ in looked}) == 1
        finally:
            alive.cancel()
        leader, follower = (a, b) if a.state.cluster.leader() else (b, a)
        await leader.stop()
        await wait_for(follower.state.cluster.leader, timeout=5)
        await wait_for(gone(follower, "reap", "r2"), timeout=5)
        ended = [e for e in oplog(follower) if e["event"] == "room.closed" and e["roomName"] == "r2"]
        assert [e["reason"] for e in ended] == ["lost"]


HANGING_RELAY = [sys.executable, "-c", "import time; time.sleep(60)"]
"""A `relay serve` that starts and never registers (its node dies before it would)."""


async def test_a_node_killed_mid_provisioning_leaves_no_room_stuck(tmp_path: Path, postgres_url: str) -> None:
    """Node a takes wantRoom and starts a relay that has not registered when a is SIGKILLed: the
    leader (b) gives the room a new incarnation and a relay of its own, which registers."""
    ns = unique("mid")  # relays are found by namespace: none of another run's on this machine
    config = tmp_path / "a.json"
    config.write_text(json.dumps({"relay_command": HANGING_RELAY, "heartbeat_interval": 0.2}))
    proc, url = await start_control(
        tmp_path / "a", tmp_path / "a.log", 0, "local", "--config", str(config), "--store", postgres_url,
        "--node-id", "a",
    )  # fmt: skip
    try:
        async with httpx.AsyncClient(base_url=url, timeout=5) as http:
            h = await login(http)
            await create_namespace(http, h, ns)
            for name in ("r1", "r2"):
                assert (
                    await http.post(f"/realtime/{ns}/room", json={"name": name}, headers=h)
                ).status_code == 200
            await wait_for(lambda: len(relay_pids(ns)) == 2, timeout=10)  # started, never registering
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    stale = {name: pids[0] for name, pids in relay_pids(ns).items()}
    try:
        async with (
            nodes(node_config(tmp_path, "b", postgres_url, relay_command=STANDIN)) as (b,),
            httpx.AsyncClient(base_url=b.url, timeout=5) as http,
        ):
            h = await login(http)  # a's credentials, key and records: one cluster
            for name in ("r1", "r2"):
                item = await ready_room(http, h, ns, name)
                record = await b.store.get_room(ns, name)
                assert record is not None and record.node == "b" and item["port"]
            assert [e["reason"] for e in oplog(b) if e["event"] == "room.closed"] == []
    finally:
        for pid in stale.values():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


@contextlib.contextmanager
def cleanup_relays(namespace: str) -> Iterator[None]:
    try:
        yield
    finally:
        for pids in relay_pids(namespace).values():
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)


async def test_sigkill_of_a_node_mid_burst_loses_no_acknowledged_change(
    tmp_path: Path, postgres_url: str
) -> None:
    """Two `relay control` processes behind a load balancer (relays reach "the control plane"
    through it), wantRoom and deleteRoom sent to both; one is SIGKILLed mid-burst. Every change
    either node acknowledged is there, every room left gets ready, and each has one relay."""
    ns = unique("kb")
    balancer = Balancer([])
    await balancer.start()
    ports = {"a": free_port(), "b": free_port()}
    balancer.backends = [("127.0.0.1", port) for port in ports.values()]
    # Ten missed heartbeats, not three: on a loaded CI runner a capped stand-in's heartbeat came
    # 0.6 s late, the leader ended its room as lost (rightly), and the count below failed.
    settings = {"relay_command": list(STANDIN), "heartbeat_interval": 0.2, "idle_heartbeat_interval": 0.4,
                "missed_heartbeats": 10, "sweep_interval": 0.05, "stop_grace": 1.0,
                "register_timeout": 15.0}  # fmt: skip
    (tmp_path / "nodes.json").write_text(json.dumps(settings))
    procs: dict[str, subprocess.Popen[bytes]] = {}
    urls: dict[str, str] = {}
    names = [f"r{i:02d}" for i in range(12)]
    state: dict[str, str] = {}  # name -> what the last answer acknowledged: present / absent / unknown
    with cleanup_relays(ns):
        try:
            for node, port in ports.items():
                procs[node], urls[node] = await start_control(
                    tmp_path / node, tmp_path / f"{node}.log", port, "local", "--config",
                    str(tmp_path / "nodes.json"), "--store", postgres_url, "--node-id", node,
                    "--public-url", balancer.url, "--stop-relays-on-exit",
                )  # fmt: skip
            async with httpx.AsyncClient(timeout=10) as http:
                http.base_url = httpx.URL(urls["a"])
                h = await login(http)
                await create_namespace(http, h, ns)
                killed = asyncio.Event()
                acked = {"a": 0, "b": 0}

                async def call(node: str, name: str) -> None:
                    base = urls[node]
                    try:
                        if state.get(name) == "present":
                            r = await http.delete(f"{base}/realtime/{ns}/room/{name}", headers=h)
                            if r.status_code in (200, 404):
                                state[name] = "absent"
                        else:
                            r = await http.post(f"{base}/realtime/{ns}/room", json={"name": name}, headers=h)
                            if r.status_code in (200, 409):
                                state[name] = "present"
                        acked[node] += r.status_code == 200
                    except httpx.HTTPError:
                        state[name] = "unknown"  # in flight when its node died

                async def worker(w: int) -> None:
                    for turn in range(4):  # want, delete, want (and delete again for every other name)
                        for i, name in enumerate(names[w::4]):
                            if turn < 3 + i % 2:
                                await call("b" if killed.is_set() else "ab"[(turn + i + w) % 2], name)

                workers = [asyncio.create_task(worker(w)) for w in range(4)]
                await wait_for(
                    lambda: acked["a"] >= 6 and sum(acked.values()) >= 14, timeout=30, interval=0.002
                )
                procs["a"].send_signal(signal.SIGKILL)
                killed.set()
                await asyncio.wait_for(asyncio.gather(*workers), 60)
                for name in names:  # what was in flight at the kill: asked again, of the survivor
                    if state.get(name) == "unknown":
                        await call("b", name)
                known = {name: s for name, s in state.items() if s != "unknown"}
                assert len(known) == len(names)
                http.base_url = httpx.URL(urls["b"])
                listed = (await http.get(f"/realtime/{ns}/room?limit=1000", headers=h)).json()["items"]
                present = sorted(n for n, s in known.items() if s == "present")
                assert 0 < len(present) < len(names)
                ended = [line for node in ports for line in ended_rooms(tmp_path / node)]
                assert sorted(r["name"] for r in listed) == present, ended  # every acknowledged change
                for name in present:  # none stuck: each gets (or keeps) its relay
                    await ready_room(http, h, ns, name)
                expected = dict.fromkeys(present, 1)
                relays = lambda: {n: len(p) for n, p in relay_pids(ns).items()}  # noqa: E731
                await settles(relays, expected, timeout=20, context=lambda: ended_rooms(tmp_path / "b"))
        finally:
            for proc in procs.values():
                proc.send_signal(signal.SIGTERM)
            for proc in procs.values():
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(15)
            await balancer.stop()
    assert procs["a"].returncode == -signal.SIGKILL


class WatchedStore(PostgresStore):
    """The real store, noting a relay's CPU quota at the moment its room's address is written."""

    def __init__(self, url: str) -> None:
        super().__init__(url)
        self.quota_when_published: dict[str, int | None] = {}

    async def put_room(self, record: RoomRecord) -> None:
        if record.ready and record.name not in self.quota_when_published and record.pid:
            self.quota_when_published[record.name] = pid_cpu_quota(record.pid)
        await super().put_room(record)


@needs_cgroups
async def test_a_relay_registered_through_another_node_is_capped_before_it_is_shown(
    tmp_path: Path, postgres_url: str
) -> None:
    """Node a forks the relays (no warm standbys: each starts uncapped, its start-up boost) and
    they register with node b: b shows no address before a has put the relay's CPU quota on."""
    ns = unique("capped")
    store = WatchedStore(postgres_url)
    b = ControlPlane(node_config(tmp_path, "b", postgres_url, provisioner="none"), store=store)
    await b.start()
    a_config = node_config(
        tmp_path, "a", postgres_url, relay_command=REAL_RELAY, relay_caps="cgroup", relay_warm_relays=0,
        public_url=b.url,
    )  # fmt: skip
    try:
        with cleanup_relays(ns):
            async with nodes(a_config) as (a,), httpx.AsyncClient(base_url=a.url, timeout=10) as http:
                h = await login(http)
                await create_namespace(http, h, ns)
                for name in ("r1", "r2"):
                    r = await http.post(f"/realtime/{ns}/room", json={"name": name}, headers=h)
                    assert r.status_code == 200
                for name in ("r1", "r2"):
                    await ready_room(http, h, ns, name)
                assert store.quota_when_published == {"r1": NANO.cpu_quota_us, "r2": NANO.cpu_quota_us}
                assert sorted(e["roomName"] for e in oplog(b) if e["event"] == "room.ready") == ["r1", "r2"]
    finally:
        await b.stop()


async def test_a_node_id_in_use_is_refused(
    tmp_path: Path, postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(postgres_store, "CLAIM_SECONDS", 0.5)
    async with nodes(node_config(tmp_path, "same", postgres_url, provisioner="none")):
        twin = ControlPlane(node_config(tmp_path / "twin", "same", postgres_url, provisioner="none"))
        with pytest.raises(ConnectionError, match="held by another running control plane"):
            await twin.start()
        await twin.stop()


def test_relay_token_reads_the_shared_key(tmp_path: Path, postgres_url: str) -> None:
    """`relay token --store` signs with the key the nodes share."""
    with threaded_control_plane(node_config(tmp_path, "a", postgres_url, provisioner="none")) as a:
        out = subprocess.run(
            [sys.executable, "-m", "relay.cli", "token", "--user", "u1", "--store", postgres_url,
             "--data-dir", str(tmp_path / "elsewhere")],
            capture_output=True, text=True, timeout=30, check=True,
            env={**os.environ, "RELAY_CLIENT_ID": CLIENT_ID, "RELAY_CLIENT_SECRET": CLIENT_SECRET},
        )  # fmt: skip
        claims = a.authority.verify_user_token(out.stdout.splitlines()[-1])
        assert claims is not None and claims.sub == "u1"


def test_relay_token_makes_no_key_in_an_unused_store(tmp_path: Path, postgres_url: str) -> None:
    """A key of its own would sign tokens no node accepts: one line says where it looked, exit 2."""
    out = subprocess.run(
        [sys.executable, "-m", "relay.cli", "token", "--user", "u1", "--store", postgres_url],
        capture_output=True, text=True, timeout=30, cwd=tmp_path,
    )  # fmt: skip
    assert out.returncode == 2 and out.stderr.count("\n") == 1, out.stderr
    assert "no signing key in the store's settings" in out.stderr
    assert postgres_url.rsplit("@", 1)[-1] not in out.stderr  # the URL, with its password, is not echoed
