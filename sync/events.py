"""Optional: each roster change published as a CloudEvent to an Azure Event Grid topic.

With EVENTS_TOPIC_ENDPOINT set, the changes a run wrote (added, updated, removed, restored, purged)
are POSTed as a CloudEvents 1.0 batch (`application/cloudevents-batch+json`), authenticated with
the app's managed identity (Microsoft Entra, scope https://eventgrid.azure.net/.default; the topic
has local auth off and the identity holds "EventGrid Data Sender"). Events are sent after the roster
is written; a failure is logged and the change feed (GET .../changes) still has every change.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import httpx
import msgspec

from shared.settings import GraphAuthMode, Settings
from sync.models import AuditRecord, utc_text

log = logging.getLogger("sync.events")

EVENT_GRID_SCOPE = "https://eventgrid.azure.net/.default"
EVENT_TYPE_PREFIX = "O365GroupsSync.Roster."
MAX_EVENTS_PER_POST = 500  # Event Grid takes up to 1 MB per batch; a change is a few hundred bytes


class CloudEvent(msgspec.Struct, frozen=True, kw_only=True):
    """One roster change as a CloudEvent 1.0."""

    specversion: str = "1.0"
    id: str
    source: str
    type: str
    subject: str
    time: str
    datacontenttype: str = "application/json"
    data: dict[str, str | None]


def cloud_events(tenant_id: str, records: Sequence[AuditRecord]) -> list[CloudEvent]:
    """The roster changes among `records` as CloudEvents (configuration changes are not published)."""
    return [
        CloudEvent(
            id=f"{record.run_id}:{record.user_id}:{record.kind}",
            source=f"/tenants/{tenant_id}",
            type=f"{EVENT_TYPE_PREFIX}{str(record.kind)[:1].upper()}{str(record.kind)[1:]}",
            subject=f"users/{record.user_id}",
            time=utc_text(record.at),
            data={
                "tenantId": tenant_id,
                "userId": record.user_id,
                "userPrincipalName": record.user_principal_name,
                "runId": record.run_id,
                "reason": record.reason,
            },
        )
        for record in records
        if record.kind.is_roster_change
    ]


class EventPublisher:
    """Sends roster changes to the Event Grid topic, when one is configured."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings

    @property
    def enabled(self) -> bool:
        """Whether EVENTS_TOPIC_ENDPOINT is set."""
        return bool(self._settings.events_topic_endpoint)

    async def publish(self, tenant_id: str, records: Sequence[AuditRecord]) -> int:
        """POST the changes as CloudEvent batches; returns how many events were sent (0 on failure)."""
        endpoint = self._settings.events_topic_endpoint
        if not endpoint:
            return 0  # before building anything: a first load's 100,000 events would cost 20 MB
        events = cloud_events(tenant_id, records)
        if not events:
            return 0
        headers = {"Content-Type": "application/cloudevents-batch+json; charset=utf-8"}
        try:
            token = await self._token()
            if token:
                headers["Authorization"] = f"Bearer {token}"
            async with httpx.AsyncClient(timeout=30) as client:
                for start in range(0, len(events), MAX_EVENTS_PER_POST):
                    batch = msgspec.json.encode(events[start : start + MAX_EVENTS_PER_POST])
                    response = await client.post(endpoint, content=batch, headers=headers)
                    response.raise_for_status()
        except Exception:
            log.warning(
                "roster changes were not published to Event Grid",
                exc_info=True,
                extra={"tenantId": tenant_id},
            )
            return 0
        return len(events)

    async def _token(self) -> str | None:
        if self._settings.graph_auth is GraphAuthMode.DEMO:
            return None  # locally: an endpoint of our own that takes no token
        from azure.identity.aio import ManagedIdentityCredential

        async with ManagedIdentityCredential(client_id=self._settings.azure_client_id) as credential:
            token: str = (await credential.get_token(EVENT_GRID_SCOPE)).token
            return token
