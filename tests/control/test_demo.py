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


async def test_the_demo_page_cannot_be_framed_nor_run_foreign_scripts(tmp_path: Path) -> None:
    """A page that is handed room keys and tokens: another site cannot frame it (clickjacking), it
    runs only its own files (no inline script, no other origin's), nothing of it is sniffed into
    another type, and the API's answers are never cached; errors included."""
    async with (
        ControlPlane(make_config(tmp_path, demo=True, provisioner="none")) as cp,
        httpx.AsyncClient(base_url=cp.url, timeout=20) as http,
    ):
        answers = {
            "page": await http.get("/demo/"),
            "script": await http.get("/demo/demo.js"),
            "worker": await http.get("/demo/relay-worker.js"),
            "missing": await http.get("/demo/nothing.js"),
            "foreign host": await http.get("/demo/", headers={"Host": "evil.example"}),
            "api": await http.get("/demo/api/rooms", headers=API),
            "api without header": await http.post("/demo/api/rooms", json={"name": "lobby"}),
            "api bad body": await http.post("/demo/api/rooms", json={"name": "../x"}, headers=API),
        }
        assert [a.status_code for a in answers.values()] == [200, 200, 200, 404, 403, 200, 403, 400]
        for what, answer in answers.items():
            h = answer.headers
            csp = {
                d.split()[0]: d.split()[1:]
                for d in h.get("content-security-policy", "").split(";")
                if d.strip()
            }
            assert csp.get("frame-ancestors") == ["'none'"] and h.get("x-frame-options") == "DENY", what
            script = csp.get("script-src", [])
            assert csp.get("default-src") == ["'none'"] and "'self'" in script, what
            assert "'unsafe-inline'" not in script and not [s for s in script if ":" in s], what
            assert h.get("x-content-type-options") == "nosniff", what
            assert h.get("cross-origin-resource-policy") == "same-origin", what
            if what.startswith("api"):
                assert h.get("cache-control") == "no-store", what
        assert answers["api"].headers["content-type"] == "application/json"


async def test_the_demo_api_answers_its_own_page_only(tmp_path: Path) -> None:
    """A call carrying another origin is refused even with the header: should the control plane
    ever grant CORS (the GS2 JavaScript SDK in a browser would want it), a site allowed to send the
    header still gets no room keys or tokens."""
    async with (
        ControlPlane(make_config(tmp_path, demo=True, provisioner="none")) as cp,
        httpx.AsyncClient(base_url=cp.url, timeout=20) as http,
    ):
        own = cp.url  # http://127.0.0.1:PORT, the Origin the page's POSTs carry
        for origin in ("http://evil.example", "null", own.replace("127.0.0.1", "localhost"), own + "0"):
            headers = {**API, "Origin": origin}
            assert (await http.get("/demo/api/rooms", headers=headers)).status_code == 403, origin
            created = await http.post("/demo/api/rooms", json={"name": "lobby"}, headers=headers)
            assert created.status_code == 403, origin
            ticket = await http.post("/demo/api/rooms/lobby/ticket", json={"userId": "a"}, headers=headers)
            assert ticket.status_code == 403, origin
        assert (await http.get("/demo/api/rooms", headers=API)).json()["rooms"] == []  # nothing made
        created = await http.post("/demo/api/rooms", json={"name": "lobby"}, headers={**API, "Origin": own})
        assert created.status_code == 200 and created.json()["name"] == "lobby"


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
