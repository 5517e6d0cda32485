"""The product end to end through its real handlers: save a selection, the worker refreshes,
the roster holds exactly the eligible members; re-runs, redelivery, the removal guard,
failures, removal/restore/purge, and bad input refused with nothing changed."""

from __future__ import annotations

import msgspec
import pytest

from devtools.demo_tenant import Tenant as DemoTenant
from devtools.host import encode_principal
from tests.integration.conftest import AppUnderTest
from tests.oracle import expected_roster


async def register(app: AppUnderTest, tenant: DemoTenant) -> None:
    status, body, _ = await app.http(
        "tenant_put",
        "PUT",
        f"tenants/{tenant.tenant_id}",
        route={"tenantId": tenant.tenant_id},
        body={"displayName": tenant.display_name},
    )
    assert status == 200, body


async def select(
    app: AppUnderTest, tenant: DemoTenant, group_ids: list[str], **kw: object
) -> tuple[int, dict]:
    status, body, _ = await app.http(
        "selection",
        "PUT",
        f"tenants/{tenant.tenant_id}/selection",
        route={"tenantId": tenant.tenant_id},
        body={"groupIds": group_ids, **kw},
    )
    return status, body


async def roster(app: AppUnderTest, tenant: DemoTenant, status: str = "active") -> dict[str, dict]:
    users: dict[str, dict] = {}
    cursor = None
    while True:
        params = {"status": status, "limit": "500", **({"cursor": cursor} if cursor else {})}
        code, body, _ = await app.http(
            "users_list",
            "GET",
            f"tenants/{tenant.tenant_id}/users",
            route={"tenantId": tenant.tenant_id},
            params=params,
        )
        assert code == 200, body
        users.update({u["id"]: u for u in body["value"]})
        cursor = body["nextCursor"]
        if not cursor:
            return users


async def run(app: AppUnderTest, tenant: DemoTenant, run_id: str) -> dict:
    code, body, _ = await app.http(
        "run_get",
        "GET",
        f"tenants/{tenant.tenant_id}/runs/{run_id}",
        route={"tenantId": tenant.tenant_id, "runId": run_id},
    )
    assert code == 200, body
    return body


async def refresh(app: AppUnderTest, tenant: DemoTenant) -> dict:
    code, body, headers = await app.http(
        "refresh", "POST", f"tenants/{tenant.tenant_id}/refresh", route={"tenantId": tenant.tenant_id}
    )
    assert code == 202 and headers["Location"].endswith(body["id"]), body
    await app.deliver()
    return await run(app, tenant, body["id"])


def two_groups(tenant: DemoTenant) -> list[str]:
    """Two department groups: people, mess included, overlapping nothing in particular."""
    depts = list(tenant.landmarks.department_group_ids.values())
    return depts[:2]


async def test_save_queues_a_refresh_and_the_worker_builds_exactly_the_eligible_roster(
    app: AppUnderTest, own_tenant: DemoTenant
) -> None:
    await register(app, own_tenant)
    groups = [own_tenant.landmarks.big_group_id, own_tenant.landmarks.cycle_group_ids[0]]
    status, saved = await select(app, own_tenant, groups)
    assert status == 200, saved
    assert saved["mode"] == "groups" and [g["id"] for g in saved["groups"]] == groups
    assert saved["run"]["status"] == "queued"
    assert len(await app.queued_bodies()) == 1  # saving started the refresh by itself

    assert await app.deliver() == 1
    result = await run(app, own_tenant, saved["run"]["id"])
    assert result["status"] == "succeeded", result["error"]

    expected = expected_roster(own_tenant, groups)
    users = await roster(app, own_tenant)
    assert set(users) == set(expected)
    for uid, user in users.items():
        assert set(user["groups"]) == expected[uid]  # each user keeps the groups they came through

    counts = result["counts"]
    assert counts["added"] == counts["eligible"] == len(expected)
    assert counts["eligible"] + sum(counts["excluded"].values()) == counts["members"]
    by_group = {g["id"]: g for g in result["groups"]}
    for gid in groups:
        assert by_group[gid]["members"] == len(own_tenant.transitive_user_ids(gid))
        assert by_group[gid]["eligible"] == sum(1 for e in expected.values() if gid in e)
    assert result["mailboxPurposeSource"] == "mailboxSettings"
    assert result["graphRequests"] > 0

    # Idempotent: the same selection again changes nothing, and re-reads no mailbox purposes
    # (checked within the week) for the people already on the platform but one (the probe that
    # tells a hidden mailbox from a permission taken back).
    app.graph.reset_log()
    etags_before = await roster_etags(app, own_tenant)
    again = await refresh(app, own_tenant)
    assert await roster_etags(app, own_tenant) == etags_before  # no row rewritten, the probe's included
    not_people = {
        uid
        for gid in groups
        for uid in own_tenant.transitive_user_ids(gid)
        if own_tenant.users[uid].user_purpose in ("shared", "room", "equipment")
    }
    assert app.graph.request_counts().get("mailboxSettings", 0) <= len(not_people) + 1
    assert again["status"] == "succeeded"
    assert (again["counts"]["added"], again["counts"]["removed"], again["counts"]["updated"]) == (0, 0, 0)
    assert again["counts"]["unchanged"] == len(expected)


async def roster_etags(app: AppUnderTest, tenant: DemoTenant) -> dict[str, str]:
    """Each roster row's ETag, straight from the table: it changes whenever the row is written."""
    from shared.storage import USERS_TABLE, table_client

    async with table_client(app.settings, USERS_TABLE) as users:
        rows = users.query_entities(
            "PartitionKey eq @t", parameters={"t": tenant.tenant_id}, select=["RowKey"]
        )
        return {row["RowKey"]: row.metadata["etag"] async for row in rows}


async def test_the_same_message_delivered_twice_runs_once(app: AppUnderTest, own_tenant: DemoTenant) -> None:
    await register(app, own_tenant)
    status, _ = await select(app, own_tenant, two_groups(own_tenant))
    assert status == 200
    body = (await app.queued_bodies())[0]
    from sync.jobs import process_refresh_message

    assert await process_refresh_message(body) == "succeeded"
    requests_after_first = app.graph.request_counts()
    before = await roster(app, own_tenant)
    assert await process_refresh_message(body) == "succeeded"  # at-least-once delivery
    assert app.graph.request_counts() == requests_after_first  # no second read of Graph
    assert await roster(app, own_tenant) == before


async def test_mode_all_when_no_group_is_chosen(app: AppUnderTest, own_tenant: DemoTenant) -> None:
    await register(app, own_tenant)
    status, saved = await select(app, own_tenant, [])
    assert status == 200 and saved["mode"] == "all" and saved["groups"] == []
    await app.deliver()
    assert set(await roster(app, own_tenant)) == set(expected_roster(own_tenant, None))


async def test_removal_guard_holds_then_approval_applies(app: AppUnderTest, own_tenant: DemoTenant) -> None:
    await register(app, own_tenant)
    await select(app, own_tenant, [])
    await app.deliver()
    everyone = await roster(app, own_tenant)
    small = own_tenant.landmarks.nested_chain[-1]
    status, saved = await select(app, own_tenant, [small])
    assert status == 200
    await app.deliver()
    held = await run(app, own_tenant, saved["run"]["id"])
    assert held["status"] == "held", held
    assert "approve" in held["guard"] and held["counts"]["removed"] > 20
    assert len(held["plan"]["remove"]) == min(held["counts"]["removed"], 200)
    assert await roster(app, own_tenant) == everyone  # nothing applied while held

    code, approved, _ = await app.http(
        "run_approve",
        "POST",
        f"tenants/{own_tenant.tenant_id}/runs/{held['id']}/approve",
        route={"tenantId": own_tenant.tenant_id, "runId": held["id"]},
    )
    assert code == 202 and approved["allowRemovals"] == held["counts"]["removed"]
    await app.deliver()
    done = await run(app, own_tenant, approved["id"])
    assert done["status"] == "succeeded" and done["counts"]["removed"] == held["counts"]["removed"]
    assert set(await roster(app, own_tenant)) == set(expected_roster(own_tenant, [small]))

    code, again, _ = await app.http(
        "run_approve",
        "POST",
        f"tenants/{own_tenant.tenant_id}/runs/{held['id']}/approve",
        route={"tenantId": own_tenant.tenant_id, "runId": held["id"]},
    )
    assert code == 409 and "not held" in again["detail"]


async def test_a_group_that_cannot_be_read_fails_the_run_and_removes_nobody(
    app: AppUnderTest, own_tenant: DemoTenant
) -> None:
    await register(app, own_tenant)
    groups = two_groups(own_tenant)
    await select(app, own_tenant, groups)
    await app.deliver()
    before = await roster(app, own_tenant)
    app.graph.add_fault(403, rf"/groups/{groups[1]}/transitiveMembers")
    failed = await refresh(app, own_tenant)
    assert failed["status"] == "failed"
    assert "GroupMember.Read.All" in failed["error"]
    assert await roster(app, own_tenant) == before


async def test_removed_users_are_restored_within_grace_and_purged_after(
    app: AppUnderTest, own_tenant: DemoTenant, monkeypatch: pytest.MonkeyPatch
) -> None:
    await register(app, own_tenant)
    group = own_tenant.landmarks.big_group_id
    await select(app, own_tenant, [group])
    await app.deliver()
    active = await roster(app, own_tenant)
    leaver = next(uid for uid in sorted(active) if uid in own_tenant.direct_member_ids(group))
    added_at = active[leaver]["addedAt"]

    own_tenant.remove_member(group, leaver)
    first = await refresh(app, own_tenant)
    assert first["counts"]["removed"] == 1
    removed = await roster(app, own_tenant, "removed")
    assert set(removed) == {leaver} and removed[leaver]["removedAt"]

    own_tenant.add_member(group, leaver)
    back = await refresh(app, own_tenant)
    assert back["counts"]["restored"] == 1 and back["counts"]["added"] == 0
    restored = (await roster(app, own_tenant))[leaver]
    assert restored["addedAt"] == added_at and restored["removedAt"] is None  # restored, not re-created

    own_tenant.remove_member(group, leaver)
    await refresh(app, own_tenant)
    await refresh(app, own_tenant)  # a refresh purges only rows past the grace period
    assert set(await roster(app, own_tenant, "removed")) == {leaver}
    from datetime import UTC, datetime, timedelta

    from shared.storage import USERS_TABLE, table_client
    from sync.service import open_service

    async with table_client(app.settings, USERS_TABLE) as users:  # two days pass (the grace is one)
        row = await users.get_entity(own_tenant.tenant_id, leaver)
        row["removedAt"] = datetime.now(UTC) - timedelta(days=2)
        await users.update_entity(row)
    monkeypatch.setenv("REMOVAL_GRACE_DAYS", "1")
    from shared.settings import reset_settings_cache

    reset_settings_cache()
    timer = app.functions["nightly_sync"].get_user_function()
    await timer(None)
    async with open_service() as service:  # the timer queued a nightly refresh for this tenant
        queued = await service.ctx.store.queued_runs(own_tenant.tenant_id)
    assert [r.reason for r in queued] == ["nightly"]
    await app.deliver(max_messages=10_000, only_tenant=own_tenant.tenant_id)  # it purges past the grace
    assert await roster(app, own_tenant, "removed") == {}
    code, trail, _ = await app.http(
        "audit_list", "GET", "x", route={"tenantId": own_tenant.tenant_id}, params={"user": leaver}
    )
    assert code == 200
    # Every step of the leaver's story is on record, last the purge: the trace that outlives the row.
    assert [r["kind"] for r in trail["value"]] == ["added", "removed", "restored", "removed", "purged"]
    assert (
        trail["value"][-1]["reason"] == "pastGrace" and trail["value"][1]["reason"] == "notInSelectedGroups"
    )


@pytest.mark.parametrize(
    ("body", "detail"),
    [
        ({"groupIds": ["not-a-guid"]}, "not GUIDs"),
        ({"groupIds": "abc"}, "must be a list"),
        ({"mode": "some", "groupIds": []}, "mode must be"),
        ({"mode": "groups", "groupIds": []}, "at least one group"),
        ({"mode": "all", "groupIds": ["00000000-0000-4000-8000-000000000001"]}, "send no groupIds"),
        ({"groupIds": ["00000000-0000-4000-8000-000000000001"] * 2}, "more than once"),
        ({"groupIds": ["00000000-0000-4000-8000-000000000001"] * 1001}, "at most 1000"),
    ],
)
async def test_bad_selection_is_refused_with_400_and_nothing_changes(
    app: AppUnderTest, own_tenant: DemoTenant, body: dict, detail: str
) -> None:
    await register(app, own_tenant)
    code, problem, headers = await app.http(
        "selection",
        "PUT",
        f"tenants/{own_tenant.tenant_id}/selection",
        route={"tenantId": own_tenant.tenant_id},
        body=body,
    )
    assert code == 400 and detail in problem["detail"], problem
    assert headers["Content-Type"].startswith("application/problem+json")
    code, current, _ = await app.http(
        "selection",
        "GET",
        f"tenants/{own_tenant.tenant_id}/selection",
        route={"tenantId": own_tenant.tenant_id},
    )
    assert current["version"] == 0
    assert await app.queued_bodies() == []


async def test_unknown_groups_are_each_named_and_nothing_is_saved(
    app: AppUnderTest, own_tenant: DemoTenant
) -> None:
    await register(app, own_tenant)
    real = next(iter(own_tenant.groups))
    ghosts = ["00000000-0000-4000-8000-00000000000a", "00000000-0000-4000-8000-00000000000b"]
    code, problem = await select(app, own_tenant, [real, *ghosts])
    assert code == 400
    assert all(g in problem["detail"] for g in ghosts) and real not in problem["detail"]
    assert {e["groupId"] for e in problem["errors"]} == set(ghosts)
    assert await app.queued_bodies() == []


async def test_stale_if_match_is_412(app: AppUnderTest, own_tenant: DemoTenant) -> None:
    await register(app, own_tenant)
    group = next(iter(own_tenant.groups))
    code, saved, _ = await app.http(
        "selection",
        "PUT",
        f"tenants/{own_tenant.tenant_id}/selection",
        route={"tenantId": own_tenant.tenant_id},
        body={"groupIds": [group]},
        headers={"If-Match": '"0"'},
    )
    assert code == 200 and saved["version"] == 1
    code, problem, _ = await app.http(
        "selection",
        "PUT",
        f"tenants/{own_tenant.tenant_id}/selection",
        route={"tenantId": own_tenant.tenant_id},
        body={"groupIds": []},
        headers={"If-Match": '"0"'},
    )
    assert code == 412 and "version is 1" in problem["detail"]


async def test_unregistered_tenant_is_404_and_malformed_id_is_400(app: AppUnderTest) -> None:
    code, problem, _ = await app.http(
        "selection", "GET", "tenants/x/selection", route={"tenantId": "00000000-0000-4000-8000-000000000009"}
    )
    assert code == 404 and "not registered" in problem["detail"]
    code, problem, _ = await app.http(
        "selection", "GET", "tenants/x/selection", route={"tenantId": "contoso"}
    )
    assert code == 400 and "GUID" in problem["detail"]


async def test_unauthenticated_is_401_and_a_stranger_sees_nothing(
    app: AppUnderTest, own_tenant: DemoTenant
) -> None:
    await register(app, own_tenant)
    code, problem, _ = await app.http("tenants_list", "GET", "tenants", principal=None)
    assert code == 401
    stranger = encode_principal(
        "eve@fabrikam.com", ["Sync.Operator"], tenant_id="8efef433-65df-437f-9283-e2a918a80821"
    )  # the operator's app role, but not signed in from the home tenant: nobody special
    code, listed, _ = await app.http("tenants_list", "GET", "tenants", principal=stranger)
    assert code == 200 and listed == {"value": []}
    code, problem, _ = await app.http(
        "selection", "GET", "x", route={"tenantId": own_tenant.tenant_id}, principal=stranger
    )
    assert code == 404 and "not registered, or not one you may see" in problem["detail"]


async def test_consent_revoked_run_says_which_permission_and_how(
    app: AppUnderTest, own_tenant: DemoTenant, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GRAPH_APP_CLIENT_ID", "11111111-2222-3333-4444-555555555555")
    from shared.settings import reset_settings_cache

    reset_settings_cache()
    await register(app, own_tenant)
    app.graph.add_fault(403, r".*", method="*")
    code, problem, _ = await app.http(
        "groups_list",
        "GET",
        f"tenants/{own_tenant.tenant_id}/groups",
        route={"tenantId": own_tenant.tenant_id},
    )
    assert code == 502 and "GroupMember.Read.All" in problem["detail"]
    assert f"/{own_tenant.tenant_id}/adminconsent?client_id=" in problem["detail"]
    assert (
        problem["adminConsentUrl"] in problem["detail"]
        and problem["missingPermission"] == "GroupMember.Read.All"
    )
    failed = await refresh(app, own_tenant)
    assert failed["status"] == "failed" and "adminconsent" in failed["error"]
    code, conn, _ = await app.http(
        "tenant_connection",
        "GET",
        f"tenants/{own_tenant.tenant_id}/connection",
        route={"tenantId": own_tenant.tenant_id},
    )
    assert code == 200 and conn["ok"] is False and conn["adminConsentUrl"]


async def explain(app: AppUnderTest, tenant: DemoTenant, user: str) -> dict:
    code, body, _ = await app.http(
        "user_explain",
        "GET",
        f"tenants/{tenant.tenant_id}/users/{user}/explain",
        route={"tenantId": tenant.tenant_id, "user": user},
    )
    assert code == 200, body
    return body


async def test_explain_says_why_a_user_is_not_synced(app: AppUnderTest, own_tenant: DemoTenant) -> None:
    await register(app, own_tenant)
    await select(app, own_tenant, [])  # mode all: only the exclusion rules keep people out
    await app.deliver()
    lm = own_tenant.landmarks
    cases = {
        next(iter(lm.guest_ids)): "guest",
        next(iter(lm.disabled_ids)): "disabled",
        next(iter(lm.unlicensed_ids)): "unlicensed",
        next(iter(lm.shared_mailbox_ids)): "sharedMailbox",
        next(iter(lm.service_account_ids)): "serviceAccount",
    }
    for uid, reason in cases.items():
        body = await explain(app, own_tenant, own_tenant.users[uid].user_principal_name)
        assert body["included"] is False and reason in [r["code"] for r in body["reasons"]], body
        assert all(r["message"] for r in body["reasons"])
        assert body["rosterStatus"] == "absent"

    group = lm.big_group_id
    _, saved = await select(app, own_tenant, [group])
    await app.deliver()
    held = await run(app, own_tenant, saved["run"]["id"])
    assert held["status"] == "held"  # most of the tenant would go: the guard asks first
    await app.http(
        "run_approve",
        "POST",
        f"tenants/{own_tenant.tenant_id}/runs/{held['id']}/approve",
        route={"tenantId": own_tenant.tenant_id, "runId": held["id"]},
    )
    await app.deliver()
    members = set(own_tenant.transitive_user_ids(group))
    # Someone synced under mode all (by the by-hand oracle: not a lapsed licence or an external
    # member either, whom the landmarks' ineligible set leaves out) and outside the new selection.
    outsider = next(uid for uid in expected_roster(own_tenant, None) if uid not in members)
    body = await explain(app, own_tenant, outsider)
    assert body["included"] is False and body["reasons"][0]["code"] == "notInSelectedGroups"
    assert body["rosterStatus"] == "removed"  # synced under mode all, removed by the new selection
    synced = next(iter(expected_roster(own_tenant, [group])))
    body = await explain(app, own_tenant, synced)
    assert body["included"] is True and body["rosterStatus"] == "active" and body["groups"][0]["id"] == group


async def test_preview_is_a_dry_run_that_changes_nothing(app: AppUnderTest, own_tenant: DemoTenant) -> None:
    await register(app, own_tenant)
    group = own_tenant.landmarks.big_group_id
    await select(app, own_tenant, [group])
    await app.deliver()
    before = await roster(app, own_tenant)
    other = own_tenant.landmarks.nested_chain[0]
    code, queued, _ = await app.http(
        "preview",
        "POST",
        f"tenants/{own_tenant.tenant_id}/preview",
        route={"tenantId": own_tenant.tenant_id},
        body={"groupIds": [other]},
    )
    assert code == 202 and queued["dryRun"] is True
    await app.deliver()
    result = await run(app, own_tenant, queued["id"])
    expected = expected_roster(own_tenant, [other])
    assert result["status"] == "succeeded" and result["counts"]["eligible"] == len(expected)
    assert set(result["plan"]["remove"]) <= set(before) and result["counts"]["removed"] == len(
        set(before) - set(expected)
    )
    assert await roster(app, own_tenant) == before
    code, selection, _ = await app.http(
        "selection",
        "GET",
        f"tenants/{own_tenant.tenant_id}/selection",
        route={"tenantId": own_tenant.tenant_id},
    )
    assert [g["id"] for g in selection["groups"]] == [group]


def test_run_resource_matches_the_contract() -> None:
    from sync.models import Run, RunStatus

    keys = set(
        msgspec.to_builtins(Run(id="r", tenant_id="t", status=RunStatus.QUEUED, reason="x", requested_at="z"))
    )
    contract = {"id", "tenantId", "status", "reason", "dryRun", "requestedAt", "startedAt", "finishedAt"}
    assert contract | {"counts", "groups", "graphRequests", "error"} <= keys


async def test_a_preview_says_when_saving_would_need_an_approval(
    app: AppUnderTest, own_tenant: DemoTenant
) -> None:
    await register(app, own_tenant)
    await select(app, own_tenant, [])
    await app.deliver()
    small = own_tenant.landmarks.nested_chain[-1]
    code, queued, _ = await app.http(
        "preview", "POST", "x", route={"tenantId": own_tenant.tenant_id}, body={"groupIds": [small]}
    )
    assert code == 202
    await app.deliver()
    result = await run(app, own_tenant, queued["id"])
    assert result["status"] == "succeeded" and result["dryRun"] is True  # a preview is never held itself
    assert result["guard"] and "approve" in result["guard"]  # but it warns that the save will be


async def test_selecting_many_groups_reads_all_users_once_and_gets_the_same_roster(
    app: AppUnderTest, own_tenant: DemoTenant
) -> None:
    await register(app, own_tenant)
    every_group = sorted(own_tenant.groups)
    _, saved = await select(app, own_tenant, every_group)
    await app.deliver()
    result = await run(app, own_tenant, saved["run"]["id"])
    assert result["status"] == "succeeded" and result["memberStrategy"] == "allUsers"
    expected = expected_roster(own_tenant, every_group)
    users = await roster(app, own_tenant)
    assert {uid: set(u["groups"]) for uid, u in users.items()} == expected
    by_group = {g["id"]: g for g in result["groups"]}
    assert all(by_group[g]["members"] == len(own_tenant.transitive_user_ids(g)) for g in every_group)


async def test_a_person_whose_mailbox_becomes_shared_is_caught_at_the_weekly_recheck(
    app: AppUnderTest, own_tenant: DemoTenant, monkeypatch: pytest.MonkeyPatch
) -> None:
    await register(app, own_tenant)
    group = own_tenant.landmarks.big_group_id
    await select(app, own_tenant, [group])
    await app.deliver()
    person = sorted(expected_roster(own_tenant, [group]))[0]
    own_tenant.update_user(person, user_purpose="shared")
    await refresh(app, own_tenant)
    assert person in await roster(app, own_tenant)  # within the week: not re-read
    import sync.engine

    monkeypatch.setattr(sync.engine, "PURPOSE_RECHECK", sync.engine.timedelta(0))
    result = await refresh(app, own_tenant)
    assert result["counts"]["removed"] == 1 and person not in await roster(app, own_tenant)


async def test_an_approval_covers_only_the_users_the_held_run_showed(
    app: AppUnderTest, own_tenant: DemoTenant
) -> None:
    await register(app, own_tenant)
    await select(app, own_tenant, [])
    await app.deliver()
    everyone = await roster(app, own_tenant)
    small = own_tenant.landmarks.nested_chain[-1]
    _, saved = await select(app, own_tenant, [small])
    await app.deliver()
    held = await run(app, own_tenant, saved["run"]["id"])
    assert held["status"] == "held"
    # Before anyone approves, one more person drops out of the group: the plan is no longer
    # what the admin saw, so the approval must not apply it.
    leaver = next(uid for uid in own_tenant.direct_member_ids(small) if uid in everyone)
    assert own_tenant.remove_member(small, leaver)
    code, approved, _ = await app.http(
        "run_approve", "POST", "x", route={"tenantId": own_tenant.tenant_id, "runId": held["id"]}
    )
    assert code == 202
    await app.deliver()
    again = await run(app, own_tenant, approved["id"])
    assert again["status"] == "held" and again["counts"]["removed"] == held["counts"]["removed"] + 1
    assert await roster(app, own_tenant) == everyone
