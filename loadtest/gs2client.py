"""A GS2 game client for the bundled bots (loadtest/bots.py): GS2's wire, as its Unity SDK speaks
it (relay/protocol/gs2/wire.py), behind the part of relay.client's interface the bots use.

Plain WebSocket (no subprotocol, no extension), one Container per binary message, HelloRequest
first with an access token; it answers the relay's pings (GS2 clients send none of their own)
and has no resume: a dropped connection is a leave. The relays the load generator starts have
no token key, so a token minted with any key names the bot (docs/gs2-clients.md).
"""

from __future__ import annotations

import asyncio
import base64
import os
from collections.abc import Callable, Iterable
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from google.protobuf.message import DecodeError

from relay.protocol import tokens
from relay.protocol.client import (
    LEAVE_UNSEEN,
    ConnectionLost,
    ErrorEvent,
    Joined,
    Left,
    ProfileChanged,
    Received,
)
from relay.protocol.gs2 import wire
from relay.protocol.messages import Member
from relay.protocol.wsframes import BINARY, CLOSE, PING, PONG, client_frame, read_frames

_SIGNER = Ed25519PrivateKey.generate()


def news(members: dict[int, Member], kind: int, body: Any) -> Any:
    """What a relay's Container (parsed: wire.parse_server) says of the room's players: `members`
    follows it (HelloResult, join, leave, profile), and the event is returned in the kinds of
    relay.protocol.client (Joined, Left, ProfileChanged, Received, ErrorEvent), or None."""
    if kind == wire.BINARY_MESSAGE:
        return Received(body.connectionId, body.data)
    if kind == wire.HELLO_RESULT:
        for p in body.players:
            members[p.connectionId] = Member(p.connectionId, p.userId, p.profile)
        return None
    if kind == wire.JOIN_NOTIFICATION:
        p = body.joinPlayer
        members[p.connectionId] = Member(p.connectionId, p.userId, p.profile)
        return Joined(p.connectionId, p.userId, p.profile)
    if kind == wire.LEAVE_NOTIFICATION:
        members.pop(body.leavePlayer.connectionId, None)
        return Left(body.leavePlayer.connectionId, LEAVE_UNSEEN)  # GS2 gives no reason
    if kind == wire.UPDATE_PROFILE_NOTIFICATION:
        p = body.updatePlayer
        if p.connectionId in members:
            members[p.connectionId] = Member(p.connectionId, p.userId, p.profile)
        return ProfileChanged(p.connectionId, p.profile)
    if kind == wire.ERROR:
        return ErrorEvent(body.statusCode, f"{body.component}: {body.message}")
    return None


class Gs2Client(asyncio.Protocol):
    """One GS2 RelayRealtimeSession: connect() returns once HelloResult has come."""

    def __init__(self, room_key: str, user_id: str) -> None:
        self.signer = wire.Signer(wire.room_hmac_key(room_key))
        self.user_id = user_id
        self.transport_name = "gs2"
        self.connection_id: int | None = None
        self.members: dict[int, Member] = {}
        self.on_event: Callable[[Any], None] | None = None
        self._conn: asyncio.Transport | None = None
        self._buf = bytearray()
        self._upgraded = False
        self._hello: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._closed = False

    @classmethod
    async def connect(
        cls,
        host: str,
        port: int,
        room_key: str,
        user_id: str,
        profile: bytes = b"",
        timeout: float = 10.0,
        access_token: str | None = None,
    ) -> Gs2Client:
        loop = asyncio.get_running_loop()
        client = cls(room_key, user_id)
        await asyncio.wait_for(loop.create_connection(lambda: client, host, port), timeout)
        assert client._conn is not None
        key = base64.b64encode(os.urandom(16)).decode()
        client._conn.write(
            f"GET / HTTP/1.1\r\nHost: {host}:{port}\r\nUser-Agent: websocket-sharp/1.0\r\n"
            f"Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
            "Sec-WebSocket-Version: 13\r\n\r\n".encode()
        )
        token = access_token or tokens.mint(_SIGNER, user_id)
        client._write(wire.HELLO_REQUEST, wire.hello_value(token, profile))
        try:
            await asyncio.wait_for(client._hello, timeout)
        except BaseException:
            client._abort()
            raise
        return client

    # ---- what callers do ----------------------------------------------------------------------

    def send(self, data: bytes, targets: Iterable[int] | None = None) -> None:
        self._write(wire.BINARY_MESSAGE, wire.send_value(data, tuple(targets or ())))

    def update_profile(self, profile: bytes) -> None:
        self._write(wire.UPDATE_PROFILE_REQUEST, wire.profile_value(profile))

    async def close(self) -> None:
        """As GS2's client leaves: it closes the WebSocket (no BYE_REQUEST)."""
        if self._conn is not None and not self._closed:
            self._conn.write(client_frame(CLOSE, (1000).to_bytes(2, "big")))
            await asyncio.sleep(0.05)
        self._abort()

    def _write(self, kind: int, value: bytes) -> None:
        if self._conn is None or self._closed:
            raise ConnectionError(f"{self.user_id}: connection closed")
        self._conn.write(client_frame(BINARY, wire.client_container(self.signer, kind, value)))

    def _abort(self) -> None:
        self._closed = True
        if self._conn is not None:
            self._conn.abort()

    # ---- asyncio.Protocol ---------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._conn = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        buf = self._buf
        buf += data
        if not self._upgraded:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                return
            if b" 101 " not in bytes(buf[: buf.find(b"\r\n")]):
                self._fail(ConnectionError(f"upgrade refused: {bytes(buf[:60])!r}"))
                return
            del buf[: end + 4]
            self._upgraded = True
        for opcode, payload in read_frames(buf):
            if opcode == BINARY:
                self._container(payload)
            elif opcode == PING and self._conn is not None and not self._closed:
                self._conn.write(client_frame(PONG, payload))
            elif opcode == CLOSE:
                self._fail(ConnectionError(f"{self.user_id}: closed by the relay"))

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail(ConnectionError(f"{self.user_id}: connection lost"))

    def _fail(self, exc: Exception) -> None:
        if not self._hello.done():
            self._hello.set_exception(exc)
        if not self._closed:
            self._closed = True
            self._emit(ConnectionLost(str(exc)))
            if self._conn is not None:
                self._conn.close()

    def _emit(self, event: Any) -> None:
        if self.on_event is not None:
            self.on_event(event)

    def _container(self, data: bytes) -> None:
        try:
            kind, body = wire.parse_server(data)
        except DecodeError:
            return
        event = news(self.members, kind, body)
        if kind == wire.HELLO_RESULT:
            self.connection_id = body.myProfile.connectionId
            if not self._hello.done():
                self._hello.set_result(None)
        elif kind == wire.ERROR and not self._hello.done():
            self._hello.set_exception(ConnectionError(f"{self.user_id}: hello refused: {event}"))
        if event is not None:
            self._emit(event)


async def connect(
    host: str, port: int, room_key: str, user_id: str, profile: bytes = b"", timeout: float = 10.0, **kw: Any
) -> Gs2Client:
    """relay.client.connect's shape, for loadtest/bots.py (`transport` is implied; an access
    token may be given)."""
    return await Gs2Client.connect(host, port, room_key, user_id, profile, timeout, kw.get("access_token"))
