"""The nightly incremental read: only the groups and users that changed since the last good run.

Delta is not transitive: a membership change in a nested group shows up as a change of that
group, so each selected group whose nesting closure holds a changed group is expanded again.
Users whose attributes changed are re-read with the groups they belong to. Everyone else keeps
the roster row of the last successful run. Anything this path cannot answer safely raises
`NeedFullRead`, and the engine reads everything instead.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from datetime import datetime, timedelta

import msgspec

from sync.directory import DirectoryReader
from sync.eligibility import Classification, classify_members, parse_exclusion_rules, purpose_candidates
from sync.models import (
    DirectoryUser,
    EligibleUser,
    GroupKind,
    RosterStatus,
    RosterUser,
    Run,
    RunReason,
    Selection,
    SelectionMode,
    Tenant,
)

FULL_REFRESH_EVERY = timedelta(days=7)
# Runs people start read everything, for exact counts; the timer's and Graph's read what changed.
INCREMENTAL_REASONS = frozenset({RunReason.NIGHTLY, RunReason.NOTIFICATION})


class NeedFullRead(Exception):
    """The incremental path cannot answer safely; read everything instead."""


class DeltaResult(msgspec.Struct, kw_only=True):
    """What changed since the last successful run, classified; `classification` None: nothing."""

    classification: Classification | None
    users_link: str
    groups_link: str


def incremental_allowed(tenant: Tenant, selection: Selection, run: Run, now: datetime) -> bool:
    """Nightly runs read only what changed, when the delta links match the current selection and rules."""
    if run.reason not in INCREMENTAL_REASONS or run.dry_run or run.allow_removals is not None:
        return False
    if not (tenant.users_delta_link and tenant.groups_delta_link and tenant.last_full_refresh_at):
        return False
    if tenant.delta_selection_version != selection.version or tenant.delta_rules != tenant.exclusion_rules:
        return False
    return now - tenant.last_full_refresh_at < FULL_REFRESH_EVERY  # weekly full reads catch what delta cannot


async def read_incremental(
    reader: DirectoryReader,
    tenant: Tenant,
    selection: Selection,
    load_roster: Callable[[], Awaitable[Mapping[str, RosterUser]]],
) -> DeltaResult:
    """Re-read only what changed since the last successful run and classify it (see module doc)."""
    rules = parse_exclusion_rules(tenant.exclusion_rules)
    assert tenant.users_delta_link and tenant.groups_delta_link
    changed_users, users_link = await reader.read_changes(tenant.users_delta_link, "User.Read.All")
    changed_groups, groups_link = await reader.read_changes(tenant.groups_delta_link, "GroupMember.Read.All")
    if not changed_users and not changed_groups:
        return DeltaResult(classification=None, users_link=users_link, groups_link=groups_link)
    roster = await load_roster()
    selected = [g.id for g in selection.groups]
    names = {g.id: g.display_name for g in selection.groups}
    watched = selected + ([rules.exclusion_group_id] if rules.exclusion_group_id else [])
    found = await reader.get_groups(watched)
    if any(group is None for group in found.values()):
        raise NeedFullRead("a selected group (or the exclusion group) no longer exists")
    microsoft365 = {
        gid for gid, group in found.items() if group is not None and group.kind is GroupKind.MICROSOFT365
    }
    closure = await reader.group_closure(watched, microsoft365=microsoft365)
    if rules.exclusion_group_id and closure[rules.exclusion_group_id] & changed_groups:
        raise NeedFullRead("the exclusion group changed")
    affected = [gid for gid in selected if closure[gid] & changed_groups]
    fresh = await reader.read_group_users(affected) if affected else None
    counted = await reader.count_group_users(affected) if affected else {}  # for the short-read rule
    users: dict[str, DirectoryUser] = dict(fresh.users) if fresh else {}
    others = sorted(changed_users - set(users))
    fetched = await reader.get_users(others) if others else {}
    users.update({uid: user for uid, user in fetched.items() if user is not None})
    gone = {uid for uid, user in fetched.items() if user is None}
    # Newcomers found in a re-read group may also be in groups that were not re-read: the
    # roster knows nothing of them, so their memberships are read like a changed user's.
    newcomers = [
        uid
        for uid in (fresh.users if fresh else {})
        if uid not in roster or roster[uid].status is not RosterStatus.ACTIVE
    ]
    memberships = await reader.groups_of_users(sorted({*others, *newcomers} - gone))
    excluded_ids = {uid for uid, groups in memberships.items() if rules.exclusion_group_id in groups}
    if rules.exclusion_group_id and fresh:
        excluded_ids |= set((await reader.read_group_users([rules.exclusion_group_id])).users)
    mailboxes = await reader.read_mailbox_purposes(purpose_candidates(users, rules))

    order = {gid: i for i, gid in enumerate(selected)}
    affected_set = set(affected)
    groups_of_user: dict[str, tuple[str, ...]] = {}
    for uid in users:
        member_of: set[str] = set(fresh.groups_of_user.get(uid, ())) if fresh else set()
        if uid in memberships:
            member_of |= memberships[uid] & set(selected)
        elif uid in roster and roster[uid].status is RosterStatus.ACTIVE:
            member_of |= set(roster[uid].groups) - affected_set
        if selection.mode is SelectionMode.ALL or member_of:
            groups_of_user[uid] = tuple(sorted(member_of, key=order.__getitem__))
    examined = classify_members(
        {uid: users[uid] for uid in groups_of_user},
        groups_of_user,
        group_names={gid: names[gid] for gid in affected},
        rules=rules,
        purposes=mailboxes.purposes if mailboxes is not None else None,
        excluded_ids=excluded_ids,
        purpose_unknown=mailboxes.unknown if mailboxes is not None else (),
        counted=counted,
    )
    # Unchanged users keep their row: eligible then, and nothing about them changed since.
    carried: list[EligibleUser] = []
    for uid, row in roster.items():
        if row.status is not RosterStatus.ACTIVE or uid in users or uid in gone:
            continue
        kept = tuple(g for g in row.groups if g not in affected_set)
        if selection.mode is SelectionMode.GROUPS and not kept:
            continue  # they came only through groups that were re-read without them
        carried.append(
            EligibleUser(
                id=uid,
                user_principal_name=row.user_principal_name,
                display_name=row.display_name,
                mail=row.mail,
                department=row.department,
                job_title=row.job_title,
                groups=kept,
            )
        )
    classification = msgspec.structs.replace(examined, eligible=examined.eligible + carried)
    return DeltaResult(classification=classification, users_link=users_link, groups_link=groups_link)
