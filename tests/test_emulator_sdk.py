"""Tencent's own legacy SDK (qcloudapi-sdk-python 2.0.15) against the served emulator.

The SDK always uses HTTPS to a fixed host (``Cvm.requestHost = "cvm.api.qcloud.com"``). The
least intrusive way to point it at ``http://127.0.0.1:PORT``: a subclass, in this test only,
that sets the service's host (which the SDK also signs) and swaps its HTTPS connection for a
plain one. Signing, parameter encoding and sending are the SDK's own code.
"""

from __future__ import annotations

import http.client
import json
from typing import Any

import pytest
from conftest import SECRET_ID, SECRET_KEY, Emulator
from QcloudApi.qcloudapi import QcloudApi  # type: ignore[import-untyped]
from support import BATCH1, CI, DB1, OLD, WEB1

GZ = "ap-guangzhou"


class _PlainConnection(http.client.HTTPConnection):
    """What the SDK's ``MyHTTPSConnection`` is, minus TLS: it reads ``request_length``."""

    request_length = 0


class LocalQcloudApi(QcloudApi):  # type: ignore[misc]
    """The SDK's entry point, sending to a local emulator over plain HTTP."""

    def __init__(self, module: str, config: dict[str, Any], host: str, port: int) -> None:
        super().__init__(module, config)
        self._host, self._port = host, port

    def _factory(self, module: str, config: dict[str, Any]) -> Any:
        service = super()._factory(module, config)
        service.requestHost = f"{self._host}:{self._port}"  # what the SDK signs
        service.apiRequest.conn = _PlainConnection(self._host, self._port)
        return service


def sdk(url: str, method: str = "GET", signature_method: str = "HmacSHA1") -> LocalQcloudApi:
    host_port = url.split("//", 1)[1].split("/", 1)[0]
    host, port = host_port.rsplit(":", 1)
    config = {
        "Region": GZ,
        "secretId": SECRET_ID,
        "secretKey": SECRET_KEY,
        "method": method,
        "SignatureMethod": signature_method,
    }
    return LocalQcloudApi("cvm", config, host, int(port))


def answer(raw: bytes) -> dict[str, Any]:
    document = json.loads(raw)
    assert isinstance(document, dict)
    return document


@pytest.mark.parametrize(("method", "signature"), [("GET", "HmacSHA1"), ("POST", "HmacSHA256")])
def test_tencent_sdk_describes_and_unbinds(emulator: Emulator, method: str, signature: str) -> None:
    with emulator.serve() as server:
        api = sdk(server.url, method, signature)
        keys = answer(api.call("DescribeKeyPairs", {"keyIds": [CI, OLD]}))
        assert keys["code"] == 0 and set(keys) == {"code", "message", "data"}
        assert keys["data"]["totalCount"] == 2
        ci = keys["data"]["sshSet"][0]
        assert ci["keyId"] == CI and BATCH1 in ci["bindUnInstanceIds"]

        instances = answer(api.call("DescribeInstances", {"instanceIds": [DB1, WEB1], "limit": 10}))
        assert set(instances) == {"code", "message", "codeDesc", "totalCount", "instanceSet"}
        assert [i["unInstanceId"] for i in instances["instanceSet"]] == [WEB1, DB1]
        assert instances["instanceSet"][1]["status"] == 2

        # The seed document writes the action as unBindInstanceKey; the SDK upper-cases it.
        done = answer(api.call("unBindInstanceKey", {"keyId": CI, "instanceIds": [BATCH1]}))
        assert done == {"code": 0, "message": ""}
        refused = answer(api.call("UnBindInstanceKey", {"keyId": OLD, "instanceIds": [DB1]}))
        assert refused["code"] == 5100 and DB1 in refused["message"]
    assert (CI, BATCH1) not in emulator.state.bindings(GZ)
    assert (OLD, DB1) in emulator.state.bindings(GZ)
    assert emulator.app.request_counts["UnBindInstanceKey"] == 2


def test_tencent_sdk_with_a_wrong_key_gets_4100(emulator: Emulator) -> None:
    with emulator.serve() as server:
        api = sdk(server.url)
        api.setSecretKey("wrong")
        refused = answer(api.call("DescribeKeyPairs", {}))
    assert refused["code"] == 4100
