"""One tenant's Graph traffic: single requests through the SDK (auth, retries, redirects) with the
body taken as bytes, and the one `$batch` helper every fan-out goes through.

A `$batch` POST skips the Kiota request adapter (a RequestInformation, URI template, tracing spans
and response handler per request: a third of the CPU its ~2,900 requests cost a 60,000-user first
refresh). It is sent through the same HTTP pool and so the same SDK middleware (RetryHandler on
429/503/504 honouring Retry-After, redirects, telemetry headers), with the token from the SDK's own
access token provider; a failed answer goes through the adapter's own `throw_failed_responses`, so
the errors are the ones the adapter raises, and a 401 carrying a claims challenge (continuous
access evaluation) is sent again through the adapter, which re-authenticates with the claims.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import AsyncIterator, Hashable, Iterator, Mapping, Sequence
from typing import Any, TypeVar
from urllib.parse import urlsplit

import httpx
import msgspec
from azure.core.exceptions import ClientAuthenticationError
from kiota_abstractions.method import Method
from kiota_abstractions.request_information import RequestInformation
from kiota_http.middleware.middleware import REQUEST_OPTIONS_KEY
from msgraph.generated.models.o_data_errors.o_data_error import ODataError
from msgraph.graph_service_client import GraphServiceClient
from opentelemetry import trace

from shared.graph import WrongTenantError
from sync.directory.errors import GraphTokenRefused, GraphUnavailable, error_from_odata
from sync.directory.wire import BATCH_RESPONSE, JSON, BatchItem, BatchRequest
from sync.models import AccessProblem

MAX_PAGE_SIZE = 999  # Graph's $top ceiling for users, groups and member lists
MAX_BATCH_SIZE = 20  # Graph's $batch ceiling
# Graph's Retry-After is honoured as given; a wait longer than this fails the read instead (a run
# must finish within the Functions timeout, and the next refresh converges).
MAX_RETRY_AFTER_SECONDS = 600.0
_ERROR_MAP: dict[str, Any] = {"XXX": ODataError}
_THROTTLED = (429, 503, 504)
_CLAIMS_CHALLENGE = re.compile(r'^bearer .*claims="[^"]+"', re.IGNORECASE)

K = TypeVar("K", bound=Hashable)
T = TypeVar("T")


class GraphTransport:
    """Sends one tenant's Graph requests; counts them for the run record."""

    def __init__(
        self, client: GraphServiceClient, *, concurrency: int = 16, batch_retry_limit: int = 5
    ) -> None:
        self.client = client
        self._adapter = client.request_adapter
        # The adapter's HTTP pool (with the SDK middleware) and token provider, for `$batch` POSTs.
        self._http: httpx.AsyncClient = self._adapter._http_client  # type: ignore[attr-defined]
        self._tokens = self._adapter._authentication_provider.access_token_provider  # type: ignore[attr-defined]
        self._limit = asyncio.Semaphore(concurrency)
        self._batch_retry_limit = batch_retry_limit
        self.requests_sent = 0  # HTTP requests issued (SDK middleware retries not included)

    @property
    def slot(self) -> asyncio.Semaphore:
        """One of the tenant's request slots: hold it around a chain of page reads."""
        return self._limit

    @property
    def base_url(self) -> str:
        """The Graph root requests go to (no trailing slash)."""
        return str(self._adapter.base_url)

    async def send(self, request: RequestInformation, permission: str) -> bytes:
        """Send one request through the SDK and return the raw body, mapping failures to typed errors."""
        self.requests_sent += 1
        with typed_errors(permission):
            body: bytes | None = await self._adapter.send_primitive_async(request, "bytes", _ERROR_MAP)
        return body or b""

    async def post_batch(self, content: bytes, permission: str) -> bytes:
        """POST one `$batch` body (see the module docstring) and return the raw answer."""
        self.requests_sent += 1
        url = f"{self.base_url}/$batch"
        with typed_errors(permission):
            headers = {"Content-Type": "application/json", "Accept": "application/json"}
            token = await self._tokens.get_authorization_token(url, {})
            if token:
                headers["Authorization"] = f"Bearer {token}"
            # The options key makes the Graph transport run the middleware pipeline (with its defaults).
            request = self._http.build_request(
                "POST", url, content=content, headers=headers, extensions={REQUEST_OPTIONS_KEY: {}}
            )
            response = await self._http.send(request)
            if response.is_success:
                return response.content
            if response.status_code == 401 and _CLAIMS_CHALLENGE.match(
                response.headers.get("WWW-Authenticate", "")
            ):
                self.requests_sent -= 1  # counted again by send
                return await self.send(_batch_request(content), permission)
            await self._adapter.throw_failed_responses(  # type: ignore[attr-defined]
                response, _ERROR_MAP, trace.INVALID_SPAN, trace.INVALID_SPAN
            )
            return response.content

    def request_for(self, url: str, *, eventual: bool = False) -> RequestInformation:
        """A GET of an absolute URL (a nextLink, a delta link) through the SDK's pipeline."""
        request = self.client.users.with_url(url).to_get_request_information()
        if eventual:  # casts, $count and $search need it on every page
            request.headers.try_add("ConsistencyLevel", "eventual")
        return request

    async def pages(
        self,
        first: RequestInformation,
        decoder: msgspec.json.Decoder[T],
        permission: str,
        *,
        eventual: bool = False,
    ) -> AsyncIterator[T]:
        """Every page of a list, following @odata.nextLink to the end; any failing page raises."""
        request = first
        while True:
            page = decoder.decode(await self.send(request, permission))
            yield page
            link: str | None = getattr(page, "next_link", None)
            if not link:
                return
            request = self.request_for(link, eventual=eventual)

    def relative(self, link: str) -> str:
        """An absolute Graph URL (a nextLink) as the relative URL a `$batch` item needs."""
        base = self.base_url
        if link.startswith(base):
            return link[len(base) :]
        parts = urlsplit(link)
        path = parts.path.split("/", 2)[2] if parts.path.count("/") >= 2 else parts.path
        return f"/{path.lstrip('/')}?{parts.query}"

    async def batch_get(
        self, urls: Mapping[K, str], permission: str, *, eventual: bool = False
    ) -> dict[K, BatchItem]:
        """GET each relative URL, 20 to a `$batch`, batches side by side (bounded).

        Items throttled inside the batch's 200 (429/503/504) are retried after their own
        Retry-After; every other answer is returned as it came, for the caller to read.
        """
        keys = list(urls)
        headers = {"ConsistencyLevel": "eventual"} if eventual else {}
        results: dict[K, BatchItem] = {}

        async def one_batch(chunk: Sequence[K]) -> None:
            requests = {
                str(i): BatchRequest(id=str(i), method="GET", url=urls[key], headers=headers)
                for i, key in enumerate(chunk)
            }
            async with self._limit:
                items = await self._batch(requests, permission)
            for i, key in enumerate(chunk):
                results[key] = items[str(i)]

        chunks = [keys[i : i + MAX_BATCH_SIZE] for i in range(0, len(keys), MAX_BATCH_SIZE)]
        await asyncio.gather(*(one_batch(chunk) for chunk in chunks))
        return results

    async def _batch(self, requests: dict[str, BatchRequest], permission: str) -> dict[str, BatchItem]:
        pending = dict(requests)
        results: dict[str, BatchItem] = {}
        for attempt in range(self._batch_retry_limit + 1):
            raw = await self.post_batch(JSON.encode({"requests": list(pending.values())}), permission)
            wait = 0.0
            for item in BATCH_RESPONSE.decode(raw).responses:
                if item.status in _THROTTLED and attempt < self._batch_retry_limit:
                    wait = max(wait, retry_after(item.headers, attempt))
                    continue
                # Kept without its headers and with a copy of its body: a Raw body is a view that would
                # otherwise hold the whole batch answer in memory until the last batch is in.
                results[item.id] = BatchItem(id=item.id, status=item.status, body=item.body.copy())
                pending.pop(item.id, None)
            if not pending:
                return results
            await asyncio.sleep(wait)
        missing = ", ".join(sorted(pending))
        raise GraphUnavailable(f"batch items {missing} stayed throttled", 429)


def _batch_request(content: bytes) -> RequestInformation:
    info = RequestInformation(Method.POST, "{+baseurl}/$batch", {})
    info.headers.try_add("Accept", "application/json")
    info.set_stream_content(content, "application/json")
    return info


@contextlib.contextmanager
def typed_errors(permission: str) -> Iterator[None]:
    """Map what the SDK, azure-identity and httpx raise to the directory's typed errors."""
    try:
        yield
    except ODataError as exc:
        raise error_from_odata(exc, permission) from exc
    except ClientAuthenticationError as exc:  # Entra ID refused the token (consent, credential)
        raise GraphTokenRefused.from_message(exc.message or str(exc)) from exc
    except WrongTenantError as exc:
        raise GraphTokenRefused(AccessProblem.CREDENTIAL_REJECTED, None, str(exc)) from exc
    except httpx.TimeoutException as exc:
        raise GraphUnavailable(f"request timed out ({type(exc).__name__})") from exc
    except httpx.TransportError as exc:
        raise GraphUnavailable(f"connection failed ({type(exc).__name__})") from exc


def retry_after(headers: Mapping[str, str], attempt: int) -> float:
    """Seconds to wait before retrying a throttled `$batch` item: its Retry-After, else backoff."""
    for key, value in headers.items():
        if key.lower() == "retry-after":
            try:
                seconds = float(value)
            except ValueError:
                break
            if seconds > MAX_RETRY_AFTER_SECONDS:
                raise GraphUnavailable(f"Graph asked to wait {seconds:.0f} s before retrying", 429)
            return max(seconds, 0.0)
    return min(0.5 * 2.0**attempt, 10.0)


def chunked(items: Sequence[str], size: int) -> list[Sequence[str]]:
    """`items` in slices of `size`."""
    return [items[i : i + size] for i in range(0, len(items), size)]
