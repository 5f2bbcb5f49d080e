"""Every credential source of ``resolve_credentials``, in Terraform's order and names: environment
keys and session token, assumed roles, OIDC web identity, tccli profiles with tokens and roles,
the CVM instance role; renewal before expiry; set-but-unusable variables; no secret in any
message. STS and the metadata service are the server fixture of tests/support_api3.py, over
real HTTP with checked signatures."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pytest
from support import FakeTime
from support_api3 import ACCOUNT, FakeTencent

from reconciler.cloud.api3 import Api3Client
from reconciler.cloud.credentials import (
    Credentials,
    RefreshingProvider,
    StaticProvider,
    StsOptions,
    load_credentials,
    resolve_credentials,
)
from reconciler.cloud.sts import StsClient
from reconciler.errors import ApiError, ConfigError

BASE_ID = "AKIDbasecredentials000000000000000"
BASE_KEY = "base-secret-key-never-shown"
ROLE = f"qcs::cam::uin/{ACCOUNT}:roleName/cvmkeys-apply"
OIDC_TOKEN = "eyJhbGciOiJSUzI1NiJ9.oidc-token-secret.sig"
SECRETS = (BASE_KEY, OIDC_TOKEN, "session-token-secret", "tmp-key-", "tmp-token-")


class World:
    def __init__(self, tmp_path: Path) -> None:
        self.time = FakeTime()
        self.server = FakeTencent(self.time.clock)
        self.server.add_secret(BASE_ID, BASE_KEY)
        self.server.add_key("skey-00000001", bound=["ins-00000001"])
        self.home = tmp_path

    def env(self, **more: str) -> dict[str, str]:
        return {"HOME": str(self.home), **more}

    def role_env(self, **more: str) -> dict[str, str]:
        """The environment of a role assumed with the base keys (and ``more``)."""
        return self.env(
            TENCENTCLOUD_SECRET_ID=BASE_ID,
            TENCENTCLOUD_SECRET_KEY=BASE_KEY,
            TENCENTCLOUD_ASSUME_ROLE_ARN=ROLE,
            **more,
        )

    def sts(self) -> StsOptions:
        return StsOptions(endpoint="https://sts.tencentcloudapi.com/", transport=self.server.transport())

    def resolve(self, environ: dict[str, str], **options: Any) -> Any:
        return resolve_credentials(environ, sts=self.sts(), clock=self.time.clock, **options)

    def client(self, provider: Any) -> Api3Client:
        return Api3Client(
            provider,
            "ap-guangzhou",
            transport=self.server.transport(),
            clock=self.time.clock,
            sleep=self.time.sleep,
            rate_limit=None,
        )

    def profile(self, name: str, content: dict[str, Any], folder: Path | None = None) -> Path:
        folder = folder or self.home / ".tccli"
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{name}.credential"
        path.write_text(json.dumps(content, indent=2), encoding="utf-8")
        return path


@pytest.fixture
def world(tmp_path: Path) -> World:
    return World(tmp_path)


def _no_secret(error: BaseException) -> None:
    text = f"{error} {getattr(error, 'hint', '')} {error!r}"
    for secret in SECRETS:
        assert secret not in text


# --------------------------------------------------------------------------- environment


def test_environment_keys_and_terraforms_session_token(world: World) -> None:
    world.server.add_secret("AKIDtemporary000000000", "temp-key", token="session-token-secret")
    provider = world.resolve(
        world.env(
            TENCENTCLOUD_SECRET_ID="AKIDtemporary000000000",
            TENCENTCLOUD_SECRET_KEY="temp-key",
            TENCENTCLOUD_SECURITY_TOKEN="session-token-secret",
        )
    )
    assert provider.temporary and "TENCENTCLOUD_SECURITY_TOKEN" in provider.source
    creds = provider.get()
    assert creds.token == "session-token-secret"
    assert "session-token-secret" not in repr(creds) and "temp-key" not in str(creds)
    with world.client(provider) as client:
        assert len(client.describe_instances(["ins-00000001"])) == 1
    assert world.server.seen[-1].headers["x-tc-token"] == "session-token-secret"


def test_the_old_token_name_is_refused_with_the_right_one(world: World) -> None:
    with pytest.raises(ConfigError, match="TENCENTCLOUD_SECURITY_TOKEN") as info:
        world.resolve(
            world.env(
                TENCENTCLOUD_SECRET_ID=BASE_ID,
                TENCENTCLOUD_SECRET_KEY=BASE_KEY,
                TENCENTCLOUD_TOKEN="session-token-secret",
            )
        )
    assert "TENCENTCLOUD_TOKEN" in info.value.message
    _no_secret(info.value)


def test_environment_comes_before_the_profile_and_an_explicit_profile_before_both(world: World) -> None:
    world.profile("default", {"secretId": "AKIDfromprofile0000000", "secretKey": "profile-key"})
    world.profile("ops", {"secretId": "AKIDopsprofile00000000", "secretKey": "ops-key"})
    env = world.env(TENCENTCLOUD_SECRET_ID=BASE_ID, TENCENTCLOUD_SECRET_KEY=BASE_KEY)
    assert world.resolve(env).get().secret_id == BASE_ID
    assert world.resolve(world.env()).get().secret_id == "AKIDfromprofile0000000"
    assert world.resolve(env, profile="ops").get().secret_id == "AKIDopsprofile00000000"
    assert world.resolve(world.env(TENCENTCLOUD_PROFILE="ops")).get().secret_id == "AKIDopsprofile00000000"


def test_shared_credentials_dir_and_a_profile_token(world: World, tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    world.profile(
        "ci",
        {"secretId": "AKIDshared000000000000", "secretKey": "k", "token": "session-token-secret"},
        folder=shared,
    )
    provider = world.resolve(
        world.env(TENCENTCLOUD_SHARED_CREDENTIALS_DIR=str(shared), TENCENTCLOUD_PROFILE="ci")
    )
    assert provider.get().token == "session-token-secret" and provider.temporary
    with pytest.raises(ConfigError, match="not a folder"):
        world.resolve(world.env(TENCENTCLOUD_SHARED_CREDENTIALS_DIR=str(tmp_path / "nope")))


# --------------------------------------------------------------------------- assume role


def test_assume_role_from_the_environment_signs_sts_with_the_base_keys(world: World) -> None:
    env = world.role_env(
        TENCENTCLOUD_ASSUME_ROLE_SESSION_NAME="ci-run",
        TENCENTCLOUD_ASSUME_ROLE_SESSION_DURATION="900",
        TENCENTCLOUD_ASSUME_ROLE_EXTERNAL_ID="ext-1",
    )
    provider = world.resolve(env)
    assert world.server.seen == []  # nothing is fetched before first use
    with world.client(provider) as client:
        client.describe_instances(["ins-00000001"])
    assume, describe = world.server.seen
    assert assume.action == "AssumeRole" and f"Credential={BASE_ID}/" in assume.headers["authorization"]
    assert "/sts/tc3_request" in assume.headers["authorization"]
    assert (
        assume.headers["x-tc-version"] == "2018-08-13" and assume.headers["host"] == "sts.tencentcloudapi.com"
    )
    assert assume.body == {
        "RoleArn": ROLE,
        "RoleSessionName": "ci-run",
        "DurationSeconds": 900,
        "ExternalId": "ext-1",
    }
    assert describe.headers["authorization"].split("/")[0].endswith("AKIDtmp00000002")
    assert describe.headers["x-tc-token"] == "tmp-token-2"
    assert ROLE in provider.source and "TENCENTCLOUD_SECRET_ID" in provider.source


def test_temporary_credentials_are_renewed_before_they_expire(world: World) -> None:
    env = world.role_env(TENCENTCLOUD_ASSUME_ROLE_SESSION_DURATION="900")
    provider = world.resolve(env)
    assert isinstance(provider, RefreshingProvider)
    with world.client(provider) as client:
        client.describe_instances(["ins-00000001"])
        world.time.sleep(500)  # 400 s left: still more than the 300 s margin
        client.describe_instances(["ins-00000001"])
        assert provider.fetches == 1
        world.time.sleep(150)  # 250 s left: renewed before the next call
        client.describe_instances(["ins-00000001"])
        assert provider.fetches == 2
        world.time.sleep(1000)  # the first credentials have expired; the call still works
        client.describe_instances(["ins-00000001"])
    assert world.server.actions().count("AssumeRole") == 3
    assert all(s.headers.get("x-tc-token") for s in world.server.seen if s.action == "DescribeInstances")


def test_a_profile_with_a_role_assumes_it(world: World) -> None:
    world.profile(
        "default",
        {"secretId": BASE_ID, "secretKey": BASE_KEY, "role-arn": ROLE, "role-session-name": "from-profile"},
    )
    provider = world.resolve(world.env())
    assert provider.get().token == "tmp-token-2"
    assert world.server.seen[0].body["RoleSessionName"] == "from-profile"


def test_sts_refusals_are_clear_errors(world: World) -> None:
    env = world.env(
        TENCENTCLOUD_SECRET_ID=BASE_ID,
        TENCENTCLOUD_SECRET_KEY=BASE_KEY,
        TENCENTCLOUD_ASSUME_ROLE_ARN="qcs::cam::uin/999:roleName/not-mine",
    )
    provider = world.resolve(env)
    with pytest.raises(ApiError, match=r"InvalidParameter\.RoleNotExist") as info:
        provider.get()
    assert "trust policy" in (info.value.hint or "")
    _no_secret(info.value)


# --------------------------------------------------------------------------- OIDC


def test_github_actions_oidc_token_file_needs_no_keys(world: World, tmp_path: Path) -> None:
    token_file = tmp_path / "oidc-token"
    token_file.write_text(OIDC_TOKEN + "\n", encoding="utf-8")
    world.server.web_tokens.add(OIDC_TOKEN)
    env = world.env(
        TENCENTCLOUD_ASSUME_ROLE_WEB_IDENTITY_TOKEN_FILE=str(token_file),
        TENCENTCLOUD_ASSUME_ROLE_ARN=ROLE,
        TENCENTCLOUD_ASSUME_ROLE_SESSION_NAME="gha-123",
    )
    provider = world.resolve(env)
    assert "OIDC" in provider.source and OIDC_TOKEN not in provider.source
    with world.client(provider) as client:
        assert len(client.describe_instances(["ins-00000001"])) == 1
    oidc = world.server.seen[0]
    assert oidc.action == "AssumeRoleWithWebIdentity" and oidc.headers["authorization"] == "SKIP"
    assert "x-tc-token" not in oidc.headers
    assert oidc.body == {
        "ProviderId": "OIDC",
        "WebIdentityToken": OIDC_TOKEN,
        "RoleArn": ROLE,
        "RoleSessionName": "gha-123",
        "DurationSeconds": 7200,
    }
    # The file is read again at renewal (CI runners rotate it).
    world.server.web_tokens = {"rotated-token"}
    token_file.write_text("rotated-token", encoding="utf-8")
    world.time.sleep(7200)
    provider.get()
    assert world.server.seen[-1].body["WebIdentityToken"] == "rotated-token"


def test_a_refused_oidc_token_is_not_echoed(world: World) -> None:
    env = world.env(TENCENTCLOUD_ASSUME_ROLE_WEB_IDENTITY_TOKEN=OIDC_TOKEN, TENCENTCLOUD_ASSUME_ROLE_ARN=ROLE)
    with pytest.raises(ApiError, match="WebIdentityTokenError") as info:
        world.resolve(env).get()
    assert "OIDC identity provider OIDC" in (info.value.hint or "")
    _no_secret(info.value)


# --------------------------------------------------------------------------- instance role


def test_cvm_instance_role_from_a_local_metadata_service(world: World) -> None:
    world.server.add_secret("AKIDinstancerole000000", "role-key", token="session-token-secret")
    expires = int(world.time.now) + 3600
    world.server.role_credentials["cvmkeys-role"] = (
        "AKIDinstancerole000000",
        "role-key",
        "session-token-secret",
        expires,
    )
    env = world.env(
        TENCENTCLOUD_CAM_ROLE_NAME="cvmkeys-role", TENCENTCLOUD_METADATA_ENDPOINT="http://127.0.0.1:9"
    )
    provider = world.resolve(env)
    with world.client(provider) as client:
        client.describe_instances(["ins-00000001"])
    assert world.server.metadata_gets == ["/latest/meta-data/cam/security-credentials/cvmkeys-role"]
    assert world.server.seen[-1].headers["x-tc-token"] == "session-token-secret"
    # A profile of type cvm-role asks the service which role the instance has.
    world.profile("default", {"type": "cvm-role"})
    provider = world.resolve(world.env(TENCENTCLOUD_METADATA_ENDPOINT="http://127.0.0.1:9"))
    assert provider.get().secret_id == "AKIDinstancerole000000"
    assert world.server.metadata_gets[-2:] == [
        "/latest/meta-data/cam/security-credentials/",
        "/latest/meta-data/cam/security-credentials/cvmkeys-role",
    ]


def test_an_unknown_instance_role_is_a_clear_error(world: World) -> None:
    env = world.env(TENCENTCLOUD_CAM_ROLE_NAME="nope", TENCENTCLOUD_METADATA_ENDPOINT="http://127.0.0.1:9")
    with pytest.raises(ConfigError, match="no CAM role"):
        world.resolve(env).get()
    with pytest.raises(ConfigError, match="plain http"):
        world.resolve(
            world.env(TENCENTCLOUD_CAM_ROLE_NAME="r", TENCENTCLOUD_METADATA_ENDPOINT="http://example.com")
        ).get()


# --------------------------------------------------------------------------- who am I


def test_get_caller_identity_says_who_it_ran_as(world: World) -> None:
    sts = StsClient(
        endpoint="https://sts.tencentcloudapi.com/",
        transport=world.server.transport(),
        clock=world.time.clock,
    )
    me = sts.get_caller_identity(StaticProvider(Credentials(BASE_ID, BASE_KEY)))
    assert me.account_id == ACCOUNT and me.arn.startswith("qcs::cam::uin/")
    role = world.resolve(world.role_env(TENCENTCLOUD_ASSUME_ROLE_SESSION_NAME="s"))
    assumed = sts.get_caller_identity(role)
    assert assumed.type == "CAMRole" and "assumed-role/cvmkeys-apply/s" in assumed.arn


# --------------------------------------------------------------------------- set but unusable


@pytest.mark.parametrize(
    ("variables", "message"),
    [
        ({"TENCENTCLOUD_ASSUME_ROLE_SESSION_NAME": "s"}, "TENCENTCLOUD_ASSUME_ROLE_ARN is not"),
        ({"TENCENTCLOUD_ASSUME_ROLE_EXTERNAL_ID": "e"}, "TENCENTCLOUD_ASSUME_ROLE_ARN is not"),
        (
            {"TENCENTCLOUD_ASSUME_ROLE_PROVIDER_ID": "OIDC"},
            "neither TENCENTCLOUD_ASSUME_ROLE_WEB_IDENTITY_TOKEN",
        ),
        ({"TENCENTCLOUD_ASSUME_ROLE_WEB_IDENTITY_TOKEN": OIDC_TOKEN}, "TENCENTCLOUD_ASSUME_ROLE_ARN is not"),
        (
            {
                "TENCENTCLOUD_ASSUME_ROLE_WEB_IDENTITY_TOKEN": OIDC_TOKEN,
                "TENCENTCLOUD_ASSUME_ROLE_ARN": ROLE,
                "TENCENTCLOUD_SECRET_ID": BASE_ID,
                "TENCENTCLOUD_SECRET_KEY": BASE_KEY,
            },
            "not clear which identity",
        ),
        (
            {
                "TENCENTCLOUD_ASSUME_ROLE_WEB_IDENTITY_TOKEN": OIDC_TOKEN,
                "TENCENTCLOUD_ASSUME_ROLE_WEB_IDENTITY_TOKEN_FILE": "/x",
            },
            "set one of them",
        ),
        (
            {
                "TENCENTCLOUD_ASSUME_ROLE_WEB_IDENTITY_TOKEN_FILE": "/no/such/token",
                "TENCENTCLOUD_ASSUME_ROLE_ARN": ROLE,
            },
            "cannot read /no/such/token",
        ),
        (
            {
                "TENCENTCLOUD_CAM_ROLE_NAME": "r",
                "TENCENTCLOUD_SECRET_ID": BASE_ID,
                "TENCENTCLOUD_SECRET_KEY": BASE_KEY,
            },
            "not clear which identity",
        ),
        (
            {
                "TENCENTCLOUD_ASSUME_ROLE_ARN": "arn:aws:iam::1:role/x",
                "TENCENTCLOUD_SECRET_ID": BASE_ID,
                "TENCENTCLOUD_SECRET_KEY": BASE_KEY,
            },
            "not a CAM role ARN",
        ),
        (
            {
                "TENCENTCLOUD_ASSUME_ROLE_ARN": ROLE,
                "TENCENTCLOUD_ASSUME_ROLE_SESSION_DURATION": "two hours",
                "TENCENTCLOUD_SECRET_ID": BASE_ID,
                "TENCENTCLOUD_SECRET_KEY": BASE_KEY,
            },
            "whole number of seconds",
        ),
        (
            {
                "TENCENTCLOUD_ASSUME_ROLE_ARN": ROLE,
                "TENCENTCLOUD_ASSUME_ROLE_SESSION_DURATION": "50000",
                "TENCENTCLOUD_SECRET_ID": BASE_ID,
                "TENCENTCLOUD_SECRET_KEY": BASE_KEY,
            },
            "between 1 and 43200",
        ),
        (
            {"TENCENTCLOUD_SECURITY_TOKEN": "session-token-secret"},
            "TENCENTCLOUD_SECRET_ID and TENCENTCLOUD_SECRET_KEY",
        ),
        ({"TENCENTCLOUD_CAM_ROLE_NAME": "r", "TENCENTCLOUD_PROFILE": "ops"}, "not clear which identity"),
        ({"TENCENTCLOUD_ASSUME_ROLE_ARN": ROLE}, "no API credentials found"),
    ],
)
def test_set_but_unusable_is_an_error_naming_the_variable(
    world: World, variables: dict[str, str], message: str
) -> None:
    with pytest.raises(ConfigError) as info:
        world.resolve(world.env(**variables))
    assert message in f"{info.value.message} {info.value.hint}"
    _no_secret(info.value)
    assert world.server.seen == []  # refused before any call


def test_the_2_0_client_refuses_every_temporary_source(world: World, tmp_path: Path) -> None:
    cases = [
        world.env(
            TENCENTCLOUD_SECRET_ID=BASE_ID,
            TENCENTCLOUD_SECRET_KEY=BASE_KEY,
            TENCENTCLOUD_SECURITY_TOKEN="session-token-secret",
        ),
        world.role_env(),
        world.env(TENCENTCLOUD_CAM_ROLE_NAME="r"),
    ]
    for environ in cases:
        with pytest.raises(ConfigError, match="temporary credentials") as info:
            load_credentials(environ)
        assert "3.0" in (info.value.hint or "")
        _no_secret(info.value)
    assert (
        load_credentials(
            world.env(TENCENTCLOUD_SECRET_ID=BASE_ID, TENCENTCLOUD_SECRET_KEY=BASE_KEY)
        ).secret_id
        == BASE_ID
    )
    assert world.server.seen == []


def test_no_secret_in_debug_logs_of_a_whole_oidc_and_role_flow(
    world: World, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    world.server.web_tokens.add(OIDC_TOKEN)
    env = world.env(TENCENTCLOUD_ASSUME_ROLE_WEB_IDENTITY_TOKEN=OIDC_TOKEN, TENCENTCLOUD_ASSUME_ROLE_ARN=ROLE)
    with caplog.at_level(logging.DEBUG):
        provider = world.resolve(env)
        with world.client(provider) as client:
            client.describe_instances(["ins-00000001"])
            world.server.script("DescribeInstances", "AuthFailure.TokenFailure")
            with pytest.raises(ApiError) as info:
                client.describe_instances(["ins-00000001"])
    logged = caplog.text + repr(provider) + repr(client) + str(info.value)
    assert "DescribeInstances" in caplog.text  # the attempts were logged
    for secret in (*SECRETS, "tmp-key-2", "tmp-token-2"):
        assert secret not in logged


def _tccli_login(world: World, expires_in: int) -> None:
    """A tccli SSO login in the default profile, whose credentials expire ``expires_in`` s from now."""
    world.profile(
        "default",
        {
            "type": "sso",
            "secretId": "AKIDsso000000000000000",
            "secretKey": "k",
            "token": "session-token-secret",
            "expiresAt": int(world.time.now) + expires_in,
        },
    )


def test_expired_tccli_login_credentials_are_refused(world: World) -> None:
    _tccli_login(world, -10)
    with pytest.raises(ConfigError, match="expired") as info:
        world.resolve(world.env())
    _no_secret(info.value)
    _tccli_login(world, 600)
    assert world.resolve(world.env()).get().token == "session-token-secret"


def test_concurrent_attempts_share_one_renewal(world: World) -> None:
    from concurrent.futures import ThreadPoolExecutor

    env = world.role_env()
    provider = world.resolve(env)
    with ThreadPoolExecutor(8) as pool:
        ids = set(pool.map(lambda _: provider.get().secret_id, range(32)))
    assert len(ids) == 1 and provider.fetches == 1
    assert world.server.actions() == ["AssumeRole"]


def test_caller_identity_helper(world: World) -> None:
    from reconciler.cloud.sts import caller_identity

    provider = world.resolve(world.env(TENCENTCLOUD_SECRET_ID=BASE_ID, TENCENTCLOUD_SECRET_KEY=BASE_KEY))
    me = caller_identity(provider, world.sts(), clock=world.time.clock)
    assert (me.account_id, me.type) == (ACCOUNT, "CAMUser")
    assert (
        world.server.seen[-1].headers["x-tc-region"] and world.server.seen[-1].action == "GetCallerIdentity"
    )


# --------------------------------------------------------------------------- TKE pod identity


def _tke_env(world: World, token_file: Path, **more: str) -> dict[str, str]:
    """What TKE's pod identity webhook injects (and ``more``)."""
    token_file.write_text(OIDC_TOKEN, encoding="utf-8")
    world.server.web_tokens.add(OIDC_TOKEN)
    world.server.oidc_providers.add("tke-cls-abc123")  # the cluster's identity provider
    injected = {
        "TKE_ROLE_ARN": ROLE,
        "TKE_WEB_IDENTITY_TOKEN_FILE": str(token_file),
        "TKE_PROVIDER_ID": "tke-cls-abc123",
        "TKE_REGION": "ap-shanghai",
    }
    return world.env(**{**injected, **more})


def test_a_tke_pod_identity_is_used_when_nothing_else_is_there(world: World, tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    provider = world.resolve(_tke_env(world, token_file))
    assert "TKE pod identity" in provider.source and OIDC_TOKEN not in provider.source
    with world.client(provider) as client:
        assert len(client.describe_instances(["ins-00000001"])) == 1
    oidc = world.server.seen[0]
    assert oidc.action == "AssumeRoleWithWebIdentity" and oidc.headers["authorization"] == "SKIP"
    assert oidc.headers["x-tc-region"] == "ap-shanghai"  # TKE_REGION
    assert oidc.body["ProviderId"] == "tke-cls-abc123" and oidc.body["RoleArn"] == ROLE
    assert oidc.body["WebIdentityToken"] == OIDC_TOKEN
    # TKE rotates the projected token: the file is read again at renewal.
    world.server.web_tokens = {"rotated-token"}
    token_file.write_text("rotated-token", encoding="utf-8")
    world.time.sleep(7200)
    provider.get()
    assert world.server.seen[-1].body["WebIdentityToken"] == "rotated-token"


def test_a_tke_pod_identity_is_the_last_resort_and_can_sign_a_role(world: World, tmp_path: Path) -> None:
    """The webhook's variables are not the user's choice: keys set in the pod win, as in
    Tencent's SDK; a role of TENCENTCLOUD_ASSUME_ROLE_ARN is assumed with the pod's identity."""
    keys = {"TENCENTCLOUD_SECRET_ID": BASE_ID, "TENCENTCLOUD_SECRET_KEY": BASE_KEY}
    assert isinstance(world.resolve(_tke_env(world, tmp_path / "token", **keys)), StaticProvider)
    other = f"qcs::cam::uin/{ACCOUNT}:roleName/cvmkeys-plan"
    chained = world.resolve(_tke_env(world, tmp_path / "token", TENCENTCLOUD_ASSUME_ROLE_ARN=other))
    assert chained.source.startswith(f"role {other}") and "assumed with role" in chained.source
    assert "TKE pod identity" in chained.source


@pytest.mark.parametrize(
    ("drop", "message"),
    [
        ("TKE_ROLE_ARN", "TKE_ROLE_ARN not"),
        ("TKE_WEB_IDENTITY_TOKEN_FILE", "TKE_WEB_IDENTITY_TOKEN_FILE not"),
        ("TKE_PROVIDER_ID", "TKE_PROVIDER_ID not"),
    ],
)
def test_a_partial_tke_pod_identity_names_what_is_missing(
    world: World, tmp_path: Path, drop: str, message: str
) -> None:
    env = _tke_env(world, tmp_path / "token")
    del env[drop]
    with pytest.raises(ConfigError, match=message) as caught:
        world.resolve(env)
    _no_secret(caught.value)


def test_a_tke_token_file_that_is_not_there_is_an_error_before_any_call(world: World, tmp_path: Path) -> None:
    env = _tke_env(world, tmp_path / "token", TKE_WEB_IDENTITY_TOKEN_FILE=str(tmp_path / "gone"))
    with pytest.raises(ConfigError, match="TKE_WEB_IDENTITY_TOKEN_FILE: cannot read"):
        world.resolve(env)
    assert world.server.seen == []


@pytest.mark.parametrize("region", ["ap-广州", "bad region", "ap-guangzhou\r\nX-Evil: 1"])
def test_a_tke_region_that_is_not_one_is_an_error_before_any_call(
    world: World, tmp_path: Path, region: str
) -> None:
    with pytest.raises(ConfigError, match="TKE_REGION"):
        world.resolve(_tke_env(world, tmp_path / "token", TKE_REGION=region))
    assert world.server.seen == []
