"""Records that travel between the layers: directory reads, roster entries, plans and runs.

Everything here is a frozen msgspec Struct: cheap to build by the hundred thousand,
and encodable to JSON without hand-written serializers.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Hashable
from datetime import UTC, datetime
from typing import Annotated, Any, TypeVar

import msgspec

from sync.validation import (
    GUID_PATTERN,
    MAX_EXCLUDED_USERS,
    MAX_GRANT_TENANTS,
    MAX_GUARD_MIN_USERS,
    MAX_NAME_LENGTH,
    MAX_SELECTED_GROUPS,
    MAX_UPN_PATTERNS,
)


def utc_text(moment: datetime) -> str:
    """ISO 8601 in UTC with a Z, as Graph writes dates."""
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


class GroupKind(enum.StrEnum):
    """How Microsoft 365 presents a group (groupTypes / mailEnabled / securityEnabled)."""

    MICROSOFT365 = "microsoft365"
    SECURITY = "security"
    MAIL_ENABLED_SECURITY = "mailEnabledSecurity"
    DISTRIBUTION = "distribution"


class Group(msgspec.Struct, frozen=True, kw_only=True, rename="camel"):
    """A group as the selection page shows it."""

    id: str
    display_name: str
    kind: GroupKind
    description: str | None = None
    mail: str | None = None
    member_count: int | None = None  # transitive user members; None when not counted
    hidden_membership: bool = False  # visibility HiddenMembership: members readable with Member.Read.Hidden


class GroupPage(msgspec.Struct, frozen=True, kw_only=True, rename="camel"):
    """One page of the group list with an opaque cursor for the next page."""

    value: list[Group]
    next_cursor: str | None = None
    total: int | None = None  # every group matching (Graph's @odata.count), when Graph gave it


_V = TypeVar("_V", bound=Hashable)
_M = TypeVar("_M")


class SharedValues:
    """One object per distinct value within one read of many users.

    Departments, job titles, licence lists, group lists and timestamps repeat across thousands of
    users; holding each once keeps a 100,000-user run's memory down (values are immutable).
    """

    __slots__ = ("_made", "_same")

    def __init__(self) -> None:
        self._same: dict[Hashable, Any] = {}
        self._made: dict[tuple[str, str], Any] = {}

    def same(self, value: _V) -> _V:
        """The first object this read saw that equals `value` (`value` itself the first time)."""
        found: _V = self._same.setdefault(value, value)
        return found

    def made(self, kind: str, raw: str, make: Callable[[str], _M]) -> _M:
        """`make(raw)`, made once per distinct `raw` of a `kind` (e.g. a timestamp from its text)."""
        key = (kind, raw)
        found: _M | None = self._made.get(key)
        if found is None:
            found = self._made[key] = make(raw)
        return found


class DirectoryUser(msgspec.Struct, frozen=True, kw_only=True, rename="camel", gc=False):
    """A user as Entra ID reports them, with just the attributes the eligibility rules need."""

    id: str
    user_principal_name: str
    display_name: str | None = None
    given_name: str | None = None
    surname: str | None = None
    mail: str | None = None
    department: str | None = None
    job_title: str | None = None
    user_type: str | None = None  # "Member" | "Guest" | None (not returned)
    account_enabled: bool | None = None  # None: not returned
    # Whether at least one assigned service plan is enabled (assignedPlans capabilityStatus Enabled or
    # Warning), so a licence whose subscription is suspended or deleted does not count. None: Graph
    # did not return assignedLicenses or assignedPlans.
    licensed: bool | None = None
    sku_ids: tuple[str, ...] = ()  # assignedLicenses skuIds

    @property
    def missing_attributes(self) -> tuple[str, ...]:
        """The attributes the rules need that Graph did not return: the user's verdict is unknown."""
        missing = []
        if self.account_enabled is None:
            missing.append("accountEnabled")
        if self.licensed is None:
            missing.append("assignedLicenses")
        if self.user_type is None:
            missing.append("userType")
        return tuple(missing)


class GroupMembers(msgspec.Struct, frozen=True, kw_only=True, rename="camel"):
    """The user members of a set of groups, nested groups expanded (transitive).

    `users` holds each user once; `groups_of_user` maps a user id to the ids of the
    requested groups they belong to, in request order.
    """

    users: dict[str, DirectoryUser]
    groups_of_user: dict[str, tuple[str, ...]]
    members_per_group: dict[str, int]  # transitive user members of each requested group


class RosterStatus(enum.StrEnum):
    """Whether a user is on the platform, or removed and restorable within the grace period."""

    ACTIVE = "active"
    REMOVED = "removed"


class RosterUser(msgspec.Struct, frozen=True, kw_only=True, rename="camel", gc=False):
    """A user as the platform's roster holds them (one row of the `users` table)."""

    id: str  # Entra object id
    user_principal_name: str
    display_name: str | None = None
    mail: str | None = None
    department: str | None = None
    job_title: str | None = None
    groups: tuple[str, ...] = ()  # ids of the selected groups the user came through
    status: RosterStatus = RosterStatus.ACTIVE
    added_at: datetime | None = None
    updated_at: datetime | None = None
    removed_at: datetime | None = None
    removed_by_run: str | None = None  # the run that removed the user (set while status is removed)
    purpose_checked_at: datetime | None = None  # when mailboxSettings.userPurpose last said "a person"


class EligibleUser(msgspec.Struct, frozen=True, kw_only=True, rename="camel", gc=False):
    """A user who should be on the platform after this run, with the selected groups they came through."""

    id: str
    user_principal_name: str
    display_name: str | None = None
    mail: str | None = None
    department: str | None = None
    job_title: str | None = None
    groups: tuple[str, ...] = ()


class SelectionMode(enum.StrEnum):
    """`all`: every eligible user of the tenant; `groups`: eligible members of the chosen groups."""

    ALL = "all"
    GROUPS = "groups"


class SelectedGroup(msgspec.Struct, frozen=True, kw_only=True, rename="camel"):
    """A chosen group, with the name it had when it was chosen."""

    id: str
    display_name: str


class Selection(msgspec.Struct, frozen=True, kw_only=True, rename="camel"):
    """The groups a tenant's admin chose on the "Sync by O365 Groups" page."""

    mode: SelectionMode = SelectionMode.ALL
    groups: tuple[SelectedGroup, ...] = ()
    version: int = 0  # 0: never saved
    updated_at: datetime | None = None
    updated_by: str | None = None


class ExclusionRules(msgspec.Struct, frozen=True, kw_only=True, rename="camel"):
    """A tenant's own exclusion rules, as stored and shown.

    Build from untrusted input with `sync.eligibility.parse_exclusion_rules`, which validates and
    normalises. Matching is case-insensitive throughout.
    """

    upn_patterns: tuple[str, ...] = ()  # fnmatch-style, against the whole UPN and its local part
    excluded_users: tuple[str, ...] = ()  # object ids or UPNs
    exclusion_group_id: str | None = None  # the caller resolves its transitive user ids
    include_external_members: bool = False  # members from other organisations (#EXT#, userType Member)
    required_skus: tuple[str, ...] = ()  # SKU ids (lower case); empty: any licence will do
    # The product page's "may be excluded": each on by default, a tenant may turn it off.
    exclude_service_accounts: bool = True
    exclude_shared_mailboxes: bool = True  # shared, room and equipment mailboxes


class Tenant(msgspec.Struct, frozen=True, kw_only=True, rename="camel"):
    """A customer tenant registered for sync."""

    id: str  # Entra tenant GUID
    display_name: str
    version: int = 0  # what an admin saved (name, rules, guard): its ETag; 0 before the first save
    enabled: bool = True
    created_at: datetime | None = None
    exclusion_rules: str = "{}"  # JSON of ExclusionRules
    guard_percent: float | None = None  # None: REMOVAL_GUARD_PERCENT
    guard_min_users: int | None = None  # None: REMOVAL_GUARD_MIN_USERS
    last_run_id: str | None = None
    last_run_status: str | None = None
    last_run_at: datetime | None = None
    # Incremental refresh state: valid only for the selection version and rules it was taken with.
    users_delta_link: str | None = None
    groups_delta_link: str | None = None
    delta_selection_version: int | None = None
    delta_rules: str | None = None
    last_full_refresh_at: datetime | None = None
    active_users: int | None = None  # on the roster after the last successful run
    notify_mode: NotifyMode | None = None  # how soon changes arrive (None: no full refresh yet)
    notify_detail: str | None = None  # why not realtime
    # "notConsented" once a run or the connection check met a token refusal for want of consent
    # (never granted, revoked, app deleted): nightly runs skip the tenant and the page offers
    # Reconnect. None while consent is not known to be missing.
    consent_state: str | None = None
    updated_by: str | None = None  # who registered or last changed the record (name, tid/oid)
    updated_at: datetime | None = None


class TenantView(msgspec.Struct, frozen=True, kw_only=True, rename="camel"):
    """A tenant as the API shows it: the fleet view, without the internal sync state
    (delta links, the rules snapshot); the rules have their own route."""

    id: str
    display_name: str
    version: int = 0  # the ETag of what an admin saved (send it as If-Match)
    enabled: bool = True
    created_at: datetime | None = None
    guard_percent: float | None = None
    guard_min_users: int | None = None
    last_run_id: str | None = None
    last_run_status: str | None = None
    last_run_at: datetime | None = None
    last_full_refresh_at: datetime | None = None
    active_users: int | None = None
    notify_mode: NotifyMode | None = None
    notify_detail: str | None = None
    consent_state: str | None = None
    updated_by: str | None = None
    updated_at: datetime | None = None

    @classmethod
    def of(cls, tenant: Tenant) -> TenantView:
        """The public view of a tenant record."""
        fields = {name: getattr(tenant, name) for name in cls.__struct_fields__}
        return cls(**fields)


class NotifyMode(enum.StrEnum):
    """How soon a tenant's changes in Microsoft 365 reach the roster."""

    REALTIME = "realtime"  # user and group change notifications: within a minute
    USERS_ONLY = "usersOnly"  # user changes within a minute; group changes at night (no Group.Read.All)
    NIGHTLY = "nightly"  # no subscriptions: nightly runs and Refresh Users Now


class RunStatus(enum.StrEnum):
    """Where a refresh run is in its life."""

    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    HELD = "held"  # the removal guard stopped it; approve to apply
    SUPERSEDED = "superseded"  # a newer refresh of the same tenant covered it

    @property
    def finished(self) -> bool:
        """Whether the run will not change any more (held runs wait for a new, approved run)."""
        return self in (RunStatus.SUCCEEDED, RunStatus.FAILED, RunStatus.HELD, RunStatus.SUPERSEDED)


class RunReason(enum.StrEnum):
    """Why a run was started."""

    MANUAL = "manual"  # "Refresh Users Now"
    SELECTION_SAVED = "selection-saved"
    PREVIEW = "preview"  # a dry run of a selection not saved yet
    CLI = "cli"
    RULES_SAVED = "rules-saved"
    NOTIFICATION = "notification"  # Graph said something changed: read the changes
    APPROVED = "approved"  # applies a held run's removals
    UNDO = "undo"  # restores a run's removals
    NIGHTLY = "nightly"


class MemberStrategy(enum.StrEnum):
    """How a run reads the members of the selected groups."""

    PER_GROUP = "perGroup"  # each group's user members with their attributes, groups side by side
    ALL_USERS = "allUsers"  # every user once, plus the groups' member ids in $batch requests


class MailboxPurposeSource(enum.StrEnum):
    """Where the shared-mailbox decision comes from for a run."""

    MAILBOX_SETTINGS = "mailboxSettings"  # mailboxSettings.userPurpose was read
    HEURISTIC = "heuristic"  # MailboxSettings.Read not granted: a documented name heuristic


class ExcludedCounts(msgspec.Struct, kw_only=True, rename="camel"):
    """Users of the selected groups kept off the platform, by their first reason."""

    guest: int = 0
    external_member: int = 0  # userType Member from another organisation (cross-tenant sync)
    disabled: int = 0
    unlicensed: int = 0
    shared_mailbox: int = 0  # the API's key
    service_account: int = 0
    rule: int = 0


class RunCounts(msgspec.Struct, kw_only=True, rename="camel"):
    """What a run found and changed."""

    members: int = 0  # distinct users in the selection (or tenant, mode all)
    eligible: int = 0
    added: int = 0
    updated: int = 0
    removed: int = 0
    restored: int = 0
    unchanged: int = 0
    excluded: ExcludedCounts = msgspec.field(default_factory=ExcludedCounts)
    # Users whose verdict is unknown (Graph left out an attribute the rules need): kept as they were.
    unknown: int = 0
    # Users whose mailbox purpose Graph would not give (403 or 404): judged by the name heuristic.
    purpose_unknown: int = 0
    licensed_by_sku: dict[str, int] = msgspec.field(default_factory=dict)  # eligible users per SKU id
    # Users of the run each optional exclusion matches (on or off): "serviceAccount", and
    # "sharedMailbox" while that exclusion is on (mailboxes are read only then).
    optional_matches: dict[str, int] = msgspec.field(default_factory=dict)


class DirectMembers(msgspec.Struct, frozen=True, kw_only=True, rename="camel"):
    """A group's direct members by type, as the Microsoft 365 admin center counts them."""

    users: int = 0
    groups: int = 0
    devices: int = 0
    contacts: int = 0  # organizational contacts

    @property
    def total(self) -> int:
        """Every direct member: the admin center's member count."""
        return self.users + self.groups + self.devices + self.contacts


class RunGroup(msgspec.Struct, frozen=True, kw_only=True, rename="camel"):
    """Per-group numbers of a run, to explain counts that differ from the admin center."""

    id: str
    display_name: str
    members: int  # users read (nested groups expanded)
    eligible: int
    counted: int | None = None  # Graph's own count of the group's users ($count), when asked
    direct: DirectMembers | None = None  # direct members by type (full reads; None when not counted)
    excluded: ExcludedCounts | None = None  # of `members`, those excluded, by their first reason
    unknown: int = 0  # of `members`, those Graph answered without an attribute the rules need


class ExcludedUser(msgspec.Struct, frozen=True, kw_only=True, rename="camel"):
    """A user of the selected groups kept off the platform, with every reason and the exact rule of each."""

    id: str
    user_principal_name: str
    display_name: str | None = None
    mail: str | None = None
    department: str | None = None
    reason: str  # the first reason: the one the run counts them under
    reasons: tuple[str, ...] = ()
    rules: tuple[str, ...] = ()  # the rule that matched, one per reason, in the same order
    groups: tuple[str, ...] = ()  # the selected groups they are in
    run_id: str | None = None  # the full run that found them excluded
    seen_at: datetime | None = None


class PlanSample(msgspec.Struct, kw_only=True, rename="camel"):
    """Held, dry and undo runs: the ids of the users they add, update, restore and remove (capped)."""

    add: list[str] = msgspec.field(default_factory=list)
    update: list[str] = msgspec.field(default_factory=list)
    restore: list[str] = msgspec.field(default_factory=list)
    remove: list[str] = msgspec.field(default_factory=list)


class Run(msgspec.Struct, kw_only=True, rename="camel"):
    """One refresh of one tenant: the API's run resource and the `runs` table row."""

    id: str
    tenant_id: str
    status: RunStatus
    reason: RunReason
    dry_run: bool = False
    requested_at: datetime
    requested_by: str | None = None
    allow_removals: int | None = None  # approved removal ceiling, from a held run
    approved_run: str | None = (
        None  # the held run (or the confirmed preview) whose removals this one may make
    )
    # Who approved removals and when: on the run allowed to make them, and on the held run approved.
    approved_by: str | None = None
    approved_at: datetime | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    duration_seconds: float | None = None
    counts: RunCounts = msgspec.field(default_factory=RunCounts)
    groups: list[RunGroup] = msgspec.field(default_factory=list)
    graph_requests: int = 0
    mailbox_purpose_source: MailboxPurposeSource | None = None
    guard: str | None = None  # why the removal guard held the run
    plan: PlanSample | None = None  # held/dry/undo runs: who they add, update, restore, remove
    error: str | None = None
    superseded_by: str | None = None
    incremental: bool = False  # read only what changed since the last successful run (Graph delta)
    member_strategy: MemberStrategy | None = None  # how the members were read
    removal_digest: str | None = None  # held and dry runs: fingerprint of exactly who they would remove
    approved_digest: str | None = None  # an approved run: may remove exactly the users with this fingerprint
    preview_mode: SelectionMode | None = None  # dry runs of a selection not saved yet
    preview_group_ids: list[str] | None = None
    undo_of: str | None = None  # an undo run: the run whose removals it restored
    undone_by: str | None = None  # a run whose removals were undone: the undo run
    note: str | None = None  # a remark for the admin, e.g. users an undo could not restore
    unknown_users: list[str] | None = None  # sample of users kept because Graph left out an attribute
    apply_started_at: datetime | None = None  # writing began: a failure after this may be partial
    planned_changes: int | None = None  # roster rows the run set out to write
    applied_changes: int | None = None  # of those, how many landed (all of them on success)
    fallback: str | None = None  # why a nightly run read everything instead of only what changed


class RefreshMessage(msgspec.Struct, frozen=True, kw_only=True, rename="camel"):
    """The queue message: one refresh of one tenant."""

    tenant_id: str
    run_id: str
    reason: RunReason = RunReason.MANUAL
    dry_run: bool = False
    requested_by: str | None = None
    allow_removals: int | None = None


# --- API resources: request bodies and results the HTTP API and the CLI exchange -----------------


GroupId = Annotated[str, msgspec.Meta(extra_json_schema={"pattern": GUID_PATTERN})]
DisplayName = Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_NAME_LENGTH)]
GuardPercent = Annotated[
    float,
    msgspec.Meta(
        ge=0,
        le=100,
        description="Hold a run whose removals exceed this share of the active roster (and "
        "guardMinUsers). Left out: unchanged; null: REMOVAL_GUARD_PERCENT.",
    ),
]
GuardMinUsers = Annotated[
    int,
    msgspec.Meta(
        ge=0,
        le=MAX_GUARD_MIN_USERS,
        description="Hold a run whose removals exceed this many users (and guardPercent). "
        "Left out: unchanged; null: REMOVAL_GUARD_MIN_USERS.",
    ),
]
ModeChoice = Annotated[
    SelectionMode,
    msgspec.Meta(
        description="`all`: every eligible user of the tenant; `groups`: eligible members of groupIds "
        "(nested groups included). Left out: `groups` when groupIds is not empty."
    ),
]
GroupIds = Annotated[
    list[GroupId],
    msgspec.Meta(
        max_length=MAX_SELECTED_GROUPS,
        description="Group object ids, each once; every one must exist in the tenant.",
    ),
]


class AuditKind(enum.StrEnum):
    """What a record says happened."""

    ADDED = "added"
    UPDATED = "updated"
    REMOVED = "removed"
    RESTORED = "restored"
    PURGED = "purged"
    SELECTION_CHANGED = "selectionChanged"
    RULES_CHANGED = "rulesChanged"
    GUARD_CHANGED = "guardChanged"
    APPROVED = "approved"

    @property
    def is_roster_change(self) -> bool:
        """Whether the record is about one user on the roster (not about configuration)."""
        return self in _ROSTER_KINDS


_ROSTER_KINDS: frozenset[AuditKind] = frozenset(
    {AuditKind.ADDED, AuditKind.UPDATED, AuditKind.REMOVED, AuditKind.RESTORED, AuditKind.PURGED}
)


class AuditRecord(msgspec.Struct, frozen=True, kw_only=True, rename="camel", omit_defaults=True):
    """One change, as it is kept: who or which run, what, when, and why."""

    at: datetime
    kind: AuditKind
    run_id: str | None = None  # the run that changed the roster (or that an approval applies)
    user_id: str | None = None  # the Entra object id of the user whose row changed
    user_principal_name: str | None = None
    reason: str | None = None  # why: an exclusion reason, "notInSelectedGroups", "undo", "pastGrace"
    by: str | None = None  # who asked: a person (from the signed-in principal), "timer", "cli:…"
    before: Any = None  # configuration changes: the value before …
    after: Any = None  # … and after
    cursor: str | None = None  # set when read: where this record sits (pass it as `after` to go on)


class TenantInput(msgspec.Struct, frozen=True, kw_only=True, rename="camel", forbid_unknown_fields=True):
    """PUT /tenants/{id}: register or rename a tenant; optionally its own removal guard."""

    display_name: DisplayName
    guard_percent: GuardPercent | msgspec.UnsetType | None = msgspec.UNSET
    guard_min_users: GuardMinUsers | msgspec.UnsetType | None = msgspec.UNSET


class ConfirmedPreview(msgspec.Struct, frozen=True, kw_only=True, rename="camel", forbid_unknown_fields=True):
    """The preview whose removals the admin confirmed ("Remove N users?"): the save's run may make
    exactly those removals (same fingerprint) without being held a second time."""

    run_id: Annotated[str, msgspec.Meta(description="The preview run (POST /preview) that was shown.")]
    removal_digest: Annotated[
        str, msgspec.Meta(description="Its `removalDigest`: the fingerprint of exactly who it removes.")
    ]


class SelectionInput(msgspec.Struct, frozen=True, kw_only=True, rename="camel", forbid_unknown_fields=True):
    """PUT /selection and POST /preview: the groups to sync (or every eligible user)."""

    mode: ModeChoice | msgspec.UnsetType = msgspec.UNSET
    group_ids: GroupIds | msgspec.UnsetType = msgspec.UNSET
    # PUT /selection only: the removals the admin confirmed in the preview of this very selection.
    confirmed_preview: ConfirmedPreview | msgspec.UnsetType = msgspec.UNSET


class RulesInput(msgspec.Struct, frozen=True, kw_only=True, rename="camel", forbid_unknown_fields=True):
    """PUT /rules: the tenant's own exclusion rules (null or left out: none)."""

    upn_patterns: (
        Annotated[
            list[str],
            msgspec.Meta(
                max_length=MAX_UPN_PATTERNS,
                description="fnmatch patterns against the UPN and its part before '@' (e.g. 'svc-*'); "
                "a pattern that matches everyone is refused.",
            ),
        ]
        | None
    ) = None
    excluded_users: (
        Annotated[
            list[str],
            msgspec.Meta(
                max_length=MAX_EXCLUDED_USERS, description="Object ids or UPNs kept off the platform."
            ),
        ]
        | None
    ) = None
    exclusion_group_id: (
        Annotated[str, msgspec.Meta(description="A group whose members (nested included) are kept off.")]
        | None
    ) = None
    include_external_members: bool | None = None  # members of other organisations (#EXT#); default false
    exclude_service_accounts: bool | None = None  # the built-in service-account patterns; default true
    exclude_shared_mailboxes: bool | None = None  # shared, room and equipment mailboxes; default true


class TenantSaved(TenantView, frozen=True, kw_only=True, rename="camel"):
    """A saved tenant; when its removal guard changed, a preview of what the next run would do."""

    preview: Run | None = None


class RulesSaved(ExclusionRules, frozen=True, kw_only=True, rename="camel"):
    """Saved rules with their version, the preview of what they change and the run that applies them."""

    version: int
    preview: Run
    run: Run


class SelectionSaved(Selection, frozen=True, kw_only=True, rename="camel"):
    """The saved selection with the run that applies it."""

    run: Run


class AccessProblem(enum.StrEnum):
    """Why Microsoft 365 refuses the app for a tenant, as the admin has to act on it."""

    NOT_CONSENTED = "notConsented"  # no admin consent, consent revoked, or the app was deleted
    PERMISSION_MISSING = "permissionMissing"  # signed in, but a Graph permission is not granted
    TENANT_NOT_FOUND = "tenantNotFound"  # Entra ID does not know the tenant id
    CREDENTIAL_REJECTED = "credentialRejected"  # the app's own credential is wrong: the operator's to fix
    BLOCKED = "blocked"  # a Conditional Access policy or a disabled app stops the sign-in


class ConnectionState(enum.StrEnum):
    """A tenant's connection as the Connection panel shows it."""

    CONNECTED = "connected"
    PERMISSION_MISSING = "permissionMissing"
    NOT_CONSENTED = "notConsented"
    TENANT_NOT_FOUND = "tenantNotFound"
    CREDENTIAL_REJECTED = "credentialRejected"
    BLOCKED = "blocked"


class PermissionCheck(msgspec.Struct, frozen=True, kw_only=True, rename="camel"):
    """Whether one Graph permission works in the tenant."""

    permission: str
    reads: str  # groups | members | users | mailboxSettings
    ok: bool
    required: bool
    detail: str | None = None


class Connection(msgspec.Struct, frozen=True, kw_only=True, rename="camel"):
    """Which Graph permissions work in a tenant, with the admin-consent link when one does not."""

    tenant_id: str
    ok: bool  # every required permission works
    state: ConnectionState
    checks: list[PermissionCheck]
    missing_permissions: list[str]  # required permissions that do not work (all of them without consent)
    admin_consent_url: str | None
    detail: str | None = None  # what is wrong and who can fix it, when not connected
    note: str | None = None


class UserRef(msgspec.Struct, frozen=True, kw_only=True, rename="camel"):
    """A directory user, named."""

    id: str
    user_principal_name: str
    display_name: str | None
    mail: str | None = None


class UserRefList(msgspec.Struct, frozen=True, kw_only=True):
    """Directory users found by a search ("Why is this user not synced?" with a name)."""

    value: list[UserRef]


class ReasonText(msgspec.Struct, frozen=True, kw_only=True):
    """A reason code with one sentence the admin can act on, and the exact rule that matched."""

    code: str
    message: str
    rule: str | None = None  # e.g. "UPN pattern 'svc-*'", "listed in excludedUsers as 'x@y'"


class Explanation(msgspec.Struct, frozen=True, kw_only=True, rename="camel"):
    """Why a user is, or is not, on the platform (read live from Graph and the roster)."""

    user: UserRef
    included: bool
    reasons: list[ReasonText]
    groups: list[SelectedGroup]
    roster_status: Annotated[str, msgspec.Meta(extra_json_schema={"enum": ["active", "removed", "absent"]})]
    mailbox_purpose_source: MailboxPurposeSource
    # When the roster and the rules disagree (e.g. an undo put back a user the rules exclude): why,
    # and what the next refresh does.
    note: str | None = None


class Page(msgspec.Struct, frozen=True, kw_only=True, rename="camel"):
    """Base of a page of items; `nextCursor` is null on the last page."""

    next_cursor: str | None = None


class RunPage(Page, frozen=True, kw_only=True, rename="camel"):
    """Runs, newest first."""

    value: list[Run]


class UserPage(Page, frozen=True, kw_only=True, rename="camel"):
    """Roster rows in id order."""

    value: list[RosterUser]


class ExcludedPage(Page, frozen=True, kw_only=True, rename="camel"):
    """Users the last full run kept off the platform, in id order, with the exact rule of each reason."""

    value: list[ExcludedUser]
    as_of: datetime | None = None  # when that run read the directory (the tenant's last full refresh)


class RulesView(ExclusionRules, frozen=True, kw_only=True, rename="camel"):
    """A tenant's rules as GET shows them, with how many users of the latest full run each optional
    exclusion matches (`optionalMatches`, from run `optionalMatchesRun`). PUT takes the rules alone."""

    optional_matches: dict[str, int] | None = None
    optional_matches_run: str | None = None


class AuditPage(Page, frozen=True, kw_only=True, rename="camel"):
    """Audit records, oldest first."""

    value: list[AuditRecord]


class ChangeFeed(msgspec.Struct, frozen=True, kw_only=True):
    """Roster changes in order; `next` is the cursor to go on from (it survives restarts)."""

    value: list[AuditRecord]
    next: str | None


class TenantList(msgspec.Struct, frozen=True, kw_only=True):
    """Every tenant the caller may see, with its last run."""

    value: list[TenantView]


# --- who may call: callers, partner grants, onboarding ---------------------------------------

NOT_CONSENTED = "notConsented"  # Tenant.consent_state when the app's consent is missing


class CallerKind(enum.StrEnum):
    """Who is calling, as sync.auth decides it from the principal."""

    OPERATOR = "operator"  # app role Sync.Operator in the home tenant: every tenant
    CUSTOMER_ADMIN = "customerAdmin"  # an admin directory role (wids) in their own tenant: that tenant
    PARTNER = "partner"  # anyone else: the tenants an operator granted (possibly none)


class GrantKind(enum.StrEnum):
    """Whom a grant names: one user (object id) or the members of a group (the token's groups claim)."""

    USER = "user"
    GROUP = "group"


GrantTenants = Annotated[
    list[Annotated[str, msgspec.Meta(extra_json_schema={"pattern": GUID_PATTERN})]],
    msgspec.Meta(max_length=MAX_GRANT_TENANTS, description="The customer tenants the principal may act on."),
]


class Grant(msgspec.Struct, frozen=True, kw_only=True, rename="camel"):
    """A partner's access to a list of customer tenants, given by an operator."""

    principal_tenant_id: str  # the partner's own tenant (the token's tid)
    principal_id: str  # user object id (oid) or group id (groups claim)
    kind: GrantKind
    tenants: tuple[str, ...]
    name: str | None = None  # a label for people: "tech@partner-msp.example", "MSP helpdesk"
    granted_by: str | None = None
    granted_at: datetime | None = None


class GrantInput(msgspec.Struct, frozen=True, kw_only=True, rename="camel", forbid_unknown_fields=True):
    """PUT /grants/{principalTenantId}/{principalId}: the tenants this principal may act on (replaces)."""

    kind: GrantKind
    tenants: GrantTenants
    name: Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_NAME_LENGTH)] | None = None


class GrantList(msgspec.Struct, frozen=True, kw_only=True):
    """Every grant."""

    value: list[Grant]


class TenantRef(msgspec.Struct, frozen=True, kw_only=True, rename="camel"):
    """A tenant the caller may see, named."""

    id: str
    display_name: str
    consent_state: str | None = None


class WhoAmI(msgspec.Struct, frozen=True, kw_only=True, rename="camel"):
    """The signed-in caller as the page shows them, with the tenants they may act on."""

    name: str
    user_principal_name: str | None
    tenant_id: str
    object_id: str
    kind: CallerKind
    by: str  # how the caller's changes are recorded (updatedBy, requestedBy, grantedBy)
    tenants: list[TenantRef]
    connect_tenant_id: str | None = None  # what "Connect Microsoft 365" onboards (own tid, or organizations)
    note: str | None = None  # why the caller sees nothing, when they do not


ConsentTarget = Annotated[
    str,
    msgspec.Meta(
        pattern="^(?:organizations|" + GUID_PATTERN.strip("^$") + ")$",
        description="The tenant to connect: its GUID, or `organizations` (operators only: the "
        "administrator who accepts picks the organization).",
    ),
]


class ConsentStartInput(
    msgspec.Struct, frozen=True, kw_only=True, rename="camel", forbid_unknown_fields=True
):
    """POST /consent/start: which tenant to connect, and the name to register it under."""

    tenant_id: ConsentTarget
    display_name: DisplayName | None = None


class ConsentStarted(msgspec.Struct, frozen=True, kw_only=True, rename="camel"):
    """Where to send the administrator: Entra's admin-consent page, with a one-time state."""

    url: str
    tenant_id: str
    expires_at: datetime


class ConsentOutcome(enum.StrEnum):
    """How an admin-consent round trip ended, as the page is told (`?consent=`)."""

    GRANTED = "granted"
    REFUSED = "refused"  # Entra answered error=... (declined, or not allowed)
    INVALID = "invalid"  # unknown, used or expired state, or a reply that does not fit the request
