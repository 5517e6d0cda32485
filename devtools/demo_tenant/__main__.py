"""Run the demo Graph server: `python -m devtools.demo_tenant --port 7081 [--users N --groups M]`."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import time

from devtools.demo_tenant.generator import build_demo_tenants
from devtools.demo_tenant.server import DemoGraphServer


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(prog="python -m devtools.demo_tenant", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=7081, help="port (default 7081; 0 picks a free one)")
    parser.add_argument("--users", type=int, default=None, help="users in the default (Contoso) tenant")
    parser.add_argument("--groups", type=int, default=None, help="groups in the default (Contoso) tenant")
    parser.add_argument("--latency", type=float, default=0.0, help="seconds added to every request")
    return parser.parse_args(argv)


async def run(args: argparse.Namespace) -> None:
    """Build the demo tenants, start the server and print what clients need."""
    started = time.perf_counter()
    tenants = build_demo_tenants(users=args.users, groups=args.groups)
    built_in = time.perf_counter() - started
    server = DemoGraphServer(tenants, host=args.host, port=args.port)
    server.set_latency(args.latency)
    await server.start_async()
    print(f"Demo Graph server listening on {server.base_url}  (tenants built in {built_in:.2f}s)")
    for tenant in tenants:
        print(
            f"  {tenant.display_name:<10} tenant {tenant.tenant_id}  "
            f"{len(tenant.users)} users, {len(tenant.groups)} groups  "
            f"token: POST {server.root_url}/{tenant.tenant_id}/oauth2/v2.0/token"
        )
    print(
        f"  controls: {server.root_url}/_demo/tenants, /_demo/requests, /_demo/faults, /_demo/reset "
        "(consent, delta, page-tokens, index-lag, count-bom, hidden-members, mailbox-policy: see control.py)",
        flush=True,
    )
    try:
        await asyncio.Event().wait()
    finally:
        await server.stop_async()


def main(argv: list[str] | None = None) -> None:
    """Entry point."""
    args = parse_args(argv)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(run(args))


if __name__ == "__main__":
    main()
