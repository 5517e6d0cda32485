"""Pure roster planning: the roster now + the eligible users → a `Plan`, then a safety check.

Read desired state, read current state, compute small change records, check them
(`RemovalGuard`), then apply: the octodns way. Nothing here does I/O, so a plan
can be shown (dry run, held run) exactly as it would be applied.

A user is matched by Entra object id. Groups are compared order-insensitively
(a reordered membership list is not an update); when a user is written, the
eligible user's group order is kept.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime, timedelta
from typing import TypeVar

import msgspec

from sync.models import EligibleUser, RosterStatus, RosterUser

__all__ = [
    "COMPARED_FIELDS",
    "GuardDecision",
    "Plan",
    "RemovalGuard",
    "RosterChange",
    "apply_plan_to_roster",
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


class RosterChange(msgspec.Struct, frozen=True, kw_only=True):
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


def plan_roster_changes(roster: Iterable[RosterUser], eligible: Iterable[EligibleUser]) -> Plan:
    """Compare the roster with the users who should be on it; O(n) with dicts.

    Removed users who are still not eligible need nothing (they are not removed twice).
    Raises ValueError when either input holds the same id twice.
    """
    current = _by_id(roster, "roster")
    wanted = _by_id(eligible, "eligible users")
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
            removals.append(row)
    return Plan(
        adds=tuple(sorted(adds, key=_id)),
        updates=tuple(sorted(updates, key=_id)),
        restores=tuple(sorted(restores, key=_id)),
        removals=tuple(sorted(removals, key=_id)),
        unchanged=unchanged,
    )


def apply_plan_to_roster(roster: Iterable[RosterUser], plan: Plan, *, now: str) -> list[RosterUser]:
    """The roster after `plan` (pure), sorted by id; `now` is the ISO 8601 UTC timestamp written.

    Raises ValueError when the plan does not fit the roster (an add for a known id,
    a change for an unknown one).
    """
    rows = _by_id(roster, "roster")
    for row in changed_rows(rows, plan, now=now):
        rows[row.id] = row
    return [rows[k] for k in sorted(rows)]


def changed_rows(roster: Mapping[str, RosterUser], plan: Plan, *, now: str) -> list[RosterUser]:
    """Only the roster rows `plan` writes, in their new state: what the roster writer stores.

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
        out.append(replace(restored, status=RosterStatus.ACTIVE, removed_at=None))
    for removed in plan.removals:
        _require(roster, removed.id, "removes")
        out.append(replace(roster[removed.id], status=RosterStatus.REMOVED, removed_at=now, updated_at=now))
    return out


def _with_attributes(row: RosterUser, user: EligibleUser, now: str) -> RosterUser:
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


# ---------------------------------------------------------------------------
# Safety
# ---------------------------------------------------------------------------


def removal_digest(plan: Plan) -> str:
    """A fingerprint of exactly who the plan removes: an approval applies to those users only."""
    digest = hashlib.sha256()
    for user in plan.removals:  # sorted by id
        digest.update(user.id.encode() + b"\n")
    return digest.hexdigest()[:32]


class GuardDecision(msgspec.Struct, frozen=True, kw_only=True):
    """Whether the removal guard holds a run, with a sentence for the admin."""

    held: bool
    detail: str
    removals: int = 0
    active_before: int = 0


def _number(value: float) -> str:
    """15.0 → "15", 12.345 → "12.3", 1000 → "1,000"."""
    text = f"{value:,.1f}"
    return text[:-2] if text.endswith(".0") else text


class RemovalGuard(msgspec.Struct, frozen=True, kw_only=True):
    """Holds a run whose removals exceed BOTH `percent` of the active users and `min_users`.

    Both must be exceeded so a small tenant can lose a few users and a large one a
    few percent without an approval; the thresholds themselves are allowed.
    """

    percent: float = 10
    min_users: int = 20

    def __post_init__(self) -> None:
        if self.percent < 0 or self.min_users < 0:
            raise ValueError("removal guard thresholds must not be negative")

    def check(self, plan: Plan, active_before: int, *, allow_removals: bool = False) -> GuardDecision:
        """Decide whether `plan` must wait for an approval; `allow_removals` is that approval."""
        if active_before < 0:
            raise ValueError("active_before must not be negative")
        removals = len(plan.removals)
        threshold = f"the {_number(self.percent)}% / {_number(self.min_users)} users threshold"
        if removals == 0:
            return GuardDecision(held=False, detail="This run removes no users.", active_before=active_before)
        share = 100.0 if active_before == 0 else removals * 100 / active_before
        what = f"{_number(removals)} of {_number(active_before)} active users ({_number(share)}%)"
        # Integer-friendly comparison: no rounding at the exact boundary.
        exceeds = removals > self.min_users and removals * 100 > self.percent * active_before
        if exceeds and allow_removals:
            detail = f"This run removes {what}, more than {threshold}; the removals were approved."
            held = False
        elif exceeds:
            detail = f"This run would remove {what}, more than {threshold}; approve it to apply."
            held = True
        else:
            detail = f"This run removes {what}, within {threshold}."
            held = False
        return GuardDecision(held=held, detail=detail, removals=removals, active_before=active_before)


def _parse_utc(text: str) -> datetime | None:
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        return None
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment


def purge_due(roster: Iterable[RosterUser], *, now: datetime, grace_days: int) -> list[str]:
    """Ids (sorted) of removed users whose grace period is over: removed_at + grace_days <= now.

    A row without a readable removed_at is never purged: its age is unknown.
    """
    if grace_days < 0:
        raise ValueError("grace_days must not be negative")
    if now.tzinfo is None:
        now = now.replace(tzinfo=UTC)
    cutoff = now - timedelta(days=grace_days)
    due: list[str] = []
    for row in roster:
        if row.status != RosterStatus.REMOVED or not row.removed_at:
            continue
        removed_at = _parse_utc(row.removed_at)
        if removed_at is not None and removed_at <= cutoff:
            due.append(row.id)
    due.sort()
    return due
