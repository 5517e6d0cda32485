"""Licences the demo tenants assign: real SKU and service plan ids, and the assignedPlans they imply.

Ids come from Microsoft's "Product names and service plan identifiers for licensing" list. A
user's `assignedPlans` follows from `assignedLicenses`: every service plan of each SKU except the
licence's disabled plans, all with one capabilityStatus (Enabled, Warning, Suspended, LockedOut,
Deleted: the states a subscription passes through when it is not renewed).
"""

from __future__ import annotations

from typing import Literal

import msgspec

CapabilityStatus = Literal["Enabled", "Warning", "Suspended", "LockedOut", "Deleted"]
CAPABILITY_STATUSES: tuple[CapabilityStatus, ...] = (
    "Enabled",
    "Warning",
    "Suspended",
    "LockedOut",
    "Deleted",
)


class ServicePlan(msgspec.Struct, frozen=True):
    """One service plan of a SKU: its name, id and the `service` assignedPlans reports."""

    name: str
    plan_id: str
    service: str


class Sku(msgspec.Struct, frozen=True):
    """A licence product (SKU) and the service plans it carries."""

    part_number: str
    sku_id: str
    plans: tuple[ServicePlan, ...]


EXCHANGE_ENTERPRISE = ServicePlan("EXCHANGE_S_ENTERPRISE", "efb87545-963c-4e0d-99df-69c6916d9eb0", "exchange")
EXCHANGE_STANDARD = ServicePlan("EXCHANGE_S_STANDARD", "9aaf7827-d63c-4b61-89c3-182f06f82e5c", "exchange")
SKYPE_STANDARD = ServicePlan(
    "MCOSTANDARD", "0feaeb32-d00e-4d66-bd5a-43b5b83db82c", "MicrosoftCommunicationsOnline"
)
TEAMS = ServicePlan("TEAMS1", "57ff2da0-773e-42df-b2af-ffb7a2317929", "TeamspaceAPI")
OFFICE_APPS = ServicePlan("OFFICESUBSCRIPTION", "43de0ff5-c92c-492b-9116-175376d08c38", "MicrosoftOffice")
SHAREPOINT_ENTERPRISE = ServicePlan(
    "SHAREPOINTENTERPRISE", "5dbe027f-2339-4123-9542-606e4d348a72", "SharePoint"
)
POWER_BI = ServicePlan("BI_AZURE_P2", "70d33638-9c74-4d01-bfd3-562de28bd4ba", "PowerBI")

SPE_E3 = Sku(
    "SPE_E3",
    "05e9a617-0261-4cee-bb44-138d3ef5d965",
    (EXCHANGE_ENTERPRISE, SKYPE_STANDARD, TEAMS, OFFICE_APPS, SHAREPOINT_ENTERPRISE),
)
SPE_E5 = Sku(
    "SPE_E5",
    "06ebc4ee-1bb5-47dd-8120-11324bc54e06",
    (EXCHANGE_ENTERPRISE, SKYPE_STANDARD, TEAMS, OFFICE_APPS, SHAREPOINT_ENTERPRISE, POWER_BI),
)
SPB = Sku("SPB", "cbdc14ab-d96c-4c30-b9f4-6ada7cdc1d46", (EXCHANGE_STANDARD, SKYPE_STANDARD, TEAMS))
ENTERPRISEPACK = Sku(
    "ENTERPRISEPACK",
    "6fd2c87f-b296-42f0-b197-1e91e994b900",
    (EXCHANGE_ENTERPRISE, SKYPE_STANDARD, TEAMS, OFFICE_APPS, SHAREPOINT_ENTERPRISE),
)
POWER_BI_PRO = Sku("POWER_BI_PRO", "f8a1db68-be16-40ed-86d5-cb42ce701560", (POWER_BI,))

SKUS: dict[str, Sku] = {sku.sku_id: sku for sku in (SPE_E3, SPE_E5, SPB, ENTERPRISEPACK, POWER_BI_PRO)}
"""Every SKU the demo tenants assign, by skuId."""
