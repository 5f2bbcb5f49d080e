"""Tests of the product changes made for speed (issue 6): they must not change behaviour.

* the emulator reads a fleet file that is one JSON document with ``json`` and gets exactly
  what the YAML loader gets; whatever the two read differently goes to YAML.
"""

from __future__ import annotations

import json

import pytest
import yaml

from bench.fleetgen import generate
from reconciler.emulator import fleetfile
from reconciler.emulator.fleetfile import parse_fleet_text
from reconciler.errors import InputError


def _yaml(text: str) -> object:
    return yaml.load(text, Loader=fleetfile._StrictLoader)


def test_a_json_fleet_reads_as_yaml_reads_it() -> None:
    fleet = generate(60, 6, seed=3).fleet
    for text in (json.dumps(fleet), json.dumps(fleet, indent=2, ensure_ascii=False)):
        assert fleetfile._parse_json(text) == _yaml(text) == fleet
        assert parse_fleet_text(text, "f.json") == fleet


@pytest.mark.parametrize(
    "text",
    [
        '{"credentials": [], "regions": {}, "regions": {}}',  # duplicate key
        '{"credentials": [], "regions": {"gz": {"instances": [{"status": 1e5}]}}}',  # float
        '{"credentials": [], "regions": {"gz": {"instances": [{"status": NaN}]}}}',  # NaN
        '{"credentials": [{"secret_id": "\\ud83d\\ude00"}], "regions": {}}',  # surrogates
        '{"credentials": [{"secret_id": "a\u2028b"}], "regions": {}}',  # a YAML line break
        '["credentials"]',  # not an object
    ],
)
def test_json_that_yaml_reads_differently_goes_to_yaml(text: str) -> None:
    with pytest.raises(fleetfile._NotFastShape):
        fleetfile._parse_json(text)
    try:
        expected: object = _yaml(text)
    except yaml.YAMLError:
        with pytest.raises(InputError):
            parse_fleet_text(text, "f.json")
    else:
        assert parse_fleet_text(text, "f.json") == expected
