"""A plan, or an apply result, as GitHub-flavoured Markdown for a pull-request comment. Pure:
returns a string.

Called by the CLI's views (``plan``/``show``/``apply --format markdown``), whose output a CI
job posts as a PR comment. A plan's comment reads from the top:

1. the title, the ``Plan:`` line, the UNSAFE and errors banners;
2. a note, only when rows had to be left out, saying which and where to see them all;
3. the summary: a table per region (unbinds, blocked, protected, unchangeable, last-key
   warnings, errors) and a table per key with the same counts, so every key that changes is
   named however big the plan is;
4. the details, each folded in ``<details>``, in order of importance: errors, last-key warnings,
   unbinds, blocked, protected, unchangeable, other findings;
5. a footer (endpoint, sources, fingerprint, created).

Three promises:

- The text never exceeds ``max_chars`` (GitHub refuses comments over 65,536 characters). The
  summary is kept whole first (when even the per-key table does not fit, the keys it leaves out
  are still named, as a list of IDs); the details then give up rows, fairly (small sections
  are shown whole, the rest share what is left), and each says how many it left out.
- The structure stays valid: every ``<details>`` is closed, every table row has its table's
  number of cells, and a cut never falls inside either.
- Cloud-supplied text cannot change the comment's structure: control characters are removed,
  Markdown and HTML punctuation is escaped, ``|`` cannot split a table cell, and ``@`` cannot
  mention anyone.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from reconciler.common import plural
from reconciler.core.diff import LAST_KEY_WARNING
from reconciler.model import (
    ApplyResult,
    Change,
    ChangeStatus,
    Finding,
    Outcome,
    Plan,
)
from reconciler.render._sanitize import clean
from reconciler.render._shared import binding_detail, error_count, plan_names, split_findings, status_counts
from reconciler.render.stops import plan_stops_markdown, result_stops_markdown
from reconciler.render.text import plan_line, result_line, waves_summary

DEFAULT_MAX_CHARS = 65_000  # GitHub's limit is 65,536; the rest is room for a CI job's marker
GITHUB_COMMENT_LIMIT = 65_536
OPEN_ROWS = 10  # a details section with at most this many rows is shown unfolded
CELL_LIMIT = 300  # characters of untrusted text in one cell or list item before "…"
NAME_LIMIT = 64  # characters of a name in the summary tables
# A share of the room left after the fixed parts that the details keep even when the per-key
# summary would like it: a summary that leaves no details at all helps nobody.
_DETAILS_SHARE = 0.4
_SAFE_CODE = re.compile(r"[A-Za-z0-9._:/+=@-]*")
_MD_PUNCTUATION = re.compile(r"([\\`*_\[\]#+!|~])")
_TRUNCATED = "\n\n... (comment truncated to fit)\n"
# The last-key warning's fixed opening (core.diff words it; the instance follows).
_LAST_KEY_PREFIX = LAST_KEY_WARNING.split("{instance}", 1)[0]
_LAST_KEY_CONSEQUENCE = LAST_KEY_WARNING.split("{instance}", 1)[1].lstrip(": ")


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


def _table(*headers: str, numeric: int = 0) -> str:
    """A table's head: ``headers``, the last ``numeric`` of them right-aligned."""
    align = ["---"] * (len(headers) - numeric) + ["--:"] * numeric
    return "| " + " | ".join(headers) + " |\n|" + "|".join(align) + "|\n"


def _row(*cells: str) -> str:
    return "| " + " | ".join(cells) + " |\n"


# --------------------------------------------------------------------------- cutting to size


@dataclass
class _Section:
    """A block of the comment whose ``rows`` may be cut; ``noun`` names one row (plural
    ``nouns``), ``where`` says where to see the rows left out."""

    head: str
    rows: list[str]
    tail: str
    noun: str
    nouns: str
    where: str
    shown: int = 0

    def note(self, omitted: int) -> str:
        nouns = self.noun if omitted == 1 else self.nouns
        return f"\n... and {omitted:,} more {nouns} not shown; {self.where}\n"

    @property
    def omitted(self) -> int:
        return len(self.rows) - self.shown

    def size(self, shown: int) -> int:
        """Characters of this section showing its first ``shown`` rows."""
        omitted = len(self.rows) - shown
        body = sum(map(len, self.rows[:shown]))
        return len(self.head) + body + (len(self.note(omitted)) if omitted else 0) + len(self.tail)

    def render(self) -> str:
        body = "".join(self.rows[: self.shown])
        return self.head + body + (self.note(self.omitted) if self.omitted else "") + self.tail


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


def _whole(sections: Sequence[_Section]) -> int:
    return sum(s.size(len(s.rows)) for s in sections)


def _reserved(sections: Sequence[_Section]) -> int:
    """What the sections take with no rows at all (their heads, tails, and longest notes)."""
    return sum(s.size(0) for s in sections)


def _share(sections: Sequence[_Section], budget: int) -> None:
    """Set how many rows each section shows so that, past ``_reserved``, they take at most
    ``budget`` characters."""
    needs = [sum(map(len, s.rows)) for s in sections]
    if sum(needs) <= budget:
        for section in sections:
            section.shown = len(section.rows)
        return
    for section, share in zip(sections, _allocate(needs, max(budget, 0)), strict=True):
        used = 0
        section.shown = 0
        for row in section.rows:
            if used + len(row) > share:
                break
            used += len(row)
            section.shown += 1


def _fold(title: str, count: int, body_head: str, *, open_always: bool = False) -> str:
    """The opening of a folded section: shown unfolded when it is short (or ``open_always``)."""
    opened = " open" if open_always or count <= OPEN_ROWS else ""
    return f"<details{opened}><summary><b>{title} ({count:,})</b></summary>\n\n{body_head}"


_FOLD_END = "\n</details>\n\n"


# --------------------------------------------------------------------------- the summary


@dataclass
class _KeyCounts:
    """What a plan does to one key, for the per-key summary."""

    key_id: str
    key_name: str | None
    first: int  # position of the key's first change, for a stable order
    counts: dict[ChangeStatus, int] = field(default_factory=lambda: dict.fromkeys(ChangeStatus, 0))
    last_key: int = 0  # instances whose last key this key's removal is

    @property
    def rank(self) -> tuple[int, int, int, int]:
        """Most consequential first: last-key warnings, unbinds, blocked; then plan order."""
        return (
            -self.last_key,
            -self.counts[ChangeStatus.READY],
            -self.counts[ChangeStatus.BLOCKED],
            self.first,
        )


def _is_last_key(warning: str) -> bool:
    return warning.startswith(_LAST_KEY_PREFIX)


def _per_key(changes: Sequence[Change]) -> list[_KeyCounts]:
    keys: dict[str, _KeyCounts] = {}
    for n, change in enumerate(changes):
        entry = keys.get(change.key_id)
        if entry is None:
            entry = keys[change.key_id] = _KeyCounts(change.key_id, change.key_name, n)
        entry.key_name = entry.key_name or change.key_name
        entry.counts[change.status] += 1
        if any(_is_last_key(w) for w in change.warnings):
            entry.last_key += 1
    return sorted(keys.values(), key=lambda k: k.rank)


def _keyless_instances(changes: Sequence[Change]) -> dict[str, list[Change]]:
    """Instance ID -> the ready changes that together remove its last key (plan order)."""
    keyless: dict[str, list[Change]] = {}
    for change in changes:
        if any(_is_last_key(w) for w in change.warnings):
            keyless.setdefault(change.instance_id, []).append(change)
    return keyless


_COUNT_HEADERS = ("Unbind", "Blocked", "Protected", "Unchangeable", "Last-key warnings")
_STATUS_COLUMNS = (
    ChangeStatus.READY,
    ChangeStatus.BLOCKED,
    ChangeStatus.PROTECTED,
    ChangeStatus.UNCHANGEABLE,
)


def _region_table(plan: Plan, keys: Sequence[_KeyCounts], keyless: int) -> str:
    counts = status_counts(plan.changes)
    cells = [f"{counts[s]:,}" for s in _STATUS_COLUMNS] + [f"{keyless:,}", f"{error_count(plan):,}"]
    return (
        _table("Region", "Keys", *_COUNT_HEADERS, "Errors", numeric=7)
        + _row(code(plan.region), f"{len(keys):,}", *cells)
        + "\n"
    )


def _key_row(entry: _KeyCounts) -> str:
    cells = [f"{entry.counts[s]:,}" for s in _STATUS_COLUMNS] + [f"{entry.last_key:,}"]
    return _row(code(entry.key_id), escape(entry.key_name or "", NAME_LIMIT), *cells)


_NAMES_INTRO = "\nNo room for their rows, but these keys change too: "


@dataclass
class _KeySummary:
    """The per-key table, and the keys it had no room for, still named (IDs only)."""

    head: str
    key_ids: list[str]
    rows: list[str]
    where: str
    in_table: int = 0
    named: int = 0  # keys named after the table

    @property
    def omitted(self) -> int:
        return len(self.key_ids) - self.in_table - self.named

    def _rest_note(self, omitted: int) -> str:
        if not omitted:
            return ""
        return f"\n... and {plural(omitted, 'more key', thousands=True)} not named; {self.where}\n"

    def size(self, in_table: int, named: int) -> int:
        """Characters of the summary with ``in_table`` rows and ``named`` more keys named."""
        ids = [len(code(k)) + 2 for k in self.key_ids[in_table : in_table + named]]
        omitted = len(self.key_ids) - in_table - named
        return (
            (len(self.head) + sum(map(len, self.rows[:in_table])) if in_table else 0)
            + (len(_NAMES_INTRO) + sum(ids) if ids else 0)
            + len(self._rest_note(omitted))
            + 1
        )

    def fit(self, budget: int, limit: int) -> None:
        """The most table rows that fit in ``budget`` with every other key named. Naming every
        key comes before the details: failing that, the IDs alone may take up to ``limit``,
        and when not even they fit, as many as do."""
        total = len(self.key_ids)
        self.in_table, self.named = total, 0
        if self.size(total, 0) <= budget:
            return
        # A row costs more than a name, so fewer rows leave room for more names: take the
        # largest number of rows for which the IDs of all the others still fit.
        cost = [len(code(k)) + 2 for k in self.key_ids]
        names_after = [0] * (total + 1)  # characters naming key_ids[i:]
        for i in range(total - 1, -1, -1):
            names_after[i] = names_after[i + 1] + cost[i]
        rows_before = 0
        best = -1
        for rows in range(total):  # rows == total did not fit (above)
            size = (len(self.head) + rows_before if rows else 0) + len(_NAMES_INTRO) + names_after[rows] + 1
            if size <= budget:
                best = rows
            rows_before += len(self.rows[rows])
        if best >= 0:
            self.in_table, self.named = best, total - best
            return
        self.in_table, self.named = 0, total
        if len(_NAMES_INTRO) + names_after[0] + 1 <= limit:
            return
        # Not even every ID fits: as many as do, and say how many are left out.
        note = len(self._rest_note(total)) + 1
        used = len(_NAMES_INTRO)
        self.named = 0
        for n in range(total):
            if used + cost[n] + note > limit:
                break
            used += cost[n]
            self.named = n + 1

    def render(self) -> str:
        table = self.head + "".join(self.rows[: self.in_table]) if self.in_table else ""
        stop = self.in_table + self.named
        names = ", ".join(code(k) for k in self.key_ids[self.in_table : stop])
        named = f"{_NAMES_INTRO}{names}.\n" if names else ""
        return table + named + self._rest_note(self.omitted) + "\n"


# --------------------------------------------------------------------------- the details


def _finding_row(finding: Finding) -> str:
    where = f" {code(str(finding.location))}:" if finding.location else ""
    return f"- **{finding.severity.value}**{where} {escape(finding.message)} ({code(finding.code)})\n"


def _change_notes(change: Change) -> str:
    notes = [escape(change.reason)] if change.status is not ChangeStatus.READY else []
    for warning in change.warnings:
        notes.append("\u26a0\ufe0f last key" if _is_last_key(warning) else f"\u26a0\ufe0f {escape(warning)}")
    return "<br>".join(n for n in notes if n)


def _change_row(change: Change) -> str:
    return _row(
        code(change.key_id),
        code(change.instance_id),
        escape(change.instance_name or "", NAME_LIMIT),
        _change_notes(change),
    )


def _detail_sections(plan: Plan, where: str) -> list[_Section]:
    sections: list[_Section] = []
    errors, others = split_findings(plan.findings)
    if errors:
        sections.append(
            _Section(
                _fold("Errors: apply refuses this plan", len(errors), "", open_always=True),
                [_finding_row(f) for f in errors],
                _FOLD_END,
                "error",
                "errors",
                where,
            )
        )
    keyless = _keyless_instances(plan.changes)
    if keyless:
        intro = f"These instances lose their last key: {escape(_LAST_KEY_CONSEQUENCE)}.\n\n" + _table(
            "Instance", "Instance name", "Keys removed"
        )
        rows = [
            _row(
                code(iid),
                escape(changes[0].instance_name or "", NAME_LIMIT),
                ", ".join(code(c.key_id) for c in changes),
            )
            for iid, changes in keyless.items()
        ]
        sections.append(
            _Section(
                _fold("Last-key warnings", len(keyless), intro),
                rows,
                _FOLD_END,
                "instance",
                "instances",
                where,
            )
        )
    titles = {
        ChangeStatus.READY: ("Unbinds", "unbind", "unbinds", "Warnings"),
        ChangeStatus.BLOCKED: ("Blocked: not attempted", "blocked change", "blocked changes", "Reason"),
        ChangeStatus.PROTECTED: (
            "Protected: never touched",
            "protected change",
            "protected changes",
            "Reason",
        ),
        ChangeStatus.UNCHANGEABLE: (
            "Unchangeable: no API can unbind these",
            "unchangeable change",
            "unchangeable changes",
            "Reason",
        ),
    }
    for status in _STATUS_COLUMNS:
        changes = [c for c in plan.changes if c.status is status]
        if not changes:
            continue
        title, noun, nouns, notes = titles[status]
        head = _fold(title, len(changes), _table("Key", "Instance", "Instance name", notes))
        sections.append(_Section(head, [_change_row(c) for c in changes], _FOLD_END, noun, nouns, where))
    if others:
        sections.append(
            _Section(
                _fold("Other findings", len(others), ""),
                [_finding_row(f) for f in others],
                _FOLD_END,
                "finding",
                "findings",
                where,
            )
        )
    return sections


# --------------------------------------------------------------------------- the plan


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
    errors = error_count(plan)
    if errors:
        text += (
            f"> [!WARNING]\n> **This plan has {plural(errors, 'error', thousands=True)}** "
            "(see Errors); `cvmkeys apply` refuses it.\n\n"
        )
    return text


def _footer(plan: Plan) -> str:
    parts = [f"endpoint {code(plan.endpoint)} (CVM API {plan.api.value})"]
    if plan.caller is not None:
        parts.append(f"as account {code(plan.caller.account_id)}, {code(plan.caller.arn)}")
    parts += [f"source {code(s.path)} (sha256 {code(s.sha256[:12])})" for s in plan.sources[:20]]
    if len(plan.sources) > 20:
        parts.append(f"{len(plan.sources) - 20:,} more sources")
    parts.append(f"fingerprint {code(plan.fingerprint.digest[:12])}")
    if plan.created_at:
        parts.append(f"created {escape(plan.created_at, 40)}")
    return "<sub>" + " · ".join(parts) + "</sub>\n"


def _shortened_note(
    sections: Sequence[_Section],
    keys: _KeySummary | None,
    see: str,
    max_chars: int,
    keys_noun: str = "keys that change",
) -> str:
    """Said first when anything was left out: what, and where to see it all."""
    cut = [
        f"{s.omitted:,} of {len(s.rows):,} {s.nouns if len(s.rows) != 1 else s.noun}"
        for s in sections
        if s.omitted
    ]
    if not cut and (keys is None or (keys.omitted == 0 and keys.named == 0)):
        return ""
    text = f"> [!NOTE]\n> **Shortened to fit a comment** of at most {max_chars:,} characters."
    if cut:
        text += " Left out of the details: " + ", ".join(cut) + "."
    if keys is not None and keys.omitted:
        text += f" {keys.omitted:,} of the {len(keys.key_ids):,} {keys_noun} could not be named."
    elif keys is not None and keys.named:
        text += f" {keys.named:,} of the {len(keys.key_ids):,} {keys_noun} are named without their counts."
    else:
        text += f" Every one of the {keys_noun} is named in the summary."
    return text + f" To see everything: {see}\n\n"


def _see(plan_file: str) -> str:
    return f"`cvmkeys show {plan_file}` (the saved plan), or `--format text` in the job's log."


def render_plan_markdown(
    plan: Plan, *, max_chars: int = DEFAULT_MAX_CHARS, plan_file: str = "plan.json"
) -> str:
    """The plan as a PR comment of at most ``max_chars`` characters.

    ``plan_file`` is the saved plan the comment points at for what it leaves out.
    """
    title = f"### cvmkeys plan: {code(plan.region)} (scope: {plan.scope.value})\n\n"
    if plan.changes:
        headline = f"**{plan_line(plan)}**"
        if plan.batches:
            headline += f" {waves_summary(plan.batches, plan.api)}."
        headline += "\n\n"
    elif plan.has_errors:  # e.g. a region with nothing in it: the errors, not "match"
        headline = f"**{plan_line(plan)}**\n\n"
    else:
        headline = "**No changes.** The live bindings match the file.\n\n"
    fixed = title + headline + _banner(plan) + plan_stops_markdown(plan)
    footer = _footer(plan)
    see = _see(plan_file)
    where = f"see them all with {see}"

    entries = _per_key(plan.changes)
    keyless = len(_keyless_instances(plan.changes))
    summary = ""
    keys: _KeySummary | None = None
    if plan.changes:
        summary = "#### Summary\n\n" + _region_table(plan, entries, keyless)
        keys = _KeySummary(
            _table("Key", "Key name", *_COUNT_HEADERS, numeric=5),
            [e.key_id for e in entries],
            [_key_row(e) for e in entries],
            f"see them all with {see}",
        )
    sections = _detail_sections(plan, where)
    details_title = "#### Details\n\n" if sections and plan.changes else ""
    return _Comment(fixed, summary, keys, details_title, sections, footer, see).fit(max_chars)


def _cut(keys: _KeySummary | None, sections: Sequence[_Section], room: int, note: Callable[[], str]) -> None:
    """Decide what a comment too long for ``room`` characters keeps: the longest ``note`` the
    cut can need is reserved, the key summary keeps every row if that leaves the details their
    share (and names every key in any case, if it can), the details share the rest."""
    for section in sections:
        section.shown = 0
    if keys is not None:
        keys.in_table, keys.named = 0, 0
    available = room - len(note()) - 64 - _reserved(sections)  # 64: digits the counts may add
    details_need = sum(sum(map(len, s.rows)) for s in sections)
    if keys is not None:
        keys.fit(available - min(details_need, int(max(available, 0) * _DETAILS_SHARE)), available)
        available -= keys.size(keys.in_table, keys.named)
    _share(sections, available)


def _hard_cut(text: str, max_chars: int) -> str:
    """``text``, or, only when even the fixed parts do not fit (a tiny max_chars), its start
    and a line saying it was cut."""
    if len(text) <= max_chars:
        return text
    keep = max(max_chars - len(_TRUNCATED), 0)
    return (text[:keep] + _TRUNCATED)[:max_chars]


@dataclass
class _Comment:
    """A comment's parts, in the order it shows them: ``head`` (title, headline, banners) and
    the titles and ``footer`` are kept whole; ``keys`` and ``sections`` give up rows to fit."""

    head: str
    summary: str
    keys: _KeySummary | None
    details_title: str
    sections: Sequence[_Section]
    footer: str
    see: str  # where to see what the comment leaves out
    keys_noun: str = "keys that change"

    def _note(self, max_chars: int) -> str:
        return _shortened_note(self.sections, self.keys, self.see, max_chars, self.keys_noun)

    def _assemble(self, max_chars: int) -> str:
        key_part = self.keys.render() if self.keys is not None else ""
        body = "".join(s.render() for s in self.sections)
        notice = self._note(max_chars)
        return self.head + notice + self.summary + key_part + self.details_title + body + self.footer

    def fit(self, max_chars: int) -> str:
        """The comment whole if it fits in ``max_chars``, else cut (``_cut``) to fit."""
        if self.keys is not None:
            self.keys.in_table, self.keys.named = len(self.keys.key_ids), 0
        for section in self.sections:
            section.shown = len(section.rows)
        text = self._assemble(max_chars)
        if len(text) <= max_chars:
            return text
        reserved = len(self.head) + len(self.summary) + len(self.details_title) + len(self.footer)
        _cut(self.keys, self.sections, max_chars - reserved, lambda: self._note(max_chars))
        return _hard_cut(self._assemble(max_chars), max_chars)


# --------------------------------------------------------------------------- apply results

_OUTCOME_ORDER = (
    Outcome.FAILED,
    Outcome.NOT_ATTEMPTED,
    Outcome.BLOCKED,
    Outcome.DONE,
    Outcome.PROTECTED,
    Outcome.UNCHANGEABLE,
)


_OUTCOME_TITLES = {
    Outcome.FAILED: ("Failed: still bound", "failed binding", "failed bindings"),
    Outcome.NOT_ATTEMPTED: (
        "Not attempted: apply stopped first",
        "binding not attempted",
        "bindings not attempted",
    ),
    Outcome.BLOCKED: ("Blocked: not attempted", "blocked binding", "blocked bindings"),
    Outcome.DONE: ("Done", "done binding", "done bindings"),
    Outcome.PROTECTED: ("Protected: never touched", "protected binding", "protected bindings"),
    Outcome.UNCHANGEABLE: (
        "Unchangeable: no API can unbind these",
        "unchangeable binding",
        "unchangeable bindings",
    ),
}


def render_result_markdown(
    result: ApplyResult, plan: Plan | None = None, *, max_chars: int = DEFAULT_MAX_CHARS
) -> str:
    """An apply result as a PR comment of at most ``max_chars`` characters: the ``Apply ...:``
    line, a summary per key, then the bindings folded by outcome, failures first.

    ``plan`` (optional) supplies key and instance names.
    """
    title = f"### cvmkeys apply: {code(result.region)}\n\n**{result_line(result)}**\n\n"
    if result.already_applied:  # a re-run of a finished plan: the comment must not look like work
        title += "The plan was already applied: every unbind in it was done before; nothing was sent.\n\n"
    title += result_stops_markdown(result)
    if result.stopped_reason:
        title += f"> [!WARNING]\n> Apply stopped early: {escape(result.stopped_reason)}\n\n"
    footer = ""
    if result.calls:
        calls = ", ".join(f"{code(action)} {n:,}" for action, n in sorted(result.calls.items()))
        footer = f"API calls: {calls}\n"
    if not result.results:
        return _hard_cut(title + footer, max_chars)
    key_names, instance_names = plan_names(plan)

    counts: dict[str, dict[Outcome, int]] = {}
    for item in result.results:
        counts.setdefault(item.key_id, dict.fromkeys(Outcome, 0))[item.outcome] += 1
    first = {key_id: n for n, key_id in enumerate(counts)}
    ranked = sorted(
        counts,
        key=lambda k: (-counts[k][Outcome.FAILED], -counts[k][Outcome.NOT_ATTEMPTED], first[k]),
    )
    columns = [o for o in _OUTCOME_ORDER if any(c[o] for c in counts.values())]
    headers = [_OUTCOME_TITLES[o][0].split(":", 1)[0] for o in columns]
    see = "the job's log (`--format text`), or `cvmkeys apply --format json`."
    keys = _KeySummary(
        _table("Key", "Key name", *headers, numeric=len(headers)),
        ranked,
        [
            _row(code(k), escape(key_names.get(k, ""), NAME_LIMIT), *(f"{counts[k][o]:,}" for o in columns))
            for k in ranked
        ],
        f"see them all in {see}",
    )
    sections: list[_Section] = []
    for outcome in _OUTCOME_ORDER:
        items = [r for r in result.results if r.outcome is outcome]
        if not items:
            continue
        label, noun, nouns = _OUTCOME_TITLES[outcome]
        head = _fold(label, len(items), _table("Key", "Instance", "Instance name", "Outcome", "Reason"))
        rows = [
            _row(
                code(r.key_id),
                code(r.instance_id),
                escape(instance_names.get(r.instance_id, ""), NAME_LIMIT),
                r.outcome.value,
                escape(binding_detail(r)),
            )
            for r in items
        ]
        sections.append(_Section(head, rows, _FOLD_END, noun, nouns, f"see them all in {see}"))
    comment = _Comment(title, "#### Summary\n\n", keys, "#### Details\n\n", sections, footer, see, "keys")
    return comment.fit(max_chars)

