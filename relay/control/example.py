"""Connect one client to a room created through the control plane (the third line `relay dev` prints).

    python -m relay.control.example --url http://127.0.0.1:7700 --namespace ns1 --room room1

Logs in with RELAY_CLIENT_ID/RELAY_CLIENT_SECRET (or the dev credentials in ./.relay), polls
getRoom until the room is ready, joins with relay.client.connect, sends one message and prints
what arrives for a few seconds.
"""

from __future__ import annotations

import argparse
import asyncio
import os
from pathlib import Path

import httpx

from relay.control.auth import file_setting, load_or_create_credentials


async def run(url: str, namespace: str, room: str, user: str, seconds: float) -> int:
    import relay.client

    client_id = os.environ.get("RELAY_CLIENT_ID")
    secret = os.environ.get("RELAY_CLIENT_SECRET")
    if not (client_id and secret):
        data_dir = Path(os.environ.get("RELAY_DATA_DIR", ".relay"))
        client_id, secret = load_or_create_credentials(file_setting(data_dir))
    async with httpx.AsyncClient(base_url=url, timeout=5.0) as http:
        r = await http.post(
            "/identifier/projectToken/login", json={"client_id": client_id, "client_secret": secret}
        )
        r.raise_for_status()
        headers = {"Authorization": "Bearer " + r.json()["access_token"], "X-GS2-CLIENT-ID": client_id}
        for _ in range(300):
            item = (await http.get(f"/realtime/{namespace}/room/{room}", headers=headers)).json().get(
                "item"
            ) or {}
            if item.get("ipAddress"):
                break
            await asyncio.sleep(0.1)
        else:
            print("room not ready")
            return 1
    print(f"room ready at {item['ipAddress']}:{item['port']}")
    client = await relay.client.connect(item["ipAddress"], item["port"], item["encryptionKey"], user)
    print(f"joined as connection {client.connection_id}; members: {len(client.members)}")
    client.send(b"hello from " + user.encode())
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    while (left := deadline - loop.time()) > 0:
        try:
            print(await client.next_event(timeout=left))
        except TimeoutError:
            break
    await client.close()
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m relay.control.example", description=__doc__)
    p.add_argument("--url", default="http://127.0.0.1:7700")
    p.add_argument("--namespace", default="ns1")
    p.add_argument("--room", default="room1")
    p.add_argument("--user", default="user-1")
    p.add_argument("--seconds", type=float, default=5.0)
    a = p.parse_args(argv)
    return asyncio.run(run(a.url, a.namespace, a.room, a.user, a.seconds))


if __name__ == "__main__":
    raise SystemExit(main())
