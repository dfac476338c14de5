"""What several deploy tests do: wait for a server to answer, seat two players and hear them."""

from __future__ import annotations

import httpx

import relay.client as rc
from tests.control.helpers import wait_for


async def wait_until_answering(url: str, timeout: float = 30) -> None:
    """Until GET url answers 200 (a server still starting refuses or fails)."""
    async with httpx.AsyncClient() as http:

        async def answers() -> bool:
            try:
                return (await http.get(url)).status_code == 200
            except httpx.TransportError:
                return False

        await wait_for(answers, timeout=timeout)


async def players_talk(address: str, port: int, key: str, timeout: float = 5) -> tuple[rc.Client, rc.Client]:
    """alice over UDP and bob over WebSocket in the room there; bob hears alice. Both stay open."""
    a = await rc.connect(address, port, key, "alice", transport="udp", timeout=timeout)
    b = await rc.connect(address, port, key, "bob", transport="ws", timeout=timeout)
    a.send(b"hello from alice")
    assert (await b.next_event_of(rc.Received, timeout)).data == b"hello from alice"
    return a, b
