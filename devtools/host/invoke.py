"""Calling a function as the host does: Executing/Executed log lines, functionTimeout, sync handlers
on the thread pool, and a count of work in flight so callers can wait until the host is idle."""

from __future__ import annotations

import asyncio
import functools
import inspect
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from devtools.host.functions import HostedFunction

log = logging.getLogger("devtools.host")

PROGRAMMATIC_REASON = "This function was programmatically called via the host APIs."


class Invoker:
    """Runs invocations and background work, and knows how much of it is still running."""

    def __init__(self, timeout: float | None) -> None:
        """`timeout`: host.json functionTimeout in seconds (None: no limit)."""
        self.timeout = timeout
        self.active = 0  # invocations and background tasks running, plus messages being settled
        self.on_finished: list[Callable[[], None]] = []  # e.g. wake the queue pollers
        self._tasks: set[asyncio.Task[Any]] = set()

    async def invoke(self, function: HostedFunction, reason: str, value: Any) -> Any:
        """Call one function with its trigger value, logging Executing/Executed with the duration."""
        invocation = uuid.uuid4()
        name = function.name
        log.info("Executing 'Functions.%s' (Reason='%s', Id=%s)", name, reason, invocation)
        started = time.perf_counter()
        self.active += 1
        try:
            async with asyncio.timeout(self.timeout):
                result = await _call(function, value)
        except BaseException as exc:
            cancelled = isinstance(exc, asyncio.CancelledError)
            log.error(
                "Executed 'Functions.%s' (%s, Id=%s, Duration=%.0fms)",
                name,
                "Cancelled" if cancelled else "Failed",
                invocation,
                (time.perf_counter() - started) * 1000,
                exc_info=not cancelled,
            )
            raise
        finally:
            self.active -= 1
            self._finished()
        log.info(
            "Executed 'Functions.%s' (Succeeded, Id=%s, Duration=%.0fms)",
            name,
            invocation,
            (time.perf_counter() - started) * 1000,
        )
        return result

    def spawn(self, coro: Awaitable[Any]) -> asyncio.Task[Any]:
        """Run `coro` in the background; counted as busy from now until it ends."""
        self.active += 1  # before the task starts, so wait_idle() never sees a gap after a 202

        async def tracked() -> Any:
            try:
                return await coro
            except Exception:
                # Nobody awaits these tasks: say what broke instead of "exception never retrieved".
                log.exception("the dev host failed while running a background invocation")
                return None
            finally:
                self.active -= 1
                self._finished()

        task = asyncio.ensure_future(tracked())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def drain(self, grace: float) -> None:
        """Let background work finish for up to `grace` seconds, then cancel what is left."""
        if not self._tasks:
            return
        _, pending = await asyncio.wait(set(self._tasks), timeout=grace)
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)

    def _finished(self) -> None:
        for callback in self.on_finished:
            callback()


async def _call(function: HostedFunction, value: Any) -> Any:
    kwargs = {function.arg_name: value}
    if inspect.iscoroutinefunction(function.handler):
        return await function.handler(**kwargs)
    # Sync functions run on the thread pool, as the Python worker runs them.
    loop = asyncio.get_running_loop()
    result = await loop.run_in_executor(None, functools.partial(function.handler, **kwargs))
    if inspect.isawaitable(result):
        result = await result
    return result
