"""The dev host plays the Functions host: HTTP routes and the dev principal, queue triggers with
retries and the poison queue, timers on demand. Storage is the session's Azurite."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import threading
import urllib.request
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import aiohttp
import azure.functions as func
import pytest
from azure.core.exceptions import ResourceExistsError
from azure.storage.queue.aio import QueueClient

from devtools.azurite import Azurite
from devtools.demo_tenant import DemoGraphServer
from devtools.host import DevHost, HttpRoute, encode_principal, indexed_functions, parse_timespan
from shared.settings import reset_settings_cache

# -- a tiny app of the test's own, to exercise what the product's handlers never do ----------------

probe = func.FunctionApp(http_auth_level=func.AuthLevel.ANONYMOUS)
CALLS: list[tuple[Any, ...]] = []


@probe.function_name("always_fails")
@probe.queue_trigger(arg_name="msg", queue_name="%PROBE_QUEUE%", connection="SYNC_STORAGE")
async def always_fails(msg: func.QueueMessage) -> None:
    """Raises on every delivery, so the host retries and then gives up."""
    CALLS.append(("fail", msg.dequeue_count, msg.get_body()))
    raise RuntimeError("this probe always fails")


@probe.function_name("tick")
@probe.timer_trigger(arg_name="timer", schedule="0 0 3 * * *", run_on_startup=False)
async def tick(timer: func.TimerRequest) -> None:
    """Records that it ran."""
    CALLS.append(("tick", timer.past_due))


@probe.function_name("echo")
@probe.route(route="echo/{*rest}", methods=["GET"])
def echo(req: func.HttpRequest) -> func.HttpResponse:
    """A synchronous handler (the host runs it on a thread) that echoes what it received."""
    body = {
        "thread": threading.current_thread().name,
        "route": dict(req.route_params),
        "params": dict(req.params),
        "principal": req.headers.get("x-ms-client-principal") is not None,
    }
    return func.HttpResponse(json.dumps(body), mimetype="application/json", headers={"X-Probe": "yes"})


@probe.function_name("item")
@probe.route(route="items/{id:int}/{name?}", methods=["GET", "PUT"])
async def item(req: func.HttpRequest) -> func.HttpResponse:
    """Typed and optional route parameters."""
    return func.HttpResponse(json.dumps(dict(req.route_params)), mimetype="application/json")


@probe.function_name("items_literal")
@probe.route(route="items/special", methods=["GET"])
async def items_literal(req: func.HttpRequest) -> func.HttpResponse:
    """A literal segment wins over a parameter."""
    return func.HttpResponse("special")


@pytest.fixture(autouse=True)
def _clear_calls() -> Iterator[None]:
    CALLS.clear()
    # The product keeps its settings once read; each host here brings its own queue name.
    reset_settings_cache()
    yield
    reset_settings_cache()


@pytest.fixture
def settings(azurite: Azurite, unique_queue: str) -> dict[str, str]:
    """App settings for one test: Azurite, a queue of its own, a Graph nobody listens on."""
    return {
        "SYNC_STORAGE": azurite.connection_string,
        "AzureWebJobsStorage": azurite.connection_string,
        "SYNC_QUEUE": unique_queue,
        "PROBE_QUEUE": f"{unique_queue}-probe",
        "SYNC_SCHEDULE": "0 0 2 * * *",
        "GRAPH_AUTH": "demo",
        "GRAPH_BASE_URL": "http://127.0.0.1:9/v1.0",
    }


QUICK_RETRIES = {"extensions": {"queues": {"maxDequeueCount": 2, "visibilityTimeout": "00:00:00.2"}}}

StartHost = Callable[..., Awaitable[DevHost]]


@pytest.fixture
async def start_host(settings: dict[str, str]) -> AsyncIterator[StartHost]:
    """Start DevHosts on free ports in the test's loop; all are stopped at the end."""
    hosts: list[DevHost] = []

    async def start(**kwargs: Any) -> DevHost:
        host = DevHost(port=0, settings=settings, local_settings=None, **kwargs)
        await host.start()
        hosts.append(host)
        return host

    yield start
    for host in reversed(hosts):
        await host.stop()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    """A plain HTTP client."""
    async with aiohttp.ClientSession() as session:
        yield session


async def queue_messages(connection: str, name: str) -> list[str]:
    """The visible messages of a queue, as stored (peeked, not received)."""
    async with QueueClient.from_connection_string(connection, name) as queue:
        return [m.content for m in await queue.peek_messages(max_messages=32)]


async def send_raw(connection: str, name: str, content: str) -> None:
    """Put a message exactly as given (no encoding) on a queue, creating it if needed."""
    async with QueueClient.from_connection_string(connection, name) as queue:
        with contextlib.suppress(ResourceExistsError):
            await queue.create_queue()
        await queue.send_message(content)


def watch_logs(caplog: pytest.LogCaptureFixture) -> None:
    """Capture the host's and the worker's INFO lines (not the storage SDK's request logs)."""
    for name in ("devtools.host", "sync.jobs"):
        caplog.set_level(logging.INFO, logger=name)


def b64(text: str) -> str:
    """Base64 of UTF-8 text, as the Functions queue trigger expects it by default."""
    return base64.b64encode(text.encode()).decode()


# -- the product app over HTTP --------------------------------------------------------------------


async def test_health_is_served_from_the_apps_route(
    start_host: StartHost, http: aiohttp.ClientSession
) -> None:
    host = await start_host()
    async with http.get(f"{host.base_url}/api/health") as resp:
        assert resp.status == 200
        assert resp.content_type == "application/json"
        assert await resp.json() == {"status": "ok"}


async def test_without_the_dev_principal_data_routes_answer_401(
    start_host: StartHost, http: aiohttp.ClientSession
) -> None:
    host = await start_host(inject_principal=False)
    async with http.get(f"{host.base_url}/api/tenants") as resp:
        assert resp.status == 401
        assert resp.content_type == "application/problem+json"
        assert (await resp.json())["status"] == 401


async def test_a_principal_without_the_role_gets_403(
    start_host: StartHost, http: aiohttp.ClientSession
) -> None:
    host = await start_host()
    reader = encode_principal("reader@localhost", roles=["Some.Other"])
    async with http.get(f"{host.base_url}/api/tenants", headers={"X-MS-CLIENT-PRINCIPAL": reader}) as resp:
        assert resp.status == 403
        problem = await resp.json()
        assert "reader@localhost" in problem["detail"] and "Sync.Admin" in problem["detail"]


async def test_unknown_route_is_404_and_wrong_method_is_405(
    start_host: StartHost, http: aiohttp.ClientSession
) -> None:
    host = await start_host()
    async with http.get(f"{host.base_url}/api/no/such/route") as resp:
        assert resp.status == 404
        assert resp.content_type == "application/problem+json"
    async with http.delete(f"{host.base_url}/api/health") as resp:
        assert resp.status == 405
        assert resp.headers["Allow"] == "GET"
        assert resp.content_type == "application/problem+json"


async def test_route_params_reach_the_service(start_host: StartHost, http: aiohttp.ClientSession) -> None:
    host = await start_host()
    async with http.get(f"{host.base_url}/api/tenants/not-a-guid/selection") as resp:
        assert resp.status == 400
        problem = await resp.json()
        assert "not-a-guid" in problem["detail"] and "GUID" in problem["detail"]


async def test_a_malformed_refresh_message_is_dropped(
    start_host: StartHost, azurite: Azurite, unique_queue: str, caplog: pytest.LogCaptureFixture
) -> None:
    watch_logs(caplog)
    host = await start_host()
    await send_raw(azurite.connection_string, unique_queue, b64("not json"))
    await host.wait_idle(timeout=30)
    assert await queue_messages(azurite.connection_string, unique_queue) == []
    assert await queue_messages(azurite.connection_string, f"{unique_queue}-poison") == []
    assert "dropped a malformed refresh message" in caplog.text
    assert "Executed 'Functions.refresh_worker' (Succeeded" in caplog.text


async def test_a_refresh_runs_end_to_end_through_the_queue(
    start_host: StartHost,
    settings: dict[str, str],
    own_graph: DemoGraphServer,
    tenant_id: str,
    http: aiohttp.ClientSession,
) -> None:
    settings["GRAPH_BASE_URL"] = own_graph.base_url
    host = await start_host()
    async with http.put(
        f"{host.base_url}/api/tenants/{tenant_id}", json={"displayName": "Host test"}
    ) as resp:
        assert resp.status == 200
    async with http.post(f"{host.base_url}/api/tenants/{tenant_id}/refresh") as resp:
        assert resp.status == 202
        location = resp.headers["Location"]
    await host.wait_idle(timeout=60)
    async with http.get(f"{host.base_url}{location}") as resp:
        run = await resp.json()
    assert run["status"] == "succeeded", run
    assert run["requestedBy"] == "dev@localhost"  # the injected dev principal
    assert run["counts"]["added"] > 0


# -- the host's own mechanics, through the probe app ------------------------------------------------


async def test_failing_message_is_retried_then_poisoned(
    start_host: StartHost, azurite: Azurite, settings: dict[str, str], caplog: pytest.LogCaptureFixture
) -> None:
    watch_logs(caplog)
    host = await start_host(app=probe, host_json=QUICK_RETRIES)
    queue = settings["PROBE_QUEUE"]
    await send_raw(azurite.connection_string, queue, b64("hello"))
    await host.wait_idle(timeout=30)
    assert CALLS == [("fail", 1, b"hello"), ("fail", 2, b"hello")]
    assert await queue_messages(azurite.connection_string, queue) == []
    # The poison queue keeps the message as it arrived: still base64.
    assert await queue_messages(azurite.connection_string, f"{queue}-poison") == [b64("hello")]
    assert "Executed 'Functions.always_fails' (Failed" in caplog.text


async def test_a_message_that_is_not_base64_is_poisoned_without_a_call(
    start_host: StartHost, azurite: Azurite, settings: dict[str, str]
) -> None:
    host = await start_host(app=probe, host_json=QUICK_RETRIES)
    queue = settings["PROBE_QUEUE"]
    await send_raw(azurite.connection_string, queue, "not base64 at all!")
    await host.wait_idle(timeout=30)
    assert CALLS == []
    assert await queue_messages(azurite.connection_string, f"{queue}-poison") == ["not base64 at all!"]


async def test_raw_encoding_passes_the_text_through(
    start_host: StartHost, azurite: Azurite, settings: dict[str, str]
) -> None:
    raw = {"extensions": {"queues": {"messageEncoding": "none", "maxDequeueCount": 1}}}
    host = await start_host(app=probe, host_json=raw)
    await send_raw(azurite.connection_string, settings["PROBE_QUEUE"], "plain text")
    await host.wait_idle(timeout=30)
    assert CALLS == [("fail", 1, b"plain text")]


async def test_timer_and_queue_functions_run_on_demand(
    start_host: StartHost, http: aiohttp.ClientSession
) -> None:
    host = await start_host(app=probe)
    async with http.post(f"{host.base_url}/admin/functions/tick", json={"input": ""}) as resp:
        assert resp.status == 202
    async with http.post(f"{host.base_url}/admin/functions/always_fails", json={"input": "by hand"}) as resp:
        assert resp.status == 202
    async with http.post(f"{host.base_url}/admin/functions/nope", json={"input": ""}) as resp:
        assert resp.status == 404
    async with http.post(f"{host.base_url}/admin/functions/echo", json={"input": ""}) as resp:
        assert resp.status == 400
    await host.wait_idle(timeout=30)
    assert sorted(CALLS, key=str) == [("fail", 1, b"by hand"), ("tick", False)]


async def test_route_templates_sync_handlers_and_principal(
    start_host: StartHost, http: aiohttp.ClientSession
) -> None:
    host = await start_host(app=probe)
    async with http.get(f"{host.base_url}/api/echo/a/b%20c?x=1") as resp:
        assert resp.status == 200
        assert resp.headers["X-Probe"] == "yes"
        assert resp.headers["Content-Type"] == "application/json; charset=utf-8"
        body = await resp.json()
    assert body["route"] == {"rest": "a/b c"} and body["params"] == {"x": "1"}
    assert body["principal"] is True
    assert body["thread"] != threading.current_thread().name  # a sync handler runs off the loop
    async with http.get(f"{host.base_url}/api/items/42") as resp:
        assert await resp.json() == {"id": "42"}
    async with http.put(f"{host.base_url}/API/Items/42/widget/") as resp:
        assert await resp.json() == {"id": "42", "name": "widget"}
    async with http.get(f"{host.base_url}/api/items/special") as resp:
        assert await resp.text() == "special"
    async with http.get(f"{host.base_url}/api/items/abc") as resp:
        assert resp.status == 404  # {id:int} does not match
    async with http.post(f"{host.base_url}/api/items/42") as resp:
        assert resp.status == 405
        assert resp.headers["Allow"] == "GET, PUT"


def test_start_in_thread_serves_and_stops(settings: dict[str, str]) -> None:
    with DevHost(app=probe, port=0, settings=settings, local_settings=None) as host:
        with urllib.request.urlopen(f"{host.base_url}/api/echo/x", timeout=10) as resp:
            assert json.load(resp)["route"] == {"rest": "x"}
        host.wait_idle_sync(timeout=30)
    with pytest.raises(RuntimeError):
        _ = host.base_url


async def test_wait_idle_works_from_another_loop(settings: dict[str, str], azurite: Azurite) -> None:
    host = DevHost(app=probe, port=0, settings=settings, local_settings=None, host_json=QUICK_RETRIES)
    await asyncio.to_thread(host.start_in_thread)
    try:
        await send_raw(azurite.connection_string, settings["PROBE_QUEUE"], b64("x"))
        await host.wait_idle(timeout=30)
        assert len(CALLS) == 2
    finally:
        await asyncio.to_thread(host.stop_thread)


def test_helpers() -> None:
    assert parse_timespan("00:00:00.2") == pytest.approx(0.2)
    assert parse_timespan("1.02:03:04") == 86400 + 2 * 3600 + 3 * 60 + 4
    route = HttpRoute.compile("f", echo, "req", "files/{name}.{ext}", "api", None)
    assert route.match("/api/files/report.pdf") == {"name": "report", "ext": "pdf"}
    assert route.match("/other/files/report.pdf") is None


def test_indexing_leaves_the_apps_own_get_functions_call_free() -> None:
    app = func.FunctionApp(http_auth_level=func.AuthLevel.ANONYMOUS)

    @app.route(route="ping")
    async def ping(req: func.HttpRequest) -> func.HttpResponse:
        return func.HttpResponse("pong")

    first = indexed_functions(app)
    assert indexed_functions(app) is first  # kept, not rebuilt
    assert [f.get_function_name() for f in app.get_functions()] == ["ping"]
