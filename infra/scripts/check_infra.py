"""Check the VALUES in infra/*.bicep and host.json that checkov cannot know about.

Reads the files as text (no Bicep CLI). Each check returns plain-language problems; none means
the templates are right:

  * storage connections: every `<connection>__<service>ServiceUri` is the storage account's own
    endpoint for that service, each connection has all the services it needs, and is
    identity-based with the app identity;
  * roles: the app identity holds, on the storage account, every data role each connection needs
    (app/rbac.bicep); the Graph identity holds none;
  * Flex Consumption: no app setting or site property that Microsoft lists under "Flex
    Consumption plan deprecations" (learn.microsoft.com/azure/azure-functions/functions-app-settings);
  * telemetry: one path, host.json telemetryMode OpenTelemetry with the worker's own exporter,
    nothing that breaks invocations or sends records twice;
  * the settings CONTRACT.md adds, and none that must never reach Azure;
  * Microsoft Graph permissions and sign-in of the app registrations.

Usage: python infra/scripts/check_infra.py [REPO_ROOT]   (make iac; tests/unit/test_infra_settings.py
also runs it on broken copies and asserts each problem is reported).
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

APP_LOGGER_NAME = "sync"  # shared/telemetry.py APP_LOGGER_NAME; the test keeps the two equal
ROLE_NAMES = {
    "b7e6dc6d-f1e8-4753-8033-0f276bb0955b": "Storage Blob Data Owner",
    "ba92f5b4-2d11-453d-a403-e96b0029c9fe": "Storage Blob Data Contributor",
    "974c5e8b-45b9-4653-ba55-5f855dd0fb88": "Storage Queue Data Contributor",
    "0a9a7e1f-b9d0-4cc4-a60d-0319b160aaa3": "Storage Table Data Contributor",
}
# Connection -> (storage services it reaches, data roles its identity needs on the account).
CONNECTIONS = {
    # The Functions host: Blob Data Owner is its minimum, Table for its diagnostic events, Queue as
    # Microsoft's Flex samples grant ("Connecting to host storage with an identity").
    "AzureWebJobsStorage": (
        {"blob", "queue", "table"},
        {"Storage Blob Data Owner", "Storage Queue Data Contributor", "Storage Table Data Contributor"},
    ),
    # The app: tables, refresh/notify queues, lock blobs and the audit archive.
    "SYNC_STORAGE": (
        {"blob", "queue", "table"},
        {"Storage Blob Data Contributor", "Storage Queue Data Contributor", "Storage Table Data Contributor"},
    ),
}
# "Flex Consumption plan deprecations", app settings and site properties.
FLEX_DEPRECATED_SETTINGS = {
    "ENABLE_ORYX_BUILD",
    "FUNCTIONS_EXTENSION_VERSION",
    "FUNCTIONS_WORKER_RUNTIME",
    "FUNCTIONS_WORKER_RUNTIME_VERSION",
    "FUNCTIONS_MAX_HTTP_CONCURRENCY",
    "FUNCTIONS_WORKER_PROCESS_COUNT",
    "FUNCTIONS_WORKER_DYNAMIC_CONCURRENCY_ENABLED",
    "SCM_DO_BUILD_DURING_DEPLOYMENT",
    "WEBSITE_CONTENTAZUREFILECONNECTIONSTRING",
    "WEBSITE_CONTENTOVERVNET",
    "WEBSITE_CONTENTSHARE",
    "WEBSITE_DNS_SERVER",
    "WEBSITE_MAX_DYNAMIC_APPLICATION_SCALE_OUT",
    "WEBSITE_NODE_DEFAULT_VERSION",
    "WEBSITE_RUN_FROM_PACKAGE",
    "WEBSITE_SKIP_CONTENTSHARE_VALIDATION",
    "WEBSITE_VNET_ROUTE_ALL",
}
FLEX_DEPRECATED_SITE_PROPERTIES = {
    "alwaysOn",
    "containerSize",
    "ftpsState",
    "isReserved",
    "isXenon",
    "javaVersion",
    "linuxFxVersion",
    "netFrameworkVersion",
    "powerShellVersion",
    "functionAppScaleLimit",
    "preWarmedInstanceCount",
    "use32BitWorkerProcess",
    "vnetBackupRestoreEnabled",
    "vnetContentShareEnabled",
    "vnetImagePullEnabled",
    "vnetRouteAllEnabled",
    "windowsFxVersion",
}
NEVER_IN_AZURE = {
    "PYTHON_ENABLE_OPENTELEMETRY": "the Python worker then fails every async invocation "
    "(azure-functions-python-worker #1881); Microsoft lists it for OTLP export only",
    "APPINSIGHTS_INSTRUMENTATIONKEY": "a second, key-based telemetry path; local auth is off",
    "DEV_TRUST_PRINCIPAL_HEADER": "trusts an unauthenticated header; local development only",
    "WEBSITE_AUTH_AAD_ALLOWED_TENANTS": "caps sign-in at 10 tenants; the code checks tid itself",
}
# New app settings of CONTRACT.md that Azure must set (overrides such as GRAPH_BASE_URL are left
# out on purpose: in Azure they follow GRAPH_CLOUD).
CONTRACT_SETTINGS = (
    "GRAPH_CLOUD",
    "GRAPH_IDENTITY_CLIENT_ID",
    "AZURE_CLIENT_ID",
    "SYNC_STORAGE__blobServiceUri",
    "AUDIT_CONTAINER",
    "AUDIT_RETENTION_DAYS",
    "REMOVAL_GUARD_MAJORITY_PERCENT",
    "REMOVAL_GRACE_DAYS",
    "HOME_TENANT_ID",
    "ADMIN_ROLE_IDS",
    "APP_BASE_URL",
    "NOTIFY_DEBOUNCE_SECONDS",
    "EVENTS_TOPIC_ENDPOINT",
)
GRAPH_APPLICATION_PERMISSIONS = {
    "GroupMember.Read.All": "98830695-27a2-44f7-8c18-0c3ebc9698f6",
    "User.Read.All": "df021288-bdef-4463-88db-98f22de89214",
    "Member.Read.Hidden": "658aa5d8-239f-45c4-aa12-864f4fc7e490",
    "MailboxSettings.Read": "40f97065-369a-49f4-947c-6a255697ae91",
}
TOO_BROAD_PERMISSIONS = ("Directory.Read.All",)
# Group.Read.All (read all groups) may be requested only behind the opt-in parameter
# groupChangeNotifications: Graph needs it for group change notifications.
GROUP_NOTIFICATIONS_ROLE = "5b567255-7703-4780-807c-7be8301ae99b"


def strip_comments(text: str) -> str:
    """Bicep text without // comments (a // inside a '...' string, as in https://, stays)."""
    out: list[str] = []
    for line in text.splitlines():
        quoted, cut = False, len(line)
        for index, char in enumerate(line):
            if char == "'" and (index == 0 or line[index - 1] != "\\"):
                quoted = not quoted
            elif not quoted and line.startswith("//", index):
                cut = index
                break
        out.append(line[:cut].rstrip())
    return "\n".join(out)


def block(text: str, start: int) -> str:
    """From the bracket at `start` to its matching bracket."""
    opening = text[start]
    closing = {"{": "}", "[": "]"}[opening]
    depth = 0
    for index in range(start, len(text)):
        depth += (text[index] == opening) - (text[index] == closing)
        if depth == 0:
            return text[start : index + 1]
    raise ValueError(f"unbalanced {opening} at {start}")


def top_level_pairs(body: str) -> dict[str, str]:
    """key -> expression of the depth-1 `key: value` lines of an object literal."""
    pairs: dict[str, str] = {}
    depth = 0
    for line in body.splitlines():
        if depth == 1 and (pair := re.match(r"\s*'?([A-Za-z_][\w.]*)'?\s*:\s*(.+?)\s*$", line)):
            pairs[pair.group(1)] = pair.group(2)
        depth += line.count("{") + line.count("[") - line.count("}") - line.count("]")
    return pairs


def resources(text: str, type_prefix: str) -> dict[str, str]:
    """Symbol -> body of each `resource <symbol> '<type_prefix>...' = [if (...)] {` in the text."""
    found: dict[str, str] = {}
    pattern = rf"^resource (\w+) '{re.escape(type_prefix)}[^']*'( existing)? = (if \(.*\) )?\{{"
    for match in re.finditer(pattern, text, re.MULTILINE):
        found[match.group(1)] = ("CONDITIONAL " if match.group(3) else "") + block(text, match.end() - 1)
    return found


class Infra:
    """The text of the repository files the checks read."""

    def __init__(self, root: Path) -> None:
        self.root = root
        infra = root / "infra"
        self.main = strip_comments((infra / "main.bicep").read_text(encoding="utf-8"))
        self.api = strip_comments((infra / "app" / "api.bicep").read_text(encoding="utf-8"))
        self.rbac = strip_comments((infra / "app" / "rbac.bicep").read_text(encoding="utf-8"))
        self.graph_app = (infra / "app" / "graph-app.bicep").read_text(encoding="utf-8")
        self.consent_script = (infra / "scripts" / "grant-consent.sh").read_text(encoding="utf-8")
        self.host = json.loads((root / "host.json").read_text(encoding="utf-8"))
        match = re.search(r"^var appSettings = \{", self.api, re.MULTILINE)
        self.settings = top_level_pairs(block(self.api, match.end() - 1)) if match else {}

    def module_params(self, module_file: str) -> str:
        """The body of main.bicep's module that deploys `module_file`."""
        match = re.search(
            rf"^module \w+ '{re.escape(module_file)}' = (if \(.*\) )?\{{", self.main, re.MULTILINE
        )
        return block(self.main, match.end() - 1) if match else ""


def storage_connection_problems(infra: Infra) -> list[str]:
    problems: list[str] = []
    accounts = resources(infra.api, "Microsoft.Storage/storageAccounts@")
    if len(accounts) != 1:
        return [f"api.bicep: expected one storage account reference, found {sorted(accounts)}"]
    (account,) = accounts
    for connection, (services, _roles) in CONNECTIONS.items():
        settings = {
            k[len(connection) + 2 :]: v for k, v in infra.settings.items() if k.startswith(connection + "__")
        }
        if connection in infra.settings:
            problems.append(f"{connection} is a connection string; it must be identity-based")
        if (
            settings.get("credential") != "'managedidentity'"
            or settings.get("clientId") != "identityClientId"
        ):
            problems.append(
                f"{connection} must use the app identity: "
                "__credential managedidentity, __clientId identityClientId"
            )
        for key, value in settings.items():
            if service := re.fullmatch(r"(\w+)ServiceUri", key):
                expected = f"{account}.properties.primaryEndpoints.{service.group(1)}"
                if value != expected:
                    problems.append(
                        f"{connection}__{key} is {value}, "
                        f"not the account's {service.group(1)} endpoint {expected}"
                    )
        for service in sorted(
            services - {k[: -len("ServiceUri")] for k in settings if k.endswith("ServiceUri")}
        ):
            problems.append(
                f"{connection}__{service}ServiceUri is missing: the {service} service is unreachable"
            )
    if infra.settings.get("AZURE_CLIENT_ID") != "identityClientId":
        problems.append("AZURE_CLIENT_ID must be the app identity (identityClientId)")
    if infra.settings.get("GRAPH_IDENTITY_CLIENT_ID") != "graphIdentityClientId":
        problems.append("GRAPH_IDENTITY_CLIENT_ID must be the Graph identity (graphIdentityClientId)")
    api_module = infra.module_params("app/api.bicep")
    for wired in (
        "identityClientId: identity.outputs.clientId",
        "graphIdentityClientId: graphIdentity.outputs.clientId",
    ):
        if wired not in api_module:
            problems.append(f"main.bicep must pass {wired} to app/api.bicep")
    return problems


def role_problems(infra: Infra) -> list[str]:
    role_vars = {
        name: ROLE_NAMES.get(guid, guid)
        for name, guid in re.findall(r"^var (\w+) = '([0-9a-f-]{36})'", infra.rbac, re.MULTILINE)
    }
    (account,) = resources(infra.rbac, "Microsoft.Storage/storageAccounts@") or {"?": ""}
    held: set[str] = set()
    for body in resources(infra.rbac, "Microsoft.Authorization/roleAssignments@").values():
        role = re.search(r"roleDefinitionId: .*?\b(\w+RoleId)\)", body)
        if (
            not body.startswith("CONDITIONAL")
            and re.search(rf"^\s*scope: {account}$", body, re.MULTILINE)
            and re.search(r"^\s*principalId: identityPrincipalId$", body, re.MULTILINE)
            and role
        ):
            held.add(role_vars.get(role.group(1), role.group(1)))
    problems = [
        f"{connection} needs {role} for the app identity on the storage account (app/rbac.bicep)"
        for connection, (_services, roles) in CONNECTIONS.items()
        for role in sorted(roles - held)
    ]
    if "identityPrincipalId: identity.outputs.principalId" not in infra.module_params("app/rbac.bicep"):
        problems.append("main.bicep must give app/rbac.bicep the app identity (identity.outputs.principalId)")
    for match in re.finditer(r"^module \w+ '([^']+)'", infra.main, re.MULTILINE):
        if match.group(
            1
        ) != "app/graph-app.bicep" and "graphIdentity.outputs.principalId" in infra.module_params(
            match.group(1)
        ):
            problems.append(
                f"the Graph identity must hold no Azure role, but main.bicep hands it to {match.group(1)}"
            )
    return problems


def flex_problems(infra: Infra) -> list[str]:
    problems = [
        f"app setting {name} is deprecated on Flex Consumption"
        for name in sorted(FLEX_DEPRECATED_SETTINGS & set(infra.settings))
    ]
    deprecated = {p.lower(): p for p in FLEX_DEPRECATED_SITE_PROPERTIES}
    for body in resources(infra.api, "Microsoft.Web/sites@").values():
        for key in re.findall(r"^\s*(\w+)\s*:", body, re.MULTILINE):
            if key.lower() in deprecated:
                problems.append(f"site property {key} is deprecated on Flex Consumption")
    return problems


def telemetry_problems(infra: Infra) -> list[str]:
    problems = [f"app setting {n}: {why}" for n, why in NEVER_IN_AZURE.items() if n in infra.settings]
    host_otel = str(infra.host.get("telemetryMode", "")).lower() == "opentelemetry"
    worker_exports = infra.settings.get("PYTHON_APPLICATIONINSIGHTS_ENABLE_TELEMETRY") == "'true'"
    if worker_exports and not host_otel:
        problems.append(
            "host.json needs telemetryMode OpenTelemetry, "
            "else the host exports the worker's logs as well (twice)"
        )
    if host_otel and not worker_exports:
        problems.append(
            "PYTHON_APPLICATIONINSIGHTS_ENABLE_TELEMETRY must be 'true' with telemetryMode "
            "OpenTelemetry (Microsoft's Python path; the app then adds no second exporter)"
        )
    if (
        worker_exports
        and infra.settings.get("PYTHON_APPLICATIONINSIGHTS_LOGGER_NAME") != f"'{APP_LOGGER_NAME}'"
    ):
        problems.append(
            f"PYTHON_APPLICATIONINSIGHTS_LOGGER_NAME must be '{APP_LOGGER_NAME}' (the app's logger)"
        )
    if host_otel and "applicationInsights" in (infra.host.get("logging") or {}):
        problems.append("host.json logging.applicationInsights is ignored with telemetryMode OpenTelemetry")
    auth = infra.settings.get("APPLICATIONINSIGHTS_AUTHENTICATION_STRING", "")
    if "Authorization=AAD" not in auth or "ClientId=${identityClientId}" not in auth:
        problems.append(
            "APPLICATIONINSIGHTS_AUTHENTICATION_STRING must be ClientId=<app identity>;Authorization=AAD"
        )
    return problems


def contract_problems(infra: Infra) -> list[str]:
    return [
        f"app setting {name} (CONTRACT.md) is not set"
        for name in CONTRACT_SETTINGS
        if name not in infra.settings
    ]


def registration_problems(infra: Infra) -> list[str]:
    problems: list[str] = []
    for label, text in (
        ("app/graph-app.bicep", infra.graph_app),
        ("scripts/grant-consent.sh", infra.consent_script),
    ):
        for name, guid in GRAPH_APPLICATION_PERMISSIONS.items():
            if guid not in text:
                problems.append(f"{label} does not request {name} ({guid})")
        problems += [f"{label} mentions {p}: least privilege" for p in TOO_BROAD_PERMISSIONS if p in text]
        opt_in = "groupChangeNotifications ?" in text or "GROUP_CHANGE_NOTIFICATIONS" in text
        if GROUP_NOTIFICATIONS_ROLE in text and not opt_in:
            problems.append(
                f"{label} requests Group.Read.All unconditionally: it is opt-in (groupChangeNotifications)"
            )
        if "Sync.Operator" not in text:
            problems.append(f"{label}: the API app role is Sync.Operator")
    graph_app = strip_comments(infra.graph_app)
    if graph_app.count("signInAudience: 'AzureADMultipleOrgs'") != 2:
        problems.append("app/graph-app.bicep: both registrations are multi-tenant (AzureADMultipleOrgs)")
    if "Microsoft.Graph/oauth2PermissionGrants@" not in graph_app:
        problems.append("app/graph-app.bicep: the API app needs the delegated sign-in grant")
    if "/api/consent/callback" not in graph_app:
        problems.append(
            "app/graph-app.bicep: the Graph app must accept the consent redirect /api/consent/callback"
        )
    for label, text in (("main.bicep", infra.main), ("app/graph-app.bicep", graph_app)):
        if not re.search(r"^param grantHomeTenantConsent bool = false$", text, re.MULTILINE):
            problems.append(f"{label}: home-tenant consent is opt-in (grantHomeTenantConsent = false)")
    return problems


CHECKS = (
    storage_connection_problems,
    role_problems,
    flex_problems,
    telemetry_problems,
    contract_problems,
    registration_problems,
)


def problems(root: Path) -> list[str]:
    """Every problem of the repository at `root`."""
    infra = Infra(root)
    return [problem for check in CHECKS for problem in check(infra)]


def main(argv: list[str]) -> int:
    root = Path(argv[1]) if len(argv) > 1 else Path(__file__).resolve().parents[2]
    found = problems(root)
    for problem in found:
        print(f"check_infra: {problem}", file=sys.stderr)
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
