"""Grouping ready unbinds into API calls and waves. Pure; called by ``core.plan``.

One UnBindInstanceKey call takes one key and up to 100 instances. Each call puts its instances
in status 20 until it finishes, so an instance may appear in at most one call per wave: an
instance with three keys to remove needs three waves. Keys are ordered by how many unbinds they
carry (most first), so each instance's busiest keys share wave 0 and the call count stays at
the minimum of sum over waves and keys of ceil(instances / 100).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable

from reconciler.model import MAX_IDS_PER_CALL, Batch, Change, ChangeStatus

MAX_INSTANCES_PER_CALL = MAX_IDS_PER_CALL


def make_batches(changes: Iterable[Change], *, per_call: int = MAX_INSTANCES_PER_CALL) -> tuple[Batch, ...]:
    """The calls that carry out the ready changes, in wave order, then key order."""
    ready = [c for c in changes if c.status is ChangeStatus.READY]
    per_key: dict[str, int] = defaultdict(int)
    keys_of_instance: dict[str, list[str]] = defaultdict(list)
    for change in ready:
        per_key[change.key_id] += 1
        keys_of_instance[change.instance_id].append(change.key_id)
    rank = {key: n for n, key in enumerate(sorted(per_key, key=lambda k: (-per_key[k], k)))}

    waves: dict[int, dict[str, list[str]]] = defaultdict(lambda: defaultdict(list))
    for iid, keys in keys_of_instance.items():
        for wave, key_id in enumerate(sorted(keys, key=rank.__getitem__)):
            waves[wave][key_id].append(iid)

    batches: list[Batch] = []
    for wave in sorted(waves):
        for key_id in sorted(waves[wave], key=rank.__getitem__):
            instance_ids = sorted(waves[wave][key_id])
            for start in range(0, len(instance_ids), per_call):
                batches.append(Batch(wave, (key_id,), tuple(instance_ids[start : start + per_call])))
    return tuple(batches)


def wave_count(batches: Iterable[Batch]) -> int:
    """How many waves the batches span."""
    return max((b.wave for b in batches), default=-1) + 1
