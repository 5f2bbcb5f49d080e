"""Safety limits on how much one apply may unbind. Pure; called by ``core.plan`` and, for a saved plan
with limits on the command line, by ``operations``.

Like octoDNS's MAX_SAFE_*_PCENT: the verdict is computed after the plan is built, so an unsafe
plan is still shown in full with the numbers that tripped it; apply refuses it without --force.
"""

from __future__ import annotations

from dataclasses import replace

from reconciler.common import plural
from reconciler.model import (
    DEFAULT_MAX_UNBIND_PERCENT,
    PERCENT_CHECK_MIN_OWNED,
    SafetyLimits,
    SafetyVerdict,
)


def merge_limits(file_limits: SafetyLimits, override: SafetyLimits) -> SafetyLimits:
    """Command-line limits win over the file's, field by field."""
    return SafetyLimits(
        max_unbinds=override.max_unbinds if override.max_unbinds is not None else file_limits.max_unbinds,
        max_unbind_percent=(
            override.max_unbind_percent
            if override.max_unbind_percent is not None
            else file_limits.max_unbind_percent
        ),
        max_stops=override.max_stops if override.max_stops is not None else file_limits.max_stops,
    )


def check_stops(stops: int, limits: SafetyLimits) -> tuple[str, ...]:
    """Why stopping ``stops`` instances (``core.disruption.StopSchedule.stop_count``) is over
    ``limits.max_stops``; empty when it is not, or when no limit is set (no default: the
    ``disruption`` block is itself the opt-in, and its budget bounds how many are down at once)."""
    if limits.max_stops is not None and stops > limits.max_stops:
        return (f"{stops} stops is over max_stops {limits.max_stops}",)
    return ()


def _number(value: float) -> str:
    return f"{value:g}"


def check_safety(unbinds: int, owned_bindings: int, limits: SafetyLimits) -> SafetyVerdict:
    """Whether ``unbinds`` out of ``owned_bindings`` is within ``limits``.

    The percentage limit (default 30 %) applies only when 10 or more bindings are owned, so a
    small file can still remove its few bindings.
    """
    percent_limit = (
        limits.max_unbind_percent if limits.max_unbind_percent is not None else DEFAULT_MAX_UNBIND_PERCENT
    )
    violations: list[str] = []
    if limits.max_unbinds is not None and unbinds > limits.max_unbinds:
        violations.append(f"{plural(unbinds, 'unbind')} is over max_unbinds {limits.max_unbinds}")
    percent_checked = owned_bindings >= PERCENT_CHECK_MIN_OWNED
    if percent_checked and unbinds * 100 > percent_limit * owned_bindings:
        share = unbinds * 100 / owned_bindings
        violations.append(
            f"{plural(unbinds, 'unbind')} is {share:.1f}% of {plural(owned_bindings, 'owned binding')}, "
            f"over max_unbind_percent {_number(percent_limit)}"
        )
    return SafetyVerdict(
        safe=not violations,
        unbinds=unbinds,
        owned_bindings=owned_bindings,
        max_unbinds=limits.max_unbinds,
        max_unbind_percent=percent_limit,
        percent_checked=percent_checked,
        violations=tuple(violations),
    )


def recheck_safety(
    verdict: SafetyVerdict, override: SafetyLimits, *, stops: int = 0, max_stops: int | None = None
) -> SafetyVerdict:
    """A saved plan's verdict under limits given on the command line (they win over the
    recorded ones); the recorded verdict itself when none are given. ``stops`` and
    ``max_stops`` are the plan's stop count and recorded ``max_stops`` (its schedule's)."""
    if override.max_unbinds is None and override.max_unbind_percent is None and override.max_stops is None:
        return verdict
    if override.max_unbinds is None and override.max_unbind_percent is None:
        # the recorded stop violation is replaced by the command line's
        kept = tuple(v for v in verdict.violations if "over max_stops" not in v)
        result = replace(verdict, safe=not kept, violations=kept)
    else:
        recorded = SafetyLimits(verdict.max_unbinds, verdict.max_unbind_percent)
        result = check_safety(verdict.unbinds, verdict.owned_bindings, merge_limits(recorded, override))
    limit = override.max_stops if override.max_stops is not None else max_stops
    extra = check_stops(stops, SafetyLimits(max_stops=limit))
    if not extra:
        return result
    return replace(result, safe=False, violations=(*result.violations, *extra))
