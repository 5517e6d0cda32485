"""Queue worker, poison-queue handler and the nightly timer: wiring to the service, nothing more."""

from __future__ import annotations

import logging

import azure.functions as func
import msgspec

from shared.storage import queue_client
from sync.models import RefreshMessage, RunStatus
from sync.notifications import NotifyMessage
from sync.service import LeaseBusy, open_service
from sync.validation import is_object_id, is_run_id

log = logging.getLogger("sync.jobs")
bp = func.Blueprint()  # type: ignore[no-untyped-call]

# A refresh that finds its tenant busy comes back after this long instead of burning retries.
BUSY_RETRY_SECONDS = 30


def decode_message(body: bytes) -> RefreshMessage | None:
    """The refresh message, or None (logged) when it is not one: a bad message is never retried."""
    try:
        message = msgspec.json.decode(body, type=RefreshMessage)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        log.error("dropped a malformed refresh message: %s", exc)
        return None
    if not is_object_id(message.tenant_id):
        log.error("dropped a refresh message with a malformed tenant id")
        return None
    if not is_run_id(message.run_id):
        log.error("dropped a refresh message with a malformed run id")
        return None
    return message


async def process_refresh_message(body: bytes) -> RunStatus | None:
    """Handle one message body: run the refresh, or put it back when the tenant is busy."""
    message = decode_message(body)
    if message is None:
        return None
    async with open_service() as service:
        try:
            run = await service.process_message(message)
        except LeaseBusy:
            # Coalesced, not lost: the message returns later; by then the running refresh may
            # have superseded it (it read the directory after this was requested).
            async with queue_client(service.ctx.settings) as queue:
                await queue.send_message(body, visibility_timeout=BUSY_RETRY_SECONDS)
            log.info(
                "tenant busy; refresh re-queued",
                extra={"tenantId": message.tenant_id, "runId": message.run_id},
            )
            return RunStatus.QUEUED
    return run.status


async def mark_poisoned(body: bytes) -> None:
    """A message that failed every delivery: its run is marked failed with a reason."""
    message = decode_message(body)
    if message is None:
        return
    async with open_service() as service:
        await service.mark_poisoned(message)
    log.error("refresh message poisoned", extra={"tenantId": message.tenant_id, "runId": message.run_id})


@bp.function_name("refresh_worker")
@bp.queue_trigger(arg_name="msg", queue_name="%SYNC_QUEUE%", connection="SYNC_STORAGE")
async def refresh_worker(msg: func.QueueMessage) -> None:
    """One queue message is one refresh of one tenant; Functions scales these out."""
    await process_refresh_message(msg.get_body())


@bp.function_name("refresh_poison")
@bp.queue_trigger(arg_name="msg", queue_name="%SYNC_QUEUE%-poison", connection="SYNC_STORAGE")
async def refresh_poison(msg: func.QueueMessage) -> None:
    """Messages the host gave up on (maxDequeueCount) mark their runs failed."""
    await mark_poisoned(msg.get_body())


@bp.function_name("notify_worker")
@bp.queue_trigger(arg_name="msg", queue_name="%NOTIFY_QUEUE%", connection="SYNC_STORAGE")
async def notify_worker(msg: func.QueueMessage) -> None:
    """A closed debounce window (one incremental refresh per tenant), or a subscription's lifecycle work."""
    try:
        message = msgspec.json.decode(msg.get_body(), type=NotifyMessage)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        log.error("dropped a malformed notify message: %s", exc)
        return
    if not is_object_id(message.tenant_id):
        log.error("dropped a notify message with a malformed tenant id")
        return
    async with open_service() as service:
        await service.handle_notify(message)


@bp.function_name("renew_subscriptions")
@bp.timer_trigger(arg_name="timer", schedule="%NOTIFY_RENEW_SCHEDULE%", run_on_startup=False)
async def renew_subscriptions(timer: func.TimerRequest) -> None:
    """Renew Graph subscriptions well before they lapse (users and groups live under 29 days)."""
    async with open_service() as service:
        renewed = await service.renew_subscriptions()
    log.info("renewed %d change-notification subscriptions", renewed)


@bp.function_name("nightly_sync")
@bp.timer_trigger(arg_name="timer", schedule="%SYNC_SCHEDULE%", run_on_startup=False)
async def nightly_sync(timer: func.TimerRequest) -> None:
    """Every night: queue a refresh per enabled tenant (each one also purges past the grace period)."""
    async with open_service() as service:
        queued = await service.nightly()
    log.info("nightly sync queued %d refreshes", len(queued))
