"""Per-device rate limits: one token bucket per client identity.

A search costs one token; a bucket holds at most ``burst`` tokens and refills at
``per_second``. A device that empties its bucket is told how long to wait instead of
being queued, so one misbehaving (or stolen) device cannot starve the others. The clock
is injected so tests need no sleeping.
"""

from __future__ import annotations

import math
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

# Peers that are not configured are keyed by address; bound the table so a scan of many
# source addresses cannot grow it without end.
MAX_TRACKED_CLIENTS = 10_000


@dataclass(frozen=True)
class RateLimit:
    """Sustained requests per second, and how many may come at once after a pause."""

    per_second: float
    burst: float

    def __post_init__(self) -> None:
        if not (math.isfinite(self.per_second) and self.per_second > 0):
            raise ValueError(f"rate limit per_second must be a positive number, "
                             f"not {self.per_second!r}")
        if not (math.isfinite(self.burst) and self.burst >= 1):
            raise ValueError(f"rate limit burst must be at least 1, not {self.burst!r}")


class TokenBucket:
    """A classic token bucket; not thread-safe on its own (:class:`RateLimiter` locks)."""

    def __init__(self, limit: RateLimit, now: float) -> None:
        self.limit = limit
        self.tokens = float(limit.burst)
        self.updated = now

    def take(self, now: float, cost: float = 1.0) -> float:
        """Take ``cost`` tokens; 0.0 when allowed, else the seconds to wait for them."""
        elapsed = max(0.0, now - self.updated)
        self.tokens = min(self.limit.burst, self.tokens + elapsed * self.limit.per_second)
        self.updated = now
        if self.tokens >= cost:
            self.tokens -= cost
            return 0.0
        return (cost - self.tokens) / self.limit.per_second


class RateLimiter:
    """Token buckets keyed by client identity, created on first use; thread-safe."""

    def __init__(
        self,
        clock: Callable[[], float] = time.monotonic,
        max_clients: int = MAX_TRACKED_CLIENTS,
    ) -> None:
        self._clock = clock
        self._max_clients = max_clients
        self._buckets: OrderedDict[str, TokenBucket] = OrderedDict()
        self._lock = threading.Lock()

    def take(self, key: str, limit: RateLimit) -> float:
        """0.0 when ``key`` may go ahead now, else the seconds it should wait."""
        now = self._clock()
        with self._lock:
            bucket = self._buckets.get(key)
            if bucket is None or bucket.limit != limit:
                bucket = TokenBucket(limit, now)
                self._buckets[key] = bucket
                if len(self._buckets) > self._max_clients:
                    # Forgetting the least recent client only ever refills its bucket.
                    self._buckets.popitem(last=False)
            self._buckets.move_to_end(key)
            return bucket.take(now)

    def __len__(self) -> int:
        with self._lock:
            return len(self._buckets)
