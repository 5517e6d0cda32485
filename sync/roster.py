"""The platform's user store: the `users` table, one partition per tenant.

Writes go in entity-group transactions of up to 100 rows (Table Storage's ceiling, one
partition per transaction), a few in flight at once.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from datetime import datetime
from typing import Any, Protocol, TypeVar

from azure.core.exceptions import ResourceNotFoundError
from azure.data.tables import TransactionOperation, UpdateMode
from azure.data.tables.aio import TableClient

from shared.settings import Settings
from shared.storage import USERS_TABLE, plain_datetime, table_client
from sync.models import RosterStatus, RosterUser
from sync.validation import is_object_id

TRANSACTION_SIZE = 100  # Table Storage: at most 100 operations per transaction
_PARALLEL_TRANSACTIONS = 4
_FIELDS = ["RowKey", "upn", "displayName", "mail", "department", "jobTitle", "groups", "status",
           "addedAt", "updatedAt", "removedAt", "removedByRun", "purposeCheckedAt"]  # fmt: skip


def _to_entity(tenant_id: str, user: RosterUser) -> dict[str, Any]:
    entity: dict[str, Any] = {
        "PartitionKey": tenant_id,
        "RowKey": user.id,
        "upn": user.user_principal_name,
        "upnLower": user.user_principal_name.lower(),
        "groups": ",".join(user.groups),  # ids only: 1,000 groups stay well under 64 KiB
        "status": str(user.status),
    }
    for key, value in (
        ("displayName", user.display_name),
        ("mail", user.mail),
        ("department", user.department),
        ("jobTitle", user.job_title),
        ("addedAt", user.added_at),
        ("updatedAt", user.updated_at),
        ("removedAt", user.removed_at),
        ("purposeCheckedAt", user.purpose_checked_at),
    ):
        if value is not None:
            entity[key] = value
    if user.status is RosterStatus.REMOVED and user.removed_by_run:
        # Which run removed the user, so that run's removals can be undone in one call
        # (a run record keeps only a sample of ids). Active rows never carry it.
        entity["removedByRun"] = user.removed_by_run
    return entity


def _moment(value: object) -> datetime | None:
    """A timestamp property: Edm.DateTime, or ISO 8601 text in rows written before that."""
    if value is None:
        return None
    if isinstance(value, datetime):
        return plain_datetime(value)
    return datetime.fromisoformat(str(value))


def _from_entity(entity: dict[str, Any]) -> RosterUser:
    groups = entity.get("groups") or ""
    return RosterUser(
        id=entity["RowKey"],
        user_principal_name=entity.get("upn", ""),
        display_name=entity.get("displayName"),
        mail=entity.get("mail"),
        department=entity.get("department"),
        job_title=entity.get("jobTitle"),
        groups=tuple(groups.split(",")) if groups else (),
        status=RosterStatus(entity.get("status", "active")),
        added_at=_moment(entity.get("addedAt")),
        updated_at=_moment(entity.get("updatedAt")),
        removed_at=_moment(entity.get("removedAt")),
        removed_by_run=entity.get("removedByRun"),
        purpose_checked_at=_moment(entity.get("purposeCheckedAt")),
    )


class PartialWrite(Exception):
    """Some of a write's transactions landed before one failed (the others were cancelled)."""

    def __init__(self, written: int, total: int, cause: BaseException) -> None:
        super().__init__(f"{written} of {total} changes written ({type(cause).__name__}: {str(cause)[:200]})")
        self.written = written
        self.total = total
        self.cause = cause


async def submit_transactions(table: TableClient, operations: list[Any]) -> int:
    """Run table operations of one partition in transactions of 100, a few at once; returns how many.

    After the first failure no further transaction starts (those in flight finish, so the
    count of what landed stays exact: a transaction is all or nothing). Raises PartialWrite,
    naming how many operations landed, when any transaction failed.
    """
    chunks = [operations[i : i + TRANSACTION_SIZE] for i in range(0, len(operations), TRANSACTION_SIZE)]
    gate = asyncio.Semaphore(_PARALLEL_TRANSACTIONS)
    landed = 0
    failures: list[BaseException] = []

    async def submit(chunk: list[Any]) -> None:
        nonlocal landed
        async with gate:
            if failures:
                return  # a sibling failed: do not start more writes
            try:
                await table.submit_transaction(chunk)
            except Exception as exc:
                failures.append(exc)
                return
            landed += len(chunk)

    await asyncio.gather(*(submit(chunk) for chunk in chunks))
    if failures:
        raise PartialWrite(landed, len(operations), failures[0]) from failures[0]
    return len(chunks)


class Person(Protocol):
    """A row about one user: an id, a UPN, a name and a mail (roster and excluded rows)."""

    @property
    def id(self) -> str: ...
    @property
    def user_principal_name(self) -> str: ...
    @property
    def display_name(self) -> str | None: ...
    @property
    def mail(self) -> str | None: ...


P = TypeVar("P", bound=Person)


async def text_page(
    rows: AsyncIterator[P], search: str | None, limit: int, keep: Callable[[P], bool] = lambda row: True
) -> tuple[list[P], str | None]:
    """Up to `limit` rows (in id order) that `keep` keeps and whose UPN, name or mail holds `search`
    (any case); the cursor is the last id when more follow."""
    needle = search.lower() if search else None
    page: list[P] = []
    async for row in rows:
        if not keep(row):
            continue
        if needle and not any(
            needle in (value or "").lower() for value in (row.user_principal_name, row.display_name, row.mail)
        ):
            continue
        page.append(row)
        if len(page) > limit:
            break
    more = len(page) > limit
    page = page[:limit]
    return page, (page[-1].id if more and page else None)


class RosterStore:
    """Read and write one tenant's roster rows."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._client: TableClient | None = None
        self.transactions = 0  # entity-group transactions submitted (for run records and the benchmark)

    @property
    def _table(self) -> TableClient:
        if self._client is None:
            self._client = table_client(self._settings, USERS_TABLE)
        return self._client

    async def aclose(self) -> None:
        """Close the table client."""
        if self._client is not None:
            await self._client.close()
            self._client = None

    async def read_roster(self, tenant_id: str, *, status: RosterStatus | None = None) -> list[RosterUser]:
        """Every roster row of the tenant (or only those with `status`)."""
        flt, params = "PartitionKey eq @pk", {"pk": tenant_id}
        if status is not None:
            flt, params = flt + " and status eq @status", {**params, "status": str(status)}
        query = self._table.query_entities(flt, parameters=params, select=_FIELDS, results_per_page=1000)
        return [_from_entity(e) async for e in query]

    async def write(self, tenant_id: str, rows: Iterable[RosterUser]) -> int:
        """Upsert rows in transactions of 100; returns the number of transactions (sync.apply only)."""
        operations = [
            (TransactionOperation.UPSERT, _to_entity(tenant_id, row), {"mode": UpdateMode.REPLACE})
            for row in rows
        ]
        return await self._submit(operations)

    async def delete(self, tenant_id: str, user_ids: Sequence[str]) -> int:
        """Delete rows (purge) in transactions of 100; returns the transactions (sync.apply only)."""
        operations: list[Any] = [
            (TransactionOperation.DELETE, {"PartitionKey": tenant_id, "RowKey": uid}, {}) for uid in user_ids
        ]
        return await self._submit(operations)

    async def _submit(self, operations: list[Any]) -> int:
        chunks = await submit_transactions(self._table, operations)
        self.transactions += chunks
        return chunks

    async def get_user(self, tenant_id: str, id_or_upn: str) -> RosterUser | None:
        """One roster row by object id or by UPN (case-insensitive)."""
        if is_object_id(id_or_upn):
            try:
                return _from_entity(await self._table.get_entity(tenant_id, id_or_upn.lower()))
            except ResourceNotFoundError:
                return None
        query = self._table.query_entities(
            "PartitionKey eq @pk and upnLower eq @upn",
            parameters={"pk": tenant_id, "upn": id_or_upn.lower()},
            select=_FIELDS,
        )
        async for entity in query:
            return _from_entity(entity)
        return None

    async def list_users(
        self,
        tenant_id: str,
        *,
        status: RosterStatus | None = RosterStatus.ACTIVE,
        group: str | None = None,
        search: str | None = None,
        after: str | None = None,
        limit: int = 100,
    ) -> tuple[list[RosterUser], str | None]:
        """A page of roster rows in id order, filtered; the cursor is the last id returned."""
        clauses = ["PartitionKey eq @pk"]
        params: dict[str, str] = {"pk": tenant_id}
        if status is not None:
            clauses.append("status eq @status")
            params["status"] = str(status)
        if after:
            clauses.append("RowKey gt @after")
            params["after"] = after
        query = self._table.query_entities(" and ".join(clauses), parameters=params, select=_FIELDS)
        users = (_from_entity(entity) async for entity in query)
        return await text_page(users, search, limit, keep=lambda user: not group or group in user.groups)
