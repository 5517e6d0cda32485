"""The demo tenant's directory content: users, groups, other directory objects and membership.

Every directory object is a frozen msgspec Struct. Changes go through the `Tenant` methods,
which replace the Struct, bump `Tenant.revision` and record the change. That lets the server
cache per-object JSON safely (a replaced Struct is a new object) and answer delta queries.
Field names are snake_case here; the server maps them to Graph's camelCase names on the wire.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Literal

import msgspec

from devtools.demo_tenant.licensing import SKUS, CapabilityStatus

ObjectKind = Literal["user", "group", "device", "orgContact", "servicePrincipal"]
GroupKind = Literal["microsoft365", "security", "mailEnabledSecurity", "distribution"]
UserPurpose = Literal["user", "shared", "room", "equipment"]


class AssignedLicense(msgspec.Struct, frozen=True, kw_only=True):
    """One entry of a user's assignedLicenses."""

    sku_id: str
    disabled_plans: tuple[str, ...] = ()


class AssignedPlan(msgspec.Struct, frozen=True, kw_only=True):
    """One entry of a user's assignedPlans: a service plan of an assigned licence and its state."""

    assigned_date_time: str
    capability_status: CapabilityStatus
    service: str
    service_plan_id: str


def plans_for(
    licenses: Iterable[AssignedLicense], status: CapabilityStatus, assigned: str
) -> tuple[AssignedPlan, ...]:
    """The assignedPlans that follow from assignedLicenses: each SKU's plans but the disabled ones."""
    plans: list[AssignedPlan] = []
    for license_ in licenses:
        sku = SKUS.get(license_.sku_id)
        for plan in sku.plans if sku else ():
            if plan.plan_id not in license_.disabled_plans:
                plans.append(
                    AssignedPlan(
                        assigned_date_time=assigned,
                        capability_status=status,
                        service=plan.service,
                        service_plan_id=plan.plan_id,
                    )
                )
    return tuple(plans)


class User(msgspec.Struct, frozen=True, kw_only=True):
    """A user account, including room/equipment/shared mailboxes and guests.

    `user_purpose` is what Exchange reports in mailboxSettings; None means the account has no
    mailbox at all (unlicensed users, guests), so /mailboxSettings answers 404 for it.
    """

    id: str
    user_principal_name: str
    display_name: str
    given_name: str | None = None
    surname: str | None = None
    mail: str | None = None
    department: str | None = None
    job_title: str | None = None
    office_location: str | None = None
    mobile_phone: str | None = None
    business_phones: tuple[str, ...] = ()
    preferred_language: str | None = None
    user_type: str = "Member"
    account_enabled: bool = True
    assigned_licenses: tuple[AssignedLicense, ...] = ()
    assigned_plans: tuple[AssignedPlan, ...] = ()
    created_date_time: str = "2020-01-01T00:00:00Z"
    user_purpose: UserPurpose | None = "user"


class Group(msgspec.Struct, frozen=True, kw_only=True):
    """A group: Microsoft 365 (groupTypes ["Unified"]), security, mail-enabled security or distribution."""

    id: str
    display_name: str
    description: str | None = None
    mail: str | None = None
    mail_enabled: bool = False
    security_enabled: bool = True
    group_types: tuple[str, ...] = ()
    mail_nickname: str = ""
    created_date_time: str = "2020-01-01T00:00:00Z"
    visibility: str | None = None  # Public, Private or HiddenMembership (Microsoft 365 groups only)

    @property
    def kind(self) -> GroupKind:
        """microsoft365, security, mailEnabledSecurity or distribution, from groupTypes and the flags."""
        if "Unified" in self.group_types:
            return "microsoft365"
        if self.mail_enabled:
            return "mailEnabledSecurity" if self.security_enabled else "distribution"
        return "security"

    @property
    def hidden_membership(self) -> bool:
        """Whether only Member.Read.Hidden reveals the members."""
        return self.visibility == "HiddenMembership"


# Which kinds of group may be DIRECT members of which (Entra "Add or remove a group from another
# group"; Exchange lets mail-enabled security groups and distribution groups nest in each other).
# A Microsoft 365 group holds no group and is in none.
_NESTABLE: dict[GroupKind, frozenset[GroupKind]] = {
    "microsoft365": frozenset(),
    "security": frozenset({"security"}),
    "mailEnabledSecurity": frozenset({"mailEnabledSecurity", "distribution"}),
    "distribution": frozenset({"mailEnabledSecurity", "distribution"}),
}
# Member kinds other than groups: Microsoft 365 groups hold users only (guests included).
_OTHER_MEMBERS: dict[GroupKind, frozenset[str]] = {
    "microsoft365": frozenset({"user"}),
    "security": frozenset({"user", "device", "orgContact", "servicePrincipal"}),
    "mailEnabledSecurity": frozenset({"user", "orgContact"}),
    "distribution": frozenset({"user", "orgContact"}),
}


def member_kinds(group_kind: GroupKind) -> frozenset[str]:
    """The object kinds ("user", "group", ...) a group of this kind can have as members."""
    kinds = set(_OTHER_MEMBERS[group_kind])
    if _NESTABLE[group_kind]:
        kinds.add("group")
    return frozenset(kinds)


class MembershipRefused(ValueError):
    """Entra refuses this kind of member in this kind of group (e.g. a group in a Microsoft 365 group)."""


class Device(msgspec.Struct, frozen=True, kw_only=True):
    """A registered device; devices can be members of security groups."""

    id: str
    display_name: str
    device_id: str
    operating_system: str = "Windows"
    operating_system_version: str = "10.0.22631"
    account_enabled: bool = True


class OrgContact(msgspec.Struct, frozen=True, kw_only=True):
    """An organizational (mail) contact; contacts can be members of distribution lists."""

    id: str
    display_name: str
    mail: str | None = None
    given_name: str | None = None
    surname: str | None = None
    company_name: str | None = None


class ServicePrincipal(msgspec.Struct, frozen=True, kw_only=True):
    """An application's service principal; can be a member of security groups."""

    id: str
    display_name: str
    app_id: str
    service_principal_type: str = "Application"
    account_enabled: bool = True


DirectoryObject = User | Group | Device | OrgContact | ServicePrincipal


class Landmarks(msgspec.Struct, kw_only=True):
    """Where the generator put the real-world mess, so tests can find it.

    Each id set is disjoint from the others except `ineligible_ids`, which is their union
    (guests, disabled, unlicensed, shared/room/equipment mailboxes and service accounts).
    `guest_like_upn_ids` holds members whose UPN looks like a guest's (#EXT#) while their
    userType is "Member"; they are not in `ineligible_ids`. `external_member_ids` are members of a
    partner tenant synced in (cross-tenant synchronization): userType "Member", an #EXT# UPN and no
    mailbox here; they are not in `ineligible_ids` either. `suspended_license_ids` still list a
    licence but none of its plans is enabled (a suspended, locked-out or deleted subscription).
    `hidden_membership_group_ids` are Microsoft 365 groups whose members only Member.Read.Hidden reads.
    """

    big_group_id: str = ""
    empty_group_id: str = ""
    cycle_group_ids: tuple[str, ...] = ()
    nested_chain: tuple[str, ...] = ()
    mixed_members_group_id: str = ""
    guests_group_id: str = ""
    department_group_ids: dict[str, str] = {}
    guest_ids: frozenset[str] = frozenset()
    guest_like_upn_ids: frozenset[str] = frozenset()
    external_member_ids: frozenset[str] = frozenset()
    suspended_license_ids: frozenset[str] = frozenset()
    hidden_membership_group_ids: tuple[str, ...] = ()
    disabled_ids: frozenset[str] = frozenset()
    unlicensed_ids: frozenset[str] = frozenset()
    shared_mailbox_ids: frozenset[str] = frozenset()
    room_ids: frozenset[str] = frozenset()
    equipment_ids: frozenset[str] = frozenset()
    service_account_ids: frozenset[str] = frozenset()
    no_mail_ids: frozenset[str] = frozenset()
    ineligible_ids: frozenset[str] = frozenset()


class Change(msgspec.Struct, frozen=True):
    """One recorded mutation: an object changed/removed, or a membership edge added/removed."""

    revision: int
    kind: Literal["user", "group"]
    object_id: str
    removed: bool = False
    member_id: str | None = None  # set for membership changes (kind == "group")
    member_added: bool = False
    purged: bool = False  # a soft-deleted object removed for good from the deleted items


ChangeListener = Callable[["Tenant", Change], None]


_CHANGE_LOG_LIMIT = 200_000  # older changes are dropped; delta tokens older than that resync


class Tenant:
    """One Entra ID tenant: its directory objects, group membership and a change log.

    Read freely from any thread; mutate only through the methods here so caches (transitive
    membership, the server's JSON cache and filtered lists) see the change at once.
    """

    def __init__(
        self,
        tenant_id: str,
        display_name: str,
        *,
        domain: str,
        initial_domain: str,
        users: dict[str, User] | None = None,
        groups: dict[str, Group] | None = None,
        devices: dict[str, Device] | None = None,
        org_contacts: dict[str, OrgContact] | None = None,
        service_principals: dict[str, ServicePrincipal] | None = None,
        members: dict[str, list[str]] | None = None,
        landmarks: Landmarks | None = None,
    ) -> None:
        self.tenant_id = tenant_id
        self.display_name = display_name
        self.domain = domain  # verified custom domain: mail and most UPNs
        self.initial_domain = initial_domain  # <name>.onmicrosoft.com: guests' #EXT# UPNs
        self.users: dict[str, User] = users or {}
        self.groups: dict[str, Group] = groups or {}
        self.devices: dict[str, Device] = devices or {}
        self.org_contacts: dict[str, OrgContact] = org_contacts or {}
        self.service_principals: dict[str, ServicePrincipal] = service_principals or {}
        # group id -> ordered DIRECT member ids (any directory object kind)
        self.members: dict[str, list[str]] = members if members is not None else {}
        for group_id in self.groups:
            self.members.setdefault(group_id, [])
        self.landmarks = landmarks or Landmarks()
        self.revision = 0
        self.changes: deque[Change] = deque(maxlen=_CHANGE_LOG_LIMIT)
        # Called (under the lock) with every change recorded; the server's change notifications hook in here.
        self.listeners: list[ChangeListener] = []
        # Soft-deleted users and groups ("deleted items"), by id, until purged.
        self.deleted: dict[str, Literal["user", "group"]] = {}
        self.lock = threading.RLock()
        self._transitive_cache: dict[str, tuple[str, ...]] = {}
        self._member_of_index: dict[str, list[str]] | None = None
        self._upn_index: dict[str, str] | None = None

    # ----------------------------------------------------------------- lookups

    def kind_of(self, object_id: str) -> ObjectKind | None:
        """The kind of directory object with this id, or None if the tenant has none."""
        if object_id in self.users:
            return "user"
        if object_id in self.groups:
            return "group"
        if object_id in self.devices:
            return "device"
        if object_id in self.org_contacts:
            return "orgContact"
        if object_id in self.service_principals:
            return "servicePrincipal"
        return None

    def get_object(self, object_id: str) -> DirectoryObject | None:
        """The directory object with this id, whatever its kind."""
        return (
            self.users.get(object_id)
            or self.groups.get(object_id)
            or self.devices.get(object_id)
            or self.org_contacts.get(object_id)
            or self.service_principals.get(object_id)
        )

    def user_by_principal_name(self, user_principal_name: str) -> User | None:
        """The user with this UPN (case-insensitive), or None."""
        with self.lock:
            if self._upn_index is None:
                self._upn_index = {u.user_principal_name.lower(): u.id for u in self.users.values()}
            user_id = self._upn_index.get(user_principal_name.lower())
        return self.users.get(user_id) if user_id else None

    def direct_member_ids(self, group_id: str) -> list[str]:
        """Direct member ids of a group, in membership order (a copy)."""
        with self.lock:
            return list(self.members.get(group_id, ()))

    def transitive_member_ids(self, group_id: str) -> tuple[str, ...]:
        """All nested members of a group, each once, breadth first; cycle-safe, never the group itself."""
        with self.lock:
            cached = self._transitive_cache.get(group_id)
            if cached is not None:
                return cached
            seen: set[str] = {group_id}
            ordered: list[str] = []
            queue: deque[str] = deque([group_id])
            while queue:
                current = queue.popleft()
                for member_id in self.members.get(current, ()):
                    if member_id in seen:
                        continue
                    seen.add(member_id)
                    ordered.append(member_id)
                    if member_id in self.groups:
                        queue.append(member_id)
            result = tuple(ordered)
            self._transitive_cache[group_id] = result
            return result

    def transitive_user_ids(self, group_id: str) -> list[str]:
        """User members of a group with nested groups expanded, each once."""
        users = self.users
        return [member_id for member_id in self.transitive_member_ids(group_id) if member_id in users]

    def member_of(self, object_id: str) -> list[str]:
        """Ids of the groups that have this object as a DIRECT member."""
        with self.lock:
            if self._member_of_index is None:
                index: dict[str, list[str]] = {}
                for group_id, member_ids in self.members.items():
                    for member_id in member_ids:
                        index.setdefault(member_id, []).append(group_id)
                self._member_of_index = index
            return list(self._member_of_index.get(object_id, ()))

    def transitive_member_of(self, object_id: str) -> list[str]:
        """Ids of every group this object belongs to, directly or through nesting; cycle-safe."""
        seen: set[str] = {object_id}
        ordered: list[str] = []
        queue: deque[str] = deque([object_id])
        while queue:
            for group_id in self.member_of(queue.popleft()):
                if group_id not in seen:
                    seen.add(group_id)
                    ordered.append(group_id)
                    queue.append(group_id)
        return ordered

    def changes_since(self, revision: int) -> Iterator[Change] | None:
        """Changes recorded after `revision`, oldest first; None if the log no longer reaches that far."""
        if revision > self.revision:
            return None
        if self.changes and self.changes[0].revision > revision + 1:
            return None
        if not self.changes and revision < self.revision:
            return None
        return (change for change in list(self.changes) if change.revision > revision)

    # --------------------------------------------------------------- mutations

    def _record(self, change_kind: Literal["user", "group"], object_id: str, **extra: Any) -> None:
        self.revision += 1
        change = Change(self.revision, change_kind, object_id, **extra)
        self.changes.append(change)
        for listener in self.listeners:
            listener(self, change)

    def _membership_changed(self) -> None:
        self._transitive_cache.clear()
        self._member_of_index = None

    def check_member(self, group_id: str, member_id: str) -> None:
        """Raise MembershipRefused when Entra would not take this object as a direct member of the group."""
        group = self.groups[group_id]
        member_kind = self.kind_of(member_id)
        if member_kind == "group":
            child = self.groups[member_id]
            if child.kind not in _NESTABLE[group.kind]:
                raise MembershipRefused(
                    f"a {child.kind} group cannot be a member of a {group.kind} group"
                    + (" (Microsoft 365 groups hold users only)" if group.kind == "microsoft365" else "")
                )
        elif member_kind not in _OTHER_MEMBERS[group.kind]:
            raise MembershipRefused(f"a {member_kind} cannot be a member of a {group.kind} group")

    def add_member(self, group_id: str, member_id: str) -> bool:
        """Add a direct member to a group; False if it already was one.

        Raises KeyError for unknown ids and MembershipRefused for a member Entra would refuse.
        """
        with self.lock:
            if group_id not in self.groups:
                raise KeyError(f"no group {group_id}")
            if self.kind_of(member_id) is None:
                raise KeyError(f"no directory object {member_id}")
            self.check_member(group_id, member_id)
            member_ids = self.members.setdefault(group_id, [])
            if member_id in member_ids:
                return False
            member_ids.append(member_id)
            self._membership_changed()
            self._record("group", group_id, member_id=member_id, member_added=True)
            return True

    def remove_member(self, group_id: str, member_id: str) -> bool:
        """Remove a direct member from a group; False if it was not a member."""
        with self.lock:
            member_ids = self.members.get(group_id)
            if not member_ids or member_id not in member_ids:
                return False
            member_ids.remove(member_id)
            self._membership_changed()
            self._record("group", group_id, member_id=member_id, member_added=False)
            return True

    def add_group(self, group: Group, member_ids: Iterable[str] = ()) -> None:
        """Create a group (or replace one with the same id) with the given direct members."""
        with self.lock:
            self.groups[group.id] = group
            self.deleted.pop(group.id, None)
            self.members[group.id] = list(dict.fromkeys(member_ids))
            self._membership_changed()
            self._record("group", group.id)
            # Record each initial member too, so a delta round reports them in members@delta.
            for member_id in self.members[group.id]:
                self._record("group", group.id, member_id=member_id, member_added=True)

    def delete_group(self, group_id: str) -> bool:
        """Delete a group and drop it from every group it was a member of."""
        with self.lock:
            if self.groups.pop(group_id, None) is None:
                return False
            self.members.pop(group_id, None)
            for parent_id, member_ids in self.members.items():
                if group_id in member_ids:
                    member_ids.remove(group_id)
                    self._record("group", parent_id, member_id=group_id, member_added=False)
            self._membership_changed()
            self.deleted[group_id] = "group"
            self._record("group", group_id, removed=True)
            return True

    def update_group(self, group_id: str, **changes: Any) -> Group:
        """Change group attributes by snake_case field name (e.g. display_name="New")."""
        with self.lock:
            group = msgspec.structs.replace(self.groups[group_id], **changes)
            self.groups[group_id] = group
            self._record("group", group_id)
            return group

    def add_user(self, user: User) -> None:
        """Create a user (or replace one with the same id)."""
        with self.lock:
            self.users[user.id] = user
            self.deleted.pop(user.id, None)
            self._upn_index = None
            self._record("user", user.id)

    def update_user(self, user_id: str, **changes: Any) -> User:
        """Change user attributes by snake_case field name (e.g. account_enabled=False)."""
        with self.lock:
            user = msgspec.structs.replace(self.users[user_id], **changes)
            self.users[user_id] = user
            self._upn_index = None
            self._record("user", user_id)
            return user

    def set_licenses(
        self,
        user_id: str,
        licenses: Iterable[AssignedLicense],
        status: CapabilityStatus = "Enabled",
        assigned: str | None = None,
    ) -> User:
        """Replace a user's assignedLicenses and derive assignedPlans from them, all in `status`."""
        chosen = tuple(licenses)
        user = self.users[user_id]
        when = assigned or user.created_date_time
        return self.update_user(
            user_id, assigned_licenses=chosen, assigned_plans=plans_for(chosen, status, when)
        )

    def snapshot(self) -> Tenant:
        """A copy of the directory as it is now (objects are frozen, so copying the maps is enough)."""
        with self.lock:
            copy = Tenant(
                self.tenant_id,
                self.display_name,
                domain=self.domain,
                initial_domain=self.initial_domain,
                users=dict(self.users),
                groups=dict(self.groups),
                devices=dict(self.devices),
                org_contacts=dict(self.org_contacts),
                service_principals=dict(self.service_principals),
                members={group_id: list(ids) for group_id, ids in self.members.items()},
                landmarks=self.landmarks,
            )
            copy.revision = self.revision
            return copy

    def set_user_attribute(self, user_id: str, name: str, value: Any) -> User:
        """Change one user attribute by snake_case field name."""
        return self.update_user(user_id, **{name: value})

    def disable_user(self, user_id: str) -> User:
        """Set accountEnabled to false."""
        return self.update_user(user_id, account_enabled=False)

    def delete_user(self, user_id: str) -> bool:
        """Delete a user and drop them from every group."""
        with self.lock:
            if self.users.pop(user_id, None) is None:
                return False
            for group_id, member_ids in self.members.items():
                if user_id in member_ids:
                    member_ids.remove(user_id)
                    self._record("group", group_id, member_id=user_id, member_added=False)
            self._upn_index = None
            self._membership_changed()
            self.deleted[user_id] = "user"
            self._record("user", user_id, removed=True)
            return True

    def purge_deleted(self, object_id: str) -> bool:
        """Remove a soft-deleted user or group from the deleted items for good; False if it is not there.

        Deleting a user or group only soft-deletes it (Graph reads no longer return it); this is the
        permanent deletion, which delta reports with reason "deleted" and change notifications as `deleted`.
        """
        with self.lock:
            kind = self.deleted.pop(object_id, None)
            if kind is None:
                return False
            self._record(kind, object_id, removed=True, purged=True)
            return True

    def summary(self) -> dict[str, Any]:
        """Counts and landmark ids, for printing and the /_demo/tenants route."""
        landmarks = msgspec.to_builtins(self.landmarks)
        for key, value in landmarks.items():
            if isinstance(value, list) and key.endswith("_ids") and len(value) > 20:
                landmarks[key] = [*sorted(value)[:20], f"... {len(value) - 20} more"]
        return {
            "tenantId": self.tenant_id,
            "displayName": self.display_name,
            "domain": self.domain,
            "users": len(self.users),
            "groups": len(self.groups),
            "devices": len(self.devices),
            "orgContacts": len(self.org_contacts),
            "servicePrincipals": len(self.service_principals),
            "revision": self.revision,
            "landmarks": landmarks,
        }
