"""The fleet fixture and the live state: the schema alone judges the fixture, errors point at
FILE:LINE:COL, the fixture is never written, and the SQLite state is shared by processes,
survives restarts, is rebuilt when the fixture changes and reset on demand."""

from __future__ import annotations

import copy
import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import EXAMPLE_FLEET, Emulator
from support import BATCH1, CI, DB1, OLD, OPS, WEB1, WEB2, run_cli, run_command, serve_fleet

from reconciler.emulator.state import FleetState
from reconciler.emulator.store import STATE_ENV
from reconciler.errors import InputError
from reconciler.schemas import validator

GZ = "ap-guangzhou"


def example() -> dict[str, Any]:
    data = yaml.safe_load(EXAMPLE_FLEET.read_text())
    assert isinstance(data, dict)
    return data


def schema_errors(data: object) -> list[str]:
    return [error.message for error in validator("fleet").iter_errors(data)]


def data_problems(data: dict[str, Any]) -> list[str]:
    """What the loader says about ``data`` (empty if it accepts it)."""
    try:
        FleetState.from_data(data)
    except InputError as error:
        return [str(problem) for problem in error.problems]
    return []


def test_example_fleet_is_valid(tmp_path: Path) -> None:
    assert schema_errors(example()) == []
    state = FleetState.from_file(EXAMPLE_FLEET, state=tmp_path / "s.sqlite")
    assert state.regions == ("ap-guangzhou", "ap-shanghai")
    assert (CI, BATCH1) in state.bindings("gz")


def _set(data: dict[str, Any], path: tuple[Any, ...], value: object) -> dict[str, Any]:
    changed = copy.deepcopy(data)
    target: Any = changed
    for step in path[:-1]:
        target = target[step]
    if value is _DELETE:
        del target[path[-1]]
    else:
        target[path[-1]] = value
    return changed


_DELETE = object()
INSTANCE0 = ("regions", GZ, "instances", 0)
KEY0 = ("regions", GZ, "keys", 0)


@pytest.mark.parametrize(
    ("path", "value"),
    [
        (("credentials",), []),
        (("credentials", 0, "secret_key"), ""),
        (("credentials", 0, "secret_id"), " AKID"),
        (("credentials", 0, "extra"), "x"),
        (("regions", "mars-1"), {}),
        (("regions", GZ, "vpcs"), []),
        ((*INSTANCE0, "id"), "ins-ABCDEFGH"),
        ((*INSTANCE0, "id"), "i-1a2b3c4d"),
        ((*INSTANCE0, "status"), "4"),
        ((*INSTANCE0, "status"), 0),
        ((*INSTANCE0, "status"), True),
        ((*INSTANCE0, "os"), _DELETE),
        ((*INSTANCE0, "lan_ip"), "10.0.0.256"),
        ((*INSTANCE0, "lan_ip"), "010.0.0.1"),
        ((*INSTANCE0, "wan_ips"), "1.2.3.4"),
        ((*INSTANCE0, "created"), "yesterday"),
        ((*INSTANCE0, "colour"), "blue"),
        ((*KEY0, "id"), "skey-1"),
        ((*KEY0, "bound"), ["web-1"]),
        ((*KEY0, "bound"), [WEB1, WEB1]),
        ((*KEY0, "name"), 7),
        (("extra",), 1),
        (("regions",), []),
    ],
)
def test_the_schema_is_what_rejects(path: tuple[Any, ...], value: object) -> None:
    broken = _set(example(), path, value)
    assert schema_errors(broken), "the schema accepts it"
    problems = data_problems(broken)
    assert problems, "the loader accepts it"
    where = ".".join(str(step) for step in path[:-1] if step != "regions" or len(path) > 2)
    assert all("<fleet data>: " in p for p in problems)
    assert any(where.split(".")[-1] in p for p in problems), (where, problems)


@pytest.mark.parametrize(
    ("path", "value"),
    [
        (("regions", "sh"), None),
        (("regions", GZ, "keys"), None),
        (("regions", GZ, "instances"), []),
        ((*KEY0, "bound"), None),
        ((*INSTANCE0, "created"), "2019-05-06 07:08:09"),
        ((*INSTANCE0, "status"), 20),
        ((*INSTANCE0, "name"), "网站-1 ✓"),
        (("regions", "ap-beijing"), {"instances": [], "keys": []}),
    ],
)
def test_the_schema_and_the_loader_accept_the_same(path: tuple[Any, ...], value: object) -> None:
    variant = _set(example(), path, value)
    if path[-1] == "instances":  # keep bindings consistent
        variant["regions"][GZ]["keys"] = []
    assert schema_errors(variant) == []
    assert data_problems(variant) == []


def test_checks_beyond_the_schema() -> None:
    data = example()
    data["regions"][GZ]["instances"].append(dict(data["regions"][GZ]["instances"][0]))
    data["regions"][GZ]["keys"][0]["bound"].append("ins-5h1a1a1a")  # an instance of sh, not gz
    data["regions"]["gz"] = {}
    data["credentials"].append(dict(data["credentials"][0]))
    assert schema_errors(data) == []
    messages = data_problems(data)
    assert any("ins-1a2b3c4d is listed twice" in m for m in messages)
    assert any("ins-5h1a1a1a is not an instance of region ap-guangzhou" in m for m in messages)
    assert any("region gz is ap-guangzhou, already given" in m for m in messages)
    assert any("is listed twice" in m and "secret_id" in m for m in messages)


# --------------------------------------------------------------------------- errors with places


def load_error(tmp_path: Path, text: str | bytes) -> list[str]:
    path = tmp_path / "fleet.yaml"
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text)
    with pytest.raises(InputError) as caught:
        FleetState.from_file(path)
    assert [p.name for p in tmp_path.iterdir()] == ["fleet.yaml"]  # no state left for it
    return [str(problem).replace(str(path), "F") for problem in caught.value.problems]


GOOD_HEAD = """credentials:
  - {secret_id: AKID1, secret_key: k}
regions:
  gz:
    instances:
"""


def _at(text: str, line: int, needle: str) -> str:
    return f"F:{line}:{text.splitlines()[line - 1].index(needle) + 1}: "


def test_schema_errors_point_at_line_and_column(tmp_path: Path) -> None:
    text = GOOD_HEAD + (
        "      - {id: ins-1a2b3c4d, name: a, os: centos, status: 4}\n"
        "      - {id: ins-BAD, name: b, os: centos, status: 4}\n"
        "      - {id: ins-2b3c4d5e, name: c, os: centos, status: running, colour: red}\n"
    )
    problems = load_error(tmp_path, text)
    assert any(p.startswith(_at(text, 7, "ins-BAD")) and "'ins-BAD' does not match" in p for p in problems)
    assert any(p.startswith(_at(text, 8, "colour") + "unknown field 'colour'") for p in problems)
    assert any(p.startswith(_at(text, 8, "running")) and "not of type 'integer'" in p for p in problems)


def test_identity_block_is_checked_by_the_schema_with_positions(tmp_path: Path) -> None:
    text = GOOD_HEAD + (
        "      - {id: ins-1a2b3c4d, name: a, os: centos, status: 4}\n"
        "identity:\n"
        "  account_id: 12345x\n"
        "  roles: [ok-role, 'bad role']\n"
        "  web_identity_tokens:\n"
        "    - {provider_id: OIDC, token: ' '}\n"
        "  issuer: nobody\n"
    )
    problems = load_error(tmp_path, text)
    assert any(p.startswith(_at(text, 8, "12345x")) and "does not match" in p for p in problems)
    assert any(p.startswith(_at(text, 9, "'bad role'")) and "does not match" in p for p in problems)
    assert any(p.startswith(_at(text, 11, "' '")) and "does not match" in p for p in problems)
    assert any(p.startswith(_at(text, 12, "issuer") + "unknown field 'issuer'") for p in problems)
    good = GOOD_HEAD + (
        "      - {id: ins-1a2b3c4d, name: a, os: centos, status: 4}\n"
        "identity: {account_id: '42', roles: [r1], web_identity_tokens: [{token: t}]}\n"
    )
    path = tmp_path / "good.yaml"
    path.write_text(good)
    state = FleetState.from_file(path)
    assert (state.account_id, state.roles, state.web_identity_tokens) == ("42", ("r1",), (("OIDC", "t"),))
    state.close()
    assert path.read_text() == good


def test_cross_check_errors_point_at_line_and_column(tmp_path: Path) -> None:
    text = GOOD_HEAD + (
        "      - {id: ins-1a2b3c4d, name: a, os: centos, status: 4}\n"
        "      - {id: ins-1a2b3c4d, name: b, os: centos, status: 4}\n"
        "    keys:\n"
        "      - {id: skey-3glfot13, name: k, bound: [ins-1a2b3c4d, ins-zzzzzzzz]}\n"
    )
    problems = load_error(tmp_path, text)
    assert problems[0] == _at(text, 7, "ins-1a2b3c4d") + "instance ins-1a2b3c4d is listed twice in region gz"
    assert problems[1].startswith(_at(text, 9, "ins-zzzzzzzz") + "instance ins-zzzzzzzz is not an instance")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (GOOD_HEAD + "      - {id: ins-1a2b3c4d, id: ins-1a2b3c4d, name: a, os: x, status: 4}\n", "F:6:"),
        ("credentials: [\n", "F:2:1: invalid YAML"),
        ("regions: {}\n", "F:1:1: 'credentials' is a required property"),
        ("", "F: the fleet file is empty"),
        (b"credentials: \xff\n", "F:1:14: not UTF-8 text"),
        ("- just\n- a list\n", "F:1:1: ['just', 'a list'] is not of type 'object'"),
        ("credentials:\n\t- {secret_id: a}\n", "F:2:1: invalid YAML: tab characters are not allowed"),
        ("a: !!python/object:os.system x\n", "F:1:4: YAML tag"),
    ],
)
def test_unreadable_files_are_reported_without_traceback(
    tmp_path: Path, text: str | bytes, expected: str
) -> None:
    problems = load_error(tmp_path, text)
    assert problems[0].startswith(expected), problems


def test_duplicate_yaml_keys_are_refused(tmp_path: Path) -> None:
    text = GOOD_HEAD.replace("regions:\n", "regions:\n  sh: {}\n  sh: {}\n")
    problems = load_error(tmp_path, text)
    assert "duplicate key 'sh'" in problems[0] and problems[0].startswith("F:5:")


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(InputError) as caught:
        FleetState.from_file(tmp_path / "nope.yaml")
    assert "fleet file not found" in str(caught.value.problems[0])
    assert list(tmp_path.iterdir()) == []  # no state made for a fixture that is not there


def test_from_data_reports_paths() -> None:
    data = _set(example(), (*INSTANCE0, "status"), "x")
    with pytest.raises(InputError) as caught:
        FleetState.from_data(data)
    assert "regions.ap-guangzhou.instances.0.status" in str(caught.value.problems[0])


# --------------------------------------------------------------------------- the live state


@pytest.fixture
def fleet_file(tmp_path: Path) -> Path:
    path = tmp_path / "fleet.yaml"
    path.write_bytes(EXAMPLE_FLEET.read_bytes())
    os.chmod(path, 0o640)
    return path


def test_the_fixture_is_never_written_and_the_state_lies_beside_it(fleet_file: Path) -> None:
    before = fleet_file.read_bytes()
    state = FleetState.from_file(fleet_file)
    state.unbind_instance_key(GZ, CI, [BATCH1])
    state.set_instance_status(GZ, WEB2, 2)
    state.set_binding(GZ, OLD, WEB1, False)
    assert fleet_file.read_bytes() == before
    assert state.state_path == fleet_file.with_name("fleet.yaml.state.sqlite")
    assert state.saves == 3
    # How docs/emulator.md says to look at it.
    with sqlite3.connect(state.state_path) as db:
        rows = set(db.execute("select key_id, instance_id from bindings where region = ?", (GZ,)))
        status = db.execute("select status from instances where id = ?", (WEB2,)).fetchone()
    assert rows == state.bindings(GZ) and (CI, BATCH1) not in rows
    assert status == (2,)
    assert os.stat(state.state_path).st_mode & 0o777 == 0o600  # it holds the fixture's credentials


def test_the_state_survives_a_new_process_state(fleet_file: Path) -> None:
    FleetState.from_file(fleet_file).unbind_instance_key(GZ, CI, [BATCH1])
    again = FleetState.from_file(fleet_file)
    assert (CI, BATCH1) not in again.bindings(GZ)
    assert (CI, BATCH1) not in FleetState.from_file(fleet_file, persist=False).bindings(GZ)


def test_not_persisted_when_asked(fleet_file: Path) -> None:
    FleetState.from_file(fleet_file).set_binding(GZ, OLD, WEB1, False)
    before = fleet_file.read_bytes()
    state = FleetState.from_file(fleet_file, persist=False)
    assert (OLD, WEB1) not in state.bindings(GZ)  # starts from the live state
    state.unbind_instance_key(GZ, CI, [BATCH1])
    assert fleet_file.read_bytes() == before
    assert (CI, BATCH1) in FleetState.from_file(fleet_file).bindings(GZ)
    assert state.saves == 0


def test_state_path_from_the_option_or_the_environment(
    fleet_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    chosen = tmp_path / "elsewhere" / "s.sqlite"
    chosen.parent.mkdir()
    FleetState.from_file(fleet_file, state=chosen).unbind_instance_key(GZ, CI, [BATCH1])
    assert chosen.exists() and not fleet_file.with_name("fleet.yaml.state.sqlite").exists()
    monkeypatch.setenv(STATE_ENV, str(chosen))
    assert (CI, BATCH1) not in FleetState.from_file(fleet_file).bindings(GZ)


def test_an_unusable_state_file_is_an_error_not_a_traceback(fleet_file: Path) -> None:
    bad = fleet_file.with_name("fleet.yaml.state.sqlite")
    bad.write_bytes(b"not a database" * 100)
    with pytest.raises(InputError) as caught:
        FleetState.from_file(fleet_file)
    assert "cannot use the emulator state" in str(caught.value.problems[0])
    assert "--state" in (caught.value.hint or "")


def test_two_states_on_one_file_lose_nothing(fleet_file: Path) -> None:
    first = FleetState.from_file(fleet_file)
    second = FleetState.from_file(fleet_file)
    first.unbind_instance_key(GZ, CI, [BATCH1])
    second.unbind_instance_key(GZ, OLD, [WEB1])  # applies first's change before its own
    first.set_instance_status(GZ, WEB2, 2)
    final = FleetState.from_file(fleet_file).bindings(GZ)
    assert (CI, BATCH1) not in final and (OLD, WEB1) not in final
    assert FleetState.from_file(fleet_file).settled_status(GZ, WEB2) == 2
    # The readers see the other's changes too, without reloading the fleet.
    assert second.settled_status(GZ, WEB2) == 2
    assert (OLD, WEB1) not in first.bindings(GZ)


def test_concurrent_writers_in_threads_lose_nothing(fleet_file: Path) -> None:
    states = [FleetState.from_file(fleet_file) for _ in range(2)]
    pairs = sorted(FleetState.from_file(fleet_file).bindings(GZ))
    work = [pairs[0::2], pairs[1::2]]

    def run(state: FleetState, mine: list[tuple[str, str]]) -> None:
        for key_id, instance_id in mine:
            state.set_binding(GZ, key_id, instance_id, False)

    threads = [threading.Thread(target=run, args=(s, w)) for s, w in zip(states, work, strict=True)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert FleetState.from_file(fleet_file).bindings(GZ) == set()


_CHILD = (
    "import sys; from pathlib import Path\n"
    "from reconciler.emulator.state import FleetState\n"
    "s = FleetState.from_file(Path(sys.argv[1]))\n"
    "for kid, iid in sorted(s.bindings(sys.argv[2])):\n"
    "    s.set_binding(sys.argv[2], kid, iid, False)\n"
)


def test_two_processes_share_the_state(fleet_file: Path) -> None:
    before = fleet_file.read_bytes()
    mine = FleetState.from_file(fleet_file)
    child = subprocess.Popen([sys.executable, "-c", _CHILD, str(fleet_file), "sh"])
    for key_id, instance_id in sorted(mine.bindings(GZ)):
        mine.set_binding(GZ, key_id, instance_id, False)
    assert child.wait(timeout=60) == 0
    assert mine.bindings("sh") == set()  # the other process's changes, seen here
    second = subprocess.run([sys.executable, "-c", _CHILD, str(fleet_file), GZ], timeout=60, check=True)
    assert second.returncode == 0
    final = FleetState.from_file(fleet_file)
    assert final.bindings(GZ) == set() and final.bindings("sh") == set()
    assert fleet_file.read_bytes() == before


def test_a_killed_process_leaves_no_half_call(fleet_file: Path) -> None:
    state = FleetState.from_file(fleet_file)
    initial = state.bindings(GZ)
    script = (
        "import os, signal, sys; from pathlib import Path\n"
        "from reconciler.emulator.store import Store\n"
        "store = Store(Path(sys.argv[1]))\n"
        "store.db.execute('BEGIN IMMEDIATE')\n"
        "store.db.execute('DELETE FROM bindings')\n"
        "store.log_changes([('ap-guangzhou', 'binding', 'skey-3glfot13', 'ins-0c0d0e0f')])\n"
        "os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    assert state.state_path is not None
    child = subprocess.run([sys.executable, "-c", script, str(state.state_path)], timeout=60)
    assert child.returncode == -signal.SIGKILL
    assert FleetState.from_file(fleet_file).bindings(GZ) == initial
    state.unbind_instance_key(GZ, CI, [BATCH1])  # and the state is still writable
    assert FleetState.from_file(fleet_file).bindings(GZ) == initial - {(CI, BATCH1)}


def test_transient_states_are_shared(fleet_file: Path) -> None:
    now = [1000.0]
    state = FleetState.from_file(fleet_file, clock=lambda: now[0], op_seconds=10)
    other = FleetState.from_file(fleet_file, clock=lambda: now[0])
    state.unbind_instance_key(GZ, OLD, [WEB1])
    state.stop_instances(GZ, [DB1])
    for view in (state, other, FleetState.from_file(fleet_file, clock=lambda: now[0])):
        assert view.instance_status(GZ, WEB1) == 20
        assert view.instance_status(GZ, DB1) == 9
        assert (OLD, WEB1) in view.observed_bindings(GZ)
        assert (OLD, WEB1) not in view.bindings(GZ)
    now[0] += 10
    assert other.instance_status(GZ, WEB1) == 4 and other.instance_status(GZ, DB1) == 4
    assert (OLD, WEB1) not in other.observed_bindings(GZ)


def test_reset_brings_back_the_fixture(fleet_file: Path) -> None:
    state = FleetState.from_file(fleet_file)
    fixture = state.bindings(GZ)
    state.unbind_instance_key(GZ, CI, [BATCH1])
    state.set_instance_status(GZ, BATCH1, 2)
    code, out, err = run_cli("emulator", "reset", "--fleet", str(fleet_file))
    assert code == 0, err
    assert "reset" in out and "fleet.yaml.state.sqlite" in out
    assert FleetState.from_file(fleet_file).bindings(GZ) == fixture
    assert state.bindings(GZ) == fixture  # a running state sees the reset at once
    assert state.settled_status(GZ, BATCH1) == 4
    state.unbind_instance_key(GZ, CI, [BATCH1])
    state.reset()
    assert state.bindings(GZ) == fixture


def test_reset_of_a_bad_fixture_is_an_error(tmp_path: Path) -> None:
    bad = tmp_path / "fleet.yaml"
    bad.write_text("credentials: []\nregions: {}\n")
    code, _, err = run_cli("emulator", "reset", "--fleet", str(bad))
    assert code == 1 and f"{bad}:1:14:" in err


def test_editing_the_fixture_rebuilds_the_state(fleet_file: Path) -> None:
    state = FleetState.from_file(fleet_file)
    state.unbind_instance_key(GZ, CI, [BATCH1])
    issued = state.assume_role("qcs::cam::uin/100000000001:roleName/r", "session")
    assert FleetState.from_file(fleet_file).secret(issued.secret_id) == issued  # shared ...
    edited = fleet_file.read_text().replace("name: batch-1", "name: batch-one")
    assert edited != fleet_file.read_text()
    fleet_file.write_text(edited)
    fresh = FleetState.from_file(fleet_file)
    assert fresh.instance(GZ, BATCH1).name == "batch-one"
    assert (CI, BATCH1) in fresh.bindings(GZ)  # the changes made before the edit are gone
    assert fresh.instance(GZ, BATCH1).latest_operation is None  # their operations too
    assert fresh.secret(issued.secret_id) is None  # ... and STS credentials too
    state.refresh()  # what a running emulator does on every request
    assert state.instance(GZ, BATCH1).name == "batch-one"


# --------------------------------------------------------------------------- served and in-process


def _stop(process: subprocess.Popen[str]) -> None:
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=20)
    assert process.returncode == 0, err


def _bound(em: Emulator, key_id: str) -> list[str]:
    body = json.loads(em.call("DescribeKeyPairs", {"keyIds.0": key_id}, url=em.url).text)
    found: list[str] = body["data"]["sshSet"][0]["bindUnInstanceIds"]
    return found


def test_served_and_in_process_share_the_state_across_restarts(fleet_file: Path) -> None:
    before = fleet_file.read_bytes()
    process, em = serve_fleet(fleet_file)
    try:
        answer = em.call("UnBindInstanceKey", {"keyId": CI, "instanceIds.0": BATCH1}, url=em.url)
        assert json.loads(answer.text)["code"] == 0
        # An in-process emulator on the same fixture sees it, and its change is served.
        in_process = FleetState.from_file(fleet_file)
        assert (CI, BATCH1) not in in_process.bindings(GZ)
        in_process.set_binding(GZ, OPS, BATCH1, False)
        assert BATCH1 not in _bound(em, OPS)
    finally:
        if process.poll() is None:
            _stop(process)
    process, em = serve_fleet(fleet_file)  # a restart keeps the state
    try:
        assert BATCH1 not in _bound(em, CI) and BATCH1 not in _bound(em, OPS)
    finally:
        _stop(process)
    assert fleet_file.read_bytes() == before


@pytest.mark.slow
def test_a_big_fleet_loads_fast_and_a_call_costs_what_it_changes(tmp_path: Path) -> None:
    instances = [
        {"id": f"ins-{n:08x}", "name": f"web-{n}", "os": "centos7.6x86_64", "status": 4}
        for n in range(50_000)
    ]
    keys = [
        {
            "id": f"skey-{k:08x}",
            "name": f"key-{k}",
            "bound": [f"ins-{(k * 50 + j) % 50_000:08x}" for j in range(50)],
        }
        for k in range(2_000)
    ]
    data = {
        "credentials": [{"secret_id": "AKID1", "secret_key": "k"}],
        "regions": {GZ: {"instances": instances, "keys": keys}},
    }
    path = tmp_path / "big.json"
    path.write_text(json.dumps(data))
    started = time.perf_counter()
    state = FleetState.from_file(path)  # builds the state from the fixture: parse + schema, once
    built = time.perf_counter() - started
    started = time.perf_counter()
    state = FleetState.from_file(path)  # later processes read the state
    loaded = time.perf_counter() - started
    assert len(state.bindings(GZ)) == 100_000
    started = time.perf_counter()
    for k in range(20):
        state.unbind_instance_key(GZ, f"skey-{k:08x}", [f"ins-{k * 50 + j:08x}" for j in range(50)])
    calls = (time.perf_counter() - started) / 20
    assert state.saves == 20
    # Generous bounds (a loaded CI machine); the old whole-file save cost about 0.3 s a call.
    assert built < 30.0 and loaded < 3.0 and calls < 0.05, (built, loaded, calls)
    assert len(state.bindings(GZ)) == 100_000 - 1000


def test_an_edited_fixture_says_its_live_state_was_rebuilt(tmp_path: Path) -> None:
    """Editing the fixture (even a comment) rebuilds the live state, dropping what applies did:
    said once, on the run that rebuilt it (QA found it silent)."""
    fixture = tmp_path / "fleet.yaml"
    fixture.write_bytes(EXAMPLE_FLEET.read_bytes())
    desired = str(EXAMPLE_FLEET.parent / "bindings.yaml")

    def plan_stderr() -> str:
        command = [sys.executable, "-m", "reconciler", "plan", desired, "--emulator", str(fixture)]
        done = run_command(command, cwd=tmp_path, env={"NO_COLOR": "1"})
        assert done.returncode == 0, done.stderr
        return done.stderr

    assert "rebuilt" not in plan_stderr()  # built the first time: nothing was lost
    with fixture.open("a", encoding="utf-8") as handle:
        handle.write("# an edit\n")
    assert f"{fixture} changed since its live state" in plan_stderr()
    assert "rebuilt" not in plan_stderr()  # once
