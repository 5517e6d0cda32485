"""The operations both front ends use: the HTTP API (sync.api) and the CLI (sync.__main__).

Input is validated here, once, so both front ends refuse the same things with the same words;
nothing is written until every check has passed. Reading the directory, classifying and writing
the roster are not done here: a refresh or an undo is handed to `sync.engine`.
"""

from __future__ import annotations

import asyncio
import csv
import io
import json
import logging
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import msgspec

from shared.graph import GraphClients, GraphHttpOptions, admin_consent_url
from shared.settings import Settings, get_settings
from shared.storage import ensure_storage, queue_client
from shared.telemetry import log_tenant_skipped
from sync import onboarding, runs
from sync.audit import AuditKind, AuditRecord, InvalidAuditCursor
from sync.auth import ORGANIZATIONS, Caller, Need, Principal, may
from sync.context import SyncContext
from sync.directory import DirectoryError, GraphAccessDenied, GraphTokenRefused, InvalidCursor, PageExpired
from sync.directory.errors import REQUIRED_PERMISSIONS
from sync.eligibility import (
    ExclusionReason,
    ExclusionRules,
    InvalidRules,
    explain_user,
    parse_exclusion_rules,
)
from sync.engine import LeaseBusy as LeaseBusy  # re-exported for sync.jobs
from sync.engine import NothingToUndo, execute_refresh, execute_undo
from sync.models import (
    NOT_CONSENTED,
    AccessProblem,
    AuditPage,
    CallerKind,
    ChangeFeed,
    ConfirmedPreview,
    Connection,
    ConnectionState,
    ConsentOutcome,
    ConsentStarted,
    ConsentStartInput,
    ExcludedPage,
    Explanation,
    Grant,
    GrantInput,
    GrantKind,
    GroupPage,
    MailboxPurposeSource,
    NotifyMode,
    RefreshMessage,
    RosterStatus,
    RosterUser,
    RulesSaved,
    RulesView,
    Run,
    RunReason,
    RunStatus,
    SelectedGroup,
    Selection,
    SelectionInput,
    SelectionMode,
    Tenant,
    TenantInput,
    TenantRef,
    TenantSaved,
    TenantView,
    UserRef,
    WhoAmI,
)
from sync.notifications import Notifications, NotifyMessage, Received
from sync.store import StaleSelection, StaleTenant, utc_now
from sync.validation import (
    MAX_CURSOR_LENGTH,
    MAX_GRANT_TENANTS,
    MAX_GUARD_MIN_USERS,
    MAX_NAME_LENGTH,
    MAX_PAGE,
    MAX_SEARCH_LENGTH,
    MAX_SELECTED_GROUPS,
    MAX_UPN_LENGTH,
    has_control_characters,
    is_object_id,
    is_run_id,
    is_upn,
    search_text,
)

log = logging.getLogger("sync.service")

FIND_LIMIT = 10  # users a name search answers ("Why is this user not synced?")
EXCLUSION_REASONS = tuple(reason.value for reason in ExclusionReason)
NIGHTLY_FAN_OUT = 32  # storage calls in flight while queueing the nightly refreshes
SKIPPED_NOT_CONSENTED = "notConsented"  # TenantSkipped reason: the app's admin consent is missing

log = logging.getLogger("sync.service")


class ServiceError(Exception):
    """A request the service refuses; `status` is the HTTP status, `title` its short name."""

    status = 400
    title = "Bad request"

    def __init__(
        self,
        detail: str,
        *,
        errors: list[dict[str, str]] | None = None,
        extensions: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(detail)
        self.detail = detail
        self.errors = errors or []
        self.extensions = extensions or {}  # problem+json extension members (e.g. adminConsentUrl)


class InvalidInput(ServiceError):
    """Malformed or inconsistent input (HTTP 400, CLI exit 2)."""


class NotFound(ServiceError):
    """The tenant, run or user does not exist (HTTP 404)."""

    status = 404
    title = "Not found"


def tenant_not_found(tenant_id: str) -> NotFound:
    """The one answer for a tenant that is not registered AND for one the caller may not see:
    a stranger cannot tell them apart."""
    return NotFound(
        f"tenant {tenant_id} is not registered, or not one you may see: a customer's administrator "
        f"connects it with Connect Microsoft 365; an operator registers it (PUT /api/tenants/{tenant_id})"
    )


class PreconditionFailed(ServiceError):
    """If-Match named a version that is no longer current (HTTP 412)."""

    status = 412
    title = "Precondition failed"


class Conflict(ServiceError):
    """The resource is not in a state that allows the operation (HTTP 409)."""

    status = 409
    title = "Conflict"


class Unavailable(ServiceError):
    """The app is not configured for this operation (HTTP 503); the detail names the setting."""

    status = 503
    title = "Service unavailable"


class UpstreamError(ServiceError):
    """Microsoft Graph refused or failed; the detail says what the admin can do (HTTP 502)."""

    status = 502
    title = "Microsoft Graph error"


# --- input shapes -------------------------------------------------------------------------------


def require_tenant_id(value: str) -> str:
    """A tenant id must be an Entra tenant GUID; returns it lower-cased."""
    if not is_object_id(value):
        raise InvalidInput(
            f"tenant id {str(value)[:64]!r} is not a GUID (Entra tenant ids look like 72f988bf-...)"
        )
    return value.lower()


def require_run_id(value: str) -> str:
    """A run id as this API issues them (13 digits, a dash, 8 hex digits)."""
    if not is_run_id(value):
        raise InvalidInput(
            f"run id {str(value)[:64]!r} is malformed (run ids look like 8234567890123-0a1b2c3d)"
        )
    return value


def require_user_key(value: object) -> str:
    """A user named by object id (GUID) or user principal name (name@domain, at most 113 characters)."""
    if not isinstance(value, str) or not value:
        raise InvalidInput("user is required: an object id or a user principal name")
    if len(value) > MAX_UPN_LENGTH:
        raise InvalidInput(f"user is longer than {MAX_UPN_LENGTH} characters (the longest a UPN can be)")
    if not (is_object_id(value) or is_upn(value)):
        raise InvalidInput(
            f"user {value[:64]!r} is neither an object id (GUID) nor a user principal name (name@domain)"
        )
    return value


def require_search(value: str | None) -> str | None:
    """Search text: at most MAX_SEARCH_LENGTH characters, no control characters."""
    if value is not None and len(value) > MAX_SEARCH_LENGTH:
        raise InvalidInput(f"search is longer than {MAX_SEARCH_LENGTH} characters")
    if value is not None and has_control_characters(value):
        raise InvalidInput("search contains control characters")
    return value


def _search_problems(search: str | None) -> list[str]:
    """What is wrong with search text for Graph's `$search` (nothing: an empty list)."""
    if search is None or not search.strip():
        return []
    if len(search) > MAX_SEARCH_LENGTH:
        return [f"search is longer than {MAX_SEARCH_LENGTH} characters"]
    if has_control_characters(search):
        return ["search contains control characters"]
    if not search_text(search):
        return [f"search {search[:40]!r} has no letter or digit: Microsoft Graph searches the words of names"]
    return []


def _roster_note(included: bool, roster_status: str, *, unknown: bool = False) -> str | None:
    """What the platform shows now against what the rules say, when the two differ."""
    if unknown:
        return None
    if roster_status == "active" and not included:
        return (
            "On the platform now although the rules keep this user off it (an undo put them back, or "
            "something changed since the last refresh): the next refresh removes them again unless the "
            "reason below is fixed."
        )
    if roster_status == "removed" and included:
        return "Removed from the platform, yet eligible now: the next refresh restores them."
    if roster_status == "absent" and included:
        return "Eligible, not on the platform yet: the next refresh adds them."
    return None


def _require_text(value: object, what: str, *, max_length: int = MAX_NAME_LENGTH) -> str:
    if not isinstance(value, str) or not value.strip():
        raise InvalidInput(f"{what} is required and must be a non-empty string")
    if len(value) > max_length:  # counted as sent, spaces included
        raise InvalidInput(f"{what} is longer than {max_length} characters")
    if has_control_characters(value):
        raise InvalidInput(f"{what} contains control characters")
    return value.strip()


def _guard_percent(value: object) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 100:
        raise InvalidInput("guardPercent must be a number from 0 to 100, or null for the app setting")
    return float(value)


def _guard_min_users(value: object) -> int | None:
    if value is None:
        return None
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_GUARD_MIN_USERS:
        raise InvalidInput(
            f"guardMinUsers must be a whole number from 0 to {MAX_GUARD_MIN_USERS:,}, "
            "or null for the app setting"
        )
    return value


def parse_tenant_input(body: Mapping[str, Any]) -> TenantInput:
    """A tenant body (displayName, guardPercent?, guardMinUsers?) checked field by field."""
    unset = msgspec.UNSET
    return TenantInput(
        display_name=_require_text(body.get("displayName"), "displayName"),
        guard_percent=_guard_percent(body["guardPercent"]) if "guardPercent" in body else unset,
        guard_min_users=_guard_min_users(body["guardMinUsers"]) if "guardMinUsers" in body else unset,
    )


def parse_selection_input(body: Mapping[str, Any]) -> SelectionInput:
    """A selection body ({"mode", "groupIds", "confirmedPreview"?}) checked for shape; existence is
    checked against Graph later. Every bad value is named in one 400."""
    if not body:
        raise InvalidInput(
            'send {"mode": "groups", "groupIds": [...]} or {"mode": "all"}; an empty body selects nothing'
        )
    nulls = sorted(key for key, value in body.items() if value is None)
    if nulls:
        raise InvalidInput(f"{' and '.join(nulls)} must not be null; leave a field out instead")
    mode, group_ids = body.get("mode"), body.get("groupIds", [])
    if not isinstance(group_ids, list) or not all(isinstance(g, str) for g in group_ids):
        raise InvalidInput("groupIds must be a list of group id strings")
    if len(group_ids) > MAX_SELECTED_GROUPS:
        raise InvalidInput(f"at most {MAX_SELECTED_GROUPS} groups can be selected; got {len(group_ids)}")
    problems: list[str] = []
    errors: list[dict[str, str]] = []
    chosen = SelectionMode.GROUPS if group_ids else SelectionMode.ALL
    if mode is not None and mode not in ("all", "groups"):
        problems.append(f"mode must be 'all' or 'groups'; got {str(mode)[:64]!r}")
        errors.append({"field": "mode", "problem": "not 'all' or 'groups'"})
    elif mode is not None:
        chosen = SelectionMode(str(mode))
        if chosen is SelectionMode.ALL and group_ids:
            problems.append("mode 'all' syncs every eligible user; send no groupIds with it")
        if chosen is SelectionMode.GROUPS and not group_ids:
            problems.append("mode 'groups' needs at least one group id (or use mode 'all')")
    malformed = [g for g in group_ids if not is_object_id(g)]
    if malformed:
        problems.append("these group ids are not GUIDs: " + ", ".join(repr(g[:64]) for g in malformed))
        errors.extend({"groupId": g[:64], "problem": "not a GUID"} for g in malformed)
    lowered = [g.lower() for g in group_ids]
    duplicates = sorted({g for g in lowered if lowered.count(g) > 1})
    if duplicates:
        problems.append("these group ids are listed more than once: " + ", ".join(duplicates))
        errors.extend({"groupId": g, "problem": "duplicate"} for g in duplicates)
    confirmed: ConfirmedPreview | msgspec.UnsetType = msgspec.UNSET
    if "confirmedPreview" in body:
        raw = body["confirmedPreview"]
        run_id = raw.get("runId") if isinstance(raw, dict) else None
        digest = raw.get("removalDigest") if isinstance(raw, dict) else None
        extra = (
            sorted(str(k)[:64] for k in raw if k not in ("runId", "removalDigest"))
            if isinstance(raw, dict)
            else []
        )
        if not isinstance(run_id, str) or not is_run_id(run_id):
            problems.append("confirmedPreview.runId must be the id of the preview run that was confirmed")
            errors.append({"field": "confirmedPreview.runId", "problem": "not a run id"})
        if not isinstance(digest, str) or not 1 <= len(digest) <= 64 or not digest.isalnum():
            problems.append("confirmedPreview.removalDigest must be that preview's removalDigest")
            errors.append({"field": "confirmedPreview.removalDigest", "problem": "not a fingerprint"})
        if extra:
            problems.append(f"confirmedPreview has unknown field(s): {', '.join(extra)}")
        if isinstance(run_id, str) and isinstance(digest, str) and not problems:
            confirmed = ConfirmedPreview(run_id=run_id, removal_digest=digest)
    if problems:
        raise InvalidInput("; ".join(problems), errors=errors)
    return SelectionInput(mode=chosen, group_ids=lowered, confirmed_preview=confirmed)


AUDIT_CSV_COLUMNS = ("at", "kind", "userId", "userPrincipalName", "runId", "reason", "by", "before", "after")


ROSTER_CSV_COLUMNS = ("id", "userPrincipalName", "displayName", "mail", "department", "jobTitle", "groups",
                      "status", "addedAt", "updatedAt", "removedAt")  # fmt: skip
EXCLUDED_CSV_COLUMNS = ("id", "userPrincipalName", "displayName", "mail", "department", "reason", "reasons",
                        "rules", "groups", "runId", "seenAt")  # fmt: skip


def records_csv(records: Sequence[msgspec.Struct], columns: Sequence[str]) -> str:
    """Records as CSV, one column per JSON field: lists joined by "; ", objects as JSON."""
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(columns)
    for record in records:
        data = msgspec.to_builtins(record)
        row = []
        for col in columns:
            value = data.get(col)
            if isinstance(value, dict) or (col in ("before", "after") and col in data):
                value = json.dumps(value)
            elif isinstance(value, list):
                value = "; ".join(str(item) for item in value)
            row.append("" if value is None else value)
        writer.writerow(row)
    return out.getvalue()


def audit_csv(records: Sequence[AuditRecord]) -> str:
    """Audit records as CSV (configuration before/after as JSON in their cells)."""
    return records_csv(records, AUDIT_CSV_COLUMNS)


def _guard_of(tenant: Tenant) -> dict[str, float | int | None]:
    return {"guardPercent": tenant.guard_percent, "guardMinUsers": tenant.guard_min_users}


def _selection_of(selection: Selection) -> dict[str, object]:
    return {
        "mode": str(selection.mode),
        "groupIds": [g.id for g in selection.groups],
        "version": selection.version,
    }


def require_principal_id(value: str) -> str:
    """A user or group object id (a GUID); returns it lower-cased."""
    if not is_object_id(value):
        raise InvalidInput(f"principal id {str(value)[:64]!r} is not an object id (a GUID)")
    return value.lower()


def _grant_tenants(values: list[str]) -> tuple[str, ...]:
    bad = [v for v in values if not is_object_id(v)]
    if bad:
        raise InvalidInput(
            "these tenant ids are not GUIDs: " + ", ".join(repr(str(v)[:64]) for v in bad[:20]),
            errors=[{"tenantId": str(v)[:64], "problem": "not a GUID"} for v in bad[:100]],
        )
    unique = tuple(dict.fromkeys(v.lower() for v in values))
    if len(unique) > MAX_GRANT_TENANTS:
        raise InvalidInput(f"a grant names at most {MAX_GRANT_TENANTS} tenants; got {len(unique)}")
    return unique


@dataclass(frozen=True)
class Approval:
    """Removals someone approved: exactly those of `of_run` (a held run or a confirmed preview)."""

    of_run: str
    digest: str
    removals: int
    by: str | None
    shown_in: str = "heldRun"  # where the removals were shown: a held run, or "previewRun"


@dataclass(frozen=True)
class ConsentFinished:
    """How an admin-consent round trip ended, for the page."""

    outcome: ConsentOutcome
    tenant_id: str | None  # the tenant asked for or connected, when known
    detail: str | None = None
    connection: ConnectionState | None = None


def _message_for(run: Run) -> RefreshMessage:
    return RefreshMessage(
        tenant_id=run.tenant_id,
        run_id=run.id,
        reason=run.reason,
        dry_run=run.dry_run,
        requested_by=run.requested_by,
        allow_removals=run.allow_removals,
    )


ROSTER_CHANGES = (AuditKind.ADDED, AuditKind.UPDATED, AuditKind.REMOVED, AuditKind.RESTORED, AuditKind.PURGED)


class SyncService:
    """Tenants, selections, refreshes, runs and the roster, for one app instance."""

    def __init__(self, ctx: SyncContext) -> None:
        self.ctx = ctx
        self.notifications = Notifications(ctx)

    # -- tenants --

    async def put_tenant(
        self,
        tenant_id: str,
        change: TenantInput,
        *,
        expected_version: int | None = None,
        requested_by: str | None = None,
    ) -> TenantSaved:
        """Register a tenant or rename it; optionally set its own removal guard thresholds.

        A threshold left UNSET keeps its current value; None goes back to the app setting
        (REMOVAL_GUARD_PERCENT / REMOVAL_GUARD_MIN_USERS). `expected_version` is If-Match;
        `requested_by` is recorded as updatedBy. A change of the thresholds is put on the audit
        trail and previewed: the answer says how many users the next run would remove and whether
        it would be held.
        """
        tid = require_tenant_id(tenant_id)
        existing = await self.ctx.store.get_tenant(tid)
        now = utc_now()
        if existing is not None:  # saving a disconnected tenant connects it again
            tenant = msgspec.structs.replace(
                existing,
                display_name=change.display_name,
                enabled=True,
                updated_by=requested_by,
                updated_at=now,
            )
        else:
            tenant = Tenant(
                id=tid,
                display_name=change.display_name,
                created_at=now,
                updated_by=requested_by,
                updated_at=now,
            )
        if change.guard_percent is not msgspec.UNSET:
            tenant = msgspec.structs.replace(tenant, guard_percent=change.guard_percent)
        if change.guard_min_users is not msgspec.UNSET:
            tenant = msgspec.structs.replace(tenant, guard_min_users=change.guard_min_users)
        before = _guard_of(existing) if existing is not None else None
        try:
            saved = await self.ctx.store.put_tenant(tenant, expected_version=expected_version)
        except StaleTenant as exc:
            raise PreconditionFailed(str(exc)) from None
        preview = None
        if existing is not None and before != _guard_of(saved):
            await self._audit(
                tid, AuditKind.GUARD_CHANGED, requested_by, before=before, after=_guard_of(saved)
            )
            preview = await self._preview_now(saved, requested_by)
        return TenantSaved(**msgspec.structs.asdict(TenantView.of(saved)), preview=preview)

    async def list_tenants(self, caller: Caller | None = None) -> list[Tenant]:
        """Every tenant with its last run status (the fleet view); with a caller, only those they may see."""
        tenants = await self.ctx.store.list_tenants()
        if caller is not None:
            tenants = [t for t in tenants if may(caller, Need.TENANT, t.id, registered=True)]
        return sorted(tenants, key=lambda t: t.display_name.lower())

    async def find_tenant(self, tenant_id: str) -> Tenant | None:
        """The registered tenant, or None."""
        return await self.ctx.store.get_tenant(require_tenant_id(tenant_id))

    async def require_tenant(self, tenant_id: str) -> Tenant:
        """The registered tenant, or NotFound."""
        tid = require_tenant_id(tenant_id)
        tenant = await self.ctx.store.get_tenant(tid)
        if tenant is None:
            raise tenant_not_found(tid)
        return tenant

    async def set_rules(
        self,
        tenant_id: str,
        rules: object,
        *,
        expected_version: int | None = None,
        requested_by: str | None = None,
    ) -> RulesSaved:
        """Replace the tenant's exclusion rules (UPN patterns, listed users, an exclusion group, SKUs).

        The change is put on the audit trail, previewed (the answer says how many users it would
        remove) and applied by a refresh of its own, which the removal guard holds if it removes many.
        """
        tenant = await self.require_tenant(tenant_id)
        try:
            parsed = parse_exclusion_rules(rules)
        except InvalidRules as exc:
            raise InvalidInput(str(exc)) from None
        if parsed.exclusion_group_id:
            found = await self._graph(
                tenant.id, self.ctx.reader(tenant.id).get_groups([parsed.exclusion_group_id])
            )
            if found.get(parsed.exclusion_group_id) is None:
                raise InvalidInput(
                    f"exclusion group {parsed.exclusion_group_id} does not exist in the tenant"
                )
        before = parse_exclusion_rules(tenant.exclusion_rules)
        await self._require_listed_users(tenant.id, parsed, before)
        encoded = msgspec.json.encode(parsed).decode()
        try:
            saved = await self.ctx.store.put_tenant(
                msgspec.structs.replace(
                    tenant, exclusion_rules=encoded, updated_by=requested_by, updated_at=utc_now()
                ),
                expected_version=expected_version,
            )
        except StaleTenant as exc:
            raise PreconditionFailed(str(exc)) from None
        await self._audit(tenant.id, AuditKind.RULES_CHANGED, requested_by, before=before, after=parsed)
        preview = await self._preview_now(saved, requested_by)
        run = await self.request_refresh(tenant.id, reason=RunReason.RULES_SAVED, requested_by=requested_by)
        return RulesSaved(**msgspec.structs.asdict(parsed), version=saved.version, preview=preview, run=run)

    async def _require_listed_users(
        self, tenant_id: str, rules: ExclusionRules, before: ExclusionRules
    ) -> None:
        """Users newly listed in excludedUsers must exist in the tenant: 400 naming each that does not."""
        known = {entry.lower() for entry in before.excluded_users}
        added = [entry for entry in rules.excluded_users if entry.lower() not in known]
        if not added:
            return
        found = await self._graph(tenant_id, self.ctx.reader(tenant_id).get_users(added))
        missing = [entry for entry in added if found.get(entry) is None]
        if missing:
            raise InvalidInput(
                "these excludedUsers are not users of the tenant: "
                + ", ".join(repr(m[:64]) for m in missing),
                errors=[{"excludedUser": m[:64], "problem": "no such user in the tenant"} for m in missing],
            )

    async def rules_of(self, tenant_id: str) -> tuple[ExclusionRules, int]:
        """The tenant's rules and the version to send back as If-Match."""
        tenant = await self.require_tenant(tenant_id)
        return parse_exclusion_rules(tenant.exclusion_rules), tenant.version

    async def _preview_now(self, tenant: Tenant, requested_by: str | None) -> Run:
        """A dry run of the tenant's saved settings, here and now: who the next run adds and removes."""
        run = runs.new_run(tenant.id, RunReason.PREVIEW, dry_run=True, requested_by=requested_by)
        await self.ctx.store.create_run(run)
        return await self._execute_in_process(run)

    async def _audit(self, tenant_id: str, kind: AuditKind, by: str | None, **fields: Any) -> None:
        """Put a change of configuration on the audit trail (before the change is acted on)."""
        values = {key: msgspec.to_builtins(value) for key, value in fields.items()}
        await self.ctx.audit.append(tenant_id, [AuditRecord(at=utc_now(), kind=kind, by=by, **values)])

    async def _graph(self, tenant_id: str, read: Any) -> Any:
        """Await a Graph read; a refusal becomes a 502 naming the problem, permission and consent link."""
        try:
            return await read
        except DirectoryError as exc:
            raise self._upstream(tenant_id, exc) from exc

    def _upstream(self, tenant_id: str, exc: DirectoryError) -> UpstreamError:
        link = admin_consent_url(self.ctx.settings, tenant_id)
        extensions: dict[str, Any] = {}
        if isinstance(exc, GraphTokenRefused):
            extensions = {"accessProblem": str(exc.problem), "adminConsentUrl": link}
        elif isinstance(exc, GraphAccessDenied):
            extensions = {
                "accessProblem": str(AccessProblem.PERMISSION_MISSING),
                "missingPermission": exc.permission,
                "adminConsentUrl": link,
            }
        return UpstreamError(exc.advice(link), extensions=extensions)

    # -- groups and selection --

    async def list_groups(self, tenant_id: str, *, search: str | None, cursor: str | None) -> GroupPage:
        """A page of the tenant's groups for the selection page."""
        tenant = await self.require_tenant(tenant_id)
        problems = _search_problems(search)
        if cursor is not None and (not cursor or len(cursor) > MAX_CURSOR_LENGTH):
            problems.append("the cursor is not one this API issued")
        if problems:
            raise InvalidInput("; ".join(problems))
        try:
            page: GroupPage = await self._graph(
                tenant.id, self.ctx.reader(tenant.id).list_groups(search=search, cursor=cursor)
            )
        except InvalidCursor as exc:
            raise InvalidInput(str(exc)) from None
        except UpstreamError as exc:
            if isinstance(exc.__cause__, PageExpired):  # Directory_ExpiredPageToken: an old "Load more"
                raise InvalidInput(
                    "the group list changed since that page was read; load it again from the start"
                ) from None
            raise
        return page

    async def get_selection(self, tenant_id: str) -> Selection:
        """The saved selection (mode `all` when nothing was saved)."""
        tenant = await self.require_tenant(tenant_id)
        return await self.ctx.store.get_selection(tenant.id)

    async def _resolve_groups(self, tenant_id: str, group_ids: list[str]) -> list[SelectedGroup]:
        reader = self.ctx.reader(tenant_id)
        found = await self._graph(tenant_id, reader.get_groups(group_ids))
        unknown = [gid for gid, group in found.items() if group is None]
        if unknown:
            raise InvalidInput(
                "these groups do not exist in the tenant: " + ", ".join(unknown),
                errors=[{"groupId": g, "problem": "not found in tenant"} for g in unknown],
            )
        hidden = [gid for gid, group in found.items() if group is not None and group.hidden_membership]
        refused = await self._graph(tenant_id, reader.members_refused(hidden)) if hidden else []
        if refused:
            link = admin_consent_url(self.ctx.settings, tenant_id)
            names = ", ".join(f"'{found[gid].display_name}' ({gid})" for gid in refused)
            raise InvalidInput(
                f"these groups have hidden membership and the app may not read their members: {names}. "
                "Reading them needs the application permission Member.Read.Hidden; a Global Administrator "
                f"of the tenant grants it{' at ' + link if link else ''}, or choose other groups.",
                errors=[
                    {"groupId": g, "problem": "hidden membership: needs Member.Read.Hidden"} for g in refused
                ],
                extensions={"missingPermission": "Member.Read.Hidden", "adminConsentUrl": link},
            )
        return [
            SelectedGroup(id=gid, display_name=group.display_name) for gid, group in found.items() if group
        ]

    async def save_selection(
        self,
        tenant_id: str,
        change: SelectionInput,
        *,
        expected_version: int | None,
        requested_by: str | None,
    ) -> tuple[Selection, Run]:
        """Save a new selection version (checked against Graph) and queue the refresh that applies it."""
        tenant = await self.require_tenant(tenant_id)
        ids = list(change.group_ids or [])
        confirmed = await self._confirmed_preview(tenant.id, change)
        groups = await self._resolve_groups(tenant.id, ids) if ids else []
        selection = Selection(
            mode=SelectionMode(change.mode or SelectionMode.ALL),
            groups=tuple(groups),
            updated_at=utc_now(),
            updated_by=requested_by,
        )
        before = await self.ctx.store.get_selection(tenant.id)
        try:
            saved = await self.ctx.store.save_selection(
                tenant.id, selection, expected_version=expected_version
            )
        except StaleSelection as exc:
            raise PreconditionFailed(str(exc)) from None
        await self._audit(
            tenant.id,
            AuditKind.SELECTION_CHANGED,
            requested_by,
            before=_selection_of(before),
            after=_selection_of(saved),
        )
        approval = None
        if confirmed is not None:
            approval = Approval(
                of_run=confirmed.id,
                digest=confirmed.removal_digest or "",
                removals=confirmed.counts.removed,
                by=requested_by,
                shown_in="previewRun",
            )
        run = await self.request_refresh(
            tenant.id, reason=RunReason.SELECTION_SAVED, requested_by=requested_by, approval=approval
        )
        return saved, run

    async def _confirmed_preview(self, tenant_id: str, change: SelectionInput) -> Run | None:
        """The preview whose removals the admin confirmed, checked to be a finished preview of exactly
        this selection with that fingerprint; None when the save confirms none. 400 naming each misfit."""
        confirmed = change.confirmed_preview
        if confirmed is msgspec.UNSET:
            return None
        preview = await self.ctx.store.get_run(tenant_id, confirmed.run_id)
        if preview is None or not preview.dry_run or preview.reason is not RunReason.PREVIEW:
            raise InvalidInput(
                f"confirmedPreview.runId {confirmed.run_id} is not a preview of this tenant's selection "
                "(POST /preview answers one)",
                errors=[{"field": "confirmedPreview.runId", "problem": "no such preview"}],
            )
        problems: list[str] = []
        if preview.status is not RunStatus.SUCCEEDED:
            problems.append(
                f"preview {preview.id} is {preview.status}, not succeeded: nothing was shown to confirm"
            )
        wanted = (SelectionMode(change.mode or SelectionMode.ALL), sorted(change.group_ids or []))
        shown = (preview.preview_mode, sorted(preview.preview_group_ids or []))
        if wanted != shown:
            problems.append(
                f"preview {preview.id} is of another selection (mode {shown[0]}, {len(shown[1])} groups) "
                f"than the one saved (mode {wanted[0]}, {len(wanted[1])} groups): preview it again"
            )
        if preview.removal_digest != confirmed.removal_digest:
            problems.append(
                f"confirmedPreview.removalDigest {confirmed.removal_digest[:64]!r} is not the fingerprint of "
                f"preview {preview.id}'s removals"
            )
        if problems:
            raise InvalidInput("; ".join(problems))
        return preview

    # -- runs --

    async def _enqueue(self, run: Run) -> None:
        async with queue_client(self.ctx.settings) as queue:
            await queue.send_message(msgspec.json.encode(_message_for(run)))

    async def request_refresh(
        self,
        tenant_id: str,
        *,
        reason: RunReason = RunReason.MANUAL,
        requested_by: str | None = None,
        approval: Approval | None = None,
    ) -> Run:
        """Record a queued run and put its message on the refresh queue; with an `approval`, the run
        may make exactly the removals approved (it is held again if they changed)."""
        tenant = await self.require_tenant(tenant_id)
        run = runs.new_run(tenant.id, reason, requested_by=requested_by)
        if approval is not None:
            await self._approve_into(run, approval)
        await self.ctx.store.create_run(run)
        await self._enqueue(run)
        return run

    async def preview(self, tenant_id: str, change: SelectionInput, *, requested_by: str | None) -> Run:
        """Queue a dry run of a selection that is not saved: what would be added and removed."""
        tenant = await self.require_tenant(tenant_id)
        if change.confirmed_preview is not msgspec.UNSET:
            raise InvalidInput("confirmedPreview goes with saving the selection (PUT), not with a preview")
        ids = list(change.group_ids or [])
        if ids:
            await self._resolve_groups(tenant.id, ids)
        run = runs.new_run(tenant.id, RunReason.PREVIEW, dry_run=True, requested_by=requested_by)
        run.preview_mode = SelectionMode(change.mode or SelectionMode.ALL)
        run.preview_group_ids = ids
        await self.ctx.store.create_run(run)
        await self._enqueue(run)
        return run

    async def refresh_now(
        self, tenant_id: str, *, dry_run: bool = False, requested_by: str | None = None
    ) -> Run:
        """Run one refresh in this process (the CLI), recorded like a queued one."""
        tenant = await self.require_tenant(tenant_id)
        run = runs.new_run(tenant.id, RunReason.CLI, dry_run=dry_run, requested_by=requested_by)
        await self.ctx.store.create_run(run)
        return await self._execute_in_process(run)

    async def process_message(self, message: RefreshMessage) -> Run:
        """Run the refresh a queue message asks for (LeaseBusy when the tenant is busy)."""
        started = utc_now()
        return await self._after(await execute_refresh(self.ctx, message), started=started)

    async def _after(self, run: Run, *, started: datetime) -> Run:
        """After a full run that succeeded just now (not a redelivered message's earlier run): the
        tenant's change notifications are set up (best effort)."""
        just_now = run.finished_at is not None and run.finished_at >= started
        if just_now and run.status is RunStatus.SUCCEEDED and not run.dry_run and not run.incremental:
            tenant = await self.ctx.store.get_tenant(run.tenant_id)
            if tenant is not None and tenant.enabled:
                try:
                    await self.notifications.ensure(tenant)
                except Exception:  # notifications only make it sooner; the nightly run still comes
                    log.warning(
                        "could not set up change notifications", exc_info=True, extra={"tenantId": tenant.id}
                    )
        return run

    # -- change notifications --

    async def receive_notifications(self, body: bytes) -> Received:
        """Graph's changeNotificationCollection: check it, coalesce per tenant, answer fast."""
        return await self.notifications.receive(body)

    async def handle_notify(self, message: NotifyMessage) -> None:
        """A notify-queue message: a closed window queues an incremental refresh; lifecycle work."""
        if await self.notifications.handle(message) == "refresh":
            tenant = await self.ctx.store.get_tenant(message.tenant_id)
            if tenant is not None and tenant.enabled and tenant.consent_state != NOT_CONSENTED:
                await self.request_refresh(tenant.id, reason=RunReason.NOTIFICATION, requested_by="graph")

    async def renew_subscriptions(self) -> int:
        """Renew the subscriptions that would lapse soon (the renewal timer)."""
        return await self.notifications.renew_due()

    async def disconnect(self, tenant_id: str, *, requested_by: str | None) -> Tenant:
        """Stop syncing a tenant: no nightly runs, no change notifications (its roster stays)."""
        tenant = await self.require_tenant(tenant_id)
        saved = await self.ctx.store.put_tenant(msgspec.structs.replace(tenant, enabled=False))
        await self.notifications.remove(tenant.id)
        await self.ctx.store.save_notify_mode(tenant.id, NotifyMode.NIGHTLY, "disconnected")
        log.info("tenant disconnected by %s", requested_by, extra={"tenantId": tenant.id})
        return saved

    async def changes(self, tenant_id: str, *, after: str | None = None, limit: int = 100) -> ChangeFeed:
        """Roster changes (added, updated, removed, restored, purged) in order after `after`.

        `next` is where to go on from: the last change's cursor, or `after` itself when nothing is
        new yet (a follower asks again with it later); it survives restarts (it is a position in
        the audit trail).
        """
        tenant = await self.require_tenant(tenant_id)
        if after is not None and (not after or len(after) > MAX_CURSOR_LENGTH):
            raise InvalidInput("the cursor is not one this API issued")
        try:
            records, _ = await self.ctx.audit.read(
                tenant.id,
                after=after,
                kinds=ROSTER_CHANGES,
                limit=max(1, min(limit, MAX_PAGE)),
                now=utc_now(),
            )
        except InvalidAuditCursor as exc:
            raise InvalidInput(str(exc)) from None
        return ChangeFeed(value=records, next=records[-1].cursor if records else after)

    async def mark_poisoned(self, message: RefreshMessage) -> Run | None:
        """A message that failed every delivery: its run is marked failed (None: already finished)."""
        return await runs.fail_poisoned(self.ctx.store, message.tenant_id, message.run_id)

    async def list_runs(
        self, tenant_id: str, *, cursor: str | None = None, limit: int = 20
    ) -> tuple[list[Run], str | None]:
        """Runs newest first, a page at a time."""
        tenant = await self.require_tenant(tenant_id)
        if cursor is not None and not is_run_id(cursor):
            raise InvalidInput("the cursor is not one this API issued")
        return await self.ctx.store.list_runs(tenant.id, limit=max(1, min(limit, 100)), after=cursor)

    async def get_run(self, tenant_id: str, run_id: str) -> Run:
        """One run, or NotFound."""
        tenant = await self.require_tenant(tenant_id)
        require_run_id(run_id)
        run = await self.ctx.store.get_run(tenant.id, run_id)
        if run is None:
            raise NotFound(f"run {run_id} does not exist for tenant {tenant.id}")
        return run

    async def approve(
        self, tenant_id: str, run_id: str, *, requested_by: str | None, in_process: bool = False
    ) -> Run:
        """A run allowed to remove exactly what the held run planned: queued, or run here (CLI).

        Only the newest held run can be approved: an older one shows a plan a newer run replaced."""
        held = await self.get_run(tenant_id, run_id)
        if held.status is not RunStatus.HELD:
            raise Conflict(f"run {run_id} is {held.status}, not held; only held runs can be approved")
        newest = await self.newest_held_run(held.tenant_id)
        if newest is not None and newest.id != held.id:
            raise Conflict(
                f"run {run_id} is not the newest held run: run {newest.id} (requested "
                f"{newest.requested_at:%Y-%m-%d %H:%M} UTC) was held after it with the current plan of "
                f"{newest.counts.removed:,} removals; review and approve that one instead"
            )
        run = runs.new_run(held.tenant_id, RunReason.APPROVED, requested_by=requested_by)
        approval = Approval(
            of_run=held.id, digest=held.removal_digest or "", removals=held.counts.removed, by=requested_by
        )
        await self._approve_into(run, approval)
        await self.ctx.store.create_run(run)
        await runs.approve_held(self.ctx.store, held, by_run=run.id, approved_by=requested_by)
        if in_process:
            return await self._execute_in_process(run)
        await self._enqueue(run)
        return run

    async def _approve_into(self, run: Run, approval: Approval) -> None:
        """Let `run` make exactly the approved removals; the approval goes on the audit trail first."""
        run.allow_removals = approval.removals
        run.approved_digest = approval.digest
        run.approved_run = approval.of_run
        run.approved_by = approval.by
        run.approved_at = utc_now()
        await self._audit(
            run.tenant_id,
            AuditKind.APPROVED,
            approval.by,
            after={approval.shown_in: approval.of_run, "approvedRun": run.id, "removals": approval.removals},
        )

    async def newest_held_run(self, tenant_id: str) -> Run | None:
        """The newest run still held by the safety rules (the only one that may be approved)."""
        cursor: str | None = None
        for _ in range(50):  # 5,000 runs back at most
            page, cursor = await self.ctx.store.list_runs(tenant_id, limit=100, after=cursor)
            for run in page:
                if run.status is RunStatus.HELD and not run.dry_run:
                    return run
            if not cursor:
                break
        return None

    async def last_run_with_removals(self, tenant_id: str) -> Run:
        """The newest applied run that removed users (what `undo` without a run id undoes)."""
        tenant = await self.require_tenant(tenant_id)
        cursor: str | None = None
        while True:
            page, cursor = await self.ctx.store.list_runs(tenant.id, limit=100, after=cursor)
            for run in page:
                applied = run.status is RunStatus.SUCCEEDED or (
                    run.status is RunStatus.FAILED and run.apply_started_at is not None  # partially applied
                )
                if not run.dry_run and run.counts.removed > 0 and applied:
                    return run
            if not cursor:
                raise NotFound(f"no run of tenant {tenant.id} removed any user; there is nothing to undo")

    async def undo_removals(self, tenant_id: str, run_id: str | None, *, requested_by: str | None) -> Run:
        """Put back every user a run removed (status active again), in one call, recorded as its own run.

        Only users still removed by that very run and within REMOVAL_GRACE_DAYS come back; a user
        restored since, removed again by a later run, or purged is left alone. The undo is for a
        mistaken removal whose cause is then fixed (a wrong selection, a Graph fault that slipped
        through): a later refresh removes the users again while the cause stays.
        """
        tenant = await self.require_tenant(tenant_id)
        target = await (
            self.last_run_with_removals(tenant.id) if run_id is None else self.get_run(tenant.id, run_id)
        )
        if target.dry_run:
            raise Conflict(f"run {target.id} was a dry run: it removed nobody, so there is nothing to undo")
        if target.undo_of is not None:
            raise Conflict(f"run {target.id} is itself an undo; it removed nobody")
        try:
            return await execute_undo(self.ctx, tenant, target, requested_by=requested_by)
        except LeaseBusy:
            raise Conflict(
                "a refresh of this tenant is running; undo its removals once it has finished"
            ) from None
        except NothingToUndo as exc:
            raise Conflict(str(exc)) from None

    async def _execute_in_process(self, run: Run, wait_seconds: float = 120.0) -> Run:
        """Run a recorded refresh here, waiting a while if the tenant's lease is taken."""
        deadline = time.monotonic() + wait_seconds
        while True:
            try:
                started = utc_now()
                return await self._after(await execute_refresh(self.ctx, _message_for(run)), started=started)
            except LeaseBusy:
                if time.monotonic() > deadline:
                    raise Conflict(
                        "another refresh of this tenant is still running; try again later"
                    ) from None
                await asyncio.sleep(1.0)

    # -- roster --

    async def audit_trail(
        self,
        tenant_id: str,
        *,
        user: str | None = None,
        run: str | None = None,
        cursor: str | None = None,
        limit: int = 100,
    ) -> AuditPage:
        """The tenant's audit records, oldest first, filtered by user (id or UPN) or run."""
        tenant = await self.require_tenant(tenant_id)
        if user is not None:
            require_user_key(user)
        if run is not None:
            require_run_id(run)
        if cursor is not None and (not cursor or len(cursor) > MAX_CURSOR_LENGTH):
            raise InvalidInput("the cursor is not one this API issued")
        try:
            records, next_cursor = await self.ctx.audit.read(
                tenant.id, after=cursor, user=user, run=run, limit=max(1, min(limit, MAX_PAGE)), now=utc_now()
            )
        except InvalidAuditCursor as exc:
            raise InvalidInput(str(exc)) from None
        return AuditPage(value=records, next_cursor=next_cursor)

    async def list_users(
        self,
        tenant_id: str,
        *,
        status: str | None = "active",
        group: str | None = None,
        search: str | None = None,
        cursor: str | None = None,
        limit: int = 100,
    ) -> tuple[list[RosterUser], str | None]:
        """The roster, filtered by status (active, removed, all), group and text."""
        tenant = await self.require_tenant(tenant_id)
        wanted: RosterStatus | None
        if status in (None, "active"):
            wanted = RosterStatus.ACTIVE
        elif status == "all":
            wanted = None
        elif status == "removed":
            wanted = RosterStatus.REMOVED
        else:
            raise InvalidInput(f"status must be active, removed or all; got {status!r}")
        if group is not None and not is_object_id(group):
            raise InvalidInput(f"group {group[:64]!r} is not a GUID")
        require_search(search)
        if cursor is not None and not is_object_id(cursor):
            raise InvalidInput("the cursor is not one this API issued")
        return await self.ctx.roster.list_users(
            tenant.id,
            status=wanted,
            group=group.lower() if group else None,
            search=search,
            after=cursor,
            limit=max(1, min(limit, MAX_PAGE)),
        )

    async def explain(self, tenant_id: str, user: str) -> Explanation:
        """Why a user is, or is not, on the platform: read live from Graph and the roster."""
        tenant = await self.require_tenant(tenant_id)
        key = require_user_key(user)
        reader = self.ctx.reader(tenant.id)
        selection = await self.ctx.store.get_selection(tenant.id)
        directory_user = await self._graph(tenant.id, reader.get_user(key))
        if directory_user is None:
            raise NotFound(f"no user {key!r} in the tenant's directory")
        member_of = set(await self._graph(tenant.id, reader.user_group_ids(directory_user.id)))
        mailboxes = await self._graph(tenant.id, reader.read_mailbox_purposes([directory_user.id]))
        verdict = explain_user(
            directory_user,
            member_of=member_of,
            mode=selection.mode,
            selected=selection.groups,
            rules=parse_exclusion_rules(tenant.exclusion_rules),
            purposes=mailboxes.purposes if mailboxes is not None else None,
            purpose_unknown=mailboxes.unknown if mailboxes is not None else (),
        )
        row = await self.ctx.roster.get_user(tenant.id, directory_user.id)
        status = str(row.status) if row else "absent"
        return Explanation(
            user=UserRef(
                id=directory_user.id,
                user_principal_name=directory_user.user_principal_name,
                display_name=directory_user.display_name,
                mail=directory_user.mail,
            ),
            note=_roster_note(
                verdict.included, status, unknown=any(r.code == "unknown" for r in verdict.reasons)
            ),
            included=verdict.included,
            reasons=verdict.reasons,
            groups=verdict.groups,
            roster_status=status,
            mailbox_purpose_source=MailboxPurposeSource.MAILBOX_SETTINGS
            if mailboxes is not None and directory_user.id in mailboxes.purposes
            else MailboxPurposeSource.HEURISTIC,
        )

    async def find_users(self, tenant_id: str, text: str) -> list[UserRef]:
        """Directory users by words of their display name, mail or user principal name (Graph $search)."""
        tenant = await self.require_tenant(tenant_id)
        problems = (
            _search_problems(text) if text and text.strip() else ["search is required: a name, mail or UPN"]
        )
        if problems:
            raise InvalidInput("; ".join(problems))
        found = await self._graph(tenant.id, self.ctx.reader(tenant.id).search_users(text, top=FIND_LIMIT))
        return [
            UserRef(
                id=u.id, user_principal_name=u.user_principal_name, display_name=u.display_name, mail=u.mail
            )
            for u in found
        ]

    async def explain_text(self, tenant_id: str, text: str) -> Explanation:
        """`explain` for an id, a UPN, or words of a name, mail or UPN that find exactly one user."""
        if is_object_id(text) or is_upn(text):
            return await self.explain(tenant_id, text)
        found = await self.find_users(tenant_id, text)
        if len(found) == 1:
            return await self.explain(tenant_id, found[0].id)
        if not found:
            raise NotFound(f"no user's display name, mail or user principal name starts with {text[:64]!r}")
        names = "; ".join(
            f"{u.display_name or u.user_principal_name} ({u.user_principal_name})" for u in found
        )
        more = "+" if len(found) >= FIND_LIMIT else ""
        raise InvalidInput(
            f"{len(found)}{more} users match {text[:64]!r}: {names}; name one by its user principal name"
        )

    async def excluded_users(
        self,
        tenant_id: str,
        *,
        reason: str | None = None,
        search: str | None = None,
        cursor: str | None = None,
        limit: int = 100,
    ) -> ExcludedPage:
        """Who the last full run kept off the platform, by first reason and text, with the exact rules."""
        tenant = await self.require_tenant(tenant_id)
        problems = []
        if reason is not None and reason not in EXCLUSION_REASONS:
            problems.append(f"reason must be one of {', '.join(EXCLUSION_REASONS)}; got {reason[:40]!r}")
        if search is not None and len(search) > MAX_SEARCH_LENGTH:
            problems.append(f"search is longer than {MAX_SEARCH_LENGTH} characters")
        elif search is not None and has_control_characters(search):
            problems.append("search contains control characters")
        if cursor is not None and not is_object_id(cursor):
            problems.append("the cursor is not one this API issued")
        if problems:
            raise InvalidInput("; ".join(problems))
        users, next_cursor = await self.ctx.excluded.list_users(
            tenant.id, reason=reason, search=search or None, after=cursor, limit=max(1, min(limit, MAX_PAGE))
        )
        return ExcludedPage(value=users, next_cursor=next_cursor, as_of=tenant.last_full_refresh_at)

    async def rules_view(self, tenant_id: str) -> tuple[RulesView, int]:
        """The tenant's rules with how many users each optional exclusion matched in the latest full run."""
        rules, version = await self.rules_of(tenant_id)
        matched: Run | None = None
        page, _ = await self.ctx.store.list_runs(require_tenant_id(tenant_id), limit=100)
        for run in page:
            if run.counts.optional_matches and not run.incremental:
                matched = run
                break
        view = RulesView(
            **msgspec.structs.asdict(rules),
            optional_matches=matched.counts.optional_matches if matched else None,
            optional_matches_run=matched.id if matched else None,
        )
        return view, version

    # -- who may call --

    async def authorize(self, principal: Principal, need: Need, tenant_id: str | None = None) -> Caller:
        """The caller with their grants, if `sync.auth.may` lets them do `need` on `tenant_id`;
        otherwise NotFound, worded as for a tenant that does not exist."""
        granted: frozenset[str] = frozenset()
        if principal.kind is not CallerKind.OPERATOR:
            grants = await self.ctx.grants.matching(
                principal.tenant_id, principal.object_id, principal.groups
            )
            granted = frozenset(tid for grant in grants for tid in grant.tenants)
        caller = Caller(principal, granted)
        registered = False
        if tenant_id is not None and tenant_id != ORGANIZATIONS and need in (Need.TENANT, Need.ONBOARD):
            registered = await self.ctx.store.get_tenant(tenant_id) is not None
        if not may(caller, need, tenant_id, registered=registered):
            if need is Need.OPERATOR or tenant_id is None or tenant_id == ORGANIZATIONS:
                raise NotFound("there is nothing here for you")
            raise tenant_not_found(tenant_id)
        return caller

    async def whoami(self, caller: Caller) -> WhoAmI:
        """The caller, the tenants they may act on, and what Connect Microsoft 365 would onboard."""
        who = caller.principal
        tenants = await self.list_tenants(caller)
        connect: str | None = None
        note: str | None = None
        if who.kind is CallerKind.OPERATOR:
            connect = ORGANIZATIONS
        elif who.kind is CallerKind.CUSTOMER_ADMIN:
            if all(t.id != who.tenant_id for t in tenants):
                connect = who.tenant_id
        elif not tenants:
            note = (
                "Your account has no administrator role in your organization (Global, Privileged Role, "
                "User or Groups Administrator) and no access granted by an operator: sign in with an "
                "administrator account to connect your organization."
            )
        return WhoAmI(
            name=who.name,
            user_principal_name=who.user_principal_name,
            tenant_id=who.tenant_id,
            object_id=who.object_id,
            kind=who.kind,
            by=who.by,
            tenants=[
                TenantRef(id=t.id, display_name=t.display_name, consent_state=t.consent_state)
                for t in tenants
            ],
            connect_tenant_id=connect,
            note=note,
        )

    # -- partner grants (operators only) --

    async def list_grants(self) -> list[Grant]:
        """Every partner grant."""
        return await self.ctx.grants.list_all()

    async def put_grant(
        self, principal_tenant_id: str, principal_id: str, change: GrantInput, *, by: str | None
    ) -> Grant:
        """Give a principal (user or group of a tenant) exactly these tenants; replaces an older grant."""
        grant = Grant(
            principal_tenant_id=require_tenant_id(principal_tenant_id),
            principal_id=require_principal_id(principal_id),
            kind=change.kind,
            tenants=_grant_tenants(change.tenants),
            name=_require_text(change.name, "name") if change.name is not None else None,
            granted_by=by,
            granted_at=utc_now(),
        )
        await self.ctx.grants.put(grant)
        return grant

    async def add_grant(
        self,
        principal_tenant_id: str,
        principal_id: str,
        kind: GrantKind,
        tenants: list[str],
        *,
        name: str | None = None,
        by: str | None,
    ) -> Grant:
        """Add tenants to a principal's grant (created when missing)."""
        existing = await self.ctx.grants.get(require_tenant_id(principal_tenant_id), principal_id.lower())
        if existing is not None and existing.kind is not kind:
            raise Conflict(f"the grant for {principal_id} names a {existing.kind}, not a {kind}")
        merged = [*(existing.tenants if existing else ()), *tenants]
        change = GrantInput(kind=kind, tenants=merged, name=name or (existing.name if existing else None))
        return await self.put_grant(principal_tenant_id, principal_id, change, by=by)

    async def revoke_grant(
        self, principal_tenant_id: str, principal_id: str, tenants: list[str] | None = None, *, by: str | None
    ) -> Grant | None:
        """Take tenants (all of them when None) away from a principal; returns what is left, if anything."""
        tid, pid = require_tenant_id(principal_tenant_id), require_principal_id(principal_id)
        existing = await self.ctx.grants.get(tid, pid)
        if existing is None:
            raise NotFound(f"there is no grant for principal {pid} of tenant {tid}")
        remaining = [t for t in existing.tenants if t not in set(_grant_tenants(tenants or []))]
        if tenants is None or not remaining:
            await self.ctx.grants.delete(tid, pid)
            return None
        change = GrantInput(kind=existing.kind, tenants=remaining, name=existing.name)
        return await self.put_grant(tid, pid, change, by=by)

    # -- onboarding by admin consent --

    async def start_consent(self, caller: Caller, change: ConsentStartInput) -> ConsentStarted:
        """A one-time admin-consent link for a tenant the caller may onboard (sync.auth: Need.ONBOARD)."""
        target = change.tenant_id.lower()
        settings = self.ctx.settings
        callback = onboarding.redirect_uri(settings)
        if callback is None:
            raise Unavailable("APP_BASE_URL is not set, so Entra cannot send the administrator back")
        who = caller.principal
        name = change.display_name
        if (
            name is None
            and target == who.tenant_id
            and who.user_principal_name
            and "@" in who.user_principal_name
        ):
            name = who.user_principal_name.rsplit("@", 1)[1]  # the organization's domain, until renamed
        request = onboarding.new_request(
            target,
            _require_text(name, "displayName") if name is not None else None,
            by=caller.by,
            principal_tenant_id=who.tenant_id,
            principal_object_id=who.object_id,
        )
        state = await self.ctx.consents.create(request)
        url = admin_consent_url(settings, target, redirect_uri=callback, state=state)
        if url is None:
            raise Unavailable("GRAPH_APP_CLIENT_ID is not set: there is no app to consent to")
        return ConsentStarted(url=url, tenant_id=target, expires_at=request.expires_at)

    async def finish_consent(self, reply: Mapping[str, str]) -> ConsentFinished:
        """Entra's answer at the consent callback: check the state, register the tenant, check the
        connection. Never raises for a bad reply: the page is told what happened."""
        try:
            request = await self.ctx.consents.take(reply.get("state", ""))
        except onboarding.StateRefused as exc:
            return ConsentFinished(ConsentOutcome.INVALID, None, str(exc))
        asked = request.tenant_id if request.tenant_id != ORGANIZATIONS else None
        if reply.get("error"):
            words = f"{reply['error'][:64]}: {reply.get('error_description', '')[:400]}".strip(": ")
            return ConsentFinished(ConsentOutcome.REFUSED, asked, f"Microsoft Entra ID answered {words}")
        tenant = (reply.get("tenant") or "").lower()
        if reply.get("admin_consent", "").lower() != "true" or not is_object_id(tenant):
            return ConsentFinished(
                ConsentOutcome.INVALID, asked, "the reply from Entra ID does not say consent was granted"
            )
        if asked is not None and tenant != asked:
            return ConsentFinished(
                ConsentOutcome.INVALID,
                asked,
                f"consent was given in tenant {tenant}, not in {asked} as asked; nothing was registered",
            )
        existing = await self.ctx.store.get_tenant(tenant)
        if existing is None:
            name = request.display_name or f"Tenant {tenant[:8]}"
            await self.put_tenant(tenant, TenantInput(display_name=name), requested_by=request.requested_by)
        await self.ctx.store.set_consent_state(tenant, None)
        connection = await self.connection(tenant)
        return ConsentFinished(ConsentOutcome.GRANTED, tenant, connection.detail, connection.state)

    # -- nightly --

    async def nightly(self) -> list[Run]:
        """Queue one refresh per enabled tenant, concurrently; each refresh also purges its
        users past the grace period. One message per tenant lets Azure Functions scale out.
        A tenant whose admin consent is missing is skipped with a `TenantSkipped` warning."""
        tenants = [tenant for tenant in await self.ctx.store.list_tenants() if tenant.enabled]
        for tenant in tenants:
            if tenant.consent_state == NOT_CONSENTED:
                # Failing every night would only repeat what the page already shows (Reconnect).
                log_tenant_skipped(tenant.id, SKIPPED_NOT_CONSENTED, log)
        tenants = [tenant for tenant in tenants if tenant.consent_state != NOT_CONSENTED]
        gate = asyncio.Semaphore(NIGHTLY_FAN_OUT)
        async with queue_client(self.ctx.settings) as queue:

            async def queue_one(tenant: Tenant) -> Run:
                async with gate:
                    run = runs.new_run(tenant.id, RunReason.NIGHTLY, requested_by="timer")
                    await self.ctx.store.create_run(run)
                    await queue.send_message(msgspec.json.encode(_message_for(run)))
                    return run

            return list(await asyncio.gather(*(queue_one(tenant) for tenant in tenants)))

    async def connection(self, tenant_id: str) -> Connection:
        """Whether the app can read the tenant: which Graph permissions work, and what to do when not."""
        tenant = await self.require_tenant(tenant_id)
        link = admin_consent_url(self.ctx.settings, tenant.id)
        try:
            checks = await self.ctx.reader(tenant.id).check_permissions()
        except GraphTokenRefused as exc:  # no token at all: nothing can be read
            await onboarding.note_token_refusal(self.ctx.store, tenant.id, exc)
            return Connection(
                tenant_id=tenant.id,
                ok=False,
                state=ConnectionState(str(exc.problem)),
                checks=[],
                missing_permissions=list(REQUIRED_PERMISSIONS),
                admin_consent_url=link,
                detail=exc.advice(link),
            )
        missing = sorted({c.permission for c in checks if c.required and not c.ok})
        if tenant.consent_state == NOT_CONSENTED:  # a token was issued: the consent is back
            await self.ctx.store.set_consent_state(tenant.id, None)
        return Connection(
            tenant_id=tenant.id,
            ok=not missing,
            state=ConnectionState.PERMISSION_MISSING if missing else ConnectionState.CONNECTED,
            checks=checks,
            missing_permissions=missing,
            admin_consent_url=link,
            detail=f"Microsoft Graph refuses {', '.join(missing)}: a Global Administrator of the tenant "
            f"grants it{' at ' + link if link else ''}."
            if missing
            else None,
            note=None
            if all(c.ok for c in checks if not c.required)
            else "Without MailboxSettings.Read, shared mailboxes are recognised by a heuristic "
            "(no given name or surname, and a resource-like name).",
        )


_graph_clients: dict[tuple[Settings, GraphHttpOptions | None], GraphClients] = {}
_storage_ready: set[tuple[str | None, str | None, str]] = set()
_graph_http_options: GraphHttpOptions | None = None


def use_graph_http_options(options: GraphHttpOptions | None) -> None:
    """Graph transport options (timeouts, retries) for the clients made from now on; None: defaults.

    For tests and tools that need a short request timeout; the app itself runs on the defaults.
    """
    global _graph_http_options
    _graph_http_options = options


def graph_clients_for(settings: Settings) -> GraphClients:
    """One GraphClients (one HTTP pool per loop) per distinct settings, for the whole process."""
    key = (settings, _graph_http_options)
    clients = _graph_clients.get(key)
    if clients is None:
        clients = _graph_clients[key] = GraphClients(settings, _graph_http_options)
    return clients


@asynccontextmanager
async def open_service(settings: Settings | None = None) -> AsyncIterator[SyncService]:
    """A SyncService for one invocation; storage clients are closed at the end."""
    settings = settings or get_settings()
    key = (settings.storage.connection_string, settings.storage.table_service_uri, settings.queue_name)
    if key not in _storage_ready:
        await ensure_storage(settings)  # tables and queues exist from the first call on
        _storage_ready.add(key)
    ctx = SyncContext.create(settings, graph_clients_for(settings))
    service = SyncService(ctx)
    try:
        yield service
    finally:
        await service.notifications.aclose()
        await ctx.aclose()
