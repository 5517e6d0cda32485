"""Partners' grants in Table Storage (table `grants`): who outside a customer's own tenant may act on it.

One row per principal: PartitionKey the principal's own tenant id (the token's `tid`), RowKey the
user's object id or the group's id (object ids are unique within a tenant, whatever their type),
the customer tenant ids as a JSON list. Only operators write grants (API and CLI).
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import Any

import msgspec
from azure.core.exceptions import ResourceNotFoundError
from azure.data.tables import UpdateMode

from shared.storage import GRANTS_TABLE, SingleTableStore, plain_value
from sync.models import Grant, GrantKind


class GrantStore(SingleTableStore):
    """Read and write the grants of every partner."""

    TABLE = GRANTS_TABLE

    async def list_all(self) -> list[Grant]:
        """Every grant, by principal tenant and id."""
        return sorted(
            [_from_entity(e) async for e in self._table.list_entities()],
            key=lambda g: (g.principal_tenant_id, g.principal_id),
        )

    async def get(self, principal_tenant_id: str, principal_id: str) -> Grant | None:
        """One principal's grant, or None."""
        try:
            entity = await self._table.get_entity(principal_tenant_id, principal_id)
        except ResourceNotFoundError:
            return None
        return _from_entity(entity)

    async def matching(self, tenant_id: str, object_id: str, groups: Iterable[str]) -> list[Grant]:
        """The grants that name this caller: their own object id, or a group among their `groups`."""
        wanted = {object_id, *groups}
        query = self._table.query_entities("PartitionKey eq @pk", parameters={"pk": tenant_id})
        found = [_from_entity(e) async for e in query]
        return [
            g
            for g in found
            if g.principal_id in wanted and (g.kind is GrantKind.GROUP or g.principal_id == object_id)
        ]

    async def put(self, grant: Grant) -> None:
        """Create or replace a principal's grant."""
        entity: dict[str, Any] = {
            "PartitionKey": grant.principal_tenant_id,
            "RowKey": grant.principal_id,
            "kind": str(grant.kind),
            "tenants": msgspec.json.encode(list(grant.tenants)).decode(),
        }
        if grant.name is not None:
            entity["name"] = grant.name
        if grant.granted_by is not None:
            entity["grantedBy"] = grant.granted_by
        if grant.granted_at is not None:
            entity["grantedAt"] = grant.granted_at
        await self._table.upsert_entity(entity, mode=UpdateMode.REPLACE)

    async def delete(self, principal_tenant_id: str, principal_id: str) -> None:
        """Remove a principal's grant (nothing when there is none)."""
        await self._table.delete_entity(principal_tenant_id, principal_id)


def _from_entity(entity: dict[str, Any]) -> Grant:
    granted_at: datetime | None = plain_value(entity.get("grantedAt"))
    return Grant(
        principal_tenant_id=entity["PartitionKey"],
        principal_id=entity["RowKey"],
        kind=GrantKind(entity.get("kind", GrantKind.USER)),
        tenants=tuple(msgspec.json.decode(entity.get("tenants") or "[]", type=list[str])),
        name=entity.get("name"),
        granted_by=entity.get("grantedBy"),
        granted_at=granted_at,
    )
