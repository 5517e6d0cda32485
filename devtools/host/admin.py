"""The host's admin API: run a timer (or queue) function on demand, as the real host allows for
every non-HTTP function; timers never run on their schedule here."""

from __future__ import annotations

import contextlib
import json

from aiohttp import web
from azure.functions.timer import TimerRequest

from devtools.host.functions import FunctionIndex, HttpFunction, QueueFunction, TimerFunction
from devtools.host.invoke import PROGRAMMATIC_REASON, Invoker
from devtools.host.queues import QueueWorker
from devtools.host.routes import problem_response


class AdminApi:
    """`POST /admin/functions/{name}` with `{"input": "..."}` answers 202 and runs it."""

    def __init__(self, index: FunctionIndex, invoker: Invoker, queues: QueueWorker) -> None:
        """Serves the functions of `index`."""
        self._index = index
        self._invoker = invoker
        self._queues = queues

    def add_routes(self, router: web.UrlDispatcher) -> None:
        """Register the admin routes."""
        router.add_post("/admin/functions/{name}", self._invoke)

    async def run_timer(self, timer: TimerFunction, reason: str) -> None:
        """Call a timer function once (nothing retries a timer; a failure is logged)."""
        request = TimerRequest(past_due=False, schedule={"AdjustForDST": True})
        with contextlib.suppress(Exception):
            await self._invoker.invoke(timer, reason, request)

    async def _invoke(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        entry = self._index.by_name.get(name.lower())
        if entry is None:
            return problem_response(404, "Not found", f"no function named {name!r}")
        if isinstance(entry, HttpFunction):
            return problem_response(
                400, "Bad request", f"{entry.name} is an HTTP function: call its route {entry.route}"
            )
        try:
            payload = json.loads(await request.read() or b"{}")
            text = payload.get("input", "")
            if not isinstance(text, str):
                raise ValueError("input must be a string")
        except (ValueError, AttributeError) as exc:
            return problem_response(400, "Bad request", f'the body must be {{"input": "..."}}: {exc}')
        if isinstance(entry, TimerFunction):
            self._invoker.spawn(self.run_timer(entry, PROGRAMMATIC_REASON))
        elif isinstance(entry, QueueFunction):
            self._invoker.spawn(self._queues.run_input(entry, text))
        return web.Response(status=202)
