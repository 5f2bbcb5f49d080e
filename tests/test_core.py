"""The pure core: diff by scope, blocked reasons, last-key warnings, safety, batching, fingerprints."""

from __future__ import annotations

import math
from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from support import desired, observed

from reconciler.cloud.client import instance_state
from reconciler.core.batching import make_batches, wave_count
from reconciler.core.diff import allowed_bindings, diff, instances_needed, live_bindings, owned_bindings
from reconciler.core.plan import build_plan, fingerprint_of
from reconciler.core.safety import check_safety, merge_limits
from reconciler.model import (
    Change,
    ChangeStatus,
    Desired,
    DesiredKey,
    Instance,
    InstanceState,
    Observed,
    SafetyLimits,
    Scope,
    Severity,
)

REGION = "ap-guangzhou"


def ins(n: int) -> str:
    return f"ins-{n:08d}"


def key(n: int) -> str:
    return f"skey-{n:08d}"


def linux(iid: str, status: int = 4, name: str = "") -> Instance:
    return Instance(iid, name or iid, *instance_state(status), "centos7.6x86_64")


def test_scope_keys_unbinds_only_declared_keys_not_allowed() -> None:
    obs = observed({key(1): [ins(1), ins(2)], key(2): [ins(1)]}, [linux(ins(1)), linux(ins(2))])
    result = diff(desired({key(1): [ins(1)]}), obs)
    assert [(c.key_id, c.instance_id, c.status) for c in result.changes] == [
        (key(1), ins(2), ChangeStatus.READY)
    ]
    assert result.owned_count == 2


def test_scope_instances_owns_every_key_on_declared_instances() -> None:
    obs = observed({key(1): [ins(1), ins(2)], key(2): [ins(1)]}, [linux(ins(1)), linux(ins(2))])
    result = diff(desired({key(1): [ins(1)]}, Scope.INSTANCES), obs)
    assert [(c.key_id, c.instance_id) for c in result.changes] == [(key(2), ins(1))]


def test_scope_instances_extra_instances_are_owned_with_no_key_allowed() -> None:
    obs = observed({key(1): [ins(1), ins(3)]}, [linux(ins(1)), linux(ins(3))])
    result = diff(desired({key(1): [ins(1)]}, Scope.INSTANCES, extra_instances=frozenset({ins(3)})), obs)
    assert [(c.key_id, c.instance_id) for c in result.changes] == [(key(1), ins(3))]


def test_scope_account_owns_everything() -> None:
    obs = observed({key(1): [ins(1)], key(2): [ins(2)]}, [linux(ins(1)), linux(ins(2))])
    result = diff(desired({key(1): [ins(1)]}, Scope.ACCOUNT), obs)
    assert [(c.key_id, c.instance_id) for c in result.changes] == [(key(2), ins(2))]


@pytest.mark.parametrize(
    ("instance", "fragment"),
    [
        (None, "not found"),
        (linux(ins(1), status=2), "running: stop it first"),
        (linux(ins(1), status=20), "busy (20 (key issuing))"),
        (linux(ins(1), status=9), "shutting down"),
        (linux(ins(1), status=33), "maintenance"),
    ],
)
def test_blocked_reasons(instance: Instance | None, fragment: str) -> None:
    obs = observed({key(1): [ins(1)], key(2): [ins(1)]}, [instance] if instance else [])
    (change,) = diff(desired({key(1): []}), obs).changes
    assert change.status is ChangeStatus.BLOCKED
    assert fragment in change.reason
    assert change.warnings == ()


def test_protected_keys_and_instances_are_listed_not_unbound() -> None:
    obs = observed(
        {key(1): [ins(1), ins(2)], key(2): [ins(3)]}, [linux(ins(1)), linux(ins(2)), linux(ins(3))]
    )
    want = desired(
        {key(1): [], key(2): []},
        protected_keys=frozenset({key(2)}),
        protected_instances=frozenset({ins(1)}),
    )
    statuses = {(c.key_id, c.instance_id): c.status for c in diff(want, obs).changes}
    assert statuses == {
        (key(1), ins(1)): ChangeStatus.PROTECTED,
        (key(1), ins(2)): ChangeStatus.READY,
        (key(2), ins(3)): ChangeStatus.PROTECTED,
    }


def test_last_key_warning_exactly_when_no_key_remains() -> None:
    obs = observed(
        {key(1): [ins(1), ins(2)], key(2): [ins(2)], key(3): [ins(3)]},
        [linux(ins(1), name="web-1"), linux(ins(2)), linux(ins(3))],
    )
    result = diff(desired({key(1): [], key(3): []}), obs)
    warned = {c.instance_id: c.warnings for c in result.changes}
    assert "web-1" in warned[ins(1)][0] and "ResetInstancePassword" in warned[ins(1)][0]
    assert warned[ins(2)] == ()  # still has key 2
    assert len(warned[ins(3)]) == 1


def test_findings_missing_key_name_mismatch_missing_instance_and_binding() -> None:
    obs = observed({key(1): [], key(2): []}, [linux(ins(1))], names={key(2): "real"})
    want = Desired(
        REGION,
        Scope.KEYS,
        {
            key(1): DesiredKey(key(1), frozenset({ins(1), ins(9)})),
            key(2): DesiredKey(key(2), frozenset(), name="declared"),
            key(3): DesiredKey(key(3), frozenset()),
        },
    )
    findings = {(f.code, f.severity) for f in diff(want, obs).findings}
    assert findings == {
        ("key-not-found", Severity.ERROR),
        ("key-name-mismatch", Severity.ERROR),
        ("instance-not-found", Severity.ERROR),  # an error unless the file says missing_instances: warn
        ("binding-missing", Severity.INFO),
    }


def test_safety_limits() -> None:
    assert check_safety(62, 1000, SafetyLimits(max_unbinds=50)).violations == (
        "62 unbinds is over max_unbinds 50",
    )
    verdict = check_safety(4, 10, SafetyLimits())
    assert not verdict.safe and "over max_unbind_percent 30" in verdict.violations[0]
    assert check_safety(9, 9, SafetyLimits()).safe  # percent not checked under 10 owned
    assert check_safety(3, 10, SafetyLimits()).safe
    merged = merge_limits(SafetyLimits(50, 30), SafetyLimits(None, 80))
    assert merged == SafetyLimits(50, 80)


def change(k: str, i: str) -> Change:
    return Change(k, i, ChangeStatus.READY, "")


def test_batching_waves_for_instances_with_several_keys() -> None:
    changes = [change(key(1), ins(1)), change(key(2), ins(1)), change(key(2), ins(2))]
    batches = make_batches(changes)
    assert wave_count(batches) == 2
    assert [(b.wave, b.key_ids, b.instance_ids) for b in batches] == [
        (0, (key(2),), (ins(1), ins(2))),
        (1, (key(1),), (ins(1),)),
    ]


def test_batching_splits_at_100() -> None:
    changes = [change(key(1), ins(n)) for n in range(250)]
    assert [len(b.instance_ids) for b in make_batches(changes)] == [100, 100, 50]


@st.composite
def worlds(draw: st.DrawFn) -> tuple[Desired, Observed]:
    n_keys = draw(st.integers(1, 6))
    n_ins = draw(st.integers(1, 12))
    keys = [key(k) for k in range(n_keys)]
    instances = [
        Instance(
            ins(i),
            f"n{i}",
            *instance_state(draw(st.sampled_from([2, 4, 4, 4, 20]))),
            draw(st.sampled_from(["centos", "Windows"])),
        )
        for i in range(n_ins)
    ]
    live = {k: sorted(draw(st.sets(st.sampled_from([i.instance_id for i in instances])))) for k in keys}
    declared = draw(st.sets(st.sampled_from(keys), min_size=1))
    allowed = {k: draw(st.sets(st.sampled_from([i.instance_id for i in instances]))) for k in declared}
    scope = draw(st.sampled_from(list(Scope)))
    protected_i = draw(st.sets(st.sampled_from([i.instance_id for i in instances]), max_size=2))
    protected_k = draw(st.sets(st.sampled_from(keys), max_size=1))
    want = Desired(
        REGION,
        scope,
        {k: DesiredKey(k, frozenset(v)) for k, v in allowed.items()},
        protected_keys=frozenset(protected_k),
        protected_instances=frozenset(protected_i),
    )
    return want, observed(live, instances)


@settings(max_examples=300, deadline=None)
@given(worlds())
def test_unbinds_are_exactly_owned_minus_allowed_minus_protected(world: tuple[Desired, Observed]) -> None:
    want, obs = world
    live = {(k, i) for k, p in obs.keys.items() for i in p.bound_instance_ids}
    if want.scope is Scope.KEYS:
        owned = {b for b in live if b[0] in want.keys}
    elif want.scope is Scope.INSTANCES:
        owned = {b for b in live if b[1] in want.declared_instances}
    else:
        owned = live
    allowed = {(k, i) for k, d in want.keys.items() for i in d.instances}
    protected = {b for b in owned if b[0] in want.protected_keys or b[1] in want.protected_instances}
    plan = build_plan(want, obs, endpoint="test")
    unbinds = {(c.key_id, c.instance_id) for c in plan.changes if c.status is not ChangeStatus.PROTECTED}
    assert unbinds == owned - allowed - protected
    assert {
        (c.key_id, c.instance_id) for c in plan.changes if c.status is ChangeStatus.PROTECTED
    } == protected - allowed
    for c in plan.changes:
        inst = obs.instances[c.instance_id]
        if c.status is ChangeStatus.READY:
            assert inst.state is InstanceState.STOPPED and not inst.is_windows
    # Batches carry each ready change exactly once, no instance twice in a wave, <= 100 per call.
    ready = sorted((c.key_id, c.instance_id) for c in plan.ready_changes)
    assert sorted((k, i) for b in plan.batches for k in b.key_ids for i in b.instance_ids) == ready
    per_wave = Counter((b.wave, i) for b in plan.batches for i in b.instance_ids)
    assert all(n == 1 for n in per_wave.values())
    by_wave_key = Counter((b.wave, b.key_ids) for b in plan.batches)
    sizes = Counter()
    for b in plan.batches:
        sizes[(b.wave, b.key_ids)] += len(b.instance_ids)
    assert all(by_wave_key[wk] == math.ceil(sizes[wk] / 100) for wk in by_wave_key)


@st.composite
def rough_worlds(draw: st.DrawFn) -> tuple[Desired, Observed]:
    """Worlds with what the one-pass diff must get right: key pairs that list an instance twice,
    declared keys that do not exist, extra instances, declared instances that do not exist,
    instances bound to no key, and an Observed holding only some instances."""
    n_ins = draw(st.integers(1, 10))
    ids = [ins(i) for i in range(n_ins)]
    pool = [*ids, ins(98), ins(99)]  # the last two exist nowhere
    keys = [key(k) for k in range(draw(st.integers(1, 5)))]
    live = {k: draw(st.lists(st.sampled_from(ids), max_size=6)) for k in keys}  # duplicates allowed
    declared = draw(st.sets(st.sampled_from([*keys, key(50)]), min_size=1))
    allowed = {k: draw(st.sets(st.sampled_from(pool), max_size=4)) for k in declared}
    scope = draw(st.sampled_from(list(Scope)))
    listed = set().union(*allowed.values())
    unlisted = [i for i in pool if i not in listed]
    extra: set[str] = set()
    if scope is Scope.INSTANCES and unlisted:
        extra = draw(st.sets(st.sampled_from(unlisted), max_size=3))
    want = Desired(
        REGION,
        scope,
        {k: DesiredKey(k, frozenset(v)) for k, v in allowed.items()},
        protected_keys=frozenset(draw(st.sets(st.sampled_from(keys), max_size=1))),
        protected_instances=frozenset(draw(st.sets(st.sampled_from(ids), max_size=2))),
        extra_instances=frozenset(extra),
        missing_instances_warn=frozenset(pool),  # absent instances: warnings, not the subject here
    )
    statuses = {i: draw(st.sampled_from([2, 4, 4, 20])) for i in ids}
    everything = observed(live, [linux(i, statuses[i]) for i in ids])
    needed = instances_needed(want, everything.keys)
    return want, Observed(
        REGION, everything.keys, {i: v for i, v in everything.instances.items() if i in needed}
    )


@settings(max_examples=400, deadline=None)
@given(rough_worlds())
def test_the_one_pass_diff_agrees_with_the_set_definitions(world: tuple[Desired, Observed]) -> None:
    want, obs = world
    live = live_bindings(obs.keys)
    owned = owned_bindings(want, live)
    allowed = allowed_bindings(want)
    seen = {i for _, i in live}
    protected = {b for b in owned if b[0] in want.protected_keys or b[1] in want.protected_instances}
    assert instances_needed(want, obs.keys) == {i for _, i in owned - allowed - protected} | (
        want.declared_instances - seen
    )
    result = diff(want, obs)
    assert [(c.key_id, c.instance_id) for c in result.changes] == sorted(owned - allowed)
    assert result.owned_count == len(owned)
    exists = seen | obs.instances.keys()
    missing = {b for b in allowed - live if b[0] in obs.keys and b[1] in exists}
    assert result.missing_count == len(missing)
    assert {(f.key_id, f.instance_id) for f in result.findings if f.code == "binding-missing"} == missing
    absent = {f.instance_id for f in result.findings if f.code in ("instance-not-found", "instance-id-typo")}
    assert absent == want.declared_instances - exists
    # The last-key warning: exactly when ready changes remove every key the instance has.
    ready = {(c.key_id, c.instance_id) for c in result.changes if c.status is ChangeStatus.READY}
    for c in result.changes:
        keyless = c.status is ChangeStatus.READY and {b for b in live if b[1] == c.instance_id} <= ready
        assert bool(c.warnings) is keyless


def test_fingerprint_changes_when_touched_state_changes() -> None:
    obs = observed({key(1): [ins(1)]}, [linux(ins(1))])
    before = fingerprint_of(obs, [key(1)], [ins(1)])
    assert before == fingerprint_of(obs, [key(1)], [ins(1)])
    started = observed({key(1): [ins(1)]}, [linux(ins(1), status=2)])
    assert fingerprint_of(started, [key(1)], [ins(1)]).digest != before.digest
    rebound = observed({key(1): [ins(1), ins(2)]}, [linux(ins(1))])
    assert fingerprint_of(rebound, [key(1)], [ins(1)]).digest != before.digest
    unrelated = observed({key(1): [ins(1)], key(2): [ins(5)]}, [linux(ins(1))])
    assert fingerprint_of(unrelated, [key(1)], [ins(1)]).digest == before.digest
