"""Waiting for an asynchronous call (``reconciler.execute.operation_wait``): the verdict a fresh
observation gives for one call, on both APIs, and the poll-time policy. The module is pure, so
these tests call it directly; one case goes through the 3.0 client's own parser of a
DescribeInstances entry, so the field names cannot drift from the wire."""

from __future__ import annotations

import math
from dataclasses import fields, replace
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from reconciler import model
from reconciler.cloud import base
from reconciler.cloud.api3 import _parse_instance
from reconciler.execute.operation_wait import (
    DEFAULT_LAG_ALLOWANCE,
    DEFAULT_POLICIES,
    PollPolicy,
    Verdict,
    WaitDecision,
    decide,
    decide_call,
)
from reconciler.model import ApiVersion, InstanceState

# The contract's Instance (CONTRACT.md): in reconciler.model once the operations refactor lands,
# in reconciler.cloud.base until then. Whichever carries the latest-operation fields is it.
Instance: Any = (
    model.Instance
    if "latest_operation_request_id" in {f.name for f in fields(model.Instance)}
    else base.Instance
)

OURS = "6e7f5e4c-0d11-4a6b-9b0e-1f2a3b4c5d6e"
OLDER = "0a1b2c3d-4e5f-4061-8798-a9b0c1d2e3f4"
T0 = 1_000.0  # when our call was accepted
LAG = DEFAULT_LAG_ALLOWANCE


def inst(
    *,
    state: InstanceState = InstanceState.STOPPED,
    op: str | None = "DisassociateInstancesKeyPairs",
    op_state: str | None = None,
    rid: str | None = None,
    error: str | None = None,
    iid: str = "ins-1a2b3c4d",
) -> Any:
    return Instance(
        instance_id=iid,
        name="web-1",
        state=state,
        api_state=state.name,
        os="centos7.6x86_64",
        latest_operation=op if rid is not None else None,
        latest_operation_state=op_state,
        latest_operation_request_id=rid,
        latest_operation_error=error,
    )


# --------------------------------------------------------------------------- 3.0


@pytest.mark.parametrize(
    ("instance", "after", "verdict", "busy", "error"),
    [
        # our RequestId: the state is the answer, whatever the time
        (inst(rid=OURS, op_state="SUCCESS"), 0.1, Verdict.DONE, False, None),
        (inst(rid=OURS, op_state="SUCCESS"), 500.0, Verdict.DONE, False, None),
        (
            inst(rid=OURS, op_state="FAILED", error="instance is locked"),
            3.0,
            Verdict.FAILED,
            False,
            "instance is locked",
        ),
        (inst(rid=OURS, op_state="FAILED"), 3.0, Verdict.FAILED, False, ""),
        (inst(rid=OURS, op_state="OPERATING", state=InstanceState.BUSY), 3.0, Verdict.WAIT, True, None),
        (inst(rid=OURS, op_state="OPERATING", state=InstanceState.BUSY), 300.0, Verdict.WAIT, True, None),
        (inst(rid=OURS, op_state=None), 3.0, Verdict.WAIT, False, None),  # may be null: keep waiting
        (inst(rid=OURS, op_state="ROLLING_BACK"), 3.0, Verdict.UNKNOWN, False, None),  # never guess
        # an older RequestId: the state may lag the call ...
        (inst(rid=OLDER, op="StopInstances", op_state="SUCCESS"), 0.0, Verdict.WAIT, False, None),
        (inst(rid=OLDER, op_state="SUCCESS"), LAG - 0.01, Verdict.WAIT, False, None),
        (inst(rid=OLDER, op_state="OPERATING", state=InstanceState.BUSY), 2.0, Verdict.WAIT, True, None),
        (inst(rid=OLDER, op_state="FAILED", error="old failure"), 2.0, Verdict.WAIT, False, None),
        (inst(rid=None), 2.0, Verdict.WAIT, False, None),  # no operation ever recorded
        (inst(rid=OURS, op_state="SUCCESS"), -5.0, Verdict.DONE, False, None),  # clock behind: still ours
        (inst(rid=OLDER, op_state="SUCCESS"), -5.0, Verdict.WAIT, False, None),
        # ... and after the lag allowance only the binding can tell
        (inst(rid=OLDER, op_state="SUCCESS"), LAG, Verdict.UNKNOWN, False, None),
        (inst(rid=OLDER, op_state="SUCCESS"), 60.0, Verdict.UNKNOWN, False, None),
        (inst(rid=OLDER, op_state="OPERATING", state=InstanceState.BUSY), 60.0, Verdict.UNKNOWN, True, None),
        (inst(rid=OLDER, op_state="FAILED", error="old failure"), 60.0, Verdict.UNKNOWN, False, None),
        (inst(rid=None), 60.0, Verdict.UNKNOWN, False, None),
    ],
)
def test_v3_verdicts(instance: Any, after: float, verdict: Verdict, busy: bool, error: str | None) -> None:
    decision = decide(ApiVersion.V3, OURS, T0, instance, now=T0 + after)
    assert (decision.verdict, decision.instance_busy, decision.error) == (verdict, busy, error)
    assert decision.final is (verdict in (Verdict.DONE, Verdict.FAILED))
    assert decision.reason


def test_v3_failed_carries_the_error_message_into_the_reason() -> None:
    decision = decide(
        ApiVersion.V3, OURS, T0, inst(rid=OURS, op_state="FAILED", error="disk busy"), now=T0 + 1
    )
    assert decision.error == "disk busy" and "disk busy" in decision.reason and OURS in decision.reason
    bare = decide(ApiVersion.V3, OURS, T0, inst(rid=OURS, op_state="FAILED"), now=T0 + 1)
    assert "no message" in bare.reason


def test_v3_reasons_name_what_the_instance_shows() -> None:
    shown = inst(rid=OLDER, op="StopInstances", op_state="SUCCESS")
    early = decide(ApiVersion.V3, OURS, T0, shown, now=T0 + 1)
    late = decide(ApiVersion.V3, OURS, T0, shown, now=T0 + 30)
    for decision in (early, late):
        assert "StopInstances" in decision.reason and OLDER in decision.reason
    assert "lag" in early.reason and "observe the binding" in late.reason


@pytest.mark.parametrize(
    ("op_state", "verdict", "busy"),
    [("OPERATING", Verdict.WAIT, True), ("SUCCESS", Verdict.UNKNOWN, False), (None, Verdict.UNKNOWN, False)],
)
def test_v3_call_without_request_id(op_state: str | None, verdict: Verdict, busy: bool) -> None:
    """A call whose answer carried no RequestId: a running operation still means wait; anything
    else cannot be tied to the call, whatever the time."""
    for after in (0.0, 1.0, 100.0):
        decision = decide(ApiVersion.V3, None, T0, inst(rid=OLDER, op_state=op_state), now=T0 + after)
        assert (decision.verdict, decision.instance_busy) == (verdict, busy)


@pytest.mark.parametrize("lag", [0.0, 0.5, 10.0, 30.0])
def test_v3_lag_allowance_is_the_boundary(lag: float) -> None:
    older = inst(rid=OLDER, op_state="SUCCESS")
    if lag > 0:
        assert (
            decide(ApiVersion.V3, OURS, T0, older, now=T0 + lag / 2, lag_allowance=lag).verdict
            is Verdict.WAIT
        )
    assert decide(ApiVersion.V3, OURS, T0, older, now=T0 + lag, lag_allowance=lag).verdict is Verdict.UNKNOWN
    ours = inst(rid=OURS, op_state="OPERATING")
    assert (
        decide(ApiVersion.V3, OURS, T0, ours, now=T0 + lag + 100, lag_allowance=lag).verdict is Verdict.WAIT
    )


@pytest.mark.parametrize("api", list(ApiVersion))
def test_a_gone_instance_is_unknown_on_both_apis(api: ApiVersion) -> None:
    decision = decide(api, OURS, T0, None, now=T0 + 1)
    assert decision.verdict is Verdict.UNKNOWN and "observe the binding" in decision.reason


@pytest.mark.parametrize("lag", [-1.0, math.nan])
def test_a_bad_lag_allowance_is_refused(lag: float) -> None:
    with pytest.raises(ValueError):
        decide(ApiVersion.V3, OURS, T0, inst(), now=T0, lag_allowance=lag)


def test_v3_through_the_clients_own_parser() -> None:
    """The fields decide() reads are the ones the 3.0 client fills from DescribeInstances."""

    def entry(rid: str, state: str, error: str | None = None) -> dict[str, object]:
        item: dict[str, object] = {
            "InstanceId": "ins-1a2b3c4d",
            "InstanceName": "web-1",
            "InstanceState": "STOPPED",
            "OsName": "CentOS 7.6 64bit",
            "LatestOperation": "DisassociateInstancesKeyPairs",
            "LatestOperationState": state,
            "LatestOperationRequestId": rid,
        }
        if error is not None:
            item["LatestOperationErrorMsg"] = error
        return item

    cases = [
        (entry(OURS, "SUCCESS"), Verdict.DONE),
        (entry(OURS, "OPERATING"), Verdict.WAIT),
        (entry(OURS, "FAILED", "InternalError"), Verdict.FAILED),
        (entry(OLDER, "SUCCESS"), Verdict.WAIT),
    ]
    for raw, verdict in cases:
        assert decide(ApiVersion.V3, OURS, T0, _parse_instance(raw), now=T0 + 2).verdict is verdict
    failed = decide(ApiVersion.V3, OURS, T0, _parse_instance(entry(OURS, "FAILED", "InternalError")), now=T0)
    assert failed.error == "InternalError"


# --------------------------------------------------------------------------- 2.0


@pytest.mark.parametrize("state", list(InstanceState))
@pytest.mark.parametrize("after", [0.0, 3.0, 600.0])
def test_v2_busy_means_wait_anything_else_means_done(state: InstanceState, after: float) -> None:
    decision = decide(ApiVersion.V2, None, T0, inst(state=state), now=T0 + after)
    if state is InstanceState.BUSY:
        assert (decision.verdict, decision.instance_busy) == (Verdict.WAIT, True)
    else:
        assert (decision.verdict, decision.instance_busy) == (Verdict.DONE, False)


def test_v2_ignores_request_ids_and_operation_fields() -> None:
    """2.0 has no operation fields; if an Instance carried some, they would not be 2.0's."""
    stray = inst(state=InstanceState.STOPPED, rid=OLDER, op_state="OPERATING")
    assert decide(ApiVersion.V2, OURS, T0, stray, now=T0 + 1).verdict is Verdict.DONE
    busy = inst(state=InstanceState.BUSY, rid=OURS, op_state="SUCCESS")
    assert decide(ApiVersion.V2, OURS, T0, busy, now=T0 + 1).verdict is Verdict.WAIT


# --------------------------------------------------------------------------- properties

_op_states = st.sampled_from(["SUCCESS", "OPERATING", "FAILED", None, "WEIRD"])
_rids = st.sampled_from([OURS, OLDER, None])


@given(
    rid=_rids,
    op_state=_op_states,
    state=st.sampled_from(list(InstanceState)),
    after=st.floats(-50, 1_000),
    lag=st.floats(0, 120),
)
def test_v3_invariants(
    rid: str | None, op_state: str | None, state: InstanceState, after: float, lag: float
) -> None:
    instance = inst(rid=rid, op_state=op_state, state=state, error="why")
    decision = decide(ApiVersion.V3, OURS, T0, instance, now=T0 + after, lag_allowance=lag)
    # Only our own RequestId is ever final; the instance's InstanceState never decides on 3.0.
    assert not decision.final or rid == OURS
    assert decision == decide(
        ApiVersion.V3,
        OURS,
        T0,
        replace(instance, state=InstanceState.OTHER),
        now=T0 + after,
        lag_allowance=lag,
    )
    if rid == OURS:
        # Our RequestId: time does not matter.
        assert decision == decide(
            ApiVersion.V3, OURS, T0, instance, now=T0 + after + 10_000, lag_allowance=lag
        )
    else:
        elapsed = (T0 + after) - T0  # as decide() sees it, rounding included
        assert decision.verdict is (Verdict.WAIT if elapsed < lag else Verdict.UNKNOWN)
    assert decision.instance_busy is (op_state == "OPERATING")
    assert (decision.error is not None) is (decision.verdict is Verdict.FAILED)


def test_decide_call_decides_each_instance_of_one_call() -> None:
    ids = [f"ins-0000000{n}" for n in range(5)]
    observed = {
        ids[0]: inst(iid=ids[0], rid=OURS, op_state="SUCCESS"),
        ids[1]: inst(iid=ids[1], rid=OURS, op_state="OPERATING"),
        ids[2]: inst(iid=ids[2], rid=OURS, op_state="FAILED", error="e"),
        ids[3]: inst(iid=ids[3], rid=OLDER, op_state="SUCCESS"),
        # ids[4] absent: gone
    }
    decisions = decide_call(ApiVersion.V3, OURS, T0, ids, observed, now=T0 + 2)
    assert [decisions[i].verdict for i in ids] == [
        Verdict.DONE,
        Verdict.WAIT,
        Verdict.FAILED,
        Verdict.WAIT,
        Verdict.UNKNOWN,
    ]
    for iid in ids:
        assert decisions[iid] == decide(ApiVersion.V3, OURS, T0, observed.get(iid), now=T0 + 2)
    assert decide_call(ApiVersion.V3, OURS, T0, [], observed, now=T0) == {}


def test_a_decision_is_a_value() -> None:
    assert WaitDecision(Verdict.DONE, "x") == WaitDecision(Verdict.DONE, "x")
    assert not WaitDecision(Verdict.UNKNOWN, "x").final and WaitDecision(Verdict.FAILED, "x", error="").final


# --------------------------------------------------------------------------- poll times


@pytest.mark.parametrize(
    ("learned", "expected"),
    [(None, 1.0), (4.0, 4.0), (0.0, 0.0), (-1.0, 1.0)],  # a negative "learned" time is no knowledge
)
def test_the_first_poll_comes_the_operation_time_after_acceptance(
    learned: float | None, expected: float
) -> None:
    policy = PollPolicy(first=1.0)
    assert policy.next_poll_at(T0, 0, None, learned) == T0 + expected
    assert policy.next_poll_at(T0, 3, None, learned) == T0 + expected  # never polled: still the first


def test_later_polls_back_off_up_to_the_cap() -> None:
    policy = PollPolicy(first=1.0, step=0.5, factor=2.0, cap=3.0)
    assert [policy.backoff(n) for n in range(1, 7)] == [0.5, 1.0, 2.0, 3.0, 3.0, 3.0]
    assert policy.next_poll_at(T0, 2, T0 + 7.0, learned=4.0) == T0 + 8.0  # learned only times the first
    assert policy.backoff(10_000) == 3.0  # no overflow
    assert PollPolicy(first=0, step=1, factor=1, cap=1).backoff(50) == 1.0


@given(polls=st.integers(1, 200))
def test_backoff_never_shrinks_and_never_passes_the_cap(polls: int) -> None:
    policy = PollPolicy(first=0.0)
    assert policy.step <= policy.backoff(polls) <= policy.backoff(polls + 1) <= policy.cap


def test_the_timeout_counts_from_acceptance() -> None:
    policy = PollPolicy(first=1.0, timeout=60.0)
    assert not policy.gave_up(T0, T0 + 59.9)
    assert policy.gave_up(T0, T0 + 60.0)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"first": -1.0},
        {"first": 0.0, "step": 0.0},
        {"first": 0.0, "factor": 0.5},
        {"first": 0.0, "step": 2.0, "cap": 1.0},
        {"first": 0.0, "timeout": 0.0},
        {"first": math.nan},
    ],
)
def test_a_bad_policy_is_refused(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        PollPolicy(**kwargs)


def test_polls_done_must_make_sense() -> None:
    with pytest.raises(ValueError):
        PollPolicy(first=0).next_poll_at(T0, -1, None)
    with pytest.raises(ValueError):
        PollPolicy(first=0).backoff(0)


def test_default_policies() -> None:
    assert set(DEFAULT_POLICIES) == set(ApiVersion)
    assert DEFAULT_POLICIES[ApiVersion.V2].first == 0.0  # status 20 is set by the call itself
    assert 0 < DEFAULT_POLICIES[ApiVersion.V3].first <= DEFAULT_LAG_ALLOWANCE
    assert DEFAULT_POLICIES[ApiVersion.V3].timeout == 360.0  # Terraform's 2 x 3 min


# --------------------------------------------------------------------------- the two together


def _simulate(policy: PollPolicy, op_time: float, lag: float, learned: float | None) -> tuple[Verdict, int]:
    """An instance that shows the older operation for ``lag`` seconds after our call, then ours
    OPERATING until ``op_time``, then SUCCESS; poll it by the policy until a final verdict."""
    polls, last = 0, None
    while True:
        at = policy.next_poll_at(T0, polls, last, learned)
        if policy.gave_up(T0, at):
            return Verdict.UNKNOWN, polls
        after = at - T0
        if after < lag:
            shown = inst(rid=OLDER, op_state="SUCCESS")
        elif after < op_time:
            shown = inst(rid=OURS, op_state="OPERATING", state=InstanceState.BUSY)
        else:
            shown = inst(rid=OURS, op_state="SUCCESS")
        polls, last = polls + 1, at
        decision = decide(ApiVersion.V3, OURS, T0, shown, now=at)
        assert decision.verdict is not Verdict.UNKNOWN  # the lag never outlasts the allowance here
        if decision.final:
            return decision.verdict, polls


@pytest.mark.parametrize("op_time", [0.5, 2.0, 7.0, 30.0])
@pytest.mark.parametrize("lag", [0.0, 1.5, 9.0])
def test_a_learned_operation_time_finds_the_call_done_in_one_poll(op_time: float, lag: float) -> None:
    policy = DEFAULT_POLICIES[ApiVersion.V3]
    assert _simulate(policy, op_time, lag, learned=max(op_time, lag)) == (Verdict.DONE, 1)
    verdict, polls = _simulate(policy, op_time, lag, learned=None)
    # Unknown time: done within the backoff's reach, a handful of polls.
    assert verdict is Verdict.DONE and polls <= 2 + math.ceil(max(op_time, lag) / policy.cap) + 4


def test_an_operation_longer_than_the_timeout_is_given_up() -> None:
    policy = PollPolicy(first=1.0, timeout=20.0)
    verdict, polls = _simulate(policy, op_time=1_000.0, lag=0.0, learned=None)
    assert verdict is Verdict.UNKNOWN and 1 <= polls <= 20


def test_the_module_is_pure() -> None:
    """No clock, no I/O, no prints: it imports only the standard library's data types and the
    model, and calls no I/O builtin."""
    import ast

    import reconciler.execute.operation_wait as module

    tree = ast.parse(Path(module.__file__).read_text(encoding="utf-8"))
    imported = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    imported |= {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    assert imported <= {"__future__", "collections.abc", "dataclasses", "enum", "typing", "reconciler.model"}
    called = {n.func.id for n in ast.walk(tree) if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)}
    assert not called & {"open", "print", "input", "exit", "__import__", "eval", "exec"}
