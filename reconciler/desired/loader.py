"""Loads desired-state files into one ``model.Desired`` per region.

The entry point of ``reconciler.desired``: ``cli.py`` calls ``load_paths`` for ``validate``,
``plan`` and ``apply``. Reading is done by ``yaml_nodes`` (safe YAML with positions), checking
by ``validation`` (the JSON Schema); this module finds the files, builds the per-file desired
state, merges the files of one region, and raises one ``InputError`` carrying every problem.

Merge rules (docs/desired-state.md): files of one region must agree on ``scope``; keys are a
union, and a key may be declared in only one file; protected keys/instances and the top-level
``instances`` are unions; each safety limit is the strictest one given; files of one region must
have the same ``disruption`` block, or none.
"""

from __future__ import annotations

import gc
import hashlib
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from reconciler import ids
from reconciler.common import short_repr
from reconciler.desired.validation import validate_document
from reconciler.desired.yaml_nodes import (
    DESIRED_FILE_KEYS,
    FLEET_FILE_KEYS,
    NULL_TAG,
    PLAN_FILE_KEYS,
    NodeLocator,
    Source,
    compose,
    construct,
    has_top_level_keys,
    node_position,
    read_source,
    top_level_entries,
    top_level_keys,
)
from reconciler.errors import InputError, Problem
from reconciler.model import (
    Desired,
    DesiredKey,
    Disruption,
    Location,
    SafetyLimits,
    Scope,
    SourceFile,
    StopType,
)

YAML_SUFFIXES = (".yaml", ".yml")
# Other YAML a repository keeps beside its desired-state files, recognised by top-level keys
# and skipped by directory searches (never when named explicitly): CI pipelines.
OTHER_YAML_KINDS: tuple[tuple[str, frozenset[str]], ...] = (
    ("emulator fleet file", FLEET_FILE_KEYS),
    ("CI pipeline file", frozenset({"jobs"})),  # GitHub Actions
    ("CI pipeline file", frozenset({"stages"})),  # GitLab CI
)
# ``missing_instances``: what a declared instance that does not exist is (docs/desired-state.md).
MISSING_ERROR = "error"
MISSING_WARN = "warn"
# More problems than this in one file are summarised in one line: the rest are likely echoes.
MAX_PROBLEMS_PER_FILE = 100


@dataclass(frozen=True)
class _Skipped:
    kind: str


@dataclass(frozen=True)
class LoadedDesired:
    """The desired state of every region named by the loaded files.

    ``files`` are the desired-state files read, in load order; ``skipped`` the emulator fleet
    files found while searching directories and left alone.
    """

    files: tuple[str, ...]
    by_region: Mapping[str, Desired]
    skipped: tuple[str, ...] = ()
    skipped_kinds: tuple[str, ...] = ()  # what each skipped file is, e.g. "emulator fleet file"
    # Not errors, but worth saying (a region this version does not know), as FILE:LINE:COL.
    warnings: tuple[Problem, ...] = ()

    def summary(self) -> str:
        """One line for ``cvmkeys validate``: what was loaded, and that it is valid."""
        keys = sum(len(desired.keys) for desired in self.by_region.values())
        instances = sum(
            len(desired.declared_instances | desired.protected_instances)
            for desired in self.by_region.values()
        )
        text = (
            f"{_count(len(self.files), 'file')}, {_count(len(self.by_region), 'region')}, "
            f"{_count(keys, 'key')}, {_count(instances, 'instance')}: valid"
        )
        if self.skipped:
            kinds = self.skipped_kinds or ("emulator fleet file",) * len(self.skipped)
            counted = [_count(kinds.count(kind), kind) for kind in sorted(set(kinds))]
            text += f" ({', '.join(counted)} skipped)"
        if self.warnings:
            text += f"; {_count(len(self.warnings), 'warning')}: " + "; ".join(map(str, self.warnings))
        return text


def found_files(paths: Sequence[Path]) -> tuple[list[tuple[Path, str]], list[Problem]]:
    """(path, name to show) of every file ``load_paths(paths)`` would read, found as it finds
    them (folders searched, each file once), and what the search itself refused (a link that
    leaves the folder, a folder that cannot be read). No file is read."""
    problems: list[Problem] = []
    return [(path, display) for path, display, _ in _discover(paths, problems)], problems


def region_of_found_file(path: Path, display: str) -> str | None:
    """The region (long name) of a file a folder search found, from its top-level ``region``
    alone (parser events: nothing else is read or checked, so a file with other problems still
    says where it belongs, and a large one costs little); None for YAML a search skips (a fleet
    file, a CI pipeline). ``InputError`` when the region cannot be told: not YAML before any
    ``region``, none, not text, not a region name, or given twice."""
    source = read_source(path, display)
    if isinstance(source, Problem):
        raise InputError([source])
    if _other_yaml_kind(source.text) is not None:
        return None
    values: list[yaml.Event | None] = []
    try:
        for key, value in top_level_entries(source.text):
            if key == "region":
                values.append(value)
    except yaml.YAMLError as error:
        if not values:  # a region before the error still says where the file belongs
            mark = getattr(error, "problem_mark", None)
            at: tuple[int | None, int | None] = (None, None)
            if mark is not None:
                at = (mark.line + 1, mark.column + 1)
            raise InputError([Problem(display, "not valid YAML before any top-level region", *at)]) from None
    if not values:
        raise InputError([Problem(display, "no top-level region")])
    value = values[-1]
    mark = value.start_mark if value is not None else None
    where: tuple[int | None, int | None] = (None, None) if mark is None else (mark.line + 1, mark.column + 1)
    if len(values) > 1:
        raise InputError([Problem(display, "region is given twice", *where)])
    if not isinstance(value, yaml.ScalarEvent):
        raise InputError([Problem(display, "region is not text", *where)])
    try:
        return ids.normalize_region(value.value.strip())
    except KeyError:
        named = f"region {short_repr(value.value)} is not a region name"
        raise InputError([Problem(display, named, *where)]) from None


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}{'' if number == 1 else 's'}"


def load_paths(paths: Sequence[Path]) -> LoadedDesired:
    """Load, check and merge the desired-state files named by ``paths``.

    A directory is searched recursively for ``*.yaml`` / ``*.yml`` (sorted; folders whose name
    starts with a dot are skipped); emulator fleet files, CI pipelines and saved plans found
    there are skipped (the summary counts them).
    Files named explicitly are always checked. Raises ``InputError`` with every problem found.
    """
    if not paths:
        raise InputError([Problem("cvmkeys", "no desired-state files or directories given")])
    # The node graph and the data built from it are large trees without cycles; the cyclic
    # garbage collector would rescan them again and again while they grow (a third of the load
    # time of a 100,000-ID file, for nothing). Collect once at the end instead.
    collecting = gc.isenabled()
    gc.disable()
    try:
        return _load_paths(paths)
    finally:
        if collecting:
            gc.enable()


def _load_paths(paths: Sequence[Path]) -> LoadedDesired:
    problems: list[Problem] = []
    targets = _discover(paths, problems)
    loaded: list[_FileDesired] = []
    files: list[str] = []
    skipped: list[str] = []
    skipped_kinds: list[str] = []
    for path, display, explicit in targets:
        result = _load_file(path, display, explicit, problems)
        if isinstance(result, _Skipped):
            skipped.append(display)
            skipped_kinds.append(result.kind)
            continue
        files.append(display)
        if isinstance(result, _FileDesired):
            loaded.append(result)
    if not files and not problems:
        names = ", ".join(str(path) for path in paths)
        kinds = " and ".join(sorted({kind + "s" for kind in skipped_kinds})) or "other YAML files"
        problems.append(Problem(names, f"no desired-state files found (only {kinds})"))
    by_region = _merge(loaded, problems)
    if problems:
        raise InputError(_ordered(problems))
    warnings = [warning for file in loaded for warning in file.warnings]
    return LoadedDesired(tuple(files), by_region, tuple(skipped), tuple(skipped_kinds), tuple(warnings))


# --------------------------------------------------------------------------- finding files


def _discover(paths: Sequence[Path], problems: list[Problem]) -> list[tuple[Path, str, bool]]:
    """(path, name to show, named explicitly) for every file to load, each file once."""
    targets: dict[Path, tuple[Path, str, bool]] = {}
    for given in paths:
        if given.is_dir():
            before = len(problems)
            found = _yaml_files(given, problems)
            if not found and len(problems) == before:
                problems.append(Problem(str(given), "no *.yaml or *.yml files in this directory"))
            for path in found:
                targets.setdefault(_identity(path), (path, str(path), False))
        else:
            identity = _identity(given)
            previous = targets.get(identity)
            if previous is None:
                targets[identity] = (given, str(given), True)
            elif not previous[2]:
                # Named explicitly: always checked, even if a directory search found it first.
                targets[identity] = (previous[0], previous[1], True)
    return list(targets.values())


def _identity(path: Path) -> Path:
    try:
        return path.resolve()
    except (OSError, RuntimeError):  # pragma: no cover - symlink loops and the like
        return path.absolute()


def _inside(path: Path, root: Path) -> bool:
    return path == root or path.is_relative_to(root)


def _yaml_files(directory: Path, problems: list[Problem]) -> list[Path]:
    """Every ``*.yaml``/``*.yml`` under ``directory``, staying inside it.

    Symlinks are resolved: a file or folder link that points inside the folder is followed
    (a folder reached twice, e.g. through a loop, is searched once); one that points outside,
    or nowhere, is a problem and is not read (the message names the link, never the content).
    """
    root = _identity(directory)
    found: list[Path] = []
    visited: set[Path] = set()

    def search(folder: Path, real: Path) -> None:
        if real in visited:
            return  # a loop, or a folder also reached another way: searched once
        visited.add(real)
        try:
            entries = sorted(os.scandir(folder), key=lambda entry: entry.name)
        except OSError as error:
            problems.append(Problem(str(folder), f"cannot search this directory: {error.strerror or error}"))
            return
        for entry in entries:
            path = folder / entry.name
            is_yaml = entry.name.lower().endswith(YAML_SUFFIXES)
            if entry.is_symlink():
                try:
                    target = path.resolve(strict=True)
                except (OSError, RuntimeError):
                    if is_yaml:
                        problems.append(Problem(str(path), "broken symlink (or a symlink loop): not read"))
                    continue
                if not _inside(target, root):
                    if is_yaml or target.is_dir():
                        kind = "a folder" if target.is_dir() else "a file"
                        problems.append(
                            Problem(
                                str(path),
                                f"symlink to {kind} outside {directory}: refused, not read "
                                "(a folder search reads only what is inside the folder)",
                            )
                        )
                    continue
                if target.is_dir():
                    if not entry.name.startswith("."):
                        search(path, target)
                elif is_yaml:
                    found.append(path)
                continue
            try:
                is_dir = entry.is_dir(follow_symlinks=False)
            except OSError:  # pragma: no cover - vanished while searching
                continue
            if is_dir:
                if not entry.name.startswith("."):
                    search(path, _identity(path))
            elif is_yaml:
                found.append(path)  # whether it is a regular file is checked when it is read

    search(directory, root)
    return sorted(found, key=lambda path: path.parts)


# --------------------------------------------------------------------------- one file


@dataclass
class _FileDesired:
    """The desired state of one valid file, before merging, with what messages need."""

    display: str
    region: str
    scope: Scope
    scope_given: Location | None
    keys: dict[str, DesiredKey]
    protected_keys: frozenset[str]
    protected_instances: frozenset[str]
    extra_instances: frozenset[str]
    safety: SafetyLimits
    source: SourceFile
    instance_locations: dict[str, Location]
    data: dict[str, Any]
    locator: NodeLocator
    top: Location
    missing_instances: str = MISSING_ERROR
    account: str | None = None
    account_given: Location | None = None
    warnings: tuple[Problem, ...] = ()
    disruption: Disruption | None = None

    @property
    def declared_instances(self) -> frozenset[str]:
        declared = set(self.extra_instances)
        for key in self.keys.values():
            declared.update(key.instances)
        return frozenset(declared)

    def location(self, path: Iterable[str | int], *, key: bool = False) -> Location:
        line, column = self.locator.position(path, key=key)
        return Location(self.display, line, column)


def _load_file(
    path: Path, display: str, explicit: bool, problems: list[Problem]
) -> _FileDesired | _Skipped | None:
    """The file's desired state; ``_Skipped`` for other YAML found by a directory search;
    ``None`` when the file has problems (appended to ``problems``)."""
    source = read_source(path, display)
    if isinstance(source, Problem):
        problems.append(source)
        return None
    return _load_source(source, display, explicit, problems)


def load_text(text: str, display: str) -> LoadedDesired:
    """Load one desired-state document given as text, named ``display`` in messages, as if it
    were a file named on the command line (``import`` checks what it writes this way)."""
    problems: list[Problem] = []
    source = Source(text, hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest())
    result = _load_source(source, display, True, problems)
    loaded = [result] if isinstance(result, _FileDesired) else []
    by_region = _merge(loaded, problems)
    if problems:
        raise InputError(_ordered(problems))
    return LoadedDesired((display,), by_region)


def _load_source(
    source: Source, display: str, explicit: bool, problems: list[Problem]
) -> _FileDesired | _Skipped | None:
    if not explicit:
        kind = _other_yaml_kind(source.text)
        if kind is not None:
            return _Skipped(kind)  # decided before composing: fleet files can be large
    root = compose(source.text, display)
    if isinstance(root, Problem):
        problems.append(root)
        return None
    if root is None or (isinstance(root, ScalarNode) and root.tag == NULL_TAG and not root.value):
        problems.append(Problem(display, "empty file: expected a mapping with version, region, keys", 1, 1))
        return None
    if not isinstance(root, MappingNode):
        kind = "a list" if isinstance(root, SequenceNode) else f"the text {root.value!r:.60}"
        line, column = node_position(root)
        problems.append(
            Problem(
                display,
                f"the top level must be a mapping with version, region, keys; got {kind}",
                line,
                column,
            )
        )
        return None
    if top_level_keys(root) >= FLEET_FILE_KEYS:
        line, column = node_position(root)
        problems.append(
            Problem(
                display,
                "this is an emulator fleet file (it has 'regions' and 'credentials'), "
                "not a desired-state file",
                line,
                column,
            )
        )
        return None
    file_problems: list[Problem] = []
    data = construct(root, display, file_problems)
    locator = NodeLocator(root)
    if data is not None:
        file_problems.extend(validate_document(data, locator, display))
    if file_problems:
        problems.extend(file_problems)
        return None
    return _build(display, data, locator, root, SourceFile(display, source.sha256))


def _other_yaml_kind(text: str) -> str | None:
    """What a file found by a folder search is, if it is not a desired-state file.

    A file whose top level has ``version``, ``region`` or ``keys`` is a desired-state file,
    whatever else it has (a stray ``jobs:`` in it is an error, not a reason to skip it: in
    scope ``account`` a skipped file's allowances would vanish and the plan would unbind them).
    Only a file without any of them is recognised as a fleet file or CI pipeline.
    """
    if has_top_level_keys(text, PLAN_FILE_KEYS):  # has a region, but is no desired-state file
        return "cvmkeys plan file"
    if has_desired_file_keys(text):
        return None
    for kind, keys in OTHER_YAML_KINDS:
        if has_top_level_keys(text, keys):
            return kind
    return None


def has_desired_file_keys(text: str) -> bool:
    """Whether the top level of ``text`` has ``version``, ``region`` or ``keys`` (what makes a
    YAML file a desired-state file), cheaply: most files are ruled out without parsing."""
    return any(word in text for word in DESIRED_FILE_KEYS) and _has_any_top_level_key(text, DESIRED_FILE_KEYS)


# Where a block mapping's top-level key can be: at the start of a line, maybe quoted. A cheap
# filter before parsing: a fleet file (``regions:``, indented ``keys:``) never matches it.
_FIRST_CONTENT = re.compile(r"(?m)^([ \t]*)([^\s#-]|-(?!--))")
_TOP_LEVEL_CANDIDATE = re.compile(r"""(?m)^["']?(version|region|keys)["']?[ \t]*:""")


def _has_any_top_level_key(text: str, wanted: frozenset[str]) -> bool:
    # ``has_top_level_keys`` wants all of its keys; one of ours is enough. A flow mapping
    # (``{version: 1, ...}``) or an indented top level has no line-start keys: always parsed.
    first = _FIRST_CONTENT.search(text)
    if first is None or first.group(1) or first.group(2) == "{":  # indented, or a flow mapping
        words = sorted(word for word in wanted if word in text)
    else:
        words = sorted({match.group(1) for match in _TOP_LEVEL_CANDIDATE.finditer(text)} & wanted)
    return any(has_top_level_keys(text, frozenset({word})) for word in words)


def _build(
    display: str, data: dict[str, Any], locator: NodeLocator, root: Node, source: SourceFile
) -> _FileDesired:
    """The per-file desired state of a document that passed validation."""
    instance_locations: dict[str, Location] = {}

    def note_locations(path: tuple[str, ...], items: list[str]) -> None:
        list_node = locator.node(path)
        if not isinstance(list_node, SequenceNode):  # pragma: no cover - validated as a list
            return
        for item, item_node in zip(items, list_node.value, strict=True):
            if item not in instance_locations:
                mark = item_node.start_mark
                instance_locations[item] = Location(display, mark.line + 1, mark.column + 1)

    keys: dict[str, DesiredKey] = {}
    # Walk the top level in document order, so "first place listed" means first in the file.
    for top_field in data:
        if top_field == "keys":
            for key_id, entry in data["keys"].items():
                line, column = locator.position(("keys", key_id), key=True)
                instances: list[str] = entry["instances"]
                keys[key_id] = DesiredKey(
                    key_id=key_id,
                    instances=frozenset(instances),
                    name=entry.get("name"),
                    location=Location(display, line, column),
                )
                note_locations(("keys", key_id, "instances"), instances)
        elif top_field == "instances":
            note_locations(("instances",), data["instances"])
        elif top_field == "protected":
            note_locations(("protected", "instances"), data["protected"].get("instances", []))
    protected = data.get("protected", {})
    safety = data.get("safety", {})
    max_unbinds = safety.get("max_unbinds")
    max_percent = safety.get("max_unbind_percent")
    scope_given = None
    if "scope" in data:
        line, column = locator.position(("scope",))
        scope_given = Location(display, line, column)
    line, column = node_position(root)
    warnings: list[Problem] = []
    if not ids.is_known_region(data["region"]):
        region_line, region_column = locator.position(("region",))
        warnings.append(
            Problem(
                display,
                f"region {data['region']!r} is not one this version of cvmkeys knows: "
                "used as written (check the spelling if the API rejects it)",
                region_line,
                region_column,
            )
        )
    account_given = None
    if "account" in data:
        account_line, account_column = locator.position(("account",))
        account_given = Location(display, account_line, account_column)
    return _FileDesired(
        display=display,
        region=ids.normalize_region(data["region"]),
        scope=Scope(data.get("scope", Scope.KEYS.value)),
        scope_given=scope_given,
        keys=keys,
        protected_keys=frozenset(protected.get("keys", ())),
        protected_instances=frozenset(protected.get("instances", ())),
        extra_instances=frozenset(data.get("instances", ())),
        safety=SafetyLimits(
            max_unbinds=None if max_unbinds is None else int(max_unbinds),
            max_unbind_percent=None if max_percent is None else float(max_percent),
            max_stops=None if safety.get("max_stops") is None else int(safety["max_stops"]),
        ),
        source=source,
        instance_locations=instance_locations,
        data=data,
        locator=locator,
        top=Location(display, line, column),
        missing_instances=data.get("missing_instances", MISSING_ERROR),
        account=data.get("account"),
        account_given=account_given,
        warnings=tuple(warnings),
        disruption=_disruption(data.get("disruption")),
    )


def _disruption(block: dict[str, Any] | None) -> Disruption | None:
    """The ``disruption`` block of a valid document; the model's defaults fill what it leaves
    out (the schema's ``default``s say the same). None without a block."""
    if block is None:
        return None
    given: dict[str, Any] = {}
    # ``3.0`` is a whole number to the schema; the model holds ints and floats.
    for name, kind in (("max_stopped", int), ("max_stopped_percent", float), ("stop_timeout", int)):
        if name in block:
            given[name] = kind(block[name])
    if "stop_type" in block:
        given["stop_type"] = StopType(block["stop_type"])
    return Disruption(stop_running=bool(block["stop_running"]), **given)


# --------------------------------------------------------------------------- merging


def _merge(files: list[_FileDesired], problems: list[Problem]) -> dict[str, Desired]:
    """One ``Desired`` per region from the valid files; conflicts between files are problems."""
    grouped: dict[str, list[_FileDesired]] = {}
    for loaded in files:
        grouped.setdefault(loaded.region, []).append(loaded)
    merged: dict[str, Desired] = {}
    for region in sorted(grouped):
        group = grouped[region]
        first = group[0]
        keys: dict[str, DesiredKey] = {}
        key_files: dict[str, _FileDesired] = {}
        instance_locations: dict[str, Location] = {}
        for loaded in group:
            if loaded.scope is not first.scope:
                _scope_conflict(region, first, loaded, problems)
            for key_id, key in loaded.keys.items():
                if key_id in keys:
                    problems.append(
                        _problem_at(
                            key.location or loaded.top,
                            f"key {key_id!r} is declared in two files for region {region}: "
                            f"also at {keys[key_id].location}",
                        )
                    )
                    continue
                keys[key_id] = key
                key_files[key_id] = loaded
            for instance_id, location in loaded.instance_locations.items():
                instance_locations.setdefault(instance_id, location)
        _extra_instance_conflicts(group, keys, key_files, problems)
        account = _account(region, group, problems)
        disruption = _region_disruption(region, group, problems)
        # An instance's absence is only a warning when every file that names it says so.
        strict = _declared(group, lenient=False)
        lenient = _declared(group, lenient=True)
        merged[region] = Desired(
            region=region,
            scope=first.scope,
            keys=keys,
            protected_keys=frozenset().union(*(f.protected_keys for f in group)),
            protected_instances=frozenset().union(*(f.protected_instances for f in group)),
            extra_instances=frozenset().union(*(f.extra_instances for f in group)),
            safety=SafetyLimits(
                max_unbinds=_strictest(f.safety.max_unbinds for f in group),
                max_unbind_percent=_strictest(f.safety.max_unbind_percent for f in group),
                max_stops=_strictest(f.safety.max_stops for f in group),
            ),
            sources=tuple(f.source for f in group),
            instance_locations=instance_locations,
            missing_instances_warn=lenient - strict,
            account=account,
            disruption=disruption,
        )
    return merged


def _declared(group: list[_FileDesired], *, lenient: bool) -> frozenset[str]:
    """Instances declared by the files that say (``lenient``) or do not say ``missing_instances: warn``."""
    chosen = [f.declared_instances for f in group if (f.missing_instances == MISSING_WARN) is lenient]
    return frozenset().union(*chosen)


def _account(region: str, group: list[_FileDesired], problems: list[Problem]) -> str | None:
    """The one account the region's files name (files without ``account`` do not count)."""
    named = [f for f in group if f.account is not None]
    if not named:
        return None
    first = named[0]
    for other in named[1:]:
        if other.account != first.account:
            problems.append(
                _problem_at(
                    other.account_given or other.top,
                    f"account {other.account!r} differs from account {first.account!r} at "
                    f"{first.account_given}: all files for region {region} must name the same account",
                )
            )
    return first.account


def _region_disruption(region: str, group: list[_FileDesired], problems: list[Problem]) -> Disruption | None:
    """The one ``disruption`` block of the region's files: every file must have the same one,
    or none. A file without it disagrees with one that has it, so that one file's opt-in never
    stops instances that another file (maybe another team's) governs without saying so.
    Reported at the later file, naming the first, as the other conflicts are."""
    first = group[0]
    for other in group[1:]:
        if other.disruption == first.disruption:
            continue
        if first.disruption is None:
            problems.append(
                _problem_at(
                    other.location(("disruption",), key=True),
                    f"disruption block here, but {first.display} has none: all files for region "
                    f"{region} must have the same disruption block (add it there too, or remove it here)",
                )
            )
        elif other.disruption is None:
            problems.append(
                _problem_at(
                    other.top,
                    f"no disruption block in this file, but {first.location(('disruption',), key=True)} "
                    f"has one: all files for region {region} must have the same disruption block "
                    "(add it here too, or remove it there)",
                )
            )
        else:
            conflict = _disruption_conflict(region, (first, first.disruption), (other, other.disruption))
            problems.append(conflict)
    return first.disruption


def _disruption_conflict(
    region: str, first: tuple[_FileDesired, Disruption], second: tuple[_FileDesired, Disruption]
) -> Problem:
    """Two files of a region with different ``disruption`` blocks: the first field that differs,
    at the second file's field (or its block when it leaves the field at the default)."""
    (first_file, theirs_block), (other, mine_block) = first, second
    name, mine, theirs = next(
        (f.name, getattr(mine_block, f.name), getattr(theirs_block, f.name))
        for f in fields(Disruption)
        if getattr(mine_block, f.name) != getattr(theirs_block, f.name)
    )

    def place(loaded: _FileDesired) -> tuple[Location, str]:
        if name in loaded.data["disruption"]:
            return loaded.location(("disruption", name)), ""
        return loaded.location(("disruption",), key=True), " (the default)"

    here, here_default = place(other)
    there, there_default = place(first_file)
    return _problem_at(
        here,
        f"disruption {name} {_shown(mine)}{here_default} differs from {name} {_shown(theirs)}"
        f"{there_default} at {there}: all files for region {region} must have the same "
        "disruption block",
    )


def _shown(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, StopType):
        return value.value
    if value is None:
        return "not set"
    return f"{value:g}" if isinstance(value, float) else str(value)


def _strictest(limits: Iterable[float | None]) -> Any:
    given = [limit for limit in limits if limit is not None]
    return min(given) if given else None


def _scope_conflict(region: str, first: _FileDesired, other: _FileDesired, problems: list[Problem]) -> None:
    where = str(first.scope_given) if first.scope_given else f"{first.display} (the default)"
    problems.append(
        _problem_at(
            other.scope_given or other.top,
            f"scope {other.scope.value!r} differs from scope {first.scope.value!r} at {where}: "
            f"all files for region {region} must have the same scope",
        )
    )


def _extra_instance_conflicts(
    group: list[_FileDesired],
    keys: Mapping[str, DesiredKey],
    key_files: Mapping[str, _FileDesired],
    problems: list[Problem],
) -> None:
    """An instance in a top-level ``instances`` list (no key allowed) that a key allows."""
    extras = [(f, instance) for f in group for instance in f.data.get("instances", ())]
    if not extras:
        return
    allowed_by: dict[str, str] = {}
    for declared_id, declared in keys.items():
        for instance_id in declared.instances:
            allowed_by.setdefault(instance_id, declared_id)
    for loaded, instance_id in extras:
        key_id = allowed_by.get(instance_id)
        if key_id is None:
            continue
        owner = key_files[key_id]
        index = owner.data["keys"][key_id]["instances"].index(instance_id)
        elsewhere = owner.location(("keys", key_id, "instances", index))
        here = loaded.location(("instances", loaded.data["instances"].index(instance_id)))
        problems.append(
            _problem_at(
                here,
                f"{instance_id!r} is listed under 'instances' (owned, no key allowed) "
                f"but key {key_id!r} allows it at {elsewhere}",
            )
        )


def _problem_at(location: Location, message: str) -> Problem:
    return Problem(location.file, message, location.line, location.column)


def _ordered(problems: list[Problem]) -> list[Problem]:
    """Problems sorted by file, then position; at most ``MAX_PROBLEMS_PER_FILE`` per file."""
    by_file: dict[str, list[Problem]] = {}
    for problem in problems:
        by_file.setdefault(problem.file, []).append(problem)
    ordered: list[Problem] = []
    for name in sorted(by_file):
        # Stable: at one position, a YAML-level problem stays before the schema's echo of it.
        listed = sorted(by_file[name], key=lambda p: (p.line or 0, p.column or 0))
        ordered.extend(listed[:MAX_PROBLEMS_PER_FILE])
        if len(listed) > MAX_PROBLEMS_PER_FILE:
            hidden = len(listed) - MAX_PROBLEMS_PER_FILE
            ordered.append(Problem(name, f"... and {_count(hidden, 'more problem')} not shown"))
    return ordered
