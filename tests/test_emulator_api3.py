"""The emulator's CVM API 3.0 face and STS, over real HTTP with real signatures.

Requests are signed here with the project's own implementations (``reconciler/cloud/tc3.py``
for TC3-HMAC-SHA256, ``reconciler/cloud/signing.py`` for v1) and sent with httpx, in-process
(``transport(app)``, Host ``cvm.tencentcloudapi.com``) or over a real socket. Tencent's own SDK
against the served emulator is ``test_emulator_sdk3.py``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import EXAMPLE_FLEET, SECRET_ID, SECRET_KEY, Emulator, EmulatorFactory, FakeClock, signed_params
from support import BASTION, BATCH1, CI, DB1, OLD, OPS, UNMANAGED, WEB1, WEB2, WIN1, serve_fleet, stop_served
from typer.testing import CliRunner

from reconciler.cloud import tc3
from reconciler.cloud.credentials import Credentials
from reconciler.emulator.api3 import DOCUMENTED_LIMITS
from reconciler.emulator.app import EmulatorApp, transport
from reconciler.emulator.cli import emulator_app
from reconciler.emulator.faults import FaultProfile
from reconciler.emulator.state import FleetState

GZ = "ap-guangzhou"
URL3 = "https://cvm.tencentcloudapi.com/"
STS_URL = "https://sts.tencentcloudapi.com/"
ROLE_ARN = "qcs::cam::uin/100000000001:roleName/cvmkeys-apply"


def _client(em: Emulator, url: str) -> httpx.Client:
    return httpx.Client(transport=transport(em.app)) if url.startswith("https://") else httpx.Client()


def tc3_call(
    em: Emulator,
    action: str,
    payload: dict[str, Any] | None = None,
    *,
    url: str = URL3,
    service: str = "cvm",
    version: str = "2017-03-12",
    region: str | None = GZ,
    secret_id: str = SECRET_ID,
    secret_key: str = SECRET_KEY,
    token: str | None = None,
    timestamp: int | None = None,
    sign_host: str | None = None,
) -> httpx.Response:
    """One TC3-signed JSON POST; ``sign_host`` signs for another Host than the one sent to."""
    body = json.dumps(payload or {}).encode()
    host = httpx.URL(url).netloc.decode()
    stamp = int(em.clock()) if timestamp is None else timestamp
    headers = {
        "Content-Type": "application/json",
        "Host": host,
        "X-TC-Action": action,
        "X-TC-Timestamp": str(stamp),
        "X-TC-Version": version,
    }
    if region is not None:
        headers["X-TC-Region"] = region
    if token is not None:
        headers["X-TC-Token"] = token
    signed = {**headers, "Host": sign_host or host}
    headers["Authorization"] = tc3.authorization(
        secret_id, secret_key, service=service, timestamp=stamp, method="POST", headers=signed, payload=body
    )
    with _client(em, url) as client:
        return client.post(url, content=body, headers=headers)


def v1_params(
    em: Emulator,
    action: str,
    params: dict[str, str] | None = None,
    *,
    secret_id: str = SECRET_ID,
    secret_key: str = SECRET_KEY,
    token: str | None = None,
    **options: Any,
) -> dict[str, str]:
    """v1-signed parameters for ``action`` at the emulator's time, by default for the 3.0
    endpoint and 3.0's Version; ``options`` as ``signed_params`` takes them (``method``,
    ``url``, ``version``, ``signature_method``)."""
    credentials = Credentials(secret_id, secret_key, token=token)
    options = {"url": URL3, "version": "2017-03-12", **options}
    return signed_params(credentials, action, params, region=GZ, clock=em.clock, **options)


def v1_call(em: Emulator, action: str, params: dict[str, str] | None = None, **kw: Any) -> httpx.Response:
    method = kw.get("method", "GET")
    url = kw.get("url", URL3)
    signed = v1_params(em, action, params, **kw)
    with _client(em, url) as client:
        return client.get(url, params=signed) if method == "GET" else client.post(url, data=signed)


def response(answer: httpx.Response) -> dict[str, Any]:
    """The ``Response`` object of a 3.0 answer (HTTP 200, a RequestId, JSON content type)."""
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"] == "application/json"
    document = answer.json()
    assert set(document) == {"Response"}
    assert isinstance(document["Response"]["RequestId"], str) and document["Response"]["RequestId"]
    result = document["Response"]
    assert isinstance(result, dict)
    return result


def error_code(answer: httpx.Response) -> str:
    error = response(answer).get("Error")
    assert error is not None, answer.text
    code = error["Code"]
    assert isinstance(code, str) and error["Message"]
    return code


def ok(answer: httpx.Response) -> dict[str, Any]:
    result = response(answer)
    assert "Error" not in result, result
    return result


def instances(em: Emulator, *ids: str) -> dict[str, dict[str, Any]]:
    found = ok(tc3_call(em, "DescribeInstances", {"InstanceIds": list(ids)}))["InstanceSet"]
    return {item["InstanceId"]: item for item in found}


# --------------------------------------------------------------------------- reads


def test_describe_instances_over_tc3_reports_3_0_states_keys_and_operations(emulator: Emulator) -> None:
    found = instances(emulator, WEB1, DB1, WIN1, "ins-00000000")
    assert set(found) == {WEB1, DB1, WIN1}  # unknown IDs are simply absent
    assert found[WEB1]["InstanceState"] == "STOPPED"
    assert found[DB1]["InstanceState"] == "RUNNING"
    assert found[WIN1]["OsName"] == "Windows Server 2019"
    assert found[WEB1]["LoginSettings"] == {"KeyIds": [CI, OLD]}
    assert found[WEB1]["LatestOperation"] is None and found[WEB1]["LatestOperationState"] is None
    assert found[WEB1]["Placement"]["Zone"] == "ap-guangzhou-3"
    assert found[WEB1]["CreatedTime"] == "2019-12-31T16:00:00Z"  # 2020-01-01 00:00 Beijing time


def test_describe_key_pairs_pages_and_lists_associated_instances(emulator: Emulator) -> None:
    page = ok(tc3_call(emulator, "DescribeKeyPairs", {"Limit": 2, "Offset": 1}))
    assert page["TotalCount"] == 4 and [k["KeyId"] for k in page["KeyPairSet"]] == [CI, OPS]
    by_ids = ok(tc3_call(emulator, "DescribeKeyPairs", {"KeyIds": [OLD, "skey-00000000"]}))
    # Unknown KeyIds are silently absent (the action documents no NotFound code).
    assert by_ids["TotalCount"] == 1
    assert by_ids["KeyPairSet"][0]["AssociatedInstanceIds"] == sorted([WEB1, DB1, BASTION, WIN1])
    named = ok(
        tc3_call(emulator, "DescribeKeyPairs", {"Filters": [{"Name": "key-name", "Values": ["ops-"]}]})
    )
    assert [k["KeyId"] for k in named["KeyPairSet"]] == [OPS]


@pytest.mark.parametrize("method", ["GET", "POST"])
@pytest.mark.parametrize("signature_method", ["HmacSHA1", "HmacSHA256"])
def test_v1_signatures_on_3_0(emulator: Emulator, method: str, signature_method: str) -> None:
    answer = v1_call(
        emulator,
        "DescribeInstances",
        {"InstanceIds.0": DB1, "InstanceIds.1": WEB1},
        method=method,
        signature_method=signature_method,
    )
    assert {i["InstanceId"]: i["InstanceState"] for i in ok(answer)["InstanceSet"]} == {
        WEB1: "STOPPED",
        DB1: "RUNNING",
    }


def test_tc3_get_with_the_query_signed(emulator: Emulator) -> None:
    query = "InstanceIds.0=" + WEB1
    stamp = int(emulator.clock())
    headers = {
        "Content-Type": "application/x-www-form-urlencoded",
        "Host": "cvm.tencentcloudapi.com",
        "X-TC-Action": "DescribeInstances",
        "X-TC-Timestamp": str(stamp),
        "X-TC-Version": "2017-03-12",
        "X-TC-Region": GZ,
    }
    headers["Authorization"] = tc3.authorization(
        SECRET_ID,
        SECRET_KEY,
        service="cvm",
        timestamp=stamp,
        method="GET",
        headers=headers,
        payload=b"",
        query=query,
    )
    with emulator.client() as client:
        answer = client.get(URL3 + "?" + query, headers=headers)
    assert [i["InstanceId"] for i in ok(answer)["InstanceSet"]] == [WEB1]


# --------------------------------------------------------------------------- authentication


def test_authentication_failures_have_their_documented_codes(emulator: Emulator) -> None:
    now = int(emulator.clock())
    assert (
        error_code(tc3_call(emulator, "DescribeKeyPairs", timestamp=now - 301))
        == "AuthFailure.SignatureExpire"
    )
    assert (
        error_code(tc3_call(emulator, "DescribeKeyPairs", timestamp=now + 301))
        == "AuthFailure.SignatureExpire"
    )
    assert ok(tc3_call(emulator, "DescribeKeyPairs", timestamp=now - 290))
    unknown = tc3_call(emulator, "DescribeKeyPairs", secret_id="AKIDNOBODY")
    assert error_code(unknown) == "AuthFailure.SecretIdNotFound"
    wrong_key = tc3_call(emulator, "DescribeKeyPairs", secret_key="not-the-key")
    assert error_code(wrong_key) == "AuthFailure.SignatureFailure"
    other_host = tc3_call(emulator, "DescribeKeyPairs", sign_host="cvm.ap-shanghai.tencentcloudapi.com")
    assert error_code(other_host) == "AuthFailure.SignatureFailure"
    assert (
        error_code(v1_call(emulator, "DescribeKeyPairs", secret_key="wrong"))
        == "AuthFailure.SignatureFailure"
    )
    with emulator.client() as client:
        bad_header = client.post(
            URL3,
            content=b"{}",
            headers={"Content-Type": "application/json", "X-TC-Action": "DescribeKeyPairs",
                     "X-TC-Timestamp": str(now), "Authorization": "TC3-HMAC-SHA256 nonsense"},
        )  # fmt: skip
        assert error_code(bad_header) == "AuthFailure.InvalidAuthorization"
        unsigned = client.post(
            URL3,
            content=b"{}",
            headers={
                "Content-Type": "application/json",
                "X-TC-Action": "DescribeKeyPairs",
                "X-TC-Timestamp": str(now),
            },
        )
        assert error_code(unsigned) == "AuthFailure.InvalidAuthorization"
    assert emulator.app.request_counts["DescribeKeyPairs"] == 9


def test_v1_nonce_replay_and_expiry(emulator: Emulator) -> None:
    signed = v1_params(emulator, "DescribeKeyPairs")
    with emulator.client() as client:
        assert ok(client.get(URL3, params=signed))
        replay = response(client.get(URL3, params=signed))["Error"]
        assert replay["Code"] == "AuthFailure.SignatureFailure" and "replayed" in replay["Message"]
    stale = v1_params(emulator, "DescribeKeyPairs")
    emulator.clock.advance(301)
    with emulator.client() as client:
        assert error_code(client.get(URL3, params=stale)) == "AuthFailure.SignatureExpire"


def test_tc3_accepts_the_same_request_twice(emulator: Emulator) -> None:
    """TC3 has no Nonce: an identical request in the same second is a normal retry."""
    stamp = int(emulator.clock())
    first = tc3_call(emulator, "DescribeKeyPairs", timestamp=stamp)
    second = tc3_call(emulator, "DescribeKeyPairs", timestamp=stamp)
    assert ok(first)["TotalCount"] == ok(second)["TotalCount"] == 4


def test_request_checks(emulator: Emulator) -> None:
    assert error_code(tc3_call(emulator, "DescribeKeyPairs", region=None)) == "MissingParameter"
    assert error_code(tc3_call(emulator, "DescribeKeyPairs", region="xx-nowhere")) == "InvalidParameterValue"
    assert error_code(tc3_call(emulator, "DescribeKeyPairs", version="2017-03-20")) == "NoSuchVersion"
    assert error_code(tc3_call(emulator, "RebootInstances")) == "InvalidAction"
    assert error_code(tc3_call(emulator, "DescribeKeyPairs", service="cbs")) == "InvalidAction"
    with emulator.client() as client:  # a TC3 POST must be JSON
        form = client.post(URL3, data={"Action": "DescribeKeyPairs"})
        assert error_code(form) == "MissingParameter"
        assert client.get("https://cvm.tencentcloudapi.com/elsewhere").status_code == 404


def test_parameter_limits_and_malformed_ids(emulator: Emulator) -> None:
    many = [f"ins-{n:08d}" for n in range(101)]
    assert error_code(tc3_call(emulator, "DescribeInstances", {"InstanceIds": many})) == (
        "InvalidParameterValue.LimitExceeded"
    )
    assert (
        error_code(tc3_call(emulator, "DescribeKeyPairs", {"Limit": 101}))
        == "InvalidParameterValue.LimitExceeded"
    )
    assert ok(tc3_call(emulator, "DescribeKeyPairs", {"Limit": 100}))
    change = {"InstanceIds": many, "KeyIds": [OLD]}
    assert error_code(tc3_call(emulator, "DisassociateInstancesKeyPairs", change)) == (
        "InvalidParameterValue.LimitExceeded"
    )
    keys = {"InstanceIds": [WEB1], "KeyIds": [f"skey-{n:08d}" for n in range(101)]}
    assert error_code(tc3_call(emulator, "DisassociateInstancesKeyPairs", keys)) == (
        "InvalidParameterValue.LimitExceeded"
    )
    assert error_code(tc3_call(emulator, "DescribeInstances", {"InstanceIds": ["ins-1122"]})) == (
        "InvalidInstanceId.Malformed"
    )
    assert error_code(
        tc3_call(emulator, "DisassociateInstancesKeyPairs", {"InstanceIds": [WEB1], "KeyIds": ["skey-1122"]})
    ) == ("InvalidKeyPairId.Malformed")
    assert (
        error_code(tc3_call(emulator, "DisassociateInstancesKeyPairs", {"InstanceIds": [WEB1]}))
        == "MissingParameter"
    )
    assert emulator.state.mutations == []


# --------------------------------------------------------------------------- key pairs


def test_disassociate_removes_every_key_from_every_instance(emulator: Emulator) -> None:
    answer = ok(
        tc3_call(
            emulator,
            "DisassociateInstancesKeyPairs",
            {"InstanceIds": [WEB1, BATCH1], "KeyIds": [CI, OLD, OPS]},
        )
    )
    bindings = emulator.state.bindings(GZ)
    for key in (CI, OLD, OPS):
        assert (key, WEB1) not in bindings and (key, BATCH1) not in bindings
    assert (UNMANAGED, BATCH1) in bindings and (CI, WEB2) in bindings
    [mutation] = emulator.state.mutations
    assert mutation.action == "DisassociateInstancesKeyPairs" and mutation.key_ids == (CI, OLD, OPS)
    assert mutation.request_id == answer["RequestId"]
    found = instances(emulator, WEB1, BATCH1)
    assert found[WEB1]["LoginSettings"]["KeyIds"] == [] and found[BATCH1]["LoginSettings"]["KeyIds"] == [
        UNMANAGED
    ]
    for item in found.values():
        assert item["LatestOperation"] == "DisassociateInstancesKeyPairs"
        assert item["LatestOperationState"] == "SUCCESS"
        assert item["LatestOperationRequestId"] == answer["RequestId"]
    # The change is saved: another state reading the file sees it.
    assert (CI, WEB1) not in FleetState.from_file(emulator.fleet_path, persist=False).bindings(GZ)


def test_associate_adds_keys(emulator: Emulator) -> None:
    ok(tc3_call(emulator, "AssociateInstancesKeyPairs", {"InstanceIds": [WEB2], "KeyIds": [OPS]}))
    assert instances(emulator, WEB2)[WEB2]["LoginSettings"]["KeyIds"] == sorted([UNMANAGED, CI, OPS])


@pytest.mark.parametrize(
    ("instance_ids", "code"),
    [
        ([WEB1, DB1], "UnsupportedOperation.InstanceStateRunning"),
        ([WIN1], "UnsupportedOperation.InstanceOsWindows"),
        ([WEB1, "ins-aaaaaaaa", "ins-bbbbbbbb"], "InvalidInstanceId.NotFound"),
    ],
)
def test_one_refused_instance_fails_the_whole_call(
    emulator: Emulator, instance_ids: list[str], code: str
) -> None:
    before = emulator.state.bindings(GZ)
    answer = tc3_call(
        emulator, "DisassociateInstancesKeyPairs", {"InstanceIds": instance_ids, "KeyIds": [OLD]}
    )
    assert error_code(answer) == code
    if code == "InvalidInstanceId.NotFound":
        assert "ins-aaaaaaaa" in answer.text and "ins-bbbbbbbb" in answer.text
    assert emulator.state.bindings(GZ) == before and emulator.state.mutations == []


def test_unknown_key_is_not_found(emulator: Emulator) -> None:
    answer = tc3_call(
        emulator, "DisassociateInstancesKeyPairs", {"InstanceIds": [WEB1], "KeyIds": ["skey-00000000"]}
    )
    assert error_code(answer) == "InvalidKeyPairId.NotFound"


@pytest.mark.parametrize(
    ("status", "code"),
    [
        (3, "UnsupportedOperation.InstanceStatePending"),
        (7, "UnsupportedOperation.InstanceStateRebooting"),
        (8, "UnsupportedOperation.InstanceStateStarting"),
        (9, "UnsupportedOperation.InstanceStateStopping"),
        (5, "UnsupportedOperation.InstanceStateShutdown"),
        (6, "UnsupportedOperation.InstanceStateTerminating"),
        (20, "OperationDenied.InstanceOperationInProgress"),
    ],
)
def test_refusal_code_per_state(emulator: Emulator, status: int, code: str) -> None:
    emulator.state.set_instance_status(GZ, WEB1, status)
    answer = tc3_call(emulator, "DisassociateInstancesKeyPairs", {"InstanceIds": [WEB1], "KeyIds": [OLD]})
    assert error_code(answer) == code


def test_operation_state_goes_operating_then_success(make_emulator: EmulatorFactory) -> None:
    em = make_emulator(op_seconds=5)
    first = ok(tc3_call(em, "DisassociateInstancesKeyPairs", {"InstanceIds": [WEB1], "KeyIds": [OLD]}))
    item = instances(em, WEB1)[WEB1]
    assert item["LatestOperationState"] == "OPERATING"
    assert item["LatestOperationRequestId"] == first["RequestId"]
    assert item["InstanceState"] == "STOPPED"
    assert OLD in item["LoginSettings"]["KeyIds"]  # the old keys until the operation is done
    busy = tc3_call(em, "DisassociateInstancesKeyPairs", {"InstanceIds": [WEB1], "KeyIds": [CI]})
    assert error_code(busy) == "OperationDenied.InstanceOperationInProgress"
    em.clock.advance(5)
    item = instances(em, WEB1)[WEB1]
    assert item["LatestOperationState"] == "SUCCESS" and item["LoginSettings"]["KeyIds"] == [CI]
    # The 2.0 face sees the same operation as status 20, then 4.
    assert em.state.instance_status(GZ, WEB1) == 4


def test_force_stop_runs_stopping_stopped_starting_running(make_emulator: EmulatorFactory) -> None:
    em = make_emulator(op_seconds=10)
    answer = ok(
        tc3_call(
            em, "DisassociateInstancesKeyPairs", {"InstanceIds": [DB1], "KeyIds": [OLD], "ForceStop": True}
        )
    )
    seen = []
    for _ in range(4):
        item = instances(em, DB1)[DB1]
        seen.append(
            (item["InstanceState"], item["LatestOperationState"], OLD in item["LoginSettings"]["KeyIds"])
        )
        em.clock.advance(10)
    assert seen == [
        ("STOPPING", "OPERATING", True),
        ("STOPPED", "OPERATING", True),
        ("STARTING", "OPERATING", False),
        ("RUNNING", "SUCCESS", False),
    ]
    assert instances(em, DB1)[DB1]["LatestOperationRequestId"] == answer["RequestId"]
    assert em.state.settled_status(GZ, DB1) == 2 and (OLD, DB1) not in em.state.bindings(GZ)


def test_state_lag_shows_the_previous_operation(make_emulator: EmulatorFactory) -> None:
    em = make_emulator()
    em.state.op_lag = 10.0
    first = ok(tc3_call(em, "DisassociateInstancesKeyPairs", {"InstanceIds": [WEB1], "KeyIds": [OLD]}))
    assert instances(em, WEB1)[WEB1]["LatestOperationRequestId"] is None
    em.clock.advance(10)
    assert instances(em, WEB1)[WEB1]["LatestOperationRequestId"] == first["RequestId"]
    second = ok(tc3_call(em, "DisassociateInstancesKeyPairs", {"InstanceIds": [WEB1], "KeyIds": [CI]}))
    assert instances(em, WEB1)[WEB1]["LatestOperationRequestId"] == first["RequestId"]  # lagging
    em.clock.advance(10)
    assert instances(em, WEB1)[WEB1]["LatestOperationRequestId"] == second["RequestId"]


# --------------------------------------------------------------------------- stop and start


def test_stop_and_start(make_emulator: EmulatorFactory) -> None:
    em = make_emulator(op_seconds=3)
    assert (
        error_code(tc3_call(em, "StopInstances", {"InstanceIds": [WEB1]}))
        == "UnsupportedOperation.InstanceStateStopped"
    )
    assert (
        error_code(tc3_call(em, "StopInstances", {"InstanceIds": [DB1], "StopType": "GENTLE"}))
        == "InvalidParameterValue"
    )
    stop = ok(tc3_call(em, "StopInstances", {"InstanceIds": [DB1], "StopType": "SOFT_FIRST"}))
    item = instances(em, DB1)[DB1]
    assert (item["InstanceState"], item["LatestOperation"], item["LatestOperationState"]) == (
        "STOPPING",
        "StopInstances",
        "OPERATING",
    )
    assert item["LatestOperationRequestId"] == stop["RequestId"]
    assert (
        error_code(tc3_call(em, "StartInstances", {"InstanceIds": [DB1]}))
        == "UnsupportedOperation.InstanceStateStopping"
    )
    em.clock.advance(3)
    assert instances(em, DB1)[DB1]["InstanceState"] == "STOPPED"
    ok(tc3_call(em, "StartInstances", {"InstanceIds": [DB1]}))
    assert instances(em, DB1)[DB1]["InstanceState"] == "STARTING"
    em.clock.advance(3)
    item = instances(em, DB1)[DB1]
    assert (item["InstanceState"], item["LatestOperation"], item["LatestOperationState"]) == (
        "RUNNING",
        "StartInstances",
        "SUCCESS",
    )
    assert (
        error_code(tc3_call(em, "StartInstances", {"InstanceIds": [DB1]}))
        == "UnsupportedOperation.InstanceStateRunning"
    )


def test_stopped_with_stop_charging_keeps_its_keys(emulator: Emulator) -> None:
    ok(tc3_call(emulator, "StopInstances", {"InstanceIds": [DB1], "StoppedMode": "STOP_CHARGING"}))
    assert instances(emulator, DB1)[DB1]["StopChargingMode"] == "STOP_CHARGING"
    answer = tc3_call(emulator, "DisassociateInstancesKeyPairs", {"InstanceIds": [DB1], "KeyIds": [OLD]})
    assert error_code(answer) == "UnsupportedOperation.StoppedModeStopCharging"
    ok(tc3_call(emulator, "StartInstances", {"InstanceIds": [DB1]}))
    ok(tc3_call(emulator, "StopInstances", {"InstanceIds": [DB1], "ForceStop": True}))
    ok(tc3_call(emulator, "DisassociateInstancesKeyPairs", {"InstanceIds": [DB1], "KeyIds": [OLD]}))


# --------------------------------------------------------------------------- rate limits and faults


def test_per_action_token_buckets(emulator: Emulator) -> None:
    # The buckets run on the app's clock: held still here, so a slow machine refills nothing.
    now = [emulator.clock()]
    emulator.app = EmulatorApp(emulator.state, clock=lambda: now[0], api3_limits=DOCUMENTED_LIMITS)
    codes = [response(tc3_call(emulator, "DescribeKeyPairs")).get("Error", {}).get("Code") for _ in range(12)]
    assert codes == [None] * 10 + ["RequestLimitExceeded"] * 2
    # Another action has its own bucket, 40 a second.
    described = [response(tc3_call(emulator, "DescribeInstances")).get("Error") for _ in range(41)]
    assert described[:40] == [None] * 40 and described[40]["Code"] == "RequestLimitExceeded"
    now[0] += 0.15  # 1.5 tokens later: one more DescribeKeyPairs, not two
    assert ok(tc3_call(emulator, "DescribeKeyPairs"))
    assert error_code(tc3_call(emulator, "DescribeKeyPairs")) == "RequestLimitExceeded"


def test_3_0_faults(make_emulator: EmulatorFactory) -> None:
    em = make_emulator(faults=FaultProfile.only("throttle", actions=["DescribeKeyPairs"]))
    assert error_code(tc3_call(em, "DescribeKeyPairs")) == "RequestLimitExceeded"
    em = make_emulator(faults=FaultProfile.only("error"))
    assert error_code(
        tc3_call(em, "DisassociateInstancesKeyPairs", {"InstanceIds": [WEB1], "KeyIds": [OLD]})
    ) in (
        "InternalError",
        "ResourceUnavailable",
    )
    assert em.state.mutations == []
    em = make_emulator(faults=FaultProfile.only("lost", actions=["DisassociateInstancesKeyPairs"]))
    with pytest.raises(httpx.RemoteProtocolError):
        tc3_call(em, "DisassociateInstancesKeyPairs", {"InstanceIds": [WEB1], "KeyIds": [OLD]})
    assert (OLD, WEB1) not in em.state.bindings(GZ)  # carried out, answer lost
    em = make_emulator(faults=FaultProfile.only("lag", actions=["DisassociateInstancesKeyPairs"]))
    ok(tc3_call(em, "DisassociateInstancesKeyPairs", {"InstanceIds": [WEB1], "KeyIds": [OLD]}))
    assert instances(em, WEB1)[WEB1]["LatestOperation"] is None
    em.clock.advance(10)
    assert instances(em, WEB1)[WEB1]["LatestOperationState"] == "SUCCESS"
    assert [f.kind for f in em.app.injected_faults] == ["lag"]


def test_a_stuck_soft_stop_fails_and_the_instance_keeps_running(make_emulator: EmulatorFactory) -> None:
    em = make_emulator(op_seconds=2, faults=FaultProfile.only("stuck_stop"))
    ok(tc3_call(em, "StopInstances", {"InstanceIds": [DB1], "StopType": "SOFT"}))
    em.clock.advance(2)
    item = instances(em, DB1)[DB1]
    assert (item["InstanceState"], item["LatestOperationState"]) == ("RUNNING", "FAILED")
    assert "soft stop" in item["LatestOperationErrorMsg"]
    ok(tc3_call(em, "StopInstances", {"InstanceIds": [DB1], "StopType": "SOFT_FIRST"}))
    em.clock.advance(2)
    assert instances(em, DB1)[DB1]["InstanceState"] == "STOPPING"  # hard after the soft try
    em.clock.advance(2)
    assert instances(em, DB1)[DB1]["InstanceState"] == "STOPPED"


# --------------------------------------------------------------------------- STS and temporary credentials


def _assume(em: Emulator, **payload: Any) -> dict[str, Any]:
    body = {"RoleArn": ROLE_ARN, "RoleSessionName": "cvmkeys-test", **payload}
    return ok(tc3_call(em, "AssumeRole", body, url=STS_URL, service="sts", version="2018-08-13", region=None))


def test_get_caller_identity(emulator: Emulator) -> None:
    who = ok(tc3_call(emulator, "GetCallerIdentity", url=STS_URL, service="sts", version="2018-08-13"))
    assert who["AccountId"] == "100000000001" and who["Arn"] == "qcs::cam::uin/100000000001:uin/100000000001"
    assert set(who) >= {"Arn", "AccountId", "UserId", "PrincipalId", "Type"}
    # v1-signed, routed by the action's name, on the CVM host.
    assert ok(v1_call(emulator, "GetCallerIdentity", version="2018-08-13"))["AccountId"] == "100000000001"


def test_temporary_credentials_need_their_token(emulator: Emulator) -> None:
    answer = _assume(emulator, DurationSeconds=900)
    creds = answer["Credentials"]
    assert abs(answer["ExpiredTime"] - (emulator.clock() + 900)) <= 1
    assert answer["Expiration"].endswith("Z")
    tmp = {"secret_id": creds["TmpSecretId"], "secret_key": creds["TmpSecretKey"]}
    assert ok(tc3_call(emulator, "DescribeKeyPairs", token=creds["Token"], **tmp))["TotalCount"] == 4
    assert ok(v1_call(emulator, "DescribeKeyPairs", token=creds["Token"], **tmp))
    assert error_code(tc3_call(emulator, "DescribeKeyPairs", **tmp)) == "AuthFailure.TokenFailure"
    assert error_code(v1_call(emulator, "DescribeKeyPairs", **tmp)) == "AuthFailure.TokenFailure"
    assert (
        error_code(tc3_call(emulator, "DescribeKeyPairs", token="forged", **tmp))
        == "AuthFailure.TokenFailure"
    )
    who = ok(
        tc3_call(
            emulator,
            "GetCallerIdentity",
            url=STS_URL,
            service="sts",
            version="2018-08-13",
            token=creds["Token"],
            **tmp,
        )
    )
    assert who["Type"] == "CAMRole" and who["UserId"].endswith(":cvmkeys-test")
    emulator.clock.advance(901)
    assert (
        error_code(tc3_call(emulator, "DescribeKeyPairs", token=creds["Token"], **tmp))
        == "AuthFailure.TokenFailure"
    )


def test_temporary_credentials_over_2_0(emulator: Emulator) -> None:
    creds = _assume(emulator)["Credentials"]
    emulator.secret_id, emulator.secret_key = creds["TmpSecretId"], creds["TmpSecretKey"]
    assert emulator.call("DescribeKeyPairs", {"Token": creds["Token"]}).json()["code"] == 0
    refused = emulator.call("DescribeKeyPairs").json()
    assert refused["code"] == 4100 and "token" in refused["message"]


def test_assume_role_refusals(emulator: Emulator) -> None:
    def code(arn: str, **extra: Any) -> str:
        body = {"RoleArn": arn, "RoleSessionName": "s1", **extra}
        return error_code(
            tc3_call(emulator, "AssumeRole", body, url=STS_URL, service="sts", version="2018-08-13")
        )

    assert code("arn:aws:iam::1:role/x") == "InvalidParameterValue"
    assert code("qcs::cam::uin/200000000002:roleName/x") == "ResourceNotFound.RoleNotExist"
    assert code(ROLE_ARN, DurationSeconds=43201) == "InvalidParameterValue"
    assert error_code(
        tc3_call(
            emulator, "AssumeRole", {"RoleArn": ROLE_ARN}, url=STS_URL, service="sts", version="2018-08-13"
        )
    ) == ("MissingParameter")
    assert error_code(tc3_call(emulator, "GetCallerIdentity", url=STS_URL, service="sts")) == "NoSuchVersion"


def _web_identity(em: Emulator, token: str, authorization: str | None) -> httpx.Response:
    body = json.dumps(
        {
            "ProviderId": "OIDC",
            "WebIdentityToken": token,
            "RoleArn": ROLE_ARN,
            "RoleSessionName": "github-actions",
        }
    ).encode()
    headers = {
        "Content-Type": "application/json",
        "X-TC-Action": "AssumeRoleWithWebIdentity",
        "X-TC-Timestamp": str(int(em.clock())),
        "X-TC-Version": "2018-08-13",
        "X-TC-Region": GZ,
    }
    if authorization is not None:
        headers["Authorization"] = authorization
    with em.client() as client:
        return client.post(STS_URL, content=body, headers=headers)


@pytest.mark.parametrize("authorization", [None, "SKIP"])
def test_assume_role_with_web_identity_is_unsigned(emulator: Emulator, authorization: str | None) -> None:
    answer = ok(_web_identity(emulator, "emulator-oidc-token", authorization))
    creds = answer["Credentials"]
    tmp = {"secret_id": creds["TmpSecretId"], "secret_key": creds["TmpSecretKey"]}
    assert ok(tc3_call(emulator, "DescribeKeyPairs", token=creds["Token"], **tmp))
    assert error_code(_web_identity(emulator, "someone-elses-token", authorization)) == (
        "InvalidParameter.WebIdentityTokenError"
    )


def test_metadata_serves_instance_role_credentials(emulator: Emulator) -> None:
    base = "http://metadata.tencentyun.com/latest/meta-data/cam/security-credentials/"
    with emulator.client() as client:
        assert client.get(base).text == "cvmkeys-instance\n"
        assert client.get(base + "nobody").status_code == 404
        document = client.get(base + "cvmkeys-instance").json()
        again = client.get(base + "cvmkeys-instance").json()
    assert document["Code"] == "Success" and document["ExpiredTime"] > emulator.clock() + 3600
    assert again["TmpSecretId"] == document["TmpSecretId"]  # the same until it nears expiry
    tmp = {"secret_id": document["TmpSecretId"], "secret_key": document["TmpSecretKey"]}
    assert ok(tc3_call(emulator, "DescribeKeyPairs", token=document["Token"], **tmp))
    assert error_code(tc3_call(emulator, "DescribeKeyPairs", **tmp)) == "AuthFailure.TokenFailure"


# --------------------------------------------------------------------------- sockets and the fleet file


def test_both_apis_on_one_served_port(emulator: Emulator) -> None:
    with emulator.serve() as server:
        url3 = server.url3
        described = ok(tc3_call(emulator, "DescribeInstances", {"InstanceIds": [DB1]}, url=url3))
        assert described["InstanceSet"][0]["InstanceState"] == "RUNNING"
        assert ok(v1_call(emulator, "DescribeKeyPairs", url=url3, method="POST"))["TotalCount"] == 4
        removed = ok(
            tc3_call(
                emulator, "DisassociateInstancesKeyPairs", {"InstanceIds": [WEB1], "KeyIds": [OLD]}, url=url3
            )
        )
        assert removed["RequestId"]
        legacy = emulator.call("DescribeKeyPairs", {"keyIds.0": OLD}, url=server.url).json()
        assert WEB1 not in legacy["data"]["sshSet"][0]["bindUnInstanceIds"]
        assert httpx.get(url3 + "latest/meta-data/cam/security-credentials/").text == "cvmkeys-instance\n"


def test_identity_block_is_read_from_the_fixture_and_kept_in_the_live_state(emulator: Emulator) -> None:
    fixture = emulator.fleet_path.read_bytes()
    emulator.call("UnBindInstanceKey", {"keyId": OLD, "instanceIds.0": WEB1})
    assert emulator.fleet_path.read_bytes() == fixture  # a fixture: never written
    for reread in (
        FleetState.from_file(emulator.fleet_path, persist=False),
        FleetState.from_file(emulator.fleet_path),  # the live state, as another process sees it
    ):
        assert reread.account_id == "100000000001" and reread.roles == ("cvmkeys-instance",)
        assert reread.web_identity_tokens == (("OIDC", "emulator-oidc-token"),)
        assert (OLD, WEB1) not in reread.bindings(GZ)
        reread.close()


# --------------------------------------------------------------------------- the live state, shared


def test_3_0_operations_and_sts_credentials_are_shared_across_processes_until_reset(tmp_path: Path) -> None:
    """A served emulator (another process) and an in-process one on the same fixture: what 3.0
    and STS calls leave behind (latest operations, ForceStop phases, STOP_CHARGING, temporary
    credentials) is seen by the other, survives a restart, and ``emulator reset`` clears it."""
    fleet = tmp_path / "fleet.yaml"
    fleet.write_bytes(EXAMPLE_FLEET.read_bytes())
    process, served = serve_fleet(fleet, GZ, "--op-seconds", "600")
    clock = FakeClock()
    state = FleetState.from_file(fleet, clock=clock, op_seconds=600)
    local = Emulator(state=state, app=EmulatorApp(state, clock=clock), clock=clock, fleet_path=fleet)
    try:
        url3 = served.url[: -len("v2/index.php")]
        # In the served process: a ForceStop disassociation on a RUNNING instance, a stop with
        # STOP_CHARGING elsewhere, temporary credentials from STS.
        removed = ok(
            tc3_call(
                local,
                "DisassociateInstancesKeyPairs",
                {"InstanceIds": [DB1], "KeyIds": [OLD], "ForceStop": True},
                url=url3,
            )
        )
        ok(
            tc3_call(
                local,
                "StopInstances",
                {"InstanceIds": [DB1], "StopType": "HARD", "StoppedMode": "STOP_CHARGING"},
                url=url3,
                region="ap-shanghai",
            )
        )
        body = {"RoleArn": ROLE_ARN, "RoleSessionName": "shared", "DurationSeconds": 900}
        creds = ok(
            tc3_call(local, "AssumeRole", body, url=url3, service="sts", version="2018-08-13", region=None)
        )["Credentials"]
        tmp = {"secret_id": creds["TmpSecretId"], "secret_key": creds["TmpSecretKey"]}

        # In this process, through the in-process 3.0 face.
        db1 = instances(local, DB1)[DB1]
        assert db1["LatestOperation"] == "DisassociateInstancesKeyPairs"
        assert db1["LatestOperationState"] == "OPERATING"
        assert db1["LatestOperationRequestId"] == removed["RequestId"]
        assert db1["InstanceState"] == "STOPPING"  # the first of ForceStop's three phases
        assert OLD in db1["LoginSettings"]["KeyIds"]  # reported until the operation is done
        shanghai = ok(tc3_call(local, "DescribeInstances", {"InstanceIds": [DB1]}, region="ap-shanghai"))
        assert shanghai["InstanceSet"][0]["StopChargingMode"] == "STOP_CHARGING"
        assert shanghai["InstanceSet"][0]["LatestOperation"] == "StopInstances"
        assert ok(tc3_call(local, "DescribeKeyPairs", token=creds["Token"], **tmp))["TotalCount"] == 4
        assert error_code(tc3_call(local, "DescribeKeyPairs", **tmp)) == "AuthFailure.TokenFailure"

        # The phases and the operation end on this process's clock, as recorded.
        clock.advance(2 * 600 + 1)
        assert instances(local, DB1)[DB1]["InstanceState"] == "STARTING"
        clock.advance(600)
        db1 = instances(local, DB1)[DB1]
        assert (db1["InstanceState"], db1["LatestOperationState"]) == ("RUNNING", "SUCCESS")
        assert OLD not in db1["LoginSettings"]["KeyIds"]
        # ... and the credentials expire on it (900 s), as issued.
        assert error_code(tc3_call(local, "DescribeKeyPairs", token=creds["Token"], **tmp)) == (
            "AuthFailure.TokenFailure"
        )
        clock.advance(-clock.offset)

        # A restart of the served emulator keeps all of it.
        stop_served(process)
        process, served = serve_fleet(fleet, GZ)
        url3 = served.url[: -len("v2/index.php")]
        assert ok(tc3_call(local, "DescribeKeyPairs", token=creds["Token"], url=url3, **tmp))
        db1 = ok(tc3_call(local, "DescribeInstances", {"InstanceIds": [DB1]}, url=url3))["InstanceSet"][0]
        assert db1["LatestOperationRequestId"] == removed["RequestId"]

        # Reset: the fixture's world again, for both processes.
        assert CliRunner().invoke(emulator_app, ["reset", "--fleet", str(fleet)]).exit_code == 0
        for url in (URL3, url3):
            db1 = ok(tc3_call(local, "DescribeInstances", {"InstanceIds": [DB1]}, url=url))["InstanceSet"][0]
            assert (db1["InstanceState"], db1["LatestOperation"]) == ("RUNNING", None)
            assert OLD in db1["LoginSettings"]["KeyIds"]
            answer = tc3_call(
                local, "DescribeInstances", {"InstanceIds": [DB1]}, url=url, region="ap-shanghai"
            )
            assert ok(answer)["InstanceSet"][0]["StopChargingMode"] == "KEEP_CHARGING"
            refused = tc3_call(local, "DescribeKeyPairs", token=creds["Token"], url=url, **tmp)
            assert error_code(refused) == "AuthFailure.SecretIdNotFound"
    finally:
        stop_served(process)
        state.close()
    assert fleet.read_bytes() == EXAMPLE_FLEET.read_bytes()  # a fixture: never written
