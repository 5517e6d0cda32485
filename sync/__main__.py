"""Operator CLI: `python -m sync …`, the same service layer and JSON as the HTTP API.

Exit codes: 0 done, 1 run failed (or Graph/storage failed), 2 bad usage or input,
3 run held by the removal guard.
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import os
import socket
import sys
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime
from typing import Any, NoReturn

import msgspec
from azure.core.exceptions import AzureError

from shared.settings import SettingsError
from sync.eligibility import sku_name
from sync.models import (
    DirectMembers,
    ExcludedCounts,
    ExcludedPage,
    ExcludedUser,
    ExclusionRules,
    GrantKind,
    GrantList,
    RosterUser,
    RulesView,
    Run,
    RunPage,
    RunStatus,
    SelectionSaved,
    TenantList,
    TenantView,
    UserPage,
)
from sync.service import (
    EXCLUDED_CSV_COLUMNS,
    InvalidInput,
    ServiceError,
    SyncService,
    UpstreamError,
    audit_csv,
    open_service,
    parse_selection_input,
    parse_tenant_input,
    records_csv,
)

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_HELD = 0, 1, 2, 3


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        # One readable line and exit 2, as for any other bad input.
        self.exit(EXIT_USAGE, f"error: {message} (see `python -m sync {self.prog.split()[-1]} --help`)\n")


def build_parser() -> argparse.ArgumentParser:
    """The command-line grammar of ARCHITECTURE.md."""
    parser = _Parser(prog="python -m sync", description="O365 Groups Sync operator CLI")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    tenant = sub.add_parser("tenant", help="register or list tenants")
    tenant_sub = tenant.add_subparsers(dest="tenant_command", required=True, parser_class=_Parser)
    add = tenant_sub.add_parser("add", help="register a tenant (or rename it)")
    add.add_argument("tenant_id")
    add.add_argument("--name", required=True)
    add.add_argument(
        "--guard-percent",
        type=_percent_or_default,
        help="hold runs removing more than this %% of active users (and --guard-min-users); "
        "'default' for REMOVAL_GUARD_PERCENT",
    )
    add.add_argument(
        "--guard-min-users",
        type=_count_or_default,
        help="hold runs removing more than this many users (and --guard-percent); "
        "'default' for REMOVAL_GUARD_MIN_USERS",
    )
    add.add_argument("--json", action="store_true")
    add.set_defaults(handler=cmd_tenant_add)
    lst = tenant_sub.add_parser("list", help="every tenant with its last run")
    lst.add_argument("--json", action="store_true")
    lst.set_defaults(handler=cmd_tenant_list)

    connection = sub.add_parser(
        "connection", help="whether the app can read the tenant: consent, permissions, the consent link"
    )
    connection.add_argument("tenant_id")
    connection.add_argument("--json", action="store_true")
    connection.set_defaults(handler=cmd_connection)

    groups = sub.add_parser("groups", help="the tenant's groups, with kinds and member counts")
    groups.add_argument("tenant_id")
    groups.add_argument("--search")
    groups.add_argument("--json", action="store_true")
    groups.set_defaults(handler=cmd_groups)

    select = sub.add_parser("select", help="save the group selection (and queue a refresh)")
    select.add_argument("tenant_id")
    select.add_argument("group_ids", nargs="*")
    select.add_argument("--all", action="store_true", help="sync every eligible user (no group)")
    select.add_argument("--json", action="store_true")
    select.set_defaults(handler=cmd_select)

    refresh = sub.add_parser("refresh", help="run one refresh now, in this process")
    refresh.add_argument("tenant_id")
    refresh.add_argument("--dry-run", action="store_true")
    refresh.add_argument("--json", action="store_true")
    refresh.set_defaults(handler=cmd_refresh)

    runs = sub.add_parser("runs", help="recent runs, newest first")
    runs.add_argument("tenant_id")
    runs.add_argument("--json", action="store_true")
    runs.set_defaults(handler=cmd_list_runs)

    users = sub.add_parser("users", help="the roster")
    users.add_argument("tenant_id")
    users.add_argument("--status", choices=["active", "removed", "all"], default="active")
    users.add_argument("--group")
    users.add_argument("--search")
    users.add_argument("--json", action="store_true")
    users.set_defaults(handler=cmd_users)

    explain = sub.add_parser("explain", help="why a user is or is not synced")
    explain.add_argument("tenant_id")
    explain.add_argument(
        "user",
        help="object id, user principal name, or words of a display name, mail or UPN (e.g. 'Ben Lopez')",
    )
    explain.add_argument("--json", action="store_true")
    explain.set_defaults(handler=cmd_explain)

    excluded = sub.add_parser("excluded", help="who the last full run kept off the platform, and why")
    excluded.add_argument("tenant_id")
    excluded.add_argument(
        "--reason", help="only this first reason (guest, disabled, unlicensed, sharedMailbox, ...)"
    )
    excluded.add_argument("--search", help="words of a name, UPN or mail")
    excluded.add_argument("--csv", action="store_true", help="CSV on standard output")
    excluded.add_argument("--json", action="store_true")
    excluded.set_defaults(handler=cmd_excluded)

    approve = sub.add_parser("approve", help="apply a run held by the removal guard")
    approve.add_argument("tenant_id")
    approve.add_argument("run_id")
    approve.add_argument("--json", action="store_true")
    approve.set_defaults(handler=cmd_approve)

    undo = sub.add_parser(
        "undo",
        help="put back the users a run removed (default: the last run that removed users)",
        description="Restores, in one step, every user the run removed who is still removed and "
        "within the grace period. Fix the cause first (the selection, a Graph fault): the next "
        "refresh removes them again otherwise.",
    )
    undo.add_argument("tenant_id")
    undo.add_argument("run_id", nargs="?")
    undo.add_argument("--json", action="store_true")
    undo.set_defaults(handler=cmd_undo)

    changes = sub.add_parser("changes", help="the roster change feed, in order (--follow to keep reading)")
    changes.add_argument("tenant_id")
    changes.add_argument("--after", help="the cursor to go on from (printed last, or by --json)")
    changes.add_argument("--follow", action="store_true", help="keep reading new changes until interrupted")
    changes.add_argument("--every", type=float, default=5.0, help="seconds between reads with --follow")
    changes.add_argument("--json", action="store_true", help="one JSON object a line (with its cursor)")
    changes.set_defaults(handler=cmd_changes)

    audit = sub.add_parser("audit", help="the audit trail: roster changes and who changed settings")
    audit.add_argument("tenant_id")
    audit.add_argument("--user", help="object id or UPN")
    audit.add_argument("--run", help="a run id")
    audit.add_argument("--csv", action="store_true", help="CSV on standard output")
    audit.add_argument("--json", action="store_true")
    audit.set_defaults(handler=cmd_audit)

    rules = sub.add_parser("rules", help="show or set the tenant's exclusion rules")
    rules.add_argument("tenant_id")
    rules.add_argument("--pattern", action="append", default=None, help="UPN pattern, e.g. 'svc-*'")
    rules.add_argument("--user", action="append", default=None, help="object id or UPN to exclude")
    rules.add_argument("--group", help="exclusion group id")
    rules.add_argument(
        "--sku", action="append", default=None, help="a required licence: SKU id or part number (e.g. SPE_E3)"
    )
    rules.add_argument(
        "--external-members", choices=["include", "exclude"], help="members from other organisations (#EXT#)"
    )
    rules.add_argument(
        "--service-accounts",
        choices=["exclude", "include"],
        help="the built-in service-account patterns (default exclude)",
    )
    rules.add_argument(
        "--shared-mailboxes",
        choices=["exclude", "include"],
        help="shared, room and equipment mailboxes (default exclude)",
    )
    rules.add_argument("--clear", action="store_true", help="remove every rule")
    rules.add_argument("--json", action="store_true")
    rules.set_defaults(handler=cmd_rules)

    grants = sub.add_parser("grants", help="partners' access to customer tenants")
    grants_sub = grants.add_subparsers(dest="grants_command", required=True, parser_class=_Parser)
    glist = grants_sub.add_parser("list", help="every grant")
    glist.add_argument("--json", action="store_true")
    glist.set_defaults(handler=cmd_grants_list)
    gadd = grants_sub.add_parser(
        "add",
        help="let a partner's user or group act on tenants (added to what it has)",
        description="The principal is a user (object id) or a group (its id, as the token's groups "
        "claim carries it) of the partner's own tenant.",
    )
    gadd.add_argument("principal_tenant_id", help="the partner's own tenant id")
    who = gadd.add_mutually_exclusive_group(required=True)
    who.add_argument("--user", help="the partner user's object id")
    who.add_argument("--group", help="a group id of the partner's tenant")
    gadd.add_argument("tenant_ids", nargs="+", metavar="TENANT_ID", help="customer tenants to grant")
    gadd.add_argument("--name", help="a label, e.g. the user's UPN or the group's name")
    gadd.add_argument("--json", action="store_true")
    gadd.set_defaults(handler=cmd_grants_add)
    grevoke = grants_sub.add_parser("revoke", help="take tenants (default: all) away from a principal")
    grevoke.add_argument("principal_tenant_id")
    grevoke.add_argument("principal_id", help="the user's object id or the group's id")
    grevoke.add_argument("tenant_ids", nargs="*", metavar="TENANT_ID")
    grevoke.set_defaults(handler=cmd_grants_revoke)
    return parser


_DEFAULT = "default"


def _percent_or_default(text: str) -> float | str:
    if text.lower() == _DEFAULT:
        return _DEFAULT
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number (or 'default')") from None


def _count_or_default(text: str) -> int | str:
    if text.lower() == _DEFAULT:
        return _DEFAULT
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number (or 'default')") from None


def _guard_arg(value: object) -> object:
    """argparse value -> body value: 'default' clears (null), a number sets."""
    return None if value == _DEFAULT else value


def _print_json(value: Any) -> None:
    sys.stdout.write(msgspec.json.format(msgspec.json.encode(value), indent=2).decode() + "\n")


def _table(rows: Sequence[Sequence[object]], headers: Sequence[str]) -> None:
    cells = [[str(h) for h in headers], *[["" if c is None else str(c) for c in row] for row in rows]]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    for index, row in enumerate(cells):
        print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
        if index == 0:
            print("  ".join("-" * w for w in widths))


def _print_run(run: Run) -> None:
    c = run.counts
    print(f"run {run.id}: {run.status}{' (dry run)' if run.dry_run else ''}")
    if run.undo_of:
        print(f"  undid the removals of run {run.undo_of}: {c.restored} users restored")
    else:
        print(
            f"  members {c.members}  eligible {c.eligible}  added {c.added}  updated {c.updated}  "
            f"removed {c.removed}  restored {c.restored}  unchanged {c.unchanged}"
        )
        excluded = msgspec.to_builtins(c.excluded)
        print("  excluded: " + ("  ".join(f"{k} {v}" for k, v in excluded.items() if v) or "nobody"))
    if run.groups:
        _table(
            [
                (
                    g.display_name,
                    g.id,
                    _direct_text(g.direct),
                    g.members,
                    g.eligible,
                    _excluded_text(g.excluded),
                )
                for g in run.groups
            ],
            ["group", "id", "direct members", "users (nested)", "eligible", "excluded"],
        )
    if run.mailbox_purpose_source:
        print(f"  shared mailboxes recognised by: {run.mailbox_purpose_source}")
    if run.approved_by and run.approved_run:
        print(
            f"  removals approved by {run.approved_by} at {_when(run.approved_at)} "
            f"(as shown in run {run.approved_run})"
        )
    if run.guard and run.status is RunStatus.HELD:
        print(f"  held: {run.guard}")
        print(f"  approve with: python -m sync approve {run.tenant_id} {run.id}")
    elif run.guard:  # a dry run whose real run would wait for an approval
        print(f"  a real run would be held: {run.guard}")
    if run.error:
        print(f"  error: {run.error}")
    if run.note:
        print(f"  note: {run.note}")
    duration = f"  duration {run.duration_seconds:.1f}s" if run.duration_seconds is not None else ""
    print(f"  Graph requests {run.graph_requests}{duration}")


def _direct_text(direct: DirectMembers | None) -> str:
    """Direct members as the admin center counts them: "8 (5 users, 3 groups)"."""
    if direct is None:
        return "-"
    parts = [f"{n} {name}" for name, n in msgspec.to_builtins(direct).items() if n]
    return f"{direct.total} ({', '.join(parts)})" if parts else "0"


def _excluded_text(excluded: ExcludedCounts | None) -> str:
    counted = {k: v for k, v in msgspec.to_builtins(excluded).items() if v} if excluded else {}
    return ", ".join(f"{k} {v}" for k, v in counted.items()) or "-"


def _run_exit(run: Run) -> int:
    if run.status is RunStatus.FAILED:
        return EXIT_FAILED
    if run.status is RunStatus.HELD:
        return EXIT_HELD
    return EXIT_OK


def _who() -> str:
    # The operator's shell: recorded as who made the change (updatedBy, requestedBy, grantedBy).
    return f"cli:{getpass.getuser()}@{socket.gethostname()}"


async def cmd_tenant_add(args: argparse.Namespace, svc: SyncService) -> int:
    """`tenant add`: register or rename a tenant, optionally with its own removal guard."""
    change = parse_tenant_input(
        {
            "displayName": args.name,
            **({} if args.guard_percent is None else {"guardPercent": _guard_arg(args.guard_percent)}),
            **({} if args.guard_min_users is None else {"guardMinUsers": _guard_arg(args.guard_min_users)}),
        }
    )
    known = await svc.find_tenant(args.tenant_id)
    # If-Match: the version read just now, so a change someone made meanwhile is not overwritten.
    tenant = await svc.put_tenant(
        args.tenant_id, change, expected_version=known.version if known else 0, requested_by=_who()
    )
    if args.json:
        _print_json(tenant)
        return EXIT_OK
    print(f"tenant {tenant.id} registered as {tenant.display_name!r} (version {tenant.version})")
    if tenant.guard_percent is not None or tenant.guard_min_users is not None:
        percent = "default" if tenant.guard_percent is None else f"{tenant.guard_percent:g}"
        users = "default" if tenant.guard_min_users is None else str(tenant.guard_min_users)
        print(f"  removal guard: holds runs removing more than {percent}% and {users} users")
    if tenant.preview is not None:
        print(f"  with these thresholds: {_preview_words(tenant.preview)}")
    return EXIT_OK


def _preview_words(preview: Run) -> str:
    """What a preview found, in one line."""
    if preview.status is RunStatus.FAILED:
        return f"the preview failed: {preview.error}"
    removed = preview.counts.removed
    held = " and would be held for an approval" if preview.guard else ""
    return f"the next run would add {preview.counts.added} and remove {removed} users{held}"


async def cmd_tenant_list(args: argparse.Namespace, svc: SyncService) -> int:
    """`tenant list`: every tenant with its last run."""
    tenants = await svc.list_tenants()
    if args.json:
        _print_json(TenantList(value=[TenantView.of(t) for t in tenants]))
        return EXIT_OK
    _table(
        [(t.id, t.display_name, t.last_run_status or "-", _when(t.last_run_at)) for t in tenants],
        ["tenant", "name", "last run", "at"],
    )
    return EXIT_OK


async def cmd_connection(args: argparse.Namespace, svc: SyncService) -> int:
    """`connection`: consent and permissions; exit 1 when the app cannot read the tenant."""
    result = await svc.connection(args.tenant_id)
    if args.json:
        _print_json(result)
    else:
        print(f"tenant {result.tenant_id}: {result.state}")
        if result.detail:
            print(f"  {result.detail}")
        if result.checks:
            rows = [
                (check.permission, check.reads, "required" if check.required else "optional", check.ok)
                for check in result.checks
            ]
            _table(
                [(name, reads, need, "ok" if ok else "missing") for name, reads, need, ok in rows],
                ["permission", "reads", "needed", "status"],
            )
        if result.admin_consent_url and not result.ok:
            print(f"  admin consent: {result.admin_consent_url}")
        if result.note:
            print(f"  note: {result.note}")
    return EXIT_OK if result.ok else EXIT_FAILED


async def cmd_groups(args: argparse.Namespace, svc: SyncService) -> int:
    """`groups`: the tenant's groups, every page."""
    found = []
    cursor = None
    while True:
        page = await svc.list_groups(args.tenant_id, search=args.search, cursor=cursor)
        found.extend(page.value)
        cursor = page.next_cursor
        if not cursor:
            break
    if args.json:
        _print_json({"value": found})
        return EXIT_OK
    _table([(g.id, g.display_name, g.kind, g.member_count) for g in found], ["id", "name", "kind", "users"])
    return EXIT_OK


async def cmd_select(args: argparse.Namespace, svc: SyncService) -> int:
    """`select`: save the selection (the worker then applies it)."""
    if args.all and args.group_ids:
        raise InvalidInput("give group ids or --all, not both")
    if not args.all and not args.group_ids:
        raise InvalidInput("give at least one group id, or --all to sync every eligible user")
    body = {"mode": "all"} if args.all else {"mode": "groups", "groupIds": list(args.group_ids)}
    saved, run = await svc.save_selection(
        args.tenant_id, parse_selection_input(body), expected_version=None, requested_by=_who()
    )
    if args.json:
        _print_json(SelectionSaved(**msgspec.structs.asdict(saved), run=run))
        return EXIT_OK
    names = ", ".join(g.display_name for g in saved.groups) or "all eligible users"
    print(f"selection v{saved.version} saved: {names}")
    print(
        f"refresh {run.id} queued: the worker applies the selection "
        f"(see it with: python -m sync runs {args.tenant_id})"
    )
    return EXIT_OK


async def cmd_refresh(args: argparse.Namespace, svc: SyncService) -> int:
    """`refresh`: one run now, in this process."""
    return _show_run(args, await svc.refresh_now(args.tenant_id, dry_run=args.dry_run, requested_by=_who()))


async def cmd_list_runs(args: argparse.Namespace, svc: SyncService) -> int:
    """`runs`: the latest runs, newest first."""
    found, _ = await svc.list_runs(args.tenant_id, limit=20)
    if args.json:
        _print_json(RunPage(value=found))
        return EXIT_OK
    _table(
        [
            (
                r.id,
                f"{r.status}{' (dry run)' if r.dry_run else ''}",
                r.reason,
                _when(r.requested_at),
                r.counts.added,
                r.counts.removed,
                r.counts.restored,
                _run_remark(r),
            )
            for r in found
        ],
        ["run", "status", "reason", "requested", "added", "removed", "restored", "note"],
    )
    return EXIT_OK


def _run_remark(run: Run) -> str:
    if run.error:
        return run.error
    if run.approved_by and run.status is RunStatus.SUPERSEDED:
        return f"approved by {run.approved_by} at {_when(run.approved_at)}"
    if run.undo_of:
        return f"undo of {run.undo_of}"
    return "removals undone" if run.undone_by else ""


async def cmd_users(args: argparse.Namespace, svc: SyncService) -> int:
    """`users`: the roster, every page."""
    after: str | None = None
    everyone: list[RosterUser] = []
    while True:
        rows, after = await svc.list_users(
            args.tenant_id, status=args.status, group=args.group, search=args.search, cursor=after, limit=500
        )
        everyone.extend(rows)
        if not after:
            break
    if args.json:
        _print_json(UserPage(value=everyone))
        return EXIT_OK
    _table(
        [(u.id, u.user_principal_name, u.department, u.status, len(u.groups)) for u in everyone],
        ["id", "userPrincipalName", "department", "status", "groups"],
    )
    print(f"{len(everyone)} users")
    return EXIT_OK


async def cmd_explain(args: argparse.Namespace, svc: SyncService) -> int:
    """`explain`: why a user is or is not synced."""
    result = await svc.explain_text(args.tenant_id, args.user)
    if args.json:
        _print_json(result)
        return EXIT_OK
    user = result.user
    name = (
        f"{user.display_name} ({user.user_principal_name})" if user.display_name else user.user_principal_name
    )
    verdict = "is synced" if result.included else "is NOT synced (the rules keep them off the platform)"
    place = {
        "active": "on the platform",
        "removed": "removed from the platform",
        "absent": "not on the platform",
    }
    print(f"{name} {verdict}; {place.get(result.roster_status, result.roster_status)} now")
    for reason in result.reasons:
        print(f"  - {reason.code}: {reason.message}")
        if reason.rule:
            print(f"    rule: {reason.rule}")
    for group in result.groups:
        print(f"  via group {group.display_name} ({group.id})")
    if result.note:
        print(f"  note: {result.note}")
    return EXIT_OK


async def cmd_excluded(args: argparse.Namespace, svc: SyncService) -> int:
    """`excluded`: who the last full run kept off the platform, why, and the rule that matched."""
    users: list[ExcludedUser] = []
    cursor: str | None = None
    while True:
        page = await svc.excluded_users(
            args.tenant_id, reason=args.reason, search=args.search, cursor=cursor, limit=500
        )
        users.extend(page.value)
        cursor = page.next_cursor
        if not cursor:
            break
    if args.csv:
        sys.stdout.write(records_csv(users, EXCLUDED_CSV_COLUMNS))
    elif args.json:
        _print_json(ExcludedPage(value=users, as_of=page.as_of))
    else:
        _table(
            [(u.user_principal_name, u.display_name or "", u.reason, "; ".join(u.rules)) for u in users],
            ["user", "name", "reason", "rule"],
        )
        print(f"{len(users)} users excluded (as of the full refresh of {_when(page.as_of)})")
    return EXIT_OK


async def cmd_approve(args: argparse.Namespace, svc: SyncService) -> int:
    """`approve`: apply a held run's removals, in this process."""
    return _show_run(
        args, await svc.approve(args.tenant_id, args.run_id, requested_by=_who(), in_process=True)
    )


async def cmd_undo(args: argparse.Namespace, svc: SyncService) -> int:
    """`undo`: put back the users a run removed."""
    return _show_run(args, await svc.undo_removals(args.tenant_id, args.run_id, requested_by=_who()))


async def cmd_rules(args: argparse.Namespace, svc: SyncService) -> int:
    """`rules`: show or change the tenant's exclusion rules (If-Match: the version read first)."""
    current, version = await svc.rules_view(args.tenant_id)
    changing = args.clear or any(
        value is not None
        for value in (
            args.pattern,
            args.user,
            args.group,
            args.sku,
            args.external_members,
            args.service_accounts,
            args.shared_mailboxes,
        )
    )
    if not changing:
        if args.json:
            _print_json(current)
        else:
            _print_rules(current, version)
        return EXIT_OK
    body: dict[str, object] = (
        {}
        if args.clear
        else {
            "upnPatterns": args.pattern if args.pattern is not None else list(current.upn_patterns),
            "excludedUsers": args.user if args.user is not None else list(current.excluded_users),
            "exclusionGroupId": args.group if args.group is not None else current.exclusion_group_id,
            "requiredSkus": args.sku if args.sku is not None else list(current.required_skus),
            "includeExternalMembers": (
                args.external_members == "include"
                if args.external_members is not None
                else current.include_external_members
            ),
            "excludeServiceAccounts": (
                args.service_accounts == "exclude"
                if args.service_accounts is not None
                else current.exclude_service_accounts
            ),
            "excludeSharedMailboxes": (
                args.shared_mailboxes == "exclude"
                if args.shared_mailboxes is not None
                else current.exclude_shared_mailboxes
            ),
        }
    )
    saved = await svc.set_rules(args.tenant_id, body, expected_version=version, requested_by=_who())
    if args.json:
        _print_json(saved)
        return EXIT_OK
    _print_rules(saved, saved.version)
    print(f"  preview: {_preview_words(saved.preview)}")
    print(f"  refresh {saved.run.id} queued to apply them")
    return EXIT_OK


async def cmd_changes(args: argparse.Namespace, svc: SyncService) -> int:
    """`changes`: the feed from a cursor; with --follow, read on as changes come."""
    cursor: str | None = args.after
    while True:
        feed = await svc.changes(args.tenant_id, after=cursor, limit=500)
        for change in feed.value:
            if args.json:
                sys.stdout.write(msgspec.json.encode(change).decode() + "\n")
            else:
                who = change.user_principal_name or change.user_id or ""
                print(f"{_when(change.at)}  {change.kind:<9} {who}  {change.reason or ''}".rstrip())
        sys.stdout.flush()
        cursor = feed.next
        if feed.value and len(feed.value) == 500:
            continue  # more is waiting: read on at once
        if not args.follow:
            if not args.json:
                print(f"cursor: {cursor or '-'}")
            return EXIT_OK
        await asyncio.sleep(max(0.5, args.every))


async def cmd_audit(args: argparse.Namespace, svc: SyncService) -> int:
    """`audit`: every page of the trail, oldest first."""
    records = []
    cursor: str | None = None
    while True:
        page = await svc.audit_trail(args.tenant_id, user=args.user, run=args.run, cursor=cursor, limit=500)
        records.extend(page.value)
        cursor = page.next_cursor
        if not cursor:
            break
    if args.csv:
        sys.stdout.write(audit_csv(records))
    elif args.json:
        _print_json({"value": records})
    else:
        _table(
            [
                (
                    _when(r.at),
                    r.kind,
                    r.user_principal_name or r.user_id or "",
                    r.run_id or "",
                    r.reason or "",
                    r.by or "",
                )
                for r in records
            ],
            ["at", "what", "user", "run", "why", "by"],
        )
        print(f"{len(records)} records")
    return EXIT_OK


def _print_rules(rules: ExclusionRules, version: int) -> None:
    print(f"exclusion rules (version {version}):")
    matches = rules.optional_matches if isinstance(rules, RulesView) else None

    def optional(on: bool, key: str) -> str:
        caught = (matches or {}).get(key)
        seen = f" ({caught} users in the latest full run)" if caught is not None else ""
        return ("excluded" if on else "included") + seen

    _table(
        [
            ("UPN patterns", ", ".join(rules.upn_patterns) or "-"),
            ("excluded users", ", ".join(rules.excluded_users) or "-"),
            ("exclusion group", rules.exclusion_group_id or "-"),
            ("required licences", ", ".join(sku_name(s) for s in rules.required_skus) or "any"),
            ("external members", "included" if rules.include_external_members else "excluded"),
            ("service accounts", optional(rules.exclude_service_accounts, "serviceAccount")),
            ("shared mailboxes", optional(rules.exclude_shared_mailboxes, "sharedMailbox")),
        ],
        ["rule", "value"],
    )


async def cmd_grants_list(args: argparse.Namespace, svc: SyncService) -> int:
    """`grants list`: every partner grant."""
    found = await svc.list_grants()
    if args.json:
        _print_json(GrantList(value=found))
        return EXIT_OK
    _table(
        [
            (
                g.principal_tenant_id,
                g.principal_id,
                g.kind,
                g.name or "",
                " ".join(g.tenants),
                g.granted_by or "",
            )
            for g in found
        ],
        ["principal tenant", "principal", "kind", "name", "tenants", "granted by"],
    )
    return EXIT_OK


async def cmd_grants_add(args: argparse.Namespace, svc: SyncService) -> int:
    """`grants add`: add tenants to a partner user's or group's grant."""
    kind = GrantKind.USER if args.user else GrantKind.GROUP
    grant = await svc.add_grant(
        args.principal_tenant_id,
        args.user or args.group,
        kind,
        list(args.tenant_ids),
        name=args.name,
        by=_who(),
    )
    if args.json:
        _print_json(grant)
        return EXIT_OK
    print(f"{grant.kind} {grant.principal_id} of tenant {grant.principal_tenant_id} may act on:")
    for tenant in grant.tenants:
        print(f"  {tenant}")
    return EXIT_OK


async def cmd_grants_revoke(args: argparse.Namespace, svc: SyncService) -> int:
    """`grants revoke`: take some or all tenants away from a principal."""
    left = await svc.revoke_grant(
        args.principal_tenant_id, args.principal_id, list(args.tenant_ids) or None, by=_who()
    )
    if left is None:
        print(f"grant of {args.principal_id} revoked")
    else:
        print(f"{left.principal_id} may still act on: {' '.join(left.tenants)}")
    return EXIT_OK


def _show_run(args: argparse.Namespace, run: Run) -> int:
    _print_json(run) if args.json else _print_run(run)
    return _run_exit(run)


def _when(moment: datetime | None) -> str:
    return moment.strftime("%Y-%m-%d %H:%M:%S") if moment else "-"


async def _main(args: argparse.Namespace) -> int:
    async with open_service() as svc:
        try:
            handler: Callable[[argparse.Namespace, SyncService], Awaitable[int]] = args.handler
            return await handler(args, svc)
        finally:
            await svc.ctx.graph.aclose()


def main(argv: Sequence[str] | None = None) -> int:
    """Parse, run, map errors to one line on stderr and an exit code."""
    args = build_parser().parse_args(argv)
    try:
        return asyncio.run(_main(args))
    except SettingsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except UpstreamError as exc:
        print(f"error: {exc.detail}", file=sys.stderr)
        return EXIT_FAILED
    except ServiceError as exc:
        print(f"error: {exc.detail}", file=sys.stderr)
        return EXIT_USAGE
    except BrokenPipeError:
        # Output piped into `head` and closed early: not an error of the command.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK
    except (AzureError, OSError) as exc:
        print(f"error: storage could not be reached: {str(exc).splitlines()[0]}", file=sys.stderr)
        return EXIT_FAILED


if __name__ == "__main__":
    raise SystemExit(main())
