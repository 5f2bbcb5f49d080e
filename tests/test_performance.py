"""Tests of the product changes made for speed (issue 6): they must not change behaviour.

* the emulator reads a fleet file that is one JSON document with ``json`` and gets exactly
  what the YAML loader gets; whatever the two read differently goes to YAML;
* the client's token bucket bursts half the rate (the server keeps tokens against jitter);
* the client goes at each action's documented rate, and the served emulator enforces it;
* the signer's encoder skips ``quote`` for what needs no encoding, with the same result;
* the client checks a key's list of bound instance IDs with one regex, with the same verdict;
* schema validators with local $refs inlined judge documents exactly as the schema does;
* the executor polls after a wave the instances the next wave touches that have a call not
  yet seen finished, from this wave or an earlier one (filling free places with instances it
  must see idle anyway), and times its polls by what it learned of the operation time: after
  the first, the fewest calls there can be.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st
from jsonschema import Draft202012Validator
from support import FakeTime, serve_fleet

from bench.fleetgen import SECRET_ID, SECRET_KEY, generate
from bench.run import observed_truth, poll_minimum
from reconciler.cloud import client as client_module
from reconciler.cloud.auth import encode_params
from reconciler.cloud.client import AttemptRecord, CvmClient
from reconciler.cloud.credentials import Credentials
from reconciler.cloud.observe import observe_for_plan
from reconciler.cloud.ratelimit import ActionRateLimiter
from reconciler.core import document
from reconciler.core.document import dump_plan
from reconciler.core.plan import build_plan
from reconciler.desired.loader import load_paths
from reconciler.emulator.app import EmulatorApp, transport
from reconciler.emulator.state import FleetState
from reconciler.errors import ApiError
from reconciler.execute.executor import EventKind, ExecEvent, ExecOptions, Executor
from reconciler.ids import is_instance_id
from reconciler.model import DOCUMENTED_RATE_LIMITS, Batch, Outcome
from reconciler.schemas import load_schema, validator


def test_a_json_fleet_loads_as_its_data(tmp_path: Path) -> None:
    """bench/fleetgen.py writes fleets as JSON: the one YAML pipeline reads them as they are."""
    fleet = generate(60, 6, seed=3).fleet
    for n, text in enumerate((json.dumps(fleet), json.dumps(fleet, indent=2, ensure_ascii=False))):
        path = tmp_path / f"f{n}.json"
        path.write_text(text, encoding="utf-8")
        assert FleetState.from_file(path, persist=False).to_data() == FleetState.from_data(fleet).to_data()


def test_the_state_store_loads_one_string_per_distinct_text(tmp_path: Path) -> None:
    """Memory (issue 16 item 7): an ID bound to keys, and an OS name many instances share, is
    one string object however often it occurs in the loaded state, and the state is the same."""
    gen = generate(300, 12, seed=4)
    fleet = tmp_path / "fleet.json"
    fleet.write_text(json.dumps(gen.fleet))
    state = FleetState.from_file(fleet)
    state.close()
    state = FleetState.from_file(fleet)  # read back from the SQLite state this time
    try:
        assert state.to_data() == FleetState.from_data(gen.fleet).to_data()
        region = next(iter(state._regions.values()))
        ids = {iid: iid for iid in region.instances}
        bound = [iid for members in region.key_instances.values() for iid in members]
        assert len(bound) == len(gen.live) and all(iid is ids[iid] for iid in bound)
        by_os: dict[str, str] = {}
        for item in region.instances.values():
            assert by_os.setdefault(item["os"], item["os"]) is item["os"]
        assert len(by_os) < len(region.instances) / 10
    finally:
        state.close()


_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(), inner, max_size=5),
    max_leaves=30,
)


@given(_JSON)
def test_the_plan_indenter_writes_what_json_dumps_writes(value: Any) -> None:
    """``dump_plan``'s indenter (faster than the standard library's pure-Python one) gives the
    same text for any JSON value, and falls back to json.dumps for anything else."""
    expected = json.dumps(value, indent=2, sort_keys=True, ensure_ascii=False, allow_nan=False)
    assert document._dumps_indented(value) == expected


def test_the_plan_indenter_leaves_odd_values_to_json() -> None:
    odd = {1: [True, None]}
    assert document._dumps_indented(odd) == json.dumps(odd, indent=2, sort_keys=True)
    with pytest.raises(ValueError):
        document._dumps_indented({"x": [float("nan")]})


# --------------------------------------------------------------------------- client rate limit


def test_client_burst_is_half_the_rate() -> None:
    """The server's bucket (burst = rate) keeps half a second of tokens against jitter."""
    now = [0.0]
    limiter = ActionRateLimiter(10.0, clock=lambda: now[0], sleep=lambda s: None)
    waits = [limiter.acquire("UnBindInstanceKey") for _ in range(7)]
    assert waits[:5] == [0.0] * 5
    assert waits[5:] == pytest.approx([0.1, 0.2])
    assert ActionRateLimiter(1.0).burst == 1.0


def test_the_client_goes_at_the_documented_rate_of_each_action() -> None:
    """Issue 16 item 4: DescribeInstances at 40 a second, the key-pair calls at 10 (the shared
    table), against an emulator that enforces the same table and so refuses nothing; one
    ``rate_limit`` (``--rate-limit``) still caps every action."""
    gen = generate(3000, 6, seed=2)
    ids = sorted(gen.statuses)
    key = sorted(k for k, _ in gen.live)[0]
    for rate_limit, inst_wait, key_wait in ((None, (30 - 20) / 40, (8 - 5) / 10), (10.0, (30 - 5) / 10, 0.3)):
        fake = FakeTime()  # moves only when the client sleeps: the waits are the limiter's alone
        state = FleetState.from_data(gen.fleet, clock=fake.clock)
        app = EmulatorApp(state, clock=fake.clock, limits=DOCUMENTED_RATE_LIMITS)
        records: list[AttemptRecord] = []
        options: dict[str, Any] = {} if rate_limit is None else {"rate_limit": rate_limit}
        client = CvmClient(
            Credentials(SECRET_ID, SECRET_KEY),
            gen.region,
            endpoint="http://localhost/v2/index.php",
            transport=transport(app),
            sleep=fake.sleep,
            clock=fake.clock,
            max_workers=1,  # one thread: the sleeps add up to the time taken
            on_attempt=records.append,
            **options,
        )
        client.describe_instances(ids)
        assert sum(fake.sleeps) == pytest.approx(inst_wait)
        fake.sleeps.clear()
        for _ in range(8):
            client.describe_key_pairs([key])
        assert sum(fake.sleeps) == pytest.approx(key_wait)
        assert len(records) == 38 and all(r.code == 0 for r in records)
    assert app.rate_for("DescribeInstances") == 40.0 and app.rate_for("UnBindInstanceKey") == 10.0
    assert ActionRateLimiter(DOCUMENTED_RATE_LIMITS).rate_of("BindInstanceKey") == 10.0
    assert ActionRateLimiter(DOCUMENTED_RATE_LIMITS).rate_of("SomethingNew") == 10.0
    with pytest.raises(ValueError):
        ActionRateLimiter({"DescribeInstances": 0.0})
    # A table overrides the documented figures for the actions it names (both clients, one rule);
    # one number is every action's rate, named or not.
    partial = ActionRateLimiter({"DescribeKeyPairs": 2.0})
    assert partial.rate_of("DescribeKeyPairs") == 2.0 and partial.rate_of("DescribeInstances") == 40.0
    assert ActionRateLimiter(3.0).rate_of("SomethingNew") == 3.0
    assert not ActionRateLimiter(0).enabled and not ActionRateLimiter(None).enabled


def test_the_served_emulator_enforces_the_documented_limits_by_default(tmp_path: Path) -> None:
    """``cvmkeys emulator serve`` answers 4400 beyond the documented per-action rate, over 2.0
    too; ``--no-documented-limits`` turns them off and ``--rate-limit`` sets one for all."""
    gen = generate(50, 4, seed=1)
    fleet = tmp_path / "fleet.json"
    fleet.write_text(json.dumps(gen.fleet))
    key = sorted(k for k, _ in gen.live)[0]
    ids = sorted(gen.statuses)
    refused: dict[tuple[str, ...], dict[str, int]] = {}
    for options in ((), ("--no-documented-limits",), ("--rate-limit", "5")):
        process, served = serve_fleet(fleet, gen.region, "--no-save", *options)
        try:
            client = CvmClient(
                Credentials(served.secret_id, served.secret_key),
                gen.region,
                endpoint=served.url,
                rate_limit=None,
                max_attempts=1,
            )
            counts = {"DescribeKeyPairs": 0, "DescribeInstances": 0}
            # 30 of each at once: far more than 10 (or 5) a second, fewer than 40.
            for action in counts:
                for _ in range(30):
                    try:
                        if action == "DescribeKeyPairs":
                            client.describe_key_pairs([key])
                        else:
                            client.describe_instances(ids[:1])
                    except ApiError as error:
                        assert error.code == 4400
                        counts[action] += 1
            client.close()
        finally:
            process.terminate()
            process.communicate(timeout=10)
        refused[options] = counts
    assert refused[()]["DescribeInstances"] == 0 < refused[()]["DescribeKeyPairs"]
    assert refused[("--no-documented-limits",)] == {"DescribeKeyPairs": 0, "DescribeInstances": 0}
    assert all(n > 0 for n in refused[("--rate-limit", "5")].values())


# --------------------------------------------------------------------------- executor polls


class _Clock:
    """Real time plus an offset that sleeping moves forward (the emulator checks Timestamps)."""

    def __init__(self) -> None:
        self.offset = 0.0
        self.slept: list[float] = []

    def __call__(self) -> float:
        return time.time() + self.offset

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.offset += seconds


def test_polls_are_timed_by_the_learned_operation_time(tmp_path: Path) -> None:
    gen = generate(300, 12, seed=5, remove_fraction=0.6)
    clock = _Clock()
    state = FleetState.from_data(gen.fleet, clock=clock, op_seconds=2.0)
    records: list[AttemptRecord] = []
    client = CvmClient(
        Credentials(SECRET_ID, SECRET_KEY),
        gen.region,
        endpoint="http://localhost/v2/index.php",
        transport=transport(EmulatorApp(state, clock=clock)),
        rate_limit=None,
        on_attempt=records.append,
    )
    desired_file = tmp_path / "b.yaml"
    desired_file.write_text(gen.desired_text)
    desired = load_paths([desired_file]).by_region[gen.region]
    plan = build_plan(desired, observe_for_plan(client, desired), endpoint="test")
    assert plan.summary.waves >= 3
    records.clear()
    result = Executor(client, plan, options=ExecOptions(clock=clock, sleep=clock.sleep)).run()
    assert result.count(Outcome.DONE) == len(plan.ready_changes)
    assert state.bindings(gen.region) == set(gen.live) - {
        (c.key_id, c.instance_id) for c in plan.ready_changes
    }
    # The actions in order: a run of unbinds per wave, each followed by its polls.
    runs: list[tuple[str, int]] = []
    for record in records:
        if runs and runs[-1][0] == record.action:
            runs[-1] = (record.action, runs[-1][1] + 1)
        else:
            runs.append((record.action, 1))
    assert [a for a, _ in runs] == ["UnBindInstanceKey", "DescribeInstances"] * plan.summary.waves + [
        "DescribeKeyPairs"
    ]
    wave_instances = [
        {i for b in plan.batches if b.wave == w for i in b.instance_ids} for w in range(plan.summary.waves)
    ]
    polls = [n for a, n in runs if a == "DescribeInstances"]
    # After each wave but the last, the instances of the next wave with an unconfirmed call are
    # polled (with instances no later wave touches in the free places); the first such poll
    # learns the operation time (immediate: every instance busy; then back-off). Later polls are
    # timed by it and need one call per 100 instances; the last poll confirms the rest before
    # the verification: the fewest for these waves (``poll_minimum``) but for the learning.
    learning = polls[0] - math.ceil(len(wave_instances[0] & wave_instances[1]) / 100)
    assert learning > 0
    assert sum(polls) - learning == poll_minimum(wave_instances)
    assert poll_minimum(wave_instances) <= sum(math.ceil(len(n) / 100) for n in wave_instances)
    first_wave_wait = sum(clock.slept[: polls[0] - 1])
    assert all(s == pytest.approx(first_wave_wait, abs=0.2) for s in clock.slept[polls[0] - 1 :])



def test_a_wave_waits_for_an_instance_busy_since_an_earlier_wave(tmp_path: Path) -> None:
    """Coloured waves can put an instance in waves 1 and 3 and not in 2 (core.batching). Before
    wave 3 the executor must see it idle although wave 2 did not touch it: otherwise wave 3's
    call meets it still busy from wave 1 and is refused (one call more, a retry)."""
    clock = _Clock()
    r, s = "ins-0000000r", "ins-0000000s"
    a, b, c = "skey-0000000a", "skey-0000000b", "skey-0000000c"
    fleet = {
        "credentials": [{"secret_id": SECRET_ID, "secret_key": SECRET_KEY}],
        "regions": {
            "ap-guangzhou": {
                "instances": [{"id": i, "name": i, "os": "centos7.6x86_64", "status": 4} for i in (r, s)],
                "keys": [
                    {"id": a, "name": "a", "bound": [r]},
                    {"id": b, "name": "b", "bound": [s]},
                    {"id": c, "name": "c", "bound": [r]},
                ],
            }
        },
    }
    state = FleetState.from_data(fleet, clock=clock, op_seconds=5.0)
    client = CvmClient(
        Credentials(SECRET_ID, SECRET_KEY),
        "ap-guangzhou",
        endpoint="http://localhost/v2/index.php",
        transport=transport(EmulatorApp(state, clock=clock)),
        rate_limit=None,
    )
    desired_file = tmp_path / "b.yaml"
    desired_file.write_text(
        "version: 1\nregion: ap-guangzhou\nscope: keys\nkeys:\n"
        + "".join(f"  {k}:\n    instances: []\n" for k in (a, b, c))
        + "safety:\n  max_unbind_percent: 100\n"
    )
    desired = load_paths([desired_file]).by_region["ap-guangzhou"]
    plan = build_plan(desired, observe_for_plan(client, desired), endpoint="test")
    assert {(ch.key_id, ch.instance_id) for ch in plan.ready_changes} == {(a, r), (b, s), (c, r)}
    # The shape a colouring makes on bigger fleets, here on three bindings: r in waves 0 and 2,
    # the wave between them touching only s (so no wave's own calls make anyone wait for r).
    waves = (Batch(0, (a,), (r,)), Batch(1, (b,), (s,)), Batch(2, (c,), (r,)))
    plan = dataclasses.replace(plan, batches=waves)
    events: list[ExecEvent] = []
    options = ExecOptions(clock=clock, sleep=clock.sleep, poll_initial=0.5)
    result = Executor(client, plan, options=options, on_event=events.append).run()
    assert result.count(Outcome.DONE) == 3
    assert state.bindings("ap-guangzhou") == set()
    assert client.calls["UnBindInstanceKey"] == 3  # none refused, none sent again
    assert not [e for e in events if e.kind in (EventKind.CALL_FAILED, EventKind.RETRY)]


# --------------------------------------------------------------------------- request encoding


@given(st.dictionaries(st.text(max_size=12), st.text(max_size=30), max_size=8))
def test_encode_params_is_urlencode_with_quote(params: dict[str, str]) -> None:
    try:
        expected = urlencode(params, quote_via=quote, safe="")
    except UnicodeEncodeError:  # lone surrogates: both refuse them
        with pytest.raises(UnicodeEncodeError):
            encode_params(params)
        return
    assert encode_params(params) == expected


# --------------------------------------------------------------------------- answer parsing

_ids = st.from_regex(r"ins-[a-z0-9]{8}", fullmatch=True)


@given(
    st.lists(
        st.one_of(_ids, _ids.map(lambda i: i + "\n" + i), _ids.map(lambda i: i[:-1]), st.text(max_size=14)),
        max_size=6,
    )
)
def test_checking_a_list_of_ids_at_once_agrees_with_checking_each(values: list[str]) -> None:
    assert client_module._all_instance_ids(values) == all(is_instance_id(v) for v in values)


def test_checking_a_list_of_ids_at_once_refuses_ids_run_together() -> None:
    assert client_module._all_instance_ids(["ins-aaaaaaaa", "ins-bbbbbbbb"])
    assert not client_module._all_instance_ids(["ins-aaaaaaaa\nins-bbbbbbbb"])
    assert not client_module._all_instance_ids(["ins-aaaaaaaa\nins-bbbbbbbb", ""])
    assert not client_module._all_instance_ids(["ins-aaaaaaaa", 5])


# --------------------------------------------------------------------------- schema validators


def _corruptions(plan: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    for path, value in [
        (("changes", 0, "status"), "maybe"),
        (("changes", 1, "instance_id"), "ins-BAD"),
        (("batches", 0, "wave"), -1),
        (("batches", 0, "instance_ids"), ["ins-aaaaaaaa", 7]),
        (("findings",), [{"severity": "info"}]),
        (("summary", "calls"), "many"),
        (("fingerprint", "key_ids"), None),
    ]:
        doc = copy.deepcopy(plan)
        target: Any = doc
        for step in path[:-1]:
            target = target[step]
        target[path[-1]] = value
        out.append(doc)
    return out


@pytest.mark.parametrize("name", ["plan", "bindings"])
def test_validators_with_inlined_refs_judge_like_the_schema(name: str, tmp_path: Path) -> None:
    """``schemas.validator`` replaces local $refs by their target (faster); same verdicts."""
    gen = generate(80, 8, seed=2, remove_fraction=0.4)
    desired_file = tmp_path / "b.yaml"
    desired_file.write_text(gen.desired_text)
    desired = load_paths([desired_file]).by_region[gen.region]
    plan = build_plan(desired, observed_truth(gen), endpoint="test")
    docs: list[Any] = [json.loads(dump_plan(plan))] if name == "plan" else [yaml.safe_load(gen.desired_text)]
    if name == "plan":
        docs += _corruptions(docs[0])
    else:
        docs += [{**docs[0], "scope": "everything"}, {**docs[0], "keys": {"skey-x": {"instances": [1]}}}]
    plain = Draft202012Validator(load_schema(name))
    fast = validator(name)
    assert json.dumps(fast.schema).count("$ref") < json.dumps(plain.schema).count("$ref")
    for doc in docs:
        expected = sorted((list(e.absolute_path), e.message) for e in plain.iter_errors(doc))
        assert sorted((list(e.absolute_path), e.message) for e in fast.iter_errors(doc)) == expected
    assert not list(fast.iter_errors(docs[0]))
    if name == "plan":
        assert all(list(fast.iter_errors(doc)) for doc in docs[1:])
