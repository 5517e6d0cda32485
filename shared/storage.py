"""Table and queue clients for the app's own storage (SYNC_STORAGE).

A connection string (Azurite locally) or identity-based endpoints with a managed
identity in Azure, where shared-key access is switched off.
"""

from __future__ import annotations

import contextlib
from datetime import datetime
from typing import Any, ClassVar

from azure.data.tables.aio import TableClient, TableServiceClient
from azure.storage.blob.aio import BlobServiceClient
from azure.storage.queue import BinaryBase64DecodePolicy, BinaryBase64EncodePolicy
from azure.storage.queue.aio import QueueClient

from shared.settings import Settings

TENANTS_TABLE = "tenants"
SELECTIONS_TABLE = "selections"
USERS_TABLE = "users"
RUNS_TABLE = "runs"
SUBSCRIPTIONS_TABLE = "subscriptions"  # Graph change-notification subscriptions and their debounce windows
GRANTS_TABLE = "grants"  # partners' access to tenants, given by an operator
CONSENT_STATES_TABLE = "consentStates"  # one-time `state` values of admin-consent requests
EXCLUDED_TABLE = "excluded"  # who the last full run kept off the platform, and why
ALL_TABLES = (
    TENANTS_TABLE,
    SELECTIONS_TABLE,
    USERS_TABLE,
    RUNS_TABLE,
    SUBSCRIPTIONS_TABLE,
    GRANTS_TABLE,
    CONSENT_STATES_TABLE,
    EXCLUDED_TABLE,
)
LOCKS_CONTAINER = "locks"  # one blob per tenant; its lease is the tenant's lock
ALL_CONTAINERS = (LOCKS_CONTAINER,)


def plain_datetime(value: datetime) -> datetime:
    """A plain datetime for the Tables SDK's subclass, which msgspec neither converts nor encodes."""
    if type(value) is datetime:
        return value
    return datetime(
        value.year,
        value.month,
        value.day,
        value.hour,
        value.minute,
        value.second,
        value.microsecond,
        value.tzinfo,
    )


def plain_value(value: Any) -> Any:
    """A property value as read, Edm.DateTime as a plain datetime."""
    return plain_datetime(value) if isinstance(value, datetime) else value


def _identity_credential(settings: Settings):  # type: ignore[no-untyped-def]
    from azure.identity.aio import ManagedIdentityCredential

    return ManagedIdentityCredential(client_id=settings.storage.client_id)


def table_service(settings: Settings) -> TableServiceClient:
    """A TableServiceClient for SYNC_STORAGE."""
    storage = settings.storage
    if storage.connection_string:
        return TableServiceClient.from_connection_string(storage.connection_string)
    assert storage.table_service_uri  # load_settings enforces it
    return TableServiceClient(storage.table_service_uri, credential=_identity_credential(settings))


def table_client(settings: Settings, table: str) -> TableClient:
    """A TableClient for one of the app's tables."""
    storage = settings.storage
    if storage.connection_string:
        return TableClient.from_connection_string(storage.connection_string, table)
    assert storage.table_service_uri
    return TableClient(storage.table_service_uri, table, credential=_identity_credential(settings))


class SingleTableStore:
    """Base of a store kept in one of the app's tables (TABLE): the client is made on first use
    and closed by `aclose()`."""

    TABLE: ClassVar[str]

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._client: TableClient | None = None

    @property
    def _table(self) -> TableClient:
        if self._client is None:
            self._client = table_client(self._settings, self.TABLE)
        return self._client

    async def aclose(self) -> None:
        """Close the table client."""
        if self._client is not None:
            await self._client.close()
            self._client = None


def blob_service(settings: Settings) -> BlobServiceClient:
    """A BlobServiceClient for SYNC_STORAGE (lock blobs)."""
    storage = settings.storage
    if storage.connection_string:
        return BlobServiceClient.from_connection_string(storage.connection_string)
    assert storage.blob_service_uri  # load_settings enforces it
    return BlobServiceClient(storage.blob_service_uri, credential=_identity_credential(settings))


def queue_client(settings: Settings, queue: str | None = None) -> QueueClient:
    """The refresh queue, base64-encoded as the Functions queue trigger expects by default."""
    storage = settings.storage
    name = queue or settings.queue_name
    encode_policy = BinaryBase64EncodePolicy()
    decode_policy = BinaryBase64DecodePolicy()
    if storage.connection_string:
        return QueueClient.from_connection_string(
            storage.connection_string,
            name,
            message_encode_policy=encode_policy,
            message_decode_policy=decode_policy,
        )
    assert storage.queue_service_uri
    return QueueClient(
        storage.queue_service_uri,
        name,
        credential=_identity_credential(settings),
        message_encode_policy=encode_policy,
        message_decode_policy=decode_policy,
    )


async def ensure_storage(settings: Settings) -> None:
    """Create the app's tables, queues and blob containers if they are missing (idempotent)."""
    from azure.core.exceptions import ResourceExistsError

    async with table_service(settings) as service:
        for name in ALL_TABLES:
            with contextlib.suppress(ResourceExistsError):
                await service.create_table(name)
    for name in (settings.queue_name, f"{settings.queue_name}-poison", settings.notify_queue):
        async with queue_client(settings, name) as queue:
            with contextlib.suppress(ResourceExistsError):
                await queue.create_queue()
    async with blob_service(settings) as blobs:
        for name in (*ALL_CONTAINERS, settings.audit_container):
            with contextlib.suppress(ResourceExistsError):
                await blobs.create_container(name)
