"""Client-side rate limiting: a thread-safe token bucket per API action.

Used by :class:`reconciler.cloud.client.CvmClient` before every HTTP attempt, so the client stays
under the API's quota (API 3.0 documents 10 requests/s for the key-pair actions) instead of
collecting 4400 answers. The clock and sleep are injected so tests never wait.

A caller that finds the bucket empty reserves the next token (the count goes negative) and sleeps
outside the lock for exactly its share, so concurrent callers queue fairly without spinning.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable


class TokenBucket:
    """``rate`` tokens a second, at most ``burst`` saved up. Starts full."""

    def __init__(
        self,
        rate: float,
        burst: float | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if rate <= 0:
            raise ValueError("rate must be positive")
        self.rate = float(rate)
        self.burst = float(burst) if burst is not None else max(1.0, self.rate)
        if self.burst < 1:
            raise ValueError("burst must be at least 1")
        self._clock = clock
        self._sleep = sleep
        self._lock = threading.Lock()
        self._tokens = self.burst
        self._last = clock()

    def acquire(self) -> float:
        """Take one token, sleeping until it is available. Returns the time slept (seconds)."""
        with self._lock:
            now = self._clock()
            # max(0, ...): a wall clock that steps back must not drain the bucket.
            elapsed = max(0.0, now - self._last)
            self._last = now
            self._tokens = min(self.burst, self._tokens + elapsed * self.rate)
            self._tokens -= 1.0
            wait = -self._tokens / self.rate if self._tokens < 0 else 0.0
        if wait > 0:
            self._sleep(wait)
        return wait


class ActionRateLimiter:
    """One :class:`TokenBucket` per action name (burst: half the rate, at least 1); ``rate`` of
    ``None`` or 0 disables limiting."""

    def __init__(
        self,
        rate: float | None,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if rate is not None and rate < 0:
            raise ValueError("rate must not be negative")
        self.rate = rate or None
        # Half the rate as burst: the server's bucket (burst = rate, started by our first
        # request) then always holds half a second of tokens in reserve. With a full burst it
        # would hold none, and any request that reaches it sooner after the previous one than
        # the first did (network and scheduling jitter) would be answered 4400 and resent.
        self.burst = max(1.0, self.rate / 2) if self.rate else 1.0
        self._clock = clock
        self._sleep = sleep
        self._lock = threading.Lock()
        self._buckets: dict[str, TokenBucket] = {}

    @property
    def enabled(self) -> bool:
        return self.rate is not None

    def acquire(self, action: str) -> float:
        """Wait for a token for ``action``; returns the time slept (0 when disabled)."""
        if self.rate is None:
            return 0.0
        with self._lock:
            bucket = self._buckets.get(action)
            if bucket is None:
                bucket = TokenBucket(self.rate, self.burst, clock=self._clock, sleep=self._sleep)
                self._buckets[action] = bucket
        return bucket.acquire()
