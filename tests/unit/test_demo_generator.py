"""The demo tenant generator: determinism, landmarks, Entra's membership rules, licences, and the
Tenant mutation helpers."""

from __future__ import annotations

import msgspec
import pytest

from devtools.demo_tenant import (
    DEMO_TENANTS,
    AssignedLicense,
    MembershipRefused,
    Tenant,
    build_demo_tenants,
    build_tenant,
    pick_groups_covering,
)
from devtools.demo_tenant.licensing import ENTERPRISEPACK, SKUS, SPB, SPE_E3, SPE_E5

CONTOSO_ID = DEMO_TENANTS[0].tenant_id


@pytest.fixture(scope="module")
def contoso() -> Tenant:
    """The default demo tenant (2,000 users, 60 groups); tests here must not mutate it."""
    return build_demo_tenants()[0]


def fresh_contoso() -> Tenant:
    """A private copy of the default tenant for tests that mutate it."""
    return build_demo_tenants()[0]


def snapshot(tenant: Tenant) -> dict[str, object]:
    """Everything generated, as plain data, for comparing two builds."""
    return {
        "users": [msgspec.to_builtins(user) for user in tenant.users.values()],
        "groups": [msgspec.to_builtins(group) for group in tenant.groups.values()],
        "devices": [msgspec.to_builtins(device) for device in tenant.devices.values()],
        "contacts": [msgspec.to_builtins(contact) for contact in tenant.org_contacts.values()],
        "members": tenant.members,
        "landmarks": msgspec.to_builtins(tenant.landmarks),
    }


def test_same_seed_builds_the_same_tenant() -> None:
    first = build_tenant(CONTOSO_ID, "Contoso", users=500, groups=30, seed=7)
    second = build_tenant(CONTOSO_ID, "Contoso", users=500, groups=30, seed=7)
    assert snapshot(first) == snapshot(second)


def test_another_seed_builds_different_content_with_the_same_ids() -> None:
    first = build_tenant(CONTOSO_ID, "Contoso", users=500, groups=30, seed=7)
    second = build_tenant(CONTOSO_ID, "Contoso", users=500, groups=30, seed=8)
    assert list(first.users) == list(second.users)  # ids are uuid5 of tenant and ordinal
    assert snapshot(first) != snapshot(second)


def test_demo_tenants_have_fixed_ids_and_sizes() -> None:
    contoso, fabrikam = build_demo_tenants()
    assert contoso.tenant_id == "840fa9a3-916c-42ac-99ab-a1e9158955c5"
    assert (contoso.display_name, len(contoso.users), len(contoso.groups)) == ("Contoso", 2000, 60)
    assert fabrikam.tenant_id == "8efef433-65df-437f-9283-e2a918a80821"
    assert (fabrikam.display_name, len(fabrikam.users), len(fabrikam.groups)) == ("Fabrikam", 300, 25)
    assert not set(contoso.users) & set(fabrikam.users)


def test_big_group_has_more_than_999_transitive_users(contoso: Tenant) -> None:
    big = contoso.landmarks.big_group_id
    user_ids = contoso.transitive_user_ids(big)
    assert len(user_ids) > 999
    assert len(user_ids) == len(set(user_ids))
    # The users come through nested office groups, not as direct members.
    assert len(contoso.direct_member_ids(big)) < 20


def test_empty_group_is_empty(contoso: Tenant) -> None:
    empty = contoso.landmarks.empty_group_id
    assert contoso.direct_member_ids(empty) == []
    assert contoso.transitive_member_ids(empty) == ()


def test_cycle_expands_without_looping_and_without_the_group_itself(contoso: Tenant) -> None:
    a, b, c = contoso.landmarks.cycle_group_ids
    assert c in contoso.direct_member_ids(a)
    assert a in contoso.direct_member_ids(b)
    assert b in contoso.direct_member_ids(c)
    for group_id in (a, b, c):
        members = contoso.transitive_member_ids(group_id)
        assert group_id not in members
        assert len(members) == len(set(members))
        assert set(contoso.landmarks.cycle_group_ids) - {group_id} <= set(members)
    # Every group in the cycle reaches the same users.
    assert set(contoso.transitive_user_ids(a)) == set(contoso.transitive_user_ids(b))


def test_nested_chain_is_three_deep(contoso: Tenant) -> None:
    top, middle, bottom = contoso.landmarks.nested_chain
    assert middle in contoso.direct_member_ids(top)
    assert bottom in contoso.direct_member_ids(middle)
    assert bottom not in contoso.direct_member_ids(top)
    bottom_users = set(contoso.transitive_user_ids(bottom))
    assert bottom_users
    assert bottom_users <= set(contoso.transitive_user_ids(top))


def test_mixed_group_holds_every_kind_of_directory_object(contoso: Tenant) -> None:
    kinds = {
        contoso.kind_of(member_id)
        for member_id in contoso.direct_member_ids(contoso.landmarks.mixed_members_group_id)
    }
    assert kinds == {"user", "group", "device", "orgContact", "servicePrincipal"}


def test_group_kinds_cover_all_four(contoso: Tenant) -> None:
    kinds = set()
    for group in contoso.groups.values():
        if group.group_types == ("Unified",):
            assert group.mail_enabled and not group.security_enabled
            kinds.add("microsoft365")
        elif group.mail_enabled and group.security_enabled:
            kinds.add("mailEnabledSecurity")
        elif group.mail_enabled:
            kinds.add("distribution")
        else:
            assert group.security_enabled and group.mail is None
            kinds.add("security")
    assert kinds == {"microsoft365", "security", "mailEnabledSecurity", "distribution"}
    assert set(contoso.landmarks.department_group_ids) >= {"Sales", "Engineering", "HR", "Finance"}


def test_guests_look_like_real_b2b_guests(contoso: Tenant) -> None:
    landmarks = contoso.landmarks
    assert landmarks.guest_ids
    for user_id in landmarks.guest_ids:
        user = contoso.users[user_id]
        assert user.user_type == "Guest"
        assert user.user_principal_name.endswith("#EXT#@contoso.onmicrosoft.com")
        assert user.mail and user.user_principal_name.startswith(user.mail.replace("@", "_"))
    (guest_like_id,) = landmarks.guest_like_upn_ids
    guest_like = contoso.users[guest_like_id]
    assert guest_like.user_type == "Member" and "#EXT#" in guest_like.user_principal_name
    assert guest_like_id not in landmarks.ineligible_ids
    assert guest_like_id in contoso.direct_member_ids(landmarks.guests_group_id)


def test_ineligible_users_have_the_stated_properties(contoso: Tenant) -> None:
    landmarks = contoso.landmarks
    users = contoso.users
    assert landmarks.disabled_ids and all(not users[uid].account_enabled for uid in landmarks.disabled_ids)
    assert all(users[uid].assigned_licenses for uid in landmarks.disabled_ids)
    for user_id in landmarks.unlicensed_ids:
        assert users[user_id].assigned_licenses == () and users[user_id].account_enabled
        assert users[user_id].user_purpose is None  # no mailbox
    for user_id in landmarks.shared_mailbox_ids:
        mailbox = users[user_id]
        # Only mailboxSettings.userPurpose gives these away.
        assert mailbox.user_purpose == "shared" and mailbox.account_enabled and mailbox.assigned_licenses
        assert mailbox.user_type == "Member" and mailbox.given_name is None and mailbox.surname is None
    assert landmarks.room_ids and all(users[uid].user_purpose == "room" for uid in landmarks.room_ids)
    assert landmarks.equipment_ids and all(
        users[uid].user_purpose == "equipment" for uid in landmarks.equipment_ids
    )
    for user_id in landmarks.service_account_ids:
        account = users[user_id]
        assert (
            account.user_principal_name.startswith("svc-")
            and account.account_enabled
            and account.assigned_licenses
        )
    assert landmarks.no_mail_ids and all(users[uid].mail is None for uid in landmarks.no_mail_ids)
    assert not landmarks.no_mail_ids & landmarks.ineligible_ids


def test_ineligible_share_is_about_ten_percent_and_categories_are_disjoint(contoso: Tenant) -> None:
    landmarks = contoso.landmarks
    categories = [
        landmarks.guest_ids,
        landmarks.disabled_ids,
        landmarks.unlicensed_ids,
        landmarks.shared_mailbox_ids,
        landmarks.room_ids,
        landmarks.equipment_ids,
        landmarks.service_account_ids,
    ]
    assert sum(len(category) for category in categories) == len(landmarks.ineligible_ids)
    share = len(landmarks.ineligible_ids) / len(contoso.users)
    assert 0.08 <= share <= 0.15


def test_users_sit_in_several_groups_and_have_departments(contoso: Tenant) -> None:
    normal = [uid for uid in contoso.users if uid not in contoso.landmarks.ineligible_ids]
    in_many = [uid for uid in normal if len(contoso.transitive_member_of(uid)) >= 3]
    assert len(in_many) > len(normal) // 2
    assert all(contoso.users[uid].department for uid in normal[:200])


def test_fabrikam_has_the_same_landmarks() -> None:
    fabrikam = build_demo_tenants()[1]
    landmarks = fabrikam.landmarks
    assert landmarks.big_group_id and landmarks.empty_group_id and len(landmarks.nested_chain) == 3
    assert landmarks.guest_ids and landmarks.shared_mailbox_ids and landmarks.service_account_ids
    assert all(
        user.user_principal_name.endswith(("@fabrikam.com", "#EXT#@fabrikam.onmicrosoft.com"))
        for user in fabrikam.users.values()
    )


def test_too_small_tenants_are_refused() -> None:
    with pytest.raises(ValueError):
        build_tenant(CONTOSO_ID, "Tiny", users=10)
    with pytest.raises(ValueError):
        build_tenant(CONTOSO_ID, "Tiny", users=100, groups=5)


def test_membership_changes_invalidate_the_transitive_cache() -> None:
    tenant = fresh_contoso()
    top, _, bottom = tenant.landmarks.nested_chain
    outsider = next(uid for uid in tenant.users if uid not in tenant.transitive_member_ids(top))
    before = tenant.transitive_user_ids(top)
    revision = tenant.revision
    assert tenant.add_member(bottom, outsider)
    assert outsider in tenant.transitive_user_ids(top)
    assert tenant.add_member(bottom, outsider) is False
    assert tenant.remove_member(bottom, outsider)
    assert tenant.transitive_user_ids(top) == before
    assert tenant.revision == revision + 2
    changes = list(tenant.changes_since(revision) or ())
    assert [(change.object_id, change.member_id, change.member_added) for change in changes] == [
        (bottom, outsider, True),
        (bottom, outsider, False),
    ]


def test_delete_group_drops_it_from_its_parents() -> None:
    tenant = fresh_contoso()
    top, middle, bottom = tenant.landmarks.nested_chain
    bottom_only = (
        set(tenant.transitive_user_ids(bottom))
        - set(tenant.direct_member_ids(top))
        - set(tenant.direct_member_ids(middle))
    )
    assert tenant.delete_group(bottom)
    assert bottom not in tenant.groups
    assert bottom not in tenant.direct_member_ids(middle)
    assert not bottom_only & set(tenant.transitive_user_ids(top))
    assert tenant.delete_group(bottom) is False


def test_user_updates_replace_the_struct() -> None:
    tenant = fresh_contoso()
    user_id = next(iter(tenant.users))
    original = tenant.users[user_id]
    updated = tenant.disable_user(user_id)
    assert updated is tenant.users[user_id] and updated is not original
    assert updated.account_enabled is False and original.account_enabled is True
    tenant.set_user_attribute(user_id, "department", "Legal")
    assert tenant.users[user_id].department == "Legal"
    assert tenant.user_by_principal_name(original.user_principal_name.upper()) is tenant.users[user_id]
    assert tenant.delete_user(user_id)
    assert all(user_id not in members for members in tenant.members.values())


def test_large_tenant_builds_and_fifty_groups_cover_about_sixty_percent() -> None:
    tenant = build_tenant(
        "e7d4b8e0-f92d-4608-91d5-03bd65696376", "Northwind", users=100_000, groups=2000, seed=3
    )
    assert len(tenant.users) == 100_000 and len(tenant.groups) == 2000
    assert len(tenant.landmarks.external_member_ids) == len(tenant.landmarks.suspended_license_ids) == 1000
    sizes = sorted((len(tenant.direct_member_ids(group_id)) for group_id in tenant.groups), reverse=True)
    assert sizes[5] > 1000  # department and office groups of thousands
    assert sizes[len(sizes) // 2] < 100  # most groups are small teams
    chosen = pick_groups_covering(tenant, 0.6, 50)
    assert len(chosen) == len(set(chosen)) == 50
    covered: set[str] = set()
    for group_id in chosen:
        covered.update(tenant.transitive_user_ids(group_id))
    assert 0.55 <= len(covered) / len(tenant.users) <= 0.65


def test_no_group_sits_in_a_microsoft_365_group_and_nesting_follows_entra(contoso: Tenant) -> None:
    for tenant in (contoso, build_tenant(CONTOSO_ID, "Northwind", users=20_000, groups=400, seed=5)):
        for group_id, member_ids in tenant.members.items():
            kind = tenant.groups[group_id].kind
            for member_id in member_ids:
                tenant.check_member(group_id, member_id)  # raises MembershipRefused otherwise
                if kind == "microsoft365":
                    assert tenant.kind_of(member_id) == "user"
                if member_id in tenant.groups:
                    assert tenant.groups[member_id].kind != "microsoft365"


def test_the_model_refuses_a_group_in_a_microsoft_365_group() -> None:
    tenant = fresh_contoso()
    unified = next(gid for gid, g in tenant.groups.items() if g.kind == "microsoft365")
    with pytest.raises(MembershipRefused):
        tenant.add_member(unified, tenant.landmarks.nested_chain[2])
    with pytest.raises(MembershipRefused):
        tenant.add_member(tenant.landmarks.nested_chain[0], unified)  # nor is one a member of a group


def test_hidden_membership_groups_are_microsoft_365_groups(contoso: Tenant) -> None:
    hidden = contoso.landmarks.hidden_membership_group_ids
    assert len(hidden) == 2
    assert {gid for gid, g in contoso.groups.items() if g.visibility == "HiddenMembership"} == set(hidden)
    for group_id in hidden:
        assert contoso.groups[group_id].kind == "microsoft365"
        assert contoso.direct_member_ids(group_id)


def test_assigned_plans_are_consistent_with_assigned_licences(contoso: Tenant) -> None:
    suspended = contoso.landmarks.suspended_license_ids
    assert suspended and not suspended & contoso.landmarks.ineligible_ids
    statuses = set()
    for user in contoso.users.values():
        assert all(license_.sku_id in SKUS for license_ in user.assigned_licenses)
        expected = {
            plan.plan_id
            for license_ in user.assigned_licenses
            for plan in SKUS[license_.sku_id].plans
            if plan.plan_id not in license_.disabled_plans
        }
        assert {plan.service_plan_id for plan in user.assigned_plans} == expected
        statuses |= {plan.capability_status for plan in user.assigned_plans}
        if user.id in suspended:
            assert user.assigned_licenses and user.assigned_plans
            assert {p.capability_status for p in user.assigned_plans} <= {"Suspended", "LockedOut", "Deleted"}
    assert statuses >= {"Enabled", "Warning", "Suspended", "LockedOut", "Deleted"}
    skus = {license_.sku_id for user in contoso.users.values() for license_ in user.assigned_licenses}
    assert {SPE_E3.sku_id, SPE_E5.sku_id, ENTERPRISEPACK.sku_id} <= skus
    fabrikam = build_demo_tenants()[1]  # a small company: Business Premium
    assert SPB.sku_id in {lic.sku_id for u in fabrikam.users.values() for lic in u.assigned_licenses}
    assert any(lic.disabled_plans for u in contoso.users.values() for lic in u.assigned_licenses)


def test_set_licenses_derives_plans_in_the_given_state() -> None:
    tenant = fresh_contoso()
    user_id = next(iter(tenant.users))
    user = tenant.set_licenses(user_id, [AssignedLicense(sku_id=SPB.sku_id)], "Suspended")
    assert {p.service_plan_id for p in user.assigned_plans} == {plan.plan_id for plan in SPB.plans}
    assert {p.capability_status for p in user.assigned_plans} == {"Suspended"}
    assert tenant.set_licenses(user_id, []).assigned_plans == ()


def test_external_members_are_synced_members_not_guests(contoso: Tenant) -> None:
    external = contoso.landmarks.external_member_ids
    assert len(external) >= 2
    assert not external & contoso.landmarks.guest_ids and not external & contoso.landmarks.guest_like_upn_ids
    assert not external & contoso.landmarks.ineligible_ids
    for user_id in external:
        user = contoso.users[user_id]
        assert user.user_type == "Member" and "#EXT#@contoso.onmicrosoft.com" in user.user_principal_name
        assert user.mail and user.mail.endswith("@fabrikam.com") and user.user_purpose is None
        assert contoso.transitive_member_of(user_id)  # they keep their groups


def test_fixed_demo_tenants_keep_their_group_ids_and_names(contoso: Tenant) -> None:
    all_staff = contoso.groups["df0b5b89-1863-51ec-8945-260137bf4161"]
    assert (all_staff.display_name, all_staff.kind) == ("All Staff", "mailEnabledSecurity")
    names = [group.display_name for group in contoso.groups.values()]
    assert names[:4] == ["Office - Redmond", "Office - London", "Office - Singapore", "All Staff"]
    assert "Marketing - Willow" in names and "Engineering - Redwood" in names
