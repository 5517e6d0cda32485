"""Demo tenant: a Microsoft Graph v1.0 look-alike server and a seeded directory generator.

Used by tests, benchmarks and `make run` instead of Microsoft's cloud, which cannot be
reached here. The real msgraph-sdk talks HTTP to `DemoGraphServer`, which also plays the
Entra token endpoint and admin consent endpoint the credential in `shared/demo_credential.py` uses.
Change notifications (`/subscriptions`, the validation handshake, delivery to the subscriber's
webhook, lifecycle events) are in `subscriptions`.
"""

from devtools.demo_tenant.auth import DEFAULT_PERMISSIONS
from devtools.demo_tenant.faults import RequestRecord
from devtools.demo_tenant.generator import (
    DEMO_TENANTS,
    DemoTenantSpec,
    build_demo_tenants,
    build_tenant,
    pick_groups_covering,
)
from devtools.demo_tenant.model import (
    AssignedLicense,
    AssignedPlan,
    Device,
    Group,
    Landmarks,
    MembershipRefused,
    OrgContact,
    ServicePrincipal,
    Tenant,
    User,
)
from devtools.demo_tenant.server import DemoGraphServer
from devtools.demo_tenant.wire import GraphError

__all__ = [
    "DEFAULT_PERMISSIONS",
    "DEMO_TENANTS",
    "AssignedLicense",
    "AssignedPlan",
    "DemoGraphServer",
    "DemoTenantSpec",
    "Device",
    "GraphError",
    "Group",
    "Landmarks",
    "MembershipRefused",
    "OrgContact",
    "RequestRecord",
    "ServicePrincipal",
    "Tenant",
    "User",
    "build_demo_tenants",
    "build_tenant",
    "pick_groups_covering",
]
