"""API credentials (SecretId / SecretKey), where they come from, and the default region.

The CLI (through ``reconciler.connect``) calls :func:`load_credentials` and hands the result to
:class:`reconciler.cloud.client.CvmClient`; ``cvmkeys import`` calls :func:`default_region`. A
:class:`Credentials` never shows its secret key: not in ``repr``, not in ``str``, not in any
error message of this module. Only the signing step (``reconciler.cloud.auth``) reads
``secret_key``.

Sources, in this order (docs/gitops.md, "Credentials"):

1. ``--profile NAME`` on the command line: that tccli profile, and nothing else.
2. ``TENCENTCLOUD_SECRET_ID`` / ``TENCENTCLOUD_SECRET_KEY``, the names Tencent's own tools use.
3. The tccli profile named by ``TENCENTCLOUD_PROFILE`` (or tccli's own ``TCCLI_PROFILE``),
   otherwise ``default``: ``~/.tccli/<profile>.credential``, the JSON file ``tccli configure``
   writes (``{"secretId": ..., "secretKey": ...}``).

The region default follows the same idea: ``TENCENTCLOUD_REGION``, then ``_sys_param.region``
of ``~/.tccli/<profile>.configure``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from reconciler.errors import ConfigError

ENV_SECRET_ID = "TENCENTCLOUD_SECRET_ID"
ENV_SECRET_KEY = "TENCENTCLOUD_SECRET_KEY"
ENV_TOKEN = "TENCENTCLOUD_TOKEN"
ENV_REGION = "TENCENTCLOUD_REGION"
ENV_PROFILE = "TENCENTCLOUD_PROFILE"
ENV_TCCLI_PROFILE = "TCCLI_PROFILE"  # what tccli itself reads
DEFAULT_PROFILE = "default"
TCCLI_DIR = ".tccli"
# A credential file is a few hundred bytes; anything much larger is not one.
_MAX_PROFILE_BYTES = 1 << 20


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
    # Where they came from, for messages and logs ("environment", "tccli profile 'prod' (...)").
    source: str = field(default="", compare=False)

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
    return Credentials(secret_id, secret_key, source=f"{ENV_SECRET_ID} / {ENV_SECRET_KEY}")


@dataclass(frozen=True)
class ProfileChoice:
    """Which tccli profile to read, and what chose it (for messages)."""

    name: str
    chosen_by: str  # "--profile", "TENCENTCLOUD_PROFILE", "TCCLI_PROFILE" or "default"

    @property
    def explicit(self) -> bool:
        return self.chosen_by == "--profile"


def choose_profile(profile: str | None = None, environ: Mapping[str, str] = os.environ) -> ProfileChoice:
    """The profile: ``profile`` (from ``--profile``), else the environment, else ``default``."""
    if profile is not None:
        choice = ProfileChoice(profile, "--profile")
    elif environ.get(ENV_PROFILE):
        choice = ProfileChoice(environ[ENV_PROFILE], ENV_PROFILE)
    elif environ.get(ENV_TCCLI_PROFILE):
        choice = ProfileChoice(environ[ENV_TCCLI_PROFILE], ENV_TCCLI_PROFILE)
    else:
        choice = ProfileChoice(DEFAULT_PROFILE, "default")
    _check_profile_name(choice)
    return choice


def _check_profile_name(choice: ProfileChoice) -> None:
    # The name becomes a file name under ~/.tccli: no way out of that folder.
    name = choice.name
    if (
        not name
        or name.startswith(".")
        or any(ch in name for ch in "/\\:")
        or any(not ch.isprintable() or ch.isspace() for ch in name)
    ):
        raise ConfigError(
            f"invalid profile name {name!r} (from {choice.chosen_by})",
            hint="a tccli profile name is a plain word such as default or prod",
        )


def tccli_dir(environ: Mapping[str, str] = os.environ) -> Path:
    """``~/.tccli``, where tccli keeps its profiles (the home folder as ``environ`` says)."""
    home = environ.get("HOME") or environ.get("USERPROFILE") or os.path.expanduser("~")
    return Path(home) / TCCLI_DIR


def profile_paths(name: str, environ: Mapping[str, str] = os.environ) -> tuple[Path, Path]:
    """(``<name>.credential``, ``<name>.configure``) under :func:`tccli_dir`."""
    folder = tccli_dir(environ)
    return folder / f"{name}.credential", folder / f"{name}.configure"


def _read_json_object(path: Path, what: str) -> dict[str, Any] | None:
    """The JSON object in ``path``; ``None`` if the file does not exist. Errors never quote
    the content (it holds the secret key)."""
    try:
        with path.open("rb") as handle:
            raw = handle.read(_MAX_PROFILE_BYTES + 1)
    except FileNotFoundError:
        return None
    except OSError as error:
        raise ConfigError(f"{path}: cannot read the tccli {what} file: {error.strerror}") from None
    if len(raw) > _MAX_PROFILE_BYTES:
        raise ConfigError(f"{path}: too large for a tccli {what} file")
    try:
        data = json.loads(raw.decode("utf-8-sig"))
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not UTF-8 text; expected the JSON that tccli writes") from None
    except json.JSONDecodeError as error:
        # The position only: json's message never includes the document, but be sure.
        raise ConfigError(
            f"{path}:{error.lineno}:{error.colno}: not valid JSON; expected the JSON that tccli writes",
            hint=f"run `tccli configure` again, or fix the file by hand (a {what} file is a JSON object)",
        ) from None
    except (ValueError, RecursionError):
        # A number of over 4,300 digits, or nesting ~1,000 deep: not tccli's JSON either.
        raise ConfigError(
            f"{path}: not the JSON that tccli writes (a number too long, or nesting too deep)"
        ) from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a JSON object, as tccli writes")
    return data


def credentials_from_profile(
    choice: ProfileChoice, environ: Mapping[str, str] = os.environ
) -> Credentials | None:
    """Credentials from ``~/.tccli/<profile>.credential``; ``None`` when that file does not exist.

    Temporary credentials (a ``token``, or tccli's ``sso``/``oauth``/``cvm-role`` types) are
    refused: the CVM API 2.0 client sends no session token, so they could only fail.
    """
    path, _ = profile_paths(choice.name, environ)
    data = _read_json_object(path, "credential")
    if data is None:
        return None
    kind = data.get("type")
    if data.get("token") or kind in ("sso", "oauth", "cvm-role") or data.get("role-arn"):
        described = f"type {kind}" if isinstance(kind, str) and kind else "a session token or role"
        raise ConfigError(
            f"{path}: profile {choice.name!r} holds temporary credentials ({described}); "
            "cvmkeys speaks the CVM API 2.0 and sends no session token",
            hint="use a profile with a permanent SecretId/SecretKey "
            f"(tccli configure set secretId ... secretKey ...), or set {ENV_SECRET_ID} and {ENV_SECRET_KEY}",
        )
    secret_id = data.get("secretId")
    secret_key = data.get("secretKey")
    missing = [name for name, value in (("secretId", secret_id), ("secretKey", secret_key)) if not value]
    if missing:
        raise ConfigError(
            f"{path}: profile {choice.name!r} has no {' and no '.join(missing)}",
            hint=f"tccli configure set secretId ... secretKey ... --profile {choice.name}",
        )
    if not isinstance(secret_id, str) or not isinstance(secret_key, str):
        raise ConfigError(f"{path}: secretId and secretKey must be strings")
    _check_value(f"{path}: secretId", secret_id)
    _check_value(f"{path}: secretKey", secret_key)
    return Credentials(secret_id, secret_key, source=f"tccli profile {choice.name!r} ({path})")


def load_credentials(environ: Mapping[str, str] = os.environ, *, profile: str | None = None) -> Credentials:
    """The credentials to use, or ``ConfigError`` naming every place looked at.

    ``profile`` is ``--profile``: when given, only that profile is read (explicit beats the
    environment, as with tccli). Otherwise the environment variables, then the profile named
    by the environment or ``default``.
    """
    choice = choose_profile(profile, environ)
    looked: list[str] = []
    if not choice.explicit:
        found = credentials_from_env(environ)
        if found is not None:
            if environ.get(ENV_TOKEN):
                raise ConfigError(
                    f"{ENV_TOKEN} is set: these are temporary credentials, and the CVM API 2.0 "
                    "client sends no session token",
                    hint=f"use a permanent SecretId/SecretKey, or unset {ENV_TOKEN}",
                )
            return found
        looked.append(f"{ENV_SECRET_ID} / {ENV_SECRET_KEY}: not set")
    found = credentials_from_profile(choice, environ)
    if found is not None:
        return found
    credential_path, _ = profile_paths(choice.name, environ)
    looked.append(f"{credential_path}: no such file (tccli profile {choice.name!r}, {_why(choice)})")
    raise ConfigError(
        "no API credentials found; looked at: " + "; ".join(looked),
        hint=f"set {ENV_SECRET_ID} and {ENV_SECRET_KEY}, or create the profile with "
        f"`tccli configure --profile {choice.name}`, or pass --profile NAME",
    )


def _why(choice: ProfileChoice) -> str:
    return "the default" if choice.chosen_by == "default" else f"from {choice.chosen_by}"


def default_region(environ: Mapping[str, str] = os.environ, *, profile: str | None = None) -> str | None:
    """The region when none is given: ``TENCENTCLOUD_REGION``, then the profile's configured
    region (``_sys_param.region`` of ``~/.tccli/<profile>.configure``); ``None`` if neither."""
    choice = choose_profile(profile, environ)
    if not choice.explicit and environ.get(ENV_REGION):
        return environ[ENV_REGION]
    _, configure_path = profile_paths(choice.name, environ)
    data = _read_json_object(configure_path, "configure")
    if data is None:
        return None
    sys_param = data.get("_sys_param")
    region = sys_param.get("region") if isinstance(sys_param, dict) else None
    if region is None and "region" in data:  # tccli before 3.0 kept it at the top level
        region = data.get("region")
    return region if isinstance(region, str) and region else None
