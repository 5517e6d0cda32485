"""Knobs for failure and load: injected faults, Graph-like throttling, latency and the request log.

Throttled requests answer 429 with Retry-After in whole seconds, as "Microsoft Graph throttling
guidance" describes; faults answer any status in Graph's error shape.
"""

from __future__ import annotations

import asyncio
import collections
import re
import threading
import time
from dataclasses import dataclass
from typing import Any, Literal

import msgspec

from devtools.demo_tenant.query import Call
from devtools.demo_tenant.wire import GraphError

_LOG_LIMIT = 500_000


@dataclass(slots=True)
class Fault:
    """An injected failure: requests matching method, tenant and path regex get `status`.

    The first `after` matches pass; then `times` matches fail (None: every one). `delay`
    hangs that long first (to simulate timeouts); status 200 means "delay only, then serve".
    """

    fault_id: int
    status: int
    path_regex: str
    method: str = "GET"
    tenant_id: str | None = None
    times: int | None = None
    after: int = 0
    retry_after: float | None = None
    delay: float | None = None
    code: str | None = None
    message: str | None = None
    in_batch: bool | None = None  # only $batch items (True), only whole requests (False), or both
    truncate: int | None = None  # a 200 list answered short: only this many items and no nextLink
    matched: int = 0
    fired: int = 0
    pattern: re.Pattern[str] | None = None

    def as_dict(self) -> dict[str, Any]:
        """JSON view for /_demo/faults."""
        return {
            "id": self.fault_id,
            "status": self.status,
            "pathRegex": self.path_regex,
            "method": self.method,
            "tenantId": self.tenant_id,
            "times": self.times,
            "after": self.after,
            "retryAfter": self.retry_after,
            "delay": self.delay,
            "code": self.code,
            "message": self.message,
            "truncate": self.truncate,
            "matched": self.matched,
            "fired": self.fired,
        }

    def cut_short(self, payload: Any) -> Any:
        """A list answer the way a faulty service might give it: the first items, no next page."""
        if (
            self.truncate is None
            or not isinstance(payload, dict)
            or not isinstance(payload.get("value"), list)
        ):
            return payload
        kept = {key: value for key, value in payload.items() if key != "@odata.nextLink"}
        kept["value"] = payload["value"][: self.truncate]
        return kept

    async def strike(self) -> None:
        """Wait the fault's delay, then raise its error (a 2xx status only delays)."""
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.status >= 300:
            raise GraphError(self.status, self.code, self.message, retry_after=self.retry_after)


class Faults:
    """The injected faults, matched in the order they were added."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._faults: list[Fault] = []
        self._next_id = 1

    def add(self, status: int, path_regex: str, method: str = "GET", **options: Any) -> int:
        """Add a fault (see `Fault`); returns its id."""
        with self._lock:
            tenant_id = options.pop("tenant_id", None)
            fault = Fault(
                fault_id=self._next_id,
                status=status,
                path_regex=path_regex,
                method=method.upper(),
                tenant_id=tenant_id.lower() if tenant_id else None,
                pattern=re.compile(path_regex),
                **options,
            )
            self._next_id += 1
            self._faults.append(fault)
            return fault.fault_id

    def remove(self, fault_id: int) -> bool:
        """Remove one fault; False if there was none with that id."""
        with self._lock:
            before = len(self._faults)
            self._faults = [fault for fault in self._faults if fault.fault_id != fault_id]
            return len(self._faults) != before

    def clear(self) -> None:
        """Remove every fault."""
        with self._lock:
            self._faults.clear()

    def as_list(self) -> list[dict[str, Any]]:
        """The faults with their match/fire counters."""
        with self._lock:
            return [fault.as_dict() for fault in self._faults]

    def match(self, call: Call) -> Fault | None:
        """The first fault that fires for this call (counting matches and firings)."""
        with self._lock:
            tenant_id = call.tenant.tenant_id.lower() if call.tenant else None
            for fault in self._faults:
                if fault.method not in ("*", call.method):
                    continue
                if fault.tenant_id is not None and fault.tenant_id != tenant_id:
                    continue
                if fault.times is not None and fault.fired >= fault.times:
                    continue
                if fault.pattern is None or not fault.pattern.search(call.path):
                    continue
                if fault.in_batch is not None and fault.in_batch != call.in_batch:
                    continue
                fault.matched += 1
                if fault.matched <= fault.after:
                    continue
                fault.fired += 1
                return fault
        return None


@dataclass(slots=True)
class _RateWindow:
    started: float
    used: int = 0


class RateLimiter:
    """A request budget per window, per tenant (`scope="tenant"`: Graph's per-app-per-tenant limits)
    or per calling app across every tenant (`scope="app"`: Graph's per-app limits across all tenants,
    such as the global 130,000 requests per 10 seconds, "Microsoft Graph service-specific throttling
    limits", https://learn.microsoft.com/graph/throttling-limits). Past the budget: 429 with
    Retry-After until the window ends. A throttled request does not use the budget.
    """

    def __init__(self, scope: Literal["tenant", "app"] = "tenant") -> None:
        self._lock = threading.Lock()
        self._scope = scope
        self._limit: tuple[int, float, str | None] | None = None
        self._path: re.Pattern[str] | None = None
        self._windows: dict[str, _RateWindow] = {}
        self.throttled = 0  # requests answered 429 by this limit since it was set

    def set(
        self, requests: int, per_seconds: float, only: str | None = None, path_regex: str | None = None
    ) -> None:
        """Allow `requests` calls per `per_seconds` per tenant or app (or just `only`, a tenant or app
        id), on matching paths."""
        with self._lock:
            self._limit = (int(requests), float(per_seconds), only.lower() if only else None)
            self._path = re.compile(path_regex) if path_regex else None
            self._windows.clear()
            self.throttled = 0

    def clear(self) -> None:
        """No limit."""
        with self._lock:
            self._limit = None
            self._windows.clear()

    def _key(self, call: Call) -> str | None:
        if self._scope == "app":
            return call.principal.app_id.lower() if call.principal is not None else None
        return call.tenant.tenant_id.lower() if call.tenant is not None else None

    def check(self, call: Call) -> GraphError | None:
        """The 429 for this call when the budget is spent, else None (and the call is counted)."""
        with self._lock:
            if self._limit is None:
                return None
            key = self._key(call)
            if key is None:
                return None
            allowed, window_seconds, only = self._limit
            if only is not None and only != key:
                return None
            if self._path is not None and not self._path.search(call.path):
                return None
            now = time.monotonic()
            window = self._windows.get(key)
            if window is None or now - window.started >= window_seconds:
                window = _RateWindow(started=now)
                self._windows[key] = window
            if window.used >= allowed:
                wait = window.started + window_seconds - now
                self.throttled += 1
                whom = "application" if self._scope == "app" else "application and tenant"
                return GraphError(
                    429,
                    "TooManyRequests",
                    f"Too many requests for this {whom}; retry later.",
                    retry_after=max(1.0, wait),
                )
            window.used += 1
            return None


class RequestRecord(msgspec.Struct, frozen=True, kw_only=True):
    """One logged request; $batch items are logged too, with in_batch=True."""

    timestamp: float
    tenant_id: str | None
    method: str
    path: str
    query: str
    status: int
    kind: str
    in_batch: bool = False
    duration_ms: float = 0.0


class RequestLog:
    """Every Graph request served (and each $batch item), newest last."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._records: collections.deque[RequestRecord] = collections.deque(maxlen=_LOG_LIMIT)
        # (in a $batch, status) -> requests, never trimmed: a fleet sends more than the log keeps.
        self._totals: collections.Counter[tuple[bool, int]] = collections.Counter()

    def record(self, call: Call, status: int, query: str, started: float) -> None:
        """Log one served call."""
        record = RequestRecord(
            timestamp=time.time(),
            tenant_id=call.tenant.tenant_id if call.tenant else None,
            method=call.method,
            path=call.path,
            query=query,
            status=status,
            kind=call.kind,
            in_batch=call.in_batch,
            duration_ms=round((time.perf_counter() - started) * 1000, 3),
        )
        with self._lock:
            self._records.append(record)
            self._totals[(call.in_batch, status)] += 1

    def records(
        self, kind: str | None = None, tenant_id: str | None = None, in_batch: bool | None = None
    ) -> list[RequestRecord]:
        """Logged requests, oldest first, optionally filtered."""
        with self._lock:
            records = list(self._records)
        return [
            record
            for record in records
            if (kind is None or record.kind == kind)
            and (tenant_id is None or (record.tenant_id or "").lower() == tenant_id.lower())
            and (in_batch is None or record.in_batch == in_batch)
        ]

    def counts(self, tenant_id: str | None = None, in_batch: bool | None = None) -> dict[str, int]:
        """Requests per kind."""
        counted = collections.Counter(record.kind for record in self.records(None, tenant_id, in_batch))
        return dict(sorted(counted.items()))

    def totals(self) -> dict[tuple[bool, int], int]:
        """Requests served since the last clear by (inside a $batch, status), however many."""
        with self._lock:
            return dict(self._totals)

    def clear(self) -> None:
        """Forget every record."""
        with self._lock:
            self._records.clear()
            self._totals.clear()
