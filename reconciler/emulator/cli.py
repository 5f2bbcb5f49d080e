"""``cvmkeys emulator serve`` and ``cvmkeys emulator reset``: the bundled CVM API 2.0 emulator.

Mounted into the main Typer app by ``reconciler/cli.py``. ``serve`` prints the endpoint and
the fleet's credentials (emulator-only credentials from the fleet file: printing them is the
point, so that the next command can use them) and serves until Ctrl-C. ``reset`` rebuilds the
live state (an SQLite file beside the fleet fixture) from the fixture.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from reconciler.errors import ConfigError, CvmkeysError, InputError

emulator_app = typer.Typer(
    help="Run the bundled emulator of the CVM API 2.0 and 3.0 (no cloud account needed).",
    no_args_is_help=True,
)


# --state of serve and reset: where the live state lives (docs/emulator.md).
_StateOption = Annotated[
    Path | None,
    typer.Option(
        "--state", help="Live state file (default: $CVMKEYS_EMULATOR_STATE, else FLEET.state.sqlite)."
    ),
]


def _fault(name: str, text: str) -> Any:
    """A ``--fault-NAME`` option of ``serve`` (``FaultProfile`` checks the value)."""
    return typer.Option(f"--fault-{name}", help=text)


def _rate(kind: str, what: str) -> Any:
    """The ``--fault-KIND`` option of ``serve``: how often one fault kind is injected."""
    return _fault(kind, f"Rate (0-1) of {what}.")


@emulator_app.callback()
def _emulator_group() -> None:
    """Run the bundled emulator of the CVM API 2.0 and 3.0 (no cloud account needed)."""


def _fail(error: CvmkeysError) -> typer.Exit:
    if isinstance(error, InputError):
        for problem in error.problems:
            typer.echo(str(problem), err=True)
    typer.secho(f"Error: {error.message}", fg=typer.colors.RED, err=True)
    if error.hint:
        typer.echo(f"hint: {error.hint}", err=True)
    return typer.Exit(1)


@emulator_app.command("serve")
def serve_command(
    fleet: Annotated[
        Path, typer.Option("--fleet", help="Fleet fixture (see examples/fleet.yaml); read, never written.")
    ],
    state_file: _StateOption = None,
    host: Annotated[str, typer.Option("--host", help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[
        int, typer.Option("--port", min=0, max=65535, help="Port to listen on (0: any free port).")
    ] = 8080,
    op_seconds: Annotated[
        float,
        typer.Option("--op-seconds", help="How long bind/unbind (status 20), stop (9) and start (8) take."),
    ] = 0.0,
    rate_limit: Annotated[
        float | None,
        typer.Option(
            "--rate-limit",
            help="One limit for every action, per second (4400 beyond); overrides the documented ones.",
        ),
    ] = None,
    latency_ms: Annotated[float, typer.Option("--latency-ms", help="Delay added to every request.")] = 0.0,
    no_save: Annotated[
        bool, typer.Option("--no-save", help="Keep changes in memory; leave the live state alone.")
    ] = False,
    fault_seed: Annotated[int, typer.Option("--fault-seed", help="Seed of the fault injector.")] = 0,
    fault_throttle: Annotated[float, _rate("throttle", "injected 4400 answers")] = 0.0,
    fault_error: Annotated[float, _rate("error", "injected 6000/6200 answers")] = 0.0,
    fault_http: Annotated[float, _rate("http", "injected HTTP 502/503")] = 0.0,
    fault_drop: Annotated[float, _rate("drop", "connections closed before acting")] = 0.0,
    fault_partial: Annotated[float, _rate("partial", "5400 partial (un)binds of 2+ instances")] = 0.0,
    fault_lost: Annotated[float, _rate("lost", "calls carried out whose answer is then lost")] = 0.0,
    fault_slow: Annotated[float, _rate("slow", "slow answers")] = 0.0,
    fault_slow_seconds: Annotated[float, _fault("slow-seconds", "Delay of a slow answer.")] = 30.0,
    documented_limits: Annotated[
        bool,
        typer.Option(
            "--documented-limits/--no-documented-limits",
            help="The cloud's per-action limits, both APIs (DescribeInstances 40/s, others 10/s); "
            "--no-documented-limits: none unless --rate-limit.",
        ),
    ] = True,
    op_lag: Annotated[
        float,
        typer.Option(
            "--op-lag", help="API 3.0: seconds LatestOperation* still shows the previous operation."
        ),
    ] = 0.0,
    fault_lag: Annotated[float, _rate("lag", "3.0 calls whose operation state lags")] = 0.0,
    fault_lag_seconds: Annotated[float, _fault("lag-seconds", "How long an injected lag lasts.")] = 10.0,
    fault_stuck_stop: Annotated[float, _rate("stuck-stop", "3.0 soft stops that never complete")] = 0.0,
    fault_actions: Annotated[
        str | None,
        typer.Option("--fault-actions", help="Comma-separated actions faults may hit (default: all)."),
    ] = None,
) -> None:
    """Serve the emulator until Ctrl-C.

    Example: cvmkeys emulator serve --fleet examples/fleet.yaml --port 8080 --op-seconds 2
    """
    from reconciler.emulator.server import serve
    from reconciler.emulator.serving import ServeOptions, prepare

    faults = dict(
        seed=fault_seed, throttle_rate=fault_throttle, error_rate=fault_error, http_error_rate=fault_http,
        drop_rate=fault_drop, partial_rate=fault_partial, lost_response_rate=fault_lost,
        slow_rate=fault_slow, slow_seconds=fault_slow_seconds, lag_rate=fault_lag,
        lag_seconds=fault_lag_seconds, stuck_stop_rate=fault_stuck_stop,
    )  # fmt: skip
    options = ServeOptions(
        fleet, state_file, op_seconds=op_seconds, op_lag=op_lag, rate_limit=rate_limit,
        latency_ms=latency_ms, no_save=no_save, documented_limits=documented_limits,
        fault_actions=fault_actions, faults=faults,
    )  # fmt: skip
    try:
        serving = prepare(options)
    except CvmkeysError as error:
        raise _fail(error) from None
    try:
        serve(serving.app, host, port, ready=lambda url: typer.echo("\n".join(serving.banner(url))))
    except KeyboardInterrupt:
        typer.echo("\nstopped.")
    except OSError as error:
        raise _fail(ConfigError(f"cannot listen on {host}:{port}: {error.strerror}")) from None


@emulator_app.command("reset")
def reset_command(
    fleet: Annotated[Path, typer.Option("--fleet", help="Fleet fixture whose live state to rebuild.")],
    state_file: _StateOption = None,
) -> None:
    """Throw away every change made through the emulator: the live state becomes the fixture's.

    Example: cvmkeys emulator reset --fleet examples/fleet.yaml
    """
    from reconciler.emulator.state import FleetState

    try:
        state = FleetState.from_file(fleet, state=state_file, rebuild=True)
        where = state.state_path
        state.close()
    except CvmkeysError as error:
        raise _fail(error) from None
    typer.echo(f"reset {where} from {fleet}")
