"""The roster's bulk traffic with Table Storage on the wire: entity-group transactions encoded
and entity pages read here, sent through azure-data-tables' own HTTP pipeline (its
authentication, retries, x-ms headers and error types).

Why not `TableClient.submit_transaction` and `query_entities` on these paths: the SDK builds each
operation of a transaction as an HttpRequest, writes the multipart body with the `email` package
and parses the answer the same way, which was 55% of the CPU of a 57,000-user first refresh; reading
a roster back, its per-property conversion (`TablesEntityDatetime.strptime`) was 45% of an
unchanged re-run (`docs/profile-*.svg`). The requests here are the SDK's (same URLs, headers and
entity JSON; tests/integration/test_storage.py compares them with what the SDK sends), so the
service sees no difference. A refused transaction is handed to `submit_transaction` once more:
the changeset is atomic, so nothing of it was applied, and the SDK raises its own typed error
(TableTransactionError with the failed operation's index) exactly as before.
"""

from __future__ import annotations

import functools
import re
import uuid
from collections.abc import AsyncIterator, Mapping, Sequence
from datetime import UTC, datetime
from email.utils import formatdate
from typing import Any
from urllib.parse import quote

import msgspec
from azure.core.exceptions import HttpResponseError
from azure.core.rest import HttpRequest
from azure.data.tables import TransactionOperation, UpdateMode
from azure.data.tables._error import (  # the SDK's own error decoding, so errors stay its types
    _decode_error,
    _process_table_error,
    _validate_tablename_error,
)
from azure.data.tables._serialize import _parameter_filter_substitution
from azure.data.tables.aio import TableClient

__all__ = ["RETRY_IDEMPOTENT", "Delete", "Upsert", "query_pages", "submit_transaction"]

_JSON = msgspec.json.Encoder()  # UTF-8 JSON; the SDK's json.dumps escapes non-ASCII, same document
_PLAIN_KEY = re.compile(r"[A-Za-z0-9_.~-]*")
_STATUS_LINE = re.compile(rb"^HTTP/1\.1 (\d{3})", re.MULTILINE)
_QUERY_ACCEPT = "application/json;odata=minimalmetadata"
# The methods azure-core retries on a failed connection or a 408/429/5xx, and the two it leaves out
# whose requests here are idempotent: entity-group transactions (POST) and MERGE upserts (PATCH).
RETRY_IDEMPOTENT = frozenset({"HEAD", "GET", "PUT", "DELETE", "OPTIONS", "TRACE", "POST", "PATCH"})


class Upsert:
    """Insert or replace one entity (UpdateMode.REPLACE), as `submit_transaction` sends it."""

    __slots__ = ("entity",)

    def __init__(self, entity: Mapping[str, Any]) -> None:
        self.entity = entity


class Delete:
    """Delete one entity unconditionally (If-Match: *)."""

    __slots__ = ("partition_key", "row_key")

    def __init__(self, partition_key: str, row_key: str) -> None:
        self.partition_key = partition_key
        self.row_key = row_key


def _key(value: str) -> str:
    # The SDK doubles single quotes (OData string literal), then percent-encodes the path segment;
    # object ids and tenant ids need neither.
    if _PLAIN_KEY.fullmatch(value):
        return value
    return quote(value.replace("'", "''"), safe="")


@functools.lru_cache(maxsize=1024)
def _edm_datetime(value: datetime) -> str:
    # A run stamps thousands of rows with the same few moments: each is formatted once.
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@functools.lru_cache(maxsize=64)
def _annotation(name: str) -> str:
    return name + "@odata.type"


def _entity_json(entity: Mapping[str, Any]) -> bytes:
    """The entity with an OData type per property, as the SDK's `_add_entity_properties` writes it.

    The roster holds text and times only; any other type is refused rather than guessed at.
    """
    body: dict[str, Any] = {}
    for name, value in entity.items():
        if value is None:
            continue
        if type(value) is str:
            body[name] = value
            body[_annotation(name)] = "Edm.String"
        elif isinstance(value, datetime):
            body[name] = _edm_datetime(value)
            body[_annotation(name)] = "Edm.DateTime"
        else:
            raise TypeError(f"property {name} of type {type(value).__name__} is not encoded here")
    return _JSON.encode(body)


def _changeset(table: TableClient, operations: Sequence[Upsert | Delete], boundary: str, date: str) -> bytes:
    base = f"{table.scheme}://{table._primary_hostname}/{table.table_name}"
    version = table.api_version
    parts: list[bytes] = []
    for index, op in enumerate(operations):
        head = (
            f"--{boundary}\r\nContent-Type: application/http\r\nContent-Transfer-Encoding: binary\r\n"
            f"Content-ID: {index}\r\n\r\n"
        )
        if isinstance(op, Upsert):
            keys = f"PartitionKey='{_key(op.entity['PartitionKey'])}',RowKey='{_key(op.entity['RowKey'])}'"
            url = f"{base}({keys})"
            body = _entity_json(op.entity)
            parts.append(
                (
                    f"{head}PUT {url} HTTP/1.1\r\nContent-Type: application/json\r\n"
                    f"Content-Length: {len(body)}\r\nx-ms-version: {version}\r\nDataServiceVersion: 3.0\r\n"
                    f"Accept: application/json\r\nx-ms-date: {date}\r\nDate: {date}\r\n\r\n"
                ).encode()
                + body
                + b"\r\n"
            )
        else:
            url = f"{base}(PartitionKey='{_key(op.partition_key)}',RowKey='{_key(op.row_key)}')"
            parts.append(
                (
                    f"{head}DELETE {url} HTTP/1.1\r\nx-ms-version: {version}\r\nDataServiceVersion: 3.0\r\n"
                    f"Accept: {_QUERY_ACCEPT}\r\nIf-Match: *\r\nx-ms-date: {date}\r\nDate: {date}\r\n\r\n\r\n"
                ).encode()
            )
    return b"".join(parts) + f"--{boundary}--\r\n".encode()


def transaction_body(table: TableClient, operations: Sequence[Upsert | Delete]) -> tuple[bytes, str]:
    """The `$batch` body of one entity-group transaction and its multipart boundary."""
    batch, changeset = f"batch_{uuid.uuid4()}", f"changeset_{uuid.uuid4()}"
    date = formatdate(usegmt=True)
    body = (
        f"--{batch}\r\nContent-Type: multipart/mixed; boundary={changeset}\r\n\r\n".encode()
        + _changeset(table, operations, changeset, date)
        + f"\r\n--{batch}--\r\n".encode()
    )
    return body, batch


def _as_sdk_operations(operations: Sequence[Upsert | Delete]) -> list[Any]:
    return [
        (TransactionOperation.UPSERT, dict(op.entity), {"mode": UpdateMode.REPLACE})
        if isinstance(op, Upsert)
        else (TransactionOperation.DELETE, {"PartitionKey": op.partition_key, "RowKey": op.row_key})
        for op in operations
    ]


async def submit_transaction(table: TableClient, operations: Sequence[Upsert | Delete]) -> None:
    """Apply up to 100 operations on one partition atomically (one entity-group transaction)."""
    body, boundary = transaction_body(table, operations)
    request = HttpRequest(
        "POST",
        f"{table.scheme}://{table._primary_hostname}/$batch",
        headers={
            "x-ms-version": table.api_version,
            "DataServiceVersion": "3.0",
            "MaxDataServiceVersion": "3.0;NetFx",
            "Content-Type": f"multipart/mixed; boundary={boundary}",
            "Accept": "application/json",
        },
        content=body,
    )
    # azure-core retries no POST; a transaction of upserts and unconditional deletes is safe to send
    # again when no answer came (most often a pooled connection the service had just closed; a delete
    # that did apply answers 404 then, and the run fails as before).
    response = await table._client.send_request(request, stream=True, retry_on_methods=RETRY_IDEMPOTENT)
    await response.read()
    if response.status_code != 202:  # the whole request was refused: the SDK's decoding, as it raises it
        decoded = _decode_error(response)  # type: ignore[no-untyped-call]
        _validate_tablename_error(decoded, table.table_name)  # type: ignore[no-untyped-call]
        raise decoded
    statuses = _STATUS_LINE.findall(response.content)
    if len(statuses) == len(operations) and all(s.startswith(b"2") for s in statuses):
        return
    # An operation was refused and the changeset rolled back: the SDK sends it again and raises
    # its own TableTransactionError (or succeeds, when the refusal was passing).
    await table.submit_transaction(_as_sdk_operations(operations))


async def query_pages(
    table: TableClient,
    query_filter: str,
    parameters: Mapping[str, str],
    select: Sequence[str],
    page_size: int,
) -> AsyncIterator[bytes]:
    """The raw JSON pages of an entity query (`value` holds the entities), continuation followed."""
    flt = _parameter_filter_substitution(dict(parameters), query_filter)
    base = (
        f"{table.scheme}://{table._primary_hostname}/{table.table_name}()?$top={page_size}"
        f"&$select={quote(','.join(select), safe='')}&$filter={quote(flt, safe='')}"
    )
    headers = {"x-ms-version": table.api_version, "DataServiceVersion": "3.0", "Accept": _QUERY_ACCEPT}
    url = base
    while True:
        response = await table._client.send_request(HttpRequest("GET", url, headers=headers), stream=True)
        await response.read()
        if response.status_code != 200:
            _process_table_error(HttpResponseError(response=response), table_name=table.table_name)  # type: ignore[no-untyped-call]
        yield response.content
        next_pk = response.headers.get("x-ms-continuation-NextPartitionKey")
        next_rk = response.headers.get("x-ms-continuation-NextRowKey")
        if not next_pk:
            return
        url = f"{base}&NextPartitionKey={quote(next_pk, safe='')}"
        if next_rk:
            url += f"&NextRowKey={quote(next_rk, safe='')}"
