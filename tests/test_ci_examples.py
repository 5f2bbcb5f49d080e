"""The CI recipes (examples/ci/): they pass the vendors' own checks (check-jsonschema's vendored
GitHub-workflow and GitLab-CI schemas, actionlint with shellcheck, shellcheck on the GitLab
scripts), they keep every cloud credential away from pull-request jobs and from the steps that
install or post, and every ``cvmkeys ...`` command line in them names a real command with only
real options, checked against the Typer app itself (``typer.main.get_command(app)``), not
against a list kept here. The plan comparison and the safety check the recipes run are run
here too, on real plans made against the emulator."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any

import pytest
import typer
import yaml
from support import run_cli

from reconciler.cli import app

ROOT = Path(__file__).resolve().parent.parent
GITHUB_DIR = ROOT / "examples" / "ci" / "github"
GITHUB_PLAN = GITHUB_DIR / "cvmkeys-plan.yml"
GITHUB_APPLY = GITHUB_DIR / "cvmkeys-apply.yml"
GITHUB_DRIFT = GITHUB_DIR / "cvmkeys-drift.yml"
GITHUB = (GITHUB_PLAN, GITHUB_APPLY, GITHUB_DRIFT)
GITLAB = ROOT / "examples" / "ci" / "gitlab-ci.yml"
MARKER = "<!-- cvmkeys-plan -->"
# The only actions a job that can mint a cloud token may use (no github-script there).
TRUSTED_IN_CREDENTIAL_JOBS = {
    "actions/checkout",
    "actions/setup-python",
    "actions/download-artifact",
    "actions/upload-artifact",
}

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


def _gitlab_jobs(data: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {name: job for name, job in data.items() if isinstance(job, dict) and "script" in job}


def _gitlab_scripts(data: dict[str, Any]) -> list[str]:
    scripts: list[str] = []
    for job in data.values():
        if not isinstance(job, dict):
            continue
        for part in ("before_script", "script", "after_script"):
            value = job.get(part, [])
            scripts.extend([value] if isinstance(value, str) else value)
    return scripts


def _tool(name: str) -> str:
    """A linter from the test extra: beside this Python first (the venv), then on PATH."""
    beside = Path(sys.executable).parent / name
    found = str(beside) if beside.exists() else shutil.which(name)
    if found is None:
        pytest.skip(f"{name} is not installed (pip install -e '.[test]')")
    return found


def _run(*command: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, capture_output=True, text=True, cwd=cwd, timeout=120, check=False)


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


# --------------------------------------------------------------------------- the vendors' checks


def test_recipes_pass_the_vendors_schemas() -> None:
    checker = _tool("check-jsonschema")
    for schema, files in (("vendor.github-workflows", GITHUB), ("vendor.gitlab-ci", (GITLAB,))):
        result = _run(checker, "--builtin-schema", schema, *map(str, files))
        assert result.returncode == 0, result.stdout + result.stderr


def test_the_schema_check_can_fail(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yml"
    bad.write_text("on: push\njobs:\n  plan:\n    runs-on: ubuntu-latest\n    stepz: []\n", encoding="utf-8")
    result = _run(_tool("check-jsonschema"), "--builtin-schema", "vendor.github-workflows", str(bad))
    assert result.returncode != 0


def _actionlint(*files: Path) -> subprocess.CompletedProcess[str]:
    shellcheck = _tool("shellcheck")
    return _run(_tool("actionlint"), "-shellcheck", shellcheck, "-no-color", *map(str, files))


def test_github_workflows_pass_actionlint_with_shellcheck() -> None:
    result = _actionlint(*GITHUB)
    assert result.returncode == 0 and not result.stdout.strip(), result.stdout + result.stderr


def test_actionlint_runs_shellcheck(tmp_path: Path) -> None:
    """The check above could not pass by accident: an unquoted variable (SC2086) is reported."""
    bad = tmp_path / "bad.yml"
    bad.write_text(
        "on: push\npermissions: {}\njobs:\n  a:\n    runs-on: ubuntu-latest\n    steps:\n"
        "      - run: cvmkeys validate $CVMKEYS_PATH\n",
        encoding="utf-8",
    )
    result = _actionlint(bad)
    assert result.returncode != 0 and "SC2086" in result.stdout, result.stdout + result.stderr


def _shellcheck(script: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [_tool("shellcheck"), "--shell=bash", "-"],
        input=script,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_gitlab_scripts_pass_shellcheck() -> None:
    scripts = _gitlab_scripts(_load(GITLAB))
    assert len(scripts) >= 10
    for script in scripts:
        result = _shellcheck(script)
        assert result.returncode == 0, f"{script}\n{result.stdout}"
    assert _shellcheck("cvmkeys validate $CVMKEYS_PATH\n").returncode != 0  # SC2086 is found


# --------------------------------------------------------------------------- cvmkeys command lines


def test_github_workflow_commands_are_real() -> None:
    found = [inv for path in GITHUB for inv in _find_invocations(_github_scripts(_load(path)))]
    assert {"validate", "plan", "show", "apply"} <= {inv.path[0] for inv in found}
    plans = [inv for inv in found if inv.path == ("plan",)]
    assert any({"--out", "--format", "--detailed-exitcode"} <= inv.options for inv in plans)
    applies = [inv for inv in found if inv.path == ("apply",)]
    assert applies and all({"--auto-approve", "--audit-log"} <= inv.options for inv in applies)


def test_gitlab_pipeline_commands_are_real() -> None:
    found = _find_invocations(_gitlab_scripts(_load(GITLAB)))
    assert {"validate", "plan", "show", "apply"} <= {inv.path[0] for inv in found}
    assert any({"--out", "--format"} <= inv.options for inv in found if inv.path == ("plan",))
    assert any("--auto-approve" in inv.options for inv in found if inv.path == ("apply",))


# --------------------------------------------------------------------------- GitHub: least privilege


def _triggers(data: dict[str, Any]) -> dict[str, Any]:
    triggers = data.get("on", data.get(True))  # YAML 1.1 reads a bare `on` as true
    assert isinstance(triggers, dict)
    return triggers


def _uses(step: dict[str, Any]) -> str:
    return str(step.get("uses", "")).split("@")[0]


def test_github_no_secrets_and_no_permissions_at_workflow_level() -> None:
    for path in GITHUB:
        data = _load(path)
        assert data["permissions"] == {}, path.name
        assert "secrets." not in json.dumps(data.get("env", {})), path.name
        # The recipes use OIDC only: no long-lived secret anywhere.
        assert "${{ secrets." not in path.read_text(encoding="utf-8"), path.name
        assert "always()" not in path.read_text(encoding="utf-8"), path.name  # posts on cancel
        for name, job in data["jobs"].items():
            assert "permissions" in job, f"{path.name}: job {name} states its permissions"


def test_github_pull_request_jobs_reach_only_the_read_only_role() -> None:
    plan = _load(GITHUB_PLAN)
    assert set(_triggers(plan)) == {"pull_request"}  # never pull_request_target
    text = GITHUB_PLAN.read_text(encoding="utf-8")
    assert "CVMKEYS_APPLY_ROLE_ARN" not in text and "environment:" not in text
    assert plan["jobs"]["build"]["if"] == "github.event.pull_request.head.repo.full_name == github.repository"
    assert plan["jobs"]["plan"]["needs"] == "build"  # so a fork skips every job
    for path in (GITHUB_APPLY, GITHUB_DRIFT):
        assert "pull_request" not in _triggers(_load(path)), path.name
    apply = _load(GITHUB_APPLY)
    assert _triggers(apply)["push"]["branches"] == ["main"]
    role_users = [name for name, job in apply["jobs"].items() if "CVMKEYS_APPLY_ROLE_ARN" in json.dumps(job)]
    assert role_users == ["apply"]
    assert apply["jobs"]["apply"]["environment"] == "cvmkeys-production"


def test_github_credential_jobs_install_offline_and_post_nothing() -> None:
    """A job that can mint an OIDC token has no GitHub write permission, uses only a few
    actions (no github-script), and installs cvmkeys only from wheels built elsewhere; a job
    that writes to GitHub cannot mint a token."""
    credential_jobs = 0
    for path in GITHUB:
        data = _load(path)
        for name, job in data["jobs"].items():
            permissions = job["permissions"]
            writes = {scope for scope, level in permissions.items() if level == "write"}
            where = f"{path.name}: {name}"
            if "id-token" in writes:
                credential_jobs += 1
                assert writes == {"id-token"}, where
                assert {_uses(s) for s in job["steps"] if "uses" in s} <= TRUSTED_IN_CREDENTIAL_JOBS, where
                installs = [s["run"] for s in job["steps"] if "pip install" in s.get("run", "")]
                assert installs == ["python -m pip install --no-index --find-links wheels cvmkeys"], where
            else:
                assert "TENCENTCLOUD_" not in json.dumps(job), where
            for step in job["steps"]:
                if "pip wheel" in step.get("run", "") or _uses(step) == "actions/github-script":
                    assert "id-token" not in permissions, where
    assert credential_jobs == 3


def test_github_install_is_pinned_to_a_tagged_git_url() -> None:
    for path in GITHUB:
        spec = _load(path)["env"]["CVMKEYS_SPEC"]
        assert re.fullmatch(r"cvmkeys @ git\+https://github\.com/[^/]+/cvmkeys@v\d+\.\d+\.\d+", spec), spec
        text = path.read_text(encoding="utf-8")
        assert "cvmkeys==" not in text and "pip install cvmkeys" not in text


def test_github_apply_is_queued_never_cancelled_and_reports_back() -> None:
    apply = _load(GITHUB_APPLY)
    concurrency = apply["jobs"]["apply"]["concurrency"]
    assert concurrency == {"group": "cvmkeys-apply", "cancel-in-progress": False, "queue": "max"}
    report = apply["jobs"]["report"]
    assert report["needs"] == "apply" and report["permissions"] == {"pull-requests": "write"}
    assert "!cancelled()" in report["if"]
    (post,) = [s for s in report["steps"] if _uses(s) == "actions/github-script"]
    assert "createComment" in post["with"]["script"]


def test_github_drift_check_keeps_one_issue() -> None:
    drift = _load(GITHUB_DRIFT)
    (schedule,) = _triggers(drift)["schedule"]
    assert len(schedule["cron"].split()) == 5
    script = drift["jobs"]["report"]["steps"][-1]["with"]["script"]
    assert "labels: label" in script and "issues.update" in script and "issues.create" in script
    assert drift["jobs"]["report"]["permissions"] == {"issues": "write"}


def test_github_plan_comment() -> None:
    plan = _load(GITHUB_PLAN)
    comment = plan["jobs"]["comment"]
    assert comment["permissions"] == {"pull-requests": "write"}
    assert comment["if"] == "${{ !cancelled() && needs.plan.result != 'skipped' }}"
    (post,) = [s for s in comment["steps"] if _uses(s) == "actions/github-script"]
    assert MARKER in post["with"]["script"]
    # Untrusted event data never goes straight into a script (script injection).
    for path in GITHUB:
        data = _load(path)
        for script in _github_scripts(data):
            assert "${{" not in script, path.name
        for job in data["jobs"].values():
            for step in job["steps"]:
                if _uses(step) == "actions/github-script":
                    assert "${{" not in step["with"]["script"], path.name


# --------------------------------------------------------------------------- GitLab: least privilege


def test_gitlab_shape() -> None:
    data = _load(GITLAB)
    jobs = _gitlab_jobs(data)
    assert set(jobs) == {
        "cvmkeys-wheels",
        "cvmkeys-plan",
        "cvmkeys-plan-note",
        "cvmkeys-reviewed",
        "cvmkeys-apply",
        "cvmkeys-apply-note",
        "cvmkeys-drift",
        "cvmkeys-drift-issue",
    }
    plan, apply = jobs["cvmkeys-plan"], jobs["cvmkeys-apply"]
    merge_request = plan["rules"][0]["if"]
    assert 'merge_request_event"' in merge_request
    assert "$CI_MERGE_REQUEST_SOURCE_PROJECT_ID == $CI_PROJECT_ID" in merge_request  # no forks
    assert "$CI_DEFAULT_BRANCH" in apply["rules"][0]["if"]
    assert apply["resource_group"] and apply["environment"]["name"] == "cvmkeys-production"
    assert "plan.json" in plan["artifacts"]["paths"]
    for name, job in jobs.items():
        text = json.dumps(job)
        assert ("CVMKEYS_APPLY_ROLE_ARN" in text) == (name == "cvmkeys-apply"), name
        tokens = "id_tokens" in job
        assert tokens == (name in {"cvmkeys-plan", "cvmkeys-apply", "cvmkeys-drift"}), name
        if tokens:  # installs only offline, posts nothing
            assert job["extends"] == ".cvmkeys-offline" and "CVMKEYS_GITLAB_TOKEN" not in text, name
            (variable,) = job["id_tokens"]
            assert variable == "TENCENTCLOUD_ASSUME_ROLE_WEB_IDENTITY_TOKEN"
    assert data[".cvmkeys-offline"]["before_script"] == [
        "python -m pip install --quiet --no-index --find-links wheels cvmkeys"
    ]
    spec = data["variables"]["CVMKEYS_SPEC"]
    assert spec.startswith("cvmkeys @ git+https://") and re.search(r"@v\d+\.\d+\.\d+$", spec)
    assert "always" not in json.dumps(jobs["cvmkeys-drift-issue"])
    assert any(MARKER in script for script in _gitlab_scripts(data))


def _python_snippets(scripts: list[str]) -> list[str]:
    bodies = []
    for script in scripts:
        bodies += re.findall(r"<<'PY'\n(.*?)\n\s*PY\b", script, flags=re.S)
        bodies += re.findall(r"python3 -c '\n(.*?)'", script, flags=re.S)
    return [textwrap.dedent(body) for body in bodies]


def test_gitlab_embedded_python_compiles() -> None:
    snippets = _python_snippets(_gitlab_scripts(_load(GITLAB)))
    assert len(snippets) == 6
    for body in snippets:
        compile(body, "<gitlab>", "exec")


# --------------------------------------------------------------------------- the recipes' logic, run


def _plans(tmp_path: Path, example: tuple[Path, Path]) -> dict[str, Path]:
    """Three real plans of the example fleet: two of the same files, one of a changed file,
    and one over its safety limit."""
    bindings, fleet = example
    changed = tmp_path / "changed.yaml"
    changed.write_text(
        bindings.read_text(encoding="utf-8").replace("      - ins-5e6f7a8b          # web-2\n", ""),
        encoding="utf-8",
    )
    plans = {}
    for name, source, extra in (
        ("reviewed", bindings, []),
        ("same", bindings, []),
        ("changed", changed, []),
        ("unsafe", bindings, ["--max-unbinds", "1"]),
    ):
        out = tmp_path / f"{name}.json"
        code, _, stderr = run_cli("plan", str(source), "--emulator", str(fleet), "--out", str(out), *extra)
        assert code == 0 and out.exists(), stderr
        plans[name] = out
    return plans


def _jq_program(name: str) -> str:
    match = re.search(name + r"='([^']+)'", GITHUB_APPLY.read_text(encoding="utf-8"))
    assert match, name
    return match.group(1)


def test_github_apply_compares_the_changes(tmp_path: Path, example: tuple[Path, Path]) -> None:
    jq = shutil.which("jq")
    if jq is None:
        pytest.skip("jq is not installed (GitHub's runners have it)")
    plans = _plans(tmp_path, example)
    program = _jq_program("changes")

    def changes(plan: Path) -> str:
        result = _run(jq, "-S", program, str(plan))
        assert result.returncode == 0, result.stderr
        return result.stdout

    reviewed = changes(plans["reviewed"])
    assert json.loads(reviewed)  # not vacuously equal: the example plan has changes
    assert changes(plans["same"]) == reviewed
    assert changes(plans["changed"]) != reviewed


def test_github_plan_fails_over_the_safety_limits(tmp_path: Path, example: tuple[Path, Path]) -> None:
    jq = shutil.which("jq")
    if jq is None:
        pytest.skip("jq is not installed (GitHub's runners have it)")
    assert "jq -r .safety.safe plan.json" in GITHUB_PLAN.read_text(encoding="utf-8")
    plans = _plans(tmp_path, example)
    assert _run(jq, "-r", ".safety.safe", str(plans["reviewed"])).stdout.strip() == "true"
    assert _run(jq, "-r", ".safety.safe", str(plans["unsafe"])).stdout.strip() == "false"


def _gitlab_snippet(containing: str) -> str:
    (body,) = [b for b in _python_snippets(_gitlab_scripts(_load(GITLAB))) if containing in b]
    return body


def _run_snippet(body: str, cwd: Path, files: dict[str, Path]) -> subprocess.CompletedProcess[str]:
    """The pipeline's Python ``body`` run in a new directory ``cwd`` holding copies of ``files``
    (their name there: where to copy them from), as the job's checkout would."""
    cwd.mkdir()
    for name, source in files.items():
        shutil.copy(source, cwd / name)
    return subprocess.run(
        [sys.executable, "-c", body],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**os.environ, "PYTHONIOENCODING": "utf-8"},
    )


def test_gitlab_apply_compares_the_changes(tmp_path: Path, example: tuple[Path, Path]) -> None:
    plans = _plans(tmp_path, example)
    compare = _gitlab_snippet('reviewed-plan.json"), changes("main-plan.json")')
    for main, equal in (("same", True), ("changed", False)):
        files = {"reviewed-plan.json": plans["reviewed"], "main-plan.json": plans[main]}
        result = _run_snippet(compare, tmp_path / main, files)
        assert (result.returncode == 0) is equal, result.stdout + result.stderr
        if not equal:
            assert "differs from the plan reviewed" in result.stderr and "ins-5e6f7a8b" in result.stdout


def test_gitlab_plan_fails_over_the_safety_limits(tmp_path: Path, example: tuple[Path, Path]) -> None:
    plans = _plans(tmp_path, example)
    check = _gitlab_snippet('["safety"]')
    for name, safe in (("reviewed", True), ("unsafe", False)):
        result = _run_snippet(check, tmp_path / name, {"plan.json": plans[name]})
        assert (result.returncode == 0) is safe, result.stderr
    assert "over max_unbinds 1" in result.stderr


# --------------------------------------------------------------------------- the documentation


@pytest.mark.parametrize("doc", ["README.md", "docs/gitops.md"])
def test_commands_in_the_docs_are_real(doc: str) -> None:
    text = (ROOT / doc).read_text(encoding="utf-8")
    blocks = re.findall(r"```sh\n(.*?)```", text, flags=re.S)
    found = _find_invocations(blocks)
    assert len(found) >= (8 if doc == "README.md" else 2)
    if doc == "README.md":
        assert {"validate", "plan", "show", "apply", "import", "emulator"} <= {inv.path[0] for inv in found}


def test_the_documented_cam_policies() -> None:
    """docs/gitops.md's policies are valid JSON: the read-only one can only read, the apply one
    adds exactly the two unbind actions; the trust policies tie each role to its subject; the
    comparison shown there is the one the apply workflow runs."""
    text = (ROOT / "docs" / "gitops.md").read_text(encoding="utf-8")
    policies = [json.loads(block) for block in re.findall(r"```json\n(.*?)```", text, flags=re.S)]
    read_only, apply_role, trust = policies

    def actions(policy: dict[str, Any]) -> set[str]:
        return {action for statement in policy["statement"] for action in statement["action"]}

    reads = {"cvm:DescribeInstances", "cvm:DescribeKeyPairs", "sts:GetCallerIdentity"}
    assert actions(read_only) == reads
    assert actions(apply_role) == reads | {"cvm:DisassociateInstancesKeyPairs", "cvm:UnBindInstanceKey"}
    (statement,) = trust["statement"]
    assert statement["action"] == "name/sts:AssumeRoleWithWebIdentity"
    subjects = statement["condition"]["string_equal"]["oidc:sub"]
    assert "repo:<org>/<repo>:pull_request" in subjects
    assert not any("environment" in subject for subject in subjects)
    assert '"oidc:sub": ["repo:<org>/<repo>:environment:cvmkeys-production"]' in text
    assert f"changes='{_jq_program('changes')}'" in text
