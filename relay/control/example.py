"""Make a namespace and a room through the control plane, join the room, say hello, leave.

    .venv/bin/python -m relay.control.example --url http://127.0.0.1:7700 --namespace ns1 --room room1

The last line `relay dev` prints. It logs in with RELAY_CLIENT_ID/RELAY_CLIENT_SECRET (or the
credentials `relay dev` keeps in ./.relay, read, never made: a control plane would not know new
ones), creates the namespace unless it exists, wants the room, waits for its relay, joins with
relay.client and prints what arrives for a few seconds. Any HTTP error ends it at once, with GS2's
error code.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from pathlib import Path
from typing import Any

import httpx

from relay.control.auth import CREDENTIALS_FILE, file_setting, read_credentials
from relay.settings import typed_command

READY_WAIT = 30.0
"""Seconds to wait for a wanted room's relay (it takes milliseconds on this machine)."""


class Failed(Exception):
    """One line for the user; the example exits 1."""


def _credentials() -> tuple[str, str]:
    client_id = os.environ.get("RELAY_CLIENT_ID")
    secret = os.environ.get("RELAY_CLIENT_SECRET")
    if client_id and secret:
        return client_id, secret
    data_dir = Path(os.environ.get("RELAY_DATA_DIR", ".relay"))
    found = read_credentials(file_setting(data_dir))
    if found is None:
        raise Failed(
            "no credentials: set RELAY_CLIENT_ID and RELAY_CLIENT_SECRET (`relay dev` prints them), or "
            "run this in the folder `relay dev` runs in (looked for "
            f"{(data_dir / CREDENTIALS_FILE).resolve()})"
        )
    return found


def _gs2_error(r: httpx.Response) -> str:
    """GS2's error body as `code: message` (its "message" is a JSON list of {component, message, code})."""
    try:
        items = json.loads(r.json()["message"])
        return "; ".join(f"{item['code']}: {item['message']}" for item in items)
    except (ValueError, KeyError, TypeError):
        return r.text[:200]


async def _call(http: httpx.AsyncClient, what: str, method: str, path: str, **kw: Any) -> httpx.Response:
    """One API call; any answer but 200 (and 409 Conflict, which the caller reads) is a Failed."""
    try:
        r = await http.request(method, path, **kw)
    except httpx.TransportError as exc:
        raise Failed(
            f"cannot reach the control plane at {http.base_url} ({exc}): is `relay dev` running?"
        ) from None
    if r.status_code not in (200, 409):
        raise Failed(f"{what}: HTTP {r.status_code} {_gs2_error(r)}")
    return r


async def _ready_room(
    http: httpx.AsyncClient, headers: dict[str, str], namespace: str, room: str
) -> dict[str, Any]:
    """wantRoom (unless the room exists), then getRoom until its relay has registered."""
    r = await _call(
        http, "wantRoom", "POST", f"/realtime/{namespace}/room", json={"name": room}, headers=headers
    )
    print(f"room {room}: {'already there' if r.status_code == 409 else 'wanted'}")
    loop = asyncio.get_running_loop()
    deadline = loop.time() + READY_WAIT
    while loop.time() < deadline:
        r = await _call(http, "getRoom", "GET", f"/realtime/{namespace}/room/{room}", headers=headers)
        item: dict[str, Any] = r.json().get("item") or {}
        if item.get("ipAddress"):
            return item
        await asyncio.sleep(0.1)
    raise Failed(f"room {room} has no relay after {READY_WAIT:g} s (the control plane's log says why)")


async def run(url: str, namespace: str, room: str, user: str, seconds: float, token: str | None) -> int:
    import relay.client

    client_id, secret = _credentials()
    async with httpx.AsyncClient(base_url=url, timeout=5.0) as http:
        body = {"client_id": client_id, "client_secret": secret}
        r = await _call(http, "login", "POST", "/identifier/projectToken/login", json=body)
        if r.status_code != 200:
            raise Failed(f"login: HTTP {r.status_code} {_gs2_error(r)}")
        headers = {"Authorization": "Bearer " + r.json()["access_token"], "X-GS2-CLIENT-ID": client_id}
        spec = {"name": namespace, "serverType": "relay", "serverSpec": "realtime1.nano"}
        r = await _call(http, "createNamespace", "POST", "/realtime/", json=spec, headers=headers)
        print(f"namespace {namespace}: {'already there' if r.status_code == 409 else 'created'}")
        item = await _ready_room(http, headers, namespace, room)
    print(f"room {room} ready at {item['ipAddress']}:{item['port']}")
    try:
        client = await relay.client.connect(
            item["ipAddress"], item["port"], item["encryptionKey"], user, access_token=token
        )
    except relay.client.JoinRefused as exc:
        hint = ""
        if "token" in exc.text and token is None:
            mint = f"{typed_command('relay')} token --user {user} | tail -n 1"
            hint = f' (its relays require a user access token: --token "$({mint})")'
        raise Failed(f"join: {exc}{hint}") from None
    except relay.client.ConnectError as exc:
        raise Failed(f"join: {exc}") from None
    print(f"joined as {user} (connection {client.connection_id}); {len(client.members)} other member(s)")
    client.send(b"hello from " + user.encode())
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    while (left := deadline - loop.time()) > 0:
        try:
            event = await client.next_event(timeout=left)
        except TimeoutError:
            break
        if event is None:
            break
        print(f"  {event}")
    await client.close()
    print(
        f"left. A room nobody is in closes after its idle timeout (60 s by default) and its record "
        f"goes with it: run this again to make {room} anew."
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m relay.control.example",
        description="Make a namespace and a room through the control plane, join it, say hello. "
        "Credentials: RELAY_CLIENT_ID and RELAY_CLIENT_SECRET, else those `relay dev` keeps in "
        "./.relay (RELAY_DATA_DIR).",
    )
    port = os.environ.get("RELAY_CONTROL_PORT") or "7700"  # where `relay dev` in this shell listens
    p.add_argument(
        "--url",
        default=f"http://127.0.0.1:{port}",
        help="the control plane (default: %(default)s; RELAY_CONTROL_PORT sets the port)",
    )
    p.add_argument("--namespace", default="ns1", help="made unless it exists (default: %(default)s)")
    p.add_argument("--room", default="room1", help="wanted unless it exists (default: %(default)s)")
    p.add_argument("--user", default="user-1", help="the user id to join as (default: %(default)s)")
    p.add_argument(
        "--token",
        help="a user access token for --user (`relay token --user ID`); needed when relays require one",
    )
    p.add_argument("--seconds", type=float, default=5.0, help="how long to stay in the room (default: 5)")
    a = p.parse_args(argv)
    try:
        return asyncio.run(run(a.url, a.namespace, a.room, a.user, a.seconds, a.token))
    except Failed as exc:
        print(f"example: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
