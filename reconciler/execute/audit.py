"""The audit log: one JSON line per API call attempt, appended to ``--audit-log FILE``.

Fed by the client's ``on_attempt`` hook (wired up in the CLI). A record holds time, action,
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

from reconciler.cloud.client import AttemptRecord


class AuditLog:
    """Appends attempt records to a file as JSON lines; safe to call from several threads."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        # Line-buffered append: each record reaches the file as soon as it is written.
        self._file: IO[str] = open(path, "a", encoding="utf-8", buffering=1)  # noqa: SIM115

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
            self._file.write(line + "\n")

    def close(self) -> None:
        with self._lock:
            self._file.close()

    def __enter__(self) -> AuditLog:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
