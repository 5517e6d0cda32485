"""Roster planning, the removal guard and purging: hand-built rosters, no mocks."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest

from sync.models import EligibleUser, RosterStatus, RosterUser
from sync.planner import (
    GuardDecision,
    Plan,
    RemovalGuard,
    RosterChange,
    apply_plan_to_roster,
    plan_roster_changes,
    purge_due,
)

EARLIER = "2026-01-01T02:00:00Z"
NOW = "2026-02-01T02:00:00Z"


def eligible(uid: str, **overrides: Any) -> EligibleUser:
    fields: dict[str, Any] = {
        "id": uid,
        "user_principal_name": f"{uid}@contoso.com",
        "display_name": f"User {uid}",
        "mail": f"{uid}@contoso.com",
        "department": "Sales",
        "job_title": "Account manager",
        "groups": ("g-sales",),
    }
    fields.update(overrides)
    return EligibleUser(**fields)


def active(uid: str, **overrides: Any) -> RosterUser:
    fields: dict[str, Any] = {
        "id": uid,
        "user_principal_name": f"{uid}@contoso.com",
        "display_name": f"User {uid}",
        "mail": f"{uid}@contoso.com",
        "department": "Sales",
        "job_title": "Account manager",
        "groups": ("g-sales",),
        "status": RosterStatus.ACTIVE,
        "added_at": EARLIER,
        "updated_at": EARLIER,
    }
    fields.update(overrides)
    return RosterUser(**fields)


def removed(uid: str, **overrides: Any) -> RosterUser:
    fields: dict[str, Any] = {"status": RosterStatus.REMOVED, "removed_at": EARLIER}
    fields.update(overrides)
    return active(uid, **fields)


# ---------------------------------------------------------------------------
# plan_roster_changes
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("roster", "wanted", "expected"),
    [
        pytest.param([], [], Plan(), id="empty-to-empty"),
        pytest.param([], [eligible("a")], Plan(adds=(eligible("a"),)), id="add"),
        pytest.param([active("a")], [], Plan(removals=(active("a"),)), id="remove"),
        pytest.param([removed("a")], [eligible("a")], Plan(restores=(eligible("a"),)), id="restore"),
        pytest.param(
            [removed("a", department="HR")],
            [eligible("a")],
            Plan(restores=(eligible("a"),)),
            id="restore-with-changed-attributes",
        ),
        pytest.param([removed("a")], [], Plan(), id="already-removed-stays-removed-without-change"),
        pytest.param([active("a")], [eligible("a")], Plan(unchanged=1), id="unchanged"),
        pytest.param(
            [active("a", groups=("g1", "g2"))],
            [eligible("a", groups=("g2", "g1"))],
            Plan(unchanged=1),
            id="group-order-only-is-not-an-update",
        ),
        pytest.param(
            [active("a", groups=("g1", "g1", "g2"))],
            [eligible("a", groups=("g2", "g1"))],
            Plan(unchanged=1),
            id="group-duplicates-are-not-an-update",
        ),
        pytest.param(
            [active("a", groups=("g1",))],
            [eligible("a", groups=("g1", "g2"))],
            Plan(
                updates=(
                    RosterChange(
                        before=active("a", groups=("g1",)),
                        after=eligible("a", groups=("g1", "g2")),
                        fields=("groups",),
                    ),
                )
            ),
            id="update-groups-only",
        ),
        pytest.param(
            [active("a", department="Sales", job_title="Rep", display_name="Old")],
            [eligible("a", department="HR", job_title="Rep", display_name="New")],
            Plan(
                updates=(
                    RosterChange(
                        before=active("a", department="Sales", job_title="Rep", display_name="Old"),
                        after=eligible("a", department="HR", job_title="Rep", display_name="New"),
                        fields=("display_name", "department"),
                    ),
                )
            ),
            id="update-attributes",
        ),
        pytest.param(
            [active("a")],
            [eligible("a", user_principal_name="A@contoso.com", mail=None, job_title=None)],
            Plan(
                updates=(
                    RosterChange(
                        before=active("a"),
                        after=eligible("a", user_principal_name="A@contoso.com", mail=None, job_title=None),
                        fields=("user_principal_name", "mail", "job_title"),
                    ),
                )
            ),
            id="update-upn-case-and-cleared-attributes",
        ),
    ],
)
def test_plan(roster: list[RosterUser], wanted: list[EligibleUser], expected: Plan) -> None:
    assert plan_roster_changes(roster, wanted) == expected


def test_plan_of_a_mixed_roster_is_sorted_and_counted() -> None:
    roster = [active("e"), active("b"), removed("d"), removed("f"), active("c", department="HR"), active("g")]
    wanted = [eligible("h"), eligible("a"), eligible("d"), eligible("c"), eligible("g")]
    plan = plan_roster_changes(roster, wanted)
    assert [u.id for u in plan.adds] == ["a", "h"]
    assert [c.id for c in plan.updates] == ["c"]
    assert [u.id for u in plan.restores] == ["d"]
    assert [u.id for u in plan.removals] == ["b", "e"]
    assert plan.unchanged == 1
    assert plan.change_count == 6
    assert not plan.is_empty
    # Input order does not matter: plans compare equal.
    assert plan_roster_changes(reversed(roster), reversed(wanted)) == plan


def test_plan_accepts_one_shot_iterables() -> None:
    plan = plan_roster_changes(iter([active("a")]), (u for u in [eligible("b")]))
    assert [u.id for u in plan.adds] == ["b"] and [u.id for u in plan.removals] == ["a"]


@pytest.mark.parametrize(
    ("roster", "wanted", "what"),
    [
        pytest.param([active("a"), removed("a")], [], "roster", id="roster"),
        pytest.param([], [eligible("a"), eligible("a")], "eligible users", id="eligible"),
    ],
)
def test_duplicate_ids_are_refused(roster: list[RosterUser], wanted: list[EligibleUser], what: str) -> None:
    with pytest.raises(ValueError, match=f"duplicate user id in {what}: a"):
        plan_roster_changes(roster, wanted)


def test_empty_plan_properties() -> None:
    assert Plan().is_empty and Plan().change_count == 0
    assert Plan(unchanged=5).is_empty


# ---------------------------------------------------------------------------
# apply_plan_to_roster
# ---------------------------------------------------------------------------


def test_apply_sets_statuses_and_timestamps() -> None:
    roster = [active("b"), removed("d", added_at="2025-06-01T00:00:00Z"), active("c", department="HR")]
    wanted = [eligible("a", groups=("g2", "g1")), eligible("c"), eligible("d", department="Legal")]
    after = {u.id: u for u in apply_plan_to_roster(roster, plan_roster_changes(roster, wanted), now=NOW)}

    assert after["a"] == RosterUser(
        id="a",
        user_principal_name="a@contoso.com",
        display_name="User a",
        mail="a@contoso.com",
        department="Sales",
        job_title="Account manager",
        groups=("g2", "g1"),  # the eligible user's order is kept when written
        status=RosterStatus.ACTIVE,
        added_at=NOW,
        updated_at=NOW,
        removed_at=None,
    )
    assert after["b"] == active("b", status=RosterStatus.REMOVED, removed_at=NOW, updated_at=NOW)
    assert after["c"] == active("c", department="Sales", updated_at=NOW)
    assert after["d"] == active(
        "d", department="Legal", added_at="2025-06-01T00:00:00Z", updated_at=NOW, removed_at=None
    )


def test_apply_returns_rows_sorted_and_leaves_untouched_rows_alone() -> None:
    roster = [active("z"), removed("y"), active("x")]
    after = apply_plan_to_roster(roster, plan_roster_changes(roster, [eligible("z"), eligible("x")]), now=NOW)
    assert after == [active("x"), removed("y"), active("z")]


@pytest.mark.parametrize(
    ("roster", "wanted"),
    [
        pytest.param([], [], id="empty"),
        pytest.param([], [eligible("a"), eligible("b")], id="adds"),
        pytest.param([active("a"), active("b")], [], id="removals"),
        pytest.param([removed("a")], [eligible("a", groups=("g9",))], id="restore"),
        pytest.param(
            [active("a", groups=("g1",)), active("b"), removed("c"), removed("d")],
            [eligible("a", groups=("g2", "g1")), eligible("c"), eligible("e")],
            id="mixed",
        ),
    ],
)
def test_rerun_after_apply_is_empty(roster: list[RosterUser], wanted: list[EligibleUser]) -> None:
    applied = apply_plan_to_roster(roster, plan_roster_changes(roster, wanted), now=NOW)
    again = plan_roster_changes(applied, wanted)
    assert again.is_empty
    assert again.unchanged == len(wanted)
    # Applying the empty plan changes nothing either (at-least-once delivery).
    assert apply_plan_to_roster(applied, again, now="2026-03-01T00:00:00Z") == applied


@pytest.mark.parametrize(
    ("roster", "plan", "message"),
    [
        pytest.param([active("a")], Plan(adds=(eligible("a"),)), "already on the roster", id="add-known"),
        pytest.param(
            [],
            Plan(updates=(RosterChange(before=active("a"), after=eligible("a"), fields=("mail",)),)),
            "not on the roster",
            id="update-unknown",
        ),
        pytest.param([], Plan(restores=(eligible("a"),)), "not on the roster", id="restore-unknown"),
        pytest.param([], Plan(removals=(active("a"),)), "not on the roster", id="remove-unknown"),
    ],
)
def test_apply_refuses_a_plan_that_does_not_fit(roster: list[RosterUser], plan: Plan, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        apply_plan_to_roster(roster, plan, now=NOW)


# ---------------------------------------------------------------------------
# RemovalGuard
# ---------------------------------------------------------------------------


def removing(n: int) -> Plan:
    return Plan(removals=tuple(active(f"u{i:05d}") for i in range(n)))


@pytest.mark.parametrize(
    ("removals", "active_before", "held"),
    [
        pytest.param(0, 1000, False, id="no-removals"),
        pytest.param(150, 1000, True, id="above-both"),
        pytest.param(15, 100, False, id="above-percent-below-min-users"),
        pytest.param(50, 1000, False, id="above-min-users-below-percent"),
        pytest.param(20, 30, False, id="at-min-users-exactly"),
        pytest.param(21, 30, True, id="one-over-min-users"),
        pytest.param(100, 1000, False, id="at-percent-exactly"),
        pytest.param(101, 1000, True, id="one-over-percent"),
        pytest.param(21, 210, False, id="at-percent-exactly-over-min-users"),
        pytest.param(21, 209, True, id="just-over-percent-over-min-users"),
        pytest.param(25, 0, True, id="empty-before-counts-as-everything"),
    ],
)
def test_guard_thresholds(removals: int, active_before: int, held: bool) -> None:
    decision = RemovalGuard(percent=10, min_users=20).check(removing(removals), active_before)
    assert decision.held is held
    assert decision.removals == removals


def test_guard_held_detail_reads_well() -> None:
    decision = RemovalGuard().check(removing(150), 1000)
    assert decision == GuardDecision(
        held=True,
        detail=(
            "This run would remove 150 of 1,000 active users (15%), more than the "
            "10% / 20 users threshold; approve it to apply."
        ),
        removals=150,
        active_before=1000,
    )


@pytest.mark.parametrize(
    ("removals", "active_before", "detail"),
    [
        pytest.param(0, 10, "This run removes no users.", id="none"),
        pytest.param(
            3,
            9,
            "This run removes 3 of 9 active users (33.3%), within the 10% / 20 users threshold.",
            id="within",
        ),
    ],
)
def test_guard_detail_when_not_held(removals: int, active_before: int, detail: str) -> None:
    assert RemovalGuard().check(removing(removals), active_before).detail == detail


def test_allow_removals_bypasses_the_guard() -> None:
    decision = RemovalGuard().check(removing(150), 1000, allow_removals=True)
    assert not decision.held
    assert "approved" in decision.detail


def test_guard_with_fractional_percent() -> None:
    guard = RemovalGuard(percent=2.5, min_users=0)
    assert not guard.check(removing(25), 1000).held
    assert guard.check(removing(26), 1000).held
    assert "2.5% / 0 users" in guard.check(removing(26), 1000).detail


@pytest.mark.parametrize(
    "kwargs", [pytest.param({"percent": -1}, id="percent"), pytest.param({"min_users": -1}, id="min-users")]
)
def test_guard_refuses_negative_thresholds(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="must not be negative"):
        RemovalGuard(**kwargs)


# ---------------------------------------------------------------------------
# purge_due
# ---------------------------------------------------------------------------

PURGE_NOW = datetime(2026, 2, 8, 2, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("row", "due"),
    [
        pytest.param(removed("a", removed_at="2026-02-01T02:00:00Z"), True, id="exactly-grace-days"),
        pytest.param(removed("a", removed_at="2026-02-01T02:00:01Z"), False, id="one-second-short"),
        pytest.param(removed("a", removed_at="2026-01-20T00:00:00+00:00"), True, id="long-ago"),
        pytest.param(
            removed("a", removed_at="2026-02-01T03:00:00+01:00"), True, id="other-offset-same-instant"
        ),
        pytest.param(removed("a", removed_at="2026-02-01T02:00:00"), True, id="naive-is-utc"),
        pytest.param(removed("a", removed_at=None), False, id="unknown-age-kept"),
        pytest.param(removed("a", removed_at="yesterday"), False, id="unreadable-age-kept"),
        pytest.param(active("a", removed_at="2026-01-01T00:00:00Z"), False, id="active-never-purged"),
    ],
)
def test_purge_due_at_the_grace_boundary(row: RosterUser, due: bool) -> None:
    assert purge_due([row], now=PURGE_NOW, grace_days=7) == (["a"] if due else [])


def test_purge_due_sorted_and_zero_grace() -> None:
    roster = [removed("c", removed_at=NOW), removed("a", removed_at=NOW), active("b")]
    now = datetime.fromisoformat(NOW)
    assert purge_due(roster, now=now, grace_days=0) == ["a", "c"]
    assert purge_due(roster, now=now - timedelta(seconds=1), grace_days=0) == []


def test_purge_due_naive_now_is_utc() -> None:
    row = removed("a", removed_at="2026-02-01T02:00:00+00:00")
    naive = PURGE_NOW.replace(tzinfo=None)
    assert purge_due([row], now=naive, grace_days=7) == ["a"]
    assert purge_due([row], now=PURGE_NOW.astimezone(timezone(timedelta(hours=-5))), grace_days=7) == ["a"]


def test_purge_due_refuses_negative_grace() -> None:
    with pytest.raises(ValueError, match="grace_days"):
        purge_due([], now=PURGE_NOW, grace_days=-1)
