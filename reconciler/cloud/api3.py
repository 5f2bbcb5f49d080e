"""The CVM API 3.0 client (``cvm.tencentcloudapi.com``, Version 2017-03-12): the only code that
knows 3.0's CVM wire format. It implements ``reconciler.cloud.base.CloudClient``.

Reads: ``DescribeKeyPairs`` (all keys in pages of 100, or ``KeyIds`` in batches of 100;
``AssociatedInstanceIds`` are the bindings) and ``DescribeInstances`` (``InstanceIds``, 100 a
call). Writes: ``DisassociateInstancesKeyPairs`` (up to 100 keys x 100 instances, every key off
every instance, ``ForceStop=false``), ``StopInstances`` (``StopType`` SOFT or HARD,
``StoppedMode=KEEP_CHARGING``), ``StartInstances``. The writes are asynchronous on Tencent's side:
:class:`~reconciler.cloud.base.CallResult` carries the call's RequestId, which the instance's
``LatestOperationRequestId`` names while (and after) the operation runs.

Signing, the envelope, error classification, rate limits and retries: ``reconciler.cloud.tc3call``.
ID checks are the 2.0 client's (one rule for what an ID is). Raw JSON never leaves this module.
The client is thread-safe; multi-page and multi-batch reads run concurrently on a small pool.
"""

from __future__ import annotations

import random
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from types import TracebackType
from typing import Any, TypeVar

import httpx

from reconciler.cloud.base import AttemptRecord, CallResult
from reconciler.cloud.client import (
    _batch_ids,
    _check_instance_id,
    _check_key_id,
    _chunks,
    _id_list,
)
from reconciler.cloud.credentials import Credentials, CredentialsProvider, StaticProvider
from reconciler.cloud.endpoint import API3_ENDPOINT, API3_PATH, check_endpoint
from reconciler.cloud.retry import RetryPolicy
from reconciler.cloud.tc3call import (
    Tc3Auth,
    Tc3Caller,
    field_dict,
    field_int,
    field_list,
    field_str,
    shape_error,
)
from reconciler.common import short_repr as _show
from reconciler.errors import ConfigError, TransportError
from reconciler.ids import canonical_region, is_instance_id, is_key_id
from reconciler.model import DOCUMENTED_RATE_LIMITS, ApiVersion, Instance, InstanceState, KeyPair

T = TypeVar("T")
U = TypeVar("U")

SERVICE = "cvm"
VERSION = "2017-03-12"
PAGE_SIZE = 100  # DescribeKeyPairs / DescribeInstances Limit maximum
MAX_IDS_PER_CALL = 100  # InstanceIds and KeyIds of every action
DISASSOCIATE = "DisassociateInstancesKeyPairs"
MUTATING_ACTIONS = frozenset({DISASSOCIATE, "AssociateInstancesKeyPairs", "StopInstances", "StartInstances"})
# Requests a second per action, as documented (cvm-api-3.0.md section 6): the one table.
DEFAULT_RATE_LIMITS: Mapping[str, float] = DOCUMENTED_RATE_LIMITS

# The one map from 3.0's InstanceState to the API-neutral state; anything else is OTHER.
INSTANCE_STATES: Mapping[str, InstanceState] = {
    "RUNNING": InstanceState.RUNNING,
    "STOPPED": InstanceState.STOPPED,
    "STARTING": InstanceState.STARTING,
    "STOPPING": InstanceState.STOPPING,
}
OPERATING = "OPERATING"  # LatestOperationState of an operation still running: the instance is BUSY


def instance_state(api_state: str, latest_operation_state: str | None) -> InstanceState:
    """The API-neutral state: an operation still running makes any instance BUSY."""
    if latest_operation_state == OPERATING:
        return InstanceState.BUSY
    return INSTANCE_STATES.get(api_state, InstanceState.OTHER)


def _parse_key(entry: object) -> KeyPair:
    item = field_dict(entry, "a KeyPairSet entry")
    key_id = field_str(item, "KeyId")
    if not is_key_id(key_id):
        raise shape_error(f"KeyId {_show(key_id)} is not a key ID")
    assert key_id is not None
    bound = field_list(item, "AssociatedInstanceIds", optional=True)
    for instance_id in bound:
        if not is_instance_id(instance_id):
            raise shape_error(f"AssociatedInstanceIds of {key_id} holds {_show(instance_id)}")
    return KeyPair(
        key_id=key_id,
        name=field_str(item, "KeyName", optional=True) or "",
        bound_instance_ids=tuple(dict.fromkeys(bound)),
    )


def _parse_instance(entry: object) -> Instance:
    item = field_dict(entry, "an InstanceSet entry")
    instance_id = field_str(item, "InstanceId")
    if not is_instance_id(instance_id):
        raise shape_error(f"InstanceId {_show(instance_id)} is not an instance ID")
    assert instance_id is not None
    api_state = field_str(item, "InstanceState") or ""
    login = item.get("LoginSettings")
    if login is not None:
        # Only associated keys are listed here; checked so a malformed answer is not trusted.
        for key_id in field_list(field_dict(login, "LoginSettings"), "KeyIds", optional=True):
            if not is_key_id(key_id):
                raise shape_error(f"LoginSettings.KeyIds of {instance_id} holds {_show(key_id)}")
    operation_state = field_str(item, "LatestOperationState", optional=True)
    return Instance(
        instance_id=instance_id,
        name=field_str(item, "InstanceName", optional=True) or "",
        state=instance_state(api_state, operation_state),
        api_state=api_state,
        os=field_str(item, "OsName", optional=True) or "",
        latest_operation=field_str(item, "LatestOperation", optional=True),
        latest_operation_state=operation_state,
        latest_operation_request_id=field_str(item, "LatestOperationRequestId", optional=True),
        latest_operation_error=field_str(item, "LatestOperationErrorMsg", optional=True),
    )


def _key_page(response: dict[str, Any]) -> tuple[int, list[KeyPair]]:
    total = field_int(response, "TotalCount")
    keys = [_parse_key(entry) for entry in field_list(response, "KeyPairSet", optional=True)]
    if total < 0 or len(keys) > PAGE_SIZE:
        raise shape_error("TotalCount or KeyPairSet size out of range")
    return total, keys


def _unique(keys: list[KeyPair]) -> list[KeyPair]:
    merged: dict[str, KeyPair] = {}
    for key in keys:
        merged.setdefault(key.key_id, key)
    return list(merged.values())


class Api3Client:
    """A synchronous, thread-safe CVM API 3.0 client for one region (``CloudClient``).

    ``credentials`` may be fixed :class:`Credentials` or a provider asked on every attempt
    (temporary credentials renewed before they expire). ``endpoint`` is the default
    ``https://cvm.tencentcloudapi.com/`` (``reconciler.cloud.endpoint.api3_endpoint`` builds the
    regional and international ones). ``rate_limits`` overrides the documented per-action
    figures (:data:`DEFAULT_RATE_LIMITS`); ``None`` disables client-side limiting (the in-process
    emulator). ``transport``, ``clock``, ``sleep`` and ``rng`` are for tests, as in the 2.0 client.
    """

    api = ApiVersion.V3

    def __init__(
        self,
        credentials: Credentials | CredentialsProvider,
        region: str,
        *,
        endpoint: str = API3_ENDPOINT,
        transport: httpx.BaseTransport | None = None,
        rate_limits: Mapping[str, float] | None = DEFAULT_RATE_LIMITS,
        max_attempts: int = 5,
        backoff_base: float = 0.2,
        backoff_cap: float = 5.0,
        timeout: float = 10.0,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], None] = time.sleep,
        rng: random.Random | None = None,
        max_workers: int = 8,
        on_attempt: Callable[[AttemptRecord], None] | None = None,
    ) -> None:
        provider: CredentialsProvider = (
            StaticProvider(credentials) if isinstance(credentials, Credentials) else credentials
        )
        try:
            self.region = canonical_region(region)
        except KeyError:
            raise ConfigError(
                f"unknown region {_show(region)}", hint="use a long name such as ap-guangzhou"
            ) from None
        self.endpoint = check_endpoint(endpoint, default_path=API3_PATH)
        if rate_limits is not None:
            for action, rate in rate_limits.items():
                if not rate > 0:
                    raise ConfigError(f"the rate limit of {action} must be a positive number a second")
            rate_limits = {**DEFAULT_RATE_LIMITS, **rate_limits}
        if max_workers < 1:
            raise ConfigError("max_workers must be at least 1")
        if not timeout > 0:
            raise ConfigError("timeout must be positive")
        try:
            retry = RetryPolicy(max_attempts, backoff_base, backoff_cap)
        except ValueError as error:
            raise ConfigError(str(error)) from None
        self.credentials_source = provider.source
        self._caller = Tc3Caller(
            service=SERVICE,
            version=VERSION,
            endpoint=self.endpoint,
            region=self.region,
            auth=Tc3Auth(provider, service=SERVICE, clock=clock),
            mutating_actions=MUTATING_ACTIONS,
            transport=transport,
            timeout=timeout,
            retry=retry,
            rate_limits=rate_limits,
            default_rate=10.0,
            clock=clock,
            sleep=sleep,
            rng=rng,
            on_attempt=on_attempt,
        )
        self._max_workers = max_workers
        self._lock = threading.Lock()
        self._pool: ThreadPoolExecutor | None = None
        self._closed = False

    def __repr__(self) -> str:
        return (
            f"Api3Client(region={self.region!r}, endpoint={self.endpoint!r}, "
            f"credentials={self.credentials_source!r})"
        )

    @property
    def calls(self) -> Counter[str]:
        """HTTP requests sent so far, by action (every attempt counts); a snapshot copy."""
        return self._caller.calls

    def close(self) -> None:
        """Release the thread pool and the HTTP connections. Idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
        self._caller.close()

    def __enter__(self) -> Api3Client:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    # ----------------------------------------------------------------- reads

    def describe_key_pairs(self, key_ids: Sequence[str] | None = None) -> list[KeyPair]:
        """Key pairs of the region: all (``key_ids`` None, pages of 100, the first page's
        ``TotalCount`` says how many more), or those with these IDs (100 a call; unknown IDs are
        absent). Raises a retryable ``TransportError`` if the list changed while it was paged."""
        action = "DescribeKeyPairs"
        if key_ids is not None:
            ids = _id_list(key_ids, _check_key_id, "key_ids")
            found = self._concurrently(self._key_batch, _chunks(ids, MAX_IDS_PER_CALL))
            return _unique([key for batch in found for key in batch])
        total, first = self._page(0)
        offsets = list(range(PAGE_SIZE, total, PAGE_SIZE))
        rest = self._concurrently(self._page, offsets)
        pages = [(total, first), *rest]
        for offset, (page_total, keys) in zip([0, *offsets], pages, strict=True):
            expected = min(PAGE_SIZE, max(0, total - offset))
            if page_total != total or len(keys) != expected:
                raise TransportError(
                    action,
                    f"the key list changed while it was read (TotalCount {total}, page at offset "
                    f"{offset} had TotalCount {page_total} and {len(keys)} keys); read it again",
                    retryable=True,
                    ambiguous=False,
                )
        merged = _unique([key for _, keys in pages for key in keys])
        if len(merged) != total:
            raise TransportError(
                action,
                f"the key list changed while it was read ({len(merged)} distinct keys, TotalCount "
                f"{total}); read it again",
                retryable=True,
                ambiguous=False,
            )
        return merged

    def describe_instances(self, instance_ids: Sequence[str]) -> list[Instance]:
        """The instances with these IDs that exist; 100 a call, concurrently. An empty list
        makes no call; an ID absent from the result does not exist (or is not this account's)."""
        ids = _id_list(instance_ids, _check_instance_id, "instance_ids")
        batches = self._concurrently(self._instance_batch, _chunks(ids, MAX_IDS_PER_CALL))
        merged: dict[str, Instance] = {}
        for batch in batches:
            for instance in batch:
                merged.setdefault(instance.instance_id, instance)
        return list(merged.values())

    def _page(self, offset: int) -> tuple[int, list[KeyPair]]:
        params = {"Offset": offset, "Limit": PAGE_SIZE}
        return self._caller.call("DescribeKeyPairs", params, _key_page)[0]

    def _key_batch(self, batch: Sequence[str]) -> list[KeyPair]:
        asked = set(batch)

        def parse(response: dict[str, Any]) -> list[KeyPair]:
            total, keys = _key_page(response)
            for key in keys:
                if key.key_id not in asked:
                    raise shape_error(f"answer holds key {key.key_id}, which was not asked for")
            if total != len(keys):
                raise shape_error(f"TotalCount {total} but {len(keys)} keys returned")
            return keys

        params = {"KeyIds": list(batch), "Offset": 0, "Limit": PAGE_SIZE}
        return self._caller.call("DescribeKeyPairs", params, parse, key_ids=tuple(batch))[0]

    def _instance_batch(self, batch: Sequence[str]) -> list[Instance]:
        asked = set(batch)

        def parse(response: dict[str, Any]) -> list[Instance]:
            total = field_int(response, "TotalCount")
            instances = [_parse_instance(e) for e in field_list(response, "InstanceSet", optional=True)]
            for instance in instances:
                if instance.instance_id not in asked:
                    raise shape_error(
                        f"answer holds instance {instance.instance_id}, which was not asked for"
                    )
            if total != len(instances):
                raise shape_error(f"TotalCount {total} but {len(instances)} instances returned")
            return instances

        params = {"InstanceIds": list(batch), "Offset": 0, "Limit": PAGE_SIZE}
        return self._caller.call("DescribeInstances", params, parse, instance_ids=tuple(batch))[0]

    # ----------------------------------------------------------------- writes

    def unbind(self, key_ids: Sequence[str], instance_ids: Sequence[str]) -> CallResult:
        """DisassociateInstancesKeyPairs: every key off every instance (1..100 of each, all
        STOPPED); ``ForceStop`` is always false. The whole call fails if one instance is refused."""
        keys = _id_list(key_ids, _check_key_id, "key_ids")
        if len(keys) != len(key_ids):
            raise ValueError("key_ids contains duplicates")
        if not 1 <= len(keys) <= MAX_IDS_PER_CALL:
            raise ValueError(f"a call takes 1 to {MAX_IDS_PER_CALL} key IDs, got {len(keys)}")
        ids = _batch_ids(instance_ids)
        params = {"InstanceIds": ids, "KeyIds": keys, "ForceStop": False}
        return self._mutate(DISASSOCIATE, params, tuple(keys), ids)

    def stop_instances(self, instance_ids: Sequence[str], *, hard: bool = False) -> CallResult:
        """StopInstances on 1..100 RUNNING instances: ``StopType`` SOFT (HARD with ``hard``),
        ``StoppedMode`` KEEP_CHARGING always (a STOP_CHARGING instance could not be unbound)."""
        ids = _batch_ids(instance_ids)
        params = {"InstanceIds": ids, "StopType": "HARD" if hard else "SOFT", "StoppedMode": "KEEP_CHARGING"}
        return self._mutate("StopInstances", params, (), ids)

    def start_instances(self, instance_ids: Sequence[str]) -> CallResult:
        """StartInstances on 1..100 STOPPED instances."""
        ids = _batch_ids(instance_ids)
        return self._mutate("StartInstances", {"InstanceIds": ids}, (), ids)

    def _mutate(
        self, action: str, params: dict[str, Any], key_ids: tuple[str, ...], ids: list[str]
    ) -> CallResult:
        def parse(response: dict[str, Any]) -> None:
            return None

        _, attempts, request_id = self._caller.call(
            action, params, parse, key_ids=key_ids, instance_ids=tuple(ids)
        )
        return CallResult(action, attempts, request_id)

    # ----------------------------------------------------------------- concurrency

    def _concurrently(self, fn: Callable[[T], U], items: Sequence[T]) -> list[U]:
        """``[fn(item) for item in items]`` on the pool; the first failure (in order) is raised."""
        if len(items) <= 1 or self._max_workers == 1:
            return [fn(item) for item in items]
        with self._lock:
            if self._closed:
                raise RuntimeError("Api3Client is closed")
            if self._pool is None:
                self._pool = ThreadPoolExecutor(self._max_workers, thread_name_prefix="cvmkeys-api3")
            pool = self._pool
        futures: list[Future[U]] = [pool.submit(fn, item) for item in items]
        try:
            return [future.result() for future in futures]
        finally:
            for future in futures:
                future.cancel()
