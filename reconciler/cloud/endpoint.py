"""The API endpoints: the defaults of both APIs, and the check every configured endpoint passes.

Called by :class:`reconciler.cloud.client.CvmClient`, the 3.0 client and STS (and by the CLI to
fail early on a bad ``--endpoint``). API 2.0 lives at ``/v2/index.php``; API 3.0 at ``/`` of
``cvm.tencentcloudapi.com``, of a regional ``cvm.<region>.tencentcloudapi.com`` or of the
international ``cvm.intl.tencentcloudapi.com`` (:func:`api3_endpoint`).
Requests carry a SecretId and a signature, so they go over HTTPS; plain HTTP is allowed only to
a loopback address, which is where the bundled emulator listens.
"""

from __future__ import annotations

import ipaddress
from urllib.parse import urlsplit, urlunsplit

import httpx

from reconciler import __version__
from reconciler.errors import ConfigError

DEFAULT_ENDPOINT = "https://cvm.api.qcloud.com/v2/index.php"
DEFAULT_PATH = "/v2/index.php"
API3_ENDPOINT = "https://cvm.tencentcloudapi.com/"
API3_PATH = "/"
STS_ENDPOINT = "https://sts.tencentcloudapi.com/"


def api3_endpoint(service: str = "cvm", *, region: str | None = None, intl: bool = False) -> str:
    """``https://<service>[.<region>|.intl].tencentcloudapi.com/``: the nearest region by default,
    a regional endpoint with ``region``, the international site with ``intl``."""
    if region is not None and intl:
        raise ConfigError("choose a regional or the international endpoint, not both")
    if region is not None and not region.replace("-", "").isalnum():
        raise ConfigError(f"region {region!r} cannot be part of a host name")
    middle = f".{region}" if region else ".intl" if intl else ""
    return f"https://{service}{middle}.tencentcloudapi.com/"


def is_loopback_host(host: str) -> bool:
    """True for ``localhost``, 127.0.0.0/8 and ::1."""
    if host.lower().rstrip(".") == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_endpoint(url: str, *, default_path: str = DEFAULT_PATH) -> str:
    """The endpoint URL, normalised, or ``ConfigError`` saying what is wrong with it.

    Refused: schemes other than https (http only to a loopback host), user info, a query, a
    fragment, a missing host. An empty path (or ``/``) becomes ``default_path`` (``/v2/index.php``
    for 2.0; the 3.0 client passes ``/``).
    """
    if "@" in url:
        # Before parsing, and without echoing the URL: the user info may be a secret, and a
        # password with a "/" in it is not even parsed as user info.
        raise ConfigError("endpoint must not contain user info (user:password@)")
    try:
        parts = urlsplit(url.strip())
        host = parts.hostname or ""
        port = parts.port
    except ValueError as error:
        raise ConfigError(f"endpoint {url!r} is not a valid URL: {error}") from None
    scheme = parts.scheme.lower()
    if parts.username is not None or parts.password is not None or "@" in parts.netloc:
        # Do not echo the URL: the user info may be a secret.
        raise ConfigError("endpoint must not contain user info (user:password@)")
    if scheme not in ("https", "http"):
        raise ConfigError(f"endpoint {url!r} must use https")
    if not host:
        raise ConfigError(f"endpoint {url!r} has no host")
    if scheme == "http" and not is_loopback_host(host):
        raise ConfigError(
            f"endpoint {url!r} uses plain http to a non-loopback host",
            hint="use https, or http only to 127.0.0.1 / ::1 / localhost (the emulator)",
        )
    if parts.query or url.rstrip().endswith("?"):
        raise ConfigError(f"endpoint {url!r} must not have a query string")
    if parts.fragment or "#" in url:
        raise ConfigError(f"endpoint {url!r} must not have a fragment")
    path = parts.path if parts.path not in ("", "/") else default_path
    netloc = f"[{host}]" if ":" in host else host
    if port is not None:
        netloc = f"{netloc}:{port}"
    return urlunsplit((scheme, netloc, path, "", ""))


def http_client(
    endpoint: str, auth: httpx.Auth, transport: httpx.BaseTransport | None, timeout: float
) -> httpx.Client:
    """The HTTP client of every API client: no redirects, cvmkeys' User-Agent, and proxy
    variables only for the real cloud (never for an in-process app or a loopback address)."""
    return httpx.Client(
        auth=auth,
        transport=transport,
        timeout=httpx.Timeout(timeout),
        follow_redirects=False,
        trust_env=transport is None and not is_loopback_host(urlsplit(endpoint).hostname or ""),
        headers={"User-Agent": f"cvmkeys/{__version__}"},
    )
