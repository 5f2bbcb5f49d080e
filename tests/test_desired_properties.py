"""Property tests: whatever bytes or text a file holds, the loader succeeds or raises
``InputError`` with positioned problems, never any other exception."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support import ARBITRARY_INPUT, check_placed

from reconciler.desired.loader import LoadedDesired, load_paths
from reconciler.errors import InputError

SETTINGS = settings(
    max_examples=int(os.environ.get("CVMKEYS_HYPOTHESIS_EXAMPLES", "60")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)

# Pieces of desired-state YAML, to reach deeper than random text does.
TOKENS = [
    "version: 1\n",
    "region: gz\n",
    "region: ap-guangzhou\n",
    "scope: instances\n",
    "keys:\n",
    "  skey-3glfot13:\n",
    "    instances: [",
    "ins-1a2b3c4d",
    "ins-XYZ",
    "]",
    "    name: x\n",
    "instances:",
    "protected:",
    "safety: {max_unbinds: ",
    "max_unbind_percent: ",
    ".nan",
    "&a ",
    "*a",
    "- ",
    "{",
    "}",
    "[",
    ": ",
    ", ",
    "\n",
    "  ",
    "? ",
    "!!python/object:os.system ",
    "!!set ",
    "<<: ",
    "'",
    '"',
    "1",
    "-1",
    "~",
    "\t",
    "---\n",
    "...\n",
    "#",
    "%YAML 1.1\n",
    "\\u0000",
    "é",
    "\x00",
    "\x1b",
    "\ufeff",
]


@pytest.fixture(scope="module")
def scratch() -> Iterator[Path]:
    with tempfile.TemporaryDirectory() as folder:
        yield Path(folder) / "f.yaml"


def _load(path: Path, data: bytes) -> LoadedDesired | InputError:
    path.write_bytes(data)
    try:
        return load_paths([path])
    except InputError as error:
        check_placed(error, path)
        return error


@pytest.mark.parametrize("kind", sorted(ARBITRARY_INPUT))
@SETTINGS
@given(data=st.data())
def test_arbitrary_input(scratch: Path, kind: str, data: st.DataObject) -> None:
    _load(scratch, data.draw(ARBITRARY_INPUT[kind]))


@SETTINGS
@given(parts=st.lists(st.sampled_from(TOKENS), max_size=60))
def test_yaml_like_token_soup(scratch: Path, parts: list[str]) -> None:
    _load(scratch, "".join(parts).encode("utf-8"))


_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(),
    st.text(max_size=20),
    st.sampled_from(["ins-1a2b3c4d", "skey-3glfot13", "gz", "keys", "1", "ins-", ""]),
)
_values: st.SearchStrategy[Any] = st.recursive(
    _scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=5),
        st.dictionaries(
            st.sampled_from(
                [
                    "version",
                    "region",
                    "scope",
                    "keys",
                    "instances",
                    "protected",
                    "safety",
                    "name",
                    "max_unbinds",
                    "max_unbind_percent",
                    "skey-3glfot13",
                    "skey-8x9y0z12",
                    "x",
                ]
            ),
            children,
            max_size=6,
        ),
    ),
    max_leaves=25,
)


@SETTINGS
@given(
    document=st.dictionaries(
        st.sampled_from(["version", "region", "scope", "keys", "instances", "protected", "safety", "extra"]),
        _values,
        max_size=8,
    )
)
def test_structured_documents(scratch: Path, document: dict[str, Any]) -> None:
    result = _load(scratch, yaml.safe_dump(document, allow_unicode=True).encode("utf-8"))
    if isinstance(result, LoadedDesired):
        # Only a document that the schema accepts loads; check what it loaded to.
        assert document["version"] == 1
        [desired] = result.by_region.values()
        assert set(desired.keys) == set(document.get("keys") or {})
