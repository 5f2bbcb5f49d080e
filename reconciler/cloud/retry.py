"""When the client retries a failed API call, and how long it waits first.

Used by both API clients (``cloud.client``, ``cloud.tc3call``), which also share their tuning
(:class:`ClientTuning`, the keywords :class:`TuningArgs`), their attempt loop (:class:`Retrier`),
attempt logging and rule for httpx errors (:func:`request_failure`); the executor relies on the
rule for mutating calls below, so it is spelled out here once:

- Reads (``Describe*``) are retried on every retryable error: API errors of kind ``THROTTLED``
  (2.0 code 4400, 3.0 ``RequestLimitExceeded*``) or ``RETRYABLE`` (2.0 6000, 6200; 3.0
  internal errors), HTTP 5xx, timeouts, connection errors.
- Mutating calls (``UnBindInstanceKey``, ``BindInstanceKey``, ``StopInstances``,
  ``StartInstances``, ``DisassociateInstancesKeyPairs``, ...) are retried only when the call
  certainly had no effect: API errors of kind ``THROTTLED`` (rejected before it was carried out;
  the clients classify a mutating call's internal errors as ``AMBIGUOUS``) and transport errors
  where the request was
  certainly not sent (``TransportError.ambiguous`` false: connect error, connect/pool timeout).
  Any other failure (6000, 6200, HTTP 5xx, read timeout, lost answer) may have taken effect, so
  it goes straight back to the caller, which re-reads the live state and decides.
- Permanent errors (every other API code, HTTP 4xx, unreadable answers) are never retried.

Backoff is capped exponential with full jitter: attempt ``n`` (1-based) that failed is followed by
a sleep drawn uniformly from ``[0, min(cap, base * 2**(n-1))]``; after a throttled attempt, from
``[t, min(cap, t * 2**n)]`` with ``t`` = ``throttled_base_s`` (1 s: the quotas are per second).
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from typing import TypedDict, TypeVar

import httpx

from reconciler.cloud.base import AttemptRecord
from reconciler.cloud.ratelimit import ActionRateLimiter, client_rate_limiter
from reconciler.errors import ApiError, CloudError, ConfigError, TransportError
from reconciler.model import DOCUMENTED_RATE_LIMITS

# The one list of actions that change the cloud, of both APIs.
MUTATING_ACTIONS = frozenset(
    {
        "UnBindInstanceKey",
        "BindInstanceKey",
        "StopInstances",
        "StartInstances",
        "DisassociateInstancesKeyPairs",
        "AssociateInstancesKeyPairs",
    }
)

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How many attempts a call gets and how long to wait between them."""

    max_attempts: int = 5
    base_s: float = 0.2
    cap_s: float = 5.0
    # A refusal for the rate limit: the API's quotas are per second, so a retry sooner than a
    # second later mostly meets the same full bucket (with the client's limiter off, or another
    # process on the same quota).
    throttled_base_s: float = 1.0

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        if self.base_s < 0 or self.cap_s < 0:
            raise ValueError("backoff base and cap must not be negative")

    def delay(self, failed_attempt: int, rng: random.Random, *, throttled: bool = False) -> float:
        """Seconds to sleep after attempt number ``failed_attempt`` (1-based) failed; after a
        throttled one, at least ``throttled_base_s``."""
        if throttled:
            # From the floor up to twice it, doubling: callers throttled together spread out.
            floor = min(self.cap_s, self.throttled_base_s)
            return rng.uniform(floor, max(floor, min(self.cap_s, floor * 2.0**failed_attempt)))
        ceiling = min(self.cap_s, self.base_s * 2.0 ** (failed_attempt - 1))
        return rng.uniform(0.0, ceiling)


class TuningArgs(TypedDict, total=False):
    """The keywords every API client takes for how it sends, retries and reports its calls; the
    defaults are :class:`ClientTuning`'s. ``transport`` replaces the network (the emulator's
    in-process transport); ``rate_limit`` is the client-side limit (``ratelimit.ActionRateLimiter``:
    by default each action's documented figure, one rate for all, a table over the figures, or
    None/0 for none); ``clock`` gives the signed timestamp, the attempt times and the rate
    limiter's time; ``sleep`` is used for backoff and rate limiting; ``rng`` draws backoff
    jitter; ``on_attempt`` receives every attempt's record (from worker threads, never
    concurrently); ``max_workers`` is the size of the client's read pool."""

    transport: httpx.BaseTransport | None
    rate_limit: float | Mapping[str, float] | None
    max_attempts: int
    backoff_base: float
    backoff_cap: float
    timeout: float
    clock: Callable[[], float]
    sleep: Callable[[float], None]
    rng: random.Random | None
    max_workers: int
    on_attempt: Callable[[AttemptRecord], None] | None


@dataclass(frozen=True, slots=True)
class ClientTuning:
    """:class:`TuningArgs` with their defaults, checked: a ConfigError when a number is out of
    range (``max_workers`` is checked by the pool that uses it)."""

    transport: httpx.BaseTransport | None = None
    rate_limit: float | Mapping[str, float] | None = field(default_factory=lambda: DOCUMENTED_RATE_LIMITS)
    max_attempts: int = 5
    backoff_base: float = 0.2
    backoff_cap: float = 5.0
    timeout: float = 10.0
    clock: Callable[[], float] = time.time
    sleep: Callable[[float], None] = time.sleep
    rng: random.Random | None = None
    max_workers: int = 8
    on_attempt: Callable[[AttemptRecord], None] | None = None

    def __post_init__(self) -> None:
        if not self.timeout > 0:
            raise ConfigError("timeout must be positive")
        try:
            self.policy()
        except ValueError as error:
            raise ConfigError(str(error)) from None
        self.limiter()  # a rate out of range is a ConfigError now, not at the first call

    def policy(self) -> RetryPolicy:
        """The retry policy these settings give."""
        return RetryPolicy(self.max_attempts, self.backoff_base, self.backoff_cap)

    def limiter(self) -> ActionRateLimiter:
        """The rate limiter these settings give (one per client: its buckets are the client's)."""
        return client_rate_limiter(self.rate_limit, clock=self.clock, sleep=self.sleep)


def is_mutating(action: str) -> bool:
    """True for actions that change the cloud (not safe to repeat blindly)."""
    return action in MUTATING_ACTIONS


def may_retry(error: CloudError, *, mutating: bool) -> bool:
    """Whether ``error`` may be retried automatically (see the module docstring)."""
    if not error.retryable:
        return False
    if not mutating:
        return True
    if isinstance(error, ApiError):
        return error.throttled
    if isinstance(error, TransportError):
        return not error.ambiguous
    return False


# --------------------------------------------------------------------------- one call's attempts


@dataclass(slots=True)
class Attempt:
    """One HTTP attempt as it goes: what the answer said, filled in by the sender (a fresh one
    every attempt), and the loop's timing, for the caller's :class:`AttemptRecord`."""

    number: int
    started: float
    http_status: int | None = None
    code: int | str | None = None
    message: str = ""
    request_id: str | None = None
    duration_s: float = 0.0
    retry_in_s: float | None = None

    def record(
        self,
        action: str,
        region: str,
        *,
        key_id: str | None,
        key_ids: tuple[str, ...] = (),
        instance_ids: tuple[str, ...],
    ) -> AttemptRecord:
        """This attempt as the audit log's record, for a call of ``action`` on these IDs."""
        # Every field of an attempt is one of its record's; only these two are named otherwise.
        answer = asdict(self)
        return AttemptRecord(
            time=answer.pop("started"),
            attempt=answer.pop("number"),
            action=action,
            region=region,
            key_id=key_id,
            key_ids=key_ids,
            instance_ids=instance_ids,
            **answer,
        )


class Retrier:
    """One client's attempt loop (the one of both APIs), with what it keeps across calls: the
    retry policy, the clock and sleep, one source of backoff jitter and the attempt reporter."""

    def __init__(self, tuning: ClientTuning, logger: logging.Logger) -> None:
        self.policy = tuning.policy()
        self._clock = tuning.clock
        self._sleep = tuning.sleep
        self._rng = tuning.rng if tuning.rng is not None else random.Random()
        self._report = AttemptReporter(logger, self.policy.max_attempts, tuning.on_attempt)

    def run(
        self,
        send: Callable[[Attempt], T],
        *,
        retryable: Callable[[CloudError], bool],
        record: Callable[[Attempt], AttemptRecord],
        wait: Callable[[], object],
    ) -> tuple[T, Attempt]:
        """Call ``send`` until it succeeds, fails permanently, or ``retryable`` says no. ``wait``
        is the rate limit before each attempt; every attempt's ``record`` is reported, then the
        backoff is slept. Returns the result and its (last) attempt."""
        policy = self.policy
        for number in range(1, policy.max_attempts + 1):
            wait()
            attempt = Attempt(number, self._clock())
            t0 = time.perf_counter()
            error: CloudError | None = None
            try:
                result = send(attempt)
            except CloudError as failure:
                error = failure
            attempt.duration_s = time.perf_counter() - t0
            if error is not None and number < policy.max_attempts and retryable(error):
                attempt.retry_in_s = policy.delay(number, self._rng, throttled=error.throttled)
            self._report(record(attempt))
            if error is None:
                return result, attempt
            if attempt.retry_in_s is None:
                raise error
            self._sleep(attempt.retry_in_s)
        raise AssertionError("unreachable: the last attempt either returns or raises")


class AttemptReporter:
    """Logs each attempt at DEBUG on the calling module's logger and hands its record to
    ``on_attempt``, which is called from worker threads but never concurrently."""

    def __init__(
        self, logger: logging.Logger, max_attempts: int, on_attempt: Callable[[AttemptRecord], None] | None
    ) -> None:
        self._logger = logger
        self._max_attempts = max_attempts
        self._on_attempt = on_attempt
        self._lock = threading.Lock()

    def __call__(self, record: AttemptRecord) -> None:
        self._logger.debug(
            "%s attempt %d/%d region=%s -> code=%s http=%s request_id=%s in %.3fs%s",
            record.action,
            record.attempt,
            self._max_attempts,
            record.region,
            record.code,
            record.http_status,
            record.request_id,
            record.duration_s,
            "" if record.retry_in_s is None else f", retrying in {record.retry_in_s:.2f}s",
        )
        if self._on_attempt is not None:
            with self._lock:
                self._on_attempt(record)


# --------------------------------------------------------------------------- transport failures


def json_answer(action: str, response: httpx.Response) -> object:
    """The JSON of an HTTP 200 answer; any other answer is a TransportError (HTTP 5xx retryable),
    which may have been carried out (ambiguous)."""
    if response.status_code != 200:
        raise TransportError(
            action,
            f"HTTP {response.status_code} {response.reason_phrase}".strip(),
            retryable=response.status_code >= 500,
            ambiguous=True,
        )
    try:
        return response.json()
    except ValueError:
        raise TransportError(action, "answer is not JSON", retryable=False, ambiguous=True) from None


def request_failure(action: str, exc: httpx.RequestError, scrub: Callable[[str], str]) -> TransportError:
    """The one rule, for both APIs, of what an httpx request error means: a connect error or a
    connect/pool timeout was certainly not sent (safe to send again, even a mutating call); an
    unsupported protocol is permanent; every other request error (a read timeout, a dropped
    connection, a broken Content-Encoding) may have reached the API: ambiguous."""
    if isinstance(exc, (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)):
        retryable, ambiguous = True, False
    elif isinstance(exc, httpx.UnsupportedProtocol):
        retryable, ambiguous = False, False
    else:
        retryable, ambiguous = True, True
    # str(exc) of httpx errors is short ("[Errno 111] Connection refused", "timed out"); it
    # never carries the URL, but is dropped if it looks signed and scrubbed anyway.
    text = str(exc)
    if "Signature" in text or "SecretId" in text:
        text = ""
    detail = scrub(f"{type(exc).__name__}: {text}" if text else type(exc).__name__)
    if not ambiguous:
        detail += " (request not sent)"
    return TransportError(action, detail, retryable=retryable, ambiguous=ambiguous)
