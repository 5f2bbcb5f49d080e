"""Architecture rules: the layering as import-linter contracts (``[tool.importlinter]`` in
pyproject.toml, run here with ``lint-imports``), only the CLI prints or exits, and start-up
imports only what a command uses (checked in a fresh interpreter)."""

from __future__ import annotations

import ast
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "reconciler"


def test_import_contracts_hold() -> None:
    lint = shutil.which("lint-imports", path=str(Path(sys.executable).parent)) or shutil.which("lint-imports")
    assert lint is not None, "import-linter is in the test extra: pip install -e '.[test]'"
    done = subprocess.run([lint], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "0 broken" in done.stdout and "3 kept" in done.stdout


def _calls_and_imports(path: Path) -> tuple[set[str], set[str]]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    calls = {n.func.id for n in ast.walk(tree) if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)}
    imports: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imports.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            imports.add(node.module)
    return calls, imports


@pytest.mark.parametrize(
    "path",
    [p for p in PACKAGE.rglob("*.py") if "cli" not in p.parts and "emulator" not in p.parts],
    ids=lambda p: str(p.relative_to(PACKAGE)),
)
def test_only_the_cli_prints_or_exits(path: Path) -> None:
    calls, imports = _calls_and_imports(path)
    assert "print" not in calls and "input" not in calls, f"{path} prints"
    assert "typer" not in {n.split(".")[0] for n in imports}, f"{path} uses typer"


_PROBE = """
import json, sys
from typer.testing import CliRunner
before = set(sys.modules)
from reconciler.cli import app
result = CliRunner().invoke(app, sys.argv[1:], env={"NO_COLOR": "1"})
print(json.dumps({"code": result.exit_code, "out": result.stdout,
                  "modules": sorted(m for m in sys.modules if m not in before)}))
"""


def _imported(*args: str) -> tuple[int, set[str]]:
    """Run ``cvmkeys ARGS`` in a fresh interpreter; its exit code and the modules it imported
    (besides those the test runner itself needs)."""
    done = subprocess.run(
        [sys.executable, "-c", _PROBE, *args], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    data = json.loads(done.stdout.strip().splitlines()[-1])
    return data["code"], {m.split(".")[0] for m in data["modules"]} | set(data["modules"])


def test_version_imports_no_network_rendering_schema_or_yaml_library() -> None:
    code, modules = _imported("--version")
    assert code == 0
    assert not modules & {"httpx", "rich", "jsonschema", "yaml", "pydantic"}, sorted(modules)


def test_validate_imports_neither_httpx_nor_the_emulator(tmp_path: Path) -> None:
    desired = tmp_path / "bindings.yaml"
    desired.write_text("version: 1\nregion: ap-guangzhou\nkeys: {}\n", encoding="utf-8")
    code, modules = _imported("validate", str(desired))
    assert code == 0
    assert "httpx" not in modules and "pydantic" not in modules
    assert not any(m.startswith("reconciler.emulator.") and m != "reconciler.emulator.cli" for m in modules)
