"""A room driven by hypothesis' stateful testing, in memory (the real room and real clients, no
sockets): random joins on both transports, sends (broadcast and targeted), profile updates,
SYNCs, leaves, dropped WebSockets and resumes, garbage datagrams and passing time. After every
step, with everything delivered:

- every joined client's view of the room is the room's membership (and each other's);
- nobody got a message that was not meant for it, and nothing arrived twice;
- everything meant for a member who stayed arrived;
- a connection id is never given out twice.
"""

from __future__ import annotations

import random
from dataclasses import replace

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from relay.protocol.client import ClientConnection, ClientState, Received, Welcomed
from relay.protocol.keys import generate_room_key
from relay.server.config import RelayConfig
from relay.server.metrics import Counters
from relay.server.room import Room
from tests.protocol.harness import Net


class RoomMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.key = generate_room_key()
        config = replace(
            RelayConfig(room_key=self.key),
            max_players=8,
            messages_per_second=0,
            bytes_per_second=0,
            keepalive_timeout=1e6,
            idle_timeout=1e6,
            resume_grace=30.0,
        )
        self.room = Room(config, Counters(), 0.0, random.Random(0).randbytes)
        self.net = Net(self.room)
        self.clients: list[ClientConnection] = []  # joined (or away, WS) clients, in join order
        self.away: set[int] = set()  # id() of WS clients whose connection dropped
        self.cids_given: set[int] = set()
        self.expected: dict[int, set[int]] = {}  # message id -> connection ids meant to get it
        self.got: dict[int, list[int]] = {}  # connection id -> message ids received
        self.next_message = 0
        self.names = 0

    # ---- helpers ------------------------------------------------------------------------------

    def _settle(self) -> None:
        self.net.pump(*self.clients, rounds=50)
        for client in self.clients:
            for event in self.net.take(client):
                if isinstance(event, Received):
                    self.got.setdefault(client.connection_id, []).append(int(event.data))

    def _present(self) -> list[ClientConnection]:
        return [c for c in self.clients if id(c) not in self.away and c.state is ClientState.JOINED]

    # ---- rules --------------------------------------------------------------------------------

    @precondition(lambda self: len(self.room.members) < 8)
    @rule(transport=st.sampled_from(["udp", "ws"]), profile=st.binary(max_size=40))
    def join(self, transport: str, profile: bytes) -> None:
        self.names += 1
        client = ClientConnection(self.key, f"user{self.names}", profile, transport=transport)
        self.net.join(client)
        events = self.net.take(client)
        assert client.state is ClientState.JOINED, events
        assert events[0] == Welcomed(client.connection_id, False)
        assert client.connection_id not in self.cids_given, "a connection id given out twice"
        self.cids_given.add(client.connection_id)
        self.clients.append(client)
        self._settle()

    @precondition(lambda self: self._present())
    @rule(data=st.data(), broadcast=st.booleans())
    def send(self, data: st.DataObject, broadcast: bool) -> None:
        present = self._present()
        sender = data.draw(st.sampled_from(present))
        members = set(self.room.members) - {sender.connection_id}
        if broadcast:
            targets = None
            meant = members
        else:
            targets = data.draw(st.lists(st.sampled_from(sorted(self.cids_given | {999})), max_size=4))
            meant = members & set(targets) if targets else members
        self.next_message += 1
        # members away (a dropped WebSocket) miss what is sent meanwhile: not replayed (6, resume)
        away = {c.connection_id for c in self.clients if id(c) in self.away}
        self.expected[self.next_message] = meant - away
        sender.send(b"%d" % self.next_message, targets)
        self._settle()

    @precondition(lambda self: self._present())
    @rule(data=st.data(), profile=st.binary(max_size=40))
    def update_profile(self, data: st.DataObject, profile: bytes) -> None:
        data.draw(st.sampled_from(self._present())).update_profile(profile)
        self._settle()

    @precondition(lambda self: self._present())
    @rule(data=st.data())
    def sync(self, data: st.DataObject) -> None:
        client = data.draw(st.sampled_from(self._present()))
        client._next_sync = 0.0  # allowed now, whatever the client's own pacing
        client.sync(self.net.now)
        self._settle()

    @precondition(lambda self: self._present())
    @rule(data=st.data())
    def leave(self, data: st.DataObject) -> None:
        client = data.draw(st.sampled_from(self._present()))
        self.net.up(client, client.bye())
        self.clients.remove(client)
        self._settle()

    @precondition(lambda self: any(c.transport == "ws" for c in self._present()))
    @rule(data=st.data())
    def drop_websocket(self, data: st.DataObject) -> None:
        client = data.draw(st.sampled_from([c for c in self._present() if c.transport == "ws"]))
        self.net.drop_websocket(client)
        client.connection_lost(self.net.now)
        self.away.add(id(client))
        self._settle()

    @precondition(lambda self: self.away)
    @rule(data=st.data())
    def resume(self, data: st.DataObject) -> None:
        client = data.draw(st.sampled_from([c for c in self.clients if id(c) in self.away]))
        cid = client.connection_id
        self.net.up(client, client.reconnect(self.net.now))
        self.away.discard(id(client))
        self.net.down()
        self._settle()
        assert client.state is ClientState.JOINED and client.connection_id == cid  # within the grace

    @rule(junk=st.binary(min_size=0, max_size=200), port=st.integers(1, 3))
    def garbage(self, junk: bytes, port: int) -> None:
        self.room.udp_datagram(junk, ("192.0.2.200", port), self.net.now)
        self.net.flush()
        self._settle()

    @rule(seconds=st.floats(0.0, 2.0))
    def time_passes(self, seconds: float) -> None:
        self.net.advance(seconds, *self._present())
        self._settle()

    # ---- invariants ---------------------------------------------------------------------------

    @invariant()
    def members_agree(self) -> None:
        room = set(self.room.members)
        assert room == {c.connection_id for c in self.clients}
        for client in self._present():
            assert set(client.members) | {client.connection_id} == room, client.user_id
            for cid, member in client.members.items():
                assert member.profile == self.room.members[cid].profile

    @invariant()
    def messages_reach_exactly_whom_they_were_meant_for(self) -> None:
        for cid, ids in self.got.items():
            assert len(ids) == len(set(ids)), "a message arrived twice"
            for message in ids:
                assert cid in self.expected[message], f"message {message} reached {cid}"
        for message, meant in self.expected.items():
            for cid in meant & {c.connection_id for c in self._present()}:
                assert message in self.got.get(cid, []), f"message {message} never reached {cid}"

    @invariant()
    def nothing_broke(self) -> None:
        assert not self.room.counters.drops["internal_error"]


RoomMachine.TestCase.settings = settings(
    max_examples=60,
    stateful_step_count=30,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
test_room_state_machine = RoomMachine.TestCase
