"""Our TC3 signing flow against Tencent's own signing code (tencentcloud-sdk-python-common, in the
``test`` extra): for random requests, Tencent's SDK builds and signs a request; our auth flow
signs the same bytes at the same second and must produce the same Authorization header, and our
verifier must accept the SDK's."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from reconciler.cloud import tc3
from reconciler.cloud.credentials import Credentials, StaticProvider
from reconciler.cloud.tc3call import Tc3Auth

common_client = pytest.importorskip("tencentcloud.common.common_client")
from tencentcloud.common.credential import Credential  # noqa: E402
from tencentcloud.common.http.request import RequestInternal  # noqa: E402
from tencentcloud.common.profile.client_profile import ClientProfile  # noqa: E402
from tencentcloud.common.profile.http_profile import HttpProfile  # noqa: E402

_key_chars = st.characters(min_codepoint=33, max_codepoint=126)
_values: st.SearchStrategy[Any] = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**40), 2**40) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)


@dataclass(frozen=True)
class _Call:
    """One request, as both sides are told to sign it."""

    service: str
    host: str
    action: str
    region: str
    params: dict[str, Any]
    secret_id: str
    secret_key: str
    token: str | None


def _sdk_request(call: _Call) -> RequestInternal:
    profile = ClientProfile(httpProfile=HttpProfile(endpoint=call.host))
    credential = Credential(call.secret_id, call.secret_key, call.token)
    client = common_client.CommonClient(call.service, "2017-03-12", credential, call.region, profile=profile)
    request = RequestInternal(call.host, "POST", "/", header={})
    client._build_req_with_tc3_signature(call.action, call.params, request)
    return request


_calls = st.builds(
    _Call,
    service=st.sampled_from(["cvm", "sts", "cam"]),
    host=st.sampled_from(
        ["cvm.tencentcloudapi.com", "cvm.ap-guangzhou.tencentcloudapi.com", "127.0.0.1:8080"]
    ),
    action=st.sampled_from(["DescribeInstances", "DisassociateInstancesKeyPairs", "GetCallerIdentity"]),
    region=st.sampled_from(["ap-guangzhou", "ap-singapore", "na-ashburn"]),
    params=st.dictionaries(st.text(min_size=1, max_size=12), _values, max_size=6),
    # SecretIds are AKID plus letters and digits (a "/" or "," could not be parsed back by anyone).
    secret_id=st.from_regex(r"AKID[A-Za-z0-9]{1,36}", fullmatch=True),
    secret_key=st.text(_key_chars, min_size=1, max_size=40),
    token=st.none() | st.text(_key_chars, min_size=1, max_size=60),
)


@settings(max_examples=150, deadline=None)
@given(call=_calls)
def test_same_authorization_as_tencents_sdk(call: _Call) -> None:
    sdk = _sdk_request(call)
    timestamp = int(sdk.header["X-TC-Timestamp"])
    body = sdk.data.encode("utf-8")
    assert json.loads(body) == call.params

    ours = httpx.Request(
        "POST", f"http://{call.host}/", content=body, headers={"Content-Type": sdk.header["Content-Type"]}
    )
    credentials = Credentials(call.secret_id, call.secret_key, token=call.token)
    Tc3Auth(StaticProvider(credentials), service=call.service, clock=lambda: timestamp).sign(ours)

    assert ours.headers["Authorization"] == sdk.header["Authorization"]
    assert ours.headers.get("X-TC-Token") == sdk.header.get("X-TC-Token")
    assert ours.headers["X-TC-Timestamp"] == sdk.header["X-TC-Timestamp"]
    # And our verifier (the emulator's) accepts what Tencent's SDK signed.
    parsed = tc3.parse_authorization(sdk.header["Authorization"])
    assert parsed is not None
    assert tc3.verify(
        call.secret_key,
        parsed,
        timestamp=timestamp,
        method="POST",
        headers={"Content-Type": sdk.header["Content-Type"], "Host": call.host},
        payload=body,
    )


def test_a_different_key_gives_a_different_signature() -> None:
    # The comparison above can fail: a wrong key never matches the SDK's header.
    sdk = _sdk_request(
        _Call("cvm", "cvm.tencentcloudapi.com", "DescribeInstances", "ap-guangzhou", {}, "AKIDx", "k1", None)
    )
    ours = httpx.Request(
        "POST",
        "https://cvm.tencentcloudapi.com/",
        content=sdk.data.encode(),
        headers={"Content-Type": sdk.header["Content-Type"]},
    )
    stamp = int(sdk.header["X-TC-Timestamp"])
    Tc3Auth(StaticProvider(Credentials("AKIDx", "k2")), service="cvm", clock=lambda: stamp).sign(ours)
    assert ours.headers["Authorization"] != sdk.header["Authorization"]
