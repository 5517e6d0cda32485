// "Sync by O365 Groups": the page. Vanilla JS module, no build step.
// Every text that comes from the API or the directory is put in the page as text
// (textContent / Text nodes), never as HTML; links are made only from http(s) URLs.

const API = location.pathname.replace(/\/ui\/?$/, ""); // "/api" (the page lives at /api/ui)
const POLL_MS = 1000;
const FINISHED = new Set(["succeeded", "failed", "held", "superseded"]);
const KIND_LABELS = {
  microsoft365: "Microsoft 365",
  security: "Security",
  mailEnabledSecurity: "Mail-enabled security",
  distribution: "Distribution list",
};
const STATUS_LABELS = {
  queued: "Queued",
  running: "Running",
  succeeded: "Succeeded",
  failed: "Failed",
  held: "Held: needs approval",
  superseded: "Superseded",
  approved: "Approved",
};
const REASON_LABELS = {
  manual: "Refresh Users Now",
  "selection-saved": "Refresh after saving the selection",
  preview: "Preview of a selection",
  nightly: "Nightly refresh",
  approved: "Approved removals",
  cli: "Refresh from the CLI",
  undo: "Undo of removals",
  "rules-saved": "Refresh after saving the rules",
  notification: "Refresh after changes in Microsoft 365",
};
const NOTIFY_TEXTS = {
  realtime: "Changes in Microsoft 365 reach the platform within a minute (change notifications).",
  usersOnly: "User changes reach the platform within a minute; group membership changes at the nightly sync.",
  nightly: "Changes reach the platform at the nightly sync, or when you click Refresh Users Now.",
};
const EXCLUDED_LABELS = [
  ["guest", "Guest users"],
  ["externalMember", "External members (other organizations)"],
  ["disabled", "Disabled or blocked"],
  ["unlicensed", "Unlicensed"],
  ["sharedMailbox", "Shared, room or equipment mailboxes"],
  ["serviceAccount", "Service accounts"],
  ["rule", "Excluded by a tenant rule"],
];
const GUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;

const state = {
  me: null, // GET /whoami: who is signed in, what kind of caller, what Connect would onboard
  tenant: null,
  saved: null, // the saved Selection
  etag: null, // its ETag, sent as If-Match on save
  pending: new Map(), // group id -> display name: what the admin has checked
  names: new Map(), // group id -> display name, from every list seen
  busy: false,
  follow: 0, // token of the run being followed; a newer follow stops an older one
  announced: "",
};

// -- small helpers ------------------------------------------------------------------------------

const $ = (id) => document.getElementById(id);
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

/** Build an element; string children become text nodes, never HTML. */
function h(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(props || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (key === "class") node.className = value;
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, value === true ? "" : String(value));
  }
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : String(child));
  }
  return node;
}

const URL_PATTERN = /https?:\/\/[^\s<>"'`]+/g;

/** Text with its http(s) URLs as links (opened in a new tab); everything else stays text. */
function linkify(text) {
  const fragment = document.createDocumentFragment();
  const value = String(text ?? "");
  let last = 0;
  for (const match of value.matchAll(URL_PATTERN)) {
    const raw = match[0].replace(/[.,;:!?)\]}]+$/, "");
    fragment.append(value.slice(last, match.index));
    let url = null;
    try {
      url = new URL(raw);
    } catch {
      url = null;
    }
    if (url && (url.protocol === "https:" || url.protocol === "http:")) {
      fragment.append(h("a", { href: url.href, target: "_blank", rel: "noopener noreferrer" }, raw));
    } else {
      fragment.append(raw);
    }
    last = match.index + raw.length;
  }
  fragment.append(value.slice(last));
  return fragment;
}

function when(iso) {
  if (!iso) return "";
  const date = new Date(iso);
  return Number.isNaN(date.getTime()) ? iso : date.toLocaleString();
}

function plural(n, one, many = `${one}s`) {
  return `${n} ${n === 1 ? one : many}`;
}

function debounce(fn, ms) {
  let timer = null;
  return (...args) => {
    clearTimeout(timer);
    timer = setTimeout(() => fn(...args), ms);
  };
}

const T = () => `/tenants/${encodeURIComponent(state.tenant.id)}`;

// -- the API ------------------------------------------------------------------------------------

class ApiError extends Error {
  constructor(status, title, detail, errors = []) {
    super(detail);
    this.status = status;
    this.title = title;
    this.detail = detail;
    this.errors = errors;
  }
}

/** Call the API; problem+json answers become ApiError with the API's own `detail`. */
async function api(method, path, { body, headers = {}, signal } = {}) {
  const init = { method, headers: { Accept: "application/json", ...headers }, signal, credentials: "same-origin" };
  if (body !== undefined || method !== "GET") {
    // Every change is JSON (the API refuses anything else, so another site's form cannot post here).
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body ?? {});
  }
  let response;
  try {
    response = await fetch(API + path, init);
  } catch (error) {
    if (error.name === "AbortError") throw error;
    throw new ApiError(0, "The app did not answer", `Could not reach ${API}${path.split("?")[0]}: ${error.message}. Check that the app is running, then try again.`);
  }
  const text = await response.text();
  let data = null;
  if (text) {
    try {
      data = JSON.parse(text);
    } catch {
      data = null;
    }
  }
  if (!response.ok) {
    const detail = data && typeof data.detail === "string" ? data.detail
      : `${method} ${API}${path.split("?")[0]} answered ${response.status} ${response.statusText}`;
    const title = data && typeof data.title === "string" ? data.title : response.statusText || "Error";
    throw new ApiError(response.status, title, detail, Array.isArray(data?.errors) ? data.errors : []);
  }
  return { data, headers: response.headers, status: response.status };
}

// -- the alert region ---------------------------------------------------------------------------

/** Show an error (ApiError, Error or {title, detail}) in the role="alert" region. */
function showError(error, context, extra = null) {
  const region = $("alert");
  const title = error.title || "Error";
  const detail = error.detail || error.message || String(error);
  const key = `${context}|${title}|${detail}`;
  for (const box of region.querySelectorAll(".alert-box")) {
    if (box.dataset.key === key) box.remove();
  }
  const box = h("div", { class: "alert-box" });
  box.dataset.key = key;
  const text = h("div", { class: "alert-text" },
    h("strong", {}, context ? `${context}: ${title}. ` : `${title}. `), linkify(detail));
  box.append(text);
  if (error.errors && error.errors.length) {
    box.append(h("ul", {}, error.errors.map((e) => h("li", {}, Object.values(e).map(String).join(": ")))));
  }
  if (error.status === 401) {
    const back = encodeURIComponent(location.pathname + location.search);
    box.append(h("p", {}, h("a", { href: `/.auth/login/aad?post_login_redirect_uri=${back}` }, "Sign in")));
  }
  if (extra) box.append(extra);
  box.append(h("button", { type: "button", class: "link-button", onclick: () => box.remove() }, "Dismiss"));
  region.append(box);
  while (region.children.length > 4) region.firstElementChild.remove();
}

function clearErrors() {
  $("alert").replaceChildren();
}

function actionStatus(text) {
  $("action-status").textContent = text;
}

function setBusy(busy) {
  state.busy = busy;
  for (const button of document.querySelectorAll("#save, #refresh, #choices-save, .approve, .undo")) button.disabled = busy;
  $("selected-panel").setAttribute("aria-busy", busy ? "true" : "false");
}

// -- tenant -------------------------------------------------------------------------------------

const KIND_LABELS_WHO = {
  operator: "operator",
  customerAdmin: "administrator of your organization",
  partner: "partner",
};

/** "name@contoso.com (tid …, oid …)" → "name@contoso.com": how a change's author is shown in lists. */
function shortBy(by) {
  return String(by || "").split(" (tid ")[0];
}

function signInHref() {
  return `/.auth/login/aad?post_login_redirect_uri=${encodeURIComponent(location.pathname + location.search)}`;
}

function signedOut() {
  $("sign-in").setAttribute("href", signInHref());
  $("signed-out").hidden = false;
  $("who").replaceChildren(h("a", { href: signInHref() }, "Sign in"));
}

function renderWho(me) {
  const name = me.userPrincipalName && me.userPrincipalName !== me.name ? `${me.name} (${me.userPrincipalName})` : me.name;
  $("who").replaceChildren(
    "Signed in as ", h("strong", {}, name), ` · ${KIND_LABELS_WHO[me.kind] || me.kind} · `,
    h("a", { href: `/.auth/logout?post_logout_redirect_uri=${encodeURIComponent(`${API}/ui`)}` }, "Sign out"));
  const connect = $("connect");
  connect.hidden = !me.connectTenantId;
  if (me.connectTenantId) {
    connect.onclick = () => startConsent(me.connectTenantId, connect);
    connect.title = me.connectTenantId === "organizations"
      ? "The administrator who accepts chooses the organization"
      : `Connect your organization (${me.connectTenantId})`;
  }
}

/** Connect Microsoft 365 / Reconnect: a one-time admin-consent link from the API, then Entra's page. */
async function startConsent(tenantId, button) {
  button.disabled = true;
  clearErrors();
  try {
    const { data } = await api("POST", "/consent/start", { body: { tenantId } });
    const url = new URL(data.url);
    if (url.protocol !== "https:" && url.protocol !== "http:") throw new Error("the consent link is not a web address");
    location.assign(url.href);
  } catch (error) {
    button.disabled = false;
    showError(error, button.textContent);
  }
}

const CONSENT_RESULTS = {
  granted: "Microsoft 365 is connected: admin consent was granted.",
  refused: "Microsoft 365 was not connected.",
  invalid: "The admin-consent reply could not be used.",
};

/** The outcome of an admin-consent round trip (?consent=...), shown once; the address keeps only ?tenant. */
function showConsentResult() {
  const query = new URLSearchParams(location.search);
  const outcome = query.get("consent");
  if (!outcome) return;
  const box = $("consent-result");
  const parts = [h("strong", {}, CONSENT_RESULTS[outcome] || `Admin consent: ${outcome}.`)];
  const connection = query.get("connection");
  if (outcome === "granted" && connection && connection !== "connected") {
    parts.push(" ", CONNECTION_STATES[connection] || connection, " The Connection panel below lists what is missing.");
  }
  const detail = query.get("detail");
  if (detail && outcome !== "granted") parts.push(" ", linkify(detail));
  if (outcome === "invalid") parts.push(" Click Connect Microsoft 365 (or Reconnect) again.");
  box.replaceChildren(h("p", {}, ...parts));
  box.classList.toggle("bad", outcome !== "granted");
  box.hidden = false;
  const tenant = query.get("tenant");
  history.replaceState(null, "", tenant ? `?tenant=${encodeURIComponent(tenant)}` : location.pathname);
}

function noTenant(message, tenantId) {
  const box = $("no-tenant");
  const me = state.me || {};
  const id = tenantId && GUID.test(tenantId) ? tenantId : "TENANT_ID";
  const parts = [h("h2", {}, "No tenant to show"), h("p", {}, message)];
  if (me.kind === "customerAdmin" && me.connectTenantId) {
    const button = h("button", { type: "button", class: "primary" }, "Connect Microsoft 365");
    button.addEventListener("click", () => startConsent(me.connectTenantId, button));
    parts.push(
      h("p", {}, "Your organization is not connected yet. Connect it: you are sent to Microsoft to grant the app "
        + "read access to your groups and users (admin consent), then back here."),
      h("p", {}, button));
  } else if (me.kind === "operator") {
    parts.push(
      h("p", {}, "Connect a customer with Connect Microsoft 365 (the administrator who accepts picks the organization), "
        + "or register the tenant with the operator CLI, from the repository root:"),
      h("pre", {}, h("code", {}, `.venv/bin/python -m sync tenant add ${id} --name "ORGANIZATION NAME"`)),
      h("p", {}, "or through the API: ", h("code", {}, `PUT ${API}/tenants/${id}`), " with ",
        h("code", {}, '{"displayName": "ORGANIZATION NAME"}'), ". Then reload this page."));
  } else if (me.note) {
    parts.push(h("p", {}, me.note));
  } else {
    parts.push(h("p", {}, "Ask an operator to grant you access, or an administrator of the organization to connect it."));
  }
  box.replaceChildren(...parts);
  box.hidden = false;
}

async function init() {
  showConsentResult();
  try {
    state.me = (await api("GET", "/whoami")).data;
  } catch (error) {
    if (error.status === 401) signedOut();
    else showError(error, "Signing in");
    return;
  }
  renderWho(state.me);
  const wanted = new URLSearchParams(location.search).get("tenant");
  let tenants;
  try {
    tenants = (await api("GET", "/tenants")).data.value || [];
  } catch (error) {
    showError(error, "Loading tenants");
    return;
  }
  if (wanted !== null && !GUID.test(wanted.trim())) {
    noTenant(`“${wanted}” is not a tenant id: use ?tenant= with the tenant’s GUID (e.g. 72f988bf-86f1-41af-91ab-2d7cd011db47).`, null);
    return;
  }
  const tenant = wanted ? tenants.find((t) => t.id.toLowerCase() === wanted.trim().toLowerCase()) : tenants[0];
  if (!tenant) {
    const hidden = state.me.kind === "operator" ? "" : ", or not one you may see";
    noTenant(wanted ? `Tenant ${wanted.trim()} is not registered${hidden}.` : "No tenant is registered yet.", wanted?.trim());
    return;
  }
  state.tenant = tenant;
  if (!wanted) history.replaceState(null, "", `?tenant=${encodeURIComponent(tenant.id)}`); // a link to this view
  const select = $("tenant-select");
  select.replaceChildren(...tenants.map((t) => {
    const option = h("option", { value: t.id }, `${t.displayName} (${t.id})${t.consentState === "notConsented" ? " · not connected" : ""}`);
    option.selected = t.id === tenant.id;
    return option;
  }));
  select.addEventListener("change", () => {
    location.search = `?tenant=${encodeURIComponent(select.value)}`;
  });
  $("tenant-picker").hidden = tenants.length === 0;
  renderNotifyMode(tenant);
  document.title = `Sync by O365 Groups: ${tenant.displayName}`;
  $("app").hidden = false;
  wire();
  await Promise.all([loadSelection(), loadGroups(), loadRuns({ showLatest: true }), loadConnection(), loadChoices()]);
  resetRoster();
  resetExcluded();
}

/** How soon changes in Microsoft 365 arrive for this tenant (GET /tenants: notifyMode, notifyDetail). */
function renderNotifyMode(tenant) {
  const box = $("notify-mode");
  const mode = tenant.notifyMode;
  const text = NOTIFY_TEXTS[mode]
    || "Change notifications are set up after the first full refresh; until then changes arrive at the nightly sync or with Refresh Users Now.";
  box.replaceChildren(h("strong", {}, mode ? `Sync mode: ${mode}. ` : "Sync mode: not set up yet. "), text,
    tenant.notifyDetail && mode !== "realtime" ? ` Why not within a minute: ${tenant.notifyDetail}` : "");
  box.className = `notify-mode small mode-${mode || "none"}`;
  box.hidden = false;
}

// -- selection ----------------------------------------------------------------------------------

async function loadSelection() {
  try {
    const { data, headers } = await api("GET", `${T()}/selection`);
    applySaved(data, headers.get("ETag"));
    state.pending = new Map(data.groups.map((g) => [g.id, g.displayName]));
    renderSelected();
    syncCheckboxes();
  } catch (error) {
    showError(error, "Loading the saved selection");
  }
}

function applySaved(selection, etag) {
  state.saved = selection;
  state.etag = etag || `"${selection.version}"`;
  for (const g of selection.groups) state.names.set(g.id, g.displayName);
  renderRosterGroupOptions();
}

function isDirty() {
  if (!state.saved) return false;
  const saved = new Set(state.saved.groups.map((g) => g.id));
  if (saved.size !== state.pending.size) return true;
  for (const id of state.pending.keys()) if (!saved.has(id)) return true;
  return false;
}

function renderSelected() {
  const list = $("selected-list");
  list.replaceChildren(...[...state.pending].map(([id, name]) => h("li", {},
    h("span", { class: "name" }, name),
    h("button", {
      type: "button", class: "remove", "aria-label": `Remove ${name}`, "data-group-id": id,
      onclick: (event) => removeSelected(id, event.currentTarget),
    }, "Remove"),
  )));
  $("selected-all").hidden = state.pending.size > 0;
  const info = $("selected-state");
  if (!state.saved) info.textContent = "";
  else if (isDirty()) info.textContent = "Unsaved changes: click Save to apply them.";
  else if (state.saved.version === 0) info.textContent = "Nothing saved yet: the sync uses all users.";
  else info.textContent = `Saved${state.saved.updatedBy ? ` by ${shortBy(state.saved.updatedBy)}` : ""}${state.saved.updatedAt ? `, ${when(state.saved.updatedAt)}` : ""}.`;
  info.title = state.saved?.updatedBy || "";
  info.classList.toggle("dirty", isDirty());
}

function removeSelected(id, button) {
  const items = [...$("selected-list").querySelectorAll("button.remove")];
  const index = items.indexOf(button);
  state.pending.delete(id);
  renderSelected();
  syncCheckboxes();
  const left = [...$("selected-list").querySelectorAll("button.remove")];
  (left[Math.min(index, left.length - 1)] || $("save")).focus();
}

function syncCheckboxes() {
  for (const box of $("group-list").querySelectorAll("input[type=checkbox]")) {
    box.checked = state.pending.has(box.dataset.groupId);
  }
}

// -- groups -------------------------------------------------------------------------------------

const groupsState = { search: "", next: null, shown: 0, total: null, seq: 0, controller: null };

async function loadGroups({ more = false } = {}) {
  const seq = ++groupsState.seq;
  groupsState.controller?.abort();
  const controller = (groupsState.controller = new AbortController());
  const query = new URLSearchParams();
  if (groupsState.search) query.set("search", groupsState.search);
  if (more && groupsState.next) query.set("cursor", groupsState.next);
  const status = $("groups-status");
  status.textContent = more ? "Loading more groups…" : "Loading groups…";
  $("groups-more").disabled = true;
  try {
    const { data } = await api("GET", `${T()}/groups${query.toString() ? `?${query}` : ""}`, { signal: controller.signal });
    if (seq !== groupsState.seq) return;
    const list = $("group-list");
    if (!more) {
      list.replaceChildren();
      list.scrollTop = 0; // a new search starts at the top of its results
      groupsState.shown = 0;
      groupsState.total = typeof data.total === "number" ? data.total : null;
    }
    for (const group of data.value) {
      state.names.set(group.id, group.displayName);
      list.append(groupItem(group));
    }
    groupsState.shown += data.value.length;
    groupsState.next = data.nextCursor || null;
    $("groups-more").hidden = !groupsState.next;
    $("groups-more").disabled = false;
    if (groupsState.shown === 0) {
      status.textContent = groupsState.search
        ? `No group matches “${groupsState.search}”.`
        : "No groups found in this tenant. See “Groups not appearing?” below.";
      if (!groupsState.search) $("trouble-groups").open = true;
    } else {
      const total = groupsState.total;
      const of = total !== null && total > groupsState.shown ? ` of ${total.toLocaleString("en-US")}` : "";
      status.textContent = `${groupsState.shown.toLocaleString("en-US")}${of} ${groupsState.shown === 1 && !of ? "group" : "groups"} shown${groupsState.next ? "; more to load below" : ""}.`;
    }
  } catch (error) {
    if (error.name === "AbortError") return;
    status.textContent = "The groups could not be loaded.";
    $("groups-more").disabled = false;
    $("trouble-groups").open = true;
    showError(error, "Loading groups");
  }
}

function groupItem(group) {
  const id = `g-${group.id}`;
  const kind = KIND_LABELS[group.kind] ? group.kind : "other";
  const count = typeof group.memberCount === "number" ? plural(group.memberCount, "member") : "members not counted";
  const box = h("input", { type: "checkbox", id, "aria-describedby": `${id}-meta` });
  box.dataset.groupId = group.id;
  box.checked = state.pending.has(group.id);
  box.addEventListener("change", () => {
    if (box.checked) state.pending.set(group.id, group.displayName);
    else state.pending.delete(group.id);
    renderSelected();
  });
  return h("li", { class: "group" },
    box,
    h("div", { class: "group-text" },
      h("label", { for: id }, group.displayName),
      h("span", { class: "meta", id: `${id}-meta` },
        h("span", { class: `badge kind-${kind}` }, KIND_LABELS[group.kind] || String(group.kind)),
        h("span", { class: "count" }, count),
        group.mail ? h("span", { class: "mail" }, group.mail) : null),
      group.description ? h("span", { class: "desc" }, group.description) : null));
}

// -- runs ---------------------------------------------------------------------------------------

async function getRun(id) {
  return (await api("GET", `${T()}/runs/${encodeURIComponent(id)}`)).data;
}

/** Follow a run until it finishes (or a newer follow starts), showing its progress. */
async function followRun(run) {
  const token = ++state.follow;
  let current = run;
  let delay = 400;
  let failures = 0;
  renderRun(current, { live: true });
  for (;;) {
    while (!FINISHED.has(current.status)) {
      await sleep(delay);
      delay = POLL_MS;
      if (token !== state.follow) return null;
      try {
        current = await getRun(current.id);
        failures = 0;
      } catch (error) {
        if (error.status === 0 && ++failures < 5) {
          $("run-live").textContent = "Lost contact with the app; trying again…";
          continue;
        }
        throw error;
      }
      if (token !== state.follow) return null;
      renderRun(current, { live: true });
    }
    if (current.status === "superseded" && current.supersededBy) {
      $("run-live").textContent = "A newer refresh covered this one; following it.";
      current = await getRun(current.supersededBy);
      renderRun(current, { live: true });
      continue;
    }
    return current;
  }
}

function runTitle(run) {
  if (run.dryRun) return run.reason === "preview" ? "Preview of the new selection" : "Dry run";
  return REASON_LABELS[run.reason] || `Refresh (${run.reason})`;
}

function badge(status, run = null) {
  const shown = run && status === "superseded" && run.approvedBy ? "approved" : status;
  return h("span", { class: `badge status-${FINISHED.has(status) || status === "queued" || status === "running" ? status : "other"}` },
    STATUS_LABELS[shown] || shown);
}

function announce(run) {
  const key = `${run.id}:${run.status}`;
  if (state.announced === key) return;
  state.announced = key;
  const title = runTitle(run);
  const c = run.counts || {};
  const texts = {
    queued: `${title}: queued, waiting for the worker…`,
    running: `${title}: running, reading the directory…`,
    succeeded: run.dryRun
      ? `${title} finished: it would add ${c.added}, remove ${c.removed}, restore ${c.restored}.`
      : `${title} finished: ${c.added} added, ${c.updated} updated, ${c.removed} removed, ${c.restored} restored.`,
    failed: `${title} failed. Nothing was changed.`,
    held: `${title} is held by the removal guard: ${c.removed} removals wait for approval.`,
    superseded: `${title} was superseded by a newer run.`,
  };
  $("run-live").textContent = texts[run.status] || `${title}: ${run.status}`;
}

const STEPS = [
  ["queued", "Queued"],
  ["running", "Running"],
  ["result", "Result"],
];

function renderRun(run, { live = false } = {}) {
  state.viewing = run;
  if (live) announce(run);
  const view = $("run-view");
  const finished = FINISHED.has(run.status);
  const at = run.status === "queued" ? 0 : run.status === "running" ? 1 : 2;
  const steps = h("ol", { class: "steps", "aria-label": "Progress" }, STEPS.map(([, label], i) => {
    const text = i === 2 && finished ? (STATUS_LABELS[run.status] || run.status) : label;
    return h("li", { class: i < at ? "done" : i === at ? `current ${finished ? `end-${run.status}` : ""}` : "todo",
      "aria-current": i === at ? "step" : null }, text);
  }));
  const parts = [
    h("div", { class: "run-title" }, h("h3", {}, runTitle(run)), badge(run.status, run), run.dryRun ? h("span", { class: "badge preview" }, "preview") : null),
    steps,
  ];
  if (!finished) parts.push(h("progress", { "aria-label": `${runTitle(run)} in progress` }));
  parts.push(h("p", { class: "muted small" },
    `Requested ${when(run.requestedAt)}${run.requestedBy ? ` by ${run.requestedBy}` : ""}`,
    run.startedAt ? ` · started ${when(run.startedAt)}` : "",
    run.finishedAt ? ` · finished ${when(run.finishedAt)}` : "",
    ` · run ${run.id}`));
  if (run.status === "failed") {
    parts.push(h("div", { class: "run-error" },
      h("h4", {}, "This run failed; nothing was changed"),
      h("p", { class: "error-text" }, linkify(run.error || "No error text was recorded.")),
      h("p", { class: "small" }, "If a permission is missing, grant it (admin consent) and refresh again. The ",
        h("a", { href: "#connection-heading" }, "Connection"), " panel shows which permissions work.")));
  }
  if (run.status === "superseded" && run.approvedBy) {
    parts.push(h("p", { class: "approved" }, `${approvedText(run)}: run ${run.supersededBy} applied its removals.`));
  } else if (run.status === "superseded") {
    parts.push(h("p", {}, run.supersededBy ? `A newer run (${run.supersededBy}) did this work.` : "A newer run did this work."));
  } else if (run.approvedBy) {
    parts.push(h("p", { class: "approved" }, `${approvedText(run)} (as shown in ${run.approvedRun}).`));
  }
  if (run.note) parts.push(h("p", { class: "note" }, linkify(run.note)));
  if (run.status === "held") parts.push(heldBlock(run));
  if (run.status === "succeeded" || run.status === "held") parts.push(resultBlock(run));
  view.replaceChildren(...parts);
}

function heldBlock(run) {
  const block = h("div", { class: "run-held" },
    h("h4", {}, "Held by the removal guard"),
    h("p", { class: "guard-text" }, run.guard || "This run would remove more users than the removal guard allows."),
    h("p", {}, `Nothing was applied. Approving lets a new run remove up to ${plural(run.counts.removed, "user")}.`));
  const ids = run.plan?.remove || [];
  if (ids.length) {
    const list = h("ul", { class: "name-list", "aria-label": "Users the run would remove" });
    const more = run.counts.removed - ids.length;
    block.append(h("details", {}, h("summary", {}, `Who would be removed (${run.counts.removed})`), list,
      more > 0 ? h("p", { class: "small" }, `…and ${more} more not listed.`) : null));
    fillNames(list, ids);
  }
  if (isNewestHeld(run)) {
    block.append(approveButton(run));
  } else {
    block.append(h("p", { class: "small older-held" }, "A newer run was held after this one with the current plan: "
      + "review and approve that one (only the newest held run can be approved)."));
  }
  return block;
}

/** Only the newest held run can be approved: an older one shows a plan that a newer run replaced. */
function isNewestHeld(run) {
  const newest = state.newestHeld;
  return !newest || newest.id === run.id || run.requestedAt > newest.requestedAt;
}

function approveButton(run) {
  const button = h("button", {
    type: "button", class: "approve danger",
    "aria-label": `Approve removals: ${plural(run.counts.removed, "user")} of the run of ${when(run.requestedAt)}`,
    onclick: () => approve(run),
  }, "Approve removals");
  button.disabled = state.busy;
  return button;
}

/** "Approved by X at T" for a run whose removals someone approved (held run, or a save's run). */
function approvedText(run) {
  if (!run.approvedBy) return null;
  const what = run.status === "superseded" ? "Approved" : "Removals approved";
  return `${what} by ${shortBy(run.approvedBy)} at ${when(run.approvedAt)}`;
}

/** A finished, applied run that removed users and whose removals were not undone yet. */
function canUndo(run) {
  return run.status === "succeeded" && !run.dryRun && !run.undoOf && !run.undoneBy && (run.counts?.removed || 0) > 0;
}

function undoButton(run) {
  const button = h("button", {
    type: "button", class: "undo",
    "aria-label": `Undo removals of the run of ${when(run.requestedAt)} (${plural(run.counts.removed, "user")} removed)`,
    onclick: () => undoRemovals(run),
  }, "Undo removals");
  button.disabled = state.busy;
  return button;
}

function undoResultBlock(run) {
  const block = h("div", { class: "result" });
  block.append(h("dl", { class: "counts", "aria-label": "Counts" },
    h("div", { class: "count-item" }, h("dt", {}, "Restored"), h("dd", {}, String(run.counts?.restored ?? 0)))));
  block.append(h("p", {}, `This run put back the users removed by run ${run.undoOf}. `
    + "The next refresh removes them again unless the cause is fixed (the selection or the users’ groups)."));
  const ids = run.plan?.restore || [];
  if (ids.length) {
    const list = h("ul", { class: "name-list", "aria-label": "Users restored" });
    const more = (run.counts?.restored || 0) - ids.length;
    block.append(h("details", {}, h("summary", {}, `Who was restored (${run.counts.restored})`), list,
      more > 0 ? h("p", { class: "small" }, `…and ${more} more not listed.`) : null));
    fillNames(list, ids);
  }
  return block;
}

function resultBlock(run) {
  if (run.undoOf) return undoResultBlock(run);
  const c = run.counts;
  const would = run.dryRun || run.status === "held";
  const numbers = [
    ["Members", c.members],
    ["Eligible", c.eligible],
    [would ? "Would add" : "Added", c.added],
    [would ? "Would update" : "Updated", c.updated],
    [would ? "Would remove" : "Removed", c.removed],
    [would ? "Would restore" : "Restored", c.restored],
    ["Unchanged", c.unchanged],
  ];
  const block = h("div", { class: "result" });
  block.append(h("dl", { class: "counts", "aria-label": "Counts" },
    numbers.map(([label, value]) => h("div", { class: "count-item" }, h("dt", {}, label), h("dd", {}, String(value ?? 0))))));
  const excluded = c.excluded || {};
  const total = EXCLUDED_LABELS.reduce((sum, [key]) => sum + (excluded[key] || 0), 0);
  block.append(h("h4", {}, `Excluded: ${total}`));
  block.append(h("ul", { class: "excluded", "aria-label": "Excluded by reason" },
    EXCLUDED_LABELS.map(([key, label]) => h("li", { class: excluded[key] ? "" : "zero" },
      h("span", {}, label), h("span", { class: "num" }, String(excluded[key] || 0))))));
  if (run.groups && run.groups.length) {
    const cols = ["Group", "Direct members (admin center)", "Users through nesting", "Eligible", "Excluded"];
    block.append(h("div", { class: "table-wrap" }, h("table", { class: "per-group" },
      h("caption", {}, "Per selected group"),
      h("thead", {}, h("tr", {}, cols.map((c, i) => h("th", { scope: "col", class: i ? "num" : null }, c)))),
      h("tbody", {}, run.groups.map((g) => h("tr", {},
        h("th", { scope: "row" }, g.displayName),
        h("td", { class: "num", "data-label": cols[1] }, directText(g.direct)),
        h("td", { class: "num", "data-label": cols[2] }, String(g.members)),
        h("td", { class: "num", "data-label": cols[3] }, String(g.eligible)),
        h("td", { class: "num", "data-label": cols[4] }, excludedText(g.excluded, g.unknown))))))));
    if (!run.dryRun) explainMismatch(run);
  } else if (!run.dryRun || run.previewMode === "all") {
    block.append(h("p", { class: "small" }, "Mode “all”: every user of the tenant was considered."));
  }
  const facts = [`Graph requests: ${run.graphRequests ?? 0}`];
  if (typeof run.durationSeconds === "number") {
    facts.push(`Duration: ${run.durationSeconds < 1 ? run.durationSeconds.toFixed(2) : run.durationSeconds.toFixed(1)} s`);
  }
  if (run.incremental) facts.push("Incremental: only directory changes were read");
  if (run.mailboxPurposeSource) {
    facts.push(run.mailboxPurposeSource === "heuristic"
      ? "Shared mailboxes recognised by a name heuristic (MailboxSettings.Read not granted)"
      : "Shared mailboxes recognised by their mailbox settings");
  }
  block.append(h("p", { class: "facts" }, facts.join(" · ")));
  if (run.dryRun) block.append(h("p", { class: "small" }, "This was a preview: nothing was changed."));
  if (run.undoneBy) block.append(h("p", { class: "undone" }, `Its removals were undone by run ${run.undoneBy}.`));
  if (canUndo(run)) block.append(undoButton(run));
  return block;
}

const fmt = (n) => Number(n || 0).toLocaleString("en-US");
const DIRECT_WORDS = [["users", "user"], ["groups", "group"], ["devices", "device"], ["contacts", "contact"]];

/** "8 (5 users, 3 groups)": a group's direct members as the Microsoft 365 admin center counts them. */
function directText(direct) {
  if (!direct) return "not counted";
  const parts = DIRECT_WORDS.filter(([key]) => direct[key]).map(([key, one]) => plural(direct[key], one));
  const total = DIRECT_WORDS.reduce((sum, [key]) => sum + (direct[key] || 0), 0);
  return parts.length ? `${fmt(total)} (${parts.join(", ")})` : "0";
}

function excludedText(excluded, unknown = 0) {
  const parts = EXCLUDED_LABELS.filter(([key]) => excluded?.[key]).map(([key, label]) => `${fmt(excluded[key])} ${label.toLowerCase()}`);
  if (unknown) parts.push(`${fmt(unknown)} unknown (Graph left out an attribute)`);
  const total = EXCLUDED_LABELS.reduce((sum, [key]) => sum + (excluded?.[key] || 0), 0) + (unknown || 0);
  return parts.length ? `${fmt(total)}: ${parts.join(", ")}` : "0";
}

/** "User count mismatch?": each difference from the admin center, with this tenant's own numbers. */
function explainMismatch(run) {
  const box = $("mismatch-explain");
  const parts = [h("h4", {}, `Your numbers (the run of ${when(run.requestedAt)})`)];
  for (const g of run.groups) {
    const d = g.direct;
    const said = [];
    if (d) {
      said.push(`The Microsoft 365 admin center counts the direct members of “${g.displayName}”: ${directText(d)}.`);
      const others = (d.groups || 0) + (d.devices || 0) + (d.contacts || 0);
      if (others) {
        said.push(` The sync counts people only: devices and contacts are never synced, and ${d.groups ? `the ${plural(d.groups, "nested group")} count${d.groups === 1 ? "s" : ""} as the users in ${d.groups === 1 ? "it" : "them"}` : "no group is nested"}.`);
      }
    }
    said.push(` Through nesting the group has ${plural(g.members, "user")}; ${fmt(g.eligible)} of them are synced`);
    const ex = excludedText(g.excluded, g.unknown);
    said.push(ex === "0" ? "." : `, and ${ex} are not.`);
    parts.push(h("p", { class: "mismatch-group" }, ...said));
  }
  const c = run.counts;
  if (run.groups.length > 1) {
    parts.push(h("p", {}, `A user in several selected groups counts once: ${fmt(c.members)} different users in all, `
      + `${fmt(c.eligible)} synced.`));
  }
  parts.push(h("p", { class: "small" }, "Who was left out, and by which rule: see “Users not synced” below. "
    + "Users added in Microsoft 365 since this run appear at the next refresh."));
  box.replaceChildren(...parts);
}

/** Put "Name (upn)" for each user id in the list; ids the roster does not know stay as ids. */
async function fillNames(list, ids) {
  list.replaceChildren(h("li", { class: "muted" }, "Looking up names…"));
  let found = new Map();
  try {
    found = await lookupUsers(ids);
  } catch (error) {
    showError(error, "Looking up user names");
  }
  list.replaceChildren(...ids.map((id) => {
    const user = found.get(id);
    return h("li", {}, user ? `${user.displayName || user.userPrincipalName} (${user.userPrincipalName})` : id);
  }));
}

/** Roster users by id, read a page of 500 at a time (at most 20 pages). */
async function lookupUsers(ids) {
  const wanted = new Set(ids);
  const found = new Map();
  let cursor = null;
  for (let page = 0; page < 20 && found.size < wanted.size; page += 1) {
    const query = new URLSearchParams({ status: "all", limit: "500" });
    if (cursor) query.set("cursor", cursor);
    const { data } = await api("GET", `${T()}/users?${query}`);
    for (const user of data.value) if (wanted.has(user.id)) found.set(user.id, user);
    cursor = data.nextCursor;
    if (!cursor) break;
  }
  return found;
}

const runsState = { next: null };

async function loadRuns({ more = false, showLatest = false } = {}) {
  const query = new URLSearchParams({ limit: "10" });
  if (more && runsState.next) query.set("cursor", runsState.next);
  try {
    const { data } = await api("GET", `${T()}/runs?${query}`);
    const list = $("run-list");
    if (!more) {
      list.replaceChildren();
      const held = data.value.find((r) => r.status === "held" && !r.dryRun);
      state.newestHeld = held ? { id: held.id, requestedAt: held.requestedAt } : null;
      if (state.viewing?.status === "held") renderRun(state.viewing);
    }
    for (const run of data.value) list.append(runItem(run));
    if (!more && !data.value.length) list.append(h("li", { class: "muted" }, "No runs yet."));
    runsState.next = data.nextCursor || null;
    $("runs-more").hidden = !runsState.next;
    const counted = data.value.find((r) => !r.dryRun && r.groups?.some((g) => g.direct));
    if (!more && counted) explainMismatch(counted);
    if (showLatest && state.follow === 0) {
      const latest = data.value.find((r) => !r.dryRun);
      if (latest && !FINISHED.has(latest.status)) {
        setBusy(true);
        followRun(latest).then(afterRun).catch((e) => showError(e, "Following the run")).finally(() => setBusy(false));
      } else if (latest) {
        renderRun(latest);
      }
    }
  } catch (error) {
    showError(error, "Loading the run history");
  }
}

function runItem(run) {
  const c = run.counts || {};
  let summary = "";
  if (run.status === "succeeded" && run.undoOf) {
    summary = `${c.restored} restored: the removals of an earlier run were undone`;
  } else if (run.status === "succeeded") {
    summary = run.dryRun
      ? `would add ${c.added}, remove ${c.removed}`
      : `${c.added} added, ${c.updated} updated, ${c.removed} removed, ${c.restored} restored`;
  } else if (run.status === "held") {
    summary = `${c.removed} removals wait for approval`;
  } else if (run.status === "failed") {
    const error = run.error || "";
    summary = error.length > 200 ? `${error.slice(0, 200).replace(/\s+\S*$/, "")}…` : error;
  }
  const item = h("li", { class: `run-item run-${run.status}` },
    h("div", { class: "run-line" },
      badge(run.status, run),
      run.dryRun ? h("span", { class: "badge preview" }, "preview") : null,
      h("span", { class: "run-reason" }, runTitle(run)),
      h("span", { class: "muted small" }, when(run.requestedAt)),
      run.requestedBy ? h("span", { class: "muted small run-by", title: run.requestedBy }, `by ${shortBy(run.requestedBy)}`) : null),
    summary ? h("p", { class: "run-summary" }, summary) : null);
  if (run.status === "held") {
    item.append(h("p", { class: "guard-text" }, run.guard || ""));
    if (isNewestHeld(run)) item.append(approveButton(run));
    else item.append(h("p", { class: "small older-held" }, "Replaced by a newer held run: approve that one."));
  }
  if (run.approvedBy) item.append(h("p", { class: "approved small" }, approvedText(run)));
  if (run.undoneBy) item.append(h("p", { class: "undone small" }, "Removals undone."));
  if (canUndo(run)) item.append(undoButton(run));
  item.append(h("button", {
    type: "button", class: "link-button", "aria-label": `Show details of the run of ${when(run.requestedAt)}`,
    onclick: () => {
      if (!state.busy) state.follow += 1; // stop following a run left behind, never an action in progress
      renderRun(run);
      $("run-heading").focus();
    },
  }, "Details"));
  return item;
}

async function approve(run) {
  if (state.busy) return;
  const n = run.counts.removed;
  const ids = run.plan?.remove || [];
  const confirmed = await confirmDialog({
    title: `Approve removing ${plural(n, "user")}?`,
    summary: `Approving lets a new run remove exactly the ${plural(n, "user")} this run (of ${when(run.requestedAt)}) `
      + "would remove. If the directory changed since, that run is held again and says why. These users would be removed:",
    listLabel: "Users who would be removed",
    hint: "Removed users stay restorable for a grace period (Undo removals in the run history).",
    more: n - ids.length,
    fill: (list) => fillNames(list, ids),
    danger: true,
  });
  if (!confirmed) {
    actionStatus("Not approved: cancelled. Nothing was removed.");
    return;
  }
  setBusy(true);
  clearErrors();
  actionStatus("Approving the removals…");
  try {
    const { data } = await api("POST", `${T()}/runs/${encodeURIComponent(run.id)}/approve`);
    actionStatus("Approved: a new run applies the removals.");
    const done = await followRun(data);
    afterRun(done);
  } catch (error) {
    actionStatus("");
    showError(error, "Approving the removals");
  } finally {
    setBusy(false);
  }
}

async function undoRemovals(run) {
  if (state.busy) return;
  setBusy(true);
  clearErrors();
  actionStatus("Looking up the users this run removed…");
  try {
    let users = null;
    try {
      users = await removedBy(run.id);
    } catch (error) {
      showError(error, "Looking up user names");
    }
    const n = users ? users.length : run.counts.removed;
    if (n > 0) {
      actionStatus("");
      const confirmed = await confirmUndo(run, n, users);
      if (!confirmed) {
        actionStatus("Nothing undone: cancelled.");
        return;
      }
    }
    actionStatus("Undoing the removals…");
    const { data } = await api("POST", `${T()}/runs/${encodeURIComponent(run.id)}/undo`);
    $("run-heading").focus();
    const done = await followRun(data);
    afterRun(done);
    if (done?.status === "succeeded") {
      actionStatus(`Undone: ${plural(done.counts.restored, "user")} active again. `
        + "The next refresh removes them again unless the cause is fixed.");
    }
  } catch (error) {
    actionStatus("");
    showError(error, "Undoing the removals");
  } finally {
    setBusy(false);
  }
}

/** The roster users a run removed and that are still removed (what its undo would put back). */
async function removedBy(runId) {
  const found = [];
  let cursor = null;
  for (let page = 0; page < 20; page += 1) {
    const query = new URLSearchParams({ status: "removed", limit: "500" });
    if (cursor) query.set("cursor", cursor);
    const { data } = await api("GET", `${T()}/users?${query}`);
    for (const user of data.value) if (user.removedByRun === runId) found.push(user);
    cursor = data.nextCursor;
    if (!cursor) break;
  }
  return found;
}

function afterRun(run) {
  loadRuns();
  if (!run) return;
  if (!run.dryRun) {
    resetRoster();
    resetExcluded();
    loadChoices();
  }
  if (run.status === "failed") {
    showError({ title: `${runTitle(run)} failed`, detail: run.error || "No error text was recorded." }, "");
    actionStatus("The run failed; see the error.");
  } else if (run.status === "held") {
    actionStatus(run.approvedBy
      ? "The run is held: the removals you confirmed are no longer exactly the ones it would make (the directory or the settings changed). Review who would be removed below and approve again, or change the selection."
      : "The run is held by the removal guard: review it below and approve the removals, or change the selection.");
  } else if (run.status === "succeeded" && !run.dryRun) {
    actionStatus("Done: the users are up to date.");
  }
}

// -- save and refresh ---------------------------------------------------------------------------

async function onSave() {
  if (state.busy) return;
  setBusy(true);
  clearErrors();
  const ids = [...state.pending.keys()];
  const body = ids.length ? { mode: "groups", groupIds: ids } : { mode: "all" };
  try {
    actionStatus("Checking what this selection would change (preview)…");
    const { data: queued } = await api("POST", `${T()}/preview`, { body });
    const preview = await followRun(queued);
    if (!preview) return;
    if (preview.status === "failed") {
      actionStatus("Not saved: the preview failed.");
      showError({ title: "The preview failed", detail: preview.error || "No error text was recorded." }, "Save");
      return;
    }
    if ((preview.counts?.removed || 0) > 0) {
      const confirmed = await confirmRemovals(preview);
      if (!confirmed) {
        actionStatus("Not saved: cancelled. Your changes are still pending.");
        return;
      }
    }
    actionStatus("Saving…");
    // The removals just confirmed (or none) are the ones this save may make: same fingerprint.
    const confirmed = { ...body, confirmedPreview: { runId: preview.id, removalDigest: preview.removalDigest } };
    const { data, headers } = await api("PUT", `${T()}/selection`, { body: preview.removalDigest ? confirmed : body, headers: { "If-Match": state.etag } });
    const { run, ...selection } = data;
    applySaved(selection, headers.get("ETag"));
    renderSelected();
    actionStatus("Saved. Refreshing the users…");
    const done = await followRun(run);
    afterRun(done);
  } catch (error) {
    if (error.status === 412) {
      actionStatus("Not saved.");
      const reload = h("button", {
        type: "button", onclick: async () => { clearErrors(); await loadSelection(); actionStatus("Reloaded the saved selection."); },
      }, "Reload the selection");
      showError({ title: "Not saved", detail: `Someone else changed the selection; reload. (${error.detail})` }, "", reload);
    } else {
      actionStatus("Not saved.");
      showError(error, "Saving the selection");
    }
  } finally {
    setBusy(false);
  }
}

/** The removal confirmation: resolves true on Confirm, false on Cancel or Escape. */
function confirmRemovals(preview) {
  const c = preview.counts;
  const extra = [];
  if (c.restored) extra.push(`restore ${c.restored}`);
  if (c.updated) extra.push(`update ${c.updated}`);
  const ids = preview.plan?.remove || [];
  return confirmDialog({
    title: `Remove ${plural(c.removed, "user")} from the platform?`,
    summary: `Saving this selection would add ${plural(c.added, "user")} and remove ${plural(c.removed, "user")}`
      + `${extra.length ? ` (and ${extra.join(", ")})` : ""}. These users would be removed:`,
    listLabel: "Users who would be removed",
    hint: "Removed users stay restorable for a grace period and come back when they are in a selected group again.",
    more: c.removed - ids.length,
    fill: (list) => fillNames(list, ids),
    danger: true,
  });
}

/** The undo confirmation: how many users come back, and that the next refresh removes them again. */
function confirmUndo(run, n, users) {
  return confirmDialog({
    title: `Restore ${plural(n, "user")} to the platform?`,
    summary: `Undoing the removals of the run of ${when(run.requestedAt)} makes ${plural(n, "user")} active again`
      + `${users ? ":" : "."}`,
    listLabel: "Users who would be restored",
    hint: "Only users still removed by that run and within the grace period come back. The next refresh removes "
      + "them again unless the cause is fixed: change the selection or the users’ groups first.",
    more: 0,
    fill: (list) => list.replaceChildren(...(users || []).map((u) =>
      h("li", {}, `${u.displayName || u.userPrincipalName} (${u.userPrincipalName})`))),
    danger: false,
  });
}

/** The page's confirmation dialog: resolves true on Confirm, false on Cancel or Escape. */
function confirmDialog({ title, summary, listLabel, hint, more, fill, danger }) {
  const dialog = $("confirm-dialog");
  $("confirm-title").textContent = title;
  $("confirm-summary").textContent = summary;
  $("confirm-hint").textContent = hint;
  $("confirm-ok").className = danger ? "danger" : "primary";
  const list = $("confirm-list");
  list.setAttribute("aria-label", listLabel);
  const wrap = $("confirm-list-wrap");
  wrap.querySelector(".more")?.remove();
  if (more > 0) wrap.append(h("p", { class: "more small" }, `…and ${more} more not listed.`));
  fill(list);
  wrap.hidden = list.children.length === 0 && more <= 0;
  return new Promise((resolve) => {
    const ok = $("confirm-ok");
    const cancel = $("confirm-cancel");
    const done = (value) => {
      ok.removeEventListener("click", onOk);
      cancel.removeEventListener("click", onCancel);
      dialog.removeEventListener("close", onClose);
      if (dialog.open) dialog.close();
      resolve(value);
    };
    const onOk = () => done(true);
    const onCancel = () => done(false);
    const onClose = () => done(false); // Escape
    ok.addEventListener("click", onOk);
    cancel.addEventListener("click", onCancel);
    dialog.addEventListener("close", onClose);
    dialog.showModal();
    cancel.focus();
  });
}

async function onRefresh() {
  if (state.busy) return;
  setBusy(true);
  clearErrors();
  actionStatus(isDirty()
    ? "Refreshing with the saved selection (your unsaved changes are not part of it)…"
    : "Refreshing the users…");
  try {
    const { data } = await api("POST", `${T()}/refresh`);
    const done = await followRun(data);
    afterRun(done);
  } catch (error) {
    actionStatus("");
    showError(error, "Refresh Users Now");
  } finally {
    setBusy(false);
  }
}

// -- roster -------------------------------------------------------------------------------------

const rosterState = { cursor: null, stack: [], next: null, seq: 0, size: 100 };

function renderRosterGroupOptions() {
  const select = $("roster-group");
  const current = select.value;
  select.replaceChildren(h("option", { value: "" }, "Any group"),
    ...(state.saved?.groups || []).map((g) => h("option", { value: g.id }, g.displayName)));
  select.value = [...select.options].some((o) => o.value === current) ? current : "";
}

async function loadRoster({ cursor = null } = {}) {
  const seq = ++rosterState.seq;
  const query = new URLSearchParams({ status: $("roster-status").value, limit: String(rosterState.size) });
  const group = $("roster-group").value;
  const search = $("roster-search").value.trim();
  if (group) query.set("group", group);
  if (search) query.set("search", search);
  if (cursor) query.set("cursor", cursor);
  const csv = new URLSearchParams(query);
  csv.delete("limit");
  csv.delete("cursor");
  csv.set("format", "csv");
  $("roster-csv").href = `${API}${T()}/users?${csv}`;
  const summary = $("roster-summary");
  summary.textContent = "Loading users…";
  try {
    const { data } = await api("GET", `${T()}/users?${query}`);
    if (seq !== rosterState.seq) return;
    rosterState.cursor = cursor;
    rosterState.next = data.nextCursor || null;
    $("roster-body").replaceChildren(...data.value.map(rosterRow));
    const first = rosterState.stack.length * rosterState.size;
    const n = data.value.length;
    if (n === 0) {
      summary.textContent = first ? "No more users." : `No ${$("roster-status").value === "all" ? "" : `${$("roster-status").value} `}users match.`;
    } else if (!rosterState.next && first === 0) {
      summary.textContent = `${plural(n, "user")}.`;
    } else {
      summary.textContent = `Users ${first + 1}–${first + n}${rosterState.next ? ", more on the next page" : ""}.`;
    }
    $("roster-prev").disabled = rosterState.stack.length === 0;
    $("roster-next").disabled = !rosterState.next;
  } catch (error) {
    if (seq !== rosterState.seq) return;
    summary.textContent = "The users could not be loaded.";
    showError(error, "Loading users");
  }
}

function resetRoster() {
  rosterState.stack = [];
  loadRoster();
}

function rosterRow(user) {
  const name = user.displayName || user.userPrincipalName;
  const groups = (user.groups || []).map((id) => state.names.get(id) || id).join(", ");
  return h("tr", { "data-user-id": user.id },
    h("td", {}, user.displayName || "—"),
    h("td", { class: "upn" }, user.userPrincipalName),
    h("td", { "data-label": "Department" }, user.department || "—"),
    h("td", { "data-label": "Groups" }, groups || (state.saved?.mode === "all" ? "All users" : "—")),
    h("td", { "data-label": "Status" }, h("span", { class: `badge user-${user.status === "removed" ? "removed" : "active"}` },
      user.status === "removed" ? `Removed ${user.removedAt ? when(user.removedAt) : ""}`.trim() : "Active")),
    h("td", {}, h("button", {
      type: "button", class: "why", "aria-label": `Why? ${name}`,
      onclick: () => {
        $("explain-input").value = user.userPrincipalName || user.id;
        explain(user.id);
      },
    }, "Why?")));
}

// -- explain ------------------------------------------------------------------------------------

const GUID_OR_UPN = /^([0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}|[^@\s]+@[^@\s]+)$/i;

/** "Why is this user not synced?": an id or UPN is explained at once; other text finds users by name. */
async function whyUser(text) {
  const matches = $("explain-matches");
  matches.replaceChildren();
  if (GUID_OR_UPN.test(text)) return explain(text);
  const result = $("explain-result");
  result.replaceChildren(h("p", { class: "muted" }, `Looking for “${text}”…`));
  try {
    const { data } = await api("GET", `${T()}/directory/users?${new URLSearchParams({ search: text })}`);
    const found = data.value || [];
    if (found.length === 1) return explain(found[0].id);
    if (!found.length) {
      result.replaceChildren(h("p", {}, `No user’s name, mail or user principal name starts with “${text}”.`));
      return null;
    }
    result.replaceChildren();
    matches.replaceChildren(
      h("p", {}, `${found.length}${found.length >= 10 ? " or more" : ""} users match “${text}”: pick one.`),
      h("ul", { "aria-label": "Matching users" }, found.map((u) => h("li", {}, h("button", {
        type: "button", class: "link-button pick",
        onclick: () => { matches.replaceChildren(); $("explain-input").value = u.userPrincipalName; explain(u.id); },
      }, `${u.displayName || u.userPrincipalName} (${u.userPrincipalName})`)))));
    matches.querySelector("button")?.focus();
  } catch (error) {
    result.replaceChildren(h("p", { class: "error-text" }, error.detail || String(error)));
    showError(error, "Finding the user");
  }
  return null;
}

async function explain(who) {
  const result = $("explain-result");
  result.replaceChildren(h("p", { class: "muted" }, `Checking ${who}…`));
  try {
    const { data } = await api("GET", `${T()}/users/${encodeURIComponent(who)}/explain`);
    const user = data.user || {};
    const rosterText = {
      active: "On the platform now (active).",
      removed: "Removed from the platform (restorable during the grace period).",
      absent: "Not on the platform.",
    }[data.rosterStatus] || `Roster status: ${data.rosterStatus}`;
    const groups = data.groups || [];
    // replaceChildren would write a null as the text "null": leave out what is not there.
    result.replaceChildren(...[
      h("h3", {}, user.displayName ? `${user.displayName} (${user.userPrincipalName})` : (user.userPrincipalName || who)),
      h("p", { class: data.included ? "verdict yes" : "verdict no" },
        data.included ? "Included: this user is synced." : "Not included: this user is not synced."),
      data.reasons?.length
        ? h("ul", { class: "reasons", "aria-label": "Reasons" }, data.reasons.map((r) => h("li", {},
          h("code", {}, r.code), " ", r.message, r.rule ? h("span", { class: "rule" }, `Rule that matched: ${r.rule}`) : null)))
        : null,
      h("p", {}, groups.length
        ? `In the selected groups: ${groups.map((g) => g.displayName).join(", ")}.`
        : (state.saved?.mode === "all" ? "Every user of the tenant is considered (no group is selected)." : "In none of the selected groups.")),
      h("p", {}, rosterText),
      data.note ? h("p", { class: "note" }, data.note) : null,
    ].filter(Boolean));
    result.focus();
  } catch (error) {
    result.replaceChildren(h("p", { class: "error-text" }, error.detail || String(error)));
    showError(error, "Explaining the user");
  }
  return null;
}

// -- users not synced ---------------------------------------------------------------------------

const excludedState = { cursor: null, stack: [], next: null, seq: 0, size: 50 };

function excludedQuery(extra = {}) {
  const query = new URLSearchParams(extra);
  const reason = $("excluded-reason").value;
  const search = $("excluded-search").value.trim();
  if (reason) query.set("reason", reason);
  if (search) query.set("search", search);
  return query;
}

async function loadExcluded({ cursor = null } = {}) {
  const seq = ++excludedState.seq;
  const query = excludedQuery({ limit: String(excludedState.size) });
  if (cursor) query.set("cursor", cursor);
  $("excluded-csv").href = `${API}${T()}/excluded?${excludedQuery({ format: "csv" })}`;
  const summary = $("excluded-summary");
  summary.textContent = "Loading…";
  try {
    const { data } = await api("GET", `${T()}/excluded?${query}`);
    if (seq !== excludedState.seq) return;
    excludedState.cursor = cursor;
    excludedState.next = data.nextCursor || null;
    $("excluded-asof").textContent = data.asOf
      ? `As the last full refresh found them (${when(data.asOf)}).`
      : "No full refresh yet: run one (Save or Refresh Users Now) to see who is left out.";
    const labels = Object.fromEntries(EXCLUDED_LABELS);
    $("excluded-body").replaceChildren(...data.value.map((u) => h("tr", { "data-user-id": u.id },
      h("td", {}, u.displayName || "—"),
      h("td", { class: "upn" }, u.userPrincipalName),
      h("td", { "data-label": "Reason" }, (u.reasons || [u.reason]).map((r) => labels[r] || r).join("; ")),
      h("td", { "data-label": "Rule" }, (u.rules || []).join("; ")))));
    const first = excludedState.stack.length * excludedState.size;
    const n = data.value.length;
    summary.textContent = n === 0
      ? (first ? "No more users." : "Nobody matches.")
      : `Users ${first + 1}–${first + n}${excludedState.next ? ", more on the next page" : ""}.`;
    $("excluded-prev").disabled = excludedState.stack.length === 0;
    $("excluded-next").disabled = !excludedState.next;
  } catch (error) {
    if (seq !== excludedState.seq) return;
    summary.textContent = "The excluded users could not be loaded.";
    showError(error, "Loading the users not synced");
  }
}

function resetExcluded() {
  excludedState.stack = [];
  loadExcluded();
}

// -- optional exclusions ------------------------------------------------------------------------

const choicesState = { rules: null, etag: null };

async function loadChoices() {
  try {
    const { data, headers } = await api("GET", `${T()}/rules`);
    choicesState.rules = data;
    choicesState.etag = headers.get("ETag");
    $("choice-service").checked = data.excludeServiceAccounts !== false;
    $("choice-shared").checked = data.excludeSharedMailboxes !== false;
    const seen = data.optionalMatches || {};
    const caught = (key, on) => {
      if (typeof seen[key] !== "number") return on ? "Counted at the next full refresh." : "Off: nobody is left out for this.";
      return on ? `Currently catches ${plural(seen[key], "user")}.` : `Off: ${plural(seen[key], "user")} would be caught, and are synced.`;
    };
    $("choice-service-count").textContent = caught("serviceAccount", data.excludeServiceAccounts !== false);
    $("choice-shared-count").textContent = data.excludeSharedMailboxes !== false || typeof seen.sharedMailbox === "number"
      ? caught("sharedMailbox", data.excludeSharedMailboxes !== false)
      : "Off: shared mailboxes are synced (they are not looked up while this is off).";
  } catch (error) {
    showError(error, "Loading the optional exclusions");
  }
}

async function saveChoices() {
  if (state.busy || !choicesState.rules) return;
  const rules = choicesState.rules;
  const service = $("choice-service").checked;
  const shared = $("choice-shared").checked;
  const seen = rules.optionalMatches || {};
  const turningOn = [];
  if (service && rules.excludeServiceAccounts === false) turningOn.push(["service accounts", seen.serviceAccount]);
  if (shared && rules.excludeSharedMailboxes === false) turningOn.push(["shared mailboxes", seen.sharedMailbox]);
  if (turningOn.length) {
    const ok = await confirmDialog({
      title: `Exclude ${turningOn.map(([what]) => what).join(" and ")}?`,
      summary: `Saving removes ${turningOn.map(([what, n]) => (typeof n === "number" ? `${plural(n, "user")} (${what})` : `every ${what.slice(0, -1)}`)).join(" and ")} `
        + "from the platform at the refresh that follows (the removal guard may hold it for an approval).",
      listLabel: "", hint: "Removed users stay restorable for a grace period.", more: 0,
      fill: (list) => list.replaceChildren(), danger: true,
    });
    if (!ok) {
      $("choices-status").textContent = "Not saved: cancelled.";
      return;
    }
  }
  setBusy(true);
  $("choices-status").textContent = "Saving…";
  const { optionalMatches, optionalMatchesRun, ...body } = rules;
  try {
    const { data } = await api("PUT", `${T()}/rules`, {
      body: { ...body, excludeServiceAccounts: service, excludeSharedMailboxes: shared },
      headers: { "If-Match": choicesState.etag || "*" },
    });
    $("choices-status").textContent = "Saved. Refreshing the users…";
    const done = await followRun(data.run);
    afterRun(done);
    $("choices-status").textContent = done?.status === "succeeded" ? "Saved and applied." : "Saved; see the run above.";
  } catch (error) {
    $("choices-status").textContent = "Not saved.";
    showError(error, "Saving the optional exclusions");
  } finally {
    setBusy(false);
    loadChoices();
  }
}

// -- connection ---------------------------------------------------------------------------------

const CONNECTION_STATES = {
  connected: "Connected: every required permission works.",
  permissionMissing: "Missing permissions: the sync cannot read the directory until an administrator grants them.",
  notConsented: "Not connected: the app has no admin consent in this tenant (never granted, or removed).",
  tenantNotFound: "Not connected: Microsoft Entra ID does not know this tenant id.",
  credentialRejected: "Not connected: the app's own sign-in was refused; the operator must fix the app's credential.",
  blocked: "Not connected: a Conditional Access policy or a disabled app stops the sign-in.",
};

async function loadConnection() {
  const view = $("connection-view");
  view.replaceChildren(h("p", { class: "muted" }, "Checking the Microsoft Graph permissions…"));
  try {
    const { data } = await api("GET", `${T()}/connection`);
    const parts = [h("p", { class: data.ok ? "verdict yes" : "verdict no", "data-state": data.state },
      CONNECTION_STATES[data.state] || (data.ok ? CONNECTION_STATES.connected : CONNECTION_STATES.permissionMissing))];
    if (data.detail) parts.push(h("p", { class: "connection-detail" }, linkify(data.detail)));
    if (data.missingPermissions?.length) {
      parts.push(h("p", { class: "small" }, "Missing: ", data.missingPermissions.map((p) => h("code", {}, p)).flatMap((c, i) => (i ? [", ", c] : [c]))));
    }
    if (data.checks?.length) parts.push(h("div", { class: "table-wrap" }, h("table", { class: "permissions" },
      h("caption", { class: "visually-hidden" }, "Microsoft Graph permissions"),
      h("thead", {}, h("tr", {}, ["Permission", "Reads", "Needed", "Status", "Detail"].map((t) => h("th", { scope: "col" }, t)))),
      h("tbody", {}, (data.checks || []).map((check) => h("tr", {},
        h("th", { scope: "row" }, check.permission),
        h("td", {}, check.reads),
        h("td", {}, check.required ? "required" : "optional"),
        h("td", {}, h("span", { class: `badge ${check.ok ? "ok" : "missing"}` }, check.ok ? "ok" : "missing")),
        h("td", { class: "small" }, linkify(check.detail || ""))))))));
    if (data.adminConsentUrl && !data.ok && data.state !== "credentialRejected") {
      parts.push(h("p", {}, h("a", { class: "button-link", href: data.adminConsentUrl, rel: "noopener" }, "Grant admin consent"),
        " (a Global Administrator of the tenant signs in and accepts)"));
    } else if (data.adminConsentUrl) {
      parts.push(h("p", {}, "Admin consent: ", linkify(data.adminConsentUrl)));
    } else if (!data.ok) {
      parts.push(h("p", { class: "small" }, "Ask a Global Administrator of the tenant to grant the app’s permissions (admin consent)."));
    }
    if (data.note) parts.push(h("p", { class: "small" }, data.note));
    const reconnect = data.state === "notConsented" || data.state === "permissionMissing";
    if (reconnect) {
      const button = h("button", { type: "button", class: "primary", onclick: () => startConsent(state.tenant.id, button) }, "Reconnect");
      parts.push(h("p", {}, button, " grant the app’s permissions again (admin consent) and come back here."));
    }
    view.replaceChildren(...parts);
    if (!data.ok) $("trouble-groups").open = true;
  } catch (error) {
    view.replaceChildren(h("p", { class: "error-text" }, error.detail || String(error)));
    showError(error, "Checking the connection");
  }
}

// -- wiring -------------------------------------------------------------------------------------

function wire() {
  const search = debounce(() => {
    groupsState.search = $("group-search").value.trim();
    groupsState.next = null;
    loadGroups();
  }, 300);
  $("group-search").addEventListener("input", search);
  $("group-search").addEventListener("keydown", (event) => {
    if (event.key === "Enter") event.preventDefault();
  });
  $("groups-more").addEventListener("click", () => loadGroups({ more: true }));
  $("save").addEventListener("click", onSave);
  $("refresh").addEventListener("click", onRefresh);
  $("runs-reload").addEventListener("click", () => loadRuns());
  $("runs-more").addEventListener("click", () => loadRuns({ more: true }));
  $("connection-check").addEventListener("click", loadConnection);
  $("roster-filters").addEventListener("submit", (event) => {
    event.preventDefault();
    resetRoster();
  });
  $("roster-group").addEventListener("change", resetRoster);
  $("roster-status").addEventListener("change", resetRoster);
  $("roster-search").addEventListener("input", debounce(resetRoster, 300));
  $("roster-next").addEventListener("click", () => {
    if (!rosterState.next) return;
    rosterState.stack.push(rosterState.cursor);
    loadRoster({ cursor: rosterState.next });
  });
  $("roster-prev").addEventListener("click", () => {
    if (!rosterState.stack.length) return;
    loadRoster({ cursor: rosterState.stack.pop() });
  });
  $("explain-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const who = $("explain-input").value.trim();
    if (who) whyUser(who);
  });
  const reasons = $("excluded-reason");
  reasons.append(...EXCLUDED_LABELS.map(([key, label]) => h("option", { value: key }, label)));
  $("excluded-filters").addEventListener("submit", (event) => {
    event.preventDefault();
    resetExcluded();
  });
  reasons.addEventListener("change", resetExcluded);
  $("excluded-search").addEventListener("input", debounce(resetExcluded, 300));
  $("excluded-next").addEventListener("click", () => {
    if (!excludedState.next) return;
    excludedState.stack.push(excludedState.cursor);
    loadExcluded({ cursor: excludedState.next });
  });
  $("excluded-prev").addEventListener("click", () => {
    if (!excludedState.stack.length) return;
    loadExcluded({ cursor: excludedState.stack.pop() });
  });
  $("choices-form").addEventListener("submit", (event) => {
    event.preventDefault();
    saveChoices();
  });
}

init();
