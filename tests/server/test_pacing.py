"""Pacing (relay/server/pacing.py): the controller on given CPU readings, the loop's rest on a
given clock, and a real relay over its budget coalescing what arrives during its rest."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import math
import os
import socket
import threading
import time

import pytest
import uvloop

from relay.embedded import room
from relay.protocol import messages as m
from relay.protocol.wsframes import BINARY, client_frame
from relay.server.links import LANE
from relay.server.pacing import (
    MAX_STEP,
    MIN_PACE,
    PACE_AT_ONCE,
    PACE_OFF,
    PACE_ON,
    PACE_TARGET,
    WINDOW,
    LoopPacer,
    Pacer,
    for_loop,
)
from relay.server.transport import UDP, WS

from .rawpeer import UdpPeer, WsPeer


def _step(pacer: Pacer, share: float, at: list[float]) -> float:
    """One window at `share` cores: the readings a window apart, `share` x WINDOW of CPU."""
    now, cpu = at
    at[0], at[1] = now + WINDOW, cpu + share * WINDOW
    return pacer.sample(at[0], at[1])


def _pacer(budget: float = 1.0, max_pace: float = 0.006) -> tuple[Pacer, list[float]]:
    pacer = Pacer(budget=budget, max_pace=max_pace)
    pacer.sample(0.0, 0.0)  # the first reading only sets where the next window starts
    return pacer, [0.0, 0.0]


def test_the_first_reading_changes_nothing() -> None:
    pacer = Pacer(budget=1.0)
    assert pacer.sample(5.0, 100.0) == 0.0
    assert pacer.next_sample == 5.0 + WINDOW


def test_the_port_read_in_c_tells_the_pacer_of_every_read_only_while_it_paces() -> None:
    """`lane_due`: the lane calls on the pacer at the end of a read from then on. Unpaced, at the
    end of the CPU window (a sample); paced, after every read (its rest); back to the window
    once the pace ends, by a reading or by a budget the relay's rooms no longer pace within."""
    pacer, at = _pacer(budget=1.0)
    assert pacer.lane_due == pacer.next_sample == WINDOW
    _step(pacer, PACE_AT_ONCE, at)
    assert pacer.pace > 0 and pacer.lane_due == -math.inf
    while pacer.pace:
        _step(pacer, 0.0, at)
    assert pacer.lane_due == pacer.next_sample == at[0] + WINDOW
    loop = LoopPacer(read_cpu=lambda: 0.0, sleep=lambda _: None)
    loop.join("room", 1.0, 0.01)
    loop.pacer.pace = 0.01
    loop.pacer.settle()
    assert loop.pacer.lane_due == -math.inf
    loop.leave("room")  # no room paces within a budget now: no pace, no rest after each read
    assert loop.pacer.pace == 0.0 and loop.pacer.lane_due == loop.pacer.next_sample


def _relay_like(pacer: Pacer, at: list[float], per_pass: float, per_rate: float, windows: int) -> list[float]:
    """`windows` windows of a relay whose CPU (cores) is `per_pass / pace + per_rate` (a pass's
    sends cost the same whatever they carry); unpaced, it passes every millisecond. The paces."""
    paces = []
    for _ in range(windows):
        pace = max(pacer.pace, 0.001)
        paces.append(_step(pacer, per_pass / pace + per_rate, at))
    return paces


def test_the_pace_settles_where_the_cpu_is_the_target_share() -> None:
    pacer, at = _pacer(budget=0.125, max_pace=0.01)
    # 32 players x 30 Hz over WebSocket as measured (docs/architecture.md): about 10 us per
    # member's send a pass, 2.35% of a core for the messages themselves
    per_pass, per_rate = 32 * 9.8e-6, 0.0235
    paces = _relay_like(pacer, at, per_pass, per_rate, 60)
    settled = per_pass / (PACE_TARGET * 0.125 - per_rate)  # where per_pass / pace + per_rate is the target
    assert paces[-1] == pytest.approx(settled, rel=0.02)
    assert pacer.share == pytest.approx(PACE_TARGET, rel=0.02)
    assert all(p <= 0.01 for p in paces)
    # a lighter load settles on a shorter pace: a message waits no longer than the budget needs
    lighter, at2 = _pacer(budget=0.125, max_pace=0.01)
    assert _relay_like(lighter, at2, per_pass / 2, per_rate, 60)[-1] < paces[-1] / 1.9


def test_an_unpaced_relay_starts_at_the_least_pace_once_its_smoothed_share_reaches_on() -> None:
    pacer, at = _pacer()
    share = (PACE_ON + PACE_AT_ONCE) / 2
    paces = [_step(pacer, share, at) for _ in range(8)]
    first = next(i for i, p in enumerate(paces) if p)
    assert first >= 2  # one window over PACE_ON is not enough: the readings are smoothed
    assert paces[first] == MIN_PACE
    grown = paces[first:]
    assert all(a < b <= a * MAX_STEP for a, b in itertools.pairwise(grown))  # bounded steps


def test_a_load_the_longest_pace_cannot_bring_to_the_target_keeps_the_longest() -> None:
    pacer, at = _pacer(budget=0.125, max_pace=0.01)
    paces = _relay_like(pacer, at, 32 * 9.8e-6, 0.06, 40)  # messages alone are 48% of the budget
    assert paces[-1] == 0.01


def test_near_the_budget_the_pace_is_its_longest_at_once() -> None:
    pacer, at = _pacer(budget=0.125, max_pace=0.006)
    assert _step(pacer, 0.125 * PACE_AT_ONCE, at) == 0.006
    # and it comes down within a second of the burst's end, not held by the burst's reading
    paces = [_step(pacer, 0.125 * 0.1, at) for _ in range(10)]
    assert paces[0] == 0.006 and paces[-1] == 0.0


def test_at_the_least_pace_it_stops_under_off_and_holds_between_off_and_target() -> None:
    pacer, at = _pacer(max_pace=0.008)
    pacer.pace, pacer.share = MIN_PACE, PACE_TARGET
    held = [_step(pacer, (PACE_OFF + PACE_TARGET) / 2, at) for _ in range(10)]
    assert held == [MIN_PACE] * 10
    assert [_step(pacer, 0.0, at) for _ in range(5)][-1] == 0.0


def test_no_budget_never_paces() -> None:
    pacer, at = _pacer(budget=0.0)
    assert [_step(pacer, 1.0, at) for _ in range(3)] == [0.0, 0.0, 0.0]


class _Clockwork:
    """A LoopPacer's CPU readings and sleeps, given and recorded."""

    def __init__(self) -> None:
        self.cpu = 0.0
        self.sleeps: list[float] = []
        self.pacer = LoopPacer(read_cpu=lambda: self.cpu, sleep=self.sleeps.append)


def test_a_paced_pass_rests_until_the_pace_after_its_first_input() -> None:
    w = _Clockwork()
    w.pacer.join("room", budget=0.1, max_pace=0.05)
    w.pacer.pacer.pace = 0.05
    w.pacer.pacer.next_sample = float("inf")  # no reading in this test: the pace stays
    first = time.monotonic()
    w.pacer.scheduled()
    w.pacer.passed(first)
    assert len(w.sleeps) == 1
    assert 0.04 < w.sleeps[0] <= 0.05


def test_a_pass_longer_than_the_pace_does_not_rest() -> None:
    w = _Clockwork()
    w.pacer.join("room", budget=0.1, max_pace=0.05)
    w.pacer.pacer.pace = 0.05
    w.pacer.pacer.next_sample = float("inf")
    w.pacer.scheduled()
    w.pacer.passed(time.monotonic() - 0.06)
    assert w.sleeps == []


def test_the_rooms_of_one_process_rest_once_per_pass_after_the_last_flush() -> None:
    w = _Clockwork()
    w.pacer.join("a", budget=0.1, max_pace=0.05)
    w.pacer.join("b", budget=0.1, max_pace=0.03)
    assert (w.pacer.pacer.budget, w.pacer.pacer.max_pace) == (pytest.approx(0.2), 0.03)
    w.pacer.pacer.pace = 0.03
    w.pacer.pacer.next_sample = float("inf")
    w.pacer.scheduled()
    w.pacer.scheduled()
    now = time.monotonic()
    w.pacer.passed(now)
    assert w.sleeps == []  # room b's flush is still to run in this pass
    w.pacer.passed(now - 0.01)  # the earlier input of the two sets the rest
    assert len(w.sleeps) == 1 and 0.01 < w.sleeps[0] <= 0.02
    w.pacer.leave("a")
    assert w.pacer.pacer.budget == pytest.approx(0.1)


def test_output_read_before_the_last_rest_ended_does_not_rest_again() -> None:
    """A pass flushed at two points (the port's read, then its WebSocket members' flush): the
    second's input was read before the first's rest ended and waited through it."""
    w = _Clockwork()
    w.pacer.join("room", budget=0.1, max_pace=0.02)
    w.pacer.pacer.pace = 0.02
    w.pacer.pacer.next_sample = float("inf")
    read = time.monotonic()
    w.pacer.scheduled()
    w.pacer.passed(read)
    assert len(w.sleeps) == 1  # the port's: this clock does not sleep, so the rest ends later
    w.pacer.scheduled()
    w.pacer.passed(read + 0.001)  # the members' frames, read in the same poll
    assert len(w.sleeps) == 1
    w.pacer.scheduled()
    w.pacer.passed(read + 0.02)  # a read after the rest ended: a pass of its own
    assert len(w.sleeps) == 2


def test_the_pace_listeners_hear_each_time_the_pace_begins() -> None:
    """The caps guard looks every ten seconds at a relay that does not pace, every second at one
    that does: it must hear the pace begin, whether the loop's reading began it or the lane's
    own (relay/server/_lane.c samples an unpaced relay's window and only then calls the relay)."""
    w = _Clockwork()
    heard: list[float] = []
    w.pacer.add_pace_listener(lambda: heard.append(w.pacer.pacer.pace))
    w.pacer.join("room", budget=0.1, max_pace=0.05)
    w.pacer.scheduled()
    w.pacer.passed(time.monotonic())  # the first reading: no pace
    assert heard == [] and not w.pacer.pacing
    w.cpu = 1.0  # over the budget since
    w.pacer.pacer.next_sample = 0.0
    w.pacer.scheduled()
    w.pacer.passed(time.monotonic())
    assert heard == [0.05] and w.pacer.pacing
    w.pacer.scheduled()
    w.pacer.passed(time.monotonic())  # still pacing: heard once
    assert heard == [0.05]
    w.pacer.pacer.pace = 0.0  # the pace ended (a reading under PACE_OFF)
    w.pacer.pacer.next_sample = math.inf
    w.pacer.scheduled()
    w.pacer.passed(time.monotonic())
    assert heard == [0.05] and not w.pacer.pacing
    w.pacer.pacer.pace = MIN_PACE  # begun by the lane's own reading, before it called the relay
    w.pacer.scheduled()
    w.pacer.passed(time.monotonic())
    assert heard == [0.05, MIN_PACE]


def test_a_quota_below_the_budgets_is_the_budget() -> None:
    """The caps guard read a cgroup quota under the tier's share (a pod limited below it)."""
    w = _Clockwork()
    w.pacer.join("a", budget=0.125, max_pace=0.01)
    w.pacer.join("b", budget=0.125, max_pace=0.01)
    w.pacer.limit(0.1)
    assert w.pacer.pacer.budget == 0.1
    w.pacer.limit(1.0)  # a quota above them: theirs
    assert w.pacer.pacer.budget == pytest.approx(0.25)


def test_the_pacer_reads_the_cpu_a_window_apart() -> None:
    w = _Clockwork()
    w.pacer.join("room", budget=0.1, max_pace=0.05)
    w.pacer.scheduled()
    w.pacer.passed(time.monotonic())  # the first reading
    w.cpu = 1.0  # a core's worth since: over the budget
    w.pacer.pacer.next_sample = 0.0
    w.pacer.scheduled()
    w.pacer.passed(time.monotonic())
    assert w.pacer.pacer.pace == 0.05
    assert w.sleeps and w.sleeps[-1] > 0.04


async def _deliveries(
    cpu_budget: float | None, count: int = 10, gap: float = 0.005
) -> tuple[list[bytes], int, str, int]:
    """`count` SENDs from a, `gap` seconds apart, from a thread (the relay's rest blocks its
    loop, and so the test's); the payloads b got, in order, in how many datagrams, and how many
    of a's packets the port read in C took (relay/server/_lane.c; 0 where it is not built). On
    uvloop, as `relay serve` runs: the relay paces on no other loop."""
    async with room(cpu_budget=cpu_budget, max_pace=0.05) as r:
        a = await UdpPeer.open(r.key, r.port)
        b = await UdpPeer.open(r.key, r.port)
        await a.start("a")
        await b.start("b")
        await a.expect(m.MemberJoined)
        for _ in range(3):  # passes a window apart: the pacer has its readings
            a.send(m.Send(b"warm").encode())
            await asyncio.sleep(WINDOW + 0.02)
        await b.silence(0.1)
        packets = [a.seal(m.Send(b"msg%d" % i).encode()) for i in range(count)]
        assert a.transport is not None
        sock = socket.socket(fileno=os.dup(a.transport.get_extra_info("socket").fileno()))

        def send() -> None:
            with sock:
                for packet in packets:
                    sock.send(packet)
                    time.sleep(gap)

        lane = r.relay._udp_lane
        before = lane.lane.fast if lane is not None else 0
        sender = threading.Thread(target=send)
        sender.start()
        datagrams = await b.silence(0.3)
        sender.join()
        metrics = r.relay.metrics.render().decode()
        taken = lane.lane.fast - before if lane is not None else 0
        a.close()
        b.close()
    got = [msg.data for p in datagrams for msg in b.decode(p) if isinstance(msg, m.Message)]
    return got, len(datagrams), metrics, taken


def test_a_relay_over_its_budget_coalesces_what_arrives_while_it_rests() -> None:
    """Where the port is read in C, a paced relay's reads stay there: it rests after each read,
    and the next read packs what came meanwhile per recipient (a paced room once handed every
    pass to the room, whose Python path cost more CPU per message than the pace saved)."""
    expected = [b"msg%d" % i for i in range(10)]
    paced, paced_datagrams, metrics, taken = uvloop.run(_deliveries(cpu_budget=1e-9))
    assert "relay_pace_seconds 0.05" in metrics
    assert "relay_max_pace_seconds 0.05" in metrics  # at its longest (RelayPacedAtLongest's terms)
    unpaced, unpaced_datagrams, _, _ = uvloop.run(_deliveries(cpu_budget=None))
    assert paced == expected and unpaced == expected  # everything, in order, either way
    # 10 messages over 45 ms: a relay resting 50 ms a pass sends them in a datagram or two
    assert paced_datagrams <= 3
    assert unpaced_datagrams >= paced_datagrams + 3
    assert taken == (10 if LANE is not None else 0)  # each one relayed in C, paced or not


async def _reads_per_rest(mixed: bool) -> list[tuple[int, int]]:
    """Two sources a paced loop (50 ms) reads, each sending every 5 ms from a thread (the rest
    blocks the loop): `mixed`, a room's UDP member and its WebSocket member; else the UDP
    members of two rooms in one loop, as a group process serves its rooms. Per rest, the
    packets read from each since the rest before it."""
    async with contextlib.AsyncExitStack() as stack:
        rooms = [
            await stack.enter_async_context(room(cpu_budget=1e-9, max_pace=0.05)) for _ in range(2 - mixed)
        ]
        udp = [await UdpPeer.open(r.key, r.port) for r in rooms for _ in range(2)]  # a sender, a receiver
        stack.callback(lambda: [peer.close() for peer in udp])
        ws = [await WsPeer.open(rooms[0].key, rooms[0].port)] if mixed else []
        stack.push_async_callback(lambda: asyncio.gather(*(peer.aclose() for peer in ws)))
        senders = udp[0::2] + ws
        for i, peer in enumerate(udp + ws):
            await peer.start(f"p{i}")
        for _ in range(3):  # passes a window apart: the pacer has its readings, and paces
            for peer in senders:
                peer.send(m.Send(b"warm").encode())
            await asyncio.sleep(WINDOW + 0.02)
        pacer = for_loop(asyncio.get_running_loop())
        assert pacer is not None and pacer.pacer.pace == 0.05
        reads = [r.relay.counters.packets_in for r in rooms]
        count = (lambda: (reads[0][UDP], reads[0][WS])) if mixed else (lambda: (reads[0][UDP], reads[1][UDP]))
        marks: list[tuple[int, int]] = []
        sleep = pacer._sleep

        def marked(seconds: float) -> None:
            marks.append(count())
            sleep(seconds)

        pacer._sleep = marked
        stack.callback(setattr, pacer, "_sleep", sleep)

        def send(peer: UdpPeer | WsPeer) -> None:
            payloads = [peer.seal(m.Send(b"%d" % i).encode()) for i in range(80)]
            if isinstance(peer, WsPeer):
                assert peer.writer is not None
                fd = peer.writer.get_extra_info("socket").fileno()
                payloads = [client_frame(BINARY, p, b"mask") for p in payloads]
            else:
                assert peer.transport is not None
                fd = peer.transport.get_extra_info("socket").fileno()
            with socket.socket(fileno=os.dup(fd)) as sock:
                for packet in payloads:
                    sock.sendall(packet)
                    time.sleep(0.005)

        threads = [threading.Thread(target=send, args=(peer,)) for peer in senders]
        for t in threads:
            t.start()
        await udp[1].silence(0.6)
        for t in threads:
            t.join()
    return [(a1 - a0, b1 - b0) for (a0, b0), (a1, b1) in itertools.pairwise(marks)]


@pytest.mark.parametrize("mixed", [True, False], ids=["udp-and-websocket-members", "two-rooms-ports"])
def test_a_paced_pass_reads_everything_ready_before_one_rest(mixed: bool) -> None:
    """Two sources ready in one poll: both are read, then the pass rests once. Resting at the
    end of the port's read left the other source to be read after the rest, and to rest again
    at its own flush: the two took turns, one rest each, and each one's input waited up to two
    paces (a room's WebSocket members, or a group process's other rooms)."""
    rests = uvloop.run(_reads_per_rest(mixed))
    busy = [(a, b) for a, b in rests if a or b]
    assert len(busy) >= 6
    both = [(a, b) for a, b in busy if a and b]
    assert len(both) >= 0.7 * len(busy), rests


def test_a_relay_on_asyncios_own_loop_does_not_pace() -> None:
    """That loop reads a datagram a wake: a rest would hold each one for the pace."""
    got, datagrams, metrics, _ = asyncio.run(_deliveries(cpu_budget=1e-9))
    assert got == [b"msg%d" % i for i in range(10)]
    assert "relay_pace_seconds 0.0" in metrics
    assert "relay_max_pace_seconds 0.0" in metrics  # it never paces
    assert datagrams >= 7  # a datagram a message, but for the odd pass that found two
