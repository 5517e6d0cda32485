"""One refresh run of one tenant, start to end.

lease ▶ read directory ▶ classify ▶ plan ▶ removal guard ▶ apply ▶ record the run.
Everything before apply only reads, so a failure there leaves the roster untouched; a
selected group that cannot be read to its last page fails the run and removes nobody.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta

import msgspec

from shared.graph import GraphClients, admin_consent_url
from shared.settings import Settings
from shared.telemetry import log_run_summary, run_context
from sync.directory import (
    DeltaExpired,
    DirectoryError,
    DirectoryReader,
    GraphAccessDenied,
    MemberStrategy,
    cheaper_member_strategy,
)
from sync.eligibility import (
    ExclusionRules,
    MailboxPurposeSource,
    Verdict,
    classify_user,
    count_exclusions,
    parse_exclusion_rules,
)
from sync.models import (
    DirectoryUser,
    EligibleUser,
    ExcludedCounts,
    RefreshMessage,
    RosterStatus,
    RosterUser,
    Run,
    RunCounts,
    RunGroup,
    RunStatus,
    Selection,
    SelectionMode,
    Tenant,
)
from sync.planner import Plan, RemovalGuard, changed_rows, plan_roster_changes, purge_due, removal_digest
from sync.roster import RosterStore
from sync.safety import emptied_group_guard
from sync.store import SyncStore, iso, utc_now

log = logging.getLogger("sync.engine")

LEASE_SECONDS = 300.0  # renewed every third of it while a run works; a crashed worker's lapses
FULL_REFRESH_EVERY = timedelta(days=7)
# A person's mailbox rarely turns into a shared one: re-read it weekly, not on every full run.
PURPOSE_RECHECK = timedelta(days=7)
INCREMENTAL_REASONS = frozenset({"nightly"})  # runs people start read everything, for exact counts
PLAN_SAMPLE_SIZE = 200  # user ids per list kept on a held or dry run (Table properties cap at 64 KiB)


class LeaseBusy(Exception):
    """Another refresh of the same tenant holds the lease; try again later."""


@dataclass
class SyncContext:
    """What a run needs: settings and the clients for storage and Graph."""

    settings: Settings
    store: SyncStore
    roster: RosterStore
    graph: GraphClients

    @classmethod
    def create(cls, settings: Settings, graph: GraphClients | None = None) -> SyncContext:
        """Clients for these settings (Graph clients may be shared across contexts)."""
        return cls(settings, SyncStore(settings), RosterStore(settings), graph or GraphClients(settings))

    async def aclose(self) -> None:
        """Close the storage clients (the Graph pool belongs to its owner)."""
        await self.store.aclose()
        await self.roster.aclose()


class Classification(msgspec.Struct, frozen=True, kw_only=True):
    """The directory read turned into who stays, who does not and why."""

    eligible: list[EligibleUser]
    verdicts: dict[str, Verdict]
    groups: list[RunGroup]
    purpose_source: MailboxPurposeSource
    purposes_checked: frozenset[str] = frozenset()  # users whose mailbox purpose Graph gave this run


def classify_members(
    users: Mapping[str, DirectoryUser],
    groups_of_user: Mapping[str, tuple[str, ...]],
    *,
    group_names: Mapping[str, str],
    rules: ExclusionRules,
    purposes: Mapping[str, str | None] | None,
    excluded_ids: frozenset[str],
) -> Classification:
    """Pure: apply the eligibility rules to every member and count per selected group."""
    source = MailboxPurposeSource.HEURISTIC if purposes is None else MailboxPurposeSource.MAILBOX_SETTINGS
    verdicts: dict[str, Verdict] = {}
    eligible: list[EligibleUser] = []
    per_group = {gid: [0, 0] for gid in group_names}
    for uid, user in users.items():
        verdict = classify_user(
            user,
            rules=rules,
            mailbox_purpose=purposes.get(uid) if purposes is not None else None,
            purpose_source=source,
            excluded_by_group=uid in excluded_ids,
        )
        verdicts[uid] = verdict
        member_of = groups_of_user.get(uid, ())
        for gid in member_of:
            tally = per_group.get(gid)  # incremental runs count only the groups they re-read
            if tally is not None:
                tally[0] += 1
                tally[1] += verdict.included
        if verdict.included:
            eligible.append(
                EligibleUser(
                    id=uid,
                    user_principal_name=user.user_principal_name,
                    display_name=user.display_name,
                    mail=user.mail,
                    department=user.department,
                    job_title=user.job_title,
                    groups=member_of,
                )
            )
    groups = [
        RunGroup(id=gid, display_name=name, members=per_group[gid][0], eligible=per_group[gid][1])
        for gid, name in group_names.items()
    ]
    return Classification(eligible=eligible, verdicts=verdicts, groups=groups, purpose_source=source)


def _candidates_for_purpose(users: Mapping[str, DirectoryUser], rules: ExclusionRules) -> list[str]:
    """Users whose mailbox purpose could still change the verdict (the others are out anyway)."""
    return [
        uid
        for uid, user in users.items()
        if classify_user(
            user, rules=rules, mailbox_purpose=None, purpose_source=MailboxPurposeSource.MAILBOX_SETTINGS
        ).included
    ]


def _plan_sample(plan: Plan) -> dict[str, list[str]]:
    def ids(items: Iterable[msgspec.Struct]) -> list[str]:
        return [item.id for item in items][:PLAN_SAMPLE_SIZE]  # type: ignore[attr-defined]

    return {
        "add": ids(plan.adds),
        "update": ids(plan.updates),
        "restore": ids(plan.restores),
        "remove": ids(plan.removals),
    }


def tenant_guard(settings: Settings, tenant: Tenant) -> RemovalGuard:
    """The tenant's removal guard: its own thresholds, else the app settings."""
    return RemovalGuard(
        percent=tenant.guard_percent if tenant.guard_percent is not None else settings.removal_guard_percent,
        min_users=tenant.guard_min_users
        if tenant.guard_min_users is not None
        else settings.removal_guard_min_users,
    )


async def read_and_classify(
    ctx: SyncContext,
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
    reader = DirectoryReader(ctx.graph.for_tenant(tenant.id))
    rules = parse_exclusion_rules(tenant.exclusion_rules)
    try:
        if mode is SelectionMode.ALL:
            users = {u.id: u for u in await reader.list_all_users()}
            groups_of_user: dict[str, tuple[str, ...]] = {}
            names: dict[str, str] = {}
        else:
            found = await reader.get_groups(group_ids)
            missing = [gid for gid, group in found.items() if group is None]
            if missing:
                raise DirectoryError(
                    "selected group(s) no longer exist in the tenant: "
                    + ", ".join(missing)
                    + "; nobody was removed. Update the selection."
                )
            names = {gid: group.display_name for gid, group in found.items() if group is not None}
            counts = await reader.count_group_users(group_ids)
            strategy = cheaper_member_strategy(
                [counts.get(gid, 0) for gid in group_ids], await reader.count_tenant_users()
            )
            run.member_strategy = str(strategy)
            if strategy is MemberStrategy.ALL_USERS:
                members = await reader.read_group_users_via_all_users(group_ids)
            else:
                members = await reader.read_group_users(group_ids)
            users, groups_of_user = members.users, members.groups_of_user
        excluded_ids: frozenset[str] = frozenset()
        if rules.exclusion_group_id:
            excluded_ids = frozenset((await reader.read_group_users([rules.exclusion_group_id])).users)
        candidates = _candidates_for_purpose(users, rules)
        to_check = [uid for uid in candidates if uid not in known_people]
        purposes = await reader.read_mailbox_purposes(to_check)
    finally:
        run.graph_requests += reader.requests_sent
    if purposes is not None:
        purposes.update({uid: "user" for uid in candidates if uid in known_people})
    classification = classify_members(
        users,
        groups_of_user,
        group_names=names,
        rules=rules,
        purposes=purposes,
        excluded_ids=excluded_ids,
    )
    checked = frozenset(to_check) if purposes is not None else frozenset()
    return msgspec.structs.replace(classification, purposes_checked=checked)


def _known_people(roster: Mapping[str, RosterUser], now: datetime) -> frozenset[str]:
    """Active users whose mailbox was found to be a person's within PURPOSE_RECHECK."""
    known: set[str] = set()
    for uid, row in roster.items():
        if row.status is RosterStatus.ACTIVE and row.purpose_checked_at:
            checked = datetime.fromisoformat(row.purpose_checked_at.replace("Z", "+00:00"))
            if now - checked < PURPOSE_RECHECK:
                known.add(uid)
    return frozenset(known)


def _stamp_purpose_checks(
    roster: Mapping[str, RosterUser],
    written: list[RosterUser],
    classification: Classification,
    now: str,
) -> list[RosterUser]:
    """The rows to write, with the time their mailbox was checked, unchanged rows included."""
    checked = classification.purposes_checked
    if not checked:
        return written
    eligible = {user.id for user in classification.eligible}
    replace = msgspec.structs.replace
    rows = [
        replace(row, purpose_checked_at=now) if row.id in checked and row.id in eligible else row
        for row in written
    ]
    touched = {row.id for row in written}
    rows.extend(
        replace(roster[uid], purpose_checked_at=now)
        for uid in sorted(checked & eligible - touched)
        if uid in roster and roster[uid].status is RosterStatus.ACTIVE
    )
    return rows


def _counts(classification: Classification, plan: Plan) -> RunCounts:
    excluded = count_exclusions(classification.verdicts.values())
    return RunCounts(
        members=len(classification.verdicts),
        eligible=len(classification.eligible),
        added=len(plan.adds),
        updated=len(plan.updates),
        removed=len(plan.removals),
        restored=len(plan.restores),
        unchanged=plan.unchanged,
        excluded=msgspec.convert(excluded, ExcludedCounts),
    )


def _error_text(ctx: SyncContext, tenant_id: str, exc: Exception) -> str:
    if isinstance(exc, GraphAccessDenied):
        link = admin_consent_url(ctx.settings, tenant_id)
        grant = f" A Global Administrator of the tenant can grant it at {link}" if link else ""
        return f"{exc}{grant}"
    if isinstance(exc, (DirectoryError, LeaseLost)):
        return str(exc)
    # Storage or code failures: the next refresh converges (plans are recomputed from the roster).
    return f"internal error ({type(exc).__name__}: {str(exc)[:300]}); run a refresh again to converge"


async def execute_refresh(ctx: SyncContext, message: RefreshMessage) -> Run:
    """Run the refresh a queue message asks for; idempotent for redelivered messages.

    Raises LeaseBusy when another refresh of the tenant is running (the caller retries later).
    """
    with run_context(message.tenant_id, message.run_id):  # every log line carries both ids
        return await _execute_refresh(ctx, message)


async def _execute_refresh(ctx: SyncContext, message: RefreshMessage) -> Run:
    store = ctx.store
    run = await store.get_run(message.tenant_id, message.run_id)
    if run is None:  # a message whose run record was never written (e.g. sent by hand)
        run = Run(
            id=message.run_id,
            tenant_id=message.tenant_id,
            status=RunStatus.QUEUED,
            reason=message.reason,
            dry_run=message.dry_run,
            requested_at=iso(utc_now()),
            requested_by=message.requested_by,
            allow_removals=message.allow_removals,
        )
        await store.create_run(run)
    if run.status.finished:
        return run  # at-least-once delivery: this message was already handled
    owner = f"{run.id}:{secrets.token_hex(4)}"
    if run.dry_run:
        # A preview writes only its own run record: it needs no lease and never waits for one.
        return await _run_under_lease(ctx, run, owner, renew=False)
    async with store.tenant_lease(run.tenant_id, owner, LEASE_SECONDS) as held:
        if not held:
            raise LeaseBusy(f"another refresh of tenant {run.tenant_id} is running")
        latest = await store.get_run(run.tenant_id, run.id)
        if latest is not None and latest.status.finished:
            return latest
        return await _run_under_lease(ctx, run, owner)


async def _supersede_covered_runs(ctx: SyncContext, run: Run, started_at: str) -> None:
    """Queued refreshes asked for before this run read the directory are covered by it."""
    if run.dry_run:
        return
    for other in await ctx.store.queued_runs(run.tenant_id):
        if other.id == run.id or other.dry_run or other.allow_removals is not None:
            continue
        if other.requested_at <= started_at:
            other.status = RunStatus.SUPERSEDED
            other.superseded_by = run.id
            other.finished_at = started_at
            await ctx.store.save_run(other)


def _incremental_allowed(tenant: Tenant, selection: Selection, run: Run, now: datetime) -> bool:
    """Nightly runs read only what changed, when the delta links match the current selection and rules."""
    if run.reason not in INCREMENTAL_REASONS or run.dry_run or run.allow_removals is not None:
        return False
    if not (tenant.users_delta_link and tenant.groups_delta_link and tenant.last_full_refresh_at):
        return False
    if tenant.delta_selection_version != selection.version or tenant.delta_rules != tenant.exclusion_rules:
        return False
    last_full = datetime.fromisoformat(tenant.last_full_refresh_at.replace("Z", "+00:00"))
    return now - last_full < FULL_REFRESH_EVERY  # a weekly full refresh catches what delta cannot see


class _DeltaResult(msgspec.Struct, kw_only=True):
    classification: Classification | None  # None: nothing changed since the last run
    users_link: str
    groups_link: str


class _NeedFullRefresh(Exception):
    """The incremental path cannot answer safely; fall back to a full read."""


async def read_incremental(
    ctx: SyncContext,
    tenant: Tenant,
    selection: Selection,
    load_roster: Callable[[], Awaitable[Mapping[str, RosterUser]]],
    run: Run,
) -> _DeltaResult:
    """Re-read only the groups and users that changed since the last successful run.

    Delta is not transitive: a membership change in a nested group shows up as a change of
    that group, so each selected group whose nesting closure holds a changed group is
    expanded again. Users whose attributes changed are re-read with the groups they belong to.
    Everyone else keeps the roster row of the last successful run.
    """
    reader = DirectoryReader(ctx.graph.for_tenant(tenant.id))
    rules = parse_exclusion_rules(tenant.exclusion_rules)
    assert tenant.users_delta_link and tenant.groups_delta_link
    try:
        changed_users, users_link = await reader.read_changes(tenant.users_delta_link, "User.Read.All")
        changed_groups, groups_link = await reader.read_changes(
            tenant.groups_delta_link, "GroupMember.Read.All"
        )
        if not changed_users and not changed_groups:
            return _DeltaResult(classification=None, users_link=users_link, groups_link=groups_link)
        roster = await load_roster()
        selected = [g.id for g in selection.groups]
        names = {g.id: g.display_name for g in selection.groups}
        closure = await reader.group_closure(
            selected + ([rules.exclusion_group_id] if rules.exclusion_group_id else [])
        )
        if rules.exclusion_group_id and closure[rules.exclusion_group_id] & changed_groups:
            raise _NeedFullRefresh("the exclusion group changed")
        affected = [gid for gid in selected if closure[gid] & changed_groups]
        fresh = await reader.read_group_users(affected) if affected else None
        users: dict[str, DirectoryUser] = dict(fresh.users) if fresh else {}
        others = sorted(changed_users - set(users))
        fetched = await reader.get_users(others) if others else {}
        users.update({uid: user for uid, user in fetched.items() if user is not None})
        gone = {uid for uid, user in fetched.items() if user is None}
        # Newcomers found in a re-read group may also be in groups that were not re-read: the
        # roster knows nothing of them, so their memberships are read like a changed user's.
        newcomers = [
            uid
            for uid in (fresh.users if fresh else {})
            if uid not in roster or roster[uid].status is not RosterStatus.ACTIVE
        ]
        memberships = await reader.groups_of_users(sorted({*others, *newcomers} - gone))
        excluded_ids = frozenset(
            uid for uid, groups in memberships.items() if rules.exclusion_group_id in groups
        )
        if rules.exclusion_group_id and fresh:
            excluded_ids |= frozenset((await reader.read_group_users([rules.exclusion_group_id])).users)
        purposes = await reader.read_mailbox_purposes(_candidates_for_purpose(users, rules))
    finally:
        run.graph_requests += reader.requests_sent

    order = {gid: i for i, gid in enumerate(selected)}
    affected_set = set(affected)
    groups_of_user: dict[str, tuple[str, ...]] = {}
    for uid in users:
        member_of: set[str] = set(fresh.groups_of_user.get(uid, ())) if fresh else set()
        if uid in memberships:
            member_of |= memberships[uid] & set(selected)
        elif uid in roster and roster[uid].status is RosterStatus.ACTIVE:
            member_of |= set(roster[uid].groups) - affected_set
        in_scope = selection.mode is SelectionMode.ALL or member_of
        if in_scope:
            groups_of_user[uid] = tuple(sorted(member_of, key=order.__getitem__))
    in_scope_users = {uid: users[uid] for uid in groups_of_user}
    examined = classify_members(
        in_scope_users,
        groups_of_user,
        group_names={gid: names[gid] for gid in affected},
        rules=rules,
        purposes=purposes,
        excluded_ids=excluded_ids,
    )
    # Unchanged users keep their row: eligible then, and nothing about them changed since.
    carried: list[EligibleUser] = []
    for uid, row in roster.items():
        if row.status is not RosterStatus.ACTIVE or uid in users or uid in gone:
            continue
        kept = tuple(g for g in row.groups if g not in affected_set)
        if selection.mode is SelectionMode.GROUPS and not kept:
            continue  # they came only through groups that were re-read without them
        carried.append(
            EligibleUser(
                id=uid,
                user_principal_name=row.user_principal_name,
                display_name=row.display_name,
                mail=row.mail,
                department=row.department,
                job_title=row.job_title,
                groups=kept,
            )
        )
    classification = msgspec.structs.replace(examined, eligible=examined.eligible + carried)
    return _DeltaResult(classification=classification, users_link=users_link, groups_link=groups_link)


async def _keep_lease(ctx: SyncContext, tenant_id: str, owner: str) -> None:
    """Renew the tenant lease while a run works, so a long refresh is never overlapped.

    A failed renewal is retried soon; if the lease is lost anyway, the check before the roster
    is written (`_confirm_lease`) stops the run.
    """
    wait = LEASE_SECONDS / 3
    while True:
        await asyncio.sleep(wait)
        try:
            held = await ctx.store.acquire_lease(tenant_id, owner, LEASE_SECONDS)
        except Exception:  # storage hiccup: try again well before the lease lapses
            log.warning("could not renew the tenant lease; retrying", exc_info=True)
            wait = LEASE_SECONDS / 10
            continue
        if not held:
            log.error("lost the tenant lease", extra={"tenantId": tenant_id})
            return
        wait = LEASE_SECONDS / 3


class LeaseLost(Exception):
    """Another refresh took the tenant over: this run must not write what it planned."""


async def _confirm_lease(ctx: SyncContext, tenant_id: str, owner: str | None) -> None:
    """Renew the lease right before writing; raise LeaseLost when someone else holds it."""
    if owner is not None and not await ctx.store.acquire_lease(tenant_id, owner, LEASE_SECONDS):
        raise LeaseLost("another refresh of this tenant took over; this run wrote nothing")


async def _run_under_lease(ctx: SyncContext, run: Run, owner: str, *, renew: bool = True) -> Run:
    store = ctx.store
    started = time.monotonic()
    run.status = RunStatus.RUNNING
    run.started_at = iso(utc_now())
    run.graph_requests = 0
    run.error = None
    await store.save_run(run)
    await _supersede_covered_runs(ctx, run, run.started_at)
    log.info("run started", extra={"tenantId": run.tenant_id, "runId": run.id, "reason": run.reason})
    renewer = asyncio.create_task(_keep_lease(ctx, run.tenant_id, owner)) if renew else None
    try:
        await _refresh(ctx, run, owner if renew else None)
    except Exception as exc:
        run.status = RunStatus.FAILED
        run.error = _error_text(ctx, run.tenant_id, exc)
        log.warning(
            "run failed: %s",
            run.error,
            extra={"tenantId": run.tenant_id, "runId": run.id},
            exc_info=not isinstance(exc, DirectoryError),
        )
    finally:
        if renewer is not None:
            renewer.cancel()
    run.finished_at = iso(utc_now())
    run.duration_seconds = round(time.monotonic() - started, 3)
    await store.save_run(run)
    if not run.dry_run:
        await store.record_last_run(run)
    log_run_summary(run)  # one SyncRunSummary record per finished run (the alert and KQL read it)
    return run


async def _refresh(ctx: SyncContext, run: Run, owner: str | None = None) -> None:
    """Read, classify, plan, guard and apply; fills in the run record."""
    store = ctx.store
    tenant = await store.get_tenant(run.tenant_id)
    if tenant is None:
        raise DirectoryError(f"tenant {run.tenant_id} is not registered; add it first")
    selection = await store.get_selection(run.tenant_id)
    if run.dry_run and run.preview_mode is not None:
        mode, group_ids = run.preview_mode, list(run.preview_group_ids or [])
    else:
        mode, group_ids = selection.mode, [g.id for g in selection.groups]
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
    if _incremental_allowed(tenant, selection, run, utc_now()):
        try:
            delta = await read_incremental(ctx, tenant, selection, load_roster, run)
        except (DeltaExpired, _NeedFullRefresh) as exc:
            log.info(
                "full refresh instead of incremental: %s", exc, extra={"tenantId": tenant.id, "runId": run.id}
            )
        else:
            full, run.incremental = False, True
            links = (delta.users_link, delta.groups_link)
            if delta.classification is None:  # nothing changed: the roster stands as it is
                active = tenant.active_users or 0
                run.counts = RunCounts(eligible=active, unchanged=active)
                removed = await ctx.roster.read_roster(run.tenant_id, status=RosterStatus.REMOVED)
                await _purge_past_grace(ctx, run.tenant_id, removed, utc_now())
                run.status = RunStatus.SUCCEEDED
                await _advance_delta(ctx, tenant, selection, links, full=False, active_users=active)
                return
            classification = delta.classification
    if classification is None:
        if not run.dry_run:
            # Taken before the read, so changes made while it runs are seen by the next delta.
            reader = DirectoryReader(ctx.graph.for_tenant(tenant.id))
            try:
                links = await reader.latest_delta_links()
            finally:
                run.graph_requests += reader.requests_sent
        classification = await read_and_classify(
            ctx, tenant, mode, group_ids, run, known_people=_known_people(await load_roster(), utc_now())
        )
    roster = await load_roster()

    plan = plan_roster_changes(roster.values(), classification.eligible)
    active_before = sum(1 for row in roster.values() if row.status is RosterStatus.ACTIVE)
    # An approval covers exactly the users the held run showed, not merely as many of them.
    approved = run.approved_digest is not None and removal_digest(plan) == run.approved_digest
    decision = tenant_guard(ctx.settings, tenant).check(plan, active_before, allow_removals=approved)
    if not decision.held:
        # A selected group that suddenly reads as empty holds the run even below the percentages.
        decision = (
            emptied_group_guard(roster.values(), classification.groups, plan, approved=approved) or decision
        )
    run.groups = classification.groups
    run.mailbox_purpose_source = str(classification.purpose_source)
    run.counts = _counts(classification, plan)
    if decision.held:
        run.guard = decision.detail  # on a preview too: saving it will need an approval
    if run.dry_run or decision.held:
        run.plan = _plan_sample(plan)
        run.removal_digest = removal_digest(plan)
        run.status = RunStatus.HELD if decision.held and not run.dry_run else RunStatus.SUCCEEDED
        return
    now = utc_now()
    await _confirm_lease(ctx, run.tenant_id, owner)
    rows = _stamp_purpose_checks(roster, changed_rows(roster, plan, now=iso(now)), classification, iso(now))
    await ctx.roster.write(run.tenant_id, rows, run_id=run.id)
    restored = {user.id for user in plan.restores}
    await _purge_past_grace(
        ctx, run.tenant_id, (row for row in roster.values() if row.id not in restored), now
    )
    run.status = RunStatus.SUCCEEDED
    if links is not None:
        await _advance_delta(
            ctx, tenant, selection, links, full=full, active_users=len(classification.eligible)
        )


async def _purge_past_grace(
    ctx: SyncContext, tenant_id: str, rows: Iterable[RosterUser], now: datetime
) -> None:
    """Delete rows removed longer ago than REMOVAL_GRACE_DAYS: no longer restorable."""
    due = purge_due(rows, now=now, grace_days=ctx.settings.removal_grace_days)
    if due:
        await ctx.roster.delete(tenant_id, due)


async def _advance_delta(
    ctx: SyncContext,
    tenant: Tenant,
    selection: Selection,
    links: tuple[str, str],
    *,
    full: bool,
    active_users: int,
) -> None:
    """Move the delta links forward: only ever after a successful run."""
    await ctx.store.save_delta_state(
        tenant.id,
        active_users=active_users,
        users_link=links[0],
        groups_link=links[1],
        selection_version=selection.version,
        rules=tenant.exclusion_rules,
        full_refresh_at=iso(utc_now()) if full else None,
    )
