"""Control routes under /_demo (no token): the HTTP side of `DemoGraphServer`'s knobs.

Every knob a test sets in Python can be set over HTTP too, so the stack under `make run` and a
browser test can drive the same situations. Directory changes made here are what Graph's index
catches up with late (see `DemoGraphServer.set_index_lag`).
"""

from __future__ import annotations

import re
import uuid
from typing import TYPE_CHECKING, Any

import msgspec
from aiohttp import web

from devtools.demo_tenant.faults import RateLimiter
from devtools.demo_tenant.model import AssignedLicense, MembershipRefused, Tenant, User
from devtools.demo_tenant.wire import API_VERSION, GraphError, error_reply

if TYPE_CHECKING:
    from devtools.demo_tenant.server import DemoGraphServer


def _json(data: Any, status: int = 200) -> web.Response:
    return web.Response(status=status, body=msgspec.json.encode(data), content_type="application/json")


async def _body(request: web.Request) -> dict[str, Any]:
    raw = await request.read()
    if not raw:
        return {}
    try:
        data = msgspec.json.decode(raw)
    except msgspec.DecodeError:
        raise web.HTTPBadRequest(text="expected a JSON object") from None
    if not isinstance(data, dict):
        raise web.HTTPBadRequest(text="expected a JSON object")
    # Accept camelCase and snake_case keys alike.
    return {re.sub(r"(?<!^)(?=[A-Z])", "_", key).lower(): value for key, value in data.items()}


def _licenses(entries: Any) -> tuple[AssignedLicense, ...]:
    if not isinstance(entries, list):
        raise web.HTTPBadRequest(text="assignedLicenses must be a list")
    return tuple(
        AssignedLicense(
            sku_id=str(entry.get("skuId") or entry.get("sku_id")),
            disabled_plans=tuple(entry.get("disabledPlans") or entry.get("disabled_plans") or ()),
        )
        for entry in entries
    )


class ControlRoutes:
    """The /_demo routes of one server."""

    def __init__(self, server: DemoGraphServer) -> None:
        self._server = server

    def register(self, app: web.Application) -> None:
        """Add every control route to the app."""
        r = app.router
        s = self
        r.add_get("/_demo/health", s.health)
        r.add_get("/_demo/requests", s.requests)
        r.add_delete("/_demo/requests", s.reset_log)
        r.add_post("/_demo/reset", s.reset)
        r.add_get("/_demo/latency", s.get_latency)
        r.add_put("/_demo/latency", s.set_latency)
        r.add_post("/_demo/latency", s.set_latency)
        r.add_get("/_demo/faults", s.faults)
        r.add_post("/_demo/faults", s.add_fault)
        r.add_delete("/_demo/faults", s.clear_faults)
        r.add_delete("/_demo/faults/{fault_id}", s.remove_fault)
        r.add_put("/_demo/rate-limit", s.set_rate_limit)
        r.add_post("/_demo/rate-limit", s.set_rate_limit)
        r.add_delete("/_demo/rate-limit", s.clear_rate_limit)
        r.add_put("/_demo/app-rate-limit", s.set_app_rate_limit)
        r.add_delete("/_demo/app-rate-limit", s.clear_app_rate_limit)
        r.add_put("/_demo/token-lifetime", s.set_token_lifetime)
        r.add_put("/_demo/delta", s.set_delta_policy)
        r.add_put("/_demo/page-tokens", s.set_page_token_policy)
        r.add_put("/_demo/index-lag", s.set_index_lag)
        r.add_put("/_demo/count-bom", s.set_count_bom)
        r.add_put("/_demo/hidden-members", s.set_hidden_members)
        r.add_get("/_demo/subscriptions", s.subscriptions)
        r.add_get("/_demo/subscriptions/deliveries", s.deliveries)
        r.add_get("/_demo/subscriptions/delivery-faults", s.delivery_faults)
        r.add_post("/_demo/subscriptions/delivery-faults", s.add_delivery_fault)
        r.add_delete("/_demo/subscriptions/delivery-faults", s.clear_delivery_faults)
        r.add_get("/_demo/subscriptions/delivery-policy", s.get_delivery_policy)
        r.add_put("/_demo/subscriptions/delivery-policy", s.set_delivery_policy)
        r.add_post("/_demo/subscriptions/{subscription_id}/expire", s.expire_subscription)
        r.add_post("/_demo/subscriptions/{subscription_id}/lifecycle", s.send_lifecycle)
        r.add_get("/_demo/tenants", s.tenants)
        r.add_get("/_demo/tenants/{tenant_id}", s.tenant)
        r.add_get("/_demo/tenants/{tenant_id}/consent", s.get_consent)
        r.add_put("/_demo/tenants/{tenant_id}/consent", s.set_consent)
        r.add_post("/_demo/tenants/{tenant_id}/delta/expire", s.expire_delta)
        r.add_post("/_demo/tenants/{tenant_id}/page-tokens/expire", s.expire_page_tokens)
        r.add_put("/_demo/tenants/{tenant_id}/mailbox-policy", s.set_mailbox_policy)
        r.add_put("/_demo/tenants/{tenant_id}/users/{user_id}/omitted", s.omit_properties)
        r.add_post("/_demo/tenants/{tenant_id}/groups/{group_id}/members", s.add_member)
        r.add_delete("/_demo/tenants/{tenant_id}/groups/{group_id}/members/{member_id}", s.remove_member)
        r.add_delete("/_demo/tenants/{tenant_id}/groups/{group_id}", s.delete_group)
        r.add_post("/_demo/tenants/{tenant_id}/users", s.add_user)
        r.add_patch("/_demo/tenants/{tenant_id}/users/{user_id}", s.update_user)
        r.add_delete("/_demo/tenants/{tenant_id}/users/{user_id}", s.delete_user)
        r.add_delete("/_demo/tenants/{tenant_id}/deleted-items/{object_id}", s.purge_deleted)
        r.add_patch("/_demo/tenants/{tenant_id}/users/{user_id}/licenses", s.set_licenses)

    def _tenant(self, request: web.Request) -> Tenant:
        try:
            return self._server.tenant(request.match_info["tenant_id"])
        except KeyError:
            raise web.HTTPNotFound(text="unknown tenant") from None

    async def health(self, request: web.Request) -> web.Response:
        return _json({"status": "ok", "baseUrl": f"{request.scheme}://{request.host}/{API_VERSION}"})

    async def requests(self, request: web.Request) -> web.Response:
        kind = request.query.get("kind")
        tenant_id = request.query.get("tenant")
        limit = int(request.query.get("limit", "500"))
        records = self._server.request_log(kind, tenant_id)
        in_batch_text = request.query.get("inBatch")
        in_batch = None if in_batch_text is None else in_batch_text.lower() == "true"
        return _json(
            {
                "counts": self._server.request_counts(tenant_id, in_batch=in_batch),
                "total": len(records),
                "requests": [msgspec.to_builtins(record) for record in records[-limit:]] if limit > 0 else [],
            }
        )

    async def reset_log(self, request: web.Request) -> web.Response:
        self._server.reset_log()
        return _json({"ok": True})

    async def reset(self, request: web.Request) -> web.Response:
        self._server.reset()
        return _json({"ok": True})

    async def get_latency(self, request: web.Request) -> web.Response:
        return _json({"seconds": self._server.latency})

    async def set_latency(self, request: web.Request) -> web.Response:
        body = await _body(request)
        self._server.set_latency(float(body.get("seconds", 0.0)))
        return _json({"seconds": self._server.latency})

    async def faults(self, request: web.Request) -> web.Response:
        return _json({"faults": self._server.faults()})

    async def add_fault(self, request: web.Request) -> web.Response:
        body = await _body(request)
        allowed = {
            "status",
            "path_regex",
            "method",
            "tenant_id",
            "times",
            "after",
            "retry_after",
            "delay",
            "code",
            "message",
            "in_batch",
            "truncate",
        }
        unknown = set(body) - allowed
        if unknown or "status" not in body or "path_regex" not in body:
            raise web.HTTPBadRequest(text=f"need status and pathRegex; unknown keys: {sorted(unknown)}")
        fault_id = self._server.add_fault(**body)
        return _json({"id": fault_id}, status=201)

    async def clear_faults(self, request: web.Request) -> web.Response:
        self._server.clear_faults()
        return _json({"ok": True})

    async def remove_fault(self, request: web.Request) -> web.Response:
        removed = self._server.remove_fault(int(request.match_info["fault_id"]))
        return _json({"removed": removed}, status=200 if removed else 404)

    async def _set_limit(self, request: web.Request, limiter: RateLimiter, only: str) -> web.Response:
        body = await _body(request)
        limiter.set(int(body["requests"]), float(body["per_seconds"]), body.get(only), body.get("path_regex"))
        return _json({"ok": True})

    async def set_rate_limit(self, request: web.Request) -> web.Response:
        return await self._set_limit(request, self._server.rate_limiter, "tenant_id")

    async def clear_rate_limit(self, request: web.Request) -> web.Response:
        self._server.clear_rate_limit()
        return _json({"ok": True})

    async def set_app_rate_limit(self, request: web.Request) -> web.Response:
        return await self._set_limit(request, self._server.app_rate_limiter, "app_id")

    async def clear_app_rate_limit(self, request: web.Request) -> web.Response:
        self._server.clear_app_rate_limit()
        return _json({"ok": True})

    async def set_token_lifetime(self, request: web.Request) -> web.Response:
        body = await _body(request)
        self._server.set_token_lifetime(int(body["seconds"]))
        return _json({"seconds": int(body["seconds"])})

    async def set_delta_policy(self, request: web.Request) -> web.Response:
        body = await _body(request)
        if "lifetime_seconds" in body:
            lifetime = body["lifetime_seconds"]
            self._server.set_delta_token_lifetime(None if lifetime is None else float(lifetime))
        if "expired_answer" in body:
            try:
                self._server.set_delta_expired_answer(str(body["expired_answer"]))
            except ValueError as error:
                raise web.HTTPBadRequest(text=str(error)) from None
        delta = self._server.delta
        return _json({"lifetimeSeconds": delta.lifetime, "expiredAnswer": delta.expired_answer})

    async def set_page_token_policy(self, request: web.Request) -> web.Response:
        body = await _body(request)
        lifetime = body.get("lifetime_seconds")
        self._server.set_page_token_lifetime(None if lifetime is None else float(lifetime))
        return _json({"lifetimeSeconds": self._server.page_tokens.lifetime})

    async def set_index_lag(self, request: web.Request) -> web.Response:
        body = await _body(request)
        self._server.set_index_lag(float(body.get("seconds", 0.0)))
        return _json({"seconds": float(body.get("seconds", 0.0))})

    async def set_count_bom(self, request: web.Request) -> web.Response:
        body = await _body(request)
        self._server.set_count_bom(bool(body.get("enabled", True)))
        return _json({"enabled": bool(body.get("enabled", True))})

    async def set_hidden_members(self, request: web.Request) -> web.Response:
        body = await _body(request)
        try:
            self._server.set_hidden_members_answer(str(body.get("answer", "forbidden")))
        except ValueError as error:
            raise web.HTTPBadRequest(text=str(error)) from None
        return _json({"answer": str(body.get("answer", "forbidden"))})

    # --------------------------------------------------------- change notifications

    async def subscriptions(self, request: web.Request) -> web.Response:
        tenant_id = request.query.get("tenant")
        try:
            listing = self._server.subscription_list(tenant_id)
        except KeyError:
            raise web.HTTPNotFound(text="unknown tenant") from None
        return _json({"subscriptions": listing})

    async def deliveries(self, request: web.Request) -> web.Response:
        records = self._server.deliveries(request.query.get("subscription"), request.query.get("kind"))
        limit = int(request.query.get("limit", "500"))
        return _json(
            {
                "total": len(records),
                "deliveries": [r.as_dict() for r in records[-limit:]] if limit > 0 else [],
            }
        )

    async def delivery_faults(self, request: web.Request) -> web.Response:
        return _json({"faults": self._server.delivery_faults()})

    async def add_delivery_fault(self, request: web.Request) -> web.Response:
        body = await _body(request)
        unknown = set(body) - {"kind", "times", "subscription_id"}
        if unknown or "kind" not in body:
            raise web.HTTPBadRequest(
                text=f"need kind (drop, duplicate, reorder); unknown keys: {sorted(unknown)}"
            )
        times = body.get("times", 1)
        try:
            fault_id = self._server.add_delivery_fault(
                str(body["kind"]), None if times is None else int(times), body.get("subscription_id")
            )
        except ValueError as error:
            raise web.HTTPBadRequest(text=str(error)) from None
        return _json({"id": fault_id}, status=201)

    async def clear_delivery_faults(self, request: web.Request) -> web.Response:
        self._server.clear_delivery_faults()
        return _json({"ok": True})

    def _policy(self) -> dict[str, Any]:
        return {
            **self._server.subscriptions.policy.as_dict(),
            "allowHttpNotificationUrls": self._server.subscriptions.allow_http_notification_urls,
        }

    async def get_delivery_policy(self, request: web.Request) -> web.Response:
        return _json(self._policy())

    async def set_delivery_policy(self, request: web.Request) -> web.Response:
        body = await _body(request)
        if "allow_http_notification_urls" in body:
            self._server.set_allow_http_notification_urls(bool(body.pop("allow_http_notification_urls")))
        try:
            self._server.set_delivery_policy(**body)
        except (ValueError, TypeError) as error:
            raise web.HTTPBadRequest(text=str(error)) from None
        return _json(self._policy())

    async def expire_subscription(self, request: web.Request) -> web.Response:
        expired = self._server.expire_subscription(request.match_info["subscription_id"])
        return _json({"expired": expired}, status=200 if expired else 404)

    async def send_lifecycle(self, request: web.Request) -> web.Response:
        body = await _body(request)
        try:
            self._server.send_lifecycle(
                request.match_info["subscription_id"],
                str(body.get("event", "")),
                pause_delivery=bool(body.get("pause_delivery", False)),
            )
        except KeyError:
            raise web.HTTPNotFound(text="unknown subscription") from None
        except ValueError as error:
            raise web.HTTPBadRequest(text=str(error)) from None
        return _json({"sent": True}, status=202)

    # -------------------------------------------------------------------- tenants

    async def tenants(self, request: web.Request) -> web.Response:
        return _json({"tenants": [self._summary(tenant) for tenant in self._server.tenants().values()]})

    async def tenant(self, request: web.Request) -> web.Response:
        return _json(self._summary(self._tenant(request)))

    def _summary(self, tenant: Tenant) -> dict[str, Any]:
        return {**tenant.summary(), "consent": self._server.consent(tenant.tenant_id).as_dict()}

    async def get_consent(self, request: web.Request) -> web.Response:
        return _json(self._server.consent(self._tenant(request).tenant_id).as_dict())

    async def set_consent(self, request: web.Request) -> web.Response:
        tenant = self._tenant(request)
        body = await _body(request)
        permissions = body.get("permissions")
        try:
            consent = self._server.set_consent(tenant.tenant_id, body.get("state", ""), permissions)
        except ValueError as error:
            raise web.HTTPBadRequest(text=str(error)) from None
        return _json(consent.as_dict())

    async def expire_delta(self, request: web.Request) -> web.Response:
        self._server.expire_delta_tokens(self._tenant(request).tenant_id)
        return _json({"ok": True})

    async def expire_page_tokens(self, request: web.Request) -> web.Response:
        self._server.expire_page_tokens(self._tenant(request).tenant_id)
        return _json({"ok": True})

    async def set_mailbox_policy(self, request: web.Request) -> web.Response:
        tenant = self._tenant(request)
        body = await _body(request)
        denied = [str(user_id) for user_id in body.get("denied_user_ids") or ()]
        unknown = [user_id for user_id in denied if user_id not in tenant.users]
        if unknown:
            raise web.HTTPNotFound(text=f"unknown users: {unknown}")
        self._server.set_mailbox_access_denied(tenant.tenant_id, denied, replace=True)
        return _json({"deniedUserIds": denied})

    async def omit_properties(self, request: web.Request) -> web.Response:
        tenant = self._tenant(request)
        user_id = request.match_info["user_id"]
        if user_id not in tenant.users:
            raise web.HTTPNotFound(text=f"unknown user: {user_id}")
        body = await _body(request)
        properties = [str(name) for name in body.get("properties") or ()]
        self._server.omit_user_properties(tenant.tenant_id, user_id, properties)
        return _json({"properties": properties})

    async def add_member(self, request: web.Request) -> web.Response:
        tenant = self._tenant(request)
        body = await _body(request)
        try:
            added = self._server.add_member(tenant.tenant_id, request.match_info["group_id"], str(body["id"]))
        except KeyError as error:
            raise web.HTTPNotFound(text=str(error)) from None
        except MembershipRefused as error:
            # What Graph answers when a member's kind does not fit the group (e.g. a group in a
            # Microsoft 365 group): 400 in Graph's error shape.
            reply = error_reply(GraphError(400, "Request_BadRequest", str(error)), "control")
            return _json(reply.payload, status=400)
        return _json({"added": added})

    async def remove_member(self, request: web.Request) -> web.Response:
        tenant = self._tenant(request)
        removed = self._server.change(
            tenant,
            lambda: tenant.remove_member(request.match_info["group_id"], request.match_info["member_id"]),
        )
        return _json({"removed": removed}, status=200 if removed else 404)

    async def delete_group(self, request: web.Request) -> web.Response:
        tenant = self._tenant(request)
        deleted = self._server.change(tenant, lambda: tenant.delete_group(request.match_info["group_id"]))
        return _json({"deleted": deleted}, status=200 if deleted else 404)

    async def add_user(self, request: web.Request) -> web.Response:
        tenant = self._tenant(request)
        body = await _body(request)
        licenses = _licenses(body.pop("assigned_licenses")) if "assigned_licenses" in body else ()
        body.pop("assigned_plans", None)  # derived from the licences
        body.setdefault("id", str(uuid.uuid4()))
        try:
            user = msgspec.convert(body, User)
        except msgspec.ValidationError as error:
            raise web.HTTPBadRequest(text=str(error)) from None

        def apply() -> User:
            tenant.add_user(user)
            return tenant.set_licenses(user.id, licenses) if licenses else user

        return _json(msgspec.to_builtins(self._server.change(tenant, apply)), status=201)

    async def delete_user(self, request: web.Request) -> web.Response:
        tenant = self._tenant(request)
        deleted = self._server.delete_user(tenant.tenant_id, request.match_info["user_id"])
        return _json({"deleted": deleted}, status=200 if deleted else 404)

    async def purge_deleted(self, request: web.Request) -> web.Response:
        tenant = self._tenant(request)
        purged = self._server.purge_deleted(tenant.tenant_id, request.match_info["object_id"])
        return _json({"purged": purged}, status=200 if purged else 404)

    async def update_user(self, request: web.Request) -> web.Response:
        tenant = self._tenant(request)
        body = await _body(request)
        user_id = request.match_info["user_id"]
        if user_id not in tenant.users:
            raise web.HTTPNotFound(text="unknown user")
        fields = {field_info.name for field_info in msgspec.structs.fields(User)}
        unknown = set(body) - fields - {"id"}
        if unknown:
            raise web.HTTPBadRequest(text=f"unknown user fields: {sorted(unknown)}")
        body.pop("id", None)
        licenses = _licenses(body.pop("assigned_licenses")) if "assigned_licenses" in body else None
        body.pop("assigned_plans", None)  # derived from the licences

        def apply() -> User:
            user = tenant.update_user(user_id, **body) if body else tenant.users[user_id]
            if licenses is not None:
                user = tenant.set_licenses(user_id, licenses)
            return user

        return _json(msgspec.to_builtins(self._server.change(tenant, apply)))

    async def set_licenses(self, request: web.Request) -> web.Response:
        tenant = self._tenant(request)
        body = await _body(request)
        user_id = request.match_info["user_id"]
        if user_id not in tenant.users:
            raise web.HTTPNotFound(text="unknown user")
        licenses = _licenses(body.get("assigned_licenses", []))
        status = str(body.get("capability_status", "Enabled"))
        try:
            user = self._server.set_user_licenses(tenant.tenant_id, user_id, licenses, status)
        except ValueError as error:
            raise web.HTTPBadRequest(text=str(error)) from None
        return _json(msgspec.to_builtins(user))
