"""Folder searches stay inside the folders given; only regular files are read, and boundedly.

Issue 11, item 8 of "Why": symlinks out of the folder, symlinked sub-folders, a stray ``jobs:``
that made a desired file be skipped, a FIFO that hung ``validate``, ``/dev/zero``. Also the
per-file ``missing_instances`` opt-out, ``account`` and open-ended region names as loaded.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from pathlib import Path

import pytest
from support import run_cli

from reconciler.desired.loader import LoadedDesired, load_paths
from reconciler.errors import InputError
from reconciler.files import FileReadError, read_bounded

GOOD = "version: 1\nregion: gz\nkeys:\n  skey-aaaaaaaa:\n    instances: [ins-aaaaaaaa]\n"
SECRET = "hunter2-very-secret-token"


def problems(*paths: Path) -> list[str]:
    with pytest.raises(InputError) as info:
        load_paths(list(paths))
    return [str(p) for p in info.value.problems]


def loaded(*paths: Path) -> LoadedDesired:
    return load_paths(list(paths))


# --------------------------------------------------------------------------- symlinks


def test_a_yaml_symlink_to_a_file_outside_is_refused_without_quoting_it(tmp_path: Path) -> None:
    outside = tmp_path / "token.txt"
    outside.write_text(f"{SECRET}\n", encoding="utf-8")
    folder = tmp_path / "desired"
    folder.mkdir()
    (folder / "a.yaml").write_text(GOOD, encoding="utf-8")
    (folder / "b.yaml").symlink_to(outside)
    found = problems(folder)
    assert found == [f"{folder / 'b.yaml'}: symlink to a file outside {folder}: refused, not read "
                     "(a folder search reads only what is inside the folder)"]
    code, out, err = run_cli("validate", str(folder))
    assert code == 1 and "symlink to a file outside" in out + err
    assert SECRET not in out + err


def test_a_symlinked_folder_outside_is_refused(tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "x.yaml").write_text(GOOD, encoding="utf-8")
    folder = tmp_path / "desired"
    folder.mkdir()
    (folder / "a.yaml").write_text(GOOD.replace("aaaaaaaa", "bbbbbbbb"), encoding="utf-8")
    (folder / "shared").symlink_to(elsewhere)
    assert problems(folder) == [
        f"{folder / 'shared'}: symlink to a folder outside {folder}: refused, not read "
        "(a folder search reads only what is inside the folder)"
    ]


def test_a_symlinked_folder_inside_is_searched_and_loops_end(tmp_path: Path) -> None:
    folder = tmp_path / "desired"
    hidden = folder / ".real"
    hidden.mkdir(parents=True)
    (hidden / "team.yaml").write_text(GOOD, encoding="utf-8")
    (folder / "team").symlink_to(hidden)  # reached only through the link (dot folders are not searched)
    (folder / "loop").symlink_to(folder)  # a loop back to the top
    (hidden / "up").symlink_to(folder)
    result = loaded(folder)
    assert result.files == (str(folder / "team" / "team.yaml"),)
    assert list(result.by_region["ap-guangzhou"].keys) == ["skey-aaaaaaaa"]


def test_a_yaml_symlink_inside_the_folder_is_read_once(tmp_path: Path) -> None:
    folder = tmp_path / "desired"
    folder.mkdir()
    (folder / "a.yaml").write_text(GOOD, encoding="utf-8")
    (folder / "alias.yaml").symlink_to(folder / "a.yaml")
    assert len(loaded(folder).files) == 1


def test_a_broken_yaml_symlink_is_a_problem(tmp_path: Path) -> None:
    folder = tmp_path / "desired"
    folder.mkdir()
    (folder / "a.yaml").write_text(GOOD, encoding="utf-8")
    (folder / "gone.yaml").symlink_to(tmp_path / "nowhere.yaml")
    assert problems(folder) == [f"{folder / 'gone.yaml'}: broken symlink (or a symlink loop): not read"]


# --------------------------------------------------------------------------- what is skipped


def test_a_desired_file_with_a_stray_jobs_field_is_an_error_not_skipped(tmp_path: Path) -> None:
    folder = tmp_path / "desired"
    folder.mkdir()
    (folder / "a.yaml").write_text("version: 1\nregion: gz\nscope: account\njobs: {}\n", encoding="utf-8")
    (folder / "b.yaml").write_text("region: gz\nstages: [plan]\n", encoding="utf-8")
    assert problems(folder) == [
        f"{folder / 'a.yaml'}:4:1: unknown field 'jobs' (allowed: version, region, scope, keys, "
        "instances, protected, safety, missing_instances, account, disruption)",
        f"{folder / 'b.yaml'}:1:1: missing required field 'version' (add 'version: 1')",
        f"{folder / 'b.yaml'}:2:1: unknown field 'stages' (allowed: version, region, scope, keys, "
        "instances, protected, safety, missing_instances, account, disruption)",
    ]


def test_real_ci_and_fleet_files_are_still_skipped(tmp_path: Path) -> None:
    folder = tmp_path / "desired"
    folder.mkdir()
    (folder / "a.yaml").write_text(GOOD, encoding="utf-8")
    workflow = "name: ci\non: push\njobs:\n  plan: {runs-on: x}\n"
    (folder / "workflow.yml").write_text(workflow, encoding="utf-8")
    (folder / "gitlab.yml").write_text("stages: [plan]\nplan:\n  script: [x]\n", encoding="utf-8")
    (folder / "fleet.yaml").write_text("credentials: []\nregions: {}\n", encoding="utf-8")
    result = loaded(folder)
    assert result.files == (str(folder / "a.yaml"),)
    assert sorted(result.skipped_kinds) == ["CI pipeline file", "CI pipeline file", "emulator fleet file"]


# --------------------------------------------------------------------------- only regular files


def _within(seconds: float, work: Callable[[], object]) -> None:
    """Run ``work`` in a thread; fail (instead of hanging the suite) if it takes too long."""
    failure: list[BaseException] = []

    def run() -> None:
        try:
            work()
        except BaseException as error:  # re-raised below, in the test's thread
            failure.append(error)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), "hung"
    if failure:
        raise failure[0]


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")
def test_a_fifo_named_yaml_is_refused_without_hanging(tmp_path: Path) -> None:
    folder = tmp_path / "desired"
    folder.mkdir()
    (folder / "a.yaml").write_text(GOOD, encoding="utf-8")
    os.mkfifo(folder / "x.yaml")
    seen: list[list[str]] = []
    _within(10, lambda: seen.append(problems(folder)))
    assert seen == [[f"{folder / 'x.yaml'}: is a named pipe (FIFO), not a regular file: not read"]]
    _within(10, lambda: seen.append(problems(folder / "x.yaml")))  # named explicitly: the same
    assert seen[1] == [f"{folder / 'x.yaml'}: is a named pipe (FIFO), not a regular file: not read"]


@pytest.mark.skipif(not Path("/dev/zero").exists(), reason="needs /dev/zero")
def test_dev_zero_is_refused_not_read() -> None:
    assert problems(Path("/dev/zero")) == ["/dev/zero: is a character device, not a regular file: not read"]


def test_read_bounded_reads_regular_files_up_to_the_limit(tmp_path: Path) -> None:
    path = tmp_path / "f.bin"
    path.write_bytes(b"x" * 100)
    assert read_bounded(path, 100, "file") == b"x" * 100
    with pytest.raises(FileReadError) as info:
        read_bounded(path, 99, "plan file", display="plan.json")
    assert [str(p) for p in info.value.problems] == ["plan.json: plan file is larger than the 99 bytes limit"]
    with pytest.raises(FileReadError) as info:
        read_bounded(tmp_path, 10, "plan file")
    assert [p.message for p in info.value.problems] == ["is a directory"]
    with pytest.raises(FileReadError) as info:
        read_bounded(tmp_path / "absent", 10, "plan file")
    assert [p.message for p in info.value.problems] == ["no such file or directory"]


# --------------------------------------------------------------------------- new fields


def test_missing_instances_warn_applies_to_the_instances_of_the_files_that_say_it(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text(
        "version: 1\nregion: gz\nmissing_instances: warn\nkeys:\n"
        "  skey-aaaaaaaa: {instances: [ins-aaaaaaaa, ins-cccccccc]}\n",
        encoding="utf-8",
    )
    (tmp_path / "b.yaml").write_text(
        "version: 1\nregion: gz\nkeys:\n  skey-bbbbbbbb: {instances: [ins-bbbbbbbb, ins-cccccccc]}\n",
        encoding="utf-8",
    )
    desired = loaded(tmp_path).by_region["ap-guangzhou"]
    # ins-cccccccc is also named by b.yaml, which did not opt out: its absence stays an error.
    assert desired.missing_instances_warn == frozenset({"ins-aaaaaaaa"})


def test_account_is_loaded_and_files_of_a_region_must_agree(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text(GOOD + "account: '100012345678'\n", encoding="utf-8")
    assert loaded(tmp_path / "a.yaml").by_region["ap-guangzhou"].account == "100012345678"
    (tmp_path / "b.yaml").write_text(
        "version: 1\nregion: ap-guangzhou\naccount: '200012345678'\n", encoding="utf-8"
    )
    assert problems(tmp_path) == [
        f"{tmp_path / 'b.yaml'}:3:10: account '200012345678' differs from account '100012345678' at "
        f"{tmp_path / 'a.yaml'}:6:10: all files for region ap-guangzhou must name the same account"
    ]
    (tmp_path / "b.yaml").write_text("version: 1\nregion: gz\naccount: 200012345678\n", encoding="utf-8")
    assert problems(tmp_path / "b.yaml") == [
        f"{tmp_path / 'b.yaml'}:3:10: 'account' must be a string, got an integer (200012345678); "
        "quote it if you mean the text"
    ]


def test_a_new_region_name_is_accepted_with_a_warning_and_a_typo_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "a.yaml"
    path.write_text(GOOD.replace("region: gz", "region: eu-paris"), encoding="utf-8")
    result = loaded(path)
    assert list(result.by_region) == ["eu-paris"]
    assert [str(w) for w in result.warnings] == [
        f"{path}:2:9: region 'eu-paris' is not one this version of cvmkeys knows: used as written "
        "(check the spelling if the API rejects it)"
    ]
    assert "1 warning" in result.summary()
    path.write_text(GOOD.replace("region: gz", "region: ap-guangzho"), encoding="utf-8")
    assert problems(path) == [f"{path}:2:9: unknown region 'ap-guangzho'; did you mean 'ap-guangzhou'?"]
