"""Every app setting, named once and read once.

Environment variables win; when `local.settings.json` exists in the working directory
its `Values` fill in what the environment leaves out (the same file `func start` reads).
"""

from __future__ import annotations

import enum
import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit


class SettingsError(ValueError):
    """A setting is missing or malformed; the message names it."""


class GraphAuthMode(enum.StrEnum):
    """How the app obtains Microsoft Graph tokens."""

    MANAGED_IDENTITY = "managed-identity"  # the app's identity in its home tenant
    FEDERATED = "federated"  # managed identity as federated credential of a multi-tenant app
    DEFAULT = "default"  # DefaultAzureCredential: a developer against a real tenant
    DEMO = "demo"  # the demo tenant in devtools/


class GraphCloud(enum.StrEnum):
    """Which Microsoft cloud the customer tenants live in (Microsoft Graph national cloud deployments)."""

    GLOBAL = "global"
    USGOV = "usgov"  # Microsoft Cloud for US Government L4 (GCC High)
    USGOVDOD = "usgovdod"  # US Government L5 (DoD)
    CHINA = "china"  # Microsoft 365 operated by 21Vianet


@dataclass(frozen=True, kw_only=True)
class CloudEndpoints:
    """Where Graph and Entra ID are in one cloud.

    Graph roots and Entra authorities: "Microsoft Graph national cloud deployments"; token-exchange
    audiences: "Configure an application to trust a managed identity" (docs/graph-contract.md).
    """

    graph_root: str  # scheme and host of Microsoft Graph
    authority_host: str  # Entra ID token service
    token_exchange_audience: str  # what a managed identity's assertion is issued for

    @property
    def graph_base_url(self) -> str:
        """The v1.0 endpoint."""
        return f"{self.graph_root}/v1.0"

    @property
    def graph_scope(self) -> str:
        """The `.default` scope of Microsoft Graph in this cloud (application permissions)."""
        return f"{self.graph_root}/.default"


CLOUDS: dict[GraphCloud, CloudEndpoints] = {
    GraphCloud.GLOBAL: CloudEndpoints(
        graph_root="https://graph.microsoft.com",
        authority_host="https://login.microsoftonline.com",
        token_exchange_audience="api://AzureADTokenExchange",
    ),
    GraphCloud.USGOV: CloudEndpoints(
        graph_root="https://graph.microsoft.us",
        authority_host="https://login.microsoftonline.us",
        token_exchange_audience="api://AzureADTokenExchangeUSGov",
    ),
    GraphCloud.USGOVDOD: CloudEndpoints(
        graph_root="https://dod-graph.microsoft.us",
        authority_host="https://login.microsoftonline.us",
        token_exchange_audience="api://AzureADTokenExchangeUSGov",
    ),
    GraphCloud.CHINA: CloudEndpoints(
        graph_root="https://microsoftgraph.chinacloudapi.cn",
        authority_host="https://login.chinacloudapi.cn",
        token_exchange_audience="api://AzureADTokenExchangeChina",
    ),
}
DEFAULT_GRAPH_BASE_URL = CLOUDS[GraphCloud.GLOBAL].graph_base_url
# The Graph app id the demo tenant knows (GRAPH_AUTH=demo without GRAPH_APP_CLIENT_ID).
DEMO_GRAPH_APP_CLIENT_ID = "5b8a2f0e-4c1d-4e7a-9f3b-2d6c8e1a7b90"
# Entra role template ids (the `wids` claim) that make a customer's user an admin of their tenant:
# Global, Privileged Role, User and Groups Administrator.
DEFAULT_ADMIN_ROLE_IDS = frozenset(
    {
        "62e90394-69f5-4237-9190-012177145e10",
        "e8611ab8-c189-46e8-94e1-60213ab1f814",
        "fe930be7-5e62-47db-91af-98c3a49a38b1",
        "fdd7a751-b60b-444a-984c-02652fe8fa1c",
    }
)
_GUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}\Z")


@dataclass(frozen=True, kw_only=True)
class StorageSettings:
    """Where the app keeps its tables and its refresh queue."""

    connection_string: str | None = None
    table_service_uri: str | None = None
    queue_service_uri: str | None = None
    blob_service_uri: str | None = None  # the per-tenant lock blobs
    client_id: str | None = None  # user-assigned identity for identity-based access


@dataclass(frozen=True, kw_only=True)
class Settings:
    """The app's configuration, read from the environment (see README, "Settings")."""

    storage: StorageSettings
    graph_cloud: GraphCloud = GraphCloud.GLOBAL
    graph_base_url: str = DEFAULT_GRAPH_BASE_URL  # GRAPH_BASE_URL, else the cloud's
    graph_authority_host: str = CLOUDS[
        GraphCloud.GLOBAL
    ].authority_host  # GRAPH_AUTHORITY_HOST, else the cloud's
    graph_auth: GraphAuthMode = GraphAuthMode.MANAGED_IDENTITY
    graph_app_client_id: str | None = None
    graph_identity_client_id: str | None = None  # the Graph-only identity (GRAPH_IDENTITY_CLIENT_ID)
    azure_client_id: str | None = None
    queue_name: str = "sync-refresh"
    notify_queue: str = "sync-notify"  # change notifications, coalesced per tenant before a refresh
    notify_debounce_seconds: float = 20.0
    notify_renew_schedule: str = "0 30 */6 * * *"
    events_topic_endpoint: str | None = None  # an Event Grid topic for roster-change CloudEvents
    schedule: str = "0 0 2 * * *"
    removal_grace_days: int = 7
    removal_guard_percent: float = 10.0
    removal_guard_min_users: int = 20
    removal_guard_majority_percent: float = 50.0
    audit_container: str = "audit"
    audit_retention_days: int = 400
    home_tenant_id: str | None = None  # HOME_TENANT_ID: operators' tokens carry this tid
    admin_role_ids: frozenset[str] = DEFAULT_ADMIN_ROLE_IDS  # ADMIN_ROLE_IDS
    # APP_BASE_URL: the app's public root (the consent redirect URI and the Graph notification URL)
    app_base_url: str | None = None
    # WEBSITE_AUTH_ENABLED: App Service sets it "True" when App Service Authentication is on.
    platform_auth_enabled: bool = False
    dev_trust_principal_header: bool = False  # DEV_TRUST_PRINCIPAL_HEADER (only with GRAPH_AUTH=demo)

    @property
    def cloud(self) -> CloudEndpoints:
        """Graph scope and token-exchange audience of GRAPH_CLOUD."""
        return CLOUDS[self.graph_cloud]

    @property
    def principal_header_trusted(self) -> bool:
        """Whether X-MS-CLIENT-PRINCIPAL may be believed: only App Service Authentication sets it
        in Azure; locally only the dev host, and only when told so with the demo Graph."""
        return self.platform_auth_enabled or (
            self.dev_trust_principal_header and self.graph_auth is GraphAuthMode.DEMO
        )


def _read_local_settings(path: Path) -> dict[str, str]:
    if not path.is_file():
        return {}
    try:
        values = json.loads(path.read_text(encoding="utf-8")).get("Values", {})
    except (OSError, ValueError, AttributeError) as exc:
        raise SettingsError(f"{path} is not valid local.settings.json: {exc}") from exc
    return {str(k): str(v) for k, v in values.items() if v is not None}


def _number(values: Mapping[str, str], name: str, default: float, *, minimum: float) -> float:
    raw = values.get(name, "").strip()
    if not raw:
        return default
    try:
        number = float(raw)
    except ValueError:
        raise SettingsError(f"{name} must be a number, got {raw!r}") from None
    if number < minimum:
        raise SettingsError(f"{name} must be at least {minimum:g}, got {raw!r}")
    return number


def _flag(values: Mapping[str, str], name: str) -> bool:
    raw = values.get(name, "").strip().lower()
    if raw in ("", "false", "0"):
        return False
    if raw in ("true", "1"):
        return True
    raise SettingsError(f"{name} must be true or false, got {raw!r}")


def _guid(values: Mapping[str, str], name: str) -> str | None:
    raw = values.get(name, "").strip()
    if not raw:
        return None
    if not _GUID.match(raw):
        raise SettingsError(f"{name} must be an Entra tenant id (a GUID), got {raw[:64]!r}")
    return raw.lower()


def _role_ids(values: Mapping[str, str], name: str) -> frozenset[str]:
    raw = values.get(name, "").strip()
    if not raw:
        return DEFAULT_ADMIN_ROLE_IDS
    ids = [part.strip() for part in raw.split(",") if part.strip()]
    bad = [part for part in ids if not _GUID.match(part)]
    if bad or not ids:
        raise SettingsError(
            f"{name} must list Entra role template ids (GUIDs) separated by commas; "
            f"not GUIDs: {', '.join(repr(b[:64]) for b in bad) or 'none given'}"
        )
    return frozenset(part.lower() for part in ids)


def _base_url(values: Mapping[str, str], name: str) -> str | None:
    raw = values.get(name, "").strip()
    if not raw:
        return None
    parts = urlsplit(raw)
    if parts.scheme not in ("https", "http") or not parts.netloc or parts.query or parts.fragment:
        raise SettingsError(f"{name} must be the app's root URL such as https://app.example.net, got {raw!r}")
    return raw.rstrip("/")


LOCAL_SETTINGS_FILE = Path("local.settings.json")


def load_settings(
    environ: Mapping[str, str] | None = None, local_settings: Path | None = LOCAL_SETTINGS_FILE
) -> Settings:
    """Read every setting once: environment first, then local.settings.json Values.

    `local_settings=None` reads the environment alone (tests, benchmarks).
    """
    env = os.environ if environ is None else environ
    from_file = _read_local_settings(local_settings) if local_settings is not None else {}
    values = {**from_file, **{k: v for k, v in env.items() if v != ""}}

    storage = StorageSettings(
        connection_string=values.get("SYNC_STORAGE"),
        table_service_uri=values.get("SYNC_STORAGE__tableServiceUri"),
        queue_service_uri=values.get("SYNC_STORAGE__queueServiceUri"),
        blob_service_uri=values.get("SYNC_STORAGE__blobServiceUri"),
        client_id=values.get("SYNC_STORAGE__clientId"),
    )
    if not storage.connection_string and not (
        storage.table_service_uri and storage.queue_service_uri and storage.blob_service_uri
    ):
        raise SettingsError(
            "SYNC_STORAGE is not set: give a connection string (locally "
            "'UseDevelopmentStorage=true') or SYNC_STORAGE__tableServiceUri, "
            "SYNC_STORAGE__queueServiceUri and SYNC_STORAGE__blobServiceUri for identity-based access"
        )
    auth_raw = values.get("GRAPH_AUTH", GraphAuthMode.MANAGED_IDENTITY.value)
    try:
        auth = GraphAuthMode(auth_raw)
    except ValueError:
        choices = ", ".join(m.value for m in GraphAuthMode)
        raise SettingsError(f"GRAPH_AUTH must be one of {choices}; got {auth_raw!r}") from None
    if auth is GraphAuthMode.FEDERATED and not values.get("GRAPH_APP_CLIENT_ID"):
        raise SettingsError("GRAPH_AUTH=federated needs GRAPH_APP_CLIENT_ID (the multi-tenant app id)")
    cloud_raw = values.get("GRAPH_CLOUD", GraphCloud.GLOBAL.value).lower()
    try:
        cloud = GraphCloud(cloud_raw)
    except ValueError:
        choices = ", ".join(c.value for c in GraphCloud)
        raise SettingsError(f"GRAPH_CLOUD must be one of {choices}; got {cloud_raw!r}") from None
    endpoints = CLOUDS[cloud]
    dev_trust = _flag(values, "DEV_TRUST_PRINCIPAL_HEADER")
    if dev_trust and auth is not GraphAuthMode.DEMO:
        # Trusting an unauthenticated header next to a real Graph would let anyone act as anyone.
        raise SettingsError(
            f"DEV_TRUST_PRINCIPAL_HEADER=true is allowed only with GRAPH_AUTH=demo (got GRAPH_AUTH={auth}); "
            "remove it: in Azure, App Service Authentication provides the caller"
        )
    return Settings(
        storage=storage,
        graph_cloud=cloud,
        graph_base_url=values.get("GRAPH_BASE_URL", endpoints.graph_base_url).rstrip("/"),
        graph_authority_host=values.get(
            "GRAPH_AUTHORITY_HOST", _authority_for(auth, values, endpoints)
        ).rstrip("/"),
        graph_auth=auth,
        graph_app_client_id=values.get("GRAPH_APP_CLIENT_ID")
        or (DEMO_GRAPH_APP_CLIENT_ID if auth is GraphAuthMode.DEMO else None),
        graph_identity_client_id=values.get("GRAPH_IDENTITY_CLIENT_ID") or values.get("AZURE_CLIENT_ID"),
        azure_client_id=values.get("AZURE_CLIENT_ID"),
        queue_name=values.get("SYNC_QUEUE", "sync-refresh"),
        notify_queue=values.get("NOTIFY_QUEUE", "sync-notify"),
        notify_debounce_seconds=_number(values, "NOTIFY_DEBOUNCE_SECONDS", 20.0, minimum=0),
        notify_renew_schedule=values.get("NOTIFY_RENEW_SCHEDULE", "0 30 */6 * * *"),
        events_topic_endpoint=values.get("EVENTS_TOPIC_ENDPOINT") or None,
        schedule=values.get("SYNC_SCHEDULE", "0 0 2 * * *"),
        # At least a day: a removal must stay restorable until someone can look at it.
        removal_grace_days=int(_number(values, "REMOVAL_GRACE_DAYS", 7, minimum=1)),
        removal_guard_percent=_number(values, "REMOVAL_GUARD_PERCENT", 10.0, minimum=0),
        removal_guard_min_users=int(_number(values, "REMOVAL_GUARD_MIN_USERS", 20, minimum=0)),
        removal_guard_majority_percent=_number(values, "REMOVAL_GUARD_MAJORITY_PERCENT", 50.0, minimum=0),
        audit_container=values.get("AUDIT_CONTAINER", "audit"),
        audit_retention_days=int(_number(values, "AUDIT_RETENTION_DAYS", 400, minimum=1)),
        home_tenant_id=_guid(values, "HOME_TENANT_ID"),
        admin_role_ids=_role_ids(values, "ADMIN_ROLE_IDS"),
        app_base_url=_base_url(values, "APP_BASE_URL"),
        platform_auth_enabled=_flag(values, "WEBSITE_AUTH_ENABLED"),
        dev_trust_principal_header=dev_trust,
    )


def _authority_for(auth: GraphAuthMode, values: Mapping[str, str], endpoints: CloudEndpoints) -> str:
    """The cloud's token service; the demo tenant serves its own beside its Graph (same origin)."""
    if auth is GraphAuthMode.DEMO and values.get("GRAPH_BASE_URL"):
        parts = urlsplit(values["GRAPH_BASE_URL"])
        return f"{parts.scheme}://{parts.netloc}"
    return endpoints.authority_host


_cached: Settings | None = None


def get_settings() -> Settings:
    """The process's settings, read on first use and kept (app settings change only on restart)."""
    global _cached
    if _cached is None:
        _cached = load_settings()
    return _cached


def reset_settings_cache() -> None:
    """Forget the kept settings (tests that change the environment)."""
    global _cached
    _cached = None
