"""Moves packets between ClientConnections and a FakeRelay, with a manual clock and optional loss."""

from __future__ import annotations

from collections.abc import Callable

from relay.protocol.client import ClientConnection, ClientEvent
from relay.protocol.keys import generate_room_key

from .fakerelay import FakeRelay


class Net:
    def __init__(self, relay: FakeRelay) -> None:
        self.relay = relay
        self.now = 0.0
        self.by_sid: dict[int, ClientConnection] = {}
        self.events: dict[int, list[ClientEvent]] = {}
        self.to_client: list[tuple[ClientConnection, bytes]] = []
        self.drop_up: Callable[[bytes], bool] = lambda packet: False
        self.drop_down: Callable[[bytes], bool] = lambda packet: False

    def log(self, client: ClientConnection) -> list[ClientEvent]:
        return self.events.setdefault(id(client), [])

    def take(self, client: ClientConnection) -> list[ClientEvent]:
        events = self.log(client)
        out = list(events)
        events.clear()
        return out

    def up(self, client: ClientConnection, packets: list[bytes]) -> None:
        """Client -> relay; the answers are queued for delivery."""
        for packet in packets:
            if self.drop_up(packet):
                continue
            for sid, answer in self.relay.handle(packet):
                target = self.by_sid.get(sid)
                if target is None:  # an ACCEPT for the session this client just opened
                    self.by_sid[sid] = target = client
                self.to_client.append((target, answer))

    def down(self) -> None:
        queue, self.to_client = self.to_client, []
        for client, packet in queue:
            if not self.drop_down(packet):
                self.log(client).extend(client.receive(packet, self.now))

    def pump(self, *clients: ClientConnection, rounds: int = 20) -> None:
        """Until quiet: everything each client has to send goes up, every answer comes down."""
        for _ in range(rounds):
            moved = False
            for client in clients:
                packets = client.datagrams_to_send()
                moved = moved or bool(packets)
                self.up(client, packets)
            moved = moved or bool(self.to_client)
            self.down()
            if not moved:
                return

    def advance(self, seconds: float, *clients: ClientConnection) -> None:
        """Moves the clock, firing each client's due timers (in steps, as an event loop would)."""
        end = self.now + seconds
        while True:
            due = [c.timer() for c in clients]
            nxt = min((t for t in due if t is not None), default=None)
            if nxt is None or nxt > end:
                break
            self.now = max(self.now, nxt)
            for client in clients:
                when = client.timer()
                if when is not None and when <= self.now:
                    self.log(client).extend(client.handle_timer(self.now))
            self.pump(*clients)
        self.now = end

    def join(self, client: ClientConnection) -> None:
        self.up(client, client.initiate(self.now))
        self.down()
        self.pump(client)


def new_room(transport: str = "udp", **kwargs: object) -> tuple[str, FakeRelay, Net]:
    key = generate_room_key()
    relay = FakeRelay(key, transport, **kwargs)  # type: ignore[arg-type]
    return key, relay, Net(relay)
