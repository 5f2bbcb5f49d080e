"""Security: the secret key is found nowhere, plain http goes only to loopback, forged and
replayed requests change nothing, and crafted IDs never reach a request.

* The secret key (chosen with ``+ / = & %`` so that its URL-encoded and JSON forms differ from
  it) is searched, in every form, in stdout, stderr, plan files, audit logs, log records and
  exception texts, for every command (validate, plan, show, apply, import), every output
  format, with ``--debug -vv`` and ``--log-level DEBUG``, and on the error paths: a wrong
  secret key (the API's "bad signature" answer), an unknown SecretId, a failed apply, a stale
  plan, a malformed tccli profile. Two runs are real processes, so that logging is set up as
  users get it.
* The emulator's own refusals (bad signature 4100, unknown SecretId 4104, replayed Nonce and
  stale Timestamp 4500) are tested in ``test_emulator.py``; here a request captured off the
  wire from the real client is replayed and altered.
* Crafted IDs (``ins-1a2b3c4d&Action=...``, ``%26``, newline, wrong length) from a desired
  file, from a plan file tampered with and resealed, or through the Python API: the emulator
  counts zero requests. (The client's own refusals are in ``test_client.py``.)
"""

from __future__ import annotations

import base64
import copy
import dataclasses
import json
import logging
import os
import socket
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote, quote_plus, urlsplit

import httpx
import pytest
from typer.testing import CliRunner

from bench.fleetgen import generate
from reconciler.cli import app
from reconciler.cloud.client import CvmClient
from reconciler.cloud.credentials import Credentials
from reconciler.core.document import canonical_digest
from reconciler.emulator.app import EmulatorApp
from reconciler.emulator.faults import FaultProfile
from reconciler.emulator.server import RunningServer, serve_in_thread
from reconciler.emulator.state import FleetState
from reconciler.errors import CvmkeysError, PlanIntegrityError
from reconciler.execute.executor import Executor
from reconciler.planfile import load_plan

HOSTILE = Path(__file__).resolve().parent / "data" / "hostile"
SECRET_ID = "AKIDSECURITYTEST00000000000000000000"
SECRET_KEY = "Zk9+s3cr3t/KEY=for&leak%tests"
WRONG_KEY = "Wr0ng+k3y/GUESS=of&the%user"
REGION = "ap-guangzhou"


def forms(secret: str) -> list[str]:
    """Every way the secret could be written out: raw, URL-encoded, JSON, repr, Base64, and
    a 10-character prefix (a cut-off line would still leak that much)."""
    return [
        secret,
        quote(secret, safe=""),
        quote_plus(secret),
        json.dumps(secret)[1:-1],
        repr(secret)[1:-1],
        base64.b64encode(secret.encode()).decode(),
        secret[:10],
    ]


def assert_no_secret(*texts: str) -> None:
    for text in texts:
        for secret in (SECRET_KEY, WRONG_KEY):
            for form in forms(secret):
                assert form not in text, f"{form!r} found in: {text[:2000]}"


# --------------------------------------------------------------------------- a world


@dataclasses.dataclass
class World:
    folder: Path
    fleet: Path
    desired: Path
    state: FleetState
    app: EmulatorApp
    server: RunningServer

    @property
    def url(self) -> str:
        return self.server.url


def _fleet_data() -> dict[str, Any]:
    gen = generate(80, 12, seed=4, remove_fraction=0.4)
    fleet: dict[str, Any] = copy.deepcopy(gen.fleet)
    fleet["credentials"] = [{"secret_id": SECRET_ID, "secret_key": SECRET_KEY}]
    return {"fleet": fleet, "desired": gen.desired_text}


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    made = _fleet_data()
    fleet = tmp_path / "fleet.yaml"
    fleet.write_text(json.dumps(made["fleet"]))
    desired = tmp_path / "bindings.yaml"
    desired.write_text(made["desired"])
    state = FleetState.from_file(fleet, persist=True)
    emulator = EmulatorApp(
        state,
        faults=FaultProfile(
            seed=3, error_rate=0.3, lost_response_rate=0.2, actions=frozenset({"UnBindInstanceKey"})
        ),
    )
    with serve_in_thread(emulator) as server:
        yield World(tmp_path, fleet, desired, state, emulator, server)


def env(secret_key: str = SECRET_KEY, secret_id: str = SECRET_ID, home: Path | None = None) -> dict[str, str]:
    values = {"NO_COLOR": "1", "TENCENTCLOUD_SECRET_ID": secret_id, "TENCENTCLOUD_SECRET_KEY": secret_key}
    if home is not None:
        values["HOME"] = str(home)
    return values


def run(args: list[str], environment: dict[str, str]) -> tuple[int, str]:
    result = CliRunner().invoke(app, args, env=environment)
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    return result.exit_code, result.stdout + result.stderr


FLAGS = [[], ["--debug", "-vv"], ["--debug", "--log-level", "DEBUG"]]


@pytest.mark.parametrize("flags", FLAGS, ids=["plain", "debug-vv", "debug-log-level"])
def test_the_secret_key_is_nowhere_in_any_command(
    world: World, flags: list[str], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    plan_file = world.folder / "plan.json"
    audit = world.folder / "audit.jsonl"
    url = world.url
    outputs: list[str] = []
    codes: dict[str, int] = {}

    def cli(name: str, args: list[str], environment: dict[str, str] | None = None) -> None:
        code, out = run([*flags, *args], environment or env())
        codes[name] = code
        outputs.append(out)

    cli("validate", ["validate", str(world.desired)])
    for fmt in ("text", "markdown", "json"):
        cli(
            f"plan-{fmt}",
            ["plan", str(world.desired), "--endpoint", url, "--format", fmt, "--audit-log", str(audit)],
        )
    cli("plan-out", ["plan", str(world.desired), "--endpoint", url, "--out", str(plan_file)])
    for fmt in ("text", "markdown", "json"):
        cli(f"show-{fmt}", ["show", str(plan_file), "--format", fmt])
    # Error paths: the API's "bad signature" answer, an unknown SecretId, a bad endpoint.
    cli("wrong-key", ["plan", str(world.desired), "--endpoint", url], env(secret_key=WRONG_KEY))
    cli("unknown-id", ["plan", str(world.desired), "--endpoint", url], env(secret_id="AKIDNOBODY000"))
    cli("bad-endpoint", ["plan", str(world.desired), "--endpoint", f"http://user:{SECRET_KEY}@example.com"])
    cli("wrong-key-apply", ["apply", str(plan_file), "--endpoint", url], env(secret_key=WRONG_KEY))
    ready = [c for c in json.loads(plan_file.read_text())["changes"] if c["status"] == "ready"]
    world.state.set_instance_status(REGION, ready[0]["instance_id"], 2)  # someone started it: stale
    cli("stale", ["apply", str(plan_file), "--endpoint", url, "--format", "json"])
    # An apply whose unbinds fail (injected 6000/6200, lost answers): text, then JSON.
    cli("plan-again", ["plan", str(world.desired), "--endpoint", url, "--out", str(plan_file)])
    cli(
        "apply-text",
        ["apply", str(plan_file), "--endpoint", url, "--audit-log", str(audit), "--parallelism", "1"],
    )
    cli("plan-fresh", ["plan", str(world.desired), "--endpoint", url, "--out", str(plan_file)])
    cli(
        "apply-json",
        ["apply", str(plan_file), "--endpoint", url, "--format", "json", "--audit-log", str(audit)],
    )
    cli("import", ["import", "--region", "gz", "--all", "--endpoint", url])
    cli("import-emulator", ["import", "--region", "gz", "--all", "--emulator", str(world.fleet)])

    assert codes["validate"] == 0 and codes["plan-text"] == 0 and codes["show-json"] == 0
    assert codes["wrong-key"] == 1 and "4100" in outputs[list(codes).index("wrong-key")]
    assert codes["unknown-id"] == 1 and "4104" in outputs[list(codes).index("unknown-id")]
    assert codes["bad-endpoint"] == 1 and codes["stale"] == 1
    assert codes["import"] == 0
    if flags:
        assert "Traceback" in "".join(outputs)  # --debug did show tracebacks of the errors
    assert world.app.request_counts["UnBindInstanceKey"] > 0
    assert caplog.records, "logging was on"
    assert_no_secret(*outputs, plan_file.read_text(), audit.read_text(), caplog.text)


def test_real_processes_with_debug_logging_on_error_paths(world: World) -> None:
    plan_file = world.folder / "plan.json"
    base = [sys.executable, "-m", "reconciler"]
    environment = {**os.environ, **env()}
    made = subprocess.run(
        [*base, "--debug", "-vv", "plan", str(world.desired), "--endpoint", world.url,
         "--out", str(plan_file)],
        capture_output=True, text=True, env=environment, timeout=60, check=False,
    )  # fmt: skip
    assert made.returncode == 0, made.stderr
    applied = subprocess.run(
        [*base, "--debug", "--log-level", "DEBUG", "apply", str(plan_file), "--endpoint", world.url,
         "--audit-log", str(world.folder / "audit.jsonl")],
        capture_output=True, text=True, env=environment, timeout=60, check=False,
    )  # fmt: skip
    refused = subprocess.run(
        [*base, "--debug", "-vv", "plan", str(world.desired), "--endpoint", world.url],
        capture_output=True, text=True, env={**environment, "TENCENTCLOUD_SECRET_KEY": WRONG_KEY},
        timeout=60, check=False,
    )  # fmt: skip
    assert "DEBUG reconciler.cloud.client" in made.stderr and "HTTP Request" in made.stderr
    assert refused.returncode == 1 and "4100" in refused.stderr and "Traceback" in refused.stderr
    assert_no_secret(
        made.stdout, made.stderr, applied.stdout, applied.stderr, refused.stdout, refused.stderr,
        (world.folder / "audit.jsonl").read_text(),
    )  # fmt: skip
    assert "Signature=" not in made.stderr + applied.stderr + refused.stderr


@pytest.mark.parametrize(
    "content",
    [
        '{"secretId": "AKID1", "secretKey": "%s", ',
        '{"secretId": "AKID1", "secretKey": "%s", "token": 5}',
        '{"secretId": "AKID1", "secretKey": "%s\\n"}',
        '{"secretId": "AKID1", "secretKey": "%s", "n": ' + "9" * 5000 + "}",
        '[{"secretKey": "%s"}]',
        "secretKey = %s",
    ],
    ids=["truncated", "temporary", "newline", "long-number", "not-an-object", "not-json"],
)
def test_a_malformed_tccli_profile_never_shows_the_key(tmp_path: Path, content: str) -> None:
    profile = tmp_path / ".tccli" / "default.credential"
    profile.parent.mkdir()
    profile.write_text(content % SECRET_KEY)
    code, out = run(
        ["--debug", "plan", str(HOSTILE.parent.parent.parent / "examples" / "bindings.yaml")],
        {"NO_COLOR": "1", "HOME": str(tmp_path), "TENCENTCLOUD_SECRET_ID": "", "TENCENTCLOUD_SECRET_KEY": ""},
    )
    assert code == 1 and str(profile) in out and "internal error" not in out
    assert_no_secret(out)


def test_exception_texts_reprs_and_tracebacks(world: World) -> None:
    credentials = Credentials(SECRET_ID, SECRET_KEY)
    errors: list[BaseException] = []
    with CvmClient(Credentials(SECRET_ID, WRONG_KEY), REGION, endpoint=world.url, rate_limit=None) as client:
        try:
            client.describe_key_pairs()
        except CvmkeysError as error:
            errors.append(error)
        texts = [repr(client), str(client)]
    with CvmClient(credentials, REGION, endpoint=world.url, rate_limit=None, max_attempts=1) as client:
        try:
            client.unbind_instance_key("skey-zzzzzzzz", ["ins-zzzzzzzz"])
        except CvmkeysError as error:
            errors.append(error)
        try:
            client.stop_instances(["ins-zzzzzzzz"])
        except CvmkeysError as error:
            errors.append(error)
        texts += [repr(client), repr(credentials), str(credentials), repr(world.state)]
    assert len(errors) == 3
    for caught in errors:
        texts += [str(caught), repr(caught), "".join(traceback.format_exception(caught))]
    assert_no_secret(*texts)


# --------------------------------------------------------------------------- plain http


class ConnectionCounter:
    """A TCP listener that counts the connections made to it (set as every proxy)."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.sock.settimeout(0.2)
        self.count = 0
        self.running = True
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.sock.getsockname()[1]}"

    def _serve(self) -> None:
        while self.running:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            self.count += 1
            conn.close()

    def close(self) -> None:
        self.running = False
        self.thread.join()
        self.sock.close()


@pytest.fixture(scope="module")
def counter() -> Iterator[ConnectionCounter]:
    listener = ConnectionCounter()
    yield listener
    listener.close()


@pytest.mark.parametrize(
    "endpoint",
    [
        "http://cvm.api.qcloud.com/v2/index.php",
        "http://169.254.169.254/latest/meta-data",
        "http://10.0.0.1:8080",
        "http://0.0.0.0:8080",
        "http://[::ffff:127.0.0.1]:8080",
        "http://127.0.0.1.nip.io:8080",
        "http://localhost.evil.example:8080",
        "http://2130706433:8080",
        "http://\uff4c\uff4f\uff43\uff41\uff4c\uff48\uff4f\uff53\uff54:8080",  # fullwidth "localhost"
        "http://localhost\t.evil.example:8080",
        "HTTP://EVIL.EXAMPLE",
    ],
)
def test_plain_http_to_a_non_loopback_host_is_refused_before_any_connection(
    endpoint: str, counter: ConnectionCounter
) -> None:
    # Every proxy variable points at the counter: a request to any non-loopback host would
    # connect to it.
    proxies = {
        name: counter.url for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy")
    }
    before = counter.count
    desired = HOSTILE.parent.parent.parent / "examples" / "bindings.yaml"
    for args in (["plan", str(desired)], ["import", "--region", "gz", "--all"]):
        code, out = run([*args, "--endpoint", endpoint], {**env(), **proxies})
        assert code == 1 and "plain http to a non-loopback host" in out, out
    assert counter.count == before == 0


def test_the_connection_counter_counts(counter: ConnectionCounter) -> None:
    """The proxy trick works: https to a non-loopback host does go through the counter."""
    before = counter.count
    with pytest.raises(httpx.HTTPError), httpx.Client(proxy=counter.url, timeout=2) as client:
        client.get("https://cvm.api.qcloud.com/v2/index.php")
    deadline = time.monotonic() + 2
    while counter.count == before and time.monotonic() < deadline:
        time.sleep(0.01)
    assert counter.count == before + 1
    counter.count = 0


# --------------------------------------------------------------------------- captured traffic


def test_a_captured_request_replayed_or_altered_changes_nothing(world: World) -> None:
    captured: list[str] = []

    def keep(request: httpx.Request) -> None:
        captured.append(str(request.url))

    quiet = EmulatorApp(world.state)  # no faults: the first call goes through
    with (
        serve_in_thread(quiet) as server,
        CvmClient(Credentials(SECRET_ID, SECRET_KEY), REGION, endpoint=server.url, rate_limit=None) as client,
    ):
        client._http.event_hooks["request"].append(keep)  # watch the wire, change nothing
        key_id, iid = sorted(world.state.bindings(REGION))[0]
        world.state.set_instance_status(REGION, iid, 4)
        client.unbind_instance_key(key_id, [iid])
        [url] = captured
        mutations = len(world.state.mutations)
        world.state.set_binding(REGION, key_id, iid, True)  # bound again behind the API's back
        with httpx.Client() as raw:
            replayed = raw.get(url).json()
            query = urlsplit(url).query
            other = sorted(i for i in world.state.instance_ids(REGION) if i != iid)[0]
            altered = raw.get(url.replace(iid, other)).json()
            stripped = raw.get(url.split("?")[0] + "?" + query.replace("HmacSHA256", "HmacSHA1")).json()
    assert replayed["code"] == 4500 and "Nonce" in replayed["message"]
    assert altered["code"] in (4100, 4500) and stripped["code"] in (4100, 4500)
    assert len(world.state.mutations) == mutations
    assert (key_id, iid) in world.state.bindings(REGION)


# --------------------------------------------------------------------------- crafted IDs


CRAFTED = [
    "ins-1a2b3c4d&Action=BindInstanceKey",
    "ins-1a2b3c4d%26Action%3DBindInstanceKey",
    "ins-1a2b3c4d\n",
    "ins-1a2b3c4d&instanceIds.1=ins-00000000",
    "ins-abc",
    "ins-1a2b3c4d5e6f7a8b",
]


def test_crafted_ids_in_a_desired_file_never_reach_a_request(world: World) -> None:
    code, out = run(["plan", str(HOSTILE / "desired" / "crafted-ids.yaml"), "--endpoint", world.url], env())
    assert code == 1 and "is not a valid instance ID" in out
    assert sum(world.app.request_counts.values()) == 0


def _tamper(plan_text: str, crafted: str, where: str) -> str:
    data = json.loads(plan_text)
    batch = data["batches"][-1]
    if where == "batch":
        target = batch["instance_ids"][0]
        batch["instance_ids"][0] = crafted
        for change in data["changes"]:
            if change["instance_id"] == target and change["key_id"] == batch["key_ids"][0]:
                change["instance_id"] = crafted
    elif where == "fingerprint":
        data["fingerprint"]["instance_ids"][0] = crafted
    else:
        crafted_key = "skey" + crafted[3:]
        old = batch["key_ids"][0]
        batch["key_ids"][0] = crafted_key
        for change in data["changes"]:
            if change["key_id"] == old:
                change["key_id"] = crafted_key
    data["integrity"]["digest"] = canonical_digest(data)  # resealed: the digest cannot help
    return json.dumps(data)


@pytest.mark.parametrize("where", ["batch", "fingerprint", "key"])
@pytest.mark.parametrize("crafted", CRAFTED)
def test_crafted_ids_in_a_resealed_plan_never_reach_a_request(
    world: World, crafted: str, where: str, tmp_path: Path
) -> None:
    clean = tmp_path / "clean.json"
    assert run(["plan", str(world.desired), "--endpoint", world.url, "--out", str(clean)], env())[0] == 0
    plan_text = clean.read_text()
    assert len(json.loads(plan_text)["batches"]) >= 2  # the crafted ID is not in the first call
    tampered = tmp_path / "tampered.json"
    tampered.write_text(_tamper(plan_text, crafted, where))
    world.app.request_counts.clear()
    code, out = run(["apply", str(tampered), "--endpoint", world.url], env())
    assert code == 1 and "internal error" not in out, out
    assert sum(world.app.request_counts.values()) == 0, world.app.request_counts
    assert world.state.mutations == []


@pytest.mark.parametrize("crafted", CRAFTED)
def test_crafted_ids_through_the_python_api_never_reach_a_request(world: World, crafted: str) -> None:
    with CvmClient(Credentials(SECRET_ID, SECRET_KEY), REGION, endpoint=world.url, rate_limit=None) as client:
        code, _ = run(
            ["plan", str(world.desired), "--endpoint", world.url, "--out", str(world.folder / "p.json")],
            env(),
        )
        assert code == 0
        plan = load_plan((world.folder / "p.json").read_text(), "p.json")
        last = plan.batches[-1]
        target = last.instance_ids[0]
        changes = tuple(
            dataclasses.replace(c, instance_id=crafted)
            if (c.key_id, c.instance_id) == (last.key_ids[0], target)
            else c
            for c in plan.changes
        )
        batches = (
            *plan.batches[:-1],
            dataclasses.replace(last, instance_ids=(crafted, *last.instance_ids[1:])),
        )
        forged = dataclasses.replace(plan, changes=changes, batches=batches)
        world.app.request_counts.clear()
        for attempt in (
            lambda: Executor(client, forged).check_fresh(),
            lambda: Executor(client, forged).run(),
        ):
            with pytest.raises(PlanIntegrityError, match="nothing was sent"):
                attempt()
        for call in (
            lambda: client.unbind_instance_key(last.key_ids[0], [crafted]),
            lambda: client.describe_instances([crafted]),
            lambda: client.describe_key_pairs(["skey" + crafted[3:]]),
        ):
            with pytest.raises(ValueError, match="invalid"):
                call()
    assert sum(world.app.request_counts.values()) == 0
    assert world.state.mutations == []
