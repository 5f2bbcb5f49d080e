"""The CI recipes (examples/ci/) and the pre-commit hook (.pre-commit-hooks.yaml) parse, and every
``cvmkeys ...`` command line in them names a real command with only real options, checked
against the Typer app itself (``typer.main.get_command(app)``), not against a list kept here."""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass
from enum import Enum
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

import pytest
import typer
import yaml
from typer.testing import CliRunner

from reconciler.cli import app

ROOT = Path(__file__).resolve().parent.parent
GITHUB = ROOT / "examples" / "ci" / "github-actions.yml"
GITLAB = ROOT / "examples" / "ci" / "gitlab-ci.yml"
HOOKS = ROOT / ".pre-commit-hooks.yaml"
MARKER = "<!-- cvmkeys-plan -->"

# `cvmkeys` where a shell command starts: line start, after ; | & ( or `then`/`do`/`!`.
_COMMAND_START = re.compile(r"(?:^|[;&|(]\s*|\b(?:then|do|else)\s+|!\s+)cvmkeys(?=\s|$)")
_HEREDOC = re.compile(r"<<-?\s*'?\"?(\w+)'?\"?")


@dataclass(frozen=True)
class Invocation:
    line: str
    path: tuple[str, ...]  # the (sub)command, e.g. ("plan",)
    options: frozenset[str]


def _load(path: Path) -> dict[str, Any]:
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    assert isinstance(data, dict)
    return data


def _github_scripts(data: dict[str, Any]) -> list[str]:
    return [step["run"] for job in data["jobs"].values() for step in job["steps"] if "run" in step]


def _gitlab_scripts(data: dict[str, Any]) -> list[str]:
    scripts: list[str] = []
    for job in data.values():
        if not isinstance(job, dict):
            continue
        for part in ("before_script", "script", "after_script"):
            value = job.get(part, [])
            scripts.extend([value] if isinstance(value, str) else value)
    return scripts


def _shell_lines(script: str) -> list[str]:
    """Logical shell lines: continuations joined; comments and heredoc bodies left out."""
    lines: list[str] = []
    heredoc_end: str | None = None
    for raw in script.replace("\\\n", " ").splitlines():
        line = raw.strip()
        if heredoc_end is not None:
            if line == heredoc_end:
                heredoc_end = None
            continue
        if not line or line.startswith("#"):
            continue
        match = _HEREDOC.search(line)
        if match:
            heredoc_end = match.group(1)
        lines.append(line)
    return lines


def _find_invocations(scripts: list[str]) -> list[Invocation]:
    found = []
    for script in scripts:
        for line in _shell_lines(script):
            for match in _COMMAND_START.finditer(line):
                found.append(_check(line, line[match.end() :]))
    return found


def _words(text: str) -> list[str]:
    """Shell words up to the first operator (redirection, pipe, ;, &&, closing parenthesis)."""
    lexer = shlex.shlex(text, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    words = []
    for token in lexer:
        if set(token) <= set("();<>|&"):
            break
        words.append(token)
    return words


def _choices(param: Any) -> list[str] | None:
    """The allowed values of an option, from click's Choice or from Typer's Enum annotation."""
    click_choices = getattr(getattr(param, "type", None), "choices", None)
    if click_choices:
        return [str(getattr(choice, "value", choice)) for choice in click_choices]
    annotation = getattr(getattr(param, "type_descriptor", None), "annotation", None)
    if isinstance(annotation, type) and issubclass(annotation, Enum):
        return [str(member.value) for member in annotation]
    return None


def _check(line: str, rest: str) -> Invocation:
    """Resolve one command line against the click command tree; fail on anything unknown."""
    command: Any = typer.main.get_command(app)
    path: list[str] = []
    used: set[str] = set()
    words = _words(rest)
    index = 0
    while index < len(words):
        word = words[index]
        index += 1
        if word.startswith("-"):
            name, _, inline_value = word.partition("=")
            params = {opt: p for p in command.params for opt in (*p.opts, *p.secondary_opts)}
            names = [name] if name.startswith("--") or len(name) == 2 else [f"-{c}" for c in name[1:]]
            for option in names:
                param = params.get(option)
                assert param is not None, f"{line!r}: cvmkeys {' '.join(path)} has no option {option}"
                assert param.param_type_name == "option", f"{line!r}: {option} is not an option"
                used.add(option)
                takes_value = not getattr(param, "is_flag", False) and not getattr(param, "count", False)
                if takes_value and not inline_value:
                    assert index < len(words), f"{line!r}: {option} needs a value"
                    value = words[index]
                    index += 1
                    choices = _choices(param)
                    if choices is not None and not value.startswith("$"):
                        assert value in choices, f"{line!r}: {option} {value} (one of {choices})"
            continue
        subcommands = getattr(command, "commands", None)
        if subcommands is not None:
            assert word in subcommands, f"{line!r}: no command {' '.join([*path, word])!r}"
            command = subcommands[word]
            path.append(word)
        # Otherwise a positional argument of the command: files, directories, the plan file.
    assert path, f"{line!r}: no command named"
    assert getattr(command, "commands", None) is None, f"{line!r}: {' '.join(path)} needs a subcommand"
    return Invocation(line, tuple(path), frozenset(used))


# --------------------------------------------------------------------------- the checker itself


def test_the_checker_refuses_what_does_not_exist() -> None:
    assert _check("x", "plan a.yaml --out p.json --format markdown").path == ("plan",)
    assert _check("x", "-vv --log-level DEBUG import --region gz --all").options >= {"-v", "--all"}
    for bad in (
        "plann a.yaml",
        "plan a.yaml --outt p.json",
        "plan a.yaml --format html",
        "apply p.json --auto-aprove",
        "emulator",
        "show p.json --out x",
    ):
        with pytest.raises(AssertionError):
            _check("x", bad)
    assert _words("show plan.json --format markdown > plan.md") == [
        "show",
        "plan.json",
        "--format",
        "markdown",
    ]
    assert _words('plan "$A" --out p.json 2>&1 | tee x') == ["plan", "$A", "--out", "p.json", "2"]


# --------------------------------------------------------------------------- GitHub Actions


def test_github_workflow_commands_are_real() -> None:
    data = _load(GITHUB)
    found = _find_invocations(_github_scripts(data))
    by_command = {inv.path[0]: inv for inv in found}
    assert {"validate", "plan", "show", "apply"} <= set(by_command)
    plans = [inv for inv in found if inv.path == ("plan",)]
    assert any({"--out", "--format", "--detailed-exitcode"} <= inv.options for inv in plans)
    assert {"--auto-approve", "--audit-log"} <= by_command["apply"].options
    assert any("--format" in inv.options for inv in found if inv.path == ("show",))


def test_github_workflow_shape() -> None:
    data = _load(GITHUB)
    triggers = data.get("on", data.get(True))  # YAML 1.1 reads a bare `on` as true
    assert set(triggers) == {"pull_request", "push"}
    assert triggers["push"]["branches"] == ["main"]
    plan, apply = data["jobs"]["plan"], data["jobs"]["apply"]
    assert "pull_request" in plan["if"] and "push" in apply["if"]
    assert apply["concurrency"]["cancel-in-progress"] is False
    assert "${{" not in apply["concurrency"]["group"]  # one group for every apply
    for job in (plan, apply):
        assert job["env"]["TENCENTCLOUD_SECRET_ID"] == "${{ secrets.TENCENTCLOUD_SECRET_ID }}"
        assert job["env"]["TENCENTCLOUD_SECRET_KEY"] == "${{ secrets.TENCENTCLOUD_SECRET_KEY }}"

    def steps(job: dict[str, Any], action: str) -> list[dict[str, Any]]:
        return [step for step in job["steps"] if step.get("uses", "").split("@")[0] == action]

    assert [s["with"]["path"] for s in steps(plan, "actions/upload-artifact")] == ["plan.json"]
    (download,) = steps(apply, "actions/download-artifact")
    assert download["with"]["name"] == "cvmkeys-plan" and "run-id" in download["with"]
    (comment,) = steps(plan, "actions/github-script")
    assert MARKER in comment["with"]["script"]
    assert plan["permissions"]["pull-requests"] == "write"
    # Untrusted event data never goes straight into a shell script (script injection).
    for script in _github_scripts(data):
        assert "${{" not in script


# --------------------------------------------------------------------------- GitLab CI


def test_gitlab_pipeline_commands_are_real() -> None:
    data = _load(GITLAB)
    found = _find_invocations(_gitlab_scripts(data))
    assert {"validate", "plan", "show", "apply"} <= {inv.path[0] for inv in found}
    assert any({"--out", "--format"} <= inv.options for inv in found if inv.path == ("plan",))
    assert any("--auto-approve" in inv.options for inv in found if inv.path == ("apply",))


def test_gitlab_pipeline_shape_and_embedded_python() -> None:
    data = _load(GITLAB)
    plan, apply = data["cvmkeys-plan"], data["cvmkeys-apply"]
    assert 'merge_request_event"' in plan["rules"][0]["if"]
    assert "$CI_DEFAULT_BRANCH" in apply["rules"][0]["if"]
    assert apply["resource_group"]
    assert "plan.json" in plan["artifacts"]["paths"]
    scripts = _gitlab_scripts(data)
    assert any(MARKER in script for script in scripts)
    # The Python in the heredocs and in `python3 -c` at least compiles.
    compiled = 0
    for script in scripts:
        for body in re.findall(r"<<'PY'\n(.*?)\n\s*PY\b", script, flags=re.S):
            compile(_dedent(body), "<gitlab heredoc>", "exec")
            compiled += 1
        for body in re.findall(r"python3 -c '\n(.*?)'", script, flags=re.S):
            compile(_dedent(body), "<gitlab -c>", "exec")
            compiled += 1
    assert compiled == 3


def _dedent(text: str) -> str:
    import textwrap

    return textwrap.dedent(text)


# --------------------------------------------------------------------------- pre-commit


def test_pre_commit_hook() -> None:
    hooks = yaml.safe_load(HOOKS.read_text(encoding="utf-8"))
    assert isinstance(hooks, list)
    (hook,) = [h for h in hooks if h["id"] == "cvmkeys-validate"]
    assert hook["language"] == "python"
    program, *args = shlex.split(hook["entry"])
    scripts = {ep.name: ep.value for ep in entry_points(group="console_scripts")}
    assert scripts.get(program) == "reconciler.cli:main"  # the console script pip installs
    assert _check(hook["entry"], " ".join(args)).path == ("validate",)
    pattern = re.compile(hook["files"])
    for name in ("bindings.yaml", "examples/bindings.yaml", "cvmkeys.yml", "infra/cvmkeys-prod.yaml"):
        assert pattern.search(name), name
    assert pattern.search("cvmkeys/ap-guangzhou.yaml")
    for name in ("examples/fleet.yaml", "bindings.yaml.bak", "cvmkeys/sub/x.yaml", "other.yaml"):
        assert not pattern.search(name), name
    # What pre-commit would run on this repository's matching files succeeds.
    files = sorted(
        str(p.relative_to(ROOT))
        for p in ROOT.rglob("*.y*ml")
        if pattern.search(p.relative_to(ROOT).as_posix())
    )
    files = [f for f in files if not f.startswith((".venv", "tests"))]
    assert files
    result = CliRunner().invoke(app, [*args, *(str(ROOT / f) for f in files)])
    assert result.exit_code == 0, result.stdout + result.stderr


# --------------------------------------------------------------------------- the documentation


@pytest.mark.parametrize("doc", ["README.md", "docs/gitops.md"])
def test_commands_in_the_docs_are_real(doc: str) -> None:
    text = (ROOT / doc).read_text(encoding="utf-8")
    blocks = re.findall(r"```sh\n(.*?)```", text, flags=re.S)
    found = _find_invocations(blocks)
    assert len(found) >= (8 if doc == "README.md" else 2)
    if doc == "README.md":
        assert {"validate", "plan", "show", "apply", "import", "emulator"} <= {inv.path[0] for inv in found}
