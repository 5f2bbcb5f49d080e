"""Pure renderers of plans and apply results: text, Markdown and JSON.

The CLI picks one by ``--format`` and prints what it returns; nothing here prints, reads the
environment or the clock. Colour and size limits are parameters.
"""

from reconciler.render.json import render_plan_json, render_result_json
from reconciler.render.markdown import render_plan_markdown, render_result_markdown
from reconciler.render.text import render_plan_text, render_result_text

__all__ = [
    "render_plan_json",
    "render_plan_markdown",
    "render_plan_text",
    "render_result_json",
    "render_result_markdown",
    "render_result_text",
]
