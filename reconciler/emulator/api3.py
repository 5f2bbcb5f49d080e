"""The emulator's CVM API 3.0 face (Version 2017-03-12) and the front door of its STS, at ``/``.

``emulator/app.py`` routes every request for path ``/`` here, on the same port and the same
backend (``FleetState``) as API 2.0 at ``/v2/index.php``. This module authenticates the
request, applies the per-action rate limit and injected faults, reads the action's parameters
and shapes the answer; the rules are the backend's.

Authentication (the first failure answers, HTTP 200 with ``Response.Error.Code``):

* TC3-HMAC-SHA256 (``Authorization`` header; POST ``application/json`` or GET with the query):
  ``X-TC-Action``, ``X-TC-Timestamp`` present (``MissingParameter``); the header well-formed
  (``AuthFailure.InvalidAuthorization``); SecretId known (``AuthFailure.SecretIdNotFound``);
  timestamp within 300 s (``AuthFailure.SignatureExpire``); signature over the Host header the
  request came with (``reconciler/cloud/tc3.py``, ``AuthFailure.SignatureFailure``); temporary
  credentials need their ``X-TC-Token``, unexpired (``AuthFailure.TokenFailure``). TC3 has no
  Nonce, so an identical request inside the window is accepted (the SDK may send one twice in
  a second).
* signature v1 (form POST or GET with ``Action, Timestamp, Nonce, SecretId, Signature,
  Version``; ``reconciler/cloud/signing.py`` over Host and path ``/``): the same checks, the
  ``Token`` parameter, and a Nonce used twice by one SecretId in the window is refused.
* no signature (no ``Authorization``, or ``SKIP``): only ``AssumeRoleWithWebIdentity`` (STS),
  as the SDK sends it.

Then: service (``sts`` by TC3 scope, ``sts.*`` Host or STS action name; else ``cvm``); action
known (``InvalidAction``); ``Version`` (``NoSuchVersion``); ``Region`` (CVM: required, known);
the action's token bucket (``RequestLimitExceeded``); injected faults; the action.
"""

from __future__ import annotations

import calendar
import json
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from reconciler.cloud import signing, tc3
from reconciler.emulator import errors, sts
from reconciler.emulator.state import API3_VERSION, BEIJING_OFFSET, FleetState, InstanceView, KeyView, Secret
from reconciler.emulator.wire import (
    DEFAULT_PAGE,
    MAX_IDS,
    MAX_PAGE,
    Answer,
    Face,
    clock_skew,
    host_of,
    parse_form,
    read_body,
)
from reconciler.ids import KNOWN_REGIONS, canonical_region, is_instance_id, is_key_id
from reconciler.model import DOCUMENTED_RATE_LIMITS

MAX_TC3_BODY = 10 << 20  # TC3 POST: 10 MB; v1: 1 MB (cvm-api-3.0.md section 2)
MAX_V1_BODY = 1 << 20
# The cloud's per-action limits, requests a second (cvm-api-3.0.md section 6): the one table.
DOCUMENTED_LIMITS: Mapping[str, float] = DOCUMENTED_RATE_LIMITS
V1_PUBLIC = frozenset(
    {
        "Action", "Region", "Timestamp", "Nonce", "SecretId", "Signature", "SignatureMethod",
        "Version", "Token", "RequestClient", "Language",
    }
)  # fmt: skip


@dataclass
class Request3:
    """An authenticated 3.0 request."""

    action: str
    version: str
    region: str | None
    params: dict[str, Any]
    service: str
    secret: Secret | None  # None only for an unsigned STS call


@dataclass
class Context:
    """What an action needs beyond its parameters."""

    request_id: str
    lag: float = 0.0  # extra state lag (the ``lag`` fault)
    soft_stop_fails: bool = False  # the ``stuck_stop`` fault


class Api3Face(Face):
    """Serves ``/`` for an ``EmulatorApp``."""

    def handle(self, environ: Mapping[str, Any], method: str) -> Answer:
        request_id = str(uuid.uuid4())
        try:
            request = self._authenticate(environ, method)
            return self._dispatch(request, request_id)
        except errors.ApiError as error:
            return Answer.error3(error, request_id)

    # ------------------------------------------------------------------ authentication

    def _count(self, action: str) -> None:
        self.app.count_request(action)

    def _check_time(self, timestamp: int) -> None:
        skew = clock_skew(self.app.clock(), timestamp)
        if skew is not None:
            raise errors.SignatureExpire(f"signature expired: {skew}")

    def _secret(self, secret_id: str) -> Secret:
        secret = self.state.secret(secret_id)
        if secret is None:
            raise errors.SecretIdNotFound(f"SecretId {secret_id} does not exist or is disabled")
        return secret

    def _authenticate(self, environ: Mapping[str, Any], method: str) -> Request3:
        if environ.get("HTTP_AUTHORIZATION") or environ.get("HTTP_X_TC_ACTION"):
            return self._tc3(environ, method)
        return self._v1(environ, method)

    def _tc3(self, environ: Mapping[str, Any], method: str) -> Request3:
        action = str(environ.get("HTTP_X_TC_ACTION") or "")
        if not action:
            raise errors.MissingParameter("missing header X-TC-Action")
        self._count(action)
        content_type = str(environ.get("CONTENT_TYPE") or "")
        query = str(environ.get("QUERY_STRING") or "")
        body = read_body(environ, MAX_TC3_BODY)
        if method == "POST":
            media = content_type.split(";")[0].strip().lower()
            if media != "application/json":
                raise errors.InvalidParameter(
                    f"a TC3 POST body must be application/json, not {media or 'missing'} "
                    "(form bodies take signature v1)"
                )
            params = _json_params(body)
        else:
            params = nest(_unique(parse_form(query, "query string")))
        raw_time = str(environ.get("HTTP_X_TC_TIMESTAMP") or "")
        if not raw_time:
            raise errors.MissingParameter("missing header X-TC-Timestamp")
        if not raw_time.isdigit():
            raise errors.InvalidParameterValue(f"X-TC-Timestamp must be Unix seconds, not {raw_time!r}")
        timestamp = int(raw_time)
        version = str(environ.get("HTTP_X_TC_VERSION") or "")
        region = str(environ.get("HTTP_X_TC_REGION") or "") or None
        host = host_of(environ)
        authorization = str(environ.get("HTTP_AUTHORIZATION") or "")
        # The SDK sends an unsigned STS call with no Authorization or with "SKIP".
        if authorization.strip() in ("", "SKIP"):
            if action not in sts.UNSIGNED_ACTIONS:
                raise errors.InvalidAuthorization(
                    f"{action} must be signed: the Authorization header is missing"
                )
            self._check_time(timestamp)
            return Request3(action, version, region, params, "sts", None)
        parsed = tc3.parse_authorization(authorization)
        if parsed is None:
            raise errors.InvalidAuthorization(
                "the Authorization header is not 'TC3-HMAC-SHA256 Credential=ID/DATE/SERVICE/tc3_request, "
                "SignedHeaders=content-type;host, Signature=HEX'"
            )
        secret = self._secret(parsed.secret_id)
        self._check_time(timestamp)
        if environ.get("HTTP_X_TC_CONTENT_SHA256") == "UNSIGNED-PAYLOAD":
            payload = b"UNSIGNED-PAYLOAD"
        else:
            payload = body if method == "POST" else b""
        headers = {"content-type": content_type, "host": host}
        if not tc3.verify(
            secret.secret_key,
            parsed,
            timestamp=timestamp,
            method=method,
            headers=headers,
            payload=payload,
            query=query if method == "GET" else "",
        ):
            raise errors.SignatureFailure(
                f"the TC3 signature does not match (the emulator signed for host {host!r}, "
                f"content-type {content_type!r}, date {tc3.utc_date(timestamp)}, service {parsed.service})"
            )
        self.app.check_token(secret, str(environ.get("HTTP_X_TC_TOKEN") or "") or None)
        return Request3(action, version, region, params, parsed.service, secret)

    def _v1(self, environ: Mapping[str, Any], method: str) -> Request3:
        pairs = parse_form(str(environ.get("QUERY_STRING") or ""), "query string")
        if method == "POST":
            media = str(environ.get("CONTENT_TYPE") or "").split(";")[0].strip().lower()
            if media != "application/x-www-form-urlencoded":
                raise errors.InvalidAuthorization(
                    f"a {media or 'bodiless'} POST must be signed with TC3-HMAC-SHA256 "
                    "(signature v1 takes application/x-www-form-urlencoded)"
                )
            pairs += parse_form(read_body(environ, MAX_V1_BODY), "request body")
        flat = _unique(pairs)
        action = flat.get("Action", "")
        if not action:
            raise errors.MissingParameter("missing parameter Action (or header X-TC-Action)")
        self._count(action)
        missing = [
            name for name in ("Timestamp", "Nonce", "SecretId", "Signature", "Version") if not flat.get(name)
        ]
        if missing:
            raise errors.MissingParameter(f"missing public parameter(s): {', '.join(missing)}")
        for name in ("Timestamp", "Nonce"):
            if not flat[name].isdigit() or int(flat[name]) <= 0:
                raise errors.InvalidParameterValue(f"{name} must be a positive integer, not {flat[name]!r}")
        signature_method = flat.get("SignatureMethod")
        if signature_method is not None and signature_method not in signing.SIGNATURE_METHODS:
            raise errors.InvalidParameterValue(
                f"SignatureMethod must be HmacSHA1 or HmacSHA256, not {signature_method!r}"
            )
        secret = self._secret(flat["SecretId"])
        self._check_time(int(flat["Timestamp"]))
        host = host_of(environ)
        if not signing.verify(secret.secret_key, method, host, "/", flat):
            signed = signing.string_to_sign(method, host, "/", flat)
            raise errors.SignatureFailure(f"the signature does not match; the emulator signed {signed!r}")
        replay = self.app.check_replay(secret.secret_id, flat["Timestamp"], flat["Nonce"])
        if replay is not None:
            raise errors.RequestReplayed(replay)
        self.app.check_token(secret, flat.get("Token"))
        params = nest({name: value for name, value in flat.items() if name not in V1_PUBLIC})
        service = "sts" if host.startswith("sts.") or action in sts.ACTIONS else "cvm"
        return Request3(action, flat["Version"], flat.get("Region") or None, params, service, secret)

    # ------------------------------------------------------------------ dispatch

    def _dispatch(self, request: Request3, request_id: str) -> Answer:
        action = request.action
        if request.service == "sts":
            sts_handler = sts.ACTIONS.get(action)
            if sts_handler is None:
                raise errors.InvalidAction(
                    f"STS action {action} is not emulated (emulated: {', '.join(sts.ACTIONS)})"
                )
            if request.version != sts.STS_VERSION:
                raise errors.NoSuchVersion(f"STS speaks Version {sts.STS_VERSION}, not {request.version!r}")
            if request.secret is None and action not in sts.UNSIGNED_ACTIONS:
                raise errors.InvalidAuthorization(f"{action} must be signed")
            return Answer.response(sts_handler(self.state, request.secret, request.params), request_id)
        if request.service != "cvm":
            raise errors.InvalidAction(f"service {request.service!r} is not emulated (cvm and sts are)")
        handler = ACTIONS.get(action)
        if handler is None:
            raise errors.InvalidAction(f"action {action} is not emulated (emulated: {', '.join(ACTIONS)})")
        if request.version != API3_VERSION:
            raise errors.NoSuchVersion(f"CVM speaks Version {API3_VERSION}, not {request.version!r}")
        region = request.region
        if not region:
            raise errors.MissingParameter("missing Region (X-TC-Region)")
        try:
            canonical_region(region)
        except KeyError:
            raise errors.InvalidRegion(
                f"unknown region {region!r} (known: {', '.join(KNOWN_REGIONS)})"
            ) from None
        limits = self.app.api3_limits
        rate = limits.get(action) if limits is not None else self.app.rate_limit
        if not self.app.take_token(f"3.0/{action}", rate):
            raise errors.RequestLimitExceeded(f"request limit exceeded: at most {rate:g} {action} a second")
        self.state.refresh()
        context = Context(request_id)
        fault = self.app.draw_fault(action, can_partial=False, api3=True)
        if fault is not None:
            early = self._inject_before(fault, action, context)
            if early is not None:
                return early
        answer = Answer.response(handler(self.state, region, request.params, context), request_id)
        if fault is not None:
            self.app.inject_after(fault, action)
        return answer

    def _inject_before(self, fault: str, action: str, context: Context) -> Answer | None:
        app = self.app
        if fault == "throttle":
            app.record_fault(action, fault, "RequestLimitExceeded")
            raise errors.RequestLimitExceeded("request limit exceeded (injected)")
        if fault == "error":
            error: errors.ApiError = (
                errors.InternalError("internal error (injected)")
                if app.coin()
                else errors.ServiceUnavailable("resource unavailable (injected)")
            )
            app.record_fault(action, fault, error.code3)
            raise error
        if fault in ("http", "drop"):
            return app.inject_connection_fault(fault, action)
        if fault == "lag" and action in MUTATING_ACTIONS:
            context.lag = app.faults.lag_seconds if app.faults is not None else 0.0
            app.record_fault(action, fault, f"latest operation shows the previous one for {context.lag:g} s")
        if fault == "stuck_stop" and action == "StopInstances":
            context.soft_stop_fails = True
            app.record_fault(action, fault, "a soft stop never completes")
        return None


# --------------------------------------------------------------------------- parameters


def _unique(pairs: Sequence[tuple[str, str]]) -> dict[str, str]:
    params: dict[str, str] = {}
    for name, value in pairs:
        if name in params:
            raise errors.InvalidParameter(f"parameter {name} is given more than once")
        params[name] = value
    return params


def _json_params(body: bytes) -> dict[str, Any]:
    try:
        document = json.loads(body.decode("utf-8")) if body.strip() else {}
    except (UnicodeDecodeError, ValueError):
        raise errors.InvalidParameter("the request body is not valid JSON") from None
    if not isinstance(document, dict):
        raise errors.InvalidParameter("the request body must be a JSON object")
    return document


def nest(flat: Mapping[str, str]) -> dict[str, Any]:
    """v1's flattened parameters as 3.0's structure: ``KeyIds.0`` -> ``{"KeyIds": [...]}``,
    ``Filters.0.Name`` -> ``{"Filters": [{"Name": ...}]}`` (``_`` counts as ``.``, as in the
    signature)."""
    root: dict[str, Any] = {}
    for name, value in flat.items():
        parts = name.replace("_", ".").split(".")
        node = root
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise errors.InvalidParameter(f"parameter {name} conflicts with {part}")
            node = child
        if isinstance(node.get(parts[-1]), dict):
            raise errors.InvalidParameter(f"parameter {name} conflicts with {name}.N")
        node[parts[-1]] = value
    result = _listify(root)
    assert isinstance(result, dict)
    return result


def _listify(node: Any) -> Any:
    if not isinstance(node, dict):
        return node
    items = {key: _listify(value) for key, value in node.items()}
    if items and all(key.isdigit() for key in items):
        return [items[key] for key in sorted(items, key=int)]
    return items


def _ids(
    params: Mapping[str, Any],
    name: str,
    check: Callable[[object], bool],
    malformed: type[errors.ApiError],
    *,
    required: bool,
) -> list[str] | None:
    values = params.get(name)
    if values is None:
        if required:
            raise errors.MissingParameter(f"missing parameter {name}")
        return None
    if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
        raise errors.InvalidParameterValue(f"{name} must be a list of IDs")
    if required and not values:
        raise errors.MissingParameter(f"{name} must not be empty")
    if len(values) > MAX_IDS:
        raise errors.LimitExceeded(f"{name}: at most {MAX_IDS} values in one call, got {len(values)}")
    for value in values:
        if not check(value):
            raise malformed(f"{name}: {value!r} is malformed")
    return list(values)


def _integer(params: Mapping[str, Any], name: str, default: int, high: int | None = None) -> int:
    raw = params.get(name)
    if raw is None or raw == "":
        return default
    if isinstance(raw, bool) or not (isinstance(raw, int) or (isinstance(raw, str) and raw.isdigit())):
        raise errors.InvalidParameterValue(f"{name} must be a non-negative integer, not {raw!r}")
    value = int(raw)
    if high is not None and value > high:
        raise errors.LimitExceeded(f"{name} must be at most {high}, not {value}")
    return value


def _boolean(params: Mapping[str, Any], name: str) -> bool | None:
    raw = params.get(name)
    if raw is None or isinstance(raw, bool):
        return raw
    if isinstance(raw, str) and raw.lower() in ("true", "false"):
        return raw.lower() == "true"
    raise errors.InvalidParameterValue(f"{name} must be true or false, not {raw!r}")


def _choice(params: Mapping[str, Any], name: str, choices: Sequence[str], default: str) -> str:
    raw = params.get(name)
    if raw is None or raw == "":
        return default
    if raw not in choices:
        raise errors.InvalidParameterValue(f"{name} must be one of {', '.join(choices)}, not {raw!r}")
    return str(raw)


def _filters(params: Mapping[str, Any], known: Sequence[str]) -> dict[str, list[str]]:
    raw = params.get("Filters")
    if raw is None:
        return {}
    if not isinstance(raw, list):
        raise errors.InvalidParameterValue("Filters must be a list of {Name, Values}")
    found: dict[str, list[str]] = {}
    for item in raw:
        if not isinstance(item, dict) or not isinstance(item.get("Name"), str):
            raise errors.InvalidFilter("every filter needs a Name and Values")
        values = item.get("Values")
        if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
            raise errors.InvalidFilter(f"filter {item['Name']}: Values must be a list of strings")
        if item["Name"] not in known:
            raise errors.InvalidFilter(
                f"filter {item['Name']!r} is not emulated (emulated: {', '.join(known)})"
            )
        found[item["Name"]] = values
    return found


def _paging(params: Mapping[str, Any]) -> tuple[int, int]:
    limit = _integer(params, "Limit", DEFAULT_PAGE, MAX_PAGE)
    if limit < 1:
        raise errors.InvalidParameterValue("Limit must be at least 1")
    return _integer(params, "Offset", 0), limit


def iso_created(beijing: str) -> str:
    """A fleet time (China Standard Time, ``YYYY-MM-DD hh:mm:ss``) as 3.0 writes it: ISO 8601 UTC."""
    try:
        seconds = calendar.timegm(time.strptime(beijing, "%Y-%m-%d %H:%M:%S")) - BEIJING_OFFSET
    except ValueError:
        return beijing
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(seconds))


# --------------------------------------------------------------------------- actions


def key_json3(view: KeyView) -> dict[str, Any]:
    """One entry of DescribeKeyPairs ``KeyPairSet``."""
    return {
        "KeyId": view.key_id,
        "KeyName": view.name,
        "ProjectId": 0,
        "Description": "",
        "PublicKey": view.pubkey,
        "PrivateKey": None,
        "AssociatedInstanceIds": list(view.instance_ids),
        "CreatedTime": iso_created(view.created),
        "Tags": [],
    }


def instance_json3(view: InstanceView) -> dict[str, Any]:
    """One entry of DescribeInstances ``InstanceSet``."""
    return {
        "InstanceId": view.instance_id,
        "InstanceName": view.name,
        "InstanceState": view.api3_state,
        "OsName": view.os,
        "LoginSettings": {"KeyIds": list(view.key_ids)},
        "LatestOperation": view.latest_operation,
        "LatestOperationState": view.latest_operation_state,
        "LatestOperationRequestId": view.latest_operation_request_id,
        "LatestOperationErrorMsg": view.latest_operation_error,
        "Placement": {"Zone": view.zone, "ProjectId": 0},
        "PrivateIpAddresses": [view.lan_ip],
        "PublicIpAddresses": list(view.wan_ips) or None,
        "CreatedTime": iso_created(view.created),
        "RestrictState": "NORMAL",
        "StopChargingMode": "STOP_CHARGING" if view.stop_charging else "KEEP_CHARGING",
        "Uuid": view.old_instance_id,
    }


def describe_key_pairs(
    state: FleetState, region: str, params: Mapping[str, Any], context: Context
) -> dict[str, Any]:
    # KeyIds has no documented cap; 100 like every other ID list (LimitExceeded beyond).
    key_ids = _ids(params, "KeyIds", is_key_id, errors.KeyPairIdMalformed, required=False)
    filters = _filters(params, ("key-name",))
    if key_ids is not None and filters:
        raise errors.InvalidParameter("KeyIds and Filters cannot be given together")
    offset, limit = _paging(params)
    names = filters.get("key-name")
    total, keys = state.describe_key_pairs(
        region, key_ids=key_ids, key_name=names[0] if names else None, offset=offset, limit=limit
    )
    return {"TotalCount": total, "KeyPairSet": [key_json3(k) for k in keys]}


def describe_instances(
    state: FleetState, region: str, params: Mapping[str, Any], context: Context
) -> dict[str, Any]:
    instance_ids = _ids(params, "InstanceIds", is_instance_id, errors.InstanceIdMalformed, required=False)
    filters = _filters(params, ("instance-id", "instance-name", "instance-state"))
    if instance_ids is not None and filters:
        raise errors.InvalidParameter("InstanceIds and Filters cannot be given together")
    offset, limit = _paging(params)
    if not filters:
        total, views = state.describe_instances(region, instance_ids=instance_ids, offset=offset, limit=limit)
        return {"TotalCount": total, "InstanceSet": [instance_json3(v) for v in views]}
    _, every = state.describe_instances(region, instance_ids=filters.get("instance-id"), limit=10**9)
    names, states = filters.get("instance-name"), filters.get("instance-state")
    matching = [
        v for v in every if (names is None or v.name in names) and (states is None or v.api3_state in states)
    ]
    page = matching[offset : offset + limit]
    return {"TotalCount": len(matching), "InstanceSet": [instance_json3(v) for v in page]}


def _change_keys(action: str) -> Handler:
    def handler(
        state: FleetState, region: str, params: Mapping[str, Any], context: Context
    ) -> dict[str, Any]:
        instance_ids = _ids(params, "InstanceIds", is_instance_id, errors.InstanceIdMalformed, required=True)
        key_ids = _ids(params, "KeyIds", is_key_id, errors.KeyPairIdMalformed, required=True)
        assert instance_ids is not None and key_ids is not None
        state.change_key_pairs(
            action,
            region,
            key_ids,
            instance_ids,
            force_stop=bool(_boolean(params, "ForceStop")),
            request_id=context.request_id,
            lag=context.lag,
        )
        return {}

    handler.__name__ = action
    return handler


def stop_instances(
    state: FleetState, region: str, params: Mapping[str, Any], context: Context
) -> dict[str, Any]:
    instance_ids = _ids(params, "InstanceIds", is_instance_id, errors.InstanceIdMalformed, required=True)
    assert instance_ids is not None
    # ForceStop is "Disused. Please use StopType instead": true means HARD when no StopType.
    default = "HARD" if _boolean(params, "ForceStop") else "SOFT"
    stop_type = _choice(params, "StopType", ("SOFT", "HARD", "SOFT_FIRST"), default)
    stopped_mode = _choice(params, "StoppedMode", ("KEEP_CHARGING", "STOP_CHARGING"), "KEEP_CHARGING")
    state.stop_instances3(
        region,
        instance_ids,
        stop_type=stop_type,
        stopped_mode=stopped_mode,
        request_id=context.request_id,
        lag=context.lag,
        soft_stop_fails=context.soft_stop_fails,
    )
    return {}


def start_instances(
    state: FleetState, region: str, params: Mapping[str, Any], context: Context
) -> dict[str, Any]:
    instance_ids = _ids(params, "InstanceIds", is_instance_id, errors.InstanceIdMalformed, required=True)
    assert instance_ids is not None
    state.start_instances3(region, instance_ids, request_id=context.request_id, lag=context.lag)
    return {}


Handler = Callable[[FleetState, str, Mapping[str, Any], Context], dict[str, Any]]

ACTIONS: dict[str, Handler] = {
    "DescribeKeyPairs": describe_key_pairs,
    "DescribeInstances": describe_instances,
    "DisassociateInstancesKeyPairs": _change_keys("DisassociateInstancesKeyPairs"),
    "AssociateInstancesKeyPairs": _change_keys("AssociateInstancesKeyPairs"),
    "StopInstances": stop_instances,
    "StartInstances": start_instances,
}
MUTATING_ACTIONS = frozenset(
    {"DisassociateInstancesKeyPairs", "AssociateInstancesKeyPairs", "StopInstances", "StartInstances"}
)
