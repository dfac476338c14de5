"""Running the relay as an Agones GameServer: the sidecar's REST API and the room's life under it.

    sdk = AgonesSDK()                        # http://127.0.0.1:$AGONES_SDK_HTTP_PORT (default 9358)
    reason = await run_agones(base, sdk)     # ready -> allocated -> relay -> shutdown

Under Agones the room is not known at start: the pod is a warm, Ready GameServer until an
allocation writes the room's annotations (ANNOTATION_*). Then the relay binds base.port (the
containerPort), labels/annotates the GameServer, keeps /health going, runs the normal Agent when a
control URL was given, and POSTs /shutdown when the room ends. See docs/agones.md.

The sidecar may start after the game server, so the lifecycle calls (get_gameserver, ready,
shutdown) retry connection errors with backoff for up to `retry_for` seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import re
import signal
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, replace
from typing import Any

import httpx

from relay.agent.agent import Agent
from relay.agent.caps import CapsGuard, guard_relay
from relay.agent.control_client import backoff
from relay.agent.launch import RelayLaunch
from relay.logs import FailureLog
from relay.protocol.constants import CloseReason
from relay.protocol.keys import decode_room_key
from relay.server import rides
from relay.server.app import Relay, RelayStats

log = logging.getLogger("relay.agent.agones")

ENV_PORT = "AGONES_SDK_HTTP_PORT"
DEFAULT_PORT = 9358


class AgonesError(Exception):
    """The sidecar answered something unusable (non-2xx, not JSON, a stream error)."""


def sdk_port_from_env() -> int:
    """AGONES_SDK_HTTP_PORT (Agones sets it in every GameServer pod), else the default 9358."""
    value = os.environ.get(ENV_PORT, "").strip()
    try:
        return int(value) if value else DEFAULT_PORT
    except ValueError:
        log.warning("%s=%r is not a port; using %d", ENV_PORT, value, DEFAULT_PORT)
        return DEFAULT_PORT


class AgonesSDK:
    def __init__(
        self,
        port: int | None = None,
        *,
        host: str = "127.0.0.1",
        timeout: float = 5.0,
        retry_for: float = 60.0,
    ) -> None:
        self.base = f"http://{host}:{sdk_port_from_env() if port is None else port}"
        self.retry_for = retry_for
        self.reached = False
        """Whether the sidecar has answered once (else there is nobody to say /shutdown to)."""
        self._timeout = timeout
        self._http = httpx.AsyncClient(base_url=self.base, timeout=timeout)
        self._failures = FailureLog(log, f"agones sidecar at {self.base} not answering")

    async def _call(self, method: str, path: str, body: dict[str, Any] | None, retry: bool) -> dict[str, Any]:
        """One call; with `retry`, connection errors are retried (backoff capped at 2 s) for up
        to retry_for seconds, and logged sparingly (FailureLog), not once per try."""
        deadline = time.monotonic() + self.retry_for
        attempt = 0
        while True:
            try:
                r = await self._http.request(method, path, json=body)
                break
            except httpx.TransportError as exc:
                delay = backoff(attempt, base=0.1, cap=2.0)
                if not retry or time.monotonic() + delay > deadline:
                    raise
                then = f"retrying for up to {self.retry_for:g} s (is AGONES_SDK_HTTP_PORT right?)"
                self._failures.failed(f"{method} {path}: {exc!r}", then)
                attempt += 1
                await asyncio.sleep(delay)
        self.reached = True
        self._failures.succeeded()
        if r.status_code != 200:
            raise AgonesError(f"{method} {path}: HTTP {r.status_code} {r.text[:200]}")
        try:
            data = r.json() if r.content else {}
        except ValueError as exc:
            raise AgonesError(f"{method} {path}: not JSON") from exc
        return data if isinstance(data, dict) else {}

    async def ready(self) -> None:
        await self._call("POST", "/ready", {}, retry=True)

    async def health(self) -> None:
        await self._call("POST", "/health", {}, retry=False)

    async def shutdown(self) -> None:
        await self._call("POST", "/shutdown", {}, retry=True)

    async def set_label(self, key: str, value: str) -> None:
        """The sidecar stores it as label `agones.dev/sdk-<key>`."""
        await self._call("PUT", "/metadata/label", {"key": key, "value": value}, retry=False)

    async def set_annotation(self, key: str, value: str) -> None:
        """The sidecar stores it as annotation `agones.dev/sdk-<key>`."""
        await self._call("PUT", "/metadata/annotation", {"key": key, "value": value}, retry=False)

    async def get_gameserver(self) -> dict[str, Any]:
        return await self._call("GET", "/gameserver", None, retry=True)

    async def watch_gameserver(self) -> AsyncIterator[dict[str, Any]]:
        """Every GameServer update, unwrapped from its {"result": ...} line, until the stream ends.
        Wrap in contextlib.aclosing so a cancelled consumer closes the connection."""
        timeout = httpx.Timeout(self._timeout, read=None)  # updates may be hours apart
        async with self._http.stream("GET", "/watch/gameserver", timeout=timeout) as r:
            if r.status_code != 200:
                await r.aread()
                raise AgonesError(f"GET /watch/gameserver: HTTP {r.status_code} {r.text[:200]}")
            async for line in r.aiter_lines():
                if not line.strip():
                    continue
                try:
                    message = json.loads(line)
                except ValueError as exc:
                    raise AgonesError("watch: a line that is not JSON") from exc
                if not isinstance(message, dict):
                    raise AgonesError("watch: a line that is not an object")
                if isinstance(message.get("result"), dict):
                    yield message["result"]
                elif "error" in message:
                    raise AgonesError(f"watch: {str(message['error'])[:200]}")

    async def aclose(self) -> None:
        await self._http.aclose()


# --- room assignment ------------------------------------------------------------------------------

# Written by the allocator (GameServerAllocation metadata.annotations) when it picks this pod.
ANNOTATION_NAMESPACE = "realtime.gs2.io/namespace"
ANNOTATION_ROOM = "realtime.gs2.io/room"
ANNOTATION_ROOM_KEY = "realtime.gs2.io/room-key"
ANNOTATION_AGENT_SECRET = "realtime.gs2.io/agent-secret"
ANNOTATION_CONTROL_URL = "realtime.gs2.io/control-url"
ANNOTATION_INCARNATION = "realtime.gs2.io/incarnation"
ANNOTATION_TOKEN_PUBLIC_KEY = "realtime.gs2.io/token-public-key"
ANNOTATION_GS2_CLIENTS = "realtime.gs2.io/gs2-clients"  # "false": refuse GS2 game clients
# Written by the control plane on deleteRoom, before it deletes the GameServer: the relay drains
# with CLOSING "deleted" at once (a local relay's SIGUSR1), not "shutdown" as on a plain delete.
ANNOTATION_DELETED = "realtime.gs2.io/deleted"
# The label the control plane's allocation puts on the GameServer, to find a room's relay by.
LABEL_INCARNATION = ANNOTATION_INCARNATION
# Written by the relay through the SDK, which prefixes "agones.dev/sdk-" to the key (a key with
# its own "/" would make an invalid Kubernetes name): agones.dev/sdk-gs2-room, .../sdk-gs2-address.
SDK_LABEL_ROOM = "gs2-room"
SDK_ANNOTATION_ADDRESS = "gs2-address"

_LABEL_VALUE_BAD = re.compile(r"[^A-Za-z0-9_.-]")


@dataclass(frozen=True, slots=True)
class Assignment:
    namespace: str
    room: str
    room_key: str
    agent_secret: str | None
    control_url: str | None
    incarnation: str | None = None
    token_public_key: str | None = None
    gs2_clients: bool = True


def label_value(text: str) -> str:
    """A valid Kubernetes label value: at most 63 of [A-Za-z0-9_.-], alphanumeric at both ends."""
    return _LABEL_VALUE_BAD.sub("-", text)[:63].strip("_.-")


def parse_assignment(gameserver: dict[str, Any]) -> Assignment | None:
    """The room this Allocated GameServer was given; None while the annotations are incomplete.
    ValueError for annotations that are present but unusable (never echoes the key)."""
    meta = gameserver.get("object_meta") or {}
    notes = meta.get("annotations") or {}
    namespace = str(notes.get(ANNOTATION_NAMESPACE) or "").strip()
    room = str(notes.get(ANNOTATION_ROOM) or "").strip()
    room_key = str(notes.get(ANNOTATION_ROOM_KEY) or "").strip()
    if not (namespace and room and room_key):
        return None
    try:
        decode_room_key(room_key)
    except ValueError as exc:
        raise ValueError(f"{ANNOTATION_ROOM_KEY}: {exc}") from None
    control_url = str(notes.get(ANNOTATION_CONTROL_URL) or "").strip() or None
    if control_url and not re.match(r"^https?://[^/\s]+", control_url):
        raise ValueError(f"{ANNOTATION_CONTROL_URL}: not an http(s) URL")
    secret = str(notes.get(ANNOTATION_AGENT_SECRET) or "").strip() or None
    incarnation = str(notes.get(ANNOTATION_INCARNATION) or "").strip() or None
    token_key = str(notes.get(ANNOTATION_TOKEN_PUBLIC_KEY) or "").strip() or None
    gs2 = str(notes.get(ANNOTATION_GS2_CLIENTS) or "true").strip().lower()
    if gs2 not in ("true", "false"):
        raise ValueError(f"{ANNOTATION_GS2_CLIENTS}: not true or false")
    return Assignment(namespace, room, room_key, secret, control_url, incarnation, token_key, gs2 == "true")


def is_allocated(gameserver: dict[str, Any]) -> bool:
    return (gameserver.get("status") or {}).get("state") == "Allocated"


def is_deleted_room(gameserver: dict[str, Any]) -> bool:
    """The control plane marked the room deleted (ANNOTATION_DELETED)."""
    notes = (gameserver.get("object_meta") or {}).get("annotations") or {}
    return bool(str(notes.get(ANNOTATION_DELETED) or "").strip())


def is_ending(gameserver: dict[str, Any]) -> bool:
    """Shutdown state, or a deletion timestamp (int64 as a string; "0" when unset)."""
    meta = gameserver.get("object_meta") or {}
    deleted = str(meta.get("deletion_timestamp") or "0").strip()
    return (gameserver.get("status") or {}).get("state") == "Shutdown" or deleted not in ("", "0")


def player_port(gameserver: dict[str, Any]) -> int | None:
    """The host port players use: the port named "default", else the first."""
    ports = [p for p in (gameserver.get("status") or {}).get("ports") or [] if isinstance(p, dict)]
    chosen = next((p for p in ports if p.get("name") == "default"), ports[0] if ports else None)
    try:
        return int(chosen["port"]) if chosen else None
    except (KeyError, TypeError, ValueError):
        return None


# --- the room's life ------------------------------------------------------------------------------


class _Advertised:
    """The relay as the agent registers it: the GameServer's host port, not the containerPort."""

    def __init__(self, relay: Relay, port: int) -> None:
        self.relay = relay
        self.host = relay.host
        self.port = port
        self.admin_port: int | None = None  # the admin server is not exposed outside the pod

    def stats(self) -> RelayStats:
        return self.relay.stats()

    def add_session_listener(self, callback: Callable[[], None]) -> None:
        self.relay.add_session_listener(callback)

    async def close(self, reason: CloseReason, text: str = "") -> None:
        await self.relay.close(reason, text)

    async def wait_closed(self) -> CloseReason:
        return await self.relay.wait_closed()


async def _health_loop(sdk: AgonesSDK, interval: float) -> None:
    """Agones marks a GameServer Unhealthy when pings stop, in Ready as well as Allocated."""
    failures = FailureLog(log, "agones health ping failed")
    while True:
        try:
            await sdk.health()
            failures.succeeded()
        except (httpx.HTTPError, AgonesError) as exc:
            failures.failed(repr(exc))
        # on a pass the relay has anyway, twice the interval at most (fleet.yaml allows 15 s)
        await rides.pass_after(interval, 2 * interval)


async def _updates(sdk: AgonesSDK, poll_interval: float) -> AsyncIterator[dict[str, Any]]:
    """GameServer states: the watch stream (reopened with backoff when it ends) plus a GET every
    poll_interval, which covers updates made before the watch was open."""
    queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()

    async def watch() -> None:
        attempt = 0
        ended = FailureLog(log, "agones watch ended")
        while True:
            try:
                async with contextlib.aclosing(sdk.watch_gameserver()) as stream:
                    async for gameserver in stream:
                        attempt = 0
                        ended.succeeded()
                        queue.put_nowait(gameserver)
            except (httpx.HTTPError, AgonesError) as exc:
                ended.failed(repr(exc), "reopening it")
            await asyncio.sleep(backoff(attempt, base=0.2, cap=5.0))
            attempt += 1

    async def poll() -> None:
        while True:
            with contextlib.suppress(httpx.HTTPError, AgonesError):
                queue.put_nowait(await sdk.get_gameserver())
            await asyncio.sleep(poll_interval)

    tasks = [asyncio.create_task(watch()), asyncio.create_task(poll())]
    try:
        while True:
            yield await queue.get()
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def _wait_for_assignment(
    sdk: AgonesSDK, poll_interval: float
) -> tuple[Assignment, dict[str, Any]] | None:
    """The room and the GameServer it came with; None when the GameServer ends first."""
    refused: set[str] = set()
    async with contextlib.aclosing(_updates(sdk, poll_interval)) as updates:
        async for gameserver in updates:
            if is_ending(gameserver):
                return None
            if not is_allocated(gameserver):
                continue
            try:
                assignment = parse_assignment(gameserver)
            except ValueError as exc:
                if str(exc) not in refused:  # once per distinct problem, not once per update
                    refused.add(str(exc))
                    log.warning("agones allocation refused, waiting for a usable one: %s", exc)
                continue
            if assignment is None:
                if "incomplete" not in refused:
                    refused.add("incomplete")
                    log.warning("allocated without the room annotations; waiting")
                continue
            return assignment, gameserver
    return None


async def _close_when_ending(sdk: AgonesSDK, relay: Relay, poll_interval: float) -> None:
    async with contextlib.aclosing(_updates(sdk, poll_interval)) as updates:
        async for gameserver in updates:
            if is_deleted_room(gameserver):
                await relay.close(CloseReason.DELETED)
                return
            if is_ending(gameserver):
                await relay.close(CloseReason.SHUTDOWN, "game server shutting down")
                return


async def _first_done(waits: list[asyncio.Task[Any]]) -> None:
    """Waits for the first task and cancels the rest."""
    try:
        await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in waits:
            task.cancel()
        await asyncio.gather(*waits, return_exceptions=True)


async def _annotate(sdk: AgonesSDK, room: str, address: str) -> None:
    """Best effort: kubectl-visible metadata, not needed for serving."""
    for call, key, value in (
        (sdk.set_label, SDK_LABEL_ROOM, label_value(room)),
        (sdk.set_annotation, SDK_ANNOTATION_ADDRESS, address),
    ):
        try:
            await call(key, value)
        except (httpx.HTTPError, AgonesError) as exc:
            log.warning("agones metadata %s: %r", key, exc)


async def run_agones(
    base: RelayLaunch,
    sdk: AgonesSDK,
    health_interval: float = 2.0,
    stop: asyncio.Event | None = None,
    poll_interval: float = 5.0,
) -> CloseReason:
    """One Agones GameServer's life; returns why its room ended. Setting `stop` (SIGTERM) closes
    the room with SHUTDOWN, or ends the wait for an allocation."""
    stop = stop or asyncio.Event()
    if not base.relay.port:
        log.warning("agones: --port 0 binds a random port; give the GameServer's containerPort")
    health: asyncio.Task[None] | None = None
    relay: Relay | None = None
    agent: Agent | None = None
    guard: CapsGuard | None = None
    reason = CloseReason.SHUTDOWN
    try:
        if not await _unless_stopped(sdk.get_gameserver(), stop):  # retries until the sidecar answers
            log.info("agones: stopped before the sidecar answered")
            return reason
        # pings start once the sidecar answers: before, they would only fail beside the retries
        health = asyncio.create_task(_health_loop(sdk, health_interval))
        if not await _unless_stopped(sdk.ready(), stop):  # it retries too: SIGTERM must not wait it out
            log.info("agones: stopped before Ready was acknowledged")
            return reason
        log.info("agones: ready, waiting for an allocation")
        waiting = asyncio.create_task(_wait_for_assignment(sdk, poll_interval))
        stopping = asyncio.create_task(stop.wait())
        await _first_done([waiting, stopping])
        got = waiting.result() if waiting.done() and not waiting.cancelled() else None
        if got is None:
            log.info("agones: game server ended before an allocation")
            return reason
        assignment, gameserver = got
        address = str((gameserver.get("status") or {}).get("address") or "")
        launch = replace(
            base.with_room(
                room_key=assignment.room_key,
                token_public_key=assignment.token_public_key or base.relay.token_public_key,
                gs2_clients=assignment.gs2_clients and base.relay.gs2_clients,
            ),
            namespace=assignment.namespace,
            room=assignment.room,
            incarnation=assignment.incarnation or base.incarnation,
            agent_secret=assignment.agent_secret or base.agent_secret,
            control_url=assignment.control_url or base.control_url,
            advertise_host=base.advertise_host or address or None,
        )
        started = Relay(launch.room_config())
        # Prometheus on Kubernetes learns no room from the pod: the relay's series carry it
        started.metrics.labels = {"gs2_namespace": launch.namespace or "", "gs2_room": launch.room or ""}
        await started.start()
        relay = started  # only a started relay is closed below
        # the pod's limits are the hard caps
        guard = guard_relay(relay, launch.tier, launch.caps, relay.metrics.registry)
        host_port = player_port(gameserver) or relay.port
        told = launch.advertise_host or address  # what players are told, in the annotation too
        log.info("agones: room %s/%s on %s:%d", launch.namespace, launch.room, told, host_port)
        await _annotate(sdk, assignment.room, f"{told}:{host_port}")
        agent_config = launch.agent()
        if agent_config is not None:
            agent = Agent(_Advertised(relay, host_port), agent_config)
            await agent.start()
        watcher = asyncio.create_task(_close_when_ending(sdk, relay, poll_interval))
        stopping = asyncio.create_task(stop.wait())
        closed = asyncio.create_task(relay.wait_closed())
        await _first_done([watcher, stopping, closed])
        await relay.close(CloseReason.SHUTDOWN, "relay stopping")  # no-op when already closed
        reason = await relay.wait_closed()
        return reason
    finally:
        if guard is not None:
            guard.stop()
        if relay is not None:
            await relay.close(CloseReason.SHUTDOWN, "relay stopping")
        if agent is not None:
            await agent.stop(reason)
        if health is not None:
            health.cancel()
            await asyncio.gather(health, return_exceptions=True)
        if sdk.reached:  # a sidecar that never answered has nothing to be told
            try:
                await sdk.shutdown()
            except (httpx.HTTPError, AgonesError) as exc:
                log.warning("agones shutdown failed: %r", exc)


async def _unless_stopped(call: Any, stop: asyncio.Event) -> bool:
    """Awaits `call` unless `stop` is set first (then cancels it): False when stopped."""
    task = asyncio.ensure_future(call)
    stopping = asyncio.create_task(stop.wait())
    try:
        await asyncio.wait({task, stopping}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopping.cancel()
        if not task.done():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
    if task.cancelled():
        return False
    task.result()  # its error, if any
    return True


async def serve_agones(base: RelayLaunch, sdk: AgonesSDK | None = None) -> int:
    """`relay serve` under Agones: SIGTERM/SIGINT stop the room (or the wait for one). A sidecar
    that never answers is one ERROR line and exit status 1, not a traceback."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    sdk = sdk or AgonesSDK()
    try:
        reason = await run_agones(base, sdk, stop=stop)
    except (httpx.HTTPError, AgonesError) as exc:
        log.error(
            "agones sidecar at %s: %r after %g s of retries (is this a GameServer pod?)",
            sdk.base,
            exc,
            sdk.retry_for,
        )
        return 1
    finally:
        await sdk.aclose()
    log.info("relay exiting: %s", reason.name.lower())
    return 0
