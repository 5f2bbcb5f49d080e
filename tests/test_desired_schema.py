"""The bindings JSON Schema: well-formed, in step with reconciler.ids, helpful in editors."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from jsonschema import Draft202012Validator

from reconciler import ids, schemas

REPO = Path(__file__).resolve().parent.parent
EXAMPLES = sorted(
    path
    for path in (REPO / "examples").glob("*.yaml")
    if not {"regions", "credentials"} <= set(yaml.safe_load(path.read_text()) or {})
)


@pytest.fixture(scope="module")
def schema() -> dict[str, Any]:
    return schemas.load_schema("bindings")


def _subschemas(node: Any, where: str = "#") -> Iterator[tuple[str, dict[str, Any]]]:
    if isinstance(node, dict):
        yield where, node
        for name, value in node.items():
            yield from _subschemas(value, f"{where}/{name}")
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield from _subschemas(value, f"{where}/{index}")


def test_schema_is_valid_2020_12_with_an_id(schema: dict[str, Any]) -> None:
    Draft202012Validator.check_schema(schema)
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert schema["$id"]
    assert schemas.validator("bindings").schema["$id"] == schema["$id"]  # built from it, $refs inlined


def test_region_is_a_known_name_or_any_well_formed_one(schema: dict[str, Any]) -> None:
    known, well_formed = schema["properties"]["region"]["anyOf"]
    assert known["enum"] == list(ids.KNOWN_REGIONS)  # what editors offer as completions
    assert well_formed["pattern"] == ids.REGION_NAME_PATTERN
    validate = schemas.validator("bindings").iter_errors
    assert [e.message for e in validate({"version": 1, "region": "ap-newplace"})] == []
    assert [e.validator for e in validate({"version": 1, "region": "Mars_1"})] == ["anyOf"]


def test_patterns_have_readable_messages_for_editors(schema: dict[str, Any]) -> None:
    """yaml-language-server shows ``patternErrorMessage`` instead of the regular expression."""
    patterned = [(where, sub) for where, sub in _subschemas(schema) if "pattern" in sub]
    assert len(patterned) >= 4
    for where, sub in patterned:
        assert sub.get("patternErrorMessage"), where
        assert "^" not in sub["patternErrorMessage"] and "[" not in sub["patternErrorMessage"], where


def test_lists_the_tool_requires_unique_are_unique_items(schema: dict[str, Any]) -> None:
    assert schema["$defs"]["instanceList"]["uniqueItems"] is True
    assert schema["properties"]["protected"]["properties"]["keys"]["uniqueItems"] is True
    validate = schemas.validator("bindings").iter_errors
    twice = {"version": 1, "region": "gz", "keys": {"skey-aaaaaaaa": {"instances": ["ins-aaaaaaaa"] * 2}}}
    assert [e.validator for e in validate(twice)] == ["uniqueItems"]


def test_opt_out_and_account_fields(schema: dict[str, Any]) -> None:
    assert schema["properties"]["missing_instances"]["enum"] == ["error", "warn"]
    validate = schemas.validator("bindings").iter_errors
    assert [e.message for e in validate({"version": 1, "region": "gz", "account": "100012345678"})] == []
    assert [e.validator for e in validate({"version": 1, "region": "gz", "account": "12ab"})] == ["pattern"]


def test_id_patterns_are_the_ones_in_ids(schema: dict[str, Any]) -> None:
    assert schema["$defs"]["instanceId"]["pattern"] == ids.INSTANCE_ID_PATTERN
    assert schema["$defs"]["keyId"]["pattern"] == ids.KEY_ID_PATTERN


def test_every_object_forbids_unknown_fields(schema: dict[str, Any]) -> None:
    objects = [(where, sub) for where, sub in _subschemas(schema) if sub.get("type") == "object"]
    assert len(objects) >= 4
    for where, sub in objects:
        # ``keys`` maps key IDs to entries: its additionalProperties is the entry schema.
        assert "additionalProperties" in sub, where
        assert sub["additionalProperties"] is False or "$ref" in sub["additionalProperties"], where


def test_every_field_has_a_title_and_a_description(schema: dict[str, Any]) -> None:
    fields = [
        (f"{where}/{name}", sub)
        for where, node in _subschemas(schema)
        for name, sub in node.get("properties", {}).items()
    ]
    assert len(fields) >= 10
    for where, sub in [*fields, ("#", schema)]:
        assert sub.get("title") and sub.get("description"), where


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda path: path.name)
def test_examples_are_valid_against_the_schema_alone(example: Path) -> None:
    document = yaml.safe_load(example.read_text(encoding="utf-8"))
    errors = [error.message for error in schemas.validator("bindings").iter_errors(document)]
    assert errors == []


def test_examples_exist() -> None:
    assert REPO / "examples" / "bindings.yaml" in EXAMPLES


@pytest.mark.parametrize(
    ("document", "keyword"),
    [
        ({"region": "gz"}, "required"),
        ({"version": 2, "region": "gz"}, "const"),
        ({"version": 1, "region": "Mars"}, "anyOf"),
        ({"version": 1, "region": "gz", "missing_instances": "ignore"}, "enum"),
        ({"version": 1, "region": "gz", "keys": {"skey-BAD": {"instances": []}}}, "pattern"),
        ({"version": 1, "region": "gz", "keys": {"skey-aaaaaaaa": {}}}, "required"),
        ({"version": 1, "region": "gz", "instances": ["ins-1"]}, "pattern"),
        ({"version": 1, "region": "gz", "safety": {"max_unbind_percent": 101}}, "maximum"),
        ({"version": 1, "region": "gz", "safety": {"max_unbinds": 1.5}}, "type"),
        ({"version": 1, "region": "gz", "protected": {"hosts": []}}, "additionalProperties"),
    ],
)
def test_schema_rejects(document: dict[str, Any], keyword: str) -> None:
    keywords = [error.validator for error in schemas.validator("bindings").iter_errors(document)]
    assert keywords == [keyword]
