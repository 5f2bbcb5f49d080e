"""Tencent Cloud STS (``sts.tencentcloudapi.com``, Version 2018-08-13, TC3 service ``sts``):
temporary credentials for an assumed role, for an OIDC web identity, and "who am I".

Used by ``reconciler.cloud.credentials`` (AssumeRole, AssumeRoleWithWebIdentity, each behind a
:class:`~reconciler.cloud.credentials.RefreshingProvider`) and by plan, to show which account
and identity it ran as (:meth:`StsClient.get_caller_identity`). The calls go through
``reconciler.cloud.tc3call`` like the CVM ones; AssumeRoleWithWebIdentity is sent unsigned, as
Tencent's SDK sends it (it needs no keys: that is the point of OIDC in CI).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import httpx

from reconciler.cloud.base import AttemptRecord
from reconciler.cloud.credentials import Credentials, CredentialsProvider, StsOptions
from reconciler.cloud.endpoint import API3_PATH, STS_ENDPOINT, check_endpoint
from reconciler.cloud.retry import ClientTuning
from reconciler.cloud.tc3call import Tc3Auth, Tc3Caller, field_dict, field_int, field_str
from reconciler.errors import ApiError
from reconciler.model import CallerIdentity

__all__ = ["CallerIdentity", "StsClient", "caller_identity"]

SERVICE = "sts"
VERSION = "2018-08-13"
ASSUME_ROLE_HINT = (
    "check that the role {role} exists and that its trust policy lets these credentials assume it "
    "(and the external ID, if it asks for one)"
)
WEB_IDENTITY_HINT = (
    "check that the role {role} trusts the CAM OIDC identity provider {provider}, that the token's "
    "audience is the provider's client ID and that its subject matches the role's conditions"
)


def _temporary(response: dict[str, Any], source: str) -> Credentials:
    creds = field_dict(response.get("Credentials"), "'Credentials'")
    secret_id = field_str(creds, "TmpSecretId")
    secret_key = field_str(creds, "TmpSecretKey")
    token = field_str(creds, "Token")
    assert secret_id is not None and secret_key is not None and token is not None
    return Credentials(
        secret_id,
        secret_key,
        source=source,
        token=token,
        expires_at=float(field_int(response, "ExpiredTime")),
    )


def _identity(response: dict[str, Any]) -> CallerIdentity:
    return CallerIdentity(
        account_id=field_str(response, "AccountId") or "",
        arn=field_str(response, "Arn") or "",
        user_id=field_str(response, "UserId", optional=True) or "",
        principal_id=field_str(response, "PrincipalId", optional=True) or "",
        type=field_str(response, "Type", optional=True) or "",
    )


class StsClient:
    """STS calls to one endpoint (``None``: the global ``https://sts.tencentcloudapi.com/``).

    Each call opens its own HTTP client: these calls are rare (once per credentials lifetime)
    and each may be signed by different credentials.
    """

    def __init__(
        self,
        *,
        endpoint: str | None = None,
        transport: httpx.BaseTransport | None = None,
        region: str = "ap-guangzhou",
        timeout: float = 10.0,
        max_attempts: int = 3,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], None] = time.sleep,
        on_attempt: Callable[[AttemptRecord], None] | None = None,
    ) -> None:
        self.endpoint = check_endpoint(endpoint or STS_ENDPOINT, default_path=API3_PATH)
        self._region = region
        # STS calls are rare (once per credentials lifetime): no client-side rate limit.
        self._tuning = ClientTuning(
            transport=transport,
            rate_limit=None,
            max_attempts=max_attempts,
            timeout=timeout,
            clock=clock,
            sleep=sleep,
            on_attempt=on_attempt,
        )

    def __repr__(self) -> str:
        return f"StsClient(endpoint={self.endpoint!r})"

    def _caller(self, provider: CredentialsProvider | None) -> Tc3Caller:
        return Tc3Caller(
            service=SERVICE,
            version=VERSION,
            endpoint=self.endpoint,
            region=self._region,
            auth=Tc3Auth(provider, service=SERVICE, clock=self._tuning.clock),
            tuning=self._tuning,
        )

    def get_caller_identity(self, provider: CredentialsProvider) -> CallerIdentity:
        """The account and ARN of ``provider``'s credentials (sts:GetCallerIdentity needs no
        CAM permission)."""
        caller = self._caller(provider)
        try:
            return caller.call("GetCallerIdentity", {}, _identity)[0]
        finally:
            caller.close()

    def assume_role(
        self,
        provider: CredentialsProvider,
        *,
        role_arn: str,
        session_name: str,
        duration_s: int,
        external_id: str | None = None,
        source: str = "",
    ) -> Credentials:
        """STS AssumeRole, signed with ``provider``'s credentials."""
        params: dict[str, Any] = {
            "RoleArn": role_arn,
            "RoleSessionName": session_name,
            "DurationSeconds": duration_s,
        }
        if external_id is not None:
            params["ExternalId"] = external_id
        caller = self._caller(provider)
        try:
            return caller.call("AssumeRole", params, lambda r: _temporary(r, source))[0]
        except ApiError as error:
            raise _with_hint(error, ASSUME_ROLE_HINT.format(role=role_arn)) from None
        finally:
            caller.close()

    def assume_role_with_web_identity(
        self,
        *,
        provider_id: str,
        web_identity_token: str,
        role_arn: str,
        session_name: str,
        duration_s: int,
        source: str = "",
    ) -> Credentials:
        """STS AssumeRoleWithWebIdentity: an OIDC token for a role's credentials, unsigned."""
        params = {
            "ProviderId": provider_id,
            "WebIdentityToken": web_identity_token,
            "RoleArn": role_arn,
            "RoleSessionName": session_name,
            "DurationSeconds": duration_s,
        }
        caller = self._caller(None)
        caller.auth.remember_secret(web_identity_token)
        try:
            return caller.call("AssumeRoleWithWebIdentity", params, lambda r: _temporary(r, source))[0]
        except ApiError as error:
            raise _with_hint(error, WEB_IDENTITY_HINT.format(role=role_arn, provider=provider_id)) from None
        finally:
            caller.close()


def caller_identity(
    provider: CredentialsProvider,
    sts: StsOptions | None = None,
    *,
    clock: Callable[[], float] = time.time,
) -> CallerIdentity:
    """Who ``provider``'s credentials are (account and ARN), for the plan to show."""
    return sts_client(sts or StsOptions(), clock).get_caller_identity(provider)


def sts_client(sts: StsOptions, clock: Callable[[], float] = time.time) -> StsClient:
    """An STS client as ``sts`` (the command line's STS options) says."""
    return StsClient(
        endpoint=sts.endpoint,
        transport=sts.transport,
        region=sts.region,
        timeout=sts.timeout,
        clock=clock,
        on_attempt=sts.on_attempt,
    )


def _with_hint(error: ApiError, hint: str) -> ApiError:
    # Same error, with what to check: STS refusals of a role are nearly always its trust policy.
    if error.hint is not None:
        return error
    return ApiError(
        error.action, error.code, error.api_message, kind=error.kind, request_id=error.request_id, hint=hint
    )
