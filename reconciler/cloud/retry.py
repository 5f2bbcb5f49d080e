"""When the client retries a failed API call, and how long it waits first.

Used by both API clients (``cloud.client``, ``cloud.tc3call``), which also share its attempt loop
(:func:`send_with_retries`), attempt logging and rule for httpx errors (:func:`request_failure`);
the executor relies on the rule for mutating
calls below, so it is spelled out here once:

- Reads (``Describe*``) are retried on every retryable error: API errors of kind ``RETRYABLE``
  (2.0 codes 4400, 6000, 6200), HTTP 5xx, timeouts, connection errors.
- Mutating calls (``UnBindInstanceKey``, ``BindInstanceKey``, ``StopInstances``,
  ``StartInstances``, ``DisassociateInstancesKeyPairs``, ...) are retried only when the call
  certainly had no effect: API errors of kind ``RETRYABLE`` (the client classifies a mutating
  call's 6000/6200 as ``AMBIGUOUS``, so this is 2.0's 4400: throttled, rejected before it was
  carried out) and transport errors where the request was
  certainly not sent (``TransportError.ambiguous`` false: connect error, connect/pool timeout).
  Any other failure (6000, 6200, HTTP 5xx, read timeout, lost answer) may have taken effect, so
  it goes straight back to the caller, which re-reads the live state and decides.
- Permanent errors (every other API code, HTTP 4xx, unreadable answers) are never retried.

Backoff is capped exponential with full jitter: attempt ``n`` (1-based) that failed is followed by
a sleep drawn uniformly from ``[0, min(cap, base * 2**(n-1))]``.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import httpx

from reconciler.cloud.base import AttemptRecord
from reconciler.errors import ApiError, ApiErrorKind, CloudError, ConfigError, TransportError

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

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        if self.base_s < 0 or self.cap_s < 0:
            raise ValueError("backoff base and cap must not be negative")

    @classmethod
    def checked(cls, max_attempts: int, base_s: float, cap_s: float, *, timeout: float) -> RetryPolicy:
        """A client's policy from its arguments, checked with its ``timeout``: a ConfigError."""
        if not timeout > 0:
            raise ConfigError("timeout must be positive")
        try:
            return cls(max_attempts, base_s, cap_s)
        except ValueError as error:
            raise ConfigError(str(error)) from None

    def delay(self, failed_attempt: int, rng: random.Random) -> float:
        """Seconds to sleep after attempt number ``failed_attempt`` (1-based) failed."""
        ceiling = min(self.cap_s, self.base_s * 2.0 ** (failed_attempt - 1))
        return rng.uniform(0.0, ceiling)


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
        return error.kind is ApiErrorKind.RETRYABLE
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
        return AttemptRecord(
            time=self.started,
            action=action,
            region=region,
            key_id=key_id,
            key_ids=key_ids,
            instance_ids=instance_ids,
            attempt=self.number,
            code=self.code,
            message=self.message,
            duration_s=self.duration_s,
            http_status=self.http_status,
            retry_in_s=self.retry_in_s,
            request_id=self.request_id,
        )


def send_with_retries(
    send: Callable[[Attempt], T],
    *,
    policy: RetryPolicy,
    retryable: Callable[[CloudError], bool],
    report: Callable[[Attempt], None],
    wait: Callable[[], object],
    clock: Callable[[], float],
    sleep: Callable[[float], None],
    rng: random.Random,
) -> tuple[T, Attempt]:
    """Call ``send`` until it succeeds, fails permanently, or ``retryable`` says no (the one
    attempt loop of both APIs). ``wait`` is the rate limit before each attempt; every attempt is
    given to ``report``, then the backoff is slept. Returns the result and its (last) attempt."""
    for number in range(1, policy.max_attempts + 1):
        wait()
        attempt = Attempt(number, clock())
        t0 = time.perf_counter()
        error: CloudError | None = None
        try:
            result = send(attempt)
        except CloudError as failure:
            error = failure
        attempt.duration_s = time.perf_counter() - t0
        if error is not None and number < policy.max_attempts and retryable(error):
            attempt.retry_in_s = policy.delay(number, rng)
        report(attempt)
        if error is None:
            return result, attempt
        if attempt.retry_in_s is None:
            raise error
        sleep(attempt.retry_in_s)
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
