"""What the emulator's wire layers share: the face they derive from, the limits both APIs document
alike (clock skew, IDs a call, page sizes), the HTTP answer, the token bucket, the Host a
request was signed for, URL-encoded form parsing.

Used by ``emulator/app.py`` (the router), ``emulator/api2.py`` and ``emulator/actions.py`` (API
2.0), ``emulator/api3.py`` (API 3.0 and STS) and ``emulator/metadata.py``; it knows nothing of
actions or of the backend.
"""

from __future__ import annotations

import contextvars
import json
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl

from reconciler.emulator import errors

if TYPE_CHECKING:
    from reconciler.emulator.app import EmulatorApp
    from reconciler.emulator.state import FleetState

# What both APIs document alike: how far a request's Timestamp may be from the clock ("5
# minutes in the newer docs"), IDs in one call, items in one page.
MAX_CLOCK_SKEW = 300.0
MAX_IDS = 100
MAX_PAGE = 100
DEFAULT_PAGE = 20

# The read timeout of the in-process request being served (set by ``transport``), so that a
# slow answer can time out at once instead of sleeping.
read_timeout: contextvars.ContextVar[float | None] = contextvars.ContextVar("read_timeout", default=None)


# 2.0's codeDesc values (our choice: the 2.0 docs do not list them).
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
# Tencent's 3.0 SDK reads Response.Error only when the Content-Type is exactly this (its
# abstract_client._check_error), so 3.0 answers carry no charset parameter.
JSON3 = "application/json"
JSON2 = "application/json; charset=utf-8"


class Answer:
    """An HTTP answer: status line, content type, body."""

    def __init__(self, status: str, body: bytes, content_type: str = JSON2):
        self.status = status
        self.body = body
        self.content_type = content_type

    @classmethod
    def json(cls, document: Mapping[str, Any], content_type: str = JSON2) -> Answer:
        return cls("200 OK", json.dumps(document, ensure_ascii=False).encode("utf-8"), content_type)

    @classmethod
    def error(cls, code: int, message: str) -> Answer:
        """A 2.0 error answer."""
        return cls.json({"code": code, "message": message, "codeDesc": CODE_DESCRIPTIONS.get(code, "Error")})

    @classmethod
    def response(cls, document: Mapping[str, Any], request_id: str) -> Answer:
        """A 3.0 answer: ``{"Response": {..., "RequestId"}}``."""
        return cls.json({"Response": {**document, "RequestId": request_id}}, JSON3)

    @classmethod
    def error3(cls, error: errors.ApiError, request_id: str) -> Answer:
        """A 3.0 error answer: HTTP 200, ``Response.Error.Code`` the string code."""
        return cls.response({"Error": {"Code": error.code3, "Message": error.message}}, request_id)

    @classmethod
    def http(cls, status: str) -> Answer:
        return cls(status, f"{status}\n".encode(), "text/plain; charset=utf-8")


class Face:
    """A wire layer (one API's face) of an ``EmulatorApp``: it shares the app's clock, counters,
    nonces, buckets and faults, and the app's backend."""

    def __init__(self, app: EmulatorApp) -> None:
        self.app = app

    @property
    def state(self) -> FleetState:
        return self.app.state

    def handle(self, environ: Mapping[str, Any], method: str) -> Answer:
        """The answer to one request. Raises ``ConnectionDropped`` to close without one."""
        raise NotImplementedError


def clock_skew(now: float, sent: int) -> str | None:
    """Why a request stamped ``sent`` is too far from the emulator's clock at ``now``, or None."""
    if abs(now - sent) <= MAX_CLOCK_SKEW:
        return None
    return (
        f"Timestamp {sent} is {abs(now - sent):.0f} s away from server time {now:.0f} "
        f"(at most {MAX_CLOCK_SKEW:.0f} s allowed)"
    )


def host_of(environ: Mapping[str, Any]) -> str:
    """The Host the request was sent to (what both signature kinds sign)."""
    host = environ.get("HTTP_HOST")
    if host:
        return str(host)
    name = str(environ.get("SERVER_NAME", ""))
    port = str(environ.get("SERVER_PORT", ""))
    default = "443" if environ.get("wsgi.url_scheme") == "https" else "80"
    return name if port in ("", default) else f"{name}:{port}"


def parse_form(text: bytes | str, where: str) -> list[tuple[str, str]]:
    """URL-encoded pairs; ``errors.InvalidParameter`` if not valid UTF-8 form encoding."""
    try:
        raw = text.decode("ascii") if isinstance(text, bytes) else text
        return parse_qsl(raw, keep_blank_values=True, strict_parsing=False, errors="strict")
    except (UnicodeDecodeError, UnicodeEncodeError, ValueError):
        raise errors.InvalidParameter(f"the {where} is not valid URL-encoded UTF-8") from None


def read_body(environ: Mapping[str, Any], limit: int) -> bytes:
    """The request body, at most ``limit`` bytes (``errors.InvalidParameter`` beyond)."""
    try:
        length = int(environ.get("CONTENT_LENGTH") or 0)
    except ValueError:
        length = 0
    if length > limit:
        raise errors.InvalidParameter("request body too large")
    return bytes(environ["wsgi.input"].read(length)) if length > 0 else b""
