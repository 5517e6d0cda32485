"""DevHost: one FunctionApp on loopback, its HTTP routes, queue pollers and admin API together."""

from __future__ import annotations

import asyncio
import concurrent.futures
import importlib
import logging
import os
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import azure.functions as func
from aiohttp import web

from devtools.host.admin import AdminApi
from devtools.host.config import (
    configure_logging,
    function_timeout,
    load_host_json,
    read_local_settings,
    route_prefix,
)
from devtools.host.easyauth import EasyAuth
from devtools.host.functions import FunctionIndex, index_functions, indexed_functions
from devtools.host.identities import DEV_HOME_TENANT_ID, DEV_IDENTITIES, DevIdentity
from devtools.host.invoke import Invoker
from devtools.host.queues import QueueOptions, QueueWorker
from devtools.host.routes import add_function_routes, loopback_host_middleware, problem_middleware
from shared.settings import reset_settings_cache

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_PORT = 7071
LOOPBACK = "127.0.0.1"  # never another interface: anyone who reaches the port could sign in

log = logging.getLogger("devtools.host")


class DevHost:
    """Hosts a FunctionApp locally: HTTP, queue and (on demand) timer triggers, and a stand-in
    for App Service Authentication."""

    def __init__(
        self,
        app: func.FunctionApp | None = None,
        *,
        port: int = DEFAULT_PORT,
        settings: Mapping[str, str] | None = None,
        local_settings: Path | None = REPO_ROOT / "local.settings.json",
        script_root: Path = REPO_ROOT,
        host_json: Mapping[str, Any] | None = None,
        identities: Sequence[DevIdentity] = DEV_IDENTITIES,
        max_polling_interval: float | None = None,
        shutdown_grace: float = 10.0,
    ) -> None:
        """Configure the host; nothing starts until `start()` (app None: import function_app there).

        `settings` override the environment; `local_settings` Values only fill gaps (None: skip the file);
        `host_json` is merged over the script root's host.json; `identities` are who may sign in.
        """
        self._app = app
        self._port = port
        self._settings = dict(settings or {})
        self._local_settings = local_settings
        self._script_root = script_root
        self._host_json_override = dict(host_json or {})
        self._identities = identities
        self._max_polling_interval = max_polling_interval
        self._grace = shutdown_grace

        self.host_json: dict[str, Any] = {}
        self.functions = FunctionIndex()
        self._saved_env: dict[str, str | None] = {}
        self._runner: web.AppRunner | None = None
        self._base_url: str | None = None
        self._allowed_hosts: set[str] = set()
        self._invoker = Invoker(None)
        self._queues: QueueWorker | None = None
        self._stopping: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle --------------------------------------------------------------------------------

    @property
    def base_url(self) -> str:
        """http://127.0.0.1:port of the running host (the real port when started with port 0)."""
        if self._base_url is None:
            raise RuntimeError("the dev host is not running")
        return self._base_url

    @property
    def app(self) -> func.FunctionApp:
        """The hosted FunctionApp (function_app.app unless one was given)."""
        if self._app is None:
            raise RuntimeError("the app is imported by start()")
        return self._app

    async def start(self) -> None:
        """Apply settings, index the app, serve HTTP and start the queue pollers in this event loop."""
        self._loop = asyncio.get_running_loop()
        self._stopping = asyncio.Event()
        if not logging.getLogger().handlers:
            # Nobody configured logging (e.g. a script embedding the host): show invocations anyway.
            configure_logging()
        self._apply_settings()
        try:
            if self._app is None:
                # Like `func start`: settings are in the environment before the app module is imported.
                if str(self._script_root) not in sys.path:
                    sys.path.insert(0, str(self._script_root))
                self._app = importlib.import_module("function_app").app
            self.host_json = load_host_json(self._script_root, self._host_json_override)
            options = QueueOptions.from_host_json(self.host_json, self._max_polling_interval)
            self._invoker = Invoker(function_timeout(self.host_json))
            self.functions = index_functions(indexed_functions(self.app), self.host_json)
            self._queues = QueueWorker(
                self.functions.queues, options, self._invoker, self._stopping, self._grace
            )
            admin = AdminApi(self.functions, self._invoker, self._queues)
            await self._serve_http(admin)
            await self._queues.start()
        except BaseException:
            await self.stop()
            raise
        for timer in self.functions.timers:
            log.info(
                "Timer function '%s' (schedule '%s') does not run on its schedule in the dev host; "
                "run it with POST /admin/functions/%s",
                timer.name,
                timer.schedule,
                timer.name,
            )

    async def stop(self) -> None:
        """Stop polling, let running invocations finish (up to the grace period), close everything."""
        if self._stopping is not None:
            self._stopping.set()
        if self._queues is not None:
            await self._queues.stop()
        await self._invoker.drain(self._grace)
        if self._queues is not None:
            await self._queues.close()
            self._queues = None
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        self._base_url = None
        self._restore_settings()

    def start_in_thread(self, timeout: float = 60.0) -> DevHost:
        """Run the host in its own event loop on a daemon thread; returns once it serves."""
        ready: concurrent.futures.Future[None] = concurrent.futures.Future()
        loop = asyncio.new_event_loop()

        def run() -> None:
            asyncio.set_event_loop(loop)
            try:
                loop.run_until_complete(self.start())
            except BaseException as exc:
                ready.set_exception(exc)
                loop.close()
                return
            ready.set_result(None)
            loop.run_forever()
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

        self._thread = threading.Thread(target=run, name="devtools.host", daemon=True)
        self._thread.start()
        try:
            ready.result(timeout)
        except BaseException:
            self._thread.join(timeout)
            self._thread = None
            raise
        return self

    def stop_thread(self, timeout: float = 60.0) -> None:
        """Stop a host started with `start_in_thread()` and join its thread."""
        if self._thread is None or self._loop is None:
            return
        loop = self._loop
        asyncio.run_coroutine_threadsafe(self.stop(), loop).result(timeout)
        loop.call_soon_threadsafe(loop.stop)
        self._thread.join(timeout)
        self._thread = None

    def __enter__(self) -> DevHost:
        return self.start_in_thread()

    def __exit__(self, *exc: object) -> None:
        self.stop_thread()

    # -- waiting ----------------------------------------------------------------------------------

    async def wait_idle(self, timeout: float = 30.0) -> None:
        """Wait until every watched queue is empty and nothing runs; TimeoutError after `timeout` s.

        Callable from any event loop (a host on its own thread is asked through its loop).
        """
        if self._loop is None:
            raise RuntimeError("the dev host is not running")
        if asyncio.get_running_loop() is not self._loop:
            future = asyncio.run_coroutine_threadsafe(self._wait_idle(timeout), self._loop)
            await asyncio.wrap_future(future)
            return
        await self._wait_idle(timeout)

    def wait_idle_sync(self, timeout: float = 30.0) -> None:
        """`wait_idle` for synchronous callers of a host started with `start_in_thread()`."""
        if self._loop is None:
            raise RuntimeError("the dev host is not running")
        asyncio.run_coroutine_threadsafe(self._wait_idle(timeout), self._loop).result(timeout + 5)

    async def _wait_idle(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        quiet = 0
        while True:
            counts = await self._queues.counts() if self._queues else {}
            if self._invoker.active == 0 and not any(counts.values()):
                # Twice in a row: a handler may have enqueued work just before it finished.
                quiet += 1
                if quiet >= 2:
                    return
            else:
                quiet = 0
            if time.monotonic() >= deadline:
                raise TimeoutError(
                    f"the dev host is still busy: {self._invoker.active} running, queues {counts}"
                )
            await asyncio.sleep(0.05)

    # -- settings and HTTP ------------------------------------------------------------------------

    def _apply_settings(self) -> None:
        values: dict[str, str] = {}
        if self._local_settings is not None:
            # As `func start`: the file fills in, the environment wins.
            values = {
                k: v for k, v in read_local_settings(self._local_settings).items() if k not in os.environ
            }
        values.update(self._settings)
        if (values.get("GRAPH_AUTH") or os.environ.get("GRAPH_AUTH", "")).lower() == "demo":
            # The dev sign-in stands in for App Service Authentication; the app trusts the principal
            # header without it only when told so, and only with the demo Graph.
            values["DEV_TRUST_PRINCIPAL_HEADER"] = "true"
            if not (values.get("HOME_TENANT_ID") or os.environ.get("HOME_TENANT_ID")):
                # The dev operator signs in from this tenant; the app must call it home too.
                values["HOME_TENANT_ID"] = DEV_HOME_TENANT_ID
        for key, value in values.items():
            self._saved_env.setdefault(key, os.environ.get(key))
            os.environ[key] = value

    def _restore_settings(self) -> None:
        # Put the environment back, so one process can run hosts with different settings (tests).
        for key, value in self._saved_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        self._saved_env = {}

    async def _serve_http(self, admin: AdminApi) -> None:
        easy_auth = EasyAuth(self._identities, os.environ.get("HOME_TENANT_ID"))
        server = web.Application(
            client_max_size=100 * 1024 * 1024,  # the Functions request limit
            middlewares=[
                loopback_host_middleware(self._allowed_hosts),
                problem_middleware,
                web.normalize_path_middleware(append_slash=False, remove_slash=True),
                easy_auth.middleware,
            ],
        )
        admin.add_routes(server.router)
        easy_auth.add_routes(server.router)
        prefix = route_prefix(self.host_json)
        add_function_routes(server.router, prefix, self.functions.http, self._invoker)
        icon = f"/{prefix}/ui/favicon.ico" if prefix else "/ui/favicon.ico"

        async def favicon(request: web.Request) -> web.StreamResponse:
            # A browser that opens a JSON route directly still asks the site root for its icon.
            raise web.HTTPMovedPermanently(icon)

        if icon != "/favicon.ico":
            server.router.add_get("/favicon.ico", favicon)
        self._runner = web.AppRunner(
            server, access_log=None, handle_signals=False, shutdown_timeout=self._grace
        )
        await self._runner.setup()
        await web.TCPSite(self._runner, LOOPBACK, self._port).start()
        port = self._runner.addresses[0][1]
        self._allowed_hosts.update({f"{LOOPBACK}:{port}", f"localhost:{port}"})
        self._base_url = f"http://{LOOPBACK}:{port}"
        if not os.environ.get("APP_BASE_URL"):
            # The app's public root is this host (the admin-consent redirect comes back here); the
            # port is known only now, before the first request reads the settings.
            self._saved_env.setdefault("APP_BASE_URL", None)
            os.environ["APP_BASE_URL"] = self._base_url
            reset_settings_cache()

    def describe(self) -> list[str]:
        """One line per function, as `func start` lists them."""
        lines = []
        prefix = route_prefix(self.host_json)
        for function in sorted(self.functions.http, key=lambda f: f.name):
            methods = ",".join(sorted(function.methods)) if function.methods else "*"
            path = "/".join(part for part in (prefix, function.route.strip("/")) if part)
            lines.append(f"{function.name}: [{methods}] {self.base_url}/{path}")
        for queue in self.functions.queues:
            lines.append(f"{queue.name}: queueTrigger ({queue.queue_name})")
        for timer in self.functions.timers:
            lines.append(f"{timer.name}: timerTrigger ({timer.schedule}; on demand only)")
        return lines
