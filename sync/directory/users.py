"""Reads of users: every user, users by id, one user, the tenant's user count, mailbox purposes."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from kiota_abstractions.base_request_configuration import RequestConfiguration
from msgraph.generated.users.item.user_item_request_builder import UserItemRequestBuilder
from msgraph.generated.users.users_request_builder import UsersRequestBuilder

from sync.directory.errors import GraphRequestRejected, GraphUnavailable, error_from_body
from sync.directory.transport import MAX_PAGE_SIZE, GraphTransport
from sync.directory.wire import PURPOSE, USER, USER_FIELDS, USER_PAGE
from sync.models import DirectoryUser

PERMISSION = "User.Read.All"
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
        async for page in self.transport.pages(request, USER_PAGE, PERMISSION):
            users.extend(wire.to_directory_user() for wire in page.value)
        return users

    async def count_tenant_users(self) -> int:
        """How many users the tenant has (`/users/$count`, one request)."""
        cfg: RequestConfiguration[Any] = RequestConfiguration()
        cfg.headers.add("ConsistencyLevel", "eventual")  # $count needs it
        request = self.transport.client.users.count.to_get_request_information(cfg)
        raw = await self.transport.send(request, PERMISSION)
        try:
            return int(raw.decode().strip())
        except ValueError:
            raise GraphUnavailable(f"Graph answered /users/$count with {raw[:40]!r}") from None

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
        """Users by object id, 20 per $batch; a deleted user maps to None."""
        select = ",".join(USER_FIELDS)
        items = await self.transport.batch_get(
            {uid: f"/users/{uid}?$select={select}" for uid in user_ids}, PERMISSION
        )
        found: dict[str, DirectoryUser | None] = {}
        for uid, item in items.items():
            if item.status == 200:
                found[uid] = USER.decode(item.body).to_directory_user()
            elif item.status == 404:
                found[uid] = None
            else:
                raise error_from_body(item.status, item.body, PERMISSION)
        return found

    async def read_mailbox_purposes(self, user_ids: Sequence[str]) -> dict[str, str | None] | None:
        """`mailboxSettings.userPurpose` per user, 20 users per $batch.

        A user without a mailbox maps to None. Returns None altogether when the tenant has
        not granted MailboxSettings.Read (Graph answers 403), so the caller can fall back.
        """
        url = "/users/{}/mailboxSettings?$select=userPurpose"
        items = await self.transport.batch_get({uid: url.format(uid) for uid in user_ids}, MAILBOX_PERMISSION)
        purposes: dict[str, str | None] = {}
        for uid, item in items.items():
            if item.status == 200:
                purposes[uid] = PURPOSE.decode(item.body).user_purpose
            elif item.status == 404:
                purposes[uid] = None  # no Exchange Online mailbox
            elif item.status in (401, 403):
                return None
            else:
                raise error_from_body(item.status, item.body, MAILBOX_PERMISSION)
        return purposes
