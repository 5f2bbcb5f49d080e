"""Issue 11 in the diff: a typo never unbinds, missing instances are errors, Windows is unchangeable.

Pure tests of ``core.diff`` (random fleets included), and the same promises end to end: the
real CLI planning against the emulator over its in-process HTTP transport.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from support import desired, observed, run_cli

from reconciler import ids
from reconciler.cloud.client import instance_state
from reconciler.core.diff import (
    Diff,
    allowed_bindings,
    diff,
    is_protected,
    key_findings,
    live_bindings,
    owned_bindings,
)
from reconciler.core.plan import build_plan
from reconciler.desired.loader import load_paths
from reconciler.model import (
    ChangeStatus,
    Desired,
    DesiredKey,
    Instance,
    KeyPair,
    Observed,
    Scope,
    Severity,
)

REGION = "ap-guangzhou"
EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def instance(iid: str, *, os_name: str = "centos7.6x86_64", stopped: bool = True) -> Instance:
    # Built in one place: the Instance fields are changing (status -> state), this keeps the
    # tests to one line to adjust.
    return Instance(iid, f"name-{iid}", *instance_state(4 if stopped else 2), os_name)


# --------------------------------------------------------------------------- a typo in an ID


def test_a_one_character_typo_is_an_error_naming_the_live_instance_and_blocks_its_unbind() -> None:
    obs = observed({"skey-3glfot13": ["ins-1a2b3c4d"]}, [instance("ins-1a2b3c4d")])
    result = diff(desired({"skey-3glfot13": ["ins-1a2b3c4e"]}), obs)
    (finding,) = [f for f in result.findings if f.code == "instance-id-typo"]
    assert finding.severity is Severity.ERROR
    assert "did you mean ins-1a2b3c4d (name-ins-1a2b3c4d)?" in finding.message
    (change,) = result.changes
    assert change.status is ChangeStatus.BLOCKED
    assert "ins-1a2b3c4e" in change.reason and "typo" in change.reason
    assert not any(f.code == "instance-not-found" for f in result.findings)  # said once, precisely


def test_a_swapped_pair_of_characters_is_a_typo_too() -> None:
    obs = observed({"skey-3glfot13": ["ins-1a2b3c4d"]}, [instance("ins-1a2b3c4d")])
    result = diff(desired({"skey-3glfot13": ["ins-1a2b3cd4"]}), obs)
    assert [f.code for f in result.findings if f.severity is Severity.ERROR] == ["instance-id-typo"]
    assert [c.status for c in result.changes] == [ChangeStatus.BLOCKED]


def test_the_typo_is_an_error_even_with_missing_instances_warn() -> None:
    obs = observed({"skey-3glfot13": ["ins-1a2b3c4d"]}, [instance("ins-1a2b3c4d")])
    want = desired({"skey-3glfot13": ["ins-1a2b3c4e"]}, missing_instances_warn=frozenset({"ins-1a2b3c4e"}))
    result = diff(want, obs)
    assert [(f.code, f.severity) for f in result.findings] == [("instance-id-typo", Severity.ERROR)]
    assert [c.status for c in result.changes] == [ChangeStatus.BLOCKED]


def test_a_missing_instance_is_an_error_by_default_and_a_warning_when_the_file_opts_out() -> None:
    obs = observed({"skey-3glfot13": ["ins-1a2b3c4d"]}, [instance("ins-1a2b3c4d")])
    strict = diff(desired({"skey-3glfot13": ["ins-1a2b3c4d", "ins-zzzzzzzz"]}), obs)
    assert [(f.code, f.severity) for f in strict.findings] == [("instance-not-found", Severity.ERROR)]
    assert "missing_instances: warn" in strict.findings[0].message  # says how to opt out
    lenient = diff(
        desired(
            {"skey-3glfot13": ["ins-1a2b3c4d", "ins-zzzzzzzz"]},
            missing_instances_warn=frozenset({"ins-zzzzzzzz"}),
        ),
        obs,
    )
    assert [(f.code, f.severity) for f in lenient.findings] == [("instance-not-found", Severity.WARNING)]


def test_a_plan_with_a_typo_has_errors_and_nothing_ready_on_the_meant_instance() -> None:
    obs = observed(
        {"skey-3glfot13": ["ins-1a2b3c4d", "ins-5e6f7a8b"]},
        [instance("ins-1a2b3c4d"), instance("ins-5e6f7a8b")],
    )
    plan = build_plan(desired({"skey-3glfot13": ["ins-1a2b3c4e"]}), obs, endpoint="test")
    assert plan.has_errors
    assert {c.instance_id for c in plan.ready_changes} == {"ins-5e6f7a8b"}


# --------------------------------------------------------------------------- unchangeable


def test_windows_bindings_are_unchangeable_not_blocked_and_not_actionable() -> None:
    obs = observed(
        {"skey-3glfot13": ["ins-7w7w7w7w", "ins-9c8d7e6f"]},
        [instance("ins-7w7w7w7w", os_name="Windows Server 2019"), instance("ins-9c8d7e6f", stopped=False)],
    )
    plan = build_plan(desired({"skey-3glfot13": []}), obs, endpoint="test")
    statuses = {c.instance_id: c.status for c in plan.changes}
    assert statuses == {"ins-7w7w7w7w": ChangeStatus.UNCHANGEABLE, "ins-9c8d7e6f": ChangeStatus.BLOCKED}
    (windows,) = plan.unchangeable_changes
    assert "Windows" in windows.reason and "no API" in windows.reason
    assert plan.summary.blocked == 1
    assert [c.instance_id for c in plan.actionable_changes] == ["ins-9c8d7e6f"]
    assert plan.batches == ()


def test_only_windows_left_means_nothing_actionable() -> None:
    obs = observed({"skey-3glfot13": ["ins-7w7w7w7w"]}, [instance("ins-7w7w7w7w", os_name="Windows 2012")])
    plan = build_plan(desired({"skey-3glfot13": []}), obs, endpoint="test")
    assert plan.actionable_changes == () and len(plan.unchangeable_changes) == 1


# --------------------------------------------------------------------------- key names, again


def test_key_findings_is_the_one_check_for_absent_keys_and_names() -> None:
    declared = {
        "skey-aaaaaaaa": DesiredKey("skey-aaaaaaaa", frozenset(), name="deploy"),
        "skey-bbbbbbbb": DesiredKey("skey-bbbbbbbb", frozenset()),
    }
    keys = {"skey-aaaaaaaa": KeyPair("skey-aaaaaaaa", "renamed")}
    found = [(f.code, f.key_id) for f in key_findings(declared, keys, REGION)]
    assert found == [("key-name-mismatch", "skey-aaaaaaaa"), ("key-not-found", "skey-bbbbbbbb")]
    keys["skey-aaaaaaaa"] = KeyPair("skey-aaaaaaaa", "deploy")
    keys["skey-bbbbbbbb"] = KeyPair("skey-bbbbbbbb", "anything")
    assert key_findings(declared, keys, REGION) == []


def test_an_unknown_but_well_formed_region_is_a_plan_warning() -> None:
    want = Desired("ap-newplace", Scope.KEYS, {})
    result = diff(want, Observed("ap-newplace", {}, {}))
    assert [(f.code, f.severity) for f in result.findings] == [("region-unknown", Severity.WARNING)]


# --------------------------------------------------------------------------- random fleets

ID_CHARS = "abc01"  # a small alphabet, so that near misses are frequent


@st.composite
def worlds(draw: st.DrawFn) -> tuple[Desired, Observed]:
    body = st.text(ID_CHARS, min_size=8, max_size=8)
    instance_ids = draw(st.lists(body, min_size=1, max_size=10, unique=True))
    live_ids = [f"ins-{i}" for i in instance_ids]
    key_ids = [f"skey-{n:08d}" for n in range(draw(st.integers(1, 4)))]
    instances = [
        instance(
            iid,
            os_name=draw(st.sampled_from(["centos", "centos", "Windows Server"])),
            stopped=draw(st.booleans()) or draw(st.booleans()),
        )
        for iid in live_ids
    ]
    bindings = {k: draw(st.lists(st.sampled_from(live_ids), unique=True, max_size=6)) for k in key_ids}

    def mutate(iid: str) -> str:
        """An ID one edit away (a typo), or a random unrelated one."""
        body = list(iid[4:])
        position = draw(st.integers(0, 7))
        body[position] = draw(st.sampled_from([c for c in ID_CHARS + "xyz" if c != body[position]]))
        return "ins-" + "".join(body)

    def allowed_ids() -> list[str]:
        chosen = draw(st.lists(st.sampled_from(live_ids), unique=True, max_size=4))
        typos = [mutate(i) for i in draw(st.lists(st.sampled_from(live_ids), unique=True, max_size=2))]
        return sorted(set(chosen + typos))

    declared_keys = draw(st.lists(st.sampled_from(key_ids), unique=True, min_size=1))
    scope = draw(st.sampled_from(list(Scope)))
    want = Desired(
        REGION,
        scope,
        {k: DesiredKey(k, frozenset(allowed_ids())) for k in declared_keys},
        protected_keys=frozenset(draw(st.lists(st.sampled_from(key_ids), unique=True, max_size=1))),
        protected_instances=frozenset(draw(st.lists(st.sampled_from(live_ids), unique=True, max_size=2))),
        extra_instances=frozenset(mutate(i) for i in draw(st.lists(st.sampled_from(live_ids), max_size=1))),
        missing_instances_warn=frozenset(mutate(i) for i in live_ids) if draw(st.booleans()) else frozenset(),
    )
    # The observer asks for every declared instance and every candidate; only live ones answer.
    return want, observed(bindings, instances)


def no_ready_unbind_from_an_instance_the_file_names_only_by_a_near_miss(
    want: Desired, obs: Observed, result: Diff
) -> None:
    absent = want.declared_instances - obs.instances.keys()
    named_by_near_miss = {
        iid
        for iid in obs.instances
        if iid not in want.declared_instances
        and any(ids.edit_distance(iid, a) == ids.NEAR_MISS_DISTANCE for a in absent)
    }
    for change in result.changes:
        if change.instance_id in named_by_near_miss:
            assert change.status is not ChangeStatus.READY, change
    if named_by_near_miss & {b[1] for b in live_bindings(obs.keys)}:
        assert any(f.code == "instance-id-typo" and f.severity is Severity.ERROR for f in result.findings)
    # Every absent declared instance is reported: an error unless every naming file opted out.
    codes = ("instance-not-found", "instance-id-typo")
    reported = {f.instance_id: f for f in result.findings if f.code in codes}
    assert set(reported) == absent
    for iid, finding in reported.items():
        lenient = iid in want.missing_instances_warn and finding.code == "instance-not-found"
        assert finding.severity is (Severity.WARNING if lenient else Severity.ERROR)


def unbinds_are_exactly_owned_minus_allowed_minus_protected_minus_unchangeable(
    want: Desired, obs: Observed, result: Diff
) -> None:
    owned = owned_bindings(want, live_bindings(obs.keys))
    candidates = owned - allowed_bindings(want)
    protected = {b for b in candidates if is_protected(want, b)}
    unchangeable = {b for b in candidates - protected if obs.instances[b[1]].is_windows}
    by_status: dict[ChangeStatus, set[tuple[str, str]]] = {status: set() for status in ChangeStatus}
    for change in result.changes:
        by_status[change.status].add((change.key_id, change.instance_id))
    assert by_status[ChangeStatus.PROTECTED] == protected
    assert by_status[ChangeStatus.UNCHANGEABLE] == unchangeable
    unbinds = by_status[ChangeStatus.READY] | by_status[ChangeStatus.BLOCKED]
    assert unbinds == candidates - protected - unchangeable
    assert len(result.changes) == len(candidates)  # each binding once


@pytest.mark.parametrize(
    "holds",
    [
        no_ready_unbind_from_an_instance_the_file_names_only_by_a_near_miss,
        unbinds_are_exactly_owned_minus_allowed_minus_protected_minus_unchangeable,
    ],
    ids=lambda check: check.__name__,
)
@settings(max_examples=300, deadline=None)
@given(world=worlds())
def test_diff_of_random_worlds(
    holds: Callable[[Desired, Observed, Diff], None], world: tuple[Desired, Observed]
) -> None:
    want, obs = world
    holds(want, obs, diff(want, obs))


def _as_file(want: Desired) -> str:
    """``want`` written as a desired-state file (what a user would write)."""
    allowed = {iid for key in want.keys.values() for iid in key.instances}
    lines = ["version: 1", "region: gz", f"scope: {want.scope.value}"]
    if want.missing_instances_warn:
        lines.append("missing_instances: warn")
    lines.append("keys:")
    for key_id, key in sorted(want.keys.items()):
        lines.append(f"  {key_id}:")
        lines.append(f"    instances: [{', '.join(sorted(key.instances))}]")
    extra = sorted(want.extra_instances - allowed)
    if extra:
        lines.append(f"instances: [{', '.join(extra)}]")
    lines.append("protected:")
    lines.append(f"  keys: [{', '.join(sorted(want.protected_keys))}]")
    lines.append(f"  instances: [{', '.join(sorted(want.protected_instances))}]")
    return "\n".join(lines) + "\n"


@settings(max_examples=100, deadline=None)
@given(worlds())
def test_through_a_real_file_no_typo_ever_becomes_a_ready_unbind(world: tuple[Desired, Observed]) -> None:
    generated, obs = world
    with tempfile.TemporaryDirectory() as scratch:
        path = Path(scratch) / "bindings.yaml"
        path.write_text(_as_file(generated), encoding="utf-8")
        want = load_paths([path]).by_region["ap-guangzhou"]
    plan = build_plan(want, obs, endpoint="test")
    absent = want.declared_instances - obs.instances.keys()
    near = {iid for iid in obs.instances if any(ids.edit_distance(iid, a) == 1 for a in absent)}
    near -= want.declared_instances
    assert not {c.instance_id for c in plan.ready_changes} & near
    if absent and not want.missing_instances_warn:
        assert plan.has_errors  # every missing declared instance is an error by default


# --------------------------------------------------------------------------- end to end


def _fleet_copy(tmp_path: Path) -> Path:
    fleet = tmp_path / "fleet.yaml"
    shutil.copy(EXAMPLES / "fleet.yaml", fleet)
    return fleet


def test_plan_with_a_typo_fails_with_did_you_mean_over_http(tmp_path: Path) -> None:
    fleet = _fleet_copy(tmp_path)
    text = (EXAMPLES / "bindings.yaml").read_text(encoding="utf-8").replace("ins-1a2b3c4d", "ins-1a2b3c4e")
    assert "ins-1a2b3c4e" in text
    wanted = tmp_path / "bindings.yaml"
    wanted.write_text(text, encoding="utf-8")
    code, out, err = run_cli("plan", str(wanted), "--emulator", str(fleet), "--format", "json")
    assert code == 1, out + err
    document = json.loads(out) if out.strip().startswith("{") else None
    shown = out + err
    assert "did you mean ins-1a2b3c4d" in shown
    if document is not None:  # the JSON plan says the same, and nothing is ready on web-1
        ready = {(c["key_id"], c["instance_id"]) for c in document["changes"] if c["status"] == "ready"}
        assert not any(iid == "ins-1a2b3c4d" for _, iid in ready)


def test_plan_shows_windows_as_unchangeable_in_every_format(tmp_path: Path) -> None:
    fleet = _fleet_copy(tmp_path)
    wanted = EXAMPLES / "bindings.yaml"
    code, out, err = run_cli("plan", str(wanted), "--emulator", str(fleet))
    assert code == 0, out + err
    assert "unchangeable: Windows instance" in out and "1 unchangeable" in out
    code, out, _ = run_cli("plan", str(wanted), "--emulator", str(fleet), "--format", "markdown")
    assert "Unchangeable: no API can unbind these (1)" in out
    code, out, _ = run_cli("plan", str(wanted), "--emulator", str(fleet), "--format", "json")
    statuses = {c["instance_id"]: c["status"] for c in json.loads(out)["changes"]}
    assert statuses["ins-7w7w7w7w"] == "unchangeable"


# --------------------------------------------------------------------------- ids helpers


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.text("ab01", min_size=3, max_size=6), min_size=1, max_size=6),
    st.lists(st.text("ab01", min_size=2, max_size=7), max_size=20),
)
def test_the_near_miss_index_agrees_with_the_edit_distance(wanted: list[str], pool: list[str]) -> None:
    found = ids.near_miss_map(wanted, pool)
    for word in set(wanted):
        expected = sorted({c for c in pool if c != word and ids.edit_distance(word, c) == 1})
        assert found.get(word, []) == expected
        assert ids.near_misses(word, pool) == expected


def test_edit_distance_counts_swaps_as_one() -> None:
    assert ids.edit_distance("ins-1a2b3c4d", "ins-1a2b3cd4") == 1
    assert ids.edit_distance("ins-1a2b3c4d", "ins-1a2b3c4e") == 1
    assert ids.edit_distance("abc", "xyz") == 3
    assert ids.edit_distance("abc", "xyz", limit=1) == 2


def test_region_suggestions_for_the_cli() -> None:
    assert ids.region_suggestion("ap-guangzho") == "ap-guangzhou"
    assert ids.region_suggestion("ap-guangzhou") is None
    assert ids.region_suggestion("zz-nowhere") is None
    assert ids.normalize_region("gz") == "ap-guangzhou"
    assert ids.normalize_region("eu-paris") == "eu-paris"
    with pytest.raises(KeyError):
        ids.normalize_region("Mars_1")
    with pytest.raises(KeyError):
        ids.canonical_region("eu-paris")  # the table lookup stays closed (the emulator's)
