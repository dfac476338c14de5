"""The relay under Agones, against a fake SDK sidecar: a real HTTP server on 127.0.0.1 that
implements exactly the documented REST paths (/ready, /health, /shutdown, /metadata/label,
/metadata/annotation, /gameserver, /watch/gameserver) with the documented bodies. No Kubernetes."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import re
import signal
import ssl
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

import relay.client as rc
from loadtest.certs import make_tls_files
from loadtest.controlplane import free_port
from relay.agent.agones import (
    ANNOTATION_AGENT_SECRET,
    ANNOTATION_CONTROL_URL,
    ANNOTATION_GS2_CLIENTS,
    ANNOTATION_NAMESPACE,
    ANNOTATION_ROOM,
    ANNOTATION_ROOM_KEY,
    SDK_ANNOTATION_ADDRESS,
    SDK_LABEL_ROOM,
    AgonesSDK,
    label_value,
    parse_assignment,
    run_agones,
    serve_agones,
)
from relay.agent.launch import RelayLaunch
from relay.control.app import ControlPlane
from relay.protocol import tokens
from relay.protocol.constants import CloseReason
from relay.protocol.keys import generate_room_key
from relay.server.config import RelayConfig
from tests.control.helpers import make_config, wait_for
from tests.control.test_agent import make_room
from tests.gs2 import wireclient as g

ROOT = Path(__file__).resolve().parents[2]
SDK_PREFIX = "agones.dev/sdk-"  # what the sidecar puts before SetLabel/SetAnnotation keys
HOST_PORT = 7777  # status.ports[0].port: the node's port, unlike the relay's containerPort
_LABEL_VALUE = re.compile(r"^([A-Za-z0-9]([A-Za-z0-9_.-]{0,61}[A-Za-z0-9])?)?$")
_NAME_PART = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9_.-]{0,61}[A-Za-z0-9])?$")


def valid_qualified_name(key: str) -> bool:
    """Kubernetes label/annotation key: optional DNS prefix, one "/", a name of at most 63."""
    prefix, _, name = key.rpartition("/")
    return "/" not in prefix and bool(_NAME_PART.match(name)) and len(prefix) <= 253


class FakeSidecar:
    """The Agones SDK server's REST surface, holding one GameServer (sdkGameServer JSON)."""

    PATHS = {
        "/ready": "POST",
        "/health": "POST",
        "/shutdown": "POST",
        "/metadata/label": "PUT",
        "/metadata/annotation": "PUT",
        "/gameserver": "GET",
        "/watch/gameserver": "GET",
    }

    def __init__(self, port: int = 0, host_port: int = HOST_PORT) -> None:
        self.port = port
        self.calls: list[tuple[str, str, Any]] = []
        self.gameserver: dict[str, Any] = {
            "object_meta": {
                "name": "relay-abcde",
                "namespace": "default",
                "uid": "1234",
                "resource_version": "1",
                "generation": "1",
                "creation_timestamp": "1700000000",
                "deletion_timestamp": "0",
                "annotations": {},
                "labels": {},
            },
            "status": {
                "state": "Scheduled",
                "address": "127.0.0.1",
                "ports": [{"name": "default", "port": host_port}],
            },
        }
        self.dropped: set[str] = set()  # paths whose requests get no answer (a sidecar restarting)
        self._server: asyncio.Server | None = None
        self._watchers: set[asyncio.StreamWriter] = set()
        self._connections: dict[asyncio.Task[Any], asyncio.StreamWriter] = {}

    @property
    def meta(self) -> dict[str, Any]:
        return self.gameserver["object_meta"]

    @property
    def state(self) -> str:
        return str(self.gameserver["status"]["state"])

    def count(self, method: str, path: str) -> int:
        return sum(1 for m, p, _ in self.calls if (m, p) == (method, path))

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for writer in self._connections.values():
            writer.close()
        await asyncio.gather(*self._connections, return_exceptions=True)

    # --- what the cluster does -------------------------------------------------------------------
    async def update(self, change: Callable[[dict[str, Any]], None]) -> None:
        change(self.gameserver)
        self.meta["resource_version"] = str(int(self.meta["resource_version"]) + 1)
        line = json.dumps({"result": self.gameserver}).encode() + b"\n"
        for writer in list(self._watchers):
            try:
                writer.write(b"%x\r\n%s\r\n" % (len(line), line))
                await writer.drain()
            except (ConnectionError, RuntimeError):
                self._watchers.discard(writer)

    async def allocate(self, annotations: dict[str, str]) -> None:
        """What a GameServerAllocation with metadata.annotations does."""

        def change(gs: dict[str, Any]) -> None:
            gs["status"]["state"] = "Allocated"
            gs["object_meta"]["annotations"].update(annotations)

        await self.update(change)

    async def delete(self) -> None:
        def change(gs: dict[str, Any]) -> None:
            gs["status"]["state"] = "Shutdown"
            gs["object_meta"]["deletion_timestamp"] = "1700000100"

        await self.update(change)

    # --- HTTP ------------------------------------------------------------------------------------
    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections[task] = writer
        try:
            while await self._one_request(reader, writer):
                pass
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.LimitOverrunError):
            pass
        finally:
            self._watchers.discard(writer)
            self._connections.pop(task, None)
            writer.close()

    async def _one_request(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
        method, target, _ = head[0].split(" ", 2)
        headers = {k.strip().lower(): v.strip() for k, _, v in (h.partition(":") for h in head[1:] if h)}
        raw = await reader.readexactly(int(headers.get("content-length", "0")))
        path = target.split("?", 1)[0]
        body: Any = None
        if raw:
            try:
                body = json.loads(raw)
            except ValueError:
                return self._reply(writer, 400, {"code": 3, "message": "body is not JSON"})
        self.calls.append((method, path, body))
        if path not in self.PATHS:
            return self._reply(writer, 404, {"code": 5, "message": "Not Found"})
        if self.PATHS[path] != method:
            return self._reply(writer, 405, {"code": 12, "message": "Method Not Allowed"})
        if path in self.dropped:
            writer.close()
            return False
        if path == "/watch/gameserver":
            writer.write(
                b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
            )
            self._watchers.add(writer)
            await self.update(lambda gs: None)  # the current state first, as the SDK server does
            await reader.read()  # held open until the client goes
            return False
        if path == "/gameserver":
            return self._reply(writer, 200, self.gameserver)
        if path in ("/ready", "/health", "/shutdown"):
            if body != {}:
                return self._reply(writer, 400, {"code": 3, "message": "body must be {}"})
            if path != "/health":
                state = "Ready" if path == "/ready" else "Shutdown"
                await self.update(lambda gs: gs["status"].__setitem__("state", state))
            return self._reply(writer, 200, {})
        # /metadata/label and /metadata/annotation: sdkKeyValue
        if not (
            isinstance(body, dict)
            and set(body) == {"key", "value"}
            and all(isinstance(v, str) for v in body.values())
        ):
            return self._reply(writer, 400, {"code": 3, "message": 'body must be {"key": .., "value": ..}'})
        key = SDK_PREFIX + body["key"]
        is_label = path == "/metadata/label"
        if not valid_qualified_name(key) or (is_label and not _LABEL_VALUE.match(body["value"])):
            # The real sidecar accepts it, then the Kubernetes update fails: be strict here.
            return self._reply(writer, 400, {"code": 3, "message": f"invalid {path}: {key}"})
        where = "labels" if is_label else "annotations"
        await self.update(lambda gs: gs["object_meta"][where].__setitem__(key, body["value"]))
        return self._reply(writer, 200, {})

    @staticmethod
    def _reply(writer: asyncio.StreamWriter, status: int, body: dict[str, Any]) -> bool:
        data = json.dumps(body).encode()
        writer.write(
            b"HTTP/1.1 %d X\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
            % (status, len(data), data)
        )
        return True


def room_annotations(key: str, room: str = "lobby") -> dict[str, str]:
    return {ANNOTATION_NAMESPACE: "ns", ANNOTATION_ROOM: room, ANNOTATION_ROOM_KEY: key}


async def exchange(a: rc.Client, b: rc.Client) -> None:
    a.send(b"hello")
    assert await b.next_event_of(rc.Received, 3, lambda e: e.data == b"hello") == rc.Received(
        a.connection_id, b"hello"
    )
    b.send(b"hi")
    assert await a.next_event_of(rc.Received, 3, lambda e: e.data == b"hi") == rc.Received(
        b.connection_id, b"hi"
    )


@contextlib.asynccontextmanager
async def sidecar_up(port: int = 0) -> Any:
    sidecar = FakeSidecar(port)
    await sidecar.start()
    try:
        yield sidecar
    finally:
        await sidecar.stop()


async def test_full_life_ready_allocate_serve_shutdown() -> None:
    port = free_port()
    base = RelayLaunch(RelayConfig(host="127.0.0.1", port=port, idle_timeout=1.0))
    async with sidecar_up() as sidecar:
        sdk = AgonesSDK(sidecar.port, retry_for=5)
        task = asyncio.create_task(run_agones(base, sdk, health_interval=0.05))
        await wait_for(lambda: sidecar.state == "Ready")
        lifecycle = [(m, p) for m, p, _ in sidecar.calls if p != "/health"]
        assert lifecycle[:2] == [("GET", "/gameserver"), ("POST", "/ready")]
        await wait_for(lambda: sidecar.count("POST", "/health") >= 2)  # pings while Ready too

        key = generate_room_key()
        await allocated(sidecar, room_annotations(key, room="Lobby #1"))
        assert sidecar.meta["annotations"][SDK_PREFIX + SDK_ANNOTATION_ADDRESS] == f"127.0.0.1:{HOST_PORT}"
        assert sidecar.meta["labels"][SDK_PREFIX + SDK_LABEL_ROOM] == "Lobby--1"
        assert ("PUT", "/metadata/label", {"key": SDK_LABEL_ROOM, "value": "Lobby--1"}) in sidecar.calls

        # The relay binds base.port (the containerPort); players would come through HOST_PORT.
        a = await rc.connect("127.0.0.1", port, key, "alice", transport="udp", timeout=3)
        b = await rc.connect("127.0.0.1", port, key, "bob", transport="udp", timeout=3)
        await exchange(a, b)
        pings = sidecar.count("POST", "/health")
        await asyncio.sleep(0.5)
        # on the relay's passes, or twice the interval apart in a room this quiet
        assert sidecar.count("POST", "/health") >= pings + 3
        await a.close()
        await b.close()

        assert await asyncio.wait_for(task, 5) == CloseReason.IDLE  # the room idles out
        await sdk.aclose()
        assert sidecar.calls[-1] == ("POST", "/shutdown", {})
        assert sidecar.state == "Shutdown"
        for method, path, body in sidecar.calls:
            if path in ("/ready", "/health", "/shutdown"):
                assert (method, body) == ("POST", {})
            assert path in FakeSidecar.PATHS


async def test_an_allocated_relay_takes_its_gs2_setting_and_names_its_room_in_its_metrics() -> None:
    """relay_gs2_clients: false reached local relays only; an Agones relay accepted GS2 game
    clients (in clear) whatever the operator had said. The allocation now carries it. And
    Prometheus on Kubernetes cannot label a relay with its room (Agones keeps it on the
    GameServer, not the Pod): the relay's own series carry it."""
    port, admin = free_port(), free_port()
    base = RelayLaunch(RelayConfig(host="127.0.0.1", port=port, idle_timeout=5.0, admin_port=admin))
    async with sidecar_up() as sidecar:
        sdk = AgonesSDK(sidecar.port, retry_for=5)
        task = asyncio.create_task(run_agones(base, sdk, health_interval=0.05))
        await wait_for(lambda: sidecar.state == "Ready")
        key = generate_room_key()
        await allocated(sidecar, {**room_annotations(key), ANNOTATION_GS2_CLIENTS: "false"})
        gs2 = await g.Gs2Client.open(port, key)
        await gs2.hello(tokens.mint(Ed25519PrivateKey.generate(), "gs2-player", 60))
        assert await gs2.closed() == (1008, "handshake failed")
        a = await rc.connect("127.0.0.1", port, key, "alice", transport="ws", timeout=3)
        b = await rc.connect("127.0.0.1", port, key, "bob", transport="udp", timeout=3)
        await exchange(a, b)
        async with httpx.AsyncClient() as http:
            metrics = (await http.get(f"http://127.0.0.1:{admin}/metrics")).text
        assert 'relay_messages_in_total{gs2_namespace="ns",gs2_room="lobby",transport="udp"}' in metrics
        await a.close()
        await b.close()
        assert await asyncio.wait_for(task, 10) == CloseReason.IDLE
        await sdk.aclose()


def test_the_gs2_clients_annotation_is_true_or_false() -> None:
    def assigned(**notes: str) -> bool:
        found = parse_assignment({"object_meta": {"annotations": {**room_annotations(key), **notes}}})
        assert found is not None
        return found.gs2_clients

    key = generate_room_key()
    assert assigned() is True
    assert assigned(**{ANNOTATION_GS2_CLIENTS: " False"}) is False
    assert assigned(**{ANNOTATION_GS2_CLIENTS: "true"}) is True
    with pytest.raises(ValueError, match="gs2-clients"):
        assigned(**{ANNOTATION_GS2_CLIENTS: "no"})


async def test_bad_room_key_is_waited_past(caplog: pytest.LogCaptureFixture) -> None:
    port = free_port()
    async with sidecar_up() as sidecar:
        sdk = AgonesSDK(sidecar.port, retry_for=5)
        stop = asyncio.Event()
        task = asyncio.create_task(
            run_agones(RelayLaunch(RelayConfig(port=port)), sdk, health_interval=0.05, stop=stop)
        )
        await wait_for(lambda: sidecar.state == "Ready")
        await sidecar.allocate(room_annotations("not-a-room-key-secret"))
        await asyncio.sleep(0.4)
        assert not task.done()
        assert SDK_PREFIX + SDK_ANNOTATION_ADDRESS not in sidecar.meta["annotations"]
        assert "realtime.gs2.io/room-key" in caplog.text and "not-a-room-key-secret" not in caplog.text

        key = generate_room_key()
        await allocated(sidecar, room_annotations(key))
        client = await rc.connect("127.0.0.1", port, key, "carol", transport="udp", timeout=3)
        stop.set()  # SIGTERM: CLOSING (shutdown) to the members, then /shutdown
        closing = await client.next_event_of(rc.ClosingEvent, 3)
        assert closing.reason == CloseReason.SHUTDOWN
        assert await asyncio.wait_for(task, 5) == CloseReason.SHUTDOWN
        assert sidecar.calls[-1] == ("POST", "/shutdown", {})
        await client.close()
        await sdk.aclose()


async def test_gameserver_deleted_while_waiting() -> None:
    async with sidecar_up() as sidecar:
        sdk = AgonesSDK(sidecar.port, retry_for=5)
        task = asyncio.create_task(
            run_agones(RelayLaunch(RelayConfig(port=free_port())), sdk, health_interval=0.05)
        )
        await wait_for(lambda: sidecar.state == "Ready")
        await sidecar.delete()
        assert await asyncio.wait_for(task, 5) == CloseReason.SHUTDOWN
        assert sidecar.count("PUT", "/metadata/annotation") == 0
        await sdk.aclose()


async def test_gameserver_shutdown_closes_a_running_room() -> None:
    port = free_port()
    async with sidecar_up() as sidecar:
        sdk = AgonesSDK(sidecar.port, retry_for=5)
        task = asyncio.create_task(run_agones(RelayLaunch(RelayConfig(port=port)), sdk, health_interval=0.05))
        await wait_for(lambda: sidecar.state == "Ready")
        key = generate_room_key()
        await allocated(sidecar, room_annotations(key))
        client = await rc.connect("127.0.0.1", port, key, "dave", transport="ws", timeout=3)
        await sidecar.delete()  # kubectl delete gameserver
        assert (await client.next_event_of(rc.ClosingEvent, 3)).reason == CloseReason.SHUTDOWN
        assert await asyncio.wait_for(task, 5) == CloseReason.SHUTDOWN
        await client.close()
        await sdk.aclose()


async def test_ready_retries_until_the_sidecar_is_up() -> None:
    sidecar_port = free_port()
    sdk = AgonesSDK(sidecar_port, retry_for=10)
    stop = asyncio.Event()
    task = asyncio.create_task(
        run_agones(RelayLaunch(RelayConfig(port=free_port())), sdk, health_interval=0.05, stop=stop)
    )
    await asyncio.sleep(0.5)
    assert not task.done()
    async with sidecar_up(sidecar_port) as sidecar:
        await wait_for(lambda: sidecar.state == "Ready")
        assert sidecar.count("POST", "/ready") == 1
        stop.set()
        assert await asyncio.wait_for(task, 5) == CloseReason.SHUTDOWN
        assert sidecar.calls[-1] == ("POST", "/shutdown", {})
    await sdk.aclose()


async def test_sigterm_does_not_wait_out_the_retries_of_ready() -> None:
    """Found in review: the relay's Ready call retries for a minute while the sidecar does not
    answer it, and a SIGTERM meanwhile waited all of it out."""
    async with sidecar_up() as sidecar:
        sidecar.dropped.add("/ready")
        sdk = AgonesSDK(sidecar.port, retry_for=60)
        stop = asyncio.Event()
        task = asyncio.create_task(
            run_agones(RelayLaunch(RelayConfig(port=free_port())), sdk, health_interval=0.05, stop=stop)
        )
        await wait_for(lambda: sidecar.count("POST", "/ready") >= 2)
        stop.set()
        assert await asyncio.wait_for(task, 3) == CloseReason.SHUTDOWN
        assert sidecar.state != "Ready"
        await sdk.aclose()


async def test_with_control_plane_registers_host_port_and_drains_on_delete(tmp_path: Path) -> None:
    port = free_port()
    # nobody joins: the room is quiet, so its idle heartbeats are the ones that learn of the delete
    base = RelayLaunch(RelayConfig(port=port), heartbeat_interval=0.1, idle_heartbeat_interval=0.1)
    async with ControlPlane(make_config(tmp_path, provisioner="none")) as cp, sidecar_up() as sidecar:
        secret = await make_room(cp, "ag", "r")
        sdk = AgonesSDK(sidecar.port, retry_for=5)
        task = asyncio.create_task(run_agones(base, sdk, health_interval=0.05))
        await wait_for(lambda: sidecar.state == "Ready")
        record = await cp.store.get_room("ag", "r")
        assert record is not None
        notes = {
            ANNOTATION_NAMESPACE: "ag",
            ANNOTATION_ROOM: "r",
            ANNOTATION_ROOM_KEY: record.encryption_key,
            ANNOTATION_AGENT_SECRET: secret,
            ANNOTATION_CONTROL_URL: cp.internal_url,
        }
        await sidecar.allocate(notes)

        async def registered() -> None:
            while True:
                room = await cp.store.get_room("ag", "r")
                if room is not None and room.state == "ready":
                    assert (room.ip_address, room.port) == ("127.0.0.1", HOST_PORT)
                    return
                await asyncio.sleep(0.05)

        await asyncio.wait_for(registered(), 5)
        await cp.rooms.delete_room("ag", "r")
        assert await asyncio.wait_for(task, 5) == CloseReason.DELETED
        assert sidecar.calls[-1] == ("POST", "/shutdown", {})
        await sdk.aclose()


def test_label_value_is_a_valid_kubernetes_label_value() -> None:
    for room in ("lobby", "Lobby #1", "-x-", "a" * 100, "日本", "a.b_c-d"):
        assert _LABEL_VALUE.match(label_value(room)), room
    assert label_value("a.b_c-d") == "a.b_c-d"


@contextlib.asynccontextmanager
async def serving_under_agones(
    sidecar: FakeSidecar, port: int, **env: str
) -> AsyncIterator[asyncio.subprocess.Process]:
    """`relay serve` as a Fleet's pod runs it (the sidecar's port in AGONES_SDK_HTTP_PORT, none
    of this environment's RELAY_* but `env`), Ready at the sidecar; stopped at the end unless the
    test ended it."""
    environ = {k: v for k, v in os.environ.items() if not k.startswith("RELAY_")}
    environ |= {"AGONES_SDK_HTTP_PORT": str(sidecar.port), **env}
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "relay.cli",
        "serve",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--log-level",
        "warning",
        cwd=ROOT,
        env=environ,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        await wait_for(lambda: sidecar.state == "Ready", 15)
        yield proc
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def allocated(sidecar: FakeSidecar, notes: dict[str, str]) -> None:
    """Allocates the game server with these annotations; returns once the relay has annotated
    where it serves the room."""
    await sidecar.allocate(notes)
    await wait_for(lambda: SDK_PREFIX + SDK_ANNOTATION_ADDRESS in sidecar.meta["annotations"])


async def test_relay_serve_subprocess_under_agones() -> None:
    port = free_port()
    async with sidecar_up() as sidecar, serving_under_agones(sidecar, port) as proc:
        key = generate_room_key()
        await allocated(sidecar, room_annotations(key))
        a = await rc.connect("127.0.0.1", port, key, "a", transport="udp", timeout=3)
        b = await rc.connect("127.0.0.1", port, key, "b", transport="ws", timeout=3)
        await exchange(a, b)
        proc.send_signal(signal.SIGTERM)
        assert (await a.next_event_of(rc.ClosingEvent, 3)).reason == CloseReason.SHUTDOWN
        assert await asyncio.wait_for(proc.wait(), 5) == 0
        assert sidecar.calls[-1] == ("POST", "/shutdown", {})
        await a.close()
        await b.close()


async def test_a_relay_of_the_fleet_serves_wss_at_its_advertised_name(tmp_path: Path) -> None:
    """The pod template of docs/operations.md "TLS": the certificate and the per-node name come
    from the environment (RELAY_TLS_CERT, RELAY_TLS_KEY, RELAY_ADVERTISE_HOST), the name is what
    the relay reports, and a member joins over wss:// at it."""
    files = make_tls_files(tmp_path)
    port = free_port()
    tls = {"RELAY_TLS_CERT": str(files.cert), "RELAY_TLS_KEY": str(files.key)}
    async with (
        sidecar_up() as sidecar,
        serving_under_agones(sidecar, port, RELAY_ADVERTISE_HOST="localhost", **tls),
    ):
        key = generate_room_key()
        await allocated(sidecar, room_annotations(key))
        assert sidecar.meta["annotations"][SDK_PREFIX + SDK_ANNOTATION_ADDRESS].startswith("localhost")
        trusting = ssl.create_default_context(cafile=str(files.ca))
        a = await rc.connect("localhost", port, key, "a", transport="ws", tls=trusting, timeout=3)
        b = await rc.connect("localhost", port, key, "b", transport="udp", timeout=3)
        await exchange(a, b)
        await a.close()
        await b.close()


def test_a_certificate_the_relay_cannot_load_stops_it_before_it_is_ready(tmp_path: Path) -> None:
    """Under Agones a relay waits for its room: a certificate it could not serve is said at its
    start, in one line, not when a room is allocated to it (the sidecar is never asked)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RELAY_")}
    env |= {
        "AGONES_SDK_HTTP_PORT": str(free_port()),  # nothing listens there: not asked
        "RELAY_TLS_CERT": str(tmp_path / "missing.pem"),
        "RELAY_TLS_KEY": str(tmp_path / "missing-key.pem"),
    }
    done = subprocess.run(
        [sys.executable, "-m", "relay.cli", "serve", "--port", str(free_port())],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip().splitlines() == [
        f"relay serve: cannot load the TLS certificate {tmp_path / 'missing.pem'} with key "
        f"{tmp_path / 'missing-key.pem'}: [Errno 2] No such file or directory"
    ]


async def test_no_sidecar_is_logged_sparingly_and_sigterm_ends_the_wait() -> None:
    """Without a sidecar the relay wrote a line per retry (215 in 8 s) and SIGTERM waited out 60 s
    of retries: now repeated failures are logged at 1, 2, 4, 8, ... and SIGTERM ends it at once."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RELAY_")}
    env["AGONES_SDK_HTTP_PORT"] = str(free_port())  # nothing listens there
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "relay.cli",
        "serve",
        "--port",
        str(free_port()),
        cwd=ROOT,
        env=env,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    assert proc.stderr is not None
    stderr = proc.stderr
    lines: list[str] = []

    async def retried(times: int) -> None:
        """Until the relay has logged its `times`-th failure in a row (retries with backoff)."""
        while line := (await stderr.readline()).decode():
            lines.append(line.rstrip("\n"))
            with contextlib.suppress(ValueError, AttributeError):
                if json.loads(line).get("failures", 0) >= times:
                    return

    try:
        # 8 tries take about 4 s (up to 0.1 s apart at first, doubling to 2 s); what it logged by
        # then, or by a timeout, is checked below
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(retried(8), 15)
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 3) == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    lines += (await stderr.read()).decode().splitlines()
    records = [json.loads(line) for line in lines]  # JSON lines, no traceback
    failures = [r for r in records if "not answering" in r["message"]]
    assert 1 <= len(failures) <= 6, lines
    assert [r["failures"] for r in failures] == [2**i for i in range(len(failures))]
    assert len(records) <= len(failures) + 3, lines


async def test_a_sidecar_that_never_answers_is_one_error_and_status_1(
    caplog: pytest.LogCaptureFixture,
) -> None:
    sdk = AgonesSDK(free_port(), retry_for=1.5)
    launch = RelayLaunch(RelayConfig(port=free_port()))
    with caplog.at_level(logging.INFO, logger="relay.agent.agones"):
        assert await asyncio.wait_for(serve_agones(launch, sdk), 10) == 1
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and "is this a GameServer pod?" in errors[0].getMessage()
    assert len(caplog.records) <= 6, [r.getMessage() for r in caplog.records]
    assert not any("shutdown" in r.getMessage() for r in caplog.records)  # nobody to tell
