"""The emulator's API errors: one class per error, carrying its API 2.0 and API 3.0 codes.

Raised by the backend (``emulator/state.py``) and the wire layers (``app.py`` for 2.0,
``api3.py`` and ``sts.py`` for 3.0); each wire layer renders the code of its API:
2.0 ``{"code": code, "message": ..., "codeDesc": ...}``, 3.0
``{"Response": {"Error": {"Code": code3, "Message": ...}, "RequestId": ...}}``. One rule raises one
class, so both APIs refuse the same things for the same reasons (like ``moto/ses/exceptions.py``).

The 3.0 codes are those the SDK and Go SDK list per action (``shared/reference/cvm-api-3.0.md``
section 4); where the docs name none, the choice is the emulator's and ``docs/emulator.md`` says so.
"""

from __future__ import annotations

from typing import ClassVar


class ApiError(Exception):
    """An API error answer. ``code`` is the 2.0 integer, ``code3`` the 3.0 string."""

    code: ClassVar[int] = 4000
    code3: ClassVar[str] = "InvalidParameter"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return f"{self.code3}: {self.message}"


# --------------------------------------------------------------------------- parameters


class InvalidParameter(ApiError):
    code, code3 = 4000, "InvalidParameter"


class InvalidParameterValue(ApiError):
    code, code3 = 4000, "InvalidParameterValue"


class MissingParameter(ApiError):
    code, code3 = 4000, "MissingParameter"


class LimitExceeded(ApiError):
    """More values than a parameter takes (over 100 IDs, Limit over 100)."""

    code, code3 = 4000, "InvalidParameterValue.LimitExceeded"


class InstanceIdMalformed(ApiError):
    code, code3 = 4000, "InvalidInstanceId.Malformed"


class KeyPairIdMalformed(ApiError):
    code, code3 = 4000, "InvalidKeyPairId.Malformed"


class InvalidRegion(ApiError):
    code, code3 = 4000, "InvalidParameterValue"


class NoSuchVersion(ApiError):
    code, code3 = 4000, "NoSuchVersion"


class InvalidAction(ApiError):
    code, code3 = 6100, "InvalidAction"


# --------------------------------------------------------------------------- authentication


class AuthFailure(ApiError):
    code, code3 = 4100, "AuthFailure.SignatureFailure"


class SignatureFailure(AuthFailure):
    code, code3 = 4100, "AuthFailure.SignatureFailure"


class InvalidAuthorization(AuthFailure):
    code, code3 = 4100, "AuthFailure.InvalidAuthorization"


class SecretIdNotFound(AuthFailure):
    code, code3 = 4104, "AuthFailure.SecretIdNotFound"


class SignatureExpire(AuthFailure):
    code, code3 = 4500, "AuthFailure.SignatureExpire"


class RequestReplayed(AuthFailure):
    # 3.0 has no documented replay code (TC3 has no Nonce at all); a reused v1 Nonce is
    # refused as a signature failure, the nearest documented code.
    code, code3 = 4500, "AuthFailure.SignatureFailure"


class TokenFailure(AuthFailure):
    """Temporary credentials without their token, with a wrong one, or expired."""

    code, code3 = 4100, "AuthFailure.TokenFailure"


class UnauthorizedOperation(AuthFailure):
    code, code3 = 4100, "AuthFailure.UnauthorizedOperation"


# --------------------------------------------------------------------------- existence


class ResourceNotFound(ApiError):
    code, code3 = 5000, "ResourceNotFound"


class InstanceNotFound(ResourceNotFound):
    code, code3 = 5000, "InvalidInstanceId.NotFound"


class KeyPairNotFound(ResourceNotFound):
    code, code3 = 5000, "InvalidKeyPairId.NotFound"


class RoleNotFound(ResourceNotFound):
    code, code3 = 5000, "ResourceNotFound.RoleNotExist"


class WebIdentityTokenError(AuthFailure):
    code, code3 = 4100, "InvalidParameter.WebIdentityTokenError"


# --------------------------------------------------------------------------- rules


class OperationFailed(ApiError):
    """A rule refused the call (2.0 5100). Subclasses name the 3.0 reason."""

    code, code3 = 5100, "FailedOperation"


class InstanceOsWindows(OperationFailed):
    code3 = "UnsupportedOperation.InstanceOsWindows"


class StoppedModeStopCharging(OperationFailed):
    code3 = "UnsupportedOperation.StoppedModeStopCharging"


class InstanceOperationInProgress(OperationFailed):
    code3 = "OperationDenied.InstanceOperationInProgress"


class InstanceNotSupported(OperationFailed):
    code3 = "InvalidInstance.NotSupported"


class InstanceStateRefused(OperationFailed):
    """The instance's state does not allow the call: ``UnsupportedOperation.InstanceState<State>``."""

    code3 = "UnsupportedOperation"


_STATE_CLASSES: dict[str, type[InstanceStateRefused]] = {}


def state_refusal(api3_state: str) -> type[OperationFailed]:
    """The class for a refusal because of an instance in ``api3_state`` (e.g. ``RUNNING`` ->
    ``UnsupportedOperation.InstanceStateRunning``)."""
    if api3_state == "LAUNCH_FAILED":
        return InstanceNotSupported
    found = _STATE_CLASSES.get(api3_state)
    if found is None:
        word = "".join(part.capitalize() for part in api3_state.split("_"))
        found = type(
            f"InstanceState{word}",
            (InstanceStateRefused,),
            {"code3": f"UnsupportedOperation.InstanceState{word}"},
        )
        _STATE_CLASSES[api3_state] = found
    return found


class PartialSuccess(ApiError):
    """2.0 only (5400): some instances of a batch done. 3.0 has no partial success."""

    code, code3 = 5400, "FailedOperation"


# --------------------------------------------------------------------------- service


class RequestLimitExceeded(ApiError):
    code, code3 = 4400, "RequestLimitExceeded"


class InternalError(ApiError):
    code, code3 = 6000, "InternalError"


class ServiceUnavailable(ApiError):
    code, code3 = 6200, "ResourceUnavailable"


_BY_CODE: dict[int, type[ApiError]] = {
    4000: InvalidParameter,
    4100: AuthFailure,
    4104: SecretIdNotFound,
    4400: RequestLimitExceeded,
    4500: SignatureExpire,
    5000: ResourceNotFound,
    5100: OperationFailed,
    5400: PartialSuccess,
    6000: InternalError,
    6100: InvalidAction,
    6200: ServiceUnavailable,
}


def by_code(code: int, message: str) -> ApiError:
    """The generic error of a 2.0 code (for code written before the classes existed)."""
    return _BY_CODE.get(code, InvalidParameter)(message)


class InvalidFilter(ApiError):
    code, code3 = 4000, "InvalidFilter"
