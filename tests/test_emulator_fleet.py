"""The fleet file: schema and checks agree, errors point at FILE:LINE:COL, the fast reader reads
what YAML reads, changes are saved atomically and two writers never lose each other's changes."""

from __future__ import annotations

import copy
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import EXAMPLE_FLEET
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from reconciler.emulator.fleetfile import (
    _NotFastShape,
    _parse_fast,
    check_fleet,
    dump_fleet,
    parse_fleet_text,
)
from reconciler.emulator.state import FleetState
from reconciler.errors import InputError
from reconciler.schemas import validator

GZ = "ap-guangzhou"
CI, OLD, OPS = "skey-3glfot13", "skey-8x9y0z12", "skey-5k6l7m8n"
WEB1, WEB2, BATCH1 = "ins-1a2b3c4d", "ins-5e6f7a8b", "ins-0c0d0e0f"


def example() -> dict[str, Any]:
    data = yaml.safe_load(EXAMPLE_FLEET.read_text())
    assert isinstance(data, dict)
    return data


def schema_errors(data: object) -> list[str]:
    return [error.message for error in validator("fleet").iter_errors(data)]


def test_example_fleet_is_valid() -> None:
    assert schema_errors(example()) == []
    assert check_fleet(example()) == []
    state = FleetState.from_file(EXAMPLE_FLEET, persist=False)
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
def test_schema_and_checks_reject_the_same(path: tuple[Any, ...], value: object) -> None:
    broken = _set(example(), path, value)
    assert schema_errors(broken), "the schema accepts it"
    assert check_fleet(broken), "the checks accept it"


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
def test_schema_and_checks_accept_the_same(path: tuple[Any, ...], value: object) -> None:
    variant = _set(example(), path, value)
    if path[-1] == "instances":  # keep bindings consistent
        variant["regions"][GZ]["keys"] = []
    assert schema_errors(variant) == []
    assert check_fleet(variant) == []


def test_checks_beyond_the_schema() -> None:
    data = example()
    data["regions"][GZ]["instances"].append(dict(data["regions"][GZ]["instances"][0]))
    data["regions"][GZ]["keys"][0]["bound"].append("ins-5h1a1a1a")  # an instance of sh, not gz
    data["regions"]["gz"] = {}
    messages = [message for _, message in check_fleet(data)]
    assert any("ins-1a2b3c4d is listed twice" in m for m in messages)
    assert any("ins-5h1a1a1a is not an instance of region ap-guangzhou" in m for m in messages)
    assert any("region gz is ap-guangzhou, already given" in m for m in messages)


# --------------------------------------------------------------------------- errors with places


def load_error(tmp_path: Path, text: str | bytes) -> list[str]:
    path = tmp_path / "fleet.yaml"
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text)
    with pytest.raises(InputError) as caught:
        FleetState.from_file(path)
    return [str(problem).replace(str(path), "F") for problem in caught.value.problems]


GOOD_HEAD = """credentials:
  - {secret_id: AKID1, secret_key: k}
regions:
  gz:
    instances:
"""


def test_errors_point_at_line_and_column(tmp_path: Path) -> None:
    text = GOOD_HEAD + (
        "      - {id: ins-1a2b3c4d, name: a, os: centos, status: 4}\n"
        "      - {id: ins-BAD, name: b, os: centos, status: 4}\n"
        "      - {id: ins-2b3c4d5e, name: c, os: centos, status: running, colour: red}\n"
        "    keys:\n"
        "      - {id: skey-3glfot13, name: k, bound: [ins-1a2b3c4d, ins-zzzzzzzz]}\n"
    )
    problems = load_error(tmp_path, text)
    lines = text.splitlines()

    def at(line: int, needle: str) -> str:
        return f"F:{line}:{lines[line - 1].index(needle) + 1}: "

    assert problems[0].startswith(at(7, "ins-BAD") + "instance id 'ins-BAD'")
    assert any(p.startswith(at(8, "colour") + "unknown field 'colour'") for p in problems)
    assert any(p.startswith(at(8, "running") + "status must be an integer") for p in problems)
    assert any(
        p.startswith(at(10, "ins-zzzzzzzz") + "instance ins-zzzzzzzz is not an instance") for p in problems
    )


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (GOOD_HEAD + "      - {id: ins-1a2b3c4d, id: ins-1a2b3c4d, name: a, os: x, status: 4}\n", "F:6:"),
        ("credentials: [\n", "F:2:1: not valid YAML"),
        ("regions: {}\n", "F:1:1: the fleet file is missing required field 'credentials'"),
        ("", "F: the fleet file must be a map, not null"),
        (b"credentials: \xff\n", "F: not UTF-8 text"),
        ("- just\n- a list\n", "F:1:1: the fleet file must be a map, not a list"),
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


def test_from_data_reports_paths() -> None:
    data = _set(example(), (*INSTANCE0, "status"), "x")
    with pytest.raises(InputError) as caught:
        FleetState.from_data(data)
    assert "regions.ap-guangzhou.instances.0.status" in str(caught.value.problems[0])


# --------------------------------------------------------------------------- fast reader == YAML

names = st.text(st.characters(exclude_categories=["Cs"]), max_size=12)


@st.composite
def fleets(draw: st.DrawFn) -> dict[str, Any]:
    count = draw(st.integers(0, 4))
    instances = []
    for n in range(count):
        item: dict[str, Any] = {
            "id": f"ins-{n:08d}",
            "name": draw(names),
            "os": draw(st.sampled_from(["centos7.6x86_64", "Windows Server 2019", "yes", "null", "1e5"])),
            "status": draw(st.integers(1, 999)),
        }
        if draw(st.booleans()):
            item["wan_ips"] = ["203.0.113.9"]
        instances.append(item)
    keys = [
        {
            "id": f"skey-{n:08d}",
            "name": draw(names),
            "bound": draw(st.lists(st.sampled_from([i["id"] for i in instances]), unique=True))
            if instances
            else [],
        }
        for n in range(draw(st.integers(0, 3)))
    ]
    return {
        "credentials": [{"secret_id": "AKID" + draw(st.text("abc", min_size=1)), "secret_key": "k: {x}, y"}],
        "regions": {draw(st.sampled_from(["gz", "ap-shanghai"])): {"instances": instances, "keys": keys}},
    }


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(fleets())
def test_written_files_read_back_the_same_fast_and_by_yaml(data: dict[str, Any]) -> None:
    assert check_fleet(data) == []
    text = dump_fleet(data)
    assert _parse_fast(text) == data  # the fast reader accepts what the writer writes
    assert yaml.load(text, Loader=yaml.CSafeLoader) == data  # and it is the YAML meaning
    assert parse_fleet_text(text, "f") == data


FAST_HEAD = 'credentials:\n  - {secret_id: "AKID1", secret_key: "k"}\nregions:\n  gz:\n    instances:\n'


@pytest.mark.parametrize(
    "line",
    [
        '      - {id: "ins-00000001", name: "a", os: "x", status: 4, name: "b"}',  # duplicate field
        '      - {id: "ins-00000001", name: yes, os: "x", status: 4}',  # YAML bool, not JSON
        '      - {id: "ins-00000001", name: "a", os: "x", status: 1e5}',  # YAML string, JSON float
        '      - {id: "ins-00000001", name: NaN, os: "x", status: 4}',  # YAML string, JSON float
        '      - {id: "ins-00000001", name: "a, os: b", os: "x", status: 4}',  # field name in a value
    ],
)
def test_edited_lines_that_json_and_yaml_read_differently_go_to_yaml(line: str) -> None:
    text = FAST_HEAD + line + "\n"
    assert _parse_fast(FAST_HEAD + '      - {id: "ins-00000001", name: "a", os: "x", status: 4}\n')
    with pytest.raises(_NotFastShape):
        _parse_fast(text)
    try:
        parsed = parse_fleet_text(text, "f")
    except InputError as error:
        assert "duplicate key 'name'" in str(error.problems[0])
    else:
        assert parsed == yaml.safe_load(text)


# --------------------------------------------------------------------------- persistence


@pytest.fixture
def fleet_file(tmp_path: Path) -> Path:
    path = tmp_path / "fleet.yaml"
    path.write_bytes(EXAMPLE_FLEET.read_bytes())
    os.chmod(path, 0o640)
    return path


def test_changes_are_saved_atomically_keeping_permissions(fleet_file: Path) -> None:
    state = FleetState.from_file(fleet_file)
    inode = fleet_file.stat().st_ino
    state.unbind_instance_key(GZ, CI, [BATCH1])
    assert fleet_file.stat().st_ino != inode  # replaced, not rewritten in place
    assert fleet_file.stat().st_mode & 0o777 == 0o640
    assert sorted(p.name for p in fleet_file.parent.iterdir()) == ["fleet.yaml", "fleet.yaml.lock"]
    again = FleetState.from_file(fleet_file)
    assert again.bindings(GZ) == state.bindings(GZ)
    assert (CI, BATCH1) not in again.bindings(GZ)
    assert state.saves == 1


def test_not_persisted_when_asked(fleet_file: Path) -> None:
    before = fleet_file.read_bytes()
    state = FleetState.from_file(fleet_file, persist=False)
    state.unbind_instance_key(GZ, CI, [BATCH1])
    assert fleet_file.read_bytes() == before


def test_two_states_on_one_file_lose_nothing(fleet_file: Path) -> None:
    first = FleetState.from_file(fleet_file)
    second = FleetState.from_file(fleet_file)
    first.unbind_instance_key(GZ, CI, [BATCH1])
    second.unbind_instance_key(GZ, OLD, [WEB1])  # re-reads the file first: keeps first's change
    first.set_instance_status(GZ, WEB2, 2)
    final = FleetState.from_file(fleet_file).bindings(GZ)
    assert (CI, BATCH1) not in final and (OLD, WEB1) not in final
    assert FleetState.from_file(fleet_file).settled_status(GZ, WEB2) == 2
    # The readers see the other's changes too.
    second.refresh()
    assert second.settled_status(GZ, WEB2) == 2


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


def test_another_process_writing_the_same_file(fleet_file: Path) -> None:
    mine = FleetState.from_file(fleet_file)
    script = (
        "import sys; from pathlib import Path\n"
        "from reconciler.emulator.state import FleetState\n"
        "s = FleetState.from_file(Path(sys.argv[1]))\n"
        "for kid, iid in sorted(s.bindings('sh')):\n"
        "    s.set_binding('sh', kid, iid, False)\n"
    )
    child = subprocess.Popen([sys.executable, "-c", script, str(fleet_file)])
    for key_id, instance_id in sorted(mine.bindings(GZ)):
        mine.set_binding(GZ, key_id, instance_id, False)
    assert child.wait(timeout=30) == 0
    final = FleetState.from_file(fleet_file)
    assert final.bindings(GZ) == set() and final.bindings("sh") == set()


def test_transient_states_are_not_saved(fleet_file: Path) -> None:
    now = [1000.0]
    state = FleetState.from_file(fleet_file, clock=lambda: now[0], op_seconds=10)
    state.unbind_instance_key(GZ, OLD, [WEB1])
    assert state.instance_status(GZ, WEB1) == 20
    assert (OLD, WEB1) in state.observed_bindings(GZ)
    assert (OLD, WEB1) not in state.bindings(GZ)
    on_disk = FleetState.from_file(fleet_file, persist=False)
    assert on_disk.instance_status(GZ, WEB1) == 4 and (OLD, WEB1) not in on_disk.bindings(GZ)
    now[0] += 10
    assert state.instance_status(GZ, WEB1) == 4
    assert (OLD, WEB1) not in state.observed_bindings(GZ)


def test_secrets_stay_out_of_reprs(fleet_file: Path) -> None:
    state = FleetState.from_file(fleet_file)
    assert "emulator-secret-key" not in repr(state)
    assert "emulator-secret-key" not in repr(state.credentials)


@pytest.mark.slow
def test_a_big_fleet_loads_and_saves_fast(tmp_path: Path) -> None:
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
    path = tmp_path / "big.yaml"
    path.write_text(dump_fleet(data))
    started = time.perf_counter()
    state = FleetState.from_file(path)
    loaded = time.perf_counter() - started
    assert len(state.bindings(GZ)) == 100_000
    started = time.perf_counter()
    state.unbind_instance_key(GZ, "skey-00000000", [f"ins-{j:08x}" for j in range(50)])
    saved = time.perf_counter() - started
    assert state.saves == 1
    # Generous bounds (a loaded CI machine); PyYAML alone needs several seconds for this file.
    assert loaded < 4.0 and saved < 2.0, (loaded, saved)
    assert len(state.bindings(GZ)) == 100_000 - 50
