"""The command line as a newcomer meets it: an example in every command's help, ``--version``,
shell completion, logging levels that never show a secret, and errors as one line with a hint
(a traceback only with ``--debug``)."""

from __future__ import annotations

import shlex
import shutil
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import pytest
import typer
from support import CLEAN_ENV
from typer.testing import CliRunner

from reconciler import __version__, cli
from reconciler.cli import app

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
FLEET_SECRET_ID = "AKIDEMULATOR0000000000000000000000"
FLEET_SECRET_KEY = "emulator-secret-key"
runner = CliRunner()


def invoke(*args: str) -> tuple[int, str, str]:
    result = runner.invoke(app, list(args), env=CLEAN_ENV)
    return result.exit_code, result.stdout, result.stderr


def _command_paths() -> list[tuple[str, ...]]:
    """Every command and group of the real app, found by walking it (nothing hard-coded)."""
    root = typer.main.get_command(app)
    paths: list[tuple[str, ...]] = [()]

    def walk(command: object, path: tuple[str, ...]) -> None:
        for name, sub in sorted(getattr(command, "commands", {}).items()):
            paths.append((*path, name))
            walk(sub, (*path, name))

    walk(root, ())
    return paths


def test_the_walk_finds_the_commands() -> None:
    names = {" ".join(path) for path in _command_paths()}
    assert {"", "validate", "plan", "show", "apply", "import", "emulator", "emulator serve"} <= names


@pytest.mark.parametrize("path", _command_paths(), ids=lambda p: " ".join(p) or "cvmkeys")
def test_every_command_help_has_an_example(path: tuple[str, ...]) -> None:
    code, stdout, _ = invoke(*path, "--help")
    assert code == 0
    assert "Example" in stdout, f"cvmkeys {' '.join(path)} --help has no example"
    # The example is a command that starts with the program name.
    example = stdout[stdout.index("Example") :]
    assert "cvmkeys" in example.split("\n", 2)[0] + example.split("\n", 2)[1]


def test_version() -> None:
    code, stdout, _ = invoke("--version")
    assert code == 0
    assert stdout == f"cvmkeys {__version__}\n"
    assert __version__ == version("cvmkeys")


def test_shell_completion_is_offered(monkeypatch: pytest.MonkeyPatch) -> None:
    # Without this, Typer asks shellingham for the shell that started the process, and
    # `--show-completion` becomes a flag for that shell: under a runner whose parent is not a
    # shell (CI, a detached job: the parent is init) detection fails and the command exits 1.
    # Typer reads the variable when it builds the command, so it is set here, not in ``env``.
    monkeypatch.setenv("_TYPER_COMPLETE_TEST_DISABLE_SHELL_DETECTION", "1")
    code, stdout, _ = invoke("--help")
    assert code == 0
    assert "--install-completion" in stdout and "--show-completion" in stdout
    code, stdout, _ = invoke("--show-completion", "bash")
    assert code == 0
    assert "_CVMKEYS_COMPLETE" in stdout and "complete " in stdout


# --------------------------------------------------------------------------- errors


def test_error_is_one_red_line_with_a_hint_and_no_traceback(tmp_path: Path) -> None:
    fleet = tmp_path / "fleet.yaml"
    shutil.copy(EXAMPLES / "fleet.yaml", fleet)
    args = ("import", "--region", "gz", "--emulator", str(fleet))  # neither --keys nor --all
    code, stdout, stderr = invoke(*args)
    assert code == 1 and stdout == ""
    assert stderr.splitlines() == [
        "Error: say which keys to import: --keys skey-...,skey-... or --all",
        "hint: scope account always imports every key (--all may be left out)",
    ]
    code, _, stderr = invoke("--debug", *args)
    assert code == 1
    assert "Traceback" in stderr and "ConfigError" in stderr
    assert "Error: say which keys to import" in stderr


def test_a_file_that_cannot_be_written_is_not_a_traceback(tmp_path: Path) -> None:
    fleet = tmp_path / "fleet.yaml"
    shutil.copy(EXAMPLES / "fleet.yaml", fleet)
    out = tmp_path / "missing" / "plan.json"
    code, _, stderr = invoke(
        "plan", str(EXAMPLES / "bindings.yaml"), "--emulator", str(fleet), "--out", str(out)
    )
    assert code == 1
    assert f"Error: cannot write {out}: No such file or directory" in stderr
    assert "Traceback" not in stderr
    assert not list(out.parent.parent.glob("**/.plan.json.tmp-*"))


def test_unexpected_exceptions_are_one_line_unless_debug(capsys: pytest.CaptureFixture[str]) -> None:
    for debug in (False, True):
        cli._options.debug = debug
        try:
            with pytest.raises(typer.Exit) as info, cli._reporting_errors():
                raise LookupError("boom")
        finally:
            cli._options.debug = False
        assert info.value.exit_code == 1
        err = capsys.readouterr().err
        assert "Error: internal error (LookupError): this is a bug in cvmkeys" in err
        assert ("Traceback" in err) is debug
        assert ("run again with --debug" in err) is not debug


def test_exit_codes_pass_through_the_error_reporter() -> None:
    with pytest.raises(typer.Exit) as info, cli._reporting_errors():
        raise typer.Exit(2)
    assert info.value.exit_code == 2


def test_a_bad_log_level_is_a_usage_error() -> None:
    code, _, stderr = invoke("--log-level", "loud", "validate", str(EXAMPLES))
    assert code == 1  # usage errors exit 1: 2 means "changes present" under --detailed-exitcode
    assert "Invalid value for --log-level" in stderr and "Traceback" not in stderr


# --------------------------------------------------------------------------- logging


@pytest.mark.parametrize(
    ("flags", "info", "debug"),
    [
        ((), False, False),
        (("-v",), True, False),
        (("-vv",), True, True),
        (("--log-level", "debug"), True, True),
    ],
)
def test_log_levels_work_and_never_show_a_secret(
    tmp_path: Path, flags: tuple[str, ...], info: bool, debug: bool
) -> None:
    """A real process, so the logging set-up is the one users get."""
    fleet = tmp_path / "fleet.yaml"
    shutil.copy(EXAMPLES / "fleet.yaml", fleet)
    env = {"PATH": "", "NO_COLOR": "1", "HOME": str(tmp_path)}
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "reconciler",
            *flags,
            "import",
            "--region",
            "gz",
            "--all",
            "--emulator",
            str(fleet),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert ("INFO reconciler.connect: credentials: SecretId AKID...0000" in done.stderr) is info
    # 3.0 by default: its calls are logged by the 3.0 call layer.
    assert ("DEBUG reconciler.cloud.tc3call: DescribeKeyPairs attempt 1/5" in done.stderr) is debug
    for secret in (FLEET_SECRET_KEY, FLEET_SECRET_ID, "Signature=", "SecretId="):
        assert secret not in done.stderr + done.stdout


# --------------------------------------------------------------------------- the README


def _readme_block(after: str) -> list[str]:
    """The lines of the first ```sh block after the heading ``after`` in README.md."""
    text = (Path(__file__).resolve().parent.parent / "README.md").read_text(encoding="utf-8")
    section = text[text.index(after) :]
    start = section.index("```sh\n") + len("```sh\n")
    return section[start : section.index("```", start)].strip().splitlines()


def test_readme_tour_runs_as_written(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every command of the 60-second tour, in order, with /tmp/ moved into a test folder and
    the emulator's live state too; the example fleet, a fixture, is byte-identical after it."""
    monkeypatch.chdir(EXAMPLES.parent)
    lines = _readme_block("## A 60-second tour")
    assert lines[0] == "cvmkeys emulator reset --fleet examples/fleet.yaml"
    fixture = (EXAMPLES / "fleet.yaml").read_bytes()
    env: dict[str, str | None] = {**CLEAN_ENV, "CVMKEYS_EMULATOR_STATE": str(tmp_path / "state.sqlite")}
    outputs = []
    for line in lines:
        words = shlex.split(line.replace("/tmp/", f"{tmp_path}/"))
        assert words[0] == "cvmkeys", line
        result = runner.invoke(app, words[1:], env=env)
        allowed = (0, 3) if words[1] == "apply" else (0,)  # 3: blocked unbinds remain, as the README says
        assert result.exit_code in allowed, f"{line}\n{result.stdout}{result.stderr}"
        assert "Traceback" not in result.stdout + result.stderr
        outputs.append(result.stdout)
    assert "Plan: 3 to unbind, 1 blocked, 1 protected, 1 unchangeable (no API can unbind them)." in outputs[2]
    assert "Apply complete: 3 done, 0 failed, 1 blocked, 1 protected, 1 unchangeable." in outputs[4]
    assert "Plan: 0 to unbind, 1 blocked, 1 protected, 1 unchangeable (no API can unbind them)." in outputs[5]
    assert "No changes. The live bindings match the file." in outputs[7]
    assert (EXAMPLES / "fleet.yaml").read_bytes() == fixture
    # From the reset, the same tour gives the same plan again.
    assert runner.invoke(app, shlex.split(lines[0])[1:], env=env).exit_code == 0
    replan = runner.invoke(app, shlex.split(lines[2].replace("/tmp/", f"{tmp_path}/"))[1:], env=env)
    assert "Plan: 3 to unbind, 1 blocked, 1 protected, 1 unchangeable" in replan.stdout
