"""`relay dev`'s demo page and its dev-only API (relay/control/demo_api.py, docs/security.md): what
it serves, to whom, and that it hands out the `demo` namespace's rooms and nothing else."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI

from relay.control.app import ControlPlane
from relay.control.cli import _parser, build_config
from relay.control.demo_api import DEMO_HEADER, is_loopback, mount_demo
from tests.control.helpers import login, make_config, ready_room

pytestmark = pytest.mark.slow
API = {DEMO_HEADER: "1"}


async def test_the_demo_api_hands_out_demo_rooms_only(tmp_path: Path) -> None:
    async with (
        ControlPlane(make_config(tmp_path, demo=True, relay_require_user_tokens=True)) as cp,
        httpx.AsyncClient(base_url=cp.url, timeout=20) as http,
    ):
        page = await http.get("/demo/")
        assert page.status_code == 200 and "text/html" in page.headers["content-type"]
        for name in ("demo.js", "relay-client.js", "relay-worker.js", "demo.css"):
            assert (await http.get(f"/demo/{name}")).status_code == 200
        assert (await http.get("/demo", follow_redirects=False)).headers["location"] == "/demo/"
        assert (await http.get("/demo/..%2Fapp.py")).status_code == 404
        assert "/demo/api/rooms" not in (await http.get("/openapi.json")).text

        # Cross-site pages cannot call it (no header without a preflight), nor DNS-rebinding ones.
        assert (await http.get("/demo/api/rooms")).status_code == 403
        assert (await http.get("/demo/api/rooms", headers={**API, "Host": "evil.example"})).status_code == 403
        assert (await http.get("/demo/", headers={"Host": "evil.example:7700"})).status_code == 403

        assert (await http.get("/demo/api/rooms", headers=API)).json() == {"namespace": "demo", "rooms": []}
        assert (await http.post("/demo/api/rooms", json={"name": "../x"}, headers=API)).status_code == 400
        created = await http.post("/demo/api/rooms", json={"name": "lobby"}, headers=API)
        assert created.status_code == 200 and created.json()["name"] == "lobby"
        again = await http.post("/demo/api/rooms", json={"name": "lobby"}, headers=API)
        assert again.status_code == 200  # picking an existing room is not an error
        ticket = (
            await http.post("/demo/api/rooms/lobby/ticket", json={"userId": "alice"}, headers=API)
        ).json()

        h = await login(http)
        room = await ready_room(http, h, "demo", "lobby")
        assert ticket["url"] == f"ws://{room['ipAddress']}:{room['port']}/"
        assert ticket["encryptionKey"] == room["encryptionKey"]
        claims = cp.authority.verify_user_token(ticket["accessToken"])
        assert claims is not None and claims.sub == "alice"
        listed = (await http.get("/demo/api/rooms", headers=API)).json()["rooms"]
        assert listed == [{"name": "lobby", "ready": True}]

        # Rooms of other namespaces stay out of reach.
        ns = {"name": "game", "serverType": "relay", "serverSpec": "realtime1.nano"}
        assert (await http.post("/realtime/", json=ns, headers=h)).status_code == 200
        assert (await http.post("/realtime/game/room", json={"name": "secret"}, headers=h)).status_code == 200
        await ready_room(http, h, "game", "secret")
        missing = await http.post("/demo/api/rooms/secret/ticket", json={"userId": "alice"}, headers=API)
        assert missing.status_code == 404


async def test_the_demo_is_off_unless_asked_for(tmp_path: Path) -> None:
    async with (
        ControlPlane(make_config(tmp_path, provisioner="none")) as cp,
        httpx.AsyncClient(base_url=cp.url) as http,
    ):
        assert (await http.get("/demo/")).status_code == 404
        assert (await http.get("/demo/api/rooms", headers=API)).status_code == 404


def test_the_demo_needs_dev_and_a_loopback_bind() -> None:
    assert build_config(_parser("relay dev", dev=True).parse_args([]), dev=True, environ={}).demo
    assert not build_config(_parser("relay control", dev=False).parse_args([]), dev=False, environ={}).demo
    config = make_config(Path("unused"), demo=True, host="0.0.0.0")
    assert not mount_demo(FastAPI(), None, None, None, config)  # type: ignore[arg-type]
    assert [
        h for h in ("127.0.0.1", "127.0.0.1:7700", "localhost:7700", "[::1]:7700", "::1") if is_loopback(h)
    ] == [
        "127.0.0.1",
        "127.0.0.1:7700",
        "localhost:7700",
        "[::1]:7700",
        "::1",
    ]
    assert not [
        h
        for h in ("0.0.0.0", "10.0.0.1:7700", "evil.example", "localhost.evil.example", "")
        if is_loopback(h)
    ]
