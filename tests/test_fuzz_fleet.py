"""Fuzzing the emulator's fleet loader (``FleetState.from_file``, which ``--emulator FLEET`` and
``cvmkeys emulator serve`` use): random bytes, random text, fleet-shaped documents with random
values, real fleet files mutated byte by byte, and the hostile files of
``tests/data/hostile/fleet/``.

For every input: a ``FleetState`` or an ``InputError`` whose problems name the file (with a
line and column wherever the text has a place to point at), never another exception, within a
bounded time. What loads is a consistent world: every binding joins a key and an instance of
its region.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support import ARBITRARY_INPUT, check_placed, mutations

from reconciler.emulator.state import FleetState
from reconciler.errors import InputError

HERE = Path(__file__).resolve().parent
HOSTILE = HERE / "data" / "hostile" / "fleet"
EXAMPLE = HERE.parent / "examples" / "fleet.yaml"
SETTINGS = settings(
    max_examples=int(os.environ.get("CVMKEYS_HYPOTHESIS_EXAMPLES", "60")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
EXAMPLE_TEXT = EXAMPLE.read_text(encoding="utf-8")
# The same fleet as one JSON document (as bench/fleetgen.py writes fleets).
WRITTEN_TEXT = json.dumps(FleetState.from_file(EXAMPLE, persist=False).to_data(), indent=1)


def load(path: Path, data: bytes) -> FleetState | InputError:
    path.write_bytes(data)
    start = time.perf_counter()
    try:
        state = FleetState.from_file(path, persist=False)
    except InputError as error:
        check_placed(error, path)
        return error
    finally:
        assert time.perf_counter() - start < 5
    for region in state.regions:
        instances = set(state.instance_ids(region))
        keys = set(state.key_ids(region))
        assert all(k in keys and i in instances for k, i in state.bindings(region))
    return state


@pytest.fixture
def scratch(tmp_path: Path) -> Path:
    return tmp_path / "fleet.yaml"


@pytest.mark.parametrize("kind", sorted(ARBITRARY_INPUT))
@SETTINGS
@given(data=st.data())
def test_arbitrary_input(scratch: Path, kind: str, data: st.DataObject) -> None:
    load(scratch, data.draw(ARBITRARY_INPUT[kind]))


_values: st.SearchStrategy[Any] = st.recursive(
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(-5, 1000),
        st.floats(allow_nan=True),
        st.text(max_size=10),
        st.sampled_from(
            ["ins-1a2b3c4d", "ins-5e6f7a8b", "skey-3glfot13", "gz", "centos", "ins-\uff11a2b3c4d"]
        ),
    ),
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.dictionaries(
            st.sampled_from(["id", "name", "os", "status", "bound", "lan_ip", "wan_ips", "created", "x"]),
            children,
            max_size=5,
        ),
    ),
    max_leaves=20,
)
_instance = st.fixed_dictionaries(
    {
        "id": st.sampled_from(["ins-1a2b3c4d", "ins-5e6f7a8b", "ins-1a2b3c4d\n", "INS-1"]),
        "name": st.one_of(st.text(max_size=8), _values),
        "os": st.sampled_from(["centos7.6x86_64", "Windows Server 2019", ""]),
        "status": st.one_of(st.integers(-1, 1001), _values),
    },
    optional={"lan_ip": _values, "wan_ips": _values, "created": _values, "zone": _values},
)
_key = st.fixed_dictionaries(
    {"id": st.sampled_from(["skey-3glfot13", "skey-8x9y0z12", "skey-3glfot13 "]), "name": _values},
    optional={"bound": st.one_of(st.lists(st.sampled_from(["ins-1a2b3c4d", "ins-5e6f7a8b"])), _values)},
)
fleets = st.fixed_dictionaries(
    {
        "credentials": st.one_of(
            st.just([{"secret_id": "AKIDFUZZ", "secret_key": "fuzz-secret"}]), st.lists(_values, max_size=2)
        ),
        "regions": st.one_of(
            st.dictionaries(
                st.sampled_from(["gz", "ap-guangzhou", "sh", "mars-1"]),
                st.one_of(
                    st.fixed_dictionaries(
                        {"instances": st.lists(_instance, max_size=3), "keys": st.lists(_key, max_size=3)}
                    ),
                    _values,
                ),
                max_size=2,
            ),
            _values,
        ),
    }
)


@SETTINGS
@given(fleet=fleets, as_json=st.booleans())
def test_fleet_shaped_documents(scratch: Path, fleet: dict[str, Any], as_json: bool) -> None:
    try:
        text = json.dumps(fleet, ensure_ascii=False) if as_json else yaml.safe_dump(fleet, allow_unicode=True)
    except ValueError:
        return  # NaN in JSON: the generator's problem, not an input
    load(scratch, text.encode("utf-8", "surrogatepass"))


# YAML's and JSON's syntax, a NUL and a number too long to read.
TOKENS = [b"&a ", b"*a", b"[", b"{", b"\n  ", b": ", b", ", b'"', b"\x00", b"!!", b"9" * 30]


@SETTINGS
@given(data=mutations(EXAMPLE_TEXT.encode(), TOKENS, repeat=200, copies=5))
def test_the_example_fleet_mutated(scratch: Path, data: bytes) -> None:
    load(scratch, data)


@SETTINGS
@given(data=mutations(WRITTEN_TEXT.encode(), TOKENS, repeat=200, copies=5))
def test_a_written_fleet_mutated(scratch: Path, data: bytes) -> None:
    load(scratch, data)


def test_the_unmutated_bases_load(scratch: Path) -> None:
    for text in (EXAMPLE_TEXT, WRITTEN_TEXT):
        assert isinstance(load(scratch, text.encode()), FleetState)


EXPECTED = {
    "duplicate-keys.json": "duplicate key 'gz'",
    "float-status.json": "is not of type 'integer'",
    "laughs-in-bound.yaml": "aliases expand to more than 100000 nodes",
    "long-number.yaml": "cannot read '99999",
    "lookalike-ids.yaml": "'ins-0000000\uff11' does not match",
    "nul-byte.yaml": "control character U+0000 (NUL) is not allowed",
    "python-tag.yaml": "YAML tag '!!python/object/apply:os.system' is not allowed",
    "recursive-alias.yaml": "recursive alias",
}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_hostile_fleet_files(name: str, scratch: Path) -> None:
    assert {p.name for p in HOSTILE.iterdir()} == set(EXPECTED)
    result = load(scratch, (HOSTILE / name).read_bytes())
    assert isinstance(result, InputError)
    first = result.problems[0]
    assert first.line is not None and EXPECTED[name] in first.message, str(first)


@pytest.mark.parametrize("as_json", [True, False])
@pytest.mark.parametrize("depth", [900, 10_000])
def test_deep_nesting_is_refused_at_its_place(scratch: Path, as_json: bool, depth: int) -> None:
    nested = "[" * depth + "]" * depth
    if as_json:
        text = '{"credentials": [{"secret_id": "a", "secret_key": "b"}], "regions": ' + nested + "}"
    else:
        text = "credentials: [{secret_id: a, secret_key: b}]\nregions: " + nested + "\n"
    result = load(scratch, text.encode())
    assert isinstance(result, InputError)
    assert result.problems[0].line is not None
