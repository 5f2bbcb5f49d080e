"""Smoke version of the benchmark (``bench/run.py``): size S, emulator in the tool's process.

Runs the real command line as the benchmark does (``cvmkeys plan --out`` then ``cvmkeys apply``
of that plan, each a subprocess with ``--audit-log``) and checks that the calls made, by
action, are exactly the minimum for the input, so the claims in bench/README.md cannot
silently regress. Timings are not asserted (machines differ); the benchmark reports them.
"""

from __future__ import annotations

import math
from pathlib import Path

from bench.run import poll_minimum, prepare, run_inprocess
from reconciler.model import ChangeStatus
from reconciler.planfile import load_plan


def test_s_in_process_plan_and_apply_make_exactly_the_minimum_calls(tmp_path: Path) -> None:
    prepared = prepare("S", remove=0.1, seed=1, work=tmp_path)
    result = run_inprocess(prepared, tool_alone=False)
    assert result["plan"]["exit_code"] == 0
    assert result["apply_outcomes"]["done"] == result["ready_unbinds"] > 30
    assert result["apply_outcomes"]["failed"] == 0
    assert result["waves"] >= 2  # so that the polls between waves are exercised
    assert result["plan"]["throttled"] == result["apply"]["throttled"] == 0
    assert result["plan"]["calls"] == result["plan_minimum"]
    assert result["apply"]["calls"] == result["apply_minimum"]

    # The minimum, as bench/README.md defines it, recomputed from the saved plan.
    plan_file = prepared.work / "plan-inprocess.json"
    plan = load_plan(plan_file.read_text(encoding="utf-8"), str(plan_file))
    waves = {b.wave for b in plan.batches}
    per_wave = [{i for b in plan.batches if b.wave == w for i in b.instance_ids} for w in waves]
    unprotected = {c.instance_id for c in plan.changes if c.status is not ChangeStatus.PROTECTED}
    assert result["plan_minimum"] == {
        "DescribeKeyPairs": _pages(prepared.facts["keys"]),
        "DescribeInstances": _pages(len(prepared.gen.declared_instances | unprotected)),
    }
    fp = plan.fingerprint
    # Polls: every instance seen idle once after each of its calls (one observation per
    # unbind), 100 a call, at least one round per wave; for S the rounds have room for all.
    polls = max(len(waves), _pages(sum(len(s) for s in per_wave)))
    assert sum(len(s) for s in per_wave) == plan.summary.to_unbind
    assert polls == poll_minimum([len(s) for s in per_wave])
    assert result["apply_minimum"] == {
        "DescribeKeyPairs": _pages(len(fp.key_ids)) + _pages(len({b.key_ids[0] for b in plan.batches})),
        "DescribeInstances": _pages(len(fp.instance_ids)) + polls,
        "UnBindInstanceKey": len(plan.batches),
    }


def _pages(count: int) -> int:
    return math.ceil(count / 100)
