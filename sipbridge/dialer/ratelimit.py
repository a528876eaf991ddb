"""Calls-per-second limit: a token bucket on an injected monotonic clock.

Carriers enforce a CPS limit per trunk and answer 503 (or block the account) above it, so the dialer takes a
token before every INVITE. ``burst`` tokens may go at once after a quiet spell; over any longer span the
rate is ``rate`` per second. The clock is a callable returning seconds (``time.monotonic`` in production, a
fake in tests), so nothing here sleeps or reads real time: the caller sleeps ``wait_time()`` itself.
"""

from __future__ import annotations

import time
from collections.abc import Callable

__all__ = ["TokenBucket"]


class TokenBucket:
    def __init__(self, rate: float, burst: float = 1.0, clock: Callable[[], float] = time.monotonic) -> None:
        if not rate > 0:
            raise ValueError(f"rate must be > 0 calls per second, got {rate}")
        if not burst >= 1:
            raise ValueError(f"burst must be >= 1 (a whole call), got {burst}")
        self.rate = float(rate)
        self.burst = float(burst)
        self._clock = clock
        self._tokens = self.burst  # start full: the first call need not wait
        self._last = clock()

    def _refill(self) -> None:
        now = self._clock()
        if now < self._last:
            raise RuntimeError(f"clock went backwards ({self._last} -> {now}); use a monotonic clock")
        self._tokens = min(self.burst, self._tokens + (now - self._last) * self.rate)
        self._last = now

    @property
    def tokens(self) -> float:
        self._refill()
        return self._tokens

    def try_acquire(self, n: float = 1.0) -> bool:
        """Take ``n`` tokens if they are there now; False (taking nothing) otherwise."""
        if n <= 0 or n > self.burst:
            raise ValueError(f"n must be in (0, burst={self.burst}], got {n}")
        self._refill()
        if self._tokens >= n:
            self._tokens -= n
            return True
        return False

    def wait_time(self, n: float = 1.0) -> float:
        """Seconds until ``n`` tokens will be there (0.0 if they are now)."""
        if n <= 0 or n > self.burst:
            raise ValueError(f"n must be in (0, burst={self.burst}], got {n}")
        self._refill()
        return max(0.0, (n - self._tokens) / self.rate)
