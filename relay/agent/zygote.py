"""Zygote fork-server for relays: a template process that has already imported everything a relay
needs forks one child per room, so a relay is ready in milliseconds and its imported code and data
stay shared (copy-on-write) with the template instead of being private to every relay.

    spawner = ZygoteSpawner()                       # a relay.control.provisioner.Spawner
    provisioner = LocalProvisioner(relay_command, spawner=spawner)
    ...
    await spawner.close()                           # stops the template; relays keep running

The template is `python -m relay.agent.zygote`, started lazily by the spawner with its own
interpreter. They talk over the template's stdin/stdout: frames of a 4-byte big-endian length and
JSON. Spawner -> template: {id, argv, env, log_path} to fork, or {id, assign: pid, argv, env,
log_path} to hand a standby child (`relay serve --standby`, relay/agent/standby.py) its room
through its stdin (a socket pair with the template). Template -> spawner: {ready: pid} once,
{rehearsed: pid} when a standby says it has rehearsed its start,
{id, pid} or {id, error} per request, {exit: pid, code} when a child ends (code < 0: the signal,
as asyncio reports it). When the spawner's end closes the template exits; relays live on in their
own sessions and their handles fall back to watching the pid.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import importlib
import itertools
import json
import logging
import os
import select
import signal
import socket
import sys
import traceback
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, NoReturn

from relay.agent.frames import HEADER, encode_frame, read_frame, write_frame
from relay.agent.proctitle import set_cmdline
from relay.agent.standby import encode_assignment, is_standby, rehearse
from relay.control.provisioner import SCRUBBED_ENV, ProcessHandle, Spawner, SubprocessSpawner, pid_alive

log = logging.getLogger("relay.agent.zygote")

PRELOAD = (
    "uvloop",
    "msgpack",
    "websockets",
    "websockets.server",
    "cryptography.hazmat.primitives.ciphers.aead",
    "cryptography.hazmat.primitives.asymmetric.x25519",
    "prometheus_client",
    "h11",
    "encodings.idna",
    "relay.server.app",
    "relay.server.cli",
    "relay.agent.agent",
    "relay.agent.caps",
    "relay.cli",
)
"""Modules imported by the template before it forks (everything `relay serve` imports)."""

CMDLINE_ROOM = 4096
"""Bytes of blank argv the template is started with, so a child can write its own argv there."""

_MAX_FRAME = 16 << 20


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


# --- the template process -------------------------------------------------------------------


def main() -> int:
    """`python -m relay.agent.zygote`: preload, then fork relays on request until stdin closes."""
    gc.disable()  # no collections while importing: no freed holes in pages the children share
    for name in PRELOAD:
        importlib.import_module(name)
    ctl_in, ctl_out = _take_stdio()
    # One rehearsal here too (a throw-away relay on port 0 and one request through the agent's
    # HTTP client, relay/agent/standby.py): lazily built state and first-run caches then live in
    # the template, and every child forked later writes fewer shared pages. Measured on a fresh
    # fork, spawn to registered: 2,380 copy-on-write faults and 18 ms of CPU before, 1,940 and
    # 14 ms after (1,320 and 9 ms with the agent on h11 instead of httpx).
    rehearse()
    wake = _watch_children()
    gc.freeze()  # children's collections then never write to the template's objects
    try:
        write_frame(ctl_out, {"ready": os.getpid()})
        _serve(ctl_in, ctl_out, wake)
    except (BrokenPipeError, ConnectionResetError):
        pass  # the spawner is gone
    return 0


def _take_stdio() -> tuple[int, int]:
    """Moves the control channel off fds 0/1, so stray prints cannot corrupt it."""
    ctl_in, ctl_out = os.dup(0), os.dup(1)
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)
    os.dup2(2, 1)
    return ctl_in, ctl_out


def _watch_children() -> int:
    """A pipe that becomes readable on SIGCHLD (the C-level wakeup fd), for the select loop."""
    r, w = os.pipe()
    os.set_blocking(r, False)
    os.set_blocking(w, False)
    signal.signal(signal.SIGCHLD, lambda *_: None)
    signal.set_wakeup_fd(w)
    return r


def _serve(ctl_in: int, ctl_out: int, wake: int) -> None:
    while True:
        ready, _, _ = select.select([ctl_in, wake, *_standby_socks.values()], [], [])
        for pid, sock in list(_standby_socks.items()):
            if sock in ready:
                _standby_said(pid, sock, ctl_out)
        if wake in ready:
            with contextlib.suppress(BlockingIOError):
                os.read(wake, 4096)
            _reap(ctl_out)
        if ctl_in in ready:
            request = read_frame(ctl_in, _MAX_FRAME)
            if request is None:
                return
            write_frame(ctl_out, _assign(request) if "assign" in request else _spawn(request))


def _reap(ctl_out: int) -> None:
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        sock = _standby_socks.pop(pid, None)
        if sock is not None:
            sock.close()
        write_frame(ctl_out, {"exit": pid, "code": os.waitstatus_to_exitcode(status)})


def _open_log(path: str | None) -> int:
    if path is None:
        return os.open(os.devnull, os.O_WRONLY)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)


_standby_socks: dict[int, socket.socket] = {}
"""In the template: standby child pid -> our end of its stdin (a socket pair): it says "R" there
once rehearsed, and its assignment goes down it."""


def _standby_said(pid: int, sock: socket.socket, ctl_out: int) -> None:
    try:
        data = sock.recv(64)
    except BlockingIOError:
        return
    except OSError:
        data = b""
    if not data:  # it exited (its exit is reported when it is reaped)
        _standby_socks.pop(pid, None)
        sock.close()
    elif b"R" in data:
        write_frame(ctl_out, {"rehearsed": pid})


def _spawn(request: dict[str, Any]) -> dict[str, Any]:
    """Forks one relay; the reply goes out before any exit notification for it (same loop). A
    standby (relay/agent/standby.py) gets one end of a socket pair as stdin; the template keeps the
    other until the assignment."""
    try:
        log_fd = _open_log(request.get("log_path"))
    except OSError as exc:
        return {"id": request["id"], "error": f"log file: {exc}"}
    ours, theirs = socket.socketpair() if is_standby(request["argv"]) else (None, None)
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        pid = os.fork()
    except OSError as exc:
        os.close(log_fd)
        for sock in (ours, theirs):
            if sock is not None:
                sock.close()
        return {"id": request["id"], "error": f"fork: {exc}"}
    if pid == 0:
        _child(request, log_fd, theirs.fileno() if theirs is not None else -1)
    os.close(log_fd)
    if ours is not None and theirs is not None:
        theirs.close()
        ours.setblocking(False)
        _standby_socks[pid] = ours
    return {"id": request["id"], "pid": pid}


def _assign(request: dict[str, Any]) -> dict[str, Any]:
    """Hands a standby its room: the spawn request goes down its stdin, which then closes."""
    pid = int(request["assign"])
    sock = _standby_socks.pop(pid, None)
    if sock is None:
        return {"id": request["id"], "error": f"no standby with pid {pid}"}
    try:
        sock.setblocking(True)
        sock.sendall(encode_assignment(request["argv"], request["env"], request.get("log_path")))
    except OSError as exc:  # the standby died: EPIPE
        return {"id": request["id"], "error": f"standby {pid}: {exc}"}
    finally:
        sock.close()
    return {"id": request["id"], "pid": pid}


def _child(request: dict[str, Any], log_fd: int, stdin_fd: int) -> NoReturn:
    """Becomes the relay; never returns into the template's loop, whatever happens."""
    code = 1
    try:
        _detach(log_fd, stdin_fd)
        _set_environ(request["env"])
        code = _run_relay(request["argv"])
    except BaseException:
        traceback.print_exc()
    finally:
        with contextlib.suppress(Exception):
            sys.stdout.flush()
            sys.stderr.flush()
        os._exit(code)


def _detach(log_fd: int, stdin_fd: int = -1) -> None:
    """What a fresh `relay serve` subprocess would have: own session, default signals, stdin from
    /dev/null (a standby: its socket pair with the template), output to the log, and none of the template's
    descriptors."""
    os.setsid()
    signal.set_wakeup_fd(-1)
    for sig in (signal.SIGCHLD, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    os.dup2(stdin_fd if stdin_fd >= 0 else os.open(os.devnull, os.O_RDONLY), 0)
    os.dup2(log_fd, 1)
    os.dup2(log_fd, 2)
    os.closerange(3, os.sysconf("SC_OPEN_MAX"))


def _set_environ(env: Mapping[str, str]) -> None:
    """Through os.environ (putenv/unsetenv), so C libraries see the relay's environment too."""
    os.environ.clear()
    os.environ.update(env)


def _run_relay(argv: list[str]) -> int:
    args = argv[argv.index("serve") + 1 :]
    sys.argv = list(argv)
    set_cmdline(argv)
    gc.enable()
    from relay.server.cli import main as serve_main

    try:
        return int(serve_main(args) or 0)
    except SystemExit as exc:
        return _exit_code(exc.code)


def _exit_code(code: object) -> int:
    if code is None:
        return 0
    if isinstance(code, int):
        return code
    print(code, file=sys.stderr)
    return 1


# --- the spawner side (in the control plane) ------------------------------------------------


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


async def wait_pid_gone(pid: int, interval: float = 0.1) -> None:
    """Until a process that is not our child has exited: a pidfd where there is one, else polling."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return
    except (AttributeError, OSError):
        fd = -1
    if fd >= 0:
        try:
            gone = asyncio.Event()
            asyncio.get_running_loop().add_reader(fd, gone.set)
            await gone.wait()
            return
        except (NotImplementedError, OSError, ValueError):
            pass
        finally:
            with contextlib.suppress(Exception):
                asyncio.get_running_loop().remove_reader(fd)
            os.close(fd)
    while pid_alive(pid):
        await asyncio.sleep(interval)


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
        self._orphans: set[asyncio.Task[None]] = set()
        self._reader = asyncio.get_running_loop().create_task(self._read_loop())

    @classmethod
    async def start(cls, python: str, timeout: float) -> _Template:
        env = {k: v for k, v in os.environ.items() if k not in SCRUBBED_ENV}
        proc = await asyncio.create_subprocess_exec(
            *(python, "-m", "relay.agent.zygote", " " * CMDLINE_ROOM),
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
        """Sends one request; the template's answer: (pid, that pid's exit future)."""
        request_id = next(self._ids)
        reply = self._replies[request_id] = asyncio.get_running_loop().create_future()
        try:
            await self._write({"id": request_id, **message})
            return await asyncio.wait_for(asyncio.shield(reply), timeout)
        finally:
            self._replies.pop(request_id, None)

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
            while True:
                (size,) = HEADER.unpack(await stdout.readexactly(HEADER.size))
                self._dispatch(json.loads(await stdout.readexactly(size)))
        except (asyncio.IncompleteReadError, ConnectionError, ValueError) as exc:
            if not isinstance(exc, asyncio.IncompleteReadError):
                log.error("zygote channel broken: %r", exc)
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

    @staticmethod
    async def _watch_orphan(pid: int, exit_future: asyncio.Future[int | None]) -> None:
        await wait_pid_gone(pid)
        if not exit_future.done():
            exit_future.set_result(None)

    async def close(self, timeout: float = 5.0) -> None:
        """Closes the channel (the template exits; its children keep running) and reaps it."""
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        try:
            await asyncio.wait_for(self.proc.wait(), timeout)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                self.proc.kill()
            await self.proc.wait()
        with contextlib.suppress(asyncio.CancelledError):
            await self._reader


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


if __name__ == "__main__":
    sys.exit(main())
