"""The emulator's HTTP face: a WSGI app speaking the CVM API 2.0 wire protocol.

Used in-process by tests through ``transport(app)`` (an httpx transport, no sockets) and over
real sockets by ``emulator/server.py``. It parses the request, checks it in the order the real
API does (see ``docs/emulator.md``), applies the rate limit and injected faults, and hands the
action to ``emulator/actions.py``. Every API error is HTTP 200 with
``{"code": N, "message": "...", "codeDesc": "..."}``.

Checks, in order (the first that fails answers):

1. public parameters present and well-formed (Action, Region, Timestamp, Nonce, SecretId,
   Signature; SignatureMethod if given) .............................................. 4000
2. SecretId known ..................................................................... 4104
3. signature, over the Host header the request came with, the method and the path ..... 4100
4. Timestamp within 300 s of the emulator clock; (SecretId, Nonce) not seen in that window 4500
5. Action known (first letter in either case) ......................................... 6100
6. Region known ....................................................................... 4000
7. rate limit of the action ........................................................... 4400
8. injected faults, then the action's own checks: parameters 4000, existence 5000, rules 5100
"""

from __future__ import annotations

import contextvars
import heapq
import json
import re
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl

import httpx

from reconciler.cloud.signing import SIGNATURE_METHODS, string_to_sign, verify
from reconciler.emulator import actions, errors
from reconciler.emulator.faults import (
    ConnectionDropped,
    FaultInjector,
    FaultProfile,
    InjectedFault,
    ResponseTimedOut,
)
from reconciler.emulator.state import ApiFault, FleetState
from reconciler.ids import KNOWN_REGIONS, canonical_region

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIEnvironment

API_PATH = "/v2/index.php"
MAX_CLOCK_SKEW = 300.0  # seconds; "5 minutes in the newer docs"
PUBLIC_PARAMS = ("Action", "Region", "Timestamp", "Nonce", "SecretId", "Signature")
MAX_BODY = 1 << 20

CODE_DESCRIPTIONS: Mapping[int, str] = {
    4000: "InvalidParameter",
    4100: "AuthFailure",
    4104: "AuthFailure.SecretIdNotFound",
    4400: "RequestLimitExceeded",
    4500: "RequestReplayed",
    5000: "ResourceNotFound",
    5100: "OperationFailed",
    5400: "PartialSuccess",
    6000: "InternalError",
    6100: "UnsupportedAction",
    6200: "ServiceUnavailable",
}
_DIGITS = re.compile(r"^[0-9]{1,19}$")
_ACTION_RE = re.compile(r"^[A-Za-z][A-Za-z0-9]*$")

# The read timeout of the in-process request being served (set by ``transport``), so that a
# slow answer can time out at once instead of sleeping.
_read_timeout: contextvars.ContextVar[float | None] = contextvars.ContextVar("read_timeout", default=None)


class TokenBucket:
    """``rate`` tokens a second, holding at most ``burst``; clocked by the injected clock."""

    def __init__(self, rate: float, burst: float, clock: Callable[[], float]) -> None:
        self.rate = rate
        self.burst = burst
        self.clock = clock
        self.tokens = burst
        self.updated = clock()

    def take(self) -> bool:
        now = self.clock()
        self.tokens = min(self.burst, self.tokens + max(0.0, now - self.updated) * self.rate)
        self.updated = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False


class _Answer:
    """An HTTP answer: status line, content type, body."""

    def __init__(self, status: str, body: bytes, content_type: str = "application/json; charset=utf-8"):
        self.status = status
        self.body = body
        self.content_type = content_type

    @classmethod
    def json(cls, document: Mapping[str, Any]) -> _Answer:
        return cls("200 OK", json.dumps(document, ensure_ascii=False).encode("utf-8"))

    @classmethod
    def error(cls, code: int, message: str) -> _Answer:
        return cls.json({"code": code, "message": message, "codeDesc": CODE_DESCRIPTIONS.get(code, "Error")})

    @classmethod
    def http(cls, status: str) -> _Answer:
        return cls(status, f"{status}\n".encode(), "text/plain; charset=utf-8")


class EmulatorApp:
    """The WSGI app. ``request_counts`` counts requests by Action as sent (first letter
    upper-cased); ``injected_faults`` lists every fault injected."""

    def __init__(
        self,
        state: FleetState,
        *,
        clock: Callable[[], float] | None = None,
        rate_limit: float | None = None,
        latency_ms: float = 0.0,
        faults: FaultProfile | None = None,
    ) -> None:
        if rate_limit is not None and rate_limit <= 0:
            raise ValueError("rate_limit must be positive")
        self.state = state
        self.clock = clock or state.clock
        self.rate_limit = rate_limit
        self.latency_ms = latency_ms
        self.faults = faults
        self.request_counts: Counter[str] = Counter()
        self.injected_faults: list[InjectedFault] = []
        self._injector = FaultInjector(faults) if faults is not None else None
        self._buckets: dict[str, TokenBucket] = {}
        self._nonces: set[tuple[str, str]] = set()
        self._nonce_expiry: list[tuple[float, str, str]] = []
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ WSGI

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        answer = self.handle(environ)
        start_response(
            answer.status,
            [("Content-Type", answer.content_type), ("Content-Length", str(len(answer.body)))],
        )
        return [answer.body]

    def handle(self, environ: Mapping[str, Any]) -> _Answer:
        """The answer to one request. Raises ``ConnectionDropped`` to close without one."""
        if self.latency_ms > 0:
            time.sleep(self.latency_ms / 1000.0)
        path = environ.get("PATH_INFO", "")
        if path != API_PATH:
            return _Answer.http("404 Not Found")
        method = str(environ.get("REQUEST_METHOD", "GET")).upper()
        if method not in ("GET", "POST"):
            return _Answer.http("405 Method Not Allowed")
        try:
            params = _read_params(environ, method)
            return self._answer(environ, method, path, params)
        except ApiFault as fault:
            return _Answer.error(fault.code, fault.message)

    # ------------------------------------------------------------------ checks

    def _answer(self, environ: Mapping[str, Any], method: str, path: str, params: dict[str, str]) -> _Answer:
        raw_action = params.get("Action", "")
        action = raw_action[:1].upper() + raw_action[1:]
        if action:
            with self._lock:
                self.request_counts[action] += 1
        _check_public(params)
        secret_id = params["SecretId"]
        secret_key = self.state.secret_key_for(secret_id)
        if secret_key is None:
            return _Answer.error(4104, f"SecretId {secret_id} does not exist or is disabled")
        host = _host_of(environ)
        if not verify(secret_key, method, host, path, params):
            signed = string_to_sign(method, host, path, params)
            return _Answer.error(
                4100,
                f"authentication failed: the signature does not match; the emulator signed {signed!r}",
            )
        replay = self._check_replay(secret_id, params["Timestamp"], params["Nonce"])
        if replay is not None:
            return _Answer.error(4500, replay)
        handler = actions.ACTIONS.get(action)
        if handler is None:
            return _Answer.error(
                6100,
                f"action {raw_action} is not supported by this API (supported: {', '.join(actions.ACTIONS)})",
            )
        region = params["Region"]
        try:
            canonical_region(region)
        except KeyError:
            return _Answer.error(
                errors.InvalidRegion.code, f"unknown region {region!r} (known: {', '.join(KNOWN_REGIONS)})"
            )
        if not self._take_token(action):
            return _Answer.error(
                4400, f"request quota exceeded: at most {self.rate_limit:g} {action} a second"
            )
        action_params = actions.Params({name.replace("_", "."): value for name, value in params.items()})
        self.state.refresh()
        fault = self._draw_fault(action, action_params)
        if fault is not None:
            early = self._inject_before(fault, action, region, action_params)
            if early is not None:
                return early
        answer = _Answer.json(handler(self.state, region, action_params))
        if fault is not None:
            self._inject_after(fault, action)
        return answer

    def _check_replay(self, secret_id: str, timestamp: str, nonce: str) -> str | None:
        now = self.clock()
        sent = int(timestamp)
        if abs(now - sent) > MAX_CLOCK_SKEW:
            return (
                f"request expired or replayed: Timestamp {sent} is {abs(now - sent):.0f} s away from "
                f"server time {now:.0f} (at most {MAX_CLOCK_SKEW:.0f} s allowed)"
            )
        with self._lock:
            while self._nonce_expiry and self._nonce_expiry[0][0] < now:
                _, old_id, old_nonce = heapq.heappop(self._nonce_expiry)
                self._nonces.discard((old_id, old_nonce))
            if (secret_id, nonce) in self._nonces:
                return f"request replayed: Nonce {nonce} was already used with this SecretId"
            self._nonces.add((secret_id, nonce))
            # Remember it as long as a request with this Timestamp could still be accepted.
            heapq.heappush(self._nonce_expiry, (sent + MAX_CLOCK_SKEW, secret_id, nonce))
        return None

    def _take_token(self, action: str) -> bool:
        if self.rate_limit is None:
            return True
        with self._lock:
            bucket = self._buckets.get(action)
            if bucket is None:
                burst = max(1.0, self.rate_limit)
                bucket = self._buckets[action] = TokenBucket(self.rate_limit, burst, self.clock)
            return bucket.take()

    # ------------------------------------------------------------------ faults

    def _draw_fault(self, action: str, params: actions.Params) -> str | None:
        if self._injector is None:
            return None
        can_partial = (
            action in ("UnBindInstanceKey", "BindInstanceKey")
            and len(set(params.listed("instanceIds") or [])) >= 2
        )
        return self._injector.draw(action, can_partial=can_partial)

    def _record(self, action: str, kind: str, detail: str) -> None:
        with self._lock:
            self.injected_faults.append(InjectedFault(self.clock(), action, kind, detail))

    def _inject_before(self, fault: str, action: str, region: str, params: actions.Params) -> _Answer | None:
        assert self._injector is not None
        if fault == "throttle":
            self._record(action, fault, "code 4400")
            return _Answer.error(4400, "request quota exceeded (injected)")
        if fault == "error":
            code = 6000 if self._injector.coin() else 6200
            self._record(action, fault, f"code {code}")
            text = "internal server error" if code == 6000 else "API temporarily unavailable"
            return _Answer.error(code, f"{text} (injected)")
        if fault == "http":
            status = "502 Bad Gateway" if self._injector.coin() else "503 Service Unavailable"
            self._record(action, fault, f"HTTP {status[:3]}")
            return _Answer.http(status)
        if fault == "drop":
            self._record(action, fault, "connection closed before the call was carried out")
            raise ConnectionDropped("injected: connection dropped")
        if fault == "partial":
            return self._partial(action, region, params)
        return None

    def _partial(self, action: str, region: str, params: actions.Params) -> _Answer | None:
        assert self._injector is not None
        key_id, ids = actions.parse_key_call({"keyId": params.get("keyId") or "", **_listed(params)})
        ids = list(dict.fromkeys(ids))
        # A call the API would refuse anyway gets its normal answer.
        self.state.check_key_operation(action, region, key_id, ids)
        done, failed = self._injector.split(ids)
        if action == "BindInstanceKey":
            self.state.bind_instance_key(region, key_id, done)
        else:
            self.state.unbind_instance_key(region, key_id, done)
        self._record(action, "partial", f"done {','.join(done)}; failed {','.join(failed)}")
        return _Answer.error(
            errors.PartialSuccess.code,
            f"{action}: partial success in a batch: done: {', '.join(done)}; "
            f"failed: {', '.join(failed)} (injected)",
        )

    def _inject_after(self, fault: str, action: str) -> None:
        assert self._injector is not None
        if fault == "lost":
            self._record(action, fault, "carried out, then the connection closed without an answer")
            raise ConnectionDropped("injected: answer lost after the call was carried out")
        if fault == "slow":
            delay = self.faults.slow_seconds if self.faults is not None else 0.0
            timeout = _read_timeout.get()
            if timeout is not None and delay >= timeout:
                self._record(action, fault, f"answer after {delay:g} s; the client gave up at {timeout:g} s")
                raise ResponseTimedOut(f"injected: answer would take {delay:g} s")
            self._record(action, fault, f"answer after {delay:g} s")
            time.sleep(delay)


def _listed(params: actions.Params) -> dict[str, str]:
    return {f"instanceIds.{n}": value for n, value in enumerate(params.listed("instanceIds") or [])}


def _check_public(params: Mapping[str, str]) -> None:
    missing = [name for name in PUBLIC_PARAMS if not params.get(name)]
    if missing:
        raise errors.InvalidParameter(f"missing public parameter(s): {', '.join(missing)}")
    bad = []
    if not _ACTION_RE.match(params["Action"]):
        bad.append(f"Action {params['Action']!r} is not an action name")
    for name in ("Timestamp", "Nonce"):
        if not _DIGITS.match(params[name]) or int(params[name]) <= 0:
            bad.append(f"{name} must be a positive integer, not {params[name]!r}")
    method = params.get("SignatureMethod")
    if method is not None and method not in SIGNATURE_METHODS:
        bad.append(f"SignatureMethod must be one of {', '.join(SIGNATURE_METHODS)}, not {method!r}")
    if bad:
        raise errors.InvalidParameter("; ".join(bad))


def _host_of(environ: Mapping[str, Any]) -> str:
    host = environ.get("HTTP_HOST")
    if host:
        return str(host)
    name = str(environ.get("SERVER_NAME", ""))
    port = str(environ.get("SERVER_PORT", ""))
    default = "443" if environ.get("wsgi.url_scheme") == "https" else "80"
    return name if port in ("", default) else f"{name}:{port}"


def _parse_form(text: bytes | str, where: str) -> list[tuple[str, str]]:
    try:
        raw = text.decode("ascii") if isinstance(text, bytes) else text
        return parse_qsl(raw, keep_blank_values=True, strict_parsing=False, errors="strict")
    except (UnicodeDecodeError, UnicodeEncodeError, ValueError):
        raise errors.InvalidParameter(f"the {where} is not valid URL-encoded UTF-8") from None


def _read_params(environ: Mapping[str, Any], method: str) -> dict[str, str]:
    pairs = _parse_form(str(environ.get("QUERY_STRING", "")), "query string")
    if method == "POST":
        content_type = str(environ.get("CONTENT_TYPE", "")).split(";")[0].strip().lower()
        if content_type != "application/x-www-form-urlencoded":
            raise errors.InvalidParameter(
                f"a POST body must be application/x-www-form-urlencoded, not {content_type or 'missing'}",
            )
        try:
            length = int(environ.get("CONTENT_LENGTH") or 0)
        except ValueError:
            length = 0
        if length > MAX_BODY:
            raise errors.InvalidParameter("request body too large")
        body = environ["wsgi.input"].read(length) if length > 0 else b""
        pairs += _parse_form(body, "request body")
    params: dict[str, str] = {}
    seen: set[str] = set()
    for name, value in pairs:
        normal = name.replace("_", ".")
        if normal in seen:
            raise errors.InvalidParameter(f"parameter {name} is given more than once")
        seen.add(normal)
        params[name] = value
    return params


# --------------------------------------------------------------------------- in-process


class EmulatorTransport(httpx.BaseTransport):
    """An httpx transport into an ``EmulatorApp`` with no sockets.

    Injected faults look as they do over a socket: a dropped connection raises
    ``httpx.RemoteProtocolError``, an answer slower than the request's read timeout raises
    ``httpx.ReadTimeout`` (at once: nobody waits for it).
    """

    def __init__(self, app: EmulatorApp) -> None:
        self.app = app
        self._wsgi = httpx.WSGITransport(app=app)

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        timeouts = request.extensions.get("timeout") or {}
        token = _read_timeout.set(timeouts.get("read"))
        try:
            return self._wsgi.handle_request(request)
        except ConnectionDropped:
            raise httpx.RemoteProtocolError(
                "Server disconnected without sending a response.", request=request
            ) from None
        except ResponseTimedOut:
            raise httpx.ReadTimeout("timed out", request=request) from None
        finally:
            _read_timeout.reset(token)


def transport(app: EmulatorApp) -> EmulatorTransport:
    """The httpx transport to use for ``httpx.Client(transport=transport(app))``."""
    return EmulatorTransport(app)
