"""Microsoft Graph clients: one msgraph-sdk GraphServiceClient per customer tenant.

The credential depends on GRAPH_AUTH (see shared.settings.GraphAuthMode). Every tenant's
client shares one HTTP connection pool per event loop, with the SDK's default middleware
(retry on 429/503/504 honouring Retry-After, redirects, telemetry) over aiohttp's connector
(`shared.graph_http`: httpcore's pool cost ten times the CPU per request).
"""

from __future__ import annotations

import asyncio
import base64
import functools
import json
import weakref
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

import httpx
from azure.core.credentials import AccessToken
from azure.core.credentials_async import AsyncTokenCredential
from kiota_authentication_azure.azure_identity_authentication_provider import (
    AzureIdentityAuthenticationProvider,
)
from kiota_http.middleware.options import RetryHandlerOption
from msgraph.graph_request_adapter import GraphRequestAdapter
from msgraph.graph_service_client import GraphServiceClient
from msgraph_core import GraphClientFactory

from shared.demo_credential import DemoTenantCredential
from shared.graph_http import AiohttpGraphTransport
from shared.settings import GraphAuthMode, Settings


class WrongTenantError(RuntimeError):
    """The credential's token is for a different tenant than the one asked for."""


@dataclass(frozen=True, kw_only=True)
class GraphHttpOptions:
    """Transport settings shared by every tenant's client."""

    max_retries: int = 5  # Kiota's ceiling is 10; Graph throttling usually clears in a few
    retry_delay_seconds: float = 1.0  # base delay added to backoff when no Retry-After is sent
    request_timeout_seconds: float = 60.0
    connect_timeout_seconds: float = 10.0
    max_connections: int = 32


def _token_tenant(token: str) -> str | None:
    """The `tid` claim of a JWT access token, without verifying it (Graph verifies)."""
    try:
        payload = token.split(".")[1]
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    except (IndexError, ValueError):
        return None
    tid = claims.get("tid")
    return tid if isinstance(tid, str) else None


class TenantPinnedCredential(AsyncTokenCredential):
    """Refuses tokens issued for another tenant.

    With `managed-identity` or `default`, the credential's tenant is fixed by Azure, not by
    the request: syncing tenant B with tenant A's token would read the wrong directory and
    remove everyone. This check makes that a failed run instead.
    """

    def __init__(self, inner: AsyncTokenCredential, tenant_id: str) -> None:
        self._inner = inner
        self._tenant_id = tenant_id.lower()

    async def get_token(self, *scopes: str, **kwargs: Any) -> AccessToken:
        """Return the inner token after checking its tenant."""
        token = await self._inner.get_token(*scopes, **kwargs)
        tid = _token_tenant(token.token)
        if tid is not None and tid.lower() != self._tenant_id:
            raise WrongTenantError(
                f"the Graph credential issues tokens for tenant {tid}, not {self._tenant_id}; "
                "use GRAPH_AUTH=federated to serve several tenants"
            )
        return token

    async def close(self) -> None:
        """Close the wrapped credential."""
        await self._inner.close()

    async def __aexit__(self, *args: object) -> None:
        await self.close()


def _credential_for(settings: Settings, tenant_id: str) -> AsyncTokenCredential:
    from azure.identity.aio import (
        ClientAssertionCredential,
        DefaultAzureCredential,
        ManagedIdentityCredential,
    )

    mode = settings.graph_auth
    if mode is GraphAuthMode.DEMO:
        return DemoTenantCredential(
            tenant_id, authority=settings.graph_authority_host, client_id=settings.graph_app_client_id
        )
    if mode is GraphAuthMode.FEDERATED:
        # The Graph-only identity: its token, issued for the cloud's token-exchange audience, is the
        # assertion of the multi-tenant Graph app in the customer's tenant.
        identity = ManagedIdentityCredential(client_id=settings.graph_identity_client_id)
        audience = f"{settings.cloud.token_exchange_audience}/.default"

        async def assertion() -> str:
            token: AccessToken = await identity.get_token(audience)
            return token.token

        assert settings.graph_app_client_id  # load_settings enforces it
        return _AsyncAssertionCredential(
            tenant_id,
            settings.graph_app_client_id,
            assertion,
            functools.partial(ClientAssertionCredential, authority=settings.graph_authority_host),
        )
    if mode is GraphAuthMode.DEFAULT:
        return TenantPinnedCredential(DefaultAzureCredential(), tenant_id)
    return TenantPinnedCredential(ManagedIdentityCredential(client_id=settings.azure_client_id), tenant_id)


class _AsyncAssertionCredential(AsyncTokenCredential):
    """ClientAssertionCredential whose assertion comes from an async managed identity.

    azure-identity's aio ClientAssertionCredential wants a synchronous callback; the
    managed identity token is fetched ahead of each token request instead.
    """

    def __init__(self, tenant_id: str, client_id: str, assertion: Any, factory: Any) -> None:
        self._assertion_source = assertion
        self._assertion = ""
        self._inner = factory(tenant_id, client_id, lambda: self._assertion)

    async def get_token(self, *scopes: str, **kwargs: Any) -> AccessToken:
        """Refresh the federated assertion, then ask Entra ID for a Graph token."""
        self._assertion = await self._assertion_source()
        token: AccessToken = await self._inner.get_token(*scopes, **kwargs)
        return token

    async def close(self) -> None:
        """Close the wrapped credential."""
        await self._inner.close()

    async def __aexit__(self, *args: object) -> None:
        await self.close()


def admin_consent_url(
    settings: Settings, tenant_id: str, *, redirect_uri: str | None = None, state: str | None = None
) -> str | None:
    """The link a customer's Global Administrator opens to grant the app's Graph permissions.

    With `redirect_uri` and `state`, Entra sends the administrator back to the app afterwards
    (Connect Microsoft 365); `tenant_id` may then be `organizations`.
    """
    if not settings.graph_app_client_id:
        return None
    query = {"client_id": settings.graph_app_client_id}
    if redirect_uri:
        query["redirect_uri"] = redirect_uri
    if state:
        query["state"] = state
    return f"{settings.graph_authority_host}/{tenant_id}/adminconsent?{urlencode(query)}"


class GraphClients:
    """Builds and keeps one GraphServiceClient per tenant, sharing one HTTP pool per loop.

    httpx pools are bound to the event loop that opened them, so the pool and the clients
    are kept per running loop (one loop in the Functions worker; one per test in pytest).
    """

    def __init__(self, settings: Settings, http: GraphHttpOptions | None = None) -> None:
        self._settings = settings
        self._http = http or GraphHttpOptions()
        self._per_loop: weakref.WeakKeyDictionary[
            asyncio.AbstractEventLoop, dict[str, GraphServiceClient]
        ] = weakref.WeakKeyDictionary()
        self._pools: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, httpx.AsyncClient] = (
            weakref.WeakKeyDictionary()
        )

    @property
    def base_url(self) -> str:
        """Graph root every client talks to (GRAPH_BASE_URL)."""
        return self._settings.graph_base_url

    def _pool(self, loop: asyncio.AbstractEventLoop) -> httpx.AsyncClient:
        pool = self._pools.get(loop)
        if pool is None:
            opts = self._http
            plain = httpx.AsyncClient(
                timeout=httpx.Timeout(opts.request_timeout_seconds, connect=opts.connect_timeout_seconds),
                transport=AiohttpGraphTransport(max_connections=opts.max_connections),
            )
            retry = RetryHandlerOption(delay=opts.retry_delay_seconds, max_retries=opts.max_retries)
            pool = GraphClientFactory.create_with_default_middleware(
                client=plain, options={RetryHandlerOption.get_key(): retry}
            )
            self._pools[loop] = pool
        return pool

    def for_tenant(self, tenant_id: str) -> GraphServiceClient:
        """The Graph client for one customer tenant (cached)."""
        loop = asyncio.get_running_loop()
        clients = self._per_loop.setdefault(loop, {})
        client = clients.get(tenant_id)
        if client is None:
            credential = _credential_for(self._settings, tenant_id)
            host = httpx.URL(self._settings.graph_base_url).host
            auth = AzureIdentityAuthenticationProvider(
                credential, scopes=[self._settings.cloud.graph_scope], allowed_hosts=[host]
            )
            adapter = GraphRequestAdapter(auth, client=self._pool(loop))
            # Must be set before GraphServiceClient is built, which otherwise pins graph.microsoft.com.
            adapter.base_url = self._settings.graph_base_url
            client = GraphServiceClient(request_adapter=adapter)
            clients[tenant_id] = client
        return client

    async def aclose(self) -> None:
        """Close the HTTP pool of the running loop."""
        loop = asyncio.get_running_loop()
        self._per_loop.pop(loop, None)
        pool = self._pools.pop(loop, None)
        if pool is not None:
            await pool.aclose()
