"""How soon a leaver leaves: change notifications end to end, for `make bench`.

The app runs in the dev host with the default debounce (NOTIFY_DEBOUNCE_SECONDS=20) and the
queue polling interval host.json sets; the demo tenant posts Graph's change notifications to the
app's webhook over HTTP. After the tenant's first full refresh (which subscribes), 50 users are
taken out of every group they are in, one after another at irregular intervals, as an admin in
Microsoft 365 would; nobody clicks anything. For each, the seconds from the change in the tenant
to its `removed` record in the roster change feed (GET .../changes, read as the platform would)
and to its absence from the roster. Reported: p50, p95 and max, and how many refreshes the
notifications caused.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import random
import time
from pathlib import Path
from typing import Any

import aiohttp

TENANT = "0b3e54b4-7a71-4a3b-9f2d-0000000000fe"
POLL_SECONDS = 0.25  # how often the platform stand-in reads the change feed
FEED_PAGE = 500


def percentile(values: list[float], share: float) -> float:
    """The nearest-rank percentile (share 0.5 = median, 0.95 = p95)."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(share * len(ordered)) - 1)]


class _Api:
    """The HTTP API as the signed-in operator (the dev host's sign-in)."""

    def __init__(self, base_url: str, tenant_id: str, http: aiohttp.ClientSession) -> None:
        self.base_url, self.tenant_id, self.http = base_url, tenant_id, http

    async def call(self, method: str, path: str, body: Any = None, **params: str) -> Any:
        headers = {"Content-Type": "application/json", "Origin": self.base_url}
        url = f"{self.base_url}/api/tenants/{self.tenant_id}{path}"
        async with self.http.request(method, url, json=body, headers=headers, params=params) as response:
            answer = await response.json(content_type=None)
            if response.status >= 300:
                raise RuntimeError(f"{method} {path}: {response.status} {answer}")
            return answer

    async def tenant(self) -> dict[str, Any]:
        async with self.http.get(f"{self.base_url}/api/tenants") as response:
            tenants = (await response.json())["value"]
        return next(t for t in tenants if t["id"] == self.tenant_id)

    async def wait_run(self, run_id: str, timeout: float = 600) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            run = await self.call("GET", f"/runs/{run_id}")
            if run["status"] not in ("queued", "running"):
                return dict(run)
            if time.monotonic() > deadline:
                raise RuntimeError(f"run {run_id} did not finish")
            await asyncio.sleep(0.5)


async def _feed_end(api: _Api) -> str | None:
    cursor: str | None = None
    while True:
        feed = await api.call(
            "GET", "/changes", limit=str(FEED_PAGE), **({"after": cursor} if cursor else {})
        )
        if not feed["value"]:
            return cursor
        cursor = feed["next"]


async def _active(api: _Api) -> set[str]:
    """Every user on the roster now."""
    found: set[str] = set()
    cursor: str | None = None
    while True:
        page = await api.call(
            "GET", "/users", limit=str(FEED_PAGE), status="active", **({"cursor": cursor} if cursor else {})
        )
        found.update(user["id"] for user in page["value"])
        cursor = page.get("nextCursor")
        if not cursor:
            return found


async def bench_notify(changes: int = 50, users: int = 10_000, debounce: float = 20.0) -> dict[str, Any]:
    """Take `changes` users out of their groups and time each until it is off the roster."""
    from devtools.azurite import Azurite
    from devtools.demo_tenant import DemoGraphServer, build_tenant
    from devtools.host import DevHost
    from devtools.host.config import parse_timespan, sample_binding_settings
    from shared.settings import reset_settings_cache

    host_json = json.loads((Path(__file__).parents[1] / "host.json").read_text())
    polling = parse_timespan(host_json["extensions"]["queues"].get("maxPollingInterval", "00:01:00"))
    tenant = build_tenant(TENANT, "Bench Notify", users=users, groups=60, seed=5)
    group = tenant.landmarks.big_group_id
    rng = random.Random(7)
    with Azurite() as azurite, DemoGraphServer([tenant]) as graph:
        settings = {
            **sample_binding_settings(),
            "SYNC_STORAGE": azurite.connection_string,
            "AzureWebJobsStorage": azurite.connection_string,
            "GRAPH_AUTH": "demo",
            "GRAPH_BASE_URL": graph.base_url,
            "NOTIFY_DEBOUNCE_SECONDS": str(debounce),
        }
        reset_settings_cache()
        if not logging.getLogger().handlers:  # the figures, not every function invocation
            logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
        host = DevHost(port=0, settings=settings, local_settings=None, max_polling_interval=polling)
        await host.start()
        try:
            jar = aiohttp.CookieJar(unsafe=True)
            async with aiohttp.ClientSession(cookie_jar=jar) as http:
                async with http.post(f"{host.base_url}/.auth/login/dev", json={"identity": "operator"}) as r:
                    r.raise_for_status()
                api = _Api(host.base_url, tenant.tenant_id, http)
                await api.call("PUT", "", {"displayName": tenant.display_name})
                saved = await api.call("PUT", "/selection", {"groupIds": [group]})
                first = await api.wait_run(saved["run"]["id"])
                if first["status"] != "succeeded":
                    raise RuntimeError(f"the first refresh did not succeed: {first}")
                while (await api.tenant()).get("notifyMode") is None:
                    await asyncio.sleep(0.2)
                mode = (await api.tenant())["notifyMode"]
                cursor = await _feed_end(api)
                runs_before = {r["id"] for r in (await api.call("GET", "/runs", limit="100"))["value"]}
                leavers = rng.sample(sorted(await _active(api)), changes)
                groups_of = {
                    uid: [gid for gid in tenant.groups if uid in tenant.direct_member_ids(gid)]
                    for uid in leavers
                }
                removed_at: dict[str, float] = {}
                seen_at: dict[str, float] = {}

                async def leave() -> None:
                    for uid in leavers:
                        await asyncio.sleep(rng.uniform(0.0, 4.0))  # a burst with irregular gaps
                        removed_at[uid] = time.monotonic()
                        for gid in groups_of[uid]:  # a leaver: out of every group they were in
                            tenant.remove_member(gid, uid)

                async def follow() -> None:
                    nonlocal cursor
                    deadline = time.monotonic() + 600
                    while len(seen_at) < changes and time.monotonic() < deadline:
                        params = {"limit": str(FEED_PAGE), **({"after": cursor} if cursor else {})}
                        feed = await api.call("GET", "/changes", **params)
                        now = time.monotonic()
                        for change in feed["value"]:
                            if change["kind"] == "removed" and change["userId"] in removed_at:
                                seen_at.setdefault(change["userId"], now)
                        cursor = feed["next"]
                        if len(feed["value"]) < FEED_PAGE:
                            await asyncio.sleep(POLL_SECONDS)

                started = time.monotonic()
                await asyncio.gather(leave(), follow())
                elapsed = time.monotonic() - started
                removed = await api.call("GET", "/users", limit="500", status="removed")
                not_removed = set(leavers) - {u["id"] for u in removed["value"]}
                runs = (await api.call("GET", "/runs", limit="100"))["value"]
                caused = [r for r in runs if r["id"] not in runs_before and r["reason"] == "notification"]
        finally:
            await host.stop()
            reset_settings_cache()
    latencies = [seen_at[uid] - removed_at[uid] for uid in leavers if uid in seen_at]
    return {
        "users": users,
        "changes": changes,
        "debounce_s": debounce,
        "max_polling_interval_s": polling,
        "notify_mode": mode,
        "seen": len(latencies),
        "p50_s": round(percentile(latencies, 0.5), 1) if latencies else None,
        "p95_s": round(percentile(latencies, 0.95), 1) if latencies else None,
        "max_s": round(max(latencies), 1) if latencies else None,
        "refreshes": len(caused),
        "incremental_refreshes": sum(1 for r in caused if r.get("incremental")),
        "wall_s": round(elapsed, 1),
        "leavers_still_active": len(not_removed),
    }


def print_notify(report: dict[str, Any]) -> None:
    """The README row."""
    print(
        f"Change notifications ({report['users']:,}-user tenant, debounce {report['debounce_s']:g} s, "
        f"queue polling up to {report['max_polling_interval_s']:g} s, mode {report['notify_mode']})"
    )
    print("| leavers | off the roster and in the feed: p50 | p95 | max | refreshes caused |")
    print("|---:|---:|---:|---:|---:|")
    print(
        f"| {report['seen']}/{report['changes']} | {report['p50_s']} s | {report['p95_s']} s | "
        f"{report['max_s']} s | {report['refreshes']} ({report['incremental_refreshes']} incremental) |"
    )
    if report["leavers_still_active"]:
        print(f"WARNING: {report['leavers_still_active']} leavers are still active on the roster")
