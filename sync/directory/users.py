"""Reads of users: every user, users by id, one user, the tenant's user count, mailbox purposes."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any
from urllib.parse import quote

import msgspec
from kiota_abstractions.base_request_configuration import RequestConfiguration
from msgraph.generated.users.item.user_item_request_builder import UserItemRequestBuilder
from msgraph.generated.users.users_request_builder import UsersRequestBuilder

from sync.directory.errors import GraphRequestRejected, GraphUnavailable, error_from_body
from sync.directory.groups import search_clause
from sync.directory.transport import MAX_PAGE_SIZE, GraphTransport
from sync.directory.wire import PURPOSE, USER, USER_FIELDS, USER_PAGE
from sync.models import DirectoryUser, SharedValues

PERMISSION = "User.Read.All"
USER_SEARCH_PROPERTIES = ("displayName", "mail", "userPrincipalName")


class MailboxPurposes(msgspec.Struct, frozen=True, kw_only=True):
    """What Graph said of the mailboxes asked about."""

    purposes: dict[str, str | None]  # user id -> mailboxSettings.userPurpose
    unknown: frozenset[str] = frozenset()  # mailboxes Graph would not show (403 or 404)


MAILBOX_PERMISSION = "MailboxSettings.Read"


class UserReads:
    """User reads of one tenant."""

    transport: GraphTransport

    async def list_all_users(self) -> list[DirectoryUser]:
        """Every user of the tenant (mode `all`), following every page."""
        qp = UsersRequestBuilder.UsersRequestBuilderGetQueryParameters(select=USER_FIELDS, top=MAX_PAGE_SIZE)
        request = self.transport.client.users.to_get_request_information(
            RequestConfiguration(query_parameters=qp)
        )
        users: list[DirectoryUser] = []
        shared = SharedValues()
        async for page in self.transport.pages(request, USER_PAGE, PERMISSION):
            users.extend(wire.to_directory_user(shared) for wire in page.value)
        return users

    async def count_tenant_users(self) -> int:
        """How many users the tenant has (`/users/$count`, one request)."""
        cfg: RequestConfiguration[Any] = RequestConfiguration()
        cfg.headers.add("ConsistencyLevel", "eventual")  # $count needs it
        request = self.transport.client.users.count.to_get_request_information(cfg)
        raw = await self.transport.send(request, PERMISSION)
        try:
            return int(raw.decode("utf-8-sig").strip())  # text/plain; Graph may lead with a byte-order mark
        except ValueError:
            raise GraphUnavailable(f"Graph answered /users/$count with {raw[:40]!r}") from None

    async def search_users(self, text: str, *, top: int = 10) -> list[DirectoryUser]:
        """Users whose display name, mail or user principal name has words starting with `text`'s words
        (`$search`, which needs ConsistencyLevel: eventual), at most `top`, by display name."""
        qp = UsersRequestBuilder.UsersRequestBuilderGetQueryParameters(
            select=USER_FIELDS, top=top, search=search_clause(text, USER_SEARCH_PROPERTIES)
        )
        cfg = RequestConfiguration(query_parameters=qp)
        cfg.headers.add("ConsistencyLevel", "eventual")
        request = self.transport.client.users.to_get_request_information(cfg)
        page = USER_PAGE.decode(await self.transport.send(request, PERMISSION))
        found = [wire.to_directory_user() for wire in page.value]
        return sorted(found, key=lambda u: ((u.display_name or "").lower(), u.user_principal_name.lower()))

    async def get_user(self, id_or_upn: str) -> DirectoryUser | None:
        """One user by object id or user principal name; None when there is no such user."""
        builder = self.transport.client.users.by_user_id(id_or_upn)
        qp = UserItemRequestBuilder.UserItemRequestBuilderGetQueryParameters(select=USER_FIELDS)
        request = builder.to_get_request_information(RequestConfiguration(query_parameters=qp))
        try:
            raw = await self.transport.send(request, PERMISSION)
        except GraphRequestRejected as exc:
            if exc.status in (400, 404):
                return None
            raise
        return USER.decode(raw).to_directory_user()

    async def get_users(self, user_ids: Sequence[str]) -> dict[str, DirectoryUser | None]:
        """Users by object id (or user principal name), 20 per $batch; a deleted user maps to None."""
        select = ",".join(USER_FIELDS)
        items = await self.transport.batch_get(
            {uid: f"/users/{quote(uid, safe='@')}?$select={select}" for uid in user_ids}, PERMISSION
        )
        found: dict[str, DirectoryUser | None] = {}
        for uid, item in items.items():
            if item.status == 200:
                found[uid] = USER.decode(item.body).to_directory_user()
            elif item.status in (400, 404):  # deleted, or (a UPN) never there
                found[uid] = None
            else:
                raise error_from_body(item.status, item.body, PERMISSION)
        return found

    async def read_mailbox_purposes(self, user_ids: Sequence[str]) -> MailboxPurposes | None:
        """`mailboxSettings.userPurpose` per user, 20 users per $batch.

        A mailbox Graph will not show (403: an Exchange application access policy leaves it out;
        404: no Exchange Online mailbox) makes that user's purpose unknown. Returns None when every
        look-up was refused (403): the tenant has not granted MailboxSettings.Read.
        """
        url = "/users/{}/mailboxSettings?$select=userPurpose"
        items = await self.transport.batch_get({uid: url.format(uid) for uid in user_ids}, MAILBOX_PERMISSION)
        purposes: dict[str, str | None] = {}
        unknown: set[str] = set()
        refused = 0
        for uid, item in items.items():
            if item.status == 200:
                purposes[uid] = PURPOSE.decode(item.body).user_purpose
            elif item.status in (401, 403, 404):
                unknown.add(uid)
                refused += item.status != 404
            else:
                raise error_from_body(item.status, item.body, MAILBOX_PERMISSION)
        if items and refused == len(items):
            return None
        return MailboxPurposes(purposes=purposes, unknown=frozenset(unknown))
