"""The emulator's HTTP front: a WSGI app that routes each request to its wire layer.

Used in-process by tests through ``transport(app)`` (an httpx transport, no sockets) and over
real sockets by ``emulator/server.py``. One app, one port, one backend (``FleetState``), a wire
layer per API (as moto has one per service):

* ``/v2/index.php``: the CVM API 2.0 (``emulator/api2.py``);
* ``/``: the CVM API 3.0 and STS (``emulator/api3.py``, ``emulator/sts.py``);
* ``/latest/meta-data/``: the instance metadata service (``emulator/metadata.py``);
* anything else: HTTP 404; a method other than GET and POST on an API path: 405.

What the layers share lives here: the emulator clock, request counts, the (SecretId, Nonce)
window, token buckets, the fault injector and its record, the token check of temporary
credentials, and the artificial latency.
"""

from __future__ import annotations

import heapq
import hmac
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any

import httpx

from reconciler.cloud.ratelimit import TokenBucket
from reconciler.emulator import errors, metadata
from reconciler.emulator.api2 import API_PATH, Api2Face
from reconciler.emulator.faults import (
    ConnectionDropped,
    FaultInjector,
    FaultProfile,
    InjectedFault,
    ResponseTimedOut,
)
from reconciler.emulator.state import FleetState, Secret
from reconciler.emulator.wire import MAX_CLOCK_SKEW, Answer, clock_skew, read_timeout

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIEnvironment

__all__ = ["API3_PATH", "API_PATH", "EmulatorApp", "EmulatorTransport", "transport"]

API3_PATH = "/"  # API 3.0 and STS (emulator/api3.py)
METADATA_PREFIX = metadata.PREFIX

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
        limits: Mapping[str, float] | None = None,
        api3_limits: Mapping[str, float] | None = None,
    ) -> None:
        if rate_limit is not None and rate_limit <= 0:
            raise ValueError("rate_limit must be positive")
        limits = limits if limits is not None else api3_limits
        if limits is not None and any(rate <= 0 for rate in limits.values()):
            raise ValueError("limits must be positive")
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
        # Per-action limits by action name, both APIs (``model.DOCUMENTED_RATE_LIMITS`` is the
        # cloud's; ``emulator serve`` uses it by default; ``api3_limits`` is the older name);
        # None: the same ``rate_limit`` for every action (None there too: no limit).
        self.api3_limits = dict(limits) if limits is not None else None
        from reconciler.emulator.api3 import Api3Face  # the 3.0 face uses this app's shared parts

        self._api2 = Api2Face(self)
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
        return self._api2.handle(environ, method)

    # ------------------------------------------------------------------ what the faces share

    def count_request(self, action: str) -> None:
        with self._lock:
            self.request_counts[action] += 1

    def check_replay(self, secret_id: str, timestamp: str, nonce: str) -> str | None:
        """An error text if the Timestamp is out of the window or the Nonce was used, else None."""
        now = self.clock()
        sent = int(timestamp)
        skew = clock_skew(now, sent)
        if skew is not None:
            return f"request expired or replayed: {skew}"
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

    def rate_for(self, action: str) -> float | None:
        """Requests a second allowed for ``action`` (None: no limit): the per-action table's
        figure, else ``rate_limit``."""
        if self.api3_limits is not None:
            return self.api3_limits.get(action, self.rate_limit)
        return self.rate_limit

    def take_token(self, action: str, rate: float | None) -> bool:
        """A token from ``action``'s bucket (``rate`` a second); True when there is no limit."""
        if rate is None:
            return True
        with self._lock:
            bucket = self._buckets.get(action)
            if bucket is None:
                bucket = self._buckets[action] = TokenBucket(rate, max(1.0, rate), clock=self.clock)
            return bucket.try_take()

    def inject_connection_fault(self, fault: str, action: str) -> Answer | None:
        """Faults both APIs answer alike, before the call: HTTP 502/503 (returned) and a dropped
        connection (``ConnectionDropped``); None for any other fault."""
        if fault == "http":
            status = "502 Bad Gateway" if self.coin() else "503 Service Unavailable"
            self.record_fault(action, fault, f"HTTP {status[:3]}")
            return Answer.http(status)
        if fault == "drop":
            self.record_fault(action, fault, "connection closed before the call was carried out")
            raise ConnectionDropped("injected: connection dropped")
        return None

    def draw_fault(self, action: str, *, can_partial: bool, api3: bool = False) -> str | None:
        """A fault for this request, or None (``FaultInjector.draw``: ``partial`` only where
        ``can_partial``, as 2.0 batches; 3.0 has no partial success)."""
        if self._injector is None:
            return None
        return self._injector.draw(action, can_partial=can_partial, api3=api3)

    def coin(self) -> bool:
        return self._injector.coin() if self._injector is not None else False

    def split(self, items: list[str]) -> tuple[list[str], list[str]]:
        """A random non-empty proper subset of ``items`` and the rest (a partial success)."""
        assert self._injector is not None
        return self._injector.split(items)

    # ------------------------------------------------------------------ faults

    def record_fault(self, action: str, kind: str, detail: str) -> None:
        """Note a fault injected into ``action``'s answer (``injected_faults``)."""
        with self._lock:
            self.injected_faults.append(InjectedFault(self.clock(), action, kind, detail))

    def inject_after(self, fault: str, action: str) -> None:
        """Faults that strike after the call was carried out (lost and slow answers)."""
        assert self._injector is not None
        if fault == "lost":
            self.record_fault(action, fault, "carried out, then the connection closed without an answer")
            raise ConnectionDropped("injected: answer lost after the call was carried out")
        if fault == "slow":
            delay = self.faults.slow_seconds if self.faults is not None else 0.0
            timeout = _read_timeout.get()
            if timeout is not None and delay >= timeout:
                gave_up = f"answer after {delay:g} s; the client gave up at {timeout:g} s"
                self.record_fault(action, fault, gave_up)
                raise ResponseTimedOut(f"injected: answer would take {delay:g} s")
            self.record_fault(action, fault, f"answer after {delay:g} s")
            time.sleep(delay)


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
