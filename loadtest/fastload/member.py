"""One member's state for a step: the sender's schedule and packets, the receiver's counters.

Plain attributes in __slots__ (the timed window reads and bumps them per packet), and lists of
ints rather than tuples (see `reset`).
"""

from __future__ import annotations

from loadtest.rawclient import RawSession
from loadtest.streams import RecipientStats


class LoadMember:
    """One member's send schedule and receive counters for the current step."""

    __slots__ = (
        "accepted",
        "added",
        "added_counts",
        "arrivals",
        "delivered",
        "dgrams_in",
        "ends",
        "group",
        "held",
        "held_msgs",
        "held_now",
        "held_rx",
        "in_window",
        "index",
        "latencies",
        "latency_counts",
        "out",
        "packets",
        "partial_sends",
        "phase_ns",
        "sent",
        "sent_dgrams",
        "session",
        "slow",
        "stamped",
        "targets",
        "tx_ns",
        "undecryptable",
    )

    def __init__(self, session: RawSession, index: int) -> None:
        self.session = session
        self.index = index
        self.group: list[LoadMember] = []
        self.targets: list[int] | None = None
        self.packets: list[bytes] = []
        self.phase_ns = 0
        self.out = b""
        # full mode: CLOCK_REALTIME ns just before the send() that handed packet i to the kernel
        self.tx_ns: list[int] = []
        self.ends: list[int] = []  # WS: end of packet i in the step's byte stream
        self.reset()

    def reset(self) -> None:
        self.sent = 0
        self.sent_dgrams = 0
        self.delivered = 0
        self.dgrams_in = 0
        self.slow = 0
        self.undecryptable = 0
        # latency ns and how many messages had it: a run of messages from one sender packet in one
        # received packet shares it, so full mode records runs, not messages. Parallel lists of
        # ints, not tuples: ints are not tracked by the cyclic GC, whose passes would otherwise
        # grow with these lists and stall the timed window.
        self.latencies: list[int] = []
        self.latency_counts: list[int] = []
        # full mode, the same way: kernel receive stamp - actual send time (ns) and message counts;
        # -1 for messages with no receive stamp or no send time to pair them with
        self.added: list[int] = []
        self.added_counts: list[int] = []
        self.accepted = 0  # WS: bytes of the step's stream the kernel has taken
        self.stamped = 0  # WS: packets whose send time is recorded
        self.partial_sends = 0
        self.arrivals = RecipientStats()
        # full mode: packets read in the timed window, decrypted after it (with their receive
        # clock and kernel stamp), so the one load core spends the window sending on time
        self.held: list[bytes] = []
        self.held_now: list[int] = []
        self.held_rx: list[int] = []
        self.held_msgs = 0  # messages in `held`, from packet lengths
        self.in_window = -1  # messages received by the end of the sending window (-1: not yet)
