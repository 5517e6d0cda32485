"""Every rule that can hold or fail a run, behind one `check_plan` (octoDNS's `raise_if_unsafe`).

Nothing here does I/O. The engine calls `check_plan` with the plan, the roster it was made
from and what the run read; whatever the rules decide, `sync.apply` writes only a plan that
passed. The rules:

- **Missing groups** fail the run: a selected group that no longer exists cannot be read, and
  removing its people on that basis would be removing on partial knowledge.
- **The removal guard** holds a run whose removals exceed BOTH a share of the active roster
  (`percent`) and a number of users (`min_users`), until someone approves it.
- **Emptied groups** hold a run that would remove users because a selected group now reads as
  empty, although people on the platform came through it. The percentage guard cannot see a
  group of 500 people that suddenly reads as empty in a 20,000-user roster (2.5 % passes), yet
  "a group that had members now has none" is exactly what a Graph incident, a group emptied by
  mistake or a sync tool gone wrong looks like.
- **Approvals are exact**: an approved run passes the hold only when it removes exactly the
  users the held run showed (`removal_digest`); otherwise it is held again.
"""

from __future__ import annotations

import enum
import hashlib
import math
from collections.abc import Iterable, Sequence

import msgspec

from sync.models import RosterStatus, RosterUser, RunGroup
from sync.planner import Plan

# A group's user count comes from Graph's index, which lags behind changes by seconds to minutes
# ("List group transitive members": $count is eventually consistent); the member list is live.
# So a read may fall short of the count by a little; beyond this slack it is a short answer.
SHORT_READ_SLACK_PERCENT = 5
SHORT_READ_MIN_SLACK = 2

__all__ = [
    "EmptiedGroup",
    "RemovalGuard",
    "SafetyDecision",
    "SafetyVerdict",
    "check_plan",
    "emptied_groups",
    "missing_groups_detail",
    "removal_digest",
]


class SafetyVerdict(enum.StrEnum):
    """What the safety rules let a run do with its plan."""

    APPLY = "apply"
    HOLD = "hold"  # wait for an approval
    FAIL = "fail"  # never apply; nothing is written


class SafetyDecision(msgspec.Struct, frozen=True, kw_only=True):
    """The outcome of `check_plan`, with a sentence for the admin."""

    verdict: SafetyVerdict
    detail: str
    removals: int = 0
    active_before: int = 0

    @property
    def held(self) -> bool:
        """Whether the run must wait for an approval."""
        return self.verdict is SafetyVerdict.HOLD


def removal_digest(plan: Plan) -> str:
    """A fingerprint of exactly who the plan removes: an approval applies to those users only."""
    digest = hashlib.sha256()
    for user in plan.removals:  # sorted by id
        digest.update(user.id.encode() + b"\n")
    return digest.hexdigest()[:32]


def _number(value: float) -> str:
    """15.0 → "15", 12.345 → "12.3", 1000 → "1,000"."""
    text = f"{value:,.1f}"
    return text[:-2] if text.endswith(".0") else text


class RemovalGuard(msgspec.Struct, frozen=True, kw_only=True):
    """Thresholds: hold a run whose removals exceed BOTH `percent` of the active users and `min_users`.

    Both must be exceeded so a small tenant can lose a few users and a large one a few percent
    without an approval; the thresholds themselves are allowed.
    """

    percent: float = 10
    min_users: int = 20
    majority_percent: float = 50  # held beyond this share of a roster of 2 or more, whatever its size

    def __post_init__(self) -> None:
        if self.percent < 0 or self.min_users < 0 or self.majority_percent < 0:
            raise ValueError("removal guard thresholds must not be negative")

    def threshold_text(self) -> str:
        """The thresholds as the admin reads them."""
        return f"the {_number(self.percent)}% / {_number(self.min_users)} users threshold"

    def exceeded_by(self, removals: int, active_before: int) -> bool:
        """Whether `removals` of `active_before` active users pass both thresholds."""
        # Integer-friendly comparison: no rounding at the exact boundary.
        return removals > self.min_users and removals * 100 > self.percent * active_before

    def majority_of(self, removals: int, active_before: int) -> bool:
        """Whether `removals` take more than `majority_percent` of a roster of 2 or more (any size)."""
        return active_before >= 2 and removals * 100 > self.majority_percent * active_before


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
    roster before the run, whose rows name the selected groups each user came through. A group
    that was empty before, or whose people all stay through another selected group, is not
    reported: nobody is lost because of it. Sorted by group id.
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
            id=gid, display_name=empty[gid].display_name, on_roster=on_roster[gid], removing=removing[gid]
        )
        for gid in sorted(empty)
        if removing[gid]
    ]


def missing_groups_detail(missing: Sequence[str]) -> str | None:
    """Why a run fails when selected groups no longer exist (None when none is missing)."""
    if not missing:
        return None
    return (
        "selected group(s) no longer exist in the tenant: "
        + ", ".join(missing)
        + "; nobody was removed. Update the selection."
    )


def _short_by(counted: int, read: int) -> bool:
    """Whether `read` users fall short of Graph's count beyond the index lag we allow."""
    return read < counted - max(SHORT_READ_MIN_SLACK, math.ceil(counted * SHORT_READ_SLACK_PERCENT / 100))


def check_plan(
    plan: Plan,
    *,
    roster: Sequence[RosterUser],
    groups: Sequence[RunGroup],
    guard: RemovalGuard,
    approved_digest: str | None = None,
    approved_removals: int | None = None,
    tenant_count: tuple[int, int] | None = None,
) -> SafetyDecision:
    """Decide whether `plan` may be applied, must wait for an approval, or must never be applied.

    `roster` is the roster the plan was made from; `groups` the run's per-group numbers (with
    Graph's own count of each group's users, when it was asked); `tenant_count` is (Graph's count,
    users read) for mode `all`; `approved_digest` the fingerprint of the removals an approval covers
    (`approved_removals` of them): an approval of other removals holds the run and says so.
    """
    short = [
        f"'{g.display_name}' ({g.id}): {g.members:,} users read, Graph counts {g.counted:,}"
        for g in groups
        if g.counted is not None and _short_by(g.counted, g.members)
    ]
    if tenant_count is not None and _short_by(*tenant_count):
        short.append(f"the tenant: {tenant_count[1]:,} users read, Graph counts {tenant_count[0]:,}")
    active_before = sum(1 for row in roster if row.status is RosterStatus.ACTIVE)
    removals = len(plan.removals)
    decided = {"removals": removals, "active_before": active_before}
    if short:
        return SafetyDecision(
            verdict=SafetyVerdict.FAIL,
            detail="Microsoft Graph answered fewer users than it counts, beyond what its index lag explains ("
            + "; ".join(short)
            + "). A short answer must not remove anyone: nothing was changed; the next refresh reads again.",
            **decided,
        )
    if removals == 0:
        return SafetyDecision(verdict=SafetyVerdict.APPLY, detail="This run removes no users.", **decided)
    approved = approved_digest is not None and removal_digest(plan) == approved_digest
    reasons: list[str] = []
    share = 100.0 if active_before == 0 else removals * 100 / active_before
    what = f"{_number(removals)} of {_number(active_before)} active users ({_number(share)}%)"
    active_after = active_before - removals + len(plan.adds) + len(plan.restores)
    if active_before > 0 and active_after <= 0:
        reasons.append(f"This run would remove {what} and leave the tenant with no active user.")
    elif guard.exceeded_by(removals, active_before):
        reasons.append(f"This run would remove {what}, more than {guard.threshold_text()}.")
    elif guard.majority_of(removals, active_before):
        reasons.append(
            f"This run would remove {what}, more than {_number(guard.majority_percent)}% of the roster."
        )
    emptied = emptied_groups(roster, groups, plan)
    if emptied:
        named = "; ".join(
            f"'{g.display_name}' ({g.id}) had {g.on_roster:,} users on the platform, {g.removing:,} of them "
            "would be removed"
            for g in emptied
        )
        plural = "s read" if len(emptied) > 1 else " reads"
        reasons.append(
            f"Selected group{plural} as empty in Microsoft Graph: {named}. Graph can answer an empty "
            "member list during an incident, and a group emptied by mistake looks the same; check the "
            "group in the Microsoft 365 admin center."
        )
    else:
        empty = [g for g in groups if g.members == 0]
        if empty:  # e.g. a group deleted and made again under a new id, not populated yet
            names = ", ".join(f"'{g.display_name}' ({g.id})" for g in empty)
            reasons.append(
                f"Selected group{'s' if len(empty) > 1 else ''} {names} read{'' if len(empty) > 1 else 's'} "
                f"as empty while this run removes {_number(removals)} users; check "
                f"{'them' if len(empty) > 1 else 'it'} in the Microsoft 365 admin center."
            )
    if not reasons:
        return SafetyDecision(
            verdict=SafetyVerdict.APPLY,
            detail=f"This run removes {what}, within {guard.threshold_text()}.",
            **decided,
        )
    if approved:
        return SafetyDecision(
            verdict=SafetyVerdict.APPLY, detail=" ".join(reasons) + " The removals were approved.", **decided
        )
    if approved_digest is not None:
        shown = f" ({_number(approved_removals)} users)" if approved_removals is not None else ""
        reasons.append(
            f"The removals that were confirmed{shown} are not exactly the ones this run would make: the "
            "directory or the settings changed after they were shown, so nothing was applied."
        )
    return SafetyDecision(
        verdict=SafetyVerdict.HOLD,
        detail=" ".join(reasons) + " To apply the removals, approve this run.",
        **decided,
    )


def guard_for(percent: float | None, min_users: int | None, *, default: RemovalGuard) -> RemovalGuard:
    """A tenant's removal guard: its own thresholds where set, else the app's."""
    return RemovalGuard(
        percent=percent if percent is not None else default.percent,
        min_users=min_users if min_users is not None else default.min_users,
        majority_percent=default.majority_percent,
    )
