"""Who may call the API, checked on EVERY registered route, and the input limits.

The routes are read from the app's own registrations (app.get_functions()), so a route
added later fails `test_the_matrix_covers_every_registered_route` until its row is written.

The matrix: every route and method x {operator, the tenant's own admin, another tenant's admin,
the tenant's user without an admin role, a partner with a grant, a partner without one, no
principal, a principal header while nothing may vouch for it}. Allowed callers get the route's
own answer (200, 201, 202, 204, 302); signed-in callers who may not see the tenant get 404,
never 403; no principal is 401; an untrusted header is 503 (the app refuses to guess).
"""

from __future__ import annotations

import base64
import json
import re
import uuid
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import pytest

from devtools.demo_tenant import Tenant as DemoTenant
from devtools.host import encode_principal
from devtools.host.identities import GLOBAL_ADMINISTRATOR, MEMBER_USER, PARTNER_TENANT_ID
from shared.settings import reset_settings_cache
from sync.api import ANONYMOUS_FUNCTIONS, MAX_BODY_BYTES
from sync.models import RosterStatus, RosterUser, Run, RunCounts, RunReason, RunStatus
from sync.roster import RosterStore
from sync.store import SyncStore, new_run_id, utc_now
from sync.validation import MAX_SELECTED_GROUPS
from tests.integration.conftest import DEV_PRINCIPAL, HOME_TENANT_ID, AppUnderTest
from tests.integration.test_fault_matrix import forget_new_tenants  # noqa: F401  (autouse cleanup)
from tests.integration.test_sync_flow import register

TENANT = "00000000-0000-4000-8000-0000000000aa"
RUN_ID = "8234567890123-0a1b2c3d"
USER = "ann@contoso.com"
SAMPLE_PARAMS = {
    "tenantId": TENANT,
    "runId": RUN_ID,
    "user": USER,
    "principalTenantId": PARTNER_TENANT_ID,
    "principalId": "00000000-0000-4000-8000-0000000000bb",
    "asset": "app.js",
}
# The static page (sync/web.py) is not part of the JSON API: it holds no data and has no
# principal check of its own (App Service Authentication guards the whole site in Azure).
STATIC_MODULES = {"sync.web"}
FABRIKAM = "8efef433-65df-437f-9283-e2a918a80821"


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
    assert len(out) >= 21, out  # the whole API, not an empty loop
    return out


def principal(claims: list[dict[str, str]], **extra: Any) -> str:
    envelope = {"auth_typ": "aad", "claims": claims, **extra}
    return base64.b64encode(json.dumps(envelope).encode()).decode()


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


# --- the matrix ----------------------------------------------------------------------------------

PUBLIC = "public"  # no sign-in: health, the OpenAPI document, the page, the consent callback
SIGNED_IN = "signedIn"  # anyone signed in: whoami, the (filtered) tenant list
TENANT_ROUTE = "tenant"  # one registered tenant: its own admin, a granted partner, operators
OPERATOR_ONLY = "operator"  # partner grants

# (function, method) -> (who may call it, the status an allowed caller gets)
MATRIX: dict[tuple[str, str], tuple[str, int]] = {
    ("health", "GET"): (PUBLIC, 200),
    ("openapi", "GET"): (PUBLIC, 200),
    ("web_page", "GET"): (PUBLIC, 200),
    ("web_asset", "GET"): (PUBLIC, 200),
    ("consent_callback", "GET"): (PUBLIC, 302),
    ("notifications", "POST"): (PUBLIC, 202),  # Graph's webhook: each notification's clientState is checked
    ("whoami", "GET"): (SIGNED_IN, 200),
    ("tenants_list", "GET"): (SIGNED_IN, 200),
    ("tenant_put", "PUT"): (TENANT_ROUTE, 200),
    ("tenant_connection", "GET"): (TENANT_ROUTE, 200),
    ("tenant_rules", "GET"): (TENANT_ROUTE, 200),
    ("tenant_rules", "PUT"): (TENANT_ROUTE, 200),
    ("groups_list", "GET"): (TENANT_ROUTE, 200),
    ("selection", "GET"): (TENANT_ROUTE, 200),
    ("selection", "PUT"): (TENANT_ROUTE, 200),
    ("preview", "POST"): (TENANT_ROUTE, 202),
    ("refresh", "POST"): (TENANT_ROUTE, 202),
    ("runs_list", "GET"): (TENANT_ROUTE, 200),
    ("run_get", "GET"): (TENANT_ROUTE, 200),
    ("run_approve", "POST"): (TENANT_ROUTE, 202),
    ("run_undo", "POST"): (TENANT_ROUTE, 201),
    ("users_list", "GET"): (TENANT_ROUTE, 200),
    ("user_explain", "GET"): (TENANT_ROUTE, 200),
    ("excluded_list", "GET"): (TENANT_ROUTE, 200),
    ("directory_users", "GET"): (TENANT_ROUTE, 200),
    ("audit_list", "GET"): (TENANT_ROUTE, 200),
    ("tenant_changes", "GET"): (TENANT_ROUTE, 200),
    ("tenant_disconnect", "DELETE"): (TENANT_ROUTE, 200),
    ("consent_start", "POST"): (TENANT_ROUTE, 201),  # onboarding the tenant: the same callers
    ("grants_list", "GET"): (OPERATOR_ONLY, 200),
    ("grant_item", "PUT"): (OPERATOR_ONLY, 200),
    ("grant_item", "DELETE"): (OPERATOR_ONLY, 204),
}
BODIES: dict[tuple[str, str], Any] = {
    ("tenant_put", "PUT"): {"displayName": "Matrix Tenant"},
    ("tenant_rules", "PUT"): {},
    ("selection", "PUT"): {"mode": "all"},
    ("preview", "POST"): {"mode": "all"},
    ("refresh", "POST"): {},
    ("run_approve", "POST"): {},
    ("run_undo", "POST"): {},
    ("grant_item", "PUT"): {"kind": "user", "tenants": [TENANT]},
    ("grant_item", "DELETE"): {},
    ("tenant_disconnect", "DELETE"): {},
    ("notifications", "POST"): {"value": []},
}

QUERIES: dict[str, dict[str, str]] = {
    "consent_callback": {"state": "not-a-state-this-app-issued"},
    "directory_users": {"search": "a"},  # a name search needs words
}

PARTNER_WITH_GRANT = "ad6eb101-5d80-426b-8b7c-005872201ace"
PARTNER_WITHOUT_GRANT = "0f2b8f0e-2a7d-4d51-9a52-5a4c1c1f0c11"
OWN_ADMIN_ID = "56c49421-8e0d-49a0-9dec-18904840bda3"


@dataclass(frozen=True)
class Column:
    """One kind of caller in the matrix."""

    name: str
    reaches: frozenset[str]  # the kinds of route it may use
    trusted: bool = True  # False: nothing may vouch for the principal header (503)


COLUMNS = [
    Column("operator", frozenset({PUBLIC, SIGNED_IN, TENANT_ROUTE, OPERATOR_ONLY})),
    Column("own-admin", frozenset({PUBLIC, SIGNED_IN, TENANT_ROUTE})),
    Column("other-admin", frozenset({PUBLIC, SIGNED_IN})),
    Column("admin-without-role", frozenset({PUBLIC, SIGNED_IN})),
    Column("partner-with-grant", frozenset({PUBLIC, SIGNED_IN, TENANT_ROUTE})),
    Column("partner-without-grant", frozenset({PUBLIC, SIGNED_IN})),
    Column("no-principal", frozenset({PUBLIC})),
    Column("untrusted-header", frozenset({PUBLIC}), trusted=False),
]


async def put_grant(
    app: AppUnderTest, principal_id: str, tenants: list[str], kind: str = "user", **extra: str
) -> dict[str, Any]:
    """An operator gives a principal of the partner's tenant these tenants (PUT /api/grants/...)."""
    code, grant, _ = await app.http(
        "grant_item",
        "PUT",
        "x",
        route={"principalTenantId": PARTNER_TENANT_ID, "principalId": principal_id},
        body={"kind": kind, "tenants": tenants, **extra},
    )
    assert code == 200, grant
    return dict(grant)


def principal_for(column: str, tenant_id: str) -> str | None:
    """The X-MS-CLIENT-PRINCIPAL of a column's caller, as App Service Authentication shapes it."""
    return {
        "operator": DEV_PRINCIPAL,
        "own-admin": encode_principal(
            "it.admin@test.example",
            tenant_id=tenant_id,
            object_id=OWN_ADMIN_ID,
            directory_roles=[GLOBAL_ADMINISTRATOR, MEMBER_USER],
        ),
        "other-admin": encode_principal(
            "it.admin@fabrikam.com",
            tenant_id=FABRIKAM,
            object_id=str(uuid.uuid4()),
            directory_roles=[GLOBAL_ADMINISTRATOR, MEMBER_USER],
        ),
        "admin-without-role": encode_principal(
            "pat.user@test.example", tenant_id=tenant_id, object_id=str(uuid.uuid4())
        ),
        "partner-with-grant": encode_principal(
            "tech@partner-msp.example", tenant_id=PARTNER_TENANT_ID, object_id=PARTNER_WITH_GRANT
        ),
        "partner-without-grant": encode_principal(
            "other@partner-msp.example", tenant_id=PARTNER_TENANT_ID, object_id=PARTNER_WITHOUT_GRANT
        ),
        "no-principal": None,
        # A perfect operator header, sent where nothing may vouch for it (no App Service
        # Authentication, no dev setting): it is a forgery as far as the app can tell.
        "untrusted-header": DEV_PRINCIPAL,
    }[column]


def expected_status(column: Column, reach: str, ok: int) -> int:
    if reach == PUBLIC:
        return ok
    if not column.trusted:
        return 503
    if column.name == "no-principal":
        return 401
    return ok if reach in column.reaches else 404


async def held_run(store: SyncStore, tenant_id: str) -> str:
    """A run held by the removal guard, waiting for approval."""
    run = Run(
        id=new_run_id(),
        tenant_id=tenant_id,
        status=RunStatus.HELD,
        reason=RunReason.MANUAL,
        requested_at=utc_now(),
        counts=RunCounts(removed=0),
        guard="held for the matrix",
    )
    await store.create_run(run)
    return run.id


async def run_with_a_removal(store: SyncStore, roster: RosterStore, tenant_id: str) -> str:
    """A succeeded run that removed one user, who is still restorable."""
    now = utc_now()
    run = Run(
        id=new_run_id(),
        tenant_id=tenant_id,
        status=RunStatus.SUCCEEDED,
        reason=RunReason.MANUAL,
        requested_at=now,
        finished_at=now,
        counts=RunCounts(removed=1),
    )
    await store.create_run(run)
    user_id = str(uuid.uuid4())
    removed = RosterUser(
        id=user_id,
        user_principal_name=f"gone-{user_id[:8]}@test.example",
        status=RosterStatus.REMOVED,
        added_at=now - timedelta(days=3),
        removed_at=now,
        removed_by_run=run.id,
    )
    await roster.write(tenant_id, [removed])
    return run.id


@pytest.mark.parametrize("column", COLUMNS, ids=[c.name for c in COLUMNS])
async def test_the_access_matrix(
    app: AppUnderTest, own_tenant: DemoTenant, monkeypatch: pytest.MonkeyPatch, column: Column
) -> None:
    tid = own_tenant.tenant_id
    await register(app, own_tenant)
    await put_grant(app, PARTNER_WITH_GRANT, [tid], name="tech@partner-msp.example")
    store, roster = SyncStore(app.settings), RosterStore(app.settings)
    some_run = await held_run(store, tid)
    user = next(u.user_principal_name for u in own_tenant.users.values())
    who = principal_for(column.name, tid)
    if not column.trusted:
        monkeypatch.delenv("DEV_TRUST_PRINCIPAL_HEADER")
        reset_settings_cache()
    wrong: list[str] = []
    cells = 0
    try:
        for route in http_routes(app.functions):
            for method in route.methods:
                cells += 1
                reach, ok = MATRIX[(route.function, method)]
                want = expected_status(column, reach, ok)
                params = {**SAMPLE_PARAMS, "tenantId": tid, "runId": some_run, "user": user}
                if want == ok and route.function == "run_approve":
                    params["runId"] = await held_run(store, tid)
                if want == ok and route.function == "run_undo":
                    params["runId"] = await run_with_a_removal(store, roster, tid)
                if want == ok and (route.function, method) == ("grant_item", "DELETE"):
                    await put_grant(app, params["principalId"], [tid])
                body = BODIES.get((route.function, method))
                if route.function == "consent_start":
                    body = {"tenantId": tid}
                code, answer, _ = await app.http(
                    route.function,
                    method,
                    route.path(params),
                    route={k: params[k] for k in route.params},
                    params=QUERIES.get(route.function),
                    body=body,
                    principal=who,
                )
                if code != want:
                    wrong.append(
                        f"{method} {route.route} ({route.function}): {code}, expected {want}: {answer}"
                    )
                elif want == 404:
                    assert "not one you may see" in answer["detail"] or "nothing here" in answer["detail"]
    finally:
        await store.aclose()
        await roster.aclose()
    assert not wrong, "\n".join(wrong)
    assert cells == len(MATRIX)


def test_the_matrix_covers_every_registered_route(app_functions: dict[str, Any]) -> None:
    registered = {(r.function, m) for r in http_routes(app_functions) for m in r.methods}
    assert registered == set(MATRIX), {
        "registered, no row": sorted(registered - set(MATRIX)),
        "row, not registered": sorted(set(MATRIX) - registered),
    }
    assert len(registered) * len(COLUMNS) >= 200  # the size the README quotes


# --- what each caller sees -------------------------------------------------------------------


async def test_each_caller_lists_only_what_it_may_see_and_whoami_says_who(
    app: AppUnderTest, own_tenant: DemoTenant
) -> None:
    tid = own_tenant.tenant_id
    await register(app, own_tenant)
    await put_grant(app, PARTNER_WITH_GRANT, [tid, TENANT])  # TENANT is not registered: not listed
    seen = {}
    for column in ("operator", "own-admin", "other-admin", "admin-without-role", "partner-with-grant"):
        who = principal_for(column, tid)
        code, listed, _ = await app.http("tenants_list", "GET", "tenants", principal=who)
        assert code == 200, listed
        code, me, _ = await app.http("whoami", "GET", "whoami", principal=who)
        assert code == 200, me
        seen[column] = ({t["id"] for t in listed["value"]}, me)
    assert tid in seen["operator"][0]
    assert (
        seen["operator"][1]["kind"] == "operator"
        and seen["operator"][1]["connectTenantId"] == "organizations"
    )
    assert seen["own-admin"][0] == {tid}
    assert seen["own-admin"][1]["kind"] == "customerAdmin" and seen["own-admin"][1]["connectTenantId"] is None
    assert seen["own-admin"][1]["by"] == f"it.admin@test.example (tid {tid}, oid {OWN_ADMIN_ID})"
    assert seen["other-admin"][0] == set()
    assert seen["other-admin"][1]["connectTenantId"] == FABRIKAM  # may connect its own tenant
    assert seen["admin-without-role"][0] == set() and seen["admin-without-role"][1]["kind"] == "partner"
    assert "administrator role" in seen["admin-without-role"][1]["note"]
    assert seen["partner-with-grant"][0] == {tid}
    assert [t["id"] for t in seen["partner-with-grant"][1]["tenants"]] == [tid]


async def test_a_grant_can_name_a_group_of_the_partners_tenant(
    app: AppUnderTest, own_tenant: DemoTenant
) -> None:
    tid, helpdesk = own_tenant.tenant_id, str(uuid.uuid4())
    await register(app, own_tenant)
    grant = await put_grant(app, helpdesk, [tid], "group", name="MSP helpdesk")
    assert grant["grantedBy"].startswith("operator@groupsync.example (tid "), grant
    member = encode_principal(
        "a@partner-msp.example", tenant_id=PARTNER_TENANT_ID, object_id=str(uuid.uuid4()), groups=[helpdesk]
    )
    code, _, _ = await app.http("selection", "GET", "x", route={"tenantId": tid}, principal=member)
    assert code == 200
    # The same group id claimed by someone of another tenant grants nothing.
    elsewhere = encode_principal(
        "a@fabrikam.com", tenant_id=FABRIKAM, object_id=str(uuid.uuid4()), groups=[helpdesk]
    )
    code, _, _ = await app.http("selection", "GET", "x", route={"tenantId": tid}, principal=elsewhere)
    assert code == 404
    # A user's grant is not matched by a group claim carrying the same id.
    user_id = str(uuid.uuid4())
    await put_grant(app, user_id, [tid])
    posing = encode_principal(
        "b@partner-msp.example", tenant_id=PARTNER_TENANT_ID, object_id=str(uuid.uuid4()), groups=[user_id]
    )
    code, _, _ = await app.http("selection", "GET", "x", route={"tenantId": tid}, principal=posing)
    assert code == 404
    # Revoking ends access.
    code, _, _ = await app.http(
        "grant_item",
        "DELETE",
        "x",
        route={"principalTenantId": PARTNER_TENANT_ID, "principalId": helpdesk},
        body={},
    )
    assert code == 204
    code, _, _ = await app.http("selection", "GET", "x", route={"tenantId": tid}, principal=member)
    assert code == 404


async def test_an_admin_loses_access_with_the_role_and_an_operator_needs_the_home_tenant(
    app: AppUnderTest, own_tenant: DemoTenant, monkeypatch: pytest.MonkeyPatch
) -> None:
    tid = own_tenant.tenant_id
    await register(app, own_tenant)
    groups_admin = encode_principal(
        "groups.admin@test.example", tenant_id=tid, directory_roles=["fdd7a751-b60b-444a-984c-02652fe8fa1c"]
    )
    code, _, _ = await app.http("runs_list", "GET", "x", route={"tenantId": tid}, principal=groups_admin)
    assert code == 200  # Groups Administrator is one of ADMIN_ROLE_IDS by default
    monkeypatch.setenv("ADMIN_ROLE_IDS", GLOBAL_ADMINISTRATOR)  # the set is a setting
    reset_settings_cache()
    code, _, _ = await app.http("runs_list", "GET", "x", route={"tenantId": tid}, principal=groups_admin)
    assert code == 404
    # Sync.Operator from a tenant that is not HOME_TENANT_ID is nobody special.
    foreign_operator = encode_principal("op@test.example", ["Sync.Operator"], tenant_id=tid)
    code, _, _ = await app.http("grants_list", "GET", "grants", principal=foreign_operator)
    assert code == 404
    home_user = encode_principal("someone@groupsync.example", tenant_id=HOME_TENANT_ID)
    code, _, _ = await app.http("runs_list", "GET", "x", route={"tenantId": tid}, principal=home_user)
    assert code == 404  # the home tenant without the app role: nothing either
    monkeypatch.delenv("HOME_TENANT_ID")  # no home tenant configured: no operators at all
    reset_settings_cache()
    code, _, _ = await app.http("grants_list", "GET", "grants", principal=DEV_PRINCIPAL)
    assert code == 404


async def test_an_admin_of_an_unregistered_tenant_may_only_start_connecting_it(app: AppUnderTest) -> None:
    tid = str(uuid.uuid4())
    admin = encode_principal("it.admin@new.example", tenant_id=tid, directory_roles=[GLOBAL_ADMINISTRATOR])
    code, me, _ = await app.http("whoami", "GET", "whoami", principal=admin)
    assert code == 200 and me["connectTenantId"] == tid and me["tenants"] == []
    for function, method, body in (
        ("selection", "GET", None),
        ("tenant_put", "PUT", {"displayName": "Mine"}),
    ):
        code, problem, _ = await app.http(
            function, method, "x", route={"tenantId": tid}, body=body, principal=admin
        )
        assert code == 404, (function, problem)
    code, started, _ = await app.http(
        "consent_start", "POST", "consent/start", body={"tenantId": tid}, principal=admin
    )
    assert code == 201 and f"/{tid}/adminconsent?" in started["url"], started
    for target in ("organizations", FABRIKAM):
        code, problem, _ = await app.http(
            "consent_start", "POST", "consent/start", body={"tenantId": target}, principal=admin
        )
        assert code == 404, (target, problem)
    code, started, _ = await app.http(
        "consent_start", "POST", "consent/start", body={"tenantId": "organizations"}
    )
    assert code == 201 and "/organizations/adminconsent?" in started["url"]  # the operator


# --- unreadable and untrusted principals ---------------------------------------------------------


@pytest.mark.parametrize(
    "who",
    [
        "not base64 at all!",
        base64.b64encode(b"not json").decode(),
        base64.b64encode(b"[1, 2]").decode(),
        principal("claims-not-a-list"),  # type: ignore[arg-type]
        principal([["roles", "Sync.Operator"]]),  # type: ignore[list-item]
        "A" * 20_000,  # larger than any real principal header
        base64.b64encode(json.dumps({"auth_typ": "github", "claims": []}).encode()).decode(),
        principal(
            [{"typ": "roles", "val": "Sync.Operator"}, {"typ": "tid", "val": HOME_TENANT_ID}]
        ),  # no oid
        principal([{"typ": "oid", "val": OWN_ADMIN_ID}, {"typ": "tid", "val": "home"}]),  # tid not a GUID
    ],
    ids=[
        "not-base64",
        "not-json",
        "not-object",
        "claims-not-list",
        "claim-not-object",
        "huge",
        "not-entra",
        "no-object-id",
        "bad-tenant-id",
    ],
)
async def test_an_unreadable_or_incomplete_principal_is_401_never_500(app: AppUnderTest, who: str) -> None:
    for route, method in data_routes(app.functions):
        code, problem, _ = await call(app, route, method, who=who)
        assert code == 401, (route.function, method, problem)


async def test_the_role_claim_type_named_by_role_typ_counts(app: AppUnderTest) -> None:
    ids = [{"typ": "tid", "val": HOME_TENANT_ID}, {"typ": "oid", "val": OWN_ADMIN_ID}]
    mapped = principal(
        [
            {"typ": "http://schemas.microsoft.com/ws/2008/06/identity/claims/role", "val": "Sync.Operator"},
            *ids,
        ]
    )
    code, me, _ = await app.http("whoami", "GET", "whoami", principal=mapped)
    assert code == 200 and me["kind"] == "operator", me
    custom = principal([{"typ": "appRole", "val": "Sync.Operator"}, *ids], role_typ="appRole")
    code, me, _ = await app.http("whoami", "GET", "whoami", principal=custom)
    assert code == 200 and me["kind"] == "operator", me
    for wrong in ("sync.operator", "Sync.Admin"):  # exact names; the old role means nothing now
        code, me, _ = await app.http(
            "whoami", "GET", "whoami", principal=principal([{"typ": "roles", "val": wrong}, *ids])
        )
        assert code == 200 and me["kind"] == "partner", (wrong, me)
    as_group = principal([{"typ": "groups", "val": "Sync.Operator"}, *ids])  # a group claim is not a role
    code, me, _ = await app.http("whoami", "GET", "whoami", principal=as_group)
    assert me["kind"] == "partner"


async def test_the_header_is_believed_only_behind_app_service_authentication_or_the_dev_setting(
    app: AppUnderTest, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def status(function: str = "tenants_list", who: str | None = DEV_PRINCIPAL) -> int:
        reset_settings_cache()
        code, _, _ = await app.http(function, "GET", "x", principal=who)
        return code

    assert await status() == 200  # DEV_TRUST_PRINCIPAL_HEADER=true with GRAPH_AUTH=demo (app_env)
    monkeypatch.delenv("DEV_TRUST_PRINCIPAL_HEADER")
    monkeypatch.setenv("WEBSITE_SITE_NAME", "o365-groups-sync")  # App Service sets it on every site
    assert await status() == 503  # nothing vouches for the header: even a perfect one is refused
    assert await status(who=None) == 503
    assert await status("whoami") == 503
    monkeypatch.delenv("WEBSITE_SITE_NAME")
    assert await status() == 503  # `func start`, a container: the same (it used to trust it here)
    assert await status("health", None) == 200 and await status("openapi", None) == 200  # no data
    monkeypatch.setenv("WEBSITE_AUTH_ENABLED", "False")
    assert await status() == 503
    monkeypatch.setenv("WEBSITE_AUTH_ENABLED", "True")  # App Service Authentication is on
    assert await status() == 200
    assert await status(who=None) == 401
    monkeypatch.delenv("WEBSITE_AUTH_ENABLED")
    monkeypatch.setenv("DEV_TRUST_PRINCIPAL_HEADER", "true")
    monkeypatch.setenv("GRAPH_AUTH", "default")  # a real Graph: the dev setting is refused outright
    reset_settings_cache()
    code, problem, _ = await app.http("tenants_list", "GET", "x")
    assert code == 503 and "DEV_TRUST_PRINCIPAL_HEADER" in problem["detail"], problem
    reset_settings_cache()


async def test_the_public_routes_need_no_caller(app: AppUnderTest) -> None:
    code, body, _ = await app.http("health", "GET", "health", principal=None)
    assert code == 200 and body == {"status": "ok"}
    code, body, headers = await app.http("openapi", "GET", "openapi.json", principal=None)
    assert code == 200 and body["openapi"].startswith("3.1") and headers["Content-Type"] == "application/json"


# --- changes from other sites ------------------------------------------------------------------


async def test_a_cross_site_change_is_refused_and_changes_nothing(
    app: AppUnderTest, own_tenant: DemoTenant
) -> None:
    tid = own_tenant.tenant_id
    await register(app, own_tenant)
    route = {"tenantId": tid}
    refused: list[tuple[dict[str, str], int]] = [
        ({"Origin": "https://evil.example"}, 403),
        ({"Origin": "null"}, 403),
        ({"Origin": "http://127.0.0.1:7071.evil.example"}, 403),
        ({"Sec-Fetch-Site": "cross-site"}, 403),
        ({"Sec-Fetch-Site": "same-site", "Origin": "http://127.0.0.1:7071"}, 403),
        ({"Content-Type": "text/plain"}, 415),  # what an HTML form or a no-preflight fetch can send
        ({"Content-Type": "application/x-www-form-urlencoded", "Origin": "https://evil.example"}, 403),
    ]
    for headers, want in refused:
        for function, method, body in (
            ("refresh", "POST", {}),
            ("selection", "PUT", {"mode": "all"}),
            ("tenant_put", "PUT", {"displayName": "Pwned"}),
        ):
            code, problem, answered = await app.http(
                function, method, "x", route=route, body=body, headers=headers
            )
            assert code == want, (headers, function, problem)
            assert answered["Content-Type"] == "application/problem+json"
    assert await app.queued_bodies() == []
    code, selection, _ = await app.http("selection", "GET", "x", route=route)
    assert selection["version"] == 0
    code, listed, _ = await app.http("tenants_list", "GET", "tenants")
    assert "Pwned" not in {t["displayName"] for t in listed["value"]}
    # The page itself (same origin) and clients that are not browsers (no Origin) get through.
    for headers in ({"Origin": "http://127.0.0.1:7071", "Sec-Fetch-Site": "same-origin"}, {}):
        code, run, _ = await app.http("refresh", "POST", "x", route=route, body={}, headers=headers)
        assert code == 202, run
    # Reads are not changes: a GET from anywhere is answered by the access rule alone.
    code, _, _ = await app.http(
        "selection", "GET", "x", route=route, headers={"Origin": "https://evil.example"}
    )
    assert code == 200


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
