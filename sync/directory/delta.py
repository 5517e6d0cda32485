"""Incremental reads: delta links for users and groups, and the ids changed since one."""

from __future__ import annotations

from sync.directory.errors import GraphUnavailable
from sync.directory.transport import GraphTransport
from sync.directory.wire import DELTA_PAGE, USER_FIELDS, DeltaPage


class DeltaReads:
    """Graph delta queries of one tenant."""

    transport: GraphTransport

    async def latest_delta_links(self) -> tuple[str, str]:
        """Delta links for users and groups starting now (`$deltatoken=latest`: no objects read)."""
        base = self.transport.base_url
        users = await self._delta_page(
            f"{base}/users/delta?$deltatoken=latest&$select={','.join(USER_FIELDS)}", "User.Read.All"
        )
        groups = await self._delta_page(
            f"{base}/groups/delta?$deltatoken=latest&$select=id,members", "GroupMember.Read.All"
        )
        if not users.delta_link or not groups.delta_link:
            raise GraphUnavailable("Graph answered a delta request without a deltaLink")
        return users.delta_link, groups.delta_link

    async def _delta_page(self, url: str, permission: str) -> DeltaPage:
        # An expired token answers 400 syncStateNotFound or 410 resyncRequired: DeltaExpired.
        return DELTA_PAGE.decode(await self.transport.send(self.transport.request_for(url), permission))

    async def read_changes(self, delta_link: str, permission: str) -> tuple[set[str], str]:
        """Ids of the objects changed (or removed) since `delta_link`, and the next delta link.

        Raises DeltaExpired when Graph no longer knows the token (a full refresh is due).
        """
        changed: set[str] = set()
        url = delta_link
        while True:
            page = await self._delta_page(url, permission)
            changed.update(item.id for item in page.value)
            if page.next_link:
                url = page.next_link
                continue
            if not page.delta_link:
                raise GraphUnavailable("a delta round ended without a deltaLink")
            return changed, page.delta_link
