"""Graph's wire shapes: error bodies, replies, and the JSON of each kind of directory object.

Error bodies follow "Microsoft Graph error responses and resource types"; object shapes and
default property sets follow the user, group, device, orgContact and servicePrincipal resource
pages. Field names are Graph's camelCase; the model's Structs are snake_case.
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from devtools.demo_tenant import schema
from devtools.demo_tenant.model import (
    Device,
    DirectoryObject,
    Group,
    OrgContact,
    ServicePrincipal,
    User,
)

API_VERSION = "v1.0"
JSON_CONTENT_TYPE = (
    "application/json;odata.metadata=minimal;odata.streaming=true;IEEE754Compatible=false;charset=utf-8"
)
TEXT_CONTENT_TYPE = "text/plain"
UTF8_BOM = "\ufeff"

# Graph's default property set for users; everything else must be asked for with $select.
USER_DEFAULT_PROPERTIES: tuple[str, ...] = (
    "businessPhones",
    "displayName",
    "givenName",
    "jobTitle",
    "mail",
    "mobilePhone",
    "officeLocation",
    "preferredLanguage",
    "surname",
    "userPrincipalName",
    "id",
)

_DEFAULT_ERRORS: dict[int, tuple[str, str]] = {
    400: ("Request_BadRequest", "The request is malformed or incorrect."),
    401: ("InvalidAuthenticationToken", "Access token validation failure."),
    403: ("Authorization_RequestDenied", "Insufficient privileges to complete the operation."),
    404: ("Request_ResourceNotFound", "The requested resource does not exist."),
    405: ("Request_BadRequest", "The HTTP method is not allowed for the request target."),
    409: ("Directory_ConcurrencyViolation", "Another operation changed the object; try again."),
    429: ("TooManyRequests", "Too many requests; retry after the delay in the Retry-After header."),
    500: ("generalException", "An unspecified error has occurred."),
    502: ("UnknownError", "Bad gateway."),
    503: ("serviceNotAvailable", "The service is temporarily unavailable; retry after a delay."),
    504: ("UnknownError", "The gateway timed out."),
}


# --------------------------------------------------------------------------------------------
# Errors and replies
# --------------------------------------------------------------------------------------------


class GraphError(Exception):
    """An error answer in Graph's shape: {"error": {"code", "message", "innerError"}}."""

    def __init__(
        self,
        status: int,
        code: str | None = None,
        message: str | None = None,
        *,
        retry_after: float | None = None,
    ) -> None:
        default_code, default_message = _DEFAULT_ERRORS.get(status, ("UnknownError", "An error occurred."))
        super().__init__(message or default_message)
        self.status = status
        self.code = code or default_code
        self.message = message or default_message
        self.retry_after = retry_after


@dataclass(slots=True)
class Reply:
    """What a Graph call answers: a JSON payload, or plain text (the $count segments)."""

    status: int
    payload: Any = None
    text: str | None = None
    headers: dict[str, str] = field(default_factory=dict)

    @property
    def content_type(self) -> str:
        """The Content-Type header for this reply."""
        return TEXT_CONTENT_TYPE if self.text is not None else JSON_CONTENT_TYPE


def not_found_message(object_id: str) -> str:
    resource = f"Resource '{object_id}'"
    return f"{resource} does not exist or one of its queried reference-property objects are not present."


def retry_after_header(seconds: float) -> str:
    # Graph sends whole seconds, and Kiota's retry handler parses only integers.
    return str(max(0, math.ceil(seconds)))


def error_reply(error: GraphError, client_request_id: str) -> Reply:
    request_id = str(uuid.uuid4())
    body = {
        "error": {
            "code": error.code,
            "message": error.message,
            "innerError": {
                "date": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S"),
                "request-id": request_id,
                "client-request-id": client_request_id,
            },
        }
    }
    headers = {"request-id": request_id, "client-request-id": client_request_id}
    if error.retry_after is not None:
        headers["Retry-After"] = retry_after_header(error.retry_after)
    return Reply(error.status, body, headers=headers)


# --------------------------------------------------------------------------------------------
# Wire shapes of directory objects
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TypeInfo:
    odata_type: str  # "#microsoft.graph.user"
    entity_set: str  # "users", used in @odata.context
    resource_name: str  # "User", used in error messages
    default_properties: tuple[str, ...] | None  # None: every property is returned by default
    properties: tuple[str, ...]
    selectable: frozenset[str] = frozenset()  # every property name of the Graph type, for $select

    @property
    def by_lower_name(self) -> dict[str, str]:
        """Canonical property names by lower-cased name (Graph matches names case-insensitively)."""
        return _LOWER_NAMES[self.odata_type]


def _user_wire(user: User) -> dict[str, Any]:
    mail = user.mail
    return {
        "id": user.id,
        "businessPhones": list(user.business_phones),
        "displayName": user.display_name,
        "givenName": user.given_name,
        "jobTitle": user.job_title,
        "mail": mail,
        "mobilePhone": user.mobile_phone,
        "officeLocation": user.office_location,
        "preferredLanguage": user.preferred_language,
        "surname": user.surname,
        "userPrincipalName": user.user_principal_name,
        "accountEnabled": user.account_enabled,
        "assignedLicenses": [
            {"disabledPlans": list(lic.disabled_plans), "skuId": lic.sku_id} for lic in user.assigned_licenses
        ],
        "assignedPlans": [
            {
                "assignedDateTime": plan.assigned_date_time,
                "capabilityStatus": plan.capability_status,
                "service": plan.service,
                "servicePlanId": plan.service_plan_id,
            }
            for plan in user.assigned_plans
        ],
        "companyName": None,
        "createdDateTime": user.created_date_time,
        "creationType": "Invitation" if user.user_type == "Guest" else None,
        "deletedDateTime": None,
        "department": user.department,
        "employeeId": None,
        "externalUserState": "Accepted" if user.user_type == "Guest" else None,
        "mailNickname": user.user_principal_name.split("@", 1)[0],
        "onPremisesSyncEnabled": None,
        "otherMails": [],
        "proxyAddresses": [f"SMTP:{mail}"] if mail else [],
        "usageLocation": "US" if user.assigned_licenses else None,
        "userType": user.user_type,
    }


def _group_wire(group: Group) -> dict[str, Any]:
    return {
        "id": group.id,
        "deletedDateTime": None,
        "classification": None,
        "createdDateTime": group.created_date_time,
        "description": group.description,
        "displayName": group.display_name,
        "expirationDateTime": None,
        "groupTypes": list(group.group_types),
        "isAssignableToRole": None,
        "mail": group.mail,
        "mailEnabled": group.mail_enabled,
        "mailNickname": group.mail_nickname,
        "membershipRule": None,
        "membershipRuleProcessingState": None,
        "onPremisesSyncEnabled": None,
        "proxyAddresses": [f"SMTP:{group.mail}"] if group.mail else [],
        "renewedDateTime": group.created_date_time,
        "resourceBehaviorOptions": [],
        "resourceProvisioningOptions": [],
        "securityEnabled": group.security_enabled,
        "securityIdentifier": None,
        "theme": None,
        "visibility": group.visibility,
    }


def _device_wire(device: Device) -> dict[str, Any]:
    return {
        "id": device.id,
        "deletedDateTime": None,
        "accountEnabled": device.account_enabled,
        "deviceId": device.device_id,
        "displayName": device.display_name,
        "operatingSystem": device.operating_system,
        "operatingSystemVersion": device.operating_system_version,
    }


def _contact_wire(contact: OrgContact) -> dict[str, Any]:
    return {
        "id": contact.id,
        "deletedDateTime": None,
        "companyName": contact.company_name,
        "displayName": contact.display_name,
        "givenName": contact.given_name,
        "mail": contact.mail,
        "surname": contact.surname,
    }


def _service_principal_wire(principal: ServicePrincipal) -> dict[str, Any]:
    return {
        "id": principal.id,
        "deletedDateTime": None,
        "accountEnabled": principal.account_enabled,
        "appId": principal.app_id,
        "displayName": principal.display_name,
        "servicePrincipalType": principal.service_principal_type,
    }


_SAMPLE_WIRES: dict[str, dict[str, Any]] = {
    "#microsoft.graph.user": _user_wire(User(id="", user_principal_name="x@y", display_name="")),
    "#microsoft.graph.group": _group_wire(Group(id="", display_name="")),
    "#microsoft.graph.device": _device_wire(Device(id="", display_name="", device_id="")),
    "#microsoft.graph.orgContact": _contact_wire(OrgContact(id="", display_name="")),
    "#microsoft.graph.servicePrincipal": _service_principal_wire(
        ServicePrincipal(id="", display_name="", app_id="")
    ),
}
_LOWER_NAMES: dict[str, dict[str, str]] = {}
USER_TYPE = TypeInfo(
    "#microsoft.graph.user",
    "users",
    "User",
    USER_DEFAULT_PROPERTIES,
    tuple(_SAMPLE_WIRES["#microsoft.graph.user"]),
    schema.USER_PROPERTIES,
)
GROUP_TYPE = TypeInfo(
    "#microsoft.graph.group",
    "groups",
    "Group",
    None,
    tuple(_SAMPLE_WIRES["#microsoft.graph.group"]),
    schema.GROUP_PROPERTIES,
)
DEVICE_TYPE = TypeInfo(
    "#microsoft.graph.device",
    "devices",
    "Device",
    None,
    tuple(_SAMPLE_WIRES["#microsoft.graph.device"]),
    schema.DEVICE_PROPERTIES,
)
CONTACT_TYPE = TypeInfo(
    "#microsoft.graph.orgContact",
    "contacts",
    "OrgContact",
    None,
    tuple(_SAMPLE_WIRES["#microsoft.graph.orgContact"]),
    schema.ORG_CONTACT_PROPERTIES,
)
SERVICE_PRINCIPAL_TYPE = TypeInfo(
    "#microsoft.graph.servicePrincipal",
    "servicePrincipals",
    "ServicePrincipal",
    None,
    tuple(_SAMPLE_WIRES["#microsoft.graph.servicePrincipal"]),
    schema.SERVICE_PRINCIPAL_PROPERTIES,
)
for _type in (USER_TYPE, GROUP_TYPE, DEVICE_TYPE, CONTACT_TYPE, SERVICE_PRINCIPAL_TYPE):
    _LOWER_NAMES[_type.odata_type] = {
        name.lower(): name for name in (*sorted(_type.selectable), *_type.properties)
    }
# A mixed directoryObject collection (members without a cast) takes any member type's property.
DIRECTORY_OBJECT_PROPERTIES: dict[str, str] = {
    lower: name for names in _LOWER_NAMES.values() for lower, name in names.items()
}
TYPE_BY_CLASS: dict[type, TypeInfo] = {
    User: USER_TYPE,
    Group: GROUP_TYPE,
    Device: DEVICE_TYPE,
    OrgContact: CONTACT_TYPE,
    ServicePrincipal: SERVICE_PRINCIPAL_TYPE,
}
WIRE_BY_CLASS: dict[type, Callable[[Any], dict[str, Any]]] = {
    User: _user_wire,
    Group: _group_wire,
    Device: _device_wire,
    OrgContact: _contact_wire,
    ServicePrincipal: _service_principal_wire,
}
# OData cast path segments: the SDK (Kiota) sends "graph.user", docs show "microsoft.graph.user".
CASTS: dict[str, TypeInfo | None] = {}
for _info in (USER_TYPE, GROUP_TYPE, DEVICE_TYPE, CONTACT_TYPE, SERVICE_PRINCIPAL_TYPE):
    _short = _info.odata_type.removeprefix("#microsoft.graph.").lower()
    CASTS[f"microsoft.graph.{_short}"] = _info
    CASTS[f"graph.{_short}"] = _info
CASTS["microsoft.graph.application"] = None  # a valid cast that never matches here
CASTS["graph.application"] = None


class WireCache:
    """Full wire dicts per object, rebuilt when the tenant replaced the (frozen) Struct."""

    def __init__(self) -> None:
        self._entries: dict[str, tuple[DirectoryObject, dict[str, Any]]] = {}

    def full(self, obj: DirectoryObject) -> dict[str, Any]:
        entry = self._entries.get(obj.id)
        if entry is not None and entry[0] is obj:
            return entry[1]
        wire = WIRE_BY_CLASS[type(obj)](obj)
        self._entries[obj.id] = (obj, wire)
        return wire


def project(
    wire: dict[str, Any], info: TypeInfo, select: tuple[str, ...] | None, *, typed: bool
) -> dict[str, Any]:
    """The properties a response carries for one object: $select (canonical names) or the type's defaults.

    `typed` is true for collections of one type (users, groups, casts), where a selected
    property the demo does not model comes back as null; in mixed directoryObject collections a
    property of another type is left out.
    """
    if select is None:
        if info.default_properties is None:
            return dict(wire)
        return {name: wire[name] for name in info.default_properties}
    lower = info.by_lower_name
    out: dict[str, Any] = {}
    for name in select:
        canonical = lower.get(name.lower())
        if canonical is not None:
            out[canonical] = wire.get(canonical)
        elif typed:
            out[name] = None
    return out
