"""The zygote template: a process that has imported everything a relay needs and forks one child
per room on request (relay/host/zygote.py is its spawner, in the control plane).

A relay forked from it is ready in milliseconds, and its imported code and data stay shared
(copy-on-write) with the template instead of being private to every relay. It is started as
`python -m relay.host.template` with a blank-padded argv (CMDLINE_ROOM bytes), so that a child
can write its room's command line over it (relay/host/proctitle.py).

The channel is the template's stdin/stdout: frames of a 4-byte big-endian length and JSON
(relay/host/frames.py). Spawner -> template: {id, argv, env, log_path} to fork, or {id, assign:
pid, argv, env, log_path} to hand a standby child (`relay serve --standby`,
relay/host/standby.py) its room through its stdin (a socket pair with the template). Template ->
spawner: {ready: pid} once, {rehearsed: pid} when a standby says it has rehearsed its start,
{id, pid} or {id, error} per request, {exit: pid, code} when a child ends (code < 0: the signal,
as asyncio reports it). When the spawner's end closes, the template exits; relays live on in
their own sessions.

A forked child waits, before it becomes anything, until the template has written its {id, pid}
(a pipe the template writes one byte to afterwards): a child whose pid the spawner cannot learn
(the template died or was killed between the fork and the reply) reads end of file and exits.
So every relay the template leaves behind is one the spawner has been told of; one whose request
it gave up on (timed out, cancelled) it kills when the late reply comes (relay/host/zygote.py).
"""

from __future__ import annotations

import contextlib
import gc
import importlib
import os
import select
import signal
import socket
import sys
import traceback
from collections.abc import Mapping
from pathlib import Path
from typing import Any, NoReturn

from relay.host.frames import MAX_FRAME, read_frame, write_frame
from relay.host.proctitle import set_cmdline
from relay.host.standby import encode_assignment, is_standby, rehearse
from relay.host.standby import main as standby_main

PRELOAD = (
    "uvloop",
    "msgpack",
    "websockets",
    "websockets.server",
    "cryptography.hazmat.primitives.ciphers.aead",
    "cryptography.hazmat.primitives.asymmetric.x25519",
    "prometheus_client",
    "encodings.idna",
    "relay.server.app",
    "relay.agent.agent",
    "relay.agent.caps",
    "relay.agent.launch",
    "relay.agent.serve",
)
"""Modules imported by the template before it forks (everything `relay serve` imports)."""

CMDLINE_ROOM = 4096
"""Bytes of blank argv the template is started with, so a child can write its own argv there."""


def main() -> int:
    """`python -m relay.host.template`: preload, then fork relays on request until stdin closes."""
    gc.disable()  # no collections while importing: no freed holes in pages the children share
    for name in PRELOAD:
        importlib.import_module(name)
    ctl_in, ctl_out = _take_stdio()
    # One rehearsal here too (a throw-away relay on port 0 and one request through the agent's
    # HTTP client, relay/host/standby.py): lazily built state and first-run caches then live in
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
            request = read_frame(ctl_in, MAX_FRAME)
            if request is None:
                return
            if "assign" in request:
                write_frame(ctl_out, _assign(request))
            else:
                _spawn(request, ctl_out)


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


def _spawn(request: dict[str, Any], ctl_out: int) -> None:
    """Forks one relay and answers; the reply goes out before any exit notification for it (same
    loop), and the child goes on only once it has (see the module docstring)."""
    go_r, go_w = os.pipe()
    try:
        try:
            reply = _fork(request, (go_r, go_w))
        finally:
            os.close(go_r)
        write_frame(ctl_out, reply)  # the spawner gone (BrokenPipeError): the child exits too
        with contextlib.suppress(OSError):  # a child killed meanwhile: EPIPE, not our exit
            os.write(go_w, b"g")
    finally:
        os.close(go_w)


def _fork(request: dict[str, Any], go: tuple[int, int]) -> dict[str, Any]:
    """The reply to a spawn request: the child's pid, or why there is none. A standby
    (relay/host/standby.py) gets one end of a socket pair as stdin; the template keeps the other
    until the assignment."""
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
        _child(request, log_fd, theirs.fileno() if theirs is not None else -1, go)
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


def _child(request: dict[str, Any], log_fd: int, stdin_fd: int, go: tuple[int, int]) -> NoReturn:
    """Becomes the relay once its pid is reported; never returns into the template's loop,
    whatever happens."""
    code = 1
    try:
        if not _reported(*go):
            os._exit(code)  # nobody knows this pid: no relay may run under it
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


def _reported(go_r: int, go_w: int) -> bool:
    """Waits for the template's byte saying this child's pid went to the spawner; False at end of
    file: the template died first (its copy of the write end was the last one)."""
    os.close(go_w)
    try:
        return os.read(go_r, 1) == b"g"
    finally:
        os.close(go_r)


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
    try:
        return int(standby_main(args) or 0)
    except SystemExit as exc:
        return _exit_code(exc.code)


def _exit_code(code: object) -> int:
    if code is None:
        return 0
    if isinstance(code, int):
        return code
    print(code, file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
