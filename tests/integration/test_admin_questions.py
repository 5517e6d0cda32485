"""The admin's questions, through the real handlers on Azurite and the demo tenant: one confirmation
per change (the Save dialog approves exactly what it listed), only the newest held run can be
approved, counts that match the admin center, who was excluded and why, the "may" exclusions."""

from __future__ import annotations

from devtools.demo_tenant import Tenant as DemoTenant
from tests.integration.conftest import AppUnderTest
from tests.integration.test_no_wrongful_removal import trail
from tests.integration.test_sync_flow import refresh, register, roster, run, select
from tests.oracle import expected_roster


async def preview(app: AppUnderTest, tenant: DemoTenant, group_ids: list[str]) -> dict:
    code, queued, _ = await app.http(
        "preview", "POST", "x", route={"tenantId": tenant.tenant_id}, body={"groupIds": group_ids}
    )
    assert code == 202, queued
    await app.deliver()
    return await run(app, tenant, queued["id"])


async def everyone_synced(app: AppUnderTest, tenant: DemoTenant) -> dict[str, dict]:
    await register(app, tenant)
    await select(app, tenant, [])
    await app.deliver()
    return await roster(app, tenant)


def confirmation(shown: dict) -> dict:
    return {"confirmedPreview": {"runId": shown["id"], "removalDigest": shown["removalDigest"]}}


async def test_confirming_the_save_dialog_applies_exactly_the_removals_it_listed(
    app: AppUnderTest, own_tenant: DemoTenant
) -> None:
    everyone = await everyone_synced(app, own_tenant)
    small = own_tenant.landmarks.nested_chain[-1]
    shown = await preview(app, own_tenant, [small])
    kept = expected_roster(own_tenant, [small])
    assert shown["counts"]["removed"] == len(everyone) - len(kept) and shown["guard"]  # a big removal
    code, saved = await select(app, own_tenant, [small], **confirmation(shown))
    assert code == 200, saved
    assert saved["run"]["approvedRun"] == shown["id"] and saved["run"]["approvedBy"]
    await app.deliver()
    done = await run(app, own_tenant, saved["run"]["id"])
    assert done["status"] == "succeeded", done  # not held a second time
    assert done["counts"]["removed"] == shown["counts"]["removed"]
    assert set(await roster(app, own_tenant)) == set(kept)


async def test_when_the_plan_changed_after_the_dialog_the_run_is_held_and_says_why(
    app: AppUnderTest, own_tenant: DemoTenant
) -> None:
    everyone = await everyone_synced(app, own_tenant)
    small = own_tenant.landmarks.nested_chain[-1]
    shown = await preview(app, own_tenant, [small])
    leaver = next(uid for uid in own_tenant.direct_member_ids(small) if uid in everyone)
    assert own_tenant.remove_member(small, leaver)  # one more removal than the dialog listed
    code, saved = await select(app, own_tenant, [small], **confirmation(shown))
    assert code == 200, saved
    await app.deliver()
    held = await run(app, own_tenant, saved["run"]["id"])
    assert held["status"] == "held" and held["counts"]["removed"] == shown["counts"]["removed"] + 1
    assert "are not exactly the ones this run would make" in held["guard"]
    assert f"({shown['counts']['removed']:,} users)" in held["guard"]
    assert await roster(app, own_tenant) == everyone


async def test_a_confirmation_of_another_preview_is_refused_naming_every_misfit(
    app: AppUnderTest, own_tenant: DemoTenant
) -> None:
    await everyone_synced(app, own_tenant)
    chain = own_tenant.landmarks.nested_chain
    shown = await preview(app, own_tenant, [chain[-1]])
    code, body = await select(
        app,
        own_tenant,
        [chain[0]],
        confirmedPreview={"runId": shown["id"], "removalDigest": "0" * 32},
    )
    assert code == 400
    assert "is of another selection" in body["detail"] and "is not the fingerprint" in body["detail"]
    code, body = await select(
        app, own_tenant, ["nope"], confirmedPreview={"runId": "x", "removalDigest": "!"}
    )
    assert code == 400
    for words in ("'nope'", "confirmedPreview.runId", "confirmedPreview.removalDigest"):
        assert words in body["detail"]
    code, current, _ = await app.http("selection", "GET", "x", route={"tenantId": own_tenant.tenant_id})
    assert current["mode"] == "all"  # nothing saved


async def test_only_the_newest_held_run_can_be_approved_and_history_says_who_approved(
    app: AppUnderTest, own_tenant: DemoTenant
) -> None:
    everyone = await everyone_synced(app, own_tenant)
    small = own_tenant.landmarks.nested_chain[-1]
    _, saved = await select(app, own_tenant, [small])
    await app.deliver()
    older = await run(app, own_tenant, saved["run"]["id"])
    newer = await refresh(app, own_tenant)
    assert older["status"] == newer["status"] == "held"
    code, body, _ = await app.http(
        "run_approve", "POST", "x", route={"tenantId": own_tenant.tenant_id, "runId": older["id"]}
    )
    assert code == 409 and f"run {newer['id']}" in body["detail"] and "newest held run" in body["detail"]
    assert await roster(app, own_tenant) == everyone
    code, approving, _ = await app.http(
        "run_approve", "POST", "x", route={"tenantId": own_tenant.tenant_id, "runId": newer["id"]}
    )
    assert code == 202
    await app.deliver()
    assert (await run(app, own_tenant, approving["id"]))["status"] == "succeeded"
    approved = await run(app, own_tenant, newer["id"])
    assert approved["approvedBy"].startswith("operator@groupsync.example") and approved["approvedAt"]
    assert approved["supersededBy"] == approving["id"]


# --- counts that match the admin center; who was excluded and why --------------------------------


async def get(app: AppUnderTest, function: str, tenant: DemoTenant, **params: str) -> tuple[int, object]:
    code, body, _ = await app.http(function, "GET", "x", route={"tenantId": tenant.tenant_id}, params=params)
    return code, body


async def test_each_group_shows_direct_members_as_the_admin_center_counts_them(
    app: AppUnderTest, own_tenant: DemoTenant
) -> None:
    await register(app, own_tenant)
    marks = own_tenant.landmarks
    chosen = [marks.big_group_id, marks.mixed_members_group_id, marks.guests_group_id]
    _, saved = await select(app, own_tenant, chosen)
    await app.deliver()
    done = await run(app, own_tenant, saved["run"]["id"])
    names = {"user": "users", "group": "groups", "device": "devices", "orgContact": "contacts"}
    for group in done["groups"]:
        kinds = [own_tenant.kind_of(m) for m in own_tenant.direct_member_ids(group["id"])]
        assert group["direct"] == {key: kinds.count(kind) for kind, key in names.items()}, group
        assert group["members"] == len(own_tenant.transitive_user_ids(group["id"]))
        excluded = sum(group["excluded"].values())
        assert group["eligible"] + excluded + group["unknown"] == group["members"]
    mixed = next(g for g in done["groups"] if g["id"] == marks.mixed_members_group_id)
    assert (
        mixed["direct"]["devices"] > 0 and mixed["direct"]["contacts"] > 0 and mixed["direct"]["groups"] > 0
    )
    big = next(g for g in done["groups"] if g["id"] == marks.big_group_id)
    assert big["direct"]["groups"] == 3 and big["members"] > big["direct"]["users"]  # "All Staff": nesting


async def test_excluded_users_are_listed_by_reason_with_the_rule_and_as_csv(
    app: AppUnderTest, own_tenant: DemoTenant
) -> None:
    await register(app, own_tenant)
    _, saved = await select(app, own_tenant, [])  # every user: guests too
    await app.deliver()
    done = await run(app, own_tenant, saved["run"]["id"])
    members = set(own_tenant.users)
    listed: list[dict] = []
    cursor = None
    while True:
        code, page = await get(
            app, "excluded_list", own_tenant, limit="40", **({"cursor": cursor} if cursor else {})
        )
        assert code == 200, page
        listed.extend(page["value"])
        cursor = page["nextCursor"]
        if not cursor:
            break
    on_roster = set(await roster(app, own_tenant))
    assert {u["id"] for u in listed} == members - on_roster - set(done.get("unknownUsers") or [])
    by_reason = {key: sum(1 for u in listed if u["reason"] == key) for key in done["counts"]["excluded"]}
    assert by_reason == done["counts"]["excluded"]
    assert all(len(u["rules"]) == len(u["reasons"]) and u["reason"] == u["reasons"][0] for u in listed)
    guests = [u for u in listed if u["reason"] == "guest"]
    assert guests and all(u["rules"][0] == "userType is Guest" for u in guests)
    code, page = await get(app, "excluded_list", own_tenant, reason="guest")
    assert code == 200 and {u["id"] for u in page["value"]} == {u["id"] for u in guests}
    code, csv_text, headers = await app.http(
        "excluded_list",
        "GET",
        "x",
        route={"tenantId": own_tenant.tenant_id},
        params={"format": "csv", "reason": "disabled"},
    )
    assert code == 200 and headers["Content-Type"] == "text/csv"
    lines = csv_text.strip().splitlines()
    assert lines[0].startswith("id,userPrincipalName") and len(lines) == 1 + by_reason["disabled"]
    code, roster_csv, _ = await app.http(
        "users_list", "GET", "x", route={"tenantId": own_tenant.tenant_id}, params={"format": "csv"}
    )
    assert code == 200 and len(roster_csv.strip().splitlines()) == 1 + len(on_roster)
    code, body = await get(app, "excluded_list", own_tenant, reason="nope", cursor="x")
    assert code == 400 and "'nope'" in body["detail"] and "cursor" in body["detail"]


async def test_why_finds_users_by_name_and_names_the_exact_rule(
    app: AppUnderTest, own_tenant: DemoTenant
) -> None:
    await register(app, own_tenant)
    person = next(
        u
        for u in own_tenant.users.values()
        if u.user_type == "Member" and u.given_name and u.surname and "#" not in u.user_principal_name
    )
    code, found = await get(
        app, "directory_users", own_tenant, search=f"{person.given_name} {person.surname}"
    )
    assert code == 200 and person.id in {u["id"] for u in found["value"]}, found
    local = person.user_principal_name.split("@")[0]
    code, found = await get(app, "directory_users", own_tenant, search=local)
    assert code == 200 and person.id in {u["id"] for u in found["value"]}
    code, body = await get(app, "directory_users", own_tenant, search='"""')
    assert code == 400 and "no letter or digit" in body["detail"]
    code, saved, _ = await app.http(
        "tenant_rules",
        "PUT",
        "x",
        route={"tenantId": own_tenant.tenant_id},
        body={"upnPatterns": [f"{local[:3]}*"], "excludedUsers": [person.user_principal_name]},
    )
    assert code == 200, saved
    code, why, _ = await app.http(
        "user_explain", "GET", "x", route={"tenantId": own_tenant.tenant_id, "user": person.id}
    )
    rule = next(r for r in why["reasons"] if r["code"] == "rule")
    assert f"listed in excludedUsers as '{person.user_principal_name}'" in rule["rule"]
    assert f"UPN pattern '{local[:3]}*'" in rule["rule"]


async def test_rules_refuse_users_the_tenant_does_not_have_naming_each(
    app: AppUnderTest, own_tenant: DemoTenant
) -> None:
    await register(app, own_tenant)
    real = next(iter(own_tenant.users.values())).user_principal_name
    ghosts = ["ghost@nowhere.example", "9d3c1e8a-0000-4000-8000-000000000001"]
    code, body, _ = await app.http(
        "tenant_rules",
        "PUT",
        "x",
        route={"tenantId": own_tenant.tenant_id},
        body={"excludedUsers": [real, *ghosts]},
    )
    assert code == 400 and all(ghost in body["detail"] for ghost in ghosts) and real not in body["detail"]
    code, rules = await get(app, "tenant_rules", own_tenant)
    assert rules["excludedUsers"] == []  # nothing saved


async def test_service_accounts_and_shared_mailboxes_may_be_included_per_tenant(
    app: AppUnderTest, own_tenant: DemoTenant
) -> None:
    await register(app, own_tenant)
    await select(app, own_tenant, [])
    await app.deliver()
    code, rules = await get(app, "tenant_rules", own_tenant)
    assert rules["excludeServiceAccounts"] is True and rules["excludeSharedMailboxes"] is True
    caught = rules["optionalMatches"]
    service = [u for u in own_tenant.users.values() if u.user_principal_name.lower().startswith("svc-")]
    assert caught["serviceAccount"] >= 1 and caught["sharedMailbox"] >= 1
    _, _, headers = await app.http("tenant_rules", "GET", "x", route={"tenantId": own_tenant.tenant_id})
    code, saved, _ = await app.http(
        "tenant_rules",
        "PUT",
        "x",
        route={"tenantId": own_tenant.tenant_id},
        body={"excludeServiceAccounts": False},
        headers={"If-Match": headers["ETag"]},
    )
    assert (
        code == 200 and saved["excludeServiceAccounts"] is False and saved["excludeSharedMailboxes"] is True
    )
    await app.deliver()
    on = await roster(app, own_tenant)
    eligible_svc = [
        u for u in service if u.account_enabled and u.user_type == "Member" and u.assigned_licenses
    ]
    assert eligible_svc and all(u.id in on for u in eligible_svc)
    change = [r for r in await trail(app, own_tenant) if r["kind"] == "rulesChanged"][-1]
    assert (
        change["before"]["excludeServiceAccounts"] is True
        and change["after"]["excludeServiceAccounts"] is False
    )


async def test_odd_search_text_never_reaches_graph_as_a_broken_query(
    app: AppUnderTest, own_tenant: DemoTenant
) -> None:
    await register(app, own_tenant)
    code, page = await get(app, "groups_list", own_tenant, search='"Sales"')
    assert code == 200 and page["value"] and all("sales" in g["displayName"].lower() for g in page["value"])
    for odd in ("Sales\\", 'Dept - "Sales" OR x', "R&D (EMEA)"):
        code, page = await get(app, "groups_list", own_tenant, search=odd)
        assert code == 200, (odd, page)
    code, body = await get(app, "groups_list", own_tenant, search='" \\ "', cursor="")
    assert code == 400 and "no letter or digit" in body["detail"] and "cursor" in body["detail"]
    code, page = await get(app, "groups_list", own_tenant)
    assert code == 200 and page["total"] == len(own_tenant.groups)
