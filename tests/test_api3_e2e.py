"""CVM API 3.0 end to end, as issue 13's acceptance asks: ``cvmkeys plan``, ``apply``, ``plan``
converge over 3.0 against ``cvmkeys emulator serve`` (a separate process, a real socket, every
TC3 signature verified by the emulator), with long-lived keys, with temporary credentials in
Terraform's variable names (issued by the emulator's STS), and with an assumed role
(``TENCENTCLOUD_ASSUME_ROLE_ARN``); the plan records who it ran as, and an ``account:`` in the
desired file makes plan and apply refuse any other account.

Everything here is over real HTTP: subprocesses of the real CLI against the served emulator, or the
in-process emulator through the CLI.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from support import live_state, run_cli, serve_fleet, stop_served

from reconciler.cloud.credentials import Credentials, StaticProvider
from reconciler.cloud.sts import StsClient
from reconciler.core.document import canonical_digest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
ACCOUNT = "100000000001"  # the example fleet's (the emulator's default)


@dataclass
class Served:
    base: str  # http://127.0.0.1:PORT  (3.0 and STS at "/", 2.0 at "/v2/index.php")
    secret_id: str
    secret_key: str
    fleet: Path
    desired: Path

    @property
    def api3(self) -> str:
        return self.base + "/"

    @property
    def api2(self) -> str:
        return self.base + "/v2/index.php"

    def env(self, **extra: str) -> dict[str, str]:
        """A clean environment: no credentials but those given."""
        keep = {k: v for k, v in os.environ.items() if not k.startswith(("TENCENTCLOUD_", "TCCLI_"))}
        return {**keep, "NO_COLOR": "1", "HOME": str(self.fleet.parent), **extra}

    def keys(self) -> dict[str, str]:
        return {"TENCENTCLOUD_SECRET_ID": self.secret_id, "TENCENTCLOUD_SECRET_KEY": self.secret_key}

    def cvmkeys(self, *args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(
            [sys.executable, "-m", "reconciler", *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert "Traceback" not in done.stderr, done.stderr
        return done

    def temporary(self, role: str = "cvmkeys-ci") -> Credentials:
        """Temporary credentials from the emulator's STS (AssumeRole with the fleet's keys)."""
        sts = StsClient(endpoint=self.api3)
        return sts.assume_role(
            StaticProvider(Credentials(self.secret_id, self.secret_key)),
            role_arn=f"qcs::cam::uin/{ACCOUNT}:roleName/{role}",
            session_name="acceptance",
            duration_s=900,
        )


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Served]:
    """``cvmkeys emulator serve`` on a copy of the example fleet, in its own process."""
    fleet = tmp_path / "fleet.yaml"
    shutil.copy(EXAMPLES / "fleet.yaml", fleet)
    desired = tmp_path / "bindings.yaml"
    shutil.copy(EXAMPLES / "bindings.yaml", desired)
    process, em = serve_fleet(fleet)
    try:
        base = em.url.removesuffix("/v2/index.php")
        yield Served(base, em.secret_id, em.secret_key, fleet, desired)
    finally:
        stop_served(process)


def _ready(plan_json: str) -> list[dict[str, object]]:
    return [c for c in json.loads(plan_json)["changes"] if c["status"] == "ready"]


def _plan_apply_plan(
    served: Served, env: dict[str, str], endpoint: str, tmp_path: Path
) -> dict[str, object]:
    """plan --out, apply it, plan again: the second plan has nothing left to do."""
    plan_file = tmp_path / "plan.json"
    audit = tmp_path / "audit.jsonl"
    desired = str(served.desired)
    made = served.cvmkeys("plan", desired, "--endpoint", endpoint, "--out", str(plan_file), env=env)
    assert made.returncode == 0, made.stdout + made.stderr
    saved = json.loads(plan_file.read_text())
    assert _ready(plan_file.read_text())
    applied = served.cvmkeys(
        "apply", str(plan_file), "--endpoint", endpoint, "--audit-log", str(audit), env=env
    )
    assert applied.returncode == 3, applied.stdout + applied.stderr  # done; a blocked one remains
    assert "Apply complete: 3 done, 0 failed" in applied.stdout
    again = served.cvmkeys("plan", desired, "--endpoint", endpoint, "--format", "json", env=env)
    assert again.returncode == 0, again.stderr
    assert _ready(again.stdout) == []
    actions = {json.loads(line)["action"] for line in audit.read_text().splitlines()}
    saved["audit_actions"] = sorted(actions)
    return saved


def test_plan_apply_plan_converge_over_3_0_against_the_served_emulator(
    served: Served, tmp_path: Path
) -> None:
    env = served.env(**served.keys())
    saved = _plan_apply_plan(served, env, served.api3, tmp_path)
    assert saved["api"] == "3.0" and saved["endpoint"] == served.api3
    assert saved["caller"] == {"account_id": ACCOUNT, "arn": f"qcs::cam::uin/{ACCOUNT}:uin/{ACCOUNT}"}
    unbind = "DisassociateInstancesKeyPairs"
    # Every call in the audit log, STS's too (apply checks the plan's account first).
    assert saved["audit_actions"] == ["DescribeInstances", "DescribeKeyPairs", unbind, "GetCallerIdentity"]
    # The emulator verifies every TC3 signature: the same request signed with a wrong key is
    # refused with the documented code (and the hint for it), before anything is read.
    wrong = served.env(TENCENTCLOUD_SECRET_ID=served.secret_id, TENCENTCLOUD_SECRET_KEY="not-the-key")
    refused = served.cvmkeys("plan", str(served.desired), "--endpoint", served.api3, env=wrong)
    assert refused.returncode == 1 and "AuthFailure.SignatureFailure" in refused.stderr
    assert "not-the-key" not in refused.stdout + refused.stderr


def test_temporary_credentials_in_terraforms_variable_names(served: Served, tmp_path: Path) -> None:
    temporary = served.temporary()
    assert temporary.token is not None
    env = served.env(
        TENCENTCLOUD_SECRET_ID=temporary.secret_id,
        TENCENTCLOUD_SECRET_KEY=temporary.secret_key,
        TENCENTCLOUD_SECURITY_TOKEN=temporary.token,
    )
    saved = _plan_apply_plan(served, env, served.api3, tmp_path)
    assert "assumed-role" in str(saved["caller"])  # who it ran as: the role's session
    for name in ("plan.json", "audit.jsonl"):
        text = (tmp_path / name).read_text()
        assert temporary.secret_key not in text and temporary.token not in text
    # Without its token the temporary SecretId is refused, with the hint that says why.
    no_token = served.env(
        TENCENTCLOUD_SECRET_ID=temporary.secret_id, TENCENTCLOUD_SECRET_KEY=temporary.secret_key
    )
    refused = served.cvmkeys("plan", str(served.desired), "--endpoint", served.api3, env=no_token)
    assert refused.returncode == 1 and "TENCENTCLOUD_SECURITY_TOKEN" in refused.stderr, refused.stderr
    # Over 2.0 the token goes as the signed Token parameter, as Tencent's 2.0 SDK sends it.
    desired = str(served.desired)
    over2 = served.cvmkeys("plan", desired, "--endpoint", served.api2, "--format", "json", env=env)
    assert over2.returncode == 0, over2.stderr
    assert json.loads(over2.stdout)["api"] == "2.0" and _ready(over2.stdout) == []
    assert temporary.token not in over2.stdout + over2.stderr


def test_an_assumed_role_signs_the_calls(served: Served, tmp_path: Path) -> None:
    role = f"qcs::cam::uin/{ACCOUNT}:roleName/cvmkeys-apply"
    env = served.env(
        **served.keys(),
        TENCENTCLOUD_ASSUME_ROLE_ARN=role,
        TENCENTCLOUD_ASSUME_ROLE_SESSION_NAME="acceptance-apply",
    )
    saved = _plan_apply_plan(served, env, served.api3, tmp_path)
    caller = saved["caller"]
    assert isinstance(caller, dict) and caller["account_id"] == ACCOUNT
    assert "assumed-role" in caller["arn"] and caller["arn"].endswith("/acceptance-apply")
    assert "AssumeRole" in saved["audit_actions"]  # the role's credentials were fetched, and audited


# --------------------------------------------------------------------------- the account guard


def _desired_for(account: str, tmp_path: Path) -> Path:
    text = (EXAMPLES / "bindings.yaml").read_text()
    assert "\naccount:" not in text
    path = tmp_path / "bindings.yaml"
    path.write_text(text.replace("\nregion:", f'\naccount: "{account}"\nregion:', 1))
    return path


@pytest.mark.parametrize("api", ["2.0", "3.0"])
def test_an_account_in_the_desired_file_refuses_other_accounts(tmp_path: Path, api: str) -> None:
    fleet = tmp_path / "fleet.yaml"
    shutil.copy(EXAMPLES / "fleet.yaml", fleet)
    before = live_state(fleet)
    other = _desired_for("100000000002", tmp_path)
    for command, *more in (("plan",), ("apply", "--auto-approve")):
        code, out, err = run_cli(command, str(other), "--emulator", str(fleet), "--api", api, *more)
        assert code == 1, out + err
        assert "is for account 100000000002, but the credentials are of account 100000000001" in err
        assert live_state(fleet) == before
    right = _desired_for(ACCOUNT, tmp_path)
    code, out, err = run_cli("plan", str(right), "--emulator", str(fleet), "--api", api)
    assert code == 0, out + err
    assert f"as        account {ACCOUNT}" in out


def test_a_saved_plan_is_applied_only_to_the_account_it_was_made_for(tmp_path: Path) -> None:
    fleet = tmp_path / "fleet.yaml"
    shutil.copy(EXAMPLES / "fleet.yaml", fleet)
    plan_file = tmp_path / "p.json"
    desired = str(EXAMPLES / "bindings.yaml")
    assert run_cli("plan", desired, "--emulator", str(fleet), "--out", str(plan_file))[0] == 0
    data = json.loads(plan_file.read_text())
    data["caller"]["account_id"] = "100000000002"  # as if made with another account's credentials
    data["integrity"]["digest"] = canonical_digest(data)
    plan_file.write_text(json.dumps(data))
    before = live_state(fleet)
    code, _, err = run_cli("apply", str(plan_file))
    assert code == 1 and "is for account 100000000002" in err and "nothing was changed" in err
    assert live_state(fleet) == before
