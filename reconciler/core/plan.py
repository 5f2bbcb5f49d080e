"""Building the plan from a diff, with the premises apply checks and a fingerprint. Pure.

Called by ``operations`` (plan, after observing). The plan records, for each instance it
unbinds from, its premise (``premises_of``: its state and every key bound to it, from all key
pairs of the region): the last-key warnings were computed from those, and apply
(``execute.freshness``) re-reads them. The fingerprint is a digest of the touched live state,
kept as a record (shown in Markdown); apply judges staleness by the premises, not by it.
"""

from __future__ import annotations

from collections.abc import Iterable

from reconciler.common import canonical_sha256
from reconciler.core.batching import make_batches, wave_count
from reconciler.core.diff import diff
from reconciler.core.safety import check_safety, merge_limits
from reconciler.model import (
    ApiVersion,
    ChangeStatus,
    Desired,
    Fingerprint,
    Observed,
    Plan,
    Premise,
    SafetyLimits,
    Severity,
    Summary,
)


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
    batches = make_batches(result.changes, api=api)
    ready = [c for c in result.changes if c.status is ChangeStatus.READY]
    limits = merge_limits(desired.safety, limits_override or SafetyLimits())
    verdict = check_safety(len(ready), result.owned_count, limits)
    touched = fingerprint_of(observed, {c.key_id for c in ready}, {c.instance_id for c in ready})
    summary = Summary(
        to_unbind=len(ready),
        blocked=sum(1 for c in result.changes if c.status is ChangeStatus.BLOCKED),
        protected=sum(1 for c in result.changes if c.status is ChangeStatus.PROTECTED),
        missing=result.missing_count,
        owned_bindings=result.owned_count,
        errors=sum(1 for f in result.findings if f.severity is Severity.ERROR),
        warnings=sum(1 for f in result.findings if f.severity is Severity.WARNING)
        + sum(len(c.warnings) for c in result.changes),
        waves=wave_count(batches),
        calls=len(batches),
    )
    return Plan(
        region=desired.region,
        scope=desired.scope,
        endpoint=endpoint,
        api=api,
        changes=result.changes,
        batches=batches,
        findings=result.findings,
        summary=summary,
        safety=verdict,
        sources=desired.sources,
        fingerprint=touched,
        observed_digest=observed_digest(observed),
        created_at=created_at,
        premises=premises_of(observed, {c.instance_id for c in ready}),
    )
