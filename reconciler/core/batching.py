"""Grouping ready unbinds into API calls and waves, at the fewest calls. Pure; called by ``core.plan``.

A call puts each of its instances in an operation until it finishes, so an instance may appear
in at most one call per wave; waves run one after another. Every planned unbind (key, instance)
is carried by exactly one call, and no call touches a pair that is not a planned unbind.

**API 2.0** (``UnBindInstanceKey``: one key, up to 100 instances). The fewest calls there can be
is the sum over keys of ceil(instances losing that key / 100): every key needs its own calls.
That sum is reached when each key's instances are cut into full calls of 100, which is simplest
when each key sits whole in one wave. Two keys that share an instance cannot share a wave, so
the waves are a colouring of the *conflict graph* (keys are vertices; an edge joins two keys
that both leave one instance). The colouring is DSatur (Brélaz 1979): repeatedly colour the key
whose neighbours already use the most distinct waves (ties: most neighbours, then most
unbinds, then ID), with the lowest wave none of its neighbours uses. It is exact on bipartite
graphs (forests included) and on cliques and, on any graph, never uses more waves than the
largest number of neighbours plus one. The fewest waves there can be is at least
the most keys any one instance loses (those keys are pairwise neighbours).

**API 3.0** (``DisassociateInstancesKeyPairs``: up to 100 keys x up to 100 instances, every
listed key removed from every listed instance). A call is a *block* of the plan: every pair of
its keys x instances must be a planned unbind. Finding the fewest blocks is a minimum biclique
partition (NP-hard in general), so the planner compares two constructions per connected
component of the plan (keys and instances linked by planned unbinds; components share no
instance, so their waves run side by side) and keeps the one with fewer calls, then fewer
waves, the signature grouping on a tie:

* *by signature*: instances grouped by the exact set of keys they lose; each group is one
  block, cut into calls of at most 100 instances x 100 keys. An instance is in one call per
  100 of its keys, so everything is one wave when no instance loses more than 100 keys.
* *per key*: the 2.0 construction (one key a call, waves by colouring); fewer calls when keys
  are shared by many instances whose other losses all differ.

Because the per-key construction is one of the candidates, 3.0 never makes more calls than 2.0
for the same plan, and it makes fewer whenever instances that lose the same several keys are
grouped.
"""

from __future__ import annotations

import heapq
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence

from reconciler.model import MAX_IDS_PER_CALL, Batch, Change, ChangeStatus

MAX_INSTANCES_PER_CALL = MAX_IDS_PER_CALL
MAX_KEYS_PER_CALL = MAX_IDS_PER_CALL  # DisassociateInstancesKeyPairs' KeyIds limit (API 3.0)

_Pairs = Mapping[str, Sequence[str]]  # key -> the instances that lose it


def make_batches(
    changes: Iterable[Change],
    *,
    api: str = "2.0",
    per_call: int = MAX_INSTANCES_PER_CALL,
    keys_per_call: int = MAX_KEYS_PER_CALL,
) -> tuple[Batch, ...]:
    """The calls that carry out the ready changes for ``api`` ("2.0" or "3.0"; an ``ApiVersion``
    compares equal to its value), in wave order, then by first key and first instance."""
    per_key: dict[str, list[str]] = defaultdict(list)
    for change in changes:
        if change.status is ChangeStatus.READY:
            per_key[change.key_id].append(change.instance_id)
    if api == "3.0":
        batches = blocks_3(per_key, per_call=per_call, keys_per_call=keys_per_call)
    elif api == "2.0":
        batches = per_key_2(per_key, per_call=per_call)
    else:
        raise ValueError(f"unknown API version {api!r}")
    return tuple(sorted(batches, key=lambda b: (b.wave, b.key_ids, b.instance_ids)))


def wave_count(batches: Iterable[Batch]) -> int:
    """How many waves the batches span."""
    return max((b.wave for b in batches), default=-1) + 1


# --------------------------------------------------------------------------- API 2.0


def colour_keys(per_key: _Pairs) -> dict[str, int]:
    """A wave for every key such that keys sharing an instance get different waves (DSatur)."""
    keys_of: dict[str, list[str]] = defaultdict(list)
    for key_id, iids in per_key.items():
        for iid in set(iids):
            keys_of[iid].append(key_id)
    neighbours: dict[str, set[str]] = {k: set() for k in per_key}
    for keys in keys_of.values():
        if len(keys) > 1:
            for key_id in keys:
                neighbours[key_id].update(keys)
    for key_id, near in neighbours.items():
        near.discard(key_id)

    wave: dict[str, int] = {}
    used_near: dict[str, set[int]] = {k: set() for k in per_key}  # waves the neighbours use
    # Max-heap by (saturation, degree, unbinds), then smallest ID; stale entries are skipped.
    heap = [(0, -len(neighbours[k]), -len(per_key[k]), k) for k in per_key]
    heapq.heapify(heap)
    while heap:
        minus_sat, _, _, key_id = heapq.heappop(heap)
        if key_id in wave or -minus_sat != len(used_near[key_id]):
            continue
        taken = used_near[key_id]
        colour = next(c for c in range(len(taken) + 1) if c not in taken)
        wave[key_id] = colour
        for other in neighbours[key_id]:
            if other not in wave and colour not in used_near[other]:
                used_near[other].add(colour)
                entry = (-len(used_near[other]), -len(neighbours[other]), -len(per_key[other]), other)
                heapq.heappush(heap, entry)
    return wave


def per_key_2(per_key: _Pairs, *, per_call: int = MAX_INSTANCES_PER_CALL) -> list[Batch]:
    """One key a call, each key whole in the wave its colour gives: sum ceil(n / per_call) calls."""
    waves = colour_keys(per_key)
    batches: list[Batch] = []
    for key_id, iids in per_key.items():
        ordered = sorted(set(iids))
        for start in range(0, len(ordered), per_call):
            batches.append(Batch(waves[key_id], (key_id,), tuple(ordered[start : start + per_call])))
    return batches


# --------------------------------------------------------------------------- API 3.0


def _components(per_key: _Pairs) -> list[dict[str, list[str]]]:
    """The plan split into parts that share no key and no instance (union-find over keys)."""
    parent = {k: k for k in per_key}

    def root(k: str) -> str:
        while parent[k] != k:
            parent[k] = parent[parent[k]]
            k = parent[k]
        return k

    first_key: dict[str, str] = {}
    for key_id, iids in per_key.items():
        for iid in iids:
            other = first_key.setdefault(iid, key_id)
            a, b = root(key_id), root(other)
            if a != b:
                parent[a] = b
    parts: dict[str, dict[str, list[str]]] = defaultdict(dict)
    for key_id, iids in per_key.items():
        parts[root(key_id)][key_id] = list(iids)
    return [parts[r] for r in sorted(parts)]


def by_signature(
    per_key: _Pairs, *, per_call: int = MAX_INSTANCES_PER_CALL, keys_per_call: int = MAX_KEYS_PER_CALL
) -> list[Batch]:
    """Instances grouped by the exact set of keys they lose; each group cut into calls of at most
    ``per_call`` instances x ``keys_per_call`` keys, the n-th slice of keys in wave n."""
    lost: dict[str, set[str]] = defaultdict(set)
    for key_id, iids in per_key.items():
        for iid in iids:
            lost[iid].add(key_id)
    groups: dict[tuple[str, ...], list[str]] = defaultdict(list)
    for iid, lost_keys in lost.items():
        groups[tuple(sorted(lost_keys))].append(iid)
    batches: list[Batch] = []
    for keys, iids in groups.items():
        ordered = sorted(iids)
        for wave, k_start in enumerate(range(0, len(keys), keys_per_call)):
            key_slice = keys[k_start : k_start + keys_per_call]
            for start in range(0, len(ordered), per_call):
                batches.append(Batch(wave, key_slice, tuple(ordered[start : start + per_call])))
    return batches


def blocks_3(
    per_key: _Pairs, *, per_call: int = MAX_INSTANCES_PER_CALL, keys_per_call: int = MAX_KEYS_PER_CALL
) -> list[Batch]:
    """Per component, the signature grouping or the per-key calls, whichever is fewer calls
    (then fewer waves; the signature grouping on a tie)."""
    batches: list[Batch] = []
    for part in _components(per_key):
        grouped = by_signature(part, per_call=per_call, keys_per_call=keys_per_call)
        single = per_key_2(part, per_call=per_call)
        if (len(single), wave_count(single)) < (len(grouped), wave_count(grouped)):
            batches.extend(single)
        else:
            batches.extend(grouped)
    return batches
