"""The plan reads only what decides it (issue 16, item 2), over real HTTP.

``cvmkeys plan --emulator FLEET --audit-log LOG`` on random fleets and desired files: the
DescribeInstances calls in the audit log equal ceil(N / 100), where N is computed here from the
fleet and the desired file by the documented rules (docs/desired-state.md), not by the product:

* every key pair is read (the last-key check needs every binding): ceil(keys / 100)
  DescribeKeyPairs, at least one;
* N = the instances with an owned, not allowed, not protected binding (their state decides the
  change), plus the declared instances no key pair reports bound (only a read can say they
  exist). A declared instance bound to any key exists, so it is not read.

The findings must not suffer for it: every declared instance that does not exist is still
reported (instance-not-found or instance-id-typo), and none that exists is; and a plan made
from these reads decides exactly what a plan made from the old, larger read set decided.
"""

from __future__ import annotations

import json
import math
import random
import string
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from support import emulator_client, run_cli

from reconciler.core.diff import instances_needed
from reconciler.core.plan import build_plan
from reconciler.desired.loader import load_paths
from reconciler.emulator.app import EmulatorApp
from reconciler.emulator.state import FleetState
from reconciler.model import Observed

REGION = "ap-guangzhou"
SECRET_ID = "AKIDPLANREADS00000000000000000000000"
SECRET_KEY = "plan-reads-secret-key"
ALPHABET = string.ascii_lowercase + string.digits


@dataclass
class World:
    fleet: dict[str, object]
    desired_text: str


def _random_id(rng: random.Random, prefix: str, taken: set[str]) -> str:
    while True:
        value = prefix + "".join(rng.choice(ALPHABET) for _ in range(8))
        if value not in taken:
            taken.add(value)
            return value


def _one_edit(rng: random.Random, iid: str, taken: set[str]) -> str | None:
    """An ID one substitution away from ``iid`` that names no instance (a typo in the file)."""
    for _ in range(20):
        pos = rng.randrange(4, len(iid))
        typo = iid[:pos] + rng.choice(ALPHABET) + iid[pos + 1 :]
        if typo not in taken:
            taken.add(typo)
            return typo
    return None


def random_world(seed: int) -> World:
    """A fleet with unbound instances, shared and lone keys, Windows and busy instances, and a
    desired file of a random scope that allows bound, unbound, missing and mistyped instances,
    protects some keys and instances, and sometimes says ``missing_instances: warn``."""
    rng = random.Random(seed)
    taken: set[str] = set()
    n_instances = rng.choice([0, 1, 40, 99, 100, 101, 180, 260, 420])
    n_keys = rng.choice([1, 7, 99, 100, 101, 150, 230])
    instances = [_random_id(rng, "ins-", taken) for _ in range(n_instances)]
    keys = [_random_id(rng, "skey-", taken) for _ in range(n_keys)]
    bound: dict[str, list[str]] = {}
    for index, key_id in enumerate(keys):
        if instances and index < 3:
            count = rng.randint(0, min(len(instances), 150))  # a few keys on many instances
        else:
            count = rng.randint(0, min(len(instances), 4))
        bound[key_id] = sorted(rng.sample(instances, count))
    fleet: dict[str, object] = {
        "credentials": [{"secret_id": SECRET_ID, "secret_key": SECRET_KEY}],
        "regions": {
            REGION: {
                "instances": [
                    {
                        "id": iid,
                        "name": f"host-{n}",
                        "os": "Windows Server 2019" if rng.random() < 0.05 else "centos7.6x86_64",
                        "status": rng.choice([4, 4, 4, 4, 2, 8, 20]),
                    }
                    for n, iid in enumerate(instances)
                ],
                "keys": [{"id": k, "name": f"key-{n}", "bound": bound[k]} for n, k in enumerate(keys)],
            }
        },
    }

    scope = rng.choice(["keys", "instances", "account"])
    declared_keys = [k for k in keys if rng.random() < 0.7] or keys[:1]
    lines = ["version: 1", f"region: {REGION}", f"scope: {scope}"]
    if rng.random() < 0.3:
        lines.append("missing_instances: warn")
    lines.append("keys:")
    allowed_anywhere: set[str] = set()
    for key_id in declared_keys:
        allowed: set[str] = {i for i in bound[key_id] if rng.random() < 0.6}
        if instances:
            allowed.update(rng.sample(instances, rng.randint(0, min(3, len(instances)))))
        if rng.random() < 0.15:
            allowed.add(_random_id(rng, "ins-", taken))  # declared, does not exist
        if instances and rng.random() < 0.1:
            typo = _one_edit(rng, rng.choice(instances), taken)
            if typo is not None:
                allowed.add(typo)
        allowed_anywhere |= allowed
        lines.append(f"  {key_id}:")
        lines.append("    instances: [" + ", ".join(sorted(allowed)) + "]")
    if scope == "instances":
        # Owned with no key allowed: the loader refuses an instance a key also allows.
        extra = set(rng.sample(instances, rng.randint(0, min(60, len(instances))))) - allowed_anywhere
        if rng.random() < 0.3:
            extra.add(_random_id(rng, "ins-", taken))
        lines.append("instances: [" + ", ".join(sorted(extra)) + "]")
    protected_keys = [k for k in keys if rng.random() < 0.05]
    protected_instances = [i for i in instances if rng.random() < 0.05]
    lines += [
        "protected:",
        "  keys: [" + ", ".join(protected_keys) + "]",
        "  instances: [" + ", ".join(protected_instances) + "]",
        "safety:",
        "  max_unbind_percent: 100",
    ]
    return World(fleet, "\n".join(lines) + "\n")


# --------------------------------------------------------------------------- the yardstick


@dataclass(frozen=True)
class Expected:
    keys: int
    deciding: frozenset[str]  # the instances a plan must read
    absent_declared: frozenset[str]  # declared instances that do not exist


def _ids(items: object) -> set[str]:
    return {str(item) for item in (items or [])}  # type: ignore[attr-defined]


def expected_reads(fleet: dict[str, object], desired_text: str) -> Expected:
    """What the fleet and the desired file decide, by the documented rules, without the product."""
    region = fleet["regions"][REGION]  # type: ignore[index]
    bound = {k["id"]: set(k["bound"]) for k in region["keys"]}
    existing = {i["id"] for i in region["instances"]}
    desired = yaml.safe_load(desired_text)
    declared_keys = {k: _ids(v["instances"]) for k, v in (desired.get("keys") or {}).items()}
    declared = _ids(desired.get("instances")).union(*declared_keys.values())
    protected = desired.get("protected") or {}
    protected_keys, protected_instances = _ids(protected.get("keys")), _ids(protected.get("instances"))

    live = {(k, i) for k, ids in bound.items() for i in ids}
    if desired["scope"] == "keys":
        owned = {b for b in live if b[0] in declared_keys}
    elif desired["scope"] == "instances":
        owned = {b for b in live if b[1] in declared}
    else:
        owned = live
    allowed = {(k, i) for k, ids in declared_keys.items() for i in ids}
    deciding = {i for k, i in owned - allowed if k not in protected_keys and i not in protected_instances}
    seen_bound = {i for _, i in live}
    return Expected(
        keys=len(bound),
        deciding=frozenset(deciding | (declared - seen_bound)),
        absent_declared=frozenset(declared - existing),
    )


def _pages(count: int) -> int:
    return math.ceil(count / 100)


# --------------------------------------------------------------------------- over HTTP


def _plan(world: World, tmp_path: Path) -> tuple[int, dict[str, object], dict[str, int]]:
    fleet_path = tmp_path / "fleet.json"
    desired_path = tmp_path / "bindings.yaml"
    audit_path = tmp_path / "audit.jsonl"
    fleet_path.write_text(json.dumps(world.fleet), encoding="utf-8")
    desired_path.write_text(world.desired_text, encoding="utf-8")
    code, out, err = run_cli(
        "plan", str(desired_path), "--emulator", str(fleet_path),
        "--audit-log", str(audit_path), "--format", "json",
    )  # fmt: skip
    assert code in (0, 1) and out, out + err  # 1: the plan has errors (missing instances, typos)
    calls: dict[str, int] = {}
    for line in audit_path.read_text(encoding="utf-8").splitlines():
        record = json.loads(line)
        calls[record["action"]] = calls.get(record["action"], 0) + 1
    return code, json.loads(out), calls


@pytest.mark.parametrize("seed", range(14))
def test_plan_calls_are_the_minimum_computed_from_the_fleet_and_the_file(seed: int, tmp_path: Path) -> None:
    world = random_world(seed)
    expected = expected_reads(world.fleet, world.desired_text)
    code, plan, calls = _plan(world, tmp_path)

    assert calls.get("DescribeKeyPairs", 0) == max(1, _pages(expected.keys))
    assert calls.get("DescribeInstances", 0) == _pages(len(expected.deciding))
    # Plus one STS GetCallerIdentity: the plan records who it ran as (audited like every call).
    assert set(calls) <= {"DescribeKeyPairs", "DescribeInstances", "GetCallerIdentity"}
    assert calls.get("GetCallerIdentity") == 1

    # Reading less never hides a missing instance, nor invents one.
    reported = {
        f["instance_id"]
        for f in plan["findings"]  # type: ignore[attr-defined]
        if f["code"] in ("instance-not-found", "instance-id-typo")
    }
    assert reported == expected.absent_declared
    assert (code == 1) == any(f["severity"] == "error" for f in plan["findings"])  # type: ignore[attr-defined]


def test_the_random_worlds_cover_what_the_rule_is_about() -> None:
    """The cases above must include declared instances saved a read (bound), declared instances
    that must be read (not bound anywhere), absent ones, and counts on both sides of 100."""
    saved = read_unbound = absent = over_100 = 0
    for seed in range(14):
        world = random_world(seed)
        expected = expected_reads(world.fleet, world.desired_text)
        desired = yaml.safe_load(world.desired_text)
        declared = _ids(desired.get("instances")).union(
            *(_ids(v["instances"]) for v in (desired.get("keys") or {}).values())
        )
        saved += len(declared - expected.deciding)
        read_unbound += len(declared & expected.deciding)
        absent += len(expected.absent_declared)
        over_100 += len(expected.deciding) > 100
    assert saved > 100 and read_unbound > 10 and absent > 3 and over_100 >= 2


# --------------------------------------------------------------------------- same decisions


def _observe(world: World, instance_ids: set[str]) -> Observed:
    """Every key pair and these instances, read by the real client from the emulator over
    in-process HTTP (absent instances are absent from the answer, as on the cloud)."""
    client = emulator_client(EmulatorApp(FleetState.from_data(world.fleet)), REGION)
    try:
        keys = {pair.key_id: pair for pair in client.describe_key_pairs()}
        found = client.describe_instances(sorted(instance_ids))
    finally:
        client.close()
    return Observed(REGION, keys, {instance.instance_id: instance for instance in found})


@pytest.mark.parametrize("seed", range(40))
def test_a_plan_from_the_fewer_reads_decides_what_reading_every_declared_instance_decided(
    seed: int, tmp_path: Path
) -> None:
    world = random_world(seed)
    path = tmp_path / "bindings.yaml"
    path.write_text(world.desired_text, encoding="utf-8")
    desired = load_paths([path]).by_region[REGION]
    keys_only = _observe(world, set())
    needed = instances_needed(desired, keys_only.keys)
    assert needed == expected_reads(world.fleet, world.desired_text).deciding
    now = build_plan(desired, _observe(world, needed), endpoint="test")
    before = build_plan(desired, _observe(world, needed | desired.declared_instances), endpoint="test")

    def decisions(plan: object) -> object:
        return (
            [(c.key_id, c.instance_id, c.status, c.reason, c.warnings) for c in plan.changes],  # type: ignore[attr-defined]
            [(f.severity, f.code, f.key_id, f.instance_id, f.message) for f in plan.findings],  # type: ignore[attr-defined]
            plan.summary,  # type: ignore[attr-defined]
            plan.fingerprint,  # type: ignore[attr-defined]
            plan.batches,  # type: ignore[attr-defined]
        )

    assert decisions(now) == decisions(before)
