"""Per-client rate limits: one token bucket per key, in this process's memory.

Each process keeps its own buckets, so N processes behind a load balancer
admit up to N times the configured rate in total.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

# Buckets kept before idle ones (full again) are dropped.
_PRUNE_THRESHOLD = 10_000


@dataclass
class _Bucket:
    tokens: float
    updated_at: float  # clock reading of the last refill


class TokenBuckets:
    """Token buckets that refill at ``rate_per_s`` up to ``burst`` tokens each."""

    def __init__(
        self,
        rate_per_s: float,
        burst: int,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if rate_per_s <= 0 or burst < 1:
            raise ValueError("rate_per_s must be positive and burst at least 1")
        self._rate_per_s = rate_per_s
        self._burst = burst
        self._clock = clock
        self._buckets: dict[str, _Bucket] = {}

    def take(self, key: str) -> float:
        """Take one token from ``key``'s bucket.

        Returns 0 when a token was taken, otherwise the seconds until one
        will be available; nothing is taken then.
        """
        now = self._clock()
        bucket = self._buckets.get(key)
        if bucket is None:
            if len(self._buckets) >= _PRUNE_THRESHOLD:
                self._prune(now)
            bucket = self._buckets[key] = _Bucket(tokens=self._burst, updated_at=now)
        elapsed_s = max(0.0, now - bucket.updated_at)
        bucket.tokens = min(self._burst, bucket.tokens + elapsed_s * self._rate_per_s)
        bucket.updated_at = now
        if bucket.tokens >= 1:
            bucket.tokens -= 1
            return 0.0
        return (1 - bucket.tokens) / self._rate_per_s

    def _prune(self, now: float) -> None:
        full_after_s = self._burst / self._rate_per_s
        idle = [
            key
            for key, bucket in self._buckets.items()
            if now - bucket.updated_at >= full_after_s
        ]
        for key in idle:
            del self._buckets[key]


def retry_after_header(wait_s: float) -> str:
    """Return a Retry-After value: whole seconds, rounded up, at least 1."""
    return str(max(1, math.ceil(wait_s)))
