"""Chaos suite: random fleets, random desired files in every scope, random fault profiles (up to
30 % of all requests, every fault kind, every action), apply re-run until it converges.

Each seed builds its own world from ``bench.fleetgen`` (50-300 instances), plans it on a
fault-free view (what the reviewer approved), then applies through a client whose every request
may be throttled, answered 6000/6200 or 502/503, dropped, partially carried out (5400), carried
out with its answer lost, or answered too late. After each run, a fresh plan is made (through
the faulty API, as an operator would) and applied, at most ``MAX_RUNS`` times. Invariants,
checked on the emulator's mutation log and state, never on what the tool says about itself:

* every mutation ever carried out was an unbind in the FIRST approved plan's ready set;
* that ready set is exactly what the generator's ground truth says (owned, not allowed, not
  protected, on a shut-down Linux instance): no binding outside the scope, no protected or
  allowed binding, nothing blocked was touched;
* the final state is the initial one minus that ready set, nothing more, nothing less;
* no binding is unbound twice (a retry never repeats work a lost answer already did);
* every run's report matches the log: ``done`` bindings are gone and were unbound in that run,
  ``failed`` / ``not-attempted`` / ``blocked`` / ``protected`` ones are still there (except a
  failed one the report itself calls "outcome unknown"), and every binding unbound in a run is
  reported ``done`` or "outcome unknown";
* it converges within ``MAX_RUNS``; if it did not, the last plan names exactly what remains.

A seed's faults hit every request, only the unbinds, or only the reads (half, a quarter, a
quarter of the seeds), so that both the mutation paths and the read paths see 30 % at times.

Seeds alternate between the two CVM APIs (odd: 2.0, even: 3.0). Over 3.0 the faults are 3.0's:
``RequestLimitExceeded``, ``InternalError`` / ``ResourceUnavailable`` (ambiguous on a mutating
call), 502/503, dropped connections, lost and late answers, and ``lag``: the instances' latest
operation keeps showing the previous one for a while (sometimes longer than the executor's lag
allowance, which it must settle by observing the bindings). 3.0 has no partial success.

Time is virtual: the emulator, the client (signatures, backoff) and the executor (polls) share
one clock that sleeping advances, so status 20 ("key issuing") lasts seconds of virtual time
and a seed runs in a fraction of a real second.

    python -m pytest -m chaos tests/test_chaos.py                    # the default seeds
    CVMKEYS_CHAOS_SEEDS=200 CVMKEYS_CHAOS_REPORT=chaos.json python -m pytest -m chaos tests/test_chaos.py

``CVMKEYS_CHAOS_REPORT`` writes the figures (faults injected by kind, runs to converge,
mutations outside the plan) as JSON; docs/reliability.md quotes them.
"""

from __future__ import annotations

import json
import os
import random
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from support import UNBIND, api_client, mutated_pairs

from bench.fleetgen import SECRET_ID, SECRET_KEY, Generated, generate
from reconciler.cloud.base import CloudClient
from reconciler.cloud.credentials import Credentials
from reconciler.cloud.observe import observe_for_plan
from reconciler.core.plan import build_plan
from reconciler.desired.loader import load_paths
from reconciler.emulator.app import EmulatorApp, transport
from reconciler.emulator.faults import ALL_FAULT_KINDS, FAULT_KINDS, FaultProfile
from reconciler.emulator.state import FleetState
from reconciler.errors import CloudError, StalePlanError
from reconciler.execute.executor import ExecOptions, Executor
from reconciler.model import Desired, Outcome, Plan

pytestmark = pytest.mark.chaos

DEFAULT_SEEDS = 40  # about 0.05 s each on the 2-core CI machine
SEEDS = int(os.environ.get("CVMKEYS_CHAOS_SEEDS", str(DEFAULT_SEEDS)))
FIRST_SEED = int(os.environ.get("CVMKEYS_CHAOS_FIRST_SEED", "1"))
MAX_RUNS = 6  # applies per seed, each of a fresh plan
MAX_FAULT_RATE = 0.30
# The fault kinds of each API (2.0 has partial success; 3.0 has the latest operation lagging).
KINDS = {"2.0": FAULT_KINDS, "3.0": tuple(k for k in ALL_FAULT_KINDS if k not in ("partial", "stuck_stop"))}

Binding = tuple[str, str]


class VirtualClock:
    """Real time at the start, then only what sleeping adds: shared by emulator, client and
    executor, so asynchronous operations finish while the executor waits, at no real cost."""

    def __init__(self) -> None:
        self._now = time.time()
        self._lock = threading.Lock()

    def __call__(self) -> float:
        with self._lock:
            return self._now

    def sleep(self, seconds: float) -> None:
        with self._lock:
            self._now += max(0.0, seconds)


@dataclass
class SeedFigures:
    """What one seed did, for the report."""

    seed: int
    api: str
    scope: str
    instances: int
    keys: int
    fault_rate: float
    target: str  # which requests faults may hit (TARGETS)
    ready: int = 0
    runs: int = 0
    converged: bool = False
    plans_failed: int = 0  # fresh plans whose reads failed for good (re-planned)
    stale_refusals: int = 0
    aborted_runs: int = 0  # runs stopped early by a read that failed for good
    mutations: int = 0
    mutations_outside_plan: int = 0
    mutations_repeated: int = 0  # a binding unbound by two calls (double work)
    faults: Counter[str] = field(default_factory=Counter)
    requests: Counter[str] = field(default_factory=Counter)


FIGURES: list[SeedFigures] = []


@pytest.fixture(scope="module", autouse=True)
def _report() -> Iterator[None]:
    yield
    target = os.environ.get("CVMKEYS_CHAOS_REPORT")
    if target and FIGURES:
        Path(target).write_text(json.dumps(summarise(FIGURES), indent=2, sort_keys=True) + "\n")


def summarise(figures: list[SeedFigures]) -> dict[str, Any]:
    """The figures of all seeds run, as docs/reliability.md reports them."""
    faults: Counter[str] = Counter()
    requests: Counter[str] = Counter()
    for f in figures:
        faults.update(f.faults)
        requests.update(f.requests)
    return {
        "seeds": len(figures),
        "apis": dict(Counter(f.api for f in figures)),
        "first_seed": min(f.seed for f in figures),
        "scopes": dict(Counter(f.scope for f in figures)),
        "fault_targets": dict(Counter(f.target for f in figures)),
        "instances": {"min": min(f.instances for f in figures), "max": max(f.instances for f in figures)},
        "fault_rate": {
            "min": round(min(f.fault_rate for f in figures), 3),
            "max": round(max(f.fault_rate for f in figures), 3),
        },
        "planned_unbinds": sum(f.ready for f in figures),
        "apply_runs": sum(f.runs for f in figures),
        "converged": sum(f.converged for f in figures),
        "runs_to_converge": dict(sorted(Counter(f.runs for f in figures if f.converged).items())),
        "plans_failed_and_retried": sum(f.plans_failed for f in figures),
        "stale_refusals": sum(f.stale_refusals for f in figures),
        "aborted_runs": sum(f.aborted_runs for f in figures),
        "requests": sum(requests.values()),
        "requests_by_action": dict(sorted(requests.items())),
        "faults_injected": sum(faults.values()),
        "faults_by_kind": {kind: faults[kind] for kind in ALL_FAULT_KINDS},
        "mutations": sum(f.mutations for f in figures),
        "mutations_outside_plan": sum(f.mutations_outside_plan for f in figures),
        "mutations_repeated": sum(f.mutations_repeated for f in figures),
    }


# --------------------------------------------------------------------------- the world


# Which requests a seed's faults may hit: all of them, only the unbinds (the mutation paths),
# or only the reads (plan, stale check, polls, re-observation, verification).
def targets(api: str) -> dict[str, frozenset[str] | None]:
    return {
        "all": None,
        "unbinds": frozenset({UNBIND[api]}),
        "reads": frozenset({"DescribeKeyPairs", "DescribeInstances"}),
    }


def random_profile(rng: random.Random, seed: int, target: str = "all", api: str = "2.0") -> FaultProfile:
    """Up to 30 % of requests faulted, split at random between a random subset of the kinds."""
    total = rng.uniform(0.0, MAX_FAULT_RATE)
    kinds = [k for k in KINDS[api] if rng.random() < 0.7] or [rng.choice(KINDS[api])]
    weights = {k: rng.random() for k in kinds}
    share = sum(weights.values())
    rate = {k: total * w / share for k, w in weights.items()}
    return FaultProfile(
        seed=seed,
        throttle_rate=rate.get("throttle", 0.0),
        error_rate=rate.get("error", 0.0),
        http_error_rate=rate.get("http", 0.0),
        drop_rate=rate.get("drop", 0.0),
        partial_rate=rate.get("partial", 0.0),
        lost_response_rate=rate.get("lost", 0.0),
        slow_rate=rate.get("slow", 0.0),
        # Over the client's 10 s timeout (a read timeout, the call carried out), or just slow.
        slow_seconds=rng.choice([30.0, 0.002]),
        lag_rate=rate.get("lag", 0.0),
        # Virtual seconds: within the executor's 10 s lag allowance, or beyond it.
        lag_seconds=rng.choice([0.5, 4.0, 15.0]),
        actions=targets(api)[target],
    )


def owned(gen: Generated) -> set[Binding]:
    """The live bindings the desired file's scope owns, from the generator's ground truth."""
    if gen.scope == "keys":
        return {b for b in gen.live if b[0] in gen.declared_keys}
    if gen.scope == "instances":
        return {b for b in gen.live if b[1] in gen.declared_instances}
    return set(gen.live)


def expected_ready(gen: Generated) -> set[Binding]:
    """What a correct plan unbinds: owned, not allowed, not protected, on a shut-down Linux box."""
    return {
        b
        for b in owned(gen) - gen.allowed
        if b[1] not in gen.protected_instances and gen.statuses[b[1]] == (4, False)
    }


def make_client(
    state: FleetState, clock: VirtualClock, faults: FaultProfile | None, api: str = "2.0"
) -> tuple[CloudClient, EmulatorApp]:
    app = EmulatorApp(state, clock=clock, faults=faults)
    client = api_client(
        api,
        Credentials(SECRET_ID, SECRET_KEY),
        "ap-guangzhou",
        transport=transport(app),
        clock=clock,
        sleep=clock.sleep,
        rng=random.Random(0),
    )
    return client, app


def ready_of(plan: Plan) -> set[Binding]:
    return {(c.key_id, c.instance_id) for c in plan.ready_changes}


def fresh_plan(client: CloudClient, desired: Desired, figures: SeedFigures) -> Plan:
    """A plan through the faulty API; an operator re-runs plan when its reads fail for good."""
    for _ in range(20):
        try:
            return build_plan(desired, observe_for_plan(client, desired), endpoint="chaos", api=client.api)
        except CloudError:
            figures.plans_failed += 1
    raise AssertionError("20 plans in a row failed to read the fleet")


# --------------------------------------------------------------------------- one seed


def run_seed(seed: int, tmp_path: Path, api: str = "2.0") -> SeedFigures:
    rng = random.Random(seed)
    scope = ("keys", "instances", "account")[seed % 3]
    n_instances = rng.randint(50, 300)
    n_keys = rng.randint(4, max(5, n_instances // 6))
    gen = generate(
        n_instances,
        n_keys,
        seed=seed,
        remove_fraction=rng.uniform(0.05, 0.6),
        scope=scope,
        protect_share=rng.choice([0.0, 0.02, 0.08]),
        declared_share=rng.uniform(0.3, 1.0),
    )
    target = ("all", "all", "unbinds", "reads")[rng.randrange(4)]
    faults = random_profile(rng, seed, target, api)
    figures = SeedFigures(seed, api, scope, n_instances, n_keys, sum(faults.rates().values()), target)
    clock = VirtualClock()
    op_seconds = rng.choice([0.0, 0.5, 3.0])
    state = FleetState.from_data(gen.fleet, clock=clock, op_seconds=op_seconds)
    path = tmp_path / f"bindings-{seed}.yaml"
    path.write_text(gen.desired_text)
    desired = load_paths([path]).by_region[gen.region]

    # The plan the reviewer approved: made on a fault-free view.
    clean, _ = make_client(state, clock, None, api)
    approved = build_plan(desired, observe_for_plan(clean, desired), endpoint="chaos", api=clean.api)
    approved_ready = ready_of(approved)
    figures.ready = len(approved_ready)
    assert approved_ready == expected_ready(gen), "the plan is not what the file and the fleet say"
    initial = state.bindings(gen.region)
    assert initial == set(gen.live)

    client, app = make_client(state, clock, faults, api)
    # Few attempts per binding, so that failures reach the report and later runs finish them.
    attempts = rng.choice([1, 2, 3])
    options = ExecOptions(max_attempts=attempts, poll_initial=0.5, clock=clock, sleep=clock.sleep)
    plan = approved
    seen_mutations = 0
    for _ in range(MAX_RUNS):
        if not plan.ready_changes:
            figures.converged = True
            break
        figures.runs += 1
        before = state.bindings(gen.region)
        try:
            Executor(client, plan).check_fresh()
        except StalePlanError:
            figures.stale_refusals += 1
        except CloudError:
            pass  # the stale check could not read: nothing was attempted
        else:
            result = Executor(client, plan, options=options).run()
            figures.aborted_runs += bool(result.stopped_reason)
            run_mutations = state.mutations[seen_mutations:]
            check_run(plan, result.results, before, state.bindings(gen.region), run_mutations, api)
        seen_mutations = len(state.mutations)
        clock.sleep(op_seconds + 1.0)  # the operator looks at the result before planning again
        plan = fresh_plan(client, desired, figures)

    final = state.bindings(gen.region)
    mutated = [(m.action, *pair) for m in state.mutations for pair in mutated_pairs(m)]
    figures.mutations = len(mutated)
    figures.mutations_outside_plan = sum(
        1 for action, kid, iid in mutated if action != UNBIND[api] or (kid, iid) not in approved_ready
    )
    figures.mutations_repeated = len(mutated) - len(set(mutated))
    figures.faults = Counter(f.kind for f in app.injected_faults)
    figures.requests = Counter(app.request_counts)
    FIGURES.append(figures)

    assert figures.mutations_outside_plan == 0, mutated
    # A retry never names a binding that is already gone, even after a lost answer.
    assert figures.mutations_repeated == 0, mutated
    assert not final - initial, "a binding appeared"
    assert initial - final <= approved_ready
    if figures.converged:
        assert final == initial - approved_ready
    else:  # not converged within MAX_RUNS: the last plan says exactly what remains
        assert ready_of(plan) == approved_ready & final
    return figures


def check_run(
    plan: Plan,
    results: Any,
    before: set[Binding],
    after: set[Binding],
    mutations: list[Any],
    api: str = "2.0",
) -> None:
    """This run's report against this run's mutation log and the state before and after."""
    unbound_now = {pair for m in mutations for pair in mutated_pairs(m)}
    assert {m.action for m in mutations} <= {UNBIND[api]}
    assert unbound_now <= ready_of(plan), "a mutation outside this run's plan"
    assert before - after == unbound_now & before
    reported: dict[Binding, Any] = {(r.key_id, r.instance_id): r for r in results}
    assert set(reported) == {(c.key_id, c.instance_id) for c in plan.changes}
    for binding, r in reported.items():
        if r.outcome is Outcome.DONE:
            assert binding not in after and binding in unbound_now, r
        elif r.outcome is Outcome.FAILED and "outcome unknown" in r.reason:
            pass  # honest: the call was sent and no read afterwards succeeded
        else:
            assert binding in after, r  # failed, not attempted, blocked, protected: still there
            assert r.outcome is not Outcome.FAILED or r.reason, r
    honest = {b for b, r in reported.items() if r.outcome is Outcome.FAILED and "outcome unknown" in r.reason}
    done = {b for b, r in reported.items() if r.outcome is Outcome.DONE}
    assert unbound_now & before <= done | honest, "unbound but not reported done"


@pytest.mark.parametrize(
    ("seed", "api"), [(seed, ("3.0", "2.0")[seed % 2]) for seed in range(FIRST_SEED, FIRST_SEED + SEEDS)]
)
def test_chaos_apply_converges_within_the_approved_plan(seed: int, api: str, tmp_path: Path) -> None:
    run_seed(seed, tmp_path, api)


@pytest.mark.parametrize("api", ["2.0", "3.0"])
def test_profiles_cover_every_fault_kind_and_stay_under_30_percent(api: str) -> None:
    rng = random.Random(0)
    profiles = [random_profile(rng, n, api=api) for n in range(50)]
    assert all(0 < sum(p.rates().values()) <= MAX_FAULT_RATE + 1e-9 for p in profiles)
    for kind in KINDS[api]:
        assert any(p.rates()[kind] > 0 for p in profiles), kind


# --------------------------------------------------------------------------- stops (issue 14)

STOP_SEEDS = max(1, SEEDS // 4)
POWER = ("StopInstances", "StartInstances")


def run_stop_seed(seed: int, tmp_path: Path) -> None:
    """A ``disruption`` block on a random fleet, applied through random faults (stops and
    starts included). Invariant: every instance running before apply is running after it, at
    most one re-apply of the same plan later; stopped ones are never started; only the
    scheduled instances are ever stopped, each under the budget; every unbind is approved."""
    rng = random.Random(10_000 + seed)
    scope = ("keys", "instances", "account")[seed % 3]
    n_instances = rng.randint(40, 120)
    gen = generate(
        n_instances,
        rng.randint(4, max(5, n_instances // 6)),
        seed=seed,
        remove_fraction=rng.uniform(0.1, 0.6),
        scope=scope,
        protect_share=rng.choice([0.0, 0.05]),
        declared_share=rng.uniform(0.5, 1.0),
        linux_stopped_share=rng.uniform(0.3, 0.7),
    )
    # The generator makes 10 % running and the rest of the non-stopped in odd states; here
    # about half run, so that there is a schedule worth the name.
    for entry in gen.fleet["regions"][gen.region]["instances"]:
        if entry["status"] not in (2, 4):
            entry["status"] = 2
            gen.statuses[entry["id"]] = (2, gen.statuses[entry["id"]][1])
    budget = rng.randint(1, 12)
    stop_type = rng.choice(["soft", "soft_first", "hard"])
    text = gen.desired_text.rstrip("\n") + (
        f"\ndisruption:\n  stop_running: true\n  max_stopped: {budget}\n  stop_type: {stop_type}\n"
    )
    path = tmp_path / f"bindings-stops-{seed}.yaml"
    path.write_text(text)
    desired = load_paths([path]).by_region[gen.region]
    clock = VirtualClock()
    op_seconds = rng.choice([0.5, 3.0, 20.0])
    state = FleetState.from_data(gen.fleet, clock=clock, op_seconds=op_seconds)
    clean, _ = make_client(state, clock, None)
    approved = build_plan(desired, observe_for_plan(clean, desired), endpoint="chaos")
    assert approved.stops is not None
    scheduled = set(approved.stops.instance_ids)
    running_before = {iid for iid, (status, _) in gen.statuses.items() if status == 2}
    assert scheduled <= running_before and not scheduled & gen.protected_instances

    faults = random_profile(rng, seed, "all")
    client, _ = make_client(state, clock, faults)
    options = ExecOptions(max_attempts=rng.choice([2, 3]), poll_initial=0.5, clock=clock, sleep=clock.sleep)
    applied = 0
    for _ in range(10):  # the apply, then at most one re-apply of the same plan
        if applied == 2:
            break
        try:
            Executor(client, approved).check_fresh()
        except CloudError:
            continue  # the stale check could not read: nothing was attempted, try again
        Executor(client, approved, options=options).run()
        applied += 1
        clock.sleep(op_seconds * 3 + 1.0)  # let operations in flight settle
        if all(state.instance(gen.region, iid).status == 2 for iid in running_before):
            break
    runs = applied
    states = {iid: state.instance(gen.region, iid).status for iid in gen.statuses}
    down = sorted(iid for iid in running_before if states[iid] != 2)
    assert not down, f"running before apply, not running after it (runs: {runs}): {down}"

    stopped_ids = {iid for m in state.mutations if m.action == "StopInstances" for iid in m.instance_ids}
    started_ids = {iid for m in state.mutations if m.action == "StartInstances" for iid in m.instance_ids}
    assert stopped_ids <= scheduled and started_ids <= scheduled, "a power call outside the schedule"
    assert all(states[iid] in (4, 20) for iid, (status, _) in gen.statuses.items() if status == 4)
    approved_ready = ready_of(approved)
    unbinds = {(m.key_id, iid) for m in state.mutations if m.action not in POWER for iid in m.instance_ids}
    assert unbinds <= approved_ready, "an unbind outside the approved plan"
    # The budget, from the emulator's log on the shared clock: down from the stop call until
    # op_seconds after the start call (when the emulator shows it running).
    events: list[tuple[float, int]] = []
    for m in state.mutations:
        if m.action == "StopInstances":
            events += [(m.time, 1)] * len(m.instance_ids)
        elif m.action == "StartInstances":
            events += [(m.time + op_seconds, -1)] * len(m.instance_ids)
    down_now = peak = 0
    for _, delta in sorted(events, key=lambda e: (e[0], e[1])):
        down_now += delta
        peak = max(peak, down_now)
    assert peak <= budget, f"{peak} down at once, budget {budget}"


@pytest.mark.parametrize("seed", range(FIRST_SEED, FIRST_SEED + STOP_SEEDS))
def test_chaos_every_running_instance_runs_again(seed: int, tmp_path: Path) -> None:
    run_stop_seed(seed, tmp_path)
