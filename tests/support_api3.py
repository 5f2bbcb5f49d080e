"""A small server-side fixture for the 3.0 client's tests: a WSGI app answering CVM 3.0, STS and
the instance metadata service with the documented shapes (cvm-api-3.0.md), served to the real
client through ``httpx.WSGITransport`` (real HTTP requests, real TC3 signatures checked with
``reconciler.cloud.tc3.verify``).

It is not the emulator (whose 3.0 face is being built separately): it holds just enough state
to answer, and lets a test script failures per action (``script``) to see how the client
classifies and retries them. Tests on the emulator itself skip until it lands.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import httpx

from reconciler.cloud import tc3

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIEnvironment

ACCOUNT = "100000000001"
CVM_ACTIONS = {
    "DescribeKeyPairs",
    "DescribeInstances",
    "DisassociateInstancesKeyPairs",
    "StopInstances",
    "StartInstances",
}
STS_ACTIONS = {"GetCallerIdentity", "AssumeRole", "AssumeRoleWithWebIdentity"}


@dataclass
class Secret:
    secret_key: str
    token: str | None = None
    expires_at: float | None = None
    arn: str = f"qcs::cam::uin/{ACCOUNT}:uin/{ACCOUNT}"


@dataclass
class FakeInstance:
    instance_id: str
    state: str = "STOPPED"
    os: str = "TencentOS Server 3.1"
    keys: set[str] = field(default_factory=set)
    latest_operation: str | None = None
    latest_operation_state: str | None = None
    latest_operation_request_id: str | None = None


@dataclass
class Seen:
    """One request the fixture received."""

    action: str
    headers: dict[str, str]
    body: dict[str, Any]
    request_id: str


# A scripted answer: an error code (answered as Response.Error), or "HTTP500" / "garbage".
Scripted = str


class FakeTencent:
    """The WSGI app (see the module docstring). ``clock`` is the server's time (signatures are
    accepted within 300 s of it; temporary credentials expire by it)."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self.clock = clock
        self.secrets: dict[str, Secret] = {}
        self.key_names: dict[str, str] = {}
        self.instances: dict[str, FakeInstance] = {}
        self.web_tokens: set[str] = set()
        self.oidc_providers: set[str] = {"OIDC"}  # identity providers STS knows
        self.role_credentials: dict[str, tuple[str, str, str, int]] = {}  # metadata: role -> creds
        self.seen: list[Seen] = []
        self.metadata_gets: list[str] = []
        self._script: dict[str, list[Scripted]] = {}
        self._issued = 0
        self._lock = threading.Lock()

    # ----------------------------------------------------------------- set-up

    def add_secret(self, secret_id: str, secret_key: str, **more: Any) -> None:
        self.secrets[secret_id] = Secret(secret_key, **more)

    def add_key(self, key_id: str, name: str = "", bound: Iterable[str] = ()) -> None:
        self.key_names[key_id] = name or key_id
        for instance_id in bound:
            self.instances.setdefault(instance_id, FakeInstance(instance_id)).keys.add(key_id)

    def script(self, action: str, *answers: Scripted) -> None:
        """The next calls of ``action`` get these answers, in order, then normal ones."""
        self._script.setdefault(action, []).extend(answers)

    def transport(self) -> httpx.WSGITransport:
        return httpx.WSGITransport(app=self)

    def actions(self) -> list[str]:
        return [seen.action for seen in self.seen]

    # ----------------------------------------------------------------- WSGI

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> list[bytes]:
        path = environ.get("PATH_INFO", "/")
        if environ["REQUEST_METHOD"] == "GET" and path.startswith("/latest/meta-data/"):
            return self._metadata(path, start_response)
        length = int(environ.get("CONTENT_LENGTH") or 0)
        body = environ["wsgi.input"].read(length)
        headers = {
            key[5:].replace("_", "-").lower(): value
            for key, value in environ.items()
            if key.startswith("HTTP_")
        }
        headers["content-type"] = environ.get("CONTENT_TYPE", "")
        with self._lock:
            self._issued += 1
            request_id = f"req-{self._issued:06d}"
            answer = self._answer(headers, body, request_id)
        if answer == "HTTP500":
            start_response("500 Internal Server Error", [("Content-Type", "text/plain")])
            return [b"upstream failure"]
        start_response("200 OK", [("Content-Type", "application/json")])
        return [json.dumps({"Response": {**answer, "RequestId": request_id}}).encode()]

    def _answer(self, headers: dict[str, str], raw: bytes, request_id: str) -> Any:
        action = headers.get("x-tc-action", "")
        try:
            body = json.loads(raw or b"{}")
        except ValueError:
            return _error("InvalidParameter", "body is not JSON")
        self.seen.append(Seen(action, headers, body, request_id))
        refused = self._authenticate(action, headers, raw)
        if refused is not None:
            return refused
        queue = self._script.get(action)
        if queue:
            scripted = queue.pop(0)
            return _error(scripted, f"scripted {scripted}")
        handler = getattr(self, f"_do_{action}", None)
        if handler is None:
            return _error("InvalidAction", f"unknown action {action}")
        result: Any = handler(body, headers, request_id)
        return result

    def _authenticate(self, action: str, headers: dict[str, str], raw: bytes) -> Any:
        authorization = headers.get("authorization", "")
        if authorization == "SKIP":
            return (
                None
                if action == "AssumeRoleWithWebIdentity"
                else _error("AuthFailure.InvalidAuthorization", "")
            )
        parsed = tc3.parse_authorization(authorization)
        if parsed is None:
            return _error("AuthFailure.InvalidAuthorization", "bad Authorization")
        try:
            timestamp = int(headers.get("x-tc-timestamp", ""))
        except ValueError:
            return _error("MissingParameter", "X-TC-Timestamp")
        if abs(timestamp - self.clock()) > 300:
            return _error("AuthFailure.SignatureExpire", "signature expired")
        secret = self.secrets.get(parsed.secret_id)
        if secret is None:
            return _error("AuthFailure.SecretIdNotFound", "SecretId not found")
        service = "sts" if action in STS_ACTIONS else "cvm"
        if parsed.service != service:
            return _error("AuthFailure.SignatureFailure", "wrong service in the scope")
        if not tc3.verify(
            secret.secret_key,
            parsed,
            timestamp=timestamp,
            method="POST",
            headers={"content-type": headers["content-type"], "host": headers.get("host", "")},
            payload=raw,
        ):
            return _error("AuthFailure.SignatureFailure", "signature mismatch")
        if secret.token is not None and headers.get("x-tc-token") != secret.token:
            return _error("AuthFailure.TokenFailure", "token missing or wrong")
        if secret.expires_at is not None and self.clock() >= secret.expires_at:
            return _error("AuthFailure.TokenFailure", "token expired")
        return None

    def _metadata(self, path: str, start_response: StartResponse) -> list[bytes]:
        self.metadata_gets.append(path)
        prefix = "/latest/meta-data/cam/security-credentials/"
        role = path[len(prefix) :] if path.startswith(prefix) else None
        if role == "":
            start_response("200 OK", [("Content-Type", "text/plain")])
            return ["\n".join(self.role_credentials).encode()]
        if role not in self.role_credentials:
            start_response("404 Not Found", [("Content-Type", "text/plain")])
            return [b"not found"]
        secret_id, secret_key, token, expires = self.role_credentials[role]
        start_response("200 OK", [("Content-Type", "application/json")])
        return [
            json.dumps(
                {
                    "TmpSecretId": secret_id,
                    "TmpSecretKey": secret_key,
                    "Token": token,
                    "ExpiredTime": expires,
                    "Code": "Success",
                }
            ).encode()
        ]

    # ----------------------------------------------------------------- CVM

    def _do_DescribeKeyPairs(self, body: dict[str, Any], headers: dict[str, str], rid: str) -> Any:
        ids = body.get("KeyIds")
        limit, offset = body.get("Limit", 20), body.get("Offset", 0)
        if limit > 100:
            return _error("InvalidParameterValue.LimitExceeded", "Limit")
        keys = sorted(self.key_names) if ids is None else [k for k in ids if k in self.key_names]
        page = keys[offset : offset + limit]
        return {
            "TotalCount": len(keys),
            "KeyPairSet": [
                {
                    "KeyId": k,
                    "KeyName": self.key_names[k],
                    "ProjectId": 0,
                    "Description": "",
                    "AssociatedInstanceIds": sorted(
                        i for i, inst in self.instances.items() if k in inst.keys
                    ),
                    "CreatedTime": "2020-01-01T00:00:00Z",
                    "Tags": [],
                }
                for k in page
            ],
        }

    def _do_DescribeInstances(self, body: dict[str, Any], headers: dict[str, str], rid: str) -> Any:
        ids = body.get("InstanceIds") or []
        if len(ids) > 100:
            return _error("InvalidParameterValue.LimitExceeded", "InstanceIds")
        found = [self.instances[i] for i in ids if i in self.instances]
        return {
            "TotalCount": len(found),
            "InstanceSet": [
                {
                    "InstanceId": inst.instance_id,
                    "InstanceName": f"name-{inst.instance_id}",
                    "InstanceState": inst.state,
                    "OsName": inst.os,
                    "LoginSettings": {"KeyIds": sorted(inst.keys) or None},
                    "LatestOperation": inst.latest_operation,
                    "LatestOperationState": inst.latest_operation_state,
                    "LatestOperationRequestId": inst.latest_operation_request_id,
                    "LatestOperationErrorMsg": None,
                    "Placement": {"Zone": "ap-guangzhou-3"},
                    "RestrictState": "NORMAL",
                }
                for inst in found
            ],
        }

    def _do_DisassociateInstancesKeyPairs(
        self, body: dict[str, Any], headers: dict[str, str], rid: str
    ) -> Any:
        ids, keys = body.get("InstanceIds") or [], body.get("KeyIds") or []
        if len(ids) > 100 or len(keys) > 100:
            return _error("InvalidParameterValue.LimitExceeded", "too many IDs")
        if body.get("ForceStop") is not False:
            return _error("InvalidParameterValue", "this fixture expects ForceStop false")
        missing = [i for i in ids if i not in self.instances]
        if missing:
            return _error("InvalidInstanceId.NotFound", f"The specified instance ID {missing} is not found.")
        missing_keys = [k for k in keys if k not in self.key_names]
        if missing_keys:
            return _error("InvalidKeyPairId.NotFound", f"{missing_keys}")
        for instance_id in ids:
            inst = self.instances[instance_id]
            if "windows" in inst.os.lower():
                return _error("UnsupportedOperation.InstanceOsWindows", f"windows instance {instance_id}")
            if inst.latest_operation_state == "OPERATING":
                return _error("OperationDenied.InstanceOperationInProgress", instance_id)
            if inst.state != "STOPPED":
                return _error(f"UnsupportedOperation.InstanceState{inst.state.title()}", instance_id)
        for instance_id in ids:
            inst = self.instances[instance_id]
            inst.keys -= set(keys)
            inst.latest_operation = "DisassociateInstancesKeyPairs"
            inst.latest_operation_state = "SUCCESS"
            inst.latest_operation_request_id = rid
        return {}

    def _do_StopInstances(self, body: dict[str, Any], headers: dict[str, str], rid: str) -> Any:
        for instance_id in body.get("InstanceIds") or []:
            self.instances[instance_id].state = "STOPPING"
        return {}

    def _do_StartInstances(self, body: dict[str, Any], headers: dict[str, str], rid: str) -> Any:
        for instance_id in body.get("InstanceIds") or []:
            self.instances[instance_id].state = "STARTING"
        return {}

    # ----------------------------------------------------------------- STS

    def _caller(self, headers: dict[str, str]) -> Secret:
        parsed = tc3.parse_authorization(headers["authorization"])
        assert parsed is not None
        return self.secrets[parsed.secret_id]

    def _do_GetCallerIdentity(self, body: dict[str, Any], headers: dict[str, str], rid: str) -> Any:
        secret = self._caller(headers)
        return {
            "Arn": secret.arn,
            "AccountId": ACCOUNT,
            "UserId": ACCOUNT,
            "PrincipalId": ACCOUNT,
            "Type": "CAMUser" if secret.token is None else "CAMRole",
        }

    def _issue(self, role_arn: str, session: str, duration: int) -> Any:
        n = len(self.secrets) + 1
        secret_id, secret_key, token = f"AKIDtmp{n:08d}", f"tmp-key-{n}", f"tmp-token-{n}"
        expires = int(self.clock()) + duration
        arn = role_arn.replace(":roleName/", ":assumed-role/") + f"/{session}"
        self.secrets[secret_id] = Secret(secret_key, token=token, expires_at=expires, arn=arn)
        return {
            "Credentials": {"Token": token, "TmpSecretId": secret_id, "TmpSecretKey": secret_key},
            "ExpiredTime": expires,
            "Expiration": "2026-12-01T00:00:00Z",
        }

    def _do_AssumeRole(self, body: dict[str, Any], headers: dict[str, str], rid: str) -> Any:
        arn = body.get("RoleArn", "")
        if not arn.startswith(f"qcs::cam::uin/{ACCOUNT}:roleName/"):
            return _error("InvalidParameter.RoleNotExist", "role not found")
        return self._issue(arn, body["RoleSessionName"], body.get("DurationSeconds", 7200))

    def _do_AssumeRoleWithWebIdentity(self, body: dict[str, Any], headers: dict[str, str], rid: str) -> Any:
        known = body.get("ProviderId") in self.oidc_providers
        if body.get("WebIdentityToken") not in self.web_tokens or not known:
            return _error("InvalidParameter.WebIdentityTokenError", "token not accepted")
        return self._issue(body["RoleArn"], body["RoleSessionName"], body.get("DurationSeconds", 7200))


def _error(code: str, message: str) -> Any:
    if code == "HTTP500":
        return "HTTP500"
    return {"Error": {"Code": code, "Message": message}}
