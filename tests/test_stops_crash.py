"""Issue 14 over ``cvmkeys emulator serve`` (a subprocess, real sockets, real time, short
``--op-seconds``): an apply that stops instances, killed with SIGKILL at a random moment, then
the same plan applied again, leaves nothing down that was up; and the budget holds throughout,
as a thread polling DescribeInstances over the socket sees it.

Both APIs run the real CLI: ``cvmkeys plan FILE --endpoint URL --out PLANFILE`` makes the plan
(2.0 at the served emulator's ``/v2/index.php``, 3.0 at its root, which cvmkeys speaks 3.0 to by
default), and ``cvmkeys apply PLANFILE --endpoint URL`` runs in a subprocess that is killed; the
same saved plan is then applied again through the CLI.
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

import pytest
from support import api_client, serve_fleet, served_url
from test_stops import KEEP, OLD, PROTECTED, REGION, desired_text, fleet_data, only, running_ids, stopped_ids

from reconciler.cloud.base import CloudClient
from reconciler.cloud.credentials import Credentials
from reconciler.model import ApiVersion

RUNNING, STOPPED, BUDGET = 8, 2, 2
OP_SECONDS = "0.15"


def cvmkeys(*args: str) -> list[str]:
    """The command line of ``cvmkeys ARGS`` in a fresh interpreter (killable on its own)."""
    return [sys.executable, "-m", "reconciler", *args]


class Served:
    def __init__(self, tmp_path: Path, api: ApiVersion) -> None:
        self.tmp_path = tmp_path
        self.api = api
        fleet = tmp_path / "fleet.json"
        fleet.write_text(json.dumps(fleet_data(RUNNING, STOPPED)))
        self.process, self.em = serve_fleet(fleet, REGION, "--op-seconds", OP_SECONDS, "--no-save")
        self.url = served_url(self.em.url, api.value)
        self.env = {
            **os.environ,
            "NO_COLOR": "1",
            "TENCENTCLOUD_SECRET_ID": self.em.secret_id,
            "TENCENTCLOUD_SECRET_KEY": self.em.secret_key,
        }

    def client(self) -> CloudClient:
        """The poller's and the assertions' own client, over the same API as the CLI."""
        credentials = Credentials(self.em.secret_id, self.em.secret_key)
        return api_client(self.api.value, credentials, REGION, endpoint=self.url)

    def plan(self, disruption: str | None = f"max_stopped: {BUDGET}") -> Path:
        """``cvmkeys plan bindings.yaml --endpoint URL --out plan.json``: the API comes from the
        URL (the root is 3.0 by default), and the saved plan records it."""
        path = self.tmp_path / "bindings.yaml"
        path.write_text(desired_text(disruption))
        out = self.tmp_path / "plan.json"
        command = cvmkeys("plan", str(path), "--endpoint", self.url, "--out", str(out))
        done = subprocess.run(command, env=self.env, capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stdout + done.stderr
        saved = json.loads(out.read_text())
        assert saved["api"] == self.api.value
        # With the disruption block every running instance is stopped once; without, none.
        assert len((saved.get("stops") or {"stops": []})["stops"]) == (RUNNING if disruption else 0)
        return out

    def apply(self, plan: Path, *, merged: bool = False) -> subprocess.Popen[str]:
        """``cvmkeys apply PLANFILE --endpoint URL`` in a subprocess (the plan's own API);
        ``merged``: its standard error into its standard output, for an ``Output`` reader."""
        command = cvmkeys("apply", str(plan), "--endpoint", self.url)
        pipe = subprocess.PIPE
        errors = subprocess.STDOUT if merged else pipe
        return subprocess.Popen(command, env=self.env, stdout=pipe, stderr=errors, text=True)

    def watched_apply(
        self, disruption: str | None = f"max_stopped: {BUDGET}", *, merged: bool = False
    ) -> tuple[Path, Poller, subprocess.Popen[str]]:
        """The saved plan, a poller watching the instances, and ``cvmkeys apply`` of the plan
        started: how every run here begins."""
        plan = self.plan(disruption)
        poller = Poller(self.client())
        poller.start()
        return plan, poller, self.apply(plan, merged=merged)

    def close(self) -> None:
        self.process.kill()
        self.process.wait(timeout=10)

    def __enter__(self) -> Served:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


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

    def wait_down(self, count: int, proc: subprocess.Popen[str]) -> None:
        """Until the poller has seen ``count`` instances go down, or apply has ended (60 s at most)."""
        deadline = time.monotonic() + 60
        while len(self.seen_down) < count and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.002)

    def stop(self) -> None:
        self.done.set()
        self.join()


class Output(threading.Thread):
    """A running apply's output (``merged``), read as it comes: the moments to interrupt it
    are taken from what apply itself says it began, not from a poller that can miss a short
    stop on a loaded machine."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        super().__init__(daemon=True)
        self.proc = proc
        self.lines: list[str] = []
        self.ended = False
        self._changed = threading.Condition()

    def run(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            with self._changed:
                self.lines.append(line)
                self._changed.notify_all()
        with self._changed:
            self.ended = True
            self._changed.notify_all()

    def wait_stops(self, count: int, timeout: float = 60) -> None:
        """Until apply said it is stopping its ``count``-th instance (a line names each round's
        instances), or it ended."""

        def stopping() -> int:
            return sum(line.count("ins-") for line in self.lines if line.startswith("apply: stopping"))

        with self._changed:
            self._changed.wait_for(lambda: self.ended or stopping() >= count, timeout)

    def text(self) -> str:
        with self._changed:
            return "".join(self.lines)


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
    with Served(tmp_path, api) as served:
        client = served.client()
        plan, poller, proc = served.watched_apply(merged=True)
        output = Output(proc)
        output.start()
        if seed == 1:  # during start-up, the stale check, or the first stops
            time.sleep(rng.uniform(0.2, 1.0))
        else:  # once apply began its n-th stop, with at least one more round to come
            output.wait_stops(rng.randint(1, RUNNING - BUDGET))
            time.sleep(rng.uniform(0.0, 0.1))
        killed = proc.poll() is None
        proc.send_signal(signal.SIGKILL)
        output.join(timeout=30)
        proc.wait(timeout=30)
        settle(client)
        states, bound = states_and_bindings(client)
        assert states[PROTECTED] == "running"
        assert all(states[iid] == "stopped" for iid in stopped_ids(STOPPED))
        left_down = [iid for iid in running_ids(RUNNING) if states[iid] != "running"]
        assert len(left_down) <= BUDGET

        again = served.apply(plan)
        out, err = again.communicate(timeout=120)
        assert again.returncode in (0, 3), out + err  # 3: nothing failed, protected/blocked remain
        poller.stop()

        states, bound = states_and_bindings(client)
        assert only(states, running_ids(RUNNING)) == dict.fromkeys(running_ids(RUNNING), "running")
        assert only(states, stopped_ids(STOPPED)) == dict.fromkeys(stopped_ids(STOPPED), "stopped")
        assert not {(OLD, iid) for iid in running_ids(RUNNING) + stopped_ids(STOPPED)} & bound
        assert (OLD, PROTECTED) in bound
        assert {(KEEP, iid) for iid in running_ids(RUNNING)[1:] + stopped_ids(STOPPED)} <= bound
        assert not poller.errors and poller.polls > 20
        assert poller.max_down <= BUDGET, poller.max_down
        assert poller.protected == {"running"}
        assert killed, "apply finished before it was killed:\n" + output.text()


def test_served_apply_without_disruption_stops_nothing(tmp_path: Path) -> None:
    with Served(tmp_path, ApiVersion.V2) as served:
        _, poller, proc = served.watched_apply(None)
        stdout, stderr = proc.communicate(timeout=60)
        poller.stop()
        assert proc.returncode == 3, stdout + stderr  # the running instances' unbinds stay blocked
        assert poller.max_down == 0 and poller.polls > 0
        states, bound = states_and_bindings(served.client())
        assert all(states[iid] == "running" for iid in running_ids(RUNNING))
        assert {(OLD, iid) for iid in running_ids(RUNNING)} <= bound


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_ctrl_c_or_sigterm_starts_what_apply_stopped_before_it_exits(
    sig: signal.Signals, tmp_path: Path
) -> None:
    with Served(tmp_path, ApiVersion.V2) as served:
        client = served.client()
        _, poller, proc = served.watched_apply()
        poller.wait_down(1, proc)
        assert proc.poll() is None, "apply finished before the signal"
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=60)
        poller.stop()
        assert proc.returncode == 130, out + err
        states, _ = states_and_bindings(client)
        assert only(states, running_ids(RUNNING)) == dict.fromkeys(running_ids(RUNNING), "running")
        assert poller.max_down <= BUDGET
        assert 1 <= len(poller.seen_down) < RUNNING  # it stopped some, then no new ones
