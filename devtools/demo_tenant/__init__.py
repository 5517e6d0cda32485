"""Demo tenant: a Microsoft Graph v1.0 look-alike server and a seeded directory generator.

Used by tests, benchmarks and `make run` instead of Microsoft's cloud, which cannot be
reached here. The real msgraph-sdk talks HTTP to `DemoGraphServer`.
"""

from devtools.demo_tenant.generator import (
    DEMO_TENANTS,
    DemoTenantSpec,
    build_demo_tenants,
    build_tenant,
    pick_groups_covering,
)
from devtools.demo_tenant.model import (
    AssignedLicense,
    Device,
    Group,
    Landmarks,
    OrgContact,
    ServicePrincipal,
    Tenant,
    User,
)
from devtools.demo_tenant.server import TOKEN_PREFIX, DemoGraphServer, GraphError, RequestRecord

__all__ = [
    "DEMO_TENANTS",
    "TOKEN_PREFIX",
    "AssignedLicense",
    "DemoGraphServer",
    "DemoTenantSpec",
    "Device",
    "GraphError",
    "Group",
    "Landmarks",
    "OrgContact",
    "RequestRecord",
    "ServicePrincipal",
    "Tenant",
    "User",
    "build_demo_tenants",
    "build_tenant",
    "pick_groups_covering",
]
