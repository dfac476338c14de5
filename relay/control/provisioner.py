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

from relay.agent.launch import LaunchError, RelayLaunch, room_of
from relay.control.relay_logs import PRUNE_INTERVAL, LogRetention, prune
from relay.host.spawner import ProcessHandle, Spawner, SubprocessSpawner, pid_alive, relay_environment

log = logging.getLogger("relay.control.provisioner")

ExitCallback = Callable[[str, str, int | None, str | None], Awaitable[None]]
"""on_exit(namespace, room, returncode, reason) once a relay process is gone; reason is the
handle's `exit_reason` when it knows why (e.g. "cap_exceeded" after an OOM kill), else None."""


@dataclass(frozen=True, slots=True)
class RelayRequest:
    namespace: str
    room: str
    room_key: str
    agent_secret: str
    control_url: str
    heartbeat_interval: float
    idle_heartbeat_interval: float
    token_public_key: str | None = None


@runtime_checkable
class Provisioner(Protocol):
    def set_exit_callback(self, callback: ExitCallback) -> None: ...

    async def start(self) -> None:
        """Readies whatever starts relays, before the first room is wanted."""
        ...

    async def provision(self, request: RelayRequest) -> int | None:
        """Starts a relay for the room; returns its pid when it is a local process."""
        ...

    async def stop(self, namespace: str, room: str, pid: int | None = None) -> None:
        """Stops the room's relay (graceful, then forced); no-op if there is none, or if `pid` is
        given and the tracked relay is another process (a newer room of the same name)."""
        ...

    def adopt(self, namespace: str, room: str, pid: int | None) -> bool:
        """After a control-plane restart: True if the room's relay (pid) still runs, now tracked."""
        ...

    def alive(self, namespace: str, room: str) -> bool | None:
        """Whether the room's relay process is running (None: unknown to this provisioner)."""
        ...

    def registered(self, namespace: str, room: str) -> None:
        """The room's relay registered its address (its start-up is over)."""
        ...

    def notify_deleted(self, namespace: str, room: str, pid: int | None = None) -> None:
        """The room was deleted: its relay should drain (CLOSING "deleted") and exit now."""
        ...

    async def close(self, stop_all: bool) -> None: ...


def pid_is_relay(pid: int, namespace: str, room: str) -> bool:
    """pid alive and (where /proc exists) really the relay for this room, not a reused pid."""
    if not pid_alive(pid):
        return False
    try:
        args = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return True
    found_namespace, found_room = room_of(args)
    return found_room == room and found_namespace in (None, namespace)


class _Adopted:
    """A relay started by an earlier control-plane process: signalled by pid, polled for exit."""

    __slots__ = ("namespace", "pid", "room")

    def __init__(self, pid: int, namespace: str, room: str) -> None:
        self.pid = pid
        self.namespace = namespace
        self.room = room

    async def wait(self) -> int | None:
        while pid_is_relay(self.pid, self.namespace, self.room):
            await asyncio.sleep(0.1)
        return None

    def terminate(self) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(self.pid, signal.SIGTERM)

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(self.pid, signal.SIGKILL)


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
        gs2_clients: bool = True,
    ) -> None:
        """`gs2_clients` False: no relay accepts GS2 game clients (neither does one whose
        `extra_args` say --no-gs2-clients)."""
        self.relay_command = tuple(relay_command)
        self.gs2_clients = gs2_clients
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
        self._starting: set[tuple[str, str]] = set()  # spawn() under way: its log is in use
        self._procs: dict[tuple[str, str], ProcessHandle | _Adopted] = {}
        self._watchers: dict[tuple[str, str], asyncio.Task[None]] = {}
        self._on_exit: ExitCallback | None = None
        self._registered_early: set[tuple[str, str]] = set()

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

    def _running(self, namespace: str, room: str) -> bool:
        key = (namespace, room)
        return key in self._procs or key in self._starting

    async def _prune_logs(self) -> None:
        assert self.log_dir is not None
        while True:
            await asyncio.sleep(self.prune_interval)
            try:
                done = await asyncio.to_thread(prune, self.log_dir, self._running, self.log_retention)
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
                gs2_clients=self.gs2_clients and base.relay.gs2_clients,
            ),
            control_url=request.control_url,
            namespace=request.namespace,
            room=request.room,
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
        return None if self.log_dir is None else self.log_dir / namespace / f"{room}.log"

    async def provision(self, request: RelayRequest) -> int | None:
        key = (request.namespace, request.room)
        if key in self._procs:  # the relay of an earlier room of this name is still stopping
            await self.stop(*key)
        self._starting.add(key)
        try:
            handle = await self.spawner.spawn(
                self.argv(request), self.env(request), self.log_path(request.namespace, request.room)
            )
            self._track(key, handle)
        finally:
            self._starting.discard(key)
        return handle.pid

    def _track(self, key: tuple[str, str], handle: ProcessHandle | _Adopted) -> None:
        self._procs[key] = handle
        if key in self._registered_early:
            self._registered_early.discard(key)
            self.registered(*key)
        self._watchers[key] = asyncio.get_running_loop().create_task(self._watch(key, handle))

    async def _watch(self, key: tuple[str, str], handle: ProcessHandle | _Adopted) -> None:
        code: int | None = None
        try:
            code = await handle.wait()
        finally:
            if self._procs.get(key) is handle:
                del self._procs[key]
                self._watchers.pop(key, None)
        reason = getattr(handle, "exit_reason", None)
        log.info("relay %s/%s (pid %s) exited with %s (%s)", key[0], key[1], handle.pid, code, reason or "-")
        if self._on_exit is not None:
            try:
                await self._on_exit(key[0], key[1], code, reason)
            except Exception:
                log.exception("exit callback failed for %s/%s", *key)

    def adopt(self, namespace: str, room: str, pid: int | None) -> bool:
        key = (namespace, room)
        if key in self._procs:
            return True
        if pid is None or not pid_is_relay(pid, namespace, room):
            return False
        self._track(key, _Adopted(pid, namespace, room))
        return True

    def alive(self, namespace: str, room: str) -> bool | None:
        return (namespace, room) in self._procs

    def notify_deleted(self, namespace: str, room: str, pid: int | None = None) -> None:
        handle = self._procs.get((namespace, room))
        if handle is not None and (pid is None or handle.pid == pid):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(handle.pid, signal.SIGUSR1)  # `relay serve`: drain as deleted

    def registered(self, namespace: str, room: str) -> None:
        key = (namespace, room)
        if key not in self._procs:  # registered before spawn() returned: tell the handle then
            self._registered_early.add(key)
            return
        hook = getattr(self._procs[key], "registered", None)  # CappedHandle
        if hook is not None:
            hook()

    async def stop(self, namespace: str, room: str, pid: int | None = None) -> None:
        key = (namespace, room)
        handle = self._procs.get(key)
        watcher = self._watchers.get(key)
        if handle is None or watcher is None or (pid is not None and handle.pid != pid):
            return
        handle.terminate()
        done, _ = await asyncio.wait({watcher}, timeout=self.stop_grace)
        if not done:
            log.warning("relay %s/%s ignored SIGTERM for %.1fs: SIGKILL", namespace, room, self.stop_grace)
            handle.kill()
            await asyncio.wait({watcher}, timeout=5.0)

    async def close(self, stop_all: bool) -> None:
        if self._pruner is not None:
            self._pruner.cancel()
            await asyncio.gather(self._pruner, return_exceptions=True)
            self._pruner = None
        if stop_all:
            await asyncio.gather(
                *(self.stop(ns, room) for ns, room in list(self._procs)), return_exceptions=True
            )
        for task in list(self._watchers.values()):
            task.cancel()
        self._watchers.clear()
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

    async def stop(self, namespace: str, room: str, pid: int | None = None) -> None:
        pass

    def adopt(self, namespace: str, room: str, pid: int | None) -> bool:
        return False

    def alive(self, namespace: str, room: str) -> bool | None:
        return None

    def registered(self, namespace: str, room: str) -> None:
        pass

    def notify_deleted(self, namespace: str, room: str, pid: int | None = None) -> None:
        pass

    async def close(self, stop_all: bool) -> None:
        pass
