"""Reconnect and retry delays: exponential backoff with full jitter, a cap, a reset after health.

Full jitter (a delay drawn uniformly from [0, min(cap, initial·multiplier^attempt)], as in the AWS
Architecture Blog's "Exponential Backoff and Jitter") spreads the reconnects of many clients that lost
the same replica at the same instant, so they do not arrive at the survivors in one wave.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

__all__ = ["Backoff"]


@dataclass(frozen=True)
class Backoff:
    """The delay policy; all durations in seconds.

    ``initial``: the bound of the first delay; ``multiplier``: growth per failed attempt; ``maximum``: the
    cap of the bound; ``reset_after``: a connection that stayed up this long counts as healthy and the
    next failure starts again from ``initial``.
    """

    initial: float = 0.1
    multiplier: float = 2.0
    maximum: float = 10.0
    reset_after: float = 30.0

    def bound(self, attempt: int) -> float:
        """The upper bound of the delay before retry number ``attempt`` (0-based)."""
        return float(min(self.maximum, self.initial * self.multiplier ** min(attempt, 64)))

    def delay(self, attempt: int, *, at_least: float = 0.0, rng: random.Random | None = None) -> float:
        """A full-jitter delay for ``attempt``; never below ``at_least`` (a server's RetryInfo)."""
        draw = (rng or random).uniform(0.0, self.bound(attempt))
        return max(draw, at_least)
