"""The agent's HTTP client for the control plane's internal API (docs/operations.md).

    POST {control_url}/rooms/{ns}/{room}/register  Registration
    POST {control_url}/rooms/{ns}/{room}/heartbeat Heartbeat -> HeartbeatAnswer
    POST {control_url}/rooms/{ns}/{room}/closed    Closed

(the bodies: relay/agent/wire.py, read by the control plane with the same classes).

nextHeartbeatSeconds is the agent's promise of when its next heartbeat comes (short while anyone
is in the room, long while it is quiet); the control plane declares the relay lost after a few
such gaps go by in silence.

Every call carries `Authorization: Bearer <agent secret>`. 404 (or 401: the record now belongs
to another room of the same name) means the room is gone: RoomGone. Transport errors and 5xx
are ControlUnavailable, which callers retry with `backoff()`.
"""

from __future__ import annotations

import json
import random
from typing import Any
from urllib.parse import quote

from relay.agent.http11 import Http11Client, HttpError
from relay.agent.wire import Closed, Heartbeat, HeartbeatAnswer, Registration


class ControlError(Exception):
    """The control plane answered something unusable."""


class ControlUnavailable(ControlError):
    """Not reachable, timed out, or 5xx: retry later."""


class RoomGone(ControlError):
    """The room record no longer exists (deleted): drain and exit."""


def backoff(attempt: int, base: float = 0.2, cap: float = 10.0) -> float:
    """Exponential backoff with full jitter: uniform(0, min(cap, base * 2**attempt)), at least 10 ms."""
    return max(0.01, random.uniform(0, min(cap, base * (2 ** min(attempt, 30)))))


class ControlClient:
    def __init__(
        self, control_url: str, namespace: str, room: str, agent_secret: str, timeout: float = 5.0
    ) -> None:
        self._http = Http11Client(control_url, timeout=timeout)
        self._path = f"/rooms/{quote(namespace, safe='')}/{quote(room, safe='')}"
        self._headers = [("Authorization", f"Bearer {agent_secret}"), ("Content-Type", "application/json")]

    async def _post(self, kind: str, body: dict[str, Any]) -> dict[str, Any]:
        payload = json.dumps(body, separators=(",", ":")).encode()
        try:
            status, answer = await self._http.request("POST", f"{self._path}/{kind}", payload, self._headers)
        except HttpError as exc:
            raise ControlUnavailable(f"{kind}: {exc}") from exc
        if status in (401, 404):
            raise RoomGone(f"{kind}: {status}")
        if status >= 500:
            raise ControlUnavailable(f"{kind}: HTTP {status}")
        if status != 200:
            raise ControlError(f"{kind}: HTTP {status} {answer[:200].decode(errors='replace')}")
        try:
            data = json.loads(answer)
        except ValueError:
            return {}
        return data if isinstance(data, dict) else {}

    async def register(self, registration: Registration) -> None:
        await self._post("register", registration.to_json())

    async def heartbeat(self, heartbeat: Heartbeat) -> bool:
        """True when the control plane says the room was deleted."""
        return HeartbeatAnswer.from_json(await self._post("heartbeat", heartbeat.to_json())).deleted

    async def closed(self, closed: Closed) -> None:
        await self._post("closed", closed.to_json())

    async def aclose(self) -> None:
        await self._http.aclose()
