"""The diff: a pure function of (desired, observed) that says which bindings must go and why.

Called by ``core.plan.build_plan`` (and by ``cloud.observe`` for ``instances_needed``). No I/O.

Scope rules (design.md): ``keys`` owns every binding of a declared key; ``instances`` owns every
binding on a declared instance; ``account`` owns every binding in the region. An owned binding
that the file does not allow becomes an unbind ``Change``; bindings outside the scope are never
looked at again after ``owned_bindings``.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from reconciler.model import (
    Binding,
    Change,
    ChangeStatus,
    Desired,
    Finding,
    Instance,
    InstanceState,
    KeyPair,
    Observed,
    Scope,
    Severity,
)

LAST_KEY_WARNING = (
    "removes the last key of {instance}: login falls back to the password; if none was ever set, "
    "the instance is unreachable until ResetInstancePassword"
)


def live_bindings(keys: Mapping[str, KeyPair]) -> set[Binding]:
    """Every (key, instance) binding the observed key pairs report."""
    return {(key_id, iid) for key_id, pair in keys.items() for iid in pair.bound_instance_ids}


def owned_bindings(desired: Desired, live: Iterable[Binding]) -> set[Binding]:
    """The live bindings the file's scope owns."""
    if desired.scope is Scope.KEYS:
        declared_keys = desired.keys.keys()
        return {b for b in live if b[0] in declared_keys}
    if desired.scope is Scope.INSTANCES:
        declared = desired.declared_instances
        return {b for b in live if b[1] in declared}
    return set(live)


def allowed_bindings(desired: Desired) -> set[Binding]:
    """Every binding the file allows."""
    return {(key_id, iid) for key_id, key in desired.keys.items() for iid in key.instances}


def is_protected(desired: Desired, binding: Binding) -> bool:
    return binding[0] in desired.protected_keys or binding[1] in desired.protected_instances


def candidate_unbinds(desired: Desired, keys: Mapping[str, KeyPair]) -> set[Binding]:
    """Owned live bindings that the file does not allow (protected ones included)."""
    return owned_bindings(desired, live_bindings(keys)) - allowed_bindings(desired)


def instances_needed(desired: Desired, keys: Mapping[str, KeyPair]) -> set[str]:
    """The instances whose status the plan needs: those with a candidate unbind that is not
    protected, plus every declared instance (to check that it exists)."""
    needed = {
        iid
        for binding in candidate_unbinds(desired, keys)
        if not is_protected(desired, binding)
        for iid in (binding[1],)
    }
    return needed | desired.declared_instances


def blocked_reason(instance: Instance | None, region: str) -> str | None:
    """Why an unbind on this instance cannot happen now, or None when it can."""
    if instance is None:
        return f"instance not found in {region} (deleted, returned, or not this account's)"
    if instance.is_windows:
        return f"Windows instance ({instance.os}): keys can be unbound from Linux instances only"
    if instance.state is InstanceState.STOPPED:
        return None
    if instance.state is InstanceState.RUNNING:
        return "instance is running: stop it first (StopInstances), then plan and apply again"
    if instance.state is InstanceState.BUSY:
        return f"instance is busy ({instance.api_state}): another bind/unbind is in progress"
    return f"instance is {instance.api_state}; unbinding needs a stopped instance"


@dataclass(frozen=True, slots=True)
class Diff:
    """The diff's output: changes (sorted by key, instance), findings, and counts."""

    changes: tuple[Change, ...]
    findings: tuple[Finding, ...]
    owned_count: int
    missing_count: int


def diff(desired: Desired, observed: Observed) -> Diff:
    """Compare the desired state with the observed one (the heart of ``plan``)."""
    live = live_bindings(observed.keys)
    owned = owned_bindings(desired, live)
    allowed = allowed_bindings(desired)
    findings: list[Finding] = []

    for key_id, key in sorted(desired.keys.items()):
        pair = observed.keys.get(key_id)
        if pair is None:
            findings.append(
                Finding(
                    Severity.ERROR,
                    "key-not-found",
                    f"key {key_id} does not exist in {observed.region}: "
                    "the file's intent for it cannot be enforced",
                    key_id=key_id,
                    location=key.location,
                )
            )
        elif key.name is not None and pair.name != key.name:
            findings.append(
                Finding(
                    Severity.ERROR,
                    "key-name-mismatch",
                    f"key {key_id} is named {pair.name!r} in {observed.region}, the file says {key.name!r}",
                    key_id=key_id,
                    location=key.location,
                )
            )

    for iid in sorted(desired.declared_instances - observed.instances.keys()):
        findings.append(
            Finding(
                Severity.WARNING,
                "instance-not-found",
                f"instance {iid} is declared but does not exist in {observed.region}",
                instance_id=iid,
                location=desired.instance_locations.get(iid),
            )
        )

    missing = sorted(b for b in allowed - live if b[0] in observed.keys and b[1] in observed.instances)
    for key_id, iid in missing:
        findings.append(
            Finding(
                Severity.INFO,
                "binding-missing",
                f"{key_id} is allowed on {iid} but not bound there (cvmkeys only removes bindings)",
                key_id=key_id,
                instance_id=iid,
            )
        )

    changes = _changes(desired, observed, sorted(owned - allowed), live)
    return Diff(tuple(changes), tuple(findings), len(owned), len(missing))


def _changes(
    desired: Desired, observed: Observed, candidates: list[Binding], live: set[Binding]
) -> list[Change]:
    statuses: list[tuple[Binding, ChangeStatus, str]] = []
    for binding in candidates:
        key_id, iid = binding
        if key_id in desired.protected_keys:
            statuses.append((binding, ChangeStatus.PROTECTED, f"key {key_id} is protected"))
        elif iid in desired.protected_instances:
            statuses.append((binding, ChangeStatus.PROTECTED, f"instance {iid} is protected"))
        else:
            reason = blocked_reason(observed.instances.get(iid), observed.region)
            if reason is None:
                statuses.append((binding, ChangeStatus.READY, "not allowed by the file"))
            else:
                statuses.append((binding, ChangeStatus.BLOCKED, reason))

    # An instance is left keyless when every key it has is removed by a ready change.
    keys_of: dict[str, int] = defaultdict(int)
    for _, iid in live:
        keys_of[iid] += 1
    removed_of: dict[str, int] = defaultdict(int)
    for (_, iid), status, _ in statuses:
        if status is ChangeStatus.READY:
            removed_of[iid] += 1

    changes: list[Change] = []
    for (key_id, iid), status, reason in statuses:
        instance = observed.instances.get(iid)
        pair = observed.keys.get(key_id)
        warnings: tuple[str, ...] = ()
        if status is ChangeStatus.READY and removed_of[iid] == keys_of[iid]:
            label = f"{iid} ({instance.name})" if instance and instance.name else iid
            warnings = (LAST_KEY_WARNING.format(instance=label),)
        changes.append(
            Change(
                key_id=key_id,
                instance_id=iid,
                status=status,
                reason=reason,
                warnings=warnings,
                key_name=pair.name if pair else None,
                instance_name=instance.name if instance else None,
                instance_state=instance.api_state if instance else None,
            )
        )
    return changes
