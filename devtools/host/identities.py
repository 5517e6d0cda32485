"""Who can sign in to the dev host's App Service Authentication stand-in. Data only: the claims
each identity carries are built from these fields by `devtools.host.easyauth`.

Every id here is made up; the tenant ids of Contoso and Fabrikam are the demo tenant's own.
"""

from __future__ import annotations

from dataclasses import dataclass

from devtools.demo_tenant import DEMO_TENANTS

# Entra role template ids, as they appear in the `wids` claim.
GLOBAL_ADMINISTRATOR = "62e90394-69f5-4237-9190-012177145e10"
MEMBER_USER = "b79fbf4d-3ef9-4689-8143-76b194e85509"  # the default "User" role: every member has it

# The operator's home tenant when HOME_TENANT_ID is not set.
DEV_HOME_TENANT_ID = "aa8843fa-9556-4492-a1cb-79b096247291"
PARTNER_TENANT_ID = "864a8f6d-4f63-412f-ab97-f1e2ad096f10"
CONTOSO_TENANT_ID, FABRIKAM_TENANT_ID = (spec.tenant_id for spec in DEMO_TENANTS)


@dataclass(frozen=True)
class DevIdentity:
    """One account on the dev sign-in page."""

    key: str  # what /.auth/login/dev takes
    display_name: str
    user_principal_name: str
    object_id: str
    tenant_id: str | None  # None: the operator's home tenant (HOME_TENANT_ID, else DEV_HOME_TENANT_ID)
    description: str
    app_roles: tuple[str, ...] = ()
    directory_roles: tuple[str, ...] = (MEMBER_USER,)
    groups: tuple[str, ...] = ()  # group ids in the `groups` claim (partner grants may name a group)


DEV_IDENTITIES: tuple[DevIdentity, ...] = (
    DevIdentity(
        key="operator",
        display_name="Dev Operator",
        user_principal_name="operator@groupsync.example",
        object_id="43e8c286-1bdf-4b6d-89de-deffd2c5861a",
        tenant_id=None,
        description="operator in the home tenant: every tenant",
        app_roles=("Sync.Operator",),
    ),
    DevIdentity(
        key="contoso-admin",
        display_name="Contoso Global Admin",
        user_principal_name="it.admin@contoso.com",
        object_id="56c49421-8e0d-49a0-9dec-18904840bda3",
        tenant_id=CONTOSO_TENANT_ID,
        description="Contoso's Global Administrator: Contoso only",
        directory_roles=(GLOBAL_ADMINISTRATOR, MEMBER_USER),
    ),
    DevIdentity(
        key="contoso-user",
        display_name="Contoso User",
        user_principal_name="pat.user@contoso.com",
        object_id="05e37587-1a19-469b-a87d-fb99c608398a",
        tenant_id=CONTOSO_TENANT_ID,
        description="a Contoso user without an admin role: nothing",
    ),
    DevIdentity(
        key="fabrikam-admin",
        display_name="Fabrikam Global Admin",
        user_principal_name="it.admin@fabrikam.com",
        object_id="e4095c58-cad7-4da3-af46-092b8cb19fe9",
        tenant_id=FABRIKAM_TENANT_ID,
        description="Fabrikam's Global Administrator: Fabrikam only",
        directory_roles=(GLOBAL_ADMINISTRATOR, MEMBER_USER),
    ),
    DevIdentity(
        key="fabrikam-user",
        display_name="Fabrikam User",
        user_principal_name="sam.user@fabrikam.com",
        object_id="3b571aad-817b-44d0-a941-d0a213f84c53",
        tenant_id=FABRIKAM_TENANT_ID,
        description="a Fabrikam user without an admin role: nothing",
    ),
    DevIdentity(
        key="partner",
        display_name="MSP Partner",
        user_principal_name="tech@partner-msp.example",
        object_id="ad6eb101-5d80-426b-8b7c-005872201ace",
        tenant_id=PARTNER_TENANT_ID,
        description="a partner in its own tenant: the tenants an operator granted",
    ),
)
