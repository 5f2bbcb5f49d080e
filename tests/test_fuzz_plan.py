"""Fuzzing the saved-plan loader (``reconciler.core.document.load_plan``) and what reads a plan
after it: arbitrary text, arbitrary JSON, and real plans mutated at random (resealed or not).

For every input the result is a ``Plan`` or a ``PlanIntegrityError`` naming the file (with
``FILE:LINE:COL`` for JSON syntax errors), never another exception, in bounded time. The
properties that need no trust in the file hold for everything that loads:

* a change to the document that its digest was not recomputed for is refused;
* every binding a batch would unbind is a ``ready`` change, and appears once;
* every ID apply may send is an ID and nothing more (no newline, no query);
* ``check_sendable`` refuses what the client cannot send, before any request;
* the plan renders as text, Markdown and JSON, and writing it and reading it back gives it back.

The hostile files of ``tests/data/hostile/plan/`` go through ``cvmkeys show``.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import os
import re
import time
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_render_samples import full_plan
from typer.testing import CliRunner

from reconciler.cli import app
from reconciler.core.document import MAX_PLAN_DEPTH, canonical_digest, dump_plan
from reconciler.errors import PlanIntegrityError
from reconciler.execute.executor import check_sendable
from reconciler.model import ChangeStatus, Plan
from reconciler.planfile import load_plan
from reconciler.render.markdown import render_plan_markdown
from reconciler.render.text import render_plan_text

HOSTILE = Path(__file__).resolve().parent / "data" / "hostile" / "plan"
SETTINGS = settings(
    max_examples=int(os.environ.get("CVMKEYS_HYPOTHESIS_EXAMPLES", "60")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
BASE_TEXT = dump_plan(full_plan())
BASE = json.loads(BASE_TEXT)
BASE_DIGEST = canonical_digest(BASE)
ID_RE = re.compile(r"(skey|ins)-[a-z0-9]+")

# IDs and strings that try something: lookalikes, injections, invisible characters.
TRICKS = [
    "ins-1a2b3c4d\n",
    "ins-1a2b3c4d&Action=BindInstanceKey",
    "ins-1a2b3c4d%26Action%3DBindInstanceKey",
    "ins-\uff11a2b3c4d",
    "ins-1a2b\u200d3c4d",
    "ins-\u202e1a2b3c4d",
    "ins-abc",
    "ins-1a2b3c4d5e6f",
    "skey-3glfot13\n",
    "skey-3glfot13&keyId=skey-00000000",
    "skey-x",
    "ready",
    "blocked",
    "\udc80",
    "\x1b[2J",
    "",
]
_json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=12),
    st.sampled_from(TRICKS),
)
json_values: st.SearchStrategy[Any] = st.recursive(
    _json_scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=4), st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)


def _slots(data: Any, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every place in ``data`` that holds a value (a member or a list item)."""
    found = []
    if isinstance(data, dict):
        for key, value in data.items():
            found.append((*path, key))
            found.extend(_slots(value, (*path, key)))
    elif isinstance(data, list):
        for index, value in enumerate(data):
            found.append((*path, index))
            found.extend(_slots(value, (*path, index)))
    return found


def _parent(data: Any, path: tuple[Any, ...]) -> Any:
    for step in path[:-1]:
        data = data[step]
    return data


@st.composite
def mutated_plans(draw: st.DrawFn) -> tuple[dict[str, Any], bool]:
    """The sample plan with 1-3 random edits; resealed (digest recomputed) or not."""
    data = copy.deepcopy(BASE)
    for _ in range(draw(st.integers(1, 3))):
        slots = [s for s in _slots(data) if s[0] != "integrity"]
        path = draw(st.sampled_from(slots))
        parent, last = _parent(data, path), path[-1]
        action = draw(st.sampled_from(["replace", "trick", "delete", "copy", "add"]))
        if action == "replace":
            parent[last] = draw(json_values)
        elif action == "trick":
            parent[last] = draw(st.sampled_from(TRICKS))
        elif action == "delete":
            del parent[last]
        elif action == "copy":  # e.g. a batch or change duplicated, a blocked change made twice
            value = copy.deepcopy(parent[last])
            if isinstance(parent, list):
                parent.insert(draw(st.integers(0, len(parent))), value)
            else:
                parent[draw(st.sampled_from(sorted(parent)))] = value
        elif isinstance(parent, dict):
            parent[draw(st.text(max_size=10))] = draw(json_values)
    sealed = draw(st.booleans())
    if sealed:
        data["integrity"] = {"algorithm": "sha256", "digest": canonical_digest(data)}
    return data, sealed


def _text(data: Any) -> str:
    return json.dumps(data, ensure_ascii=False)


def _load(text: str) -> Plan | PlanIntegrityError:
    start = time.perf_counter()
    try:
        return load_plan(text, "plan.json")
    except PlanIntegrityError as error:
        assert error.message.startswith("plan.json"), error.message
        return error
    finally:
        assert time.perf_counter() - start < 5


def _check_loaded(plan: Plan) -> None:
    ready = {(c.key_id, c.instance_id) for c in plan.changes if c.status is ChangeStatus.READY}
    batched = [(k, iid) for b in plan.batches for k in b.key_ids for iid in b.instance_ids]
    assert set(batched) <= ready and len(batched) == len(set(batched))
    for value in [*(c.key_id for c in plan.changes), *(c.instance_id for c in plan.changes)]:
        assert ID_RE.fullmatch(value), value
    try:
        check_sendable(plan)
    except PlanIntegrityError as error:
        assert "nothing was sent" in error.message
    render_plan_text(plan, color=True)
    render_plan_markdown(plan)
    again = load_plan(dump_plan(plan), "again.json")
    assert again == dataclasses.replace(plan, format_version=again.format_version)


@SETTINGS
@given(case=mutated_plans())
def test_mutated_real_plans_are_refused_or_safe(case: tuple[dict[str, Any], bool]) -> None:
    data, sealed = case
    result = _load(_text(data))
    if not sealed and canonical_digest(data) != BASE_DIGEST:
        assert isinstance(result, PlanIntegrityError), "an edit without a new digest was accepted"
    if isinstance(result, Plan):
        _check_loaded(result)


@SETTINGS
@given(value=json_values)
def test_arbitrary_json_sealed_or_not(value: Any) -> None:
    if isinstance(value, dict) and value:
        value.setdefault("format_version", "3.0")
        value["integrity"] = {"algorithm": "sha256", "digest": canonical_digest(value)}
    result = _load(_text(value))
    assert isinstance(result, PlanIntegrityError)  # none of these is a complete plan


@SETTINGS
@given(text=st.text(max_size=300))
def test_arbitrary_text(text: str) -> None:
    result = _load(text)
    assert isinstance(result, PlanIntegrityError)


@SETTINGS
@given(data=st.binary(max_size=300))
def test_arbitrary_bytes_through_show(data: bytes, tmp_path_factory: pytest.TempPathFactory) -> None:
    path = tmp_path_factory.mktemp("bytes") / "plan.json"
    path.write_bytes(data)
    result = CliRunner().invoke(app, ["show", str(path)], env={"NO_COLOR": "1"})
    assert result.exit_code == 1
    assert "Traceback" not in result.output and "internal error" not in result.output
    assert result.stderr.startswith(f"Error: {path}")


@SETTINGS
@given(cut=st.integers(0, len(BASE_TEXT.rstrip()) - 1))
def test_a_plan_cut_short_anywhere_gives_its_position(cut: int) -> None:
    result = _load(BASE_TEXT[:cut])
    assert isinstance(result, PlanIntegrityError)
    assert re.match(r"plan\.json:\d+:\d+: not valid JSON", result.message), result.message


def test_the_untouched_sample_loads() -> None:
    plan = _load(BASE_TEXT)
    assert isinstance(plan, Plan)
    _check_loaded(plan)


@pytest.mark.parametrize(
    "text",
    [
        "[" * 10_000 + "]" * 10_000,
        '{"a":' * 10_000 + "1" + "}" * 10_000,
        '{"format_version": "3.0", "x": ' + "[" * (MAX_PLAN_DEPTH + 5) + "]" * (MAX_PLAN_DEPTH + 5) + "}",
        "[" * 100_000,
    ],
    ids=["lists-10000", "objects-10000", "just-too-deep", "unclosed-100000"],
)
def test_deep_nesting_is_refused_quickly(text: str) -> None:
    start = time.perf_counter()
    result = _load(text)
    assert isinstance(result, PlanIntegrityError)
    assert "nested more than" in result.message or "not valid JSON" in result.message
    assert time.perf_counter() - start < 1


def test_a_resealed_plan_with_a_newline_in_an_id_is_refused() -> None:
    data = copy.deepcopy(BASE)
    batch = data["batches"][0]
    target = batch["instance_ids"][0]
    for change in data["changes"]:
        if change["instance_id"] == target and change["key_id"] == batch["key_ids"][0]:
            change["instance_id"] = target + "\n"
    batch["instance_ids"][0] = target + "\n"
    data["integrity"]["digest"] = canonical_digest(data)
    result = _load(_text(data))
    assert isinstance(result, PlanIntegrityError)
    assert "$.changes[" in result.message and "is not an ID" in result.message


EXPECTED = {
    "array.json": "expected a JSON object",
    "bom.json": ":1:1: not valid JSON",
    "duplicate-members.json": "duplicate member",
    "future-major.json": "newer than this cvmkeys reads",
    "infinity-1e400.json": "out of range",
    "lone-surrogate.json": "no integrity digest",
    "long-number.json": "digits is out of range",
    "nan.json": "NaN is not a JSON number",
    "not-json.json": "this is a YAML file, not a plan file",
    "nul-byte.json": ":1:24: not valid JSON",
    "truncated.json": ":1:70: not valid JSON",
    "utf16.json": "cannot read the plan file",
}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_hostile_plan_files_through_show_and_apply(name: str, tmp_path: Path) -> None:
    assert {p.name for p in HOSTILE.iterdir()} == set(EXPECTED)
    path = HOSTILE / name
    result = CliRunner().invoke(app, ["show", str(path)], env={"NO_COLOR": "1"})
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output and "internal error" not in result.output
    first = result.stderr.splitlines()[0]
    assert first.startswith(f"Error: {path}") and EXPECTED[name] in first, first
    # apply takes a plan file or desired-state files: a file that does not start with "{" is
    # read as YAML and refused by that loader instead, with its place.
    args = ["apply", str(path), "--emulator", str(tmp_path / "none.yaml"), "--auto-approve"]
    result = CliRunner().invoke(app, args, env={"NO_COLOR": "1"})
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output and "internal error" not in result.output
    assert str(path) in result.stderr.splitlines()[0]
