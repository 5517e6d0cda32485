"""`make run`: Azurite, the demo tenant and the app on this machine, until Ctrl-C."""

from __future__ import annotations

import argparse
import json
import shutil
import signal
import sys
import threading
import time
from pathlib import Path

from devtools.azurite import REPO_ROOT, Azurite, AzuriteError
from devtools.demo_tenant.generator import build_demo_tenants
from devtools.demo_tenant.server import DemoGraphServer
from devtools.host import DevHost
from devtools.host.easyauth import sign_in_help
from devtools.host.identities import DEV_IDENTITIES, PARTNER_TENANT_ID

PARTNER_OBJECT_ID = next(i.object_id for i in DEV_IDENTITIES if i.key == "partner")

DEMO_GRAPH_PORT = 7081
APP_PORT = 7071


def add_new_settings(settings_file: Path, sample_file: Path) -> list[str]:
    """Settings a newer sample has and an older local.settings.json lacks (bindings need them all);
    the values already there are kept. Returns the names added."""
    settings = json.loads(settings_file.read_text(encoding="utf-8"))
    sample = json.loads(sample_file.read_text(encoding="utf-8"))
    values = settings.setdefault("Values", {})
    added = [name for name in sample.get("Values", {}) if name not in values]
    for name in added:
        values[name] = sample["Values"][name]
    if added:
        settings_file.write_text(json.dumps(settings, indent=2) + "\n", encoding="utf-8")
    return added


def _size(text: str) -> int:
    """A tenant size: a whole number from 1 to 200,000 (the demo tenant keeps it in memory)."""
    try:
        value = int(text.replace(",", "").replace("_", ""))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if not 1 <= value <= 200_000:
        raise argparse.ArgumentTypeError(f"{value} is outside 1 to 200,000")
    return value


def main(argv: list[str] | None = None) -> int:
    """Start the local stack and print where each part listens."""
    parser = argparse.ArgumentParser(prog="python -m devtools.stack", description=__doc__)
    parser.add_argument("--graph-port", type=int, default=DEMO_GRAPH_PORT)
    parser.add_argument("--app-port", type=int, default=APP_PORT)
    parser.add_argument(
        "--data", type=Path, default=REPO_ROOT / ".azurite", help="Azurite's data folder (kept between runs)"
    )
    parser.add_argument(
        "--users",
        type=_size,
        default=None,
        help="users in Contoso (default 2,000; e.g. 100000 for the big one)",
    )
    parser.add_argument(
        "--groups",
        type=_size,
        default=None,
        help="groups in Contoso (default 60; e.g. 2000 to try Load more)",
    )
    args = parser.parse_args(argv)

    settings_file = REPO_ROOT / "local.settings.json"
    if not settings_file.exists():
        # The CLI and `func start` read it; the sample points at this stack.
        shutil.copyfile(REPO_ROOT / "local.settings.sample.json", settings_file)
        print(f"created {settings_file.name} from local.settings.sample.json")
    else:
        added = add_new_settings(settings_file, REPO_ROOT / "local.settings.sample.json")
        if added:
            print(f"added to {settings_file.name} from the sample: {', '.join(added)}")
    azurite = Azurite(location=args.data, blob_port=10000, queue_port=10001, table_port=10002)
    try:
        azurite.start()
    except AzuriteError as exc:
        print(f"error: {exc}", file=sys.stderr)
        print("hint: another Azurite may already use ports 10000-10002; stop it first", file=sys.stderr)
        return 1
    started = time.monotonic()
    if args.users or args.groups:
        print(
            f"building the demo tenants (Contoso: {args.users or 'default'} users, "
            f"{args.groups or 'default'} groups)…"
        )
        sys.stdout.flush()
    tenants = build_demo_tenants(users=args.users, groups=args.groups)
    built = time.monotonic() - started
    graph = DemoGraphServer(tenants, port=args.graph_port)
    try:
        graph.start()
    except OSError as exc:
        azurite.stop()
        print(f"error: the demo tenant could not listen on port {args.graph_port}: {exc}", file=sys.stderr)
        return 1

    try:
        # The app reads local.settings.json like `func start`; the environment still wins.
        app_host = DevHost(port=args.app_port, local_settings=settings_file).start_in_thread()
    except Exception as exc:
        graph.stop()
        azurite.stop()
        print(f"error: the app could not start: {exc}", file=sys.stderr)
        return 1

    print("O365 Groups Sync: local stack is up")
    print("  Azurite (storage emulator; account devstoreaccount1, its public development key)")
    print(f"    table  http://127.0.0.1:{azurite.table_port}   queue  http://127.0.0.1:{azurite.queue_port}")
    print(f"  Demo tenant (Graph v1.0): {graph.base_url}")
    for tenant in tenants:
        size = f"{len(tenant.users):,} users, {len(tenant.groups):,} groups"
        print(f"    {tenant.display_name:<10} {tenant.tenant_id}  ({size})")
    print(f"    (built in {built:.1f} s)")
    first = tenants[0].tenant_id
    print(f"  App (Functions dev host):  {app_host.base_url}/api/health")
    print(f"  The page:                  {app_host.base_url}/api/ui")
    print("Every data route needs a signed-in user, as behind App Service Authentication:")
    for line in sign_in_help(app_host.base_url, "/api/ui"):
        print(f"  {line}")
    print("Onboard a customer: sign in as contoso-admin, click Connect Microsoft 365, Accept.")
    print("  operator: every tenant; fabrikam-admin, contoso-user: nothing of Contoso's; partner: its grants")
    print(f"  (.venv/bin/python -m sync grants add {PARTNER_TENANT_ID} --user {PARTNER_OBJECT_ID} {first})")
    print("Try the CLI in another terminal (it reads local.settings.json):")
    print(f"  .venv/bin/python -m sync tenant add {first} --name Contoso")
    print(f"  .venv/bin/python -m sync groups {first}")
    print("Press Ctrl-C to stop.")
    sys.stdout.flush()

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        stop.wait()
    except KeyboardInterrupt:
        pass
    finally:
        app_host.stop_thread()
        graph.stop()
        azurite.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
