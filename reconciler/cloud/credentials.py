"""API credentials (SecretId / SecretKey) and where they come from.

The CLI calls :func:`load_credentials` (or :func:`credentials_from_env`) and hands the result to
:class:`reconciler.cloud.client.CvmClient`. A :class:`Credentials` never shows its secret key:
not in ``repr``, not in ``str``, not in any error message of this module. Only the signing step
(``reconciler.cloud.auth``) reads ``secret_key``.

Sources, in order: the environment (``TENCENTCLOUD_SECRET_ID`` / ``TENCENTCLOUD_SECRET_KEY``, the
names Tencent's own tools use). tccli profiles (``~/.tccli/<profile>.credential``) are a planned
second source: :func:`load_credentials` is the seam where they will be tried.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field

from reconciler.errors import ConfigError

ENV_SECRET_ID = "TENCENTCLOUD_SECRET_ID"
ENV_SECRET_KEY = "TENCENTCLOUD_SECRET_KEY"


def mask_secret_id(secret_id: str) -> str:
    """Enough of a SecretId to recognise it in output, never the whole of it."""
    if len(secret_id) < 12:
        return "***"
    return f"{secret_id[:4]}...{secret_id[-4:]}"


def _check_value(name: str, value: str) -> None:
    # Messages name the variable, never the value: the value may be the secret key.
    if not value:
        raise ConfigError(f"{name} is empty")
    if any(ch.isspace() or not ch.isprintable() for ch in value):
        raise ConfigError(
            f"{name} contains whitespace or control characters",
            hint="copy the value again without spaces or line breaks",
        )


@dataclass(frozen=True)
class Credentials:
    """A SecretId / SecretKey pair. Its repr shows a masked SecretId and never the key."""

    secret_id: str
    secret_key: str = field(repr=False)

    def __post_init__(self) -> None:
        _check_value("SecretId", self.secret_id)
        _check_value("SecretKey", self.secret_key)

    def __repr__(self) -> str:
        return f"Credentials(secret_id={mask_secret_id(self.secret_id)!r}, secret_key=<hidden>)"

    __str__ = __repr__


def credentials_from_env(environ: Mapping[str, str] = os.environ) -> Credentials | None:
    """Credentials from ``TENCENTCLOUD_SECRET_ID`` / ``TENCENTCLOUD_SECRET_KEY``.

    ``None`` when neither is set (or both are empty); ``ConfigError`` when only one is, or a
    value is malformed.
    """
    secret_id = environ.get(ENV_SECRET_ID, "")
    secret_key = environ.get(ENV_SECRET_KEY, "")
    if not secret_id and not secret_key:
        return None
    if not secret_id:
        raise ConfigError(f"{ENV_SECRET_KEY} is set but {ENV_SECRET_ID} is not")
    if not secret_key:
        raise ConfigError(f"{ENV_SECRET_ID} is set but {ENV_SECRET_KEY} is not")
    _check_value(ENV_SECRET_ID, secret_id)
    _check_value(ENV_SECRET_KEY, secret_key)
    return Credentials(secret_id, secret_key)


def load_credentials(environ: Mapping[str, str] = os.environ) -> Credentials:
    """The credentials to use, or ``ConfigError`` saying how to provide them.

    The seam for more sources: tccli profiles will be tried here after the environment.
    """
    found = credentials_from_env(environ)
    if found is None:
        raise ConfigError(
            "no API credentials found",
            hint=f"set {ENV_SECRET_ID} and {ENV_SECRET_KEY}",
        )
    return found
