"""Safe YAML reading, the one pipeline: bytes -> checked text -> node graph -> plain data.

Called by ``reconciler.desired.loader`` for desired-state files and by
``reconciler.emulator.fleetfile`` for the emulator's fleet fixture. The steps, each reporting a
``Problem`` with a 1-based line and column instead of raising a traceback:

1. ``read_source``: size limit, UTF-8 (position of the first bad byte), no NUL/control characters.
2. ``compose``: libyaml's C composer when available (the pure-Python one otherwise) turns the text
   into a node graph. Composing never constructs Python objects, so tags such as
   ``!!python/object`` are inert here.
3. ``construct``: our own constructor turns the node graph into dicts, lists and scalars. It
   accepts only plain data (no tags beyond the YAML core ones), reports duplicate mapping keys
   naming both lines (PyYAML silently keeps the last), rejects non-string keys and merge keys,
   and counts the nodes that aliases add so a "billion laughs" document fails in milliseconds.
4. ``NodeLocator`` maps a data path (as jsonschema's ``absolute_path`` gives it) back to the
   line and column of its node, for messages about valid YAML with invalid content.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from yaml.constructor import ConstructorError, SafeConstructor
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from reconciler.errors import Problem
from reconciler.files import FileReadError, read_bounded

# Largest desired-state file read; bigger files are refused before reading them whole.
MAX_FILE_BYTES = 32 * 1024 * 1024
# How many nodes aliases may add by expansion (each use of ``*anchor`` adds the size of the
# anchored node). Generous for sharing instance lists between keys, tiny next to a billion.
MAX_ALIAS_NODES = 100_000
# Desired-state files are four levels deep; anything far deeper is a mistake or an attack.
MAX_DEPTH = 64

# libyaml's C composer when PyYAML was built with it; the pure-Python one otherwise.
LOADER: type[yaml.SafeLoader] | type[Any] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)

_TAG = "tag:yaml.org,2002:"
STR_TAG = _TAG + "str"
NULL_TAG = _TAG + "null"
_BOOL_TAG = _TAG + "bool"
_INT_TAG = _TAG + "int"
_FLOAT_TAG = _TAG + "float"
_SEQ_TAG = _TAG + "seq"
_MAP_TAG = _TAG + "map"
_MERGE_TAG = _TAG + "merge"
# Read as the text written: a date-like name stays a string; ``=`` is just a character.
_TEXT_TAGS = frozenset({STR_TAG, _TAG + "timestamp", _TAG + "value"})

# What YAML itself allows in a stream (YAML 1.1 "printable"); the rest are control characters.
_NON_PRINTABLE = re.compile("[^\x09\x0a\x0d\x20-\x7e\x85\xa0-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")
_CONTROL_NAMES = {0: "NUL", 0x1B: "ESC", 0x7F: "DEL", 0x08: "backspace", 0x0C: "form feed"}


def mark_position(mark: yaml.Mark | None) -> tuple[int | None, int | None]:
    """1-based (line, column) of a PyYAML mark (which is 0-based)."""
    if mark is None:
        return None, None
    return mark.line + 1, mark.column + 1


def node_position(node: Node) -> tuple[int, int]:
    """1-based (line, column) where ``node`` starts."""
    return node.start_mark.line + 1, node.start_mark.column + 1


def describe_tag(tag: str) -> str:
    """A tag as the user wrote it: ``!!python/object`` rather than the expanded URI."""
    return "!!" + tag[len(_TAG) :] if tag.startswith(_TAG) else tag


# --------------------------------------------------------------------------- reading


@dataclass(frozen=True, slots=True)
class Source:
    """The checked text of one file and the SHA-256 of its bytes."""

    text: str
    sha256: str


def read_source(path: Path, display: str) -> Source | Problem:
    """Read ``path`` as UTF-8 YAML text, or say precisely why it cannot be read."""
    try:
        # Regular files only, at most MAX_FILE_BYTES: a FIFO or /dev/zero never hangs or fills memory.
        data = read_bounded(path, MAX_FILE_BYTES, "file", display)
    except FileReadError as error:
        return error.problems[0]
    digest = hashlib.sha256(data).hexdigest()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        line, column = _byte_position(data, error.start)
        bad = data[error.start : error.start + 1].hex()
        return Problem(
            display, f"not UTF-8 text: byte 0x{bad} cannot be decoded ({error.reason})", line, column
        )
    if text.startswith("\ufeff"):
        text = text[1:]  # a UTF-8 byte order mark is allowed and means nothing
    bad_char = _NON_PRINTABLE.search(text)
    if bad_char is not None:
        code = ord(bad_char.group())
        name = _CONTROL_NAMES.get(code)
        label = f"U+{code:04X}" + (f" ({name})" if name else "")
        line, column = _char_position(text, bad_char.start())
        return Problem(
            display,
            f"control character {label} is not allowed in YAML (is this a binary file?)",
            line,
            column,
        )
    return Source(text, digest)


def _byte_position(data: bytes, offset: int) -> tuple[int, int]:
    line_start = data.rfind(b"\n", 0, offset) + 1
    column = len(data[line_start:offset].decode("utf-8", errors="replace")) + 1
    return data.count(b"\n", 0, offset) + 1, column


def _char_position(text: str, offset: int) -> tuple[int, int]:
    line_start = text.rfind("\n", 0, offset) + 1
    return text.count("\n", 0, offset) + 1, offset - line_start + 1


# --------------------------------------------------------------------------- composing


def compose(text: str, display: str) -> Node | Problem | None:
    """The node graph of a single-document YAML text (``None`` for an empty document)."""
    try:
        node: Node | None = yaml.compose(text, Loader=LOADER)  # compose only: never constructs objects
    except yaml.MarkedYAMLError as error:
        line, column = mark_position(error.problem_mark or error.context_mark)
        problem = error.problem or error.context or "syntax error"
        tab = _is_tab_at(text, error.problem_mark)
        if tab:
            # libyaml says "found character that cannot start any token", which hides the cause.
            problem = "tab characters are not allowed for indentation in YAML: indent with spaces"
        message = f"invalid YAML: {problem}"
        if error.context and error.problem and error.context_mark is not None and not tab:
            context_line, context_column = mark_position(error.context_mark)
            message += f" ({error.context} at line {context_line}, column {context_column})"
        return Problem(display, message, line, column)
    except yaml.YAMLError as error:  # reader errors of the pure loader carry no mark object
        return Problem(display, f"invalid YAML: {error}")
    except RecursionError:  # the pure-Python composer on absurdly deep nesting
        return Problem(display, f"invalid YAML: nested deeper than {MAX_DEPTH} levels")
    return node


def _is_tab_at(text: str, mark: yaml.Mark | None) -> bool:
    """True if the character at ``mark`` (or the line's indentation before it) is a tab."""
    if mark is None:
        return False
    lines = text.split("\n", mark.line + 1)
    if mark.line >= len(lines):
        return False
    line = lines[mark.line]
    return line[mark.column : mark.column + 1] == "\t" or "\t" in line[: len(line) - len(line.lstrip())]


def has_top_level_keys(text: str, wanted: frozenset[str]) -> bool:
    """True if ``text`` is a YAML mapping whose top level has every key in ``wanted``.

    Reads parser events and stops as soon as it knows, so that recognising a large emulator
    fleet file (to skip it) costs far less than composing it. Invalid YAML answers False.
    """
    if not all(word in text for word in wanted):  # the common case costs one substring search
        return False
    found: set[str] = set()
    try:
        for key, _ in top_level_entries(text):
            if key is not None:
                found.add(key)
                if found >= wanted:
                    return True
    except yaml.YAMLError:
        return False
    return False


def top_level_entries(text: str) -> Iterator[tuple[str | None, yaml.Event | None]]:
    """(key, value) of each top-level entry of the YAML mapping ``text``, from parser events
    (nothing is composed: cheap on a large file, and the entries before a syntax error still
    come). The key is its text (None when not a plain scalar); the value its scalar or alias
    event (None when a collection, yielded where it starts). Ends at the first document's end,
    or at once when the top level is not a mapping; ``yaml.YAMLError`` where the text stops
    being YAML."""
    depth = 0
    key: str | None = None
    at_key = True
    for event in yaml.parse(text, Loader=LOADER):
        if isinstance(event, (yaml.MappingStartEvent, yaml.SequenceStartEvent)):
            if depth == 0 and not isinstance(event, yaml.MappingStartEvent):
                return
            if depth == 1:
                if at_key:
                    key = None
                else:
                    yield key, None
            depth += 1
        elif isinstance(event, (yaml.MappingEndEvent, yaml.SequenceEndEvent)):
            depth -= 1
            if depth == 0:
                return
            if depth == 1:  # a collection key or value of the top level ended
                at_key = not at_key
        elif isinstance(event, (yaml.ScalarEvent, yaml.AliasEvent)):
            if depth == 0:
                return
            if depth == 1:
                if at_key:
                    key = event.value if isinstance(event, yaml.ScalarEvent) else None
                else:
                    yield key, event
                at_key = not at_key


# What tells the two kinds of YAML file apart, for both loaders: a top level with all of these
# is an emulator fleet file; one with any of these is a desired-state file.
FLEET_FILE_KEYS = frozenset({"regions", "credentials"})
DESIRED_FILE_KEYS = frozenset({"version", "region", "keys"})
# ... and one with all of these is a saved plan (JSON is YAML; a plan may be saved as plan.yaml).
PLAN_FILE_KEYS = frozenset({"format_version", "integrity"})


def top_level_keys(node: Node) -> set[str]:
    """The string keys of a top-level mapping node (empty for anything else)."""
    if not isinstance(node, MappingNode):
        return set()
    return {key.value for key, _ in node.value if _key_text(key) is not None}


# --------------------------------------------------------------------------- constructing


class _Abort(Exception):
    """Construction cannot continue (alias bomb, recursive alias, absurd nesting)."""

    def __init__(self, node: Node, message: str) -> None:
        super().__init__(message)
        self.node = node
        self.message = message


def _key_text(node: Node) -> str | None:
    """The text of a mapping key, or ``None`` when the key is not a string."""
    if isinstance(node, ScalarNode) and node.tag in _TEXT_TAGS:
        value: str = node.value
        return value
    return None


_SCALAR_KINDS = {
    NULL_TAG: "null",
    _BOOL_TAG: "a boolean",
    _INT_TAG: "an integer",
    _FLOAT_TAG: "a number",
    _MERGE_TAG: "a merge key",
}


class _Constructor:
    """Builds plain data from a node graph, collecting problems instead of raising."""

    def __init__(self, display: str, problems: list[Problem]) -> None:
        self.display = display
        self.problems = problems
        # Collections already built, by node identity: an alias reuses the object (no copy)
        # and its expanded size is counted against ``MAX_ALIAS_NODES``.
        self.built: dict[int, tuple[Any, int]] = {}
        self.in_progress: set[int] = set()
        self.alias_nodes = 0
        self.scalars = SafeConstructor()

    def problem(self, node: Node, message: str) -> None:
        line, column = node_position(node)
        self.problems.append(Problem(self.display, message, line, column))

    def build(self, node: Node, depth: int) -> tuple[Any, int]:
        """(value, expanded node count) of ``node``."""
        if isinstance(node, ScalarNode):
            return self.scalar(node), 1
        ident = id(node)
        done = self.built.get(ident)
        if done is not None:  # an alias: shares the object, but counts its expansion
            self.alias_nodes += done[1]
            if self.alias_nodes > MAX_ALIAS_NODES:
                raise _Abort(
                    node,
                    f"anchors and aliases expand to more than {MAX_ALIAS_NODES} nodes "
                    "(a 'billion laughs' document?); the alias of the anchor defined here "
                    "is used too often",
                )
            return done
        if ident in self.in_progress:
            raise _Abort(node, "recursive alias: an anchored node contains an alias to itself")
        if depth > MAX_DEPTH:
            raise _Abort(node, f"nested deeper than {MAX_DEPTH} levels")
        self.in_progress.add(ident)
        result: tuple[Any, int]
        if isinstance(node, SequenceNode):
            if node.tag != _SEQ_TAG:
                self.unsupported_tag(node)
            result = self.sequence(node, depth)
        elif isinstance(node, MappingNode):
            if node.tag != _MAP_TAG:
                self.unsupported_tag(node)
            result = self.mapping(node, depth)
        else:  # pragma: no cover - the composer makes only these three kinds
            raise _Abort(node, f"unexpected YAML node {type(node).__name__}")
        self.in_progress.discard(ident)
        self.built[ident] = result
        return result

    def sequence(self, node: SequenceNode, depth: int) -> tuple[list[Any], int]:
        items: list[Any] = []
        append = items.append
        size = 1
        for item in node.value:
            # Hot path: lists of IDs are long lists of plain strings.
            if item.__class__ is ScalarNode and item.tag == STR_TAG:
                append(item.value)
                size += 1
            else:
                value, item_size = self.build(item, depth + 1)
                append(value)
                size += item_size
        return items, size

    def mapping(self, node: MappingNode, depth: int) -> tuple[dict[str, Any], int]:
        result: dict[str, Any] = {}
        first: dict[str, Node] = {}
        size = 1
        for key_node, value_node in node.value:
            key = _key_text(key_node)
            if key is None:
                self.non_string_key(key_node)
                continue
            if key in first:
                first_line, _ = node_position(first[key])
                line, _ = node_position(key_node)
                self.problem(
                    key_node,
                    f"duplicate key {key!r}: at lines {first_line} and {line} of this mapping "
                    "(YAML would silently keep only the last)",
                )
                continue
            first[key] = key_node
            value, value_size = self.build(value_node, depth + 1)
            result[key] = value
            size += 1 + value_size
        return result, size

    def scalar(self, node: ScalarNode) -> Any:
        tag = node.tag
        if tag in _TEXT_TAGS:
            return node.value
        try:
            if tag == NULL_TAG:
                return None
            if tag == _BOOL_TAG:
                return self.scalars.construct_yaml_bool(node)
            if tag == _INT_TAG:
                return self.scalars.construct_yaml_int(node)
            if tag == _FLOAT_TAG:
                return self.scalars.construct_yaml_float(node)
        except (ValueError, KeyError, ConstructorError, OverflowError):
            shown = node.value if len(node.value) <= 60 else node.value[:57] + "..."
            self.problem(node, f"cannot read {shown!r} as {describe_tag(tag)}")
            return node.value
        if tag == _MERGE_TAG:  # ``<<`` as a value is just text
            return node.value
        self.unsupported_tag(node)
        return node.value

    def unsupported_tag(self, node: Node) -> None:
        self.problem(
            node,
            f"YAML tag {describe_tag(node.tag)!r} is not allowed: use plain mappings, lists and scalars",
        )

    def non_string_key(self, node: Node) -> None:
        if isinstance(node, ScalarNode) and node.tag == _MERGE_TAG:
            self.problem(node, "merge keys (<<) are not supported: write the fields out")
            return
        if isinstance(node, ScalarNode):
            kind = _SCALAR_KINDS.get(node.tag, describe_tag(node.tag))
            self.problem(
                node,
                f"field names must be strings, but {node.value!r} is read as {kind}; "
                "quote it if you mean the text",
            )
        else:
            kind = "a list" if isinstance(node, SequenceNode) else "a mapping"
            self.problem(node, f"field names must be strings, got {kind}")


def construct(root: Node, display: str, problems: list[Problem]) -> Any:
    """Plain data for the node graph ``root``; problems are appended to ``problems``.

    Returns ``None`` when construction had to stop (the reason is in ``problems``).
    """
    constructor = _Constructor(display, problems)
    try:
        value, _ = constructor.build(root, 0)
    except _Abort as abort:
        constructor.problem(abort.node, abort.message)
        return None
    return value


# --------------------------------------------------------------------------- locating


class NodeLocator:
    """Finds the node of a data path, to point messages at the right line and column."""

    def __init__(self, root: Node) -> None:
        self.root = root
        self._index: dict[int, dict[str, tuple[Node, Node]]] = {}

    def _pairs(self, node: MappingNode) -> dict[str, tuple[Node, Node]]:
        index = self._index.get(id(node))
        if index is None:
            index = {}
            for key_node, value_node in node.value:
                key = _key_text(key_node)
                if key is not None and key not in index:  # the constructor keeps the first
                    index[key] = (key_node, value_node)
            self._index[id(node)] = index
        return index

    def node(self, path: Iterable[str | int], *, key: bool = False) -> Node:
        """The node at ``path`` (the key node of the last step when ``key``), or the deepest
        node that exists along it."""
        node = self.root
        steps: Sequence[str | int] = tuple(path)
        for position, step in enumerate(steps):
            last = position == len(steps) - 1
            if isinstance(node, MappingNode) and isinstance(step, str):
                pair = self._pairs(node).get(step)
                if pair is None:
                    return node
                node = pair[0] if (last and key) else pair[1]
            elif isinstance(node, SequenceNode) and isinstance(step, int):
                if not 0 <= step < len(node.value):
                    return node
                node = node.value[step]
            else:
                return node
        return node

    def position(self, path: Iterable[str | int], *, key: bool = False) -> tuple[int, int]:
        """1-based (line, column) of the node at ``path``."""
        return node_position(self.node(path, key=key))


def is_finite_number(value: object) -> bool:
    """True for ints and finite floats (not booleans, not NaN or infinities)."""
    if isinstance(value, bool):
        return False
    if isinstance(value, int):
        return True
    return isinstance(value, float) and math.isfinite(value)
