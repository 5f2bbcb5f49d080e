"""Credentials: read from the environment, validated, and never shown."""

from __future__ import annotations

import pytest

from reconciler.cloud.credentials import (
    Credentials,
    credentials_from_env,
    load_credentials,
    mask_secret_id,
)
from reconciler.errors import ConfigError

SECRET_ID = "AKIDz8krbsJ5yKBZQpn74WFkmLPx3gnPhESA"
SECRET_KEY = "Gu5t9xGARNpq86cd98joQYCN3Cozk1qA"


def test_repr_and_str_hide_the_key_and_mask_the_id() -> None:
    creds = Credentials(SECRET_ID, SECRET_KEY)
    for text in (repr(creds), str(creds), f"{creds}", repr([creds])):
        assert SECRET_KEY not in text
        assert SECRET_ID not in text
        assert "AKID...hESA" in text


def test_short_secret_id_is_fully_masked() -> None:
    assert mask_secret_id("AKID123") == "***"
    assert "AKID123" not in repr(Credentials("AKID123", SECRET_KEY))


def test_from_env_reads_both_variables() -> None:
    creds = credentials_from_env(
        {"TENCENTCLOUD_SECRET_ID": SECRET_ID, "TENCENTCLOUD_SECRET_KEY": SECRET_KEY}
    )
    assert creds == Credentials(SECRET_ID, SECRET_KEY)


def test_from_env_none_when_unset() -> None:
    assert credentials_from_env({}) is None
    assert credentials_from_env({"TENCENTCLOUD_SECRET_ID": "", "TENCENTCLOUD_SECRET_KEY": ""}) is None
    with pytest.raises(ConfigError, match="no API credentials") as info:
        load_credentials({})
    assert info.value.hint is not None and "TENCENTCLOUD_SECRET_KEY" in info.value.hint


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        ({"TENCENTCLOUD_SECRET_ID": SECRET_ID}, "TENCENTCLOUD_SECRET_KEY is not"),
        ({"TENCENTCLOUD_SECRET_KEY": SECRET_KEY}, "TENCENTCLOUD_SECRET_ID is not"),
        (
            {"TENCENTCLOUD_SECRET_ID": SECRET_ID, "TENCENTCLOUD_SECRET_KEY": SECRET_KEY + "\n"},
            "TENCENTCLOUD_SECRET_KEY contains whitespace",
        ),
        (
            {"TENCENTCLOUD_SECRET_ID": " " + SECRET_ID, "TENCENTCLOUD_SECRET_KEY": SECRET_KEY},
            "TENCENTCLOUD_SECRET_ID contains whitespace",
        ),
    ],
)
def test_from_env_errors_name_the_variable_not_the_value(
    environ: dict[str, str], message: str
) -> None:
    with pytest.raises(ConfigError, match=message) as info:
        credentials_from_env(environ)
    assert SECRET_KEY not in str(info.value)
    assert SECRET_KEY not in repr(info.value)


def test_direct_construction_is_validated() -> None:
    with pytest.raises(ConfigError, match="SecretKey is empty"):
        Credentials(SECRET_ID, "")
    with pytest.raises(ConfigError, match="SecretKey contains whitespace") as info:
        Credentials(SECRET_ID, "abc def")
    assert "abc def" not in str(info.value)
