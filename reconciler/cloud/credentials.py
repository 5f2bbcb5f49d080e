"""API credentials: what they are, every place they come from, and the default region.

A :class:`Credentials` is a SecretId / SecretKey pair, plus a session token and an expiry time
when it is temporary. It never shows its secrets: not in ``repr``, not in ``str``, not in any
error message of this module. Only the signing steps (``reconciler.cloud.auth`` for 2.0,
``reconciler.cloud.tc3auth`` for 3.0) read ``secret_key`` and ``token``.

A :class:`CredentialsProvider` hands out the credentials to use *now*: the 3.0 auth flow asks it
on every attempt, so temporary credentials (assumed role, OIDC, instance role) are renewed before
they expire during a long apply (:class:`RefreshingProvider`).

Sources, in the order and with the names of Terraform's tencentcloud provider
(``resolve_credentials``; docs/credentials.md has an example of each):

1. ``--profile NAME``: that tccli profile, and nothing else from the environment's keys.
2. ``TENCENTCLOUD_SECRET_ID`` / ``TENCENTCLOUD_SECRET_KEY`` (+ ``TENCENTCLOUD_SECURITY_TOKEN``).
3. ``TENCENTCLOUD_CAM_ROLE_NAME``: the CVM instance role, from the metadata service
   (``TENCENTCLOUD_METADATA_ENDPOINT`` overrides its URL, for tests). As in Terraform it wins
   over a ``default`` profile; with a profile named by the environment it is an error.
4. The tccli profile named by ``TENCENTCLOUD_PROFILE`` (or tccli's ``TCCLI_PROFILE``), else
   ``default``, in ``TENCENTCLOUD_SHARED_CREDENTIALS_DIR`` (else ``~/.tccli``):
   ``<profile>.credential`` with ``secretId``, ``secretKey``, optional ``token``, optional
   ``role-arn`` + ``role-session-name`` (assumed with the profile's keys), or ``type: cvm-role``.
5. ``TENCENTCLOUD_ASSUME_ROLE_ARN`` (+ ``_SESSION_NAME``, ``_SESSION_DURATION``,
   ``_EXTERNAL_ID``): STS AssumeRole, signed with the credentials of 1-4.
6. ``TENCENTCLOUD_ASSUME_ROLE_WEB_IDENTITY_TOKEN`` or ``..._TOKEN_FILE`` (+ the role ARN and
   session variables of 5, ``TENCENTCLOUD_ASSUME_ROLE_PROVIDER_ID``, default ``OIDC``): STS
   AssumeRoleWithWebIdentity, unsigned; needs no keys at all (GitHub Actions' OIDC).
7. In a TKE pod: ``TKE_ROLE_ARN``, ``TKE_WEB_IDENTITY_TOKEN_FILE``, ``TKE_PROVIDER_ID`` (and
   ``TKE_REGION``, the STS call's region), injected by TKE's pod identity webhook: the same
   AssumeRoleWithWebIdentity. As in Tencent's SDK it is the last resort, used only when none of
   1-4 and 6 is there (the webhook sets the variables, the user did not choose them); the
   role of 5, if set, is then assumed with these credentials.

A variable that is set but cannot be honoured is a ``ConfigError``, never ignored: two sources
that would each pick an identity (keys and an instance role, say) are refused rather than one
silently winning, so the tool never acts as another identity than the one the user meant.

The region default: ``TENCENTCLOUD_REGION``, then ``_sys_param.region`` of the profile's
``<profile>.configure``.
"""

from __future__ import annotations

import dataclasses
import json
import os
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TypedDict

import httpx

from reconciler.errors import ConfigError
from reconciler.ids import normalize_region

if TYPE_CHECKING:
    from reconciler.cloud.base import AttemptRecord
    from reconciler.cloud.sts import StsClient

ENV_SECRET_ID = "TENCENTCLOUD_SECRET_ID"
ENV_SECRET_KEY = "TENCENTCLOUD_SECRET_KEY"
ENV_SECURITY_TOKEN = "TENCENTCLOUD_SECURITY_TOKEN"  # Terraform's name for the session token
ENV_REGION = "TENCENTCLOUD_REGION"
ENV_PROFILE = "TENCENTCLOUD_PROFILE"
ENV_TCCLI_PROFILE = "TCCLI_PROFILE"  # what tccli itself reads
ENV_SHARED_CREDENTIALS_DIR = "TENCENTCLOUD_SHARED_CREDENTIALS_DIR"
ENV_CAM_ROLE_NAME = "TENCENTCLOUD_CAM_ROLE_NAME"
ENV_METADATA_ENDPOINT = "TENCENTCLOUD_METADATA_ENDPOINT"
ENV_ROLE_ARN = "TENCENTCLOUD_ASSUME_ROLE_ARN"
ENV_SESSION_NAME = "TENCENTCLOUD_ASSUME_ROLE_SESSION_NAME"
ENV_SESSION_DURATION = "TENCENTCLOUD_ASSUME_ROLE_SESSION_DURATION"
ENV_EXTERNAL_ID = "TENCENTCLOUD_ASSUME_ROLE_EXTERNAL_ID"
ENV_WEB_IDENTITY_TOKEN = "TENCENTCLOUD_ASSUME_ROLE_WEB_IDENTITY_TOKEN"
ENV_WEB_IDENTITY_TOKEN_FILE = "TENCENTCLOUD_ASSUME_ROLE_WEB_IDENTITY_TOKEN_FILE"
ENV_PROVIDER_ID = "TENCENTCLOUD_ASSUME_ROLE_PROVIDER_ID"
# What TKE's pod identity webhook injects into a pod of a service account bound to a CAM role
# (Tencent's Python SDK reads them in DefaultTkeOIDCRoleArnProvider).
ENV_TKE_ROLE_ARN = "TKE_ROLE_ARN"
ENV_TKE_TOKEN_FILE = "TKE_WEB_IDENTITY_TOKEN_FILE"
ENV_TKE_PROVIDER_ID = "TKE_PROVIDER_ID"
ENV_TKE_REGION = "TKE_REGION"
# Names no Tencent tool reads but that users set believing they work: refused with the right name.
MISTAKEN_NAMES: Mapping[str, str] = {
    "TENCENTCLOUD_TOKEN": ENV_SECURITY_TOKEN,
    "TENCENTCLOUD_SESSION_TOKEN": ENV_SECURITY_TOKEN,
}
DEFAULT_PROFILE = "default"
DEFAULT_PROVIDER_ID = "OIDC"
DEFAULT_SESSION_DURATION = 7200  # seconds, as Terraform and STS
MAX_SESSION_DURATION = 43200
TCCLI_DIR = ".tccli"
# A credential file is a few hundred bytes; anything much larger is not one.
_MAX_PROFILE_BYTES = 1 << 20
# Temporary credentials are renewed when less than this is left (or half their lifetime, if
# shorter): a call signed now must still be valid when the server checks it.
REFRESH_MARGIN_S = 300.0


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
    """A SecretId / SecretKey pair, with a session ``token`` and ``expires_at`` (Unix seconds)
    when temporary. Its repr shows a masked SecretId and never the key or the token."""

    secret_id: str
    secret_key: str = field(repr=False)
    # Where they came from, for messages and logs ("environment", "tccli profile 'prod' (...)").
    source: str = field(default="", compare=False)
    token: str | None = field(default=None, repr=False)
    expires_at: float | None = None

    def __post_init__(self) -> None:
        _check_value("SecretId", self.secret_id)
        _check_value("SecretKey", self.secret_key)
        if self.token is not None:
            _check_value("session token", self.token)

    @property
    def temporary(self) -> bool:
        """True for STS / instance-role credentials: they need their token and they expire."""
        return self.token is not None

    def __repr__(self) -> str:
        token = ", token=<hidden>" if self.token is not None else ""
        return f"Credentials(secret_id={mask_secret_id(self.secret_id)!r}, secret_key=<hidden>{token})"

    __str__ = __repr__


# --------------------------------------------------------------------------- providers


class CredentialsProvider(Protocol):
    """The credentials to sign with now; asked once per request attempt."""

    @property
    def source(self) -> str: ...  # where they come from, for messages ("assumed role ...")

    @property
    def temporary(self) -> bool: ...  # known before any network call

    def get(self) -> Credentials: ...


class StaticProvider:
    """Credentials that never change (long-lived keys, or a token handed over as it is)."""

    def __init__(self, credentials: Credentials) -> None:
        self._credentials = credentials

    @property
    def source(self) -> str:
        return self._credentials.source

    @property
    def temporary(self) -> bool:
        return self._credentials.temporary

    def get(self) -> Credentials:
        return self._credentials

    def __repr__(self) -> str:
        return f"StaticProvider({self._credentials!r})"


def as_provider(credentials: Credentials | CredentialsProvider) -> CredentialsProvider:
    """What the clients and the signing flows ask for credentials: a provider, whichever was given."""
    if isinstance(credentials, Credentials):
        return StaticProvider(credentials)
    if not callable(getattr(credentials, "get", None)):
        raise ConfigError("credentials must be a Credentials object or a credentials provider")
    return credentials


class RefreshingProvider:
    """Temporary credentials from ``fetch`` (an STS call, the metadata service), fetched on first
    use and again whenever less than :data:`REFRESH_MARGIN_S` (or half their lifetime) is left.
    Thread-safe: concurrent attempts wait for one fetch."""

    def __init__(
        self,
        fetch: Callable[[], Credentials],
        source: str,
        *,
        clock: Callable[[], float] = time.time,
        margin_s: float = REFRESH_MARGIN_S,
    ) -> None:
        self._fetch = fetch
        self._source = source
        self._clock = clock
        self._margin = margin_s
        self._lock = threading.Lock()
        self._current: Credentials | None = None
        self._renew_at = 0.0
        self.fetches = 0  # how many times credentials were fetched (for tests and logs)

    @property
    def source(self) -> str:
        return self._source

    @property
    def temporary(self) -> bool:
        return True

    def get(self) -> Credentials:
        with self._lock:
            now = self._clock()
            if self._current is None or now >= self._renew_at:
                fresh = self._fetch()
                self.fetches += 1
                expires = fresh.expires_at if fresh.expires_at is not None else now + 3600.0
                if expires <= now:
                    raise ConfigError(f"{self._source}: the credentials handed out have already expired")
                self._renew_at = expires - min(self._margin, (expires - now) / 2)
                self._current = fresh
            return self._current

    def __repr__(self) -> str:
        return f"RefreshingProvider(source={self._source!r})"


# --------------------------------------------------------------------------- environment


def _env(environ: Mapping[str, str], name: str) -> str | None:
    """The variable's value, or ``None`` when unset or empty (Terraform treats both alike)."""
    value = environ.get(name)
    return value if value else None


def _check_mistaken_names(environ: Mapping[str, str]) -> None:
    for wrong, right in MISTAKEN_NAMES.items():
        if environ.get(wrong):
            raise ConfigError(
                f"{wrong} is set, but no Tencent Cloud tool reads that name; the session token "
                f"goes in {right}",
                hint=f"rename {wrong} to {right}",
            )


def credentials_from_env(environ: Mapping[str, str] = os.environ) -> Credentials | None:
    """Credentials from ``TENCENTCLOUD_SECRET_ID`` / ``_SECRET_KEY`` / ``_SECURITY_TOKEN``.

    ``None`` when neither key is set (or both are empty); ``ConfigError`` when only one is, when
    a token is set without keys, or a value is malformed.
    """
    _check_mistaken_names(environ)
    secret_id = environ.get(ENV_SECRET_ID, "")
    secret_key = environ.get(ENV_SECRET_KEY, "")
    token = _env(environ, ENV_SECURITY_TOKEN)
    if not secret_id and not secret_key:
        if token is not None:
            raise ConfigError(
                f"{ENV_SECURITY_TOKEN} is set but {ENV_SECRET_ID} and {ENV_SECRET_KEY} are not",
                hint="a session token is used with the temporary SecretId/SecretKey it was issued with",
            )
        return None
    if not secret_id:
        raise ConfigError(f"{ENV_SECRET_KEY} is set but {ENV_SECRET_ID} is not")
    if not secret_key:
        raise ConfigError(f"{ENV_SECRET_ID} is set but {ENV_SECRET_KEY} is not")
    _check_value(ENV_SECRET_ID, secret_id)
    _check_value(ENV_SECRET_KEY, secret_key)
    if token is not None:
        _check_value(ENV_SECURITY_TOKEN, token)
        source = f"{ENV_SECRET_ID} / {ENV_SECRET_KEY} / {ENV_SECURITY_TOKEN}"
    else:
        source = f"{ENV_SECRET_ID} / {ENV_SECRET_KEY}"
    return Credentials(secret_id, secret_key, source=source, token=token)


# --------------------------------------------------------------------------- tccli profiles


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
    """Where the profiles are: ``TENCENTCLOUD_SHARED_CREDENTIALS_DIR`` (Terraform's name), else
    ``~/.tccli`` (the home folder as ``environ`` says)."""
    shared = _env(environ, ENV_SHARED_CREDENTIALS_DIR)
    if shared is not None:
        folder = Path(os.path.expanduser(shared))
        if not folder.is_dir():
            raise ConfigError(
                f"{ENV_SHARED_CREDENTIALS_DIR} is set to {shared!r}, which is not a folder",
                hint="point it at the folder holding <profile>.credential, or unset it",
            )
        return folder
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


@dataclass(frozen=True)
class ProfileCredentials:
    """What a tccli credential file holds: keys (perhaps with a token), and perhaps a role to
    assume with them, or the instance role (``type: cvm-role``)."""

    path: Path
    credentials: Credentials | None
    role_arn: str | None = None
    role_session_name: str | None = None
    cvm_role: bool = False


def _profile_string(data: dict[str, Any], name: str, path: Path) -> str | None:
    value = data.get(name)
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise ConfigError(f"{path}: {name} must be a string")
    _check_value(f"{path}: {name}", value)
    return value


def read_profile(choice: ProfileChoice, environ: Mapping[str, str] = os.environ) -> ProfileCredentials | None:
    """The profile's ``<name>.credential``; ``None`` when that file does not exist."""
    path, _ = profile_paths(choice.name, environ)
    data = _read_json_object(path, "credential")
    if data is None:
        return None
    kind = data.get("type")
    if kind == "cvm-role":
        return ProfileCredentials(path, None, cvm_role=True)
    secret_id = _profile_string(data, "secretId", path)
    secret_key = _profile_string(data, "secretKey", path)
    token = _profile_string(data, "token", path)
    missing = [name for name, value in (("secretId", secret_id), ("secretKey", secret_key)) if not value]
    if missing:
        raise ConfigError(
            f"{path}: profile {choice.name!r} has no {' and no '.join(missing)}",
            hint=f"tccli configure set secretId ... secretKey ... --profile {choice.name}",
        )
    assert secret_id is not None and secret_key is not None
    expires_at: float | None = None
    if kind in ("sso", "oauth"):
        # tccli renews these itself; cvmkeys can use them while they last.
        raw = data.get("expiresAt")
        if token is None or isinstance(raw, bool) or not isinstance(raw, (int, float)):
            raise ConfigError(
                f"{path}: profile {choice.name!r} holds temporary credentials (type {kind}) "
                "without a token and expiresAt",
                hint=f"log in again with tccli (profile {choice.name})",
            )
        expires_at = float(raw)
    role_arn = _profile_string(data, "role-arn", path)
    session = _profile_string(data, "role-session-name", path)
    source = f"tccli profile {choice.name!r} ({path})"
    credentials = Credentials(secret_id, secret_key, source=source, token=token, expires_at=expires_at)
    return ProfileCredentials(path, credentials, role_arn=role_arn, role_session_name=session)


# --------------------------------------------------------------------------- resolution


@dataclass(frozen=True)
class StsOptions:
    """Where STS and the metadata service are (tests point both at the emulator)."""

    endpoint: str | None = None  # None: https://sts.tencentcloudapi.com/
    transport: httpx.BaseTransport | None = None
    region: str = "ap-guangzhou"  # STS is global; the region header is required all the same
    timeout: float = 10.0
    # Every STS attempt, for the audit log (as the CVM calls are).
    on_attempt: Callable[[AttemptRecord], None] | None = field(default=None, compare=False)


@dataclass(frozen=True)
class RoleRequest:
    """An STS role to assume, from the environment or a profile."""

    role_arn: str
    session_name: str
    duration_s: int
    external_id: str | None
    chosen_by: str


def _duration(environ: Mapping[str, str]) -> int:
    raw = _env(environ, ENV_SESSION_DURATION)
    if raw is None:
        return DEFAULT_SESSION_DURATION
    try:
        value = int(raw.strip())
    except ValueError:
        raise ConfigError(f"{ENV_SESSION_DURATION} must be a whole number of seconds, not {raw!r}") from None
    if value == 0:  # Terraform: 0 means the default
        return DEFAULT_SESSION_DURATION
    if not 0 < value <= MAX_SESSION_DURATION:
        raise ConfigError(
            f"{ENV_SESSION_DURATION} must be between 1 and {MAX_SESSION_DURATION} seconds, not {value}"
        )
    return value


def _check_role_arn(arn: str, chosen_by: str) -> None:
    # qcs::cam::uin/<account>:roleName/<name> (or role/<id>): a typo here would only show up
    # as an STS refusal, so say it now and name the variable.
    if not arn.startswith("qcs::cam::uin/") or (":roleName/" not in arn and ":role/" not in arn):
        raise ConfigError(
            f"{chosen_by} is {arn!r}, which is not a CAM role ARN",
            hint="a role ARN looks like qcs::cam::uin/100000000001:roleName/cvmkeys-plan",
        )


def _role_from_env(environ: Mapping[str, str], clock: Callable[[], float]) -> RoleRequest | None:
    arn = _env(environ, ENV_ROLE_ARN)
    duration = _duration(environ)
    session = _env(environ, ENV_SESSION_NAME)
    external = _env(environ, ENV_EXTERNAL_ID)
    if arn is None:
        for name in (ENV_SESSION_NAME, ENV_SESSION_DURATION, ENV_EXTERNAL_ID):
            if _env(environ, name) is not None:
                raise ConfigError(
                    f"{name} is set but {ENV_ROLE_ARN} is not", hint=f"set {ENV_ROLE_ARN} or unset {name}"
                )
        return None
    _check_role_arn(arn, ENV_ROLE_ARN)
    if session is None:
        # Terraform needs both; a session name only labels the session, so default it rather
        # than ignore the role the user asked for.
        session = f"cvmkeys-{int(clock())}"
    _check_value(ENV_SESSION_NAME, session)
    return RoleRequest(arn, session, duration, external, ENV_ROLE_ARN)


def _web_identity_token(environ: Mapping[str, str]) -> tuple[Callable[[], str], str] | None:
    """A function reading the OIDC token (a file is read again at each renewal: CI runners and
    TKE rotate it), and where it comes from."""
    inline = _env(environ, ENV_WEB_IDENTITY_TOKEN)
    path = _env(environ, ENV_WEB_IDENTITY_TOKEN_FILE)
    if inline is not None and path is not None:
        raise ConfigError(
            f"both {ENV_WEB_IDENTITY_TOKEN} and {ENV_WEB_IDENTITY_TOKEN_FILE} are set",
            hint="set one of them",
        )
    if inline is not None:
        _check_value(ENV_WEB_IDENTITY_TOKEN, inline)
        return (lambda: inline), ENV_WEB_IDENTITY_TOKEN
    if path is None:
        return None
    return _token_file(ENV_WEB_IDENTITY_TOKEN_FILE, path)


def _token_file(variable: str, path: str) -> tuple[Callable[[], str], str]:
    """A function reading the token in the file ``variable`` names (checked once now, before
    any call), and where it comes from."""
    token_path = Path(os.path.expanduser(path))

    def read() -> str:
        try:
            text = token_path.read_text(encoding="utf-8").strip()
        except OSError as error:
            raise ConfigError(f"{variable}: cannot read {token_path}: {error.strerror}") from None
        except UnicodeDecodeError:
            raise ConfigError(f"{variable}: {token_path} is not text") from None
        _check_value(f"{variable} ({token_path})", text)
        return text

    read()  # fail now, before any call, if the file is not there
    return read, f"{variable} ({token_path})"


def _tke_provider(
    environ: Mapping[str, str], sts: StsOptions, clock: Callable[[], float]
) -> CredentialsProvider | None:
    """Source 7, the TKE pod identity: None when the webhook's variables are not there; a
    ConfigError naming what is missing when only some are."""
    needed = (ENV_TKE_ROLE_ARN, ENV_TKE_TOKEN_FILE, ENV_TKE_PROVIDER_ID)
    values = {name: _env(environ, name) for name in needed}
    if not any(values.values()):
        return None
    missing = [name for name, value in values.items() if value is None]
    if missing:
        raise ConfigError(
            f"{', '.join(name for name in needed if name not in missing)} set but "
            f"{' and '.join(missing)} not: the TKE pod identity needs all of {', '.join(needed)}",
            hint="check the pod's service account annotation (TKE injects these variables)",
        )
    role_arn, token_path, provider_id = (values[name] or "" for name in needed)
    _check_role_arn(role_arn, ENV_TKE_ROLE_ARN)
    _check_value(ENV_TKE_PROVIDER_ID, provider_id)
    read_token, token_source = _token_file(ENV_TKE_TOKEN_FILE, token_path)
    region = _env(environ, ENV_TKE_REGION)
    if region is not None:
        _check_value(ENV_TKE_REGION, region)
        try:
            sts = dataclasses.replace(sts, region=normalize_region(region))
        except KeyError:
            raise ConfigError(f"{ENV_TKE_REGION} is not a region name (such as ap-guangzhou)") from None
    role = RoleRequest(role_arn, f"cvmkeys-{int(clock())}", DEFAULT_SESSION_DURATION, None, ENV_TKE_ROLE_ARN)
    source = f"TKE pod identity, {token_source}"
    return _web_identity_provider(role, provider_id, read_token, source, sts, clock)


def resolve_credentials(
    environ: Mapping[str, str] = os.environ,
    *,
    profile: str | None = None,
    sts: StsOptions | None = None,
    clock: Callable[[], float] = time.time,
) -> CredentialsProvider:
    """The credentials provider the environment and options describe (module docstring).

    No network call is made here: the STS and metadata sources fetch on first use. Every
    ``ConfigError`` names the variable or file, never a secret.
    """
    sts = sts or StsOptions()
    _check_mistaken_names(environ)
    choice = choose_profile(profile, environ)
    web = _web_identity_token(environ)
    role = _role_from_env(environ, clock)
    cam_role = _env(environ, ENV_CAM_ROLE_NAME)
    from_env = None if choice.explicit else credentials_from_env(environ)

    if web is not None:
        read_token, token_source = web
        if role is None:
            raise ConfigError(
                f"{token_source} is set but {ENV_ROLE_ARN} is not",
                hint=f"set {ENV_ROLE_ARN} to the CAM role the OIDC provider may assume",
            )
        others = [
            name
            for name, on in (
                (f"{ENV_SECRET_ID} / {ENV_SECRET_KEY}", from_env is not None),
                (ENV_CAM_ROLE_NAME, cam_role is not None),
                ("--profile", choice.explicit),
            )
            if on
        ]
        if others:
            raise ConfigError(
                f"{token_source} and {' and '.join(others)} are both set: "
                "it is not clear which identity to use",
                hint="OIDC web identity needs no keys; unset the other source",
            )
        provider_id = _env(environ, ENV_PROVIDER_ID) or DEFAULT_PROVIDER_ID
        _check_value(ENV_PROVIDER_ID, provider_id)
        if role.external_id is not None:
            raise ConfigError(f"{ENV_EXTERNAL_ID} is set, but AssumeRoleWithWebIdentity takes no external ID")
        return _web_identity_provider(role, provider_id, read_token, token_source, sts, clock)
    if _env(environ, ENV_PROVIDER_ID) is not None:
        raise ConfigError(
            f"{ENV_PROVIDER_ID} is set but neither {ENV_WEB_IDENTITY_TOKEN} "
            f"nor {ENV_WEB_IDENTITY_TOKEN_FILE} is"
        )

    base = _base_provider(environ, choice, from_env, cam_role, sts, clock)
    if role is not None:
        return _assume_role_provider(base, role, sts, clock)
    return base


def _base_provider(
    environ: Mapping[str, str],
    choice: ProfileChoice,
    from_env: Credentials | None,
    cam_role: str | None,
    sts: StsOptions,
    clock: Callable[[], float],
) -> CredentialsProvider:
    """Sources 1-4, and 7 when none of them is there: the credentials that sign (or are) the calls."""
    if from_env is not None:
        if cam_role is not None:
            raise ConfigError(
                f"{ENV_CAM_ROLE_NAME} and {ENV_SECRET_ID} / {ENV_SECRET_KEY} are both set: "
                "it is not clear which identity to use",
                hint="unset one of them",
            )
        return StaticProvider(from_env)
    if cam_role is not None and not choice.explicit:
        if choice.chosen_by != "default":
            raise ConfigError(
                f"{ENV_CAM_ROLE_NAME} and {choice.chosen_by} are both set: "
                "it is not clear which identity to use",
                hint="unset one of them",
            )
        # The variable is an explicit choice; a default profile lying around is not.
        return _instance_role_provider(environ, cam_role, ENV_CAM_ROLE_NAME, sts, clock)
    found = read_profile(choice, environ)
    if found is None and not choice.explicit:
        tke = _tke_provider(environ, sts, clock)
        if tke is not None:
            return tke
    if found is None:
        credential_path, _ = profile_paths(choice.name, environ)
        looked = (
            []
            if choice.explicit
            else [
                f"{ENV_SECRET_ID} / {ENV_SECRET_KEY}: not set",
                f"{ENV_CAM_ROLE_NAME}: not set",
                f"{ENV_TKE_ROLE_ARN} (a TKE pod identity): not set",
            ]
        )
        looked.append(f"{credential_path}: no such file (tccli profile {choice.name!r}, {_why(choice)})")
        raise ConfigError(
            "no API credentials found; looked at: " + "; ".join(looked),
            hint=f"set {ENV_SECRET_ID} and {ENV_SECRET_KEY}, use OIDC ({ENV_WEB_IDENTITY_TOKEN_FILE} and "
            f"{ENV_ROLE_ARN}), create the profile with `tccli configure --profile {choice.name}`, "
            "or pass --profile NAME (docs/credentials.md)",
        )
    if found.cvm_role:
        name = cam_role or _env(environ, ENV_CAM_ROLE_NAME)
        return _instance_role_provider(
            environ, name, f"tccli profile {choice.name!r} ({found.path}, type cvm-role)", sts, clock
        )
    assert found.credentials is not None
    expires = found.credentials.expires_at
    if expires is not None and expires <= clock():
        raise ConfigError(
            f"{found.path}: the temporary credentials of profile {choice.name!r} expired",
            hint=f"log in again with tccli (profile {choice.name})",
        )
    base: CredentialsProvider = StaticProvider(found.credentials)
    if found.role_arn is not None:
        _check_role_arn(found.role_arn, f"{found.path}: role-arn")
        request = RoleRequest(
            found.role_arn,
            found.role_session_name or f"cvmkeys-{int(clock())}",
            DEFAULT_SESSION_DURATION,
            None,
            f"{found.path}: role-arn",
        )
        return _assume_role_provider(base, request, sts, clock)
    return base


def _sts_client(sts: StsOptions, clock: Callable[[], float]) -> StsClient:
    from reconciler.cloud.sts import sts_client

    return sts_client(sts, clock)


class _RoleFields(TypedDict):
    """What both STS role calls take from a :class:`RoleRequest`."""

    role_arn: str
    session_name: str
    duration_s: int
    source: str


def _role_provider(
    role: RoleRequest,
    source: str,
    sts: StsOptions,
    clock: Callable[[], float],
    assume: Callable[[StsClient, _RoleFields], Credentials],
) -> CredentialsProvider:
    """Credentials of ``role``, fetched again (``assume``, one STS call) before they expire."""
    client = _sts_client(sts, clock)
    fields = _RoleFields(
        role_arn=role.role_arn, session_name=role.session_name, duration_s=role.duration_s, source=source
    )
    return RefreshingProvider(lambda: assume(client, fields), source, clock=clock)


def _assume_role_provider(
    base: CredentialsProvider, role: RoleRequest, sts: StsOptions, clock: Callable[[], float]
) -> CredentialsProvider:
    source = f"role {role.role_arn} ({role.chosen_by}), assumed with {base.source}"
    return _role_provider(
        role,
        source,
        sts,
        clock,
        lambda client, fields: client.assume_role(base, external_id=role.external_id, **fields),
    )


def _web_identity_provider(
    role: RoleRequest,
    provider_id: str,
    read_token: Callable[[], str],
    token_source: str,
    sts: StsOptions,
    clock: Callable[[], float],
) -> CredentialsProvider:
    source = f"role {role.role_arn} by OIDC web identity ({token_source}, provider {provider_id})"
    return _role_provider(
        role,
        source,
        sts,
        clock,
        lambda client, fields: client.assume_role_with_web_identity(
            provider_id=provider_id, web_identity_token=read_token(), **fields
        ),
    )


def _instance_role_provider(
    environ: Mapping[str, str],
    role_name: str | None,
    chosen_by: str,
    sts: StsOptions,
    clock: Callable[[], float],
) -> CredentialsProvider:
    from reconciler.cloud.metadata import MetadataClient

    if role_name is not None:
        _check_value(ENV_CAM_ROLE_NAME, role_name)
    client = MetadataClient(
        _env(environ, ENV_METADATA_ENDPOINT), transport=sts.transport, timeout=sts.timeout
    )
    source = f"CVM instance role {role_name or '(from the metadata service)'} ({chosen_by})"

    def fetch() -> Credentials:
        return client.role_credentials(role_name, source=source)

    return RefreshingProvider(fetch, source, clock=clock)


def load_credentials(environ: Mapping[str, str] = os.environ, *, profile: str | None = None) -> Credentials:
    """Long-lived credentials for the CVM API 2.0 client, or ``ConfigError``.

    The same sources as :func:`resolve_credentials`; the 2.0 client sends no session token, so
    any source that gives temporary credentials (a token, a role, OIDC, the instance role) is
    refused with a message that says so, instead of failing at the first call.
    """
    provider = resolve_credentials(environ, profile=profile)
    if provider.temporary or not isinstance(provider, StaticProvider):
        raise ConfigError(
            f"{provider.source} gives temporary credentials, and the CVM API 2.0 client "
            "sends no session token",
            hint="use the CVM API 3.0 (the default), or a permanent SecretId/SecretKey "
            f"({ENV_SECRET_ID} / {ENV_SECRET_KEY}, or a tccli profile without token or role)",
        )
    return provider.get()


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
