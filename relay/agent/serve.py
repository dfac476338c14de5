"""`relay serve`: one relay process for one room, composed of the relay (relay/server), its caps
guard and, with a control URL, its agent.

    relay serve --host 127.0.0.1 --port 7800 --room-key KEY --admin-port 7801

Flags and environment: relay/agent/launch.py (`relay serve --help`). SIGTERM or SIGINT: CLOSING
(shutdown) to every member, flush, exit 0. SIGUSR1: the room was deleted (CLOSING deleted), exit
0. Under Agones without a room key the relay waits for an allocation (relay/agent/agones.py).
A relay started ahead of its room (`relay serve --standby`) is the host's: relay/host/standby.py.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import signal
import sys
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import Any

from relay.agent.agent import Agent
from relay.agent.caps import CapsGuard, apply_limits, guard_relay
from relay.agent.launch import LaunchError, RelayLaunch, bind_dash_values, usage
from relay.agent.tiers import get_tier
from relay.logs import configure
from relay.protocol.constants import CloseReason
from relay.server.app import Relay
from relay.server.tls import TlsError, server_context
from relay.settings import EXIT_FAILURE, ListenError, fail, os_error

log = logging.getLogger("relay.server")


@dataclass(slots=True)
class ServedRoom:
    """One room's relay with its caps guard and agent, running: what `relay serve` runs once and
    a group process (relay/host/group.py) runs several of."""

    relay: Relay
    guard: CapsGuard | None = None
    agent: Agent | None = None

    async def start(self, launch: RelayLaunch, guarded: bool = True) -> None:
        """Listens, then registers (with a control URL). `guarded`: this room keeps to the tier
        itself; a group keeps its rooms to their tier together (one guard for the process)."""
        relay = self.relay
        await relay.start()
        if guarded:
            self.guard = guard_relay(relay, launch.tier, launch.caps, relay.metrics.registry)
        agent_config = launch.agent()
        if agent_config is not None:
            self.agent = Agent(relay, agent_config)
            await self.agent.start()

    async def finished(self) -> CloseReason:
        """Waits for the room to end, then reports it (the agent's last word)."""
        reason = await self.relay.wait_closed()
        if self.guard is not None:
            self.guard.stop()
        if self.agent is not None:
            await self.agent.stop(reason)
        log.info("relay exiting: %s", reason.name.lower())
        return reason


async def serve(launch: RelayLaunch) -> int:
    """Runs the room until it ends; the exit code."""
    limit(launch)
    served = ServedRoom(Relay(launch.room_config()))
    relay = served.relay
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(
            sig, lambda: loop.create_task(relay.close(CloseReason.SHUTDOWN, "relay stopping"))
        )
    # The local provisioner's deleteRoom: drain now rather than at the agent's next heartbeat.
    loop.add_signal_handler(signal.SIGUSR1, lambda: loop.create_task(relay.close(CloseReason.DELETED)))
    await served.start(launch)
    gc.freeze()  # start-up objects never need collecting; keeps GC passes short
    await served.finished()
    return 0


def limit(launch: RelayLaunch) -> None:
    """The limits a relay with a tier sets on itself (`apply_limits`: open files in every caps
    mode, since no cgroup counts them), before its first thread."""
    if launch.tier:
        apply_limits(get_tier(launch.tier), launch.caps)


def run(main: Coroutine[Any, Any, int]) -> int:
    """Runs a relay's main coroutine on uvloop."""
    try:
        import uvloop

        return uvloop.run(main)
    except ImportError:  # pragma: no cover - uvloop is a dependency; keep serving without it
        return asyncio.run(main)


def main(argv: list[str] | None = None) -> int:
    """`relay serve [flags]`: parse, then serve (or, under Agones without a room, wait for one).
    Exit 2: a setting is wrong (one line names it); 1: it could not listen (one line says why)."""
    args = sys.argv[1:] if argv is None else argv
    flags = bind_dash_values(list(args))  # "--room -h" names a room, it does not ask for help
    if "-h" in flags or "--help" in flags:
        print(usage())
        return 0
    try:
        launch = RelayLaunch.parse(args)
    except LaunchError as exc:
        return fail("relay serve", exc)
    configure(launch.log_level, launch.log_format)
    if launch.relay.tls_cert and launch.relay.tls_key:  # before a room waits on it (Agones)
        try:
            server_context(launch.relay.tls_cert, launch.relay.tls_key)
        except TlsError as exc:
            return fail("relay serve", exc)
    if not launch.relay.room_key:  # only under Agones: wait to be allocated a room (docs/agones.md)
        from relay.agent.agones import serve_agones

        limit(launch)  # a pod's resources.limits cap no open files
        return run(serve_agones(launch))
    try:
        return run(serve(launch))
    except ListenError as exc:
        return fail("relay serve", os_error(exc, f"cannot listen on {exc.where}"), EXIT_FAILURE)
    except TlsError as exc:  # the files went between the look above and the start
        return fail("relay serve", exc)
