"""The data model every layer shares: frozen dataclasses, no behaviour beyond small properties.

Loading produces ``Desired``; observing produces ``Observed``; the pure core turns both into a
``Plan``; executing a plan produces an ``ApplyResult``. Renderers read these and nothing else.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import Enum

# The instance status table of the CVM API 2.0 lives in ``api2_states`` (the emulator shares
# it); re-exported here for the 2.0 client. Everything else uses ``InstanceState``.
from reconciler.api2_states import INSTANCE_STATUS_NAMES as INSTANCE_STATUS_NAMES
from reconciler.api2_states import STATUS_KEY_ISSUING as STATUS_KEY_ISSUING
from reconciler.api2_states import STATUS_RUNNING as STATUS_RUNNING
from reconciler.api2_states import STATUS_SHUT_DOWN as STATUS_SHUT_DOWN
from reconciler.api2_states import STATUS_SHUTTING_DOWN as STATUS_SHUTTING_DOWN
from reconciler.api2_states import STATUS_STARTING as STATUS_STARTING
from reconciler.api2_states import status_name as status_name

# 2.0: ``api``, instance states by name, batches with ``key_ids``. 3.0: ``premises`` (what each
# instance the plan unbinds from looked like: its keys and state), checked by apply instead of the
# fingerprint, so a plan is resumable and never leaves an instance keyless unwarned.
PLAN_FORMAT_VERSION = "3.1"


class ApiVersion(str, Enum):
    """Which CVM API a client speaks and a plan was made for."""

    V2 = "2.0"  # the seed's API: cvm.api.qcloud.com/v2/index.php, UnBindInstanceKey
    V3 = "3.0"  # cvm.tencentcloudapi.com, Version 2017-03-12, DisassociateInstancesKeyPairs


class InstanceState(str, Enum):
    """An instance's state, API-neutral; both APIs map into it (the API's own word is kept)."""

    RUNNING = "running"  # 2.0 status 2,  3.0 RUNNING
    STOPPED = "stopped"  # 2.0 status 4,  3.0 STOPPED        (the only state an unbind accepts)
    STARTING = "starting"  # 2.0 status 8,  3.0 STARTING
    STOPPING = "stopping"  # 2.0 status 9,  3.0 STOPPING
    BUSY = "busy"  # 2.0 status 20 (key issuing), 3.0 LatestOperationState OPERATING
    OTHER = "other"  # anything else (PENDING, REBOOTING, SHUTDOWN, 2.0 maintenance, ...)


# The API limits, in one place: both APIs take at most 100 IDs a call and 100 items a page.
MAX_IDS_PER_CALL = 100
PAGE_SIZE = 100
# Requests a second per action, as API 3.0 documents them (cvm-api-3.0.md section 6). API 2.0
# publishes no figures; its actions take those of their 3.0 counterparts (UnBindInstanceKey ~
# DisassociateInstancesKeyPairs, BindInstanceKey ~ AssociateInstancesKeyPairs; the describe and
# stop/start actions have the same names). The one table: the clients' defaults
# (``cloud.ratelimit``, ``cloud.api3``) and the served emulator's (``emulator serve``).
DOCUMENTED_RATE_LIMITS: Mapping[str, float] = {
    "DescribeInstances": 40.0,
    "DescribeInstancesStatus": 40.0,
    "DescribeKeyPairs": 10.0,
    "DisassociateInstancesKeyPairs": 10.0,
    "AssociateInstancesKeyPairs": 10.0,
    "StopInstances": 10.0,
    "StartInstances": 10.0,
    "UnBindInstanceKey": 10.0,
    "BindInstanceKey": 10.0,
}
DEFAULT_RATE_LIMIT = 10.0  # an action the table does not name (the key-pair figure)

# --------------------------------------------------------------------------- live state


@dataclass(frozen=True, slots=True)
class KeyPair:
    """A key pair as DescribeKeyPairs reports it."""

    key_id: str
    name: str
    bound_instance_ids: tuple[str, ...] = ()


Binding = tuple[str, str]  # (key_id, instance_id): the one spelling of a binding


def is_windows_os(os_name: str) -> bool:
    """The one "is Windows" rule: unbinding works on Linux instances only."""
    return "windows" in os_name.lower()


@dataclass(frozen=True, slots=True)
class Instance:
    """An instance as DescribeInstances reports it (only the fields this tool uses)."""

    instance_id: str
    name: str
    state: InstanceState
    api_state: str  # the API's own word for display: "4 (shut down)" / "STOPPED"
    os: str
    # 3.0 only (None on 2.0): the latest operation, for waiting on an asynchronous call
    latest_operation: str | None = None
    latest_operation_state: str | None = None  # SUCCESS | OPERATING | FAILED
    latest_operation_request_id: str | None = None
    latest_operation_error: str | None = None

    @property
    def is_windows(self) -> bool:
        return is_windows_os(self.os)


@dataclass(frozen=True, slots=True)
class Observed:
    """What the cloud said: every key pair of the region, and the instances that were asked for.

    ``instances`` holds only instances that exist; an ID that was asked for and is absent here
    does not exist (or is not this account's).
    """

    region: str
    keys: Mapping[str, KeyPair]
    instances: Mapping[str, Instance]


# --------------------------------------------------------------------------- desired state


class Scope(str, Enum):
    """What a desired-state file owns."""

    KEYS = "keys"  # every binding of a declared key
    INSTANCES = "instances"  # every binding on a declared instance
    ACCOUNT = "account"  # every binding in the region


@dataclass(frozen=True, slots=True)
class Location:
    """A place in an input file, 1-based."""

    file: str
    line: int
    column: int

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.column}"


@dataclass(frozen=True, slots=True)
class DesiredKey:
    """One declared key: the only instances it may be bound to."""

    key_id: str
    instances: frozenset[str]
    name: str | None = None
    location: Location | None = None


@dataclass(frozen=True, slots=True)
class SafetyLimits:
    """Limits on how much one apply may unbind. ``None`` means the default or no limit."""

    max_unbinds: int | None = None
    max_unbind_percent: float | None = None
    max_stops: int | None = None  # cap on instances one apply may stop (the disruption block)


DEFAULT_MAX_UNBIND_PERCENT = 30.0
PERCENT_CHECK_MIN_OWNED = 10


class StopType(str, Enum):
    """How cvmkeys stops a running instance to unbind its keys (docs/disruption.md)."""

    SOFT = "soft"  # an orderly shutdown only
    SOFT_FIRST = "soft_first"  # orderly, then forced if it has not stopped in time
    HARD = "hard"  # forced at once (a power-off)


DEFAULT_MAX_STOPPED = 1
DEFAULT_STOP_TIMEOUT = 300  # seconds


@dataclass(frozen=True, slots=True)
class Disruption:
    """The ``disruption`` block: whether and how cvmkeys may stop running instances to unbind
    keys from them, and start them again. Without the block (``Desired.disruption`` is None),
    or with ``stop_running: false``, nothing is ever stopped."""

    stop_running: bool
    max_stopped: int = DEFAULT_MAX_STOPPED  # instances down because of cvmkeys at once
    max_stopped_percent: float | None = None  # of the running instances in scope; the smaller wins
    stop_type: StopType = StopType.SOFT_FIRST
    stop_timeout: int = DEFAULT_STOP_TIMEOUT  # seconds to wait for a stop before giving up on it


@dataclass(frozen=True, slots=True)
class SourceFile:
    """A desired-state file that went into a plan, with the SHA-256 of its bytes."""

    path: str
    sha256: str


@dataclass(frozen=True, slots=True)
class Desired:
    """The merged desired state of one region, from one or more files."""

    region: str  # canonical long name
    scope: Scope
    keys: Mapping[str, DesiredKey]
    protected_keys: frozenset[str] = frozenset()
    protected_instances: frozenset[str] = frozenset()
    # Instances owned with no key allowed (the optional top-level ``instances:`` list).
    extra_instances: frozenset[str] = frozenset()
    safety: SafetyLimits = SafetyLimits()
    sources: tuple[SourceFile, ...] = ()
    # Where each declared instance first appears, for findings that point at the file.
    instance_locations: Mapping[str, Location] = field(default_factory=dict)
    # Declared instances whose absence is only a warning (every file naming them says
    # ``missing_instances: warn``); any other declared instance that does not exist is an error.
    missing_instances_warn: frozenset[str] = frozenset()
    account: str | None = None  # the account (UIN) the files are for; plan and apply refuse others
    disruption: Disruption | None = None  # None: no block, running instances stay blocked

    @property
    def declared_instances(self) -> frozenset[str]:
        """Every instance named by the file: under any key, or in ``instances:``."""
        declared: set[str] = set(self.extra_instances)
        for key in self.keys.values():
            declared.update(key.instances)
        return frozenset(declared)


# --------------------------------------------------------------------------- the plan


class ChangeStatus(str, Enum):
    READY = "ready"  # will be attempted by apply
    BLOCKED = "blocked"  # cannot happen now; ``reason`` says why
    PROTECTED = "protected"  # in scope but protected: never attempted
    # No API can make this change (a Windows instance): shown with the reason, never attempted,
    # and not an alert (not counted by --detailed-exitcode 2 or apply's exit 3).
    UNCHANGEABLE = "unchangeable"


@dataclass(frozen=True, slots=True)
class Change:
    """One binding the file does not allow, and what apply will do about it."""

    key_id: str
    instance_id: str
    status: ChangeStatus
    reason: str
    warnings: tuple[str, ...] = ()
    key_name: str | None = None
    instance_name: str | None = None
    # The API's word for the instance's state (``Instance.api_state``); None: not observed
    # (not found, or protected).
    instance_state: str | None = None
    action: str = "unbind"


@dataclass(frozen=True, slots=True)
class Batch:
    """One unbind call: 2.0 exactly one key; 3.0 up to 100 keys x up to 100 instances, every
    pair a planned unbind."""

    wave: int
    key_ids: tuple[str, ...]
    instance_ids: tuple[str, ...]

    @property
    def bindings(self) -> tuple[Binding, ...]:
        """Every (key, instance) pair this call unbinds."""
        return tuple((k, i) for k in self.key_ids for i in self.instance_ids)


class Severity(str, Enum):
    ERROR = "error"  # the plan cannot be applied
    WARNING = "warning"
    INFO = "info"


@dataclass(frozen=True, slots=True)
class Finding:
    """Something the plan found that is not a change (a missing key, a name mismatch, ...)."""

    severity: Severity
    code: str  # stable machine name, e.g. "key-not-found"
    message: str
    key_id: str | None = None
    instance_id: str | None = None
    location: Location | None = None


@dataclass(frozen=True, slots=True)
class SafetyVerdict:
    """Whether the plan is within its safety limits, with the numbers that decided it."""

    safe: bool
    unbinds: int
    owned_bindings: int
    max_unbinds: int | None
    max_unbind_percent: float | None
    percent_checked: bool
    violations: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Summary:
    to_unbind: int
    blocked: int
    protected: int
    missing: int
    owned_bindings: int
    errors: int
    warnings: int
    waves: int
    calls: int
    unchangeable: int = 0  # format 3.1 (3.0 plans have none: read as 0)


@dataclass(frozen=True, slots=True)
class Fingerprint:
    """SHA-256 over the live state the plan's changes touch (bindings of ``key_ids``; status and
    existence of ``instance_ids``). Apply re-observes exactly these and compares."""

    digest: str
    key_ids: tuple[str, ...]
    instance_ids: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class CallerIdentity:
    """Who the credentials are, as STS GetCallerIdentity says (the plan records account and ARN)."""

    account_id: str
    arn: str
    user_id: str = ""
    principal_id: str = ""
    type: str = ""


@dataclass(frozen=True, slots=True)
class Premise:
    """What an instance the plan unbinds from looked like when the plan was made: its state and
    every key bound to it (from all key pairs of the region). Apply re-reads both: the plan's
    last-key warnings were computed from ``key_ids``, so an instance the plan would now leave
    keyless without having said so makes the plan stale (``execute.freshness``)."""

    instance_id: str
    instance_state: str  # the API's word (``Instance.api_state``)
    key_ids: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Plan:
    """Everything a reviewer approves and apply carries out."""

    region: str
    scope: Scope
    endpoint: str
    api: ApiVersion
    changes: tuple[Change, ...]
    batches: tuple[Batch, ...]
    findings: tuple[Finding, ...]
    summary: Summary
    safety: SafetyVerdict
    sources: tuple[SourceFile, ...]
    fingerprint: Fingerprint
    observed_digest: str  # SHA-256 over all observed state the plan was computed from
    created_at: str = ""  # ISO 8601, set by the caller (the core has no clock)
    format_version: str = PLAN_FORMAT_VERSION
    caller: CallerIdentity | None = None  # who it ran as (STS), when known
    premises: tuple[Premise, ...] = ()  # one per instance with a ready change, sorted by ID
    # The stop schedule (docs/disruption.md); None without a ``disruption`` block. Every
    # instance in it was running when the plan was made: the plan is the record of prior state.
    stops: StopSchedule | None = None
    # The files and folders plan was given, as typed (3.1): apply searches the folders again, so
    # a desired-state file added there since the plan is noticed like a changed one.
    inputs: tuple[str, ...] = ()

    @property
    def has_errors(self) -> bool:
        return any(f.severity is Severity.ERROR for f in self.findings)

    @property
    def ready_changes(self) -> tuple[Change, ...]:
        return tuple(c for c in self.changes if c.status is ChangeStatus.READY)

    @property
    def actionable_changes(self) -> tuple[Change, ...]:
        """Changes someone can act on: ready, or blocked for now. What ``--detailed-exitcode``
        2 means; protected and unchangeable changes are not counted."""
        return tuple(c for c in self.changes if c.status in (ChangeStatus.READY, ChangeStatus.BLOCKED))

    @property
    def unchangeable_changes(self) -> tuple[Change, ...]:
        return tuple(c for c in self.changes if c.status is ChangeStatus.UNCHANGEABLE)


# --------------------------------------------------------------------------- apply results


class Outcome(str, Enum):
    DONE = "done"
    FAILED = "failed"
    BLOCKED = "blocked"
    PROTECTED = "protected"
    UNCHANGEABLE = "unchangeable"  # no API can make the change: never attempted, not an alert
    NOT_ATTEMPTED = "not-attempted"  # interrupted before its call was sent


@dataclass(frozen=True, slots=True)
class BindingResult:
    key_id: str
    instance_id: str
    outcome: Outcome
    reason: str = ""
    api_code: int | str | None = None  # 2.0 integer codes, 3.0 strings
    attempts: int = 0


@dataclass(frozen=True, slots=True)
class ApplyResult:
    region: str
    results: tuple[BindingResult, ...]
    calls: Mapping[str, int]  # API calls made, by action
    interrupted: bool = False
    stopped_reason: str = ""  # why apply stopped before the end (a read that failed for good)
    stops: StopsResult | None = None  # what apply did to the scheduled instances (disruption)
    # A saved plan found already carried out (an earlier apply did every ready unbind): nothing
    # was sent, and its blocked unbinds were reported by the apply that did the work.
    already_applied: bool = False

    def count(self, outcome: Outcome) -> int:
        return sum(1 for r in self.results if r.outcome is outcome)


# --------------------------------------------------------------------------- the stop schedule
# (docs/disruption.md). Built by ``core.disruption``; here because ``Plan`` carries it.


@dataclass(frozen=True, slots=True)
class PhaseDurations:
    """Assumed seconds each phase takes for one instance (docs/disruption.md, "Durations").

    No API documents these; they are what the estimate is made of, so a plan states them.
    ``unbind`` is one unbind call until the instance is no longer busy: Terraform's provider
    waits 10 s before its first poll, and a 2.0 instance stays in status 20 for seconds.
    """

    soft_stop: float = 60.0  # an orderly shutdown of a Linux guest
    hard_stop: float = 15.0  # a forced power-off
    unbind: float = 15.0  # one unbind call, until the instance is no longer busy
    start: float = 60.0  # from the start call until the instance is running again

    def stop(self, stop_type: StopType) -> float:
        """The expected time to stop an instance the way ``stop_type`` says."""
        return self.hard_stop if stop_type is StopType.HARD else self.soft_stop

    def worst_stop(self, stop_type: StopType, stop_timeout: int) -> float:
        """The longest cvmkeys waits for an instance to stop before it gives up on it (soft,
        hard) or forces the stop (soft_first, which then takes a forced stop's time more)."""
        if stop_type is StopType.SOFT_FIRST:
            return max(stop_timeout, self.soft_stop) + self.hard_stop
        return max(stop_timeout, self.stop(stop_type))


DEFAULT_DURATIONS = PhaseDurations()


@dataclass(frozen=True, slots=True)
class ScheduledStop:
    """One running instance that goes down: stop, unbind ``key_ids``, start.

    Every instance here was running when the plan was made (that is why it is here), so a plan
    that records the schedule records which instances cvmkeys must leave running.
    """

    instance_id: str
    instance_name: str
    key_ids: tuple[str, ...]  # the planned unbinds, sorted
    round: int  # 0-based
    unbind_calls: int
    downtime: float  # expected seconds down: stop + unbind calls + start
    worst_downtime: float  # with the longest stop wait (stop_timeout, and the forced stop)
    removes_last_key: bool  # every key the instance has is removed: the plan must warn
    prior_state: str = "running"  # the API's word for its state when planned (always running)


@dataclass(frozen=True, slots=True)
class StopRound:
    """At most ``budget`` instances down together; StopInstances and StartInstances take 100
    IDs a call, so a round of more than 100 needs several of each."""

    index: int
    instance_ids: tuple[str, ...]
    stop_calls: int
    start_calls: int
    duration: float  # the longest expected downtime in the round
    worst_duration: float


@dataclass(frozen=True, slots=True)
class StopSchedule:
    """Which instances go down, in which rounds, and for how long. Empty (``enabled`` False)
    without a ``disruption`` block or with ``stop_running: false``."""

    enabled: bool
    stop_type: StopType | None = None
    stop_timeout: int = 0
    budget: int = 0  # instances down because of cvmkeys at once
    budget_reason: str = ""  # which limit set the budget, with its numbers
    running_in_scope: int = 0  # the base of max_stopped_percent
    stops: tuple[ScheduledStop, ...] = ()  # in round order
    rounds: tuple[StopRound, ...] = ()
    durations: PhaseDurations = DEFAULT_DURATIONS
    total_downtime: float = 0.0  # instance-seconds: the sum of every instance's expected downtime
    wall_time: float = 0.0  # the sum of the rounds' durations: an upper bound for a rolling apply
    worst_wall_time: float = 0.0
    # (stops / budget) x mean downtime, at least the longest downtime: what a rolling apply approaches
    rolling_estimate: float = 0.0
    max_stops: int | None = None  # the safety limit the plan was checked against (None: none)

    @property
    def stop_count(self) -> int:
        """How many instances go down (what ``max_stops`` limits)."""
        return len(self.stops)

    @property
    def instance_ids(self) -> tuple[str, ...]:
        return tuple(stop.instance_id for stop in self.stops)

    @property
    def stop_calls(self) -> int:
        return sum(r.stop_calls for r in self.rounds)

    @property
    def start_calls(self) -> int:
        return sum(r.start_calls for r in self.rounds)


@dataclass(frozen=True, slots=True)
class InstanceStopResult:
    """What apply did to one scheduled instance, and the state it left it in."""

    instance_id: str
    instance_name: str
    stopped: bool  # cvmkeys stopped it (this apply or, found down, an earlier one of this plan)
    running_again: bool  # seen running at the end
    final_state: str  # the API's word, as last observed ("" when never observed)
    note: str = ""  # why it is not running again, or what was unusual


@dataclass(frozen=True, slots=True)
class StopsResult:
    """The scheduled instances after apply. ``still_down`` comes first in every report: an
    instance cvmkeys stopped and could not start again."""

    instances: tuple[InstanceStopResult, ...]
    max_down_at_once: int  # the most instances down because of this apply at any moment

    @property
    def still_down(self) -> tuple[InstanceStopResult, ...]:
        return tuple(i for i in self.instances if i.stopped and not i.running_again)
