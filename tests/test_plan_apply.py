"""plan and apply end to end, over both CVM APIs (the ``api`` fixture): the real CLI, the real
client, the emulator over in-process HTTP or a real socket, real signatures (the emulator verifies
every one: 2.0's HmacSHA256, 3.0's TC3-HMAC-SHA256). Checks convergence, the mutation log, waves,
throttling, stale and edited plans, safety, confirmation, that 3.0 makes no more mutating calls
than 2.0, and that the secret key never leaks."""

from __future__ import annotations

import json
import shutil
from collections import Counter
from pathlib import Path

import pytest
from support import THROTTLED, UNBIND, FakeTime, emulator_client, live_state, mutated_pairs, run_cli

from bench.fleetgen import SECRET_ID, SECRET_KEY, generate, write
from reconciler.cloud.base import AttemptRecord, CloudClient
from reconciler.cloud.observe import observe_for_plan
from reconciler.core.document import canonical_digest
from reconciler.core.plan import build_plan
from reconciler.desired.loader import load_paths
from reconciler.emulator.app import EmulatorApp
from reconciler.emulator.server import serve_in_thread
from reconciler.emulator.state import FleetState
from reconciler.execute.executor import ExecOptions, Executor
from reconciler.model import ChangeStatus, Desired, Outcome

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


cli = run_cli


def test_example_plan_apply_plan_converges(example: tuple[Path, Path], tmp_path: Path, api: str) -> None:
    desired, fleet = example
    out_file = str(tmp_path / "p.json")
    code, out, _ = cli("plan", str(desired), "--emulator", str(fleet), "--api", api, "--out", out_file)
    assert code == 0, out
    assert "Plan:" in out and "to unbind" in out and f"(CVM API {api})" in out
    assert "as        account 100000000001, qcs::cam::uin/100000000001:" in out  # who it ran as (STS)
    saved = json.loads((tmp_path / "p.json").read_text())
    assert saved["api"] == api and saved["caller"]["account_id"] == "100000000001"
    ready = {(c["key_id"], c["instance_id"]) for c in saved["changes"] if c["status"] == "ready"}
    assert ready, "the example should have something to unbind"

    code, out, err = cli("apply", str(tmp_path / "p.json"))
    assert code in (0, 3), out + err  # 3: blocked changes remain (the example has some)
    assert UNBIND[api] in out  # applied with the plan's own API
    live = FleetState.from_file(fleet, persist=False).bindings("ap-guangzhou")
    assert not ready & live

    code, out, _ = cli("plan", str(desired), "--emulator", str(fleet), "--api", api, "--format", "json")
    assert code == 0
    after = json.loads(out)
    assert [c for c in after["changes"] if c["status"] == "ready"] == []


@pytest.mark.parametrize("scope", ["keys", "instances", "account"])
@pytest.mark.parametrize("seed", [1, 2])
def test_generated_fleets_converge_and_mutations_are_exactly_the_plan(
    scope: str, seed: int, tmp_path: Path, api: str
) -> None:
    gen = generate(120, 12, seed=seed, remove_fraction=0.3, scope=scope)
    state = FleetState.from_data(gen.fleet)
    emulator = EmulatorApp(state)
    client = emulator_client(emulator, gen.region, api)
    path = tmp_path / "bindings.yaml"
    path.write_text(gen.desired_text)
    desired = load_paths([path]).by_region[gen.region]

    plan = build_plan(desired, observe_for_plan(client, desired), endpoint="test", api=client.api)
    result = Executor(client, plan).run()
    planned = {(c.key_id, c.instance_id) for c in plan.ready_changes}
    assert {(r.key_id, r.instance_id) for r in result.results if r.outcome is Outcome.DONE} == planned
    mutated = Counter(pair for m in state.mutations for pair in mutated_pairs(m))
    assert set(mutated) == planned and all(n == 1 for n in mutated.values())
    assert all(m.action == UNBIND[api] for m in state.mutations)

    # Nothing outside the scope, nothing protected, nothing allowed was touched.
    final = state.bindings(gen.region)
    assert gen.live - final == planned
    assert not planned & gen.allowed
    assert not {b for b in planned if b[1] in gen.protected_instances}

    again = build_plan(desired, observe_for_plan(client, desired), endpoint="test", api=client.api)
    assert again.ready_changes == ()
    assert {(c.key_id, c.instance_id) for c in again.changes} == {
        (c.key_id, c.instance_id) for c in plan.changes if c.status is not ChangeStatus.READY
    }


def _example_world(tmp_path: Path, scope: str = "keys") -> tuple[Path, Path]:
    gen = generate(60, 6, seed=7, remove_fraction=0.3, scope=scope)
    return write(gen, tmp_path)


@pytest.mark.parametrize("scope", ["keys", "instances", "account"])
def test_served_emulator_plan_apply_plan(tmp_path: Path, scope: str, api: str) -> None:
    fleet, desired = _example_world(tmp_path, scope)
    state = FleetState.from_file(fleet, persist=True)
    env = {"NO_COLOR": "1", "TENCENTCLOUD_SECRET_ID": SECRET_ID, "TENCENTCLOUD_SECRET_KEY": SECRET_KEY}
    with serve_in_thread(EmulatorApp(state)) as server:
        # 2.0 by its endpoint's path, 3.0 by the endpoint's root (the default API).
        url = server.url if api == "2.0" else server.url.removesuffix("v2/index.php")
        plan_out = str(tmp_path / "p.json")
        code, out, _ = cli("plan", str(desired), "--endpoint", url, "--out", plan_out, env=env)
        assert code == 0, out
        planned = {
            (c["key_id"], c["instance_id"])
            for c in json.loads((tmp_path / "p.json").read_text())["changes"]
            if c["status"] == "ready"
        }
        assert planned
        code, out, err = cli(
            "apply",
            str(tmp_path / "p.json"),
            "--endpoint",
            url,
            "--audit-log",
            str(tmp_path / "audit.jsonl"),
            env=env,
        )
        assert code in (0, 3), out + err
        mutated = [pair for m in state.mutations for pair in mutated_pairs(m)]
        assert sorted(mutated) == sorted(planned)  # exactly the plan, each binding once
        code, out, _ = cli("plan", str(desired), "--endpoint", url, "--format", "json", env=env)
        assert [c for c in json.loads(out)["changes"] if c["status"] == "ready"] == []
        assert json.loads(out)["api"] == api
    audit = [json.loads(line) for line in (tmp_path / "audit.jsonl").read_text().splitlines()]
    assert {"DescribeKeyPairs", "DescribeInstances", UNBIND[api]} <= {r["action"] for r in audit}
    for text in [out, err, (tmp_path / "p.json").read_text(), (tmp_path / "audit.jsonl").read_text()]:
        assert SECRET_KEY not in text


def test_fault_free_apply_sends_exactly_the_saved_batches(tmp_path: Path, api: str) -> None:
    # The plan is the contract: every call the served emulator carried out is one saved batch,
    # as saved (same key, same instances), each once, and no wave starts before the one before
    # it was sent in full.
    gen = generate(150, 10, seed=5, remove_fraction=0.5, scope="account")
    fleet, desired = write(gen, tmp_path)
    state = FleetState.from_file(fleet, persist=True)
    env = {"NO_COLOR": "1", "TENCENTCLOUD_SECRET_ID": SECRET_ID, "TENCENTCLOUD_SECRET_KEY": SECRET_KEY}
    plan_file = tmp_path / "p.json"
    with serve_in_thread(EmulatorApp(state)) as server:
        url = server.url if api == "2.0" else server.url.removesuffix("v2/index.php")
        code, out, _ = cli("plan", str(desired), "--endpoint", url, "--out", str(plan_file), env=env)
        assert code == 0, out
        data = json.loads(plan_file.read_text())
        # Split one batch in two, as another batcher might have: apply must send the two calls
        # it finds, not regroup them into one. (Resealed: the digest is not a signature.)
        index = next(n for n, b in enumerate(data["batches"]) if len(b["instance_ids"]) >= 2)
        first = data["batches"][index]
        second = {**first, "instance_ids": first["instance_ids"][1:]}
        first["instance_ids"] = first["instance_ids"][:1]
        data["batches"].insert(index + 1, second)
        data["integrity"]["digest"] = canonical_digest(data)
        plan_file.write_text(json.dumps(data))
        saved = data["batches"]
        assert len({b["wave"] for b in saved}) >= 2, "the fleet should need several waves"
        assert state.mutations == []
        code, out, err = cli("apply", str(plan_file), "--endpoint", url, env=env)
        assert code in (0, 3), out + err
    sent = [(m.key_ids or (m.key_id,), m.instance_ids) for m in state.mutations]
    assert all(m.action == UNBIND[api] for m in state.mutations)
    assert sorted(sent) == sorted((tuple(b["key_ids"]), tuple(b["instance_ids"])) for b in saved)
    wave_of = {(tuple(b["key_ids"]), tuple(b["instance_ids"])): b["wave"] for b in saved}
    waves = [wave_of[call] for call in sent]
    assert waves == sorted(waves)


def test_edited_plan_is_refused_before_any_mutation(tmp_path: Path, api: str) -> None:
    fleet, desired = _example_world(tmp_path)
    plan_file = tmp_path / "p.json"
    assert cli("plan", str(desired), "--emulator", str(fleet), "--api", api, "--out", str(plan_file))[0] == 0
    data = json.loads(plan_file.read_text())
    data["batches"][0]["instance_ids"].append("ins-99999999")  # sneak one more unbind in
    plan_file.write_text(json.dumps(data))
    before = live_state(fleet)
    code, _, err = cli("apply", str(plan_file))
    assert code == 1
    assert "edited" in err
    assert live_state(fleet) == before


def test_stale_plan_is_refused_before_any_mutation(tmp_path: Path, api: str) -> None:
    fleet, desired = _example_world(tmp_path)
    plan_file = tmp_path / "p.json"
    assert cli("plan", str(desired), "--emulator", str(fleet), "--api", api, "--out", str(plan_file))[0] == 0
    change = next(c for c in json.loads(plan_file.read_text())["changes"] if c["status"] == "ready")
    state = FleetState.from_file(fleet, persist=True)
    state.set_instance_status("ap-guangzhou", change["instance_id"], 2)  # someone started it
    state.refresh()
    before = FleetState.from_file(fleet, persist=False).bindings("ap-guangzhou")
    code, _, err = cli("apply", str(plan_file))
    assert code == 1
    assert "plan is stale" in err and change["instance_id"] in err
    assert FleetState.from_file(fleet, persist=False).bindings("ap-guangzhou") == before


def _several_keys_world(api: str, op_seconds: float = 0.15) -> tuple[FleetState, CloudClient]:
    """Two instances with three keys each, about to lose two and three of them: three waves over
    2.0."""
    fleet = {
        "credentials": [{"secret_id": SECRET_ID, "secret_key": SECRET_KEY}],
        "regions": {
            "ap-guangzhou": {
                "instances": [
                    {"id": "ins-aaaaaaa1", "name": "a", "os": "centos", "status": 4},
                    {"id": "ins-aaaaaaa2", "name": "b", "os": "centos", "status": 4},
                ],
                "keys": [
                    {"id": f"skey-kkkkkkk{n}", "name": f"k{n}", "bound": ["ins-aaaaaaa1", "ins-aaaaaaa2"]}
                    for n in (1, 2, 3)
                ],
            }
        },
    }
    state = FleetState.from_data(fleet, op_seconds=op_seconds)
    return state, emulator_client(EmulatorApp(state), "gz", api)


def _several_keys_desired(tmp_path: Path) -> Desired:
    """The file of that world: skey-kkkkkkk1 stays on ins-aaaaaaa1, nothing else is allowed."""
    path = tmp_path / "bindings.yaml"
    path.write_text(
        "version: 1\nregion: gz\nkeys:\n  skey-kkkkkkk1: {instances: [ins-aaaaaaa1]}\n"
        "  skey-kkkkkkk2: {instances: []}\n  skey-kkkkkkk3: {instances: []}\n"
    )
    return load_paths([path]).by_region["ap-guangzhou"]


def test_instances_with_several_keys_are_unbound_in_waves_with_waiting(tmp_path: Path) -> None:
    state, client = _several_keys_world("2.0")
    desired = _several_keys_desired(tmp_path)
    plan = build_plan(desired, observe_for_plan(client, desired), endpoint="test")
    # ins-aaaaaaa2 loses three keys: three waves, one call each (each call covers both instances
    # where it can); every change on ins-aaaaaaa2 carries the last-key warning.
    assert (plan.summary.waves, plan.summary.calls, plan.summary.to_unbind) == (3, 3, 5)
    assert sorted(c.instance_id for c in plan.changes if c.warnings) == ["ins-aaaaaaa2"] * 3
    result = Executor(client, plan, options=ExecOptions(poll_initial=0.05)).run()
    assert result.count(Outcome.DONE) == 5 and result.count(Outcome.FAILED) == 0
    assert state.bindings("ap-guangzhou") == {("skey-kkkkkkk1", "ins-aaaaaaa1")}
    assert client.calls["UnBindInstanceKey"] == 3
    assert client.calls["DescribeInstances"] >= 3  # polled while the instances were in status 20


def test_3_0_waits_for_its_own_operation_and_makes_no_more_calls_than_2_0(tmp_path: Path) -> None:
    desired = _several_keys_desired(tmp_path)
    calls: dict[str, int] = {}
    for api in ("2.0", "3.0"):
        state, client = _several_keys_world(api)
        assert client.api.value == api
        plan = build_plan(desired, observe_for_plan(client, desired), endpoint="test", api=client.api)
        result = Executor(client, plan, options=ExecOptions(poll_initial=0.05)).run()
        assert result.count(Outcome.DONE) == 5 and result.count(Outcome.FAILED) == 0, result
        assert state.bindings("ap-guangzhou") == {("skey-kkkkkkk1", "ins-aaaaaaa1")}
        calls[api] = len(state.mutations)
        assert client.calls["DescribeInstances"] >= 2
        if api == "3.0":
            # Every call's RequestId is what its instances reported while the operation ran.
            assert all(m.request_id for m in state.mutations)
    assert calls["3.0"] <= calls["2.0"] == 3
    # Both instances lose several keys: 3.0 takes each instance's keys in one call.
    assert calls["3.0"] < calls["2.0"]


def test_throttling_slows_apply_but_does_not_fail_it(tmp_path: Path, api: str) -> None:
    gen = generate(80, 20, seed=3, remove_fraction=0.5)
    # The emulator's rate limit and the client's backoff on one fake clock: what is throttled
    # and retried is the same however loaded the machine is (on real time, a slow one stayed
    # under the limit, or ran out of attempts).
    fake = FakeTime()
    state = FleetState.from_data(gen.fleet, clock=fake.clock)
    emulator = EmulatorApp(state, rate_limit=5)
    attempts: list[AttemptRecord] = []
    client = emulator_client(
        emulator,
        gen.region,
        api,
        backoff_base=0.05,
        max_attempts=8,
        on_attempt=attempts.append,
        clock=fake.clock,
        sleep=fake.sleep,
    )
    path = tmp_path / "b.yaml"
    path.write_text(gen.desired_text)
    desired = load_paths([path]).by_region[gen.region]
    plan = build_plan(desired, observe_for_plan(client, desired), endpoint="test", api=client.api)
    result = Executor(client, plan, options=ExecOptions(parallelism=8)).run()
    assert result.count(Outcome.FAILED) == 0
    assert result.count(Outcome.DONE) == len(plan.ready_changes) > 10
    throttled = [a for a in attempts if a.code == THROTTLED[api]]
    assert throttled, "the emulator's rate limit should have answered 4400 at least once"
    assert all(a.retry_in_s is not None and a.retry_in_s > 0 for a in throttled)  # backed off, then retried
    # Each backoff was slept, on the client's (injected) sleep.
    assert Counter(a.retry_in_s for a in throttled) <= Counter(fake.sleeps)


def test_a_saved_emulator_plan_applies_from_another_directory(tmp_path: Path) -> None:
    import os
    import subprocess
    import sys

    work, elsewhere = tmp_path / "work", tmp_path / "elsewhere"
    work.mkdir()
    elsewhere.mkdir()
    shutil.copy(EXAMPLES / "fleet.yaml", work / "fleet.yaml")
    env = {**os.environ, "NO_COLOR": "1"}
    cmd = [sys.executable, "-m", "reconciler"]
    subprocess.run(
        [*cmd, "plan", str(EXAMPLES / "bindings.yaml"), "--emulator", "fleet.yaml", "--out", "p.json"],
        cwd=work,
        env=env,
        check=True,
        capture_output=True,
    )
    applied = subprocess.run(
        [*cmd, "apply", str(work / "p.json")], cwd=elsewhere, env=env, capture_output=True, text=True
    )
    assert applied.returncode == 3, applied.stderr  # done; the example's blocked changes remain
    assert "Apply complete: 3 done" in applied.stdout


def test_a_plan_is_applied_only_with_the_api_it_was_made_for(tmp_path: Path, api: str) -> None:
    fleet, desired = _example_world(tmp_path)
    plan_file = tmp_path / "p.json"
    assert cli("plan", str(desired), "--emulator", str(fleet), "--api", api, "--out", str(plan_file))[0] == 0
    assert json.loads(plan_file.read_text())["api"] == api
    before = live_state(fleet)
    other = "2.0" if api == "3.0" else "3.0"
    code, _, err = cli("apply", str(plan_file), "--api", other)
    assert code == 1 and f"made for CVM API {api}, not {other}" in err
    assert live_state(fleet) == before
    code, out, err = cli("apply", str(plan_file))
    assert code in (0, 3), out + err
    assert f"{UNBIND[api]} " in out and UNBIND["2.0" if api == "3.0" else "3.0"] not in out


def test_the_default_api_is_3_and_a_v2_endpoint_path_selects_2(tmp_path: Path) -> None:
    fleet, desired = _example_world(tmp_path)
    code, out, _ = cli("plan", str(desired), "--emulator", str(fleet), "--format", "json")
    assert code == 0 and json.loads(out)["api"] == "3.0"
    state = FleetState.from_file(fleet, persist=False)
    env = {"NO_COLOR": "1", "TENCENTCLOUD_SECRET_ID": SECRET_ID, "TENCENTCLOUD_SECRET_KEY": SECRET_KEY}
    with serve_in_thread(EmulatorApp(state)) as server:
        assert server.url.endswith("/v2/index.php")
        code, out, _ = cli("plan", str(desired), "--endpoint", server.url, "--format", "json", env=env)
        assert code == 0 and json.loads(out)["api"] == "2.0"
        code, _, err = cli("plan", str(desired), "--endpoint", server.url, "--api", "3.0", env=env)
        assert code == 1 and "API 2.0's" in err
