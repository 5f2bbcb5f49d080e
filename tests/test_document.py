"""The plan document: JSON form, integrity digest, schema, and every way a plan file is refused."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from typing import Any

import pytest
import support
from test_render_samples import check_golden, empty_plan, full_plan, full_result

from reconciler.cloud.client import instance_state
from reconciler.core.document import (
    canonical_digest,
    dump_plan,
    plan_from_data,
    plan_to_data,
    result_to_data,
)
from reconciler.core.plan import build_plan
from reconciler.errors import PlanIntegrityError
from reconciler.model import (
    PLAN_FORMAT_VERSION,
    ChangeStatus,
    Desired,
    DesiredKey,
    Instance,
    Plan,
    Scope,
    SourceFile,
)
from reconciler.planfile import load_plan
from reconciler.render.json import render_plan_json, render_result_json
from reconciler.schemas import load_schema, validator


def core_plan() -> Plan:
    """A plan from the real core, so the document keeps up with what the core produces."""
    desired = Desired(
        region="ap-guangzhou",
        scope=Scope.KEYS,
        keys={"skey-aaaa0001": DesiredKey("skey-aaaa0001", frozenset({"ins-aaaa0001"}), name="ci")},
        protected_instances=frozenset({"ins-aaaa0004"}),
        sources=(SourceFile("bindings.yaml", hashlib.sha256(b"x").hexdigest()),),
    )
    observed = support.observed(
        {"skey-aaaa0001": ["ins-aaaa0001", "ins-aaaa0002", "ins-aaaa0003", "ins-aaaa0004"]},
        [
            Instance("ins-aaaa0001", "one", *instance_state(4), "centos7.2x86_64"),
            Instance("ins-aaaa0002", "two", *instance_state(4), "centos7.2x86_64"),
            Instance("ins-aaaa0003", "three", *instance_state(2), "ubuntu"),
        ],
        names={"skey-aaaa0001": "ci"},
    )
    return build_plan(desired, observed, endpoint="https://cvm.api.qcloud.com/v2/index.php")


def _resealed(data: dict[str, Any]) -> str:
    """Text of ``data`` with a freshly computed digest: how a deliberate editor would do it."""
    data = {k: v for k, v in data.items() if k != "integrity"}
    data["integrity"] = {"algorithm": "sha256", "digest": canonical_digest(data)}
    return json.dumps(data, indent=2)


def _refusal(text: str) -> str:
    with pytest.raises(PlanIntegrityError) as caught:
        load_plan(text, "plan.json")
    return caught.value.message


# --------------------------------------------------------------------------- round trip


@pytest.mark.parametrize("make", [full_plan, empty_plan, core_plan], ids=["full", "empty", "core"])
def test_round_trip_gives_the_same_plan(make: Any) -> None:
    plan = make()
    assert load_plan(dump_plan(plan), "plan.json") == plan


def test_core_plan_has_every_status_it_claims() -> None:
    statuses = {c.status for c in core_plan().changes}
    assert statuses == {ChangeStatus.READY, ChangeStatus.BLOCKED, ChangeStatus.PROTECTED}


def test_dump_is_indented_sorted_and_sealed() -> None:
    text = dump_plan(full_plan())
    assert text.endswith("}\n") and not text.endswith("\n\n")
    data = json.loads(text)
    assert list(data) == sorted(data)
    expected = json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False) + "\n"
    assert text == expected.replace("\u202e", "\\u202e")  # the bidi override in EVIL_NAME
    body = {k: v for k, v in data.items() if k != "integrity"}
    # The canonical form writes integral floats as integers (as JavaScript and jq do).
    assert body["safety"]["max_unbind_percent"] == 30.0
    body["safety"]["max_unbind_percent"] = 30
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    assert data["integrity"] == {
        "algorithm": "sha256",
        "digest": hashlib.sha256(canonical.encode("utf-8")).hexdigest(),
    }
    assert "数据库-主" in text  # readable, not \u-escaped


def test_json_golden() -> None:
    check_golden("plan_full.json", render_plan_json(full_plan()))
    check_golden("plan_empty.json", render_plan_json(empty_plan()))


@pytest.mark.parametrize("make", [full_plan, empty_plan, core_plan], ids=["full", "empty", "core"])
def test_document_validates_against_the_schema(make: Any) -> None:
    validator("plan").validate(json.loads(dump_plan(make())))


def test_schema_is_2020_12_with_id_and_documented_members() -> None:
    schema = load_schema("plan")
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert schema["$id"]
    required = set(schema["else"]["required"])  # a plan's ("then": a plan set of several regions)
    assert schema["then"] == {"$ref": "#/$defs/plan_set"}
    assert required >= {
        "format_version", "region", "scope", "endpoint", "api", "created_at", "changes", "batches",
        "findings", "summary", "safety", "sources", "fingerprint", "observed_digest", "premises",
        "integrity",
    }
    change = schema["$defs"]["change"]
    assert set(change["required"]) >= {
        "action", "key_id", "instance_id", "status", "reason", "warnings", "key_name",
        "instance_name", "instance_state",
    }
    assert change["properties"]["status"]["enum"] == ["ready", "blocked", "protected", "unchangeable"]
    # Every member written is described by the schema (no silent extras of our own).
    data = json.loads(dump_plan(full_plan()))
    # ``stops`` is written only with a disruption block (tests/test_stops.py covers it)
    assert set(data) == set(schema["properties"]) - {"stops"}
    assert set(data["changes"][0]) == set(change["properties"])


def test_plan_to_data_is_json_ready_with_enum_values() -> None:
    data = plan_to_data(full_plan())
    assert "integrity" not in data
    assert data["scope"] == "keys"
    assert data["changes"][2]["status"] == "blocked"
    assert data["findings"][1]["location"] == {"file": "examples/bindings.yaml", "line": 12, "column": 5}
    assert data["findings"][0]["location"] is None
    json.dumps(data, allow_nan=False)  # nothing that is not JSON


def test_plan_from_data_accepts_a_written_document() -> None:
    data = json.loads(dump_plan(full_plan()))
    assert plan_from_data(data, schema=validator("plan")) == full_plan()


# --------------------------------------------------------------------------- refusals


def test_edited_status_is_refused() -> None:
    data = json.loads(dump_plan(full_plan()))
    assert data["changes"][2]["status"] == "blocked"
    data["changes"][2]["status"] = "ready"
    message = _refusal(json.dumps(data, indent=2))
    assert message == (
        "plan.json: plan file was edited after it was written (integrity digest mismatch); run plan again"
    )


def test_edited_digest_is_refused() -> None:
    data = json.loads(dump_plan(empty_plan()))
    data["integrity"]["digest"] = "0" * 64
    assert "integrity digest mismatch" in _refusal(json.dumps(data))


def test_reformatting_keeps_the_plan_valid() -> None:
    # Whitespace, key order and 30.0 written as 30 (as jq may do) change no meaning.
    data = json.loads(dump_plan(full_plan()))
    data["safety"]["max_unbind_percent"] = 30
    text = json.dumps(dict(reversed(list(data.items()))), separators=(",", ":"))
    assert load_plan(text, "plan.json") == full_plan()


def test_missing_integrity_is_refused() -> None:
    data = plan_to_data(full_plan())
    message = _refusal(json.dumps(data))
    assert message.startswith("plan.json: plan file has no integrity digest")
    assert message.endswith("run plan again")


def test_unknown_integrity_algorithm_is_refused() -> None:
    data = json.loads(dump_plan(empty_plan()))
    data["integrity"]["algorithm"] = "md5"
    assert "unsupported integrity algorithm 'md5'" in _refusal(json.dumps(data))


@pytest.mark.parametrize(
    ("text", "line", "column"),
    [
        ('{\n  "format_version": "1.0",\n  "region" "x"\n}', 3, 12),
        ("", 1, 1),
        ('{"a": 1,}', 1, 9),
    ],
)
def test_bad_json_gives_its_position(text: str, line: int, column: int) -> None:
    message = _refusal(text)
    assert message.startswith(f"plan.json:{line}:{column}: not valid JSON: ")


def test_truncated_plan_file_gives_its_position() -> None:
    text = dump_plan(full_plan())
    cut = text[: len(text) // 2]
    message = _refusal(cut)
    last_line = cut.count("\n") + 1
    assert message.startswith(f"plan.json:{last_line}:")


@pytest.mark.parametrize("bad", ["NaN", "Infinity", "-Infinity"])
def test_non_json_numbers_are_refused(bad: str) -> None:
    assert "not valid JSON" in _refusal(f'{{"format_version": "1.0", "x": {bad}}}')


def test_duplicate_members_are_refused() -> None:
    assert "duplicate member 'status'" in _refusal('{"status": "ready", "status": "blocked"}')


def test_newer_major_format_says_upgrade() -> None:
    data = json.loads(dump_plan(full_plan()))
    data["format_version"] = "4.0"
    message = _refusal(_resealed(data))
    assert message.startswith("plan.json: plan format 4.0 is newer")
    assert message.endswith("upgrade cvmkeys")


def test_a_format_1_plan_is_refused_with_a_clear_message() -> None:
    data = json.loads(dump_plan(full_plan()))
    data["format_version"] = "1.0"
    message = _refusal(_resealed(data))
    assert message.startswith("plan.json: plan format 1.0 was written by an older cvmkeys")
    assert "3.x plans only" in message


def test_a_format_2_plan_is_refused_with_a_clear_message() -> None:
    data = json.loads(dump_plan(full_plan()))
    data["format_version"] = "2.0"
    del data["premises"]
    message = _refusal(_resealed(data))
    assert message.startswith("plan.json: plan format 2.0 was written by an older cvmkeys")
    assert "3.x plans only" in message and "keyless" in message


def test_a_2_0_batch_with_two_keys_is_refused() -> None:
    data = json.loads(dump_plan(full_plan()))
    data["batches"][0]["key_ids"].append("skey-legacy01")
    assert "an API 2.0 call takes exactly one" in _refusal(_resealed(data))


@pytest.mark.parametrize("version", ["0.9", "1", "v1.0", "1.0.0", None, 1.0])
def test_unreadable_format_versions_are_refused(version: Any) -> None:
    data = json.loads(dump_plan(full_plan()))
    data["format_version"] = version
    message = _refusal(_resealed(data))
    assert message.startswith("plan.json: ")
    assert "format" in message


def test_not_an_object_is_refused() -> None:
    assert _refusal("[1, 2]") == "plan.json: not a cvmkeys plan (expected a JSON object, got list)"


def test_newer_minor_version_with_unknown_members_is_read() -> None:
    data = json.loads(dump_plan(full_plan()))
    data["format_version"] = "3.7"
    data["future_member"] = {"anything": [1, 2]}
    data["changes"][0]["future_detail"] = "ignored"
    plan = load_plan(_resealed(data), "plan.json")
    assert plan.format_version == "3.7"
    assert dataclasses.replace(plan, format_version=PLAN_FORMAT_VERSION) == full_plan()


def test_a_3_0_plan_without_inputs_is_read_with_none() -> None:
    """Format 3.1 added ``inputs`` and ``summary.unchangeable``; a 3.0 plan has neither: no
    folder is searched again at apply, and the count reads 0."""
    data = json.loads(dump_plan(dataclasses.replace(full_plan(), inputs=("desired",))))
    assert data["format_version"] == "3.1" and data["inputs"] == ["desired"]
    assert load_plan(_resealed(data), "plan.json").inputs == ("desired",)
    data["format_version"] = "3.0"
    del data["inputs"]
    del data["summary"]["unchangeable"]
    old = load_plan(_resealed(data), "plan.json")
    assert old.inputs == ()
    # Not a default of 0: counted from the changes, as the Plan line counts it (QA).
    counted = sum(1 for c in old.changes if c.status is ChangeStatus.UNCHANGEABLE)
    assert old.summary.unchangeable == counted


def test_schema_violations_name_their_json_path() -> None:
    data = json.loads(dump_plan(full_plan()))
    data["changes"][3]["status"] = "done"
    del data["summary"]["calls"]
    data["batches"][0]["instance_ids"] = []
    message = _refusal(_resealed(data))
    assert message.startswith("plan.json: not a valid cvmkeys plan (3 schema problems):")
    statuses = "['ready', 'blocked', 'protected', 'unchangeable']"
    assert f"$.changes[3].status: 'done' is not one of {statuses}" in message
    assert "$.summary: 'calls' is a required property" in message
    assert "$.batches[0].instance_ids: [] should be non-empty" in message


def test_many_schema_violations_are_capped() -> None:
    data = json.loads(dump_plan(full_plan()))
    for change in data["changes"]:
        change["status"] = "done"
        change["warnings"] = "not a list"
    message = _refusal(_resealed(data))
    assert "(16 schema problems)" in message
    assert message.endswith("... and 6 more")


def test_batch_for_a_protected_binding_is_refused_even_when_resealed() -> None:
    # The schema cannot see it; apply calls the API from the batches, so the loader must.
    data = json.loads(dump_plan(full_plan()))
    data["batches"][0]["instance_ids"].append("ins-db000001")
    message = _refusal(_resealed(data))
    assert message == (
        "plan.json: $.batches[0]: unbinds ins-db000001 from skey-deploy01, which is not a ready "
        "change in this plan"
    )


def test_a_binding_batched_twice_is_refused() -> None:
    data = json.loads(dump_plan(full_plan()))
    data["batches"].append({"wave": 2, "key_ids": ["skey-deploy01"], "instance_ids": ["ins-web00001"]})
    assert "a second time" in _refusal(_resealed(data))


def test_lone_surrogate_in_a_cloud_name_still_round_trips() -> None:
    plan = full_plan()
    odd = dataclasses.replace(plan.changes[0], instance_name="bad\ud800name")
    plan = dataclasses.replace(plan, changes=(odd, *plan.changes[1:]))
    text = dump_plan(plan)
    text.encode("utf-8")  # writable as UTF-8
    assert load_plan(text, "plan.json") == plan


# --------------------------------------------------------------------------- results


def test_result_data_and_golden() -> None:
    data = result_to_data(full_result())
    assert data["summary"] == {
        "done": 3, "failed": 1, "blocked": 1, "protected": 1, "unchangeable": 0, "not-attempted": 1
    }
    assert data["results"][4] == {
        "key_id": "skey-legacy01",
        "instance_id": "ins-cn000001",
        "outcome": "failed",
        "reason": "resource operation failed",
        "api_code": 5100,
        "attempts": 3,
    }
    assert list(data["calls"]) == sorted(data["calls"])
    check_golden("result.json", render_result_json(full_result()))


def test_plan_file_escapes_invisible_characters_of_cloud_names() -> None:
    plan = full_plan()
    odd = dataclasses.replace(plan.changes[0], instance_name="a\x1b[2J\x9b31m\x7f\u202eb\u2028c")
    plan = dataclasses.replace(plan, changes=(odd, *plan.changes[1:]))
    text = dump_plan(plan)
    assert not any(ch in text for ch in "\x1b\x9b\x7f\u202e\u2028")
    assert "\\u009b" in text and "\\u202e" in text
    assert load_plan(text, "plan.json") == plan


@pytest.mark.parametrize(
    ("where", "value"),
    [(("safety", "owned_bindings"), 10**400), (("summary", "calls"), -(10**350))],
)
def test_a_number_no_plan_holds_is_refused_not_a_crash(where: tuple[str, str], value: int) -> None:
    """A forged 400-digit integer once reached float() and crashed (OverflowError) as a bug."""
    data = json.loads(dump_plan(full_plan()))
    data[where[0]][where[1]] = value
    assert "digits is out of range" in _refusal(_resealed(data))


def test_a_large_limit_a_desired_file_may_give_still_reads() -> None:
    """``max_unbinds: 10000000000000000000`` is allowed by the desired-state schema and
    ``--max-unbinds``: the plan it gives must show and apply (a bound of 18 digits refused it)."""
    plan = full_plan()
    big = dataclasses.replace(plan.safety, max_unbinds=10**19)
    text = dump_plan(dataclasses.replace(plan, safety=big))
    assert load_plan(text, "plan.json").safety.max_unbinds == 10**19
