"""The CVM API 3.0 client (``cvm.tencentcloudapi.com``, Version 2017-03-12): the only code that
knows 3.0's CVM wire format. It implements ``reconciler.cloud.base.CloudClient``.

Reads: ``DescribeKeyPairs`` (all keys in pages of 100, or ``KeyIds`` in batches of 100;
``AssociatedInstanceIds`` are the bindings) and ``DescribeInstances`` (``InstanceIds``, 100 a
call). Writes: ``DisassociateInstancesKeyPairs`` (up to 100 keys x 100 instances, every key off
every instance, ``ForceStop=false``), ``StopInstances`` (``StopType`` SOFT or HARD,
``StoppedMode=KEEP_CHARGING``), ``StartInstances``. The writes are asynchronous on Tencent's side:
:class:`~reconciler.cloud.base.CallResult` carries the call's RequestId, which the instance's
``LatestOperationRequestId`` names while (and after) the operation runs.

Signing, the envelope, error classification, rate limits and retries: ``reconciler.cloud.tc3call``.
ID checks are the 2.0 client's (one rule for what an ID is). Raw JSON never leaves this module.
The client is thread-safe; multi-page and multi-batch reads run concurrently on a small pool.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from reconciler.cloud.base import AnswerShapeError as _Shape
from reconciler.cloud.base import (
    CallResult,
    check_answered,
    check_key_id,
    id_list,
)
from reconciler.cloud.client import _batch_ids
from reconciler.cloud.credentials import CredentialsProvider
from reconciler.cloud.endpoint import API3_ENDPOINT, API3_PATH
from reconciler.cloud.pooled import PooledClient
from reconciler.cloud.retry import ClientTuning
from reconciler.cloud.tc3call import (
    Tc3Auth,
    Tc3Caller,
    field_dict,
    field_int,
    field_list,
    field_str,
)
from reconciler.common import short_repr as _show
from reconciler.ids import is_instance_id, is_key_id
from reconciler.model import (
    ApiVersion,
    Instance,
    InstanceState,
    KeyPair,
)

SERVICE = "cvm"
VERSION = "2017-03-12"
PAGE_SIZE = 100  # DescribeKeyPairs / DescribeInstances Limit maximum
MAX_IDS_PER_CALL = 100  # InstanceIds and KeyIds of every action
DISASSOCIATE = "DisassociateInstancesKeyPairs"
MUTATING_ACTIONS = frozenset({DISASSOCIATE, "AssociateInstancesKeyPairs", "StopInstances", "StartInstances"})
# Requests a second per action, as documented (cvm-api-3.0.md section 6): the one table.

# The one map from 3.0's InstanceState to the API-neutral state; anything else is OTHER.
INSTANCE_STATES: Mapping[str, InstanceState] = {
    "RUNNING": InstanceState.RUNNING,
    "STOPPED": InstanceState.STOPPED,
    "STARTING": InstanceState.STARTING,
    "STOPPING": InstanceState.STOPPING,
}
OPERATING = "OPERATING"  # LatestOperationState of an operation still running: the instance is BUSY


def instance_state(api_state: str, latest_operation_state: str | None) -> InstanceState:
    """The API-neutral state: an operation still running makes any instance BUSY."""
    if latest_operation_state == OPERATING:
        return InstanceState.BUSY
    return INSTANCE_STATES.get(api_state, InstanceState.OTHER)


def _required_id(item: Mapping[str, Any], name: str, is_id: Callable[[object], bool], what: str) -> str:
    """The ID field ``name`` of an answer's entry, which must be an ID (``is_id``)."""
    value = field_str(item, name)
    if not is_id(value):
        raise _Shape(f"{name} {_show(value)} is not {what}")
    assert value is not None
    return value


def _parse_key(entry: object) -> KeyPair:
    item = field_dict(entry, "a KeyPairSet entry")
    key_id = _required_id(item, "KeyId", is_key_id, "a key ID")
    bound = field_list(item, "AssociatedInstanceIds", optional=True)
    for instance_id in bound:
        if not is_instance_id(instance_id):
            raise _Shape(f"AssociatedInstanceIds of {key_id} holds {_show(instance_id)}")
    return KeyPair(
        key_id=key_id,
        name=field_str(item, "KeyName", optional=True) or "",
        bound_instance_ids=tuple(dict.fromkeys(bound)),
    )


def _parse_instance(entry: object) -> Instance:
    item = field_dict(entry, "an InstanceSet entry")
    instance_id = _required_id(item, "InstanceId", is_instance_id, "an instance ID")
    api_state = field_str(item, "InstanceState") or ""
    login = item.get("LoginSettings")
    if login is not None:
        # Only associated keys are listed here; checked so a malformed answer is not trusted.
        for key_id in field_list(field_dict(login, "LoginSettings"), "KeyIds", optional=True):
            if not is_key_id(key_id):
                raise _Shape(f"LoginSettings.KeyIds of {instance_id} holds {_show(key_id)}")
    operation_state = field_str(item, "LatestOperationState", optional=True)
    return Instance(
        instance_id=instance_id,
        name=field_str(item, "InstanceName", optional=True) or "",
        state=instance_state(api_state, operation_state),
        api_state=api_state,
        os=field_str(item, "OsName", optional=True) or "",
        latest_operation=field_str(item, "LatestOperation", optional=True),
        latest_operation_state=operation_state,
        latest_operation_request_id=field_str(item, "LatestOperationRequestId", optional=True),
        latest_operation_error=field_str(item, "LatestOperationErrorMsg", optional=True),
    )


def _parse_key_page(response: dict[str, Any]) -> tuple[int, list[KeyPair]]:
    total = field_int(response, "TotalCount")
    keys = [_parse_key(entry) for entry in field_list(response, "KeyPairSet", optional=True)]
    if total < 0 or len(keys) > PAGE_SIZE:
        raise _Shape("TotalCount or KeyPairSet size out of range")
    return total, keys


class Api3Client(PooledClient):
    """A synchronous, thread-safe CVM API 3.0 client for one region (``CloudClient``).

    ``credentials`` may be fixed :class:`Credentials` or a provider asked on every attempt
    (temporary credentials renewed before they expire). ``endpoint`` is the default
    ``https://cvm.tencentcloudapi.com/`` (``reconciler.cloud.endpoint.api3_endpoint`` builds the
    regional and international ones). The other keywords are ``retry.TuningArgs``, as the 2.0
    client's: ``transport`` replaces the network; ``rate_limit`` is by default the documented
    per-action figures (``model.DOCUMENTED_RATE_LIMITS``), one rate for all, or a table over
    them, ``None`` for no client-side limit (the in-process emulator); attempts, backoff,
    timeout, ``clock``, ``sleep``, ``rng``, ``max_workers``, ``on_attempt``.
    """

    api = ApiVersion.V3
    _thread_prefix = "cvmkeys-api3"

    default_endpoint = API3_ENDPOINT
    default_path = API3_PATH

    def _open(self, provider: CredentialsProvider, settings: ClientTuning) -> None:
        self._caller = Tc3Caller(
            service=SERVICE,
            version=VERSION,
            endpoint=self.endpoint,
            region=self.region,
            auth=Tc3Auth(provider, service=SERVICE, clock=settings.clock),
            mutating_actions=MUTATING_ACTIONS,
            tuning=settings,
        )

    @property
    def calls(self) -> Counter[str]:
        """HTTP requests sent so far, by action (every attempt counts); a snapshot copy."""
        return self._caller.calls

    def _close_http(self) -> None:
        self._caller.close()

    # ----------------------------------------------------------------- reads

    def _key_page(self, offset: int) -> tuple[int, list[KeyPair]]:
        params = {"Offset": offset, "Limit": PAGE_SIZE}
        return self._caller.call("DescribeKeyPairs", params, _parse_key_page)[0]

    def _key_batch(self, batch: Sequence[str]) -> list[KeyPair]:
        def parse(response: dict[str, Any]) -> list[KeyPair]:
            total, keys = _parse_key_page(response)
            check_answered(batch, [key.key_id for key in keys], total, "key", self._total_name)
            return keys

        params = {"KeyIds": list(batch), "Offset": 0, "Limit": PAGE_SIZE}
        return self._caller.call("DescribeKeyPairs", params, parse, key_ids=tuple(batch))[0]

    def _instance_batch(self, batch: Sequence[str]) -> list[Instance]:
        def parse(response: dict[str, Any]) -> list[Instance]:
            total = field_int(response, "TotalCount")
            instances = [_parse_instance(e) for e in field_list(response, "InstanceSet", optional=True)]
            found = [instance.instance_id for instance in instances]
            check_answered(batch, found, total, "instance", self._total_name)
            return instances

        params = {"InstanceIds": list(batch), "Offset": 0, "Limit": PAGE_SIZE}
        return self._caller.call("DescribeInstances", params, parse, instance_ids=tuple(batch))[0]

    # ----------------------------------------------------------------- writes

    def unbind(self, key_ids: Sequence[str], instance_ids: Sequence[str]) -> CallResult:
        """DisassociateInstancesKeyPairs: every key off every instance (1..100 of each, all
        STOPPED); ``ForceStop`` is always false. The whole call fails if one instance is refused."""
        keys = id_list(key_ids, check_key_id, "key_ids")
        if len(keys) != len(key_ids):
            raise ValueError("key_ids contains duplicates")
        if not 1 <= len(keys) <= MAX_IDS_PER_CALL:
            raise ValueError(f"a call takes 1 to {MAX_IDS_PER_CALL} key IDs, got {len(keys)}")
        ids = _batch_ids(instance_ids)
        params = {"InstanceIds": ids, "KeyIds": keys, "ForceStop": False}
        return self._mutate(DISASSOCIATE, params, tuple(keys), ids)

    def stop_instances(self, instance_ids: Sequence[str], *, hard: bool = False) -> CallResult:
        """StopInstances on 1..100 RUNNING instances: ``StopType`` SOFT (HARD with ``hard``),
        ``StoppedMode`` KEEP_CHARGING always (a STOP_CHARGING instance could not be unbound)."""
        ids = _batch_ids(instance_ids)
        params = {"InstanceIds": ids, "StopType": "HARD" if hard else "SOFT", "StoppedMode": "KEEP_CHARGING"}
        return self._mutate("StopInstances", params, (), ids)

    def start_instances(self, instance_ids: Sequence[str]) -> CallResult:
        """StartInstances on 1..100 STOPPED instances."""
        ids = _batch_ids(instance_ids)
        return self._mutate("StartInstances", {"InstanceIds": ids}, (), ids)

    def _mutate(
        self, action: str, params: dict[str, Any], key_ids: tuple[str, ...], ids: list[str]
    ) -> CallResult:
        def parse(response: dict[str, Any]) -> None:
            return None

        _, attempts, request_id = self._caller.call(
            action, params, parse, key_ids=key_ids, instance_ids=tuple(ids)
        )
        return CallResult(action, attempts, request_id)
