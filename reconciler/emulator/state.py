"""The emulator's backend: the fleet (regions, instances, keys, bindings) and the cloud's rules.

Called by ``emulator/app.py`` (one method per API action) and by tests, which read it back
(``bindings``, ``instance_status``, ``mutations``) and change it behind the API's back
(``set_instance_status``, ``set_binding``). It knows nothing of HTTP or signatures.

Two views of the fleet:

* the *settled* view, what the fleet will look like once every accepted operation has
  finished. It is what ``bindings()`` returns;
* the *observed* view, what the API reports now. An accepted bind/unbind puts each instance in
  status 20 (key issuing) for ``op_seconds``, during which the old bindings are still
  reported; stop shows 9 and start 8 for ``op_seconds``. These transient states end at a
  deadline on the injectable ``clock``, so a test steps a fake clock instead of sleeping.
  With ``op_seconds=0`` (the default) both views are the same.

Persistence (``from_file``): the fleet file is a fixture, never written. The live state is an
SQLite database (``emulator/store.py``) shared by every process on the same fixture; this
object keeps it in memory and, under one write transaction per mutating call, first applies
what other processes changed since, then the call, then writes exactly what the call changed.
The live state is everything a call changes: statuses, bindings, transient phases (ForceStop's
three), 3.0 latest operations with their lag, STOP_CHARGING, and STS temporary credentials.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import logging
import os
import re
import secrets
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from reconciler.api2_states import (
    STATUS_KEY_ISSUING,
    STATUS_RUNNING,
    STATUS_SHUT_DOWN,
    STATUS_SHUTTING_DOWN,
    STATUS_STARTING,
    status_name,
)
from reconciler.emulator import errors
from reconciler.emulator.errors import ApiError
from reconciler.emulator.fleetfile import check_data, fixture_sha256, load_fleet
from reconciler.emulator.store import CredentialRow, Phase, Snapshot, Store, default_state_path
from reconciler.errors import ConfigError, InputError, Problem
from reconciler.ids import KNOWN_REGIONS, canonical_region

_log = logging.getLogger(__name__)

Clock = Callable[[], float]

# API error codes the backend answers with (the common codes of the CVM API 2.0).
CODE_INVALID_PARAMETER = errors.InvalidParameter.code
CODE_NOT_FOUND = errors.ResourceNotFound.code
CODE_OPERATION_FAILED = errors.OperationFailed.code
CODE_PARTIAL_SUCCESS = errors.PartialSuccess.code

DEFAULT_CREATED = "2020-01-01 00:00:00"
BEIJING_OFFSET = 8 * 3600  # the API reports times in China Standard Time


# Every API error is an ``errors.ApiError``; the old name stays for the wire layers.
ApiFault = ApiError

# API-neutral instance states, what the rules speak; each API maps them to its own word.
RUNNING, STOPPED, STARTING, STOPPING, BUSY = "running", "stopped", "starting", "stopping", "busy"
# 2.0 status -> 3.0 InstanceState (an inference, no official table: cvm-api-3.0.md 4.7). Statuses
# with no 3.0 word (10-20: maintenance and key issuing) are an operation in progress: 3.0 shows
# them as BUSY (LatestOperationState OPERATING) on top of the word below.
API3_STATES: Mapping[int, str] = {
    1: "LAUNCH_FAILED",
    2: "RUNNING",
    3: "PENDING",
    4: "STOPPED",
    5: "SHUTDOWN",
    6: "TERMINATING",
    7: "REBOOTING",
    8: "STARTING",
    9: "STOPPING",
}
API3_VERSION = "2017-03-12"
DEFAULT_ACCOUNT_ID = "100000000001"


def neutral_state(status: int) -> str:
    """The API-neutral state of a 2.0 status."""
    return {2: RUNNING, 4: STOPPED, 8: STARTING, 9: STOPPING}.get(status, BUSY if status >= 10 else "other")


def api3_state(status: int) -> str:
    """The 3.0 ``InstanceState`` word of a 2.0 status (20, key issuing, is a STOPPED instance
    with an operation running; other maintenance states a RUNNING one)."""
    if status in API3_STATES:
        return API3_STATES[status]
    return "STOPPED" if status == STATUS_KEY_ISSUING else "RUNNING"


@dataclass(frozen=True)
class Mutation:
    """One accepted mutating API call, as the log records it."""

    time: float
    region: str  # canonical long name
    action: str
    key_id: str | None  # the key of a one-key call (all of 2.0's); None for several
    instance_ids: tuple[str, ...]
    key_ids: tuple[str, ...] = ()  # every key of the call (3.0 takes up to 100)
    request_id: str | None = None


@dataclass(frozen=True)
class Credential:
    """A SecretId/SecretKey pair the emulator accepts. The key never shows in a repr."""

    secret_id: str
    secret_key: str = field(repr=False)


@dataclass(frozen=True)
class InstanceView:
    """An instance as the API reports it now."""

    instance_id: str
    name: str
    os: str
    status: int
    region: str
    zone: str
    lan_ip: str
    wan_ips: tuple[str, ...]
    created: str
    status_time: str
    key_ids: tuple[str, ...]  # keys bound now (observed view)
    # API 3.0's view: its InstanceState word and the instance's latest operation.
    api3_state: str = ""
    busy: bool = False  # an operation runs on it (2.0 status 20, 3.0 OPERATING)
    stop_charging: bool = False  # stopped with StoppedMode=STOP_CHARGING
    latest_operation: str | None = None
    latest_operation_state: str | None = None  # OPERATING | SUCCESS | FAILED
    latest_operation_request_id: str | None = None
    latest_operation_error: str | None = None

    @property
    def is_windows(self) -> bool:
        return "windows" in self.os.lower()

    @property
    def old_instance_id(self) -> str:
        """The API's old internal ``instanceId`` (``qcvm`` + hex), derived from the ID."""
        return _old_instance_id(self.instance_id)


@dataclass(frozen=True)
class KeyView:
    """A key pair as the API reports it now."""

    key_id: str
    name: str
    pubkey: str
    created: str
    instance_ids: tuple[str, ...]  # sorted
    lan_ips: tuple[str, ...]  # of those instances, same order


@dataclass
class _Phase:
    until: float
    status: int  # the 2.0 status reported until ``until``
    keys: frozenset[str] | None  # keys reported meanwhile (None: the settled ones)


@dataclass
class _Pending:
    """An instance's transient states, one phase after the other (ForceStop has three)."""

    phases: list[_Phase]

    @property
    def due(self) -> float:
        return self.phases[-1].until

    @property
    def status(self) -> int:
        return self.phases[0].status

    @property
    def keys(self) -> frozenset[str] | None:
        return self.phases[0].keys


@dataclass(frozen=True)
class Operation:
    """An instance's latest operation as 3.0 reports it (``LatestOperation*``)."""

    action: str
    request_id: str
    due: float  # OPERATING until then
    visible: float  # reported from then on; before, the previous operation (state lag)
    outcome: str  # SUCCESS | FAILED, once due
    error: str | None = None


@dataclass(frozen=True)
class Identity:
    """Who a credential is (STS GetCallerIdentity)."""

    arn: str
    account_id: str
    user_id: str
    principal_id: str
    type: str


@dataclass(frozen=True)
class Secret:
    """What the emulator knows of a SecretId: its key and, for temporary credentials, the token
    they need and when they expire. Key and token never show in a repr."""

    secret_id: str
    secret_key: str = field(repr=False)
    identity: Identity
    token: str | None = field(default=None, repr=False)
    expires: float | None = None


ROLE_ARN_PATTERN = re.compile(
    r"^qcs::cam::uin/(?P<account>[0-9]{1,20}):roleName/(?P<name>[\w+=,.@-]{1,128})$"
)
MAX_ROLE_SECONDS = 43200
DEFAULT_ROLE_SECONDS = 7200


# What a region records for the store, per change: (kind, a, b) as ``store.Change`` names them.
_Journal = list[tuple[str, str, str | None]]


class _Region:
    """One region of the settled view, indexed for the API's questions.

    Changes made through ``set_status``/``bind``/``unbind``/``note`` are noted in ``journal`` so
    that the store writes exactly those; ``link``/``unlink`` apply another process's changes.
    """

    def __init__(self, written_name: str, long_name: str, raw: Mapping[str, Any] | None) -> None:
        self.written_name = written_name
        self.long_name = long_name
        raw = raw or {}
        self.instances: dict[str, dict[str, Any]] = {
            item["id"]: dict(item) for item in raw.get("instances") or []
        }
        self.keys: dict[str, dict[str, Any]] = {item["id"]: dict(item) for item in raw.get("keys") or []}
        # Ordered sets (dicts) so that the file's order is kept.
        self.key_instances: dict[str, dict[str, None]] = {}
        self.instance_keys: dict[str, set[str]] = {iid: set() for iid in self.instances}
        for kid, key in self.keys.items():
            bound = dict.fromkeys(key.pop("bound", None) or [])
            self.key_instances[kid] = bound
            for iid in bound:
                self.instance_keys[iid].add(kid)
        self.sorted_instance_ids = sorted(self.instances)
        self.sorted_key_ids = sorted(self.keys)
        self.journal: _Journal = []

    def key_item(self, kid: str) -> dict[str, Any]:
        item = dict(self.keys[kid])
        if self.key_instances[kid]:
            item["bound"] = list(self.key_instances[kid])
        return item

    def to_data(self) -> dict[str, Any]:
        return {
            "instances": [dict(item) for item in self.instances.values()],
            "keys": [self.key_item(kid) for kid in self.keys],
        }

    def set_status(self, iid: str, status: int) -> None:
        self.instances[iid]["status"] = status
        self.journal.append(("status", iid, None))

    def note(self, kind: str, iid: str) -> None:
        """Something of instance ``iid`` that ``FleetState`` keeps changed: ``status`` (its time,
        STOP_CHARGING), ``pending`` or ``operation``; the store writes its current value."""
        self.journal.append((kind, iid, None))

    def bind(self, kid: str, iid: str) -> bool:
        if not self.link(kid, iid):
            return False
        self.journal.append(("binding", kid, iid))
        return True

    def unbind(self, kid: str, iid: str) -> bool:
        if not self.unlink(kid, iid):
            return False
        self.journal.append(("binding", kid, iid))
        return True

    def link(self, kid: str, iid: str) -> bool:
        if kid in self.instance_keys[iid]:
            return False
        self.instance_keys[iid].add(kid)
        self.key_instances[kid][iid] = None
        return True

    def unlink(self, kid: str, iid: str) -> bool:
        if kid not in self.instance_keys[iid]:
            return False
        self.instance_keys[iid].discard(kid)
        self.key_instances[kid].pop(iid, None)
        return True


def _format_time(seconds: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(seconds + BEIJING_OFFSET))


# Both are hashes of the ID, asked for every instance of every answer: computed once each.
@functools.lru_cache(maxsize=1 << 17)
def _old_instance_id(instance_id: str) -> str:
    return "qcvm" + hashlib.sha256(instance_id.encode()).hexdigest()[:28]


@functools.lru_cache(maxsize=1 << 17)
def _default_lan_ip(instance_id: str) -> str:
    digest = hashlib.sha256(instance_id.encode()).digest()
    return f"10.{digest[0]}.{digest[1]}.{digest[2] % 254 + 1}"


def _default_pubkey(key_id: str, name: str) -> str:
    body = hashlib.sha256(key_id.encode()).hexdigest()
    return f"ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAI{body[:43]} {name}"


def _refusal(iid: str, instance: Mapping[str, Any], status: int) -> str:
    return f"instance {iid} ({instance['name']}) is {status_name(status)} (status {status})"


class FleetState:
    """The emulated fleet, safe to share between threads (one lock around everything).

    Build it with ``from_file`` (live state shared through the SQLite store) or ``from_data``
    (memory only).
    """

    def __init__(
        self,
        data: Mapping[str, Any],
        *,
        clock: Clock = time.time,
        op_seconds: float = 0.0,
        path: Path | None = None,
        store: Store | None = None,
    ) -> None:
        self.clock = clock
        self.op_seconds = float(op_seconds)
        self.path = path  # the fixture, if any (never written)
        self.store = store
        self.mutations: list[Mutation] = []
        self.saves = 0  # write transactions committed to the store (for tests and benchmarks)
        self._lock = threading.RLock()
        self._pending: dict[str, dict[str, _Pending]] = {}
        self._status_times: dict[tuple[str, str], str] = {}
        # Live 3.0 and STS state, persisted like the rest (``_flush``): latest operations per
        # instance, instances stopped with STOP_CHARGING, temporary credentials STS issued.
        self._operations: dict[tuple[str, str], list[Operation]] = {}
        self._stop_charging: set[tuple[str, str]] = set()
        self._temporary: dict[str, Secret] = {}
        # Changes outside any region (STS credentials), as (kind, a): noted like a region's.
        self._journal: list[tuple[str, str]] = []
        self.op_lag = 0.0  # seconds a new latest operation stays hidden behind the previous one
        self._epoch = ""
        self._seq = 0
        self._fixture_signature: tuple[int, int, int] | None = None
        self._fixture_sha = ""
        self._install(data)

    @property
    def persist(self) -> bool:
        """True when changes are written to the shared store."""
        return self.store is not None

    @property
    def state_path(self) -> Path | None:
        """The SQLite file of the live state, or None (memory only)."""
        return self.store.path if self.store is not None else None

    # ------------------------------------------------------------------ construction

    @classmethod
    def from_data(
        cls, data: Mapping[str, Any], *, clock: Clock = time.time, op_seconds: float = 0.0
    ) -> FleetState:
        """A fleet held in memory only. Raises ``InputError`` if ``data`` is not a valid fleet."""
        check_data(data)
        return cls(data, clock=clock, op_seconds=op_seconds)

    @classmethod
    def from_file(
        cls,
        path: Path,
        *,
        clock: Clock = time.time,
        op_seconds: float = 0.0,
        persist: bool = True,
        state: Path | None = None,
        rebuild: bool = False,
    ) -> FleetState:
        """The live fleet of the fixture ``path``: its state database (``state``, else
        $CVMKEYS_EMULATOR_STATE, else ``<path>.state.sqlite``), built from the fixture when
        missing or when the fixture's bytes changed.

        ``rebuild`` builds it from the fixture in any case (``emulator reset``).
        With ``persist=False`` the current live state is read once and changes stay in memory
        (``--no-save``). Raises ``InputError`` (every problem, as FILE:LINE:COL) for a missing or
        invalid fixture, ``ConfigError``-like ``InputError`` for an unusable state file.
        """
        path = Path(path)
        state_path = default_state_path(path, state)
        sha = fixture_sha256(path)
        signature = _signature(path)
        if persist:
            # A state to be made is made only from a fixture that loads: checked before any file
            # exists, so no half-made state is left (nor removed under another process, as two
            # regions planned at once, each opening it, once did).
            fixture = None if state_path.exists() else load_fleet(path)
            store = _open_store(state_path)
            try:
                snapshot = _sync_with_fixture(store, path, sha, force=rebuild, loaded=fixture)
            except InputError:
                store.close()
                raise
            fleet = cls(snapshot.data, clock=clock, op_seconds=op_seconds, path=path, store=store)
        else:
            snapshot = _read_only_snapshot(state_path, path, sha)
            fleet = cls(snapshot.data, clock=clock, op_seconds=op_seconds, path=path)
        fleet._take(snapshot, install=False)  # __init__ installed its data
        fleet._fixture_signature, fleet._fixture_sha = signature, sha
        return fleet

    def reset(self) -> None:
        """Rebuild the live state from the fixture (``cvmkeys emulator reset``)."""
        with self._lock:
            if self.path is None:
                raise ConfigError("a fleet made from data has no fixture to reset from")
            sha = fixture_sha256(self.path)
            if self.store is None:
                data, _ = load_fleet(self.path)
                self._take(Snapshot(data))
            else:
                self._take(_sync_with_fixture(self.store, self.path, sha, force=True))
            self._fixture_signature, self._fixture_sha = _signature(self.path), sha

    def close(self) -> None:
        """Close the store's connection (the state stays on disk)."""
        with self._lock:
            if self.store is not None:
                self.store.close()

    def _install(self, data: Mapping[str, Any]) -> None:
        self.credentials: list[Credential] = [
            Credential(item["secret_id"], item["secret_key"]) for item in data.get("credentials") or []
        ]
        self._secrets = {cred.secret_id: cred.secret_key for cred in self.credentials}
        identity = data.get("identity") or {}
        self.account_id: str = str(identity.get("account_id") or DEFAULT_ACCOUNT_ID)
        self.roles: tuple[str, ...] = tuple(identity.get("roles") or ())
        self.web_identity_tokens: tuple[tuple[str, str], ...] = tuple(
            (str(item.get("provider_id") or "OIDC"), str(item["token"]))
            for item in identity.get("web_identity_tokens") or ()
        )
        self._identity_data = dict(identity)
        self._regions: dict[str, _Region] = {}
        for written, raw in (data.get("regions") or {}).items():
            long_name = canonical_region(written)
            self._regions[long_name] = _Region(written, long_name, raw)

    def _take(self, snapshot: Snapshot, *, install: bool = True) -> None:
        """Install a whole snapshot of the store (or of the fixture)."""
        if install:
            self._install(snapshot.data)
        self._status_times = dict(snapshot.status_times)
        self._pending = {}
        for region, iid, phases in snapshot.pending:
            self._pending.setdefault(region, {})[iid] = _pending_of(phases)
        self._operations = {
            where: [Operation(*op) for op in ops] for where, ops in snapshot.operations.items()
        }
        self._stop_charging = set(snapshot.stop_charging)
        self._temporary = {row[0]: _secret_of(row) for row in snapshot.credentials}
        self._epoch, self._seq = snapshot.epoch, snapshot.seq

    def to_data(self) -> dict[str, Any]:
        """The settled view as fleet-file data."""
        with self._lock:
            self._sync()
            return {
                "credentials": [
                    {"secret_id": c.secret_id, "secret_key": c.secret_key} for c in self.credentials
                ],
                "regions": {r.written_name: r.to_data() for r in self._regions.values()},
                **({"identity": dict(self._identity_data)} if self._identity_data else {}),
            }

    def __repr__(self) -> str:
        where = str(self.path) if self.path else "memory"
        return f"<FleetState {where}: {', '.join(self._regions)}>"

    # ------------------------------------------------------------------ persistence

    def _sync(self) -> None:
        """Apply what other processes changed since this one last looked (cheap when nothing)."""
        store = self.store
        if store is None:
            return
        epoch, floor, rows = store.changes_since(self._seq)
        if epoch != self._epoch or self._seq < floor:
            self._take(store.load())  # replaced (reset, fixture edited) or fell too far behind
            return
        for seq, region, kind, a, b in rows:
            self._apply_change(store, region, kind, a, b)
            self._seq = seq

    def _apply_change(self, store: Store, region: str, kind: str, a: str, b: str | None) -> None:
        if kind == "credential":
            row_c = store.credential_of(a)
            if row_c is None:
                self._temporary.pop(a, None)
            else:
                self._temporary[a] = _secret_of(row_c)
            return
        r = self._regions.get(region)
        if r is None:
            return
        if kind == "status" and a in r.instances:
            row = store.status_of(region, a)
            if row is not None:
                r.instances[a]["status"] = row[0]
                if row[1] is not None:
                    self._status_times[(region, a)] = row[1]
                if row[2]:
                    self._stop_charging.add((region, a))
                else:
                    self._stop_charging.discard((region, a))
        elif kind == "operation":
            self._operations[(region, a)] = [Operation(*op) for op in store.operations_of(region, a)]
        elif kind == "binding" and b is not None and a in r.keys and b in r.instances:
            if store.is_bound(region, a, b):
                r.link(a, b)
            else:
                r.unlink(a, b)
        elif kind == "pending":
            phases = store.pending_of(region, a)
            if phases is None:
                self._pending.get(region, {}).pop(a, None)
            else:
                self._pending.setdefault(region, {})[a] = _pending_of(phases)

    def _flush(self, store: Store) -> bool:
        """Write what the regions' journals say changed; True if anything was."""
        changes: list[tuple[str, str, str, str | None]] = []
        for r in self._regions.values():
            # An item changed twice in one call is written once.
            for kind, a, b in dict.fromkeys(r.journal):
                region = r.long_name
                if kind == "status":
                    status_time = self._status_times.get((region, a))
                    charging = (region, a) in self._stop_charging
                    store.save_status(region, a, int(r.instances[a]["status"]), status_time, charging)
                elif kind == "binding" and b is not None:
                    store.save_binding(region, a, b, a in r.instance_keys[b])
                elif kind == "pending":
                    p = self._pending.get(region, {}).get(a)
                    phases = None if p is None else [(ph.until, ph.status, ph.keys) for ph in p.phases]
                    store.save_pending(region, a, phases)
                elif kind == "operation":
                    ops = self._operations.get((region, a), [])
                    store.save_operations(
                        region,
                        a,
                        [(o.action, o.request_id, o.due, o.visible, o.outcome, o.error) for o in ops],
                    )
                changes.append((region, kind, a, b))
            r.journal.clear()
        for kind, a in dict.fromkeys(self._journal):
            if kind == "credential":
                secret = self._temporary.get(a)
                store.save_credential(a, None if secret is None else _credential_row(secret))
                changes.append(("", kind, a, None))
        self._journal.clear()
        if not changes:
            return False
        self._seq = store.log_changes(changes)
        return True

    def _refresh_fixture(self) -> None:
        """Rebuild from the fixture if its bytes changed since this process looked at it."""
        if self.path is None or self.store is None:
            return
        try:
            signature = _signature(self.path)
        except InputError:
            return  # the fixture went away: keep serving the state there is
        if signature == self._fixture_signature:
            return
        self._fixture_signature = signature
        try:
            sha = fixture_sha256(self.path)
            if sha != self._fixture_sha:
                self._take(_sync_with_fixture(self.store, self.path, sha, force=False))
                self._fixture_sha = sha
        except InputError:
            return  # an edit in progress or a broken fixture: keep the state there is

    @contextmanager
    def _changing(self) -> Iterator[list[bool]]:
        """One write transaction around a change: other processes' changes applied first,
        this call's written after. ``changed[0]`` is kept for the callers' bookkeeping.

        Every mutating method runs inside it and changes the fleet only through
        ``_Region.set_status``/``bind``/``unbind``/``note``, ``_start_transient``/``_set_phases``,
        ``_record_operations`` and ``_issue`` (which note what changed in ``_Region.journal`` or
        ``self._journal``): anything changed another way is not written to the store, so other
        processes and restarts would not see it.
        """
        changed = [False]
        with self._lock:
            store = self.store
            if store is None:
                try:
                    yield changed
                finally:
                    for r in self._regions.values():
                        r.journal.clear()
                    self._journal.clear()
                return
            self._refresh_fixture()
            try:
                with store.write():
                    self._sync()
                    yield changed
                    wrote = self._flush(store)
            except BaseException:
                # Rolled back. A refusal changed nothing; anything else may have left half a
                # call in memory: reload what the store holds.
                if self._journal or any(r.journal for r in self._regions.values()):
                    self._journal.clear()
                    self._take(store.load())
                raise
            if wrote:
                self.saves += 1

    def refresh(self) -> None:
        """Pick up what other processes changed, and a changed fixture (called per request)."""
        with self._lock:
            self._refresh_fixture()
            self._sync()

    # ------------------------------------------------------------------ lookups

    def secret_key_for(self, secret_id: str) -> str | None:
        """The secret key of an accepted SecretId, or None."""
        return self._secrets.get(secret_id)

    @property
    def regions(self) -> tuple[str, ...]:
        """Canonical names of the regions in the fleet file."""
        with self._lock:
            return tuple(self._regions)

    def _region(self, region: str) -> _Region:
        try:
            long_name = canonical_region(region)
        except KeyError:
            raise errors.InvalidRegion(
                f"unknown region {region!r} (known: {', '.join(KNOWN_REGIONS)})",
            ) from None
        self._sync()
        found = self._regions.get(long_name)
        if found is None:  # a real region where this account has nothing
            return _Region(long_name, long_name, None)
        return found

    def _active_pending(self, region: str, now: float) -> dict[str, _Pending]:
        pending = self._pending.get(region)
        if not pending:
            return {}
        for iid in [iid for iid, p in pending.items() if p.due <= now]:
            del pending[iid]
        for p in pending.values():
            while p.phases[0].until <= now:
                p.phases.pop(0)
        return pending

    @contextmanager
    def _now(self, region: str) -> Iterator[tuple[_Region, dict[str, _Pending]]]:
        """Under the lock: ``region`` and the operations running in it now (what a read sees)."""
        with self._lock:
            r = self._region(region)
            yield r, self._active_pending(r.long_name, self.clock())

    def settle(self) -> None:
        """Forget transient states whose time is up (the views are right without it too)."""
        with self._lock:
            now = self.clock()
            for region in list(self._pending):
                self._active_pending(region, now)

    def _status(self, r: _Region, iid: str, pending: Mapping[str, _Pending]) -> int:
        p = pending.get(iid)
        return p.status if p is not None else int(r.instances[iid]["status"])

    def _instance_view(self, r: _Region, iid: str, pending: Mapping[str, _Pending]) -> InstanceView:
        raw = r.instances[iid]
        p = pending.get(iid)
        keys = p.keys if p is not None and p.keys is not None else r.instance_keys[iid]
        created = raw.get("created", DEFAULT_CREATED)
        status = self._status(r, iid, pending)
        op = self._latest_operation(r.long_name, iid)
        now = self.clock()
        op_state = None if op is None else ("OPERATING" if now < op.due else op.outcome)
        busy = neutral_state(status) == BUSY
        if busy and op_state is None:  # a stuck or maintenance status with no call behind it
            op_state = "OPERATING"
        return InstanceView(
            instance_id=iid,
            name=raw["name"],
            os=raw["os"],
            status=status,
            region=r.long_name,
            zone=raw.get("zone", f"{r.long_name}-1"),
            lan_ip=raw.get("lan_ip") or _default_lan_ip(iid),
            wan_ips=tuple(raw.get("wan_ips") or ()),
            created=created,
            status_time=self._status_times.get((r.long_name, iid), created),
            key_ids=tuple(sorted(keys)),
            api3_state=api3_state(status),
            busy=busy,
            stop_charging=(r.long_name, iid) in self._stop_charging,
            latest_operation=None if op is None else op.action,
            latest_operation_state=op_state,
            latest_operation_request_id=None if op is None else op.request_id,
            latest_operation_error=None if op is None or op_state != "FAILED" else op.error,
        )

    def _key_members(self, r: _Region, kid: str, pending: Mapping[str, _Pending]) -> list[str]:
        members = set(r.key_instances[kid])
        for iid, p in pending.items():
            if p.keys is None or iid not in r.instances:
                continue
            if kid in p.keys:
                members.add(iid)
            else:
                members.discard(iid)
        return sorted(members)

    def _key_view(self, r: _Region, kid: str, pending: Mapping[str, _Pending]) -> KeyView:
        raw = r.keys[kid]
        members = self._key_members(r, kid, pending)
        return KeyView(
            key_id=kid,
            name=raw["name"],
            pubkey=raw.get("pubkey") or _default_pubkey(kid, raw["name"]),
            created=raw.get("created", DEFAULT_CREATED),
            instance_ids=tuple(members),
            lan_ips=tuple(r.instances[iid].get("lan_ip") or _default_lan_ip(iid) for iid in members),
        )

    # ------------------------------------------------------------------ read side (tests)

    def bindings(self, region: str) -> set[tuple[str, str]]:
        """The settled (key_id, instance_id) bindings of a region."""
        with self._lock:
            r = self._region(region)
            return {(kid, iid) for kid, members in r.key_instances.items() for iid in members}

    def observed_bindings(self, region: str) -> set[tuple[str, str]]:
        """The (key_id, instance_id) bindings the API reports now."""
        with self._now(region) as (r, pending):
            return {(kid, iid) for kid in r.keys for iid in self._key_members(r, kid, pending)}

    def instance_status(self, region: str, instance_id: str) -> int:
        """The status the API reports now (transient 20/9/8 included). KeyError if unknown."""
        return self.instance(region, instance_id).status

    def settled_status(self, region: str, instance_id: str) -> int:
        """The status once running operations have finished. KeyError if unknown."""
        with self._lock:
            return int(self._region(region).instances[instance_id]["status"])

    def instance(self, region: str, instance_id: str) -> InstanceView:
        """The instance as reported now. KeyError if unknown."""
        with self._now(region) as (r, pending):
            if instance_id not in r.instances:
                raise KeyError(instance_id)
            return self._instance_view(r, instance_id, pending)

    def key(self, region: str, key_id: str) -> KeyView:
        """The key pair as reported now. KeyError if unknown."""
        with self._now(region) as (r, pending):
            if key_id not in r.keys:
                raise KeyError(key_id)
            return self._key_view(r, key_id, pending)

    def instance_ids(self, region: str) -> tuple[str, ...]:
        with self._lock:
            return tuple(self._region(region).sorted_instance_ids)

    def key_ids(self, region: str) -> tuple[str, ...]:
        with self._lock:
            return tuple(self._region(region).sorted_key_ids)

    # ------------------------------------------------------------------ changes behind the API

    def set_instance_status(self, region: str, instance_id: str, status: int) -> None:
        """Change an instance's status directly (someone used the console). Saved; not logged."""
        with self._changing() as changed:
            r = self._region(region)
            r.set_status(instance_id, int(status))
            if self._pending.get(r.long_name, {}).pop(instance_id, None) is not None:
                r.note("pending", instance_id)
            self._status_times[(r.long_name, instance_id)] = _format_time(self.clock())
            changed[0] = True

    def set_binding(self, region: str, key_id: str, instance_id: str, bound: bool) -> None:
        """Bind or unbind directly, ignoring every rule. Saved; not logged."""
        with self._changing() as changed:
            r = self._region(region)
            if key_id not in r.keys or instance_id not in r.instances:
                raise KeyError(key_id if key_id not in r.keys else instance_id)
            changed[0] = r.bind(key_id, instance_id) if bound else r.unbind(key_id, instance_id)

    # ------------------------------------------------------------------ API actions

    def describe_key_pairs(
        self,
        region: str,
        *,
        key_ids: Iterable[str] | None = None,
        key_name: str | None = None,
        offset: int = 0,
        limit: int = 20,
    ) -> tuple[int, list[KeyView]]:
        """Total matching and one page of key pairs, ordered by key ID."""
        with self._now(region) as (r, pending):
            if key_ids is not None:
                wanted = set(key_ids)
                ids = [kid for kid in sorted(wanted) if kid in r.keys]
            else:
                ids = r.sorted_key_ids
            if key_name is not None:
                ids = [kid for kid in ids if key_name in r.keys[kid]["name"]]
            page = ids[offset : offset + limit]
            return len(ids), [self._key_view(r, kid, pending) for kid in page]

    def describe_instances(
        self,
        region: str,
        *,
        instance_ids: Iterable[str] | None = None,
        status: int | None = None,
        search_word: str | None = None,
        lan_ips: Iterable[str] | None = None,
        zone: str | None = None,
        offset: int = 0,
        limit: int = 20,
    ) -> tuple[int, list[InstanceView]]:
        """Total matching and one page of instances, ordered by instance ID."""
        with self._now(region) as (r, pending):
            if instance_ids is not None:
                ids = [iid for iid in sorted(set(instance_ids)) if iid in r.instances]
            else:
                ids = r.sorted_instance_ids
            if status is not None:
                ids = [iid for iid in ids if self._status(r, iid, pending) == status]
            if search_word is not None:
                needle = search_word.lower()
                ids = [iid for iid in ids if needle in r.instances[iid]["name"].lower()]
            if lan_ips is not None:
                wanted_ips = set(lan_ips)
                ids = [
                    iid
                    for iid in ids
                    if (r.instances[iid].get("lan_ip") or _default_lan_ip(iid)) in wanted_ips
                ]
            if zone is not None:
                ids = [iid for iid in ids if r.instances[iid].get("zone", f"{r.long_name}-1") == zone]
            page = ids[offset : offset + limit]
            return len(ids), [self._instance_view(r, iid, pending) for iid in page]

    def _require(self, r: _Region, key_id: str | None, instance_ids: Iterable[str]) -> None:
        missing = []
        if key_id is not None and key_id not in r.keys:
            missing.append(f"key {key_id}")
        missing.extend(f"instance {iid}" for iid in instance_ids if iid not in r.instances)
        if missing:
            error = (
                errors.KeyPairNotFound
                if len(missing) == 1 and key_id not in r.keys
                else errors.InstanceNotFound
            )
            raise error(f"{', '.join(missing)} not found in region {r.long_name}")

    def check_key_operation(self, action: str, region: str, key_id: str, instance_ids: Iterable[str]) -> None:
        """Raise the ``ApiFault`` a bind/unbind of these instances would get now, if any."""
        with self._now(region) as (r, pending):
            ids = list(dict.fromkeys(instance_ids))
            self._require(r, key_id, ids)
            refusals = []
            first: type[ApiError] | None = None
            for iid in ids:
                raw = r.instances[iid]
                status = self._status(r, iid, pending)
                if "windows" in str(raw["os"]).lower():
                    refusals.append(f"instance {iid} ({raw['name']}) runs Windows ({raw['os']})")
                    first = first or errors.InstanceOsWindows
                elif status != STATUS_SHUT_DOWN:
                    refusals.append(_refusal(iid, raw, status))
                    first = first or _state_error(status)
            if refusals:
                assert first is not None
                verb = "bound to" if action == "BindInstanceKey" else "unbound from"
                raise first(
                    f"{action} refused, nothing changed: keys can only be {verb} Linux instances "
                    f"that are shut down (status 4): {'; '.join(refusals)}",
                )

    def unbind_instance_key(self, region: str, key_id: str, instance_ids: Iterable[str]) -> None:
        """UnBindInstanceKey: all or nothing; unbinding a key that is not bound is a no-op."""
        self._key_operation("UnBindInstanceKey", region, key_id, instance_ids)

    def bind_instance_key(self, region: str, key_id: str, instance_ids: Iterable[str]) -> None:
        """BindInstanceKey: all or nothing; the key replaces the instance's previous keys."""
        self._key_operation("BindInstanceKey", region, key_id, instance_ids)

    def _key_operation(self, action: str, region: str, key_id: str, instance_ids: Iterable[str]) -> None:
        ids = tuple(dict.fromkeys(instance_ids))
        with self._changing() as changed:
            self.check_key_operation(action, region, key_id, ids)
            r = self._region(region)
            now = self.clock()
            for iid in ids:
                before = frozenset(r.instance_keys[iid])
                if action == "BindInstanceKey":
                    for old in before - {key_id}:
                        r.unbind(old, iid)
                    changed[0] |= r.bind(key_id, iid) or bool(before - {key_id})
                else:
                    changed[0] |= r.unbind(key_id, iid)
                self._start_transient(r, iid, STATUS_KEY_ISSUING, now, before)
            request_id = str(uuid.uuid4())
            self._record_operations(r, ids, action, request_id, now + self.op_seconds)
            self.mutations.append(Mutation(now, r.long_name, action, key_id, ids, (key_id,), request_id))

    def _start_transient(
        self, r: _Region, iid: str, status: int, now: float, keys: frozenset[str] | None
    ) -> None:
        if self.op_seconds > 0:
            self._set_phases(r, iid, [_Phase(now + self.op_seconds, status, keys)])

    def _set_phases(self, r: _Region, iid: str, phases: list[_Phase]) -> None:
        """The instance's transient states from now on, one after the other."""
        self._pending.setdefault(r.long_name, {})[iid] = _Pending(phases)
        r.note("pending", iid)

    def stop_instances(self, region: str, instance_ids: Iterable[str], *, force: bool = False) -> None:
        """StopInstances: only running (2) instances; they show 9 for op_seconds, then 4."""
        self._power(
            "StopInstances", region, instance_ids, STATUS_RUNNING, STATUS_SHUTTING_DOWN, STATUS_SHUT_DOWN
        )

    def start_instances(self, region: str, instance_ids: Iterable[str]) -> None:
        """StartInstances: only shut-down (4) instances; they show 8 for op_seconds, then 2."""
        self._power("StartInstances", region, instance_ids, STATUS_SHUT_DOWN, STATUS_STARTING, STATUS_RUNNING)

    def _power(
        self, action: str, region: str, instance_ids: Iterable[str], need: int, transient: int, final: int
    ) -> None:
        ids = tuple(dict.fromkeys(instance_ids))
        with self._changing() as changed:
            r = self._region(region)
            self._require(r, None, ids)
            now = self.clock()
            pending = self._active_pending(r.long_name, now)
            refused = [iid for iid in ids if self._status(r, iid, pending) != need]
            refusals = [_refusal(iid, r.instances[iid], self._status(r, iid, pending)) for iid in refused]
            if refusals:
                raise _state_error(self._status(r, refused[0], pending))(
                    f"{action} refused, nothing changed: only instances that are "
                    f"{status_name(need)} (status {need}) can be "
                    f"{'stopped' if need == STATUS_RUNNING else 'started'}: {'; '.join(refusals)}",
                )
            stamp = _format_time(now)
            for iid in ids:
                r.set_status(iid, final)
                self._status_times[(r.long_name, iid)] = stamp
                self._start_transient(r, iid, transient, now, None)
                self._stop_charging.discard((r.long_name, iid))
            changed[0] = True
            request_id = str(uuid.uuid4())
            self._record_operations(r, ids, action, request_id, now + self.op_seconds)
            self.mutations.append(Mutation(now, r.long_name, action, None, ids, (), request_id))

    # ------------------------------------------------------------------ latest operations (3.0)

    def _latest_operation(self, region: str, iid: str) -> Operation | None:
        now = self.clock()
        for op in reversed(self._operations.get((region, iid), ())):
            if op.visible <= now:
                return op
        return None

    def _record_operations(
        self,
        r: _Region,
        ids: Iterable[str],
        action: str,
        request_id: str,
        due: float,
        *,
        lag: float = 0.0,
        outcome: str = "SUCCESS",
        error: str | None = None,
    ) -> None:
        now = self.clock()
        op = Operation(action, request_id, due, now + self.op_lag + lag, outcome, error)
        for iid in ids:
            history = self._operations.setdefault((r.long_name, iid), [])
            history.append(op)
            del history[:-3]  # the latest, and what a lagging view may still show
            r.note("operation", iid)

    def _busy(self, r: _Region, iid: str, pending: Mapping[str, _Pending]) -> bool:
        """An operation runs on the instance: a key operation (status 20), a maintenance
        status, or any transient phase of a 3.0 call."""
        return neutral_state(self._status(r, iid, pending)) == BUSY

    def _require3(self, r: _Region, key_ids: Sequence[str], instance_ids: Sequence[str]) -> None:
        """3.0's existence checks: every missing instance named, then every missing key."""
        missing = [iid for iid in instance_ids if iid not in r.instances]
        if missing:
            raise errors.InstanceNotFound(f"The specified instance ID {missing} is not found.")
        missing_keys = [kid for kid in key_ids if kid not in r.keys]
        if missing_keys:
            raise errors.KeyPairNotFound(f"The specified key pair ID {missing_keys} does not exist.")

    def _refuse3(self, action: str, what: str, refusals: list[tuple[type[ApiError], str]]) -> None:
        if refusals:
            # The whole call fails; its code is the first refused instance's (the docs give one
            # code per answer and do not say which instance wins).
            raise refusals[0][0](
                f"{action} refused, nothing changed: {what}: {'; '.join(text for _, text in refusals)}"
            )

    def _power3(
        self, region: str, ids: Sequence[str], word: str, action: str, done: str
    ) -> tuple[_Region, float]:
        """3.0 StopInstances/StartInstances, all or nothing: the region and now, unless the call
        is refused (an instance missing, not ``word``, or with an operation in progress)."""
        r = self._region(region)
        self._require3(r, (), ids)
        now = self.clock()
        pending = self._active_pending(r.long_name, now)
        refusals: list[tuple[type[ApiError], str]] = []
        for iid in ids:
            state = api3_state(self._status(r, iid, pending))
            name = f"instance {iid} ({r.instances[iid]['name']})"
            if self._busy(r, iid, pending):
                refusals.append((errors.InstanceOperationInProgress, f"{name} has an operation in progress"))
            elif state != word:
                refusals.append((errors.state_refusal(state), f"{name} is {state}"))
        self._refuse3(action, f"only {word} instances can be {done}", refusals)
        return r, now

    def check_key_pairs_operation(
        self,
        action: str,
        region: str,
        key_ids: Sequence[str],
        instance_ids: Sequence[str],
        *,
        force_stop: bool,
    ) -> None:
        """Raise the error a 3.0 (Dis)AssociateInstancesKeyPairs of these would get now, if any."""
        with self._now(region) as (r, pending):
            self._require3(r, key_ids, instance_ids)
            refusals: list[tuple[type[ApiError], str]] = []
            for iid in instance_ids:
                raw = r.instances[iid]
                status = self._status(r, iid, pending)
                word = api3_state(status)
                name = f"instance {iid} ({raw['name']})"
                if "windows" in str(raw["os"]).lower():
                    refusals.append((errors.InstanceOsWindows, f"{name} runs Windows ({raw['os']})"))
                elif (r.long_name, iid) in self._stop_charging:
                    refusals.append(
                        (errors.StoppedModeStopCharging, f"{name} was stopped with STOP_CHARGING")
                    )
                elif self._busy(r, iid, pending):
                    refusals.append(
                        (errors.InstanceOperationInProgress, f"{name} has an operation in progress")
                    )
                elif word != "STOPPED" and not (force_stop and word == "RUNNING"):
                    refusals.append((errors.state_refusal(word), f"{name} is {word}"))
            self._refuse3(
                action,
                "keys can only be changed on Linux instances that are STOPPED (or RUNNING with ForceStop)",
                refusals,
            )

    def change_key_pairs(
        self,
        action: str,
        region: str,
        key_ids: Sequence[str],
        instance_ids: Sequence[str],
        *,
        force_stop: bool = False,
        request_id: str | None = None,
        lag: float = 0.0,
    ) -> str:
        """3.0 DisassociateInstancesKeyPairs / AssociateInstancesKeyPairs: every key from (or to)
        every instance, all or nothing. Disassociating a key that is not bound changes nothing;
        associating adds the keys (the instance keeps its others). With ``force_stop`` a RUNNING
        instance goes STOPPING -> STOPPED (the change) -> STARTING -> RUNNING, ``op_seconds``
        each. Returns the RequestId its instances' LatestOperationRequestId reports."""
        keys = tuple(dict.fromkeys(key_ids))
        ids = tuple(dict.fromkeys(instance_ids))
        request_id = request_id or str(uuid.uuid4())
        with self._changing() as changed:
            self.check_key_pairs_operation(action, region, keys, ids, force_stop=force_stop)
            r = self._region(region)
            now = self.clock()
            pending = self._active_pending(r.long_name, now)
            op = self.op_seconds
            longest = 0.0
            for iid in ids:
                before = frozenset(r.instance_keys[iid])
                running = self._status(r, iid, pending) == STATUS_RUNNING
                for kid in keys:
                    changed[0] |= (
                        r.bind(kid, iid) if action == "AssociateInstancesKeyPairs" else r.unbind(kid, iid)
                    )
                if op > 0:
                    if running:
                        phases = [
                            _Phase(now + op, STATUS_SHUTTING_DOWN, before),
                            _Phase(now + 2 * op, STATUS_KEY_ISSUING, before),
                            _Phase(now + 3 * op, STATUS_STARTING, None),
                        ]
                    else:
                        phases = [_Phase(now + op, STATUS_KEY_ISSUING, before)]
                    self._set_phases(r, iid, phases)
                    longest = max(longest, phases[-1].until - now)
                    self._record_operations(r, [iid], action, request_id, phases[-1].until, lag=lag)
                else:
                    self._record_operations(r, [iid], action, request_id, now, lag=lag)
                if running:
                    self._status_times[(r.long_name, iid)] = _format_time(now + longest)
                    r.note("status", iid)
            key_id = keys[0] if len(keys) == 1 else None
            self.mutations.append(Mutation(now, r.long_name, action, key_id, ids, keys, request_id))
        return request_id

    def stop_instances3(
        self,
        region: str,
        instance_ids: Sequence[str],
        *,
        stop_type: str = "SOFT",
        stopped_mode: str = "KEEP_CHARGING",
        request_id: str | None = None,
        lag: float = 0.0,
        soft_stop_fails: bool = False,
    ) -> str:
        """3.0 StopInstances: only RUNNING instances, all or nothing; STOPPING for op_seconds,
        then STOPPED. ``soft_stop_fails`` (a fault): a SOFT stop never completes (the instance
        stays RUNNING, the operation ends FAILED); SOFT_FIRST then goes hard and takes twice as
        long; HARD is not affected."""
        ids = tuple(dict.fromkeys(instance_ids))
        request_id = request_id or str(uuid.uuid4())
        with self._changing() as changed:
            r, now = self._power3(region, ids, "RUNNING", "StopInstances", "stopped")
            fails = soft_stop_fails and stop_type == "SOFT"
            took = self.op_seconds * (2 if soft_stop_fails and stop_type == "SOFT_FIRST" else 1)
            for iid in ids:
                if not fails:
                    r.set_status(iid, STATUS_SHUT_DOWN)
                    self._status_times[(r.long_name, iid)] = _format_time(now + took)
                    if stopped_mode == "STOP_CHARGING":
                        self._stop_charging.add((r.long_name, iid))
                    changed[0] = True
                if took > 0:
                    self._set_phases(r, iid, [_Phase(now + took, STATUS_SHUTTING_DOWN, None)])
            self._record_operations(
                r,
                ids,
                "StopInstances",
                request_id,
                now + took,
                lag=lag,
                outcome="FAILED" if fails else "SUCCESS",
                error="the soft stop did not complete in time (injected)" if fails else None,
            )
            self.mutations.append(Mutation(now, r.long_name, "StopInstances", None, ids, (), request_id))
        return request_id

    def start_instances3(
        self, region: str, instance_ids: Sequence[str], *, request_id: str | None = None, lag: float = 0.0
    ) -> str:
        """3.0 StartInstances: only STOPPED instances, all or nothing; STARTING, then RUNNING."""
        ids = tuple(dict.fromkeys(instance_ids))
        request_id = request_id or str(uuid.uuid4())
        with self._changing() as changed:
            r, now = self._power3(region, ids, "STOPPED", "StartInstances", "started")
            for iid in ids:
                r.set_status(iid, STATUS_RUNNING)
                self._status_times[(r.long_name, iid)] = _format_time(now + self.op_seconds)
                self._stop_charging.discard((r.long_name, iid))
                self._start_transient(r, iid, STATUS_STARTING, now, None)
            changed[0] = True
            self._record_operations(r, ids, "StartInstances", request_id, now + self.op_seconds, lag=lag)
            self.mutations.append(Mutation(now, r.long_name, "StartInstances", None, ids, (), request_id))
        return request_id

    # ------------------------------------------------------------------ identity (STS)

    def _root_identity(self) -> Identity:
        account = self.account_id
        return Identity(f"qcs::cam::uin/{account}:uin/{account}", account, account, account, "CAMUser")

    def secret(self, secret_id: str) -> Secret | None:
        """What is known of a SecretId: long-lived (the fleet file's) or temporary (STS), even
        if expired (the caller decides). None if unknown."""
        key = self._secrets.get(secret_id)
        if key is not None:
            return Secret(secret_id, key, self._root_identity())
        with self._lock:
            self._sync()  # issued by another process on the same state, maybe
            return self._temporary.get(secret_id)

    def _issue(self, role: str, session: str, seconds: int) -> Secret:
        account = self.account_id
        # Role IDs look like CAM's (4611686018427387904 + n), derived from the name so that a
        # role keeps its ID.
        digest = hashlib.sha256(f"{account}/{role}".encode()).hexdigest()
        role_id = str(4611686018427387904 + int(digest[:8], 16) % 10**9)
        identity = Identity(
            arn=f"qcs::sts:{account}:assumed-role/{role_id}/{session}",
            account_id=account,
            user_id=f"{role_id}:{session}",
            principal_id=role_id,
            type="CAMRole",
        )
        secret = Secret(
            secret_id="AKID" + secrets.token_hex(16).upper(),
            secret_key=secrets.token_urlsafe(24),
            identity=identity,
            token=secrets.token_urlsafe(48),
            expires=float(int(self.clock()) + seconds),
        )
        with self._changing():
            now = self.clock()
            for old in [sid for sid, s in self._temporary.items() if (s.expires or 0) + 3600 < now]:
                del self._temporary[old]  # long expired: forget
                self._journal.append(("credential", old))
            self._temporary[secret.secret_id] = secret
            self._journal.append(("credential", secret.secret_id))
        return secret

    def _role_name(self, role_arn: str) -> str:
        match = ROLE_ARN_PATTERN.match(role_arn or "")
        if match is None:
            raise errors.InvalidParameterValue(
                f"RoleArn {role_arn!r} is not a role ARN (qcs::cam::uin/<account>:roleName/<name>)"
            )
        if match["account"] != self.account_id:
            raise errors.RoleNotFound(f"role {role_arn} is not a role of account {self.account_id}")
        return match["name"]

    @staticmethod
    def _duration(seconds: int | None) -> int:
        value = DEFAULT_ROLE_SECONDS if seconds is None else seconds
        if not 1 <= value <= MAX_ROLE_SECONDS:
            raise errors.InvalidParameterValue(
                f"DurationSeconds must be from 1 to {MAX_ROLE_SECONDS}, not {value}"
            )
        return value

    def assume_role(self, role_arn: str, session_name: str, duration: int | None = None) -> Secret:
        """STS AssumeRole: any well-formed role ARN of the account; temporary credentials."""
        return self._issue(self._role_name(role_arn), session_name, self._duration(duration))

    def assume_role_with_web_identity(
        self, provider_id: str, token: str, role_arn: str, session_name: str, duration: int | None = None
    ) -> Secret:
        """STS AssumeRoleWithWebIdentity: only for a token (of that provider) the fleet declares."""
        role = self._role_name(role_arn)
        if (provider_id or "OIDC", token) not in self.web_identity_tokens:
            raise errors.WebIdentityTokenError(
                f"the web identity token is not valid for provider {provider_id or 'OIDC'}"
            )
        return self._issue(role, session_name, self._duration(duration))

    def instance_role_credentials(self, role: str) -> Secret:
        """The metadata service's credentials for an instance role the fleet declares (KeyError
        if it declares no such role); new ones once less than 10 minutes are left."""
        if role not in self.roles:
            raise KeyError(role)
        with self._lock:
            self._sync()
            now = self.clock()
            for secret in self._temporary.values():
                if (
                    secret.identity.user_id.endswith(f":instance-{role}")
                    and (secret.expires or 0) - now > 600
                ):
                    return secret
        return self._issue(role, f"instance-{role}", 6 * 3600)


def _state_error(status: int) -> type[ApiError]:
    """The error class for a refusal because of a 2.0 status (its 3.0 code by state)."""
    if neutral_state(status) == BUSY:
        return errors.InstanceOperationInProgress
    return errors.state_refusal(api3_state(status))


def _pending_of(phases: Iterable[Phase]) -> _Pending:
    return _Pending(
        [_Phase(until, status, None if keys is None else frozenset(keys)) for until, status, keys in phases]
    )


def _secret_of(row: CredentialRow) -> Secret:
    sid, key, token, expires, arn, account, user, principal, kind = row
    return Secret(sid, key, Identity(arn, account, user, principal, kind), token, expires)


def _credential_row(secret: Secret) -> CredentialRow:
    i = secret.identity
    return (
        secret.secret_id,
        secret.secret_key,
        secret.token or "",
        float(secret.expires or 0.0),
        i.arn,
        i.account_id,
        i.user_id,
        i.principal_id,
        i.type,
    )


def _signature(path: Path) -> tuple[int, int, int]:
    """(mtime_ns, size, inode) of the fixture: cheap to compare on every request."""
    try:
        stat = os.stat(path)
    except OSError as error:
        raise InputError([Problem(str(path), f"cannot read fleet file: {error.strerror}")]) from None
    return stat.st_mtime_ns, stat.st_size, stat.st_ino


_STATE_HINT = "keep the state elsewhere with --state PATH or CVMKEYS_EMULATOR_STATE=PATH"


def _open_store(state_path: Path) -> Store:
    try:
        return Store(state_path)
    except sqlite3.DatabaseError as error:  # unwritable folder, not a database, ...
        raise InputError(
            [Problem(str(state_path), f"cannot use the emulator state: {error}")], hint=_STATE_HINT
        ) from None


def _sync_with_fixture(
    store: Store,
    fixture: Path,
    sha: str,
    *,
    force: bool,
    loaded: tuple[dict[str, Any], str] | None = None,
) -> Snapshot:
    """The store's state, rebuilt from ``fixture`` first if it was built from other bytes
    (or ``force``); ``loaded``: the fixture's data and digest, already read. One write
    transaction, so two processes starting at once build it once."""
    try:
        with store.write():
            built_from = store.built_from()
            if force or built_from != sha:
                data, read_sha = loaded if loaded is not None and loaded[1] == sha else load_fleet(fixture)
                store.replace_all(data, fixture, read_sha)
                if not force and built_from is not None:
                    # Said, not silent: the emulator's changes (applies, imports) are gone now.
                    _log.warning(
                        "%s changed since its live state %s was built: rebuilt from the fixture "
                        "(what applies and imports did through the emulator is gone)",
                        fixture,
                        store.path,
                    )
            return store.load()
    except sqlite3.DatabaseError as error:
        raise InputError(
            [Problem(str(store.path), f"cannot use the emulator state: {error}")], hint=_STATE_HINT
        ) from None


def _read_only_snapshot(state_path: Path, fixture: Path, sha: str) -> Snapshot:
    """The live state if there is one for these fixture bytes, else the fixture's."""
    if state_path.exists():
        try:
            store = Store(state_path)
            try:
                if store.built_from() == sha:
                    # Not followed afterwards: no epoch, no change sequence.
                    return dataclasses.replace(store.load(), epoch="", seq=0)
            finally:
                store.close()
        except sqlite3.DatabaseError:
            pass  # an unusable state file: the fixture is the truth
    data, _ = load_fleet(fixture)
    return Snapshot(data)
