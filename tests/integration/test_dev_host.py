"""The dev host plays the Functions host: HTTP routes on loopback, App Service Authentication's
sign-in and principal, queue triggers with retries and the poison queue, timers on demand.
Storage is the session's Azurite."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import os
import socket
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
from devtools.host import (
    SESSION_COOKIE,
    DevHost,
    HostError,
    aiohttp_path,
    encode_principal,
    indexed_functions,
    parse_timespan,
)
from devtools.host.identities import CONTOSO_TENANT_ID, GLOBAL_ADMINISTRATOR, MEMBER_USER
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
    principal = req.headers.get("x-ms-client-principal")
    body = {
        "thread": threading.current_thread().name,
        "route": dict(req.route_params),
        "params": dict(req.params),
        "principal": json.loads(base64.b64decode(principal)) if principal else None,
        "principalHeaders": {k: v for k, v in req.headers.items() if k.lower().startswith("x-ms-")},
        "trustSetting": os.environ.get("DEV_TRUST_PRINCIPAL_HEADER"),
    }
    return func.HttpResponse(json.dumps(body), mimetype="application/json", headers={"X-Probe": "yes"})


@probe.function_name("item")
@probe.route(route="items/{id:int}", methods=["GET", "PUT"])
async def item(req: func.HttpRequest) -> func.HttpResponse:
    """A typed route parameter."""
    return func.HttpResponse(json.dumps(dict(req.route_params)), mimetype="application/json")


@probe.function_name("named_item")
@probe.route(route="items/{id:int}/{name}", methods=["GET", "PUT"])
async def named_item(req: func.HttpRequest) -> func.HttpResponse:
    """Two route parameters."""
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
        "NOTIFY_QUEUE": f"{unique_queue}-notify",
        "SYNC_SCHEDULE": "0 0 2 * * *",
        "NOTIFY_RENEW_SCHEDULE": "0 30 */6 * * *",
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
    """An HTTP client that keeps cookies, also those of 127.0.0.1 (the session cookie)."""
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as session:
        yield session


async def sign_in(http: aiohttp.ClientSession, host: DevHost, identity: str) -> None:
    """Sign in as one of the dev identities (the scripts' shortcut); the cookie stays in `http`."""
    async with http.post(f"{host.base_url}/.auth/login/dev", json={"identity": identity}) as resp:
        assert resp.status == 200, await resp.text()


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


async def test_without_a_session_data_routes_answer_401(
    start_host: StartHost, http: aiohttp.ClientSession
) -> None:
    host = await start_host()
    async with http.get(f"{host.base_url}/api/tenants") as resp:
        assert resp.status == 401
        assert resp.content_type == "application/problem+json"
        assert (await resp.json())["status"] == 401


async def test_a_forged_principal_header_is_dropped(
    start_host: StartHost, http: aiohttp.ClientSession
) -> None:
    host = await start_host()
    forged = encode_principal("mallory@evil.example", roles=["Sync.Operator"])
    headers = {
        "X-MS-CLIENT-PRINCIPAL": forged,
        "x-ms-client-principal-name": "mallory@evil.example",
        "X-MS-CLIENT-PRINCIPAL-IDP": "aad",
        "X-MS-TOKEN-AAD-ACCESS-TOKEN": "forged",
    }
    async with http.get(f"{host.base_url}/api/tenants", headers=headers) as resp:
        assert resp.status == 401


async def test_a_signed_in_user_without_an_admin_role_sees_nothing(
    start_host: StartHost, http: aiohttp.ClientSession
) -> None:
    host = await start_host()
    await sign_in(http, host, "contoso-user")
    async with http.get(f"{host.base_url}/api/tenants") as resp:
        assert resp.status == 200 and await resp.json() == {"value": []}
    async with http.get(f"{host.base_url}/api/tenants/{CONTOSO_TENANT_ID}/runs") as resp:
        assert resp.status == 404  # not 403: a stranger cannot tell a foreign tenant from none
    async with http.get(f"{host.base_url}/api/whoami") as resp:
        me = await resp.json()
        assert me["userPrincipalName"] == "pat.user@contoso.com" and me["kind"] == "partner", me


async def test_a_cross_site_post_through_the_host_is_refused(
    start_host: StartHost, http: aiohttp.ClientSession
) -> None:
    host = await start_host()
    await sign_in(http, host, "operator")
    url = f"{host.base_url}/api/tenants/{CONTOSO_TENANT_ID}/refresh"
    async with http.post(url, data="{}", headers={"Origin": "https://evil.example"}) as resp:
        assert resp.status == 403 and resp.content_type == "application/problem+json"
    async with http.post(url, data="{}", headers={"Content-Type": "text/plain"}) as resp:
        assert resp.status == 415


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
    await sign_in(http, host, "operator")
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
    await sign_in(http, host, "operator")
    async with http.put(
        f"{host.base_url}/api/tenants/{tenant_id}", json={"displayName": "Host test"}
    ) as resp:
        assert resp.status == 200
    async with http.post(f"{host.base_url}/api/tenants/{tenant_id}/refresh", json={}) as resp:
        assert resp.status == 202
        location = resp.headers["Location"]
    await host.wait_idle(timeout=60)
    async with http.get(f"{host.base_url}{location}") as resp:
        run = await resp.json()
    assert run["status"] == "succeeded", run
    # The signed-in dev operator, by name and by tenant and object id.
    assert run["requestedBy"] == (
        "operator@groupsync.example (tid aa8843fa-9556-4492-a1cb-79b096247291, "
        "oid 43e8c286-1bdf-4b6d-89de-deffd2c5861a)"
    )
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


async def test_route_templates_and_sync_handlers(start_host: StartHost, http: aiohttp.ClientSession) -> None:
    host = await start_host(app=probe)
    async with http.get(f"{host.base_url}/api/echo/a/b%20c?x=1") as resp:
        assert resp.status == 200
        assert resp.headers["X-Probe"] == "yes"
        assert resp.headers["Content-Type"] == "application/json; charset=utf-8"
        body = await resp.json()
    assert body["route"] == {"rest": "a/b c"} and body["params"] == {"x": "1"}
    assert body["principal"] is None and body["principalHeaders"] == {}  # nobody signed in
    assert body["thread"] != threading.current_thread().name  # a sync handler runs off the loop
    async with http.get(f"{host.base_url}/api/items/42") as resp:
        assert await resp.json() == {"id": "42"}
    async with http.put(f"{host.base_url}/api/items/42/widget/") as resp:  # one trailing slash is fine
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
    assert aiohttp_path("api", "tenants/{tenantId}/runs") == "/api/tenants/{tenantId}/runs"
    assert aiohttp_path("", "files/{name}.{ext}") == "/files/{name}.{ext}"
    assert aiohttp_path("api", "echo/{*rest}") == "/api/echo/{rest:.*}"
    assert aiohttp_path("api", "items/{id:int}") == r"/api/items/{id:-?\d+}"
    assert aiohttp_path("api", "codes/{code:regex(^[a-z]+$)}") == "/api/codes/{code:[a-z]+}"
    with pytest.raises(HostError, match="optional"):
        aiohttp_path("api", "items/{name?}")


def test_indexing_leaves_the_apps_own_get_functions_call_free() -> None:
    app = func.FunctionApp(http_auth_level=func.AuthLevel.ANONYMOUS)

    @app.route(route="ping")
    async def ping(req: func.HttpRequest) -> func.HttpResponse:
        return func.HttpResponse("pong")

    first = indexed_functions(app)
    assert indexed_functions(app) is first  # kept, not rebuilt
    assert [f.get_function_name() for f in app.get_functions()] == ["ping"]


# -- fail closed: loopback only, App Service Authentication's sign-in -----------------------------


async def test_listens_on_loopback_only_and_checks_the_host_header(
    start_host: StartHost, http: aiohttp.ClientSession
) -> None:
    host = await start_host(app=probe)
    port = int(host.base_url.rsplit(":", 1)[1])
    assert host.base_url == f"http://127.0.0.1:{port}"
    # Bound to 127.0.0.1, not to every address: another loopback address is refused.
    with pytest.raises(OSError), socket.create_connection(("127.0.0.2", port), timeout=5):
        pass
    for good in (f"127.0.0.1:{port}", f"localhost:{port}"):
        async with http.get(f"{host.base_url}/api/echo/x", headers={"Host": good}) as resp:
            assert resp.status == 200, good
    # A rebound name, another port, no port: whoever the browser thinks it talks to, not us.
    for bad in (f"evil.example:{port}", f"127.0.0.1:{port + 1}", "127.0.0.1", f"127.0.0.1.nip.io:{port}"):
        for path in ("/api/echo/x", "/.auth/login/aad", "/admin/functions/tick"):
            async with http.get(f"{host.base_url}{path}", headers={"Host": bad}) as resp:
                assert resp.status == 400, (bad, path)
                assert resp.content_type == "application/problem+json"


async def test_sign_in_page_me_and_logout(start_host: StartHost, http: aiohttp.ClientSession) -> None:
    host = await start_host(app=probe)
    base = host.base_url
    async with http.get(f"{base}/.auth/me") as resp:
        assert resp.status == 401
    async with http.get(
        f"{base}/.auth/login/aad", params={"post_login_redirect_uri": "/api/echo/back"}
    ) as resp:
        assert resp.status == 200 and resp.content_type == "text/html"
        page = await resp.text()
    for key in ("operator", "contoso-admin", "contoso-user", "fabrikam-admin", "fabrikam-user", "partner"):
        assert f'value="{key}"' in page
    assert 'value="/api/echo/back"' in page
    form = {"identity": "operator", "post_login_redirect_uri": "/api/echo/back"}
    async with http.post(f"{base}/.auth/login/aad", data=form, allow_redirects=False) as resp:
        assert resp.status == 302 and resp.headers["Location"] == "/api/echo/back"
        cookie = resp.headers["Set-Cookie"]
    assert cookie.startswith(f"{SESSION_COOKIE}=") and "HttpOnly" in cookie and "SameSite=Lax" in cookie
    async with http.get(f"{base}/.auth/me") as resp:
        assert resp.status == 200
        [me] = await resp.json()
    assert me["provider_name"] == "aad" and me["user_id"] == "operator@groupsync.example"
    assert {"typ": "roles", "val": "Sync.Operator"} in me["user_claims"]
    async with http.get(f"{base}/api/echo/back") as resp:
        assert (await resp.json())["principal"]["claims"] == me["user_claims"]
    async with http.get(f"{base}/.auth/logout", allow_redirects=False) as resp:
        assert resp.status == 302 and resp.headers["Location"] == "/.auth/logout/done"
    async with http.get(f"{base}/.auth/me") as resp:
        assert resp.status == 401
    async with http.get(f"{base}/api/echo/back") as resp:
        assert (await resp.json())["principal"] is None


async def test_the_principal_has_app_services_shape(
    start_host: StartHost, http: aiohttp.ClientSession
) -> None:
    host = await start_host(app=probe)
    await sign_in(http, host, "contoso-admin")
    async with http.get(f"{host.base_url}/api/echo/x") as resp:
        body = await resp.json()
    principal = body["principal"]
    assert principal["auth_typ"] == "aad"
    assert principal["name_typ"] == "http://schemas.xmlsoap.org/ws/2005/05/identity/claims/emailaddress"
    assert principal["role_typ"] == "http://schemas.microsoft.com/ws/2008/06/identity/claims/role"
    claims: dict[str, list[str]] = {}
    for claim in principal["claims"]:
        assert set(claim) == {"typ", "val"} and isinstance(claim["val"], str)
        claims.setdefault(claim["typ"], []).append(claim["val"])
    object_id = "http://schemas.microsoft.com/identity/claims/objectidentifier"
    assert claims["http://schemas.microsoft.com/identity/claims/tenantid"] == [CONTOSO_TENANT_ID]
    assert claims["tid"] == [CONTOSO_TENANT_ID]
    assert claims["preferred_username"] == ["it.admin@contoso.com"]
    assert claims["name"] == ["Contoso Global Admin"]
    assert sorted(claims["wids"]) == sorted([GLOBAL_ADMINISTRATOR, MEMBER_USER])  # one claim per role
    assert "roles" not in claims  # a customer's admin holds no app role
    headers = {k.lower(): v for k, v in body["principalHeaders"].items()}
    assert headers["x-ms-client-principal-name"] == "it.admin@contoso.com"
    assert headers["x-ms-client-principal-id"] == claims[object_id][0]
    assert headers["x-ms-client-principal-idp"] == "aad"
    assert body["trustSetting"] == "true"  # GRAPH_AUTH=demo: the app may trust the header


async def test_the_operators_home_tenant_follows_the_setting(
    start_host: StartHost, settings: dict[str, str], http: aiohttp.ClientSession
) -> None:
    settings["HOME_TENANT_ID"] = home = "0b9c8d7e-6f5a-4b3c-9d2e-1f0a9b8c7d6e"
    settings["GRAPH_AUTH"] = "managed-identity"
    host = await start_host(app=probe)
    await sign_in(http, host, "operator")
    async with http.get(f"{host.base_url}/api/echo/x") as resp:
        body = await resp.json()
    assert {"typ": "tid", "val": home} in body["principal"]["claims"]
    assert [c["val"] for c in body["principal"]["claims"] if c["typ"] == "roles"] == ["Sync.Operator"]
    assert body["trustSetting"] is None  # not the demo Graph: the host does not ask the app to trust it


async def test_sign_in_refuses_foreign_redirects_origins_and_unknown_identities(
    start_host: StartHost, http: aiohttp.ClientSession
) -> None:
    host = await start_host(app=probe)
    base = host.base_url
    for target in ("https://evil.example/", "//evil.example/x", "javascript:alert(1)", "api/ui"):
        async with http.get(f"{base}/.auth/login/aad", params={"post_login_redirect_uri": target}) as resp:
            assert resp.status == 400, target
        async with http.get(f"{base}/.auth/logout", params={"post_logout_redirect_uri": target}) as resp:
            assert resp.status == 400, target
    async with http.post(
        f"{base}/.auth/login/aad", data={"identity": "operator"}, headers={"Origin": "https://evil.example"}
    ) as resp:
        assert resp.status == 403
    async with http.post(f"{base}/.auth/login/dev", json={"identity": "root"}) as resp:
        assert resp.status == 400
    async with http.post(f"{base}/.auth/login/dev", data='{"identity": "operator"}') as resp:
        assert resp.status == 415  # not application/json: a cross-site form cannot sign anyone in
    async with http.get(f"{base}/.auth/me") as resp:
        assert resp.status == 401
