"""Issue 14 over ``cvmkeys emulator serve`` (a subprocess, real sockets, real time, short
``--op-seconds``): an apply that stops instances, killed with SIGKILL at a random moment, then
the same plan applied again, leaves nothing down that was up; and the budget holds throughout,
as a thread polling DescribeInstances over the socket sees it.

2.0 runs the real CLI (``cvmkeys apply PLANFILE --endpoint URL``) in a subprocess; 3.0 runs the
executor with an ``Api3Client`` in a subprocess (``--api 3.0`` is wired by another change), so
both are killed the same way.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from support import serve_fleet
from test_stops import KEEP, OLD, PROTECTED, REGION, desired_text, fleet_data, only, running_ids, stopped_ids

from reconciler.cloud.api3 import Api3Client
from reconciler.cloud.base import CloudClient
from reconciler.cloud.client import CvmClient
from reconciler.cloud.credentials import Credentials
from reconciler.cloud.observe import observe_for_plan
from reconciler.core.document import dump_plan
from reconciler.core.plan import build_plan
from reconciler.desired.loader import load_paths
from reconciler.model import ApiVersion

RUNNING, STOPPED, BUDGET = 8, 2, 2
OP_SECONDS = "0.15"

APPLY3 = """
import json, os, sys
from reconciler.cloud.api3 import Api3Client
from reconciler.cloud.credentials import Credentials
from reconciler.execute.executor import ExecOptions, Executor
from reconciler.planfile import load_plan

path, url = sys.argv[1:3]
secret_id, secret_key = os.environ["TENCENTCLOUD_SECRET_ID"], os.environ["TENCENTCLOUD_SECRET_KEY"]
plan = load_plan(open(path).read(), path)
client = Api3Client(Credentials(secret_id, secret_key), plan.region, endpoint=url, rate_limits=None)
executor = Executor(client, plan, options=ExecOptions(poll_initial=0.02, poll_max=0.1))
executor.check_fresh()
result = executor.run()
print(json.dumps({"still_down": [i.instance_id for i in result.stops.still_down] if result.stops else []}))
"""


class Served:
    def __init__(self, tmp_path: Path, api: ApiVersion) -> None:
        self.tmp_path = tmp_path
        self.api = api
        fleet = tmp_path / "fleet.json"
        fleet.write_text(json.dumps(fleet_data(RUNNING, STOPPED)))
        self.process, self.em = serve_fleet(fleet, REGION, "--op-seconds", OP_SECONDS, "--no-save")
        self.url2 = self.em.url
        self.url3 = self.em.url.removesuffix("v2/index.php")

    def client(self) -> CloudClient:
        credentials = Credentials(self.em.secret_id, self.em.secret_key)
        if self.api is ApiVersion.V2:
            return CvmClient(credentials, REGION, endpoint=self.url2, rate_limit=None)
        return Api3Client(credentials, REGION, endpoint=self.url3, rate_limits=None)

    def plan(self) -> Path:
        path = self.tmp_path / "bindings.yaml"
        path.write_text(desired_text(f"max_stopped: {BUDGET}"))
        desired = load_paths([path]).by_region[REGION]
        plan = build_plan(desired, observe_for_plan(self.client(), desired), endpoint=self.url2, api=self.api)
        assert plan.stops is not None and plan.stops.stop_count == RUNNING
        out = self.tmp_path / "plan.json"
        out.write_text(dump_plan(plan))
        return out

    def apply(self, plan: Path) -> subprocess.Popen[str]:
        env = {
            **os.environ,
            "NO_COLOR": "1",
            "TENCENTCLOUD_SECRET_ID": self.em.secret_id,
            "TENCENTCLOUD_SECRET_KEY": self.em.secret_key,
        }
        if self.api is ApiVersion.V2:
            command = [sys.executable, "-m", "reconciler", "apply", str(plan), "--endpoint", self.url2]
        else:
            script = self.tmp_path / "apply3.py"
            script.write_text(APPLY3)
            command = [sys.executable, str(script), str(plan), self.url3]  # credentials: env
        return subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def close(self) -> None:
        self.process.kill()
        self.process.wait(timeout=10)


class Poller(threading.Thread):
    def __init__(self, client: CloudClient) -> None:
        super().__init__(daemon=True)
        self.client = client
        self.done = threading.Event()
        self.max_down = 0
        self.polls = 0
        self.protected: set[str] = set()
        self.errors: list[str] = []
        self.seen_down: set[str] = set()  # every watched instance ever seen not running

    def run(self) -> None:
        watched = running_ids(RUNNING)
        while not self.done.is_set():
            try:
                found = {i.instance_id: i for i in self.client.describe_instances([*watched, PROTECTED])}
            except Exception as error:  # a poll must never end the thread silently
                self.errors.append(repr(error))
                continue
            down = {iid for iid in watched if found[iid].state.value != "running"}
            self.seen_down |= down
            self.max_down = max(self.max_down, len(down))
            self.protected.add(found[PROTECTED].state.value)
            self.polls += 1
            time.sleep(0.005)


def states_and_bindings(client: CloudClient) -> tuple[dict[str, str], set[tuple[str, str]]]:
    ids = [*running_ids(RUNNING), *stopped_ids(STOPPED), PROTECTED]
    states = {i.instance_id: i.state.value for i in client.describe_instances(ids)}
    bound = {(k.key_id, iid) for k in client.describe_key_pairs([OLD, KEEP]) for iid in k.bound_instance_ids}
    return states, bound


def settle(client: CloudClient, seconds: float = 0.6) -> None:
    """Until no instance is in a transient state (a killed apply leaves its last ones running)."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        states, _ = states_and_bindings(client)
        if all(s in ("running", "stopped") for s in states.values()):
            return
        time.sleep(0.05)
    time.sleep(seconds)


@pytest.mark.parametrize("api", [ApiVersion.V2, ApiVersion.V3], ids=["2.0", "3.0"])
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_killed_apply_then_the_same_plan_again_leaves_nothing_down(
    api: ApiVersion, seed: int, tmp_path: Path
) -> None:
    rng = random.Random(seed * 10 + (api is ApiVersion.V3))
    served = Served(tmp_path, api)
    try:
        client = served.client()
        plan = served.plan()
        poller = Poller(served.client())
        poller.start()

        proc = served.apply(plan)
        if seed == 1:  # during start-up, the stale check, or the first stops
            time.sleep(rng.uniform(0.2, 1.0))
        else:  # once the poller has seen n instances go down, at a random moment after that
            n = rng.randint(1, RUNNING - 1)
            deadline = time.monotonic() + 60
            while len(poller.seen_down) < n and proc.poll() is None and time.monotonic() < deadline:
                time.sleep(0.002)
            time.sleep(rng.uniform(0.0, 0.3))
        killed = proc.poll() is None
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=30)
        settle(client)
        states, bound = states_and_bindings(client)
        assert states[PROTECTED] == "running"
        assert all(states[iid] == "stopped" for iid in stopped_ids(STOPPED))
        left_down = [iid for iid in running_ids(RUNNING) if states[iid] != "running"]
        assert len(left_down) <= BUDGET

        again = served.apply(plan)
        out, err = again.communicate(timeout=120)
        assert again.returncode in (0, 3), out + err  # 3: nothing failed, protected/blocked remain
        poller.done.set()
        poller.join()

        states, bound = states_and_bindings(client)
        assert only(states, running_ids(RUNNING)) == dict.fromkeys(running_ids(RUNNING), "running")
        assert only(states, stopped_ids(STOPPED)) == dict.fromkeys(stopped_ids(STOPPED), "stopped")
        assert not {(OLD, iid) for iid in running_ids(RUNNING) + stopped_ids(STOPPED)} & bound
        assert (OLD, PROTECTED) in bound
        assert {(KEEP, iid) for iid in running_ids(RUNNING)[1:] + stopped_ids(STOPPED)} <= bound
        assert not poller.errors and poller.polls > 20
        assert poller.max_down <= BUDGET, poller.max_down
        assert poller.protected == {"running"}
        assert killed, "apply finished before it was killed"
    finally:
        served.close()


def test_served_apply_without_disruption_stops_nothing(tmp_path: Path) -> None:
    served = Served(tmp_path, ApiVersion.V2)
    try:
        path = tmp_path / "bindings.yaml"
        path.write_text(desired_text(None))
        desired = load_paths([path]).by_region[REGION]
        plan: Any = build_plan(desired, observe_for_plan(served.client(), desired), endpoint=served.url2)
        assert plan.stops is None
        out = tmp_path / "plan.json"
        out.write_text(dump_plan(plan))
        poller = Poller(served.client())
        poller.start()
        proc = served.apply(out)
        stdout, stderr = proc.communicate(timeout=60)
        poller.done.set()
        poller.join()
        assert proc.returncode == 3, stdout + stderr  # the running instances' unbinds stay blocked
        assert poller.max_down == 0 and poller.polls > 0
        states, bound = states_and_bindings(served.client())
        assert all(states[iid] == "running" for iid in running_ids(RUNNING))
        assert {(OLD, iid) for iid in running_ids(RUNNING)} <= bound
    finally:
        served.close()


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_ctrl_c_or_sigterm_starts_what_apply_stopped_before_it_exits(
    sig: signal.Signals, tmp_path: Path
) -> None:
    served = Served(tmp_path, ApiVersion.V2)
    try:
        client = served.client()
        plan = served.plan()
        poller = Poller(served.client())
        poller.start()
        proc = served.apply(plan)
        deadline = time.monotonic() + 60
        while not poller.seen_down and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.002)
        assert proc.poll() is None, "apply finished before the signal"
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=60)
        poller.done.set()
        poller.join()
        assert proc.returncode == 130, out + err
        states, _ = states_and_bindings(client)
        assert only(states, running_ids(RUNNING)) == dict.fromkeys(running_ids(RUNNING), "running")
        assert poller.max_down <= BUDGET
        assert 1 <= len(poller.seen_down) < RUNNING  # it stopped some, then no new ones
    finally:
        served.close()
