"""Side by side in one process: what each cut of issue 17 replaced, against what replaced it.

- `$batch`: the same POST of 20 mailbox look-ups through the Kiota request adapter over httpcore's
  pool (before), and `GraphTransport.post_batch` over aiohttp's connector (after).
- roster writes: the same 100-entity transactions through `TableClient.submit_transaction`
  (before) and `sync.table_wire.submit_transaction` (after).
- roster read: the same 5,000 rows through `TableClient.query_entities` (before) and
  `RosterStore.read_roster` (after).

Each figure is CPU seconds of this process per operation (the demo Graph runs in another process,
Azurite is Node), alternated in rounds so that load on the machine falls on both alike.
"""

from __future__ import annotations

import asyncio
import json
import os
import resource
import subprocess
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

CONTOSO = "840fa9a3-916c-42ac-99ab-a1e9158955c5"


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def _alternate(
    ways: dict[str, Callable[[], Awaitable[None]]], count: int, rounds: int = 3, parallel: int = 16
) -> dict[str, float]:
    """CPU ms per call of each way, the ways alternating round by round (best round kept)."""
    gate = asyncio.Semaphore(parallel)

    async def one(call: Callable[[], Awaitable[None]]) -> None:
        async with gate:
            await call()

    best: dict[str, float] = {}
    for _ in range(rounds):
        for name, call in ways.items():
            cpu0 = _cpu()
            await asyncio.gather(*(one(call) for _ in range(count)))
            per_call = (_cpu() - cpu0) / count * 1000
            best[name] = min(best.get(name, per_call), per_call)
    return {name: round(ms, 3) for name, ms in best.items()}


async def _batch_cut(base_url: str) -> dict[str, float]:
    import httpx
    from msgraph_core import GraphClientFactory

    from shared.graph import GraphClients
    from shared.settings import load_settings
    from sync.directory import DirectoryReader
    from sync.directory.transport import _batch_request
    from sync.directory.wire import JSON, BatchRequest

    settings = load_settings(
        {"SYNC_STORAGE": "UseDevelopmentStorage=true", "GRAPH_AUTH": "demo", "GRAPH_BASE_URL": base_url},
        local_settings=None,
    )
    clients = GraphClients(settings)
    after = DirectoryReader(clients.for_tenant(CONTOSO)).transport
    ids = [u.id for u in await DirectoryReader(clients.for_tenant(CONTOSO)).list_all_users()][:20]
    body = JSON.encode(
        {
            "requests": [
                BatchRequest(id=str(i), method="GET", url=f"/users/{uid}/mailboxSettings?$select=userPurpose")
                for i, uid in enumerate(ids)
            ]
        }
    )
    # Before: the adapter (RequestInformation, spans, response handler) over httpcore's pool.
    old_pool = GraphClientFactory.create_with_default_middleware(
        client=httpx.AsyncClient(limits=httpx.Limits(max_connections=32, max_keepalive_connections=32))
    )
    adapter = clients.for_tenant(CONTOSO).request_adapter
    before_adapter = type(adapter)(adapter._authentication_provider, client=old_pool)
    before_adapter.base_url = adapter.base_url

    async def before() -> None:
        await before_adapter.send_primitive_async(_batch_request(body), "bytes", {})

    async def now() -> None:
        await after.post_batch(body, "MailboxSettings.Read")

    try:
        return await _alternate({"before": before, "after": now}, count=400)
    finally:
        await old_pool.aclose()
        await clients.aclose()


async def _table_cut(connection_string: str) -> dict[str, dict[str, float]]:
    from azure.data.tables import TransactionOperation, UpdateMode

    from shared.settings import load_settings
    from shared.storage import ensure_storage
    from sync.models import RosterStatus, RosterUser
    from sync.roster import RosterStore, _from_entity, _to_entity
    from sync.table_wire import Upsert, submit_transaction

    settings = load_settings({"SYNC_STORAGE": connection_string}, local_settings=None)
    await ensure_storage(settings)
    roster = RosterStore(settings)
    table = roster._table
    now = datetime.now(UTC)
    tenant = str(uuid.uuid4())

    def rows(start: int) -> list[RosterUser]:
        return [
            RosterUser(
                id=str(uuid.UUID(int=start + i)),
                user_principal_name=f"user{start + i}@contoso.com",
                display_name=f"User {start + i}",
                mail=f"user{start + i}@contoso.com",
                department="Engineering",
                job_title="Engineer",
                groups=(str(uuid.UUID(int=7)), str(uuid.UUID(int=8))),
                status=RosterStatus.ACTIVE,
                added_at=now,
                updated_at=now,
                purpose_checked_at=now,
            )
            for i in range(100)
        ]

    chunk = rows(0)

    async def sdk_write() -> None:
        ops = [
            (TransactionOperation.UPSERT, _to_entity(tenant, r), {"mode": UpdateMode.REPLACE}) for r in chunk
        ]
        await table.submit_transaction(ops)

    async def wire_write() -> None:
        await submit_transaction(table, [Upsert(_to_entity(tenant, r)) for r in chunk])

    for start in range(100, 5000, 100):
        await roster.write(tenant, rows(start))

    async def sdk_read() -> None:
        query = table.query_entities("PartitionKey eq @pk", parameters={"pk": tenant}, results_per_page=1000)
        [_from_entity(entity) async for entity in query]

    async def wire_read() -> None:
        await roster.read_roster(tenant)

    try:
        writes = await _alternate({"before": sdk_write, "after": wire_write}, count=40, parallel=4)
        reads = await _alternate({"before": sdk_read, "after": wire_read}, count=3, parallel=1)
    finally:
        await roster.aclose()
    return {"write_100": writes, "read_5000": reads}


def bench_cuts() -> dict[str, Any]:
    """Run the demo Graph in a process of its own, Azurite, and the three comparisons here."""
    from devtools.azurite import Azurite, free_port

    port = free_port()
    graph = subprocess.Popen(
        [sys.executable, "-m", "devtools.demo_tenant", "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
    )
    try:
        assert graph.stdout is not None
        graph.stdout.readline()  # listening
        load = os.getloadavg()[0]
        batch = asyncio.run(_batch_cut(f"http://127.0.0.1:{port}/v1.0"))
        with Azurite() as azurite:
            tables = asyncio.run(_table_cut(azurite.connection_string))
    finally:
        graph.terminate()
        graph.wait(timeout=30)
    return {"load_average": [round(load, 2), round(os.getloadavg()[0], 2)], "batch_20": batch, **tables}


def print_cuts(report: dict[str, Any]) -> None:
    """The side-by-side table."""
    low, high = report["load_average"]
    print(f"Cuts side by side, one process (load average {low} -> {high})")
    print("| operation | before: CPU ms | after: CPU ms | before / after |")
    print("|---|---:|---:|---:|")
    rows = (
        ("$batch of 20 look-ups (Kiota adapter on httpcore -> post_batch on aiohttp)", report["batch_20"]),
        ("roster transaction of 100 (submit_transaction -> table_wire)", report["write_100"]),
        ("roster read of 5,000 rows (query_entities -> table_wire)", report["read_5000"]),
    )
    for label, figures in rows:
        ratio = figures["before"] / max(figures["after"], 1e-9)
        print(f"| {label} | {figures['before']} | {figures['after']} | {ratio:.1f}x |")


if __name__ == "__main__":  # python -m devtools.bench_cuts
    started = time.perf_counter()
    result = bench_cuts()
    print(json.dumps(result) if "--json" in sys.argv else "", file=sys.stderr)
    print_cuts(result)
    print(f"({time.perf_counter() - started:.0f} s)")
