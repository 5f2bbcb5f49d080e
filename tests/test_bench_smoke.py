"""Smoke version of the benchmark (``bench/run.py``): every mode, at size S, with short waits.

Runs the benchmark's own entry point (``bench.run.main``) as bench/README.md does, so the
command line keeps working: in-process (with "tool alone" against a served emulator), served
(with the per-binding peer and the Terraform-like peer), ``--report-only`` and ``--api 3.0``.
Each mode runs the real command line (``cvmkeys plan --out`` then ``cvmkeys apply``) as
subprocesses with ``--audit-log``. The call counts are checked against minimums recomputed
here from the generator's own record of the fleet (not from ``bench/minimum.py`` and never from
the product's plan), so neither the tool nor the yardstick can drift silently. Timings are not
asserted (machines differ); the benchmark reports them.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from bench.fleetgen import SIZES, Generated, generate_size
from bench.run import lower_bound_s, main
from reconciler.model import DOCUMENTED_RATE_LIMITS

QUICK = ["--peer-sample", "2", "--tf-sample", "5", "--tf-refresh-sample", "20", "--tf-sleep", "0.2"]
QUICK += ["--tf-poll", "0.2", "--op-seconds", "0.3"]


def _pages(n: int) -> int:
    return math.ceil(n / 100)


def _expected(gen: Generated) -> dict[str, Any]:
    """What the plan must decide, from the generator's record (scope keys, as the bench makes)."""
    owned = {b for b in gen.live if b[0] in gen.declared_keys}
    unwanted = owned - gen.allowed
    candidates = {b for b in unwanted if b[1] not in gen.protected_instances}
    ready = {b for b in candidates if gen.statuses[b[1]] == (4, False)}
    bound_anywhere = {i for _, i in gen.live}
    deciding = {i for _, i in candidates} | (gen.declared_instances - bound_anywhere)
    per_key = Counter(k for k, _ in ready)
    return {
        "ready": ready,
        "blocked": candidates - ready,
        "keys": SIZES["S"][1],
        "deciding": deciding,
        "declared_or_deciding": deciding | gen.declared_instances,
        "unbind_minimum": sum(_pages(n) for n in per_key.values()),
        "ready_instances": {i for _, i in ready},
        "ready_keys": {k for k, _ in ready},
    }


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    out = tmp_path_factory.mktemp("results")
    work = tmp_path_factory.mktemp("work")
    main(["--size", "S", "--mode", "both", "--out", str(out), "--work", str(work), *QUICK])
    loaded = {p.stem: json.loads(p.read_text(encoding="utf-8")) for p in out.glob("*.json")}
    return out, loaded


def _gen() -> Generated:
    return generate_size("S", seed=1, remove_fraction=0.1)


def test_every_mode_runs_and_plans_and_applies_what_the_input_decides(
    results: tuple[Path, dict[str, Any]],
) -> None:
    _, loaded = results
    assert set(loaded) == {"S-inprocess", "S-served"}
    want = _expected(_gen())
    assert len(want["ready"]) > 30 and len(want["ready_instances"]) < len(want["ready"])  # several keys
    for record in loaded.values():
        x = record["result"]
        assert x["plan"]["exit_code"] == 0
        assert x["apply"]["exit_code"] == (3 if want["blocked"] else 0)  # 3: done, blocked ones remain
        assert x["ready_unbinds"] == x["truth_ready_unbinds"] == len(want["ready"])
        assert x["apply_outcomes"]["done"] == len(want["ready"]) and x["apply_outcomes"]["failed"] == 0
        assert x["plan"]["throttled"] == x["apply"]["throttled"] == 0
        # The benchmark's minimums agree with this test's own computation.
        assert x["plan_minimum"] == {
            "DescribeKeyPairs": _pages(want["keys"]),
            "DescribeInstances": _pages(len(want["deciding"])),
        }
        assert x["apply_minimum"]["UnBindInstanceKey"] == want["unbind_minimum"]
        # The plan: every key pair once; the instances it reads lie between what decides the plan
        # and that plus every declared instance (the semantics before issue 16 item 2).
        plan_calls = x["plan"]["calls"]
        assert plan_calls["DescribeKeyPairs"] == _pages(want["keys"])
        lo, hi = _pages(len(want["deciding"])), _pages(len(want["declared_or_deciding"]))
        assert lo <= plan_calls["DescribeInstances"] <= hi
        # The apply: exactly the 2.0 minimum of unbind calls; the stale check and the verification.
        calls = x["apply"]["calls"]
        assert calls["UnBindInstanceKey"] == want["unbind_minimum"]
        assert calls["DescribeKeyPairs"] == 2 * _pages(len(want["ready_keys"]))
        assert calls["DescribeInstances"] == _pages(len(want["ready_instances"])) + x["apply_polls"]
        assert x["apply_polls"] >= max(x["waves"], _pages(len(want["ready"])))
    tool_alone = loaded["S-inprocess"]["result"]
    assert tool_alone["apply_tool_alone"]["calls"] == tool_alone["apply"]["calls"]
    served = loaded["S-served"]["result"]
    plan_and_apply = Counter(served["plan"]["calls"]) + Counter(served["apply"]["calls"])
    assert served["server_requests"] == dict(plan_and_apply)  # the emulator saw what the audit logs say
    # Served with the documented per-action limits (none refused: the client keeps to the same
    # table), and the lower bound takes each action at its own rate: reads at 40 a second.
    assert loaded["S-served"]["params"]["rate_limit"] is None
    minimum = served["plan_minimum"]
    bound = max(minimum["DescribeKeyPairs"] / 10, minimum["DescribeInstances"] / 40)
    assert served["plan_lower_bound_s"] == pytest.approx(bound, abs=0.001)
    assert lower_bound_s({"DescribeInstances": 80, "DescribeKeyPairs": 10}, DOCUMENTED_RATE_LIMITS) == 2.0
    assert lower_bound_s({"UnBindInstanceKey": 30}, DOCUMENTED_RATE_LIMITS, waves=1, op_seconds=2) == 3.0
    # In-process, the emulator's state was built before the plan, on its own.
    assert tool_alone["state_build"]["cpu_s"] > 0


def test_the_peers_make_the_calls_their_strategy_implies(results: tuple[Path, dict[str, Any]]) -> None:
    _, loaded = results
    peers = loaded["S-served"]["result"]["peers"]
    want = _expected(_gen())
    per_binding = peers["per_binding"]
    assert per_binding["sample"] == 2 and per_binding["sample_calls"]["UnBindInstanceKey"] == 2
    assert per_binding["sample_calls"]["DescribeInstances"] >= 2 and not per_binding["failed"]
    refresh = peers["terraform_refresh"]
    assert refresh["sample_calls"] == {"DescribeInstances": 20}  # one read per resource
    assert refresh["of"] >= len(want["ready_instances"])
    applied = peers["terraform_apply"]
    assert applied["sample"] == 5 and applied["of"] == len(want["ready_instances"]) and not applied["failed"]
    chosen = sorted(want["ready_instances"])[:5]
    keys_lost = sum(1 for _, i in want["ready"] if i in chosen)
    assert applied["sample_calls"]["UnBindInstanceKey"] == keys_lost  # 2.0: one key a call
    assert applied["sample_calls"]["DescribeInstances"] >= 5  # at least one poll per instance
    assert peers["terraform"]["calls"] == refresh["calls"] + applied["calls"]


def test_report_only_renders_every_table(
    results: tuple[Path, dict[str, Any]], capsys: pytest.CaptureFixture[str]
) -> None:
    out, _ = results
    capsys.readouterr()
    main(["--report-only", "--out", str(out)])
    text = capsys.readouterr().out
    for title in ("Batching", "API calls", "Served: wall time", "Terraform-like", "CPU time", "libyaml"):
        assert title in text
    assert "| S | inprocess 2.0 |" in text and "| S | served 2.0 |" in text


def test_api_3_runs_once_cvmkeys_speaks_it(tmp_path: Path) -> None:
    helped = subprocess.run(
        [sys.executable, "-m", "reconciler", "plan", "--help"], capture_output=True, text=True
    )
    args = [
        "--size",
        "S",
        "--mode",
        "inprocess",
        "--api",
        "3.0",
        "--out",
        str(tmp_path),
        "--work",
        str(tmp_path),
    ]
    if "--api" not in helped.stdout:
        with pytest.raises(SystemExit, match="no --api option yet"):
            main(args)
        return
    main(args)
    record = json.loads((tmp_path / "S-inprocess-api3.json").read_text(encoding="utf-8"))
    x = record["result"]
    assert x["apply_outcomes"]["done"] == len(_expected(_gen())["ready"])
    assert x["apply"]["calls"]["DisassociateInstancesKeyPairs"] <= _expected(_gen())["unbind_minimum"]
