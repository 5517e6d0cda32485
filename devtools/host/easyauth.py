"""A stand-in for App Service Authentication (Easy Auth) with Entra ID, failing closed as it does.

- Every X-MS-CLIENT-PRINCIPAL* and X-MS-TOKEN-* header a client sends is dropped: only this
  module sets them, and only for a signed-in session.
- `GET /.auth/login/aad?post_login_redirect_uri=/path` shows a dev sign-in page listing the dev
  identities (`identities.py`); choosing one (a form POST) sets the session cookie and redirects.
  Scripts may `POST /.auth/login/dev` with `{"identity": "<key>"}` instead (dev only).
- `GET /.auth/me` answers as the token store does (401 without a session), `GET /.auth/logout`
  ends the session and redirects to `post_logout_redirect_uri` or `/.auth/logout/done`.

The principal has App Service's shape: auth_typ "aad", the name and role claim types it uses,
claims after its default mapping (oid and tid as schema URIs; `tid` is kept too), one `roles`
claim per app role and one `wids` claim per directory role.
"""

from __future__ import annotations

import base64
import html
import json
import secrets
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from urllib.parse import quote, urlsplit

from aiohttp import web
from multidict import CIMultiDict

from devtools.host.identities import DEV_HOME_TENANT_ID, DEV_IDENTITIES, MEMBER_USER, DevIdentity
from devtools.host.routes import RequestHandler, problem_response

SESSION_COOKIE = "AppServiceAuthSession"
SESSION_SECONDS = 8 * 3600  # App Service's session lifetime
PRINCIPAL_HEADER = "X-MS-CLIENT-PRINCIPAL"
_PLATFORM_HEADERS = ("x-ms-client-principal", "x-ms-token-")  # prefixes only the platform may set
NAME_CLAIM_TYPE = "http://schemas.xmlsoap.org/ws/2005/05/identity/claims/emailaddress"
ROLE_CLAIM_TYPE = "http://schemas.microsoft.com/ws/2008/06/identity/claims/role"
TENANT_CLAIM_TYPE = "http://schemas.microsoft.com/identity/claims/tenantid"
OBJECT_ID_CLAIM_TYPE = "http://schemas.microsoft.com/identity/claims/objectidentifier"
DEV_OBJECT_ID = "00000000-0000-0000-0000-0000000000de"  # for encode_principal: fixed and obviously fake
LOGOUT_DONE = "/.auth/logout/done"


def principal_claims(identity: DevIdentity, tenant_id: str, issued_at: int) -> list[dict[str, str]]:
    """The claims App Service passes on for an Entra ID v2.0 sign-in of this identity."""
    claims = [
        {"typ": "iss", "val": f"https://login.microsoftonline.com/{tenant_id}/v2.0"},
        {"typ": "iat", "val": str(issued_at)},
        {"typ": "nbf", "val": str(issued_at)},
        {"typ": "exp", "val": str(issued_at + SESSION_SECONDS)},
        {"typ": "name", "val": identity.display_name},
        {"typ": OBJECT_ID_CLAIM_TYPE, "val": identity.object_id},
        {"typ": "preferred_username", "val": identity.user_principal_name},
    ]
    claims += [{"typ": "roles", "val": role} for role in identity.app_roles]
    claims += [
        {"typ": TENANT_CLAIM_TYPE, "val": tenant_id},
        {"typ": "tid", "val": tenant_id},
        {"typ": "ver", "val": "2.0"},
    ]
    claims += [{"typ": "wids", "val": role} for role in identity.directory_roles]
    claims += [{"typ": "groups", "val": group} for group in identity.groups]
    return claims


def encode_claims(claims: list[dict[str, str]]) -> str:
    """An X-MS-CLIENT-PRINCIPAL value: the claims in App Service's envelope, base64 JSON."""
    payload = {"auth_typ": "aad", "claims": claims, "name_typ": NAME_CLAIM_TYPE, "role_typ": ROLE_CLAIM_TYPE}
    return base64.b64encode(json.dumps(payload).encode("utf-8")).decode("ascii")


def encode_principal(
    name: str,
    roles: Iterable[str] = (),
    *,
    tenant_id: str = DEV_HOME_TENANT_ID,
    object_id: str = DEV_OBJECT_ID,
    directory_roles: Iterable[str] = (MEMBER_USER,),
    groups: Iterable[str] = (),
) -> str:
    """An X-MS-CLIENT-PRINCIPAL value for an ad-hoc caller (e.g. `func start` with curl, tests)."""
    identity = DevIdentity(
        key=name,
        display_name=name,
        user_principal_name=name,
        object_id=object_id,
        tenant_id=tenant_id,
        description="",
        app_roles=tuple(roles),
        directory_roles=tuple(directory_roles),
        groups=tuple(groups),
    )
    return encode_claims(principal_claims(identity, tenant_id, int(time.time())))


def sign_in_help(base_url: str, landing: str = "/") -> list[str]:
    """How to sign in to a running dev host: in a browser, and with curl for scripts."""
    return [
        f"Sign in: {base_url}/.auth/login/aad?post_login_redirect_uri={quote(landing, safe='/')}",
        f"  identities: {', '.join(identity.key for identity in DEV_IDENTITIES)}",
        "  curl:  curl -c /tmp/sync-dev.cookies -H 'Content-Type: application/json' "
        f"""-d '{{"identity": "operator"}}' {base_url}/.auth/login/dev""",
        f"         curl -b /tmp/sync-dev.cookies {base_url}/.auth/me",
    ]


@dataclass(frozen=True)
class Session:
    """A signed-in dev session: who, with which claims, until when."""

    identity: DevIdentity
    claims: list[dict[str, str]]
    expires_at: float

    def headers(self) -> dict[str, str]:
        """The headers App Service adds to each request of this session."""
        return {
            PRINCIPAL_HEADER: encode_claims(self.claims),
            "X-MS-CLIENT-PRINCIPAL-NAME": self.identity.user_principal_name,
            "X-MS-CLIENT-PRINCIPAL-ID": self.identity.object_id,
            "X-MS-CLIENT-PRINCIPAL-IDP": "aad",
        }


class EasyAuth:
    """Sessions, the /.auth routes and the middleware that sets the principal headers."""

    def __init__(self, identities: Sequence[DevIdentity], home_tenant_id: str | None) -> None:
        """`home_tenant_id`: the operator's tenant (HOME_TENANT_ID); None uses a fixed dev GUID."""
        self.identities = {identity.key: identity for identity in identities}
        self.home_tenant_id = home_tenant_id or DEV_HOME_TENANT_ID
        self._sessions: dict[str, Session] = {}

    def add_routes(self, router: web.UrlDispatcher) -> None:
        """Serve /.auth/login/aad, /.auth/login/dev, /.auth/me, /.auth/logout (+ /done)."""
        router.add_get("/.auth/login/aad", self._sign_in_page)
        router.add_post("/.auth/login/aad", self._sign_in_form)
        router.add_post("/.auth/login/dev", self._sign_in_json)
        router.add_get("/.auth/me", self._me)
        router.add_get("/.auth/logout", self._logout)
        router.add_get(LOGOUT_DONE, self._logged_out)

    def session(self, request: web.Request) -> Session | None:
        """The request's live session, if its cookie names one."""
        token = request.cookies.get(SESSION_COOKIE)
        session = self._sessions.get(token) if token else None
        if session is not None and session.expires_at <= time.time():
            self._sessions.pop(token or "", None)
            return None
        return session

    @web.middleware
    async def middleware(self, request: web.Request, handler: RequestHandler) -> web.StreamResponse:
        """Drop client-sent platform headers; add the principal of a signed-in session."""
        headers = CIMultiDict(
            (key, value)
            for key, value in request.headers.items()
            if not key.lower().startswith(_PLATFORM_HEADERS)
        )
        session = self.session(request)
        if session is not None:
            headers.update(session.headers())
        if len(headers) != len(request.headers) or session is not None:
            request = request.clone(headers=headers)
        return await handler(request)

    # -- routes -----------------------------------------------------------------------------------

    async def _sign_in_page(self, request: web.Request) -> web.StreamResponse:
        redirect = _local_redirect(request, "post_login_redirect_uri", "/")
        if redirect is None:
            return _bad_redirect("post_login_redirect_uri")
        buttons = "\n".join(
            f'<li><button name="identity" value="{html.escape(i.key)}">{html.escape(i.display_name)}'
            f"</button> {html.escape(i.user_principal_name)} <small>{html.escape(i.description)}</small></li>"
            for i in self.identities.values()
        )
        return web.Response(
            text=_sign_in_html(redirect, buttons), content_type="text/html", headers=_PAGE_HEADERS
        )

    async def _sign_in_form(self, request: web.Request) -> web.StreamResponse:
        if not _same_origin(request):
            return problem_response(
                403, "Forbidden", "sign-in forms are accepted from this host's own pages only"
            )
        form = await request.post()
        redirect = _checked_redirect(request, str(form.get("post_login_redirect_uri") or "/"))
        if redirect is None:
            return _bad_redirect("post_login_redirect_uri")
        identity = self.identities.get(str(form.get("identity") or ""))
        if identity is None:
            return problem_response(400, "Bad request", "choose one of the listed identities")
        response = web.Response(status=302, headers={"Location": redirect})
        _set_session_cookie(response, self._start(identity))
        return response

    async def _sign_in_json(self, request: web.Request) -> web.StreamResponse:
        if request.content_type != "application/json":
            return problem_response(
                415, "Unsupported media type", 'send {"identity": "<key>"} as application/json'
            )
        try:
            body = await request.json()
            identity = self.identities.get(str(body["identity"]))
        except (ValueError, KeyError, TypeError):
            identity = None
        if identity is None:
            keys = ", ".join(self.identities)
            return problem_response(
                400, "Bad request", f'send {{"identity": "<key>"}}, the key one of: {keys}'
            )
        token = self._start(identity)
        response = web.json_response({"identity": identity.key, "cookie": f"{SESSION_COOKIE}={token}"})
        _set_session_cookie(response, token)
        return response

    async def _me(self, request: web.Request) -> web.StreamResponse:
        session = self.session(request)
        if session is None:
            return problem_response(401, "Unauthorized", "no signed-in session: sign in at /.auth/login/aad")
        expires_on = datetime.fromtimestamp(session.expires_at, UTC).isoformat().replace("+00:00", "Z")
        # The token store's shape, without tokens: the dev host signs nothing.
        entry = {
            "expires_on": expires_on,
            "provider_name": "aad",
            "user_claims": session.claims,
            "user_id": session.identity.user_principal_name,
        }
        return web.json_response([entry])

    async def _logout(self, request: web.Request) -> web.StreamResponse:
        redirect = _local_redirect(request, "post_logout_redirect_uri", LOGOUT_DONE)
        if redirect is None:
            return _bad_redirect("post_logout_redirect_uri")
        self._sessions.pop(request.cookies.get(SESSION_COOKIE, ""), None)
        response = web.Response(status=302, headers={"Location": redirect})
        response.del_cookie(SESSION_COOKIE, path="/")
        return response

    async def _logged_out(self, request: web.Request) -> web.StreamResponse:
        return web.Response(text=_SIGNED_OUT_PAGE, content_type="text/html", headers=_PAGE_HEADERS)

    def _start(self, identity: DevIdentity) -> str:
        tenant_id = identity.tenant_id or self.home_tenant_id
        now = int(time.time())
        token = secrets.token_urlsafe(32)
        self._sessions[token] = Session(
            identity, principal_claims(identity, tenant_id, now), now + SESSION_SECONDS
        )
        return token


def _set_session_cookie(response: web.StreamResponse, token: str) -> None:
    # Not Secure: the dev host speaks plain HTTP on loopback.
    response.set_cookie(
        SESSION_COOKIE, token, path="/", httponly=True, samesite="Lax", max_age=SESSION_SECONDS
    )


def _local_redirect(request: web.Request, parameter: str, default: str) -> str | None:
    return _checked_redirect(request, request.query.get(parameter) or default)


def _checked_redirect(request: web.Request, target: str) -> str | None:
    # App Service redirects only within the app unless a URL is allowed explicitly; so does this.
    parts = urlsplit(target)
    if parts.scheme or parts.netloc:
        same = parts.scheme == request.scheme and parts.netloc == request.host
        return target if same else None
    if not target.startswith("/") or target.startswith("//") or "\\" in target:
        return None
    return target


def _same_origin(request: web.Request) -> bool:
    origin = request.headers.get("Origin")
    return origin is None or origin == f"{request.scheme}://{request.host}"


def _bad_redirect(parameter: str) -> web.Response:
    return problem_response(400, "Bad request", f"{parameter} must be a path on this host, such as /api/ui")


_PAGE_HEADERS: Mapping[str, str] = {
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'",
    "Cache-Control": "no-store",
    "X-Frame-Options": "DENY",
}
_STYLE = (
    "body{font:15px system-ui,sans-serif;margin:3em auto;max-width:46em}li{margin:.6em 0}small{color:#555}"
)


def _sign_in_html(redirect: str, buttons: str) -> str:
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Sign in (dev host)</title><style>{_STYLE}</style></head>
<body><h1>Sign in</h1>
<p>The dev host stands in for App Service Authentication: pick who you are. In Azure, this is
the Microsoft sign-in page.</p>
<form method="post" action="/.auth/login/aad">
<input type="hidden" name="post_login_redirect_uri" value="{html.escape(redirect)}">
<ul>
{buttons}
</ul>
</form></body></html>
"""


_SIGNED_OUT_PAGE = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Signed out</title><style>{_STYLE}</style></head>
<body><h1>Signed out</h1><p><a href="/.auth/login/aad">Sign in again</a></p></body></html>
"""
