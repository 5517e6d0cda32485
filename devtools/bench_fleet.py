"""The fleet benchmark: one night of 1,000 tenants, from the nightly timer to the last run finished.

This process builds the tenants, serves them from the demo Graph (50 ms per request, each tenant's
directory budget, and one budget for the app across every tenant, as Graph's per-app limits) and
runs Azurite; a second process is the one Functions worker: the dev host (devtools/host) runs
function_app with the repository's host.json, so the queue trigger takes messages as the
Functions host does (batchSize, newBatchThreshold, visibility, poison queue). It fires the
nightly timer through the host's admin API and waits until every queue is empty and nothing
runs; then it reads each tenant's run.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import random
import resource
import subprocess
import sys
import time
import uuid
from typing import Any

FLEET_SEED = 17
# Graph's per-app limit across all tenants is 130,000 requests per 10 s ("Microsoft Graph
# service-specific throttling limits", https://learn.microsoft.com/graph/throttling-limits). One
# worker gets a share of it when the app scales out; this budget is that share for 13 workers.
APP_BUDGET = (10_000, 10.0)


def fleet_sizes(tenants: int, *, seed: int = FLEET_SEED) -> list[int]:
    """Users per tenant: five of 20,000, a tenth of 500-5,000, the rest 20-500 (log-uniform)."""
    rng = random.Random(seed)
    big = min(5, tenants)
    medium = min(tenants - big, round(tenants / 10))
    sizes = [20_000] * big
    sizes += [round(math.exp(rng.uniform(math.log(500), math.log(5_000)))) for _ in range(medium)]
    sizes += [
        round(math.exp(rng.uniform(math.log(20), math.log(500)))) for _ in range(tenants - big - medium)
    ]
    return sizes


def _tenant_id(index: int) -> str:
    return str(uuid.UUID(int=(0xF1EE7 << 96) + index + 1))


def _groups_for(users: int) -> int:
    return min(300, max(19, users // 60))


def build_fleet(tenants: int) -> tuple[list[Any], dict[str, list[str]]]:
    """The demo tenants and each one's selection (groups covering about half its users)."""
    from devtools.demo_tenant.generator import build_tenant, pick_groups_covering

    built, selections = [], {}
    for index, users in enumerate(fleet_sizes(tenants)):
        tenant = build_tenant(
            _tenant_id(index), f"Fleet {index}", users=users, groups=_groups_for(users), seed=index
        )
        count = max(2, min(20, len(tenant.groups) // 10))
        selections[tenant.tenant_id] = pick_groups_covering(tenant, 0.5, count)
        built.append(tenant)
    return built, selections


async def _register(storage: str, selections: dict[str, list[str]]) -> None:
    from shared.settings import load_settings
    from shared.storage import ensure_storage
    from sync.models import SelectedGroup, Selection, SelectionMode, Tenant
    from sync.store import SyncStore

    settings = load_settings({"SYNC_STORAGE": storage}, local_settings=None)
    await ensure_storage(settings)
    store = SyncStore(settings)
    gate = asyncio.Semaphore(32)

    async def one(index: int, tenant_id: str, group_ids: list[str]) -> None:
        async with gate:
            # Guard at 100%: a first night adds everyone and removes nobody anyway.
            await store.put_tenant(Tenant(id=tenant_id, display_name=f"Fleet {index}", guard_percent=100.0))
            selection = Selection(
                mode=SelectionMode.GROUPS,
                groups=tuple(SelectedGroup(id=g, display_name=g) for g in group_ids),
            )
            await store.save_selection(tenant_id, selection, expected_version=None)

    try:
        await asyncio.gather(*(one(i, tid, groups) for i, (tid, groups) in enumerate(selections.items())))
    finally:
        await store.aclose()


def bench_fleet(tenants: int = 1000, latency: float = 0.05) -> dict[str, Any]:
    """Build, serve and register the fleet, then run one night in a worker process."""
    from devtools.azurite import Azurite
    from devtools.bench import DIRECTORY_BUDGET
    from devtools.demo_tenant.server import DemoGraphServer

    started = time.perf_counter()
    fleet, selections = build_fleet(tenants)
    built = time.perf_counter() - started
    users = sum(len(t.users) for t in fleet)
    with Azurite() as azurite, DemoGraphServer(fleet) as server:
        served = time.perf_counter() - started
        asyncio.run(_register(azurite.connection_string, selections))
        server.set_latency(latency)
        server.set_rate_limit(DIRECTORY_BUDGET[0], DIRECTORY_BUDGET[1], path_regex=DIRECTORY_BUDGET[2])
        server.set_app_rate_limit(*APP_BUDGET)
        server.reset_log()
        out = subprocess.run(
            [
                sys.executable, "-m", "devtools.bench", "fleet-worker",
                "--storage", azurite.connection_string,
                "--graph", server.base_url,
                "--authority", server.root_url,
                "--tenants", str(tenants),
            ],
            check=True, stdout=subprocess.PIPE, text=True,
            env={**os.environ, "PYTHONWARNINGS": "ignore"},
        )  # fmt: skip
        worker: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
        totals = server.log.totals()
    throttled = {
        "per_app": sum(n for (_, status), n in totals.items() if status == 429),
        "app_budget_429": server.app_rate_limiter.throttled,
        "tenant_budget_429": server.rate_limiter.throttled,
    }
    return {
        "tenants": tenants,
        "users": users,
        "sizes": {
            "20_to_500": sum(1 for t in fleet if len(t.users) < 500),
            "500_to_5000": sum(1 for t in fleet if 500 <= len(t.users) <= 5000),
            "20000": sum(1 for t in fleet if len(t.users) >= 20_000),
        },
        "tenant_build_s": round(built, 1),
        "served_after_s": round(served, 1),
        "latency_s": latency,
        "directory_budget_per_tenant": {"requests": DIRECTORY_BUDGET[0], "per_seconds": DIRECTORY_BUDGET[1]},
        "app_budget": {"requests": APP_BUDGET[0], "per_seconds": APP_BUDGET[1]},
        "graph_http_requests": sum(n for (in_batch, _), n in totals.items() if not in_batch),
        "graph_batch_items": sum(n for (in_batch, _), n in totals.items() if in_batch),
        "graph_429": throttled["per_app"],
        "graph_429_app_budget": throttled["app_budget_429"],
        "graph_429_tenant_budget": throttled["tenant_budget_429"],
        **worker,
    }


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def fleet_worker(storage: str, graph: str, authority: str, tenants: int) -> dict[str, Any]:
    """One Functions worker: the dev host with host.json; the nightly timer; every run to its end."""
    import logging

    import aiohttp

    from devtools.host.config import sample_binding_settings
    from devtools.host.server import DevHost
    from shared.settings import load_settings
    from sync.store import SyncStore

    settings = {
        **sample_binding_settings(),
        "SYNC_STORAGE": storage,
        "GRAPH_AUTH": "demo",
        "GRAPH_BASE_URL": graph,
        "GRAPH_AUTHORITY_HOST": authority,
    }
    host = DevHost(port=0, settings=settings, local_settings=None)
    await host.start()
    logging.getLogger().setLevel(logging.WARNING)  # a line per invocation and request would cost the worker
    queue = host.host_json.get("extensions", {}).get("queues", {})
    try:
        cpu0, started = _cpu_seconds(), time.perf_counter()
        async with (
            aiohttp.ClientSession() as http,
            http.post(f"{host.base_url}/admin/functions/nightly_sync", json={"input": ""}) as answer,
        ):
            assert answer.status == 202, answer.status
        await host.wait_idle(timeout=3600)
        elapsed, cpu = time.perf_counter() - started, _cpu_seconds() - cpu0
    finally:
        await host.stop()
    store = SyncStore(load_settings({"SYNC_STORAGE": storage}, local_settings=None))
    try:
        listed = await store.list_tenants()
        gate = asyncio.Semaphore(32)

        async def last_run(tenant_id: str) -> Any:
            async with gate:
                page, _ = await store.list_runs(tenant_id, limit=1)
                return page[0] if page else None

        runs = [run for run in await asyncio.gather(*(last_run(t.id) for t in listed)) if run is not None]
    finally:
        await store.aclose()
    statuses: dict[str, int] = {}
    for run in runs:
        statuses[str(run.status)] = statuses.get(str(run.status), 0) + 1
    durations = sorted(
        (run.finished_at - run.started_at).total_seconds()
        for run in runs
        if run.finished_at and run.started_at
    )
    return {
        "minutes": round(elapsed / 60, 2),
        "seconds": round(elapsed, 1),
        "worker_cpu_s": round(cpu, 1),
        "runs": len(runs),
        "runs_by_status": statuses,
        "runs_failed": sum(1 for run in runs if str(run.status) != "succeeded"),
        "errors": sorted({(run.error or "")[:160] for run in runs if run.error})[:5],
        "run_graph_requests": sum(run.graph_requests for run in runs),
        "longest_run_s": round(durations[-1], 1) if durations else None,
        "worker": {
            "processes": 1,
            "batchSize": queue.get("batchSize"),
            "newBatchThreshold": queue.get("newBatchThreshold"),
            "concurrent_refreshes": (queue.get("batchSize") or 16) + (queue.get("newBatchThreshold") or 8),
            "graph_requests_in_flight_per_run": 16,
            "graph_connections": 32,
            "table_transactions_in_flight_per_run": 4,
        },
        "peak_rss_mb": round(_peak_rss_mb(), 1),
        "tenants_expected": tenants,
    }


def _peak_rss_mb() -> float:
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return 0.0


def print_fleet(report: dict[str, Any]) -> None:
    """The fleet row and its figures, each target beside its measure."""
    sizes, worker = report["sizes"], report["worker"]
    print(
        f"Fleet: {report['tenants']:,} tenants, {report['users']:,} users ({sizes['20_to_500']} of 20-500, "
        f"{sizes['500_to_5000']} of 500-5,000, {sizes['20000']} of 20,000), each with its own selection; "
        f"built in {report['tenant_build_s']} s; {report['latency_s'] * 1000:.0f} ms per Graph request; "
        f"{report['directory_budget_per_tenant']['requests']:,} directory requests per "
        f"{report['directory_budget_per_tenant']['per_seconds']:.0f} s per tenant; "
        f"{report['app_budget']['requests']:,} requests per {report['app_budget']['per_seconds']:.0f} s "
        "for the app across tenants"
    )
    print(
        f"Worker: {worker['processes']} process, host.json batchSize {worker['batchSize']} + "
        f"newBatchThreshold {worker['newBatchThreshold']} = {worker['concurrent_refreshes']} refreshes "
        "at once, "
        f"{worker['graph_requests_in_flight_per_run']} Graph requests in flight per run, "
        f"{worker['graph_connections']} Graph connections"
    )
    print("| measure | figure | target |")
    print("|---|---:|---:|")
    print(f"| nightly timer to the last run finished | {report['minutes']} min | under 10 min |")
    print(f"| runs failed | {report['runs_failed']} of {report['runs']} | 0 |")
    print(f"| Graph HTTP requests ($batch counted once) | {report['graph_http_requests']:,} | |")
    print(f"| requests inside $batch | {report['graph_batch_items']:,} | |")
    print(
        f"| answered 429 (app budget / tenant budget) | {report['graph_429']:,} "
        f"({report['graph_429_app_budget']:,} / {report['graph_429_tenant_budget']:,}) "
        "| retried, no run failed |"
    )
    print(f"| worker CPU | {report['worker_cpu_s']} s | |")
    print(f"| worker peak RSS | {report['peak_rss_mb']} MB | |")
    print(f"| longest run | {report['longest_run_s']} s | |")
    if report["errors"]:
        print("Errors:", *report["errors"], sep="\n  ")
