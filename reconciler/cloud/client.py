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
import re
from collections import Counter
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

import httpx

if TYPE_CHECKING:  # only for the annotations; Python 3.10's typing has no Unpack
    from typing_extensions import Unpack

from reconciler.cloud import signing
from reconciler.cloud.auth import PARAMS_EXTENSION, Api2Auth
from reconciler.cloud.base import AnswerShapeError as _Shape
from reconciler.cloud.base import (
    AttemptRecord,
    CallResult,
    check_answered,
    check_instance_id,
    check_key_id,
    field_dict,
    field_int,
    field_list,
    hide,
    id_list,
)
from reconciler.cloud.credentials import Credentials, CredentialsProvider
from reconciler.cloud.endpoint import DEFAULT_ENDPOINT, DEFAULT_PATH, check_endpoint, http_client
from reconciler.cloud.pooled import ClientArgs, PooledClient
from reconciler.cloud.retry import (
    Attempt,
    ClientTuning,
    Retrier,
    is_mutating,
    json_answer,
    may_retry,
    request_failure,
)
from reconciler.common import short_repr as _show
from reconciler.errors import ApiError, ApiErrorKind, ConfigError, TransportError
from reconciler.ids import is_instance_id, is_key_id
from reconciler.model import (
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
        return ApiErrorKind.THROTTLED
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


def _batch_ids(instance_ids: Sequence[str]) -> list[str]:
    """Instance IDs of one mutating call: 1..100 valid, distinct IDs."""
    ids = id_list(instance_ids, check_instance_id, "instance_ids")
    if len(ids) != len(instance_ids):
        raise ValueError("instance_ids contains duplicates")
    if not 1 <= len(ids) <= MAX_IDS_PER_CALL:
        raise ValueError(f"a call takes 1 to {MAX_IDS_PER_CALL} instance IDs, got {len(ids)}")
    return ids


def _list_params(name: str, values: Sequence[str]) -> dict[str, str]:
    return {f"{name}.{i}": value for i, value in enumerate(values)}


# --------------------------------------------------------------------------- answer parsing


def _str(body: dict[str, Any], name: str, *, default: str | None = None) -> str:
    value = body.get(name, default)
    if value is None and default is not None:
        return default
    if not isinstance(value, str):
        raise _Shape(f"{name!r} is not a string")
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
    item = field_dict(entry, "an sshSet entry")
    key_id = _str(item, "keyId")
    if not is_key_id(key_id):
        raise _Shape(f"keyId {_show(key_id)} is not a key ID")
    # Absent or null bindUnInstanceIds: treated as no bindings (the docs show it on every key).
    raw_bound = item.get("bindUnInstanceIds")
    bound = field_list(item, "bindUnInstanceIds") if raw_bound is not None else []
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
    item = field_dict(entry, "an instanceSet entry")
    instance_id = _str(item, "unInstanceId")
    if not is_instance_id(instance_id):
        raise _Shape(f"unInstanceId {_show(instance_id)} is not an instance ID")
    state, word = instance_state(field_int(item, "status"))
    return Instance(
        instance_id=instance_id,
        name=_str(item, "instanceName", default=""),
        state=state,
        api_state=word,
        os=_str(item, "os"),
    )


def _parse_key_page(body: dict[str, Any]) -> tuple[int, list[KeyPair]]:
    data = field_dict(body.get("data"), "'data'")
    total = field_int(data, "totalCount")
    keys = [_parse_key(entry) for entry in field_list(data, "sshSet")]
    if total < 0 or len(keys) > PAGE_SIZE:
        raise _Shape("totalCount or sshSet size out of range")
    return total, keys


def _parse_instances(body: dict[str, Any]) -> tuple[int, list[Instance]]:
    # DescribeInstances has no ``data`` wrapper.
    total = field_int(body, "totalCount")
    return total, [_parse_instance(entry) for entry in field_list(body, "instanceSet")]


def _parse_empty(body: dict[str, Any]) -> None:
    return None


# --------------------------------------------------------------------------- the client


class CvmClient(PooledClient):
    """A synchronous, thread-safe CVM API 2.0 client for one region.

    ``http_method`` and ``signature_method`` are 2.0's own; the other keywords are
    ``retry.TuningArgs``, as the 3.0 client's: ``transport`` replaces the network (e.g. the
    emulator's in-process transport); ``rate_limit`` is requests per second per action, one rate
    for all or a table over the documented figures (the default,
    ``model.DOCUMENTED_RATE_LIMITS``), 0 or None unlimited; attempts, backoff, timeout,
    ``clock``, ``sleep``, ``rng``, ``max_workers``, ``on_attempt``. Implements
    ``cloud.base.CloudClient``.
    """

    api = ApiVersion.V2
    _total_name = "totalCount"

    default_endpoint = DEFAULT_ENDPOINT
    default_path = DEFAULT_PATH

    def __init__(
        self,
        credentials: Credentials | CredentialsProvider,
        region: str,
        *,
        http_method: str = "GET",
        signature_method: str = signing.HMAC_SHA256,
        **place_and_tuning: Unpack[ClientArgs],
    ) -> None:
        self.http_method = http_method.upper()
        if self.http_method not in ("GET", "POST"):
            raise ConfigError(f"http_method must be GET or POST, not {_show(http_method)}")
        if signature_method not in signing.SIGNATURE_METHODS:
            raise ConfigError(
                f"signature method must be one of {', '.join(signing.SIGNATURE_METHODS)}, "
                f"not {_show(signature_method)}"
            )
        self.signature_method = signature_method
        super().__init__(credentials, region, **place_and_tuning)

    def _open(self, provider: CredentialsProvider, settings: ClientTuning) -> None:
        self._retrier = Retrier(settings, logger)
        self._limiter = settings.limiter()
        self._calls: Counter[str] = Counter()
        method, clock = self.signature_method, settings.clock
        self._auth = Api2Auth(provider, self.region, signature_method=method, clock=clock)
        self._http = http_client(self.endpoint, self._auth, settings.transport, settings.timeout)

    @property
    def calls(self) -> Counter[str]:
        """HTTP requests sent so far, by action (every attempt counts); a snapshot copy."""
        with self._lock:
            return Counter(self._calls)

    def _close_http(self) -> None:
        self._http.close()

    # ----------------------------------------------------------------- reads

    def _key_page(self, offset: int) -> tuple[int, list[KeyPair]]:
        params = {"offset": str(offset), "limit": str(PAGE_SIZE)}
        return self._call("DescribeKeyPairs", params, _parse_key_page)[0]

    def _key_batch(self, chunk: Sequence[str]) -> list[KeyPair]:
        params = {**_list_params("keyIds", chunk), "offset": "0", "limit": str(PAGE_SIZE)}

        def parse(body: dict[str, Any]) -> list[KeyPair]:
            total, keys = _parse_key_page(body)
            check_answered(chunk, [key.key_id for key in keys], total, "key", self._total_name)
            return keys

        return self._call("DescribeKeyPairs", params, parse, instance_ids=())[0]

    def _instance_batch(self, chunk: Sequence[str]) -> list[Instance]:
        params = {**_list_params("instanceIds", chunk), "offset": "0", "limit": str(PAGE_SIZE)}

        def parse(body: dict[str, Any]) -> list[Instance]:
            total, instances = _parse_instances(body)
            found = [instance.instance_id for instance in instances]
            check_answered(chunk, found, total, "instance", self._total_name)
            return instances

        return self._call("DescribeInstances", params, parse, instance_ids=tuple(chunk))[0]

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
        key = check_key_id(key_id)
        ids = _batch_ids(instance_ids)
        params = {"keyId": key, **_list_params("instanceIds", ids)}
        return self._mutate(action, params, key, ids)

    def _mutate(self, action: str, params: dict[str, str], key_id: str | None, ids: list[str]) -> CallResult:
        _, attempts = self._call(action, params, _parse_empty, key_id=key_id, instance_ids=tuple(ids))
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
    ) -> tuple[T, int]:
        """Send ``action`` until it succeeds, fails permanently, or may not be retried.

        Returns the parsed answer and the number of attempts it took.
        """
        mutating = is_mutating(action)

        def send(attempt: Attempt) -> T:
            try:
                return parse(self._send(action, params, attempt))
            except _Shape as shape:
                detail = self._scrub(f"unexpected answer: {shape}")
                attempt.message = detail
                raise TransportError(action, detail, retryable=False, ambiguous=True) from None

        def record(attempt: Attempt) -> AttemptRecord:
            return attempt.record(action, self.region, key_id=key_id, instance_ids=instance_ids)

        result, last = self._retrier.run(
            send,
            retryable=lambda error: may_retry(error, mutating=mutating),
            record=record,
            wait=lambda: self._limiter.acquire(action),
        )
        return result, last.number

    def _send(self, action: str, params: dict[str, str], answer: Attempt) -> dict[str, Any]:
        """One HTTP exchange. Fills ``answer``; returns the body of a ``code`` 0 answer."""
        with self._lock:
            self._check_open()
            self._calls[action] += 1
        # The signer (``auth``) puts the parameters into the URL or body, once.
        request = self._http.build_request(
            self.http_method, self.endpoint, extensions={PARAMS_EXTENSION: {"Action": action, **params}}
        )
        try:
            response = self._http.send(request)
        except httpx.RequestError as exc:
            error = request_failure(action, exc, self._scrub)
            answer.message = error.detail
            raise error from None

        answer.http_status = response.status_code
        try:
            body = json_answer(action, response)
        except TransportError as error:
            # The record says only the status; the error, the reason too.
            answer.message = f"HTTP {response.status_code}" if response.status_code != 200 else error.detail
            raise
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

    def _scrub(self, text: str) -> str:
        return hide(text, self._auth.secrets())
