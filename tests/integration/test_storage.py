"""Table Storage records on real Azurite: selections with ETags, the lease, roster transactions."""

from __future__ import annotations

import asyncio
import uuid

import pytest

from devtools.azurite import Azurite
from shared.storage import ensure_storage
from sync.lease import LeaseLost, TenantLease
from sync.models import (
    RosterStatus,
    RosterUser,
    Run,
    RunReason,
    RunStatus,
    SelectedGroup,
    Selection,
    SelectionMode,
)
from sync.roster import RosterStore
from sync.store import StaleSelection, SyncStore, new_run_id, utc_now
from tests.conftest import storage_settings


@pytest.fixture
async def store(azurite: Azurite):
    settings = storage_settings(azurite)
    await ensure_storage(settings)
    store = SyncStore(settings)
    yield store
    await store.aclose()


@pytest.fixture
async def roster(azurite: Azurite):
    settings = storage_settings(azurite)
    await ensure_storage(settings)
    roster = RosterStore(settings)
    yield roster
    await roster.aclose()


async def test_selection_versions_and_stale_if_match(store: SyncStore, tenant_id: str) -> None:
    assert (await store.get_selection(tenant_id)).version == 0
    first = Selection(
        mode=SelectionMode.GROUPS, groups=(SelectedGroup(id=str(uuid.uuid4()), display_name="Sales"),)
    )
    saved = await store.save_selection(tenant_id, first, expected_version=0)
    assert saved.version == 1
    again = await store.save_selection(tenant_id, Selection(), expected_version=1)
    assert again.version == 2 and again.mode is SelectionMode.ALL
    with pytest.raises(StaleSelection) as stale:
        await store.save_selection(tenant_id, first, expected_version=1)
    assert stale.value.current == 2
    assert (await store.get_selection(tenant_id)).mode is SelectionMode.ALL


async def test_lease_admits_one_refresh_per_tenant(store: SyncStore, tenant_id: str) -> None:
    workers = [TenantLease(store, tenant_id) for _ in range(5)]
    results = await asyncio.gather(*(worker.acquire() for worker in workers))
    assert sum(results) == 1
    winner = workers[results.index(True)]
    late = TenantLease(store, tenant_id)
    assert not await late.acquire()
    assert await winner.renew()
    await winner.release()
    assert await late.acquire()
    assert not await winner.renew()  # given back, then taken: the old holder cannot renew it
    with pytest.raises(LeaseLost):
        await winner.confirm()


async def test_a_crashed_workers_lease_lapses_by_the_storage_clock(store: SyncStore, tenant_id: str) -> None:
    crashed = TenantLease(store, tenant_id, seconds=15)  # Blob Storage's shortest lease
    assert await crashed.acquire()
    redelivery = TenantLease(store, tenant_id, seconds=15)
    assert not await redelivery.acquire()
    await asyncio.sleep(16)  # the crashed worker never renews; the storage service lets it lapse
    assert await redelivery.acquire()
    assert not await crashed.renew()


async def test_runs_list_newest_first_with_cursor(store: SyncStore, tenant_id: str) -> None:
    ids = []
    for _ in range(5):
        run = Run(
            id=new_run_id(),
            tenant_id=tenant_id,
            status=RunStatus.QUEUED,
            reason=RunReason.MANUAL,
            requested_at=utc_now(),
        )
        await store.create_run(run)
        ids.append(run.id)
        await asyncio.sleep(0.002)
    page, cursor = await store.list_runs(tenant_id, limit=3)
    assert [r.id for r in page] == ids[::-1][:3]
    rest, end = await store.list_runs(tenant_id, limit=3, after=cursor)
    assert [r.id for r in rest] == ids[::-1][3:] and end is None


def _user(
    i: int, *, groups: tuple[str, ...] = ("g1",), status: RosterStatus = RosterStatus.ACTIVE
) -> RosterUser:
    return RosterUser(
        id=str(uuid.UUID(int=i)),
        user_principal_name=f"User{i}@contoso.com",
        display_name=f"User {i}",
        groups=groups,
        status=status,
    )


async def test_roster_writes_in_transactions_of_100(roster: RosterStore, tenant_id: str) -> None:
    rows = [_user(i, groups=("g1",) if i % 2 else ("g1", "g2")) for i in range(1, 251)]
    assert await roster.write(tenant_id, rows) == 3
    back = await roster.read_roster(tenant_id)
    assert sorted(back, key=lambda r: r.id) == sorted(rows, key=lambda r: r.id)


async def test_roster_filters_and_lookup(roster: RosterStore, tenant_id: str) -> None:
    rows = [_user(1), _user(2, groups=("g2",)), _user(3, status=RosterStatus.REMOVED)]
    await roster.write(tenant_id, rows)
    active, _ = await roster.list_users(tenant_id)
    assert {u.id for u in active} == {rows[0].id, rows[1].id}
    in_g2, _ = await roster.list_users(tenant_id, group="g2")
    assert [u.id for u in in_g2] == [rows[1].id]
    removed, _ = await roster.list_users(tenant_id, status=RosterStatus.REMOVED)
    assert [u.id for u in removed] == [rows[2].id]
    found, _ = await roster.list_users(tenant_id, status=None, search="user 3")
    assert [u.id for u in found] == [rows[2].id]
    assert (await roster.get_user(tenant_id, "user1@CONTOSO.com")).id == rows[0].id  # type: ignore[union-attr]
    page, cursor = await roster.list_users(tenant_id, status=None, limit=2)
    assert len(page) == 2 and cursor == page[-1].id
    await roster.delete(tenant_id, [rows[2].id])
    assert await roster.get_user(tenant_id, rows[2].id) is None


async def test_a_selection_and_a_run_of_1000_long_named_groups_fit_table_storage(
    store: SyncStore, tenant_id: str
) -> None:
    from sync.models import RunGroup

    name = "Équipe " + "Vertrieb und Außendienst " * 4  # ~100 characters, not all ASCII
    groups = tuple(
        SelectedGroup(id=str(uuid.UUID(int=i + 1)), display_name=f"{name}{i}") for i in range(1000)
    )
    saved = await store.save_selection(
        tenant_id, Selection(mode=SelectionMode.GROUPS, groups=groups), expected_version=0
    )
    assert (await store.get_selection(tenant_id)).groups == groups and saved.version == 1
    run = Run(
        id=new_run_id(),
        tenant_id=tenant_id,
        status=RunStatus.SUCCEEDED,
        reason=RunReason.MANUAL,
        requested_at=utc_now(),
    )
    run.groups = [
        RunGroup(id=g.id, display_name=g.display_name, members=10**6, eligible=10**6) for g in groups
    ]
    await store.save_run(run)
    back = await store.get_run(tenant_id, run.id)
    assert back is not None and back.groups == run.groups
    run.groups = run.groups[:1]  # a smaller record replaces the larger one completely
    await store.save_run(run)
    assert (await store.get_run(tenant_id, run.id)).groups == run.groups  # type: ignore[union-attr]
