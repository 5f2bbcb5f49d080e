"""The audit log: one JSON line per API call attempt, appended to ``--audit-log FILE``.

Fed by the client's ``on_attempt`` hook (wired up by ``operations``). What UTF-8 cannot encode
(a lone surrogate in an API message) is written as its JSON escape (``\udc80``), which reads
back as the same string. A log that cannot be written (disk full, file gone) never stops the
calls: the first failure is kept in ``failure`` and reported with apply's result. A record holds time, action,
region, keyId, instanceIds, attempt, result code, message, HTTP status and duration; the client
never puts a secret, a signature or a full URL into an ``AttemptRecord``, so none can land here.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import threading
from pathlib import Path
from types import TracebackType
from typing import IO

from reconciler.cloud.base import AttemptRecord
from reconciler.errors import ConfigError


def _why(error: Exception) -> str:
    return error.strerror if isinstance(error, OSError) and error.strerror else type(error).__name__


class AuditLog:
    """Appends attempt records to a file as JSON lines; safe to call from several threads."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self.failure: str | None = None  # why the log stopped being written, if it did
        # Line-buffered append: each record reaches the file as soon as it is written.
        # backslashreplace: a lone surrogate (only ever inside a JSON string here) becomes
        # "\udc80", its JSON escape, instead of an exception in the middle of an apply.
        try:
            self._file: IO[str] = open(  # noqa: SIM115
                path, "a", encoding="utf-8", errors="backslashreplace", buffering=1
            )
        except OSError as error:
            raise ConfigError(f"cannot open the audit log {path}: {error.strerror or error}") from None

    def __call__(self, record: AttemptRecord) -> None:
        # API 3.0 only (absent from 2.0 lines, which stay as they were): the answer's RequestId
        # and the keys of a multi-key DisassociateInstancesKeyPairs.
        extra: dict[str, object] = {}
        if record.request_id is not None:
            extra["requestId"] = record.request_id
        if record.key_ids:
            extra["keyIds"] = list(record.key_ids)
        line = json.dumps(
            {
                **extra,
                "time": dt.datetime.fromtimestamp(record.time, tz=dt.timezone.utc).isoformat(),
                "action": record.action,
                "region": record.region,
                "keyId": record.key_id,
                "instanceIds": list(record.instance_ids),
                "attempt": record.attempt,
                "code": record.code,
                "message": record.message,
                "httpStatus": record.http_status,
                "durationMs": round(record.duration_s * 1000, 1),
                "pid": os.getpid(),
            },
            ensure_ascii=False,
            sort_keys=True,
        )
        with self._lock:
            if self.failure is not None:
                return
            try:
                self._file.write(line + "\n")
            except (OSError, ValueError) as error:
                self.failure = (
                    f"the audit log {self.path} could not be written ({_why(error)}); "
                    "the calls after that are not in it"
                )

    def close(self) -> None:
        with self._lock:
            try:
                self._file.close()
            except OSError as error:
                if self.failure is None:
                    self.failure = f"the audit log {self.path} could not be written ({_why(error)})"

    def __enter__(self) -> AuditLog:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
