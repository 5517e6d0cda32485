"""`make bench`: measured figures for the README, side by side in one run.

`python -m devtools.bench directory` reads every user of a 100,000-user demo tenant through
sync.directory (msgspec on raw pages) and a 10,000-user tenant both through sync.directory
and through the SDK's typed Kiota models, each read in its own process so peak memory is
its own. The demo tenant serves from this process.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import subprocess
import sys
import time
from typing import Any

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


def _child(args: argparse.Namespace) -> int:
    """Measure one read in this process and print one JSON line."""
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


def _measure(reader: str, base_url: str, tenant: str) -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, "-m", "devtools.bench", "child", reader, base_url, tenant],
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
    directory = sub.add_parser("directory", help="directory read: msgspec vs typed models")
    directory.add_argument("--users", type=int, default=100_000)
    directory.add_argument("--groups", type=int, default=2_000)
    directory.add_argument("--json", action="store_true")
    child = sub.add_parser("child")
    child.add_argument("reader", choices=["directory", "typed"])
    child.add_argument("base_url")
    child.add_argument("tenant")
    args = parser.parse_args(argv)
    if args.what == "child":
        return _child(args)
    if args.what in (None, "directory"):
        report = bench_directory(getattr(args, "users", 100_000), getattr(args, "groups", 2_000))
        if getattr(args, "json", False):
            print(json.dumps(report, indent=2))
        else:
            _print_directory(report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
