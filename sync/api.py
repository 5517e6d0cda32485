"""HTTP triggers: parse, check the caller, call the service, serialize. No rules live here.

Errors are RFC 9457 problem+json. In Azure, App Service Authentication (Entra ID) sits in front
and injects the caller as X-MS-CLIENT-PRINCIPAL. Every data route goes through `guarded`: it
refuses everything (503) unless that header can be trusted (sync.auth), answers 401 without a
caller, refuses cross-site or non-JSON changes (403, 415), then asks the one access rule
(`SyncService.authorize` → `sync.auth.may`) and answers 404 for whatever the caller may not see.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import urlencode

import azure.functions as func
import msgspec

from shared.settings import SettingsError, get_settings
from sync.auth import PRINCIPAL_HEADER, Caller, Need, cross_site_refusal, read_principal
from sync.models import (
    ConsentStartInput,
    ExcludedPage,
    GrantInput,
    GrantList,
    Run,
    RunPage,
    RunReason,
    SelectionInput,
    SelectionSaved,
    TenantInput,
    TenantList,
    TenantView,
    UserPage,
    UserRefList,
)
from sync.openapi import build_openapi
from sync.service import (
    EXCLUDED_CSV_COLUMNS,
    ROSTER_CSV_COLUMNS,
    InvalidInput,
    ServiceError,
    SyncService,
    audit_csv,
    open_service,
    parse_selection_input,
    parse_tenant_input,
    records_csv,
    require_principal_id,
    require_run_id,
    require_tenant_id,
    require_user_key,
)
from sync.validation import MAX_BODY_BYTES

log = logging.getLogger("sync.api")
bp = func.Blueprint()  # type: ignore[no-untyped-call]

# No data and no sign-in: every other route goes through `guarded`. The consent callback checks its
# one-time state instead and Graph's notifications each carry their subscription's clientState; both
# are excluded from App Service Authentication in infra/.
ANONYMOUS_FUNCTIONS = frozenset({"health", "openapi", "consent_callback", "notifications"})
MAX_NOTIFICATION_BYTES = 1024 * 1024


def problem(status: int, title: str, detail: str, **extra: Any) -> func.HttpResponse:
    """An RFC 9457 problem+json response."""
    body = {"type": "about:blank", "title": title, "status": status, "detail": detail, **extra}
    return func.HttpResponse(
        json.dumps(body), status_code=status, mimetype="application/problem+json", charset="utf-8"
    )


def json_response(value: Any, status: int = 200, headers: dict[str, str] | None = None) -> func.HttpResponse:
    """Encode a Struct, list or dict as JSON."""
    return func.HttpResponse(
        msgspec.json.encode(value),
        status_code=status,
        mimetype="application/json",
        charset="utf-8",
        headers=headers,
    )


Handler = Callable[[func.HttpRequest, SyncService, Caller], Awaitable[func.HttpResponse]]
TenantOf = Callable[[func.HttpRequest], str | None]


def _route_tenant(req: func.HttpRequest) -> str | None:
    raw = req.route_params.get("tenantId")
    return raw.lower() if raw is not None else None


async def guarded(
    req: func.HttpRequest, handler: Handler, *, need: Need, tenant_of: TenantOf = _route_tenant
) -> func.HttpResponse:
    """Check the caller, open the service, ask the access rule, run the handler; refusals become problems."""

    async def checked() -> func.HttpResponse:
        settings = get_settings()
        if not settings.principal_header_trusted:
            return problem(
                503,
                "Authentication not configured",
                "App Service Authentication is not enabled on this Function App, so every data request "
                "is refused: without it anyone could forge the caller. Enable it (infra/ does) and "
                "redeploy; locally, run the dev host (make run).",
            )
        principal = read_principal(req.headers.get(PRINCIPAL_HEADER), settings)
        if principal is None:
            return problem(
                401, "Unauthorized", "Sign in first: this API needs a Microsoft Entra ID work account."
            )
        refusal = cross_site_refusal(req.method, req.headers, req.url, settings.app_base_url)
        if refusal is not None:
            return problem(refusal.status, refusal.title, refusal.detail)
        _check_route_ids(req.route_params)
        async with open_service(settings) as service:
            caller = await service.authorize(principal, need, tenant_of(req))
            return await handler(req, service, caller)

    return await _answer(req, checked)


async def _answer(
    req: func.HttpRequest, respond: Callable[[], Awaitable[func.HttpResponse]]
) -> func.HttpResponse:
    """Run a route; refusals become problems, the unexpected a logged 500."""
    try:
        return await respond()
    except ServiceError as exc:
        extra = {**({"errors": exc.errors} if exc.errors else {}), **exc.extensions}
        return problem(exc.status, exc.title, exc.detail, **extra)
    except SettingsError as exc:
        log.error("app settings are wrong: %s", exc)
        return problem(503, "Misconfigured", f"The app's settings are wrong: {exc}")
    except Exception:
        log.exception("unexpected error on %s %s", req.method, req.url)
        return problem(
            500, "Internal error", "The request failed unexpectedly; the Function App logs have the details."
        )


_ROUTE_IDS = {
    "tenantId": require_tenant_id,
    "principalTenantId": require_tenant_id,
    "principalId": require_principal_id,
    "runId": require_run_id,
    "user": require_user_key,
}


def _check_route_ids(params: dict[str, str]) -> None:
    """Every id in the path has its shape checked before anything else reads the request."""
    for name, check in _ROUTE_IDS.items():
        if name in params:
            check(params[name])


def read_json_body(req: func.HttpRequest, allowed: frozenset[str] | None = None) -> dict[str, Any]:
    """The request body as a JSON object; 400 (as ServiceError) when it is not one.

    With `allowed`, a field outside it is refused by name: a misspelt "groupIDs" must not
    silently save mode "all".
    """
    body = req.get_body() or b""
    if len(body) > MAX_BODY_BYTES:
        raise InvalidInput(f"the request body is larger than {MAX_BODY_BYTES // 1024} KiB")
    if not body.strip():
        return {}
    try:
        value = json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise InvalidInput("the request body is not valid JSON") from None
    if not isinstance(value, dict):
        raise InvalidInput("the request body must be a JSON object")
    if allowed is not None:
        unknown = sorted(str(k) for k in value if k not in allowed)
        if unknown:
            expected = ", ".join(sorted(allowed)) or "no fields"
            raise InvalidInput(
                f"unknown field(s) in the request body: {', '.join(u[:64] for u in unknown[:20])}; "
                f"expected {expected}",
                errors=[{"field": u[:64], "problem": "unknown field"} for u in unknown[:100]],
            )
    return value


def body_fields(struct: type[msgspec.Struct]) -> frozenset[str]:
    """The JSON names of a request body's fields."""
    return frozenset(field.encode_name for field in msgspec.structs.fields(struct))


NO_FIELDS: frozenset[str] = frozenset()


def _selection_body(req: func.HttpRequest) -> SelectionInput:
    return parse_selection_input(read_json_body(req, body_fields(SelectionInput)))


def _if_match(req: func.HttpRequest, what: str = "the selection") -> int | None:
    """The version If-Match names (None: absent or *): a stale one is answered 412 by the service."""
    raw = req.headers.get("if-match")
    if raw is None or raw.strip() == "*":
        return None
    text = raw.strip().removeprefix("W/").strip('"')
    if not (text.isascii() and text.isdigit()):
        raise InvalidInput(f"If-Match must be the version of {what}, as its ETag gives it")
    return int(text)


def _etag(version: int) -> dict[str, str]:
    return {"ETag": f'"{version}"'}


def _run_accepted(req: func.HttpRequest, run: Run) -> func.HttpResponse:
    location = f"/api/tenants/{run.tenant_id}/runs/{run.id}"
    return json_response(run, 202, {"Location": location})


def _limit(req: func.HttpRequest, default: int) -> int:
    raw = req.params.get("limit")
    if raw is None:
        return default
    if not (raw.isascii() and raw.isdigit()) or not 1 <= int(raw) <= 500:
        raise InvalidInput("limit must be a whole number from 1 to 500")
    return int(raw)


# -- routes ------------------------------------------------------------------------------------


@bp.function_name("health")
@bp.route(route="health", methods=["GET"], auth_level=func.AuthLevel.ANONYMOUS)
async def health(req: func.HttpRequest) -> func.HttpResponse:
    """Liveness only: no data, so no sign-in."""
    return json_response({"status": "ok"})


@bp.function_name("openapi")
@bp.route(route="openapi.json", methods=["GET"], auth_level=func.AuthLevel.ANONYMOUS)
async def openapi(req: func.HttpRequest) -> func.HttpResponse:
    """The OpenAPI 3.1 description of this API: no data, so no sign-in."""
    return json_response(_openapi_document())


_OPENAPI: dict[str, Any] | None = None


def _openapi_document() -> dict[str, Any]:
    global _OPENAPI
    if _OPENAPI is None:
        _OPENAPI = build_openapi()
    return _OPENAPI


@bp.function_name("tenants_list")
@bp.route(route="tenants", methods=["GET"], auth_level=func.AuthLevel.ANONYMOUS)
async def tenants_list(req: func.HttpRequest) -> func.HttpResponse:
    """The tenants the caller may act on, each with its last run (fleet view)."""

    async def handle(req: func.HttpRequest, svc: SyncService, who: Caller) -> func.HttpResponse:
        return json_response(TenantList(value=[TenantView.of(t) for t in await svc.list_tenants(who)]))

    return await guarded(req, handle, need=Need.SIGNED_IN)


@bp.function_name("tenant_put")
@bp.route(route="tenants/{tenantId}", methods=["PUT"], auth_level=func.AuthLevel.ANONYMOUS)
async def tenant_put(req: func.HttpRequest) -> func.HttpResponse:
    """Register or rename a tenant."""

    async def handle(req: func.HttpRequest, svc: SyncService, who: Caller) -> func.HttpResponse:
        change = parse_tenant_input(read_json_body(req, body_fields(TenantInput)))
        saved = await svc.put_tenant(
            req.route_params["tenantId"],
            change,
            expected_version=_if_match(req, "the tenant's settings"),
            requested_by=who.by,
        )
        return json_response(saved, 200, _etag(saved.version))

    return await guarded(req, handle, need=Need.TENANT)


@bp.function_name("tenant_connection")
@bp.route(route="tenants/{tenantId}/connection", methods=["GET"], auth_level=func.AuthLevel.ANONYMOUS)
async def tenant_connection(req: func.HttpRequest) -> func.HttpResponse:
    """Which Graph permissions work in the tenant."""

    async def handle(req: func.HttpRequest, svc: SyncService, who: Caller) -> func.HttpResponse:
        return json_response(await svc.connection(req.route_params["tenantId"]))

    return await guarded(req, handle, need=Need.TENANT)


@bp.function_name("tenant_rules")
@bp.route(route="tenants/{tenantId}/rules", methods=["GET", "PUT"], auth_level=func.AuthLevel.ANONYMOUS)
async def tenant_rules(req: func.HttpRequest) -> func.HttpResponse:
    """The tenant's exclusion rules: UPN patterns, listed users, an exclusion group, required licences and
    the optional exclusions (service accounts, shared mailboxes), with what each optional one matches."""

    async def handle(req: func.HttpRequest, svc: SyncService, who: Caller) -> func.HttpResponse:
        tid = req.route_params["tenantId"]
        if req.method.upper() == "PUT":
            if not (req.get_body() or b"").strip():
                raise InvalidInput("send the rules as a JSON object; {} removes every rule")
            saved = await svc.set_rules(
                tid,
                read_json_body(req),
                expected_version=_if_match(req, "the tenant's settings"),
                requested_by=who.by,
            )
            return json_response(saved, 200, _etag(saved.version))
        view, version = await svc.rules_view(tid)
        return json_response(view, 200, _etag(version))

    return await guarded(req, handle, need=Need.TENANT)


@bp.function_name("groups_list")
@bp.route(route="tenants/{tenantId}/groups", methods=["GET"], auth_level=func.AuthLevel.ANONYMOUS)
async def groups_list(req: func.HttpRequest) -> func.HttpResponse:
    """A page of the tenant's groups, searchable, with kinds and member counts."""

    async def handle(req: func.HttpRequest, svc: SyncService, who: Caller) -> func.HttpResponse:
        page = await svc.list_groups(
            req.route_params["tenantId"], search=req.params.get("search"), cursor=req.params.get("cursor")
        )
        return json_response(page)

    return await guarded(req, handle, need=Need.TENANT)


@bp.function_name("selection")
@bp.route(route="tenants/{tenantId}/selection", methods=["GET", "PUT"], auth_level=func.AuthLevel.ANONYMOUS)
async def selection(req: func.HttpRequest) -> func.HttpResponse:
    """Read the saved selection, or save a new one (which queues a refresh)."""

    async def handle(req: func.HttpRequest, svc: SyncService, who: Caller) -> func.HttpResponse:
        tid = req.route_params["tenantId"]
        if req.method.upper() == "PUT":
            saved, run = await svc.save_selection(
                tid, _selection_body(req), expected_version=_if_match(req), requested_by=who.by
            )
            payload = SelectionSaved(**msgspec.structs.asdict(saved), run=run)
            return json_response(
                payload,
                200,
                {"ETag": f'"{saved.version}"', "Location": f"/api/tenants/{run.tenant_id}/runs/{run.id}"},
            )
        current = await svc.get_selection(tid)
        return json_response(current, 200, {"ETag": f'"{current.version}"'})

    return await guarded(req, handle, need=Need.TENANT)


@bp.function_name("preview")
@bp.route(route="tenants/{tenantId}/preview", methods=["POST"], auth_level=func.AuthLevel.ANONYMOUS)
async def preview(req: func.HttpRequest) -> func.HttpResponse:
    """Queue a dry run of a selection before saving it."""

    async def handle(req: func.HttpRequest, svc: SyncService, who: Caller) -> func.HttpResponse:
        run = await svc.preview(req.route_params["tenantId"], _selection_body(req), requested_by=who.by)
        return _run_accepted(req, run)

    return await guarded(req, handle, need=Need.TENANT)


@bp.function_name("refresh")
@bp.route(route="tenants/{tenantId}/refresh", methods=["POST"], auth_level=func.AuthLevel.ANONYMOUS)
async def refresh(req: func.HttpRequest) -> func.HttpResponse:
    """ "Refresh Users Now": queue a refresh of the saved selection."""

    async def handle(req: func.HttpRequest, svc: SyncService, who: Caller) -> func.HttpResponse:
        read_json_body(req, NO_FIELDS)  # an empty body (or {}) is fine; anything else is refused
        run = await svc.request_refresh(
            req.route_params["tenantId"], reason=RunReason.MANUAL, requested_by=who.by
        )
        return _run_accepted(req, run)

    return await guarded(req, handle, need=Need.TENANT)


@bp.function_name("runs_list")
@bp.route(route="tenants/{tenantId}/runs", methods=["GET"], auth_level=func.AuthLevel.ANONYMOUS)
async def runs_list(req: func.HttpRequest) -> func.HttpResponse:
    """Runs newest first."""

    async def handle(req: func.HttpRequest, svc: SyncService, who: Caller) -> func.HttpResponse:
        runs, cursor = await svc.list_runs(
            req.route_params["tenantId"], cursor=req.params.get("cursor"), limit=_limit(req, 20)
        )
        return json_response(RunPage(value=runs, next_cursor=cursor))

    return await guarded(req, handle, need=Need.TENANT)


@bp.function_name("run_get")
@bp.route(route="tenants/{tenantId}/runs/{runId}", methods=["GET"], auth_level=func.AuthLevel.ANONYMOUS)
async def run_get(req: func.HttpRequest) -> func.HttpResponse:
    """One run: status, counts, per-group numbers, error."""

    async def handle(req: func.HttpRequest, svc: SyncService, who: Caller) -> func.HttpResponse:
        return json_response(await svc.get_run(req.route_params["tenantId"], req.route_params["runId"]))

    return await guarded(req, handle, need=Need.TENANT)


@bp.function_name("run_approve")
@bp.route(
    route="tenants/{tenantId}/runs/{runId}/approve", methods=["POST"], auth_level=func.AuthLevel.ANONYMOUS
)
async def run_approve(req: func.HttpRequest) -> func.HttpResponse:
    """Approve a run held by the removal guard: queue a run allowed to remove that many."""

    async def handle(req: func.HttpRequest, svc: SyncService, who: Caller) -> func.HttpResponse:
        read_json_body(req, NO_FIELDS)
        run = await svc.approve(req.route_params["tenantId"], req.route_params["runId"], requested_by=who.by)
        return _run_accepted(req, run)

    return await guarded(req, handle, need=Need.TENANT)


@bp.function_name("run_undo")
@bp.route(route="tenants/{tenantId}/runs/{runId}/undo", methods=["POST"], auth_level=func.AuthLevel.ANONYMOUS)
async def run_undo(req: func.HttpRequest) -> func.HttpResponse:
    """Undo a run's removals in one call: its removed users are active again (within the grace period)."""

    async def handle(req: func.HttpRequest, svc: SyncService, who: Caller) -> func.HttpResponse:
        read_json_body(req, NO_FIELDS)
        run = await svc.undo_removals(
            req.route_params["tenantId"], req.route_params["runId"], requested_by=who.by
        )
        location = f"/api/tenants/{run.tenant_id}/runs/{run.id}"
        return json_response(run, 201, {"Location": location})

    return await guarded(req, handle, need=Need.TENANT)


@bp.function_name("users_list")
@bp.route(route="tenants/{tenantId}/users", methods=["GET"], auth_level=func.AuthLevel.ANONYMOUS)
async def users_list(req: func.HttpRequest) -> func.HttpResponse:
    """The roster: filter by status, group and text; `format=csv` downloads every matching user."""

    async def handle(req: func.HttpRequest, svc: SyncService, who: Caller) -> func.HttpResponse:
        fmt = _format(req)

        async def page(cursor: str | None, limit: int) -> tuple[list[Any], str | None]:
            users, next_cursor = await svc.list_users(
                req.route_params["tenantId"],
                status=req.params.get("status"),
                group=req.params.get("group"),
                search=req.params.get("search"),
                cursor=cursor,
                limit=limit,
            )
            return users, next_cursor

        if fmt == "csv":
            first = await page(req.params.get("cursor"), 500)

            async def more(cursor: str | None) -> tuple[list[Any], str | None]:
                return first if cursor is None else await page(cursor, 500)

            return csv_response(records_csv(await every_page(more), ROSTER_CSV_COLUMNS), "users.csv")
        users, cursor = await page(req.params.get("cursor"), _limit(req, 100))
        return json_response(UserPage(value=users, next_cursor=cursor))

    return await guarded(req, handle, need=Need.TENANT)


CSV_PAGES = 200  # a CSV download reads at most this many pages of 500 rows


def _format(req: func.HttpRequest) -> str:
    fmt = str(req.params.get("format", "json"))
    if fmt not in ("json", "csv"):
        raise InvalidInput(f"format must be json or csv; got {fmt[:20]!r}")
    return fmt


def csv_response(text: str, filename: str, headers: dict[str, str] | None = None) -> func.HttpResponse:
    """A CSV download (a spreadsheet opens it)."""
    return func.HttpResponse(
        text,
        status_code=200,
        mimetype="text/csv",
        charset="utf-8",
        headers={"Content-Disposition": f'attachment; filename="{filename}"', **(headers or {})},
    )


async def every_page(fetch: Callable[[str | None], Awaitable[tuple[list[Any], str | None]]]) -> list[Any]:
    """Every row a paged read gives, for a CSV download (at most CSV_PAGES pages)."""
    rows: list[Any] = []
    cursor: str | None = None
    for _ in range(CSV_PAGES):
        page, cursor = await fetch(cursor)
        rows.extend(page)
        if not cursor:
            break
    return rows


@bp.function_name("excluded_list")
@bp.route(route="tenants/{tenantId}/excluded", methods=["GET"], auth_level=func.AuthLevel.ANONYMOUS)
async def excluded_list(req: func.HttpRequest) -> func.HttpResponse:
    """Who the last full run kept off the platform: by first reason and text, each reason's exact rule;
    `format=csv` downloads every matching user."""

    async def handle(req: func.HttpRequest, svc: SyncService, who: Caller) -> func.HttpResponse:
        fmt = _format(req)
        tid = req.route_params["tenantId"]

        async def page(cursor: str | None, limit: int) -> ExcludedPage:
            return await svc.excluded_users(
                tid,
                reason=req.params.get("reason") or None,
                search=req.params.get("search"),
                cursor=cursor,
                limit=limit,
            )

        if fmt == "csv":
            first = await page(req.params.get("cursor"), 500)

            async def more(cursor: str | None) -> tuple[list[Any], str | None]:
                found = first if cursor is None else await page(cursor, 500)
                return found.value, found.next_cursor

            return csv_response(records_csv(await every_page(more), EXCLUDED_CSV_COLUMNS), "excluded.csv")
        return json_response(await page(req.params.get("cursor"), _limit(req, 100)))

    return await guarded(req, handle, need=Need.TENANT)


@bp.function_name("directory_users")
@bp.route(route="tenants/{tenantId}/directory/users", methods=["GET"], auth_level=func.AuthLevel.ANONYMOUS)
async def directory_users(req: func.HttpRequest) -> func.HttpResponse:
    """Users of the tenant's directory whose display name, mail or user principal name starts with the
    words of `search` (live from Microsoft Graph, at most 10): "Why is this user not synced?" by name."""

    async def handle(req: func.HttpRequest, svc: SyncService, who: Caller) -> func.HttpResponse:
        found = await svc.find_users(req.route_params["tenantId"], req.params.get("search") or "")
        return json_response(UserRefList(value=found))

    return await guarded(req, handle, need=Need.TENANT)


@bp.function_name("user_explain")
@bp.route(
    route="tenants/{tenantId}/users/{user}/explain", methods=["GET"], auth_level=func.AuthLevel.ANONYMOUS
)
async def user_explain(req: func.HttpRequest) -> func.HttpResponse:
    """Why a user is, or is not, synced."""

    async def handle(req: func.HttpRequest, svc: SyncService, who: Caller) -> func.HttpResponse:
        return json_response(await svc.explain(req.route_params["tenantId"], req.route_params["user"]))

    return await guarded(req, handle, need=Need.TENANT)


@bp.function_name("audit_list")
@bp.route(route="tenants/{tenantId}/audit", methods=["GET"], auth_level=func.AuthLevel.ANONYMOUS)
async def audit_list(req: func.HttpRequest) -> func.HttpResponse:
    """The tenant's audit trail: every roster change and change of configuration, oldest first;
    `format=csv` for a spreadsheet."""

    async def handle(req: func.HttpRequest, svc: SyncService, who: Caller) -> func.HttpResponse:
        fmt = _format(req)
        page = await svc.audit_trail(
            req.route_params["tenantId"],
            user=req.params.get("user"),
            run=req.params.get("run"),
            cursor=req.params.get("cursor"),
            limit=_limit(req, 100),
        )
        if fmt == "csv":
            link = (
                {"Link": f'<?format=csv&cursor={page.next_cursor}>; rel="next"'} if page.next_cursor else {}
            )
            return csv_response(audit_csv(page.value), "audit.csv", link)
        return json_response(page)

    return await guarded(req, handle, need=Need.TENANT)


@bp.function_name("notifications")
@bp.route(route="notifications", methods=["POST"], auth_level=func.AuthLevel.ANONYMOUS)
async def notifications(req: func.HttpRequest) -> func.HttpResponse:
    """Microsoft Graph's change notifications for every tenant. No sign-in: Graph calls it; each
    notification must carry its subscription's clientState, else nothing is queued for it."""
    token = req.params.get("validationToken")
    if token is not None:  # the handshake before a subscription is made: echo the token, plain text
        return func.HttpResponse(token, status_code=200, mimetype="text/plain", charset="utf-8")
    body = req.get_body() or b""
    if len(body) > MAX_NOTIFICATION_BYTES:
        return problem(413, "Too large", "A change-notification collection is at most a few hundred KiB.")
    try:
        async with open_service() as service:
            received = await service.receive_notifications(body)
    except Exception:
        log.exception("change notifications could not be queued")  # Graph retries for up to 4 hours
        return problem(503, "Try again", "The notifications could not be queued; Graph sends them again.")
    log.info("change notifications: %d accepted, %d refused", received.accepted, received.refused)
    return func.HttpResponse(status_code=202)


@bp.function_name("tenant_changes")
@bp.route(route="tenants/{tenantId}/changes", methods=["GET"], auth_level=func.AuthLevel.ANONYMOUS)
async def tenant_changes(req: func.HttpRequest) -> func.HttpResponse:
    """The roster change feed: added, updated, removed, restored and purged users in order, after a cursor."""

    async def handle(req: func.HttpRequest, svc: SyncService, who: Caller) -> func.HttpResponse:
        feed = await svc.changes(
            req.route_params["tenantId"], after=req.params.get("after"), limit=_limit(req, 100)
        )
        return json_response(feed)

    return await guarded(req, handle, need=Need.TENANT)


@bp.function_name("tenant_disconnect")
@bp.route(route="tenants/{tenantId}", methods=["DELETE"], auth_level=func.AuthLevel.ANONYMOUS)
async def tenant_disconnect(req: func.HttpRequest) -> func.HttpResponse:
    """Stop syncing a tenant: no nightly runs, its change-notification subscriptions deleted (the
    roster and its history stay; PUT the tenant again to resume)."""

    async def handle(req: func.HttpRequest, svc: SyncService, who: Caller) -> func.HttpResponse:
        read_json_body(req, NO_FIELDS)
        tenant = await svc.disconnect(req.route_params["tenantId"], requested_by=who.by)
        return json_response(TenantView.of(tenant))

    return await guarded(req, handle, need=Need.TENANT)


# -- the caller, partner grants, onboarding ------------------------------------------------------


@bp.function_name("whoami")
@bp.route(route="whoami", methods=["GET"], auth_level=func.AuthLevel.ANONYMOUS)
async def whoami(req: func.HttpRequest) -> func.HttpResponse:
    """The signed-in caller, what kind of caller they are, and the tenants they may act on."""

    async def handle(req: func.HttpRequest, svc: SyncService, who: Caller) -> func.HttpResponse:
        return json_response(await svc.whoami(who))

    return await guarded(req, handle, need=Need.SIGNED_IN)


@bp.function_name("grants_list")
@bp.route(route="grants", methods=["GET"], auth_level=func.AuthLevel.ANONYMOUS)
async def grants_list(req: func.HttpRequest) -> func.HttpResponse:
    """Every partner grant (operators only)."""

    async def handle(req: func.HttpRequest, svc: SyncService, who: Caller) -> func.HttpResponse:
        return json_response(GrantList(value=await svc.list_grants()))

    return await guarded(req, handle, need=Need.OPERATOR, tenant_of=_no_tenant)


@bp.function_name("grant_item")
@bp.route(
    route="grants/{principalTenantId}/{principalId}",
    methods=["PUT", "DELETE"],
    auth_level=func.AuthLevel.ANONYMOUS,
)
async def grant_item(req: func.HttpRequest) -> func.HttpResponse:
    """Give a partner's user or group exactly these tenants (PUT), or revoke the grant (DELETE)."""

    async def handle(req: func.HttpRequest, svc: SyncService, who: Caller) -> func.HttpResponse:
        tid, pid = req.route_params["principalTenantId"], req.route_params["principalId"]
        if req.method.upper() == "DELETE":
            read_json_body(req, NO_FIELDS)
            await svc.revoke_grant(tid, pid, by=who.by)
            return func.HttpResponse(status_code=204)
        body = read_json_body(req, body_fields(GrantInput))
        try:
            change = msgspec.convert(body, GrantInput)
        except msgspec.ValidationError as exc:
            raise InvalidInput(f"the grant is not valid: {exc}") from None
        return json_response(await svc.put_grant(tid, pid, change, by=who.by))

    return await guarded(req, handle, need=Need.OPERATOR, tenant_of=_no_tenant)


def _no_tenant(req: func.HttpRequest) -> str | None:
    return None


def _consent_target(req: func.HttpRequest) -> str | None:
    return _consent_body(req).tenant_id.lower()


def _consent_body(req: func.HttpRequest) -> ConsentStartInput:
    body = read_json_body(req, body_fields(ConsentStartInput))
    try:
        return msgspec.convert(body, ConsentStartInput)
    except msgspec.ValidationError as exc:
        raise InvalidInput(f'send {{"tenantId": "<tenant GUID>"}} (or organizations): {exc}') from None


@bp.function_name("consent_start")
@bp.route(route="consent/start", methods=["POST"], auth_level=func.AuthLevel.ANONYMOUS)
async def consent_start(req: func.HttpRequest) -> func.HttpResponse:
    """Connect Microsoft 365: a one-time admin-consent link for a tenant the caller may onboard."""

    async def handle(req: func.HttpRequest, svc: SyncService, who: Caller) -> func.HttpResponse:
        started = await svc.start_consent(who, _consent_body(req))
        return json_response(started, 201)

    return await guarded(req, handle, need=Need.ONBOARD, tenant_of=_consent_target)


CONSENT_PAGE = "../ui"  # from /api/consent/callback, the page at /api/ui
MAX_STATE_LENGTH = 256  # ours are 43 characters


@bp.function_name("consent_callback")
@bp.route(route="consent/callback", methods=["GET"], auth_level=func.AuthLevel.ANONYMOUS)
async def consent_callback(req: func.HttpRequest) -> func.HttpResponse:
    """Where Entra sends the administrator after admin consent. Anonymous: the one-time `state`
    (bound to who asked, for which tenant) is checked instead; the page is told how it went."""

    async def respond() -> func.HttpResponse:
        state = req.params.get("state") or ""
        if not state or len(state) > MAX_STATE_LENGTH:
            raise InvalidInput("this address is for Microsoft Entra ID's reply to an admin-consent request")
        async with open_service() as service:
            finished = await service.finish_consent(dict(req.params))
        query = {"consent": str(finished.outcome)}
        if finished.tenant_id:
            query["tenant"] = finished.tenant_id
        if finished.connection:
            query["connection"] = str(finished.connection)
        if finished.detail:
            query["detail"] = finished.detail[:600]
        location = f"{CONSENT_PAGE}?{urlencode(query)}"
        return func.HttpResponse(status_code=302, headers={"Location": location, "Cache-Control": "no-store"})

    return await _answer(req, respond)
