"""The CVM API 2.0 client: the only code that knows the wire format.

Called by ``reconciler.cloud.observe`` (the ``Describe*`` reads) and by the executor (the
mutating calls). Everything it returns is typed (``reconciler.model.KeyPair`` / ``Instance``,
:class:`CallResult`); raw JSON never leaves this module. Every failure is a
``reconciler.errors.CloudError``:

- ``ApiError``: the API answered HTTP 200 with a non-zero ``code``;
- ``TransportError``: no usable answer (HTTP status other than 200, timeout, connection error,
  a body that is not JSON or not shaped like the API's). ``ambiguous`` is false only when the
  request was certainly not sent (connect error, connect/pool timeout).

One request per attempt goes through, in order: ID validation (before anything is sent; a bad ID
is a ``ValueError`` naming it), the per-action token bucket (``ratelimit``), signing with a fresh
Timestamp/Nonce/Signature (``auth``), httpx, answer checking, and the retry rule of ``retry``
(mutating calls are retried only when they certainly had no effect). Each attempt is reported to
``on_attempt`` as an :class:`AttemptRecord` and logged at DEBUG; neither ever holds the secret
key, the signature or the full URL.

The client is thread-safe. Multi-page and multi-chunk reads run their requests concurrently on a
small thread pool owned by the client (``max_workers``); ``close()`` (or ``with``) releases it.
"""

from __future__ import annotations

import logging
import random
import re
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from types import TracebackType
from typing import Any, TypeVar
from urllib.parse import urlsplit

import httpx

from reconciler import __version__
from reconciler.cloud import signing
from reconciler.cloud.auth import PARAMS_EXTENSION, Api2Auth
from reconciler.cloud.base import AttemptRecord, CallResult
from reconciler.cloud.credentials import Credentials, CredentialsProvider, StaticProvider
from reconciler.cloud.endpoint import DEFAULT_ENDPOINT, check_endpoint, is_loopback_host
from reconciler.cloud.ratelimit import ActionRateLimiter
from reconciler.cloud.retry import RetryPolicy, is_mutating, may_retry
from reconciler.common import short_repr as _show
from reconciler.errors import ApiError, ApiErrorKind, CloudError, ConfigError, TransportError
from reconciler.ids import is_instance_id, is_key_id, normalize_region
from reconciler.model import (
    DOCUMENTED_RATE_LIMITS,
    INSTANCE_STATUS_NAMES,
    MAX_IDS_PER_CALL,
    PAGE_SIZE,
    STATUS_KEY_ISSUING,
    STATUS_RUNNING,
    STATUS_SHUT_DOWN,
    STATUS_SHUTTING_DOWN,
    STATUS_STARTING,
    ApiVersion,
    Instance,
    InstanceState,
    KeyPair,
)

__all__ = [
    "DEFAULT_ENDPOINT",
    "MAX_IDS_PER_CALL",
    "PAGE_SIZE",
    "AttemptRecord",
    "CallResult",
    "CvmClient",
    "check_endpoint",
]

logger = logging.getLogger(__name__)


class _RedactQuery(logging.Filter):
    """Cuts query strings out of log lines. httpx logs every request's full URL at INFO, and a
    signed GET URL holds the SecretId and the Signature."""

    _QUERY = re.compile(r"\?[^\s\"'>]*")

    def filter(self, record: logging.LogRecord) -> bool:
        text = record.getMessage()
        if "?" in text:
            record.msg = self._QUERY.sub("?<redacted>", text)
            record.args = ()
        return True


for _name in ("httpx", "httpcore"):
    _logger = logging.getLogger(_name)
    if not any(isinstance(f, _RedactQuery) for f in _logger.filters):
        _logger.addFilter(_RedactQuery())

T = TypeVar("T")
U = TypeVar("U")


class _Shape(Exception):
    """The answer is JSON but not shaped like the API's; becomes a ``TransportError``."""


# --------------------------------------------------------------------------- states and codes

_STATES: dict[int, InstanceState] = {
    STATUS_RUNNING: InstanceState.RUNNING,
    STATUS_SHUT_DOWN: InstanceState.STOPPED,
    STATUS_STARTING: InstanceState.STARTING,
    STATUS_SHUTTING_DOWN: InstanceState.STOPPING,
    STATUS_KEY_ISSUING: InstanceState.BUSY,
}


def instance_state(status: int) -> tuple[InstanceState, str]:
    """A 2.0 ``status`` as the neutral state and the API's own word ("4 (shut down)")."""
    # Numbers the table does not list are maintenance states, per the docs.
    return _STATES.get(
        status, InstanceState.OTHER
    ), f"{status} ({INSTANCE_STATUS_NAMES.get(status, 'maintenance')})"


_AUTH_CODES = frozenset({4100, 4101, 4102, 4104, 4200, 4300, 4500})
_TRANSIENT_CODES = frozenset({6000, 6200})  # internal error, temporarily unavailable
THROTTLED_CODE = 4400
NOT_FOUND_CODE = 5000
OPERATION_FAILED_CODE = 5100
PARTIAL_SUCCESS_CODE = 5400


def classify(code: int, message: str, *, mutating: bool) -> ApiErrorKind:
    """What a 2.0 error code means for the caller. 6000 and 6200 are transient, but on a
    mutating call they may have been carried out (ambiguous); 5100 is a refusal for the
    instance's state, busy when the instance is in status 20."""
    if code == THROTTLED_CODE:
        return ApiErrorKind.RETRYABLE
    if code in _TRANSIENT_CODES:
        return ApiErrorKind.AMBIGUOUS if mutating else ApiErrorKind.RETRYABLE
    if code == PARTIAL_SUCCESS_CODE:
        return ApiErrorKind.AMBIGUOUS
    if code in _AUTH_CODES:
        return ApiErrorKind.AUTH
    if code == NOT_FOUND_CODE:
        return ApiErrorKind.NOT_FOUND
    if code == OPERATION_FAILED_CODE:
        return ApiErrorKind.BUSY if f"status {STATUS_KEY_ISSUING}" in message else ApiErrorKind.BLOCKED
    return ApiErrorKind.INVALID


# --------------------------------------------------------------------------- validation


def _check_key_id(value: object) -> str:
    if not is_key_id(value):
        raise ValueError(f"invalid key ID {_show(value)}: expected skey- and 8 lower-case letters/digits")
    assert isinstance(value, str)
    return value


def _check_instance_id(value: object) -> str:
    if not is_instance_id(value):
        raise ValueError(f"invalid instance ID {_show(value)}: expected ins- and 8 lower-case letters/digits")
    assert isinstance(value, str)
    return value


def _id_list(values: Iterable[str] | str, check: Callable[[object], str], what: str) -> list[str]:
    """Validated IDs with duplicates removed, first occurrence first."""
    if isinstance(values, str):
        raise ValueError(f"{what} must be a list of IDs, not the string {_show(values)}")
    unique: dict[str, None] = {}
    for value in values:
        unique[check(value)] = None
    return list(unique)


def _batch_ids(instance_ids: Sequence[str]) -> list[str]:
    """Instance IDs of one mutating call: 1..100 valid, distinct IDs."""
    ids = _id_list(instance_ids, _check_instance_id, "instance_ids")
    if len(ids) != len(instance_ids):
        raise ValueError("instance_ids contains duplicates")
    if not 1 <= len(ids) <= MAX_IDS_PER_CALL:
        raise ValueError(f"a call takes 1 to {MAX_IDS_PER_CALL} instance IDs, got {len(ids)}")
    return ids


def _chunks(items: Sequence[T], size: int) -> list[Sequence[T]]:
    return [items[i : i + size] for i in range(0, len(items), size)]


def _list_params(name: str, values: Sequence[str]) -> dict[str, str]:
    return {f"{name}.{i}": value for i, value in enumerate(values)}


# --------------------------------------------------------------------------- answer parsing


def _int(body: dict[str, Any], name: str) -> int:
    value = body.get(name)
    if isinstance(value, bool) or not isinstance(value, int):
        raise _Shape(f"{name!r} is not an integer")
    return value


def _str(body: dict[str, Any], name: str, *, default: str | None = None) -> str:
    value = body.get(name, default)
    if value is None and default is not None:
        return default
    if not isinstance(value, str):
        raise _Shape(f"{name!r} is not a string")
    return value


def _list(body: dict[str, Any], name: str) -> list[Any]:
    value = body.get(name)
    if not isinstance(value, list):
        raise _Shape(f"{name!r} is not a list")
    return value


def _dict(value: object, what: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise _Shape(f"{what} is not an object")
    return value


# A list of instance IDs, joined with "\n" and ended with one: checks 100,000 IDs at C speed.
_INSTANCE_ID_LINES = re.compile(r"(?:ins-[a-z0-9]{8}\n)*")


def _all_instance_ids(values: list[Any]) -> bool:
    """True if every value is an instance ID (one regex over the joined list; the length check
    rules out a value with a line break inside, which would shift the lines)."""
    if not all(type(value) is str for value in values):
        return False
    text = "\n".join(values) + "\n" if values else ""
    return len(text) == 13 * len(values) and _INSTANCE_ID_LINES.fullmatch(text) is not None


def _parse_key(entry: object) -> KeyPair:
    item = _dict(entry, "an sshSet entry")
    key_id = _str(item, "keyId")
    if not is_key_id(key_id):
        raise _Shape(f"keyId {_show(key_id)} is not a key ID")
    # Absent or null bindUnInstanceIds: treated as no bindings (the docs show it on every key).
    raw_bound = item.get("bindUnInstanceIds")
    bound = _list(item, "bindUnInstanceIds") if raw_bound is not None else []
    if not _all_instance_ids(bound):
        for instance_id in bound:
            if not is_instance_id(instance_id):
                raise _Shape(f"bindUnInstanceIds of {key_id} holds {_show(instance_id)}")
    return KeyPair(
        key_id=key_id,
        name=_str(item, "keyName", default=""),
        bound_instance_ids=tuple(dict.fromkeys(bound)),
    )


def _parse_instance(entry: object) -> Instance:
    # The common case first, in one go (40,000 instances in a big plan); anything unusual takes
    # the checks below, which say what is wrong.
    if type(entry) is dict:
        instance_id, name = entry.get("unInstanceId"), entry.get("instanceName")
        status, os_name = entry.get("status"), entry.get("os")
        if (
            type(instance_id) is str
            and type(status) is int
            and type(os_name) is str
            and (name is None or type(name) is str)
            and is_instance_id(instance_id)
        ):
            state, word = instance_state(status)
            return Instance(instance_id=instance_id, name=name or "", state=state, api_state=word, os=os_name)
    item = _dict(entry, "an instanceSet entry")
    instance_id = _str(item, "unInstanceId")
    if not is_instance_id(instance_id):
        raise _Shape(f"unInstanceId {_show(instance_id)} is not an instance ID")
    state, word = instance_state(_int(item, "status"))
    return Instance(
        instance_id=instance_id,
        name=_str(item, "instanceName", default=""),
        state=state,
        api_state=word,
        os=_str(item, "os"),
    )


@dataclass(frozen=True, slots=True)
class _KeyPage:
    total: int
    keys: list[KeyPair]


def _parse_key_page(body: dict[str, Any]) -> _KeyPage:
    data = _dict(body.get("data"), "'data'")
    total = _int(data, "totalCount")
    keys = [_parse_key(entry) for entry in _list(data, "sshSet")]
    if total < 0 or len(keys) > PAGE_SIZE:
        raise _Shape("totalCount or sshSet size out of range")
    return _KeyPage(total, keys)


def _parse_instances(body: dict[str, Any]) -> tuple[int, list[Instance]]:
    # DescribeInstances has no ``data`` wrapper.
    total = _int(body, "totalCount")
    return total, [_parse_instance(entry) for entry in _list(body, "instanceSet")]


def _parse_empty(body: dict[str, Any]) -> None:
    return None


def _unique_keys(keys: list[KeyPair]) -> list[KeyPair]:
    merged: dict[str, KeyPair] = {}
    for key in keys:
        merged.setdefault(key.key_id, key)
    return list(merged.values())


# --------------------------------------------------------------------------- the client


@dataclass(slots=True)
class _Answer:
    http_status: int | None
    message: str
    code: int | str | None


class CvmClient:
    """A synchronous, thread-safe CVM API 2.0 client for one region.

    ``transport`` replaces the network (e.g. the emulator's in-process transport); ``clock``
    gives the signed Timestamp, the attempt times and the rate limiter's time; ``sleep`` is used
    for backoff and rate limiting; ``rng`` draws backoff jitter. ``rate_limit`` is requests per
    second per action: one rate for all, or a table by action (default: the documented figures,
    ``model.DOCUMENTED_RATE_LIMITS``); 0 or None: unlimited. ``on_attempt`` receives every
    attempt's record; it is called from worker threads but never concurrently. Implements
    ``cloud.base.CloudClient``.
    """

    api = ApiVersion.V2

    def __init__(
        self,
        credentials: Credentials | CredentialsProvider,
        region: str,
        *,
        endpoint: str = DEFAULT_ENDPOINT,
        transport: httpx.BaseTransport | None = None,
        http_method: str = "GET",
        signature_method: str = signing.HMAC_SHA256,
        rate_limit: float | Mapping[str, float] | None = DOCUMENTED_RATE_LIMITS,
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
        if isinstance(credentials, Credentials):
            credentials = StaticProvider(credentials)
        elif not callable(getattr(credentials, "get", None)):
            raise ConfigError("credentials must be a Credentials object or a credentials provider")
        try:
            # Open-ended, as the loader's: a region newer than this version's table still works.
            self.region = normalize_region(region)
        except KeyError:
            raise ConfigError(
                f"unknown region {_show(region)}", hint="use a long name such as ap-guangzhou"
            ) from None
        self.endpoint = check_endpoint(endpoint)
        self.http_method = http_method.upper()
        if self.http_method not in ("GET", "POST"):
            raise ConfigError(f"http_method must be GET or POST, not {_show(http_method)}")
        if signature_method not in signing.SIGNATURE_METHODS:
            raise ConfigError(
                f"signature method must be one of {', '.join(signing.SIGNATURE_METHODS)}, "
                f"not {_show(signature_method)}"
            )
        if max_workers < 1:
            raise ConfigError("max_workers must be at least 1")
        if not timeout > 0:
            raise ConfigError("timeout must be positive")
        try:
            self._retry = RetryPolicy(max_attempts, backoff_base, backoff_cap)
        except ValueError as error:
            raise ConfigError(str(error)) from None

        self.signature_method = signature_method
        self.credentials_source = credentials.source
        self._clock = clock
        self._sleep = sleep
        self._rng = rng if rng is not None else random.Random()
        self._on_attempt = on_attempt
        self._max_workers = max_workers
        try:
            self._limiter = ActionRateLimiter(rate_limit, clock=clock, sleep=sleep)
        except ValueError:
            raise ConfigError("rate_limit must be a non-negative number of requests per second") from None
        self._lock = threading.Lock()
        self._callback_lock = threading.Lock()
        self._pool: ThreadPoolExecutor | None = None
        self._closed = False
        self._calls: Counter[str] = Counter()

        host = urlsplit(self.endpoint).hostname or ""
        self._auth = Api2Auth(credentials, self.region, signature_method=signature_method, clock=clock)
        self._http = httpx.Client(
            auth=self._auth,
            transport=transport,
            timeout=httpx.Timeout(timeout),
            follow_redirects=False,
            # Proxy variables are for the real cloud; never for an in-process app or loopback.
            trust_env=transport is None and not is_loopback_host(host),
            headers={"User-Agent": f"cvmkeys/{__version__}"},
        )

    def __repr__(self) -> str:
        return (
            f"CvmClient(region={self.region!r}, endpoint={self.endpoint!r}, "
            f"credentials={self.credentials_source!r})"
        )

    @property
    def calls(self) -> Counter[str]:
        """HTTP requests sent so far, by action (every attempt counts); a snapshot copy."""
        with self._lock:
            return Counter(self._calls)

    # ----------------------------------------------------------------- lifecycle

    def close(self) -> None:
        """Release the thread pool and the HTTP connections. Idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
        self._http.close()

    def __enter__(self) -> CvmClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # ----------------------------------------------------------------- reads

    def describe_key_pairs(self, key_ids: Sequence[str] | None = None) -> list[KeyPair]:
        """Key pairs of the region: all of them (``key_ids`` None), or those with these IDs.

        All keys: the first page (limit 100) gives ``totalCount``; the other pages are fetched
        concurrently. With ``key_ids``: one call per 100 IDs (concurrent), unknown IDs are simply
        absent from the result; an empty list makes no call. Raises ``TransportError`` (retryable)
        when the key list changed while it was paged through.
        """
        action = "DescribeKeyPairs"
        if key_ids is not None:
            ids = _id_list(key_ids, _check_key_id, "key_ids")
            found = self._concurrently(self._key_chunk, _chunks(ids, MAX_IDS_PER_CALL))
            return _unique_keys([key for chunk in found for key in chunk])

        first = self._key_page(0)
        offsets = range(PAGE_SIZE, first.total, PAGE_SIZE)
        rest = self._concurrently(self._key_page, list(offsets))
        pages = [first, *rest]
        for offset, page in zip([0, *offsets], pages, strict=True):
            expected = min(PAGE_SIZE, max(0, first.total - offset))
            if page.total != first.total or len(page.keys) != expected:
                raise TransportError(
                    action,
                    f"the key list changed while it was read (totalCount {first.total}, page at "
                    f"offset {offset} had totalCount {page.total} and {len(page.keys)} keys); "
                    "read it again",
                    retryable=True,
                    ambiguous=False,
                )
        keys = _unique_keys([key for page in pages for key in page.keys])
        if len(keys) != first.total:
            raise TransportError(
                action,
                f"the key list changed while it was read ({len(keys)} distinct keys, "
                f"totalCount {first.total}); read it again",
                retryable=True,
                ambiguous=False,
            )
        return keys

    def describe_instances(self, instance_ids: Sequence[str]) -> list[Instance]:
        """The instances with these IDs that exist; one call per 100 IDs, run concurrently.

        An ID absent from the result does not exist (or is not this account's). An empty list
        makes no call.
        """
        ids = _id_list(instance_ids, _check_instance_id, "instance_ids")
        chunks = self._concurrently(self._instance_chunk, _chunks(ids, MAX_IDS_PER_CALL))
        merged: dict[str, Instance] = {}
        for chunk in chunks:
            for instance in chunk:
                merged.setdefault(instance.instance_id, instance)
        return list(merged.values())

    def _key_page(self, offset: int) -> _KeyPage:
        params = {"offset": str(offset), "limit": str(PAGE_SIZE)}
        return self._call("DescribeKeyPairs", params, _parse_key_page)

    def _key_chunk(self, chunk: Sequence[str]) -> list[KeyPair]:
        params = {**_list_params("keyIds", chunk), "offset": "0", "limit": str(PAGE_SIZE)}

        def parse(body: dict[str, Any]) -> list[KeyPair]:
            page = _parse_key_page(body)
            asked = set(chunk)
            for key in page.keys:
                if key.key_id not in asked:
                    raise _Shape(f"answer holds key {key.key_id}, which was not asked for")
            if page.total != len(page.keys):
                raise _Shape(f"totalCount {page.total} but {len(page.keys)} keys returned")
            return page.keys

        return self._call("DescribeKeyPairs", params, parse, instance_ids=())

    def _instance_chunk(self, chunk: Sequence[str]) -> list[Instance]:
        params = {**_list_params("instanceIds", chunk), "offset": "0", "limit": str(PAGE_SIZE)}

        def parse(body: dict[str, Any]) -> list[Instance]:
            total, instances = _parse_instances(body)
            asked = set(chunk)
            for instance in instances:
                if instance.instance_id not in asked:
                    raise _Shape(f"answer holds instance {instance.instance_id}, which was not asked for")
            if total != len(instances):
                raise _Shape(f"totalCount {total} but {len(instances)} instances returned")
            return instances

        return self._call("DescribeInstances", params, parse, instance_ids=tuple(chunk))

    # ----------------------------------------------------------------- mutations

    def unbind(self, key_ids: Sequence[str], instance_ids: Sequence[str]) -> CallResult:
        """The ``CloudClient`` unbind: 2.0 takes exactly one key a call (UnBindInstanceKey)."""
        if isinstance(key_ids, str) or len(key_ids) != 1:
            raise ValueError(f"API 2.0 unbinds exactly one key a call, got {_show(key_ids)}")
        return self.unbind_instance_key(key_ids[0], instance_ids)

    def unbind_instance_key(self, key_id: str, instance_ids: Sequence[str]) -> CallResult:
        """UnBindInstanceKey: unbind ``key_id`` from 1..100 instances (all shut down)."""
        return self._key_call("UnBindInstanceKey", key_id, instance_ids)

    def bind_instance_key(self, key_id: str, instance_ids: Sequence[str]) -> CallResult:
        """BindInstanceKey: bind ``key_id`` to 1..100 instances (all shut down, Linux)."""
        return self._key_call("BindInstanceKey", key_id, instance_ids)

    def stop_instances(self, instance_ids: Sequence[str], *, hard: bool = False) -> CallResult:
        """StopInstances on 1..100 running instances; ``hard`` sends ``forceStop=1``."""
        ids = _batch_ids(instance_ids)
        params = {**_list_params("instanceIds", ids), "forceStop": "1" if hard else "0"}
        return self._mutate("StopInstances", params, None, ids)

    def start_instances(self, instance_ids: Sequence[str]) -> CallResult:
        """StartInstances on 1..100 shut-down instances."""
        ids = _batch_ids(instance_ids)
        return self._mutate("StartInstances", _list_params("instanceIds", ids), None, ids)

    def _key_call(self, action: str, key_id: str, instance_ids: Sequence[str]) -> CallResult:
        key = _check_key_id(key_id)
        ids = _batch_ids(instance_ids)
        params = {"keyId": key, **_list_params("instanceIds", ids)}
        return self._mutate(action, params, key, ids)

    def _mutate(self, action: str, params: dict[str, str], key_id: str | None, ids: list[str]) -> CallResult:
        _, attempts = self._call_counted(action, params, _parse_empty, key_id=key_id, instance_ids=tuple(ids))
        return CallResult(action, attempts)

    # ----------------------------------------------------------------- one call, with retries

    def _call(
        self,
        action: str,
        params: dict[str, str],
        parse: Callable[[dict[str, Any]], T],
        *,
        key_id: str | None = None,
        instance_ids: tuple[str, ...] = (),
    ) -> T:
        return self._call_counted(action, params, parse, key_id=key_id, instance_ids=instance_ids)[0]

    def _call_counted(
        self,
        action: str,
        params: dict[str, str],
        parse: Callable[[dict[str, Any]], T],
        *,
        key_id: str | None = None,
        instance_ids: tuple[str, ...] = (),
    ) -> tuple[T, int]:
        """Send ``action`` until it succeeds, fails permanently, or may not be retried.

        Returns the parsed answer and the number of attempts it took.
        """
        mutating = is_mutating(action)
        max_attempts = self._retry.max_attempts
        for attempt in range(1, max_attempts + 1):
            self._limiter.acquire(action)
            started = self._clock()
            t0 = time.perf_counter()
            answer = _Answer(None, "", None)
            error: CloudError | None = None
            try:
                result = parse(self._send(action, params, answer))
            except _Shape as shape:
                error = TransportError(
                    action,
                    self._scrub(f"unexpected answer: {shape}"),
                    retryable=False,
                    ambiguous=True,
                )
                answer.message = error.detail
            except CloudError as failure:
                error = failure
            duration = time.perf_counter() - t0
            retry_in: float | None = None
            if error is not None and attempt < max_attempts and may_retry(error, mutating=mutating):
                retry_in = self._retry.delay(attempt, self._rng)
            self._report(
                AttemptRecord(
                    time=started,
                    action=action,
                    region=self.region,
                    key_id=key_id,
                    instance_ids=instance_ids,
                    attempt=attempt,
                    code=answer.code,
                    message=answer.message,
                    duration_s=duration,
                    http_status=answer.http_status,
                    retry_in_s=retry_in,
                )
            )
            if error is None:
                return result, attempt
            if retry_in is None:
                raise error
            self._sleep(retry_in)
        raise AssertionError("unreachable: the last attempt either returns or raises")

    def _report(self, record: AttemptRecord) -> None:
        logger.debug(
            "%s attempt %d/%d region=%s -> code=%s http=%s in %.3fs%s",
            record.action,
            record.attempt,
            self._retry.max_attempts,
            record.region,
            record.code,
            record.http_status,
            record.duration_s,
            "" if record.retry_in_s is None else f", retrying in {record.retry_in_s:.2f}s",
        )
        if self._on_attempt is not None:
            with self._callback_lock:
                self._on_attempt(record)

    def _send(self, action: str, params: dict[str, str], answer: _Answer) -> dict[str, Any]:
        """One HTTP exchange. Fills ``answer``; returns the body of a ``code`` 0 answer."""
        with self._lock:
            if self._closed:
                raise RuntimeError("CvmClient is closed")
            self._calls[action] += 1
        # The signer (``auth``) puts the parameters into the URL or body, once.
        request = self._http.build_request(
            self.http_method, self.endpoint, extensions={PARAMS_EXTENSION: {"Action": action, **params}}
        )
        try:
            response = self._http.send(request)
        except (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout) as exc:
            raise self._transport_error(action, exc, retryable=True, ambiguous=False, answer=answer) from None
        except httpx.TimeoutException as exc:
            raise self._transport_error(action, exc, retryable=True, ambiguous=True, answer=answer) from None
        except httpx.UnsupportedProtocol as exc:
            raise self._transport_error(
                action, exc, retryable=False, ambiguous=False, answer=answer
            ) from None
        except httpx.RequestError as exc:
            # Every other httpx request error (a dropped connection, a broken Content-Encoding:
            # httpx.DecodingError is not a TransportError) may have reached the API: ambiguous,
            # observed again for a mutating call. The same rule as the 3.0 call layer (tc3call).
            raise self._transport_error(action, exc, retryable=True, ambiguous=True, answer=answer) from None

        answer.http_status = response.status_code
        if response.status_code != 200:
            answer.message = f"HTTP {response.status_code}"
            raise TransportError(
                action,
                f"HTTP {response.status_code} {response.reason_phrase}".strip(),
                retryable=response.status_code >= 500,
                ambiguous=True,
            )
        try:
            body = response.json()
        except ValueError:
            answer.message = "answer is not JSON"
            raise TransportError(action, "answer is not JSON", retryable=False, ambiguous=True) from None
        if not isinstance(body, dict):
            answer.message = "answer is not a JSON object"
            raise TransportError(action, "answer is not a JSON object", retryable=False, ambiguous=True)
        code = body.get("code")
        if isinstance(code, bool) or not isinstance(code, int):
            answer.message = "answer has no integer 'code'"
            raise TransportError(action, "answer has no integer 'code'", retryable=False, ambiguous=True)
        message = body.get("message")
        answer.code = code
        answer.message = self._scrub(message if isinstance(message, str) else "")
        if code != 0:
            kind = classify(code, answer.message, mutating=is_mutating(action))
            raise ApiError(action, code, answer.message, kind=kind)
        return body

    def _transport_error(
        self,
        action: str,
        exc: Exception,
        *,
        retryable: bool,
        ambiguous: bool,
        answer: _Answer,
    ) -> TransportError:
        # str(exc) of httpx errors is short ("[Errno 111] Connection refused", "timed out"); it
        # never carries the URL, but scrub anyway so no secret can slip through.
        text = str(exc)
        if "Signature" in text or "SecretId" in text:
            text = ""
        detail = self._scrub(f"{type(exc).__name__}: {text}" if text else type(exc).__name__)
        if not ambiguous:
            detail += " (request not sent)"
        answer.message = detail
        return TransportError(action, detail, retryable=retryable, ambiguous=ambiguous)

    def _scrub(self, text: str) -> str:
        for secret in self._auth.secrets():
            if secret in text:
                text = text.replace(secret, "<hidden>")
        return text

    # ----------------------------------------------------------------- concurrency

    def _concurrently(self, fn: Callable[[T], U], items: Sequence[T]) -> list[U]:
        """``[fn(item) for item in items]`` on the pool; the first failure (in order) is raised."""
        if len(items) <= 1 or self._max_workers == 1:
            return [fn(item) for item in items]
        pool = self._get_pool()
        futures: list[Future[U]] = [pool.submit(fn, item) for item in items]
        try:
            return [future.result() for future in futures]
        finally:
            for future in futures:
                future.cancel()

    def _get_pool(self) -> ThreadPoolExecutor:
        with self._lock:
            if self._closed:
                raise RuntimeError("CvmClient is closed")
            if self._pool is None:
                self._pool = ThreadPoolExecutor(
                    max_workers=self._max_workers, thread_name_prefix="cvmkeys-api"
                )
            return self._pool
