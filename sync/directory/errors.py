"""Errors a caller of the directory can act on, and how Graph's answers map to them."""

from __future__ import annotations

import msgspec
from msgraph.generated.models.o_data_errors.o_data_error import ODataError


class DirectoryError(Exception):
    """Graph could not answer a read completely."""

    status: int | None = None


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
