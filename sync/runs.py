"""The life of a run: the only code that starts, finishes, holds, fails or supersedes a run.

Every run that ends goes through `end_run`, which stamps the end, stores the record, copies the
outcome onto the tenant (fleet view) and emits the one `SyncRunSummary` event the failed-run
alert and the KQL in the README read. Keeping this in one place is what makes "every failed run
alerts" true for refreshes, undos and poisoned messages alike.
"""

from __future__ import annotations

import logging
import time

from shared.telemetry import log_run_summary
from sync.models import RefreshMessage, Run, RunReason, RunStatus
from sync.store import SyncStore, new_run_id, utc_now

log = logging.getLogger("sync.runs")

POISONED_WHILE_APPLYING = (
    "partially applied: the refresh failed on every delivery attempt after it had begun writing "
    "{planned:,} changes, so some may have landed. Undo this run to put back any users it removed, "
    "or start a new refresh to finish once the service is healthy."
)
POISONED = (
    "the refresh failed on every delivery attempt (storage or worker failures); "
    "nothing further was changed. Start a new refresh once the service is healthy."
)


def new_run(
    tenant_id: str, reason: RunReason, *, dry_run: bool = False, requested_by: str | None = None
) -> Run:
    """A queued run record (not stored yet)."""
    now = utc_now()
    return Run(
        id=new_run_id(now),
        tenant_id=tenant_id,
        status=RunStatus.QUEUED,
        reason=reason,
        dry_run=dry_run,
        requested_at=now,
        requested_by=requested_by,
    )


def run_for_message(message: RefreshMessage) -> Run:
    """The queued run a message names, for a message whose run record was never written."""
    run = new_run(
        message.tenant_id,
        RunReason(message.reason),
        dry_run=message.dry_run,
        requested_by=message.requested_by,
    )
    run.id = message.run_id
    run.allow_removals = message.allow_removals
    return run


class RunClock:
    """When a run started, for its duration (monotonic, immune to wall-clock changes)."""

    def __init__(self) -> None:
        self._started = time.monotonic()

    @property
    def seconds(self) -> float:
        """Seconds since the run started, to the millisecond."""
        return round(time.monotonic() - self._started, 3)


async def start_run(store: SyncStore, run: Run, *, supersede: bool = True) -> RunClock:
    """Mark a run running now, store it, and supersede the queued refreshes it covers."""
    run.status = RunStatus.RUNNING
    run.started_at = utc_now()
    run.graph_requests = 0
    run.error = None
    await store.save_run(run)
    if supersede and not run.dry_run:
        await _supersede_covered(store, run)
    log.info("run started", extra={"tenantId": run.tenant_id, "runId": run.id, "reason": str(run.reason)})
    return RunClock()


async def _supersede_covered(store: SyncStore, run: Run) -> None:
    """Queued refreshes asked for before this run read the directory are covered by it.

    Dry runs and approvals are not: they answer a question of their own.
    """
    assert run.started_at is not None
    for other in await store.queued_runs(run.tenant_id):
        if other.id == run.id or other.dry_run or other.allow_removals is not None:
            continue
        if other.requested_at <= run.started_at:
            await supersede_run(store, other, by=run.id)


async def supersede_run(store: SyncStore, run: Run, *, by: str) -> None:
    """A queued or held run that a newer run answers: finished, pointing at that run."""
    run.status = RunStatus.SUPERSEDED
    run.superseded_by = by
    run.finished_at = utc_now()
    await store.save_run(run)


async def approve_held(store: SyncStore, held: Run, *, by_run: str, approved_by: str | None) -> Run:
    """A held run someone approved: answered by the run that applies its removals (`by_run`),
    with who approved it and when (approving it twice would allow its removals twice)."""
    held.approved_by = approved_by
    held.approved_at = utc_now()
    await supersede_run(store, held, by=by_run)
    return held


async def mark_applying(store: SyncStore, run: Run, planned_changes: int) -> None:
    """Record that the run starts writing the roster (a failure from now on may leave it partial)."""
    run.apply_started_at = utc_now()
    run.planned_changes = planned_changes
    await store.save_run(run)


async def end_run(store: SyncStore, run: Run, status: RunStatus, clock: RunClock | None = None) -> Run:
    """Finish a run with `status` (succeeded, held or failed): store it, update the fleet view, log it."""
    if not status.finished:
        raise ValueError(f"a run cannot end as {status}")
    run.status = status
    run.finished_at = utc_now()
    if clock is not None:
        run.duration_seconds = clock.seconds
    await store.save_run(run)
    if not run.dry_run:
        await store.record_last_run(run)
    log_run_summary(run)  # one SyncRunSummary record per finished run (the alert and KQL read it)
    return run


async def fail_run(store: SyncStore, run: Run, error: str, clock: RunClock | None = None) -> Run:
    """Finish a run as failed with the admin-facing reason."""
    run.error = error
    log.warning("run failed: %s", error, extra={"tenantId": run.tenant_id, "runId": run.id})
    return await end_run(store, run, RunStatus.FAILED, clock)


async def fail_poisoned(store: SyncStore, tenant_id: str, run_id: str) -> Run | None:
    """A message that failed every delivery: its run (if still open) is marked failed."""
    run = await store.get_run(tenant_id, run_id)
    if run is None or run.status.finished:
        return None
    if run.apply_started_at is not None:  # a worker died while writing: some rows may have landed
        return await fail_run(store, run, POISONED_WHILE_APPLYING.format(planned=run.planned_changes or 0))
    return await fail_run(store, run, POISONED)
