"""Every region in one plan (issue 15 item 1), end to end: the real CLI, the real client, the
in-process emulator over HTTP with real signatures. A folder with files for ap-guangzhou and
ap-shanghai gives one plan file (a plan set) and one rendering; one apply carries out both
regions, each on its own connection, and both converge; ``--region`` picks one; a stale region
refuses the whole apply before any unbind; ``cvmkeys regions`` prints the CI matrix."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from support import run_cli

from reconciler.core.plan_set import PLAN_SET_KIND
from reconciler.emulator.state import FleetState
from reconciler.schemas import validator

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"

# ap-shanghai in examples/fleet.yaml: legacy-sh is bound to batch-1 (stopped), deploy-sh to
# db-1 (running), batch-1 and app-1. This file lets deploy-sh stay on db-1 and app-1, and
# legacy-sh nowhere: two ready unbinds from batch-1, nothing blocked.
SHANGHAI = """\
version: 1
region: ap-shanghai
scope: keys
keys:
  skey-5h0a0a0a:
    name: deploy-sh
    instances: [ins-9c8d7e6f, ins-5h1a1a1a]
  skey-5h0b0b0b:
    name: legacy-sh
    instances: []
safety:
  max_unbind_percent: 100
"""


@pytest.fixture
def two_regions(tmp_path: Path) -> tuple[Path, Path]:
    """A folder with a desired file per region, and a private copy of the example fleet."""
    folder = tmp_path / "desired"
    folder.mkdir()
    shutil.copy(EXAMPLES / "bindings.yaml", folder / "guangzhou.yaml")
    (folder / "shanghai.yaml").write_text(SHANGHAI)
    fleet = tmp_path / "fleet.yaml"
    shutil.copy(EXAMPLES / "fleet.yaml", fleet)
    return folder, fleet


def _ready(plan: dict[str, object]) -> set[tuple[str, str]]:
    changes = plan["changes"]
    assert isinstance(changes, list)
    return {(c["key_id"], c["instance_id"]) for c in changes if c["status"] == "ready"}


def test_two_regions_one_plan_one_apply_both_converge(two_regions: tuple[Path, Path], tmp_path: Path) -> None:
    folder, fleet = two_regions
    plan_file = tmp_path / "plan.json"
    code, out, err = run_cli(
        "plan", str(folder), "--emulator", str(fleet), "--out", str(plan_file), "--detailed-exitcode"
    )
    assert code == 2, out + err  # changes in (at least) one region
    assert "cvmkeys plan for ap-guangzhou" in out and "cvmkeys plan for ap-shanghai" in out
    assert "Regions: 2." in out

    saved = json.loads(plan_file.read_text())
    assert saved["kind"] == PLAN_SET_KIND
    assert [p["region"] for p in saved["plans"]] == ["ap-guangzhou", "ap-shanghai"]
    validator("plan").validate(saved)  # the shipped schema takes the set
    guangzhou, shanghai = (_ready(p) for p in saved["plans"])
    assert guangzhou and shanghai == {("skey-5h0a0a0a", "ins-0c0d0e0f"), ("skey-5h0b0b0b", "ins-0c0d0e0f")}

    code, out, err = run_cli("show", str(plan_file), "--format", "markdown")
    assert code == 0, err
    assert "### cvmkeys plan: `ap-guangzhou`" in out and "### cvmkeys plan: `ap-shanghai`" in out
    assert "## cvmkeys plan: 2 regions" in out and len(out) < 65_536

    code, out, err = run_cli("apply", str(plan_file))
    assert code in (0, 3), out + err  # 3: ap-guangzhou's example keeps blocked changes
    assert "ap-guangzhou" in out and "ap-shanghai" in out
    state = FleetState.from_file(fleet, persist=False)
    assert not guangzhou & state.bindings("ap-guangzhou")
    assert not shanghai & state.bindings("ap-shanghai")

    code, out, err = run_cli("plan", str(folder), "--emulator", str(fleet), "--format", "json")
    assert code == 0, err
    again = json.loads(out)
    assert [_ready(p) for p in again["plans"]] == [set(), set()]


def test_region_option_picks_one(two_regions: tuple[Path, Path], tmp_path: Path) -> None:
    folder, fleet = two_regions
    plan_file = tmp_path / "plan.json"
    code, out, err = run_cli(
        "plan", str(folder), "--emulator", str(fleet), "--region", "ap-shanghai", "--out", str(plan_file)
    )
    assert code == 0, err
    assert "ap-shanghai" in out and "ap-guangzhou" not in out
    one = json.loads(plan_file.read_text())
    assert "kind" not in one and one["region"] == "ap-shanghai"  # a plain plan, as ever

    both = tmp_path / "both.json"
    assert run_cli("plan", str(folder), "--emulator", str(fleet), "--out", str(both))[0] == 0
    code, out, _ = run_cli("show", str(both), "--region", "sh", "--format", "json")  # short code too
    assert code == 0 and json.loads(out)["region"] == "ap-shanghai"

    code, out, err = run_cli("apply", str(both), "--region", "ap-shanghai")
    assert code == 0, out + err
    state = FleetState.from_file(fleet, persist=False)
    assert ("skey-5h0b0b0b", "ins-0c0d0e0f") not in state.bindings("ap-shanghai")
    assert ("skey-8x9y0z12", "ins-1a2b3c4d") in state.bindings("ap-guangzhou")  # left alone

    code, _, err = run_cli("plan", str(folder), "--emulator", str(fleet), "--region", "eu-frankfurt")
    assert code == 1 and "the files name no such region" in err


def test_a_stale_region_refuses_the_whole_apply(two_regions: tuple[Path, Path], tmp_path: Path) -> None:
    folder, fleet = two_regions
    plan_file = tmp_path / "plan.json"
    assert run_cli("plan", str(folder), "--emulator", str(fleet), "--out", str(plan_file))[0] == 0
    before = FleetState.from_file(fleet, persist=False).bindings("ap-guangzhou")
    # ap-shanghai changes after the plan: someone starts batch-1, which the plan unbinds from
    # as a stopped instance.
    state = FleetState.from_file(fleet, persist=True)
    state.set_instance_status("ap-shanghai", "ins-0c0d0e0f", 2)
    state.refresh()

    code, out, err = run_cli("apply", str(plan_file))
    assert code == 1, out + err
    assert "ap-shanghai: " in err and "plan is stale" in err and "ins-0c0d0e0f" in err
    after = FleetState.from_file(fleet, persist=False)
    assert after.bindings("ap-guangzhou") == before  # the fresh region was not touched either
    assert ("skey-5h0b0b0b", "ins-0c0d0e0f") in after.bindings("ap-shanghai")


def test_regions_command_prints_the_matrix(two_regions: tuple[Path, Path]) -> None:
    folder, _ = two_regions
    code, out, err = run_cli("regions", str(folder))
    assert code == 0, err
    assert json.loads(out) == ["ap-guangzhou", "ap-shanghai"]
    code, out, _ = run_cli("regions", str(EXAMPLES / "bindings.yaml"))
    assert code == 0 and json.loads(out) == ["ap-guangzhou"]


def test_a_one_region_plan_file_is_as_before(tmp_path: Path) -> None:
    fleet = tmp_path / "fleet.yaml"
    shutil.copy(EXAMPLES / "fleet.yaml", fleet)
    plan_file = tmp_path / "plan.json"
    code, _, err = run_cli(
        "plan", str(EXAMPLES / "bindings.yaml"), "--emulator", str(fleet), "--out", str(plan_file)
    )
    assert code == 0, err
    code, out, _ = run_cli("show", str(plan_file), "--format", "json")
    assert code == 0 and out == plan_file.read_text()
    data = json.loads(out)
    assert "kind" not in data and data["region"] == "ap-guangzhou"


def test_fresh_apply_of_two_regions_after_one_confirmation(two_regions: tuple[Path, Path]) -> None:
    folder, fleet = two_regions
    # Without a terminal there is nobody to confirm: nothing is unbound in either region.
    before = FleetState.from_file(fleet, persist=False)
    code, _, err = run_cli("apply", str(folder), "--emulator", str(fleet))
    assert code == 1 and "confirmation" in err
    after = FleetState.from_file(fleet, persist=False)
    assert all(after.bindings(r) == before.bindings(r) for r in ("ap-guangzhou", "ap-shanghai"))

    code, out, err = run_cli(
        "apply", str(folder), "--emulator", str(fleet), "--auto-approve", "--format", "json"
    )
    assert code in (0, 3), out + err
    assert "cvmkeys plan for ap-guangzhou" in err and "cvmkeys plan for ap-shanghai" in err  # shown first
    document = json.loads(out)
    assert document["kind"] == "cvmkeys-result-set"
    assert [r["region"] for r in document["results"]] == ["ap-guangzhou", "ap-shanghai"]
    assert document["results"][1]["summary"]["done"] == 2
    code, out, _ = run_cli("plan", str(folder), "--emulator", str(fleet), "--format", "json")
    assert code == 0, out  # both converged: nothing left to unbind (ap-guangzhou keeps its blocked)
    assert [_ready(p) for p in json.loads(out)["plans"]] == [set(), set()]


def test_the_markdown_of_several_regions_shares_one_comment(
    two_regions: tuple[Path, Path], tmp_path: Path
) -> None:
    from reconciler.operations import read_plans
    from reconciler.render.plan_set import render_plans_markdown

    folder, fleet = two_regions
    plan_file = tmp_path / "plan.json"
    assert run_cli("plan", str(folder), "--emulator", str(fleet), "--out", str(plan_file))[0] == 0
    plans = read_plans(plan_file)
    whole = render_plans_markdown(plans)
    for limit in (len(whole) - 1, len(whole) * 2 // 3, 2_500):
        text = render_plans_markdown(plans, max_chars=limit)
        assert len(text) <= limit
        assert "`ap-guangzhou`" in text and "`ap-shanghai`" in text


def test_a_plan_set_edited_or_reshuffled_is_refused(two_regions: tuple[Path, Path], tmp_path: Path) -> None:
    from reconciler.core.document import canonical_digest

    folder, fleet = two_regions
    plan_file = tmp_path / "plan.json"
    assert run_cli("plan", str(folder), "--emulator", str(fleet), "--out", str(plan_file))[0] == 0
    data = json.loads(plan_file.read_text())

    dropped = dict(data, plans=data["plans"][:1])  # one region dropped: the envelope's digest says so
    (tmp_path / "dropped.json").write_text(json.dumps(dropped))
    code, _, err = run_cli("show", str(tmp_path / "dropped.json"))
    assert code == 1 and "integrity digest mismatch" in err

    # The same region twice, with a recomputed envelope digest: refused all the same.
    twice = dict(data, plans=[data["plans"][1], data["plans"][1]])
    twice["integrity"] = {"algorithm": "sha256", "digest": canonical_digest(twice)}
    (tmp_path / "twice.json").write_text(json.dumps(twice))
    code, _, err = run_cli("apply", str(tmp_path / "twice.json"))
    assert code == 1 and "each region once" in err
