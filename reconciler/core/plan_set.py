"""The plan set: several regions' plans in one file, and back. Pure (no I/O).

``cvmkeys plan`` over files that name several regions writes one plan per region, each exactly
the single-region plan document (``core.document``, its own integrity digest included), inside
a small envelope::

    {"format_version": "3.1", "kind": "cvmkeys-plan-set",
     "plans": [<plan>, <plan>, ...], "integrity": {"algorithm": "sha256", "digest": "..."}}

The plans are sorted by region, at least two, no region twice; the envelope's digest covers
them all (so a plan cannot be dropped from or swapped into a set unnoticed). A run of one region
writes the plain plan document, as it always has. ``schemas/plan.schema.json`` accepts both
(``kind`` picks the branch); docs/plan-format.md describes the envelope.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from reconciler.core.document import (
    _INVISIBLE,
    _RERUN_HINT,
    INTEGRITY_ALGORITHM,
    SchemaValidator,
    _check_integrity,
    _check_version,
    canonical_digest,
    dump_plan,
    parse_checked,
    plan_from_data,
)
from reconciler.errors import PlanIntegrityError
from reconciler.model import PLAN_FORMAT_VERSION, Plan

PLAN_SET_KIND = "cvmkeys-plan-set"


def is_plan_set(data: Mapping[str, Any]) -> bool:
    """True for a parsed plan file that is a set (``kind`` names it), not a plan."""
    return data.get("kind") == PLAN_SET_KIND


def dump_plans(plans: Sequence[Plan]) -> str:
    """The plan file's text for ``plans``: the plan document itself for one region, else the set
    envelope (sorted by region; indent 2, sorted keys, trailing newline, with ``integrity``)."""
    if len(plans) == 1:
        return dump_plan(plans[0])
    ordered = sorted(plans, key=lambda p: p.region)
    regions = [p.region for p in ordered]
    if len(set(regions)) != len(regions) or not regions:
        raise ValueError(f"a plan set needs distinct regions, got {regions}")
    # Each member is exactly what dump_plan writes (and so digests as it would alone).
    members = [json.loads(dump_plan(p)) for p in ordered]
    data: dict[str, Any] = {"format_version": PLAN_FORMAT_VERSION, "kind": PLAN_SET_KIND, "plans": members}
    data["integrity"] = {"algorithm": INTEGRITY_ALGORITHM, "digest": canonical_digest(data)}
    text = json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False, allow_nan=False)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate from a cloud name: escape everything (as dump_plan)
        text = json.dumps(data, indent=2, sort_keys=True, ensure_ascii=True, allow_nan=False)
    return _INVISIBLE.sub(lambda m: f"\\u{ord(m.group()):04x}", text) + "\n"


def load_plans(text: str, source: str, *, schema: SchemaValidator) -> tuple[Plan, ...]:
    """A plan file's text as its plans: one for a plan document (``core.document.load_plan``'s
    checks), every region's for a set (the envelope's version and digest, then each member's
    version, digest, schema and batches, named ``SOURCE[region]`` in messages)."""
    data = parse_checked(text, source)
    if not is_plan_set(data):
        return (plan_from_data(data, schema=schema, source=source),)
    members = data.get("plans")
    if not isinstance(members, list) or len(members) < 2 or not all(isinstance(m, dict) for m in members):
        raise PlanIntegrityError(
            f"{source}: not a valid cvmkeys plan set ($.plans must hold two or more plans)", hint=_RERUN_HINT
        )
    plans: list[Plan] = []
    for index, member in enumerate(members):
        where = f"{source}[{member.get('region', index)}]"
        if is_plan_set(member):
            raise PlanIntegrityError(f"{where}: a plan set inside a plan set", hint=_RERUN_HINT)
        _check_version(member, where)
        _check_integrity(member, where)
        plans.append(plan_from_data(member, schema=schema, source=where))
    regions = [p.region for p in plans]
    if regions != sorted(set(regions)):
        raise PlanIntegrityError(
            f"{source}: a plan set holds each region once, sorted (got {', '.join(regions)})",
            hint=_RERUN_HINT,
        )
    return tuple(plans)
