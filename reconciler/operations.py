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
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from enum import IntEnum
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, TypeVar, cast

from reconciler.common import plural
from reconciler.core.safety import recheck_safety
from reconciler.errors import (
    ConfigError,
    CvmkeysError,
    InputError,
    PlanIntegrityError,
    PlanRefusedError,
    Problem,
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
    from reconciler.execute.freshness import Freshness
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


def _plan_text(planfile: Path) -> str:
    from reconciler.files import FileReadError, read_bounded

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
    _refuse_other_kinds(planfile, text)
    return text


def _refuse_other_kinds(planfile: Path, text: str) -> None:
    """Name the kind of file given where a plan file was wanted, when it is one of ours."""
    from reconciler.desired.loader import has_desired_file_keys
    from reconciler.desired.yaml_nodes import FLEET_FILE_KEYS, has_top_level_keys

    text = text.removeprefix("\ufeff")
    if has_top_level_keys(text, FLEET_FILE_KEYS):  # YAML or JSON (JSON is YAML)
        kind, hint = "an emulator fleet file", f"give it as --emulator {planfile}"
    elif text.lstrip().startswith("{") or has_top_level_keys(text, frozenset({"format_version"})):
        return  # a plan, good or bad (its own checks say which), or some other JSON
    elif has_desired_file_keys(text):
        kind, hint = "a desired-state file", f"plan from it first: cvmkeys plan {planfile} --out plan.json"
    elif has_top_level_keys(text, frozenset()):  # a YAML mapping of someone else's (a CI file)
        kind, hint = "a YAML file", "a plan file is JSON"
    else:
        return  # the JSON parser says what is wrong
    raise PlanIntegrityError(
        f"{planfile}: this is {kind}, not a plan file",
        hint=f"show and apply PLANFILE take what `cvmkeys plan --out FILE` writes; {hint}",
    )


def read_plan(planfile: Path) -> Plan:
    """A saved plan of one region, checked (integrity, schema, batches, premises); a regular
    file of at most ``MAX_PLAN_BYTES`` (``show /dev/zero`` is refused unread)."""
    from reconciler.planfile import load_plan

    return load_plan(_plan_text(planfile), str(planfile))


def read_plans(planfile: Path, region: str | None = None) -> tuple[Plan, ...]:
    """A saved plan file's plans, one per region (a plan set: several), each checked as
    ``read_plan`` checks one; only ``region``'s when given."""
    from reconciler.planfile import load_plans

    return _pick_region(load_plans(_plan_text(planfile), str(planfile)), region, planfile)


def check_sources(the_plan: Plan, search: _FolderSearch) -> None:
    """Refuse a plan whose desired-state files changed or are gone since it was made, or when a
    folder plan searched now holds another file of its region: the plan carries out what those
    files said, and only then (this closes replay: a plan applied again after the file was
    changed to allow its bindings). Paths are where plan read them, relative to the directory it
    ran in; ``search.base`` is where apply looks for them (its own directory)."""
    import hashlib

    from reconciler.desired.yaml_nodes import MAX_FILE_BYTES
    from reconciler.files import FileReadError, read_bounded

    problems: list[str] = []
    unread = False
    for source in the_plan.sources:
        path = _at(search.base, source.path)
        try:
            digest = hashlib.sha256(read_bounded(path, MAX_FILE_BYTES, "file", source.path)).hexdigest()
        except FileReadError as error:
            problems.append(f"{source.path}: {error.problems[0].message}")
            unread = True
            continue
        if digest != source.sha256:
            problems.append(f"{source.path} changed since the plan was made")
    if not problems:
        problems = search.added(the_plan)
    if problems:
        # Only a file not found may mean apply runs elsewhere than plan did.
        elsewhere = "run apply from the directory plan ran in (if this is not it), or " if unread else ""
        raise PlanRefusedError(
            "the plan's desired-state files are not as they were: " + "; ".join(problems),
            hint="plan again from the files as they are now; or, to apply the plan as reviewed "
            f"anyway, {elsewhere}add --ignore-changed-sources",
        )


def _at(base: Path, recorded: str) -> Path:
    """A path as plan recorded it (relative to the directory plan ran in), found from ``base``."""
    path = Path(recorded)
    return path if path.is_absolute() else base / path


class _FolderSearch:
    """What the folders a plan was given hold now, for the source check: the region of every
    desired-state file the plan did not read, each file looked at once for all the plans of one
    apply (a plan set's regions share their folders)."""

    def __init__(self, base: Path, plans: Sequence[Plan]) -> None:
        self.base = base
        # Every file the plans read: their digests are checked, so a search passes over them (a
        # plan set's other regions' sources are theirs, never this region's).
        self._read = {_at(base, source.path).resolve() for p in plans for source in p.sources}
        self._regions: dict[Path, str | Problem | None] = {}

    def added(self, the_plan: Plan) -> list[str]:
        """The files of the plan's region that plan would read now and did not read then (added
        since to a folder it was given), and the files whose region cannot be told. Only
        folders gain files: a plan given only files (or a 3.0 plan, no inputs) searches nothing.
        Files of other regions are other plans' business, whatever else is wrong with them."""
        from reconciler.desired.loader import found_files

        given = [_at(self.base, recorded) for recorded in the_plan.inputs]
        if not any(path.is_dir() for path in given):
            return []
        found, refused = found_files(given)
        # What plan itself would refuse in the search (a link out of the folder, say) may hide
        # a file of this region.
        problems = [f"{_shown(Path(p.file), self.base)}: {p.message}" for p in refused]
        for path, display in found:
            resolved = path.resolve()
            if resolved in self._read:
                continue
            region = self._region(resolved, path, display)
            shown = _shown(path, self.base)
            if isinstance(region, Problem):
                where = f"{shown}:{region.line}:{region.column}" if region.line else shown
                problems.append(f"{where}: {region.message}, so which region it is for is unknown")
            elif region == the_plan.region:
                problems.append(f"{shown} was added since the plan was made")
        return problems

    def _region(self, resolved: Path, path: Path, display: str) -> str | Problem | None:
        from reconciler.desired.loader import region_of_found_file

        if resolved not in self._regions:
            try:
                self._regions[resolved] = region_of_found_file(path, display)
            except InputError as error:
                self._regions[resolved] = error.problems[0]
        return self._regions[resolved]


def _shown(path: Path, base: Path) -> str:
    """``path`` relative to ``base`` when inside it, as plan would have named it."""
    try:
        return str(path.relative_to(base))
    except ValueError:
        return str(path)


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


def _plan_errors(plan: Plan | int) -> PlanRefusedError:
    errors = plan if isinstance(plan, int) else plan.summary.errors
    return PlanRefusedError(
        f"the plan has {plural(errors, 'error')}: "
        "fix the desired-state file or the cloud, then plan again"
    )


def _regions(paths: Sequence[Path], region: str | None = None) -> dict[str, Desired]:
    """Every region the files name, sorted, each with its desired state; only ``region`` when
    given (a long name or a short code, as in the files)."""
    from reconciler.desired.loader import load_paths

    loaded = load_paths(paths)
    by_region = {name: loaded.by_region[name] for name in sorted(loaded.by_region)}
    if region is None:
        return by_region
    wanted = _canonical_region(region)
    if wanted not in by_region:
        raise ConfigError(
            f"--region {region}: the files name no such region",
            hint="the files name: " + (", ".join(by_region) or "no region"),
        )
    return {wanted: by_region[wanted]}


def _canonical_region(name: str) -> str:
    from reconciler import ids

    try:
        return ids.normalize_region(name.strip())
    except KeyError:  # not a region name at all: reported as naming no region of the files
        return name


def _pick_region(plans: tuple[Plan, ...], region: str | None, source: object) -> tuple[Plan, ...]:
    """``plans`` (a saved file's), or only ``region``'s."""
    if region is None:
        return plans
    wanted = _canonical_region(region)
    picked = tuple(p for p in plans if p.region == wanted)
    if not picked:
        raise ConfigError(
            f"--region {region}: the plan {source} has no such region",
            hint="it holds: " + ", ".join(p.region for p in plans),
        )
    return picked


def list_regions(paths: Sequence[Path]) -> list[str]:
    """The regions the files name, sorted (``cvmkeys regions``: a CI matrix)."""
    return list(_regions(paths))


def _in_region(region: str, error: CvmkeysError) -> CvmkeysError:
    """``error`` of one region among several, saying which."""
    if not error.message.startswith(f"{region}: "):
        error.message = f"{region}: {error.message}"
    return error


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
        connection = connect(region, request.connect, on_attempt=audit)
        with connection:
            yield connection
    finally:
        if audit is not None:
            audit.close()
    if audit is not None and audit.failure is not None:
        if audit_failures is None:
            raise ConfigError(audit.failure)
        audit_failures.append(audit.failure)


def _build_plan(
    desired: Desired, connection: Connection, limits: SafetyLimits, inputs: Sequence[Path]
) -> Plan:
    """Check the account (``account:`` in the files), observe, plan; the plan records who it
    ran as and the paths it was given."""
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
    return dataclasses.replace(the_plan, caller=caller, inputs=tuple(str(path) for path in inputs))


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
    region: str | None = None  # --region: only this one of the regions the files name


@dataclass(frozen=True)
class PlanResult:
    """One plan per region, sorted by region (one for a single-region run)."""

    plans: tuple[Plan, ...]
    saved_to: Path | None
    detailed_exitcode: bool

    @property
    def plan(self) -> Plan:
        """The plan of a single-region run (the first region's otherwise)."""
        return self.plans[0]

    @property
    def refusal(self) -> CvmkeysError | None:
        """The error to report after the plan is shown (a plan with errors is saved, but apply
        refuses it)."""
        errors = sum(p.summary.errors for p in self.plans)
        if not errors:
            return None
        if self.saved_to is None:
            return _plan_errors(errors)
        return PlanRefusedError(
            f"the plan has {plural(errors, 'error')}: saved to {self.saved_to} "
            "as a record, but apply refuses it",
            hint="fix the desired-state file or the cloud, then plan again",
        )

    @property
    def exit_code(self) -> ExitCode:
        if any(p.has_errors for p in self.plans):
            return ExitCode.ERROR
        # Protected bindings are the file's own decision and unchangeable ones (Windows) no API
        # can act on: neither is drift anyone can fix, so neither keeps the alert at 2.
        drift = any(p.actionable_changes for p in self.plans)
        return ExitCode.CHANGES if self.detailed_exitcode and drift else ExitCode.OK


def plan(request: PlanRequest) -> PlanResult:
    """Observe, diff and plan every region the files name (each on its own connection, the
    regions concurrently); save the plan (a plan set for several regions) when asked."""
    from reconciler.core.plan_set import dump_plans

    by_region = _regions(request.paths, request.region)

    def one(desired: Desired) -> Plan:
        with _connected(desired.region, request.cloud) as connection:
            return _build_plan(desired, connection, request.limits, request.paths)

    try:
        plans = _each_region(by_region, one)
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
        write_atomically(request.out, dump_plans(plans))
    return PlanResult(plans, request.out, request.detailed_exitcode)


def _each_region(by_region: Mapping[str, Desired], work: Callable[[Desired], Plan]) -> tuple[Plan, ...]:
    """``work`` for every region, a thread each when there are several (each region its own
    connection, so its own rate limits), in region order. The first region's error (in region
    order), naming its region, is raised after every thread ended."""
    if len(by_region) == 1:
        return (work(next(iter(by_region.values()))),)
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=len(by_region), thread_name_prefix="region") as pool:
        futures = {name: pool.submit(work, desired) for name, desired in by_region.items()}
    plans: list[Plan] = []
    for name, future in futures.items():
        error = future.exception()
        if isinstance(error, CvmkeysError):
            raise _in_region(name, error)
        plans.append(future.result())  # any other exception: a bug, raised as it is
    return tuple(plans)


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
    region: str | None = None  # --region: only this region of the plan set (or of the files)


@dataclass(frozen=True)
class ApplyOutcome:
    plan: Plan
    result: ApplyResult
    problems: tuple[str, ...] = ()  # reported with the result: a failing audit log

    @property
    def already_applied(self) -> bool:
        """A saved plan whose every ready unbind was already done (``ApplyResult.already_applied``)."""
        return self.result.already_applied

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


# Worst first: the exit code of several regions is the worst of theirs.
_SEVERITY = (ExitCode.OK, ExitCode.BLOCKED, ExitCode.ERROR, ExitCode.INTERRUPTED)


@dataclass(frozen=True)
class ApplySetOutcome:
    """Several regions' outcomes, sorted by region; one exit code, the worst of theirs."""

    outcomes: tuple[ApplyOutcome, ...]

    @property
    def exit_code(self) -> ExitCode:
        return max((o.exit_code for o in self.outcomes), key=_SEVERITY.index, default=ExitCode.OK)


def apply(
    request: ApplyRequest, hooks: ApplyHooks, stop: threading.Event
) -> ApplyOutcome | ApplySetOutcome:
    """Carry out a saved plan as reviewed, or a fresh plan after confirmation; every region of
    it, in parallel, when it has several. ``stop`` set (Ctrl-C) starts no new call."""
    if is_plan_file(request.paths):
        return apply_saved(request, hooks, stop)
    return apply_fresh(request, hooks, stop)


@dataclass
class _SavedRun:
    """A saved plan checked on its connection and ready to run (``_prepare_saved``)."""

    plan: Plan
    executor: Executor
    fresh: Freshness


def _prepare_saved(
    connection: Connection, the_plan: Plan, request: ApplyRequest, hooks: ApplyHooks, stop: threading.Event
) -> _SavedRun:
    """Everything a saved plan is checked for on its connection before any unbind: its API,
    its IDs, its account, that it is not stale, its safety limits."""
    from reconciler.connect import check_account
    from reconciler.execute.executor import check_sendable

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
    if not fresh.finished:
        stops = the_plan.stops
        verdict = recheck_safety(
            the_plan.safety,
            request.limits,
            stops=stops.stop_count if stops else 0,
            max_stops=stops.max_stops if stops else None,
        )
        _check_safe(verdict, request.force)
    return _SavedRun(the_plan, executor, fresh)


def _run_saved(run: _SavedRun, hooks: ApplyHooks, problems: list[str]) -> ApplyOutcome:
    if run.fresh.finished:
        # Nothing left to unbind: the result is made of what check_fresh read. With a stop
        # schedule run still looks at its instances: one a killed apply of this plan stopped
        # may still be down, and run starts it (execute.rolling), whatever the limits say.
        result = run.executor.run() if run.plan.stops is None else _run(run.executor, run.plan, hooks)
    else:
        result = _run(run.executor, run.plan, hooks)
    if run.fresh.finished and run.fresh.done:
        result = dataclasses.replace(result, already_applied=True)
    return ApplyOutcome(run.plan, result, tuple(problems))


def apply_saved(
    request: ApplyRequest, hooks: ApplyHooks, stop: threading.Event
) -> ApplyOutcome | ApplySetOutcome:
    """A saved plan: where it was made, if it is still fresh, without a question. A plan set:
    every region checked (files, age, then on its connection: account, staleness, limits)
    before any region unbinds anything; one region refused refuses the whole apply."""
    from reconciler.connect import options_for_plan

    plans = read_plans(request.paths[0], request.region)
    several = len(plans) > 1
    search = _FolderSearch(request.base, plans)
    for the_plan in plans:
        try:
            if the_plan.has_errors:
                raise _plan_errors(the_plan)
            if request.max_age is not None:
                check_age(the_plan, request.max_age)
            if not request.ignore_changed_sources:
                check_sources(the_plan, search)
        except CvmkeysError as error:
            raise _in_region(the_plan.region, error) if several else error from None
    if not several:
        (the_plan,) = plans
        connect = options_for_plan(the_plan, request.cloud.connect, request.paths[0])
        cloud = dataclasses.replace(request.cloud, connect=connect)
        failures: list[str] = []
        with _connected(the_plan.region, cloud, failures) as connection:
            run = _prepare_saved(connection, the_plan, request, hooks, stop)
            outcome = _run_saved(run, hooks, [])
        return dataclasses.replace(outcome, problems=tuple(failures))

    def prepare(the_plan: Plan, connection: Connection, region_hooks: ApplyHooks) -> _SavedRun:
        return _prepare_saved(connection, the_plan, request, region_hooks, stop)

    def go_on(runs: Sequence[_SavedRun]) -> None:
        pass  # everything was checked in prepare: no question for a saved plan

    def carry_out(run: _SavedRun, region_hooks: ApplyHooks, problems: list[str]) -> ApplyOutcome:
        return _run_saved(run, region_hooks, problems)

    clouds = {
        p.region: dataclasses.replace(
            request.cloud, connect=options_for_plan(p, request.cloud.connect, request.paths[0])
        )
        for p in plans
    }
    return _across_regions(plans, clouds, hooks, prepare, go_on, carry_out)


def apply_fresh(
    request: ApplyRequest, hooks: ApplyHooks, stop: threading.Event
) -> ApplyOutcome | ApplySetOutcome:
    """Plan now (limits from the command line already in its verdict), show it, confirm, apply.
    Several regions: planned in parallel, shown, one confirmation for all, applied in parallel."""
    by_region = _regions(request.paths, request.region)
    if len(by_region) == 1:
        (desired,) = by_region.values()
        failures: list[str] = []
        with _connected(desired.region, request.cloud, failures) as connection:
            the_plan = _build_plan(desired, connection, request.limits, request.paths)
            hooks.planned(the_plan)
            if the_plan.has_errors:
                raise _plan_errors(the_plan)
            _check_safe(the_plan.safety, request.force)
            if the_plan.ready_changes and not request.auto_approve:
                hooks.confirm(the_plan)
            executor = _executor(connection, the_plan, request, hooks, stop)
            result = _run(executor, the_plan, hooks)
        return ApplyOutcome(the_plan, result, problems=tuple(failures))

    def prepare(
        desired: Desired, connection: Connection, region_hooks: ApplyHooks
    ) -> tuple[Plan, Connection]:
        return _build_plan(desired, connection, request.limits, request.paths), connection

    def go_on(planned: Sequence[tuple[Plan, Connection]]) -> None:
        plans = [p for p, _ in planned]
        for the_plan in plans:
            hooks.planned(the_plan)
        for the_plan in plans:
            try:
                if the_plan.has_errors:
                    raise _plan_errors(the_plan)
                _check_safe(the_plan.safety, request.force)
            except CvmkeysError as error:
                raise _in_region(the_plan.region, error) from None
        ready = [p for p in plans if p.ready_changes]
        if ready and not request.auto_approve:
            hooks.confirm(ready[0])  # one question for every region shown above

    def carry_out(
        planned: tuple[Plan, Connection], region_hooks: ApplyHooks, problems: list[str]
    ) -> ApplyOutcome:
        the_plan, connection = planned
        executor = _executor(connection, the_plan, request, region_hooks, stop)
        return ApplyOutcome(the_plan, _run(executor, the_plan, region_hooks), problems=tuple(problems))

    clouds = dict.fromkeys(by_region, request.cloud)
    return _across_regions(list(by_region.values()), clouds, hooks, prepare, go_on, carry_out)


class _RegionHooks:
    """One region's hooks among several running at once: its progress lines name the region
    and reach the view one at a time; no progress bar (one bar cannot follow several runs)."""

    def __init__(self, hooks: ApplyHooks, region: str, lock: threading.Lock) -> None:
        self._hooks = hooks
        self._region = region
        self._lock = lock

    def planned(self, plan: Plan) -> None:
        pass  # the regions' plans are shown together, by the thread that asks the question

    def confirm(self, plan: Plan) -> None:
        pass

    def started(self, plan: Plan) -> None:
        pass

    def event(self, event: ExecEvent) -> None:
        with self._lock:
            self._hooks.event(dataclasses.replace(event, message=f"{self._region}: {event.message}"))

    def finished(self) -> None:
        pass


class _HasRegion(Protocol):
    @property
    def region(self) -> str: ...


_Item = TypeVar("_Item", bound=_HasRegion)  # what a region starts from: its plan, or its files
_Prepared = TypeVar("_Prepared")  # what it has once prepared


@dataclass
class _Slot:
    prepared: object = None
    outcome: ApplyOutcome | None = None
    error: BaseException | None = None
    problems: list[str] = field(default_factory=list)


def _across_regions(
    items: Sequence[_Item],
    clouds: Mapping[str, CloudRequest],
    hooks: ApplyHooks,
    prepare: Callable[[_Item, Connection, ApplyHooks], _Prepared],
    go_on: Callable[[Sequence[_Prepared]], None],
    carry_out: Callable[[_Prepared, ApplyHooks, list[str]], ApplyOutcome],
) -> ApplySetOutcome:
    """Apply several regions, a thread (and a connection) each: every region is prepared
    (``prepare``: planned, or checked), then, once all are, ``go_on`` decides on this thread
    (the question, the safety verdicts); only then does any region ``carry_out`` its unbinds.
    A region that fails to prepare, or a ``go_on`` that raises, stops every region before any
    unbind; that error (the first region's, in region order) is raised."""
    regions = [item.region for item in items]
    slots = [_Slot() for _ in items]
    prepared = threading.Semaphore(0)
    decided = threading.Event()
    proceed = threading.Event()
    lock = threading.Lock()

    def worker(index: int) -> None:
        slot, region = slots[index], regions[index]
        region_hooks = _RegionHooks(hooks, region, lock)
        reported = False
        try:
            with _connected(region, clouds[region], slot.problems) as connection:
                slot.prepared = prepare(items[index], connection, region_hooks)
                prepared.release()
                reported = True
                decided.wait()
                if proceed.is_set():
                    slot.outcome = carry_out(slot.prepared, region_hooks, slot.problems)
        except BaseException as error:  # reported by the calling thread, naming the region
            slot.error = error
        finally:
            if not reported:
                prepared.release()

    threads = [
        threading.Thread(target=worker, args=(i,), name=f"region-{region}", daemon=True)
        for i, region in enumerate(regions)
    ]
    for thread in threads:
        thread.start()
    try:
        for _ in threads:
            prepared.acquire()
        _raise_first(regions, slots)
        go_on([cast(_Prepared, slot.prepared) for slot in slots])
        proceed.set()
    finally:
        decided.set()  # without proceed: every region closes its connection, unbinding nothing
        for thread in threads:
            thread.join()
    _raise_first(regions, slots)
    outcomes = []
    for slot in slots:
        assert slot.outcome is not None  # every region ran: no error was recorded
        outcomes.append(dataclasses.replace(slot.outcome, problems=tuple(slot.problems)))
    return ApplySetOutcome(tuple(outcomes))


def _raise_first(regions: Sequence[str], slots: Sequence[_Slot]) -> None:
    for region, slot in zip(regions, slots, strict=True):
        if isinstance(slot.error, CvmkeysError):
            raise _in_region(region, slot.error)
        if slot.error is not None:
            raise slot.error


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
