"""The fewest API calls a plan and an apply can make, computed from the fleet and the desired file.

Independent of the product on purpose: this module imports nothing from ``reconciler``. It reads
the emulator's fleet file (JSON) and the desired-state file (YAML, with libyaml) itself and
applies the rules of docs/desired-state.md directly, so a product that plans too much, reads
too much or batches badly cannot also move the yardstick it is measured with.

* **plan reads**: every key pair (its bound instances are the live bindings, and the last-key
  check needs all of them): ceil(keys / 100) DescribeKeyPairs, at least 1; then the instances
  that decide the plan: those with a candidate unbind that is not protected, and declared
  instances not seen bound to any key (only a read can say whether they exist):
  ceil(those / 100) DescribeInstances.
* **unbind calls, API 2.0**: one key a call, 100 instances a call: the sum over keys of
  ceil(ready unbinds of that key / 100). A ready unbind is a candidate on a Linux instance that
  is shut down (status 4).
* **unbind calls, API 3.0**: a lower bound only (the exact minimum is a biclique partition):
  every touched instance is in a call, 100 a call, and an instance in one call per 100 of its
  keys: max(ceil(touched instances / 100), most keys lost by one instance / 100 rounded up).
* **apply reads** (a saved plan, every call succeeding): the stale check reads every key pair
  (the last-key premise needs all of an instance's keys: ceil(keys / 100), at least 1) and the
  instances with a ready unbind (ceil(/100)); each instance must be seen idle after its
  last call, 100 a look, and at least once per wave, and there are at least as many waves as
  the most keys one instance loses (2.0): max(that, ceil(ready instances / 100)) polls; the
  verification reads the unbound keys (ceil(/100)).
"""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

PAGE = 100
STATUS_SHUT_DOWN = 4


def pages(count: int) -> int:
    return math.ceil(count / PAGE)


@dataclass(frozen=True)
class Truth:
    """What the fleet and the desired file decide, by the documented rules."""

    keys: int  # key pairs in the region
    candidates: frozenset[tuple[str, str]]  # owned, not allowed, not protected
    protected: frozenset[tuple[str, str]]  # owned, not allowed, protected
    ready: frozenset[tuple[str, str]]  # candidates on a shut-down Linux instance
    deciding_instances: frozenset[str]  # the instances a plan must read
    managed_instances: frozenset[str] = field(default=frozenset())  # declared or with an owned binding

    @property
    def ready_by_key(self) -> Counter[str]:
        return Counter(k for k, _ in self.ready)

    @property
    def ready_instances(self) -> set[str]:
        return {i for _, i in self.ready}

    @property
    def most_keys_lost(self) -> int:
        return max(Counter(i for _, i in self.ready).values(), default=0)


def _ids(value: Any) -> list[str]:
    """A list of IDs as the desired file writes them (plain IDs or ``{id: ...}`` items)."""
    out: list[str] = []
    for item in value or []:
        out.append(item["id"] if isinstance(item, dict) else str(item))
    return out


def truth_of(fleet_file: Path, desired_file: Path) -> Truth:
    """Apply the desired file's rules to the fleet file's region, without the product."""
    desired = yaml.load(desired_file.read_text(encoding="utf-8"), Loader=yaml.CSafeLoader)
    fleet = json.loads(fleet_file.read_text(encoding="utf-8"))
    region = fleet["regions"][desired["region"]]
    bound = {k["id"]: set(k.get("bound", [])) for k in region["keys"]}
    instances = {i["id"]: i for i in region["instances"]}
    scope = desired.get("scope", "keys")
    declared_keys = {k: set(_ids((v or {}).get("instances"))) for k, v in (desired.get("keys") or {}).items()}
    declared_instances = set(_ids(desired.get("instances")))
    for ids in declared_keys.values():
        declared_instances |= ids
    protected = desired.get("protected") or {}
    protected_keys, protected_instances = (
        set(_ids(protected.get("keys"))),
        set(_ids(protected.get("instances"))),
    )

    live = {(k, i) for k, ids in bound.items() for i in ids}
    if scope == "keys":
        owned = {b for b in live if b[0] in declared_keys}
    elif scope == "instances":
        owned = {b for b in live if b[1] in declared_instances}
    else:
        owned = live
    allowed = {(k, i) for k, ids in declared_keys.items() for i in ids}
    unwanted = owned - allowed
    shielded = {b for b in unwanted if b[0] in protected_keys or b[1] in protected_instances}
    candidates = unwanted - shielded

    def can_unbind(iid: str) -> bool:
        inst = instances.get(iid)
        return bool(inst) and inst["status"] == STATUS_SHUT_DOWN and "windows" not in inst["os"].lower()

    ready = {b for b in candidates if can_unbind(b[1])}
    seen_bound = {i for ids in bound.values() for i in ids}
    deciding = {i for _, i in candidates} | (declared_instances - seen_bound)
    return Truth(
        keys=len(bound),
        candidates=frozenset(candidates),
        protected=frozenset(shielded),
        ready=frozenset(ready),
        deciding_instances=frozenset(deciding),
        managed_instances=frozenset(declared_instances | {i for _, i in owned}),
    )


def plan_minimum(truth: Truth) -> dict[str, int]:
    return {
        "DescribeKeyPairs": max(1, pages(truth.keys)),
        "DescribeInstances": pages(len(truth.deciding_instances)),
    }


def unbind_minimum_2(truth: Truth) -> int:
    return sum(pages(n) for n in truth.ready_by_key.values())


def unbind_lower_bound_3(truth: Truth) -> int:
    return (
        max(pages(len(truth.ready_instances)), math.ceil(truth.most_keys_lost / PAGE)) if truth.ready else 0
    )


def apply_minimum(truth: Truth, api: str = "2.0") -> dict[str, int]:
    """Calls of an apply of a saved plan when every call succeeds (reads: a lower bound)."""
    if not truth.ready:
        return {}
    keys = {k for k, _ in truth.ready}
    waves = truth.most_keys_lost if api == "2.0" else math.ceil(truth.most_keys_lost / PAGE)
    polls = max(waves, pages(len(truth.ready_instances)))
    unbind = (
        {"UnBindInstanceKey": unbind_minimum_2(truth)}
        if api == "2.0"
        else {"DisassociateInstancesKeyPairs": unbind_lower_bound_3(truth)}
    )
    return {
        # The stale check reads every key pair (the last-key premise needs all of an
        # instance's keys, as plan reads them); the verification only the touched keys.
        "DescribeKeyPairs": max(1, pages(truth.keys)) + pages(len(keys)),
        "DescribeInstances": pages(len(truth.ready_instances)) + polls,
        **unbind,
    }


def summary(truth: Truth) -> Mapping[str, int]:
    return {
        "keys": truth.keys,
        "candidates": len(truth.candidates),
        "protected": len(truth.protected),
        "ready": len(truth.ready),
        "blocked": len(truth.candidates) - len(truth.ready),
        "deciding_instances": len(truth.deciding_instances),
        "managed_instances": len(truth.managed_instances),
        "ready_instances": len(truth.ready_instances),
        "most_keys_lost": truth.most_keys_lost,
    }
