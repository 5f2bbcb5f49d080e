"""``cvmkeys validate`` end to end: the real CLI, as a subprocess and through Typer's runner."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from support import run_command
from typer.testing import CliRunner

from reconciler.cli import app

REPO = Path(__file__).resolve().parent.parent
ID_HELP = "followed by 8 lower-case letters or digits"

# One line per problem in tests/data/bad, in the order the CLI prints them.
EXPECTED_BAD = [
    f"tests/data/bad/bad-ids.yaml:4:3: 'skey-XYZ' is not a valid key ID (expected skey- {ID_HELP})",
    f"tests/data/bad/bad-ids.yaml:8:9: 'ins-XYZ' is not a valid instance ID (expected ins- {ID_HELP})",
    f"tests/data/bad/bad-ids.yaml:9:9: 'INS-1A2B3C4D' is not a valid instance ID (expected ins- {ID_HELP})",
    f"tests/data/bad/bad-ids.yaml:10:9: 'ins-1a2b3c4d5' is not a valid instance ID (expected ins- {ID_HELP})",
    f"tests/data/bad/bad-ids.yaml:12:10: 'skey-1' is not a valid key ID (expected skey- {ID_HELP})",
    "tests/data/bad/billion-laughs.yaml:6:4: anchors and aliases expand to more than 100000 nodes "
    "(a 'billion laughs' document?); the alias of the anchor defined here is used too often",
    "tests/data/bad/binary-garbage.yaml:1:1: not UTF-8 text: byte 0x89 cannot be decoded "
    "(invalid start byte)",
    "tests/data/bad/duplicate-keys.yaml:7:3: duplicate key 'skey-3glfot13': at lines 5 and 7 of "
    "this mapping (YAML would silently keep only the last)",
    "tests/data/bad/duplicate-keys.yaml:12:9: 'ins-1a2b3c4d' is listed twice under key "
    "'skey-8x9y0z12': at lines 11 and 12",
    "tests/data/bad/empty.yaml:1:1: empty file: expected a mapping with version, region, keys",
    "tests/data/bad/key-in-two-files-b.yaml:4:3: key 'skey-5k6l7m8n' is declared in two files for "
    "region ap-guangzhou: also at tests/data/bad/key-in-two-files-a.yaml:4:3",
    "tests/data/bad/nul-byte.yaml:4:8: control character U+0000 (NUL) is not allowed in YAML "
    "(is this a binary file?)",
    "tests/data/bad/python-tag.yaml:3:7: YAML tag '!!python/object/apply:os.system' is not "
    "allowed: use plain mappings, lists and scalars",
    "tests/data/bad/python-tag.yaml:3:7: 'keys' must be a mapping, got a list",
    "tests/data/bad/syntax-error.yaml:3:48: invalid YAML: did not find expected ',' or ']' "
    "(while parsing a flow sequence at line 3, column 35)",
    "tests/data/bad/unknown-fields.yaml:5:5: unknown field 'instnces' (allowed: name, instances)",
    "tests/data/bad/unknown-fields.yaml:5:5: missing required field 'instances' (use "
    "'instances: []' for a key that must be bound nowhere)",
    "tests/data/bad/unknown-fields.yaml:7:3: unknown field 'max_unbind' (allowed: max_unbinds, "
    "max_unbind_percent, max_stops)",
    "tests/data/bad/unknown-fields.yaml:8:1: unknown field 'regoin' (allowed: version, region, "
    "scope, keys, instances, protected, safety, missing_instances, account, disruption)",
    "tests/data/bad/wrong-types.yaml:1:10: 'version' must be the number 1, got a string ('1')",
    "tests/data/bad/wrong-types.yaml:2:9: unknown region 'ap-guangzou'; did you mean 'ap-guangzhou'?",
    "tests/data/bad/wrong-types.yaml:3:8: 'scope' must be one of keys, instances, account; got a "
    "string ('everything')",
    "tests/data/bad/wrong-types.yaml:6:11: 'name' must be a string, got an integer (123); quote it "
    "if you mean the text",
    "tests/data/bad/wrong-types.yaml:7:16: 'instances' must be a list, got a string "
    "('ins-1a2b3c4d'); write [ins-1a2b3c4d] for a list of one",
    "tests/data/bad/wrong-types.yaml:8:17: key 'skey-8x9y0z12' must be a mapping with "
    "'instances' (and optionally 'name'), got null",
    "tests/data/bad/wrong-types.yaml:10:16: 'max_unbinds' must be at least 0, got -1",
    "tests/data/bad/wrong-types.yaml:11:23: 'max_unbind_percent' must be at most 100, got 130",
]


def _run(*args: str) -> tuple[subprocess.CompletedProcess[str], float]:
    env = {"COLUMNS": "80", "NO_COLOR": "1"}
    started = time.perf_counter()
    completed = run_command([sys.executable, "-m", "reconciler", *args], cwd=REPO, env=env, timeout=60)
    return completed, time.perf_counter() - started


def test_validate_bad_folder_as_a_subprocess() -> None:
    completed, elapsed = _run("validate", "tests/data/bad")
    assert completed.returncode == 1
    lines = completed.stderr.splitlines()
    assert lines == [*EXPECTED_BAD, f"Error: {len(EXPECTED_BAD)} problems found"]
    assert "Traceback" not in completed.stderr + completed.stdout
    assert completed.stdout == ""
    # Interpreter start-up and imports included; the loading itself takes milliseconds.
    assert elapsed < 2.0


def test_validate_bad_folder_in_process() -> None:
    started = time.perf_counter()
    result = CliRunner().invoke(app, ["validate", str(REPO / "tests" / "data" / "bad")])
    elapsed = time.perf_counter() - started
    assert result.exit_code == 1
    prefix = str(REPO) + os.sep
    lines = [line.replace(prefix, "") for line in result.stderr.splitlines()]
    assert lines[:-1] == EXPECTED_BAD
    assert "Traceback" not in result.output
    assert elapsed < 1.0


def test_validate_examples_exits_zero() -> None:
    completed, _ = _run("validate", "examples/")
    assert completed.returncode == 0, completed.stderr
    assert completed.stdout.strip().endswith(": valid") or "valid (" in completed.stdout
    assert completed.stderr == ""


def test_validate_good_folder_prints_the_summary() -> None:
    result = CliRunner().invoke(app, ["validate", str(REPO / "tests" / "data" / "good")])
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == (
        "3 files, 2 regions, 4 keys, 6 instances: valid (1 emulator fleet file skipped)"
    )
