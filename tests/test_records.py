"""core.records: the model's records as JSON-ready data and back, from their fields' types."""

from __future__ import annotations

import dataclasses
import json

import pytest

from reconciler.core.records import record_from_data, record_to_data
from reconciler.model import (
    BindingResult,
    Change,
    ChangeStatus,
    Finding,
    Location,
    Outcome,
    ScheduledStop,
    Severity,
    StopRound,
    StopSchedule,
    StopType,
)

# The codec's cases, not a realistic schedule: an enum, nested records, tuples of them, floats.
SCHEDULE = StopSchedule(
    enabled=True,
    stop_type=StopType.SOFT_FIRST,
    stops=(
        ScheduledStop("ins-00000001", "web-1", ("skey-00000001",), 0, 1, 150.0, 260.0, False),
        ScheduledStop("ins-00000002", "web-2", ("skey-00000001", "skey-00000002"), 0, 2, 165.5, 275.0, True),
    ),
    rounds=(StopRound(0, ("ins-00000001", "ins-00000002"), 1, 1, 165.5, 275.0),),
    wall_time=165.5,
)


def test_a_record_is_its_fields_by_name_with_enums_as_values_and_tuples_as_lists() -> None:
    change = Change("skey-00000001", "ins-00000001", ChangeStatus.BLOCKED, "busy", ("w",), "k", "i", "UP")
    assert record_to_data(change) == {
        "key_id": "skey-00000001",
        "instance_id": "ins-00000001",
        "status": "blocked",
        "reason": "busy",
        "warnings": ["w"],
        "key_name": "k",
        "instance_name": "i",
        "instance_state": "UP",
        "action": "unbind",
    }


@pytest.mark.parametrize(
    "record",
    [
        SCHEDULE,
        dataclasses.replace(SCHEDULE, stop_type=None, stops=(), rounds=()),
        Finding(Severity.WARNING, "key-not-found", "m", "skey-00000001", None, Location("a.yaml", 3, 5)),
        Finding(Severity.INFO, "c", "m"),
        BindingResult("skey-00000001", "ins-00000001", Outcome.FAILED, "r", "ResourceBusy", 3),
        BindingResult("skey-00000001", "ins-00000001", Outcome.DONE, "", 5100, 1),
    ],
    ids=repr,
)
def test_a_record_reads_back_from_its_json_as_it_was(record: object) -> None:
    data = json.loads(json.dumps(record_to_data(record)))
    assert record_from_data(type(record), data) == record


def test_numbers_read_into_float_fields_become_floats() -> None:
    data = json.loads(json.dumps(record_to_data(SCHEDULE)).replace("165.5", "165"))
    read = record_from_data(StopSchedule, data)
    assert read.wall_time == 165.0 and isinstance(read.wall_time, float)
    assert all(isinstance(r.duration, float) for r in read.rounds)


def test_unknown_members_are_ignored_and_a_missing_one_raises() -> None:
    data = record_to_data(SCHEDULE.rounds[0])
    assert record_from_data(StopRound, {**data, "newer": 1}) == SCHEDULE.rounds[0]
    del data["stop_calls"]
    with pytest.raises(KeyError, match="stop_calls"):
        record_from_data(StopRound, data)


def test_a_type_it_cannot_convert_is_refused_not_guessed() -> None:
    @dataclasses.dataclass(frozen=True)
    class Odd:
        a: int
        b: dict[str, int]

    with pytest.raises(TypeError, match="no record conversion"):
        record_to_data(Odd(1, {}))
