"""A stand-in for `relay serve` used by the control-plane tests: same flags and env, a real TCP
port, the real Agent, and none of the data plane. Lets lifecycle tests (heartbeat loss, crash,
drain on delete) run fast and deterministically; the full room life test uses the real relay.

Env STANDIN_CRASH_AFTER=<seconds>: exit abruptly (no `closed` report) that long after registering.
Env STANDIN_EXIT_DELAY=<seconds>: linger that long after the room closed (a relay exiting slowly).
SIGUSR1 drains the room as deleted, as `relay serve` does.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
import time
from collections.abc import Callable
from typing import NoReturn

from relay.agent.agent import Agent
from relay.agent.launch import RelayLaunch
from relay.protocol.constants import CloseReason
from relay.server.app import RelayStats


class StandinRelay:
    def __init__(self, host: str) -> None:
        self.host = host
        self.port = 0
        self.admin_port: int | None = None
        self.started_at = time.time()
        self._closed: asyncio.Future[CloseReason] = asyncio.get_running_loop().create_future()
        self._server: asyncio.AbstractServer | None = None
        self.close_calls: list[CloseReason] = []
        self.session_listeners: list[Callable[[], None]] = []

    async def start(self) -> None:
        self._server = await asyncio.start_server(lambda r, w: w.close(), self.host, 0)
        self.port = self._server.sockets[0].getsockname()[1]

    def stats(self) -> RelayStats:
        return RelayStats(0, 0, 0, 0, 0, 0, self.started_at, self.started_at)

    def add_session_listener(self, callback: Callable[[], None]) -> None:
        self.session_listeners.append(callback)

    async def close(self, reason: CloseReason, text: str = "") -> None:
        self.close_calls.append(reason)
        if self._server is not None:
            self._server.close()
        if not self._closed.done():
            self._closed.set_result(reason)

    async def wait_closed(self) -> CloseReason:
        return await asyncio.shield(self._closed)


async def main() -> int:
    launch = RelayLaunch.parse(sys.argv[1:])  # the flags and environment `relay serve` reads
    relay = StandinRelay(launch.relay.host)
    await relay.start()
    config = launch.agent()
    assert config is not None, "the stand-in relay needs --control-url"
    agent = Agent(relay, config)
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, lambda: loop.create_task(relay.close(CloseReason.SHUTDOWN)))
    loop.add_signal_handler(signal.SIGUSR1, lambda: loop.create_task(relay.close(CloseReason.DELETED)))
    await agent.start()
    crash_after = os.environ.get("STANDIN_CRASH_AFTER")
    if crash_after:
        await agent.registered.wait()
        await asyncio.sleep(float(crash_after))
        os._exit(3)
    reason = await relay.wait_closed()
    await agent.stop(reason)
    await asyncio.sleep(float(os.environ.get("STANDIN_EXIT_DELAY") or 0))
    return 0


def exit_now(code: int) -> NoReturn:
    """Ends the process as a relay forked from the zygote template ends (relay/host/template.py):
    output flushed, then os._exit, with no interpreter teardown. Capped as a relay is (the tier's
    CPU share, once registered), the stand-in spent about a second of wall time in that teardown,
    and every wait for a deleted or stopped room's relay to exit waited on it."""
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    exit_now(asyncio.run(main()))
