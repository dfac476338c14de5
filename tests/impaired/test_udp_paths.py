"""The project's UDP client and a real relay through a lossy, duplicating, reordering, blackholed
and rebinding path (tests/impaired/proxy.py): what docs/protocol.md sections 4.4, 6 and 7.3
promise a UDP application still holds. Sequence rules are asserted, never timings: a path's
randomness is seeded, its scheduling is the machine's."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable

import pytest

import relay.client as rc
from relay.embedded import EmbeddedRoom, room
from relay.protocol.client import ClientState
from relay.protocol.constants import LeaveReason
from tests.server.helpers import FAST, client, eventually, exchange, no_events_of

from .proxy import Impairment, UdpProxy

pytestmark = pytest.mark.timeout(60)

LOSSY = Impairment(loss=0.2, duplicate=0.1, reorder=0.2, jitter=0.005, reorder_delay=0.03)
UNLIMITED = {"messages_per_second": 0, "bytes_per_second": 0}  # rates are not what is tested


def received(events: Iterable[object]) -> list[rc.Received]:
    return [e for e in events if isinstance(e, rc.Received)]


def replay_drops(r: EmbeddedRoom) -> int:
    return r.relay.counters.drops.get("replay", 0)


async def test_play_through_loss_reordering_and_duplication() -> None:
    """Two members exchange N messages each through 20% loss, 10% duplication and 20% reordering
    each way: each gets a subset of what the other sent, in any order, never a duplicate nor
    anything from outside the room; the share lost is what the two paths dropped; and the anti-
    replay window (4.4) refused exactly the duplicated DATA packets, none of the late ones."""
    n = 150
    async with (
        room(keepalive_timeout=5.0, **UNLIMITED) as r,
        UdpProxy(r.port, LOSSY, LOSSY, seed=1) as pa,
        UdpProxy(r.port, LOSSY, LOSSY, seed=2) as pb,
    ):
        a = await client(r, "alice", port=pa.port, timeout=10)
        b = await client(r, "bob", port=pb.port, timeout=10)
        for i in range(n):
            a.send(b"a%d" % i)
            b.send(b"b%d" % i)
            await asyncio.sleep(0.004)  # one packet per message each way
        await pa.settled()
        await pb.settled()
        await eventually(
            lambda: replay_drops(r) == pa.up.duplicated_data + pb.up.duplicated_data, 5, "relay replay drops"
        )
        await eventually(lambda: a.stats.dropped.get("replay", 0) == pa.down.duplicated_data, 5, "a's")
        await eventually(lambda: b.stats.dropped.get("replay", 0) == pb.down.duplicated_data, 5, "b's")
        got = {a: received(a.drain_events()), b: received(b.drain_events())}
        for me, other, proxies, prefix in ((a, b, (pb, pa), b"b"), (b, a, (pa, pb), b"a")):
            sent = [prefix + b"%d" % i for i in range(n)]
            data = [e.data for e in got[me]]
            assert {e.sender for e in got[me]} == {other.connection_id}
            assert len(data) == len(set(data)), "a message was delivered twice"
            assert set(data) <= set(sent)
            assert data != sorted(data, key=sent.index), "the path reordered nothing"
            up, down = proxies[0].up, proxies[1].down
            expected = (1 - up.dropped / up.received) * (1 - down.dropped / down.received)
            assert abs(len(data) / n - expected) < 0.15, (len(data), expected)
        assert pa.up.duplicated_data and pb.down.duplicated_data and pa.up.reordered and pb.down.reordered
        await a.close()
        await b.close()


async def test_joins_through_heavy_loss() -> None:
    """Four clients join through 40% loss each way, with duplication and reordering: HELLO and JOIN
    retransmission (section 6) gets every one in, and retransmitted or duplicated JOINs never
    seat a member twice (a repeated JOIN on an admitted session is answered, not admitted)."""
    heavy = Impairment(loss=0.4, duplicate=0.2, reorder=0.2, reorder_delay=0.05)
    async with room() as r, UdpProxy(r.port, heavy, heavy, seed=3) as proxy:
        clients = await asyncio.gather(
            *(client(r, f"user{i}", port=proxy.port, timeout=20) for i in range(4))
        )
        cids = sorted(c.connection_id for c in clients)
        assert cids == [1, 2, 3, 4]
        assert sorted(r.relay.room.members) == cids
        sent = sum(c.stats.hello_sent + c.stats.join_sent for c in clients)
        assert sent > 2 * len(clients), "nothing was retransmitted: the path was not lossy"
        for c in clients:
            await c.close()


@pytest.mark.parametrize(
    ("way", "config"),
    [
        ("down", None),  # its PINGs still reach the relay: the seat is held past its loss report
        ("both", rc.ClientConfig(ping_interval=0.1, silence_timeout=0.5)),  # it notices first
    ],
)
async def test_a_blackhole_past_the_loss_report_resumes_the_seat(way: str, config: rc.ClientConfig) -> None:
    """A path that goes dark longer than the client's silence timeout: the client reports the
    connection lost, and when the path comes back within the seat's hold (section 6: the
    keepalive timeout from the last authenticated packet) it resumes with the same connection id,
    unseen by the others."""
    async with (
        room(keepalive_timeout=2.0, resume_grace=2.0) as r,
        UdpProxy(r.port) as proxy,
    ):
        a = await client(r, "alice", port=proxy.port, config=config)
        b = await client(r, "bob")
        await exchange(a, b)
        cid = a.connection_id
        proxy.blackhole(up=way == "both", down=True)
        assert await a.next_event_of(rc.ConnectionLost, 5) == rc.ConnectionLost("silence")
        await asyncio.sleep(0.3)  # dark a while longer
        proxy.heal()
        assert await a.next_event_of(rc.Resumed, 5) == rc.Resumed(cid, kept_seat=True)
        assert a.connection_id == cid and a.state is ClientState.JOINED
        assert no_events_of(b, rc.Left, rc.Joined) == []  # it would have come before the resume
        await exchange(a, b, b"after the dark")
        await a.close()
        await b.close()


async def test_a_blackhole_past_the_seat_hold_resumes_as_a_fresh_join() -> None:
    """Dark both ways past the keepalive timeout: the relay gives the seat away (the others get
    LEAVE timeout), and the client's resume, once the path is back, is a fresh join: a new
    connection id, `Resumed(kept_seat=False)`, and the others see the member join again."""
    async with room(**FAST) as r, UdpProxy(r.port) as proxy:
        a = await client(r, "alice", port=proxy.port)
        b = await client(r, "bob")
        await exchange(a, b)
        old = a.connection_id
        proxy.blackhole()
        assert await b.next_event_of(rc.Left, 5) == rc.Left(old, LeaveReason.TIMEOUT)
        assert await a.next_event_of(rc.ConnectionLost, 5) == rc.ConnectionLost("silence")
        proxy.heal()
        resumed = await a.next_event_of(rc.Resumed, 5)
        assert resumed.kept_seat is False and resumed.connection_id not in (old, None)
        assert resumed.connection_id == a.connection_id
        joined = await b.next_event_of(rc.Joined, 5)
        assert joined == rc.Joined(a.connection_id, "alice", b"")
        await exchange(a, b, b"a new seat")
        await a.close()
        await b.close()


async def test_a_short_blackhole_loses_nothing_but_messages() -> None:
    """Dark both ways for less than the keepalive timeout: no loss report, no LEAVE, the session
    goes on as it was."""
    async with room(keepalive_timeout=1.6) as r, UdpProxy(r.port) as proxy:
        a = await client(r, "alice", port=proxy.port)
        b = await client(r, "bob")
        await exchange(a, b)
        proxy.blackhole()
        b.send(b"into the dark")
        await asyncio.sleep(0.5)
        proxy.heal()
        assert no_events_of(a, rc.ConnectionLost, rc.Received) == []
        assert no_events_of(b, rc.Left, rc.Joined) == []
        await exchange(a, b, b"after")
        assert a.stats.reconnects == 0 and proxy.down.blackholed >= 1
        await a.close()
        await b.close()


async def test_nat_rebinding_moves_the_session_and_play_goes_on() -> None:
    """Mid-stream the path's source port changes (a NAT that lost its mapping), under loss and
    reordering: the relay moves the session to the new address, validates it with the path
    challenge (resent until answered, 7.3), and both members keep their ids and keep exchanging.
    Packets from the old port that arrive late (reordered past the move) do not move it back:
    once the session has moved nothing more goes to the old port (a late one moved it back, and
    the next one forward again: three moves and challenges where one was due)."""
    up = Impairment(loss=0.2, delay=0.01, reorder=0.3, reorder_delay=0.05)
    async with (
        room(keepalive_timeout=5.0, **UNLIMITED) as r,
        UdpProxy(r.port, up, Impairment(loss=0.2), seed=4) as proxy,
    ):
        a = await client(r, "alice", port=proxy.port, timeout=10)
        b = await client(r, "bob")
        cid = a.connection_id
        member = r.relay.room.members[cid]
        path = member.session.path
        assert path is not None and path.validated and path.addr == proxy.upstream_address()
        new = None
        events: dict[rc.Client, list[object]] = {a: [], b: []}
        stale = held = 0
        for i in range(200):
            a.send(b"a%d" % i)
            b.send(b"b%d" % i)
            await asyncio.sleep(0.005)
            if new is None and i >= 50 and proxy.up.reordered > held:
                proxy.rebind()  # one of a's packets is held back: it arrives after the move
                new = proxy.upstream_address()
            held = proxy.up.reordered
            if i == 150:  # well after the move: the stale port must be forgotten by now
                assert new is not None and path.addr == new and path.validated
                stale = proxy.down.stale
            for c in (a, b):
                events[c] += c.drain_events()
        await proxy.settled()
        await asyncio.sleep(0.1)
        for c in (a, b):
            events[c] += c.drain_events()
        seen = {c: [e.data for e in received(events[c])] for c in (a, b)}
        assert r.relay.counters.rebinds == 1
        assert member.session.path is path and a.connection_id == cid
        assert proxy.down.stale == stale
        after = [d for d in seen[a] if int(d[1:]) > 150]  # what b sent after the move reached a
        assert len(after) > 10 and len(set(seen[a])) == len(seen[a])
        assert len([d for d in seen[b] if int(d[1:]) > 150]) > 10
        assert not [e for e in events[a] if isinstance(e, rc.ConnectionLost | rc.Resumed)]
        await a.close()
        await b.close()
