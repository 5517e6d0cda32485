"""Queue triggers fed from Azurite with host.json `extensions.queues` semantics: base64 or raw
messages, batchSize/newBatchThreshold, visibilityTimeout after a failure, maxDequeueCount and the
`<queue>-poison` queue."""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import logging
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from azure.core.exceptions import AzureError, ResourceExistsError, ResourceNotFoundError
from azure.functions.queue import QueueMessage as TriggerQueueMessage
from azure.storage.queue import QueueMessage as StorageQueueMessage
from azure.storage.queue.aio import QueueClient

from devtools.host.config import HostError, parse_timespan
from devtools.host.functions import QueueFunction
from devtools.host.invoke import PROGRAMMATIC_REASON, Invoker

log = logging.getLogger("devtools.host")

MIN_POLLING_INTERVAL = 0.1
LOCAL_MAX_POLLING_INTERVAL = 1.0  # the real host backs off to 1 min; locally a refresh should start at once
MAX_VISIBILITY_SECONDS = 7 * 24 * 3600  # Azure Queue Storage's limit


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


def queue_client(connection_string: str, name: str) -> QueueClient:
    """A queue client without encode/decode policy: the host decodes (host.json messageEncoding)
    and moves poison messages as stored."""
    # Short retries: the SDK's default back-off (15 s and up) would leave a developer whose Azurite
    # is down staring at a silent prompt for over a minute.
    return QueueClient.from_connection_string(
        connection_string, name, initial_backoff=1, increment_base=2, retry_total=2, random_jitter_range=1
    )


def trigger_message(msg: StorageQueueMessage, body: bytes) -> TriggerQueueMessage:
    """The message as the function receives it, with its delivery details."""
    return TriggerQueueMessage(  # type: ignore[no-untyped-call]
        id=msg.id,
        body=body,
        dequeue_count=msg.dequeue_count,
        pop_receipt=msg.pop_receipt,
        insertion_time=msg.inserted_on,
        expiration_time=msg.expires_on,
        time_next_visible=msg.next_visible_on,
    )


@dataclass
class QueueWatch:
    """One watched queue: its function, the queue and poison-queue clients, a wake-up signal."""

    function: QueueFunction
    queue: QueueClient
    poison: QueueClient
    wake: asyncio.Event = field(default_factory=asyncio.Event)


class QueueWorker:
    """Polls every queue-triggered function's queue and settles each message as the host does."""

    def __init__(
        self,
        functions: list[QueueFunction],
        options: QueueOptions,
        invoker: Invoker,
        stopping: asyncio.Event,
        grace: float,
    ) -> None:
        """Nothing is polled until `start()`."""
        self.options = options
        self._functions = functions
        self._invoker = invoker
        self._stopping = stopping
        self._grace = grace
        self.watches: list[QueueWatch] = []
        self._pollers: list[asyncio.Task[None]] = []
        invoker.on_finished.append(self.poke)

    async def start(self) -> None:
        """Create the queues and their poison queues, then poll each."""
        for function in self._functions:
            queue = queue_client(function.connection_string, function.queue_name)
            poison = queue_client(function.connection_string, f"{function.queue_name}-poison")
            self.watches.append(QueueWatch(function, queue, poison))
            for client in (queue, poison):
                with contextlib.suppress(ResourceExistsError):
                    await client.create_queue()
        for watch in self.watches:
            self._pollers.append(
                asyncio.create_task(self._poll(watch), name=f"poll {watch.function.queue_name}")
            )

    async def stop(self) -> None:
        """Stop polling (running messages get the grace period) and close the clients."""
        self.poke()
        if self._pollers:
            _, pending = await asyncio.wait(self._pollers, timeout=self._grace + 1)
            for task in pending:
                task.cancel()
            await asyncio.gather(*self._pollers, return_exceptions=True)
            self._pollers = []

    async def close(self) -> None:
        """Close the storage clients."""
        for watch in self.watches:
            await watch.queue.close()
            await watch.poison.close()
        self.watches = []

    def poke(self) -> None:
        """Poll at once (a finished invocation may have enqueued work) instead of after the back-off."""
        for watch in self.watches:
            watch.wake.set()

    async def counts(self) -> dict[str, int]:
        """Messages per watched queue, including invisible ones (received, or waiting for a retry)."""
        counts: dict[str, int] = {}
        for watch in self.watches:
            props = await watch.queue.get_queue_properties()
            counts[watch.function.queue_name] = props.approximate_message_count or 0
        return counts

    async def run_input(self, function: QueueFunction, text: str) -> None:
        """The admin API's way in: the input is the message content; no queue is involved."""
        message = TriggerQueueMessage(  # type: ignore[no-untyped-call]
            id=str(uuid.uuid4()), body=text.encode("utf-8"), dequeue_count=1
        )
        with contextlib.suppress(Exception):  # logged by the invoker
            await self._invoker.invoke(function, PROGRAMMATIC_REASON, message)

    def _receive_visibility(self) -> int:
        # A received message stays invisible for the whole function timeout, so no second worker
        # takes it while it runs; if the host dies, it comes back after that.
        timeout = self._invoker.timeout or 600
        return int(min(timeout + 60, MAX_VISIBILITY_SECONDS))

    async def _poll(self, watch: QueueWatch) -> None:
        options = self.options
        delay = MIN_POLLING_INTERVAL
        running: set[asyncio.Task[Any]] = set()
        while not self._stopping.is_set():
            # Fetch a new batch only when the running ones drop to newBatchThreshold, as the host does.
            while len(running) > options.new_batch_threshold:
                await asyncio.wait(running, return_when=asyncio.FIRST_COMPLETED)
            self._invoker.active += 1  # received messages are invisible but not yet running
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
                self._invoker.active -= 1
            for message in messages:
                task = self._invoker.spawn(self._process(watch, message))
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
        if self.options.message_encoding == "none":
            return content.encode("utf-8")
        return base64.b64decode("".join(content.split()), validate=True)

    async def _process(self, watch: QueueWatch, message: StorageQueueMessage) -> None:
        function = watch.function
        dequeue_count = message.dequeue_count or 1
        if dequeue_count > self.options.max_dequeue_count:
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
        try:
            await self._invoker.invoke(function, reason, trigger_message(message, body))
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

    async def _failed(self, watch: QueueWatch, message: StorageQueueMessage, dequeue_count: int) -> None:
        if dequeue_count >= self.options.max_dequeue_count:
            await self._to_poison(watch, message)
            return
        try:
            # The .NET SDK sends whole seconds: "00:00:00.2" means visible again at once.
            await watch.queue.update_message(message, visibility_timeout=int(self.options.visibility_timeout))
        except ResourceNotFoundError:
            log.warning("message %s was gone before it could be released", message.id)

    async def _to_poison(self, watch: QueueWatch, message: StorageQueueMessage) -> None:
        name = watch.function.queue_name
        log.warning(
            "Message %s has reached MaxDequeueCount of %d. Moving message to queue '%s-poison'.",
            message.id,
            self.options.max_dequeue_count,
            name,
        )
        # The content goes over as received (still base64 when it came as base64).
        await watch.poison.send_message(message.content)
        try:
            await watch.queue.delete_message(message)
        except ResourceNotFoundError:
            log.warning("message %s was gone before it could be deleted", message.id)
