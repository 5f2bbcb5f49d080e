"""The peer's way of applying a plan, for comparison: one binding at a time, waiting after each.

Used by ``bench/run.py``. This is how terraform-provider-tencentcloud changes
``tencentcloud_instance.key_ids``: one UnBindInstanceKey call per (key, instance) binding, then
it waits for that instance to finish the operation before it touches the next one. Here the
wait is a DescribeInstances poll of that one instance every ``poll_interval`` seconds until it
leaves status 20 (key issuing). The provider itself first sleeps 10 s and then polls, so this
peer is, if anything, faster than the real one.

It uses our own client (same signing, same rate limit), so the comparison is about the strategy
only.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from reconciler.cloud.client import CvmClient
from reconciler.model import InstanceState


@dataclass
class PeerResult:
    bindings: int = 0
    wall_s: float = 0.0
    calls: dict[str, int] = field(default_factory=dict)
    failed: list[str] = field(default_factory=list)


def peer_apply(
    client: CvmClient,
    bindings: Sequence[tuple[str, str]],
    *,
    poll_interval: float = 0.5,
    timeout: float = 120.0,
    clock: Callable[[], float] = time.perf_counter,
    sleep: Callable[[float], None] = time.sleep,
) -> PeerResult:
    """Unbind each (key_id, instance_id) with its own call and wait for it; return the totals."""
    result = PeerResult()
    before = client.calls
    started = clock()
    for key_id, instance_id in bindings:
        try:
            client.unbind_instance_key(key_id, [instance_id])
        except Exception as error:
            result.failed.append(f"{key_id} {instance_id}: {error}")
            continue
        deadline = clock() + timeout
        while clock() < deadline:
            sleep(poll_interval)
            found = client.describe_instances([instance_id])
            if not found or found[0].state is not InstanceState.BUSY:
                break
        else:
            result.failed.append(f"{key_id} {instance_id}: still in status 20 after {timeout:g}s")
        result.bindings += 1
    result.wall_s = clock() - started
    after = client.calls
    result.calls = {
        action: after[action] - before[action] for action in after if after[action] - before[action]
    }
    return result
