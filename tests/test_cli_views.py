"""The terminal conventions, decided in one place (``cli.views.Terminal``): colour only on a
terminal, never with ``--no-color``, a non-empty ``NO_COLOR`` or ``TERM=dumb`` (an empty
``NO_COLOR`` does not count, as no-color.org says); a progress bar only where a line can be
redrawn, plain progress lines otherwise; help without internal placeholders; global options
after the command."""

from __future__ import annotations

import io
import json
import re
from pathlib import Path

import pytest
from support import run_cli, saved_plan
from typer.testing import CliRunner

from reconciler.cli import _hoist_global_options, app
from reconciler.cli.views import Terminal
from reconciler.core.document import RESULT_FORMAT_VERSION
from reconciler.model import PLAN_FORMAT_VERSION


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize(
    ("environ", "no_color", "tty", "color", "live"),
    [
        ({"TERM": "xterm"}, False, True, True, True),
        ({"TERM": "xterm", "NO_COLOR": ""}, False, True, True, True),  # empty: not set
        ({"TERM": "xterm", "NO_COLOR": "1"}, False, True, False, True),
        ({"TERM": "xterm"}, True, True, False, True),
        ({"TERM": "dumb"}, False, True, False, False),
        ({"TERM": "xterm"}, False, False, False, False),
    ],
)
def test_colour_and_progress_are_decided_once(
    environ: dict[str, str], no_color: bool, tty: bool, color: bool, live: bool
) -> None:
    stream = _Tty() if tty else io.StringIO()
    terminal = Terminal(no_color, environ)
    assert terminal.color(stream) is color
    assert terminal.live(stream) is live


def test_help_has_no_internal_placeholders() -> None:
    for command in ([], ["validate"], ["plan"], ["show"], ["apply"], ["import"], ["emulator", "serve"]):
        code, out, _ = run_cli(*command, "--help", env={"NO_COLOR": "1", "COLUMNS": "200"})
        assert code == 0
        assert not re.search(r"<(bool|int|float|str|path)>|\{[a-z_]+\}", out), out
    code, out, _ = run_cli("--help", env={"NO_COLOR": "1", "COLUMNS": "200"})
    verbose = next(line for line in out.splitlines() if "--verbose" in line)
    assert "INTEGER" not in verbose and "-v" in verbose  # a count flag takes no value


def test_global_options_are_accepted_after_the_command() -> None:
    assert _hoist_global_options(["plan", "x.yaml", "--debug", "-vv", "--log-level", "INFO"]) == [
        "--debug", "-vv", "--log-level", "INFO", "plan", "x.yaml",
    ]
    assert _hoist_global_options(["--log-level", "DEBUG", "plan", "--", "--debug"]) == [
        "--log-level", "DEBUG", "plan", "--", "--debug",
    ]
    # --debug after the command takes effect: the error comes with its traceback.
    result = CliRunner().invoke(app, ["validate", "no-such-file.yaml", "--debug"], env={"NO_COLOR": "1"})
    assert result.exit_code == 1 and "no such file" in result.stderr and "Traceback" in result.stderr
    code, _, err = run_cli("validate", "no-such-file.yaml", "-v")
    assert code == 1 and "Traceback" not in err
    code, _, err = run_cli("validate", "no-such-file.yaml", "--log-level", "LOUD")
    assert code == 1 and "LOUD" in err


def test_apply_result_in_each_format(example: tuple[Path, Path], tmp_path: Path) -> None:
    desired, fleet = example
    plan_file = saved_plan(example, tmp_path / "p.json")
    code, out, err = run_cli("apply", str(plan_file), "--format", "markdown")
    assert code in (0, 3), err
    assert out.startswith("### cvmkeys apply: `ap-guangzhou`") and "| done |" in out
    assert "apply: " in err  # not a terminal: plain progress lines, no bar
    code, out, _ = run_cli(
        "apply", str(desired), "--emulator", str(fleet), "--auto-approve", "--format", "json"
    )
    assert code in (0, 3)
    assert json.loads(out)["format_version"] == RESULT_FORMAT_VERSION


def test_term_dumb_gives_plain_progress_lines(example: tuple[Path, Path]) -> None:
    desired, fleet = example
    env = {"TERM": "dumb", "NO_COLOR": ""}
    code, _, err = run_cli("apply", str(desired), "--emulator", str(fleet), "--auto-approve", env=env)
    assert code in (0, 3), err
    assert "\x1b[" not in err and "apply: wave 1" in err


def test_plan_out_keeps_the_permissions_of_the_file_it_replaces(
    example: tuple[Path, Path], tmp_path: Path
) -> None:
    plan_file = tmp_path / "p.json"
    plan_file.write_text("old")
    plan_file.chmod(0o600)  # a plan names the fleet's IDs: someone chose to keep it private
    saved_plan(example, plan_file)
    assert plan_file.stat().st_mode & 0o777 == 0o600
    assert json.loads(plan_file.read_text())["format_version"] == PLAN_FORMAT_VERSION
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temporary left
