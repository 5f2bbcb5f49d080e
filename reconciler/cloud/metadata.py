"""The CVM instance metadata service: temporary credentials of the instance's CAM role.

Used by ``reconciler.cloud.credentials`` when ``TENCENTCLOUD_CAM_ROLE_NAME`` is set (or a tccli
profile has ``type: cvm-role``). ``GET <base>/cam/security-credentials/<role>`` answers
``{"TmpSecretId", "TmpSecretKey", "Token", "ExpiredTime", "Code": "Success"}``; without a role
name, ``GET <base>/cam/security-credentials/`` lists the instance's role. The base is
``http://metadata.tencentyun.com/latest/meta-data`` (plain http by design: the service is only
reachable from the instance), or ``TENCENTCLOUD_METADATA_ENDPOINT`` so tests can serve it locally.
"""

from __future__ import annotations

import json
from urllib.parse import quote, urlsplit

import httpx

from reconciler.cloud.credentials import ENV_METADATA_ENDPOINT, Credentials
from reconciler.cloud.endpoint import is_loopback_host
from reconciler.errors import ConfigError, TransportError

DEFAULT_METADATA_BASE = "http://metadata.tencentyun.com/latest/meta-data"
_METADATA_PATH = "/latest/meta-data"
_WHAT = "instance metadata"


def metadata_base(url: str | None) -> str:
    """The base URL: the default, or ``url`` (a root such as ``http://127.0.0.1:8080`` gets the
    service's path). Plain http only to the metadata host or loopback: the answer is a secret."""
    if url is None:
        return DEFAULT_METADATA_BASE
    if "@" in url:
        raise ConfigError(f"{ENV_METADATA_ENDPOINT} must not contain user info")
    parts = urlsplit(url.strip())
    host = parts.hostname or ""
    if parts.scheme not in ("http", "https") or not host:
        raise ConfigError(f"{ENV_METADATA_ENDPOINT} {url!r} is not an http(s) URL")
    if parts.scheme == "http" and not (is_loopback_host(host) or host == "metadata.tencentyun.com"):
        raise ConfigError(
            f"{ENV_METADATA_ENDPOINT} {url!r} uses plain http to a host that is neither the metadata "
            "service nor loopback",
            hint="use https, or http://127.0.0.1:PORT for a local test server",
        )
    path = parts.path.rstrip("/") or _METADATA_PATH
    return f"{parts.scheme}://{parts.netloc}{path}"


class MetadataClient:
    """Reads instance-role credentials; ``transport`` replaces the network in tests."""

    def __init__(
        self, base: str | None = None, *, transport: httpx.BaseTransport | None = None, timeout: float = 5.0
    ) -> None:
        self.base = metadata_base(base)
        self._transport = transport
        self._timeout = timeout

    def __repr__(self) -> str:
        return f"MetadataClient(base={self.base!r})"

    def _get(self, path: str) -> httpx.Response:
        # The metadata service is local to the instance: never through a proxy.
        with httpx.Client(transport=self._transport, timeout=self._timeout, trust_env=False) as http:
            try:
                response = http.get(self.base + path)
            except httpx.RequestError as exc:
                raise TransportError(
                    _WHAT,
                    f"cannot reach the metadata service at {self.base} ({type(exc).__name__}); "
                    "TENCENTCLOUD_CAM_ROLE_NAME works only on a CVM instance",
                    retryable=False,
                    ambiguous=False,
                ) from None
        if response.status_code == 404:
            raise ConfigError(
                f"the metadata service knows no CAM role at {path}",
                hint="bind the role to this instance, or check TENCENTCLOUD_CAM_ROLE_NAME",
            )
        if response.status_code != 200:
            raise TransportError(_WHAT, f"HTTP {response.status_code}", retryable=False, ambiguous=False)
        return response

    def role_name(self) -> str:
        """The instance's CAM role (the first line of the listing)."""
        lines = [line.strip() for line in self._get("/cam/security-credentials/").text.splitlines()]
        names = [line for line in lines if line]
        if not names:
            raise ConfigError("this instance has no CAM role", hint="bind one in the CVM console")
        return names[0]

    def role_credentials(self, role_name: str | None, *, source: str = "") -> Credentials:
        """The role's current temporary credentials."""
        name = role_name or self.role_name()
        response = self._get(f"/cam/security-credentials/{quote(name, safe='')}")
        try:
            data = json.loads(response.text)
        except ValueError:
            raise TransportError(_WHAT, "answer is not JSON", retryable=False, ambiguous=False) from None
        if not isinstance(data, dict) or data.get("Code", "Success") != "Success":
            code = data.get("Code") if isinstance(data, dict) else None
            raise TransportError(_WHAT, f"the metadata service answered Code {code!r}", retryable=False)
        fields = (data.get("TmpSecretId"), data.get("TmpSecretKey"), data.get("Token"))
        expires = data.get("ExpiredTime")
        if (
            not all(isinstance(f, str) and f for f in fields)
            or isinstance(expires, bool)
            or not isinstance(expires, int)
        ):
            raise TransportError(
                _WHAT, "answer lacks TmpSecretId/TmpSecretKey/Token/ExpiredTime", retryable=False
            )
        secret_id, secret_key, token = (str(f) for f in fields)
        return Credentials(secret_id, secret_key, source=source, token=token, expires_at=float(expires))
