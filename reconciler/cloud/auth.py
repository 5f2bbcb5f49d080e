"""API 2.0 request signing as an ``httpx.Auth`` flow.

:class:`reconciler.cloud.client.CvmClient` builds each request with only the action's own
parameters (GET: query string; POST: form body). This flow, run by httpx for every send (so for
every retry attempt), adds the public parameters ``Timestamp``, ``Nonce``, ``SecretId``,
``SignatureMethod``, ``Region`` and the ``Signature`` computed by ``reconciler.cloud.signing`` over
the request's ``Host`` header and path, then re-encodes all parameters exactly once.

Each attempt therefore gets a fresh Timestamp, Nonce and Signature (the API rejects a repeated
Nonce as a replay, code 4500), and the credentials the provider hands out *now* (temporary ones
are renewed before they expire). Temporary credentials add their session token as the signed
``Token`` parameter, as Tencent's 2.0 SDK (``QcloudApi``) sends it.

The client hands the parameters over in the request's ``PARAMS_EXTENSION`` extension as well,
so that the flow need not parse them back out of the URL or body: with 100 instance IDs a
request's query is about 3 KB, and httpx checks every character of a URL each time one is
built. A request without the extension is decoded as before.
"""

from __future__ import annotations

import re
import secrets
import threading
from collections.abc import Callable, Generator, Mapping
from urllib.parse import parse_qsl, quote

import httpx

from reconciler.cloud import signing
from reconciler.cloud.credentials import Credentials, CredentialsProvider, as_provider
from reconciler.common import unique_mapping

FORM_CONTENT_TYPE = "application/x-www-form-urlencoded"
PUBLIC_PARAMS = ("Timestamp", "Nonce", "SecretId", "SignatureMethod", "Region", "Signature", "Token")
_NONCE_BOUND = 2**31 - 1
PARAMS_EXTENSION = "cvmkeys.params"
# What ``quote(..., safe="")`` leaves alone: IDs, numbers and action names need no encoding.
_UNRESERVED = re.compile(r"[A-Za-z0-9_.~-]*")


def random_nonce() -> int:
    """A random positive Nonce (1 .. 2**31-1) from the OS's CSPRNG."""
    return secrets.randbelow(_NONCE_BOUND) + 1


def encode_params(params: Mapping[str, str]) -> str:
    """``name=value&...``, every byte outside the unreserved set percent-encoded, once.

    The same text as ``urlencode(params, quote_via=quote, safe="")``, without calling ``quote``
    for the names and values that need no encoding (nearly all of them).
    """
    unreserved = _UNRESERVED.fullmatch
    return "&".join(
        f"{name if unreserved(name) else quote(name, safe='')}="
        f"{value if unreserved(value) else quote(value, safe='')}"
        for name, value in params.items()
    )


def _decode(raw: str) -> dict[str, str]:
    pairs = parse_qsl(raw, keep_blank_values=True, strict_parsing=False)
    return unique_mapping(pairs, lambda name: f"parameter {name!r} given twice")


class Api2Auth(httpx.Auth):
    """Signs CVM API 2.0 requests (GET query string or POST form body)."""

    requires_request_body = True

    def __init__(
        self,
        credentials: Credentials | CredentialsProvider,
        region: str,
        *,
        signature_method: str = signing.HMAC_SHA256,
        clock: Callable[[], float],
        nonce: Callable[[], int] = random_nonce,
    ) -> None:
        if signature_method not in signing.SIGNATURE_METHODS:
            raise ValueError(f"unknown signature method {signature_method!r}")
        self._provider = as_provider(credentials)
        self._region = region
        self._signature_method = signature_method
        self._clock = clock
        self._nonce = nonce
        self._lock = threading.Lock()
        self._seen: list[Credentials] = []  # what was signed with, only to scrub messages

    def __repr__(self) -> str:
        return (
            f"Api2Auth(credentials={self._provider.source!r}, region={self._region!r}, "
            f"method={self._signature_method!r})"
        )

    def secrets(self) -> list[str]:
        """Secret keys and tokens signed with so far: never to appear in a message."""
        with self._lock:
            return [s for c in self._seen for s in (c.secret_key, c.token) if s]

    def _credentials(self) -> Credentials:
        credentials = self._provider.get()
        with self._lock:
            if not any(c is credentials for c in self._seen):
                self._seen = [*self._seen[-3:], credentials]
        return credentials

    def public_params(self, credentials: Credentials | None = None) -> dict[str, str]:
        """The public parameters of one attempt (everything but ``Signature``)."""
        credentials = credentials or self._credentials()
        nonce = self._nonce()
        if nonce <= 0:
            raise ValueError("Nonce must be a positive integer")
        params = {
            "Timestamp": str(int(self._clock())),
            "Nonce": str(nonce),
            "SecretId": credentials.secret_id,
            "SignatureMethod": self._signature_method,
            "Region": self._region,
        }
        if credentials.token:
            params["Token"] = credentials.token
        return params

    def sign_request(self, request: httpx.Request) -> httpx.Request:
        """A new request: ``request``'s parameters plus the public ones and the signature."""
        method = request.method.upper()
        given = request.extensions.get(PARAMS_EXTENSION)
        if method not in ("GET", "POST"):
            raise ValueError(f"API 2.0 requests are GET or POST, not {method}")
        if given is not None:
            params = dict(given)
        elif method == "GET":
            params = _decode(request.url.query.decode("ascii"))
        else:
            params = _decode(request.content.decode("utf-8"))
        for name in PUBLIC_PARAMS:
            if name in params:
                raise ValueError(f"parameter {name!r} is set by the signer, not the caller")
        credentials = self._credentials()
        params.update(self.public_params(credentials))
        host = request.headers["Host"]
        params["Signature"] = signing.sign(credentials.secret_key, method, host, request.url.path, params)
        encoded = encode_params(params)
        headers = [
            (name, value)
            for name, value in request.headers.multi_items()
            if name.lower() not in ("content-length", "content-type")
        ]
        extensions = {k: v for k, v in request.extensions.items() if k != PARAMS_EXTENSION}
        if method == "GET":
            return httpx.Request(
                method,
                request.url.copy_with(query=encoded.encode("ascii")),
                headers=headers,
                extensions=extensions,
            )
        headers.append(("Content-Type", FORM_CONTENT_TYPE))
        return httpx.Request(
            method,
            request.url,
            headers=headers,
            content=encoded.encode("ascii"),
            extensions=extensions,
        )

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        yield self.sign_request(request)
