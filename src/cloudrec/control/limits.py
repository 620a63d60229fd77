"""Request-rate limiting: one token bucket per (caller, action).

The caller is the configured app a request names, else the credential that signed it: an app id
that is not configured (anyone can write one) never gets a bucket of its own."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Hashable

from cloudrec.control.apps import AppInfo


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


def caller(app: AppInfo | None, credential: str, default_rate: float | None = None) -> tuple[str, float | None]:
    """(bucket key, rate) of a request: its configured app with the app's own rate, else its credential."""
    if app is not None:
        return f"app:{app.id}", app.rate_per_second
    return f"key:{credential}", default_rate
