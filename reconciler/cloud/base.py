"""The one client interface both CVM API clients implement (CONTRACT.md), and its result type.

The executor and the observers talk to a :class:`CloudClient`; which API is behind it (2.0's
``UnBindInstanceKey`` or 3.0's ``DisassociateInstancesKeyPairs``) is the client's business.

Note for the merge: helper H1 lands the same definitions (``Instance`` in ``reconciler.model``);
until then the 3.0 client takes the contract's ``Instance`` from here.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from reconciler.model import ApiVersion, InstanceState, KeyPair


@dataclass(frozen=True, slots=True)
class Instance:
    """An instance as either API reports it (only the fields this tool uses)."""

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
        """The one "is Windows" rule: the OS name says so."""
        return "windows" in self.os.lower()


@dataclass(frozen=True, slots=True)
class CallResult:
    """A mutating call that succeeded: how many attempts it took, and (3.0) its RequestId, so
    the executor can wait for exactly that operation."""

    action: str
    attempts: int
    request_id: str | None = None


class CloudClient(Protocol):
    """What the executor and the observers need from a CVM client, whichever API it speaks."""

    api: ApiVersion
    region: str

    @property
    def calls(self) -> Counter[str]: ...  # requests sent, by action

    def describe_key_pairs(self, key_ids: Sequence[str] | None = None) -> list[KeyPair]: ...

    def describe_instances(self, instance_ids: Sequence[str]) -> list[Instance]: ...

    def unbind(self, key_ids: Sequence[str], instance_ids: Sequence[str]) -> CallResult: ...

    # 2.0: len(key_ids) == 1 (UnBindInstanceKey); 3.0: DisassociateInstancesKeyPairs, ForceStop=false
    def stop_instances(self, instance_ids: Sequence[str], *, hard: bool = False) -> CallResult: ...

    def start_instances(self, instance_ids: Sequence[str]) -> CallResult: ...

    def close(self) -> None: ...
