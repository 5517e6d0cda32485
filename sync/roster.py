"""The platform's user store: the `users` table, one partition per tenant.

Writes go in entity-group transactions of up to 100 rows (Table Storage's ceiling, one
partition per transaction), a few in flight at once. Bulk writes and the whole-roster read go
through `sync.table_wire` (the SDK's pipeline without its per-entity serializer); single-row
look-ups and filtered pages use the SDK as they are.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Sequence
from datetime import datetime
from typing import Any, Protocol, TypeVar

import msgspec
from azure.core.exceptions import ResourceNotFoundError
from azure.data.tables.aio import TableClient

from shared.settings import Settings
from shared.storage import USERS_TABLE, plain_datetime, table_client
from sync.models import RosterStatus, RosterUser, SharedValues
from sync.table_wire import Delete, Upsert, query_pages, submit_transaction
from sync.validation import is_object_id

_T = TypeVar("_T")
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


def _batched(items: Iterable[_T], size: int) -> Iterator[list[_T]]:
    chunk: list[_T] = []
    for item in items:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _moment(value: object) -> datetime | None:
    """A timestamp property: Edm.DateTime, or ISO 8601 text in rows written before that."""
    if value is None:
        return None
    if isinstance(value, datetime):
        return plain_datetime(value)
    return datetime.fromisoformat(str(value))


class _WireRow(msgspec.Struct, gc=False):
    """A roster entity as Table Storage's JSON holds it (annotations such as `x@odata.type` ignored)."""

    row_key: str = msgspec.field(name="RowKey")
    upn: str = ""
    display_name: str | None = msgspec.field(name="displayName", default=None)
    mail: str | None = None
    department: str | None = None
    job_title: str | None = msgspec.field(name="jobTitle", default=None)
    groups: str | None = None
    status: str = "active"
    added_at: str | None = msgspec.field(name="addedAt", default=None)
    updated_at: str | None = msgspec.field(name="updatedAt", default=None)
    removed_at: str | None = msgspec.field(name="removedAt", default=None)
    removed_by_run: str | None = msgspec.field(name="removedByRun", default=None)
    purpose_checked_at: str | None = msgspec.field(name="purposeCheckedAt", default=None)

    def to_user(self, shared: SharedValues) -> RosterUser:
        groups = self.groups
        return RosterUser(
            id=self.row_key,
            user_principal_name=self.upn,
            display_name=self.display_name,
            mail=self.mail,
            department=shared.same(self.department),
            job_title=shared.same(self.job_title),
            groups=shared.made("groups", groups, _group_ids) if groups else (),
            status=RosterStatus(self.status),
            added_at=_shared_moment(shared, self.added_at),
            updated_at=_shared_moment(shared, self.updated_at),
            removed_at=_shared_moment(shared, self.removed_at),
            removed_by_run=shared.same(self.removed_by_run),
            purpose_checked_at=_shared_moment(shared, self.purpose_checked_at),
        )


def _group_ids(text: str) -> tuple[str, ...]:
    return tuple(text.split(","))


def _shared_moment(shared: SharedValues, text: str | None) -> datetime | None:
    return None if text is None else shared.made("moment", text, _moment)


class _WirePage(msgspec.Struct):
    value: list[_WireRow]


_PAGE = msgspec.json.Decoder(_WirePage)


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


async def submit_transactions(table: TableClient, operations: Iterable[Upsert | Delete], total: int) -> int:
    """Run `total` operations of one partition in transactions of 100, a few in flight; returns
    how many transactions were sent.

    Each transaction is encoded only when a slot frees up, so a first load of 100,000 users holds a
    few hundred entities at a time, not all of them. After the first failure no further transaction
    starts; those in flight finish, so the count of what landed stays exact (a transaction is all
    or nothing). Raises PartialWrite, naming how many operations landed, when any failed.
    """
    slots = asyncio.Semaphore(_PARALLEL_TRANSACTIONS)
    running: set[asyncio.Task[None]] = set()
    failures: list[BaseException] = []
    landed = sent = 0

    async def submit(chunk: list[Upsert | Delete]) -> None:
        nonlocal landed
        try:
            await submit_transaction(table, chunk)
            landed += len(chunk)
        except Exception as exc:
            # Recorded before the slot is released: the loop that the release wakes must see it.
            failures.append(exc)
        finally:
            slots.release()

    try:
        for chunk in _batched(operations, TRANSACTION_SIZE):
            await slots.acquire()
            if failures:
                slots.release()
                break  # a sibling failed: start no more writes
            task = asyncio.ensure_future(submit(chunk))
            running.add(task)
            task.add_done_callback(running.discard)
            sent += 1
        if running:
            await asyncio.wait(set(running))
    finally:
        for task in running:  # only when this coroutine itself was cancelled
            task.cancel()
    if failures:
        raise PartialWrite(landed, total, failures[0]) from failures[0]
    return sent


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
        rows: list[RosterUser] = []
        shared = SharedValues()
        async for page in query_pages(self._table, flt, params, _FIELDS, 1000):
            rows.extend(row.to_user(shared) for row in _PAGE.decode(page).value)
        return rows

    async def write(self, tenant_id: str, rows: Sequence[RosterUser]) -> int:
        """Upsert rows in transactions of 100; returns the number of transactions (sync.apply only)."""
        return await self._submit((Upsert(_to_entity(tenant_id, row)) for row in rows), len(rows))

    async def delete(self, tenant_id: str, user_ids: Sequence[str]) -> int:
        """Delete rows (purge) in transactions of 100; returns the transactions (sync.apply only)."""
        return await self._submit((Delete(tenant_id, uid) for uid in user_ids), len(user_ids))

    async def _submit(self, operations: Iterable[Upsert | Delete], total: int) -> int:
        sent = await submit_transactions(self._table, operations, total)
        self.transactions += sent
        return sent

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
