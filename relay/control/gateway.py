"""The user push gateway: WebSocket /gateway, and the optional webhook.

A user connects with a user access token (query `?token=...`, or header `X-GS2-ACCESS-TOKEN`,
or `Authorization: Bearer ...`); without a valid one the socket is accepted and closed at once
with code 4401 (a refused handshake would be an HTTP 403, which a browser hides from the page).
Pushes mirror GS2's gateway: a JSON text frame without a requestId whose `body` is the
notification {issuer, subject, payload, userId, ...} where `payload` is a JSON-encoded string
(GS2 SDKs hand `body` to on_notification); the same fields are repeated at the top level for
clients that do not unwrap `body`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Iterable
from typing import Any

import httpx
from fastapi import WebSocket, WebSocketDisconnect

from relay.control.auth import Authority
from relay.control.metrics import ControlMetrics

log = logging.getLogger("relay.control.gateway")

CREATE_ISSUER = "Gs2Realtime:Create"
GATEWAY_MAX_MESSAGE = 4096
"""Bytes of one message a gateway client may send (it sends pings only): larger closes with 1009."""
REPLACED = 4409
"""The close code of a user's oldest socket when a newer one passes gateway_sockets_per_user."""
PUSH_TIMEOUT = 2.0
"""Seconds a socket has to take a push; one that does not (its reader stopped reading) is pushed
to no more and closed: the relay registering the room waits on the pushes."""


def notification(issuer: str, subject: str, user_id: str, payload: dict[str, Any]) -> dict[str, Any]:
    body = {
        "issuer": issuer,
        "subject": subject,
        "payload": json.dumps(payload, separators=(",", ":")),
        "userId": user_id,
        "enableTransferMobileNotification": False,
    }
    return {"type": "notification", **body, "body": body}


class Gateway:
    def __init__(
        self,
        authority: Authority,
        metrics: ControlMetrics,
        webhook_url: str | None = None,
        sockets_per_user: int = 4,
    ) -> None:
        self.authority = authority
        self.metrics = metrics
        self.webhook_url = webhook_url
        self.sockets_per_user = sockets_per_user
        self._sockets: dict[str, dict[WebSocket, None]] = {}  # each user's, oldest first
        self._tasks: set[asyncio.Task[None]] = set()
        self._http: httpx.AsyncClient | None = None

    def connected(self, user_id: str) -> bool:
        return bool(self._sockets.get(user_id))

    async def handle(self, ws: WebSocket) -> None:
        token = ws.query_params.get("token") or ws.headers.get("x-gs2-access-token")
        auth = ws.headers.get("authorization", "")
        if not token and auth.lower().startswith("bearer "):
            token = auth[7:].strip()
        claims = self.authority.verify_user_token(token) if token else None
        await ws.accept()
        if claims is None:  # a close code after the handshake: what a browser's WebSocket can read
            await ws.close(code=4401, reason="a valid user access token is required")
            return
        user = claims.sub
        sockets = self._sockets.setdefault(user, {})
        sockets[ws] = None
        self.metrics.gateway_connections.inc()
        while len(sockets) > self.sockets_per_user:
            oldest = next(iter(sockets))
            self._drop(user, oldest)  # pushes go to the newer ones from now on
            with contextlib.suppress(Exception):
                await oldest.close(code=REPLACED, reason="a newer connection of this user replaced it")
        try:
            await ws.send_json({"type": "welcome", "userId": user})
            while True:
                message = await ws.receive()
                if message["type"] == "websocket.disconnect":
                    break
                # Only keepalives are understood; anything else (binary too) is ignored, never an error.
                with contextlib.suppress(ValueError, TypeError, AttributeError):
                    if json.loads(message.get("text") or "").get("type") == "ping":
                        await ws.send_json({"type": "pong"})
        except (WebSocketDisconnect, RuntimeError):
            pass
        finally:
            self._drop(user, ws)
            self.metrics.gateway_connections.dec()

    def _drop(self, user: str, ws: WebSocket) -> None:
        """The socket gets no more pushes (a user with none left is forgotten)."""
        sockets = self._sockets.get(user)
        if sockets is not None:
            sockets.pop(ws, None)
            if not sockets:
                del self._sockets[user]

    async def push(self, user_ids: Iterable[str], issuer: str, subject: str, payload: dict[str, Any]) -> int:
        """Sends to every connected socket of each listed user, all at once, each within
        PUSH_TIMEOUT; returns how many frames went out."""
        sends = [
            self._send(user, ws, notification(issuer, subject, user, payload))
            for user in dict.fromkeys(user_ids)
            for ws in list(self._sockets.get(user, ()))
        ]
        sent = sum(await asyncio.gather(*sends))
        self.metrics.notifications.inc(sent)
        return sent

    async def _send(self, user: str, ws: WebSocket, message: dict[str, Any]) -> int:
        try:
            await asyncio.wait_for(ws.send_json(message), PUSH_TIMEOUT)
            return 1
        except TimeoutError:  # a listed player that stops reading must not hold up anyone else
            log.warning("a /gateway socket of %s took no push in %g s: closing it", user, PUSH_TIMEOUT)
            self._drop(user, ws)
            with contextlib.suppress(Exception):
                await asyncio.wait_for(ws.close(code=1008, reason="not reading"), 0.1)
        except Exception:  # a dying socket must not stop the others
            log.debug("push to %s failed", user, exc_info=True)
        return 0

    def webhook(self, issuer: str, subject: str, user_ids: list[str], payload: dict[str, Any]) -> None:
        """POSTs the notification to the configured URL (and only there), in the background."""
        if not self.webhook_url:
            return
        body = {
            "issuer": issuer,
            "subject": subject,
            "payload": json.dumps(payload, separators=(",", ":")),
            "userIds": user_ids,
        }
        task = asyncio.get_running_loop().create_task(self._post(body))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _post(self, body: dict[str, Any]) -> None:
        assert self.webhook_url is not None
        if self._http is None:
            self._http = httpx.AsyncClient(timeout=5.0, follow_redirects=False)
        for attempt in range(3):
            try:
                r = await self._http.post(self.webhook_url, json=body)
                if r.status_code < 500:
                    return
            except httpx.HTTPError:
                pass
            await asyncio.sleep(0.5 * 2**attempt)
        log.warning("webhook %s failed for %s", self.webhook_url, body.get("payload"))

    async def close(self) -> None:
        for sockets in list(self._sockets.values()):
            for ws in list(sockets):
                with contextlib.suppress(Exception):
                    await ws.close(code=1001)
        for task in list(self._tasks):
            task.cancel()
        if self._http is not None:
            await self._http.aclose()
