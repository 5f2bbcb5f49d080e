"""Whether a saved plan may still be carried out, judged by what its remaining work depends on.

Called by ``Executor.check_fresh`` (``operations.apply_saved``), before any mutating call. The
plan's own effects are expected: a ready binding that is gone is done (by an earlier, partial
apply of this plan, or by someone else), so a plan applied part-way is applied again to finish
it, and a finished plan finds nothing left to do. What the rest depends on is re-read, every
key pair of the region as ``plan`` reads them, and each instance that still has work:

* it still exists, in the state the plan saw (an instance that is busy, a bind or unbind in
  progress, is waited for first: it still reports its old keys until the operation ends), or,
  for an instance in the plan's stop schedule, stopping, stopped or starting: the plan's own
  stops are expected too (``rolling.stopped_by_plan``, docs/disruption.md);
* the last-key premise: the plan's warnings were computed from every key bound to the instance
  (``Plan.premises``). If the remaining unbinds would now leave it with no key and the plan did
  not say so (someone removed its other keys, or another plan did), the plan is stale. Keys
  bound since, or other keys removed while one stays, change nothing the reviewer was told;
* each key still carries the name the plan saw (``diff.key_findings``, as plan checks names).

Anything else is refused as stale before a single unbind, with every reason (each said once).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from reconciler.cloud.base import CloudClient
from reconciler.common import plural
from reconciler.core.diff import key_findings
from reconciler.errors import StalePlanError
from reconciler.execute.rolling import stopped_by_plan
from reconciler.model import (
    MAX_IDS_PER_CALL,
    ApiVersion,
    Batch,
    Binding,
    DesiredKey,
    Instance,
    InstanceState,
    KeyPair,
    Plan,
)

_MAX_SHOWN = 5


@dataclass(frozen=True)
class Freshness:
    """What is left of a plan that is still fresh."""

    done: frozenset[Binding]  # ready bindings already gone: nothing to send for them
    remaining: tuple[Binding, ...]  # ready bindings still bound, in plan order

    @property
    def finished(self) -> bool:
        return not self.remaining


def check_fresh(
    client: CloudClient,
    plan: Plan,
    *,
    wait_timeout: float = 60.0,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> Freshness:
    """The plan's remaining work, or ``StalePlanError`` naming every premise that changed."""
    deadline = clock() + wait_timeout
    delay = 0.5
    while True:
        keys = {pair.key_id: pair for pair in client.describe_key_pairs()}
        ready = [(c.key_id, c.instance_id) for c in plan.ready_changes]
        remaining = [b for b in ready if _bound(keys, b)]
        wanted = sorted({iid for _, iid in remaining})
        instances = {i.instance_id: i for i in client.describe_instances(wanted)} if wanted else {}
        busy = [i for i in instances.values() if i.state is InstanceState.BUSY]
        if not busy or clock() + delay > deadline:
            break
        sleep(delay)
        delay = min(delay * 1.5, 5.0)
    reasons = _stale_reasons(plan, keys, instances, remaining)
    if reasons:
        shown = "; ".join(reasons[:_MAX_SHOWN])
        if len(reasons) > _MAX_SHOWN:
            shown += f"; and {len(reasons) - _MAX_SHOWN} more"
        done = len(ready) - len(remaining)
        note = f" ({plural(done, 'unbind')} of it already done)" if done else ""
        raise StalePlanError(
            f"plan is stale{note}: {shown}; nothing was sent",
            hint="cvmkeys plan ... --out PLANFILE, review it, then apply the new plan",
        )
    return Freshness(frozenset(ready) - frozenset(remaining), tuple(remaining))


def _bound(keys: dict[str, KeyPair], binding: Binding) -> bool:
    pair = keys.get(binding[0])
    return pair is not None and binding[1] in pair.bound_instance_ids


def _stale_reasons(
    plan: Plan, keys: dict[str, KeyPair], instances: dict[str, Instance], remaining: Iterable[Binding]
) -> list[str]:
    removed_by_plan: dict[str, set[str]] = {}
    for key_id, iid in remaining:
        removed_by_plan.setdefault(iid, set()).add(key_id)
    planned_on: dict[str, set[str]] = {}
    for change in plan.ready_changes:
        planned_on.setdefault(change.instance_id, set()).add(change.key_id)
    premises = {p.instance_id: p for p in plan.premises}
    reasons: list[str] = []
    for iid in sorted(removed_by_plan):
        instance = instances.get(iid)
        premise = premises[iid]  # every ready instance has one (checked when the plan is read)
        if instance is None:
            reasons.append(f"{iid} no longer exists")
            continue
        if (
            instance.api_state != premise.instance_state
            and instance.state is not InstanceState.BUSY
            and not stopped_by_plan(plan, instance)  # its own stops are expected (disruption)
        ):
            reasons.append(f"{iid} was {premise.instance_state}, now {instance.api_state}")
        now = {k for k, pair in keys.items() if iid in pair.bound_instance_ids}
        planned = planned_on[iid]
        warned = set(premise.key_ids) <= planned
        if not warned and now <= planned:
            lost = sorted(set(premise.key_ids) - planned - now)
            reasons.append(
                f"{iid} would be left with no key: {', '.join(lost)} "
                f"{'was' if len(lost) == 1 else 'were'} unbound from it since the plan, "
                "which kept it and did not warn"
            )
    # Key names, as plan checks them: the key the reviewer saw must still be that key.
    seen_names = {
        c.key_id: DesiredKey(c.key_id, frozenset(), name=c.key_name)
        for c in plan.ready_changes
        if c.key_name is not None and any(k == c.key_id for k, _ in remaining)
    }
    reasons += [f.message for f in key_findings(seen_names, keys, plan.region)]
    return reasons


def remaining_batches(plan: Plan, done: frozenset[Binding]) -> tuple[Batch, ...]:
    """The plan's batches without the bindings already done: a batch untouched is sent as
    saved; what is left of a batch with done bindings is regrouped (2.0: one key a call; 3.0:
    instances left with the same keys share a call), so every pair sent is a planned unbind."""
    if not done:
        return plan.batches
    batches: list[Batch] = []
    for batch in plan.batches:
        left = [b for b in batch.bindings if b not in done]
        if len(left) == len(batch.bindings):
            batches.append(batch)
        elif left:
            batches.extend(regroup(plan.api, batch.wave, left))
    return tuple(batches)


def regroup(
    api: ApiVersion, wave: int, bindings: Iterable[Binding], *, alone: Iterable[str] = ()
) -> list[Batch]:
    """Calls for these bindings of one wave, at most 100 instances a call. 2.0: one key a call
    (bindings of one wave never share an instance). Other APIs: instances left with the same
    keys share a call, so no instance is in two calls of the wave and every pair a call names
    is a planned unbind. Instances in ``alone`` get calls of their own (the executor's retry
    after a call of several instances was refused for one of them)."""
    solo = set(alone)
    by_keys: dict[tuple[str, ...], list[str]] = {}
    if api is ApiVersion.V2:
        for key_id, iid in bindings:
            by_keys.setdefault((key_id,), []).append(iid)
    else:
        keys_of: dict[str, list[str]] = {}
        for key_id, iid in bindings:
            keys_of.setdefault(iid, []).append(key_id)
        for iid, kids in keys_of.items():
            by_keys.setdefault(tuple(sorted(kids)), []).append(iid)
    calls: list[Batch] = []
    for key_ids in sorted(by_keys):
        ids = sorted(iid for iid in by_keys[key_ids] if iid not in solo)
        calls.extend(Batch(wave, key_ids, (iid,)) for iid in sorted(set(by_keys[key_ids]) & solo))
        for start in range(0, len(ids), MAX_IDS_PER_CALL):
            calls.append(Batch(wave, key_ids, tuple(ids[start : start + MAX_IDS_PER_CALL])))
    return calls
