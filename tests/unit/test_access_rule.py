"""sync.auth: the principal as App Service Authentication passes it, the one access rule, and the
cross-site check, table-driven without I/O (the routes are covered by the matrix in
tests/integration/test_auth.py)."""

from __future__ import annotations

import base64
import json

import pytest

from devtools.host import encode_principal
from devtools.host.identities import GLOBAL_ADMINISTRATOR
from shared.settings import load_settings
from sync.auth import Caller, Need, cross_site_refusal, may, read_principal
from sync.models import CallerKind

HOME = "aa8843fa-9556-4492-a1cb-79b096247291"
A = "840fa9a3-916c-42ac-99ab-a1e9158955c5"
B = "8efef433-65df-437f-9283-e2a918a80821"
SETTINGS = load_settings(
    {"SYNC_STORAGE": "UseDevelopmentStorage=true", "HOME_TENANT_ID": HOME}, local_settings=None
)


def caller(header: str, granted: frozenset[str] = frozenset()) -> Caller:
    principal = read_principal(header, SETTINGS)
    assert principal is not None
    return Caller(principal, granted)


OPERATOR = caller(encode_principal("op@home", ["Sync.Operator"], tenant_id=HOME))
ADMIN_A = caller(encode_principal("admin@a", tenant_id=A, directory_roles=[GLOBAL_ADMINISTRATOR]))
USER_A = caller(encode_principal("user@a", tenant_id=A))
PARTNER = caller(encode_principal("tech@msp", tenant_id=B), granted=frozenset({A}))


def test_the_kind_of_caller_comes_from_role_tid_and_wids() -> None:
    assert OPERATOR.kind is CallerKind.OPERATOR
    assert ADMIN_A.kind is CallerKind.CUSTOMER_ADMIN
    assert USER_A.kind is CallerKind.PARTNER and PARTNER.kind is CallerKind.PARTNER
    away = caller(
        encode_principal("op@a", ["Sync.Operator"], tenant_id=A, directory_roles=[GLOBAL_ADMINISTRATOR])
    )
    assert away.kind is CallerKind.CUSTOMER_ADMIN  # the app role from another tenant counts for nothing
    assert OPERATOR.by.startswith("op@home (tid aa8843fa-") and "oid 00000000-" in OPERATOR.by


@pytest.mark.parametrize(
    ("who", "need", "tenant", "registered", "allowed"),
    [
        (OPERATOR, Need.OPERATOR, None, False, True),
        (OPERATOR, Need.TENANT, B, False, True),  # the service then says "not registered"
        (OPERATOR, Need.ONBOARD, "organizations", False, True),
        (ADMIN_A, Need.SIGNED_IN, None, False, True),
        (ADMIN_A, Need.TENANT, A, True, True),
        (ADMIN_A, Need.TENANT, A, False, False),  # connect it first
        (ADMIN_A, Need.ONBOARD, A, False, True),
        (ADMIN_A, Need.TENANT, B, True, False),
        (ADMIN_A, Need.ONBOARD, B, False, False),
        (ADMIN_A, Need.ONBOARD, "organizations", False, False),
        (ADMIN_A, Need.OPERATOR, None, False, False),
        (USER_A, Need.TENANT, A, True, False),
        (USER_A, Need.ONBOARD, A, False, False),
        (USER_A, Need.SIGNED_IN, None, False, True),
        (PARTNER, Need.TENANT, A, True, True),
        (PARTNER, Need.TENANT, A, False, False),
        (PARTNER, Need.ONBOARD, A, True, True),  # Reconnect
        (PARTNER, Need.ONBOARD, A, False, False),
        (PARTNER, Need.TENANT, B, True, False),  # its own tenant: no admin role, no grant
        (PARTNER, Need.OPERATOR, None, False, False),
    ],
)
def test_the_one_access_rule(
    who: Caller, need: Need, tenant: str | None, registered: bool, allowed: bool
) -> None:
    assert may(who, need, tenant, registered=registered) is allowed


def test_only_an_entra_principal_with_tenant_and_object_ids_is_read() -> None:
    def envelope(**data: object) -> str:
        return base64.b64encode(json.dumps(data).encode()).decode()

    ids = [{"typ": "tid", "val": A}, {"typ": "oid", "val": B}]
    assert read_principal(envelope(auth_typ="aad", claims=ids), SETTINGS) is not None
    assert read_principal(envelope(auth_typ="google", claims=ids), SETTINGS) is None
    assert read_principal(envelope(claims=ids), SETTINGS) is None
    assert read_principal(envelope(auth_typ="aad", claims=ids[:1]), SETTINGS) is None
    assert read_principal(None, SETTINGS) is None and read_principal("", SETTINGS) is None


URL = "https://sync.example.net/api/tenants/x/refresh"


@pytest.mark.parametrize(
    ("method", "headers", "status"),
    [
        ("GET", {"origin": "https://evil.example"}, None),
        ("POST", {"content-type": "application/json"}, None),  # not a browser: no ambient cookie
        (
            "POST",
            {"content-type": "application/json; charset=utf-8", "origin": "https://sync.example.net"},
            None,
        ),
        (
            "POST",
            {"content-type": "application/json", "origin": "https://custom.example"},
            None,
        ),  # APP_BASE_URL
        ("POST", {"content-type": "application/json", "sec-fetch-site": "same-origin"}, None),
        ("POST", {"content-type": "application/json", "origin": "https://evil.example"}, 403),
        ("PUT", {"content-type": "application/json", "origin": "null"}, 403),
        ("DELETE", {"content-type": "application/json", "sec-fetch-site": "cross-site"}, 403),
        ("POST", {"content-type": "application/json", "sec-fetch-site": "same-site"}, 403),
        ("POST", {"content-type": "text/plain"}, 415),
        ("POST", {}, 415),
        ("POST", {"content-type": "text/plain", "origin": "https://evil.example"}, 403),
    ],
)
def test_changes_must_be_same_origin_json(method: str, headers: dict[str, str], status: int | None) -> None:
    refusal = cross_site_refusal(method, headers, URL, "https://custom.example")
    assert (refusal.status if refusal else None) == status
