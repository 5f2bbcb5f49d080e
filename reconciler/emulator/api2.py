"""The emulator's CVM API 2.0 face, at ``/v2/index.php``.

``emulator/app.py`` routes every request for that path here, on the same port and the same
backend (``FleetState``) as API 3.0 at ``/`` (``emulator/api3.py``). This module parses the
request, checks it in the order the real API does (see ``docs/emulator.md``), applies the rate
limit and injected faults, and hands the action to ``emulator/actions.py``. Every API error is
HTTP 200 with ``{"code": N, "message": "...", "codeDesc": "..."}``.

Checks, in order (the first that fails answers):

1. public parameters present and well-formed (Action, Region, Timestamp, Nonce, SecretId,
   Signature; SignatureMethod if given) .............................................. 4000
2. SecretId known ..................................................................... 4104
3. signature, over the Host header the request came with, the method and the path ..... 4100
4. Timestamp within 300 s of the emulator clock; (SecretId, Nonce) not seen in that window 4500
5. Action known (first letter in either case) ......................................... 6100
6. Region known ....................................................................... 4000
7. rate limit of the action ........................................................... 4400
8. injected faults, then the action's own checks: parameters 4000, existence 5000, rules 5100
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from reconciler.cloud.signing import SIGNATURE_METHODS, string_to_sign, verify
from reconciler.emulator import actions, errors
from reconciler.emulator.state import ApiFault
from reconciler.emulator.wire import Answer, Face, host_of, parse_form, read_body
from reconciler.ids import KNOWN_REGIONS, canonical_region

API_PATH = "/v2/index.php"
PUBLIC_PARAMS = ("Action", "Region", "Timestamp", "Nonce", "SecretId", "Signature")
MAX_BODY = 1 << 20

_DIGITS = re.compile(r"^[0-9]{1,19}$")
_ACTION_RE = re.compile(r"^[A-Za-z][A-Za-z0-9]*$")


class Api2Face(Face):
    """Serves ``/v2/index.php`` for an ``EmulatorApp``."""

    def handle(self, environ: Mapping[str, Any], method: str) -> Answer:
        try:
            params = _read_params(environ, method)
            return self._answer(environ, method, API_PATH, params)
        except ApiFault as fault:
            return Answer.error(fault.code, fault.message)

    # ------------------------------------------------------------------ checks

    def _answer(self, environ: Mapping[str, Any], method: str, path: str, params: dict[str, str]) -> Answer:
        app = self.app
        raw_action = params.get("Action", "")
        action = raw_action[:1].upper() + raw_action[1:]
        if action:
            app.count_request(action)
        _check_public(params)
        secret_id = params["SecretId"]
        secret = self.state.secret(secret_id)
        if secret is None:
            return Answer.error(4104, f"SecretId {secret_id} does not exist or is disabled")
        host = host_of(environ)
        if not verify(secret.secret_key, method, host, path, params):
            signed = string_to_sign(method, host, path, params)
            return Answer.error(
                4100,
                f"authentication failed: the signature does not match; the emulator signed {signed!r}",
            )
        replay = app.check_replay(secret_id, params["Timestamp"], params["Nonce"])
        if replay is not None:
            return Answer.error(4500, replay)
        # Temporary credentials need their token in the signed Token parameter, as Tencent's
        # 2.0 SDK sends it.
        app.check_token(secret, params.get("Token"))
        handler = actions.ACTIONS.get(action)
        if handler is None:
            return Answer.error(
                6100,
                f"action {raw_action} is not supported by this API (supported: {', '.join(actions.ACTIONS)})",
            )
        region = params["Region"]
        try:
            canonical_region(region)
        except KeyError:
            return Answer.error(
                errors.InvalidRegion.code, f"unknown region {region!r} (known: {', '.join(KNOWN_REGIONS)})"
            )
        rate = app.rate_for(action)
        if not app.take_token(action, rate):
            return Answer.error(4400, f"request quota exceeded: at most {rate:g} {action} a second")
        action_params = actions.Params({name.replace("_", "."): value for name, value in params.items()})
        self.state.refresh()
        fault = self._draw_fault(action, action_params)
        if fault is not None:
            early = self._inject_before(fault, action, region, action_params)
            if early is not None:
                return early
        answer = Answer.json(handler(self.state, region, action_params))
        if fault is not None:
            app.inject_after(fault, action)
        return answer

    # ------------------------------------------------------------------ faults

    def _draw_fault(self, action: str, params: actions.Params) -> str | None:
        can_partial = (
            action in ("UnBindInstanceKey", "BindInstanceKey")
            and len(set(params.listed("instanceIds") or [])) >= 2
        )
        return self.app.draw_fault(action, can_partial=can_partial)

    def _inject_before(self, fault: str, action: str, region: str, params: actions.Params) -> Answer | None:
        app = self.app
        if fault == "throttle":
            app.record_fault(action, fault, "code 4400")
            return Answer.error(4400, "request quota exceeded (injected)")
        if fault == "error":
            code = 6000 if app.coin() else 6200
            app.record_fault(action, fault, f"code {code}")
            text = "internal server error" if code == 6000 else "API temporarily unavailable"
            return Answer.error(code, f"{text} (injected)")
        if fault == "partial":
            return self._partial(action, region, params)
        return app.inject_connection_fault(fault, action)

    def _partial(self, action: str, region: str, params: actions.Params) -> Answer | None:
        key_id, ids = actions.parse_key_call({"keyId": params.get("keyId") or "", **_listed(params)})
        ids = list(dict.fromkeys(ids))
        # A call the API would refuse anyway gets its normal answer.
        self.state.check_key_operation(action, region, key_id, ids)
        done, failed = self.app.split(ids)
        if action == "BindInstanceKey":
            self.state.bind_instance_key(region, key_id, done)
        else:
            self.state.unbind_instance_key(region, key_id, done)
        self.app.record_fault(action, "partial", f"done {','.join(done)}; failed {','.join(failed)}")
        return Answer.error(
            errors.PartialSuccess.code,
            f"{action}: partial success in a batch: done: {', '.join(done)}; "
            f"failed: {', '.join(failed)} (injected)",
        )


def _listed(params: actions.Params) -> dict[str, str]:
    return {f"instanceIds.{n}": value for n, value in enumerate(params.listed("instanceIds") or [])}


def _check_public(params: Mapping[str, str]) -> None:
    missing = [name for name in PUBLIC_PARAMS if not params.get(name)]
    if missing:
        raise errors.InvalidParameter(f"missing public parameter(s): {', '.join(missing)}")
    bad = []
    if not _ACTION_RE.match(params["Action"]):
        bad.append(f"Action {params['Action']!r} is not an action name")
    for name in ("Timestamp", "Nonce"):
        if not _DIGITS.match(params[name]) or int(params[name]) <= 0:
            bad.append(f"{name} must be a positive integer, not {params[name]!r}")
    method = params.get("SignatureMethod")
    if method is not None and method not in SIGNATURE_METHODS:
        bad.append(f"SignatureMethod must be one of {', '.join(SIGNATURE_METHODS)}, not {method!r}")
    if bad:
        raise errors.InvalidParameter("; ".join(bad))


def _read_params(environ: Mapping[str, Any], method: str) -> dict[str, str]:
    pairs = parse_form(str(environ.get("QUERY_STRING", "")), "query string")
    if method == "POST":
        content_type = str(environ.get("CONTENT_TYPE", "")).split(";")[0].strip().lower()
        if content_type != "application/x-www-form-urlencoded":
            raise errors.InvalidParameter(
                f"a POST body must be application/x-www-form-urlencoded, not {content_type or 'missing'}",
            )
        body = read_body(environ, MAX_BODY)
        pairs += parse_form(body, "request body")
    params: dict[str, str] = {}
    seen: set[str] = set()
    for name, value in pairs:
        normal = name.replace("_", ".")
        if normal in seen:
            raise errors.InvalidParameter(f"parameter {name} is given more than once")
        seen.add(normal)
        params[name] = value
    return params
