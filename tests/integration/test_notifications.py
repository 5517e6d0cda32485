"""Within a minute: Graph's change notifications, delivered by the demo tenant over HTTP to the app's
webhook in the dev host, coalesce into incremental refreshes; the roster change feed shows them.
The demo validates the webhook, posts notifications with the subscription's clientState, retries,
duplicates and reorders on request, and sends lifecycle events, as docs/graph-contract.md says."""

from __future__ import annotations

import asyncio
import socket
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import msgspec
import pytest
from aiohttp import web

from devtools.azurite import Azurite
from devtools.demo_tenant import DemoGraphServer
from devtools.demo_tenant import Tenant as DemoTenant
from devtools.host import DevHost
from shared.settings import reset_settings_cache
from shared.storage import SUBSCRIPTIONS_TABLE, table_client
from tests.oracle import expected_roster

DEBOUNCE = 1.0  # seconds: the window that coalesces a tenant's notifications (20 by default)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class Stack:
    """The app in the dev host, its demo tenant, and a signed-in operator's HTTP session."""

    def __init__(
        self, host: DevHost, graph: DemoGraphServer, tenant: DemoTenant, http: aiohttp.ClientSession
    ):
        self.host, self.graph, self.tenant, self.http = host, graph, tenant, http

    @property
    def api(self) -> str:
        return f"{self.host.base_url}/api/tenants/{self.tenant.tenant_id}"

    async def call(self, method: str, path: str, body: Any = None, **kw: Any) -> tuple[int, Any]:
        headers = {"Content-Type": "application/json", "Origin": self.host.base_url}
        async with self.http.request(
            method, f"{self.api}{path}", json=body, headers=headers, **kw
        ) as response:
            text = await response.text()
            return response.status, (msgspec.json.decode(text) if text else None)

    async def wait_run(self, run_id: str, timeout: float = 60) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            code, run = await self.call("GET", f"/runs/{run_id}")
            assert code == 200, run
            if run["status"] not in ("queued", "running"):
                return run
            assert time.monotonic() < deadline, f"run {run_id} did not finish: {run['status']}"
            await asyncio.sleep(0.2)

    async def roster_ids(self) -> set[str]:
        code, page = await self.call("GET", "/users", params={"limit": "500"})
        assert code == 200 and not page["nextCursor"]
        return {user["id"] for user in page["value"]}

    async def tenant_view(self) -> dict:
        async with self.http.get(f"{self.host.base_url}/api/tenants") as response:
            return next(t for t in (await response.json())["value"] if t["id"] == self.tenant.tenant_id)

    async def runs(self) -> list[dict]:
        code, page = await self.call("GET", "/runs", params={"limit": "100"})
        assert code == 200
        return page["value"]


@pytest.fixture
async def stack(
    azurite: Azurite,
    own_tenant: DemoTenant,
    own_graph: DemoGraphServer,
    unique_queue: str,
    monkeypatch: pytest.MonkeyPatch,
) -> AsyncIterator[Stack]:
    """The dev host on a known port (the webhook's URL must be known to subscribe), signed in as operator."""
    port = free_port()
    settings = {
        "SYNC_STORAGE": azurite.connection_string,
        "AzureWebJobsStorage": azurite.connection_string,
        "SYNC_QUEUE": unique_queue,
        "NOTIFY_QUEUE": f"{unique_queue}-notify",
        "SYNC_SCHEDULE": "0 0 2 * * *",
        "NOTIFY_RENEW_SCHEDULE": "0 30 */6 * * *",
        "GRAPH_AUTH": "demo",
        "GRAPH_BASE_URL": own_graph.base_url,
        "APP_BASE_URL": f"http://127.0.0.1:{port}",
        "NOTIFY_DEBOUNCE_SECONDS": str(DEBOUNCE),
    }
    for name, value in settings.items():
        monkeypatch.setenv(name, value)
    monkeypatch.chdir(azurite.location or ".")
    reset_settings_cache()
    host = DevHost(port=port, settings=settings, local_settings=None, max_polling_interval=0.2)
    await host.start()
    try:
        async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as http:
            async with http.post(f"{host.base_url}/.auth/login/dev", json={"identity": "operator"}) as signed:
                assert signed.status == 200, await signed.text()
            yield Stack(host, own_graph, own_tenant, http)
    finally:
        await host.stop()
        reset_settings_cache()


async def connected(stack: Stack, groups: list[str]) -> dict:
    """Register the tenant, save a selection and wait for its full refresh and then for the
    subscriptions it sets up (the page shows the tenant's notifyMode once they are)."""
    code, _ = await stack.call("PUT", "", {"displayName": stack.tenant.display_name})
    assert code == 200
    code, saved = await stack.call("PUT", "/selection", {"groupIds": groups})
    assert code == 200, saved
    run = await stack.wait_run(saved["run"]["id"])

    async def subscribed() -> bool:
        return (await stack.tenant_view()).get("notifyMode") is not None

    if run["status"] == "succeeded":
        await until(subscribed)
    return run


async def feed_end(stack: Stack) -> str | None:
    """Follow the change feed from its start to its end, as a new subscriber would."""
    cursor = None
    while True:
        params = {"limit": "500"} | ({"after": cursor} if cursor else {})
        code, feed = await stack.call("GET", "/changes", params=params)
        assert code == 200, feed
        if not feed["value"]:
            return cursor
        cursor = feed["next"]


async def until(condition: Any, timeout: float = 30, every: float = 0.2) -> float:
    """Wait for an async condition; returns the seconds it took."""
    started = time.monotonic()
    while not await condition():
        assert time.monotonic() - started < timeout, "the condition never held"
        await asyncio.sleep(every)
    return time.monotonic() - started


async def test_a_user_taken_out_of_a_group_leaves_the_roster_without_a_click(stack: Stack) -> None:
    group = stack.tenant.landmarks.big_group_id
    done = await connected(stack, [group])
    assert done["status"] == "succeeded"
    subscriptions = stack.graph.subscription_list(stack.tenant.tenant_id)
    assert sorted(s["resource"] for s in subscriptions) == ["/groups", "/users"]
    mine = await stack.tenant_view()
    assert mine["notifyMode"] == "realtime"
    cursor = await feed_end(stack)

    on_roster = await stack.roster_ids()
    leaver = next(uid for uid in sorted(stack.tenant.direct_member_ids(group)) if uid in on_roster)
    stack.tenant.remove_member(group, leaver)  # an admin in Microsoft 365; nobody clicks anything here

    async def gone() -> bool:
        return leaver not in await stack.roster_ids()

    seconds = await until(gone, timeout=45)
    assert seconds < 60
    code, feed = await stack.call("GET", "/changes", params={"after": cursor})
    assert code == 200 and [(c["kind"], c["userId"]) for c in feed["value"]] == [("removed", leaver)]
    refreshed = [r for r in await stack.runs() if r["reason"] == "notification"]
    assert refreshed and refreshed[0]["incremental"] is True and refreshed[0]["requestedBy"] == "graph"
    assert await stack.roster_ids() == set(expected_roster(stack.tenant, [group]))


async def test_the_validation_handshake_echoes_the_token(stack: Stack) -> None:
    async with stack.http.post(
        f"{stack.host.base_url}/api/notifications", params={"validationToken": "Validation: a token & more"}
    ) as response:
        assert response.status == 200 and response.content_type == "text/plain"
        assert await response.text() == "Validation: a token & more"


async def notify(stack: Stack, items: list[dict]) -> int:
    async with stack.http.post(f"{stack.host.base_url}/api/notifications", json={"value": items}) as response:
        return response.status


def notification(
    subscription_id: str, tenant_id: str, client_state: str | None, change: str = "updated"
) -> dict:
    return {
        "subscriptionId": subscription_id,
        "tenantId": tenant_id,
        "clientState": client_state,
        "changeType": change,
        "resource": f"Users/{uuid.uuid4()}",
        "resourceData": {"@odata.type": "#Microsoft.Graph.User", "id": str(uuid.uuid4())},
    }


async def stored_subscriptions(stack: Stack) -> list[dict]:
    from shared.settings import get_settings

    async with table_client(get_settings(), SUBSCRIPTIONS_TABLE) as table:
        query = table.query_entities("PartitionKey eq @pk", parameters={"pk": stack.tenant.tenant_id})
        return [dict(e) async for e in query if str(e["RowKey"]).startswith("sub:")]


async def test_a_wrong_or_missing_client_state_queues_nothing(stack: Stack) -> None:
    await connected(stack, [stack.tenant.landmarks.big_group_id])
    rows = await stored_subscriptions(stack)
    sub_id = rows[0]["RowKey"].removeprefix("sub:")
    before = len(await stack.runs())
    tid = stack.tenant.tenant_id
    for state in ("not-the-secret", None, ""):
        assert await notify(stack, [notification(sub_id, tid, state)]) == 202
    assert await notify(stack, [notification("no-such-subscription", tid, rows[0]["clientState"])]) == 202
    await asyncio.sleep(DEBOUNCE + 1.5)
    assert len(await stack.runs()) == before  # nothing was queued


async def test_a_storm_of_10000_notifications_makes_a_few_refreshes(stack: Stack) -> None:
    await connected(stack, [stack.tenant.landmarks.big_group_id])
    rows = await stored_subscriptions(stack)
    tid = stack.tenant.tenant_id
    before = len(await stack.runs())
    valid = [notification(row["RowKey"].removeprefix("sub:"), tid, row["clientState"]) for row in rows]
    started = time.monotonic()
    answers = await asyncio.gather(*(notify(stack, valid * 50) for _ in range(100)))  # 100 POSTs x 100
    assert set(answers) == {202} and time.monotonic() - started < 30

    async def settled() -> bool:
        runs = await stack.runs()
        return all(r["status"] not in ("queued", "running") for r in runs[: len(runs) - before])

    await asyncio.sleep(DEBOUNCE + 1)
    await until(settled, timeout=60)
    made = len(await stack.runs()) - before
    assert 1 <= made <= 3, made  # one per debounce window, not ten thousand


async def test_duplicated_and_reordered_notifications_end_in_the_right_roster(stack: Stack) -> None:
    group = stack.tenant.landmarks.big_group_id
    await connected(stack, [group])
    stack.graph.add_delivery_fault("duplicate", times=3)
    stack.graph.add_delivery_fault("reorder", times=3)
    members = [uid for uid in sorted(stack.tenant.direct_member_ids(group)) if uid in stack.tenant.users][:3]
    for uid in members:
        stack.tenant.remove_member(group, uid)
        await asyncio.sleep(0.3)

    async def settled() -> bool:
        return await stack.roster_ids() == set(expected_roster(stack.tenant, [group]))

    await until(settled, timeout=45)


async def test_lifecycle_events_renew_remake_and_refresh(stack: Stack) -> None:
    await connected(stack, [stack.tenant.landmarks.big_group_id])
    users = next(
        s for s in stack.graph.subscription_list(stack.tenant.tenant_id) if s["resource"] == "/users"
    )
    first_expiry = users["expirationDateTime"]
    stack.graph.send_lifecycle(users["id"], "reauthorizationRequired", pause_delivery=True)

    async def renewed() -> bool:
        now = next(s for s in stack.graph.subscription_list(stack.tenant.tenant_id) if s["id"] == users["id"])
        return not now.get("paused") and now["expirationDateTime"] != first_expiry

    await until(renewed)
    groups = next(
        s for s in stack.graph.subscription_list(stack.tenant.tenant_id) if s["resource"] == "/groups"
    )
    stack.graph.send_lifecycle(groups["id"], "subscriptionRemoved")

    async def remade() -> bool:
        now = [s for s in stack.graph.subscription_list(stack.tenant.tenant_id) if s["resource"] == "/groups"]
        return len(now) == 1 and now[0]["id"] != groups["id"]

    await until(remade)
    before = {r["id"] for r in await stack.runs()}
    stack.graph.send_lifecycle(users["id"], "missed")

    async def refreshed() -> bool:
        return any(r["reason"] == "notification" and r["id"] not in before for r in await stack.runs())

    await until(refreshed)


async def test_the_timer_renews_subscriptions_before_they_lapse(stack: Stack) -> None:
    await connected(stack, [stack.tenant.landmarks.big_group_id])
    from datetime import UTC, datetime, timedelta

    from shared.settings import get_settings

    async with table_client(get_settings(), SUBSCRIPTIONS_TABLE) as table:  # a subscription due soon
        row = next(r for r in await stored_subscriptions(stack) if r["resource"] == "/users")
        row["expiresAt"] = datetime.now(UTC) + timedelta(hours=1)
        await table.upsert_entity({k: v for k, v in row.items() if k != "Timestamp"})
    before = next(
        s for s in stack.graph.subscription_list(stack.tenant.tenant_id) if s["resource"] == "/users"
    )
    async with stack.http.post(
        f"{stack.host.base_url}/admin/functions/renew_subscriptions", json={"input": ""}
    ) as r:
        assert r.status in (200, 202), await r.text()

    async def renewed() -> bool:
        now = next(
            s for s in stack.graph.subscription_list(stack.tenant.tenant_id) if s["resource"] == "/users"
        )
        return now["expirationDateTime"] != before["expirationDateTime"]

    await until(renewed)


async def test_without_group_read_all_the_tenant_is_in_users_only_mode(stack: Stack) -> None:
    stack.graph.set_consent(
        stack.tenant.tenant_id, "granted", ["GroupMember.Read.All", "User.Read.All", "MailboxSettings.Read"]
    )
    done = await connected(stack, [stack.tenant.landmarks.big_group_id])
    assert done["status"] == "succeeded"  # nightly and Refresh Users Now still work
    mine = await stack.tenant_view()
    assert mine["notifyMode"] == "usersOnly" and "Group.Read.All" in mine["notifyDetail"]
    assert [s["resource"] for s in stack.graph.subscription_list(stack.tenant.tenant_id)] == ["/users"]


async def test_a_disconnected_tenant_loses_its_subscriptions(stack: Stack) -> None:
    await connected(stack, [stack.tenant.landmarks.big_group_id])
    assert stack.graph.subscription_list(stack.tenant.tenant_id)
    code, tenant = await stack.call("DELETE", "")
    assert code == 200 and tenant["enabled"] is False
    assert stack.graph.subscription_list(stack.tenant.tenant_id) == []
    assert await stored_subscriptions(stack) == []


async def test_roster_changes_are_published_to_event_grid(
    stack: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    received: list[tuple[str, list[dict]]] = []

    async def topic(request: web.Request) -> web.Response:
        received.append((request.content_type, await request.json()))
        return web.Response(status=200)

    app = web.Application()
    app.router.add_post("/api/events", topic)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    monkeypatch.setenv("EVENTS_TOPIC_ENDPOINT", f"http://127.0.0.1:{port}/api/events")
    reset_settings_cache()
    try:
        group = stack.tenant.landmarks.big_group_id
        await connected(stack, [group])
        events = [event for kind, batch in received for event in batch]
        assert received and {kind for kind, _ in received} == {"application/cloudevents-batch+json"}
        added = [e for e in events if e["type"] == "O365GroupsSync.Roster.Added"]
        assert {e["data"]["userId"] for e in added} == set(expected_roster(stack.tenant, [group]))
        sample = added[0]
        assert sample["specversion"] == "1.0" and sample["source"] == f"/tenants/{stack.tenant.tenant_id}"
        assert sample["subject"] == f"users/{sample['data']['userId']}"
    finally:
        await runner.cleanup()
