"""By-hand expectations computed from the demo tenant's raw data, independent of sync.eligibility."""

from __future__ import annotations

from devtools.demo_tenant import Tenant as DemoTenant
from devtools.demo_tenant import User as DemoUser


def excluded_by_hand(user: DemoUser) -> bool:
    """The product page's exclusions, read straight off the raw attributes: guests and external
    members (#EXT#), blocked users, users without a licence whose subscription still works (an
    assigned plan Enabled or in its Warning grace period), shared/room/equipment mailboxes and
    svc- accounts."""
    local = user.user_principal_name.split("@", 1)[0].lower()
    working_plan = any(
        str(plan.capability_status).lower() in ("enabled", "warning") for plan in user.assigned_plans
    )
    return (
        user.user_type.lower() == "guest"
        or "#ext#" in user.user_principal_name.lower()
        or not user.account_enabled
        or not (user.assigned_licenses and working_plan)
        or user.user_purpose in ("shared", "room", "equipment")
        or local.startswith("svc-")
    )


def expected_roster(tenant: DemoTenant, group_ids: list[str] | None) -> dict[str, set[str]]:
    """Eligible user id -> the selected groups they are in (mode all when group_ids is None)."""
    if group_ids is None:
        return {uid: set() for uid, user in tenant.users.items() if not excluded_by_hand(user)}
    roster: dict[str, set[str]] = {}
    for gid in group_ids:
        for uid in tenant.transitive_user_ids(gid):
            if not excluded_by_hand(tenant.users[uid]):
                roster.setdefault(uid, set()).add(gid)
    return roster
