"""Reads a tenant's directory from Microsoft Graph through msgraph-sdk.

The SDK builds the requests, signs them and retries throttled ones; response bodies of the
hot paths are taken as bytes and decoded with msgspec, because building Kiota models costs
about 3.6 s of CPU per page of 999 users. Every page is followed; any page that cannot be
read raises, so callers never act on a partial membership.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import enum
import math
import re
from collections.abc import Callable, Iterable, Sequence
from typing import Any
from urllib.parse import urlsplit

import httpx
import msgspec
from kiota_abstractions.base_request_configuration import RequestConfiguration
from kiota_abstractions.method import Method
from kiota_abstractions.request_information import RequestInformation
from msgraph.generated.groups.groups_request_builder import GroupsRequestBuilder
from msgraph.generated.groups.item.members.members_request_builder import MembersRequestBuilder
from msgraph.generated.groups.item.transitive_members.graph_user.graph_user_request_builder import (
    GraphUserRequestBuilder,
)
from msgraph.generated.models.o_data_errors.o_data_error import ODataError
from msgraph.generated.users.item.transitive_member_of.transitive_member_of_request_builder import (
    TransitiveMemberOfRequestBuilder,
)
from msgraph.generated.users.item.user_item_request_builder import UserItemRequestBuilder
from msgraph.generated.users.users_request_builder import UsersRequestBuilder
from msgraph.graph_service_client import GraphServiceClient

from sync.models import DirectoryUser, Group, GroupKind, GroupMembers, GroupPage

MAX_PAGE_SIZE = 999  # Graph's $top ceiling for users, groups and member lists
MAX_BATCH_SIZE = 20  # Graph's $batch ceiling
MAX_SEARCH_LENGTH = 120
GROUP_FIELDS = ["id", "displayName", "description", "mail", "mailEnabled", "securityEnabled", "groupTypes"]
USER_FIELDS = [
    "id",
    "userPrincipalName",
    "displayName",
    "givenName",
    "surname",
    "mail",
    "department",
    "jobTitle",
    "userType",
    "accountEnabled",
    "assignedLicenses",
]
_ERROR_MAP: dict[str, Any] = {"XXX": ODataError}
_GUID = re.compile(r"^[0-9a-fA-F]{8}-(?:[0-9a-fA-F]{4}-){3}[0-9a-fA-F]{12}$")


# --- errors a caller can act on --------------------------------------------------------------


class DirectoryError(Exception):
    """Graph could not answer a read completely."""

    status: int | None = None


class GroupNotFound(DirectoryError):
    """A group id does not exist in the tenant (deleted, or never there)."""

    status = 404

    def __init__(self, group_id: str) -> None:
        super().__init__(f"group {group_id} was not found in the tenant (deleted or never there)")
        self.group_id = group_id


class GraphAccessDenied(DirectoryError):
    """Graph refused the app: consent missing or revoked, or a permission not granted."""

    def __init__(self, status: int, permission: str, graph_message: str) -> None:
        super().__init__(
            f"Microsoft Graph refused access ({status}): the app needs the application "
            f"permission {permission} with admin consent in this tenant. {graph_message}".strip()
        )
        self.status = status
        self.permission = permission


class GraphUnavailable(DirectoryError):
    """Graph stayed throttled, failing or unreachable after the retries."""

    def __init__(self, detail: str, status: int | None = None) -> None:
        super().__init__(f"Microsoft Graph is unavailable: {detail}")
        self.status = status


class GraphRequestRejected(DirectoryError):
    """Graph rejected a request as malformed (a 400 other than throttling)."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(f"Microsoft Graph rejected the request ({status}): {detail}")
        self.status = status


class DeltaExpired(DirectoryError):
    """Graph no longer knows a delta token (410): a full refresh is needed."""

    status = 410


class InvalidCursor(ValueError):
    """A paging cursor that this module did not issue."""


# --- wire shapes (decoded with msgspec, not Kiota) --------------------------------------------


class _WireUser(msgspec.Struct, rename="camel"):
    id: str
    user_principal_name: str = ""
    display_name: str | None = None
    given_name: str | None = None
    surname: str | None = None
    mail: str | None = None
    department: str | None = None
    job_title: str | None = None
    user_type: str | None = None
    account_enabled: bool | None = None
    assigned_licenses: list[msgspec.Raw] = []

    def to_directory_user(self) -> DirectoryUser:
        return DirectoryUser(
            id=self.id,
            user_principal_name=self.user_principal_name,
            display_name=self.display_name,
            given_name=self.given_name,
            surname=self.surname,
            mail=self.mail,
            department=self.department,
            job_title=self.job_title,
            user_type=self.user_type,
            account_enabled=self.account_enabled,
            license_count=len(self.assigned_licenses),
        )


class _UserPage(msgspec.Struct):
    value: list[_WireUser]
    next_link: str | None = msgspec.field(name="@odata.nextLink", default=None)


class _WireGroup(msgspec.Struct, rename="camel"):
    id: str
    display_name: str | None = None
    description: str | None = None
    mail: str | None = None
    mail_enabled: bool | None = None
    security_enabled: bool | None = None
    group_types: list[str] = []

    def to_group(self, member_count: int | None = None) -> Group:
        return Group(
            id=self.id,
            display_name=self.display_name or "",
            kind=group_kind(self.group_types, self.mail_enabled, self.security_enabled),
            description=self.description,
            mail=self.mail,
            member_count=member_count,
        )


class _GroupPage(msgspec.Struct):
    value: list[_WireGroup]
    next_link: str | None = msgspec.field(name="@odata.nextLink", default=None)


class _CountOnly(msgspec.Struct):
    count: int | None = msgspec.field(name="@odata.count", default=None)


class _MailboxPurpose(msgspec.Struct, rename="camel"):
    user_purpose: str | None = None


class _IdOnly(msgspec.Struct):
    id: str
    odata_type: str | None = msgspec.field(name="@odata.type", default=None)


class _IdPage(msgspec.Struct):
    value: list[_IdOnly]
    next_link: str | None = msgspec.field(name="@odata.nextLink", default=None)


class _DeltaPage(msgspec.Struct):
    value: list[_IdOnly]
    next_link: str | None = msgspec.field(name="@odata.nextLink", default=None)
    delta_link: str | None = msgspec.field(name="@odata.deltaLink", default=None)


class PermissionCheck(msgspec.Struct, frozen=True, kw_only=True):
    """Whether one Graph permission works in the tenant."""

    permission: str
    reads: str  # groups | members | users | mailboxSettings
    ok: bool
    required: bool
    detail: str | None = None


class _WireError(msgspec.Struct):
    code: str = ""
    message: str = ""


class _ErrorBody(msgspec.Struct):
    error: _WireError = msgspec.field(default_factory=_WireError)


class _BatchItem(msgspec.Struct):
    id: str
    status: int
    headers: dict[str, str] = {}
    body: msgspec.Raw = msgspec.Raw(b"null")


class _BatchResponse(msgspec.Struct):
    responses: list[_BatchItem]


_USER_PAGE = msgspec.json.Decoder(_UserPage)
_GROUP_PAGE = msgspec.json.Decoder(_GroupPage)
_GROUP = msgspec.json.Decoder(_WireGroup)
_COUNT_ONLY = msgspec.json.Decoder(_CountOnly)
_ERROR_BODY = msgspec.json.Decoder(_ErrorBody)
_ID_PAGE = msgspec.json.Decoder(_IdPage)
_DELTA_PAGE = msgspec.json.Decoder(_DeltaPage)
_USER = msgspec.json.Decoder(_WireUser)
_PURPOSE = msgspec.json.Decoder(_MailboxPurpose)
_BATCH_RESPONSE = msgspec.json.Decoder(_BatchResponse)
_JSON = msgspec.json.Encoder()


class MemberStrategy(enum.StrEnum):
    """How a run reads the members of the selected groups."""

    PER_GROUP = "perGroup"  # each group's user members with their attributes, groups side by side
    ALL_USERS = "allUsers"  # every user once, plus the groups' member ids in $batch requests


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


def group_kind(
    group_types: Sequence[str], mail_enabled: bool | None, security_enabled: bool | None
) -> GroupKind:
    """Classify a group the way the Microsoft 365 admin center does."""
    if "Unified" in group_types:
        return GroupKind.MICROSOFT365
    if security_enabled and mail_enabled:
        return GroupKind.MAIL_ENABLED_SECURITY
    if security_enabled:
        return GroupKind.SECURITY
    return GroupKind.DISTRIBUTION


def is_object_id(value: str) -> bool:
    """Whether `value` has the shape of an Entra object id (a GUID)."""
    return bool(_GUID.fullmatch(value))


def _search_clause(text: str) -> str:
    cleaned = " ".join(text.split())
    if len(cleaned) > MAX_SEARCH_LENGTH:
        raise ValueError(f"search text is longer than {MAX_SEARCH_LENGTH} characters")
    # $search takes a quoted "property:value"; quotes and backslashes inside must be escaped.
    escaped = cleaned.replace("\\", "\\\\").replace('"', '\\"')
    return f'"displayName:{escaped}"'


# --- the reader -------------------------------------------------------------------------------


class _BatchRequest(msgspec.Struct):
    id: str
    method: str
    url: str
    headers: dict[str, str] = {}


class DirectoryReader:
    """Graph reads for one tenant: groups, their transitive user members, and all users."""

    def __init__(
        self,
        client: GraphServiceClient,
        *,
        concurrency: int = 16,
        batch_retry_limit: int = 5,
    ) -> None:
        self._client = client
        self._adapter = client.request_adapter
        self._limit = asyncio.Semaphore(concurrency)
        self._batch_retry_limit = batch_retry_limit
        self.requests_sent = 0  # HTTP requests issued (SDK middleware retries not included)

    # -- plumbing --

    async def _send(self, request: RequestInformation, permission: str) -> bytes:
        """Send one request through the SDK and return the raw body, mapping failures to typed errors."""
        self.requests_sent += 1
        try:
            body: bytes | None = await self._adapter.send_primitive_async(request, "bytes", _ERROR_MAP)
        except ODataError as exc:
            raise _error_from_odata(exc, permission) from exc
        except httpx.TimeoutException as exc:
            raise GraphUnavailable(f"request timed out ({type(exc).__name__})") from exc
        except httpx.TransportError as exc:
            raise GraphUnavailable(f"connection failed ({type(exc).__name__})") from exc
        return body or b""

    async def _batch(self, requests: Sequence[_BatchRequest], permission: str) -> dict[str, _BatchItem]:
        """Run up to 20 GETs in one $batch; items throttled inside the 200 are retried here."""
        pending = {r.id: r for r in requests}
        results: dict[str, _BatchItem] = {}
        for attempt in range(self._batch_retry_limit + 1):
            info = RequestInformation(Method.POST, "{+baseurl}/$batch", {})
            info.headers.try_add("Accept", "application/json")
            info.set_stream_content(_JSON.encode({"requests": list(pending.values())}), "application/json")
            raw = await self._send(info, permission)
            wait = 0.0
            for item in _BATCH_RESPONSE.decode(raw).responses:
                if item.status in (429, 503, 504) and attempt < self._batch_retry_limit:
                    wait = max(wait, _retry_after(item.headers, attempt))
                    continue
                results[item.id] = item
                pending.pop(item.id, None)
            if not pending:
                return results
            await asyncio.sleep(wait)
        missing = ", ".join(sorted(pending))
        raise GraphUnavailable(f"batch items {missing} stayed throttled", 429)

    async def _paged_users(
        self, request: RequestInformation, builder: Any, cfg: Any, permission: str
    ) -> list[DirectoryUser]:
        """Follow @odata.nextLink to the end, decoding each page of users with msgspec."""
        users: list[DirectoryUser] = []
        while True:
            page = _USER_PAGE.decode(await self._send(request, permission))
            users.extend(wire.to_directory_user() for wire in page.value)
            if not page.next_link:
                return users
            # with_url keeps the SDK's headers (ConsistencyLevel) on later pages; PageIterator drops them.
            request = builder.with_url(page.next_link).to_get_request_information(cfg)

    # -- groups --

    async def list_groups(
        self, *, search: str | None = None, cursor: str | None = None, page_size: int = 100
    ) -> GroupPage:
        """One page of the tenant's groups by display name, with transitive user counts."""
        if not 1 <= page_size <= MAX_PAGE_SIZE:
            raise ValueError(f"page size must be between 1 and {MAX_PAGE_SIZE}")
        builder = self._client.groups
        qp = GroupsRequestBuilder.GroupsRequestBuilderGetQueryParameters(
            select=GROUP_FIELDS, top=page_size, count=True, orderby=["displayName"]
        )
        if search and search.strip():
            qp.search = _search_clause(search)
            qp.orderby = None  # Graph refuses $orderby together with $search on groups
        cfg = RequestConfiguration(query_parameters=qp)
        cfg.headers.add("ConsistencyLevel", "eventual")
        if cursor:
            request = builder.with_url(self._cursor_to_url(cursor)).to_get_request_information(cfg)
        else:
            request = builder.to_get_request_information(cfg)
        page = _GROUP_PAGE.decode(await self._send(request, "GroupMember.Read.All"))
        counts = await self.count_group_users([g.id for g in page.value])
        return GroupPage(
            value=[g.to_group(counts.get(g.id)) for g in page.value],
            next_cursor=self._url_to_cursor(page.next_link) if page.next_link else None,
        )

    def _url_to_cursor(self, next_link: str) -> str:
        parts = urlsplit(next_link)
        return base64.urlsafe_b64encode(f"{parts.path}?{parts.query}".encode()).decode().rstrip("=")

    def _cursor_to_url(self, cursor: str) -> str:
        try:
            decoded = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        except (binascii.Error, UnicodeDecodeError, ValueError):
            raise InvalidCursor("the cursor is not one this API issued") from None
        base = urlsplit(self._adapter.base_url)
        if not decoded.startswith(f"{base.path}/groups?"):
            raise InvalidCursor("the cursor is not one this API issued")
        return f"{base.scheme}://{base.netloc}{decoded}"

    async def count_group_users(self, group_ids: Sequence[str]) -> dict[str, int]:
        """Transitive user member counts, 20 groups per $batch request."""
        counts: dict[str, int] = {}

        async def one_batch(chunk: Sequence[str]) -> None:
            requests = [
                _BatchRequest(
                    id=str(i),
                    method="GET",
                    url=f"/groups/{gid}/transitiveMembers/microsoft.graph.user?$count=true&$top=1&$select=id",
                    headers={"ConsistencyLevel": "eventual"},
                )
                for i, gid in enumerate(chunk)
            ]
            async with self._limit:
                items = await self._batch(requests, "GroupMember.Read.All")
            for i, gid in enumerate(chunk):
                item = items[str(i)]
                if item.status == 200:
                    count = _COUNT_ONLY.decode(item.body).count
                    if count is not None:
                        counts[gid] = count
                # A group deleted between listing and counting simply shows no count.

        await asyncio.gather(*(one_batch(chunk) for chunk in _chunks(group_ids, MAX_BATCH_SIZE)))
        return counts

    async def get_groups(self, group_ids: Iterable[str]) -> dict[str, Group | None]:
        """Look groups up by id, 20 per $batch; a missing group maps to None."""
        ids = list(dict.fromkeys(group_ids))
        found: dict[str, Group | None] = {}
        select = ",".join(GROUP_FIELDS)

        async def one_batch(chunk: Sequence[str]) -> None:
            requests = [
                _BatchRequest(id=str(i), method="GET", url=f"/groups/{gid}?$select={select}")
                for i, gid in enumerate(chunk)
            ]
            async with self._limit:
                items = await self._batch(requests, "GroupMember.Read.All")
            for i, gid in enumerate(chunk):
                item = items[str(i)]
                if item.status == 200:
                    found[gid] = _GROUP.decode(item.body).to_group()
                elif item.status in (400, 404):
                    found[gid] = None
                else:
                    raise _error_from_batch_item(item, "GroupMember.Read.All")

        malformed = [gid for gid in ids if not is_object_id(gid)]
        for gid in malformed:
            found[gid] = None
        well_formed = [gid for gid in ids if is_object_id(gid)]
        await asyncio.gather(*(one_batch(c) for c in _chunks(well_formed, MAX_BATCH_SIZE)))
        return {gid: found[gid] for gid in ids}

    # -- members and users --

    async def read_group_users(self, group_ids: Sequence[str]) -> GroupMembers:
        """Every user in the given groups, nested groups included, each user once.

        Raises GroupNotFound, GraphAccessDenied or GraphUnavailable if any group cannot be
        read to its last page: a partial membership must never reach the planner.
        """
        ordered = list(dict.fromkeys(group_ids))
        per_group: dict[str, list[DirectoryUser]] = {}

        async def read_one(gid: str) -> None:
            async with self._limit:
                per_group[gid] = await self._read_transitive_users(gid)

        await asyncio.gather(*(read_one(gid) for gid in ordered))
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

    async def count_tenant_users(self) -> int:
        """How many users the tenant has (`/users/$count`, one request)."""
        cfg: RequestConfiguration[Any] = RequestConfiguration()
        cfg.headers.add("ConsistencyLevel", "eventual")  # $count needs it
        raw = await self._send(self._client.users.count.to_get_request_information(cfg), "User.Read.All")
        try:
            return int(raw.decode().strip())
        except ValueError:
            raise GraphUnavailable(f"Graph answered /users/$count with {raw[:40]!r}") from None

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
        users: dict[str, DirectoryUser] = {}
        memberships: dict[str, list[str]] = {}
        for gid in ordered:
            for uid in sorted(member_ids[gid]):
                user = everyone.get(uid)
                if user is None:
                    continue  # deleted between the two reads: not a member any more
                users.setdefault(uid, user)
                memberships.setdefault(uid, []).append(gid)
        return GroupMembers(
            users=users,
            groups_of_user={uid: tuple(gids) for uid, gids in memberships.items()},
            members_per_group={gid: sum(1 for uid in member_ids[gid] if uid in users) for gid in ordered},
        )

    async def read_member_ids(self, group_ids: Sequence[str]) -> dict[str, frozenset[str]]:
        """Transitive user member ids per group: id-only pages, 20 pages per `$batch`, every page followed."""
        for gid in group_ids:
            if not is_object_id(gid):
                raise GroupNotFound(gid)
        first = "/groups/{}/transitiveMembers/microsoft.graph.user?$select=id&$top=999&$count=true"
        pending = {gid: first.format(gid) for gid in group_ids}
        found: dict[str, set[str]] = {gid: set() for gid in pending}

        async def one_batch(chunk: Sequence[tuple[str, str]], next_round: dict[str, str]) -> None:
            requests = [
                _BatchRequest(id=str(i), method="GET", url=url, headers={"ConsistencyLevel": "eventual"})
                for i, (_gid, url) in enumerate(chunk)
            ]
            async with self._limit:
                items = await self._batch(requests, "GroupMember.Read.All")
            for i, (gid, _url) in enumerate(chunk):
                item = items[str(i)]
                if item.status == 404:
                    raise GroupNotFound(gid)
                if item.status != 200:
                    raise _error_from_batch_item(item, "GroupMember.Read.All")
                page = _ID_PAGE.decode(item.body)
                found[gid].update(entry.id for entry in page.value)
                if page.next_link:
                    next_round[gid] = self._relative(page.next_link)

        while pending:  # each round asks for the next page of every group not finished yet
            round_items, pending = list(pending.items()), {}
            chunks = [round_items[i : i + MAX_BATCH_SIZE] for i in range(0, len(round_items), MAX_BATCH_SIZE)]
            await asyncio.gather(*(one_batch(chunk, pending) for chunk in chunks))
        return {gid: frozenset(ids) for gid, ids in found.items()}

    def _relative(self, link: str) -> str:
        """A nextLink as the relative URL a `$batch` item needs."""
        base = self._adapter.base_url
        if link.startswith(base):
            return link[len(base) :]
        parts = urlsplit(link)
        path = parts.path.split("/", 2)[2] if parts.path.count("/") >= 2 else parts.path
        return f"/{path.lstrip('/')}?{parts.query}"

    async def _read_transitive_users(self, group_id: str) -> list[DirectoryUser]:
        if not is_object_id(group_id):
            raise GroupNotFound(group_id)
        builder = self._client.groups.by_group_id(group_id).transitive_members.graph_user
        qp = GraphUserRequestBuilder.GraphUserRequestBuilderGetQueryParameters(
            select=USER_FIELDS, top=MAX_PAGE_SIZE, count=True
        )
        cfg = RequestConfiguration(query_parameters=qp)
        cfg.headers.add("ConsistencyLevel", "eventual")  # the /graph.user cast needs it
        try:
            return await self._paged_users(
                builder.to_get_request_information(cfg),
                builder,
                cfg,
                "GroupMember.Read.All and User.Read.All",
            )
        except GraphRequestRejected as exc:
            if exc.status == 404:
                raise GroupNotFound(group_id) from exc
            raise

    async def read_mailbox_purposes(self, user_ids: Sequence[str]) -> dict[str, str | None] | None:
        """`mailboxSettings.userPurpose` per user, 20 users per $batch.

        A user without a mailbox maps to None. Returns None altogether when the tenant has
        not granted MailboxSettings.Read (Graph answers 403), so the caller can fall back.
        """
        purposes: dict[str, str | None] = {}
        denied = False

        async def one_batch(chunk: Sequence[str]) -> None:
            nonlocal denied
            requests = [
                _BatchRequest(
                    id=str(i), method="GET", url=f"/users/{uid}/mailboxSettings?$select=userPurpose"
                )
                for i, uid in enumerate(chunk)
            ]
            async with self._limit:
                if denied:
                    return
                items = await self._batch(requests, "MailboxSettings.Read")
            for i, uid in enumerate(chunk):
                item = items[str(i)]
                if item.status == 200:
                    purposes[uid] = _PURPOSE.decode(item.body).user_purpose
                elif item.status == 404:
                    purposes[uid] = None  # no Exchange Online mailbox
                elif item.status in (401, 403):
                    denied = True
                    return
                else:
                    raise _error_from_batch_item(item, "MailboxSettings.Read")

        await asyncio.gather(*(one_batch(c) for c in _chunks(list(user_ids), MAX_BATCH_SIZE)))
        return None if denied else purposes

    async def get_user(self, id_or_upn: str) -> DirectoryUser | None:
        """One user by object id or user principal name; None when there is no such user."""
        builder = self._client.users.by_user_id(id_or_upn)
        qp = UserItemRequestBuilder.UserItemRequestBuilderGetQueryParameters(select=USER_FIELDS)
        request = builder.to_get_request_information(RequestConfiguration(query_parameters=qp))
        try:
            raw = await self._send(request, "User.Read.All")
        except GraphRequestRejected as exc:
            if exc.status in (400, 404):
                return None
            raise
        return _USER.decode(raw).to_directory_user()

    async def user_group_ids(self, user_id: str) -> list[str]:
        """Ids of every group the user belongs to, directly or through nested groups."""
        builder = self._client.users.by_user_id(user_id).transitive_member_of
        qp = TransitiveMemberOfRequestBuilder.TransitiveMemberOfRequestBuilderGetQueryParameters(
            select=["id"], top=MAX_PAGE_SIZE
        )
        cfg = RequestConfiguration(query_parameters=qp)
        request = builder.to_get_request_information(cfg)
        ids: list[str] = []
        while True:
            page = _ID_PAGE.decode(await self._send(request, "GroupMember.Read.All"))
            ids.extend(item.id for item in page.value if item.odata_type in (None, "#microsoft.graph.group"))
            if not page.next_link:
                return ids
            request = builder.with_url(page.next_link).to_get_request_information(cfg)

    async def check_permissions(self) -> list[PermissionCheck]:
        """Try one small read per permission the sync uses and report which work."""
        checks: list[PermissionCheck] = []

        async def attempt(name: str, what: str, required: bool, read: Any) -> Any:
            try:
                result = await read()
            except DirectoryError as exc:
                checks.append(
                    PermissionCheck(permission=name, reads=what, ok=False, required=required, detail=str(exc))
                )
                return None
            checks.append(PermissionCheck(permission=name, reads=what, ok=True, required=required))
            return result

        def first_id(raw: bytes) -> str | None:
            page = _ID_PAGE.decode(raw)
            return page.value[0].id if page.value else None

        async def read_first(builder: Any, qp: Any, permission: str) -> str | None:
            cfg = RequestConfiguration(query_parameters=qp)
            return first_id(await self._send(builder.to_get_request_information(cfg), permission))

        group_id = await attempt(
            "GroupMember.Read.All",
            "groups",
            True,
            lambda: read_first(
                self._client.groups,
                GroupsRequestBuilder.GroupsRequestBuilderGetQueryParameters(select=["id"], top=1),
                "GroupMember.Read.All",
            ),
        )
        if group_id:
            await attempt(
                "GroupMember.Read.All",
                "members",
                True,
                lambda: read_first(
                    self._client.groups.by_group_id(group_id).members,
                    MembersRequestBuilder.MembersRequestBuilderGetQueryParameters(select=["id"], top=1),
                    "GroupMember.Read.All",
                ),
            )
        user_id = await attempt(
            "User.Read.All",
            "users",
            True,
            lambda: read_first(
                self._client.users,
                UsersRequestBuilder.UsersRequestBuilderGetQueryParameters(select=["id"], top=1),
                "User.Read.All",
            ),
        )

        async def read_purpose() -> None:
            if user_id and await self.read_mailbox_purposes([user_id]) is None:
                raise GraphAccessDenied(403, "MailboxSettings.Read", "")

        await attempt("MailboxSettings.Read", "mailboxSettings", False, read_purpose)
        return checks

    # -- incremental refresh (delta) --

    async def latest_delta_links(self) -> tuple[str, str]:
        """Delta links for users and groups starting now (`$deltatoken=latest`: no objects read)."""
        users = await self._delta_page(
            f"{self._adapter.base_url}/users/delta?$deltatoken=latest&$select={','.join(USER_FIELDS)}",
            "User.Read.All",
        )
        groups = await self._delta_page(
            f"{self._adapter.base_url}/groups/delta?$deltatoken=latest&$select=id,members",
            "GroupMember.Read.All",
        )
        if not users.delta_link or not groups.delta_link:
            raise GraphUnavailable("Graph answered a delta request without a deltaLink")
        return users.delta_link, groups.delta_link

    async def _delta_page(self, url: str, permission: str) -> _DeltaPage:
        request = self._client.users.with_url(url).to_get_request_information()
        try:
            return _DELTA_PAGE.decode(await self._send(request, permission))
        except GraphRequestRejected as exc:
            if exc.status == 410:
                raise DeltaExpired(str(exc)) from exc
            raise

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

    async def _id_sets(
        self, object_ids: Sequence[str], url_for: Callable[[str], str]
    ) -> dict[str, frozenset[str] | None]:
        """For each object, the ids of a directory-object list (`url_for(id)`), 20 objects per $batch.

        An object Graph does not know maps to None; a list over 999 entries is followed to its end.
        """
        found: dict[str, frozenset[str] | None] = {}

        async def one_batch(chunk: Sequence[str]) -> None:
            requests = [
                _BatchRequest(
                    id=str(i), method="GET", url=url_for(oid), headers={"ConsistencyLevel": "eventual"}
                )
                for i, oid in enumerate(chunk)
            ]
            async with self._limit:
                items = await self._batch(requests, "GroupMember.Read.All")
            for i, oid in enumerate(chunk):
                item = items[str(i)]
                if item.status == 404:
                    found[oid] = None
                    continue
                if item.status != 200:
                    raise _error_from_batch_item(item, "GroupMember.Read.All")
                page = _ID_PAGE.decode(item.body)
                ids = {entry.id for entry in page.value}
                if page.next_link:  # more than 999: follow the rest outside the batch
                    ids |= set(await self._follow_ids(page.next_link))
                found[oid] = frozenset(ids)

        await asyncio.gather(*(one_batch(c) for c in _chunks(list(object_ids), MAX_BATCH_SIZE)))
        return found

    async def group_closure(self, group_ids: Sequence[str]) -> dict[str, frozenset[str]]:
        """For each group, itself and every group nested in it (transitively), 20 groups per $batch."""
        nested = await self._id_sets(
            group_ids,
            lambda gid: (
                f"/groups/{gid}/transitiveMembers/microsoft.graph.group?$select=id&$top=999&$count=true"
            ),
        )
        closure: dict[str, frozenset[str]] = {}
        for gid, ids in nested.items():
            if ids is None:
                raise GroupNotFound(gid)
            closure[gid] = ids | {gid}
        return closure

    async def _follow_ids(self, next_link: str) -> list[str]:
        ids: list[str] = []
        url: str | None = next_link
        while url:
            request = self._client.groups.with_url(url).to_get_request_information()
            request.headers.try_add("ConsistencyLevel", "eventual")
            page = _ID_PAGE.decode(await self._send(request, "GroupMember.Read.All"))
            ids.extend(entry.id for entry in page.value)
            url = page.next_link
        return ids

    async def get_users(self, user_ids: Sequence[str]) -> dict[str, DirectoryUser | None]:
        """Users by object id, 20 per $batch; a deleted user maps to None."""
        found: dict[str, DirectoryUser | None] = {}
        select = ",".join(USER_FIELDS)

        async def one_batch(chunk: Sequence[str]) -> None:
            requests = [
                _BatchRequest(id=str(i), method="GET", url=f"/users/{uid}?$select={select}")
                for i, uid in enumerate(chunk)
            ]
            async with self._limit:
                items = await self._batch(requests, "User.Read.All")
            for i, uid in enumerate(chunk):
                item = items[str(i)]
                if item.status == 200:
                    found[uid] = _USER.decode(item.body).to_directory_user()
                elif item.status == 404:
                    found[uid] = None
                else:
                    raise _error_from_batch_item(item, "User.Read.All")

        await asyncio.gather(*(one_batch(c) for c in _chunks(list(user_ids), MAX_BATCH_SIZE)))
        return found

    async def groups_of_users(self, user_ids: Sequence[str]) -> dict[str, frozenset[str]]:
        """Every group each user is in (transitively), 20 users per $batch; a deleted user is in none."""
        found = await self._id_sets(
            user_ids,
            lambda uid: (
                f"/users/{uid}/transitiveMemberOf/microsoft.graph.group?$select=id&$top=999&$count=true"
            ),
        )
        return {uid: ids or frozenset() for uid, ids in found.items()}

    async def list_all_users(self) -> list[DirectoryUser]:
        """Every user of the tenant (mode `all`), following every page."""
        builder = self._client.users
        qp = UsersRequestBuilder.UsersRequestBuilderGetQueryParameters(select=USER_FIELDS, top=MAX_PAGE_SIZE)
        cfg = RequestConfiguration(query_parameters=qp)
        return await self._paged_users(builder.to_get_request_information(cfg), builder, cfg, "User.Read.All")


def _chunks(items: Sequence[str], size: int) -> list[Sequence[str]]:
    return [items[i : i + size] for i in range(0, len(items), size)]


def _retry_after(headers: dict[str, str], attempt: int) -> float:
    for key, value in headers.items():
        if key.lower() == "retry-after":
            try:
                return min(float(value), 60.0)
            except ValueError:
                break
    return min(0.5 * 2.0**attempt, 10.0)


def _classify(status: int, code: str, message: str, permission: str) -> DirectoryError:
    if status in (401, 403):
        return GraphAccessDenied(status, permission, message)
    if status in (429, 500, 502, 503, 504) or status >= 500:
        return GraphUnavailable(f"{status} {code}: {message}".strip(), status)
    return GraphRequestRejected(status, f"{code}: {message}".strip(": "))


def _error_from_odata(exc: ODataError, permission: str) -> DirectoryError:
    status = exc.response_status_code or 0
    code = (exc.error.code if exc.error else None) or ""
    message = (exc.error.message if exc.error else None) or ""
    return _classify(status, code, message, permission)


def _error_from_batch_item(item: _BatchItem, permission: str) -> DirectoryError:
    try:
        err = _ERROR_BODY.decode(item.body).error
    except msgspec.DecodeError:
        err = _WireError()
    return _classify(item.status, err.code, err.message, permission)
