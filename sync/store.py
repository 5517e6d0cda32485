"""The app's own records in Table Storage (tenants, selections, runs) and the tenants' lock blobs.

The roster (the `users` table) has its own module, sync.roster.
"""

from __future__ import annotations

import contextlib
import secrets
from datetime import UTC, datetime
from typing import Any

import msgspec
from azure.core import MatchConditions
from azure.core.exceptions import ResourceExistsError, ResourceModifiedError, ResourceNotFoundError
from azure.data.tables import UpdateMode
from azure.data.tables.aio import TableClient
from azure.storage.blob.aio import BlobClient, BlobServiceClient

from shared.settings import Settings
from shared.storage import (
    LOCKS_CONTAINER,
    RUNS_TABLE,
    SELECTIONS_TABLE,
    TENANTS_TABLE,
    blob_service,
    plain_value,
    table_client,
)
from sync.models import (
    NotifyMode,
    Run,
    RunStatus,
    SelectedGroup,
    Selection,
    Tenant,
)
from sync.table_wire import RETRY_IDEMPOTENT

TENANTS_PARTITION = "tenants"
CURRENT_SELECTION = "current"
_RUN_ORDER_CEILING = 10**13  # ms since epoch until the year 2286: keeps run keys fixed-width


class StaleTenant(Exception):
    """The tenant's settings changed since the version the caller read (HTTP 412)."""

    def __init__(self, current: int) -> None:
        super().__init__(
            f"the tenant's settings were changed by someone else; the current version is {current}"
        )
        self.current = current


class StaleSelection(Exception):
    """The selection changed since the version the caller read (HTTP 412)."""

    def __init__(self, current: int) -> None:
        super().__init__(f"the selection was changed by someone else; the current version is {current}")
        self.current = current


def utc_now() -> datetime:
    """The current time in UTC, to the millisecond (what Table Storage keeps of a timestamp)."""
    now = datetime.now(UTC)
    return now.replace(microsecond=now.microsecond // 1000 * 1000)


def new_run_id(now: datetime | None = None) -> str:
    """A run id that sorts newest first in the `runs` table and is unique."""
    ms = int((now or utc_now()).timestamp() * 1000)
    return f"{_RUN_ORDER_CEILING - ms:013d}-{secrets.token_hex(4)}"


_RUN_JSON_FIELDS = ("counts", "groups", "plan", "previewGroupIds", "unknownUsers")
# Table Storage caps a property at 64 KiB and stores strings as UTF-16: longer JSON (1,000 selected
# groups with their names) continues in numbered properties `name_1`, `name_2`, ...
_CHUNK_CHARS = 30_000


def _put_json(entity: dict[str, Any], name: str, value: Any) -> None:
    text = msgspec.json.encode(value).decode()
    entity[name] = text[:_CHUNK_CHARS]
    for number, start in enumerate(range(_CHUNK_CHARS, len(text), _CHUNK_CHARS), start=1):
        entity[f"{name}_{number}"] = text[start : start + _CHUNK_CHARS]


def _get_json(entity: dict[str, Any], name: str, type: Any = Any) -> Any:
    parts = [entity[name]]
    number = 1
    while f"{name}_{number}" in entity:
        parts.append(entity[f"{name}_{number}"])
        number += 1
    return msgspec.json.decode("".join(parts), type=type)


def _is_continuation(key: str) -> bool:
    head, _, tail = key.rpartition("_")
    return tail.isdigit() and head in _JSON_PROPERTIES


_JSON_PROPERTIES = frozenset({*_RUN_JSON_FIELDS, "groups"})


def _builtins(record: msgspec.Struct) -> dict[str, Any]:
    """A record as Table Storage properties: timestamps stay datetimes (Edm.DateTime)."""
    data: dict[str, Any] = msgspec.to_builtins(record, builtin_types=(datetime,))
    return data


def _run_to_entity(run: Run) -> dict[str, Any]:
    data = _builtins(run)
    entity: dict[str, Any] = {"PartitionKey": run.tenant_id, "RowKey": run.id}
    for key, value in data.items():
        if key in ("id", "tenantId") or value is None:
            continue
        if key in _RUN_JSON_FIELDS:
            _put_json(entity, key, value)
        else:
            entity[key] = value
    return entity


def _run_from_entity(entity: dict[str, Any]) -> Run:
    data: dict[str, Any] = {"id": entity["RowKey"], "tenantId": entity["PartitionKey"]}
    for key, value in entity.items():
        if key in ("PartitionKey", "RowKey", "Timestamp") or key.startswith("odata") or _is_continuation(key):
            continue
        data[key] = _get_json(entity, key) if key in _RUN_JSON_FIELDS else plain_value(value)
    return msgspec.convert(data, Run, strict=False)


class SyncStore:
    """Tenants, selections and runs for the whole fleet, and the tenants' lock blobs."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._tables: dict[str, TableClient] = {}
        self._blobs: BlobServiceClient | None = None

    def _table(self, name: str) -> TableClient:
        client = self._tables.get(name)
        if client is None:
            client = self._tables[name] = table_client(self._settings, name)
        return client

    async def aclose(self) -> None:
        """Close the storage clients."""
        for client in self._tables.values():
            await client.close()
        self._tables.clear()
        if self._blobs is not None:
            await self._blobs.close()
            self._blobs = None

    # -- tenants --

    async def get_tenant(self, tenant_id: str) -> Tenant | None:
        """A registered tenant, or None."""
        try:
            entity = await self._table(TENANTS_TABLE).get_entity(TENANTS_PARTITION, tenant_id)
        except ResourceNotFoundError:
            return None
        return _tenant_from_entity(entity)

    async def put_tenant(self, tenant: Tenant, *, expected_version: int | None = None) -> Tenant:
        """Save what an admin changed as the next version, guarded by ETag; returns the saved record.

        `expected_version` (from If-Match) must equal the stored version when given. Fields the
        runs keep (last run, delta state) are carried over from the stored record, not overwritten.
        """
        table = self._table(TENANTS_TABLE)
        try:
            current = await table.get_entity(TENANTS_PARTITION, tenant.id)
        except ResourceNotFoundError:
            current = None
        current_version = int(current.get("version", 0)) if current else 0
        if expected_version is not None and expected_version != current_version:
            raise StaleTenant(current_version)
        saved = msgspec.structs.replace(tenant, version=current_version + 1)
        entity: dict[str, Any] = dict(current or {}) | {
            "PartitionKey": TENANTS_PARTITION,
            "RowKey": tenant.id,
        }
        entity.pop("Timestamp", None)
        for key, value in _builtins(saved).items():
            if key not in _ADMIN_FIELDS:
                continue
            if value is None:
                entity.pop(key, None)  # back to the app setting (e.g. guardPercent)
            else:
                entity[key] = value
        try:
            await _write_unless_changed(table, entity, current)
        except (ResourceExistsError, ResourceModifiedError):
            latest = await self.get_tenant(tenant.id)
            raise StaleTenant(latest.version if latest else 0) from None
        return _tenant_from_entity(entity)

    async def list_tenants(self) -> list[Tenant]:
        """Every registered tenant."""
        query = self._table(TENANTS_TABLE).query_entities(
            "PartitionKey eq @pk", parameters={"pk": TENANTS_PARTITION}
        )
        return [_tenant_from_entity(e) async for e in query]

    async def record_last_run(self, run: Run) -> None:
        """Copy a run's status onto its tenant for the fleet view."""
        await self._table(TENANTS_TABLE).upsert_entity(
            {
                "PartitionKey": TENANTS_PARTITION,
                "RowKey": run.tenant_id,
                "lastRunId": run.id,
                "lastRunStatus": str(run.status),
                "lastRunAt": run.finished_at or run.started_at or run.requested_at,
            },
            mode=UpdateMode.MERGE,
            retry_on_methods=RETRY_IDEMPOTENT,
        )

    async def save_notify_mode(self, tenant_id: str, mode: NotifyMode, detail: str | None) -> None:
        """Record how soon the tenant's changes arrive (sync.notifications owns it)."""
        await self._table(TENANTS_TABLE).upsert_entity(
            {
                "PartitionKey": TENANTS_PARTITION,
                "RowKey": tenant_id,
                "notifyMode": str(mode),
                "notifyDetail": detail or "",
            },
            mode=UpdateMode.MERGE,
        )

    async def set_consent_state(self, tenant_id: str, state: str | None) -> None:
        """Mark a registered tenant's consent missing (`notConsented`) or clear the mark (None)."""
        with contextlib.suppress(ResourceNotFoundError):  # not registered (any more): nothing to mark
            await self._table(TENANTS_TABLE).update_entity(
                {"PartitionKey": TENANTS_PARTITION, "RowKey": tenant_id, "consentState": state or ""},
                mode=UpdateMode.MERGE,
            )

    async def save_delta_state(
        self,
        tenant_id: str,
        *,
        active_users: int | None = None,
        users_link: str | None,
        groups_link: str | None,
        selection_version: int | None,
        rules: str | None,
        full_refresh_at: datetime | None = None,
    ) -> None:
        """Move the tenant's delta links forward, or clear them (None); only sync.apply calls it."""
        entity: dict[str, Any] = {
            "PartitionKey": TENANTS_PARTITION,
            "RowKey": tenant_id,
            # Empty values, not None: a MERGE leaves properties it is not sent untouched.
            "usersDeltaLink": users_link or "",
            "groupsDeltaLink": groups_link or "",
            "deltaSelectionVersion": selection_version if selection_version is not None else -1,
            "deltaRules": rules or "",
        }
        if full_refresh_at is not None:
            entity["lastFullRefreshAt"] = full_refresh_at
        if active_users is not None:
            entity["activeUsers"] = active_users
        # A MERGE upsert sets the same properties again: safe to retry, which azure-core does not do
        # for a PATCH whose connection failed (a pooled connection the service had just closed).
        await self._table(TENANTS_TABLE).upsert_entity(
            entity, mode=UpdateMode.MERGE, retry_on_methods=RETRY_IDEMPOTENT
        )

    # -- selections --

    async def get_selection(self, tenant_id: str) -> Selection:
        """The saved selection; mode `all`, version 0 when nothing was ever saved."""
        try:
            entity = await self._table(SELECTIONS_TABLE).get_entity(tenant_id, CURRENT_SELECTION)
        except ResourceNotFoundError:
            return Selection()
        return _selection_from_entity(entity)

    async def save_selection(
        self, tenant_id: str, selection: Selection, *, expected_version: int | None
    ) -> Selection:
        """Save a new version of the selection, guarded by ETag; keep the old one as history.

        `expected_version` (from If-Match) must equal the stored version when given.
        """
        table = self._table(SELECTIONS_TABLE)
        try:
            current = await table.get_entity(tenant_id, CURRENT_SELECTION)
        except ResourceNotFoundError:
            current = None
        current_version = int(current["version"]) if current else 0
        if expected_version is not None and expected_version != current_version:
            raise StaleSelection(current_version)
        saved = msgspec.structs.replace(selection, version=current_version + 1)
        entity = _selection_to_entity(tenant_id, CURRENT_SELECTION, saved)
        try:
            await _write_unless_changed(table, entity, current)
        except (ResourceExistsError, ResourceModifiedError):
            latest = await self.get_selection(tenant_id)
            raise StaleSelection(latest.version) from None
        history = _selection_to_entity(tenant_id, f"v{saved.version:010d}", saved)
        await table.upsert_entity(history, mode=UpdateMode.REPLACE)
        return saved

    # -- runs --

    async def create_run(self, run: Run) -> None:
        """Record a new run (queued)."""
        await self._table(RUNS_TABLE).create_entity(_run_to_entity(run))

    async def save_run(self, run: Run) -> None:
        """Replace a run's record with its new state."""
        await self._table(RUNS_TABLE).upsert_entity(_run_to_entity(run), mode=UpdateMode.REPLACE)

    async def get_run(self, tenant_id: str, run_id: str) -> Run | None:
        """One run, or None."""
        try:
            entity = await self._table(RUNS_TABLE).get_entity(tenant_id, run_id)
        except ResourceNotFoundError:
            return None
        return _run_from_entity(entity)

    async def list_runs(
        self, tenant_id: str, *, limit: int = 20, after: str | None = None
    ) -> tuple[list[Run], str | None]:
        """Runs newest first; `after` is the last run id of the previous page."""
        flt = "PartitionKey eq @pk" + (" and RowKey gt @after" if after else "")
        params = {"pk": tenant_id, **({"after": after} if after else {})}
        runs: list[Run] = []
        query = self._table(RUNS_TABLE).query_entities(flt, parameters=params, results_per_page=limit)
        async for entity in query:
            runs.append(_run_from_entity(entity))
            if len(runs) > limit:
                break
        more = len(runs) > limit
        runs = runs[:limit]
        return runs, (runs[-1].id if more and runs else None)

    async def queued_runs(self, tenant_id: str) -> list[Run]:
        """Runs of a tenant still waiting in the queue, newest first."""
        query = self._table(RUNS_TABLE).query_entities(
            "PartitionKey eq @pk and status eq @st",
            parameters={"pk": tenant_id, "st": str(RunStatus.QUEUED)},
        )
        return [_run_from_entity(e) async for e in query]

    def lock_blob(self, tenant_id: str) -> BlobClient:
        """The tenant's lock blob in the `locks` container (its lease is owned by sync.lease)."""
        if self._blobs is None:
            self._blobs = blob_service(self._settings)
        return self._blobs.get_blob_client(LOCKS_CONTAINER, tenant_id)


# What an admin saves through put_tenant; the rest of the record belongs to the runs.
_ADMIN_FIELDS = frozenset(
    {
        "displayName",
        "version",
        "enabled",
        "createdAt",
        "exclusionRules",
        "guardPercent",
        "guardMinUsers",
        "updatedBy",
        "updatedAt",
    }
)


async def _write_unless_changed(table: TableClient, entity: dict[str, Any], current: Any) -> None:
    """Create the entity, or replace `current` only if nobody changed it since it was read (ETag);
    raises ResourceExistsError / ResourceModifiedError when someone did."""
    if current is None:
        await table.create_entity(entity)
        return
    await table.update_entity(
        entity,
        mode=UpdateMode.REPLACE,
        etag=current.metadata["etag"],
        match_condition=MatchConditions.IfNotModified,
    )


def _tenant_from_entity(entity: dict[str, Any]) -> Tenant:
    data = {k: plain_value(v) for k, v in entity.items() if k not in ("PartitionKey", "RowKey")}
    data["id"] = entity["RowKey"]
    if not data.get("consentState"):
        data.pop("consentState", None)  # a cleared mark is stored as "" (a MERGE cannot drop it)
    return msgspec.convert(data, Tenant, strict=False)


def _selection_to_entity(tenant_id: str, row_key: str, selection: Selection) -> dict[str, Any]:
    entity: dict[str, Any] = {
        "PartitionKey": tenant_id,
        "RowKey": row_key,
        "mode": str(selection.mode),
        "version": selection.version,
        "updatedAt": selection.updated_at,  # a datetime (Edm.DateTime)
        "updatedBy": selection.updated_by,
    }
    _put_json(entity, "groups", selection.groups)
    return entity


def _selection_from_entity(entity: dict[str, Any]) -> Selection:
    return msgspec.convert(
        {
            "mode": entity["mode"],
            "groups": _get_json(entity, "groups", tuple[SelectedGroup, ...]),
            "version": int(entity["version"]),
            "updatedAt": plain_value(entity.get("updatedAt")),
            "updatedBy": entity.get("updatedBy"),
        },
        Selection,
        strict=False,
    )
