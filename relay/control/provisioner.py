"""Getting a relay for a room: the Provisioner interface, the local one, and pluggable spawning.

LocalProvisioner runs one `relay serve` process per room on this machine. How a process is
created is a `Spawner` (default: a plain subprocess), so a zygote fork-server and cgroup
placement (relay/host/zygote.py, cgroups.py) can be plugged in without touching this module.
The provisioner only starts and stops processes; the room's address comes from the relay's
agent registering with the control plane.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Protocol, runtime_checkable

from relay.agent.launch import LaunchError, RelayLaunch, incarnation_of, room_of
from relay.control.filenames import component
from relay.control.relay_logs import PRUNE_INTERVAL, LogRetention, prune
from relay.host.capacity import Capacity
from relay.host.spawner import (
    PidHandle,
    ProcessHandle,
    Spawner,
    SubprocessSpawner,
    cmdline,
    commands,
    pid_alive,
    relay_environment,
)

log = logging.getLogger("relay.control.provisioner")

ExitCallback = Callable[[str, str, str, int | None, str | None], Awaitable[None]]
"""on_exit(namespace, room, incarnation, returncode, reason) once a relay process is gone; reason
is the handle's `exit_reason` when it knows why (e.g. "cap_exceeded" after an OOM kill), else None.
The incarnation says whose relay it was: a later room of the same name has another."""


@dataclass(frozen=True, slots=True)
class RelayRequest:
    namespace: str
    room: str
    incarnation: str
    room_key: str
    agent_secret: str
    control_url: str
    heartbeat_interval: float
    idle_heartbeat_interval: float
    token_public_key: str | None = None
    gs2_clients: bool = True  # False: the relay refuses GS2 game clients (relay_gs2_clients)


@runtime_checkable
class Provisioner(Protocol):
    """Relays are known by the room incarnation they serve (RoomRecord.incarnation), never by the
    room's name: the relay of a deleted room may still be draining when a new room of that name
    gets its own."""

    def set_exit_callback(self, callback: ExitCallback) -> None: ...

    async def start(self) -> None:
        """Readies whatever starts relays, before the first room is wanted."""
        ...

    async def provision(self, request: RelayRequest) -> int | None:
        """Starts a relay for the room; returns its pid when it is a local process."""
        ...

    async def stop(self, incarnation: str) -> None:
        """Stops that incarnation's relay (graceful, then forced); no-op if there is none."""
        ...

    def running_relays(self) -> dict[str, list[int]]:
        """After a control-plane restart: the relays running on this host, by the incarnation
        their command line names (a relay spawned just before a crash has no pid on record)."""
        ...

    def adopt(self, namespace: str, room: str, incarnation: str, pid: int | None) -> bool:
        """After a control-plane restart: True if that incarnation's relay (pid) still runs, now tracked."""
        ...

    def alive(self, incarnation: str) -> bool | None:
        """Whether the incarnation's relay process is running (None: unknown to this provisioner)."""
        ...

    async def registered(self, incarnation: str) -> None:
        """The relay registered its address: its start-up is over. Returns once its caps are all
        on (waiting for its spawn to finish if the relay was quicker), before the address is shown."""
        ...

    def notify_deleted(self, incarnation: str) -> None:
        """The room was deleted: its relay should drain (CLOSING "deleted") and exit now."""
        ...

    def capacity_refusal(self, rooms: int) -> str | None:
        """Why no relay can be started for one more room while `rooms` are held; None: it can."""
        ...

    def metrics_target(self, ip_address: str, admin_port: int) -> str | None:
        """host:port where Prometheus scrapes the relay that registered these (its admin
        server's /metrics); None: not scraped through the control plane's target list."""
        ...

    async def close(self, stop_all: bool) -> None: ...


def pid_is_relay(pid: int, namespace: str, room: str, incarnation: str) -> bool:
    """pid alive and (where /proc exists) really the relay of this incarnation, not a reused pid;
    a relay whose command line names no incarnation (started before they existed) by its room."""
    if not pid_alive(pid):
        return False
    try:
        args = cmdline(pid)
    except OSError:
        return True
    found = incarnation_of(args)
    if found is not None:
        return found == incarnation
    found_namespace, found_room = room_of(args)
    return found_room == room and found_namespace in (None, namespace)


def relay_processes(proc: Path = Path("/proc")) -> dict[str, list[int]]:
    """Every `relay serve` on this host that names an incarnation, by incarnation."""
    found: dict[str, list[int]] = {}
    for pid, args in commands(proc):
        incarnation = incarnation_of(args)
        if incarnation is not None and "serve" in args and pid_alive(pid):
            found.setdefault(incarnation, []).append(pid)
    return found


@dataclass(slots=True)
class _Tracked:
    """One relay this provisioner watches: its handle, whose room it serves, its watcher."""

    handle: ProcessHandle
    namespace: str
    room: str
    watcher: asyncio.Task[None] | None = None


class LocalProvisioner:
    def __init__(
        self,
        relay_command: Sequence[str],
        relay_host: str = "127.0.0.1",
        advertise_host: str | None = None,
        extra_args: Sequence[str] = (),
        stop_grace: float = 3.0,
        log_dir: Path | None = None,
        spawner: Spawner | None = None,
        log_retention: LogRetention | None = None,
        prune_interval: float = PRUNE_INTERVAL,
        capacity: Capacity | None = None,
    ) -> None:
        self.relay_command = tuple(relay_command)
        self.capacity = capacity or Capacity()
        self.relay_host = relay_host
        self.advertise_host = advertise_host
        try:
            self.base = RelayLaunch.parse(list(extra_args), environ={}, room_key_required=False)
        except LaunchError as exc:
            raise ValueError(f"relay_extra_args: {exc}") from None
        self.stop_grace = stop_grace
        self.log_dir = log_dir
        self.spawner: Spawner = spawner or SubprocessSpawner()
        self.log_retention = log_retention or LogRetention()
        self.prune_interval = prune_interval
        self._pruner: asyncio.Task[None] | None = None
        self._spawning: dict[str, tuple[str, str, asyncio.Future[None]]] = {}  # its log is in use
        self._procs: dict[str, _Tracked] = {}  # by incarnation
        self._on_exit: ExitCallback | None = None
        self._closed = False  # no relay is started from then on

    def set_exit_callback(self, callback: ExitCallback) -> None:
        self._on_exit = callback

    async def start(self) -> None:
        """Readies the spawner (a zygote template) so the first room does not pay its start, and
        starts pruning relay logs (relay/control/relay_logs.py)."""
        start = getattr(self.spawner, "start", None)
        if start is not None:
            try:
                await start()
            except Exception:
                log.exception("spawner did not start; relays will start on demand")
        if self.log_dir is not None and self._pruner is None:
            self._pruner = asyncio.get_running_loop().create_task(self._prune_logs())

    def _running_logs(self) -> set[tuple[str, str]]:
        """(namespace folder, room file stem) of every relay running or being spawned."""
        rooms = [(t.namespace, t.room) for t in self._procs.values()]
        rooms += [(ns, room) for ns, room, _ in self._spawning.values()]
        return {(component(ns), component(room)) for ns, room in rooms}

    async def _prune_logs(self) -> None:
        assert self.log_dir is not None
        while True:
            await asyncio.sleep(self.prune_interval)
            running = self._running_logs()  # taken here, on the loop; read in the thread
            try:
                done = await asyncio.to_thread(
                    prune,
                    self.log_dir,
                    lambda ns, room, running=running: (ns, room) in running,
                    self.log_retention,
                )
            except Exception:
                log.exception("pruning relay logs failed")
                continue
            if done.removed or done.cut:
                log.info("relay logs: %d removed, %d cut", done.removed, done.cut)

    def launch(self, request: RelayRequest) -> RelayLaunch:
        """The room's relay, typed: relay_extra_args first, then what this room needs."""
        base = self.base
        return replace(
            base.with_room(
                host=self.relay_host,
                port=0,
                admin_port=0,
                room_key=request.room_key,
                token_public_key=request.token_public_key or base.relay.token_public_key,
                # off where the request or relay_extra_args (--no-gs2-clients) says so
                gs2_clients=request.gs2_clients and base.relay.gs2_clients,
            ),
            control_url=request.control_url,
            namespace=request.namespace,
            room=request.room,
            incarnation=request.incarnation,
            agent_secret=request.agent_secret,
            advertise_host=self.advertise_host or base.advertise_host,
            heartbeat_interval=request.heartbeat_interval,
            idle_heartbeat_interval=request.idle_heartbeat_interval,
        )

    def argv(self, request: RelayRequest) -> list[str]:
        return [*self.relay_command, *self.launch(request).argv()]

    def env(self, request: RelayRequest) -> dict[str, str]:
        return relay_environment(self.launch(request).env())

    def log_path(self, namespace: str, room: str) -> Path | None:
        """relay-logs/<namespace>/<room>.log, each name through filenames.component: `.`, `..` or
        `standby` name a folder and a file of their own, inside relay-logs."""
        if self.log_dir is None:
            return None
        return self.log_dir / component(namespace) / f"{component(room)}.log"

    async def provision(self, request: RelayRequest) -> int | None:
        """A relay for the room. Once `close()` has begun none is started: the provisioning is
        cancelled, as the ones in flight when the control plane began to stop were, and the room
        stays pending for the next control plane (a wantRoom answered as the stop began would
        otherwise get a relay that nothing stops, from a spawner already closed)."""
        if self._closed:
            raise asyncio.CancelledError("the provisioner is closed: its control plane is stopping")
        key = request.incarnation
        spawned = asyncio.get_running_loop().create_future()
        self._spawning[key] = (request.namespace, request.room, spawned)
        try:
            handle = await self.spawner.spawn(
                self.argv(request), self.env(request), self.log_path(request.namespace, request.room)
            )
            self._track(key, _Tracked(handle, request.namespace, request.room))
        finally:
            del self._spawning[key]
            spawned.set_result(None)
        return handle.pid

    async def _stop_all(self) -> None:
        """Stops every relay this provisioner started or adopted, and those whose spawn is under
        way (a room wanted as the control plane began to stop, its HTTP server still answering):
        each is stopped once its spawn returns. No spawn starts after `close()` has begun, so
        this ends."""
        stopping: set[str] = set()
        while True:
            keys = [key for key in self._procs if key not in stopping]
            spawning = [asyncio.shield(spawned) for _, _, spawned in self._spawning.values()]
            if not keys and not spawning:
                return
            stopping.update(keys)
            await asyncio.gather(*(self.stop(key) for key in keys), *spawning, return_exceptions=True)

    def _track(self, key: str, tracked: _Tracked) -> None:
        self._procs[key] = tracked
        tracked.watcher = asyncio.get_running_loop().create_task(self._watch(key, tracked))

    async def _watch(self, key: str, tracked: _Tracked) -> None:
        handle = tracked.handle
        code: int | None = None
        try:
            code = await handle.wait()
        finally:
            if self._procs.get(key) is tracked:
                del self._procs[key]
        reason = getattr(handle, "exit_reason", None)
        log.info(
            "relay %s/%s (pid %s) exited with %s (%s)",
            tracked.namespace,
            tracked.room,
            handle.pid,
            code,
            reason or "-",
        )
        if self._on_exit is not None:
            try:
                await self._on_exit(tracked.namespace, tracked.room, key, code, reason)
            except Exception:
                log.exception("exit callback failed for %s/%s", tracked.namespace, tracked.room)

    def running_relays(self) -> dict[str, list[int]]:
        found = relay_processes()
        running_rooms = getattr(self.spawner, "running_rooms", None)  # rooms in group processes
        if running_rooms is not None:
            for incarnation, pids in running_rooms().items():
                found.setdefault(incarnation, []).extend(pids)
        return found

    def adopt(self, namespace: str, room: str, incarnation: str, pid: int | None) -> bool:
        if incarnation in self._procs or incarnation in self._spawning:
            return True
        if pid is None:
            return False
        handle: ProcessHandle | None = None
        if pid_is_relay(pid, namespace, room, incarnation):
            adopt = getattr(self.spawner, "adopt", None)  # a CappedSpawner: back in its group, capped
            handle = (adopt(pid) if adopt is not None else None) or PidHandle(pid)
        else:
            adopt_room = getattr(self.spawner, "adopt_room", None)  # a room in a group process
            handle = adopt_room(pid, incarnation) if adopt_room is not None else None
        if handle is None:
            return False
        self._track(incarnation, _Tracked(handle, namespace, room))
        return True

    def alive(self, incarnation: str) -> bool | None:
        return incarnation in self._procs

    def notify_deleted(self, incarnation: str) -> None:
        tracked = self._procs.get(incarnation)
        if tracked is None:
            return
        deleted = getattr(tracked.handle, "deleted", None)
        if deleted is not None:  # a room in a group process: told through the group
            deleted()
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(tracked.handle.pid, signal.SIGUSR1)  # `relay serve`: drain as deleted

    def capacity_refusal(self, rooms: int) -> str | None:
        return self.capacity.refusal(rooms)

    def metrics_target(self, ip_address: str, admin_port: int) -> str | None:
        """The admin server binds relay_extra_args' --admin-host (127.0.0.1 by default) on this
        host; one on every address is reached where the relay said it is."""
        host = self.base.relay.admin_host
        return f"{ip_address if host in ('0.0.0.0', '::', '') else host}:{admin_port}"

    async def registered(self, incarnation: str) -> None:
        spawning = self._spawning.get(incarnation)
        if spawning is not None:  # registered before spawn() returned: the handle comes with it
            await asyncio.shield(spawning[2])
        tracked = self._procs.get(incarnation)
        hook = getattr(tracked.handle, "registered", None) if tracked is not None else None
        if hook is not None:  # CappedHandle: the CPU quota goes on
            hook()

    async def stop(self, incarnation: str) -> None:
        tracked = self._procs.get(incarnation)
        if tracked is None or tracked.watcher is None:
            return
        handle, watcher = tracked.handle, tracked.watcher
        handle.terminate()
        done, _ = await asyncio.wait({watcher}, timeout=self.stop_grace)
        if not done:
            log.warning(
                "relay %s/%s ignored SIGTERM for %.1fs: SIGKILL",
                tracked.namespace,
                tracked.room,
                self.stop_grace,
            )
            handle.kill()
            await asyncio.wait({watcher}, timeout=5.0)

    async def close(self, stop_all: bool) -> None:
        self._closed = True
        if self._pruner is not None:
            self._pruner.cancel()
            await asyncio.gather(self._pruner, return_exceptions=True)
            self._pruner = None
        if stop_all:
            await self._stop_all()
        watchers = [t.watcher for t in self._procs.values() if t.watcher is not None]
        for task in watchers:
            task.cancel()
        self._procs.clear()
        close = getattr(self.spawner, "close", None)  # a zygote template, for one
        if close is not None:
            await close()


class NullProvisioner:
    """Records only: rooms stay pending until something registers them (external provisioning)."""

    def set_exit_callback(self, callback: ExitCallback) -> None:
        pass

    async def start(self) -> None:
        pass

    async def provision(self, request: RelayRequest) -> int | None:
        return None

    async def stop(self, incarnation: str) -> None:
        pass

    def running_relays(self) -> dict[str, list[int]]:
        return {}

    def adopt(self, namespace: str, room: str, incarnation: str, pid: int | None) -> bool:
        return False

    def alive(self, incarnation: str) -> bool | None:
        return None

    async def registered(self, incarnation: str) -> None:
        pass

    def notify_deleted(self, incarnation: str) -> None:
        pass

    def capacity_refusal(self, rooms: int) -> str | None:
        return None  # relays run elsewhere: their hosts say no by not registering

    def metrics_target(self, ip_address: str, admin_port: int) -> str | None:
        return f"{ip_address}:{admin_port}"  # a relay started elsewhere: where it said it is

    async def close(self, stop_all: bool) -> None:
        pass
