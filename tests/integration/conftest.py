"""Calling the app's real handlers: HTTP triggers with func.HttpRequest, the queue worker with
func.QueueMessage read from Azurite, all configured through the environment as in Azure."""

from __future__ import annotations

import inspect
import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import azure.functions as func
import pytest

from devtools.azurite import Azurite
from devtools.demo_tenant import DemoGraphServer
from devtools.host import encode_principal
from devtools.host.identities import DEV_HOME_TENANT_ID
from shared.settings import Settings, get_settings, reset_settings_cache
from shared.storage import queue_client

REPO = Path(__file__).resolve().parents[2]

# The operator's home tenant in every integration test (app_env sets HOME_TENANT_ID to it).
HOME_TENANT_ID = DEV_HOME_TENANT_ID
# An operator, as App Service Authentication passes them on: Sync.Operator, signed in at home.
DEV_PRINCIPAL = encode_principal(
    "operator@groupsync.example",
    ["Sync.Operator"],
    tenant_id=HOME_TENANT_ID,
    object_id="43e8c286-1bdf-4b6d-89de-deffd2c5861a",
)
APP_BASE_URL = "http://127.0.0.1:7071"


@pytest.fixture(scope="session")
def app_functions() -> dict[str, Any]:
    """The app's registered functions by name (get_functions may be called once per app)."""
    from function_app import app

    return {fn.get_function_name(): fn for fn in app.get_functions()}


@dataclass
class AppUnderTest:
    """The app wired to Azurite and a demo Graph through app settings, as in Azure."""

    functions: dict[str, Any]
    settings: Settings
    graph: DemoGraphServer

    async def http(
        self,
        function: str,
        method: str,
        path: str,
        *,
        route: dict[str, str] | None = None,
        params: dict[str, str] | None = None,
        body: Any = None,
        headers: dict[str, str] | None = None,
        principal: str | None = DEV_PRINCIPAL,
    ) -> tuple[int, Any, dict[str, str]]:
        """Call an HTTP trigger; returns (status, decoded JSON body, headers)."""
        raw = body if isinstance(body, bytes) else (json.dumps(body).encode() if body is not None else b"")
        all_headers = {"content-type": "application/json", **(headers or {})}
        if principal:
            all_headers["x-ms-client-principal"] = principal
        request = func.HttpRequest(
            method=method,
            url=f"{APP_BASE_URL}/api/{path}",
            headers=all_headers,
            params=params or {},
            route_params=route or {},
            body=raw,
        )
        handler = self.functions[function].get_user_function()
        response = handler(request)
        if inspect.isawaitable(response):  # the page's static files are served by sync handlers
            response = await response
        payload = response.get_body()
        is_json = (response.mimetype or "").endswith("json")
        decoded = json.loads(payload) if payload and is_json else (payload.decode() if payload else None)
        # The Functions host turns mimetype into Content-Type; do the same for assertions.
        return response.status_code, decoded, {**dict(response.headers), "Content-Type": response.mimetype}

    async def queued_bodies(self) -> list[bytes]:
        """Messages waiting on the refresh queue (peeked, not taken)."""
        async with queue_client(self.settings) as queue:
            return [m.content for m in await queue.peek_messages(max_messages=32)]

    async def deliver(self, *, max_messages: int = 32, only_tenant: str | None = None) -> int:
        """Hand every visible refresh message to the real queue trigger, deleting each after success.

        With `only_tenant`, messages for other tenants (the nightly timer queues one for every
        tenant in the shared Azurite) are taken off the queue without running.
        """
        handler = self.functions["refresh_worker"].get_user_function()
        delivered = 0
        async with queue_client(self.settings) as queue:
            for _ in range(max_messages):
                batch = [m async for m in queue.receive_messages(max_messages=1, visibility_timeout=60)]
                if not batch:
                    break
                message = batch[0]
                if only_tenant and json.loads(message.content).get("tenantId") != only_tenant:
                    await queue.delete_message(message)
                    continue
                await handler(
                    func.QueueMessage(
                        id=message.id,
                        body=message.content,
                        pop_receipt=message.pop_receipt,
                    )
                )
                await queue.delete_message(message)
                delivered += 1
        return delivered


@pytest.fixture
def app_env(
    monkeypatch: pytest.MonkeyPatch, azurite: Azurite, own_graph: DemoGraphServer, unique_queue: str
) -> Iterator[AppUnderTest]:
    """App settings for this test: Azurite, the test's own demo tenant, a queue of its own."""
    monkeypatch.setenv("SYNC_STORAGE", azurite.connection_string)
    monkeypatch.setenv("GRAPH_AUTH", "demo")
    monkeypatch.setenv("GRAPH_BASE_URL", own_graph.base_url)
    monkeypatch.setenv("SYNC_QUEUE", unique_queue)
    # The dev host's setting: believe the principal header (only ever with the demo Graph).
    monkeypatch.setenv("DEV_TRUST_PRINCIPAL_HEADER", "true")
    monkeypatch.setenv("HOME_TENANT_ID", HOME_TENANT_ID)
    monkeypatch.setenv("APP_BASE_URL", APP_BASE_URL)
    monkeypatch.delenv("WEBSITE_AUTH_ENABLED", raising=False)
    monkeypatch.chdir(azurite.location or ".")  # no local.settings.json from the repo leaks in
    reset_settings_cache()
    yield AppUnderTest(functions={}, settings=get_settings(), graph=own_graph)
    reset_settings_cache()


@pytest.fixture
def app(app_env: AppUnderTest, app_functions: dict[str, Any]) -> AppUnderTest:
    """The app under test with its registered functions."""
    app_env.functions = app_functions
    return app_env


@pytest.fixture
def cli(
    azurite: Azurite, own_graph: DemoGraphServer, unique_queue: str, tmp_path: Path
) -> Callable[..., subprocess.CompletedProcess[str]]:
    """`python -m sync ...` in a subprocess, configured by environment variables as an operator's shell."""
    env = {
        **os.environ,
        "SYNC_STORAGE": azurite.connection_string,
        "GRAPH_AUTH": "demo",
        "GRAPH_BASE_URL": own_graph.base_url,
        "SYNC_QUEUE": unique_queue,
        "PYTHONPATH": str(REPO),
    }

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "sync", *args],
            cwd=tmp_path,  # no local.settings.json here: the environment configures it all
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )

    return run
