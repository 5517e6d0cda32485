"""Within a minute: Graph change notifications drive incremental refreshes.

After a successful full refresh a tenant gets two subscriptions, `/users` and `/groups` (changes
`updated,deleted`), pointing at the app's webhook (`APP_BASE_URL/api/notifications`), each with a
random `clientState` kept in the `subscriptions` table and never logged. The webhook:

- echoes Graph's `validationToken` (the handshake before a subscription is created);
- checks each notification's `clientState` against the stored one (a stranger's POST queues
  nothing), and answers at once (Graph wants a reply within 3 s);
- coalesces: the first notification of a tenant opens a window of NOTIFY_DEBOUNCE_SECONDS (a row
  in the `subscriptions` table) and puts one message, delayed by the window, on the notify queue;
  later ones in the window add nothing. The message's worker closes the window and queues an
  incremental refresh (reason `notification`), which reads the changes through delta: a
  notification is a signal, never the change itself.
- lifecycle events: `reauthorizationRequired` renews the subscription, `subscriptionRemoved`
  makes it again, `missed` refreshes.

Subscriptions are renewed by a timer well before they expire (users and groups live at most
41,760 minutes), and deleted when a tenant is disconnected. A tenant without a public URL, or
whose admin did not grant Group.Read.All, keeps nightly runs and Refresh Users Now; its record
says which mode it is in (`notifyMode`).
"""

from __future__ import annotations

import contextlib
import enum
import hmac
import logging
import secrets
from datetime import datetime, timedelta
from typing import Any

import msgspec
from azure.core import MatchConditions
from azure.core.exceptions import ResourceExistsError, ResourceModifiedError, ResourceNotFoundError
from azure.data.tables import UpdateMode
from azure.data.tables.aio import TableClient

from shared.storage import SUBSCRIPTIONS_TABLE, plain_value, queue_client, table_client
from sync.context import SyncContext
from sync.directory import DirectoryError, GraphAccessDenied
from sync.directory.subscriptions import MAX_SUBSCRIPTION_MINUTES
from sync.models import NotifyMode, Tenant
from sync.store import utc_now
from sync.validation import is_object_id

log = logging.getLogger("sync.notifications")

RESOURCES = ("/users", "/groups")
CHANGE_TYPE = "updated,deleted"
LIFETIME = timedelta(minutes=MAX_SUBSCRIPTION_MINUTES - 60)  # asked for: just under Graph's limit
RENEW_BEFORE = timedelta(days=3)  # renewed when it would lapse within this
PENDING_ROW = "pending"  # a tenant's open debounce window
_SUBSCRIPTION_ROW = "sub:"


class NotifyAction(enum.StrEnum):
    """What a message on the notify queue asks for."""

    REFRESH = "refresh"  # a window closed: refresh incrementally
    RENEW = "renew"  # reauthorizationRequired
    RECREATE = "recreate"  # subscriptionRemoved


class NotifyMessage(msgspec.Struct, frozen=True, kw_only=True, rename="camel"):
    """One notify-queue message."""

    tenant_id: str
    action: NotifyAction = NotifyAction.REFRESH
    subscription_id: str | None = None


class _Notification(msgspec.Struct, rename="camel"):
    subscription_id: str = ""
    tenant_id: str = ""
    client_state: str | None = None
    change_type: str | None = None
    lifecycle_event: str | None = None


class _Collection(msgspec.Struct):
    value: list[_Notification] = []


_COLLECTION = msgspec.json.Decoder(_Collection)


class Received(msgspec.Struct, frozen=True, kw_only=True):
    """What one webhook POST led to."""

    accepted: int  # notifications whose subscription and clientState checked out
    refused: int  # unknown subscription or wrong clientState: nothing queued for them
    windows_opened: int  # tenants whose debounce window this POST opened


def _row_key(subscription_id: str) -> str:
    return f"{_SUBSCRIPTION_ROW}{subscription_id}"


class Notifications:
    """Subscriptions and incoming notifications for the whole fleet."""

    def __init__(self, ctx: SyncContext) -> None:
        self.ctx = ctx
        self._table: TableClient | None = None

    @property
    def table(self) -> TableClient:
        if self._table is None:
            self._table = table_client(self.ctx.settings, SUBSCRIPTIONS_TABLE)
        return self._table

    async def aclose(self) -> None:
        """Close the table client."""
        if self._table is not None:
            await self._table.close()
            self._table = None

    # -- the webhook ------------------------------------------------------------------------------

    async def receive(self, body: bytes) -> Received:
        """Check a changeNotificationCollection and queue what it asks for; fast (no Graph calls)."""
        try:
            notifications = _COLLECTION.decode(body).value
        except (msgspec.DecodeError, msgspec.ValidationError):
            return Received(accepted=0, refused=1, windows_opened=0)
        accepted, refused = 0, 0
        tenants: set[str] = set()
        lifecycle: list[NotifyMessage] = []
        known: dict[tuple[str, str], str | None] = {}
        for item in notifications:
            key = (item.tenant_id.lower(), item.subscription_id)
            if key not in known:
                known[key] = await self._client_state(*key)
            stored = known[key]
            given = item.client_state or ""
            if stored is None or not hmac.compare_digest(stored.encode(), given.encode()):
                refused += 1
                continue
            accepted += 1
            event = (item.lifecycle_event or "").lower()
            if event == "reauthorizationrequired":
                lifecycle.append(
                    NotifyMessage(tenant_id=key[0], action=NotifyAction.RENEW, subscription_id=key[1])
                )
            elif event == "subscriptionremoved":
                lifecycle.append(
                    NotifyMessage(tenant_id=key[0], action=NotifyAction.RECREATE, subscription_id=key[1])
                )
            else:  # a change, or `missed`: read what changed
                tenants.add(key[0])
        opened = 0
        for tenant_id in sorted(tenants):
            opened += await self._open_window(tenant_id)
        if lifecycle:
            async with queue_client(self.ctx.settings, self.ctx.settings.notify_queue) as queue:
                for message in lifecycle:
                    await queue.send_message(msgspec.json.encode(message))
        if refused:
            log.warning(
                "refused %d change notification(s): unknown subscription or wrong clientState", refused
            )
        return Received(accepted=accepted, refused=refused, windows_opened=opened)

    async def _client_state(self, tenant_id: str, subscription_id: str) -> str | None:
        if not is_object_id(tenant_id) or not subscription_id or len(subscription_id) > 128:
            return None
        try:
            row = await self.table.get_entity(tenant_id, _row_key(subscription_id))
        except ResourceNotFoundError:
            return None
        return str(row.get("clientState") or "") or None

    async def _open_window(self, tenant_id: str) -> int:
        """Open the tenant's debounce window unless one is open: one refresh per window."""
        now = utc_now()
        window = timedelta(seconds=self.ctx.settings.notify_debounce_seconds)
        entity = {"PartitionKey": tenant_id, "RowKey": PENDING_ROW, "openedAt": now}
        try:
            await self.table.create_entity(entity)
        except ResourceExistsError:
            current = await self.table.get_entity(tenant_id, PENDING_ROW)
            opened = plain_value(current.get("openedAt"))
            if isinstance(opened, datetime) and now - opened < window * 3 + timedelta(minutes=1):
                return 0  # a refresh is already coming for this window
            try:  # a window whose message was lost: open a new one
                await self.table.update_entity(
                    entity,
                    mode=UpdateMode.REPLACE,
                    etag=current.metadata["etag"],
                    match_condition=MatchConditions.IfNotModified,
                )
            except ResourceModifiedError:
                return 0
        async with queue_client(self.ctx.settings, self.ctx.settings.notify_queue) as queue:
            await queue.send_message(
                msgspec.json.encode(NotifyMessage(tenant_id=tenant_id)),
                visibility_timeout=int(self.ctx.settings.notify_debounce_seconds),
            )
        return 1

    async def close_window(self, tenant_id: str) -> None:
        """The window's refresh is about to be queued: notifications from now on open a new one."""
        with contextlib.suppress(ResourceNotFoundError):
            await self.table.delete_entity(tenant_id, PENDING_ROW)

    # -- subscriptions ----------------------------------------------------------------------------

    async def _rows(self, tenant_id: str) -> list[dict[str, Any]]:
        query = self.table.query_entities(
            "PartitionKey eq @pk and RowKey ge @lo and RowKey lt @hi",
            parameters={"pk": tenant_id, "lo": _SUBSCRIPTION_ROW, "hi": "sub;"},
        )
        return [entity async for entity in query]

    async def ensure(self, tenant: Tenant) -> NotifyMode:
        """After a successful full refresh: the tenant's two subscriptions exist and do not lapse soon."""
        base = self.ctx.settings.app_base_url
        if not base:
            return await self._record_mode(tenant, NotifyMode.NIGHTLY, "APP_BASE_URL is not set: no webhook")
        now = utc_now()
        rows = {str(row.get("resource")): row for row in await self._rows(tenant.id)}
        working: list[str] = []
        refused: list[str] = []
        for resource in RESOURCES:
            row = rows.get(resource)
            expires = plain_value(row.get("expiresAt")) if row else None
            if row is not None and isinstance(expires, datetime) and expires - now > RENEW_BEFORE:
                working.append(resource)
                continue
            try:
                if row is not None:
                    await self._renew(tenant.id, row)
                else:
                    await self._create(tenant.id, resource)
                working.append(resource)
            except GraphAccessDenied:
                refused.append(resource)
            except DirectoryError as exc:
                log.warning("could not subscribe to %s: %s", resource, exc, extra={"tenantId": tenant.id})
                refused.append(resource)
        if working == list(RESOURCES):
            return await self._record_mode(tenant, NotifyMode.REALTIME, None)
        if "/users" in working:
            return await self._record_mode(
                tenant,
                NotifyMode.USERS_ONLY,
                "Group changes are read at night and by Refresh Users Now: Graph lets an app subscribe to "
                "group changes only with Group.Read.All, which this tenant has not granted.",
            )
        return await self._record_mode(tenant, NotifyMode.NIGHTLY, "Graph refused the subscriptions")

    async def _create(self, tenant_id: str, resource: str) -> None:
        base = self.ctx.settings.app_base_url
        state = secrets.token_urlsafe(48)  # 64 characters; Graph allows 128
        expires = utc_now() + LIFETIME
        created = await self.ctx.reader(tenant_id).create_subscription(
            resource,
            change_type=CHANGE_TYPE,
            notification_url=f"{base}/api/notifications",
            lifecycle_url=f"{base}/api/notifications",
            client_state=state,
            expires=expires,
        )
        await self.table.upsert_entity(
            {
                "PartitionKey": tenant_id,
                "RowKey": _row_key(created.id),
                "resource": resource,
                "clientState": state,
                "expiresAt": created.expiration_date_time or expires,
            }
        )

    async def _renew(self, tenant_id: str, row: dict[str, Any]) -> None:
        subscription_id = str(row["RowKey"]).removeprefix(_SUBSCRIPTION_ROW)
        try:
            renewed = await self.ctx.reader(tenant_id).renew_subscription(
                subscription_id, utc_now() + LIFETIME
            )
        except DirectoryError as exc:
            if exc.status != 404:
                raise
            await self.table.delete_entity(tenant_id, str(row["RowKey"]))  # gone at Graph: make it again
            await self._create(tenant_id, str(row["resource"]))
            return
        row["expiresAt"] = renewed.expiration_date_time or utc_now() + LIFETIME
        await self.table.upsert_entity({k: v for k, v in row.items() if k != "Timestamp"})

    async def handle(self, message: NotifyMessage) -> str:
        """A notify-queue message: close the window and say to refresh, or renew / remake a subscription."""
        if message.action is NotifyAction.REFRESH:
            await self.close_window(message.tenant_id)
            return "refresh"
        rows = await self._rows(message.tenant_id)
        row = next((r for r in rows if str(r["RowKey"]) == _row_key(message.subscription_id or "")), None)
        if row is None:
            return "unknown"
        if message.action is NotifyAction.RENEW:
            await self._renew(message.tenant_id, row)
            return "renewed"
        await self.table.delete_entity(message.tenant_id, str(row["RowKey"]))
        await self._create(message.tenant_id, str(row["resource"]))
        return "recreated"

    async def renew_due(self) -> int:
        """The timer: renew every subscription that would lapse within RENEW_BEFORE; returns how many."""
        soon = utc_now() + RENEW_BEFORE
        query = self.table.query_entities(
            "RowKey ge @lo and RowKey lt @hi and expiresAt lt @soon",
            parameters={"lo": _SUBSCRIPTION_ROW, "hi": "sub;", "soon": soon},
        )
        renewed = 0
        for row in [entity async for entity in query]:
            try:
                await self._renew(str(row["PartitionKey"]), row)
                renewed += 1
            except DirectoryError as exc:
                log.warning(
                    "could not renew a subscription: %s", exc, extra={"tenantId": row["PartitionKey"]}
                )
        return renewed

    async def remove(self, tenant_id: str) -> int:
        """A tenant disconnected: delete its subscriptions at Graph and here; returns how many."""
        removed = 0
        for row in await self._rows(tenant_id):
            subscription_id = str(row["RowKey"]).removeprefix(_SUBSCRIPTION_ROW)
            try:
                await self.ctx.reader(tenant_id).delete_subscription(subscription_id)
            except DirectoryError as exc:
                if exc.status not in (401, 403, 404):  # gone already, or the app no longer may
                    raise
            await self.table.delete_entity(tenant_id, str(row["RowKey"]))
            removed += 1
        await self.close_window(tenant_id)
        return removed

    async def _record_mode(self, tenant: Tenant, mode: NotifyMode, detail: str | None) -> NotifyMode:
        await self.ctx.store.save_notify_mode(tenant.id, mode, detail)
        return mode
