"""The emulator's STS (Security Token Service, Version 2018-08-13): who am I, and temporary
credentials.

Called by ``emulator/api3.py`` once it has authenticated a request for service ``sts`` (TC3
credential scope ``.../sts/tc3_request``, a Host ``sts.*``, or an STS action name). The rules and
the credentials live in the backend (``FleetState.assume_role`` and friends); this module reads
parameters and shapes answers:

* ``GetCallerIdentity`` (signed): ``Arn``, ``AccountId``, ``UserId``, ``PrincipalId``, ``Type``;
* ``AssumeRole`` (signed): any well-formed role ARN of the fleet's account
  (``qcs::cam::uin/<account>:roleName/<name>``), ``RoleSessionName``, ``DurationSeconds``
  (1..43200, default 7200);
* ``AssumeRoleWithWebIdentity`` (unsigned): a ``WebIdentityToken`` the fleet file declares for
  its ``ProviderId``, and a role of the account.

The last two answer ``Credentials{TmpSecretId, TmpSecretKey, Token}``, ``ExpiredTime`` (Unix
seconds) and ``Expiration`` (ISO 8601 UTC).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from reconciler.emulator import errors
from reconciler.emulator.metadata import iso8601
from reconciler.emulator.state import FleetState, Secret

STS_VERSION = "2018-08-13"
UNSIGNED_ACTIONS = frozenset({"AssumeRoleWithWebIdentity"})


def _text(params: Mapping[str, Any], name: str, *, required: bool = True) -> str | None:
    value = params.get(name)
    if value is None or value == "":
        if required:
            raise errors.MissingParameter(f"missing parameter {name}")
        return None
    if not isinstance(value, str):
        raise errors.InvalidParameterValue(f"{name} must be a string")
    return value


def _duration(params: Mapping[str, Any]) -> int | None:
    value = params.get("DurationSeconds")
    if value is None or value == "":
        return None
    if isinstance(value, bool) or not (
        isinstance(value, int) or (isinstance(value, str) and value.isdigit())
    ):
        raise errors.InvalidParameterValue(f"DurationSeconds must be an integer, not {value!r}")
    return int(value)


def _session_name(params: Mapping[str, Any]) -> str:
    name = _text(params, "RoleSessionName")
    assert name is not None
    if not 2 <= len(name) <= 128:
        raise errors.InvalidParameterValue("RoleSessionName must be 2 to 128 characters")
    return name


def _credentials(secret: Secret) -> dict[str, Any]:
    expires = secret.expires or 0.0
    return {
        "Credentials": {
            "Token": secret.token,
            "TmpSecretId": secret.secret_id,
            "TmpSecretKey": secret.secret_key,
        },
        "ExpiredTime": int(expires),
        "Expiration": iso8601(expires),
    }


def get_caller_identity(
    state: FleetState, caller: Secret | None, params: Mapping[str, Any]
) -> dict[str, Any]:
    assert caller is not None
    who = caller.identity
    return {
        "Arn": who.arn,
        "AccountId": who.account_id,
        "UserId": who.user_id,
        "PrincipalId": who.principal_id,
        "Type": who.type,
    }


def assume_role(state: FleetState, caller: Secret | None, params: Mapping[str, Any]) -> dict[str, Any]:
    role_arn = _text(params, "RoleArn")
    assert role_arn is not None
    return _credentials(state.assume_role(role_arn, _session_name(params), _duration(params)))


def assume_role_with_web_identity(
    state: FleetState, caller: Secret | None, params: Mapping[str, Any]
) -> dict[str, Any]:
    token = _text(params, "WebIdentityToken")
    role_arn = _text(params, "RoleArn")
    assert token is not None and role_arn is not None
    provider = _text(params, "ProviderId", required=False) or "OIDC"
    secret = state.assume_role_with_web_identity(
        provider, token, role_arn, _session_name(params), _duration(params)
    )
    return _credentials(secret)


Handler = Callable[[FleetState, "Secret | None", Mapping[str, Any]], dict[str, Any]]

ACTIONS: dict[str, Handler] = {
    "GetCallerIdentity": get_caller_identity,
    "AssumeRole": assume_role,
    "AssumeRoleWithWebIdentity": assume_role_with_web_identity,
}
