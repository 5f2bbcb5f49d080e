"""``cvmkeys validate --format github|json``: GitHub Actions annotations escaped by the toolkit's
rules (read back here the way the runner reads them), and JSON that matches its schema. Text
stays the default."""

from __future__ import annotations

import json
import re
from pathlib import Path

from jsonschema import Draft202012Validator
from support import run_cli

from reconciler.errors import Problem
from reconciler.render.problems import annotation, escape_data, escape_property

BAD = 'version: 1\nregion: ap-guangzhou\nscope: keys\nkeys:\n  skey-bad:\n    instances: [ins-1, "x%y,z:w"]\n'
UNKNOWN_REGION = (
    "version: 1\nregion: ap-marsbase-1\nscope: keys\nkeys:\n  skey-3glfot13:\n    instances: []\n"
)
_COMMAND = re.compile(r"^::(?P<command>[a-z-]+)(?: (?P<props>[^:]*))?::(?P<data>.*)$")


def _unescape(text: str) -> str:
    for code, char in (("%0D", "\r"), ("%0A", "\n"), ("%3A", ":"), ("%2C", ","), ("%25", "%")):
        text = text.replace(code, char)
    return text


def parse_command(line: str) -> tuple[str, dict[str, str], str]:
    """A workflow command as the runner reads it: the command, its properties, its data."""
    match = _COMMAND.match(line)
    assert match is not None, line
    props: dict[str, str] = {}
    for pair in (match.group("props") or "").split(","):
        if pair:
            key, _, value = pair.partition("=")
            props[key] = _unescape(value)
    return match.group("command"), props, _unescape(match.group("data"))


def test_github_annotations_point_at_each_problem(tmp_path: Path) -> None:
    folder = tmp_path / "odd,name:dir"
    folder.mkdir()
    bad = folder / "bad.yaml"
    bad.write_text(BAD, encoding="utf-8")
    code, out, err = run_cli("validate", str(bad), "--format", "github")
    assert code == 1
    lines = out.splitlines()
    assert len(lines) == 3
    parsed = [parse_command(line) for line in lines]
    assert [command for command, _, _ in parsed] == ["error"] * 3
    assert [(p["line"], p["col"]) for _, p, _ in parsed] == [("5", "3"), ("6", "17"), ("6", "24")]
    assert all(p["file"] == str(bad) and p["title"] == "cvmkeys validate" for _, p, _ in parsed)
    assert "%2C" in lines[0] and "%3A" in lines[0]  # the path's , and : escaped as properties
    assert "'x%y,z:w' is not a valid instance ID" in parsed[2][2]
    assert "x%25y,z:w" in lines[2]  # in the message only % is escaped
    # The problems are on standard output once; standard error has the error line alone.
    assert "Error: 3 problems found" in err and "not a valid" not in err


def test_github_annotations_for_warnings_of_a_valid_file(tmp_path: Path) -> None:
    path = tmp_path / "b.yaml"
    path.write_text(UNKNOWN_REGION, encoding="utf-8")
    code, out, _ = run_cli("validate", str(path), "--format", "github")
    assert code == 0
    first, summary = out.splitlines()
    command, props, message = parse_command(first)
    assert command == "warning" and props["line"] == "2" and props["col"] == "9"
    assert "ap-marsbase-1" in message
    assert summary.startswith("1 file, 1 region, 1 key") and "valid" in summary


def test_a_message_cannot_start_a_command_of_its_own() -> None:
    hostile = Problem("a.yaml", "bad\r\n::add-mask::x\n::stop-commands::y 100% \x1b[31mred\x1b[0m", 1, 2)
    line = annotation(hostile, "error")
    assert line.count("\n") == 1 and line.endswith("\n") and "\r" not in line
    assert "\x1b" not in line
    command, props, data = parse_command(line.rstrip("\n"))
    assert command == "error" and props == {
        "file": "a.yaml",
        "line": "1",
        "col": "2",
        "title": "cvmkeys validate",
    }
    assert data == "bad\n::add-mask::x\n::stop-commands::y 100% red"
    assert escape_data("%\r\n:,") == "%25%0D%0A:,"
    assert escape_property("%\r\n:,") == "%25%0D%0A%3A%2C"


def test_a_problem_without_a_place_has_no_line() -> None:
    line = annotation(Problem("cvmkeys", "no desired-state files or directories given"), "error")
    assert (
        line == "::error file=cvmkeys,title=cvmkeys validate::no desired-state files or directories given\n"
    )


def _validator() -> Draft202012Validator:
    return Draft202012Validator(json.loads(run_cli("schema", "validation")[1]))


def test_json_for_invalid_and_valid_files(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(BAD, encoding="utf-8")
    code, out, err = run_cli("validate", str(bad), "--format", "json")
    assert code == 1 and "Error: 3 problems found" in err
    data = json.loads(out)
    assert not list(_validator().iter_errors(data))
    assert data["valid"] is False and data["summary"] == {"errors": 3, "warnings": 0}
    assert data["problems"][0] == {
        "severity": "error",
        "file": str(bad),
        "line": 5,
        "column": 3,
        "message": "'skey-bad' is not a valid key ID "
        "(expected skey- followed by 8 lower-case letters or digits)",
    }
    good = tmp_path / "good.yaml"
    good.write_text(UNKNOWN_REGION, encoding="utf-8")
    code, out, _ = run_cli("validate", str(good), "--format", "json")
    assert code == 0
    data = json.loads(out)
    assert not list(_validator().iter_errors(data))
    assert data["valid"] is True and data["files"] == [str(good)]
    assert [p["severity"] for p in data["problems"]] == ["warning"]


def test_text_stays_the_default(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(BAD, encoding="utf-8")
    code, out, err = run_cli("validate", str(bad))
    assert code == 1 and out == ""
    assert f"{bad}:5:3: 'skey-bad' is not a valid key ID" in err and "::error" not in err
