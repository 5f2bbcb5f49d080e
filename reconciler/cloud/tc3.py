"""Request signing of Tencent Cloud API 3.0 (TC3-HMAC-SHA256, "signature v3"), as pure functions.

Used by the 3.0 client (to sign) and by the emulator (to verify), so both sides share one
implementation of the documented algorithm (https://cloud.tencent.com/document/api/213/30654):

1. ``CanonicalRequest = METHOD \\n / \\n query \\n headers \\n signed-headers \\n sha256(payload)``,
   headers lower-case ``name:value\\n`` sorted by name (at least ``content-type`` and ``host``);
2. ``StringToSign = TC3-HMAC-SHA256 \\n timestamp \\n DATE/service/tc3_request \\n sha256(canonical)``,
   ``DATE`` the UTC date of the timestamp;
3. the key is derived ``"TC3" + SecretKey`` -> DATE -> service -> ``tc3_request``;
4. ``Authorization: TC3-HMAC-SHA256 Credential=ID/DATE/service/tc3_request,
   SignedHeaders=content-type;host, Signature=HEX``.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import TYPE_CHECKING, TypedDict

if TYPE_CHECKING:  # only for the annotations; Python 3.10's typing has no Unpack
    from typing_extensions import Unpack

ALGORITHM = "TC3-HMAC-SHA256"
SIGNED_HEADERS = ("content-type", "host")

_AUTHORIZATION = re.compile(
    r"^TC3-HMAC-SHA256 Credential=(?P<secret_id>[^/,\s]+)/(?P<date>\d{4}-\d{2}-\d{2})/"
    r"(?P<service>[a-z0-9]+)/tc3_request, ?SignedHeaders=(?P<signed>[a-z0-9;-]+), ?"
    r"Signature=(?P<signature>[0-9a-f]{64})$"
)


def _sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _hmac(key: bytes, text: str) -> bytes:
    return hmac.new(key, text.encode("utf-8"), hashlib.sha256).digest()


def utc_date(timestamp: int) -> str:
    """The credential-scope date of a timestamp: its UTC date, never local time."""
    return datetime.fromtimestamp(timestamp, tz=timezone.utc).strftime("%Y-%m-%d")


def canonical_request(
    method: str,
    query: str,
    headers: Mapping[str, str],
    payload: bytes,
    signed_headers: tuple[str, ...] = SIGNED_HEADERS,
) -> str:
    """Step 1. ``headers`` may use any case; only ``signed_headers`` go in, values trimmed."""
    lowered = {name.lower(): value for name, value in headers.items()}
    names = sorted(signed_headers)
    canonical_headers = "".join(f"{name}:{lowered.get(name, '').strip().lower()}\n" for name in names)
    return "\n".join(
        [method.upper(), "/", query, canonical_headers, ";".join(names), _sha256_hex(payload)]
    )


def string_to_sign(timestamp: int, service: str, canonical: str) -> str:
    """Step 2."""
    scope = f"{utc_date(timestamp)}/{service}/tc3_request"
    return f"{ALGORITHM}\n{timestamp}\n{scope}\n{_sha256_hex(canonical.encode('utf-8'))}"


def signature(secret_key: str, timestamp: int, service: str, text_to_sign: str) -> str:
    """Step 3: the hex signature of ``text_to_sign``."""
    secret_date = _hmac(("TC3" + secret_key).encode("utf-8"), utc_date(timestamp))
    secret_service = _hmac(secret_date, service)
    secret_signing = _hmac(secret_service, "tc3_request")
    return hmac.new(secret_signing, text_to_sign.encode("utf-8"), hashlib.sha256).hexdigest()


class _Request(TypedDict):
    timestamp: int
    method: str
    headers: Mapping[str, str]
    payload: bytes


class SignedRequest(_Request, total=False):
    """What of a request the signature covers, besides the service: the keywords of both
    :func:`authorization` and :func:`verify` (``query`` defaults to empty)."""

    query: str


def _request_signature(
    secret_key: str, service: str, request: SignedRequest, signed_headers: tuple[str, ...] = SIGNED_HEADERS
) -> str:
    """Steps 1-3 for ``request``: the one computation of the signer and the verifier."""
    timestamp = request["timestamp"]
    canonical = canonical_request(
        request["method"], request.get("query", ""), request["headers"], request["payload"], signed_headers
    )
    return signature(secret_key, timestamp, service, string_to_sign(timestamp, service, canonical))


def authorization(secret_id: str, secret_key: str, *, service: str, **request: Unpack[SignedRequest]) -> str:
    """The ``Authorization`` header value for a request (steps 1-4)."""
    sig = _request_signature(secret_key, service, request)
    scope = f"{utc_date(request['timestamp'])}/{service}/tc3_request"
    return (
        f"{ALGORITHM} Credential={secret_id}/{scope}, "
        f"SignedHeaders={';'.join(sorted(SIGNED_HEADERS))}, Signature={sig}"
    )


@dataclass(frozen=True, slots=True)
class ParsedAuthorization:
    """The parts of an ``Authorization`` header, as a verifier needs them."""

    secret_id: str
    date: str
    service: str
    signed_headers: tuple[str, ...]
    signature: str


def parse_authorization(value: str) -> ParsedAuthorization | None:
    """The header's parts, or ``None`` if it is not a well-formed TC3 header."""
    match = _AUTHORIZATION.match(value.strip())
    if match is None:
        return None
    return ParsedAuthorization(
        secret_id=match["secret_id"],
        date=match["date"],
        service=match["service"],
        signed_headers=tuple(match["signed"].split(";")),
        signature=match["signature"],
    )


def verify(secret_key: str, parsed: ParsedAuthorization, **request: Unpack[SignedRequest]) -> bool:
    """True if ``parsed.signature`` signs this request (constant-time comparison).

    The scope's date must be the timestamp's UTC date, as the algorithm defines it.
    """
    if parsed.date != utc_date(request["timestamp"]) or not {"content-type", "host"} <= set(
        parsed.signed_headers
    ):
        return False
    expected = _request_signature(secret_key, parsed.service, request, parsed.signed_headers)
    return hmac.compare_digest(expected.encode("ascii"), parsed.signature.encode("ascii"))
