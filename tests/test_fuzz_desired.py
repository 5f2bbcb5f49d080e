"""Fuzzing the desired-state loader beyond ``test_desired_properties.py`` (random bytes, text,
token soup, structured documents): IDs made of arbitrary Unicode, Unicode tricks one by one,
byte mutations of the real example file, deep nesting, very many problems, big files, and the
hostile files of ``tests/data/hostile/desired/``.

Every input loads or raises ``InputError`` whose problems point at the offending place
(``FILE:LINE:COL``), one line each, in bounded time. An ID is accepted exactly when it is
``ins-``/``skey-`` and 8 lower-case ASCII letters or digits, nothing before or after.
"""

from __future__ import annotations

import os
import re
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support import check_placed, mutations

from reconciler import ids
from reconciler.desired.loader import LoadedDesired, load_paths
from reconciler.errors import InputError

HERE = Path(__file__).resolve().parent
HOSTILE = HERE / "data" / "hostile" / "desired"
EXAMPLE = (HERE.parent / "examples" / "bindings.yaml").read_bytes()
SETTINGS = settings(
    max_examples=int(os.environ.get("CVMKEYS_HYPOTHESIS_EXAMPLES", "60")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)


def load(path: Path, data: bytes, *, seconds: float = 5.0) -> LoadedDesired | InputError:
    path.write_bytes(data)
    # CPU seconds of this process, not wall time: a loaded machine stretches the one, hardly
    # the other, and the loader is single-threaded and does no waiting.
    start = time.process_time()
    try:
        return load_paths([path])
    except InputError as error:
        check_placed(error, path)
        return error
    finally:
        assert time.process_time() - start < seconds


@pytest.fixture
def scratch(tmp_path: Path) -> Path:
    return tmp_path / "bindings.yaml"


def quoted(value: str) -> str:
    """``value`` as a YAML double-quoted scalar: printable ASCII as it is, the rest escaped (so
    the file is ASCII and every character, NUL or astral, reaches the loader as written)."""
    out = []
    for char in value:
        if " " <= char <= "~" and char not in '"\\':
            out.append(char)
        else:
            out.append(f"\\U{ord(char):08x}")
    return '"' + "".join(out) + '"'


def _file_with_instance(written: str) -> bytes:
    """A valid file but for one instance ID, written as a YAML double-quoted scalar (line 5)."""
    return f"version: 1\nregion: gz\nkeys:\n  skey-3glfot13:\n    instances: [{written}]\n".encode(
        "utf-8", "surrogatepass"
    )


@SETTINGS
@given(value=st.text(max_size=16))
def test_an_instance_id_is_accepted_exactly_when_it_is_one(scratch: Path, value: str) -> None:
    result = load(scratch, _file_with_instance(quoted(value)))
    if ids.is_instance_id(value):
        assert isinstance(result, LoadedDesired)
    else:
        assert isinstance(result, InputError)
        assert (result.problems[0].line, result.problems[0].column) == (5, 17), result.problems


@SETTINGS
@given(value=st.from_regex(r"\A(ins|INS|skey)-[0-9a-zA-Z\u0400-\u04ff\uff10-\uff19]{7,9}\s?\Z"))
def test_near_miss_instance_ids(scratch: Path, value: str) -> None:
    result = load(scratch, _file_with_instance(quoted(value)))
    assert isinstance(result, LoadedDesired) is ids.is_instance_id(value)


@SETTINGS
@given(value=st.text(max_size=16))
def test_a_key_id_is_accepted_exactly_when_it_is_one(scratch: Path, value: str) -> None:
    text = f"version: 1\nregion: gz\nkeys:\n  {quoted(value)}:\n    instances: []\n"
    result = load(scratch, text.encode("utf-8", "surrogatepass"))
    if ids.is_key_id(value):
        assert isinstance(result, LoadedDesired)
    else:
        assert isinstance(result, InputError)
        assert result.problems[0].line == 4, result.problems


TRICKS = {
    "fullwidth digit": "ins-\uff11a2b3c4d",
    "Cyrillic a": "ins-1\u04302b3c4d",
    "zero-width joiner": "ins-1a2b\u200d3c4d",
    "zero-width space": "ins-1a2b3c4d\u200b",
    "right-to-left override": "ins-\u202e1a2b3c4d",
    "combining accent": "ins-1a2b3c4d\u0301",
    "trailing newline": "ins-1a2b3c4d\n",
    "no-break space": "ins-1a2b3c4d\u00a0",
    "NUL": "ins-1a2b3c4d\x00",
    "mathematical digit": "ins-\U0001d7cfa2b3c4d",
    "line separator": "ins-1a2b3c4d\u2028",
    "query": "ins-1a2b3c4d&Action=BindInstanceKey",
    "encoded query": "ins-1a2b3c4d%26Action%3DBindInstanceKey",
    "CRLF": "ins-1a2b3c4d\r\nX: 1",
}


@pytest.mark.parametrize("trick", sorted(TRICKS))
@pytest.mark.parametrize("where", ["instance", "key", "protected key"])
def test_each_unicode_trick_is_refused_at_its_place(scratch: Path, trick: str, where: str) -> None:
    value = TRICKS[trick]
    if where == "key":
        value = "skey" + value[3:]
        text = f"version: 1\nregion: gz\nkeys:\n  {quoted(value)}:\n    instances: []\n"
        place = (4, 3)
    elif where == "protected key":
        value = "skey" + value[3:]
        text = f"version: 1\nregion: gz\nprotected:\n  keys: [{quoted(value)}]\n"
        place = (4, 10)
    else:
        text = _file_with_instance(quoted(value)).decode()
        place = (5, 17)
    result = load(scratch, text.encode())
    assert isinstance(result, InputError)
    assert [(p.line, p.column) for p in result.problems] == [place], [str(p) for p in result.problems]
    assert "is not a valid" in result.problems[0].message


# YAML's syntax, and bytes that are not UTF-8 or not allowed in it.
TOKENS = [b"&a ", b"*a", b"<<: ", b"[", b"\n- ", b": ", b"\x00", b"!!", b"\t", b"\xff"]


@SETTINGS
@given(data=mutations(EXAMPLE, TOKENS, repeat=300, copies=4))
def test_the_example_mutated(scratch: Path, data: bytes) -> None:
    load(scratch, data)


def test_the_unmutated_example_loads(scratch: Path) -> None:
    assert isinstance(load(scratch, EXAMPLE), LoadedDesired)


EXPECTED = {
    # file: (problems, first problem as "LINE:COL: start of message")
    "crafted-ids.yaml": (7, "7:9: 'ins-1a2b3c4d&Action=BindInstanceKey' is not a valid instance ID"),
    "escape-sequences-in-name.yaml": (0, ""),
    "infinite-percent.yaml": (3, "4:23: 'max_unbind_percent' must be at most 100"),
    "laughs-in-id-lists.yaml": (1, "13:16: anchors and aliases expand to more than 100000 nodes"),
    "long-number.yaml": (2, "4:16: cannot read '999"),
    "recursive-alias.yaml": (1, "4:18: recursive alias"),
    "unicode-ids.yaml": (16, "7:9: 'ins-\uff11a2b3c4d' is not a valid instance ID"),
    "utf16.yaml": (1, "1:1: not UTF-8 text"),
}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_hostile_desired_files(name: str, scratch: Path) -> None:
    assert {p.name for p in HOSTILE.iterdir()} == set(EXPECTED)
    count, first = EXPECTED[name]
    result = load(scratch, (HOSTILE / name).read_bytes(), seconds=1.0)
    if count == 0:
        assert isinstance(result, LoadedDesired)
        return
    assert isinstance(result, InputError)
    assert len(result.problems) == count, [str(p) for p in result.problems]
    assert all(p.line is not None for p in result.problems)
    assert str(result.problems[0]).startswith(f"{scratch}:{first}"), str(result.problems[0])


@pytest.mark.parametrize(
    "body",
    [
        "keys: " + "[" * 10_000 + "]" * 10_000,
        "keys: " + "{a: " * 5_000 + "1" + "}" * 5_000,
        "keys:\n" + "".join(" " * n + "- \n" for n in range(1, 2_000)),
        "keys: " + "[" * 100,  # over MAX_DEPTH (64), under libyaml's limit, unclosed
        "keys: " + "[" * 100 + "]" * 100,
    ],
    ids=["flow-lists-10000", "flow-maps-5000", "block-2000", "unclosed-100", "lists-100"],
)
def test_deep_nesting_is_refused_at_its_place(scratch: Path, body: str) -> None:
    result = load(scratch, f"version: 1\nregion: gz\n{body}\n".encode(), seconds=1.0)
    assert isinstance(result, InputError)
    assert result.problems[0].line is not None and result.problems[0].line >= 3


def test_very_many_problems_are_cut_and_cheap(scratch: Path) -> None:
    # 300,000 invalid keys (3 MB): used to take 80 s and 470 MB.
    text = "version: 1\nregion: gz\nkeys:\n" + "".join(f"  k{n}: 1\n" for n in range(300_000))
    result = load(scratch, text.encode(), seconds=10.0)
    assert isinstance(result, InputError)
    assert len(result.problems) == 101
    assert result.problems[0].message.startswith("more than 1,000 problems: stopped looking")
    assert re.fullmatch(r"\.\.\. and [\d,]+ more problems not shown", result.problems[-1].message)


@pytest.mark.parametrize("kind", ["comment", "scalar"])
def test_a_file_just_under_the_size_limit_is_read_in_bounded_time(scratch: Path, kind: str) -> None:
    size = 30 * 2**20
    filler = "#" + "a" * size if kind == "comment" else "x: '" + "a" * size + "'"
    result = load(scratch, f"version: 1\nregion: gz\n{filler}\n".encode(), seconds=10.0)
    if kind == "comment":
        assert isinstance(result, LoadedDesired)
    else:
        assert isinstance(result, InputError) and "unknown field 'x'" in result.problems[0].message


def test_a_50_mb_file_is_refused_unread(scratch: Path) -> None:
    data = b"version: 1\nregion: gz\nkeys:\n" + b"  skey-3glfot13: {instances: []}\n" * (50 * 2**20 // 33)
    result = load(scratch, data, seconds=1.0)
    assert isinstance(result, InputError)
    assert [str(p) for p in result.problems] == [f"{scratch}: file is larger than the 32 MiB limit"]
