"""Pure renderers of plans and apply results: text, Markdown and JSON."""
