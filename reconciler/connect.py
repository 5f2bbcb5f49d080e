"""Building a CVM client from command-line options: the real endpoint or the bundled emulator.

Called by ``operations`` only. ``--emulator FLEET`` runs the emulator in this process and sends every
request through an httpx transport straight into it (no socket), signed as for the real API,
with the fleet's first credentials unless ``--profile`` names others or the environment holds
credentials the fleet accepts.
Changes are saved back to the fleet file, so plan -> apply -> plan converges across runs.
The real endpoint takes credentials from ``--profile``, the environment, or a tccli profile
(``reconciler.cloud.credentials.load_credentials``).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING

import httpx

from reconciler.cloud.base import AttemptRecord, CloudClient
from reconciler.cloud.client import DEFAULT_ENDPOINT, CvmClient
from reconciler.cloud.credentials import Credentials, credentials_from_env, load_credentials, mask_secret_id
from reconciler.cloud.endpoint import API3_ENDPOINT, API3_PATH, DEFAULT_PATH, check_endpoint
from reconciler.errors import ConfigError
from reconciler.model import DOCUMENTED_RATE_LIMITS, ApiVersion, Plan

if TYPE_CHECKING:  # imported lazily below: only --emulator needs the emulator
    from reconciler.emulator.state import FleetState

_log = logging.getLogger(__name__)

DEFAULT_RATE_LIMIT = DOCUMENTED_RATE_LIMITS  # per action: DescribeInstances 40 a second, the rest 10
# In-process requests carry this URL; loopback, so the http:// rule is satisfied honestly.
EMULATOR_URL = "http://localhost/v2/index.php"


@dataclass
class ConnectOptions:
    """The connection options every cloud-facing command shares."""

    emulator: Path | None = None
    endpoint: str | None = None
    rate_limit: float | None = None  # None: the documented limits, or none for the in-process emulator
    timeout: float = 10.0
    max_attempts: int = 5
    profile: str | None = None  # --profile: a tccli profile, read instead of the environment
    api: ApiVersion = ApiVersion.V2  # which client; a saved plan's own (``options_for_plan``)


@dataclass
class Connection:
    client: CloudClient
    endpoint_label: str  # what the plan records: the URL, or "emulator:PATH"

    def close(self) -> None:
        self.client.close()

    def __enter__(self) -> Connection:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def options_for_plan(plan: Plan, options: ConnectOptions) -> ConnectOptions:
    """Where to apply a saved plan: where it was made (and with its API) unless told otherwise,
    and never somewhere else.

    Trusted no further than is safe: a plan file is data, not an address book. Its endpoint is
    used unasked only when it is Tencent's; an ``emulator:PATH`` plan opens PATH only if it is
    a fleet file (``_check_fleet_file``: anything else is refused unread beyond that check and
    unquoted). What the command line gives is compared as the plan recorded it: endpoints
    normalised (``check_endpoint``), fleet files as resolved paths.
    """
    options = dataclasses.replace(options, api=plan.api)
    default_path = API3_PATH if plan.api is ApiVersion.V3 else DEFAULT_PATH
    if options.emulator is None and options.endpoint is None:
        if plan.endpoint.startswith("emulator:"):
            fleet = Path(plan.endpoint.removeprefix("emulator:"))
            _check_fleet_file(fleet)
            return dataclasses.replace(options, emulator=fleet)
        if plan.endpoint in (DEFAULT_ENDPOINT, API3_ENDPOINT):
            return dataclasses.replace(options, endpoint=plan.endpoint)
        raise ConfigError(
            f"the plan was made against {plan.endpoint}",
            hint=f"to apply it there, say so: cvmkeys apply PLANFILE --endpoint {plan.endpoint}",
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


def connect(
    region: str,
    options: ConnectOptions,
    *,
    on_attempt: Callable[[AttemptRecord], None] | None = None,
) -> Connection:
    """A client for ``region`` as the options say."""
    if options.emulator is not None and options.endpoint is not None:
        raise ConfigError("give --emulator or --endpoint, not both")
    if options.api is not ApiVersion.V2:
        # The one place a client is chosen: the 3.0 client registers here.
        raise ConfigError(f"CVM API {options.api.value} is not supported by this cvmkeys")
    # The in-process emulator has no rate limit to respect: throttling it would only slow demos.
    default_rate = None if options.emulator is not None else DEFAULT_RATE_LIMIT
    rate_limit = options.rate_limit if options.rate_limit is not None else default_rate

    def make_client(credentials: Credentials, endpoint: str, via: httpx.BaseTransport | None) -> CvmClient:
        return CvmClient(
            credentials,
            region,
            endpoint=endpoint,
            transport=via,
            rate_limit=rate_limit,
            timeout=options.timeout,
            max_attempts=options.max_attempts,
            on_attempt=on_attempt,
        )

    if options.emulator is not None:
        from reconciler.emulator.app import EmulatorApp, transport
        from reconciler.emulator.state import FleetState

        state = FleetState.from_file(options.emulator, persist=True)
        if options.profile is not None:
            credentials = load_credentials(profile=options.profile)
        else:
            # Environment credentials are used only when the fleet knows them: real cloud
            # credentials in the environment must not break (or be sent to) the emulator.
            from_env = credentials_from_env()
            if from_env is not None and state.secret_key_for(from_env.secret_id) is not None:
                credentials = from_env
            else:
                credentials = _fleet_credentials(state, options.emulator)
        _log_credentials(credentials)
        client = make_client(credentials, EMULATOR_URL, transport(EmulatorApp(state)))
        return Connection(client, emulator_label(options.emulator))
    endpoint = check_endpoint(options.endpoint or DEFAULT_ENDPOINT)
    credentials = load_credentials(profile=options.profile)
    _log_credentials(credentials)
    client = make_client(credentials, endpoint, None)
    return Connection(client, endpoint)


def _log_credentials(credentials: Credentials) -> None:
    # The masked SecretId only: enough to tell two accounts apart, never the secret.
    _log.info("credentials: SecretId %s from %s", mask_secret_id(credentials.secret_id), credentials.source)


def _fleet_credentials(state: FleetState, fleet: Path) -> Credentials:
    if not state.credentials:
        raise ConfigError(f"{fleet}: the fleet file lists no credentials")
    first = state.credentials[0]
    return Credentials(first.secret_id, first.secret_key, source=f"the fleet file {fleet}")
