"""Request-rate limiting: one token bucket per (app, action)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Hashable


class RateLimiter:
    def __init__(self, rate_per_second: float, *, burst: float | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        self.rate = rate_per_second
        self.burst = burst if burst is not None else max(1.0, rate_per_second)
        self._clock = clock
        self._buckets: dict[Hashable, tuple[float, float]] = {}  # key → (tokens, last refill)
        self._lock = threading.Lock()

    def allow(self, key: Hashable, rate: float | None = None) -> bool:
        """Take a token from `key`'s bucket; `rate` overrides the default (per-app settings)."""
        rate = rate or self.rate
        burst = max(1.0, rate) if rate != self.rate else self.burst
        now = self._clock()
        with self._lock:
            tokens, last = self._buckets.get(key, (burst, now))
            tokens = min(burst, tokens + (now - last) * rate)
            if tokens < 1.0:
                self._buckets[key] = (tokens, now)
                return False
            self._buckets[key] = (tokens - 1.0, now)
            return True
