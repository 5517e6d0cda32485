"""What real Microsoft 365 does and the demo tenant now does too, through the product's real handlers
and the real msgspec/msgraph-sdk path: refused tokens (consent), mailboxes an access policy hides,
licences of lapsed subscriptions, external members, partial answers, hidden membership, stale paging
links, the `$count` byte-order mark and national clouds (docs/graph-contract.md names the pages)."""

from __future__ import annotations

import asyncio
import uuid

import pytest

from devtools.demo_tenant import DemoGraphServer
from devtools.demo_tenant import Tenant as DemoTenant
from devtools.demo_tenant.model import Group
from shared.graph import GraphClients
from sync.directory import DirectoryReader, PageExpired
from tests.integration.conftest import AppUnderTest
from tests.integration.test_sync_flow import refresh, register, roster, select
from tests.oracle import excluded_by_hand, expected_roster

PRODUCT_PERMISSIONS = ("GroupMember.Read.All", "User.Read.All", "MailboxSettings.Read", "Member.Read.Hidden")
SPB = "cbdc14ab-d96c-4c30-b9f4-6ada7cdc1d46"  # Microsoft 365 Business Premium


TOKEN_SECONDS = (
    2.0  # the demo's token lifetime in these tests: Entra's consent changes show at the next token
)


async def next_token(app: AppUnderTest) -> None:
    """Wait until the product's cached Graph token is due for renewal (half its lifetime)."""
    await asyncio.sleep(TOKEN_SECONDS / 2 + 0.2)


def departments(tenant: DemoTenant) -> list[str]:
    return sorted(tenant.landmarks.department_group_ids.values())[:2]


async def connection(app: AppUnderTest, tenant: DemoTenant) -> dict:
    code, body, _ = await app.http("tenant_connection", "GET", "x", route={"tenantId": tenant.tenant_id})
    assert code == 200, body
    return body


# --- a tenant whose token Entra refuses ---------------------------------------------------------


@pytest.mark.parametrize(
    ("consent", "state", "aadsts", "consent_link"),
    [
        ("none", "notConsented", "AADSTS700016", True),  # never consented
        ("revoked", "notConsented", "AADSTS700016", True),  # the enterprise app was deleted
        ("appDeleted", "notConsented", "AADSTS700016", True),  # the app registration is gone
        ("badFederation", "credentialRejected", "AADSTS700213", False),  # the operator's to fix
    ],
)
async def test_a_refused_token_is_a_clear_state_everywhere_not_a_500(
    app: AppUnderTest, own_tenant: DemoTenant, consent: str, state: str, aadsts: str, consent_link: bool
) -> None:
    app.graph.set_token_lifetime(TOKEN_SECONDS)
    groups = departments(own_tenant)
    await register(app, own_tenant)
    await select(app, own_tenant, groups)
    await app.deliver()
    before = await roster(app, own_tenant)
    assert before
    app.graph.set_consent(own_tenant.tenant_id, consent)  # revoked (or never given) in Entra ...
    await next_token(app)  # ... and refused from the next token on

    checked = await connection(app, own_tenant)  # the page's Connection panel and onboarding step
    assert checked["ok"] is False and checked["state"] == state
    assert checked["missingPermissions"] == ["GroupMember.Read.All", "User.Read.All"]
    assert aadsts in checked["detail"]
    assert (checked["adminConsentUrl"] in checked["detail"]) is consent_link

    code, problem, headers = await app.http(
        "groups_list", "GET", "x", route={"tenantId": own_tenant.tenant_id}
    )
    assert code == 502 and headers["Content-Type"] == "application/problem+json"
    assert problem["accessProblem"] == state and aadsts in problem["detail"]
    assert problem["adminConsentUrl"] == checked["adminConsentUrl"]

    failed = await refresh(app, own_tenant)
    assert failed["status"] == "failed" and aadsts in failed["error"]
    assert (checked["adminConsentUrl"] in failed["error"]) is consent_link
    assert await roster(app, own_tenant) == before  # nobody removed on a refused token

    app.graph.set_consent(own_tenant.tenant_id, "granted", PRODUCT_PERMISSIONS)
    await next_token(app)
    assert (await connection(app, own_tenant))["state"] == "connected"


async def test_the_cli_says_it_in_one_line_and_exits_1(
    cli, app: AppUnderTest, own_tenant: DemoTenant
) -> None:
    await register(app, own_tenant)
    app.graph.set_consent(own_tenant.tenant_id, "none")
    listed = cli("groups", own_tenant.tenant_id)
    assert listed.returncode == 1
    lines = listed.stderr.strip().splitlines()
    assert len(lines) == 1 and "AADSTS700016" in lines[0] and "/adminconsent?client_id=" in lines[0]
    checked = cli("connection", own_tenant.tenant_id)
    assert checked.returncode == 1 and "notConsented" in checked.stdout and "/adminconsent" in checked.stdout


# --- mailboxes, licences, external members, partial answers --------------------------------------


async def test_a_mailbox_an_access_policy_hides_is_judged_alone(
    app: AppUnderTest, own_tenant: DemoTenant
) -> None:
    groups = departments(own_tenant)
    person = sorted(expected_roster(own_tenant, groups))[0]
    app.graph.set_mailbox_access_denied(own_tenant.tenant_id, [person])
    await register(app, own_tenant)
    await select(app, own_tenant, groups)
    await app.deliver()
    result = await refresh(app, own_tenant)
    assert result["status"] == "succeeded"
    # One refused mailbox does not switch the tenant to the heuristic: it is that user's alone.
    assert result["mailboxPurposeSource"] == "mailboxSettings"
    assert result["counts"]["purposeUnknown"] == 1
    assert set(await roster(app, own_tenant)) == set(expected_roster(own_tenant, groups))  # a person stays


async def test_one_hidden_mailbox_alone_to_look_up_is_still_judged_alone(
    app: AppUnderTest, own_tenant: DemoTenant
) -> None:
    """The next run looks up only mailboxes not known to be a person's: here just the hidden one.
    That one refusal must not read as "the tenant took MailboxSettings.Read back"."""
    people = sorted(expected_roster(own_tenant, departments(own_tenant)))[:3]
    team = str(uuid.uuid4())
    own_tenant.add_group(Group(id=team, display_name="Three people"), people)
    app.graph.set_mailbox_access_denied(own_tenant.tenant_id, [people[0]])
    await register(app, own_tenant)
    await select(app, own_tenant, [team])
    await app.deliver()
    for _ in range(2):  # the first full run reads all three; the second only the hidden one (+ a probe)
        result = await refresh(app, own_tenant)
        assert result["status"] == "succeeded"
        assert result["mailboxPurposeSource"] == "mailboxSettings"
        assert result["counts"]["purposeUnknown"] == 1
    assert set(await roster(app, own_tenant)) == set(people)


async def test_licences_count_only_with_a_working_subscription_and_runs_count_per_sku(
    app: AppUnderTest, own_tenant: DemoTenant
) -> None:
    await register(app, own_tenant)
    await select(app, own_tenant, [])  # every eligible user of the tenant
    await app.deliver()
    users = await roster(app, own_tenant)
    suspended = own_tenant.landmarks.suspended_license_ids
    assert suspended and not suspended & set(users)  # a licence whose plans are suspended does not count
    result = await refresh(app, own_tenant)
    by_hand: dict[str, int] = {}
    for uid in users:
        for licence in own_tenant.users[uid].assigned_licenses:
            by_hand[licence.sku_id.lower()] = by_hand.get(licence.sku_id.lower(), 0) + 1
    assert result["counts"]["licensedBySku"] == dict(sorted(by_hand.items()))


async def test_a_rule_can_require_specific_skus_and_says_which(
    app: AppUnderTest, own_tenant: DemoTenant
) -> None:
    groups = departments(own_tenant)
    await register(app, own_tenant)
    code, rules, _ = await app.http(
        "tenant_rules", "PUT", "x", route={"tenantId": own_tenant.tenant_id}, body={"requiredSkus": ["SPB"]}
    )
    assert code == 200 and rules["requiredSkus"] == [SPB]
    await select(app, own_tenant, groups)
    await app.deliver()
    users = await roster(app, own_tenant)
    holders = {
        uid
        for uid in expected_roster(own_tenant, groups)
        if any(lic.sku_id.lower() == SPB for lic in own_tenant.users[uid].assigned_licenses)
    }
    assert set(users) == holders
    other = sorted(set(expected_roster(own_tenant, groups)) - holders)
    if other:
        code, why, _ = await app.http(
            "user_explain", "GET", "x", route={"tenantId": own_tenant.tenant_id, "user": other[0]}
        )
        assert code == 200 and not why["included"]
        assert any(r["code"] == "unlicensed" and "SPB" in r["message"] for r in why["reasons"])


async def test_external_members_are_their_own_reason_and_a_rule_lets_them_in(
    app: AppUnderTest, own_tenant: DemoTenant
) -> None:
    external = sorted(own_tenant.landmarks.external_member_ids)
    assert external and own_tenant.users[external[0]].user_type == "Member"
    await register(app, own_tenant)
    await select(app, own_tenant, [])
    await app.deliver()
    assert not set(external) & set(await roster(app, own_tenant))
    code, why, _ = await app.http(
        "user_explain", "GET", "x", route={"tenantId": own_tenant.tenant_id, "user": external[0]}
    )
    assert code == 200 and [r["code"] for r in why["reasons"]][:1] == ["externalMember"]
    result = await refresh(app, own_tenant)
    assert result["counts"]["excluded"]["externalMember"] >= 1 and result["counts"]["excluded"]["guest"] >= 1

    code, _, _ = await app.http(
        "tenant_rules",
        "PUT",
        "x",
        route={"tenantId": own_tenant.tenant_id},
        body={"includeExternalMembers": True},
    )
    assert code == 200
    await refresh(app, own_tenant)
    eligible_external = {
        uid
        for uid in external
        if not excluded_by_hand(own_tenant.users[uid]) or _only_external(own_tenant, uid)
    }
    assert eligible_external and eligible_external <= set(await roster(app, own_tenant))


def _only_external(tenant: DemoTenant, uid: str) -> bool:
    """Excluded by hand only for the #EXT# in the name (an external member the rule lets in)."""
    user = tenant.users[uid]
    working = any(str(p.capability_status).lower() in ("enabled", "warning") for p in user.assigned_plans)
    local = user.user_principal_name.split("@", 1)[0].lower()
    return (
        user.user_type.lower() == "member"
        and user.account_enabled
        and bool(user.assigned_licenses)
        and working
        and user.user_purpose not in ("shared", "room", "equipment")
        and not local.startswith("svc-")
    )


async def test_a_user_graph_answers_without_a_needed_attribute_is_kept_as_is(
    app: AppUnderTest, own_tenant: DemoTenant
) -> None:
    groups = departments(own_tenant)
    await register(app, own_tenant)
    await select(app, own_tenant, groups)
    await app.deliver()
    before = await roster(app, own_tenant)
    kept = sorted(before)[0]
    own_tenant.update_user(kept, account_enabled=False)  # would be removed, were it known
    app.graph.omit_user_properties(own_tenant.tenant_id, kept, ["accountEnabled"])
    newcomer = next(
        uid
        for uid in sorted(own_tenant.users)
        if uid not in before and not excluded_by_hand(own_tenant.users[uid])
    )
    own_tenant.add_member(groups[0], newcomer)
    app.graph.omit_user_properties(own_tenant.tenant_id, newcomer, ["assignedLicenses", "userType"])

    result = await refresh(app, own_tenant)
    assert result["status"] == "succeeded" and result["counts"]["unknown"] == 2
    assert set(result["unknownUsers"]) == {kept, newcomer}
    after = await roster(app, own_tenant)
    assert after[kept] == before[kept]  # kept exactly as it was: not removed, not updated
    assert newcomer not in after  # not added on partial knowledge
    code, why, _ = await app.http(
        "user_explain", "GET", "x", route={"tenantId": own_tenant.tenant_id, "user": kept}
    )
    assert (
        code == 200
        and why["reasons"][-1]["code"] == "unknown"
        and "accountEnabled" in why["reasons"][-1]["message"]
    )

    app.graph.omit_user_properties(own_tenant.tenant_id, kept, [])
    assert (await refresh(app, own_tenant))["counts"]["removed"] == 1  # known again: now removed


# --- hidden membership ----------------------------------------------------------------------------


async def test_a_hidden_membership_group_needs_member_read_hidden(
    app: AppUnderTest, own_tenant: DemoTenant
) -> None:
    hidden = sorted(own_tenant.landmarks.hidden_membership_group_ids)
    assert hidden
    app.graph.set_token_lifetime(TOKEN_SECONDS)
    await register(app, own_tenant)
    without = [p for p in PRODUCT_PERMISSIONS if p != "Member.Read.Hidden"]
    app.graph.set_consent(own_tenant.tenant_id, "granted", without)
    code, problem = await select(app, own_tenant, [hidden[0]])
    assert (
        code == 400 and "Member.Read.Hidden" in problem["detail"] and "hidden membership" in problem["detail"]
    )
    assert problem["errors"] == [
        {"groupId": hidden[0], "problem": "hidden membership: needs Member.Read.Hidden"}
    ]
    assert problem["adminConsentUrl"] in problem["detail"]
    assert await app.queued_bodies() == []

    app.graph.set_consent(own_tenant.tenant_id, "granted", PRODUCT_PERMISSIONS)  # granted: next token has it
    await next_token(app)
    code, saved = await select(app, own_tenant, [hidden[0]])
    assert code == 200, saved
    await app.deliver()
    assert set(await roster(app, own_tenant)) == set(expected_roster(own_tenant, [hidden[0]]))


# --- paging, counts, clouds -----------------------------------------------------------------------


@pytest.fixture
def contoso(demo_tenants: list[DemoTenant]) -> DemoTenant:
    return demo_tenants[0]


async def test_a_stale_paging_link_fails_the_read_never_a_short_list(
    graph_clients: GraphClients, graph: DemoGraphServer, contoso: DemoTenant
) -> None:
    reader = DirectoryReader(graph_clients.for_tenant(contoso.tenant_id))
    big = contoso.landmarks.big_group_id
    assert len(contoso.transitive_user_ids(big)) > 999  # more than one page
    graph.set_page_token_lifetime(0.0)  # every nextLink is stale by the time it is followed
    with pytest.raises(PageExpired):  # read again once from the first page, then give up: no short list
        await reader.read_group_users([big])
    graph.set_page_token_lifetime(None)
    members = await reader.read_group_users([big])
    assert set(members.users) == set(contoso.transitive_user_ids(big))


async def test_count_answers_with_a_byte_order_mark_are_read(
    graph_clients: GraphClients, graph: DemoGraphServer, contoso: DemoTenant
) -> None:
    reader = DirectoryReader(graph_clients.for_tenant(contoso.tenant_id))
    graph.set_count_bom(True)
    assert await reader.count_tenant_users() == len(contoso.users)


async def test_an_old_load_more_cursor_is_a_clear_400(
    app_env: AppUnderTest, app_functions: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Directory_ExpiredPageToken on the group list's next page: the admin reloads the list."""
    import uuid

    from devtools.demo_tenant import build_tenant

    many = build_tenant(str(uuid.uuid4()), "Many Groups", users=200, groups=150, seed=3)
    with DemoGraphServer([many]) as server:
        app_env.functions = app_functions
        app_env.graph = server
        import shared.settings

        monkeypatch.setenv("GRAPH_BASE_URL", server.base_url)
        shared.settings.reset_settings_cache()
        await register(app_env, many)
        code, first, _ = await app_env.http("groups_list", "GET", "x", route={"tenantId": many.tenant_id})
        assert code == 200 and first["nextCursor"]
        server.expire_page_tokens(many.tenant_id)
        code, problem, _ = await app_env.http(
            "groups_list",
            "GET",
            "x",
            route={"tenantId": many.tenant_id},
            params={"cursor": first["nextCursor"]},
        )
        assert code == 400 and "load it again from the start" in problem["detail"]
