"""Room-ready push through /gateway (and the webhook) to the users in notificationUserIds."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import socket
from pathlib import Path

import httpx
import pytest
import websockets
from fastapi import FastAPI, Request

import relay.control.gateway as gateway_module
from relay.control.app import ControlPlane
from relay.control.gateway import GATEWAY_MAX_MESSAGE
from relay.protocol.wsframes import TEXT, client_frame
from tests.control.helpers import create_namespace, login, make_config, wait_for


async def recv_json(ws: websockets.ClientConnection, timeout: float) -> dict:
    return json.loads(await asyncio.wait_for(ws.recv(), timeout))


async def user_tokens(cp: ControlPlane, *users: str) -> dict[str, str]:
    async with httpx.AsyncClient(base_url=cp.url, timeout=5) as http:
        h = await login(http)
        return {
            u: (await http.post("/auth/login", json={"userId": u}, headers=h)).json()["token"] for u in users
        }


@pytest.mark.slow
async def test_create_notification_reaches_listed_users_only(tmp_path: Path) -> None:
    hooks: list[dict] = []
    hook_app = FastAPI()

    @hook_app.post("/hook")
    async def hook(request: Request) -> dict:
        hooks.append(await request.json())
        return {}

    import uvicorn

    hook_server = uvicorn.Server(
        uvicorn.Config(hook_app, host="127.0.0.1", port=0, log_level="warning", lifespan="off")
    )
    hook_task = asyncio.create_task(hook_server.serve())
    await wait_for(lambda: hook_server.started)
    hook_port = hook_server.servers[0].sockets[0].getsockname()[1]
    config = make_config(tmp_path, webhook_url=f"http://127.0.0.1:{hook_port}/hook")
    try:
        async with ControlPlane(config) as cp, httpx.AsyncClient(base_url=cp.url, timeout=5) as http:
            h = await login(http)
            tokens = await user_tokens(cp, "alice", "bob", "carol")
            ns = {
                "name": "gw",
                "serverType": "relay",
                "serverSpec": "realtime1.nano",
                "createNotification": {},
            }
            assert (await http.post("/realtime/", json=ns, headers=h)).status_code == 200
            quiet = {**ns, "name": "quiet", "createNotification": {"enable": "Disabled"}}
            assert (await http.post("/realtime/", json=quiet, headers=h)).status_code == 200

            ws_url = cp.url.replace("http://", "ws://") + "/gateway"
            # Refused without a valid token.
            with pytest.raises(websockets.exceptions.WebSocketException):
                async with websockets.connect(ws_url + "?token=forged") as ws:
                    await ws.recv()
            alice = await websockets.connect(f"{ws_url}?token={tokens['alice']}")
            bob = await websockets.connect(ws_url, additional_headers={"X-GS2-ACCESS-TOKEN": tokens["bob"]})
            carol = await websockets.connect(
                ws_url, additional_headers={"Authorization": "Bearer " + tokens["carol"]}
            )
            for ws, user in ((alice, "alice"), (bob, "bob"), (carol, "carol")):
                assert await recv_json(ws, 5) == {"type": "welcome", "userId": user}

            body = {"name": "room-1", "notificationUserIds": ["alice", "carol", "dave"]}
            assert (await http.post("/realtime/gw/room", json=body, headers=h)).status_code == 200
            for ws, user in ((alice, "alice"), (carol, "carol")):
                msg = await recv_json(ws, 10)
                assert msg["issuer"] == "Gs2Realtime:Create" and msg["userId"] == user
                assert json.loads(msg["payload"]) == {"namespaceName": "gw", "roomName": "room-1"}
                assert msg["body"]["issuer"] == "Gs2Realtime:Create"  # GS2 SDKs read `body`
            # Disabled notifications push nothing; bob was never listed.
            await http.post(
                "/realtime/quiet/room", json={"name": "q", "notificationUserIds": ["alice"]}, headers=h
            )
            await wait_for(lambda: cp.store.get_room("quiet", "q"), timeout=5)

            async def q_ready() -> bool:
                item = (await http.get("/realtime/quiet/room/q", headers=h)).json()["item"]
                return bool(item["ipAddress"])

            await wait_for(q_ready, timeout=10)
            await alice.send(json.dumps({"type": "ping"}))
            assert await recv_json(alice, 5) == {"type": "pong"}  # nothing was queued before it
            with pytest.raises(TimeoutError):
                await recv_json(bob, 0.5)
            await wait_for(lambda: len(hooks) == 1)
            assert hooks[0]["issuer"] == "Gs2Realtime:Create"
            assert hooks[0]["userIds"] == ["alice", "carol", "dave"]
            assert json.loads(hooks[0]["payload"]) == {"namespaceName": "gw", "roomName": "room-1"}
            for ws in (alice, bob, carol):
                await ws.close()
    finally:
        hook_server.should_exit = True
        await hook_task


async def test_a_user_holds_a_few_gateway_sockets_and_a_newer_one_closes_the_oldest(cp: ControlPlane) -> None:
    """One token cannot hold the control plane's sockets: past gateway_sockets_per_user (4) the
    user's oldest socket is closed with 4409; the newer ones stay and are answered; other users
    are untouched."""
    tokens = await user_tokens(cp, "alice", "bob")
    url = cp.url.replace("http://", "ws://") + "/gateway?token="
    bob = await websockets.connect(url + tokens["bob"])
    sockets = []
    for _ in range(cp.config.gateway_sockets_per_user + 2):
        ws = await websockets.connect(url + tokens["alice"])
        assert await recv_json(ws, 5) == {"type": "welcome", "userId": "alice"}
        sockets.append(ws)
    for old in sockets[:2]:
        with pytest.raises(websockets.exceptions.ConnectionClosed) as closed:
            await asyncio.wait_for(old.recv(), 5)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 4409
    for ws in (*sockets[2:], bob):
        await ws.send(json.dumps({"type": "ping"}))
        if ws is bob:
            assert await recv_json(ws, 5) == {"type": "welcome", "userId": "bob"}
        assert await recv_json(ws, 5) == {"type": "pong"}
    assert cp.gateway.connected("alice") and len(cp.gateway._sockets["alice"]) == 4
    for ws in (*sockets, bob):
        await ws.close()
    await wait_for(lambda: not cp.gateway.connected("alice") and not cp.gateway.connected("bob"))


async def test_the_gateway_ignores_binary_frames_and_closes_on_an_oversize_message(cp: ControlPlane) -> None:
    """A client sends pings only: a binary frame is ignored (the socket stays and answers), a
    message over GATEWAY_MAX_MESSAGE closes it with 1009 instead of being read."""
    url = cp.url.replace("http://", "ws://") + "/gateway?token=" + (await user_tokens(cp, "carol"))["carol"]
    ws = await websockets.connect(url)
    assert await recv_json(ws, 5) == {"type": "welcome", "userId": "carol"}
    await ws.send(b"\x00binary")
    await ws.send("not json")
    await ws.send(json.dumps({"type": "ping"}))
    assert await recv_json(ws, 5) == {"type": "pong"}
    await ws.send(json.dumps({"type": "ping", "pad": "x" * GATEWAY_MAX_MESSAGE}))
    with pytest.raises(websockets.exceptions.ConnectionClosed) as closed:
        await asyncio.wait_for(ws.recv(), 5)
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1009
    await wait_for(lambda: not cp.gateway.connected("carol"))


async def test_a_user_who_stops_reading_holds_up_no_push(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A player listed in notificationUserIds whose client stops reading (here: pings sent and
    their pongs never read, until the control plane's writes to it stall) cannot hold up the
    room-ready push to the others, nor the registration that pushes: its socket gets
    PUSH_TIMEOUT to take the push, then is pushed to no more and closed."""
    monkeypatch.setattr(gateway_module, "PUSH_TIMEOUT", 0.5)
    async with (
        ControlPlane(make_config(tmp_path)) as cp,
        httpx.AsyncClient(base_url=cp.url, timeout=10) as http,
    ):
        h = await login(http)
        await create_namespace(http, h, "gw", createNotification={})
        tokens = await user_tokens(cp, "alice", "stuck")
        url = cp.url.replace("http://", "ws://") + "/gateway?token="
        alice = await websockets.connect(url + tokens["alice"])
        assert await recv_json(alice, 5) == {"type": "welcome", "userId": "alice"}
        # a client that, once upgraded, sends pings and never reads again
        loop = asyncio.get_running_loop()
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 2048)
        sock.setblocking(False)
        await loop.sock_connect(sock, ("127.0.0.1", cp.port))
        key = base64.b64encode(os.urandom(16)).decode()
        await loop.sock_sendall(
            sock,
            f"GET /gateway?token={tokens['stuck']} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode(),
        )
        assert await asyncio.wait_for(loop.sock_recv(sock, 12), 5) == b"HTTP/1.1 101"
        await wait_for(lambda: cp.gateway.connected("stuck"))
        # the control plane's end of that socket gets small buffers (the kernel's would grow to
        # megabytes of pongs first), so that a few thousand unread pongs stall its writes
        assert cp._server is not None
        port = sock.getsockname()[1]
        (server_side,) = [  # uvicorn's connection from that client port
            c.transport for c in cp._server.server_state.connections if c.client and c.client[1] == port
        ]
        server_side.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        server_side.set_write_buffer_limits(high=4096)
        pings = client_frame(TEXT, json.dumps({"type": "ping"}).encode()) * 20_000
        with contextlib.suppress(BlockingIOError):  # what the kernel takes; the server stalls first
            sock.send(pings)
        # its writes stall: the transport holds more than its high-water mark, so a send waits
        await wait_for(lambda: server_side.get_write_buffer_size() > 4096, timeout=10)
        body = {"name": "r1", "notificationUserIds": ["stuck", "alice"]}
        assert (await http.post("/realtime/gw/room", json=body, headers=h)).status_code == 200
        msg = await recv_json(alice, 10)  # alice is told, at most PUSH_TIMEOUT after the room was ready
        assert json.loads(msg["payload"]) == {"namespaceName": "gw", "roomName": "r1"}
        assert (await http.get("/realtime/gw/room/r1", headers=h)).json()["item"]["ipAddress"]
        await wait_for(lambda: not cp.gateway.connected("stuck"), timeout=5)  # pushed to no more
        assert cp.gateway.connected("alice")
        sock.close()
        await alice.close()
