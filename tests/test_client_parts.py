"""The client's building blocks, without a server: endpoint check, token bucket, retry rule,
and the signing ``httpx.Auth`` applied to real ``httpx.Request`` objects."""

from __future__ import annotations

import random
import threading
from urllib.parse import parse_qsl

import httpx
import pytest
from support import FakeTime

from reconciler.cloud import signing
from reconciler.cloud.auth import Api2Auth
from reconciler.cloud.client import classify
from reconciler.cloud.credentials import Credentials
from reconciler.cloud.endpoint import DEFAULT_ENDPOINT, check_endpoint
from reconciler.cloud.ratelimit import ActionRateLimiter, TokenBucket
from reconciler.cloud.retry import RetryPolicy, may_retry
from reconciler.errors import ApiError, ConfigError, TransportError

SECRET_ID = "AKIDz8krbsJ5yKBZQpn74WFkmLPx3gnPhESA"
SECRET_KEY = "Gu5t9xGARNpq86cd98joQYCN3Cozk1qA"
CREDS = Credentials(SECRET_ID, SECRET_KEY)


# --------------------------------------------------------------------------- endpoint


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        (DEFAULT_ENDPOINT, DEFAULT_ENDPOINT),
        ("https://cvm.api.qcloud.com", DEFAULT_ENDPOINT),
        ("HTTPS://cvm.api.qcloud.com/", DEFAULT_ENDPOINT),
        ("http://127.0.0.1:8080", "http://127.0.0.1:8080/v2/index.php"),
        ("http://127.1.2.3:8080/v2/index.php", "http://127.1.2.3:8080/v2/index.php"),
        ("http://localhost:9/x", "http://localhost:9/x"),
        ("http://[::1]:8080/v2/index.php", "http://[::1]:8080/v2/index.php"),
    ],
)
def test_endpoint_accepted(url: str, expected: str) -> None:
    assert check_endpoint(url) == expected


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("http://cvm.api.qcloud.com/v2/index.php", "plain http to a non-loopback"),
        ("http://10.0.0.1/v2/index.php", "plain http to a non-loopback"),
        ("http://128.0.0.1/v2/index.php", "plain http to a non-loopback"),
        ("http://localhost.example.com/", "plain http to a non-loopback"),
        ("ftp://cvm.api.qcloud.com/", "must use https"),
        ("cvm.api.qcloud.com/v2/index.php", "must use https"),
        ("https://user:pw@cvm.api.qcloud.com/", "user info"),
        ("https://cvm.api.qcloud.com/v2/index.php?Action=X", "query"),
        ("https://cvm.api.qcloud.com/v2/index.php#frag", "fragment"),
        ("https:///v2/index.php", "no host"),
        ("https://cvm.api.qcloud.com:99999/", "not a valid URL"),
    ],
)
def test_endpoint_refused(url: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as info:
        check_endpoint(url)
    assert "pw" not in str(info.value)


# --------------------------------------------------------------------------- token bucket


def test_bucket_allows_burst_then_paces() -> None:
    t = FakeTime()
    bucket = TokenBucket(5.0, clock=t.clock, sleep=t.sleep)
    for _ in range(5):
        assert bucket.acquire() == 0.0
    assert t.sleeps == []
    assert bucket.acquire() == pytest.approx(0.2)
    assert bucket.acquire() == pytest.approx(0.2)
    assert t.sleeps == pytest.approx([0.2, 0.2])


def test_bucket_refills_with_time_up_to_burst() -> None:
    t = FakeTime()
    bucket = TokenBucket(2.0, clock=t.clock, sleep=t.sleep)
    bucket.acquire()
    bucket.acquire()
    t.now += 100.0  # a long pause saves up at most ``burst`` tokens
    assert [bucket.acquire() for _ in range(2)] == [0.0, 0.0]
    assert bucket.acquire() == pytest.approx(0.5)


def test_bucket_queues_concurrent_callers_fairly() -> None:
    # The clock never moves: each caller reserves the next slot, so waits grow by 1/rate.
    slept: list[float] = []
    lock = threading.Lock()

    def sleep(seconds: float) -> None:
        with lock:
            slept.append(seconds)

    bucket = TokenBucket(10.0, burst=1, clock=lambda: 0.0, sleep=sleep)
    threads = [threading.Thread(target=bucket.acquire) for _ in range(11)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(slept) == pytest.approx([0.1 * i for i in range(1, 11)])


def test_rate_limiter_is_per_action_and_can_be_disabled() -> None:
    t = FakeTime()
    limiter = ActionRateLimiter(1.0, clock=t.clock, sleep=t.sleep)
    assert limiter.acquire("DescribeKeyPairs") == 0.0
    assert limiter.acquire("DescribeInstances") == 0.0  # its own bucket
    assert limiter.acquire("DescribeKeyPairs") == pytest.approx(1.0)
    for off in (ActionRateLimiter(0, sleep=t.sleep), ActionRateLimiter(None, sleep=t.sleep)):
        assert not off.enabled
        assert [off.acquire("X") for _ in range(50)] == [0.0] * 50
    with pytest.raises(ValueError):
        ActionRateLimiter(-1)


# --------------------------------------------------------------------------- retry rule


def test_backoff_is_capped_full_jitter() -> None:
    policy = RetryPolicy(max_attempts=10, base_s=0.2, cap_s=5.0)
    rng = random.Random(7)
    for attempt in range(1, 10):
        ceiling = min(5.0, 0.2 * 2 ** (attempt - 1))
        draws = [policy.delay(attempt, rng) for _ in range(200)]
        assert all(0.0 <= d <= ceiling for d in draws)
        assert max(draws) > ceiling * 0.8  # jitter spreads over the whole range
        # Throttled: never sooner than the quota's second, up to twice that, doubling, capped.
        high = min(5.0, 1.0 * 2**attempt)
        throttled = [policy.delay(attempt, rng, throttled=True) for _ in range(200)]
        assert all(1.0 <= d <= high for d in throttled)
    with pytest.raises(ValueError):
        RetryPolicy(max_attempts=0)


@pytest.mark.parametrize(
    ("error", "read", "mutation"),
    [
        (4400, True, True),
        (6000, True, False),
        (6200, True, False),
        (5000, False, False),
        (4100, False, False),
        (TransportError("X", "connect", retryable=True, ambiguous=False), True, True),
        (TransportError("X", "read timeout", retryable=True, ambiguous=True), True, False),
        (TransportError("X", "HTTP 502", retryable=True, ambiguous=True), True, False),
        (TransportError("X", "HTTP 404", retryable=False, ambiguous=True), False, False),
        (TransportError("X", "not JSON", retryable=False, ambiguous=True), False, False),
    ],
)
def test_retry_rule(error: int | TransportError, read: bool, mutation: bool) -> None:
    def as_error(mutating: bool) -> ApiError | TransportError:
        if isinstance(error, TransportError):
            return error
        # The 2.0 client classifies a code by the call it answered (a mutating call's 6000 may
        # have been carried out).
        return ApiError("X", error, "message", kind=classify(error, "message", mutating=mutating))

    assert may_retry(as_error(False), mutating=False) is read
    assert may_retry(as_error(True), mutating=True) is mutation


# --------------------------------------------------------------------------- signing auth


def _signed(method: str, signature_method: str, params: dict[str, str]) -> httpx.Request:
    nonces = iter([4242])
    auth = Api2Auth(
        CREDS,
        "ap-guangzhou",
        signature_method=signature_method,
        clock=lambda: 1465185768.9,
        nonce=lambda: next(nonces),
    )
    if method == "GET":
        request = httpx.Request("GET", DEFAULT_ENDPOINT, params=params)
    else:
        request = httpx.Request("POST", DEFAULT_ENDPOINT, data=params)
    return next(auth.sync_auth_flow(request))


def _sent_params(request: httpx.Request) -> dict[str, str]:
    raw = request.url.query if request.method == "GET" else request.read()
    return dict(parse_qsl(raw.decode("ascii"), keep_blank_values=True, strict_parsing=True))


@pytest.mark.parametrize("method", ["GET", "POST"])
@pytest.mark.parametrize("signature_method", ["HmacSHA256", "HmacSHA1"])
def test_auth_adds_public_params_and_a_verifiable_signature(method: str, signature_method: str) -> None:
    # A value full of characters that need encoding: it must be encoded exactly once.
    params = {"Action": "DescribeKeyPairs", "keyName": "a b+c/d=e&f%g~中", "keyIds.0": "skey-abcd1234"}
    sent = _signed(method, signature_method, params)
    got = _sent_params(sent)
    assert {k: got[k] for k in params} == params
    assert got["Timestamp"] == "1465185768"
    assert got["Nonce"] == "4242"
    assert got["SecretId"] == SECRET_ID
    assert got["SignatureMethod"] == signature_method
    assert got["Region"] == "ap-guangzhou"
    assert signing.verify(SECRET_KEY, method, "cvm.api.qcloud.com", "/v2/index.php", got)
    assert not signing.verify(SECRET_KEY, method, "cvm.api.qcloud.com:443", "/v2/index.php", got)
    raw = sent.url.query if method == "GET" else sent.read()
    assert SECRET_KEY.encode() not in raw
    assert b"%25" in raw and b"%2525" not in raw  # '%' encoded once, not twice
    if method == "POST":
        assert sent.headers["Content-Type"] == "application/x-www-form-urlencoded"
        assert int(sent.headers["Content-Length"]) == len(raw)


def test_auth_signs_the_published_vector_string() -> None:
    # The published example, rebuilt through the auth flow, gives the published signature.
    nonces = iter([11886])
    auth = Api2Auth(
        Credentials("AKIDz8krbsJ5yKBZQpn74WFkmLPx3gnPhESA", SECRET_KEY),
        "ap-guangzhou",
        clock=lambda: 1465185768,
        nonce=lambda: next(nonces),
    )
    request = httpx.Request(
        "GET", DEFAULT_ENDPOINT, params={"Action": "DescribeInstances", "InstanceIds.0": "ins-09dx96dg"}
    )
    got = _sent_params(next(auth.sync_auth_flow(request)))
    assert got["Signature"] == "0EEm/HtGRr/VJXTAD9tYMth1Bzm3lLHz5RCDv1GdM8s="


def test_auth_fresh_nonce_and_signature_each_flow_and_refuses_caller_public_params() -> None:
    auth = Api2Auth(CREDS, "ap-guangzhou", clock=lambda: 1_700_000_000)
    request = httpx.Request("GET", DEFAULT_ENDPOINT, params={"Action": "DescribeKeyPairs"})
    first = _sent_params(next(auth.sync_auth_flow(request)))
    second = _sent_params(next(auth.sync_auth_flow(request)))
    assert first["Nonce"] != second["Nonce"]
    assert int(first["Nonce"]) > 0 and int(second["Nonce"]) > 0
    assert first["Signature"] != second["Signature"]
    assert SECRET_KEY not in repr(auth)
    smuggled = httpx.Request("GET", DEFAULT_ENDPOINT, params={"Action": "X", "SecretId": "other"})
    with pytest.raises(ValueError, match="SecretId"):
        next(auth.sync_auth_flow(smuggled))
