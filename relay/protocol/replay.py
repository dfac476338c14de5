"""Anti-replay state for received DATA counters (docs/protocol.md section 4.4)."""

from __future__ import annotations

from relay.protocol.constants import REPLAY_WINDOW

_MASK = (1 << REPLAY_WINDOW) - 1


class ReplayWindow:
    """Sliding window over the last REPLAY_WINDOW counters (UDP), or strictly increasing (WS).

    Counter 0 counts as already seen: DATA counters start at 1. `check` is called before the
    tag is verified and `update` only after, so forged packets never move the window.
    """

    __slots__ = ("bits", "strict", "top")

    def __init__(self, strict: bool = False) -> None:
        self.top = 0
        self.bits = 1
        self.strict = strict

    def check(self, counter: int) -> bool:
        if counter > self.top:
            return True
        if self.strict:
            return False
        offset = self.top - counter
        return offset < REPLAY_WINDOW and not (self.bits >> offset) & 1

    def update(self, counter: int) -> None:
        if counter > self.top:
            shift = counter - self.top
            self.bits = ((self.bits << shift) | 1) & _MASK if shift < REPLAY_WINDOW else 1
            self.top = counter
        else:
            self.bits |= 1 << (self.top - counter)
