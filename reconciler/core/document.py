"""The plan document: a ``Plan`` as JSON, with an integrity digest, and back. Pure (no I/O).

Called by ``operations`` (``plan --out`` writes ``dump_plan``), by ``render.json`` (plans and
``result_to_data``) and by ``reconciler.planfile`` (``load_plan``, which passes in the plan
schema's validator: the core never loads a schema file). The form is specified by
``schemas/plan.schema.json`` and described in ``docs/plan-format.md``. The records it holds as
the model has them (changes, findings, batches, the stop schedule, results...) are written and
read field by field by ``core.records``; what differs from the model is written here.

Reading refuses, with a ``PlanIntegrityError`` that names the file, anything that is not exactly
a plan this version can carry out: text that is not JSON (``FILE:LINE:COL``), a newer major
format, a missing or wrong integrity digest, a schema violation (with its JSON path), and a
batch that would call the API for a binding the plan does not mark ready.

The digest catches accidental and hand edits. It is not a signature: whoever can edit the file
can recompute it. The reviewed plan (and the review itself) is the trust anchor.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Iterator, Mapping
from typing import Any, Protocol

from reconciler.common import canonical_sha256, plural, short_repr, unique_mapping
from reconciler.core.diff import LAST_KEY_WARNING
from reconciler.core.records import record_from_data, record_to_data
from reconciler.core.safety import check_safety
from reconciler.errors import PlanIntegrityError
from reconciler.model import (
    PLAN_FORMAT_VERSION,
    ApiVersion,
    ApplyResult,
    Batch,
    CallerIdentity,
    Change,
    ChangeStatus,
    Finding,
    Fingerprint,
    Outcome,
    Plan,
    Premise,
    SafetyLimits,
    Scope,
    SourceFile,
    StopSchedule,
    StopsResult,
    Summary,
)


class SchemaValidator(Protocol):
    """What ``load_plan`` needs of a JSON Schema validator (jsonschema's ``iter_errors``)."""

    def iter_errors(self, instance: Any) -> Iterator[Any]: ...

INTEGRITY_ALGORITHM = "sha256"
RESULT_FORMAT_VERSION = "1.1"
SUPPORTED_MAJOR = int(PLAN_FORMAT_VERSION.split(".")[0])
# Schema problems listed in one error before "and N more"; the first few are what one fixes.
_MAX_LISTED_PROBLEMS = 10
_MAX_PROBLEM_CHARS = 200
# A plan is 4 levels deep ($.findings[0].location.line); anything far deeper is not a plan, and
# the digest and the schema walk it recursively.
MAX_PLAN_DEPTH = 32

_INVISIBLE = re.compile("[\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069\u2028\u2029]")
_RERUN_HINT = "run `cvmkeys plan --out FILE` again and review the new plan"


# --------------------------------------------------------------------------- writing


def plan_to_data(plan: Plan) -> dict[str, Any]:
    """The plan as JSON-ready data (no ``integrity`` member); enums as their values.

    Every member is always present (``null`` when unknown), so readers never guess. The written
    ``format_version`` is always this version's: the data holds exactly what this version knows.
    """
    return {
        "format_version": PLAN_FORMAT_VERSION,
        "region": plan.region,
        "scope": plan.scope.value,
        "endpoint": plan.endpoint,
        "api": plan.api.value,
        "created_at": plan.created_at,
        "changes": [record_to_data(c) for c in plan.changes],
        "batches": [record_to_data(b) for b in plan.batches],
        "findings": [record_to_data(f) for f in plan.findings],
        "summary": record_to_data(plan.summary),
        "safety": record_to_data(plan.safety),
        "sources": [record_to_data(s) for s in plan.sources],
        "inputs": list(plan.inputs),
        "fingerprint": record_to_data(plan.fingerprint),
        "observed_digest": plan.observed_digest,
        # Not record_to_data: the plan records the account and the ARN, not the whole identity.
        "caller": None
        if plan.caller is None
        else {"account_id": plan.caller.account_id, "arn": plan.caller.arn},
        "premises": [record_to_data(p) for p in plan.premises],
        # Present only with a disruption block: plans without one stay byte-identical to
        # those of earlier 2.x versions (and their goldens and digests).
        **({"stops": stops_to_data(plan.stops)} if plan.stops is not None else {}),
    }


# --------------------------------------------------------------------------- the stop schedule


def stops_to_data(schedule: StopSchedule | None) -> dict[str, Any] | None:
    """The stop schedule as JSON-ready data (``null`` without a ``disruption`` block)."""
    return None if schedule is None else record_to_data(schedule)


def stops_from_data(data: Mapping[str, Any] | None) -> StopSchedule | None:
    """The inverse of ``stops_to_data`` (the data already validated by the schema)."""
    return None if data is None else record_from_data(StopSchedule, data)


def _check_stops(changes: tuple[Change, ...], schedule: StopSchedule | None, source: str) -> None:
    """Apply stops exactly the scheduled instances and unbinds exactly their keys there: every
    ``stop-unbind-start`` change is a scheduled instance's key and every scheduled key is such a
    ready change. So an edited schedule can neither stop an instance nor unbind a key that the
    reviewed changes do not show."""
    staged = {
        (c.key_id, c.instance_id)
        for c in changes
        if c.status is ChangeStatus.READY and c.action == "stop-unbind-start"
    }
    scheduled = {(k, st.instance_id) for st in (schedule.stops if schedule else ()) for k in st.key_ids}
    if staged != scheduled:
        pair = sorted(staged ^ scheduled)[0]
        raise PlanIntegrityError(
            f"{source}: $.stops does not match the stop-unbind-start changes "
            f"(first difference: {pair[0]} on {pair[1]})",
            hint=_RERUN_HINT,
        )
    ids = [st.instance_id for st in (schedule.stops if schedule else ())]
    if len(set(ids)) != len(ids):
        raise PlanIntegrityError(f"{source}: $.stops names an instance twice", hint=_RERUN_HINT)


# What ``_canonical_numbers`` leaves as it is without a call (a plan is ~100,000 strings).
_PLAIN = frozenset({str, int, bool, type(None)})


def _canonical_numbers(value: Any) -> Any:
    """Integral floats as ints, so ``30.0`` and ``30`` (as jq may rewrite it) digest alike."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, dict):
        return {k: v if v.__class__ in _PLAIN else _canonical_numbers(v) for k, v in value.items()}
    if isinstance(value, list):
        return [v if v.__class__ in _PLAIN else _canonical_numbers(v) for v in value]
    return value


def canonical_digest(data: Mapping[str, Any]) -> str:
    """SHA-256 (hex) of the canonical JSON of ``data`` without its ``integrity`` member.

    Canonical JSON: keys sorted, separators ``,`` and ``:``, no ASCII escaping, UTF-8 (lone
    surrogates, which cloud JSON can carry, are encoded as-is), integral floats as integers.
    """
    body = {k: v for k, v in data.items() if k != "integrity"}
    return canonical_sha256(_canonical_numbers(body))


_encode_string: Any = json.encoder.encode_basestring  # the C encoder's, ensure_ascii=False
_SCALARS: dict[Any, Any] = {True: "true", False: "false", None: "null"}


def _indented(value: Any, indent: str, out: list[str]) -> None:
    """Append ``json.dumps(value, indent=2, sort_keys=True, ensure_ascii=False,
    allow_nan=False)`` to ``out``, in pieces (the text of a nested value at ``indent``).

    The standard library indents with its pure-Python encoder (the C one does not indent):
    0.07 s for an L plan. This does the same walk with fewer calls: lists of strings, most of
    a plan, are joined in one go. Anything but str keys and JSON values raises ``TypeError``
    (``dump_plan`` then uses ``json.dumps``, which says what is wrong)."""
    cls = value.__class__
    if cls is str:
        out.append(_encode_string(value))
    elif cls is dict:
        if not value:
            out.append("{}")
            return
        inner = indent + "  "
        separator = "{" + inner
        for key in sorted(value):
            if key.__class__ is not str:
                raise TypeError("a key that is not a string")
            item = value[key]
            kind = item.__class__
            # Strings, ints, booleans and null inline: most members of a change are.
            if kind is str:
                out.append(separator + _encode_string(key) + ": " + _encode_string(item))
            elif kind is int:
                out.append(separator + _encode_string(key) + ": " + int.__repr__(item))
            elif kind is bool or item is None:
                out.append(separator + _encode_string(key) + ": " + _SCALARS[item])
            else:
                out.append(separator + _encode_string(key) + ": ")
                _indented(item, inner, out)
            separator = "," + inner
        out.append(indent + "}")
    elif cls is list:
        if not value:
            out.append("[]")
            return
        inner = indent + "  "
        if all(item.__class__ is str for item in value):
            out.append("[" + inner + ("," + inner).join(map(_encode_string, value)) + indent + "]")
            return
        out.append("[" + inner)
        for n, item in enumerate(value):
            if n:
                out.append("," + inner)
            _indented(item, inner, out)
        out.append(indent + "]")
    elif cls is int:
        out.append(int.__repr__(value))
    elif cls is float and math.isfinite(value):
        out.append(float.__repr__(value))
    elif cls is bool or value is None:
        out.append(_SCALARS[value])
    else:
        raise TypeError(f"not a JSON value of a plan: {cls.__name__}")


def _dumps_indented(data: Any) -> str:
    """``json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False, allow_nan=False)``."""
    out: list[str] = []
    try:
        _indented(data, "\n", out)
    except TypeError:
        return json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False, allow_nan=False)
    return "".join(out)


def dump_plan(plan: Plan) -> str:
    """The plan file's text: JSON, indent 2, sorted keys, trailing newline, with ``integrity``."""
    data = plan_to_data(plan)
    data["integrity"] = {"algorithm": INTEGRITY_ALGORITHM, "digest": canonical_digest(data)}
    text = _dumps_indented(data)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        # A lone surrogate (from a cloud name) cannot be written as UTF-8: escape everything.
        # The parsed values, and so the digest, are the same either way.
        text = json.dumps(data, indent=2, sort_keys=True, ensure_ascii=True, allow_nan=False)
    # json escapes C0 controls but not DEL, C1 controls or bidi overrides: escape those too, so
    # `cat plan.json` or a diff of it cannot be repainted by a cloud-supplied name. They occur
    # only inside strings, where \uXXXX means the same character.
    return _INVISIBLE.sub(lambda m: f"\\u{ord(m.group()):04x}", text) + "\n"


# --------------------------------------------------------------------------- reading


def _json_path(parts: Iterable[Any]) -> str:
    path = "$"
    for part in parts:
        path += f"[{part}]" if isinstance(part, int) else f".{part}"
    return path


def _short(text: str) -> str:
    return text if len(text) <= _MAX_PROBLEM_CHARS else text[: _MAX_PROBLEM_CHARS - 3] + "..."


def _schema_problems(data: Mapping[str, Any], schema: SchemaValidator) -> list[str]:
    errors = sorted(
        schema.iter_errors(data),
        key=lambda e: (tuple(str(p) for p in e.absolute_path), e.message),
    )
    return [f"{_json_path(e.absolute_path)}: {_short(e.message)}" for e in errors]


def _check_batches(
    api: ApiVersion, changes: tuple[Change, ...], batches: tuple[Batch, ...], source: str
) -> None:
    """Every binding a batch would unbind must be a ready change, and only once: apply calls
    the API from the batches, so this is what keeps blocked and protected bindings safe. A 2.0
    batch names exactly one key (UnBindInstanceKey takes one)."""
    ready = {(c.key_id, c.instance_id) for c in changes if c.status is ChangeStatus.READY}
    seen: set[tuple[str, str]] = set()
    for index, batch in enumerate(batches):
        where = f"{source}: $.batches[{index}]"
        if api is ApiVersion.V2 and len(batch.key_ids) != 1:
            raise PlanIntegrityError(
                f"{where}: names {plural(len(batch.key_ids), 'key')}; an API 2.0 call takes exactly one",
                hint=_RERUN_HINT,
            )
        for key_id, iid in batch.bindings:
            if (key_id, iid) not in ready:
                raise PlanIntegrityError(
                    f"{where}: unbinds {iid} from {key_id}, which is not a ready change in this plan",
                    hint=_RERUN_HINT,
                )
            if (key_id, iid) in seen:
                raise PlanIntegrityError(
                    f"{where}: unbinds {iid} from {key_id} a second time", hint=_RERUN_HINT
                )
            seen.add((key_id, iid))


_LAST_KEY_PREFIX = LAST_KEY_WARNING.split("{", 1)[0]


def _check_premises(changes: tuple[Change, ...], premises: tuple[Premise, ...], source: str) -> None:
    """Every instance with a ready change has exactly one premise that lists the keys the plan
    removes from it; an instance the plan leaves keyless carries the last-key warning (on its
    changes, as the diff writes it). Apply's last-key guarantee rests on these (``execute.freshness``)."""
    by_instance: dict[str, Premise] = {}
    for index, premise in enumerate(premises):
        if premise.instance_id in by_instance:
            raise PlanIntegrityError(
                f"{source}: $.premises[{index}]: {premise.instance_id} has two premises", hint=_RERUN_HINT
            )
        by_instance[premise.instance_id] = premise
    removed: dict[str, set[str]] = {}
    for change in changes:
        if change.status is ChangeStatus.READY:
            removed.setdefault(change.instance_id, set()).add(change.key_id)
    for iid, keys in sorted(removed.items()):
        found = by_instance.get(iid)
        if found is None or not keys <= set(found.key_ids):
            raise PlanIntegrityError(
                f"{source}: $.premises: no premise for {iid} that lists the keys the plan removes from it",
                hint=_RERUN_HINT,
            )
        if set(found.key_ids) <= keys and not any(
            w.startswith(_LAST_KEY_PREFIX)
            for c in changes
            if c.instance_id == iid and c.status is ChangeStatus.READY
            for w in c.warnings
        ):
            raise PlanIntegrityError(
                f"{source}: the plan removes every key of {iid} without the last-key warning",
                hint=_RERUN_HINT,
            )


# The schema's ID patterns, whole-string: jsonschema's ``pattern`` uses re.search, where ``$``
# also matches before a final newline, so "ins-1a2b3c4d\n" would pass the schema alone.
_PLAN_KEY_ID = re.compile(r"skey-[a-z0-9]+")
_PLAN_INSTANCE_ID = re.compile(r"ins-[a-z0-9]+")


def _check_ids(data: Mapping[str, Any], source: str) -> None:
    """Every ID apply may send (changes, batches, fingerprint) is exactly an ID, nothing more."""
    found: list[tuple[str, str, re.Pattern[str]]] = []
    for index, change in enumerate(data["changes"]):
        found.append((f"$.changes[{index}].key_id", change["key_id"], _PLAN_KEY_ID))
        found.append((f"$.changes[{index}].instance_id", change["instance_id"], _PLAN_INSTANCE_ID))
    for index, batch in enumerate(data["batches"]):
        for n, kid in enumerate(batch["key_ids"]):
            found.append((f"$.batches[{index}].key_ids[{n}]", kid, _PLAN_KEY_ID))
        for n, iid in enumerate(batch["instance_ids"]):
            found.append((f"$.batches[{index}].instance_ids[{n}]", iid, _PLAN_INSTANCE_ID))
    for n, kid in enumerate(data["fingerprint"]["key_ids"]):
        found.append((f"$.fingerprint.key_ids[{n}]", kid, _PLAN_KEY_ID))
    for n, iid in enumerate(data["fingerprint"]["instance_ids"]):
        found.append((f"$.fingerprint.instance_ids[{n}]", iid, _PLAN_INSTANCE_ID))
    for index, premise in enumerate(data["premises"]):
        found.append((f"$.premises[{index}].instance_id", premise["instance_id"], _PLAN_INSTANCE_ID))
        for n, kid in enumerate(premise["key_ids"]):
            found.append((f"$.premises[{index}].key_ids[{n}]", kid, _PLAN_KEY_ID))
    for n, stop in enumerate((data.get("stops") or {}).get("stops", [])):
        found.append((f"$.stops.stops[{n}].instance_id", stop["instance_id"], _PLAN_INSTANCE_ID))
    for where, value, pattern in found:
        if pattern.fullmatch(value) is None:
            raise PlanIntegrityError(
                f"{source}: {where}: {short_repr(value, _MAX_PROBLEM_CHARS)} is not an ID", hint=_RERUN_HINT
            )


def plan_from_data(data: Mapping[str, Any], *, schema: SchemaValidator, source: str = "<plan>") -> Plan:
    """Build a ``Plan`` from its JSON data, after validating it against the plan schema.

    ``source`` names the data in messages. Unknown members are ignored (newer minor versions
    may add them). Does not check the integrity digest: ``load_plan`` does that first.
    """
    problems = _schema_problems(data, schema)
    if problems:
        listed = problems[:_MAX_LISTED_PROBLEMS]
        if len(problems) > len(listed):
            listed.append(f"... and {len(problems) - len(listed)} more")
        noun = "problem" if len(problems) == 1 else "problems"
        raise PlanIntegrityError(
            f"{source}: not a valid cvmkeys plan ({len(problems)} schema {noun}):\n  "
            + "\n  ".join(listed),
            hint=_RERUN_HINT,
        )
    _check_ids(data, source)
    changes = tuple(record_from_data(Change, c) for c in data["changes"])
    batches = tuple(record_from_data(Batch, b) for b in data["batches"])
    api = ApiVersion(data["api"])
    _check_batches(api, changes, batches, source)
    premises = tuple(record_from_data(Premise, p) for p in data["premises"])
    _check_premises(changes, premises, source)
    stops = stops_from_data(data.get("stops"))
    _check_stops(changes, stops, source)
    findings = tuple(record_from_data(Finding, f) for f in data["findings"])
    v = data["safety"]
    percent = v["max_unbind_percent"]
    # The verdict is recomputed from the plan's own limits and ready changes, never trusted: a
    # resealed plan must not call itself safe.
    verdict = check_safety(
        sum(1 for c in changes if c.status is ChangeStatus.READY),
        v["owned_bindings"],
        SafetyLimits(v["max_unbinds"], None if percent is None else float(percent)),
    )
    return Plan(
        region=data["region"],
        scope=Scope(data["scope"]),
        endpoint=data["endpoint"],
        api=api,
        changes=changes,
        batches=batches,
        findings=findings,
        summary=_summary(data["summary"], changes),
        safety=verdict,
        sources=tuple(record_from_data(SourceFile, x) for x in data["sources"]),
        fingerprint=record_from_data(Fingerprint, data["fingerprint"]),
        observed_digest=data["observed_digest"],
        created_at=data["created_at"],
        format_version=data["format_version"],
        # Absent from plans written before it was recorded (same format version: optional).
        caller=None
        if data.get("caller") is None
        else CallerIdentity(data["caller"]["account_id"], data["caller"]["arn"]),
        premises=premises,
        stops=stops,
        inputs=tuple(data.get("inputs", ())),  # 3.0 plans have none: no folder to search again
    )


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    return unique_mapping(pairs, lambda key: f"duplicate member {key!r} in a JSON object")


def _finite_float(text: str) -> float:
    value = float(text)
    if value in (math.inf, -math.inf):
        # 1e400 parses as infinity, which no JSON writer (and not the digest) can represent.
        raise ValueError(f"number {text[:40]} is out of range")
    return value


# An integer of more digits could not become the float some members are read as (a float
# ends near 1.8e308: OverflowError). The schema bounds what each member may hold; this only
# keeps a forged number from reaching float().
_MAX_PLAN_INT_DIGITS = 300


class _OutOfRange(ValueError):
    """A number no float can hold."""


def _bounded_int(text: str) -> int:
    if len(text.lstrip("-")) > _MAX_PLAN_INT_DIGITS:
        raise _OutOfRange(f"a number of {len(text.lstrip('-')):,} digits is out of range")
    return int(text)


def _depth_at_most(data: Any, limit: int) -> bool:
    """True when ``data`` nests lists/objects at most ``limit`` deep (iterative: no recursion)."""
    stack: list[tuple[Any, int]] = [(data, 1)]
    while stack:
        value, depth = stack.pop()
        children = value.values() if isinstance(value, dict) else value if isinstance(value, list) else ()
        for child in children:
            if isinstance(child, (dict, list)):
                if depth + 1 > limit:
                    return False
                stack.append((child, depth + 1))
    return True


def _summary(data: Mapping[str, Any], changes: tuple[Change, ...]) -> Summary:
    """The summary; a 3.0 plan's has no ``unchangeable``: counted from its changes, as the
    Plan line counts it, rather than read as 0."""
    if "unchangeable" not in data:
        counted = sum(1 for c in changes if c.status is ChangeStatus.UNCHANGEABLE)
        data = {**data, "unchangeable": counted}
    return record_from_data(Summary, data)


def _parse(text: str, source: str) -> Any:
    if text.startswith("\ufeff"):  # json's own message would advise utf-8-sig
        raise PlanIntegrityError(
            f"{source}:1:1: not valid JSON: the file starts with a byte order mark (U+FEFF), "
            "which cvmkeys never writes",
            hint=_RERUN_HINT,
        )
    if not text.strip():
        raise PlanIntegrityError(f"{source}:1:1: not valid JSON: the file is empty", hint=_RERUN_HINT)
    try:
        data = json.loads(
            text,
            parse_constant=_reject_constant,
            parse_float=_finite_float,
            parse_int=_bounded_int,
            object_pairs_hook=_unique_keys,
        )
    except json.JSONDecodeError as error:
        raise PlanIntegrityError(
            f"{source}:{error.lineno}:{error.colno}: not valid JSON: {error.msg}",
            hint="a plan file is written by `cvmkeys plan --out FILE`; " + _RERUN_HINT,
        ) from None
    except _OutOfRange as error:
        raise PlanIntegrityError(f"{source}: not a cvmkeys plan: {error}", hint=_RERUN_HINT) from None
    except ValueError as error:
        raise PlanIntegrityError(f"{source}: not valid JSON: {error}", hint=_RERUN_HINT) from None
    except RecursionError:
        too_deep = True  # json gives up near 1,000 levels
    else:
        too_deep = not _depth_at_most(data, MAX_PLAN_DEPTH)
    if too_deep:
        raise PlanIntegrityError(
            f"{source}: not a cvmkeys plan: JSON nested more than {MAX_PLAN_DEPTH} levels deep",
            hint=_RERUN_HINT,
        )
    return data


def _check_version(data: Mapping[str, Any], source: str) -> None:
    version = data.get("format_version")
    if not isinstance(version, str):
        raise PlanIntegrityError(
            f"{source}: not a cvmkeys plan (no format_version string)", hint=_RERUN_HINT
        )
    major_text, dot, minor_text = version.partition(".")
    if not (dot and major_text.isdigit() and minor_text.isdigit()):
        raise PlanIntegrityError(
            f"{source}: format_version {version!r} is not MAJOR.MINOR", hint=_RERUN_HINT
        )
    major = int(major_text)
    if major > SUPPORTED_MAJOR:
        raise PlanIntegrityError(
            f"{source}: plan format {version} is newer than this cvmkeys reads "
            f"({SUPPORTED_MAJOR}.x); upgrade cvmkeys",
            hint="upgrade cvmkeys to the version that wrote the plan, or run plan again with this one",
        )
    if major < SUPPORTED_MAJOR:
        raise PlanIntegrityError(
            f"{source}: plan format {version} was written by an older cvmkeys; this one reads "
            f"{SUPPORTED_MAJOR}.x plans only (they record what each instance they unbind from "
            "looked like, so that apply can resume them and never leaves an instance keyless "
            "unwarned)",
            hint=_RERUN_HINT,
        )


def _check_integrity(data: Mapping[str, Any], source: str) -> None:
    integrity = data.get("integrity")
    if integrity is None:
        raise PlanIntegrityError(
            f"{source}: plan file has no integrity digest (not written by cvmkeys plan, "
            "or edited); run plan again",
            hint=_RERUN_HINT,
        )
    if not isinstance(integrity, dict) or not isinstance(integrity.get("digest"), str):
        raise PlanIntegrityError(
            f"{source}: $.integrity must be an object with a digest string; run plan again",
            hint=_RERUN_HINT,
        )
    algorithm = integrity.get("algorithm")
    if algorithm != INTEGRITY_ALGORITHM:
        raise PlanIntegrityError(
            f"{source}: unsupported integrity algorithm {algorithm!r} "
            f"(expected {INTEGRITY_ALGORITHM!r}); run plan again",
            hint=_RERUN_HINT,
        )
    if canonical_digest(data) != integrity["digest"]:
        raise PlanIntegrityError(
            f"{source}: plan file was edited after it was written (integrity digest mismatch); "
            "run plan again",
            hint=_RERUN_HINT,
        )


def load_plan(text: str, source: str, *, schema: SchemaValidator) -> Plan:
    """Read a plan file's text (``source`` names it in messages) and return the ``Plan``.

    Order of checks: JSON syntax, an object, a readable ``format_version``, the integrity
    digest, the schema, batch consistency. The first failure raises ``PlanIntegrityError``.
    """
    return plan_from_data(parse_checked(text, source), schema=schema, source=source)


def parse_checked(text: str, source: str) -> dict[str, Any]:
    """A plan file's text as its JSON object, once the syntax, the object, the ``format_version``
    and the integrity digest have been checked (what a plan and a plan set share; the first
    failure raises ``PlanIntegrityError``)."""
    data = _parse(text, source)
    if not isinstance(data, dict):
        raise PlanIntegrityError(
            f"{source}: not a cvmkeys plan (expected a JSON object, got {type(data).__name__})",
            hint=_RERUN_HINT,
        )
    _check_version(data, source)
    _check_integrity(data, source)
    return data


# --------------------------------------------------------------------------- apply results


def result_to_data(result: ApplyResult) -> dict[str, Any]:
    """An apply result as JSON-ready data (``apply --format json``); keys stable, enums as values."""
    return {
        "format_version": RESULT_FORMAT_VERSION,
        "region": result.region,
        "interrupted": result.interrupted,
        "stopped_reason": result.stopped_reason,
        "calls": {action: result.calls[action] for action in sorted(result.calls)},
        "results": [record_to_data(r) for r in result.results],
        "summary": {outcome.value: result.count(outcome) for outcome in Outcome},
        "already_applied": result.already_applied,
        **({"stops": stops_result_to_data(result.stops)} if result.stops is not None else {}),
    }


def stops_result_to_data(stops: StopsResult | None) -> dict[str, Any] | None:
    """What apply did to the scheduled instances; ``still_down`` first (``null``: no schedule)."""
    if stops is None:
        return None
    return {**record_to_data(stops), "still_down": [record_to_data(i) for i in stops.still_down]}
