"""Building the plan from a diff, with the premises apply checks and a fingerprint. Pure.

Called by ``operations`` (plan, after observing). The plan records, for each instance it
unbinds from, its premise (``premises_of``: its state and every key bound to it, from all key
pairs of the region): the last-key warnings were computed from those, and apply
(``execute.freshness``) re-reads them. The fingerprint is a digest of the touched live state,
kept as a record (shown in Markdown); apply judges staleness by the premises, not by it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable

from reconciler.common import canonical_sha256
from reconciler.core.batching import make_batches, wave_count
from reconciler.core.diff import LAST_KEY_WARNING, diff
from reconciler.core.disruption import UNBIND_KEYS_PER_CALL_V2, UNBIND_KEYS_PER_CALL_V3, schedule_for
from reconciler.core.safety import check_safety, check_stops, merge_limits
from reconciler.model import (
    ApiVersion,
    Change,
    ChangeStatus,
    Desired,
    Fingerprint,
    Observed,
    Plan,
    Premise,
    SafetyLimits,
    SafetyVerdict,
    Severity,
    StopSchedule,
    Summary,
)

STOP_ACTION = "stop-unbind-start"  # a change carried out by stopping and starting its instance


def apply_schedule(changes: Iterable[Change], schedule: StopSchedule) -> tuple[Change, ...]:
    """The changes with every scheduled instance's changes made ``ready`` with
    ``action: stop-unbind-start``, a reason naming its round, and the last-key warning where the
    instance loses every key (apply never removes a last key the reviewed plan did not warn of).
    Without a schedule, the changes as they are."""
    by_instance = {stop.instance_id: stop for stop in schedule.stops}
    rounds = len(schedule.rounds)
    result: list[Change] = []
    for change in changes:
        stop = by_instance.get(change.instance_id)
        if stop is None or change.key_id not in stop.key_ids:
            result.append(change)
            continue
        warnings = change.warnings
        if stop.removes_last_key:
            label = f"{stop.instance_id} ({stop.instance_name})" if stop.instance_name else stop.instance_id
            warnings = (*warnings, LAST_KEY_WARNING.format(instance=label))
        result.append(
            dataclasses.replace(
                change,
                status=ChangeStatus.READY,
                action=STOP_ACTION,
                reason=(
                    "instance is running: stopped, unbound and started again "
                    f"(disruption, round {stop.round + 1} of {rounds})"
                ),
                warnings=warnings,
            )
        )
    return tuple(result)


def with_stop_limits(
    verdict: SafetyVerdict, schedule: StopSchedule | None, max_stops: int | None
) -> SafetyVerdict:
    """``verdict`` with the ``max_stops`` violation of ``schedule`` added (none without one)."""
    if schedule is None:
        return verdict
    violations = check_stops(schedule.stop_count, SafetyLimits(max_stops=max_stops))
    if not violations:
        return verdict
    return dataclasses.replace(verdict, safe=False, violations=(*verdict.violations, *violations))


def fingerprint_of(observed: Observed, key_ids: Iterable[str], instance_ids: Iterable[str]) -> Fingerprint:
    """Digest of the bindings of ``key_ids`` and the existence, state and OS class of
    ``instance_ids`` as ``observed`` reports them. Absent keys/instances count as ``None``."""
    keys = tuple(sorted(set(key_ids)))
    instances = tuple(sorted(set(instance_ids)))
    data: dict[str, object] = {
        "region": observed.region,
        "keys": {
            k: sorted(observed.keys[k].bound_instance_ids) if k in observed.keys else None for k in keys
        },
        "instances": {
            i: [
                observed.instances[i].state.value,
                observed.instances[i].api_state,
                observed.instances[i].is_windows,
            ]
            if i in observed.instances
            else None
            for i in instances
        },
    }
    return Fingerprint(digest=canonical_sha256(data), key_ids=keys, instance_ids=instances)


def premises_of(observed: Observed, instance_ids: Iterable[str]) -> tuple[Premise, ...]:
    """For each of ``instance_ids`` (observed instances), its state and every key bound to it."""
    keys_on: dict[str, list[str]] = {}
    for key_id, pair in observed.keys.items():
        for iid in pair.bound_instance_ids:
            keys_on.setdefault(iid, []).append(key_id)
    return tuple(
        Premise(iid, observed.instances[iid].api_state, tuple(sorted(keys_on.get(iid, ()))))
        for iid in sorted(set(instance_ids))
        if iid in observed.instances
    )


def observed_digest(observed: Observed) -> str:
    """Digest of everything observed (all key pairs and every instance asked for)."""
    return fingerprint_of(observed, observed.keys, observed.instances).digest


def build_plan(
    desired: Desired,
    observed: Observed,
    *,
    endpoint: str,
    api: ApiVersion = ApiVersion.V2,
    limits_override: SafetyLimits | None = None,
    created_at: str = "",
) -> Plan:
    """The full plan: changes, batches, findings, summary, safety verdict and fingerprint."""
    result = diff(desired, observed)
    # Batches only for the unbinds needing no stop: the scheduled ones are still blocked here,
    # and apply carries them out in its rolling schedule (execute.rolling), not in the waves.
    batches = make_batches(result.changes, api=api)
    limits = merge_limits(desired.safety, limits_override or SafetyLimits())
    schedule: StopSchedule | None = None
    changes = result.changes
    if desired.disruption is not None and desired.disruption.stop_running:
        per_call = UNBIND_KEYS_PER_CALL_V2 if api is ApiVersion.V2 else UNBIND_KEYS_PER_CALL_V3
        schedule = schedule_for(desired, observed, result.changes, unbind_keys_per_call=per_call)
        schedule = dataclasses.replace(schedule, max_stops=limits.max_stops)
        changes = apply_schedule(result.changes, schedule)
    ready = [c for c in changes if c.status is ChangeStatus.READY]
    verdict = check_safety(len(ready), result.owned_count, limits)
    verdict = with_stop_limits(verdict, schedule, limits.max_stops)
    touched = fingerprint_of(observed, {c.key_id for c in ready}, {c.instance_id for c in ready})
    summary = Summary(
        to_unbind=len(ready),
        blocked=sum(1 for c in changes if c.status is ChangeStatus.BLOCKED),
        protected=sum(1 for c in changes if c.status is ChangeStatus.PROTECTED),
        unchangeable=sum(1 for c in changes if c.status is ChangeStatus.UNCHANGEABLE),
        missing=result.missing_count,
        owned_bindings=result.owned_count,
        errors=sum(1 for f in result.findings if f.severity is Severity.ERROR),
        warnings=sum(1 for f in result.findings if f.severity is Severity.WARNING)
        + sum(len(c.warnings) for c in changes),
        waves=wave_count(batches),
        calls=len(batches),
    )
    return Plan(
        region=desired.region,
        scope=desired.scope,
        endpoint=endpoint,
        api=api,
        changes=changes,
        batches=batches,
        findings=result.findings,
        summary=summary,
        safety=verdict,
        sources=desired.sources,
        fingerprint=touched,
        observed_digest=observed_digest(observed),
        created_at=created_at,
        premises=premises_of(observed, {c.instance_id for c in ready}),
        stops=schedule,
    )
