"""Reading live state with the fewest API calls, through any ``cloud.base.CloudClient``.

Called by ``operations`` (plan) and by ``execute``.

Plan: every key pair of the region (DescribeKeyPairs, 100 a page, pages in parallel), then
DescribeInstances only for the instances the diff needs (``core.diff.instances_needed``), 100
IDs a call. Apply's stale check: only the keys and instances the plan touches.
"""

from __future__ import annotations

from collections.abc import Iterable

from reconciler.cloud.base import CloudClient
from reconciler.core.diff import instances_needed
from reconciler.model import Desired, Observed


def observe_for_plan(client: CloudClient, desired: Desired) -> Observed:
    """Live state for planning ``desired``: ceil(keys/100) + ceil(needed instances/100) calls."""
    keys = {pair.key_id: pair for pair in client.describe_key_pairs()}
    needed = sorted(instances_needed(desired, keys))
    instances = {inst.instance_id: inst for inst in client.describe_instances(needed)}
    return Observed(region=desired.region, keys=keys, instances=instances)


def observe_subset(
    client: CloudClient, region: str, key_ids: Iterable[str], instance_ids: Iterable[str]
) -> Observed:
    """Live state of just these keys and instances (absent ones do not exist)."""
    wanted_keys = sorted(set(key_ids))
    wanted_instances = sorted(set(instance_ids))
    keys = {pair.key_id: pair for pair in client.describe_key_pairs(wanted_keys)} if wanted_keys else {}
    instances = {inst.instance_id: inst for inst in client.describe_instances(wanted_instances)}
    return Observed(region=region, keys=keys, instances=instances)
