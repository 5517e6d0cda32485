"""Connecting a tenant by admin consent: one-time `state` values, and a tenant's consent on record.

"Connect Microsoft 365" sends a customer's administrator to Entra's admin-consent endpoint
(`{authority}/{tenant}/adminconsent?client_id&redirect_uri&state`); Entra sends them back to
`{APP_BASE_URL}/api/consent/callback` with `admin_consent=True&tenant=...&state=...`, or with
`error=...&error_description=...&state=...` ("Admin consent on the Microsoft identity platform").
The callback is anonymous at App Service Authentication: the `state` is what it trusts. Each state
is random, stored only as its SHA-256 (table `consentStates`), bound to who asked and the tenant
they asked for, valid CONSENT_STATE_SECONDS and usable once (an ETag-guarded update marks it used).

A tenant whose Graph token is refused for want of consent is marked `notConsented` on its record
(`note_token_refusal`): nightly runs skip it with a `TenantSkipped` warning instead of failing every
night, and the page offers Reconnect; a successful consent or connection check clears the mark.
"""

from __future__ import annotations

import hashlib
import logging
import secrets
from datetime import datetime, timedelta
from typing import Any

import msgspec
from azure.core import MatchConditions
from azure.core.exceptions import ResourceModifiedError, ResourceNotFoundError
from azure.data.tables import UpdateMode

from shared.settings import Settings
from shared.storage import CONSENT_STATES_TABLE, SingleTableStore, plain_value
from sync.directory import GraphTokenRefused
from sync.models import NOT_CONSENTED, AccessProblem
from sync.store import SyncStore, utc_now

CONSENT_STATE_SECONDS = 15 * 60  # long enough to sign in and read the consent page; short enough to expire
CONSENT_CALLBACK_PATH = "/api/consent/callback"  # infra/app/api.bicep excludes it from sign-in
_PARTITION = "consent"

log = logging.getLogger("sync.onboarding")


class ConsentRequest(msgspec.Struct, frozen=True, kw_only=True, rename="camel"):
    """Who started an admin consent, for which tenant, until when."""

    tenant_id: str  # the tenant asked for: a GUID, or "organizations" (operators)
    display_name: str | None = None  # the name to register it under
    requested_by: str  # the principal, as its changes are recorded
    principal_tenant_id: str
    principal_object_id: str
    created_at: datetime
    expires_at: datetime


class StateRefused(Exception):
    """The callback's state is unknown, used or expired: the consent round trip must start again."""


def redirect_uri(settings: Settings) -> str | None:
    """Where Entra sends the administrator back (None without APP_BASE_URL)."""
    return f"{settings.app_base_url}{CONSENT_CALLBACK_PATH}" if settings.app_base_url else None


def new_request(
    tenant_id: str, display_name: str | None, *, by: str, principal_tenant_id: str, principal_object_id: str
) -> ConsentRequest:
    """A consent request starting now, expiring in CONSENT_STATE_SECONDS."""
    now = utc_now()
    return ConsentRequest(
        tenant_id=tenant_id,
        display_name=display_name,
        requested_by=by,
        principal_tenant_id=principal_tenant_id,
        principal_object_id=principal_object_id,
        created_at=now,
        expires_at=now + timedelta(seconds=CONSENT_STATE_SECONDS),
    )


def _key(state: str) -> str:
    # Only the hash is stored: reading the table does not hand out usable states.
    return hashlib.sha256(state.encode("utf-8")).hexdigest()


class ConsentStateStore(SingleTableStore):
    """The one-time states of admin-consent requests (table `consentStates`)."""

    TABLE = CONSENT_STATES_TABLE

    async def create(self, request: ConsentRequest) -> str:
        """Store a request; returns its state (the only copy: it goes into the consent URL)."""
        state = secrets.token_urlsafe(32)
        entity: dict[str, Any] = {"PartitionKey": _PARTITION, "RowKey": _key(state)}
        entity.update(
            {
                k: v
                for k, v in msgspec.to_builtins(request, builtin_types=(datetime,)).items()
                if v is not None
            }
        )
        await self._table.create_entity(entity)
        return state

    async def take(self, state: str, now: datetime | None = None) -> ConsentRequest:
        """The request a state stands for, marked used; StateRefused when unknown, used or expired."""
        if not state or len(state) > 256:
            raise StateRefused("the state is not one this app issued")
        try:
            entity = await self._table.get_entity(_PARTITION, _key(state))
        except ResourceNotFoundError:
            raise StateRefused("the state is not one this app issued") from None
        if entity.get("usedAt"):
            raise StateRefused("this consent link was already used; start again with Connect Microsoft 365")
        data = {
            k: plain_value(v)
            for k, v in entity.items()
            if k not in ("PartitionKey", "RowKey", "Timestamp", "usedAt") and not k.startswith("odata")
        }
        request = msgspec.convert(data, ConsentRequest, strict=False)
        if (now or utc_now()) >= request.expires_at:
            raise StateRefused(
                f"the consent link expired ({CONSENT_STATE_SECONDS // 60} minutes); "
                "start again with Connect Microsoft 365"
            )
        try:
            await self._table.update_entity(
                {"PartitionKey": _PARTITION, "RowKey": _key(state), "usedAt": utc_now()},
                mode=UpdateMode.MERGE,
                etag=entity.metadata["etag"],
                match_condition=MatchConditions.IfNotModified,
            )
        except (ResourceModifiedError, ResourceNotFoundError):
            raise StateRefused(
                "this consent link was already used; start again with Connect Microsoft 365"
            ) from None
        return request


async def note_token_refusal(store: SyncStore, tenant_id: str, exc: BaseException) -> bool:
    """Mark the tenant `notConsented` when `exc` is Entra refusing a token for want of consent."""
    if not (isinstance(exc, GraphTokenRefused) and exc.problem is AccessProblem.NOT_CONSENTED):
        return False
    try:
        await store.set_consent_state(tenant_id, NOT_CONSENTED)
    except Exception:  # the run's own failure must still be recorded
        log.exception("could not mark the tenant's consent missing", extra={"tenantId": tenant_id})
        return False
    return True
