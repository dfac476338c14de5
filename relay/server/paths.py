"""A UDP member's path: its address, and whether the relay may send there freely
(docs/protocol.md 7.3).

An address is validated once the peer proves it receives there: the first authenticated DATA
of a session (its keys needed the ACCEPT sent to that address), or a PATH_PONG echoing the
challenge the relay sent to a new address after NAT rebinding. Until then the relay sends at
most as many bytes as it received from the address (the anti-amplification budget), so a
forged source address cannot turn the relay into an amplifier.

The path is the UDP session's link: the room writes through it, it writes through the
datagram writer (`sendto(packet, addr)`) the UDP adapter handed the room. No socket here.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from relay.protocol.constants import UDP_MAX_PLAINTEXT
from relay.server.transport import UDP, Disconnect

SendTo = Callable[[bytes, Any], None]
"""The UDP adapter's datagram writer: sendto(packet, address)."""


class UdpPath:
    __slots__ = ("addr", "budget", "challenge", "ping_due", "sendto", "validated")
    kind = UDP
    max_plaintext = UDP_MAX_PLAINTEXT
    buffered = 0

    def __init__(self, sendto: SendTo, addr: Any, budget: int) -> None:
        self.sendto = sendto
        self.addr = addr
        self.budget = budget  # bytes that may still go to an unvalidated address
        self.validated = False
        self.challenge = 0  # the PATH_CHALLENGE outstanding after a rebind (0: none)
        self.ping_due = False  # the challenge is to be sent (again) at the next flush

    def send(self, packet: bytes) -> bool:
        if not self.validated:
            if len(packet) > self.budget:
                return False
            self.budget -= len(packet)
        self.sendto(packet, self.addr)
        return True

    def close(self, why: Disconnect, text: str) -> None:
        """UDP has no connection to close; the room forgets the session."""

    def credit(self, received: int) -> None:
        """More bytes came from the (unvalidated) address: as many may go back."""
        self.budget += received

    def rebind(self, addr: Any, received: int, challenge: int) -> None:
        """Authenticated DATA came from a new address (NAT rebinding): the session moves there,
        unvalidated, with the budget of what came from it, and `challenge` outstanding."""
        self.addr = addr
        self.validated = False
        self.budget = received
        self.challenge = challenge
        self.ping_due = True

    def confirm(self, challenge: int) -> bool:
        """A PATH_PONG: validates the address when it echoes the outstanding challenge."""
        if self.challenge and challenge == self.challenge:
            self.challenge = 0
            self.ping_due = False
            self.validated = True
            return True
        return False
