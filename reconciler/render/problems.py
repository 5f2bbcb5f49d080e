"""``cvmkeys validate``'s problems for machines: GitHub Actions annotations and JSON. Pure:
returns a string.

Called by the CLI's validate view (``--format github`` / ``--format json``; the default text is
``FILE:LINE:COL: message`` from ``errors.Problem`` itself).

GitHub reads a line ``::error file=F,line=L,col=C,title=T::MESSAGE`` on a step's output as an
annotation on that place of the pull request's diff (``::warning`` likewise). The line is a
*workflow command*, so whatever a message quotes (the desired-state file is the pull request's
own text) is escaped by GitHub's rules (``@actions/core``'s ``escapeData`` and
``escapeProperty``): ``%``, CR and LF in the message, and also ``:`` and ``,`` in a property. A
message therefore can never end its line and start a command of its own (``::add-mask::``,
``::stop-commands::``). Escape sequences and other control characters are removed first, as
everywhere else.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

from reconciler.errors import Problem
from reconciler.render._sanitize import clean

VALIDATION_FORMAT_VERSION = "1.0"
ANNOTATION_TITLE = "cvmkeys validate"


def escape_data(text: str) -> str:
    """A workflow command's message, escaped as GitHub's toolkit does (``escapeData``)."""
    return text.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")


def escape_property(text: str) -> str:
    """A workflow command's property value (``escapeProperty``): also ``:`` and ``,``."""
    return escape_data(text).replace(":", "%3A").replace(",", "%2C")


def _cleaned(text: str) -> str:
    """``text`` without escapes or control characters, its line breaks kept (GitHub shows a
    multi-line annotation; the escaping keeps it one line of output)."""
    return "\n".join(clean(line) for line in text.replace("\r\n", "\n").split("\n"))


def annotation(problem: Problem, severity: str) -> str:
    """One ``::error`` / ``::warning`` line (with its newline) for ``problem``."""
    properties = [f"file={escape_property(_cleaned(problem.file))}"]
    if problem.line is not None:
        properties.append(f"line={problem.line}")
        properties.append(f"col={problem.column or 1}")
    properties.append(f"title={escape_property(ANNOTATION_TITLE)}")
    return f"::{severity} {','.join(properties)}::{escape_data(_cleaned(problem.message))}\n"


def render_annotations(errors: Sequence[Problem], warnings: Sequence[Problem]) -> str:
    """Every error, then every warning, one workflow command a line."""
    return "".join(annotation(p, "error") for p in errors) + "".join(
        annotation(p, "warning") for p in warnings
    )


def _problem_data(problem: Problem, severity: str) -> dict[str, object]:
    return {
        "severity": severity,
        "file": problem.file,
        "line": problem.line,
        "column": None if problem.line is None else problem.column or 1,
        "message": problem.message,
    }


def render_problems_json(
    errors: Sequence[Problem], warnings: Sequence[Problem], files: Sequence[str] = ()
) -> str:
    """The result of validating, as JSON (``schemas/validation.schema.json``): indent 2,
    sorted keys, a trailing newline."""
    data = {
        "format_version": VALIDATION_FORMAT_VERSION,
        "valid": not errors,
        "files": list(files),
        "problems": [_problem_data(p, "error") for p in errors]
        + [_problem_data(p, "warning") for p in warnings],
        "summary": {"errors": len(errors), "warnings": len(warnings)},
    }
    return json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False) + "\n"
