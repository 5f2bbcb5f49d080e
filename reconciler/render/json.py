"""Plans and apply results as JSON text. Pure: returns a string.

Called by the CLI (``plan --format json``, ``show --format json``, ``apply --format json``).
The plan form is the plan document itself (``core.document``), integrity digest included, so
``cvmkeys plan --format json > plan.json`` is as good a plan file as ``plan --out``.
"""

from __future__ import annotations

import json

from reconciler.core.document import dump_plan, result_to_data
from reconciler.model import ApplyResult, Plan


def render_plan_json(plan: Plan) -> str:
    """The plan document (see docs/plan-format.md), with its trailing newline."""
    return dump_plan(plan)


def render_result_json(result: ApplyResult) -> str:
    """The apply result (``core.document.result_to_data``): indent 2, sorted keys, newline."""
    return json.dumps(result_to_data(result), indent=2, sort_keys=True, ensure_ascii=False) + "\n"
