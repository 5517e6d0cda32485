"""One run of one tenant, start to end: read ▶ classify ▶ plan ▶ check ▶ apply, under the tenant lease.

Everything before `sync.apply` only reads, so a failure there leaves the roster untouched; a
selected group that cannot be read to its last page fails the run and removes nobody. The run's
status is changed only by `sync.runs`; the roster is written only by `sync.apply`; whether a
plan may be applied is decided only by `sync.safety.check_plan`.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from datetime import datetime, timedelta

import msgspec

from shared.graph import admin_consent_url
from shared.telemetry import run_context
from sync import apply, onboarding, runs
from sync.context import SyncContext
from sync.directory import (
    DeltaExpired,
    DirectoryError,
    DirectoryReader,
    cheaper_member_strategy,
)
from sync.eligibility import Classification, classify_members, parse_exclusion_rules, purpose_candidates
from sync.incremental import NeedFullRead, incremental_allowed, read_incremental
from sync.lease import LeaseBusy, LeaseLost, TenantLease, hold_tenant
from sync.models import (
    MemberStrategy,
    PlanSample,
    RefreshMessage,
    RosterStatus,
    RosterUser,
    Run,
    RunCounts,
    RunReason,
    RunStatus,
    Selection,
    SelectionMode,
    Tenant,
)
from sync.planner import Plan, plan_restores, plan_roster_changes
from sync.roster import PartialWrite
from sync.safety import (
    RemovalGuard,
    SafetyVerdict,
    check_plan,
    guard_for,
    missing_groups_detail,
    removal_digest,
)
from sync.store import utc_now
from sync.validation import PLAN_SAMPLE_SIZE

log = logging.getLogger("sync.engine")

# A person's mailbox rarely turns into a shared one: re-read it weekly, not on every full run.
PURPOSE_RECHECK = timedelta(days=7)

__all__ = ["LeaseBusy", "NothingToUndo", "execute_refresh", "execute_undo", "tenant_guard"]


class NothingToUndo(Exception):
    """An undo found none of the run's removals still restorable."""


def tenant_guard(ctx: SyncContext, tenant: Tenant) -> RemovalGuard:
    """The tenant's removal guard: its own thresholds, else the app settings."""
    settings = ctx.settings
    default = RemovalGuard(
        percent=settings.removal_guard_percent,
        min_users=settings.removal_guard_min_users,
        majority_percent=settings.removal_guard_majority_percent,
    )
    return guard_for(tenant.guard_percent, tenant.guard_min_users, default=default)


async def read_full(
    reader: DirectoryReader,
    tenant: Tenant,
    mode: SelectionMode,
    group_ids: list[str],
    run: Run,
    *,
    known_people: frozenset[str] = frozenset(),
) -> Classification:
    """Read the directory for a selection and classify every member (reads only).

    `known_people` are users whose mailbox was checked recently and found to be a person's:
    their mailbox purpose is not read again (it is one $batch item per user).
    """
    rules = parse_exclusion_rules(tenant.exclusion_rules)
    counts: dict[str, int] = {}
    tenant_count: tuple[int, int] | None = None
    if mode is SelectionMode.ALL:
        counted = await reader.count_tenant_users()
        users = {u.id: u for u in await reader.list_all_users()}
        tenant_count = (counted, len(users))
        groups_of_user: dict[str, tuple[str, ...]] = {}
        names: dict[str, str] = {}
        direct = {}
    else:
        found = await reader.get_groups(group_ids)
        missing = missing_groups_detail([gid for gid, group in found.items() if group is None])
        if missing:
            raise DirectoryError(missing)
        names = {gid: group.display_name for gid, group in found.items() if group is not None}
        direct = await reader.count_direct_members(
            {gid: group.kind for gid, group in found.items() if group is not None}
        )
        counts = await reader.count_group_users(group_ids)
        strategy = cheaper_member_strategy(
            [counts.get(gid, 0) for gid in group_ids], await reader.count_tenant_users()
        )
        run.member_strategy = strategy
        if strategy is MemberStrategy.ALL_USERS:
            members = await reader.read_group_users_via_all_users(group_ids)
        else:
            members = await reader.read_group_users(group_ids)
        users, groups_of_user = members.users, members.groups_of_user
    excluded_ids: frozenset[str] = frozenset()
    if rules.exclusion_group_id:
        excluded_ids = frozenset((await reader.read_group_users([rules.exclusion_group_id])).users)
    candidates = purpose_candidates(users, rules)
    to_check = [uid for uid in candidates if uid not in known_people]
    probe = next((uid for uid in candidates if uid in known_people), None)
    if to_check and probe is not None:
        # One mailbox read fine within the week goes along: if only the others are refused, those
        # are access policies hiding them, not a permission the tenant took back.
        to_check.append(probe)
    mailboxes = await reader.read_mailbox_purposes(to_check)
    purposes: dict[str, str | None] | None = None
    unknown: frozenset[str] = frozenset()
    if mailboxes is not None:
        purposes = {**mailboxes.purposes, **{uid: "user" for uid in candidates if uid in known_people}}
        unknown = mailboxes.unknown
    classification = classify_members(
        users,
        groups_of_user,
        group_names=names,
        rules=rules,
        purposes=purposes,
        excluded_ids=excluded_ids,
        purpose_unknown=unknown,
        counted=counts,
    )
    # The probe's row keeps its own weekly re-check date: rewriting it on every run would cost a
    # table write per run that changes nothing.
    checked = frozenset(mailboxes.purposes) - {probe} if mailboxes is not None else frozenset()
    groups = [msgspec.structs.replace(g, direct=direct.get(g.id)) for g in classification.groups]
    return msgspec.structs.replace(
        classification, groups=groups, purposes_checked=checked, tenant_count=tenant_count
    )


def _known_people(roster: Mapping[str, RosterUser], now: datetime) -> frozenset[str]:
    """Active users whose mailbox was found to be a person's within PURPOSE_RECHECK."""
    return frozenset(
        uid
        for uid, row in roster.items()
        if row.status is RosterStatus.ACTIVE
        and row.purpose_checked_at is not None
        and now - row.purpose_checked_at < PURPOSE_RECHECK
    )


def _sample(plan: Plan) -> PlanSample:
    def ids(items: Iterable[msgspec.Struct]) -> list[str]:
        return [getattr(item, "id") for item in items][:PLAN_SAMPLE_SIZE]  # noqa: B009

    return PlanSample(
        add=ids(plan.adds), update=ids(plan.updates), restore=ids(plan.restores), remove=ids(plan.removals)
    )


def _counts(classification: Classification, plan: Plan) -> RunCounts:
    return RunCounts(
        members=len(classification.verdicts),
        eligible=len(classification.eligible),
        added=len(plan.adds),
        updated=len(plan.updates),
        removed=len(plan.removals),
        restored=len(plan.restores),
        unchanged=plan.unchanged,
        excluded=classification.excluded_counts(),
        unknown=len(classification.unknown),
        purpose_unknown=classification.purpose_unknown,
        licensed_by_sku=classification.licensed_by_sku,
        optional_matches=classification.optional_matches,
    )


def _fallback_reason(exc: Exception) -> str:
    """Why a nightly run read everything instead of only what changed."""
    if isinstance(exc, (DeltaExpired, NeedFullRead)):
        return str(exc)
    return (
        f"the incremental read failed ({type(exc).__name__}: {str(exc)[:200]}); everything was read instead"
    )


def failure_text(ctx: SyncContext, tenant_id: str, exc: Exception) -> str:
    """Why a run failed, in words the admin can act on."""
    if isinstance(exc, DirectoryError):
        return exc.advice(admin_consent_url(ctx.settings, tenant_id))
    if isinstance(exc, (LeaseLost, UnsafePlan)):
        return str(exc)
    if isinstance(exc, PartialWrite):
        return (
            f"partially applied: {exc.written:,} of {exc.total:,} changes written before storage failed "
            f"({type(exc.cause).__name__}); the rest was not started. Undo this run to put back the users it "
            "removed, or run a refresh to finish"
        )
    # Storage or code failures: the next refresh converges (plans are recomputed from the roster).
    return f"internal error ({type(exc).__name__}: {str(exc)[:300]}); run a refresh again to converge"


async def execute_refresh(ctx: SyncContext, message: RefreshMessage) -> Run:
    """Run the refresh a queue message asks for; idempotent for redelivered messages.

    Raises LeaseBusy when another refresh of the tenant is running (the caller retries later).
    """
    with run_context(message.tenant_id, message.run_id):  # every log line carries both ids
        run = await ctx.store.get_run(message.tenant_id, message.run_id)
        if run is None:  # a message whose run record was never written (e.g. sent by hand)
            run = runs.run_for_message(message)
            await ctx.store.create_run(run)
        if run.status.finished:
            return run  # at-least-once delivery: this message was already handled
        if run.dry_run:
            # A preview writes only its own run record: it needs no lease and never waits for one.
            return await _run(ctx, run, None)
        async with hold_tenant(TenantLease(ctx.store, run.tenant_id)) as lease:
            latest = await ctx.store.get_run(run.tenant_id, run.id)
            if latest is not None and latest.status.finished:
                return latest
            return await _run(ctx, run, lease)


async def _run(ctx: SyncContext, run: Run, lease: TenantLease | None) -> Run:
    clock = await runs.start_run(ctx.store, run)
    try:
        status = await _refresh(ctx, run, lease)
    except Exception as exc:
        if isinstance(exc, PartialWrite):
            run.applied_changes = exc.written
        if not isinstance(exc, DirectoryError):
            log.exception("run failed", extra={"tenantId": run.tenant_id, "runId": run.id})
        await onboarding.note_token_refusal(ctx.store, run.tenant_id, exc)  # consent gone: Reconnect
        return await runs.fail_run(ctx.store, run, failure_text(ctx, run.tenant_id, exc), clock)
    return await runs.end_run(ctx.store, run, status, clock)


class UnsafePlan(Exception):
    """The safety rules refuse the plan outright (e.g. Graph answered short): the run fails."""


def _settings_of(tenant: Tenant, selection: Selection) -> tuple[object, ...]:
    """What an admin can change that decides a run's plan: selection, rules, guard thresholds."""
    return (selection.version, tenant.exclusion_rules, tenant.guard_percent, tenant.guard_min_users)


def _removal_reasons(plan: Plan, classification: Classification) -> dict[str, str]:
    """Why each removed user goes: their first exclusion reason, else they left the selected groups."""
    reasons: dict[str, str] = {}
    for user in plan.removals:
        verdict = classification.verdicts.get(user.id)
        primary = verdict.primary if verdict is not None else None
        reasons[user.id] = str(primary) if primary is not None else "notInSelectedGroups"
    return reasons


async def _refresh(ctx: SyncContext, run: Run, lease: TenantLease | None) -> RunStatus:
    """Read, classify, plan, check and apply; fills in the run record and says how it ends."""
    store = ctx.store
    tenant = await store.get_tenant(run.tenant_id)
    if tenant is None:
        raise DirectoryError(f"tenant {run.tenant_id} is not registered; add it first")
    selection = await store.get_selection(run.tenant_id)
    started_with = _settings_of(tenant, selection)
    if run.dry_run and run.preview_mode is not None:
        mode, group_ids = run.preview_mode, list(run.preview_group_ids or [])
    else:
        mode, group_ids = selection.mode, [g.id for g in selection.groups]
    reader = ctx.reader(tenant.id)
    cached: dict[str, RosterUser] | None = None

    async def load_roster() -> dict[str, RosterUser]:
        # Read once, and only when needed: an unchanged incremental night never reads it.
        nonlocal cached
        if cached is None:
            cached = {row.id: row for row in await ctx.roster.read_roster(run.tenant_id)}
        return cached

    links: tuple[str, str] | None = None
    classification: Classification | None = None
    full = True
    try:
        if incremental_allowed(tenant, selection, run, utc_now()):
            try:
                delta = await read_incremental(reader, tenant, selection, load_roster)
            except Exception as exc:  # only a full read may fail a run: anything unexpected reads everything
                run.fallback = _fallback_reason(exc)
                log.info("full read instead of incremental: %s", run.fallback, extra={"tenantId": tenant.id})
            else:
                full, run.incremental = False, True
                links = (delta.users_link, delta.groups_link)
                if delta.classification is None:  # nothing changed: the roster stands as it is
                    active = tenant.active_users or 0
                    run.counts = RunCounts(eligible=active, unchanged=active)
                    removed = await ctx.roster.read_roster(run.tenant_id, status=RosterStatus.REMOVED)
                    await apply.purge_past_grace(ctx, run.tenant_id, removed, utc_now(), run_id=run.id)
                    await apply.advance_delta(
                        store, tenant, selection, links, full_refresh_at=None, active_users=active
                    )
                    return RunStatus.SUCCEEDED
                classification = delta.classification
        if classification is None:
            if not run.dry_run:
                # Taken before the read, so changes made while it runs are seen by the next delta.
                links = await reader.latest_delta_links()
            known = _known_people(await load_roster(), utc_now())
            classification = await read_full(reader, tenant, mode, group_ids, run, known_people=known)
    finally:
        run.graph_requests += reader.requests_sent
    roster = await load_roster()
    unknown = classification.unknown
    plan = plan_roster_changes(roster.values(), classification.eligible, keep=unknown)
    if unknown:
        run.unknown_users = unknown[:PLAN_SAMPLE_SIZE]
    decision = check_plan(
        plan,
        roster=list(roster.values()),
        groups=classification.groups,
        guard=tenant_guard(ctx, tenant),
        approved_digest=run.approved_digest,
        approved_removals=run.allow_removals,
        tenant_count=classification.tenant_count,
    )
    run.groups = classification.groups
    run.mailbox_purpose_source = classification.purpose_source
    run.counts = _counts(classification, plan)
    if decision.verdict is SafetyVerdict.FAIL:
        raise UnsafePlan(decision.detail)
    if decision.held:
        run.guard = decision.detail  # on a preview too: saving it will need an approval
    if run.dry_run or decision.held:
        run.plan = _sample(plan)
        run.removal_digest = removal_digest(plan)
        return RunStatus.HELD if decision.held and not run.dry_run else RunStatus.SUCCEEDED
    # What the admin saved may have changed while this run read: the newer save has its own run.
    fresh_tenant, fresh_selection = (
        await store.get_tenant(run.tenant_id),
        await store.get_selection(run.tenant_id),
    )
    if fresh_tenant is None or _settings_of(fresh_tenant, fresh_selection) != started_with:
        run.note = (
            "the selection, the rules or the removal guard changed while this run read the directory; it "
            "wrote nothing, and the run of the newer settings applies them"
        )
        return RunStatus.SUPERSEDED
    if lease is not None:
        await lease.confirm()
    await runs.mark_applying(store, run, plan.change_count)
    await apply.apply_plan(
        ctx,
        tenant_id=run.tenant_id,
        run_id=run.id,
        plan=plan,
        roster=roster,
        now=utc_now(),
        purposes_checked=classification.purposes_checked,
        reasons=_removal_reasons(plan, classification),
        by=run.requested_by,
    )
    run.applied_changes = plan.change_count
    if full:
        await apply.record_excluded(
            ctx, run.tenant_id, classification.excluded_users, run_id=run.id, now=utc_now()
        )
    if links is not None:
        await apply.advance_delta(
            store,
            tenant,
            selection,
            links,
            full_refresh_at=utc_now() if full else None,
            active_users=len(classification.eligible),
        )
    return RunStatus.SUCCEEDED


async def execute_undo(ctx: SyncContext, tenant: Tenant, target: Run, *, requested_by: str | None) -> Run:
    """Restore every user `target` removed who is still removed and within REMOVAL_GRACE_DAYS.

    The same path as a refresh: a (restore-only) plan, `check_plan`, the lease confirmed,
    `sync.apply`, recorded as a run of its own by `sync.runs`. Raises LeaseBusy when a refresh
    of the tenant is running, NothingToUndo when none of its removals can come back.
    """
    run = runs.new_run(tenant.id, RunReason.UNDO, requested_by=requested_by)
    run.undo_of = target.id
    async with hold_tenant(TenantLease(ctx.store, tenant.id), renew=False) as lease:
        now = utc_now()
        grace = ctx.settings.removal_grace_days
        roster = {row.id: row for row in await ctx.roster.read_roster(tenant.id)}
        plan, too_old = plan_restores(
            roster.values(), removed_by=target.id, removed_since=now - timedelta(days=grace)
        )
        if not plan.restores:
            why = (
                f"the {too_old} user(s) it removed are past the {grace}-day grace period"
                if too_old
                else "none of the users it removed is still removed (restored since, removed again by a "
                "later run, or purged)"
            )
            raise NothingToUndo(f"nothing to undo for run {target.id}: {why}")
        await ctx.store.create_run(run)
        clock = await runs.start_run(ctx.store, run, supersede=False)
        run.plan = _sample(plan)
        if too_old:
            run.note = (
                f"{too_old} user(s) removed by run {target.id} are past the {grace}-day grace period and "
                "were not restored"
            )
        decision = check_plan(plan, roster=list(roster.values()), groups=[], guard=tenant_guard(ctx, tenant))
        try:
            if decision.verdict is not SafetyVerdict.APPLY:  # a restore-only plan removes nobody
                raise DirectoryError(decision.detail)
            await lease.confirm()
            await runs.mark_applying(ctx.store, run, plan.change_count)
            await apply.apply_plan(
                ctx,
                tenant_id=tenant.id,
                run_id=run.id,
                plan=plan,
                roster=roster,
                now=now,
                reasons=dict.fromkeys((user.id for user in plan.restores), "undo"),
                by=requested_by,
            )
        except Exception as exc:
            if isinstance(exc, PartialWrite):
                run.applied_changes = exc.written
            error = (
                f"{failure_text(ctx, tenant.id, exc)}; some users may be back already: "
                f"undo run {target.id} again to finish"
            )
            return await runs.fail_run(ctx.store, run, error, clock)
        run.applied_changes = plan.change_count
        run.counts.restored = len(plan.restores)
        ended = await runs.end_run(ctx.store, run, RunStatus.SUCCEEDED, clock)
        target.undone_by = run.id
        await ctx.store.save_run(target)
        return ended
