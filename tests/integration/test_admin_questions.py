"""The admin's questions, through the real handlers on Azurite and the demo tenant: one confirmation
per change (the Save dialog approves exactly what it listed), only the newest held run can be
approved, counts that match the admin center, who was excluded and why, the "may" exclusions."""

from __future__ import annotations

from devtools.demo_tenant import Tenant as DemoTenant
from tests.integration.conftest import AppUnderTest
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
