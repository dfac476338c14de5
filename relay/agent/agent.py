"""The agent inside every relay process: registers the room's address with the control plane,
heartbeats live figures, drains on delete, and reports why the room closed.

    agent = Agent(relay, AgentConfig(control_url, namespace, room, agent_secret))
    await agent.start()
    ...
    await agent.stop(reason)          # reports `closed` once (idempotent)

`start()` returns at once: registration runs in the background with exponential backoff and
jitter, so the relay serves its clients whether or not the control plane is up. Heartbeats come
every `heartbeat_interval` while anyone is in the room (on a pass the relay has anyway, a
members' PING at least: relay/server/rides.py) and every `idle_heartbeat_interval` while
it is quiet (a machine of idle rooms would otherwise keep its control plane busy answering them);
each says when the next will come, and a session beginning in a quiet room brings it forward. On
{"deleted": true} or 404 the agent closes the relay with CloseReason.DELETED (CLOSING to every
member); the relay's `wait_closed()` then ends `relay serve`. Whatever else ends the room (idle,
lifetime, shutdown, a cap), the agent reports it once; a deleted room's end is the control
plane's own doing, so it is not reported back (`REPORTED_BY_CONTROL`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from collections.abc import Callable
from enum import Enum
from typing import Any, Protocol

from relay.agent.caps import KeptFiles, cpu_seconds, rss_bytes
from relay.agent.config import AgentConfig
from relay.agent.control_client import ControlClient, ControlError, ControlUnavailable, RoomGone, backoff
from relay.agent.wire import Closed, Heartbeat, Registration
from relay.logs import FailureLog
from relay.protocol.constants import CloseReason
from relay.server import rides
from relay.server.app import RelayStats

log = logging.getLogger("relay.agent")

CLOSED_REPORT_TIMEOUT = 2.0
REPORTED_BY_CONTROL = frozenset({"deleted"})
"""Ends the control plane recorded before the relay heard of them (deleteRoom, by a signal, a
group's stop or a heartbeat's answer): a `closed` report of one finds no room and changes nothing,
and the relay waited for its answer before exiting, the report queued behind the control plane's
work on the deletes themselves (docs/architecture.md)."""


class RelayLike(Protocol):
    host: str
    port: int
    admin_port: int | None

    def stats(self) -> RelayStats: ...

    def add_session_listener(self, callback: Callable[[], None]) -> None: ...

    async def close(self, reason: CloseReason, text: str = "") -> None: ...

    async def wait_closed(self) -> Any: ...


def reason_text(reason: object) -> str:
    """CloseReason.DELETED -> "deleted"; strings pass through (e.g. "cap_exceeded")."""
    if isinstance(reason, Enum):
        return str(reason.name).lower()
    return str(reason) if reason else "shutdown"


def detect_address(bound_host: str | None) -> str:
    """The bound host, or for a wildcard bind the first non-loopback address of this machine."""
    if bound_host and bound_host not in ("0.0.0.0", "::", ""):
        return bound_host
    with contextlib.suppress(OSError), socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.connect(("192.0.2.1", 9))  # no packet is sent; this only picks the outgoing interface
        addr = s.getsockname()[0]
        if addr and not addr.startswith("127."):
            return addr
    with contextlib.suppress(OSError):
        for info in socket.getaddrinfo(socket.gethostname(), None, socket.AF_INET):
            addr = str(info[4][0])
            if not addr.startswith("127."):
                return addr
    return "127.0.0.1"


class Agent:
    def __init__(self, relay: RelayLike, config: AgentConfig) -> None:
        self.relay = relay
        self.config = config
        self.heartbeat_interval = config.heartbeat_interval
        self.idle_heartbeat_interval = config.quiet_interval
        self.client = ControlClient(config.control_url, config.namespace, config.room, config.agent_secret)
        self.registered = asyncio.Event()
        self.deleted = False
        self.closed_reason: str | None = None
        self.heartbeats_sent = 0
        self._tasks: list[asyncio.Task[None]] = []
        self._last_messages: tuple[float, int] | None = None
        self._closed_report: asyncio.Task[None] | None = None
        self._session_began = asyncio.Event()
        self._files = KeptFiles()  # /proc/self/statm at every heartbeat: a path's read cost ~190 us cold
        relay.add_session_listener(self._session_began.set)

    @property
    def address(self) -> str:
        return self.config.advertise_host or detect_address(self.relay.host)

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._run()), loop.create_task(self._watch_relay())]

    async def stop(self, reason: object = CloseReason.SHUTDOWN) -> None:
        current = asyncio.current_task()
        for task in self._tasks:
            if task is not current:
                task.cancel()
        await asyncio.gather(*(t for t in self._tasks if t is not current), return_exceptions=True)
        await self._report_closed(reason_text(reason))
        await self.client.aclose()
        self._files.close()

    def abandon(self) -> None:
        """Stops without a word: no `closed` report, heartbeats end. What a SIGKILLed relay's
        agent does, for a room a group process kills (relay/host/group.py): the control plane
        records the end it learns of from the spawner, not the agent's "shutdown". Call it
        before the relay ends, or the watcher reports that end as soon as it wakes."""
        for task in self._tasks:
            task.cancel()
        asyncio.get_running_loop().create_task(self.client.aclose())
        self._files.close()

    # --- background work -------------------------------------------------------------------
    async def _run(self) -> None:
        try:
            await self._heartbeat_loop(await self._register())
        except RoomGone:
            await self._drain()

    async def _register(self) -> float:
        """Registers; returns the heartbeat gap promised with it."""
        attempt = 0
        failures = FailureLog(log, "register failed")
        while True:
            try:
                promised = self._next_heartbeat()
                await self.client.register(
                    Registration(
                        self.address,
                        self.relay.port,
                        self.relay.admin_port,
                        os.getpid(),
                        promised,
                        self.config.incarnation,
                    )
                )
                self.registered.set()
                self._message_rate(self.relay.stats())  # the first heartbeat's rate starts here
                failures.succeeded()
                log.info("registered %s:%s", self.address, self.relay.port)
                return promised
            except RoomGone:
                raise
            except ControlError as exc:
                cap = self.config.register_retry_cap
                delay = backoff(attempt, base=min(0.2, self.heartbeat_interval, cap), cap=cap)
                failures.failed(exc, f"retrying (backoff up to {cap:g} s)")
                attempt += 1
                await asyncio.sleep(delay)

    def _next_heartbeat(self) -> float:
        stats = self.relay.stats()
        quiet = not stats.members and not stats.sessions
        return self.idle_heartbeat_interval if quiet else self.heartbeat_interval

    async def _pause(self, seconds: float) -> None:
        """Sleeps until the next heartbeat is due, or until a session begins in a quiet room (one
        that began while the last heartbeat was on its way counts too)."""
        if seconds > self.heartbeat_interval:
            self._session_began.clear()
            if self._next_heartbeat() <= self.heartbeat_interval:
                seconds = self.heartbeat_interval
        if seconds <= self.heartbeat_interval:
            # on a pass the relay has anyway (relay/server/rides.py; its members' PINGs at least),
            # twice the gap at most: the control plane waits `missed_heartbeats` promised gaps
            await rides.pass_after(seconds, 2 * seconds)
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._session_began.wait(), seconds)

    def _message_rate(self, stats: RelayStats) -> float:
        """Messages/s since the last call, which starts the next interval."""
        messages = stats.messages_in
        now = time.monotonic()
        rate = 0.0
        if self._last_messages is not None:
            then, count = self._last_messages
            if now > then:
                rate = max(0.0, (messages - count) / (now - then))
        self._last_messages = (now, messages)
        return rate

    def _heartbeat(self, next_heartbeat: float) -> Heartbeat:
        stats = self.relay.stats()
        members = stats.members
        rate = self._message_rate(stats)
        rss = rss_bytes(read=self._files.read)
        return Heartbeat(
            members, round(rate, 3), round(cpu_seconds(), 3), rss, next_heartbeat, self.config.incarnation
        )

    async def _heartbeat_loop(self, promised: float) -> None:
        """`promised`: the gap the control plane last heard from us (it counts missed gaps)."""
        failures = 0
        failed = FailureLog(log, "heartbeat failed")
        wait = promised
        while True:
            await self._pause(wait)
            try:
                interval = self._next_heartbeat()
                deleted = await self.client.heartbeat(self._heartbeat(interval))
                self.heartbeats_sent += 1
                failures = 0
                failed.succeeded()
                promised = wait = interval
                if deleted:
                    raise RoomGone("deleted")
            except ControlError as exc:
                if isinstance(exc, RoomGone):
                    raise
                # Quick retries after a blip, never sparser than the last promise heard.
                wait = backoff(failures, base=self.heartbeat_interval / 4, cap=promised)
                failures += 1
                failed.failed(exc, f"retrying within {promised:g} s")

    async def _drain(self) -> None:
        log.info("room deleted: draining")
        self.deleted = True
        await self.relay.close(CloseReason.DELETED)

    async def _watch_relay(self) -> None:
        reason = await self.relay.wait_closed()
        for task in self._tasks:
            if task is not asyncio.current_task():
                task.cancel()
        await self._report_closed(reason_text(reason))

    async def _report_closed(self, reason: str) -> None:
        """Sends `closed` once; later callers (stop after the watcher) wait for that same report.

        Shielded: a caller cancelled while it waits (the watcher, cancelled by stop(); a stop()
        cancelled by a shutdown) ends at once with its CancelledError, and the report goes on.
        A report cancelled by someone else (a loop shutting down) is not the caller's
        cancellation: the caller goes on (stop() still closes the client)."""
        report = self._closed_report
        if report is None:
            if self.closed_reason is None:  # the first end is the one
                self.closed_reason = reason
            if self.closed_reason in REPORTED_BY_CONTROL:
                return
            report = self._closed_report = asyncio.get_running_loop().create_task(self._send_closed(reason))
        try:
            await asyncio.shield(report)
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if (current is not None and current.cancelling()) or not report.cancelled():
                raise

    async def _send_closed(self, reason: str) -> None:
        deadline = time.monotonic() + CLOSED_REPORT_TIMEOUT
        attempt = 0
        while True:
            try:
                await asyncio.wait_for(
                    self.client.closed(Closed(reason, self.config.incarnation)),
                    max(0.05, deadline - time.monotonic()),
                )
                return
            except (TimeoutError, RoomGone):
                return
            except ControlUnavailable:
                delay = backoff(attempt, base=0.05, cap=0.5)
                attempt += 1
                if time.monotonic() + delay >= deadline:
                    return
                await asyncio.sleep(delay)
            except ControlError:
                return
