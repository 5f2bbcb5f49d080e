"""Issue 14 end to end: a ``disruption`` block takes keys off running instances with a budgeted
stop -> unbind -> start, over real HTTP on the emulator (in-process transport, both APIs, real
signatures), and never leaves an instance down.

The budget is checked from outside: a thread with its own client polls DescribeInstances while
apply runs and records how many of the instances that were running are not running. Final
states are exact: every instance that ran runs again, stopped ones stay stopped, protected
ones are never stopped or unbound. Faults (stuck soft stops, throttling, InternalError) and
interruptions are injected through the emulator, never by mocking.
"""

from __future__ import annotations

import dataclasses
import json
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from support import FakeTime, run_cli

from reconciler.cloud.api3 import Api3Client
from reconciler.cloud.base import CloudClient
from reconciler.cloud.client import CvmClient
from reconciler.cloud.credentials import Credentials
from reconciler.cloud.observe import observe_for_plan
from reconciler.connect import EMULATOR_URL
from reconciler.core.document import dump_plan
from reconciler.core.plan import STOP_ACTION, build_plan
from reconciler.desired.loader import load_paths
from reconciler.emulator.app import EmulatorApp, transport
from reconciler.emulator.faults import FaultProfile
from reconciler.emulator.state import FleetState
from reconciler.errors import StalePlanError
from reconciler.execute.executor import ExecOptions, Executor
from reconciler.model import ApiVersion, ApplyResult, ChangeStatus, Outcome, Plan
from reconciler.operations import ApplyOutcome, ExitCode
from reconciler.planfile import load_plan
from reconciler.render.json import render_result_json
from reconciler.render.markdown import render_result_markdown
from reconciler.render.text import render_result_text

REGION = "ap-guangzhou"
SECRET_ID, SECRET_KEY = "AKIDSTOPS0000000000000000000000000", "stops-secret-key"
OLD, KEEP = "skey-01d01d01", "skey-4eep4eep"
PROTECTED = "ins-9r0t9r0t"
EMULATOR3_URL = "http://localhost/"  # the emulator's 3.0 wire layer (2.0 is at /v2/index.php)


def running_ids(n: int) -> list[str]:
    return [f"ins-r{i:07d}" for i in range(n)]


def stopped_ids(n: int) -> list[str]:
    return [f"ins-s{i:07d}" for i in range(n)]


def fleet_data(running: int = 7, stopped: int = 3, *, only_old: int = 1) -> dict[str, Any]:
    """``running`` running instances and ``stopped`` stopped ones, each bound to OLD (to be
    removed) and, except the first ``only_old`` running ones, to KEEP; one protected running
    instance bound to OLD. Instance names say what they are."""
    instances = []
    for iid in running_ids(running):
        instances.append({"id": iid, "name": f"run-{iid[-2:]}", "os": "centos7.6x86_64", "status": 2})
    for iid in stopped_ids(stopped):
        instances.append({"id": iid, "name": f"off-{iid[-2:]}", "os": "centos7.6x86_64", "status": 4})
    instances.append({"id": PROTECTED, "name": "bastion", "os": "centos7.6x86_64", "status": 2})
    all_ids = running_ids(running) + stopped_ids(stopped)
    keep = running_ids(running)[only_old:] + stopped_ids(stopped)
    return {
        "credentials": [{"secret_id": SECRET_ID, "secret_key": SECRET_KEY}],
        "regions": {
            REGION: {
                "instances": instances,
                "keys": [
                    {"id": OLD, "name": "old", "bound": [*all_ids, PROTECTED]},
                    {"id": KEEP, "name": "keep", "bound": keep},
                ],
            }
        },
    }


def desired_text(disruption: str | None = "max_stopped: 2", *, max_stops: int | None = None) -> str:
    text = (
        f"version: 1\nregion: {REGION}\nscope: keys\nkeys:\n"
        f"  {OLD}:\n    instances: []\n"
        f"protected:\n  instances: [{PROTECTED}]\n"
    )
    if disruption is not None:
        settings = "".join(f"  {line}\n" for line in disruption.split("; "))
        text += "disruption:\n  stop_running: true\n" + settings
    text += "safety:\n  max_unbind_percent: 100\n"  # the fleet's point is to remove OLD everywhere
    if max_stops is not None:
        text += f"  max_stops: {max_stops}\n"
    return text


def make_client(app: EmulatorApp, api: ApiVersion, **options: Any) -> CloudClient:
    credentials = Credentials(SECRET_ID, SECRET_KEY)
    if api is ApiVersion.V2:
        return CvmClient(
            credentials, REGION, endpoint=EMULATOR_URL, transport=transport(app), rate_limit=None, **options
        )
    return Api3Client(credentials, REGION, endpoint=EMULATOR3_URL, transport=transport(app), rate_limit=None)


def plan_for(app: EmulatorApp, api: ApiVersion, tmp_path: Path, text: str, **options: Any) -> Plan:
    path = tmp_path / "bindings.yaml"
    path.write_text(text)
    desired = load_paths([path]).by_region[REGION]
    client = make_client(app, api, **options)
    return build_plan(desired, observe_for_plan(client, desired), endpoint="test", api=api)


class Poller(threading.Thread):
    """Polls DescribeInstances (its own client, real HTTP) while apply runs; records the most
    of ``watched`` seen not running at once, and every state seen of the protected one."""

    def __init__(self, app: EmulatorApp, api: ApiVersion, watched: list[str]) -> None:
        super().__init__(daemon=True)
        self.client = make_client(app, api)
        self.watched = watched
        self.done = threading.Event()
        self.max_down = 0
        self.polls = 0
        self.protected_states: set[str] = set()

    def run(self) -> None:
        while not self.done.is_set():
            found = {i.instance_id: i for i in self.client.describe_instances([*self.watched, PROTECTED])}
            down = sum(1 for iid in self.watched if found[iid].state.value != "running")
            self.max_down = max(self.max_down, down)
            self.protected_states.add(found[PROTECTED].state.value)
            self.polls += 1
            time.sleep(0.002)


def final_states(app: EmulatorApp, api: ApiVersion, ids: list[str], **options: Any) -> dict[str, str]:
    client = make_client(app, api, **options)
    return {i.instance_id: i.state.value for i in client.describe_instances(ids)}


def bindings(app: EmulatorApp) -> set[tuple[str, str]]:
    return set(app.state.bindings(REGION))


def only(states: dict[str, str], ids: list[str]) -> dict[str, str]:
    return {iid: states[iid] for iid in ids}


def fast() -> ExecOptions:
    """Polls for an emulator whose operations take hundredths of a second."""
    return ExecOptions(poll_initial=0.01, poll_max=0.05)


def check_final(app: EmulatorApp, api: ApiVersion, running: int, stopped: int, **options: Any) -> None:
    states = final_states(app, api, [*running_ids(running), *stopped_ids(stopped), PROTECTED], **options)
    assert only(states, running_ids(running)) == dict.fromkeys(running_ids(running), "running")
    assert only(states, stopped_ids(stopped)) == dict.fromkeys(stopped_ids(stopped), "stopped")
    assert states[PROTECTED] == "running"
    live = bindings(app)
    assert not {(OLD, iid) for iid in running_ids(running) + stopped_ids(stopped)} & live
    assert (OLD, PROTECTED) in live


def power_actions(app: EmulatorApp) -> list[tuple[str, tuple[str, ...]]]:
    power = ("StopInstances", "StartInstances")
    return [(m.action, m.instance_ids) for m in app.state.mutations if m.action in power]


APIS = [ApiVersion.V2, ApiVersion.V3]


# --------------------------------------------------------------------------- the plan


@pytest.mark.parametrize("api", APIS, ids=["2.0", "3.0"])
def test_the_plan_schedules_running_instances_and_round_trips(api: ApiVersion, tmp_path: Path) -> None:
    app = EmulatorApp(FleetState.from_data(fleet_data(5, 2)))
    plan = plan_for(app, api, tmp_path, desired_text("max_stopped: 2; stop_type: soft_first"))
    assert plan.stops is not None and plan.stops.budget == 2
    assert set(plan.stops.instance_ids) == set(running_ids(5))
    assert [len(r.instance_ids) for r in plan.stops.rounds] == [2, 2, 1]
    by = {(c.key_id, c.instance_id): c for c in plan.changes}
    # the plan records each scheduled instance's prior state: running, in the API's words
    assert {s.prior_state for s in plan.stops.stops} == {"RUNNING" if api is ApiVersion.V3 else "2 (running)"}
    assert all(s.prior_state == by[(OLD, s.instance_id)].instance_state for s in plan.stops.stops)
    for iid in running_ids(5):
        change = by[(OLD, iid)]
        assert change.status is ChangeStatus.READY and change.action == STOP_ACTION
        assert "round" in change.reason and "of 3" in change.reason
    # the instance whose only key is OLD carries the last-key warning
    assert by[(OLD, running_ids(5)[0])].warnings and not by[(OLD, running_ids(5)[1])].warnings
    for iid in stopped_ids(2):
        assert by[(OLD, iid)].action == "unbind" and by[(OLD, iid)].status is ChangeStatus.READY
    assert by[(OLD, PROTECTED)].status is ChangeStatus.PROTECTED
    # batches hold only the unbinds that need no stop
    batched = {iid for b in plan.batches for iid in b.instance_ids}
    assert batched == set(stopped_ids(2))
    saved = tmp_path / "plan.json"
    saved.write_text(dump_plan(plan))
    assert load_plan(saved.read_text(), str(saved)) == plan


def test_without_disruption_nothing_is_stopped(tmp_path: Path) -> None:
    app = EmulatorApp(FleetState.from_data(fleet_data(4, 2)))
    plan = plan_for(app, ApiVersion.V2, tmp_path, desired_text(None))
    assert plan.stops is None
    assert all(c.status is ChangeStatus.BLOCKED for c in plan.changes if c.instance_id in running_ids(4))
    result = Executor(make_client(app, ApiVersion.V2), plan).run()
    assert result.stops is None
    assert power_actions(app) == []
    assert final_states(app, ApiVersion.V2, running_ids(4)) == dict.fromkeys(running_ids(4), "running")
    assert "stops" not in json.loads(dump_plan(plan))


def test_max_stops_makes_the_plan_unsafe(tmp_path: Path) -> None:
    app = EmulatorApp(FleetState.from_data(fleet_data(4, 0)))
    plan = plan_for(app, ApiVersion.V2, tmp_path, desired_text("max_stopped: 2", max_stops=3))
    assert not plan.safety.safe
    assert "4 stops is over max_stops 3" in plan.safety.violations


# --------------------------------------------------------------------------- apply, real time


@pytest.mark.parametrize("api", APIS, ids=["2.0", "3.0"])
@pytest.mark.parametrize("budget", [1, 3])
def test_apply_keeps_the_budget_and_every_running_instance_runs_again(
    api: ApiVersion, budget: int, tmp_path: Path
) -> None:
    running, stopped = 7, 3
    state = FleetState.from_data(fleet_data(running, stopped), op_seconds=0.03)
    app = EmulatorApp(state)
    plan = plan_for(app, api, tmp_path, desired_text(f"max_stopped: {budget}"))
    poller = Poller(app, api, running_ids(running))
    poller.start()
    options = ExecOptions(poll_initial=0.01, poll_max=0.05)
    result = Executor(make_client(app, api), plan, options=options).run()
    poller.done.set()
    poller.join()
    assert poller.polls > 20
    assert 1 <= poller.max_down <= budget, poller.max_down
    assert result.stops is not None and not result.stops.still_down
    assert result.stops.max_down_at_once <= budget
    assert result.count(Outcome.DONE) == running + stopped, result.results
    assert poller.protected_states == {"running"}
    check_final(app, api, running, stopped)
    # 100 a call and nothing else: stopped instances never started, protected never touched
    stopped_by_calls = {iid for action, ids in power_actions(app) if action == "StopInstances" for iid in ids}
    started = {iid for action, ids in power_actions(app) if action == "StartInstances" for iid in ids}
    assert stopped_by_calls == started == set(running_ids(running))


# --------------------------------------------------------------------------- faults


def _faulty(api: ApiVersion, **rates: float) -> EmulatorApp:
    state = FleetState.from_data(fleet_data(6, 2), op_seconds=0.02)
    return EmulatorApp(state, faults=FaultProfile(seed=7, **rates))


@pytest.mark.parametrize("api", APIS, ids=["2.0", "3.0"])
@pytest.mark.parametrize("fault", ["throttle_rate", "error_rate"])
def test_faults_on_every_call_still_leave_every_instance_running(
    api: ApiVersion, fault: str, tmp_path: Path
) -> None:
    app = _faulty(api, **{fault: 0.25})
    clean_app = EmulatorApp(FleetState.from_data(fleet_data(6, 2)))
    plan = plan_for(clean_app, api, tmp_path, desired_text("max_stopped: 2"))
    result = Executor(make_client(app, api), plan, options=fast()).run()
    assert result.stops is not None
    assert not result.stops.still_down, result.stops
    states = final_states(app, api, running_ids(6))
    assert states == dict.fromkeys(running_ids(6), "running")


def test_a_stuck_soft_stop_is_forced_with_soft_first(tmp_path: Path) -> None:
    api = ApiVersion.V3
    app = _faulty(api, stuck_stop_rate=1.0)
    text = desired_text("max_stopped: 2; stop_type: soft_first; stop_timeout: 10")
    plan = plan_for(app, api, tmp_path, text)
    result = Executor(make_client(app, api), plan, options=fast()).run()
    assert result.stops is not None and not result.stops.still_down
    hard = [m for m in app.state.mutations if m.action == "StopInstances"]
    assert len(hard) >= 2  # soft ones failed, then forced
    check_final(app, api, 6, 2)


def test_a_stuck_soft_stop_with_soft_gives_up_and_the_instance_keeps_running(tmp_path: Path) -> None:
    api = ApiVersion.V3
    app = _faulty(api, stuck_stop_rate=1.0)
    plan = plan_for(app, api, tmp_path, desired_text("max_stopped: 3; stop_type: soft; stop_timeout: 10"))
    result = Executor(make_client(app, api), plan, options=fast()).run()
    assert result.stops is not None and not result.stops.still_down
    failed = {r.instance_id for r in result.results if r.outcome is Outcome.FAILED}
    assert failed == set(running_ids(6))
    assert all("not stopped" in r.reason for r in result.results if r.outcome is Outcome.FAILED)
    assert final_states(app, api, running_ids(6)) == dict.fromkeys(running_ids(6), "running")


# --------------------------------------------------------------------------- interruption


@pytest.mark.parametrize("api", APIS, ids=["2.0", "3.0"])
def test_ctrl_c_starts_every_instance_it_stopped(api: ApiVersion, tmp_path: Path) -> None:
    state = FleetState.from_data(fleet_data(8, 0), op_seconds=0.03)
    app = EmulatorApp(state)
    plan = plan_for(app, api, tmp_path, desired_text("max_stopped: 2"))
    stop = threading.Event()

    def interrupt_after_first_stop() -> None:
        while not any(m.action == "StopInstances" for m in state.mutations):
            time.sleep(0.001)
        stop.set()

    threading.Thread(target=interrupt_after_first_stop, daemon=True).start()
    result = Executor(
        make_client(app, api), plan, options=ExecOptions(poll_initial=0.01, poll_max=0.05), stop=stop
    ).run()
    assert result.interrupted
    assert result.stops is not None and not result.stops.still_down
    assert final_states(app, api, running_ids(8)) == dict.fromkeys(running_ids(8), "running")
    stopped = {iid for action, ids in power_actions(app) if action == "StopInstances" for iid in ids}
    assert 1 <= len(stopped) <= 2
    assert sum(1 for r in result.results if r.outcome is Outcome.NOT_ATTEMPTED) >= 6


# --------------------------------------------------------------------------- fake clock


def test_fake_clock_rolling_schedule_never_exceeds_the_budget(tmp_path: Path) -> None:
    """Every state change stamped on one fake clock: from the mutation log, at no moment are
    more than the budget down (a stop makes an instance down at its call, a start makes it up
    op_seconds after its call)."""
    fake = FakeTime()
    state = FleetState.from_data(fleet_data(9, 1), clock=fake.clock, op_seconds=40.0)
    app = EmulatorApp(state)
    text = desired_text("max_stopped: 3; stop_timeout: 300")
    plan = plan_for(app, ApiVersion.V2, tmp_path, text, clock=fake.clock)
    options = ExecOptions(clock=fake.clock, sleep=fake.sleep, poll_initial=1.0, poll_max=5.0)
    started = fake.now
    client = make_client(app, ApiVersion.V2, clock=fake.clock, sleep=fake.sleep)
    result: ApplyResult = Executor(client, plan, options=options).run()
    assert result.stops is not None and not result.stops.still_down
    events: list[tuple[float, int]] = []
    for m in state.mutations:
        if m.action == "StopInstances":
            events += [(m.time, +1)] * len(m.instance_ids)
        elif m.action == "StartInstances":
            events += [(m.time + 40.0, -1)] * len(m.instance_ids)
    down = peak = 0
    for _, delta in sorted(events, key=lambda e: (e[0], e[1])):
        down += delta
        peak = max(peak, down)
    assert peak == 3
    # wall time: 3 rounds of stop + unbind + start (40 s each here), polls add a little
    assert fake.now - started < 3 * 3 * 40.0 * 1.6
    check_final(app, ApiVersion.V2, 9, 1, clock=fake.clock)


def _cli_plan(tmp_path: Path, running: int, stopped: int, *options: str) -> str:
    """``cvmkeys plan`` of ``desired_text("max_stopped: 2")`` over ``fleet_data(running, stopped)``."""
    fleet = tmp_path / "fleet.json"
    fleet.write_text(json.dumps(fleet_data(running, stopped)))
    path = tmp_path / "bindings.yaml"
    path.write_text(desired_text("max_stopped: 2"))
    code, out, err = run_cli("plan", str(path), "--emulator", str(fleet), *options)
    assert code == 0, out + err
    return out


def test_cli_plan_shows_the_stops(tmp_path: Path) -> None:
    out = _cli_plan(tmp_path, 3, 1)
    assert "Stops" in out and "3 instances go down, at most 2 at once" in out
    assert json.loads(_cli_plan(tmp_path, 3, 1, "--format", "json"))["stops"]["budget"] == 2


def test_cli_plan_of_stops_only_does_not_say_nothing_is_ready(tmp_path: Path) -> None:
    """Every change behind a stop: no unbind waves, but the plan must not read "nothing is ready
    to unbind" above "Plan: 3 to unbind"."""
    out = _cli_plan(tmp_path, 3, 0)
    assert "nothing is ready" not in out
    assert "Calls: no unbind waves; the stopped instances are unbound in their rounds (Stops)." in out
    assert "Plan: 3 to unbind" in out


@pytest.mark.parametrize("api", APIS, ids=["2.0", "3.0"])
def test_a_start_that_fails_for_good_is_reported_first_and_stops_no_further_instance(
    api: ApiVersion, tmp_path: Path
) -> None:
    state = FleetState.from_data(fleet_data(6, 0), op_seconds=0.01)
    app = EmulatorApp(state, faults=FaultProfile.only("error", 1.0, actions=["StartInstances"]))
    clean_app = EmulatorApp(FleetState.from_data(fleet_data(6, 0)))
    plan = plan_for(clean_app, api, tmp_path, desired_text("max_stopped: 2"))
    result = Executor(make_client(app, api), plan, options=fast()).run()
    assert result.stops is not None
    down = {i.instance_id for i in result.stops.still_down}
    assert len(down) == 2  # the first two stopped; after their starts failed, no further stop
    stopped = {iid for action, ids in power_actions(app) if action == "StopInstances" for iid in ids}
    assert stopped == down
    starts = [ids for action, ids in power_actions(app) if action == "StartInstances"]
    assert starts == []  # every StartInstances was refused by the fault, none carried out
    assert ApplyOutcome(plan, result).exit_code is ExitCode.ERROR
    text = render_result_text(result, color=False, plan=plan)
    assert text.splitlines()[1].startswith("STILL DOWN: 2 instances cvmkeys stopped did not run again")
    assert "Start it, or apply the plan again." in text
    markdown = render_result_markdown(result, plan)
    assert "[!CAUTION]" in markdown.split("####")[0]
    data = json.loads(render_result_json(result))
    assert {i["instance_id"] for i in data["stops"]["still_down"]} == down
    # the same plan again, the fault gone, starts them
    healthy = EmulatorApp(state)
    again = Executor(make_client(healthy, api), plan, options=fast())
    again.check_fresh()
    second = again.run()
    assert second.stops is not None and not second.stops.still_down
    assert final_states(healthy, api, running_ids(6)) == dict.fromkeys(running_ids(6), "running")
    assert not {(OLD, iid) for iid in running_ids(6)} & bindings(healthy)


@pytest.mark.parametrize("api", APIS, ids=["2.0", "3.0"])
def test_the_stale_check_expects_the_plans_own_stops_and_nothing_else(
    api: ApiVersion, tmp_path: Path
) -> None:
    state = FleetState.from_data(fleet_data(3, 2))
    app = EmulatorApp(state)
    plan = plan_for(app, api, tmp_path, desired_text("max_stopped: 2"))
    client = make_client(app, api)
    # What a killed apply of this plan leaves: a scheduled instance stopped and unbound.
    client.stop_instances([running_ids(3)[0]])
    client.unbind([OLD], [running_ids(3)[0]])
    fresh = Executor(client, plan).check_fresh()
    assert (OLD, running_ids(3)[0]) in fresh.done
    # An instance the plan unbinds while stopped, started by someone else: stale.
    client.start_instances([stopped_ids(2)[0]])
    with pytest.raises(StalePlanError, match=stopped_ids(2)[0]):
        Executor(client, plan).check_fresh()
    # Without the schedule the same stopped instance would be stale too (the plan saw it running).
    assert plan.stops is not None
    bare = dataclasses.replace(plan, stops=None)
    client.stop_instances([stopped_ids(2)[0]])
    client.stop_instances([running_ids(3)[1]])
    with pytest.raises(StalePlanError, match=running_ids(3)[1]):
        Executor(client, bare).check_fresh()
    Executor(client, plan).check_fresh()
