"""HTTP triggers on aiohttp's own router: each function's route template becomes an aiohttp
resource under the routePrefix; requests become `func.HttpRequest`, results `web.Response`."""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Awaitable, Callable, Collection, Mapping
from typing import Any

import azure.functions as func
from aiohttp import web
from aiohttp.typedefs import Middleware
from multidict import CIMultiDict

from devtools.host.config import HostError
from devtools.host.functions import HttpFunction
from devtools.host.invoke import PROGRAMMATIC_REASON, Invoker

log = logging.getLogger("devtools.host")

RequestHandler = Callable[[web.Request], Awaitable[web.StreamResponse]]

_TOKEN = re.compile(r"\{([^{}]+)\}")
# Route constraints in aiohttp regex form; the app uses none, the table keeps common ones working.
_CONSTRAINTS = {
    "int": r"-?\d+",
    "long": r"-?\d+",
    "guid": r"[0-9a-fA-F]{8}-(?:[0-9a-fA-F]{4}-){3}[0-9a-fA-F]{12}",
    "alpha": r"[A-Za-z]+",
    "bool": r"(?:true|false)",
}


def aiohttp_path(prefix: str, template: str) -> str:
    """`{prefix}/{template}` in aiohttp's syntax: `{name}` stays, `{name:int}` and
    `{name:regex(...)}` become `{name:pattern}`, the catch-all `{*rest}` becomes `{rest:.*}`."""
    segments = [part for part in (prefix.strip("/"), template.strip("/")) if part]
    return "/" + _TOKEN.sub(lambda match: _parameter(match.group(1), template), "/".join(segments))


def _parameter(spec: str, template: str) -> str:
    if spec.startswith("*"):
        return f"{{{spec[1:]}:.*}}"
    name, _, constraint = spec.partition(":")
    if name.endswith("?") or "=" in name:
        raise HostError(
            f"route {template!r}: optional and default parameters are not supported by the dev host"
        )
    if not constraint:
        return f"{{{name}}}"
    if constraint.startswith("regex(") and constraint.endswith(")"):
        pattern = constraint[6:-1].lstrip("^").rstrip("$")
    elif constraint.lower() in _CONSTRAINTS:
        pattern = _CONSTRAINTS[constraint.lower()]
    else:
        raise HostError(f"route {template!r}: the constraint {constraint!r} is not supported by the dev host")
    return f"{{{name}:{pattern}}}"


def precedence(template: str) -> tuple[int, ...]:
    """ASP.NET's order, most specific first per segment: literal, constrained, plain, catch-all.

    aiohttp tries the longest literal prefix first and, within one prefix, registration order.
    """
    ranks = []
    for segment in template.strip("/").split("/"):
        token = _TOKEN.search(segment)
        if token is None:
            ranks.append(0)
        elif token.group(1).startswith("*"):
            ranks.append(3)
        else:
            ranks.append(1 if ":" in token.group(1) else 2)
    return tuple(ranks)


def add_function_routes(
    router: web.UrlDispatcher, prefix: str, functions: list[HttpFunction], invoker: Invoker
) -> None:
    """Register every HTTP function, most specific route first; one resource per path."""
    resources: dict[str, web.Resource] = {}
    for function in sorted(functions, key=lambda f: precedence(f.route)):
        path = aiohttp_path(prefix, function.route)
        if path not in resources:
            resources[path] = router.add_resource(path)
        resource = resources[path]
        handler = _function_handler(function, invoker)
        for method in sorted(function.methods or {"*"}):
            resource.add_route(method, handler)


def _function_handler(function: HttpFunction, invoker: Invoker) -> RequestHandler:
    async def handle(request: web.Request) -> web.StreamResponse:
        req = func.HttpRequest(
            request.method,
            str(request.url),
            headers={key: ", ".join(request.headers.getall(key)) for key in request.headers},
            params={key: request.query[key] for key in request.query},
            route_params=dict(request.match_info),
            body=await request.read(),
        )
        try:
            result = await invoker.invoke(function, PROGRAMMATIC_REASON, req)
        except Exception:  # logged with its traceback by the invoker
            return problem_response(
                500,
                "Internal error",
                f"the function {function.name} failed; the dev host log has the details",
            )
        try:
            return to_aiohttp_response(result)
        except TypeError as exc:
            log.error("Function '%s': %s", function.name, exc)
            return problem_response(500, "Internal error", f"{function.name}: {exc}")

    return handle


def problem_response(
    status: int, title: str, detail: str, headers: Mapping[str, str] | None = None
) -> web.Response:
    """An RFC 9457 problem+json response produced by the host itself (no function ran)."""
    body = {"type": "about:blank", "title": title, "status": status, "detail": detail}
    return web.Response(
        status=status,
        body=json.dumps(body).encode("utf-8"),
        content_type="application/problem+json",
        charset="utf-8",
        headers=headers,
    )


@web.middleware
async def problem_middleware(request: web.Request, handler: RequestHandler) -> web.StreamResponse:
    """The router's 404 and 405 as problem+json, as the app's own errors are."""
    try:
        return await handler(request)
    except web.HTTPMethodNotAllowed as exc:
        allowed = ", ".join(sorted(exc.allowed_methods))
        detail = f"{request.method} is not allowed on {request.path}; use {allowed}"
        return problem_response(405, "Method not allowed", detail, {"Allow": allowed})
    except web.HTTPNotFound:
        return problem_response(404, "Not found", f"no function serves {request.path}")


def loopback_host_middleware(allowed_hosts: Collection[str]) -> Middleware:
    """Refuse (400) a request whose Host header is not one of `allowed_hosts` ("127.0.0.1:7071"):
    a page on another site that resolves its own name to 127.0.0.1 (DNS rebinding) gets nothing."""

    @web.middleware
    async def check_host(request: web.Request, handler: RequestHandler) -> web.StreamResponse:
        if request.headers.get("Host", "").lower() not in allowed_hosts:
            detail = f"the dev host answers only to {' or '.join(sorted(allowed_hosts))}"
            return problem_response(400, "Bad request", detail)
        return await handler(request)

    return check_host


_TEXTUAL = re.compile(r"^(text/.*|.*[/+](json|xml|javascript))$", re.IGNORECASE)


def to_aiohttp_response(result: Any) -> web.Response:
    """Turn what an HTTP function returned into the response the host sends."""
    if result is None:
        return web.Response(status=204)
    if isinstance(result, str | bytes):  # the worker wraps bare str/bytes returns as 200 text/plain
        result = func.HttpResponse(result)
    if not isinstance(result, func.HttpResponse):
        raise TypeError(
            f"an HTTP function returned {type(result).__name__}, not azure.functions.HttpResponse"
        )
    headers: CIMultiDict[str] = CIMultiDict()
    for key, value in result.headers.items():
        headers.add(key, value)
    if "Content-Type" not in headers:
        mimetype = result.mimetype or "text/plain"
        charset = result.charset if _TEXTUAL.match(mimetype) else None
        headers["Content-Type"] = f"{mimetype}; charset={charset}" if charset else mimetype
    return web.Response(status=int(result.status_code), body=result.get_body(), headers=headers)
