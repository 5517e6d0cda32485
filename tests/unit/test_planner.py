"""Roster planning, undo plans and purging: hand-built rosters, no mocks."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest

from sync.models import EligibleUser, RosterStatus, RosterUser
from sync.planner import (
    Plan,
    RosterChange,
    apply_plan_to_roster,
    changed_rows,
    plan_restores,
    plan_roster_changes,
    purge_due,
)


def at(text: str) -> datetime:
    return datetime.fromisoformat(text)


EARLIER = at("2026-01-01T02:00:00+00:00")
NOW = at("2026-02-01T02:00:00+00:00")


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
    roster = [
        active("b"),
        removed("d", added_at=at("2025-06-01T00:00:00+00:00")),
        active("c", department="HR"),
    ]
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
        "d", department="Legal", added_at=at("2025-06-01T00:00:00+00:00"), updated_at=NOW, removed_at=None
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
    assert apply_plan_to_roster(applied, again, now=at("2026-03-01T00:00:00+00:00")) == applied


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


# ---------------------------------------------------------------------------
# purge_due
# ---------------------------------------------------------------------------

PURGE_NOW = datetime(2026, 2, 8, 2, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("row", "due"),
    [
        pytest.param(removed("a", removed_at=at("2026-02-01T02:00:00+00:00")), True, id="exactly-grace-days"),
        pytest.param(removed("a", removed_at=at("2026-02-01T02:00:01+00:00")), False, id="one-second-short"),
        pytest.param(removed("a", removed_at=at("2026-01-20T00:00:00+00:00")), True, id="long-ago"),
        pytest.param(
            removed("a", removed_at=at("2026-02-01T03:00:00+01:00")), True, id="other-offset-same-instant"
        ),
        pytest.param(removed("a", removed_at=None), False, id="unknown-age-kept"),
        pytest.param(
            active("a", removed_at=at("2026-01-01T00:00:00+00:00")), False, id="active-never-purged"
        ),
    ],
)
def test_purge_due_at_the_grace_boundary(row: RosterUser, due: bool) -> None:
    assert purge_due([row], now=PURGE_NOW, grace_days=7) == (["a"] if due else [])


def test_purge_due_sorted_and_zero_grace() -> None:
    roster = [removed("c", removed_at=NOW), removed("a", removed_at=NOW), active("b")]
    assert purge_due(roster, now=NOW, grace_days=0) == ["a", "c"]
    assert purge_due(roster, now=NOW - timedelta(seconds=1), grace_days=0) == []


def test_purge_due_naive_now_is_utc() -> None:
    row = removed("a", removed_at=at("2026-02-01T02:00:00+00:00"))
    naive = PURGE_NOW.replace(tzinfo=None)
    assert purge_due([row], now=naive, grace_days=7) == ["a"]
    assert purge_due([row], now=PURGE_NOW.astimezone(timezone(timedelta(hours=-5))), grace_days=7) == ["a"]


def test_purge_due_refuses_negative_grace() -> None:
    with pytest.raises(ValueError, match="grace_days"):
        purge_due([], now=PURGE_NOW, grace_days=-1)


# ---------------------------------------------------------------------------
# plan_restores (undo)
# ---------------------------------------------------------------------------


def test_an_undo_plan_restores_exactly_that_runs_removals_within_grace() -> None:
    roster = [
        removed("a", removed_at=NOW, removed_by_run="r1"),
        removed("b", removed_at=EARLIER, removed_by_run="r1"),  # past the grace period
        removed("c", removed_at=NOW, removed_by_run="r2"),  # another run's removal
        active("d"),
    ]
    plan, too_old = plan_restores(roster, removed_by="r1", removed_since=NOW - timedelta(days=7))
    assert [user.id for user in plan.restores] == ["a"] and too_old == 1
    assert not (plan.adds or plan.updates or plan.removals)
    after = {row.id: row for row in apply_plan_to_roster(roster, plan, now=NOW)}
    assert after["a"].status is RosterStatus.ACTIVE and after["a"].removed_by_run is None
    assert after["b"].status is RosterStatus.REMOVED and after["c"].status is RosterStatus.REMOVED


def test_removals_name_the_run_that_removed_them() -> None:
    roster = {row.id: row for row in [active("a"), active("b")]}
    plan = plan_roster_changes(roster.values(), [eligible("a")])
    (written,) = changed_rows(roster, plan, now=NOW, run_id="r9")
    assert written.id == "b" and written.status is RosterStatus.REMOVED and written.removed_by_run == "r9"
