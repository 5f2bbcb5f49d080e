"""Crash test: ``cvmkeys apply PLANFILE`` killed with SIGKILL at random points against a served
emulator (real sockets, fleet persisted to its file); afterwards ``plan`` shows exactly the
remaining work, applying the saved plan again finishes it (sending nothing twice), and a fresh
plan then has nothing left.

The emulator runs in this process (``serve_in_thread``), so the test reads its mutation log
directly: "what was done" comes from the cloud's side, never from the killed process. Each
seed picks its own kill point: before any unbind (during start-up or the stale check), or
after the k-th UnBindInstanceKey the emulator carried out. Latency and a short status 20 keep
the apply running long enough for the kill to land mid-run. Seeds are split across the two CVM
APIs (2.0 at ``/v2/index.php``, 3.0 at ``/``), the kill-before-any-unbind case on 2.0.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from support import GENERATED_ENV, UNBIND, Binding, mutated_pairs, planned_fleet, ready_in, run_cli

from reconciler.emulator.state import FleetState


def cli(*args: str) -> tuple[int, str, str]:
    return run_cli(*args, "--rate-limit", "1000", env=GENERATED_ENV)


def unbound(state: FleetState, api: str) -> list[Binding]:
    assert all(m.action == UNBIND[api] for m in state.mutations)
    return [pair for m in state.mutations for pair in mutated_pairs(m)]


def wait_until_quiet(state: FleetState, seconds: float = 0.4) -> None:
    """Let requests the dead process left in flight finish on the server side."""
    last, quiet_since = len(state.mutations), time.monotonic()
    while time.monotonic() - quiet_since < seconds:
        time.sleep(0.02)
        if len(state.mutations) != last:
            last, quiet_since = len(state.mutations), time.monotonic()


@pytest.mark.parametrize(("seed", "api"), [(1, "2.0"), (2, "2.0"), (2, "3.0"), (3, "3.0")])
def test_apply_killed_at_a_random_point_then_plan_shows_the_rest_and_apply_converges(
    seed: int, api: str, tmp_path: Path
) -> None:
    rng = random.Random(seed)
    with planned_fleet(tmp_path, 240, 60, seed=seed, api=api, op_seconds=0.05, latency_ms=15) as world:
        state, planned, plan_file, url = world.state, world.planned, world.plan_file, world.url
        calls = len(json.loads(plan_file.read_text())["batches"])
        # (3.0 takes an instance's several keys in one call: fewer calls for the same plan.)
        assert calls >= (10 if api == "2.0" else 4), "the plan should take long enough to be killed mid-run"
        # Seed 1 kills before any unbind (start-up, the stale check); the others mid-run.
        kill_after = 0 if seed == 1 else rng.randint(1, calls - 2)

        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "reconciler",
                "apply",
                str(plan_file),
                "--endpoint",
                url,
                "--parallelism",
                "2",
                "--rate-limit",
                "40",  # about 1.5 s for the whole plan: the kill lands mid-run
                "--audit-log",
                str(tmp_path / "audit.jsonl"),
            ],
            env={**os.environ, **GENERATED_ENV},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            deadline = time.monotonic() + 30
            if kill_after == 0:
                time.sleep(rng.uniform(0.1, 0.8))  # start-up, the stale check, or the first call
            else:
                while len(state.mutations) < kill_after and time.monotonic() < deadline:
                    time.sleep(0.002)
            proc.send_signal(signal.SIGKILL)
            assert proc.wait(timeout=30) == -signal.SIGKILL, "apply finished before it was killed"
        finally:
            if proc.poll() is None:
                proc.kill()
        wait_until_quiet(state)
        time.sleep(0.1)  # status 20 (0.05 s) of the last unbinds is over

        done = unbound(state, api)
        assert len(done) == len(set(done)), "a binding was unbound twice"
        assert set(done) <= planned
        assert state.bindings(world.region) == world.initial - set(done)
        if kill_after:
            assert len(state.mutations) >= kill_after and set(done) < planned

        # plan shows exactly what remains: nothing done is planned again, nothing is forgotten.
        code, out, err = cli("plan", str(world.desired), "--endpoint", url, "--format", "json")
        assert code == 0, err
        assert ready_in(out) == planned - set(done)

        # The saved plan, applied again, finishes it (plan format 3.0): what the killed process
        # did is its own effect, and nothing done is sent again.
        code, out, err = cli("apply", str(plan_file), "--endpoint", url, "--format", "json")
        assert code in (0, 3), out + err
        resumed = unbound(state, api)
        assert len(resumed) == len(set(resumed)) and set(resumed) == planned, "resent or left undone"
        results = json.loads(out)["results"]
        assert {(r["key_id"], r["instance_id"]) for r in results if r["outcome"] == "done"} == planned
        assert all(
            r["reason"] == "already done before this apply"
            for r in results
            if (r["key_id"], r["instance_id"]) in set(done)
        )

        # A fresh plan, applied, converges.
        plan2 = tmp_path / "plan2.json"
        assert cli("plan", str(world.desired), "--endpoint", url, "--out", str(plan2))[0] == 0
        code, out, err = cli("apply", str(plan2), "--endpoint", url)
        assert code in (0, 3), out + err  # 3: blocked changes (running instances) remain
        code, out, _ = cli("plan", str(world.desired), "--endpoint", url, "--format", "json")
        assert ready_in(out) == set()

    final_done = unbound(state, api)
    assert len(final_done) == len(set(final_done)) and set(final_done) == planned
    assert state.bindings(world.region) == world.initial - planned
    # The fleet file holds the same as the emulator's memory.
    assert FleetState.from_file(world.fleet, persist=False).bindings(world.region) == world.initial - planned
    # The audit log of the killed process: every complete line is a JSON record.
    audit = tmp_path / "audit.jsonl"
    lines = audit.read_text().split("\n") if audit.exists() else []
    for line in lines[:-1]:
        json.loads(line)
