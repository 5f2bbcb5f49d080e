"""Building a CVM client from command-line options: which API, which endpoint, which credentials.

Called by ``operations`` only; the one place a client is chosen (``CLIENTS``).

The API (``choose_api``): ``--api`` (or a saved plan's own, ``options_for_plan``) wins; otherwise
an endpoint whose path is ``/v2/index.php`` (or 2.0's host ``cvm.api.qcloud.com`` with no path)
means the seed's API 2.0, and everything else (the
real cloud's default endpoint, any other endpoint, the in-process emulator) is API 3.0: Tencent has
retired 2.0 for new accounts and is switching it off for old ones (docs/client-api3.md).

``--emulator FLEET`` runs the emulator in this process and sends every request through an httpx
transport straight into it (no socket), signed as for the real API: 3.0 at
``http://localhost/``, 2.0 at ``http://localhost/v2/index.php``, STS at ``http://localhost/``.
It signs with the fleet's first credentials unless ``--profile`` names others or the
environment's keys are the fleet's (then every source of ``resolve_credentials`` is honoured,
an assumed role included, against the emulator's STS). Changes are saved back to the fleet file,
so plan -> apply -> plan converges across runs.

Credentials for the real endpoint come from ``reconciler.cloud.credentials.resolve_credentials``
(every source, in Terraform's order, temporary ones refreshed before they expire) for both APIs:
the 3.0 client sends a session token as ``X-TC-Token``, the 2.0 client as the signed ``Token``
parameter (as Tencent's 2.0 SDK does). STS goes to ``sts.tencentcloudapi.com``, or, for a
loopback endpoint (the served emulator), to that endpoint's host.

Who the credentials are (``Connection.identity``: STS GetCallerIdentity) is asked once per run,
for the plan to show and for the ``account:`` guard (``check_account``).
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit, urlunsplit

import httpx

from reconciler.cloud.base import AttemptRecord, Closing, CloudClient
from reconciler.cloud.credentials import (
    Credentials,
    CredentialsProvider,
    StaticProvider,
    StsOptions,
    credentials_from_env,
    mask_secret_id,
    resolve_credentials,
)
from reconciler.cloud.endpoint import (
    API3_ENDPOINT,
    API3_PATH,
    DEFAULT_ENDPOINT,
    DEFAULT_PATH,
    check_endpoint,
    is_loopback_host,
)
from reconciler.cloud.retry import TuningArgs
from reconciler.errors import CloudError, ConfigError
from reconciler.model import DOCUMENTED_RATE_LIMITS, ApiVersion, CallerIdentity, Plan

if TYPE_CHECKING:  # imported lazily below: only --emulator needs the emulator
    from reconciler.emulator.state import FleetState

_log = logging.getLogger(__name__)

# In-process requests carry these URLs; loopback, so the http:// rule is satisfied honestly.
EMULATOR_URL = "http://localhost/v2/index.php"
EMULATOR_URL3 = "http://localhost/"
EMULATOR_URLS: Mapping[ApiVersion, str] = {ApiVersion.V2: EMULATOR_URL, ApiVersion.V3: EMULATOR_URL3}
V2_HOST = "cvm.api.qcloud.com"
DEFAULT_ENDPOINTS: Mapping[ApiVersion, str] = {ApiVersion.V2: DEFAULT_ENDPOINT, ApiVersion.V3: API3_ENDPOINT}


@dataclass
class ConnectOptions:
    """The connection options every cloud-facing command shares."""

    emulator: Path | None = None
    endpoint: str | None = None
    rate_limit: float | None = None  # None: the documented limits, or none for the in-process emulator
    timeout: float = 10.0
    max_attempts: int = 5
    profile: str | None = None  # --profile: a tccli profile, read instead of the environment
    # Which client: --api, or a saved plan's own (``options_for_plan``); None: ``choose_api``.
    api: ApiVersion | None = None
    environ: Mapping[str, str] = field(default_factory=lambda: os.environ)


@dataclass
class Connection(Closing):
    client: CloudClient
    endpoint_label: str  # what the plan records: the URL, or "emulator:PATH"
    credentials: CredentialsProvider | None = None
    sts: StsOptions | None = None
    _identity: CallerIdentity | None = None

    def identity(self, *, required: bool = False) -> CallerIdentity | None:
        """Who the credentials are (STS GetCallerIdentity), asked once. Over 3.0 a failure is
        an error (the CVM calls would fail the same way); over 2.0 it is an error only when
        ``required`` (an ``account:`` to check): 2.0 keys are an account's keys, which STS (a
        3.0 service every account has) accepts, but a 2.0 user may not be able to reach it."""
        if self._identity is not None or self.credentials is None:
            return self._identity
        from reconciler.cloud.sts import caller_identity

        try:
            found = caller_identity(self.credentials, self.sts)
        except CloudError as error:
            if self.client.api is ApiVersion.V3 or required:
                raise
            _log.warning("could not ask STS who the credentials are: %s", error.message)
            return None
        self._identity = CallerIdentity(found.account_id, found.arn)
        return self._identity

    def close(self) -> None:
        self.client.close()


def check_account(connection: Connection, expected: str | None, what: str) -> None:
    """Refuse (ConfigError) credentials of another account than ``expected`` (``what`` says
    where that account was written: the desired-state file, the saved plan)."""
    if expected is None:
        return
    identity = connection.identity(required=True)
    if identity is None:
        raise ConfigError(
            f"{what} is for account {expected}, and cvmkeys could not ask STS which account the "
            "credentials belong to; nothing was changed"
        )
    if identity.account_id != expected:
        raise ConfigError(
            f"{what} is for account {expected}, but the credentials are of account "
            f"{identity.account_id} ({identity.arn}); nothing was changed",
            hint="use the credentials of that account, or fix the account in the file",
        )


def choose_api(options: ConnectOptions) -> ApiVersion:
    """The API to speak (module docstring)."""
    parts = urlsplit(options.endpoint.strip()) if options.endpoint is not None else None
    # API 2.0's path, or its host (which serves nothing else; its path may be left out).
    v2_path = parts is not None and (
        parts.path == DEFAULT_PATH or (parts.hostname == V2_HOST and parts.path in ("", "/"))
    )
    if options.api is None:
        return ApiVersion.V2 if v2_path else ApiVersion.V3
    if options.api is ApiVersion.V3 and v2_path:
        raise ConfigError(
            f"the endpoint {options.endpoint} is API 2.0's ({DEFAULT_PATH}), but API 3.0 was asked for",
            hint="drop --api 3.0, or give the 3.0 endpoint (its path is /)",
        )
    return options.api


def apply_command(planfile: object, plans: Sequence[Plan]) -> str:
    """The command that applies a saved plan file where it was made: ``--endpoint`` added when
    ``options_for_plan`` would not take the plans' endpoint unasked (a served emulator, a
    private endpoint)."""
    import shlex

    told = sorted({p.endpoint for p in plans if not _goes_unasked(p.endpoint)})
    path = str(planfile)
    if path.startswith("-"):  # else read as an option
        path = f"./{path}"
    command = f"cvmkeys apply {shlex.quote(path)}"
    # Quoted: a plan file is data, and its endpoint is printed for a person to paste.
    return command + (f" --endpoint {shlex.quote(told[0])}" if len(told) == 1 else "")


def _goes_unasked(endpoint: str) -> bool:
    """Whether apply uses a plan's recorded endpoint without being told (``options_for_plan``)."""
    return endpoint.startswith("emulator:") or endpoint in (DEFAULT_ENDPOINT, API3_ENDPOINT)


def options_for_plan(plan: Plan, options: ConnectOptions, planfile: object = "PLANFILE") -> ConnectOptions:
    """Where to apply a saved plan: where it was made (and with its API) unless told otherwise,
    and never somewhere else.

    Trusted no further than is safe: a plan file is data, not an address book. Its endpoint is
    used unasked only when it is Tencent's; an ``emulator:PATH`` plan opens PATH only if it is
    a fleet file (``_check_fleet_file``: anything else is refused unread beyond that check and
    unquoted). What the command line gives is compared as the plan recorded it: endpoints
    normalised (``check_endpoint``), fleet files as resolved paths.
    """
    if options.api is not None and options.api is not plan.api:
        raise ConfigError(
            f"the plan was made for CVM API {plan.api.value}, not {options.api.value}",
            hint="apply it without --api (it is applied with its own), or plan again with --api",
        )
    options = dataclasses.replace(options, api=plan.api)
    default_path = API3_PATH if plan.api is ApiVersion.V3 else DEFAULT_PATH
    if options.emulator is None and options.endpoint is None:
        if plan.endpoint.startswith("emulator:"):
            fleet = Path(plan.endpoint.removeprefix("emulator:"))
            _check_fleet_file(fleet)
            return dataclasses.replace(options, emulator=fleet)
        if _goes_unasked(plan.endpoint):
            return dataclasses.replace(options, endpoint=plan.endpoint)
        raise ConfigError(
            f"the plan was made against {plan.endpoint}",
            hint=f"to apply it there, say so: {apply_command(planfile, [plan])}",
        )
    if options.emulator is not None:
        same = plan.endpoint.startswith("emulator:") and _same_file(
            Path(plan.endpoint.removeprefix("emulator:")), options.emulator
        )
        given = emulator_label(options.emulator)
    else:
        given = check_endpoint(options.endpoint or "", default_path=default_path)
        same = not plan.endpoint.startswith("emulator:") and given == _normalised(plan.endpoint, default_path)
    if not same:
        raise ConfigError(
            f"the plan was made against {plan.endpoint}, not {given}",
            hint="apply it where it was planned, or plan again against the new endpoint",
        )
    return options


def _normalised(endpoint: str, default_path: str) -> str:
    try:
        return check_endpoint(endpoint, default_path=default_path)
    except ConfigError:
        return endpoint  # compared as written: it will not match a valid --endpoint


def _same_file(recorded: Path, given: Path) -> bool:
    try:
        return recorded.resolve() == given.resolve() or recorded.samefile(given)
    except OSError:
        return False


# Bounded like the emulator's own reader (docs/reliability.md: fleet files over 64 MiB refused).
_MAX_FLEET_BYTES = 64 * 1024 * 1024


def _check_fleet_file(path: Path) -> None:
    """Refuse, without quoting a byte of it, a file a plan names as its emulator fleet that is
    not one (a top-level ``regions`` and ``credentials``): a resealed plan must not make apply
    open and echo an arbitrary file (a token file, say)."""
    from reconciler.desired.yaml_nodes import has_top_level_keys
    from reconciler.files import FileReadError, read_bounded

    refused = ConfigError(
        f"the plan names {path} as its emulator fleet file, and that is not a fleet file: not opened",
        hint="apply it with --emulator FLEET naming the fleet file, or plan again",
    )
    try:
        data = read_bounded(path, _MAX_FLEET_BYTES, "fleet file")
    except FileReadError as error:  # its messages never quote the file's content
        raise ConfigError(
            f"the plan names {path} as its emulator fleet file: {error.problems[0].message}",
            hint=refused.hint,
        ) from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise refused from None
    if not has_top_level_keys(text, frozenset({"regions", "credentials"})):
        raise refused


def emulator_label(fleet: Path) -> str:
    """What a plan records for ``--emulator FLEET``: the absolute path, so a saved plan can be
    applied from any directory."""
    return f"emulator:{fleet.absolute()}"


def _sts_endpoint(endpoint: str) -> str | None:
    """STS for this CVM endpoint: the same host for a loopback one (the served emulator answers
    STS at ``/``), else Tencent's global STS endpoint (``None``)."""
    parts = urlsplit(endpoint)
    if is_loopback_host(parts.hostname or ""):
        return urlunsplit((parts.scheme, parts.netloc, API3_PATH, "", ""))
    return None


def connect(
    region: str,
    options: ConnectOptions,
    *,
    on_attempt: Callable[[AttemptRecord], None] | None = None,
) -> Connection:
    """A client for ``region`` as the options say."""
    if options.emulator is not None and options.endpoint is not None:
        raise ConfigError("give --emulator or --endpoint, not both")
    api = choose_api(options)
    # The in-process emulator has no rate limit to respect: throttling it would only slow demos.
    # Otherwise each action's documented figure, or --rate-limit's one rate (0: none), either API.
    documented = None if options.emulator is not None else DOCUMENTED_RATE_LIMITS
    rate_limit = options.rate_limit if options.rate_limit is not None else documented

    def make_client(
        credentials: CredentialsProvider, endpoint: str, via: httpx.BaseTransport | None
    ) -> CloudClient:
        # What both APIs' clients are given alike, whichever is made.
        tuning = TuningArgs(
            transport=via,
            rate_limit=rate_limit,
            timeout=options.timeout,
            max_attempts=options.max_attempts,
            on_attempt=on_attempt,
        )
        client_class: Callable[..., CloudClient]
        if api is ApiVersion.V3:
            from reconciler.cloud.api3 import Api3Client

            client_class = Api3Client
        else:
            from reconciler.cloud.client import CvmClient

            client_class = CvmClient
        return client_class(credentials, region, endpoint=endpoint, **tuning)

    environ = options.environ
    if options.emulator is not None:
        from reconciler.emulator.app import EmulatorApp, transport
        from reconciler.emulator.state import FleetState

        state = FleetState.from_file(options.emulator, persist=True)
        via = transport(EmulatorApp(state))
        sts = StsOptions(
            endpoint=EMULATOR_URL3, transport=via, timeout=options.timeout, on_attempt=on_attempt
        )
        provider: CredentialsProvider
        if options.profile is not None:
            provider = resolve_credentials(environ, profile=options.profile, sts=sts)
        else:
            # Environment credentials are used only when the fleet knows them: real cloud
            # credentials in the environment must not break (or be sent to) the emulator.
            from_env = credentials_from_env(environ)
            if from_env is not None and state.secret_key_for(from_env.secret_id) is not None:
                provider = resolve_credentials(environ, sts=sts)
            else:
                provider = StaticProvider(_fleet_credentials(state, options.emulator))
        _log_credentials(provider)
        client = make_client(provider, EMULATOR_URLS[api], via)
        return Connection(client, emulator_label(options.emulator), provider, sts)
    endpoint = check_endpoint(
        options.endpoint or DEFAULT_ENDPOINTS[api],
        default_path=DEFAULT_PATH if api is ApiVersion.V2 else API3_PATH,
    )
    sts = StsOptions(endpoint=_sts_endpoint(endpoint), timeout=options.timeout, on_attempt=on_attempt)
    provider = resolve_credentials(environ, profile=options.profile, sts=sts)
    _log_credentials(provider)
    client = make_client(provider, endpoint, None)
    return Connection(client, endpoint, provider, sts)


def _log_credentials(provider: CredentialsProvider) -> None:
    # Where they came from (and a masked SecretId for fixed ones): never the secret.
    if isinstance(provider, StaticProvider):
        shown = mask_secret_id(provider.get().secret_id)
        _log.info("credentials: SecretId %s from %s", shown, provider.source)
    else:
        _log.info("credentials: %s", provider.source)


def _fleet_credentials(state: FleetState, fleet: Path) -> Credentials:
    if not state.credentials:
        raise ConfigError(f"{fleet}: the fleet file lists no credentials")
    first = state.credentials[0]
    return Credentials(first.secret_id, first.secret_key, source=f"the fleet file {fleet}")
