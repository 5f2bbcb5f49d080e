"""The emulator's backend: the fleet (regions, instances, keys, bindings) and the cloud's rules.

Called by ``emulator/app.py`` (one method per API action) and by tests, which read it back
(``bindings``, ``instance_status``, ``mutations``) and change it behind the API's back
(``set_instance_status``, ``set_binding``). It knows nothing of HTTP or signatures.

Two views of the fleet:

* the *settled* view, what the fleet will look like once every accepted operation has
  finished. It is what the fleet file holds, and what ``bindings()`` returns;
* the *observed* view, what the API reports now. An accepted bind/unbind puts each instance in
  status 20 (key issuing) for ``op_seconds``, during which the old bindings are still
  reported; stop shows 9 and start 8 for ``op_seconds``. These transient states live in memory
  only and are computed against the injectable ``clock``, so a test steps a fake clock instead
  of sleeping. With ``op_seconds=0`` (the default) both views are the same.

Persistence: with a fleet file, every call that changed the settled view saves it (one save
per API call), atomically (temporary file + ``os.replace``) under a ``filelock.FileLock`` on
``<fleet>.lock``; before changing anything the file is read again if another process wrote it
since, so two emulators on one file never lose each other's changes.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import os
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from filelock import FileLock

from reconciler.emulator.fleetfile import (
    AT_KEY,
    check_fleet,
    item_line,
    parse_fleet_text,
    problems_to_error,
    render_fleet,
)
from reconciler.errors import InputError, Problem
from reconciler.ids import KNOWN_REGIONS, canonical_region
from reconciler.model import (
    STATUS_KEY_ISSUING,
    STATUS_RUNNING,
    STATUS_SHUT_DOWN,
    STATUS_SHUTTING_DOWN,
    STATUS_STARTING,
    status_name,
)

Clock = Callable[[], float]

# API error codes the backend answers with (the common codes of the CVM API 2.0).
CODE_INVALID_PARAMETER = 4000
CODE_NOT_FOUND = 5000
CODE_OPERATION_FAILED = 5100
CODE_PARTIAL_SUCCESS = 5400

DEFAULT_CREATED = "2020-01-01 00:00:00"
# A fleet file bigger than this is refused unread (a 50,000-instance fleet is about 6 MB).
MAX_FLEET_BYTES = 64 * 2**20
_BEIJING_OFFSET = 8 * 3600  # the API reports times in China Standard Time


class ApiFault(Exception):
    """An API error answer: ``code`` and ``message`` go into the response body as they are."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


@dataclass(frozen=True)
class Mutation:
    """One accepted mutating API call, as the log records it."""

    time: float
    region: str  # canonical long name
    action: str
    key_id: str | None
    instance_ids: tuple[str, ...]


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
class _Pending:
    status: int  # reported until ``due``
    due: float
    keys: frozenset[str] | None  # keys reported while pending (None: the settled ones)


class _Region:
    """One region of the settled view, indexed for the API's questions."""

    def __init__(self, written_name: str, long_name: str, raw: Mapping[str, Any] | None) -> None:
        self.written_name = written_name
        self.long_name = long_name
        raw = raw or {}
        self.instances: dict[str, dict[str, Any]] = {
            item["id"]: dict(item) for item in raw.get("instances") or []
        }
        self.keys: dict[str, dict[str, Any]] = {item["id"]: dict(item) for item in raw.get("keys") or []}
        # Ordered sets (dicts) so that saving keeps the file's order.
        self.key_instances: dict[str, dict[str, None]] = {}
        self.instance_keys: dict[str, set[str]] = {iid: set() for iid in self.instances}
        for kid, key in self.keys.items():
            bound = dict.fromkeys(key.get("bound") or [])
            self.key_instances[kid] = bound
            for iid in bound:
                self.instance_keys[iid].add(kid)
        self.sorted_instance_ids = sorted(self.instances)
        self.sorted_key_ids = sorted(self.keys)
        self._instance_lines: dict[str, str] = {}
        self._key_lines: dict[str, str] = {}
        # The whole lists, until an item changes: an unbind changes one key line, and rebuilding
        # the list of 50,000 instance lines for each save cost more than writing the file.
        self._instance_list: list[str] | None = None
        self._key_list: list[str] | None = None

    def key_item(self, kid: str) -> dict[str, Any]:
        item = dict(self.keys[kid])
        if "bound" in item or self.key_instances[kid]:
            item["bound"] = list(self.key_instances[kid])
        return item

    def to_data(self) -> dict[str, Any]:
        return {
            "instances": [dict(item) for item in self.instances.values()],
            "keys": [self.key_item(kid) for kid in self.keys],
        }

    def to_lines(self) -> tuple[list[str], list[str]]:
        """The file lines of instances and keys; cached, since a save rewrites the whole file
        and most items have not changed since the last one."""
        instance_lines = self._instance_list
        if instance_lines is None:
            instance_lines = []
            for iid, item in self.instances.items():
                line = self._instance_lines.get(iid)
                if line is None:
                    line = self._instance_lines[iid] = item_line(item)
                instance_lines.append(line)
            self._instance_list = instance_lines
        key_lines = self._key_list
        if key_lines is None:
            key_lines = []
            for kid in self.keys:
                line = self._key_lines.get(kid)
                if line is None:
                    line = self._key_lines[kid] = item_line(self.key_item(kid))
                key_lines.append(line)
            self._key_list = key_lines
        return instance_lines, key_lines

    def set_status(self, iid: str, status: int) -> None:
        self.instances[iid]["status"] = status
        self._instance_lines.pop(iid, None)
        self._instance_list = None

    def bind(self, kid: str, iid: str) -> bool:
        if kid in self.instance_keys[iid]:
            return False
        self.instance_keys[iid].add(kid)
        self.key_instances[kid][iid] = None
        self._key_lines.pop(kid, None)
        self._key_list = None
        return True

    def unbind(self, kid: str, iid: str) -> bool:
        if kid not in self.instance_keys[iid]:
            return False
        self.instance_keys[iid].discard(kid)
        self.key_instances[kid].pop(iid, None)
        self._key_lines.pop(kid, None)
        self._key_list = None
        return True


def _format_time(seconds: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(seconds + _BEIJING_OFFSET))


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

    Build it with ``from_file`` (persisted to that file) or ``from_data`` (memory only).
    """

    def __init__(
        self,
        data: Mapping[str, Any],
        *,
        clock: Clock = time.time,
        op_seconds: float = 0.0,
        path: Path | None = None,
        persist: bool = False,
    ) -> None:
        self.clock = clock
        self.op_seconds = float(op_seconds)
        self.path = path
        self.persist = persist and path is not None
        self.mutations: list[Mutation] = []
        self.saves = 0  # how many times the fleet file was written (for tests and benchmarks)
        self._lock = threading.RLock()
        self._pending: dict[str, dict[str, _Pending]] = {}
        self._status_times: dict[tuple[str, str], str] = {}
        self._file_signature: tuple[int, int, int] | None = None
        self._install(data)

    # ------------------------------------------------------------------ construction

    @classmethod
    def from_data(
        cls, data: Mapping[str, Any], *, clock: Clock = time.time, op_seconds: float = 0.0
    ) -> FleetState:
        """A fleet held in memory only. Raises ``InputError`` if ``data`` is not a valid fleet."""
        problems = check_fleet(data)
        if problems:
            raise InputError([Problem("<fleet data>", f"{_dotted(path)}: {msg}") for path, msg in problems])
        return cls(data, clock=clock, op_seconds=op_seconds)

    @classmethod
    def from_file(
        cls,
        path: Path,
        *,
        clock: Clock = time.time,
        op_seconds: float = 0.0,
        persist: bool = True,
    ) -> FleetState:
        """The fleet in ``path``; with ``persist`` every change is saved back to it.

        Raises ``InputError`` (every problem, as FILE:LINE:COL) for a missing or invalid file.
        """
        path = Path(path)
        data, signature = _read_fleet(path)
        state = cls(data, clock=clock, op_seconds=op_seconds, path=path, persist=persist)
        state._file_signature = signature
        return state

    def _install(self, data: Mapping[str, Any]) -> None:
        self.credentials: list[Credential] = [
            Credential(item["secret_id"], item["secret_key"]) for item in data.get("credentials") or []
        ]
        self._secrets = {cred.secret_id: cred.secret_key for cred in self.credentials}
        self._regions: dict[str, _Region] = {}
        for written, raw in (data.get("regions") or {}).items():
            long_name = canonical_region(written)
            self._regions[long_name] = _Region(written, long_name, raw)

    def to_data(self) -> dict[str, Any]:
        """The settled view as fleet-file data."""
        with self._lock:
            return {
                "credentials": [
                    {"secret_id": c.secret_id, "secret_key": c.secret_key} for c in self.credentials
                ],
                "regions": {r.written_name: r.to_data() for r in self._regions.values()},
            }

    def __repr__(self) -> str:
        where = str(self.path) if self.path else "memory"
        return f"<FleetState {where}: {', '.join(self._regions)}>"

    # ------------------------------------------------------------------ persistence

    def _refresh(self) -> None:
        """Re-read the fleet file if another process wrote it since we read or wrote it."""
        if self.path is None or not self.persist:
            return
        try:
            stat = os.stat(self.path)
        except FileNotFoundError:
            return
        if (stat.st_mtime_ns, stat.st_size, stat.st_ino) == self._file_signature:
            return
        data, signature = _read_fleet(self.path)
        self._install(data)
        self._file_signature = signature

    def _save(self) -> None:
        assert self.path is not None
        text = render_fleet(
            [item_line({"secret_id": c.secret_id, "secret_key": c.secret_key}) for c in self.credentials],
            [(r.written_name, *r.to_lines()) for r in self._regions.values()],
        )
        directory = self.path.parent
        fd, temp = tempfile.mkstemp(prefix=f".{self.path.name}.", suffix=".tmp", dir=directory)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                handle.write(text)
            with contextlib.suppress(FileNotFoundError):  # keep the file's permissions
                os.chmod(temp, os.stat(self.path).st_mode & 0o777)
            os.replace(temp, self.path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(temp)
            raise
        stat = os.stat(self.path)
        self._file_signature = (stat.st_mtime_ns, stat.st_size, stat.st_ino)
        self.saves += 1

    @contextmanager
    def _changing(self) -> Iterator[list[bool]]:
        """Hold both locks, read the file afresh, and save afterwards if ``changed[0]`` is set."""
        changed = [False]
        with self._lock:
            if not self.persist:
                yield changed
                return
            assert self.path is not None
            with FileLock(f"{self.path}.lock"):
                self._refresh()
                yield changed
                if changed[0]:
                    self._save()

    def refresh(self) -> None:
        """Pick up changes another process saved to the fleet file (called on every request)."""
        with self._lock:
            self._refresh()

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
            raise ApiFault(
                CODE_INVALID_PARAMETER,
                f"unknown region {region!r} (known: {', '.join(KNOWN_REGIONS)})",
            ) from None
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
        return pending

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
        return InstanceView(
            instance_id=iid,
            name=raw["name"],
            os=raw["os"],
            status=p.status if p is not None else int(raw["status"]),
            region=r.long_name,
            zone=raw.get("zone", f"{r.long_name}-1"),
            lan_ip=raw.get("lan_ip") or _default_lan_ip(iid),
            wan_ips=tuple(raw.get("wan_ips") or ()),
            created=created,
            status_time=self._status_times.get((r.long_name, iid), created),
            key_ids=tuple(sorted(keys)),
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
        with self._lock:
            r = self._region(region)
            pending = self._active_pending(r.long_name, self.clock())
            return {(kid, iid) for kid in r.keys for iid in self._key_members(r, kid, pending)}

    def instance_status(self, region: str, instance_id: str) -> int:
        """The status the API reports now (transient 20/9/8 included). KeyError if unknown."""
        with self._lock:
            r = self._region(region)
            if instance_id not in r.instances:
                raise KeyError(instance_id)
            return self._status(r, instance_id, self._active_pending(r.long_name, self.clock()))

    def settled_status(self, region: str, instance_id: str) -> int:
        """The status once running operations have finished. KeyError if unknown."""
        with self._lock:
            return int(self._region(region).instances[instance_id]["status"])

    def instance(self, region: str, instance_id: str) -> InstanceView:
        """The instance as reported now. KeyError if unknown."""
        with self._lock:
            r = self._region(region)
            if instance_id not in r.instances:
                raise KeyError(instance_id)
            return self._instance_view(r, instance_id, self._active_pending(r.long_name, self.clock()))

    def key(self, region: str, key_id: str) -> KeyView:
        """The key pair as reported now. KeyError if unknown."""
        with self._lock:
            r = self._region(region)
            if key_id not in r.keys:
                raise KeyError(key_id)
            return self._key_view(r, key_id, self._active_pending(r.long_name, self.clock()))

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
            self._pending.get(r.long_name, {}).pop(instance_id, None)
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
        with self._lock:
            r = self._region(region)
            pending = self._active_pending(r.long_name, self.clock())
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
        with self._lock:
            r = self._region(region)
            pending = self._active_pending(r.long_name, self.clock())
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
            raise ApiFault(
                CODE_NOT_FOUND,
                f"{', '.join(missing)} not found in region {r.long_name}",
            )

    def check_key_operation(self, action: str, region: str, key_id: str, instance_ids: Iterable[str]) -> None:
        """Raise the ``ApiFault`` a bind/unbind of these instances would get now, if any."""
        with self._lock:
            r = self._region(region)
            ids = list(dict.fromkeys(instance_ids))
            self._require(r, key_id, ids)
            pending = self._active_pending(r.long_name, self.clock())
            refusals = []
            for iid in ids:
                raw = r.instances[iid]
                status = self._status(r, iid, pending)
                if "windows" in str(raw["os"]).lower():
                    refusals.append(f"instance {iid} ({raw['name']}) runs Windows ({raw['os']})")
                elif status != STATUS_SHUT_DOWN:
                    refusals.append(_refusal(iid, raw, status))
            if refusals:
                verb = "bound to" if action == "BindInstanceKey" else "unbound from"
                raise ApiFault(
                    CODE_OPERATION_FAILED,
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
            self.mutations.append(Mutation(now, r.long_name, action, key_id, ids))

    def _start_transient(
        self, r: _Region, iid: str, status: int, now: float, keys: frozenset[str] | None
    ) -> None:
        if self.op_seconds > 0:
            self._pending.setdefault(r.long_name, {})[iid] = _Pending(status, now + self.op_seconds, keys)

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
            refusals = [
                _refusal(iid, r.instances[iid], self._status(r, iid, pending))
                for iid in ids
                if self._status(r, iid, pending) != need
            ]
            if refusals:
                raise ApiFault(
                    CODE_OPERATION_FAILED,
                    f"{action} refused, nothing changed: only instances that are "
                    f"{status_name(need)} (status {need}) can be "
                    f"{'stopped' if need == STATUS_RUNNING else 'started'}: {'; '.join(refusals)}",
                )
            stamp = _format_time(now)
            for iid in ids:
                r.set_status(iid, final)
                self._status_times[(r.long_name, iid)] = stamp
                self._start_transient(r, iid, transient, now, None)
            changed[0] = True
            self.mutations.append(Mutation(now, r.long_name, action, None, ids))


def _dotted(path: tuple[str | int, ...]) -> str:
    return ".".join(str(step) for step in path if step != AT_KEY) or "<top>"


def _read_fleet(path: Path) -> tuple[dict[str, Any], tuple[int, int, int]]:
    """Parse and check a fleet file; its data and (mtime_ns, size, inode) as read."""
    file = str(path)
    try:
        with open(path, "rb") as handle:
            stat = os.fstat(handle.fileno())
            if stat.st_size > MAX_FLEET_BYTES:
                limit = MAX_FLEET_BYTES // 2**20
                raise InputError([Problem(file, f"fleet file of {stat.st_size:,} bytes: over {limit} MiB")])
            raw = handle.read()
    except FileNotFoundError:
        raise InputError([Problem(file, "fleet file not found")], hint="see examples/fleet.yaml") from None
    except OSError as error:
        raise InputError([Problem(file, f"cannot read fleet file: {error.strerror}")]) from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as error:
        raise InputError([Problem(file, f"not UTF-8 text (byte {error.start})")]) from None
    data = parse_fleet_text(text, file)
    problems = check_fleet(data)
    if problems:
        raise problems_to_error(text, file, problems)
    return data, (stat.st_mtime_ns, stat.st_size, stat.st_ino)
