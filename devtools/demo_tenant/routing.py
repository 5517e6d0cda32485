"""Graph's directory routes the product reads, and their handlers.

Routes: /users, /users/$count, /users/{id|upn}, /users/{id}/mailboxSettings[/{setting}],
/users/{id}/memberOf|transitiveMemberOf[/cast][/$count], /users/delta, /groups, /groups/$count,
/groups/{id}, /groups/{id}/members|transitiveMembers[/cast][/$count], /groups/delta. Anything
else answers Graph's 400 "Resource not found for the segment". Rules per route follow the
"List users", "List groups", "List group transitive members", "List a user's memberships",
"Get mailboxSettings" and "Advanced query capabilities" pages: casts need the advanced query
parameters, a cast to a member type the group cannot hold answers 400 Request_UnsupportedQuery,
members of a hidden-membership group need Member.Read.Hidden, and `$count`/`$search` read an
index that may lag behind recent changes.
"""

from __future__ import annotations

import collections
import re
import threading
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import quote

from devtools.demo_tenant import schema
from devtools.demo_tenant.auth import HIDDEN_MEMBERS_ROLE
from devtools.demo_tenant.model import DirectoryObject, Group, Tenant, User, member_kinds
from devtools.demo_tenant.query import (
    ADVANCED_QUERY_HINT,
    Call,
    check_options,
    compile_search,
    context_url,
    page,
    parse_select,
    require_count_segment,
    select_for,
)
from devtools.demo_tenant.wire import (
    CASTS,
    CONTACT_TYPE,
    DEVICE_TYPE,
    DIRECTORY_OBJECT_PROPERTIES,
    GROUP_TYPE,
    SERVICE_PRINCIPAL_TYPE,
    TYPE_BY_CLASS,
    USER_TYPE,
    GraphError,
    Reply,
    TypeInfo,
    not_found_message,
    project,
)

if TYPE_CHECKING:
    from devtools.demo_tenant.server import DemoGraphServer

Handler = Callable[[], Reply]
IdSource = Callable[[Tenant], list[str]]
_GUID = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")
_LIST_OPTIONS = frozenset({"$select", "$top", "$count", "$search", "$skiptoken"})
_GROUP_LIST_OPTIONS = _LIST_OPTIONS | {"$orderby"}
_LINK_OPTIONS = frozenset({"$select", "$top", "$count", "$skiptoken"})
_COUNT_OPTIONS = frozenset({"$search"})
_ENTITY_OPTIONS = frozenset({"$select"})
_KIND_OF_TYPE = {
    USER_TYPE: "user",
    GROUP_TYPE: "group",
    DEVICE_TYPE: "device",
    CONTACT_TYPE: "orgContact",
    SERVICE_PRINCIPAL_TYPE: "servicePrincipal",
}
HiddenAnswer = Literal["forbidden", "empty"]


def _throw(error: GraphError) -> Handler:
    def handler() -> Reply:
        raise error

    return handler


def _segment_error(segment: str) -> GraphError:
    return GraphError(400, "BadRequest", f"Resource not found for the segment '{segment}'.")


def _is_delta(segment: str) -> bool:
    return segment in ("delta", "delta()", "microsoft.graph.delta", "microsoft.graph.delta()")


class GraphRoutes:
    """Routes a call to its handler; handlers run under the tenant's lock and return a Reply."""

    def __init__(self, server: DemoGraphServer) -> None:
        self._server = server
        self._lock = threading.Lock()
        self._list_cache: collections.OrderedDict[tuple[Any, ...], list[str]] = collections.OrderedDict()
        self.hidden_answer: HiddenAnswer = "forbidden"

    # ------------------------------------------------------------------ routing

    def route(self, call: Call) -> tuple[str, Handler]:
        """The route kind (for the log and permission checks) and its handler."""
        segments = [segment for segment in call.path.split("/") if segment]
        lowered = [segment.lower() for segment in segments]
        if call.method != "GET":
            return "unsupported", _throw(GraphError(405))
        if not segments:
            return "unknown", _throw(_segment_error(""))
        if lowered[0] == "users":
            return self._route_users(call, segments, lowered)
        if lowered[0] == "groups":
            return self._route_groups(call, segments, lowered)
        return "unknown", _throw(_segment_error(segments[0]))

    def _route_users(self, call: Call, segments: list[str], lowered: list[str]) -> tuple[str, Handler]:
        if len(segments) == 1:
            return "users.list", lambda: self._list(call, USER_TYPE)
        if len(segments) == 2 and lowered[1] == "$count":
            return "users.count", lambda: self._count(call, USER_TYPE)
        if len(segments) == 2 and _is_delta(lowered[1]):
            return "users.delta", lambda: self._server.delta.serve(call, "user")
        user_key = segments[1]
        if len(segments) == 2:
            return "users.get", lambda: self._entity(call, self._find_user(call, user_key), USER_TYPE)
        if lowered[2] == "mailboxsettings" and len(segments) <= 4:
            single = segments[3] if len(segments) == 4 else None
            return "mailboxSettings", lambda: self._mailbox_settings(call, user_key, single)
        if lowered[2] in ("memberof", "transitivememberof"):
            transitive = lowered[2] == "transitivememberof"
            kind = "users.transitiveMemberOf" if transitive else "users.memberOf"

            def member_of(tenant: Tenant) -> list[str]:
                user = self._find_user(call, user_key, tenant)
                ids = tenant.transitive_member_of(user.id) if transitive else tenant.member_of(user.id)
                if self._may_read_hidden(call):
                    return ids
                # Without Member.Read.Hidden, hidden-membership groups are left out of a user's groups.
                return [
                    gid for gid in ids if not (gid in tenant.groups and tenant.groups[gid].hidden_membership)
                ]

            return self._link_route(
                call,
                kind,
                segments[3:],
                lambda: self._find_user(call, user_key),
                member_of,
                f"users/{user_key}/{kind}/hidden={self._may_read_hidden(call)}",
            )
        return "unknown", _throw(_segment_error(segments[2]))

    def _route_groups(self, call: Call, segments: list[str], lowered: list[str]) -> tuple[str, Handler]:
        if len(segments) == 1:
            return "groups.list", lambda: self._list(call, GROUP_TYPE)
        if len(segments) == 2 and lowered[1] == "$count":
            return "groups.count", lambda: self._count(call, GROUP_TYPE)
        if len(segments) == 2 and _is_delta(lowered[1]):
            return "groups.delta", lambda: self._server.delta.serve(call, "group")
        group_id = segments[1]
        if len(segments) == 2:
            return "groups.get", lambda: self._entity(call, self._find_group(call, group_id), GROUP_TYPE)
        if lowered[2] in ("members", "transitivemembers"):
            transitive = lowered[2] == "transitivemembers"
            kind = "groups.transitiveMembers" if transitive else "groups.members"

            def members(tenant: Tenant) -> list[str]:
                group = self._find_group(call, group_id, tenant)
                if transitive:
                    return list(tenant.transitive_member_ids(group.id))
                return tenant.direct_member_ids(group.id)

            return self._link_route(
                call,
                kind,
                segments[3:],
                lambda: self._check_group_members(call, group_id),
                members,
                f"groups/{group_id}/{kind}",
            )
        return "unknown", _throw(_segment_error(segments[2]))

    def _link_route(
        self,
        call: Call,
        kind: str,
        rest: list[str],
        validate: Callable[[], object],
        ids: IdSource,
        cache_key: str,
    ) -> tuple[str, Handler]:
        """members / transitiveMembers / memberOf with an optional cast and an optional /$count."""
        cast: TypeInfo | None = None
        cast_given = False
        if rest and rest[0].lower() != "$count":
            if rest[0].lower() not in CASTS:
                return kind, _throw(_segment_error(rest[0]))
            cast, cast_given = CASTS[rest[0].lower()], True
            rest = rest[1:]
        count_only = bool(rest) and rest[0].lower() == "$count"
        if count_only:
            rest = rest[1:]
        if rest:
            return kind, _throw(_segment_error(rest[0]))
        full_kind = kind + (".count" if count_only else "")
        return full_kind, lambda: self._list_link(
            call, validate, ids, cast, cast_given, count_only, cache_key
        )

    # ------------------------------------------------------------------ lookups

    def _find_user(self, call: Call, key: str, tenant: Tenant | None = None) -> User:
        tenant = tenant or call.tenant
        assert tenant is not None
        user = tenant.users.get(key) or tenant.users.get(key.lower())
        if user is None and "@" in key:
            user = tenant.user_by_principal_name(key)
        if user is None:
            raise GraphError(404, "Request_ResourceNotFound", not_found_message(key))
        return user

    def _find_group(self, call: Call, group_id: str, tenant: Tenant | None = None) -> Group:
        tenant = tenant or call.tenant
        assert tenant is not None
        if not _GUID.match(group_id):
            raise GraphError(400, "Request_BadRequest", f"Invalid object identifier '{group_id}'.")
        group = tenant.groups.get(group_id.lower())
        if group is None:
            raise GraphError(404, "Request_ResourceNotFound", not_found_message(group_id))
        return group

    def _may_read_hidden(self, call: Call) -> bool:
        return call.principal is None or HIDDEN_MEMBERS_ROLE in call.principal.roles

    def _check_group_members(self, call: Call, group_id: str) -> Group:
        group = self._find_group(call, group_id)
        if group.hidden_membership and not self._may_read_hidden(call) and self.hidden_answer == "forbidden":
            raise GraphError(
                403, "Authorization_RequestDenied", "Insufficient privileges to complete the operation."
            )
        return group

    # -------------------------------------------------------------- id lists

    def _cached_ids(self, key: tuple[Any, ...], build: Callable[[], list[str]]) -> list[str]:
        with self._lock:
            cached = self._list_cache.get(key)
            if cached is not None:
                self._list_cache.move_to_end(key)
                return cached
        ids = build()
        with self._lock:
            self._list_cache[key] = ids
            while len(self._list_cache) > 64:
                self._list_cache.popitem(last=False)
        return ids

    def _select_ids(
        self, call: Call, info: TypeInfo, source: IdSource, cache_key: str, *, orderby: tuple[str, ...] = ()
    ) -> tuple[list[str], int]:
        """The ids a list answers (after $search and $orderby) and its @odata.count.

        $search and counts read the index (which may lag behind changes); the list itself is live.
        """
        tenant = call.tenant
        assert tenant is not None
        index = self._server.index_view(tenant)
        search_text = call.option("$search").strip()
        orderby_text = call.option("$orderby").strip()
        search = compile_search(call, info, search_text) if search_text else None
        order_name: str | None = None
        descending = False
        if orderby_text:
            name, _, direction = orderby_text.partition(" ")
            order_name = info.by_lower_name.get(name.lower())
            if order_name not in orderby or direction.strip().lower() not in ("", "asc", "desc"):
                raise GraphError(400, "Request_UnsupportedQuery", "Sorting not supported for current query.")
            descending = direction.strip().lower() == "desc"
        if search is None and order_name is None:
            live = self._cached_ids((tenant.tenant_id, tenant.revision, cache_key), lambda: source(tenant))
            if index is tenant:
                return live, len(live)
            counted = self._cached_ids((index.tenant_id, index.revision, cache_key), lambda: source(index))
            return live, len(counted)

        def build() -> list[str]:
            base = index if search is not None else tenant
            selected = []
            for object_id in source(base):
                obj = base.get_object(object_id)
                if obj is None or (search is not None and not search(self._server.wire(call, obj))):
                    continue
                selected.append(object_id)
            if order_name is not None:

                def sort_key(object_id: str) -> str:
                    obj = base.get_object(object_id)
                    value = self._server.wire(call, obj).get(order_name or "") if obj else None
                    return (value or "").lower() if isinstance(value, str) else str(value or "")

                selected.sort(key=sort_key, reverse=descending)
            return selected

        base_revision = index.revision if search is not None else tenant.revision
        key = (tenant.tenant_id, base_revision, cache_key, search_text, orderby_text, call.eventual)
        ids = self._cached_ids(key, build)
        return ids, len(ids)

    # ------------------------------------------------------------------ handlers

    def _collection(self, info: TypeInfo) -> tuple[IdSource, str, tuple[str, ...]]:
        """Where a top-level collection's ids come from, its cache key and the $orderby it allows."""
        if info is USER_TYPE:
            return (lambda t: list(t.users)), "users", ()
        return (lambda t: list(t.groups)), "groups", ("displayName",)

    def _list(self, call: Call, info: TypeInfo) -> Reply:
        check_options(call, _LIST_OPTIONS if info is USER_TYPE else _GROUP_LIST_OPTIONS)
        select = select_for(call, info)
        source, key, orderby = self._collection(info)
        ids, count = self._select_ids(call, info, source, key, orderby=orderby)
        renderer = self._renderer(call, info, select)
        context = context_url(call, info.entity_set, select)
        return page(call, self._server.page_tokens, ids, renderer, context, count)

    def _count(self, call: Call, info: TypeInfo) -> Reply:
        check_options(call, _COUNT_OPTIONS)
        require_count_segment(call)
        source, key, _ = self._collection(info)
        _, count = self._select_ids(call, info, source, key)
        return Reply(200, text=str(count))

    def _renderer(
        self, call: Call, info: TypeInfo, select: tuple[str, ...] | None
    ) -> Callable[[list[str]], list[dict[str, Any]]]:
        tenant = call.tenant
        assert tenant is not None
        objects: Mapping[str, DirectoryObject] = tenant.users if info is USER_TYPE else tenant.groups

        def render(page_ids: list[str]) -> list[dict[str, Any]]:
            return [
                project(self._server.wire(call, objects[object_id]), info, select, typed=True)
                for object_id in page_ids
                if object_id in objects
            ]

        return render

    def _entity(self, call: Call, obj: DirectoryObject, info: TypeInfo) -> Reply:
        check_options(call, _ENTITY_OPTIONS)
        select = select_for(call, info)
        body = {"@odata.context": context_url(call, info.entity_set, select, "/$entity")}
        body.update(project(self._server.wire(call, obj), info, select, typed=True))
        return Reply(200, body)

    def _mailbox_settings(self, call: Call, key: str, single: str | None) -> Reply:
        check_options(call, _ENTITY_OPTIONS)
        user = self._find_user(call, key)
        if user.user_purpose is None:
            # No Exchange Online mailbox (unlicensed, guest, synced from another tenant).
            raise GraphError(
                404,
                "MailboxNotEnabledForRESTAPI",
                "The mailbox is either inactive, soft-deleted, or hosted on-premises.",
            )
        assert call.tenant is not None
        if self._server.mailbox_denied(call.tenant.tenant_id, user.id):
            # An Exchange application access policy keeps the app out of this mailbox.
            raise GraphError(
                403, "ErrorAccessDenied", "Access to OData is disabled for this mailbox by policy."
            )
        settings: dict[str, Any] = {
            "archiveFolder": None,
            "timeZone": "Pacific Standard Time",
            "dateFormat": "M/d/yyyy",
            "timeFormat": "h:mm tt",
            "delegateMeetingMessageDeliveryOptions": "sendToDelegateOutlookOnly",
            "userPurpose": user.user_purpose,
            "language": {
                "locale": user.preferred_language or "en-US",
                "displayName": "English (United States)",
            },
            "automaticRepliesSetting": {"status": "disabled", "externalAudience": "all"},
            "workingHours": {
                "daysOfWeek": ["monday", "tuesday", "wednesday", "thursday", "friday"],
                "startTime": "08:00:00.0000000",
                "endTime": "17:00:00.0000000",
                "timeZone": {"name": "Pacific Standard Time"},
            },
        }
        by_lower = {name.lower(): name for name in schema.MAILBOX_SETTINGS_PROPERTIES}
        context_base = f"{call.base_url}/$metadata#users('{quote(key, safe='@')}')/mailboxSettings"
        if single is not None:
            name = by_lower.get(single.lower())
            if name is None:
                raise GraphError(400, "BadRequest", f"Resource not found for the segment '{single}'.")
            value = settings.get(name)
            body = {"@odata.context": f"{context_base}/{name}"}
            body.update(value if isinstance(value, dict) else {"value": value})
            return Reply(200, body)
        select = parse_select(call, by_lower, "microsoft.graph.mailboxSettings")
        if select:
            body = {"@odata.context": f"{context_base}({','.join(select)})"}
            body.update({name: settings.get(name) for name in select})
            return Reply(200, body)
        body = {"@odata.context": context_base}
        body.update(settings)
        return Reply(200, body)

    def _list_link(
        self,
        call: Call,
        validate: Callable[[], object],
        ids: IdSource,
        cast: TypeInfo | None,
        cast_given: bool,
        count_only: bool,
        cache_key: str,
    ) -> Reply:
        tenant = call.tenant
        assert tenant is not None
        check_options(call, frozenset() if count_only else _LINK_OPTIONS)
        owner = validate()  # the owner id first (400/404/403), as Graph checks it before query options
        if count_only:
            require_count_segment(call)
        elif cast_given and not call.advanced:
            raise GraphError(
                400,
                "Request_UnsupportedQuery",
                "An OData cast on this relationship needs the advanced query parameters. "
                + ADVANCED_QUERY_HINT,
            )
        if cast_given and isinstance(owner, Group):
            cast_kind = _KIND_OF_TYPE.get(cast) if cast is not None else None
            if cast_kind is not None and cast_kind not in member_kinds(owner.kind):
                # e.g. /transitiveMembers/microsoft.graph.group on a Microsoft 365 group: it holds no groups.
                raise GraphError(
                    400,
                    "Request_UnsupportedQuery",
                    f"The OData cast to {cast.odata_type.lstrip('#') if cast else ''} names a member type "
                    "that "
                    f"a {owner.kind} group cannot have.",
                )
        hidden_empty = (
            isinstance(owner, Group) and owner.hidden_membership and not self._may_read_hidden(call)
        )
        by_type: dict[TypeInfo, str] = {
            USER_TYPE: "users",
            GROUP_TYPE: "groups",
            DEVICE_TYPE: "devices",
            CONTACT_TYPE: "org_contacts",
            SERVICE_PRINCIPAL_TYPE: "service_principals",
        }

        def member_ids(source_tenant: Tenant) -> list[str]:
            if hidden_empty:
                return []
            found = ids(source_tenant)
            if not cast_given:
                return found
            if cast is None:
                return []
            objects = getattr(source_tenant, by_type[cast])
            return [member_id for member_id in found if member_id in objects]

        info = cast or USER_TYPE
        key = f"{cache_key}/{cast.odata_type if cast else ('none' if cast_given else '*')}/{hidden_empty}"
        selected_ids, count = self._select_ids(call, info, member_ids, key)
        if count_only:
            return Reply(200, text=str(count))
        page_tokens = self._server.page_tokens
        if cast is not None:
            select = select_for(call, cast)
            typed_objects: Mapping[str, DirectoryObject] = getattr(tenant, by_type[cast])

            def render_typed(page_ids: list[str]) -> list[dict[str, Any]]:
                return [
                    project(self._server.wire(call, typed_objects[object_id]), cast, select, typed=True)
                    for object_id in page_ids
                    if object_id in typed_objects
                ]

            return page(
                call,
                page_tokens,
                selected_ids,
                render_typed,
                context_url(call, cast.entity_set, select),
                count,
            )
        raw_select = parse_select(call, DIRECTORY_OBJECT_PROPERTIES, "microsoft.graph.directoryObject")

        def render_mixed(page_ids: list[str]) -> list[dict[str, Any]]:
            out = []
            for object_id in page_ids:
                obj = tenant.get_object(object_id)
                if obj is None:
                    continue
                obj_info = TYPE_BY_CLASS[type(obj)]
                entry = {"@odata.type": obj_info.odata_type}
                entry.update(project(self._server.wire(call, obj), obj_info, raw_select, typed=False))
                out.append(entry)
            return out

        return page(
            call,
            page_tokens,
            selected_ids,
            render_mixed,
            context_url(call, "directoryObjects", raw_select),
            count,
        )
