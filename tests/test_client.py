"""CvmClient against the real emulator: in-process (its httpx transport) and over a socket.

Every request is signed and verified by the emulator, so a wrong signature, a reused Nonce or a
Timestamp off the emulator's clock fails these tests. Time is fake: one ``FakeTime`` drives the
client (Timestamp, backoff, rate limit) and the emulator (replay window, rate limit), and its
``sleep`` only records and advances the clock.
"""

from __future__ import annotations

import logging
import math
import random
import socket
import time
from collections.abc import Iterator
from typing import Any

import pytest
from support import FakeTime

from reconciler.cloud.client import AttemptRecord, CallResult, CvmClient, instance_state
from reconciler.cloud.credentials import Credentials
from reconciler.emulator.app import EmulatorApp, transport
from reconciler.emulator.faults import FaultProfile
from reconciler.emulator.server import serve_in_thread
from reconciler.emulator.state import FleetState
from reconciler.errors import ApiError, ApiErrorKind, ConfigError, TransportError
from reconciler.model import Instance, KeyPair

SECRET_ID = "AKIDclienttest0123456789abcdefXYZ"
SECRET_KEY = "clientTestSecretKey+/=0123456789xy"
CREDS = Credentials(SECRET_ID, SECRET_KEY)
REGION = "ap-guangzhou"

MODES = [
    pytest.param("GET", "HmacSHA256", id="GET-sha256"),
    pytest.param("POST", "HmacSHA256", id="POST-sha256"),
    pytest.param("GET", "HmacSHA1", id="GET-sha1"),
    pytest.param("POST", "HmacSHA1", id="POST-sha1"),
]



def iid(n: int) -> str:
    return f"ins-{n:08d}"


def kid(n: int) -> str:
    return f"skey-{n:08d}"


def fleet(n_instances: int = 6, n_keys: int = 3, *, status: int = 4) -> dict[str, Any]:
    """Instances ins-00000000.. (Linux, ``status``); key n bound to instances n and n+1."""
    instances = [
        {"id": iid(i), "name": f"web-{i}", "os": "centos7.2x86_64", "status": status}
        for i in range(n_instances)
    ]
    keys = [
        {"id": kid(k), "name": f"key-{k}", "bound": [iid(i) for i in (k, k + 1) if i < n_instances]}
        for k in range(n_keys)
    ]
    return {
        "credentials": [{"secret_id": SECRET_ID, "secret_key": SECRET_KEY}],
        "regions": {REGION: {"instances": instances, "keys": keys}},
    }


class Env:
    """An emulator (state + app) and a client talking to it in-process."""

    def __init__(
        self,
        data: dict[str, Any] | None = None,
        *,
        app_options: dict[str, Any] | None = None,
        **client_options: Any,
    ) -> None:
        self.time = FakeTime()
        self.state = FleetState.from_data(data or fleet(), clock=self.time.clock)
        self.app = EmulatorApp(self.state, **(app_options or {}))
        self.records: list[AttemptRecord] = []
        options: dict[str, Any] = {
            "transport": transport(self.app),
            "clock": self.time.clock,
            "sleep": self.time.sleep,
            "on_attempt": self.records.append,
        }
        options.update(client_options)
        self.client = CvmClient(options.pop("credentials", CREDS), REGION, **options)


@pytest.fixture
def make_env() -> Iterator[Any]:
    made: list[Env] = []

    def make(*args: Any, **kwargs: Any) -> Env:
        env = Env(*args, **kwargs)
        made.append(env)
        return env

    yield make
    for env in made:
        env.client.close()


# --------------------------------------------------------------------------- reads


@pytest.mark.parametrize(("http_method", "signature_method"), MODES)
def test_describe_results_are_typed_and_correct(
    make_env: Any, http_method: str, signature_method: str
) -> None:
    env = make_env(http_method=http_method, signature_method=signature_method)
    keys = env.client.describe_key_pairs()
    assert keys == [
        KeyPair(kid(0), "key-0", (iid(0), iid(1))),
        KeyPair(kid(1), "key-1", (iid(1), iid(2))),
        KeyPair(kid(2), "key-2", (iid(2), iid(3))),
    ]
    assert env.client.describe_key_pairs([kid(2), kid(9)]) == [KeyPair(kid(2), "key-2", (iid(2), iid(3)))]
    instances = env.client.describe_instances([iid(5), iid(0), "ins-zzzzzzzz"])
    assert sorted(instances, key=lambda i: i.instance_id) == [
        Instance(iid(0), "web-0", *instance_state(4), "centos7.2x86_64"),
        Instance(iid(5), "web-5", *instance_state(4), "centos7.2x86_64"),
    ]
    assert all(type(i) is Instance for i in instances)
    assert env.app.request_counts == {"DescribeKeyPairs": 2, "DescribeInstances": 1}
    assert env.client.calls == env.app.request_counts
    assert [r.code for r in env.records] == [0, 0, 0]


def test_short_region_code_is_sent_as_long_name(make_env: Any) -> None:
    env = make_env()
    env.client.close()
    client = CvmClient(CREDS, "gz", transport=transport(env.app), clock=env.time.clock)
    with client:
        assert client.region == REGION
        assert len(client.describe_key_pairs()) == 3


def test_paging_250_keys_takes_3_calls_and_returns_every_key(make_env: Any) -> None:
    env = make_env(fleet(n_instances=260, n_keys=250), rate_limit=None)
    keys = env.client.describe_key_pairs()
    assert env.app.request_counts["DescribeKeyPairs"] == 3
    assert env.client.calls["DescribeKeyPairs"] == 3
    assert [k.key_id for k in keys] == [kid(k) for k in range(250)]
    assert keys[249].bound_instance_ids == (iid(249), iid(250))
    assert {(k.key_id, i) for k in keys for i in k.bound_instance_ids} == env.state.bindings(REGION)


@pytest.mark.parametrize(("n_keys", "calls"), [(0, 1), (1, 1), (100, 1), (101, 2), (300, 3)])
def test_paging_call_count_is_ceil_n_over_100(make_env: Any, n_keys: int, calls: int) -> None:
    env = make_env(fleet(n_instances=2, n_keys=n_keys), rate_limit=None)
    assert len(env.client.describe_key_pairs()) == n_keys
    assert env.app.request_counts["DescribeKeyPairs"] == calls


def test_key_id_filter_is_sent_in_chunks_of_100(make_env: Any) -> None:
    env = make_env(fleet(n_instances=2, n_keys=300), rate_limit=None)
    wanted = [kid(k) for k in range(0, 300, 2)] + [kid(k) for k in range(900, 1000)]  # 250 IDs
    keys = env.client.describe_key_pairs(wanted)
    assert env.app.request_counts["DescribeKeyPairs"] == math.ceil(250 / 100)
    assert {k.key_id for k in keys} == {kid(k) for k in range(0, 300, 2)}
    assert env.client.describe_key_pairs([]) == []
    assert env.app.request_counts["DescribeKeyPairs"] == 3


def test_describe_instances_250_ids_takes_3_calls(make_env: Any) -> None:
    env = make_env(fleet(n_instances=300, n_keys=1), rate_limit=None)
    wanted = [iid(i) for i in range(50, 300)]
    instances = env.client.describe_instances(wanted)
    assert env.app.request_counts["DescribeInstances"] == 3
    assert sorted(i.instance_id for i in instances) == wanted
    assert env.client.describe_instances([]) == []
    assert env.app.request_counts["DescribeInstances"] == 3


def test_pages_are_fetched_concurrently(make_env: Any) -> None:
    # Each request takes 100 ms (the emulator really sleeps): 9 pages one after another would
    # take 0.9 s; with the pages after the first in parallel it is about two round trips.
    env = make_env(fleet(n_instances=2, n_keys=900), app_options={"latency_ms": 100}, rate_limit=None)
    started = time.perf_counter()
    assert len(env.client.describe_key_pairs()) == 900
    elapsed = time.perf_counter() - started
    assert env.app.request_counts["DescribeKeyPairs"] == 9
    assert elapsed < 0.6, elapsed


# --------------------------------------------------------------------------- mutations


@pytest.mark.parametrize(("http_method", "signature_method"), MODES)
def test_unbind_changes_state(make_env: Any, http_method: str, signature_method: str) -> None:
    env = make_env(http_method=http_method, signature_method=signature_method)
    result = env.client.unbind_instance_key(kid(1), [iid(1), iid(2)])
    assert result == CallResult("UnBindInstanceKey", 1)
    assert [(m.action, m.key_id, m.instance_ids) for m in env.state.mutations] == [
        ("UnBindInstanceKey", kid(1), (iid(1), iid(2)))
    ]
    assert (kid(1), iid(1)) not in env.state.bindings(REGION)
    assert (kid(0), iid(1)) in env.state.bindings(REGION)
    assert env.client.describe_key_pairs([kid(1)]) == [KeyPair(kid(1), "key-1", ())]
    record = env.records[0]
    assert (record.action, record.key_id, record.instance_ids, record.attempt, record.code) == (
        "UnBindInstanceKey",
        kid(1),
        (iid(1), iid(2)),
        1,
        0,
    )
    assert record.http_status == 200 and record.region == REGION and record.retry_in_s is None


def test_bind_stop_start_change_state(make_env: Any) -> None:
    env = make_env(fleet(status=2))
    env.client.stop_instances([iid(4)], hard=True)
    assert env.state.settled_status(REGION, iid(4)) == 4
    env.client.bind_instance_key(kid(0), [iid(4)])
    assert (kid(0), iid(4)) in env.state.bindings(REGION)
    env.client.start_instances([iid(4)])
    assert env.state.settled_status(REGION, iid(4)) == 2
    assert [m.action for m in env.state.mutations] == [
        "StopInstances",
        "BindInstanceKey",
        "StartInstances",
    ]


def test_refused_unbind_is_an_api_error_naming_the_reason(make_env: Any) -> None:
    env = make_env(fleet(status=2))  # running: unbind needs status 4
    with pytest.raises(ApiError) as info:
        env.client.unbind_instance_key(kid(0), [iid(0)])
    assert info.value.code == 5100
    assert "status 4" in info.value.api_message
    assert env.app.request_counts["UnBindInstanceKey"] == 1
    assert env.state.mutations == []


# --------------------------------------------------------------------------- retries


def test_throttled_reads_are_retried_with_backoff_until_they_succeed(make_env: Any) -> None:
    # The emulator allows 1 request/s per action; the client's own limiter is off, so it sends
    # too fast, gets 4400, backs off (recorded fake sleeps advance the shared clock) and retries.
    env = make_env(
        fleet(n_instances=2, n_keys=400),
        app_options={"rate_limit": 1.0},
        rate_limit=None,
        max_attempts=10,
        backoff_base=0.5,
        backoff_cap=2.0,
    )
    keys = env.client.describe_key_pairs()
    assert len(keys) == 400
    throttled = [r for r in env.records if r.code == 4400]
    assert throttled, "the emulator never throttled: the test proves nothing"
    assert all(r.retry_in_s is not None for r in throttled)
    assert env.time.sleeps and all(0 <= s <= 2.0 for s in env.time.sleeps)
    assert sum(1 for r in env.records if r.code == 0) == 4
    assert env.app.request_counts["DescribeKeyPairs"] == len(env.records)
    assert env.client.calls["DescribeKeyPairs"] == len(env.records)


def test_a_throttled_attempt_waits_at_least_a_second_so_the_default_attempts_get_through(
    make_env: Any,
) -> None:
    """The quotas are per second: a throttled read retried sooner mostly meets the same full
    bucket, and five quick attempts were spent in 1.5 s. With the client's limiter off against
    a server allowing 1 a second, the four pages still get through on the default attempts."""
    data, server_limit = fleet(n_instances=2, n_keys=400), {"rate_limit": 1.0}
    env = make_env(data, app_options=server_limit, rate_limit=None, rng=random.Random(7))
    assert len(env.client.describe_key_pairs()) == 400
    throttled = [r for r in env.records if r.code == 4400]
    assert throttled, "the emulator never throttled: the test proves nothing"
    assert all(r.retry_in_s is not None and r.retry_in_s >= 1.0 for r in throttled)


def test_throttled_mutation_is_retried(make_env: Any) -> None:
    env = make_env(app_options={"rate_limit": 1.0}, rate_limit=None, backoff_base=1.0)
    env.client.unbind_instance_key(kid(0), [iid(0)])
    result = env.client.unbind_instance_key(kid(1), [iid(1)])  # same second: throttled first
    assert result.attempts >= 2
    assert [r.code for r in env.records if r.key_id == kid(1)][-1] == 0
    assert [r.code for r in env.records if r.key_id == kid(1)][:-1] == [4400] * (result.attempts - 1)
    assert len(env.state.mutations) == 2


def test_client_rate_limit_keeps_under_the_emulator_limit(make_env: Any) -> None:
    env = make_env(fleet(n_instances=2, n_keys=500), app_options={"rate_limit": 2.0}, rate_limit=2.0)
    assert len(env.client.describe_key_pairs()) == 500
    assert all(r.code == 0 for r in env.records)
    assert env.app.request_counts["DescribeKeyPairs"] == 5
    assert sum(env.time.sleeps) == pytest.approx(2.0)  # burst 1 (half the rate), then 4 at 0.5 s each


def test_permanent_error_is_raised_once_not_retried(make_env: Any) -> None:
    env = make_env()
    with pytest.raises(ApiError) as info:
        env.client.unbind_instance_key("skey-zzzzzzzz", [iid(0)])
    assert info.value.code == 5000 and not info.value.retryable
    assert env.app.request_counts["UnBindInstanceKey"] == 1
    assert len(env.records) == 1 and env.records[0].retry_in_s is None
    assert env.time.sleeps == []


def test_wrong_path_is_a_permanent_transport_error(make_env: Any) -> None:
    env = make_env(endpoint="https://cvm.api.qcloud.com/v3/index.php")
    with pytest.raises(TransportError, match="HTTP 404") as info:
        env.client.describe_key_pairs()
    assert not info.value.retryable
    assert env.client.calls == {"DescribeKeyPairs": 1}
    assert (env.records[0].http_status, env.records[0].code) == (404, None)


def test_wrong_secret_key_is_4100_and_not_retried(make_env: Any) -> None:
    env = make_env(credentials=Credentials(SECRET_ID, "not-the-right-key"))
    with pytest.raises(ApiError) as info:
        env.client.describe_key_pairs()
    assert info.value.code == 4100
    assert env.app.request_counts["DescribeKeyPairs"] == 1


@pytest.mark.parametrize("action", ["UnBindInstanceKey", "BindInstanceKey"])
def test_mutation_answered_6000_is_not_retried(make_env: Any, action: str) -> None:
    faults = FaultProfile.only("error", seed=1, actions=[action])
    env = make_env(app_options={"faults": faults})
    call = env.client.unbind_instance_key if action == "UnBindInstanceKey" else env.client.bind_instance_key
    with pytest.raises(ApiError) as info:
        call(kid(0), [iid(0)])
    assert info.value.code in (6000, 6200) and info.value.kind is ApiErrorKind.AMBIGUOUS
    assert env.app.request_counts[action] == 1
    assert env.time.sleeps == []


def test_read_answered_6000_is_retried(make_env: Any) -> None:
    # Half the DescribeKeyPairs requests fail with 6000/6200; reads retry them.
    faults = FaultProfile(seed=3, error_rate=0.5, actions=frozenset({"DescribeKeyPairs"}))
    env = make_env(fleet(n_instances=2, n_keys=350), app_options={"faults": faults}, max_attempts=20)
    assert len(env.client.describe_key_pairs()) == 350
    assert any(r.code in (6000, 6200) for r in env.records)
    assert env.app.request_counts["DescribeKeyPairs"] == len(env.records) > 4


@pytest.mark.parametrize(
    ("kind", "ambiguous"), [("http", True), ("lost", True), ("drop", True), ("slow", True)]
)
def test_mutation_with_unknown_outcome_is_not_retried(make_env: Any, kind: str, ambiguous: bool) -> None:
    faults = FaultProfile.only(kind, actions=["UnBindInstanceKey"], slow_seconds=30.0)
    env = make_env(app_options={"faults": faults}, timeout=1.0)
    with pytest.raises(TransportError) as info:
        env.client.unbind_instance_key(kid(0), [iid(0)])
    assert info.value.ambiguous is ambiguous
    assert env.app.request_counts["UnBindInstanceKey"] == 1
    assert len(env.records) == 1 and env.records[0].code is None


def test_read_with_transport_faults_is_retried(make_env: Any) -> None:
    faults = FaultProfile(
        seed=7, http_error_rate=0.4, drop_rate=0.4, actions=frozenset({"DescribeInstances"})
    )
    env = make_env(app_options={"faults": faults}, max_attempts=30)
    found = env.client.describe_instances([iid(0), iid(1)])
    assert len(found) == 2
    kinds = [f.kind for f in env.app.injected_faults]
    assert kinds, "no fault was injected: the test proves nothing"
    failed = env.records[:-1]
    assert len(failed) == len(kinds)
    for record, kind in zip(failed, kinds, strict=True):
        assert record.retry_in_s is not None
        assert record.http_status in ((502, 503) if kind == "http" else (None,))
    assert env.records[-1].code == 0


def test_connection_refused_is_not_ambiguous_and_retried_even_for_mutations() -> None:
    with socket.socket() as sock:  # a port that was free a moment ago: nothing listens on it
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    fake = FakeTime()
    records: list[AttemptRecord] = []
    with CvmClient(
        CREDS,
        REGION,
        endpoint=f"http://127.0.0.1:{port}/v2/index.php",
        clock=fake.clock,
        sleep=fake.sleep,
        max_attempts=3,
        on_attempt=records.append,
    ) as client, pytest.raises(TransportError) as info:
        client.unbind_instance_key(kid(0), [iid(0)])
    assert info.value.ambiguous is False and info.value.retryable
    assert client.calls["UnBindInstanceKey"] == 3
    assert [r.attempt for r in records] == [1, 2, 3]
    assert len(fake.sleeps) == 2
    assert SECRET_KEY not in str(info.value)


# --------------------------------------------------------------------------- refusals


def test_http_to_a_non_loopback_host_is_refused() -> None:
    with pytest.raises(ConfigError, match="plain http"):
        CvmClient(CREDS, REGION, endpoint="http://cvm.api.qcloud.com/v2/index.php")
    with pytest.raises(ConfigError, match="unknown region"):
        CvmClient(CREDS, "Mars North 1")
    # Open-ended, as the loader: a well-formed region newer than this version's table works.
    assert CvmClient(CREDS, "ap-newplace-1").region == "ap-newplace-1"
    with pytest.raises(ConfigError, match="GET or POST"):
        CvmClient(CREDS, REGION, http_method="PUT")
    with pytest.raises(ConfigError, match="signature method"):
        CvmClient(CREDS, REGION, signature_method="HmacMD5")


CRAFTED = "ins-1a2b3c4d&Action=BindInstanceKey"


@pytest.mark.parametrize(
    "call",
    [
        lambda c: c.unbind_instance_key(kid(0), [iid(0), CRAFTED]),
        lambda c: c.unbind_instance_key("skey-1a2b3c4d&keyId=skey-00000001", [iid(0)]),
        lambda c: c.bind_instance_key(kid(0), [CRAFTED]),
        lambda c: c.stop_instances([CRAFTED]),
        lambda c: c.start_instances(["INS-00000000"]),
        lambda c: c.describe_instances([iid(0), CRAFTED]),
        lambda c: c.describe_key_pairs(["skey-0000000"]),
        lambda c: c.unbind_instance_key(kid(0), iid(0)),  # a string, not a list
        lambda c: c.unbind_instance_key(kid(0), []),
        lambda c: c.unbind_instance_key(kid(0), [iid(i) for i in range(101)]),
        lambda c: c.unbind_instance_key(kid(0), [iid(0), iid(0)]),
    ],
)
def test_bad_ids_are_refused_before_any_request(make_env: Any, call: Any) -> None:
    env = make_env()
    with pytest.raises(ValueError):
        call(env.client)
    assert sum(env.app.request_counts.values()) == 0
    assert sum(env.client.calls.values()) == 0
    assert env.records == []


def test_crafted_id_is_named_in_the_error(make_env: Any) -> None:
    env = make_env()
    with pytest.raises(ValueError, match="invalid instance ID 'ins-1a2b3c4d&Action="):
        env.client.unbind_instance_key(kid(0), [CRAFTED])


# --------------------------------------------------------------------------- secrets


def test_secret_key_never_shows(make_env: Any, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    faults = FaultProfile.only("throttle", rate=0.5, seed=2)
    env = make_env(app_options={"faults": faults}, max_attempts=10)
    env.client.describe_key_pairs()
    env.client.describe_instances([iid(0)])
    errors: list[Exception] = []
    for call in (
        lambda: env.client.unbind_instance_key("skey-zzzzzzzz", [iid(0)]),
        lambda: Env(credentials=Credentials(SECRET_ID, SECRET_KEY + "x")).client.describe_key_pairs(),
    ):
        with pytest.raises(ApiError) as info:
            call()
        errors.append(info.value)
    texts = [repr(env.client), repr(CREDS), str(CREDS), caplog.text]
    texts += [str(e) for e in errors] + [repr(e) for e in errors]
    texts += [repr(r) for r in env.records]
    assert any("DescribeKeyPairs attempt" in t for t in texts)  # logging did happen
    for text in texts:
        assert SECRET_KEY not in text
        assert "Signature=" not in text
    # httpx logs each request URL at INFO: the client makes it drop the query string.
    assert "HTTP Request: GET" in caplog.text
    assert "Signature" not in caplog.text and SECRET_ID not in caplog.text


# --------------------------------------------------------------------------- real socket


def test_over_a_real_socket_every_method_and_signature() -> None:
    # One server for all four combinations (stopping a wsgiref server takes up to 0.5 s).
    fake = FakeTime()
    state = FleetState.from_data(fleet(n_instances=150, n_keys=120), clock=fake.clock)
    state.set_instance_status(REGION, iid(149), 2)
    slow_stop = FaultProfile.only("slow", actions=["StopInstances"], slow_seconds=0.3)
    app = EmulatorApp(state, faults=slow_stop)
    with serve_in_thread(app) as server:
        for n, (http_method, signature_method) in enumerate(
            [("GET", "HmacSHA256"), ("POST", "HmacSHA256"), ("GET", "HmacSHA1"), ("POST", "HmacSHA1")]
        ):
            app.request_counts.clear()
            with CvmClient(
                CREDS,
                REGION,
                endpoint=server.url,
                http_method=http_method,
                signature_method=signature_method,
                clock=fake.clock,
                sleep=fake.sleep,
                rate_limit=None,
            ) as client:
                keys = client.describe_key_pairs()
                assert len(keys) == 120 and keys[n] == KeyPair(kid(n), f"key-{n}", (iid(n), iid(n + 1)))
                instances = client.describe_instances([iid(i) for i in range(150)])
                assert sorted(instances, key=lambda i: i.instance_id)[n] == Instance(
                    iid(n), f"web-{n}", *instance_state(4), "centos7.2x86_64"
                )
                client.unbind_instance_key(kid(n), [iid(n), iid(n + 1)])
            assert app.request_counts == {
                "DescribeKeyPairs": 2,
                "DescribeInstances": 2,
                "UnBindInstanceKey": 1,
            }, http_method + signature_method
            assert state.mutations[-1].key_id == kid(n)
            assert (kid(n), iid(n)) not in state.bindings(REGION)
        assert len(state.mutations) == 4
        # A read timeout on a mutating call: ambiguous (it was carried out), so not retried.
        with CvmClient(
            CREDS, REGION, endpoint=server.url, clock=fake.clock, sleep=fake.sleep, timeout=0.1
        ) as client, pytest.raises(TransportError) as info:
            client.stop_instances([iid(149)])
        assert info.value.ambiguous and info.value.retryable
        assert app.request_counts["StopInstances"] == 1
        assert state.mutations[-1].action == "StopInstances"
