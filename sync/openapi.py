"""The OpenAPI 3.1 description of the HTTP API (served at GET /api/openapi.json).

Every schema of a request body or a result comes from its msgspec Struct in sync.models
(`msgspec.json.schema_components`), limits included, so a field added to `Run` or a body
appears here without anyone remembering to; parameters use the constants the service
validates with (sync.validation).
tests/integration/test_api_contract.py checks that every registered route is described here
(and nothing else), and fuzzes the API against this document with schemathesis.
"""

from __future__ import annotations

import copy
from typing import Any

import msgspec

from sync.eligibility import ExclusionReason, ExclusionRules
from sync.models import (
    AuditPage,
    ChangeFeed,
    Connection,
    ConsentStarted,
    ConsentStartInput,
    ExcludedPage,
    Explanation,
    Grant,
    GrantInput,
    GrantList,
    GroupPage,
    RulesInput,
    RulesSaved,
    RulesView,
    RunPage,
    Selection,
    SelectionInput,
    SelectionSaved,
    TenantInput,
    TenantList,
    TenantSaved,
    UserPage,
    UserRefList,
    WhoAmI,
)
from sync.validation import (
    GUID_PATTERN,
    MAX_CURSOR_LENGTH,
    MAX_SEARCH_LENGTH,
    MAX_UPN_LENGTH,
    RUN_ID_PATTERN,
    UPN_PATTERN,
)

REF = "#/components/schemas/{name}"
JSON = "application/json"
PROBLEM = "application/problem+json"
API_VERSION = "1.0.0"


def _ref(name: str) -> dict[str, str]:
    return {"$ref": REF.format(name=name)}


def _json(schema: dict[str, Any]) -> dict[str, Any]:
    return {JSON: {"schema": schema}}


def _problem(description: str) -> dict[str, Any]:
    return {"description": description, "content": {PROBLEM: {"schema": _ref("Problem")}}}


_PROBLEMS = {
    "400": "Bad input: the `detail` names every bad value (and `errors` lists them); nothing changed.",
    "401": "No signed-in caller (App Service Authentication found no Entra ID identity).",
    "403": "A change sent from another site's page (Origin or Sec-Fetch-Site not this app's): refused, "
    "nothing changed.",
    "404": "The tenant (or run, or user) does not exist, or the caller may not see it: the two are "
    "answered alike.",
    "409": "The resource is not in a state that allows this (e.g. the run is not held).",
    "413": "The body is too large.",
    "412": "If-Match named a version (of the selection or the tenant's settings) that is no longer current.",
    "415": "A change not sent as Content-Type: application/json: refused, nothing changed.",
    "500": "Unexpected failure; the Function App logs have the details.",
    "502": "Microsoft Graph refused or failed: the `detail` names the missing permission and the "
    "admin-consent link, or what failed.",
    "503": "The caller cannot be established (App Service Authentication is off) or a setting the "
    "operation needs is missing: data routes refuse all requests.",
}


def _errors(*codes: str) -> dict[str, Any]:
    return {code: _problem(_PROBLEMS[code]) for code in codes}


def _guid(description: str) -> dict[str, Any]:
    return {"type": "string", "pattern": GUID_PATTERN, "description": description}


def _path(name: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {"name": name, "in": "path", "required": True, "schema": schema}


def _query(name: str, schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": False, "schema": schema, "description": description}


TENANT_ID = _path("tenantId", _guid("The customer's Entra tenant id."))
RUN_ID = _path("runId", {"type": "string", "pattern": RUN_ID_PATTERN, "description": "A run id."})
USER_KEY = _path(
    "user",
    {
        "type": "string",
        "minLength": 1,
        "maxLength": MAX_UPN_LENGTH,
        "pattern": "^(?:" + GUID_PATTERN.strip("^$") + "|" + UPN_PATTERN.strip("^$") + ")$",
        "description": "The user's object id or user principal name.",
    },
)
LIMIT = _query("limit", {"type": "integer", "minimum": 1, "maximum": 500}, "Page size.")
LOCATION = {
    "Location": {
        "description": "The run's URL.",
        "required": True,
        "schema": {"type": "string"},
    }
}
TENANT_ETAG = {
    "ETag": {
        "description": 'The version of the tenant\'s settings, quoted ("3"); send it back as If-Match.',
        "required": True,
        "schema": {"type": "string"},
    }
}
IF_MATCH_TENANT = {
    "name": "If-Match",
    "in": "header",
    "required": False,
    "schema": {"type": "string"},
    "description": "The ETag of the tenant's settings this change is based on; * or absent: any.",
}
ETAG = {
    "ETag": {
        "description": 'The selection version, quoted ("3"); send it back as If-Match.',
        "required": True,
        "schema": {"type": "string"},
    }
}


USER_LIST_QUERY = (
    _query("search", {"type": "string", "maxLength": MAX_SEARCH_LENGTH}, "Text in the UPN, name or mail."),
    _query("cursor", {"type": "string", "pattern": GUID_PATTERN}, "nextCursor."),
    _query("format", {"enum": ["json", "csv"]}, "csv: every matching user, as a spreadsheet."),
)


def _hand_written_schemas() -> dict[str, Any]:
    """The few shapes that are not records: problems, health, this document."""
    return {
        "Problem": {
            "type": "object",
            "description": "RFC 9457 problem details.",
            "required": ["type", "title", "status", "detail"],
            "properties": {
                "type": {"type": "string"},
                "title": {"type": "string"},
                "status": {"type": "integer"},
                "detail": {"type": "string", "description": "What went wrong and what to do."},
                "errors": {
                    "type": "array",
                    "description": "One entry per bad value.",
                    "items": {"type": "object", "additionalProperties": {"type": "string"}},
                },
            },
        },
        "Health": {"type": "object", "required": ["status"], "properties": {"status": {"const": "ok"}}},
        "OpenApiDocument": {"type": "object", "required": ["openapi", "paths"]},
    }


def _operation(
    op_id: str,
    summary: str,
    ok: str,
    schema: str,
    *,
    params: list[dict[str, Any]] | None = None,
    body: str | None = None,
    errors: tuple[str, ...] = ("400", "401", "404", "500", "503"),
    headers: dict[str, Any] | None = None,
    description: str | None = None,
    anonymous: bool = False,
    content_types: tuple[str, ...] = (JSON,),
) -> dict[str, Any]:
    content = {
        kind: {"schema": _ref(schema) if kind == JSON else {"type": "string"}} for kind in content_types
    }
    response: dict[str, Any] = {"description": summary}
    if content:
        response["content"] = content
    if headers:
        response["headers"] = headers
    op: dict[str, Any] = {
        "operationId": op_id,
        "summary": summary,
        "parameters": params or [],
        "responses": {ok: response, **_errors(*errors)},
    }
    if description:
        op["description"] = description
    if body:
        op["requestBody"] = {"required": True, "content": _json(_ref(body))}
    if anonymous:
        op["security"] = []
    return op


def _notifications_operation() -> dict[str, Any]:
    """Graph's webhook: 202 for a notification collection, 200 text/plain echoing a validationToken."""
    op = _operation(
        "notifications",
        "Microsoft Graph's change notifications; each must carry its subscription's clientState (a "
        "stranger's queue nothing). With `validationToken`, Graph's handshake: the token is echoed.",
        "202",
        "Health",
        params=[_query("validationToken", {"type": "string"}, "Graph's subscription handshake.")],
        errors=("413", "503"),
        anonymous=True,
        content_types=(),
    )
    op["responses"]["200"] = {
        "description": "The validation token, echoed.",
        "content": {"text/plain": {"schema": {"type": "string"}}},
    }
    # Whatever Graph (or anyone) posts is read and refused item by item: no body is malformed here.
    op["requestBody"] = {"required": False, "content": _json({})}
    return op


def _paths() -> dict[str, Any]:
    tenant = [TENANT_ID]
    grant = [
        _path("principalTenantId", _guid("The partner's own Entra tenant id (the token's tid).")),
        _path("principalId", _guid("The partner user's object id, or the id of a group of that tenant.")),
    ]
    graph_errors = ("400", "401", "404", "500", "502", "503")
    search = _query(
        "search", {"type": "string", "maxLength": MAX_SEARCH_LENGTH}, "Words in the display name."
    )
    return {
        "/api/health": {
            "get": _operation(
                "health", "Liveness (no data, no sign-in).", "200", "Health", errors=("500",), anonymous=True
            )
        },
        "/api/openapi.json": {
            "get": _operation(
                "openapi", "This document.", "200", "OpenApiDocument", errors=("500",), anonymous=True
            )
        },
        "/api/tenants": {
            "get": _operation(
                "tenants_list",
                "Every tenant with its last run (fleet view).",
                "200",
                "TenantList",
                errors=("401", "500", "503"),
            )
        },
        "/api/tenants/{tenantId}": {
            "delete": _operation(
                "tenant_disconnect",
                "Stop syncing a tenant: no nightly runs, its change notifications deleted (the roster and "
                "its history stay; PUT the tenant to resume).",
                "200",
                "Tenant",
                params=tenant,
            ),
            "put": _operation(
                "tenant_put",
                "Register or rename a tenant; set its own removal guard thresholds (a change of them is "
                "previewed: `preview` says what the next run would remove and whether it would be held).",
                "200",
                "TenantSaved",
                params=[*tenant, IF_MATCH_TENANT],
                body="TenantInput",
                errors=("400", "401", "404", "412", "500", "503"),
                headers=TENANT_ETAG,
            ),
        },
        "/api/tenants/{tenantId}/connection": {
            "get": _operation(
                "tenant_connection",
                "Which Graph permissions work in the tenant, with the admin-consent link.",
                "200",
                "Connection",
                params=tenant,
            )
        },
        "/api/tenants/{tenantId}/rules": {
            "get": _operation(
                "tenant_rules_get",
                "The tenant's exclusion rules, with how many users each optional exclusion matched.",
                "200",
                "RulesView",
                params=tenant,
                headers=TENANT_ETAG,
            ),
            "put": _operation(
                "tenant_rules_put",
                "Replace the tenant's exclusion rules: previewed (`preview`: how many users they remove) "
                "and applied by a refresh of their own (`run`), which the removal guard holds if need be.",
                "200",
                "RulesSaved",
                params=[*tenant, IF_MATCH_TENANT],
                body="RulesInput",
                errors=(*graph_errors, "412"),
                headers=TENANT_ETAG,
            ),
        },
        "/api/tenants/{tenantId}/changes": {
            "get": _operation(
                "tenant_changes",
                "The roster change feed: users added, updated, removed, restored and purged, in order, after "
                "`after`; `next` is where to go on from (it survives restarts).",
                "200",
                "ChangeFeed",
                params=[
                    *tenant,
                    _query(
                        "after",
                        {"type": "string", "minLength": 1, "maxLength": MAX_CURSOR_LENGTH},
                        "A cursor.",
                    ),
                    LIMIT,
                ],
            )
        },
        "/api/notifications": {"post": _notifications_operation()},
        "/api/tenants/{tenantId}/audit": {
            "get": _operation(
                "audit_list",
                "The audit trail: every addition, update, removal, restore and purge, and every change of "
                "the selection, the rules, the guard or an approval, with who and why; oldest first.",
                "200",
                "AuditPage",
                params=[
                    *tenant,
                    _query(
                        "user", {"type": "string", "maxLength": MAX_UPN_LENGTH}, "A user's object id or UPN."
                    ),
                    _query("run", {"type": "string", "pattern": RUN_ID_PATTERN}, "A run id."),
                    _query(
                        "cursor",
                        {"type": "string", "minLength": 1, "maxLength": MAX_CURSOR_LENGTH},
                        "nextCursor.",
                    ),
                    _query("format", {"enum": ["json", "csv"]}, "csv: a spreadsheet of the page."),
                    LIMIT,
                ],
                content_types=("application/json", "text/csv"),
            )
        },
        "/api/tenants/{tenantId}/groups": {
            "get": _operation(
                "groups_list",
                "A page of the tenant's groups, live from Graph, with kinds and member counts.",
                "200",
                "GroupPage",
                params=[
                    *tenant,
                    search,
                    _query(
                        "cursor",
                        {"type": "string", "minLength": 1, "maxLength": MAX_CURSOR_LENGTH},
                        "nextCursor of the previous page.",
                    ),
                ],
                errors=graph_errors,
            )
        },
        "/api/tenants/{tenantId}/selection": {
            "get": _operation(
                "selection_get",
                "The saved selection (mode `all`, version 0 when nothing was saved).",
                "200",
                "Selection",
                params=tenant,
                headers=ETAG,
            ),
            "put": _operation(
                "selection_put",
                "Save a selection (If-Match: the version read) and queue the refresh that applies it.",
                "200",
                "SelectionSaved",
                params=[
                    *tenant,
                    {
                        "name": "If-Match",
                        "in": "header",
                        "required": False,
                        "schema": {"type": "string"},
                        "description": "The ETag of the selection this change is based on; * or absent: any.",
                    },
                ],
                body="SelectionInput",
                errors=("400", "401", "404", "412", "500", "502", "503"),
                headers={**ETAG, **LOCATION},
            ),
        },
        "/api/tenants/{tenantId}/preview": {
            "post": _operation(
                "preview",
                "Queue a dry run of a selection that is not saved: who would be added and removed.",
                "202",
                "Run",
                params=tenant,
                body="SelectionInput",
                errors=graph_errors,
                headers=LOCATION,
            )
        },
        "/api/tenants/{tenantId}/refresh": {
            "post": _operation(
                "refresh",
                '"Refresh Users Now": queue a refresh of the saved selection.',
                "202",
                "Run",
                params=tenant,
                headers=LOCATION,
            )
        },
        "/api/tenants/{tenantId}/runs": {
            "get": _operation(
                "runs_list",
                "Runs, newest first.",
                "200",
                "RunPage",
                params=[
                    *tenant,
                    _query("cursor", {"type": "string", "pattern": RUN_ID_PATTERN}, "nextCursor."),
                    LIMIT,
                ],
            )
        },
        "/api/tenants/{tenantId}/runs/{runId}": {
            "get": _operation(
                "run_get",
                "One run: status, counts, per-group numbers, error.",
                "200",
                "Run",
                params=[*tenant, RUN_ID],
            )
        },
        "/api/tenants/{tenantId}/runs/{runId}/approve": {
            "post": _operation(
                "run_approve",
                "Approve a run held by the removal guard: queue a run allowed to remove what it planned.",
                "202",
                "Run",
                params=[*tenant, RUN_ID],
                errors=("400", "401", "404", "409", "500", "503"),
                headers=LOCATION,
            )
        },
        "/api/tenants/{tenantId}/runs/{runId}/undo": {
            "post": _operation(
                "run_undo",
                "Undo a run's removals: the users it removed are active again, recorded as a run.",
                "201",
                "Run",
                params=[*tenant, RUN_ID],
                errors=("400", "401", "404", "409", "500", "503"),
                headers=LOCATION,
                description="Users restored since, removed again by a later run, or past the "
                "REMOVAL_GRACE_DAYS grace period are left alone (the run's `note` says how many). "
                "A later refresh removes them again unless the cause of the removal (a wrong "
                "selection, a Graph fault) has been fixed.",
            )
        },
        "/api/tenants/{tenantId}/users": {
            "get": _operation(
                "users_list",
                "The roster, filtered by status, selected group and text.",
                "200",
                "UserPage",
                params=[
                    *tenant,
                    _query("status", {"enum": ["active", "removed", "all"]}, "Default: active."),
                    _query("group", {"type": "string", "pattern": GUID_PATTERN}, "A selected group's id."),
                    *USER_LIST_QUERY,
                    LIMIT,
                ],
                content_types=("application/json", "text/csv"),
            )
        },
        "/api/tenants/{tenantId}/excluded": {
            "get": _operation(
                "excluded_list",
                "Who the last full run kept off the platform: each user's reasons (the first is the one "
                "the run counts) and the exact rule behind each.",
                "200",
                "ExcludedPage",
                params=[
                    *tenant,
                    _query(
                        "reason",
                        {"enum": [reason.value for reason in ExclusionReason]},
                        "Only users whose first reason is this.",
                    ),
                    *USER_LIST_QUERY,
                    LIMIT,
                ],
                content_types=("application/json", "text/csv"),
            )
        },
        "/api/tenants/{tenantId}/directory/users": {
            "get": _operation(
                "directory_users",
                "Users of the tenant's directory whose display name, mail or user principal name has words "
                "starting with the words of `search` (live from Graph, at most 10).",
                "200",
                "UserRefList",
                params=[
                    *tenant,
                    {
                        "name": "search",
                        "in": "query",
                        "required": True,
                        "schema": {"type": "string", "minLength": 1, "maxLength": MAX_SEARCH_LENGTH},
                        "description": "A name, mail or UPN, or the start of one (e.g. 'Ben Lo').",
                    },
                ],
                errors=graph_errors,
            )
        },
        "/api/tenants/{tenantId}/users/{user}/explain": {
            "get": _operation(
                "user_explain",
                "Why a user is, or is not, on the platform (read live from Graph).",
                "200",
                "Explanation",
                params=[*tenant, USER_KEY],
                errors=graph_errors,
            )
        },
        "/api/whoami": {
            "get": _operation(
                "whoami",
                "The signed-in caller (operator, customer admin or partner) and the tenants they may act on.",
                "200",
                "WhoAmI",
                errors=("401", "500", "503"),
            )
        },
        "/api/grants": {
            "get": _operation(
                "grants_list",
                "Every partner grant (operators only; anyone else gets 404).",
                "200",
                "GrantList",
                errors=("401", "404", "500", "503"),
            )
        },
        "/api/grants/{principalTenantId}/{principalId}": {
            "put": _operation(
                "grant_put",
                "Give a partner's user (object id) or group (id in the token's groups claim) exactly "
                "these tenants (operators only).",
                "200",
                "Grant",
                params=grant,
                body="GrantInput",
            ),
            "delete": {
                "operationId": "grant_delete",
                "summary": "Revoke a partner's grant (operators only).",
                "parameters": grant,
                "responses": {
                    "204": {"description": "Revoked."},
                    **_errors("400", "401", "404", "500", "503"),
                },
            },
        },
        "/api/consent/start": {
            "post": _operation(
                "consent_start",
                "Connect Microsoft 365: a one-time admin-consent link (valid 15 minutes) for the caller's "
                "own tenant (customer admin), a granted registered one (partner: Reconnect), or any "
                "tenant or `organizations` (operator).",
                "201",
                "ConsentStarted",
                body="ConsentStartInput",
            )
        },
        "/api/consent/callback": {
            "get": {
                "operationId": "consent_callback",
                "summary": "Where Microsoft Entra ID sends the administrator back after admin consent "
                "(no sign-in: the one-time state is checked).",
                "description": "Registers the tenant, checks the connection and redirects to the page "
                "(`../ui?consent=granted|refused|invalid&tenant=&connection=&detail=`).",
                "security": [],
                "parameters": [
                    {
                        "name": "state",
                        "in": "query",
                        "required": True,
                        "schema": {"type": "string", "minLength": 1, "maxLength": 256},
                        "description": "The one-time state of the consent request.",
                    },
                    _query("admin_consent", {"type": "string"}, "True when consent was granted."),
                    _query("tenant", {"type": "string"}, "The tenant where consent was granted."),
                    _query("error", {"type": "string"}, "Entra's error code, when not granted."),
                    _query("error_description", {"type": "string"}, "Entra's words for the error."),
                    _query("scope", {"type": "string"}, "The permissions granted."),
                ],
                "responses": {
                    "302": {
                        "description": "To the page, saying how the consent ended.",
                        "headers": {"Location": {"required": True, "schema": {"type": "string"}}},
                    },
                    **_errors("400", "500", "503"),
                },
            }
        },
    }


RECORDS: tuple[type, ...] = (
    TenantList,
    TenantInput,
    TenantSaved,
    RulesSaved,
    AuditPage,
    ChangeFeed,
    Connection,
    ExclusionRules,
    RulesView,
    RulesInput,
    GroupPage,
    ExcludedPage,
    UserRefList,
    Selection,
    SelectionInput,
    SelectionSaved,
    RunPage,
    UserPage,
    Explanation,
    WhoAmI,
    GrantList,
    Grant,
    GrantInput,
    ConsentStartInput,
    ConsentStarted,
)


def build_openapi(server_url: str | None = None) -> dict[str, Any]:
    """The OpenAPI 3.1 document as a dict (JSON-ready)."""
    _, models = msgspec.json.schema_components(RECORDS, ref_template=REF)
    # The API's tenant resource is the public view of the record: documented as "Tenant".
    models["Tenant"] = {**models.pop("TenantView"), "title": "Tenant"}
    models = json_refs_renamed(models, {"TenantView": "Tenant"})
    models["SelectionInput"]["minProperties"] = 1  # an empty body selects nothing: refused
    schemas = {**copy.deepcopy(models), **_hand_written_schemas()}
    document: dict[str, Any] = {
        "openapi": "3.1.0",
        "info": {
            "title": "O365 Groups Sync",
            "version": API_VERSION,
            "description": "Keeps a training platform's roster in step with Microsoft 365 group "
            "membership, for many customer tenants. Every route but health, this document and the "
            "admin-consent callback needs a signed-in Entra ID caller (App Service Authentication): "
            "operators (app role Sync.Operator in the home tenant) act on every tenant, a customer's "
            "administrator (an admin role in `wids`) on their own, a partner on the tenants an operator "
            "granted; anything else answers 404. Changes must be same-origin application/json. Errors "
            "are RFC 9457 problem+json.",
        },
        "servers": [{"url": server_url or "/"}],
        "security": [{"entraId": []}],
        "paths": _with_change_refusals(_paths()),
        "components": {
            "schemas": schemas,
            "securitySchemes": {
                "entraId": {
                    "type": "http",
                    "scheme": "bearer",
                    "bearerFormat": "JWT",
                    "description": "An Entra ID token, checked by App Service Authentication in front of "
                    "the app, which passes the caller on as X-MS-CLIENT-PRINCIPAL; the app decides "
                    "from its tid, oid, roles (Sync.Operator), wids and groups claims which tenants "
                    "the caller may act on.",
                }
            },
        },
    }
    return document


def _with_change_refusals(paths: dict[str, Any]) -> dict[str, Any]:
    """Every signed-in change (POST, PUT, DELETE) can be refused as cross-site (403) or not JSON (415)."""
    for item in paths.values():
        for method, op in item.items():
            if method != "get" and op.get("security") != []:
                op["responses"].update(_errors("403", "415"))
    return paths


def json_refs_renamed(value: Any, renames: dict[str, str]) -> Any:
    """`value` with every `$ref` to a renamed schema pointing at its new name."""
    if isinstance(value, dict):
        out = {key: json_refs_renamed(item, renames) for key, item in value.items()}
        ref = out.get("$ref")
        if isinstance(ref, str):
            for old, new in renames.items():
                if ref == REF.format(name=old):
                    out["$ref"] = REF.format(name=new)
        return out
    if isinstance(value, list):
        return [json_refs_renamed(item, renames) for item in value]
    return value
