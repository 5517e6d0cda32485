"""The socket layer under the Graph pool: httpx's own transport over aiohttp's connector.

msgraph-sdk sends through an httpx.AsyncClient whose transport carries the SDK middleware (retries
on 429/503/504 honouring Retry-After, redirects, telemetry headers); that stays as it is, and so
does httpx's AsyncHTTPTransport (so OpenTelemetry's httpx instrumentation still records every Graph
call as a dependency, and httpx maps failures to its exceptions as before). Only the connection
pool under it changes: httpcore's cost about 2 ms of CPU per request in the 60,000-user refresh
(for every request it walks each connection and waiting request, polls each idle socket, and
tries to import `sniffio`, which is not installed), where aiohttp's connector, already used by the
Azure Storage clients, does the same work in about 0.2 ms (README "Benchmarks"). HTTP/1.1 with
keep-alive: aiohttp has no HTTP/2, so a worker keeps up to `max_connections` connections to Graph
instead of multiplexing on one.
"""

from __future__ import annotations

import asyncio
import urllib.request
import warnings
from types import TracebackType
from typing import Any

import aiohttp
import httpcore
import httpx
import yarl

# aiohttp's exception for a cause -> the httpcore exception httpcore raises for it (most specific
# first); httpx turns each into its own (httpx.ConnectTimeout, httpx.ReadTimeout, ...).
_ERRORS: tuple[tuple[type[BaseException], type[Exception]], ...] = (
    (aiohttp.ConnectionTimeoutError, httpcore.ConnectTimeout),
    (aiohttp.ServerTimeoutError, httpcore.ReadTimeout),
    (asyncio.TimeoutError, httpcore.PoolTimeout),
    (aiohttp.ClientConnectorError, httpcore.ConnectError),
    (aiohttp.ServerDisconnectedError, httpcore.RemoteProtocolError),
    (aiohttp.ClientPayloadError, httpcore.ReadError),
    (aiohttp.ClientOSError, httpcore.ReadError),
    (aiohttp.ClientError, httpcore.NetworkError),
)


class _PoolConnector(aiohttp.TCPConnector):
    """aiohttp's connector, let go quietly when it is dropped without aclose (as an httpcore pool is):
    a worker's event loop lives as long as its process, a test's or a CLI command's ends with it."""

    @property
    def closed(self) -> bool:
        """Closed, or its event loop is (the session then reports no unclosed connector)."""
        return self._closed or self._loop.is_closed()

    def __del__(self, _warnings: Any = warnings) -> None:
        if not self._closed:
            self._close()  # close the sockets; nothing is left to await
        super().__del__(_warnings)


class AiohttpConnectionPool:
    """httpcore's AsyncConnectionPool interface, served by one aiohttp session (made on first use)."""

    def __init__(self, *, max_connections: int, keepalive_expiry: float) -> None:
        self._max_connections = max_connections
        self._keepalive_expiry = keepalive_expiry
        self._session: aiohttp.ClientSession | None = None

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None:
            connector = _PoolConnector(limit=self._max_connections, keepalive_timeout=self._keepalive_expiry)
            self._session = aiohttp.ClientSession(
                connector=connector,
                auto_decompress=False,  # httpx decodes by Content-Encoding, as it does over httpcore
                skip_auto_headers=("Accept", "Accept-Encoding", "User-Agent", "Content-Type"),
                # httpx honours HTTP(S)_PROXY from the environment; so does this session then.
                trust_env=bool(urllib.request.getproxies()),
            )
        return self._session

    async def handle_async_request(self, request: httpcore.Request) -> httpcore.Response:
        """Send one request and read its whole answer (the SDK reads every body whole anyway)."""
        timeout = request.extensions.get("timeout", {})
        content = b"".join([chunk async for chunk in request.stream])  # type: ignore[union-attr]
        url = request.url
        port = f":{url.port}" if url.port else ""
        target = f"{url.scheme.decode()}://{url.host.decode()}{port}{url.target.decode()}"
        try:
            async with self._client().request(
                request.method.decode(),
                yarl.URL(target, encoded=True),  # as httpx encoded it, not re-quoted
                headers=[
                    (name.decode("latin-1"), value.decode("latin-1")) for name, value in request.headers
                ],
                data=content or None,
                allow_redirects=False,  # the SDK's RedirectHandler decides
                timeout=aiohttp.ClientTimeout(
                    sock_connect=timeout.get("connect"),
                    sock_read=timeout.get("read"),
                    connect=timeout.get("pool"),
                ),
            ) as answer:
                body = await answer.read()
        except Exception as exc:
            for cause, mapped in _ERRORS:
                if isinstance(exc, cause):
                    raise mapped(str(exc) or type(exc).__name__) from exc
            raise
        extensions: dict[str, object] = {"http_version": b"HTTP/1.1"}
        if answer.reason:
            extensions["reason_phrase"] = answer.reason.encode("latin-1", "replace")
        return httpcore.Response(
            answer.status, headers=list(answer.raw_headers), content=body, extensions=extensions
        )

    async def aclose(self) -> None:
        """Close the session and its connections."""
        if self._session is not None:
            await self._session.close()
            self._session = None

    def __del__(self) -> None:
        # Dropped without aclose (the loop that opened it ended: a test's, or a worker's at exit): let
        # the sockets go quietly, as an httpcore pool is let go, instead of aiohttp's "Unclosed ..." report.
        session = self._session
        if session is not None and not session.closed:
            connector = session.connector
            session.detach()
            if connector is not None:
                connector._close()

    async def __aenter__(self) -> AiohttpConnectionPool:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()


class AiohttpGraphTransport(httpx.AsyncHTTPTransport):
    """httpx's AsyncHTTPTransport (request and response mapping, instrumentation) on AiohttpConnectionPool."""

    def __init__(self, *, max_connections: int, keepalive_expiry: float = 5.0) -> None:
        # Not super().__init__: that builds an httpcore pool, which is exactly what is replaced.
        self._pool = AiohttpConnectionPool(  # type: ignore[assignment]
            max_connections=max_connections, keepalive_expiry=keepalive_expiry
        )
