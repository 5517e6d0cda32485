"""The deployment scripts: they parse, the smoke test asks for what exists, the Bicep gate works.

shellcheck runs over the same scripts in `make iac`.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import pytest

from tests.unit.test_infra_settings import FUNCTIONS, ROOT, http_routes, route_regex

SCRIPTS = sorted([*(ROOT / "infra" / "scripts").glob("*.sh"), *(ROOT / "scripts").glob("*.sh")])
SMOKE = ROOT / "scripts" / "smoke.sh"
MAIN_BICEP = (ROOT / "infra" / "main.bicep").read_text(encoding="utf-8")
README = (ROOT / "README.md").read_text(encoding="utf-8")


def readme_section(title: str) -> str:
    match = re.search(rf"^#+ {re.escape(title)}\n(.*?)(?=^#+ )", README, re.MULTILINE | re.DOTALL)
    assert match, title
    return match.group(1)


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_script_parses_and_is_executable(script: Path) -> None:
    subprocess.run(["bash", "-n", str(script)], check=True)
    assert os.access(script, os.X_OK)
    assert script.read_text(encoding="utf-8").startswith("#!/usr/bin/env bash\n")


def test_smoke_calls_only_routes_that_exist() -> None:
    text = SMOKE.read_text(encoding="utf-8")
    called = {re.sub(r"\$\{?\w+\}?", "{x}", path) for path in re.findall(r"\$API(/api/[^\s\"')]*)", text)}
    assert {"/api/health", "/api/tenants"} <= called
    for path in called:
        concrete = path.replace("{x}", "x")
        assert any(route_regex(pattern).match(concrete) for pattern, _ in http_routes()), path


def test_smoke_needs_the_functions_that_exist_and_the_outputs_azd_writes() -> None:
    text = SMOKE.read_text(encoding="utf-8")
    (listed,) = re.findall(r"for name in ([\w ]+); do", text)
    names = {function.get_function_name() for function in FUNCTIONS}
    assert "nightly_sync" in listed.split()
    assert set(listed.split()) <= names
    outputs = set(re.findall(r"^output (\w+) ", MAIN_BICEP, re.MULTILINE))
    assert set(re.findall(r"env_value (\w+)", text)) <= outputs


def test_smoke_checks_what_the_deploy_section_promises() -> None:
    deploy = readme_section("Deploy to Azure")
    assert "scripts/smoke.sh" in deploy
    for promise in ("/api/health", "401", "nightly_sync", "queue"):
        assert promise in deploy, promise
        assert promise in SMOKE.read_text(encoding="utf-8"), promise


def _bicep_gate(tmp_path: Path, version: str) -> subprocess.CompletedProcess[str]:
    fake = tmp_path / "bicep"
    fake.write_text(
        f"#!/usr/bin/env bash\necho 'Bicep CLI version {version} (0123456789)'\n", encoding="utf-8"
    )
    fake.chmod(0o755)
    env = {**os.environ, "AZD_BICEP_TOOL_PATH": str(fake)}
    script = ROOT / "infra" / "scripts" / "check-bicep-version.sh"
    return subprocess.run([str(script)], env=env, capture_output=True, text=True, check=False)


@pytest.mark.parametrize(("version", "passes"), [("0.29.47", False), ("0.30.3", True), ("0.38.33", True)])
def test_the_preprovision_hook_refuses_an_old_bicep(tmp_path: Path, version: str, passes: bool) -> None:
    result = _bicep_gate(tmp_path, version)
    assert (result.returncode == 0) is passes, result.stderr


def test_the_minimum_bicep_is_stated_where_it_is_checked() -> None:
    script = (ROOT / "infra" / "scripts" / "check-bicep-version.sh").read_text(encoding="utf-8")
    (minimum,) = re.findall(r"^MIN_BICEP_VERSION=([\d.]+)$", script, re.MULTILINE)
    assert f"Bicep {minimum}" in readme_section("Deploy to Azure")
    assert minimum in (ROOT / "infra" / "README.md").read_text(encoding="utf-8")
    azure_yaml = (ROOT / "azure.yaml").read_text(encoding="utf-8")
    assert re.search(
        r"preprovision:\n\s+shell: sh\n\s+run: \./infra/scripts/check-bicep-version\.sh", azure_yaml
    )


def test_postprovision_prints_the_consent_links() -> None:
    env = {
        **os.environ,
        "GRAPH_APP_CLIENT_ID": "11111111-1111-1111-1111-111111111111",
        "HOME_TENANT_CONSENT_URL": "https://login.example/home/adminconsent?client_id=1",
        "ADMIN_CONSENT_URL_TEMPLATE": "https://login.example/{customerTenantId}/adminconsent?client_id=1",
    }
    script = str(ROOT / "infra" / "scripts" / "postprovision.sh")
    out = subprocess.run([script], env=env, capture_output=True, text=True, check=True).stdout
    assert env["HOME_TENANT_CONSENT_URL"] in out and env["ADMIN_CONSENT_URL_TEMPLATE"] in out
    granted = subprocess.run(
        [script], env={**env, "GRANT_HOME_TENANT_CONSENT": "true"}, capture_output=True, text=True, check=True
    ).stdout
    assert env["HOME_TENANT_CONSENT_URL"] not in granted


def test_every_azd_parameter_is_a_main_bicep_parameter() -> None:
    parameters = json.loads((ROOT / "infra" / "main.parameters.json").read_text(encoding="utf-8"))[
        "parameters"
    ]
    declared = set(re.findall(r"^param (\w+) ", MAIN_BICEP, re.MULTILINE))
    assert set(parameters) <= declared


def test_the_workbook_shows_runs_removals_held_runs_and_throttling() -> None:
    workbook = json.loads(
        (ROOT / "infra" / "workbooks" / "sync-fleet.workbook.json").read_text(encoding="utf-8")
    )
    queries = " ".join(item["content"].get("query", "") for item in workbook["items"])
    for needle in ("SyncRunSummary", "Properties.removed", '"held"', "429"):
        assert needle in queries, needle
    assert "loadTextContent('../workbooks/sync-fleet.workbook.json')" in (
        ROOT / "infra" / "app" / "workbook.bicep"
    ).read_text(encoding="utf-8")
    assert "module workbook 'app/workbook.bicep'" in MAIN_BICEP
