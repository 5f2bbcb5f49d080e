"""Concurrency test: two ``cvmkeys apply PLANFILE`` of the same saved plan at once, as two
processes against one served emulator (real sockets, status 20 lasting a while, latency).

Each apply must carry the plan out (exit 0, or 3 when blocked changes remain): the other's
unbinds are this plan's own effects, so neither finds the plan stale (plan format 3.0); what
the other did first is ``done`` ("already done before this apply", or its calls answered, or
refused because the other apply had the instance busy and the re-observation shows the binding
gone). Never a ``failed`` binding or an error caused by the double work. Afterwards the
state is exactly the initial one minus the plan, and the mutation log names only planned
bindings. Over both CVM APIs (3.0: an instance busy with the other apply's operation answers
``OperationDenied.InstanceOperationInProgress``, kind BUSY).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from support import GENERATED_ENV, UNBIND, mutated_pairs, planned_fleet

from reconciler.emulator.state import FleetState


@pytest.mark.parametrize(
    ("seed", "stagger", "api"), [(1, False, "2.0"), (2, False, "3.0"), (3, True, "2.0"), (3, True, "3.0")]
)
def test_two_applies_of_one_plan_never_fail_because_of_each_other(
    seed: int, stagger: bool, api: str, tmp_path: Path
) -> None:
    with planned_fleet(tmp_path, 200, 40, seed=seed, api=api, op_seconds=0.1, latency_ms=10) as world:
        state, planned = world.state, world.planned
        assert len(planned) > 20
        command = [
            sys.executable,
            "-m",
            "reconciler",
            "apply",
            str(world.plan_file),
            "--endpoint",
            world.url,
            "--format",
            "json",
            "--rate-limit",
            "60",
        ]
        procs = []
        for n in range(2):
            if n and stagger:  # the second starts once the first has begun to unbind
                deadline = time.monotonic() + 30
                while not state.mutations and time.monotonic() < deadline:
                    time.sleep(0.005)
            procs.append(
                subprocess.Popen(
                    command,
                    env={**os.environ, **GENERATED_ENV},
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                    text=True,
                )
            )
        outputs = [proc.communicate(timeout=120) for proc in procs]

    ran = 0
    for proc, (out, err) in zip(procs, outputs, strict=True):
        assert "Traceback" not in out + err and "internal error" not in err, err
        assert proc.returncode in (0, 3), f"exit {proc.returncode}\n{out}\n{err}"
        ran += 1
        data = json.loads(out)
        assert data["summary"]["failed"] == 0 and data["summary"]["not-attempted"] == 0, out
        assert data["stopped_reason"] == ""
        done = {(r["key_id"], r["instance_id"]) for r in data["results"] if r["outcome"] == "done"}
        assert done == planned  # whoever did the work, every planned binding is gone
    assert ran == 2  # the second, even started mid-run, finishes the plan: never "stale"

    mutated = {pair for m in state.mutations for pair in mutated_pairs(m)}
    assert all(m.action == UNBIND[api] for m in state.mutations)
    assert mutated == planned
    assert state.bindings(world.region) == world.initial - planned
    assert FleetState.from_file(world.fleet, persist=False).bindings(world.region) == world.initial - planned
