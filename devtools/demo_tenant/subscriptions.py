"""Change notifications: /subscriptions, the validation handshake, and delivery to the notification URL.

Follows these Microsoft pages (the row of each behaviour, with its test, is in docs/graph-contract.md):

- "Create subscription", "Update subscription", "Delete subscription", "List subscriptions",
  "Get subscription", "subscription: reauthorize" and the subscription resource: 201 with the
  subscription; before that a POST to `notificationUrl` (and `lifecycleNotificationUrl`) with
  `?validationToken=…` that must be echoed within 10 s as `200 text/plain`; expiry at most
  41,760 minutes ahead for users and groups; `clientState` at most 128 characters; the application
  permission is the resource's read permission (User.Read.All for users, Group.Read.All for groups);
  an expired subscription is gone; listing leaves `clientState` out.
- "Set up notifications for changes in resource data" (supported resources: `/users`, `/users/{id}`,
  `/groups`, `/groups/{id}`, `/groups/{id}/members`; 100 subscriptions per app and tenant; creation
  and soft deletion of users and groups arrive as `updated`, permanent deletion as `deleted`).
- "Receive change notifications through webhooks": a changeNotificationCollection POSTed to the
  notification URL, several notifications to a POST; a 2xx within 3 s is delivered, anything else is
  retried with exponential backoff for up to 4 hours.
- "Reduce missing subscriptions and change notifications": lifecycle notifications
  (`reauthorizationRequired`, `subscriptionRemoved`, `missed`) POSTed to `lifecycleNotificationUrl`,
  which can only be given at creation.
- the changeNotification and changeNotificationCollection resources: `subscriptionId`,
  `subscriptionExpirationDateTime`, `clientState`, `changeType`, `resource`, `resourceData`
  (`@odata.type`, `@odata.id`, `id`), `tenantId`; `validationTokens` only for notifications with
  resource data, which users and groups do not have.

Deviation (documented in the demo tenant's README rows): with `allow_http_notification_urls`
(the default here) an `http://` notification URL on the loopback host (127.0.0.1, ::1, localhost)
is accepted, because nothing under `make run` or in tests serves https; Graph takes https only.

Microsoft does not document the body of a group notification; as field reports describe it, a
membership change carries `members@delta` in `resourceData` (`[{"id": …}]`, a removal with
`"@removed": "deleted"`). Product code should treat a notification as a signal to read changes (delta),
never as the change itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import re
import threading
import time
import uuid
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, Literal, cast
from urllib.parse import quote, urlsplit

import aiohttp
import msgspec
from yarl import URL

from devtools.demo_tenant.model import Change, Tenant
from devtools.demo_tenant.query import Call
from devtools.demo_tenant.wire import GraphError, Reply

if TYPE_CHECKING:
    from devtools.demo_tenant.server import DemoGraphServer

MAX_EXPIRATION_MINUTES = 41_760  # user, group, other directory resources: under 29 days
CLIENT_STATE_MAX = 128
MAX_PER_APP_AND_TENANT = 100
VALIDATION_TIMEOUT = 10.0  # the endpoint must echo the token within 10 seconds
DELIVERY_TIMEOUT = 3.0  # a notification is delivered when a 2xx comes back within 3 seconds
GIVE_UP_AFTER = 4 * 3600.0  # failed notifications are retried for up to 4 hours
# What Graph sent as a validation token in a reported case: opaque, with spaces and colons, so an
# endpoint that does not URL-decode the query fails as it would against Graph.
VALIDATION_TOKEN = "Validation: Testing client application reachability for subscription Request-Id: {}"
LIFECYCLE_EVENTS = ("reauthorizationRequired", "subscriptionRemoved", "missed")
CHANGE_TYPES = ("created", "updated", "deleted")
DELIVERY_FAULT_KINDS = ("drop", "duplicate", "reorder")
# The application permission each subscribable resource needs ("Create subscription", Permissions).
SUBSCRIPTION_ROLES: dict[str, frozenset[str]] = {
    "users": frozenset({"User.Read.All"}),
    "groups": frozenset({"Group.Read.All"}),
}
ODATA_TYPES = {"users": "#Microsoft.Graph.User", "groups": "#Microsoft.Graph.Group"}
ENTITY_SETS = {"users": "Users", "groups": "Groups"}
_PROPERTIES = frozenset(
    {
        "applicationId",
        "changeType",
        "clientState",
        "creatorId",
        "encryptionCertificate",
        "encryptionCertificateId",
        "expirationDateTime",
        "id",
        "includeResourceData",
        "latestSupportedTlsVersion",
        "lifecycleNotificationUrl",
        "notificationQueryOptions",
        "notificationUrl",
        "notificationUrlAppId",
        "resource",
    }
)
_UPDATABLE = frozenset({"expirationDateTime", "notificationUrl"})
_LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1", "[::1]"})
_LOG_LIMIT = 50_000
_REORDER_HOLD = 2.0  # a held-back collection goes out after the next one, or after this long
_SEGMENT = re.compile(r"^[A-Za-z0-9@._'\-]+$")
ResourceKind = Literal["users", "groups"]
DeliveryKind = Literal["validation", "notification", "lifecycle"]
FaultKind = Literal["drop", "duplicate", "reorder"]
Operation = Literal["Create", "Get", "Update", "Delete", "Reauthorize"]


def format_time(moment: datetime) -> str:
    """A DateTimeOffset as Graph writes it: UTC, `Z`, seven fractional digits when there are any."""
    moment = moment.astimezone(UTC)
    text = moment.strftime("%Y-%m-%dT%H:%M:%S")
    if moment.microsecond:
        text += f".{moment.microsecond:06d}0"
    return text + "Z"


def parse_time(value: Any) -> datetime | None:
    """An ISO 8601 date and time (a missing offset means UTC), or None."""
    if not isinstance(value, str):
        return None
    try:
        moment = datetime.fromisoformat(value.strip())
    except ValueError:
        return None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _extension_error(status: int, operation: Operation, reason: str) -> GraphError:
    """The subscription service's error shape: code ExtensionError, "Operation: …; Exception: […]"."""
    names = {400: "BadRequest", 403: "Forbidden", 404: "NotFound"}
    return GraphError(
        status,
        "ExtensionError",
        f"Operation: {operation}; Exception: [Status Code: {names.get(status, status)}; Reason: {reason}]",
    )


def _invalid_payload() -> GraphError:
    return GraphError(
        400,
        "InvalidRequest",
        "Could not process subscription creation payload. Are all property names spelled and "
        "camelCased properly? Also are the dateTimeOffest properties in a valid internet date and "
        "time format?",
    )


@dataclass(frozen=True, slots=True)
class Target:
    """What a subscription's resource watches: users or groups, all or one, or one group's members."""

    kind: ResourceKind
    object_id: str | None = None
    members_only: bool = False

    @classmethod
    def parse(cls, resource: str) -> Target | None:
        """`users`, `users/{id}`, `groups`, `groups/{id}`, `groups/{id}/members` (a leading / allowed)."""
        if "?" in resource or "(" in resource:
            return None
        parts = [part for part in resource.strip().strip("/").split("/") if part]
        if not parts or parts[0].lower() not in ("users", "groups") or len(parts) > 3:
            return None
        kind: ResourceKind = "users" if parts[0].lower() == "users" else "groups"
        if len(parts) == 1:
            return cls(kind)
        if not _SEGMENT.match(parts[1]):
            return None
        if len(parts) == 2:
            return cls(kind, parts[1].lower())
        if kind == "groups" and parts[2].lower() == "members":
            return cls(kind, parts[1].lower(), members_only=True)
        return None

    def matches(self, change: Change) -> bool:
        """Whether a recorded directory change concerns this target."""
        if change.kind != ("user" if self.kind == "users" else "group"):
            return False
        if self.object_id is not None and change.object_id.lower() != self.object_id:
            return False
        return not self.members_only or change.member_id is not None


@dataclass(slots=True)
class Subscription:
    """One subscription, as stored; `wire()` is its JSON."""

    id: str
    tenant_id: str
    app_id: str
    creator_id: str
    resource: str
    target: Target
    change_type: str
    notification_url: str
    lifecycle_url: str | None
    client_state: str | None
    expires: datetime
    include_resource_data: bool | None
    tls_version: str
    paused: bool = False  # reauthorization required and not yet given: changes are not delivered

    @property
    def change_types(self) -> frozenset[str]:
        return frozenset(part.strip() for part in self.change_type.split(","))

    def live(self, now: datetime | None = None) -> bool:
        return self.expires > (now or datetime.now(UTC))

    def wire(self, *, client_state: bool = True) -> dict[str, Any]:
        """The subscription resource's properties, in the order Graph answers them."""
        return {
            "id": self.id,
            "resource": self.resource,
            "applicationId": self.app_id,
            "changeType": self.change_type,
            "clientState": self.client_state if client_state else None,
            "notificationUrl": self.notification_url,
            "notificationQueryOptions": None,
            "lifecycleNotificationUrl": self.lifecycle_url,
            "expirationDateTime": format_time(self.expires),
            "creatorId": self.creator_id,
            "includeResourceData": self.include_resource_data,
            "latestSupportedTlsVersion": self.tls_version,
            "encryptionCertificate": None,
            "encryptionCertificateId": None,
            "notificationUrlAppId": None,
        }


@dataclass(slots=True)
class DeliveryRecord:
    """One POST the demo tenant made to a subscriber (for the request log of the other direction)."""

    timestamp: float
    kind: DeliveryKind
    subscription_id: str | None
    url: str
    attempt: int
    status: int | None  # None: no answer (refused, timed out)
    outcome: str  # "delivered", "failed", "timeout", "dropped", "gaveUp", "validated", "refused"
    notifications: int = 0
    lifecycle_event: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "timestamp": self.timestamp,
            "kind": self.kind,
            "subscriptionId": self.subscription_id,
            "url": self.url,
            "attempt": self.attempt,
            "status": self.status,
            "outcome": self.outcome,
            "notifications": self.notifications,
            "lifecycleEvent": self.lifecycle_event,
        }


@dataclass(slots=True)
class DeliveryFault:
    """Next notification collections (for one subscription or any) dropped, sent twice or sent late."""

    fault_id: int
    kind: FaultKind
    times: int | None  # None: every one
    subscription_id: str | None = None
    fired: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.fault_id,
            "kind": self.kind,
            "times": self.times,
            "subscriptionId": self.subscription_id,
            "fired": self.fired,
        }


@dataclass(slots=True)
class DeliveryPolicy:
    """Timing of delivery: how long to wait for an answer, and the retry backoff."""

    timeout: float = DELIVERY_TIMEOUT
    validation_timeout: float = VALIDATION_TIMEOUT
    retry_base: float = 1.0  # first retry after this many seconds, doubling each time
    retry_max: float = 300.0
    give_up_after: float = GIVE_UP_AFTER
    batch_window: float = 0.05  # changes this close together go out in one POST
    max_batch: int = 100

    def as_dict(self) -> dict[str, Any]:
        return {
            "timeout": self.timeout,
            "validationTimeout": self.validation_timeout,
            "retryBase": self.retry_base,
            "retryMax": self.retry_max,
            "giveUpAfter": self.give_up_after,
            "batchWindow": self.batch_window,
            "maxBatch": self.max_batch,
        }


@dataclass(slots=True)
class _Pending:
    notifications: list[dict[str, Any]] = field(default_factory=list)
    scheduled: bool = False


class SubscriptionService:
    """The /subscriptions routes, the change hook on every tenant and the delivery loop.

    Knob methods are thread-safe; deliveries run as tasks on the server's event loop.
    """

    def __init__(self, server: DemoGraphServer, *, allow_http_notification_urls: bool = True) -> None:
        self._server = server
        self._lock = threading.Lock()
        self._subs: dict[str, Subscription] = {}
        self._default_allow_http = allow_http_notification_urls
        self.allow_http_notification_urls = allow_http_notification_urls
        self.policy = DeliveryPolicy()
        self._faults: list[DeliveryFault] = []
        self._fault_ids = itertools.count(1)
        self._log: deque[DeliveryRecord] = deque(maxlen=_LOG_LIMIT)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._session: aiohttp.ClientSession | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._pending: dict[str, _Pending] = {}  # loop thread only
        self._held: dict[str, list[dict[str, Any]]] = {}  # loop thread only: reordered collections

    # ------------------------------------------------------------------ lifecycle

    def watch(self, tenant: Tenant) -> None:
        """Hear every change the tenant records."""
        tenant.listeners.append(self.on_change)

    def attach(self, loop: asyncio.AbstractEventLoop) -> None:
        """Deliver from this (the server's) event loop."""
        self._loop = loop

    async def close(self) -> None:
        """Stop every delivery and close the HTTP client (inside the server's loop)."""
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(BaseException):
                await task
        self._tasks.clear()
        self._pending.clear()
        self._held.clear()
        if self._session is not None:
            await self._session.close()
            self._session = None
        self._loop = None

    def reset(self) -> None:
        """Forget every subscription, delivery fault and record; default policy; stop pending deliveries."""
        with self._lock:
            self._subs.clear()
            self._faults.clear()
            self._log.clear()
            self.policy = DeliveryPolicy()
            self.allow_http_notification_urls = self._default_allow_http
        loop = self._loop
        if loop is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(self._cancel_deliveries)

    def _cancel_deliveries(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        self._pending.clear()
        self._held.clear()

    def _spawn(self, make: Callable[[], Coroutine[Any, Any, Any]]) -> None:
        """Run a coroutine as a task on the server's loop, from any thread."""
        loop = self._loop
        if loop is None or loop.is_closed():
            return

        def start() -> None:
            task = loop.create_task(make())
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            start()
        else:
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
                loop.call_soon_threadsafe(start)

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                headers={"User-Agent": "Microsoft-Graph-Change-Notifications (demo tenant)"}
            )
        return self._session

    def _record(self, record: DeliveryRecord) -> None:
        with self._lock:
            self._log.append(record)

    # -------------------------------------------------------------------- routes

    def route(self, call: Call) -> tuple[str, Callable[[], Awaitable[Reply]]] | None:
        """The route kind and async handler of a /subscriptions call; None for any other path."""
        parts = [part for part in call.path.split("/") if part]
        if not parts or parts[0].lower() != "subscriptions":
            return None
        method = call.method
        if len(parts) == 1:
            if method == "POST":
                return "subscriptions.create", lambda: self._create(call)
            if method == "GET":
                return "subscriptions.list", lambda: self._list(call)
        elif len(parts) == 2:
            sub_id = parts[1]
            if method == "GET":
                return "subscriptions.get", lambda: self._get(call, sub_id)
            if method == "PATCH":
                return "subscriptions.update", lambda: self._update(call, sub_id)
            if method == "DELETE":
                return "subscriptions.delete", lambda: self._delete(call, sub_id)
        elif len(parts) == 3 and parts[2].lower() in ("reauthorize", "microsoft.graph.reauthorize"):
            sub_id = parts[1]
            if method == "POST":
                return "subscriptions.reauthorize", lambda: self._reauthorize(call, sub_id)
        else:
            return "unknown", lambda: self._raise(
                GraphError(400, "BadRequest", f"Resource not found for the segment '{parts[-1]}'.")
            )
        return "unsupported", lambda: self._raise(GraphError(405))

    async def _raise(self, error: GraphError) -> Reply:
        raise error

    def _context(self, call: Call, entity: bool) -> str:
        return f"{call.base_url}/$metadata#subscriptions" + ("/$entity" if entity else "")

    def _owner(self, call: Call) -> tuple[str, str]:
        assert call.tenant is not None and call.principal is not None
        return call.tenant.tenant_id.lower(), call.principal.app_id

    def _body(self, call: Call) -> dict[str, Any]:
        try:
            body = msgspec.json.decode(call.body) if call.body else None
        except msgspec.DecodeError:
            body = None
        if not isinstance(body, dict):
            raise _invalid_payload()
        return body

    def _check_roles(self, call: Call, target: Target, operation: Operation, resource: str) -> None:
        assert call.principal is not None
        needed = SUBSCRIPTION_ROLES[target.kind]
        if not call.principal.roles & needed:
            raise _extension_error(
                403,
                operation,
                f"Caller does not have access to '{resource}': the application permission "
                f"{' or '.join(sorted(needed))} is required.",
            )

    def _check_url(self, name: str, value: Any, operation: Operation) -> str:
        if not isinstance(value, str) or not value.strip():
            raise _invalid_payload()
        parts = urlsplit(value)
        host = (parts.hostname or "").lower()
        if parts.scheme == "https" and host:
            return value
        if parts.scheme == "http" and self.allow_http_notification_urls and host in _LOOPBACK_HOSTS:
            return value  # the demo's documented deviation: loopback http for tests and `make run`
        raise _extension_error(400, operation, f"The {name} must use the HTTPS protocol: '{value}'.")

    def _check_expiration(self, value: Any, operation: Operation) -> datetime:
        expires = parse_time(value)
        if expires is None:
            raise _invalid_payload()
        now = datetime.now(UTC)
        if expires <= now:
            raise _extension_error(400, operation, "Subscription expiration must be in the future.")
        if expires > now + timedelta(minutes=MAX_EXPIRATION_MINUTES):
            raise GraphError(
                400,
                "ExtensionError",
                f"Subscription expiration can only be {MAX_EXPIRATION_MINUTES} minutes in the future.",
            )
        return expires

    def _find(self, call: Call, sub_id: str, operation: Operation) -> Subscription:
        tenant_key, app_id = self._owner(call)
        with self._lock:
            self._drop_expired()
            sub = self._subs.get(sub_id.lower())
        if sub is None or sub.tenant_id != tenant_key or sub.app_id != app_id:
            raise _extension_error(404, operation, "The specified object was not found in the store.")
        self._check_roles(call, sub.target, operation, sub.resource)
        return sub

    def _drop_expired(self) -> None:
        """Graph deletes a subscription that was not renewed in time (call under the lock)."""
        now = datetime.now(UTC)
        for sub_id in [sub_id for sub_id, sub in self._subs.items() if not sub.live(now)]:
            del self._subs[sub_id]

    async def _create(self, call: Call) -> Reply:
        body = self._body(call)
        unknown = [key for key in body if key not in _PROPERTIES and not key.startswith("@odata.")]
        if unknown:
            raise _invalid_payload()
        for name in ("changeType", "notificationUrl", "resource", "expirationDateTime"):
            if body.get(name) in (None, ""):
                raise GraphError(
                    400, "InvalidRequest", f"{name} is a required property for subscription creation."
                )
        resource = body["resource"]
        target = Target.parse(resource) if isinstance(resource, str) else None
        if target is None:
            raise _extension_error(400, "Create", f"Unsupported resource '{resource}'.")
        self._check_roles(call, target, "Create", resource)
        change_type = body["changeType"]
        kinds = [part.strip() for part in change_type.split(",")] if isinstance(change_type, str) else []
        if not kinds or any(kind not in CHANGE_TYPES for kind in kinds):
            raise _extension_error(
                400, "Create", f"Invalid changeType '{change_type}': use created, updated, deleted."
            )
        if body.get("includeResourceData") is True:
            raise _extension_error(
                400, "Create", f"Notifications with resource data are not supported for '{resource}'."
            )
        client_state = body.get("clientState")
        if client_state is not None and (
            not isinstance(client_state, str) or len(client_state) > CLIENT_STATE_MAX
        ):
            raise _extension_error(
                400, "Create", f"clientState must be a string of at most {CLIENT_STATE_MAX} characters."
            )
        expires = self._check_expiration(body["expirationDateTime"], "Create")
        notification_url = self._check_url("notificationUrl", body["notificationUrl"], "Create")
        lifecycle_url = body.get("lifecycleNotificationUrl")
        if lifecycle_url is not None:
            lifecycle_url = self._check_url("lifecycleNotificationUrl", lifecycle_url, "Create")
        tenant_key, app_id = self._owner(call)
        with self._lock:
            self._drop_expired()
            mine = sum(
                1 for sub in self._subs.values() if (sub.tenant_id, sub.app_id) == (tenant_key, app_id)
            )
        if mine >= MAX_PER_APP_AND_TENANT:
            raise _extension_error(
                403,
                "Create",
                f"The limit of {MAX_PER_APP_AND_TENANT} subscriptions for this application in this "
                "tenant has been reached.",
            )
        for url in dict.fromkeys(url for url in (notification_url, lifecycle_url) if url):
            await self._validate(url)
        sub = Subscription(
            id=str(uuid.uuid4()),
            tenant_id=tenant_key,
            app_id=app_id,
            creator_id=str(uuid.uuid5(uuid.UUID(tenant_key), f"servicePrincipal:{app_id}")),
            resource=resource,
            target=target,
            change_type=",".join(kinds),
            notification_url=notification_url,
            lifecycle_url=lifecycle_url,
            client_state=client_state,
            expires=expires,
            include_resource_data=body.get("includeResourceData"),
            tls_version=str(body.get("latestSupportedTlsVersion") or "v1_2"),
        )
        with self._lock:
            self._subs[sub.id] = sub
        return Reply(201, {"@odata.context": self._context(call, True), **sub.wire()})

    async def _list(self, call: Call) -> Reply:
        if call.query:
            raise GraphError(400, "BadRequest", "This method does not support OData query parameters.")
        tenant_key, app_id = self._owner(call)
        assert call.principal is not None
        with self._lock:
            self._drop_expired()
            mine = [sub for sub in self._subs.values() if (sub.tenant_id, sub.app_id) == (tenant_key, app_id)]
        # Only what the app could create with the permissions it holds now.
        visible = [sub for sub in mine if call.principal.roles & SUBSCRIPTION_ROLES[sub.target.kind]]
        return Reply(
            200,
            {
                "@odata.context": self._context(call, False),
                "value": [sub.wire(client_state=False) for sub in visible],
            },
        )

    async def _get(self, call: Call, sub_id: str) -> Reply:
        sub = self._find(call, sub_id, "Get")
        return Reply(200, {"@odata.context": self._context(call, True), **sub.wire()})

    async def _update(self, call: Call, sub_id: str) -> Reply:
        sub = self._find(call, sub_id, "Update")
        body = self._body(call)
        changes = {key: value for key, value in body.items() if not key.startswith("@odata.")}
        if not changes or any(key not in _UPDATABLE for key in changes):
            raise _extension_error(
                400, "Update", "Only expirationDateTime and notificationUrl can be updated."
            )
        expires = (
            self._check_expiration(changes["expirationDateTime"], "Update")
            if "expirationDateTime" in changes
            else None
        )
        url = None
        if "notificationUrl" in changes:
            url = self._check_url("notificationUrl", changes["notificationUrl"], "Update")
            if url != sub.notification_url:
                await self._validate(url)
        with self._lock:
            if expires is not None:
                sub.expires = expires
            if url is not None:
                sub.notification_url = url
            sub.paused = False  # renewing also reauthorizes
        return Reply(200, {"@odata.context": self._context(call, True), **sub.wire()})

    async def _delete(self, call: Call, sub_id: str) -> Reply:
        sub = self._find(call, sub_id, "Delete")
        with self._lock:
            self._subs.pop(sub.id, None)
        return Reply(204)

    async def _reauthorize(self, call: Call, sub_id: str) -> Reply:
        sub = self._find(call, sub_id, "Reauthorize")
        with self._lock:
            sub.paused = False
        return Reply(204)

    # ---------------------------------------------------------------- validation

    async def _validate(self, url: str) -> None:
        """Graph's validation request: POST ?validationToken=…, expecting the token back as text/plain."""
        token = VALIDATION_TOKEN.format(uuid.uuid4())
        target = URL(
            url + ("&" if "?" in url else "?") + "validationToken=" + quote(token, safe=""), encoded=True
        )
        timeout = self.policy.validation_timeout
        started = time.time()
        status: int | None = None
        try:
            async with self._http().post(
                target,
                data=b"",
                headers={"Content-Type": "text/plain; charset=utf-8"},
                timeout=aiohttp.ClientTimeout(total=timeout),
                allow_redirects=False,
            ) as response:
                status = response.status
                content_type = response.headers.get("Content-Type", "")
                text = await response.text(errors="replace")
        except TimeoutError:
            self._record(DeliveryRecord(started, "validation", None, url, 1, None, "timeout"))
            raise GraphError(400, "InvalidRequest", "Subscription validation request timed out.") from None
        except aiohttp.ClientError:
            self._record(DeliveryRecord(started, "validation", None, url, 1, None, "failed"))
            raise self._validation_failed() from None
        if status != 200:
            self._record(DeliveryRecord(started, "validation", None, url, 1, status, "failed"))
            raise self._validation_failed()
        if not content_type.lower().startswith("text/plain") or text != token:
            self._record(DeliveryRecord(started, "validation", None, url, 1, status, "refused"))
            raise GraphError(
                400,
                "ValidationError",
                "Subscription validation request failed. Response must exactly match validationToken "
                "query parameter.",
            )
        self._record(DeliveryRecord(started, "validation", None, url, 1, status, "validated"))

    @staticmethod
    def _validation_failed() -> GraphError:
        return GraphError(
            400,
            "ValidationError",
            "Subscription validation request failed. Notification endpoint must respond with 200 OK to "
            "validation request.",
        )

    # ------------------------------------------------------------ change delivery

    def on_change(self, tenant: Tenant, change: Change) -> None:
        """The tenant recorded a change (any thread, under its lock): queue a notification per match."""
        loop = self._loop
        if loop is None or not self._subs:
            return
        tenant_key = tenant.tenant_id.lower()
        now = datetime.now(UTC)
        with self._lock:
            matching = [
                sub
                for sub in self._subs.values()
                if sub.tenant_id == tenant_key and sub.live(now) and sub.target.matches(change)
            ]
        change_type = "deleted" if change.purged else "updated"
        items = [
            (sub.id, self._notification(sub, tenant, change, change_type))
            for sub in matching
            if change_type in sub.change_types
        ]
        if items:
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
                loop.call_soon_threadsafe(self._enqueue, items)

    def _notification(
        self, sub: Subscription, tenant: Tenant, change: Change, change_type: str
    ) -> dict[str, Any]:
        kind = sub.target.kind
        path = f"{ENTITY_SETS[kind]}/{change.object_id}"
        data: dict[str, Any] = {"@odata.type": ODATA_TYPES[kind], "@odata.id": path, "id": change.object_id}
        if change.member_id is not None:
            member: dict[str, Any] = {"id": change.member_id}
            if not change.member_added:
                member["@removed"] = "deleted"
            data["members@delta"] = [member]
        return {
            "subscriptionId": sub.id,
            "subscriptionExpirationDateTime": None,  # filled in when sent
            "changeType": change_type,
            "resource": path,
            "resourceData": data,
            "clientState": sub.client_state,
            "tenantId": tenant.tenant_id,
        }

    def _enqueue(self, items: list[tuple[str, dict[str, Any]]]) -> None:
        """(loop thread) Add notifications to their subscription's next POST."""
        assert self._loop is not None
        for sub_id, notification in items:
            pending = self._pending.setdefault(sub_id, _Pending())
            pending.notifications.append(notification)
            if not pending.scheduled:
                pending.scheduled = True
                self._loop.call_later(self.policy.batch_window, self._flush, sub_id)

    def _flush(self, sub_id: str) -> None:
        """(loop thread) Send what is pending for a subscription, at most max_batch to a POST."""
        pending = self._pending.pop(sub_id, None)
        if pending is None:
            return
        size = max(1, self.policy.max_batch)
        for start in range(0, len(pending.notifications), size):
            self._spawn(functools.partial(self._deliver, sub_id, pending.notifications[start : start + size]))

    def _live(self, sub_id: str) -> Subscription | None:
        with self._lock:
            sub = self._subs.get(sub_id)
            return sub if sub is not None and sub.live() and not sub.paused else None

    def _take_fault(self, sub_id: str) -> DeliveryFault | None:
        with self._lock:
            for fault in self._faults:
                if fault.subscription_id not in (None, sub_id):
                    continue
                if fault.times is not None and fault.fired >= fault.times:
                    continue
                fault.fired += 1
                return fault
        return None

    async def _deliver(self, sub_id: str, notifications: list[dict[str, Any]]) -> None:
        """One changeNotificationCollection to a subscription's notification URL, with faults applied."""
        sub = self._live(sub_id)
        if sub is None:
            return
        fault = self._take_fault(sub_id)
        if fault is not None and fault.kind == "drop":
            self._record(
                DeliveryRecord(
                    time.time(),
                    "notification",
                    sub_id,
                    sub.notification_url,
                    0,
                    None,
                    "dropped",
                    len(notifications),
                )
            )
            return
        if fault is not None and fault.kind == "reorder":
            self._held.setdefault(sub_id, []).extend(notifications)
            assert self._loop is not None
            self._loop.call_later(_REORDER_HOLD, self._release_held, sub_id)
            return
        await self._send_notifications(sub_id, notifications)
        if fault is not None and fault.kind == "duplicate":
            await self._send_notifications(sub_id, notifications)
        held = self._held.pop(sub_id, None)
        if held:
            await self._send_notifications(sub_id, held)

    def _release_held(self, sub_id: str) -> None:
        held = self._held.pop(sub_id, None)
        if held:
            self._spawn(functools.partial(self._send_notifications, sub_id, held))

    async def _send_notifications(self, sub_id: str, notifications: list[dict[str, Any]]) -> None:
        async def body() -> tuple[bytes, Subscription] | None:
            sub = self._live(sub_id)  # an expired, deleted or paused subscription stops delivering
            if sub is None:
                return None
            expiry = format_time(sub.expires)
            value = [{**item, "subscriptionExpirationDateTime": expiry} for item in notifications]
            return msgspec.json.encode({"value": value}), sub

        await self._post_with_retries("notification", sub_id, body, len(notifications))

    async def _post_with_retries(
        self,
        kind: DeliveryKind,
        sub_id: str,
        make_body: Callable[[], Awaitable[tuple[bytes, Subscription] | None]],
        count: int,
        *,
        lifecycle_event: str | None = None,
        url_of: Callable[[Subscription], str | None] = lambda sub: sub.notification_url,
    ) -> None:
        """POST until a 2xx comes back within the timeout; exponential backoff; give up after 4 hours."""
        started = time.monotonic()
        attempt = 0
        while True:
            attempt += 1
            made = await make_body()
            if made is None:
                return
            payload, sub = made
            url = url_of(sub)
            if url is None:
                return
            policy = self.policy
            status: int | None = None
            outcome = "failed"
            try:
                async with self._http().post(
                    url,
                    data=payload,
                    headers={"Content-Type": "application/json; charset=utf-8"},
                    timeout=aiohttp.ClientTimeout(total=policy.timeout),
                    allow_redirects=False,
                ) as response:
                    status = response.status
                    await response.read()
                    outcome = "delivered" if 200 <= status < 300 else "failed"
            except TimeoutError:
                outcome = "timeout"
            except aiohttp.ClientError:
                outcome = "failed"
            self._record(
                DeliveryRecord(
                    time.time(), kind, sub_id, url, attempt, status, outcome, count, lifecycle_event
                )
            )
            if outcome == "delivered":
                return
            wait = min(policy.retry_base * (2 ** (attempt - 1)), policy.retry_max)
            if time.monotonic() - started + wait > policy.give_up_after:
                self._record(
                    DeliveryRecord(
                        time.time(), kind, sub_id, url, attempt, status, "gaveUp", count, lifecycle_event
                    )
                )
                return
            await asyncio.sleep(wait)

    # ----------------------------------------------------------------- lifecycle

    def send_lifecycle(self, subscription_id: str, event: str, *, pause_delivery: bool = False) -> None:
        """POST a lifecycle notification to the subscription's lifecycleNotificationUrl.

        `subscriptionRemoved` removes the subscription first (Graph has removed it); with
        `pause_delivery`, `reauthorizationRequired` also stops change notifications until the app
        reauthorizes or renews (changes meanwhile are lost, as Graph's page says).
        """
        if event not in LIFECYCLE_EVENTS:
            raise ValueError(f"lifecycle event must be one of {', '.join(LIFECYCLE_EVENTS)}")
        with self._lock:
            sub = self._subs.get(subscription_id.lower())
            if sub is None:
                raise KeyError(f"no subscription {subscription_id}")
            if sub.lifecycle_url is None:
                raise ValueError("the subscription has no lifecycleNotificationUrl: Graph sends it none")
            if event == "subscriptionRemoved":
                del self._subs[sub.id]
            if event == "reauthorizationRequired" and pause_delivery:
                sub.paused = True
            notification = {
                "subscriptionId": sub.id,
                "subscriptionExpirationDateTime": format_time(sub.expires),
                "tenantId": self._tenant_id(sub),
                "clientState": sub.client_state,
                "lifecycleEvent": event,
            }
        payload = msgspec.json.encode({"value": [notification]})

        async def body() -> tuple[bytes, Subscription]:
            return payload, sub

        self._spawn(
            lambda: self._post_with_retries(
                "lifecycle", sub.id, body, 1, lifecycle_event=event, url_of=lambda s: s.lifecycle_url
            )
        )

    def _tenant_id(self, sub: Subscription) -> str:
        try:
            return self._server.tenant(sub.tenant_id).tenant_id
        except KeyError:
            return sub.tenant_id

    # --------------------------------------------------------------------- knobs

    def expire(self, subscription_id: str) -> bool:
        """Let a subscription run out now: it stops delivering and is gone, as an unrenewed one is."""
        with self._lock:
            sub = self._subs.get(subscription_id.lower())
            if sub is None:
                return False
            sub.expires = datetime.now(UTC) - timedelta(seconds=1)
            self._drop_expired()
            return True

    def listing(self, tenant_id: str | None = None) -> list[dict[str, Any]]:
        """Every live subscription (all apps), with its tenant and whether delivery is paused."""
        with self._lock:
            self._drop_expired()
            subs = list(self._subs.values())
        return [
            {**sub.wire(), "tenantId": self._tenant_id(sub), "paused": sub.paused}
            for sub in subs
            if tenant_id is None or sub.tenant_id == tenant_id.lower()
        ]

    def add_fault(self, kind: str, times: int | None = 1, subscription_id: str | None = None) -> int:
        """Drop, duplicate or reorder (send after the next one) the next `times` notification POSTs."""
        if kind not in DELIVERY_FAULT_KINDS:
            raise ValueError(f"delivery fault must be one of {', '.join(DELIVERY_FAULT_KINDS)}")
        with self._lock:
            fault = DeliveryFault(
                next(self._fault_ids),
                cast(FaultKind, kind),
                times,
                subscription_id.lower() if subscription_id else None,
            )
            self._faults.append(fault)
            return fault.fault_id

    def faults(self) -> list[dict[str, Any]]:
        with self._lock:
            return [fault.as_dict() for fault in self._faults]

    def clear_faults(self) -> None:
        with self._lock:
            self._faults.clear()

    def records(self, subscription_id: str | None = None, kind: str | None = None) -> list[DeliveryRecord]:
        """POSTs made to subscribers, oldest first."""
        with self._lock:
            records = list(self._log)
        return [
            record
            for record in records
            if (subscription_id is None or record.subscription_id == subscription_id.lower())
            and (kind is None or record.kind == kind)
        ]

    def set_policy(self, **changes: Any) -> DeliveryPolicy:
        """Change delivery timing (timeout, validation_timeout, retry_base, retry_max, give_up_after,
        batch_window, max_batch)."""
        names = set(DeliveryPolicy.__dataclass_fields__)
        unknown = set(changes) - names
        if unknown:
            raise ValueError(f"unknown delivery policy settings: {sorted(unknown)}")
        with self._lock:
            for name, value in changes.items():
                if value is None:
                    continue
                setattr(self.policy, name, int(value) if name == "max_batch" else max(0.0, float(value)))
            return self.policy
