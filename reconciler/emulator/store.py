"""The emulator's live state on disk: one SQLite database per fleet fixture, shared by processes.

Called by ``emulator/state.py`` only. The fleet file is a fixture, read and never written; what
API calls change lives here (statuses, bindings, transient states and their phases, the 3.0
latest operations, StoppedMode STOP_CHARGING, temporary credentials STS issued), so that the in-process
``--emulator FILE`` and ``cvmkeys emulator serve --fleet FILE`` of the same file see one world,
across processes and restarts.

How it stays cheap and safe:

* WAL mode, one ``BEGIN IMMEDIATE`` transaction per mutating API call: a killed process leaves
  either the whole call or nothing, and readers never wait for a writer.
* Each process keeps the fleet in memory (``FleetState``) and applies only what changed: every
  write appends rows to ``changes`` (what changed, not its value); another process reads the
  rows after the last one it saw and re-reads just those items. A call costs what it changes.
* ``meta.epoch`` changes when the whole state is replaced (fixture edited, ``emulator reset``):
  processes that see a new epoch load everything again. ``changes`` is pruned; a process that
  fell behind the pruned rows loads everything too.
* ``meta.fixture_sha256`` is the SHA-256 of the fixture bytes the state was built from; a
  different fixture rebuilds the state.

Look at it with ``sqlite3 fleet.yaml.state.sqlite 'select region, key_id, instance_id from
bindings'`` (docs/emulator.md lists the tables).
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import time
from collections.abc import Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from reconciler.ids import canonical_region

# Bump when the tables change: a database of another version is rebuilt from its fixture.
SCHEMA_VERSION = "2"
# Set to a path to keep the state elsewhere than beside the fixture (``--state`` wins).
STATE_ENV = "CVMKEYS_EMULATOR_STATE"
STATE_SUFFIX = ".state.sqlite"
# Rows of ``changes`` kept; older ones are pruned (a process further behind reloads all).
KEEP_CHANGES = 20_000
# Another process's write transaction is waited for this long before giving up.
BUSY_TIMEOUT_MS = 60_000

_DDL = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS credentials (ord INTEGER PRIMARY KEY, secret_id TEXT NOT NULL,
    secret_key TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS regions (ord INTEGER PRIMARY KEY, long_name TEXT NOT NULL UNIQUE,
    written_name TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS instances (region TEXT NOT NULL, id TEXT NOT NULL, ord INTEGER NOT NULL,
    item TEXT NOT NULL, status INTEGER NOT NULL, status_time TEXT,
    stop_charging INTEGER NOT NULL DEFAULT 0, PRIMARY KEY (region, id)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS keys (region TEXT NOT NULL, id TEXT NOT NULL, ord INTEGER NOT NULL,
    item TEXT NOT NULL, PRIMARY KEY (region, id)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS bindings (region TEXT NOT NULL, key_id TEXT NOT NULL,
    instance_id TEXT NOT NULL, ord INTEGER NOT NULL,
    PRIMARY KEY (region, key_id, instance_id)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS pending (region TEXT NOT NULL, instance_id TEXT NOT NULL,
    phases TEXT NOT NULL, PRIMARY KEY (region, instance_id)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS operations (region TEXT NOT NULL, instance_id TEXT NOT NULL,
    n INTEGER NOT NULL, action TEXT NOT NULL, request_id TEXT NOT NULL, due REAL NOT NULL,
    visible REAL NOT NULL, outcome TEXT NOT NULL, error TEXT,
    PRIMARY KEY (region, instance_id, n)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS sts_credentials (secret_id TEXT PRIMARY KEY, secret_key TEXT NOT NULL,
    token TEXT NOT NULL, expires REAL NOT NULL, arn TEXT NOT NULL, account_id TEXT NOT NULL,
    user_id TEXT NOT NULL, principal_id TEXT NOT NULL, type TEXT NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS changes (seq INTEGER PRIMARY KEY AUTOINCREMENT, region TEXT NOT NULL,
    kind TEXT NOT NULL, a TEXT NOT NULL, b TEXT);
"""

# What a change row names: ``status`` (a = instance: status, its time, STOP_CHARGING),
# ``binding`` (a = key, b = instance), ``pending`` (a = instance: its phases), ``operation``
# (a = instance: its latest operations), ``credential`` (region "", a = an STS SecretId).
Change = tuple[str, str, str, str | None]  # (region, kind, a, b)
# A transient phase: (until, 2.0 status reported until then, keys reported meanwhile or None).
Phase = tuple[float, int, list[str] | None]
# A latest operation: (action, request_id, due, visible, outcome, error).
OperationRow = tuple[str, str, float, float, str, str | None]
# STS credentials: (secret_id, secret_key, token, expires, arn, account_id, user_id,
# principal_id, type).
CredentialRow = tuple[str, str, str, float, str, str, str, str, str]


def default_state_path(fixture: Path, explicit: Path | None = None) -> Path:
    """Where the state of ``fixture`` lives: ``explicit``, else $CVMKEYS_EMULATOR_STATE, else
    ``<fixture>.state.sqlite`` beside it."""
    if explicit is not None:
        return Path(explicit)
    from_env = os.environ.get(STATE_ENV)
    if from_env:
        return Path(from_env)
    return fixture.with_name(fixture.name + STATE_SUFFIX)


@dataclass
class Snapshot:
    """The whole state as read in one transaction."""

    data: dict[str, Any]  # fleet-file shaped: credentials, regions -> instances/keys(+bound)
    status_times: dict[tuple[str, str], str] = field(default_factory=dict)
    pending: list[tuple[str, str, list[Phase]]] = field(default_factory=list)  # (region, instance, phases)
    operations: dict[tuple[str, str], list[OperationRow]] = field(default_factory=dict)
    stop_charging: set[tuple[str, str]] = field(default_factory=set)
    credentials: list[CredentialRow] = field(default_factory=list)  # issued by STS
    epoch: str = ""
    seq: int = 0


class Store:
    """One connection to a state database. Not thread-safe: ``FleetState`` holds its lock."""

    def __init__(self, path: Path) -> None:
        self.path = path
        fresh = not path.exists()
        # isolation_level=None: transactions are begun and ended explicitly, one per call.
        self.db = sqlite3.connect(
            str(path), isolation_level=None, check_same_thread=False, timeout=BUSY_TIMEOUT_MS / 1000
        )
        if fresh:
            # The fixture's emulator-only credentials are copied here: keep the file private.
            with contextlib.suppress(OSError):
                os.chmod(path, 0o600)
        self.db.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        self._use_wal()
        # NORMAL is crash-safe in WAL mode for a killed process (only power loss may lose the
        # last calls), and saves an fsync per call.
        self.db.execute("PRAGMA synchronous = NORMAL")
        with self.write():
            for statement in _DDL.split(";"):
                if statement.strip():
                    self.db.execute(statement)

    def _use_wal(self) -> None:
        # WAL is a property of the file: once set, every later connection finds it. Switching
        # to it needs an exclusive lock and SQLite does not wait for the busy timeout there, so
        # two connections opening a new state at once must retry rather than fail.
        deadline = time.monotonic() + BUSY_TIMEOUT_MS / 1000
        while self.db.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
            try:
                self.db.execute("PRAGMA journal_mode = WAL")
            except sqlite3.OperationalError as error:
                if "locked" not in str(error) or time.monotonic() > deadline:
                    raise
                time.sleep(0.01)

    def close(self) -> None:
        self.db.close()

    @contextlib.contextmanager
    def write(self) -> Iterator[sqlite3.Connection]:
        """One write transaction: taken at once (other writers wait), committed or rolled back."""
        self.db.execute("BEGIN IMMEDIATE")
        try:
            yield self.db
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        self.db.execute("COMMIT")

    @contextlib.contextmanager
    def read(self) -> Iterator[sqlite3.Connection]:
        """One read transaction: a consistent snapshot while other processes write."""
        if self.db.in_transaction:  # already inside a write: it sees its own snapshot
            yield self.db
            return
        self.db.execute("BEGIN")
        try:
            yield self.db
        finally:
            self.db.execute("COMMIT")

    # ------------------------------------------------------------------ meta

    def meta(self, key: str) -> str | None:
        row = self.db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else str(row[0])

    def _set_meta(self, key: str, value: str) -> None:
        self.db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (key, value))

    def built_from(self) -> str | None:
        """The fixture SHA-256 the state was built from, or None (empty or other version)."""
        if self.meta("schema_version") != SCHEMA_VERSION:
            return None
        return self.meta("fixture_sha256")

    # ------------------------------------------------------------------ whole state

    def replace_all(self, data: Mapping[str, Any], fixture: Path, sha256: str) -> None:
        """Replace the state with fixture ``data`` (inside ``write()``); a new epoch."""
        db = self.db
        tables = ("credentials", "regions", "instances", "keys", "bindings", "pending", "operations")
        for table in (*tables, "sts_credentials", "changes"):
            db.execute(f"DELETE FROM {table}")  # fixed table names, not input
        db.executemany(
            "INSERT INTO credentials (ord, secret_id, secret_key) VALUES (?, ?, ?)",
            [(n, c["secret_id"], c["secret_key"]) for n, c in enumerate(data.get("credentials") or [])],
        )
        for n, (written, raw) in enumerate((data.get("regions") or {}).items()):
            region = canonical_region(written)
            db.execute(
                "INSERT INTO regions (ord, long_name, written_name) VALUES (?, ?, ?)", (n, region, written)
            )
            raw = raw or {}
            db.executemany(
                "INSERT INTO instances (region, id, ord, item, status) VALUES (?, ?, ?, ?, ?)",
                (
                    (region, item["id"], i, json.dumps(item, ensure_ascii=False), item["status"])
                    for i, item in enumerate(raw.get("instances") or [])
                ),
            )
            keys = raw.get("keys") or []
            db.executemany(
                "INSERT INTO keys (region, id, ord, item) VALUES (?, ?, ?, ?)",
                (
                    (region, key["id"], k, json.dumps({f: v for f, v in key.items() if f != "bound"}))
                    for k, key in enumerate(keys)
                ),
            )
            db.executemany(
                "INSERT INTO bindings (region, key_id, instance_id, ord) VALUES (?, ?, ?, ?)",
                ((region, key["id"], iid, b) for key in keys for b, iid in enumerate(key.get("bound") or [])),
            )
        # The identity block (account, instance roles, web identity tokens) is fixture data too.
        self._set_meta("identity", json.dumps(data.get("identity") or {}))
        self._set_meta("schema_version", SCHEMA_VERSION)
        self._set_meta("fixture_sha256", sha256)
        self._set_meta("fixture_path", str(fixture.absolute()))
        self._set_meta("epoch", os.urandom(8).hex())
        self._set_meta("changes_floor", "0")

    def load(self) -> Snapshot:
        """The whole state, read in one transaction."""
        with self.read() as db:
            credentials = [
                {"secret_id": sid, "secret_key": key}
                for sid, key in db.execute("SELECT secret_id, secret_key FROM credentials ORDER BY ord")
            ]
            regions: dict[str, Any] = {}
            written_of: dict[str, str] = {}
            for long_name, written in db.execute("SELECT long_name, written_name FROM regions ORDER BY ord"):
                regions[written] = {"instances": [], "keys": []}
                written_of[long_name] = written
            status_times: dict[tuple[str, str], str] = {}
            stop_charging: set[tuple[str, str]] = set()
            rows = db.execute(
                "SELECT region, id, item, status, status_time, stop_charging FROM instances "
                "ORDER BY region, ord"
            ).fetchall()
            # Memory (100,000 instances, 300,000 bindings): one string per distinct text. The
            # items are decoded in one go, so json shares their field names; equal values (OS
            # names, IDs met again in the bindings) are shared through ``same``. About 35 MB
            # less at that size than a json.loads and a fresh ID string per row.
            same: dict[str, str] = {}
            items = json.loads("[" + ",".join(row[2] for row in rows) + "]") if rows else []
            for (region, iid, _, status, status_time, charging), raw in zip(rows, items, strict=True):
                for field, value in raw.items():
                    if value.__class__ is str:
                        raw[field] = same.setdefault(value, value)
                raw["status"] = status
                regions[written_of[region]]["instances"].append(raw)
                iid = raw.get("id", iid)
                if status_time is not None:
                    status_times[(region, iid)] = status_time
                if charging:
                    stop_charging.add((region, iid))
            del rows, items
            key_items: dict[tuple[str, str], dict[str, Any]] = {}
            for region, kid, item in db.execute("SELECT region, id, item FROM keys ORDER BY region, ord"):
                raw = json.loads(item)
                key_items[(region, kid)] = raw
                regions[written_of[region]]["keys"].append(raw)
            for region, kid, iid in db.execute(
                "SELECT region, key_id, instance_id FROM bindings ORDER BY region, key_id, ord"
            ):
                key_items[(region, kid)].setdefault("bound", []).append(same.get(iid, iid))
            del same
            pending = [
                (region, iid, _phases(phases))
                for region, iid, phases in db.execute("SELECT region, instance_id, phases FROM pending")
            ]
            operations: dict[tuple[str, str], list[OperationRow]] = {}
            for region, iid, *op in db.execute(
                "SELECT region, instance_id, action, request_id, due, visible, outcome, error "
                "FROM operations ORDER BY region, instance_id, n"
            ):
                operations.setdefault((region, iid), []).append(_operation(op))
            issued = [
                _credential(row) for row in db.execute(f"SELECT {_CREDENTIAL_COLUMNS} FROM sts_credentials")
            ]
            identity = json.loads(self.meta("identity") or "{}")
            epoch = self.meta("epoch") or ""
            row = db.execute("SELECT max(seq) FROM changes").fetchone()
            seq = int(row[0] or 0)
        data: dict[str, Any] = {"credentials": credentials, "regions": regions}
        if identity:
            data["identity"] = identity
        return Snapshot(data, status_times, pending, operations, stop_charging, issued, epoch, seq)

    # ------------------------------------------------------------------ changes

    def changes_since(self, seq: int) -> tuple[str, int, list[tuple[int, str, str, str, str | None]]]:
        """(epoch, oldest change still kept, change rows after ``seq``), in one snapshot."""
        with self.read() as db:
            epoch = self.meta("epoch") or ""
            floor = int(self.meta("changes_floor") or 0)
            rows = db.execute(
                "SELECT seq, region, kind, a, b FROM changes WHERE seq > ? ORDER BY seq", (seq,)
            ).fetchall()
        return epoch, floor, rows

    def status_of(self, region: str, iid: str) -> tuple[int, str | None, bool] | None:
        """(status, status time, stopped with STOP_CHARGING) of an instance, or None."""
        row = self.db.execute(
            "SELECT status, status_time, stop_charging FROM instances WHERE region = ? AND id = ?",
            (region, iid),
        ).fetchone()
        return None if row is None else (int(row[0]), row[1], bool(row[2]))

    def is_bound(self, region: str, kid: str, iid: str) -> bool:
        row = self.db.execute(
            "SELECT 1 FROM bindings WHERE region = ? AND key_id = ? AND instance_id = ?", (region, kid, iid)
        ).fetchone()
        return row is not None

    def pending_of(self, region: str, iid: str) -> list[Phase] | None:
        row = self.db.execute(
            "SELECT phases FROM pending WHERE region = ? AND instance_id = ?", (region, iid)
        ).fetchone()
        return None if row is None else _phases(row[0])

    def operations_of(self, region: str, iid: str) -> list[OperationRow]:
        """An instance's latest operations, oldest first."""
        return [
            _operation(row)
            for row in self.db.execute(
                "SELECT action, request_id, due, visible, outcome, error FROM operations "
                "WHERE region = ? AND instance_id = ? ORDER BY n",
                (region, iid),
            )
        ]

    def credential_of(self, secret_id: str) -> CredentialRow | None:
        row = self.db.execute(
            f"SELECT {_CREDENTIAL_COLUMNS} FROM sts_credentials WHERE secret_id = ?", (secret_id,)
        ).fetchone()
        return None if row is None else _credential(row)

    def save_status(
        self, region: str, iid: str, status: int, status_time: str | None, stop_charging: bool = False
    ) -> None:
        self.db.execute(
            "UPDATE instances SET status = ?, status_time = ?, stop_charging = ? WHERE region = ? AND id = ?",
            (status, status_time, int(stop_charging), region, iid),
        )

    def save_binding(self, region: str, kid: str, iid: str, bound: bool) -> None:
        if bound:
            self.db.execute(
                "INSERT OR IGNORE INTO bindings (region, key_id, instance_id, ord) VALUES (?, ?, ?, "
                "(SELECT coalesce(max(ord), -1) + 1 FROM bindings WHERE region = ? AND key_id = ?))",
                (region, kid, iid, region, kid),
            )
        else:
            self.db.execute(
                "DELETE FROM bindings WHERE region = ? AND key_id = ? AND instance_id = ?", (region, kid, iid)
            )

    def save_pending(
        self, region: str, iid: str, phases: Sequence[tuple[float, int, Collection[str] | None]] | None
    ) -> None:
        if phases is None:
            self.db.execute("DELETE FROM pending WHERE region = ? AND instance_id = ?", (region, iid))
            return
        text = json.dumps(
            [[until, status, None if keys is None else sorted(keys)] for until, status, keys in phases]
        )
        self.db.execute(
            "INSERT OR REPLACE INTO pending (region, instance_id, phases) VALUES (?, ?, ?)",
            (region, iid, text),
        )

    def save_operations(self, region: str, iid: str, history: Sequence[OperationRow]) -> None:
        self.db.execute("DELETE FROM operations WHERE region = ? AND instance_id = ?", (region, iid))
        self.db.executemany(
            "INSERT INTO operations (region, instance_id, n, action, request_id, due, visible, outcome, "
            "error) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            ((region, iid, n, *op) for n, op in enumerate(history)),
        )

    def save_credential(self, secret_id: str, row: CredentialRow | None) -> None:
        """Keep (or, with None, forget) temporary credentials STS issued."""
        if row is None:
            self.db.execute("DELETE FROM sts_credentials WHERE secret_id = ?", (secret_id,))
            return
        self.db.execute(
            f"INSERT OR REPLACE INTO sts_credentials ({_CREDENTIAL_COLUMNS}) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            row,
        )

    def log_changes(self, changes: Sequence[Change]) -> int:
        """Append change rows (inside ``write()``); the last sequence number, pruning old rows."""
        self.db.executemany("INSERT INTO changes (region, kind, a, b) VALUES (?, ?, ?, ?)", changes)
        row = self.db.execute("SELECT max(seq) FROM changes").fetchone()
        last = int(row[0] or 0)
        floor = int(self.meta("changes_floor") or 0)
        if last - floor > 2 * KEEP_CHANGES:
            floor = last - KEEP_CHANGES
            self.db.execute("DELETE FROM changes WHERE seq <= ?", (floor,))
            self._set_meta("changes_floor", str(floor))
        return last


_CREDENTIAL_COLUMNS = "secret_id, secret_key, token, expires, arn, account_id, user_id, principal_id, type"


def _phases(text: str) -> list[Phase]:
    return [
        (float(until), int(status), None if keys is None else [str(k) for k in keys])
        for until, status, keys in json.loads(text)
    ]


def _operation(row: Sequence[Any]) -> OperationRow:
    action, request_id, due, visible, outcome, error = row
    return str(action), str(request_id), float(due), float(visible), str(outcome), error


def _credential(row: Sequence[Any]) -> CredentialRow:
    sid, key, token, expires, arn, account, user, principal, kind = row
    return (
        str(sid),
        str(key),
        str(token),
        float(expires),
        str(arn),
        str(account),
        str(user),
        str(principal),
        str(kind),
    )
