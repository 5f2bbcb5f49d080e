"""What plan tells a reviewer to run next, and apply's refusal of an unnamed endpoint, name the
real file and the endpoint a served plan needs (found by QA: the note said ``cvmkeys apply
FILE`` for a plan apply then refused without ``--endpoint``). Through the CLI, against
``cvmkeys emulator serve`` over HTTP."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from support import run_cli, serve_fleet, stop_served

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def test_the_saved_note_and_the_refusal_name_the_file_and_the_endpoint(tmp_path: Path) -> None:
    fleet = tmp_path / "fleet.yaml"
    shutil.copy(EXAMPLES / "fleet.yaml", fleet)
    process, em = serve_fleet(fleet)
    try:
        endpoint = em.url.removesuffix("v2/index.php")  # the 3.0 face, at /
        env = {"TENCENTCLOUD_SECRET_ID": em.secret_id, "TENCENTCLOUD_SECRET_KEY": em.secret_key}
        plan = tmp_path / "p.json"
        desired = str(EXAMPLES / "bindings.yaml")
        code, _, err = run_cli("plan", desired, "--endpoint", endpoint, "--out", str(plan), env=env)
        assert code == 0, err
        told = f"To apply exactly this plan: cvmkeys apply {plan} --endpoint {endpoint}"
        assert told in err
        code, _, err = run_cli("apply", str(plan), env=env)
        assert code == 1 and f"cvmkeys apply {plan} --endpoint {endpoint}" in err
        assert "PLANFILE" not in err
        # The command it named is the one that works.
        code, _, err = run_cli("apply", str(plan), "--endpoint", endpoint, env=env)
        assert code in (0, 3), err
    finally:
        stop_served(process)


def test_a_plan_of_the_in_process_emulator_needs_no_endpoint(tmp_path: Path) -> None:
    """... and the command is quoted for the shell it will be pasted into."""
    fleet = tmp_path / "fleet.yaml"
    shutil.copy(EXAMPLES / "fleet.yaml", fleet)
    plan = tmp_path / "my plan.json"
    desired = str(EXAMPLES / "bindings.yaml")
    code, _, err = run_cli("plan", desired, "--emulator", str(fleet), "--out", str(plan))
    assert code == 0, err
    assert err.rstrip().endswith(f"To apply exactly this plan: cvmkeys apply '{plan}'")
    # The example's Windows instance, counted in the summary as in the Plan line (format 3.1).
    assert json.loads(plan.read_text())["summary"]["unchangeable"] == 1


def test_a_file_of_the_wrong_kind_is_named_for_what_it_is(tmp_path: Path) -> None:
    """``show`` of a desired-state or fleet file, ``--emulator`` of a desired-state file: the
    error says which kind of file it is and what to give instead (QA found them generic)."""
    desired, fleet = EXAMPLES / "bindings.yaml", EXAMPLES / "fleet.yaml"
    code, _, err = run_cli("show", str(desired))
    assert code == 1 and "this is a desired-state file, not a plan file" in err
    assert f"cvmkeys plan {desired} --out plan.json" in err
    code, out, err = run_cli("apply", str(fleet), "--auto-approve")
    assert code == 1 and "emulator fleet file" in out + err  # given as the desired state
    code, _, err = run_cli("show", str(fleet))
    assert code == 1 and "this is an emulator fleet file, not a plan file" in err and "--emulator" in err
    code, out, err = run_cli("plan", str(desired), "--emulator", str(desired))
    assert code == 1 and "not an emulator fleet file" in out + err
    workflow = EXAMPLES / "ci" / "github" / "cvmkeys-plan.yml"
    code, _, err = run_cli("show", str(workflow))
    assert code == 1 and "this is a YAML file, not a plan file" in err


def test_a_wrong_fleet_for_two_regions_at_once_says_why_every_time(tmp_path: Path) -> None:
    """Two regions plan in parallel, each opening the emulator state: a fixture that does not
    load once made one remove the new state file under the other ("disk I/O error", QA)."""
    folder = tmp_path / "d"
    folder.mkdir()
    shutil.copy(EXAMPLES / "bindings.yaml", folder / "gz.yaml")
    shutil.copy(EXAMPLES / "instances-scope.yaml", folder / "sh.yaml")
    empty = tmp_path / "empty.yaml"
    empty.write_text("", encoding="utf-8")
    for wrong, said in [(folder / "gz.yaml", "not an emulator fleet file"), (empty, "empty")] * 5:
        code, out, err = run_cli("plan", str(folder), "--emulator", str(wrong))
        assert code == 1 and said in out + err and "disk I/O" not in out + err
        assert not list(tmp_path.rglob("*.state.sqlite*"))  # nothing made for a fixture that does not load


def test_the_printed_command_survives_pasting() -> None:
    from reconciler.connect import apply_command

    assert apply_command("-dash.json", []) == "cvmkeys apply ./-dash.json"  # not read as an option
    assert apply_command("my plan.json", []) == "cvmkeys apply 'my plan.json'"
    assert apply_command("/abs/-x.json", []) == "cvmkeys apply /abs/-x.json"
