"""Helpers shared by test modules (pytest puts tests/ on sys.path: ``from support import ...``)."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from conftest import Emulator
from hypothesis import strategies as st
from typer.testing import CliRunner

from bench.fleetgen import SECRET_ID, SECRET_KEY, generate, write
from reconciler.cli import app
from reconciler.cloud.api3 import Api3Client
from reconciler.cloud.base import CloudClient
from reconciler.cloud.client import CvmClient
from reconciler.cloud.credentials import Credentials
from reconciler.connect import EMULATOR_URL, EMULATOR_URL3
from reconciler.emulator.app import EmulatorApp, transport
from reconciler.emulator.server import serve_in_thread
from reconciler.emulator.state import FleetState, Mutation
from reconciler.errors import InputError
from reconciler.model import Desired, DesiredKey, Instance, KeyPair, Observed, Scope

APIS = ("2.0", "3.0")
# The unbind action of each API, and its throttling answer's code.
UNBIND = {"2.0": "UnBindInstanceKey", "3.0": "DisassociateInstancesKeyPairs"}
THROTTLED = {"2.0": 4400, "3.0": "RequestLimitExceeded"}

# The key and instance IDs of the example fleet (examples/fleet.yaml), as the emulator's tests name them.
CI, OLD, OPS, UNMANAGED = "skey-3glfot13", "skey-8x9y0z12", "skey-5k6l7m8n", "skey-0u0u0u0u"
WEB1, WEB2, DB1, BATCH1, BASTION, WIN1 = (
    "ins-1a2b3c4d",
    "ins-5e6f7a8b",
    "ins-9c8d7e6f",
    "ins-0c0d0e0f",
    "ins-99999999",
    "ins-7w7w7w7w",
)

# An environment for the CLI in which no ambient credentials, profile or region may leak into a
# test (None removes the variable for the run).
CLEAN_ENV: dict[str, str | None] = {
    "NO_COLOR": "1",
    "TENCENTCLOUD_SECRET_ID": None,
    "TENCENTCLOUD_SECRET_KEY": None,
    "TENCENTCLOUD_REGION": None,
    "TENCENTCLOUD_PROFILE": None,
    "TCCLI_PROFILE": None,
}

_runner = CliRunner()


def run_cli(*args: str, env: Mapping[str, str | None] | None = None) -> tuple[int, str, str]:
    """Run ``cvmkeys ARGS`` in-process; (exit code, stdout, stderr). Never a traceback."""
    result = _runner.invoke(app, list(args), env=env or {"NO_COLOR": "1"})
    assert "Traceback" not in result.stdout + result.stderr, result.stdout + result.stderr
    return result.exit_code, result.stdout, result.stderr


def run_command(
    command: Sequence[str], *, cwd: Path, env: Mapping[str, str] | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """``command`` in a subprocess in ``cwd``, with ``env`` added to this process's environment:
    text output captured, the exit code left to the test to check."""
    return subprocess.run(
        list(command),
        cwd=cwd,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def saved_plan(example: tuple[Path, Path], plan_file: Path) -> Path:
    """``cvmkeys plan DESIRED --emulator FLEET --out PLAN_FILE`` for the ``example`` fixture's
    (desired file, fleet), which must succeed; ``plan_file``."""
    desired, fleet = example
    code, _, err = run_cli("plan", str(desired), "--emulator", str(fleet), "--out", str(plan_file))
    assert code == 0, err
    return plan_file


def served_url(url: str, api: str) -> str:
    """The endpoint of ``api`` on a served emulator (``RunningServer.url`` is 2.0's
    ``.../v2/index.php``; 3.0 is the root, which cvmkeys speaks 3.0 to by default)."""
    return url if api == "2.0" else url.removesuffix("v2/index.php")


def mutated_pairs(mutation: Mutation) -> list[tuple[str, str]]:
    """Every (key, instance) a mutating call named: 2.0 one key, 3.0 every key x instance."""
    keys = mutation.key_ids or ((mutation.key_id,) if mutation.key_id else ())
    return [(key, iid) for key in keys for iid in mutation.instance_ids]


def api_client(
    api: str,
    credentials: Credentials,
    region: str,
    *,
    endpoint: str | None = None,
    rate_limit: float | None = None,
    **options: Any,
) -> CloudClient:
    """A real client of ``api`` (2.0: ``CvmClient``, 3.0: ``Api3Client``) for ``region`` at
    ``endpoint`` (the in-process emulator's URL of that API unless given), ``rate_limit`` calls a
    second for every action on the client's side (None: no client-side limit). ``options`` go to
    the client as they are, but for 2.0's ``http_method``, which 3.0 has not."""
    if api == "3.0":
        options.pop("http_method", None)
        kind, url = Api3Client, EMULATOR_URL3
    else:
        kind, url = CvmClient, EMULATOR_URL
    return kind(credentials, region, endpoint=endpoint or url, rate_limit=rate_limit, **options)


def emulator_client(emulator: EmulatorApp, region: str, api: str = "2.0", **options: Any) -> CloudClient:
    """A real client of ``api`` talking to ``emulator`` in-process with the fleet's first
    credentials and, unless ``options`` say otherwise, no client-side rate limit."""
    first = emulator.state.credentials[0]
    credentials = Credentials(first.secret_id, first.secret_key)
    return api_client(api, credentials, region, transport=transport(emulator), **options)


def observed(
    bindings: Mapping[str, Sequence[str]],
    instances: Sequence[Instance],
    names: Mapping[str, str] | None = None,
    region: str = "ap-guangzhou",
) -> Observed:
    """What the observer would read: key ``k`` bound to ``bindings[k]`` and named
    ``names[k]`` (``name-k`` by default), and ``instances``."""
    names = names or {}
    return Observed(
        region,
        {k: KeyPair(k, names.get(k, f"name-{k}"), tuple(v)) for k, v in bindings.items()},
        {i.instance_id: i for i in instances},
    )


def desired(
    keys: Mapping[str, Sequence[str]], scope: Scope = Scope.KEYS, region: str = "ap-guangzhou", **kw: Any
) -> Desired:
    """A desired state allowing key ``k`` on ``keys[k]``; ``kw`` are the other ``Desired`` fields."""
    return Desired(region, scope, {k: DesiredKey(k, frozenset(v)) for k, v in keys.items()}, **kw)


def live_state(fleet: Path) -> dict[str, Any]:
    """What the emulator holds now for the fleet fixture ``fleet`` (its live state, read afresh
    as another process would). The fixture itself is never written: compare this instead."""
    return FleetState.from_file(fleet, persist=False).to_data()


def serve_fleet(
    fleet: Path, region: str = "ap-guangzhou", *options: str
) -> tuple[subprocess.Popen[str], Emulator]:
    """``cvmkeys emulator serve --fleet FLEET --port 0 [OPTIONS]`` in a subprocess, and an
    ``Emulator`` that signs requests to it with the credentials it printed
    (``.call(..., url=em.url)``)."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    command = [sys.executable, "-m", "reconciler", "emulator", "serve", "--fleet", str(fleet), "--port", "0"]
    command.extend(options)
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    assert process.stdout is not None
    lines = [process.stdout.readline() for _ in range(3)]
    url = re.search(r"at (http://127\.0\.0\.1:\d+/v2/index\.php)", lines[0])
    if url is None:
        process.kill()
        pytest.fail(f"no endpoint printed: {lines}; stderr: {process.communicate()[1]}")
    em = Emulator.__new__(Emulator)
    em.secret_id, em.secret_key = lines[1].split()[-1], lines[2].split()[-1]
    em.region, em.url = region, url.group(1)
    return process, em


def stop_served(process: subprocess.Popen[str]) -> None:
    """Stop a ``serve_fleet`` process as Ctrl-C does (killed if it has not stopped in 10 s)."""
    if process.poll() is None:
        process.send_signal(signal.SIGINT)
        try:
            process.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.communicate()


class FakeTime:
    """A clock that moves only when something sleeps; sleeps are recorded."""

    def __init__(self, start: float = 1_750_000_000.0) -> None:
        self.now = start
        self.sleeps: list[float] = []
        self._lock = threading.Lock()

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        with self._lock:
            self.sleeps.append(seconds)
            self.now += seconds


# ----------------------------------------------------------------------- fuzzing the loaders

# What a file may hold, for a loader's arbitrary-input test (parametrized over the kinds, so
# each gets the full example budget): any bytes, or any text as UTF-8 (lone surrogates kept).
ARBITRARY_INPUT: dict[str, st.SearchStrategy[bytes]] = {
    "bytes": st.binary(max_size=400),
    "text": st.text(max_size=400).map(lambda text: text.encode("utf-8", "surrogatepass")),
}


def check_placed(error: InputError, path: Path) -> None:
    """``error`` names problems of the file at ``path``, each one short line, with a line and
    column wherever it has a place."""
    assert error.problems
    for problem in error.problems:
        assert problem.file == str(path)
        assert problem.line is None or (problem.line >= 1 and (problem.column or 0) >= 1)
        assert "\n" not in problem.message and len(problem.message) < 600, problem.message


@st.composite
def mutations(draw: st.DrawFn, base: bytes, tokens: Sequence[bytes], *, repeat: int, copies: int) -> bytes:
    """``base`` with 1 to 4 edits at random places: random bytes or one of ``tokens`` inserted,
    deleted over their length or written over it, or a stretch of up to ``repeat`` bytes
    repeated 2 to ``copies`` times."""
    data = bytearray(base)
    for _ in range(draw(st.integers(1, 4))):
        where = draw(st.integers(0, len(data)))
        kind = draw(st.sampled_from(["insert", "delete", "replace", "repeat"]))
        chunk = draw(st.one_of(st.binary(min_size=1, max_size=6), st.sampled_from(list(tokens))))
        if kind == "insert":
            data[where:where] = chunk
        elif kind == "delete":
            del data[where : where + len(chunk)]
        elif kind == "replace":
            data[where : where + len(chunk)] = chunk
        else:
            stretch = data[where : where + draw(st.integers(1, repeat))]
            data[where:where] = stretch * draw(st.integers(2, copies))
    return bytes(data)


# ----------------------------------------------------------------------- a generated fleet, served

Binding = tuple[str, str]
# The CLI's environment for a fleet bench/fleetgen.py generated: its credentials.
GENERATED_ENV: dict[str, str] = {
    "NO_COLOR": "1",
    "TENCENTCLOUD_SECRET_ID": SECRET_ID,
    "TENCENTCLOUD_SECRET_KEY": SECRET_KEY,
}


def ready_in(plan_json: str) -> set[Binding]:
    """The (key, instance) bindings a plan document (or ``plan --format json``) has ready."""
    return {
        (c["key_id"], c["instance_id"]) for c in json.loads(plan_json)["changes"] if c["status"] == "ready"
    }


@dataclass(frozen=True)
class PlannedFleet:
    """A generated fleet served over a real socket, and the saved plan ``cvmkeys plan`` made of it."""

    region: str
    fleet: Path
    desired: Path
    state: FleetState
    initial: set[Binding]
    plan_file: Path
    url: str
    planned: set[Binding]


@contextmanager
def planned_fleet(
    tmp_path: Path, instances: int, keys: int, *, seed: int, api: str, op_seconds: float, latency_ms: float
) -> Iterator[PlannedFleet]:
    """Generate a fleet in ``tmp_path`` (half its bindings to remove, the scope picked by
    ``seed``), persisted to its file, serve it over ``api`` while the block runs, and save its
    plan to ``tmp_path/plan.json``. The state stays readable after the block."""
    scope = ("keys", "account", "instances")[seed % 3]
    gen = generate(instances, keys, seed=seed, remove_fraction=0.5, scope=scope)
    fleet, desired = write(gen, tmp_path)
    state = FleetState.from_file(fleet, persist=True, op_seconds=op_seconds)
    initial = state.bindings(gen.region)
    plan_file = tmp_path / "plan.json"
    with serve_in_thread(EmulatorApp(state, latency_ms=latency_ms)) as server:
        url = served_url(server.url, api)
        args = ("plan", str(desired), "--endpoint", url, "--out", str(plan_file), "--rate-limit", "1000")
        code, out, err = run_cli(*args, env=GENERATED_ENV)
        assert code == 0, out + err
        planned = ready_in(plan_file.read_text())
        yield PlannedFleet(gen.region, fleet, desired, state, initial, plan_file, url, planned)
