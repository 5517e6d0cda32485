"""Errors a caller of the directory can act on, and how Graph's answers map to them."""

from __future__ import annotations

import re

import msgspec
from msgraph.generated.models.o_data_errors.o_data_error import ODataError

from sync.models import AccessProblem

REQUIRED_PERMISSIONS = ("GroupMember.Read.All", "User.Read.All")
# Delta tokens Graph no longer knows: 400 syncStateNotFound / syncStateInvalid, 410 resyncRequired
# ("Use delta query to track changes": token duration, synchronization reset).
DELTA_EXPIRED_CODES = frozenset({"syncstatenotfound", "syncstateinvalid", "resyncrequired"})
EXPIRED_PAGE_CODE = "directory_expiredpagetoken"


class DirectoryError(Exception):
    """Graph could not answer a read completely."""

    status: int | None = None

    def advice(self, consent_url: str | None) -> str:
        """The error in words an admin can act on (with the consent link where consent helps)."""
        return str(self)


class GroupNotFound(DirectoryError):
    """A group id does not exist in the tenant (deleted, or never there)."""

    status = 404

    def __init__(self, group_id: str) -> None:
        super().__init__(f"group {group_id} was not found in the tenant (deleted or never there)")
        self.group_id = group_id


class GraphAccessDenied(DirectoryError):
    """Graph refused the app: consent missing or revoked, or a permission not granted."""

    def __init__(self, status: int, permission: str, graph_message: str) -> None:
        super().__init__(
            f"Microsoft Graph refused access ({status}): the app needs the application "
            f"permission {permission} with admin consent in this tenant. {graph_message}".strip()
        )
        self.status = status
        self.permission = permission

    def advice(self, consent_url: str | None) -> str:
        """The refusal with the link where a Global Administrator grants the permission."""
        grant = f" A Global Administrator of the tenant can grant it at {consent_url}" if consent_url else ""
        return f"{self}{grant}"


# AADSTS codes of a refused token (Microsoft identity platform error codes), by what the admin does.
_TOKEN_PROBLEMS: dict[int, AccessProblem] = {
    700016: AccessProblem.NOT_CONSENTED,  # the app is not in the directory: never consented, or removed
    7000229: AccessProblem.NOT_CONSENTED,  # the client app has no service principal in the tenant
    65001: AccessProblem.NOT_CONSENTED,  # consent not granted
    500011: AccessProblem.NOT_CONSENTED,  # the resource principal is not in the tenant
    90002: AccessProblem.TENANT_NOT_FOUND,
    90023: AccessProblem.TENANT_NOT_FOUND,
    700213: AccessProblem.CREDENTIAL_REJECTED,  # no federated identity record matches the subject
    70021: AccessProblem.CREDENTIAL_REJECTED,  # no federated identity record matches the assertion
    700024: AccessProblem.CREDENTIAL_REJECTED,  # the assertion is outside its validity period
    700027: AccessProblem.CREDENTIAL_REJECTED,  # the assertion's signature is invalid
    7000215: AccessProblem.CREDENTIAL_REJECTED,  # invalid client secret
    7000218: AccessProblem.CREDENTIAL_REJECTED,  # no client credential
    53003: AccessProblem.BLOCKED,  # Conditional Access
    7000112: AccessProblem.BLOCKED,  # the application is disabled
}
_AADSTS = re.compile(r"AADSTS(\d+)")

_TOKEN_ADVICE = {
    AccessProblem.NOT_CONSENTED: "the app has not been granted admin consent in this tenant, or the consent "
    "was removed (the enterprise application was deleted). A Global Administrator of the tenant must grant "
    "consent{link}.",
    AccessProblem.TENANT_NOT_FOUND: "Entra ID does not know this tenant: check the tenant id.",
    AccessProblem.CREDENTIAL_REJECTED: "the app's own credential was rejected (the managed identity is not "
    "a federated credential of the Graph app: check GRAPH_APP_CLIENT_ID and GRAPH_IDENTITY_CLIENT_ID). This "
    "is for the operator to fix, not the customer.",
    AccessProblem.BLOCKED: "a Conditional Access policy or a disabled app in the tenant stops the app from "
    "signing in; a Global Administrator of the tenant can allow it.",
}


class GraphTokenRefused(DirectoryError):
    """Entra ID would not issue a Graph token for the tenant (azure-identity's ClientAuthenticationError)."""

    status = 401

    def __init__(self, problem: AccessProblem, aadsts: int | None, description: str) -> None:
        code = f"AADSTS{aadsts}" if aadsts else "no AADSTS code"
        super().__init__(f"Entra ID refused a Microsoft Graph token for this tenant ({code}): {description}")
        self.problem = problem
        self.aadsts = aadsts
        self.description = description

    @classmethod
    def from_message(cls, message: str) -> GraphTokenRefused:
        """Classify azure-identity's message by its AADSTS code (an unknown one counts as no consent)."""
        found = _AADSTS.search(message)
        code = int(found.group(1)) if found else None
        problem = _TOKEN_PROBLEMS.get(code or 0, AccessProblem.NOT_CONSENTED)
        first_line = message.strip().splitlines()[0] if message.strip() else ""
        return cls(problem, code, first_line[:400])

    def advice(self, consent_url: str | None) -> str:
        """What went wrong and who fixes it, with the consent link where consent is the fix."""
        code = f"AADSTS{self.aadsts}" if self.aadsts else "no AADSTS code"
        link = f" at {consent_url}" if consent_url else ""
        return f"Entra ID refused a Microsoft Graph token for this tenant ({code}): " + _TOKEN_ADVICE[
            self.problem
        ].format(link=link)


class PageExpired(DirectoryError):
    """Graph no longer honours a paging link (400 Directory_ExpiredPageToken): read the list again."""

    status = 400


class GraphUnavailable(DirectoryError):
    """Graph stayed throttled, failing or unreachable after the retries."""

    def __init__(self, detail: str, status: int | None = None) -> None:
        super().__init__(f"Microsoft Graph is unavailable: {detail}")
        self.status = status


class GraphRequestRejected(DirectoryError):
    """Graph rejected a request as malformed (a 400 other than throttling)."""

    def __init__(self, status: int, detail: str, code: str = "") -> None:
        super().__init__(f"Microsoft Graph rejected the request ({status}): {detail}")
        self.status = status
        self.code = code


class DeltaExpired(DirectoryError):
    """Graph no longer knows a delta token: a full refresh is needed."""

    status = 410


class InvalidCursor(ValueError):
    """A paging cursor that this module did not issue."""


class _WireError(msgspec.Struct):
    code: str = ""
    message: str = ""


class _ErrorBody(msgspec.Struct):
    error: _WireError = msgspec.field(default_factory=_WireError)


_ERROR_BODY = msgspec.json.Decoder(_ErrorBody)


def classify_error(status: int, code: str, message: str, permission: str) -> DirectoryError:
    """The typed error for a Graph error answer."""
    if status in (401, 403):
        return GraphAccessDenied(status, permission, message)
    if status == 429 or status >= 500:
        return GraphUnavailable(f"{status} {code}: {message}".strip(), status)
    if code.lower() in DELTA_EXPIRED_CODES or status == 410:
        return DeltaExpired(f"Graph no longer knows the delta token ({status} {code}); a full read follows")
    if code.lower() == EXPIRED_PAGE_CODE:
        return PageExpired(f"Graph no longer honours a paging link ({status} {code}): {message}")
    return GraphRequestRejected(status, f"{code}: {message}".strip(": "), code)


def error_from_odata(exc: ODataError, permission: str) -> DirectoryError:
    """The typed error for an ODataError the SDK raised."""
    status = exc.response_status_code or 0
    code = (exc.error.code if exc.error else None) or ""
    message = (exc.error.message if exc.error else None) or ""
    return classify_error(status, code, message, permission)


def error_from_body(status: int, body: bytes, permission: str) -> DirectoryError:
    """The typed error for a `$batch` item's status and body."""
    try:
        err = _ERROR_BODY.decode(body).error
    except msgspec.DecodeError:
        err = _WireError()
    return classify_error(status, err.code, err.message, permission)


def group_item_body(group_id: str, status: int, body: bytes, permission: str) -> bytes:
    """The body of a `$batch` item that read a page of a group's members: GroupNotFound on 404,
    the mapped error on any other failure."""
    if status == 404:
        raise GroupNotFound(group_id)
    if status != 200:
        raise error_from_body(status, body, permission)
    return body
