"""The credential for the demo tenant (GRAPH_AUTH=demo): client credentials against its token endpoint.

It asks `{authority}/{tenant}/oauth2/v2.0/token` for a Graph token the way a confidential client
does (grant_type=client_credentials, scope https://graph.microsoft.com/.default, a JWT client
assertion), keeps the token until shortly before it expires, and fails as azure-identity does:
`ClientAuthenticationError("Authentication failed: AADSTS...")`. Only when the look-alike has no
token endpoint at all (404) does it fall back to the static `demo.{tenant}` bearer token.
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
import uuid
from typing import Any

import httpx
from azure.core.credentials import AccessToken
from azure.core.credentials_async import AsyncTokenCredential
from azure.core.exceptions import ClientAuthenticationError, ServiceRequestError

from shared.settings import DEMO_GRAPH_APP_CLIENT_ID

DEMO_CLIENT_ID = DEMO_GRAPH_APP_CLIENT_ID
"""The app id the demo credential presents when no GRAPH_APP_CLIENT_ID is configured."""
DEFAULT_SCOPE = "https://graph.microsoft.com/.default"
_JWT_BEARER = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
_REFRESH_MARGIN_SECONDS = 300.0  # as azure-identity: refresh five minutes before expiry


def _b64(data: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(data, separators=(",", ":")).encode()).decode().rstrip("=")


class DemoTenantCredential(AsyncTokenCredential):
    """Client-credentials tokens from the demo tenant's token endpoint, cached until shortly before expiry."""

    def __init__(
        self, tenant_id: str, authority: str, client_id: str | None = None, timeout: float = 10.0
    ) -> None:
        self._tenant_id = tenant_id
        self._authority = authority.rstrip("/")
        self._client_id = client_id or DEMO_CLIENT_ID
        self._timeout = timeout
        self._token: AccessToken | None = None
        self._refresh_at = 0.0
        self._lock = asyncio.Lock()

    @property
    def token_url(self) -> str:
        """Where the token request goes."""
        return f"{self._authority}/{self._tenant_id}/oauth2/v2.0/token"

    def _assertion(self) -> str:
        """A JWT client assertion naming this workload (the demo tenant does not check its signature)."""
        now = int(time.time())
        claims = {
            "aud": "api://AzureADTokenExchange",
            "iss": f"{self._authority}/demo-workload-identity",
            "sub": f"demo-workload:{self._client_id}",
            "jti": str(uuid.uuid4()),
            "iat": now,
            "exp": now + 600,
        }
        return f"{_b64({'alg': 'none', 'typ': 'JWT'})}.{_b64(claims)}."

    async def get_token(self, *scopes: str, **kwargs: Any) -> AccessToken:
        """A Graph access token for the tenant; a cached one while it has more than a few minutes left."""
        async with self._lock:
            if self._token is not None and time.time() < self._refresh_at:
                return self._token
            token = await self._request(scopes[0] if scopes else DEFAULT_SCOPE)
            lifetime = max(0.0, token.expires_on - time.time())
            self._refresh_at = token.expires_on - min(_REFRESH_MARGIN_SECONDS, lifetime / 2)
            self._token = token
            return token

    async def _request(self, scope: str) -> AccessToken:
        form = {
            "grant_type": "client_credentials",
            "client_id": self._client_id,
            "scope": scope,
            "client_assertion_type": _JWT_BEARER,
            "client_assertion": self._assertion(),
        }
        try:
            async with httpx.AsyncClient(timeout=self._timeout) as http:
                response = await http.post(self.token_url, data=form)
        except httpx.TransportError as exc:
            raise ServiceRequestError(
                f"the token endpoint {self.token_url} could not be reached: {exc}"
            ) from exc
        if response.status_code == 404:
            # A Graph look-alike without an identity platform: it routes by this static token.
            return AccessToken(f"demo.{self._tenant_id}", int(time.time()) + 3600)
        try:
            body = response.json()
        except ValueError:
            body = {}
        if response.status_code != 200 or "access_token" not in body:
            detail = body.get("error_description") or body.get("error") or f"HTTP {response.status_code}"
            raise ClientAuthenticationError(message=f"Authentication failed: {detail}")
        return AccessToken(body["access_token"], int(time.time()) + int(body.get("expires_in", 3599)))

    async def close(self) -> None:
        """Nothing to release (each token request uses its own connection)."""

    async def __aexit__(self, *args: object) -> None:
        await self.close()
