"""The agent's HTTP client for the control plane's internal API (docs/operations.md).

    POST {control_url}/rooms/{ns}/{room}/register  {ipAddress, port, adminPort, pid, nextHeartbeatSeconds}
    POST {control_url}/rooms/{ns}/{room}/heartbeat {members, messagesPerSecond, cpuSeconds, rssBytes,
                                                    nextHeartbeatSeconds}

nextHeartbeatSeconds is the agent's promise of when its next heartbeat comes (short while anyone
is in the room, long while it is quiet); the control plane declares the relay lost after a few
such gaps go by in silence.
    POST {control_url}/rooms/{ns}/{room}/closed    {reason}

Every call carries `Authorization: Bearer <agent secret>`. 404 (or 401: the record now belongs
to another room of the same name) means the room is gone: RoomGone. Transport errors and 5xx
are ControlUnavailable, which callers retry with `backoff()`.
"""

from __future__ import annotations

import random
from typing import Any
from urllib.parse import quote

import httpx


class ControlError(Exception):
    """The control plane answered something unusable."""


class ControlUnavailable(ControlError):
    """Not reachable, timed out, or 5xx: retry later."""


class RoomGone(ControlError):
    """The room record no longer exists (deleted): drain and exit."""


def backoff(attempt: int, base: float = 0.2, cap: float = 10.0) -> float:
    """Exponential backoff with full jitter: uniform(0, min(cap, base * 2**attempt)), at least 10 ms."""
    return max(0.01, random.uniform(0, min(cap, base * (2 ** min(attempt, 30)))))


_TLS = httpx.create_ssl_context()
"""Built once at import (~70 ms of CPU: the CA bundle): a relay forked from the zygote template
inherits it instead of building one at 12.5% of a core while its room waits for an address."""


class ControlClient:
    def __init__(
        self,
        control_url: str,
        namespace: str,
        room: str,
        agent_secret: str,
        timeout: float = 5.0,
        http: httpx.AsyncClient | None = None,
    ) -> None:
        self.base = f"{control_url.rstrip('/')}/rooms/{quote(namespace, safe='')}/{quote(room, safe='')}"
        self._own_http = http is None
        self._http = http or httpx.AsyncClient(timeout=timeout, verify=_TLS)
        self._headers = {"Authorization": f"Bearer {agent_secret}"}

    async def _post(self, kind: str, body: dict[str, Any]) -> dict[str, Any]:
        try:
            r = await self._http.post(f"{self.base}/{kind}", json=body, headers=self._headers)
        except httpx.HTTPError as exc:
            raise ControlUnavailable(f"{kind}: {exc!r}") from exc
        if r.status_code in (401, 404):
            raise RoomGone(f"{kind}: {r.status_code}")
        if r.status_code >= 500:
            raise ControlUnavailable(f"{kind}: HTTP {r.status_code}")
        if r.status_code != 200:
            raise ControlError(f"{kind}: HTTP {r.status_code} {r.text[:200]}")
        try:
            data = r.json()
        except ValueError:
            return {}
        return data if isinstance(data, dict) else {}

    async def register(
        self, ip_address: str, port: int, admin_port: int | None, pid: int, next_heartbeat: float
    ) -> None:
        await self._post(
            "register",
            {
                "ipAddress": ip_address,
                "port": port,
                "adminPort": admin_port,
                "pid": pid,
                "nextHeartbeatSeconds": next_heartbeat,
            },
        )

    async def heartbeat(
        self,
        members: int,
        messages_per_second: float,
        cpu_seconds: float,
        rss_bytes: int,
        next_heartbeat: float,
    ) -> bool:
        """True when the control plane says the room was deleted."""
        data = await self._post(
            "heartbeat",
            {
                "members": members,
                "messagesPerSecond": messages_per_second,
                "cpuSeconds": cpu_seconds,
                "rssBytes": rss_bytes,
                "nextHeartbeatSeconds": next_heartbeat,
            },
        )
        return bool(data.get("deleted"))

    async def closed(self, reason: str) -> None:
        await self._post("closed", {"reason": reason})

    async def aclose(self) -> None:
        if self._own_http:
            await self._http.aclose()
