"""Seeded generator of emulator fleets and matching desired-state files, shaped like real accounts.

Used by the benchmark (``bench/run.py``) and by the test suite (small sizes) so both exercise the
same shapes: a few shared keys bound to hundreds or thousands of instances, a long tail of keys
bound to a handful, a mix of statuses, a few Windows instances, some instances with several keys.

    python bench/fleetgen.py --size M --remove 0.1 --scope keys --out /tmp/fleet-m
"""

from __future__ import annotations

import argparse
import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SIZES = {"S": (1_000, 50), "M": (10_000, 500), "L": (50_000, 2_000), "100k": (100_000, 4_000)}
# Bindings per instance of the long tail (about this many / 2 on average): 100k has ~3 bindings an
# instance in all (300,000), as issue 16 asks of the memory target; the others ~2.
TAIL_FACTOR = {"100k": 2.6}
SECRET_ID = "AKIDBENCH000000000000000000000000000"
SECRET_KEY = "bench-secret-key"
_ALPHABET = "0123456789abcdefghijklmnopqrstuvwxyz"


def _id36(prefix: str, number: int) -> str:
    digits = []
    for _ in range(8):
        number, rest = divmod(number, 36)
        digits.append(_ALPHABET[rest])
    return prefix + "".join(reversed(digits))


@dataclass(frozen=True)
class Generated:
    fleet: dict[str, Any]
    desired_text: str
    region: str
    scope: str
    live: frozenset[tuple[str, str]]
    allowed: frozenset[tuple[str, str]]
    declared_keys: frozenset[str]
    declared_instances: frozenset[str]
    protected_instances: frozenset[str]
    statuses: dict[str, tuple[int, bool]]  # instance -> (status, windows)


def generate(
    n_instances: int,
    n_keys: int,
    *,
    seed: int = 1,
    remove_fraction: float = 0.1,
    scope: str = "keys",
    region: str = "ap-guangzhou",
    linux_stopped_share: float = 0.85,
    protect_share: float = 0.005,
    declared_share: float = 0.8,
    tail_factor: float = 2.0,
) -> Generated:
    """A fleet (emulator format) and a desired file that removes ``remove_fraction`` of the owned
    bindings (before blocked/protected ones are set aside)."""
    rng = random.Random(seed)
    instances = [_id36("ins-", 7_000_000 + i * 7919) for i in range(n_instances)]
    keys = [_id36("skey-", 9_000_000 + k * 104_729) for k in range(n_keys)]
    statuses: dict[str, tuple[int, bool]] = {}
    for iid in instances:
        roll = rng.random()
        windows = rng.random() < 0.02
        if roll < linux_stopped_share:
            status = 4
        elif roll < linux_stopped_share + 0.10:
            status = 2
        else:
            status = rng.choice([1, 7, 8, 9, 20])
        statuses[iid] = (status, windows)

    # A few shared keys on many instances; a long tail on a handful. ~2 bindings per instance.
    bound: dict[str, set[str]] = {}
    n_shared = max(1, n_keys // 200)
    for index, key_id in enumerate(keys):
        if index < n_shared:
            count = min(n_instances, int(n_instances * rng.uniform(0.02, 0.15)))
        else:
            count = min(n_instances, rng.randint(1, max(1, int(tail_factor * n_instances) // n_keys)))
        bound[key_id] = set(rng.sample(instances, count))
    live = frozenset((k, i) for k, ids in bound.items() for i in ids)

    if scope == "keys":
        declared_keys = frozenset(k for k in keys if rng.random() < declared_share) or frozenset(keys[:1])
        declared_instances: frozenset[str] = frozenset()
        owned = {b for b in live if b[0] in declared_keys}
    elif scope == "instances":
        declared_instances = frozenset(i for i in instances if rng.random() < declared_share)
        declared_keys = frozenset(keys)
        owned = {b for b in live if b[1] in declared_instances}
    else:
        declared_keys = frozenset(keys)
        declared_instances = frozenset()
        owned = set(live)
    # sorted: set order changes with the hash seed, and the output must depend on the seed only.
    allowed = frozenset(b for b in sorted(owned) if rng.random() >= remove_fraction)
    protected = frozenset(i for i in instances if rng.random() < protect_share)

    fleet = {
        "credentials": [{"secret_id": SECRET_ID, "secret_key": SECRET_KEY}],
        "regions": {
            region: {
                "instances": [
                    {
                        "id": iid,
                        "name": f"host-{n}",
                        "os": "Windows Server 2019" if statuses[iid][1] else "centos7.6x86_64",
                        "status": statuses[iid][0],
                    }
                    for n, iid in enumerate(instances)
                ],
                "keys": [
                    {"id": k, "name": f"key-{n}", "bound": sorted(bound[k])} for n, k in enumerate(keys)
                ],
            }
        },
    }
    allowed_by_key: dict[str, list[str]] = {k: [] for k in sorted(declared_keys)}
    for key_id, iid in sorted(allowed):
        allowed_by_key.setdefault(key_id, []).append(iid)
    lines = ["version: 1", f"region: {region}", f"scope: {scope}", "keys:"]
    for key_id, ids in allowed_by_key.items():
        lines.append(f"  {key_id}:")
        lines.append("    instances: [" + ", ".join(ids) + "]")
    if scope == "instances":
        listed = {i for ids in allowed_by_key.values() for i in ids}
        extra = sorted(declared_instances - listed)
        lines.append("instances: [" + ", ".join(extra) + "]")
    lines.append("protected:")
    lines.append("  instances: [" + ", ".join(sorted(protected)) + "]")
    lines.append("safety:")
    lines.append("  max_unbind_percent: 100")
    return Generated(
        fleet=fleet,
        desired_text="\n".join(lines) + "\n",
        region=region,
        scope=scope,
        live=live,
        allowed=allowed,
        declared_keys=declared_keys,
        declared_instances=declared_instances | frozenset(i for ids in allowed_by_key.values() for i in ids),
        protected_instances=protected,
        statuses=statuses,
    )


def generate_size(
    size: str, *, seed: int = 1, remove_fraction: float = 0.1, scope: str = "keys"
) -> Generated:
    """:func:`generate` for one of the named :data:`SIZES`, with that size's long tail."""
    tail = TAIL_FACTOR.get(size, 2.0)
    return generate(*SIZES[size], seed=seed, remove_fraction=remove_fraction, scope=scope, tail_factor=tail)


def write(generated: Generated, folder: Path) -> tuple[Path, Path]:
    """Write ``fleet.yaml`` and ``bindings.yaml`` into ``folder``; return their paths."""
    folder.mkdir(parents=True, exist_ok=True)
    fleet_path = folder / "fleet.yaml"
    desired_path = folder / "bindings.yaml"
    # JSON is valid YAML and much faster to write for big fleets.
    fleet_path.write_text(json.dumps(generated.fleet, separators=(",", ":")) + "\n", encoding="utf-8")
    desired_path.write_text(generated.desired_text, encoding="utf-8")
    return fleet_path, desired_path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=sorted(SIZES), default="S")
    parser.add_argument("--remove", type=float, default=0.1)
    parser.add_argument("--scope", choices=["keys", "instances", "account"], default="keys")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    n_instances, n_keys = SIZES[args.size]
    generated = generate_size(args.size, seed=args.seed, remove_fraction=args.remove, scope=args.scope)
    fleet, desired = write(generated, args.out)
    print(f"{fleet}: {n_instances} instances, {n_keys} keys, {len(generated.live)} bindings")
    print(f"{desired}: scope {args.scope}, {len(generated.allowed)} allowed bindings")


if __name__ == "__main__":
    main()
