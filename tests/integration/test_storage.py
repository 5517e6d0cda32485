"""Table Storage records on real Azurite: selections with ETags, the lease, roster transactions."""

from __future__ import annotations

import asyncio
import base64
import json
import re
import uuid
from datetime import UTC, datetime

import msgspec
import pytest
from azure.data.tables import TableTransactionError, TransactionOperation, UpdateMode

from devtools.azurite import Azurite
from shared.storage import blob_service, ensure_storage
from sync.audit import AuditLog, InvalidAuditCursor
from sync.lease import LeaseLost, TenantLease
from sync.models import (
    AuditKind,
    AuditRecord,
    RosterStatus,
    RosterUser,
    Run,
    RunReason,
    RunStatus,
    SelectedGroup,
    Selection,
    SelectionMode,
)
from sync.roster import PartialWrite, RosterStore, _from_entity, _to_entity
from sync.store import StaleSelection, SyncStore, new_run_id, utc_now
from sync.table_wire import Delete, Upsert, transaction_body
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


def _parts(body: bytes) -> list[tuple[str, dict[str, str], object]]:
    """A `$batch` changeset's operations: request line, headers without dates, decoded JSON body."""
    text = body.decode("utf-8")
    changeset = re.search(r"boundary=(changeset_[0-9a-f-]+)", text)
    assert changeset is not None
    parts = []
    for chunk in text.split(f"--{changeset.group(1)}")[1:-1]:
        _, request = chunk.split("\r\n\r\n", 1)
        head, _, payload = request.partition("\r\n\r\n")
        line, *header_lines = head.split("\r\n")
        headers = dict(h.split(": ", 1) for h in header_lines if not h.startswith(("x-ms-date", "Date")))
        body = payload.removesuffix("\r\n").encode("utf-8")
        # The SDK escapes non-ASCII (json.dumps), sync.table_wire sends UTF-8: the same JSON document.
        assert int(headers.pop("Content-Length", len(body))) == len(body)
        parts.append((line, headers, json.loads(body) if body.strip() else None))
    return parts


async def test_roster_transactions_send_what_the_sdk_sends(roster: RosterStore, tenant_id: str) -> None:
    """sync.table_wire writes the SDK's own changeset (URLs, headers, typed entity JSON), only cheaper."""
    moment = datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC)
    rows = [
        RosterUser(
            id=str(uuid.UUID(int=7)),
            user_principal_name="Zoë.O'Neil@contoso.com",
            display_name='Zoë "Z" O\'Neil',
            department="R&D / Labs",
            groups=("g1", "g2"),
            status=RosterStatus.REMOVED,
            added_at=moment,
            updated_at=moment.replace(microsecond=120),
            removed_at=moment,
            removed_by_run="run-1",
            purpose_checked_at=moment,
        ),
        _user(8),
    ]
    table = roster._table
    ours, _ = transaction_body(
        table, [Upsert(_to_entity(tenant_id, row)) for row in rows] + [Delete(tenant_id, "x'y")]
    )
    sent: list[bytes] = []
    await table.submit_transaction(
        [
            (TransactionOperation.UPSERT, _to_entity(tenant_id, row), {"mode": UpdateMode.REPLACE})
            for row in rows
        ]
        + [
            (
                TransactionOperation.UPSERT,
                {"PartitionKey": tenant_id, "RowKey": "x'y"},
                {"mode": UpdateMode.REPLACE},
            )
        ],
        raw_request_hook=lambda request: sent.append(request.http_request.body),
    )
    sdk_deletes: list[bytes] = []
    await table.submit_transaction(
        [(TransactionOperation.DELETE, {"PartitionKey": tenant_id, "RowKey": "x'y"})],
        raw_request_hook=lambda request: sdk_deletes.append(request.http_request.body),
    )
    assert _parts(ours) == _parts(sent[0])[:2] + _parts(sdk_deletes[0])
    sdk_submit = table.submit_transaction
    table.submit_transaction = None  # type: ignore[method-assign]  # the fallback must not be what wrote them
    await roster.write(tenant_id, rows)  # and the service takes it: read back through the SDK as well
    table.submit_transaction = sdk_submit  # type: ignore[method-assign]
    back = [
        _from_entity(e)
        async for e in table.query_entities("PartitionKey eq @pk", parameters={"pk": tenant_id})
    ]
    assert sorted(back, key=lambda r: r.id) == rows
    assert sorted(await roster.read_roster(tenant_id), key=lambda r: r.id) == rows


async def test_roster_read_decodes_what_the_sdk_decodes(roster: RosterStore, tenant_id: str) -> None:
    """Every page is followed; Edm.DateTime and rows written before it (ISO text) read as the SDK does."""
    rows = [
        msgspec.structs.replace(
            _user(i, status=RosterStatus.REMOVED if i % 3 == 0 else RosterStatus.ACTIVE),
            added_at=datetime(2025, 5, 6, 7, 8, 9, i, tzinfo=UTC),
        )
        for i in range(1, 2502)
    ]
    await roster.write(tenant_id, rows)
    legacy = {"PartitionKey": tenant_id, "RowKey": str(uuid.UUID(int=9999)), "upn": "old@contoso.com",
              "status": "active", "addedAt": "2024-02-03T04:05:06.123456+00:00"}  # fmt: skip
    await roster._table.upsert_entity(legacy)
    via_sdk = [
        _from_entity(e)
        async for e in roster._table.query_entities("PartitionKey eq @pk", parameters={"pk": tenant_id})
    ]
    assert len(via_sdk) == 2502
    assert sorted(await roster.read_roster(tenant_id), key=lambda r: r.id) == sorted(
        via_sdk, key=lambda r: r.id
    )
    removed = await roster.read_roster(tenant_id, status=RosterStatus.REMOVED)
    assert {r.id for r in removed} == {r.id for r in rows if r.status is RosterStatus.REMOVED}


async def test_a_refused_roster_transaction_raises_the_sdks_typed_error(
    roster: RosterStore, tenant_id: str
) -> None:
    """The changeset is atomic: one refused operation writes none, the count says so, and the SDK's
    own error says which operation was refused."""
    await roster.write(tenant_id, [_user(1)])
    with pytest.raises(PartialWrite) as partial:
        await roster.delete(tenant_id, [_user(1).id, str(uuid.UUID(int=404))])
    assert (partial.value.written, partial.value.total) == (0, 2)
    refused = partial.value.cause
    assert isinstance(refused, TableTransactionError)
    assert refused.index == 1 and refused.error_code == "ResourceNotFound"
    assert [r.id for r in await roster.read_roster(tenant_id)] == [_user(1).id]


async def test_a_large_audit_append_is_sent_in_blocks_and_reads_back_whole_in_order(azurite: Azurite) -> None:
    """A first load's records (more than one 4 MiB append block) land complete, in order, each day's
    in its own blob, and the cursor of one page goes on where it stopped."""
    settings = storage_settings(azurite)
    await ensure_storage(settings)
    audit = AuditLog(settings)
    tenant_id = str(uuid.uuid4())
    day_one, day_two = datetime(2026, 12, 2, 23, 59, tzinfo=UTC), datetime(2026, 12, 3, 0, 1, tzinfo=UTC)
    records = [
        AuditRecord(
            at=day_one if i < 15_000 else day_two,
            kind=AuditKind.ADDED,
            run_id="run-1",
            user_id=str(uuid.UUID(int=i)),
            user_principal_name=f"user{i}@contoso.example",
            reason="x" * 300,  # ~15,000 lines of ~450 bytes: more than one block of 4 MiB
            by="timer",
        )
        for i in range(15_010)
    ]
    try:
        assert await audit.append(tenant_id, records) == len(records)
        container = blob_service(settings).get_container_client(settings.audit_container)
        async with container:
            names = sorted([b.name async for b in container.list_blobs(name_starts_with=f"{tenant_id}/")])
            assert names == [f"{tenant_id}/2026/12/02.jsonl", f"{tenant_id}/2026/12/03.jsonl"]
            first_day = await container.get_blob_client(names[0]).get_blob_properties()
            assert first_day.append_blob_committed_block_count >= 2
        now = datetime(2026, 12, 3, 12, tzinfo=UTC)
        read, cursor = await audit.read(tenant_id, limit=20_000, now=now)
        assert [r.user_id for r in read] == [r.user_id for r in records] and cursor is None
        page, cursor = await audit.read(tenant_id, limit=14_995, now=now)
        rest, _ = await audit.read(tenant_id, after=cursor, limit=100, now=now)
        assert [r.user_id for r in page + rest] == [r.user_id for r in records]
    finally:
        await audit.aclose()


async def test_a_follower_of_the_trail_gets_exactly_what_was_appended_after_its_cursor(
    azurite: Azurite,
) -> None:
    """Reading on from a cursor at the blob's end answers nothing (not an error); what is appended
    later comes next, once; a cursor issued before cursors carried a byte offset still works."""
    settings = storage_settings(azurite)
    await ensure_storage(settings)
    audit = AuditLog(settings)
    tenant_id = str(uuid.uuid4())
    at, now = datetime(2026, 12, 3, 9, tzinfo=UTC), datetime(2026, 12, 3, 12, tzinfo=UTC)

    def added(*numbers: int) -> list[AuditRecord]:
        return [
            AuditRecord(at=at, kind=AuditKind.ADDED, run_id="r", user_id=f"u{n}", reason="é" * n)
            for n in numbers
        ]

    try:
        await audit.append(tenant_id, added(1, 2, 3))
        first, _ = await audit.read(tenant_id, now=now)
        assert [r.user_id for r in first] == ["u1", "u2", "u3"]
        end = first[-1].cursor
        assert await audit.read(tenant_id, after=end, now=now) == ([], None)
        await audit.append(tenant_id, added(4, 5))
        later, _ = await audit.read(tenant_id, after=end, now=now)
        assert [r.user_id for r in later] == ["u4", "u5"]
        assert (await audit.read(tenant_id, after=later[-1].cursor, now=now))[0] == []
        middle, _ = await audit.read(tenant_id, after=first[0].cursor, now=now)
        assert [r.user_id for r in middle] == ["u2", "u3", "u4", "u5"]
        older = base64.urlsafe_b64encode(f"{tenant_id}/2026/12/03.jsonl#1".encode()).decode().rstrip("=")
        assert [r.user_id for r in (await audit.read(tenant_id, after=older, now=now))[0]] == [
            "u3",
            "u4",
            "u5",
        ]
        for bad in (f"{tenant_id}/2026/12/03.jsonl#1#-5", f"{tenant_id}/2026/12/03.jsonl#1#2#3"):
            with pytest.raises(InvalidAuditCursor):
                await audit.read(tenant_id, after=base64.urlsafe_b64encode(bad.encode()).decode(), now=now)
    finally:
        await audit.aclose()
