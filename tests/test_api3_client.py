"""The CVM API 3.0 client over real HTTP (httpx's WSGI transport) against a server-side fixture
that checks every TC3 signature and answers the documented shapes (tests/support_api3.py):
reads and their paging, the InstanceState table, writes and their RequestId, every error kind,
retries, rate limits, temporary credentials, endpoints."""

from __future__ import annotations

import itertools
import json
import random
import socket
import threading
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from support import FakeTime
from support_api3 import FakeTencent

from reconciler.cloud.api3 import Api3Client, instance_state
from reconciler.cloud.client import AttemptRecord
from reconciler.cloud.credentials import Credentials
from reconciler.cloud.endpoint import api3_endpoint
from reconciler.errors import ApiError, ApiErrorKind, ConfigError, TransportError
from reconciler.model import DOCUMENTED_RATE_LIMITS as LIMITS
from reconciler.model import ApiVersion, InstanceState

SECRET_ID = "AKIDapi3test000000000000000000000000"
SECRET_KEY = "api3-secret-key-never-printed"


def ins(n: int) -> str:
    return f"ins-{n:08d}"


def key(n: int) -> str:
    return f"skey-{n:08d}"


class Env:
    def __init__(self, **options: Any) -> None:
        self.time = FakeTime()
        self.server = FakeTencent(self.time.clock)
        self.server.add_secret(SECRET_ID, SECRET_KEY)
        self.records: list[AttemptRecord] = []
        options.setdefault("rate_limit", None)
        self.options = options

    def client(self, credentials: Credentials | None = None, **more: Any) -> Api3Client:
        options: dict[str, Any] = {
            "transport": self.server.transport(),
            "clock": self.time.clock,
            "sleep": self.time.sleep,
            "rng": random.Random(1),
            "on_attempt": self.records.append,
            **self.options,
            **more,
        }
        return Api3Client(credentials or Credentials(SECRET_ID, SECRET_KEY), "ap-guangzhou", **options)


@pytest.fixture
def env() -> Env:
    return Env()


def test_it_is_a_3_0_client_with_the_documented_defaults(env: Env) -> None:
    with env.client() as client:
        assert client.api is ApiVersion.V3
        assert client.endpoint == "https://cvm.tencentcloudapi.com/"
        assert SECRET_KEY not in repr(client) and SECRET_ID not in repr(client)
    assert LIMITS["DescribeInstances"] == 40
    assert LIMITS["DescribeKeyPairs"] == LIMITS["DisassociateInstancesKeyPairs"] == 10
    assert LIMITS["StopInstances"] == LIMITS["StartInstances"] == 10


def test_all_key_pairs_in_pages_of_100_with_their_bindings(env: Env) -> None:
    for n in range(250):
        env.server.add_key(key(n), bound=[ins(n % 7)] if n % 2 == 0 else [])
    with env.client() as client:
        keys = client.describe_key_pairs()
    assert len(keys) == 250
    bound = {k.key_id: k.bound_instance_ids for k in keys}
    assert bound[key(0)] == (ins(0),) and bound[key(1)] == ()
    assert sorted((s.body["Offset"], s.body["Limit"]) for s in env.server.seen) == [
        (0, 100),
        (100, 100),
        (200, 100),
    ]
    first = env.server.seen[0].headers
    assert first["x-tc-action"] == "DescribeKeyPairs" and first["x-tc-version"] == "2017-03-12"
    assert first["x-tc-region"] == "ap-guangzhou" and first["content-type"] == "application/json"
    assert first["authorization"].startswith(f"TC3-HMAC-SHA256 Credential={SECRET_ID}/")
    assert "x-tc-token" not in first
    assert all(r.code is None and r.request_id for r in env.records)


def test_key_pairs_by_id_in_batches_of_100(env: Env) -> None:
    for n in range(150):
        env.server.add_key(key(n))
    with env.client() as client:
        keys = client.describe_key_pairs([key(n) for n in range(160)])  # 10 unknown: absent
    assert len(keys) == 150
    assert sorted(len(s.body["KeyIds"]) for s in env.server.seen) == [60, 100]
    with env.client() as client:
        assert client.describe_key_pairs([]) == []
    assert len(env.server.seen) == 2


def test_instances_and_the_one_state_table(env: Env) -> None:
    env.server.add_key(key(1), bound=[ins(n) for n in range(150)])
    env.server.instances[ins(1)].state = "RUNNING"
    env.server.instances[ins(2)].os = "Windows Server 2019"
    env.server.instances[ins(3)].latest_operation = "StopInstances"
    env.server.instances[ins(3)].latest_operation_state = "OPERATING"
    env.server.instances[ins(3)].latest_operation_request_id = "req-x"
    env.server.instances[ins(4)].state = "SHUTDOWN"
    with env.client() as client:
        found = {i.instance_id: i for i in client.describe_instances([ins(n) for n in range(152)])}
    assert len(found) == 150 and sorted(len(s.body["InstanceIds"]) for s in env.server.seen) == [52, 100]
    assert found[ins(0)].state is InstanceState.STOPPED and found[ins(0)].api_state == "STOPPED"
    assert found[ins(1)].state is InstanceState.RUNNING
    assert found[ins(2)].is_windows and not found[ins(0)].is_windows
    assert found[ins(3)].state is InstanceState.BUSY and found[ins(3)].latest_operation == "StopInstances"
    assert found[ins(3)].latest_operation_request_id == "req-x"
    assert found[ins(4)].state is InstanceState.OTHER and found[ins(4)].api_state == "SHUTDOWN"
    assert instance_state("STARTING", None) is InstanceState.STARTING
    assert instance_state("STOPPING", "SUCCESS") is InstanceState.STOPPING
    assert instance_state("STOPPED", "FAILED") is InstanceState.STOPPED


def test_unbind_sends_every_key_and_instance_and_returns_the_request_id(env: Env) -> None:
    env.server.add_key(key(1), bound=[ins(1), ins(2)])
    env.server.add_key(key(2), bound=[ins(1), ins(2)])
    with env.client() as client:
        result = client.unbind([key(1), key(2)], [ins(1), ins(2)])
        after = {i.instance_id: i for i in client.describe_instances([ins(1), ins(2)])}
    call = env.server.seen[0]
    assert call.action == "DisassociateInstancesKeyPairs"
    assert call.body == {"InstanceIds": [ins(1), ins(2)], "KeyIds": [key(1), key(2)], "ForceStop": False}
    assert result.action == "DisassociateInstancesKeyPairs" and result.attempts == 1
    assert result.request_id == call.request_id
    assert after[ins(1)].latest_operation_request_id == result.request_id
    assert env.server.instances[ins(1)].keys == set()
    assert env.records[0].request_id == result.request_id and env.records[0].instance_ids == (ins(1), ins(2))
    assert env.records[0].key_ids == (key(1), key(2)) and env.records[0].key_id is None


def test_the_audit_log_keeps_request_ids(env: Env, tmp_path: Any) -> None:
    from reconciler.execute.audit import AuditLog

    env.server.add_key(key(1), bound=[ins(1)])
    env.server.script("DisassociateInstancesKeyPairs", "RequestLimitExceeded")
    with AuditLog(tmp_path / "audit.jsonl") as audit, env.client(on_attempt=audit) as client:
        result = client.unbind([key(1)], [ins(1)])
    lines = [json.loads(line) for line in (tmp_path / "audit.jsonl").read_text().splitlines()]
    assert [line["requestId"] for line in lines] == [s.request_id for s in env.server.seen]
    assert lines[-1]["requestId"] == result.request_id and lines[0]["code"] == "RequestLimitExceeded"
    assert lines[0]["keyIds"] == [key(1)] and lines[0]["keyId"] == key(1)


def _instance(field: str, value: str) -> Callable[[FakeTencent], None]:
    """Prepares the fake cloud: instance 1's ``field`` becomes ``value``."""

    def prepare(server: FakeTencent) -> None:
        setattr(server.instances[ins(1)], field, value)

    return prepare


def _answered(code: str) -> Callable[[FakeTencent], None]:
    """Prepares the fake cloud: the next unbind is answered with error ``code``."""
    return lambda server: server.script("DisassociateInstancesKeyPairs", code)


@pytest.mark.parametrize(
    ("prepare", "code", "kind"),
    [
        (_instance("state", "RUNNING"), "UnsupportedOperation.InstanceStateRunning", ApiErrorKind.BLOCKED),
        (_instance("state", "STOPPING"), "UnsupportedOperation.InstanceStateStopping", ApiErrorKind.BLOCKED),
        (
            _instance("os", "Windows Server 2016"),
            "UnsupportedOperation.InstanceOsWindows",
            ApiErrorKind.BLOCKED,
        ),
        (
            _instance("latest_operation_state", "OPERATING"),
            "OperationDenied.InstanceOperationInProgress",
            ApiErrorKind.BUSY,
        ),
        (_answered("MutexOperation.TaskRunning"), "MutexOperation.TaskRunning", ApiErrorKind.BUSY),
        (
            _answered("UnsupportedOperation.StoppedModeStopCharging"),
            "UnsupportedOperation.StoppedModeStopCharging",
            ApiErrorKind.BLOCKED,
        ),
        (lambda s: s.instances.pop(ins(1)), "InvalidInstanceId.NotFound", ApiErrorKind.NOT_FOUND),
        (lambda s: s.key_names.pop(key(1)), "InvalidKeyPairId.NotFound", ApiErrorKind.NOT_FOUND),
        (_answered("InternalError"), "InternalError", ApiErrorKind.AMBIGUOUS),
        (_answered("InternalServerError"), "InternalServerError", ApiErrorKind.AMBIGUOUS),
        (_answered("InvalidParameterValue"), "InvalidParameterValue", ApiErrorKind.INVALID),
    ],
)
def test_refused_unbinds_are_classified_and_never_retried(
    env: Env, prepare: Any, code: str, kind: ApiErrorKind
) -> None:
    env.server.add_key(key(1), bound=[ins(1)])
    prepare(env.server)
    with env.client() as client, pytest.raises(ApiError) as info:
        client.unbind([key(1)], [ins(1)])
    error = info.value
    assert error.code == code and error.kind is kind and not error.retryable
    assert error.request_id == env.server.seen[-1].request_id and error.request_id in str(error)
    assert env.server.actions() == ["DisassociateInstancesKeyPairs"]  # one attempt
    assert env.records[-1].code == code and env.records[-1].retry_in_s is None


def test_throttling_is_retried_for_reads_and_writes(env: Env) -> None:
    env.server.add_key(key(1), bound=[ins(1)])
    env.server.script("DescribeKeyPairs", "RequestLimitExceeded", "RequestLimitExceeded.UinLimitExceeded")
    env.server.script("DisassociateInstancesKeyPairs", "RequestLimitExceeded.GlobalRegionUinLimitExceeded")
    with env.client() as client:
        assert [k.key_id for k in client.describe_key_pairs()] == [key(1)]
        result = client.unbind([key(1)], [ins(1)])
    assert result.attempts == 2 and result.request_id == env.server.seen[-1].request_id
    assert [r.code for r in env.records] == [
        "RequestLimitExceeded",
        "RequestLimitExceeded.UinLimitExceeded",
        None,
        "RequestLimitExceeded.GlobalRegionUinLimitExceeded",
        None,
    ]
    assert all(r.request_id for r in env.records)
    assert len(env.time.sleeps) == 3  # backoff between attempts


def test_internal_errors_are_retried_on_reads_only(env: Env) -> None:
    env.server.add_key(key(1), bound=[ins(1)])
    env.server.script("DescribeInstances", "InternalError", "InternalServerError")
    with env.client() as client:
        assert len(client.describe_instances([ins(1)])) == 1
    assert env.server.actions() == ["DescribeInstances"] * 3


def test_http_errors_retried_on_reads_and_ambiguous_on_writes(env: Env) -> None:
    env.server.add_key(key(1), bound=[ins(1)])
    env.server.script("DescribeInstances", "HTTP500")
    env.server.script("DisassociateInstancesKeyPairs", "HTTP500")
    with env.client() as client:
        assert len(client.describe_instances([ins(1)])) == 1
        with pytest.raises(TransportError) as info:
            client.unbind([key(1)], [ins(1)])
    assert info.value.ambiguous and "HTTP 500" in str(info.value)
    assert env.server.actions() == ["DescribeInstances", "DescribeInstances", "DisassociateInstancesKeyPairs"]
    assert env.records[-1].http_status == 500 and env.records[-1].retry_in_s is None
    assert env.records[0].http_status == 500 and env.records[1].http_status == 200


def test_connection_refused_is_a_transport_error_not_sent() -> None:
    time = FakeTime()
    with socket.socket() as probe:  # a port nobody listens on: a real refused connection
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    client = Api3Client(
        Credentials(SECRET_ID, SECRET_KEY),
        "ap-guangzhou",
        endpoint=f"http://127.0.0.1:{port}/",
        clock=time.clock,
        sleep=time.sleep,
        rate_limit=None,
        max_attempts=2,
    )
    with client, pytest.raises(TransportError) as info:
        client.unbind([key(1)], [ins(1)])
    # Certainly not sent: even a mutating call may be sent again.
    assert not info.value.ambiguous and client.calls["DisassociateInstancesKeyPairs"] == 2


def test_authentication_failures_carry_a_hint_and_no_secret(env: Env) -> None:
    with env.client(Credentials(SECRET_ID, "not-the-right-key")) as client, pytest.raises(ApiError) as info:
        client.describe_instances([ins(1)])
    assert info.value.code == "AuthFailure.SignatureFailure" and info.value.kind is ApiErrorKind.AUTH
    assert info.value.hint and "SecretKey" in info.value.hint
    assert len(env.server.seen) == 1
    with (
        env.client(Credentials("AKIDunknown0000000000", SECRET_KEY)) as client,
        pytest.raises(ApiError) as info,
    ):
        client.describe_instances([ins(1)])
    assert info.value.code == "AuthFailure.SecretIdNotFound" and info.value.kind is ApiErrorKind.AUTH
    for text in (str(info.value), repr(info.value), info.value.hint or ""):
        assert SECRET_KEY not in text


def test_a_clock_off_by_more_than_5_minutes_is_signature_expire(env: Env) -> None:
    skewed = FakeTime(env.time.now + 400)
    client = Api3Client(
        Credentials(SECRET_ID, SECRET_KEY),
        "ap-guangzhou",
        transport=env.server.transport(),
        clock=skewed.clock,
        sleep=skewed.sleep,
        rate_limit=None,
    )
    with client, pytest.raises(ApiError) as info:
        client.describe_instances([ins(1)])
    assert info.value.code == "AuthFailure.SignatureExpire" and "clock" in (info.value.hint or "")


def test_temporary_credentials_send_their_token(env: Env) -> None:
    env.server.add_secret("AKIDtemporary000000000", "temp-key", token="session-token-secret")
    env.server.add_key(key(1), bound=[ins(1)])
    with env.client(
        Credentials("AKIDtemporary000000000", "temp-key", token="session-token-secret")
    ) as client:
        assert len(client.describe_instances([ins(1)])) == 1
    assert env.server.seen[-1].headers["x-tc-token"] == "session-token-secret"
    # Without the token the same keys are refused.
    with (
        env.client(Credentials("AKIDtemporary000000000", "temp-key")) as client,
        pytest.raises(ApiError) as info,
    ):
        client.describe_instances([ins(1)])
    assert info.value.code == "AuthFailure.TokenFailure" and "TENCENTCLOUD_SECURITY_TOKEN" in (
        info.value.hint or ""
    )


def test_each_attempt_is_signed_afresh(env: Env) -> None:
    env.server.add_key(key(1), bound=[ins(1)])
    env.server.script("DescribeInstances", "RequestLimitExceeded")
    ticks = itertools.count(int(env.time.now))
    with env.client(clock=lambda: float(next(ticks))) as client:
        client.describe_instances([ins(1)])
    stamps = [int(s.headers["x-tc-timestamp"]) for s in env.server.seen]
    signatures = [s.headers["authorization"] for s in env.server.seen]
    assert len(stamps) == 2 and stamps[1] > stamps[0] and signatures[0] != signatures[1]


def test_stop_and_start_bodies(env: Env) -> None:
    env.server.add_key(key(1), bound=[ins(1), ins(2)])
    with env.client() as client:
        stop = client.stop_instances([ins(1)])
        client.stop_instances([ins(2)], hard=True)
        start = client.start_instances([ins(1)])
    bodies = [s.body for s in env.server.seen]
    assert bodies[0] == {"InstanceIds": [ins(1)], "StopType": "SOFT", "StoppedMode": "KEEP_CHARGING"}
    assert bodies[1] == {"InstanceIds": [ins(2)], "StopType": "HARD", "StoppedMode": "KEEP_CHARGING"}
    assert bodies[2] == {"InstanceIds": [ins(1)]}
    assert stop.request_id == env.server.seen[0].request_id and start.action == "StartInstances"


def test_limits_and_bad_ids_are_refused_before_any_call(env: Env) -> None:
    with env.client() as client:
        with pytest.raises(ValueError, match="1 to 100 key IDs"):
            client.unbind([key(n) for n in range(101)], [ins(1)])
        with pytest.raises(ValueError, match="1 to 100 instance IDs"):
            client.unbind([key(1)], [ins(n) for n in range(101)])
        with pytest.raises(ValueError, match="duplicates"):
            client.unbind([key(1), key(1)], [ins(1)])
        with pytest.raises(ValueError, match="invalid instance ID"):
            client.stop_instances(["ins-../../x"])
        with pytest.raises(ValueError, match="invalid key ID"):
            client.describe_key_pairs(["skey-BAD"])
    assert env.server.seen == []


def test_per_action_rate_limits_from_the_documented_figures() -> None:
    env = Env(rate_limit={})  # {}: the documented defaults
    for n in range(3):
        env.server.add_key(key(n), bound=[ins(n)])
    with env.client() as client:
        for _ in range(25):
            client.describe_instances([ins(1)])
        for _ in range(8):
            client.describe_key_pairs([key(1)])
    # Burst half the rate: DescribeInstances 20 free then 1/40 s each; DescribeKeyPairs 5 then 1/10 s.
    instance_sleeps = env.time.sleeps[:5]
    key_sleeps = env.time.sleeps[5:]
    assert instance_sleeps == pytest.approx([0.025] * 5, rel=1e-3)
    assert key_sleeps == pytest.approx([0.1] * 3, rel=1e-3)


def test_endpoints_regional_international_and_checked(env: Env) -> None:
    assert api3_endpoint() == "https://cvm.tencentcloudapi.com/"
    assert api3_endpoint(region="ap-singapore") == "https://cvm.ap-singapore.tencentcloudapi.com/"
    assert api3_endpoint(intl=True) == "https://cvm.intl.tencentcloudapi.com/"
    assert api3_endpoint("sts") == "https://sts.tencentcloudapi.com/"
    env.server.add_key(key(1), bound=[ins(1)])
    # The signature covers the Host header: the fixture verifies it for the regional host.
    with env.client(endpoint=api3_endpoint(region="ap-guangzhou")) as client:
        assert len(client.describe_instances([ins(1)])) == 1
    assert env.server.seen[-1].headers["host"] == "cvm.ap-guangzhou.tencentcloudapi.com"
    with pytest.raises(ConfigError, match="plain http"):
        env.client(endpoint="http://cvm.tencentcloudapi.com/")
    with pytest.raises(ConfigError, match="user info"):
        env.client(endpoint="https://u:p@cvm.tencentcloudapi.com/")
    with pytest.raises(ConfigError, match="rate limit"):
        env.client(rate_limit={"DescribeInstances": 0})



def test_regions_are_open_ended_as_over_2_0() -> None:
    creds = Credentials(SECRET_ID, SECRET_KEY)
    # A well-formed region newer than this version's table works, as the 2.0 client and the
    # loader accept it; a name that is not shaped like a region does not.
    with Api3Client(creds, "ap-newplace-1") as client:
        assert client.region == "ap-newplace-1"
    with pytest.raises(ConfigError, match="unknown region"):
        Api3Client(creds, "Mars North 1")


def test_answers_of_the_wrong_shape_are_transport_errors(env: Env) -> None:
    def app(environ: Any, start_response: Any) -> list[bytes]:
        start_response("200 OK", [("Content-Type", "application/json")])
        return [
            b'{"Response": {"TotalCount": 1, "InstanceSet": [{"InstanceId": "i-bad"}], "RequestId": "r"}}'
        ]

    client = Api3Client(
        Credentials(SECRET_ID, SECRET_KEY),
        "ap-guangzhou",
        transport=httpx.WSGITransport(app=app),
        rate_limit=None,
    )
    with client, pytest.raises(TransportError, match="not an instance ID") as info:
        client.describe_instances([ins(1)])
    assert not info.value.retryable


def test_over_a_real_socket_and_from_many_threads(env: Env) -> None:
    from concurrent.futures import ThreadPoolExecutor
    from wsgiref.simple_server import WSGIRequestHandler, make_server

    class Quiet(WSGIRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:  # no request lines on stderr
            pass

    for n in range(300):
        env.server.add_key(key(n), bound=[ins(n)])
    server = make_server("127.0.0.1", 0, env.server, handler_class=Quiet)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_port}/"
        client = Api3Client(
            Credentials(SECRET_ID, SECRET_KEY),
            "ap-guangzhou",
            endpoint=url,
            rate_limit=None,
            clock=env.time.clock,
        )
        with client, ThreadPoolExecutor(6) as pool:
            keys = list(pool.map(lambda _: len(client.describe_key_pairs()), range(6)))
            found = list(pool.map(lambda n: client.describe_instances([ins(n)])[0].instance_id, range(12)))
        assert keys == [300] * 6 and found == [ins(n) for n in range(12)]
        assert client.calls["DescribeKeyPairs"] == 18 and client.calls["DescribeInstances"] == 12
        assert env.server.seen[0].headers["host"] == f"127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        server.server_close()
