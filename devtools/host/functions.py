"""The app's functions as the host sees them: one record per trigger, read from the bindings."""

from __future__ import annotations

import inspect
import json
import logging
import os
import weakref
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import azure.functions as func
from azure.functions.decorators.function_app import Function

from devtools.host.config import HostError, resolve_expression

log = logging.getLogger("devtools.host")

Handler = Callable[..., Any]

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


@dataclass(frozen=True)
class HostedFunction:
    """A function the host can call: its name, handler and the trigger argument's name."""

    name: str
    handler: Handler
    arg_name: str


@dataclass(frozen=True)
class HttpFunction(HostedFunction):
    """An HTTP-triggered function: its route template (ASP.NET syntax) and methods."""

    route: str
    methods: frozenset[str] | None  # None: every method


@dataclass(frozen=True)
class QueueFunction(HostedFunction):
    """A queue-triggered function and the queue it watches."""

    queue_name: str
    connection_string: str


@dataclass(frozen=True)
class TimerFunction(HostedFunction):
    """A timer-triggered function (run on demand only)."""

    schedule: str


@dataclass
class FunctionIndex:
    """What the host runs, by kind and by (case-insensitive) name."""

    http: list[HttpFunction] = field(default_factory=list)
    queues: list[QueueFunction] = field(default_factory=list)
    timers: list[TimerFunction] = field(default_factory=list)
    by_name: dict[str, HostedFunction] = field(default_factory=dict)


def index_functions(functions: list[Function], host_json: Mapping[str, Any]) -> FunctionIndex:
    """Sort the app's functions by trigger, resolving `%SETTING%` expressions (host.json may list
    the only functions to run; `AzureWebJobs.<name>.Disabled` switches one off)."""
    index = FunctionIndex()
    enabled = host_json.get("functions")
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
        _check_parameters(name, handler, trigger["name"])
        entry = _entry(name, handler, trigger)
        if entry is None:
            log.warning("Function '%s' has a %s, which the dev host does not run", name, trigger["type"])
            continue
        if isinstance(entry, HttpFunction):
            index.http.append(entry)
        elif isinstance(entry, QueueFunction):
            index.queues.append(entry)
        elif isinstance(entry, TimerFunction):
            index.timers.append(entry)
        index.by_name[name.lower()] = entry
    return index


def _entry(name: str, handler: Handler, trigger: Mapping[str, Any]) -> HostedFunction | None:
    arg = trigger["name"]
    kind = trigger["type"]
    if kind == "httpTrigger":
        methods = trigger.get("methods")
        allowed = frozenset(m.upper() for m in methods) if methods else None
        return HttpFunction(
            name, handler, arg, resolve_expression(str(trigger.get("route") or name)), allowed
        )
    if kind == "queueTrigger":
        queue = resolve_expression(trigger["queueName"]).lower()
        connection = _connection_string(resolve_expression(trigger.get("connection") or ""), name)
        return QueueFunction(name, handler, arg, queue, connection)
    if kind == "timerTrigger":
        schedule = resolve_expression(trigger["schedule"])
        return TimerFunction(name, handler, arg, schedule)
    return None


def _check_parameters(name: str, handler: Handler, trigger_arg: str) -> None:
    # The host passes the trigger argument only; other bindings (and `context`) are not supplied.
    for parameter in inspect.signature(handler).parameters.values():
        if parameter.name != trigger_arg and parameter.default is inspect.Parameter.empty:
            raise HostError(
                f"Function '{name}' takes '{parameter.name}', which the dev host does not supply "
                "(it passes the trigger argument only)"
            )


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
