"""The API actions of the emulator: parameters in, JSON documents out.

Called by ``emulator/app.py`` once a request is authenticated. Each handler parses and checks
its parameters exactly (code 4000 for anything missing or malformed, naming the parameter),
calls the backend (``FleetState``), and shapes the answer like CVM API 2.0 does:
``DescribeKeyPairs`` wraps its result in ``data``, ``DescribeInstances`` does not.

Parameter names of actions are matched without regard to case (the published signing example
sends ``InstanceIds.0``, the action docs write ``instanceIds.0``); ``_`` in names was already
turned into ``.`` by the app, as the signature algorithm does.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any

from reconciler.emulator import errors
from reconciler.emulator.state import FleetState, InstanceView, KeyView
from reconciler.emulator.wire import DEFAULT_PAGE, MAX_IDS, MAX_PAGE
from reconciler.ids import is_instance_id, is_key_id

_INT_RE = re.compile(r"^-?[0-9]+$")

# Numeric zone IDs as the API reports them: region base + zone number (ap-guangzhou-3 -> 100003).
_ZONE_BASES = {
    "ap-guangzhou": 100000,
    "ap-shanghai": 200000,
    "ap-hongkong": 300000,
    "na-toronto": 400000,
    "ap-shanghai-fsi": 700000,
    "ap-beijing": 800000,
    "ap-singapore": 900000,
    "ap-shenzhen-fsi": 110000,
    "ap-guangzhou-open": 120000,
    "na-siliconvalley": 150000,
    "ap-chengdu": 160000,
    "eu-frankfurt": 170000,
    "ap-seoul": 180000,
}


class Params:
    """An action's parameters, looked up without regard to case."""

    def __init__(self, params: Mapping[str, str]) -> None:
        self._by_lower = {name.lower(): (name, value) for name, value in params.items()}

    def get(self, name: str) -> str | None:
        found = self._by_lower.get(name.lower())
        return None if found is None else found[1]

    def integer(self, name: str, default: int | None, low: int, high: int | None) -> int | None:
        raw = self.get(name)
        if raw is None or raw == "":
            return default
        if not _INT_RE.match(raw):
            raise errors.InvalidParameter(f"{name} must be an integer, not {raw!r}")
        value = int(raw)
        if value < low or (high is not None and value > high):
            limit = f"from {low} to {high}" if high is not None else f"at least {low}"
            raise errors.InvalidParameter(f"{name} must be {limit}, not {value}")
        return value

    def listed(self, name: str) -> list[str] | None:
        """The values of ``name.0``, ``name.1``, ... in index order; None if none was given."""
        prefix = name.lower() + "."
        found: list[tuple[int, str]] = []
        for lower, (original, value) in self._by_lower.items():
            if lower == name.lower():
                raise errors.InvalidParameter(
                    f"{original} must be sent as {name}.0, {name}.1, ... (one value each)",
                )
            if lower.startswith(prefix):
                index = lower[len(prefix) :]
                if not index.isdigit() or not index.isascii():
                    raise errors.InvalidParameter(f"{original}: the index must be a number")
                found.append((int(index), value))
        if not found:
            return None
        found.sort()
        return [value for _, value in found]

    def ids(
        self, name: str, check: Callable[[object], bool], what: str, *, required: bool
    ) -> list[str] | None:
        values = self.listed(name)
        if values is None:
            if required:
                raise errors.InvalidParameter(f"missing parameter {name}.0 ({what})")
            return None
        for index, value in enumerate(values):
            if not check(value):
                raise errors.InvalidParameter(
                    f"{name}.{index}: {value!r} is not a valid {what}",
                )
        if required and len(values) > MAX_IDS:
            raise errors.LimitExceeded(
                f"{name}: at most {MAX_IDS} values in one call, got {len(values)}",
            )
        return values


def _paging(params: Params) -> tuple[int, int]:
    offset = params.integer("offset", 0, 0, None)
    limit = params.integer("limit", DEFAULT_PAGE, 1, MAX_PAGE)
    assert offset is not None and limit is not None
    return offset, limit


def _zone_id(region: str, zone: str) -> int:
    base = _ZONE_BASES.get(region, 990000)
    suffix = zone.rsplit("-", 1)[-1]
    return base + (int(suffix) if suffix.isdigit() else 0)


def instance_json(view: InstanceView) -> dict[str, Any]:
    """One entry of DescribeInstances ``instanceSet``."""
    return {
        "instanceId": view.old_instance_id,
        "unInstanceId": view.instance_id,
        "instanceName": view.name,
        "status": view.status,
        "os": view.os,
        "Region": view.region,
        "zoneId": _zone_id(view.region, view.zone),
        "zoneName": view.zone,
        "lanIp": view.lan_ip,
        "wanIpSet": list(view.wan_ips),
        "createTime": view.created,
        "statusTime": view.status_time,
    }


def key_json(view: KeyView) -> dict[str, Any]:
    """One entry of DescribeKeyPairs ``sshSet``."""
    return {
        "keyId": view.key_id,
        "keyName": view.name,
        "pubkey": view.pubkey,
        "status": 0,
        "bindIps": list(view.lan_ips),
        "createTime": view.created,
        "bindUnInstanceIds": list(view.instance_ids),
    }


def describe_key_pairs(state: FleetState, region: str, params: Params) -> dict[str, Any]:
    key_ids = params.ids("keyIds", is_key_id, "key ID (skey-xxxxxxxx)", required=False)
    key_name = params.get("keyName")
    offset, limit = _paging(params)
    total, keys = state.describe_key_pairs(
        region, key_ids=key_ids, key_name=key_name or None, offset=offset, limit=limit
    )
    return {
        "code": 0,
        "message": "",
        "data": {"totalCount": total, "sshSet": [key_json(k) for k in keys]},
    }


def describe_instances(state: FleetState, region: str, params: Params) -> dict[str, Any]:
    instance_ids = params.ids("instanceIds", is_instance_id, "instance ID (ins-xxxxxxxx)", required=False)
    lan_ips = params.listed("lanIps")
    status = params.integer("status", None, 0, None)
    search_word = params.get("searchWord")
    zone_id = params.integer("zoneId", None, 0, None)
    offset, limit = _paging(params)
    total, instances = state.describe_instances(
        region,
        instance_ids=instance_ids,
        status=status,
        search_word=search_word or None,
        lan_ips=lan_ips,
        offset=0 if zone_id is not None else offset,
        limit=10**9 if zone_id is not None else limit,
    )
    if zone_id is not None:  # rare: filter here, then page
        matching = [v for v in instances if _zone_id(v.region, v.zone) == zone_id]
        total, instances = len(matching), matching[offset : offset + limit]
    return {
        "code": 0,
        "message": "",
        "codeDesc": "Success",
        "totalCount": total,
        "instanceSet": [instance_json(v) for v in instances],
    }


def _key_call(params: Params) -> tuple[str, list[str]]:
    key_id = params.get("keyId")
    if key_id is None or key_id == "":
        raise errors.InvalidParameter("missing parameter keyId")
    if not is_key_id(key_id):
        raise errors.InvalidParameter(f"keyId: {key_id!r} is not a valid key ID (skey-xxxxxxxx)")
    ids = params.ids("instanceIds", is_instance_id, "instance ID (ins-xxxxxxxx)", required=True)
    assert ids is not None
    return key_id, ids


def parse_key_call(params: Mapping[str, str]) -> tuple[str, list[str]]:
    """keyId and instanceIds of a (Un)BindInstanceKey call; ``errors.InvalidParameter`` if malformed."""
    return _key_call(Params(params))


def unbind_instance_key(state: FleetState, region: str, params: Params) -> dict[str, Any]:
    key_id, ids = _key_call(params)
    state.unbind_instance_key(region, key_id, ids)
    return {"code": 0, "message": ""}


def bind_instance_key(state: FleetState, region: str, params: Params) -> dict[str, Any]:
    key_id, ids = _key_call(params)
    state.bind_instance_key(region, key_id, ids)
    return {"code": 0, "message": ""}


def stop_instances(state: FleetState, region: str, params: Params) -> dict[str, Any]:
    ids = params.ids("instanceIds", is_instance_id, "instance ID (ins-xxxxxxxx)", required=True)
    force = params.integer("forceStop", 0, 0, 1)
    assert ids is not None
    state.stop_instances(region, ids, force=bool(force))
    return {"code": 0, "message": ""}


def start_instances(state: FleetState, region: str, params: Params) -> dict[str, Any]:
    ids = params.ids("instanceIds", is_instance_id, "instance ID (ins-xxxxxxxx)", required=True)
    assert ids is not None
    state.start_instances(region, ids)
    return {"code": 0, "message": ""}


Handler = Callable[[FleetState, str, Params], dict[str, Any]]

ACTIONS: dict[str, Handler] = {
    "DescribeKeyPairs": describe_key_pairs,
    "DescribeInstances": describe_instances,
    "UnBindInstanceKey": unbind_instance_key,
    "BindInstanceKey": bind_instance_key,
    "StopInstances": stop_instances,
    "StartInstances": start_instances,
}
MUTATING_ACTIONS = frozenset({"UnBindInstanceKey", "BindInstanceKey", "StopInstances", "StartInstances"})
