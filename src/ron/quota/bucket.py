"""In-process token buckets, and a bounded table of them keyed by (tenant, app).

A token bucket admits bursts up to ``burst`` requests and a sustained ``rate`` per second
after that; when it is empty it can say exactly when the next request would pass, which
is what a 429's ``retry_after_ms`` needs. Time is passed in by the caller (a monotonic
clock), never read here, so tests drive the clock instead of sleeping.

The table is bounded because the keys come from the network: a client inventing a new
tenant id per request must not grow memory without limit. The least recently used bucket
is forgotten first; an idle bucket has refilled towards its burst, so forgetting it
costs at most a burst the tenant would soon have had anyway.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)

DEFAULT_CAPACITY = 65_536


class TokenBucket:
    """``burst`` tokens at most, ``rate`` tokens added per second; a request costs tokens."""

    __slots__ = ("burst", "rate", "stamp", "tokens")

    def __init__(self, rate: float, burst: float, now: float) -> None:
        _check(rate, burst)
        self.rate = rate
        self.burst = burst
        self.tokens = burst
        self.stamp = now

    def refill(self, now: float) -> None:
        """Add what ``rate`` earned since the last refill, capped at ``burst``.

        A clock that steps backwards adds nothing (and does not rewind ``stamp``), so a
        bucket can never mint tokens from a non-monotonic clock.
        """
        elapsed = now - self.stamp
        if elapsed > 0:
            self.tokens = min(self.burst, self.tokens + elapsed * self.rate)
            self.stamp = now

    def try_take(self, now: float, cost: float = 1.0) -> bool:
        """Take ``cost`` tokens if the bucket holds them; False (and no change) if not."""
        self.refill(now)
        if self.tokens >= cost:
            self.tokens -= cost
            return True
        return False

    def retry_after(self, cost: float = 1.0) -> float:
        """Seconds until ``cost`` tokens will be there (0 when they already are).

        Infinite when ``cost`` exceeds ``burst``: such a request can never pass.
        """
        if cost > self.burst:
            return math.inf
        missing = cost - self.tokens
        return missing / self.rate if missing > 0 else 0.0

    def reconfigure(self, rate: float, burst: float, now: float) -> None:
        """Apply new limits (a config reload) without forgetting what was spent.

        Tokens earned so far are credited at the old rate, then clamped to the new burst.
        """
        _check(rate, burst)
        self.refill(now)
        self.rate = rate
        self.burst = burst
        self.tokens = min(self.tokens, burst)


def _check(rate: float, burst: float) -> None:
    if not rate > 0:
        raise ValueError("rate must be > 0")
    if not burst >= 1:
        raise ValueError("burst must be >= 1")


class BucketTable(Generic[K]):
    """Token buckets by key, at most ``capacity`` of them (least recently used goes first).

    The limits are given on every call rather than stored per key, so a config reload
    takes effect on the next request of every key without a sweep over the table.
    """

    __slots__ = ("_buckets", "capacity")

    def __init__(self, capacity: int = DEFAULT_CAPACITY) -> None:
        if capacity < 1:
            raise ValueError("capacity must be >= 1")
        self.capacity = capacity
        self._buckets: OrderedDict[K, TokenBucket] = OrderedDict()

    def __len__(self) -> int:
        return len(self._buckets)

    def __contains__(self, key: object) -> bool:
        return key in self._buckets

    def take(
        self, key: K, *, rate: float, burst: float, now: float, cost: float = 1.0
    ) -> float | None:
        """Charge ``key``'s bucket; ``None`` when admitted, else seconds to wait."""
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = TokenBucket(rate, burst, now)
            self._buckets[key] = bucket
            if len(self._buckets) > self.capacity:
                self._buckets.popitem(last=False)
        else:
            self._buckets.move_to_end(key)
            if bucket.rate != rate or bucket.burst != burst:
                bucket.reconfigure(rate, burst, now)
        # TokenBucket.try_take, inline: this runs for every admitted request.
        elapsed = now - bucket.stamp
        if elapsed > 0:
            bucket.tokens = min(bucket.burst, bucket.tokens + elapsed * bucket.rate)
            bucket.stamp = now
        if bucket.tokens >= cost:
            bucket.tokens -= cost
            return None
        return bucket.retry_after(cost)

    def resize(self, capacity: int) -> None:
        """Change the bound, forgetting the least recently used buckets if it shrank."""
        if capacity < 1:
            raise ValueError("capacity must be >= 1")
        self.capacity = capacity
        while len(self._buckets) > capacity:
            self._buckets.popitem(last=False)
