"""sync.directory through the real msgraph-sdk, over HTTP, against the demo tenant."""

from __future__ import annotations

import time

import pytest

from devtools.azurite import free_port
from devtools.demo_tenant import DemoGraphServer
from devtools.demo_tenant import Tenant as DemoTenant
from shared.graph import GraphClients, GraphHttpOptions
from shared.settings import load_settings
from sync.directory import (
    DirectoryReader,
    GraphAccessDenied,
    GraphUnavailable,
    GroupNotFound,
    InvalidCursor,
    cheaper_member_strategy,
)
from sync.models import GroupKind, MemberStrategy


@pytest.fixture
def contoso(demo_tenants: list[DemoTenant]) -> DemoTenant:
    return demo_tenants[0]


@pytest.fixture
async def reader(graph_clients: GraphClients, contoso: DemoTenant) -> DirectoryReader:
    return DirectoryReader(graph_clients.for_tenant(contoso.tenant_id))


async def test_group_over_999_members_is_read_to_the_last_page(
    reader: DirectoryReader, contoso: DemoTenant, graph: DemoGraphServer
) -> None:
    big = contoso.landmarks.big_group_id
    expected = set(contoso.transitive_user_ids(big))
    assert len(expected) > 999
    members = await reader.read_group_users([big])
    assert set(members.users) == expected
    assert members.members_per_group[big] == len(expected)
    pages = [r for r in graph.request_log() if "/transitiveMembers" in r.path and not r.in_batch]
    assert len(pages) == 2  # 999 + the rest: every page followed, no more


async def test_nested_groups_with_a_cycle_are_expanded_once(
    reader: DirectoryReader, contoso: DemoTenant
) -> None:
    cycle = list(contoso.landmarks.cycle_group_ids)
    members = await reader.read_group_users(cycle)
    expected = set().union(*(contoso.transitive_user_ids(g) for g in cycle))
    assert set(members.users) == expected
    for uid, groups in members.groups_of_user.items():
        assert groups == tuple(g for g in cycle if uid in contoso.transitive_user_ids(g))
    chain = contoso.landmarks.nested_chain
    top = await reader.read_group_users([chain[0]])
    deepest_users = set(contoso.transitive_user_ids(chain[-1]))
    assert deepest_users and deepest_users <= set(top.users)  # three levels down still counts


async def test_devices_contacts_and_service_principals_are_not_users(
    reader: DirectoryReader, contoso: DemoTenant
) -> None:
    mixed = contoso.landmarks.mixed_members_group_id
    all_members = contoso.transitive_member_ids(mixed)
    users = set(contoso.transitive_user_ids(mixed))
    assert len(all_members) > len(users)  # the group really holds other objects
    members = await reader.read_group_users([mixed])
    assert set(members.users) == users


async def test_user_attributes_the_rules_need_are_read(reader: DirectoryReader, contoso: DemoTenant) -> None:
    users = {u.id: u for u in await reader.list_all_users()}
    assert len(users) == len(contoso.users)
    lm = contoso.landmarks
    guest = users[next(iter(lm.guest_ids))]
    assert guest.user_type == "Guest" or "#EXT#" in guest.user_principal_name
    assert users[next(iter(lm.disabled_ids))].account_enabled is False
    assert users[next(iter(lm.unlicensed_ids))].licensed is False
    assert users[next(iter(lm.no_mail_ids))].mail is None
    shared = users[next(iter(lm.shared_mailbox_ids))]
    assert shared.account_enabled and shared.licensed  # only userPurpose reveals it
    suspended = users[next(iter(lm.suspended_license_ids))]
    assert suspended.sku_ids and suspended.licensed is False  # a licence, but no plan still works
    external = users[next(iter(lm.external_member_ids))]
    assert external.user_type == "Member" and "#EXT#" in external.user_principal_name
    assert all(u.missing_attributes == () for u in users.values())  # Graph returned everything asked for
    assert any(u.department for u in users.values()) and any(u.job_title for u in users.values())


async def test_429_with_retry_after_is_honoured_and_the_read_completes(
    reader: DirectoryReader, contoso: DemoTenant, graph: DemoGraphServer
) -> None:
    big = contoso.landmarks.big_group_id
    graph.add_fault(429, r"/groups/[^/]+/transitiveMembers", times=2, retry_after=1)
    started = time.monotonic()
    members = await reader.read_group_users([big])
    assert time.monotonic() - started >= 2.0  # waited Retry-After twice
    assert set(members.users) == set(contoso.transitive_user_ids(big))
    statuses = [r.status for r in graph.request_log() if "/transitiveMembers" in r.path]
    assert statuses[:2] == [429, 429] and statuses[2:] == [200, 200]


async def test_403_raises_access_denied_naming_the_permission(
    reader: DirectoryReader, contoso: DemoTenant, graph: DemoGraphServer
) -> None:
    graph.add_fault(403, r"/groups/[^/]+/transitiveMembers")
    with pytest.raises(GraphAccessDenied) as denied:
        await reader.read_group_users([contoso.landmarks.big_group_id])
    assert "GroupMember.Read.All" in str(denied.value)
    assert denied.value.status == 403


async def test_unknown_group_raises_group_not_found(reader: DirectoryReader) -> None:
    missing = "00000000-0000-4000-8000-000000000001"
    with pytest.raises(GroupNotFound) as not_found:
        await reader.read_group_users([missing])
    assert not_found.value.group_id == missing


async def test_a_page_failing_mid_paging_fails_the_whole_read(
    reader: DirectoryReader, contoso: DemoTenant, graph: DemoGraphServer
) -> None:
    # The first page answers, the second keeps failing: no partial membership may come back.
    graph.add_fault(503, r"/groups/[^/]+/transitiveMembers", after=1, retry_after=1)
    with pytest.raises(GraphUnavailable):
        await reader.read_group_users([contoso.landmarks.big_group_id])


async def test_member_counts_for_45_groups_take_3_batch_requests(
    reader: DirectoryReader, contoso: DemoTenant, graph: DemoGraphServer
) -> None:
    ids = list(contoso.groups)[:45]
    counts = await reader.count_group_users(ids)
    assert counts == {gid: len(contoso.transitive_user_ids(gid)) for gid in ids}
    assert graph.request_counts(in_batch=False).get("batch") == 3


async def test_group_list_pages_searches_and_classifies(
    reader: DirectoryReader, contoso: DemoTenant, graph: DemoGraphServer
) -> None:
    first = await reader.list_groups(page_size=25)
    assert len(first.value) == 25 and first.next_cursor
    seen = [g.id for g in first.value]
    cursor = first.next_cursor
    while cursor:
        page = await reader.list_groups(cursor=cursor, page_size=25)
        seen += [g.id for g in page.value]
        cursor = page.next_cursor
    assert sorted(seen) == sorted(contoso.groups)
    kinds = {g.kind for g in first.value}
    assert kinds  # kinds come from groupTypes / mailEnabled / securityEnabled
    every = {g.id: g for g in (await reader.get_groups(list(contoso.groups))).values() if g}
    assert {g.kind for g in every.values()} == set(GroupKind)
    found = await reader.list_groups(search="Sales")
    assert found.value and all("sales" in g.display_name.lower() for g in found.value)
    assert all(g.member_count is not None for g in found.value)


async def test_a_forged_cursor_is_refused(reader: DirectoryReader) -> None:
    with pytest.raises(InvalidCursor):
        await reader.list_groups(cursor="aHR0cHM6Ly9ldmlsLmV4YW1wbGUvdXNlcnM")


async def test_get_groups_maps_missing_and_malformed_ids_to_none(
    reader: DirectoryReader, contoso: DemoTenant
) -> None:
    real = next(iter(contoso.groups))
    found = await reader.get_groups([real, "00000000-0000-4000-8000-000000000002", "not-a-guid"])
    assert found[real] is not None and found[real].id == real
    assert found["00000000-0000-4000-8000-000000000002"] is None and found["not-a-guid"] is None


async def test_mailbox_purposes_and_the_fallback_when_permission_is_missing(
    reader: DirectoryReader, contoso: DemoTenant, graph: DemoGraphServer
) -> None:
    lm = contoso.landmarks
    ids = [next(iter(lm.shared_mailbox_ids)), next(iter(lm.room_ids)), next(iter(lm.equipment_ids))]
    person = next(uid for uid in contoso.users if uid not in lm.ineligible_ids)
    read = await reader.read_mailbox_purposes([*ids, person])
    assert read is not None and read.unknown == frozenset()
    assert read.purposes == {ids[0]: "shared", ids[1]: "room", ids[2]: "equipment", person: "user"}
    # An Exchange application access policy hides one mailbox: that user's purpose alone is unknown.
    graph.set_mailbox_access_denied(contoso.tenant_id, [ids[0]])
    partly = await reader.read_mailbox_purposes([*ids, person])
    assert partly is not None and partly.unknown == {ids[0]} and ids[0] not in partly.purposes
    assert partly.purposes[ids[1]] == "room"
    # Every look-up refused: the permission is missing, the caller falls back to the heuristic.
    graph.add_fault(403, r"/users/[^/]+/mailboxSettings")
    assert await reader.read_mailbox_purposes(ids) is None


async def test_other_tenant_token_sees_its_own_directory(
    graph_clients: GraphClients, demo_tenants: list[DemoTenant]
) -> None:
    fabrikam = demo_tenants[1]
    users = await DirectoryReader(graph_clients.for_tenant(fabrikam.tenant_id)).list_all_users()
    assert {u.id for u in users} == set(fabrikam.users)


@pytest.mark.parametrize(
    ("counts", "tenant_users", "expected"),
    [
        ([50] * 60, 2_000, MemberStrategy.ALL_USERS),  # many small groups: 60 requests vs 2 + 3
        ([1_500, 40], 2_000, MemberStrategy.PER_GROUP),  # two groups: 3 requests vs 2 + 1
        ([1_200] * 50, 100_000, MemberStrategy.PER_GROUP),  # a user chain of 101 pages is too long
        ([0], 10, MemberStrategy.PER_GROUP),
    ],
)
def test_the_cheaper_member_read_is_chosen_from_counts(
    counts: list[int], tenant_users: int, expected: MemberStrategy
) -> None:
    assert cheaper_member_strategy(counts, tenant_users) is expected


async def test_all_users_plus_member_ids_reads_the_same_members_with_fewer_requests(
    reader: DirectoryReader, contoso: DemoTenant, graph: DemoGraphServer
) -> None:
    groups = sorted(contoso.groups)
    graph.reset_log()
    per_group = await reader.read_group_users(groups)
    per_group_requests = sum(graph.request_counts(in_batch=False).values())
    graph.reset_log()
    via_all_users = await reader.read_group_users_via_all_users(groups)
    all_users_requests = sum(graph.request_counts(in_batch=False).values())
    assert via_all_users.users == per_group.users
    assert via_all_users.groups_of_user == per_group.groups_of_user
    assert via_all_users.members_per_group == per_group.members_per_group
    assert all_users_requests < per_group_requests / 4
    assert await reader.count_tenant_users() == len(contoso.users)


async def test_a_throttled_batch_request_is_retried_after_retry_after(
    reader: DirectoryReader, contoso: DemoTenant, graph: DemoGraphServer
) -> None:
    """`$batch` POSTs skip the Kiota adapter but not the SDK's RetryHandler: a whole-batch 429 waits."""
    graph.add_fault(429, r"^/\$batch$", method="POST", times=1, retry_after=1, in_batch=False)
    ids = list(contoso.groups)[:5]
    started = time.monotonic()
    counts = await reader.count_group_users(ids)
    assert time.monotonic() - started >= 1.0
    assert counts == {gid: len(contoso.transitive_user_ids(gid)) for gid in ids}
    assert [r.status for r in graph.request_log(kind="batch")] == [429, 200]


async def test_a_failed_batch_request_raises_the_adapters_typed_error(
    reader: DirectoryReader, contoso: DemoTenant, graph: DemoGraphServer
) -> None:
    graph.add_fault(403, r"^/\$batch$", method="POST", in_batch=False)
    with pytest.raises(GraphAccessDenied) as denied:
        await reader.count_group_users(list(contoso.groups)[:3])
    assert denied.value.status == 403 and "GroupMember.Read.All" in str(denied.value)


async def test_graph_timeouts_and_refused_connections_are_unavailable(
    graph: DemoGraphServer, contoso: DemoTenant
) -> None:
    """The aiohttp pool under httpx raises what httpcore raised: the same typed errors and words."""
    graph.add_fault(200, r"/groups/[^/]+/transitiveMembers", delay=3.0)
    slow = GraphClients(
        load_settings(
            {
                "SYNC_STORAGE": "UseDevelopmentStorage=true",
                "GRAPH_AUTH": "demo",
                "GRAPH_BASE_URL": graph.base_url,
            },
            local_settings=None,
        ),
        GraphHttpOptions(retry_delay_seconds=0.0, max_retries=0, request_timeout_seconds=0.5),
    )
    try:
        with pytest.raises(GraphUnavailable, match="timed out"):
            await DirectoryReader(slow.for_tenant(contoso.tenant_id)).read_group_users(
                [contoso.landmarks.big_group_id]
            )
    finally:
        await slow.aclose()
    nobody = f"http://127.0.0.1:{free_port()}/v1.0"
    refused = GraphClients(
        load_settings(
            {
                "SYNC_STORAGE": "UseDevelopmentStorage=true",
                "GRAPH_AUTH": "demo",
                "GRAPH_BASE_URL": nobody,
                "GRAPH_AUTHORITY_HOST": graph.root_url,
            },
            local_settings=None,
        ),
        GraphHttpOptions(retry_delay_seconds=0.0, max_retries=0),
    )
    try:
        with pytest.raises(GraphUnavailable, match=r"connection failed \(ConnectError\)"):
            await DirectoryReader(refused.for_tenant(contoso.tenant_id)).count_tenant_users()
    finally:
        await refused.aclose()


async def test_graph_calls_stay_httpx_dependencies_for_telemetry(
    reader: DirectoryReader, contoso: DemoTenant
) -> None:
    """OpenTelemetry's httpx instrumentation (AppDependencies) still sees every Graph request."""
    from opentelemetry.instrumentation.httpx import HTTPXClientInstrumentor
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    instrumentor = HTTPXClientInstrumentor()
    instrumentor.instrument(tracer_provider=provider)
    try:
        await reader.count_tenant_users()
        await reader.count_group_users(list(contoso.groups)[:2])
    finally:
        instrumentor.uninstrument()
    urls = [
        str(span.attributes.get("url.full") or span.attributes.get("http.url"))
        for span in exporter.get_finished_spans()
    ]
    assert any(url.endswith("/users/$count") for url in urls) and any(url.endswith("/$batch") for url in urls)
