"""``cvmkeys import``: a desired-state file written from what is live now.

Called by ``operations.import_desired`` (the ``import`` command). Two steps, kept apart like plan's:

* :func:`observe_for_import` reads the live state with the fewest calls: DescribeKeyPairs
  (only the chosen keys when the scope allows it, 100 a page), then DescribeInstances only for
  the instances those keys are bound to (100 IDs a call), just to learn their names. It talks
  to a ``cloud.base.CloudClient`` of either API (only its two describe methods), so this module
  imports no network code.
* :func:`render_desired` is pure: the same selection and observed state always give the same
  bytes. The YAML is written by hand, because the format is small and fixed and the names must
  go into comments (``- ins-1a2b3c4d  # web-1``), which PyYAML cannot write.

What the file declares, by scope (so that ``cvmkeys plan`` on it shows no changes):

* ``keys``: the chosen keys, each allowing exactly the instances it is bound to now.
* ``instances``: the instances the chosen keys are bound to; every key bound to one of them is
  declared, allowing exactly its current bindings among those instances.
* ``account``: every key of the region with every binding.

Names from the cloud are untrusted text. In comments they are cleaned (no control, format or
line-break characters; at most 64 characters), since a comment is only for people. A key's
``name:`` is data that plan checks, so it is written exactly, as a double-quoted YAML scalar
with every character that is not plainly printable escaped; tests load the result back through
``reconciler.desired.loader`` with hostile names.
"""

from __future__ import annotations

import json
import os
import unicodedata
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from reconciler import ids
from reconciler.common import plural
from reconciler.errors import ConfigError
from reconciler.model import KeyPair, Observed, Scope

if TYPE_CHECKING:
    from reconciler.cloud.base import CloudClient

# Where the editor finds the schema when no local copy is found: the published ``$id`` of
# ``schemas/bindings.schema.json``. ``schema_ref_for`` prefers a local copy; ``--schema-ref``
# overrides both.
DEFAULT_SCHEMA_REF = "https://cvmkeys.dev/schemas/bindings.schema.json"
_SCHEMA_FILE = ("schemas", "bindings.schema.json")
COMMENT_NAME_LIMIT = 64
# Bidirectional controls (Trojan Source) and invisible characters: printable to Python, but
# they change how the text around them reads.
_BIDI_AND_INVISIBLE = frozenset(
    "\u061c\u200b\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069\ufeff"
)


@dataclass(frozen=True)
class ImportSelection:
    """What to import: a region, a scope, and the keys (``None``: every key of the region)."""

    region: str
    scope: Scope = Scope.KEYS
    key_ids: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        if self.scope is Scope.ACCOUNT and self.key_ids is not None:
            raise ConfigError(
                "scope account owns every binding in the region; it cannot be limited to some keys",
                hint="use --all with --scope account, or --scope keys/instances with --keys",
            )
        bad = [key_id for key_id in self.key_ids or () if not ids.is_key_id(key_id)]
        if bad:
            raise ConfigError(
                f"not a key ID: {', '.join(repr(b) for b in bad[:5])}",
                hint="key IDs look like skey-3glfot13 (skey- and 8 lower-case letters or digits)",
            )


def parse_key_ids(values: Iterable[str]) -> tuple[str, ...]:
    """``--keys`` values, repeatable and comma-separated, as sorted distinct IDs."""
    found = {part.strip() for value in values for part in value.split(",") if part.strip()}
    return tuple(sorted(found))


def canonical_region(region: str) -> str:
    """The long region name of ``--region``: open-ended like the loader's (any well-formed long
    name, for regions newer than this version), but a near miss of a known region is refused
    with a did-you-mean, as ``validate`` does."""
    name = region.strip()
    typo = ids.is_likely_region_typo(name) if ids.is_well_formed_region(name) else ids.region_suggestion(name)
    if typo is not None:
        raise ConfigError(f"unknown region {name!r}: did you mean {typo}?", hint=f"--region {typo}")
    try:
        return ids.normalize_region(name)
    except KeyError:
        raise ConfigError(
            f"unknown region {name!r}",
            hint="use a long name such as ap-guangzhou or an API 2.0 short code such as gz",
        ) from None


# --------------------------------------------------------------------------- observing


def observe_for_import(client: CloudClient, selection: ImportSelection) -> Observed:
    """The live state ``render_desired`` needs: ceil(keys/100) + ceil(bound instances/100) calls.

    With ``--keys`` in scope ``keys`` only those keys are described (a ``keyIds.n`` filter);
    scope ``instances`` must see every key, to find the other keys bound to those instances.
    A chosen key that does not exist is a ``ConfigError``: a file declaring it could not be
    planned.
    """
    filtered = selection.scope is Scope.KEYS and selection.key_ids is not None
    pairs = client.describe_key_pairs(list(selection.key_ids or ()) if filtered else None)
    keys = {pair.key_id: pair for pair in pairs}
    missing = sorted(set(selection.key_ids or ()) - keys.keys())
    if missing:
        raise ConfigError(
            f"{plural(len(missing), 'key')} not found in {selection.region}: "
            + ", ".join(missing[:10])
            + (f" and {len(missing) - 10} more" if len(missing) > 10 else ""),
            hint="check the key IDs and the region (--region)",
        )
    wanted = _declared_bindings(selection, keys)
    instance_ids = sorted({iid for bound in wanted.values() for iid in bound})
    instances = {inst.instance_id: inst for inst in client.describe_instances(instance_ids)}
    return Observed(region=selection.region, keys=keys, instances=instances)


def _declared_bindings(selection: ImportSelection, keys: Mapping[str, KeyPair]) -> dict[str, tuple[str, ...]]:
    """Key ID -> the instances the file allows it on, sorted, for every key the file declares."""
    chosen = set(keys) if selection.key_ids is None else set(selection.key_ids) & keys.keys()
    if selection.scope is Scope.INSTANCES:
        owned = {iid for key_id in chosen for iid in keys[key_id].bound_instance_ids}
        declared = {
            key_id: tuple(sorted(set(pair.bound_instance_ids) & owned))
            for key_id, pair in keys.items()
            if key_id in chosen or owned.intersection(pair.bound_instance_ids)
        }
    else:
        declared = {key_id: tuple(sorted(set(keys[key_id].bound_instance_ids))) for key_id in chosen}
    return dict(sorted(declared.items()))


# --------------------------------------------------------------------------- rendering


@dataclass(frozen=True)
class ImportSummary:
    """Counts for the CLI's one-line report."""

    keys: int
    bindings: int
    instances: int
    instances_not_found: int


def summarize(selection: ImportSelection, observed: Observed) -> ImportSummary:
    """How many keys, bindings and instances ``render_desired`` declares."""
    declared = _declared_bindings(selection, observed.keys)
    instances = {iid for bound in declared.values() for iid in bound}
    return ImportSummary(
        keys=len(declared),
        bindings=sum(len(bound) for bound in declared.values()),
        instances=len(instances),
        instances_not_found=len(instances - observed.instances.keys()),
    )


def render_desired(
    selection: ImportSelection, observed: Observed, *, schema_ref: str = DEFAULT_SCHEMA_REF
) -> str:
    """The desired-state file (YAML text) that allows exactly the live bindings selected."""
    declared = _declared_bindings(selection, observed.keys)
    summary = summarize(selection, observed)
    lines = [
        f"# yaml-language-server: $schema={_comment(schema_ref, limit=None)}",
        "#",
        f"# Written by `cvmkeys import` from the live bindings of {selection.region} "
        f"(scope: {selection.scope.value}).",
        f"# {plural(summary.keys, 'key', thousands=True)}, "
        f"{plural(summary.bindings, 'binding', thousands=True)}, "
        f"{plural(summary.instances, 'instance', thousands=True)}. "
        "`cvmkeys plan` on this file shows no changes",
        "# until the cloud or the file changes. Names in comments are what the cloud reported,",
        "# cleaned for display; IDs are what counts. Format: docs/desired-state.md.",
        "",
        "version: 1",
        f"region: {selection.region}",
        f"scope: {selection.scope.value}",
        "",
    ]
    if not declared:
        lines.append("keys: {}")
    else:
        lines.append("keys:")
    for key_id, bound in declared.items():
        pair = observed.keys[key_id]
        lines.append(f"  {key_id}:")
        if pair.name and not _has_surrogates(pair.name):
            lines.append(f"    name: {yaml_double_quoted(pair.name)}")
        elif pair.name:
            # libyaml refuses an escaped lone surrogate; leave the name unchecked instead.
            lines.append("    # name not written: it holds characters YAML cannot represent")
        if not bound:
            lines.append("    instances: []")
            continue
        lines.append("    instances:")
        for iid in bound:
            instance = observed.instances.get(iid)
            note = f"not found in {selection.region}" if instance is None else _comment(instance.name)
            lines.append(f"      - {iid}  # {note}" if note else f"      - {iid}")
    return "\n".join(lines) + "\n"


def schema_ref_for(out: Path | None) -> str:
    """The ``$schema`` reference that is right where the imported file is written.

    With ``out``: the relative path from ``out``'s folder to the nearest
    ``schemas/bindings.schema.json`` in that folder or above it (stopping at the repository
    root, the first folder holding ``.git``) that is this schema (its ``$id`` says so): a
    checkout laid out like this repository, or a copy made by ``cvmkeys schema bindings``.
    Without one, or when the file is printed (where it lands is unknown), the published
    ``$id``, which is right anywhere.
    """
    published = published_schema_id()
    if out is None:
        return published
    folder = Path(os.path.abspath(out)).parent
    for candidate_root in (folder, *folder.parents):
        candidate = candidate_root.joinpath(*_SCHEMA_FILE)
        if _is_bindings_schema(candidate, published):
            return Path(os.path.relpath(candidate, folder)).as_posix()
        if (candidate_root / ".git").exists():
            break
    return published


def published_schema_id() -> str:
    """The ``$id`` of the bindings schema shipped with this cvmkeys."""
    from reconciler.schemas import load_schema

    identifier = load_schema("bindings").get("$id")
    return identifier if isinstance(identifier, str) and identifier else DEFAULT_SCHEMA_REF


def _is_bindings_schema(path: Path, published: str) -> bool:
    try:
        with path.open("rb") as handle:
            data = json.loads(handle.read(1_000_000))
    except (OSError, ValueError):
        return False
    # The old unpublished identifier counts too: a copy made by an earlier cvmkeys.
    return isinstance(data, dict) and data.get("$id") in (published, "urn:cvmkeys:schema:bindings:1")


def yaml_double_quoted(text: str) -> str:
    """``text`` as a YAML double-quoted scalar that any YAML 1.1/1.2 reader reads back exactly.

    Printable characters stay as they are (Chinese names stay readable); quotes, backslashes,
    control, format, separator and private-use characters become escapes.
    """
    out = ['"']
    for char in text:
        if char == '"':
            out.append('\\"')
        elif char == "\\":
            out.append("\\\\")
        elif char == " " or (char.isprintable() and char not in _BIDI_AND_INVISIBLE):
            out.append(char)
        else:
            code = ord(char)
            if code <= 0xFF:
                out.append(f"\\x{code:02x}")
            elif code <= 0xFFFF:
                out.append(f"\\u{code:04x}")
            else:
                out.append(f"\\U{code:08x}")
    out.append('"')
    return "".join(out)


def _comment(text: str, *, limit: int | None = COMMENT_NAME_LIMIT) -> str:
    """``text`` fit for a YAML comment: one line of printable characters, spaces collapsed."""
    kept = []
    for char in text:
        if char.isprintable() and char not in _BIDI_AND_INVISIBLE:
            kept.append(char)
        elif unicodedata.category(char) in ("Zs", "Zl", "Zp", "Cc"):
            kept.append(" ")  # tabs, newlines, odd spaces: a space, so words stay apart
    cleaned = " ".join("".join(kept).split())
    if limit is not None and len(cleaned) > limit:
        cleaned = cleaned[: limit - 1] + "\u2026"
    return cleaned


def _has_surrogates(text: str) -> bool:
    return any(0xD800 <= ord(char) <= 0xDFFF for char in text)

