"""One API 3.0 call over HTTP: TC3 signing as an ``httpx.Auth`` flow, the ``Response`` envelope,
error classification, rate limit, retries and attempt records. Shared by every 3.0 service
cvmkeys calls: CVM (``reconciler.cloud.api3``) and STS (``reconciler.cloud.sts``).

- :class:`Tc3Auth` asks its :class:`~reconciler.cloud.credentials.CredentialsProvider` for the
  credentials on every attempt (so temporary credentials are renewed during a long apply), stamps
  a fresh ``X-TC-Timestamp``, adds ``X-TC-Token`` when the credentials carry one, and signs with
  ``reconciler.cloud.tc3`` (the one implementation). Without a provider it sends the unsigned
  form STS's ``AssumeRoleWithWebIdentity`` takes (``Authorization: SKIP``).
- Answers: HTTP 200 with ``{"Response": {...,"RequestId"}}``; an API error is
  ``Response.Error.Code`` (a string), classified by :func:`classify` into an
  ``ApiErrorKind``. Anything else is a ``TransportError``.
- Retries follow ``reconciler.cloud.retry``'s policy and its one rule (``may_retry``, as the 2.0
  client's): reads are retried on every THROTTLED (``RequestLimitExceeded*``) or RETRYABLE
  code, mutating calls only on THROTTLED (refused before it was carried out) or when the request
  was certainly not sent. ``InternalError`` on a mutating call is AMBIGUOUS: never retried.
"""

from __future__ import annotations

import json
import logging
import threading
from collections import Counter
from collections.abc import Callable, Generator, Mapping
from typing import Any, TypeVar

import httpx

from reconciler.cloud import tc3
from reconciler.cloud.base import AnswerShapeError as _Shape
from reconciler.cloud.base import AttemptRecord, field_dict, field_int, field_list, field_str, hide
from reconciler.cloud.credentials import Credentials, CredentialsProvider
from reconciler.cloud.endpoint import http_client
from reconciler.cloud.retry import (
    Attempt,
    ClientTuning,
    Retrier,
    json_answer,
    may_retry,
    request_failure,
)
from reconciler.errors import ApiError, ApiErrorKind, TransportError

logger = logging.getLogger(__name__)

T = TypeVar("T")

JSON_CONTENT_TYPE = "application/json"
UNSIGNED = "SKIP"  # what Tencent's SDK sends for an unsigned call (AssumeRoleWithWebIdentity)

# --------------------------------------------------------------------------- error codes

BUSY_CODES = frozenset({"OperationDenied.InstanceOperationInProgress", "MutexOperation.TaskRunning"})
NOT_FOUND_CODES = frozenset({"InvalidInstanceId.NotFound", "InvalidKeyPairId.NotFound"})
BLOCKED_CODES = frozenset(
    {"UnsupportedOperation.InstanceOsWindows", "UnsupportedOperation.StoppedModeStopCharging"}
)
BLOCKED_PREFIX = "UnsupportedOperation.InstanceState"
INTERNAL_CODES = frozenset({"InternalError", "InternalServerError", "ResourceUnavailable"})
THROTTLE_PREFIX = "RequestLimitExceeded"

# What to do about each authentication failure; the message never holds a secret.
AUTH_HINTS: Mapping[str, str] = {
    "AuthFailure.SignatureExpire": "this machine's clock is more than 5 minutes off; sync it (NTP) and retry",
    "AuthFailure.SecretIdNotFound": "the SecretId does not exist, or was disabled or deleted: check which "
    "credentials were used (the log says where they came from)",
    "AuthFailure.InvalidSecretId": "the SecretId is not an API key ID (a SecretId starts with AKID)",
    "AuthFailure.SignatureFailure": "the SecretKey does not belong to the SecretId; copy both again",
    "AuthFailure.TokenFailure": "the session token is invalid or expired: temporary credentials need "
    "TENCENTCLOUD_SECURITY_TOKEN with the SecretId/SecretKey they were issued with",
    "AuthFailure.InvalidAuthorization": "the Authorization header was refused; check the endpoint and region",
    "AuthFailure.MFAFailure": "the account requires MFA for this call; use a role or key without MFA",
    "AuthFailure.UnauthorizedOperation": "this identity lacks a CAM permission for the action; grant it "
    "(docs/credentials.md lists the policies for plan and apply)",
}
_UNAUTHORIZED_HINT = "this identity is not allowed to do this; grant the CAM permission (docs/credentials.md)"


def classify(code: str, *, mutating: bool) -> ApiErrorKind:
    """The kind of a 3.0 error code (CONTRACT.md), for a read or a mutating call."""
    if code.startswith(THROTTLE_PREFIX):
        return ApiErrorKind.THROTTLED
    if code in INTERNAL_CODES or code.startswith("InternalError."):
        return ApiErrorKind.AMBIGUOUS if mutating else ApiErrorKind.RETRYABLE
    if code in BUSY_CODES:
        return ApiErrorKind.BUSY
    if code in BLOCKED_CODES or code.startswith(BLOCKED_PREFIX):
        return ApiErrorKind.BLOCKED
    if code in NOT_FOUND_CODES:
        return ApiErrorKind.NOT_FOUND
    if code.startswith(("AuthFailure", "UnauthorizedOperation")):
        return ApiErrorKind.AUTH
    return ApiErrorKind.INVALID


def hint_for(code: str) -> str | None:
    """What the user can do about an authentication/authorisation error, if anything."""
    if code in AUTH_HINTS:
        return AUTH_HINTS[code]
    if code.startswith("AuthFailure"):
        return "authentication failed; check the credentials (docs/credentials.md)"
    if code.startswith("UnauthorizedOperation"):
        return _UNAUTHORIZED_HINT
    return None


# --------------------------------------------------------------------------- signing


class Tc3Auth(httpx.Auth):
    """Signs a 3.0 JSON POST per attempt (module docstring); ``provider`` None: unsigned."""

    requires_request_body = True

    def __init__(
        self, provider: CredentialsProvider | None, *, service: str, clock: Callable[[], float]
    ) -> None:
        self._provider = provider
        self._service = service
        self._clock = clock
        self._lock = threading.Lock()
        self._seen: list[Credentials] = []  # what was signed with, only to scrub messages
        self._extra: list[str] = []

    def __repr__(self) -> str:
        source = self._provider.source if self._provider is not None else "unsigned"
        return f"Tc3Auth(service={self._service!r}, credentials={source!r})"

    def secrets(self) -> list[str]:
        """Secret keys and tokens signed with so far: never to appear in a message."""
        with self._lock:
            return [*self._extra, *(s for c in self._seen for s in (c.secret_key, c.token) if s)]

    def remember_secret(self, secret: str) -> None:
        """One more value to scrub from messages (an OIDC token sent in the body)."""
        with self._lock:
            self._extra.append(secret)

    def sign(self, request: httpx.Request) -> None:
        timestamp = int(self._clock())
        request.headers["X-TC-Timestamp"] = str(timestamp)
        if self._provider is None:
            request.headers.pop("X-TC-Token", None)
            request.headers["Authorization"] = UNSIGNED
            return
        credentials = self._provider.get()
        with self._lock:
            if not any(c is credentials for c in self._seen):
                self._seen = [*self._seen[-3:], credentials]
        if credentials.token:
            request.headers["X-TC-Token"] = credentials.token
        else:
            request.headers.pop("X-TC-Token", None)
        request.headers["Authorization"] = tc3.authorization(
            credentials.secret_id,
            credentials.secret_key,
            service=self._service,
            timestamp=timestamp,
            method=request.method,
            headers={"content-type": request.headers["Content-Type"], "host": request.headers["Host"]},
            payload=request.content,
        )

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        self.sign(request)
        yield request


# --------------------------------------------------------------------------- one call


class Tc3Caller:
    """Sends 3.0 calls of one service to one endpoint; thread-safe.

    ``tuning`` gives the transport, the rate limiter (asked before every attempt), attempts,
    backoff, timeout, clock, sleep,
    jitter and the attempt callback (``max_workers`` is not used here).
    """

    def __init__(
        self,
        *,
        service: str,
        version: str,
        endpoint: str,
        region: str | None,
        auth: Tc3Auth,
        mutating_actions: frozenset[str] = frozenset(),
        tuning: ClientTuning,
    ) -> None:
        self.service = service
        self.version = version
        self.endpoint = endpoint
        self.region = region
        self.auth = auth
        self._mutating = mutating_actions
        self._tuning = tuning
        self._retrier = Retrier(self._tuning, logger)
        self._limiter = self._tuning.limiter()
        self._lock = threading.Lock()
        self._calls: Counter[str] = Counter()
        self._closed = False
        self._http = http_client(endpoint, auth, self._tuning.transport, self._tuning.timeout)

    @property
    def calls(self) -> Counter[str]:
        with self._lock:
            return Counter(self._calls)

    def close(self) -> None:
        with self._lock:
            self._closed = True
        self._http.close()

    def call(
        self,
        action: str,
        params: Mapping[str, Any],
        parse: Callable[[dict[str, Any]], T],
        *,
        key_ids: tuple[str, ...] = (),
        instance_ids: tuple[str, ...] = (),
    ) -> tuple[T, int, str | None]:
        """Send ``action`` until it succeeds, fails permanently, or may not be retried.

        Returns the parsed ``Response``, the number of attempts and the answer's RequestId.
        """
        mutating = action in self._mutating
        body = json.dumps(dict(params), separators=(",", ":")).encode("ascii")

        def send(attempt: Attempt) -> T:
            try:
                response = self._send(action, body, attempt)
                attempt.request_id = _request_id(response)
                failure = response.get("Error")
                if failure is not None:
                    attempt.code, api_message = _error_fields(failure)
                    attempt.message = self._scrub(api_message)
                    raise ApiError(
                        action,
                        attempt.code,
                        attempt.message,
                        kind=classify(attempt.code, mutating=mutating),
                        request_id=attempt.request_id,
                        hint=hint_for(attempt.code),
                    )
                return parse(response)
            except _Shape as shape:
                attempt.message = self._scrub(f"unexpected answer: {shape}")
                raise TransportError(action, attempt.message, retryable=False, ambiguous=True) from None
            except TransportError as failure:
                attempt.message = failure.detail
                raise

        def record(attempt: Attempt) -> AttemptRecord:
            key_id = key_ids[0] if len(key_ids) == 1 else None
            return attempt.record(
                action, self.region or "", key_id=key_id, key_ids=key_ids, instance_ids=instance_ids
            )

        result, last = self._retrier.run(
            send,
            retryable=lambda error: may_retry(error, mutating=mutating),
            record=record,
            wait=lambda: self._wait(action),
        )
        return result, last.number, last.request_id

    def _wait(self, action: str) -> None:
        self._limiter.acquire(action)

    def _send(self, action: str, body: bytes, answer: Attempt) -> dict[str, Any]:
        """One HTTP exchange; the ``Response`` object of an HTTP 200 JSON answer."""
        with self._lock:
            if self._closed:
                raise RuntimeError("client is closed")
            self._calls[action] += 1
        headers = {
            "Content-Type": JSON_CONTENT_TYPE,
            "X-TC-Action": action,
            "X-TC-Version": self.version,
        }
        if self.region:
            headers["X-TC-Region"] = self.region
        request = self._http.build_request("POST", self.endpoint, content=body, headers=headers)
        try:
            response = self._http.send(request)
        except httpx.RequestError as exc:
            raise request_failure(action, exc, self._scrub) from None
        answer.http_status = response.status_code
        data = json_answer(action, response)
        envelope = data.get("Response") if isinstance(data, dict) else None
        if not isinstance(envelope, dict):
            raise TransportError(action, "answer has no 'Response' object", retryable=False, ambiguous=True)
        return envelope

    def _scrub(self, text: str) -> str:
        return hide(text, self.auth.secrets())


def _request_id(response: dict[str, Any]) -> str | None:
    value = response.get("RequestId")
    return value if isinstance(value, str) and value else None


def _error_fields(failure: object) -> tuple[str, str]:
    if not isinstance(failure, dict):
        raise _Shape("Response.Error is not an object")
    code, message = failure.get("Code"), failure.get("Message", "")
    if not isinstance(code, str) or not code:
        raise _Shape("Response.Error has no string Code")
    return code, message if isinstance(message, str) else ""


__all__ = [
    "Tc3Auth",
    "Tc3Caller",
    "classify",
    "field_dict",
    "field_int",
    "field_list",
    "field_str",
    "hint_for",
]
