"""Fault injection for the emulator: the misbehaviour a real cloud shows now and then.

Used by ``emulator/app.py`` (which asks ``FaultInjector.draw`` once per authenticated request)
and configured by tests (a ``FaultProfile`` object) or by ``cvmkeys emulator serve --fault-*``.

Every kind has its own rate (0..1); the kinds are drawn one after another from one seeded
``random.Random`` in the order of ``ALL_FAULT_KINDS`` and the first that fires is injected, so at
most one fault hits a request and a seed replays the same sequence of faults for the same
sequence of requests.

==================  ===================================================================
kind                what the client sees (and what happened)
==================  ===================================================================
``throttle``        code 4400, nothing done
``error``           code 6000 or 6200 (even odds), nothing done
``http``            HTTP 502 or 503 (even odds), nothing done
``drop``            the connection closes with no answer, nothing done
``partial``         (Un)BindInstanceKey with 2+ instances: some done, code 5400 naming them
``lost``            the call IS carried out, then the connection closes with no answer
``slow``            the call is carried out; the answer comes after ``slow_seconds``
``lag``             (3.0) the call is carried out and answered, but the instances' latest
                    operation keeps showing the previous one for ``lag_seconds``
``stuck_stop``      (3.0) a SOFT StopInstances is accepted but never completes: the
                    operation ends FAILED and the instance stays RUNNING (SOFT_FIRST goes
                    hard and takes twice as long)
==================  ===================================================================

API 3.0 answers the same kinds with its own codes: ``throttle`` is ``RequestLimitExceeded``,
``error`` ``InternalError`` or ``ResourceUnavailable``; 3.0 has no ``partial``.
"""

from __future__ import annotations

import random
import threading
from collections.abc import Iterable
from dataclasses import dataclass

# The kinds both APIs know, in drawing order (kept as it was, so that seeded chaos runs replay).
FAULT_KINDS = ("throttle", "error", "http", "drop", "partial", "lost", "slow")
# Kinds that only mean something to API 3.0 (drawn for 3.0 requests only), drawn after those.
API3_ONLY_KINDS = ("lag", "stuck_stop")
ALL_FAULT_KINDS = FAULT_KINDS + API3_ONLY_KINDS


class ConnectionDropped(ConnectionResetError):
    """Raised by the app to make the server close the connection without an answer.

    A ``ConnectionResetError`` so that ``wsgiref`` silently drops the request; ``transport()``
    turns it into the ``httpx.RemoteProtocolError`` a real socket gives.
    """


class ResponseTimedOut(TimeoutError):
    """Raised in-process when a slow answer would come after the client's read timeout."""


@dataclass(frozen=True)
class FaultProfile:
    """Rates (0..1) of each fault kind, the seed, and the actions faults may hit."""

    seed: int = 0
    throttle_rate: float = 0.0
    error_rate: float = 0.0
    http_error_rate: float = 0.0
    drop_rate: float = 0.0
    partial_rate: float = 0.0
    lost_response_rate: float = 0.0
    slow_rate: float = 0.0
    slow_seconds: float = 30.0
    actions: frozenset[str] | None = None  # None: every action
    lag_rate: float = 0.0
    lag_seconds: float = 10.0  # Terraform sleeps 10 s before it polls, for this reason
    stuck_stop_rate: float = 0.0

    def __post_init__(self) -> None:
        for kind, rate in self.rates().items():
            if not 0.0 <= rate <= 1.0:
                raise ValueError(f"{kind} rate must be between 0 and 1, not {rate}")
        if self.slow_seconds < 0 or self.lag_seconds < 0:
            raise ValueError("slow_seconds and lag_seconds must not be negative")

    def rates(self) -> dict[str, float]:
        """Each kind's rate, in drawing order."""
        return {
            "throttle": self.throttle_rate,
            "error": self.error_rate,
            "http": self.http_error_rate,
            "drop": self.drop_rate,
            "partial": self.partial_rate,
            "lost": self.lost_response_rate,
            "slow": self.slow_rate,
            "lag": self.lag_rate,
            "stuck_stop": self.stuck_stop_rate,
        }

    @classmethod
    def only(
        cls,
        kind: str,
        rate: float = 1.0,
        *,
        seed: int = 0,
        actions: Iterable[str] | None = None,
        slow_seconds: float = 30.0,
    ) -> FaultProfile:
        """A profile with one kind of fault: ``FaultProfile.only("lost", actions=["UnBindInstanceKey"])``."""
        fields = {
            "throttle": "throttle_rate",
            "error": "error_rate",
            "http": "http_error_rate",
            "drop": "drop_rate",
            "partial": "partial_rate",
            "lost": "lost_response_rate",
            "slow": "slow_rate",
            "lag": "lag_rate",
            "stuck_stop": "stuck_stop_rate",
        }
        if kind not in fields:
            raise ValueError(f"unknown fault kind {kind!r} (known: {', '.join(ALL_FAULT_KINDS)})")
        return cls(
            seed=seed,
            actions=frozenset(actions) if actions is not None else None,
            slow_seconds=slow_seconds,
            **{fields[kind]: rate},
        )


@dataclass(frozen=True)
class InjectedFault:
    """One fault the emulator injected, for test reports."""

    time: float
    action: str
    kind: str
    detail: str


class FaultInjector:
    """Draws faults for a profile; thread-safe (one lock around the random generator)."""

    def __init__(self, profile: FaultProfile) -> None:
        self.profile = profile
        self._random = random.Random(profile.seed)
        self._lock = threading.Lock()

    def draw(self, action: str, *, can_partial: bool, api3: bool = False) -> str | None:
        """The kind of fault to inject into this request, or None. ``partial`` only where
        ``can_partial``; the 3.0-only kinds only for ``api3`` requests."""
        if self.profile.actions is not None and action not in self.profile.actions:
            return None
        with self._lock:
            for kind, rate in self.profile.rates().items():
                if rate <= 0.0:
                    continue
                hit = self._random.random() < rate
                if not hit or (kind == "partial" and not can_partial):
                    continue
                if kind in API3_ONLY_KINDS and not api3:
                    continue
                return kind
            return None

    def coin(self) -> bool:
        """An even-odds choice (6000 or 6200, 502 or 503), from the same seeded generator."""
        with self._lock:
            return self._random.random() < 0.5

    def split(self, items: list[str]) -> tuple[list[str], list[str]]:
        """A random split of 2+ items into (done, failed), both non-empty, order kept."""
        with self._lock:
            failed_count = self._random.randint(1, len(items) - 1)
            failed = set(self._random.sample(items, failed_count))
        return [i for i in items if i not in failed], [i for i in items if i in failed]
