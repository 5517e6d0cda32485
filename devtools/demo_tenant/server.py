"""A Microsoft Graph v1.0 look-alike HTTP server over demo tenants, with fault and latency knobs.

Serves several tenants at once under /v1.0, picking the tenant from the access token, which only
its own token endpoint issues (`POST /{tenant}/oauth2/v2.0/token`, see `auth`). The server is
split by concern: `routing` (directory routes and handlers), `query` (query options and paging),
`batch`, `delta`, `faults` (faults, throttling, request log), `auth` (tokens, consent, roles),
`subscriptions` (change notifications: /subscriptions, validation, delivery, lifecycle events),
`control` (/_demo routes) and `wire` (Graph's JSON shapes). This module composes them and owns the
lifecycle and the knobs.
"""

from __future__ import annotations

import asyncio
import gc
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from typing import Any, TypeVar

import msgspec
from aiohttp import web

from devtools.demo_tenant.auth import Consent, ConsentState, IdentityPlatform, check_roles
from devtools.demo_tenant.batch import BatchRunner
from devtools.demo_tenant.control import ControlRoutes
from devtools.demo_tenant.delta import EXPIRED_ANSWERS, DeltaReader
from devtools.demo_tenant.faults import Fault, Faults, RateLimiter, RequestLog, RequestRecord
from devtools.demo_tenant.licensing import CAPABILITY_STATUSES
from devtools.demo_tenant.model import AssignedLicense, DirectoryObject, Tenant, User
from devtools.demo_tenant.query import Call, PageTokens, normalize_query
from devtools.demo_tenant.routing import GraphRoutes
from devtools.demo_tenant.subscriptions import DeliveryPolicy, DeliveryRecord, SubscriptionService
from devtools.demo_tenant.wire import (
    API_VERSION,
    UTF8_BOM,
    GraphError,
    Reply,
    WireCache,
    error_reply,
)

__all__ = ["API_VERSION", "DemoGraphServer", "GraphError", "RequestRecord"]

_FREEZE_THRESHOLD = 20_000  # directory objects; below that a full GC pass is cheap anyway
_freeze_lock = threading.Lock()
_freeze_holders = 0
_T = TypeVar("_T")
GRAPH_APP_ID = "00000003-0000-0000-c000-000000000000"  # Microsoft Graph's own application id


def _hold_gc_freeze() -> None:
    """Freeze the GC heap; nested holders share one freeze."""
    global _freeze_holders
    with _freeze_lock:
        gc.collect()
        gc.freeze()
        _freeze_holders += 1


def _release_gc_freeze() -> None:
    """Unfreeze when the last holder lets go."""
    global _freeze_holders
    with _freeze_lock:
        _freeze_holders -= 1
        if _freeze_holders == 0:
            gc.unfreeze()


class _Tenants:
    """The served tenants, by id and by domain (the token endpoint takes either)."""

    def __init__(self, tenants: Iterable[Tenant]) -> None:
        self.by_id: dict[str, Tenant] = {tenant.tenant_id.lower(): tenant for tenant in tenants}

    def find(self, key: str) -> Tenant | None:
        lowered = key.lower()
        tenant = self.by_id.get(lowered)
        if tenant is not None:
            return tenant
        return next(
            (t for t in self.by_id.values() if lowered in (t.domain.lower(), t.initial_domain.lower())), None
        )

    def all(self) -> list[Tenant]:
        return list(self.by_id.values())


class DemoGraphServer:
    """Graph v1.0 look-alike over demo tenants; run it in a background thread or in your loop.

    Knob methods are thread-safe. `prewarm` builds every object's JSON once at start and freezes
    the garbage collector's view of the heap until stop(), so a 100,000-user tenant is served
    without GC pauses.
    """

    def __init__(
        self,
        tenants: Iterable[Tenant],
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        prewarm: bool = True,
        allow_http_notification_urls: bool = True,
    ) -> None:
        """`allow_http_notification_urls`: accept http:// notification URLs on the loopback host
        (Graph takes https only; nothing here serves https). False makes the demo as strict as Graph."""
        self._tenants = _Tenants(tenants)
        self.host = host
        self._requested_port = port
        self.port: int | None = None
        self.prewarm = prewarm
        self._gc_frozen = False
        self._lock = threading.Lock()
        self._latency = 0.0
        self._faults = Faults()
        self.rate_limiter = RateLimiter("tenant")
        self.app_rate_limiter = RateLimiter("app")
        self.log = RequestLog()
        self.identity = IdentityPlatform(self._tenants)
        self.page_tokens = PageTokens()
        self.delta = DeltaReader(self.wire)
        self.routes = GraphRoutes(self)
        self._batch = BatchRunner(self)
        self.subscriptions = SubscriptionService(
            self, allow_http_notification_urls=allow_http_notification_urls
        )
        for tenant in self._tenants.all():
            self.subscriptions.watch(tenant)
        self._wire_caches: dict[str, WireCache] = {
            tenant_id: WireCache() for tenant_id in self._tenants.by_id
        }
        self._count_bom = True
        self._index_lag = 0.0
        self._index: dict[str, tuple[Tenant, float]] = {}
        self._mailbox_denied: dict[str, set[str]] = {}
        self._omitted: dict[tuple[str, str], frozenset[str]] = {}  # (tenant, user) -> properties left out
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._runner: web.AppRunner | None = None

    # ------------------------------------------------------------------ lifecycle

    @property
    def root_url(self) -> str:
        """http://HOST:PORT (no version): the token and admin consent endpoints live here too."""
        if self.port is None:
            raise RuntimeError("the server is not listening yet")
        return f"http://{self.host}:{self.port}"

    @property
    def base_url(self) -> str:
        """The Graph base URL clients use: http://HOST:PORT/v1.0."""
        return f"{self.root_url}/{API_VERSION}"

    def make_app(self) -> web.Application:
        """The aiohttp application (Graph under /v1.0, identity at the root, controls under /_demo)."""
        app = web.Application(client_max_size=16 * 1024 * 1024)
        ControlRoutes(self).register(app)
        app.router.add_route("*", f"/{API_VERSION}/{{tail:.*}}", self._graph_entry)
        self.identity.routes(app)
        return app

    def warm(self) -> None:
        """Build every object's wire JSON now; for big tenants also freeze the GC heap (until stop)."""
        for tenant_id, tenant in self._tenants.by_id.items():
            cache = self._wire_caches[tenant_id]
            collections_of_objects: tuple[Mapping[str, DirectoryObject], ...] = (
                tenant.users,
                tenant.groups,
                tenant.devices,
                tenant.org_contacts,
                tenant.service_principals,
            )
            for objects in collections_of_objects:
                for obj in list(objects.values()):
                    cache.full(obj)
        object_count = sum(
            len(objects)
            for tenant in self._tenants.by_id.values()
            for objects in (tenant.users, tenant.groups, tenant.devices, tenant.org_contacts)
        )
        if object_count >= _FREEZE_THRESHOLD:
            # Millions of long-lived dicts make every full collection slow (~0.3 s at 100k users);
            # freezing moves them out of the collector's sight.
            _hold_gc_freeze()
            self._gc_frozen = True

    async def start_async(self) -> None:
        """Start listening inside the running event loop."""
        if self.prewarm and not self._gc_frozen:
            self.warm()
        self.subscriptions.attach(asyncio.get_running_loop())
        self._runner = web.AppRunner(self.make_app(), access_log=None, shutdown_timeout=1.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self._requested_port)
        await site.start()
        server = site._server  # aiohttp exposes the bound port only through the asyncio server
        sockets = getattr(server, "sockets", None) or []
        self.port = sockets[0].getsockname()[1] if sockets else self._requested_port

    async def stop_async(self) -> None:
        """Stop listening (inside the loop that started it)."""
        await self.subscriptions.close()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        if self._gc_frozen:
            _release_gc_freeze()
            self._gc_frozen = False

    async def serve_forever(self) -> None:
        """Start in the running loop and serve until cancelled."""
        await self.start_async()
        try:
            await asyncio.Event().wait()
        finally:
            await self.stop_async()

    def start(self) -> DemoGraphServer:
        """Run the server in a background thread with its own event loop; returns once listening."""
        if self._thread is not None:
            return self
        ready = threading.Event()
        failure: list[BaseException] = []

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            asyncio.set_event_loop(loop)
            try:
                loop.run_until_complete(self.start_async())
            except BaseException as error:  # surfaced to the caller of start()
                failure.append(error)
                ready.set()
                loop.close()
                return
            ready.set()
            try:
                loop.run_forever()
            finally:
                loop.run_until_complete(self.stop_async())
                loop.close()

        self._thread = threading.Thread(target=run, name="demo-graph-server", daemon=True)
        self._thread.start()
        ready.wait()
        if failure:
            self._thread = None
            raise failure[0]
        return self

    def stop(self) -> None:
        """Stop the background server started by start()."""
        if self._thread is None or self._loop is None:
            return
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._thread = None
        self._loop = None

    def __enter__(self) -> DemoGraphServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # -------------------------------------------------------------------- tenants

    def tenants(self) -> dict[str, Tenant]:
        """The served tenants by tenant id; mutate them via Tenant methods and the server sees it."""
        return {tenant.tenant_id: tenant for tenant in self._tenants.by_id.values()}

    def tenant(self, tenant_id: str) -> Tenant:
        """One served tenant (KeyError if unknown)."""
        return self._tenants.by_id[tenant_id.lower()]

    def token_for(
        self, tenant_id: str, roles: Iterable[str] | None = None, app_id: str = "demo-client"
    ) -> str:
        """A valid access token for a tenant, with the roles its consent grants (or `roles`)."""
        tenant = self.tenant(tenant_id)
        granted = tuple(roles) if roles is not None else self.consent(tenant.tenant_id).permissions
        token, _ = self.identity.issue(tenant.tenant_id, app_id, granted)
        return token

    # ------------------------------------------------------------ knobs: load and faults

    @property
    def latency(self) -> float:
        """Seconds every HTTP request waits before it is handled."""
        return self._latency

    def set_latency(self, seconds: float) -> None:
        """Add this many seconds (asyncio.sleep, so requests still overlap) to every HTTP request."""
        self._latency = max(0.0, float(seconds))

    def add_fault(
        self,
        status: int,
        path_regex: str,
        method: str = "GET",
        tenant_id: str | None = None,
        times: int | None = None,
        after: int = 0,
        retry_after: float | None = None,
        delay: float | None = None,
        code: str | None = None,
        message: str | None = None,
        in_batch: bool | None = None,
        truncate: int | None = None,
    ) -> int:
        """Make matching requests fail with `status` (see `faults.Fault`); returns the fault id.

        `path_regex` is searched in the path relative to /v1.0 (e.g. "/groups/[^/]+/transitiveMembers"),
        without the query string; $batch items are matched by their own relative URL. `method` "*"
        matches any method.
        """
        return self._faults.add(
            status,
            path_regex,
            method,
            tenant_id=tenant_id,
            times=times,
            after=after,
            retry_after=retry_after,
            delay=delay,
            code=code,
            message=message,
            in_batch=in_batch,
            truncate=truncate,
        )

    def remove_fault(self, fault_id: int) -> bool:
        """Remove one fault; False if there was none with that id."""
        return self._faults.remove(fault_id)

    def clear_faults(self) -> None:
        """Remove every fault."""
        self._faults.clear()

    def faults(self) -> list[dict[str, Any]]:
        """The faults with their match/fire counters."""
        return self._faults.as_list()

    def match_fault(self, call: Call) -> Fault | None:
        """The fault that fires for this call, if any (counted)."""
        return self._faults.match(call)

    def set_rate_limit(
        self, requests: int, per_seconds: float, tenant_id: str | None = None, path_regex: str | None = None
    ) -> None:
        """Allow `requests` calls per `per_seconds` window per tenant (or just `tenant_id`); then 429.

        `path_regex` limits the budget to matching paths: Graph throttles the directory
        (users, groups) and Exchange (mailboxSettings) separately.
        """
        self.rate_limiter.set(requests, per_seconds, tenant_id, path_regex)

    def clear_rate_limit(self) -> None:
        """Remove the rate limit."""
        self.rate_limiter.clear()

    def set_app_rate_limit(
        self, requests: int, per_seconds: float, app_id: str | None = None, path_regex: str | None = None
    ) -> None:
        """Allow `requests` calls per `per_seconds` window per calling app across every tenant (or just
        `app_id`); then 429 with Retry-After, as Graph's per-app limits across all tenants answer."""
        self.app_rate_limiter.set(requests, per_seconds, app_id, path_regex)

    def clear_app_rate_limit(self) -> None:
        """Remove the per-app rate limit."""
        self.app_rate_limiter.clear()

    def request_log(
        self, kind: str | None = None, tenant_id: str | None = None, in_batch: bool | None = None
    ) -> list[RequestRecord]:
        """Logged requests, oldest first, optionally filtered."""
        return self.log.records(kind, tenant_id, in_batch)

    def request_counts(self, tenant_id: str | None = None, in_batch: bool | None = None) -> dict[str, int]:
        """Requests per kind ("users.list", "groups.transitiveMembers", "batch", "mailboxSettings", ...)."""
        return self.log.counts(tenant_id, in_batch)

    def reset_log(self) -> None:
        """Forget logged requests."""
        self.log.clear()

    def reset(self) -> None:
        """Every knob back to its default (faults, latency, throttling, consent, token and index
        behaviour, mailbox policy, delivery policy and faults), the request log cleared, and every
        change-notification subscription and pending delivery gone; directory content is left as it is."""
        self.subscriptions.reset()
        self.clear_faults()
        self.clear_rate_limit()
        self.clear_app_rate_limit()
        self.set_latency(0.0)
        self.reset_log()
        self.identity.reset()
        self.delta.reset()
        self.page_tokens.lifetime = None
        self.routes.hidden_answer = "forbidden"
        with self._lock:
            self._count_bom = True
            self._index_lag = 0.0
            self._index.clear()
            self._mailbox_denied.clear()
            self._omitted.clear()

    # --------------------------------------------------- knobs: identity and consent

    def consent(self, tenant_id: str) -> Consent:
        """A tenant's admin consent for the product's app."""
        return self.identity.consent(tenant_id)

    def set_consent(
        self, tenant_id: str, state: ConsentState | str, permissions: Iterable[str] | None = None
    ) -> Consent:
        """Set a tenant's consent: granted (with `permissions`), none, revoked, appDeleted, badFederation."""
        chosen = tuple(permissions) if permissions is not None else None
        return self.identity.set_consent(self.tenant(tenant_id).tenant_id, state, chosen)  # type: ignore[arg-type]

    def set_token_lifetime(self, seconds: int) -> None:
        """Lifetime of access tokens issued from now on (expires_in)."""
        self.identity.token_lifetime = max(1, int(seconds))

    # ------------------------------------------------------ knobs: Graph behaviour

    def set_delta_token_lifetime(self, seconds: float | None) -> None:
        """How long a deltaLink stays valid (seven days by default; None: forever)."""
        self.delta.lifetime = seconds

    def expire_delta_tokens(self, tenant_id: str) -> None:
        """Expire every deltaLink issued so far for a tenant."""
        self.delta.expire(self.tenant(tenant_id).tenant_id)

    def set_delta_expired_answer(self, answer: str) -> None:
        """What an expired deltaLink answers: syncStateNotFound (400, the default), resyncRequired
        (410 with Location) or syncStateInvalid (400)."""
        if answer not in EXPIRED_ANSWERS:
            raise ValueError(f"expired answer must be one of {', '.join(EXPIRED_ANSWERS)}")
        self.delta.expired_answer = answer  # type: ignore[assignment]

    def set_page_token_lifetime(self, seconds: float | None) -> None:
        """A nextLink's skip token lifetime (None: forever); then 400 Directory_ExpiredPageToken."""
        self.page_tokens.lifetime = seconds

    def expire_page_tokens(self, tenant_id: str) -> None:
        """Expire every skip token issued so far for a tenant."""
        self.page_tokens.expire(self.tenant(tenant_id).tenant_id)

    def set_index_lag(self, seconds: float) -> None:
        """How long $count, @odata.count and $search keep answering from before a control-route change."""
        with self._lock:
            self._index_lag = max(0.0, float(seconds))
            self._index.clear()

    def set_count_bom(self, enabled: bool) -> None:
        """Whether $count bodies (text/plain) start with a UTF-8 byte-order mark, as Graph's do."""
        with self._lock:
            self._count_bom = bool(enabled)

    def set_hidden_members_answer(self, answer: str) -> None:
        """What listing a hidden-membership group's members without Member.Read.Hidden answers:
        "forbidden" (403 Authorization_RequestDenied) or "empty" (200 with no members)."""
        if answer not in ("forbidden", "empty"):
            raise ValueError("hidden members answer must be 'forbidden' or 'empty'")
        self.routes.hidden_answer = answer  # type: ignore[assignment]

    def set_mailbox_access_denied(
        self, tenant_id: str, user_ids: Iterable[str], denied: bool = True, *, replace: bool = False
    ) -> None:
        """Users whose mailboxSettings answer 403 ErrorAccessDenied (Exchange application access policy)."""
        key = self.tenant(tenant_id).tenant_id.lower()
        with self._lock:
            current = set() if replace else self._mailbox_denied.get(key, set())
            chosen = set(user_ids)
            self._mailbox_denied[key] = (current | chosen) if denied else (current - chosen)

    def mailbox_denied(self, tenant_id: str, user_id: str) -> bool:
        """Whether an access policy keeps the app out of this user's mailbox."""
        with self._lock:
            return user_id in self._mailbox_denied.get(tenant_id.lower(), ())

    # ------------------------------------------------ knobs: change notifications

    def subscription_list(self, tenant_id: str | None = None) -> list[dict[str, Any]]:
        """Every live change-notification subscription (any app), as Graph's JSON plus tenantId and paused."""
        return self.subscriptions.listing(self.tenant(tenant_id).tenant_id if tenant_id else None)

    def expire_subscription(self, subscription_id: str) -> bool:
        """Let a subscription run out now (it stops delivering and is gone); False if there is none."""
        return self.subscriptions.expire(subscription_id)

    def send_lifecycle(self, subscription_id: str, event: str, *, pause_delivery: bool = False) -> None:
        """POST a lifecycle notification (reauthorizationRequired, subscriptionRemoved, missed) to the
        subscription's lifecycleNotificationUrl. subscriptionRemoved also removes the subscription;
        `pause_delivery` with reauthorizationRequired holds change notifications back (they are lost)
        until the app reauthorizes or renews. KeyError for an unknown id; ValueError without a
        lifecycleNotificationUrl."""
        self.subscriptions.send_lifecycle(subscription_id, event, pause_delivery=pause_delivery)

    def add_delivery_fault(self, kind: str, times: int | None = 1, subscription_id: str | None = None) -> int:
        """The next `times` notification POSTs (of one subscription, or any) are dropped, sent twice
        ("duplicate") or held back and sent after the following one ("reorder"); returns the fault id."""
        return self.subscriptions.add_fault(kind, times, subscription_id)

    def delivery_faults(self) -> list[dict[str, Any]]:
        """The delivery faults with how often each fired."""
        return self.subscriptions.faults()

    def clear_delivery_faults(self) -> None:
        """Remove every delivery fault."""
        self.subscriptions.clear_faults()

    def set_delivery_policy(self, **settings: float | None) -> DeliveryPolicy:
        """Delivery timing: timeout (3 s), validation_timeout (10 s), retry_base (1 s, doubling),
        retry_max (300 s), give_up_after (4 h), batch_window (0.05 s), max_batch (100)."""
        return self.subscriptions.set_policy(**settings)

    def set_allow_http_notification_urls(self, allowed: bool) -> None:
        """Whether http:// notification URLs on the loopback host are accepted (Graph: https only)."""
        self.subscriptions.allow_http_notification_urls = bool(allowed)

    def deliveries(self, subscription_id: str | None = None, kind: str | None = None) -> list[DeliveryRecord]:
        """The POSTs the demo made to subscribers (validation, notification, lifecycle), oldest first."""
        return self.subscriptions.records(subscription_id, kind)

    # ------------------------------------------------- directory changes (controls)

    def change(self, tenant: Tenant, mutate: Callable[[], _T]) -> _T:
        """Apply a directory change the way an admin would: the index ($count, $search) catches up late."""
        with self._lock:
            lag = self._index_lag
            if lag > 0:
                key = tenant.tenant_id.lower()
                now = time.monotonic()
                entry = self._index.get(key)
                snapshot = entry[0] if entry is not None and entry[1] > now else tenant.snapshot()
                self._index[key] = (snapshot, now + lag)
        return mutate()

    def index_view(self, tenant: Tenant) -> Tenant:
        """The directory as Graph's index sees it now: a snapshot while a change is still lagging."""
        key = tenant.tenant_id.lower()
        with self._lock:
            entry = self._index.get(key)
            if entry is None:
                return tenant
            if entry[1] <= time.monotonic():
                del self._index[key]
                return tenant
            return entry[0]

    def add_member(self, tenant_id: str, group_id: str, member_id: str) -> bool:
        """Add a direct member as an admin would (MembershipRefused where Entra refuses the member)."""
        tenant = self.tenant(tenant_id)
        return self.change(tenant, lambda: tenant.add_member(group_id, member_id))

    def delete_user(self, tenant_id: str, user_id: str) -> bool:
        """Delete a user as an admin would (a soft delete: gone from reads, in the deleted items)."""
        tenant = self.tenant(tenant_id)
        return self.change(tenant, lambda: tenant.delete_user(user_id))

    def purge_deleted(self, tenant_id: str, object_id: str) -> bool:
        """Delete a soft-deleted user or group for good (change notifications say `deleted`)."""
        tenant = self.tenant(tenant_id)
        return self.change(tenant, lambda: tenant.purge_deleted(object_id))

    def set_user_licenses(
        self, tenant_id: str, user_id: str, licenses: Iterable[AssignedLicense], status: str = "Enabled"
    ) -> User:
        """Replace a user's licences; their assignedPlans follow, all in capabilityStatus `status`."""
        if status not in CAPABILITY_STATUSES:
            raise ValueError(f"capabilityStatus must be one of {', '.join(CAPABILITY_STATUSES)}")
        tenant = self.tenant(tenant_id)
        chosen = tuple(licenses)
        return self.change(tenant, lambda: tenant.set_licenses(user_id, chosen, status))  # type: ignore[arg-type]

    # ------------------------------------------------------------- HTTP: Graph side

    def wire(self, call: Call, obj: DirectoryObject) -> dict[str, Any]:
        """The full JSON of a directory object (cached until the object changes)."""
        assert call.tenant is not None
        full = self._wire_caches[call.tenant.tenant_id.lower()].full(obj)
        if self._omitted:
            omitted = self._omitted.get((call.tenant.tenant_id.lower(), full.get("id", "")))
            if omitted:
                full = {key: value for key, value in full.items() if key not in omitted}
        return full

    def omit_user_properties(self, tenant_id: str, user_id: str, properties: Iterable[str]) -> None:
        """Answer this user without these properties (a partial answer: they come back null when
        selected), so the product's "unknown, keep as is" path can be tried; empty: whole again."""
        key = (self.tenant(tenant_id).tenant_id.lower(), user_id)
        with self._lock:
            if properties:
                self._omitted[key] = frozenset(properties)
            else:
                self._omitted.pop(key, None)

    def text_body(self, text: str) -> bytes:
        """A text/plain body as Graph sends it (with a byte-order mark unless switched off)."""
        with self._lock:
            bom = self._count_bom
        return ((UTF8_BOM if bom else "") + text).encode("utf-8")

    async def _graph_entry(self, request: web.Request) -> web.StreamResponse:
        started = time.perf_counter()
        if self._latency:
            await asyncio.sleep(self._latency)
        call = Call(
            method=request.method.upper(),
            path="/" + request.match_info["tail"],
            query=normalize_query(request.query.items()),
            headers=request.headers,
            base_url=f"{request.scheme}://{request.host}/{API_VERSION}",
            client_request_id=request.headers.get("client-request-id") or str(uuid.uuid4()),
            body=await request.read() if request.can_read_body else b"",
        )
        principal = self.identity.verify(request.headers.get("Authorization"))
        if isinstance(principal, GraphError):
            call.kind = "unauthenticated"
            reply = error_reply(principal, call.client_request_id)
            reply.headers["WWW-Authenticate"] = f'Bearer realm="", client_id="{GRAPH_APP_ID}"'
        else:
            call.principal = principal
            call.tenant = self._tenants.find(principal.tenant_id)
            if call.path.rstrip("/").lower() == "/$batch":
                call.kind = "batch"
                reply = await self._batch.run(call, await request.read())
            else:
                reply = await self.process(call)
        response = self._to_web_response(reply, call.client_request_id)
        self.log.record(call, reply.status, request.query_string, started)
        return response

    def _to_web_response(self, reply: Reply, client_request_id: str) -> web.Response:
        headers = {
            "client-request-id": client_request_id,
            "OData-Version": "4.0",
            "Content-Type": reply.content_type,
        }
        headers.setdefault("request-id", str(uuid.uuid4()))
        headers.update(reply.headers)
        if reply.status == 204:  # No Content (a deleted subscription, reauthorize): no body, no type
            del headers["Content-Type"]
            return web.Response(status=204, headers=headers)
        body = self.text_body(reply.text) if reply.text is not None else msgspec.json.encode(reply.payload)
        return web.Response(status=reply.status, body=body, headers=headers)

    async def process(self, call: Call) -> Reply:
        """Route, throttling, faults, permissions, then the handler; errors come back in Graph's shape."""
        try:
            subscription_route = self.subscriptions.route(call)
            if subscription_route is not None:
                kind, run = subscription_route
            else:
                kind, handler = self.routes.route(call)
            call.kind = kind
            throttled = self.app_rate_limiter.check(call) or self.rate_limiter.check(call)
            if throttled is not None:
                raise throttled
            fault = self._faults.match(call)
            if fault is not None:
                await fault.strike()
            check_roles(call)
            assert call.tenant is not None
            if subscription_route is not None:
                reply = await run()  # calls the notification URL: never under the tenant's lock
            else:
                with call.tenant.lock:  # handlers are short and synchronous; mutations wait for them
                    reply = handler()
        except GraphError as error:
            reply = error_reply(error, call.client_request_id)
        else:
            if fault is not None and fault.truncate is not None and reply.status == 200:
                reply.payload = fault.cut_short(reply.payload)  # a short answer: a page with no next link
        reply.headers.update(call.extra_headers)
        reply.headers.setdefault("request-id", str(uuid.uuid4()))
        return reply
