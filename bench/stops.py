"""Benchmark of a budgeted stop -> unbind -> start (issue 14, docs/disruption.md).

    python bench/stops.py [--instances 40] [--budget 4] [--op-seconds 1.0] [--api 2.0|3.0] [--out FILE]

A fleet of running instances that each lose one key is served by the emulator on a real
socket, with every operation (stop, unbind, start) taking ``--op-seconds`` of real time. The
plan is made with those durations as its assumed ones, so its ``rolling_estimate`` is
``(instances / budget) x (stop + unbind + start)``; apply (the real executor and client) is
timed, while a thread polling DescribeInstances records the most instances seen down at once.
The report puts the measured wall time next to that estimate and to the rounds' upper bound.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from reconciler.cloud.api3 import Api3Client
from reconciler.cloud.base import CloudClient
from reconciler.cloud.client import CvmClient
from reconciler.cloud.credentials import Credentials
from reconciler.cloud.observe import observe_for_plan
from reconciler.core.plan import build_plan
from reconciler.desired.loader import load_paths
from reconciler.emulator.app import EmulatorApp
from reconciler.emulator.server import serve_in_thread
from reconciler.emulator.state import FleetState
from reconciler.execute.executor import ExecOptions, Executor
from reconciler.model import ApiVersion, InstanceState, Outcome

REGION = "ap-guangzhou"
SECRET_ID, SECRET_KEY = "AKIDBENCHSTOPS00000000000000000000", "bench-stops-secret"
OLD, KEEP = "skey-01d01d01", "skey-4eep4eep"


def fleet(instances: int) -> dict[str, Any]:
    ids = [f"ins-b{i:07d}" for i in range(instances)]
    return {
        "credentials": [{"secret_id": SECRET_ID, "secret_key": SECRET_KEY}],
        "regions": {
            REGION: {
                "instances": [
                    {"id": iid, "name": f"web-{n}", "os": "centos7.6x86_64", "status": 2}
                    for n, iid in enumerate(ids)
                ],
                "keys": [
                    {"id": OLD, "name": "old", "bound": ids},
                    {"id": KEEP, "name": "keep", "bound": ids},
                ],
            }
        },
    }


def desired_text(budget: int) -> str:
    return (
        f"version: 1\nregion: {REGION}\nscope: keys\nkeys:\n  {OLD}:\n    instances: []\n"
        f"disruption:\n  stop_running: true\n  max_stopped: {budget}\n  stop_type: soft\n"
        "safety:\n  max_unbind_percent: 100\n"
    )


def client_for(api: ApiVersion, url: str) -> CloudClient:
    credentials = Credentials(SECRET_ID, SECRET_KEY)
    if api is ApiVersion.V2:
        return CvmClient(credentials, REGION, endpoint=url + "v2/index.php", rate_limit=None)
    return Api3Client(credentials, REGION, endpoint=url, rate_limit=None)


class DownPoller(threading.Thread):
    """The most instances seen not running at once, polled over the socket while apply runs."""

    def __init__(self, client: CloudClient, ids: list[str]) -> None:
        super().__init__(daemon=True)
        self.client, self.ids = client, ids
        self.done = threading.Event()
        self.max_down = 0

    def run(self) -> None:
        while not self.done.is_set():
            found = self.client.describe_instances(self.ids)
            down = sum(1 for i in found if i.state is not InstanceState.RUNNING)
            self.max_down = max(self.max_down, down)
            time.sleep(0.01)


def run(instances: int, budget: int, op_seconds: float, api: ApiVersion, work: Path) -> dict[str, Any]:
    state = FleetState.from_data(fleet(instances), op_seconds=op_seconds)
    path = work / "bindings.yaml"
    path.write_text(desired_text(budget))
    desired = load_paths([path]).by_region[REGION]
    with serve_in_thread(EmulatorApp(state)) as server:
        url = server.url.removesuffix("v2/index.php")
        client = client_for(api, url)
        observed = observe_for_plan(client, desired)
        plan = build_plan(desired, observed, endpoint=url, api=api)
        # The estimate with the emulator's own durations (the plan's defaults are for real
        # clouds): each instance is down for stop + its unbind calls + start, op_seconds each.
        assert plan.stops is not None
        downtimes = [op_seconds * (2 + stop.unbind_calls) for stop in plan.stops.stops]
        estimate = max(sum(downtimes) / budget, max(downtimes))
        upper = sum(max(downtimes[i : i + budget]) for i in range(0, len(downtimes), budget))
        poller = DownPoller(client_for(api, url), [f"ins-b{i:07d}" for i in range(instances)])
        poller.start()
        # Polls at a tenth of an operation at most, as the CLI's 5 s polls are for 60 s stops.
        options = ExecOptions(poll_initial=op_seconds / 20, poll_max=op_seconds / 10)
        started = time.monotonic()
        result = Executor(client, plan, options=options).run()
        wall = time.monotonic() - started
        poller.done.set()
        poller.join()
    assert result.stops is not None
    per_instance = 3 * op_seconds
    return {
        "api": api.value,
        "instances": instances,
        "budget": budget,
        "op_seconds": op_seconds,
        "per_instance_s": round(per_instance, 3),
        "estimate_s": round(estimate, 3),  # (instances / budget) x per-instance
        "rounds_upper_bound_s": round(upper, 3),
        "wall_s": round(wall, 3),
        "wall_over_estimate": round(wall / estimate, 2),
        "max_down_seen": poller.max_down,
        "max_down_reported": result.stops.max_down_at_once,
        "still_down": len(result.stops.still_down),
        "done": result.count(Outcome.DONE),
        "calls": dict(sorted(result.calls.items())),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--instances", type=int, default=40)
    parser.add_argument("--budget", type=int, default=4)
    parser.add_argument("--op-seconds", type=float, default=1.0)
    parser.add_argument("--api", choices=["2.0", "3.0"], default="2.0")
    parser.add_argument("--work", type=Path, default=Path("bench/work-stops"))
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    args.work.mkdir(parents=True, exist_ok=True)
    report = run(args.instances, args.budget, args.op_seconds, ApiVersion(args.api), args.work)
    text = json.dumps(report, indent=2, sort_keys=True) + "\n"
    if args.out:
        args.out.write_text(text)
    sys.stdout.write(text)
    return 0 if report["still_down"] == 0 and report["max_down_seen"] <= args.budget else 1


if __name__ == "__main__":
    raise SystemExit(main())
