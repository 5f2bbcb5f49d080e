"""Two peers' ways of applying the same change, for comparison with cvmkeys. Used by ``bench/run.py``.

* **per binding** (``peer_apply``): one unbind call per (key, instance) binding, then a
  DescribeInstances of that instance every ``poll_interval`` seconds until it leaves the
  operation, then the next binding. The most naive way; sequential.
* **Terraform-like** (``TerraformPeer.apply`` and ``TerraformPeer.refresh``): what
  terraform-provider-tencentcloud does when ``key_ids`` of ``tencentcloud_instance`` resources
  change. Plan time: a refresh, one DescribeInstances per managed instance (each resource reads
  itself), ``parallelism`` at once (``terraform -parallelism``, default 10). Apply: one
  resource per instance, ``parallelism`` at once; for each, the calls that remove its keys
  (API 3.0: one DisassociateInstancesKeyPairs with all of them; API 2.0 takes one key a call:
  one UnBindInstanceKey per key, the next one sent once a poll sees the instance idle again),
  then a sleep of ``sleep_s`` (the provider sleeps 10 s because the operation state may lag the
  call), then DescribeInstances of that instance every ``poll_interval`` until its operation is
  over (2.0: status 20 left; 3.0: LatestOperationState no longer OPERATING).

Both use our own client (same signing, same rate limit, so the comparison is about the
strategy only); 2.0 through ``CvmClient``, 3.0 through any client with the shared interface's
``unbind(key_ids, instance_ids)`` and ``describe_instances`` (``reconciler.cloud.base``).
"""

from __future__ import annotations

import threading
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from reconciler.model import InstanceState


@dataclass
class PeerResult:
    bindings: int = 0
    instances: int = 0
    wall_s: float = 0.0
    calls: dict[str, int] = field(default_factory=dict)
    failed: list[str] = field(default_factory=list)


def _delta(client: Any, before: Any) -> dict[str, int]:
    after = client.calls
    return {a: after[a] - before[a] for a in after if after[a] - before[a]}


def _busy(client: Any, instance_id: str) -> bool:
    # Both clients map their API's busy word (2.0 status 20, 3.0 OPERATING) to BUSY.
    found = client.describe_instances([instance_id])
    return bool(found) and found[0].state is InstanceState.BUSY


def _unbind(client: Any, api: str, key_ids: Sequence[str], instance_id: str) -> None:
    if api == "2.0":
        (key_id,) = key_ids
        client.unbind_instance_key(key_id, [instance_id])
    else:
        client.unbind(list(key_ids), [instance_id])


@dataclass(frozen=True)
class Polling:
    """How a peer waits for an instance's operation to end: a DescribeInstances every
    ``interval`` seconds, for at most ``timeout`` seconds (``clock`` and ``sleep`` for tests)."""

    interval: float
    timeout: float
    clock: Callable[[], float] = time.perf_counter
    sleep: Callable[[float], None] = time.sleep

    def until_idle(self, client: Any, instance_id: str) -> bool:
        """Poll until ``instance_id`` is no longer busy; False when the timeout came first."""
        deadline = self.clock() + self.timeout
        while self.clock() < deadline:
            if not _busy(client, instance_id):
                return True
            self.sleep(self.interval)
        return False


def peer_apply(
    client: Any,
    bindings: Sequence[tuple[str, str]],
    *,
    api: str = "2.0",
    polling: Polling = Polling(interval=0.5, timeout=120.0),
) -> PeerResult:
    """Unbind each (key_id, instance_id) with its own call and wait for it; return the totals."""
    result = PeerResult()
    before = client.calls
    started = polling.clock()
    for key_id, instance_id in bindings:
        try:
            _unbind(client, api, [key_id], instance_id)
        except Exception as error:
            result.failed.append(f"{key_id} {instance_id}: {error}")
            continue
        polling.sleep(polling.interval)
        if not polling.until_idle(client, instance_id):
            result.failed.append(f"{key_id} {instance_id}: still busy after {polling.timeout:g}s")
        result.bindings += 1
    result.instances = len({i for _, i in bindings})
    result.wall_s = polling.clock() - started
    result.calls = _delta(client, before)
    return result


@dataclass(frozen=True)
class TerraformPeer:
    """The Terraform-like peer: ``parallelism`` resources at once (``terraform -parallelism``),
    ``sleep_s`` after each resource's calls (the provider's 10 s), then ``polling``."""

    parallelism: int = 10
    sleep_s: float = 10.0
    polling: Polling = Polling(interval=1.0, timeout=300.0)

    def refresh(self, client: Any, instance_ids: Sequence[str]) -> PeerResult:
        """Plan time: each instance resource reads itself (one DescribeInstances of one ID)."""
        result = PeerResult(instances=len(instance_ids))
        before = client.calls
        started = time.perf_counter()
        with ThreadPoolExecutor(self.parallelism) as pool:
            list(pool.map(lambda iid: client.describe_instances([iid]), instance_ids))
        result.wall_s = time.perf_counter() - started
        result.calls = _delta(client, before)
        return result

    def apply(self, client: Any, bindings: Sequence[tuple[str, str]], *, api: str = "2.0") -> PeerResult:
        """One resource per instance, ``parallelism`` at once, as the module docstring describes."""
        keys_of: dict[str, list[str]] = defaultdict(list)
        for key_id, instance_id in bindings:
            keys_of[instance_id].append(key_id)
        result = PeerResult(bindings=len(bindings), instances=len(keys_of))
        lock = threading.Lock()
        polling = self.polling

        def one(instance_id: str) -> None:
            keys = sorted(keys_of[instance_id])
            calls = [keys] if api != "2.0" else [[k] for k in keys]
            for n, key_ids in enumerate(calls):
                if n:  # 2.0: the instance is busy until the previous key's operation is over
                    polling.until_idle(client, instance_id)
                try:
                    _unbind(client, api, key_ids, instance_id)
                except Exception as error:
                    with lock:
                        result.failed.append(f"{instance_id} {key_ids}: {error}")
                    return
            polling.sleep(self.sleep_s)
            if not polling.until_idle(client, instance_id):
                with lock:
                    result.failed.append(f"{instance_id}: still busy after {polling.timeout:g}s")

        before = client.calls
        started = polling.clock()
        with ThreadPoolExecutor(self.parallelism) as pool:
            list(pool.map(one, sorted(keys_of)))
        result.wall_s = polling.clock() - started
        result.calls = _delta(client, before)
        return result
