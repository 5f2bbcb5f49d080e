"""The one client interface every CVM API client implements, and what its mutating calls return.

The executor, the observers and the importer talk to a ``CloudClient`` and never to one API's
wire format: the 2.0 client (``cloud.api2``) and the 3.0 client (``cloud.api3``) implement it.
Both map their instance states into ``model.InstanceState`` and their error codes into
``errors.ApiErrorKind``.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from reconciler.model import ApiVersion, Instance, KeyPair


@dataclass(frozen=True, slots=True)
class AttemptRecord:
    """One HTTP attempt of one API call, for the audit log. Never holds a secret or signature.

    ``code`` is the API's ``code`` (``None`` when no API answer was read); ``http_status`` is
    ``None`` when no HTTP answer came; ``retry_in_s`` is the backoff before the next attempt, or
    ``None`` when this attempt was the last one of its call.
    """

    time: float
    action: str
    region: str
    key_id: str | None
    instance_ids: tuple[str, ...]
    attempt: int
    code: int | str | None
    message: str
    duration_s: float
    http_status: int | None
    retry_in_s: float | None = None
    request_id: str | None = None  # API 3.0's RequestId of the answer, when one was read
    key_ids: tuple[str, ...] = ()  # API 3.0: every key of a multi-key call (key_id is None then)


@dataclass(frozen=True, slots=True)
class CallResult:
    """A mutating call that succeeded: its action, how many attempts it took, and the API's
    request ID (3.0's RequestId, so the caller can wait for exactly that operation)."""

    action: str
    attempts: int
    request_id: str | None = None


class CloudClient(Protocol):
    """A synchronous, thread-safe client of one region's CVM API."""

    api: ApiVersion
    region: str

    @property
    def calls(self) -> Counter[str]:
        """Requests sent so far, by action (every attempt counts)."""
        ...

    def describe_key_pairs(self, key_ids: Sequence[str] | None = None) -> list[KeyPair]:
        """Every key pair of the region (``None``), or those with these IDs that exist."""
        ...

    def describe_instances(self, instance_ids: Sequence[str]) -> list[Instance]:
        """The instances with these IDs that exist."""
        ...

    def unbind(self, key_ids: Sequence[str], instance_ids: Sequence[str]) -> CallResult:
        """Unbind every key from every instance in one call (2.0: exactly one key,
        UnBindInstanceKey; 3.0: DisassociateInstancesKeyPairs with ForceStop false)."""
        ...

    def stop_instances(self, instance_ids: Sequence[str], *, hard: bool = False) -> CallResult:
        """Stop 1..100 running instances (``hard``: a forced stop)."""
        ...

    def start_instances(self, instance_ids: Sequence[str]) -> CallResult:
        """Start 1..100 stopped instances."""
        ...

    def close(self) -> None:
        """Release connections and threads. Idempotent."""
        ...
