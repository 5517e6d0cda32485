"""A Microsoft Graph v1.0 look-alike HTTP server over demo tenants, with fault and latency knobs.

Serves several tenants at once under /v1.0, picking the tenant from the bearer token
(`Authorization: Bearer demo.<tenantId>`). Wire shapes (error bodies, paging with
`@odata.nextLink`/`$skiptoken`, `@odata.count`, `$count` segments, OData casts, advanced
query rules, `$batch`, delta links) follow Microsoft's Graph reference pages.

Control routes under /_demo/ need no token; see `DemoGraphServer` for the Python side and
`_control_routes` for the HTTP side.
"""

from __future__ import annotations

import asyncio
import base64
import collections
import gc
import math
import re
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qsl, quote, unquote, urlsplit

import msgspec
from aiohttp import web

from devtools.demo_tenant.model import (
    AssignedLicense,
    Device,
    DirectoryObject,
    Group,
    OrgContact,
    ServicePrincipal,
    Tenant,
    User,
)

API_VERSION = "v1.0"
TOKEN_PREFIX = "demo."
MAX_PAGE_SIZE = 999
DEFAULT_PAGE_SIZE = 100
MAX_BATCH_REQUESTS = 20
DELTA_PAGE_SIZE = 100
DELTA_MEMBERS_PER_ENTRY = 1000  # a larger group is split over several entries, as Graph does

JSON_CONTENT_TYPE = (
    "application/json;odata.metadata=minimal;odata.streaming=true;IEEE754Compatible=false;charset=utf-8"
)
TEXT_CONTENT_TYPE = "text/plain"
_GUID = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")
_ADVANCED_QUERY_HINT = (
    "Add the ConsistencyLevel: eventual header and the $count=true query option (advanced query)."
)

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


def _not_found_message(object_id: str) -> str:
    resource = f"Resource '{object_id}'"
    return f"{resource} does not exist or one of its queried reference-property objects are not present."


def _retry_after_header(seconds: float) -> str:
    # Graph sends whole seconds, and Kiota's retry handler parses only integers.
    return str(max(0, math.ceil(seconds)))


def _error_reply(error: GraphError, client_request_id: str) -> Reply:
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
        headers["Retry-After"] = _retry_after_header(error.retry_after)
    return Reply(error.status, body, headers=headers)


# --------------------------------------------------------------------------------------------
# Wire shapes of directory objects
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _TypeInfo:
    odata_type: str  # "#microsoft.graph.user"
    entity_set: str  # "users", used in @odata.context
    resource_name: str  # "User", used in error messages
    default_properties: tuple[str, ...] | None  # None: every property is returned by default
    properties: tuple[str, ...]

    @property
    def by_lower_name(self) -> dict[str, str]:
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
        "creationOptions": [],
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
_LOWER_NAMES: dict[str, dict[str, str]] = {
    odata_type: {name.lower(): name for name in sample} for odata_type, sample in _SAMPLE_WIRES.items()
}
USER_TYPE = _TypeInfo(
    "#microsoft.graph.user",
    "users",
    "User",
    USER_DEFAULT_PROPERTIES,
    tuple(_SAMPLE_WIRES["#microsoft.graph.user"]),
)
GROUP_TYPE = _TypeInfo(
    "#microsoft.graph.group", "groups", "Group", None, tuple(_SAMPLE_WIRES["#microsoft.graph.group"])
)
DEVICE_TYPE = _TypeInfo(
    "#microsoft.graph.device", "devices", "Device", None, tuple(_SAMPLE_WIRES["#microsoft.graph.device"])
)
CONTACT_TYPE = _TypeInfo(
    "#microsoft.graph.orgContact",
    "contacts",
    "OrgContact",
    None,
    tuple(_SAMPLE_WIRES["#microsoft.graph.orgContact"]),
)
SERVICE_PRINCIPAL_TYPE = _TypeInfo(
    "#microsoft.graph.servicePrincipal",
    "servicePrincipals",
    "ServicePrincipal",
    None,
    tuple(_SAMPLE_WIRES["#microsoft.graph.servicePrincipal"]),
)
_TYPE_BY_CLASS: dict[type, _TypeInfo] = {
    User: USER_TYPE,
    Group: GROUP_TYPE,
    Device: DEVICE_TYPE,
    OrgContact: CONTACT_TYPE,
    ServicePrincipal: SERVICE_PRINCIPAL_TYPE,
}
_WIRE_BY_CLASS: dict[type, Callable[[Any], dict[str, Any]]] = {
    User: _user_wire,
    Group: _group_wire,
    Device: _device_wire,
    OrgContact: _contact_wire,
    ServicePrincipal: _service_principal_wire,
}
# OData cast path segments: the SDK (Kiota) sends "graph.user", docs show "microsoft.graph.user".
_CASTS: dict[str, _TypeInfo | None] = {}
for _info in (USER_TYPE, GROUP_TYPE, DEVICE_TYPE, CONTACT_TYPE, SERVICE_PRINCIPAL_TYPE):
    _short = _info.odata_type.removeprefix("#microsoft.graph.").lower()
    _CASTS[f"microsoft.graph.{_short}"] = _info
    _CASTS[f"graph.{_short}"] = _info
_CASTS["microsoft.graph.application"] = None  # a valid cast that never matches here
_CASTS["graph.application"] = None


class _WireCache:
    """Full wire dicts per object, rebuilt when the tenant replaced the (frozen) Struct."""

    def __init__(self) -> None:
        self._entries: dict[str, tuple[DirectoryObject, dict[str, Any]]] = {}

    def full(self, obj: DirectoryObject) -> dict[str, Any]:
        entry = self._entries.get(obj.id)
        if entry is not None and entry[0] is obj:
            return entry[1]
        wire = _WIRE_BY_CLASS[type(obj)](obj)
        self._entries[obj.id] = (obj, wire)
        return wire


# --------------------------------------------------------------------------------------------
# Query options
# --------------------------------------------------------------------------------------------


@dataclass(slots=True)
class Call:
    """One Graph request (top-level or a $batch item) on its way through the dispatcher."""

    method: str
    path: str  # decoded, relative to /v1.0, with a leading "/"
    query: dict[str, str]  # option names lower-cased, "$" kept ("$select")
    headers: Mapping[str, str]  # case-insensitive lookups via .get on lower-case names
    base_url: str  # "http://127.0.0.1:PORT/v1.0"
    client_request_id: str
    tenant: Tenant | None = None
    in_batch: bool = False
    kind: str = "unknown"

    def header(self, name: str) -> str | None:
        """A request header, case-insensitively."""
        value = self.headers.get(name)
        if value is None:
            value = self.headers.get(name.lower())
        return value

    @property
    def eventual(self) -> bool:
        """Whether the caller sent ConsistencyLevel: eventual."""
        return (self.header("ConsistencyLevel") or "").strip().lower() == "eventual"

    @property
    def count_requested(self) -> bool:
        """Whether $count=true was sent."""
        return self.option("$count").lower() == "true"

    @property
    def advanced(self) -> bool:
        """Both advanced query parameters: ConsistencyLevel: eventual and $count=true."""
        return self.eventual and self.count_requested

    def option(self, name: str) -> str:
        """A query option by name ("$select"); Graph also accepts it without the "$"."""
        value = self.query.get(name)
        if value is None:
            value = self.query.get(name.lstrip("$"), "")
        return value


def _normalize_query(pairs: Iterable[tuple[str, str]]) -> dict[str, str]:
    query: dict[str, str] = {}
    for name, value in pairs:
        query.setdefault(name.lower(), value)
    return query


def _parse_top(call: Call) -> int:
    raw = call.option("$top")
    if not raw:
        return DEFAULT_PAGE_SIZE
    try:
        top = int(raw)
    except ValueError:
        raise GraphError(
            400, "Request_BadRequest", f"Invalid value '{raw}' for the $top query option."
        ) from None
    if not 1 <= top <= MAX_PAGE_SIZE:
        raise GraphError(
            400,
            "Request_UnsupportedQuery",
            f"Invalid page size specified: '{top}'. Must be between 1 and {MAX_PAGE_SIZE} inclusive.",
        )
    return top


def _parse_select(call: Call) -> tuple[str, ...] | None:
    raw = call.option("$select").strip()
    if not raw:
        return None
    names = tuple(name.strip() for name in raw.split(",") if name.strip())
    return names or None


def _canonical_select(names: tuple[str, ...] | None, info: _TypeInfo) -> tuple[str, ...] | None:
    if names is None:
        return None
    lower = info.by_lower_name
    return tuple(lower.get(name.lower(), name) for name in names)


def _project(
    wire: dict[str, Any], info: _TypeInfo, select: tuple[str, ...] | None, *, typed: bool
) -> dict[str, Any]:
    """The properties a response carries for one object: $select (case-insensitive) or the type's defaults.

    `typed` is true for collections of one type (users, groups, casts), where a selected
    property the object lacks comes back as null; in mixed directoryObject collections it is
    left out, since it belongs to another type.
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
            out[canonical] = wire[canonical]
        elif typed:
            out[name] = None
    return out


def _context_url(call: Call, entity_set: str, select: tuple[str, ...] | None, suffix: str = "") -> str:
    selected = f"({','.join(select)})" if select else ""
    return f"{call.base_url}/$metadata#{entity_set}{selected}{suffix}"


_QUERY_SAFE = "$,'()*:@/=!;"


def _link(call: Call, extra: dict[str, str], keep: bool = True, path: str | None = None) -> str:
    """An absolute link to this call's path with its query options (minus paging tokens) and `extra`."""
    options: dict[str, str] = {}
    if keep:
        options = {
            name: value
            for name, value in call.query.items()
            if name.lstrip("$") not in ("skiptoken", "deltatoken")
        }
    options.update(extra)
    encoded_path = quote(path if path is not None else call.path, safe="/$().'=:,@")
    if not options:
        return f"{call.base_url}{encoded_path}"
    query = "&".join(
        f"{quote(name, safe='$')}={quote(value, safe=_QUERY_SAFE)}" for name, value in options.items()
    )
    return f"{call.base_url}{encoded_path}?{query}"


def _encode_token(state: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(msgspec.json.encode(state)).decode().rstrip("=")


def _decode_token(token: str) -> dict[str, Any]:
    try:
        padded = token + "=" * (-len(token) % 4)
        state = msgspec.json.decode(base64.urlsafe_b64decode(padded.encode()))
    except Exception:
        raise GraphError(400, "Request_BadRequest", "The paging token is not valid.") from None
    if not isinstance(state, dict):
        raise GraphError(400, "Request_BadRequest", "The paging token is not valid.")
    return state


# --------------------------------------------------------------------------------------------
# $filter and $search
# --------------------------------------------------------------------------------------------

_FILTER_TOKEN = re.compile(
    r"\s*(?:(?P<string>'(?:[^']|'')*')|(?P<open>\()|(?P<close>\))|(?P<comma>,)|(?P<colon>:)|(?P<word>[^\s(),:']+))"
)
_ADVANCED_ONLY_OPERATORS = {"ne", "not", "endswith", "$count"}
Predicate = Callable[[dict[str, Any]], bool]


def _fold(value: Any) -> Any:
    return value.lower() if isinstance(value, str) else value


class _FilterParser:
    """A small OData $filter parser.

    Supports eq/ne/gt/ge/lt/le, in, startswith/endswith, any() lambdas, /$count, and/or/not.
    """

    def __init__(self, text: str, info: _TypeInfo) -> None:
        self.info = info
        self.tokens: list[tuple[str, str]] = []
        position = 0
        text = text.strip()
        while position < len(text):
            match = _FILTER_TOKEN.match(text, position)
            if match is None or match.end() == position:
                raise self.invalid(f"unexpected character at position {position}")
            kind = match.lastgroup or ""
            self.tokens.append((kind, match.group(kind)))
            position = match.end()
            while position < len(text) and text[position].isspace():
                position += 1
        self.index = 0
        self.used_operators: set[str] = set()

    def invalid(self, detail: str) -> GraphError:
        return GraphError(400, "BadRequest", f"Invalid filter clause: {detail}.")

    def peek(self) -> tuple[str, str] | None:
        return self.tokens[self.index] if self.index < len(self.tokens) else None

    def take(self, kind: str | None = None, word: str | None = None) -> str:
        token = self.peek()
        if token is None or (kind and token[0] != kind) or (word and token[1].lower() != word):
            raise self.invalid(f"expected {word or kind}")
        self.index += 1
        return token[1]

    def at_word(self, *words: str) -> bool:
        token = self.peek()
        return token is not None and token[0] == "word" and token[1].lower() in words

    def parse(self) -> Predicate:
        predicate = self.or_expression()
        if self.peek() is not None:
            raise self.invalid(f"unexpected '{self.peek()[1]}'")  # type: ignore[index]
        return predicate

    def or_expression(self) -> Predicate:
        left = self.and_expression()
        while self.at_word("or"):
            self.take()
            right = self.and_expression()
            left = (lambda a, b: lambda wire: a(wire) or b(wire))(left, right)
        return left

    def and_expression(self) -> Predicate:
        left = self.unary()
        while self.at_word("and"):
            self.take()
            right = self.unary()
            left = (lambda a, b: lambda wire: a(wire) and b(wire))(left, right)
        return left

    def unary(self) -> Predicate:
        if self.at_word("not"):
            self.take()
            self.used_operators.add("not")
            inner = self.unary()
            return lambda wire: not inner(wire)
        return self.primary()

    def property_name(self, raw: str) -> str:
        canonical = self.info.by_lower_name.get(raw.lower())
        if canonical is None:
            raise GraphError(
                400,
                "Request_UnsupportedQuery",
                f"Unsupported or invalid query filter clause specified for property '{raw}' "
                f"of resource '{self.info.resource_name}'.",
            )
        return canonical

    def literal(self) -> Any:
        token = self.peek()
        if token is None:
            raise self.invalid("expected a value")
        self.index += 1
        kind, text = token
        if kind == "string":
            return text[1:-1].replace("''", "'")
        if kind != "word":
            raise self.invalid(f"unexpected '{text}'")
        lowered = text.lower()
        if lowered in ("true", "false"):
            return lowered == "true"
        if lowered == "null":
            return None
        if _GUID.match(text):
            return text
        try:
            return int(text)
        except ValueError:
            pass
        try:
            return float(text)
        except ValueError:
            return text  # bare values such as dates are compared as text

    def primary(self) -> Predicate:
        token = self.peek()
        if token is None:
            raise self.invalid("unexpected end")
        if token[0] == "open":
            self.take("open")
            inner = self.or_expression()
            self.take("close")
            return inner
        if token[0] != "word":
            raise self.invalid(f"unexpected '{token[1]}'")
        word = token[1]
        lowered = word.lower()
        if lowered in ("startswith", "endswith"):
            self.take()
            self.take("open")
            name = self.property_name(self.take("word"))
            self.take("comma")
            value = _fold(self.literal())
            self.take("close")
            if lowered == "endswith":
                self.used_operators.add("endswith")
                return lambda wire: isinstance(wire.get(name), str) and wire[name].lower().endswith(value)
            return lambda wire: isinstance(wire.get(name), str) and wire[name].lower().startswith(value)
        self.take()
        if lowered.endswith("/any"):
            return self.lambda_any(self.property_name(word[: -len("/any")]))
        if lowered.endswith("/$count"):
            self.used_operators.add("$count")
            name = self.property_name(word[: -len("/$count")])
            operator = self.take("word").lower()
            number = self.literal()
            return self.comparison(lambda wire: len(wire.get(name) or ()), operator, number)
        name = self.property_name(word)
        operator = self.take("word").lower()
        if operator == "in":
            self.take("open")
            values = {_fold(self.literal())}
            while self.peek() is not None and self.peek()[0] == "comma":  # type: ignore[index]
                self.take("comma")
                values.add(_fold(self.literal()))
            self.take("close")
            return lambda wire: _fold(wire.get(name)) in values
        return self.comparison(lambda wire: wire.get(name), operator, self.literal())

    def lambda_any(self, name: str) -> Predicate:
        self.take("open")
        variable = self.take("word")
        self.take("colon")
        target = self.take("word")
        sub_property: str | None = None
        if target.lower().startswith(variable.lower() + "/"):
            sub_property = target.split("/", 1)[1]
        elif target.lower() != variable.lower():
            raise self.invalid(f"unknown lambda variable '{target}'")
        operator = self.take("word").lower()
        value = self.literal()
        self.take("close")

        def item_value(item: Any) -> Any:
            if sub_property is None:
                return item
            return item.get(sub_property) if isinstance(item, dict) else None

        test = self.comparison(lambda item: item_value(item), operator, value)
        return lambda wire: any(test(item) for item in (wire.get(name) or ()))

    def comparison(self, read: Callable[[Any], Any], operator: str, value: Any) -> Callable[[Any], bool]:
        folded = _fold(value)
        if operator == "eq":
            return lambda wire: _fold(read(wire)) == folded
        if operator == "ne":
            self.used_operators.add("ne")
            return lambda wire: _fold(read(wire)) != folded
        comparisons: dict[str, Callable[[Any], Any]] = {
            "gt": lambda left: left > folded,
            "ge": lambda left: left >= folded,
            "lt": lambda left: left < folded,
            "le": lambda left: left <= folded,
        }
        if operator not in comparisons:
            raise self.invalid(f"unknown operator '{operator}'")
        compare = comparisons[operator]

        def check(wire: Any) -> bool:
            left = _fold(read(wire))
            if left is None or folded is None:
                return False
            try:
                return bool(compare(left))
            except TypeError:
                return False

        return check


def _compile_filter(call: Call, info: _TypeInfo, text: str) -> Predicate:
    parser = _FilterParser(text, info)
    predicate = parser.parse()
    advanced_only = parser.used_operators & _ADVANCED_ONLY_OPERATORS
    if advanced_only and not call.advanced:
        operator = sorted(advanced_only)[0]
        raise GraphError(
            400,
            "Request_UnsupportedQuery",
            f"Operator '{operator}' needs the advanced query parameters. {_ADVANCED_QUERY_HINT}",
        )
    return predicate


_SEARCH_CLAUSE = re.compile(r'"([^"]*)"|\b(AND|OR)\b', re.IGNORECASE)
_SEARCH_WORD = re.compile(r"[A-Z]?[a-z]+|[A-Z]+(?![a-z])|\d+")
_SEARCHABLE = {
    "displayname",
    "description",
    "mail",
    "userprincipalname",
    "givenname",
    "surname",
    "mailnickname",
    "jobtitle",
    "department",
}


def _search_words(text: str) -> list[str]:
    return [word.lower() for word in _SEARCH_WORD.findall(text)]


def _compile_search(call: Call, info: _TypeInfo, text: str) -> Predicate:
    if not call.eventual:
        raise GraphError(
            400,
            "Request_UnsupportedQuery",
            "$search on directory objects needs the ConsistencyLevel: eventual header.",
        )
    clauses: list[tuple[str, Predicate]] = []
    joiner = "AND"
    for match in _SEARCH_CLAUSE.finditer(text):
        if match.group(2):
            joiner = match.group(2).upper()
            continue
        clause = match.group(1)
        name, separator, term = clause.partition(":")
        if not separator or name.lower() not in _SEARCHABLE:
            raise GraphError(
                400,
                "Request_UnsupportedQuery",
                f"Unsupported $search clause '{clause}': "
                'use "property:term" on displayName or description.',
            )
        canonical = info.by_lower_name.get(name.lower())
        term_words = _search_words(term)

        def matches(
            wire: dict[str, Any], canonical: str | None = canonical, term_words: list[str] = term_words
        ) -> bool:
            value = wire.get(canonical) if canonical else None
            if not isinstance(value, str):
                return False
            words = _search_words(value)
            return all(any(word.startswith(term_word) for word in words) for term_word in term_words)

        clauses.append((joiner, matches))
        joiner = "AND"
    if not clauses:
        raise GraphError(
            400,
            "Request_UnsupportedQuery",
            'Invalid $search: give quoted clauses such as "displayName:term".',
        )

    def predicate(wire: dict[str, Any]) -> bool:
        result = clauses[0][1](wire)
        for clause_joiner, clause in clauses[1:]:
            result = (result or clause(wire)) if clause_joiner == "OR" else (result and clause(wire))
        return result

    return predicate


# --------------------------------------------------------------------------------------------
# Knobs: faults, rate limit, request log
# --------------------------------------------------------------------------------------------


@dataclass(slots=True)
class Fault:
    """An injected failure: requests matching method, tenant and path regex get `status`.

    The first `after` matches pass; then `times` matches fail (None: every one). `delay`
    hangs that long first (to simulate timeouts); status 200 means "delay only, then serve".
    """

    fault_id: int
    status: int
    path_regex: str
    method: str = "GET"
    tenant_id: str | None = None
    times: int | None = None
    after: int = 0
    retry_after: float | None = None
    delay: float | None = None
    code: str | None = None
    message: str | None = None
    in_batch: bool | None = None  # only $batch items (True), only whole requests (False), or both
    matched: int = 0
    fired: int = 0
    pattern: re.Pattern[str] | None = None

    def as_dict(self) -> dict[str, Any]:
        """JSON view for /_demo/faults."""
        return {
            "id": self.fault_id,
            "status": self.status,
            "pathRegex": self.path_regex,
            "method": self.method,
            "tenantId": self.tenant_id,
            "times": self.times,
            "after": self.after,
            "retryAfter": self.retry_after,
            "delay": self.delay,
            "code": self.code,
            "message": self.message,
            "matched": self.matched,
            "fired": self.fired,
        }


class RequestRecord(msgspec.Struct, frozen=True, kw_only=True):
    """One logged request; $batch items are logged too, with in_batch=True."""

    timestamp: float
    tenant_id: str | None
    method: str
    path: str
    query: str
    status: int
    kind: str
    in_batch: bool = False
    duration_ms: float = 0.0


@dataclass(slots=True)
class _RateWindow:
    started: float
    used: int = 0


# --------------------------------------------------------------------------------------------
# The server
# --------------------------------------------------------------------------------------------

_LOG_LIMIT = 500_000
_FREEZE_THRESHOLD = 20_000  # directory objects; below that a full GC pass is cheap anyway
_freeze_lock = threading.Lock()
_freeze_holders = 0


def _hold_gc_freeze() -> None:
    """Freeze the GC heap; nested holders share one freeze."""
    global _freeze_holders
    with _freeze_lock:
        gc.collect()
        gc.freeze()
        _freeze_holders += 1


def _release_gc_freeze() -> None:
    """Unfreeze when the last holder lets go."""
    global _freeze_holders
    with _freeze_lock:
        _freeze_holders -= 1
        if _freeze_holders == 0:
            gc.unfreeze()


class DemoGraphServer:
    """Graph v1.0 look-alike over demo tenants; run it in a background thread or in your loop.

    Tenants are chosen by the bearer token `demo.<tenantId>`. Knob methods are thread-safe.
    `strict_advanced_queries` makes OData casts and $filter/$search/$orderby on member links
    require ConsistencyLevel: eventual and $count=true, as the reference pages say.
    `prewarm` builds every object's JSON once at start and freezes the garbage collector's view
    of the heap until stop(), so a 100,000-user tenant is served without GC pauses.
    """

    def __init__(
        self,
        tenants: Iterable[Tenant],
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        strict_advanced_queries: bool = True,
        prewarm: bool = True,
    ) -> None:
        self._tenants: dict[str, Tenant] = {tenant.tenant_id.lower(): tenant for tenant in tenants}
        self.host = host
        self._requested_port = port
        self.port: int | None = None
        self.strict_advanced_queries = strict_advanced_queries
        self.prewarm = prewarm
        self._gc_frozen = False
        self._lock = threading.Lock()
        self._latency = 0.0
        self._faults: list[Fault] = []
        self._next_fault_id = 1
        self._rate_limit: tuple[int, float, str | None] | None = None
        self._rate_path: re.Pattern[str] | None = None
        self._rate_windows: dict[str, _RateWindow] = {}
        self._log: collections.deque[RequestRecord] = collections.deque(maxlen=_LOG_LIMIT)
        self._wire_caches: dict[str, _WireCache] = {tenant_id: _WireCache() for tenant_id in self._tenants}
        self._list_cache: collections.OrderedDict[tuple[Any, ...], list[str]] = collections.OrderedDict()
        self._delta_cache: collections.OrderedDict[tuple[Any, ...], list[dict[str, Any]]] = (
            collections.OrderedDict()
        )
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._runner: web.AppRunner | None = None

    # ------------------------------------------------------------------ lifecycle

    @property
    def root_url(self) -> str:
        """http://HOST:PORT (no version)."""
        if self.port is None:
            raise RuntimeError("the server is not listening yet")
        return f"http://{self.host}:{self.port}"

    @property
    def base_url(self) -> str:
        """The Graph base URL clients use: http://HOST:PORT/v1.0."""
        return f"{self.root_url}/{API_VERSION}"

    def make_app(self) -> web.Application:
        """The aiohttp application (Graph under /v1.0, controls under /_demo)."""
        app = web.Application(client_max_size=16 * 1024 * 1024)
        self._control_routes(app)
        app.router.add_route("*", f"/{API_VERSION}/{{tail:.*}}", self._graph_entry)
        return app

    def warm(self) -> None:
        """Build every object's wire JSON now; for big tenants also freeze the GC heap (until stop)."""
        for tenant_id, tenant in self._tenants.items():
            cache = self._wire_caches[tenant_id]
            collections_of_objects: tuple[Mapping[str, DirectoryObject], ...] = (
                tenant.users,
                tenant.groups,
                tenant.devices,
                tenant.org_contacts,
                tenant.service_principals,
            )
            for objects in collections_of_objects:
                for obj in list(objects.values()):
                    cache.full(obj)
        object_count = sum(
            len(objects)
            for tenant in self._tenants.values()
            for objects in (tenant.users, tenant.groups, tenant.devices, tenant.org_contacts)
        )
        if object_count >= _FREEZE_THRESHOLD:
            # Millions of long-lived dicts make every full collection slow (~0.3 s at 100k users);
            # freezing moves them out of the collector's sight.
            _hold_gc_freeze()
            self._gc_frozen = True

    async def start_async(self) -> None:
        """Start listening inside the running event loop."""
        if self.prewarm and not self._gc_frozen:
            self.warm()
        self._runner = web.AppRunner(self.make_app(), access_log=None, shutdown_timeout=1.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self._requested_port)
        await site.start()
        server = site._server  # aiohttp exposes the bound port only through the asyncio server
        sockets = getattr(server, "sockets", None) or []
        self.port = sockets[0].getsockname()[1] if sockets else self._requested_port

    async def stop_async(self) -> None:
        """Stop listening (inside the loop that started it)."""
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        if self._gc_frozen:
            _release_gc_freeze()
            self._gc_frozen = False

    async def serve_forever(self) -> None:
        """Start in the running loop and serve until cancelled."""
        await self.start_async()
        try:
            await asyncio.Event().wait()
        finally:
            await self.stop_async()

    def start(self) -> DemoGraphServer:
        """Run the server in a background thread with its own event loop; returns once listening."""
        if self._thread is not None:
            return self
        ready = threading.Event()
        failure: list[BaseException] = []

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            asyncio.set_event_loop(loop)
            try:
                loop.run_until_complete(self.start_async())
            except BaseException as error:  # surfaced to the caller of start()
                failure.append(error)
                ready.set()
                loop.close()
                return
            ready.set()
            try:
                loop.run_forever()
            finally:
                loop.run_until_complete(self.stop_async())
                loop.close()

        self._thread = threading.Thread(target=run, name="demo-graph-server", daemon=True)
        self._thread.start()
        ready.wait()
        if failure:
            self._thread = None
            raise failure[0]
        return self

    def stop(self) -> None:
        """Stop the background server started by start()."""
        if self._thread is None or self._loop is None:
            return
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._thread = None
        self._loop = None

    def __enter__(self) -> DemoGraphServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # -------------------------------------------------------------------- tenants

    def tenants(self) -> dict[str, Tenant]:
        """The served tenants by tenant id; mutate them via Tenant methods and the server sees it."""
        return {tenant.tenant_id: tenant for tenant in self._tenants.values()}

    def tenant(self, tenant_id: str) -> Tenant:
        """One served tenant (KeyError if unknown)."""
        return self._tenants[tenant_id.lower()]

    @staticmethod
    def token_for(tenant_id: str) -> str:
        """The bearer token the `demo` credential sends for a tenant."""
        return f"{TOKEN_PREFIX}{tenant_id}"

    # ---------------------------------------------------------------------- knobs

    @property
    def latency(self) -> float:
        """Seconds every HTTP request waits before it is handled."""
        return self._latency

    def set_latency(self, seconds: float) -> None:
        """Add this many seconds (asyncio.sleep, so requests still overlap) to every HTTP request."""
        self._latency = max(0.0, float(seconds))

    def add_fault(
        self,
        status: int,
        path_regex: str,
        method: str = "GET",
        tenant_id: str | None = None,
        times: int | None = None,
        after: int = 0,
        retry_after: float | None = None,
        delay: float | None = None,
        code: str | None = None,
        message: str | None = None,
        in_batch: bool | None = None,
    ) -> int:
        """Make matching requests fail with `status` (see `Fault`); returns the fault id.

        `path_regex` is searched in the path relative to /v1.0 (e.g. "/groups/[^/]+/transitiveMembers"),
        without the query string; $batch items are matched by their own relative URL. `method` "*"
        matches any method.
        """
        with self._lock:
            fault = Fault(
                fault_id=self._next_fault_id,
                status=status,
                path_regex=path_regex,
                method=method.upper(),
                tenant_id=tenant_id.lower() if tenant_id else None,
                times=times,
                after=after,
                retry_after=retry_after,
                delay=delay,
                code=code,
                message=message,
                in_batch=in_batch,
                pattern=re.compile(path_regex),
            )
            self._next_fault_id += 1
            self._faults.append(fault)
            return fault.fault_id

    def remove_fault(self, fault_id: int) -> bool:
        """Remove one fault; False if there was none with that id."""
        with self._lock:
            before = len(self._faults)
            self._faults = [fault for fault in self._faults if fault.fault_id != fault_id]
            return len(self._faults) != before

    def clear_faults(self) -> None:
        """Remove every fault."""
        with self._lock:
            self._faults.clear()

    def faults(self) -> list[dict[str, Any]]:
        """The faults with their match/fire counters."""
        with self._lock:
            return [fault.as_dict() for fault in self._faults]

    def set_rate_limit(
        self, requests: int, per_seconds: float, tenant_id: str | None = None, path_regex: str | None = None
    ) -> None:
        """Allow `requests` calls per `per_seconds` window per tenant (or just `tenant_id`); then 429.

        `path_regex` limits the budget to matching paths: Graph throttles the directory
        (users, groups) and Exchange (mailboxSettings) separately.
        """
        with self._lock:
            self._rate_limit = (int(requests), float(per_seconds), tenant_id.lower() if tenant_id else None)
            self._rate_path = re.compile(path_regex) if path_regex else None
            self._rate_windows.clear()

    def clear_rate_limit(self) -> None:
        """Remove the rate limit."""
        with self._lock:
            self._rate_limit = None
            self._rate_windows.clear()

    def request_log(
        self, kind: str | None = None, tenant_id: str | None = None, in_batch: bool | None = None
    ) -> list[RequestRecord]:
        """Logged requests, oldest first, optionally filtered."""
        with self._lock:
            records = list(self._log)
        return [
            record
            for record in records
            if (kind is None or record.kind == kind)
            and (tenant_id is None or (record.tenant_id or "").lower() == tenant_id.lower())
            and (in_batch is None or record.in_batch == in_batch)
        ]

    def request_counts(self, tenant_id: str | None = None, in_batch: bool | None = None) -> dict[str, int]:
        """Requests per kind ("users.list", "groups.transitiveMembers", "batch", "mailboxSettings", ...)."""
        counts: collections.Counter[str] = collections.Counter(
            record.kind for record in self.request_log(None, tenant_id, in_batch)
        )
        return dict(sorted(counts.items()))

    def reset_log(self) -> None:
        """Forget logged requests."""
        with self._lock:
            self._log.clear()

    def reset(self) -> None:
        """Clear faults, latency, rate limit and the request log."""
        self.clear_faults()
        self.clear_rate_limit()
        self.set_latency(0.0)
        self.reset_log()

    # ------------------------------------------------------------- HTTP: Graph side

    def _authenticate(self, authorization: str | None) -> Tenant | GraphError:
        if not authorization:
            return GraphError(401, "InvalidAuthenticationToken", "Access token is empty.")
        scheme, _, token = authorization.partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token.startswith(TOKEN_PREFIX):
            return GraphError(
                401, "InvalidAuthenticationToken", "Access token validation failure: the token is malformed."
            )
        tenant = self._tenants.get(token[len(TOKEN_PREFIX) :].lower())
        if tenant is None:
            return GraphError(
                401, "InvalidAuthenticationToken", "Access token validation failure: unknown tenant."
            )
        return tenant

    async def _graph_entry(self, request: web.Request) -> web.StreamResponse:
        started = time.perf_counter()
        if self._latency:
            await asyncio.sleep(self._latency)
        call = Call(
            method=request.method.upper(),
            path="/" + request.match_info["tail"],
            query=_normalize_query(request.query.items()),
            headers=request.headers,
            base_url=f"{request.scheme}://{request.host}/{API_VERSION}",
            client_request_id=request.headers.get("client-request-id") or str(uuid.uuid4()),
        )
        authenticated = self._authenticate(request.headers.get("Authorization"))
        if isinstance(authenticated, GraphError):
            call.kind = "unauthenticated"
            reply = _error_reply(authenticated, call.client_request_id)
        else:
            call.tenant = authenticated
            if call.path.rstrip("/").lower() == "/$batch":
                call.kind = "batch"
                reply = await self._run_batch(call, await request.read())
            else:
                reply = await self._process(call)
        response = self._to_web_response(reply, call.client_request_id)
        self._record(call, reply.status, request.query_string, started)
        return response

    @staticmethod
    def _to_web_response(reply: Reply, client_request_id: str) -> web.Response:
        headers = {
            "client-request-id": client_request_id,
            "OData-Version": "4.0",
            "Content-Type": reply.content_type,
        }
        headers.setdefault("request-id", str(uuid.uuid4()))
        headers.update(reply.headers)
        body = reply.text.encode() if reply.text is not None else msgspec.json.encode(reply.payload)
        return web.Response(status=reply.status, body=body, headers=headers)

    def _record(self, call: Call, status: int, query: str, started: float) -> None:
        record = RequestRecord(
            timestamp=time.time(),
            tenant_id=call.tenant.tenant_id if call.tenant else None,
            method=call.method,
            path=call.path,
            query=query,
            status=status,
            kind=call.kind,
            in_batch=call.in_batch,
            duration_ms=round((time.perf_counter() - started) * 1000, 3),
        )
        with self._lock:
            self._log.append(record)

    def _check_rate_limit(self, call: Call) -> GraphError | None:
        with self._lock:
            if self._rate_limit is None or call.tenant is None:
                return None
            allowed, window_seconds, only_tenant = self._rate_limit
            tenant_id = call.tenant.tenant_id.lower()
            if only_tenant is not None and only_tenant != tenant_id:
                return None
            if self._rate_path is not None and not self._rate_path.search(call.path):
                return None
            now = time.monotonic()
            window = self._rate_windows.get(tenant_id)
            if window is None or now - window.started >= window_seconds:
                window = _RateWindow(started=now)
                self._rate_windows[tenant_id] = window
            if window.used >= allowed:
                wait = window.started + window_seconds - now
                return GraphError(
                    429,
                    "TooManyRequests",
                    "Too many requests for this application and tenant; retry later.",
                    retry_after=max(1.0, wait),
                )
            window.used += 1
            return None

    def _match_fault(self, call: Call) -> Fault | None:
        with self._lock:
            tenant_id = call.tenant.tenant_id.lower() if call.tenant else None
            for fault in self._faults:
                if fault.method not in ("*", call.method):
                    continue
                if fault.tenant_id is not None and fault.tenant_id != tenant_id:
                    continue
                if fault.times is not None and fault.fired >= fault.times:
                    continue
                if fault.pattern is None or not fault.pattern.search(call.path):
                    continue
                if fault.in_batch is not None and fault.in_batch != call.in_batch:
                    continue
                fault.matched += 1
                if fault.matched <= fault.after:
                    continue
                fault.fired += 1
                return fault
        return None

    async def _process(self, call: Call) -> Reply:
        """Rate limit, faults, then the route handler; every error comes back in Graph's shape."""
        try:
            kind, handler = self._route(call)
            call.kind = kind
            throttled = self._check_rate_limit(call)
            if throttled is not None:
                raise throttled
            fault = self._match_fault(call)
            if fault is not None:
                if fault.delay:
                    await asyncio.sleep(fault.delay)
                if fault.status >= 300:
                    raise GraphError(fault.status, fault.code, fault.message, retry_after=fault.retry_after)
            assert call.tenant is not None
            with call.tenant.lock:  # handlers are short and synchronous; mutations wait for them
                reply = handler()
        except GraphError as error:
            return _error_reply(error, call.client_request_id)
        reply.headers.setdefault("request-id", str(uuid.uuid4()))
        return reply

    # ----------------------------------------------------------------------- batch

    async def _run_batch(self, envelope: Call, body: bytes) -> Reply:
        if envelope.method != "POST":
            return _error_reply(GraphError(405), envelope.client_request_id)
        fault = self._match_fault(envelope)
        if fault is not None:
            if fault.delay:
                await asyncio.sleep(fault.delay)
            if fault.status >= 300:
                return _error_reply(
                    GraphError(fault.status, fault.code, fault.message, retry_after=fault.retry_after),
                    envelope.client_request_id,
                )
        try:
            items = self._parse_batch(body)
        except GraphError as error:
            return _error_reply(error, envelope.client_request_id)

        async def run(item: dict[str, Any]) -> dict[str, Any]:
            return await self._run_batch_item(envelope, item)

        if any(item.get("dependsOn") for item in items):
            responses: list[dict[str, Any]] = []
            status_by_id: dict[str, int] = {}
            for item in items:
                depends_on = [str(dep).lower() for dep in item.get("dependsOn") or ()]
                if any(status_by_id.get(dep, 424) >= 400 for dep in depends_on):
                    failed = _error_reply(
                        GraphError(424, "BadRequest", "A request this one depends on failed."),
                        envelope.client_request_id,
                    )
                    response = {
                        "id": item["id"],
                        "status": 424,
                        "headers": {"Content-Type": JSON_CONTENT_TYPE},
                        "body": failed.payload,
                    }
                else:
                    response = await run(item)
                status_by_id[str(item["id"]).lower()] = response["status"]
                responses.append(response)
        else:
            responses = list(await asyncio.gather(*(run(item) for item in items)))
        return Reply(200, {"responses": responses}, headers={"Content-Type": "application/json"})

    @staticmethod
    def _parse_batch(body: bytes) -> list[dict[str, Any]]:
        invalid = GraphError(400, "BadRequest", "Invalid batch payload format.")
        try:
            document = msgspec.json.decode(body)
        except msgspec.DecodeError:
            raise invalid from None
        if not isinstance(document, dict) or not isinstance(document.get("requests"), list):
            raise invalid
        items: list[dict[str, Any]] = document["requests"]
        if not items:
            raise invalid
        if len(items) > MAX_BATCH_REQUESTS:
            raise GraphError(
                400,
                "BadRequest",
                f"The batch holds {len(items)} requests; at most {MAX_BATCH_REQUESTS} are allowed.",
            )
        seen: set[str] = set()
        for item in items:
            if not isinstance(item, dict):
                raise invalid
            request_id, method, url = item.get("id"), item.get("method"), item.get("url")
            if (
                not isinstance(request_id, str)
                or not request_id
                or not isinstance(method, str)
                or not isinstance(url, str)
            ):
                raise invalid
            if "://" in url:
                raise invalid  # Graph rejects the whole batch when an item's URL is absolute
            if request_id.lower() in seen:
                raise GraphError(
                    400, "BadRequest", f"The batch has more than one request with id '{request_id}'."
                )
            seen.add(request_id.lower())
            headers = item.get("headers")
            if headers is not None and not isinstance(headers, dict):
                raise invalid
        return items

    async def _run_batch_item(self, envelope: Call, item: dict[str, Any]) -> dict[str, Any]:
        started = time.perf_counter()
        raw_url: str = item["url"]
        split = urlsplit(raw_url if raw_url.startswith("/") else "/" + raw_url)
        headers = {str(name).lower(): str(value) for name, value in (item.get("headers") or {}).items()}
        call = Call(
            method=str(item["method"]).upper(),
            path=unquote(split.path),
            query=_normalize_query(parse_qsl(split.query, keep_blank_values=True)),
            headers=headers,
            base_url=envelope.base_url,
            client_request_id=envelope.client_request_id,
            tenant=envelope.tenant,
            in_batch=True,
        )
        first_segment = call.path.strip("/").split("/", 1)[0]
        if first_segment.lower() in ("v1.0", "beta"):
            # The URL must be relative to the version root; a version segment is just an unknown resource.
            reply = _error_reply(
                GraphError(400, "BadRequest", f"Resource not found for the segment '{first_segment}'."),
                call.client_request_id,
            )
            call.kind = "unknown"
        else:
            reply = await self._process(call)
        self._record(call, reply.status, split.query, started)
        response_headers = {"Content-Type": reply.content_type}
        response_headers.update(
            {
                name: value
                for name, value in reply.headers.items()
                if name.lower() not in ("request-id", "client-request-id")
            }
        )
        if reply.text is not None:
            # Graph returns a non-JSON sub-response body (like a $count) base64-encoded in a batch.
            body: Any = base64.b64encode(reply.text.encode()).decode()
        else:
            body = reply.payload
        return {"id": item["id"], "status": reply.status, "headers": response_headers, "body": body}

    # ---------------------------------------------------------------------- routing

    def _route(self, call: Call) -> tuple[str, Callable[[], Reply]]:
        segments = [segment for segment in call.path.split("/") if segment]
        lowered = [segment.lower() for segment in segments]
        if call.method != "GET":
            return "unsupported", _throw(GraphError(405))
        if not segments:
            return "unknown", _throw(GraphError(400, "BadRequest", "Resource not found for the segment ''."))
        root = lowered[0]
        if root == "users":
            return self._route_users(call, segments, lowered)
        if root == "groups":
            return self._route_groups(call, segments, lowered)
        return "unknown", _throw(
            GraphError(400, "BadRequest", f"Resource not found for the segment '{segments[0]}'.")
        )

    @staticmethod
    def _is_delta(segment: str) -> bool:
        return segment in ("delta", "delta()", "microsoft.graph.delta", "microsoft.graph.delta()")

    def _route_users(
        self, call: Call, segments: list[str], lowered: list[str]
    ) -> tuple[str, Callable[[], Reply]]:
        if len(segments) == 1:
            return "users.list", lambda: self._list_users(call)
        if len(segments) == 2 and lowered[1] == "$count":
            return "users.count", lambda: self._count_users(call)
        if len(segments) == 2 and self._is_delta(lowered[1]):
            return "users.delta", lambda: self._delta(call, "user")
        user_key = segments[1]
        if len(segments) == 2:
            return "users.get", lambda: self._get_user(call, user_key)
        if lowered[2] == "mailboxsettings" and len(segments) <= 4:
            single = segments[3] if len(segments) == 4 else None
            return "mailboxSettings", lambda: self._mailbox_settings(call, user_key, single)
        if lowered[2] in ("memberof", "transitivememberof"):
            transitive = lowered[2] == "transitivememberof"
            kind = "users.transitiveMemberOf" if transitive else "users.memberOf"
            rest = segments[3:]
            return self._link_route(
                call,
                kind,
                rest,
                lambda: self._find_user(call, user_key),
                lambda: self._member_of_ids(call, user_key, transitive),
                f"users/{user_key}/{segments[2]}",
            )
        return "unknown", _throw(
            GraphError(400, "BadRequest", f"Resource not found for the segment '{segments[2]}'.")
        )

    def _route_groups(
        self, call: Call, segments: list[str], lowered: list[str]
    ) -> tuple[str, Callable[[], Reply]]:
        if len(segments) == 1:
            return "groups.list", lambda: self._list_groups(call)
        if len(segments) == 2 and lowered[1] == "$count":
            return "groups.count", lambda: self._count_groups(call)
        if len(segments) == 2 and self._is_delta(lowered[1]):
            return "groups.delta", lambda: self._delta(call, "group")
        group_id = segments[1]
        if len(segments) == 2:
            return "groups.get", lambda: self._get_group(call, group_id)
        if lowered[2] in ("members", "transitivemembers"):
            transitive = lowered[2] == "transitivemembers"
            kind = "groups.transitiveMembers" if transitive else "groups.members"
            return self._link_route(
                call,
                kind,
                segments[3:],
                lambda: self._find_group(call, group_id),
                lambda: self._member_ids(call, group_id, transitive),
                f"groups/{group_id}/{segments[2]}",
            )
        return "unknown", _throw(
            GraphError(400, "BadRequest", f"Resource not found for the segment '{segments[2]}'.")
        )

    def _link_route(
        self,
        call: Call,
        kind: str,
        rest: list[str],
        validate: Callable[[], object],
        ids: Callable[[], list[str]],
        cache_key: str,
    ) -> tuple[str, Callable[[], Reply]]:
        """members / transitiveMembers / memberOf with an optional cast and an optional /$count."""
        cast: _TypeInfo | None = None
        cast_given = False
        if rest and rest[0].lower() != "$count":
            if rest[0].lower() not in _CASTS:
                segment = rest[0]
                return kind, _throw(
                    GraphError(400, "BadRequest", f"Resource not found for the segment '{segment}'.")
                )
            cast, cast_given = _CASTS[rest[0].lower()], True
            rest = rest[1:]
        count_only = bool(rest) and rest[0].lower() == "$count"
        if count_only:
            rest = rest[1:]
        if rest:
            segment = rest[0]
            return kind, _throw(
                GraphError(400, "BadRequest", f"Resource not found for the segment '{segment}'.")
            )
        full_kind = kind + (".count" if count_only else "")
        return full_kind, lambda: self._list_link(
            call, validate, ids, cast, cast_given, count_only, cache_key
        )

    # -------------------------------------------------------------------- helpers

    def _wire(self, call: Call, obj: DirectoryObject) -> dict[str, Any]:
        assert call.tenant is not None
        return self._wire_caches[call.tenant.tenant_id.lower()].full(obj)

    def _cached_ids(self, key: tuple[Any, ...], build: Callable[[], list[str]]) -> list[str]:
        with self._lock:
            cached = self._list_cache.get(key)
            if cached is not None:
                self._list_cache.move_to_end(key)
                return cached
        ids = build()
        with self._lock:
            self._list_cache[key] = ids
            while len(self._list_cache) > 64:
                self._list_cache.popitem(last=False)
        return ids

    def _select_ids(
        self,
        call: Call,
        info: _TypeInfo,
        ids: Callable[[], list[str]],
        cache_key: str,
        *,
        allow_orderby: tuple[str, ...],
        link: bool,
    ) -> list[str]:
        """Apply $filter, $search and $orderby to an id list (cached per tenant revision)."""
        tenant = call.tenant
        assert tenant is not None
        filter_text = call.option("$filter").strip()
        search_text = call.option("$search").strip()
        orderby_text = call.option("$orderby").strip()
        if link and self.strict_advanced_queries and (filter_text or orderby_text) and not call.advanced:
            raise GraphError(
                400,
                "Request_UnsupportedQuery",
                "$filter and $orderby on this relationship need the advanced query parameters. "
                + _ADVANCED_QUERY_HINT,
            )
        predicate = _compile_filter(call, info, filter_text) if filter_text else None
        search = _compile_search(call, info, search_text) if search_text else None
        order_name: str | None = None
        descending = False
        if orderby_text:
            name, _, direction = orderby_text.partition(" ")
            order_name = info.by_lower_name.get(name.lower())
            if order_name not in allow_orderby:
                raise GraphError(400, "Request_UnsupportedQuery", "Sorting not supported for current query.")
            descending = direction.strip().lower() == "desc"
            if filter_text and not call.advanced:
                raise GraphError(
                    400,
                    "Request_UnsupportedQuery",
                    "Using $filter and $orderby together needs the advanced query parameters. "
                    + _ADVANCED_QUERY_HINT,
                )
        if predicate is None and search is None and order_name is None:
            return self._cached_ids((tenant.tenant_id, tenant.revision, cache_key), ids)

        def build() -> list[str]:
            selected: list[str] = []
            for object_id in ids():
                obj = tenant.get_object(object_id)
                if obj is None:
                    continue
                wire = self._wire(call, obj)
                if predicate is not None and not predicate(wire):
                    continue
                if search is not None and not search(wire):
                    continue
                selected.append(object_id)
            if order_name is not None:

                def sort_key(object_id: str) -> str:
                    obj = tenant.get_object(object_id)
                    value = self._wire(call, obj).get(order_name or "") if obj else None
                    return (value or "").lower() if isinstance(value, str) else str(value or "")

                selected.sort(key=sort_key, reverse=descending)
            return selected

        key = (
            tenant.tenant_id,
            tenant.revision,
            cache_key,
            filter_text,
            search_text,
            orderby_text,
            call.advanced,
        )
        return self._cached_ids(key, build)

    def _page(
        self, call: Call, ids: list[str], render: Callable[[list[str]], list[dict[str, Any]]], context: str
    ) -> Reply:
        top = _parse_top(call)
        offset = 0
        token = call.option("$skiptoken")
        if token:
            offset = int(_decode_token(token).get("offset", 0))
        page_ids = ids[offset : offset + top]
        payload: dict[str, Any] = {"@odata.context": context}
        if call.count_requested and call.eventual:
            payload["@odata.count"] = len(ids)
        if offset + top < len(ids):
            payload["@odata.nextLink"] = _link(call, {"$skiptoken": _encode_token({"offset": offset + top})})
        payload["value"] = render(page_ids)
        return Reply(200, payload)

    def _require_count_segment(self, call: Call) -> None:
        if not call.eventual:
            raise GraphError(
                400,
                "Request_BadRequest",
                "$count is not currently supported without the ConsistencyLevel: eventual header.",
            )

    # ------------------------------------------------------------------ handlers

    def _list_users(self, call: Call) -> Reply:
        tenant = call.tenant
        assert tenant is not None
        ids = self._select_ids(
            call,
            USER_TYPE,
            lambda: list(tenant.users),
            "users",
            allow_orderby=("displayName", "userPrincipalName"),
            link=False,
        )
        select = _canonical_select(_parse_select(call), USER_TYPE)
        users = tenant.users
        cache = self._wire_caches[tenant.tenant_id.lower()]

        def render(page_ids: list[str]) -> list[dict[str, Any]]:
            out = []
            for user_id in page_ids:
                user = users.get(user_id)
                if user is not None:
                    out.append(_project(cache.full(user), USER_TYPE, select, typed=True))
            return out

        return self._page(call, ids, render, _context_url(call, "users", select))

    def _count_users(self, call: Call) -> Reply:
        self._require_count_segment(call)
        tenant = call.tenant
        assert tenant is not None
        ids = self._select_ids(
            call, USER_TYPE, lambda: list(tenant.users), "users", allow_orderby=(), link=False
        )
        return Reply(200, text=str(len(ids)))

    def _list_groups(self, call: Call) -> Reply:
        tenant = call.tenant
        assert tenant is not None
        ids = self._select_ids(
            call,
            GROUP_TYPE,
            lambda: list(tenant.groups),
            "groups",
            allow_orderby=("displayName",),
            link=False,
        )
        select = _canonical_select(_parse_select(call), GROUP_TYPE)
        groups = tenant.groups
        cache = self._wire_caches[tenant.tenant_id.lower()]

        def render(page_ids: list[str]) -> list[dict[str, Any]]:
            return [
                _project(cache.full(groups[group_id]), GROUP_TYPE, select, typed=True)
                for group_id in page_ids
                if group_id in groups
            ]

        return self._page(call, ids, render, _context_url(call, "groups", select))

    def _count_groups(self, call: Call) -> Reply:
        self._require_count_segment(call)
        tenant = call.tenant
        assert tenant is not None
        ids = self._select_ids(
            call, GROUP_TYPE, lambda: list(tenant.groups), "groups", allow_orderby=(), link=False
        )
        return Reply(200, text=str(len(ids)))

    def _find_user(self, call: Call, key: str) -> User:
        tenant = call.tenant
        assert tenant is not None
        user = tenant.users.get(key) or tenant.users.get(key.lower())
        if user is None and "@" in key:
            user = tenant.user_by_principal_name(key)
        if user is None:
            raise GraphError(
                404,
                "Request_ResourceNotFound",
                _not_found_message(key),
            )
        return user

    def _find_group(self, call: Call, group_id: str) -> Group:
        tenant = call.tenant
        assert tenant is not None
        if not _GUID.match(group_id):
            raise GraphError(400, "Request_BadRequest", f"Invalid object identifier '{group_id}'.")
        group = tenant.groups.get(group_id.lower())
        if group is None:
            raise GraphError(
                404,
                "Request_ResourceNotFound",
                _not_found_message(group_id),
            )
        return group

    def _get_user(self, call: Call, key: str) -> Reply:
        user = self._find_user(call, key)
        select = _canonical_select(_parse_select(call), USER_TYPE)
        body = {"@odata.context": _context_url(call, "users", select, "/$entity")}
        body.update(_project(self._wire(call, user), USER_TYPE, select, typed=True))
        return Reply(200, body)

    def _get_group(self, call: Call, group_id: str) -> Reply:
        group = self._find_group(call, group_id)
        select = _canonical_select(_parse_select(call), GROUP_TYPE)
        body = {"@odata.context": _context_url(call, "groups", select, "/$entity")}
        body.update(_project(self._wire(call, group), GROUP_TYPE, select, typed=True))
        return Reply(200, body)

    def _mailbox_settings(self, call: Call, key: str, single: str | None) -> Reply:
        user = self._find_user(call, key)
        if user.user_purpose is None:
            # No Exchange Online mailbox (unlicensed, guest): Exchange answers 404 with this code.
            raise GraphError(
                404,
                "MailboxNotEnabledForRESTAPI",
                "The mailbox is either inactive, soft-deleted, or is hosted on-premise.",
            )
        settings: dict[str, Any] = {
            "archiveFolder": None,
            "timeZone": "Pacific Standard Time",
            "dateFormat": "M/d/yyyy",
            "timeFormat": "h:mm tt",
            "delegateMeetingMessageDeliveryOptions": "sendToDelegateOutlookOnly",
            "userPurpose": user.user_purpose,
            "language": {
                "locale": user.preferred_language or "en-US",
                "displayName": "English (United States)",
            },
            "automaticRepliesSetting": {"status": "disabled", "externalAudience": "all"},
            "workingHours": {
                "daysOfWeek": ["monday", "tuesday", "wednesday", "thursday", "friday"],
                "startTime": "08:00:00.0000000",
                "endTime": "17:00:00.0000000",
                "timeZone": {"name": "Pacific Standard Time"},
            },
        }
        context_base = f"{call.base_url}/$metadata#users('{quote(key, safe='@')}')/mailboxSettings"
        if single is not None:
            name = {name.lower(): name for name in settings}.get(single.lower())
            if name is None:
                raise GraphError(400, "BadRequest", f"Resource not found for the segment '{single}'.")
            value = settings[name]
            body = {"@odata.context": f"{context_base}/{name}"}
            body.update(value if isinstance(value, dict) else {"value": value})
            return Reply(200, body)
        select = _parse_select(call)
        if select:
            by_lower = {name.lower(): name for name in settings}
            chosen = [by_lower[name.lower()] for name in select if name.lower() in by_lower]
            body = {"@odata.context": f"{context_base}({','.join(chosen)})"}
            body.update({name: settings[name] for name in chosen})
            return Reply(200, body)
        body = {"@odata.context": context_base}
        body.update(settings)
        return Reply(200, body)

    def _member_ids(self, call: Call, group_id: str, transitive: bool) -> list[str]:
        tenant = call.tenant
        assert tenant is not None
        group = self._find_group(call, group_id)
        if transitive:
            return list(tenant.transitive_member_ids(group.id))
        return tenant.direct_member_ids(group.id)

    def _member_of_ids(self, call: Call, key: str, transitive: bool) -> list[str]:
        tenant = call.tenant
        assert tenant is not None
        user = self._find_user(call, key)
        return tenant.transitive_member_of(user.id) if transitive else tenant.member_of(user.id)

    def _list_link(
        self,
        call: Call,
        validate: Callable[[], object],
        ids: Callable[[], list[str]],
        cast: _TypeInfo | None,
        cast_given: bool,
        count_only: bool,
        cache_key: str,
    ) -> Reply:
        tenant = call.tenant
        assert tenant is not None
        validate()  # the owner id first (400/404), as Graph checks it before query options
        if count_only:
            self._require_count_segment(call)
        elif cast_given and self.strict_advanced_queries and not call.advanced:
            raise GraphError(
                400,
                "Request_UnsupportedQuery",
                "An OData cast on this relationship needs the advanced query parameters. "
                + _ADVANCED_QUERY_HINT,
            )
        objects_of_type: Mapping[str, DirectoryObject] | None = None
        if cast is not None:
            by_type: dict[_TypeInfo, Mapping[str, DirectoryObject]] = {
                USER_TYPE: tenant.users,
                GROUP_TYPE: tenant.groups,
                DEVICE_TYPE: tenant.devices,
                CONTACT_TYPE: tenant.org_contacts,
                SERVICE_PRINCIPAL_TYPE: tenant.service_principals,
            }
            objects_of_type = by_type[cast]

        def member_ids() -> list[str]:
            found = ids()
            if not cast_given:
                return found
            if objects_of_type is None:
                return []
            return [member_id for member_id in found if member_id in objects_of_type]

        info = cast or USER_TYPE
        key = f"{cache_key}/{cast.odata_type if cast else ('none' if cast_given else '*')}"
        selected_ids = self._select_ids(
            call, info, member_ids, key, allow_orderby=("displayName",), link=True
        )
        if count_only:
            return Reply(200, text=str(len(selected_ids)))
        raw_select = _parse_select(call)
        cache = self._wire_caches[tenant.tenant_id.lower()]

        if cast is not None and objects_of_type is not None:
            select = _canonical_select(raw_select, cast)
            typed_objects = objects_of_type

            def render_typed(page_ids: list[str]) -> list[dict[str, Any]]:
                out = []
                for object_id in page_ids:
                    obj = typed_objects.get(object_id)
                    if obj is not None:
                        out.append(_project(cache.full(obj), cast, select, typed=True))
                return out

            return self._page(call, selected_ids, render_typed, _context_url(call, cast.entity_set, select))

        def render_mixed(page_ids: list[str]) -> list[dict[str, Any]]:
            out = []
            for object_id in page_ids:
                obj = tenant.get_object(object_id)
                if obj is None:
                    continue
                info = _TYPE_BY_CLASS[type(obj)]
                entry = {"@odata.type": info.odata_type}
                entry.update(_project(cache.full(obj), info, raw_select, typed=False))
                out.append(entry)
            return out

        return self._page(
            call, selected_ids, render_mixed, _context_url(call, "directoryObjects", raw_select)
        )

    # ----------------------------------------------------------------------- delta

    def _delta(self, call: Call, kind: str) -> Reply:
        """users/delta and groups/delta: a full round with nextLinks, then deltaLinks with changes since."""
        tenant = call.tenant
        assert tenant is not None
        info = USER_TYPE if kind == "user" else GROUP_TYPE
        skiptoken = call.option("$skiptoken")
        deltatoken = call.option("$deltatoken")
        if deltatoken == "latest":
            # Graph's "$deltatoken=latest": no objects, just a deltaLink from now on.
            raw_select = _parse_select(call)
            names = list(raw_select) if raw_select else None
            latest = {"kind": kind, "upto": tenant.revision, "select": names}
            delta_path = f"/{info.entity_set}/delta"
            return Reply(
                200,
                {
                    "@odata.context": _context_url(call, info.entity_set, None),
                    "@odata.deltaLink": _link(
                        call, {"$deltatoken": _encode_token(latest)}, keep=False, path=delta_path
                    ),
                    "value": [],
                },
            )
        if skiptoken:
            state = _decode_token(skiptoken)
        elif deltatoken:
            previous = _decode_token(deltatoken)
            state = {
                "mode": "changes",
                "since": int(previous.get("upto", 0)),
                "upto": tenant.revision,
                "select": previous.get("select"),
                "offset": 0,
            }
        else:
            raw_select = _parse_select(call)
            selected_names = list(raw_select) if raw_select else None
            state = {
                "mode": "full",
                "since": 0,
                "upto": tenant.revision,
                "select": selected_names,
                "offset": 0,
            }
        if state.get("kind", kind) != kind:
            raise GraphError(400, "Request_BadRequest", "The paging token is not valid.")
        state["kind"] = kind
        select = tuple(state["select"]) if state.get("select") else None
        track_members = kind == "group" and (
            select is None or any(name.lower() == "members" for name in select)
        )
        property_select = tuple(name for name in select if name.lower() != "members") if select else None
        property_select = _canonical_select(property_select, info) if property_select else None

        key = (tenant.tenant_id, kind, state["mode"], state["since"], state["upto"], tuple(select or ()))
        with self._lock:
            entries = self._delta_cache.get(key)
        if entries is None:
            entries = self._delta_entries(call, kind, state, info, property_select, track_members)
            with self._lock:
                self._delta_cache[key] = entries
                while len(self._delta_cache) > 32:
                    self._delta_cache.popitem(last=False)
        offset = int(state.get("offset", 0))
        page = entries[offset : offset + DELTA_PAGE_SIZE]
        payload: dict[str, Any] = {"@odata.context": _context_url(call, info.entity_set, property_select)}
        delta_path = f"/{info.entity_set}/delta"
        if offset + DELTA_PAGE_SIZE < len(entries):
            next_state = dict(state, offset=offset + DELTA_PAGE_SIZE)
            payload["@odata.nextLink"] = _link(
                call, {"$skiptoken": _encode_token(next_state)}, keep=False, path=delta_path
            )
        else:
            delta_state = {"kind": kind, "upto": state["upto"], "select": state.get("select")}
            payload["@odata.deltaLink"] = _link(
                call, {"$deltatoken": _encode_token(delta_state)}, keep=False, path=delta_path
            )
        payload["value"] = page
        return Reply(200, payload)

    def _delta_entries(
        self,
        call: Call,
        kind: str,
        state: dict[str, Any],
        info: _TypeInfo,
        select: tuple[str, ...] | None,
        track_members: bool,
    ) -> list[dict[str, Any]]:
        tenant = call.tenant
        assert tenant is not None
        objects: Mapping[str, DirectoryObject] = tenant.users if kind == "user" else tenant.groups
        entries: list[dict[str, Any]] = []

        def member_ref(member_id: str, removed: bool = False) -> dict[str, Any]:
            obj = tenant.get_object(member_id)
            odata_type = (
                _TYPE_BY_CLASS[type(obj)].odata_type
                if obj is not None
                else "#microsoft.graph.directoryObject"
            )
            ref: dict[str, Any] = {"@odata.type": odata_type, "id": member_id}
            if removed:
                ref["@removed"] = {"reason": "deleted"}
            return ref

        def emit(object_id: str, member_refs: list[dict[str, Any]] | None) -> None:
            obj = objects.get(object_id)
            if obj is None:
                entries.append({"id": object_id, "@removed": {"reason": "changed"}})
                return
            entry = _project(self._wire(call, obj), info, select, typed=True)
            entry["id"] = object_id
            if not member_refs:
                entries.append(entry)
                return
            for start in range(0, len(member_refs), DELTA_MEMBERS_PER_ENTRY):
                chunk = dict(entry)
                chunk["members@delta"] = member_refs[start : start + DELTA_MEMBERS_PER_ENTRY]
                entries.append(chunk)

        if state["mode"] == "full":
            for object_id in list(objects):
                refs = (
                    [member_ref(member_id) for member_id in tenant.direct_member_ids(object_id)]
                    if track_members
                    else None
                )
                emit(object_id, refs)
            return entries

        changes = tenant.changes_since(int(state["since"]))
        if changes is None:
            raise GraphError(
                410, "syncStateNotFound", "The delta token has expired; start a full synchronization again."
            )
        changed_order: dict[str, None] = {}
        member_changes: dict[str, dict[str, bool]] = {}
        for change in changes:
            if change.revision > int(state["upto"]) or change.kind != kind:
                continue
            changed_order.pop(change.object_id, None)
            changed_order[change.object_id] = None
            if change.member_id is not None:
                member_changes.setdefault(change.object_id, {})[change.member_id] = change.member_added
        for object_id in changed_order:
            refs = None
            if track_members and object_id in member_changes:
                refs = [
                    member_ref(member_id, removed=not added)
                    for member_id, added in member_changes[object_id].items()
                ]
            emit(object_id, refs)
        return entries

    # --------------------------------------------------------------- HTTP: controls

    def _control_routes(self, app: web.Application) -> None:
        """Routes under /_demo (no token): requests log, reset, latency, faults, rate limit, tenants."""
        router = app.router
        router.add_get("/_demo/health", self._control_health)
        router.add_get("/_demo/requests", self._control_requests)
        router.add_delete("/_demo/requests", self._control_reset_log)
        router.add_post("/_demo/reset", self._control_reset)
        router.add_get("/_demo/latency", self._control_get_latency)
        router.add_put("/_demo/latency", self._control_set_latency)
        router.add_post("/_demo/latency", self._control_set_latency)
        router.add_get("/_demo/faults", self._control_faults)
        router.add_post("/_demo/faults", self._control_add_fault)
        router.add_delete("/_demo/faults", self._control_clear_faults)
        router.add_delete("/_demo/faults/{fault_id}", self._control_remove_fault)
        router.add_put("/_demo/rate-limit", self._control_set_rate_limit)
        router.add_post("/_demo/rate-limit", self._control_set_rate_limit)
        router.add_delete("/_demo/rate-limit", self._control_clear_rate_limit)
        router.add_get("/_demo/tenants", self._control_tenants)
        router.add_get("/_demo/tenants/{tenant_id}", self._control_tenant)
        router.add_post("/_demo/tenants/{tenant_id}/groups/{group_id}/members", self._control_add_member)
        router.add_delete(
            "/_demo/tenants/{tenant_id}/groups/{group_id}/members/{member_id}", self._control_remove_member
        )
        router.add_delete("/_demo/tenants/{tenant_id}/groups/{group_id}", self._control_delete_group)
        router.add_patch("/_demo/tenants/{tenant_id}/users/{user_id}", self._control_update_user)

    @staticmethod
    def _json(data: Any, status: int = 200) -> web.Response:
        return web.Response(status=status, body=msgspec.json.encode(data), content_type="application/json")

    @staticmethod
    async def _body(request: web.Request) -> dict[str, Any]:
        raw = await request.read()
        if not raw:
            return {}
        data = msgspec.json.decode(raw)
        if not isinstance(data, dict):
            raise web.HTTPBadRequest(text="expected a JSON object")
        # Accept camelCase and snake_case keys alike.
        return {re.sub(r"(?<!^)(?=[A-Z])", "_", key).lower(): value for key, value in data.items()}

    async def _control_health(self, request: web.Request) -> web.Response:
        return self._json({"status": "ok", "baseUrl": f"{request.scheme}://{request.host}/{API_VERSION}"})

    async def _control_requests(self, request: web.Request) -> web.Response:
        kind = request.query.get("kind")
        tenant_id = request.query.get("tenant")
        limit = int(request.query.get("limit", "500"))
        records = self.request_log(kind, tenant_id)
        in_batch_text = request.query.get("inBatch")
        in_batch = None if in_batch_text is None else in_batch_text.lower() == "true"
        return self._json(
            {
                "counts": self.request_counts(tenant_id, in_batch=in_batch),
                "total": len(records),
                "requests": [msgspec.to_builtins(record) for record in records[-limit:]] if limit > 0 else [],
            }
        )

    async def _control_reset_log(self, request: web.Request) -> web.Response:
        self.reset_log()
        return self._json({"ok": True})

    async def _control_reset(self, request: web.Request) -> web.Response:
        self.reset()
        return self._json({"ok": True})

    async def _control_get_latency(self, request: web.Request) -> web.Response:
        return self._json({"seconds": self.latency})

    async def _control_set_latency(self, request: web.Request) -> web.Response:
        body = await self._body(request)
        self.set_latency(float(body.get("seconds", 0.0)))
        return self._json({"seconds": self.latency})

    async def _control_faults(self, request: web.Request) -> web.Response:
        return self._json({"faults": self.faults()})

    async def _control_add_fault(self, request: web.Request) -> web.Response:
        body = await self._body(request)
        allowed = {
            "status",
            "path_regex",
            "method",
            "tenant_id",
            "times",
            "after",
            "retry_after",
            "delay",
            "code",
            "message",
        }
        unknown = set(body) - allowed
        if unknown or "status" not in body or "path_regex" not in body:
            raise web.HTTPBadRequest(text=f"need status and pathRegex; unknown keys: {sorted(unknown)}")
        fault_id = self.add_fault(**body)
        return self._json({"id": fault_id}, status=201)

    async def _control_clear_faults(self, request: web.Request) -> web.Response:
        self.clear_faults()
        return self._json({"ok": True})

    async def _control_remove_fault(self, request: web.Request) -> web.Response:
        removed = self.remove_fault(int(request.match_info["fault_id"]))
        return self._json({"removed": removed}, status=200 if removed else 404)

    async def _control_set_rate_limit(self, request: web.Request) -> web.Response:
        body = await self._body(request)
        self.set_rate_limit(int(body["requests"]), float(body["per_seconds"]), body.get("tenant_id"))
        return self._json({"ok": True})

    async def _control_clear_rate_limit(self, request: web.Request) -> web.Response:
        self.clear_rate_limit()
        return self._json({"ok": True})

    async def _control_tenants(self, request: web.Request) -> web.Response:
        return self._json({"tenants": [tenant.summary() for tenant in self._tenants.values()]})

    def _control_tenant_or_404(self, request: web.Request) -> Tenant:
        tenant = self._tenants.get(request.match_info["tenant_id"].lower())
        if tenant is None:
            raise web.HTTPNotFound(text="unknown tenant")
        return tenant

    async def _control_tenant(self, request: web.Request) -> web.Response:
        return self._json(self._control_tenant_or_404(request).summary())

    async def _control_add_member(self, request: web.Request) -> web.Response:
        tenant = self._control_tenant_or_404(request)
        body = await self._body(request)
        try:
            added = tenant.add_member(request.match_info["group_id"], str(body["id"]))
        except KeyError as error:
            raise web.HTTPNotFound(text=str(error)) from None
        return self._json({"added": added})

    async def _control_remove_member(self, request: web.Request) -> web.Response:
        tenant = self._control_tenant_or_404(request)
        removed = tenant.remove_member(request.match_info["group_id"], request.match_info["member_id"])
        return self._json({"removed": removed}, status=200 if removed else 404)

    async def _control_delete_group(self, request: web.Request) -> web.Response:
        tenant = self._control_tenant_or_404(request)
        deleted = tenant.delete_group(request.match_info["group_id"])
        return self._json({"deleted": deleted}, status=200 if deleted else 404)

    async def _control_update_user(self, request: web.Request) -> web.Response:
        tenant = self._control_tenant_or_404(request)
        body = await self._body(request)
        user_id = request.match_info["user_id"]
        if user_id not in tenant.users:
            raise web.HTTPNotFound(text="unknown user")
        fields = {field_info.name for field_info in msgspec.structs.fields(User)}
        unknown = set(body) - fields - {"id"}
        if unknown:
            raise web.HTTPBadRequest(text=f"unknown user fields: {sorted(unknown)}")
        body.pop("id", None)
        if "assigned_licenses" in body:
            body["assigned_licenses"] = tuple(
                AssignedLicense(
                    sku_id=str(entry.get("skuId") or entry.get("sku_id")),
                    disabled_plans=tuple(entry.get("disabledPlans") or ()),
                )
                for entry in body["assigned_licenses"]
            )
        user = tenant.update_user(user_id, **body)
        return self._json(msgspec.to_builtins(user))


def _throw(error: GraphError) -> Callable[[], Reply]:
    """A handler that raises `error` (for routes that are wrong before any work)."""

    def handler() -> Reply:
        raise error

    return handler
