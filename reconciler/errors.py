"""The one error tree of cvmkeys. Every module raises these; only ``reconciler.cli`` catches them.

::

    CvmkeysError                 exit 1 unless said otherwise; ``hint`` says what to do next
    ├── InputError               bad desired-state / fleet / plan input; carries every Problem
    ├── ConfigError              credentials, endpoint, options that do not fit together
    ├── CloudError               talking to the CVM API failed (``retryable`` says if a retry may help)
    │   ├── ApiError             the API answered an error code (``kind``: what it means)
    │   └── TransportError       HTTP 5xx, timeouts, connection errors, unreadable answers
    ├── PlanRefusedError         a plan that must not be applied (errors in it, edited, stale, unsafe)
    │   ├── PlanIntegrityError   the saved plan file was edited or is not a plan
    │   ├── StalePlanError       live state changed since the plan was made
    │   └── UnsafePlanError      the plan trips a safety limit and --force was not given
    └── ApprovalError            apply was not confirmed (or could not be asked)

No exception text ever contains a secret key: the client never puts one in a message.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import ClassVar

from reconciler.common import plural


@dataclass(frozen=True, slots=True)
class Problem:
    """One thing wrong with an input, pointing at its place when one is known."""

    file: str
    message: str
    line: int | None = None
    column: int | None = None

    def __str__(self) -> str:
        if self.line is None:
            return f"{self.file}: {self.message}"
        return f"{self.file}:{self.line}:{self.column or 1}: {self.message}"


class CvmkeysError(Exception):
    """Base of every error the tool reports to its user."""

    exit_code: ClassVar[int] = 1

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint


class InputError(CvmkeysError):
    """An input file is invalid; ``problems`` lists every problem found, in file order."""

    def __init__(self, problems: list[Problem], *, hint: str | None = None) -> None:
        self.problems = list(problems)
        count = len(self.problems)
        summary = f"{plural(count, 'problem')} found"
        super().__init__(summary, hint=hint)


class ConfigError(CvmkeysError):
    """Credentials, endpoint or command-line options are missing or inconsistent."""


class ApiErrorKind(str, Enum):
    """What an API error means for the caller; each client maps its API's codes into it, so the
    executor branches on the kind, never on one API's codes."""

    THROTTLED = "throttled"  # over the API's rate limit: refused unprocessed, retry after a pause
    RETRYABLE = "retryable"  # transient, on a read: retry may help
    BUSY = "busy"  # the instance is busy with another operation: wait, then retry
    BLOCKED = "blocked"  # instance state / Windows / stopped-mode charging: not attempted again
    NOT_FOUND = "not-found"  # a resource is gone: observe again
    AMBIGUOUS = "ambiguous"  # a mutating call may have been carried out: observe, never blind retry
    AUTH = "auth"  # credentials or permissions: a clear error with a hint
    INVALID = "invalid"  # permanent: the request is wrong


class CloudError(CvmkeysError):
    """A call to the CVM API failed."""

    def __init__(self, message: str, *, action: str, retryable: bool, hint: str | None = None):
        super().__init__(message, hint=hint)
        self.action = action
        self.retryable = retryable

    @property
    def throttled(self) -> bool:
        """Refused for the API's rate limit, so certainly not carried out (``ApiError`` only)."""
        return False


class ApiError(CloudError):
    """The API answered with an error: ``code`` is 2.0's integer or 3.0's string code; ``kind``
    (set by the client that read it) says what it means for the caller."""

    def __init__(
        self,
        action: str,
        code: int | str,
        api_message: str,
        *,
        kind: ApiErrorKind = ApiErrorKind.INVALID,
        request_id: str | None = None,
        hint: str | None = None,
    ) -> None:
        super().__init__(
            f"{action} failed: code {code}: {api_message}"
            + (f" (RequestId {request_id})" if request_id else ""),
            action=action,
            retryable=kind in (ApiErrorKind.RETRYABLE, ApiErrorKind.THROTTLED),
            hint=hint,
        )
        self.code = code
        self.api_message = api_message
        self.kind = kind
        self.request_id = request_id

    @property
    def throttled(self) -> bool:
        return self.kind is ApiErrorKind.THROTTLED


class TransportError(CloudError):
    """No usable API answer: HTTP 5xx, timeout, connection error, or a body that is not the API's.

    ``ambiguous`` is true when the request may have reached the server (a mutating call may
    have been carried out even though no answer came back).
    """

    def __init__(self, action: str, detail: str, *, retryable: bool = True, ambiguous: bool = True):
        super().__init__(f"{action} failed: {detail}", action=action, retryable=retryable)
        self.detail = detail
        self.ambiguous = ambiguous


class PlanRefusedError(CvmkeysError):
    """The plan must not be applied as it is."""


class PlanIntegrityError(PlanRefusedError):
    """A saved plan file was edited after it was written, or is not a cvmkeys plan."""


class StalePlanError(PlanRefusedError):
    """Live state that the plan depends on changed since the plan was made."""


class UnsafePlanError(PlanRefusedError):
    """The plan exceeds a safety limit and ``--force`` was not given."""


class ApprovalError(CvmkeysError):
    """The user did not approve the apply, or could not be asked."""
