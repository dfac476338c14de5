"""`relay serve --standby`: a relay process started before its room exists (the warm pool).

A standby has already been forked, placed in its cgroup, and has rehearsed a relay's start (its
flags parsed, a throw-away room on 127.0.0.1 port 0, one HTTP request to its own /healthz). The rehearsal
matters more than the imports: in a child forked from the zygote template, the first run of that
code writes to thousands of pages shared with the template (reference counts, lazily built
caches), and each write is a copy-on-write fault. Paid in advance, a real start drops from about
5 ms of CPU to about 1 ms (measured here), which is most of what a room waits for.

It then says "R" on its stdin (a socket pair with the zygote template, which tells the pool:
only rehearsed standbys are handed rooms) and blocks on it for its assignment: one frame (4-byte
big-endian length and JSON, as on the zygote channel) holding exactly a spawn request, {argv,
env, log_path}. It takes that environment and log file, writes argv over its own command line
(so `ps` and the provisioner's adoption after a control-plane restart see the room's flags) and
runs `relay serve` with argv as if freshly started. End of file before an assignment (the pool
or template went away) is a clean exit. The assignment carries the room's secrets; it travels
only through that socket pair.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import os
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from relay.host.frames import HEADER, encode_frame, read_frame

log = logging.getLogger("relay.host.standby")

STANDBY_FLAG = "--standby"
MAX_ASSIGNMENT = 1 << 20
"""Bytes of assignment a standby reads (the template's channel takes more: a larger one goes to a
fresh fork, relay/host/warm_pool.py)."""


def is_standby(argv: list[str] | tuple[str, ...]) -> bool:
    """Whether a spawn argv starts a standby (its stdin must then be a pipe for the assignment)."""
    return STANDBY_FLAG in argv


def encode_assignment(argv: list[str], env: dict[str, str], log_path: str | None) -> bytes:
    return encode_frame({"argv": argv, "env": env, "log_path": log_path})


def assignment_fits(argv: Sequence[str], env: Mapping[str, str], log_path: Path | None) -> bool:
    """Whether a standby would read this spawn request as its assignment (MAX_ASSIGNMENT)."""
    frame = encode_assignment(list(argv), dict(env), None if log_path is None else str(log_path))
    return len(frame) - HEADER.size <= MAX_ASSIGNMENT


def read_assignment(fd: int = 0) -> dict[str, Any] | None:
    """Blocks until the assignment arrives; None at end of file. Raises ValueError if malformed."""
    message = read_frame(fd, MAX_ASSIGNMENT)
    if message is None:
        return None
    argv, env, log_path = message.get("argv"), message.get("env"), message.get("log_path")
    if not (isinstance(argv, list) and all(isinstance(a, str) for a in argv) and "serve" in argv):
        raise ValueError("assignment argv must be a `relay serve` command line")
    if not (isinstance(env, dict) and all(isinstance(k, str) and isinstance(v, str) for k, v in env.items())):
        raise ValueError("assignment env must map strings to strings")
    if log_path is not None and not isinstance(log_path, str):
        raise ValueError("assignment log_path must be a string or null")
    return {"argv": argv, "env": env, "log_path": log_path}


async def _rehearsal() -> None:
    from relay.agent.http11 import Http11Client
    from relay.agent.launch import RelayLaunch
    from relay.protocol.keys import generate_room_key
    from relay.server.app import Relay

    launch = RelayLaunch.parse(["--room-key", generate_room_key(), "--admin-port", "0"])
    relay = Relay(launch.room_config())
    await relay.start()
    try:
        http = Http11Client(f"http://127.0.0.1:{relay.admin_port}", timeout=2.0)
        try:  # the agent's client, as its calls to the control plane will run it
            await http.request("GET", "/healthz")
        finally:
            await http.aclose()
    finally:
        await relay.close()
        await relay.wait_closed()


def wait_for_own_cgroup(timeout: float = 1.0, interval: float = 0.002) -> bool:
    """A capped standby (RELAY_CAPS=cgroup) starts in its parent's cgroup and is moved into its own
    by the spawner a few milliseconds later; it waits for that before rehearsing, so that the
    rehearsal runs at the standby's low CPU weight rather than competing with starting rooms."""
    if os.environ.get("RELAY_CAPS") != "cgroup":
        return False
    try:
        parents = Path(f"/proc/{os.getppid()}/cgroup").read_text()
        deadline = time.monotonic() + timeout
        while Path("/proc/self/cgroup").read_text() == parents:
            if time.monotonic() > deadline:
                return False
            time.sleep(interval)
    except OSError:
        return False
    return True


def rehearse() -> None:
    """Runs a throw-away relay once (see the module docstring); never fatal."""
    try:
        import uvloop

        uvloop.run(_rehearsal())
    except Exception:
        log.exception("standby rehearsal failed (the relay will start cold)")
    gc.collect()
    gc.freeze()


def _take_log(path: str | None) -> None:
    if path is None:
        return
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    with contextlib.suppress(Exception):
        sys.stdout.flush()
        sys.stderr.flush()
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)


def run_standby() -> int:
    """`relay serve --standby`: rehearse, wait for the assignment, then be that relay."""
    from relay.agent.serve import main as serve_main
    from relay.host.proctitle import set_cmdline

    wait_for_own_cgroup()
    rehearse()
    with contextlib.suppress(OSError):  # stdin is a socket pair with the zygote template: "ready"
        os.write(0, b"R")
    try:
        assignment = read_assignment(0)
    except (ValueError, OSError) as exc:
        print(f"relay serve --standby: bad assignment: {exc}", file=sys.stderr, flush=True)
        return 2
    if assignment is None:
        return 0  # the pool closed before it needed us
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)
    _take_log(assignment["log_path"])
    os.environ.clear()
    os.environ.update(assignment["env"])
    argv = assignment["argv"]
    sys.argv = list(argv)
    set_cmdline(argv)
    return serve_main(argv[argv.index("serve") + 1 :])


def main(args: list[str]) -> int:
    """`relay serve`: a relay for one room; with `--standby` alone one that waits for its room;
    with `--group` one that serves several."""
    if args == [STANDBY_FLAG]:
        return run_standby()
    from relay.host.group import GROUP_FLAG

    if args[:1] == [GROUP_FLAG]:  # several rooms in one process (relay/host/group.py)
        from relay.host.group import main as group_main

        return group_main(args)
    from relay.agent.serve import main as serve_main

    return serve_main(args)
