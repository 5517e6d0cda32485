"""The audit trail: an append-only record of every roster change and every change of configuration.

Each tenant's records are JSON lines in append blobs of the `audit` container, one blob per UTC day
(`{tenant}/{YYYY}/{MM}/{DD}.jsonl`). In Azure that container has a time-based immutability policy
(infra/app/storage.bicep): for AUDIT_RETENTION_DAYS no record can be altered or deleted, by the app
or anyone else; appending stays allowed. The app never updates or deletes a record; it only reads
records younger than the retention. Roster changes are written before the roster rows, so a write
that fails half-way is still on record.

A record's position (its day, its line and the byte where the next line starts) is its cursor:
readers page forward in order, which the roster change feed builds on, and a reader that follows
the feed downloads only what was appended after its cursor, not the whole day again.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
from collections.abc import Iterable, Sequence
from datetime import datetime, timedelta

import msgspec
from azure.core.exceptions import (
    HttpResponseError,
    ResourceExistsError,
    ResourceModifiedError,
    ResourceNotFoundError,
)
from azure.storage.blob.aio import BlobServiceClient, ContainerClient

from shared.settings import Settings
from shared.storage import blob_service
from sync.models import AuditKind, AuditRecord

__all__ = ["AuditKind", "AuditLog", "AuditRecord", "InvalidAuditCursor"]

MAX_BLOCK_BYTES = 4 * 1024 * 1024  # an append blob block is at most 4 MiB


class InvalidAuditCursor(ValueError):
    """A cursor that this module did not issue."""


_ENCODER = msgspec.json.Encoder()
_DECODER = msgspec.json.Decoder(AuditRecord)


def _blob_name(tenant_id: str, day: datetime) -> str:
    return f"{tenant_id}/{day:%Y/%m/%d}.jsonl"


def _cursor(blob: str, line: int, next_offset: int) -> str:
    return base64.urlsafe_b64encode(f"{blob}#{line}#{next_offset}".encode()).decode().rstrip("=")


def _parse_cursor(tenant_id: str, cursor: str) -> tuple[str, int, int | None]:
    """(blob, line, byte offset of the next line); cursors issued before the offset have none."""
    try:
        text = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        blob, *numbers = text.split("#")
        number = int(numbers[0])
        offset = int(numbers[1]) if len(numbers) == 2 else None
        if len(numbers) > 2 or (offset is not None and offset < 0):
            raise ValueError(text)
    except (binascii.Error, UnicodeDecodeError, ValueError, IndexError):
        raise InvalidAuditCursor("the cursor is not one this API issued") from None
    if not blob.startswith(f"{tenant_id}/") or number < 0:
        raise InvalidAuditCursor("the cursor is not one this API issued")
    return blob, number, offset


class AuditLog:
    """Appends and reads one deployment's audit records."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._service: BlobServiceClient | None = None

    def _container(self) -> ContainerClient:
        if self._service is None:
            self._service = blob_service(self._settings)
        return self._service.get_container_client(self._settings.audit_container)

    async def aclose(self) -> None:
        """Close the blob client."""
        if self._service is not None:
            await self._service.close()
            self._service = None

    async def append(self, tenant_id: str, records: Iterable[AuditRecord]) -> int:
        """Append records (in order) to the tenant's trail for their day; returns how many.

        Lines are encoded into one append block at a time (at most 4 MiB), so a first load of
        100,000 users does not hold every encoded line at once.
        """
        created: set[str] = set()
        block: list[bytes] = []
        size = written = 0
        current: str | None = None

        async def flush() -> None:
            nonlocal block, size
            if current is None or not block:
                return
            blob = self._container().get_blob_client(current)
            if current not in created:
                with contextlib.suppress(ResourceExistsError, ResourceModifiedError):  # the day's blob exists
                    await blob.create_append_blob(if_none_match="*")
                created.add(current)
            await blob.append_block(b"".join(block))
            block, size = [], 0

        for record in records:
            name = _blob_name(tenant_id, record.at)
            line = _ENCODER.encode(record) + b"\n"
            if name != current or size + len(line) > MAX_BLOCK_BYTES:
                await flush()
                current = name
            block.append(line)
            size += len(line)
            written += 1
        await flush()
        return written

    async def read(
        self,
        tenant_id: str,
        *,
        after: str | None = None,
        user: str | None = None,
        run: str | None = None,
        kinds: Sequence[AuditKind] | None = None,
        limit: int = 100,
        now: datetime,
    ) -> tuple[list[AuditRecord], str | None]:
        """Records oldest first from the position after `after`, filtered; and the next page's cursor
        (None on the last page). Each record carries its own cursor, so a follower of the trail
        asks again after the last record it saw. Records older than AUDIT_RETENTION_DAYS are not read.
        """
        start_blob, start_line, start_offset = _parse_cursor(tenant_id, after) if after else ("", -1, None)
        oldest = _blob_name(tenant_id, now - timedelta(days=self._settings.audit_retention_days))
        names = sorted([b.name async for b in self._container().list_blobs(name_starts_with=f"{tenant_id}/")])
        found: list[AuditRecord] = []
        needle = user.lower() if user else None
        for name in names:
            if name < oldest or name < start_blob:
                continue
            # Within the cursor's own blob, only what was appended after it.
            resume = name == start_blob and start_offset is not None
            offset, number = (start_offset or 0, start_line + 1) if resume else (0, 0)
            data = await self._download(name, offset)
            if data is None:
                continue
            lines = data.split(b"\n")
            lines.pop()  # after the last newline: nothing (a block is appended whole)
            for line in lines:
                here, offset, number = number, offset + len(line) + 1, number + 1
                if (name, here) <= (start_blob, start_line) or not line.strip():
                    continue
                record = _DECODER.decode(line)
                if run and record.run_id != run:
                    continue
                if needle and needle not in (
                    (record.user_id or "").lower(),
                    (record.user_principal_name or "").lower(),
                ):
                    continue
                if kinds and record.kind not in kinds:
                    continue
                found.append(msgspec.structs.replace(record, cursor=_cursor(name, here, offset)))
                if len(found) >= limit:
                    return found, found[-1].cursor
        return found, None

    async def _download(self, name: str, offset: int) -> bytes | None:
        """The blob from `offset` on; b"" when nothing follows it, None when the blob is gone."""
        blob = self._container().get_blob_client(name)
        try:
            return await (await blob.download_blob(offset=offset or None)).readall()
        except ResourceNotFoundError:
            return None
        except HttpResponseError as exc:
            # A range starting at or past the blob's end answers 416 ("Specifying the range header
            # for Blob service operations", learn.microsoft.com/rest/api/storageservices): nothing
            # was appended since the cursor.
            if exc.status_code == 416:
                return b""
            raise
