"""Token buckets for per-connection message and byte rates.

`TokenBucket` is the C one of relay/server/_ratelimit.c where that extension was built (its
layout is relay/server/_ratelimit.h, so the relay's UDP path in C, relay/server/_lane.c, spends a
member's tokens without calling Python); elsewhere, or with RELAY_PURE_PYTHON=1 in the
environment (relay/settings.py), the Python one here (`PyTokenBucket`). Both give the same
numbers bit for bit; `NATIVE` says which is in use.
"""

from __future__ import annotations

from relay.settings import native


class PyTokenBucket:
    """`rate` tokens per second up to `burst`; rate 0 means unlimited."""

    __slots__ = ("burst", "rate", "stamp", "tokens")

    def __init__(self, rate: float, burst: float, now: float) -> None:
        self.rate = rate
        self.burst = max(burst, rate)
        self.tokens = self.burst
        self.stamp = now

    def available(self, now: float) -> float:
        """Tokens there now, none taken (unlimited: infinite)."""
        if not self.rate:
            return float("inf")
        return min(self.burst, self.tokens + (now - self.stamp) * self.rate)

    def take(self, amount: float, now: float) -> bool:
        if not self.rate:
            return True
        tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if tokens < amount:
            self.tokens = tokens
            return False
        self.tokens = tokens - amount
        return True


def _native() -> type | None:
    """The C TokenBucket, if built and not refused by RELAY_PURE_PYTHON."""
    built = native("relay.server._ratelimit")
    return built.TokenBucket if built is not None else None


_built = _native()
NATIVE = _built is not None
"""Whether TokenBucket is relay/server/_ratelimit.c's."""
TokenBucket: type[PyTokenBucket] = _built if _built is not None else PyTokenBucket
