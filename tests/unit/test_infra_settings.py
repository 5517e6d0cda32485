"""The Bicep in infra/ sets what the code reads, with the right values, and guards the routes.

Two kinds of checks, no Bicep CLI (the files are read as text):
* read from the code: the names `load_settings` reads, the bindings' `%SETTING%` and connections,
  the routes that skip the sign-in check, the tables the code uses;
* values, in infra/scripts/check_infra.py (also run by `make iac`): storage endpoints per service,
  data roles per connection, Flex Consumption deprecations, one telemetry path, the CONTRACT.md
  settings, Graph permissions and sign-in.
Each check is shown to catch a broken copy: the mutation tests copy infra/ and host.json to a
temporary directory, break one thing, and assert that exactly that is reported.
"""

from __future__ import annotations

import ast
import importlib.util
import inspect
import json
import re
import shutil
import types
from pathlib import Path

import azure.functions as func
import pytest

import function_app
from devtools.host.config import BINDING_SETTINGS, sample_binding_settings
from shared import storage, telemetry

ROOT = Path(__file__).resolve().parents[2]
INFRA = ROOT / "infra"
API_BICEP = INFRA / "app" / "api.bicep"
SETTING_REFERENCE = re.compile(r"%([A-Za-z_][A-Za-z0-9_]*)%")


def _load_checker() -> types.ModuleType:
    spec = importlib.util.spec_from_file_location("check_infra", INFRA / "scripts" / "check_infra.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


check_infra = _load_checker()

# Read by the code but deliberately absent in Azure.
LOCAL_ONLY = {
    "GRAPH_BASE_URL": "an override for the demo tenant; in Azure the Graph root follows GRAPH_CLOUD",
    "GRAPH_AUTHORITY_HOST": "an override for the demo tenant; in Azure it follows GRAPH_CLOUD",
    "DEV_TRUST_PRINCIPAL_HEADER": "local development only; check_infra refuses it",
    "FUNCTIONS_WORKER_RUNTIME": "local.settings.json only; Flex Consumption sets the runtime itself",
    "WEBSITE_AUTH_ENABLED": "App Service sets it itself while App Service Authentication is on",
}
# CONTRACT.md: routes whose handlers check something else than the sign-in.
CONTRACT_ANONYMOUS = {"/api/notifications", "/api/consent/callback"}
CONTRACT_TABLES = {
    "tenants",
    "selections",
    "users",
    "runs",
    "audit",
    "grants",
    "consentStates",
    "subscriptions",
    "excluded",  # issue 15: who the last full run excluded and why
}


TYPED_READERS = {"_number", "_flag", "_guid", "_role_ids", "_base_url"}


def settings_read_by_load_settings() -> set[str]:
    """The quoted names load_settings reads: values.get("NAME", ...) and the typed readers
    (_number, _flag, _guid, ...)(values, "NAME", ...)."""
    tree = ast.parse((ROOT / "shared" / "settings.py").read_text(encoding="utf-8"))
    (function,) = [n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef) and n.name == "load_settings"]
    names: set[str] = set()
    for node in ast.walk(function):
        if not isinstance(node, ast.Call):
            continue
        callee = node.func
        if isinstance(callee, ast.Attribute) and callee.attr == "get" and node.args:
            argument = node.args[0]
        elif isinstance(callee, ast.Name) and callee.id in TYPED_READERS and len(node.args) > 1:
            argument = node.args[1]
        else:
            continue
        if isinstance(argument, ast.Constant) and isinstance(argument.value, str):
            names.add(argument.value)
    return names


def bicep_app_settings() -> dict[str, str]:
    settings: dict[str, str] = check_infra.Infra(ROOT).settings
    assert settings, "no `var appSettings = {...}` in infra/app/api.bicep"
    return settings


def bicep_list(text: str, declaration: str) -> list[str]:
    """The quoted items of `<declaration> = [ ... ]` (a var or a param)."""
    text = check_infra.strip_comments(text)
    match = re.search(rf"^{re.escape(declaration)} = \[", text, re.MULTILINE)
    assert match, declaration
    return re.findall(r"'([^']*)'", check_infra.block(text, match.end() - 1))


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


FUNCTIONS = registered_functions()
ROUTE_PREFIX = json.loads((ROOT / "host.json").read_text(encoding="utf-8"))["extensions"]["http"][
    "routePrefix"
]


def registered_bindings() -> list[dict[str, object]]:
    """Binding metadata of every registered function."""
    bindings: list[dict[str, object]] = []
    for function in FUNCTIONS:
        bindings.extend(json.loads(function.get_function_json())["bindings"])
    return bindings


def http_routes() -> list[tuple[str, bool]]:
    """(URL path pattern, needs sign-in) of every HTTP route; {param} stays in the pattern."""
    routes: list[tuple[str, bool]] = []
    for function in FUNCTIONS:
        triggers = [
            b for b in json.loads(function.get_function_json())["bindings"] if b["type"] == "httpTrigger"
        ]
        if triggers:
            guarded = "guarded(" in inspect.getsource(function.get_user_function())
            routes.append((f"/{ROUTE_PREFIX}/{triggers[0]['route']}", guarded))
    return routes


def route_regex(pattern: str) -> re.Pattern[str]:
    return re.compile("^" + re.sub(r"\\\{[^}]+\\\}", "[^/]+", re.escape(pattern)) + "$")


def anonymous_paths_in_code() -> set[str]:
    """URL paths of the HTTP routes whose handler does not go through api.guarded (no sign-in)."""
    paths: set[str] = set()
    for function in FUNCTIONS:
        bindings = json.loads(function.get_function_json())["bindings"]
        triggers = [b for b in bindings if b["type"] == "httpTrigger"]
        handler = function.get_user_function()
        if not triggers or "guarded(" in inspect.getsource(handler):
            continue
        route = f"/{ROUTE_PREFIX}/{triggers[0]['route']}"
        if "{asset}" in route:  # the page's files: only the ones sync.web serves
            assets = inspect.getmodule(handler).ASSETS  # type: ignore[union-attr]
            paths.update(route.replace("{asset}", asset) for asset in assets)
        else:
            assert "{" not in route, f"anonymous route with a parameter: {route}; list its paths"
            paths.add(route)
    return paths


def anonymous_path_problems(api_bicep: str) -> list[str]:
    """Excluded from App Service Authentication: exactly the routes that skip the sign-in check in
    code, plus CONTRACT.md's; never a route whose handler needs a signed-in caller."""
    excluded = set(bicep_list(api_bicep, "param anonymousPaths array"))
    expected = anonymous_paths_in_code() | CONTRACT_ANONYMOUS
    problems = [f"{p} must be excluded from sign-in" for p in sorted(expected - excluded)]
    problems += [f"{p} is excluded but skips no check in code" for p in sorted(excluded - expected)]
    for path in sorted(excluded):
        problems += [
            f"{path} is a data route"
            for pattern, guarded in http_routes()
            if guarded and route_regex(pattern).match(path)
        ]
    return problems


# --- every setting the code reads is set -----------------------------------------------------


def test_every_typed_reader_of_settings_is_known() -> None:
    """A new `_reader(values, name, ...)` in shared/settings.py must join TYPED_READERS, or the
    settings it reads would escape the Bicep checks below."""
    tree = ast.parse((ROOT / "shared" / "settings.py").read_text(encoding="utf-8"))
    readers = {
        node.name
        for node in ast.walk(tree)
        if isinstance(node, ast.FunctionDef) and [a.arg for a in node.args.args[:2]] == ["values", "name"]
    }
    assert readers == TYPED_READERS


def test_load_settings_names_are_found() -> None:
    names = settings_read_by_load_settings()
    assert {"SYNC_STORAGE", "SYNC_STORAGE__tableServiceUri", "GRAPH_AUTH", "REMOVAL_GUARD_MIN_USERS"} <= names


@pytest.mark.parametrize("name", sorted(settings_read_by_load_settings() - set(LOCAL_ONLY)))
def test_every_setting_load_settings_reads_is_in_app_settings(name: str) -> None:
    assert is_set(name, bicep_app_settings()), f"{name} is read by shared/settings.py but not set in Bicep"


@pytest.mark.parametrize("name", check_infra.CONTRACT_SETTINGS)
def test_every_contract_setting_is_in_app_settings(name: str) -> None:
    """The names of CONTRACT.md are required now, before shared/settings.py reads them all."""
    assert name in bicep_app_settings()


def test_local_only_settings_are_absent_in_azure() -> None:
    assert set(LOCAL_ONLY).isdisjoint(bicep_app_settings())


def test_the_checker_logger_is_the_app_logger() -> None:
    assert check_infra.APP_LOGGER_NAME == telemetry.APP_LOGGER_NAME
    assert telemetry.CONNECTION_STRING_SETTING in bicep_app_settings()


def test_every_sample_setting_is_set_in_azure() -> None:
    """local.settings.sample.json lists every setting (ARCHITECTURE); Azure sets each one too."""
    sample = json.loads((ROOT / "local.settings.sample.json").read_text(encoding="utf-8"))["Values"]
    settings = bicep_app_settings()
    missing = [name for name in sample if name not in LOCAL_ONLY and not is_set(name, settings)]
    assert missing == []


@pytest.mark.parametrize("binding", registered_bindings(), ids=lambda b: f"{b['type']}:{b['name']}")
def test_binding_settings_and_connections_are_set(binding: dict[str, object]) -> None:
    settings = bicep_app_settings()
    for value in binding.values():
        for name in SETTING_REFERENCE.findall(str(value)):
            assert name in settings, f"%{name}% of a {binding['type']} binding is not set in Bicep"
    connection = binding.get("connection")
    if connection:
        assert str(connection) in check_infra.CONNECTIONS, f"connection {connection} has no value check"
        assert is_set(str(connection), settings), f"connection {connection} is not set in Bicep"


def test_host_json_setting_references_are_set() -> None:
    settings = bicep_app_settings()
    for name in SETTING_REFERENCE.findall((ROOT / "host.json").read_text(encoding="utf-8")):
        assert name in settings, name


def test_queue_and_schedule_bindings_use_the_settings() -> None:
    """Every binding expression is a setting the dev host's benchmarks pass, with the sample's value
    (a setting missing there stops the worker, as Azure would not run the function)."""
    referenced = {name for b in registered_bindings() for name in SETTING_REFERENCE.findall(json.dumps(b))}
    assert {"SYNC_QUEUE", "SYNC_SCHEDULE"} <= referenced
    assert referenced == set(BINDING_SETTINGS)
    assert all(sample_binding_settings().values())


def test_the_tables_and_queues_the_code_uses_are_provisioned() -> None:
    main = (INFRA / "main.bicep").read_text(encoding="utf-8")
    tables = set(bicep_list(main, "var syncTables"))
    assert set(storage.ALL_TABLES) <= tables
    assert tables >= CONTRACT_TABLES
    assert {"${syncQueue}-poison", "sync-notify"} <= set(bicep_list(main, "var syncQueues"))
    assert re.search(r"^var smokeQueue = 'sync-smoke'$", main, re.MULTILINE)


def test_no_key_exists_anywhere() -> None:
    text = "".join(p.read_text(encoding="utf-8") for p in INFRA.rglob("*.bicep"))
    assert "listKeys" not in text
    assert re.search(
        r"allowSharedKeyAccess:\s*false", (INFRA / "app" / "storage.bicep").read_text(encoding="utf-8")
    )
    assert bicep_app_settings()["GRAPH_AUTH"] == "'federated'"


# --- values: the real templates pass, and every broken copy is caught -------------------------


def test_the_templates_have_no_value_problems() -> None:
    assert check_infra.problems(ROOT) == []


def _remove_resource(symbol: str) -> tuple[str, str]:
    text = (INFRA / "app" / "rbac.bicep").read_text(encoding="utf-8")
    start = text.index(f"resource {symbol} ")
    end = text.index("\n}\n", start) + 3
    return text[start:end], ""


# (what breaks, file, old text, new text, what the checker must say)
MUTATIONS = [
    (
        "queue URI points at the table endpoint",
        "infra/app/api.bicep",
        "SYNC_STORAGE__queueServiceUri: stg.properties.primaryEndpoints.queue",
        "SYNC_STORAGE__queueServiceUri: stg.properties.primaryEndpoints.table",
        "SYNC_STORAGE__queueServiceUri is stg.properties.primaryEndpoints.table",
    ),
    (
        "host storage loses its queue URI",
        "infra/app/api.bicep",
        "  AzureWebJobsStorage__queueServiceUri: stg.properties.primaryEndpoints.queue\n",
        "",
        "AzureWebJobsStorage__queueServiceUri is missing",
    ),
    (
        "app storage loses its blob URI",
        "infra/app/api.bicep",
        "  SYNC_STORAGE__blobServiceUri: stg.properties.primaryEndpoints.blob\n",
        "",
        "SYNC_STORAGE__blobServiceUri is missing",
    ),
    (
        "host storage becomes a connection string",
        "infra/app/api.bicep",
        "var appSettings = {\n",
        "var appSettings = {\n  AzureWebJobsStorage: 'UseDevelopmentStorage=true'\n",
        "AzureWebJobsStorage is a connection string",
    ),
    (
        "queue role assignment deleted",
        "infra/app/rbac.bicep",
        *_remove_resource("queueDataContributor"),
        "needs Storage Queue Data Contributor",
    ),
    (
        "blob contributor role deleted",
        "infra/app/rbac.bicep",
        *_remove_resource("blobDataContributor"),
        "SYNC_STORAGE needs Storage Blob Data Contributor",
    ),
    (
        "Graph identity given the storage roles",
        "infra/main.bicep",
        "    identityPrincipalId: identity.outputs.principalId\n    smokeQueueName",
        "    identityPrincipalId: graphIdentity.outputs.principalId\n    smokeQueueName",
        "the Graph identity must hold no Azure role",
    ),
    (
        "WEBSITE_RUN_FROM_PACKAGE added",
        "infra/app/api.bicep",
        "var appSettings = {\n",
        "var appSettings = {\n  WEBSITE_RUN_FROM_PACKAGE: '1'\n",
        "WEBSITE_RUN_FROM_PACKAGE is deprecated on Flex Consumption",
    ),
    (
        "FUNCTIONS_WORKER_RUNTIME added",
        "infra/app/api.bicep",
        "var appSettings = {\n",
        "var appSettings = {\n  FUNCTIONS_WORKER_RUNTIME: 'python'\n",
        "FUNCTIONS_WORKER_RUNTIME is deprecated on Flex Consumption",
    ),
    (
        "ftpsState back on the site",
        "infra/app/api.bicep",
        "      http20Enabled: true\n",
        "      http20Enabled: true\n      ftpsState: 'Disabled'\n",
        "site property ftpsState is deprecated",
    ),
    (
        "PYTHON_ENABLE_OPENTELEMETRY back",
        "infra/app/api.bicep",
        "var appSettings = {\n",
        "var appSettings = {\n  PYTHON_ENABLE_OPENTELEMETRY: 'true'\n",
        "PYTHON_ENABLE_OPENTELEMETRY: the Python worker then fails every async invocation",
    ),
    (
        "host telemetryMode removed",
        "host.json",
        '  "telemetryMode": "OpenTelemetry",\n',
        "",
        "host.json needs telemetryMode OpenTelemetry",
    ),
    (
        "worker exporter switched off under OpenTelemetry",
        "infra/app/api.bicep",
        "  PYTHON_APPLICATIONINSIGHTS_ENABLE_TELEMETRY: 'true'\n",
        "",
        "PYTHON_APPLICATIONINSIGHTS_ENABLE_TELEMETRY must be 'true'",
    ),
    (
        "worker exports the root logger",
        "infra/app/api.bicep",
        "PYTHON_APPLICATIONINSIGHTS_LOGGER_NAME: 'sync'",
        "PYTHON_APPLICATIONINSIGHTS_LOGGER_NAME: ''",
        "PYTHON_APPLICATIONINSIGHTS_LOGGER_NAME must be 'sync'",
    ),
    (
        "host.json applicationInsights section back",
        "host.json",
        '  "telemetryMode": "OpenTelemetry",\n',
        '  "telemetryMode": "OpenTelemetry",\n  "logging": { "applicationInsights": {} },\n',
        "logging.applicationInsights is ignored",
    ),
    (
        "DEV_TRUST_PRINCIPAL_HEADER in Azure",
        "infra/app/api.bicep",
        "var appSettings = {\n",
        "var appSettings = {\n  DEV_TRUST_PRINCIPAL_HEADER: 'true'\n",
        "DEV_TRUST_PRINCIPAL_HEADER: trusts an unauthenticated header",
    ),
    (
        "a CONTRACT.md setting missing",
        "infra/app/api.bicep",
        "  HOME_TENANT_ID: tenant().tenantId\n",
        "",
        "HOME_TENANT_ID (CONTRACT.md) is not set",
    ),
    (
        "Graph identity wired as the app identity",
        "infra/app/api.bicep",
        "GRAPH_IDENTITY_CLIENT_ID: graphIdentityClientId",
        "GRAPH_IDENTITY_CLIENT_ID: identityClientId",
        "GRAPH_IDENTITY_CLIENT_ID must be the Graph identity",
    ),
    (
        "Member.Read.Hidden dropped",
        "infra/app/graph-app.bicep",
        "var memberReadHiddenRoleId = '658aa5d8-239f-45c4-aa12-864f4fc7e490'",
        "var memberReadHiddenRoleId = '00000000-0000-0000-0000-000000000000'",
        "app/graph-app.bicep does not request Member.Read.Hidden",
    ),
    (
        "Member.Read.Hidden dropped from the script",
        "infra/scripts/grant-consent.sh",
        "MEMBER_READ_HIDDEN_ROLE=658aa5d8-239f-45c4-aa12-864f4fc7e490",
        "MEMBER_READ_HIDDEN_ROLE=00000000-0000-0000-0000-000000000000",
        "scripts/grant-consent.sh does not request Member.Read.Hidden",
    ),
    (
        "home-tenant consent on by default",
        "infra/main.bicep",
        "param grantHomeTenantConsent bool = false",
        "param grantHomeTenantConsent bool = true",
        "main.bicep: home-tenant consent is opt-in",
    ),
    (
        "API app single-tenant again",
        "infra/app/graph-app.bicep",
        "displayName: apiAppDisplayName\n  signInAudience: 'AzureADMultipleOrgs'",
        "displayName: apiAppDisplayName\n  signInAudience: 'AzureADMyOrg'",
        "both registrations are multi-tenant",
    ),
]


@pytest.mark.parametrize(
    ("relative", "old", "new", "expected"), [m[1:] for m in MUTATIONS], ids=[m[0] for m in MUTATIONS]
)
def test_a_broken_copy_is_reported(tmp_path: Path, relative: str, old: str, new: str, expected: str) -> None:
    shutil.copytree(INFRA, tmp_path / "infra")
    shutil.copy(ROOT / "host.json", tmp_path / "host.json")
    target = tmp_path / relative
    text = target.read_text(encoding="utf-8")
    assert text.count(old) == 1, f"the mutation must hit exactly one place in {relative}"
    target.write_text(text.replace(old, new), encoding="utf-8")
    found = check_infra.problems(tmp_path)
    assert any(expected in problem for problem in found), found


def test_the_checker_fails_make_iac_on_a_broken_copy(tmp_path: Path) -> None:
    shutil.copytree(INFRA, tmp_path / "infra")
    (tmp_path / "host.json").write_text('{"version": "2.0"}', encoding="utf-8")
    assert check_infra.main(["check_infra.py", str(tmp_path)]) == 1
    assert check_infra.main(["check_infra.py", str(ROOT)]) == 0


# --- App Service Authentication in front of the routes ----------------------------------------


def test_authentication_is_required_multi_tenant_and_answers_401() -> None:
    text = check_infra.strip_comments(API_BICEP.read_text(encoding="utf-8"))
    assert re.search(r"name: 'authsettingsV2'", text)
    assert re.search(r"requireAuthentication:\s*true", text)
    assert re.search(r"unauthenticatedClientAction:\s*unauthenticatedAction", text)
    for path in (API_BICEP, INFRA / "main.bicep"):
        assert re.search(
            r"param unauthenticatedAction string = 'Return401'", path.read_text(encoding="utf-8")
        )
    assert "clientSecretSettingName: authClientAssertionSetting" in text  # the app identity, not a secret
    assert bicep_app_settings()["OVERRIDE_USE_MI_FIC_ASSERTION_CLIENTID"] == "identityClientId"
    assert "openIdIssuer: '${environment().authentication.loginEndpoint}common/v2.0'" in text


def test_exactly_the_routes_without_sign_in_are_excluded_from_authentication() -> None:
    assert "/api/health" in anonymous_paths_in_code()
    assert anonymous_path_problems(API_BICEP.read_text(encoding="utf-8")) == []


def test_a_data_route_among_the_anonymous_paths_is_reported() -> None:
    text = API_BICEP.read_text(encoding="utf-8").replace(
        "  '/api/health'\n", "  '/api/health'\n  '/api/tenants'\n", 1
    )
    assert "/api/tenants is a data route" in anonymous_path_problems(text)


def test_region_and_memory_are_limited_to_what_flex_consumption_offers() -> None:
    main = (INFRA / "main.bicep").read_text(encoding="utf-8")
    location = re.search(
        r"@allowed\(\[(.*?)\]\)\n@metadata\(\{\n  azd: \{\n    type: 'location'", main, re.DOTALL
    )
    assert location, "the location parameter has no @allowed list"
    regions = re.findall(r"'([a-z0-9]+)'", location.group(1))
    assert {"eastus", "westeurope", "australiaeast"} <= set(regions) and len(regions) == len(set(regions))
    for path in (INFRA / "main.bicep", API_BICEP):
        text = path.read_text(encoding="utf-8")
        memory = re.search(
            r"@allowed\(\[\s*512\s+2048\s+4096\s*\]\)\nparam instanceMemoryMB int = 2048", text
        )
        assert memory, path.name


def test_the_optional_event_grid_topic_takes_entra_tokens_from_the_app_identity_only() -> None:
    events = check_infra.strip_comments((INFRA / "app" / "events.bicep").read_text(encoding="utf-8"))
    assert "disableLocalAuth: true" in events
    assert "'d5a91429-5739-47e2-a06b-3470a27159e7'" in events  # EventGrid Data Sender
    module = check_infra.Infra(ROOT).module_params("app/events.bicep")
    assert "identityPrincipalId: identity.outputs.principalId" in module
    assert re.search(
        r"^param eventsTopic bool = false$", (INFRA / "main.bicep").read_text(encoding="utf-8"), re.MULTILINE
    )
