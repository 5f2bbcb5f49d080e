"""Shared fixtures: an emulator of the CVM API loaded with a copy of examples/fleet.yaml, and the
``api`` every end-to-end test is parametrised over ("2.0", "3.0").

* ``emulator``: an ``Emulator`` with default settings (operations finish at once, no rate
  limit, no faults), persisted to a temporary copy of the example fleet.
* ``make_emulator``: a factory for other settings, e.g.
  ``make_emulator(op_seconds=5, rate_limit=10, faults=FaultProfile.only("lost"))``.

Through an ``Emulator`` a test can talk to the emulator in-process (``client()``, or
``transport()`` for its own ``httpx.Client``), over a real socket (``with em.serve() as
server: server.url``), read the backend (``em.state``), step time (``em.clock.advance(5)``)
and send raw signed requests (``em.call("DescribeKeyPairs", {...})``).
"""

from __future__ import annotations

import itertools
import shutil
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypedDict

import httpx
import pytest

if TYPE_CHECKING:  # only for the annotations; Python 3.10's typing has no Unpack
    from typing_extensions import Unpack

from reconciler.cloud.auth import Api2Auth
from reconciler.cloud.credentials import Credentials
from reconciler.cloud.signing import HMAC_SHA256, sign
from reconciler.emulator.app import EmulatorApp, transport
from reconciler.emulator.faults import FaultProfile
from reconciler.emulator.server import RunningServer, serve_in_thread
from reconciler.emulator.state import FleetState

EXAMPLE_FLEET = Path(__file__).resolve().parent.parent / "examples" / "fleet.yaml"
SECRET_ID = "AKIDEMULATOR0000000000000000000000"
SECRET_KEY = "emulator-secret-key"
REGION = "ap-guangzhou"
# What in-process requests are addressed to; the host is part of what gets signed.
IN_PROCESS_URL = "https://cvm.api.qcloud.com/v2/index.php"
_nonces = itertools.count(int(time.time()) % 1_000_000 * 1000 + 1)


def signed_params(
    credentials: Credentials,
    action: str,
    params: Mapping[str, str] | None = None,
    *,
    region: str,
    url: str,
    method: str = "GET",
    clock: Callable[[], float] = time.time,
    signature_method: str = HMAC_SHA256,
    version: str | None = None,
) -> dict[str, str]:
    """A complete v1-signed (API 2.0 style) parameter set for ``action`` sent to ``url``: the
    public parameters as the client's own signer makes them (``Api2Auth.public_params``), then
    ``params``, which may override them, all signed for ``url``'s host and path."""
    signer = Api2Auth(
        credentials, region, signature_method=signature_method, clock=clock, nonce=lambda: next(_nonces)
    )
    full = {"Action": action} if version is None else {"Action": action, "Version": version}
    full.update(signer.public_params())
    full.update(params or {})
    target = httpx.URL(url)
    full["Signature"] = sign(credentials.secret_key, method, target.netloc.decode(), target.path, full)
    return full


class FakeClock:
    """Real time plus an offset that ``advance`` moves forward: near enough to the clock of
    any client for Timestamp checks, and steppable for asynchronous operations."""

    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.time() + self.offset

    def advance(self, seconds: float) -> None:
        self.offset += seconds


class How(TypedDict, total=False):
    """How ``Emulator.signed`` and ``Emulator.call`` send a request: ``method`` GET (the
    default) or POST, to ``url`` (the emulator's own unless given), signed for ``region`` (the
    emulator's unless given)."""

    method: str
    url: str | None
    region: str | None


def _method(how: How) -> str:
    return how.get("method", "GET")


@dataclass
class Emulator:
    """An emulator under test, with what a test needs to talk to it."""

    state: FleetState
    app: EmulatorApp
    clock: FakeClock
    fleet_path: Path
    secret_id: str = SECRET_ID
    secret_key: str = field(default=SECRET_KEY, repr=False)
    region: str = REGION
    url: str = IN_PROCESS_URL

    def transport(self) -> httpx.BaseTransport:
        return transport(self.app)

    def client(self, **kwargs: Any) -> httpx.Client:
        return httpx.Client(transport=self.transport(), **kwargs)

    def serve(self) -> RunningServer:
        """Serve over a real socket on a free port (use as a context manager)."""
        return serve_in_thread(self.app)

    def signed(
        self, action: str, params: Mapping[str, str] | None = None, **how: Unpack[How]
    ) -> dict[str, str]:
        """A complete, correctly signed parameter set for ``action``."""
        credentials = Credentials(self.secret_id, self.secret_key)
        region, url = how.get("region") or self.region, how.get("url") or self.url
        return signed_params(credentials, action, params, region=region, method=_method(how), url=url)

    def call(
        self, action: str, params: Mapping[str, str] | None = None, **how: Unpack[How]
    ) -> httpx.Response:
        """Send one signed request (in-process unless ``url`` points at a served emulator)."""
        url = how.get("url")
        signed = self.signed(action, params, **how)
        client = httpx.Client(transport=self.transport()) if url is None else httpx.Client()
        with client:
            if _method(how) == "GET":
                return client.get(url or self.url, params=signed)
            return client.post(url or self.url, data=signed)


EmulatorFactory = Callable[..., Emulator]


@pytest.fixture
def make_emulator(tmp_path: Path) -> Iterator[EmulatorFactory]:
    """Factory: ``make_emulator(op_seconds=0.0, rate_limit=None, latency_ms=0.0, faults=None,
    fleet=None)``; ``fleet`` is a path to copy instead of examples/fleet.yaml."""
    counter = itertools.count()

    def make(
        *,
        op_seconds: float = 0.0,
        rate_limit: float | None = None,
        latency_ms: float = 0.0,
        faults: FaultProfile | None = None,
        fleet: Path | None = None,
    ) -> Emulator:
        path = tmp_path / f"fleet-{next(counter)}.yaml"
        shutil.copyfile(fleet or EXAMPLE_FLEET, path)
        clock = FakeClock()
        state = FleetState.from_file(path, clock=clock, op_seconds=op_seconds)
        app = EmulatorApp(state, clock=clock, rate_limit=rate_limit, latency_ms=latency_ms, faults=faults)
        return Emulator(state=state, app=app, clock=clock, fleet_path=path)

    yield make


@pytest.fixture(params=["2.0", "3.0"])
def api(request: pytest.FixtureRequest) -> str:
    """The CVM API a test runs over: every end-to-end test runs over both (``--api`` on the
    command line, ``support.emulator_client(..., api)`` for a client)."""
    return str(request.param)


@pytest.fixture
def emulator(make_emulator: EmulatorFactory) -> Emulator:
    """The example fleet, persisted to a temporary copy, default settings."""
    return make_emulator()


@pytest.fixture
def example(tmp_path: Path) -> tuple[Path, Path]:
    """The bundled desired file and a private copy of the example fleet (apply may change it)."""
    examples = Path(__file__).resolve().parent.parent / "examples"
    fleet = tmp_path / "fleet.yaml"
    shutil.copy(examples / "fleet.yaml", fleet)
    return examples / "bindings.yaml", fleet
