"""The only code that writes or deletes roster rows, and the only code that moves delta links.

A plan reaches here only after `sync.safety.check_plan` let it through and the run confirmed
its tenant lease. Rows are written in 100-entity transactions (sync.roster); users removed
longer ago than REMOVAL_GRACE_DAYS are purged after a successful write; delta links move
forward only after a successful run, so a failed run is retried from the same point.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import datetime

import msgspec

from shared.settings import Settings
from sync.models import RosterStatus, RosterUser, Selection, Tenant
from sync.planner import Plan, changed_rows, purge_due
from sync.roster import RosterStore
from sync.store import SyncStore


async def apply_plan(
    roster_store: RosterStore,
    settings: Settings,
    *,
    tenant_id: str,
    run_id: str,
    plan: Plan,
    roster: Mapping[str, RosterUser],
    now: datetime,
    purposes_checked: frozenset[str] = frozenset(),
) -> None:
    """Write what `plan` changes, then purge the rows past the grace period.

    `purposes_checked` are users whose mailbox Graph said is a person's this run: their rows
    are stamped so the next runs need not ask again for a while (`sync.engine.PURPOSE_RECHECK`).
    """
    rows = _stamp_purpose_checks(
        roster, changed_rows(roster, plan, now=now, run_id=run_id), plan, purposes_checked, now
    )
    if rows:
        await roster_store.write(tenant_id, rows)
    restored = {user.id for user in plan.restores}
    await purge_past_grace(
        roster_store, settings, tenant_id, (row for row in roster.values() if row.id not in restored), now
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
    roster_store: RosterStore, settings: Settings, tenant_id: str, rows: Iterable[RosterUser], now: datetime
) -> int:
    """Delete rows removed longer ago than REMOVAL_GRACE_DAYS (no longer restorable); returns how many."""
    due = purge_due(rows, now=now, grace_days=settings.removal_grace_days)
    if due:
        await roster_store.delete(tenant_id, due)
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
