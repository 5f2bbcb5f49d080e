"""TC3-HMAC-SHA256 signing against the official vector (cvm-api-3.0.md section 3.1)."""

from __future__ import annotations

from reconciler.cloud import tc3

VECTOR_HEADERS = {
    "Content-Type": "application/json; charset=utf-8",
    "Host": "cvm.tencentcloudapi.com",
}
VECTOR_PAYLOAD = b'{"Limit": 1, "Filters": [{"Values": ["\\u672a\\u547d\\u540d"], "Name": "instance-name"}]}'
VECTOR_KEY = "Gu5t9xGARNpq86cd98joQYCN3EXAMPLE"
VECTOR_ID = "AKIDz8krbsJ5yKBZQpn74WFkmLPx3EXAMPLE"
VECTOR_TIME = 1551113065


def test_official_vector_step_by_step() -> None:
    canonical = tc3.canonical_request("POST", "", VECTOR_HEADERS, VECTOR_PAYLOAD)
    assert canonical.endswith("35e9c5b0e3ae67532d3c9f17ead6c90222632e5b1ff7f6e89887f1398934f064")
    text = tc3.string_to_sign(VECTOR_TIME, "cvm", canonical)
    assert text.split("\n") == [
        "TC3-HMAC-SHA256",
        "1551113065",
        "2019-02-25/cvm/tc3_request",
        "5ffe6a04c0664d6b969fab9a13bdab201d63ee709638e2749d62a09ca18d7031",
    ]
    sig = tc3.signature(VECTOR_KEY, VECTOR_TIME, "cvm", text)
    assert sig == "72e494ea809ad7a8c8f7a4507b9bddcbaa8e581f516e8da2f66e2c5a96525168"


def test_authorization_round_trips_through_verify() -> None:
    header = tc3.authorization(
        VECTOR_ID, VECTOR_KEY, service="cvm", timestamp=VECTOR_TIME, method="POST",
        headers=VECTOR_HEADERS, payload=VECTOR_PAYLOAD,
    )
    assert header == (
        "TC3-HMAC-SHA256 Credential=AKIDz8krbsJ5yKBZQpn74WFkmLPx3EXAMPLE/2019-02-25/cvm/tc3_request, "
        "SignedHeaders=content-type;host, "
        "Signature=72e494ea809ad7a8c8f7a4507b9bddcbaa8e581f516e8da2f66e2c5a96525168"
    )
    parsed = tc3.parse_authorization(header)
    assert parsed is not None and parsed.secret_id == VECTOR_ID and parsed.service == "cvm"
    kwargs = {"timestamp": VECTOR_TIME, "method": "POST", "headers": VECTOR_HEADERS}
    assert tc3.verify(VECTOR_KEY, parsed, payload=VECTOR_PAYLOAD, **kwargs)  # type: ignore[arg-type]
    assert not tc3.verify(VECTOR_KEY, parsed, payload=VECTOR_PAYLOAD + b" ", **kwargs)  # type: ignore[arg-type]
    assert not tc3.verify("wrong" + VECTOR_KEY, parsed, payload=VECTOR_PAYLOAD, **kwargs)  # type: ignore[arg-type]
    # A scope date that is not the timestamp's UTC date does not verify.
    assert not tc3.verify(VECTOR_KEY, parsed, payload=VECTOR_PAYLOAD, timestamp=VECTOR_TIME + 86400,
                          method="POST", headers=VECTOR_HEADERS)


def test_malformed_headers_do_not_parse() -> None:
    assert tc3.parse_authorization("") is None
    assert tc3.parse_authorization("HMAC Credential=x") is None
    assert tc3.parse_authorization("TC3-HMAC-SHA256 Credential=a/2019-02-25/cvm/tc3_request, "
                                   "SignedHeaders=content-type;host, Signature=zz") is None
