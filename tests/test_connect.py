"""Choosing the API (``connect.choose_api``): ``--api`` wins; otherwise 2.0's path or host means
2.0 and everything else 3.0; ``--api 3.0`` with a 2.0 endpoint is refused."""

from __future__ import annotations

import pytest

from reconciler.connect import ConnectOptions, choose_api
from reconciler.errors import ConfigError
from reconciler.model import ApiVersion


@pytest.mark.parametrize(
    ("endpoint", "api"),
    [
        (None, "3.0"),  # the real cloud's default, and the in-process emulator
        ("https://cvm.tencentcloudapi.com/", "3.0"),
        ("https://cvm.ap-guangzhou.tencentcloudapi.com", "3.0"),
        ("https://cvm.intl.tencentcloudapi.com/", "3.0"),
        ("http://127.0.0.1:8080", "3.0"),
        ("http://127.0.0.1:8080/", "3.0"),
        ("http://127.0.0.1:8080/v2/index.php", "2.0"),
        ("https://cvm.api.qcloud.com/v2/index.php", "2.0"),
        ("https://cvm.api.qcloud.com", "2.0"),  # 2.0's host serves nothing else
    ],
)
def test_the_api_follows_the_endpoint_unless_given(endpoint: str | None, api: str) -> None:
    assert choose_api(ConnectOptions(endpoint=endpoint)).value == api
    assert choose_api(ConnectOptions(endpoint=endpoint, api=ApiVersion.V2)) is ApiVersion.V2
    if api == "3.0":
        assert choose_api(ConnectOptions(endpoint=endpoint, api=ApiVersion.V3)) is ApiVersion.V3


def test_api_3_with_a_2_0_endpoint_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"API 2\.0's \(/v2/index\.php\), but API 3\.0 was asked for"):
        choose_api(ConnectOptions(endpoint="http://127.0.0.1:8080/v2/index.php", api=ApiVersion.V3))
