"""ZygoteSpawner: the control plane's side of the zygote template (relay/host/template.py), a
Spawner that forks relays from a pre-imported process instead of starting interpreters.

    spawner = ZygoteSpawner()                       # a relay.host.spawner.Spawner
    provisioner = LocalProvisioner(relay_command, spawner=spawner)
    ...
    await spawner.close()                           # stops the template; relays keep running

The template is started lazily, with this interpreter, on the first spawn (or `start()`); the
channel's frames are described in relay/host/template.py. A forked relay's exit code comes from
the template; when the template has died, handles fall back to watching the pid. A template whose
channel breaks (a frame it never sends: too large, not JSON) is killed, as one that can no longer
be heard; the next spawn reaps it and starts another.

A spawn given up on (its reply timed out, or the spawn was cancelled: a control plane stopping)
leaves no relay behind: the late reply's child is killed when it comes, and a child whose reply
never comes (the template died or was killed first) exits by itself (relay/host/template.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import signal
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from relay.host.frames import MAX_FRAME, encode_frame, read_frame_async
from relay.host.spawner import ProcessHandle, Spawner, SubprocessSpawner, relay_environment, wait_pid_gone
from relay.host.template import CMDLINE_ROOM

log = logging.getLogger("relay.host.zygote")


class TemplateGone(ConnectionError):
    """The template process ended (or could not be reached) before answering."""


def serve_args(argv: Sequence[str], python: str = sys.executable) -> list[str] | None:
    """The `relay serve` flags if argv runs this package's relay with `python` (then a fork of the
    template is the same program); None for any other command, which must really be executed."""
    if "serve" not in argv:
        return None
    i = list(argv).index("serve")
    prefix = tuple(argv[:i])
    if prefix == (python, "-m", "relay.cli") or (len(prefix) == 1 and Path(prefix[0]).name == "relay"):
        return list(argv[i + 1 :])
    return None


class ZygoteHandle:
    """A forked relay: signalled by pid, its exit code reported by the template (or, if the
    template has died, by watching the pid: code None)."""

    __slots__ = ("_exit", "_template", "pid")

    def __init__(self, pid: int, exit_future: asyncio.Future[int | None], template: _Template) -> None:
        self.pid = pid
        self._exit = exit_future
        self._template = template

    async def assign(self, argv: Sequence[str], env: Mapping[str, str], log_path: Path | None) -> None:
        """Hands this standby its room (the spawn request it stood in for). Raises TemplateGone or
        OSError if it cannot be delivered (the standby or the template died)."""
        if self._exit.done():
            raise OSError(f"standby {self.pid} has exited")
        await self._template.request({"assign": self.pid, **_spawn_message(argv, env, log_path)})

    async def rehearsed(self) -> None:
        """Returns once this standby has rehearsed its start (it said so to the template)."""
        await asyncio.shield(self._template.rehearsed(self.pid))

    async def wait(self) -> int | None:
        return await asyncio.shield(self._exit)

    def terminate(self) -> None:
        self._signal(signal.SIGTERM)

    def kill(self) -> None:
        self._signal(signal.SIGKILL)

    def _signal(self, sig: int) -> None:
        if not self._exit.done():  # after the exit the pid may belong to someone else
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(self.pid, sig)


def _spawn_message(argv: Sequence[str], env: Mapping[str, str], log_path: Path | None) -> dict[str, Any]:
    return {"argv": list(argv), "env": dict(env), "log_path": None if log_path is None else str(log_path)}


class _Template:
    """One running template process and the futures waiting on its answers."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.pid = proc.pid
        self._ids = itertools.count()
        self._ready: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._replies: dict[int, asyncio.Future[tuple[int, asyncio.Future[int | None]]]] = {}
        self._exits: dict[int, asyncio.Future[int | None]] = {}
        self._rehearsed: dict[int, asyncio.Future[None]] = {}
        self._abandoned: set[int] = set()  # requests given up on: their children are killed
        self._orphans: set[asyncio.Task[None]] = set()
        self._reader = asyncio.get_running_loop().create_task(self._read_loop())

    @classmethod
    async def start(cls, python: str, timeout: float) -> _Template:
        env = relay_environment()
        proc = await asyncio.create_subprocess_exec(
            *(python, "-m", "relay.host.template", " " * CMDLINE_ROOM),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            env=env,
            start_new_session=True,  # a terminal's Ctrl-C is for the control plane, not relays
        )
        template = cls(proc)
        try:
            await asyncio.wait_for(asyncio.shield(template._ready), timeout)
        except BaseException:
            await template.close()
            raise
        return template

    @property
    def alive(self) -> bool:
        return not self._reader.done()

    async def spawn(
        self, argv: Sequence[str], env: Mapping[str, str], log_path: Path | None, timeout: float
    ) -> ZygoteHandle:
        pid, exit_future = await self.request(_spawn_message(argv, env, log_path), timeout)
        return ZygoteHandle(pid, exit_future, self)

    async def request(
        self, message: Mapping[str, Any], timeout: float = 10.0
    ) -> tuple[int, asyncio.Future[int | None]]:
        """Sends one request; the template's answer: (pid, that pid's exit future). If the caller
        gives up (timeout, cancellation), the pid answered is killed, now or when it comes."""
        request_id = next(self._ids)
        reply = self._replies[request_id] = asyncio.get_running_loop().create_future()
        try:
            await self._write({"id": request_id, **message})
            return await asyncio.wait_for(asyncio.shield(reply), timeout)
        except BaseException:
            self._abandon(request_id, reply)
            raise
        finally:
            self._replies.pop(request_id, None)

    def _abandon(
        self, request_id: int, reply: asyncio.Future[tuple[int, asyncio.Future[int | None]]]
    ) -> None:
        if not reply.done():
            self._abandoned.add(request_id)
        elif not reply.cancelled() and reply.exception() is None:  # answered as we gave up
            _kill_late(reply.result()[0])

    async def _write(self, message: Mapping[str, Any]) -> None:
        stdin = self.proc.stdin
        if stdin is None or not self.alive:
            raise TemplateGone("template not running")
        try:
            stdin.write(encode_frame(message))
            await stdin.drain()
        except (ConnectionError, RuntimeError) as exc:
            raise TemplateGone(str(exc)) from exc

    async def _read_loop(self) -> None:
        stdout = self.proc.stdout
        assert stdout is not None
        try:
            while (message := await read_frame_async(stdout, MAX_FRAME)) is not None:
                self._dispatch(message)
        except Exception as exc:  # a frame too large, not JSON, not what the template sends
            # nothing more it says can be read: it would linger, holding its channel, unused
            log.error("zygote channel broken: %r; killing the template (pid %d)", exc, self.pid)
            with contextlib.suppress(ProcessLookupError):
                self.proc.kill()
        finally:
            self._gone()

    def rehearsed(self, pid: int) -> asyncio.Future[None]:
        future = self._rehearsed.get(pid)
        if future is None:
            future = self._rehearsed[pid] = asyncio.get_running_loop().create_future()
        return future

    def _dispatch(self, message: dict[str, Any]) -> None:
        if "rehearsed" in message:
            future = self.rehearsed(int(message["rehearsed"]))
            if not future.done():
                future.set_result(None)
        elif "ready" in message:
            if not self._ready.done():
                self._ready.set_result(int(message["ready"]))
        elif "exit" in message:
            self._rehearsed.pop(int(message["exit"]), None)
            exit_future = self._exits.pop(int(message["exit"]), None)
            if exit_future is not None and not exit_future.done():
                exit_future.set_result(message["code"])
        else:
            self._answer(message)

    def _answer(self, message: dict[str, Any]) -> None:
        if message["id"] in self._abandoned:
            self._abandoned.discard(message["id"])
            if "pid" in message:
                _kill_late(int(message["pid"]))
            return
        reply = self._replies.get(message["id"])
        if reply is None or reply.done():
            return
        if "error" in message:
            reply.set_exception(OSError(message["error"]))
            return
        pid = int(message["pid"])
        exit_future = self._exits.get(pid)
        if exit_future is None:
            exit_future = self._exits[pid] = asyncio.get_running_loop().create_future()
        reply.set_result((pid, exit_future))

    def _gone(self) -> None:
        """The template ended: fail what waits on it; its children are now watched by pid."""
        for future in (self._ready, *self._replies.values()):
            if not future.done():
                future.set_exception(TemplateGone("template exited"))
        for pid, exit_future in self._exits.items():
            task = asyncio.get_running_loop().create_task(self._watch_orphan(pid, exit_future))
            self._orphans.add(task)
            task.add_done_callback(self._orphans.discard)
        self._exits.clear()
        self._abandoned.clear()  # no reply came: a child of theirs was never let go, and exits

    @staticmethod
    async def _watch_orphan(pid: int, exit_future: asyncio.Future[int | None]) -> None:
        await wait_pid_gone(pid)
        if not exit_future.done():
            exit_future.set_result(None)

    async def close(self, timeout: float = 5.0) -> None:
        """Closes the channel (the template exits; its children keep running) and reaps it, once
        every reply it sent has been read (a late one's child is killed)."""
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        try:
            await asyncio.wait_for(self.proc.wait(), timeout)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                self.proc.kill()
            await self.proc.wait()
        await asyncio.wait({self._reader})  # not cancelled with a cancelled caller: it reads on


def _kill_late(pid: int) -> None:
    """A child forked for a request given up on: nobody has its handle, so it must not run."""
    log.warning("zygote answered pid %d after its request was given up: killing it", pid)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(pid, signal.SIGKILL)


class ZygoteSpawner:
    """Spawner that forks relays from a pre-imported template (see the module docstring); commands
    other than this interpreter's `relay serve` go to `fallback` (a plain subprocess)."""

    def __init__(
        self,
        python: str = sys.executable,
        fallback: Spawner | None = None,
        start_timeout: float = 30.0,
        reply_timeout: float = 10.0,
    ) -> None:
        self.python = python
        self.fallback: Spawner = fallback or SubprocessSpawner()
        self.start_timeout = start_timeout
        self.reply_timeout = reply_timeout
        self._template: _Template | None = None
        self._lock = asyncio.Lock()

    @property
    def template_pid(self) -> int | None:
        """The running template's pid (None before the first spawn or after it ended)."""
        template = self._template
        return template.pid if template is not None and template.alive else None

    async def start(self) -> None:
        """Starts the template now rather than on the first spawn."""
        await self._running()

    async def _running(self) -> _Template:
        async with self._lock:
            if self._template is None or not self._template.alive:
                await self._discard(self._template)  # a dead or broken one is reaped first
                self._template = await _Template.start(self.python, self.start_timeout)
                log.info("zygote template started (pid %d)", self._template.pid)
            return self._template

    async def spawn(
        self, argv: Sequence[str], env: Mapping[str, str], log_path: Path | None
    ) -> ProcessHandle:
        if serve_args(argv, self.python) is None:
            return await self.fallback.spawn(argv, env, log_path)
        for attempt in range(2):
            template: _Template | None = None
            try:
                template = await self._running()
                return await template.spawn(argv, env, log_path, self.reply_timeout)
            except (TemplateGone, TimeoutError) as exc:
                log.warning("zygote template failed (%r), attempt %d", exc, attempt + 1)
                await self._discard(template)
        log.warning("zygote unusable: starting the relay as a plain subprocess")
        return await self.fallback.spawn(argv, env, log_path)

    async def _discard(self, template: _Template | None) -> None:
        """Drops a template that failed (a fresh one starts on the next spawn)."""
        if template is None:
            return
        if self._template is template:
            self._template = None
        with contextlib.suppress(ProcessLookupError):
            template.proc.kill()
        await template.close()

    async def close(self) -> None:
        """Stops the template. Relays it forked keep running; their handles then watch the pid."""
        template, self._template = self._template, None
        if template is not None:
            await template.close()
