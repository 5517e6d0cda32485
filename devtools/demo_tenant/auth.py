"""The demo tenant's identity platform: the token endpoint, admin consent, and token checks on Graph.

`POST /{tenant}/oauth2/v2.0/token` follows "Microsoft identity platform and the OAuth 2.0 client
credentials flow": a JWT-shaped access token carrying `tid`, `appid`, `roles` and `exp`, or an
error body with `error`, `error_description` ("AADSTSnnnnnn: ..."), `error_codes`, `timestamp`,
`trace_id` and `correlation_id`. Whether a tenant hands out tokens depends on its consent state
(granted, none, revoked, appDeleted, badFederation). `GET /{tenant}/adminconsent` plays the admin
consent endpoint ("Admin consent on the Microsoft identity platform"). Graph routes accept only
tokens issued here and check the `roles` claim per endpoint (the "Permissions" section of each
Graph reference page).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import html
import json
import secrets
import threading
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal, Protocol
from urllib.parse import urlencode

from aiohttp import web

from devtools.demo_tenant.model import Tenant
from devtools.demo_tenant.query import Call, Principal
from devtools.demo_tenant.wire import GraphError

ConsentState = Literal["granted", "none", "revoked", "appDeleted", "badFederation"]
CONSENT_STATES: tuple[ConsentState, ...] = ("granted", "none", "revoked", "appDeleted", "badFederation")
DEFAULT_PERMISSIONS: tuple[str, ...] = (
    "GroupMember.Read.All",
    "User.Read.All",
    "MailboxSettings.Read",
    "Member.Read.Hidden",
    "Group.Read.All",
)
"""What the product asks for, its opt-in Group.Read.All (group change notifications) included; the
demo tenants have granted all of it, so `make run` shows changes arriving within a minute."""
DEFAULT_TOKEN_LIFETIME = 3599  # seconds, as expires_in in Microsoft's example response
GRAPH_AUDIENCE = "https://graph.microsoft.com"
JWT_BEARER = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"

_USER_READ = frozenset(
    {"User.Read.All", "User.ReadWrite.All", "Directory.Read.All", "Directory.ReadWrite.All"}
)
_GROUP_READ = frozenset(
    {
        "GroupMember.Read.All",
        "GroupMember.ReadWrite.All",
        "Group.Read.All",
        "Group.ReadWrite.All",
        "Directory.Read.All",
        "Directory.ReadWrite.All",
    }
)
# The application permissions each route accepts (least privileged first in Microsoft's tables).
REQUIRED_ROLES: dict[str, frozenset[str]] = {
    "users": _USER_READ,
    "groups": _GROUP_READ,
    "users.memberOf": _USER_READ | _GROUP_READ,
    "users.transitiveMemberOf": _USER_READ | _GROUP_READ,
    "mailboxSettings": frozenset({"MailboxSettings.Read", "MailboxSettings.ReadWrite"}),
}
HIDDEN_MEMBERS_ROLE = "Member.Read.Hidden"


def required_roles(kind: str) -> frozenset[str] | None:
    """The roles a route kind ("groups.transitiveMembers.count") needs, any one of them; None: no check."""
    for prefix in (kind.rsplit(".", 1)[0] if kind.endswith(".count") else kind, kind.split(".", 1)[0]):
        for key in (prefix, ".".join(prefix.split(".")[:2])):
            if key in REQUIRED_ROLES:
                return REQUIRED_ROLES[key]
    return None


def check_roles(call: Call) -> None:
    """403 when the token's roles hold none of the permissions the route needs."""
    needed = required_roles(call.kind)
    if needed is None or call.principal is None:
        return
    if call.principal.roles & needed:
        return
    if call.kind == "mailboxSettings":  # Exchange answers for mailboxes, with its own code
        raise GraphError(403, "ErrorAccessDenied", "Access is denied. Check credentials and try again.")
    raise GraphError(403, "Authorization_RequestDenied", "Insufficient privileges to complete the operation.")


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def unverified_claims(token: str) -> dict[str, Any] | None:
    """The payload of a JWT-shaped string, unchecked; None when it is not one."""
    parts = token.split(".")
    if len(parts) != 3:
        return None
    try:
        claims = json.loads(_unb64(parts[1]))
    except ValueError:
        return None
    return claims if isinstance(claims, dict) else None


class TenantLookup(Protocol):
    """The served tenants, found by id or by domain name."""

    def find(self, key: str) -> Tenant | None:
        """The tenant with this id, verified domain or initial (onmicrosoft.com) domain."""

    def all(self) -> list[Tenant]:
        """Every served tenant."""


@dataclass(slots=True)
class Consent:
    """A tenant's admin consent for the product's app: its state and the granted application permissions."""

    state: ConsentState = "granted"
    permissions: tuple[str, ...] = DEFAULT_PERMISSIONS

    def as_dict(self) -> dict[str, Any]:
        """JSON view for the control routes."""
        return {"state": self.state, "permissions": list(self.permissions)}


class IdentityPlatform:
    """Consent per tenant, the token endpoint, the admin consent page and Graph's token check."""

    def __init__(self, tenants: TenantLookup) -> None:
        self._tenants = tenants
        self._secret = secrets.token_bytes(32)
        self._lock = threading.Lock()
        self._consents: dict[str, Consent] = {}
        self.token_lifetime = DEFAULT_TOKEN_LIFETIME
        self.app_permissions: tuple[str, ...] = DEFAULT_PERMISSIONS  # what admin consent grants

    # ------------------------------------------------------------------ consent

    def consent(self, tenant_id: str) -> Consent:
        """A tenant's consent (granted with the product's permissions until changed)."""
        with self._lock:
            return self._consents.get(tenant_id.lower(), Consent())

    def set_consent(
        self, tenant_id: str, state: ConsentState, permissions: tuple[str, ...] | list[str] | None = None
    ) -> Consent:
        """Change a tenant's consent; `permissions` only matter when granted (default: the product's)."""
        if state not in CONSENT_STATES:
            raise ValueError(f"consent state must be one of {', '.join(CONSENT_STATES)}")
        chosen = tuple(permissions) if permissions is not None else self.app_permissions
        consent = Consent(state=state, permissions=chosen if state == "granted" else ())
        with self._lock:
            self._consents[tenant_id.lower()] = consent
        return consent

    def reset(self) -> None:
        """Every tenant back to granted with the product's permissions; default token lifetime."""
        with self._lock:
            self._consents.clear()
        self.token_lifetime = DEFAULT_TOKEN_LIFETIME

    # ------------------------------------------------------------------- tokens

    def issue(self, tenant_id: str, app_id: str, roles: tuple[str, ...] | list[str]) -> tuple[str, int]:
        """A signed JWT-shaped access token for Graph and its lifetime in seconds."""
        now = int(time.time())
        lifetime = int(self.token_lifetime)
        claims = {
            "aud": GRAPH_AUDIENCE,
            "iss": f"https://sts.windows.net/{tenant_id}/",
            "iat": now,
            "nbf": now,
            "exp": now + lifetime,
            "appid": app_id,
            "idtyp": "app",
            "oid": str(uuid.uuid5(uuid.UUID(tenant_id), f"servicePrincipal:{app_id}")),
            "roles": sorted(set(roles)),
            "tid": tenant_id,
            "ver": "1.0",
        }
        header = _b64(json.dumps({"typ": "JWT", "alg": "HS256"}).encode())
        payload = _b64(json.dumps(claims, separators=(",", ":")).encode())
        signature = hmac.new(self._secret, f"{header}.{payload}".encode(), hashlib.sha256).digest()
        return f"{header}.{payload}.{_b64(signature)}", lifetime

    def verify(self, authorization: str | None) -> Principal | GraphError:
        """The caller of a Graph request, or the 401 Graph answers for a missing, foreign or expired token."""
        if not authorization:
            return GraphError(401, "InvalidAuthenticationToken", "Access token is empty.")
        scheme, _, token = authorization.partition(" ")
        token = token.strip()
        parts = token.split(".")
        if scheme.lower() != "bearer" or len(parts) != 3:
            return GraphError(
                401, "InvalidAuthenticationToken", "Access token validation failure: not a JWT."
            )
        expected = hmac.new(self._secret, f"{parts[0]}.{parts[1]}".encode(), hashlib.sha256).digest()
        try:
            signature_ok = hmac.compare_digest(expected, _unb64(parts[2]))
        except ValueError:
            signature_ok = False
        claims = unverified_claims(token) if signature_ok else None
        if claims is None or claims.get("aud") != GRAPH_AUDIENCE:
            return GraphError(
                401,
                "InvalidAuthenticationToken",
                "Access token validation failure. Invalid signature or audience.",
            )
        if float(claims.get("exp", 0)) <= time.time():
            return GraphError(
                401, "InvalidAuthenticationToken", "Lifetime validation failed, the token is expired."
            )
        if self._tenants.find(str(claims.get("tid", ""))) is None:
            return GraphError(
                401, "InvalidAuthenticationToken", "Access token validation failure: unknown tenant."
            )
        return Principal(
            tenant_id=str(claims["tid"]),
            app_id=str(claims.get("appid", "")),
            roles=frozenset(str(role) for role in claims.get("roles", ())),
            expires=float(claims["exp"]),
        )

    # ------------------------------------------------------------ token endpoint

    def routes(self, app: web.Application) -> None:
        """Register the token endpoint and the admin consent endpoint."""
        app.router.add_post("/{tenant}/oauth2/v2.0/token", self._token_endpoint)
        for path in ("/{tenant}/adminconsent", "/{tenant}/v2.0/adminconsent"):
            app.router.add_get(path, self._admin_consent_page)
            app.router.add_post(path, self._admin_consent_decision)

    def _resolve(self, key: str) -> Tenant | None:
        return self._tenants.find(key) if key else None

    async def _token_endpoint(self, request: web.Request) -> web.Response:
        form = await request.post()
        field = {name: str(value) for name, value in form.items()}
        tenant_key = request.match_info["tenant"]
        tenant = self._resolve(tenant_key)
        if tenant is None:
            return sts_error(
                400,
                "invalid_request",
                90002,
                f"Tenant '{tenant_key}' not found. Check the tenant ID and the cloud you sign in to.",
            )
        for name in ("grant_type", "client_id", "scope"):
            if not field.get(name):
                return sts_error(
                    400, "invalid_request", 900144, f"The request body must contain the parameter '{name}'."
                )
        if field["grant_type"] != "client_credentials":
            return sts_error(
                400, "unsupported_grant_type", 70003, "The app asked for an unsupported grant type."
            )
        if not field["scope"].endswith("/.default"):
            return sts_error(
                400,
                "invalid_scope",
                1002012,
                f"The provided value for scope {field['scope']} is not valid: client credential flows need "
                "a scope made of the resource identifier and /.default.",
            )
        assertion = field.get("client_assertion")
        if not assertion and not field.get("client_secret"):
            return sts_error(
                401,
                "invalid_client",
                7000218,
                "The request body must contain the parameter 'client_assertion' or 'client_secret'.",
            )
        if assertion and field.get("client_assertion_type") != JWT_BEARER:
            return sts_error(400, "invalid_request", 900144, "client_assertion_type must be jwt-bearer.")
        client_id = field["client_id"]
        consent = self.consent(tenant.tenant_id)
        if consent.state in ("none", "revoked", "appDeleted"):
            return sts_error(
                400,
                "unauthorized_client",
                700016,
                f"Application with identifier '{client_id}' was not found in the directory "
                f"'{tenant.display_name}'. The app may not have been installed or consented to by an "
                "administrator of the tenant, or the request went to the wrong tenant.",
            )
        if consent.state == "badFederation":
            claims = unverified_claims(assertion) if assertion else None
            if claims is None or not claims.get("iss"):
                return sts_error(
                    401,
                    "invalid_client",
                    70021,
                    "No matching federated identity record found for the presented assertion.",
                )
            return sts_error(
                401,
                "invalid_client",
                700213,
                "No matching federated identity record found for presented assertion subject "
                f"'{claims.get('sub', '')}'.",
            )
        token, lifetime = self.issue(tenant.tenant_id, client_id, consent.permissions)
        body = {
            "token_type": "Bearer",
            "expires_in": lifetime,
            "ext_expires_in": lifetime,
            "access_token": token,
        }
        return web.json_response(body, headers={"Cache-Control": "no-store", "Pragma": "no-cache"})

    # ------------------------------------------------------------- admin consent

    async def _admin_consent_page(self, request: web.Request) -> web.Response:
        params = request.query
        problem = self._consent_problem(
            request.match_info["tenant"], params.get("client_id"), params.get("redirect_uri")
        )
        if problem is not None:
            return problem
        tenant_key = request.match_info["tenant"]
        generic = tenant_key.lower() in ("organizations", "common")
        tenants = self._tenants.all() if generic else [self._resolve(tenant_key)]
        options = "".join(
            f'<option value="{html.escape(t.tenant_id)}">{html.escape(t.display_name)}</option>'
            for t in tenants
            if t is not None
        )
        hidden = "".join(
            f'<input type="hidden" name="{html.escape(name)}" value="{html.escape(params.get(name, ""))}">'
            for name in ("client_id", "redirect_uri", "state")
        )
        page = (
            "<!doctype html><html><head><meta charset='utf-8'><title>Permissions requested</title>"
            "</head><body>"
            "<h1>Permissions requested</h1>"
            f"<p>App <code>{html.escape(params.get('client_id', ''))}</code> asks for these application "
            "permissions for your whole organization:</p><ul>"
            + "".join(f"<li>{html.escape(p)}</li>" for p in self.app_permissions)
            + f"</ul><form method='post'>{hidden}<label>Organization <select name='tenant'>{options}"
            "</select></label> <button name='decision' value='accept'>Accept</button> "
            "<button name='decision' value='cancel'>Cancel</button></form></body></html>"
        )
        return web.Response(text=page, content_type="text/html")

    async def _admin_consent_decision(self, request: web.Request) -> web.Response:
        form = {name: str(value) for name, value in (await request.post()).items()}
        params = {**dict(request.query), **form}
        problem = self._consent_problem(
            request.match_info["tenant"], params.get("client_id"), params.get("redirect_uri")
        )
        if problem is not None:
            return problem
        redirect_uri = params["redirect_uri"]
        state = params.get("state", "")
        path_tenant = self._resolve(request.match_info["tenant"])
        tenant = path_tenant or self._resolve(params.get("tenant", ""))
        if params.get("decision") != "accept" or tenant is None:
            query = {
                "error": "access_denied",
                "error_description": "AADSTS65004: The administrator declined to consent to the app.",
                "state": state,
            }
        else:
            self.set_consent(tenant.tenant_id, "granted", self.app_permissions)
            query = {"admin_consent": "True", "tenant": tenant.tenant_id, "state": state}
        separator = "&" if "?" in redirect_uri else "?"
        raise web.HTTPFound(f"{redirect_uri}{separator}{urlencode(query)}")

    def _consent_problem(
        self, tenant_key: str, client_id: str | None, redirect_uri: str | None
    ) -> web.Response | None:
        generic = tenant_key.lower() in ("organizations", "common")
        tenant = None if generic else self._resolve(tenant_key)
        if not generic and tenant is None:
            return _error_page(400, f"AADSTS90002: Tenant '{tenant_key}' not found.")
        if not client_id:
            return _error_page(400, "AADSTS900144: The request must contain the parameter 'client_id'.")
        if not redirect_uri:
            return _error_page(400, "AADSTS900144: The request must contain the parameter 'redirect_uri'.")
        if tenant is not None and self.consent(tenant.tenant_id).state == "appDeleted":
            return _error_page(
                400,
                f"AADSTS700016: Application with identifier '{client_id}' was not found in the directory.",
            )
        return None


def _error_page(status: int, message: str) -> web.Response:
    return web.Response(
        status=status,
        text=f"<!doctype html><html><body><h1>Sign in failed</h1><p>{html.escape(message)}</p></body></html>",
        content_type="text/html",
    )


def sts_error(status: int, error: str, code: int, description: str) -> web.Response:
    """An Entra token-endpoint error body: AADSTS code, trace and correlation ids, timestamp."""
    trace_id, correlation_id = str(uuid.uuid4()), str(uuid.uuid4())
    timestamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%SZ")
    body = {
        "error": error,
        "error_description": (
            f"AADSTS{code}: {description}\r\nTrace ID: {trace_id}\r\nCorrelation ID: {correlation_id}"
            f"\r\nTimestamp: {timestamp}"
        ),
        "error_codes": [code],
        "timestamp": timestamp,
        "trace_id": trace_id,
        "correlation_id": correlation_id,
    }
    return web.json_response(body, status=status, headers={"Cache-Control": "no-store"})
