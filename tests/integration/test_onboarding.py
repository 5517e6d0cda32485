"""Connect Microsoft 365 end to end through the real handlers and the demo tenant's admin-consent
endpoint; a revoked consent marks the tenant, the nightly sync skips it with a TenantSkipped
warning, a good connection check clears it; who did what is recorded in a stable form; grants
through the CLI."""

from __future__ import annotations

import logging
import subprocess
import uuid
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from devtools.demo_tenant import Tenant as DemoTenant
from devtools.host import encode_principal
from devtools.host.identities import GLOBAL_ADMINISTRATOR, PARTNER_TENANT_ID
from shared.telemetry import TENANT_SKIPPED_EVENT
from sync import onboarding
from sync.service import open_service
from tests.integration.conftest import APP_BASE_URL, DEV_PRINCIPAL, AppUnderTest
from tests.integration.test_auth import put_grant
from tests.integration.test_fault_matrix import forget_new_tenants  # noqa: F401  (autouse cleanup)
from tests.integration.test_sync_flow import register

OPERATOR_BY = (
    "operator@groupsync.example (tid aa8843fa-9556-4492-a1cb-79b096247291, "
    "oid 43e8c286-1bdf-4b6d-89de-deffd2c5861a)"
)


def admin_of(tenant_id: str, object_id: str = "56c49421-8e0d-49a0-9dec-18904840bda3") -> str:
    return encode_principal(
        "it.admin@test.example",
        tenant_id=tenant_id,
        object_id=object_id,
        directory_roles=[GLOBAL_ADMINISTRATOR],
    )


async def start(app: AppUnderTest, tenant: str, who: str = DEV_PRINCIPAL, **body: Any) -> dict[str, Any]:
    code, started, _ = await app.http(
        "consent_start", "POST", "consent/start", body={"tenantId": tenant, **body}, principal=who
    )
    assert code == 201, started
    return started


async def callback(app: AppUnderTest, params: dict[str, str]) -> dict[str, str]:
    """Call the consent callback as the browser would; returns the page query it redirects to."""
    code, body, headers = await app.http(
        "consent_callback", "GET", "consent/callback", params=params, principal=None
    )
    assert code == 302, body
    location = headers["Location"]
    assert location.startswith("../ui?"), location
    return {k: v[0] for k, v in parse_qs(urlsplit(location).query).items()}


def accept_on_the_consent_page(
    url: str, *, decision: str = "accept", tenant: str | None = None
) -> dict[str, str]:
    """What the administrator does at Entra's admin-consent page (the demo tenant's): Accept or
    Cancel; returns the query Entra sends back to the redirect URI."""
    with httpx.Client(timeout=30, follow_redirects=False) as client:
        page = client.get(url)
        assert page.status_code == 200 and "Permissions requested" in page.text, page.text
        form = {k: v[0] for k, v in parse_qs(urlsplit(url).query).items()}
        form.update({"decision": decision, **({"tenant": tenant} if tenant else {})})
        answer = client.post(url.split("?")[0], data=form)
    assert answer.status_code == 302, answer.text
    back = answer.headers["location"]
    assert back.startswith(f"{APP_BASE_URL}/api/consent/callback?"), back
    return {k: v[0] for k, v in parse_qs(urlsplit(back).query).items()}


async def tenant_record(app: AppUnderTest, tenant_id: str) -> dict[str, Any] | None:
    code, listed, _ = await app.http("tenants_list", "GET", "tenants")
    assert code == 200
    return next((t for t in listed["value"] if t["id"] == tenant_id), None)


async def test_a_customer_admin_connects_their_tenant_by_admin_consent(
    app: AppUnderTest, own_tenant: DemoTenant
) -> None:
    tid = own_tenant.tenant_id
    app.graph.set_consent(tid, "none")  # never consented: the app cannot read the tenant yet
    admin = admin_of(tid)
    started = await start(app, tid, admin)
    url = urlsplit(started["url"])
    query = {k: v[0] for k, v in parse_qs(url.query).items()}
    assert url.path == f"/{tid}/adminconsent"
    assert query["redirect_uri"] == f"{APP_BASE_URL}/api/consent/callback"
    assert query["client_id"] == app.settings.graph_app_client_id and len(query["state"]) >= 40
    reply = accept_on_the_consent_page(started["url"])
    assert reply["admin_consent"] == "True" and reply["tenant"] == tid
    page = await callback(app, reply)
    assert page == {"consent": "granted", "tenant": tid, "connection": "connected"}, page
    record = await tenant_record(app, tid)
    assert record is not None
    assert record["displayName"] == "test.example"  # the admin's domain, until someone renames it
    assert (
        record["updatedBy"] == f"it.admin@test.example (tid {tid}, oid 56c49421-8e0d-49a0-9dec-18904840bda3)"
    )
    # The admin now sees their tenant, and only it.
    code, listed, _ = await app.http("tenants_list", "GET", "tenants", principal=admin)
    assert code == 200 and [t["id"] for t in listed["value"]] == [tid]
    # The same state again: refused, nothing changes.
    again = await callback(app, reply)
    assert again["consent"] == "invalid" and "already used" in again["detail"], again


async def test_cancel_wrong_tenant_expired_and_forged_replies_register_nothing(
    app: AppUnderTest, own_tenant: DemoTenant, monkeypatch: pytest.MonkeyPatch
) -> None:
    tid = own_tenant.tenant_id
    # Cancel on Entra's page: the error comes back and is shown; nothing is registered.
    reply = accept_on_the_consent_page((await start(app, tid))["url"], decision="cancel")
    page = await callback(app, reply)
    assert page["consent"] == "refused" and page["tenant"] == tid
    assert "access_denied" in page["detail"] and "AADSTS65004" in page["detail"]
    assert await tenant_record(app, tid) is None
    # A reply naming another tenant than the one asked for.
    state = parse_qs(urlsplit((await start(app, tid))["url"]).query)["state"][0]
    page = await callback(app, {"admin_consent": "True", "tenant": str(uuid.uuid4()), "state": state})
    assert page["consent"] == "invalid" and "not in" in page["detail"]
    # A state nobody issued, and an expired one.
    page = await callback(app, {"admin_consent": "True", "tenant": tid, "state": "x" * 43})
    assert page["consent"] == "invalid" and "not one this app issued" in page["detail"]
    monkeypatch.setattr(onboarding, "CONSENT_STATE_SECONDS", -1)
    state = parse_qs(urlsplit((await start(app, tid))["url"]).query)["state"][0]
    page = await callback(app, {"admin_consent": "True", "tenant": tid, "state": state})
    assert page["consent"] == "invalid" and "expired" in page["detail"]
    assert await tenant_record(app, tid) is None
    # No state at all is not a reply to us.
    code, problem, _ = await app.http("consent_callback", "GET", "x", params={"tenant": tid}, principal=None)
    assert code == 400, problem


async def test_an_operator_connects_any_organization(app: AppUnderTest, own_tenant: DemoTenant) -> None:
    tid = own_tenant.tenant_id
    started = await start(app, "organizations", displayName="Contoso Ltd")
    assert "/organizations/adminconsent?" in started["url"]
    page = await callback(app, accept_on_the_consent_page(started["url"], tenant=tid))
    assert page["consent"] == "granted" and page["tenant"] == tid
    record = await tenant_record(app, tid)
    assert (
        record is not None and record["displayName"] == "Contoso Ltd" and record["updatedBy"] == OPERATOR_BY
    )


async def test_a_revoked_consent_is_marked_skipped_at_night_and_cleared_by_a_good_check(
    app: AppUnderTest, own_tenant: DemoTenant, caplog: pytest.LogCaptureFixture
) -> None:
    tid = own_tenant.tenant_id
    await register(app, own_tenant)
    app.graph.set_consent(tid, "revoked")  # the enterprise application was deleted in the tenant
    code, run, _ = await app.http("refresh", "POST", "x", route={"tenantId": tid}, body={})
    assert code == 202
    await app.deliver(only_tenant=tid)
    code, run, _ = await app.http("run_get", "GET", "x", route={"tenantId": tid, "runId": run["id"]})
    assert run["status"] == "failed" and "admin consent" in run["error"]
    assert (await tenant_record(app, tid) or {})["consentState"] == "notConsented"
    code, me, _ = await app.http("whoami", "GET", "whoami", principal=admin_of(tid))
    assert me["tenants"] == [
        {"id": tid, "displayName": own_tenant.display_name, "consentState": "notConsented"}
    ]

    caplog.set_level(logging.INFO, logger="sync")
    async with open_service(app.settings) as service:
        queued = await service.nightly()
    assert tid not in {r.tenant_id for r in queued}  # skipped, not failed again
    skipped = [r for r in caplog.records if getattr(r, "event", None) == TENANT_SKIPPED_EVENT]
    assert [(r.levelname, r.tenantId, r.reason) for r in skipped if r.tenantId == tid] == [  # type: ignore[attr-defined]
        ("WARNING", tid, "notConsented")
    ]

    app.graph.set_consent(tid, "granted")  # consent given again (Reconnect)
    code, connection, _ = await app.http("tenant_connection", "GET", "x", route={"tenantId": tid})
    assert code == 200 and connection["state"] == "connected"
    assert (await tenant_record(app, tid) or {}).get("consentState") is None
    async with open_service(app.settings) as service:
        assert tid in {r.tenant_id for r in await service.nightly()}
    await app.deliver(only_tenant=tid)


async def test_a_partner_reconnects_a_granted_tenant_but_cannot_onboard_others(
    app: AppUnderTest, own_tenant: DemoTenant
) -> None:
    tid, partner_id = own_tenant.tenant_id, str(uuid.uuid4())
    partner = encode_principal("tech@partner-msp.example", tenant_id=PARTNER_TENANT_ID, object_id=partner_id)
    await put_grant(app, partner_id, [tid])
    code, _, _ = await app.http("consent_start", "POST", "x", body={"tenantId": tid}, principal=partner)
    assert code == 404  # granted, but not registered yet: connecting it is its own admin's (or an operator's)
    await register(app, own_tenant)
    await start(app, tid, partner)  # Reconnect of a registered, granted tenant


async def test_every_change_records_who_made_it(app: AppUnderTest, own_tenant: DemoTenant) -> None:
    tid = own_tenant.tenant_id
    admin = admin_of(tid)
    admin_by = f"it.admin@test.example (tid {tid}, oid 56c49421-8e0d-49a0-9dec-18904840bda3)"
    await register(app, own_tenant)
    assert (await tenant_record(app, tid) or {})["updatedBy"] == OPERATOR_BY
    code, saved, _ = await app.http(
        "selection", "PUT", "x", route={"tenantId": tid}, body={"mode": "all"}, principal=admin
    )
    assert code == 200 and saved["updatedBy"] == admin_by and saved["run"]["requestedBy"] == admin_by
    code, run, _ = await app.http("refresh", "POST", "x", route={"tenantId": tid}, body={}, principal=admin)
    assert run["requestedBy"] == admin_by
    code, _, _ = await app.http("tenant_rules", "PUT", "x", route={"tenantId": tid}, body={}, principal=admin)
    assert code == 200 and (await tenant_record(app, tid) or {})["updatedBy"] == admin_by
    code, runs, _ = await app.http("runs_list", "GET", "x", route={"tenantId": tid})
    assert {r["requestedBy"] for r in runs["value"]} == {admin_by}


def test_grants_from_the_cli(cli: Callable[..., subprocess.CompletedProcess[str]]) -> None:
    user, customer_a, customer_b = str(uuid.uuid4()), str(uuid.uuid4()), str(uuid.uuid4())
    added = cli(
        "grants", "add", PARTNER_TENANT_ID, "--user", user, customer_a, "--name", "tech@partner-msp.example"
    )
    assert added.returncode == 0, added.stderr
    added = cli("grants", "add", PARTNER_TENANT_ID, "--user", user, customer_b, customer_a, "--json")
    assert added.returncode == 0, added.stderr
    assert f'"{customer_a}"' in added.stdout and f'"{customer_b}"' in added.stdout
    listed = cli("grants", "list")
    assert user in listed.stdout and "cli:" in listed.stdout, listed.stdout
    revoked = cli("grants", "revoke", PARTNER_TENANT_ID, user, customer_a)
    assert revoked.returncode == 0 and customer_b in revoked.stdout, revoked.stderr
    revoked = cli("grants", "revoke", PARTNER_TENANT_ID, user)
    assert revoked.returncode == 0 and "revoked" in revoked.stdout
    assert user not in cli("grants", "list").stdout
    missing = cli("grants", "revoke", PARTNER_TENANT_ID, user)
    assert missing.returncode == 2 and "no grant" in missing.stderr
    bad = cli("grants", "add", PARTNER_TENANT_ID, "--group", "helpdesk", customer_a)
    assert bad.returncode == 2 and "not an object id" in bad.stderr, bad.stderr
