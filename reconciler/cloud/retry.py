"""When the client retries a failed API call, and how long it waits first.

Used by :class:`reconciler.cloud.client.CvmClient`; the executor relies on the rule for mutating
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

import random
from dataclasses import dataclass

from reconciler.errors import ApiError, ApiErrorKind, CloudError, TransportError

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
