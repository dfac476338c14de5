"""Several rooms per relay process: the host's side of the rooms-per-process tier.

    spawner = GroupSpawner(CappedSpawner(ZygoteSpawner(), group_tier(NANO, 8)), rooms_per_process=8)
    handle = await spawner.spawn(argv, env, log_path)   # this room's handle, in a shared process

A `relay serve` spawn becomes a room in a group process (relay/host/group.py) with a free seat,
or in a new one started through the inner spawner (so a group is forked from the zygote template
and capped in one cgroup with the tier's caps times its rooms, `relay.agent.tiers.group_tier`).
The handle it returns is the room's, with the interface of a process's: `wait()` returns when
the room has ended (0) or its group died (the group's exit code; `exit_reason` as the inner
handle said, e.g. "cap_exceeded"), `terminate()` closes the room (CLOSING shutdown), `deleted()`
drains it (CLOSING deleted), `kill()` drops it at once; only a group that no longer answers is
killed whole. `pid` is the group's.

After a control-plane restart the groups go on serving their rooms; `running_rooms()` finds
them by their command line (`relay serve --group SOCKET`) and asks each for its rooms, and
`adopt_room()` reconnects to the group and tracks the room again. A group never takes rooms from
a control plane other than the one that started it: an adopted group serves its rooms out and
exits.

A spawn cancelled after its assignment went out (a control plane stopping) tells the group to
drop that room at once, and its seat stays taken until the group says the room has ended (or
that it never took it), so the count of a group's rooms stays true and no room runs untracked.
An assignment larger than a group reads (MAX_GROUP_FRAME) is refused before it is sent; a room
whose groups keep going away while taking it fails after ASSIGN_ATTEMPTS of them.

Any other command (a standby, another program) goes to the inner spawner unchanged.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import shutil
import socket
import stat
import sys
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from relay.agent.launch import incarnation_of
from relay.host.frames import HEADER, encode_frame, read_frame_async, read_frame_with
from relay.host.group import MAX_GROUP_FRAME, group_argv, group_of, parse_group_argv
from relay.host.spawner import (
    PidHandle,
    ProcessHandle,
    Spawner,
    cmdline,
    commands,
    pid_alive,
    relay_environment,
)
from relay.host.zygote import serve_args

log = logging.getLogger("relay.host.group_spawner")

CONNECT_TIMEOUT = 30.0
SOCKET_DIR_PREFIX = "relay-groups-"
"""A spawner's folder for its groups' sockets (in the temporary folder, for AF_UNIX's short paths)."""
ASK_TIMEOUT = 2.0
KILL_GRACE = 2.0
EXIT_WAIT = 5.0
"""Seconds a group has to drop a room it was told to kill before it is killed whole."""
ASSIGN_ATTEMPTS = 3
"""Groups a room is offered to, each gone while taking it, before its spawn fails."""


class GroupGone(ConnectionError):
    """The group process ended, or its connection did."""


class _Group:
    """One group process as its spawner sees it: its connection, its rooms' exits."""

    def __init__(self, handle: ProcessHandle, pid: int, path: str, capacity: int, ours: bool) -> None:
        self.handle = handle
        self.pid = pid
        self.path = path
        self.capacity = capacity
        self.ours = ours  # started by this spawner (takes rooms); else adopted (serves its rooms out)
        self.rooms: dict[str, asyncio.Future[tuple[int | None, str | None]]] = {}
        self.seats_taken = 0  # rooms served or being assigned
        self._writer: asyncio.StreamWriter | None = None
        self._answers: list[asyncio.Future[dict[str, Any]]] = []
        self._connected: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._reader_task: asyncio.Task[None] | None = None
        self.gone = False
        self.closed = False  # let go of by its spawner: never killed for a room from then on

    @property
    def free(self) -> int:
        return self.capacity - self.seats_taken if self.ours and not self.gone else 0

    async def connect(self, timeout: float) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            try:
                reader, writer = await asyncio.open_unix_connection(self.path)
                break
            except OSError:
                if loop.time() > deadline or not pid_alive(self.pid):
                    self._lost()
                    raise GroupGone(f"relay group pid {self.pid} did not listen on {self.path}") from None
                await asyncio.sleep(0.01)
        self._writer = writer
        self._reader_task = loop.create_task(self._read(reader))
        self._connected.set_result(None)

    async def _read(self, reader: asyncio.StreamReader) -> None:
        try:
            while (message := await read_frame_async(reader, MAX_GROUP_FRAME)) is not None:
                if message.get("op") == "exited":
                    exit_future = self.rooms.pop(str(message.get("incarnation")), None)
                    if exit_future is not None and not exit_future.done():
                        exit_future.set_result((0, None))
                elif self._answers:
                    answer = self._answers.pop(0)
                    if not answer.done():
                        answer.set_result(message)
        except (ValueError, ConnectionError) as exc:
            log.warning("relay group pid %s: connection lost (%s)", self.pid, exc)
        await self._ended()

    async def _ended(self) -> None:
        """The connection ended: the group exited (its watcher then ends its rooms), or it no
        longer answers with rooms in it, which are not left behind: it is killed."""
        self._lost()
        if self.rooms and pid_alive(self.pid):
            log.warning(
                "relay group pid %s stopped answering with %d rooms: killing it", self.pid, len(self.rooms)
            )
            self.handle.kill()

    def exited(self, code: int | None, reason: str | None) -> None:
        """The process is gone: so is every room it still had."""
        self._lost()
        for exit_future in self.rooms.values():
            if not exit_future.done():
                exit_future.set_result((code, reason))
        self.rooms.clear()
        self.close()

    def _lost(self) -> None:
        self.gone = True
        for answer in self._answers:
            if not answer.done():
                answer.set_exception(GroupGone(f"relay group pid {self.pid} is gone"))
        self._answers.clear()
        if not self._connected.done():
            self._connected.set_exception(GroupGone(f"relay group pid {self.pid} is gone"))
            self._connected.exception()  # retrieved: nobody may be waiting

    async def ask(self, message: dict[str, Any]) -> asyncio.Future[dict[str, Any]]:
        """Sends a request once connected; its answer's future. Once this returns the request is
        on its way (a cancellation then no longer unsends it)."""
        await self.tell(message)
        answer: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._answers.append(answer)
        return answer

    async def tell(self, message: dict[str, Any]) -> None:
        """Sends a request that has no answer, once connected."""
        await asyncio.shield(self._connected)
        if self.gone or self._writer is None:
            raise GroupGone(f"relay group pid {self.pid} is gone")
        self._writer.write(encode_frame(message))

    def send(self, message: dict[str, Any]) -> None:
        """Fire and forget (stop): written at once when connected (a closing spawner may let go of
        the group next), else once connected; dropped if the group is gone (its rooms are too)."""
        if self._writer is not None:
            if not self.gone:
                self._writer.write(encode_frame(message))
            return
        task = asyncio.get_running_loop().create_task(self.tell(message))
        task.add_done_callback(lambda t: t.cancelled() or t.exception())

    def forget(self, incarnation: str) -> None:
        """A room the group never took (it refused it): ended for its handle, its seat free."""
        exit_future = self.rooms.pop(incarnation, None)
        if exit_future is not None and not exit_future.done():
            exit_future.set_result((None, None))

    def close(self) -> None:
        self.closed = True
        if self._writer is not None:
            self._writer.close()
        if self._reader_task is not None:
            self._reader_task.cancel()


class GroupRoomHandle:
    """A room in a group process, with a process handle's interface (relay/host/spawner.py)."""

    __slots__ = ("_exit", "exit_reason", "group", "incarnation", "pid")

    def __init__(self, group: _Group, incarnation: str) -> None:
        self.group = group
        self.incarnation = incarnation
        self.pid = group.pid
        self.exit_reason: str | None = None
        self._exit = group.rooms.setdefault(incarnation, asyncio.get_running_loop().create_future())

    async def wait(self) -> int | None:
        code, self.exit_reason = await asyncio.shield(self._exit)
        return code

    def terminate(self) -> None:
        self._stop("shutdown")

    def deleted(self) -> None:
        """The room was deleted: it drains (CLOSING deleted), as SIGUSR1 tells a room's own process."""
        self._stop("deleted")

    def kill(self) -> None:
        """Drops the room at once. A group that cannot be told (its connection is gone), or that
        has not dropped it KILL_GRACE later, is wedged: it is killed, with every room in it."""
        if self._exit.done():
            return
        if self.group.gone:
            self.group.handle.kill()
            return
        self.drop()
        self.expect_gone()

    def drop(self) -> None:
        """Tells the group to drop the room at once (the kill, without the wedge check)."""
        self._stop("kill")

    def expect_gone(self) -> None:
        """A group that has not dropped the room KILL_GRACE from now is killed (unless its spawner
        has let go of it: a restarted control plane takes it over)."""
        asyncio.get_running_loop().call_later(KILL_GRACE, self._kill_wedged)

    def _kill_wedged(self) -> None:
        if not self._exit.done() and not self.group.closed:
            log.warning(
                "relay group pid %s did not drop room %s: killing the group", self.pid, self.incarnation
            )
            self.group.handle.kill()

    def registered(self) -> None:
        """The room registered: its group's CPU quota is on (the start-up boost of the group)."""
        hook = getattr(self.group.handle, "registered", None)
        if hook is not None:
            hook()

    def _stop(self, how: str) -> None:
        if not self._exit.done():
            self.group.send({"op": "stop", "incarnation": self.incarnation, "reason": how})


class GroupSpawner:
    def __init__(
        self,
        inner: Spawner,
        rooms_per_process: int,
        python: str = sys.executable,
        log_path: Path | None = None,
        socket_dir: Path | None = None,
        connect_timeout: float = CONNECT_TIMEOUT,
    ) -> None:
        if rooms_per_process < 1:
            raise ValueError("rooms_per_process must be at least 1")
        self.inner = inner
        self.rooms_per_process = rooms_per_process
        self.python = python
        self.log_path = log_path  # the groups' own records (a room's go to its own log)
        # a private folder (0700) for the sockets: rooms' secrets travel on them
        self.socket_dir = socket_dir or Path(tempfile.mkdtemp(prefix=SOCKET_DIR_PREFIX))
        self._own_dir = socket_dir is None  # made here: removed at close once no group needs it
        self.connect_timeout = connect_timeout
        self._groups: dict[int, _Group] = {}  # by pid
        self._serial = itertools.count(1)
        self._lock = asyncio.Lock()
        self._found: dict[int, tuple[str, list[str]]] = {}  # running_rooms(): pid -> (socket, incarnations)
        self._watchers: dict[int, asyncio.Task[None]] = {}
        self._seats: set[asyncio.Task[None]] = set()  # one per room: frees its seat when it ends

    @property
    def group_pids(self) -> list[int]:
        return [g.pid for g in self._groups.values() if not g.gone]

    async def start(self) -> None:
        start = getattr(self.inner, "start", None)
        if start is not None:
            await start()

    async def spawn(
        self, argv: Sequence[str], env: Mapping[str, str], log_path: Path | None
    ) -> ProcessHandle:
        args = serve_args(argv, self.python)
        incarnation = incarnation_of(argv)
        if args is None or incarnation is None or parse_group_argv(args) is not None or "--standby" in args:
            return await self.inner.spawn(argv, env, log_path)
        message = {
            "op": "assign",
            "argv": list(argv),
            "env": dict(env),
            "log_path": None if log_path is None else str(log_path),
        }
        _check_size(message, incarnation)
        for _ in range(ASSIGN_ATTEMPTS):
            group = await self._seat()
            try:
                return await self._assign(group, incarnation, message)
            except GroupGone:
                log.warning("relay group pid %s went away while taking a room: another group", group.pid)
        raise OSError(f"room {incarnation}: {ASSIGN_ATTEMPTS} relay groups went away while taking it")

    async def _seat(self) -> _Group:
        """A seat in a group with one free, or in a new group."""
        async with self._lock:  # two rooms never race for one group's last seat
            group = next((g for g in self._groups.values() if g.free > 0), None)
            if group is None:
                group = await self._start_group()
            group.seats_taken += 1
            return group

    async def _assign(self, group: _Group, incarnation: str, message: dict[str, Any]) -> GroupRoomHandle:
        """Puts the room in its seat in `group`. GroupGone if the group went away meanwhile."""
        handle = GroupRoomHandle(group, incarnation)
        try:
            answer = await group.ask(message)
        except BaseException:  # not sent: the seat is free again
            group.seats_taken -= 1
            group.rooms.pop(incarnation, None)
            raise
        try:
            reply = await asyncio.shield(answer)
        except GroupGone:
            group.rooms.pop(incarnation, None)
            raise
        except BaseException:
            self._abandon(group, handle, answer)
            raise
        if reply.get("op") != "assigned":
            group.seats_taken -= 1
            group.rooms.pop(incarnation, None)
            raise OSError(f"relay group pid {group.pid} refused the room: {reply.get('error')}")
        self._watch_seat(group, handle)
        return handle

    def _abandon(
        self, group: _Group, handle: GroupRoomHandle, answer: asyncio.Future[dict[str, Any]]
    ) -> None:
        """The spawn was cancelled with its assignment sent: the group may be starting the room,
        which nobody would stop. It is told to drop it now (before a closing spawner lets go of
        the group), and the seat stays taken until the room has ended or the answer says the
        group never took it."""
        handle.drop()
        self._watch_seat(group, handle)
        task = asyncio.get_running_loop().create_task(self._settle(group, handle, answer))
        self._seats.add(task)
        task.add_done_callback(self._seats.discard)

    @staticmethod
    async def _settle(group: _Group, handle: GroupRoomHandle, answer: asyncio.Future[dict[str, Any]]) -> None:
        try:
            reply = await answer
        except GroupGone:
            return  # its rooms ended with it
        if reply.get("op") == "assigned":
            handle.expect_gone()
        else:
            group.forget(handle.incarnation)

    def _watch_seat(self, group: _Group, handle: GroupRoomHandle) -> None:
        task = asyncio.get_running_loop().create_task(self._seat_freed(group, handle))
        self._seats.add(task)
        task.add_done_callback(self._seats.discard)

    async def _seat_freed(self, group: _Group, handle: GroupRoomHandle) -> None:
        """An emptied group is let go (it exits once its connection closes) unless it is the one
        group kept with free seats: an adopted one always, ours after a burst."""
        await handle.wait()
        group.seats_taken -= 1
        if group.seats_taken or group.gone:
            return
        others_free = any(g.free for g in self._groups.values() if g is not group)
        if not group.ours or others_free:
            group.gone = True  # takes no room from now
            group.close()

    async def _start_group(self) -> _Group:
        path = str(self.socket_dir / f"g{os.getpid()}-{next(self._serial)}.sock")
        argv = [self.python, "-m", "relay.cli", "serve", *group_argv(path, self.rooms_per_process)]
        handle = await self.inner.spawn(argv, relay_environment(), self.log_path)
        group = _Group(handle, handle.pid, path, self.rooms_per_process, ours=True)
        self._groups[handle.pid] = group
        self._watch(group)
        try:
            await group.connect(self.connect_timeout)
        except GroupGone:
            handle.kill()
            raise OSError(f"relay group pid {handle.pid} did not start") from None
        except BaseException:  # cancelled: a group nobody connects to would wait out CONNECT_TIMEOUT
            handle.kill()
            raise
        log.info("relay group pid %s started for up to %d rooms", handle.pid, self.rooms_per_process)
        return group

    def _watch(self, group: _Group) -> None:
        self._watchers[group.pid] = asyncio.get_running_loop().create_task(self._watch_group(group))

    async def _watch_group(self, group: _Group) -> None:
        """Ends the group's rooms once its process is gone, and forgets it."""
        code = await group.handle.wait()
        self._groups.pop(group.pid, None)
        self._watchers.pop(group.pid, None)
        group.exited(code, getattr(group.handle, "exit_reason", None))
        self._sweep(Path(group.path))

    def _sweep(self, path: Path) -> None:
        """A group is gone: its socket goes (one killed or crashed could not unlink it), and the
        folder of an earlier control plane's groups with it once empty (this spawner's own goes
        at close). Only a socket is unlinked and only an empty folder removed: the path of an
        adopted group comes from its command line."""
        with contextlib.suppress(OSError):
            if stat.S_ISSOCK(path.lstat().st_mode):
                path.unlink()
        folder = path.parent
        if folder != self.socket_dir and folder.name.startswith(SOCKET_DIR_PREFIX):
            with contextlib.suppress(OSError):
                folder.rmdir()  # fails while another group's socket is there

    # ---- after a control-plane restart ------------------------------------------------------

    def running_rooms(self, proc: Path = Path("/proc")) -> dict[str, list[int]]:
        """The rooms of every group process on this host, by incarnation (asks each, briefly)."""
        found: dict[str, list[int]] = {}
        for pid, command in commands(proc):
            for incarnation in self._listing(pid, command)[1]:
                found.setdefault(incarnation, []).append(pid)
        return found

    def _listing(self, pid: int, command: list[str] | None = None) -> tuple[str | None, list[str]]:
        """(socket, incarnations) of group `pid`, asked once; (None, []) if it is no group that
        answers."""
        if pid in self._found:
            return self._found[pid]
        try:
            parsed = group_of(cmdline(pid) if command is None else command)
        except OSError:
            return None, []
        if parsed is None or not pid_alive(pid):
            return None, []
        try:
            rooms = ask_rooms(parsed[0])
        except (OSError, ValueError) as exc:
            log.warning("relay group pid %s did not list its rooms: %s", pid, exc)
            return None, []
        self._found[pid] = (parsed[0], rooms)
        return parsed[0], rooms

    def adopt_room(self, pid: int, incarnation: str) -> GroupRoomHandle | None:
        """A room an earlier control plane put in group `pid`: tracked again, or None if that
        group does not serve it."""
        group = self._groups.get(pid)
        if group is not None:  # one we track: its rooms, or those it listed when found
            if incarnation not in group.rooms and incarnation not in self._found.get(pid, (None, []))[1]:
                return None
        else:
            path, rooms = self._listing(pid)
            if incarnation not in rooms:
                return None
            adopt = getattr(self.inner, "adopt", None)  # a CappedSpawner: its cgroup, quota on
            handle = (adopt(pid) if adopt is not None else None) or PidHandle(pid)
            group = self._groups[pid] = _Group(handle, pid, str(path), self.rooms_per_process, ours=False)
            self._watch(group)
            task = asyncio.get_running_loop().create_task(group.connect(ASK_TIMEOUT))
            task.add_done_callback(lambda t: t.cancelled() or t.exception())
        room = GroupRoomHandle(group, incarnation)
        group.seats_taken += 1
        self._watch_seat(group, room)
        return room

    def adopt(self, pid: int) -> ProcessHandle | None:
        """A room's own relay process (not a group): the inner spawner's handle for it."""
        adopt = getattr(self.inner, "adopt", None)
        return None if adopt is None else adopt(pid)

    async def close(self) -> None:
        """Lets go of the groups (their rooms keep running, as relays of their own do; a group
        with no room left exits once its connection is gone), then the inner spawner."""
        empty = [
            self._watchers[g.pid] for g in self._groups.values() if not g.rooms and g.pid in self._watchers
        ]
        serving = any(g.rooms for g in self._groups.values())
        for group in list(self._groups.values()):
            group.close()
        self._groups.clear()
        if self._own_dir and not serving:  # groups serving rooms keep their sockets for adoption
            shutil.rmtree(self.socket_dir, ignore_errors=True)
        if empty:  # they exit now: seen gone before the inner spawner (a zygote template) closes
            await asyncio.wait(empty, timeout=EXIT_WAIT)
        tasks = [*self._watchers.values(), *self._seats]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._watchers.clear()
        close = getattr(self.inner, "close", None)
        if close is not None:
            await close()


def _check_size(message: dict[str, Any], incarnation: str) -> None:
    """An assignment a group would not read (it drops the connection, and so its other rooms'
    control) is refused here, before any group sees it."""
    size = len(encode_frame(message)) - HEADER.size
    if size > MAX_GROUP_FRAME:
        raise OSError(f"room {incarnation}: its assignment is {size} bytes, over a group's {MAX_GROUP_FRAME}")


def ask_rooms(path: str, timeout: float = ASK_TIMEOUT) -> list[str]:
    """The incarnations a group serves (a blocking request: the control plane asks while it
    recovers, before it serves anything)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        sock.connect(path)
        sock.sendall(encode_frame({"op": "rooms"}))
        with sock.makefile("rb") as stream:

            def read(size: int) -> bytes | None:
                data = stream.read(size)
                return data if len(data) == size else None

            answer = read_frame_with(read, MAX_GROUP_FRAME)
    if answer is None or answer.get("op") != "rooms" or not isinstance(answer.get("rooms"), list):
        raise ValueError("no room list")
    return [str(r.get("incarnation")) for r in answer["rooms"] if isinstance(r, dict)]
