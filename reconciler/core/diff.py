"""The diff: a pure function of (desired, observed) that says which bindings must go and why.

Called by ``core.plan.build_plan`` (and by ``cloud.observe`` for ``instances_needed``). No I/O.

Scope rules (design.md): ``keys`` owns every binding of a declared key; ``instances`` owns every
binding on a declared instance; ``account`` owns every binding in the region. An owned binding
that the file does not allow becomes an unbind ``Change``; bindings outside the scope are never
looked at again after ``owned_bindings``.

A change is ``ready``, ``blocked`` (not now: the instance's state, or a near-miss ID in the
file), ``protected`` (the file says never), or ``unchangeable`` (no API can do it: Windows).
Declared instances that do not exist are errors (docs/desired-state.md, "Missing instances"):
a typo in an allowed ID must never turn into an unbind from the instance that was meant.

What the plan reads (``instances_needed``, issue 16): every key pair, then only the instances
whose answer decides something: those with an unprotected candidate unbind, and the declared
instances no key pair reports bound. A declared instance bound to any key exists (the key pair
saw it), so it is not read; the existence checks (missing instances, typos, missing bindings)
work from the key pairs for it.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from reconciler import ids
from reconciler.model import (
    Binding,
    Change,
    ChangeStatus,
    Desired,
    DesiredKey,
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


# The scope rules as set algebra: the definitions. The diff itself computes the same from one
# pass over the key pairs (``_bindings``), which tests/test_core.py checks against these.


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


def _deciding_candidates(desired: Desired, candidates: Iterable[Binding]) -> set[str]:
    """The instances of candidate unbinds that are not protected: their state decides the change."""
    return {binding[1] for binding in candidates if not is_protected(desired, binding)}


@dataclass(frozen=True, slots=True)
class _Bindings:
    """What the diff needs of the bindings of one (desired, key pairs), built once in one pass
    over the key pairs: the diff and ``instances_needed`` both work from it, so they cannot
    disagree on what was read. Same results as the set algebra above (``live_bindings``,
    ``owned_bindings``, ``allowed_bindings``: tests/test_core.py checks it), without building
    the region-sized sets of tuples (95,000 live and 73,000 allowed bindings on the benchmark's
    L fleet): per key, C-level set operations on its instance IDs."""

    owned_count: int
    candidates: list[Binding]  # owned and not allowed (protected ones included), sorted
    keys_of: Counter[str]  # instance -> how many keys are bound to it; its keys: seen bound, exist
    unbound_allowed: list[Binding]  # allowed, the key exists, not bound (the instance may not)
    read: set[str]  # the instances whose DescribeInstances answer decides the plan
    declared: frozenset[str]  # ``desired.declared_instances`` (a property that builds the set)


def _bindings(desired: Desired, keys: Mapping[str, KeyPair]) -> _Bindings:
    scope = desired.scope
    declared_keys = desired.keys
    declared = desired.declared_instances
    nothing: frozenset[str] = frozenset()
    keys_of: Counter[str] = Counter()
    candidates: list[Binding] = []
    unbound_allowed: list[Binding] = []
    owned_count = 0
    for key_id, pair in keys.items():
        bound = set(pair.bound_instance_ids)
        keys_of.update(bound)
        wanted = declared_keys.get(key_id)
        allowed = nothing if wanted is None else wanted.instances
        if wanted is not None:
            unbound_allowed.extend((key_id, iid) for iid in allowed.difference(bound))
        if scope is Scope.KEYS and wanted is None:
            continue
        owned = bound.intersection(declared) if scope is Scope.INSTANCES else bound
        owned_count += len(owned)
        candidates.extend((key_id, iid) for iid in owned.difference(allowed))
    candidates.sort()
    read = _deciding_candidates(desired, candidates)
    read.update(declared.difference(keys_of))
    return _Bindings(owned_count, candidates, keys_of, unbound_allowed, read, declared)


def instances_needed(desired: Desired, keys: Mapping[str, KeyPair]) -> set[str]:
    """The instances whose DescribeInstances answer decides the plan (issue 16): those with a
    candidate unbind that is not protected (their state and OS decide the change), and the
    declared instances that no key pair reports bound (only a read can say they exist). A
    declared instance seen bound to any key exists, so reading it would decide nothing.
    """
    return _bindings(desired, keys).read


def _absent_declared(observed: Observed, declared: frozenset[str], read: set[str]) -> set[str]:
    """Declared instances that do not exist: read (``instances_needed``) and not found. Every
    declared instance no key pair reports bound is read; one that is reported bound and was not
    read (no unprotected candidate on it) exists, because DescribeKeyPairs saw it. Trade-off: a
    key pair that still listed a deleted instance would make it look alive, but no unbind is
    ever planned on an instance without reading it, so the worst case is a missing finding."""
    present = observed.instances.keys()
    return {iid for iid in declared.intersection(read) if iid not in present}


def unchangeable_reason(instance: Instance | None) -> str | None:
    """Why no API can ever make an unbind on this instance (so it is not an alert), or None."""
    if instance is not None and instance.is_windows:
        return f"Windows instance ({instance.os}): no API can unbind keys from Windows instances"
    return None


def blocked_reason(instance: Instance | None, region: str) -> str | None:
    """Why an unbind on this instance cannot happen now, or None when it can (the executor
    asks again at apply time, so an unchangeable instance is also a reason here)."""
    if instance is None:
        return f"instance not found in {region} (deleted, returned, or not this account's)"
    never = unchangeable_reason(instance)
    if never is not None:
        return never
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
    """Compare the desired state with the observed one (the heart of ``plan``).

    ``observed.instances`` need hold only what ``instances_needed`` asks for: a declared
    instance that some key pair reports bound exists without being read.
    """
    sets = _bindings(desired, observed.keys)
    absent = _absent_declared(observed, sets.declared, sets.read)
    findings: list[Finding] = []

    findings.extend(key_findings(desired.keys, observed.keys, observed.region))
    if not ids.is_known_region(desired.region):
        findings.append(
            Finding(
                Severity.WARNING,
                "region-unknown",
                f"region {desired.region} is not one this version of cvmkeys knows: used as written",
            )
        )
    typos = _near_miss_typos(observed, absent, sets.keys_of.keys(), sets.declared)
    findings.extend(_missing_instance_findings(desired, observed, absent, typos))
    # A live instance one edit away from a declared-but-absent ID: the instance the file meant.
    suspect = {live_id: meant for meant, live_ids in sorted(typos.items()) for live_id in live_ids}

    missing = sorted(b for b in sets.unbound_allowed if b[1] not in absent)
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

    changes = _changes(desired, observed, sets.candidates, sets.keys_of, suspect)
    return Diff(tuple(changes), tuple(findings), sets.owned_count, len(missing))


def key_findings(
    declared: Mapping[str, DesiredKey], keys: Mapping[str, KeyPair], region: str
) -> list[Finding]:
    """Errors for declared keys that do not exist or whose live name is not the declared one.

    Pure and self-contained so that apply can run it again on the key pairs it re-reads.
    """
    findings: list[Finding] = []
    for key_id, key in sorted(declared.items()):
        pair = keys.get(key_id)
        if pair is None:
            findings.append(
                Finding(
                    Severity.ERROR,
                    "key-not-found",
                    f"key {key_id} does not exist in {region}: "
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
                    f"key {key_id} is named {pair.name!r} in {region}, the file says {key.name!r}",
                    key_id=key_id,
                    location=key.location,
                )
            )
    return findings


def _near_miss_typos(
    observed: Observed, absent: set[str], seen_bound: Iterable[str], declared: frozenset[str]
) -> dict[str, list[str]]:
    """For each declared instance that does not exist: the live instances (bound to some key,
    or observed) that the file does not name and whose ID is one edit away from it. Each is
    almost certainly the instance the file meant, so nothing is unbound from it until the file
    is fixed. Declared IDs that exist are never suspects: the file names them correctly."""
    if not absent:
        return {}
    live_ids = set(seen_bound)
    live_ids.update(observed.instances)
    return ids.near_miss_map(absent, live_ids - declared)


def _missing_instance_findings(
    desired: Desired, observed: Observed, absent: set[str], typos: Mapping[str, list[str]]
) -> list[Finding]:
    findings: list[Finding] = []
    for iid in sorted(absent):
        location = desired.instance_locations.get(iid)
        if iid in typos:
            labels = []
            for live_id in typos[iid]:
                live = observed.instances.get(live_id)
                labels.append(f"{live_id} ({live.name})" if live is not None and live.name else live_id)
            keys = sorted(k for k, key in desired.keys.items() if iid in key.instances)
            where = f" for {', '.join(keys)}" if keys else ""
            findings.append(
                Finding(
                    Severity.ERROR,
                    "instance-id-typo",
                    f"instance {iid} is declared{where} but does not exist in {observed.region}: "
                    f"did you mean {' or '.join(labels)}? (nothing is unbound from "
                    f"{' or '.join(typos[iid])} until the file is fixed)",
                    key_id=keys[0] if len(keys) == 1 else None,
                    instance_id=iid,
                    location=location,
                )
            )
            continue
        lenient = iid in desired.missing_instances_warn
        findings.append(
            Finding(
                Severity.WARNING if lenient else Severity.ERROR,
                "instance-not-found",
                f"instance {iid} is declared but does not exist in {observed.region}"
                + (
                    " (missing_instances: warn)"
                    if lenient
                    else "; remove it from the file, or set 'missing_instances: warn' if "
                    "instances come and go"
                ),
                instance_id=iid,
                location=location,
            )
        )
    return findings


def _changes(
    desired: Desired,
    observed: Observed,
    candidates: list[Binding],
    keys_of: Mapping[str, int],
    suspect: Mapping[str, str],
) -> list[Change]:
    statuses: list[tuple[Binding, ChangeStatus, str]] = []
    for binding in candidates:
        key_id, iid = binding
        if key_id in desired.protected_keys:
            statuses.append((binding, ChangeStatus.PROTECTED, f"key {key_id} is protected"))
        elif iid in desired.protected_instances:
            statuses.append((binding, ChangeStatus.PROTECTED, f"instance {iid} is protected"))
        elif (never := unchangeable_reason(observed.instances.get(iid))) is not None:
            statuses.append((binding, ChangeStatus.UNCHANGEABLE, never))
        elif iid in suspect:
            typo = f"the file names {suspect[iid]}, which does not exist: a typo for {iid}? fix the file"
            statuses.append((binding, ChangeStatus.BLOCKED, typo))
        else:
            reason = blocked_reason(observed.instances.get(iid), observed.region)
            if reason is None:
                statuses.append((binding, ChangeStatus.READY, "not allowed by the file"))
            else:
                statuses.append((binding, ChangeStatus.BLOCKED, reason))

    # An instance is left keyless when every key it has is removed by a ready change.
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


# --------------------------------------------------------------------------- hooks for core.disruption


def instance_is_running(instance: Instance) -> bool:
    """The one "is running" test: the only state a ``disruption`` block lets cvmkeys stop."""
    return instance.state is InstanceState.RUNNING


def blocked_only_by_running(change: Change, instance: Instance | None, region: str) -> bool:
    """Whether the one thing between ``change`` and its unbind is that the instance runs, so a
    ``disruption`` block may stop it: blocked, by the instance's state and nothing else (not a
    near-miss ID in the file, not protected, not Windows), and the instance running."""
    return (
        change.status is ChangeStatus.BLOCKED
        and instance is not None
        and instance_is_running(instance)
        and change.reason == blocked_reason(instance, region)
    )
