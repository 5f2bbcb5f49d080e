"""The emulator's instance metadata service: CAM instance-role credentials.

Served by ``emulator/app.py`` under ``/latest/meta-data/cam/security-credentials/``, as on
``http://metadata.tencentyun.com`` (what Tencent's SDK ``CVMRoleCredential`` and Terraform's
``cam_role_name`` read): the directory lists the roles the fleet file declares, one a line;
``.../<role>`` answers ``TmpSecretId``, ``TmpSecretKey``, ``Token``, ``ExpiredTime``,
``Expiration`` and ``Code: "Success"``. The credentials are the backend's temporary ones, so the
CVM face accepts them with their token. Unsigned, like the real service (it is reachable only
from the instance).
"""

from __future__ import annotations

import time

from reconciler.emulator.state import FleetState
from reconciler.emulator.wire import JSON3, Answer

PREFIX = "/latest/meta-data/cam/security-credentials"


def iso8601(seconds: float) -> str:
    """UTC ``YYYY-MM-DDThh:mm:ssZ``, as STS and the metadata service write expiry times."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(seconds))


def handle(state: FleetState, path: str, method: str) -> Answer:
    """The answer to a metadata request."""
    if method != "GET":
        return Answer.http("405 Method Not Allowed")
    rest = path[len(PREFIX) :]
    if rest in ("", "/"):
        body = "".join(f"{role}\n" for role in state.roles)
        return Answer("200 OK", body.encode("utf-8"), "text/plain; charset=utf-8")
    role = rest.lstrip("/")
    try:
        secret = state.instance_role_credentials(role)
    except KeyError:
        return Answer.http("404 Not Found")
    expires = secret.expires or 0.0
    return Answer.json(
        {
            "TmpSecretId": secret.secret_id,
            "TmpSecretKey": secret.secret_key,
            "Token": secret.token,
            "ExpiredTime": int(expires),
            "Expiration": iso8601(expires),
            "Code": "Success",
        },
        JSON3,
    )
