"""The fault matrix: what the product does when Microsoft Graph, storage or the worker fails.

Every row runs the real handlers against real Azurite and the demo Graph tenant, injects one
fault, and checks three things: the final roster (against the by-hand oracle in
tests/oracle.py), that nobody was removed by mistake, and that the run record says what
happened. Before each fault the directory is changed so that a successful run WOULD remove
someone ("the leaver"): a failed run that leaves the leaver on the platform has provably not
applied anything. The README's fault table lists these tests one to one.

The removal-safety features (per-tenant guard thresholds, undo of a run's removals from the
API and the CLI) are at the end.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import azure.functions as func
import msgspec
import pytest
from azure.core.exceptions import ResourceNotFoundError
from azure.data.tables.aio import TableClient

import sync.engine
import sync.lease
import sync.roster
from devtools.azurite import AZURITE_BIN, DEV_ACCOUNT, DEV_KEY, Azurite, _listening, free_port
from devtools.demo_tenant import DemoGraphServer, build_tenant
from devtools.demo_tenant import Tenant as DemoTenant
from shared.graph import GraphHttpOptions
from shared.settings import get_settings, reset_settings_cache
from shared.storage import TENANTS_TABLE
from sync import jobs
from sync.jobs import process_refresh_message
from sync.models import RunStatus
from sync.service import use_graph_http_options
from tests.integration.conftest import AppUnderTest
from tests.integration.test_sync_flow import refresh, register, roster, run, select
from tests.oracle import expected_roster

REPO = Path(__file__).resolve().parents[2]
CONSENT_APP_ID = "11111111-2222-3333-4444-555555555555"
# Production retries 5 times with a 1 s base delay and waits 60 s for an answer; the matrix
# keeps Graph's behaviour (Retry-After is honoured as sent) and only shortens our own waits.
FAST = GraphHttpOptions(retry_delay_seconds=0.0, max_retries=3, request_timeout_seconds=10.0)


@pytest.fixture(autouse=True)
def fast_graph() -> Iterator[None]:
    use_graph_http_options(FAST)
    yield
    use_graph_http_options(None)


async def registered_tenants(connection_string: str) -> set[str]:
    async with TableClient.from_connection_string(connection_string, TENANTS_TABLE) as table:
        try:
            return {
                e["RowKey"]
                async for e in table.query_entities("PartitionKey eq 'tenants'", select=["RowKey"])
            }
        except ResourceNotFoundError:
            return set()


async def forget_tenants(connection_string: str, tenant_ids: set[str]) -> None:
    async with TableClient.from_connection_string(connection_string, TENANTS_TABLE) as table:
        for tid in tenant_ids:
            await table.delete_entity("tenants", tid)


@pytest.fixture(autouse=True)
async def forget_new_tenants(azurite: Azurite) -> AsyncIterator[None]:
    """Tenants a test registered leave the session's shared `tenants` table afterwards: the
    nightly timer queues a refresh per registered tenant, and other tests run it."""
    before = await registered_tenants(azurite.connection_string)
    yield
    await forget_tenants(
        azurite.connection_string, await registered_tenants(azurite.connection_string) - before
    )


# --- helpers ----------------------------------------------------------------------------------


def department_pair(tenant: DemoTenant) -> tuple[str, str]:
    """Two department groups, the second with more than 20 eligible people of its own."""
    depts = sorted(
        tenant.landmarks.department_group_ids.values(),
        key=lambda gid: -len(expected_roster(tenant, [gid])),
    )
    first, second = depts[1], depts[0]
    assert len(expected_roster(tenant, [second])) > 20, "the demo tenant's biggest department shrank"
    return first, second


def make_a_leaver(tenant: DemoTenant, group_ids: list[str]) -> str:
    """Take one eligible user out of every selected group: a successful run would remove them."""
    expected = expected_roster(tenant, group_ids)
    leaver = next(
        uid for uid in sorted(expected) if all(uid in tenant.direct_member_ids(gid) for gid in expected[uid])
    )
    for gid in expected[leaver]:
        tenant.remove_member(gid, leaver)
    assert leaver not in expected_roster(tenant, group_ids)
    return leaver


async def assert_roster(
    app: AppUnderTest, tenant: DemoTenant, oracle: dict[str, set[str]], *, removed: set[str] = frozenset()
) -> dict[str, dict[str, Any]]:
    """The active roster is exactly the oracle (groups included) and only `removed` were removed."""
    active = await roster(app, tenant)
    assert set(active) == set(oracle), (
        f"{len(set(active) - set(oracle))} extra, {len(set(oracle) - set(active))} missing"
    )
    for uid, user in active.items():
        assert set(user["groups"]) == oracle[uid], uid
    gone = await roster(app, tenant, "removed")
    assert set(gone) == set(removed), f"removed by mistake: {sorted(set(gone) - set(removed))[:5]}"
    return active


async def baseline(app: AppUnderTest, tenant: DemoTenant, groups: list[str]) -> dict[str, dict[str, Any]]:
    """Register, select and refresh with no fault; the roster matches the oracle."""
    await register(app, tenant)
    status, saved = await select(app, tenant, groups)
    assert status == 200, saved
    assert await app.deliver() == 1
    first = await run(app, tenant, saved["run"]["id"])
    assert first["status"] == "succeeded", first
    return await assert_roster(app, tenant, expected_roster(tenant, groups or None))


async def queue_refresh(app: AppUnderTest, tenant: DemoTenant) -> tuple[dict[str, Any], bytes]:
    """POST refresh; the queued run and its message (left on the queue)."""
    code, queued, _ = await app.http(
        "refresh", "POST", f"tenants/{tenant.tenant_id}/refresh", route={"tenantId": tenant.tenant_id}
    )
    assert code == 202, queued
    bodies = [b for b in await app.queued_bodies() if msgspec.json.decode(b)["runId"] == queued["id"]]
    return queued, bodies[0]


async def all_runs(app: AppUnderTest, tenant: DemoTenant) -> list[dict[str, Any]]:
    code, body, _ = await app.http(
        "runs_list", "GET", "x", route={"tenantId": tenant.tenant_id}, params={"limit": "100"}
    )
    assert code == 200, body
    return body["value"]


async def failed_and_untouched(
    app: AppUnderTest, tenant: DemoTenant, before: dict[str, Any], *, says: list[str]
) -> dict[str, Any]:
    """A refresh now fails, its record says why, and the roster is exactly as before."""
    failed = await refresh(app, tenant)
    assert failed["status"] == "failed", failed
    for words in says:
        assert words.lower() in (failed["error"] or "").lower(), failed["error"]
    assert failed["counts"]["removed"] == 0 and failed["finishedAt"]
    assert await roster(app, tenant) == before  # untouched: the leaver is still on the platform
    assert await roster(app, tenant, "removed") == {}
    return failed


def transitive_reads(graph: DemoGraphServer, group_id: str) -> list[Any]:
    # Member pages only: the member counts that choose the read strategy ask the same path in $batch.
    return [
        r for r in graph.request_log() if f"/groups/{group_id}/transitiveMembers" in r.path and not r.in_batch
    ]


# --- Graph faults -----------------------------------------------------------------------------


async def test_429_storm_with_retry_after_completes_correctly(
    app: AppUnderTest, own_tenant: DemoTenant, monkeypatch: pytest.MonkeyPatch
) -> None:
    groups = list(department_pair(own_tenant))
    await baseline(app, own_tenant, groups)
    leaver = make_a_leaver(own_tenant, groups)
    # Production retry count: the storm is ridden out by honouring Retry-After, not by luck.
    use_graph_http_options(GraphHttpOptions(retry_delay_seconds=0.0, max_retries=5))
    monkeypatch.setattr(
        sync.engine, "PURPOSE_RECHECK", timedelta(0)
    )  # every mailbox read again: more traffic
    app.graph.set_rate_limit(100, 1.0)  # Graph's per-app throttling: then 429 + Retry-After
    app.graph.add_fault(  # whole member-page requests: the batched member counts are throttled by the budget
        429, rf"/groups/{groups[0]}/transitiveMembers", times=3, retry_after=1, in_batch=False
    )
    app.graph.reset_log()
    done = await refresh(app, own_tenant)
    assert done["status"] == "succeeded", done["error"]
    throttled = [r for r in app.graph.request_log() if r.status == 429]
    assert len(throttled) > 50, len(throttled)  # a storm: $batch items and whole requests
    assert any(r.in_batch for r in throttled) and any(not r.in_batch for r in throttled)
    assert app.graph.faults()[0]["fired"] == 3
    assert done["counts"]["removed"] == 1 and done["error"] is None
    await assert_roster(app, own_tenant, expected_roster(own_tenant, groups), removed={leaver})


async def test_transient_503_is_retried_and_the_run_completes(
    app: AppUnderTest, own_tenant: DemoTenant
) -> None:
    groups = list(department_pair(own_tenant))
    await baseline(app, own_tenant, groups)
    leaver = make_a_leaver(own_tenant, groups)
    app.graph.add_fault(503, rf"/groups/{groups[0]}/transitiveMembers", times=2, retry_after=0)
    done = await refresh(app, own_tenant)
    assert done["status"] == "succeeded", done["error"]
    assert app.graph.faults()[0]["fired"] == 2
    await assert_roster(app, own_tenant, expected_roster(own_tenant, groups), removed={leaver})


async def test_persistent_503_fails_the_run_and_leaves_the_roster_untouched(
    app: AppUnderTest, own_tenant: DemoTenant
) -> None:
    groups = list(department_pair(own_tenant))
    before = await baseline(app, own_tenant, groups)
    make_a_leaver(own_tenant, groups)
    app.graph.add_fault(503, rf"/groups/{groups[1]}/transitiveMembers", retry_after=0, in_batch=False)
    await failed_and_untouched(app, own_tenant, before, says=["unavailable", "503"])
    assert app.graph.faults()[0]["fired"] == FAST.max_retries + 1  # every retry was tried first


async def test_graph_timeout_fails_the_run_and_leaves_the_roster_untouched(
    app: AppUnderTest, own_tenant: DemoTenant
) -> None:
    groups = list(department_pair(own_tenant))
    before = await baseline(app, own_tenant, groups)
    make_a_leaver(own_tenant, groups)
    use_graph_http_options(
        GraphHttpOptions(retry_delay_seconds=0.0, max_retries=3, request_timeout_seconds=1.0)
    )
    app.graph.add_fault(200, rf"/groups/{groups[1]}/transitiveMembers", delay=5.0)  # hangs past the timeout
    started = time.monotonic()
    await failed_and_untouched(app, own_tenant, before, says=["timed out"])
    assert time.monotonic() - started < 5.0


@pytest.fixture
def big_tenant() -> DemoTenant:
    """1,500 users: "All Staff" has more than 999 members, so it is read in two pages."""
    import uuid

    return build_tenant(str(uuid.uuid4()), "Big Tenant", users=1500, groups=20, seed=23)


@pytest.fixture
def big_app(
    app: AppUnderTest, big_tenant: DemoTenant, monkeypatch: pytest.MonkeyPatch
) -> Iterator[AppUnderTest]:
    with DemoGraphServer([big_tenant]) as server:
        monkeypatch.setenv("GRAPH_BASE_URL", server.base_url)
        reset_settings_cache()
        yield AppUnderTest(functions=app.functions, settings=get_settings(), graph=server)
    reset_settings_cache()


async def test_a_page_failing_mid_paging_fails_the_run_and_leaves_the_roster_untouched(
    big_app: AppUnderTest, big_tenant: DemoTenant
) -> None:
    big = big_tenant.landmarks.big_group_id
    assert len(big_tenant.transitive_user_ids(big)) > 999
    before = await baseline(big_app, big_tenant, [big])
    make_a_leaver(big_tenant, [big])
    big_app.graph.reset_log()
    big_app.graph.add_fault(
        500, rf"/groups/{big}/transitiveMembers", after=1, in_batch=False
    )  # page 1 passes
    await failed_and_untouched(big_app, big_tenant, before, says=["500"])
    reads = transitive_reads(big_app.graph, big)
    assert reads[0].status == 200 and "skiptoken" not in reads[0].query.lower()  # the first page came
    assert any(r.status == 500 and "skiptoken" in r.query.lower() for r in reads)  # a later one failed


async def test_403_on_one_selected_group_fails_the_run_naming_the_permission(
    app: AppUnderTest, own_tenant: DemoTenant
) -> None:
    groups = list(department_pair(own_tenant))
    before = await baseline(app, own_tenant, groups)
    make_a_leaver(own_tenant, groups)
    app.graph.add_fault(403, rf"/groups/{groups[1]}/transitiveMembers")
    await failed_and_untouched(app, own_tenant, before, says=["403", "GroupMember.Read.All"])


async def test_a_selected_group_deleted_404_fails_the_run_naming_it(
    app: AppUnderTest, own_tenant: DemoTenant
) -> None:
    groups = list(department_pair(own_tenant))
    before = await baseline(app, own_tenant, groups)
    make_a_leaver(own_tenant, groups)
    assert own_tenant.delete_group(groups[1])
    await failed_and_untouched(
        app, own_tenant, before, says=["no longer exist", groups[1], "nobody was removed"]
    )


def empty_the_group(tenant: DemoTenant, group_id: str) -> list[str]:
    members = list(tenant.direct_member_ids(group_id))
    for member in members:
        tenant.remove_member(group_id, member)
    assert tenant.transitive_user_ids(group_id) == []
    return members


async def test_a_group_reading_0_members_is_held_by_the_removal_guard(
    app: AppUnderTest, own_tenant: DemoTenant
) -> None:
    first, second = department_pair(own_tenant)
    before = await baseline(app, own_tenant, [first, second])
    at_stake = set(expected_roster(own_tenant, [first, second])) - set(expected_roster(own_tenant, [first]))
    assert len(at_stake) > 20 and len(at_stake) * 10 > len(before)  # more than both default thresholds
    members = empty_the_group(own_tenant, second)  # what a Graph incident answering [] looks like

    held = await refresh(app, own_tenant)
    assert held["status"] == "held", held
    assert held["counts"]["removed"] == len(at_stake) and "approve" in held["guard"]
    assert set(held["plan"]["remove"]) == at_stake
    assert {g["id"]: g["members"] for g in held["groups"]}[second] == 0  # the record shows the empty group
    assert await roster(app, own_tenant) == before  # nobody removed while held

    for member in members:  # the incident is over: Graph answers the members again
        own_tenant.add_member(second, member)
    fine = await refresh(app, own_tenant)
    assert fine["status"] == "succeeded" and fine["counts"]["removed"] == 0
    await assert_roster(app, own_tenant, expected_roster(own_tenant, [first, second]))


async def test_a_group_reading_0_members_is_held_even_when_it_is_a_small_share(
    app: AppUnderTest, own_tenant: DemoTenant
) -> None:
    """The percentage guard cannot see a 500-person group emptied in a 20,000-user roster:
    with thresholds the small share passes, so sync.safety's emptied-group rule must hold it."""
    first, second = department_pair(own_tenant)
    await baseline(app, own_tenant, [first, second])
    code, tenant, _ = await app.http(
        "tenant_put",
        "PUT",
        "x",
        route={"tenantId": own_tenant.tenant_id},
        body={"displayName": "Test Tenant", "guardPercent": 90, "guardMinUsers": 1000},
    )
    assert code == 200 and tenant["guardPercent"] == 90 and tenant["guardMinUsers"] == 1000
    before = await roster(app, own_tenant)
    at_stake = set(before) - set(expected_roster(own_tenant, [first]))
    empty_the_group(own_tenant, second)

    held = await refresh(app, own_tenant)
    assert held["status"] == "held", held
    assert second in held["guard"] and "empty" in held["guard"]
    assert set(held["plan"]["remove"]) == at_stake
    assert await roster(app, own_tenant) == before

    code, approved, _ = await app.http(  # the admin checked: the group really was emptied
        "run_approve", "POST", "x", route={"tenantId": own_tenant.tenant_id, "runId": held["id"]}
    )
    assert code == 202, approved
    await app.deliver()
    done = await run(app, own_tenant, approved["id"])
    assert done["status"] == "succeeded" and done["counts"]["removed"] == len(at_stake)
    await assert_roster(app, own_tenant, expected_roster(own_tenant, [first]), removed=at_stake)


@pytest.mark.parametrize("status", [401, 403])
async def test_consent_revoked_fails_the_run_naming_permission_and_consent_link(
    app: AppUnderTest, own_tenant: DemoTenant, monkeypatch: pytest.MonkeyPatch, status: int
) -> None:
    monkeypatch.setenv("GRAPH_APP_CLIENT_ID", CONSENT_APP_ID)
    reset_settings_cache()
    groups = list(department_pair(own_tenant))
    before = await baseline(app, own_tenant, groups)
    make_a_leaver(own_tenant, groups)
    app.graph.add_fault(status, r".*", method="*")  # every call refused
    failed = await failed_and_untouched(
        app,
        own_tenant,
        before,
        says=[
            f"refused access ({status})",
            "Read.All",
            f"/{own_tenant.tenant_id}/adminconsent?client_id={CONSENT_APP_ID}",
        ],
    )
    assert failed["graphRequests"] >= 1
    _code, tenants, _ = await app.http("tenants_list", "GET", "tenants")
    mine = next(t for t in tenants["value"] if t["id"] == own_tenant.tenant_id)
    assert mine["lastRunStatus"] == "failed"


# --- queue and worker faults ------------------------------------------------------------------


async def test_the_same_message_delivered_twice_at_once_runs_once(
    app: AppUnderTest, own_tenant: DemoTenant, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(jobs, "BUSY_RETRY_SECONDS", 0)
    groups = list(department_pair(own_tenant))
    await baseline(app, own_tenant, groups)
    leaver = make_a_leaver(own_tenant, groups)
    queued, body = await queue_refresh(app, own_tenant)
    app.graph.reset_log()
    outcomes = await asyncio.gather(process_refresh_message(body), process_refresh_message(body))
    assert sorted(outcomes) == [RunStatus.QUEUED, RunStatus.SUCCEEDED]  # one ran, one was put back
    assert await app.deliver() == 2  # the original and the copy put back: both find the run done
    assert len(transitive_reads(app.graph, groups[0])) == 1  # the directory was read once
    done = await run(app, own_tenant, queued["id"])
    assert done["status"] == "succeeded" and done["counts"]["removed"] == 1
    await assert_roster(app, own_tenant, expected_roster(own_tenant, groups), removed={leaver})


async def test_two_refreshes_of_one_tenant_at_once_one_runs_the_other_is_covered(
    app: AppUnderTest, own_tenant: DemoTenant, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(jobs, "BUSY_RETRY_SECONDS", 0)
    groups = list(department_pair(own_tenant))
    await baseline(app, own_tenant, groups)
    leaver = make_a_leaver(own_tenant, groups)
    first, first_body = await queue_refresh(app, own_tenant)
    second, second_body = await queue_refresh(app, own_tenant)
    app.graph.reset_log()
    outcomes = await asyncio.gather(process_refresh_message(first_body), process_refresh_message(second_body))
    assert RunStatus.SUCCEEDED in outcomes and (
        RunStatus.QUEUED in outcomes or RunStatus.SUPERSEDED in outcomes
    ), outcomes
    await app.deliver()  # the originals and any copy put back
    statuses = sorted([(await run(app, own_tenant, r["id"]))["status"] for r in (first, second)])
    assert statuses == ["succeeded", "superseded"]
    assert len(transitive_reads(app.graph, groups[0])) == 1  # never two reads interleaving
    await assert_roster(app, own_tenant, expected_roster(own_tenant, groups), removed={leaver})


async def test_a_poison_message_marks_its_run_failed_and_changes_nothing(
    app: AppUnderTest, own_tenant: DemoTenant
) -> None:
    groups = list(department_pair(own_tenant))
    before = await baseline(app, own_tenant, groups)
    make_a_leaver(own_tenant, groups)
    queued, body = await queue_refresh(app, own_tenant)
    poison = app.functions["refresh_poison"].get_user_function()
    await poison(func.QueueMessage(id="poisoned", body=body))  # the host gave up on it
    failed = await run(app, own_tenant, queued["id"])
    assert failed["status"] == "failed" and "every delivery attempt" in failed["error"]
    assert await roster(app, own_tenant) == before
    assert await process_refresh_message(body) == RunStatus.FAILED  # a late copy changes nothing
    assert await roster(app, own_tenant) == before


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"not json",
        b"[]",
        b'{"tenantId": 5, "runId": "x"}',
        b'{"tenantId": "contoso", "runId": "0000000000001-00000000"}',
        b'{"runId": "0000000000001-00000000"}',
        b'{"tenantId": "00000000-0000-4000-8000-000000000001"}',
        b'{"tenantId": "00000000-0000-4000-8000-000000000001\\n", "runId": "x"}',
        b'{"tenantId": "00000000-0000-4000-8000-000000000001", "runId": "x", "dryRun": "yes"}',
        b"\xff\xfe" * 1000,
    ],
)
async def test_a_malformed_queue_message_is_dropped_without_side_effects(
    app: AppUnderTest, own_tenant: DemoTenant, body: bytes
) -> None:
    groups = list(department_pair(own_tenant))
    before = await baseline(app, own_tenant, groups)
    runs_before = await all_runs(app, own_tenant)
    assert await process_refresh_message(body) is None
    poison = app.functions["refresh_poison"].get_user_function()
    await poison(func.QueueMessage(id="bad", body=body))  # the poison handler shrugs it off too
    assert await app.queued_bodies() == []  # not put back, not retried
    assert await all_runs(app, own_tenant) == runs_before
    assert await roster(app, own_tenant) == before


WORKER = """
import asyncio, sys
import sync.engine
import sync.lease
sync.lease.LEASE_SECONDS = int(sys.argv[2])  # a dead worker's lease lapses this fast
from shared.graph import GraphHttpOptions
from sync.service import use_graph_http_options
from sync.jobs import process_refresh_message
use_graph_http_options(GraphHttpOptions(retry_delay_seconds=0.0, max_retries=3, request_timeout_seconds=120))
print(asyncio.run(process_refresh_message(sys.argv[1].encode())), flush=True)
"""


async def test_worker_killed_mid_run_and_message_redelivered_takes_over_after_the_lease(
    app: AppUnderTest, own_tenant: DemoTenant, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    lease = 15  # Blob Storage's shortest lease: the storage service lets a dead worker's lapse
    monkeypatch.setattr(sync.lease, "LEASE_SECONDS", lease)
    groups = list(department_pair(own_tenant))
    await baseline(app, own_tenant, groups)
    leaver = make_a_leaver(own_tenant, groups)
    queued, body = await queue_refresh(app, own_tenant)
    hang = app.graph.add_fault(200, r"/\$batch", method="POST", delay=120, times=1)  # mid-read
    env = {
        **os.environ,
        "SYNC_STORAGE": app.settings.storage.connection_string or "",
        "GRAPH_AUTH": "demo",
        "GRAPH_BASE_URL": app.graph.base_url,
        "SYNC_QUEUE": app.settings.queue_name,
        "PYTHONPATH": str(REPO),
    }
    worker = subprocess.Popen(
        [sys.executable, "-c", WORKER, body.decode(), str(lease)],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 60
        while not app.graph.faults()[0]["fired"]:
            assert worker.poll() is None, worker.stdout.read().decode() if worker.stdout else ""
            assert time.monotonic() < deadline, "the worker never reached Graph"
            await asyncio.sleep(0.05)
        assert (await run(app, own_tenant, queued["id"]))["status"] == "running"
        worker.send_signal(signal.SIGKILL)  # the worker process dies mid-run
        worker.wait(timeout=10)
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait()
    app.graph.remove_fault(hang)

    # Redelivered while the dead worker's lease still stands: put back, not lost, not doubled.
    monkeypatch.setattr(jobs, "BUSY_RETRY_SECONDS", 0)
    assert await process_refresh_message(body) == RunStatus.QUEUED
    assert await roster(app, own_tenant, "removed") == {}
    deadline = time.monotonic() + lease * 4
    while (outcome := await process_refresh_message(body)) == RunStatus.QUEUED:
        assert time.monotonic() < deadline, "the dead worker's lease never lapsed"
        await asyncio.sleep(0.5)
    assert outcome == RunStatus.SUCCEEDED
    done = await run(app, own_tenant, queued["id"])
    assert done["status"] == "succeeded" and done["counts"]["removed"] == 1 and done["error"] is None
    await assert_roster(app, own_tenant, expected_roster(own_tenant, groups), removed={leaver})


# --- storage stopped mid-apply ----------------------------------------------------------------


class StoppableAzurite:
    """An Azurite of this test's own, with a debug log to see its requests, that can stop and
    start again on the same ports and data folder (data survives a graceful stop)."""

    def __init__(self) -> None:
        self._dir = tempfile.TemporaryDirectory(prefix="azurite-stop-")
        self.location = Path(self._dir.name)
        self.ports = [free_port() for _ in range(3)]
        self.debug_log = self.location / "debug.log"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def connection_string(self) -> str:
        host = "http://127.0.0.1"
        blob, queue, table = self.ports
        return (
            f"DefaultEndpointsProtocol=http;AccountName={DEV_ACCOUNT};AccountKey={DEV_KEY};"
            f"BlobEndpoint={host}:{blob}/{DEV_ACCOUNT};QueueEndpoint={host}:{queue}/{DEV_ACCOUNT};"
            f"TableEndpoint={host}:{table}/{DEV_ACCOUNT};"
        )

    def start(self) -> None:
        blob, queue, table = self.ports
        self.process = subprocess.Popen(
            [
                str(AZURITE_BIN),
                *("--silent", "--disableTelemetry", "--skipApiVersionCheck", "--loose"),
                *("--location", str(self.location), "--debug", str(self.debug_log)),
                *("--blobHost", "127.0.0.1", "--blobPort", str(blob)),
                *("--queueHost", "127.0.0.1", "--queuePort", str(queue)),
                *("--tableHost", "127.0.0.1", "--tablePort", str(table)),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            cwd=self.location,
        )
        deadline = time.monotonic() + 30
        while not all(_listening(p) for p in self.ports):
            assert self.process.poll() is None, "Azurite exited at start"
            assert time.monotonic() < deadline, "Azurite did not listen"
            time.sleep(0.05)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()  # graceful: Azurite saves its data, as Azure Storage keeps it
            self.process.wait(timeout=30)
        self.process = None
        deadline = time.monotonic() + 10
        while any(_listening(p) for p in self.ports) and time.monotonic() < deadline:
            time.sleep(0.05)

    def log_size(self) -> int:
        return self.debug_log.stat().st_size if self.debug_log.exists() else 0

    def close(self) -> None:
        self.stop()
        self._dir.cleanup()


@pytest.fixture
def stoppable_azurite() -> Iterator[StoppableAzurite]:
    server = StoppableAzurite()
    server.start()
    yield server
    server.close()


@pytest.fixture
def stoppable_app(
    app: AppUnderTest,
    big_tenant: DemoTenant,
    stoppable_azurite: StoppableAzurite,
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[AppUnderTest]:
    with DemoGraphServer([big_tenant]) as server:
        monkeypatch.setenv("SYNC_STORAGE", stoppable_azurite.connection_string)
        monkeypatch.setenv("GRAPH_BASE_URL", server.base_url)
        reset_settings_cache()
        yield AppUnderTest(functions=app.functions, settings=get_settings(), graph=server)
    reset_settings_cache()


async def _stop_when_apply_starts(azurite: StoppableAzurite, after: int) -> bool:
    """Stop Azurite as soon as its log shows the first roster transaction after `after` bytes.

    The app's only entity-group transactions are roster writes, so the first one is the apply.
    """
    marker = b"Operation=Table_Batch"
    deadline = time.monotonic() + 60
    with azurite.debug_log.open("rb") as log:
        log.seek(after)
        tail = b""
        while time.monotonic() < deadline:
            chunk = tail + log.read()
            if marker in chunk:
                await asyncio.to_thread(azurite.stop)
                return True
            tail = chunk[-len(marker) :]
            await asyncio.sleep(0.002)
    return False


async def test_azurite_stopped_mid_apply_fails_the_attempt_and_the_redelivery_converges(
    stoppable_app: AppUnderTest,
    big_tenant: DemoTenant,
    stoppable_azurite: StoppableAzurite,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    app, tenant = stoppable_app, big_tenant
    monkeypatch.setattr(sync.lease, "LEASE_SECONDS", 15)  # the stranded lease lapses quickly
    monkeypatch.setattr(jobs, "BUSY_RETRY_SECONDS", 0)
    everyone = await baseline(app, tenant, [])  # mode all: ~1,350 users on the platform
    code, _, _ = await app.http(  # this tenant accepts large removals without an approval
        "tenant_put",
        "PUT",
        "x",
        route={"tenantId": tenant.tenant_id},
        body={"displayName": "Big Tenant", "guardPercent": 100},
    )
    assert code == 200
    big = tenant.landmarks.big_group_id
    status, saved = await select(app, tenant, [big])  # ~400 removals and ~950 updates to apply
    assert status == 200
    body = next(b for b in await app.queued_bodies() if saved["run"]["id"] in b.decode())
    target = expected_roster(tenant, [big])
    leaving = set(everyone) - set(target)
    assert len(leaving) > 100

    # Each transaction takes a few milliseconds now: hold each a moment, so the apply's 14 are
    # still going when Azurite stops (a stop takes longer than the whole apply otherwise).
    submit = sync.roster.submit_transaction

    async def slow_submit(*args: Any) -> None:
        await asyncio.sleep(0.25)
        await submit(*args)

    monkeypatch.setattr(sync.roster, "submit_transaction", slow_submit)
    stopper = asyncio.create_task(_stop_when_apply_starts(stoppable_azurite, stoppable_azurite.log_size()))
    try:
        outcome: Any = await process_refresh_message(body)
    except Exception as exc:  # storage went away under the worker: the Functions host retries it
        outcome = exc
    assert await stopper, "the apply never started"
    assert outcome != RunStatus.SUCCEEDED, "the stop came too late to interrupt the run"

    stoppable_azurite.start()  # storage is back, with whatever the apply had written
    first = await run(app, tenant, saved["run"]["id"])
    assert first["status"] in ("running", "failed"), first  # never "succeeded" on a half-applied roster
    partial = await roster(app, tenant, "removed")
    assert set(partial) <= leaving  # whatever landed is a removal the selection asked for
    regrouped = sum(1 for user in (await roster(app, tenant)).values() if user["groups"])
    assert regrouped < len(target) or len(partial) < len(leaving), "the apply had finished"  # cut mid-way

    deadline = time.monotonic() + 60
    while (outcome := await process_refresh_message(body)) == RunStatus.QUEUED:  # redelivery
        assert time.monotonic() < deadline, "the stranded lease never lapsed"
        await asyncio.sleep(0.5)
    if outcome == RunStatus.FAILED:  # the attempt recorded its failure: a later refresh converges
        assert "run a refresh again" in (await run(app, tenant, saved["run"]["id"]))["error"]
        outcome = (await refresh(app, tenant))["status"]
    assert outcome == RunStatus.SUCCEEDED
    await assert_roster(app, tenant, target, removed=leaving)


# --- removal safety: per-tenant guard thresholds, undo ----------------------------------------


async def test_tenant_guard_thresholds_from_the_api_hold_a_small_removal(
    app: AppUnderTest, own_tenant: DemoTenant
) -> None:
    groups = list(department_pair(own_tenant))
    before = await baseline(app, own_tenant, groups)
    for bad, words in (
        ({"displayName": "T", "guardPercent": 101}, "guardPercent"),
        ({"displayName": "T", "guardPercent": "5"}, "guardPercent"),
        ({"displayName": "T", "guardMinUsers": -1}, "guardMinUsers"),
        ({"displayName": "T", "guardMinUsers": 2.5}, "guardMinUsers"),
        ({"displayName": "T", "guardPercnt": 5}, "unknown field"),
    ):
        code, problem, _ = await app.http(
            "tenant_put", "PUT", "x", route={"tenantId": own_tenant.tenant_id}, body=bad
        )
        assert code == 400 and words in problem["detail"], problem
    code, tenant, _ = await app.http(
        "tenant_put",
        "PUT",
        "x",
        route={"tenantId": own_tenant.tenant_id},
        body={"displayName": "Test Tenant", "guardPercent": 0, "guardMinUsers": 0},
    )
    assert code == 200 and (tenant["guardPercent"], tenant["guardMinUsers"]) == (0, 0)
    leaver = make_a_leaver(own_tenant, groups)
    held = await refresh(app, own_tenant)
    assert held["status"] == "held" and held["plan"]["remove"] == [leaver]
    assert "0% / 0 users" in held["guard"]
    assert await roster(app, own_tenant) == before

    # Renaming keeps the thresholds; null goes back to the app settings (10 % / 20 users).
    code, tenant, _ = await app.http(
        "tenant_put", "PUT", "x", route={"tenantId": own_tenant.tenant_id}, body={"displayName": "Renamed"}
    )
    assert (tenant["guardPercent"], tenant["guardMinUsers"]) == (0, 0)
    code, tenant, _ = await app.http(
        "tenant_put",
        "PUT",
        "x",
        route={"tenantId": own_tenant.tenant_id},
        body={"displayName": "Renamed", "guardPercent": None, "guardMinUsers": None},
    )
    assert (tenant["guardPercent"], tenant["guardMinUsers"]) == (None, None)
    done = await refresh(app, own_tenant)
    assert done["status"] == "succeeded" and done["counts"]["removed"] == 1


async def test_undo_puts_back_every_user_a_run_removed_in_one_call(
    app: AppUnderTest, own_tenant: DemoTenant
) -> None:
    everyone = await baseline(app, own_tenant, [])
    small = own_tenant.landmarks.nested_chain[-1]
    code, _, _ = await app.http(  # a wrong selection slips through: no guard on this tenant
        "tenant_put", "PUT", "x", route={"tenantId": own_tenant.tenant_id},
        body={"displayName": "Test Tenant", "guardPercent": 100},
    )  # fmt: skip
    _status, saved = await select(app, own_tenant, [small])
    await app.deliver()
    held = await run(app, own_tenant, saved["run"]["id"])
    assert held["status"] == "held" and "of the roster" in held["guard"]  # a majority: held at any threshold
    code, approved, _ = await app.http(  # ... and approved by mistake
        "run_approve", "POST", "x", route={"tenantId": own_tenant.tenant_id, "runId": held["id"]}
    )
    assert code == 202, approved
    await app.deliver()
    mistake = await run(app, own_tenant, approved["id"])
    lost = set(everyone) - set(expected_roster(own_tenant, [small]))
    assert mistake["status"] == "succeeded" and mistake["counts"]["removed"] == len(lost) > 200
    await assert_roster(app, own_tenant, expected_roster(own_tenant, [small]), removed=lost)

    code, undo, headers = await app.http(
        "run_undo", "POST", "x", route={"tenantId": own_tenant.tenant_id, "runId": mistake["id"]}
    )
    assert code == 201, undo
    assert headers["Location"].endswith(undo["id"])
    assert undo["status"] == "succeeded" and undo["reason"] == "undo" and undo["undoOf"] == mistake["id"]
    assert undo["counts"]["restored"] == len(lost) and len(undo["plan"]["restore"]) == 200  # sample
    after = await roster(app, own_tenant)
    assert set(after) == set(everyone) and await roster(app, own_tenant, "removed") == {}
    assert all(after[uid]["addedAt"] == everyone[uid]["addedAt"] for uid in lost)  # restored, not re-created
    assert (await run(app, own_tenant, mistake["id"]))["undoneBy"] == undo["id"]

    code, again, _ = await app.http(
        "run_undo", "POST", "x", route={"tenantId": own_tenant.tenant_id, "runId": mistake["id"]}
    )
    assert code == 409 and "nothing to undo" in again["detail"]
    for run_id, expect in ((saved["run"]["id"][:-1] + "z", 400), ("9" * 13 + "-00000000", 404)):
        code, problem, _ = await app.http(
            "run_undo", "POST", "x", route={"tenantId": own_tenant.tenant_id, "runId": run_id}
        )
        assert code == expect, problem

    # Fixing the cause is the admin's part: with the wrong selection still saved, the next
    # refresh removes them again (and that run can be undone in turn).
    await select(app, own_tenant, [])
    await app.deliver()
    await assert_roster(app, own_tenant, expected_roster(own_tenant, None))


async def test_undo_leaves_alone_users_restored_since_or_removed_by_a_later_run(
    app: AppUnderTest, own_tenant: DemoTenant
) -> None:
    group = own_tenant.landmarks.big_group_id
    await baseline(app, own_tenant, [group])
    first_leaver = make_a_leaver(own_tenant, [group])
    first = await refresh(app, own_tenant)
    second_leaver = make_a_leaver(own_tenant, [group])
    second = await refresh(app, own_tenant)
    assert first["counts"]["removed"] == second["counts"]["removed"] == 1
    code, undo, _ = await app.http(
        "run_undo", "POST", "x", route={"tenantId": own_tenant.tenant_id, "runId": first["id"]}
    )
    assert code == 201 and undo["counts"]["restored"] == 1 and undo["plan"]["restore"] == [first_leaver]
    assert set(await roster(app, own_tenant, "removed")) == {second_leaver}


def test_cli_guard_thresholds_and_undo_of_the_last_run(cli, own_tenant: DemoTenant) -> None:
    import json

    tid = own_tenant.tenant_id
    added = cli(
        "tenant", "add", tid, "--name", "T", "--guard-percent", "100", "--guard-min-users", "0", "--json"
    )
    assert added.returncode == 0, added.stderr
    assert json.loads(added.stdout)["guardPercent"] == 100
    bad = cli("tenant", "add", tid, "--name", "T", "--guard-percent", "lots")
    assert bad.returncode == 2 and "not a number" in bad.stderr
    assert cli("select", tid, "--all").returncode == 0
    assert cli("refresh", tid).returncode == 0
    small = own_tenant.landmarks.nested_chain[-1]
    assert cli("select", tid, small).returncode == 0
    held = cli("refresh", tid, "--json")
    assert held.returncode == 3, held.stdout  # a majority of the roster: held whatever the thresholds
    removing = cli("approve", tid, json.loads(held.stdout)["id"], "--json")
    assert removing.returncode == 0, removing.stdout
    removed = json.loads(removing.stdout)["counts"]["removed"]
    assert removed > 20

    undone = cli("undo", tid, "--json")  # no run id: the last run that removed users
    assert undone.returncode == 0, undone.stderr
    record = json.loads(undone.stdout)
    assert record["undoOf"] == json.loads(removing.stdout)["id"] and record["counts"]["restored"] == removed
    users = json.loads(cli("users", tid, "--json").stdout)["value"]
    assert {u["id"] for u in users} == set(expected_roster(own_tenant, None))
    again = cli("undo", tid)
    assert again.returncode == 2 and "nothing to undo" in again.stderr

    back = cli("tenant", "add", tid, "--name", "T", "--guard-percent", "default", "--json")
    assert json.loads(back.stdout)["guardPercent"] is None and json.loads(back.stdout)["guardMinUsers"] == 0
