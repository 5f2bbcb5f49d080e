"""Smoke version of the stops benchmark (``bench/stops.py``), as bench/README.md runs it: a
budgeted apply on a served emulator with short real-time operations, both APIs. The budget and
the final states are asserted; of the timing only the physical floor is (no apply of
``instances`` instances through ``budget`` slots can beat ceil(instances / budget) rounds of
stop + unbind + start), since machines differ."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from bench.stops import main


@pytest.mark.parametrize("api", ["2.0", "3.0"])
def test_stops_bench_reports_wall_time_next_to_the_estimate(api: str, tmp_path: Path) -> None:
    out = tmp_path / "stops.json"
    code = main(["--instances", "9", "--budget", "3", "--op-seconds", "0.1", "--api", api,
                 "--work", str(tmp_path), "--out", str(out)])
    report = json.loads(out.read_text())
    assert code == 0, report
    assert report["still_down"] == 0 and report["done"] == 9
    assert 1 <= report["max_down_seen"] <= 3 and report["max_down_reported"] <= 3
    assert report["estimate_s"] == pytest.approx(9 / 3 * 3 * 0.1)
    assert report["wall_s"] >= math.ceil(9 / 3) * 3 * 0.1
    assert report["calls"]["StopInstances"] >= 3 and report["calls"]["StartInstances"] >= 3
