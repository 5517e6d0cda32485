"""Reads of groups: the tenant's group list for the page, look-ups by id, user counts, nesting."""

from __future__ import annotations

import base64
import binascii
from collections.abc import Collection, Iterable, Mapping, Sequence
from urllib.parse import urlsplit

from kiota_abstractions.base_request_configuration import RequestConfiguration
from msgraph.generated.groups.groups_request_builder import GroupsRequestBuilder

from sync.directory.errors import InvalidCursor, error_from_body, group_item_body
from sync.directory.transport import MAX_PAGE_SIZE, GraphTransport
from sync.directory.wire import COUNT_ONLY, GROUP, GROUP_FIELDS, GROUP_PAGE, ID_PAGE, BatchItem
from sync.models import DirectMembers, Group, GroupKind, GroupPage
from sync.validation import MAX_SEARCH_LENGTH, is_object_id, search_text

PERMISSION = "GroupMember.Read.All"


def search_clause(text: str, properties: tuple[str, ...] = ("displayName",)) -> str:
    """`$search` for words of some properties: one quoted "property:words" clause per property, ORed.

    Quotes and backslashes are dropped (`sync.validation.search_text`), so no clause can be broken
    out of; text with no word in it is refused (ValueError), never sent.
    """
    if len(text) > MAX_SEARCH_LENGTH:
        raise ValueError(f"search text is longer than {MAX_SEARCH_LENGTH} characters")
    words = search_text(text)
    if not words:
        raise ValueError("search text has no letter or digit to search for")
    return " OR ".join(f'"{name}:{words}"' for name in properties)


# Direct member types the admin center counts, and the cast that asks for each; a Microsoft 365 group
# holds users only, mail-enabled groups no devices ("Manage groups", "List group members").
_DIRECT_CASTS = {
    "users": "/groups/{}/members/microsoft.graph.user?$count=true&$top=1&$select=id",
    "groups": "/groups/{}/members/microsoft.graph.group?$count=true&$top=1&$select=id",
    "devices": "/groups/{}/members/microsoft.graph.device?$count=true&$top=1&$select=id",
    "contacts": "/groups/{}/members/microsoft.graph.orgContact?$count=true&$top=1&$select=id",
}
_HELD_BY_KIND: dict[GroupKind, frozenset[str]] = {
    GroupKind.MICROSOFT365: frozenset({"users"}),
    GroupKind.SECURITY: frozenset(_DIRECT_CASTS),
    GroupKind.MAIL_ENABLED_SECURITY: frozenset({"users", "groups", "contacts"}),
    GroupKind.DISTRIBUTION: frozenset({"users", "groups", "contacts"}),
}


class GroupReads:
    """Group reads of one tenant."""

    transport: GraphTransport

    async def list_groups(
        self, *, search: str | None = None, cursor: str | None = None, page_size: int = 100
    ) -> GroupPage:
        """One page of the tenant's groups by display name, with transitive user counts."""
        if not 1 <= page_size <= MAX_PAGE_SIZE:
            raise ValueError(f"page size must be between 1 and {MAX_PAGE_SIZE}")
        builder = self.transport.client.groups
        qp = GroupsRequestBuilder.GroupsRequestBuilderGetQueryParameters(
            select=GROUP_FIELDS, top=page_size, count=True, orderby=["displayName"]
        )
        if search and search.strip():
            qp.search = search_clause(search)
            qp.orderby = None  # Graph refuses $orderby together with $search on groups
        cfg = RequestConfiguration(query_parameters=qp)
        cfg.headers.add("ConsistencyLevel", "eventual")
        if cursor:
            request = builder.with_url(self._cursor_to_url(cursor)).to_get_request_information(cfg)
        else:
            request = builder.to_get_request_information(cfg)
        page = GROUP_PAGE.decode(await self.transport.send(request, PERMISSION))
        counts = await self.count_group_users([g.id for g in page.value])
        return GroupPage(
            value=[g.to_group(counts.get(g.id)) for g in page.value],
            next_cursor=self._url_to_cursor(page.next_link) if page.next_link else None,
            total=page.count,
        )

    def _url_to_cursor(self, next_link: str) -> str:
        parts = urlsplit(next_link)
        return base64.urlsafe_b64encode(f"{parts.path}?{parts.query}".encode()).decode().rstrip("=")

    def _cursor_to_url(self, cursor: str) -> str:
        try:
            decoded = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        except (binascii.Error, UnicodeDecodeError, ValueError):
            raise InvalidCursor("the cursor is not one this API issued") from None
        base = urlsplit(self.transport.base_url)
        if not decoded.startswith(f"{base.path}/groups?"):
            raise InvalidCursor("the cursor is not one this API issued")
        return f"{base.scheme}://{base.netloc}{decoded}"

    async def _first_user_members(self, group_ids: Sequence[str]) -> dict[str, BatchItem]:
        url = "/groups/{}/transitiveMembers/microsoft.graph.user?$count=true&$top=1&$select=id"
        return await self.transport.batch_get(
            {gid: url.format(gid) for gid in group_ids}, PERMISSION, eventual=True
        )

    async def members_refused(self, group_ids: Sequence[str]) -> list[str]:
        """Groups whose members Graph will not show (401/403): hidden membership, no Member.Read.Hidden."""
        items = await self._first_user_members(group_ids)
        return [gid for gid in group_ids if items[gid].status in (401, 403)]

    async def count_group_users(self, group_ids: Sequence[str]) -> dict[str, int]:
        """Transitive user member counts, 20 groups per $batch request.

        A group deleted between listing and counting (or whose members are hidden from the app)
        simply shows no count.
        """
        items = await self._first_user_members(group_ids)
        counts: dict[str, int] = {}
        for gid, item in items.items():
            if item.status == 200:
                count = COUNT_ONLY.decode(item.body).count
                if count is not None:
                    counts[gid] = count
        return counts

    async def count_direct_members(self, kinds: Mapping[str, GroupKind]) -> dict[str, DirectMembers | None]:
        """Direct members of each group by type (users, groups, devices, contacts), as the Microsoft
        365 admin center counts them: one cast with `$count` per type the group's kind can hold, 20
        to a `$batch`. A group any of whose counts Graph refuses maps to None (the numbers only explain)."""
        asks = {
            f"{gid}|{field}": url.format(gid)
            for gid, kind in kinds.items()
            for field, url in _DIRECT_CASTS.items()
            if field in _HELD_BY_KIND[kind]
        }
        items = await self.transport.batch_get(asks, PERMISSION, eventual=True)
        numbers: dict[str, dict[str, int]] = {gid: {} for gid in kinds}
        failed: set[str] = set()
        for key, item in items.items():
            gid, field = key.split("|")
            count = COUNT_ONLY.decode(item.body).count if item.status == 200 else None
            if count is None:
                failed.add(gid)
            else:
                numbers[gid][field] = count
        return {gid: None if gid in failed else DirectMembers(**numbers[gid]) for gid in kinds}

    async def get_groups(self, group_ids: Iterable[str]) -> dict[str, Group | None]:
        """Look groups up by id, 20 per $batch; a missing (or malformed) id maps to None."""
        ids = list(dict.fromkeys(group_ids))
        select = ",".join(GROUP_FIELDS)
        well_formed = {gid: f"/groups/{gid}?$select={select}" for gid in ids if is_object_id(gid)}
        items = await self.transport.batch_get(well_formed, PERMISSION)
        found: dict[str, Group | None] = {}
        for gid in ids:
            item = items.get(gid)
            if item is None or item.status in (400, 404):
                found[gid] = None
            elif item.status == 200:
                found[gid] = GROUP.decode(item.body).to_group()
            else:
                raise error_from_body(item.status, item.body, PERMISSION)
        return found

    async def group_closure(
        self, group_ids: Sequence[str], *, microsoft365: Collection[str] = ()
    ) -> dict[str, frozenset[str]]:
        """For each group, itself and every group nested in it (transitively), 20 groups per $batch.

        A Microsoft 365 group cannot hold groups, and Graph refuses the group cast on one (400
        Request_UnsupportedQuery): the ids in `microsoft365` are their own closure, unasked.
        """
        url = "/groups/{}/transitiveMembers/microsoft.graph.group?$select=id&$top=999&$count=true"
        asked = [gid for gid in group_ids if gid not in microsoft365]
        items = await self.transport.batch_get(
            {gid: url.format(gid) for gid in asked}, PERMISSION, eventual=True
        )
        closure: dict[str, frozenset[str]] = {
            gid: frozenset({gid}) for gid in group_ids if gid in microsoft365
        }
        for gid, item in items.items():
            page = ID_PAGE.decode(group_item_body(gid, item.status, item.body, PERMISSION))
            ids = {entry.id for entry in page.value}
            if page.next_link:  # more than 999 nested groups: follow the rest outside the batch
                request = self.transport.request_for(page.next_link, eventual=True)
                async for more in self.transport.pages(request, ID_PAGE, PERMISSION, eventual=True):
                    ids.update(entry.id for entry in more.value)
            closure[gid] = frozenset(ids | {gid})
        return closure


__all__ = ["PERMISSION", "GroupKind", "GroupReads", "search_clause"]
