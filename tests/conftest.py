"""Shared fixtures: real Azurite and the demo Graph tenant, each started once per session."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator

import pytest

from devtools.azurite import Azurite, AzuriteError
from devtools.demo_tenant import DemoGraphServer, build_demo_tenants, build_tenant
from devtools.demo_tenant import Tenant as DemoTenant
from shared.graph import GraphClients, GraphHttpOptions
from shared.settings import Settings, load_settings


@pytest.fixture(scope="session")
def azurite() -> Iterator[Azurite]:
    """Azurite on free loopback ports with a temporary data folder, stopped at the end."""
    try:
        server = Azurite().start()
    except AzuriteError as exc:
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


@pytest.fixture
async def graph_clients(graph: DemoGraphServer) -> AsyncIterator[GraphClients]:
    """GraphClients for the session's demo Graph, closed with the test's event loop."""
    settings = load_settings(
        {
            "SYNC_STORAGE": "UseDevelopmentStorage=true",
            "GRAPH_AUTH": "demo",
            "GRAPH_BASE_URL": graph.base_url,
        },
        local_settings=None,
    )
    clients = GraphClients(settings, FAST_RETRIES)
    yield clients
    await clients.aclose()
