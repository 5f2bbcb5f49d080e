"""The ``cvmkeys`` command line (Typer). The only package that prints, prompts or exits.

Every command is parsing, one operation (``reconciler.operations``) and one view
(``reconciler.cli.views``), inside ``_reporting_errors``: a ``CvmkeysError`` becomes one red
line (plus the problems it carries, one per line, and a hint) and its exit code; any other
exception is a bug and is shown as a traceback only with ``--debug``.

Start-up stays light: ``cvmkeys --version`` imports neither httpx, rich, jsonschema nor yaml;
each command imports what it needs when it runs.
"""

from __future__ import annotations

import gc
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from typer.core import TyperGroup

from reconciler import __version__
from reconciler.cli.views import (
    ApplyView,
    Format,
    PlanView,
    Terminal,
    ValidateFormat,
    ValidateView,
    show_import,
)
from reconciler.errors import ConfigError, CvmkeysError, InputError

if TYPE_CHECKING:
    import threading

    from reconciler import operations

# The operations (and the model behind them) are imported by the commands that run them, not
# at start-up: `cvmkeys --version` and `--help` need neither.

# click's UsageError, whichever click Typer uses (BadParameter is its subclass).
_UsageError: type[Exception] = typer.BadParameter.__mro__[1]

# Global options, also accepted after the command (``cvmkeys plan x.yaml --debug``): moved in
# front of it before click parses. Options that take a value take the next word.
_GLOBAL_FLAGS = frozenset({"--debug", "--verbose"})
_GLOBAL_WITH_VALUE = frozenset({"--log-level"})


def _hoist_global_options(args: list[str]) -> list[str]:
    """``args`` with the global options that follow the command moved in front of it."""
    hoisted: list[str] = []
    rest: list[str] = []
    words = iter(args)
    seen_command = False
    for word in words:
        if word == "--":
            rest.append(word)
            rest.extend(words)
            break
        takes_value = word in _GLOBAL_WITH_VALUE
        is_global = takes_value or word in _GLOBAL_FLAGS or word.split("=", 1)[0] in _GLOBAL_WITH_VALUE
        is_global = is_global or (word.startswith("-v") and set(word[1:]) == {"v"})
        target = hoisted if seen_command and is_global else rest
        target.append(word)
        if takes_value:
            value = next(words, None)
            if value is not None:
                target.append(value)
        elif not is_global and not word.startswith("-"):
            seen_command = True
    return hoisted + rest


class _Group(TyperGroup):
    """The command group, with usage errors exiting 1 instead of click's 2: under
    ``plan --detailed-exitcode``, 2 means "changes present", and a mistyped flag in CI must not
    read as that (Terraform also exits 1 on usage errors)."""

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        if any("\x00" in arg for arg in args):
            # click's path conversion raises ValueError (not a usage error) on a NUL byte.
            raise _UsageError("an argument contains a NUL byte", ctx)
        return list(super().parse_args(ctx, _hoist_global_options(list(args))))

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


def _stderr_print(markup: str) -> None:
    Terminal().console(stderr=True).print(markup)


@contextmanager
def _reporting_errors() -> Iterator[None]:
    """Turn the tool's errors into a clean message and exit code; never a traceback."""
    from rich.markup import escape

    try:
        yield
    except CvmkeysError as error:
        console = Terminal().console(stderr=True)
        if isinstance(error, InputError):
            for problem in error.problems:
                console.print(str(problem), markup=False)
        # Messages may quote the cloud (names, API messages): never read them as markup.
        console.print(f"[bold red]Error:[/] {escape(error.message)}")
        if error.hint:
            console.print(f"[dim]hint:[/] {escape(error.hint)}")
        if _options.debug:
            console.print_exception()
        raise typer.Exit(error.exit_code) from None
    except KeyboardInterrupt:
        _stderr_print("[bold red]Interrupted.[/]")
        raise typer.Exit(130) from None
    except (typer.Exit, typer.Abort):
        raise
    except OSError as error:
        # A file that cannot be read or written: the user's to fix, not a bug.
        console = Terminal().console(stderr=True)
        where = f" ({error.filename})" if error.filename else ""
        console.print(f"[bold red]Error:[/] {escape(str(error.strerror or error))}{escape(where)}")
        console.print("[dim]hint:[/] check the path and its permissions")
        if _options.debug:
            console.print_exception()
        raise typer.Exit(1) from None
    except Exception as error:
        if _is_usage_error(error):
            raise  # click reports usage errors itself
        console = Terminal().console(stderr=True)
        console.print(
            f"[bold red]Error:[/] internal error ({type(error).__name__}): this is a bug in cvmkeys"
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
        int,
        typer.Option(
            "-v",
            "--verbose",
            count=True,
            metavar="",
            show_default=False,
            help="More log output (-vv for debug).",
        ),
    ] = 0,
    log_level: Annotated[
        str | None,
        typer.Option("--log-level", metavar="LEVEL", help="Log level: DEBUG, INFO, WARNING, ERROR."),
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
    import logging

    logging.basicConfig(level=level, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")


def main() -> None:
    """Console-script entry point."""
    # The objects made by the imports so far (about 17,000: modules, functions, typer's tables)
    # are never garbage, yet every collection of the oldest generation walks them again while a
    # big plan grows its heap: frozen, they are left out (an L plan, tool alone: 1.56 s -> 1.42 s
    # CPU, mean of 5 runs each, interleaved; bench/README.md).
    # Raising the thresholds as well saved nothing measurable and let cyclic garbage (httpx
    # answers) linger: 19 MB more at 100,000 instances, so they stay the default.
    gc.freeze()
    app()


# --------------------------------------------------------------------------- shared options

PathsArgument = Annotated[
    list[Path],
    typer.Argument(
        metavar="PATH...", help="Desired-state files, or directories searched for *.yaml / *.yml."
    ),
]
EmulatorOption = Annotated[
    Path | None,
    typer.Option(
        "--emulator", metavar="FLEET", help="Talk to the bundled emulator, loaded from this fleet file."
    ),
]
EndpointOption = Annotated[
    str | None, typer.Option("--endpoint", metavar="URL", help="CVM API endpoint (default: Tencent's).")
]


class ApiChoice(str, Enum):
    v2 = "2.0"
    v3 = "3.0"


ApiOption = Annotated[
    ApiChoice | None,
    typer.Option(
        "--api",
        help="CVM API: 3.0 (default; cvm.tencentcloudapi.com) or 2.0 (the retired "
        "cvm.api.qcloud.com/v2/index.php, also chosen by an --endpoint with that path). "
        "A saved plan is applied with its own.",
    ),
]


def _complete_profiles(incomplete: str) -> list[str]:
    """Shell completion of ``--profile``: the tccli profiles (``<name>.credential`` files in
    ``$TENCENTCLOUD_SHARED_CREDENTIALS_DIR``, else ``~/.tccli``). Names only: nothing is read."""
    import os

    from reconciler.cloud.credentials import tccli_dir

    try:
        folder = tccli_dir(os.environ)
        names = sorted(path.name.removesuffix(".credential") for path in folder.glob("*.credential"))
    except (CvmkeysError, OSError):  # no folder, or a bad variable: nothing to offer
        return []
    return [name for name in names if name.startswith(incomplete) and not name.startswith(".")]


ProfileOption = Annotated[
    str | None,
    typer.Option(
        "--profile",
        metavar="NAME",
        autocompletion=_complete_profiles,
        help="tccli profile for credentials (~/.tccli/NAME.credential). Default: TENCENTCLOUD_SECRET_ID/KEY, "
        "then the profile in $TENCENTCLOUD_PROFILE, then 'default'.",
    ),
]
_MIN_RATE = 0.01  # one request a 100 s: anything slower would look like a hang
_MAX_RATE = 10_000


def _rate_limit(value: float | None) -> float | None:
    # 1e-300 passed min=0 and then waited for ever after the first unbinds.
    if value is not None and not (value == 0 or _MIN_RATE <= value <= _MAX_RATE):  # NaN fails too
        raise typer.BadParameter(f"must be 0 (no limit) or from {_MIN_RATE:g} to {_MAX_RATE:,}")
    return value


RateLimitOption = Annotated[
    float | None,
    typer.Option(
        "--rate-limit",
        callback=_rate_limit,
        metavar="PER_SECOND",
        help="Client-side limit, requests per second, one for every action (default: the documented "
        "limits, DescribeInstances 40 and the rest 10; none with --emulator; 0: none).",
    ),
]
AuditLogOption = Annotated[
    Path | None, typer.Option("--audit-log", metavar="FILE", help="Append every API call as JSON lines.")
]
NoColorOption = Annotated[bool, typer.Option("--no-color", help="No colour in the output.")]
MaxUnbindsOption = Annotated[
    int | None,
    typer.Option(
        "--max-unbinds", min=0, metavar="N", help="Safety: at most this many unbinds (wins over the file)."
    ),
]
MaxStopsOption = Annotated[
    int | None,
    typer.Option(
        "--max-stops",
        min=0,
        metavar="N",
        help="Safety: at most this many instances stopped (disruption; wins over the file).",
    ),
]
def _percent(value: float | None) -> float | None:
    # click's range check lets NaN through (every comparison is false), and a NaN limit would
    # pass every plan.
    if value is not None and not 0 <= value <= 100:
        raise typer.BadParameter("must be a number from 0 to 100")
    return value


MaxPercentOption = Annotated[
    float | None,
    typer.Option(
        "--max-unbind-percent",
        callback=_percent,
        metavar="PERCENT",
        help="Safety: at most this % of owned bindings.",
    ),
]
FormatOption = Annotated[Format, typer.Option("--format", help="Output format.")]
RegionOption = Annotated[
    str | None,
    typer.Option(
        "--region",
        metavar="REGION",
        help="Only this region of the files (or of the saved plan); default: every region they name.",
    ),
]


def _cloud(
    emulator: Path | None,
    endpoint: str | None,
    profile: str | None,
    rate_limit: float | None,
    audit_log: Path | None = None,
    api: ApiChoice | None = None,
) -> operations.CloudRequest:
    from reconciler import operations
    from reconciler.connect import ConnectOptions
    from reconciler.model import ApiVersion

    options = ConnectOptions(
        emulator=emulator,
        endpoint=endpoint,
        rate_limit=rate_limit,
        profile=profile,
        api=None if api is None else ApiVersion(api.value),
    )
    return operations.CloudRequest(options, audit_log)


# --------------------------------------------------------------------------- commands


@app.command()
def validate(
    paths: PathsArgument,
    output_format: Annotated[
        ValidateFormat,
        typer.Option(
            "--format",
            help="text: FILE:LINE:COL: message; github: ::error/::warning annotations for "
            "GitHub Actions; json: one document (schemas/validation.schema.json).",
        ),
    ] = ValidateFormat.text,
) -> None:
    """Check desired-state files; report every problem as FILE:LINE:COL: message.

    Example: cvmkeys validate examples/ --format github
    """
    from reconciler import operations

    view = ValidateView(output_format)
    with _reporting_errors():
        try:
            loaded = operations.validate(paths)
        except InputError as error:
            if output_format is ValidateFormat.text:
                raise
            # The problems go to standard output in the chosen format; the error line alone
            # to standard error, so a log does not show each problem twice.
            view.invalid(error.problems)
            raise CvmkeysError(error.message, hint=error.hint) from None
        view.valid(loaded)


class SchemaName(str, Enum):
    bindings = "bindings"
    plan = "plan"
    fleet = "fleet"
    result = "result"
    validation = "validation"


@app.command("schema")
def schema_command(
    name: Annotated[
        SchemaName,
        typer.Argument(
            metavar="bindings|plan|fleet|result|validation",
            help="bindings (desired-state files), plan (plan --out), fleet (emulator), "
            "result (apply --format json) or validation (validate --format json).",
        ),
    ],
) -> None:
    """Print a JSON Schema (2020-12) shipped with cvmkeys, for editors and CI checks.

    Example: cvmkeys schema bindings > schemas/bindings.schema.json
    """
    from reconciler import operations

    with _reporting_errors():
        text = operations.schema(name.value)
        typer.echo(text, nl=not text.endswith("\n"))


@app.command("regions")
def regions_command(paths: PathsArgument) -> None:
    """Print the regions the files name as a JSON array (no API call), for a CI matrix.

    Example: cvmkeys regions examples/   # ["ap-guangzhou"]
    """
    import json

    from reconciler import operations

    with _reporting_errors():
        typer.echo(json.dumps(operations.list_regions(paths)))


@app.command()
def plan(
    paths: PathsArgument,
    emulator: EmulatorOption = None,
    endpoint: EndpointOption = None,
    api: ApiOption = None,
    profile: ProfileOption = None,
    output_format: FormatOption = Format.text,
    out: Annotated[
        Path | None, typer.Option("--out", metavar="PLANFILE", help="Save the plan (JSON) for apply.")
    ] = None,
    detailed_exitcode: Annotated[
        bool,
        typer.Option(
            "--detailed-exitcode",
            help="Exit 0 when nothing differs, 2 when there are unbinds (ready or blocked) in any region, "
            "1 on error.",
        ),
    ] = False,
    no_color: NoColorOption = False,
    max_unbinds: MaxUnbindsOption = None,
    max_unbind_percent: MaxPercentOption = None,
    max_stops: MaxStopsOption = None,
    rate_limit: RateLimitOption = None,
    audit_log: AuditLogOption = None,
    region: RegionOption = None,
) -> None:
    """Read the live bindings, diff them against the files, show the unbinds that would follow.

    Files that name several regions are planned together, a section per region, into one plan
    file; --region picks one.

    Example: cvmkeys plan examples/bindings.yaml --emulator examples/fleet.yaml --out plan.json
    """
    from reconciler import operations
    from reconciler.model import SafetyLimits

    with _reporting_errors():
        request = operations.PlanRequest(
            tuple(paths),
            _cloud(emulator, endpoint, profile, rate_limit, audit_log, api),
            SafetyLimits(max_unbinds, max_unbind_percent, max_stops),
            out,
            detailed_exitcode,
            region,
        )
        result = operations.plan(request)
        view = PlanView(output_format, Terminal(no_color))
        view.show_plans(result.plans, result.saved_to)
        if result.refusal is not None:
            raise result.refusal
        if result.saved_to is not None:
            view.saved(result.saved_to, result.plans)
        raise typer.Exit(result.exit_code)


@app.command()
def show(
    planfile: Annotated[Path, typer.Argument(metavar="PLANFILE", help="A plan saved by plan --out.")],
    output_format: FormatOption = Format.text,
    no_color: NoColorOption = False,
    region: RegionOption = None,
) -> None:
    """Render a saved plan without any API call.

    Example: cvmkeys show plan.json --format markdown
    """
    from reconciler import operations

    with _reporting_errors():
        plans = operations.read_plans(planfile, region)
        PlanView(output_format, Terminal(no_color)).show_plans(plans, planfile)


@contextmanager
def _graceful_stop(view: ApplyView) -> Iterator[threading.Event]:
    """Ctrl-C (or SIGTERM) sets the event (no new calls; calls in flight finish; instances
    apply stopped are started again); a second one aborts the rest."""
    import signal
    import threading

    stop = threading.Event()

    def on_sigint(signum: int, frame: object) -> None:
        if stop.is_set():
            raise KeyboardInterrupt
        stop.set()
        view.stopping()

    previous = signal.signal(signal.SIGINT, on_sigint)
    # SIGTERM (a cancelled CI job) takes the same path: instances apply stopped are started.
    previous_term = signal.signal(signal.SIGTERM, on_sigint)
    try:
        yield stop
    finally:
        signal.signal(signal.SIGINT, previous)
        signal.signal(signal.SIGTERM, previous_term)


@app.command()
def apply(
    paths: Annotated[
        list[Path],
        typer.Argument(
            metavar="PLANFILE|PATH...", help="A saved plan file, or desired-state files/directories."
        ),
    ],
    emulator: EmulatorOption = None,
    endpoint: EndpointOption = None,
    api: ApiOption = None,
    profile: ProfileOption = None,
    auto_approve: Annotated[
        bool, typer.Option("--auto-approve", help="Do not ask for confirmation.")
    ] = False,
    force: Annotated[
        bool, typer.Option("--force", help="Apply even when the plan trips a safety limit.")
    ] = False,
    parallelism: Annotated[
        int, typer.Option("--parallelism", min=1, max=32, metavar="N", help="Calls in flight at once.")
    ] = 4,
    audit_log: AuditLogOption = None,
    output_format: Annotated[Format, typer.Option("--format", help="Result format.")] = Format.text,
    no_color: NoColorOption = False,
    max_unbinds: MaxUnbindsOption = None,
    max_unbind_percent: MaxPercentOption = None,
    max_stops: MaxStopsOption = None,
    rate_limit: RateLimitOption = None,
    ignore_changed_sources: Annotated[
        bool,
        typer.Option(
            "--ignore-changed-sources",
            help="Apply a saved plan although its desired-state files changed or are missing.",
        ),
    ] = False,
    max_age: Annotated[
        str | None,
        typer.Option(
            "--max-age", metavar="DURATION", help="Refuse a saved plan older than this (90s, 30m, 12h, 7d)."
        ),
    ] = None,
    region: RegionOption = None,
) -> None:
    """Carry out a plan: a saved PLANFILE as reviewed, or a fresh plan after confirmation.

    Examples: cvmkeys apply plan.json
              cvmkeys apply examples/bindings.yaml --emulator examples/fleet.yaml
    """
    from reconciler import operations
    from reconciler.model import SafetyLimits

    with _reporting_errors():
        request = operations.ApplyRequest(
            tuple(paths),
            _cloud(emulator, endpoint, profile, rate_limit, audit_log, api),
            SafetyLimits(max_unbinds, max_unbind_percent, max_stops),
            auto_approve=auto_approve,
            force=force,
            parallelism=parallelism,
            ignore_changed_sources=ignore_changed_sources,
            max_age=operations.parse_duration(max_age) if max_age is not None else None,
            region=region,
        )
        view = ApplyView(output_format, Terminal(no_color))
        with _graceful_stop(view) as stop:
            outcome = operations.apply(request, view, stop)
        view.outcome(outcome)
        raise typer.Exit(outcome.exit_code)


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
    api: ApiOption = None,
    profile: ProfileOption = None,
    out: Annotated[
        Path | None,
        typer.Option("--out", metavar="FILE", help="Write the file (atomically) instead of printing it."),
    ] = None,
    schema_ref: Annotated[
        str | None,
        typer.Option(
            "--schema-ref",
            metavar="PATH|URL",
            help="Schema named in the editor header line (default: the nearest schemas/bindings.schema.json "
            "above --out, as a relative path, else the published URL).",
        ),
    ] = None,
    rate_limit: RateLimitOption = None,
) -> None:
    """Write a desired-state file that allows exactly the bindings that are live now.

    The result validates, and `cvmkeys plan` on it shows no changes: a starting point to
    commit and then edit down. Instance names go into comments next to the IDs, key names
    into `name:` (which plan checks).

    Example: cvmkeys import --region ap-guangzhou --all --emulator examples/fleet.yaml --out bindings.yaml
    """
    from reconciler import operations
    from reconciler.importer import parse_key_ids
    from reconciler.model import Scope

    with _reporting_errors():
        if all_keys == bool(keys) and not (scope is ImportScope.account and not keys):
            raise ConfigError(
                "say which keys to import: --keys skey-...,skey-... or --all",
                hint="scope account always imports every key (--all may be left out)",
            )
        request = operations.ImportRequest(
            region,
            Scope(scope.value),
            parse_key_ids(keys) if keys else None,
            _cloud(emulator, endpoint, profile, rate_limit, api=api),
            out,
            schema_ref,
        )
        show_import(operations.import_desired(request), Terminal())


def _mount_emulator() -> None:
    from reconciler.emulator.cli import emulator_app

    app.add_typer(
        emulator_app,
        name="emulator",
        help="Run the bundled emulator of the CVM API 2.0 and 3.0 (no cloud account needed)."
        "\n\nExample: cvmkeys emulator serve --fleet fleet.yaml",
    )


_mount_emulator()

__all__ = ["app", "main"]
