"""Batching unbinds into calls and waves (``core.batching``), for API 2.0 and API 3.0.

The properties every plan must have whatever the algorithm: each planned unbind carried by
exactly one call, never a pair that is not planned, at most 100 keys and 100 instances a call,
an instance in at most one call per wave. The call counts are checked against minimums this
module computes on its own (never with the module under test): 2.0 makes exactly the sum over
keys of ceil(instances / 100); 3.0 never more than that, and fewer when instances lose the same
several keys.
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict

from hypothesis import given, settings
from hypothesis import strategies as st

from reconciler.core.batching import by_signature, make_batches, wave_count
from reconciler.model import Batch, Change, ChangeStatus


def key(n: int) -> str:
    return f"skey-{n:08d}"


def ins(n: int) -> str:
    return f"ins-{n:08d}"


def ready(k: str, i: str) -> Change:
    return Change(k, i, ChangeStatus.READY, "")


Plan = tuple[list[Change], int, int]  # changes, instances per call, keys per call
STATUSES = st.sampled_from([ChangeStatus.READY] * 6 + [ChangeStatus.BLOCKED, ChangeStatus.PROTECTED])


@st.composite
def plans(draw: st.DrawFn) -> Plan:
    """Ready changes (and some blocked/protected ones that must not be called), with real or
    small per-call limits so that splitting is exercised on small examples."""
    n_keys = draw(st.integers(1, 8))
    n_ins = draw(st.integers(1, 260))
    changes: list[Change] = []
    for k in range(n_keys):
        shape = draw(st.sampled_from(["few", "many", "all"]))
        if shape == "all":
            chosen = set(range(n_ins))
        else:
            size = draw(st.integers(0, min(n_ins, 5 if shape == "few" else n_ins)))
            chosen = set(draw(st.permutations(range(n_ins)))[:size])
        for i in sorted(chosen):
            status = draw(STATUSES)
            changes.append(Change(key(k), ins(i), status, ""))
    per_call = draw(st.sampled_from([100, 100, 3, 7]))
    keys_per_call = draw(st.sampled_from([100, 100, 2, 3]))
    return changes, per_call, keys_per_call


def planned(changes: list[Change]) -> set[tuple[str, str]]:
    return {(c.key_id, c.instance_id) for c in changes if c.status is ChangeStatus.READY}


def sum_ceil(pairs: set[tuple[str, str]], per_call: int) -> int:
    """The 2.0 minimum, computed here: each key needs ceil(its instances / per_call) calls."""
    per_key = Counter(k for k, _ in pairs)
    return sum(math.ceil(n / per_call) for n in per_key.values())


def check_shape(
    batches: tuple[Batch, ...], pairs: set[tuple[str, str]], per_call: int, keys_per_call: int
) -> None:
    carried = Counter((k, i) for b in batches for k in b.key_ids for i in b.instance_ids)
    assert set(carried) == pairs  # every planned pair, and no other
    assert all(n == 1 for n in carried.values())  # exactly once
    for b in batches:
        assert 1 <= len(b.instance_ids) <= per_call and 1 <= len(b.key_ids) <= keys_per_call
        assert len(set(b.instance_ids)) == len(b.instance_ids) and len(set(b.key_ids)) == len(b.key_ids)
    per_wave = Counter((b.wave, i) for b in batches for i in b.instance_ids)
    assert all(n == 1 for n in per_wave.values())  # an instance in one call per wave
    assert {b.wave for b in batches} == set(range(wave_count(batches)))  # no empty wave


@settings(max_examples=300, deadline=None)
@given(plans())
def test_api_2_calls_are_exactly_the_sum_over_keys_of_ceil(plan: Plan) -> None:
    changes, per_call, _ = plan
    pairs = planned(changes)
    batches = make_batches(changes, api="2.0", per_call=per_call)
    check_shape(batches, pairs, per_call, 1)
    assert len(batches) == sum_ceil(pairs, per_call)
    # Waves: at least the most keys one instance loses (they pairwise conflict).
    most = max(Counter(i for _, i in pairs).values(), default=0)
    assert wave_count(batches) >= most


@settings(max_examples=300, deadline=None)
@given(plans())
def test_api_3_blocks_cover_the_plan_and_never_call_more_than_2(plan: Plan) -> None:
    changes, per_call, keys_per_call = plan
    pairs = planned(changes)
    batches = make_batches(changes, api="3.0", per_call=per_call, keys_per_call=keys_per_call)
    check_shape(batches, pairs, per_call, keys_per_call)
    assert len(batches) <= sum_ceil(pairs, per_call)


@settings(max_examples=200, deadline=None)
@given(plans(), st.integers(2, 6), st.integers(1, 250))
def test_api_3_is_fewer_calls_when_instances_lose_the_same_several_keys(
    plan: Plan, n_shared_keys: int, n_shared_ins: int
) -> None:
    changes, per_call, _ = plan
    # Beside any plan: instances of their own that all lose the same several keys of their own.
    extra = [ready(key(100 + k), ins(1000 + i)) for k in range(n_shared_keys) for i in range(n_shared_ins)]
    pairs = planned(changes + extra)
    v2 = make_batches(changes + extra, api="2.0", per_call=per_call)
    v3 = make_batches(changes + extra, api="3.0", per_call=per_call)
    check_shape(v3, pairs, per_call, 100)
    assert len(v3) < len(v2) == sum_ceil(pairs, per_call)


@settings(max_examples=200, deadline=None)
@given(plans())
def test_signature_grouping_is_one_wave_when_no_instance_loses_more_than_the_limit(plan: Plan) -> None:
    changes, per_call, keys_per_call = plan
    pairs = planned(changes)
    per_key: dict[str, list[str]] = defaultdict(list)
    for k, i in sorted(pairs):
        per_key[k].append(i)
    batches = tuple(by_signature(per_key, per_call=per_call, keys_per_call=keys_per_call))
    check_shape(batches, pairs, per_call, keys_per_call)
    most = max(Counter(i for _, i in pairs).values(), default=0)
    assert wave_count(batches) == math.ceil(most / keys_per_call)


def test_api_2_keeps_each_key_whole_in_one_wave() -> None:
    # A big key on 250 instances, 30 of which also lose a small key: 3 + 1 calls, 2 waves.
    # (Putting each instance's keys in waves by instance would split the big key: 5 calls.)
    changes = [ready(key(1), ins(n)) for n in range(250)] + [ready(key(2), ins(n)) for n in range(0, 60, 2)]
    batches = make_batches(changes)
    assert len(batches) == 4 and wave_count(batches) == 2
    assert [(b.wave, b.key_ids, len(b.instance_ids)) for b in batches] == [
        (0, (key(1),), 100),
        (0, (key(1),), 100),
        (0, (key(1),), 50),
        (1, (key(2),), 30),
    ]


def test_api_2_colouring_finds_two_waves_for_a_chain_of_keys() -> None:
    # k0-k1-k2-k3-k4 share instances pairwise along the chain: bipartite, so 2 waves.
    changes = []
    for k in range(5):
        changes += [ready(key(k), ins(k)), ready(key(k), ins(k + 1))]
    batches = make_batches(changes)
    assert len(batches) == 5 and wave_count(batches) == 2


def test_api_3_one_call_for_instances_that_lose_the_same_keys() -> None:
    changes = [ready(key(k), ins(i)) for k in range(3) for i in range(80)]
    batches = make_batches(changes, api="3.0")
    assert batches == (Batch(0, (key(0), key(1), key(2)), tuple(ins(i) for i in range(80))),)
    assert len(make_batches(changes, api="2.0")) == 3


def test_api_3_per_key_where_that_is_fewer_calls() -> None:
    # One key on 100 instances; each of them also loses a key of its own. By signature: 100 calls
    # ({k0, own}); per key: 1 + 100 = 101 calls. A second part where per key wins: two keys on 100
    # instances each, overlapping on 50: by signature 3 calls ({a}, {b}, {a, b}), per key 2.
    first = [ready(key(0), ins(i)) for i in range(100)] + [ready(key(1 + i), ins(i)) for i in range(100)]
    second = [ready(key(500), ins(1000 + i)) for i in range(100)]
    second += [ready(key(501), ins(1050 + i)) for i in range(100)]
    batches = make_batches(first + second, api="3.0")
    check_shape(batches, planned(first + second), 100, 100)
    on_first = [b for b in batches if b.instance_ids[0] < ins(1000)]
    on_second = [b for b in batches if b.instance_ids[0] >= ins(1000)]
    assert len(on_first) == 100 and all(len(b.key_ids) == 2 for b in on_first)
    assert len(on_second) == 2 and all(len(b.key_ids) == 1 for b in on_second)
    assert wave_count(batches) == 2  # the parts' waves run side by side


def test_api_3_an_instance_losing_more_than_100_keys_takes_a_wave_per_100() -> None:
    changes = [ready(key(k), ins(i)) for k in range(150) for i in range(3)]
    batches = make_batches(changes, api="3.0")
    assert [(b.wave, len(b.key_ids), len(b.instance_ids)) for b in batches] == [(0, 100, 3), (1, 50, 3)]


def test_only_ready_changes_are_called_and_unknown_api_is_refused() -> None:
    changes = [
        Change(key(1), ins(1), ChangeStatus.BLOCKED, "running"),
        Change(key(1), ins(2), ChangeStatus.PROTECTED, "protected"),
    ]
    assert make_batches(changes) == () == make_batches(changes, api="3.0")
    try:
        make_batches(changes, api="1.0")
    except ValueError as error:
        assert "1.0" in str(error)
    else:
        raise AssertionError("an unknown API version was accepted")
