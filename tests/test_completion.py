"""Shell completion of ``--profile`` through Typer's own completion machinery (the environment
variables a shell's completion script sets): the tccli profiles, wherever tccli keeps them."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from reconciler.cli import app


def _complete(words: str, env: dict[str, str]) -> list[str]:
    """What bash completion offers for the last word of ``words``."""
    parts = words.split(" ")
    result = CliRunner().invoke(
        app,
        [],
        prog_name="cvmkeys",
        env={
            "_CVMKEYS_COMPLETE": "complete_bash",
            "COMP_WORDS": words,
            "COMP_CWORD": str(len(parts) - 1),
            **env,
        },
    )
    assert result.exit_code == 0, result.output
    return result.stdout.split()


def _profiles(folder: Path, *names: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        (folder / f"{name}.credential").write_text("{}", encoding="utf-8")
    (folder / "prod.configure").write_text("{}", encoding="utf-8")  # not a credential file
    return folder


@pytest.mark.parametrize("command", ["plan", "apply", "import"])
def test_profile_names_from_the_shared_credentials_dir(tmp_path: Path, command: str) -> None:
    folder = _profiles(tmp_path / "creds", "default", "prod", "prod-readonly")
    env = {"TENCENTCLOUD_SHARED_CREDENTIALS_DIR": str(folder), "HOME": str(tmp_path / "nohome")}
    assert _complete(f"cvmkeys {command} --profile ", env) == ["default", "prod", "prod-readonly"]
    assert _complete(f"cvmkeys {command} --profile pr", env) == ["prod", "prod-readonly"]


def test_profile_names_from_the_home_tccli_folder(tmp_path: Path) -> None:
    _profiles(tmp_path / ".tccli", "default", "staging")
    env = {"HOME": str(tmp_path)}
    assert _complete("cvmkeys plan --profile ", env) == ["default", "staging"]
    assert _complete("cvmkeys plan --profile st", env) == ["staging"]


def test_no_profiles_and_a_bad_folder_offer_nothing(tmp_path: Path) -> None:
    assert _complete("cvmkeys plan --profile ", {"HOME": str(tmp_path)}) == []
    env = {"TENCENTCLOUD_SHARED_CREDENTIALS_DIR": str(tmp_path / "missing"), "HOME": str(tmp_path)}
    assert _complete("cvmkeys plan --profile ", env) == []
