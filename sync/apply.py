"""The only code that writes or deletes roster rows, and the only code that moves delta links.

A plan reaches here only after `sync.safety.check_plan` let it through and the run confirmed
its tenant lease. Every change is put on the audit trail first (sync.audit), then the rows are
written in 100-entity transactions (sync.roster); users removed longer ago than REMOVAL_GRACE_DAYS
are purged after a successful write; delta links move forward only after a successful run, so a
failed run is retried from the same point.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime

import msgspec

from sync.audit import AuditKind, AuditRecord
from sync.context import SyncContext
from sync.models import ExcludedUser, RosterStatus, RosterUser, Selection, Tenant
from sync.planner import Plan, changed_rows, purge_due
from sync.store import SyncStore


async def record_excluded(
    ctx: SyncContext, tenant_id: str, users: Sequence[ExcludedUser], *, run_id: str, now: datetime
) -> int:
    """After a full run applied: the excluded users are exactly those it found (changed rows only)."""
    return await ctx.excluded.replace(tenant_id, users, run_id=run_id, now=now)


def plan_size(plan: Plan) -> int:
    """How many roster rows applying `plan` writes."""
    return plan.change_count


async def apply_plan(
    ctx: SyncContext,
    *,
    tenant_id: str,
    run_id: str,
    plan: Plan,
    roster: Mapping[str, RosterUser],
    now: datetime,
    purposes_checked: frozenset[str] = frozenset(),
    reasons: Mapping[str, str] | None = None,
    by: str | None = None,
) -> None:
    """Record, then write, what `plan` changes; then purge the rows past the grace period.

    `reasons` say why each removed (or restored) user goes (their exclusion reason, or that they
    left the selected groups); `by` is who started the run. `purposes_checked` are users whose
    mailbox Graph said is a person's this run: their rows are stamped so the next runs need not
    ask again for a while (`sync.engine.PURPOSE_RECHECK`). Raises sync.roster.PartialWrite when
    the write fails part-way (the records say what was meant; the run says how much landed).
    """
    why = reasons or {}
    records = [
        *(_record(AuditKind.ADDED, user.id, user.user_principal_name, run_id, now, by) for user in plan.adds),
        *(
            _record(AuditKind.UPDATED, c.id, c.after.user_principal_name, run_id, now, by, ",".join(c.fields))
            for c in plan.updates
        ),
        *(
            _record(AuditKind.RESTORED, u.id, u.user_principal_name, run_id, now, by, why.get(u.id))
            for u in plan.restores
        ),
        *(
            _record(
                AuditKind.REMOVED,
                u.id,
                u.user_principal_name,
                run_id,
                now,
                by,
                why.get(u.id, "notInSelectedGroups"),
            )
            for u in plan.removals
        ),
    ]
    if records:
        await ctx.audit.append(tenant_id, records)
    rows = _stamp_purpose_checks(
        roster, changed_rows(roster, plan, now=now, run_id=run_id), plan, purposes_checked, now
    )
    if rows:
        await ctx.roster.write(tenant_id, rows)
    await ctx.events.publish(tenant_id, records)  # only once written: the platform reacts to facts
    restored = {user.id for user in plan.restores}
    await purge_past_grace(
        ctx, tenant_id, (row for row in roster.values() if row.id not in restored), now, run_id=run_id
    )


def _record(
    kind: AuditKind,
    user_id: str,
    upn: str,
    run_id: str,
    now: datetime,
    by: str | None,
    reason: str | None = None,
) -> AuditRecord:
    return AuditRecord(
        at=now, kind=kind, run_id=run_id, user_id=user_id, user_principal_name=upn, reason=reason, by=by
    )


def _stamp_purpose_checks(
    roster: Mapping[str, RosterUser],
    written: list[RosterUser],
    plan: Plan,
    checked: frozenset[str],
    now: datetime,
) -> list[RosterUser]:
    """The rows to write, with the time their mailbox was checked, unchanged rows included."""
    if not checked:
        return written
    replace = msgspec.structs.replace
    rows = [
        replace(row, purpose_checked_at=now)
        if row.id in checked and row.status is RosterStatus.ACTIVE
        else row
        for row in written
    ]
    touched = {row.id for row in written}
    leaving = {row.id for row in plan.removals}
    rows.extend(
        replace(roster[uid], purpose_checked_at=now)
        for uid in sorted(checked - touched - leaving)
        if uid in roster and roster[uid].status is RosterStatus.ACTIVE
    )
    return rows


async def purge_past_grace(
    ctx: SyncContext, tenant_id: str, rows: Iterable[RosterUser], now: datetime, *, run_id: str
) -> int:
    """Delete rows removed longer ago than REMOVAL_GRACE_DAYS (no longer restorable); returns how many.

    Each purge goes on the audit trail first: it is the last trace of the user on the platform.
    """
    listed = list(rows)
    due = purge_due(listed, now=now, grace_days=ctx.settings.removal_grace_days)
    if due:
        names = {row.id: row.user_principal_name for row in listed}
        await ctx.audit.append(
            tenant_id,
            [_record(AuditKind.PURGED, uid, names[uid], run_id, now, None, "pastGrace") for uid in due],
        )
        await ctx.roster.delete(tenant_id, due)
    return len(due)


async def advance_delta(
    store: SyncStore,
    tenant: Tenant,
    selection: Selection,
    links: tuple[str, str],
    *,
    full_refresh_at: datetime | None,
    active_users: int,
) -> None:
    """Move the tenant's delta links forward: only ever after a successful run."""
    await store.save_delta_state(
        tenant.id,
        active_users=active_users,
        users_link=links[0],
        groups_link=links[1],
        selection_version=selection.version,
        rules=tenant.exclusion_rules,
        full_refresh_at=full_refresh_at,
    )
