"""What each command does, as functions of typed requests that return data (octoDNS's
``Manager.sync`` behind thin commands).

The CLI parses its options into a request, calls one operation and hands the result to one view.
An operation owns the connection's lifetime (opened and closed here, on every path), decides
safety once (``core.safety``), checks a plan's IDs once (``Executor``), and returns a result that
knows its exit class. It never prints: what the user must see while it runs (a fresh plan before
the confirmation, progress) goes through the hooks the view passes in.

Errors are raised as ``reconciler.errors`` exceptions; the CLI reports them.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import os
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from enum import IntEnum
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from reconciler.common import plural
from reconciler.core.safety import recheck_safety
from reconciler.errors import (
    ConfigError,
    CvmkeysError,
    InputError,
    PlanIntegrityError,
    PlanRefusedError,
    UnsafePlanError,
)
from reconciler.model import (
    ApplyResult,
    Desired,
    Outcome,
    Plan,
    SafetyLimits,
    SafetyVerdict,
    Scope,
)

if TYPE_CHECKING:  # the cloud side is imported only by the operations that talk to it
    from reconciler.connect import Connection, ConnectOptions
    from reconciler.desired.loader import LoadedDesired
    from reconciler.execute.executor import ExecEvent, Executor
    from reconciler.importer import ImportSummary


class ExitCode(IntEnum):
    """The exit classes every command shares (documented in the README)."""

    OK = 0
    ERROR = 1
    CHANGES = 2  # plan --detailed-exitcode: there are unbinds (ready or blocked)
    BLOCKED = 3  # apply: everything attempted is done, but some unbinds were blocked
    INTERRUPTED = 130


# --------------------------------------------------------------------------- shared steps


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def write_atomically(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` so a reader sees the old file or the new one, never half of
    one; an existing file keeps its permissions (a new one gets the umask's)."""
    if not path.name or path.is_dir():  # `--out /`: Path("/").with_name raises ValueError
        raise ConfigError(f"cannot write {path}: it is a directory", hint="name a file, e.g. --out plan.json")
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        tmp.write_text(text, encoding="utf-8")
        with suppress(FileNotFoundError):
            os.chmod(tmp, path.stat().st_mode & 0o7777)
        os.replace(tmp, path)
    except OSError as error:
        with suppress(OSError):
            tmp.unlink(missing_ok=True)
        raise ConfigError(f"cannot write {path}: {error.strerror or error}") from None


# A real plan of 100,000 changes is ~40 MB; anything far larger is not a plan (and is read
# into memory whole).
MAX_PLAN_BYTES = 256 * 1024 * 1024


def read_plan(planfile: Path) -> Plan:
    """A saved plan, checked (integrity, schema, batches, premises); a regular file of at most
    ``MAX_PLAN_BYTES`` (``show /dev/zero`` is refused unread)."""
    from reconciler.files import FileReadError, read_bounded
    from reconciler.planfile import load_plan

    try:
        data = read_bounded(planfile, MAX_PLAN_BYTES, "plan file")
    except FileReadError as error:
        raise PlanIntegrityError(f"{error.problems[0].file}: {error.problems[0].message}") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise PlanIntegrityError(
            f"{planfile}: cannot read the plan file: not UTF-8 (byte {error.start})"
        ) from None
    return load_plan(text, str(planfile))


def check_sources(the_plan: Plan, base: Path) -> None:
    """Refuse a plan whose desired-state files changed or are gone since it was made: the plan
    carries out what those files said, and only then (this closes replay: a plan applied again
    after the file was changed to allow its bindings). Paths are where plan read them, relative
    to the directory it ran in; ``base`` is where apply looks for them (its own directory)."""
    import hashlib

    from reconciler.desired.yaml_nodes import MAX_FILE_BYTES
    from reconciler.files import FileReadError, read_bounded

    problems: list[str] = []
    for source in the_plan.sources:
        path = Path(source.path)
        if not path.is_absolute():
            path = base / path
        try:
            digest = hashlib.sha256(read_bounded(path, MAX_FILE_BYTES, "file", source.path)).hexdigest()
        except FileReadError as error:
            problems.append(f"{source.path}: {error.problems[0].message}")
            continue
        if digest != source.sha256:
            problems.append(f"{source.path} changed since the plan was made")
    if problems:
        raise PlanRefusedError(
            "the plan's desired-state files are not as they were: " + "; ".join(problems),
            hint="plan again from the files as they are now; or, to apply the plan as reviewed "
            "anyway, run apply from the directory plan ran in, or add --ignore-changed-sources",
        )


def check_age(the_plan: Plan, max_age: float, now: dt.datetime | None = None) -> None:
    """Refuse a plan older than ``max_age`` seconds (``apply --max-age``)."""
    try:
        created = dt.datetime.fromisoformat(the_plan.created_at.replace("Z", "+00:00"))
    except ValueError:
        created = None
    if created is None or created.tzinfo is None:
        raise PlanRefusedError(
            "the plan records no time it was made, so --max-age cannot be checked",
            hint="plan again, or apply without --max-age",
        )
    age = ((now or dt.datetime.now(dt.timezone.utc)) - created).total_seconds()
    if age > max_age:
        raise PlanRefusedError(
            f"the plan was made {format_duration(age)} ago, over --max-age {format_duration(max_age)}",
            hint="plan again and review the new plan",
        )


_DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text: str) -> float:
    """``"90s"``, ``"30m"``, ``"12h"``, ``"7d"`` or plain seconds, as seconds (positive, finite)."""
    value = text.strip().lower()
    unit = _DURATION_UNITS.get(value[-1:])
    number = value[:-1] if unit is not None else value
    try:
        seconds = float(number) * (unit or 1)
    except ValueError:
        seconds = float("nan")
    if not (0 < seconds < 10**9):  # NaN fails too
        raise ConfigError(f"{text!r} is not a duration such as 90s, 30m, 12h or 7d")
    return seconds


def format_duration(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.1f}{unit}".replace(".0" + unit, unit)
    return f"{seconds:.0f}s"


def is_plan_file(paths: Sequence[Path]) -> bool:
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


def _plan_errors(plan: Plan) -> PlanRefusedError:
    return PlanRefusedError(
        f"the plan has {plural(plan.summary.errors, 'error')}: "
        "fix the desired-state file or the cloud, then plan again"
    )


def _single_region(paths: Sequence[Path]) -> Desired:
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


@dataclass(frozen=True)
class CloudRequest:
    """Where to connect, and where to log the calls: what every cloud-facing command shares."""

    connect: ConnectOptions
    audit_log: Path | None = None


@contextmanager
def _connected(
    region: str, request: CloudRequest, audit_failures: list[str] | None = None
) -> Iterator[Connection]:
    """The one way every operation connects: the audit log and the connection are closed on
    every path out. An audit log that failed (disk full, ...) never stops the calls: its
    failure is appended to ``audit_failures`` (apply reports it with its result), or raised
    after the fact when no list is given."""
    from reconciler.connect import connect
    from reconciler.execute.audit import AuditLog

    audit = AuditLog(request.audit_log) if request.audit_log else None
    try:
        with connect(region, request.connect, on_attempt=audit) as connection:
            yield connection
    finally:
        if audit is not None:
            audit.close()
    if audit is not None and audit.failure is not None:
        if audit_failures is None:
            raise ConfigError(audit.failure)
        audit_failures.append(audit.failure)


def _build_plan(desired: Desired, connection: Connection, limits: SafetyLimits) -> Plan:
    """Check the account (``account:`` in the files), observe, plan; the plan records who it
    ran as."""
    from reconciler.cloud.observe import observe_for_plan
    from reconciler.connect import check_account
    from reconciler.core.plan import build_plan

    check_account(connection, desired.account, _account_source(desired))
    caller = connection.identity()
    observed = observe_for_plan(connection.client, desired)
    the_plan = build_plan(
        desired,
        observed,
        endpoint=connection.endpoint_label,
        api=connection.client.api,
        limits_override=limits,
        created_at=_now(),
    )
    return dataclasses.replace(the_plan, caller=caller)


def _account_source(desired: Desired) -> str:
    paths = ", ".join(source.path for source in desired.sources) or "the desired-state file"
    return f"{paths} (account: {desired.account})"


# --------------------------------------------------------------------------- validate


def validate(paths: Sequence[Path]) -> LoadedDesired:
    """Load and check desired-state files (no API call); raises ``InputError`` with every problem."""
    from reconciler.desired.loader import load_paths

    return load_paths(paths)


# --------------------------------------------------------------------------- schema


SCHEMA_NAMES = ("bindings", "plan", "fleet", "result", "validation")


def schema(name: str) -> str:
    """The text of a JSON Schema shipped with cvmkeys (``SCHEMA_NAMES``), as shipped."""
    from reconciler.schemas import schema_text

    if name not in SCHEMA_NAMES:
        raise ConfigError(f"no schema named {name!r}", hint="one of: " + ", ".join(SCHEMA_NAMES))
    return schema_text(name)


# --------------------------------------------------------------------------- plan


@dataclass(frozen=True)
class PlanRequest:
    paths: tuple[Path, ...]
    cloud: CloudRequest
    limits: SafetyLimits = field(default_factory=SafetyLimits)
    out: Path | None = None
    detailed_exitcode: bool = False


@dataclass(frozen=True)
class PlanResult:
    plan: Plan
    saved_to: Path | None
    detailed_exitcode: bool

    @property
    def refusal(self) -> CvmkeysError | None:
        """The error to report after the plan is shown (a plan with errors is saved, but apply
        refuses it)."""
        if not self.plan.has_errors:
            return None
        if self.saved_to is None:
            return _plan_errors(self.plan)
        return PlanRefusedError(
            f"the plan has {plural(self.plan.summary.errors, 'error')}: saved to {self.saved_to} "
            "as a record, but apply refuses it",
            hint="fix the desired-state file or the cloud, then plan again",
        )

    @property
    def exit_code(self) -> ExitCode:
        if self.plan.has_errors:
            return ExitCode.ERROR
        # Protected bindings are the file's own decision and unchangeable ones (Windows) no API
        # can act on: neither is drift anyone can fix, so neither keeps the alert at 2.
        drift = bool(self.plan.actionable_changes)
        return ExitCode.CHANGES if self.detailed_exitcode and drift else ExitCode.OK


def plan(request: PlanRequest) -> PlanResult:
    """Observe, diff and plan one region; save the plan when asked and it has no errors."""
    from reconciler.core.document import dump_plan

    desired = _single_region(request.paths)
    try:
        with _connected(desired.region, request.cloud) as connection:
            the_plan = _build_plan(desired, connection, request.limits)
    except CvmkeysError as error:
        # No plan now: an older plan must not stay in FILE looking like this run's result.
        if request.out is not None and is_plan_file([request.out]):
            with suppress(OSError):
                request.out.unlink()
                note = f"{request.out}, which held an older plan, was removed"
                error.hint = f"{error.hint}; {note}" if error.hint else note
        raise
    if request.out is not None:
        # Written even with errors: a plan with error findings is never applied, so FILE holds
        # nothing appliable (not the previous plan) and `show FILE` still shows what was found.
        write_atomically(request.out, dump_plan(the_plan))
    return PlanResult(the_plan, request.out, request.detailed_exitcode)


# --------------------------------------------------------------------------- apply


class ApplyHooks(Protocol):
    """What the view shows while apply runs."""

    def planned(self, plan: Plan) -> None:
        """A fresh plan was made (shown before the confirmation)."""

    def confirm(self, plan: Plan) -> None:
        """Ask to go on; raise ``ApprovalError`` unless the user approves."""

    def started(self, plan: Plan) -> None:
        """The executor starts on ``plan``'s ready changes."""

    def event(self, event: ExecEvent) -> None:
        """Progress from the executor."""

    def finished(self) -> None:
        """The executor stopped (always called after ``started``)."""


@dataclass(frozen=True)
class ApplyRequest:
    """``paths``: one saved plan file, or desired-state files (a fresh plan)."""

    paths: tuple[Path, ...]
    cloud: CloudRequest
    limits: SafetyLimits = field(default_factory=SafetyLimits)
    auto_approve: bool = False
    force: bool = False
    parallelism: int = 4
    ignore_changed_sources: bool = False  # apply a saved plan although its files changed
    max_age: float | None = None  # seconds: refuse a saved plan older than this
    base: Path = field(default_factory=Path.cwd)  # where a saved plan's sources are looked for


@dataclass(frozen=True)
class ApplyOutcome:
    plan: Plan
    result: ApplyResult
    already_applied: bool = False  # a saved plan whose every ready unbind was already done
    problems: tuple[str, ...] = ()  # reported with the result: a failing audit log

    @property
    def exit_code(self) -> ExitCode:
        result = self.result
        if self.problems:
            return ExitCode.ERROR
        if self.already_applied:
            return ExitCode.OK  # its blocked unbinds were reported by the apply that did the work
        if result.interrupted:
            return ExitCode.INTERRUPTED
        if result.count(Outcome.FAILED) or result.count(Outcome.NOT_ATTEMPTED) or result.stopped_reason:
            return ExitCode.ERROR
        if result.stops is not None and result.stops.still_down:
            return ExitCode.ERROR  # an instance cvmkeys stopped is not running again
        if result.count(Outcome.BLOCKED):
            return ExitCode.BLOCKED
        return ExitCode.OK


def apply(request: ApplyRequest, hooks: ApplyHooks, stop: threading.Event) -> ApplyOutcome:
    """Carry out a saved plan as reviewed, or a fresh plan after confirmation. ``stop`` set
    (Ctrl-C) starts no new call."""
    if is_plan_file(request.paths):
        return apply_saved(request, hooks, stop)
    return apply_fresh(request, hooks, stop)


def apply_saved(request: ApplyRequest, hooks: ApplyHooks, stop: threading.Event) -> ApplyOutcome:
    """A saved plan: where it was made, if it is still fresh, without a question."""
    from reconciler.connect import check_account, options_for_plan
    from reconciler.execute.executor import check_sendable

    the_plan = read_plan(request.paths[0])
    if the_plan.has_errors:
        raise _plan_errors(the_plan)
    if request.max_age is not None:
        check_age(the_plan, request.max_age)
    if not request.ignore_changed_sources:
        check_sources(the_plan, request.base)
    cloud = dataclasses.replace(request.cloud, connect=options_for_plan(the_plan, request.cloud.connect))
    failures: list[str] = []
    with _connected(the_plan.region, cloud, failures) as connection:
        if connection.client.api is not the_plan.api:
            # The batches are shaped for the plan's API (2.0: one key a call).
            raise ConfigError(
                f"the plan was made for CVM API {the_plan.api.value}, "
                f"this connection speaks {connection.client.api.value}",
                hint="apply it with the API it was planned for, or plan again",
            )
        executor = _executor(connection, the_plan, request, hooks, stop)
        if the_plan.caller is not None:  # made for one account: applied only there
            check_sendable(the_plan)  # no request at all, not even STS, for a plan naming bad IDs
            check_account(connection, the_plan.caller.account_id, f"the plan {request.paths[0]}")
        fresh = executor.check_fresh()
        if fresh.finished:
            # Nothing left to unbind: the result is made of what check_fresh read. With a stop
            # schedule run still looks at its instances: one a killed apply of this plan stopped
            # may still be down, and run starts it (execute.rolling), whatever the limits say.
            result = executor.run() if the_plan.stops is None else _run(executor, the_plan, hooks)
        else:
            stops = the_plan.stops
            verdict = recheck_safety(
                the_plan.safety,
                request.limits,
                stops=stops.stop_count if stops else 0,
                max_stops=stops.max_stops if stops else None,
            )
            _check_safe(verdict, request.force)
            result = _run(executor, the_plan, hooks)
    return ApplyOutcome(the_plan, result, fresh.finished and bool(fresh.done), tuple(failures))


def apply_fresh(request: ApplyRequest, hooks: ApplyHooks, stop: threading.Event) -> ApplyOutcome:
    """Plan now (limits from the command line already in its verdict), show it, confirm, apply."""
    desired = _single_region(request.paths)
    failures: list[str] = []
    with _connected(desired.region, request.cloud, failures) as connection:
        the_plan = _build_plan(desired, connection, request.limits)
        hooks.planned(the_plan)
        if the_plan.has_errors:
            raise _plan_errors(the_plan)
        _check_safe(the_plan.safety, request.force)
        if the_plan.ready_changes and not request.auto_approve:
            hooks.confirm(the_plan)
        executor = _executor(connection, the_plan, request, hooks, stop)
        result = _run(executor, the_plan, hooks)
    return ApplyOutcome(the_plan, result, problems=tuple(failures))


def _check_safe(verdict: SafetyVerdict, force: bool) -> None:
    if not verdict.safe and not force:
        raise UnsafePlanError(
            "the plan is UNSAFE: " + "; ".join(verdict.violations),
            hint="check the plan; if it is right, apply it with --force",
        )


def _executor(
    connection: Connection, the_plan: Plan, request: ApplyRequest, hooks: ApplyHooks, stop: threading.Event
) -> Executor:
    from reconciler.execute.executor import ExecOptions, Executor

    return Executor(
        connection.client,
        the_plan,
        options=ExecOptions(parallelism=request.parallelism),
        on_event=hooks.event,
        stop=stop,
    )


def _run(executor: Executor, the_plan: Plan, hooks: ApplyHooks) -> ApplyResult:
    """Run the executor; whatever goes wrong once it started, the result is what it knows (an
    unexpected exception is reported in it as a bug, with the partial result)."""
    hooks.started(the_plan)
    try:
        return executor.run()
    except Exception as error:  # a bug must not lose the record of real unbinds
        return executor.result_after(error)
    finally:
        hooks.finished()


# --------------------------------------------------------------------------- import


@dataclass(frozen=True)
class ImportRequest:
    region: str | None
    scope: Scope
    key_ids: tuple[str, ...] | None  # None: every key (--all, or scope account)
    cloud: CloudRequest
    out: Path | None = None
    schema_ref: str | None = None  # None: right where the file is written (importer.schema_ref_for)


@dataclass(frozen=True)
class ImportResult:
    text: str
    region: str
    scope: Scope
    summary: ImportSummary
    calls: dict[str, int]
    written_to: Path | None

    @property
    def exit_code(self) -> ExitCode:
        return ExitCode.OK


def import_desired(request: ImportRequest) -> ImportResult:
    """A desired-state file that allows exactly the live bindings, checked by the loader
    before anyone sees it; written atomically to ``out`` when given."""
    from reconciler import importer
    from reconciler.cloud.credentials import default_region

    region_name = request.region or default_region(profile=request.cloud.connect.profile)
    if not region_name:
        raise ConfigError(
            "no region given", hint="pass --region, set TENCENTCLOUD_REGION, or set one in the tccli profile"
        )
    selection = importer.ImportSelection(
        region=importer.canonical_region(region_name), scope=request.scope, key_ids=request.key_ids
    )
    with _connected(selection.region, request.cloud) as connection:
        observed = importer.observe_for_import(connection.client, selection)
        calls = dict(connection.client.calls)
    schema_ref = request.schema_ref or importer.schema_ref_for(request.out)
    text = importer.render_desired(selection, observed, schema_ref=schema_ref)
    _check_imported(text, request.out)
    if request.out is not None:
        write_atomically(request.out, text)
    summary = importer.summarize(selection, observed)
    return ImportResult(text, selection.region, selection.scope, summary, calls, request.out)


def _check_imported(text: str, out: Path | None) -> None:
    """Load the rendered file back through the loader: import must never hand out a file that
    does not validate."""
    from reconciler.desired.loader import load_text

    try:
        load_text(text, out.name if out is not None else "imported.yaml")
    except InputError as error:
        raise CvmkeysError(
            "internal error: the imported file does not validate: "
            + "; ".join(str(p) for p in error.problems[:3]),
            hint="this is a bug in cvmkeys; please report it with the command you ran",
        ) from None
