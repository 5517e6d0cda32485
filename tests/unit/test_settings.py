"""Settings: every name read once, clear errors for bad values."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from shared.graph import admin_consent_url
from shared.settings import DEMO_GRAPH_APP_CLIENT_ID, GraphAuthMode, GraphCloud, SettingsError, load_settings

BASE = {"SYNC_STORAGE": "UseDevelopmentStorage=true"}


def test_defaults_match_the_architecture() -> None:
    settings = load_settings(BASE, local_settings=None)
    assert settings.graph_base_url == "https://graph.microsoft.com/v1.0"
    assert settings.graph_auth is GraphAuthMode.MANAGED_IDENTITY
    assert settings.queue_name == "sync-refresh"
    assert settings.schedule == "0 0 2 * * *"
    assert (
        settings.removal_grace_days,
        settings.removal_guard_percent,
        settings.removal_guard_min_users,
    ) == (
        7,
        10.0,
        20,
    )


def test_missing_storage_names_the_setting() -> None:
    with pytest.raises(SettingsError, match="SYNC_STORAGE"):
        load_settings({}, local_settings=None)
    with pytest.raises(SettingsError, match="SYNC_STORAGE__blobServiceUri"):  # the tenant locks need blobs
        load_settings(
            {
                "SYNC_STORAGE__tableServiceUri": "https://acct.table.core.windows.net",
                "SYNC_STORAGE__queueServiceUri": "https://acct.queue.core.windows.net",
            },
            local_settings=None,
        )


def test_identity_based_storage_is_accepted() -> None:
    settings = load_settings(
        {
            "SYNC_STORAGE__tableServiceUri": "https://acct.table.core.windows.net",
            "SYNC_STORAGE__queueServiceUri": "https://acct.queue.core.windows.net",
            "SYNC_STORAGE__blobServiceUri": "https://acct.blob.core.windows.net",
            "SYNC_STORAGE__clientId": "11111111-2222-3333-4444-555555555555",
        },
        local_settings=None,
    )
    assert settings.storage.connection_string is None
    assert settings.storage.blob_service_uri == "https://acct.blob.core.windows.net"
    assert settings.storage.client_id == "11111111-2222-3333-4444-555555555555"


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("GRAPH_AUTH", "password", "GRAPH_AUTH must be one of"),
        ("REMOVAL_GRACE_DAYS", "seven", "REMOVAL_GRACE_DAYS must be a number"),
        ("REMOVAL_GUARD_PERCENT", "-1", "at least 0"),
        ("GRAPH_AUTH", "federated", "GRAPH_APP_CLIENT_ID"),
    ],
)
def test_bad_values_are_refused_by_name(name: str, value: str, message: str) -> None:
    with pytest.raises(SettingsError, match=message):
        load_settings({**BASE, name: value}, local_settings=None)


def test_environment_wins_over_local_settings_file(tmp_path: Path) -> None:
    path = tmp_path / "local.settings.json"
    path.write_text(
        json.dumps({"Values": {**BASE, "SYNC_QUEUE": "from-file", "SYNC_SCHEDULE": "0 0 3 * * *"}})
    )
    settings = load_settings({"SYNC_QUEUE": "from-env"}, local_settings=path)
    assert settings.queue_name == "from-env"
    assert settings.schedule == "0 0 3 * * *"


def test_trailing_slash_is_dropped_from_graph_base_url() -> None:
    settings = load_settings({**BASE, "GRAPH_BASE_URL": "http://127.0.0.1:7081/v1.0/"}, local_settings=None)
    assert settings.graph_base_url == "http://127.0.0.1:7081/v1.0"


# Read by shared/settings.py but not in the sample, each for a reason.
NOT_IN_SAMPLE = {
    "GRAPH_AUTHORITY_HOST",  # an override; empty would replace the cloud's (or the demo's) authority
    "WEBSITE_AUTH_ENABLED",  # App Service sets it; locally the dev setting stands in
    "SYNC_STORAGE__tableServiceUri",  # identity-based storage in Azure; locally a connection string
    "SYNC_STORAGE__queueServiceUri",
    "SYNC_STORAGE__blobServiceUri",
    "SYNC_STORAGE__clientId",
}


def test_the_sample_names_each_setting_the_app_reads_once() -> None:
    text = (Path(__file__).parents[2] / "local.settings.sample.json").read_text()
    pairs = json.loads(text, object_pairs_hook=list)
    values = next(v for k, v in pairs if k == "Values")
    names = [k for k, _ in values]
    assert sorted({n for n in names if names.count(n) > 1}) == []  # a second one would silently win
    source = (Path(__file__).parents[2] / "shared" / "settings.py").read_text()
    read = set(re.findall(r'values(?:\.get)?\(\s*"([A-Za-z_]+)"', source)) | set(
        re.findall(r'_\w+\(\s*values,\s*"([A-Za-z_]+)"', source)
    )
    assert len(read) > 25
    assert sorted(read - set(names) - NOT_IN_SAMPLE) == []


def test_sample_settings_file_lists_every_setting() -> None:
    sample = json.loads((Path(__file__).parents[2] / "local.settings.sample.json").read_text())["Values"]
    for name in (
        "SYNC_STORAGE",
        "AzureWebJobsStorage",
        "GRAPH_BASE_URL",
        "GRAPH_AUTH",
        "GRAPH_APP_CLIENT_ID",
        "AZURE_CLIENT_ID",
        "SYNC_QUEUE",
        "SYNC_SCHEDULE",
        "HOME_TENANT_ID",
        "ADMIN_ROLE_IDS",
        "APP_BASE_URL",
        "DEV_TRUST_PRINCIPAL_HEADER",
        "REMOVAL_GRACE_DAYS",
        "REMOVAL_GUARD_PERCENT",
        "REMOVAL_GUARD_MIN_USERS",
    ):
        assert name in sample, name


def test_national_clouds_move_every_endpoint_together() -> None:
    base = {
        "SYNC_STORAGE": "UseDevelopmentStorage=true",
        "GRAPH_AUTH": "federated",
        "GRAPH_APP_CLIENT_ID": "x",
    }
    usgov = load_settings({**base, "GRAPH_CLOUD": "usgov"}, local_settings=None)
    assert usgov.graph_base_url == "https://graph.microsoft.us/v1.0"
    assert usgov.graph_authority_host == "https://login.microsoftonline.us"
    assert usgov.cloud.graph_scope == "https://graph.microsoft.us/.default"
    assert usgov.cloud.token_exchange_audience == "api://AzureADTokenExchangeUSGov"
    assert admin_consent_url(usgov, "t") == "https://login.microsoftonline.us/t/adminconsent?client_id=x"
    china = load_settings({**base, "GRAPH_CLOUD": "China"}, local_settings=None)
    assert china.graph_base_url == "https://microsoftgraph.chinacloudapi.cn/v1.0"
    assert china.graph_authority_host == "https://login.chinacloudapi.cn"
    assert china.cloud.token_exchange_audience == "api://AzureADTokenExchangeChina"
    dod = load_settings({**base, "GRAPH_CLOUD": "usgovdod"}, local_settings=None)
    assert dod.graph_base_url == "https://dod-graph.microsoft.us/v1.0"
    default = load_settings(base, local_settings=None)
    assert (
        default.graph_cloud is GraphCloud.GLOBAL
        and default.cloud.graph_scope == "https://graph.microsoft.com/.default"
    )
    with pytest.raises(SettingsError, match="GRAPH_CLOUD must be one of global, usgov, usgovdod, china"):
        load_settings({**base, "GRAPH_CLOUD": "mars"}, local_settings=None)


def test_the_demo_tenant_serves_its_own_token_authority() -> None:
    demo = load_settings(
        {"SYNC_STORAGE": "x", "GRAPH_AUTH": "demo", "GRAPH_BASE_URL": "http://127.0.0.1:7081/v1.0"},
        local_settings=None,
    )
    assert demo.graph_authority_host == "http://127.0.0.1:7081"
    assert (
        admin_consent_url(demo, "t")
        == f"http://127.0.0.1:7081/t/adminconsent?client_id={DEMO_GRAPH_APP_CLIENT_ID}"
    )


def test_retry_after_is_honoured_as_given_and_an_absurd_wait_fails_the_read() -> None:
    from sync.directory.errors import GraphUnavailable
    from sync.directory.transport import retry_after

    assert retry_after({"Retry-After": "90"}, 0) == 90.0  # not capped at a minute
    assert retry_after({"retry-after": "2"}, 3) == 2.0
    assert retry_after({}, 2) == 2.0  # no header: backoff
    with pytest.raises(GraphUnavailable, match="wait 3600 s"):
        retry_after({"Retry-After": "3600"}, 0)


def test_the_principal_header_is_trusted_only_behind_platform_auth_or_the_dev_setting_with_demo() -> None:
    assert not load_settings(BASE, local_settings=None).principal_header_trusted
    demo = {**BASE, "GRAPH_AUTH": "demo"}
    assert not load_settings(demo, local_settings=None).principal_header_trusted
    assert load_settings(
        {**demo, "DEV_TRUST_PRINCIPAL_HEADER": "true"}, local_settings=None
    ).principal_header_trusted
    assert load_settings(
        {**BASE, "WEBSITE_AUTH_ENABLED": "True"}, local_settings=None
    ).principal_header_trusted
    assert not load_settings(
        {**BASE, "WEBSITE_AUTH_ENABLED": "False"}, local_settings=None
    ).principal_header_trusted
    for auth in ("managed-identity", "default"):
        with pytest.raises(
            SettingsError, match="DEV_TRUST_PRINCIPAL_HEADER=true is allowed only with GRAPH_AUTH=demo"
        ):
            load_settings(
                {**BASE, "GRAPH_AUTH": auth, "DEV_TRUST_PRINCIPAL_HEADER": "true"}, local_settings=None
            )
    with pytest.raises(SettingsError, match="DEV_TRUST_PRINCIPAL_HEADER must be true or false"):
        load_settings({**demo, "DEV_TRUST_PRINCIPAL_HEADER": "yes please"}, local_settings=None)


def test_home_tenant_admin_roles_and_base_url_are_checked() -> None:
    settings = load_settings(
        {
            **BASE,
            "HOME_TENANT_ID": "AA8843FA-9556-4492-A1CB-79B096247291",
            "ADMIN_ROLE_IDS": " 62e90394-69f5-4237-9190-012177145e10 ,fdd7a751-b60b-444a-984c-02652fe8fa1c",
            "APP_BASE_URL": "https://sync.example.net/",
        },
        local_settings=None,
    )
    assert settings.home_tenant_id == "aa8843fa-9556-4492-a1cb-79b096247291"
    assert settings.admin_role_ids == {
        "62e90394-69f5-4237-9190-012177145e10",
        "fdd7a751-b60b-444a-984c-02652fe8fa1c",
    }
    assert settings.app_base_url == "https://sync.example.net"
    defaults = load_settings(BASE, local_settings=None)
    assert (
        defaults.home_tenant_id is None
        and len(defaults.admin_role_ids) == 4
        and defaults.app_base_url is None
    )
    for name, value in (
        ("HOME_TENANT_ID", "contoso.onmicrosoft.com"),
        ("ADMIN_ROLE_IDS", "Global Administrator"),
        ("APP_BASE_URL", "sync.example.net"),
        ("APP_BASE_URL", "https://sync.example.net/?x=1"),
    ):
        with pytest.raises(SettingsError, match=name):
            load_settings({**BASE, name: value}, local_settings=None)
