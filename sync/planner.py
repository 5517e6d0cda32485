"""Pure roster planning: the roster now + the eligible users → a `Plan`.

Read desired state, read current state, compute small change records, check them
(`sync.safety.check_plan`), then apply (`sync.apply`): the octodns way. Nothing here does
I/O, so a plan can be shown (dry run, held run) exactly as it would be applied.

A user is matched by Entra object id. Groups are compared order-insensitively
(a reordered membership list is not an update); when a user is written, the
eligible user's group order is kept.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from datetime import UTC, datetime, timedelta
from typing import TypeVar

import msgspec

from sync.models import EligibleUser, RosterStatus, RosterUser

__all__ = [
    "COMPARED_FIELDS",
    "Plan",
    "RosterChange",
    "apply_plan_to_roster",
    "changed_rows",
    "plan_restores",
    "plan_roster_changes",
    "purge_due",
]

# Attributes an update writes; `RosterChange.fields` names the ones that differ.
COMPARED_FIELDS: tuple[str, ...] = (
    "user_principal_name",
    "display_name",
    "mail",
    "department",
    "job_title",
    "groups",
)


class RosterChange(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """An active roster user whose attributes or groups differ from the directory's."""

    before: RosterUser
    after: EligibleUser
    fields: tuple[str, ...]  # names from COMPARED_FIELDS that differ, in that order

    @property
    def id(self) -> str:
        """The user's Entra object id."""
        return self.after.id


class Plan(msgspec.Struct, frozen=True, kw_only=True):
    """What one run changes on the roster; every tuple is sorted by user id."""

    adds: tuple[EligibleUser, ...] = ()  # not on the roster at all
    updates: tuple[RosterChange, ...] = ()  # active, attributes or groups differ
    restores: tuple[EligibleUser, ...] = ()  # removed (within grace) and eligible again
    removals: tuple[RosterUser, ...] = ()  # active and no longer eligible
    unchanged: int = 0  # active, eligible, nothing differs

    @property
    def is_empty(self) -> bool:
        """True when applying the plan would change nothing."""
        return not (self.adds or self.updates or self.restores or self.removals)

    @property
    def change_count(self) -> int:
        """Users the plan touches: adds + updates + restores + removals."""
        return len(self.adds) + len(self.updates) + len(self.restores) + len(self.removals)


def _changed_fields(before: RosterUser, after: EligibleUser) -> tuple[str, ...]:
    changed: list[str] = []
    if before.user_principal_name != after.user_principal_name:
        changed.append("user_principal_name")
    if before.display_name != after.display_name:
        changed.append("display_name")
    if before.mail != after.mail:
        changed.append("mail")
    if before.department != after.department:
        changed.append("department")
    if before.job_title != after.job_title:
        changed.append("job_title")
    # Tuple equality first: the common case, and it avoids building two sets per user.
    if before.groups != after.groups and set(before.groups) != set(after.groups):
        changed.append("groups")
    return tuple(changed)


_Row = TypeVar("_Row", RosterUser, EligibleUser)


def _by_id(items: Iterable[_Row], what: str) -> dict[str, _Row]:
    out: dict[str, _Row] = {}
    for item in items:
        if item.id in out:
            # Two rows for one object id would make the plan depend on input order.
            raise ValueError(f"duplicate user id in {what}: {item.id}")
        out[item.id] = item
    return out


def _id(item: RosterUser | EligibleUser | RosterChange) -> str:
    return item.id


def plan_roster_changes(
    roster: Iterable[RosterUser], eligible: Iterable[EligibleUser], *, keep: Collection[str] = ()
) -> Plan:
    """Compare the roster with the users who should be on it; O(n) with dicts.

    Removed users who are still not eligible need nothing (they are not removed twice). Users in
    `keep` (their verdict is unknown: Graph left out an attribute) are left exactly as they are:
    an active row is neither removed nor updated, a newcomer is not added.
    Raises ValueError when either input holds the same id twice.
    """
    current = _by_id(roster, "roster")
    wanted = _by_id(eligible, "eligible users")
    for user_id in keep:
        wanted.pop(user_id, None)
    adds: list[EligibleUser] = []
    updates: list[RosterChange] = []
    restores: list[EligibleUser] = []
    removals: list[RosterUser] = []
    unchanged = 0
    for user_id, user in wanted.items():
        row = current.get(user_id)
        if row is None:
            adds.append(user)
        elif row.status == RosterStatus.REMOVED:
            restores.append(user)
        else:
            changed = _changed_fields(row, user)
            if changed:
                updates.append(RosterChange(before=row, after=user, fields=changed))
            else:
                unchanged += 1
    for user_id, row in current.items():
        if row.status == RosterStatus.ACTIVE and user_id not in wanted:
            if user_id in keep:
                unchanged += 1
            else:
                removals.append(row)
    return Plan(
        adds=tuple(sorted(adds, key=_id)),
        updates=tuple(sorted(updates, key=_id)),
        restores=tuple(sorted(restores, key=_id)),
        removals=tuple(sorted(removals, key=_id)),
        unchanged=unchanged,
    )


def apply_plan_to_roster(roster: Iterable[RosterUser], plan: Plan, *, now: datetime) -> list[RosterUser]:
    """The roster after `plan` (pure), sorted by id; `now` is the time written.

    Raises ValueError when the plan does not fit the roster (an add for a known id,
    a change for an unknown one).
    """
    rows = _by_id(roster, "roster")
    for row in changed_rows(rows, plan, now=now):
        rows[row.id] = row
    return [rows[k] for k in sorted(rows)]


def changed_rows(
    roster: Mapping[str, RosterUser], plan: Plan, *, now: datetime, run_id: str | None = None
) -> list[RosterUser]:
    """Only the roster rows `plan` writes, in their new state: what `sync.apply` stores.

    Removed rows name `run_id`, the run that removed them, so its removals can be undone.

    Raises ValueError when the plan does not fit the roster.
    """
    replace = msgspec.structs.replace
    out: list[RosterUser] = []
    for user in plan.adds:
        if user.id in roster:
            raise ValueError(f"plan adds user {user.id}, who is already on the roster")
        out.append(
            RosterUser(
                id=user.id,
                user_principal_name=user.user_principal_name,
                display_name=user.display_name,
                mail=user.mail,
                department=user.department,
                job_title=user.job_title,
                groups=user.groups,
                status=RosterStatus.ACTIVE,
                added_at=now,
                updated_at=now,
            )
        )
    for change in plan.updates:
        _require(roster, change.id, "updates")
        out.append(_with_attributes(roster[change.id], change.after, now))
    for user in plan.restores:
        _require(roster, user.id, "restores")
        # Restored, not re-created: added_at survives so the platform keeps the history.
        restored = _with_attributes(roster[user.id], user, now)
        out.append(replace(restored, status=RosterStatus.ACTIVE, removed_at=None, removed_by_run=None))
    for removed in plan.removals:
        _require(roster, removed.id, "removes")
        out.append(
            replace(
                roster[removed.id],
                status=RosterStatus.REMOVED,
                removed_at=now,
                updated_at=now,
                removed_by_run=run_id,
            )
        )
    return out


def _with_attributes(row: RosterUser, user: EligibleUser, now: datetime) -> RosterUser:
    """The row with the directory's current attributes and groups."""
    return msgspec.structs.replace(
        row,
        user_principal_name=user.user_principal_name,
        display_name=user.display_name,
        mail=user.mail,
        department=user.department,
        job_title=user.job_title,
        groups=user.groups,
        updated_at=now,
    )


def _require(rows: Mapping[str, RosterUser], user_id: str, verb: str) -> None:
    if user_id not in rows:
        raise ValueError(f"plan {verb} user {user_id}, who is not on the roster")


def purge_due(roster: Iterable[RosterUser], *, now: datetime, grace_days: int) -> list[str]:
    """Ids (sorted) of removed users whose grace period is over: removed_at + grace_days <= now.

    A row without removed_at is never purged: its age is unknown.
    """
    if grace_days < 0:
        raise ValueError("grace_days must not be negative")
    if now.tzinfo is None:
        now = now.replace(tzinfo=UTC)
    cutoff = now - timedelta(days=grace_days)
    return sorted(
        row.id
        for row in roster
        if row.status is RosterStatus.REMOVED and row.removed_at is not None and row.removed_at <= cutoff
    )


def plan_restores(
    roster: Iterable[RosterUser], *, removed_by: str, removed_since: datetime
) -> tuple[Plan, int]:
    """An undo: the plan that restores every user run `removed_by` removed after `removed_since`.

    Users restored since, removed again by a later run, or purged are not touched. Returns the
    plan and how many of that run's removals are too old to restore.
    """
    removed = [
        row for row in roster if row.status is RosterStatus.REMOVED and row.removed_by_run == removed_by
    ]
    fresh = [row for row in removed if row.removed_at is not None and row.removed_at > removed_since]
    restores = tuple(
        EligibleUser(
            id=row.id,
            user_principal_name=row.user_principal_name,
            display_name=row.display_name,
            mail=row.mail,
            department=row.department,
            job_title=row.job_title,
            groups=row.groups,
        )
        for row in sorted(fresh, key=_id)
    )
    return Plan(restores=restores), len(removed) - len(fresh)
