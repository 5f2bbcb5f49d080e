"""The stop schedule: which running instances cvmkeys may stop to unbind their keys, in which
rounds, and how long each is expected to be down. Pure: no I/O, no clock.

A desired file opts in with a ``disruption`` block (``model.Disruption``). Both APIs unbind keys
only from stopped instances, so without the block a change on a running instance stays
``blocked``. With it (and ``stop_running: true``), every instance whose changes are blocked by
nothing but "the instance is running" (``core.diff.blocked_only_by_running``) is scheduled
once: stop, unbind each of its planned keys, start. Protected instances are never scheduled;
stopped instances are never scheduled either (their changes are ready: they are unbound and
stay stopped, as without the block).

The budget is how many instances may be down because of cvmkeys at once: ``max_stopped``, or
``max_stopped_percent`` of the running instances in scope (rounded down), whichever is smaller,
and at least 1. Instances are put into rounds of at most the budget, longest expected downtime
first, so that instances that take as long share a round. Apply (``execute.rolling``) runs
them rolling: a stopped instance's slot goes to the next one as soon as it runs again, so the
rounds are an upper bound on the wall time and ``(stops / budget) x per-instance time`` is what
a rolling apply approaches.

Durations are parameters (``PhaseDurations``), not measurements: no API documents how long a
stop, an unbind or a start takes. The defaults are stated assumptions; callers with measured
figures (bench/, the emulator's timings) pass their own.

Called by ``core.plan.build_plan`` with the diff's changes (``apply_schedule`` turns the
scheduled changes ready); ``core.safety.check_stops`` checks the
schedule's ``stops`` against ``max_stops``.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable
from fractions import Fraction

from reconciler.core.batching import MAX_INSTANCES_PER_CALL
from reconciler.core.diff import blocked_only_by_running, instance_is_running, live_bindings, owned_bindings
from reconciler.model import (
    DEFAULT_DURATIONS,
    Change,
    Desired,
    Disruption,
    Observed,
    PhaseDurations,
    ScheduledStop,
    StopRound,
    StopSchedule,
)

__all__ = [
    "DEFAULT_DURATIONS",
    "DISABLED",
    "PhaseDurations",
    "ScheduledStop",
    "StopRound",
    "StopSchedule",
    "allows_stops",
    "running_in_scope",
    "schedule_for",
    "schedule_stops",
    "stop_budget",
]


# Keys one unbind call takes for one instance: 2.0 UnBindInstanceKey takes one key (an instance
# with three keys to lose needs three calls, one after the other: each keeps it busy); 3.0
# DisassociateInstancesKeyPairs takes up to 100.
UNBIND_KEYS_PER_CALL_V2 = 1
UNBIND_KEYS_PER_CALL_V3 = 100


DISABLED = StopSchedule(enabled=False)


def allows_stops(disruption: Disruption | None) -> bool:
    """Whether the desired state lets cvmkeys stop running instances at all."""
    return disruption is not None and disruption.stop_running


def running_in_scope(desired: Desired, observed: Observed) -> frozenset[str]:
    """The running instances the file's scope covers, the base of ``max_stopped_percent``:
    every observed instance with an owned binding or declared by the file, that is running.
    Instances the plan did not observe (protected ones it had no reason to look at) do not
    count: their state is unknown, and counting them could only raise the budget."""
    candidates = {iid for _, iid in owned_bindings(desired, live_bindings(observed.keys))}
    candidates |= desired.declared_instances
    return frozenset(
        iid
        for iid in candidates
        if (instance := observed.instances.get(iid)) is not None and instance_is_running(instance)
    )


def stop_budget(disruption: Disruption, running: int) -> tuple[int, str]:
    """How many instances may be down at once, and which limit said so.

    ``max_stopped_percent`` is taken of ``running`` and rounded **down**, so the share is never
    exceeded (10 % of 15 running instances is 1, not 2), but the budget is at least 1: a
    percentage must not turn "stop, unbind, start" into "never". The percentage is taken as
    the decimal number written (``0.29`` is 29/100, not the float just below it).
    """
    budget, reason = disruption.max_stopped, f"max_stopped {disruption.max_stopped}"
    percent = disruption.max_stopped_percent
    if percent is not None:
        exact = Fraction(repr(percent)) * running / 100
        share = math.floor(exact)
        by_percent = max(1, share)
        if by_percent < budget:
            budget = by_percent
            if share < 1:
                how = f" (rounded down to {share}; at least 1)"
            else:
                how = f" = {share}" if share == exact else f" (rounded down to {share})"
            reason = f"max_stopped_percent {percent:g} of {running} running instances in scope{how}"
    return max(1, budget), reason


def schedule_for(
    desired: Desired,
    observed: Observed,
    changes: Iterable[Change],
    *,
    durations: PhaseDurations = DEFAULT_DURATIONS,
    unbind_keys_per_call: int = UNBIND_KEYS_PER_CALL_V2,
) -> StopSchedule:
    """The stop schedule for a plan: ``changes`` are the diff's (``core.diff.diff``) for
    ``desired`` and ``observed``."""
    return schedule_stops(
        changes,
        observed,
        desired.disruption,
        protected=desired.protected_instances,
        running=len(running_in_scope(desired, observed)),
        durations=durations,
        unbind_keys_per_call=unbind_keys_per_call,
    )


def schedule_stops(
    changes: Iterable[Change],
    observed: Observed,
    disruption: Disruption | None,
    *,
    protected: frozenset[str],
    running: int,
    durations: PhaseDurations = DEFAULT_DURATIONS,
    unbind_keys_per_call: int = UNBIND_KEYS_PER_CALL_V2,
) -> StopSchedule:
    """Schedule every instance whose changes only wait for it to stop.

    ``protected`` instances are never scheduled, whatever the changes say; ``running`` is the
    number of running instances in scope (``running_in_scope``), the base of the percentage.
    """
    if disruption is None or not disruption.stop_running:
        return DISABLED
    keys_of: dict[str, set[str]] = defaultdict(set)
    for change in changes:
        if change.instance_id in protected:
            continue
        if blocked_only_by_running(change, observed.instances.get(change.instance_id), observed.region):
            keys_of[change.instance_id].add(change.key_id)
    live_keys: dict[str, set[str]] = defaultdict(set)
    for key_id, iid in live_bindings(observed.keys):
        if iid in keys_of:
            live_keys[iid].add(key_id)

    budget, reason = stop_budget(disruption, running)
    stop_time = durations.stop(disruption.stop_type)
    worst_stop_time = durations.worst_stop(disruption.stop_type, disruption.stop_timeout)

    def timing(iid: str) -> tuple[int, float, float]:
        calls = math.ceil(len(keys_of[iid]) / unbind_keys_per_call)
        rest = calls * durations.unbind + durations.start
        return calls, stop_time + rest, worst_stop_time + rest

    timings = {iid: timing(iid) for iid in keys_of}
    # Longest first, then by ID: instances that take as long share a round, which keeps the
    # sum of the rounds' longest downtimes (the wall time) as small as rounds of this size allow.
    order = sorted(keys_of, key=lambda iid: (-timings[iid][1], iid))
    stops: list[ScheduledStop] = []
    rounds: list[StopRound] = []
    for index, start in enumerate(range(0, len(order), budget)):
        members = order[start : start + budget]
        for iid in members:
            calls, downtime, worst = timings[iid]
            instance = observed.instances[iid]
            stops.append(
                ScheduledStop(
                    instance_id=iid,
                    instance_name=instance.name,
                    key_ids=tuple(sorted(keys_of[iid])),
                    round=index,
                    unbind_calls=calls,
                    downtime=downtime,
                    worst_downtime=worst,
                    removes_last_key=live_keys[iid] <= keys_of[iid],
                    prior_state=instance.api_state,
                )
            )
        calls_needed = math.ceil(len(members) / MAX_INSTANCES_PER_CALL)
        rounds.append(
            StopRound(
                index=index,
                instance_ids=tuple(members),
                stop_calls=calls_needed,
                start_calls=calls_needed,
                duration=max(timings[iid][1] for iid in members),
                worst_duration=max(timings[iid][2] for iid in members),
            )
        )
    total = sum(stop.downtime for stop in stops)
    return StopSchedule(
        enabled=True,
        stop_type=disruption.stop_type,
        stop_timeout=disruption.stop_timeout,
        budget=budget,
        budget_reason=reason,
        running_in_scope=running,
        stops=tuple(stops),
        rounds=tuple(rounds),
        durations=durations,
        total_downtime=total,
        wall_time=sum(r.duration for r in rounds),
        worst_wall_time=sum(r.worst_duration for r in rounds),
        # No faster than its slowest instance, however large the budget.
        rolling_estimate=max([total / budget, *(stop.downtime for stop in stops)]) if stops else 0.0,
    )
