"""A saved plan made from a folder is refused when a desired-state file of its region was added
to that folder since (plan format 3.1 records the paths plan was given): the new file may
protect or allow bindings the plan unbinds. Through the real CLI and the in-process emulator."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from support import run_cli

from reconciler.emulator.state import FleetState

REGION, SHANGHAI = "ap-guangzhou", "ap-shanghai"
OLD, SPARE = "skey-01d01d01", "skey-5pare5pa"
STOPPED = ["ins-s0000001", "ins-s0000002"]


def _fleet(tmp_path: Path) -> Path:
    fleet = tmp_path / "fleet.json"
    instances = [{"id": i, "name": i[-4:], "os": "centos7.6x86_64", "status": 4} for i in STOPPED]
    keys = [{"id": OLD, "name": "old", "bound": STOPPED}, {"id": SPARE, "name": "spare", "bound": STOPPED}]
    # The same fleet in a second region, for plan sets.
    regions = {name: {"instances": instances, "keys": keys} for name in (REGION, SHANGHAI)}
    data = {
        "credentials": [{"secret_id": "AKIDADDED000000000000000000000000000", "secret_key": "added"}],
        "regions": regions,
    }
    fleet.write_text(json.dumps(data), encoding="utf-8")
    return fleet


def _desired(path: Path, key_id: str, allowed: list[str], region: str = REGION) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    keys = f"keys:\n  {key_id}:\n    instances: {json.dumps(allowed)}\n"
    safety = "safety:\n  max_unbind_percent: 100\n"
    path.write_text(f"version: 1\nregion: {region}\nscope: keys\n{keys}{safety}", encoding="utf-8")
    return path


def _bindings(fleet: Path, region: str = REGION) -> set[tuple[str, str]]:
    return FleetState.from_file(fleet, persist=False).bindings(region)


def _planned(tmp_path: Path, *given: Path) -> tuple[Path, Path]:
    """The fleet and a saved plan of ``given`` (every file takes OLD off both instances)."""
    fleet = _fleet(tmp_path)
    plan = tmp_path / "plan.json"
    code, _, err = run_cli("plan", *map(str, given), "--emulator", str(fleet), "--out", str(plan))
    assert code == 0, err
    return fleet, plan


def test_a_file_of_the_region_added_to_the_folder_refuses_the_plan(tmp_path: Path) -> None:
    folder = tmp_path / "desired"
    _desired(folder / "a.yaml", OLD, [])
    fleet, plan = _planned(tmp_path, folder)
    assert json.loads(plan.read_text())["inputs"] == [str(folder)]
    before = _bindings(fleet)
    # Merged after the plan: a second team's file for the same region.
    _desired(folder / "team-b.yaml", SPARE, STOPPED)
    code, _, err = run_cli("apply", str(plan))
    assert code == 1
    assert f"{folder / 'team-b.yaml'} was added since the plan was made" in err
    assert "--ignore-changed-sources" in err
    assert "directory plan ran in" not in err  # the file is there: apply runs where plan did
    assert _bindings(fleet) == before  # refused before any call that changes anything
    # The reviewer may still apply the plan as reviewed.
    assert run_cli("apply", str(plan), "--ignore-changed-sources")[0] == 0
    assert _bindings(fleet) == {(SPARE, i) for i in STOPPED}


def test_a_broken_file_added_refuses_and_a_file_of_another_region_does_not(tmp_path: Path) -> None:
    folder = tmp_path / "desired"
    _desired(folder / "a.yaml", OLD, [])
    fleet, plan = _planned(tmp_path, folder)
    broken = folder / "broken.yaml"
    # Broken after its region: still this region's file, so added.
    broken.write_text("version: 1\nregion: ap-guangzhou\nscope: [\n", encoding="utf-8")
    code, _, err = run_cli("apply", str(plan))
    assert code == 1 and "broken.yaml was added since the plan was made" in err
    # Broken before any region: it might be this region's.
    broken.write_text("version: [1\nregion: ap-guangzhou\n", encoding="utf-8")
    code, _, err = run_cli("apply", str(plan))
    assert code == 1 and "broken.yaml:" in err and "which region it is for is unknown" in err
    broken.unlink()
    # Another region's file is another plan's business, even one plan would refuse (an ID that
    # is not one, broken YAML after its region): this region's files are as they were.
    _desired(folder / "shanghai.yaml", OLD, ["ins-NOT-AN-ID"], region=SHANGHAI)
    (folder / "shanghai-b.yaml").write_text(f"version: 1\nregion: {SHANGHAI}\nscope: [\n", encoding="utf-8")
    code, _, err = run_cli("apply", str(plan))
    assert code == 0, err
    assert _bindings(fleet) == {(SPARE, i) for i in STOPPED}


def test_a_plan_of_files_searches_no_folder(tmp_path: Path) -> None:
    """Named files cannot gain a neighbour: a file added beside them is not the plan's input."""
    folder = tmp_path / "desired"
    named = _desired(folder / "a.yaml", OLD, [])
    fleet, plan = _planned(tmp_path, named)
    _desired(folder / "team-b.yaml", SPARE, STOPPED)
    code, _, err = run_cli("apply", str(plan))
    assert code == 0, err
    assert _bindings(fleet) == {(SPARE, i) for i in STOPPED}


def test_a_plan_set_names_the_region_a_file_was_added_to_and_applies_nothing(tmp_path: Path) -> None:
    folder = tmp_path / "desired"
    _desired(folder / "gz.yaml", OLD, [])
    _desired(folder / "sh.yaml", OLD, [], region=SHANGHAI)
    fleet, plan = _planned(tmp_path, folder)
    assert json.loads(plan.read_text())["kind"] == "cvmkeys-plan-set"
    _desired(folder / "sh-team-b.yaml", SPARE, STOPPED, region=SHANGHAI)
    code, _, err = run_cli("apply", str(plan))
    assert code == 1 and f"{SHANGHAI}:" in err and "sh-team-b.yaml was added since the plan was made" in err
    everything = {(k, i) for k in (OLD, SPARE) for i in STOPPED}
    assert _bindings(fleet) == everything and _bindings(fleet, SHANGHAI) == everything  # nothing sent
    # --region picks ap-guangzhou's plan, whose files are as they were.
    assert run_cli("apply", str(plan), "--region", REGION)[0] == 0
    assert _bindings(fleet) == {(SPARE, i) for i in STOPPED}


@pytest.mark.parametrize(
    ("name", "text", "said"),
    [
        ("twice.yaml", f"version: 1\nregion: {SHANGHAI}\nregion: {REGION}\n", "region is given twice"),
        ("mixed.yaml", f"version: 1\nregion: {REGION}\nregions: {{}}\ncredentials: []\n", "was added"),
        ("short.yaml", "version: 1\nregion: gz\nkeys: {}\n", "was added"),
        ("listed.yaml", "version: 1\nregion: [ap-guangzhou]\n", "region is not text"),
        ("none.yaml", "version: 1\nkeys: {}\n", "no top-level region"),
    ],
)
def test_files_plan_would_refuse_or_read_for_this_region_refuse_apply(
    tmp_path: Path, name: str, text: str, said: str
) -> None:
    """What review found passing: a region given twice (YAML keeps the last), fleet keys beside
    a region (still a desired-state file), a short code; and what cannot be told."""
    folder = tmp_path / "desired"
    _desired(folder / "a.yaml", OLD, [])
    fleet, plan = _planned(tmp_path, folder)
    (folder / name).write_text(text, encoding="utf-8")
    code, _, err = run_cli("apply", str(plan))
    assert code == 1 and name in err and said in err
    assert _bindings(fleet) == {(k, i) for k in (OLD, SPARE) for i in STOPPED}  # nothing sent


def test_a_link_out_of_the_folder_refuses_as_plan_would(tmp_path: Path) -> None:
    folder = tmp_path / "desired"
    _desired(folder / "a.yaml", OLD, [])
    fleet, plan = _planned(tmp_path, folder)
    outside = _desired(tmp_path / "elsewhere" / "b.yaml", SPARE, STOPPED)
    (folder / "b.yaml").symlink_to(outside)
    code, _, err = run_cli("apply", str(plan))
    assert code == 1 and "b.yaml" in err and "outside" in err
    assert _bindings(fleet) == {(k, i) for k in (OLD, SPARE) for i in STOPPED}


def test_a_plan_saved_inside_the_folder_it_planned_is_not_a_desired_state_file(tmp_path: Path) -> None:
    """``plan d --out d/plan.yaml``: the plan (JSON, so YAML, with a top-level region) was read
    as a new desired-state file by the next apply and plan (QA); folder searches skip it."""
    folder = tmp_path / "desired"
    _desired(folder / "a.yaml", OLD, [])
    fleet = _fleet(tmp_path)
    plan = folder / "plan.yaml"
    code, _, err = run_cli("plan", str(folder), "--emulator", str(fleet), "--out", str(plan))
    assert code == 0, err
    code, _, err = run_cli("apply", str(plan))
    assert code == 0, err
    code, out, err = run_cli("plan", str(folder), "--emulator", str(fleet))
    assert code == 0 and "No changes" in out, out + err
    code, out, err = run_cli("plan", str(folder), "--emulator", str(plan))
    assert code == 1 and "this is a cvmkeys plan file, not an emulator fleet file" in out + err
