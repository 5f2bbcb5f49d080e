"""The ``cvmkeys`` command line (Typer). The only module that prints, prompts or exits.

Every command body runs inside ``_reporting_errors``: a ``CvmkeysError`` becomes one red line
(plus the problems it carries, one per line, and a hint) and its exit code; any other exception
is a bug and is shown as a traceback only with ``--debug``.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from typer.core import TyperGroup

from reconciler import __version__
from reconciler.cloud.client import DEFAULT_ENDPOINT
from reconciler.cloud.observe import observe_for_plan
from reconciler.connect import Connection, ConnectOptions, connect, emulator_label
from reconciler.core.plan import build_plan
from reconciler.core.safety import check_safety, merge_limits
from reconciler.errors import (
    ApprovalError,
    ConfigError,
    CvmkeysError,
    InputError,
    PlanIntegrityError,
    PlanRefusedError,
    UnsafePlanError,
)
from reconciler.execute.executor import ExecEvent, ExecOptions, Executor, check_fresh
from reconciler.model import (
    ApplyResult,
    ChangeStatus,
    Desired,
    Outcome,
    Plan,
    SafetyLimits,
    SafetyVerdict,
)

# click's UsageError, whichever click Typer uses (BadParameter is its subclass).
_UsageError: type[Exception] = typer.BadParameter.__mro__[1]


class _Group(TyperGroup):
    """The command group, with usage errors exiting 1 instead of click's 2: under
    ``plan --detailed-exitcode``, 2 means "changes present", and a mistyped flag in CI must not
    read as that (Terraform also exits 1 on usage errors)."""

    def make_context(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return super().make_context(*args, **kwargs)
        except _UsageError as error:
            _usage_exit_code(error)
            raise

    def invoke(self, ctx: Any) -> Any:
        try:
            return super().invoke(ctx)
        except _UsageError as error:
            _usage_exit_code(error)
            raise


def _usage_exit_code(error: Exception) -> None:
    if type(error).__name__ != "NoArgsIsHelpError":  # bare `cvmkeys` shows the help
        error.exit_code = 1  # type: ignore[attr-defined]


app = typer.Typer(
    cls=_Group,
    name="cvmkeys",
    help="Keep the SSH-key bindings of Tencent Cloud CVM instances under review in Git."
    "\n\nExample: cvmkeys plan examples/bindings.yaml --emulator examples/fleet.yaml",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


@dataclass
class _Options:
    debug: bool = False


_options = _Options()


def _stderr() -> Console:
    return Console(stderr=True, highlight=False)


@contextmanager
def _reporting_errors() -> Iterator[None]:
    """Turn the tool's errors into a clean message and exit code; never a traceback."""
    try:
        yield
    except CvmkeysError as error:
        console = _stderr()
        if isinstance(error, InputError):
            for problem in error.problems:
                console.print(str(problem), markup=False, soft_wrap=True)
        # Messages may quote the cloud (names, API messages): never read them as markup.
        console.print(f"[bold red]Error:[/] {escape(error.message)}", soft_wrap=True)
        if error.hint:
            console.print(f"[dim]hint:[/] {escape(error.hint)}", soft_wrap=True)
        if _options.debug:
            console.print_exception()
        raise typer.Exit(error.exit_code) from None
    except KeyboardInterrupt:
        _stderr().print("[bold red]Interrupted.[/]")
        raise typer.Exit(130) from None
    except (typer.Exit, typer.Abort):
        raise
    except OSError as error:
        # A file that cannot be read or written: the user's to fix, not a bug.
        console = _stderr()
        where = f" ({error.filename})" if error.filename else ""
        console.print(
            f"[bold red]Error:[/] {escape(str(error.strerror or error))}{escape(where)}", soft_wrap=True
        )
        console.print("[dim]hint:[/] check the path and its permissions", soft_wrap=True)
        if _options.debug:
            console.print_exception()
        raise typer.Exit(1) from None
    except Exception as error:
        if _is_usage_error(error):
            raise  # click reports usage errors itself
        console = _stderr()
        console.print(
            f"[bold red]Error:[/] internal error ({type(error).__name__}): this is a bug in cvmkeys",
            soft_wrap=True,
        )
        if _options.debug:
            console.print_exception()
        else:
            console.print("[dim]hint:[/] run again with --debug to see the traceback, and report it")
        raise typer.Exit(1) from None


def _is_usage_error(error: Exception) -> bool:
    # click.ClickException, wherever this Typer version keeps click.
    return any(cls.__name__ == "ClickException" for cls in type(error).__mro__)


_LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


def _version_callback(value: bool) -> None:
    if value:
        typer.echo(f"cvmkeys {__version__}")
        raise typer.Exit()


@app.callback()
def _main_options(
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_version_callback, is_eager=True, help="Show the version and exit."
        ),
    ] = False,
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks for errors.")] = False,
    verbose: Annotated[
        int, typer.Option("-v", "--verbose", count=True, help="More log output (-vv for debug).")
    ] = 0,
    log_level: Annotated[
        str | None, typer.Option("--log-level", help="Log level: DEBUG, INFO, WARNING, ERROR.")
    ] = None,
) -> None:
    """Keep the SSH-key bindings of Tencent Cloud CVM instances under review in Git.

    Example: cvmkeys plan examples/bindings.yaml --emulator examples/fleet.yaml
    """
    _options.debug = debug
    level = (
        log_level.upper() if log_level else ("DEBUG" if verbose >= 2 else "INFO" if verbose else "WARNING")
    )
    if level not in _LOG_LEVELS:
        raise typer.BadParameter(
            f"{log_level!r} is not one of {', '.join(_LOG_LEVELS)}", param_hint="--log-level"
        )
    logging.basicConfig(level=level, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")


PathsArgument = Annotated[
    list[Path],
    typer.Argument(help="Desired-state files, or directories searched for *.yaml / *.yml."),
]


@app.command()
def validate(paths: PathsArgument) -> None:
    """Check desired-state files; report every problem as FILE:LINE:COL: message.

    Example: cvmkeys validate examples/
    """
    from reconciler.desired.loader import load_paths

    with _reporting_errors():
        loaded = load_paths(paths)
        typer.echo(loaded.summary())


def main() -> None:
    """Console-script entry point."""
    app()


# --------------------------------------------------------------------------- cloud commands


class ResultFormat(str, Enum):
    text = "text"
    json = "json"


class OutputFormat(str, Enum):
    text = "text"
    markdown = "markdown"
    json = "json"


EmulatorOption = Annotated[
    Path | None,
    typer.Option(
        "--emulator", metavar="FLEET", help="Talk to the bundled emulator, loaded from this fleet file."
    ),
]
EndpointOption = Annotated[
    str | None, typer.Option("--endpoint", metavar="URL", help="CVM API endpoint (default: Tencent's).")
]
ProfileOption = Annotated[
    str | None,
    typer.Option(
        "--profile",
        metavar="NAME",
        help="tccli profile for credentials (~/.tccli/NAME.credential). Default: TENCENTCLOUD_SECRET_ID/KEY, "
        "then the profile in $TENCENTCLOUD_PROFILE, then 'default'.",
    ),
]
RateLimitOption = Annotated[
    float | None,
    typer.Option(
        "--rate-limit",
        min=0,
        help="Client-side limit, requests per second per action (default 10; none with --emulator; 0: none).",
    ),
]
NoColorOption = Annotated[bool, typer.Option("--no-color", help="No colour in the output.")]
MaxUnbindsOption = Annotated[
    int | None,
    typer.Option("--max-unbinds", min=0, help="Safety: at most this many unbinds (wins over the file)."),
]
MaxPercentOption = Annotated[
    float | None,
    typer.Option("--max-unbind-percent", min=0, max=100, help="Safety: at most this % of owned bindings."),
]


def _use_color(no_color: bool, *, terminal: bool | None = None) -> bool:
    """Colour unless told not to (``--no-color``, ``NO_COLOR``) or writing to no terminal
    (``terminal``: whether the output goes to one; standard output by default)."""
    on_terminal = sys.stdout.isatty() if terminal is None else terminal
    return not no_color and "NO_COLOR" not in os.environ and on_terminal


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def _single_region(paths: list[Path]) -> Desired:
    from reconciler.desired.loader import load_paths

    loaded = load_paths(paths)
    if len(loaded.by_region) != 1:
        regions = ", ".join(sorted(loaded.by_region)) or "none"
        raise ConfigError(
            f"the files cover {len(loaded.by_region)} regions ({regions}); plan one region at a time",
            hint="pass only the files of one region",
        )
    (desired,) = loaded.by_region.values()
    return desired


def _make_plan(
    paths: list[Path], options: ConnectOptions, limits: SafetyLimits, on_attempt: Any = None
) -> tuple[Plan, Connection]:
    desired = _single_region(paths)
    connection = connect(desired.region, options, on_attempt=on_attempt)
    try:
        observed = observe_for_plan(connection.client, desired)
    except BaseException:
        connection.close()
        raise
    plan = build_plan(
        desired, observed, endpoint=connection.endpoint_label, limits_override=limits, created_at=_now()
    )
    return plan, connection


def _render_plan(plan: Plan, fmt: OutputFormat, color: bool) -> str:
    from reconciler.core.document import dump_plan
    from reconciler.render.markdown import render_plan_markdown
    from reconciler.render.text import render_plan_text

    if fmt is OutputFormat.json:
        return dump_plan(plan)
    if fmt is OutputFormat.markdown:
        return render_plan_markdown(plan)
    return render_plan_text(plan, color=color)


def _write_atomically(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    except OSError as error:
        with suppress(OSError):
            tmp.unlink(missing_ok=True)
        raise ConfigError(f"cannot write {path}: {error.strerror or error}") from None


def _plan_errors(plan: Plan) -> CvmkeysError:
    return PlanRefusedError(
        f"the plan has {plan.summary.errors} error{'s' if plan.summary.errors != 1 else ''}: "
        "fix the desired-state file or the cloud, then plan again"
    )


@app.command()
def plan(
    paths: PathsArgument,
    emulator: EmulatorOption = None,
    endpoint: EndpointOption = None,
    profile: ProfileOption = None,
    output_format: Annotated[
        OutputFormat, typer.Option("--format", help="Output format.")
    ] = OutputFormat.text,
    out: Annotated[
        Path | None, typer.Option("--out", metavar="PLANFILE", help="Save the plan (JSON) for apply.")
    ] = None,
    detailed_exitcode: Annotated[
        bool,
        typer.Option(
            "--detailed-exitcode",
            help="Exit 0 when nothing differs, 2 when there are unbinds (ready or blocked), 1 on error.",
        ),
    ] = False,
    no_color: NoColorOption = False,
    max_unbinds: MaxUnbindsOption = None,
    max_unbind_percent: MaxPercentOption = None,
    rate_limit: RateLimitOption = None,
    audit_log: Annotated[
        Path | None, typer.Option("--audit-log", metavar="FILE", help="Append every API call as JSON lines.")
    ] = None,
) -> None:
    """Read the live bindings, diff them against the files, show the unbinds that would follow.

    Example: cvmkeys plan examples/bindings.yaml --emulator examples/fleet.yaml --out plan.json
    """
    from reconciler.core.document import dump_plan
    from reconciler.execute.audit import AuditLog

    with _reporting_errors():
        options = ConnectOptions(emulator=emulator, endpoint=endpoint, rate_limit=rate_limit, profile=profile)
        audit = AuditLog(audit_log) if audit_log else None
        try:
            the_plan, connection = _make_plan(
                paths, options, SafetyLimits(max_unbinds, max_unbind_percent), on_attempt=audit
            )
            connection.close()
        finally:
            if audit is not None:
                audit.close()
        typer.echo(
            _render_plan(the_plan, output_format, _use_color(no_color)),
            nl=output_format is not OutputFormat.json,
        )
        if the_plan.has_errors:
            raise _plan_errors(the_plan)
        if out is not None:
            _write_atomically(out, dump_plan(the_plan))
            _stderr().print(
                f"Saved the plan to {out}. To apply exactly this plan: cvmkeys apply {out}", soft_wrap=True
            )
        # Protected bindings are the file's own decision to leave them, not drift: not a diff.
        if detailed_exitcode and any(c.status is not ChangeStatus.PROTECTED for c in the_plan.changes):
            raise typer.Exit(2)


@app.command()
def show(
    planfile: Annotated[Path, typer.Argument(help="A plan saved by plan --out.")],
    output_format: Annotated[
        OutputFormat, typer.Option("--format", help="Output format.")
    ] = OutputFormat.text,
    no_color: NoColorOption = False,
) -> None:
    """Render a saved plan without any API call.

    Example: cvmkeys show plan.json --format markdown
    """
    with _reporting_errors():
        the_plan = _read_plan(planfile)
        typer.echo(
            _render_plan(the_plan, output_format, _use_color(no_color)),
            nl=output_format is not OutputFormat.json,
        )


def _read_plan(planfile: Path) -> Plan:
    from reconciler.core.document import load_plan

    try:
        text = planfile.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise PlanIntegrityError(f"{planfile}: cannot read the plan file: {error}") from None
    return load_plan(text, str(planfile))


def _is_plan_file(paths: list[Path]) -> bool:
    """One ``*.json`` file, or one file holding a JSON object with ``format_version`` (a YAML
    desired-state file in flow style also starts with ``{``, but is not JSON)."""
    if len(paths) != 1 or not paths[0].is_file():
        return False
    if paths[0].suffix.lower() == ".json":
        return True
    with paths[0].open("rb") as handle:
        if not handle.read(64).lstrip().startswith(b"{"):
            return False
    try:
        data = json.loads(paths[0].read_bytes())
    except (ValueError, OSError):
        return False
    return isinstance(data, dict) and "format_version" in data


class _Progress:
    """Progress for apply: a rich bar on a terminal, one plain line per event otherwise."""

    def __init__(self, total: int) -> None:
        self.console = _stderr()
        self.live = self.console.is_terminal
        self.bar: Any = None
        if self.live and total:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            self.bar = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                console=self.console,
                transient=True,
            )
            self.task = self.bar.add_task("unbinding", total=total)
            self.bar.start()

    def __call__(self, event: ExecEvent) -> None:
        if self.bar is not None:
            self.bar.update(
                self.task,
                completed=event.bindings_done,
                description=f"{event.calls} calls · {event.message[:48]}",
            )
        else:
            self.console.print(f"apply: {event.message}", markup=False, highlight=False, soft_wrap=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()


def _confirm(plan: Plan) -> None:
    if not sys.stdin.isatty():
        raise ApprovalError(
            "apply needs confirmation, but standard input is not a terminal",
            hint="review the plan, then run again with --auto-approve, or apply a saved plan file",
        )
    console = _stderr()
    console.print("\nDo you want to perform these actions? Only 'yes' will be accepted.")
    try:
        answer = input("  Enter a value: ")
    except EOFError:  # Ctrl-D
        answer = ""
    if answer.strip() != "yes":
        raise ApprovalError("apply cancelled")


@app.command()
def apply(
    paths: Annotated[
        list[Path], typer.Argument(help="A saved plan file, or desired-state files/directories.")
    ],
    emulator: EmulatorOption = None,
    endpoint: EndpointOption = None,
    profile: ProfileOption = None,
    auto_approve: Annotated[
        bool, typer.Option("--auto-approve", help="Do not ask for confirmation.")
    ] = False,
    force: Annotated[
        bool, typer.Option("--force", help="Apply even when the plan trips a safety limit.")
    ] = False,
    parallelism: Annotated[
        int, typer.Option("--parallelism", min=1, max=32, help="Calls in flight at once.")
    ] = 4,
    audit_log: Annotated[
        Path | None, typer.Option("--audit-log", metavar="FILE", help="Append every API call as JSON lines.")
    ] = None,
    output_format: Annotated[
        ResultFormat, typer.Option("--format", help="Result format: text or json.")
    ] = ResultFormat.text,
    no_color: NoColorOption = False,
    max_unbinds: MaxUnbindsOption = None,
    max_unbind_percent: MaxPercentOption = None,
    rate_limit: RateLimitOption = None,
) -> None:
    """Carry out a plan: a saved PLANFILE as reviewed, or a fresh plan after confirmation.

    Examples: cvmkeys apply plan.json
              cvmkeys apply examples/bindings.yaml --emulator examples/fleet.yaml
    """
    from reconciler.core.document import result_to_data
    from reconciler.execute.audit import AuditLog
    from reconciler.render.text import render_result_text

    with _reporting_errors():
        audit = AuditLog(audit_log) if audit_log else None
        color = _use_color(no_color)
        try:
            options = ConnectOptions(
                emulator=emulator, endpoint=endpoint, rate_limit=rate_limit, profile=profile
            )
            saved_plan = _is_plan_file(paths)
            if saved_plan:
                the_plan = _read_plan(paths[0])
                if the_plan.has_errors:
                    raise _plan_errors(the_plan)
                options = _options_for_saved_plan(the_plan, options)
                connection = connect(the_plan.region, options, on_attempt=audit)
                check_fresh(connection.client, the_plan)
            else:
                the_plan, connection = _make_plan(
                    paths, options, SafetyLimits(max_unbinds, max_unbind_percent), on_attempt=audit
                )
                console = _stderr()
                console.print(
                    _render_plan(
                        the_plan, OutputFormat.text, _use_color(no_color, terminal=console.is_terminal)
                    ),
                    end="",
                    markup=False,
                    highlight=False,
                    soft_wrap=True,
                )
                if the_plan.has_errors:
                    connection.close()
                    raise _plan_errors(the_plan)
            with connection:
                verdict = _recheck_safety(the_plan, SafetyLimits(max_unbinds, max_unbind_percent))
                if not verdict.safe and not force:
                    raise UnsafePlanError(
                        "the plan is UNSAFE: " + "; ".join(verdict.violations),
                        hint="check the plan; if it is right, apply it with --force",
                    )
                if the_plan.ready_changes and not auto_approve and not saved_plan:
                    _confirm(the_plan)
                result = _execute(connection, the_plan, parallelism)
        finally:
            if audit is not None:
                audit.close()
        if output_format is ResultFormat.json:
            typer.echo(json.dumps(result_to_data(result), indent=2, sort_keys=True))
        else:
            typer.echo(render_result_text(result, color=color, plan=the_plan), nl=False)
        raise typer.Exit(_apply_exit_code(result))


def _recheck_safety(the_plan: Plan, override: SafetyLimits) -> SafetyVerdict:
    """The plan's verdict, checked again when limits are given on the command line (they win)."""
    if override.max_unbinds is None and override.max_unbind_percent is None:
        return the_plan.safety
    recorded = SafetyLimits(the_plan.safety.max_unbinds, the_plan.safety.max_unbind_percent)
    verdict = the_plan.safety
    return check_safety(verdict.unbinds, verdict.owned_bindings, merge_limits(recorded, override))


def _options_for_saved_plan(the_plan: Plan, options: ConnectOptions) -> ConnectOptions:
    """Connect where the plan was made unless told otherwise, and refuse a different place."""
    if options.emulator is None and options.endpoint is None:
        if the_plan.endpoint.startswith("emulator:"):
            options.emulator = Path(the_plan.endpoint.removeprefix("emulator:"))
        elif the_plan.endpoint == DEFAULT_ENDPOINT:
            options.endpoint = the_plan.endpoint
        else:
            # Signed requests go only where the user says: a plan file is data, not an address book.
            raise ConfigError(
                f"the plan was made against {the_plan.endpoint}",
                hint=f"to apply it there, say so: cvmkeys apply PLANFILE --endpoint {the_plan.endpoint}",
            )
        return options
    given = emulator_label(options.emulator) if options.emulator else (options.endpoint or "")
    if given != the_plan.endpoint:
        raise ConfigError(
            f"the plan was made against {the_plan.endpoint}, not {given}",
            hint="apply it where it was planned, or plan again against the new endpoint",
        )
    return options


def _execute(connection: Connection, the_plan: Plan, parallelism: int) -> ApplyResult:
    """Run the executor with Ctrl-C turned into a graceful stop (a second Ctrl-C aborts)."""
    stop = threading.Event()

    def on_sigint(signum: int, frame: object) -> None:
        if stop.is_set():
            raise KeyboardInterrupt
        stop.set()
        _stderr().print("[yellow]Stopping: no new calls; waiting for calls in flight...[/]")

    progress = _Progress(len(the_plan.ready_changes))
    previous = signal.signal(signal.SIGINT, on_sigint)
    try:
        executor = Executor(
            connection.client,
            the_plan,
            options=ExecOptions(parallelism=parallelism),
            on_event=progress,
            stop=stop,
        )
        return executor.run()
    finally:
        signal.signal(signal.SIGINT, previous)
        progress.close()


def _apply_exit_code(result: ApplyResult) -> int:
    if result.interrupted:
        return 130
    if result.count(Outcome.FAILED) or result.count(Outcome.NOT_ATTEMPTED) or result.stopped_reason:
        return 1
    if result.count(Outcome.BLOCKED):
        return 3
    return 0


class ImportScope(str, Enum):
    keys = "keys"
    instances = "instances"
    account = "account"


@app.command("import")
def import_command(
    region: Annotated[
        str | None,
        typer.Option(
            "--region",
            metavar="REGION",
            help="Region to import (default: $TENCENTCLOUD_REGION, then the tccli profile's region).",
        ),
    ] = None,
    keys: Annotated[
        list[str] | None,
        typer.Option("--keys", metavar="SKEY,...", help="Keys to import (repeatable or comma-separated)."),
    ] = None,
    all_keys: Annotated[bool, typer.Option("--all", help="Import every key of the region.")] = False,
    scope: Annotated[
        ImportScope, typer.Option("--scope", help="What the file will own: keys, instances or account.")
    ] = ImportScope.keys,
    emulator: EmulatorOption = None,
    endpoint: EndpointOption = None,
    profile: ProfileOption = None,
    out: Annotated[
        Path | None,
        typer.Option("--out", metavar="FILE", help="Write the file (atomically) instead of printing it."),
    ] = None,
    schema_ref: Annotated[
        str, typer.Option("--schema-ref", metavar="PATH|URL", help="Schema named in the editor header line.")
    ] = "../schemas/bindings.schema.json",
    rate_limit: RateLimitOption = None,
) -> None:
    """Write a desired-state file that allows exactly the bindings that are live now.

    The result validates, and `cvmkeys plan` on it shows no changes: a starting point to
    commit and then edit down. Instance names go into comments next to the IDs, key names
    into `name:` (which plan checks).

    Example: cvmkeys import --region ap-guangzhou --all --emulator examples/fleet.yaml --out bindings.yaml
    """
    from reconciler import importer
    from reconciler.cloud.credentials import default_region
    from reconciler.model import Scope

    with _reporting_errors():
        if all_keys == bool(keys) and not (scope is ImportScope.account and not keys):
            raise ConfigError(
                "say which keys to import: --keys skey-...,skey-... or --all",
                hint="scope account always imports every key (--all may be left out)",
            )
        region_name = region or default_region(profile=profile)
        if not region_name:
            raise ConfigError(
                "no region given",
                hint="pass --region, set TENCENTCLOUD_REGION, or set one in the tccli profile",
            )
        selection = importer.ImportSelection(
            region=importer.canonical_region(region_name),
            scope=Scope(scope.value),
            key_ids=importer.parse_key_ids(keys) if keys else None,
        )
        options = ConnectOptions(emulator=emulator, endpoint=endpoint, rate_limit=rate_limit, profile=profile)
        with connect(selection.region, options) as connection:
            observed = importer.observe_for_import(connection.client, selection)
            calls = connection.client.calls
        text = importer.render_desired(selection, observed, schema_ref=schema_ref)
        summary = importer.summarize(selection, observed)
        _check_imported(text, out)
        if out is None:
            typer.echo(text, nl=False)
        else:
            _write_atomically(out, text)
        calls_text = ", ".join(f"{action} {count}" for action, count in sorted(calls.items()))
        note = (
            f"; {summary.instances_not_found} bound instances not found"
            if summary.instances_not_found
            else ""
        )
        _stderr().print(
            f"Imported {_count(summary.keys, 'key')}, {_count(summary.bindings, 'binding')} "
            f"on {_count(summary.instances, 'instance')} from {selection.region} "
            f"(scope: {selection.scope.value}; API calls: {calls_text or 'none'}{note})."
            + (f" Wrote {out}." if out is not None else ""),
            markup=False,
            soft_wrap=True,
        )


def _count(number: int, noun: str) -> str:
    return f"{number:,} {noun}{'' if number == 1 else 's'}"


def _check_imported(text: str, out: Path | None) -> None:
    """Load the rendered file back through the loader before anyone sees it: import must never
    hand out a file that does not validate."""
    import tempfile

    from reconciler.desired.loader import load_paths

    with tempfile.TemporaryDirectory(prefix="cvmkeys-import-") as tmp:
        check = Path(tmp) / (out.name if out is not None else "imported.yaml")
        check.write_text(text, encoding="utf-8")
        try:
            load_paths([check])
        except InputError as error:
            raise CvmkeysError(
                "internal error: the imported file does not validate: "
                + "; ".join(str(p) for p in error.problems[:3]),
                hint="this is a bug in cvmkeys; please report it with the command you ran",
            ) from None


from reconciler.emulator.cli import emulator_app  # noqa: E402 - mounted after the commands above

app.add_typer(
    emulator_app,
    name="emulator",
    help="Run the bundled emulator of the CVM API 2.0.\n\nExample: cvmkeys emulator serve --fleet fleet.yaml",
)
