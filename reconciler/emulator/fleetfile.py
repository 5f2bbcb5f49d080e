"""Reading and checking the emulator's fleet file (``examples/fleet.yaml``), a read-only fixture.

Called by ``emulator/state.py`` only. The fleet file describes the emulator's world as it
starts: accepted credentials and, per region, instances and key pairs with their bindings.
The emulator never writes it; live changes go to its SQLite state (``emulator/store.py``).

One YAML pipeline: the file is read by the same strict loader as desired-state files
(``reconciler.desired.yaml_nodes``: size limit, UTF-8, no control characters, duplicate keys,
alias bound, positions), checked by ``schemas/fleet.schema.json`` alone, and then for what a
schema cannot say: IDs unique within a region, ``bound`` naming instances of the same region,
one spelling per region. Every problem is ``FILE:LINE:COL: message`` in one ``InputError``.
"""

from __future__ import annotations

import gc
import hashlib
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from jsonschema.exceptions import ValidationError

from reconciler import schemas
from reconciler.desired.yaml_nodes import (
    DESIRED_FILE_KEYS,
    FLEET_FILE_KEYS,
    PLAN_FILE_KEYS,
    NodeLocator,
    Source,
    compose,
    construct,
    node_position,
    read_source,
    top_level_keys,
)
from reconciler.errors import InputError, Problem
from reconciler.ids import KNOWN_REGIONS, canonical_region

SCHEMA_NAME = "fleet"
# Problems listed in one error; the rest are counted.
MAX_PROBLEMS = 100
# A message quotes at most this much of a value (jsonschema's messages repr whole values).
_MAX_MESSAGE = 200
_HINT = "see schemas/fleet.schema.json and examples/fleet.yaml"

PathT = tuple[str | int, ...]


def fixture_sha256(path: Path) -> str:
    """The SHA-256 of the fixture's bytes (what the state records it was built from).

    Raises ``InputError`` if the file cannot be read.
    """
    try:
        with open(path, "rb") as handle:
            return hashlib.sha256(handle.read()).hexdigest()
    except FileNotFoundError:
        raise InputError([Problem(str(path), "fleet file not found")], hint=_HINT) from None
    except OSError as error:
        raise InputError([Problem(str(path), f"cannot read fleet file: {error.strerror}")]) from None


def load_fleet(path: Path) -> tuple[dict[str, Any], str]:
    """The checked data of the fleet file ``path`` and the SHA-256 of its bytes.

    Raises ``InputError`` with every problem as FILE:LINE:COL.
    """
    display = str(path)
    # The node graph and data are big trees without cycles: the cyclic collector would rescan
    # them again and again while they grow (as the desired-state loader does, collect once).
    collecting = gc.isenabled()
    gc.disable()
    try:
        # The desired files' limit too (32 MiB; a 50,000-instance fleet is about 6 MB).
        source = read_source(path, display)
        if isinstance(source, Problem):
            hint = _HINT if "no such file" in source.message else None
            raise InputError([source], hint=hint)
        return _load_text(source, display), source.sha256
    finally:
        if collecting:
            gc.enable()


def _load_text(source: Source, display: str) -> dict[str, Any]:
    root = compose(source.text, display)
    if isinstance(root, Problem):
        raise InputError([root], hint=_HINT)
    if root is None:
        raise InputError([Problem(display, "the fleet file is empty")], hint=_HINT)
    found_keys = top_level_keys(root)
    if found_keys & DESIRED_FILE_KEYS and not found_keys & FLEET_FILE_KEYS:
        line, column = node_position(root)
        wrong_kind = (
            "this is a cvmkeys plan file, not an emulator fleet file"
            if found_keys >= PLAN_FILE_KEYS
            else "this is a desired-state file (version, region, keys), not an emulator fleet file"
        )
        raise InputError(
            [Problem(display, wrong_kind, line, column)],
            hint="--emulator and --fleet take a fleet file such as examples/fleet.yaml; "
            "the desired-state file is what plan and apply are given",
        )
    problems: list[Problem] = []
    data = construct(root, display, problems)
    if problems:
        raise InputError(_capped(problems, display), hint=_HINT)
    locator = NodeLocator(root)
    found = [
        Problem(display, message, *locator.position(path, key=at_key))
        for path, message, at_key in _problems(data)
    ]
    if found:
        raise InputError(_capped(found, display), hint=_HINT)
    result: dict[str, Any] = data
    return result


def check_data(data: Mapping[str, Any], display: str = "<fleet data>") -> None:
    """Check fleet data that comes from no file (``FleetState.from_data``); problems name
    their place in the data. Raises ``InputError``."""
    found = [
        Problem(display, f"{'.'.join(str(step) for step in path) or '<top>'}: {message}")
        for path, message, _ in _problems(data)
    ]
    if found:
        raise InputError(_capped(found, display), hint=_HINT)


def _capped(problems: list[Problem], display: str) -> list[Problem]:
    if len(problems) <= MAX_PROBLEMS:
        return problems
    more = Problem(display, f"... and {len(problems) - MAX_PROBLEMS:,} more problems not shown")
    return [*problems[:MAX_PROBLEMS], more]


def _problems(data: Any) -> Iterator[tuple[PathT, str, bool]]:
    """(path, message, points at the map key) for every problem: the schema's first, then,
    when the schema is satisfied, what it cannot say."""
    errors = sorted(
        schemas.validator(SCHEMA_NAME).iter_errors(data), key=lambda e: [str(s) for s in e.absolute_path]
    )
    for error in errors:
        yield from _schema_problems(error)
    if not errors:
        yield from _cross_checks(data)


def _short(text: str) -> str:
    return text if len(text) <= _MAX_MESSAGE else text[: _MAX_MESSAGE - 3] + "..."


def _schema_problems(error: ValidationError) -> Iterator[tuple[PathT, str, bool]]:
    path: PathT = tuple(error.absolute_path)
    where = ".".join(str(step) for step in path)
    if error.validator == "additionalProperties" and isinstance(error.instance, dict):
        allowed = set(error.schema.get("properties") or {}) if isinstance(error.schema, dict) else set()
        for name in error.instance:
            if name not in allowed:
                known = ", ".join(sorted(allowed))
                message = f"unknown field {name!r} in {where or 'the top level'} (known: {known})"
                yield (*path, name), _short(message), True
        return
    if error.validator == "enum" and "propertyNames" in error.relative_schema_path:
        name = error.instance
        message = f"unknown region {_short(repr(name))} (known: {', '.join(KNOWN_REGIONS)})"
        yield (*path, str(name)), message, True
        return
    yield path, _short(f"{where}: {error.message}" if where else error.message), False


def _cross_checks(data: Mapping[str, Any]) -> Iterator[tuple[PathT, str, bool]]:
    """What the schema cannot say; ``data`` already satisfies it."""
    seen_secret_ids: set[str] = set()
    for index, cred in enumerate(data["credentials"]):
        if cred["secret_id"] in seen_secret_ids:
            yield ("credentials", index, "secret_id"), f"secret_id {cred['secret_id']} is listed twice", False
        seen_secret_ids.add(cred["secret_id"])
    spelled: dict[str, str] = {}
    for name, region in data["regions"].items():
        long_name = canonical_region(name)
        if long_name in spelled:
            message = f"region {name} is {long_name}, already given as {spelled[long_name]}"
            yield ("regions", name), message, True
        spelled.setdefault(long_name, name)
        region = region or {}
        # IDs need only be unique within a region: each region is its own world.
        instances: set[str] = set()
        for index, inst in enumerate(region.get("instances") or []):
            if inst["id"] in instances:
                path: PathT = ("regions", name, "instances", index, "id")
                yield path, f"instance {inst['id']} is listed twice in region {name}", False
            instances.add(inst["id"])
        keys: set[str] = set()
        for index, key in enumerate(region.get("keys") or []):
            kpath: PathT = ("regions", name, "keys", index)
            if key["id"] in keys:
                yield (*kpath, "id"), f"key {key['id']} is listed twice in region {name}", False
            keys.add(key["id"])
            bound = key.get("bound") or []
            if instances.issuperset(bound):
                continue  # the common case, at set speed
            for n, iid in enumerate(bound):
                if iid not in instances:
                    message = f"instance {iid} is not an instance of region {name}"
                    yield (*kpath, "bound", n), message, False
