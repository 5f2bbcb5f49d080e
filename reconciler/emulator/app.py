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

import heapq
import hmac
import re
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any

import httpx

from reconciler.cloud.signing import SIGNATURE_METHODS, string_to_sign, verify
from reconciler.emulator import actions, errors, metadata
from reconciler.emulator.faults import (
    ConnectionDropped,
    FaultInjector,
    FaultProfile,
    InjectedFault,
    ResponseTimedOut,
)
from reconciler.emulator.state import ApiFault, FleetState, Secret
from reconciler.emulator.wire import Answer, TokenBucket, host_of, parse_form, read_body, read_timeout
from reconciler.ids import KNOWN_REGIONS, canonical_region

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIEnvironment

API_PATH = "/v2/index.php"
API3_PATH = "/"  # API 3.0 and STS (emulator/api3.py)
METADATA_PREFIX = metadata.PREFIX
MAX_CLOCK_SKEW = 300.0  # seconds; "5 minutes in the newer docs"
PUBLIC_PARAMS = ("Action", "Region", "Timestamp", "Nonce", "SecretId", "Signature")
MAX_BODY = 1 << 20

_DIGITS = re.compile(r"^[0-9]{1,19}$")
_ACTION_RE = re.compile(r"^[A-Za-z][A-Za-z0-9]*$")
_Answer = Answer
_read_timeout = read_timeout


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
        api3_limits: Mapping[str, float] | None = None,
    ) -> None:
        if rate_limit is not None and rate_limit <= 0:
            raise ValueError("rate_limit must be positive")
        if api3_limits is not None and any(rate <= 0 for rate in api3_limits.values()):
            raise ValueError("api3_limits must be positive")
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
        # API 3.0's per-action limits (``api3.DOCUMENTED_LIMITS`` is the cloud's); None: the
        # same ``rate_limit`` for every action as in 2.0 (None there too: no limit).
        self.api3_limits = dict(api3_limits) if api3_limits is not None else None
        from reconciler.emulator.api3 import Api3Face  # the 3.0 face uses this app's shared parts

        self._api3 = Api3Face(self)

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
        method = str(environ.get("REQUEST_METHOD", "GET")).upper()
        if path.startswith(METADATA_PREFIX):
            return metadata.handle(self.state, path, method)
        if path not in (API_PATH, API3_PATH):
            return _Answer.http("404 Not Found")
        if method not in ("GET", "POST"):
            return _Answer.http("405 Method Not Allowed")
        if path == API3_PATH:
            return self._api3.handle(environ, method)
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
        secret = self.state.secret(secret_id)
        if secret is None:
            return _Answer.error(4104, f"SecretId {secret_id} does not exist or is disabled")
        host = _host_of(environ)
        if not verify(secret.secret_key, method, host, path, params):
            signed = string_to_sign(method, host, path, params)
            return _Answer.error(
                4100,
                f"authentication failed: the signature does not match; the emulator signed {signed!r}",
            )
        replay = self._check_replay(secret_id, params["Timestamp"], params["Nonce"])
        if replay is not None:
            return _Answer.error(4500, replay)
        # Temporary credentials need their token in the signed Token parameter, as Tencent's
        # 2.0 SDK sends it.
        self.check_token(secret, params.get("Token"))
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

    def check_token(self, secret: Secret, token: str | None) -> None:
        """Raise ``TokenFailure`` unless temporary credentials come with their token, unexpired."""
        if secret.token is None:
            return  # long-lived credentials: a token is neither needed nor looked at
        if not token:
            raise errors.TokenFailure(
                f"SecretId {secret.secret_id} is a temporary credential: its token must be sent"
            )
        if not hmac.compare_digest(token.encode("utf-8"), secret.token.encode("utf-8")):
            raise errors.TokenFailure("the token does not belong to this SecretId")
        if secret.expires is not None and self.clock() >= secret.expires:
            raise errors.TokenFailure(f"the temporary credentials expired at {secret.expires:.0f}")

    def check_replay(self, secret_id: str, timestamp: str, nonce: str) -> str | None:
        """An error text if the Timestamp is out of the window or the Nonce was used, else None."""
        return self._check_replay(secret_id, timestamp, nonce)

    def take_token(self, action: str, rate: float | None) -> bool:
        """A token from ``action``'s bucket (``rate`` a second); True when there is no limit."""
        if rate is None:
            return True
        with self._lock:
            bucket = self._buckets.get(action)
            if bucket is None:
                bucket = self._buckets[action] = TokenBucket(rate, max(1.0, rate), self.clock)
            return bucket.take()

    def _take_token(self, action: str) -> bool:
        return self.take_token(action, self.rate_limit)

    def record_fault(self, action: str, kind: str, detail: str) -> None:
        self._record(action, kind, detail)

    def draw_fault(self, action: str) -> str | None:
        """A fault for a 3.0 request (no partial success there), or None."""
        return None if self._injector is None else self._injector.draw(action, can_partial=False, api3=True)

    def inject_after(self, fault: str, action: str) -> None:
        """Faults that strike after the call was carried out (lost and slow answers)."""
        self._inject_after(fault, action)

    def coin(self) -> bool:
        return self._injector.coin() if self._injector is not None else False

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


_host_of = host_of
_parse_form = parse_form


def _read_params(environ: Mapping[str, Any], method: str) -> dict[str, str]:
    pairs = _parse_form(str(environ.get("QUERY_STRING", "")), "query string")
    if method == "POST":
        content_type = str(environ.get("CONTENT_TYPE", "")).split(";")[0].strip().lower()
        if content_type != "application/x-www-form-urlencoded":
            raise errors.InvalidParameter(
                f"a POST body must be application/x-www-form-urlencoded, not {content_type or 'missing'}",
            )
        body = read_body(environ, MAX_BODY)
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
