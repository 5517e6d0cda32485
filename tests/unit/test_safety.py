"""sync.safety: a selected group that reads as empty holds the run, whatever its share."""

from __future__ import annotations

import pytest

from sync.models import EligibleUser, RosterStatus, RosterUser, RunGroup
from sync.planner import RemovalGuard, plan_roster_changes
from sync.safety import emptied_group_guard, emptied_groups
from sync.service import require_run_id, require_user_key

SALES, OPS, NEW = "11111111-1111-4111-8111-111111111111", "22222222-2222-4222-8222-222222222222", "3" * 8


def row(uid: str, *groups: str, status: RosterStatus = RosterStatus.ACTIVE) -> RosterUser:
    return RosterUser(id=uid, user_principal_name=f"{uid}@contoso.com", groups=groups, status=status)


def eligible(uid: str, *groups: str) -> EligibleUser:
    return EligibleUser(id=uid, user_principal_name=f"{uid}@contoso.com", groups=groups)


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
    # 50 of 10,055 is 0.5 %: the percentage guard lets it through ...
    assert not RemovalGuard(percent=10, min_users=20).check(plan, 10_055).held
    groups = [RunGroup(id=SALES, display_name="Sales", members=0, eligible=0),
              RunGroup(id=OPS, display_name="Ops", members=10_005, eligible=10_005)]  # fmt: skip
    # ... the emptied-group rule does not.
    found = emptied_groups(roster, groups, plan)
    assert [(g.id, g.on_roster, g.removing) for g in found] == [(SALES, 55, 50)]
    decision = emptied_group_guard(roster, groups, plan)
    assert decision is not None and decision.held and decision.removals == 50
    assert "'Sales'" in decision.detail and SALES in decision.detail and "approve" in decision.detail
    assert "55 users on the platform, 50 of them would be removed" in decision.detail
    approved = emptied_group_guard(roster, groups, plan, approved=True)
    assert approved is not None and not approved.held and "approved" in approved.detail


def test_no_hold_when_nobody_is_lost_or_the_group_was_empty_before() -> None:
    roster = [row("a", SALES, OPS), row("b", OPS)]
    plan = plan_roster_changes(roster, [eligible("a", OPS), eligible("b", OPS)])
    groups = [RunGroup(id=SALES, display_name="Sales", members=0, eligible=0),
              RunGroup(id=OPS, display_name="Ops", members=2, eligible=2)]  # fmt: skip
    assert emptied_groups(roster, groups, plan) == []  # "a" stays through Ops
    assert emptied_group_guard(roster, groups, plan) is None
    newly_selected_empty = [RunGroup(id=NEW, display_name="New", members=0, eligible=0)]
    assert emptied_group_guard(roster, newly_selected_empty, plan) is None
    not_empty = [RunGroup(id=SALES, display_name="Sales", members=3, eligible=0)]
    only_sales = [row("s", SALES)]
    assert emptied_group_guard(only_sales, not_empty, plan_roster_changes(only_sales, [])) is None


def test_several_emptied_groups_are_all_named() -> None:
    roster = [row("a", SALES), row("b", OPS)]
    plan = plan_roster_changes(roster, [])
    groups = [RunGroup(id=OPS, display_name="Ops", members=0, eligible=0),
              RunGroup(id=SALES, display_name="Sales", members=0, eligible=0)]  # fmt: skip
    decision = emptied_group_guard(roster, groups, plan)
    assert decision is not None and decision.held
    assert (
        "groups read as empty" in decision.detail
        and "'Ops'" in decision.detail
        and "'Sales'" in decision.detail
    )


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
    from sync.service import InvalidInput

    with pytest.raises(InvalidInput):
        require_run_id(value)


def test_user_keys_are_object_ids_or_upns_of_at_most_113_characters() -> None:
    from sync.service import InvalidInput

    assert require_user_key(SALES) == SALES
    assert require_user_key("ann_fabrikam.com#EXT#@contoso.onmicrosoft.com")
    for bad in ("", "ann", "a@b@c", "a b@c", "a@b\n", "x" * 60 + "@" + "y" * 53):
        with pytest.raises(InvalidInput):
            require_user_key(bad)


def test_a_runs_removals_are_found_by_its_id_or_by_its_time_window() -> None:
    from sync.models import Run, RunStatus
    from sync.service import _removed_by

    run = Run(
        id="8234567890123-0a1b2c3d",
        tenant_id=SALES,
        status=RunStatus.SUCCEEDED,
        reason="manual",
        requested_at="2026-01-01T10:00:00.000Z",
        started_at="2026-01-01T10:00:01.000Z",
        finished_at="2026-01-01T10:00:09.000Z",
    )
    removed = RosterStatus.REMOVED

    def gone(at: str, by: str | None = None) -> RosterUser:
        return RosterUser(
            id="u", user_principal_name="u@c.com", status=removed, removed_at=at, removed_by_run=by
        )

    assert _removed_by(gone("2026-01-01T10:00:05.000Z", run.id), run)
    assert not _removed_by(gone("2026-01-01T10:00:05.000Z", "8234567890999-ffffffff"), run)  # a later run's
    assert _removed_by(gone("2026-01-01T10:00:05.000Z"), run)  # rows written before runs were named
    assert not _removed_by(gone("2026-01-01T10:00:10.000Z"), run)
    assert not _removed_by(row("u"), run)  # active: nothing to undo
