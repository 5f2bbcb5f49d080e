"""A plan as GitHub-flavoured Markdown for a pull-request comment. Pure: returns a string.

Called by the CLI's views (``plan``/``show``/``apply --format markdown``), whose output a CI
job posts as a PR comment.
Two promises:

- The text never exceeds ``max_chars`` (GitHub refuses comments over 65,536 characters). When
  everything does not fit, sections give up rows (fairly: small sections are shown whole, the
  rest share what is left) and each says exactly how many rows it left out.
- Cloud-supplied text cannot change the comment's structure: control characters are removed,
  Markdown and HTML punctuation is escaped, ``|`` cannot split a table cell, and ``@`` cannot
  mention anyone.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from reconciler.common import plural
from reconciler.model import (
    ApplyResult,
    BindingResult,
    Change,
    ChangeStatus,
    Finding,
    Outcome,
    Plan,
    Severity,
)
from reconciler.render._sanitize import clean
from reconciler.render.stops import plan_stops_markdown, still_down_markdown
from reconciler.render.text import plan_line, result_line, waves_summary

DEFAULT_MAX_CHARS = 65_000
DETAILS_THRESHOLD = 20  # more changes than this and the table is folded in <details>
CELL_LIMIT = 300  # characters of untrusted text in one cell or list item before "…"
_SAFE_CODE = re.compile(r"[A-Za-z0-9._:/+=@-]*")
_MD_PUNCTUATION = re.compile(r"([\\`*_\[\]#+!|~])")
_SEVERITY_ORDER = {Severity.ERROR: 0, Severity.WARNING: 1, Severity.INFO: 2}
_TRUNCATED = "\n\n... (comment truncated to fit; see the plan artifact)\n"


def escape(text: str, limit: int = CELL_LIMIT) -> str:
    """Untrusted ``text`` as inert Markdown: one line, no HTML, no formatting, no mentions."""
    text = clean(text, limit)
    text = text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    text = _MD_PUNCTUATION.sub(r"\\\1", text)
    # A zero-width space after "@" stops "@org/team" from notifying anyone.
    return text.replace("@", "@\u200b")


def code(text: str) -> str:
    """An identifier in a code span when it is plainly safe, otherwise escaped text."""
    text = clean(text, CELL_LIMIT)
    if text and _SAFE_CODE.fullmatch(text) and "@" not in text:
        return f"`{text}`"
    return escape(text)


@dataclass
class _Section:
    """A block of the comment whose ``rows`` may be cut; ``noun`` names one row."""

    head: str
    rows: list[str]
    tail: str
    noun: str
    shown: int = 0

    def note(self, omitted: int) -> str:
        return (
            f"\n... and {omitted:,} more {self.noun if omitted == 1 else self.noun + 's'} "
            "not shown; see the plan artifact.\n"
        )

    def render(self) -> str:
        omitted = len(self.rows) - self.shown
        body = "".join(self.rows[: self.shown])
        return self.head + body + (self.note(omitted) if omitted else "") + self.tail


def _allocate(needs: Sequence[int], budget: int) -> list[int]:
    """Water-filling: sections that need less than an equal share get all they need; the rest
    split what remains equally."""
    shares = [0] * len(needs)
    pending = [i for i, need in enumerate(needs) if need > 0]
    while pending and budget > 0:
        share = budget // len(pending)
        small = [i for i in pending if needs[i] <= share]
        if not small:
            for i in pending:
                shares[i] = share
            break
        for i in small:
            shares[i] = needs[i]
            budget -= needs[i]
        pending = [i for i in pending if i not in small]
    return shares


def _fit(fixed: int, sections: list[_Section], max_chars: int) -> None:
    """Decide how many rows each section shows so that the whole stays within ``max_chars``."""
    whole = fixed + sum(len(s.head) + len(s.tail) + sum(map(len, s.rows)) for s in sections)
    if whole <= max_chars:  # everything fits: no section is cut, so no note is needed
        for section in sections:
            section.shown = len(section.rows)
        return
    reserved = fixed + sum(
        len(s.head) + len(s.tail) + (len(s.note(len(s.rows))) if s.rows else 0) for s in sections
    )
    needs = [sum(len(r) for r in s.rows) for s in sections]
    shares = _allocate(needs, max(max_chars - reserved, 0))
    for section, share in zip(sections, shares, strict=True):
        used = 0
        for row in section.rows:
            if used + len(row) > share:
                break
            used += len(row)
            section.shown += 1


def _place(change: Change) -> str:
    name = f" ({escape(change.instance_name)})" if change.instance_name else ""
    return f"{code(change.instance_id)}{name}"


def _key(change: Change) -> str:
    name = f" ({escape(change.key_name)})" if change.key_name else ""
    return f"{code(change.key_id)}{name}"


def _table_row(change: Change) -> str:
    notes = [escape(change.reason)] + [f"\u26a0\ufe0f {escape(w)}" for w in change.warnings]
    status = "**unbind**" if change.status is ChangeStatus.READY else change.status.value
    cells = [
        code(change.key_id),
        escape(change.key_name or ""),
        code(change.instance_id),
        escape(change.instance_name or ""),
        status,
        "<br>".join(n for n in notes if n),
    ]
    return "| " + " | ".join(cells) + " |\n"


def _finding_row(finding: Finding) -> str:
    where = f" {code(str(finding.location))}:" if finding.location else ""
    return f"- **{finding.severity.value}**{where} {escape(finding.message)} ({code(finding.code)})\n"


def _banner(plan: Plan) -> str:
    text = ""
    if not plan.safety.safe:
        text += (
            "> [!CAUTION]\n"
            "> **UNSAFE: this plan exceeds its safety limits;** "
            "`cvmkeys apply` refuses it without `--force`.\n"
        )
        text += "".join(f"> - {escape(v)}\n" for v in plan.safety.violations[:10])
        text += "\n"
    errors = sum(1 for f in plan.findings if f.severity is Severity.ERROR)
    if errors:
        text += (
            f"> [!WARNING]\n> **This plan has {plural(errors, 'error', thousands=True)}** "
            "(see Findings); `cvmkeys apply` refuses it.\n\n"
        )
    return text


def _footer(plan: Plan) -> str:
    parts = [f"endpoint {code(plan.endpoint)}"]
    parts += [f"source {code(s.path)} (sha256 {code(s.sha256[:12])})" for s in plan.sources[:20]]
    if len(plan.sources) > 20:
        parts.append(f"{len(plan.sources) - 20:,} more sources")
    parts.append(f"fingerprint {code(plan.fingerprint.digest[:12])}")
    if plan.created_at:
        parts.append(f"created {escape(plan.created_at, 40)}")
    return "<sub>" + " · ".join(parts) + "</sub>\n"


def render_plan_markdown(plan: Plan, *, max_chars: int = DEFAULT_MAX_CHARS) -> str:
    """The plan as a PR comment of at most ``max_chars`` characters."""
    title = f"### cvmkeys plan: {code(plan.region)} (scope: {plan.scope.value})\n\n"
    line = plan_line(plan)
    if plan.changes:
        summary = f"**{line}**"
        if plan.batches:
            summary += f" {waves_summary(plan.batches, plan.api)}."
        summary += "\n\n"
    else:
        summary = "**No changes.** The live bindings match the file.\n\n"
    banner = _banner(plan)
    footer = _footer(plan)

    sections: list[_Section] = []
    findings = sorted(plan.findings, key=lambda f: _SEVERITY_ORDER[f.severity])
    if findings:
        rows = [_finding_row(f) for f in findings]
        sections.append(_Section(f"#### Findings ({len(findings):,})\n\n", rows, "\n", "finding"))
    blocked = [c for c in plan.changes if c.status is ChangeStatus.BLOCKED]
    if blocked:
        rows = [f"- {_key(c)} on {_place(c)}: {escape(c.reason)}\n" for c in blocked]
        sections.append(
            _Section(f"#### Blocked: not attempted ({len(blocked):,})\n\n", rows, "\n", "blocked change")
        )
    unchangeable = [c for c in plan.changes if c.status is ChangeStatus.UNCHANGEABLE]
    if unchangeable:
        rows = [f"- {_key(c)} on {_place(c)}: {escape(c.reason)}\n" for c in unchangeable]
        sections.append(
            _Section(
                f"#### Unchangeable: no API can unbind these ({len(unchangeable):,})\n\n",
                rows,
                "\n",
                "unchangeable change",
            )
        )
    warned = [(c, w) for c in plan.changes for w in c.warnings]
    if warned:
        rows = [f"- {_key(c)} on {_place(c)}: {escape(w)}\n" for c, w in warned]
        sections.append(_Section(f"#### Warnings ({len(warned):,})\n\n", rows, "\n", "warning"))
    if plan.changes:
        head = f"#### Changes ({len(plan.changes):,})\n\n"
        tail = "\n"
        if len(plan.changes) > DETAILS_THRESHOLD:
            head += f"<details><summary>Show all {len(plan.changes):,} changes</summary>\n\n"
            tail = "\n</details>\n\n"
        head += (
            "| Key | Key name | Instance | Instance name | Status | Reason / warnings |\n"
            "|---|---|---|---|---|---|\n"
        )
        sections.append(_Section(head, [_table_row(c) for c in plan.changes], tail, "change"))

    fixed = title + summary + banner + plan_stops_markdown(plan)
    _fit(len(fixed) + len(footer), sections, max_chars)
    text = fixed + "".join(s.render() for s in sections) + footer
    if len(text) > max_chars:
        # Only when even the fixed parts do not fit (a tiny max_chars): cut, and say so.
        keep = max(max_chars - len(_TRUNCATED), 0)
        text = (text[:keep] + _TRUNCATED)[:max_chars]
    return text


_OUTCOME_ORDER = (Outcome.FAILED, Outcome.NOT_ATTEMPTED, Outcome.BLOCKED, Outcome.DONE, Outcome.PROTECTED,
                  Outcome.UNCHANGEABLE)


def render_result_markdown(
    result: ApplyResult, plan: Plan | None = None, *, max_chars: int = DEFAULT_MAX_CHARS
) -> str:
    """An apply result as a PR comment: the ``Apply ...:`` line, then every binding that did
    not simply go (failed first), then the done ones, in a table cut to ``max_chars``."""
    title = f"### cvmkeys apply: {code(result.region)}\n\n**{result_line(result)}**\n\n"
    title += still_down_markdown(result)
    if result.stopped_reason:
        title += f"> [!WARNING]\n> Apply stopped early: {escape(result.stopped_reason)}\n\n"
    rank = {outcome: n for n, outcome in enumerate(_OUTCOME_ORDER)}
    items = sorted(result.results, key=lambda r: rank[r.outcome])  # stable: plan order
    footer = ""
    if result.calls:
        calls = ", ".join(f"{code(action)} {n:,}" for action, n in sorted(result.calls.items()))
        footer = f"API calls: {calls}\n"
    sections: list[_Section] = []
    if items:
        head = (
            f"#### Bindings ({len(items):,})\n\n"
            "| Key | Instance | Outcome | Reason |\n|---|---|---|---|\n"
        )
        rows = [
            f"| {code(r.key_id)} | {code(r.instance_id)} | {r.outcome.value} | {escape(_detail(r))} |\n"
            for r in items
        ]
        sections.append(_Section(head, rows, "\n", "binding"))
    _fit(len(title) + len(footer), sections, max_chars)
    return title + "".join(s.render() for s in sections) + footer


def _detail(item: BindingResult) -> str:
    if item.api_code is None:
        return item.reason
    return f"API code {item.api_code}: {item.reason}" if item.reason else f"API code {item.api_code}"
