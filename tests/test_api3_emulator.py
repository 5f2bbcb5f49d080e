"""The 3.0 client against the emulator's 3.0 face (``reconciler.emulator.api3``, served at ``/`` by
the same app as 2.0), in-process: reads of the example fleet, an allowed disassociation and the
operation it leaves behind, the documented refusals, authentication failures, and STS.

Skipped until the emulator's 3.0 face lands (helper H2b builds it in parallel); written against
its contract (CONTRACT.md "Emulator"; codes as in cvm-api-3.0.md).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

pytest.importorskip("reconciler.emulator.api3")

from reconciler.cloud.api3 import Api3Client
from reconciler.cloud.credentials import Credentials, StaticProvider
from reconciler.cloud.sts import StsClient
from reconciler.emulator.app import EmulatorApp, transport
from reconciler.emulator.state import FleetState
from reconciler.errors import ApiError, ApiErrorKind
from reconciler.model import InstanceState

EXAMPLE_FLEET = Path(__file__).resolve().parent.parent / "examples" / "fleet.yaml"
SECRET_ID = "AKIDEMULATOR0000000000000000000000"
SECRET_KEY = "emulator-secret-key"
URL = "http://localhost/"


@pytest.fixture
def app(tmp_path: Path) -> EmulatorApp:
    fleet = tmp_path / "fleet.yaml"
    shutil.copy(EXAMPLE_FLEET, fleet)
    return EmulatorApp(FleetState.from_file(fleet, persist=False))


def _client(app: EmulatorApp, key: str = SECRET_KEY, secret_id: str = SECRET_ID) -> Api3Client:
    return Api3Client(
        Credentials(secret_id, key), "ap-guangzhou", endpoint=URL, transport=transport(app), rate_limit=None
    )


def test_reads_of_the_example_fleet(app: EmulatorApp) -> None:
    with _client(app) as client:
        keys = {k.key_id: k for k in client.describe_key_pairs()}
        assert set(keys["skey-3glfot13"].bound_instance_ids) == {
            "ins-1a2b3c4d",
            "ins-5e6f7a8b",
            "ins-0c0d0e0f",
        }
        found = {
            i.instance_id: i
            for i in client.describe_instances(["ins-1a2b3c4d", "ins-9c8d7e6f", "ins-7w7w7w7w"])
        }
    assert (
        found["ins-1a2b3c4d"].state is InstanceState.STOPPED and found["ins-1a2b3c4d"].api_state == "STOPPED"
    )
    assert found["ins-9c8d7e6f"].state is InstanceState.RUNNING
    assert found["ins-7w7w7w7w"].is_windows


def test_an_allowed_disassociation_and_its_operation(app: EmulatorApp) -> None:
    with _client(app) as client:
        result = client.unbind(["skey-3glfot13", "skey-0u0u0u0u"], ["ins-5e6f7a8b"])
        assert result.request_id
        (after,) = client.describe_instances(["ins-5e6f7a8b"])
        keys = {k.key_id: k for k in client.describe_key_pairs(["skey-3glfot13", "skey-0u0u0u0u"])}
    assert after.latest_operation_request_id == result.request_id
    assert after.latest_operation_state in ("OPERATING", "SUCCESS")
    if after.latest_operation_state == "SUCCESS":
        assert all("ins-5e6f7a8b" not in k.bound_instance_ids for k in keys.values())


@pytest.mark.parametrize(
    ("instance", "code", "kind"),
    [
        ("ins-9c8d7e6f", "UnsupportedOperation.InstanceStateRunning", ApiErrorKind.BLOCKED),
        ("ins-7w7w7w7w", "UnsupportedOperation.InstanceOsWindows", ApiErrorKind.BLOCKED),
        ("ins-00000000", "InvalidInstanceId.NotFound", ApiErrorKind.NOT_FOUND),
    ],
)
def test_refusals_with_their_documented_codes(
    app: EmulatorApp, instance: str, code: str, kind: ApiErrorKind
) -> None:
    with _client(app) as client, pytest.raises(ApiError) as info:
        client.unbind(["skey-8x9y0z12"], [instance])
    assert info.value.code == code and info.value.kind is kind and info.value.request_id


def test_authentication_failures(app: EmulatorApp) -> None:
    with _client(app, key="wrong-key") as client, pytest.raises(ApiError) as info:
        client.describe_instances(["ins-1a2b3c4d"])
    assert info.value.code == "AuthFailure.SignatureFailure" and info.value.kind is ApiErrorKind.AUTH
    with _client(app, secret_id="AKIDnobody000000000000") as client, pytest.raises(ApiError) as info:
        client.describe_instances(["ins-1a2b3c4d"])
    assert info.value.code == "AuthFailure.SecretIdNotFound"


def test_sts_caller_identity_and_an_assumed_role(app: EmulatorApp) -> None:
    sts = StsClient(endpoint=URL, transport=transport(app))
    base = StaticProvider(Credentials(SECRET_ID, SECRET_KEY))
    me = sts.get_caller_identity(base)
    assert me.account_id and me.arn
    role = f"qcs::cam::uin/{me.account_id}:roleName/cvmkeys-apply"
    temporary = sts.assume_role(base, role_arn=role, session_name="t1", duration_s=900)
    assert temporary.temporary
    with Api3Client(
        temporary, "ap-guangzhou", endpoint=URL, transport=transport(app), rate_limit=None
    ) as client:
        assert client.describe_instances(["ins-1a2b3c4d"])
    without_token = Credentials(temporary.secret_id, temporary.secret_key)
    with Api3Client(
        without_token, "ap-guangzhou", endpoint=URL, transport=transport(app), rate_limit=None
    ) as c, pytest.raises(ApiError) as info:
        c.describe_instances(["ins-1a2b3c4d"])
    assert info.value.kind is ApiErrorKind.AUTH
