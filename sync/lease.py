"""The per-tenant lock: one refresh (or undo) of a tenant at a time, across every worker.

The lock is an Azure Blob lease on the tenant's blob in the `locks` container, the way the
Functions host keeps its own singletons: the storage service, not a worker's clock, decides
whether it is held and when it lapses. A run renews it every third of its length while it
works and once more right before writing, so a worker that lost it writes nothing; a crashed
worker's lease lapses by itself after LEASE_SECONDS. The renewal pause is injectable, so tests
can drive the keep-alive without waiting.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable

from azure.core.exceptions import HttpResponseError, ResourceExistsError
from azure.storage.blob.aio import BlobLeaseClient

from sync.store import SyncStore

log = logging.getLogger("sync.lease")

# Blob leases last 15 to 60 seconds (or forever, which a crashed worker would never give back).
LEASE_SECONDS = 60


class LeaseBusy(Exception):
    """Another refresh of the same tenant holds the lease; try again later."""


class LeaseLost(Exception):
    """Another refresh took the tenant over: this run must not write what it planned."""


class TenantLease:
    """One holder's lease on one tenant's lock blob."""

    def __init__(
        self,
        store: SyncStore,
        tenant_id: str,
        *,
        seconds: int | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self._blob = store.lock_blob(tenant_id)
        self._lease_id = str(uuid.uuid4())  # ours for the life of this holder
        self.tenant_id = tenant_id
        self.seconds = seconds if seconds is not None else LEASE_SECONDS
        self._sleep = sleep

    def _client(self) -> BlobLeaseClient:
        # A fresh client per call: the SDK's client forgets its lease id once released.
        return BlobLeaseClient(self._blob, lease_id=self._lease_id)

    async def acquire(self) -> bool:
        """Take the lease if nobody holds it (False when someone else does)."""
        with contextlib.suppress(ResourceExistsError):
            await self._blob.upload_blob(b"", overwrite=False)  # the tenant's lock blob, made once
        try:
            await self._client().acquire(lease_duration=self.seconds)
        except HttpResponseError as exc:
            if exc.status_code == 409:  # LeaseAlreadyPresent
                return False
            raise
        return True

    async def renew(self) -> bool:
        """Push the lease's end out; False when it is lost (taken by another after it lapsed)."""
        try:
            await self._client().renew()
        except HttpResponseError as exc:
            if exc.status_code == 409:
                return False
            raise
        return True

    async def release(self) -> None:
        """Give the lease back (nothing to do if it was lost)."""
        with contextlib.suppress(HttpResponseError):
            await self._client().release()

    async def confirm(self) -> None:
        """Renew right before writing; raise LeaseLost when someone else holds the lease now."""
        if not await self.renew():
            raise LeaseLost("another refresh of this tenant took over; this run wrote nothing")

    async def keep(self) -> None:
        """Renew every third of the lease while a run works (a task; cancel it when done).

        A failed renewal is retried soon; if the lease is lost anyway, `confirm` stops the run.
        """
        wait = self.seconds / 3
        while True:
            await self._sleep(wait)
            try:
                held = await self.renew()
            except Exception:  # storage hiccup: try again well before the lease lapses
                log.warning("could not renew the tenant lease; retrying", exc_info=True)
                wait = self.seconds / 10
                continue
            if not held:
                log.error("lost the tenant lease", extra={"tenantId": self.tenant_id})
                return
            wait = self.seconds / 3


@contextlib.asynccontextmanager
async def hold_tenant(lease: TenantLease, *, renew: bool = True) -> AsyncIterator[TenantLease]:
    """Hold `lease` for the block (renewed in the background); LeaseBusy when another holder has it."""
    if not await lease.acquire():
        raise LeaseBusy(f"another refresh of tenant {lease.tenant_id} is running")
    renewer = asyncio.create_task(lease.keep()) if renew else None
    try:
        yield lease
    finally:
        if renewer is not None:
            renewer.cancel()
        await lease.release()
