"""Queue semantics (coalescing, poison, malformed messages) and tenant exclusion rules."""

from __future__ import annotations

import azure.functions as func
import msgspec

from devtools.demo_tenant import Tenant as DemoTenant
from shared.storage import queue_client
from sync.jobs import process_refresh_message
from sync.lease import TenantLease
from sync.models import RunStatus
from sync.service import open_service
from sync.store import SyncStore
from tests.integration.conftest import AppUnderTest
from tests.integration.test_sync_flow import refresh, register, roster, run, select
from tests.oracle import expected_roster


async def test_a_refresh_asked_for_while_one_runs_is_requeued_not_lost(
    app: AppUnderTest, own_tenant: DemoTenant
) -> None:
    await register(app, own_tenant)
    await select(app, own_tenant, [own_tenant.landmarks.big_group_id])
    body = (await app.queued_bodies())[0]
    message = msgspec.json.decode(body)
    store = SyncStore(app.settings)
    try:
        another_worker = TenantLease(store, own_tenant.tenant_id)
        assert await another_worker.acquire()
        assert await process_refresh_message(body) == RunStatus.QUEUED
        assert (await run(app, own_tenant, message["runId"]))["status"] == "queued"
        async with queue_client(app.settings) as queue:
            # The peeked original plus a copy put back with a visibility delay: nothing lost.
            assert (await queue.get_queue_properties()).approximate_message_count == 2
        await another_worker.release()
    finally:
        await store.aclose()
    assert await process_refresh_message(body) == RunStatus.SUCCEEDED


async def test_refreshes_queued_before_a_run_starts_are_superseded_by_it(
    app: AppUnderTest, own_tenant: DemoTenant
) -> None:
    await register(app, own_tenant)
    await select(app, own_tenant, [own_tenant.landmarks.big_group_id])
    for _ in range(2):
        await app.http("refresh", "POST", "x", route={"tenantId": own_tenant.tenant_id})
    bodies = await app.queued_bodies()
    assert len(bodies) == 3
    newest = msgspec.json.decode(bodies[-1])
    assert await process_refresh_message(bodies[-1]) == RunStatus.SUCCEEDED
    for body in bodies[:-1]:
        older = msgspec.json.decode(body)
        assert await process_refresh_message(body) == RunStatus.SUPERSEDED
        assert (await run(app, own_tenant, older["runId"]))["supersededBy"] == newest["runId"]


async def test_poison_message_marks_its_run_failed(app: AppUnderTest, own_tenant: DemoTenant) -> None:
    await register(app, own_tenant)
    _, saved = await select(app, own_tenant, [])
    body = (await app.queued_bodies())[0]
    handler = app.functions["refresh_poison"].get_user_function()
    await handler(func.QueueMessage(id="1", body=body))
    failed = await run(app, own_tenant, saved["run"]["id"])
    assert failed["status"] == "failed" and "every delivery attempt" in failed["error"]
    code, tenants, _ = await app.http("tenants_list", "GET", "tenants")
    assert code == 200
    mine = next(t for t in tenants["value"] if t["id"] == own_tenant.tenant_id)
    assert mine["lastRunStatus"] == "failed"


async def test_malformed_messages_are_dropped_without_side_effects(app: AppUnderTest) -> None:
    for body in (b"not json", b'{"tenantId": 5}', b'{"tenantId": "x", "runId": "y"}'):
        assert await process_refresh_message(body) is None


async def test_exclusion_rules_from_the_api_exclude_with_reason_rule(
    app: AppUnderTest, own_tenant: DemoTenant
) -> None:
    await register(app, own_tenant)
    group = own_tenant.landmarks.big_group_id
    eligible = sorted(expected_roster(own_tenant, [group]))
    listed = eligible[0]
    local_parts = {uid: own_tenant.users[uid].user_principal_name.split("@")[0] for uid in own_tenant.users}
    # The tenant id is random per test, so the user order is too: pick a user whose name is not the
    # start of another user's ("ann.lee*" would also match "ann.lee2"), so the pattern catches one.
    by_pattern = next(
        uid
        for uid in eligible[1:]
        if sum(1 for other in local_parts.values() if other.startswith(local_parts[uid])) == 1
    )
    rules = {"upnPatterns": [local_parts[by_pattern] + "*"], "excludedUsers": [listed]}
    code, saved, _ = await app.http(
        "tenant_rules", "PUT", "x", route={"tenantId": own_tenant.tenant_id}, body=rules
    )
    assert code == 200, saved
    await select(app, own_tenant, [group])
    await app.deliver()
    users = await roster(app, own_tenant)
    assert listed not in users and by_pattern not in users
    assert len(users) == len(eligible) - 2
    result = await refresh(app, own_tenant)
    assert result["counts"]["excluded"]["rule"] == 2

    code, problem, _ = await app.http(
        "tenant_rules",
        "PUT",
        "x",
        route={"tenantId": own_tenant.tenant_id},
        body={"upnPatterns": ["*"]},
    )
    assert code == 400 and problem["detail"]
    code, current, _ = await app.http("tenant_rules", "GET", "x", route={"tenantId": own_tenant.tenant_id})
    assert current["excludedUsers"] == [listed]  # the bad update changed nothing


async def test_without_mailbox_permission_the_heuristic_is_used_and_said(
    app: AppUnderTest, own_tenant: DemoTenant
) -> None:
    await register(app, own_tenant)
    app.graph.add_fault(403, r"/users/[^/]+/mailboxSettings")
    await select(app, own_tenant, [])
    await app.deliver()
    async with open_service() as service:
        runs, _ = await service.list_runs(own_tenant.tenant_id)
    assert runs[0].mailbox_purpose_source == "heuristic"
    users = await roster(app, own_tenant)
    # Shared mailboxes with a resource-like name and no person's name are still kept out.
    caught = [uid for uid in own_tenant.landmarks.shared_mailbox_ids if uid not in users]
    assert caught


async def test_a_run_that_lost_its_lease_writes_nothing(app: AppUnderTest, own_tenant: DemoTenant) -> None:
    import asyncio

    from azure.storage.blob.aio import BlobLeaseClient

    await register(app, own_tenant)
    group = own_tenant.landmarks.big_group_id
    _, saved = await select(app, own_tenant, [group])
    app.graph.add_fault(200, rf"/groups/{group}/transitiveMembers", delay=1.0, in_batch=False)  # a slow read
    body = (await app.queued_bodies())[0]
    worker = asyncio.create_task(process_refresh_message(body))
    await asyncio.sleep(0.5)  # the run holds the lease and is reading Graph
    store = SyncStore(app.settings)
    try:  # another worker took the tenant over: the lease was broken and taken by a new holder
        await BlobLeaseClient(store.lock_blob(own_tenant.tenant_id)).break_lease(lease_break_period=0)
        assert await TenantLease(store, own_tenant.tenant_id).acquire()
    finally:
        await store.aclose()
    assert await worker == RunStatus.FAILED
    failed = await run(app, own_tenant, saved["run"]["id"])
    assert "took over" in failed["error"]
    assert await roster(app, own_tenant) == {}
