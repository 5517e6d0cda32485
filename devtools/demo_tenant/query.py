"""OData query options and paging as Graph applies them to directory objects.

Only the options the product sends are served ($select, $top, $count, $search, $orderby on
groups, $skiptoken, $deltatoken); any other `$` option is refused with 400 instead of being
ignored, so a request the look-alike does not understand can never look like a success. Rules
follow "Use query parameters", "Advanced query capabilities on Microsoft Entra ID objects" and
"Paging Microsoft Graph data in your app".
"""

from __future__ import annotations

import base64
import re
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import msgspec

from devtools.demo_tenant.model import Tenant
from devtools.demo_tenant.wire import GraphError, Reply, TypeInfo

MAX_PAGE_SIZE = 999
DEFAULT_PAGE_SIZE = 100
ADVANCED_QUERY_HINT = (
    "Add the ConsistencyLevel: eventual header and the $count=true query option (advanced query)."
)

# System query options of OData v4; Graph also accepts them without the "$".
ODATA_OPTIONS = frozenset(
    {
        "$select",
        "$top",
        "$count",
        "$search",
        "$orderby",
        "$skiptoken",
        "$deltatoken",
        "$filter",
        "$expand",
        "$skip",
        "$format",
        "$apply",
        "$compute",
        "$levels",
        "$index",
        "$schemaversion",
        "$id",
    }
)


@dataclass(slots=True)
class Principal:
    """Who calls: the claims of a token the demo tenant issued."""

    tenant_id: str
    app_id: str
    roles: frozenset[str]
    expires: float


@dataclass(slots=True)
class Call:
    """One Graph request (top-level or a $batch item) on its way through the dispatcher."""

    method: str
    path: str  # decoded, relative to /v1.0, with a leading "/"
    query: dict[str, str]  # option names lower-cased, "$" kept ("$select")
    headers: Mapping[str, str]  # case-insensitive lookups via .get on lower-case names
    base_url: str  # "http://127.0.0.1:PORT/v1.0"
    client_request_id: str
    tenant: Tenant | None = None
    principal: Principal | None = None
    in_batch: bool = False
    kind: str = "unknown"
    body: bytes = b""  # the request body (POST and PATCH to /subscriptions)
    extra_headers: dict[str, str] = field(default_factory=dict)

    def header(self, name: str) -> str | None:
        """A request header, case-insensitively."""
        value = self.headers.get(name)
        if value is None:
            value = self.headers.get(name.lower())
        return value

    @property
    def eventual(self) -> bool:
        """Whether the caller sent ConsistencyLevel: eventual."""
        return (self.header("ConsistencyLevel") or "").strip().lower() == "eventual"

    @property
    def count_requested(self) -> bool:
        """Whether $count=true was sent."""
        return self.option("$count").lower() == "true"

    @property
    def advanced(self) -> bool:
        """Both advanced query parameters: ConsistencyLevel: eventual and $count=true."""
        return self.eventual and self.count_requested

    def option(self, name: str) -> str:
        """A query option by name ("$select"); Graph also accepts it without the "$"."""
        value = self.query.get(name)
        if value is None:
            value = self.query.get(name.lstrip("$"), "")
        return value


def normalize_query(pairs: Iterable[tuple[str, str]]) -> dict[str, str]:
    """Query options by lower-cased name; the first of repeated names wins."""
    query: dict[str, str] = {}
    for name, value in pairs:
        query.setdefault(name.lower(), value)
    return query


def check_options(call: Call, allowed: frozenset[str]) -> None:
    """Refuse any OData system query option this route does not serve (400), instead of ignoring it."""
    for name in call.query:
        canonical = "$" + name.lstrip("$")
        if not name.startswith("$") and canonical not in ODATA_OPTIONS:
            continue  # a custom query option: Graph passes those by
        if canonical not in ODATA_OPTIONS:
            raise GraphError(400, "BadRequest", f"The query parameter '{name}' is not supported.")
        if canonical not in allowed:
            raise GraphError(
                400,
                "Request_UnsupportedQuery",
                f"The query option '{canonical}' is not supported on this request "
                "(the demo tenant serves only the query options the product sends).",
            )


def parse_top(call: Call, default: int = DEFAULT_PAGE_SIZE) -> int:
    """$top as a page size between 1 and 999."""
    raw = call.option("$top")
    if not raw:
        return default
    try:
        top = int(raw)
    except ValueError:
        raise GraphError(
            400, "Request_BadRequest", f"Invalid value '{raw}' for the $top query option."
        ) from None
    if not 1 <= top <= MAX_PAGE_SIZE:
        raise GraphError(
            400,
            "Request_UnsupportedQuery",
            f"Invalid page size specified: '{top}'. Must be between 1 and {MAX_PAGE_SIZE} inclusive.",
        )
    return top


def parse_select(call: Call, names_by_lower: Mapping[str, str], type_name: str) -> tuple[str, ...] | None:
    """$select as canonical property names; a name the type does not have is a 400, as in Graph."""
    raw = call.option("$select").strip()
    if not raw:
        return None
    chosen: list[str] = []
    for name in (part.strip() for part in raw.split(",")):
        if not name:
            continue
        canonical = names_by_lower.get(name.lower())
        if canonical is None:
            raise GraphError(
                400, "BadRequest", f"Could not find a property named '{name}' on type '{type_name}'."
            )
        chosen.append(canonical)
    return tuple(chosen) or None


def select_for(call: Call, info: TypeInfo) -> tuple[str, ...] | None:
    """$select checked against one Graph type."""
    return parse_select(
        call, info.by_lower_name, f"microsoft.graph.{info.resource_name[0].lower()}{info.resource_name[1:]}"
    )


def context_url(call: Call, entity_set: str, select: tuple[str, ...] | None, suffix: str = "") -> str:
    """The @odata.context URL of a response."""
    selected = f"({','.join(select)})" if select else ""
    return f"{call.base_url}/$metadata#{entity_set}{selected}{suffix}"


_QUERY_SAFE = "$,'()*:@/=!;"


def link(call: Call, extra: dict[str, str], keep: bool = True, path: str | None = None) -> str:
    """An absolute link to this call's path with its query options (minus paging tokens) and `extra`."""
    options: dict[str, str] = {}
    if keep:
        options = {
            name: value
            for name, value in call.query.items()
            if name.lstrip("$") not in ("skiptoken", "deltatoken")
        }
    options.update(extra)
    encoded_path = quote(path if path is not None else call.path, safe="/$().'=:,@")
    if not options:
        return f"{call.base_url}{encoded_path}"
    query = "&".join(
        f"{quote(name, safe='$')}={quote(value, safe=_QUERY_SAFE)}" for name, value in options.items()
    )
    return f"{call.base_url}{encoded_path}?{query}"


def encode_token(state: dict[str, Any]) -> str:
    """An opaque state token (base64url JSON)."""
    return base64.urlsafe_b64encode(msgspec.json.encode(state)).decode().rstrip("=")


def decode_token(token: str) -> dict[str, Any]:
    """The state inside a token this server issued; 400 for anything else."""
    try:
        padded = token + "=" * (-len(token) % 4)
        state = msgspec.json.decode(base64.urlsafe_b64decode(padded.encode()))
    except Exception:
        raise GraphError(400, "Request_BadRequest", "The paging token is not valid.") from None
    if not isinstance(state, dict):
        raise GraphError(400, "Request_BadRequest", "The paging token is not valid.")
    return state


# ------------------------------------------------------------------------------------ $search

_SEARCH_CLAUSE = re.compile(r'"([^"]*)"|\b(AND|OR)\b', re.IGNORECASE)
_SEARCH_WORD = re.compile(r"[A-Z]?[a-z]+|[A-Z]+(?![a-z])|\d+")
_SEARCHABLE = {
    "displayname",
    "description",
    "mail",
    "userprincipalname",
    "givenname",
    "surname",
    "mailnickname",
}
Predicate = Callable[[dict[str, Any]], bool]


def _search_words(text: str) -> list[str]:
    return [word.lower() for word in _SEARCH_WORD.findall(text)]


def compile_search(call: Call, info: TypeInfo, text: str) -> Predicate:
    """$search="property:term" clauses joined by AND/OR: tokenized prefix matching, as the index does."""
    if not call.eventual:
        raise GraphError(
            400,
            "Request_UnsupportedQuery",
            "$search on directory objects needs the ConsistencyLevel: eventual header.",
        )
    clauses: list[tuple[str, Predicate]] = []
    joiner = "AND"
    for match in _SEARCH_CLAUSE.finditer(text):
        if match.group(2):
            joiner = match.group(2).upper()
            continue
        clause = match.group(1)
        name, separator, term = clause.partition(":")
        canonical = info.by_lower_name.get(name.lower())
        if not separator or name.lower() not in _SEARCHABLE or canonical is None:
            raise GraphError(
                400,
                "Request_UnsupportedQuery",
                f"Unsupported $search clause '{clause}': use \"property:term\" on a searchable property.",
            )
        term_words = _search_words(term)

        def matches(
            wire: dict[str, Any], canonical: str = canonical, term_words: list[str] = term_words
        ) -> bool:
            value = wire.get(canonical)
            if not isinstance(value, str):
                return False
            words = _search_words(value)
            return all(any(word.startswith(term_word) for word in words) for term_word in term_words)

        clauses.append((joiner, matches))
        joiner = "AND"
    if not clauses:
        raise GraphError(
            400,
            "Request_UnsupportedQuery",
            'Invalid $search: give quoted clauses such as "displayName:term".',
        )

    def predicate(wire: dict[str, Any]) -> bool:
        result = clauses[0][1](wire)
        for clause_joiner, clause in clauses[1:]:
            result = (result or clause(wire)) if clause_joiner == "OR" else (result and clause(wire))
        return result

    return predicate


# ------------------------------------------------------------------------------------- paging


class PageTokens:
    """Skip tokens of nextLinks: they carry the offset, when they were issued and the tenant's epoch.

    A token older than `lifetime` seconds, or issued before `expire(tenant)`, answers 400
    Directory_ExpiredPageToken, as the directory does for a stale cursor.
    """

    def __init__(self) -> None:
        self.lifetime: float | None = None
        self._epochs: dict[str, int] = {}
        self._lock = threading.Lock()

    def epoch(self, tenant_id: str) -> int:
        """The tenant's current token generation."""
        with self._lock:
            return self._epochs.get(tenant_id.lower(), 0)

    def expire(self, tenant_id: str) -> None:
        """Make every skip token issued so far for this tenant stale."""
        with self._lock:
            key = tenant_id.lower()
            self._epochs[key] = self._epochs.get(key, 0) + 1

    def issue(self, tenant_id: str, offset: int) -> str:
        """A skip token for the page starting at `offset`."""
        return encode_token({"offset": offset, "iat": round(time.time(), 3), "epoch": self.epoch(tenant_id)})

    def offset(self, tenant_id: str, token: str) -> int:
        """The offset inside a skip token, or 400 Directory_ExpiredPageToken when it is stale."""
        state = decode_token(token)
        issued = float(state.get("iat", 0.0))
        stale = int(state.get("epoch", 0)) != self.epoch(tenant_id) or (
            self.lifetime is not None and time.time() - issued > self.lifetime
        )
        if stale:
            raise GraphError(
                400,
                "Directory_ExpiredPageToken",
                "The page token has expired; start again from the first page.",
            )
        return int(state.get("offset", 0))


def page(
    call: Call,
    tokens: PageTokens,
    ids: list[str],
    render: Callable[[list[str]], list[dict[str, Any]]],
    context: str,
    count: int | None = None,
) -> Reply:
    """One page of `ids` with @odata.nextLink; @odata.count (from the index) with the advanced parameters."""
    assert call.tenant is not None
    top = parse_top(call)
    token = call.option("$skiptoken")
    offset = tokens.offset(call.tenant.tenant_id, token) if token else 0
    page_ids = ids[offset : offset + top]
    payload: dict[str, Any] = {"@odata.context": context}
    if call.count_requested and call.eventual:
        payload["@odata.count"] = len(ids) if count is None else count
    if offset + top < len(ids):
        payload["@odata.nextLink"] = link(
            call, {"$skiptoken": tokens.issue(call.tenant.tenant_id, offset + top)}
        )
    payload["value"] = render(page_ids)
    return Reply(200, payload)


def require_count_segment(call: Call) -> None:
    """A /$count segment on directory objects needs ConsistencyLevel: eventual."""
    if not call.eventual:
        raise GraphError(400, "Request_BadRequest", "$count is not currently supported.")
