"""`relay serve --group SOCKET --group-rooms N`: one relay process serving up to N rooms.

The rooms-per-process tier (`relay_rooms_per_process` > 1, docs/tiers.md). One process per room
pays a wake-up of its own process for nearly every client datagram in the deployed shape (one
message per packet, docs/architecture.md); a process serving several rooms shares its wake-ups,
its interpreter and its heap among them. Each room is still its own Relay with its own port,
key, agent and log; what the rooms share is the process, its caps (the tier's CPU, memory and
open files times N, one cgroup: relay/host/group_spawner.py) and its fate.

The host's spawner (relay/host/group_spawner.py) talks to the group over a Unix socket the group
listens on (mode 0600 in a private folder: rooms' secrets travel on it), in the frames of
relay/host/frames.py. Requests, each answered in order:

    {"op": "assign", "argv": [... "serve", flags], "env": {...}, "log_path": str | null}
        -> {"op": "assigned", "incarnation": I, "port": P} | {"op": "refused", "error": text}
    {"op": "stop", "incarnation": I, "reason": "shutdown" | "deleted" | "kill"}   (no answer)
    {"op": "rooms"} -> {"op": "rooms", "rooms": [{"incarnation", "namespace", "room"}, ...]}

and, to every connection, whenever a room has ended and reported it:

    {"op": "exited", "incarnation": I, "reason": "deleted" | "idle" | ... | "killed"}

"kill" is the per-room SIGKILL: the room's sockets close at once and its agent stops: no
CLOSING, no `closed` report (the control plane hears of the end from the spawner, as it hears of
a killed process's exit). A room refused after its relay started (its agent could not start)
leaves nothing behind either. The group outlives its spawner's connection (a control-plane
restart: the next one finds it by its command line and reconnects, relay/host/group_spawner.py;
a spawner still running that loses the connection kills the group, since it cannot tell what
was lost on it); it exits once it has no room and no connection, or when no spawner connects
within CONNECT_TIMEOUT of its start. SIGTERM or SIGINT: every room closes (shutdown), then it
exits 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import signal
import sys
from dataclasses import dataclass, replace
from typing import Any, TextIO

from relay.agent.caps import CapsCollector, CapsGuard, apply_limits
from relay.agent.launch import LaunchError, RelayLaunch
from relay.agent.serve import ServedRoom
from relay.agent.tiers import Tier, get_tier, group_tier
from relay.host.frames import encode_frame, read_frame_async
from relay.logs import ROOM_LOG, RoutedStream, configure
from relay.protocol.constants import CloseReason
from relay.server.app import Relay
from relay.settings import ListenError

log = logging.getLogger("relay.group")

GROUP_FLAG = "--group"
GROUP_ROOMS_FLAG = "--group-rooms"
CONNECT_TIMEOUT = 30.0
MAX_GROUP_FRAME = 1 << 20
"""Bytes of one frame on a group's socket, either way (an assignment holds a room's environment)."""
STOP_REASONS = {"shutdown": CloseReason.SHUTDOWN, "deleted": CloseReason.DELETED}


def group_argv(socket_path: str, rooms: int) -> list[str]:
    """The flags after `relay serve` that start a group (its command line names its socket, which
    is how a restarted control plane finds it)."""
    return [GROUP_FLAG, socket_path, GROUP_ROOMS_FLAG, str(rooms)]


def group_of(command: list[str]) -> tuple[str, int] | None:
    """(socket path, rooms) where a process's whole command line (/proc/PID/cmdline) is a group's."""
    if "serve" not in command:
        return None
    return parse_group_argv([a for a in command[command.index("serve") + 1 :] if a])


def parse_group_argv(args: list[str]) -> tuple[str, int] | None:
    """(socket path, rooms) from `relay serve` flags that start a group; None for any other."""
    if len(args) != 4 or args[0] != GROUP_FLAG or args[2] != GROUP_ROOMS_FLAG:
        return None
    try:
        rooms = int(args[3])
    except ValueError:
        return None
    return (args[1], rooms) if rooms >= 1 and args[1] else None


@dataclass(slots=True)
class _Room:
    namespace: str
    room: str
    task: asyncio.Task[None]
    served: ServedRoom | None = None
    log_file: TextIO | None = None


class RoomGroup:
    """The rooms of one group process; also what its caps guard steers (relay/agent/caps.py's
    Guarded): joins refused and UDP fan-out shed in every room together."""

    def __init__(self, capacity: int, tier: Tier | None, caps: str) -> None:
        self.capacity = capacity
        self.tier = tier
        self.caps = caps
        self.rooms: dict[str, _Room] = {}  # by incarnation
        self.connections: set[asyncio.StreamWriter] = set()
        self.guard: CapsGuard | None = None
        self.done = asyncio.Event()
        self._accepting_joins = True
        self._shed_optional = False
        self._budget: float | None = None  # the CPU budget the guard gave (`pace_within`)
        self._totals: dict[str, int] = {}  # each room's messages at the last sample
        self._loads: dict[str, int] = {}  # and since the one before
        self._ever_connected = False
        self._closing = False

    # ---- Guarded ----------------------------------------------------------------------------

    @property
    def accepting_joins(self) -> bool:
        return self._accepting_joins

    @accepting_joins.setter
    def accepting_joins(self, value: bool) -> None:
        self._accepting_joins = value
        for served in self._served():
            served.relay.accepting_joins = value

    @property
    def shed_optional(self) -> bool:
        return self._shed_optional

    @shed_optional.setter
    def shed_optional(self, value: bool) -> None:
        self._shed_optional = value
        self._shed()

    def sample(self) -> None:
        """Each room's messages (in and out) since the last sample: its share of the group's CPU,
        near enough (a room's work is per message; the rooms share one interpreter)."""
        loads = {}
        for incarnation, room in self.rooms.items():
            if room.served is not None:
                c = room.served.relay.counters
                total = sum(c.messages_in) + sum(c.messages_out)
                loads[incarnation] = total - self._totals.get(incarnation, total)
                self._totals[incarnation] = total
        self._totals = {k: v for k, v in self._totals.items() if k in loads}
        self._loads = loads
        if self._shed_optional:
            self._shed()

    def _shed(self) -> None:
        """Over the group's CPU budget, the rooms over their share of it shed their UDP fan-out
        (the heaviest one at least); the rooms within their share are not touched. A room of a
        group is thus held to its own tier's share, as far as the group is short of CPU."""
        loads = self._loads
        fair = sum(loads.values()) / max(1, len(loads))
        heaviest = max(loads, key=loads.__getitem__, default=None)
        for incarnation, room in self.rooms.items():
            if room.served is not None:
                load = loads.get(incarnation, 0)
                over = load > fair or (incarnation == heaviest and load > 0)
                room.served.relay.shed_optional = self._shed_optional and over

    @property
    def quiet(self) -> bool:
        return all(served.relay.quiet for served in self._served())

    def pace_within(self, budget: float) -> None:
        """The group's CPU budget: its rooms share one pacer (relay/server/pacing.py), and a room
        that starts later gets it too."""
        self._budget = budget
        for served in self._served():
            served.relay.pace_within(budget)

    async def close(self, reason: CloseReason, text: str = "") -> None:
        """Every room closes (the guard's answer to the group's memory cap, or SIGTERM)."""
        self._closing = True
        await asyncio.gather(*(s.relay.close(reason, text) for s in self._served()), return_exceptions=True)
        self._check_done()

    def _served(self) -> list[ServedRoom]:
        return [r.served for r in self.rooms.values() if r.served is not None]

    # ---- the spawner's connection --------------------------------------------------------------

    async def connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._ever_connected = True
        self.connections.add(writer)
        try:
            while (request := await read_frame_async(reader, MAX_GROUP_FRAME)) is not None:
                answer = await self._handle(request)
                if answer is not None:
                    writer.write(encode_frame(answer))
        except (ValueError, ConnectionError) as exc:
            log.warning("group control connection dropped: %s", exc)
        finally:
            self.connections.discard(writer)
            writer.close()
            self._check_done()

    async def _handle(self, request: dict[str, Any]) -> dict[str, Any] | None:
        op = request.get("op")
        if op == "assign":
            return await self._assign(request)
        if op == "stop":
            self._stop(str(request.get("incarnation")), str(request.get("reason")))
            return None
        if op == "rooms":
            rooms = [
                {"incarnation": inc, "namespace": r.namespace, "room": r.room}
                for inc, r in self.rooms.items()
            ]
            return {"op": "rooms", "rooms": rooms}
        return {"op": "refused", "error": f"unknown op {op!r}"}

    async def _assign(self, request: dict[str, Any]) -> dict[str, Any]:
        argv, env, log_path = request.get("argv"), request.get("env"), request.get("log_path")
        try:
            if not (isinstance(argv, list) and all(isinstance(a, str) for a in argv) and "serve" in argv):
                raise LaunchError("argv must be a `relay serve` command line")
            if not (isinstance(env, dict) and all(isinstance(v, str) for v in env.values())):
                raise LaunchError("env must map strings to strings")
            launch = RelayLaunch.parse(argv[argv.index("serve") + 1 :], environ=env)
        except LaunchError as exc:
            return {"op": "refused", "error": str(exc)}
        incarnation = launch.incarnation
        if not incarnation:
            return {"op": "refused", "error": "a room in a group must name its incarnation"}
        if incarnation in self.rooms:
            return {"op": "refused", "error": f"incarnation {incarnation} is already served here"}
        if self._closing or len(self.rooms) >= self.capacity:
            return {"op": "refused", "error": f"the group is full ({self.capacity} rooms)"}
        # the group keeps its rooms to the tier together; a room's own flags cannot lift that
        launch = replace(launch, tier=None)
        started: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        task = asyncio.get_running_loop().create_task(
            self._run_room(incarnation, launch, log_path if isinstance(log_path, str) else None, started)
        )
        self.rooms[incarnation] = _Room(launch.namespace or "", launch.room or "", task)
        try:
            port = await asyncio.shield(started)
        except Exception as exc:
            return {"op": "refused", "error": str(exc) or type(exc).__name__}
        return {"op": "assigned", "incarnation": incarnation, "port": port}

    async def _run_room(
        self, incarnation: str, launch: RelayLaunch, log_path: str | None, started: asyncio.Future[int]
    ) -> None:
        """The room's task: its records go to its own log (ROOM_LOG is set in this task's context,
        which every task and callback it starts inherits)."""
        room = self.rooms[incarnation]
        reason = "killed"
        try:
            try:
                if log_path is not None:
                    os.makedirs(os.path.dirname(log_path) or ".", exist_ok=True)
                    room.log_file = open(log_path, "a", buffering=1)  # noqa: SIM115 - closed below
                    ROOM_LOG.set(room.log_file)
                room.served = served = ServedRoom(Relay(launch.room_config()))
                await served.start(launch, guarded=False)
                served.relay.accepting_joins = self._accepting_joins
                if self._budget is not None:  # the guard gives a budget only when it changes
                    served.relay.pace_within(self._budget)
                if self.guard is not None:
                    # the process's figures against the group's caps, in each room's /metrics
                    served.relay.metrics.registry.register(CapsCollector(self.guard))
                    served.relay.add_session_listener(self.guard.wake)
            except Exception as exc:  # refused: nothing of the room may stay (sockets, agent, seat)
                if room.served is not None:
                    _drop(room.served)
                if not isinstance(exc, (ListenError, OSError)):
                    log.exception("room %s did not start", incarnation)
                started.set_exception(exc)
                reason = "failed"
                return
            started.set_result(served.relay.port)
            reason = (await served.finished()).name.lower()
        except asyncio.CancelledError:
            if room.served is not None:
                _drop(room.served)
            if not started.done():
                started.set_exception(RuntimeError("killed while starting"))
        except Exception:
            log.exception("room %s failed", incarnation)
            reason = "crash"
        finally:
            del self.rooms[incarnation]
            if room.log_file is not None:
                room.log_file.close()
            if reason != "failed":
                self._announce({"op": "exited", "incarnation": incarnation, "reason": reason})
            self._check_done()

    def _stop(self, incarnation: str, how: str) -> None:
        room = self.rooms.get(incarnation)
        if room is None:
            return
        if how == "kill" or room.served is None:
            room.task.cancel()
            return
        reason = STOP_REASONS.get(how, CloseReason.SHUTDOWN)
        text = "relay stopping" if reason is CloseReason.SHUTDOWN else ""
        room.task.get_loop().create_task(room.served.relay.close(reason, text))

    def _announce(self, event: dict[str, Any]) -> None:
        frame = encode_frame(event)
        for writer in list(self.connections):
            with contextlib.suppress(Exception):
                writer.write(frame)

    def _check_done(self) -> None:
        if self.rooms:
            return
        if self._closing or (self._ever_connected and not self.connections):
            self.done.set()

    def connect_deadline(self) -> None:
        """Nobody connected in time: the spawner that started us went away."""
        if not self._ever_connected and not self.rooms:
            log.warning("no spawner connected within %.0f s: exiting", CONNECT_TIMEOUT)
            self.done.set()


def _drop(served: ServedRoom) -> None:
    """Ends a room as SIGKILL ends a relay process of its own: its sockets close at once and its
    agent stops without a word (no `closed` report: the control plane learns of the end from the
    spawner, as of a killed process's exit, and records what it knows, not "shutdown")."""
    if served.agent is not None:
        served.agent.abandon()  # before the abort, which would wake its watcher to report
    served.relay.abort()


class GroupGuard(CapsGuard):
    """The caps guard of a group: the group's caps (its rooms' tier times N), each room's load
    sampled at every look, so that shedding falls on the rooms over their share."""

    relay: RoomGroup

    def _check_cpu(self, now: float) -> None:
        self.relay.sample()
        super()._check_cpu(now)


async def serve_group(socket_path: str, capacity: int, tier_name: str | None, caps: str) -> int:
    tier = group_tier(get_tier(tier_name), capacity) if tier_name else None
    if tier is not None:  # open files in every mode: no cgroup counts them
        apply_limits(tier, caps)
    group = RoomGroup(capacity, tier, caps)
    if tier is not None:
        group.guard = GroupGuard(group, tier, caps)
        group.guard.start()
    with contextlib.suppress(FileNotFoundError):
        os.unlink(socket_path)
    old_umask = os.umask(0o177)
    try:
        server = await asyncio.start_unix_server(group.connection, path=socket_path)
    finally:
        os.umask(old_umask)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(
            sig, lambda: loop.create_task(group.close(CloseReason.SHUTDOWN, "relay stopping"))
        )
    deadline = loop.call_later(CONNECT_TIMEOUT, group.connect_deadline)
    log.info("relay group listening on %s for up to %d rooms", socket_path, capacity)
    gc.freeze()
    await group.done.wait()
    deadline.cancel()
    server.close()
    with contextlib.suppress(FileNotFoundError):
        os.unlink(socket_path)
    if group.guard is not None:
        group.guard.stop()
    log.info("relay group exiting")
    return 0


def main(args: list[str]) -> int:
    """`relay serve --group SOCKET --group-rooms N` (started by relay/host/group_spawner.py). Its
    tier, caps mode and logging are a relay's settings from its environment (RELAY_TIER and
    RELAY_CAPS, as a capped relay's; RELAY_LOG_LEVEL, RELAY_LOG_FORMAT)."""
    from relay.agent.serve import run
    from relay.settings import fail

    parsed = parse_group_argv(args)
    if parsed is None:
        print(f"relay serve {GROUP_FLAG}: expected {GROUP_FLAG} SOCKET {GROUP_ROOMS_FLAG} N", file=sys.stderr)
        return 2
    try:
        settings = RelayLaunch.parse([], room_key_required=False)
    except LaunchError as exc:
        return fail(f"relay serve {GROUP_FLAG}", exc)
    configure(settings.log_level, settings.log_format, RoutedStream(sys.stderr))
    return run(serve_group(parsed[0], parsed[1], settings.tier, settings.caps))
