"""The "Sync by O365 Groups" page: the static files in web/, served by the app itself.

Anonymous on purpose: these files hold no data. Every data call the page makes goes to the
authenticated API on the same origin (App Service Authentication's session cookie goes along;
locally the dev host injects its dev principal). Only the whitelisted files below are served,
never a path taken from the request, each with its content type, `Cache-Control: no-cache`
(revalidated by ETag) and a Content-Security-Policy that allows this origin alone.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from urllib.parse import urlsplit

import azure.functions as func

bp = func.Blueprint()  # type: ignore[no-untyped-call]

WEB_ROOT = Path(__file__).resolve().parent.parent / "web"
PAGE = "index.html"
# The only files served: name in the URL -> content type. Nothing else under web/ is reachable.
ASSETS: dict[str, str] = {
    "app.js": "text/javascript",
    "styles.css": "text/css",
    "favicon.ico": "image/x-icon",  # the page names it (<link rel="icon">), so no browser asks /favicon.ico
}
TEXT_TYPES = frozenset({"text/html", "text/javascript", "text/css"})
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "connect-src 'self'; font-src 'self'; form-action 'self'; base-uri 'none'; "
    "frame-ancestors 'none'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}


def _not_found(detail: str) -> func.HttpResponse:
    body = f'{{"type":"about:blank","title":"Not found","status":404,"detail":"{detail}"}}'
    return func.HttpResponse(
        body,
        status_code=404,
        mimetype="application/problem+json",
        charset="utf-8",
        headers={"Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff"},
    )


def serve_file(req: func.HttpRequest, name: str, mimetype: str) -> func.HttpResponse:
    """One file of web/ with its type, no-cache and the CSP; 304 when the browser's copy is current."""
    try:
        content = (WEB_ROOT / name).read_bytes()
    except OSError:
        return _not_found(f"the page file {name} is missing from this deployment")
    etag = '"' + hashlib.sha256(content).hexdigest()[:32] + '"'
    headers = {**SECURITY_HEADERS, "ETag": etag}
    if etag in {tag.strip() for tag in (req.headers.get("if-none-match") or "").split(",")}:
        return func.HttpResponse(status_code=304, headers=headers)
    charset = "utf-8" if mimetype in TEXT_TYPES else None
    return func.HttpResponse(content, status_code=200, mimetype=mimetype, charset=charset, headers=headers)


@bp.function_name("web_page")
@bp.route(route="ui", methods=["GET"], auth_level=func.AuthLevel.ANONYMOUS)
def web_page(req: func.HttpRequest) -> func.HttpResponse:
    """The page itself: /api/ui?tenant=<tenant GUID>."""
    parts = urlsplit(req.url)
    if parts.path.endswith("/"):
        # The page loads its files relative to /api/ui; /api/ui/ would resolve them one level down.
        location = "../ui" + (f"?{parts.query}" if parts.query else "")
        return func.HttpResponse(status_code=308, headers={"Location": location, "Cache-Control": "no-cache"})
    return serve_file(req, PAGE, "text/html")


@bp.function_name("web_asset")
@bp.route(route="ui/{asset}", methods=["GET"], auth_level=func.AuthLevel.ANONYMOUS)
def web_asset(req: func.HttpRequest) -> func.HttpResponse:
    """The page's script, stylesheet and icon, by whitelisted name only."""
    name = req.route_params.get("asset", "")
    mimetype = ASSETS.get(name)
    if mimetype is None:
        return _not_found("no such file; the page is at /api/ui")
    return serve_file(req, name, mimetype)
