"""The control plane over HTTPS (api_tls_cert): the API, and the relays' internal API, which
this node's relays reach and verify as deployed (the real `relay serve`, its agent's own HTTP
client); a certificate they could not verify stops the start; a renewal is served without a
restart."""

from __future__ import annotations

import asyncio
import ssl
import time
from pathlib import Path

import httpx
import pytest

import relay.client as rc
import relay.control.app as control_app
import relay.server.tls as relay_tls
from loadtest.certs import TlsFiles, make_tls_files
from relay.agent.http11 import Http11Client, HttpError
from relay.control.app import ControlPlane
from relay.host.spawner import pid_alive
from relay.settings import SettingsError
from tests.control.helpers import REAL_RELAY, create_namespace, login, make_config, ready_room, wait_for
from tests.server.helpers import metric

pytestmark = pytest.mark.slow
DAY = 86400.0
EXPIRY = "relay_control_tls_certificate_expiry_timestamp_seconds"


def https(cp: ControlPlane, files: TlsFiles) -> httpx.AsyncClient:
    """A client of the API that trusts the test CA alone."""
    return httpx.AsyncClient(
        base_url=cp.url, timeout=5, verify=ssl.create_default_context(cafile=str(files.ca))
    )


async def test_rooms_live_through_an_https_control_plane(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    files = make_tls_files(tmp_path)
    monkeypatch.setenv("SSL_CERT_FILE", str(files.ca))  # the relays' trust (a private CA)
    config = make_config(
        tmp_path / "data", relay_command=REAL_RELAY, api_tls_cert=files.cert, api_tls_key=files.key
    )
    async with ControlPlane(config) as cp, https(cp, files) as http:
        assert cp.url.startswith("https://127.0.0.1:") and cp.internal_url.startswith("https://")
        h = await login(http)
        await create_namespace(http, h, "game")
        assert (await http.post("/realtime/game/room", json={"name": "m"}, headers=h)).status_code == 200
        # the relay registered its address over HTTPS, verifying the certificate
        item = await ready_room(http, h, "game", "m")
        pid = (await cp.store.get_room("game", "m")).pid
        host, port, key = item["ipAddress"], item["port"], item["encryptionKey"]
        a = await rc.connect(host, port, key, "a", transport="udp")
        b = await rc.connect(host, port, key, "b", transport="ws")
        a.send(b"hi")
        assert (await b.next_event_of(rc.Received, 5)).data == b"hi"
        metrics = await http.get("/metrics")
        expires = metric(metrics.text, EXPIRY)
        assert 0.9 * DAY < expires - time.time() <= DAY  # the test certificate's day
        # the agent's client verifies what it reaches: this process's, whose trust was taken
        # before SSL_CERT_FILE named the test CA, is refused the certificate
        agent_http = Http11Client(cp.internal_url)
        with pytest.raises(HttpError, match="CERTIFICATE_VERIFY_FAILED"):
            await agent_http.request("POST", "/register", b"{}")
        await agent_http.aclose()
        # the relay's end reaches the control plane the same way: deleted, it reports and exits
        assert (await http.delete("/realtime/game/room/m", headers=h)).status_code == 200
        assert (await a.next_event_of(rc.ClosingEvent, 5)) is not None
        await wait_for(lambda: not pid_alive(pid), timeout=5)
        for c in (a, b):
            await c.close()
        # plain HTTP is not answered on the HTTPS port
        async with httpx.AsyncClient(base_url=cp.url.replace("https", "http"), timeout=3) as plain:
            with pytest.raises(httpx.HTTPError):
                await plain.get("/healthz")


async def test_a_certificate_this_nodes_relays_cannot_verify_stops_the_start(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    files = make_tls_files(tmp_path, ("elsewhere.example",))  # not the address relays would use
    monkeypatch.setenv("SSL_CERT_FILE", str(files.ca))
    config = make_config(tmp_path / "data", api_tls_cert=files.cert, api_tls_key=files.key)
    cp = ControlPlane(config)
    with pytest.raises(
        SettingsError, match=r"relays could not verify it at https://127\.0\.0\.1:.*public_url"
    ):
        await cp.start()
    with pytest.raises(OSError):  # and it does not stay listening
        await asyncio.open_connection("127.0.0.1", cp.port)


def test_a_certificate_without_its_key_is_refused(tmp_path: Path) -> None:
    files = make_tls_files(tmp_path)
    with pytest.raises(ValueError, match="api_tls_cert and api_tls_key go together"):
        make_config(tmp_path / "data", api_tls_cert=files.cert)


async def test_a_renewed_certificate_is_served_without_a_restart(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = make_tls_files(tmp_path, tag="-1")
    monkeypatch.setenv("SSL_CERT_FILE", str(first.ca))
    monkeypatch.setattr(control_app, "RELOAD_CHECK", 0.05)
    monkeypatch.setattr(relay_tls, "RELOAD_CHECK", 0.05)
    config = make_config(
        tmp_path / "data", provisioner="none", api_tls_cert=first.cert, api_tls_key=first.key
    )
    async with ControlPlane(config) as cp:
        async with https(cp, first) as http:
            assert (await http.get("/healthz")).status_code == 200
        renewed = make_tls_files(tmp_path, tag="-2", days=30)
        first.cert.write_bytes(renewed.cert.read_bytes())
        first.key.write_bytes(renewed.key.read_bytes())

        async def serves_the_renewal() -> bool:
            try:
                async with https(cp, renewed) as http:
                    return (await http.get("/healthz")).status_code == 200
            except httpx.ConnectError:
                return False

        await wait_for(serves_the_renewal, timeout=5)
        expires = metric(
            cp.metrics.render().decode(), "relay_control_tls_certificate_expiry_timestamp_seconds"
        )
        assert 29.9 * DAY < expires - time.time() <= 30 * DAY  # the renewal's
