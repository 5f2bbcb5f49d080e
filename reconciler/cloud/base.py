"""The one client interface every CVM API client implements, and what its mutating calls return.

The executor, the observers and the importer talk to a ``CloudClient`` and never to one API's
wire format: the 2.0 client (``cloud.client``) and the 3.0 client (``cloud.api3``) implement it.
Both map their instance states into ``model.InstanceState`` and their error codes into
``errors.ApiErrorKind``, and share :class:`PooledClient` (their checked region, endpoint and
credentials, lifetime, thread pool, and the ``describe_*`` reads over their one-call reads) and
the ID checks (:func:`check_key_id`, :func:`check_instance_id`, :func:`id_list`).
:class:`Closing` is the one ``with`` block for everything here and above that has a ``close()``.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Protocol, TypeVar

from reconciler.cloud.credentials import Credentials, CredentialsProvider, as_provider
from reconciler.cloud.endpoint import check_endpoint
from reconciler.common import short_repr
from reconciler.errors import ConfigError, TransportError
from reconciler.ids import is_instance_id, is_key_id, normalize_region
from reconciler.model import MAX_IDS_PER_CALL, PAGE_SIZE, ApiVersion, Instance, KeyPair

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


def checked_region(region: str, normalize: Callable[[str], str]) -> str:
    """``normalize(region)`` (the API's rule for region names), a ConfigError if it is unknown."""
    try:
        return normalize(region)
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


def unasked_or_miscounted(
    asked: Sequence[str], found: Sequence[str], total: int, what: str, total_name: str
) -> str | None:
    """What is wrong with an answer to a read of ``asked`` IDs that returned ``found`` (and said
    ``total``), or None: it must hold only IDs asked for, as many as it says."""
    wanted = set(asked)
    for found_id in found:
        if found_id not in wanted:
            return f"answer holds {what} {found_id}, which was not asked for"
    if total != len(found):
        return f"{total_name} {total} but {len(found)} {what}s returned"
    return None


def _unique_keys(keys: list[KeyPair]) -> list[KeyPair]:
    merged: dict[str, KeyPair] = {}
    for key in keys:
        merged.setdefault(key.key_id, key)
    return list(merged.values())


class PooledClient(Closing):
    """What both API clients share: their checked place (``_init_place``), a lock, a ``closed``
    flag, and a small thread pool, made on first use, on which multi-page and multi-batch reads
    run; and those reads (``describe_key_pairs``, ``describe_instances``) over the subclass's
    one-call reads (``_key_page``, ``_key_batch``, ``_instance_batch``), with their merging and
    consistency checks. ``close`` (idempotent) shuts the pool down, then the subclass's
    ``_close_http``."""

    _thread_prefix = "cvmkeys-api"
    _total_name = "TotalCount"  # the answers' count field, as messages name it

    region: str
    endpoint: str
    credentials_source: str

    def __repr__(self) -> str:
        # Where it goes and whose credentials, never the credentials themselves.
        return (
            f"{type(self).__name__}(region={self.region!r}, endpoint={self.endpoint!r}, "
            f"credentials={self.credentials_source!r})"
        )

    def _init_place(
        self, credentials: Credentials | CredentialsProvider, region: str, endpoint: str, default_path: str
    ) -> CredentialsProvider:
        """Where the client goes (``region``, ``endpoint``) and with whose credentials, checked: a
        ConfigError for an unknown region or a refused endpoint. The credentials, as a provider."""
        provider = as_provider(credentials)
        # Open-ended, as the loader's: a region newer than a version's table still works.
        self.region = checked_region(region, normalize_region)
        self.endpoint = check_endpoint(endpoint, default_path=default_path)
        self.credentials_source = provider.source
        return provider

    def _init_pool(self, max_workers: int) -> None:
        if max_workers < 1:
            raise ConfigError("max_workers must be at least 1")
        self._max_workers = max_workers
        self._lock = threading.Lock()
        self._pool: ThreadPoolExecutor | None = None
        self._closed = False

    def _close_http(self) -> None:
        raise NotImplementedError

    def _check_open(self) -> None:
        """Raise if closed; call with ``self._lock`` held."""
        if self._closed:
            raise RuntimeError(f"{type(self).__name__} is closed")

    def close(self) -> None:
        """Release the thread pool and the HTTP connections. Idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
        self._close_http()

    def _concurrently(self, fn: Callable[[T], U], items: Sequence[T]) -> list[U]:
        """``[fn(item) for item in items]`` on the pool; the first failure (in order) is raised."""
        if len(items) <= 1 or self._max_workers == 1:
            return [fn(item) for item in items]
        with self._lock:
            self._check_open()
            if self._pool is None:
                self._pool = ThreadPoolExecutor(self._max_workers, thread_name_prefix=self._thread_prefix)
            pool = self._pool
        futures: list[Future[U]] = [pool.submit(fn, item) for item in items]
        try:
            return [future.result() for future in futures]
        finally:
            for future in futures:
                future.cancel()

    # ----------------------------------------------------------------- reads, one call each

    def _key_page(self, offset: int) -> tuple[int, list[KeyPair]]:
        """One page of every key (up to ``PAGE_SIZE`` from ``offset``): its total and keys."""
        raise NotImplementedError

    def _key_batch(self, batch: Sequence[str]) -> list[KeyPair]:
        """The keys of these (valid, distinct, at most ``MAX_IDS_PER_CALL``) IDs that exist."""
        raise NotImplementedError

    def _instance_batch(self, batch: Sequence[str]) -> list[Instance]:
        """The instances of these (valid, distinct, at most ``MAX_IDS_PER_CALL``) IDs that exist."""
        raise NotImplementedError

    # ----------------------------------------------------------------- reads, merged

    def describe_key_pairs(self, key_ids: Sequence[str] | None = None) -> list[KeyPair]:
        """Key pairs of the region: all of them (``key_ids`` None), or those with these IDs.

        All keys: the first page (100 keys) gives the total; the other pages are fetched
        concurrently. With ``key_ids``: one call per 100 IDs (concurrent), unknown IDs are simply
        absent from the result; an empty list makes no call. Raises ``TransportError`` (retryable)
        when the key list changed while it was paged through.
        """
        if key_ids is None:
            return self._all_keys()
        ids = id_list(key_ids, check_key_id, "key_ids")
        found = self._concurrently(self._key_batch, chunks(ids, MAX_IDS_PER_CALL))
        return _unique_keys([key for keys in found for key in keys])

    def describe_instances(self, instance_ids: Sequence[str]) -> list[Instance]:
        """The instances with these IDs that exist; one call per 100 IDs, run concurrently.

        An ID absent from the result does not exist (or is not this account's). An empty list
        makes no call.
        """
        ids = id_list(instance_ids, check_instance_id, "instance_ids")
        merged: dict[str, Instance] = {}
        for instances in self._concurrently(self._instance_batch, chunks(ids, MAX_IDS_PER_CALL)):
            for instance in instances:
                merged.setdefault(instance.instance_id, instance)
        return list(merged.values())

    def _all_keys(self) -> list[KeyPair]:
        """Every key, in pages of ``PAGE_SIZE``: the first page's total says how many more, read
        concurrently. A retryable ``TransportError`` when the list changed while it was paged
        through."""
        action, name, page, size = "DescribeKeyPairs", self._total_name, self._key_page, PAGE_SIZE
        total, first = page(0)
        offsets = list(range(size, total, size))
        pages = [(total, first), *self._concurrently(page, offsets)]
        for offset, (page_total, keys) in zip([0, *offsets], pages, strict=True):
            expected = min(size, max(0, total - offset))
            if page_total != total or len(keys) != expected:
                raise TransportError(
                    action,
                    f"the key list changed while it was read ({name} {total}, page at offset "
                    f"{offset} had {name} {page_total} and {len(keys)} keys); read it again",
                    retryable=True,
                    ambiguous=False,
                )
        merged = _unique_keys([key for _, keys in pages for key in keys])
        if len(merged) != total:
            raise TransportError(
                action,
                f"the key list changed while it was read ({len(merged)} distinct keys, {name} "
                f"{total}); read it again",
                retryable=True,
                ambiguous=False,
            )
        return merged
