"""Several regions' plans and apply results as one rendering: a section per region. Pure.

Each region's section is exactly what the single-region renderer writes for it (text, Markdown,
JSON), so one region renders as it always has. The Markdown stays a PR comment: a short table of
the regions first, then the regions' own comments, which share ``max_chars`` the way one
comment's sections share it (``render.markdown._allocate``: a region that fits gets all it needs,
the others split the rest and cut their details as they would alone).
"""

from __future__ import annotations

import json
from collections.abc import Sequence

from reconciler.core.document import result_to_data
from reconciler.core.plan_set import dump_plans
from reconciler.model import ApplyResult, Plan
from reconciler.render.markdown import (
    DEFAULT_MAX_CHARS,
    _allocate,
    _hard_cut,
    code,
    render_plan_markdown,
    render_result_markdown,
)
from reconciler.render.text import plan_line, render_plan_text, render_result_text, result_line

RESULT_SET_KIND = "cvmkeys-result-set"


def render_plans_text(plans: Sequence[Plan], *, color: bool) -> str:
    """One region: its plan text. Several: each region's, in order, then a line per region."""
    if len(plans) == 1:
        return render_plan_text(plans[0], color=color)
    parts = [render_plan_text(p, color=color) for p in plans]
    totals = [f"Regions: {len(plans)}."] + [f"  {p.region}: {plan_line(p)}" for p in plans]
    return "\n".join(parts) + "\n" + "\n".join(totals) + "\n"


def render_plans_json(plans: Sequence[Plan]) -> str:
    """The plan file itself: the plan document (one region) or the plan set (several)."""
    return dump_plans(plans)


def _regions_table(lines: Sequence[tuple[str, str]]) -> str:
    rows = "".join(f"| {code(region)} | {line} |\n" for region, line in lines)
    return "| Region | Plan |\n| --- | --- |\n" + rows + "\n"


def render_plans_markdown(
    plans: Sequence[Plan], *, max_chars: int = DEFAULT_MAX_CHARS, plan_file: str = "plan.json"
) -> str:
    """One PR comment of at most ``max_chars`` characters for every region of the plan."""
    if len(plans) == 1:
        return render_plan_markdown(plans[0], max_chars=max_chars, plan_file=plan_file)
    head = f"## cvmkeys plan: {len(plans)} regions\n\n" + _regions_table(
        [(p.region, plan_line(p)) for p in plans]
    )
    budget = max_chars - len(head)
    full = [render_plan_markdown(p, max_chars=max_chars, plan_file=plan_file) for p in plans]
    if sum(len(s) for s in full) <= budget:
        return head + "".join(full)
    shares = _allocate([len(s) for s in full], max(budget, 0))
    parts = [
        render_plan_markdown(p, max_chars=share, plan_file=plan_file) if share < len(text) else text
        for p, text, share in zip(plans, full, shares, strict=True)
    ]
    return _hard_cut(head + "".join(parts), max_chars)


def render_results_text(results: Sequence[tuple[ApplyResult, Plan]], *, color: bool) -> str:
    """Every region's apply result, in order, then a line per region."""
    parts = [render_result_text(r, color=color, plan=p) for r, p in results]
    if len(results) == 1:
        return parts[0]
    totals = [f"Regions: {len(results)}."] + [f"  {r.region}: {result_line(r)}" for r, _ in results]
    return "".join(f"Region {r.region}:\n{text}\n" for (r, _), text in zip(results, parts, strict=True)) + (
        "\n".join(totals) + "\n"
    )


def render_results_markdown(
    results: Sequence[tuple[ApplyResult, Plan]], *, max_chars: int = DEFAULT_MAX_CHARS
) -> str:
    """Every region's apply result as one PR comment of at most ``max_chars`` characters."""
    if len(results) == 1:
        result, plan = results[0]
        return render_result_markdown(result, plan, max_chars=max_chars)
    head = f"## cvmkeys apply: {len(results)} regions\n\n" + _regions_table(
        [(r.region, result_line(r)) for r, _ in results]
    ).replace("| Plan |", "| Result |")
    budget = max_chars - len(head)
    full = [render_result_markdown(r, p, max_chars=max_chars) + "\n" for r, p in results]
    if sum(len(s) for s in full) > budget:
        shares = _allocate([len(s) for s in full], max(budget, 0))
        full = [
            render_result_markdown(r, p, max_chars=max(share - 1, 0)) + "\n" if share < len(text) else text
            for (r, p), text, share in zip(results, full, shares, strict=True)
        ]
    return _hard_cut(head + "".join(full), max_chars)


def render_results_json(results: Sequence[ApplyResult]) -> str:
    """One region: its result document. Several: ``{"kind": "cvmkeys-result-set", "results":
    [<result>, ...]}``, sorted by region."""
    if len(results) == 1:
        data: object = result_to_data(results[0])
    else:
        data = {"kind": RESULT_SET_KIND, "results": [result_to_data(r) for r in results]}
    return json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False) + "\n"
