"""The operator CLI as an operator runs it: `python -m sync …` in a subprocess, configured by
environment variables, against Azurite and the test's own demo tenant."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from devtools.demo_tenant import DemoGraphServer
from devtools.demo_tenant import Tenant as DemoTenant
from tests.oracle import expected_roster

REPO = Path(__file__).resolve().parents[2]


def test_the_whole_flow_from_the_command_line(cli, own_tenant: DemoTenant) -> None:
    tid = own_tenant.tenant_id
    added = cli("tenant", "add", tid, "--name", "Test Tenant")
    assert added.returncode == 0, added.stderr
    listed = json.loads(cli("tenant", "list", "--json").stdout)
    assert tid in [t["id"] for t in listed["value"]]

    groups = json.loads(cli("groups", tid, "--json").stdout)["value"]
    assert {g["id"] for g in groups} == set(own_tenant.groups)
    by_id = {g["id"]: g for g in groups}
    big = own_tenant.landmarks.big_group_id
    assert by_id[big]["memberCount"] == len(own_tenant.transitive_user_ids(big))

    chosen = [big, own_tenant.landmarks.nested_chain[0]]
    selected = cli("select", tid, *chosen)
    assert selected.returncode == 0, selected.stderr
    assert "queued" in selected.stdout

    refreshed = cli("refresh", tid, "--json")
    assert refreshed.returncode == 0, refreshed.stderr
    result = json.loads(refreshed.stdout)
    expected = expected_roster(own_tenant, chosen)
    counts = result["counts"]
    assert result["status"] == "succeeded" and counts["eligible"] == len(expected)
    assert counts["eligible"] + sum(counts["excluded"].values()) == counts["members"]

    users = json.loads(cli("users", tid, "--json").stdout)["value"]
    assert {u["id"]: set(u["groups"]) for u in users} == expected

    guest = next(iter(own_tenant.landmarks.guest_ids))
    why = cli("explain", tid, own_tenant.users[guest].user_principal_name)
    assert why.returncode == 0 and "NOT synced" in why.stdout and "guest" in why.stdout

    runs = json.loads(cli("runs", tid, "--json").stdout)["value"]
    assert runs[0]["id"] == result["id"]  # newest first
    assert {r["status"] for r in runs[1:]} == {"superseded"}  # the queued save was covered


def test_bad_input_exits_2_with_one_line_and_changes_nothing(cli, own_tenant: DemoTenant) -> None:
    tid = own_tenant.tenant_id
    assert cli("tenant", "add", tid, "--name", "T").returncode == 0
    for args, words in [
        (("select", tid, "not-a-guid"), "not GUIDs"),
        (("select", tid), "--all"),
        (("select", tid, "00000000-0000-4000-8000-000000000001"), "do not exist"),
        (("refresh", "contoso"), "GUID"),
        (("users", tid, "--status", "gone"), "invalid choice"),
        (("approve", tid, "8000000000000-0000abcd"), "does not exist"),
    ]:
        bad = cli(*args)
        assert bad.returncode == 2, (args, bad.stdout, bad.stderr)
        assert words in bad.stderr and len(bad.stderr.strip().splitlines()) == 1, bad.stderr
    assert json.loads(cli("runs", tid, "--json").stdout)["value"] == []


def test_held_run_exits_3_and_approve_applies_it(cli, own_tenant: DemoTenant) -> None:
    tid = own_tenant.tenant_id
    cli("tenant", "add", tid, "--name", "T")
    cli("select", tid, "--all")
    assert cli("refresh", tid).returncode == 0
    cli("select", tid, own_tenant.landmarks.nested_chain[-1])
    held = cli("refresh", tid, "--json")
    assert held.returncode == 3, held.stderr
    run = json.loads(held.stdout)
    assert run["status"] == "held"
    approved = cli("approve", tid, run["id"], "--json")
    assert approved.returncode == 0, approved.stderr
    assert json.loads(approved.stdout)["counts"]["removed"] == run["counts"]["removed"]


def test_failed_run_exits_1_and_says_why(cli, own_tenant: DemoTenant, own_graph: DemoGraphServer) -> None:
    tid = own_tenant.tenant_id
    cli("tenant", "add", tid, "--name", "T")
    big = own_tenant.landmarks.big_group_id
    cli("select", tid, big)
    own_graph.add_fault(404, rf"/groups/{big}", method="*")  # deleted after it was selected
    failed = cli("refresh", tid)
    assert failed.returncode == 1, failed.stdout + failed.stderr
    assert "no longer exist" in failed.stdout and "nobody was removed" in failed.stdout


def test_missing_storage_setting_is_a_clear_usage_error(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SYNC_", "GRAPH_"))}
    env["PYTHONPATH"] = str(REPO)
    done = subprocess.run(
        [sys.executable, "-m", "sync", "tenant", "list"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 2 and "SYNC_STORAGE" in done.stderr


def test_the_admin_questions_from_the_command_line(cli, own_tenant: DemoTenant) -> None:
    tid = own_tenant.tenant_id
    added = cli(
        "tenant", "add", tid, "--name", "Test", "--guard-percent", "100", "--guard-min-users", "100000"
    )
    assert added.returncode == 0, added.stderr
    selected = cli("select", tid, "--all")
    assert (
        selected.returncode == 0
        and "run it now" not in selected.stdout
        and "the worker applies" in selected.stdout
    )
    assert cli("refresh", tid).returncode == 0
    guests = cli("excluded", tid, "--reason", "guest")
    assert guests.returncode == 0 and "userType is Guest" in guests.stdout
    as_csv = cli("excluded", tid, "--csv")
    assert as_csv.stdout.startswith("id,userPrincipalName,displayName")
    assert cli("refresh", tid, "--dry-run").returncode == 0
    big = own_tenant.landmarks.big_group_id
    assert cli("select", tid, big).returncode == 0
    removing = cli("refresh", tid)
    assert removing.returncode == 0, removing.stdout + removing.stderr
    runs = cli("runs", tid).stdout.splitlines()
    assert (
        runs[0].split()[:9]
        == ["run", "status", "reason", "requested", "added", "removed", "restored", "note"][:9]
    )
    assert any("succeeded (dry run)" in line for line in runs)

    undone = cli("undo", tid)
    assert undone.returncode == 0, undone.stderr
    assert "duration None" not in undone.stdout and "users restored" in undone.stdout
    assert "members 0" not in undone.stdout and "excluded:" not in undone.stdout
    back = next(
        u
        for u in own_tenant.users.values()
        if u.id not in own_tenant.transitive_user_ids(big)
        and u.user_type == "Member"
        and u.account_enabled
        and u.assigned_licenses
        and not u.user_principal_name.lower().startswith("svc-")
        and u.user_purpose in (None, "user")
    )
    why = cli("explain", tid, back.user_principal_name)
    assert "is NOT synced" in why.stdout and "on the platform now" in why.stdout, why.stdout
    assert "the next refresh removes them again" in why.stdout

    rules = cli("rules", tid, "--service-accounts", "include")
    assert rules.returncode == 0, rules.stderr
    assert "service accounts" in rules.stdout and "included" in rules.stdout and "{" not in rules.stdout
    ghost = cli("rules", tid, "--user", "ghost@nowhere.example")
    assert ghost.returncode == 2 and ghost.stderr.count("\n") == 1 and "ghost@nowhere.example" in ghost.stderr
