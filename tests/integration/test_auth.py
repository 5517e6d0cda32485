"""Who may call the API, checked on EVERY registered data route, and the input limits.

The routes are read from the app's own registrations (app.get_functions()), so a route
added later is covered without anyone remembering to add it here.
"""

from __future__ import annotations

import base64
import json
import re
from dataclasses import dataclass
from typing import Any

import pytest

from devtools.demo_tenant import Tenant as DemoTenant
from sync.api import ANONYMOUS_FUNCTIONS, MAX_BODY_BYTES, REQUIRED_ROLE
from sync.validation import MAX_SELECTED_GROUPS
from tests.integration.conftest import DEV_PRINCIPAL, AppUnderTest
from tests.integration.test_fault_matrix import forget_new_tenants  # noqa: F401  (autouse cleanup)
from tests.integration.test_sync_flow import register

TENANT = "00000000-0000-4000-8000-0000000000aa"
RUN_ID = "8234567890123-0a1b2c3d"
USER = "ann@contoso.com"
SAMPLE_PARAMS = {"tenantId": TENANT, "runId": RUN_ID, "user": USER}
# The static page (sync/web.py) is not part of the JSON API: it holds no data and has no
# principal check of its own (App Service Authentication guards the whole site in Azure).
STATIC_MODULES = {"sync.web"}


@dataclass(frozen=True)
class Route:
    function: str
    route: str
    methods: tuple[str, ...]
    module: str

    @property
    def params(self) -> list[str]:
        return re.findall(r"{(\w+)", self.route)

    def path(self, values: dict[str, str] | None = None) -> str:
        values = {**SAMPLE_PARAMS, **(values or {})}
        return re.sub(r"{(\w+)[^}]*}", lambda m: values[m.group(1)], self.route)


def http_routes(functions: dict[str, Any]) -> list[Route]:
    """Every HTTP-triggered function with its route and methods, from the bindings."""
    routes = []
    for name, fn in functions.items():
        for binding in json.loads(fn.get_function_json())["bindings"]:
            if binding["type"] == "httpTrigger":
                routes.append(
                    Route(
                        function=name,
                        route=binding["route"],
                        methods=tuple(m.upper() for m in binding["methods"]),
                        module=fn.get_user_function().__module__,
                    )
                )
    return routes


def data_routes(functions: dict[str, Any]) -> list[tuple[Route, str]]:
    out = [
        (route, method)
        for route in http_routes(functions)
        if route.module not in STATIC_MODULES and route.function not in ANONYMOUS_FUNCTIONS
        for method in route.methods
    ]
    assert len(out) >= 16, out  # the whole API, not an empty loop
    return out


def principal(claims: list[dict[str, str]], **extra: Any) -> str:
    return base64.b64encode(json.dumps({"auth_typ": "aad", "claims": claims, **extra}).encode()).decode()


async def call(
    app: AppUnderTest, route: Route, method: str, *, who: str | None, **kw: Any
) -> tuple[int, Any, Any]:
    return await app.http(
        route.function,
        method,
        route.path(),
        route={p: SAMPLE_PARAMS[p] for p in route.params},
        principal=who,
        **kw,
    )


def test_every_http_function_is_either_a_data_route_or_known_public(app_functions: dict[str, Any]) -> None:
    routes = http_routes(app_functions)
    public = {r.function for r in routes if r.function in ANONYMOUS_FUNCTIONS or r.module in STATIC_MODULES}
    assert public == {"health", "openapi", "notifications"} | {
        r.function for r in routes if r.module in STATIC_MODULES
    }
    assert {"run_undo", "tenant_put", "selection", "user_explain"} <= {
        r.function for r, _ in data_routes(app_functions)
    }


async def test_every_data_route_is_401_without_a_caller(app: AppUnderTest) -> None:
    for route, method in data_routes(app.functions):
        code, problem, headers = await call(app, route, method, who=None)
        assert code == 401, (route.function, method, problem)
        assert headers["Content-Type"] == "application/problem+json" and "Sign in" in problem["detail"]


@pytest.mark.parametrize(
    "who",
    [
        principal([{"typ": "roles", "val": "Sync.Reader"}, {"typ": "name", "val": "eve@contoso.com"}]),
        principal([{"typ": "preferred_username", "val": "eve@contoso.com"}]),  # signed in, no role
        principal([{"typ": "roles", "val": "sync.admin"}]),  # role names are exact
        principal([{"typ": "groups", "val": REQUIRED_ROLE}]),  # a group claim is not a role
    ],
    ids=["other-role", "no-role", "wrong-case", "group-claim"],
)
async def test_every_data_route_is_403_without_the_role(app: AppUnderTest, who: str) -> None:
    for route, method in data_routes(app.functions):
        code, problem, _ = await call(app, route, method, who=who)
        assert code == 403, (route.function, method, problem)
        assert REQUIRED_ROLE in problem["detail"]


@pytest.mark.parametrize(
    "who",
    [
        "not base64 at all!",
        base64.b64encode(b"not json").decode(),
        base64.b64encode(b"[1, 2]").decode(),
        principal("claims-not-a-list"),  # type: ignore[arg-type]
        principal([["roles", "Sync.Admin"]]),  # type: ignore[list-item]
        "A" * 20_000,  # larger than any real principal header
    ],
    ids=["not-base64", "not-json", "not-object", "claims-not-list", "claim-not-object", "huge"],
)
async def test_an_unreadable_principal_is_401_never_500(app: AppUnderTest, who: str) -> None:
    for route, method in data_routes(app.functions):
        code, problem, _ = await call(app, route, method, who=who)
        assert code == 401, (route.function, method, problem)


async def test_the_role_claim_type_named_by_role_typ_counts(app: AppUnderTest) -> None:
    who = principal(
        [{"typ": "http://schemas.microsoft.com/ws/2008/06/identity/claims/role", "val": REQUIRED_ROLE}]
    )
    code, body, _ = await app.http("tenants_list", "GET", "tenants", principal=who)
    assert code == 200, body
    custom = principal([{"typ": "appRole", "val": REQUIRED_ROLE}], role_typ="appRole")
    code, body, _ = await app.http("tenants_list", "GET", "tenants", principal=custom)
    assert code == 200, body


async def test_in_azure_without_platform_auth_every_data_route_fails_closed(
    app: AppUnderTest, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WEBSITE_SITE_NAME", "o365-groups-sync")  # App Service sets it on every site
    monkeypatch.delenv("WEBSITE_AUTH_ENABLED", raising=False)
    for route, method in data_routes(app.functions):
        # Even a perfect principal header: without App Service Authentication anyone could forge it.
        code, problem, _ = await call(app, route, method, who=DEV_PRINCIPAL)
        assert code == 503, (route.function, method, problem)
        assert "Authentication" in problem["detail"]
    monkeypatch.setenv("WEBSITE_AUTH_ENABLED", "False")
    code, _, _ = await app.http("tenants_list", "GET", "tenants")
    assert code == 503
    code, _, _ = await app.http("health", "GET", "health", principal=None)
    assert code == 200  # no data: still answers
    code, _, _ = await app.http("openapi", "GET", "openapi.json", principal=None)
    assert code == 200
    monkeypatch.setenv("WEBSITE_AUTH_ENABLED", "true")
    code, body, _ = await app.http("tenants_list", "GET", "tenants")
    assert code == 200, body
    code, _, _ = await app.http("tenants_list", "GET", "tenants", principal=None)
    assert code == 401


async def test_the_public_routes_need_no_caller(app: AppUnderTest) -> None:
    code, body, _ = await app.http("health", "GET", "health", principal=None)
    assert code == 200 and body == {"status": "ok"}
    code, body, headers = await app.http("openapi", "GET", "openapi.json", principal=None)
    assert code == 200 and body["openapi"].startswith("3.1") and headers["Content-Type"] == "application/json"


# --- route ids and input limits: clear 400s, nothing changed ---------------------------------


BAD_TENANT_IDS = ["contoso", TENANT + "\n", TENANT.replace("-", ""), "{" + TENANT + "}", "x" * 5000]


async def test_every_route_refuses_a_malformed_tenant_id(app: AppUnderTest) -> None:
    for route, method in data_routes(app.functions):
        if "tenantId" not in route.params:
            continue
        for bad in BAD_TENANT_IDS:
            code, problem, _ = await app.http(
                route.function,
                method,
                route.path({"tenantId": bad}),
                route={**{p: SAMPLE_PARAMS[p] for p in route.params}, "tenantId": bad},
                body={"displayName": "x"} if method == "PUT" and route.function == "tenant_put" else None,
            )
            assert code == 400, (route.function, method, bad, problem)
            assert "not a GUID" in problem["detail"] and len(problem["detail"]) < 300


async def test_run_ids_and_user_keys_are_checked(app: AppUnderTest, own_tenant: DemoTenant) -> None:
    await register(app, own_tenant)
    tid = own_tenant.tenant_id
    for function, method in (("run_get", "GET"), ("run_approve", "POST"), ("run_undo", "POST")):
        for bad in ("latest", "8234567890123-0A1B2C3D", "8234567890123-0a1b2c3", RUN_ID + "\n", "1" * 500):
            code, problem, _ = await app.http(function, method, "x", route={"tenantId": tid, "runId": bad})
            assert code == 400 and "run id" in problem["detail"], (function, bad, problem)
        code, problem, _ = await app.http(function, method, "x", route={"tenantId": tid, "runId": RUN_ID})
        assert code == 404, problem
    for bad in ("x" * 114, "no-at-sign", "two@at@signs", "space @contoso.com", "tab\t@contoso.com"):
        code, problem, _ = await app.http("user_explain", "GET", "x", route={"tenantId": tid, "user": bad})
        assert code == 400 and "user" in problem["detail"], (bad, problem)
    code, problem, _ = await app.http(
        "user_explain", "GET", "x", route={"tenantId": tid, "user": "nobody@nowhere.example"}
    )
    assert code == 404, problem


@pytest.mark.parametrize(
    ("function", "method", "body", "words"),
    [
        ("tenant_put", "PUT", b"x" * (MAX_BODY_BYTES + 1), "larger than 64 KiB"),
        ("tenant_put", "PUT", b"{not json", "not valid JSON"),
        ("tenant_put", "PUT", b"[]", "JSON object"),
        ("tenant_put", "PUT", {"displayName": "x" * 257}, "longer than 256"),
        ("tenant_put", "PUT", {"displayName": " " + "x" * 256}, "longer than 256"),
        ("tenant_put", "PUT", {"displayName": "   "}, "non-empty"),
        ("tenant_put", "PUT", {"displayName": "a\u0000b"}, "control characters"),
        (
            "tenant_put",
            "PUT",
            {"displayName": "x", "extra": 1},
            "unknown field(s) in the request body: extra",
        ),
        ("selection", "PUT", {}, "an empty body selects nothing"),
        ("selection", "PUT", {"groupIDs": [TENANT]}, "unknown field(s) in the request body: groupIDs"),
        ("selection", "PUT", {"mode": None}, "must not be null"),
        ("selection", "PUT", {"groupIds": [TENANT] * (MAX_SELECTED_GROUPS + 1)}, "at most 1000"),
        ("selection", "PUT", {"groupIds": [TENANT + "\n"]}, "not GUIDs"),
        ("preview", "POST", {"groupIds": "all"}, "must be a list"),
        ("refresh", "POST", {"dryRun": True}, "unknown field"),
        ("tenant_rules", "PUT", {"upnPatterns": ["x"] * 101}, "at most 100"),
        ("tenant_rules", "PUT", {"upnPatterns": ["svc-*"], "excludedUsers": "bob"}, "list of strings"),
        ("tenant_rules", "PUT", b"[" * 100_000, "larger than 64 KiB"),
        ("tenant_rules", "PUT", b"[" * 60_000, "not valid JSON"),  # too deep to parse: 400, not 500
    ],
)
async def test_bodies_are_limited_with_clear_400s_and_nothing_changes(
    app: AppUnderTest, own_tenant: DemoTenant, function: str, method: str, body: Any, words: str
) -> None:
    await register(app, own_tenant)
    tid = own_tenant.tenant_id
    _, tenant_before, _ = await app.http("tenants_list", "GET", "tenants")
    code, problem, headers = await app.http(function, method, "x", route={"tenantId": tid}, body=body)
    assert code == 400, problem
    assert headers["Content-Type"] == "application/problem+json"
    assert words in problem["detail"], problem["detail"]
    _, tenant_after, _ = await app.http("tenants_list", "GET", "tenants")
    assert tenant_after == tenant_before
    assert await app.queued_bodies() == []
    code, selection, _ = await app.http("selection", "GET", "x", route={"tenantId": tid})
    assert selection["version"] == 0


@pytest.mark.parametrize(
    ("function", "params", "words"),
    [
        ("groups_list", {"search": "x" * 121}, "longer than 120"),
        ("groups_list", {"search": "a\u0001"}, "control characters"),
        ("groups_list", {"cursor": "c" * 2049}, "cursor"),
        ("runs_list", {"limit": "0"}, "limit"),
        ("runs_list", {"limit": "501"}, "limit"),
        ("runs_list", {"limit": "\u0663"}, "limit"),  # a digit to isdigit(), not to us
        ("runs_list", {"cursor": "nope"}, "cursor"),
        ("users_list", {"status": ""}, "status must be"),
        ("users_list", {"status": "gone"}, "status must be"),
        ("users_list", {"group": "sales"}, "not a GUID"),
        ("users_list", {"search": "x" * 121}, "longer than 120"),
        ("users_list", {"cursor": "x"}, "cursor"),
    ],
)
async def test_query_parameters_are_limited_with_clear_400s(
    app: AppUnderTest, own_tenant: DemoTenant, function: str, params: dict[str, str], words: str
) -> None:
    await register(app, own_tenant)
    code, problem, _ = await app.http(
        function, "GET", "x", route={"tenantId": own_tenant.tenant_id}, params=params
    )
    assert code == 400 and words in problem["detail"], problem
