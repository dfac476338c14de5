"""The real relay room (relay/server/room.py) and client state machines (relay/protocol/client.py)
wired together in memory: no socket, no event loop, a manual clock and seeded randomness.

Both sides are sans-I/O, so this is all a transport has to do: hand each packet to the other
side with the time, flush the room when it asks (at the end of each step, as the event loop's
pass would), and fire whichever timers are due. UDP clients have addresses (TEST-NET-1, never
a real peer) that a test can move (NAT rebinding); WebSocket clients have in-memory links whose
close reaches the client as a lost transport.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from relay.protocol.client import ClientConnection, ClientEvent
from relay.protocol.constants import WS_MAX_PLAINTEXT, CloseReason
from relay.protocol.keys import generate_room_key
from relay.server.config import RelayConfig
from relay.server.metrics import Counters
from relay.server.room import Room
from relay.server.sessions import Session
from relay.server.transport import WS, Disconnect

_CLOSED = b""  # in the queue to a WebSocket client: its connection was closed here


class MemoryLink:
    """A WebSocket in memory: what the room sends is queued for the client; a close ends it."""

    kind = WS
    max_plaintext = WS_MAX_PLAINTEXT
    buffered = 0

    def __init__(self, net: Net, client: ClientConnection) -> None:
        self.net = net
        self.client = client
        self.closed: tuple[Disconnect, str] | None = None

    def send(self, packet: bytes) -> bool:
        if self.closed is not None:
            return False
        self.net.to_client.append((self.client, packet))
        return True

    def close(self, why: Disconnect, text: str) -> None:
        if self.closed is None:
            self.closed = (why, text)
            self.net.to_client.append((self.client, _CLOSED))


class Net:
    def __init__(self, room: Room, start: float = 0.0) -> None:
        self.room = room
        self.now = start
        self.events: dict[int, list[ClientEvent]] = {}
        self.to_client: list[tuple[ClientConnection, bytes]] = []
        self.drop_up: Callable[[bytes], bool] = lambda packet: False
        self.drop_down: Callable[[bytes], bool] = lambda packet: False
        self.closes: list[tuple[Disconnect, str]] = []  # WebSocket closes, in order
        self.room_closed: list[tuple[CloseReason, str]] = []
        self._addr: dict[int, tuple[str, int]] = {}  # UDP client -> its current address
        self._by_addr: dict[tuple[str, int], ClientConnection] = {}
        self._ws: dict[int, tuple[MemoryLink, Session | None]] = {}
        self._flush_wanted = False
        room.udp_writer = self._udp_out
        room.on_flush = self._want_flush
        room.on_close = lambda reason, text: self.room_closed.append((reason, text))

    # ---- clients --------------------------------------------------------------------------

    def address(self, client: ClientConnection) -> tuple[str, int]:
        """A UDP client's source address (given on first use)."""
        addr = self._addr.get(id(client))
        if addr is None:
            addr = ("192.0.2.1", 40000 + len(self._addr))
            self.move(client, addr)
        return addr

    def move(self, client: ClientConnection, addr: tuple[str, int]) -> None:
        """The client's packets come from `addr` from now on (NAT rebinding)."""
        self._addr[id(client)] = addr
        self._by_addr[addr] = client

    def log(self, client: ClientConnection) -> list[ClientEvent]:
        return self.events.setdefault(id(client), [])

    def take(self, client: ClientConnection) -> list[ClientEvent]:
        events = self.log(client)
        out = list(events)
        events.clear()
        return out

    # ---- moving packets -------------------------------------------------------------------

    def up(self, client: ClientConnection, packets: list[bytes]) -> None:
        """Client -> room, then the room's flush (the end of the event-loop pass)."""
        for packet in packets:
            if self.drop_up(packet):
                continue
            if client.transport == "udp":
                self.room.udp_datagram(packet, self.address(client), self.now)
            else:
                self._ws_up(client, packet)
        self.flush()

    def _ws_up(self, client: ClientConnection, packet: bytes) -> None:
        link, session = self._ws.get(id(client), (None, None))
        if packet[1] == 1:  # HELLO: a new WebSocket
            if link is not None and link.closed is None:
                self._drop_ws(client)
            link = MemoryLink(self, client)
            session = self.room.ws_hello(packet, link, self.now)
            self._ws[id(client)] = (link, session)
            if session is None:
                link.close(Disconnect.VIOLATION, "handshake failed")
        elif link is not None and session is not None and link.closed is None:
            self.room.ws_data(session, packet, self.now)

    def drop_websocket(self, client: ClientConnection) -> None:
        """The client's WebSocket is gone without a close (a cut connection): the room hears of
        it; the client finds out through its own adapter (call `client.connection_lost`)."""
        self._drop_ws(client)
        self.flush()

    def _drop_ws(self, client: ClientConnection) -> None:
        link, session = self._ws.pop(id(client), (None, None))
        if link is not None:
            link.closed = (Disconnect.VIOLATION, "dropped")
        if session is not None:
            self.room.ws_closed(session, self.now)

    def _udp_out(self, packet: bytes, addr: Any) -> None:
        client = self._by_addr.get(addr)
        if client is not None and self._addr.get(id(client)) == addr:
            self.to_client.append((client, packet))

    def _want_flush(self, delay: float) -> None:
        self._flush_wanted = True

    def flush(self) -> None:
        if self._flush_wanted:
            self._flush_wanted = False
            self.room.flush(self.now)

    def down(self) -> None:
        """Delivers everything the room sent, in order."""
        queue, self.to_client = self.to_client, []
        for client, packet in queue:
            if packet is _CLOSED:
                link = self._ws.get(id(client), (None, None))[0]
                if link is not None and link.closed is not None:
                    self.closes.append(link.closed)
                self.log(client).extend(client.connection_lost(self.now))
            elif not self.drop_down(packet):
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
        """Moves the clock, firing each client's and the room's due timers (in steps, as an
        event loop would)."""
        end = self.now + seconds
        while True:
            due = [c.timer() for c in clients]
            due.append(self.room.timer())
            nxt = min((t for t in due if t is not None), default=None)
            if nxt is None or nxt > end:
                break
            self.now = max(self.now, nxt)
            for client in clients:
                when = client.timer()
                if when is not None and when <= self.now:
                    self.log(client).extend(client.handle_timer(self.now))
            if self.room.timer() <= self.now:
                self.room.handle_timer(self.now)
                self.flush()
            self.pump(*clients)
        self.now = end

    def join(self, client: ClientConnection) -> None:
        self.up(client, client.initiate(self.now))
        self.down()
        self.pump(client)


def new_room(transport: str = "udp", seed: int = 1, **overrides: Any) -> tuple[str, Room, Net]:
    """A room with RelayConfig `overrides` (its room key fresh), and the net around it.
    `transport` is only a reminder of what the test's clients use: a room takes both."""
    key = generate_room_key()
    config = replace(RelayConfig(room_key=key), **overrides)
    room = Room(config, Counters(), now=0.0, rand=random.Random(seed).randbytes)
    return key, room, Net(room)
