"""The demo Graph server on the wire: paging, $select, casts, $count, errors, faults, $batch, delta,
and the fidelity knobs (tokens and consent, hidden membership, mailbox policies, expiring tokens,
index lag, licences). Each behaviour's Microsoft page is listed in docs/graph-contract.md.

Plain HTTP (httpx, aiohttp) against a server running in a background thread, plus the real
msgraph-sdk and azure-identity-style credential for the token path.
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import aiohttp
import httpx
import pytest

from devtools.demo_tenant import DEFAULT_PERMISSIONS, DemoGraphServer, Tenant, build_demo_tenants
from devtools.demo_tenant import delta as delta_module

if TYPE_CHECKING:
    from shared.graph import GraphClients

EVENTUAL = {"ConsistencyLevel": "eventual"}
BOM = "\ufeff"


@pytest.fixture
def server() -> Iterator[DemoGraphServer]:
    """A fresh server over fresh demo tenants (tests mutate tenants and knobs)."""
    with DemoGraphServer(build_demo_tenants()) as running:
        yield running


@pytest.fixture
def contoso(server: DemoGraphServer) -> Tenant:
    """The default demo tenant, as served."""
    return next(tenant for tenant in server.tenants().values() if tenant.display_name == "Contoso")


@pytest.fixture
def client(server: DemoGraphServer, contoso: Tenant) -> Iterator[httpx.Client]:
    """An HTTP client authenticated for Contoso."""
    headers = {"Authorization": f"Bearer {server.token_for(contoso.tenant_id)}"}
    with httpx.Client(base_url=server.base_url, headers=headers, timeout=10) as http:
        yield http


def follow(
    client: httpx.Client,
    url: str,
    params: dict[str, str] | None = None,
    headers: dict[str, str] | None = None,
) -> list[dict[str, Any]]:
    """Every page's body, following @odata.nextLink."""
    pages = []
    response = client.get(url, params=params, headers=headers)
    while True:
        assert response.status_code == 200, response.text
        body = response.json()
        pages.append(body)
        next_link = body.get("@odata.nextLink")
        if not next_link:
            return pages
        response = client.get(next_link, headers=headers)


def count_of(response: httpx.Response) -> int:
    """A $count body: text/plain, starting with a UTF-8 byte-order mark as Graph's do."""
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    assert response.content.startswith(b"\xef\xbb\xbf")
    return int(response.content.decode("utf-8").lstrip(BOM))


def assert_graph_error(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    """Check Graph's error shape and return the error object."""
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["code"] == code
    assert error["message"]
    inner = error["innerError"]
    assert set(inner) == {"date", "request-id", "client-request-id"}
    assert response.headers["request-id"] == inner["request-id"]
    return error


# ------------------------------------------------------------------------------------ paging


def test_transitive_members_page_past_999_with_next_links(client: httpx.Client, contoso: Tenant) -> None:
    big = contoso.landmarks.big_group_id
    params = {"$select": "id,displayName", "$top": "999", "$count": "true"}
    pages = follow(client, f"/groups/{big}/transitiveMembers/microsoft.graph.user", params, EVENTUAL)
    assert len(pages) == 2
    assert "$select=id,displayName" in pages[0]["@odata.nextLink"]
    assert "$skiptoken=" in pages[0]["@odata.nextLink"]
    ids = [user["id"] for page in pages for user in page["value"]]
    assert len(ids) == len(set(ids)) == len(contoso.transitive_user_ids(big))
    assert set(ids) == set(contoso.transitive_user_ids(big))
    assert pages[0]["@odata.count"] == len(ids)
    assert all(set(user) == {"id", "displayName"} for page in pages for user in page["value"])


def test_users_default_page_is_100_and_top_over_999_is_refused(client: httpx.Client) -> None:
    first = client.get("/users").json()
    assert len(first["value"]) == 100
    assert first["@odata.context"].endswith("/$metadata#users")
    pages = follow(client, "/users", {"$top": "999", "$select": "id"})
    assert [len(page["value"]) for page in pages] == [999, 999, 2]
    assert len({user["id"] for page in pages for user in page["value"]}) == 2000
    error = assert_graph_error(client.get("/users", params={"$top": "1000"}), 400, "Request_UnsupportedQuery")
    assert "1000" in error["message"]


# ----------------------------------------------------------------------- $select and casts


def test_users_default_properties_leave_out_what_eligibility_needs(client: httpx.Client) -> None:
    user = client.get("/users", params={"$top": "1"}).json()["value"][0]
    assert set(user) == {
        "businessPhones",
        "displayName",
        "givenName",
        "jobTitle",
        "mail",
        "mobilePhone",
        "officeLocation",
        "preferredLanguage",
        "surname",
        "userPrincipalName",
        "id",
    }
    selected = client.get(
        "/users",
        params={"$top": "1", "$select": "id,userType,AccountEnabled,assignedLicenses,employeeHireDate"},
    )
    user = selected.json()["value"][0]
    assert set(user) == {"id", "userType", "accountEnabled", "assignedLicenses", "employeeHireDate"}
    assert user["employeeHireDate"] is None
    assert selected.json()["@odata.context"].endswith(
        "#users(id,userType,accountEnabled,assignedLicenses,employeeHireDate)"
    )


def test_select_of_a_property_the_type_lacks_is_refused(client: httpx.Client, contoso: Tenant) -> None:
    error = assert_graph_error(client.get("/users", params={"$select": "id,colour"}), 400, "BadRequest")
    assert "colour" in error["message"]
    group = contoso.landmarks.big_group_id
    assert_graph_error(client.get(f"/groups/{group}", params={"$select": "userType"}), 400, "BadRequest")
    user = next(iter(contoso.users))
    assert_graph_error(
        client.get(f"/users/{user}/mailboxSettings", params={"$select": "purpose"}), 400, "BadRequest"
    )


def test_get_user_by_id_and_by_principal_name(client: httpx.Client, contoso: Tenant) -> None:
    user = next(iter(contoso.users.values()))
    by_id = client.get(f"/users/{user.id}", params={"$select": "id,userPrincipalName,department"}).json()
    assert by_id["@odata.context"].endswith("#users(id,userPrincipalName,department)/$entity")
    assert (by_id["userPrincipalName"], by_id["department"]) == (user.user_principal_name, user.department)
    by_upn = client.get(f"/users/{user.user_principal_name}").json()
    assert by_upn["id"] == user.id
    assert_graph_error(client.get("/users/nobody@contoso.com"), 404, "Request_ResourceNotFound")


def test_members_are_mixed_and_casts_keep_only_one_type(client: httpx.Client, contoso: Tenant) -> None:
    mixed = contoso.landmarks.mixed_members_group_id
    body = client.get(f"/groups/{mixed}/members").json()
    assert body["@odata.context"].endswith("#directoryObjects")
    types = {member["@odata.type"] for member in body["value"]}
    assert types == {
        "#microsoft.graph.user",
        "#microsoft.graph.group",
        "#microsoft.graph.device",
        "#microsoft.graph.orgContact",
        "#microsoft.graph.servicePrincipal",
    }
    expected_users = {mid for mid in contoso.direct_member_ids(mixed) if mid in contoso.users}
    for cast in ("microsoft.graph.user", "graph.user"):
        casted = client.get(
            f"/groups/{mixed}/members/{cast}",
            params={"$count": "true", "$select": "id,userType"},
            headers=EVENTUAL,
        )
        assert casted.status_code == 200, casted.text
        assert {user["id"] for user in casted.json()["value"]} == expected_users
        assert casted.json()["@odata.count"] == len(expected_users)
        assert casted.json()["@odata.context"].endswith("#users(id,userType)")
    groups = client.get(
        f"/groups/{mixed}/members/microsoft.graph.group", params={"$count": "true"}, headers=EVENTUAL
    ).json()
    assert [group["id"] for group in groups["value"]] == [contoso.landmarks.nested_chain[2]]


def test_cast_without_advanced_query_parameters_is_refused(client: httpx.Client, contoso: Tenant) -> None:
    big = contoso.landmarks.big_group_id
    assert_graph_error(
        client.get(f"/groups/{big}/transitiveMembers/microsoft.graph.user"), 400, "Request_UnsupportedQuery"
    )


def test_transitive_members_of_a_cycle_list_each_object_once(client: httpx.Client, contoso: Tenant) -> None:
    core = contoso.landmarks.cycle_group_ids[0]
    ids = [
        member["id"]
        for page in follow(client, f"/groups/{core}/transitiveMembers")
        for member in page["value"]
    ]
    assert len(ids) == len(set(ids)) and core not in ids
    assert set(ids) == set(contoso.transitive_member_ids(core))


# --------------------------------------------------------------------------------- $count


def test_count_segment_needs_consistency_level(client: httpx.Client, contoso: Tenant) -> None:
    big = contoso.landmarks.big_group_id
    url = f"/groups/{big}/transitiveMembers/microsoft.graph.user/$count"
    assert_graph_error(client.get(url), 400, "Request_BadRequest")
    assert count_of(client.get(url, headers=EVENTUAL)) == len(contoso.transitive_user_ids(big))
    assert count_of(client.get("/users/$count", headers=EVENTUAL)) == 2000
    assert count_of(client.get("/groups/$count", headers=EVENTUAL)) == 60


def test_count_bodies_carry_a_byte_order_mark_unless_switched_off(
    client: httpx.Client, server: DemoGraphServer
) -> None:
    assert client.get("/users/$count", headers=EVENTUAL).content == b"\xef\xbb\xbf2000"
    assert httpx.put(f"{server.root_url}/_demo/count-bom", json={"enabled": False}).status_code == 200
    assert client.get("/users/$count", headers=EVENTUAL).content == b"2000"
    server.set_count_bom(True)
    assert client.get("/users/$count", headers=EVENTUAL).content.startswith(b"\xef\xbb\xbf")


def test_count_query_option_is_ignored_without_consistency_level(client: httpx.Client) -> None:
    plain = client.get("/groups", params={"$count": "true", "$select": "id"}).json()
    assert "@odata.count" not in plain
    advanced = client.get("/groups", params={"$count": "true", "$select": "id"}, headers=EVENTUAL).json()
    assert advanced["@odata.count"] == 60


# ------------------------------------------------------------------ $filter, $search, $orderby


def test_query_options_the_product_never_sends_are_refused(client: httpx.Client, contoso: Tenant) -> None:
    for option, value in (("$filter", "id eq 'x'"), ("$expand", "members"), ("$skip", "5")):
        error = assert_graph_error(
            client.get("/groups", params={option: value}), 400, "Request_UnsupportedQuery"
        )
        assert option in error["message"]
    assert_graph_error(client.get("/users", params={"filter": "id eq 'x'"}), 400, "Request_UnsupportedQuery")
    assert_graph_error(client.get("/users", params={"$colour": "red"}), 400, "BadRequest")
    assert_graph_error(
        client.get("/users", params={"$orderby": "displayName"}), 400, "Request_UnsupportedQuery"
    )
    assert_graph_error(client.get("/users/delta", params={"$top": "5"}), 400, "Request_UnsupportedQuery")
    big = contoso.landmarks.big_group_id
    assert_graph_error(
        client.get(f"/groups/{big}/members", params={"$search": '"displayName:a"'}, headers=EVENTUAL),
        400,
        "Request_UnsupportedQuery",
    )
    # Custom (non-OData) query options pass by, as in Graph.
    assert client.get("/users", params={"$top": "1", "trace": "on"}).status_code == 200


def test_search_needs_consistency_level_and_orderby_sorts(client: httpx.Client) -> None:
    params = {"$search": '"displayName:phoenix"', "$select": "displayName"}
    assert_graph_error(client.get("/groups", params=params), 400, "Request_UnsupportedQuery")
    found = client.get("/groups", params=params, headers=EVENTUAL).json()["value"]
    assert sorted(group["displayName"] for group in found) == [
        "Project Phoenix - Core",
        "Project Phoenix - Extended",
        "Project Phoenix - Steering",
    ]
    ordered = client.get(
        "/groups", params={"$orderby": "displayName", "$select": "displayName", "$top": "999"}
    ).json()["value"]
    names = [group["displayName"] for group in ordered]
    assert names == sorted(names, key=str.lower)


def test_search_users_by_name_mail_or_principal_name_prefix(client: httpx.Client, contoso: Tenant) -> None:
    user = next(u for u in contoso.users.values() if u.mail and u.given_name and u.user_type == "Member")
    for clause in (
        f'"displayName:{user.given_name}"',
        f'"mail:{user.mail[:4]}"',
        f'"userPrincipalName:{user.user_principal_name[:4]}"',
    ):
        found = follow(client, "/users", {"$search": clause, "$select": "id", "$top": "999"}, EVENTUAL)
        assert user.id in {u["id"] for page in found for u in page["value"]}, clause
    ordered = client.get(
        "/groups", params={"$orderby": "displayName desc", "$select": "displayName", "$top": "999"}
    ).json()["value"]
    assert [g["displayName"] for g in ordered] == sorted(
        (g["displayName"] for g in ordered), key=str.lower, reverse=True
    )
    assert_graph_error(client.get("/groups", params={"$orderby": "mail"}), 400, "Request_UnsupportedQuery")


# ---------------------------------------------------------------------------------- errors


def test_unknown_and_malformed_group_ids(client: httpx.Client, contoso: Tenant) -> None:
    error = assert_graph_error(client.get(f"/groups/{contoso.tenant_id}"), 404, "Request_ResourceNotFound")
    assert contoso.tenant_id in error["message"]
    assert_graph_error(client.get("/groups/not-a-guid/members"), 400, "Request_BadRequest")
    assert_graph_error(client.get("/widgets"), 400, "BadRequest")


def test_forbidden_fault_uses_graph_shape(
    client: httpx.Client, server: DemoGraphServer, contoso: Tenant
) -> None:
    server.add_fault(403, r"^/groups/[^/]+/transitiveMembers")
    big = contoso.landmarks.big_group_id
    error = assert_graph_error(
        client.get(f"/groups/{big}/transitiveMembers"), 403, "Authorization_RequestDenied"
    )
    assert error["message"] == "Insufficient privileges to complete the operation."
    assert client.get(f"/groups/{big}/members").status_code == 200


def test_throttling_fault_returns_retry_after_then_succeeds(
    client: httpx.Client, server: DemoGraphServer
) -> None:
    server.add_fault(429, r"^/users$", times=2, retry_after=1)
    for _ in range(2):
        throttled = client.get("/users", params={"$top": "1"})
        assert_graph_error(throttled, 429, "TooManyRequests")
        assert throttled.headers["Retry-After"] == "1"
    assert client.get("/users", params={"$top": "1"}).status_code == 200
    assert server.faults()[0]["fired"] == 2


def test_fault_after_lets_the_first_requests_through_and_503_has_its_code(
    client: httpx.Client, server: DemoGraphServer
) -> None:
    server.add_fault(503, r"^/groups$", after=1, times=1, retry_after=2)
    assert client.get("/groups").status_code == 200
    unavailable = client.get("/groups")
    assert_graph_error(unavailable, 503, "serviceNotAvailable")
    assert unavailable.headers["Retry-After"] == "2"
    assert client.get("/groups").status_code == 200


def test_fault_delay_makes_a_client_time_out(client: httpx.Client, server: DemoGraphServer) -> None:
    server.add_fault(504, r"^/groups$", delay=1.0, times=1)
    with pytest.raises(httpx.ReadTimeout):
        client.get("/groups", timeout=0.2)


def test_rate_limit_throttles_past_the_budget(client: httpx.Client, server: DemoGraphServer) -> None:
    server.set_rate_limit(3, 60)
    assert [client.get("/groups", params={"$top": "1"}).status_code for _ in range(3)] == [200, 200, 200]
    throttled = client.get("/groups", params={"$top": "1"})
    assert_graph_error(throttled, 429, "TooManyRequests")
    assert int(throttled.headers["Retry-After"]) >= 1
    server.clear_rate_limit()
    assert client.get("/groups").status_code == 200


def test_app_rate_limit_is_shared_across_tenants(
    client: httpx.Client, server: DemoGraphServer, contoso: Tenant
) -> None:
    """Graph's per-app limits count one app's requests in every tenant (throttling-limits page)."""
    fabrikam = next(t for t in server.tenants().values() if t.display_name == "Fabrikam")
    other = {"Authorization": f"Bearer {server.token_for(fabrikam.tenant_id)}"}
    server.set_rate_limit(100, 60)  # each tenant alone is far from its own budget
    server.set_app_rate_limit(3, 60)
    assert client.get("/groups", params={"$top": "1"}).status_code == 200
    assert client.get("/users", params={"$top": "1"}).status_code == 200
    assert client.get("/groups", params={"$top": "1"}, headers=other).status_code == 200
    throttled = client.get("/users", params={"$top": "1"}, headers=other)
    assert_graph_error(throttled, 429, "TooManyRequests")
    assert int(throttled.headers["Retry-After"]) >= 1
    assert_graph_error(client.get("/users", params={"$top": "1"}), 429, "TooManyRequests")
    batch = client.post("/$batch", json={"requests": [{"id": "1", "method": "GET", "url": "/users?$top=1"}]})
    assert batch.status_code == 200 and batch.json()["responses"][0]["status"] == 429  # items count too
    server.clear_app_rate_limit()
    assert client.get("/users", params={"$top": "1"}, headers=other).status_code == 200


# ------------------------------------------------------------------------------------ auth


def test_bearer_token_picks_the_tenant(server: DemoGraphServer) -> None:
    for tenant in server.tenants().values():
        headers = {"Authorization": f"Bearer {server.token_for(tenant.tenant_id)}", **EVENTUAL}
        counted = httpx.get(f"{server.base_url}/users/$count", headers=headers)
        assert count_of(counted) == len(tenant.users)


@pytest.mark.parametrize(
    "authorization",
    [
        None,
        "Bearer demo.840fa9a3-916c-42ac-99ab-a1e9158955c5",  # the old static token is no longer accepted
        "Basic abc",
        "Bearer",
        "Bearer eyJhbGciOiJub25lIn0.eyJ0aWQiOiI4NDBmYTlhMyJ9.",  # JWT-shaped, but not issued here
    ],
)
def test_missing_or_foreign_token_is_401(server: DemoGraphServer, authorization: str | None) -> None:
    headers = {"Authorization": authorization} if authorization else {}
    response = httpx.get(f"{server.base_url}/users", headers=headers)
    assert_graph_error(response, 401, "InvalidAuthenticationToken")
    assert response.headers["WWW-Authenticate"].startswith("Bearer")


# --------------------------------------------------------------------------- mailboxSettings


def test_mailbox_settings_reveal_user_purpose(client: httpx.Client, contoso: Tenant) -> None:
    landmarks = contoso.landmarks
    shared = next(iter(landmarks.shared_mailbox_ids))
    body = client.get(f"/users/{shared}/mailboxSettings", params={"$select": "userPurpose"}).json()
    assert body["userPurpose"] == "shared"
    assert body["@odata.context"].endswith("/mailboxSettings(userPurpose)")
    room = next(iter(landmarks.room_ids))
    assert client.get(f"/users/{room}/mailboxSettings/userPurpose").json()["value"] == "room"
    normal = next(
        uid
        for uid in contoso.users
        if uid not in landmarks.ineligible_ids and uid not in landmarks.no_mail_ids
    )
    assert client.get(f"/users/{normal}/mailboxSettings").json()["userPurpose"] == "user"
    unlicensed = next(iter(landmarks.unlicensed_ids))
    assert_graph_error(client.get(f"/users/{unlicensed}/mailboxSettings"), 404, "MailboxNotEnabledForRESTAPI")


# ---------------------------------------------------------------------------------- $batch


def test_batch_runs_items_with_their_own_statuses(
    client: httpx.Client, server: DemoGraphServer, contoso: Tenant
) -> None:
    big = contoso.landmarks.big_group_id
    server.add_fault(429, r"/members$", retry_after=3)
    requests = [
        {"id": "1", "method": "GET", "url": f"/groups/{big}?$select=id,displayName"},
        {"id": "2", "method": "GET", "url": f"/groups/{contoso.tenant_id}"},
        {
            "id": "3",
            "method": "GET",
            "url": f"/groups/{big}/transitiveMembers/$count",
            "headers": {"ConsistencyLevel": "eventual"},
        },
        {"id": "4", "method": "GET", "url": f"groups/{big}/members"},
        {"id": "5", "method": "GET", "url": "/v1.0/users"},
    ]
    response = client.post("/$batch", json={"requests": requests})
    assert response.status_code == 200
    by_id = {item["id"]: item for item in response.json()["responses"]}
    assert by_id["1"]["status"] == 200 and by_id["1"]["body"]["displayName"] == "All Staff"
    assert by_id["2"]["status"] == 404 and by_id["2"]["body"]["error"]["code"] == "Request_ResourceNotFound"
    assert by_id["3"]["status"] == 200 and by_id["3"]["headers"]["Content-Type"].startswith("text/plain")
    count_body = base64.b64decode(by_id["3"]["body"]).decode("utf-8")
    assert int(count_body.lstrip(BOM)) == len(contoso.transitive_member_ids(big)) and count_body[0] == BOM
    assert by_id["4"]["status"] == 429 and by_id["4"]["headers"]["Retry-After"] == "3"
    assert by_id["4"]["body"]["error"]["code"] == "TooManyRequests"
    assert by_id["5"]["status"] == 400
    counts = server.request_counts(in_batch=True)
    assert counts["groups.get"] == 2 and counts["groups.transitiveMembers.count"] == 1
    assert server.request_counts(in_batch=False) == {"batch": 1}


def test_batch_limits(client: httpx.Client) -> None:
    def batch(requests: list[dict[str, Any]]) -> httpx.Response:
        return client.post("/$batch", json={"requests": requests})

    twenty_one = [{"id": str(n), "method": "GET", "url": "/users?$top=1"} for n in range(21)]
    assert_graph_error(batch(twenty_one), 400, "BadRequest")
    assert batch(twenty_one[:20]).status_code == 200
    duplicate = [
        {"id": "a", "method": "GET", "url": "/users"},
        {"id": "A", "method": "GET", "url": "/groups"},
    ]
    assert_graph_error(batch(duplicate), 400, "BadRequest")
    absolute = [{"id": "1", "method": "GET", "url": "https://graph.microsoft.com/v1.0/users"}]
    assert_graph_error(batch(absolute), 400, "BadRequest")
    assert_graph_error(client.post("/$batch", content=b"not json"), 400, "BadRequest")


def test_batch_depends_on_fails_dependents_with_424(client: httpx.Client, contoso: Tenant) -> None:
    requests = [
        {"id": "1", "method": "GET", "url": f"/groups/{contoso.tenant_id}"},
        {"id": "2", "method": "GET", "url": "/users?$top=1", "dependsOn": ["1"]},
    ]
    statuses = {
        item["id"]: item["status"]
        for item in client.post("/$batch", json={"requests": requests}).json()["responses"]
    }
    assert statuses == {"1": 404, "2": 424}


# --------------------------------------------------------------------- log, mutations, knobs


def test_request_log_counts_by_kind_and_reset(
    client: httpx.Client, server: DemoGraphServer, contoso: Tenant
) -> None:
    big = contoso.landmarks.big_group_id
    client.get("/groups")
    client.get(f"/groups/{big}/transitiveMembers")
    client.get(f"/groups/{big}/transitiveMembers")
    client.get("/users", params={"$top": "5"})
    assert server.request_counts() == {"groups.list": 1, "groups.transitiveMembers": 2, "users.list": 1}
    record = server.request_log(kind="users.list")[0]
    assert (record.method, record.path, record.status, record.tenant_id) == (
        "GET",
        "/users",
        200,
        contoso.tenant_id,
    )
    assert "top=5" in record.query
    over_http = httpx.get(f"{server.root_url}/_demo/requests").json()
    assert over_http["counts"] == server.request_counts() and over_http["total"] == 4
    server.set_latency(0.01)
    server.add_fault(500, ".*")
    assert httpx.post(f"{server.root_url}/_demo/reset").status_code == 200
    assert server.request_counts() == {} and server.faults() == [] and server.latency == 0


def test_tenant_mutations_show_up_at_once(client: httpx.Client, contoso: Tenant) -> None:
    top, _, bottom = contoso.landmarks.nested_chain
    count_url = f"/groups/{top}/transitiveMembers/microsoft.graph.user/$count"
    before = count_of(client.get(count_url, headers=EVENTUAL))
    newcomer = next(uid for uid in contoso.users if uid not in contoso.transitive_member_ids(top))
    contoso.add_member(bottom, newcomer)
    assert count_of(client.get(count_url, headers=EVENTUAL)) == before + 1
    contoso.disable_user(newcomer)
    assert (
        client.get(f"/users/{newcomer}", params={"$select": "accountEnabled"}).json()["accountEnabled"]
        is False
    )
    contoso.delete_group(bottom)
    assert_graph_error(client.get(f"/groups/{bottom}"), 404, "Request_ResourceNotFound")


def test_control_routes_manage_faults_and_membership(
    client: httpx.Client, server: DemoGraphServer, contoso: Tenant
) -> None:
    root = server.root_url
    created = httpx.post(
        f"{root}/_demo/faults", json={"status": 503, "pathRegex": "^/groups$", "times": 1, "retryAfter": 1}
    )
    assert created.status_code == 201
    assert client.get("/groups").status_code == 503
    assert httpx.get(f"{root}/_demo/faults").json()["faults"][0]["fired"] == 1
    empty = contoso.landmarks.empty_group_id
    user_id = next(iter(contoso.users))
    assert httpx.post(
        f"{root}/_demo/tenants/{contoso.tenant_id}/groups/{empty}/members", json={"id": user_id}
    ).json() == {"added": True}
    assert [member["id"] for member in client.get(f"/groups/{empty}/members").json()["value"]] == [user_id]
    patched = httpx.patch(
        f"{root}/_demo/tenants/{contoso.tenant_id}/users/{user_id}", json={"accountEnabled": False}
    )
    assert patched.status_code == 200 and contoso.users[user_id].account_enabled is False
    tenants = httpx.get(f"{root}/_demo/tenants").json()["tenants"]
    assert {tenant["displayName"] for tenant in tenants} == {"Contoso", "Fabrikam"}


@pytest.mark.asyncio
async def test_latency_is_per_request_and_requests_overlap(server: DemoGraphServer, contoso: Tenant) -> None:
    server.set_latency(0.3)
    headers = {"Authorization": f"Bearer {server.token_for(contoso.tenant_id)}"}
    async with aiohttp.ClientSession(headers=headers) as session:

        async def fetch() -> int:
            async with session.get(f"{server.base_url}/groups") as response:
                await response.read()
                return response.status

        started = time.perf_counter()
        statuses = await asyncio.gather(*(fetch() for _ in range(5)))
        elapsed = time.perf_counter() - started
    assert statuses == [200] * 5
    assert 0.3 <= elapsed < 1.2


# ----------------------------------------------------------------------------------- delta


def test_users_delta_round_then_changes(client: httpx.Client, contoso: Tenant) -> None:
    pages = follow(client, "/users/delta", {"$select": "id,accountEnabled"})
    assert sum(len(page["value"]) for page in pages) == 2000
    assert all("$skiptoken=" in page["@odata.nextLink"] for page in pages[:-1])
    delta_link = pages[-1]["@odata.deltaLink"]
    assert "$deltatoken=" in delta_link
    nothing = client.get(delta_link).json()
    assert nothing["value"] == [] and "@odata.deltaLink" in nothing
    disabled, deleted = list(contoso.users)[:2]
    contoso.disable_user(disabled)
    contoso.delete_user(deleted)
    changes = client.get(delta_link).json()
    by_id = {entry["id"]: entry for entry in changes["value"]}
    assert by_id[disabled]["accountEnabled"] is False
    assert by_id[deleted]["@removed"] == {"reason": "changed"}
    assert len(by_id) == 2


def test_groups_delta_tracks_membership(client: httpx.Client, contoso: Tenant) -> None:
    pages = follow(client, "/groups/delta", {"$select": "displayName,members"})
    entries = [entry for page in pages for entry in page["value"]]
    big = contoso.landmarks.big_group_id
    big_entry = next(entry for entry in entries if entry["id"] == big)
    assert {ref["id"] for ref in big_entry["members@delta"]} == set(contoso.direct_member_ids(big))
    empty_entry = next(entry for entry in entries if entry["id"] == contoso.landmarks.empty_group_id)
    assert "members@delta" not in empty_entry
    delta_link = pages[-1]["@odata.deltaLink"]
    team = contoso.landmarks.nested_chain[2]
    leaving = contoso.direct_member_ids(team)[0]
    joining = next(uid for uid in contoso.users if uid not in contoso.direct_member_ids(team))
    contoso.remove_member(team, leaving)
    contoso.add_member(team, joining)
    changes = client.get(delta_link).json()["value"]
    assert [entry["id"] for entry in changes] == [team]
    refs = {ref["id"]: ref for ref in changes[0]["members@delta"]}
    assert refs[leaving]["@removed"] == {"reason": "deleted"}
    assert refs[joining] == {"@odata.type": "#microsoft.graph.user", "id": joining}


def test_large_group_members_are_split_over_several_delta_entries(
    client: httpx.Client, contoso: Tenant, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(delta_module, "DELTA_MEMBERS_PER_ENTRY", 100)
    entries = [entry for page in follow(client, "/groups/delta") for entry in page["value"]]
    office = contoso.direct_member_ids(contoso.landmarks.big_group_id)[0]  # "Office - Redmond", ~770 members
    chunks = [entry for entry in entries if entry["id"] == office]
    assert len(chunks) > 1
    assert all(chunk["displayName"] == "Office - Redmond" for chunk in chunks)
    refs = [ref["id"] for chunk in chunks for ref in chunk["members@delta"]]
    assert refs == contoso.direct_member_ids(office)


def test_member_of_lists_direct_and_transitive_groups(client: httpx.Client, contoso: Tenant) -> None:
    top, middle, bottom = contoso.landmarks.nested_chain
    user_id = next(uid for uid in contoso.direct_member_ids(bottom) if uid in contoso.users)
    direct = {group["id"] for group in client.get(f"/users/{user_id}/memberOf").json()["value"]}
    assert bottom in direct and top not in direct
    pages = follow(client, f"/users/{user_id}/transitiveMemberOf")
    transitive = {group["id"] for page in pages for group in page["value"]}
    assert {top, middle, bottom} <= transitive
    assert all(group["@odata.type"] == "#microsoft.graph.group" for page in pages for group in page["value"])


# ------------------------------------------------------------- Microsoft 365 groups: no groups


def unified_group_with_members(tenant: Tenant) -> str:
    """A Microsoft 365 group with members and ordinary visibility."""
    return next(
        gid
        for gid, group in tenant.groups.items()
        if group.kind == "microsoft365" and not group.hidden_membership and tenant.direct_member_ids(gid)
    )


def test_group_cast_on_a_microsoft_365_group_is_an_unsupported_query(
    client: httpx.Client, contoso: Tenant
) -> None:
    unified = unified_group_with_members(contoso)
    for relation in ("transitiveMembers", "members"):
        response = client.get(
            f"/groups/{unified}/{relation}/microsoft.graph.group",
            params={"$select": "id", "$top": "999", "$count": "true"},
            headers=EVENTUAL,
        )
        assert_graph_error(response, 400, "Request_UnsupportedQuery")
        assert_graph_error(
            client.get(f"/groups/{unified}/{relation}/microsoft.graph.device/$count", headers=EVENTUAL),
            400,
            "Request_UnsupportedQuery",
        )
        users = client.get(
            f"/groups/{unified}/{relation}/microsoft.graph.user", params={"$count": "true"}, headers=EVENTUAL
        )
        assert users.status_code == 200 and users.json()["@odata.count"] > 0
    # A security group may hold groups: the same cast answers (possibly an empty list).
    top = contoso.landmarks.nested_chain[0]
    nested = client.get(
        f"/groups/{top}/transitiveMembers/microsoft.graph.group", params={"$count": "true"}, headers=EVENTUAL
    )
    assert {g["id"] for g in nested.json()["value"]} == set(contoso.landmarks.nested_chain[1:])


def test_control_route_refuses_a_group_as_member_of_a_microsoft_365_group(
    client: httpx.Client, server: DemoGraphServer, contoso: Tenant
) -> None:
    unified = unified_group_with_members(contoso)
    security = contoso.landmarks.nested_chain[2]
    url = f"{server.root_url}/_demo/tenants/{contoso.tenant_id}/groups/{unified}/members"
    refused = httpx.post(url, json={"id": security})
    assert refused.status_code == 400
    assert refused.json()["error"]["code"] == "Request_BadRequest"
    assert security not in contoso.direct_member_ids(unified)
    device = next(iter(contoso.devices))
    assert httpx.post(url, json={"id": device}).status_code == 400
    user = next(uid for uid in contoso.users if uid not in contoso.direct_member_ids(unified))
    assert httpx.post(url, json={"id": user}).json() == {"added": True}
    # Nesting a security group in a security group is fine.
    middle = contoso.landmarks.nested_chain[1]
    other = next(
        gid
        for gid, g in contoso.groups.items()
        if g.kind == "security"
        and gid not in contoso.landmarks.nested_chain
        and gid not in contoso.landmarks.cycle_group_ids
    )
    assert server.add_member(contoso.tenant_id, middle, other) is True


# ----------------------------------------------------------------------------- delta expiry


def delta_link(client: httpx.Client, resource: str) -> str:
    """A deltaLink from $deltatoken=latest."""
    latest = client.get(f"/{resource}/delta", params={"$deltatoken": "latest", "$select": "id,displayName"})
    assert latest.status_code == 200, latest.text
    return str(latest.json()["@odata.deltaLink"])


def test_expired_delta_token_answers_sync_state_not_found_by_default(
    client: httpx.Client, server: DemoGraphServer, contoso: Tenant
) -> None:
    users_link, groups_link = delta_link(client, "users"), delta_link(client, "groups")
    assert client.get(users_link).status_code == 200
    expired = httpx.post(f"{server.root_url}/_demo/tenants/{contoso.tenant_id}/delta/expire")
    assert expired.status_code == 200
    for link_ in (users_link, groups_link):
        assert_graph_error(client.get(link_), 400, "syncStateNotFound")
    fresh = delta_link(client, "users")  # a new round starts fine
    assert client.get(fresh).status_code == 200


@pytest.mark.parametrize(("answer", "status"), [("resyncRequired", 410), ("syncStateInvalid", 400)])
def test_expired_delta_token_answer_is_a_knob(
    client: httpx.Client, server: DemoGraphServer, answer: str, status: int
) -> None:
    assert httpx.put(f"{server.root_url}/_demo/delta", json={"expiredAnswer": answer}).status_code == 200
    link_ = delta_link(client, "groups")
    server.set_delta_token_lifetime(0.05)
    time.sleep(0.1)
    response = client.get(link_)
    assert_graph_error(response, status, answer)
    if status == 410:  # Graph's synchronization reset: Location holds the initial query
        location = response.headers["Location"]
        assert (
            "/groups/delta" in location
            and "$deltatoken" not in location
            and "$select=id,displayName" in location
        )
    assert httpx.put(f"{server.root_url}/_demo/delta", json={"expiredAnswer": "never"}).status_code == 400


# ---------------------------------------------------------------------- expired page tokens


def test_stale_next_link_answers_directory_expired_page_token(
    client: httpx.Client, server: DemoGraphServer, contoso: Tenant
) -> None:
    first = client.get("/users", params={"$top": "999", "$select": "id"}).json()
    next_link = first["@odata.nextLink"]
    assert (
        httpx.post(f"{server.root_url}/_demo/tenants/{contoso.tenant_id}/page-tokens/expire").status_code
        == 200
    )
    assert_graph_error(client.get(next_link), 400, "Directory_ExpiredPageToken")
    # A new read from the first page works; with a lifetime, a slow reader hits the same error.
    assert (
        httpx.put(f"{server.root_url}/_demo/page-tokens", json={"lifetimeSeconds": 0.05}).status_code == 200
    )
    again = client.get("/users", params={"$top": "999", "$select": "id"}).json()["@odata.nextLink"]
    time.sleep(0.1)
    assert_graph_error(client.get(again), 400, "Directory_ExpiredPageToken")
    server.set_page_token_lifetime(None)
    assert len(follow(client, "/users", {"$top": "999", "$select": "id"})) == 3


# ------------------------------------------------------------ eventual consistency of the index


def test_count_and_search_lag_behind_control_route_changes(
    client: httpx.Client, server: DemoGraphServer, contoso: Tenant
) -> None:
    assert httpx.put(f"{server.root_url}/_demo/index-lag", json={"seconds": 0.6}).status_code == 200
    top, _, bottom = contoso.landmarks.nested_chain
    count_url = f"/groups/{top}/transitiveMembers/microsoft.graph.user/$count"
    before = count_of(client.get(count_url, headers=EVENTUAL))
    newcomer = next(uid for uid in contoso.users if uid not in contoso.transitive_member_ids(top))
    root = f"{server.root_url}/_demo/tenants/{contoso.tenant_id}"
    assert httpx.post(f"{root}/groups/{bottom}/members", json={"id": newcomer}).json() == {"added": True}
    renamed = httpx.patch(f"{root}/users/{newcomer}", json={"displayName": "Zebulon Quarterstaff"})
    assert renamed.status_code == 200
    search = {"$search": '"displayName:Zebulon"', "$select": "id", "$count": "true"}
    # The membership itself is live; the index behind $count and $search is not there yet.
    assert newcomer in {m["id"] for p in follow(client, f"/groups/{bottom}/members") for m in p["value"]}
    assert count_of(client.get(count_url, headers=EVENTUAL)) == before
    lagging = client.get("/users", params=search, headers=EVENTUAL).json()
    assert lagging["value"] == [] and lagging["@odata.count"] == 0
    listed = client.get(
        f"/groups/{top}/transitiveMembers/microsoft.graph.user",
        params={"$count": "true", "$select": "id", "$top": "999"},
        headers=EVENTUAL,
    ).json()
    assert listed["@odata.count"] == before
    time.sleep(0.7)
    assert count_of(client.get(count_url, headers=EVENTUAL)) == before + 1
    caught_up = client.get("/users", params=search, headers=EVENTUAL).json()
    assert [u["id"] for u in caught_up["value"]] == [newcomer] and caught_up["@odata.count"] == 1


# ------------------------------------------------------------------------ hidden membership


def test_hidden_membership_needs_member_read_hidden(server: DemoGraphServer, contoso: Tenant) -> None:
    hidden = contoso.landmarks.hidden_membership_group_ids[0]
    assert contoso.groups[hidden].kind == "microsoft365"
    member = next(uid for uid in contoso.direct_member_ids(hidden) if uid in contoso.users)
    without = [role for role in DEFAULT_PERMISSIONS if role != "Member.Read.Hidden"]
    with (
        httpx.Client(
            base_url=server.base_url,
            headers={"Authorization": f"Bearer {server.token_for(contoso.tenant_id)}"},
        ) as full,
        httpx.Client(
            base_url=server.base_url,
            headers={"Authorization": f"Bearer {server.token_for(contoso.tenant_id, roles=without)}"},
        ) as partial,
    ):
        group = full.get(f"/groups/{hidden}", params={"$select": "id,visibility"}).json()
        assert group["visibility"] == "HiddenMembership"
        assert {m["id"] for m in full.get(f"/groups/{hidden}/members").json()["value"]} == set(
            contoso.direct_member_ids(hidden)
        )
        for path in (f"/groups/{hidden}/members", f"/groups/{hidden}/transitiveMembers"):
            assert_graph_error(partial.get(path), 403, "Authorization_RequestDenied")
        assert partial.get(f"/groups/{hidden}").status_code == 200  # the group itself is visible
        # A user's groups leave the hidden group out without the permission.
        assert hidden in {
            g["id"] for p in follow(full, f"/users/{member}/transitiveMemberOf") for g in p["value"]
        }
        assert hidden not in {
            g["id"] for p in follow(partial, f"/users/{member}/transitiveMemberOf") for g in p["value"]
        }
        assert (
            httpx.put(f"{server.root_url}/_demo/hidden-members", json={"answer": "empty"}).status_code == 200
        )
        assert partial.get(f"/groups/{hidden}/members").json()["value"] == []


# ------------------------------------------------------------------- per-mailbox access policy


def test_mailbox_access_policy_denies_single_mailboxes_also_in_batch(
    client: httpx.Client, server: DemoGraphServer, contoso: Tenant
) -> None:
    normal = [
        uid
        for uid, user in contoso.users.items()
        if user.user_purpose == "user" and uid not in contoso.landmarks.ineligible_ids
    ][:3]
    policy = httpx.put(
        f"{server.root_url}/_demo/tenants/{contoso.tenant_id}/mailbox-policy",
        json={"deniedUserIds": normal[:1]},
    )
    assert policy.status_code == 200
    url = "/users/{}/mailboxSettings?$select=userPurpose"
    assert_graph_error(client.get(url.format(normal[0])), 403, "ErrorAccessDenied")
    assert client.get(url.format(normal[1])).json()["userPurpose"] == "user"
    requests = [{"id": str(i), "method": "GET", "url": url.format(uid)} for i, uid in enumerate(normal)]
    statuses = {r["id"]: r for r in client.post("/$batch", json={"requests": requests}).json()["responses"]}
    assert statuses["0"]["status"] == 403 and statuses["0"]["body"]["error"]["code"] == "ErrorAccessDenied"
    assert statuses["1"]["status"] == statuses["2"]["status"] == 200
    unlicensed = next(iter(contoso.landmarks.unlicensed_ids))
    assert_graph_error(client.get(url.format(unlicensed)), 404, "MailboxNotEnabledForRESTAPI")


# ----------------------------------------------------------------- licences and external members


def test_assigned_plans_follow_licences_and_suspended_subscriptions_show(
    client: httpx.Client, server: DemoGraphServer, contoso: Tenant
) -> None:
    pages = follow(client, "/users", {"$select": "id,assignedLicenses,assignedPlans,userType", "$top": "999"})
    users = {u["id"]: u for page in pages for u in page["value"]}
    from devtools.demo_tenant.licensing import SKUS

    for user in users.values():
        expected = {
            plan.plan_id
            for lic in user["assignedLicenses"]
            for plan in SKUS[lic["skuId"]].plans
            if plan.plan_id not in lic["disabledPlans"]
        }
        assert {p["servicePlanId"] for p in user["assignedPlans"]} == expected
    suspended = contoso.landmarks.suspended_license_ids
    assert suspended
    for user_id in suspended:
        assert users[user_id]["assignedLicenses"]
        assert not any(
            p["capabilityStatus"] in ("Enabled", "Warning") for p in users[user_id]["assignedPlans"]
        )
    user_id = next(
        uid for uid in contoso.users if uid not in suspended and contoso.users[uid].assigned_licenses
    )
    patched = httpx.patch(
        f"{server.root_url}/_demo/tenants/{contoso.tenant_id}/users/{user_id}/licenses",
        json={
            "assignedLicenses": [{"skuId": "cbdc14ab-d96c-4c30-b9f4-6ada7cdc1d46"}],
            "capabilityStatus": "Deleted",
        },
    )
    assert patched.status_code == 200
    after = client.get(f"/users/{user_id}", params={"$select": "assignedLicenses,assignedPlans"}).json()
    assert [lic["skuId"] for lic in after["assignedLicenses"]] == ["cbdc14ab-d96c-4c30-b9f4-6ada7cdc1d46"]
    assert after["assignedPlans"] and {p["capabilityStatus"] for p in after["assignedPlans"]} == {"Deleted"}


def test_external_members_are_members_with_ext_principal_names(client: httpx.Client, contoso: Tenant) -> None:
    external = sorted(contoso.landmarks.external_member_ids)
    assert external
    for user_id in external[:3]:
        user = client.get(f"/users/{user_id}", params={"$select": "userType,userPrincipalName,mail"}).json()
        assert user["userType"] == "Member" and "#EXT#" in user["userPrincipalName"]
        assert_graph_error(
            client.get(f"/users/{user_id}/mailboxSettings"), 404, "MailboxNotEnabledForRESTAPI"
        )


# ------------------------------------------------------------------ token endpoint and consent


def token_request(server: DemoGraphServer, tenant: str, **overrides: str) -> httpx.Response:
    """A client-credentials request with a JWT client assertion, as the federated credential sends it."""
    form = {
        "grant_type": "client_credentials",
        "client_id": "5b8a2f0e-4c1d-4e7a-9f3b-2d6c8e1a7b90",
        "scope": "https://graph.microsoft.com/.default",
        "client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
        "client_assertion": "eyJhbGciOiJub25lIn0.eyJpc3MiOiJ3b3JrbG9hZCIsInN1YiI6ImFwcCJ9.",
        **overrides,
    }
    return httpx.post(f"{server.root_url}/{tenant}/oauth2/v2.0/token", data=form)


def assert_sts_error(response: httpx.Response, status: int, error: str, code: int) -> None:
    """Entra's token error body."""
    assert response.status_code == status, response.text
    body = response.json()
    assert body["error"] == error and body["error_codes"] == [code]
    assert body["error_description"].startswith(f"AADSTS{code}: ")
    assert {"timestamp", "trace_id", "correlation_id"} <= set(body)


def test_token_endpoint_issues_tokens_graph_accepts(server: DemoGraphServer, contoso: Tenant) -> None:
    response = token_request(server, contoso.tenant_id)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["token_type"] == "Bearer" and body["expires_in"] == body["ext_expires_in"] == 3599
    payload = body["access_token"].split(".")[1]
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    assert claims["tid"] == contoso.tenant_id and claims["appid"] == "5b8a2f0e-4c1d-4e7a-9f3b-2d6c8e1a7b90"
    assert set(claims["roles"]) == set(DEFAULT_PERMISSIONS) and claims["exp"] > time.time()
    headers = {"Authorization": f"Bearer {body['access_token']}"}
    assert httpx.get(f"{server.base_url}/users", params={"$top": "1"}, headers=headers).status_code == 200
    by_domain = token_request(server, contoso.initial_domain)
    assert by_domain.status_code == 200


@pytest.mark.parametrize(
    ("state", "status", "error", "code"),
    [
        ("none", 400, "unauthorized_client", 700016),
        ("revoked", 400, "unauthorized_client", 700016),
        ("appDeleted", 400, "unauthorized_client", 700016),
        ("badFederation", 401, "invalid_client", 700213),
    ],
)
def test_consent_states_refuse_tokens_with_aadsts_errors(
    server: DemoGraphServer, contoso: Tenant, state: str, status: int, error: str, code: int
) -> None:
    changed = httpx.put(f"{server.root_url}/_demo/tenants/{contoso.tenant_id}/consent", json={"state": state})
    assert changed.status_code == 200 and changed.json()["state"] == state
    assert_sts_error(token_request(server, contoso.tenant_id), status, error, code)


def test_token_endpoint_refuses_malformed_requests(server: DemoGraphServer, contoso: Tenant) -> None:
    assert_sts_error(
        token_request(server, "00000000-0000-0000-0000-000000000000"), 400, "invalid_request", 90002
    )
    assert_sts_error(
        token_request(server, contoso.tenant_id, scope="https://graph.microsoft.com/User.Read.All"),
        400,
        "invalid_scope",
        1002012,
    )
    assert_sts_error(
        token_request(server, contoso.tenant_id, client_assertion=""), 401, "invalid_client", 7000218
    )
    assert_sts_error(
        token_request(server, contoso.tenant_id, grant_type="password"), 400, "unsupported_grant_type", 70003
    )
    server.set_consent(contoso.tenant_id, "badFederation")
    assert_sts_error(
        token_request(server, contoso.tenant_id, client_assertion="not-a-jwt"), 401, "invalid_client", 70021
    )


def test_roles_claim_is_enforced_per_endpoint(server: DemoGraphServer, contoso: Tenant) -> None:
    server.set_consent(contoso.tenant_id, "granted", ["GroupMember.Read.All"])
    token = token_request(server, contoso.tenant_id).json()["access_token"]
    with httpx.Client(base_url=server.base_url, headers={"Authorization": f"Bearer {token}"}) as http:
        assert http.get("/groups", params={"$top": "1"}).status_code == 200
        assert_graph_error(http.get("/users", params={"$top": "1"}), 403, "Authorization_RequestDenied")
        user = next(iter(contoso.users))
        assert_graph_error(http.get(f"/users/{user}/mailboxSettings"), 403, "ErrorAccessDenied")
        batch = http.post(
            "/$batch",
            json={"requests": [{"id": "1", "method": "GET", "url": "/users/$count", "headers": EVENTUAL}]},
        )
        assert batch.json()["responses"][0]["status"] == 403


def test_expired_access_token_is_401(server: DemoGraphServer, contoso: Tenant) -> None:
    assert httpx.put(f"{server.root_url}/_demo/token-lifetime", json={"seconds": 1}).status_code == 200
    body = token_request(server, contoso.tenant_id).json()
    assert body["expires_in"] == 1
    time.sleep(1.1)
    response = httpx.get(
        f"{server.base_url}/users", headers={"Authorization": f"Bearer {body['access_token']}"}
    )
    error = assert_graph_error(response, 401, "InvalidAuthenticationToken")
    assert "expired" in error["message"]


def test_admin_consent_page_grants_or_declines(server: DemoGraphServer, contoso: Tenant) -> None:
    server.set_consent(contoso.tenant_id, "none")
    params = {"client_id": "app-1", "redirect_uri": "http://127.0.0.1:9/callback", "state": "s-1"}
    url = f"{server.root_url}/{contoso.tenant_id}/adminconsent"
    page_ = httpx.get(url, params=params)
    assert page_.status_code == 200 and "Accept" in page_.text and "Cancel" in page_.text
    declined = httpx.post(url, params=params, data={"decision": "cancel"})
    assert declined.status_code == 302
    assert (
        "error=access_denied" in declined.headers["Location"] and "state=s-1" in declined.headers["Location"]
    )
    assert server.consent(contoso.tenant_id).state == "none"
    accepted = httpx.post(
        f"{server.root_url}/organizations/adminconsent",
        params=params,
        data={"decision": "accept", "tenant": contoso.tenant_id},
    )
    location = accepted.headers["Location"]
    assert location.startswith("http://127.0.0.1:9/callback?admin_consent=True")
    assert f"tenant={contoso.tenant_id}" in location and "state=s-1" in location
    assert server.consent(contoso.tenant_id).state == "granted"
    assert httpx.get(url, params={"redirect_uri": "x"}).status_code == 400  # client_id is required


# ------------------------------------------------------------------- the product's credential


@pytest.mark.asyncio
async def test_demo_credential_through_the_sdk_caches_and_surfaces_aadsts(
    server: DemoGraphServer, contoso: Tenant, sdk_clients: GraphClients
) -> None:
    from azure.core.exceptions import ClientAuthenticationError
    from kiota_abstractions.base_request_configuration import RequestConfiguration
    from msgraph.generated.users.users_request_builder import UsersRequestBuilder

    client = sdk_clients.for_tenant(contoso.tenant_id)
    qp = UsersRequestBuilder.UsersRequestBuilderGetQueryParameters(select=["id", "assignedPlans"], top=5)
    page_ = await client.users.get(RequestConfiguration(query_parameters=qp))
    assert page_ is not None and len(page_.value or []) == 5
    await client.users.get(RequestConfiguration(query_parameters=qp))
    assert len(server.request_log(kind="users.list")) == 2
    server.set_consent(contoso.tenant_id, "revoked")
    fabrikam = next(t for t in server.tenants().values() if t.display_name == "Fabrikam")
    server.set_consent(fabrikam.tenant_id, "revoked")
    with pytest.raises(ClientAuthenticationError) as raised:
        await sdk_clients.for_tenant(fabrikam.tenant_id).users.get(RequestConfiguration(query_parameters=qp))
    assert "Authentication failed: AADSTS700016" in str(raised.value)


@pytest.mark.asyncio
async def test_demo_credential_refreshes_before_expiry_and_falls_back_without_a_token_endpoint(
    server: DemoGraphServer, contoso: Tenant
) -> None:
    from aiohttp import web

    from shared.demo_credential import DemoTenantCredential

    server.set_token_lifetime(4)
    credential = DemoTenantCredential(contoso.tenant_id, authority=server.root_url)
    first = await credential.get_token("https://graph.microsoft.com/.default")
    assert await credential.get_token("https://graph.microsoft.com/.default") is first  # cached
    await asyncio.sleep(2.2)  # past half the lifetime: refreshed before it expires
    assert (await credential.get_token("https://graph.microsoft.com/.default")).token != first.token

    app = web.Application()  # a look-alike without an identity platform
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        bare = DemoTenantCredential(contoso.tenant_id, authority=f"http://127.0.0.1:{port}")
        assert (
            await bare.get_token("https://graph.microsoft.com/.default")
        ).token == f"demo.{contoso.tenant_id}"
    finally:
        await runner.cleanup()


def test_search_without_consistency_level_is_refused(client: httpx.Client, contoso: Tenant) -> None:
    """$search on users and the member-type casts with $count need ConsistencyLevel: eventual, as in Graph."""
    person = next(u for u in contoso.users.values() if u.given_name and u.surname)
    clause = f'"displayName:{person.given_name} {person.surname}" OR "mail:{person.given_name}"'
    refused = client.get("/users", params={"$search": clause, "$select": "id"})
    assert_graph_error(refused, 400, "Request_UnsupportedQuery")
    found = client.get("/users", params={"$search": clause, "$select": "id", "$top": "10"}, headers=EVENTUAL)
    assert found.status_code == 200 and person.id in {u["id"] for u in found.json()["value"]}
    broken = client.get("/users", params={"$search": '"displayName:\\"Sales\\""'}, headers=EVENTUAL)
    assert broken.status_code == 400  # a quote inside a clause breaks it: the app never sends one
    mixed = contoso.landmarks.mixed_members_group_id
    devices = [m for m in contoso.direct_member_ids(mixed) if contoso.kind_of(m) == "device"]
    path = f"/groups/{mixed}/members/microsoft.graph.device"
    params = {"$count": "true", "$top": "1", "$select": "id"}
    assert_graph_error(client.get(path, params=params), 400, "Request_UnsupportedQuery")
    counted = client.get(path, params=params, headers=EVENTUAL)
    assert counted.status_code == 200 and counted.json()["@odata.count"] == len(devices) > 0
