"""Reading, checking and writing the emulator's fleet file (``examples/fleet.yaml``).

Called by ``emulator/state.py`` only. The fleet file is the emulator's whole world: accepted
credentials and, per region, instances and key pairs with their bindings
(``schemas/fleet.schema.json`` describes it).

Fleet files can be big (tens of thousands of instances), and PyYAML, even with libyaml, needs
seconds for that. So the emulator writes a YAML file in a fixed shape, one flow map per item
on one line, whose values are JSON scalars or lists (valid YAML). ``parse_fleet_text`` reads
that shape with a line scanner and ``json`` and falls back to ``yaml.CSafeLoader`` for any file
that does not fit it (hand-written files). A file that is one JSON document (as the benchmark's
generator writes) is read with ``json``. All paths give the same data; tests check it.

Every problem is reported as ``FILE:LINE:COL: message`` through ``InputError``; locations are
found by re-reading the file with marks only when there is something to report.
"""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import Mapping, Sequence
from typing import Any

import yaml

from reconciler.errors import InputError, Problem
from reconciler.ids import INSTANCE_ID_PATTERN, KNOWN_REGIONS, canonical_region, is_instance_id, is_key_id

PathT = tuple[str | int, ...]
# Last step of a path whose problem is the map key itself (an unknown field), not its value.
AT_KEY = "<key>"

INSTANCE_FIELDS = ("id", "name", "os", "status", "zone", "lan_ip", "wan_ips", "created")
INSTANCE_REQUIRED = ("id", "name", "os", "status")
KEY_FIELDS = ("id", "name", "bound", "pubkey", "created")
KEY_REQUIRED = ("id", "name")
CREDENTIAL_FIELDS = ("secret_id", "secret_key")
TIME_PATTERN = re.compile(r"^\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}$")
# The same patterns as schemas/fleet.schema.json.
IPV4_PATTERN = re.compile(
    r"^((25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])\.){3}(25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])$"
)
TRIMMED_PATTERN = re.compile(r"^\S(.*\S)?$")
MAX_STATUS = 999


# --------------------------------------------------------------------------- YAML (slow path)


class _StrictLoader(yaml.CSafeLoader):
    """CSafeLoader that refuses duplicate mapping keys instead of keeping the last one."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            try:
                duplicate = key in seen
            except TypeError:
                duplicate = False
            if duplicate:
                raise yaml.constructor.ConstructorError(
                    "while constructing a mapping",
                    node.start_mark,
                    f"duplicate key {key!r}",
                    key_node.start_mark,
                )
            with contextlib.suppress(TypeError):  # unhashable keys fail later, with a mark
                seen.add(key)
        return super().construct_mapping(node, deep=deep)


def _yaml_error(file: str, error: yaml.YAMLError, text: str = "") -> InputError:
    if isinstance(error, yaml.reader.ReaderError):
        # A character YAML does not allow (NUL, ESC, ...): the reader gives an offset, not a mark.
        line = text.count("\n", 0, error.position) + 1
        column = error.position - (text.rfind("\n", 0, error.position) + 1) + 1
        char = error.character if isinstance(error.character, int) else ord(str(error.character)[:1] or "?")
        message = f"not valid YAML: character U+{char:04X} is not allowed: {error.reason}"
        return InputError([Problem(file, message, line, column)])
    mark = getattr(error, "problem_mark", None)
    problem = getattr(error, "problem", None) or str(error)
    context = getattr(error, "context", None)
    message = f"{context}: {problem}" if context else str(problem)
    if mark is None:
        return InputError([Problem(file, f"not valid YAML: {message}")])
    return InputError([Problem(file, f"not valid YAML: {message}", mark.line + 1, mark.column + 1)])


# --------------------------------------------------------------------------- fast path

# The shape the writer produces. Any other line sends the file to the YAML loader.
_HEADER_RE = re.compile(r"^(credentials|regions):( \[\]| \{\})?$")
# The optional identity block (STS, metadata), as the writer puts it: one line of JSON.
_IDENTITY_RE = re.compile(r"^identity: (\{.*\})$")
_REGION_RE = re.compile(r"^  ([a-z][a-z0-9-]*):$")
_SECTION_RE = re.compile(r"^    (instances|keys):( \[\])?$")
_CRED_ITEM_RE = re.compile(r"^  - (\{.*\})$")
_ITEM_RE = re.compile(r"^      - (\{.*\})$")
# Every field name an item may have. In the writer's shape the names are bare and the values
# are JSON; quoting the names makes the whole section one JSON document.
_FIELD_NAMES = frozenset(INSTANCE_FIELDS) | frozenset(KEY_FIELDS) | frozenset(CREDENTIAL_FIELDS)
_NAME_PATTERNS = tuple(
    (f"{lead}{name}: ", f'{lead}"{name}": ') for name in sorted(_FIELD_NAMES) for lead in ("{", ", ")
)


class _NotFastShape(Exception):
    """The text is not in the writer's shape; use the YAML loader."""


def _refuse(text: str) -> Any:
    # YAML 1.1 reads 1e5 as a string and NaN as a string; no fleet field is a float anyway.
    raise _NotFastShape(f"number {text}")


def _flow_items(items: list[str]) -> list[Any]:
    """Parse one-line flow maps with JSON values (``{id: "ins-1", status: 4}``) all at once.

    A field name inside a string value would leave invalid JSON behind, and JSON's bare words
    (true, false, null, numbers) mean the same in YAML, so what parses here is what YAML reads.
    """
    text = "[" + ",".join(items) + "]"
    names = 0
    for bare, quoted in _NAME_PATTERNS:
        names += text.count(bare)
        text = text.replace(bare, quoted)
    try:
        value = json.loads(text, parse_float=_refuse, parse_constant=_refuse)
    except ValueError as error:
        raise _NotFastShape(str(error)) from None
    if not all(isinstance(item, dict) for item in value):
        raise _NotFastShape("not a map")
    if sum(len(item) for item in value) != names:
        raise _NotFastShape("a duplicate field")  # json keeps the last one; YAML must report it
    return list(value)


def _parse_fast(text: str) -> dict[str, Any]:
    data: dict[str, Any] = {}
    # Each list in the result, with the texts of its items; parsed together at the end.
    sections: list[tuple[list[Any], list[str]]] = []
    section: list[str] | None = None
    regions: dict[str, Any] | None = None
    region: dict[str, Any] | None = None
    top: str | None = None
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        if (match := _IDENTITY_RE.match(line)) is not None and "identity" not in data:
            try:
                data["identity"] = json.loads(match.group(1), parse_float=_refuse, parse_constant=_refuse)
            except ValueError as error:
                raise _NotFastShape(str(error)) from None
            top = section = None
            continue
        if (match := _HEADER_RE.match(line)) is not None:
            top, empty = match.group(1), match.group(2)
            if top in data:
                raise _NotFastShape("duplicate top-level key")
            if top == "credentials":
                data["credentials"] = []
                section = None if empty else []
                if section is not None:
                    sections.append((data["credentials"], section))
            else:
                regions = data["regions"] = {}
                region = section = None
            continue
        if top == "credentials" and section is not None and (m := _CRED_ITEM_RE.match(line)):
            section.append(m.group(1))
            continue
        if top == "regions" and regions is not None:
            if (match := _REGION_RE.match(line)) is not None:
                if match.group(1) in regions:
                    raise _NotFastShape("duplicate region")
                region = regions[match.group(1)] = {}
                section = None
                continue
            if region is not None and (match := _SECTION_RE.match(line)) is not None:
                name = match.group(1)
                if name in region:
                    raise _NotFastShape("duplicate section")
                region[name] = []
                section = None if match.group(2) else []
                if section is not None:
                    sections.append((region[name], section))
                continue
            if section is not None and (match := _ITEM_RE.match(line)) is not None:
                section.append(match.group(1))
                continue
        raise _NotFastShape(line)
    if not data:
        raise _NotFastShape("empty")
    for target, items in sections:
        target.extend(_flow_items(items))
    return data


# In a JSON document, what YAML 1.1 reads differently: surrogate escapes (YAML refuses them)
# and raw characters YAML takes for line breaks inside strings.
_JSON_NOT_YAML = re.compile(r"\\u[dD][89a-fA-F]|[\x85\u2028\u2029]")


def _unique_pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result = dict(pairs)
    if len(result) != len(pairs):
        raise _NotFastShape("a duplicate key")  # json keeps the last one; YAML must report it
    return result


def _parse_json(text: str) -> Any:
    """A fleet file that is one JSON document (``bench/fleetgen.py`` writes them): JSON is
    YAML, but libyaml takes seconds where ``json`` takes tens of milliseconds. Anything the two
    would read differently (floats, NaN, duplicate keys, surrogate escapes, Unicode line
    breaks) goes to the YAML loader instead."""
    if not text.lstrip().startswith("{") or _JSON_NOT_YAML.search(text):
        raise _NotFastShape("not a plain JSON object")
    try:
        return json.loads(text, parse_float=_refuse, parse_constant=_refuse, object_pairs_hook=_unique_pairs)
    except ValueError as error:
        raise _NotFastShape(str(error)) from None
    except RecursionError:
        # Nested ~1,000 deep: libyaml reports its nesting limit with a line and column.
        raise _NotFastShape("nested too deeply") from None


# PyYAML reads ~0.3 MB a second of hostile YAML (4 s and 300 MB for 3 MB of "k: v" lines);
# the emulator's own layout and JSON are read by fast paths at any size, general YAML up to this.
MAX_YAML_CHARS = 8 * 2**20

# How many nodes aliases may add by expansion (as the desired-state loader allows): a
# "billion laughs" file would otherwise make the checks walk (and messages print) 10^9 items.
MAX_ALIAS_NODES = 100_000


def _alias_problem(data: Any) -> str | None:
    """Why ``data`` (from the YAML loader) is refused for its aliases, or None.

    Counts, without recursion, the nodes the data would have with every alias written out, and
    compares that with the nodes it really holds: shared lists and maps come only from aliases.
    """
    expanded: dict[int, int] = {}  # id of a list/map -> its size with aliases expanded
    on_path: set[int] = set()
    real = 0
    stack: list[tuple[Any, bool]] = [(data, False)]
    while stack:
        node, finished = stack.pop()
        key = id(node)
        children = list(node.values()) if isinstance(node, dict) else node
        if finished:
            on_path.discard(key)
            size = 1 + sum(expanded.get(id(c), 1) for c in children)
            expanded[key] = size
            if size - real > MAX_ALIAS_NODES:
                return f"aliases expand to more than {MAX_ALIAS_NODES:,} extra nodes; write the data out"
            continue
        if key in expanded:
            continue
        if key in on_path:
            return "an alias inside its own anchor (recursive alias)"
        on_path.add(key)
        real += 1 + len(children)
        stack.append((node, True))
        stack.extend((c, False) for c in children if isinstance(c, (dict, list)))
    return None


def _first_alias(text: str) -> tuple[int, int] | None:
    try:
        for event in yaml.parse(text, Loader=yaml.CSafeLoader):
            if isinstance(event, yaml.AliasEvent) and event.start_mark is not None:
                return event.start_mark.line + 1, event.start_mark.column + 1
    except yaml.YAMLError:
        pass
    return None


def parse_fleet_text(text: str, file: str) -> Any:
    """The data of a fleet file: the fast scanner or ``json`` when the text fits, else the YAML
    loader.

    Raises ``InputError`` if the text is not YAML (with the place of the problem), or if its
    aliases would expand it beyond ``MAX_ALIAS_NODES`` extra nodes.
    """
    for fast in (_parse_fast, _parse_json):
        try:
            return fast(text)
        except _NotFastShape:
            pass
    if len(text) > MAX_YAML_CHARS:
        raise InputError(
            [
                Problem(
                    file,
                    f"over {MAX_YAML_CHARS // 2**20} MiB and neither in the emulator's own layout nor "
                    "one JSON object: too big to read as general YAML",
                )
            ],
            hint="let the emulator write the file, or write it as JSON (bench/fleetgen.py does)",
        )
    try:
        data = yaml.load(text, Loader=_StrictLoader)
    except yaml.YAMLError as error:
        raise _yaml_error(file, error, text) from None
    except ValueError:
        # int() refuses numbers of more than 4,300 digits (CVE-2020-10735); YAML does not.
        found = re.search(r"[0-9]{4000,}", text)
        line = text.count("\n", 0, found.start()) + 1 if found else None
        column = found.start() - text.rfind("\n", 0, found.start()) if found else None
        message = "a number too long to read (over 4,300 digits)"
        raise InputError([Problem(file, message, line, column)]) from None
    problem = _alias_problem(data) if "*" in text else None
    if problem is not None:
        place = _first_alias(text)
        line, column = place if place is not None else (None, None)
        raise InputError([Problem(file, problem, line, column)])
    return data


# --------------------------------------------------------------------------- checking


def _shown(value: object) -> str:
    """A value for a message: its repr, cut to 60 characters (a value can be megabytes)."""
    if isinstance(value, (list, dict)) and len(value) > 20:
        return f"<{_type_name(value)} of {len(value)} items>"
    try:
        text = repr(value)
    except RecursionError:  # pragma: no cover - the YAML and JSON readers stop near 1,000 levels
        text = f"<{_type_name(value)} nested too deeply>"
    return text if len(text) <= 60 else text[:57] + "..."


def _type_name(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a map"
    return type(value).__name__


IDENTITY_FIELDS = ("account_id", "roles", "web_identity_tokens")
_ACCOUNT_RE = re.compile(r"^[0-9]{1,20}$")
_ROLE_NAME_RE = re.compile(r"^[\w+=,.@-]{1,128}$")


def _check_identity(identity: object, out: list[tuple[PathT, str]]) -> None:
    """The optional ``identity`` block: account ID, instance roles, web identity tokens."""
    path: PathT = ("identity",)
    if not _check_map(identity, path, IDENTITY_FIELDS, (), "identity", out):
        return
    assert isinstance(identity, dict)
    account = identity.get("account_id")
    if "account_id" in identity and not (isinstance(account, str) and _ACCOUNT_RE.match(account)):
        out.append(((*path, "account_id"), "account_id must be a string of 1 to 20 digits"))
    roles = identity.get("roles", [])
    if not isinstance(roles, list):
        out.append(((*path, "roles"), "roles must be a list of role names"))
    else:
        for n, role in enumerate(roles):
            if not (isinstance(role, str) and _ROLE_NAME_RE.match(role)):
                out.append(
                    ((*path, "roles", n), f"role name {_shown(role)} must be 1-128 of [A-Za-z0-9+=,.@_-]")
                )
    tokens = identity.get("web_identity_tokens", [])
    if not isinstance(tokens, list):
        out.append(
            ((*path, "web_identity_tokens"), "web_identity_tokens must be a list of {provider_id, token}")
        )
        return
    for n, item in enumerate(tokens):
        tpath: PathT = (*path, "web_identity_tokens", n)
        if not _check_map(item, tpath, ("provider_id", "token"), ("token",), "a web identity token", out):
            continue
        for name in ("provider_id", "token"):
            if name in item and _check_str(item[name], (*tpath, name), name, out) and not item[name].strip():
                out.append(((*tpath, name), f"{name} must not be empty"))


def _check_map(
    value: object,
    path: PathT,
    fields: Sequence[str],
    required: Sequence[str],
    what: str,
    out: list[tuple[PathT, str]],
) -> bool:
    if not isinstance(value, dict):
        out.append((path, f"{what} must be a map, not {_type_name(value)}"))
        return False
    for name in value:
        if name not in fields:
            out.append(
                (
                    (*path, name, AT_KEY),
                    f"unknown field {_shown(name)} in {what} (allowed: {', '.join(fields)})",
                )
            )
    for name in required:
        if name not in value:
            out.append((path, f"{what} is missing required field {name!r}"))
    return True


_SURROGATE = re.compile("[\ud800-\udfff]")


def _check_str(value: object, path: PathT, what: str, out: list[tuple[PathT, str]]) -> bool:
    if not isinstance(value, str):
        out.append((path, f"{what} must be a string, not {_type_name(value)}"))
        return False
    if _SURROGATE.search(value):
        out.append((path, f"{what} is not valid Unicode text (a lone surrogate)"))
        return False
    return True


def _check_time(item: Mapping[str, Any], path: PathT, out: list[tuple[PathT, str]]) -> None:
    created = item.get("created")
    if (
        "created" in item
        and _check_str(created, (*path, "created"), "created", out)
        and not TIME_PATTERN.match(str(created))
    ):
        out.append(((*path, "created"), "created must look like 2020-01-31 12:00:00"))


def check_fleet(data: Any) -> list[tuple[PathT, str]]:
    """Every problem in fleet data, as (path in the document, message), in document order.

    Mirrors ``schemas/fleet.schema.json`` (tests check the two agree) and adds what a schema
    cannot say: IDs unique within a region, bindings naming instances of the same region,
    one spelling per region.
    """
    out: list[tuple[PathT, str]] = []
    if not _check_map(
        data, (), ("credentials", "regions", "identity"), ("credentials", "regions"), "the fleet file", out
    ):
        return out
    if "identity" in data:
        _check_identity(data["identity"], out)
    credentials = data.get("credentials")
    if "credentials" in data:
        if not isinstance(credentials, list) or not credentials:
            out.append((("credentials",), "credentials must be a non-empty list of {secret_id, secret_key}"))
        else:
            seen_ids: set[str] = set()
            for index, cred in enumerate(credentials):
                path: PathT = ("credentials", index)
                if not _check_map(cred, path, CREDENTIAL_FIELDS, CREDENTIAL_FIELDS, "a credential", out):
                    continue
                for name in CREDENTIAL_FIELDS:
                    if (
                        name in cred
                        and _check_str(cred[name], (*path, name), name, out)
                        and not TRIMMED_PATTERN.search(cred[name])
                    ):
                        out.append(((*path, name), f"{name} must be non-empty, without surrounding spaces"))
                secret_id = cred.get("secret_id")
                if isinstance(secret_id, str):
                    if secret_id in seen_ids:
                        out.append(((*path, "secret_id"), f"secret_id {secret_id} is listed twice"))
                    seen_ids.add(secret_id)
    regions = data.get("regions")
    if "regions" not in data:
        return out
    if not isinstance(regions, dict):
        out.append(
            (("regions",), f"regions must be a map of region name to region, not {_type_name(regions)}")
        )
        return out
    canonical_seen: dict[str, str] = {}
    for region_name, region in regions.items():
        rpath: PathT = ("regions", region_name)
        # IDs need only be unique within a region: each region is its own world.
        all_instances: dict[str, str] = {}
        all_keys: dict[str, str] = {}
        if not isinstance(region_name, str) or region_name not in KNOWN_REGIONS:
            out.append(
                (
                    (*rpath, AT_KEY),
                    f"unknown region {_shown(region_name)} (known: {', '.join(KNOWN_REGIONS)})",
                )
            )
            continue
        long_name = canonical_region(region_name)
        if long_name in canonical_seen:
            out.append(
                (
                    (*rpath, AT_KEY),
                    f"region {region_name} is {long_name}, already given as {canonical_seen[long_name]}",
                )
            )
        canonical_seen.setdefault(long_name, region_name)
        if region is None:
            continue
        if not _check_map(region, rpath, ("instances", "keys"), (), f"region {region_name}", out):
            continue
        region_instances: set[str] = set()
        instances = region.get("instances") or []
        if not isinstance(instances, list):
            out.append(((*rpath, "instances"), "instances must be a list"))
            instances = []
        for index, inst in enumerate(instances):
            if _plain_instance(inst) and inst["id"] not in all_instances:  # the common case, fast
                all_instances[inst["id"]] = long_name
                region_instances.add(inst["id"])
                continue
            ipath: PathT = (*rpath, "instances", index)
            if not _check_map(inst, ipath, INSTANCE_FIELDS, INSTANCE_REQUIRED, "an instance", out):
                continue
            iid = inst.get("id")
            if "id" in inst and _check_str(iid, (*ipath, "id"), "id", out):
                if not is_instance_id(iid):
                    out.append(
                        (
                            (*ipath, "id"),
                            f"instance id {_shown(iid)} must be ins- and 8 lower-case letters or digits",
                        )
                    )
                elif iid in all_instances:
                    out.append(((*ipath, "id"), f"instance {iid} is listed twice in region {region_name}"))
                else:
                    all_instances[iid] = long_name
                    region_instances.add(iid)
            for name in ("name", "os", "zone"):
                if name in inst:
                    _check_str(inst[name], (*ipath, name), name, out)
            status = inst.get("status")
            if "status" in inst and (
                not isinstance(status, int) or isinstance(status, bool) or not 1 <= status <= MAX_STATUS
            ):
                out.append(
                    (
                        (*ipath, "status"),
                        f"status must be an integer from 1 to {MAX_STATUS} (4 shut down, 2 running)",
                    )
                )
            if "lan_ip" in inst and _check_str(inst["lan_ip"], (*ipath, "lan_ip"), "lan_ip", out):
                _check_ip(inst["lan_ip"], (*ipath, "lan_ip"), out)
            if "wan_ips" in inst:
                wan = inst["wan_ips"]
                if not isinstance(wan, list):
                    out.append(((*ipath, "wan_ips"), "wan_ips must be a list of IPv4 addresses"))
                else:
                    for n, ip in enumerate(wan):
                        if _check_str(ip, (*ipath, "wan_ips", n), "a WAN IP", out):
                            _check_ip(ip, (*ipath, "wan_ips", n), out)
            _check_time(inst, ipath, out)
        keys = region.get("keys") or []
        if not isinstance(keys, list):
            out.append(((*rpath, "keys"), "keys must be a list"))
            keys = []
        for index, key in enumerate(keys):
            kpath: PathT = (*rpath, "keys", index)
            if not _check_map(key, kpath, KEY_FIELDS, KEY_REQUIRED, "a key", out):
                continue
            kid = key.get("id")
            if "id" in key and _check_str(kid, (*kpath, "id"), "id", out):
                if not is_key_id(kid):
                    out.append(
                        (
                            (*kpath, "id"),
                            f"key id {_shown(kid)} must be skey- and 8 lower-case letters or digits",
                        )
                    )
                elif kid in all_keys:
                    out.append(((*kpath, "id"), f"key {kid} is listed twice in region {region_name}"))
                else:
                    all_keys[kid] = long_name
            for name in ("name", "pubkey"):
                if name in key:
                    _check_str(key[name], (*kpath, name), name, out)
            _check_time(key, kpath, out)
            bound = key.get("bound", [])
            if bound is None:
                continue
            if not isinstance(bound, list):
                out.append(((*kpath, "bound"), "bound must be a list of instance IDs"))
                continue
            try:
                distinct: set[Any] | None = set(bound)
            except TypeError:  # an unhashable item: reported below
                distinct = None
            if distinct is not None and len(distinct) == len(bound) and distinct <= region_instances:
                continue  # the common case, at set speed: distinct instances of this region
            seen_bound: set[str] = set()
            for n, iid in enumerate(bound):
                bpath: PathT = (*kpath, "bound", n)
                if not isinstance(iid, str) or not is_instance_id(iid):
                    out.append((bpath, f"bound must list instance IDs (ins-xxxxxxxx), not {_shown(iid)}"))
                elif iid in seen_bound:
                    out.append((bpath, f"instance {iid} is listed twice"))
                elif iid not in region_instances:
                    out.append((bpath, f"instance {iid} is not an instance of region {region_name}"))
                else:
                    seen_bound.add(iid)
    return out


_REQUIRED_ONLY = frozenset(INSTANCE_REQUIRED)
_INSTANCE_ID_RE = re.compile(INSTANCE_ID_PATTERN)


def _text(value: object) -> bool:
    return type(value) is str and (value.isascii() or not _SURROGATE.search(value))


def _plain_instance(inst: object) -> bool:
    """True for a valid instance with only the required fields (checked again in full if not)."""
    if type(inst) is not dict or inst.keys() != _REQUIRED_ONLY:
        return False
    iid, status = inst["id"], inst["status"]
    return (
        type(iid) is str
        and _INSTANCE_ID_RE.match(iid) is not None
        and _text(inst["name"])
        and _text(inst["os"])
        and type(status) is int
        and 1 <= status <= MAX_STATUS
    )


def _check_ip(value: str, path: PathT, out: list[tuple[PathT, str]]) -> None:
    if not IPV4_PATTERN.search(value):
        out.append((path, f"{_shown(value)} is not an IPv4 address"))


def _compose(text: str) -> yaml.Node | None:
    try:
        return yaml.compose(text, Loader=yaml.CSafeLoader)
    except yaml.YAMLError:
        return None


def _locate(root: yaml.Node | None, path: PathT) -> tuple[int, int] | None:
    """Line and column (1-based) of the node at ``path``, or of its deepest existing parent."""
    node = root
    if node is None:
        return None
    key_of_node: yaml.Node | None = None
    for step in path:
        if step == AT_KEY:
            node = key_of_node or node
            break
        child = None
        if isinstance(node, yaml.MappingNode):
            for key_node, value_node in node.value:
                if key_node.value == str(step):
                    child, key_of_node = value_node, key_node
                    break
        elif isinstance(node, yaml.SequenceNode) and isinstance(step, int) and 0 <= step < len(node.value):
            child = node.value[step]
        if child is None:
            break
        node = child
    return node.start_mark.line + 1, node.start_mark.column + 1


# Problems listed (and located) in one error; the rest are counted. Locating composes the file
# once; a 30 MB file with 2.6 million unknown fields used to be composed once per problem.
MAX_PROBLEMS = 100


def problems_to_error(text: str, file: str, problems: list[tuple[PathT, str]]) -> InputError:
    """An ``InputError`` whose problems point at their line and column in ``text``."""
    located: list[Problem] = []
    # Positions come from composing the text as YAML: too slow for a big file (read by a fast
    # path), whose problems name their place in the data instead.
    root = _compose(text) if text and len(text) <= MAX_YAML_CHARS else None
    for path, message in problems[:MAX_PROBLEMS]:
        place = _locate(root, path)
        if place is None:
            where = ".".join(str(step) for step in path if step != AT_KEY)
            located.append(Problem(file, f"{where}: {message}" if where and root is None else message))
        else:
            located.append(Problem(file, message, place[0], place[1]))
    if len(problems) > MAX_PROBLEMS:
        located.append(Problem(file, f"... and {len(problems) - MAX_PROBLEMS:,} more problems not shown"))
    return InputError(located, hint="see schemas/fleet.schema.json and examples/fleet.yaml")


# --------------------------------------------------------------------------- writing

# Characters YAML does not allow literally, or reads as line breaks: written as \\uXXXX,
# an escape both JSON and YAML double-quoted strings understand.
_YAML_UNSAFE = re.compile("[\x7f-\x9f\u2028\u2029\ufeff\ufffe\uffff]")


def _escape_unsafe(match: re.Match[str]) -> str:
    return f"\\u{ord(match.group(0)):04x}"


def item_line(item: Mapping[str, Any]) -> str:
    """One item as the writer puts it on its line: ``{id: "ins-1a2b3c4d", status: 4}``."""
    text = json.dumps(item, ensure_ascii=False)
    # ``"id": `` cannot occur inside a JSON string (its quotes are escaped), so the first
    # occurrence is the field name.
    for name in item:
        text = text.replace(f'"{name}": ', f"{name}: ", 1)
    # DEL (\x7f) is ASCII but not allowed by YAML.
    return text if text.isascii() and "\x7f" not in text else _YAML_UNSAFE.sub(_escape_unsafe, text)


def render_fleet(
    credential_lines: Sequence[str],
    regions: Sequence[tuple[str, Sequence[str], Sequence[str]]],
    identity: Mapping[str, Any] | None = None,
) -> str:
    """The fleet file text from item lines (``item_line``): the identity block if any (one
    JSON line), credentials, then per region (name, instance lines, key lines)."""
    lines = [
        "# Fleet of the cvmkeys CVM API emulator (schemas/fleet.schema.json).",
        "# Written by the emulator: one item per line; comments are not kept.",
    ]
    if identity:
        lines.append("identity: " + json.dumps(dict(identity), ensure_ascii=True, sort_keys=True))
    lines += [
        "credentials:" + ("" if credential_lines else " []"),
    ]
    lines.extend(f"  - {line}" for line in credential_lines)
    lines.append("regions:" + ("" if regions else " {}"))
    for name, instance_lines, key_lines in regions:
        lines.append(f"  {name}:")
        for section, items in (("instances", instance_lines), ("keys", key_lines)):
            lines.append(f"    {section}:" + ("" if items else " []"))
            lines.extend(f"      - {line}" for line in items)
    return "\n".join(lines) + "\n"


def dump_fleet(data: Mapping[str, Any]) -> str:
    """The text of a fleet file in the shape ``parse_fleet_text`` reads fast.

    ``data`` must be valid fleet data (``check_fleet`` finds nothing). Fields are written in
    the order given; each instance, key and credential is one line: a flow map with bare field
    names and JSON values, e.g. ``{id: "ins-1a2b3c4d", name: "web-1", status: 4}``.
    """
    regions = [
        (
            name,
            [item_line(item) for item in (region or {}).get("instances") or []],
            [item_line(item) for item in (region or {}).get("keys") or []],
        )
        for name, region in (data.get("regions") or {}).items()
    ]
    return render_fleet(
        [item_line(cred) for cred in data.get("credentials") or []], regions, data.get("identity")
    )
