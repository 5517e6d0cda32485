"""Who may be on the training platform, and the reason when not.

This module is the one place that decides eligibility. A directory user is
excluded for every reason below that applies, reported in this fixed order:

1. ``guest``: ``userType`` is ``Guest`` (any case) or the UPN contains ``#EXT#``.
2. ``disabled``: ``accountEnabled`` is false (sign-in blocked). ``None`` means the
   reader did not get the attribute; Graph always returns it when it is
   ``$select``-ed, so an unknown value is treated as *enabled*: removing users on
   missing data would break the "nothing is removed on partial knowledge" rule.
3. ``unlicensed``: no entry in ``assignedLicenses``.
4. ``sharedMailbox``: a shared, room or equipment mailbox (see below).
5. ``serviceAccount``: the UPN's local part matches a built-in service-account
   pattern (see `SERVICE_ACCOUNT_PATTERNS`).
6. ``rule``: excluded by the tenant's own rules: a UPN pattern, a listed user, or
   membership of the tenant's exclusion group.

Counting: a run counts each excluded user once, under their *first* reason
(`Verdict.primary`), so ``eligible + sum(counts.excluded) == members`` holds.
A typical shared mailbox is also sign-in-blocked and unlicensed, so it is
usually counted under ``disabled``; `Verdict.reasons` still lists every reason.

Shared mailboxes. When the tenant granted ``MailboxSettings.Read`` the reader
fetches ``mailboxSettings.userPurpose`` and it decides: ``shared``, ``room`` and
``equipment`` are excluded; ``user`` and ``linked`` (a person's mailbox hosted in
a resource forest) are people and stay; ``unknown``, ``others``, any future value,
or no mailbox at all are not a mailbox reason (the other rules still apply).
Without that permission a heuristic stands in: a user is taken for a shared
mailbox when they have neither a given name nor a surname, have a mail address,
and a word of their UPN local part or display name is one of
`SHARED_MAILBOX_WORDS` (room, conference, meeting, shared, mailbox, equipment,
projector, resource, calendar, reception, info, support, helpdesk, ...). Words
are whole tokens: the text is split at punctuation, spaces, lower-to-upper case
changes and letter/digit boundaries, so "ConfRoom1" gives "conf", "room", "1"
while a person called "Roomy" or "Infante" never matches. People almost always
carry a given name or surname, which is what keeps false positives low.
"""

from __future__ import annotations

import enum
import fnmatch
import functools
import re
from collections.abc import Collection, Iterable, Mapping
from typing import NamedTuple

import msgspec

from sync.models import (
    DirectoryUser,
    EligibleUser,
    ExcludedCounts,
    ExcludedUser,
    ExclusionRules,
    MailboxPurposeSource,
    ReasonText,
    RunGroup,
    SelectedGroup,
    SelectionMode,
)
from sync.validation import MAX_EXCLUDED_USERS, MAX_PATTERN_LENGTH, MAX_UPN_PATTERNS, is_object_id

__all__ = [
    "MAX_EXCLUDED_USERS",
    "MAX_PATTERN_LENGTH",
    "MAX_UPN_PATTERNS",
    "SERVICE_ACCOUNT_PATTERNS",
    "SHARED_MAILBOX_PURPOSES",
    "SHARED_MAILBOX_WORDS",
    "Classification",
    "ExclusionReason",
    "ExclusionRules",
    "InvalidRules",
    "MailboxPurposeSource",
    "Verdict",
    "classify_members",
    "classify_user",
    "count_exclusions",
    "explain_reason",
    "explain_user",
    "is_service_account",
    "looks_like_shared_mailbox",
    "matches_tenant_rules",
    "parse_exclusion_rules",
    "purpose_candidates",
]


class ExclusionReason(enum.StrEnum):
    """Why a user is not on the platform; the values are the run's ``counts.excluded`` keys.

    The declaration order is the order reasons are reported in.
    """

    GUEST = "guest"
    EXTERNAL_MEMBER = "externalMember"
    DISABLED = "disabled"
    UNLICENSED = "unlicensed"
    SHARED_MAILBOX = "sharedMailbox"
    SERVICE_ACCOUNT = "serviceAccount"
    RULE = "rule"


# ---------------------------------------------------------------------------
# Built-in rules
# ---------------------------------------------------------------------------

# Matched (fnmatch, case-insensitive) against the UPN's local part only, never the
# domain. Every pattern needs a separator or a fixed word next to the wildcard so a
# person's name cannot match by accident ("Svcetlana", "Servicemaster" stay people).
# "sync_*" is the Entra Connect directory-sync account ("Sync_SERVER_1a2b3c...").
# Left out on purpose: "sa-*" and "adm-*" (initials and admin accounts belong to
# people who should be trained), "admin*" (too broad).
SERVICE_ACCOUNT_PATTERNS: tuple[str, ...] = (
    "svc-*",
    "svc_*",
    "svc.*",
    "*-svc",
    "*_svc",
    "*.svc",
    "service-*",
    "service_*",
    "service.*",
    "noreply*",
    "no-reply*",
    "no_reply*",
    "no.reply*",
    "donotreply*",
    "do-not-reply*",
    "do_not_reply*",
    "do.not.reply*",
    "sync_*",
)

# mailboxSettings.userPurpose values that are not a person's mailbox. "linked" is
# a person's mailbox in a resource forest, so it is deliberately not here.
SHARED_MAILBOX_PURPOSES: frozenset[str] = frozenset({"shared", "room", "equipment"})

# Heuristic words (whole tokens, lower case) that name a resource or a team inbox
# rather than a person. Used only without mailboxSettings and only for users with
# neither given name nor surname. "noreply" is not here: the service-account
# patterns already catch it.
SHARED_MAILBOX_WORDS: frozenset[str] = frozenset(
    {
        "room",
        "rooms",
        "boardroom",
        "meetingroom",
        "confroom",
        "conf",
        "conference",
        "meeting",
        "shared",
        "sharedmailbox",
        "mailbox",
        "inbox",
        "equipment",
        "projector",
        "resource",
        "calendar",
        "reception",
        "info",
        "support",
        "helpdesk",
    }
)


# Split points for the heuristic: non-alphanumerics, "confRoom", "Room1", "1Room".
_WORD = re.compile(r"[A-Z]+(?![a-z])|[A-Z]?[a-z]+|[0-9]+")

_REASON_ORDER: tuple[ExclusionReason, ...] = tuple(ExclusionReason)

_EXPLANATIONS: dict[ExclusionReason, str] = {
    ExclusionReason.GUEST: (
        "The user is a guest (external) account, and guest users are not included in sync; "
        "add them as a member user of your tenant if they need training."
    ),
    ExclusionReason.EXTERNAL_MEMBER: (
        "The user is an external member: a member account that belongs to another organisation "
        "(#EXT# in the user name, e.g. from cross-tenant synchronisation). External members are "
        "excluded unless your organisation's rules include them (includeExternalMembers)."
    ),
    ExclusionReason.DISABLED: (
        "The account is blocked from signing in or disabled; unblock it in the Microsoft 365 "
        "admin center (Users > Active users) and refresh."
    ),
    ExclusionReason.UNLICENSED: (
        "The user has no Microsoft 365 license with an active subscription (no assigned service plan "
        "is enabled: none assigned, or the subscription is suspended or deleted); assign one in the "
        "Microsoft 365 admin center and refresh."
    ),
    ExclusionReason.SHARED_MAILBOX: (
        "The account is a shared, room or equipment mailbox rather than a person, so it is "
        "excluded; if it is a person, convert it to a regular user mailbox."
    ),
    ExclusionReason.SERVICE_ACCOUNT: (
        "The user name looks like a service account (for example svc-..., noreply...), which "
        "is excluded; rename the account if it belongs to a person."
    ),
    ExclusionReason.RULE: (
        "Your organisation's exclusion rules exclude this user (a user-name pattern, the "
        "excluded-users list or the exclusion group); change the rules to include them."
    ),
}


def _local_part(upn: str) -> str:
    return upn.partition("@")[0]


@functools.lru_cache(maxsize=1)
def _service_account_regex() -> re.Pattern[str]:
    return re.compile("|".join(fnmatch.translate(p) for p in SERVICE_ACCOUNT_PATTERNS))


def is_service_account(user_principal_name: str) -> bool:
    """True when the UPN's local part matches a built-in `SERVICE_ACCOUNT_PATTERNS` entry."""
    local = _local_part(user_principal_name).lower()
    return _service_account_regex().match(local) is not None


def _words(text: str) -> list[str]:
    return [w.lower() for w in _WORD.findall(text)]


def looks_like_shared_mailbox(user: DirectoryUser) -> bool:
    """The heuristic used without mailboxSettings: no given name nor surname, a mail address,
    and a resource word (`SHARED_MAILBOX_WORDS`) in the UPN local part or display name."""
    if (user.given_name or "").strip() or (user.surname or "").strip():
        return False
    if not (user.mail or "").strip():
        return False
    words = _words(_local_part(user.user_principal_name))
    if user.display_name:
        words += _words(user.display_name)
    return any(w in SHARED_MAILBOX_WORDS for w in words)


# ---------------------------------------------------------------------------
# Tenant rules
# ---------------------------------------------------------------------------


# SKU part numbers a tenant rule may name instead of SKU ids ("Product names and service plan
# identifiers for licensing"); any other SKU is named by its id (assignedLicenses skuId).
KNOWN_SKUS: dict[str, str] = {
    "SPE_E3": "05e9a617-0261-4cee-bb44-138d3ef5d965",  # Microsoft 365 E3
    "SPE_E5": "06ebc4ee-1bb5-47dd-8120-11324bc54e06",  # Microsoft 365 E5
    "SPB": "cbdc14ab-d96c-4c30-b9f4-6ada7cdc1d46",  # Microsoft 365 Business Premium
    "O365_BUSINESS_PREMIUM": "f245ecc8-75af-4f8e-b61f-27d8114de5f3",  # Microsoft 365 Business Standard
    "O365_BUSINESS_ESSENTIALS": "3b555118-da6a-4418-894f-7df1e2096870",  # Microsoft 365 Business Basic
    "ENTERPRISEPACK": "6fd2c87f-b296-42f0-b197-1e91e994b900",  # Office 365 E3
    "ENTERPRISEPREMIUM": "c7df2760-2c81-4ef7-b578-5b5392b571df",  # Office 365 E5
    "STANDARDPACK": "18181a46-0d4e-45cd-891e-60aabd171b4e",  # Office 365 E1
    "SPE_F1": "66b55226-6b4f-492c-910c-a3b7a3c9d993",  # Microsoft 365 F3
}
_SKU_NAMES = {sku: name for name, sku in KNOWN_SKUS.items()}


def sku_name(sku_id: str) -> str:
    """A SKU's part number when it is a well-known one, else its id."""
    return _SKU_NAMES.get(sku_id.lower(), sku_id)


def _sku_id(value: str, index: int) -> str:
    text = value.strip()
    if is_object_id(text):
        return text.lower()
    known = KNOWN_SKUS.get(text.upper())
    if known is None:
        raise InvalidRules(
            f"requiredSkus[{index}] ({text[:64]!r}) is neither a SKU id (a GUID, assignedLicenses skuId) "
            f"nor one of {', '.join(sorted(KNOWN_SKUS))}."
        )
    return known


# UPNs of every shape a rule could meet (short, dotted, digits, subdomains; a UPN suffix is a domain,
# so it always has a dot): a pattern that matches
# each of them, whole or by the part before '@', matches every user of any tenant.
_PROBE_UPNS = ("a@b.cc", "zq9@x.uk", "first.last@mail.example.com", "Q_1-x@d.io", "w@y.ru")


def matches_every_upn(pattern: str) -> bool:
    """Whether a UPN pattern would exclude everyone ('*', '*@*', '?*', '*.*' and the like)."""
    regex = re.compile(fnmatch.translate(pattern.lower()), re.DOTALL)
    return all(regex.match(upn.lower()) or regex.match(_local_part(upn).lower()) for upn in _PROBE_UPNS)


class InvalidRules(ValueError):
    """A tenant's exclusion rules are malformed; the message says what to fix."""


class _CompiledRules(NamedTuple):
    pattern: re.Pattern[str] | None
    users: frozenset[str]


@functools.lru_cache(maxsize=64)
def _compile_rules(patterns: tuple[str, ...], users: tuple[str, ...]) -> _CompiledRules:
    # One alternation instead of a loop of fnmatch calls: 100 patterns x 100,000
    # users would otherwise be 20 million calls per run.
    regex = (
        re.compile("|".join(fnmatch.translate(p.lower()) for p in patterns), re.DOTALL) if patterns else None
    )
    return _CompiledRules(regex, frozenset(u.lower() for u in users))


# The engine classifies every user of a run with the same rules object; checking
# identity first spares hashing up to 1,100 strings per user for the lru_cache key.
_last_compiled: tuple[ExclusionRules, _CompiledRules] | None = None


def _compiled_for(rules: ExclusionRules) -> _CompiledRules:
    global _last_compiled
    last = _last_compiled  # one read: another thread may swap it, which is harmless
    if last is not None and last[0] is rules:
        return last[1]
    compiled = _compile_rules(rules.upn_patterns, rules.excluded_users)
    _last_compiled = (rules, compiled)
    return compiled


def matches_tenant_rules(user: DirectoryUser, rules: ExclusionRules) -> bool:
    """True when a UPN pattern or the excluded-users list names this user (group membership aside)."""
    if not rules.upn_patterns and not rules.excluded_users:
        return False
    compiled = _compiled_for(rules)
    upn = user.user_principal_name.lower()
    if compiled.users and (user.id.lower() in compiled.users or upn in compiled.users):
        return True
    if compiled.pattern is not None:
        return bool(compiled.pattern.match(upn) or compiled.pattern.match(_local_part(upn)))
    return False


def _string_list(value: object, field: str) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str) or not isinstance(value, (list, tuple)):
        raise InvalidRules(f"{field} must be a list of strings.")
    out: list[str] = []
    for i, item in enumerate(value):
        if not isinstance(item, str):
            raise InvalidRules(f"{field}[{i}] must be a string.")
        out.append(item)
    return out


def _dedupe(items: Iterable[str]) -> tuple[str, ...]:
    seen: set[str] = set()
    out: list[str] = []
    for item in items:
        key = item.lower()
        if key not in seen:
            seen.add(key)
            out.append(item)
    return tuple(out)


def _validated(rules: ExclusionRules) -> ExclusionRules:
    problems: list[str] = []
    patterns = [p.strip() for p in rules.upn_patterns]
    if len(patterns) > MAX_UPN_PATTERNS:
        raise InvalidRules(
            f"upnPatterns has {len(patterns)} patterns; at most {MAX_UPN_PATTERNS} are allowed."
        )
    for i, p in enumerate(patterns):
        if not p:
            problems.append(f"upnPatterns[{i}] is empty")
        elif len(p) > MAX_PATTERN_LENGTH:
            problems.append(
                f"upnPatterns[{i}] is {len(p)} characters long; at most {MAX_PATTERN_LENGTH} are allowed"
            )
        elif matches_every_upn(p):
            # Would exclude every user of the tenant: certainly a mistake.
            problems.append(f"upnPatterns[{i}] ({p!r}) would exclude every user")
    users = [u.strip() for u in rules.excluded_users]
    if len(users) > MAX_EXCLUDED_USERS:
        raise InvalidRules(
            f"excludedUsers has {len(users)} entries; at most {MAX_EXCLUDED_USERS} are allowed."
        )
    for i, u in enumerate(users):
        if not u:
            problems.append(f"excludedUsers[{i}] is empty")
        elif len(u) > MAX_PATTERN_LENGTH:
            problems.append(
                f"excludedUsers[{i}] is {len(u)} characters long; at most {MAX_PATTERN_LENGTH} are allowed"
            )
    if problems:
        raise InvalidRules("; ".join(problems) + ".")
    group = rules.exclusion_group_id
    if group is not None:
        group = group.strip()
        if not group:
            group = None
        elif not is_object_id(group):
            raise InvalidRules(
                f"exclusionGroupId {group!r} is not a group object id "
                "(expected a GUID such as 00000000-0000-0000-0000-000000000000)."
            )
        else:
            group = group.lower()
    return ExclusionRules(
        upn_patterns=_dedupe(patterns),
        excluded_users=_dedupe(users),
        exclusion_group_id=group,
        include_external_members=rules.include_external_members,
        required_skus=_dedupe(_sku_id(sku, i) for i, sku in enumerate(rules.required_skus)),
        exclude_service_accounts=rules.exclude_service_accounts,
        exclude_shared_mailboxes=rules.exclude_shared_mailboxes,
    )


_RULE_FIELDS = {
    "upnPatterns",
    "excludedUsers",
    "exclusionGroupId",
    "includeExternalMembers",
    "requiredSkus",
    "excludeServiceAccounts",
    "excludeSharedMailboxes",
}
_SWITCHES = ("includeExternalMembers", "excludeServiceAccounts", "excludeSharedMailboxes")


def parse_exclusion_rules(obj: object) -> ExclusionRules:
    """Validate rules from JSON (bytes/str), a camelCase mapping, an `ExclusionRules` or None.

    Raises `InvalidRules` with a message fit for a 400 response or a CLI error.
    """
    if obj is None:
        return ExclusionRules()
    if isinstance(obj, ExclusionRules):
        return _validated(obj)
    if isinstance(obj, (bytes, bytearray, str)):
        try:
            obj = msgspec.json.decode(obj)
        except msgspec.DecodeError as exc:
            raise InvalidRules(f"Exclusion rules are not valid JSON: {exc}.") from None
        if obj is None:
            return ExclusionRules()
    if not isinstance(obj, Mapping):
        raise InvalidRules(
            "Exclusion rules must be an object with upnPatterns, excludedUsers and exclusionGroupId."
        )
    unknown = sorted(str(k) for k in obj if k not in _RULE_FIELDS)
    if unknown:
        raise InvalidRules(
            f"Unknown field(s) in exclusion rules: {', '.join(unknown)}; expected "
            f"{', '.join(sorted(_RULE_FIELDS))}."
        )
    group = obj.get("exclusionGroupId")
    if group is not None and not isinstance(group, str):
        raise InvalidRules("exclusionGroupId must be a string or null.")
    wrong = [name for name in _SWITCHES if obj.get(name) is not None and not isinstance(obj.get(name), bool)]
    if wrong:
        raise InvalidRules(f"{' and '.join(wrong)} must be true or false.")
    return _validated(
        ExclusionRules(
            upn_patterns=tuple(_string_list(obj.get("upnPatterns"), "upnPatterns")),
            excluded_users=tuple(_string_list(obj.get("excludedUsers"), "excludedUsers")),
            exclusion_group_id=group,
            include_external_members=bool(obj.get("includeExternalMembers")),
            required_skus=tuple(_string_list(obj.get("requiredSkus"), "requiredSkus")),
            exclude_service_accounts=obj.get("excludeServiceAccounts") is not False,
            exclude_shared_mailboxes=obj.get("excludeSharedMailboxes") is not False,
        )
    )


# ---------------------------------------------------------------------------
# Verdicts
# ---------------------------------------------------------------------------


class Verdict(msgspec.Struct, frozen=True, gc=False):
    """Whether a user may be on the platform and, when not, every reason in the fixed order.

    `unknown` names the attributes Graph left out: then neither is known, and the user is kept
    exactly as the roster has them (never removed, never added on partial knowledge).
    """

    included: bool
    reasons: tuple[ExclusionReason, ...] = ()
    unknown: tuple[str, ...] = ()

    @property
    def primary(self) -> ExclusionReason | None:
        """The first reason: a run counts each excluded user once, under this reason."""
        return self.reasons[0] if self.reasons else None


_INCLUDED = Verdict(included=True)


def _is_guest(user: DirectoryUser) -> bool:
    return (user.user_type or "").lower() == "guest"


def _is_external_member(user: DirectoryUser) -> bool:
    # A member account of another organisation (cross-tenant synchronisation, multi-tenant
    # organisations): userType Member, yet the #EXT# principal name of an external identity.
    return (user.user_type or "").lower() == "member" and "#ext#" in user.user_principal_name.lower()


def _is_unlicensed(user: DirectoryUser, rules: ExclusionRules) -> bool:
    if user.licensed is False:
        return True
    return bool(rules.required_skus) and not set(user.sku_ids) & set(rules.required_skus)


def _is_shared_mailbox(
    user: DirectoryUser, mailbox_purpose: str | None, purpose_source: MailboxPurposeSource
) -> bool:
    if purpose_source is MailboxPurposeSource.MAILBOX_SETTINGS:
        return mailbox_purpose is not None and mailbox_purpose.lower() in SHARED_MAILBOX_PURPOSES
    return looks_like_shared_mailbox(user)


def classify_user(
    user: DirectoryUser,
    *,
    rules: ExclusionRules,
    mailbox_purpose: str | None,
    purpose_source: MailboxPurposeSource,
    excluded_by_group: bool = False,
) -> Verdict:
    """Decide whether `user` may be on the platform; list every exclusion reason in order.

    `mailbox_purpose` is Graph's ``mailboxSettings.userPurpose`` and is read only when
    `purpose_source` is ``mailboxSettings``; `excluded_by_group` says the user is a
    (transitive) member of the tenant's exclusion group.
    """
    missing = user.missing_attributes
    if missing:
        return Verdict(included=False, unknown=missing)
    reasons: list[ExclusionReason] = []
    if _is_guest(user):
        reasons.append(ExclusionReason.GUEST)
    if _is_external_member(user) and not rules.include_external_members:
        reasons.append(ExclusionReason.EXTERNAL_MEMBER)
    if user.account_enabled is False:
        reasons.append(ExclusionReason.DISABLED)
    if _is_unlicensed(user, rules):
        reasons.append(ExclusionReason.UNLICENSED)
    if rules.exclude_shared_mailboxes and _is_shared_mailbox(user, mailbox_purpose, purpose_source):
        reasons.append(ExclusionReason.SHARED_MAILBOX)
    if rules.exclude_service_accounts and is_service_account(user.user_principal_name):
        reasons.append(ExclusionReason.SERVICE_ACCOUNT)
    if excluded_by_group or matches_tenant_rules(user, rules):
        reasons.append(ExclusionReason.RULE)
    if not reasons:
        return _INCLUDED
    return Verdict(included=False, reasons=tuple(reasons))


@functools.lru_cache(maxsize=64)
def _each_pattern(patterns: tuple[str, ...]) -> tuple[tuple[str, re.Pattern[str]], ...]:
    return tuple((p, re.compile(fnmatch.translate(p.lower()), re.DOTALL)) for p in patterns)


def _pattern_of(upn: str, patterns: tuple[str, ...]) -> str | None:
    """The first pattern matching the whole UPN or its local part (case-insensitive)."""
    lowered = upn.lower()
    for pattern, regex in _each_pattern(patterns):
        if regex.match(lowered) or regex.match(_local_part(lowered)):
            return pattern
    return None


def _resource_word(user: DirectoryUser) -> str | None:
    words = _words(_local_part(user.user_principal_name)) + _words(user.display_name or "")
    return next((w for w in words if w in SHARED_MAILBOX_WORDS), None)


def matched_rule(
    user: DirectoryUser,
    reason: ExclusionReason,
    *,
    rules: ExclusionRules,
    mailbox_purpose: str | None,
    purpose_source: MailboxPurposeSource,
    excluded_by_group: bool = False,
) -> str:
    """The exact rule behind `reason` for this user: which pattern, which list entry, which value."""
    if reason is ExclusionReason.GUEST:
        return f"userType is {user.user_type}"
    if reason is ExclusionReason.EXTERNAL_MEMBER:
        return "userType Member with #EXT# in the user principal name; includeExternalMembers is off"
    if reason is ExclusionReason.DISABLED:
        return "accountEnabled is false"
    if reason is ExclusionReason.UNLICENSED:
        if user.licensed is False:
            return "no assigned service plan is Enabled or Warning (no licence, or its subscription lapsed)"
        return "requiredSkus: none of " + ", ".join(sku_name(sku) for sku in rules.required_skus)
    if reason is ExclusionReason.SHARED_MAILBOX:
        if purpose_source is MailboxPurposeSource.MAILBOX_SETTINGS:
            return f"mailboxSettings.userPurpose is {mailbox_purpose}"
        return f"name heuristic: no given name or surname, and the word '{_resource_word(user)}'"
    if reason is ExclusionReason.SERVICE_ACCOUNT:
        local = _local_part(user.user_principal_name).lower()
        pattern = next((p for p, rx in _each_pattern(SERVICE_ACCOUNT_PATTERNS) if rx.match(local)), "?")
        return f"built-in service-account pattern '{pattern}'"
    matched: list[str] = []
    if excluded_by_group:
        matched.append(f"member of the exclusion group {rules.exclusion_group_id}")
    listed = {entry.lower(): entry for entry in rules.excluded_users}
    entry = listed.get(user.id.lower()) or listed.get(user.user_principal_name.lower())
    if entry is not None:
        matched.append(f"listed in excludedUsers as '{entry}'")
    upn_pattern = _pattern_of(user.user_principal_name, rules.upn_patterns)
    if upn_pattern is not None:
        matched.append(f"UPN pattern '{upn_pattern}'")
    return "; ".join(matched) or "a tenant rule"


def count_exclusions(verdicts: Iterable[Verdict]) -> dict[str, int]:
    """Excluded users per primary reason, every reason key present (zeros included)."""
    counts = {reason.value: 0 for reason in _REASON_ORDER}
    for verdict in verdicts:
        primary = verdict.primary
        if primary is not None:
            counts[primary.value] += 1
    return counts


def explain_reason(reason: ExclusionReason | str, rules: ExclusionRules | None = None) -> str:
    """One sentence a customer admin can act on, for "why is this user not synced?"."""
    reason = ExclusionReason(reason)
    if reason is ExclusionReason.UNLICENSED and rules is not None and rules.required_skus:
        names = ", ".join(sku_name(sku) for sku in rules.required_skus)
        return (
            f"Your organisation's rules require one of these licences: {names}. The user has none of "
            "them with an active subscription; assign one in the Microsoft 365 admin center and refresh."
        )
    return _EXPLANATIONS[reason]


UNKNOWN_VERDICT = (
    "Microsoft Graph did not return {missing} for this user, so whether they may be on the platform is "
    "unknown: a user already on it is kept as they are, a new user is not added, until Graph answers."
)


# ---------------------------------------------------------------------------
# A run's members, classified
# ---------------------------------------------------------------------------


class Classification(msgspec.Struct, frozen=True, kw_only=True):
    """A directory read turned into who stays, who does not and why."""

    eligible: list[EligibleUser]
    verdicts: dict[str, Verdict]
    groups: list[RunGroup]
    purpose_source: MailboxPurposeSource
    purposes_checked: frozenset[str] = frozenset()  # users whose mailbox purpose Graph gave this run
    purpose_unknown: int = 0  # users whose mailbox Graph would not show (judged by the heuristic)
    licensed_by_sku: dict[str, int] = msgspec.field(default_factory=dict)  # eligible users per SKU id
    tenant_count: tuple[int, int] | None = None  # mode all: (Graph's /users/$count, users read)
    excluded_users: list[ExcludedUser] = msgspec.field(default_factory=list)  # with the rule of each reason
    optional_matches: dict[str, int] = msgspec.field(default_factory=dict)  # see RunCounts.optional_matches

    @property
    def unknown(self) -> list[str]:
        """Users whose verdict is unknown (Graph left out an attribute), sorted."""
        return sorted(uid for uid, verdict in self.verdicts.items() if verdict.unknown)

    def excluded_counts(self) -> ExcludedCounts:
        """Excluded users by their first reason."""
        return msgspec.convert(count_exclusions(self.verdicts.values()), ExcludedCounts)


def classify_members(
    users: Mapping[str, DirectoryUser],
    groups_of_user: Mapping[str, tuple[str, ...]],
    *,
    group_names: Mapping[str, str],
    rules: ExclusionRules,
    purposes: Mapping[str, str | None] | None,
    excluded_ids: Collection[str],
    purpose_unknown: Collection[str] = (),
    counted: Mapping[str, int] | None = None,
) -> Classification:
    """Apply the eligibility rules to every member and count per selected group.

    `purposes` are mailbox purposes by user id, or None when the tenant gave none (the heuristic
    decides for everyone); `purpose_unknown` are users whose own mailbox Graph would not show (the
    heuristic decides for them); `excluded_ids` are the members of the tenant's exclusion group;
    `counted` is Graph's own user count of each group (for the short-read rule).
    """
    source = MailboxPurposeSource.HEURISTIC if purposes is None else MailboxPurposeSource.MAILBOX_SETTINGS
    verdicts: dict[str, Verdict] = {}
    eligible: list[EligibleUser] = []
    excluded_users: list[ExcludedUser] = []
    per_group = {gid: [0, 0, 0] for gid in group_names}  # members, eligible, unknown
    excluded_per_group: dict[str, dict[str, int]] = {gid: {} for gid in group_names}
    by_sku: dict[str, int] = {}
    matches = {ExclusionReason.SERVICE_ACCOUNT.value: 0}
    if rules.exclude_shared_mailboxes:
        matches[ExclusionReason.SHARED_MAILBOX.value] = 0
    for uid, user in users.items():
        purpose = purposes.get(uid) if purposes is not None else None
        user_source = MailboxPurposeSource.HEURISTIC if uid in purpose_unknown else source
        by_group = uid in excluded_ids
        verdict = classify_user(
            user, rules=rules, mailbox_purpose=purpose, purpose_source=user_source, excluded_by_group=by_group
        )
        verdicts[uid] = verdict
        if is_service_account(user.user_principal_name) and not verdict.unknown:
            matches[ExclusionReason.SERVICE_ACCOUNT.value] += 1
        if ExclusionReason.SHARED_MAILBOX in verdict.reasons:
            matches[ExclusionReason.SHARED_MAILBOX.value] += 1
        member_of = groups_of_user.get(uid, ())
        primary = verdict.primary
        for gid in member_of:
            tally = per_group.get(gid)  # incremental runs count only the groups they re-read
            if tally is not None:
                tally[0] += 1
                tally[1] += verdict.included
                tally[2] += bool(verdict.unknown)
                if primary is not None:
                    counted = excluded_per_group[gid]
                    counted[primary.value] = counted.get(primary.value, 0) + 1
        if primary is not None:
            excluded_users.append(
                ExcludedUser(
                    id=uid,
                    user_principal_name=user.user_principal_name,
                    display_name=user.display_name,
                    mail=user.mail,
                    department=user.department,
                    reason=primary.value,
                    reasons=tuple(r.value for r in verdict.reasons),
                    rules=tuple(
                        matched_rule(
                            user,
                            r,
                            rules=rules,
                            mailbox_purpose=purpose,
                            purpose_source=user_source,
                            excluded_by_group=by_group,
                        )
                        for r in verdict.reasons
                    ),
                    groups=tuple(gid for gid in member_of if gid in group_names),
                )
            )
        if verdict.included:
            for sku in user.sku_ids:
                by_sku[sku] = by_sku.get(sku, 0) + 1
            eligible.append(
                EligibleUser(
                    id=uid,
                    user_principal_name=user.user_principal_name,
                    display_name=user.display_name,
                    mail=user.mail,
                    department=user.department,
                    job_title=user.job_title,
                    groups=member_of,
                )
            )
    groups = [
        RunGroup(
            id=gid,
            display_name=name,
            members=per_group[gid][0],
            eligible=per_group[gid][1],
            counted=(counted or {}).get(gid),
            excluded=msgspec.convert(excluded_per_group[gid], ExcludedCounts),
            unknown=per_group[gid][2],
        )
        for gid, name in group_names.items()
    ]
    return Classification(
        eligible=eligible,
        verdicts=verdicts,
        groups=groups,
        purpose_source=source,
        purpose_unknown=sum(1 for uid in purpose_unknown if uid in users),
        licensed_by_sku=dict(sorted(by_sku.items())),
        excluded_users=excluded_users,
        optional_matches=matches,
    )


def purpose_candidates(users: Mapping[str, DirectoryUser], rules: ExclusionRules) -> list[str]:
    """Users whose mailbox purpose could still change the verdict (every other rule lets them in);
    none when the tenant does not exclude shared mailboxes."""
    if not rules.exclude_shared_mailboxes:
        return []
    return [
        uid
        for uid, user in users.items()
        if classify_user(
            user, rules=rules, mailbox_purpose=None, purpose_source=MailboxPurposeSource.MAILBOX_SETTINGS
        ).included
    ]


NOT_IN_SELECTED_GROUPS = ReasonText(
    code="notInSelectedGroups",
    message="The user is not a member (directly or through nested groups) of any selected group; "
    "add them to one in the Microsoft 365 admin center.",
)


class UserVerdict(msgspec.Struct, frozen=True, kw_only=True):
    """One user's verdict for "why is this user (not) synced?"."""

    included: bool
    reasons: list[ReasonText]
    groups: list[SelectedGroup]  # the selected groups the user is in


def explain_user(
    user: DirectoryUser,
    *,
    member_of: Collection[str],
    mode: SelectionMode,
    selected: Iterable[SelectedGroup],
    rules: ExclusionRules,
    purposes: Mapping[str, str | None] | None,
    purpose_unknown: Collection[str] = (),
) -> UserVerdict:
    """The same rules a run applies, for one user, with a sentence per reason."""
    classified = classify_members(
        {user.id: user},
        {},
        group_names={},
        rules=rules,
        purposes=purposes,
        excluded_ids={user.id} if rules.exclusion_group_id in member_of else set(),
        purpose_unknown=purpose_unknown,
    )
    verdict = classified.verdicts[user.id]
    exact = (
        dict(zip(verdict.reasons, classified.excluded_users[0].rules, strict=True)) if verdict.reasons else {}
    )
    groups = [group for group in selected if group.id in member_of]
    reasons = [
        ReasonText(code=str(r), message=explain_reason(r, rules), rule=exact.get(r)) for r in verdict.reasons
    ]
    if verdict.unknown:
        reasons.append(
            ReasonText(code="unknown", message=UNKNOWN_VERDICT.format(missing=", ".join(verdict.unknown)))
        )
    in_scope = mode is SelectionMode.ALL or bool(groups)
    if not in_scope:
        reasons.insert(0, NOT_IN_SELECTED_GROUPS)
    return UserVerdict(included=verdict.included and in_scope, reasons=reasons, groups=groups)
