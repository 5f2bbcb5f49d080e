"""The wheel ships the JSON Schemas and works without the source tree (issue 2 acceptance)."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_wheel_contains_the_schemas_and_validates_from_them(tmp_path: Path) -> None:
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", str(ROOT), "--no-deps", "-q", "-w", str(tmp_path)],
        check=True,
        capture_output=True,
    )
    (wheel,) = tmp_path.glob("cvmkeys-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for schema in ("bindings", "fleet", "plan", "result", "validation"):
        assert f"reconciler/_schemas/{schema}.schema.json" in names
        shipped = zipfile.ZipFile(wheel).read(f"reconciler/_schemas/{schema}.schema.json")
        assert shipped == (ROOT / "schemas" / f"{schema}.schema.json").read_bytes()

    unpacked = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(unpacked)
    # Run from an empty folder with only the unpacked wheel first on the path: no source tree.
    workdir = tmp_path / "elsewhere"
    workdir.mkdir()
    env = {"PYTHONPATH": str(unpacked), "PATH": "/usr/bin:/bin", "NO_COLOR": "1"}
    probe = subprocess.run(
        [
            sys.executable,
            "-c",
            "import reconciler, reconciler.schemas as s; print(reconciler.__file__);"
            "print(s.load_schema('bindings')['$id'])",
        ],
        cwd=workdir,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    assert probe.stdout.splitlines()[0].startswith(str(unpacked))
    result = subprocess.run(
        [sys.executable, "-m", "reconciler", "validate", str(ROOT / "examples")],
        cwd=workdir,
        env=env,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    assert "valid" in result.stdout
