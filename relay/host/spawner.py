"""Creating relay processes: the Spawner and ProcessHandle protocols every spawner implements
(plain subprocess here; the zygote, cgroup caps and warm pool wrap or replace it), and watching
processes by pid.

The control plane's LocalProvisioner (relay/control/provisioner.py) decides which room gets a
relay; a Spawner only knows how to start one `relay serve` command line with its environment
and log file, and hands back a handle to wait on and signal.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Protocol, runtime_checkable

from relay.agent.launch import LAUNCH_ENV

SCRUBBED_ENV = (
    "RELAY_CLIENT_ID",
    "RELAY_CLIENT_SECRET",
    "RELAY_WEBHOOK_URL",
    "RELAY_STORE_URL",
    *LAUNCH_ENV,
)
"""Never handed on to a relay process: the project secret, the store's URL (its password; with
PostgreSQL the store also holds the token signing key) and other control-plane settings, and
every variable a relay reads for its launch (its RelayLaunch says those)."""
SCRUBBED_PREFIXES = ("PG",)
"""libpq's variables (PGPASSWORD, PGPASSFILE, PGSERVICEFILE, ...): a relay never uses PostgreSQL."""


def relay_environment(launch_env: Mapping[str, str] | None = None) -> dict[str, str]:
    """This process's environment without SCRUBBED_ENV and SCRUBBED_PREFIXES, plus a relay
    launch's own variables."""
    env = {
        k: v for k, v in os.environ.items() if k not in SCRUBBED_ENV and not k.startswith(SCRUBBED_PREFIXES)
    }
    env.update(launch_env or {})
    return env


@runtime_checkable
class ProcessHandle(Protocol):
    pid: int

    async def wait(self) -> int | None: ...

    def terminate(self) -> None: ...

    def kill(self) -> None: ...


@runtime_checkable
class Spawner(Protocol):
    """Creates one relay process. `argv[0]` is the interpreter; env is the full environment.
    A spawner may also have `async start()` (called when the control plane starts),
    `async close()` (called when the provisioner closes) and `adopt(pid)` (a handle for a relay
    an earlier control plane started, or None: the provisioner then watches the bare pid)."""

    async def spawn(
        self, argv: Sequence[str], env: Mapping[str, str], log_path: Path | None
    ) -> ProcessHandle: ...


class SubprocessHandle:
    __slots__ = ("_proc", "pid")

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self._proc = proc
        self.pid = proc.pid

    async def wait(self) -> int | None:
        return await self._proc.wait()

    def terminate(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            self._proc.terminate()

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            self._proc.kill()


class PidHandle:
    """A relay that is not our child (started by an earlier control plane, adopted after a
    restart): watched and signalled by pid, exit code unknown (None). No signal goes to the pid
    once its exit has been seen (it may belong to another process by then)."""

    __slots__ = ("_gone", "pid")

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self._gone = False

    async def wait(self) -> int | None:
        await wait_pid_gone(self.pid)
        self._gone = True
        return None

    def terminate(self) -> None:
        self._signal(signal.SIGTERM)

    def kill(self) -> None:
        self._signal(signal.SIGKILL)

    def _signal(self, sig: int) -> None:
        if not self._gone:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(self.pid, sig)


class SubprocessSpawner:
    """Default spawner: asyncio subprocess in its own session (a terminal's Ctrl-C reaches only the
    control plane, which then stops relays deliberately), output to a per-room log file."""

    async def spawn(
        self, argv: Sequence[str], env: Mapping[str, str], log_path: Path | None
    ) -> ProcessHandle:
        out: int | object = asyncio.subprocess.DEVNULL
        fd = None
        if log_path is not None:
            log_path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
            out = fd
        try:
            proc = await asyncio.create_subprocess_exec(
                *argv,
                env=dict(env),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=out,
                stderr=asyncio.subprocess.STDOUT,
                start_new_session=True,
            )
        finally:
            if fd is not None:
                os.close(fd)
        return SubprocessHandle(proc)


def cmdline(pid: int, proc: Path = Path("/proc")) -> list[str]:
    """A process's command line, as its arguments; OSError if it is gone or unreadable."""
    return (proc / str(pid) / "cmdline").read_bytes().decode(errors="replace").split("\0")


def commands(proc: Path = Path("/proc")) -> Iterator[tuple[int, list[str]]]:
    """(pid, command line) of every process on this host whose command line can be read: how a
    restarted control plane finds the relays an earlier one started."""
    for entry in proc.iterdir():
        if entry.name.isdigit():
            try:
                yield int(entry.name), cmdline(int(entry.name), proc)
            except OSError:
                continue


def pid_alive(pid: int) -> bool:
    """A process we may signal that is not a zombie (an exited child nobody has reaped)."""
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


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
