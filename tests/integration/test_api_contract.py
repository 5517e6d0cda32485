"""The HTTP API against its OpenAPI 3.1 document (sync/openapi.py, served at /api/openapi.json).

1. Every registered HTTP route and method is in the document, and nothing else is.
2. schemathesis generates requests from the document (valid and invalid ones: wrong types,
   missing and extra fields, out-of-range values, malformed ids) and sends them to the real
   handlers; every response must be documented (status, content type, body schema, headers),
   no response may be a 5xx, and invalid input must be refused. At least 1,000 requests.

The handlers are Azure Functions handlers, not an ASGI app: `FunctionsAsgi` below is a thin
adapter that does what the Functions host does with a request (route template matching,
route parameters, query, headers, body into func.HttpRequest; HttpResponse back out). The
app runs on real Azurite and the test's own demo Graph tenant.
"""

from __future__ import annotations

import asyncio
import json
import re
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, unquote

import azure.functions as func
import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from hypothesis.configuration import set_hypothesis_home_dir
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from devtools.azurite import Azurite
from devtools.demo_tenant import DemoGraphServer, build_tenant
from devtools.demo_tenant import Tenant as DemoTenant
from shared.settings import get_settings, reset_settings_cache
from sync.openapi import build_openapi
from sync.validation import GUID_PATTERN, RUN_ID_PATTERN
from tests.integration.conftest import APP_BASE_URL, DEV_PRINCIPAL, HOME_TENANT_ID, AppUnderTest
from tests.integration.test_auth import STATIC_MODULES, http_routes
from tests.integration.test_fault_matrix import forget_tenants
from tests.integration.test_sync_flow import register, select
from tests.oracle import expected_roster

# The fuzzed operations share one app (module fixture) and the last test counts their requests
# (module state): under pytest-xdist the whole module runs on one worker, in order.
pytestmark = pytest.mark.xdist_group("api_contract")

# Hypothesis keeps caches in ./.hypothesis by default; keep the work tree clean.
set_hypothesis_home_dir(str(Path(tempfile.gettempdir()) / "o365-groups-sync-hypothesis"))

ROUTE_PREFIX = "/api/"
MIN_REQUESTS = 1000
EXAMPLES_PER_OPERATION = 100  # x 24 operations, plus schemathesis' coverage cases


def _documented(path: str) -> str:
    return path.removeprefix(ROUTE_PREFIX)


def test_every_registered_route_is_documented_and_nothing_else(app_functions: dict[str, Any]) -> None:
    document = build_openapi()
    registered = {
        (route.route, method)
        for route in http_routes(app_functions)
        if route.module not in STATIC_MODULES
        for method in route.methods
    }
    documented = {
        (_documented(path), method.upper())
        for path, item in document["paths"].items()
        for method in item
        if method in ("get", "put", "post", "patch", "delete")
    }
    assert registered == documented, {
        "registered, not documented": sorted(registered - documented),
        "documented, not registered": sorted(documented - registered),
    }
    ids = [op["operationId"] for item in document["paths"].values() for op in item.values()]
    assert len(ids) == len(set(ids))
    for path, item in document["paths"].items():
        in_path = set(re.findall(r"{(\w+)}", path))
        for method, op in item.items():
            declared = {p["name"] for p in op["parameters"] if p["in"] == "path"}
            assert declared == in_path, (method, path)
            for status, response in op["responses"].items():
                for media in response.get("content", {}):
                    success = {
                        "application/json",
                        "text/csv",
                        "text/plain",
                    }  # csv: audit; text: Graph's handshake
                    allowed = success if status < "400" else {"application/problem+json"}
                    assert media in allowed


def test_every_reference_resolves_and_the_records_are_described() -> None:
    document = build_openapi()
    schemas = document["components"]["schemas"]
    refs = set(re.findall(r'"\$ref": "#/components/schemas/([^"]+)"', json.dumps(document)))
    assert refs <= set(schemas), refs - set(schemas)
    run = schemas["Run"]["properties"]
    assert {"id", "tenantId", "status", "counts", "groups", "graphRequests", "error", "undoOf"} <= set(run)
    assert {"guardPercent", "guardMinUsers"} <= set(schemas["Tenant"]["properties"])
    assert set(schemas["RunStatus"]["enum"]) == {
        "queued",
        "running",
        "succeeded",
        "failed",
        "held",
        "superseded",
    }


async def test_the_served_document_is_the_built_one(app: AppUnderTest) -> None:
    code, served, headers = await app.http("openapi", "GET", "openapi.json", principal=None)
    assert code == 200 and headers["Content-Type"] == "application/json"
    assert served == json.loads(json.dumps(build_openapi()))
    assert served["openapi"] == "3.1.0" and served["paths"]["/api/tenants/{tenantId}/runs/{runId}/undo"]


# --- the adapter: Functions handlers as an ASGI app -------------------------------------------


class FunctionsAsgi:
    """Routes an ASGI request to the app's Functions HTTP handlers, as the Functions host does."""

    def __init__(self, functions: dict[str, Any]) -> None:
        self.requests = 0
        self.statuses: dict[int, int] = {}
        self._routes: list[tuple[list[str], tuple[str, ...], Any]] = []
        for route in http_routes(functions):
            if route.module in STATIC_MODULES:
                continue
            handler = functions[route.function].get_user_function()
            self._routes.append((route.route.split("/"), route.methods, handler))

    def _match(self, path: str, method: str) -> tuple[Any, dict[str, str]] | None:
        segments = path.split("/")
        for template, methods, handler in self._routes:
            if len(template) != len(segments) or method not in methods:
                continue
            params: dict[str, str] = {}
            for pattern, segment in zip(template, segments, strict=True):
                name = re.fullmatch(r"{(\w+)}", pattern)
                if name:
                    value = unquote(segment)
                    if not value:
                        break
                    params[name.group(1)] = value
                elif pattern.lower() != segment.lower():
                    break
            else:
                return handler, params
        return None

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        raw_path = (scope.get("raw_path") or scope["path"].encode()).decode("latin-1").split("?", 1)[0]
        method = scope["method"].upper()
        headers: dict[str, str] = {}
        for key, value in scope["headers"]:
            name = key.decode("latin-1").lower()
            text = value.decode("latin-1")
            headers[name] = f"{headers[name]}, {text}" if name in headers else text
        # App Service Authentication in front of the app: it drops any principal header a client
        # sends, checks the bearer token and, when it is good, passes the caller on. Here every
        # well-formed bearer token stands for an operator; none means no caller.
        headers.pop("x-ms-client-principal", None)
        scheme, _, token = headers.get("authorization", "").partition(" ")
        if scheme.lower() == "bearer" and token.strip():
            headers["x-ms-client-principal"] = DEV_PRINCIPAL
        query = dict(parse_qsl(scope.get("query_string", b"").decode("latin-1"), keep_blank_values=True))
        matched = (
            self._match(raw_path.removeprefix(ROUTE_PREFIX), method)
            if raw_path.startswith(ROUTE_PREFIX)
            else None
        )
        if matched is None:
            status, out_headers, payload = (
                404,
                {"Content-Type": "application/problem+json"},
                json.dumps(
                    {"type": "about:blank", "title": "Not found", "status": 404, "detail": "No such route."}
                ).encode(),
            )
        else:
            handler, route_params = matched
            request = func.HttpRequest(
                method=method,
                url=f"http://127.0.0.1:7071{raw_path}",
                headers=headers,
                params=query,
                route_params=route_params,
                body=body,
            )
            response: func.HttpResponse = await handler(request)
            status = response.status_code
            out_headers = dict(response.headers)
            mimetype = response.mimetype or "text/plain"
            out_headers["Content-Type"] = (
                f"{mimetype}; charset={response.charset}" if response.charset else mimetype
            )
            payload = response.get_body()
        self.requests += 1
        self.statuses[status] = self.statuses.get(status, 0) + 1
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [(k.lower().encode(), str(v).encode()) for k, v in out_headers.items()],
            }
        )
        await send({"type": "http.response.body", "body": payload})


# --- the fuzz run -----------------------------------------------------------------------------

_GUID = re.compile(GUID_PATTERN)
_RUN = re.compile(RUN_ID_PATTERN)
_STATE: dict[str, Any] = {}


async def _make_world(app: AppUnderTest, tenant: DemoTenant) -> dict[str, Any]:
    """A registered tenant with a selection, an applied run and a held one, users on the roster."""
    await register(app, tenant)
    big, small = tenant.landmarks.big_group_id, tenant.landmarks.nested_chain[-1]
    await select(app, tenant, [big])
    await app.deliver()
    await select(app, tenant, [small])
    await app.deliver()
    code, runs, _ = await app.http("runs_list", "GET", "x", route={"tenantId": tenant.tenant_id})
    assert code == 200 and {r["status"] for r in runs["value"]} >= {"succeeded", "held"}
    users = sorted(expected_roster(tenant, [big]))
    return {
        "tenant": tenant.tenant_id,
        "runs": [r["id"] for r in runs["value"]],
        "users": [users[0], tenant.users[users[1]].user_principal_name],
        "groups": sorted(tenant.groups)[:5],
    }


@pytest.fixture(scope="module")
def fuzz_app(azurite: Azurite, app_functions: dict[str, Any]) -> Iterator[FunctionsAsgi]:
    """One app for every fuzzed operation: Azurite, a demo tenant of its own, a queue of its own."""
    tenant = build_tenant(str(uuid.uuid4()), "Fuzz Tenant", users=300, groups=20, seed=11)
    with DemoGraphServer([tenant]) as graph, pytest.MonkeyPatch.context() as env:
        env.setenv("SYNC_STORAGE", azurite.connection_string)
        env.setenv("GRAPH_AUTH", "demo")
        env.setenv("GRAPH_BASE_URL", graph.base_url)
        env.setenv("SYNC_QUEUE", f"sync-fuzz-{uuid.uuid4().hex[:8]}")
        env.setenv("DEV_TRUST_PRINCIPAL_HEADER", "true")
        env.setenv("HOME_TENANT_ID", HOME_TENANT_ID)
        env.setenv("APP_BASE_URL", APP_BASE_URL)
        env.delenv("WEBSITE_AUTH_ENABLED", raising=False)
        env.chdir(azurite.location or ".")
        reset_settings_cache()
        app = AppUnderTest(functions=app_functions, settings=get_settings(), graph=graph)
        _STATE["world"] = asyncio.run(_make_world(app, tenant))
        adapter = _STATE["adapter"] = FunctionsAsgi(app_functions)
        yield adapter
        asyncio.run(forget_tenants(azurite.connection_string, {tenant.tenant_id}))
    reset_settings_cache()


def _pick(options: list[str], seed: str) -> str:
    return options[sum(seed.encode()) % len(options)]


schema = schemathesis.openapi.from_dict(build_openapi())  # the served one is the same (test above)
schema.config.generation.update(
    modes=[schemathesis.GenerationMode.POSITIVE, schemathesis.GenerationMode.NEGATIVE],
    max_examples=EXAMPLES_PER_OPERATION,
    # Every request carries the operator's token (below): the fuzzing is about what a signed-in
    # caller can send. Who may call at all is tested on every route in test_auth.py.
    with_security_parameters=False,
)


def _known_path_ids(case: Any, world: dict[str, Any]) -> None:
    params = case.path_parameters
    if not isinstance(params, dict):
        return
    tenant = params.get("tenantId")
    # Registering a tenant Graph has never heard of would make every later call a 502 (consent
    # missing): that is the fault matrix's business, not the fuzzer's. So a tenant PUT always
    # names the fuzz tenant; elsewhere one in five well-formed ids stays unknown (404).
    registering = case.method.upper() == "PUT" and case.path == "/api/tenants/{tenantId}"
    if isinstance(tenant, str) and _GUID.match(tenant) and (registering or sum(tenant.encode()) % 5):
        params["tenantId"] = world["tenant"]
    run_id = params.get("runId")
    if isinstance(run_id, str) and _RUN.match(run_id) and sum(run_id.encode()) % 3:
        params["runId"] = _pick(world["runs"], run_id)
    user = params.get("user")
    if isinstance(user, str) and 0 < len(user) <= 113 and sum(user.encode()) % 3 == 0:
        params["user"] = _pick(world["users"], user)


def _known_group_ids(case: Any, world: dict[str, Any]) -> None:
    body = case.body
    if not isinstance(body, dict) or not isinstance(body.get("groupIds"), list):
        return
    ids = body["groupIds"]
    if ids and len(ids) <= 5 and all(isinstance(g, str) and _GUID.match(g) for g in ids):
        case.body = {**body, "groupIds": sorted({_pick(world["groups"], g) for g in ids})}


def known_ids(case: Any) -> None:
    """Most well-formed ids are swapped for real ones, so requests reach the deep code paths
    (Graph reads, runs, the roster) instead of stopping at 404; malformed ones stay as made."""
    world = _STATE["world"]
    _known_path_ids(case, world)
    _known_group_ids(case, world)


@schema.parametrize()
@settings(
    deadline=None,
    database=None,
    derandomize=True,  # the same requests on every run: CI failures reproduce
    suppress_health_check=list(HealthCheck),
)
def test_the_api_conforms_to_its_document_under_fuzzing(case: Any, fuzz_app: FunctionsAsgi) -> None:
    known_ids(case)
    case.call_and_validate(
        app=fuzz_app,
        headers={"Authorization": "Bearer fuzz-operator-token"},
        checks=[
            not_a_server_error,
            status_code_conformance,
            content_type_conformance,
            response_schema_conformance,
            response_headers_conformance,
            negative_data_rejection,
        ],
    )


def test_the_fuzzing_sent_at_least_1000_requests() -> None:
    adapter = _STATE.get("adapter")
    if adapter is None:
        # Only when the fuzz test itself was deselected (e.g. `-k`): there is nothing to count.
        pytest.skip("test_the_api_conforms_to_its_document_under_fuzzing was not selected in this run")
    assert adapter.requests >= MIN_REQUESTS, (adapter.requests, adapter.statuses)
    assert not any(status >= 500 for status in adapter.statuses), adapter.statuses
    assert adapter.statuses.get(200, 0) + adapter.statuses.get(202, 0) > 100, adapter.statuses
