"""users/delta and groups/delta: a full round with nextLinks, then deltaLinks carrying changes since.

Follows "Use delta query to track changes in Microsoft Graph data" and "user: delta"/"group: delta":
state tokens are opaque and carry the round's $select; $top, $orderby and $expand are not
supported; groups report membership changes as members@delta. Directory delta tokens last seven
days; an expired one answers, by choice of `expired_answer`, 400 syncStateNotFound (what Microsoft
announced for directory delta links), 410 resyncRequired with a Location header holding the initial
query (the "synchronization reset" case) or 400 syncStateInvalid.
"""

from __future__ import annotations

import collections
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any, Literal

from devtools.demo_tenant.model import DirectoryObject
from devtools.demo_tenant.query import (
    Call,
    check_options,
    context_url,
    decode_token,
    encode_token,
    link,
    parse_select,
)
from devtools.demo_tenant.wire import (
    GROUP_TYPE,
    TYPE_BY_CLASS,
    USER_TYPE,
    GraphError,
    Reply,
    TypeInfo,
    project,
)

DELTA_PAGE_SIZE = 100
DELTA_MEMBERS_PER_ENTRY = 1000  # a larger group is split over several entries, as Graph does
DELTA_TOKEN_LIFETIME = 7 * 24 * 3600.0  # directory objects: seven days
ExpiredAnswer = Literal["syncStateNotFound", "resyncRequired", "syncStateInvalid"]
EXPIRED_ANSWERS: tuple[ExpiredAnswer, ...] = ("syncStateNotFound", "resyncRequired", "syncStateInvalid")
_DELTA_OPTIONS = frozenset({"$select", "$deltatoken", "$skiptoken"})


class DeltaReader:
    """Serves delta rounds for every tenant; knobs: token lifetime, expiry by tenant, expired answer."""

    def __init__(self, wire: Callable[[Call, DirectoryObject], dict[str, Any]]) -> None:
        self._wire = wire
        self._lock = threading.Lock()
        self._cache: collections.OrderedDict[tuple[Any, ...], list[dict[str, Any]]] = (
            collections.OrderedDict()
        )
        self._epochs: dict[str, int] = {}
        self.lifetime: float | None = DELTA_TOKEN_LIFETIME
        self.expired_answer: ExpiredAnswer = "syncStateNotFound"

    def expire(self, tenant_id: str) -> None:
        """Make every delta token issued so far for this tenant expired."""
        with self._lock:
            key = tenant_id.lower()
            self._epochs[key] = self._epochs.get(key, 0) + 1

    def reset(self) -> None:
        """Default lifetime and answer; tokens issued before stay expired."""
        self.lifetime = DELTA_TOKEN_LIFETIME
        self.expired_answer = "syncStateNotFound"

    def _epoch(self, tenant_id: str) -> int:
        with self._lock:
            return self._epochs.get(tenant_id.lower(), 0)

    def _expired(self, call: Call, info: TypeInfo, select: list[str] | None) -> GraphError:
        if self.expired_answer == "resyncRequired":
            restart = link(
                call,
                {"$select": ",".join(select)} if select else {},
                keep=False,
                path=f"/{info.entity_set}/delta",
            )
            call.extra_headers["Location"] = restart
            return GraphError(
                410, "resyncRequired", "The delta token is no longer valid; synchronize again from the start."
            )
        return GraphError(
            400,
            self.expired_answer,
            "The sync state generation is not found: the delta token has expired; synchronize again.",
        )

    def serve(self, call: Call, kind: Literal["user", "group"]) -> Reply:
        """One delta page for `call` (a first request, a nextLink or a deltaLink)."""
        tenant = call.tenant
        assert tenant is not None
        check_options(call, _DELTA_OPTIONS)
        info = USER_TYPE if kind == "user" else GROUP_TYPE
        delta_path = f"/{info.entity_set}/delta"
        skiptoken = call.option("$skiptoken")
        deltatoken = call.option("$deltatoken")
        names: list[str] | None = None
        if not skiptoken and (not deltatoken or deltatoken == "latest"):
            lowered = dict(info.by_lower_name)
            if kind == "group":
                lowered["members"] = "members"
            chosen = parse_select(call, lowered, f"microsoft.graph.{kind}")
            names = list(chosen) if chosen else None
        if deltatoken == "latest":
            # "$deltatoken=latest": no objects, just a deltaLink from now on.
            latest = self._delta_state(tenant.tenant_id, kind, tenant.revision, names)
            return Reply(
                200,
                {
                    "@odata.context": context_url(call, info.entity_set, None),
                    "@odata.deltaLink": link(
                        call, {"$deltatoken": encode_token(latest)}, keep=False, path=delta_path
                    ),
                    "value": [],
                },
            )
        if skiptoken:
            state = decode_token(skiptoken)
        elif deltatoken:
            previous = decode_token(deltatoken)
            if previous.get("kind", kind) != kind:
                raise GraphError(400, "Request_BadRequest", "The delta token is not valid.")
            issued = float(previous.get("iat", 0.0))
            stale = int(previous.get("epoch", 0)) != self._epoch(tenant.tenant_id) or (
                self.lifetime is not None and time.time() - issued > self.lifetime
            )
            if stale:
                raise self._expired(call, info, previous.get("select"))
            state = {
                "mode": "changes",
                "since": int(previous.get("upto", 0)),
                "upto": tenant.revision,
                "select": previous.get("select"),
                "offset": 0,
            }
        else:
            state = {"mode": "full", "since": 0, "upto": tenant.revision, "select": names, "offset": 0}
        if state.get("kind", kind) != kind:
            raise GraphError(400, "Request_BadRequest", "The paging token is not valid.")
        state["kind"] = kind
        select = tuple(state["select"]) if state.get("select") else None
        track_members = kind == "group" and (
            select is None or any(name.lower() == "members" for name in select)
        )
        property_select = tuple(name for name in select if name.lower() != "members") if select else None

        key = (tenant.tenant_id, kind, state["mode"], state["since"], state["upto"], tuple(select or ()))
        with self._lock:
            entries = self._cache.get(key)
        if entries is None:
            entries = self._entries(call, kind, state, info, property_select or None, track_members)
            with self._lock:
                self._cache[key] = entries
                while len(self._cache) > 32:
                    self._cache.popitem(last=False)
        offset = int(state.get("offset", 0))
        payload: dict[str, Any] = {
            "@odata.context": context_url(call, info.entity_set, property_select or None)
        }
        if offset + DELTA_PAGE_SIZE < len(entries):
            next_state = dict(state, offset=offset + DELTA_PAGE_SIZE)
            payload["@odata.nextLink"] = link(
                call, {"$skiptoken": encode_token(next_state)}, keep=False, path=delta_path
            )
        else:
            delta_state = self._delta_state(tenant.tenant_id, kind, int(state["upto"]), state.get("select"))
            payload["@odata.deltaLink"] = link(
                call, {"$deltatoken": encode_token(delta_state)}, keep=False, path=delta_path
            )
        payload["value"] = entries[offset : offset + DELTA_PAGE_SIZE]
        return Reply(200, payload)

    def _delta_state(self, tenant_id: str, kind: str, upto: int, select: list[str] | None) -> dict[str, Any]:
        return {
            "kind": kind,
            "upto": upto,
            "select": select,
            "iat": round(time.time(), 3),
            "epoch": self._epoch(tenant_id),
        }

    def _entries(
        self,
        call: Call,
        kind: str,
        state: dict[str, Any],
        info: TypeInfo,
        select: tuple[str, ...] | None,
        track_members: bool,
    ) -> list[dict[str, Any]]:
        tenant = call.tenant
        assert tenant is not None
        objects: Mapping[str, DirectoryObject] = tenant.users if kind == "user" else tenant.groups
        entries: list[dict[str, Any]] = []

        def member_ref(member_id: str, removed: bool = False) -> dict[str, Any]:
            obj = tenant.get_object(member_id)
            odata_type = (
                TYPE_BY_CLASS[type(obj)].odata_type if obj is not None else "#microsoft.graph.directoryObject"
            )
            ref: dict[str, Any] = {"@odata.type": odata_type, "id": member_id}
            if removed:
                ref["@removed"] = {"reason": "deleted"}
            return ref

        purged: set[str] = set()  # removed for good: reason "deleted"; otherwise soft-deleted, "changed"

        def emit(object_id: str, member_refs: list[dict[str, Any]] | None) -> None:
            obj = objects.get(object_id)
            if obj is None:
                reason = "deleted" if object_id in purged else "changed"
                entries.append({"id": object_id, "@removed": {"reason": reason}})
                return
            entry = project(self._wire(call, obj), info, select, typed=True)
            entry["id"] = object_id
            if not member_refs:
                entries.append(entry)
                return
            for start in range(0, len(member_refs), DELTA_MEMBERS_PER_ENTRY):
                chunk = dict(entry)
                chunk["members@delta"] = member_refs[start : start + DELTA_MEMBERS_PER_ENTRY]
                entries.append(chunk)

        if state["mode"] == "full":
            for object_id in list(objects):
                refs = (
                    [member_ref(member_id) for member_id in tenant.direct_member_ids(object_id)]
                    if track_members
                    else None
                )
                emit(object_id, refs)
            return entries

        changes = tenant.changes_since(int(state["since"]))
        if changes is None:  # the change log no longer reaches back that far: the token is stale
            raise self._expired(call, info, state.get("select"))
        changed_order: dict[str, None] = {}
        member_changes: dict[str, dict[str, bool]] = {}
        for change in changes:
            if change.revision > int(state["upto"]) or change.kind != kind:
                continue
            changed_order.pop(change.object_id, None)
            changed_order[change.object_id] = None
            if change.purged:
                purged.add(change.object_id)
            else:
                purged.discard(change.object_id)
            if change.member_id is not None:
                member_changes.setdefault(change.object_id, {})[change.member_id] = change.member_added
        for object_id in changed_order:
            refs = None
            if track_members and object_id in member_changes:
                refs = [
                    member_ref(member_id, removed=not added)
                    for member_id, added in member_changes[object_id].items()
                ]
            emit(object_id, refs)
        return entries
