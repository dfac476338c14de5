"""A whole room life with the real relay (`relay serve`) and the real Python client: wantRoom, poll
getRoom, two clients exchange a message, deleteRoom, both get CLOSING "deleted", the relay exits."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
from pathlib import Path

import httpx
import pytest

import relay.client as rc
from loadtest.certs import make_tls_files
from relay.control.app import ControlPlane
from relay.host.spawner import pid_alive
from relay.protocol.constants import CloseReason
from tests.control.helpers import (
    CLIENT_ID,
    CLIENT_SECRET,
    REAL_RELAY,
    create_namespace,
    login,
    make_config,
    ready_room,
    wait_for,
)

pytestmark = pytest.mark.slow


async def next_of(client: rc.Client, kind: type, timeout: float = 5.0):
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        left = deadline - asyncio.get_running_loop().time()
        event = await client.next_event(timeout=max(0.01, left))
        if isinstance(event, kind):
            return event


async def test_full_room_life(tmp_path: Path) -> None:
    config = make_config(tmp_path, relay_command=REAL_RELAY)
    async with ControlPlane(config) as cp, httpx.AsyncClient(base_url=cp.url, timeout=5) as http:
        r = await http.post(
            "/identifier/projectToken/login", json={"client_id": CLIENT_ID, "client_secret": CLIENT_SECRET}
        )
        h = {"Authorization": "Bearer " + r.json()["access_token"]}
        ns = {"name": "game", "serverType": "relay", "serverSpec": "realtime1.nano"}
        assert (await http.post("/realtime/", json=ns, headers=h)).status_code == 200
        want = await http.post(
            "/realtime/game/room", json={"name": "match-1", "notificationUserIds": ["a"]}, headers=h
        )
        assert want.status_code == 200 and want.json()["item"]["ipAddress"] is None

        async def ready() -> dict | None:
            item = (await http.get("/realtime/game/room/match-1", headers=h)).json()["item"]
            return item if item["ipAddress"] else None

        item = await wait_for(ready, timeout=20)
        pid = (await cp.store.get_room("game", "match-1")).pid
        a = await rc.connect(item["ipAddress"], item["port"], item["encryptionKey"], "alice", transport="udp")
        b = await rc.connect(item["ipAddress"], item["port"], item["encryptionKey"], "bob", transport="ws")
        try:
            a.send(b"hello bob")
            got = await next_of(b, rc.Received)
            assert got.data == b"hello bob" and got.sender == a.connection_id
            assert (await http.delete("/realtime/game/room/match-1", headers=h)).status_code == 200
            for client in (a, b):
                closing = await next_of(client, rc.ClosingEvent, timeout=5)
                assert closing.reason == CloseReason.DELETED
        finally:
            for client in (a, b):
                await client.close()
        await wait_for(lambda: not pid_alive(pid), timeout=5)
        assert (await http.get("/realtime/game/room/match-1", headers=h)).status_code == 404


@pytest.mark.parametrize("spawner", ["zygote", "subprocess"])
async def test_a_relay_gets_none_of_the_control_planes_secrets(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, spawner: str
) -> None:
    """Found in review: RELAY_STORE_URL (the PostgreSQL password; with PostgreSQL the store holds
    the token signing key too) and libpq's PG* variables reached every relay's environment."""
    secrets = {
        "RELAY_CLIENT_SECRET": "project-secret",
        "RELAY_STORE_URL": "postgresql://gs2relay:db-password@db/gs2relay",
        "PGPASSWORD": "db-password",
        "RELAY_WEBHOOK_URL": "http://hooks.example/secret-path",
    }
    for name, value in secrets.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("RELAY_TEST_HARMLESS", "kept")  # anything else is handed on
    config = make_config(tmp_path, relay_command=REAL_RELAY, relay_spawner=spawner, relay_caps="off")
    async with ControlPlane(config) as cp, httpx.AsyncClient(base_url=cp.url, timeout=5) as http:
        h = await login(http)
        await create_namespace(http, h, "env")
        assert (await http.post("/realtime/env/room", json={"name": "r"}, headers=h)).status_code == 200

        async def ready() -> int | None:
            record = await cp.store.get_room("env", "r")
            return record.pid if record is not None and record.ready else None

        pid = await wait_for(ready, timeout=20)
        environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        names = {entry.split(b"=", 1)[0].decode() for entry in environ if entry}
        assert "RELAY_TEST_HARMLESS" in names
        assert not names & set(secrets), names & set(secrets)
        assert not any(b"db-password" in entry or b"project-secret" in entry for entry in environ)


@pytest.mark.parametrize("rooms_per_process", [1, 2])
async def test_rooms_of_a_control_plane_with_a_certificate_serve_wss(
    tmp_path: Path, rooms_per_process: int
) -> None:
    """relay_extra_args hand every local relay the certificate (each room of a group process too);
    advertise_host names the host as the certificate does; in each room a browser-like member
    joins over wss://, another over UDP."""
    files = make_tls_files(tmp_path)
    config = make_config(
        tmp_path / "data",
        relay_command=REAL_RELAY,
        relay_extra_args=("--tls-cert", str(files.cert), "--tls-key", str(files.key)),
        advertise_host="localhost",
        relay_rooms_per_process=rooms_per_process,
    )
    trusting = ssl.create_default_context(cafile=str(files.ca))
    async with ControlPlane(config) as cp, httpx.AsyncClient(base_url=cp.url, timeout=5) as http:
        h = await login(http)
        await create_namespace(http, h, "game")
        for name in ("m", "n"):
            want = await http.post("/realtime/game/room", json={"name": name}, headers=h)
            assert want.status_code == 200
        pids = set()
        for name in ("m", "n"):
            item = await ready_room(http, h, "game", name)
            assert item["ipAddress"] == "localhost"
            pids.add((await cp.store.get_room("game", name)).pid)
            host, port, key = item["ipAddress"], item["port"], item["encryptionKey"]
            a = await rc.connect(host, port, key, "alice", transport="ws", tls=trusting)
            b = await rc.connect(host, port, key, "bob", transport="udp")
            try:
                a.send(b"over tls")
                got = await next_of(b, rc.Received)
                assert got.data == b"over tls" and got.sender == a.connection_id
                b.send(b"back")
                got = await next_of(a, rc.Received)
                assert got.data == b"back" and got.sender == b.connection_id
            finally:
                for client in (a, b):
                    await client.close()
        assert len(pids) == 3 - rooms_per_process  # a process each, or both rooms in one


def _ipv6_loopback() -> bool:
    with contextlib.suppress(OSError), socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s:
        s.bind(("::1", 0))
        return True
    return False


@pytest.mark.skipif(not _ipv6_loopback(), reason="this machine has no IPv6 loopback (::1) to listen on")
async def test_a_control_plane_on_ipv6_gives_its_relays_an_internal_url_they_can_use(tmp_path: Path) -> None:
    """A control plane listening on ::1 names itself http://[::1]:PORT: its relays' control URL
    (without the brackets no relay could parse it, and every room failed to register)."""
    config = make_config(tmp_path, host="::1", relay_command=REAL_RELAY)
    async with ControlPlane(config) as cp, httpx.AsyncClient(base_url=cp.url, timeout=5) as http:
        assert cp.url.startswith("http://[::1]:") and cp.internal_url == cp.url + "/internal"
        h = await login(http)
        await create_namespace(http, h, "game")
        assert (await http.post("/realtime/game/room", json={"name": "v6"}, headers=h)).status_code == 200
        item = await ready_room(http, h, "game", "v6")  # its relay registered at [::1]
        a = await rc.connect(item["ipAddress"], item["port"], item["encryptionKey"], "a", transport="udp")
        b = await rc.connect(item["ipAddress"], item["port"], item["encryptionKey"], "b", transport="ws")
        try:
            a.send(b"over v6 control")
            got = await next_of(b, rc.Received)
            assert got.data == b"over v6 control"
        finally:
            for client in (a, b):
                await client.close()
