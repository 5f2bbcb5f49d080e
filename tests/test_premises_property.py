"""Property test of the last-key guarantee (issue 11): random fleets, two plans made apart for
overlapping desired files, random outside changes between plan and apply, the plans applied in
random order as saved (written, read back, checked fresh, run) against the emulator over its
in-process HTTP transport. No instance is ever left keyless by an apply unless that plan warned
about exactly that instance.
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support import emulator_client

from reconciler.cloud.observe import observe_for_plan
from reconciler.core.document import dump_plan
from reconciler.core.plan import build_plan
from reconciler.desired.loader import load_text
from reconciler.emulator.app import EmulatorApp
from reconciler.emulator.state import FleetState
from reconciler.errors import StalePlanError
from reconciler.execute.executor import Executor
from reconciler.model import Plan
from reconciler.planfile import load_plan

SETTINGS = settings(
    max_examples=int(os.environ.get("CVMKEYS_HYPOTHESIS_EXAMPLES", "60")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
REGION = "ap-guangzhou"
INSTANCES = [f"ins-prop000{n}" for n in range(3)]
KEYS = [f"skey-prop000{n}" for n in range(3)]

bindings_st = st.sets(st.tuples(st.sampled_from(KEYS), st.sampled_from(INSTANCES)))
# A desired file: for some keys, the instances they may stay on (scope keys).
desired_st = st.dictionaries(
    st.sampled_from(KEYS), st.sets(st.sampled_from(INSTANCES), max_size=2), min_size=1
)
outside_st = st.lists(st.tuples(st.sampled_from(KEYS), st.sampled_from(INSTANCES), st.booleans()), max_size=3)


def _fleet(bound: set[tuple[str, str]]) -> FleetState:
    return FleetState.from_data(
        {
            "credentials": [{"secret_id": "AKIDPROPERTY00000000000000000000000", "secret_key": "k"}],
            "regions": {
                REGION: {
                    "instances": [{"id": i, "name": i, "os": "centos", "status": 4} for i in INSTANCES],
                    "keys": [
                        {"id": k, "name": k, "bound": sorted(i for kk, i in bound if kk == k)} for k in KEYS
                    ],
                }
            },
        }
    )


def _desired_text(keys: dict[str, set[str]]) -> str:
    body = "".join(f"  {k}: {{instances: [{', '.join(sorted(v))}]}}\n" for k, v in sorted(keys.items()))
    return f"version: 1\nregion: {REGION}\nkeys:\n{body}"


def _warned(plan: Plan) -> set[str]:
    return {c.instance_id for c in plan.ready_changes if any("last key" in w for w in c.warnings)}


def _keys_on(state: FleetState) -> dict[str, int]:
    counts = dict.fromkeys(INSTANCES, 0)
    for _, iid in state.bindings(REGION):
        counts[iid] += 1
    return counts


@SETTINGS
@given(
    bound=bindings_st,
    first=desired_st,
    second=desired_st,
    before=outside_st,
    between=outside_st,
    order=st.booleans(),
)
def test_no_instance_is_left_keyless_unless_an_applied_plan_warned_about_it(
    bound: set[tuple[str, str]],
    first: dict[str, set[str]],
    second: dict[str, set[str]],
    before: list[tuple[str, str, bool]],
    between: list[tuple[str, str, bool]],
    order: bool,
) -> None:
    state = _fleet(bound)
    client = emulator_client(EmulatorApp(state), REGION)
    plans = []
    for n, keys in enumerate((first, second)):
        desired = load_text(_desired_text(keys), f"file{n}.yaml").by_region[REGION]
        made = build_plan(desired, observe_for_plan(client, desired), endpoint="test")
        plans.append(load_plan(dump_plan(made), f"plan{n}.json"))  # applied as saved
    if order:
        plans.reverse()
    for outside, plan in zip((before, between), plans, strict=True):
        for key_id, iid, now_bound in outside:
            state.set_binding(REGION, key_id, iid, now_bound)
        if plan.has_errors:
            continue  # apply refuses a plan with errors
        had = _keys_on(state)
        executor = Executor(client, plan)
        try:
            executor.check_fresh()
        except StalePlanError:
            assert _keys_on(state) == had  # refused before any unbind
            continue
        executor.run()
        after = _keys_on(state)
        keyless = {iid for iid in INSTANCES if had[iid] and not after[iid]}
        assert keyless <= _warned(plan), f"left keyless unwarned: {sorted(keyless - _warned(plan))}"
    client.close()
