"""apply under injected faults (deterministic seeds), over both CVM APIs: the result is an honest
record of what happened, nothing outside the plan is touched, and a re-run converges. 3.0 adds its
own faults (InternalError on a mutating call, lost answers, the latest operation lagging the call).
Also the CLI's apply guards: confirmation, safety, detailed exit codes, JSON results, Ctrl-C."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from support import UNBIND, emulator_client, live_state, mutated_pairs, run_cli, saved_plan

from bench.fleetgen import SECRET_ID, SECRET_KEY, generate, write
from reconciler.cloud.base import CloudClient
from reconciler.cloud.observe import observe_for_plan
from reconciler.core.plan import build_plan
from reconciler.desired.loader import load_paths
from reconciler.emulator.app import EmulatorApp
from reconciler.emulator.faults import FaultProfile
from reconciler.emulator.server import serve_in_thread
from reconciler.emulator.state import FleetState
from reconciler.execute.executor import ExecOptions, Executor
from reconciler.model import Outcome, Plan


def _world(
    tmp_path: Path, faults: FaultProfile | None, seed: int = 5, api: str = "2.0"
) -> tuple[FleetState, CloudClient, Plan]:
    gen = generate(150, 10, seed=seed, remove_fraction=0.4)
    state = FleetState.from_data(gen.fleet)
    client = emulator_client(
        EmulatorApp(state, faults=faults),
        gen.region,
        api,
        sleep=lambda s: None,
    )
    path = tmp_path / "bindings.yaml"
    path.write_text(gen.desired_text)
    desired = load_paths([path]).by_region[gen.region]
    # Plan on a fault-free view, as a reviewer would have seen it.
    clean = emulator_client(EmulatorApp(state), gen.region, api)
    plan = build_plan(desired, observe_for_plan(clean, desired), endpoint="test", api=client.api)
    return state, client, plan


def _faults(kind: str, api: str) -> FaultProfile:
    """The fault profile ``kind`` aimed at ``api``'s unbind action (2.0 has partial success, 3.0
    the latest operation lagging the call; each kind is tried where it exists)."""
    unbind = frozenset({UNBIND[api]})
    return {
        "error": FaultProfile(seed=1, error_rate=0.5, actions=unbind),
        "http": FaultProfile(seed=2, http_error_rate=0.5, actions=unbind),
        "drop": FaultProfile(seed=3, drop_rate=0.5, actions=unbind),
        "partial": FaultProfile(seed=4, partial_rate=0.7, actions=unbind),
        "lost": FaultProfile(seed=5, lost_response_rate=0.7, actions=unbind),
        "lag": FaultProfile(seed=8, lag_rate=0.7, lag_seconds=0.2, actions=unbind),
        "reads": FaultProfile(
            seed=6,
            error_rate=0.3,
            http_error_rate=0.2,
            actions=frozenset({"DescribeKeyPairs", "DescribeInstances"}),
        ),
        "mixed": FaultProfile(
            seed=7,
            throttle_rate=0.1,
            error_rate=0.1,
            drop_rate=0.1,
            partial_rate=0.1 if api == "2.0" else 0.0,
            lost_response_rate=0.1,
            lag_rate=0.1 if api == "3.0" else 0.0,
            lag_seconds=0.2,
        ),
    }[kind]


FAULT_CASES = [
    (api, kind)
    for api in ("2.0", "3.0")
    for kind in ("error", "http", "drop", "lost", "reads", "mixed", "partial" if api == "2.0" else "lag")
]


@pytest.mark.parametrize(("api", "kind"), FAULT_CASES)
def test_apply_under_faults_reports_the_truth_and_converges(api: str, kind: str, tmp_path: Path) -> None:
    state, client, plan = _world(tmp_path, _faults(kind, api), api=api)
    planned = {(c.key_id, c.instance_id) for c in plan.ready_changes}
    before = state.bindings(plan.region)
    total_done: set[tuple[str, str]] = set()
    for _run in range(4):  # re-run the remaining work, as an operator would
        result = Executor(client, plan, options=ExecOptions(max_attempts=3, poll_initial=0)).run()
        live = state.bindings(plan.region)
        for r in result.results:
            if r.outcome is Outcome.DONE:
                assert (r.key_id, r.instance_id) not in live, r
                total_done.add((r.key_id, r.instance_id))
            elif r.outcome is Outcome.FAILED:
                assert (r.key_id, r.instance_id) in live, r  # "failed" means it is still there
                assert r.reason
        # Every mutation the emulator carried out was in the approved plan.
        assert {pair for m in state.mutations for pair in mutated_pairs(m)} <= planned
        if result.count(Outcome.FAILED) == 0:
            break
        remaining = {(r.key_id, r.instance_id) for r in result.results if r.outcome is Outcome.FAILED}
        plan = _replan_subset(plan, remaining)
    assert before - state.bindings(plan.region) == planned
    assert total_done == planned


def _replan_subset(plan: Plan, remaining: set[tuple[str, str]]) -> Plan:
    import dataclasses

    from reconciler.core.batching import make_batches

    changes = tuple(c for c in plan.changes if (c.key_id, c.instance_id) in remaining)
    return dataclasses.replace(plan, changes=changes, batches=make_batches(changes, api=plan.api))


def test_partial_success_is_observed_not_guessed(tmp_path: Path) -> None:
    state, client, plan = _world(
        tmp_path, FaultProfile(seed=11, partial_rate=1.0, actions=frozenset({"UnBindInstanceKey"}))
    )
    result = Executor(client, plan, options=ExecOptions(max_attempts=1, poll_initial=0)).run()
    live = state.bindings(plan.region)
    done = {(r.key_id, r.instance_id) for r in result.results if r.outcome is Outcome.DONE}
    failed = [r for r in result.results if r.outcome is Outcome.FAILED]
    assert done and failed  # some instances of each call changed, the rest did not
    assert not done & live and all((r.key_id, r.instance_id) in live for r in failed)
    assert all(r.api_code == 5400 for r in failed)


# --------------------------------------------------------------------------- CLI guards


cli = run_cli


def test_apply_without_a_terminal_or_auto_approve_stops_and_changes_nothing(
    example: tuple[Path, Path],
) -> None:
    desired, fleet = example
    before = live_state(fleet)
    code, _, err = cli("apply", str(desired), "--emulator", str(fleet))
    assert code == 1 and "not a terminal" in err and "--auto-approve" in err
    assert live_state(fleet) == before


def test_fresh_apply_with_auto_approve_and_json_result(example: tuple[Path, Path]) -> None:
    desired, fleet = example
    code, out, _ = cli("apply", str(desired), "--emulator", str(fleet), "--auto-approve", "--format", "json")
    assert code == 3  # the example keeps a blocked change (db-1 is running)
    data = json.loads(out)
    outcomes = {r["outcome"] for r in data["results"]}
    assert outcomes == {"done", "blocked", "protected", "unchangeable"}


def test_unsafe_plan_is_shown_and_needs_force(example: tuple[Path, Path], tmp_path: Path) -> None:
    desired, fleet = example
    plan_file = tmp_path / "p.json"
    code, out, _ = cli(
        "plan", str(desired), "--emulator", str(fleet), "--max-unbinds", "1", "--out", str(plan_file)
    )
    assert code == 0 and "UNSAFE" in out and "3 unbinds is over max_unbinds 1" in out
    before = live_state(fleet)
    code, _, err = cli("apply", str(plan_file))
    assert code == 1 and "UNSAFE" in err and "--force" in err
    assert live_state(fleet) == before
    code, _, _ = cli("apply", str(plan_file), "--force")
    assert code == 3 and live_state(fleet) != before


def test_detailed_exitcode_and_show_round_trip(example: tuple[Path, Path], tmp_path: Path) -> None:
    desired, fleet = example
    plan_file = tmp_path / "p.json"
    code, planned_text, _ = cli(
        "plan", str(desired), "--emulator", str(fleet), "--detailed-exitcode", "--out", str(plan_file)
    )
    assert code == 2
    code, shown, _ = cli("show", str(plan_file))
    assert code == 0 and shown == planned_text
    code, as_json, _ = cli("show", str(plan_file), "--format", "json")
    assert json.loads(as_json) == json.loads(plan_file.read_text())
    # After apply only blocked/protected changes remain: still "changes present" (2).
    cli("apply", str(plan_file))
    code, out, _ = cli("plan", str(desired), "--emulator", str(fleet), "--detailed-exitcode")
    assert code == 2 and "0 to unbind" in out


def test_detailed_exitcode_ignores_unchangeable_windows_bindings(
    example: tuple[Path, Path], tmp_path: Path
) -> None:
    """A Windows binding no API can remove is not drift anyone can act on: exit 0, not 2."""
    _, fleet = example
    windows_only = tmp_path / "win.yaml"
    # skey-8x9y0z12 allowed everywhere it is bound except the Windows instance ins-7w7w7w7w.
    windows_only.write_text(
        "version: 1\nregion: ap-guangzhou\nkeys:\n  skey-8x9y0z12:\n"
        "    instances: [ins-1a2b3c4d, ins-9c8d7e6f, ins-99999999]\n"
    )
    code, out, _ = cli("plan", str(windows_only), "--emulator", str(fleet), "--detailed-exitcode")
    assert "1 unchangeable" in out and "0 to unbind" in out
    assert code == 0


def test_plan_makes_the_minimum_number_of_calls(tmp_path: Path) -> None:
    gen = generate(900, 260, seed=9, remove_fraction=0.2, scope="account")
    state = FleetState.from_data(gen.fleet)
    emulator = EmulatorApp(state)
    client = emulator_client(emulator, gen.region)
    path = tmp_path / "b.yaml"
    path.write_text(gen.desired_text)
    desired = load_paths([path]).by_region[gen.region]
    observed = observe_for_plan(client, desired)
    from reconciler.core.diff import instances_needed

    needed = instances_needed(desired, observed.keys)
    assert emulator.request_counts["DescribeKeyPairs"] == -(-260 // 100)
    assert emulator.request_counts["DescribeInstances"] == -(-len(needed) // 100)
    assert set(emulator.request_counts) == {"DescribeKeyPairs", "DescribeInstances"}


def test_ctrl_c_stops_new_calls_reports_and_exits_130(tmp_path: Path) -> None:
    gen = generate(400, 40, seed=12, remove_fraction=0.6)
    fleet, desired = write(gen, tmp_path)
    state = FleetState.from_file(fleet, persist=True, op_seconds=0.3)
    env = {
        **os.environ,
        "NO_COLOR": "1",
        "TENCENTCLOUD_SECRET_ID": SECRET_ID,
        "TENCENTCLOUD_SECRET_KEY": SECRET_KEY,
    }
    with serve_in_thread(EmulatorApp(state)) as server:
        plan_file = tmp_path / "p.json"
        cmd = [sys.executable, "-m", "reconciler"]
        subprocess.run(
            [*cmd, "plan", str(desired), "--endpoint", server.url, "--out", str(plan_file)],
            check=True,
            env=env,
            capture_output=True,
        )
        proc = subprocess.Popen(
            [
                *cmd,
                "apply",
                str(plan_file),
                "--endpoint",
                server.url,
                "--parallelism",
                "1",
                "--rate-limit",
                "5",
            ],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        deadline = time.monotonic() + 20
        while not state.mutations and time.monotonic() < deadline:
            time.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 130, out + err
        assert "Traceback" not in out + err
        assert "not-attempted" in out or "not attempted" in out
        # A later plan shows exactly what remains.
        done = {(m.key_id, i) for m in state.mutations for i in m.instance_ids}
        planned = {
            (c["key_id"], c["instance_id"])
            for c in json.loads(plan_file.read_text())["changes"]
            if c["status"] == "ready"
        }
        assert done < planned
        again = subprocess.run(
            [*cmd, "plan", str(desired), "--endpoint", server.url, "--format", "json"],
            env=env,
            capture_output=True,
            text=True,
            check=True,
        )
        remaining = {
            (c["key_id"], c["instance_id"])
            for c in json.loads(again.stdout)["changes"]
            if c["status"] == "ready"
        }
        assert remaining == planned - done


def test_a_read_that_fails_for_good_stops_apply_with_an_honest_record(tmp_path: Path, api: str) -> None:
    broken_polls = FaultProfile(seed=1, error_rate=1.0, actions=frozenset({"DescribeInstances"}))
    state, client, plan = _world(tmp_path, broken_polls, seed=8, api=api)
    assert plan.summary.waves >= 2
    result = Executor(client, plan, options=ExecOptions(poll_initial=0)).run()
    codes = ("6000", "6200") if api == "2.0" else ("InternalError", "ResourceUnavailable")
    assert any(code in result.stopped_reason for code in codes), result.stopped_reason
    live = state.bindings(plan.region)
    by_outcome: dict[Outcome, list[tuple[str, str]]] = {}
    for r in result.results:
        by_outcome.setdefault(r.outcome, []).append((r.key_id, r.instance_id))
        if r.outcome is Outcome.DONE:
            assert "not verified" in r.reason
    assert by_outcome[Outcome.DONE] and not set(by_outcome[Outcome.DONE]) & live  # wave 1 went through
    assert by_outcome[Outcome.NOT_ATTEMPTED] and set(by_outcome[Outcome.NOT_ATTEMPTED]) <= live
    assert {pair for m in state.mutations for pair in mutated_pairs(m)} == set(by_outcome[Outcome.DONE])


def test_safety_flags_also_guard_a_saved_plan(example: tuple[Path, Path], tmp_path: Path) -> None:
    fleet = example[1]
    plan_file = saved_plan(example, tmp_path / "p.json")
    before = live_state(fleet)
    code, _, err = cli("apply", str(plan_file), "--max-unbinds", "1")
    assert code == 1 and "3 unbinds is over max_unbinds 1" in err
    assert live_state(fleet) == before


def test_names_from_the_cloud_are_never_read_as_markup(example: tuple[Path, Path]) -> None:
    desired, fleet = example
    fleet.write_text(fleet.read_text().replace("name: batch-1", "name: 'batch[/x]-1 [bold red]'"))
    code, out, err = cli("apply", str(desired), "--emulator", str(fleet), "--auto-approve")
    assert code == 3, err
    assert "batch[/x]-1 [bold red]" in err and "internal error" not in err  # the plan, shown as is
    assert "batch[/x]-1 [bold red]" in out


def test_a_flow_style_desired_file_is_not_taken_for_a_plan(
    example: tuple[Path, Path], tmp_path: Path
) -> None:
    _, fleet = example
    flow = tmp_path / "flow.yaml"
    flow.write_text("{version: 1, region: gz, keys: {skey-8x9y0z12: {instances: []}}}\n")
    code, out, err = cli("apply", str(flow), "--emulator", str(fleet), "--auto-approve")
    assert code == 3, err  # planned and applied; two blocked changes remain
    assert "Apply complete" in out


def test_a_saved_plan_is_sent_only_where_the_user_says(example: tuple[Path, Path], tmp_path: Path) -> None:
    plan_file = saved_plan(example, tmp_path / "p.json")
    from reconciler.core.document import dump_plan
    from reconciler.planfile import load_plan

    plan = load_plan(plan_file.read_text(), str(plan_file))
    import dataclasses

    plan_file.write_text(
        dump_plan(dataclasses.replace(plan, endpoint="https://collector.example/v2/index.php"))
    )
    code, _, err = cli("apply", str(plan_file))
    assert code == 1 and "--endpoint https://collector.example/v2/index.php" in err


def test_real_credentials_in_the_environment_do_not_break_the_emulator(example: tuple[Path, Path]) -> None:
    desired, fleet = example
    env = {
        "NO_COLOR": "1",
        "TENCENTCLOUD_SECRET_ID": "AKIDREALCLOUD00000000000000000000000",
        "TENCENTCLOUD_SECRET_KEY": "real-cloud-secret",
    }
    code, out, err = cli("plan", str(desired), "--emulator", str(fleet), env=env)
    assert code == 0, err
    assert "Plan: 3 to unbind" in out and "real-cloud-secret" not in out + err


def test_3_0_lag_longer_than_the_allowance_is_settled_by_observing_the_binding(tmp_path: Path) -> None:
    # The latest operation keeps showing the previous one for longer than cvmkeys allows for:
    # the executor cannot tie the instance's state to its call, so it observes the bindings
    # themselves (all gone: done), and never sends a call twice.
    lagging = FaultProfile(seed=3, lag_rate=1.0, lag_seconds=0.5, actions=frozenset({UNBIND["3.0"]}))
    state, client, plan = _world(tmp_path, lagging, api="3.0")
    options = ExecOptions(poll_initial=0.02, lag_allowance=0.1)
    result = Executor(client, plan, options=options).run()
    assert result.count(Outcome.DONE) == len(plan.ready_changes) and result.count(Outcome.FAILED) == 0
    assert not {(c.key_id, c.instance_id) for c in plan.ready_changes} & state.bindings(plan.region)
    mutated = [pair for m in state.mutations for pair in mutated_pairs(m)]
    assert len(mutated) == len(set(mutated)) == len(plan.ready_changes)


def test_3_0_one_refused_instance_fails_alone_and_the_others_of_its_call_go_through(tmp_path: Path) -> None:
    # DisassociateInstancesKeyPairs fails as a whole when one instance is refused (here: stopped
    # with STOP_CHARGING, UnsupportedOperation.StoppedModeStopCharging, kind BLOCKED). The
    # instance looks STOPPED, so nothing observable says which one: the executor retries the
    # call's instances one a call, and only the refused one fails, with the API's message.
    ids = ["ins-aaaaaaa1", "ins-aaaaaaa2", "ins-aaaaaaa3"]
    fleet = {
        "credentials": [{"secret_id": SECRET_ID, "secret_key": SECRET_KEY}],
        "regions": {
            "ap-guangzhou": {
                "instances": [{"id": iid, "name": iid[-1], "os": "centos", "status": 4} for iid in ids],
                "keys": [{"id": "skey-kkkkkkk1", "name": "k1", "bound": ids}],
            }
        },
    }
    state = FleetState.from_data(fleet)
    state.set_instance_status("ap-guangzhou", ids[1], 2)
    state.stop_instances3("ap-guangzhou", [ids[1]], stopped_mode="STOP_CHARGING")
    client = emulator_client(EmulatorApp(state), "gz", "3.0")
    path = tmp_path / "bindings.yaml"
    path.write_text("version: 1\nregion: gz\nkeys:\n  skey-kkkkkkk1: {instances: []}\n")
    desired = load_paths([path]).by_region["ap-guangzhou"]
    plan = build_plan(desired, observe_for_plan(client, desired), endpoint="test", api=client.api)
    assert [(b.key_ids, b.instance_ids) for b in plan.batches] == [(("skey-kkkkkkk1",), tuple(ids))]
    result = Executor(client, plan, options=ExecOptions(poll_initial=0)).run()
    outcome = {r.instance_id: r for r in result.results}
    assert outcome[ids[0]].outcome is outcome[ids[2]].outcome is Outcome.DONE
    refused = outcome[ids[1]]
    assert refused.outcome is Outcome.FAILED and "StoppedModeStopCharging" in refused.reason
    assert state.bindings("ap-guangzhou") == {("skey-kkkkkkk1", ids[1])}
    # Which instance was refused is only in the message (never parsed): each is retried alone.
    sent = sorted(m.instance_ids for m in state.mutations if m.action == UNBIND["3.0"])
    assert sent == [(ids[0],), (ids[2],)]


@pytest.mark.parametrize("api", ["2.0", "3.0"])
def test_a_throttled_call_is_reported_as_not_carried_out(api: str, tmp_path: Path) -> None:
    """Refused for the rate limit, a call did nothing: apply says so and sends it again, rather
    than "checking what happened" as after a call that may have taken effect (QA)."""
    unbind = frozenset({UNBIND[api]})
    state, _, plan = _world(tmp_path, None, api=api)
    throttling = FaultProfile(seed=6, throttle_rate=0.6, actions=unbind)
    client = emulator_client(EmulatorApp(state, faults=throttling), plan.region, api, max_attempts=1)
    messages: list[str] = []
    options = ExecOptions(max_attempts=5, poll_initial=0)
    result = Executor(client, plan, options=options, on_event=lambda e: messages.append(e.message)).run()
    refused = [m for m in messages if "not carried out; retried while attempts remain" in m]
    assert refused, "the emulator never throttled: the test proves nothing"
    assert not any("checking what happened" in m for m in messages)
    assert result.count(Outcome.DONE) == len(plan.ready_changes)
