"""Token buckets for per-connection message and byte rates."""

from __future__ import annotations


class TokenBucket:
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
