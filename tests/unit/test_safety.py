"""sync.safety.check_plan: every rule that holds or fails a run, on hand-built rosters; and the
shapes the service refuses."""

from __future__ import annotations

from typing import Any

import pytest

from sync.models import EligibleUser, RosterStatus, RosterUser, RunGroup
from sync.planner import Plan, plan_roster_changes
from sync.safety import RemovalGuard, SafetyVerdict, check_plan, emptied_groups, removal_digest
from sync.service import InvalidInput, require_run_id, require_user_key

SALES, OPS, NEW = "11111111-1111-4111-8111-111111111111", "22222222-2222-4222-8222-222222222222", "3" * 8
GUARD = RemovalGuard(percent=10, min_users=20)


def row(uid: str, *groups: str, status: RosterStatus = RosterStatus.ACTIVE) -> RosterUser:
    return RosterUser(id=uid, user_principal_name=f"{uid}@contoso.com", groups=groups, status=status)


def eligible(uid: str, *groups: str) -> EligibleUser:
    return EligibleUser(id=uid, user_principal_name=f"{uid}@contoso.com", groups=groups)


def check(roster: list[RosterUser], plan: Plan, groups: list[RunGroup] | None = None, **kwargs: Any) -> Any:
    return check_plan(plan, roster=roster, groups=groups or [], guard=kwargs.pop("guard", GUARD), **kwargs)


# --- the removal guard: percentage AND minimum count -------------------------------------------


def roster_and_removals(removals: int, active_before: int) -> tuple[list[RosterUser], Plan]:
    roster = [row(f"u{i:05d}", OPS) for i in range(max(active_before, removals))]
    staying = [eligible(r.id, OPS) for r in roster[removals:]]
    return roster[:active_before] if active_before >= removals else roster, plan_roster_changes(
        roster, staying
    )


@pytest.mark.parametrize(
    ("removals", "active_before", "held"),
    [
        pytest.param(0, 1000, False, id="no-removals"),
        pytest.param(150, 1000, True, id="above-both"),
        pytest.param(15, 100, False, id="above-percent-below-min-users"),
        pytest.param(50, 1000, False, id="above-min-users-below-percent"),
        pytest.param(20, 60, False, id="at-min-users-exactly"),
        pytest.param(21, 60, True, id="one-over-min-users"),
        pytest.param(100, 1000, False, id="at-percent-exactly"),
        pytest.param(101, 1000, True, id="one-over-percent"),
        pytest.param(21, 210, False, id="at-percent-exactly-over-min-users"),
        pytest.param(21, 209, True, id="just-over-percent-over-min-users"),
    ],
)
def test_guard_thresholds(removals: int, active_before: int, held: bool) -> None:
    roster, plan = roster_and_removals(removals, active_before)
    decision = check(roster, plan)
    assert decision.held is held
    assert decision.removals == removals and decision.active_before == active_before


def test_guard_held_detail_reads_well() -> None:
    roster, plan = roster_and_removals(150, 1000)
    decision = check(roster, plan)
    assert decision.verdict is SafetyVerdict.HOLD
    assert decision.detail == (
        "This run would remove 150 of 1,000 active users (15%), more than the 10% / 20 users threshold. "
        "To apply the removals, approve this run."
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
    roster, plan = roster_and_removals(removals, active_before)
    assert check(roster, plan).detail == detail


def test_an_approval_covers_exactly_the_removals_it_saw() -> None:
    roster, plan = roster_and_removals(150, 1000)
    approved = check(roster, plan, approved_digest=removal_digest(plan))
    assert approved.verdict is SafetyVerdict.APPLY and "approved" in approved.detail
    _, other = roster_and_removals(151, 1000)
    assert check(roster, other, approved_digest=removal_digest(plan)).held  # one more user: held again


def test_guard_with_fractional_percent() -> None:
    guard = RemovalGuard(percent=2.5, min_users=0)
    roster, plan = roster_and_removals(25, 1000)
    assert not check(roster, plan, guard=guard).held
    roster, plan = roster_and_removals(26, 1000)
    assert check(roster, plan, guard=guard).held
    assert "2.5% / 0 users" in check(roster, plan, guard=guard).detail


@pytest.mark.parametrize(
    "kwargs", [pytest.param({"percent": -1}, id="percent"), pytest.param({"min_users": -1}, id="min-users")]
)
def test_guard_refuses_negative_thresholds(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="must not be negative"):
        RemovalGuard(**kwargs)


# --- the guard at every size: a majority, or nobody left --------------------------------------


@pytest.mark.parametrize(
    ("removals", "active_before", "held"),
    [
        pytest.param(1, 1, True, id="1-user-roster-emptied"),
        pytest.param(1, 2, False, id="2-users-one-leaves-half-is-not-more-than-half"),
        pytest.param(2, 2, True, id="2-users-both-leave"),
        pytest.param(6, 13, False, id="13-users-6-leave"),
        pytest.param(7, 13, True, id="13-users-7-leave-a-majority"),
        pytest.param(12, 13, True, id="13-users-12-leave"),
        pytest.param(13, 13, True, id="13-users-all-leave"),
        pytest.param(20, 50, False, id="50-users-20-leave"),
        pytest.param(21, 50, True, id="50-users-21-leave"),
        pytest.param(501, 5000, True, id="5000-users-10pct-and-20"),
        pytest.param(500, 5000, False, id="5000-users-at-10pct"),
    ],
)
def test_below_the_minimum_count_a_majority_or_an_emptied_roster_still_holds(
    removals: int, active_before: int, held: bool
) -> None:
    roster, plan = roster_and_removals(removals, active_before)
    decision = check(roster, plan)
    assert decision.held is held, decision.detail
    if removals == active_before:
        assert "no active user" in decision.detail


def test_an_emptied_roster_is_held_even_with_lenient_thresholds() -> None:
    roster, plan = roster_and_removals(13, 13)
    lenient = RemovalGuard(percent=100, min_users=1000, majority_percent=100)
    decision = check(roster, plan, guard=lenient)
    assert decision.held and "leave the tenant with no active user" in decision.detail
    assert (
        check(roster, plan, guard=lenient, approved_digest=removal_digest(plan)).verdict
        is SafetyVerdict.APPLY
    )


# --- short reads fail the run -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("counted", "read", "fails"),
    [
        pytest.param(13, 5, True, id="13-counted-5-read"),
        pytest.param(13, 11, False, id="13-counted-11-read-index-lag"),
        pytest.param(13, 10, True, id="13-counted-10-read"),
        pytest.param(1, 0, False, id="1-counted-0-read-within-slack"),
        pytest.param(1000, 950, False, id="1000-counted-950-read"),
        pytest.param(1000, 949, True, id="1000-counted-949-read"),
        pytest.param(0, 0, False, id="empty"),
        pytest.param(5, 9, False, id="more-read-than-counted"),
    ],
)
def test_a_read_far_below_graphs_count_fails_the_run(counted: int, read: int, fails: bool) -> None:
    roster = [row(f"u{i:04d}", SALES) for i in range(read)]
    plan = plan_roster_changes(roster, [eligible(r.id, SALES) for r in roster])
    groups = [RunGroup(id=SALES, display_name="Sales", members=read, eligible=read, counted=counted)]
    decision = check(roster, plan, groups)
    assert (decision.verdict is SafetyVerdict.FAIL) is fails, decision.detail
    if fails:
        assert (
            "fewer users than it counts" in decision.detail and f"Graph counts {counted:,}" in decision.detail
        )
    tenant = check(roster, plan, tenant_count=(counted, read))
    assert (tenant.verdict is SafetyVerdict.FAIL) is fails


def test_a_group_read_empty_holds_when_anyone_is_removed() -> None:
    """A group deleted and made again under a new id reads empty: selecting it must not empty the roster."""
    roster = [row(f"u{i}", SALES) for i in range(13)]
    plan = plan_roster_changes(roster, [eligible(r.id, SALES) for r in roster[:12]])  # one leaves anyway
    fresh = [RunGroup(id=NEW, display_name="Sales (new)", members=0, eligible=0, counted=0)]
    decision = check(
        roster, plan, fresh, guard=RemovalGuard(percent=100, min_users=100, majority_percent=100)
    )
    assert decision.held and "'Sales (new)'" in decision.detail and "as empty" in decision.detail


# --- emptied groups -----------------------------------------------------------------------------


def big_roster() -> list[RosterUser]:
    """10,000 people through OPS, 50 through SALES only, 5 through both."""
    rows = [row(f"ops{i:05}", OPS) for i in range(10_000)]
    rows += [row(f"sales{i:03}", SALES) for i in range(50)]
    rows += [row(f"both{i}", SALES, OPS) for i in range(5)]
    rows += [row("gone", SALES, status=RosterStatus.REMOVED)]
    return rows


def after_sales_reads_empty(roster: list[RosterUser]) -> list[EligibleUser]:
    return [eligible(r.id, OPS) for r in roster if OPS in r.groups and r.status is RosterStatus.ACTIVE]


def test_an_emptied_group_a_small_share_of_a_big_roster_holds_the_run() -> None:
    roster = big_roster()
    plan = plan_roster_changes(roster, after_sales_reads_empty(roster))
    assert len(plan.removals) == 50
    # 50 of 10,055 is 0.5 %: the percentage guard alone lets it through ...
    assert not check(roster, plan).held
    groups = [RunGroup(id=SALES, display_name="Sales", members=0, eligible=0),
              RunGroup(id=OPS, display_name="Ops", members=10_005, eligible=10_005)]  # fmt: skip
    # ... the emptied-group rule does not.
    found = emptied_groups(roster, groups, plan)
    assert [(g.id, g.on_roster, g.removing) for g in found] == [(SALES, 55, 50)]
    decision = check(roster, plan, groups)
    assert decision.held and decision.removals == 50
    assert "'Sales'" in decision.detail and SALES in decision.detail and "approve" in decision.detail
    assert "55 users on the platform, 50 of them would be removed" in decision.detail
    approved = check(roster, plan, groups, approved_digest=removal_digest(plan))
    assert not approved.held and "approved" in approved.detail


def test_no_hold_when_nobody_is_lost_or_the_group_was_empty_before() -> None:
    roster = [row("a", SALES, OPS), row("b", OPS)]
    plan = plan_roster_changes(roster, [eligible("a", OPS), eligible("b", OPS)])
    groups = [RunGroup(id=SALES, display_name="Sales", members=0, eligible=0),
              RunGroup(id=OPS, display_name="Ops", members=2, eligible=2)]  # fmt: skip
    assert emptied_groups(roster, groups, plan) == []  # "a" stays through Ops
    assert not check(roster, plan, groups).held
    newly_selected_empty = [RunGroup(id=NEW, display_name="New", members=0, eligible=0)]
    assert emptied_groups(roster, newly_selected_empty, plan) == []
    not_empty = [RunGroup(id=SALES, display_name="Sales", members=3, eligible=0)]
    only_sales = [row("s", SALES)]
    assert emptied_groups(only_sales, not_empty, plan_roster_changes(only_sales, [])) == []


def test_several_emptied_groups_are_all_named() -> None:
    roster = [row("a", SALES), row("b", OPS)]
    plan = plan_roster_changes(roster, [])
    groups = [RunGroup(id=OPS, display_name="Ops", members=0, eligible=0),
              RunGroup(id=SALES, display_name="Sales", members=0, eligible=0)]  # fmt: skip
    decision = check(roster, plan, groups, guard=RemovalGuard(percent=100, min_users=100))
    assert decision.held
    assert (
        "groups read as empty" in decision.detail
        and "'Ops'" in decision.detail
        and "'Sales'" in decision.detail
    )


# --- shapes the service refuses -----------------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    [
        "",
        "x",
        "0000000000001-0000000",
        "0000000000001-0000000g",
        "0000000000001-00000000\n",
        "\u0660" * 13 + "-00000000",  # Arabic-Indic digits: isdigit() but not [0-9]
    ],
)
def test_malformed_run_ids_are_refused(value: str) -> None:
    with pytest.raises(InvalidInput):
        require_run_id(value)


def test_user_keys_are_object_ids_or_upns_of_at_most_113_characters() -> None:
    assert require_user_key(SALES) == SALES
    assert require_user_key("ann_fabrikam.com#EXT#@contoso.onmicrosoft.com")
    for bad in ("", "ann", "a@b@c", "a b@c", "a@b\n", "x" * 60 + "@" + "y" * 53):
        with pytest.raises(InvalidInput):
            require_user_key(bad)
