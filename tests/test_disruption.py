"""Issue 14, the pure part: the ``disruption`` block as loaded, and the stop schedule.

The schedule is checked against an oracle that does not share its logic: the instances that
must be scheduled are those where the diff, run again on the same fleet with every running
instance stopped, finds a ready unbind. Random fleets (hypothesis) cover every scope, states,
Windows, protected keys and instances, and budgets; the loader tests read real files and
check the exact ``FILE:LINE:COL`` messages.
"""

from __future__ import annotations

import math
from dataclasses import replace
from fractions import Fraction
from pathlib import Path
from typing import Any

import pytest
import support
from hypothesis import given, settings
from hypothesis import strategies as st
from support import observed

from reconciler.core.diff import diff
from reconciler.core.disruption import (
    DEFAULT_DURATIONS,
    DISABLED,
    UNBIND_KEYS_PER_CALL_V3,
    PhaseDurations,
    StopSchedule,
    running_in_scope,
    schedule_for,
    stop_budget,
)
from reconciler.core.safety import check_stops, merge_limits
from reconciler.desired.loader import load_paths
from reconciler.errors import InputError
from reconciler.model import (
    ChangeStatus,
    Desired,
    Disruption,
    Instance,
    InstanceState,
    Observed,
    SafetyLimits,
    Scope,
    StopType,
)

RUNNING, STOPPED, STARTING, BUSY = "running", "stopped", "starting", "busy"
# The API-neutral states (both APIs map into them); the API's own word is the state's name here.
_STATE = {
    RUNNING: InstanceState.RUNNING,
    STOPPED: InstanceState.STOPPED,
    STARTING: InstanceState.STARTING,
    BUSY: InstanceState.BUSY,
}


def instance(iid: str, state: str = RUNNING, *, windows: bool = False) -> Instance:
    os_name = "Windows Server 2019" if windows else "centos7.6x86_64"
    return Instance(iid, f"name-{iid}", _STATE[state], state, os_name)


def is_running(inst: Instance) -> bool:
    return inst.state is InstanceState.RUNNING


def stopped_copy(inst: Instance) -> Instance:
    return replace(inst, state=InstanceState.STOPPED, api_state=STOPPED)


def desired(keys: dict[str, list[str]], disruption: Disruption | None, **kw: Any) -> Desired:
    """``support.desired`` with a ``disruption`` block (or none)."""
    return support.desired(keys, disruption=disruption, **kw)


def schedule(d: Desired, o: Observed, **kw: object) -> StopSchedule:
    return schedule_for(d, o, diff(d, o).changes, **kw)  # type: ignore[arg-type]


def ids(n: int) -> list[str]:
    return [f"ins-{i:08d}" for i in range(n)]


ON = Disruption(stop_running=True)


# --------------------------------------------------------------------------- small cases


def test_without_the_block_or_with_stop_running_false_nothing_is_scheduled() -> None:
    o = observed({"skey-aaaaaaaa": ["ins-00000001"]}, [instance("ins-00000001")])
    for block in (None, Disruption(stop_running=False, max_stopped=50)):
        d = desired({"skey-aaaaaaaa": []}, block)
        result = schedule(d, o)
        assert result == DISABLED and result.stops == () and result.rounds == () and not result.enabled
        # The change itself stays what it was: blocked, with the reason.
        (change,) = diff(d, o).changes
        assert change.status is ChangeStatus.BLOCKED and "running" in change.reason


def test_running_instances_are_scheduled_once_stopped_ones_are_not() -> None:
    o = observed(
        {"skey-aaaaaaaa": ["ins-00000001", "ins-00000002"], "skey-bbbbbbbb": ["ins-00000001"]},
        [instance("ins-00000001"), instance("ins-00000002", STOPPED)],
    )
    d = desired({"skey-aaaaaaaa": [], "skey-bbbbbbbb": []}, ON)
    result = schedule(d, o)
    (only,) = result.stops
    assert only.instance_id == "ins-00000001" and only.key_ids == ("skey-aaaaaaaa", "skey-bbbbbbbb")
    assert only.removes_last_key  # both of its keys go
    # 2.0: one key a call, so two unbind calls while it is down.
    assert only.unbind_calls == 2
    d_ = DEFAULT_DURATIONS
    assert only.downtime == d_.soft_stop + 2 * d_.unbind + d_.start
    assert only.worst_downtime == 300 + d_.hard_stop + 2 * d_.unbind + d_.start  # soft_first
    # 3.0: both keys in one call.
    v3 = schedule(d, o, unbind_keys_per_call=UNBIND_KEYS_PER_CALL_V3)
    assert v3.stops[0].unbind_calls == 1
    # The stopped instance's change is ready as it always was; it is not stopped again or started.
    ready = [c.instance_id for c in diff(d, o).changes if c.status is ChangeStatus.READY]
    assert ready == ["ins-00000002"]


def test_protected_windows_busy_starting_and_typo_instances_are_never_scheduled() -> None:
    running = [
        instance("ins-00000001"),  # protected instance
        instance("ins-00000002", windows=True),  # no API unbinds Windows
        instance("ins-00000003", BUSY),
        instance("ins-00000004", STARTING),
        instance("ins-aaaaaaab"),  # the live instance a typo in the file meant
        instance("ins-00000005"),  # the one that goes down
        instance("ins-00000006"),  # bound to a protected key only
    ]
    bound = [i.instance_id for i in running if i.instance_id != "ins-00000006"]
    o = observed({"skey-aaaaaaaa": bound, "skey-pppppppp": ["ins-00000006"]}, running)
    # ins-aaaaaaac does not exist: one edit from ins-aaaaaaab, so nothing is unbound from that one.
    d = desired(
        {"skey-aaaaaaaa": ["ins-aaaaaaac"], "skey-pppppppp": []},
        ON,
        protected_instances=frozenset({"ins-00000001"}),
        protected_keys=frozenset({"skey-pppppppp"}),
    )
    assert schedule(d, o).instance_ids == ("ins-00000005",)


def test_a_protected_instance_is_not_scheduled_even_if_a_change_says_blocked() -> None:
    # Defence in depth: the schedule takes the protected set itself, not only the changes' status.
    o = observed({"skey-aaaaaaaa": ["ins-00000001"]}, [instance("ins-00000001")])
    unprotected = desired({"skey-aaaaaaaa": []}, ON)
    changes = diff(unprotected, o).changes
    protected = replace(unprotected, protected_instances=frozenset({"ins-00000001"}))
    assert schedule_for(unprotected, o, changes).instance_ids == ("ins-00000001",)
    assert schedule_for(protected, o, changes).stops == ()


def test_rounds_budget_and_estimates() -> None:
    names = ids(7)
    o = observed({"skey-aaaaaaaa": names, "skey-bbbbbbbb": names[:2]}, [instance(i) for i in names])
    d = desired(
        {"skey-aaaaaaaa": [], "skey-bbbbbbbb": []}, Disruption(True, max_stopped=3, stop_type=StopType.HARD)
    )
    durations = PhaseDurations(soft_stop=50, hard_stop=10, unbind=5, start=40)
    result = schedule(d, o, durations=durations)
    assert result.budget == 3 and result.budget_reason == "max_stopped 3"
    assert (
        [r.instance_ids for r in result.rounds]
        == [
            (*names[:2], names[2]),  # the two with two keys (longest) first, then by ID
            tuple(names[3:6]),
            (names[6],),
        ]
    )
    # hard: 10 s stop, 5 s an unbind call, 40 s start.
    assert [r.duration for r in result.rounds] == [60, 55, 55]
    assert result.wall_time == 170
    assert result.total_downtime == 2 * 60 + 5 * 55
    assert result.rolling_estimate == pytest.approx((2 * 60 + 5 * 55) / 3)
    assert result.rolling_estimate <= result.wall_time <= result.worst_wall_time
    assert result.stop_calls == result.start_calls == 3
    assert [s.round for s in result.stops] == [0, 0, 0, 1, 1, 1, 2]


def test_stops_and_starts_go_100_a_call() -> None:
    names = ids(250)
    o = observed({"skey-aaaaaaaa": names}, [instance(i) for i in names])
    result = schedule(desired({"skey-aaaaaaaa": []}, Disruption(True, max_stopped=250)), o)
    assert len(result.rounds) == 1 and result.stop_calls == 3 and result.start_calls == 3


@pytest.mark.parametrize(
    ("percent", "running", "max_stopped", "budget"),
    [
        (10, 15, 100, 1),  # 1.5 rounds down to 1: the share is never exceeded
        (10, 30, 100, 3),
        (10, 39, 100, 3),
        (29, 100, 100, 29),  # 29/100 exactly, not the float just below 0.29
        (0.29, 10_000, 100, 29),
        (1, 50, 100, 1),  # 0.5 rounds down to 0: at least 1
        (50, 10, 2, 2),  # max_stopped is smaller: it wins
        (100, 0, 5, 1),  # nothing running in scope: the budget is still at least 1
    ],
)
def test_percent_budget_rounds_down_and_is_at_least_one(
    percent: float, running: int, max_stopped: int, budget: int
) -> None:
    got, reason = stop_budget(Disruption(True, max_stopped=max_stopped, max_stopped_percent=percent), running)
    assert got == budget
    if budget < max_stopped:
        assert reason.startswith(f"max_stopped_percent {percent:g} of {running} running instances in scope")
    else:
        assert reason == f"max_stopped {max_stopped}"


def test_percent_base_is_the_running_instances_in_scope() -> None:
    names = ids(10)
    # Scope keys: the instances bound to the declared key, and those declared. ins-00000009 is
    # bound only to an undeclared key: out of scope. ins-00000008 is stopped: not running.
    o = observed(
        {"skey-aaaaaaaa": names[:8], "skey-zzzzzzzz": names[9:]},
        [instance(i) for i in names[:8]] + [instance(names[8], STOPPED), instance(names[9])],
    )
    d = desired(
        {"skey-aaaaaaaa": [*names[:4], names[8]]}, Disruption(True, max_stopped=10, max_stopped_percent=50)
    )
    assert running_in_scope(d, o) == frozenset(names[:8])
    result = schedule(d, o)
    assert result.running_in_scope == 8 and result.budget == 4
    assert set(result.instance_ids) == set(names[4:8])


def test_max_stops_violation_is_reported() -> None:
    names = ids(5)
    o = observed({"skey-aaaaaaaa": names}, [instance(i) for i in names])
    result = schedule(desired({"skey-aaaaaaaa": []}, ON), o)
    assert result.stop_count == 5
    assert check_stops(result.stop_count, SafetyLimits(max_stops=4)) == ("5 stops is over max_stops 4",)
    assert check_stops(result.stop_count, SafetyLimits(max_stops=5)) == ()
    assert check_stops(result.stop_count, SafetyLimits()) == ()  # no default cap
    # The command line wins over the file, as for the other limits.
    assert merge_limits(SafetyLimits(max_stops=10), SafetyLimits(max_stops=2)).max_stops == 2
    assert merge_limits(SafetyLimits(max_stops=10), SafetyLimits(max_unbinds=3)).max_stops == 10


# --------------------------------------------------------------------------- random fleets

STATES = st.sampled_from([RUNNING, RUNNING, STOPPED, STARTING, BUSY])


@st.composite
def fleets(draw: st.DrawFn) -> tuple[Desired, Observed, SafetyLimits]:
    n = draw(st.integers(1, 40))
    names = ids(n)
    instances = [instance(i, draw(STATES), windows=draw(st.integers(0, 9)) == 0) for i in names]
    key_ids = [f"skey-{c * 8}" for c in "abcdef"[: draw(st.integers(1, 6))]]
    bindings = {k: sorted(draw(st.sets(st.sampled_from(names)))) for k in key_ids}
    declared = {k: sorted(draw(st.sets(st.sampled_from(names)))) for k in key_ids if draw(st.booleans())}
    block = draw(
        st.none()
        | st.builds(
            Disruption,
            stop_running=st.booleans() | st.just(True),
            max_stopped=st.integers(1, 12),
            max_stopped_percent=st.none() | st.floats(0.01, 100, allow_nan=False),
            stop_type=st.sampled_from(StopType),
            stop_timeout=st.integers(10, 3600),
        )
    )
    d = desired(
        declared,
        block,
        scope=draw(st.sampled_from(Scope)),
        protected_instances=frozenset(draw(st.sets(st.sampled_from(names), max_size=4))),
        protected_keys=frozenset(draw(st.sets(st.sampled_from(key_ids), max_size=1))),
    )
    limits = SafetyLimits(max_stops=draw(st.none() | st.integers(0, 40)))
    return d, observed(bindings, instances), limits


def oracle(d: Desired, o: Observed) -> dict[str, set[str]]:
    """What must be scheduled, found without the schedule's logic: the ready unbinds on the
    originally running instances when every running instance is stopped instead."""
    was_running = {iid for iid, inst in o.instances.items() if is_running(inst)}
    all_stopped = replace(
        o, instances={iid: stopped_copy(i) if iid in was_running else i for iid, i in o.instances.items()}
    )
    expected: dict[str, set[str]] = {}
    for change in diff(d, all_stopped).changes:
        if change.status is ChangeStatus.READY and change.instance_id in was_running:
            expected.setdefault(change.instance_id, set()).add(change.key_id)
    return expected


@settings(max_examples=300, deadline=None)
@given(fleets())
def test_schedule_properties_on_random_fleets(fleet: tuple[Desired, Observed, SafetyLimits]) -> None:
    d, o, limits = fleet
    result = schedule(d, o)
    block = d.disruption
    if block is None or not block.stop_running:
        assert result == DISABLED
        return
    expected = oracle(d, o)

    # Every running instance with a planned unbind is scheduled exactly once, with its keys.
    assert sorted(result.instance_ids) == sorted(set(result.instance_ids)) == sorted(expected)
    assert {s.instance_id: set(s.key_ids) for s in result.stops} == expected
    # Never a protected instance, never one that was not running.
    for stop in result.stops:
        assert stop.instance_id not in d.protected_instances
        assert is_running(o.instances[stop.instance_id])

    # The budget: never more than max_stopped, nor (rounded down, at least 1) the percentage.
    running = len(running_in_scope(d, o))
    assert result.running_in_scope == running >= result.stop_count
    assert 1 <= result.budget <= block.max_stopped
    if block.max_stopped_percent is not None:
        share = math.floor(Fraction(repr(block.max_stopped_percent)) * running / 100)
        assert result.budget <= max(1, share)
        assert result.budget == min(block.max_stopped, max(1, share))
    else:
        assert result.budget == block.max_stopped
    # Rounds partition the stops; none is over the budget; all but the last are full.
    assert [i for r in result.rounds for i in r.instance_ids] == list(result.instance_ids)
    assert all(len(r.instance_ids) <= result.budget for r in result.rounds)
    assert all(len(r.instance_ids) == result.budget for r in result.rounds[:-1])
    assert [r.index for r in result.rounds] == list(range(len(result.rounds)))
    assert len(result.rounds) == math.ceil(result.stop_count / result.budget)
    for r in result.rounds:
        assert r.stop_calls == r.start_calls == math.ceil(len(r.instance_ids) / 100)
        assert {s.round for s in result.stops if s.instance_id in r.instance_ids} == {r.index}

    # Downtime is stop + unbind calls + start, with the assumed durations; estimates are ordered.
    du = result.durations
    for stop in result.stops:
        stop_time = du.hard_stop if block.stop_type is StopType.HARD else du.soft_stop
        assert stop.unbind_calls == len(stop.key_ids)  # 2.0: one key a call
        assert stop.downtime == stop_time + stop.unbind_calls * du.unbind + du.start
        assert stop.downtime <= stop.worst_downtime
        live = {k for k, pair in o.keys.items() if stop.instance_id in pair.bound_instance_ids}
        assert stop.removes_last_key == (live == set(stop.key_ids))
    assert result.total_downtime == pytest.approx(sum(s.downtime for s in result.stops))
    assert result.rolling_estimate <= result.wall_time + 1e-9
    assert result.wall_time <= result.worst_wall_time + 1e-9
    if result.stops:
        assert result.rolling_estimate >= max(s.downtime for s in result.stops) - 1e-9

    # max_stops: a violation exactly when the schedule stops more than it allows.
    violations = check_stops(result.stop_count, limits)
    assert bool(violations) == (limits.max_stops is not None and result.stop_count > limits.max_stops)


# --------------------------------------------------------------------------- the desired file

HEAD = "version: 1\nregion: gz\nkeys:\n  skey-aaaaaaaa:\n    instances: [ins-aaaaaaaa]\n"


def write(folder: Path, name: str, text: str) -> Path:
    path = folder / name
    path.write_text(text, encoding="utf-8")
    return path


def problems(*paths: Path) -> list[str]:
    with pytest.raises(InputError) as info:
        load_paths(list(paths))
    return [str(p) for p in info.value.problems]


def test_the_block_is_loaded_with_its_defaults(tmp_path: Path) -> None:
    full = write(
        tmp_path,
        "a.yaml",
        HEAD + "disruption:\n  stop_running: true\n  max_stopped: 5.0\n  max_stopped_percent: 10\n"
        "  stop_type: hard\n  stop_timeout: 120\nsafety:\n  max_stops: 20\n",
    )
    gz = load_paths([full]).by_region["ap-guangzhou"]
    assert gz.disruption == Disruption(True, 5, 10.0, StopType.HARD, 120)
    assert isinstance(gz.disruption.max_stopped, int)
    assert gz.safety.max_stops == 20
    short = write(tmp_path, "b.yaml", HEAD + "disruption: {stop_running: true}\n")
    assert load_paths([short]).by_region["ap-guangzhou"].disruption == Disruption(
        stop_running=True,
        max_stopped=1,
        max_stopped_percent=None,
        stop_type=StopType.SOFT_FIRST,
        stop_timeout=300,
    )
    assert load_paths([write(tmp_path, "c.yaml", HEAD)]).by_region["ap-guangzhou"].disruption is None


def test_bad_values_point_at_file_line_column(tmp_path: Path) -> None:
    bad = write(
        tmp_path,
        "bad.yaml",
        HEAD + "disruption:\n"  # line 6
        "  max_stopped: 0\n"
        "  max_stopped_percent: 0\n"
        "  stop_type: sofft\n"
        "  stop_timeout: 5\n"  # line 10
        "  stop_later: true\n"
        "safety:\n"
        "  max_stops: -1\n",
    )
    f = str(bad)
    assert problems(bad) == [
        f"{f}:7:3: missing required field 'stop_running' (the opt-in itself: 'stop_running: true' "
        "lets cvmkeys stop running instances)",
        f"{f}:7:16: 'max_stopped' must be at least 1, got 0",
        f"{f}:8:24: 'max_stopped_percent' must be above 0, got 0",
        f"{f}:9:14: 'stop_type' must be one of soft, soft_first, hard; got a string ('sofft')",
        f"{f}:10:17: 'stop_timeout' must be at least 10, got 5",
        f"{f}:11:3: unknown field 'stop_later' (allowed: stop_running, max_stopped, "
        "max_stopped_percent, stop_type, stop_timeout)",
        f"{f}:13:14: 'max_stops' must be at least 0, got -1",
    ]
    more = write(
        tmp_path,
        "more.yaml",
        HEAD + "disruption:\n  stop_running: 'yes'\n  max_stopped_percent: .nan\n  stop_timeout: 3601\n"
        "  max_stopped: 2.5\n",
    )
    m = str(more)
    assert problems(more) == [
        f"{m}:7:17: 'stop_running' must be true or false, got a string ('yes')",
        f"{m}:8:24: 'max_stopped_percent' must be a number, got .nan",
        f"{m}:9:17: 'stop_timeout' must be at most 3600, got 3601",
        f"{m}:10:16: 'max_stopped' must be a whole number, got a number (2.5)",
    ]


def test_files_of_a_region_must_have_the_same_block(tmp_path: Path) -> None:
    block = "disruption:\n  stop_running: true\n  max_stopped: 5\n"
    a = write(tmp_path, "a.yaml", HEAD + block)
    same = write(tmp_path, "b.yaml", "version: 1\nregion: ap-guangzhou\n" + block)
    # Equal after defaults: stop_type soft_first written out or left out is the same block.
    spelled = write(tmp_path, "c.yaml", "version: 1\nregion: gz\n" + block + "  stop_type: soft_first\n")
    assert load_paths([a, same, spelled]).by_region["ap-guangzhou"].disruption == Disruption(True, 5)

    other = write(
        tmp_path, "d.yaml", "version: 1\nregion: gz\ndisruption:\n  stop_running: true\n  max_stopped: 3\n"
    )
    assert problems(a, other) == [
        f"{other}:5:16: disruption max_stopped 3 differs from max_stopped 5 at {a}:8:16: "
        "all files for region ap-guangzhou must have the same disruption block"
    ]
    defaulted = write(tmp_path, "e.yaml", "version: 1\nregion: gz\ndisruption: {stop_running: true}\n")
    assert problems(a, defaulted) == [
        f"{defaulted}:3:1: disruption max_stopped 1 (the default) differs from max_stopped 5 at {a}:8:16: "
        "all files for region ap-guangzhou must have the same disruption block"
    ]
    none = write(tmp_path, "f.yaml", "version: 1\nregion: gz\n")
    assert problems(a, none) == [
        f"{none}:1:1: no disruption block in this file, but {a}:6:1 has one: all files for region "
        "ap-guangzhou must have the same disruption block (add it here too, or remove it there)"
    ]
    assert problems(none, a) == [
        f"{a}:6:1: disruption block here, but {none} has none: all files for region ap-guangzhou "
        "must have the same disruption block (add it there too, or remove it here)"
    ]
    # Another region is another question: no conflict.
    shanghai = write(tmp_path, "g.yaml", "version: 1\nregion: sh\n")
    assert set(load_paths([a, shanghai]).by_region) == {"ap-guangzhou", "ap-shanghai"}


def test_max_stops_is_the_strictest_of_the_files(tmp_path: Path) -> None:
    a = write(tmp_path, "a.yaml", HEAD + "safety: {max_stops: 8}\n")
    b = write(tmp_path, "b.yaml", "version: 1\nregion: gz\nsafety: {max_stops: 3}\n")
    c = write(tmp_path, "c.yaml", "version: 1\nregion: gz\n")
    assert load_paths([a, b, c]).by_region["ap-guangzhou"].safety.max_stops == 3


def test_a_loaded_file_schedules_end_to_end(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "a.yaml",
        "version: 1\nregion: gz\nkeys:\n  skey-aaaaaaaa:\n    instances: [ins-00000000]\n"
        "protected:\n  instances: [ins-00000003]\n"
        "disruption:\n  stop_running: true\n  max_stopped: 2\n  stop_type: soft\n",
    )
    d = load_paths([path]).by_region["ap-guangzhou"]
    names = ids(5)
    o = observed(
        {"skey-aaaaaaaa": names},
        [
            instance(names[0]),
            instance(names[1]),
            instance(names[2], STOPPED),
            instance(names[3]),
            instance(names[4]),
        ],
    )
    result = schedule(d, o)
    assert result.stop_type is StopType.SOFT and result.budget == 2
    assert result.instance_ids == (names[1], names[4])  # not allowed there, running, not protected
    assert [r.instance_ids for r in result.rounds] == [(names[1], names[4])]


def test_the_documented_block_loads_as_documented(tmp_path: Path) -> None:
    """docs/disruption.md's first example is a valid block with the values it says."""
    text = (Path(__file__).resolve().parent.parent / "docs" / "disruption.md").read_text(encoding="utf-8")
    sample = text.split("```yaml\n", 1)[1].split("```", 1)[0]
    path = write(tmp_path, "doc.yaml", HEAD + sample)
    gz = load_paths([path]).by_region["ap-guangzhou"]
    assert gz.disruption == Disruption(True, 5, 10.0, StopType.SOFT_FIRST, 300)
    assert gz.safety.max_stops == 20


def test_the_budget_says_which_limit_set_it() -> None:
    def reason(percent: float, running: int) -> str:
        return stop_budget(Disruption(True, max_stopped=100, max_stopped_percent=percent), running)[1]

    assert reason(10, 30) == "max_stopped_percent 10 of 30 running instances in scope = 3"
    assert reason(10, 15) == "max_stopped_percent 10 of 15 running instances in scope (rounded down to 1)"
    assert reason(1, 50) == (
        "max_stopped_percent 1 of 50 running instances in scope (rounded down to 0; at least 1)"
    )
    assert stop_budget(Disruption(True, max_stopped=2, max_stopped_percent=50), 10) == (2, "max_stopped 2")
