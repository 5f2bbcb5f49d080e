"""The constructor, lifetime, thread pool and merged reads both CVM API clients share.

``cloud.client.CvmClient`` (2.0) and ``cloud.api3.Api3Client`` (3.0) are :class:`PooledClient`
subclasses: each makes its own signing and HTTP path in ``_open`` and implements the one-call
reads; everything else a ``cloud.base.CloudClient`` reads is here, once.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TYPE_CHECKING, ClassVar, TypeVar

from reconciler.cloud.base import Closing, check_instance_id, check_key_id, checked_region, chunks, id_list
from reconciler.cloud.credentials import Credentials, CredentialsProvider, as_provider
from reconciler.cloud.endpoint import check_endpoint
from reconciler.cloud.retry import ClientTuning, TuningArgs
from reconciler.errors import ConfigError, TransportError
from reconciler.model import MAX_IDS_PER_CALL, PAGE_SIZE, Instance, KeyPair

if TYPE_CHECKING:  # only for the annotations; Python 3.10's typing has no Unpack
    from typing_extensions import Unpack

T = TypeVar("T")
U = TypeVar("U")


class ClientArgs(TuningArgs, total=False):
    """The keywords every client takes after its credentials and region: where it goes
    (``endpoint``; None: the API's default) and how it sends (:class:`retry.TuningArgs`)."""

    endpoint: str | None


def _first_of_each(items: Iterable[T], id_of: Callable[[T], str]) -> list[T]:
    """``items`` without repeats of an ID (pages and batches may overlap), the first kept."""
    merged: dict[str, T] = {}
    for item in items:
        merged.setdefault(id_of(item), item)
    return list(merged.values())


def _key_id(key: KeyPair) -> str:
    return key.key_id


class PooledClient(Closing):
    """What both API clients share: their constructor (a checked place, the tuning, the
    subclass's ``_open``, a small thread pool), a lock, a ``closed`` flag, and the reads that run
    on the pool, made on first use (``describe_key_pairs``, ``describe_instances``) over the
    subclass's one-call reads (``_key_page``, ``_key_batch``, ``_instance_batch``), with their
    merging and consistency checks. ``close`` (idempotent) shuts the pool down, then the
    subclass's ``_close_http``.

    ``credentials`` may be fixed :class:`Credentials` or a provider asked on every attempt;
    ``endpoint`` defaults to the subclass's ``default_endpoint``; ``tuning`` is
    :class:`retry.TuningArgs` (transport, rate limit, attempts, backoff, timeout, clock, sleep,
    jitter, pool size, attempt callback).
    """

    _thread_prefix = "cvmkeys-api"
    _total_name = "TotalCount"  # the answers' count field, as messages name it
    default_endpoint: ClassVar[str]
    default_path: ClassVar[str]  # the endpoint's path when a URL names none

    region: str
    endpoint: str
    credentials_source: str

    def __init__(
        self,
        credentials: Credentials | CredentialsProvider,
        region: str,
        *,
        endpoint: str | None = None,
        **tuning: Unpack[TuningArgs],
    ) -> None:
        provider = as_provider(credentials)
        self.region = checked_region(region)
        where = self.default_endpoint if endpoint is None else endpoint  # "" is refused, not defaulted
        self.endpoint = check_endpoint(where, default_path=self.default_path)
        self.credentials_source = provider.source
        settings = ClientTuning(**tuning)
        if settings.max_workers < 1:
            raise ConfigError("max_workers must be at least 1")
        self._open(provider, settings)
        self._max_workers = settings.max_workers
        self._lock = threading.Lock()
        self._pool: ThreadPoolExecutor | None = None
        self._closed = False

    def __repr__(self) -> str:
        # Where it goes and whose credentials, never the credentials themselves.
        return (
            f"{type(self).__name__}(region={self.region!r}, endpoint={self.endpoint!r}, "
            f"credentials={self.credentials_source!r})"
        )

    def _open(self, provider: CredentialsProvider, settings: ClientTuning) -> None:
        """Make what this API's calls go through (signing, rate limiter, HTTP client), for
        ``self.endpoint`` and ``self.region``."""
        raise NotImplementedError

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
        return _first_of_each((key for keys in found for key in keys), _key_id)

    def describe_instances(self, instance_ids: Sequence[str]) -> list[Instance]:
        """The instances with these IDs that exist; one call per 100 IDs, run concurrently.

        An ID absent from the result does not exist (or is not this account's). An empty list
        makes no call.
        """
        ids = id_list(instance_ids, check_instance_id, "instance_ids")
        found = self._concurrently(self._instance_batch, chunks(ids, MAX_IDS_PER_CALL))
        return _first_of_each((i for instances in found for i in instances), lambda i: i.instance_id)

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
        merged = _first_of_each((key for _, keys in pages for key in keys), _key_id)
        if len(merged) != total:
            raise TransportError(
                action,
                f"the key list changed while it was read ({len(merged)} distinct keys, {name} "
                f"{total}); read it again",
                retryable=True,
                ambiguous=False,
            )
        return merged
