"""JSON Schema validation of one desired-state document, with messages that point at nodes.

Called by ``reconciler.desired.loader`` after ``yaml_nodes.construct``. The schema in
``schemas/bindings.schema.json`` is the single description of the format; this module only
turns jsonschema's errors into ``Problem``s that read well and name the line and column.

Speed: jsonschema costs tens of microseconds per string, far too much for a file with 100,000
instance IDs. So the ID lists are cut out of the document before jsonschema sees it (the schema
still checks everything around them), and each list item is checked by a precompiled regex of
the same pattern; only an item that fails that test goes through the schema's own item
subschema, so its message is exactly the one the full validation would have given.
"""

from __future__ import annotations

import itertools
import math
import re
from collections.abc import Iterator, Mapping
from functools import cache
from typing import Any

from jsonschema.exceptions import ValidationError
from jsonschema.protocols import Validator

from reconciler import ids, schemas
from reconciler.desired.yaml_nodes import NodeLocator
from reconciler.errors import Problem

SCHEMA_NAME = "bindings"
# Problems looked for in one document before giving up (the loader lists the first 100).
MAX_PROBLEMS_FOUND = 1_000
Path_ = tuple[str | int, ...]

_ID_HELP = {
    "instance": "ins- followed by 8 lower-case letters or digits",
    "key": "skey- followed by 8 lower-case letters or digits",
}
_KIND_OF_PATTERN = {ids.INSTANCE_ID_PATTERN: "instance", ids.KEY_ID_PATTERN: "key"}
_ID_RE = {
    "instance": re.compile(ids.INSTANCE_ID_PATTERN),
    "key": re.compile(ids.KEY_ID_PATTERN),
}
_SCHEMA_DEF_OF_KIND = {"instance": "instanceId", "key": "keyId"}
# A whole list of well-formed IDs joined by newlines, for the one-pass check of the common case
# (every ID well-formed, none twice); IDs have one length, so the joined length rules out an
# item with a line break inside. Anything else takes the item-by-item check, which words it.
_ID_LENGTH = {"instance": len("ins-") + 8, "key": len("skey-") + 8}
_ID_LIST_RE = {
    kind: re.compile(f"(?:{pattern.pattern[1:-1]}\n)*{pattern.pattern[1:-1]}")
    for kind, pattern in _ID_RE.items()
}
_EXPECTED = {
    "object": "a mapping",
    "array": "a list",
    "string": "a string",
    "integer": "a whole number",
    "number": "a number",
    "boolean": "true or false",
}
_LONG_REGIONS = sorted(region for region in ids.KNOWN_REGIONS if "-" in region)


@cache
def _item_validator(kind: str) -> Validator:
    """The schema's own subschema for one ID, to word errors exactly as the schema would."""
    full = schemas.validator(SCHEMA_NAME)
    return full.evolve(schema=schemas.load_schema(SCHEMA_NAME)["$defs"][_SCHEMA_DEF_OF_KIND[kind]])


def validate_document(data: Any, locator: NodeLocator, display: str) -> list[Problem]:
    """Every problem with ``data`` (the document of ``display``), positioned via ``locator``;
    at most ``MAX_PROBLEMS_FOUND``, then one line saying the search stopped."""
    skeleton, id_lists = _cut_id_lists(data)
    seen_required: set[tuple[Path_, str]] = set()
    every = itertools.chain(
        (
            problem
            for error in schemas.validator(SCHEMA_NAME).iter_errors(skeleton)
            for problem in _describe_error(error, seen_required)
        ),
        (problem for path, items, kind in id_lists for problem in _check_id_list(path, items, kind, locator)),
        _extra_checks(data),
    )
    # Found lazily and cut: each costs ~100 us, and 300,000 bad keys in a 3 MB file took 80 s.
    found = list(itertools.islice(every, MAX_PROBLEMS_FOUND + 1))
    problems = []
    for path, at_key, message in found[:MAX_PROBLEMS_FOUND]:
        line, column = locator.position(path, key=at_key)
        problems.append(Problem(display, message, line, column))
    if len(found) > MAX_PROBLEMS_FOUND:
        problems.append(
            Problem(display, f"more than {MAX_PROBLEMS_FOUND:,} problems: stopped looking; fix these first")
        )
    return problems


# --------------------------------------------------------------------------- ID lists


def _cut_id_lists(data: Any) -> tuple[Any, list[tuple[Path_, list[Any], str]]]:
    """A shallow copy of ``data`` with its ID lists emptied, and those lists with their paths."""
    lists: list[tuple[Path_, list[Any], str]] = []
    if not isinstance(data, dict):
        return data, lists
    skeleton = dict(data)
    keys = data.get("keys")
    if isinstance(keys, dict):
        cut_keys: dict[str, Any] = {}
        for key_id, entry in keys.items():
            if isinstance(entry, dict) and isinstance(entry.get("instances"), list):
                lists.append((("keys", key_id, "instances"), entry["instances"], "instance"))
                entry = {**entry, "instances": []}
            cut_keys[key_id] = entry
        skeleton["keys"] = cut_keys
    if isinstance(data.get("instances"), list):
        lists.append((("instances",), data["instances"], "instance"))
        skeleton["instances"] = []
    protected = data.get("protected")
    if isinstance(protected, dict):
        cut_protected = dict(protected)
        for field, kind in (("keys", "key"), ("instances", "instance")):
            if isinstance(protected.get(field), list):
                lists.append((("protected", field), protected[field], kind))
                cut_protected[field] = []
        skeleton["protected"] = cut_protected
    return skeleton, lists


def _check_id_list(
    path: Path_, items: list[Any], kind: str, locator: NodeLocator
) -> Iterator[tuple[Path_, bool, str]]:
    """Problems of one ID list: malformed IDs (the schema's wording) and repeated IDs."""
    if (
        items
        and all(item.__class__ is str for item in items)
        and len(joined := "\n".join(items)) == len(items) * (_ID_LENGTH[kind] + 1) - 1
        and _ID_LIST_RE[kind].fullmatch(joined) is not None
        and len(set(items)) == len(items)
    ):
        return
    match = _ID_RE[kind].fullmatch
    first_index: dict[str, int] = {}
    for index, item in enumerate(items):
        if item.__class__ is str and match(item) is not None:
            first = first_index.setdefault(item, index)
            if first != index:
                first_line, first_column = locator.position((*path, first))
                line, column = locator.position((*path, index))
                owner = f"key {path[1]!r}" if path[0] == "keys" else f"'{'.'.join(map(str, path))}'"
                places = (
                    f"line {line}, columns {first_column} and {column}"
                    if line == first_line
                    else f"lines {first_line} and {line}"
                )
                yield (*path, index), False, f"{item!r} is listed twice under {owner}: at {places}"
            continue
        item_path = (*path, index)
        messages = [
            message
            for _, _, message in _describe_errors_at(_item_validator(kind).iter_errors(item), item_path)
        ]
        # The schema's ``pattern`` uses search semantics, so "ins-12345678\n" passes it; the
        # fullmatch above does not, and the ID is still wrong.
        for message in messages or [_id_message(item, kind)]:
            yield item_path, False, message


def _describe_errors_at(
    errors: Iterator[ValidationError], prefix: Path_
) -> Iterator[tuple[Path_, bool, str]]:
    seen: set[tuple[Path_, str]] = set()
    for error in errors:
        yield from _describe_error(error, seen, prefix)


def _id_message(value: Any, kind: str) -> str:
    return f"{value!r} is not a valid {kind} ID (expected {_ID_HELP[kind]})"


# --------------------------------------------------------------------------- messages


def _describe_error(
    error: ValidationError, seen_required: set[tuple[Path_, str]], prefix: Path_ = ()
) -> Iterator[tuple[Path_, bool, str]]:
    """(path, points-at-key, message) for one jsonschema error; several for extra fields."""
    path: Path_ = (*prefix, *error.absolute_path)
    # jsonschema types these as "maybe unset"; for errors from iter_errors they are always set.
    keyword: Any = error.validator
    value: Any = error.validator_value
    subschema: Any = error.schema
    instance = error.instance
    label = _label(path)
    if path == ("region",):
        # ``anyOf`` (a known name, or any well-formed one) words nothing useful by itself.
        yield path, False, region_message(instance)
        return
    if "propertyNames" in error.absolute_schema_path:
        # The error is about a mapping key; jsonschema's path stops at the mapping.
        name_path = (*path, str(instance))
        if keyword == "pattern" and isinstance(instance, str):
            yield name_path, True, _id_message(instance, _KIND_OF_PATTERN.get(value, "key"))
        else:
            yield name_path, True, f"{instance!r}: {error.message}"
        return
    if keyword == "additionalProperties" and isinstance(instance, Mapping):
        allowed = list(subschema.get("properties", {}))
        for name in instance:
            if name not in allowed:
                yield (*path, name), True, f"unknown field {name!r} (allowed: {', '.join(allowed)})"
        return
    if keyword == "required" and isinstance(instance, Mapping):
        for name in value:
            if name in instance or (path, name) in seen_required:
                continue
            seen_required.add((path, name))
            yield path, False, f"missing required field {name!r}" + _required_hint(path, name)
        return
    if keyword == "type":
        expected = value
        wanted = _EXPECTED.get(expected, str(expected)) if isinstance(expected, str) else str(expected)
        if len(path) == 2 and path[0] == "keys":
            wanted = "a mapping with 'instances' (and optionally 'name')"
        message = f"{label} must be {wanted}, got {_describe(instance)}"
        if expected == "string" and isinstance(instance, (int, float)) and not isinstance(instance, bool):
            message += "; quote it if you mean the text"
        elif expected == "string" and isinstance(instance, bool):
            message += "; YAML reads yes/no/on/off/true/false as booleans, quote it"
        elif expected == "array" and isinstance(instance, str):
            message += f"; write [{instance}] for a list of one"
        yield path, False, message
        return
    if keyword == "pattern" and isinstance(instance, str):
        kind = _KIND_OF_PATTERN.get(value)
        if kind is not None:
            yield path, False, _id_message(instance, kind)
        else:
            # The schema's own words for its pattern (what editors show too), never the regex.
            help_text = subschema.get("patternErrorMessage") or "not in the expected form"
            yield path, False, f"{label} {_describe(instance, bare=True)}: {help_text}"
        return
    if keyword == "const":
        if path == ("version",) and isinstance(instance, str):
            yield path, False, f"'version' must be the number 1, got a string ({instance!r})"
        elif path == ("version",):
            yield (
                path,
                False,
                f"unsupported version {_describe(instance, bare=True)}: this tool reads version 1",
            )
        else:
            yield path, False, f"{label} must be {value!r}, got {_describe(instance)}"
        return
    if keyword == "enum":
        yield path, False, _enum_message(path, label, instance, value)
        return
    if keyword in ("minimum", "exclusiveMinimum"):
        bound = "at least" if keyword == "minimum" else "above"
        yield path, False, f"{label} must be {bound} {value}, got {instance}"
        return
    if keyword in ("maximum", "exclusiveMaximum"):
        bound = "at most" if keyword == "maximum" else "below"
        yield path, False, f"{label} must be {bound} {value}, got {instance}"
        return
    if keyword == "minLength":
        yield path, False, f"{label} must not be empty"
        return
    yield path, False, f"{label}: {error.message}"


def _required_hint(path: Path_, name: str) -> str:
    if len(path) == 2 and path[0] == "keys" and name == "instances":
        return " (use 'instances: []' for a key that must be bound nowhere)"
    if path == () and name == "version":
        return " (add 'version: 1')"
    if path == ("disruption",) and name == "stop_running":
        return " (the opt-in itself: 'stop_running: true' lets cvmkeys stop running instances)"
    return ""


def _enum_message(path: Path_, label: str, instance: Any, options: list[Any]) -> str:
    choices = ", ".join(str(option) for option in options)
    return f"{label} must be one of {choices}; got {_describe(instance)}"


def region_message(value: Any) -> str:
    """Why ``value`` is not a region, with a did-you-mean when a known one is close."""
    if not isinstance(value, str):
        return f"'region' must be {ids.REGION_HELP}; got {_describe(value)}"
    message = f"unknown region {_describe(value, bare=True)}"
    close = ids.region_suggestion(value) or ids.is_likely_region_typo(value)
    if close:
        return f"{message}; did you mean {close!r}?"
    return f"{message}: expected {ids.REGION_HELP} (known: {', '.join(_LONG_REGIONS)})"


def _label(path: Path_) -> str:
    if not path:
        return "the top level"
    *parent, last = path
    if isinstance(last, int):
        return f"item {last + 1} of {_label(tuple(parent))}"
    if len(parent) == 1 and parent[0] == "keys":
        return f"key {last!r}"
    return repr(last)


def _describe(value: Any, *, bare: bool = False) -> str:
    """A short description of a YAML value for messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        text = "true" if value else "false"
        return text if bare else f"a boolean ({text})"
    if isinstance(value, int):
        return str(value) if bare else f"an integer ({value})"
    if isinstance(value, float):
        return str(value) if bare else f"a number ({value})"
    if isinstance(value, str):
        shown = value if len(value) <= 60 else value[:57] + "..."
        return repr(shown) if bare else f"a string ({shown!r})"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    return type(value).__name__  # pragma: no cover - the constructor makes only the above


# --------------------------------------------------------------------------- beyond the schema


def _extra_checks(data: Any) -> Iterator[tuple[Path_, bool, str]]:
    """What JSON Schema cannot say: a percentage that is not a number at all (NaN); a key ID
    that the schema's ``propertyNames`` pattern lets through only because jsonschema matches
    with search semantics, where ``$`` also matches before a final newline."""
    if not isinstance(data, dict):
        return
    keys = data.get("keys")
    if isinstance(keys, dict):
        for key_id in keys:
            if isinstance(key_id, str) and not ids.is_key_id(key_id) and _ID_RE["key"].search(key_id):
                yield ("keys", key_id), True, _id_message(key_id, "key")
    region = data.get("region")
    # Well-formed but one or two letters from a known region: a typo, not a new region.
    if isinstance(region, str) and ids.is_well_formed_region(region) and ids.is_likely_region_typo(region):
        yield ("region",), False, region_message(region)
    for block, name in (("safety", "max_unbind_percent"), ("disruption", "max_stopped_percent")):
        fields = data.get(block)
        percent = fields.get(name) if isinstance(fields, dict) else None
        if isinstance(percent, float) and math.isnan(percent):
            yield (block, name), False, f"{name!r} must be a number, got .nan"
