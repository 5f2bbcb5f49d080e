"""Rate limiting: a thread-safe token bucket per API action (the clients' and the emulator's).

Used by both API clients (``cloud.client``, ``cloud.api3`` through ``cloud.tc3call``) before
every HTTP attempt, so the client stays under the API's quota instead of collecting 4400 (2.0)
or RequestLimitExceeded (3.0) answers: by default the documented figure of each action
(``model.DOCUMENTED_RATE_LIMITS``: DescribeInstances 40 a second, the key-pair and stop/start
actions 10), or one rate for every action (``--rate-limit``). The clock and sleep are injected
so tests never wait.

A caller that finds the bucket empty reserves the next token (the count goes negative) and sleeps
outside the lock for exactly its share, so concurrent callers queue fairly without spinning.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping

from reconciler.errors import ConfigError
from reconciler.model import DEFAULT_RATE_LIMIT, DOCUMENTED_RATE_LIMITS


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

    def _refill(self) -> None:
        """Add the tokens earned since the last look (call with the lock held)."""
        now = self._clock()
        # max(0, ...): a wall clock that steps back must not drain the bucket.
        elapsed = max(0.0, now - self._last)
        self._last = now
        self._tokens = min(self.burst, self._tokens + elapsed * self.rate)

    def acquire(self) -> float:
        """Take one token, sleeping until it is available. Returns the time slept (seconds)."""
        with self._lock:
            self._refill()
            self._tokens -= 1.0
            wait = -self._tokens / self.rate if self._tokens < 0 else 0.0
        if wait > 0:
            self._sleep(wait)
        return wait

    def try_take(self) -> bool:
        """Take one token if there is one now, never waiting (a server refusing the request
        instead: the emulator's side of the limit)."""
        with self._lock:
            self._refill()
            if self._tokens >= 1.0:
                self._tokens -= 1.0
                return True
            return False


class ActionRateLimiter:
    """One :class:`TokenBucket` per action name (burst: half its rate, at least 1).

    ``rate`` is one rate for every action, or a table by action over the documented figures
    (``model.DOCUMENTED_RATE_LIMITS``; an action in neither gets ``DEFAULT_RATE_LIMIT``); ``None``
    or 0 disables limiting. Both clients take their ``rate_limit`` keyword in this form."""

    def __init__(
        self,
        rate: float | Mapping[str, float] | None,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        table: dict[str, float] | None
        if isinstance(rate, Mapping):
            if any(not value > 0 for value in rate.values()):
                raise ValueError("every rate must be a positive number a second")
            table, single = {**DOCUMENTED_RATE_LIMITS, **rate}, None
        else:
            if rate is not None and not rate >= 0:
                raise ValueError("rate must not be negative")
            table, single = None, rate or None
        self._table = table
        self.rate = single  # the one rate of every action, or None (a table, or no limit)
        # Half the rate as burst: the server's bucket (burst = rate, started by our first
        # request) then always holds half a second of tokens in reserve. With a full burst it
        # would hold none, and any request that reaches it sooner after the previous one than
        # the first did (network and scheduling jitter) would be answered 4400 and resent.
        self.burst = max(1.0, self.rate / 2) if self.rate else 1.0
        self._clock = clock
        self._sleep = sleep
        self._lock = threading.Lock()
        self._buckets: dict[str, TokenBucket] = {}

    def rate_of(self, action: str) -> float | None:
        """Requests a second allowed for ``action`` (None: no limit)."""
        if self._table is not None:
            return self._table.get(action, DEFAULT_RATE_LIMIT)
        return self.rate

    @property
    def enabled(self) -> bool:
        return self.rate is not None or self._table is not None

    def acquire(self, action: str) -> float:
        """Wait for a token for ``action``; returns the time slept (0 when disabled)."""
        if not self.enabled:
            return 0.0
        with self._lock:
            bucket = self._buckets.get(action)
            if bucket is None:
                rate = self.rate_of(action)
                assert rate is not None  # enabled: one rate, or a table with a default
                bucket = TokenBucket(rate, max(1.0, rate / 2), clock=self._clock, sleep=self._sleep)
                self._buckets[action] = bucket
        return bucket.acquire()


def client_rate_limiter(
    rate: float | Mapping[str, float] | None,
    *,
    clock: Callable[[], float],
    sleep: Callable[[float], None],
) -> ActionRateLimiter:
    """A client's limiter from its ``rate_limit`` keyword; a ConfigError when a rate is out of range."""
    try:
        return ActionRateLimiter(rate, clock=clock, sleep=sleep)
    except ValueError:
        raise ConfigError(
            "rate_limit: a rate limit is a number of requests a second, positive in a table by "
            "action, 0 or none for no limit"
        ) from None
