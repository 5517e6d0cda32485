"""The demo tenant's change notifications on the wire: /subscriptions with the validation handshake,
renewal, expiry and deletion, notifications for membership and user changes, lifecycle notifications,
retries and the delivery faults. Each behaviour's Microsoft page is listed in docs/graph-contract.md.

The subscriber is an aiohttp app on 127.0.0.1 inside the test; the demo server runs in a background
thread, so both sides talk real HTTP.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import httpx
import pytest
from aiohttp import web

from devtools.demo_tenant import DEFAULT_PERMISSIONS, DemoGraphServer, Tenant, build_demo_tenants
from devtools.demo_tenant.subscriptions import MAX_PER_APP_AND_TENANT

if TYPE_CHECKING:
    from shared.graph import GraphClients

SUBSCRIBER_PERMISSIONS = (*DEFAULT_PERMISSIONS, "Group.Read.All")
WAIT = 5.0  # seconds a notification may take to arrive (two shared cores)


def in_minutes(minutes: float) -> str:
    return (datetime.now(UTC) + timedelta(minutes=minutes)).isoformat()


@dataclass
class Receiver:
    """A webhook endpoint: answers validation requests as told and queues what it is sent."""

    base: str = ""
    validation: str = "echo"  # echo, accepted (202, no body), wrong (200, another text), json, slow
    answers: list[int | float] = field(default_factory=list)  # per POST: a status, or seconds to hang
    validations: list[dict[str, Any]] = field(default_factory=list)
    received: dict[str, asyncio.Queue[dict[str, Any]]] = field(default_factory=dict)
    posts: int = 0

    def url(self, path: str = "notify") -> str:
        return f"{self.base}/{path}"

    def queue(self, path: str) -> asyncio.Queue[dict[str, Any]]:
        return self.received.setdefault(path, asyncio.Queue())

    async def handle(self, request: web.Request) -> web.StreamResponse:
        path = request.match_info["path"]
        token = request.query.get("validationToken")
        if token is not None:
            self.validations.append(
                {
                    "path": path,
                    "token": token,
                    "method": request.method,
                    "contentType": request.headers.get("Content-Type", ""),
                }
            )
            if self.validation == "accepted":
                return web.Response(status=202)
            if self.validation == "wrong":
                return web.Response(text="not the token", content_type="text/plain")
            if self.validation == "json":
                return web.json_response(token)
            if self.validation == "slow":
                await asyncio.sleep(1.0)
            return web.Response(text=token, content_type="text/plain")
        body = await request.json()
        self.posts += 1
        answer = self.answers.pop(0) if self.answers else 202
        await self.queue(path).put(body)
        if isinstance(answer, float):
            await asyncio.sleep(answer)
            return web.Response(status=202)
        return web.Response(status=answer)

    async def next(self, path: str = "notify") -> dict[str, Any]:
        return await asyncio.wait_for(self.queue(path).get(), WAIT)

    async def quiet(self, path: str = "notify", seconds: float = 0.6) -> None:
        await asyncio.sleep(seconds)
        assert self.queue(path).empty(), self.queue(path).get_nowait()


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    endpoint = Receiver()
    app = web.Application()
    app.router.add_post("/{path}", endpoint.handle)
    runner = web.AppRunner(app, shutdown_timeout=0.5)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    endpoint.base = f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}"  # type: ignore[union-attr]
    yield endpoint
    await runner.cleanup()


@pytest.fixture
def server() -> Iterator[DemoGraphServer]:
    """A fresh server over small demo tenants whose consent includes Group.Read.All."""
    with DemoGraphServer(build_demo_tenants(users=300, groups=25), prewarm=False) as running:
        for tenant_id in running.tenants():
            running.set_consent(tenant_id, "granted", SUBSCRIBER_PERMISSIONS)
        yield running


@pytest.fixture
def contoso(server: DemoGraphServer) -> Tenant:
    return next(tenant for tenant in server.tenants().values() if tenant.display_name == "Contoso")


@pytest.fixture
async def graph(server: DemoGraphServer, contoso: Tenant) -> AsyncIterator[httpx.AsyncClient]:
    headers = {"Authorization": f"Bearer {server.token_for(contoso.tenant_id)}"}
    async with httpx.AsyncClient(base_url=server.base_url, headers=headers, timeout=30) as client:
        yield client


@pytest.fixture
async def control(server: DemoGraphServer) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=server.root_url, timeout=30) as client:
        yield client


async def subscribe(
    graph: httpx.AsyncClient, receiver: Receiver, resource: str = "/groups", **extra: Any
) -> dict[str, Any]:
    body = {
        "changeType": "updated,deleted",
        "notificationUrl": receiver.url(),
        "resource": resource,
        "expirationDateTime": in_minutes(60),
        "clientState": "secret-client-state",
        **extra,
    }
    response = await graph.post("/subscriptions", json=body)
    assert response.status_code == 201, response.text
    return dict(response.json())


def assert_error(response: httpx.Response, status: int, code: str, says: str = "") -> None:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["code"] == code and says in error["message"], error


def newcomers(tenant: Tenant, count: int) -> tuple[str, list[str]]:
    """A Microsoft 365 group and `count` users not yet in it."""
    group_id = next(g.id for g in tenant.groups.values() if g.kind == "microsoft365")
    members = set(tenant.direct_member_ids(group_id))
    return group_id, [uid for uid in tenant.users if uid not in members][:count]


def a_member_and_a_group(tenant: Tenant) -> tuple[str, str]:
    """A Microsoft 365 group and a user not yet in it."""
    group_id, (user_id,) = newcomers(tenant, 1)
    return group_id, user_id


# ------------------------------------------------------------------------------- handshake


@pytest.mark.asyncio
async def test_validation_handshake_echoes_the_decoded_token_then_201(
    graph: httpx.AsyncClient, receiver: Receiver, server: DemoGraphServer, contoso: Tenant
) -> None:
    created = await subscribe(graph, receiver, "/users", lifecycleNotificationUrl=receiver.url("lifecycle"))
    assert [v["path"] for v in receiver.validations] == ["notify", "lifecycle"]
    for validation in receiver.validations:
        assert validation["method"] == "POST" and validation["contentType"].startswith("text/plain")
        assert " " in validation["token"]  # opaque, and only readable once URL-decoded
    assert created["@odata.context"].endswith("/$metadata#subscriptions/$entity")
    assert set(created) - {"@odata.context"} == {
        "id",
        "resource",
        "applicationId",
        "changeType",
        "clientState",
        "notificationUrl",
        "notificationQueryOptions",
        "lifecycleNotificationUrl",
        "expirationDateTime",
        "creatorId",
        "includeResourceData",
        "latestSupportedTlsVersion",
        "encryptionCertificate",
        "encryptionCertificateId",
        "notificationUrlAppId",
    }
    assert created["clientState"] == "secret-client-state" and created["resource"] == "/users"
    assert created["applicationId"] == "demo-client" and created["expirationDateTime"].endswith("Z")
    assert [s["id"] for s in server.subscription_list(contoso.tenant_id)] == [created["id"]]


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("answer", "code", "says"),
    [
        ("accepted", "ValidationError", "must respond with 200 OK"),
        ("wrong", "ValidationError", "must exactly match validationToken"),
        ("json", "ValidationError", "must exactly match validationToken"),
        ("slow", "InvalidRequest", "timed out"),
    ],
)
async def test_an_endpoint_that_does_not_echo_the_token_gets_no_subscription(
    graph: httpx.AsyncClient, receiver: Receiver, server: DemoGraphServer, answer: str, code: str, says: str
) -> None:
    receiver.validation = answer
    server.set_delivery_policy(validation_timeout=0.3)
    body = {
        "changeType": "updated",
        "notificationUrl": receiver.url(),
        "resource": "/users",
        "expirationDateTime": in_minutes(60),
    }
    assert_error(await graph.post("/subscriptions", json=body), 400, code, says)
    assert server.subscription_list() == []


@pytest.mark.asyncio
async def test_create_refuses_what_graph_refuses(
    graph: httpx.AsyncClient, receiver: Receiver, server: DemoGraphServer
) -> None:
    good = {
        "changeType": "updated",
        "notificationUrl": receiver.url(),
        "resource": "/users",
        "expirationDateTime": in_minutes(60),
    }

    async def refused(status: int, code: str, says: str = "", **changes: Any) -> None:
        body = {key: value for key, value in {**good, **changes}.items() if value is not None}
        assert_error(await graph.post("/subscriptions", json=body), status, code, says)

    await refused(400, "ExtensionError", "41760 minutes", expirationDateTime=in_minutes(41_761))
    await refused(400, "ExtensionError", "future", expirationDateTime=in_minutes(-1))
    await refused(400, "InvalidRequest", "expirationDateTime is a required", expirationDateTime=None)
    await refused(400, "ExtensionError", "128", clientState="x" * 129)
    await refused(400, "ExtensionError", "changeType", changeType="updated,renamed")
    await refused(400, "ExtensionError", "Unsupported resource", resource="/devices")
    await refused(400, "ExtensionError", "resource data", includeResourceData=True)
    await refused(400, "InvalidRequest", "camelCased", notificationURL=receiver.url())
    await refused(400, "ExtensionError", "HTTPS", notificationUrl="http://webhook.example.com/notify")
    server.set_allow_http_notification_urls(False)  # as strict as Graph: https only
    await refused(400, "ExtensionError", "HTTPS")
    assert receiver.validations == [] and server.subscription_list() == []
    server.set_allow_http_notification_urls(True)
    longest = await graph.post(
        "/subscriptions", json={**good, "expirationDateTime": in_minutes(41_759), "clientState": "x" * 128}
    )
    assert longest.status_code == 201, longest.text


@pytest.mark.asyncio
async def test_subscriptions_need_the_resources_read_permission(
    receiver: Receiver, server: DemoGraphServer, contoso: Tenant
) -> None:
    tokens = {
        "product": server.token_for(
            contoso.tenant_id, [p for p in DEFAULT_PERMISSIONS if p != "Group.Read.All"]
        ),
        "groupsOnly": server.token_for(contoso.tenant_id, ["Group.Read.All"]),
    }
    answers = {}
    async with httpx.AsyncClient(base_url=server.base_url, timeout=30) as client:
        for name, token in tokens.items():
            for resource in ("/users", "/groups"):
                body = {
                    "changeType": "updated",
                    "notificationUrl": receiver.url(),
                    "resource": resource,
                    "expirationDateTime": in_minutes(60),
                }
                response = await client.post(
                    "/subscriptions", json=body, headers={"Authorization": f"Bearer {token}"}
                )
                answers[name, resource] = response.status_code
                if response.status_code == 403:
                    assert response.json()["error"]["code"] == "ExtensionError"
    # GroupMember.Read.All is not enough for /groups: "Create subscription" names Group.Read.All
    # (the product asks for it only when group change notifications are opted into).
    assert answers == {
        ("product", "/users"): 201,
        ("product", "/groups"): 403,
        ("groupsOnly", "/users"): 403,
        ("groupsOnly", "/groups"): 201,
    }


# ------------------------------------------------------------------- list, renew, delete


@pytest.mark.asyncio
async def test_list_get_renew_delete_are_scoped_to_the_app_and_tenant(
    graph: httpx.AsyncClient, receiver: Receiver, server: DemoGraphServer, contoso: Tenant
) -> None:
    first = await subscribe(graph, receiver, "/groups")
    second = await subscribe(graph, receiver, "/users")
    listed = (await graph.get("/subscriptions")).json()
    assert listed["@odata.context"].endswith("/$metadata#subscriptions")
    assert {s["id"] for s in listed["value"]} == {first["id"], second["id"]}
    assert all(s["clientState"] is None for s in listed["value"])  # never listed
    got = (await graph.get(f"/subscriptions/{first['id']}")).json()
    assert got["clientState"] == "secret-client-state"

    renewed_to = datetime.now(UTC) + timedelta(minutes=41_000)
    renewed = await graph.patch(
        f"/subscriptions/{first['id']}", json={"expirationDateTime": renewed_to.isoformat()}
    )
    assert renewed.status_code == 200, renewed.text
    assert abs(datetime.fromisoformat(renewed.json()["expirationDateTime"]) - renewed_to) < timedelta(
        seconds=1
    )
    assert_error(
        await graph.patch(f"/subscriptions/{first['id']}", json={"expirationDateTime": in_minutes(41_761)}),
        400,
        "ExtensionError",
        "41760 minutes",
    )
    assert_error(
        await graph.patch(f"/subscriptions/{first['id']}", json={"lifecycleNotificationUrl": receiver.url()}),
        400,
        "ExtensionError",
    )

    fabrikam = next(t for t in server.tenants().values() if t.display_name == "Fabrikam")
    others = {
        "another app": server.token_for(contoso.tenant_id, app_id="another-app"),
        "another tenant": server.token_for(fabrikam.tenant_id),
    }
    for token in others.values():
        headers = {"Authorization": f"Bearer {token}"}
        assert (await graph.get("/subscriptions", headers=headers)).json()["value"] == []
        assert_error(await graph.get(f"/subscriptions/{first['id']}", headers=headers), 404, "ExtensionError")
        assert_error(
            await graph.delete(f"/subscriptions/{first['id']}", headers=headers), 404, "ExtensionError"
        )

    deleted = await graph.delete(f"/subscriptions/{first['id']}")
    assert deleted.status_code == 204 and deleted.content == b""
    assert_error(await graph.get(f"/subscriptions/{first['id']}"), 404, "ExtensionError", "not found")
    assert_error(await graph.delete(f"/subscriptions/{first['id']}"), 404, "ExtensionError")
    assert [s["id"] for s in (await graph.get("/subscriptions")).json()["value"]] == [second["id"]]


@pytest.mark.asyncio
async def test_an_app_has_at_most_100_subscriptions_in_a_tenant(
    graph: httpx.AsyncClient, receiver: Receiver
) -> None:
    for _ in range(MAX_PER_APP_AND_TENANT):
        await subscribe(graph, receiver, "/users")
    body = {
        "changeType": "updated",
        "notificationUrl": receiver.url(),
        "resource": "/users",
        "expirationDateTime": in_minutes(60),
    }
    assert_error(await graph.post("/subscriptions", json=body), 403, "ExtensionError", "limit")


# ---------------------------------------------------------------------------- delivery


@pytest.mark.asyncio
async def test_a_membership_change_notifies_group_subscriptions_with_their_client_state(
    graph: httpx.AsyncClient, control: httpx.AsyncClient, receiver: Receiver, contoso: Tenant
) -> None:
    group_id, user_id = a_member_and_a_group(contoso)
    other_group = next(g for g in contoso.groups if g != group_id)
    all_groups = await subscribe(graph, receiver, "/groups")
    one_group = await subscribe(
        graph,
        receiver,
        f"/groups/{group_id}/members",
        notificationUrl=receiver.url("members"),
        clientState="m",
    )
    added = await control.post(
        f"/_demo/tenants/{contoso.tenant_id}/groups/{group_id}/members", json={"id": user_id}
    )
    assert added.status_code == 200, added.text
    collection = await receiver.next()
    assert list(collection) == ["value"] and len(collection["value"]) == 1
    notification = collection["value"][0]
    assert notification == {
        "subscriptionId": all_groups["id"],
        "subscriptionExpirationDateTime": all_groups["expirationDateTime"],
        "changeType": "updated",
        "resource": f"Groups/{group_id}",
        "resourceData": {
            "@odata.type": "#Microsoft.Graph.Group",
            "@odata.id": f"Groups/{group_id}",
            "id": group_id,
            "members@delta": [{"id": user_id}],
        },
        "clientState": "secret-client-state",
        "tenantId": contoso.tenant_id,
    }
    members_only = (await receiver.next("members"))["value"][0]
    assert members_only["subscriptionId"] == one_group["id"] and members_only["clientState"] == "m"

    removed = await control.delete(f"/_demo/tenants/{contoso.tenant_id}/groups/{group_id}/members/{user_id}")
    assert removed.status_code == 200
    gone = (await receiver.next())["value"][0]
    assert gone["resourceData"]["members@delta"] == [{"id": user_id, "@removed": "deleted"}]
    assert (await receiver.next("members"))["value"][0]["resourceData"]["members@delta"][0]["@removed"]

    contoso.update_group(other_group, display_name="Renamed through the Python API")
    renamed = (await receiver.next())["value"][0]
    assert renamed["resource"] == f"Groups/{other_group}" and "members@delta" not in renamed["resourceData"]
    await receiver.quiet("members")  # another group's change is not this subscription's


@pytest.mark.asyncio
async def test_user_changes_notify_user_subscriptions_updated_then_deleted(
    graph: httpx.AsyncClient, control: httpx.AsyncClient, receiver: Receiver, contoso: Tenant
) -> None:
    user_id = next(iter(contoso.users))
    everything = await subscribe(graph, receiver, "/users")
    updates_only = await subscribe(
        graph, receiver, f"/users/{user_id}", changeType="updated", clientState="u"
    )
    patched = await control.patch(
        f"/_demo/tenants/{contoso.tenant_id}/users/{user_id}", json={"accountEnabled": False}
    )
    assert patched.status_code == 200, patched.text
    seen = [(await receiver.next())["value"][0] for _ in range(2)]
    by_subscription = {n["subscriptionId"]: n for n in seen}
    assert set(by_subscription) == {everything["id"], updates_only["id"]}
    notification = by_subscription[everything["id"]]
    assert notification["changeType"] == "updated" and notification["resource"] == f"Users/{user_id}"
    assert notification["resourceData"] == {
        "@odata.type": "#Microsoft.Graph.User",
        "@odata.id": f"Users/{user_id}",
        "id": user_id,
    }
    assert (
        notification["clientState"] == "secret-client-state"
        and by_subscription[updates_only["id"]]["clientState"] == "u"
    )

    # Deleting is a soft delete: `updated`; purging it from the deleted items is `deleted`.
    assert (await control.delete(f"/_demo/tenants/{contoso.tenant_id}/users/{user_id}")).status_code == 200
    soft = [(await receiver.next())["value"][0] for _ in range(2)]
    assert {n["changeType"] for n in soft} == {"updated"}
    purged = await control.delete(f"/_demo/tenants/{contoso.tenant_id}/deleted-items/{user_id}")
    assert purged.status_code == 200
    hard = (await receiver.next())["value"][0]
    assert hard["changeType"] == "deleted" and hard["subscriptionId"] == everything["id"]
    await receiver.quiet()  # the updated-only subscription hears nothing of it


@pytest.mark.asyncio
async def test_changes_made_together_arrive_in_one_post_per_subscription(
    graph: httpx.AsyncClient, receiver: Receiver, server: DemoGraphServer, contoso: Tenant
) -> None:
    group_id, joining = newcomers(contoso, 5)
    await subscribe(graph, receiver, "/groups")
    server.set_delivery_policy(batch_window=0.3)
    for user_id in joining:
        server.add_member(contoso.tenant_id, group_id, user_id)
    collection = await receiver.next()
    assert [n["resourceData"]["members@delta"][0]["id"] for n in collection["value"]] == joining
    await receiver.quiet()


@pytest.mark.asyncio
async def test_expired_or_deleted_subscriptions_stop_delivering(
    graph: httpx.AsyncClient, receiver: Receiver, server: DemoGraphServer, contoso: Tenant
) -> None:
    group_id, user_id = a_member_and_a_group(contoso)
    created = await subscribe(graph, receiver, "/groups")
    assert server.expire_subscription(created["id"])
    assert_error(await graph.get(f"/subscriptions/{created['id']}"), 404, "ExtensionError")
    server.add_member(contoso.tenant_id, group_id, user_id)
    await receiver.quiet()
    assert server.subscription_list() == [] and not server.expire_subscription(created["id"])


# --------------------------------------------------------------------------- lifecycle


@pytest.mark.asyncio
async def test_lifecycle_notifications_reach_the_lifecycle_url(
    graph: httpx.AsyncClient, receiver: Receiver, server: DemoGraphServer, contoso: Tenant
) -> None:
    group_id, user_id = a_member_and_a_group(contoso)
    created = await subscribe(graph, receiver, "/groups", lifecycleNotificationUrl=receiver.url("lifecycle"))
    server.send_lifecycle(created["id"], "reauthorizationRequired", pause_delivery=True)
    assert (await receiver.next("lifecycle")) == {
        "value": [
            {
                "subscriptionId": created["id"],
                "subscriptionExpirationDateTime": created["expirationDateTime"],
                "tenantId": contoso.tenant_id,
                "clientState": "secret-client-state",
                "lifecycleEvent": "reauthorizationRequired",
            }
        ]
    }
    server.add_member(contoso.tenant_id, group_id, user_id)
    await receiver.quiet()  # paused until reauthorized: that change is lost
    assert (await graph.post(f"/subscriptions/{created['id']}/reauthorize")).status_code == 204
    contoso.remove_member(group_id, user_id)
    assert (await receiver.next())["value"][0]["resourceData"]["members@delta"][0]["@removed"] == "deleted"

    server.send_lifecycle(created["id"], "missed")
    assert (await receiver.next("lifecycle"))["value"][0]["lifecycleEvent"] == "missed"
    server.send_lifecycle(created["id"], "subscriptionRemoved")
    assert (await receiver.next("lifecycle"))["value"][0]["lifecycleEvent"] == "subscriptionRemoved"
    assert_error(await graph.get(f"/subscriptions/{created['id']}"), 404, "ExtensionError")

    without = await subscribe(graph, receiver, "/users")
    with pytest.raises(ValueError, match="lifecycleNotificationUrl"):
        server.send_lifecycle(without["id"], "missed")
    with pytest.raises(KeyError):
        server.send_lifecycle(created["id"], "missed")


# ---------------------------------------------------------------- retries and faults


@pytest.mark.asyncio
async def test_a_failing_receiver_is_retried_until_it_answers_2xx_in_time(
    graph: httpx.AsyncClient, receiver: Receiver, server: DemoGraphServer, contoso: Tenant
) -> None:
    group_id, user_id = a_member_and_a_group(contoso)
    created = await subscribe(graph, receiver, "/groups")
    server.set_delivery_policy(retry_base=0.05, timeout=0.5)
    receiver.answers = [500, 429, 1.0, 202]  # two errors, one answer too late, then accepted
    server.add_member(contoso.tenant_id, group_id, user_id)
    bodies = [await receiver.next() for _ in range(4)]
    assert all(body == bodies[0] for body in bodies)  # at least once: the same collection again
    await receiver.quiet()
    attempts = [(r.attempt, r.status, r.outcome) for r in server.deliveries(created["id"], "notification")]
    assert attempts == [(1, 500, "failed"), (2, 429, "failed"), (3, None, "timeout"), (4, 202, "delivered")]


@pytest.mark.asyncio
async def test_delivery_faults_drop_duplicate_and_reorder_notifications(
    graph: httpx.AsyncClient, receiver: Receiver, server: DemoGraphServer, contoso: Tenant
) -> None:
    group_id, joining = newcomers(contoso, 4)
    created = await subscribe(graph, receiver, "/groups")

    def member_of(collection: dict[str, Any]) -> str:
        return str(collection["value"][0]["resourceData"]["members@delta"][0]["id"])

    server.add_delivery_fault("duplicate", times=1)
    server.add_member(contoso.tenant_id, group_id, joining[0])
    assert [member_of(await receiver.next()) for _ in range(2)] == [joining[0]] * 2

    server.add_delivery_fault("reorder", times=1, subscription_id=created["id"])
    server.add_member(contoso.tenant_id, group_id, joining[1])
    await asyncio.sleep(0.3)
    server.add_member(contoso.tenant_id, group_id, joining[2])
    assert [member_of(await receiver.next()) for _ in range(2)] == [joining[2], joining[1]]

    server.add_delivery_fault("drop", times=1)
    server.add_member(contoso.tenant_id, group_id, joining[3])
    await receiver.quiet()
    assert server.deliveries(created["id"])[-1].outcome == "dropped"
    assert [f["fired"] for f in server.delivery_faults()] == [1, 1, 1]


# --------------------------------------------------------------------- SDK and controls


@pytest.mark.asyncio
async def test_the_sdk_creates_renews_and_deletes_a_subscription(
    server: DemoGraphServer, receiver: Receiver, contoso: Tenant, sdk_clients: GraphClients
) -> None:
    from msgraph.generated.models.subscription import Subscription

    client = sdk_clients.for_tenant(contoso.tenant_id)
    created = await client.subscriptions.post(
        Subscription(
            change_type="updated,deleted",
            notification_url=receiver.url(),
            lifecycle_notification_url=receiver.url("lifecycle"),
            resource="/users",
            expiration_date_time=datetime.now(UTC) + timedelta(days=2),
            client_state="sdk-state",
        )
    )
    assert created is not None and created.id and created.client_state == "sdk-state"
    assert len(receiver.validations) == 2
    user_id = next(iter(contoso.users))
    contoso.update_user(user_id, job_title="Renamed")
    assert (await receiver.next())["value"][0]["clientState"] == "sdk-state"

    later = datetime.now(UTC) + timedelta(days=20)
    renewed = await client.subscriptions.by_subscription_id(created.id).patch(
        Subscription(expiration_date_time=later)
    )
    assert renewed is not None and renewed.expiration_date_time is not None
    assert abs(renewed.expiration_date_time - later) < timedelta(seconds=1)
    listed = await client.subscriptions.get()
    assert listed is not None and [s.id for s in listed.value or []] == [created.id]
    await client.subscriptions.by_subscription_id(created.id).delete()
    assert server.subscription_list() == []


@pytest.mark.asyncio
async def test_control_routes_list_expire_and_drive_lifecycle_and_faults(
    graph: httpx.AsyncClient,
    control: httpx.AsyncClient,
    receiver: Receiver,
    server: DemoGraphServer,
    contoso: Tenant,
) -> None:
    created = await subscribe(graph, receiver, "/groups", lifecycleNotificationUrl=receiver.url("lifecycle"))
    listed = (await control.get("/_demo/subscriptions", params={"tenant": contoso.tenant_id})).json()
    assert [(s["id"], s["tenantId"], s["paused"]) for s in listed["subscriptions"]] == [
        (created["id"], contoso.tenant_id, False)
    ]
    sent = await control.post(f"/_demo/subscriptions/{created['id']}/lifecycle", json={"event": "missed"})
    assert sent.status_code == 202
    assert (await receiver.next("lifecycle"))["value"][0]["lifecycleEvent"] == "missed"
    assert (
        await control.post(f"/_demo/subscriptions/{created['id']}/lifecycle", json={"event": "x"})
    ).status_code == 400
    assert (
        await control.post("/_demo/subscriptions/nope/lifecycle", json={"event": "missed"})
    ).status_code == 404

    fault = await control.post("/_demo/subscriptions/delivery-faults", json={"kind": "duplicate", "times": 2})
    assert fault.status_code == 201
    assert (await control.get("/_demo/subscriptions/delivery-faults")).json()["faults"][0][
        "kind"
    ] == "duplicate"
    policy = await control.put(
        "/_demo/subscriptions/delivery-policy", json={"retryBase": 0.1, "allowHttpNotificationUrls": False}
    )
    assert policy.json()["retryBase"] == 0.1 and policy.json()["allowHttpNotificationUrls"] is False
    deliveries = (await control.get("/_demo/subscriptions/deliveries")).json()["deliveries"]
    assert [d["kind"] for d in deliveries] == ["validation", "validation", "lifecycle"]

    assert (await control.post(f"/_demo/subscriptions/{created['id']}/expire")).status_code == 200
    assert (await control.get("/_demo/subscriptions")).json()["subscriptions"] == []

    server.set_allow_http_notification_urls(True)
    await subscribe(
        graph, receiver, "/users", notificationUrl=receiver.url().replace("127.0.0.1", "localhost")
    )
    assert (await control.post("/_demo/reset")).status_code == 200
    assert server.subscription_list() == [] and server.delivery_faults() == [] and server.deliveries() == []
    assert server.subscriptions.allow_http_notification_urls and server.subscriptions.policy.retry_base == 1.0


def test_a_purged_user_leaves_delta_with_reason_deleted(server: DemoGraphServer, contoso: Tenant) -> None:
    headers = {"Authorization": f"Bearer {server.token_for(contoso.tenant_id)}"}
    with httpx.Client(base_url=server.base_url, headers=headers, timeout=30) as client:
        link = client.get("/users/delta", params={"$deltatoken": "latest"}).json()["@odata.deltaLink"]
        soft, hard = list(contoso.users)[:2]
        server.delete_user(contoso.tenant_id, soft)
        server.delete_user(contoso.tenant_id, hard)
        assert server.purge_deleted(contoso.tenant_id, hard) and not server.purge_deleted(
            contoso.tenant_id, hard
        )
        removed = {entry["id"]: entry["@removed"] for entry in client.get(link).json()["value"]}
    assert removed == {soft: {"reason": "changed"}, hard: {"reason": "deleted"}}
