"""The signing functions against the vectors Tencent publishes for API 2.0."""

from __future__ import annotations

import pytest

from reconciler.cloud.signing import compute_signature, sign, string_to_sign, verify

SECRET = "Gu5t9xGARNpq86cd98joQYCN3Cozk1qA"
BASE = {
    "Action": "DescribeInstances",
    "InstanceIds.0": "ins-09dx96dg",
    "Nonce": "11886",
    "Region": "ap-guangzhou",
    "SecretId": "AKIDz8krbsJ5yKBZQpn74WFkmLPx3gnPhESA",
    "Timestamp": "1465185768",
}
HOST, PATH = "cvm.api.qcloud.com", "/v2/index.php"


@pytest.mark.parametrize(
    ("method", "expected"),
    [
        ("HmacSHA256", "0EEm/HtGRr/VJXTAD9tYMth1Bzm3lLHz5RCDv1GdM8s="),
        ("HmacSHA1", "nPVnY6njQmwQ8ciqbPl5Qe+Oru4="),
    ],
)
def test_published_vectors(method: str, expected: str) -> None:
    params = {**BASE, "SignatureMethod": method}
    text = string_to_sign("GET", HOST, PATH, params)
    assert text == (
        "GETcvm.api.qcloud.com/v2/index.php?Action=DescribeInstances&InstanceIds.0=ins-09dx96dg"
        f"&Nonce=11886&Region=ap-guangzhou&SecretId=AKIDz8krbsJ5yKBZQpn74WFkmLPx3gnPhESA"
        f"&SignatureMethod={method}&Timestamp=1465185768"
    )
    assert compute_signature(SECRET, text, method) == expected
    assert sign(SECRET, "get", HOST, PATH, params) == expected


def test_underscore_names_are_signed_as_dots_and_signature_is_excluded() -> None:
    with_dots = {**BASE, "SignatureMethod": "HmacSHA256"}
    with_underscore = dict(with_dots)
    with_underscore["InstanceIds_0"] = with_underscore.pop("InstanceIds.0")
    assert sign(SECRET, "GET", HOST, PATH, with_dots) == sign(SECRET, "GET", HOST, PATH, with_underscore)
    signed = {**with_dots, "Signature": sign(SECRET, "GET", HOST, PATH, with_dots)}
    assert verify(SECRET, "GET", HOST, PATH, signed)
    assert not verify(SECRET + "x", "GET", HOST, PATH, signed)
    assert not verify(SECRET, "GET", "other.host", PATH, signed)


def test_byte_order_sort_is_case_sensitive() -> None:
    text = string_to_sign("GET", HOST, PATH, {"instanceIds.0": "a", "Timestamp": "1"})
    assert text.endswith("?Timestamp=1&instanceIds.0=a")


def test_post_skips_file_upload_values() -> None:
    text = string_to_sign("POST", HOST, PATH, {"Action": "X", "file": "@/etc/passwd"})
    assert text == "POSTcvm.api.qcloud.com/v2/index.php?Action=X"
