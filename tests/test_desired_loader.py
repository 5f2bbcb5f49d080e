"""The desired-state loader: good files become the right ``Desired``; every bad file gives
exact ``FILE:LINE:COL: message`` problems, with both the C and the pure-Python YAML composer."""

from __future__ import annotations

import hashlib
import time
from pathlib import Path

import pytest
import yaml

from reconciler.desired import yaml_nodes
from reconciler.desired.loader import MAX_PROBLEMS_PER_FILE, LoadedDesired, load_paths
from reconciler.errors import InputError
from reconciler.model import Desired, DesiredKey, Location, SafetyLimits, Scope, SourceFile

REPO = Path(__file__).resolve().parent.parent
GOOD = REPO / "tests" / "data" / "good"

LOADERS = ["pure"] + (["c"] if hasattr(yaml, "CSafeLoader") else [])


@pytest.fixture(params=LOADERS)
def loader(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Run the test with the C composer and again with the pure-Python fallback."""
    name: str = request.param
    monkeypatch.setattr(yaml_nodes, "LOADER", yaml.CSafeLoader if name == "c" else yaml.SafeLoader)
    return name


@pytest.fixture
def here(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A scratch folder that is also the working directory, so problems name ``f.yaml``."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


def problems(*paths: str | Path) -> list[str]:
    with pytest.raises(InputError) as caught:
        load_paths([Path(path) for path in paths])
    return [str(problem) for problem in caught.value.problems]


def position(text: str, needle: str, nth: int = 0) -> tuple[int, int]:
    """1-based line and column of the ``nth`` occurrence of ``needle`` in ``text``."""
    offset = -1
    for _ in range(nth + 1):
        offset = text.index(needle, offset + 1)
    line = text.count("\n", 0, offset) + 1
    return line, offset - (text.rfind("\n", 0, offset) + 1) + 1


# --------------------------------------------------------------------------- good files


def test_example_loads_to_the_expected_desired_state(loader: str) -> None:
    path = REPO / "examples" / "bindings.yaml"
    text = path.read_text(encoding="utf-8")
    display = str(path)

    def at(needle: str, nth: int = 0) -> Location:
        return Location(display, *position(text, needle, nth))

    loaded = load_paths([path])

    assert loaded.files == (display,)
    assert list(loaded.by_region) == ["ap-guangzhou"]
    expected = Desired(
        region="ap-guangzhou",
        scope=Scope.KEYS,
        keys={
            "skey-3glfot13": DesiredKey(
                "skey-3glfot13",
                frozenset({"ins-1a2b3c4d", "ins-5e6f7a8b"}),
                "ci-deploy",
                at("skey-3glfot13:"),
            ),
            "skey-8x9y0z12": DesiredKey("skey-8x9y0z12", frozenset(), "old-laptop", at("skey-8x9y0z12:")),
            "skey-5k6l7m8n": DesiredKey(
                "skey-5k6l7m8n",
                frozenset({"ins-9c8d7e6f", "ins-99999999"}),
                "ops-shared",
                at("skey-5k6l7m8n:"),
            ),
        },
        protected_keys=frozenset(),
        protected_instances=frozenset({"ins-99999999"}),
        extra_instances=frozenset(),
        safety=SafetyLimits(max_unbinds=50, max_unbind_percent=30.0),
        sources=(SourceFile(display, hashlib.sha256(path.read_bytes()).hexdigest()),),
        instance_locations={
            "ins-1a2b3c4d": Location(display, *_after_dash(text, "ins-1a2b3c4d")),
            "ins-5e6f7a8b": Location(display, *_after_dash(text, "ins-5e6f7a8b")),
            "ins-9c8d7e6f": at("ins-9c8d7e6f, ins-99999999"),
            "ins-99999999": at("ins-99999999]"),
        },
    )
    assert loaded.by_region["ap-guangzhou"] == expected
    assert list(loaded.by_region["ap-guangzhou"].keys) == [
        "skey-3glfot13",
        "skey-8x9y0z12",
        "skey-5k6l7m8n",
    ]
    assert loaded.summary() == "1 file, 1 region, 3 keys, 4 instances: valid"


def _after_dash(text: str, instance_id: str) -> tuple[int, int]:
    line, column = position(text, f"- {instance_id}")
    return line, column + 2


def test_examples_folder_loads_and_skips_the_fleet_file() -> None:
    loaded = load_paths([REPO / "examples"])
    assert "ap-guangzhou" in loaded.by_region
    assert all(not name.endswith("fleet.yaml") for name in loaded.files)
    if (REPO / "examples" / "fleet.yaml").exists():
        assert str(REPO / "examples" / "fleet.yaml") in loaded.skipped  # examples/ci/ is skipped too


def test_instances_scope_example_uses_a_short_region_code() -> None:
    loaded = load_paths([REPO / "examples" / "instances-scope.yaml"])
    desired = loaded.by_region["ap-shanghai"]
    assert desired.scope is Scope.INSTANCES
    assert desired.extra_instances == {"ins-0c0d0e0f"}
    assert desired.declared_instances == {"ins-0c0d0e0f", "ins-9c8d7e6f"}


def test_a_folder_is_searched_recursively_and_files_of_one_region_merge() -> None:
    loaded = load_paths([GOOD])
    names = [Path(name).relative_to(GOOD).as_posix() for name in loaded.files]
    # Sorted; ``.hidden/`` is skipped; ``notes.txt`` is not YAML; the fleet file is skipped.
    assert names == ["gz-ops.yml", "gz-web.yaml", "nested/sh.yaml"]
    assert loaded.skipped == (str(GOOD / "fleet.yaml"),)
    assert sorted(loaded.by_region) == ["ap-guangzhou", "ap-shanghai"]
    gz = loaded.by_region["ap-guangzhou"]
    assert set(gz.keys) == {"skey-3glfot13", "skey-5k6l7m8n", "skey-8x9y0z12"}
    assert gz.keys["skey-3glfot13"].location == Location(str(GOOD / "gz-web.yaml"), 5, 3)
    assert gz.protected_keys == {"skey-5k6l7m8n"}
    assert gz.protected_instances == {"ins-99999999"}
    # The stricter of each limit: 10 from gz-ops.yml, 30 % from gz-web.yaml.
    assert gz.safety == SafetyLimits(max_unbinds=10, max_unbind_percent=30.0)
    assert [Path(source.path).name for source in gz.sources] == ["gz-ops.yml", "gz-web.yaml"]
    # ins-1a2b3c4d is listed first in gz-ops.yml (loaded first), then in gz-web.yaml.
    assert gz.instance_locations["ins-1a2b3c4d"].file == str(GOOD / "gz-ops.yml")
    assert loaded.summary() == (
        "3 files, 2 regions, 4 keys, 6 instances: valid (1 emulator fleet file skipped)"
    )


def test_aliases_share_lists_and_yaml_scalars_stay_text_where_text_is_expected(
    here: Path, loader: str
) -> None:
    (here / "f.yaml").write_text(
        "version: 1.0\n"
        "region: gz\n"
        "keys:\n"
        "  skey-aaaaaaaa:\n"
        "    name: 2024-01-01\n"  # a YAML timestamp, read as the text written
        "    instances: &web [ins-1a2b3c4d, ins-5e6f7a8b]\n"
        "  skey-bbbbbbbb:\n"
        "    name: '123'\n"
        "    instances: *web\n"
        "safety: {max_unbinds: 3.0}\n",
        encoding="utf-8",
    )
    desired = load_paths([Path("f.yaml")]).by_region["ap-guangzhou"]
    assert desired.keys["skey-aaaaaaaa"].name == "2024-01-01"
    assert desired.keys["skey-bbbbbbbb"].name == "123"
    assert desired.keys["skey-bbbbbbbb"].instances == {"ins-1a2b3c4d", "ins-5e6f7a8b"}
    assert desired.safety.max_unbinds == 3 and isinstance(desired.safety.max_unbinds, int)
    assert desired.instance_locations["ins-5e6f7a8b"] == Location("f.yaml", 6, 36)


def test_a_byte_order_mark_is_allowed(here: Path) -> None:
    (here / "f.yaml").write_bytes(b"\xef\xbb\xbfversion: 1\nregion: gz\n")
    loaded = load_paths([Path("f.yaml")])
    assert loaded.by_region["ap-guangzhou"].keys == {}
    assert loaded.by_region["ap-guangzhou"].scope is Scope.KEYS


def test_a_file_named_twice_is_loaded_once(here: Path) -> None:
    (here / "f.yaml").write_text("version: 1\nregion: gz\nkeys: {skey-aaaaaaaa: {instances: []}}\n")
    loaded = load_paths([Path("."), Path("f.yaml")])
    assert loaded.files == ("f.yaml",)


# --------------------------------------------------------------------------- bad files

HEAD = "version: 1\nregion: gz\n"

BAD_CASES: dict[str, tuple[str, list[str]]] = {
    "duplicate top-level key": (
        "version: 1\nregion: gz\nregion: sh\n",
        [
            "f.yaml:3:1: duplicate key 'region': at lines 2 and 3 of this mapping "
            "(YAML would silently keep only the last)"
        ],
    ),
    "duplicate key ID": (
        HEAD + "keys:\n  skey-aaaaaaaa: {instances: []}\n  skey-aaaaaaaa: {instances: []}\n",
        [
            "f.yaml:5:3: duplicate key 'skey-aaaaaaaa': at lines 4 and 5 of this mapping "
            "(YAML would silently keep only the last)"
        ],
    ),
    "instance twice under one key": (
        HEAD + "keys:\n  skey-aaaaaaaa:\n    instances: [ins-1a2b3c4d, ins-1a2b3c4d]\n",
        [
            "f.yaml:5:31: 'ins-1a2b3c4d' is listed twice under key 'skey-aaaaaaaa': "
            "at line 5, columns 17 and 31"
        ],
    ),
    "instance twice in protected": (
        HEAD + "protected:\n  instances:\n    - ins-1a2b3c4d\n    - ins-1a2b3c4d\n",
        ["f.yaml:6:7: 'ins-1a2b3c4d' is listed twice under 'protected.instances': at lines 5 and 6"],
    ),
    "bad IDs": (
        HEAD
        + "keys:\n  skey-XYZ: {instances: []}\n  skey-aaaaaaaa:\n    instances: [ins-XYZ, 7, "
        + '"ins-1a2b3c4d\\n"]\nprotected: {keys: [skey-1]}\n',
        [
            "f.yaml:4:3: 'skey-XYZ' is not a valid key ID (expected skey- followed by 8 "
            "lower-case letters or digits)",
            "f.yaml:6:17: 'ins-XYZ' is not a valid instance ID (expected ins- followed by 8 "
            "lower-case letters or digits)",
            "f.yaml:6:26: item 2 of 'instances' must be a string, got an integer (7); "
            "quote it if you mean the text",
            "f.yaml:6:29: 'ins-1a2b3c4d\\n' is not a valid instance ID (expected ins- followed "
            "by 8 lower-case letters or digits)",
            "f.yaml:7:20: 'skey-1' is not a valid key ID (expected skey- followed by 8 "
            "lower-case letters or digits)",
        ],
    ),
    "unknown fields": (
        HEAD + "keys:\n  skey-aaaaaaaa:\n    instnces: []\nsafty: {}\n",
        [
            "f.yaml:5:5: unknown field 'instnces' (allowed: name, instances)",
            "f.yaml:5:5: missing required field 'instances' (use 'instances: []' for a key "
            "that must be bound nowhere)",
            "f.yaml:6:1: unknown field 'safty' (allowed: version, region, scope, keys, "
            "instances, protected, safety, missing_instances, account, disruption)",
        ],
    ),
    "missing version and region": (
        "keys: {}\n",
        [
            "f.yaml:1:1: missing required field 'version' (add 'version: 1')",
            "f.yaml:1:1: missing required field 'region'",
        ],
    ),
    "wrong types": (
        "version: 2\nregion: gz\nscope: all\nkeys:\n  skey-aaaaaaaa:\n    name: yes\n"
        "    instances: ins-1a2b3c4d\n  skey-bbbbbbbb:\nprotected: []\n"
        "safety: {max_unbinds: true, max_unbind_percent: -1}\n",
        [
            "f.yaml:1:10: unsupported version 2: this tool reads version 1",
            "f.yaml:3:8: 'scope' must be one of keys, instances, account; got a string ('all')",
            "f.yaml:6:11: 'name' must be a string, got a boolean (true); YAML reads "
            "yes/no/on/off/true/false as booleans, quote it",
            "f.yaml:7:16: 'instances' must be a list, got a string ('ins-1a2b3c4d'); "
            "write [ins-1a2b3c4d] for a list of one",
            "f.yaml:8:17: key 'skey-bbbbbbbb' must be a mapping with 'instances' (and "
            "optionally 'name'), got null",
            "f.yaml:9:12: 'protected' must be a mapping, got a list",
            "f.yaml:10:23: 'max_unbinds' must be a whole number, got a boolean (true)",
            "f.yaml:10:49: 'max_unbind_percent' must be at least 0, got -1",
        ],
    ),
    "version as a string": (
        "version: '1'\nregion: gz\n",
        ["f.yaml:1:10: 'version' must be the number 1, got a string ('1')"],
    ),
    "misspelt region": (
        "version: 1\nregion: ap-guangzou\n",
        ["f.yaml:2:9: unknown region 'ap-guangzou'; did you mean 'ap-guangzhou'?"],
    ),
    "unknown region": (
        "version: 1\nregion: 42\n",
        [
            "f.yaml:2:9: 'region' must be a long region name such as ap-guangzhou "
            "(lower-case words joined by '-') or an API 2.0 short code such as gz; got an integer (42)"
        ],
    ),
    "region that is not a name": (
        "version: 1\nregion: Mars_1\n",
        [
            "f.yaml:2:9: unknown region 'Mars_1': expected a long region name such as ap-guangzhou "
            "(lower-case words joined by '-') or an API 2.0 short code such as gz (known: ap-bangkok, "
            "ap-beijing, ap-beijing-fsi, ap-chengdu, ap-chongqing, ap-guangzhou, ap-guangzhou-open, "
            "ap-hongkong, ap-jakarta, ap-mumbai, ap-nanjing, ap-seoul, ap-shanghai, ap-shanghai-fsi, "
            "ap-shenzhen-fsi, ap-singapore, ap-tokyo, eu-frankfurt, eu-moscow, na-ashburn, "
            "na-siliconvalley, na-toronto, sa-saopaulo)"
        ],
    ),
    "percentage NaN": (
        HEAD + "safety: {max_unbind_percent: .nan}\n",
        ["f.yaml:3:30: 'max_unbind_percent' must be a number, got .nan"],
    ),
    "empty name": (
        HEAD + "keys: {skey-aaaaaaaa: {name: '', instances: []}}\n",
        ["f.yaml:3:30: 'name' must not be empty"],
    ),
    "non-string keys": (
        HEAD + "1: one\non: two\n? [a]\n: three\nnull: four\n",
        [
            "f.yaml:3:1: field names must be strings, but '1' is read as an integer; "
            "quote it if you mean the text",
            "f.yaml:4:1: field names must be strings, but 'on' is read as a boolean; "
            "quote it if you mean the text",
            "f.yaml:5:3: field names must be strings, got a list",
            "f.yaml:7:1: field names must be strings, but 'null' is read as null; "
            "quote it if you mean the text",
        ],
    ),
    "merge key": (
        HEAD + "keys:\n  skey-aaaaaaaa:\n    <<: {instances: []}\n",
        [
            "f.yaml:5:5: merge keys (<<) are not supported: write the fields out",
            "f.yaml:5:5: missing required field 'instances' (use 'instances: []' for a key "
            "that must be bound nowhere)",
        ],
    ),
    "bad explicit int": (
        HEAD + "safety: {max_unbinds: !!int ten}\n",
        [
            "f.yaml:3:23: cannot read 'ten' as !!int",
            "f.yaml:3:23: 'max_unbinds' must be a whole number, got a string ('ten')",
        ],
    ),
    "other YAML tags": (
        HEAD + "keys: !!set {skey-aaaaaaaa}\nprotected: {instances: !custom [ins-1a2b3c4d]}\n",
        [
            "f.yaml:3:7: YAML tag '!!set' is not allowed: use plain mappings, lists and scalars",
            "f.yaml:3:27: key 'skey-aaaaaaaa' must be a mapping with 'instances' (and "
            "optionally 'name'), got null",
            "f.yaml:4:24: YAML tag '!custom' is not allowed: use plain mappings, lists and scalars",
        ],
    ),
    "empty file": ("", ["f.yaml:1:1: empty file: expected a mapping with version, region, keys"]),
    "comments only": (
        "# nothing here\n\n",
        ["f.yaml:1:1: empty file: expected a mapping with version, region, keys"],
    ),
    "document marker only": (
        "---\n",
        ["f.yaml:1:1: empty file: expected a mapping with version, region, keys"],
    ),
    "top level is a list": (
        "- version: 1\n",
        ["f.yaml:1:1: the top level must be a mapping with version, region, keys; got a list"],
    ),
    "top level is text": (
        "hello\n",
        ["f.yaml:1:1: the top level must be a mapping with version, region, keys; got the text 'hello'"],
    ),
    "recursive alias": (
        HEAD + "keys: &k {skey-aaaaaaaa: *k}\n",
        ["f.yaml:3:7: recursive alias: an anchored node contains an alias to itself"],
    ),
    "deep nesting": (
        HEAD + "x: " + "[" * 70 + "]" * 70 + "\n",
        [f"f.yaml:3:{3 + 65}: nested deeper than 64 levels"],
    ),
    "instance with no key allowed but allowed for a key": (
        HEAD + "scope: instances\nkeys:\n  skey-aaaaaaaa: {instances: [ins-1a2b3c4d]}\n"
        "instances: [ins-5e6f7a8b, ins-1a2b3c4d]\n",
        [
            "f.yaml:6:27: 'ins-1a2b3c4d' is listed under 'instances' (owned, no key allowed) "
            "but key 'skey-aaaaaaaa' allows it at f.yaml:5:31"
        ],
    ),
}


@pytest.mark.parametrize("case", list(BAD_CASES), ids=list(BAD_CASES))
def test_bad_file_gives_exact_problems(here: Path, loader: str, case: str) -> None:
    text, expected = BAD_CASES[case]
    (here / "f.yaml").write_text(text, encoding="utf-8")
    assert problems("f.yaml") == expected


def test_yaml_syntax_error_points_at_the_mark(here: Path, loader: str) -> None:
    (here / "f.yaml").write_text(HEAD + "keys: {skey-aaaaaaaa: {instances: [ins-1a2b3c4d}}\n")
    [problem] = problems("f.yaml")
    if loader == "c":
        assert problem == (
            "f.yaml:3:48: invalid YAML: did not find expected ',' or ']' "
            "(while parsing a flow sequence at line 3, column 35)"
        )
    else:
        assert problem.startswith("f.yaml:3:48: invalid YAML: ")
        assert "flow sequence" in problem


def test_two_documents_in_one_file(here: Path, loader: str) -> None:
    (here / "f.yaml").write_text(HEAD + "---\n" + HEAD)
    [problem] = problems("f.yaml")
    assert problem.startswith("f.yaml:3:1: invalid YAML: ")
    assert "document" in problem


def test_python_tags_never_construct_objects(here: Path, loader: str) -> None:
    (here / "f.yaml").write_text(
        HEAD + "keys: !!python/object/apply:os.system ['touch pwned']\nx: !!python/name:os.system ''\n"
    )
    assert problems("f.yaml") == [
        "f.yaml:3:7: YAML tag '!!python/object/apply:os.system' is not allowed: "
        "use plain mappings, lists and scalars",
        "f.yaml:3:7: 'keys' must be a mapping, got a list",
        "f.yaml:4:1: unknown field 'x' (allowed: version, region, scope, keys, instances, protected, "
        "safety, missing_instances, account, disruption)",
        "f.yaml:4:4: YAML tag '!!python/name:os.system' is not allowed: use plain mappings, "
        "lists and scalars",
    ]
    assert not (here / "pwned").exists()


def test_billion_laughs_fails_fast(here: Path, loader: str) -> None:
    lines = ['a0: &a0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    lines += [f"a{n}: &a{n} [" + ", ".join([f"*a{n - 1}"] * 9) + "]" for n in range(1, 10)]
    (here / "f.yaml").write_text("\n".join(lines) + "\n")
    started = time.perf_counter()
    found = problems("f.yaml")
    assert time.perf_counter() - started < 0.5
    # The uses of a4 (anchored at line 5, column 5) are the first to pass the budget.
    assert found == [
        "f.yaml:5:5: anchors and aliases expand to more than 100000 nodes (a 'billion "
        "laughs' document?); the alias of the anchor defined here is used too often"
    ]


def test_not_utf8_points_at_the_bad_byte(here: Path) -> None:
    (here / "f.yaml").write_bytes(b"version: 1\nregion: gz\n# caf\xc3\xa9 \xff\n")
    assert problems("f.yaml") == [
        "f.yaml:3:8: not UTF-8 text: byte 0xff cannot be decoded (invalid start byte)"
    ]


def test_control_character_points_at_it(here: Path) -> None:
    (here / "f.yaml").write_text("version: 1\nregion: gz\n# é \x1b[31m\n", encoding="utf-8")
    assert problems("f.yaml") == [
        "f.yaml:3:5: control character U+001B (ESC) is not allowed in YAML (is this a binary file?)"
    ]


def test_files_over_the_size_limit_are_refused_unread(here: Path) -> None:
    with (here / "f.yaml").open("wb") as handle:  # sparse: costs no disk or time
        handle.truncate(yaml_nodes.MAX_FILE_BYTES + 1)
    assert problems("f.yaml") == ["f.yaml: file is larger than the 32 MiB limit"]


def test_missing_paths_empty_folders_and_named_fleet_files(here: Path) -> None:
    (here / "empty").mkdir()
    (here / "fleet.yaml").write_text("regions: {}\ncredentials: []\n")
    assert problems("nope.yaml", "empty", "fleet.yaml") == [
        "empty: no *.yaml or *.yml files in this directory",
        "fleet.yaml:1:1: this is an emulator fleet file (it has 'regions' and 'credentials'), "
        "not a desired-state file",
        "nope.yaml: no such file or directory",
    ]


def test_a_folder_with_only_a_fleet_file_is_an_error(here: Path) -> None:
    (here / "d").mkdir()
    (here / "d" / "fleet.yaml").write_text("regions: {}\ncredentials: []\n")
    assert problems("d") == ["d: no desired-state files found (only emulator fleet files)"]


def test_no_paths_at_all() -> None:
    with pytest.raises(InputError) as caught:
        load_paths([])
    assert [str(p) for p in caught.value.problems] == ["cvmkeys: no desired-state files or directories given"]


def test_files_of_one_region_must_agree_and_not_share_keys(here: Path) -> None:
    (here / "a.yaml").write_text("version: 1\nregion: gz\nkeys:\n  skey-aaaaaaaa: {instances: []}\n")
    (here / "b.yaml").write_text(
        "version: 1\nregion: ap-guangzhou\nscope: account\nkeys:\n  skey-aaaaaaaa: {instances: []}\n"
    )
    (here / "c.yaml").write_text("version: 1\nregion: ap-guangzhou\nscope: account\n")
    assert problems(".") == [
        "b.yaml:3:8: scope 'account' differs from scope 'keys' at a.yaml (the default): "
        "all files for region ap-guangzhou must have the same scope",
        "b.yaml:5:3: key 'skey-aaaaaaaa' is declared in two files for region ap-guangzhou: "
        "also at a.yaml:4:3",
        "c.yaml:3:8: scope 'account' differs from scope 'keys' at a.yaml (the default): "
        "all files for region ap-guangzhou must have the same scope",
    ]


def test_problems_are_sorted_by_file_then_position_and_capped(here: Path) -> None:
    bad = "".join(f"    - ins-{n:08d}X\n" for n in range(MAX_PROBLEMS_PER_FILE + 20))
    (here / "b.yaml").write_text(HEAD + "keys:\n  skey-aaaaaaaa:\n    instances:\n" + bad)
    (here / "a.yaml").write_text("version: 1\nregion: gz\nbogus: 1\nversion: 1\n")
    found = problems("b.yaml", "a.yaml")
    assert found[:2] == [
        "a.yaml:3:1: unknown field 'bogus' (allowed: version, region, scope, keys, instances, "
        "protected, safety, missing_instances, account, disruption)",
        "a.yaml:4:1: duplicate key 'version': at lines 1 and 4 of this mapping (YAML would "
        "silently keep only the last)",
    ]
    b_lines = found[2:]
    assert len(b_lines) == MAX_PROBLEMS_PER_FILE + 1
    assert b_lines[0].startswith("b.yaml:6:7: 'ins-00000000X' is not a valid instance ID")
    assert b_lines[-1] == "b.yaml: ... and 20 more problems not shown"


# --------------------------------------------------------------------------- speed


def _big_document(keys: int, per_key: int) -> str:
    lines = [HEAD.rstrip("\n"), "keys:"]
    for k in range(keys):
        lines.append(f"  skey-{k:08d}:")
        lines.append(f"    name: key-{k}")
        lines.append("    instances:")
        lines.extend(f"      - ins-{(k * per_key + i) % 99991:08x}" for i in range(per_key))
    return "\n".join(lines) + "\n"


def _best_cpu(function: object, runs: int = 3) -> float:
    times = []
    for _ in range(runs):
        started = time.process_time()
        function()  # type: ignore[operator]
        times.append(time.process_time() - started)
    return min(times)


@pytest.mark.skipif(not hasattr(yaml, "CSafeLoader"), reason="needs libyaml")
def test_load_and_validate_cost_at_most_three_plain_yaml_loads(here: Path) -> None:
    text = _big_document(keys=200, per_key=50)  # 10,000 instance entries
    (here / "big.yaml").write_text(text)
    baseline = _best_cpu(lambda: yaml.load(text, Loader=yaml.CSafeLoader))
    ours = _best_cpu(lambda: load_paths([Path("big.yaml")]))
    loaded = load_paths([Path("big.yaml")])
    assert sum(len(key.instances) for key in loaded.by_region["ap-guangzhou"].keys.values()) == 10_000
    assert ours <= 3 * baseline, (ours, baseline)


# --------------------------------------------------------------------------- types


def test_loaded_desired_summary_counts() -> None:
    loaded = LoadedDesired(files=(), by_region={})
    assert loaded.summary() == "0 files, 0 regions, 0 keys, 0 instances: valid"


FLEET = frozenset({"regions", "credentials"})


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('{"credentials": [{"secret_id": "x"}], "regions": {"gz": {}}}', True),
        (
            "regions:\n  gz:\n    instances: [{id: ins-1}]\n    keys: {credentials: 1}\ncredentials: []\n",
            True,
        ),
        ("regions: {}\n", False),
        ("fleet:\n  regions: {}\n  credentials: []\n", False),
        ("version: 1\nregion: gz\n# regions: credentials:\n", False),
        ("? [regions]\n: 1\ncredentials: 2\nregions: 3\n", True),
        ("- regions\n- credentials\n", False),
        ("regions: [\ncredentials: 1\n", False),
        ("regions credentials", False),
    ],
)
def test_fleet_files_are_recognised_from_their_top_level_keys(loader: str, text: str, expected: bool) -> None:
    assert yaml_nodes.has_top_level_keys(text, FLEET) is expected


def test_directory_search_skips_ci_pipelines_but_explicit_names_are_checked(tmp_path: Path) -> None:
    (tmp_path / "github.yml").write_text("on: [pull_request]\njobs:\n  plan: {runs-on: ubuntu-latest}\n")
    (tmp_path / "gitlab-ci.yml").write_text("stages: [plan, apply]\n")
    (tmp_path / "bindings.yaml").write_bytes((REPO / "examples" / "bindings.yaml").read_bytes())
    loaded = load_paths([tmp_path])
    assert loaded.files == (str(tmp_path / "bindings.yaml"),)
    assert loaded.summary().endswith("(2 CI pipeline files skipped)")
    with pytest.raises(InputError) as raised:
        load_paths([tmp_path / "github.yml"])
    assert any("unknown field" in p.message for p in raised.value.problems)
