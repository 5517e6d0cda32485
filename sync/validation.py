"""The shapes and limits of what callers may send: one home for each pattern and each limit.

The service validates with these, the OpenAPI document publishes them, the directory and the
roster check ids with them. Nothing here does I/O.
"""

from __future__ import annotations

import re

GUID_PATTERN = r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$"
RUN_ID_PATTERN = r"^[0-9]{13}-[0-9a-f]{8}$"
# A user principal name: one "@", no spaces or control characters.
UPN_PATTERN = r"^[^@\s\x00-\x1f\x7f]+@[^@\s\x00-\x1f\x7f]+$"

MAX_SELECTED_GROUPS = 1000
MAX_NAME_LENGTH = 256
MAX_SEARCH_LENGTH = 120
MAX_CURSOR_LENGTH = 2048
MAX_UPN_LENGTH = 113  # Entra ID: a user principal name is at most 113 characters
MAX_PAGE = 500
MAX_GUARD_MIN_USERS = 1_000_000
MAX_BODY_BYTES = 64 * 1024
MAX_PATTERN_LENGTH = 256  # a tenant rule's UPN pattern or listed user
MAX_UPN_PATTERNS = 100  # rules stay one small table property and cheap to match at 100,000 users
MAX_EXCLUDED_USERS = 1000
MAX_GRANT_TENANTS = 500  # customer tenants in one partner grant
PLAN_SAMPLE_SIZE = 200  # user ids per list kept on a run record (Table properties cap at 64 KiB)

# \Z, not $: "$" also matches before a trailing newline, which would let "id\n" through.
_GUID = re.compile(GUID_PATTERN.removesuffix("$") + r"\Z")
_RUN_ID = re.compile(RUN_ID_PATTERN.removesuffix("$") + r"\Z")
_UPN = re.compile(UPN_PATTERN.removesuffix("$") + r"\Z")


def is_object_id(value: object) -> bool:
    """An Entra object or tenant id: a GUID, nothing before or after it (not even a newline)."""
    return isinstance(value, str) and bool(_GUID.match(value))


def is_run_id(value: object) -> bool:
    """A run id as this app issues them (13 digits, a dash, 8 hex digits)."""
    return isinstance(value, str) and bool(_RUN_ID.match(value))


def is_upn(value: object) -> bool:
    """Something shaped like a user principal name (name@domain, no spaces), at most 113 characters."""
    return isinstance(value, str) and len(value) <= MAX_UPN_LENGTH and bool(_UPN.match(value))


def has_control_characters(text: str) -> bool:
    """Whether `text` holds a C0 control character or DEL."""
    return any(ord(ch) < 32 or ord(ch) == 127 for ch in text)


# Characters a Graph `$search` clause cannot carry as text: its quotes and the escape character.
# The directory index splits names into words at punctuation anyway, so dropping them loses nothing.
_SEARCH_DROPPED = str.maketrans({'"': " ", "\\": " "})


def search_text(text: str) -> str:
    """Search words as Graph's directory index sees them: quotes and backslashes dropped, spaces folded.

    An empty answer means the text held no word to search for.
    """
    cleaned = " ".join(text.translate(_SEARCH_DROPPED).split())
    return cleaned if any(ch.isalnum() for ch in cleaned) else ""
