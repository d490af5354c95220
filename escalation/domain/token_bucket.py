"""Token buckets by key, in memory, bounded in size: the write rate limits of SPEC §3 ("Limits").

Pure: the caller passes the clock (monotonic seconds), so tests move time by hand. A bucket holds at
most ``burst`` tokens and gains ``per_second`` tokens each second; a call takes one. A bucket that has
refilled completely is the same as no bucket, so it is forgotten: memory holds only the keys that
called within the last ``burst / per_second`` seconds, and never more than ``max_keys`` of them (the
least recently used is dropped first, which at worst hands that key a fresh burst).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable
from dataclasses import dataclass

# Enough for every agent of a large marketplace at once; a bucket costs about 200 bytes.
DEFAULT_MAX_KEYS = 100_000


@dataclass(frozen=True)
class Rate:
    """A sustained rate (``per_second`` > 0 tokens per second) and a ``burst`` (≥ 1 tokens)."""

    per_second: float
    burst: int

    def __post_init__(self) -> None:
        if not self.per_second > 0 or self.burst < 1:
            raise ValueError(f"a rate needs per_second > 0 and burst >= 1, not {self.per_second}, {self.burst}")

    @property
    def refill_seconds(self) -> float:
        """Seconds an empty bucket takes to fill up again."""
        return self.burst / self.per_second

    def __str__(self) -> str:
        return f"{self.per_second:g}/s,{self.burst}"


class _Bucket:
    __slots__ = ("tokens", "updated")

    def __init__(self, tokens: float, updated: float) -> None:
        self.tokens = tokens
        self.updated = updated


class TokenBuckets:
    """One token bucket per key, all with the same ``rate``; at most ``max_keys`` held at a time."""

    def __init__(self, rate: Rate, *, max_keys: int = DEFAULT_MAX_KEYS) -> None:
        if max_keys < 1:
            raise ValueError("max_keys must be at least 1")
        self.rate = rate
        self._max_keys = max_keys
        # Least recently used first.
        self._buckets: OrderedDict[Hashable, _Bucket] = OrderedDict()

    def __len__(self) -> int:
        return len(self._buckets)

    def wait(self, key: Hashable, now: float) -> float:
        """Seconds (≥ 0) until ``key`` has a token at monotonic time ``now``; 0 when it has one now."""
        bucket = self._buckets.get(key)
        if bucket is None:
            return 0.0
        tokens = self._level(bucket, now)
        return 0.0 if tokens >= 1 else (1 - tokens) / self.rate.per_second

    def take(self, key: Hashable, now: float) -> float:
        """Takes one token of ``key`` and returns 0, or takes none and returns the seconds until one.

        ``now`` is monotonic seconds and must not go backwards for a key.
        """
        self._evict(now, room_for_one=key not in self._buckets)
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = self._buckets[key] = _Bucket(float(self.rate.burst), now)
        else:
            self._buckets.move_to_end(key)
        bucket.tokens = self._level(bucket, now)
        bucket.updated = now
        if bucket.tokens < 1:
            return (1 - bucket.tokens) / self.rate.per_second
        bucket.tokens -= 1
        return 0.0

    def _level(self, bucket: _Bucket, now: float) -> float:
        return min(float(self.rate.burst), bucket.tokens + (now - bucket.updated) * self.rate.per_second)

    def _evict(self, now: float, *, room_for_one: bool) -> None:
        """Drops full buckets from the least recently used end, and the oldest while a new key lacks room."""
        buckets = self._buckets
        limit = self._max_keys - 1 if room_for_one else self._max_keys
        while buckets:
            key, oldest = next(iter(buckets.items()))
            if len(buckets) <= limit and self._level(oldest, now) < self.rate.burst:
                return
            del buckets[key]
