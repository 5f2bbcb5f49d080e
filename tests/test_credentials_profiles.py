"""Credentials from tccli profiles (``~/.tccli/<profile>.credential``), their order against the
environment, the region default, and the errors, with a temporary HOME. The files are written
exactly as tccli 3.1 writes them (``tccli configure set secretId ... secretKey ... region ...``:
JSON indented by 2; the region under ``_sys_param`` of ``<profile>.configure``)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from support import CLEAN_ENV, run_cli

from reconciler.cloud.credentials import (
    Credentials,
    choose_profile,
    default_region,
    load_credentials,
)
from reconciler.emulator.app import EmulatorApp
from reconciler.emulator.server import serve_in_thread
from reconciler.emulator.state import FleetState
from reconciler.errors import ConfigError

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
# The example fleet's credentials (examples/fleet.yaml): the emulator accepts only these.
FLEET_ID = "AKIDEMULATOR0000000000000000000000"
FLEET_KEY = "emulator-secret-key"
ENV_ID = "AKIDfromtheenvironment00000000000000"
ENV_KEY = "environment-secret-key-0000"
PROFILE_KEY = "profile-secret-key-do-not-print"


def _write_profile(
    home: Path,
    name: str,
    credential: dict[str, object] | str | None,
    region: str | None = None,
) -> Path:
    folder = home / ".tccli"
    folder.mkdir(mode=0o700, exist_ok=True)
    path = folder / f"{name}.credential"
    if credential is not None:
        text = credential if isinstance(credential, str) else json.dumps(credential, indent=2)
        path.write_text(text, encoding="utf-8")
    if region is not None:
        configure = {
            "_sys_param": {"arrayCount": 10, "output": "json", "region": region, "warning": "off"},
            "cvm": {"endpoint": "cvm.tencentcloudapi.com", "version": "2017-03-12"},
        }
        (folder / f"{name}.configure").write_text(json.dumps(configure, indent=2), encoding="utf-8")
    return path


def _env(home: Path, **more: str) -> dict[str, str]:
    return {"HOME": str(home), **more}


def test_default_profile_is_read_when_the_environment_has_nothing(tmp_path: Path) -> None:
    path = _write_profile(tmp_path, "default", {"secretId": "AKIDdefault000000000", "secretKey": PROFILE_KEY})
    found = load_credentials(_env(tmp_path))
    assert found == Credentials("AKIDdefault000000000", PROFILE_KEY)
    assert str(path) in found.source and "'default'" in found.source
    assert PROFILE_KEY not in repr(found) and PROFILE_KEY not in found.source


def test_environment_variables_come_before_the_profile(tmp_path: Path) -> None:
    _write_profile(tmp_path, "default", {"secretId": "AKIDdefault000000000", "secretKey": PROFILE_KEY})
    env = _env(tmp_path, TENCENTCLOUD_SECRET_ID=ENV_ID, TENCENTCLOUD_SECRET_KEY=ENV_KEY)
    assert load_credentials(env) == Credentials(ENV_ID, ENV_KEY)
    # ... also before a profile named by the environment.
    _write_profile(tmp_path, "prod", {"secretId": "AKIDprod00000000000", "secretKey": PROFILE_KEY})
    assert load_credentials({**env, "TENCENTCLOUD_PROFILE": "prod"}) == Credentials(ENV_ID, ENV_KEY)


def test_profile_named_by_the_environment(tmp_path: Path) -> None:
    _write_profile(tmp_path, "prod", {"secretId": "AKIDprod00000000000", "secretKey": PROFILE_KEY})
    _write_profile(tmp_path, "test", {"secretId": "AKIDtest00000000000", "secretKey": PROFILE_KEY})
    assert load_credentials(_env(tmp_path, TENCENTCLOUD_PROFILE="prod")).secret_id == "AKIDprod00000000000"
    assert load_credentials(_env(tmp_path, TCCLI_PROFILE="test")).secret_id == "AKIDtest00000000000"
    both = _env(tmp_path, TENCENTCLOUD_PROFILE="prod", TCCLI_PROFILE="test")
    assert load_credentials(both).secret_id == "AKIDprod00000000000"
    assert choose_profile(None, both).chosen_by == "TENCENTCLOUD_PROFILE"


def test_explicit_profile_wins_over_the_environment(tmp_path: Path) -> None:
    _write_profile(tmp_path, "prod", {"secretId": "AKIDprod00000000000", "secretKey": PROFILE_KEY})
    env = _env(tmp_path, TENCENTCLOUD_SECRET_ID=ENV_ID, TENCENTCLOUD_SECRET_KEY=ENV_KEY)
    assert load_credentials(env, profile="prod").secret_id == "AKIDprod00000000000"


def test_nothing_found_names_every_place_looked_at(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_credentials(_env(tmp_path))
    message = info.value.message
    assert "no API credentials found" in message
    assert "TENCENTCLOUD_SECRET_ID / TENCENTCLOUD_SECRET_KEY: not set" in message
    assert f"{tmp_path / '.tccli' / 'default.credential'}: no such file" in message
    assert "the default" in message
    hint = info.value.hint or ""
    assert "tccli configure --profile default" in hint and "--profile NAME" in hint

    with pytest.raises(ConfigError) as info:
        load_credentials(
            _env(tmp_path, TENCENTCLOUD_SECRET_ID=ENV_ID, TENCENTCLOUD_SECRET_KEY=ENV_KEY), profile="ops"
        )
    # An explicit profile is the only place looked at: the environment is not mentioned.
    assert f"{tmp_path / '.tccli' / 'ops.credential'}: no such file" in info.value.message
    assert "from --profile" in info.value.message and "not set" not in info.value.message


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ('{"secretId": "AKIDx0000000000", "secretKey": "' + PROFILE_KEY + '"', "default.credential:1:"),
        ('["' + PROFILE_KEY + '"]', "expected a JSON object"),
        ({"secretId": "AKIDx0000000000"}, "has no secretKey"),
        ({"secretKey": PROFILE_KEY}, "has no secretId"),
        ({"secretId": "AKIDx0000000000", "secretKey": PROFILE_KEY + " \n"}, "secretKey contains whitespace"),
        ({"secretId": 12, "secretKey": PROFILE_KEY}, "secretId must be a string"),
        (
            {"type": "sso", "secretId": "AKIDx0000000000", "secretKey": PROFILE_KEY, "token": "tok"},
            "temporary credentials (type sso)",
        ),
        ({"secretId": "AKIDx0000000000", "secretKey": PROFILE_KEY, "token": "tok"}, "temporary credentials"),
        ({"type": "cvm-role"}, "type cvm-role"),
    ],
)
def test_bad_credential_files_are_clear_errors_without_the_secret(
    tmp_path: Path, content: dict[str, object] | str, message: str
) -> None:
    _write_profile(tmp_path, "default", content)
    with pytest.raises(ConfigError) as info:
        load_credentials(_env(tmp_path))
    text = f"{info.value.message} {info.value.hint}"
    assert message in text
    assert str(tmp_path / ".tccli" / "default.credential") in text
    assert PROFILE_KEY not in text


def test_a_session_token_in_the_environment_is_refused(tmp_path: Path) -> None:
    env = _env(
        tmp_path, TENCENTCLOUD_SECRET_ID=ENV_ID, TENCENTCLOUD_SECRET_KEY=ENV_KEY, TENCENTCLOUD_TOKEN="t"
    )
    with pytest.raises(ConfigError, match="TENCENTCLOUD_TOKEN is set"):
        load_credentials(env)
    # Terraform's name is honoured by the 3.0 client; the 2.0 client refuses it clearly.
    env = _env(
        tmp_path,
        TENCENTCLOUD_SECRET_ID=ENV_ID,
        TENCENTCLOUD_SECRET_KEY=ENV_KEY,
        TENCENTCLOUD_SECURITY_TOKEN="t",
    )
    with pytest.raises(ConfigError, match="TENCENTCLOUD_SECURITY_TOKEN gives temporary credentials"):
        load_credentials(env)


@pytest.mark.parametrize("name", ["../etc/passwd", "a/b", ".hidden", "", "two words", "c:evil"])
def test_profile_names_cannot_leave_the_tccli_folder(tmp_path: Path, name: str) -> None:
    with pytest.raises(ConfigError, match="invalid profile name"):
        load_credentials(_env(tmp_path), profile=name)


def test_region_default_environment_then_profile(tmp_path: Path) -> None:
    assert default_region(_env(tmp_path)) is None
    _write_profile(tmp_path, "default", None, region="ap-shanghai")
    _write_profile(tmp_path, "prod", None, region="ap-singapore")
    assert default_region(_env(tmp_path)) == "ap-shanghai"
    assert default_region(_env(tmp_path, TENCENTCLOUD_REGION="ap-beijing")) == "ap-beijing"
    assert default_region(_env(tmp_path, TENCENTCLOUD_PROFILE="prod")) == "ap-singapore"
    assert default_region(_env(tmp_path, TENCENTCLOUD_REGION="ap-beijing"), profile="prod") == "ap-singapore"
    # tccli before 3.0 kept the region at the top level of the .configure file.
    (tmp_path / ".tccli" / "old.configure").write_text('{"region": "ap-hongkong"}', encoding="utf-8")
    assert default_region(_env(tmp_path), profile="old") == "ap-hongkong"


# --------------------------------------------------------------------------- through the CLI

def _cli(home: Path, *args: str, **env: str | None) -> tuple[int, str, str]:
    return run_cli(*args, env={**CLEAN_ENV, "HOME": str(home), **env})


def test_plan_with_a_profile_against_a_served_emulator(tmp_path: Path) -> None:
    fleet = tmp_path / "fleet.yaml"
    shutil.copy(EXAMPLES / "fleet.yaml", fleet)
    _write_profile(tmp_path, "emu", {"secretId": FLEET_ID, "secretKey": FLEET_KEY})
    _write_profile(tmp_path, "wrong", {"secretId": "AKIDnotknown0000000000", "secretKey": PROFILE_KEY})
    with serve_in_thread(EmulatorApp(FleetState.from_file(fleet, persist=False))) as server:
        plan = ("plan", str(EXAMPLES / "bindings.yaml"), "--endpoint", server.url)
        code, stdout, stderr = _cli(tmp_path, *plan, "--profile", "emu")
        assert code == 0, stderr
        assert "Plan: 3 to unbind" in stdout
        # The same through TENCENTCLOUD_PROFILE.
        code, stdout, _ = _cli(tmp_path, *plan, TENCENTCLOUD_PROFILE="emu")
        assert code == 0 and "Plan: 3 to unbind" in stdout
        # A profile the emulator does not know: the API refuses it, so the profile was used.
        code, _, stderr = _cli(tmp_path, *plan, "--profile", "wrong")
        assert code == 1 and "4104" in stderr and PROFILE_KEY not in stderr
        # No credentials anywhere: one error naming the places looked at.
        code, _, stderr = _cli(tmp_path, *plan, "--profile", "absent")
        assert code == 1
        assert "absent.credential: no such file" in " ".join(stderr.split())


def test_import_takes_its_region_from_the_profile(tmp_path: Path) -> None:
    fleet = tmp_path / "fleet.yaml"
    shutil.copy(EXAMPLES / "fleet.yaml", fleet)
    _write_profile(tmp_path, "default", None, region="ap-shanghai")
    code, stdout, stderr = _cli(tmp_path, "import", "--all", "--emulator", str(fleet))
    assert code == 0, stderr
    assert "region: ap-shanghai" in stdout
