"""What the terminal and Markdown renderers both read off a plan or an apply result. Pure.

The two renderers word things differently, but they count the same changes, order the same
findings, take names from the same plan and say the same thing about a binding's result: that
reading lives here once, so the two forms of one plan cannot disagree.
"""

from __future__ import annotations

from collections.abc import Iterable

from reconciler.model import BindingResult, Change, ChangeStatus, Finding, Outcome, Plan, Severity
from reconciler.render._sanitize import clean


def status_counts(changes: Iterable[Change]) -> dict[ChangeStatus, int]:
    """How many of ``changes`` have each status (every status present, zero or more)."""
    counts = dict.fromkeys(ChangeStatus, 0)
    for change in changes:
        counts[change.status] += 1
    return counts


def error_count(plan: Plan) -> int:
    """How many of the plan's findings are errors (each one makes apply refuse the plan)."""
    return sum(1 for f in plan.findings if f.severity is Severity.ERROR)


def split_findings(findings: Iterable[Finding]) -> tuple[list[Finding], list[Finding]]:
    """The errors, and the other findings (warnings, then info); each in plan order."""
    findings = tuple(findings)
    errors = [f for f in findings if f.severity is Severity.ERROR]
    others = [f for f in findings if f.severity is not Severity.ERROR]
    others.sort(key=lambda f: f.severity is not Severity.WARNING)  # stable: warnings, then info
    return errors, others


def plan_names(plan: Plan | None) -> tuple[dict[str, str], dict[str, str]]:
    """Key ID -> key name and instance ID -> instance name, the first name each change gives
    (none without a plan: an apply result carries IDs only)."""
    key_names: dict[str, str] = {}
    instance_names: dict[str, str] = {}
    for change in plan.changes if plan is not None else ():
        if change.key_name:
            key_names.setdefault(change.key_id, change.key_name)
        if change.instance_name:
            instance_names.setdefault(change.instance_id, change.instance_name)
    return key_names, instance_names


def binding_detail(item: BindingResult) -> str:
    """What a binding's result says beyond its outcome: the (cleaned) reason, the API code,
    and the attempts a failure took when the reason does not already say so."""
    detail = clean(item.reason)
    if item.api_code is not None:
        detail = f"API code {item.api_code}: {detail}" if detail else f"API code {item.api_code}"
    if item.outcome is Outcome.FAILED and item.attempts > 1 and "attempts" not in detail:
        detail += f" (after {item.attempts} attempts)"
    return detail
