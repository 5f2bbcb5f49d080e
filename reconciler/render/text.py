"""Terminal text for plans and apply results, Terraform-like. Pure: returns a string.

Called by the CLI's views (``plan``, ``show``, ``apply``), which decide ``color`` once
(``cli.views.Terminal``: ``--no-color``, ``NO_COLOR``, ``TERM=dumb``, whether the stream is a
terminal) and print. Colour is rich's rendering of a style in the 8 standard colours, added only
when ``color`` is true, so the output is the same bytes on every machine.

Every string that can carry cloud-supplied text (names, reasons, warnings, findings) goes
through ``clean``: a name cannot inject escapes or control characters into the terminal.
"""

from __future__ import annotations

from collections.abc import Iterable
from functools import cache
from typing import Any

from reconciler.common import plural
from reconciler.model import (
    ApiVersion,
    ApplyResult,
    Batch,
    BindingResult,
    Change,
    ChangeStatus,
    Finding,
    Outcome,
    Plan,
    Severity,
)
from reconciler.render._sanitize import clean, display_width, pad
from reconciler.render._shared import binding_detail, error_count, plan_names, split_findings, status_counts
from reconciler.render.stops import plan_stops_lines, result_stops_lines, still_down_lines

_BOLD, _DIM, _RED, _GREEN, _YELLOW, _CYAN = "bold", "dim", "red", "green", "yellow", "cyan"
NAME_LIMIT = 64  # longest name shown; the cloud allows 60, more is a hostile or odd name
_NAME_COLUMN_MAX = 32  # names longer than this do not widen their group's column
_WAVES_LISTED = 10

_SIGN = {
    ChangeStatus.READY: "-",
    ChangeStatus.BLOCKED: "!",
    ChangeStatus.PROTECTED: "=",
    ChangeStatus.UNCHANGEABLE: "~",
}
_SIGN_STYLE = {
    ChangeStatus.READY: _RED,
    ChangeStatus.BLOCKED: _YELLOW,
    ChangeStatus.PROTECTED: _DIM,
    ChangeStatus.UNCHANGEABLE: _DIM,
}
_SEVERITY_STYLE = {Severity.ERROR: _RED, Severity.WARNING: _YELLOW, Severity.INFO: _CYAN}
_OUTCOME_STYLE = {
    Outcome.DONE: _GREEN,
    Outcome.FAILED: _RED,
    Outcome.BLOCKED: _YELLOW,
    Outcome.PROTECTED: _DIM,
    Outcome.UNCHANGEABLE: _DIM,
    Outcome.NOT_ATTEMPTED: _YELLOW,
}
_OUTCOME_LABEL = {
    Outcome.DONE: "done",
    Outcome.FAILED: "failed",
    Outcome.BLOCKED: "blocked",
    Outcome.PROTECTED: "protected",
    Outcome.UNCHANGEABLE: "unchangeable",
    Outcome.NOT_ATTEMPTED: "not attempted",
}


def _styled(text: str, color: bool, *styles: str) -> str:
    if not color or not text:
        return text
    return str(_style(" ".join(styles)).render(text, color_system=_standard_colors()))


@cache
def _style(definition: str) -> Any:
    from rich.style import Style  # only when colouring: plain output needs no rich

    return Style.parse(definition)


@cache
def _standard_colors() -> Any:
    from rich.color import ColorSystem

    return ColorSystem.STANDARD


def _key_title(key_id: str, key_name: str | None) -> str:
    title = f"key {clean(key_id)}"
    return f"{title} ({clean(key_name, NAME_LIMIT)})" if key_name else title


def _grouped(items: Iterable[Change]) -> dict[str, list[Change]]:
    """Changes by key, keys in order of first appearance, changes in plan order."""
    groups: dict[str, list[Change]] = {}
    for item in items:
        groups.setdefault(item.key_id, []).append(item)
    return groups


def _header(plan: Plan, color: bool) -> list[str]:
    lines = [_styled(f"cvmkeys plan for {clean(plan.region)} (scope: {plan.scope.value})", color, _BOLD)]
    lines.append(f"  endpoint  {clean(plan.endpoint)} (CVM API {plan.api.value})")
    if plan.caller is not None:
        lines.append(f"  as        account {clean(plan.caller.account_id)}, {clean(plan.caller.arn)}")
    for source in plan.sources:
        lines.append(f"  source    {clean(source.path)}  sha256:{clean(source.sha256)[:12]}")
    if plan.created_at:
        lines.append(f"  created   {clean(plan.created_at)}")
    return lines


def _change_lines(plan: Plan, color: bool) -> list[str]:
    lines = [
        "",
        "Changes ("
        + _styled("-", color, _RED)
        + " unbind, "
        + _styled("!", color, _YELLOW)
        + " blocked: not attempted, "
        + _styled("=", color, _DIM)
        + " protected: never touched"
        + (
            ", " + _styled("~", color, _DIM) + " unchangeable: no API can"
            if any(c.status is ChangeStatus.UNCHANGEABLE for c in plan.changes)
            else ""
        )
        + "):",
    ]
    for key_id, changes in _grouped(plan.changes).items():
        key_name = next((c.key_name for c in changes if c.key_name), None)
        lines.append("")
        lines.append("  " + _styled(_key_title(key_id, key_name), color, _BOLD))
        names = [clean(c.instance_name or "", NAME_LIMIT) for c in changes]
        width = min(max((display_width(n) for n in names), default=0), _NAME_COLUMN_MAX)
        id_width = max(len(clean(c.instance_id)) for c in changes)
        for change, name in zip(changes, names, strict=True):
            sign = _styled(_SIGN[change.status], color, _SIGN_STYLE[change.status])
            line = f"    {sign} {pad(clean(change.instance_id), id_width)}  {pad(name, width)}"
            if change.status is not ChangeStatus.READY:
                label = _styled(f"{change.status.value}:", color, _SIGN_STYLE[change.status])
                line += f"  {label} {clean(change.reason)}"
            elif change.action != "unbind":  # stop-unbind-start: say so where the reviewer looks
                line += f"  {clean(change.reason)}"
            lines.append(line.rstrip())
            for warning in change.warnings:
                lines.append("        " + _styled("warning:", color, _YELLOW) + " " + clean(warning))
    return lines


def _finding_line(finding: Finding, color: bool) -> str:
    label = _styled(f"{finding.severity.value}:", color, _SEVERITY_STYLE[finding.severity])
    where = f"{clean(str(finding.location))}: " if finding.location else ""
    return f"  {label} {where}{clean(finding.message)} [{clean(finding.code)}]"


def _findings_lines(findings: Iterable[Finding], color: bool) -> list[str]:
    errors, others = split_findings(findings)
    ordered = errors + others
    if not ordered:
        return []
    return ["", _styled("Findings:", color, _BOLD)] + [_finding_line(f, color) for f in ordered]


# The unbind action of each API, as the plan's calls are named for people.
UNBIND_ACTION = {ApiVersion.V2: "UnBindInstanceKey", ApiVersion.V3: "DisassociateInstancesKeyPairs"}


def waves_summary(batches: Iterable[Batch], api: ApiVersion = ApiVersion.V2) -> str:
    """``"2 waves, 3 calls to UnBindInstanceKey (wave 1: 2 calls, 150 instances; ...)"``.

    Waves are numbered from 1 for people; the plan document keeps the core's numbers.
    """
    per_wave: dict[int, tuple[int, int]] = {}
    for batch in batches:
        calls, instances = per_wave.get(batch.wave, (0, 0))
        per_wave[batch.wave] = (calls + 1, instances + len(batch.instance_ids))
    calls_total = sum(calls for calls, _ in per_wave.values())
    parts = [
        f"wave {number}: {plural(calls, 'call')}, {plural(instances, 'instance')}"
        for number, (calls, instances) in enumerate(
            (per_wave[w] for w in sorted(per_wave)[:_WAVES_LISTED]), start=1
        )
    ]
    if len(per_wave) > _WAVES_LISTED:
        parts.append(f"{len(per_wave) - _WAVES_LISTED} more waves")
    return (
        f"{plural(len(per_wave), 'wave')}, {plural(calls_total, 'call')} to {UNBIND_ACTION[api]} "
        f"({'; '.join(parts)})"
    )


def plan_line(plan: Plan) -> str:
    """The last line of a plan: ``"Plan: 12 to unbind (1 with a warning), 2 blocked, 1
    protected."`` or the no-changes sentence. Counted from the changes themselves."""
    if not plan.changes:
        if plan.has_errors:  # e.g. a region with nothing in it: the errors, not "match"
            return "No unbinds found, but the plan has errors (see Findings): it is not a result."
        return "No changes. The live bindings match the file."
    counts = status_counts(plan.changes)
    unchangeable = counts[ChangeStatus.UNCHANGEABLE]
    # A reviewer who reads only this line must still learn that some unbinds carry a warning
    # (a last key removed): the warnings themselves are above, at their changes.
    warned = sum(1 for c in plan.changes if c.status is ChangeStatus.READY and c.warnings)
    return (
        f"Plan: {counts[ChangeStatus.READY]} to unbind"
        + (f" ({warned} with a warning)" if warned else "")
        + f", {counts[ChangeStatus.BLOCKED]} blocked, "
        f"{counts[ChangeStatus.PROTECTED]} protected"
        + (f", {unchangeable} unchangeable (no API can unbind them)" if unchangeable else "")
        + "."
    )


def _verdict_lines(plan: Plan, color: bool) -> list[str]:
    lines: list[str] = []
    if not plan.safety.safe:
        lines += [
            "",
            _styled(
                "UNSAFE: this plan exceeds its safety limits; apply refuses it without --force.",
                color,
                _BOLD,
                _RED,
            ),
        ]
        lines += [f"  - {clean(v)}" for v in plan.safety.violations]
    errors = error_count(plan)
    if errors:
        lines += [
            "",
            _styled(
                f"This plan has {plural(errors, 'error')} (see Findings); apply refuses it.",
                color,
                _BOLD,
                _RED,
            ),
        ]
    return lines


def render_plan_text(plan: Plan, *, color: bool) -> str:
    """The plan for a terminal or a CI log; ends with the ``Plan:`` line and a newline."""
    lines = _header(plan, color)
    if plan.changes:
        lines += _change_lines(plan, color)
    lines += _findings_lines(plan.findings, color)
    lines += plan_stops_lines(plan)
    if plan.batches:
        lines += ["", "Calls: " + waves_summary(plan.batches, plan.api) + "."]
    elif plan.stops is not None and plan.stops.stops:
        # Every change waits for its stop: "nothing is ready" would contradict the Plan line.
        lines += ["", "Calls: no unbind waves; the stopped instances are unbound in their rounds (Stops)."]
    elif plan.changes:
        lines += ["", "Calls: none; nothing is ready to unbind."]
    lines += _verdict_lines(plan, color)
    lines += ["", _styled(plan_line(plan), color, _BOLD)]
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- apply results


def result_line(result: ApplyResult) -> str:
    """``"Apply complete: 12 done, 1 failed, 2 blocked, 1 protected."`` (``interrupted`` when
    it stopped early; not-attempted bindings are counted only when there are some)."""
    head = "Apply interrupted" if result.interrupted else "Apply complete"
    parts = [
        f"{result.count(Outcome.DONE)} done",
        f"{result.count(Outcome.FAILED)} failed",
        f"{result.count(Outcome.BLOCKED)} blocked",
        f"{result.count(Outcome.PROTECTED)} protected",
    ]
    unchangeable = result.count(Outcome.UNCHANGEABLE)
    if unchangeable:
        parts.append(f"{unchangeable} unchangeable")
    not_attempted = result.count(Outcome.NOT_ATTEMPTED)
    if not_attempted:
        parts.append(f"{not_attempted} not attempted")
    return f"{head}: {', '.join(parts)}."


def render_result_text(result: ApplyResult, *, color: bool, plan: Plan | None = None) -> str:
    """What apply did to every binding, grouped by key, then the ``Apply ...:`` line.

    ``plan`` (optional) supplies key and instance names for the bindings it lists.
    """
    key_names, instance_names = plan_names(plan)
    lines = [_styled(f"cvmkeys apply in {clean(result.region)}", color, _BOLD)]
    lines += [_styled(line, color, _BOLD, _RED) for line in still_down_lines(result)]
    groups: dict[str, list[BindingResult]] = {}
    for item in result.results:
        groups.setdefault(item.key_id, []).append(item)
    label_width = max(len(label) for label in _OUTCOME_LABEL.values())
    for key_id, items in groups.items():
        lines += ["", "  " + _styled(_key_title(key_id, key_names.get(key_id)), color, _BOLD)]
        names = [clean(instance_names.get(i.instance_id, ""), NAME_LIMIT) for i in items]
        width = min(max((display_width(n) for n in names), default=0), _NAME_COLUMN_MAX)
        id_width = max(len(clean(i.instance_id)) for i in items)
        for item, name in zip(items, names, strict=True):
            style = _OUTCOME_STYLE[item.outcome]
            label = _styled(pad(_OUTCOME_LABEL[item.outcome], label_width), color, style)
            line = f"    {label}  {pad(clean(item.instance_id), id_width)}  {pad(name, width)}"
            detail = binding_detail(item)
            if detail:
                line += f"  {detail}"
            lines.append(line.rstrip())
    if result.calls:
        calls = ", ".join(f"{clean(action)} {n}" for action, n in sorted(result.calls.items()))
        lines += ["", f"API calls: {calls}"]
    lines += result_stops_lines(result)
    if result.stopped_reason:
        lines += ["", _styled(f"Apply stopped early: {clean(result.stopped_reason)}", color, _BOLD, _RED)]
    failed = result.count(Outcome.FAILED) or result.interrupted or result.stopped_reason
    lines += ["", _styled(result_line(result), color, _BOLD, _RED if failed else _GREEN)]
    return "\n".join(lines) + "\n"
