"""Tencent's own 3.0 SDK (tencentcloud-sdk-python common/cvm/sts) against the served emulator.

The SDK is used unmodified but for the endpoint: ``HttpProfile(endpoint="127.0.0.1:PORT",
protocol="http")``. It signs with its own TC3-HMAC-SHA256 or HmacSHA256 code, over the Host it
sends (``127.0.0.1:PORT``), and raises ``TencentCloudSDKException`` with the answer's
``Response.Error.Code``. The instance-role credential provider is pointed at the emulator's
metadata service by its endpoint attribute (the only way to aim it anywhere but
``metadata.tencentyun.com``).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from conftest import SECRET_ID, SECRET_KEY, Emulator, EmulatorFactory
from support import CI, DB1, OLD, WEB1, WIN1
from tencentcloud.common import credential  # type: ignore[import-untyped]
from tencentcloud.common.common_client import CommonClient  # type: ignore[import-untyped]
from tencentcloud.common.exception.tencent_cloud_sdk_exception import (  # type: ignore[import-untyped]
    TencentCloudSDKException,
)
from tencentcloud.common.profile.client_profile import ClientProfile  # type: ignore[import-untyped]
from tencentcloud.common.profile.http_profile import HttpProfile  # type: ignore[import-untyped]
from tencentcloud.cvm.v20170312 import cvm_client, models  # type: ignore[import-untyped]
from tencentcloud.sts.v20180813 import models as sts_models  # type: ignore[import-untyped]
from tencentcloud.sts.v20180813 import sts_client  # type: ignore[import-untyped]

from reconciler.emulator.server import RunningServer

GZ = "ap-guangzhou"
ROLE_ARN = "qcs::cam::uin/100000000001:roleName/cvmkeys-apply"
SIGN_METHODS = ["TC3-HMAC-SHA256", "HmacSHA256"]


@pytest.fixture(params=SIGN_METHODS)
def sign_method(request: pytest.FixtureRequest) -> str:
    """Every test that takes it runs once per signing method the SDK offers."""
    return str(request.param)


@pytest.fixture
def served(make_emulator: EmulatorFactory) -> Iterator[tuple[Emulator, RunningServer]]:
    em = make_emulator(op_seconds=5)
    with em.serve() as server:
        yield em, server


def _profile(server: RunningServer, sign_method: str) -> Any:
    http = HttpProfile(endpoint=server.endpoint, protocol="http")
    return ClientProfile(httpProfile=http, signMethod=sign_method)


def cvm(server: RunningServer, sign_method: str, cred: Any = None) -> Any:
    cred = cred or credential.Credential(SECRET_ID, SECRET_KEY)
    return cvm_client.CvmClient(cred, GZ, _profile(server, sign_method))


def sts(server: RunningServer, sign_method: str, cred: Any = None) -> Any:
    cred = cred or credential.Credential(SECRET_ID, SECRET_KEY)
    return sts_client.StsClient(cred, GZ, _profile(server, sign_method))


def describe(client: Any, *ids: str) -> dict[str, Any]:
    request = models.DescribeInstancesRequest()
    request.InstanceIds = list(ids)
    return {item.InstanceId: item for item in client.DescribeInstances(request).InstanceSet}


def disassociate(client: Any, instance_ids: list[str], key_ids: list[str], force_stop: bool = False) -> Any:
    request = models.DisassociateInstancesKeyPairsRequest()
    request.InstanceIds, request.KeyIds, request.ForceStop = instance_ids, key_ids, force_stop
    return client.DisassociateInstancesKeyPairs(request)


def refused(call: Any) -> str:
    with pytest.raises(TencentCloudSDKException) as caught:
        call()
    assert caught.value.get_request_id()
    code = caught.value.get_code()
    assert isinstance(code, str)
    return code


def test_reads(served: tuple[Emulator, RunningServer], sign_method: str) -> None:
    _, server = served
    client = cvm(server, sign_method)
    found = describe(client, WEB1, DB1)
    assert found[WEB1].InstanceState == "STOPPED" and found[DB1].InstanceState == "RUNNING"
    assert found[WEB1].LoginSettings.KeyIds == [CI, OLD]
    request = models.DescribeKeyPairsRequest()
    request.KeyIds = [OLD]
    pair = client.DescribeKeyPairs(request).KeyPairSet[0]
    assert pair.KeyId == OLD and WEB1 in pair.AssociatedInstanceIds
    request = models.DescribeKeyPairsRequest()
    request.Limit = 100
    assert client.DescribeKeyPairs(request).TotalCount == 4


def test_allowed_disassociation_and_its_operation_state(
    served: tuple[Emulator, RunningServer], sign_method: str
) -> None:
    em, server = served
    client = cvm(server, sign_method)
    answer = disassociate(client, [WEB1], [OLD])
    item = describe(client, WEB1)[WEB1]
    assert item.LatestOperation == "DisassociateInstancesKeyPairs"
    assert item.LatestOperationState == "OPERATING"
    assert item.LatestOperationRequestId == answer.RequestId
    em.clock.advance(5)
    item = describe(client, WEB1)[WEB1]
    assert item.LatestOperationState == "SUCCESS" and item.LoginSettings.KeyIds == [CI]
    assert (OLD, WEB1) not in em.state.bindings(GZ)


def test_force_stop_on_a_running_instance(served: tuple[Emulator, RunningServer]) -> None:
    em, server = served
    client = cvm(server, "TC3-HMAC-SHA256")
    answer = disassociate(client, [DB1], [OLD], force_stop=True)
    states = []
    for _ in range(4):
        item = describe(client, DB1)[DB1]
        states.append((item.InstanceState, item.LatestOperationState))
        em.clock.advance(5)
    assert states == [
        ("STOPPING", "OPERATING"),
        ("STOPPED", "OPERATING"),
        ("STARTING", "OPERATING"),
        ("RUNNING", "SUCCESS"),
    ]
    item = describe(client, DB1)[DB1]
    assert item.LatestOperationRequestId == answer.RequestId and OLD not in item.LoginSettings.KeyIds


def test_stop_and_start(served: tuple[Emulator, RunningServer]) -> None:
    em, server = served
    client = cvm(server, "HmacSHA256")
    stop = models.StopInstancesRequest()
    stop.InstanceIds, stop.StopType, stop.StoppedMode = [DB1], "SOFT_FIRST", "KEEP_CHARGING"
    client.StopInstances(stop)
    assert describe(client, DB1)[DB1].InstanceState == "STOPPING"
    em.clock.advance(5)
    assert describe(client, DB1)[DB1].InstanceState == "STOPPED"
    start = models.StartInstancesRequest()
    start.InstanceIds = [DB1]
    client.StartInstances(start)
    em.clock.advance(5)
    assert describe(client, DB1)[DB1].InstanceState == "RUNNING"
    assert refused(lambda: client.StartInstances(start)) == "UnsupportedOperation.InstanceStateRunning"


def test_refusals_with_their_documented_codes(
    served: tuple[Emulator, RunningServer], sign_method: str
) -> None:
    em, server = served
    client = cvm(server, sign_method)
    assert (
        refused(lambda: disassociate(client, [WEB1, DB1], [OLD]))
        == "UnsupportedOperation.InstanceStateRunning"
    )
    assert refused(lambda: disassociate(client, [WIN1], [OLD])) == "UnsupportedOperation.InstanceOsWindows"
    assert refused(lambda: disassociate(client, ["ins-aaaaaaaa"], [OLD])) == "InvalidInstanceId.NotFound"
    assert refused(lambda: disassociate(client, [WEB1], ["skey-00000000"])) == "InvalidKeyPairId.NotFound"
    many = [f"ins-{n:08d}" for n in range(101)]
    assert refused(lambda: disassociate(client, many, [OLD])) == "InvalidParameterValue.LimitExceeded"
    assert em.state.mutations == []
    disassociate(client, [WEB1], [OLD])
    assert (
        refused(lambda: disassociate(client, [WEB1], [CI])) == "OperationDenied.InstanceOperationInProgress"
    )


def test_authentication_failures(served: tuple[Emulator, RunningServer], sign_method: str) -> None:
    em, server = served
    wrong_key = cvm(server, sign_method, credential.Credential(SECRET_ID, "not-the-key"))
    assert refused(lambda: describe(wrong_key, WEB1)) == "AuthFailure.SignatureFailure"
    unknown = cvm(server, sign_method, credential.Credential("AKIDNOBODY", SECRET_KEY))
    assert refused(lambda: describe(unknown, WEB1)) == "AuthFailure.SecretIdNotFound"
    em.clock.advance(400)  # the SDK's clock is now 400 s behind the emulator's
    assert refused(lambda: describe(cvm(server, sign_method), WEB1)) == "AuthFailure.SignatureExpire"


def test_sts_temporary_credentials(served: tuple[Emulator, RunningServer], sign_method: str) -> None:
    em, server = served
    who = sts(server, sign_method).GetCallerIdentity(sts_models.GetCallerIdentityRequest())
    assert who.AccountId == "100000000001" and who.Arn
    request = sts_models.AssumeRoleRequest()
    request.RoleArn, request.RoleSessionName, request.DurationSeconds = ROLE_ARN, "cvmkeys-plan", 1800
    answer = sts(server, sign_method).AssumeRole(request)
    creds = answer.Credentials
    with_token = credential.Credential(creds.TmpSecretId, creds.TmpSecretKey, creds.Token)
    assert describe(cvm(server, sign_method, with_token), WEB1)[WEB1].InstanceState == "STOPPED"
    assumed = sts(server, sign_method, with_token).GetCallerIdentity(sts_models.GetCallerIdentityRequest())
    assert assumed.AccountId == "100000000001" and assumed.UserId.endswith(":cvmkeys-plan")
    without = credential.Credential(creds.TmpSecretId, creds.TmpSecretKey)
    assert refused(lambda: describe(cvm(server, sign_method, without), WEB1)) == "AuthFailure.TokenFailure"
    # Expiry, within the 300 s the signature's Timestamp may be off: credentials for 300 s,
    # issued while the emulator's clock is 250 s behind the SDK's, then 100 s ahead of it.
    em.clock.advance(-250)
    request.DurationSeconds = 300
    short = sts(server, sign_method).AssumeRole(request).Credentials
    short_cred = credential.Credential(short.TmpSecretId, short.TmpSecretKey, short.Token)
    assert describe(cvm(server, sign_method, short_cred), WEB1)
    em.clock.advance(350)
    assert refused(lambda: describe(cvm(server, sign_method, short_cred), WEB1)) == "AuthFailure.TokenFailure"
    assert describe(cvm(server, sign_method, with_token), WEB1)  # the 1800 s ones still work


def test_web_identity_through_the_sdks_unsigned_call(served: tuple[Emulator, RunningServer]) -> None:
    """What the SDK's ``OIDCRoleArnCredential.refresh`` does, on a plain-HTTP profile."""
    _, server = served
    profile = ClientProfile(httpProfile=HttpProfile(endpoint=server.endpoint, protocol="http"))
    client = CommonClient(credential=None, region=GZ, version="2018-08-13", service="sts", profile=profile)
    params = {
        "ProviderId": "OIDC",
        "WebIdentityToken": "emulator-oidc-token",
        "RoleArn": ROLE_ARN,
        "RoleSessionName": "github-actions",
        "DurationSeconds": 3600,
    }
    answer = client.call_json("AssumeRoleWithWebIdentity", params, options={"SkipSign": True})["Response"]
    creds = answer["Credentials"]
    cred = credential.Credential(creds["TmpSecretId"], creds["TmpSecretKey"], creds["Token"])
    assert describe(cvm(server, "TC3-HMAC-SHA256", cred), DB1)[DB1].InstanceState == "RUNNING"
    bad = dict(params, WebIdentityToken="forged")
    with pytest.raises(TencentCloudSDKException) as caught:
        client.call_json("AssumeRoleWithWebIdentity", bad, options={"SkipSign": True})
    assert caught.value.get_code() == "InvalidParameter.WebIdentityTokenError"


def test_instance_role_credentials_from_the_metadata_service(served: tuple[Emulator, RunningServer]) -> None:
    _, server = served
    role = credential.CVMRoleCredential("cvmkeys-instance")
    role._role_endpoint = server.url3 + "latest/meta-data/cam/security-credentials/"
    assert role.secret_id.startswith("AKID") and role.token
    assert describe(cvm(server, "HmacSHA256", role), WEB1)[WEB1].InstanceId == WEB1
