"""Graph change-notification subscriptions of one tenant: create, renew, reauthorize, delete.

"Create subscription": POST /subscriptions with the resource, the change types, the notification
and lifecycle URLs, an expiration (users and groups: at most 41,760 minutes ahead) and a
`clientState` the webhook checks; Graph validates the notification URL first. The application
permission is the resource's read permission: User.Read.All for /users, Group.Read.All for /groups.
"""

from __future__ import annotations

from datetime import datetime

import msgspec
from kiota_abstractions.method import Method
from kiota_abstractions.request_information import RequestInformation

from sync.directory.transport import GraphTransport
from sync.models import utc_text

# Users and groups: a subscription lives at most 41,760 minutes (just under 29 days).
MAX_SUBSCRIPTION_MINUTES = 41_760
RESOURCE_PERMISSIONS = {"/users": "User.Read.All", "/groups": "Group.Read.All"}


class GraphSubscription(msgspec.Struct, rename="camel"):
    """The subscription resource, as far as the app reads it."""

    id: str
    resource: str = ""
    change_type: str = ""
    expiration_date_time: datetime | None = None


_SUBSCRIPTION = msgspec.json.Decoder(GraphSubscription)
_JSON = msgspec.json.Encoder()


class SubscriptionWrites:
    """Subscription calls of one tenant."""

    transport: GraphTransport

    def _request(
        self, method: Method, path: str, body: dict[str, object] | None = None
    ) -> RequestInformation:
        info = RequestInformation(method, "{+baseurl}" + path, {})
        info.headers.try_add("Accept", "application/json")
        if body is not None:
            info.set_stream_content(_JSON.encode(body), "application/json")
        return info

    async def create_subscription(
        self,
        resource: str,
        *,
        change_type: str,
        notification_url: str,
        lifecycle_url: str,
        client_state: str,
        expires: datetime,
    ) -> GraphSubscription:
        """POST /subscriptions (Graph first asks `notification_url` to echo a validation token)."""
        body: dict[str, object] = {
            "changeType": change_type,
            "notificationUrl": notification_url,
            "lifecycleNotificationUrl": lifecycle_url,
            "resource": resource,
            "expirationDateTime": utc_text(expires),
            "clientState": client_state,
        }
        raw = await self.transport.send(
            self._request(Method.POST, "/subscriptions", body), RESOURCE_PERMISSIONS.get(resource, "")
        )
        return _SUBSCRIPTION.decode(raw)

    async def renew_subscription(self, subscription_id: str, expires: datetime) -> GraphSubscription:
        """PATCH the subscription's expiration (renewing also reauthorizes it)."""
        body: dict[str, object] = {"expirationDateTime": utc_text(expires)}
        raw = await self.transport.send(
            self._request(Method.PATCH, f"/subscriptions/{subscription_id}", body), "the subscription's"
        )
        return _SUBSCRIPTION.decode(raw)

    async def reauthorize_subscription(self, subscription_id: str) -> None:
        """POST /subscriptions/{id}/reauthorize, after a reauthorizationRequired lifecycle event."""
        await self.transport.send(
            self._request(Method.POST, f"/subscriptions/{subscription_id}/reauthorize"), "the subscription's"
        )

    async def delete_subscription(self, subscription_id: str) -> None:
        """DELETE the subscription (a tenant disconnected)."""
        await self.transport.send(
            self._request(Method.DELETE, f"/subscriptions/{subscription_id}"), "the subscription's"
        )
