"""The ``cvmkeys`` command line (Typer). The only module that prints, prompts or exits.

Every command body runs inside ``_reporting_errors``: a ``CvmkeysError`` becomes one red line
(plus the problems it carries, one per line, and a hint) and its exit code; any other exception
is a bug and is shown as a traceback only with ``--debug``.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from reconciler import __version__
from reconciler.errors import CvmkeysError, InputError

app = typer.Typer(
    name="cvmkeys",
    help="Keep the SSH-key bindings of Tencent Cloud CVM instances under review in Git.",
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
        console.print(f"[bold red]Error:[/] {error.message}", soft_wrap=True)
        if error.hint:
            console.print(f"[dim]hint:[/] {error.hint}", soft_wrap=True)
        if _options.debug:
            console.print_exception()
        raise typer.Exit(error.exit_code) from None
    except KeyboardInterrupt:
        _stderr().print("[bold red]Interrupted.[/]")
        raise typer.Exit(130) from None


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
    """Keep the SSH-key bindings of Tencent Cloud CVM instances under review in Git."""
    _options.debug = debug
    level = (
        log_level.upper() if log_level else ("DEBUG" if verbose >= 2 else "INFO" if verbose else "WARNING")
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


from reconciler.emulator.cli import emulator_app  # noqa: E402 - mounted after the commands above

app.add_typer(emulator_app, name="emulator", help="Run the bundled emulator of the CVM API 2.0.")
