"""JSON batching: POST /$batch with up to 20 relative-URL requests, each answered on its own.

Follows "Combine multiple HTTP requests using JSON batching": at most 20 requests, unique ids,
URLs relative to the version root (an absolute URL fails the whole batch), `dependsOn` ordering
with 424 for dependents of a failed request, and non-JSON item bodies (a $count) base64-encoded.
Each item goes through the same checks as a request of its own (permissions, faults, throttling).
"""

from __future__ import annotations

import asyncio
import base64
import time
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, unquote, urlsplit

import msgspec

from devtools.demo_tenant.query import Call, normalize_query
from devtools.demo_tenant.wire import JSON_CONTENT_TYPE, GraphError, Reply, error_reply

if TYPE_CHECKING:
    from devtools.demo_tenant.server import DemoGraphServer

MAX_BATCH_REQUESTS = 20


def parse_batch(body: bytes) -> list[dict[str, Any]]:
    """The batch's requests, or 400 for a malformed, oversized or ambiguous batch."""
    invalid = GraphError(400, "BadRequest", "Invalid batch payload format.")
    try:
        document = msgspec.json.decode(body)
    except msgspec.DecodeError:
        raise invalid from None
    if not isinstance(document, dict) or not isinstance(document.get("requests"), list):
        raise invalid
    items: list[dict[str, Any]] = document["requests"]
    if not items:
        raise invalid
    if len(items) > MAX_BATCH_REQUESTS:
        raise GraphError(
            400,
            "BadRequest",
            f"The batch holds {len(items)} requests; at most {MAX_BATCH_REQUESTS} are allowed.",
        )
    seen: set[str] = set()
    for item in items:
        if not isinstance(item, dict):
            raise invalid
        request_id, method, url = item.get("id"), item.get("method"), item.get("url")
        if (
            not isinstance(request_id, str)
            or not request_id
            or not isinstance(method, str)
            or not isinstance(url, str)
        ):
            raise invalid
        if "://" in url:
            raise invalid  # Graph rejects the whole batch when an item's URL is absolute
        if request_id.lower() in seen:
            raise GraphError(
                400, "BadRequest", f"The batch has more than one request with id '{request_id}'."
            )
        seen.add(request_id.lower())
        headers = item.get("headers")
        if headers is not None and not isinstance(headers, dict):
            raise invalid
    return items


class BatchRunner:
    """Runs a $batch envelope's items through the server's dispatcher."""

    def __init__(self, server: DemoGraphServer) -> None:
        self._server = server

    async def run(self, envelope: Call, body: bytes) -> Reply:
        """The 200 envelope of item responses, or the error that fails the whole batch."""
        if envelope.method != "POST":
            return error_reply(GraphError(405), envelope.client_request_id)
        fault = self._server.match_fault(envelope)
        try:
            if fault is not None:
                await fault.strike()
            items = parse_batch(body)
        except GraphError as error:
            return error_reply(error, envelope.client_request_id)

        if any(item.get("dependsOn") for item in items):
            responses: list[dict[str, Any]] = []
            status_by_id: dict[str, int] = {}
            for item in items:
                depends_on = [str(dep).lower() for dep in item.get("dependsOn") or ()]
                if any(status_by_id.get(dep, 424) >= 400 for dep in depends_on):
                    failed = error_reply(
                        GraphError(424, "BadRequest", "A request this one depends on failed."),
                        envelope.client_request_id,
                    )
                    response = {
                        "id": item["id"],
                        "status": 424,
                        "headers": {"Content-Type": JSON_CONTENT_TYPE},
                        "body": failed.payload,
                    }
                else:
                    response = await self._run_item(envelope, item)
                status_by_id[str(item["id"]).lower()] = response["status"]
                responses.append(response)
        else:
            responses = list(await asyncio.gather(*(self._run_item(envelope, item) for item in items)))
        return Reply(200, {"responses": responses}, headers={"Content-Type": "application/json"})

    async def _run_item(self, envelope: Call, item: dict[str, Any]) -> dict[str, Any]:
        started = time.perf_counter()
        raw_url: str = item["url"]
        split = urlsplit(raw_url if raw_url.startswith("/") else "/" + raw_url)
        headers = {str(name).lower(): str(value) for name, value in (item.get("headers") or {}).items()}
        call = Call(
            method=str(item["method"]).upper(),
            path=unquote(split.path),
            query=normalize_query(parse_qsl(split.query, keep_blank_values=True)),
            headers=headers,
            base_url=envelope.base_url,
            client_request_id=envelope.client_request_id,
            tenant=envelope.tenant,
            principal=envelope.principal,
            in_batch=True,
            body=msgspec.json.encode(item["body"]) if item.get("body") is not None else b"",
        )
        first_segment = call.path.strip("/").split("/", 1)[0]
        if first_segment.lower() in ("v1.0", "beta"):
            # The URL must be relative to the version root; a version segment is just an unknown resource.
            reply = error_reply(
                GraphError(400, "BadRequest", f"Resource not found for the segment '{first_segment}'."),
                call.client_request_id,
            )
        else:
            reply = await self._server.process(call)
        self._server.log.record(call, reply.status, split.query, started)
        response_headers = {"Content-Type": reply.content_type}
        response_headers.update(
            {
                name: value
                for name, value in reply.headers.items()
                if name.lower() not in ("request-id", "client-request-id")
            }
        )
        if reply.text is not None:
            # A non-JSON sub-response body (like a $count) comes back base64-encoded in a batch.
            body: Any = base64.b64encode(self._server.text_body(reply.text)).decode()
        else:
            body = reply.payload
        return {"id": item["id"], "status": reply.status, "headers": response_headers, "body": body}
