"""The "Sync by O365 Groups" page as an admin uses it, in headless Chromium against the hosted app:
pick groups, save, watch the refresh, read the roster; remove a group and confirm the removals;
approve a run the removal guard held; see why a run failed. Each step waits for what the page
shows, never for a fixed time."""

from __future__ import annotations

import re
import uuid

from playwright.sync_api import Page, expect

from devtools.azurite import Azurite
from devtools.demo_tenant import DemoGraphServer
from devtools.demo_tenant import Tenant as DemoTenant
from devtools.host import DevHost
from devtools.host.identities import DEV_IDENTITIES, PARTNER_TENANT_ID
from tests.browser.conftest import APP_CLIENT_ID, Api, Screenshots, assert_accessible, sign_in
from tests.oracle import expected_roster

RUN_TIMEOUT = 30_000  # ms: a preview plus a refresh of a 300-user tenant take a few seconds
DONE = "Done: the users are up to date."
FIRST_PAGE = "Users 1\u2013100, more on the next page."


def open_page(page: Page, host: DevHost, tenant: DemoTenant) -> None:
    page.goto(f"{host.base_url}/api/ui?tenant={tenant.tenant_id}")
    expect(page.get_by_role("heading", name="Sync by O365 Groups", level=1)).to_be_visible()
    expect(page.locator("#groups-status")).to_contain_text("groups shown")


def group_id(tenant: DemoTenant, name: str) -> str:
    return next(g.id for g in tenant.groups.values() if g.display_name == name)


def kind_label(tenant: DemoTenant, gid: str) -> str:
    """How the page should label a group's kind, read off the demo group's raw flags."""
    group = tenant.groups[gid]
    if "Unified" in group.group_types:
        return "Microsoft 365"
    if group.security_enabled:
        return "Mail-enabled security" if group.mail_enabled else "Security"
    return "Distribution list"


def search_groups(page: Page, text: str) -> None:
    page.get_by_label("Search groups").fill(text)
    # Debounced: the list is replaced once the search answers; every row then matches the words.
    rows = page.locator("#group-list li label")
    expect(page.locator("#groups-status")).to_contain_text("shown")
    for word in text.lower().split():
        expect(rows.filter(has_not_text=re.compile(re.escape(word), re.IGNORECASE))).to_have_count(0)


def save_and_wait(page: Page) -> None:
    page.get_by_role("button", name="Save", exact=True).click()
    expect(page.locator("#action-status")).to_have_text(DONE, timeout=RUN_TIMEOUT)


def roster_ids(page: Page, count: int) -> set[str]:
    """The user ids in the roster table once it shows `count` users on one page."""
    expect(page.locator("#roster-summary")).to_have_text(f"{count} user{'' if count == 1 else 's'}.")
    return set(page.locator("#roster-body tr").evaluate_all("rows => rows.map(r => r.dataset.userId)"))


def scroll_to(page: Page, selector: str) -> None:
    page.locator(selector).evaluate("element => element.scrollIntoView({block: 'start'})")


def count_of(page: Page, label: str) -> int:
    item = page.locator("#run-view .count-item").filter(
        has=page.locator("dt", has_text=re.compile(f"^{label}$"))
    )
    return int(item.locator("dd").inner_text())


def test_an_unregistered_tenant_gets_the_command_that_adds_it(page: Page, dev_host: DevHost) -> None:
    missing = str(uuid.uuid4())
    page.goto(f"{dev_host.base_url}/api/ui?tenant={missing}")
    notice = page.locator("#no-tenant")
    expect(notice).to_contain_text(f"Tenant {missing} is not registered.")
    expect(notice.locator("pre")).to_have_text(
        f'.venv/bin/python -m sync tenant add {missing} --name "ORGANIZATION NAME"'
    )
    expect(page.locator("#app")).to_be_hidden()
    expect(page.locator("#tenant-picker")).to_be_hidden()  # no empty picker
    expect(page.locator("body")).not_to_contain_text("Contoso")  # no name of anybody else's
    assert_accessible(page)


def test_select_save_refresh_then_remove_a_group(
    page: Page, dev_host: DevHost, api: Api, browser_tenants: dict[str, DemoTenant], screenshots: Screenshots
) -> None:
    tenant = browser_tenants["flow"]
    api.register(tenant)
    sales, phoenix = group_id(tenant, "Dept - Sales"), group_id(tenant, "Project Phoenix - Core")
    open_page(page, dev_host, tenant)
    expect(page.locator("#selected-all")).to_contain_text("Sync all users")
    expect(page.locator("#connection-view")).to_contain_text("every required permission works")

    # Search, select, search again: the first choice is kept across searches.
    search_groups(page, "Dept")
    sales_box = page.get_by_role("checkbox", name="Dept - Sales", exact=True)
    sales_row = page.locator("#group-list li").filter(has=sales_box)
    expect(sales_row.locator(".badge")).to_have_text(kind_label(tenant, sales))
    expect(sales_row.locator(".count")).to_have_text(f"{len(tenant.transitive_user_ids(sales))} members")
    sales_box.check()
    search_groups(page, "Phoenix")
    page.get_by_role("checkbox", name="Project Phoenix - Core", exact=True).check()
    search_groups(page, "Dept")
    expect(page.get_by_role("checkbox", name="Dept - Sales", exact=True)).to_be_checked()
    selected = page.locator("#selected-list li")
    expect(selected).to_have_text([re.compile("Dept - Sales"), re.compile("Project Phoenix - Core")])
    expect(page.locator("#selected-all")).to_be_hidden()
    expect(page.locator("#selected-state")).to_contain_text("Unsaved changes")
    page.get_by_label("Search groups").fill("")
    expect(page.locator("#groups-status")).to_have_text("20 groups shown.")
    page.get_by_label("Search groups").blur()
    page.screenshot(path=screenshots.path("page-groups.png"))

    # Save: the preview finds nothing to remove, the selection is saved and its refresh followed.
    save_and_wait(page)
    both = expected_roster(tenant, [sales, phoenix])
    expect(page.locator("#run-view")).to_contain_text("Refresh after saving the selection")
    expect(page.locator("#run-view .steps li[aria-current=step]")).to_have_text("Succeeded")
    assert count_of(page, "Added") == len(both)
    assert count_of(page, "Eligible") == len(both)
    per_group = page.locator("#run-view table.per-group tbody tr")
    expect(per_group).to_have_count(2)
    expect(page.locator("#run-view ul.excluded")).to_contain_text("Service accounts")
    expect(page.locator("#run-view .facts")).to_contain_text("Graph requests:")
    expect(page.locator("#selected-state")).to_contain_text("Saved by")
    assert roster_ids(page, len(both)) == set(both)
    scroll_to(page, "#run-heading")
    page.screenshot(path=screenshots.path("page-run-result.png"))

    # Why? for a row, then the free box for a user outside the selected groups.
    first = page.locator("#roster-body tr").first
    first.get_by_role("button", name=re.compile("^Why")).click()
    expect(page.locator("#explain-result .verdict")).to_have_text("Included: this user is synced.")
    outsider = next(
        u for u in tenant.users.values() if u.id in expected_roster(tenant, None) and u.id not in both
    )
    page.get_by_label("Why is this user not synced?").fill(outsider.user_principal_name)
    page.get_by_role("button", name="Explain").click()
    expect(page.locator("#explain-result .verdict")).to_have_text("Not included: this user is not synced.")
    expect(page.locator("#explain-result .reasons")).to_contain_text("notInSelectedGroups")

    # Deselect Phoenix: the preview lists who would go; confirming applies it.
    page.get_by_role("button", name="Remove Project Phoenix - Core").click()
    expect(page.get_by_role("checkbox", name="Project Phoenix - Core", exact=True)).not_to_be_checked()
    page.get_by_role("button", name="Save", exact=True).click()
    dialog = page.get_by_role("dialog")
    sales_only = expected_roster(tenant, [sales])
    gone = set(both) - set(sales_only)
    expect(dialog).to_be_visible(timeout=RUN_TIMEOUT)
    expect(dialog.locator("#confirm-title")).to_have_text(f"Remove {len(gone)} users from the platform?")
    expect(dialog.locator("#confirm-summary")).to_contain_text(f"add 0 users and remove {len(gone)} users")
    names = dialog.locator("#confirm-list li")
    expect(names).to_have_count(len(gone))
    for uid in gone:
        expect(names.filter(has_text=f"({tenant.users[uid].user_principal_name})")).to_have_count(1)
    dialog.get_by_role("button", name="Confirm").click()
    expect(dialog).to_be_hidden()
    expect(page.locator("#action-status")).to_have_text(DONE, timeout=RUN_TIMEOUT)
    assert count_of(page, "Removed") == len(gone)
    assert roster_ids(page, len(sales_only)) == set(sales_only)
    page.get_by_label("Status", exact=True).select_option("removed")
    assert roster_ids(page, len(gone)) == gone
    expect(page.locator("#roster-body .badge").first).to_contain_text("Removed")


def test_cancel_stale_save_keyboard_and_narrow_window(
    page: Page, dev_host: DevHost, api: Api, browser_tenants: dict[str, DemoTenant], screenshots: Screenshots
) -> None:
    tenant = browser_tenants["narrow"]
    api.register(tenant)
    sales = group_id(tenant, "Dept - Sales")
    status, _ = api.call(
        "PUT", f"tenants/{tenant.tenant_id}/selection", {"mode": "groups", "groupIds": [sales]}
    )
    assert status == 200
    dev_host.wait_idle_sync()
    open_page(page, dev_host, tenant)
    expect(page.locator("#selected-list li")).to_have_text([re.compile("Dept - Sales")])

    # Keyboard only: search, tab to the first match, space to select it.
    page.get_by_label("Search groups").focus()
    page.keyboard.type("Singapore")
    expect(page.locator("#group-list li")).to_have_count(1)
    page.keyboard.press("Tab")
    expect(page.get_by_role("checkbox", name="Office - Singapore")).to_be_focused()
    page.keyboard.press("Space")
    expect(page.locator("#selected-list li")).to_have_count(2)

    # Deselecting Sales would remove people; Escape cancels and nothing is saved.
    page.get_by_role("button", name="Remove Dept - Sales").click()
    page.get_by_role("button", name="Save", exact=True).click()
    expect(page.get_by_role("dialog")).to_be_visible(timeout=RUN_TIMEOUT)
    page.keyboard.press("Escape")
    expect(page.get_by_role("dialog")).to_be_hidden()
    expect(page.locator("#action-status")).to_contain_text("Not saved: cancelled")
    status, saved = api.call("GET", f"tenants/{tenant.tenant_id}/selection")
    assert [g["id"] for g in saved["groups"]] == [sales]

    # Someone else saves meanwhile: this page's save is refused with a clear message.
    status, _ = api.call(
        "PUT", f"tenants/{tenant.tenant_id}/selection", {"mode": "groups", "groupIds": [sales]}
    )
    assert status == 200
    dev_host.wait_idle_sync()
    page.get_by_role("checkbox", name="Office - Singapore").uncheck()
    page.get_by_role("button", name="Save", exact=True).click()
    alert = page.get_by_role("alert")
    expect(alert).to_contain_text("Someone else changed the selection; reload", timeout=RUN_TIMEOUT)
    alert.get_by_role("button", name="Reload the selection").click()
    expect(page.locator("#selected-list li")).to_have_text([re.compile("Dept - Sales")])
    expect(page.locator("#selected-state")).to_contain_text("Saved by")

    # A narrow window stacks the panels and never scrolls sideways.
    page.set_viewport_size({"width": 400, "height": 800})
    groups_box = page.locator(".groups-panel").bounding_box()
    selected_box = page.locator(".selected-panel").bounding_box()
    assert groups_box and selected_box and selected_box["y"] >= groups_box["y"] + groups_box["height"]
    assert page.evaluate("document.documentElement.scrollWidth") <= 400
    page.get_by_label("Search groups").fill("Dept")
    expect(page.locator("#group-list li")).to_have_count(4)
    page.evaluate("window.scrollTo(0, 0)")
    page.screenshot(path=screenshots.path("page-narrow.png"))


def test_one_confirmation_applies_a_big_removal_and_approve_asks_before_it_removes(
    page: Page, dev_host: DevHost, api: Api, browser_tenants: dict[str, DemoTenant], screenshots: Screenshots
) -> None:
    tenant = browser_tenants["held"]
    api.register(tenant)
    open_page(page, dev_host, tenant)

    # Nothing selected: Save syncs every eligible user (mode all).
    save_and_wait(page)
    everyone = expected_roster(tenant, None)
    assert count_of(page, "Added") == len(everyone)
    expect(page.locator("#roster-summary")).to_have_text(FIRST_PAGE)

    # One small group: nearly everyone would go. The dialog lists them; confirming applies exactly
    # those removals (the removal guard does not ask a second time).
    small = tenant.landmarks.nested_chain[-1]
    search_groups(page, tenant.groups[small].display_name)
    page.get_by_role("checkbox", name=tenant.groups[small].display_name, exact=True).check()
    page.get_by_role("button", name="Save", exact=True).click()
    dialog = page.get_by_role("dialog")
    kept = expected_roster(tenant, [small])
    removing = len(everyone) - len(kept)
    expect(dialog.locator("#confirm-title")).to_have_text(
        f"Remove {removing} users from the platform?", timeout=RUN_TIMEOUT
    )
    expect(dialog.locator("#confirm-list li")).to_have_count(min(removing, 200))
    if removing > 200:
        expect(dialog).to_contain_text(f"…and {removing - 200} more not listed.")
    assert_accessible(page, "#confirm-dialog")
    dialog.get_by_role("button", name="Confirm").click()
    expect(page.locator("#action-status")).to_have_text(DONE, timeout=RUN_TIMEOUT)
    assert count_of(page, "Removed") == removing
    expect(page.locator("#run-view .approved")).to_contain_text("Removals approved by operator@")
    assert roster_ids(page, len(kept)) == set(kept)

    # Back to everyone, then two held runs made elsewhere (the API, no confirmation): only the newer
    # one can be approved, and Approve asks first, naming the count.
    status, _ = api.call("PUT", f"tenants/{tenant.tenant_id}/selection", {"mode": "all"})
    assert status == 200
    dev_host.wait_idle_sync()
    status, _ = api.call(
        "PUT", f"tenants/{tenant.tenant_id}/selection", {"mode": "groups", "groupIds": [small]}
    )
    assert status == 200
    dev_host.wait_idle_sync()
    status, _ = api.call("POST", f"tenants/{tenant.tenant_id}/refresh", {})
    dev_host.wait_idle_sync()
    page.reload()
    runs = page.locator("#run-list .run-item.run-held")
    expect(runs).to_have_count(2)
    expect(runs.nth(0).get_by_role("button", name=re.compile("^Approve removals"))).to_have_count(1)
    expect(runs.nth(1).get_by_role("button", name=re.compile("^Approve removals"))).to_have_count(0)
    expect(runs.nth(1)).to_contain_text("Replaced by a newer held run")
    held = page.locator("#run-view .run-held")
    expect(held).to_be_visible()
    expect(held.locator(".guard-text")).to_contain_text("approve")
    expect(page.locator("#roster-summary")).to_have_text(FIRST_PAGE)  # untouched
    scroll_to(page, "#run-heading")
    page.screenshot(path=screenshots.path("page-held-run.png"))
    assert_accessible(page)

    held.get_by_role("button", name=re.compile("^Approve removals")).click()
    expect(dialog.locator("#confirm-title")).to_have_text(f"Approve removing {removing} users?")
    page.keyboard.press("Escape")
    expect(page.locator("#action-status")).to_contain_text("Not approved: cancelled")
    held.get_by_role("button", name=re.compile("^Approve removals")).click()
    dialog.get_by_role("button", name="Confirm").click()
    expect(page.locator("#action-status")).to_have_text(DONE, timeout=RUN_TIMEOUT)
    expect(page.locator("#run-view")).to_contain_text("Approved removals")
    assert count_of(page, "Removed") == removing
    assert roster_ids(page, len(kept)) == set(kept)
    approved = page.locator("#run-list .run-item").filter(
        has=page.locator(".badge", has_text=re.compile("^Approved$"))
    )
    expect(approved).to_have_count(1)  # the held run approved: who and when, not just "Superseded"
    expect(approved.locator(".approved")).to_contain_text(re.compile(r"^Approved by operator@\S+ at \S"))


def test_removals_are_undone_from_the_run_history(
    page: Page, dev_host: DevHost, api: Api, browser_tenants: dict[str, DemoTenant]
) -> None:
    tenant = browser_tenants["undo"]
    api.register(tenant)
    sales, phoenix = group_id(tenant, "Dept - Sales"), group_id(tenant, "Project Phoenix - Core")
    status, _ = api.call(
        "PUT", f"tenants/{tenant.tenant_id}/selection", {"mode": "groups", "groupIds": [sales, phoenix]}
    )
    assert status == 200
    dev_host.wait_idle_sync()
    open_page(page, dev_host, tenant)
    both = expected_roster(tenant, [sales, phoenix])
    sales_only = expected_roster(tenant, [sales])
    gone = set(both) - set(sales_only)
    assert roster_ids(page, len(both)) == set(both)

    # Deselect Phoenix and confirm: the run removes the Phoenix-only users.
    page.get_by_role("button", name="Remove Project Phoenix - Core").click()
    page.get_by_role("button", name="Save", exact=True).click()
    dialog = page.get_by_role("dialog")
    expect(dialog).to_be_visible(timeout=RUN_TIMEOUT)
    dialog.get_by_role("button", name="Confirm").click()
    expect(page.locator("#action-status")).to_have_text(DONE, timeout=RUN_TIMEOUT)
    assert roster_ids(page, len(sales_only)) == set(sales_only)

    # Undo from the history: the dialog says how many come back and that a refresh removes them again.
    removing_run = page.locator("#run-list .run-item").first
    expect(removing_run).to_contain_text(f"{len(gone)} removed")
    removing_run.get_by_role("button", name=re.compile("^Undo removals")).click()
    expect(dialog).to_be_visible()
    expect(dialog.locator("#confirm-title")).to_have_text(f"Restore {len(gone)} users to the platform?")
    expect(dialog.locator("#confirm-hint")).to_contain_text("The next refresh removes them again")
    expect(dialog.locator("#confirm-list li")).to_have_count(len(gone))
    dialog.get_by_role("button", name="Confirm").click()
    expect(dialog).to_be_hidden()
    expect(page.locator("#action-status")).to_contain_text(f"Undone: {len(gone)} users active again")
    expect(page.locator("#run-view")).to_contain_text("Undo of removals")
    assert count_of(page, "Restored") == len(gone)
    assert roster_ids(page, len(both)) == set(both)
    runs = page.locator("#run-list .run-item")
    expect(runs.first).to_contain_text("Undo of removals")
    expect(runs.first).to_contain_text(f"{len(gone)} restored")
    expect(runs.nth(1)).to_contain_text("Removals undone.")
    expect(page.get_by_role("button", name=re.compile("^Undo removals"))).to_have_count(0)
    # Why? for a user the undo put back: on the platform now, the rules would remove them again.
    back = next(iter(gone))
    page.get_by_label("Why is this user not synced?").fill(tenant.users[back].user_principal_name)
    page.get_by_role("button", name="Explain").click()
    result = page.locator("#explain-result")
    expect(result.locator(".verdict")).to_have_text("Not included: this user is not synced.")
    expect(result).to_contain_text("On the platform now (active).")
    expect(result.locator(".note")).to_contain_text("the next refresh removes them again")


def test_the_favicon_and_the_optional_exclusions(
    page: Page, dev_host: DevHost, api: Api, browser_tenants: dict[str, DemoTenant]
) -> None:
    icon = page.request.get(f"{dev_host.base_url}/favicon.ico")
    assert (
        icon.status == 200
        and icon.headers["content-type"] == "image/x-icon"
        and icon.body()[:4] == b"\0\0\1\0"
    )
    tenant = browser_tenants["choices"]
    api.register(tenant)
    open_page(page, dev_host, tenant)
    link = page.locator('link[rel="icon"]')
    expect(link).to_have_attribute("href", "ui/favicon.ico")
    save_and_wait(page)  # mode all: the service accounts are counted
    service = page.get_by_label("Exclude service accounts", exact=False)
    expect(service).to_be_checked()
    expect(page.locator("#choice-service-count")).to_contain_text(re.compile(r"Currently catches \d+ user"))
    before = count_of(page, "Eligible")
    service.uncheck()
    page.get_by_role("button", name="Save these choices").click()
    expect(page.locator("#choices-status")).to_have_text("Saved and applied.", timeout=RUN_TIMEOUT)
    assert count_of(page, "Eligible") > before  # the service accounts are synced now
    expect(page.locator("#choice-service-count")).to_contain_text("Off:")
    service.check()  # turning it back on removes them: one confirmation naming how many
    page.get_by_role("button", name="Save these choices").click()
    expect(page.get_by_role("dialog").locator("#confirm-title")).to_have_text("Exclude service accounts?")
    page.get_by_role("dialog").get_by_role("button", name="Confirm").click()
    expect(page.locator("#choices-status")).to_have_text("Saved and applied.", timeout=RUN_TIMEOUT)
    assert count_of(page, "Eligible") == before
    assert_accessible(page)


def test_a_failed_run_shows_the_missing_permission_and_the_consent_link(
    page: Page,
    dev_host: DevHost,
    api: Api,
    browser_tenants: dict[str, DemoTenant],
    browser_graph: DemoGraphServer,
) -> None:
    tenant = browser_tenants["failure"]
    api.register(tenant)
    open_page(page, dev_host, tenant)
    search_groups(page, "Sales")
    page.get_by_role("checkbox", name="Dept - Sales", exact=True).check()
    save_and_wait(page)
    before = roster_ids(page, len(expected_roster(tenant, [group_id(tenant, "Dept - Sales")])))

    fault = browser_graph.add_fault(403, r"/groups/[^/]+/transitiveMembers", tenant_id=tenant.tenant_id)
    try:
        page.get_by_role("button", name="Refresh Users Now").click()
        error = page.locator("#run-view .run-error")
        expect(error).to_be_visible(timeout=RUN_TIMEOUT)
        expect(error).to_contain_text("GroupMember.Read.All")
        # The demo tenant serves Entra's admin-consent endpoint beside its Graph (GRAPH_AUTHORITY_HOST).
        consent = f"{browser_graph.root_url}/{tenant.tenant_id}/adminconsent?client_id={APP_CLIENT_ID}"
        expect(error.get_by_role("link", name=consent)).to_have_attribute("href", consent)
        expect(page.get_by_role("alert")).to_contain_text("GroupMember.Read.All")
        expect(page.locator("#run-live")).to_contain_text("failed")
        expect(page.locator("#run-list .badge").first).to_have_text("Failed")
    finally:
        browser_graph.remove_fault(fault)
    assert roster_ids(page, len(before)) == before  # nothing removed on partial knowledge

    # Groups not appearing: the list says so, the Connection panel names the missing permission.
    fault = browser_graph.add_fault(403, r"^/groups$", tenant_id=tenant.tenant_id)
    try:
        page.reload()
        expect(page.locator("#groups-status")).to_have_text("The groups could not be loaded.")
        expect(page.get_by_role("alert")).to_contain_text("GroupMember.Read.All")
        expect(page.locator("#trouble-groups")).to_have_attribute("open", "")
        connection = page.locator("#connection-view")
        expect(connection).to_contain_text("Missing permissions")
        row = connection.locator("tr", has=page.get_by_role("rowheader", name="GroupMember.Read.All"))
        expect(row.first.locator(".badge")).to_have_text("missing")
        expect(connection.get_by_role("link", name=consent)).to_be_visible()
        expect(page.get_by_role("row", name=re.compile("^User.Read.All")).locator(".badge")).to_have_text(
            "ok"
        )
    finally:
        browser_graph.remove_fault(fault)
    page.get_by_role("button", name="Check again").click()
    expect(page.locator("#connection-view")).to_contain_text("every required permission works")


def test_two_thousand_groups_page_with_load_more(
    page: Page, dev_host: DevHost, api: Api, browser_tenants: dict[str, DemoTenant]
) -> None:
    tenant = browser_tenants["big"]
    api.register(tenant)
    open_page(page, dev_host, tenant)
    status = page.locator("#groups-status")
    expect(status).to_have_text("100 of 2,000 groups shown; more to load below.")
    more = page.get_by_role("button", name="Load more groups")
    more.click()
    expect(status).to_have_text("200 of 2,000 groups shown; more to load below.")
    boxes = page.locator("#group-list input[type=checkbox]")
    expect(boxes).to_have_count(200)
    picked = boxes.nth(150)
    name = page.locator("#group-list label").nth(150).inner_text()
    picked.check()
    expect(page.locator("#selected-list li")).to_have_text([re.compile(re.escape(name))])
    more.click()
    expect(status).to_have_text("300 of 2,000 groups shown; more to load below.")
    expect(page.get_by_role("checkbox", name=name, exact=True)).to_be_checked()  # kept across pages
    group_list = page.locator("#group-list")
    group_list.evaluate("list => { list.scrollTop = list.scrollHeight; }")
    assert group_list.evaluate("list => list.scrollTop") > 0
    page.get_by_label("Search groups").fill("Engineering")  # 100 of the matches fill the list again
    expect(status).to_have_text(re.compile(r"^100 of \d[\d,]* groups shown; more to load below\.$"))
    assert group_list.evaluate("list => list.scrollTop") == 0  # a new search starts at the top
    page.get_by_label("Search groups").fill(name)
    expect(page.get_by_role("checkbox", name=name, exact=True)).to_be_checked()  # and across searches
    page.get_by_label("Search groups").fill("")
    expect(status).to_have_text("100 of 2,000 groups shown; more to load below.")
    expect(page.locator("#selected-list li")).to_have_text([re.compile(re.escape(name))])


def test_an_unconsented_tenant_shows_the_consent_link_in_the_connection_panel(
    page: Page,
    dev_host: DevHost,
    api: Api,
    browser_tenants: dict[str, DemoTenant],
    browser_graph: DemoGraphServer,
) -> None:
    tenant = browser_tenants["unconsented"]
    browser_graph.set_consent(tenant.tenant_id, "none")  # the app was never granted consent there
    api.register(tenant)
    page.goto(f"{dev_host.base_url}/api/ui?tenant={tenant.tenant_id}")
    panel = page.locator("#connection-view")
    expect(panel).to_contain_text(
        "Not connected: the app has no admin consent in this tenant", timeout=RUN_TIMEOUT
    )
    expect(panel).to_contain_text("AADSTS700016")
    consent = f"{browser_graph.root_url}/{tenant.tenant_id}/adminconsent?client_id={APP_CLIENT_ID}"
    expect(panel.get_by_role("link", name="Grant admin consent")).to_have_attribute("href", consent)
    expect(page.locator("#group-list")).not_to_contain_text("Dept - Sales")  # nothing read, no 500 shown

    # Reconnect: the same admin-consent round trip, back to a connected tenant.
    page.reload()
    expect(page.locator("#tenant-select")).to_contain_text("not connected")  # marked on the record
    panel.get_by_role("button", name="Reconnect").click()
    expect(page.get_by_role("heading", name="Permissions requested")).to_be_visible()
    page.get_by_role("button", name="Accept").click()
    expect(page.locator("#consent-result")).to_contain_text("Microsoft 365 is connected")
    expect(panel).to_contain_text("every required permission works", timeout=RUN_TIMEOUT)
    expect(page.locator("#tenant-select")).not_to_contain_text("not connected")


def test_a_customer_admin_signs_in_and_connects_microsoft_365(
    anonymous_page: Page,
    dev_host: DevHost,
    api: Api,
    azurite: Azurite,
    browser_tenants: dict[str, DemoTenant],
    browser_graph: DemoGraphServer,
    screenshots: Screenshots,
) -> None:
    page, tenant = anonymous_page, browser_tenants["contoso"]
    api.forget(azurite, tenant.tenant_id)  # not connected yet
    browser_graph.set_consent(tenant.tenant_id, "none")  # and the app was never consented there
    # Not signed in: the page says so and offers App Service Authentication's sign-in.
    page.goto(f"{dev_host.base_url}/api/ui")
    signed_out = page.locator("#signed-out")
    expect(signed_out).to_be_visible()
    page.get_by_role("link", name="Sign in").first.click()
    page.locator('button[name="identity"][value="contoso-admin"]').click()  # the dev sign-in page

    # Signed in as Contoso's Global Administrator: nothing to see yet, Connect Microsoft 365.
    expect(page.locator("#who")).to_contain_text("it.admin@contoso.com")
    expect(page.locator("#who")).to_contain_text("administrator of your organization")
    notice = page.locator("#no-tenant")
    expect(notice).to_contain_text("Your organization is not connected yet")
    expect(page.locator("#app")).to_be_hidden()
    notice.get_by_role("button", name="Connect Microsoft 365").click()

    # Entra's admin-consent page (the demo tenant's): the permissions, Accept.
    expect(page.get_by_role("heading", name="Permissions requested")).to_be_visible()
    assert page.url.startswith(f"{browser_graph.root_url}/{tenant.tenant_id}/adminconsent?")
    page.get_by_role("button", name="Accept").click()

    # Back on the page: connected, the tenant registered and shown, the Connection panel green.
    expect(page.locator("#consent-result")).to_contain_text("Microsoft 365 is connected")
    expect(page).to_have_url(f"{dev_host.base_url}/api/ui?tenant={tenant.tenant_id}")
    expect(page.locator("#tenant-select option")).to_have_count(1)
    expect(page.locator("#tenant-select")).to_contain_text("contoso.com")
    expect(page.locator("#connection-view")).to_contain_text(
        "every required permission works", timeout=RUN_TIMEOUT
    )
    expect(page.locator("#groups-status")).to_contain_text("groups shown")
    expect(page.get_by_role("button", name="Connect Microsoft 365")).to_be_hidden()
    # Changes are recorded under the admin's name and ids, and shown in the run history.
    page.get_by_role("button", name="Refresh Users Now").click()
    expect(page.locator("#action-status")).to_have_text(DONE, timeout=RUN_TIMEOUT)
    by = page.locator("#run-list .run-by").first
    expect(by).to_have_text("by it.admin@contoso.com")
    expect(by).to_have_attribute(
        "title", re.compile(rf"^it\.admin@contoso\.com \(tid {tenant.tenant_id}, oid ")
    )
    page.screenshot(path=screenshots.path("page-connected.png"), full_page=False)


def test_the_other_tenants_admin_and_a_plain_user_see_nothing_of_it(
    anonymous_page: Page, dev_host: DevHost, api: Api, browser_tenants: dict[str, DemoTenant]
) -> None:
    page, tenant = anonymous_page, browser_tenants["flow"]
    api.register(tenant)
    sign_in(page, dev_host.base_url, "fabrikam-admin")
    page.goto(f"{dev_host.base_url}/api/ui?tenant={tenant.tenant_id}")
    notice = page.locator("#no-tenant")
    expect(notice).to_contain_text(f"Tenant {tenant.tenant_id} is not registered, or not one you may see.")
    expect(page.locator("#app")).to_be_hidden()
    # Its own tenant is not connected: it is offered Connect for Fabrikam only.
    expect(notice.get_by_role("button", name="Connect Microsoft 365")).to_be_visible()
    sign_in(page, dev_host.base_url, "contoso-user")
    page.goto(f"{dev_host.base_url}/api/ui")
    expect(page.locator("#no-tenant")).to_contain_text("no administrator role")
    expect(page.get_by_role("button", name="Connect Microsoft 365")).to_have_count(0)


def test_a_partner_sees_the_tenants_an_operator_granted(
    anonymous_page: Page, dev_host: DevHost, api: Api, browser_tenants: dict[str, DemoTenant]
) -> None:
    page = anonymous_page
    granted = [browser_tenants["flow"], browser_tenants["held"]]
    for tenant in granted:
        api.register(tenant)
    partner = next(i for i in DEV_IDENTITIES if i.key == "partner")
    status, body = api.call(
        "PUT",
        f"grants/{PARTNER_TENANT_ID}/{partner.object_id}",
        {"kind": "user", "tenants": [t.tenant_id for t in granted], "name": partner.user_principal_name},
    )
    assert status == 200, body
    try:
        sign_in(page, dev_host.base_url, "partner")
        page.goto(f"{dev_host.base_url}/api/ui")
        expect(page.locator("#who")).to_contain_text("partner")
        options = page.locator("#tenant-select option")
        expect(options).to_have_count(2)
        assert {o.get_attribute("value") for o in options.all()} == {t.tenant_id for t in granted}
        expect(page.locator("#groups-status")).to_contain_text("groups shown")
    finally:
        api.call("DELETE", f"grants/{PARTNER_TENANT_ID}/{partner.object_id}", {})


def tab_to(page: Page, selector: str, *, backwards: bool = False, limit: int = 400) -> None:
    """Press Tab (or Shift+Tab) until the element `selector` names has the focus, as a keyboard user."""
    for _ in range(limit):
        if page.evaluate("(s) => document.activeElement === document.querySelector(s)", selector):
            return
        page.keyboard.press("Shift+Tab" if backwards else "Tab")
    raise AssertionError(f"{selector} never took the focus after {limit} presses of Tab")


def test_the_seed_procedure_and_its_three_troubleshooting_questions_by_keyboard(
    anonymous_page: Page,
    dev_host: DevHost,
    api: Api,
    browser_tenants: dict[str, DemoTenant],
    browser_graph: DemoGraphServer,
) -> None:
    """A customer admin does the product page's procedure with the keyboard alone, one confirmation
    per change, then answers "Groups not appearing", "Members not syncing" and "User count mismatch"
    from the page alone; axe-core finds no serious issue on the way."""
    page, tenant = anonymous_page, browser_tenants["contoso"]
    browser_graph.set_consent(tenant.tenant_id, "granted")
    api.register(tenant)
    status, _ = api.call("PUT", f"tenants/{tenant.tenant_id}/selection", {"mode": "all"})
    assert status == 200
    dev_host.wait_idle_sync()
    everyone = expected_roster(tenant, None)
    sign_in(page, dev_host.base_url, "contoso-admin")
    page.goto(f"{dev_host.base_url}/api/ui")
    expect(page.locator("#groups-status")).to_contain_text("groups shown")
    expect(page.locator("#notify-mode")).to_contain_text("Sync mode:")
    assert_accessible(page)
    status, listed = api.call("GET", "tenants")
    shown = next(t for t in listed["value"] if t["id"] == tenant.tenant_id)
    if shown.get("notifyMode"):  # as GET /api/tenants says it, with why when not within a minute
        expect(page.locator("#notify-mode")).to_contain_text(f"Sync mode: {shown['notifyMode']}.")
        if shown["notifyMode"] != "realtime" and shown.get("notifyDetail"):
            expect(page.locator("#notify-mode")).to_contain_text(shown["notifyDetail"])

    # 1-4: the groups with checkboxes; search (quotes and all) and pick "All Staff" by keyboard.
    page.keyboard.press("Tab")
    expect(page.get_by_role("link", name="Skip to the groups")).to_be_focused()
    page.keyboard.press("Enter")
    tab_to(page, "#group-search")
    page.keyboard.type('"All Staff"')
    expect(page.locator("#group-list li")).to_have_count(1)
    expect(page.get_by_role("alert")).to_be_empty()  # quotes are words, not a broken query
    page.keyboard.press("Tab")
    expect(page.get_by_role("checkbox", name="All Staff", exact=True)).to_be_focused()
    page.keyboard.press("Space")
    # 5: the Selected Groups on the right.
    expect(page.locator("#selected-list li")).to_have_text([re.compile("All Staff")])

    # Save: one dialog lists who goes; Confirm applies exactly those (no second approval).
    big = tenant.landmarks.big_group_id
    kept = expected_roster(tenant, [big])
    removing = len(everyone) - len(kept)
    tab_to(page, "#save")
    page.keyboard.press("Enter")
    dialog = page.get_by_role("dialog")
    expect(dialog.locator("#confirm-title")).to_have_text(
        f"Remove {removing} users from the platform?", timeout=RUN_TIMEOUT
    )
    expect(page.locator("#confirm-cancel")).to_be_focused()  # the safe choice first
    assert_accessible(page, "#confirm-dialog")
    tab_to(page, "#confirm-ok", backwards=True)
    page.keyboard.press("Enter")
    expect(page.locator("#action-status")).to_have_text(DONE, timeout=RUN_TIMEOUT)
    assert count_of(page, "Removed") == removing
    expect(page.locator("#run-list .run-held")).to_have_count(0)

    # Refresh Users Now, by keyboard.
    tab_to(page, "#refresh")
    page.keyboard.press("Enter")
    expect(page.locator("#action-status")).to_have_text(DONE, timeout=RUN_TIMEOUT)
    assert count_of(page, "Eligible") == len(kept) and count_of(page, "Removed") == 0
    expect(page.locator("#roster-summary")).to_have_text(FIRST_PAGE)

    # Groups not appearing? The Connection panel answers: every permission, each one working.
    connection = page.locator("#connection-view")
    expect(connection).to_contain_text("every required permission works")
    for permission in ("GroupMember.Read.All", "User.Read.All"):
        rows = connection.locator("tr", has=page.get_by_role("rowheader", name=permission, exact=True))
        expect(rows.locator(".badge")).to_have_text(["ok"] * rows.count())

    # Members not syncing? Why? by a name: several people match, pick one; the exact rule shows.
    tab_to(page, "#explain-input")
    page.keyboard.type("Ben")
    page.keyboard.press("Enter")
    picks = page.locator("#explain-matches button.pick")
    expect(picks.first).to_be_focused()
    bens = [u for u in tenant.users.values() if (u.display_name or "").split()[0:1] == ["Ben"]]
    assert len(bens) > 1
    page.keyboard.press("Enter")
    expect(page.locator("#explain-result .verdict")).to_be_visible()
    expect(page.locator("#explain-result")).not_to_contain_text("null")
    blocked = next(
        u
        for u in tenant.users.values()
        if not u.account_enabled and u.given_name and u.surname and u.id in tenant.transitive_user_ids(big)
    )
    same_name = [u for u in tenant.users.values() if u.display_name == blocked.display_name]
    tab_to(page, "#explain-input", backwards=True)
    page.keyboard.press("Control+A")
    page.keyboard.type(blocked.display_name if len(same_name) == 1 else blocked.user_principal_name)
    page.keyboard.press("Enter")
    result = page.locator("#explain-result")
    expect(result.locator(".verdict")).to_have_text("Not included: this user is not synced.")
    expect(result.locator(".reasons")).to_contain_text("Rule that matched: accountEnabled is false")
    included = next(iter(kept))
    page.locator("#explain-input").fill(tenant.users[included].user_principal_name)
    page.keyboard.press("Enter")
    expect(result.locator(".verdict")).to_have_text("Included: this user is synced.")
    expect(result).not_to_contain_text("null")

    # User count mismatch? The help explains the admin center's 8 with this tenant's own numbers.
    direct = [tenant.kind_of(m) for m in tenant.direct_member_ids(big)]
    users, groups = direct.count("user"), direct.count("group")
    tab_to(page, "#run-panel-mismatch")
    page.keyboard.press("Enter")
    help_text = page.locator("#mismatch-explain")
    expect(help_text).to_contain_text(
        f"The Microsoft 365 admin center counts the direct members of “All Staff”: {users + groups} "
        f"({users} users, {groups} groups)."
    )
    expect(help_text).to_contain_text(
        f"Through nesting the group has {len(tenant.transitive_user_ids(big))} users; "
        f"{len(kept)} of them are synced"
    )
    # ... and who is left out, by reason, with the rule, downloadable.
    tab_to(page, "#excluded-reason")
    page.keyboard.press("ArrowDown")  # keyboard-only choice of a reason
    reason = page.locator("#excluded-reason").input_value()
    expect(page.locator("#excluded-csv")).to_have_attribute(
        "href", re.compile(f"format=csv.*reason={reason}|reason={reason}.*format=csv")
    )
    expect(page.locator("#excluded-summary")).not_to_have_text("Loading…")
    page.locator("#excluded-reason").select_option("disabled")
    row = page.locator("#excluded-body tr", has_text=blocked.user_principal_name)
    expect(row).to_contain_text("accountEnabled is false")
    expect(page.locator("#choice-service-count")).to_contain_text("Currently catches")
    assert_accessible(page)
