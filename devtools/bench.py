"""`make bench`: measured figures for the README, side by side in one run.

- `directory`: every user of a 100,000-user demo tenant through sync.directory (msgspec on raw
  pages), and a 10,000-user tenant through sync.directory and through the SDK's typed Kiota
  models, each read in its own process so peak memory is its own.
- `refresh`: 50 nested groups covering ~60,000 of 100,000 users, 50 ms per Graph request and
  Graph-like throttling, real Azurite: a full refresh, an unchanged full re-run and an unchanged
  incremental (delta) run, with Graph requests beside the lower bound.
- `fleet`: 1,000 tenants of realistic sizes, from the nightly timer to the last run finished,
  through the queue worker of one Functions worker process (devtools/bench_fleet.py).
- `cuts`: each cut of issue 17 beside what it replaced, in one process (devtools/bench_cuts.py).
- `notify`: 50 leavers taken out of their groups in the demo tenant, each timed until its change
  notification has taken it off the roster and into the change feed (devtools/bench_notify.py).
- `all` (the default): all of them in one run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import resource
import signal
import subprocess
import sys
import time
from typing import Any

import msgspec

from devtools.bench_cuts import bench_cuts, print_cuts
from devtools.bench_fleet import bench_fleet, fleet_worker, print_fleet
from devtools.bench_notify import bench_notify, print_notify

BIG_TENANT = "0b3e54b4-7a71-4a3b-9f2d-100000000000"
SLICE_TENANT = "0b3e54b4-7a71-4a3b-9f2d-010000000000"


def _peak_rss_mb() -> float:
    # VmHWM, not ru_maxrss: Linux carries ru_maxrss across exec, so a child started by a big
    # parent would report the parent's peak.
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def _read_with_directory(base_url: str, tenant_id: str) -> int:
    from shared.graph import GraphClients
    from shared.settings import load_settings
    from sync.directory import DirectoryReader

    settings = load_settings(
        {"SYNC_STORAGE": "UseDevelopmentStorage=true", "GRAPH_AUTH": "demo", "GRAPH_BASE_URL": base_url},
        local_settings=None,
    )
    clients = GraphClients(settings)
    try:
        users = await DirectoryReader(clients.for_tenant(tenant_id)).list_all_users()
        return len(users)
    finally:
        await clients.aclose()


async def _read_with_typed_models(base_url: str, tenant_id: str) -> int:
    from kiota_abstractions.base_request_configuration import RequestConfiguration
    from msgraph.generated.users.users_request_builder import UsersRequestBuilder

    from shared.graph import GraphClients
    from shared.settings import load_settings
    from sync.directory import USER_FIELDS

    settings = load_settings(
        {"SYNC_STORAGE": "UseDevelopmentStorage=true", "GRAPH_AUTH": "demo", "GRAPH_BASE_URL": base_url},
        local_settings=None,
    )
    clients = GraphClients(settings)
    client = clients.for_tenant(tenant_id)
    qp = UsersRequestBuilder.UsersRequestBuilderGetQueryParameters(select=USER_FIELDS, top=999)
    cfg = RequestConfiguration(query_parameters=qp)
    kept: list[Any] = []
    try:
        page = await client.users.get(cfg)
        while page is not None:
            kept.extend(page.value or [])
            if not page.odata_next_link:
                break
            page = await client.users.with_url(page.odata_next_link).get(cfg)
        return len(kept)
    finally:
        await clients.aclose()


def _start_profiler(profile: str | None, phase: str) -> subprocess.Popen[bytes] | None:
    """py-spy attached to this process for one phase: a flame graph (SVG) or collapsed stacks (.txt).

    It samples on-CPU stacks only (idle waits for Graph are left out), so it shows where CPU goes.
    """
    if not profile:
        return None
    stem, fmt = (
        (profile[:-4], "raw") if profile.endswith(".txt") else (profile.removesuffix(".svg"), "flamegraph")
    )
    output = f"{stem}-{phase}.{'txt' if fmt == 'raw' else 'svg'}"
    spy = os.path.join(os.path.dirname(sys.executable), "py-spy")
    process = subprocess.Popen(
        [spy, "record", "--pid", str(os.getpid()), "--rate", "250", "--format", fmt, "--output", output],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    time.sleep(1.0)  # let it attach before the phase starts
    return process


def _stop_profiler(process: subprocess.Popen[bytes] | None) -> None:
    if process is None:
        return
    process.send_signal(signal.SIGINT)  # py-spy writes its output on SIGINT
    process.wait(timeout=120)
    spy, output = str(process.args[0]), str(process.args[-1])  # type: ignore[index]
    if output.endswith(".svg") and os.path.exists(output):
        # The flame graph's title is py-spy's command line: keep this machine's paths out of docs/.
        with open(output, encoding="utf-8") as svg:
            text = svg.read()
        with open(output, "w", encoding="utf-8") as svg:
            svg.write(text.replace(spy, "py-spy").replace(output, os.path.basename(output)))


async def _refresh_phases(args: argparse.Namespace) -> dict[str, Any]:
    """Full refresh, unchanged full re-run, unchanged incremental run: one tenant, real Azurite."""
    import httpx

    from shared.settings import load_settings
    from shared.storage import ensure_storage
    from sync.context import SyncContext
    from sync.engine import execute_refresh
    from sync.models import RefreshMessage, RunReason, SelectedGroup, Selection, SelectionMode, Tenant
    from sync.runs import new_run

    settings = load_settings(
        {"SYNC_STORAGE": args.storage, "GRAPH_AUTH": "demo", "GRAPH_BASE_URL": args.base_url},
        local_settings=None,
    )
    await ensure_storage(settings)
    ctx = SyncContext.create(settings)
    group_ids = json.loads(args.groups)
    await ctx.store.put_tenant(Tenant(id=args.tenant, display_name="Bench", guard_percent=100.0))
    await ctx.store.save_selection(
        args.tenant,
        Selection(
            mode=SelectionMode.GROUPS,
            groups=tuple(SelectedGroup(id=g, display_name=g) for g in group_ids),
        ),
        expected_version=None,
    )
    control = httpx.AsyncClient(base_url=args.root_url, timeout=30)
    phases: dict[str, Any] = {}
    try:
        for name, reason in (
            ("full", RunReason.MANUAL),
            ("unchanged_full", RunReason.MANUAL),
            ("unchanged_incremental", RunReason.NIGHTLY),
        ):
            await control.delete("/_demo/requests")
            transactions_before = ctx.roster.transactions
            run = new_run(args.tenant, reason)
            await ctx.store.create_run(run)
            spy = _start_profiler(args.profile, name)
            cpu0, wall0 = _cpu_seconds(), time.perf_counter()
            done = await execute_refresh(
                ctx, RefreshMessage(tenant_id=args.tenant, run_id=run.id, reason=reason)
            )
            wall, cpu = time.perf_counter() - wall0, _cpu_seconds() - cpu0
            _stop_profiler(spy)
            http_requests = (await control.get("/_demo/requests?inBatch=false&limit=0")).json()["counts"]
            batched = (await control.get("/_demo/requests?inBatch=true&limit=0")).json()["counts"]
            phases[name] = {
                "status": str(done.status),
                "error": done.error,
                "incremental": done.incremental,
                "wall_s": round(wall, 2),
                "cpu_s": round(cpu, 2),
                "graph_requests_by_kind": http_requests,  # HTTP requests; a $batch counts once
                "batched_items_by_kind": batched,
                "run_counts": msgspec.to_builtins(done.counts),
                "table_transactions": ctx.roster.transactions - transactions_before,
            }
    finally:
        await control.aclose()
        await ctx.aclose()
        await ctx.graph.aclose()
    phases["peak_rss_mb"] = round(_peak_rss_mb(), 1)
    return phases


def _child(args: argparse.Namespace) -> int:
    """Measure one read (or the refresh phases) in this process and print one JSON line."""
    if args.reader == "refresh":
        print(json.dumps(asyncio.run(_refresh_phases(args))))
        return 0
    reader = _read_with_directory if args.reader == "directory" else _read_with_typed_models
    baseline = _peak_rss_mb()
    cpu0, wall0 = _cpu_seconds(), time.perf_counter()
    users = asyncio.run(reader(args.base_url, args.tenant))
    result = {
        "reader": args.reader,
        "users": users,
        "wall_s": round(time.perf_counter() - wall0, 3),
        "cpu_s": round(_cpu_seconds() - cpu0, 3),
        "peak_rss_mb": round(_peak_rss_mb(), 1),
        "rss_before_mb": round(baseline, 1),
    }
    print(json.dumps(result))
    return 0


def _measure(reader: str, base_url: str, tenant: str, *extra: str) -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, "-m", "devtools.bench", "child", reader, base_url, tenant, *extra],
        check=True,
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
    )
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def bench_directory(users: int, groups: int) -> dict[str, Any]:
    """Read the big tenant with sync.directory and the slice with both readers."""
    from devtools.demo_tenant.generator import build_tenant
    from devtools.demo_tenant.server import DemoGraphServer

    t0 = time.perf_counter()
    big = build_tenant(BIG_TENANT, "Bench 100k", users=users, groups=groups, seed=7)
    small = build_tenant(SLICE_TENANT, "Bench 10k", users=10_000, groups=200, seed=7)
    built = time.perf_counter() - t0
    with DemoGraphServer([big, small]) as server:
        full = _measure("directory", server.base_url, BIG_TENANT)
        slice_fast = _measure("directory", server.base_url, SLICE_TENANT)
        slice_typed = _measure("typed", server.base_url, SLICE_TENANT)
    return {
        "tenant_build_s": round(built, 2),
        "full_read": full,
        "slice_directory": slice_fast,
        "slice_typed_models": slice_typed,
        "slice_cpu_ratio": round(slice_typed["cpu_s"] / max(slice_fast["cpu_s"], 1e-9), 1),
        "slice_wall_ratio": round(slice_typed["wall_s"] / max(slice_fast["wall_s"], 1e-9), 1),
    }


# Graph-like throttling for the directory (users, groups): Entra ID allows 3,500-8,000 resource
# units per 10 s per app and tenant; transitiveMembers costs 5 units, so ~1,500 requests / 10 s.
# mailboxSettings is Exchange's, throttled per app and mailbox ("Microsoft Graph service-specific
# throttling limits"): each mailbox is read once per run, so it is not in this budget.
DIRECTORY_BUDGET = (1500, 10.0, r"^/(users|groups)(?!/[^/]+/mailboxSettings)")


def member_page_lower_bound(tenant: Any, group_ids: list[str]) -> int:
    """Per-group expansion can not take fewer member pages than this."""
    return sum(max(1, math.ceil(len(tenant.transitive_user_ids(g)) / 999)) for g in group_ids)


def bench_refresh(users: int, groups: int, latency: float, profile: str | None = None) -> dict[str, Any]:
    """A 60% selection of the big tenant, with latency and throttling, on real Azurite."""
    from devtools.azurite import Azurite
    from devtools.demo_tenant.generator import build_tenant, pick_groups_covering
    from devtools.demo_tenant.server import DemoGraphServer

    big = build_tenant(BIG_TENANT, "Bench 100k", users=users, groups=groups, seed=7)
    small = build_tenant(SLICE_TENANT, "Bench 10k", users=10_000, groups=200, seed=7)
    selected = pick_groups_covering(big, 0.6, 50)
    covered = set().union(*(big.transitive_user_ids(g) for g in selected))
    load_before = os.getloadavg()[0]
    with Azurite() as azurite, DemoGraphServer([big, small]) as server:
        slice_fast = _measure("directory", server.base_url, SLICE_TENANT)
        slice_typed = _measure("typed", server.base_url, SLICE_TENANT)
        server.set_latency(latency)
        server.set_rate_limit(DIRECTORY_BUDGET[0], DIRECTORY_BUDGET[1], path_regex=DIRECTORY_BUDGET[2])
        phases = _measure(
            "refresh",
            server.base_url,
            BIG_TENANT,
            "--root-url",
            server.root_url,
            "--storage",
            azurite.connection_string,
            "--groups",
            json.dumps(selected),
            *(("--profile", os.path.abspath(profile)) if profile else ()),
        )
    load = [round(load_before, 2), round(os.getloadavg()[0], 2)]
    return {
        "load_average": load,
        "tenant_users": len(big.users),
        "tenant_groups": len(big.groups),
        "selected_groups": len(selected),
        "selected_users": len(covered),
        "latency_s": latency,
        "directory_budget": {"requests": DIRECTORY_BUDGET[0], "per_seconds": DIRECTORY_BUDGET[1]},
        "member_page_lower_bound": member_page_lower_bound(big, selected),
        "phases": phases,
        "slice_cpu_ratio": round(slice_typed["cpu_s"] / max(slice_fast["cpu_s"], 1e-9), 1),
        "slice_directory": slice_fast,
        "slice_typed_models": slice_typed,
    }


# Issue 17's targets for the 60,000-user selection, printed beside the figures.
REFRESH_TARGETS = {
    "full": ("CPU", 8.0),
    "unchanged_full": ("CPU", 2.0),
    "unchanged_incremental": ("wall", 5.0),
}
PEAK_RSS_TARGET_MB = 200.0
TABLE_PARTITION_ENTITIES_PER_S = 2_000  # "Scalability and performance targets for Table storage"


def _changes(phase: dict[str, Any]) -> int:
    counts = phase["run_counts"]
    return int(counts["added"] + counts["updated"] + counts["removed"] + counts["restored"])


def _print_refresh(report: dict[str, Any]) -> None:
    phases = report["phases"]
    print(
        f"Refresh: {report['selected_groups']} groups covering {report['selected_users']:,} of "
        f"{report['tenant_users']:,} users; {report['latency_s'] * 1000:.0f} ms per Graph request; "
        f"throttled past {report['directory_budget']['requests']} directory requests per "
        f"{report['directory_budget']['per_seconds']:.0f} s per tenant; load average "
        f"{report.get('load_average', ['?', '?'])[0]} -> {report.get('load_average', ['?', '?'])[1]}"
    )
    print(
        "| phase | status | wall s | CPU s | target | Graph requests | member pages (target: the lower "
        "bound) | table transactions (target: ceil(changes/100)) |"
    )
    print("|---|---|---:|---:|---|---:|---:|---:|")
    for name in ("full", "unchanged_full", "unchanged_incremental"):
        p = phases[name]
        kinds = p["graph_requests_by_kind"]
        total = sum(v for k, v in kinds.items() if not k.startswith("_"))
        pages = kinds.get("groups.transitiveMembers", 0)
        bound = report["member_page_lower_bound"] if not p["incremental"] else 0
        what, limit = REFRESH_TARGETS[name]
        figure = p["cpu_s"] if what == "CPU" else p["wall_s"]
        verdict = "met" if figure <= limit else "MISSED"
        print(
            f"| {name} | {p['status']} | {p['wall_s']} | {p['cpu_s']} | {what} <= {limit:g} s: {verdict} | "
            f"{total} | {pages} ({bound}) | {p['table_transactions']} ({math.ceil(_changes(p) / 100)}) |"
        )
    peak = phases["peak_rss_mb"]
    print(
        f"Peak RSS of the refresh process: {peak} MB (target <= {PEAK_RSS_TARGET_MB:g} MB: "
        f"{'met' if peak <= PEAK_RSS_TARGET_MB else 'MISSED'})"
    )
    print("Requests by kind, full refresh:", json.dumps(phases["full"]["graph_requests_by_kind"]))
    written = _changes(phases["full"])
    print(
        f"Table partition: the first full run wrote {written:,} entities in "
        f"{phases['full']['table_transactions']} transactions to one partition (the tenant's); at Azure's "
        f"{TABLE_PARTITION_ENTITIES_PER_S:,} entities/s per partition that takes at least "
        f"{written / TABLE_PARTITION_ENTITIES_PER_S:.0f} s there"
    )
    print(f"Typed models / sync.directory CPU on the same 10k pages: {report['slice_cpu_ratio']}x")


def _print_directory(report: dict[str, Any]) -> None:
    full, fast, typed = report["full_read"], report["slice_directory"], report["slice_typed_models"]
    print("Directory read (demo tenant on loopback, no added latency)")
    print("| read | users | wall s | CPU s | peak RSS MB |")
    print("|---|---:|---:|---:|---:|")
    for label, row in (
        ("all users, sync.directory (msgspec)", full),
        ("10k slice, sync.directory (msgspec)", fast),
        ("10k slice, SDK typed models (Kiota)", typed),
    ):
        print(f"| {label} | {row['users']:,} | {row['wall_s']} | {row['cpu_s']} | {row['peak_rss_mb']} |")
    print(
        f"Typed models / sync.directory on the same 10k pages: "
        f"{report['slice_cpu_ratio']}x CPU, {report['slice_wall_ratio']}x wall"
    )


def main(argv: list[str] | None = None) -> int:
    """Run the benchmarks and print Markdown tables for the README."""
    parser = argparse.ArgumentParser(prog="python -m devtools.bench", description=__doc__)
    sub = parser.add_subparsers(dest="what")
    sub.add_parser("all", help="every benchmark below, in one run (the default)")
    directory = sub.add_parser("directory", help="directory read: msgspec vs typed models")
    directory.add_argument("--users", type=int, default=100_000)
    directory.add_argument("--groups", type=int, default=2_000)
    directory.add_argument("--json", action="store_true")
    child = sub.add_parser("child")
    child.add_argument("reader", choices=["directory", "typed", "refresh"])
    child.add_argument("base_url")
    child.add_argument("tenant")
    child.add_argument("--root-url")
    child.add_argument("--storage")
    child.add_argument("--groups")
    child.add_argument("--profile")
    refresh = sub.add_parser("refresh", help="full / unchanged / incremental refresh of a 60k selection")
    refresh.add_argument("--users", type=int, default=100_000)
    refresh.add_argument("--groups", type=int, default=2_000)
    refresh.add_argument("--latency", type=float, default=0.05)
    refresh.add_argument("--json", action="store_true")
    refresh.add_argument(
        "--profile",
        help="py-spy each phase: PATH.svg gives PATH-<phase>.svg flame graphs, PATH.txt collapsed stacks",
    )
    fleet = sub.add_parser("fleet", help="one night of 1,000 tenants through one queue worker")
    fleet.add_argument("--tenants", type=int, default=1000)
    fleet.add_argument("--latency", type=float, default=0.05)
    fleet.add_argument("--json", action="store_true")
    notify = sub.add_parser("notify", help="leavers off the roster by change notifications: p50, p95")
    notify.add_argument("--changes", type=int, default=50)
    notify.add_argument("--users", type=int, default=10_000)
    notify.add_argument("--debounce", type=float, default=20.0)
    notify.add_argument("--json", action="store_true")
    sub.add_parser("cuts", help="each cut of issue 17 beside what it replaced, in one process")
    worker = sub.add_parser("fleet-worker")
    worker.add_argument("--storage", required=True)
    worker.add_argument("--graph", required=True)
    worker.add_argument("--authority", required=True)
    worker.add_argument("--tenants", type=int, required=True)
    args = parser.parse_args(argv)
    if args.what == "child":
        return _child(args)
    if args.what == "refresh":
        report = bench_refresh(args.users, args.groups, args.latency, args.profile)
        print(json.dumps(report, indent=2)) if args.json else _print_refresh(report)
        return 0
    if args.what == "fleet":
        fleet_report = bench_fleet(args.tenants, args.latency)
        print(json.dumps(fleet_report, indent=2)) if args.json else print_fleet(fleet_report)
        return 0
    if args.what == "cuts":
        print_cuts(bench_cuts())
        return 0
    if args.what == "fleet-worker":
        print(json.dumps(asyncio.run(fleet_worker(args.storage, args.graph, args.authority, args.tenants))))
        return 0
    if args.what == "notify":
        notify_report = asyncio.run(bench_notify(args.changes, args.users, args.debounce))
        print(json.dumps(notify_report, indent=2)) if args.json else print_notify(notify_report)
        return 0
    if args.what in (None, "all"):  # `make bench`: every figure the README quotes, in one run
        _print_directory(bench_directory(100_000, 2_000))
        print()
        _print_refresh(bench_refresh(100_000, 2_000, 0.05))
        print()
        print_cuts(bench_cuts())
        print()
        print_fleet(bench_fleet(1000, 0.05))
        print()
        print_notify(asyncio.run(bench_notify()))
        return 0
    if args.what == "directory":
        report = bench_directory(getattr(args, "users", 100_000), getattr(args, "groups", 2_000))
        if getattr(args, "json", False):
            print(json.dumps(report, indent=2))
        else:
            _print_directory(report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
