"""Request signing of the CVM API 2.0 ("signature v1"), as pure functions.

Used by the client (to sign) and by the emulator (to verify), so both sides share one
implementation of the documented algorithm:

1. every parameter but ``Signature``, ``_`` in names replaced by ``.``;
2. sorted by name in plain byte order;
3. joined as ``name=value`` with ``&``, raw (not URL-encoded) values;
4. ``METHOD + host + path + "?" + that``;
5. HMAC-SHA1, or HMAC-SHA256 when ``SignatureMethod=HmacSHA256``, then Base64.

With POST, a parameter whose value starts with ``@`` (a file upload) is left out.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Mapping

HMAC_SHA256 = "HmacSHA256"
HMAC_SHA1 = "HmacSHA1"
SIGNATURE_METHODS = (HMAC_SHA256, HMAC_SHA1)


def string_to_sign(method: str, host: str, path: str, params: Mapping[str, str]) -> str:
    """The exact string the signature is computed over."""
    upper_method = method.upper()
    items: list[tuple[str, str]] = []
    for name, value in params.items():
        if name == "Signature":
            continue
        if upper_method == "POST" and value.startswith("@"):
            continue
        items.append((name.replace("_", "."), value))
    items.sort(key=lambda item: item[0].encode("utf-8"))
    query = "&".join(f"{name}={value}" for name, value in items)
    return f"{upper_method}{host}{path}?{query}"


def signature_method_of(params: Mapping[str, str]) -> str:
    """The HMAC the parameters ask for: SHA-256 only when ``SignatureMethod=HmacSHA256``."""
    return HMAC_SHA256 if params.get("SignatureMethod") == HMAC_SHA256 else HMAC_SHA1


def compute_signature(secret_key: str, text: str, signature_method: str) -> str:
    """Base64 of the HMAC of ``text`` keyed with ``secret_key``."""
    digest = hashlib.sha256 if signature_method == HMAC_SHA256 else hashlib.sha1
    mac = hmac.new(secret_key.encode("utf-8"), text.encode("utf-8"), digest)
    return base64.b64encode(mac.digest()).decode("ascii")


def sign(secret_key: str, method: str, host: str, path: str, params: Mapping[str, str]) -> str:
    """The ``Signature`` value for a request with these parameters."""
    text = string_to_sign(method, host, path, params)
    return compute_signature(secret_key, text, signature_method_of(params))


def verify(secret_key: str, method: str, host: str, path: str, params: Mapping[str, str]) -> bool:
    """True if ``params["Signature"]`` is the right signature (constant-time comparison)."""
    given = params.get("Signature", "")
    expected = sign(secret_key, method, host, path, params)
    return hmac.compare_digest(given.encode("utf-8"), expected.encode("utf-8"))
