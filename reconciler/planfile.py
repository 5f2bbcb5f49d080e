"""Reading a saved plan: the plan document (``core.document``), or a plan set of several
regions (``core.plan_set``), checked against the plan schema.

The one place that joins the pure document code with the schema loader (which reads files), so
that the core and the renderers never import it.
"""

from __future__ import annotations

from reconciler.core.document import load_plan as _load_plan
from reconciler.core.plan_set import load_plans as _load_plans
from reconciler.model import Plan


def load_plan(text: str, source: str) -> Plan:
    """A plan file's text (``source`` names it in messages) as a checked ``Plan``; raises
    ``PlanIntegrityError`` for anything that is not exactly a plan this version carries out."""
    from reconciler.schemas import validator

    return _load_plan(text, source, schema=validator("plan"))


def load_plans(text: str, source: str) -> tuple[Plan, ...]:
    """A plan file's plans, one per region (one for a plain plan document), each checked as
    ``load_plan`` checks one; raises ``PlanIntegrityError``."""
    from reconciler.schemas import validator

    return _load_plans(text, source, schema=validator("plan"))
