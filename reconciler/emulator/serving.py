"""What ``cvmkeys emulator serve`` serves: its options checked, the fault profile, the state and the
app built from them, and the lines it prints once it listens. The command (``emulator.cli``) only
parses options, calls :func:`prepare`, prints :meth:`Serving.banner` and runs the server.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from reconciler.emulator.actions import ACTIONS
from reconciler.emulator.api3 import ACTIONS as ACTIONS3
from reconciler.emulator.api3 import DOCUMENTED_LIMITS
from reconciler.emulator.app import EmulatorApp
from reconciler.emulator.faults import FaultProfile
from reconciler.emulator.state import FleetState
from reconciler.errors import ConfigError

API2_PATH = "/v2/index.php"


@dataclass(frozen=True)
class ServeOptions:
    """``serve``'s options but the address. ``faults`` are ``FaultProfile``'s keyword arguments
    (seed, rates, seconds), ``fault_actions`` the ``--fault-actions`` text as given."""

    fleet: Path
    state_file: Path | None = None
    op_seconds: float = 0.0
    op_lag: float = 0.0
    rate_limit: float | None = None
    latency_ms: float = 0.0
    no_save: bool = False
    documented_limits: bool = True
    fault_actions: str | None = None
    faults: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Serving:
    """The app to serve, its state, and the faults it injects (``None``: none)."""

    fleet: Path
    app: EmulatorApp
    state: FleetState
    faults: FaultProfile | None

    def banner(self, url: str) -> list[str]:
        """What ``serve`` prints once it listens at ``url`` (the 2.0 endpoint)."""
        # The 2.0 URL stays on the first line: scripts read it (and the credentials) from there.
        lines = [f"CVM API emulator serving {self.fleet}: API 2.0 at {url}"]
        for cred in self.state.credentials:
            # Emulator-only credentials from the fleet file: shown on purpose.
            lines += [f"  SecretId:  {cred.secret_id}", f"  SecretKey: {cred.secret_key}"]
        lines.append(f"  regions:   {', '.join(self.state.regions)}")
        # After the credentials: scripts read the first three lines (endpoint, id, key).
        base = url[: -len(API2_PATH)] if url.endswith(API2_PATH) else url
        lines.append(f"  API 3.0:   {base}/ (and STS; SDK endpoint {base.split('//', 1)[-1]})")
        if self.state.state_path is not None:
            reset = f"cvmkeys emulator reset --fleet {self.fleet}"
            lines.append(f"  live state:  {self.state.state_path} (reset: {reset})")
        else:
            lines.append("  changes are kept in memory only")
        if self.faults is not None:
            lines.append(f"  injecting faults: {self.faults}")
        lines.append("Press Ctrl-C to stop.")
        return lines


def prepare(options: ServeOptions) -> Serving:
    """Check the options and build what they say; a ``ConfigError`` names the bad option."""
    negative = options.op_seconds < 0 or options.latency_ms < 0 or options.op_lag < 0
    if negative or (options.rate_limit is not None and options.rate_limit <= 0):
        raise ConfigError(
            "--op-seconds, --op-lag and --latency-ms must not be negative; --rate-limit must be positive"
        )
    faults = fault_profile(options.faults, options.fault_actions)
    state = FleetState.from_file(
        options.fleet, op_seconds=options.op_seconds, persist=not options.no_save, state=options.state_file
    )
    state.op_lag = options.op_lag
    app = EmulatorApp(
        state,
        rate_limit=options.rate_limit,
        latency_ms=options.latency_ms,
        faults=faults,
        # --rate-limit, one rate for every action, replaces the documented per-action ones.
        limits=DOCUMENTED_LIMITS if options.documented_limits and options.rate_limit is None else None,
    )
    return Serving(options.fleet, app, state, faults)


def fault_profile(rates: Mapping[str, Any], fault_actions: str | None) -> FaultProfile | None:
    """The faults to inject (``None`` when every rate is 0), limited to ``fault_actions``
    (comma-separated action names of either API; ``None``: all)."""
    actions = None
    if fault_actions:
        actions = frozenset(a.strip() for a in fault_actions.split(",") if a.strip())
        known = list(dict.fromkeys([*ACTIONS, *ACTIONS3]))
        unknown = sorted(actions - set(known))
        if unknown:
            raise ConfigError(
                f"--fault-actions: unknown action(s) {', '.join(unknown)}", hint=f"known: {', '.join(known)}"
            )
    try:
        profile = FaultProfile(**rates, actions=actions)
    except ValueError as error:
        raise ConfigError(f"fault options: {error}") from None
    return profile if any(profile.rates().values()) else None
