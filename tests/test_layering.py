"""Architecture rules, checked on the source: the pure core and the renderers do no I/O, and
only the CLI prints or exits (design.md: "Pure core", "only the CLI prints, prompts or exits")."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "reconciler"
PURE = ["core", "render"]
# Modules a pure layer must not import: network, clocks, processes, our I/O layers.
FORBIDDEN_FOR_PURE = {
    "httpx",
    "socket",
    "subprocess",
    "time",
    "random",
    "secrets",
    "threading",
    "signal",
    "typer",
    "reconciler.cloud.client",
    "reconciler.cloud.observe",
    "reconciler.execute",
    "reconciler.emulator",
    "reconciler.cli",
    "reconciler.connect",
    "reconciler.desired",
}


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


def _calls(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    return {
        node.func.id
        for node in ast.walk(tree)
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
    }


def _modules(*layers: str) -> list[Path]:
    return sorted(p for layer in layers for p in (PACKAGE / layer).glob("*.py"))


@pytest.mark.parametrize("path", _modules(*PURE), ids=lambda p: f"{p.parent.name}/{p.name}")
def test_pure_layers_import_no_io(path: Path) -> None:
    bad = {
        name
        for name in _imports(path)
        if any(name == f or name.startswith(f + ".") for f in FORBIDDEN_FOR_PURE)
    }
    assert not bad, f"{path.name} imports {sorted(bad)}"
    assert not _calls(path) & {"open", "print", "input", "exit"}


@pytest.mark.parametrize(
    "path",
    [p for p in PACKAGE.rglob("*.py") if p.name != "cli.py" and "emulator" not in p.parts],
    ids=lambda p: str(p.relative_to(PACKAGE)),
)
def test_only_the_cli_prints_or_exits(path: Path) -> None:
    calls = _calls(path)
    assert "print" not in calls and "input" not in calls, f"{path} prints"
    assert "typer" not in {n.split(".")[0] for n in _imports(path)}, f"{path} uses typer"
