"""Who the last full run kept off the platform and why: the `excluded` table, one partition per tenant.

A full run (not a preview, not a held run, not a nightly incremental one) replaces the tenant's
rows with the users it excluded, each with every reason and the exact rule behind each; only rows
that changed are written. Only `sync.apply` writes here; the API, the CLI and the page read it.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from datetime import datetime
from typing import Any, ClassVar

import msgspec

from shared.storage import EXCLUDED_TABLE, SingleTableStore
from sync.models import ExcludedUser
from sync.roster import _moment, submit_transactions, text_page
from sync.table_wire import Delete, Upsert

_FIELDS = ["RowKey", "upn", "displayName", "mail", "department", "reason", "reasons", "rules", "groups",
           "runId", "seenAt", "sig"]  # fmt: skip


def _signature(user: ExcludedUser) -> str:
    """What a row says, without when and by which run: rows whose signature is unchanged stay as they are."""
    plain = msgspec.structs.replace(user, run_id=None, seen_at=None)
    return hashlib.sha256(msgspec.json.encode(plain)).hexdigest()[:24]


def _to_entity(tenant_id: str, user: ExcludedUser) -> dict[str, Any]:
    entity: dict[str, Any] = {
        "PartitionKey": tenant_id,
        "RowKey": user.id,
        "upn": user.user_principal_name,
        "reason": user.reason,
        "reasons": ",".join(user.reasons),
        "rules": json.dumps(list(user.rules)),
        "groups": ",".join(user.groups),
        "sig": _signature(user),
    }
    for key, value in (
        ("displayName", user.display_name),
        ("mail", user.mail),
        ("department", user.department),
        ("runId", user.run_id),
        ("seenAt", user.seen_at),
    ):
        if value is not None:
            entity[key] = value
    return entity


def _from_entity(entity: dict[str, Any]) -> ExcludedUser:
    def split(key: str) -> tuple[str, ...]:
        text = entity.get(key) or ""
        return tuple(text.split(",")) if text else ()

    return ExcludedUser(
        id=entity["RowKey"],
        user_principal_name=entity.get("upn", ""),
        display_name=entity.get("displayName"),
        mail=entity.get("mail"),
        department=entity.get("department"),
        reason=entity.get("reason", ""),
        reasons=split("reasons"),
        rules=tuple(json.loads(entity.get("rules") or "[]")),
        groups=split("groups"),
        run_id=entity.get("runId"),
        seen_at=_moment(entity.get("seenAt")),
    )


class ExcludedStore(SingleTableStore):
    """Read and replace one tenant's excluded users."""

    TABLE: ClassVar[str] = EXCLUDED_TABLE

    async def read_all(self, tenant_id: str) -> list[ExcludedUser]:
        """Every excluded user of the tenant, in id order."""
        query = self._table.query_entities(
            "PartitionKey eq @pk", parameters={"pk": tenant_id}, select=_FIELDS, results_per_page=1000
        )
        return [_from_entity(entity) async for entity in query]

    async def replace(
        self, tenant_id: str, users: Sequence[ExcludedUser], *, run_id: str, now: datetime
    ) -> int:
        """Make the tenant's rows exactly `users` (sync.apply only); returns the rows written or deleted."""
        query = self._table.query_entities(
            "PartitionKey eq @pk", parameters={"pk": tenant_id}, select=["RowKey", "sig"]
        )
        stored = {entity["RowKey"]: entity.get("sig") async for entity in query}
        operations: list[Upsert | Delete] = []
        for user in users:
            stamped = msgspec.structs.replace(user, run_id=run_id, seen_at=now)
            if stored.get(user.id) != _signature(stamped):
                operations.append(Upsert(_to_entity(tenant_id, stamped)))
        wanted = {user.id for user in users}
        operations.extend(Delete(tenant_id, uid) for uid in stored if uid not in wanted)
        await submit_transactions(self._table, operations, len(operations))
        return len(operations)

    async def list_users(
        self,
        tenant_id: str,
        *,
        reason: str | None = None,
        search: str | None = None,
        after: str | None = None,
        limit: int = 100,
    ) -> tuple[list[ExcludedUser], str | None]:
        """A page of excluded users in id order, by first reason and text; the cursor is the last id."""
        clauses, params = ["PartitionKey eq @pk"], {"pk": tenant_id}
        if reason:
            clauses.append("reason eq @reason")
            params["reason"] = reason
        if after:
            clauses.append("RowKey gt @after")
            params["after"] = after
        query = self._table.query_entities(" and ".join(clauses), parameters=params, select=_FIELDS)
        return await text_page((_from_entity(entity) async for entity in query), search, limit)
