"""Eligibility rules: table-driven cases with hand-built directory users."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest

from sync.eligibility import (
    MAX_EXCLUDED_USERS,
    MAX_PATTERN_LENGTH,
    MAX_UPN_PATTERNS,
    ExclusionReason,
    ExclusionRules,
    InvalidRules,
    MailboxPurposeSource,
    Verdict,
    classify_user,
    count_exclusions,
    explain_reason,
    is_service_account,
    looks_like_shared_mailbox,
    parse_exclusion_rules,
)
from sync.models import DirectoryUser

R = ExclusionReason
NO_RULES = ExclusionRules()
GROUP_ID = "3f2a9c1e-7b4d-4e8a-9c0f-1a2b3c4d5e6f"
E3 = "05e9a617-0261-4cee-bb44-138d3ef5d965"  # SPE_E3
E5 = "06ebc4ee-1bb5-47dd-8120-11324bc54e06"  # SPE_E5


def person(**overrides: Any) -> DirectoryUser:
    """An eligible member user; each case overrides what it tests."""
    fields: dict[str, Any] = {
        "id": "11111111-1111-4111-8111-111111111111",
        "user_principal_name": "adele.vance@contoso.com",
        "display_name": "Adele Vance",
        "given_name": "Adele",
        "surname": "Vance",
        "mail": "adele.vance@contoso.com",
        "user_type": "Member",
        "account_enabled": True,
        "licensed": True,
        "sku_ids": (E3,),
    }
    fields.update(overrides)
    return DirectoryUser(**fields)


def resource(upn: str, display_name: str | None = None, **overrides: Any) -> DirectoryUser:
    """A nameless mailbox-like account (no given name, no surname, mail set)."""
    fields: dict[str, Any] = {"given_name": None, "surname": None, "mail": upn}
    fields.update(overrides)
    return person(user_principal_name=upn, display_name=display_name, **fields)


def classify(
    user: DirectoryUser,
    *,
    rules: ExclusionRules = NO_RULES,
    purpose: str | None = "user",
    source: MailboxPurposeSource = MailboxPurposeSource.MAILBOX_SETTINGS,
    by_group: bool = False,
) -> Verdict:
    return classify_user(
        user, rules=rules, mailbox_purpose=purpose, purpose_source=source, excluded_by_group=by_group
    )


# ---------------------------------------------------------------------------
# Each reason alone, and together
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("user", "kwargs", "reasons"),
    [
        pytest.param(person(), {}, (), id="member-included"),
        pytest.param(person(user_type="Guest"), {}, (R.GUEST,), id="guest-by-userType"),
        pytest.param(person(user_type="guest"), {}, (R.GUEST,), id="guest-userType-any-case"),
        pytest.param(
            person(user_type="Member", user_principal_name="bob_fabrikam.com#EXT#@contoso.onmicrosoft.com"),
            {},
            (R.EXTERNAL_MEMBER,),
            id="external-member-not-a-guest",
        ),
        pytest.param(
            person(user_type="member", user_principal_name="bob_fabrikam.com#ext#@contoso.onmicrosoft.com"),
            {"rules": ExclusionRules(include_external_members=True)},
            (),
            id="external-member-included-by-rule",
        ),
        pytest.param(
            person(user_type="Guest", user_principal_name="bob_fabrikam.com#ext#@contoso.onmicrosoft.com"),
            {"rules": ExclusionRules(include_external_members=True)},
            (R.GUEST,),
            id="guest-stays-out-with-external-members-in",
        ),
        pytest.param(person(account_enabled=False), {}, (R.DISABLED,), id="disabled"),
        pytest.param(person(licensed=False, sku_ids=()), {}, (R.UNLICENSED,), id="unlicensed"),
        pytest.param(
            person(licensed=False),
            {},
            (R.UNLICENSED,),
            id="licence-of-a-suspended-subscription-does-not-count",
        ),
        pytest.param(
            person(sku_ids=(E3,)),
            {"rules": ExclusionRules(required_skus=(E5,))},
            (R.UNLICENSED,),
            id="required-sku-missing",
        ),
        pytest.param(
            person(sku_ids=(E3, E5)),
            {"rules": ExclusionRules(required_skus=(E5,))},
            (),
            id="required-sku-held",
        ),
        pytest.param(person(), {"purpose": "shared"}, (R.SHARED_MAILBOX,), id="shared-mailbox"),
        pytest.param(
            person(user_principal_name="svc-backup@contoso.com"),
            {},
            (R.SERVICE_ACCOUNT,),
            id="service-account",
        ),
        pytest.param(person(), {"by_group": True}, (R.RULE,), id="rule-exclusion-group"),
        pytest.param(
            person(),
            {"rules": ExclusionRules(excluded_users=("adele.vance@contoso.com",))},
            (R.RULE,),
            id="rule-listed-user",
        ),
    ],
)
def test_each_reason_alone(user: DirectoryUser, kwargs: dict[str, Any], reasons: tuple[R, ...]) -> None:
    verdict = classify(user, **kwargs)
    assert verdict.reasons == reasons
    assert verdict.included is (not reasons)
    assert verdict.primary == (reasons[0] if reasons else None)


def test_all_reasons_reported_in_fixed_order() -> None:
    user = person(
        user_principal_name="svc-room_fabrikam.com#EXT#@contoso.onmicrosoft.com",
        user_type="Guest",
        account_enabled=False,
        licensed=False,
    )
    verdict = classify(user, purpose="room", by_group=True)
    assert verdict.reasons == (
        R.GUEST,
        R.DISABLED,
        R.UNLICENSED,
        R.SHARED_MAILBOX,
        R.SERVICE_ACCOUNT,
        R.RULE,
    )
    assert verdict.primary is R.GUEST
    assert not verdict.included


@pytest.mark.parametrize(
    ("overrides", "purpose", "reasons"),
    [
        pytest.param(
            {"account_enabled": False, "licensed": False},
            "shared",
            (R.DISABLED, R.UNLICENSED, R.SHARED_MAILBOX),
            id="typical-shared-mailbox-counts-as-disabled",
        ),
        pytest.param(
            {"licensed": False, "user_principal_name": "noreply@contoso.com"},
            "user",
            (R.UNLICENSED, R.SERVICE_ACCOUNT),
            id="unlicensed-noreply",
        ),
    ],
)
def test_several_reasons(overrides: dict[str, Any], purpose: str, reasons: tuple[R, ...]) -> None:
    verdict = classify(person(**overrides), purpose=purpose)
    assert verdict.reasons == reasons
    assert verdict.primary is reasons[0]


def test_reason_values_are_the_api_keys() -> None:
    assert [r.value for r in ExclusionReason] == [
        "guest",
        "externalMember",
        "disabled",
        "unlicensed",
        "sharedMailbox",
        "serviceAccount",
        "rule",
    ]


# ---------------------------------------------------------------------------
# Service accounts
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("upn", "expected"),
    [
        pytest.param("svc-backup@contoso.com", True, id="svc-dash"),
        pytest.param("SVC_Backup@contoso.com", True, id="svc-underscore-upper"),
        pytest.param("svc.scanner@contoso.com", True, id="svc-dot"),
        pytest.param("backup-svc@contoso.com", True, id="dash-svc-suffix"),
        pytest.param("backup_svc@contoso.com", True, id="underscore-svc-suffix"),
        pytest.param("service-printer@contoso.com", True, id="service-dash"),
        pytest.param("noreply@contoso.com", True, id="noreply"),
        pytest.param("no-reply.billing@contoso.com", True, id="no-reply"),
        pytest.param("DoNotReply@contoso.com", True, id="donotreply"),
        pytest.param("Sync_DC01_1a2b3c4d5e6f@contoso.onmicrosoft.com", True, id="entra-connect-sync"),
        pytest.param("svcetlana.ivanova@contoso.com", False, id="person-svcetlana"),
        pytest.param("svc@contoso.com", False, id="bare-svc-no-separator"),
        pytest.param("servicemaster@contoso.com", False, id="person-servicemaster"),
        pytest.param("jo.svcek@contoso.com", False, id="svc-inside-name"),
        pytest.param("sa-jones@contoso.com", False, id="sa-prefix-not-built-in"),
        pytest.param("adele@svc-contoso.com", False, id="domain-is-not-checked"),
        pytest.param("noreen.replyford@contoso.com", False, id="person-noreen"),
    ],
)
def test_service_account_detection(upn: str, expected: bool) -> None:
    assert is_service_account(upn) is expected
    verdict = classify(person(user_principal_name=upn))
    assert (R.SERVICE_ACCOUNT in verdict.reasons) is expected


# ---------------------------------------------------------------------------
# Tenant rules
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("patterns", "upn", "excluded"),
    [
        pytest.param(("ext-*",), "ext-jane@contoso.com", True, id="local-part-prefix"),
        pytest.param(("EXT-*",), "Ext-Jane@Contoso.com", True, id="local-part-case-insensitive"),
        pytest.param(
            ("*@contractors.contoso.com",), "jane@contractors.contoso.com", True, id="full-upn-domain"
        ),
        pytest.param(
            ("*@CONTRACTORS.contoso.com",),
            "jane@Contractors.Contoso.com",
            True,
            id="full-upn-case-insensitive",
        ),
        pytest.param(("*@contractors.contoso.com",), "jane@contoso.com", False, id="other-domain"),
        pytest.param(("kiosk?",), "kiosk7@contoso.com", True, id="question-mark-one-char"),
        pytest.param(("kiosk?",), "kiosk17@contoso.com", False, id="question-mark-not-two"),
        pytest.param(("test",), "test@contoso.com", True, id="exact-local-part"),
        pytest.param(("test",), "tester@contoso.com", False, id="exact-is-whole-local-part"),
        pytest.param(("temp-*", "*@lab.contoso.com"), "x@lab.contoso.com", True, id="second-pattern"),
        pytest.param((), "ext-jane@contoso.com", False, id="no-patterns"),
    ],
)
def test_upn_patterns(patterns: tuple[str, ...], upn: str, excluded: bool) -> None:
    rules = parse_exclusion_rules({"upnPatterns": list(patterns)})
    verdict = classify(person(user_principal_name=upn), rules=rules)
    assert verdict.reasons == ((R.RULE,) if excluded else ())


@pytest.mark.parametrize(
    ("listed", "excluded"),
    [
        pytest.param("11111111-1111-4111-8111-111111111111", True, id="by-object-id"),
        pytest.param("11111111-1111-4111-8111-111111111111".upper(), True, id="by-object-id-upper"),
        pytest.param("adele.vance@contoso.com", True, id="by-upn"),
        pytest.param("Adele.Vance@CONTOSO.com", True, id="by-upn-any-case"),
        pytest.param("adele.vance", False, id="local-part-alone-is-not-a-user"),
        pytest.param("22222222-2222-4222-8222-222222222222", False, id="other-user"),
    ],
)
def test_listed_users(listed: str, excluded: bool) -> None:
    rules = parse_exclusion_rules({"excludedUsers": [listed]})
    assert classify(person(), rules=rules).reasons == ((R.RULE,) if excluded else ())


def test_exclusion_group_membership_is_a_rule() -> None:
    rules = parse_exclusion_rules({"exclusionGroupId": GROUP_ID})
    assert classify(person(), rules=rules, by_group=True).reasons == (R.RULE,)
    assert classify(person(), rules=rules, by_group=False).included


def test_rule_and_service_account_are_distinct() -> None:
    rules = ExclusionRules(upn_patterns=("svc-*",))
    verdict = classify(person(user_principal_name="svc-backup@contoso.com"), rules=rules)
    assert verdict.reasons == (R.SERVICE_ACCOUNT, R.RULE)


def test_changed_rules_take_effect() -> None:
    user = person(user_principal_name="ext-jane@contoso.com")
    assert classify(user, rules=ExclusionRules(upn_patterns=("ext-*",))).reasons == (R.RULE,)
    assert classify(user, rules=ExclusionRules(upn_patterns=("lab-*",))).included
    assert classify(user, rules=ExclusionRules(upn_patterns=("ext-*",))).reasons == (R.RULE,)


# ---------------------------------------------------------------------------
# Mailboxes
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("purpose", "excluded"),
    [
        pytest.param("shared", True, id="shared"),
        pytest.param("room", True, id="room"),
        pytest.param("equipment", True, id="equipment"),
        pytest.param("Shared", True, id="any-case"),
        pytest.param("user", False, id="user"),
        pytest.param("linked", False, id="linked-is-a-person"),
        pytest.param("unknown", False, id="unknown"),
        pytest.param("others", False, id="others"),
        pytest.param(None, False, id="no-mailbox"),
    ],
)
def test_mailbox_purpose_from_mailbox_settings(purpose: str | None, excluded: bool) -> None:
    verdict = classify(person(), purpose=purpose, source=MailboxPurposeSource.MAILBOX_SETTINGS)
    assert verdict.reasons == ((R.SHARED_MAILBOX,) if excluded else ())


def test_mailbox_settings_wins_over_the_heuristic() -> None:
    room_like = resource("confroom1@contoso.com", "Conference Room 1")
    assert classify(room_like, purpose="user").included
    assert classify(room_like, purpose=None).included


def test_heuristic_ignores_the_purpose_argument() -> None:
    verdict = classify(person(), purpose="shared", source=MailboxPurposeSource.HEURISTIC)
    assert verdict.included


@pytest.mark.parametrize(
    ("user", "expected"),
    [
        pytest.param(resource("confroom1@contoso.com"), True, id="compound-local-part"),
        pytest.param(resource("room-2.01@contoso.com"), True, id="room-with-number"),
        pytest.param(resource("x1@contoso.com", "Conference Room B"), True, id="display-name-words"),
        pytest.param(resource("ConfRoomB@contoso.com"), True, id="camel-case-split"),
        pytest.param(resource("Room101@contoso.com"), True, id="letter-digit-split"),
        pytest.param(
            resource("finance@contoso.com", "Finance Shared Mailbox"), True, id="shared-mailbox-name"
        ),
        pytest.param(resource("info@contoso.com", "Info"), True, id="info-inbox"),
        pytest.param(resource("it.helpdesk@contoso.com", "IT HELPDESK"), True, id="helpdesk-upper"),
        pytest.param(resource("projector3@contoso.com"), True, id="projector"),
        pytest.param(resource("roomy.jones@contoso.com", "Roomy Jones"), False, id="person-roomy"),
        pytest.param(resource("infante@contoso.com", "Maria Infante"), False, id="person-infante"),
        pytest.param(resource("adele@contoso.com", "Adele Vance"), False, id="nameless-person"),
        pytest.param(person(user_principal_name="room@contoso.com"), False, id="has-given-name-and-surname"),
        pytest.param(
            person(user_principal_name="room@contoso.com", given_name=None), False, id="has-surname-only"
        ),
        pytest.param(resource("room1@contoso.com", mail=None), False, id="no-mail"),
        pytest.param(
            resource("room1@contoso.com", given_name="  ", surname=""), True, id="blank-names-count-as-none"
        ),
    ],
)
def test_shared_mailbox_heuristic(user: DirectoryUser, expected: bool) -> None:
    assert looks_like_shared_mailbox(user) is expected
    on = classify(user, purpose=None, source=MailboxPurposeSource.HEURISTIC)
    off = classify(user, purpose=None, source=MailboxPurposeSource.MAILBOX_SETTINGS)
    assert (R.SHARED_MAILBOX in on.reasons) is expected
    assert R.SHARED_MAILBOX not in off.reasons


# ---------------------------------------------------------------------------
# Counting and explanations
# ---------------------------------------------------------------------------


def test_counts_have_every_key_even_when_nothing_is_excluded() -> None:
    assert count_exclusions([]) == {
        "guest": 0,
        "externalMember": 0,
        "disabled": 0,
        "unlicensed": 0,
        "sharedMailbox": 0,
        "serviceAccount": 0,
        "rule": 0,
    }


def test_counts_take_each_user_once_by_primary_reason() -> None:
    verdicts = [
        Verdict(included=True),
        Verdict(included=True),
        Verdict(included=False, reasons=(R.GUEST, R.UNLICENSED)),
        Verdict(included=False, reasons=(R.DISABLED, R.UNLICENSED, R.SHARED_MAILBOX)),
        Verdict(included=False, reasons=(R.UNLICENSED,)),
        Verdict(included=False, reasons=(R.RULE,)),
        Verdict(included=False, reasons=(R.EXTERNAL_MEMBER, R.UNLICENSED)),
        Verdict(included=False, unknown=("userType",)),  # unknown: counted apart, not as an exclusion
    ]
    counts = count_exclusions(iter(verdicts))
    assert counts == {
        "guest": 1,
        "externalMember": 1,
        "disabled": 1,
        "unlicensed": 1,
        "sharedMailbox": 0,
        "serviceAccount": 0,
        "rule": 1,
    }
    included = sum(v.included for v in verdicts)
    unknown = sum(bool(v.unknown) for v in verdicts)
    assert included + sum(counts.values()) + unknown == len(
        verdicts
    )  # members = eligible + excluded + unknown


@pytest.mark.parametrize("reason", list(ExclusionReason), ids=str)
def test_every_reason_has_an_explanation(reason: ExclusionReason) -> None:
    text = explain_reason(reason)
    assert text.endswith(".") and len(text) > 40
    assert explain_reason(reason.value) == text


def test_unlicensed_explanation_says_what_to_do() -> None:
    assert "license" in explain_reason(R.UNLICENSED)
    assert "admin center" in explain_reason(R.UNLICENSED)


# ---------------------------------------------------------------------------
# parse_exclusion_rules
# ---------------------------------------------------------------------------


def test_parse_normalises() -> None:
    rules = parse_exclusion_rules(
        {
            "upnPatterns": [" svc-* ", "SVC-*", "*@lab.contoso.com"],
            "excludedUsers": ["Adele@contoso.com", "adele@CONTOSO.com"],
            "exclusionGroupId": GROUP_ID.upper(),
        }
    )
    assert rules == ExclusionRules(
        upn_patterns=("svc-*", "*@lab.contoso.com"),
        excluded_users=("Adele@contoso.com",),
        exclusion_group_id=GROUP_ID,
    )


@pytest.mark.parametrize(
    "obj",
    [
        pytest.param(None, id="none"),
        pytest.param({}, id="empty-object"),
        pytest.param(b"null", id="json-null"),
        pytest.param("{}", id="json-empty"),
        pytest.param({"exclusionGroupId": ""}, id="blank-group-is-none"),
        pytest.param(ExclusionRules(), id="struct"),
    ],
)
def test_parse_empty_rules(obj: object) -> None:
    assert parse_exclusion_rules(obj) == ExclusionRules()


def test_parse_round_trips_json() -> None:
    rules = ExclusionRules(upn_patterns=("svc-*",), excluded_users=("a@b.c",), exclusion_group_id=GROUP_ID)
    raw = msgspec.json.encode(rules)
    assert b'"upnPatterns"' in raw and b'"exclusionGroupId"' in raw
    assert parse_exclusion_rules(raw) == rules


@pytest.mark.parametrize(
    ("obj", "message"),
    [
        pytest.param([], "must be an object", id="not-an-object"),
        pytest.param(b"{nope", "not valid JSON", id="bad-json"),
        pytest.param(
            {"patterns": ["x"]}, "Unknown field(s) in exclusion rules: patterns", id="unknown-field"
        ),
        pytest.param({"upnPatterns": "svc-*"}, "upnPatterns must be a list", id="patterns-not-list"),
        pytest.param({"upnPatterns": ["ok", 3]}, "upnPatterns[1] must be a string", id="pattern-not-string"),
        pytest.param({"upnPatterns": ["  "]}, "upnPatterns[0] is empty", id="empty-pattern"),
        pytest.param({"upnPatterns": ["*"]}, "would exclude every user", id="star-only"),
        pytest.param(
            {"upnPatterns": ["a" * (MAX_PATTERN_LENGTH + 1)]},
            f"upnPatterns[0] is {MAX_PATTERN_LENGTH + 1} characters long",
            id="pattern-too-long",
        ),
        pytest.param(
            {"upnPatterns": [f"p{i}-*" for i in range(MAX_UPN_PATTERNS + 1)]},
            f"at most {MAX_UPN_PATTERNS}",
            id="too-many-patterns",
        ),
        pytest.param(
            {"excludedUsers": [f"u{i}@contoso.com" for i in range(MAX_EXCLUDED_USERS + 1)]},
            f"at most {MAX_EXCLUDED_USERS}",
            id="too-many-users",
        ),
        pytest.param({"excludedUsers": ["a@b.c", ""]}, "excludedUsers[1] is empty", id="empty-user"),
        pytest.param(
            {"excludedUsers": None, "exclusionGroupId": 5}, "must be a string or null", id="group-type"
        ),
        pytest.param({"exclusionGroupId": "Sales"}, "is not a group object id", id="group-not-guid"),
        pytest.param(
            ExclusionRules(exclusion_group_id="not-a-guid"), "is not a group object id", id="struct-validated"
        ),
    ],
)
def test_parse_errors(obj: object, message: str) -> None:
    with pytest.raises(InvalidRules) as info:
        parse_exclusion_rules(obj)
    assert message in str(info.value)
    assert isinstance(info.value, ValueError)


def test_limits_themselves_are_allowed() -> None:
    rules = parse_exclusion_rules(
        {
            "upnPatterns": [f"p{i}-" + "x" * (MAX_PATTERN_LENGTH - 8) for i in range(MAX_UPN_PATTERNS)],
            "excludedUsers": [f"u{i}@contoso.com" for i in range(MAX_EXCLUDED_USERS)],
        }
    )
    assert len(rules.upn_patterns) == MAX_UPN_PATTERNS
    assert len(rules.excluded_users) == MAX_EXCLUDED_USERS
    assert parse_exclusion_rules(rules) == rules


@pytest.mark.parametrize(
    ("overrides", "missing"),
    [
        pytest.param({"account_enabled": None}, ("accountEnabled",), id="accountEnabled"),
        pytest.param({"licensed": None}, ("assignedLicenses",), id="assignedLicenses"),
        pytest.param({"user_type": None}, ("userType",), id="userType"),
        pytest.param({"user_type": None, "licensed": None}, ("assignedLicenses", "userType"), id="two"),
    ],
)
def test_an_attribute_graph_left_out_makes_the_verdict_unknown_never_an_exclusion(
    overrides: dict[str, Any], missing: tuple[str, ...]
) -> None:
    verdict = classify(person(**overrides))
    assert verdict.unknown == missing and verdict.reasons == () and not verdict.included
    assert verdict.primary is None  # counted as unknown, not under an exclusion reason


@pytest.mark.parametrize("pattern", ["*", "*@*", "?*", "*.*", "*?", "**", "*@*.*", "??*", "*@*.??*"])
def test_patterns_that_match_every_upn_are_refused(pattern: str) -> None:
    with pytest.raises(InvalidRules, match="would exclude every user"):
        parse_exclusion_rules({"upnPatterns": [pattern]})


@pytest.mark.parametrize("pattern", ["svc-*", "*@contoso.com", "a*", "*o*", "*.c*", "*-bot@*"])
def test_narrow_patterns_are_accepted(pattern: str) -> None:
    assert parse_exclusion_rules({"upnPatterns": [pattern]}).upn_patterns == (pattern,)


def test_required_skus_accept_ids_and_part_numbers_and_name_the_bad_one() -> None:
    rules = parse_exclusion_rules({"requiredSkus": ["spe_e5", E3.upper()], "includeExternalMembers": True})
    assert rules.required_skus == (E5, E3) and rules.include_external_members
    with pytest.raises(InvalidRules, match=r"requiredSkus\[1\] \('E7'\)"):
        parse_exclusion_rules({"requiredSkus": [E3, "E7"]})
    with pytest.raises(InvalidRules, match="includeExternalMembers"):
        parse_exclusion_rules({"includeExternalMembers": "yes"})
    assert "SPE_E5" in explain_reason(R.UNLICENSED, rules)


# ---------------------------------------------------------------------------
# The "may" exclusions, and the exact rule behind each reason
# ---------------------------------------------------------------------------


def test_service_accounts_and_shared_mailboxes_are_excluded_unless_the_tenant_includes_them() -> None:
    svc = person(user_principal_name="svc-backup@contoso.com")
    shared = resource("reception@contoso.com", "Reception")
    assert classify(svc).reasons == (R.SERVICE_ACCOUNT,)
    assert classify(shared, purpose="shared").reasons == (R.SHARED_MAILBOX,)
    keep_both = parse_exclusion_rules({"excludeServiceAccounts": False, "excludeSharedMailboxes": False})
    assert classify(svc, rules=keep_both).included
    assert classify(shared, rules=keep_both, purpose="shared").included
    assert parse_exclusion_rules({}).exclude_service_accounts is True  # on by default
    with pytest.raises(InvalidRules, match="excludeServiceAccounts and excludeSharedMailboxes must be"):
        parse_exclusion_rules({"excludeServiceAccounts": "no", "excludeSharedMailboxes": 0})


@pytest.mark.parametrize(
    ("user", "purpose", "rules", "by_group", "reason", "rule"),
    [
        (person(user_type="Guest"), "user", NO_RULES, False, R.GUEST, "userType is Guest"),
        (person(account_enabled=False), "user", NO_RULES, False, R.DISABLED, "accountEnabled is false"),
        (person(sku_ids=(E3,)), "user", ExclusionRules(required_skus=(E5,)), False, R.UNLICENSED,
         "requiredSkus: none of SPE_E5"),
        (resource("room-4@contoso.com"), "room", NO_RULES, False, R.SHARED_MAILBOX,
         "mailboxSettings.userPurpose is room"),
        (person(user_principal_name="noreply-billing@contoso.com"), "user", NO_RULES, False,
         R.SERVICE_ACCOUNT, "built-in service-account pattern 'noreply*'"),
        (person(), "user", ExclusionRules(upn_patterns=("temp-*", "adele*")), False, R.RULE,
         "UPN pattern 'adele*'"),
        (person(), "user", ExclusionRules(excluded_users=("Adele.Vance@contoso.com",)), False, R.RULE,
         "listed in excludedUsers as 'Adele.Vance@contoso.com'"),
        (person(), "user", ExclusionRules(exclusion_group_id=GROUP_ID), True, R.RULE,
         f"member of the exclusion group {GROUP_ID}"),
    ],
)  # fmt: skip
def test_the_exact_rule_behind_each_reason_is_named(
    user: DirectoryUser,
    purpose: str,
    rules: ExclusionRules,
    by_group: bool,
    reason: ExclusionReason,
    rule: str,
) -> None:
    from sync.eligibility import matched_rule

    assert reason in classify(user, rules=rules, purpose=purpose, by_group=by_group).reasons
    named = matched_rule(
        user,
        reason,
        rules=rules,
        mailbox_purpose=purpose,
        purpose_source=MailboxPurposeSource.MAILBOX_SETTINGS,
        excluded_by_group=by_group,
    )
    assert named == rule


def test_a_rules_400_names_every_bad_value() -> None:
    with pytest.raises(InvalidRules) as refused:
        parse_exclusion_rules({"upnPatterns": ["*", "ok-*", " ", "*@*"], "excludedUsers": ["", "x" * 300]})
    text = str(refused.value)
    for part in (
        "upnPatterns[0]",
        "upnPatterns[2]",
        "upnPatterns[3]",
        "excludedUsers[0]",
        "excludedUsers[1]",
    ):
        assert part in text
    assert "upnPatterns[1]" not in text
