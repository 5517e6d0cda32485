"""Pure removal-safety rules beyond the percentage guard (sync.planner.RemovalGuard).

The percentage guard holds a run whose removals exceed BOTH a share of the active roster and
a number of users. It cannot see a selected group of 500 people that suddenly reads as empty
in a 20,000-user roster: 2.5 % passes. Yet "a group that had members now has none" is exactly
what a Graph incident, a group emptied by mistake or a sync tool gone wrong looks like, and
the users removed because of it would be the whole team. So:

    a selected group that reads as empty, while users on the platform came through it and
    this run would remove some of them, holds the run until someone approves it.

Nothing here does I/O; the engine calls `emptied_group_guard` after the percentage guard.
"""

from __future__ import annotations

from collections.abc import Iterable

import msgspec

from sync.models import RosterStatus, RosterUser, RunGroup
from sync.planner import GuardDecision, Plan

__all__ = ["EmptiedGroup", "emptied_group_guard", "emptied_groups"]


class EmptiedGroup(msgspec.Struct, frozen=True, kw_only=True):
    """A selected group that reads as empty although users on the platform came through it."""

    id: str
    display_name: str
    on_roster: int  # active roster users who came through this group before this run
    removing: int  # of those, the users this run would remove


def emptied_groups(
    roster: Iterable[RosterUser], groups: Iterable[RunGroup], plan: Plan
) -> list[EmptiedGroup]:
    """Selected groups read with 0 members whose users on the roster this plan would remove.

    `groups` are the run's per-group numbers (only groups read in this run); `roster` is the
    roster before the run, whose rows name the selected groups each user came through.
    A group that was empty before, or whose people all stay through another selected group,
    is not reported: nobody is lost because of it. Sorted by group id.
    """
    empty = {group.id: group for group in groups if group.members == 0}
    if not empty:
        return []
    leaving = {user.id for user in plan.removals}
    on_roster = dict.fromkeys(empty, 0)
    removing = dict.fromkeys(empty, 0)
    for row in roster:
        if row.status is not RosterStatus.ACTIVE:
            continue
        for gid in row.groups:
            if gid in empty:
                on_roster[gid] += 1
                removing[gid] += row.id in leaving
    return [
        EmptiedGroup(
            id=gid,
            display_name=empty[gid].display_name,
            on_roster=on_roster[gid],
            removing=removing[gid],
        )
        for gid in sorted(empty)
        if removing[gid]
    ]


def emptied_group_guard(
    roster: Iterable[RosterUser], groups: Iterable[RunGroup], plan: Plan, *, approved: bool = False
) -> GuardDecision | None:
    """Hold a run that would remove users because a selected group now reads as empty.

    Returns None when no selected group emptied (the caller keeps its own decision), else a
    decision that holds the run, or lets it pass when `approved` (the approved re-run of a
    held run: `allow_removals` covers its removals).
    """
    found = emptied_groups(roster, groups, plan)
    if not found:
        return None
    named = "; ".join(
        f"'{g.display_name}' ({g.id}) had {g.on_roster:,} users on the platform, {g.removing:,} of them "
        "would be removed"
        for g in found
    )
    plural = "s read" if len(found) > 1 else " reads"
    removals = len(plan.removals)
    if approved:
        return GuardDecision(
            held=False,
            detail=f"Selected group{plural} as empty in Microsoft Graph: {named}; "
            "the removals were approved.",
            removals=removals,
        )
    return GuardDecision(
        held=True,
        detail=(
            f"Selected group{plural} as empty in Microsoft Graph: {named}. Graph can answer an empty "
            "member list during an incident, and a group emptied by mistake looks the same; check the "
            "group in the Microsoft 365 admin center, then approve this run to apply the removals."
        ),
        removals=removals,
    )
