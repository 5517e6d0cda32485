"""A small local stand-in for the Azure Functions host (Core Tools cannot be installed here).

It runs `function_app.py` from the app's own registrations, as `func start` would:

- HTTP triggers on http://127.0.0.1:7071/{routePrefix}/{route} (aiohttp), with a dev
  App Service Authentication principal (role Sync.Admin) injected into requests that carry none;
- queue triggers polled in Azurite with host.json `extensions.queues` semantics: base64 or raw
  messages, batchSize/newBatchThreshold, visibilityTimeout after a failure, maxDequeueCount and
  the `<queue>-poison` queue;
- timer triggers are NOT run on their schedule (a dev machine should not sync every tenant at
  night); run one on demand with `POST /admin/functions/{name}` and body `{"input": ""}` (202),
  as the real host allows for every non-HTTP function. `runOnStartup: true` is honoured.

It holds no product logic: everything it knows comes from the bindings and host.json.
Run it with `python -m devtools.host [--port 7071]`; stop it with Ctrl-C.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import binascii
import concurrent.futures
import contextlib
import functools
import importlib
import inspect
import json
import logging
import os
import re
import signal
import sys
import threading
import time
import uuid
import weakref
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import azure.functions as func
from aiohttp import web
from azure.core.exceptions import AzureError, ResourceExistsError, ResourceNotFoundError
from azure.functions.decorators.function_app import Function
from azure.functions.queue import QueueMessage as TriggerQueueMessage
from azure.functions.timer import TimerRequest
from azure.storage.queue import QueueMessage as StorageQueueMessage
from azure.storage.queue.aio import QueueClient
from multidict import CIMultiDict

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_PORT = 7071
DEFAULT_ROUTE_PREFIX = "api"
PRINCIPAL_HEADER = "X-MS-CLIENT-PRINCIPAL"
ROLE_CLAIM_TYPE = "http://schemas.microsoft.com/ws/2008/06/identity/claims/role"
NAME_CLAIM_TYPE = "http://schemas.xmlsoap.org/ws/2005/05/identity/claims/name"
DEV_PRINCIPAL_NAME = "dev@localhost"
DEV_PRINCIPAL_ID = "00000000-0000-0000-0000-0000000000de"  # fixed and obviously fake
DEV_ROLES = ("Sync.Admin",)
MIN_POLLING_INTERVAL = 0.1
LOCAL_MAX_POLLING_INTERVAL = 1.0  # the real host backs off to 1 min; locally a refresh should start at once
MAX_VISIBILITY_SECONDS = 7 * 24 * 3600  # Azure Queue Storage's limit
PROGRAMMATIC_REASON = "This function was programmatically called via the host APIs."

log = logging.getLogger("devtools.host")

Handler = Callable[..., Any]


class HostError(RuntimeError):
    """The app or its settings cannot be hosted; the message says which and why."""


# -- indexing -----------------------------------------------------------------------------------

# get_functions() may be called once per FunctionApp (a second call raises "does not have a unique
# function name"), yet one process may start several hosts for one app (tests): index once, keep.
_INDEXED: weakref.WeakKeyDictionary[func.FunctionApp, list[Function]] = weakref.WeakKeyDictionary()


def indexed_functions(app: func.FunctionApp) -> list[Function]:
    """The app's functions, from a single `get_functions()` call per app object, kept.

    The call leaves the app's once-only record as it found it, so code that indexes the app
    itself (the real worker, a test fixture) still may, before or after a host.
    """
    if app not in _INDEXED:
        # get_functions() notes every name in app.functions_bindings and refuses names already
        # there: index against a scratch record (duplicates within the app are still refused).
        saved = app.functions_bindings
        app.functions_bindings = {}
        try:
            _INDEXED[app] = app.get_functions()
        finally:
            app.functions_bindings = saved
    return _INDEXED[app]


_EXPRESSION = re.compile(r"%([^%]+)%")


def resolve_expression(value: str, environ: Mapping[str, str] | None = None) -> str:
    """Replace every `%NAME%` in a binding value with the app setting NAME (HostError if unset)."""
    env = os.environ if environ is None else environ

    def setting(match: re.Match[str]) -> str:
        name = match.group(1)
        if not env.get(name):
            raise HostError(
                f"the binding expression '%{name}%' does not resolve to a value: set {name} in "
                "local.settings.json Values or the environment"
            )
        return env[name]

    return _EXPRESSION.sub(setting, value)


def parse_timespan(value: str | float) -> float:
    """A host.json TimeSpan ("[d.]hh:mm:ss[.fff]") in seconds."""
    if isinstance(value, int | float):
        return float(value)
    match = re.fullmatch(r"\s*(?:(\d+)\.)?(\d+):(\d+):(\d+(?:\.\d+)?)\s*", value)
    if not match:
        raise HostError(f"{value!r} is not a TimeSpan such as '00:00:30' or '00:00:00.5'")
    days, hours, minutes, seconds = match.groups()
    return int(days or 0) * 86400 + int(hours) * 3600 + int(minutes) * 60 + float(seconds)


def _deep_merge(base: dict[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = _deep_merge(dict(merged[key]), value)
        else:
            merged[key] = value
    return merged


def load_host_json(script_root: Path, override: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """host.json from the script root, with `override` merged over it key by key."""
    path = script_root / "host.json"
    data: dict[str, Any] = {}
    if path.is_file():
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except ValueError as exc:
            raise HostError(f"{path} is not valid JSON: {exc}") from exc
    return _deep_merge(data, override or {})


def read_local_settings(path: Path) -> dict[str, str]:
    """The `Values` of a local.settings.json ({} when the file is absent)."""
    if not path.is_file():
        return {}
    try:
        values = json.loads(path.read_text(encoding="utf-8")).get("Values") or {}
    except (ValueError, AttributeError) as exc:
        raise HostError(f"{path} is not a valid local.settings.json: {exc}") from exc
    return {str(k): str(v) for k, v in values.items() if v is not None}


def configure_logging(verbose: bool = False) -> None:
    """Log to stderr as the Functions host console does (host lines, function logs, no SDK chatter)."""
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="[%(asctime)s] %(message)s",
        stream=sys.stderr,
    )
    # The storage SDK logs every HTTP request at INFO; the invocation lines are what matter here.
    logging.getLogger("azure").setLevel(logging.WARNING)


# -- principal ----------------------------------------------------------------------------------


def encode_principal(name: str = DEV_PRINCIPAL_NAME, roles: Iterable[str] = DEV_ROLES) -> str:
    """An X-MS-CLIENT-PRINCIPAL value as App Service Authentication (Entra ID) injects it."""
    claims = [{"typ": "roles", "val": role} for role in roles]
    claims += [
        {"typ": "preferred_username", "val": name},
        {"typ": NAME_CLAIM_TYPE, "val": name},
        {"typ": "http://schemas.microsoft.com/identity/claims/objectidentifier", "val": DEV_PRINCIPAL_ID},
    ]
    payload = {"auth_typ": "aad", "name_typ": NAME_CLAIM_TYPE, "role_typ": ROLE_CLAIM_TYPE, "claims": claims}
    return base64.b64encode(json.dumps(payload).encode("utf-8")).decode("ascii")


# -- HTTP routes --------------------------------------------------------------------------------

_TOKEN = re.compile(r"\{([^{}]+)\}")
_GUID = r"\{?[0-9a-fA-F]{8}-(?:[0-9a-fA-F]{4}-){3}[0-9a-fA-F]{12}\}?"
_CONSTRAINTS = {
    "int": r"-?\d+",
    "long": r"-?\d+",
    "decimal": r"-?\d+(?:\.\d+)?",
    "double": r"-?\d+(?:\.\d+)?",
    "float": r"-?\d+(?:\.\d+)?",
    "guid": _GUID,
    "alpha": r"[A-Za-z]+",
    "bool": r"(?:true|false)",
}
# ASP.NET route precedence, most specific first: literal, mixed, constrained, plain, optional, catch-all.
_RANK_LITERAL, _RANK_MIXED, _RANK_CONSTRAINED, _RANK_PARAM, _RANK_OPTIONAL, _RANK_CATCH_ALL = range(6)


@dataclass(frozen=True)
class _Param:
    name: str
    pattern: str
    constrained: bool
    optional: bool
    catch_all: bool
    default: str | None


def _parse_param(spec: str) -> _Param:
    catch_all = spec.startswith("*")
    spec = spec.lstrip("*")
    default = None
    if "=" in spec:
        spec, default = spec.split("=", 1)
    optional = spec.endswith("?")
    spec = spec.rstrip("?")
    name, _, constraint_text = spec.partition(":")
    pattern = r"[^/]+"
    constrained = False
    for constraint in filter(None, constraint_text.split(":")):
        if constraint.startswith("regex(") and constraint.endswith(")"):
            pattern = f"(?:{constraint[6:-1].lstrip('^').rstrip('$')})"
            constrained = True
            break
        if constraint.lower() in _CONSTRAINTS:
            pattern = _CONSTRAINTS[constraint.lower()]
            constrained = True
            break
    return _Param(name, pattern, constrained, optional or default is not None, catch_all, default)


@dataclass(frozen=True)
class HttpRoute:
    """One HTTP-triggered function: its route template compiled to a regex over the raw path."""

    function_name: str
    handler: Handler
    arg_name: str
    template: str
    methods: frozenset[str] | None  # None: every method
    regex: re.Pattern[str]
    params: dict[str, _Param]  # regex group name -> parameter
    precedence: tuple[int, ...]

    @classmethod
    def compile(
        cls,
        function_name: str,
        handler: Handler,
        arg_name: str,
        template: str,
        prefix: str,
        methods: Iterable[str] | None,
    ) -> HttpRoute:
        """Compile `{prefix}/{template}` (ASP.NET route syntax) for matching raw request paths."""
        pattern = "/" + re.escape(prefix.strip("/")) if prefix.strip("/") else ""
        params: dict[str, _Param] = {}
        precedence: list[int] = []
        for segment in filter(None, template.strip("/").split("/")):
            tokens = list(_TOKEN.finditer(segment))
            whole = len(tokens) == 1 and tokens[0].span() == (0, len(segment))
            if whole:
                param = _parse_param(tokens[0].group(1))
                group = f"p{len(params)}"
                params[group] = param
                if param.catch_all:
                    pattern += f"(?:/(?P<{group}>.*))?"
                    precedence.append(_RANK_CATCH_ALL)
                elif param.optional:
                    pattern += f"(?:/(?P<{group}>{param.pattern}))?"
                    precedence.append(_RANK_OPTIONAL)
                else:
                    pattern += f"/(?P<{group}>{param.pattern})"
                    precedence.append(_RANK_CONSTRAINED if param.constrained else _RANK_PARAM)
                continue
            # A literal segment, or literals mixed with parameters ("file.{ext}").
            pattern += "/"
            position = 0
            for token in tokens:
                pattern += re.escape(segment[position : token.start()])
                param = _parse_param(token.group(1))
                group = f"p{len(params)}"
                params[group] = param
                pattern += f"(?P<{group}>{param.pattern if param.constrained else '[^/]+?'})"
                position = token.end()
            pattern += re.escape(segment[position:])
            precedence.append(_RANK_MIXED if tokens else _RANK_LITERAL)
        # ASP.NET matches literals case-insensitively and ignores one trailing slash.
        regex = re.compile(f"^{pattern}/?$", re.IGNORECASE)
        allowed = frozenset(m.upper() for m in methods) if methods else None
        return cls(function_name, handler, arg_name, template, allowed, regex, params, tuple(precedence))

    def match(self, raw_path: str) -> dict[str, str] | None:
        """The route parameters (percent-decoded) when the raw path matches, else None."""
        found = self.regex.match(raw_path)
        if found is None:
            return None
        values: dict[str, str] = {}
        for group, param in self.params.items():
            raw = found.group(group)
            if raw is not None:
                values[param.name] = unquote(raw)
            elif param.default is not None:
                values[param.name] = param.default
        return values

    def allows(self, method: str) -> bool:
        """Whether the binding accepts this HTTP method."""
        return self.methods is None or method.upper() in self.methods


def problem_response(
    status: int, title: str, detail: str, headers: Mapping[str, str] | None = None
) -> web.Response:
    """An RFC 9457 problem+json response produced by the host itself (no function ran)."""
    body = {"type": "about:blank", "title": title, "status": status, "detail": detail}
    return web.Response(
        status=status,
        body=json.dumps(body).encode("utf-8"),
        content_type="application/problem+json",
        charset="utf-8",
        headers=headers,
    )


_TEXTUAL = re.compile(r"^(text/.*|.*[/+](json|xml|javascript))$", re.IGNORECASE)


def to_aiohttp_response(result: Any) -> web.Response:
    """Turn what an HTTP function returned into the response the host sends."""
    if result is None:
        return web.Response(status=204)
    if isinstance(result, str | bytes):  # the worker wraps bare str/bytes returns as 200 text/plain
        result = func.HttpResponse(result)
    if not isinstance(result, func.HttpResponse):
        raise TypeError(
            f"an HTTP function returned {type(result).__name__}, not azure.functions.HttpResponse"
        )
    headers: CIMultiDict[str] = CIMultiDict()
    for key, value in result.headers.items():
        headers.add(key, value)
    if "Content-Type" not in headers:
        mimetype = result.mimetype or "text/plain"
        charset = result.charset if _TEXTUAL.match(mimetype) else None
        headers["Content-Type"] = f"{mimetype}; charset={charset}" if charset else mimetype
    return web.Response(status=int(result.status_code), body=result.get_body(), headers=headers)


# -- queue and timer functions ------------------------------------------------------------------


@dataclass(frozen=True)
class QueueOptions:
    """host.json `extensions.queues`, with the host's defaults."""

    batch_size: int = 16
    new_batch_threshold: int = 8
    max_dequeue_count: int = 5
    visibility_timeout: float = 0.0
    message_encoding: str = "base64"
    max_polling_interval: float = LOCAL_MAX_POLLING_INTERVAL

    @classmethod
    def from_host_json(cls, host_json: Mapping[str, Any], max_polling_interval: float | None) -> QueueOptions:
        """Read the queue settings; the polling interval is capped at 1 s locally unless given."""
        queues = (host_json.get("extensions") or {}).get("queues") or {}
        batch_size = int(queues.get("batchSize", 16))
        if not 1 <= batch_size <= 32:
            raise HostError(f"host.json extensions.queues.batchSize must be 1 to 32, got {batch_size}")
        encoding = str(queues.get("messageEncoding", "base64")).lower()
        if encoding not in ("base64", "none"):
            raise HostError(
                f"host.json extensions.queues.messageEncoding must be base64 or none, got {encoding!r}"
            )
        if max_polling_interval is None:
            configured = queues.get("maxPollingInterval")
            max_polling_interval = min(
                parse_timespan(configured) if configured is not None else LOCAL_MAX_POLLING_INTERVAL,
                LOCAL_MAX_POLLING_INTERVAL,
            )
        return cls(
            batch_size=batch_size,
            new_batch_threshold=int(queues.get("newBatchThreshold", max(batch_size // 2, 1))),
            max_dequeue_count=max(int(queues.get("maxDequeueCount", 5)), 1),
            visibility_timeout=parse_timespan(queues.get("visibilityTimeout", "00:00:00")),
            message_encoding=encoding,
            max_polling_interval=max(max_polling_interval, MIN_POLLING_INTERVAL),
        )


@dataclass(frozen=True)
class QueueFunction:
    """A queue-triggered function and the queue it watches."""

    function_name: str
    handler: Handler
    arg_name: str
    queue_name: str
    connection_string: str


@dataclass(frozen=True)
class TimerFunction:
    """A timer-triggered function (run on demand only)."""

    function_name: str
    handler: Handler
    arg_name: str
    schedule: str
    run_on_startup: bool


@dataclass
class _QueueWatch:
    """A running poller: the clients it uses and its wake-up signal."""

    function: QueueFunction
    queue: QueueClient
    poison: QueueClient
    wake: asyncio.Event = field(default_factory=asyncio.Event)


def _connection_string(setting: str, function_name: str) -> str:
    # The host accepts the setting itself or the AzureWebJobs-prefixed name; "" means the host's own.
    name = setting or "AzureWebJobsStorage"
    for candidate in (name, f"AzureWebJobs{name}"):
        value = os.environ.get(candidate)
        if value:
            return value
    if os.environ.get(f"{name}__queueServiceUri") or os.environ.get(f"{name}__serviceUri"):
        raise HostError(
            f"{function_name}: the dev host needs a connection string in {name} (Azurite: "
            "'UseDevelopmentStorage=true'); identity-based connections work only in Azure"
        )
    raise HostError(f"{function_name}: the queue connection setting {name} is not set")


def _queue_client(connection_string: str, name: str) -> QueueClient:
    # No message encode/decode policy: the host decodes (host.json messageEncoding) and moves
    # poison messages as stored. Short retries: the SDK's default back-off (15 s and up) would
    # leave a developer whose Azurite is down staring at a silent prompt for over a minute.
    # (The aio client builds its own async ExponentialRetry from these keywords.)
    return QueueClient.from_connection_string(
        connection_string, name, initial_backoff=1, increment_base=2, retry_total=2, random_jitter_range=1
    )


def _trigger_message(msg: StorageQueueMessage, body: bytes) -> TriggerQueueMessage:
    # azure.functions.QueueMessage is the bare base class; this subclass carries the delivery details.
    return TriggerQueueMessage(  # type: ignore[no-untyped-call]
        id=msg.id,
        body=body,
        dequeue_count=msg.dequeue_count,
        pop_receipt=msg.pop_receipt,
        insertion_time=msg.inserted_on,
        expiration_time=msg.expires_on,
        time_next_visible=msg.next_visible_on,
    )


# -- the host -----------------------------------------------------------------------------------


class DevHost:
    """Hosts a FunctionApp locally: HTTP, queue and (on demand) timer triggers."""

    def __init__(
        self,
        app: func.FunctionApp | None = None,
        *,
        host: str = "127.0.0.1",
        port: int = DEFAULT_PORT,
        settings: Mapping[str, str] | None = None,
        local_settings: Path | None = REPO_ROOT / "local.settings.json",
        script_root: Path = REPO_ROOT,
        host_json: Mapping[str, Any] | None = None,
        inject_principal: bool = True,
        principal_name: str = DEV_PRINCIPAL_NAME,
        principal_roles: Iterable[str] = DEV_ROLES,
        max_polling_interval: float | None = None,
        shutdown_grace: float = 10.0,
    ) -> None:
        """Configure the host; nothing starts until `start()` (app None: import function_app there).

        `settings` override the environment; `local_settings` Values only fill gaps (None: skip the file);
        `host_json` is merged over the script root's host.json.
        """
        self._app = app
        self._bind_host = host
        self._port = port
        self._settings = dict(settings or {})
        self._local_settings = local_settings
        self._script_root = script_root
        self._host_json_override = dict(host_json or {})
        self.inject_principal = inject_principal
        self._principal = encode_principal(principal_name, principal_roles)
        self._principal_name = principal_name
        self._max_polling_interval = max_polling_interval
        self._grace = shutdown_grace

        self.host_json: dict[str, Any] = {}
        self.routes: list[HttpRoute] = []
        self.queue_functions: list[QueueFunction] = []
        self.timer_functions: list[TimerFunction] = []
        self._by_name: dict[str, HttpRoute | QueueFunction | TimerFunction] = {}
        self._queue_options = QueueOptions()
        self._function_timeout: float | None = None

        self._saved_env: dict[str, str | None] = {}
        self._runner: web.AppRunner | None = None
        self._base_url: str | None = None
        self._watches: list[_QueueWatch] = []
        self._tasks: set[asyncio.Task[Any]] = set()
        self._pollers: list[asyncio.Task[None]] = []
        self._active = 0  # invocations running, plus messages received but not yet settled
        self._stopping: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle --------------------------------------------------------------------------------

    @property
    def base_url(self) -> str:
        """http://host:port of the running host (the real port when started with port 0)."""
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
            self._queue_options = QueueOptions.from_host_json(self.host_json, self._max_polling_interval)
            timeout = self.host_json.get("functionTimeout")
            self._function_timeout = parse_timespan(timeout) if timeout not in (None, "-1") else None
            self._index(indexed_functions(self.app))
            await self._start_http()
            await self._start_queues()
        except BaseException:
            await self.stop()
            raise
        for timer in self.timer_functions:
            if timer.run_on_startup:
                self._spawn(self._run_timer(timer, "Timer fired at startup (runOnStartup)."))

    async def stop(self) -> None:
        """Stop polling, let running invocations finish (up to the grace period), close everything."""
        if self._stopping is not None:
            self._stopping.set()
        for watch in self._watches:
            watch.wake.set()
        if self._pollers:
            _, pending = await asyncio.wait(self._pollers, timeout=self._grace + 1)
            for task in pending:
                task.cancel()
            await asyncio.gather(*self._pollers, return_exceptions=True)
            self._pollers = []
        if self._tasks:
            _, pending = await asyncio.wait(set(self._tasks), timeout=self._grace)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        for watch in self._watches:
            await watch.queue.close()
            await watch.poison.close()
        self._watches = []
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        self._base_url = None
        self._restore_settings()

    async def __aenter__(self) -> DevHost:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

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
            counts = await self._queue_counts()
            if self._active == 0 and not any(counts.values()):
                # Twice in a row: a handler may have enqueued work just before it finished.
                quiet += 1
                if quiet >= 2:
                    return
            else:
                quiet = 0
            if time.monotonic() >= deadline:
                raise TimeoutError(f"the dev host is still busy: {self._active} running, queues {counts}")
            await asyncio.sleep(0.05)

    async def _queue_counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for watch in self._watches:
            # The approximate count includes invisible messages: received, or waiting to be retried.
            props = await watch.queue.get_queue_properties()
            counts[watch.function.queue_name] = props.approximate_message_count or 0
        return counts

    # -- settings and indexing --------------------------------------------------------------------

    def _apply_settings(self) -> None:
        values: dict[str, str] = {}
        if self._local_settings is not None:
            # As `func start`: the file fills in, the environment wins.
            values = {
                k: v for k, v in read_local_settings(self._local_settings).items() if k not in os.environ
            }
        values.update(self._settings)
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

    def _index(self, functions: list[Function]) -> None:
        self.routes, self.queue_functions, self.timer_functions, self._by_name = [], [], [], {}
        prefix = str(
            ((self.host_json.get("extensions") or {}).get("http") or {}).get(
                "routePrefix", DEFAULT_ROUTE_PREFIX
            )
        )
        enabled = self.host_json.get("functions")  # host.json may list the only functions to run
        for fn in functions:
            handler = fn.get_user_function()
            name = fn.get_function_name() or handler.__name__
            if enabled is not None and name not in enabled:
                continue
            if os.environ.get(f"AzureWebJobs.{name}.Disabled", "").lower() in ("true", "1"):
                log.info("Function '%s' is disabled (AzureWebJobs.%s.Disabled)", name, name)
                continue
            bindings = json.loads(fn.get_function_json()).get("bindings", [])
            trigger = next((b for b in bindings if str(b.get("type", "")).endswith("Trigger")), None)
            if trigger is None:
                log.warning("Function '%s' has no trigger; the dev host skips it", name)
                continue
            self._check_parameters(name, handler, bindings)
            arg = trigger["name"]
            kind = trigger["type"]
            entry: HttpRoute | QueueFunction | TimerFunction
            if kind == "httpTrigger":
                route = resolve_expression(str(trigger.get("route") or name))
                entry = HttpRoute.compile(name, handler, arg, route, prefix, trigger.get("methods"))
                self.routes.append(entry)
            elif kind == "queueTrigger":
                entry = QueueFunction(
                    name,
                    handler,
                    arg,
                    resolve_expression(trigger["queueName"]).lower(),
                    _connection_string(resolve_expression(trigger.get("connection") or ""), name),
                )
                self.queue_functions.append(entry)
            elif kind == "timerTrigger":
                entry = TimerFunction(
                    name,
                    handler,
                    arg,
                    resolve_expression(trigger["schedule"]),
                    bool(trigger.get("runOnStartup")),
                )
                self.timer_functions.append(entry)
            else:
                log.warning("Function '%s' has a %s, which the dev host does not run", name, kind)
                continue
            self._by_name[name.lower()] = entry
        # Most specific first, so "tenants/{id}/runs" wins over "tenants/{*rest}".
        self.routes.sort(key=lambda r: r.precedence)

    @staticmethod
    def _check_parameters(name: str, handler: Handler, bindings: list[dict[str, Any]]) -> None:
        # The host passes trigger arguments only; other bindings (and `context`) are not supplied.
        trigger_names = {b["name"] for b in bindings if str(b.get("type", "")).endswith("Trigger")}
        for parameter in inspect.signature(handler).parameters.values():
            if parameter.name not in trigger_names and parameter.default is inspect.Parameter.empty:
                raise HostError(
                    f"Function '{name}' takes '{parameter.name}', which the dev host does not supply "
                    "(it passes the trigger argument only)"
                )

    # -- invocation -------------------------------------------------------------------------------

    async def _invoke(self, name: str, reason: str, handler: Handler, arg: str, value: Any) -> Any:
        """Call one function the way the host does, logging Executing/Executed with the duration."""
        invocation = uuid.uuid4()
        log.info("Executing 'Functions.%s' (Reason='%s', Id=%s)", name, reason, invocation)
        started = time.perf_counter()
        try:
            async with asyncio.timeout(self._function_timeout):
                if inspect.iscoroutinefunction(handler):
                    result = await handler(**{arg: value})
                else:
                    # Sync functions run on the thread pool, as the Python worker runs them.
                    loop = asyncio.get_running_loop()
                    result = await loop.run_in_executor(None, functools.partial(handler, **{arg: value}))
                    if inspect.isawaitable(result):
                        result = await result
        except BaseException as exc:
            elapsed = (time.perf_counter() - started) * 1000
            detail = "Cancelled" if isinstance(exc, asyncio.CancelledError) else "Failed"
            log.error(
                "Executed 'Functions.%s' (%s, Id=%s, Duration=%.0fms)",
                name,
                detail,
                invocation,
                elapsed,
                exc_info=not isinstance(exc, asyncio.CancelledError),
            )
            raise
        log.info(
            "Executed 'Functions.%s' (Succeeded, Id=%s, Duration=%.0fms)",
            name,
            invocation,
            (time.perf_counter() - started) * 1000,
        )
        return result

    def _spawn(self, coro: Awaitable[Any]) -> asyncio.Task[Any]:
        # Counted before the task starts, so wait_idle() never sees a gap between 202 and the run.
        self._active += 1

        async def tracked() -> Any:
            try:
                return await coro
            except Exception:
                # Nobody awaits these tasks: say what broke instead of "exception never retrieved".
                log.exception("the dev host failed while running a background invocation")
                return None
            finally:
                self._active -= 1
                self._poke()

        task = asyncio.ensure_future(tracked())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def _poke(self) -> None:
        # A finished invocation may have enqueued work: poll at once instead of after the back-off.
        for watch in self._watches:
            watch.wake.set()

    # -- HTTP -------------------------------------------------------------------------------------

    async def _start_http(self) -> None:
        server = web.Application(client_max_size=100 * 1024 * 1024)  # the Functions request limit
        server.router.add_route("POST", "/admin/functions/{name}", self._admin_invoke)
        server.router.add_route("GET", "/admin/host/status", self._admin_status)
        server.router.add_route("*", "/{tail:.*}", self._dispatch)
        self._runner = web.AppRunner(
            server, access_log=None, handle_signals=False, shutdown_timeout=self._grace
        )
        await self._runner.setup()
        site = web.TCPSite(self._runner, self._bind_host, self._port)
        await site.start()
        address = self._runner.addresses[0]
        self._base_url = f"http://{address[0]}:{address[1]}"

    async def _dispatch(self, request: web.Request) -> web.StreamResponse:
        raw_path = request.rel_url.raw_path
        allowed: set[str] = set()
        for route in self.routes:
            route_params = route.match(raw_path)
            if route_params is None:
                continue
            if route.allows(request.method):
                return await self._call_http(route, request, route_params)
            allowed |= route.methods or set()
        if allowed:
            return problem_response(
                405,
                "Method not allowed",
                f"{request.method} is not allowed on {request.path}; use {', '.join(sorted(allowed))}",
                {"Allow": ", ".join(sorted(allowed))},
            )
        return problem_response(404, "Not found", f"no function serves {request.path}")

    async def _call_http(
        self, route: HttpRoute, request: web.Request, route_params: dict[str, str]
    ) -> web.Response:
        headers = {key: ", ".join(request.headers.getall(key)) for key in request.headers}
        if self.inject_principal and PRINCIPAL_HEADER not in request.headers:
            # Stand-in for App Service Authentication: a signed-in admin, unless the caller sent its own.
            headers[PRINCIPAL_HEADER] = self._principal
            headers["X-MS-CLIENT-PRINCIPAL-NAME"] = self._principal_name
            headers["X-MS-CLIENT-PRINCIPAL-ID"] = DEV_PRINCIPAL_ID
            headers["X-MS-CLIENT-PRINCIPAL-IDP"] = "aad"
        req = func.HttpRequest(
            request.method,
            str(request.url),
            headers=headers,
            params={key: request.query[key] for key in request.query},
            route_params=route_params,
            body=await request.read(),
        )
        self._active += 1
        try:
            result = await self._invoke(
                route.function_name, PROGRAMMATIC_REASON, route.handler, route.arg_name, req
            )
        except Exception:  # logged with its traceback by _invoke
            return problem_response(
                500,
                "Internal error",
                f"the function {route.function_name} failed; the dev host log has the details",
            )
        finally:
            self._active -= 1
            self._poke()
        try:
            return to_aiohttp_response(result)
        except TypeError as exc:
            log.error("Function '%s': %s", route.function_name, exc)
            return problem_response(500, "Internal error", str(exc))

    async def _admin_status(self, request: web.Request) -> web.Response:
        return web.json_response({"state": "Running", "functions": sorted(self._by_name)})

    async def _admin_invoke(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        entry = self._by_name.get(name.lower())
        if entry is None:
            return problem_response(404, "Not found", f"no function named {name!r}")
        if isinstance(entry, HttpRoute):
            return problem_response(
                400,
                "Bad request",
                f"{entry.function_name} is an HTTP function: call its route {entry.template}",
            )
        try:
            payload = json.loads(await request.read() or b"{}")
            text = payload.get("input", "")
            if not isinstance(text, str):
                raise ValueError("input must be a string")
        except (ValueError, AttributeError) as exc:
            return problem_response(400, "Bad request", f'the body must be {{"input": "..."}}: {exc}')
        if isinstance(entry, TimerFunction):
            self._spawn(self._run_timer(entry, PROGRAMMATIC_REASON))
        else:
            self._spawn(self._run_queue_input(entry, text))
        return web.Response(status=202)

    async def _run_timer(self, timer: TimerFunction, reason: str) -> None:
        request = TimerRequest(past_due=False, schedule={"AdjustForDST": True})
        with contextlib.suppress(Exception):  # logged by _invoke; nothing retries a timer
            await self._invoke(timer.function_name, reason, timer.handler, timer.arg_name, request)

    async def _run_queue_input(self, function: QueueFunction, text: str) -> None:
        # The admin API hands the input to the function as the message content; no queue is involved.
        message = TriggerQueueMessage(  # type: ignore[no-untyped-call]
            id=str(uuid.uuid4()), body=text.encode("utf-8"), dequeue_count=1
        )
        with contextlib.suppress(Exception):
            await self._invoke(
                function.function_name, PROGRAMMATIC_REASON, function.handler, function.arg_name, message
            )

    # -- queues -----------------------------------------------------------------------------------

    async def _start_queues(self) -> None:
        for function in self.queue_functions:
            queue = _queue_client(function.connection_string, function.queue_name)
            poison = _queue_client(function.connection_string, f"{function.queue_name}-poison")
            self._watches.append(_QueueWatch(function, queue, poison))
            for client in (queue, poison):
                with contextlib.suppress(ResourceExistsError):
                    await client.create_queue()
        for watch in self._watches:
            self._pollers.append(
                asyncio.create_task(self._poll(watch), name=f"poll {watch.function.queue_name}")
            )
        for timer in self.timer_functions:
            log.info(
                "Timer function '%s' (schedule '%s') does not run on its schedule in the dev host; "
                "run it with POST /admin/functions/%s",
                timer.function_name,
                timer.schedule,
                timer.function_name,
            )

    def _receive_visibility(self) -> int:
        # A received message stays invisible for the whole function timeout, so no second worker
        # takes it while it runs; if the host dies, it comes back after that.
        timeout = self._function_timeout or 600
        return int(min(timeout + 60, MAX_VISIBILITY_SECONDS))

    async def _poll(self, watch: _QueueWatch) -> None:
        options = self._queue_options
        assert self._stopping is not None
        delay = MIN_POLLING_INTERVAL
        running: set[asyncio.Task[Any]] = set()
        while not self._stopping.is_set():
            # Fetch a new batch only when the running ones drop to newBatchThreshold, as the host does.
            while len(running) > options.new_batch_threshold:
                await asyncio.wait(running, return_when=asyncio.FIRST_COMPLETED)
            self._active += 1  # receiving: the messages are invisible but not yet counted as running
            try:
                messages = [
                    m
                    async for m in watch.queue.receive_messages(
                        messages_per_page=options.batch_size,
                        max_messages=options.batch_size,
                        visibility_timeout=self._receive_visibility(),
                    )
                ]
            except AzureError as exc:
                log.warning("cannot read queue %s: %s", watch.function.queue_name, exc)
                messages = []
            finally:
                self._active -= 1
            for message in messages:
                task = self._spawn(self._process(watch, message))
                running.add(task)
                task.add_done_callback(running.discard)
            if messages:
                delay = MIN_POLLING_INTERVAL
                continue
            watch.wake.clear()
            try:
                await asyncio.wait_for(watch.wake.wait(), delay)
                delay = MIN_POLLING_INTERVAL
            except TimeoutError:
                delay = min(delay * 2, options.max_polling_interval)
        if running:
            await asyncio.wait(running, timeout=self._grace)

    def _decode(self, content: str) -> bytes:
        if self._queue_options.message_encoding == "none":
            return content.encode("utf-8")
        return base64.b64decode("".join(content.split()), validate=True)

    async def _process(self, watch: _QueueWatch, message: StorageQueueMessage) -> None:
        function = watch.function
        options = self._queue_options
        dequeue_count = message.dequeue_count or 1
        if dequeue_count > options.max_dequeue_count:
            # Already delivered too often (e.g. a host died mid-run): straight to poison, no new attempt.
            await self._to_poison(watch, message)
            return
        try:
            body = self._decode(message.content)
        except (binascii.Error, ValueError):
            log.error(
                "Message %s on %s is not valid base64 (host.json messageEncoding is base64); "
                "it is retried and then moved to %s-poison",
                message.id,
                function.queue_name,
                function.queue_name,
            )
            await self._failed(watch, message, dequeue_count)
            return
        reason = f"New queue message detected on '{function.queue_name}'."
        trigger_message = _trigger_message(message, body)
        try:
            await self._invoke(
                function.function_name, reason, function.handler, function.arg_name, trigger_message
            )
        except asyncio.CancelledError:
            # The host is stopping: make the message visible again so the next run picks it up.
            with contextlib.suppress(AzureError):
                await asyncio.shield(watch.queue.update_message(message, visibility_timeout=0))
            raise
        except Exception:
            await self._failed(watch, message, dequeue_count)
            return
        try:
            await watch.queue.delete_message(message)
        except ResourceNotFoundError:
            log.warning("message %s was gone before it could be deleted (visibility expired?)", message.id)

    async def _failed(self, watch: _QueueWatch, message: StorageQueueMessage, dequeue_count: int) -> None:
        if dequeue_count >= self._queue_options.max_dequeue_count:
            await self._to_poison(watch, message)
            return
        try:
            # The .NET SDK sends whole seconds: "00:00:00.2" means visible again at once.
            await watch.queue.update_message(
                message, visibility_timeout=int(self._queue_options.visibility_timeout)
            )
        except ResourceNotFoundError:
            log.warning("message %s was gone before it could be released", message.id)

    async def _to_poison(self, watch: _QueueWatch, message: StorageQueueMessage) -> None:
        name = watch.function.queue_name
        log.warning(
            "Message %s has reached MaxDequeueCount of %d. Moving message to queue '%s-poison'.",
            message.id,
            self._queue_options.max_dequeue_count,
            name,
        )
        # The content goes over as received (still base64 when it came as base64).
        await watch.poison.send_message(message.content)
        try:
            await watch.queue.delete_message(message)
        except ResourceNotFoundError:
            log.warning("message %s was gone before it could be deleted", message.id)

    # -- listing ----------------------------------------------------------------------------------

    def describe(self) -> list[str]:
        """One line per function, as `func start` lists them."""
        lines = []
        prefix = str(
            ((self.host_json.get("extensions") or {}).get("http") or {}).get(
                "routePrefix", DEFAULT_ROUTE_PREFIX
            )
        )
        base = self._base_url or f"http://{self._bind_host}:{self._port}"
        for route in sorted(self.routes, key=lambda r: r.function_name):
            methods = ",".join(sorted(route.methods)) if route.methods else "*"
            path = "/".join(part for part in (prefix.strip("/"), route.template.strip("/")) if part)
            lines.append(f"{route.function_name}: [{methods}] {base}/{path}")
        for queue in self.queue_functions:
            lines.append(f"{queue.function_name}: queueTrigger ({queue.queue_name})")
        for timer in self.timer_functions:
            lines.append(f"{timer.function_name}: timerTrigger ({timer.schedule}; on demand only)")
        return lines


# -- CLI ----------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    """`python -m devtools.host`: serve function_app until Ctrl-C."""
    parser = argparse.ArgumentParser(prog="python -m devtools.host", description=__doc__.split("\n")[0])
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help="HTTP port (default 7071)")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    parser.add_argument(
        "--settings",
        type=Path,
        default=REPO_ROOT / "local.settings.json",
        help="local.settings.json whose Values fill in unset environment variables",
    )
    parser.add_argument(
        "--no-principal",
        action="store_true",
        help="do not inject the dev principal (requests reach the app unauthenticated)",
    )
    parser.add_argument("--verbose", "-v", action="store_true", help="debug logging")
    args = parser.parse_args(argv)
    configure_logging(args.verbose)

    async def serve() -> None:
        host = DevHost(
            host=args.host,
            port=args.port,
            local_settings=args.settings,
            inject_principal=not args.no_principal,
        )
        await host.start()
        print(
            f"Dev host for {REPO_ROOT / 'function_app.py'} on {host.base_url}\n\nFunctions:\n",
            file=sys.stderr,
        )
        for line in host.describe():
            print(f"        {line}", file=sys.stderr)
        if args.no_principal:
            print("\nNo dev principal: data routes answer 401.", file=sys.stderr)
        print("\nPress Ctrl-C to stop.", file=sys.stderr, flush=True)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        try:
            await stop.wait()
        finally:
            await host.stop()

    try:
        asyncio.run(serve())
    except HostError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except AzureError as exc:
        print(
            f"error: the queue storage did not answer ({exc}); is Azurite running (make run)?",
            file=sys.stderr,
        )
        return 1
    except OSError as exc:
        print(f"error: cannot listen on {args.host}:{args.port}: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
