"""Fuzzing the command line: random argument lists through the Typer app, and the 50 MB files
through the real ``cvmkeys`` process under a memory limit.

Any argv gives exit code 0, 1, 2 (usage, or ``--detailed-exitcode``'s "changes") or 3 (blocked
changes remain), never a traceback, never the "internal error" line that means a bug. No test
touches the network: the environment holds no credentials, so only ``--emulator`` (in-process)
ever connects. ``emulator serve`` (which serves until Ctrl-C), ``--install-completion`` (which
edits shell start-up files) and ``--debug`` (which asks for tracebacks) are left out.
"""

from __future__ import annotations

import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from reconciler.cli import app

HERE = Path(__file__).resolve().parent
EXAMPLES = HERE.parent / "examples"
HOSTILE = HERE / "data" / "hostile"
SETTINGS = settings(
    max_examples=int(os.environ.get("CVMKEYS_HYPOTHESIS_EXAMPLES", "60")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
ALLOWED_EXIT_CODES = {0, 1, 2, 3}

WORDS = [
    "validate", "plan", "show", "apply", "import", "emulator", "--help", "-h", "--version", "-v",
    "-vv", "--log-level", "DEBUG", "info", "loud", "--no-color", "--emulator", "--endpoint",
    "https://cvm.api.qcloud.com/v2/index.php", "http://example.com/v2/index.php",
    "http://127.0.0.1:1/v2/index.php", "ftp://x", "--format", "text", "markdown", "json", "yaml",
    "--out", "--detailed-exitcode", "--max-unbinds", "-1", "0", "5", "--max-unbind-percent",
    "101", "nan", "--rate-limit", "-5", "inf", "1e9", "--auto-approve", "--force",
    "--parallelism", "33", "--audit-log", "--region", "gz", "ap-guangzhou", "mars",
    "--keys", "skey-3glfot13", "skey-3glfot13&keyId=x", "--all", "--scope", "keys", "instances",
    "account", "--schema-ref", "--profile", "default", "../x", "--", "-", "",
]  # fmt: skip
# Stand-ins replaced by paths in a fresh folder for every example.
PATHS = ["@desired", "@fleet", "@plan", "@hostile-desired", "@hostile-plan", "@hostile-fleet",
         "@missing", "@folder", "@out", "@out-in-missing-folder", "/dev/null"]  # fmt: skip
LEFT_OUT = {"serve", "--install-completion", "--show-completion", "--debug"}
argvs = st.lists(
    st.one_of(st.sampled_from(WORDS), st.sampled_from(PATHS), st.text(max_size=12)), max_size=9
).filter(lambda argv: not LEFT_OUT & set(argv))

ENV: dict[str, str | None] = {
    "NO_COLOR": "1",
    "TENCENTCLOUD_SECRET_ID": None,
    "TENCENTCLOUD_SECRET_KEY": None,
    "TENCENTCLOUD_PROFILE": None,
    "TENCENTCLOUD_REGION": None,
}


def _world(folder: Path) -> dict[str, str]:
    """Fresh copies of what the arguments may name (apply may change the fleet)."""
    shutil.copy(EXAMPLES / "bindings.yaml", folder / "bindings.yaml")
    shutil.copy(EXAMPLES / "fleet.yaml", folder / "fleet.yaml")
    (folder / "sub").mkdir()
    runner = CliRunner()
    made = runner.invoke(
        app,
        ["plan", str(folder / "bindings.yaml"), "--emulator", str(folder / "fleet.yaml"), "--out",
         str(folder / "plan.json")],
        env={**ENV, "HOME": str(folder)},
    )  # fmt: skip
    assert made.exit_code == 0, made.output
    return {
        "@desired": str(folder / "bindings.yaml"),
        "@fleet": str(folder / "fleet.yaml"),
        "@plan": str(folder / "plan.json"),
        "@hostile-desired": str(HOSTILE / "desired" / "unicode-ids.yaml"),
        "@hostile-plan": str(HOSTILE / "plan" / "truncated.json"),
        "@hostile-fleet": str(HOSTILE / "fleet" / "laughs-in-bound.yaml"),
        "@missing": str(folder / "missing.yaml"),
        "@folder": str(folder / "sub"),
        "@out": str(folder / "out.json"),
        "@out-in-missing-folder": str(folder / "nope" / "out.json"),
    }


@SETTINGS
@given(argv=argvs)
def test_random_arguments_never_crash(argv: list[str]) -> None:
    with tempfile.TemporaryDirectory(prefix="cvmkeys-fuzz-") as tmp:
        folder = Path(tmp)
        paths = _world(folder)
        args = [paths.get(arg, arg) for arg in argv]
        start = time.perf_counter()
        result = CliRunner().invoke(app, args, env={**ENV, "HOME": str(folder)})
        assert time.perf_counter() - start < 10
    output = result.stdout + result.stderr
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert result.exit_code in ALLOWED_EXIT_CODES, (args, result.exit_code, output)
    assert "Traceback" not in output, (args, output)
    assert "internal error" not in output, (args, output)


@pytest.mark.parametrize(
    "argv",
    [
        ["plan", "@desired", "--emulator", "@fleet", "--format", "markdown", "--detailed-exitcode"],
        ["apply", "@plan"],
        ["apply", "@desired", "--emulator", "@fleet", "--auto-approve", "--format", "json"],
        ["show", "@plan", "--format", "json"],
        ["import", "--region", "gz", "--all", "--emulator", "@fleet", "--out", "@out"],
        ["validate", "@desired", "@folder"],
        ["plan", "@desired", "--emulator", "@hostile-fleet"],
        ["apply", "@hostile-plan"],
        ["-vv", "--log-level", "loud", "validate", "@desired"],
        ["plan", "@desired", "--emulator", "@fleet", "--out", "@out-in-missing-folder"],
    ],
)
def test_chosen_argument_lists(argv: list[str], tmp_path: Path) -> None:
    """A few meaningful lists, so that every command's own paths run whatever the fuzzer draws."""
    paths = _world(tmp_path)
    result = CliRunner().invoke(app, [paths.get(a, a) for a in argv], env={**ENV, "HOME": str(tmp_path)})
    output = result.stdout + result.stderr
    assert result.exit_code in ALLOWED_EXIT_CODES and "Traceback" not in output, output
    assert "internal error" not in output, output


# --------------------------------------------------------------------------- 50 MB files


def _limit_memory() -> None:  # pragma: no cover - runs in the child
    resource.setrlimit(resource.RLIMIT_AS, (1536 * 2**20, 1536 * 2**20))


def _children_cpu_seconds() -> float:
    """The CPU time (user and system) of this process's finished children so far."""
    used = resource.getrusage(resource.RUSAGE_CHILDREN)
    return used.ru_utime + used.ru_stime


def _fifty_mb(path: Path, unit: bytes, head: bytes = b"") -> None:
    with path.open("wb") as handle:
        handle.write(head)
        handle.write(unit * (50 * 2**20 // len(unit)))


@pytest.mark.parametrize("what", ["desired", "plan", "fleet-yaml", "fleet-json"])
def test_a_50_mb_file_gets_a_clean_error_in_bounded_time_and_memory(what: str, tmp_path: Path) -> None:
    big = tmp_path / ("big.json" if what == "plan" else "big.yaml")
    desired = tmp_path / "bindings.yaml"
    shutil.copy(EXAMPLES / "bindings.yaml", desired)
    if what == "desired":
        _fifty_mb(big, b"  skey-3glfot13: {instances: []}\n", b"version: 1\nregion: gz\nkeys:\n")
        argv = ["validate", str(big)]
    elif what == "plan":
        _fifty_mb(big, b'{"a": [1, 2, 3]}, ', b'{"format_version": "1.0", "x": [')
        argv = ["show", str(big)]
    elif what == "fleet-yaml":
        _fifty_mb(big, b"- {id: ins-1a2b3c4d, name: a, os: centos, status: 4}\n", b"regions:\n")
        argv = ["plan", str(desired), "--emulator", str(big)]
    else:
        _fifty_mb(big, b'"k": 1, ', b'{"credentials": [], "regions": {}, ')
        big.write_bytes(big.read_bytes() + b'"end": 0}\n')
        argv = ["plan", str(desired), "--emulator", str(big)]
    before = _children_cpu_seconds()
    done = subprocess.run(
        [sys.executable, "-m", "reconciler", *argv],
        capture_output=True,
        text=True,
        timeout=60,
        preexec_fn=_limit_memory,
        env={**os.environ, "NO_COLOR": "1", "HOME": str(tmp_path)},
        check=False,
    )
    # CPU seconds, not wall time: a loaded machine stretches the one, hardly the other (the hang
    # guard is the timeout). The bound is the one wall time had; the plan case uses about 6 s.
    cpu = _children_cpu_seconds() - before
    assert done.returncode == 1, done.stderr
    assert "Traceback" not in done.stderr and "internal error" not in done.stderr, done.stderr
    assert str(big) in done.stderr.splitlines()[0], done.stderr
    assert cpu < 20, cpu


@pytest.mark.parametrize(
    "argv",
    [["validate", "\x00"], ["plan", "x.yaml", "--out", "a\x00b"], ["emulator", "serve", "--fleet", "\x00"]],
)
def test_a_nul_byte_in_an_argument_is_a_usage_error(argv: list[str]) -> None:
    # Found by the fuzzer: click's path conversion raised ValueError('embedded null byte').
    result = CliRunner().invoke(app, argv, env=ENV)
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit)
    assert "NUL byte" in result.output
