"""Safety that holds when the world moves (issue 11): the last-key guarantee, resumable and
single-purpose plans, replay closed by source digests, an honest report whatever fails, saved
plans' endpoints trusted no further than is safe, and the rough edges. Every test talks to the
emulator over real HTTP (in-process transport or a socket), through the CLI as a user would.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import yaml
from support import run_cli

from reconciler import operations
from reconciler.connect import ConnectOptions
from reconciler.core.document import canonical_digest
from reconciler.emulator.app import EmulatorApp
from reconciler.emulator.server import RunningServer, serve_in_thread
from reconciler.emulator.state import FleetState
from reconciler.execute.executor import EventKind, ExecEvent
from reconciler.model import Outcome, Plan

SECRET_ID = "AKIDEMULATOR0000000000000000000000"
SECRET_KEY = "emulator-secret-key"
REGION = "ap-guangzhou"
SHARED = "ins-shared01"
TEAM_A = "skey-teama001"
TEAM_B = "skey-teamb001"
ADMIN = "skey-admin001"


def _fleet(tmp_path: Path, keys: dict[str, list[str]], instances: tuple[str, ...] = (SHARED,)) -> Path:
    data = {
        "credentials": [{"secret_id": SECRET_ID, "secret_key": SECRET_KEY}],
        "regions": {
            REGION: {
                "instances": [{"id": iid, "name": iid[4:], "os": "centos", "status": 4} for iid in instances],
                "keys": [{"id": kid, "name": kid[5:], "bound": bound} for kid, bound in keys.items()],
            }
        },
    }
    path = tmp_path / "fleet.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def _desired(path: Path, keys: dict[str, list[str]]) -> Path:
    body = "".join(f"  {kid}: {{instances: [{', '.join(iids)}]}}\n" for kid, iids in keys.items())
    path.write_text(f"version: 1\nregion: {REGION}\nkeys:\n{body}")
    return path


def _bindings(fleet: Path) -> set[tuple[str, str]]:
    return FleetState.from_file(fleet, persist=False).bindings(REGION)


def _unbinds(audit: Path) -> int:
    if not audit.exists():
        return 0
    lines = [json.loads(line) for line in audit.read_text().splitlines()]
    return sum(1 for line in lines if line["action"] == "UnBindInstanceKey")


def _plan(desired: Path, fleet: Path, out: Path, *extra: str) -> tuple[int, str, str]:
    return run_cli("plan", str(desired), "--emulator", str(fleet), "--out", str(out), *extra)


# A CLI run against a served emulator: the fleet's credentials in the environment.
ENV = {"NO_COLOR": "1", "TENCENTCLOUD_SECRET_ID": SECRET_ID, "TENCENTCLOUD_SECRET_KEY": SECRET_KEY}


@contextmanager
def _served(fleet: Path) -> Iterator[tuple[FleetState, RunningServer]]:
    """``fleet``'s live state, and an emulator serving it over a real socket."""
    state = FleetState.from_file(fleet, persist=True)
    with serve_in_thread(EmulatorApp(state)) as server:
        yield state, server


TWO_KEYS = {TEAM_A: [SHARED], TEAM_B: [SHARED]}  # TEAM_A and TEAM_B both on SHARED
DROP_A = {TEAM_A: []}  # the desired file: TEAM_A on nothing


def _planned(
    tmp_path: Path,
    keys: dict[str, list[str]] = TWO_KEYS,
    want: dict[str, list[str]] = DROP_A,
    instances: tuple[str, ...] = (SHARED,),
) -> tuple[Path, Path, Path]:
    """The fleet of ``keys``, the desired file a.yaml of ``want``, and a.json: the plan of the
    two, made with ``cvmkeys plan --out`` (which must succeed)."""
    fleet = _fleet(tmp_path, keys, instances)
    desired = _desired(tmp_path / "a.yaml", want)
    plan = tmp_path / "a.json"
    assert _plan(desired, fleet, plan)[0] == 0
    return fleet, desired, plan


def _warned_and_applied_as_reviewed(desired: Path, fleet: Path, plan: Path) -> None:
    """Planned, the reviewer is told the last key of an instance goes; applying what was
    reviewed is allowed, and leaves nothing bound."""
    code, stdout, _ = _plan(desired, fleet, plan)
    assert code == 0 and "removes the last key of" in stdout
    assert run_cli("apply", str(plan))[0] == 0
    assert _bindings(fleet) == set()


# --------------------------------------------------------------------------- the last key


def test_two_plans_made_apart_never_leave_an_instance_keyless_unwarned(tmp_path: Path) -> None:
    fleet = _fleet(tmp_path, TWO_KEYS)
    a = _desired(tmp_path / "a.yaml", DROP_A)
    b = _desired(tmp_path / "b.yaml", {TEAM_B: []})
    plan_a, plan_b = tmp_path / "a.json", tmp_path / "b.json"
    for desired, out in ((a, plan_a), (b, plan_b)):
        code, stdout, _ = _plan(desired, fleet, out)
        assert code == 0 and "last key" not in stdout  # each alone keeps the other key
    assert run_cli("apply", str(plan_a))[0] == 0
    audit = tmp_path / "audit.jsonl"
    code, _, err = run_cli("apply", str(plan_b), "--audit-log", str(audit))
    assert code == 1
    assert "plan is stale" in err and f"{SHARED} would be left with no key" in err and TEAM_A in err
    assert _unbinds(audit) == 0 and (TEAM_B, SHARED) in _bindings(fleet)
    # Planned again, the reviewer is told, and applying what was reviewed is allowed.
    _warned_and_applied_as_reviewed(b, fleet, plan_b)


def test_two_plans_made_apart_over_a_socket(tmp_path: Path) -> None:
    """The same, against a served emulator (a real socket), the way CI would run it."""
    fleet = _fleet(tmp_path, TWO_KEYS)
    a = _desired(tmp_path / "a.yaml", DROP_A)
    b = _desired(tmp_path / "b.yaml", {TEAM_B: []})
    with _served(fleet) as (state, server):
        for desired in (a, b):
            out = str(desired.with_suffix(".json"))
            assert run_cli("plan", str(desired), "--endpoint", server.url, "--out", out, env=ENV)[0] == 0
        assert run_cli("apply", str(a.with_suffix(".json")), "--endpoint", server.url, env=ENV)[0] == 0
        code, _, err = run_cli("apply", str(b.with_suffix(".json")), "--endpoint", server.url, env=ENV)
        assert code == 1 and "would be left with no key" in err
        assert state.bindings(REGION) == {(TEAM_B, SHARED)}


def test_an_outside_unbind_between_plan_and_apply_makes_the_plan_stale(tmp_path: Path) -> None:
    fleet, _, plan = _planned(tmp_path, {TEAM_A: [SHARED], ADMIN: [SHARED]})
    FleetState.from_file(fleet, persist=True).set_binding(REGION, ADMIN, SHARED, False)  # the console
    code, _, err = run_cli("apply", str(plan))
    assert code == 1 and "would be left with no key" in err and ADMIN in err
    assert _bindings(fleet) == {(TEAM_A, SHARED)}


def test_a_key_bound_since_the_plan_changes_nothing_the_reviewer_was_told(tmp_path: Path) -> None:
    fleet, _, plan = _planned(tmp_path, {TEAM_A: [SHARED], TEAM_B: [SHARED], ADMIN: []})
    FleetState.from_file(fleet, persist=True).set_binding(REGION, ADMIN, SHARED, True)
    assert run_cli("apply", str(plan))[0] == 0
    assert _bindings(fleet) == {(TEAM_B, SHARED), (ADMIN, SHARED)}


def test_a_warned_lockout_is_carried_out_as_reviewed(tmp_path: Path) -> None:
    fleet = _fleet(tmp_path, {TEAM_A: [SHARED]})
    _warned_and_applied_as_reviewed(_desired(tmp_path / "a.yaml", DROP_A), fleet, tmp_path / "a.json")


def test_a_state_change_is_said_once(tmp_path: Path) -> None:
    fleet, _, plan = _planned(tmp_path, TWO_KEYS, {TEAM_A: [], TEAM_B: []})
    FleetState.from_file(fleet, persist=True).set_instance_status(REGION, SHARED, 2)
    code, _, err = run_cli("apply", str(plan))
    # In the words of the API the plan was made with (3.0, the default).
    assert code == 1 and err.count(f"{SHARED} was STOPPED, now RUNNING") == 1


def test_a_renamed_key_makes_the_plan_stale(tmp_path: Path) -> None:
    fleet, _, plan = _planned(tmp_path)
    data = yaml.safe_load(fleet.read_text())
    data["regions"][REGION]["keys"][0]["name"] = "someone-else"
    fleet.write_text(yaml.safe_dump(data))
    code, _, err = run_cli("apply", str(plan))
    assert code == 1 and "plan is stale" in err and "'someone-else'" in err


# --------------------------------------------------------------------------- resume, replay


def test_a_plan_applied_part_way_is_applied_again_to_finish_it(tmp_path: Path) -> None:
    shared = [f"ins-web0000{n}" for n in range(1, 5)]
    fleet, _, plan = _planned(tmp_path, {TEAM_A: shared, ADMIN: shared}, DROP_A, tuple(shared))
    # The first apply got as far as two instances (the executor's own effect, as a crash leaves it).
    state = FleetState.from_file(fleet, persist=True)
    for iid in shared[:2]:
        state.set_binding(REGION, TEAM_A, iid, False)
    audit = tmp_path / "audit.jsonl"
    code, out, _ = run_cli("apply", str(plan), "--audit-log", str(audit), "--format", "json")
    assert code == 0
    results = {r["instance_id"]: r for r in json.loads(out)["results"]}
    assert all(results[iid]["reason"] == "already done before this apply" for iid in shared[:2])
    assert all(results[iid]["outcome"] == "done" for iid in shared)
    lines = [json.loads(line) for line in audit.read_text().splitlines()]
    sent = [line for line in lines if line["action"] == "DisassociateInstancesKeyPairs"]  # 3.0, the default
    assert [sorted(line["instanceIds"]) for line in sent] == [shared[2:]]  # only the rest
    assert _bindings(fleet) == {(ADMIN, iid) for iid in shared}


def test_a_finished_plan_applied_again_says_so_sends_nothing_and_exits_0(tmp_path: Path) -> None:
    *_, plan = _planned(tmp_path)
    assert run_cli("apply", str(plan))[0] == 0
    audit = tmp_path / "audit.jsonl"
    code, _, err = run_cli("apply", str(plan), "--audit-log", str(audit))
    assert code == 0 and "already applied" in err
    assert _unbinds(audit) == 0


def test_the_example_plan_applied_again_exits_0(example: tuple[Path, Path], tmp_path: Path) -> None:
    desired, fleet = example
    plan = tmp_path / "p.json"
    assert _plan(desired, fleet, plan)[0] == 0
    assert run_cli("apply", str(plan))[0] == 3  # blocked unbinds remain (a running instance)
    code, _, err = run_cli("apply", str(plan))
    assert code == 0 and "already applied" in err


def test_replay_after_the_file_changed_is_refused(tmp_path: Path) -> None:
    fleet, desired, plan = _planned(tmp_path)
    assert run_cli("apply", str(plan))[0] == 0
    # Re-bound from the console, and the file now allows exactly that binding.
    FleetState.from_file(fleet, persist=True).set_binding(REGION, TEAM_A, SHARED, True)
    _desired(desired, {TEAM_A: [SHARED]})
    code, _, err = run_cli("apply", str(plan))
    assert code == 1 and f"{desired} changed since the plan was made" in err
    assert "--ignore-changed-sources" in err
    assert (TEAM_A, SHARED) in _bindings(fleet)
    # A missing file too; the flag named for exactly that applies the plan as reviewed.
    desired.unlink()
    code, _, err = run_cli("apply", str(plan))
    assert code == 1 and "no such file" in err
    assert run_cli("apply", str(plan), "--ignore-changed-sources")[0] == 0
    assert (TEAM_A, SHARED) not in _bindings(fleet)


def test_sources_are_looked_for_where_plan_ran(tmp_path: Path) -> None:
    fleet = _fleet(tmp_path, TWO_KEYS)
    repo = tmp_path / "repo"
    repo.mkdir()
    _desired(repo / "a.yaml", {TEAM_A: []})
    env = {**os.environ, "NO_COLOR": "1"}
    cvmkeys = [sys.executable, "-m", "reconciler"]
    subprocess.run(
        [*cvmkeys, "plan", "a.yaml", "--emulator", str(fleet), "--out", "plan.json"],
        cwd=repo, env=env, check=True, capture_output=True,
    )
    assert json.loads((repo / "plan.json").read_text())["sources"][0]["path"] == "a.yaml"
    elsewhere = subprocess.run(
        [*cvmkeys, "apply", str(repo / "plan.json")], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert elsewhere.returncode == 1 and "a.yaml: no such file" in elsewhere.stderr
    there = subprocess.run(
        [*cvmkeys, "apply", "plan.json"], cwd=repo, env=env, capture_output=True, text=True
    )
    assert there.returncode == 0, there.stderr


def test_plan_out_with_errors_leaves_nothing_appliable(tmp_path: Path) -> None:
    fleet, desired, plan = _planned(tmp_path)
    _desired(desired, {TEAM_A: [], "skey-absent01": []})  # an error: the key does not exist
    code, _, err = _plan(desired, fleet, plan)
    assert code == 1 and "apply refuses it" in err
    assert json.loads(plan.read_text())["summary"]["errors"] == 1  # not the previous plan
    code, _, err = run_cli("apply", str(plan), "--ignore-changed-sources")
    assert code == 1 and "the plan has 1 error" in err
    assert _bindings(fleet) == {(TEAM_A, SHARED), (TEAM_B, SHARED)}


def test_max_age(tmp_path: Path) -> None:
    *_, plan = _planned(tmp_path)
    data = json.loads(plan.read_text())
    data["created_at"] = "2020-01-01T00:00:00+00:00"
    data["integrity"]["digest"] = canonical_digest(data)
    old = tmp_path / "old.json"
    old.write_text(json.dumps(data))
    code, _, err = run_cli("apply", str(old), "--max-age", "12h")
    assert code == 1 and "over --max-age 12h" in err
    assert run_cli("apply", str(plan), "--max-age", "bad")[0] == 1
    assert run_cli("apply", str(plan), "--max-age", "1h")[0] == 0


# --------------------------------------------------------------------------- honest reports


class _Hooks:
    """Apply's hooks, with a bug planted in the progress view after the first unbind."""

    def __init__(self) -> None:
        self.events: list[ExecEvent] = []

    def planned(self, plan: Plan) -> None: ...
    def confirm(self, plan: Plan) -> None: ...
    def started(self, plan: Plan) -> None: ...
    def finished(self) -> None: ...

    def event(self, event: ExecEvent) -> None:
        self.events.append(event)
        if event.kind is EventKind.CALL_DONE:
            raise RuntimeError("a bug in a view")


def test_an_unexpected_exception_after_real_unbinds_still_reports_them(tmp_path: Path) -> None:
    shared = [f"ins-web0000{n}" for n in range(1, 4)]
    fleet, _, plan = _planned(
        tmp_path, {TEAM_A: shared, TEAM_B: shared, ADMIN: shared}, {TEAM_A: [], TEAM_B: []}, tuple(shared)
    )
    request = operations.ApplyRequest((plan,), operations.CloudRequest(ConnectOptions()))
    outcome = operations.apply(request, _Hooks(), threading.Event())
    result = outcome.result
    assert outcome.exit_code == 1 and "internal error (RuntimeError)" in result.stopped_reason
    done = {(r.key_id, r.instance_id) for r in result.results if r.outcome is Outcome.DONE}
    gone = {(k, i) for k in (TEAM_A, TEAM_B) for i in shared} - _bindings(fleet)
    assert done <= gone and gone  # what really went is reported: done, or failed "outcome unknown"
    for r in result.results:
        if (r.key_id, r.instance_id) in gone - done:
            assert "outcome unknown" in r.reason


def test_audit_log_escapes_lone_surrogates_and_a_failing_log_keeps_the_result(tmp_path: Path) -> None:
    from reconciler.cloud.base import AttemptRecord
    from reconciler.execute.audit import AuditLog

    path = tmp_path / "audit.jsonl"
    with AuditLog(path) as log:
        record = AttemptRecord(
            time=0.0, action="UnBindInstanceKey", region=REGION, key_id=TEAM_A, instance_ids=(SHARED,),
            attempt=1, code=1, message="bad \udc80 name", duration_s=0.1, http_status=200,
        )
        log(record)
    line = json.loads(path.read_text())
    assert line["message"] == "bad \udc80 name" and log.failure is None
    if not Path("/dev/full").exists():
        pytest.skip("no /dev/full")
    fleet, _, plan = _planned(tmp_path)
    code, out, err = run_cli("apply", str(plan), "--audit-log", "/dev/full")
    assert code == 1 and "Apply complete: 1 done" in out and "audit log /dev/full could not be written" in err
    assert (TEAM_A, SHARED) not in _bindings(fleet)


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("--rate-limit", "1e-300"),
        ("--rate-limit", "nan"),
        ("--rate-limit", "inf"),
        ("--parallelism", "0"),
        ("--max-unbind-percent", "nan"),
        ("--max-unbind-percent", "101"),
    ],
)
def test_numeric_options_are_bounded(tmp_path: Path, option: str, value: str) -> None:
    fleet = _fleet(tmp_path, TWO_KEYS)
    desired = _desired(tmp_path / "a.yaml", DROP_A)
    code, _, err = run_cli("apply", str(desired), "--emulator", str(fleet), "--auto-approve", option, value)
    assert code == 1 and option in err
    assert len(_bindings(fleet)) == 2


def test_a_resealed_plan_cannot_call_itself_safe(tmp_path: Path) -> None:
    shared = [f"ins-web000{n:02d}" for n in range(1, 12)]
    fleet = _fleet(tmp_path, {TEAM_A: shared, ADMIN: shared}, tuple(shared))
    desired = _desired(tmp_path / "a.yaml", {TEAM_A: [], ADMIN: shared})
    plan = tmp_path / "a.json"
    code, out, _ = _plan(desired, fleet, plan)
    assert code == 0 and "UNSAFE" in out
    data = json.loads(plan.read_text())
    data["safety"].update(safe=True, violations=[])
    data["integrity"]["digest"] = canonical_digest(data)
    plan.write_text(json.dumps(data))
    code, _, err = run_cli("apply", str(plan))
    assert code == 1 and "UNSAFE" in err
    assert len(_bindings(fleet)) == 22


# --------------------------------------------------------------------------- endpoints and files


def test_an_emulator_plan_opens_only_a_fleet_file(tmp_path: Path) -> None:
    *_, plan = _planned(tmp_path)
    secret = tmp_path / "token"
    secret.write_text("api_token: s3cr3t-t0ken-value\nother: 1\n")
    data = json.loads(plan.read_text())
    data["endpoint"] = f"emulator:{secret}"
    data["integrity"]["digest"] = canonical_digest(data)
    plan.write_text(json.dumps(data))
    code, out, err = run_cli("apply", str(plan))
    assert code == 1 and "is not a fleet file" in err
    assert "s3cr3t" not in out + err and "api_token" not in out + err


def test_emulator_named_another_way_is_the_same_fleet(tmp_path: Path) -> None:
    fleet, _, plan = _planned(tmp_path)
    (tmp_path / "sub").mkdir()
    roundabout = tmp_path / "sub" / ".." / "fleet.yaml"
    assert run_cli("apply", str(plan), "--emulator", str(roundabout))[0] == 0
    other = tmp_path / "other.yaml"
    other.write_text(fleet.read_text())
    code, _, err = run_cli("apply", str(plan), "--emulator", str(other))
    assert code == 1 and "the plan was made against" in err


def test_the_url_given_to_plan_works_for_apply(tmp_path: Path) -> None:
    fleet = _fleet(tmp_path, TWO_KEYS)
    desired = _desired(tmp_path / "a.yaml", DROP_A)
    plan = tmp_path / "a.json"
    with _served(fleet) as (state, server):
        base = server.url.removesuffix("/v2/index.php")
        code, _, err = run_cli("plan", str(desired), "--endpoint", base, "--out", str(plan), env=ENV)
        assert code == 0, err
        # An endpoint without a path is API 3.0's (the default): its root.
        assert json.loads(plan.read_text())["endpoint"] == f"{base}/"
        code, _, err = run_cli("apply", str(plan), "--endpoint", base + "/", env=ENV)
        assert code == 0, err
        assert state.bindings(REGION) == {(TEAM_B, SHARED)}


def test_plan_files_are_read_bounded(tmp_path: Path) -> None:
    code, _, err = run_cli("show", "/dev/zero")
    assert code == 1 and "not a regular plan file" in err
    code, _, err = run_cli("show", str(tmp_path))
    assert code == 1 and "is a directory" in err


def test_plan_out_slash_is_a_clean_error(tmp_path: Path) -> None:
    fleet = _fleet(tmp_path, TWO_KEYS)
    desired = _desired(tmp_path / "a.yaml", DROP_A)
    code, _, err = _plan(desired, fleet, Path("/"))
    assert code == 1 and "is a directory" in err and "internal error" not in err


def test_emulator_serve_port_out_of_range_is_a_clean_error(tmp_path: Path) -> None:
    fleet = _fleet(tmp_path, {TEAM_A: [SHARED]})
    done = subprocess.run(
        [sys.executable, "-m", "reconciler", "emulator", "serve", "--fleet", str(fleet), "--port", "99999"],
        capture_output=True, text=True, timeout=60,
    )
    assert done.returncode != 0 and "Traceback" not in done.stderr and "--port" in done.stderr


# --------------------------------------------------------------------------- import regions


def test_import_region_did_you_mean_and_empty_region_warning(tmp_path: Path) -> None:
    fleet = _fleet(tmp_path, {TEAM_A: [SHARED]})
    code, _, err = run_cli("import", "--region", "ap-guangzho", "--all", "--emulator", str(fleet))
    assert code == 1 and "did you mean ap-guangzhou?" in err
    out = tmp_path / "beijing.yaml"
    code, _, err = run_cli(
        "import", "--region", "ap-beijing", "--all", "--emulator", str(fleet), "--out", str(out)
    )
    assert code == 0 and "no key pairs found in ap-beijing" in err
    code, _, err = run_cli("import", "--region", "ap-newplace", "--all", "--emulator", str(fleet))
    assert "did you mean" not in err  # a well-formed new region is not a typo


def test_plural_and_attempts_are_said_right(tmp_path: Path) -> None:
    fleet = _fleet(tmp_path, TWO_KEYS)
    desired = _desired(tmp_path / "a.yaml", DROP_A)
    _, out, _ = run_cli("plan", str(desired), "--emulator", str(fleet), "--max-unbinds", "0")
    assert "1 unbind is over max_unbinds 0" in out and "1 unbinds" not in out


def test_a_region_with_nothing_in_it_does_not_say_the_bindings_match(tmp_path: Path) -> None:
    fleet = _fleet(tmp_path, {TEAM_A: [SHARED]})
    desired = tmp_path / "bj.yaml"
    desired.write_text("version: 1\nregion: ap-beijing\nkeys:\n  skey-teama001: {instances: []}\n")
    code, out, _ = run_cli("plan", str(desired), "--emulator", str(fleet))
    assert code == 1 and "match the file" not in out and "has errors" in out


# --------------------------------------------------------------------------- mangled answers


def _mangling_proxy(target: str, action: str) -> tuple[Any, str]:
    """A real HTTP proxy in front of the served emulator that marks every answer to ``action``
    as gzip-encoded although it is not (httpx raises DecodingError reading it)."""
    import http.client
    import http.server
    from urllib.parse import urlsplit

    upstream = urlsplit(target)

    class Handler(http.server.BaseHTTPRequestHandler):
        def _forward(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            connection = http.client.HTTPConnection(upstream.hostname or "", upstream.port)
            connection.request(self.command, self.path, body=body, headers=dict(self.headers))
            answer = connection.getresponse()
            data = answer.read()
            self.send_response(answer.status)
            self.send_header("Content-Type", answer.getheader("Content-Type") or "application/json")
            self.send_header("Content-Length", str(len(data)))
            if action.encode() in body or f"Action={action}".encode() in self.path.encode():
                self.send_header("Content-Encoding", "gzip")
            self.end_headers()
            self.wfile.write(data)
            connection.close()

        do_GET = _forward
        do_POST = _forward

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}"


def test_a_broken_content_encoding_mid_apply_is_observed_not_an_internal_error(tmp_path: Path) -> None:
    fleet = _fleet(tmp_path, TWO_KEYS)
    desired = _desired(tmp_path / "a.yaml", DROP_A)
    plan = tmp_path / "a.json"
    with _served(fleet) as (state, server):
        proxy, url = _mangling_proxy(server.url, "UnBindInstanceKey")
        try:
            assert run_cli("plan", str(desired), "--endpoint", url, "--out", str(plan), env=ENV)[0] == 0
            code, out, err = run_cli("apply", str(plan), "--endpoint", url, "--format", "json", env=ENV)
        finally:
            proxy.shutdown()
    assert "internal error" not in err
    assert code == 0, err
    (result,) = json.loads(out)["results"]
    assert result["outcome"] == "done"  # the answer was unreadable; the re-read shows it gone
    assert state.bindings(REGION) == {(TEAM_B, SHARED)}


def test_a_plan_that_fails_removes_the_older_plan_from_out(tmp_path: Path) -> None:
    fleet, desired, plan = _planned(tmp_path)
    env = {"NO_COLOR": "1", "HOME": str(tmp_path)}
    code, _, err = run_cli(
        "plan", str(desired), "--emulator", str(fleet), "--profile", "nosuch", "--out", str(plan), env=env
    )
    assert code == 1 and "which held an older plan, was removed" in err
    assert not plan.exists()
