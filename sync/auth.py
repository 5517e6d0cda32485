"""Who is calling, and what they may do: the one place that decides access.

The caller comes from X-MS-CLIENT-PRINCIPAL, the header App Service Authentication injects after
it has checked the sign-in (base64 JSON: `auth_typ`, `claims` as `{typ, val}` after its default
claim mapping, `name_typ`, `role_typ`; "Work with user identities in Azure App Service
authentication"). The header is believed only where it cannot be forged: behind App Service
Authentication (WEBSITE_AUTH_ENABLED), or the dev host with the demo Graph
(Settings.principal_header_trusted); the API answers 503 everywhere else.

Three kinds of caller:
- operator: the app role `Sync.Operator` AND the token's `tid` is HOME_TENANT_ID: every tenant;
- customer admin: a role of ADMIN_ROLE_IDS in `wids`: exactly the tenant whose id is their `tid`
  (registered ones; connecting it by admin consent before that);
- partner: anyone else: the tenants an operator granted them (by object id, or by a group in
  their `groups` claims).

`may()` is the one decision; every route asks it (sync.api.guarded via SyncService.authorize),
and `GET /api/tenants` filters with it. What a caller may not see answers 404, never 403, so a
stranger cannot tell a foreign tenant id from one that is not registered.
"""

from __future__ import annotations

import base64
import binascii
import enum
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import msgspec

from shared.settings import Settings
from sync.models import CallerKind
from sync.validation import is_object_id

PRINCIPAL_HEADER = "x-ms-client-principal"
MAX_PRINCIPAL_BYTES = 16 * 1024  # App Service's principal header is a few KiB at most
OPERATOR_ROLE = "Sync.Operator"
IDENTITY_PROVIDER = "aad"  # Microsoft Entra ID, as App Service names it in auth_typ
ORGANIZATIONS = "organizations"  # admin consent in whichever organization the administrator picks

_ROLE_CLAIMS = ("roles", "http://schemas.microsoft.com/ws/2008/06/identity/claims/role")
_TENANT_CLAIMS = ("http://schemas.microsoft.com/identity/claims/tenantid", "tid")
_OBJECT_ID_CLAIMS = ("http://schemas.microsoft.com/identity/claims/objectidentifier", "oid")
_UPN_CLAIMS = (
    "preferred_username",
    "upn",
    "http://schemas.xmlsoap.org/ws/2005/05/identity/claims/upn",
    "http://schemas.xmlsoap.org/ws/2005/05/identity/claims/emailaddress",
)
_NAME_CLAIMS = ("name", "http://schemas.xmlsoap.org/ws/2005/05/identity/claims/name")
_GROUP_CLAIMS = ("groups", "http://schemas.microsoft.com/ws/2008/06/identity/claims/groups")
_WIDS_CLAIMS = ("wids", "http://schemas.microsoft.com/ws/2008/06/identity/claims/wids")


class Principal(msgspec.Struct, frozen=True, kw_only=True):
    """The signed-in caller: where they come from, who they are, which roles and groups they hold."""

    kind: CallerKind
    tenant_id: str  # tid, lower-case
    object_id: str  # oid, lower-case
    name: str
    user_principal_name: str | None = None
    roles: frozenset[str] = frozenset()  # app roles of the API app
    wids: frozenset[str] = frozenset()  # directory role template ids
    groups: frozenset[str] = frozenset()  # group object ids (only when the token carries them)

    @property
    def by(self) -> str:
        """How this caller's changes are recorded: readable, and stable through renames (tid/oid)."""
        label = self.user_principal_name or self.name
        return f"{label} (tid {self.tenant_id}, oid {self.object_id})"


def read_principal(raw: str | None, settings: Settings) -> Principal | None:
    """The caller the principal header describes; None when absent, unreadable, incomplete or not
    an Entra ID sign-in. The caller of this checks first that the header may be trusted at all."""
    if not raw or len(raw) > MAX_PRINCIPAL_BYTES:
        return None
    try:
        data = json.loads(base64.b64decode(raw, validate=False))
        if not isinstance(data, dict) or data.get("auth_typ") != IDENTITY_PROVIDER:
            return None
        claims = _claims(data.get("claims"))
    except (binascii.Error, ValueError, TypeError):
        return None
    role_types = {*_ROLE_CLAIMS, *([data["role_typ"]] if isinstance(data.get("role_typ"), str) else [])}
    tenant_id = _first(claims, _TENANT_CLAIMS)
    object_id = _first(claims, _OBJECT_ID_CLAIMS)
    if not (is_object_id(tenant_id) and is_object_id(object_id)):
        return None  # without tid and oid nobody can say whose tenant this is, or who did what
    assert tenant_id is not None and object_id is not None
    upn = _first(claims, _UPN_CLAIMS)
    roles = frozenset(val for typ, val in claims if typ in role_types)
    wids = frozenset(val.lower() for typ, val in claims if typ in _WIDS_CLAIMS)
    groups = frozenset(val.lower() for typ, val in claims if typ in _GROUP_CLAIMS and is_object_id(val))
    tid = tenant_id.lower()
    if OPERATOR_ROLE in roles and settings.home_tenant_id is not None and tid == settings.home_tenant_id:
        kind = CallerKind.OPERATOR
    elif wids & settings.admin_role_ids:
        kind = CallerKind.CUSTOMER_ADMIN
    else:
        kind = CallerKind.PARTNER
    return Principal(
        kind=kind,
        tenant_id=tid,
        object_id=object_id.lower(),
        name=_first(claims, _NAME_CLAIMS) or upn or object_id,
        user_principal_name=upn,
        roles=roles,
        wids=wids,
        groups=groups,
    )


def _claims(value: Any) -> list[tuple[str, str]]:
    if not isinstance(value, list):
        raise TypeError("claims is not a list")
    found = []
    for claim in value:
        if not isinstance(claim, dict):
            raise TypeError("a claim is not an object")
        typ, val = claim.get("typ"), claim.get("val")
        if isinstance(typ, str) and isinstance(val, str):
            found.append((typ, val))
    return found


def _first(claims: list[tuple[str, str]], types: tuple[str, ...]) -> str | None:
    for wanted in types:
        for typ, val in claims:
            if typ == wanted and val:
                return val
    return None


class Need(enum.StrEnum):
    """What a route needs of its caller."""

    SIGNED_IN = "signedIn"  # anyone signed in (whoami, the tenant list, which it filters)
    TENANT = "tenant"  # act on one registered tenant (read or change)
    ONBOARD = "onboard"  # start admin consent for a tenant (connect or reconnect)
    OPERATOR = "operator"  # operator-only routes (grants)


@dataclass(frozen=True)
class Caller:
    """A principal with the tenants operators granted them (empty for operators: they need none)."""

    principal: Principal
    granted: frozenset[str] = frozenset()

    @property
    def kind(self) -> CallerKind:
        """Operator, customer admin or partner."""
        return self.principal.kind

    @property
    def by(self) -> str:
        """How this caller's changes are recorded."""
        return self.principal.by


def may(caller: Caller, need: Need, tenant_id: str | None = None, *, registered: bool = False) -> bool:
    """THE access rule: may this caller do what `need` names, on `tenant_id` (lower-case GUID, or
    `organizations` for onboarding), which is or is not `registered`?"""
    who = caller.principal
    if who.kind is CallerKind.OPERATOR:
        return True
    if need is Need.SIGNED_IN:
        return True
    if need is Need.OPERATOR or tenant_id is None:
        return False
    own = who.kind is CallerKind.CUSTOMER_ADMIN and tenant_id == who.tenant_id
    granted = tenant_id in caller.granted
    if need is Need.TENANT:
        return registered and (own or granted)
    # ONBOARD: an admin connects their own tenant; a partner may reconnect a granted, registered one.
    return own or (registered and granted)


# --- requests that change something: same origin, JSON only -----------------------------------

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


@dataclass(frozen=True)
class Refusal:
    """Why a request is refused before anything reads it."""

    status: int
    title: str
    detail: str


def cross_site_refusal(
    method: str, headers: Mapping[str, str], request_url: str, app_base_url: str | None
) -> Refusal | None:
    """Refuse a state-changing request another site's page could have sent in the caller's name.

    Browsers send `Origin` with every POST, PUT and DELETE (and `Sec-Fetch-Site`): it must be this
    app's own origin (the request's, or APP_BASE_URL's). A request with neither header is not from
    a browser page (curl, scripts, a client with its own bearer token) and carries no ambient
    cookie a page could abuse. Every such request must be `application/json`, which an HTML form
    cannot send and another site's script cannot send without a CORS preflight this app never
    answers.
    """
    if method.upper() in SAFE_METHODS:
        return None
    site = headers.get("sec-fetch-site")
    if site is not None and site.strip().lower() != "same-origin":
        return Refusal(
            403,
            "Forbidden",
            f"a {method.upper()} from another site ({site.strip()[:32]}) is refused: "
            "changes are accepted from this app's own page only",
        )
    origin = headers.get("origin")
    if origin is not None:
        own = {_origin(request_url), *([_origin(app_base_url)] if app_base_url else [])}
        if _origin(origin) not in own - {None}:
            return Refusal(
                403,
                "Forbidden",
                f"a {method.upper()} from origin {origin.strip()[:100]!r} is refused: "
                "changes are accepted from this app's own page only",
            )
    content_type = headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if content_type != "application/json":
        return Refusal(
            415,
            "Unsupported media type",
            f"send {method.upper()} requests as Content-Type: application/json (an empty body may be {{}})",
        )
    return None


def _origin(url: str | None) -> str | None:
    if not url:
        return None
    parts = urlsplit(url.strip())
    if not parts.scheme or not parts.netloc:
        return None
    return f"{parts.scheme.lower()}://{parts.netloc.lower()}"
