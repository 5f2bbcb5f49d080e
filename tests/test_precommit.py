"""The pre-commit hook (.pre-commit-hooks.yaml) checks desired-state files only: the files it
selects are worked out with pre-commit's own matching code (``files``, ``exclude``, ``types``),
its entry (the content test, then ``cvmkeys validate``) is run as pre-commit runs it, and
``pre-commit try-repo`` on a scratch git repository installs the hook from this repository and
runs it for real: a bad desired file fails at its line, CI workflow files and unrelated YAML
are left alone."""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from support import run_command

ROOT = Path(__file__).resolve().parent.parent
HOOKS = ROOT / ".pre-commit-hooks.yaml"
README = ROOT / "README.md"

BAD_DESIRED = """\
version: 1
region: ap-guangzhou
keys:
  skey-3glfot13:
    instances:
      - ins-1a2b3c4d
      - ins-bad
"""
GOOD_DESIRED = BAD_DESIRED.replace("      - ins-bad\n", "")
K8S_BINDINGS = """\
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata:
  name: readers
subjects: []
"""


def _hook() -> dict[str, object]:
    hooks = yaml.safe_load(HOOKS.read_text(encoding="utf-8"))
    assert isinstance(hooks, list)
    (hook,) = [h for h in hooks if h["id"] == "cvmkeys-validate"]
    assert isinstance(hook, dict)
    return hook


def _scratch_repo(path: Path, desired: str) -> Path:
    """A git repository laid out as the recipes suggest, everything staged."""
    files = {
        "cvmkeys/ap-guangzhou.yaml": desired,
        ".github/workflows/cvmkeys-plan.yml": (ROOT / "examples/ci/github/cvmkeys-plan.yml").read_text(
            encoding="utf-8"
        ),
        ".github/workflows/cvmkeys-apply.yml": (ROOT / "examples/ci/github/cvmkeys-apply.yml").read_text(
            encoding="utf-8"
        ),
        ".gitlab-ci.yml": (ROOT / "examples/ci/gitlab-ci.yml").read_text(encoding="utf-8"),
        "deploy/bindings.yaml": K8S_BINDINGS,
        "cvmkeys-notes.md": "not YAML\n",
    }
    for name, text in files.items():
        target = path / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text, encoding="utf-8")
    subprocess.run(["git", "init", "-q", str(path)], check=True)
    subprocess.run(["git", "add", "-A"], cwd=path, check=True)
    return path


# --------------------------------------------------------------------------- pre-commit's matching


def test_the_hook_selects_desired_state_files_only(tmp_path: Path) -> None:
    from pre_commit.commands.run import Classifier, filter_by_include_exclude

    hook = _hook()
    repo = _scratch_repo(tmp_path / "repo", GOOD_DESIRED)
    more = {
        "bindings.yml": GOOD_DESIRED,
        "infra/cvmkeys-prod.yaml": GOOD_DESIRED,
        "cvmkeys/sub/x.yaml": GOOD_DESIRED,  # only files directly in cvmkeys/
        "bindings.yaml.bak": GOOD_DESIRED,
        "other.yaml": GOOD_DESIRED,
        ".github/cvmkeys.yml": "jobs: {}\n",
        ".gitlab/cvmkeys.yml": "stages: []\n",
        ".pre-commit-cvmkeys.yaml": "repos: []\n",
    }
    for name, text in more.items():
        (repo / name).parent.mkdir(parents=True, exist_ok=True)
        (repo / name).write_text(text, encoding="utf-8")
    names = sorted(
        p.relative_to(repo).as_posix() for p in repo.rglob("*") if p.is_file() and ".git/" not in p.as_posix()
    )
    cwd = Path.cwd()
    os.chdir(repo)  # identify reads the files, by relative name as pre-commit passes them
    try:
        classifier = Classifier(names)
        selected = set(
            classifier.by_types(
                filter_by_include_exclude(classifier.filenames, str(hook["files"]), str(hook["exclude"])),
                hook.get("types", ["file"]),  # type: ignore[arg-type]
                [],
                [],
            )
        )
    finally:
        os.chdir(cwd)
    # By name, not yet by content: the Kubernetes file is dropped by the entry (below).
    assert selected == {
        "cvmkeys/ap-guangzhou.yaml",
        "bindings.yml",
        "infra/cvmkeys-prod.yaml",
        "deploy/bindings.yaml",
    }


def _run_entry(cwd: Path, *files: str) -> subprocess.CompletedProcess[str]:
    """The hook's entry with file names appended, as pre-commit runs it (shlex-split, no
    shell), with this environment's python and cvmkeys first on PATH."""
    command = [*shlex.split(str(_hook()["entry"])), *files]
    assert command[0] == "python"
    bin_dir = str(Path(sys.executable).parent)
    env = {"PATH": bin_dir + os.pathsep + os.environ.get("PATH", ""), "NO_COLOR": "1"}
    return run_command([sys.executable, *command[1:]], cwd=cwd, env=env)


def test_the_entry_recognises_the_content(tmp_path: Path) -> None:
    repo = _scratch_repo(tmp_path / "repo", BAD_DESIRED)
    bad = _run_entry(repo, "cvmkeys/ap-guangzhou.yaml", "deploy/bindings.yaml")
    assert bad.returncode == 1
    assert "cvmkeys/ap-guangzhou.yaml:7:9: 'ins-bad' is not a valid instance ID" in bad.stdout + bad.stderr
    assert "deploy/bindings.yaml" not in bad.stdout + bad.stderr
    unrelated = _run_entry(repo, "deploy/bindings.yaml")
    assert unrelated.returncode == 0 and not unrelated.stdout + unrelated.stderr
    (repo / "cvmkeys/ap-guangzhou.yaml").write_text(GOOD_DESIRED, encoding="utf-8")
    good = _run_entry(repo, "cvmkeys/ap-guangzhou.yaml", "deploy/bindings.yaml")
    assert good.returncode == 0, good.stdout + good.stderr
    # A file that names the schema is checked even when its fields are all wrong.
    (repo / "cvmkeys/typo.yaml").write_text(
        "# yaml-language-server: $schema=../schemas/bindings.schema.json\nregoin: gz\n", encoding="utf-8"
    )
    typo = _run_entry(repo, "cvmkeys/typo.yaml")
    assert typo.returncode == 1 and "cvmkeys/typo.yaml:2:1:" in typo.stdout + typo.stderr


def test_the_hook_passes_on_this_repository() -> None:
    """What pre-commit would run here (the tracked files it selects, through the entry)
    succeeds. The recipes in examples/ci/github/ match by name (cvmkeys-*.yml) outside
    .github/, so there the content test is what leaves them alone."""
    from pre_commit.commands.run import Classifier, filter_by_include_exclude

    hook = _hook()
    tracked = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True)
    cwd = Path.cwd()
    os.chdir(ROOT)
    try:
        classifier = Classifier(tracked.stdout.split())
        names = filter_by_include_exclude(classifier.filenames, str(hook["files"]), str(hook["exclude"]))
        selected = sorted(classifier.by_types(names, ["yaml"], [], []))
    finally:
        os.chdir(cwd)
    assert "examples/bindings.yaml" in selected
    recipes = [name for name in selected if name.startswith("examples/ci/")]
    assert recipes
    skipped = _run_entry(ROOT, *recipes)
    assert skipped.returncode == 0 and not skipped.stdout + skipped.stderr
    result = _run_entry(ROOT, *selected)
    assert result.returncode == 0, result.stdout + result.stderr


# --------------------------------------------------------------------------- pre-commit try-repo


@pytest.fixture(scope="module")
def pre_commit_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One pre-commit cache for the module: the hook's environment is built once."""
    return tmp_path_factory.mktemp("pre-commit-home")


def _try_repo(repo: Path, home: Path) -> subprocess.CompletedProcess[str]:
    pre_commit = Path(sys.executable).parent / "pre-commit"
    if not pre_commit.exists():
        pytest.skip("pre-commit is not installed (pip install -e '.[test]')")
    env = {"PRE_COMMIT_HOME": str(home), "NO_COLOR": "1", "PRE_COMMIT_COLOR": "never"}
    return run_command(
        [str(pre_commit), "try-repo", str(ROOT), "cvmkeys-validate", "--all-files", "--color", "never"],
        cwd=repo,
        env=env,
        timeout=600,
    )


@pytest.mark.slow
def test_try_repo_fails_a_bad_file_at_its_line_and_leaves_ci_files_alone(
    tmp_path: Path, pre_commit_home: Path
) -> None:
    if shutil.which("git") is None:
        pytest.skip("git is not installed")
    bad = _try_repo(_scratch_repo(tmp_path / "bad", BAD_DESIRED), pre_commit_home)
    output = bad.stdout + bad.stderr
    assert bad.returncode == 1, output
    assert "cvmkeys/ap-guangzhou.yaml:7:9: 'ins-bad' is not a valid instance ID" in output
    assert "1 problem found" in output
    report = output[output.index("cvmkeys validate...") :]  # the hook's own output
    for untouched in (".github/", ".gitlab-ci.yml", "deploy/bindings.yaml", "'on' is read as a boolean"):
        assert untouched not in report, untouched
    good = _try_repo(_scratch_repo(tmp_path / "good", GOOD_DESIRED), pre_commit_home)
    assert good.returncode == 0, good.stdout + good.stderr
    assert "cvmkeys validate" in good.stdout and "Passed" in good.stdout


# --------------------------------------------------------------------------- the README snippet


def test_readme_snippet_pins_nothing_that_does_not_exist() -> None:
    text = README.read_text(encoding="utf-8")
    start = text.index("## pre-commit")
    section = text[start : text.index("\n## ", start + 1)]
    assert "rev: v0.1.0" not in section
    assert "commit SHA" in section and "- id: cvmkeys-validate" in section
    tags = subprocess.run(["git", "tag", "--list"], cwd=ROOT, capture_output=True, text=True, check=False)
    for line in section.splitlines():
        if line.strip().startswith("rev:"):
            rev = line.split(":", 1)[1].strip()
            assert rev.startswith("<") or rev in tags.stdout.split(), rev
