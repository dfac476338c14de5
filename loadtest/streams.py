"""Per-recipient delivery accounting: what each bot received from each sender.

A receiver keeps, per sender, the highest sequence number seen and a bitmap of the recent
window, so it can tell duplicates and reordering apart. Loss is computed by the harness from
what senders addressed to each recipient (`addressed`) minus what arrived, sender by sender,
which keeps the invariant `sent + unaddressed = delivered + lost` exact per recipient.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

WINDOW = 1024  # sequence numbers further back than this are counted as late, not checked for duplicates
_MASK = (1 << WINDOW) - 1


class SenderStream:
    """Arrivals from one sender at one recipient."""

    __slots__ = ("delivered", "duplicates", "reordered", "seen", "top")

    def __init__(self) -> None:
        self.top = 0
        self.seen = 0  # bit i = seq (top - i) arrived
        self.delivered = 0
        self.duplicates = 0
        self.reordered = 0

    def arrive(self, seq: int) -> None:
        top = self.top
        if seq > top:
            shift = seq - top
            self.seen = ((self.seen << shift) | 1) & _MASK if shift < WINDOW else 1
            self.top = seq
            self.delivered += 1
            return
        offset = top - seq
        if offset >= WINDOW:
            self.reordered += 1  # too old to tell; counted as delivered late
            self.delivered += 1
            return
        bit = 1 << offset
        if self.seen & bit:
            self.duplicates += 1
            return
        self.seen |= bit
        self.reordered += 1
        self.delivered += 1


@dataclass
class RecipientStats:
    """Everything one bot received, keyed by sender id."""

    streams: dict[int, SenderStream] = field(default_factory=dict)

    def arrive(self, sender: int, seq: int) -> None:
        stream = self.streams.get(sender)
        if stream is None:
            stream = self.streams[sender] = SenderStream()
        stream.arrive(seq)

    def to_json(self) -> dict[str, Any]:
        return {
            str(sender): {"delivered": s.delivered, "duplicates": s.duplicates, "reordered": s.reordered}
            for sender, s in self.streams.items()
        }


def account(
    addressed: dict[str, dict[str, int]], received: dict[str, dict[str, dict[str, int]]]
) -> dict[str, Any]:
    """Joins senders' `addressed[sender][recipient]` with recipients' `received[recipient][sender]`.

    Returns per-recipient and total sent/delivered/lost/unaddressed/duplicates/reordered, with
    sent + unaddressed = delivered + lost. A message a sender addressed to a member that had
    already left still counts as sent (and lost), as a player sees it. "Unaddressed" are
    deliveries beyond what a sender addressed to that recipient: with churn, a broadcast reaches
    a member whose JOIN the sender had not yet seen, so the sender could not count it. Counted
    pair by pair (sender, recipient), so that such a delivery never hides a loss elsewhere.
    """
    per_recipient: dict[str, dict[str, int]] = {}
    recipients = set(received)
    for targets in addressed.values():
        recipients.update(targets)
    for recipient in sorted(recipients):
        got = received.get(recipient, {})
        row = {"sent": 0, "delivered": 0, "lost": 0, "unaddressed": 0}
        for sender in set(got) | {s for s, targets in addressed.items() if recipient in targets}:
            sent = addressed.get(sender, {}).get(recipient, 0)
            delivered = got.get(sender, {}).get("delivered", 0)
            row["sent"] += sent
            row["delivered"] += delivered
            row["lost"] += max(0, sent - delivered)
            row["unaddressed"] += max(0, delivered - sent)
        row["duplicates"] = sum(s["duplicates"] for s in got.values())
        row["reordered"] = sum(s["reordered"] for s in got.values())
        per_recipient[recipient] = row
    keys = ("sent", "delivered", "lost", "unaddressed", "duplicates", "reordered")
    totals: dict[str, Any] = {k: sum(r[k] for r in per_recipient.values()) for k in keys}
    totals["loss_ratio"] = totals["lost"] / totals["sent"] if totals["sent"] else 0.0
    return {"per_recipient": per_recipient, "totals": totals}
