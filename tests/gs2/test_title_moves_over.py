"""A GS2 title moves over (docs/gs2-clients.md): its game server keeps the official `gs2` SDK and
changes only the endpoint; its game client keeps GS2's wire. wantRoom and getRoom as before,
the player's access token from GS2-Auth's login call (the SDK's `auth` client), and the game
client joins the room's real relay (`relay serve`, spawned by the control plane) with getRoom's
ipAddress, port and encryptionKey: the relay verifies the token the control plane minted."""

from __future__ import annotations

import asyncio
import socket
import time
from pathlib import Path

import pytest
from gs2 import auth, realtime

from tests.control.helpers import REAL_RELAY, gs2_client, make_config, threaded_control_plane

from . import wireclient as g

pytestmark = pytest.mark.slow


def test_a_gs2_title_on_this_control_plane_and_relay(tmp_path: Path) -> None:
    config = make_config(
        tmp_path, relay_command=REAL_RELAY, relay_require_user_tokens=True, relay_warm_relays=0
    )
    with threaded_control_plane(config) as cp:
        session, sdk = gs2_client(cp.url)
        try:
            sdk.create_namespace(
                realtime.CreateNamespaceRequest()
                .with_name("game")
                .with_server_type("relay")
                .with_server_spec("realtime1.nano")
            )
            sdk.want_room(realtime.WantRoomRequest().with_namespace_name("game").with_name("match"))
            deadline = time.monotonic() + 20
            room = sdk.get_room(
                realtime.GetRoomRequest().with_namespace_name("game").with_room_name("match")
            ).item
            while not room.ip_address:
                assert time.monotonic() < deadline, "the room's relay did not register"
                time.sleep(0.1)
                room = sdk.get_room(
                    realtime.GetRoomRequest().with_namespace_name("game").with_room_name("match")
                ).item
            logins = auth.Gs2AuthRestClient(session)
            # the game server's call, as GS2-Auth's: userId, and the SDK's optional time offset
            ann = logins.login(auth.LoginRequest().with_user_id("ann").with_time_offset(0))
            bob = logins.login(auth.LoginRequest().with_user_id("bob"))
            assert (ann.user_id, bob.user_id) == ("ann", "bob") and ann.expire > time.time() * 1000
            asyncio.run(_play(room.ip_address, room.port, room.encryption_key, ann.token, bob.token))
            sdk.delete_room(realtime.DeleteRoomRequest().with_namespace_name("game").with_room_name("match"))
            while _accepts(room.ip_address, room.port):
                assert time.monotonic() < deadline + 10, "the room's relay did not exit"
                time.sleep(0.05)
        finally:
            session.disconnect()


def _accepts(host: str, port: int) -> bool:
    """Whether the relay's WebSocket port still takes connections (it is closed once it exits)."""
    try:
        socket.create_connection((host, port), timeout=1).close()
    except OSError:
        return False
    return True


async def _play(host: str, port: int, key: str, ann_token: str, bob_token: str) -> None:
    assert host == "127.0.0.1"
    ann = await g.Gs2Client.join(port, key, ann_token, b"ann's")
    bob = await g.Gs2Client.join(port, key, bob_token)
    assert ann.my is not None and bob.my is not None
    assert ann.my.user_id == "ann" and bob.players == {ann.my.connection_id: ann.my}
    assert (await ann.next()).body == bob.my
    await bob.send(b"gg")
    got = await ann.next_of(g.BINARY_MESSAGE)
    assert got.body == g.Relayed(bob.my.connection_id, b"gg", ())
    # a token for another room's relay, or a forged one, is refused by this relay
    forged = await g.Gs2Client.open(port, key)
    await forged.hello(bob_token[:-8] + "AAAAAAAA")
    assert (await forged.next_of(g.ERROR)).body.component == "accessToken"
    for client in (ann, bob):
        await client.close()
