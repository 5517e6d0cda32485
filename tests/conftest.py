"""Shared fixtures: real Azurite and the demo Graph tenant, each started once per session; under
pytest-xdist a session is a worker, so each worker has its own (free ports, its own data folder)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator

import pytest
from _pytest.nodeid import NodeId

from devtools.azurite import Azurite, AzuriteError
from devtools.demo_tenant import DemoGraphServer, build_demo_tenants, build_tenant
from devtools.demo_tenant import Tenant as DemoTenant
from shared.graph import GraphClients, GraphHttpOptions
from shared.settings import Settings, load_settings


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Give items the node ids pytest-xdist and schemathesis mean them to have.

    pytest 9 builds a node id from `Node._id`; pytest-xdist 3.8 and schemathesis 4.32 still set
    the old `_nodeid`, which it ignores. So the ids of schemathesis' one-item-per-operation
    (`test[GET /api/health]`) all read `test`, and xdist, which schedules by id, ran one
    operation of eighteen; and `--dist loadgroup` never saw an `xdist_group`. Both are put right
    here (a no-op once the plugins catch up): the operation goes back into the id, and under
    loadgroup the id ends in `@group`, which sends the group to one worker, in order.
    """
    loadgroup = bool(getattr(config.option, "loadgroup", False))  # set on xdist workers
    for item in items:
        nodeid = item.nodeid
        if item.parent is not None and not nodeid.endswith(item.name):
            nodeid = f"{item.parent.nodeid}::{item.name}"
        if loadgroup:
            marks = item.iter_markers("xdist_group")
            groups = sorted({str(m.args[0] if m.args else m.kwargs.get("name", "default")) for m in marks})
            suffix = f"@{'_'.join(groups)}"
            if groups and not nodeid.endswith(suffix):
                nodeid += suffix
        if nodeid != item.nodeid:
            item._id = NodeId.parse(nodeid)  # type: ignore[attr-defined]


@pytest.fixture(scope="session")
def azurite() -> Iterator[Azurite]:
    """Azurite on free loopback ports with a temporary data folder, stopped at the end."""
    for attempt in range(3):
        try:
            server = Azurite().start()
            break
        except AzuriteError as exc:
            # A port found free may be taken before Azurite binds it (parallel workers): new ports.
            if attempt == 2:
                pytest.fail(f"Azurite could not start, so the storage tests cannot run: {exc}", pytrace=False)
    yield server
    server.stop()


def storage_settings(azurite: Azurite, **values: str) -> Settings:
    """Settings pointing at the session's Azurite (and, when given, a Graph base URL)."""
    env = {"SYNC_STORAGE": azurite.connection_string, "GRAPH_AUTH": "demo", **values}
    return load_settings(env, local_settings=None)


@pytest.fixture
def unique_queue() -> str:
    """A queue name of its own per test, so messages never cross tests."""
    return f"sync-{uuid.uuid4().hex[:12]}"


@pytest.fixture
def tenant_id() -> str:
    """A fresh tenant GUID per test: tables are partitioned by tenant, so tests never collide."""
    return str(uuid.uuid4())


@pytest.fixture(scope="session")
def demo_tenants() -> list[DemoTenant]:
    """The fixed demo tenants (Contoso, Fabrikam) that `make run` serves too. Read-only in tests."""
    return build_demo_tenants()


@pytest.fixture(scope="session")
def demo_graph(demo_tenants: list[DemoTenant]) -> Iterator[DemoGraphServer]:
    """One Graph look-alike for the session over the fixed demo tenants."""
    with DemoGraphServer(demo_tenants) as server:
        yield server


@pytest.fixture
def graph(demo_graph: DemoGraphServer) -> Iterator[DemoGraphServer]:
    """The session's demo Graph, with faults, latency and the request log reset after each test."""
    demo_graph.reset()
    yield demo_graph
    demo_graph.reset()


@pytest.fixture
def own_tenant(tenant_id: str) -> DemoTenant:
    """A small tenant of the test's own, free to mutate."""
    return build_tenant(tenant_id, "Test Tenant", users=300, groups=20, seed=11)


@pytest.fixture
def own_graph(own_tenant: DemoTenant) -> Iterator[DemoGraphServer]:
    """A Graph look-alike serving only the test's own tenant."""
    with DemoGraphServer([own_tenant]) as server:
        yield server


# Two retries keep fault tests quick; production uses GraphHttpOptions() (five, longer delays).
FAST_RETRIES = GraphHttpOptions(retry_delay_seconds=0.0, max_retries=2, request_timeout_seconds=5.0)


def demo_graph_settings(base_url: str) -> Settings:
    """Settings for the product's Graph clients against a demo Graph (demo credential)."""
    return load_settings(
        {"SYNC_STORAGE": "UseDevelopmentStorage=true", "GRAPH_AUTH": "demo", "GRAPH_BASE_URL": base_url},
        local_settings=None,
    )


@pytest.fixture
async def graph_clients(graph: DemoGraphServer) -> AsyncIterator[GraphClients]:
    """GraphClients for the session's demo Graph, closed with the test's event loop."""
    clients = GraphClients(demo_graph_settings(graph.base_url), FAST_RETRIES)
    yield clients
    await clients.aclose()


@pytest.fixture
async def sdk_clients(server: DemoGraphServer) -> AsyncIterator[GraphClients]:
    """GraphClients (the product's retries) for the test module's own `server` fixture."""
    clients = GraphClients(demo_graph_settings(server.base_url))
    yield clients
    await clients.aclose()
