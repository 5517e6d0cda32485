"""Reads of memberships: the user members of groups (nested groups expanded), and the groups
a user is in. Every page is followed; a group that cannot be read to its end raises, so a
partial membership never reaches the planner."""

from __future__ import annotations

import asyncio
import math
from collections.abc import Sequence

from kiota_abstractions.base_request_configuration import RequestConfiguration
from msgraph.generated.groups.item.transitive_members.graph_user.graph_user_request_builder import (
    GraphUserRequestBuilder,
)
from msgraph.generated.users.item.transitive_member_of.transitive_member_of_request_builder import (
    TransitiveMemberOfRequestBuilder,
)

from sync.directory.errors import (
    GraphRequestRejected,
    GroupNotFound,
    PageExpired,
    error_from_body,
    group_item_body,
)
from sync.directory.transport import MAX_BATCH_SIZE, MAX_PAGE_SIZE, GraphTransport
from sync.directory.users import UserReads
from sync.directory.wire import ID_PAGE, USER_FIELDS, USER_PAGE
from sync.models import DirectoryUser, GroupMembers, MemberStrategy, SharedValues
from sync.validation import is_object_id

PERMISSION = "GroupMember.Read.All"
MEMBERS_AND_USERS = "GroupMember.Read.All and User.Read.All (and Member.Read.Hidden for hidden membership)"
_USER_MEMBER_IDS = "/groups/{}/transitiveMembers/microsoft.graph.user?$select=id&$top=999&$count=true"
_GROUPS_OF_USER = "/users/{}/transitiveMemberOf/microsoft.graph.group?$select=id&$top=999&$count=true"


def cheaper_member_strategy(
    member_counts: Sequence[int], tenant_users: int, *, concurrency: int = 16
) -> MemberStrategy:
    """Pick the read that takes fewer Graph requests without taking longer.

    Per group: one request per page of 999 members. All users: the tenant's user pages plus the
    member-id pages, 20 to a `$batch`. The user list is one chain of nextLinks read one after
    another, while groups are read side by side, so it is taken only when that chain is no
    longer than the per-group read's rounds.
    """
    per_group = sum(max(1, math.ceil(count / MAX_PAGE_SIZE)) for count in member_counts)
    user_pages = max(1, math.ceil(tenant_users / MAX_PAGE_SIZE))
    all_users = user_pages + math.ceil(per_group / MAX_BATCH_SIZE)
    if all_users < per_group and user_pages <= math.ceil(per_group / concurrency):
        return MemberStrategy.ALL_USERS
    return MemberStrategy.PER_GROUP


def _members(ordered: Sequence[str], per_group: dict[str, list[DirectoryUser]]) -> GroupMembers:
    users: dict[str, DirectoryUser] = {}
    memberships: dict[str, list[str]] = {}
    for gid in ordered:
        for user in per_group[gid]:
            users.setdefault(user.id, user)
            memberships.setdefault(user.id, []).append(gid)
    return GroupMembers(
        users=users,
        groups_of_user={uid: tuple(gids) for uid, gids in memberships.items()},
        members_per_group={gid: len(per_group[gid]) for gid in ordered},
    )


class MemberReads(UserReads):
    """Membership reads of one tenant."""

    transport: GraphTransport

    async def read_group_users(self, group_ids: Sequence[str]) -> GroupMembers:
        """Every user in the given groups, nested groups included, each user once, groups side by side.

        Raises GroupNotFound, GraphAccessDenied or GraphUnavailable if any group cannot be
        read to its last page.
        """
        ordered = list(dict.fromkeys(group_ids))
        # One object per user however many selected groups hold them, and per department, title, ...
        shared = SharedValues()
        reads = [self._read_transitive_users(gid, shared) for gid in ordered]
        per_group = dict(zip(ordered, await asyncio.gather(*reads), strict=True))
        return _members(ordered, per_group)

    async def _read_transitive_users(self, group_id: str, shared: SharedValues) -> list[DirectoryUser]:
        try:
            return await self._read_transitive_users_once(group_id, shared)
        except PageExpired:  # a paging link went stale mid-read: read the group again from its first page
            return await self._read_transitive_users_once(group_id, shared)

    async def _read_transitive_users_once(self, group_id: str, shared: SharedValues) -> list[DirectoryUser]:
        if not is_object_id(group_id):
            raise GroupNotFound(group_id)
        builder = self.transport.client.groups.by_group_id(group_id).transitive_members.graph_user
        qp = GraphUserRequestBuilder.GraphUserRequestBuilderGetQueryParameters(
            select=USER_FIELDS, top=MAX_PAGE_SIZE, count=True
        )
        cfg = RequestConfiguration(query_parameters=qp)
        cfg.headers.add("ConsistencyLevel", "eventual")  # the /graph.user cast needs it
        users: list[DirectoryUser] = []
        try:
            async with self.transport.slot:
                request = builder.to_get_request_information(cfg)
                async for page in self.transport.pages(request, USER_PAGE, MEMBERS_AND_USERS, eventual=True):
                    # A user already read through another group is the same object (a different
                    # answer, the directory changing between pages, is kept as it came).
                    users.extend(shared.same(wire.to_directory_user(shared)) for wire in page.value)
        except GraphRequestRejected as exc:
            if exc.status == 404:
                raise GroupNotFound(group_id) from exc
            raise
        return users

    async def read_group_users_via_all_users(self, group_ids: Sequence[str]) -> GroupMembers:
        """The same answer as read_group_users, read as every user of the tenant plus the
        groups' member ids in `$batch` requests: fewer requests when many small groups are chosen."""
        ordered = list(dict.fromkeys(group_ids))
        member_ids = await self.read_member_ids(ordered)
        everyone = {user.id: user for user in await self.list_all_users()}
        wanted = set().union(*member_ids.values()) if member_ids else set()
        late = sorted(wanted - set(everyone))  # created between the two reads: read them by id
        if late:
            everyone.update({uid: u for uid, u in (await self.get_users(late)).items() if u is not None})
        # Deleted between the two reads: not a member any more.
        per_group = {
            gid: [everyone[uid] for uid in sorted(member_ids[gid]) if uid in everyone] for gid in ordered
        }
        return _members(ordered, per_group)

    async def read_member_ids(self, group_ids: Sequence[str]) -> dict[str, frozenset[str]]:
        """Transitive user member ids per group: id-only pages, 20 pages per `$batch`, every page followed."""
        for gid in group_ids:
            if not is_object_id(gid):
                raise GroupNotFound(gid)
        pending = {gid: _USER_MEMBER_IDS.format(gid) for gid in group_ids}
        found: dict[str, set[str]] = {gid: set() for gid in pending}
        while pending:  # each round asks for the next page of every group not finished yet
            items = await self.transport.batch_get(pending, PERMISSION, eventual=True)
            pending = {}
            for gid, item in items.items():
                page = ID_PAGE.decode(group_item_body(gid, item.status, item.body, PERMISSION))
                found[gid].update(entry.id for entry in page.value)
                if page.next_link:
                    pending[gid] = self.transport.relative(page.next_link)
        return {gid: frozenset(ids) for gid, ids in found.items()}

    async def groups_of_users(self, user_ids: Sequence[str]) -> dict[str, frozenset[str]]:
        """Every group each user is in (transitively), 20 users per $batch; a deleted user is in none."""
        items = await self.transport.batch_get(
            {uid: _GROUPS_OF_USER.format(uid) for uid in user_ids}, PERMISSION, eventual=True
        )
        found: dict[str, frozenset[str]] = {}
        for uid, item in items.items():
            if item.status == 404:
                found[uid] = frozenset()
                continue
            if item.status != 200:
                raise error_from_body(item.status, item.body, PERMISSION)
            page = ID_PAGE.decode(item.body)
            ids = {entry.id for entry in page.value}
            if page.next_link:  # in more than 999 groups: follow the rest outside the batch
                request = self.transport.request_for(page.next_link, eventual=True)
                async for more in self.transport.pages(request, ID_PAGE, PERMISSION, eventual=True):
                    ids.update(entry.id for entry in more.value)
            found[uid] = frozenset(ids)
        return found

    async def user_group_ids(self, user_id: str) -> list[str]:
        """Ids of every group the user belongs to, directly or through nested groups."""
        builder = self.transport.client.users.by_user_id(user_id).transitive_member_of
        qp = TransitiveMemberOfRequestBuilder.TransitiveMemberOfRequestBuilderGetQueryParameters(
            select=["id"], top=MAX_PAGE_SIZE
        )
        request = builder.to_get_request_information(RequestConfiguration(query_parameters=qp))
        ids: list[str] = []
        async for page in self.transport.pages(request, ID_PAGE, PERMISSION):
            ids.extend(item.id for item in page.value if item.odata_type in (None, "#microsoft.graph.group"))
        return ids
