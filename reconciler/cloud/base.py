"""The one client interface every CVM API client implements, and what its mutating calls return.

The executor, the observers and the importer talk to a ``CloudClient`` and never to one API's
wire format: the 2.0 client (``cloud.client``) and the 3.0 client (``cloud.api3``) implement it.
Both map their instance states into ``model.InstanceState`` and their error codes into
``errors.ApiErrorKind``, and share ``cloud.pooled.PooledClient`` (their constructor, checked
region, endpoint and credentials, lifetime, thread pool, and the ``describe_*`` reads over their
one-call reads), the answer readers (``field_*``) and the ID checks (:func:`check_key_id`,
:func:`check_instance_id`, :func:`id_list`).
:class:`Closing` is the one ``with`` block for everything here and above that has a ``close()``.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Protocol, TypeVar

from reconciler.common import short_repr
from reconciler.errors import ConfigError
from reconciler.ids import is_instance_id, is_key_id, normalize_region
from reconciler.model import ApiVersion, Instance, KeyPair

T = TypeVar("T")
U = TypeVar("U")
_Self = TypeVar("_Self", bound="Closing")


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


class Closing:
    """``with thing:`` closes ``thing`` at the end, whatever happened (the subclass's ``close``)."""

    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self: _Self) -> _Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


class AnswerShapeError(Exception):
    """The answer is JSON but not shaped like the API's; each client turns it into a
    ``TransportError`` (never retried, maybe carried out)."""


def field_str(body: Mapping[str, Any], name: str, *, optional: bool = False) -> str | None:
    """A string field; ``None`` if absent/null and ``optional``."""
    value = body.get(name)
    if value is None and optional:
        return None
    if not isinstance(value, str):
        raise AnswerShapeError(f"{name!r} is not a string")
    return value


def field_int(body: Mapping[str, Any], name: str) -> int:
    value = body.get(name)
    if isinstance(value, bool) or not isinstance(value, int):
        raise AnswerShapeError(f"{name!r} is not an integer")
    return value


def field_list(body: Mapping[str, Any], name: str, *, optional: bool = False) -> list[Any]:
    value = body.get(name)
    if value is None and optional:
        return []
    if not isinstance(value, list):
        raise AnswerShapeError(f"{name!r} is not a list")
    return value


def field_dict(value: object, what: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise AnswerShapeError(f"{what} is not an object")
    return value


def hide(text: str, secrets: Sequence[str]) -> str:
    """``text`` with every one of ``secrets`` replaced by ``<hidden>``."""
    for secret in secrets:
        if secret in text:
            text = text.replace(secret, "<hidden>")
    return text


def checked_region(region: str) -> str:
    """The long name of ``region`` (open-ended, as the loader's: a region newer than this
    version's table still works), a ConfigError if it is not shaped like one."""
    try:
        return normalize_region(region)
    except KeyError:
        raise ConfigError(
            f"unknown region {short_repr(region)}", hint="use a long name such as ap-guangzhou"
        ) from None


def _checked_id(value: object, is_id: Callable[[object], bool], what: str, prefix: str) -> str:
    if not is_id(value):
        raise ValueError(
            f"invalid {what} {short_repr(value)}: expected {prefix}- and 8 lower-case letters/digits"
        )
    assert isinstance(value, str)
    return value


def check_key_id(value: object) -> str:
    """``value`` if it is a key ID; a ValueError naming it if not (checked before anything is sent)."""
    return _checked_id(value, is_key_id, "key ID", "skey")


def check_instance_id(value: object) -> str:
    """``value`` if it is an instance ID; a ValueError naming it if not."""
    return _checked_id(value, is_instance_id, "instance ID", "ins")


def id_list(values: Iterable[str] | str, check: Callable[[object], str], what: str) -> list[str]:
    """Validated IDs with duplicates removed, first occurrence first."""
    if isinstance(values, str):
        raise ValueError(f"{what} must be a list of IDs, not the string {short_repr(values)}")
    unique: dict[str, None] = {}
    for value in values:
        unique[check(value)] = None
    return list(unique)


def chunks(items: Sequence[T], size: int) -> list[Sequence[T]]:
    """``items`` cut into runs of ``size`` (the last one shorter)."""
    return [items[i : i + size] for i in range(0, len(items), size)]


def check_answered(
    asked: Sequence[str], found: Sequence[str], total: int, what: str, total_name: str
) -> None:
    """An ``AnswerShapeError`` unless an answer to a read of ``asked`` IDs that returned
    ``found`` (and said ``total``) holds only IDs asked for, as many as it says."""
    wanted = set(asked)
    for found_id in found:
        if found_id not in wanted:
            raise AnswerShapeError(f"answer holds {what} {found_id}, which was not asked for")
    if total != len(found):
        raise AnswerShapeError(f"{total_name} {total} but {len(found)} {what}s returned")
