"""The page in a real browser: Debian's Chromium driven by Playwright (never a downloaded browser),
against the app in the dev host, on the session's Azurite and a demo Graph of this module's own."""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from azure.data.tables import TableClient
from playwright.sync_api import Browser, BrowserContext, Page, sync_playwright

from devtools.azurite import Azurite
from devtools.demo_tenant import DemoGraphServer, build_tenant
from devtools.demo_tenant import Tenant as DemoTenant
from devtools.host import SESSION_COOKIE, DevHost
from devtools.host.identities import CONTOSO_TENANT_ID
from shared.settings import reset_settings_cache
from shared.storage import TENANTS_TABLE

CHROMIUM = Path(os.environ.get("CHROMIUM_PATH", "/usr/bin/chromium"))
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
DOCS = Path(__file__).resolve().parents[2] / "docs"
# Fake, but shaped like the multi-tenant app id: the failed run's error then carries the consent link.
APP_CLIENT_ID = "0d5b7a4e-6a3c-4c07-9f3e-5b1f0c0de001"
# One tenant per test, built once for the module; the demo Graph serves them all (token per tenant).
TENANT_NAMES = ("unconsented", "flow", "held", "failure", "narrow", "undo", "choices")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Every test here is a browser test (`-m "not browser"` skips them); under pytest-xdist they
    share one worker, so the module's host, tenants and Chromium start once."""
    for item in items:
        if "tests/browser/" in str(item.path).replace(os.sep, "/"):
            item.add_marker(pytest.mark.browser)
            item.add_marker(pytest.mark.xdist_group("browser"))


@pytest.fixture(scope="module")
def browser_tenants() -> dict[str, DemoTenant]:
    """Fresh 300-user tenants, one per scenario, with GUIDs of their own (and one with 2,000 groups)."""
    tenants = {
        name: build_tenant(str(uuid.uuid4()), f"Browser {name.title()}", users=300, groups=20, seed=11)
        for name in TENANT_NAMES
    }
    tenants["big"] = build_tenant(str(uuid.uuid4()), "Browser Big", users=300, groups=2000, seed=5)
    # Contoso's own id: the dev host's Contoso Global Administrator signs in from this tenant.
    tenants["contoso"] = build_tenant(CONTOSO_TENANT_ID, "Contoso", users=300, groups=20, seed=11)
    return tenants


@pytest.fixture(scope="module")
def browser_graph(browser_tenants: dict[str, DemoTenant]) -> Iterator[DemoGraphServer]:
    """The demo Graph serving the module's tenants."""
    with DemoGraphServer(list(browser_tenants.values())) as server:
        yield server


@pytest.fixture(scope="module")
def dev_host(azurite: Azurite, browser_graph: DemoGraphServer) -> Iterator[DevHost]:
    """function_app in the dev host (HTTP on a free port, the queue worker fed from Azurite)."""
    settings = {
        "SYNC_STORAGE": azurite.connection_string,
        "AzureWebJobsStorage": azurite.connection_string,
        "SYNC_QUEUE": f"sync-ui-{uuid.uuid4().hex[:10]}",
        "NOTIFY_QUEUE": f"notify-ui-{uuid.uuid4().hex[:10]}",
        "SYNC_SCHEDULE": "0 0 2 * * *",
        "NOTIFY_RENEW_SCHEDULE": "0 30 */6 * * *",
        "GRAPH_AUTH": "demo",
        "GRAPH_BASE_URL": browser_graph.base_url,
        "GRAPH_APP_CLIENT_ID": APP_CLIENT_ID,
        "REMOVAL_GUARD_PERCENT": "10",
        "REMOVAL_GUARD_MIN_USERS": "20",
        "REMOVAL_GRACE_DAYS": "7",
    }
    reset_settings_cache()  # the product keeps its settings once read; these are the host's
    host = DevHost(port=0, settings=settings, local_settings=None, shutdown_grace=5.0)
    host.start_in_thread()
    yield host
    host.stop_thread()
    reset_settings_cache()


def dev_session(base_url: str, identity: str) -> str:
    """A Cookie header value for a dev session (the dev host's shortcut for scripts)."""
    request = urllib.request.Request(
        f"{base_url}/.auth/login/dev",
        data=json.dumps({"identity": identity}).encode(),
        method="POST",
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        cookie = str(json.load(response)["cookie"])
    assert cookie.startswith(f"{SESSION_COOKIE}=")
    return cookie


@dataclass
class Api:
    """Plain HTTP calls to the hosted app, signed in as the dev operator."""

    base_url: str
    cookie: str

    def call(
        self, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None
    ) -> tuple[int, Any]:
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(
            f"{self.base_url}/api/{path}",
            data=data,
            method=method,
            headers={"Content-Type": "application/json", "Cookie": self.cookie, **(headers or {})},
        )
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                raw = response.read()
                return response.status, json.loads(raw) if raw else None
        except urllib.error.HTTPError as exc:
            raw = exc.read()
            return exc.code, json.loads(raw) if raw else None

    def register(self, tenant: DemoTenant) -> None:
        status, body = self.call("PUT", f"tenants/{tenant.tenant_id}", {"displayName": tenant.display_name})
        assert status == 200, body

    def forget(self, azurite: Azurite, tenant_id: str) -> None:
        """Take a tenant off the shared `tenants` table (tests that start from an unregistered one)."""

        # The synchronous client: Playwright's sync API keeps an event loop running in this thread.
        with TableClient.from_connection_string(azurite.connection_string, TENANTS_TABLE) as table:
            table.delete_entity("tenants", tenant_id)


@pytest.fixture(scope="module")
def api(dev_host: DevHost) -> Api:
    """HTTP access to the app, for set-up the page does not do (registering a tenant)."""
    return Api(dev_host.base_url, dev_session(dev_host.base_url, "operator"))


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    """Headless Debian Chromium, one per module."""
    if not CHROMIUM.exists():
        pytest.fail(
            f"Chromium is not installed at {CHROMIUM}: `apt-get install -y chromium` "
            "(make test installs it when missing; no browser is ever downloaded)",
            pytrace=False,
        )
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@dataclass
class PageErrors:
    """Script errors and CSP refusals seen by the page: a test fails when there are any."""

    messages: list[str] = field(default_factory=list)


@pytest.fixture
def page_errors() -> PageErrors:
    return PageErrors()


def sign_in(page: Page, base_url: str, identity: str) -> None:
    """Sign in as App Service Authentication would have the user do it: the dev host's sign-in page."""
    page.goto(f"{base_url}/.auth/login/aad?post_login_redirect_uri=/.auth/me")
    page.locator(f'button[name="identity"][value="{identity}"]').click()
    page.wait_for_url(f"{base_url}/.auth/me")


def new_page(browser: Browser, page_errors: PageErrors) -> tuple[BrowserContext, Page]:
    """A fresh page at 1280x800 in a context of its own (no session), recording script errors and
    CSP violations."""
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    context.set_default_timeout(20_000)
    page = context.new_page()
    page.on("pageerror", lambda exc: page_errors.messages.append(f"page error: {exc}"))

    def on_console(message: Any) -> None:
        text = message.text
        if message.type == "error" and ("Content Security Policy" in text or "Refused to" in text):
            page_errors.messages.append(f"CSP: {text}")

    page.on("console", on_console)
    return context, page


@pytest.fixture
def page(browser: Browser, page_errors: PageErrors, dev_host: DevHost) -> Iterator[Page]:
    """A fresh page at 1280x800, signed in as the dev operator; fails the test on any script error
    or CSP violation."""
    context, page = new_page(browser, page_errors)
    sign_in(page, dev_host.base_url, "operator")
    yield page
    context.close()
    assert not page_errors.messages, page_errors.messages


@pytest.fixture
def anonymous_page(browser: Browser, page_errors: PageErrors) -> Iterator[Page]:
    """A fresh page nobody signed in to yet (sign in through the dev host's page, as a user would)."""
    context, page = new_page(browser, page_errors)
    yield page
    context.close()
    assert not page_errors.messages, page_errors.messages


@dataclass
class Screenshots:
    """Screenshots for the README: written to docs/ when missing or when UPDATE_SCREENSHOTS=1, else to a
    temporary folder (still taken, so the pages render; the committed pictures do not churn per run)."""

    scratch: Path

    def path(self, name: str) -> str:
        target = DOCS / name
        if os.environ.get("UPDATE_SCREENSHOTS") == "1" or not target.exists():
            DOCS.mkdir(exist_ok=True)
            return str(target)
        return str(self.scratch / name)


@pytest.fixture(scope="session")
def screenshots(tmp_path_factory: pytest.TempPathFactory) -> Screenshots:
    return Screenshots(tmp_path_factory.mktemp("screenshots"))


AXE = Path(__file__).resolve().parents[2] / "node_modules" / "axe-core" / "axe.min.js"
AXE_FAILS_ON = ("serious", "critical")


def assert_accessible(page: Page, context: str = "body") -> None:
    """axe-core (npm, pinned in package.json) over what the page shows now: no serious or critical
    violation. Evaluated through the DevTools protocol, so the page's own CSP stays as strict as it is."""
    if not AXE.exists():
        pytest.fail(f"axe-core is missing at {AXE}: run `npm ci`", pytrace=False)
    if not page.evaluate("() => typeof window.axe === 'object'"):
        page.evaluate(AXE.read_text(encoding="utf-8"))
    found = page.evaluate(
        """async (context) => {
            const result = await window.axe.run(document.querySelector(context) || document,
              { resultTypes: ["violations"] });
            return result.violations.map((v) => ({ id: v.id, impact: v.impact, help: v.help,
              nodes: v.nodes.slice(0, 5).map((n) => n.target.join(" ")) }));
        }""",
        context,
    )
    bad = [v for v in found if v["impact"] in AXE_FAILS_ON]
    assert not bad, "accessibility (axe-core): " + json.dumps(bad, indent=1)
