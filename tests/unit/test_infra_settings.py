"""The Bicep in infra/ sets every setting the code reads, and guards the routes the code expects.

Read from the code itself, not from a list kept here: the names `load_settings` reads in
shared/settings.py, the connection and `%SETTING%` names of the registered bindings, and the
names shared/telemetry.py reads. No Bicep CLI is needed: the files are read as text.
"""

from __future__ import annotations

import ast
import inspect
import json
import re
import types
from pathlib import Path

import azure.functions as func
import pytest

import function_app
from shared import storage, telemetry

ROOT = Path(__file__).resolve().parents[2]
INFRA = ROOT / "infra"
API_BICEP = INFRA / "app" / "api.bicep"
# Settings the Flex Consumption plan rejects as app settings (the runtime is set in functionAppConfig).
FLEX_FORBIDDEN = {"FUNCTIONS_WORKER_RUNTIME", "FUNCTIONS_EXTENSION_VERSION", "WEBSITE_RUN_FROM_PACKAGE"}
SETTING_REFERENCE = re.compile(r"%([A-Za-z_][A-Za-z0-9_]*)%")


def settings_read_by_load_settings() -> set[str]:
    """The quoted names load_settings reads: values.get("NAME", ...) and _number(values, "NAME", ...)."""
    tree = ast.parse((ROOT / "shared" / "settings.py").read_text(encoding="utf-8"))
    (function,) = [n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef) and n.name == "load_settings"]
    names: set[str] = set()
    for node in ast.walk(function):
        if not isinstance(node, ast.Call):
            continue
        callee = node.func
        if isinstance(callee, ast.Attribute) and callee.attr == "get" and node.args:
            argument = node.args[0]
        elif isinstance(callee, ast.Name) and callee.id == "_number" and len(node.args) > 1:
            argument = node.args[1]
        else:
            continue
        if isinstance(argument, ast.Constant) and isinstance(argument.value, str):
            names.add(argument.value)
    return names


def _block(text: str, start: int, opening: str, closing: str) -> str:
    """The text from the bracket at `start` to its matching bracket, comments dropped."""
    depth = 0
    for index in range(start, len(text)):
        if text[index] == opening:
            depth += 1
        elif text[index] == closing:
            depth -= 1
            if depth == 0:
                return re.sub(r"//[^\n]*", "", text[start : index + 1])
    raise AssertionError(f"unbalanced {opening} at {start}")


def bicep_app_settings() -> dict[str, str]:
    """Key -> Bicep expression of every `var appSettings = {...}` in infra/app/*.bicep."""
    settings: dict[str, str] = {}
    for path in sorted((INFRA / "app").glob("*.bicep")):
        text = path.read_text(encoding="utf-8")
        for match in re.finditer(r"^var appSettings = \{", text, re.MULTILINE):
            body = _block(text, match.end() - 1, "{", "}")
            depth = 0
            for line in body.splitlines():
                if depth == 1 and (pair := re.match(r"\s*([A-Za-z_][A-Za-z0-9_]*)\s*:\s*(.+?)\s*$", line)):
                    settings[pair.group(1)] = pair.group(2)
                depth += line.count("{") - line.count("}")
    assert settings, "no `var appSettings = {...}` found in infra/app/*.bicep"
    return settings


def bicep_array_param(path: Path, name: str) -> list[str]:
    text = path.read_text(encoding="utf-8")
    match = re.search(rf"^param {name} array = \[", text, re.MULTILINE)
    assert match, f"param {name} not found in {path.name}"
    return re.findall(r"'([^']*)'", _block(text, match.end() - 1, "[", "]"))


def is_set(name: str, settings: dict[str, str]) -> bool:
    """Set directly, or as an identity-based connection (NAME__serviceUri, NAME__credential...)."""
    return name in settings or any(key.startswith(f"{name}__") for key in settings)


def registered_functions() -> list[func.Function]:
    """Every function function_app.py registers, on a fresh app of its own (get_functions() may be
    called only once per app object)."""
    app = func.FunctionApp(http_auth_level=func.AuthLevel.ANONYMOUS)
    for module in vars(function_app).values():
        if isinstance(module, types.ModuleType) and isinstance(getattr(module, "bp", None), func.Blueprint):
            app.register_blueprint(module.bp)
    functions = app.get_functions()
    assert functions
    return functions


def registered_bindings() -> list[dict[str, object]]:
    """Binding metadata of every registered function."""
    bindings: list[dict[str, object]] = []
    for function in registered_functions():
        bindings.extend(json.loads(function.get_function_json())["bindings"])
    return bindings


def anonymous_paths_in_code() -> set[str]:
    """URL paths of the HTTP routes whose handler does not go through api.guarded (no sign-in)."""
    prefix = json.loads((ROOT / "host.json").read_text(encoding="utf-8"))["extensions"]["http"]["routePrefix"]
    paths: set[str] = set()
    for function in registered_functions():
        bindings = json.loads(function.get_function_json())["bindings"]
        triggers = [b for b in bindings if b["type"] == "httpTrigger"]
        handler = function.get_user_function()
        if not triggers or "guarded(" in inspect.getsource(handler):
            continue
        route = f"/{prefix}/{triggers[0]['route']}"
        if "{asset}" in route:  # the page's files: only the ones sync.web serves
            assets = inspect.getmodule(handler).ASSETS  # type: ignore[union-attr]
            paths.update(route.replace("{asset}", asset) for asset in assets)
        else:
            assert "{" not in route, f"anonymous route with a parameter: {route}; list its paths"
            paths.add(route)
    return paths


# --- every setting the code reads is set -----------------------------------------------------


def test_load_settings_names_are_found() -> None:
    names = settings_read_by_load_settings()
    assert {"SYNC_STORAGE", "SYNC_STORAGE__tableServiceUri", "GRAPH_AUTH", "REMOVAL_GUARD_MIN_USERS"} <= names


@pytest.mark.parametrize("name", sorted(settings_read_by_load_settings()))
def test_every_setting_load_settings_reads_is_in_app_settings(name: str) -> None:
    assert is_set(name, bicep_app_settings()), f"{name} is read by shared/settings.py but not set in Bicep"


def test_telemetry_connection_string_is_set() -> None:
    settings = bicep_app_settings()
    assert telemetry.CONNECTION_STRING_SETTING in settings
    # Local auth is off on Application Insights: ingestion authenticates with the identity.
    assert "Authorization=AAD" in settings["APPLICATIONINSIGHTS_AUTHENTICATION_STRING"]


def test_every_sample_setting_is_set_in_azure() -> None:
    """local.settings.sample.json lists every setting (ARCHITECTURE); Azure sets each one too."""
    sample = json.loads((ROOT / "local.settings.sample.json").read_text(encoding="utf-8"))["Values"]
    settings = bicep_app_settings()
    missing = [name for name in sample if name not in FLEX_FORBIDDEN and not is_set(name, settings)]
    assert missing == []


def test_no_setting_flex_consumption_rejects() -> None:
    assert FLEX_FORBIDDEN.isdisjoint(bicep_app_settings())


@pytest.mark.parametrize("binding", registered_bindings(), ids=lambda b: f"{b['type']}:{b['name']}")
def test_binding_settings_and_connections_are_set(binding: dict[str, object]) -> None:
    settings = bicep_app_settings()
    for value in binding.values():
        for name in SETTING_REFERENCE.findall(str(value)):
            assert name in settings, f"%{name}% of a {binding['type']} binding is not set in Bicep"
    connection = binding.get("connection")
    if connection:
        assert is_set(str(connection), settings), f"connection {connection} is not set in Bicep"


def test_host_json_setting_references_are_set() -> None:
    settings = bicep_app_settings()
    for name in SETTING_REFERENCE.findall((ROOT / "host.json").read_text(encoding="utf-8")):
        assert name in settings, name


def test_queue_and_schedule_bindings_use_the_settings() -> None:
    referenced = {name for b in registered_bindings() for name in SETTING_REFERENCE.findall(json.dumps(b))}
    assert {"SYNC_QUEUE", "SYNC_SCHEDULE"} <= referenced


# --- identity-based storage, no secrets -------------------------------------------------------


def test_storage_connections_are_identity_based() -> None:
    settings = bicep_app_settings()
    for connection in ("AzureWebJobsStorage", "SYNC_STORAGE"):
        assert settings[f"{connection}__credential"] == "'managedidentity'"
        assert settings[f"{connection}__clientId"] == "identityClientId"
        assert connection not in settings, f"{connection} must not be a connection string"
    assert "AzureWebJobsStorage__blobServiceUri" in settings
    assert settings["GRAPH_AUTH"] == "'federated'"
    storage_bicep = (INFRA / "app" / "storage.bicep").read_text(encoding="utf-8")
    assert re.search(r"allowSharedKeyAccess:\s*false", storage_bicep)
    assert "listKeys" not in "".join(p.read_text(encoding="utf-8") for p in INFRA.rglob("*.bicep"))


def test_the_tables_and_queues_the_code_uses_are_provisioned() -> None:
    main = (INFRA / "main.bicep").read_text(encoding="utf-8")
    match = re.search(r"^var syncTables = \[", main, re.MULTILINE)
    assert match
    assert re.findall(r"'([^']*)'", _block(main, match.end() - 1, "[", "]")) == list(storage.ALL_TABLES)
    assert "'${syncQueue}-poison'" in main


# --- App Service Authentication in front of the routes ----------------------------------------


def test_authentication_is_required_and_answers_401() -> None:
    text = API_BICEP.read_text(encoding="utf-8")
    assert re.search(r"name: 'authsettingsV2'", text)
    assert re.search(r"requireAuthentication:\s*true", text)
    assert re.search(r"unauthenticatedClientAction:\s*unauthenticatedAction", text)
    for path in (API_BICEP, INFRA / "main.bicep"):
        assert re.search(
            r"param unauthenticatedAction string = 'Return401'", path.read_text(encoding="utf-8")
        )
    assert "clientSecretSettingName: authClientAssertionSetting" in text  # the identity, not a secret
    assert "OVERRIDE_USE_MI_FIC_ASSERTION_CLIENTID" in bicep_app_settings()


def test_exactly_the_routes_without_sign_in_in_code_are_excluded_from_authentication() -> None:
    """Excluded: the routes whose handlers skip api.guarded (health, the OpenAPI document, the
    page's static files). A data route in the list would be open to anyone."""
    expected = anonymous_paths_in_code()
    assert "/api/health" in expected
    assert set(bicep_array_param(API_BICEP, "anonymousPaths")) == expected


def test_graph_permissions_are_the_least_privileged_three_everywhere() -> None:
    role_ids = {
        "98830695-27a2-44f7-8c18-0c3ebc9698f6",  # GroupMember.Read.All
        "df021288-bdef-4463-88db-98f22de89214",  # User.Read.All
        "40f97065-369a-49f4-947c-6a255697ae91",  # MailboxSettings.Read
    }
    guid = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
    for path in (INFRA / "app" / "graph-app.bicep", INFRA / "scripts" / "grant-consent.sh"):
        text = path.read_text(encoding="utf-8")
        assert role_ids <= set(guid.findall(text)), path.name
        assert "api://AzureADTokenExchange" in text
        assert "Directory.Read.All" not in text and "Group.Read.All" not in text
