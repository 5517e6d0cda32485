"""Table and queue clients for the app's own storage (SYNC_STORAGE).

A connection string (Azurite locally) or identity-based endpoints with a managed
identity in Azure, where shared-key access is switched off.
"""

from __future__ import annotations

import contextlib

from azure.data.tables.aio import TableClient, TableServiceClient
from azure.storage.queue import BinaryBase64DecodePolicy, BinaryBase64EncodePolicy
from azure.storage.queue.aio import QueueClient

from shared.settings import Settings

TENANTS_TABLE = "tenants"
SELECTIONS_TABLE = "selections"
USERS_TABLE = "users"
RUNS_TABLE = "runs"
LEASES_TABLE = "leases"
ALL_TABLES = (TENANTS_TABLE, SELECTIONS_TABLE, USERS_TABLE, RUNS_TABLE, LEASES_TABLE)


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
    """Create the app's tables and queues if they are missing (idempotent)."""
    from azure.core.exceptions import ResourceExistsError

    async with table_service(settings) as service:
        for name in ALL_TABLES:
            with contextlib.suppress(ResourceExistsError):
                await service.create_table(name)
    for name in (settings.queue_name, f"{settings.queue_name}-poison"):
        async with queue_client(settings, name) as queue:
            with contextlib.suppress(ResourceExistsError):
                await queue.create_queue()
