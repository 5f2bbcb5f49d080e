"""Views (Terraform's ``views``): how each command's result reaches the terminal, chosen once
from ``--format``. Every byte the CLI writes goes through here (or through ``errors`` in
``reconciler.cli``), and all colour goes through rich, decided once by ``Terminal``.

- ``Terminal``: the colour and progress decisions for one run: ``--no-color``, ``NO_COLOR``
  (only a non-empty value counts, as no-color.org says), ``TERM=dumb`` and whether the stream
  is a terminal.
- ``PlanView``: a plan as text, Markdown or JSON on standard output (several regions' plans:
  a section per region, ``render.plan_set``).
- ``ValidateView``: validate's summary, or its problems as GitHub annotations or JSON.
- ``ApplyView``: the apply hooks (the fresh plan on standard error, the confirmation, progress as
  a rich bar on a terminal that can draw one, plain lines otherwise) and the result as text,
  Markdown or JSON (several regions: a section per region).
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from enum import Enum
from typing import IO, TYPE_CHECKING, Any

from reconciler.common import plural
from reconciler.errors import ApprovalError

if TYPE_CHECKING:
    from collections.abc import Sequence

    from rich.console import Console

    from reconciler.desired.loader import LoadedDesired
    from reconciler.errors import Problem
    from reconciler.execute.executor import ExecEvent
    from reconciler.importer import ImportSummary
    from reconciler.model import ApplyResult, Plan
    from reconciler.operations import ApplyOutcome, ApplySetOutcome, ImportResult


class Format(str, Enum):
    """``--format`` of plan, show and apply."""

    text = "text"
    markdown = "markdown"
    json = "json"


@dataclass(frozen=True)
class Terminal:
    """Whether to colour and whether a progress bar can be drawn: decided here only."""

    no_color: bool = False  # --no-color
    environ: dict[str, str] = field(default_factory=lambda: dict(os.environ))

    @property
    def dumb(self) -> bool:
        return self.environ.get("TERM", "") == "dumb"

    def color(self, stream: IO[str]) -> bool:
        """Colour on ``stream``: a terminal, not dumb, not ``--no-color``, no non-empty NO_COLOR."""
        if self.no_color or self.environ.get("NO_COLOR", "") != "" or self.dumb:
            return False
        return _isatty(stream)

    def live(self, stream: IO[str]) -> bool:
        """A progress bar on ``stream``: only on a terminal that can redraw a line."""
        return not self.dumb and _isatty(stream)

    def console(self, *, stderr: bool = False) -> Console:
        """A rich console for standard output or error, with colour as decided here."""
        from rich.console import Console

        stream = sys.stderr if stderr else sys.stdout
        return Console(
            file=stream,
            no_color=not self.color(stream),
            color_system="auto" if self.color(stream) else None,
            highlight=False,
            soft_wrap=True,
        )


def _isatty(stream: IO[str]) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # closed or unusual streams are not terminals
        return False


def _out(text: str) -> None:
    sys.stdout.write(text)
    sys.stdout.flush()


def note(terminal: Terminal, message: str) -> None:
    """One plain line on standard error (saved-plan notices, import summaries)."""
    terminal.console(stderr=True).print(message, markup=False)


# --------------------------------------------------------------------------- plans


def render_plan(plan: Plan, fmt: Format, *, color: bool, plan_file: str | None = None) -> str:
    """The plan in ``fmt``; every format ends with a newline. ``plan_file``: where the plan is
    saved, which the Markdown comment names for what it leaves out."""
    if fmt is Format.json:
        from reconciler.render.json import render_plan_json

        return render_plan_json(plan)
    if fmt is Format.markdown:
        from reconciler.render.markdown import render_plan_markdown

        return render_plan_markdown(plan, plan_file=plan_file or "plan.json")
    from reconciler.render.text import render_plan_text

    return render_plan_text(plan, color=color)


@dataclass(frozen=True)
class PlanView:
    fmt: Format
    terminal: Terminal

    def show(self, plan: Plan, plan_file: object = None) -> None:
        color = self.fmt is Format.text and self.terminal.color(sys.stdout)
        saved = None if plan_file is None else str(plan_file)
        # Text and Markdown end with a blank line, as they always have; JSON is the plan file.
        text = render_plan(plan, self.fmt, color=color, plan_file=saved)
        _out(text + ("" if self.fmt is Format.json else "\n"))

    def show_plans(self, plans: Sequence[Plan], plan_file: object = None) -> None:
        """Every region's plan as one rendering (a section per region); one region as ``show``."""
        if len(plans) == 1:
            self.show(plans[0], plan_file)
            return
        from reconciler.render.plan_set import render_plans_json, render_plans_markdown, render_plans_text

        saved = "plan.json" if plan_file is None else str(plan_file)
        if self.fmt is Format.json:
            _out(render_plans_json(plans))
        elif self.fmt is Format.markdown:
            _out(render_plans_markdown(plans, plan_file=saved) + "\n")
        else:
            _out(render_plans_text(plans, color=self.terminal.color(sys.stdout)) + "\n")

    def saved(self, path: object, plans: Sequence[Plan]) -> None:
        from reconciler.connect import apply_command

        command = apply_command(path, plans)
        note(self.terminal, f"Saved the plan to {path}. To apply exactly this plan: {command}")


# --------------------------------------------------------------------------- validate


class ValidateFormat(str, Enum):
    """``--format`` of validate: text, GitHub Actions annotations, or JSON."""

    text = "text"
    github = "github"
    json = "json"


@dataclass(frozen=True)
class ValidateView:
    """What ``validate`` prints: the summary line (text), workflow commands (github) or one JSON
    document (json), all on standard output; the error line itself goes to standard error."""

    fmt: ValidateFormat

    def valid(self, loaded: LoadedDesired) -> None:
        if self.fmt is ValidateFormat.json:
            from reconciler.render.problems import render_problems_json

            _out(render_problems_json((), loaded.warnings, loaded.files))
            return
        if self.fmt is ValidateFormat.github:
            from reconciler.render.problems import render_annotations

            _out(render_annotations((), loaded.warnings))
        _out(loaded.summary() + "\n")

    def invalid(self, problems: Sequence[Problem]) -> None:
        """The problems, for a format that reports them on standard output."""
        if self.fmt is ValidateFormat.json:
            from reconciler.render.problems import render_problems_json

            _out(render_problems_json(problems, ()))
        else:
            from reconciler.render.problems import render_annotations

            _out(render_annotations(problems, ()))


# --------------------------------------------------------------------------- apply


class ApplyView:
    """The hooks ``operations.apply`` calls, and the result at the end."""

    def __init__(self, fmt: Format, terminal: Terminal) -> None:
        self.fmt = fmt
        self.terminal = terminal
        self.console = terminal.console(stderr=True)
        self._bar: Any = None
        self._task: Any = None

    def planned(self, plan: Plan) -> None:
        color = self.terminal.color(sys.stderr)
        sys.stderr.write(render_plan(plan, Format.text, color=color))
        sys.stderr.flush()

    def confirm(self, plan: Plan) -> None:
        if not sys.stdin.isatty():
            raise ApprovalError(
                "apply needs confirmation, but standard input is not a terminal",
                hint="review the plan, then run again with --auto-approve, or apply a saved plan file",
            )
        self.console.print("\nDo you want to perform these actions? Only 'yes' will be accepted.")
        try:
            answer = input("  Enter a value: ")
        except EOFError:  # Ctrl-D
            answer = ""
        if answer.strip() != "yes":
            raise ApprovalError("apply cancelled")

    def started(self, plan: Plan) -> None:
        total = len(plan.ready_changes)
        if not total or not self.terminal.live(sys.stderr):
            return
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self._bar = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=self.console,
            transient=True,
        )
        self._task = self._bar.add_task("unbinding", total=total)
        self._bar.start()

    def event(self, event: ExecEvent) -> None:
        if self._bar is not None:
            description = f"{plural(event.calls, 'call')} · {event.message[:48]}"
            self._bar.update(self._task, completed=event.bindings_done, description=description)
        else:
            self.console.print(f"apply: {event.message}", markup=False)

    def finished(self) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None

    def stopping(self) -> None:
        self.console.print("[yellow]Stopping: no new calls; waiting for calls in flight...[/]")

    def notes(self, outcome: ApplyOutcome | ApplySetOutcome) -> None:
        """What the result alone does not say: a plan found already applied, a failing audit log."""
        from reconciler.operations import ApplyOutcome

        several = not isinstance(outcome, ApplyOutcome)
        for one in outcome.outcomes if not isinstance(outcome, ApplyOutcome) else (outcome,):
            where = f"{one.plan.region}: " if several else ""
            if one.already_applied:
                note(
                    self.terminal,
                    f"{where}The plan is already applied: every unbind in it is done; nothing was sent.",
                )
            for problem in one.problems:
                self.console.print(f"Error: {where}{problem}", markup=False, style="bold red")

    def outcome(self, outcome: ApplyOutcome | ApplySetOutcome) -> None:
        """The result (every region's, a section each, for several) and then the notes."""
        from reconciler.operations import ApplyOutcome

        if isinstance(outcome, ApplyOutcome):
            self.result(outcome.result, outcome.plan)
        else:
            self.results([(o.result, o.plan) for o in outcome.outcomes])
        self.notes(outcome)

    def results(self, results: Sequence[tuple[ApplyResult, Plan]]) -> None:
        from reconciler.render import plan_set

        if self.fmt is Format.json:
            _out(plan_set.render_results_json([r for r, _ in results]))
        elif self.fmt is Format.markdown:
            _out(plan_set.render_results_markdown(results) + "\n")
        else:
            _out(plan_set.render_results_text(results, color=self.terminal.color(sys.stdout)))

    def result(self, result: ApplyResult, plan: Plan) -> None:
        if self.fmt is Format.json:
            from reconciler.render.json import render_result_json

            _out(render_result_json(result))
        elif self.fmt is Format.markdown:
            from reconciler.render.markdown import render_result_markdown

            _out(render_result_markdown(result, plan) + "\n")
        else:
            from reconciler.render.text import render_result_text

            _out(render_result_text(result, color=self.terminal.color(sys.stdout), plan=plan))


# --------------------------------------------------------------------------- import


def import_summary_line(result: ImportResult) -> str:
    summary: ImportSummary = result.summary
    calls = ", ".join(f"{action} {count}" for action, count in sorted(result.calls.items()))
    note_text = (
        f"; {summary.instances_not_found} bound instances not found" if summary.instances_not_found else ""
    )
    wrote = f" Wrote {result.written_to}." if result.written_to is not None else ""
    return (
        f"Imported {plural(summary.keys, 'key', thousands=True)}, "
        f"{plural(summary.bindings, 'binding', thousands=True)} "
        f"on {plural(summary.instances, 'instance', thousands=True)} from {result.region} "
        f"(scope: {result.scope.value}; API calls: {calls or 'none'}{note_text}).{wrote}"
    )


def show_import(result: ImportResult, terminal: Terminal) -> None:
    if result.written_to is None:
        _out(result.text)
    note(terminal, import_summary_line(result))
    if not result.summary.keys:
        # An empty file is valid, and in scope account it would unbind everything it owns.
        note(
            terminal,
            f"Warning: no key pairs found in {result.region}: the file declares nothing. "
            "Check --region (and the account).",
        )
