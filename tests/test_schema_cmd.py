"""``cvmkeys schema NAME``, the published ``$id`` of every schema, the ``$schema`` reference
``import`` writes (right where the file lands), and apply's JSON result against its schema."""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

import pytest
from jsonschema import Draft202012Validator
from support import emulator_client, run_cli

from bench.fleetgen import generate
from reconciler.cloud.observe import observe_for_plan
from reconciler.core.document import RESULT_FORMAT_VERSION
from reconciler.core.plan import build_plan
from reconciler.desired.loader import load_text
from reconciler.emulator.app import EmulatorApp
from reconciler.emulator.faults import FaultProfile
from reconciler.emulator.state import FleetState
from reconciler.execute.executor import ExecOptions, Executor
from reconciler.model import Outcome
from reconciler.render.json import render_result_json

ROOT = Path(__file__).resolve().parent.parent
NAMES = ("bindings", "plan", "fleet", "result", "validation")
EXAMPLE_FLEET = ROOT / "examples" / "fleet.yaml"


@pytest.mark.parametrize("name", NAMES)
def test_schema_prints_each_shipped_schema(name: str) -> None:
    code, out, err = run_cli("schema", name)
    assert code == 0, err
    schema = json.loads(out)
    assert schema == json.loads((ROOT / "schemas" / f"{name}.schema.json").read_text(encoding="utf-8"))
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert schema["$id"] == f"https://cvmkeys.dev/schemas/{name}.schema.json"
    Draft202012Validator.check_schema(schema)


def test_schema_refuses_an_unknown_name() -> None:
    code, _, err = run_cli("schema", "nope")
    assert code == 1 and "bindings" in err


# --------------------------------------------------------------------------- import's $schema


def _import(*args: str) -> tuple[int, str, str]:
    return run_cli("import", "--region", "gz", "--all", "--emulator", str(EXAMPLE_FLEET), *args)


def _schema_line(text: str) -> str:
    first = text.splitlines()[0]
    assert first.startswith("# yaml-language-server: $schema=")
    return first.removeprefix("# yaml-language-server: $schema=")


def test_import_points_at_the_nearest_local_schema_by_a_path_that_resolves(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    (repo / ".git").mkdir(parents=True)
    (repo / "schemas").mkdir()
    code, out, _ = run_cli("schema", "bindings")
    (repo / "schemas" / "bindings.schema.json").write_text(out, encoding="utf-8")
    out_file = repo / "desired" / "prod" / "gz.yaml"
    out_file.parent.mkdir(parents=True)
    code, _, err = _import("--out", str(out_file))
    assert code == 0, err
    ref = _schema_line(out_file.read_text(encoding="utf-8"))
    assert ref == "../../schemas/bindings.schema.json"
    assert (out_file.parent / ref).resolve() == (repo / "schemas" / "bindings.schema.json").resolve()
    # Next to the schemas folder too.
    beside = repo / "gz.yaml"
    assert _import("--out", str(beside))[0] == 0
    assert _schema_line(beside.read_text(encoding="utf-8")) == "schemas/bindings.schema.json"


def test_import_uses_the_published_id_without_a_local_copy(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    (repo / ".git").mkdir(parents=True)
    # Above the repository root: not looked at. Inside it, but another schema: not ours.
    (tmp_path / "schemas").mkdir()
    (tmp_path / "schemas" / "bindings.schema.json").write_text(
        json.dumps({"$id": "https://cvmkeys.dev/schemas/bindings.schema.json"}), encoding="utf-8"
    )
    (repo / "schemas").mkdir()
    (repo / "schemas" / "bindings.schema.json").write_text('{"$id": "https://example.com/other"}')
    out_file = repo / "gz.yaml"
    assert _import("--out", str(out_file))[0] == 0
    assert (
        _schema_line(out_file.read_text(encoding="utf-8"))
        == "https://cvmkeys.dev/schemas/bindings.schema.json"
    )


def test_import_to_standard_output_uses_the_published_id_and_schema_ref_wins(tmp_path: Path) -> None:
    code, out, _ = _import()
    assert code == 0
    assert _schema_line(out) == "https://cvmkeys.dev/schemas/bindings.schema.json"
    out_file = tmp_path / "x.yaml"
    assert _import("--out", str(out_file), "--schema-ref", "../my/schema.json")[0] == 0
    assert _schema_line(out_file.read_text(encoding="utf-8")) == "../my/schema.json"


# --------------------------------------------------------------------------- apply's result


def test_a_real_apply_result_validates_against_its_schema() -> None:
    """Through the emulator with injected failures and a stop part-way: done, failed and
    not-attempted rows (and blocked, unchangeable) in one result."""
    validator = Draft202012Validator(json.loads(run_cli("schema", "result")[1]))
    seen: set[Outcome] = set()
    for seed in range(1, 8):
        gen = generate(150, 10, seed=8, remove_fraction=0.4)
        state = FleetState.from_data(gen.fleet)
        desired = load_text(gen.desired_text, "bindings.yaml").by_region[gen.region]
        observed = observe_for_plan(emulator_client(EmulatorApp(state), gen.region), desired)
        plan = build_plan(desired, observed, endpoint="test")
        faults = FaultProfile(seed=seed, error_rate=0.5, actions=frozenset({"UnBindInstanceKey"}))
        client = emulator_client(EmulatorApp(state, faults=faults), gen.region, sleep=lambda s: None)
        stop = threading.Event()
        result = Executor(
            client,
            plan,
            options=ExecOptions(max_attempts=1, poll_initial=0, parallelism=1),
            on_event=lambda event, stop=stop: stop.set() if event.bindings_done else None,
            stop=stop,
        ).run()
        data = json.loads(render_result_json(result))
        errors = sorted(validator.iter_errors(data), key=str)
        assert not errors, errors[:3]
        assert data["format_version"] == RESULT_FORMAT_VERSION
        assert sum(data["summary"].values()) == len(data["results"])
        seen |= {r.outcome for r in result.results}
        if {Outcome.DONE, Outcome.FAILED, Outcome.NOT_ATTEMPTED} <= seen:
            break
    assert {Outcome.DONE, Outcome.FAILED, Outcome.NOT_ATTEMPTED} <= seen
    # What the schema refuses: an outcome apply does not have, a missing member.
    data["results"][0]["outcome"] = "skipped"
    assert any("skipped" in e.message for e in validator.iter_errors(data))
    del data["summary"]
    assert any("summary" in e.message for e in validator.iter_errors(data))


def test_apply_format_json_from_the_cli_validates(example: tuple[Path, Path]) -> None:
    desired, fleet = example
    validator = Draft202012Validator(json.loads(run_cli("schema", "result")[1]))
    code, out, err = run_cli(
        "apply", str(desired), "--emulator", str(fleet), "--auto-approve", "--format", "json"
    )
    assert code in (0, 3), err
    data = json.loads(out)
    assert not list(validator.iter_errors(data))
    assert data["summary"]["done"] > 0


# A fleet in two regions: two instances each (running: status 2, stopped: 4), both bound to OLD
# (to go) and KEEP.
OLD, KEEP = "skey-01d01d01", "skey-4eep4eep"
RESULT_SECRET = {"secret_id": "AKIDRESULT00000000000000000000000000", "secret_key": "result-secret"}


def _two_region_fleet(tmp_path: Path, status: int) -> Path:
    def region(prefix: str) -> dict[str, object]:
        ids = [f"ins-{prefix}000000{n}" for n in (1, 2)]
        return {
            "instances": [{"id": i, "name": i[-6:], "os": "centos7.6x86_64", "status": status} for i in ids],
            "keys": [{"id": OLD, "name": "old", "bound": ids}, {"id": KEEP, "name": "keep", "bound": ids}],
        }

    fleet = tmp_path / "fleet.json"
    regions = {"ap-guangzhou": region("g"), "ap-shanghai": region("s")}
    fleet.write_text(json.dumps({"credentials": [RESULT_SECRET], "regions": regions}), encoding="utf-8")
    return fleet


def _desired(folder: Path, region: str, extra: str = "") -> Path:
    folder.mkdir(exist_ok=True)
    path = folder / f"{region}.yaml"
    path.write_text(
        f"version: 1\nregion: {region}\nscope: keys\nkeys:\n  {OLD}:\n    instances: []\n"
        f"safety:\n  max_unbind_percent: 100\n{extra}",
        encoding="utf-8",
    )
    return path


def _apply_json(*paths: Path, fleet: Path) -> dict[str, Any]:
    code, out, err = run_cli(
        "apply", *map(str, paths), "--emulator", str(fleet), "--auto-approve", "--format", "json"
    )
    assert code == 0, err
    data: dict[str, Any] = json.loads(out)
    return data


def test_an_apply_with_stops_validates_and_its_stops_are_checked(tmp_path: Path) -> None:
    """A stop -> unbind -> start apply prints ``stops``; the schema describes it (and refuses a
    broken one), so a reader of the result can rely on ``still_down``."""
    validator = Draft202012Validator(json.loads(run_cli("schema", "result")[1]))
    disruption = "disruption:\n  stop_running: true\n  max_stopped: 1\n"
    desired = _desired(tmp_path / "d", "ap-guangzhou", disruption)
    data = _apply_json(desired, fleet=_two_region_fleet(tmp_path, status=2))
    assert not list(validator.iter_errors(data))
    stops = data["stops"]
    assert stops["still_down"] == [] and stops["max_down_at_once"] == 1
    assert [(i["instance_id"], i["stopped"], i["running_again"]) for i in stops["instances"]] == [
        ("ins-g0000001", True, True),
        ("ins-g0000002", True, True),
    ]
    del stops["still_down"]
    assert any("still_down" in e.message for e in validator.iter_errors(data))
    stops["still_down"] = [{"instance_id": "ins-g0000001", "stopped": "yes"}]
    assert len(list(validator.iter_errors(data))) >= 2  # a string for a boolean, members missing


def test_an_apply_of_several_regions_validates_as_a_result_set(tmp_path: Path) -> None:
    validator = Draft202012Validator(json.loads(run_cli("schema", "result")[1]))
    folder = tmp_path / "desired"
    _desired(folder, "ap-guangzhou")
    _desired(folder, "ap-shanghai")
    data = _apply_json(folder, fleet=_two_region_fleet(tmp_path, status=4))
    assert data["kind"] == "cvmkeys-result-set"
    assert not list(validator.iter_errors(data))
    assert [(r["region"], r["summary"]["done"]) for r in data["results"]] == [
        ("ap-guangzhou", 2),
        ("ap-shanghai", 2),
    ]
    # Each member is held to the one-region definition; the set needs its kind.
    del data["results"][1]["summary"]
    assert not validator.is_valid(data)
    del data["kind"]
    data["results"][1]["summary"] = data["results"][0]["summary"]
    assert not validator.is_valid(data)


def test_an_already_applied_plan_says_so_in_its_json_and_markdown(tmp_path: Path) -> None:
    """A finished plan applied again sends nothing and exits 0; the document CI posts says
    why (result format 1.1), not only standard error."""
    validator = Draft202012Validator(json.loads(run_cli("schema", "result")[1]))
    fleet = _two_region_fleet(tmp_path, status=4)
    plan = tmp_path / "plan.json"
    desired = _desired(tmp_path / "d", "ap-guangzhou")
    assert run_cli("plan", str(desired), "--emulator", str(fleet), "--out", str(plan))[0] == 0
    documents = []
    for _ in range(2):
        code, out, err = run_cli("apply", str(plan), "--format", "json")
        assert code == 0, err
        documents.append(json.loads(out))
    first, again = documents
    assert not list(validator.iter_errors(first)) and not list(validator.iter_errors(again))
    assert first["already_applied"] is False and first["summary"]["done"] == 2
    assert again["already_applied"] is True and again["summary"]["done"] == 2
    assert "UnBindInstanceKey" not in again["calls"] and "DisassociateInstancesKeyPairs" not in again["calls"]
    code, out, _ = run_cli("apply", str(plan), "--format", "markdown")
    assert code == 0 and "The plan was already applied" in out
