// The onboarding console: lists the tenant's servers and watches one's onboarding live.
// Plain DOM, no framework; everything it calls is this origin's REST API.
"use strict";

const STEPS = ["provisioning", "awaiting_firewall", "waiting_for_agent",
  "initializing", "snapshotting", "streaming"];
const KEY_ITEM = "dbtrail-console.key";
const REFRESH_MS = 3000;        // the open server and its change events
const LIST_REFRESH_MS = 15000;  // the server list
const EVENTS_SHOWN = 20;
const EVENTS_WINDOW_MS = 5 * 60 * 1000;

const state = {
  key: "",
  servers: new Map(),   // server_id -> Server
  session: null,        // the open server: {id, controller, revision, status, server, ...}
  listTimer: 0,
  listBusy: false,
};

// ---------------------------------------------------------------- DOM helpers

const byId = (id) => document.getElementById(id);

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (value === null || value === undefined || value === false) continue;
    if (name === "class") node.className = value;
    else node.setAttribute(name, value === true ? "" : String(value));
  }
  node.append(...children.filter((child) => child !== null && child !== undefined));
  return node;
}

function setText(id, text) { byId(id).textContent = text ?? ""; }

function badge(node, status) {
  node.textContent = status || "—";
  node.className = `badge badge-${status || "unknown"}`;
  return node;
}

const label = (name) => name[0].toUpperCase() + name.slice(1).replaceAll("_", " ");

const time = (ts) => (ts ? new Date(ts).toLocaleTimeString([], { hour12: false }) : "—");

let messageTimer = 0;

// Notices go after a few seconds; errors stay until the next action, or, when the service could
// not be reached, until it answers again.
function showMessage(text, kind = "error") {
  const node = byId("message");
  node.textContent = text;
  node.className = `message ${kind}`;
  node.hidden = false;
  clearTimeout(messageTimer);
  if (kind === "notice") messageTimer = setTimeout(clearMessage, 6000);
}

function clearMessage(kind) {
  const node = byId("message");
  if (!kind || node.classList.contains(kind)) node.hidden = true;
}

const report = (error) => showMessage(describe(error), error instanceof ApiError ? "error" : "offline");

// ---------------------------------------------------------------- API

class ApiError extends Error {
  constructor(status, body) {
    super(body?.message || `HTTP ${status}`);
    this.status = status;
    this.body = body;
  }
}

function describe(error) {
  if (error instanceof ApiError) {
    if (error.status === 401) return `The key was refused: ${error.message}`;
    return `${error.message} (HTTP ${error.status})`;
  }
  return `Cannot reach the service: ${error.message}`;
}

function authHeaders(extra = {}) {
  return { authorization: `Bearer ${state.key}`, ...extra };
}

async function api(path, { method = "GET", signal } = {}) {
  const response = await fetch(path, {
    method, signal, cache: "no-store", headers: authHeaders({ accept: "application/json" }),
  });
  const text = await response.text();
  let body = null;
  try { body = text ? JSON.parse(text) : null; } catch { body = { message: text.slice(0, 200) }; }
  if (!response.ok) throw new ApiError(response.status, body);
  return body;
}

const serverPath = (id) => `/servers/${encodeURIComponent(id)}`;

// ---------------------------------------------------------------- the key

function saveKey() {
  const key = byId("key-input").value.trim();
  if (!key) { showMessage("Paste an API key first."); return; }
  sessionStorage.setItem(KEY_ITEM, key);
  state.key = key;
  clearMessage();
  loadServers();
}

function forgetKey() {
  sessionStorage.removeItem(KEY_ITEM);
  state.key = "";
  byId("key-input").value = "";
  closeServer();
  state.servers.clear();
  renderServers();
  clearTimeout(state.listTimer);
  showMessage("The key is forgotten.", "notice");
}

// ---------------------------------------------------------------- the server list

async function loadServers() {
  const { key } = state;
  if (!key || state.listBusy) return;
  clearTimeout(state.listTimer);
  state.listBusy = true;
  let again = true;
  try {
    const servers = new Map();
    let token = "";
    do {
      const query = new URLSearchParams({ page_size: "100" });
      if (token) query.set("page_token", token);
      const page = await api(`/servers?${query}`);
      for (const server of page.servers) servers.set(server.server_id, server);
      token = page.next_page_token;
    } while (token && state.key === key);
    if (state.key !== key) return; // forgotten or replaced meanwhile
    state.servers = servers;
    renderServers();
    const wanted = decodeURIComponent(location.hash.slice(1));
    if (!state.session && servers.has(wanted)) openServer(wanted);
  } catch (error) {
    if (state.key === key) report(error);
    again = error.status !== 401;
  } finally {
    state.listBusy = false;
    if (again && state.key === key) state.listTimer = setTimeout(loadServers, LIST_REFRESH_MS);
  }
}

function renderServers() {
  const list = byId("servers");
  const rows = new Map([...list.children].map((item) => [item.dataset.serverId, item]));
  const items = [...state.servers.values()].map((server) =>
    updateServerRow(rows.get(server.server_id) ?? newServerRow(server.server_id), server));
  // Rows are kept (not rebuilt) so that a click in progress is never lost to a refresh.
  if (items.length !== list.children.length || items.some((item, i) => list.children[i] !== item)) {
    list.replaceChildren(...items);
  }
  const empty = byId("servers-empty");
  empty.hidden = state.servers.size > 0;
  empty.textContent = state.key ? "This tenant has no servers yet."
    : "Paste an API key and press Save to see the tenant's servers.";
}

function newServerRow(id) {
  return el("li", { "data-server-id": id },
    el("button", { type: "button", class: "server-row", "data-testid": "server-row", "data-server-id": id },
      el("span", { class: "row-main" }, el("span", { class: "row-name" }), el("span", { class: "row-sub" })),
      el("span", { "data-testid": "status-badge" })));
}

function updateServerRow(item, server) {
  const button = item.firstElementChild;
  button.querySelector(".row-name").textContent = server.name;
  button.querySelector(".row-sub").textContent =
    `${server.host}:${server.port} · ${server.connection_method.replace("_", " ")}`;
  badge(button.querySelector("[data-testid=status-badge]"), server.status);
  if (server.server_id === state.session?.id) button.setAttribute("aria-current", "true");
  else button.removeAttribute("aria-current");
  return item;
}

function onListClick(event) {
  const row = event.target.closest("[data-testid=server-row]");
  if (row) openServer(row.dataset.serverId);
}

// ---------------------------------------------------------------- the open server

function openServer(id) {
  if (state.session?.id === id) return;
  closeServer();
  const session = {
    id, controller: new AbortController(), revision: -1, status: null, server: null,
    events: [], eventIds: new Set(), eventsDenied: false, busy: new Set(), timer: 0,
    refreshAgain: false, confirmedRevision: null,
  };
  state.session = session;
  history.replaceState(null, "", `#${encodeURIComponent(id)}`);
  byId("detail").hidden = false;
  byId("detail-empty").hidden = true;
  renderServer(session, state.servers.get(id) || null);
  renderStatus(session, null);
  renderEvents(session);
  renderServers();
  watch(session);
  tick(session);
}

function closeServer() {
  const session = state.session;
  if (!session) return;
  session.controller.abort();
  clearTimeout(session.timer);
  state.session = null;
  byId("detail").hidden = true;
  byId("detail-empty").hidden = false;
  history.replaceState(null, "", location.pathname);
}

const current = (session) => state.session === session && !session.controller.signal.aborted;

// Refreshes the Server (stream state, lag) and, while the stream runs, its change events.
async function tick(session) {
  clearTimeout(session.timer);
  await refreshServer(session);
  if (current(session) && session.server?.stream?.state === "running") await refreshEvents(session);
  if (current(session)) session.timer = setTimeout(() => tick(session), REFRESH_MS);
}

async function refreshServer(session) {
  if (session.busy.has("server")) { session.refreshAgain = true; return; }
  session.busy.add("server");
  session.refreshAgain = false;
  try {
    const server = await api(serverPath(session.id), { signal: session.controller.signal });
    if (!current(session)) return;
    clearMessage("offline");
    state.servers.set(server.server_id, server);
    renderServer(session, server);
    renderServers();
  } catch (error) {
    if (current(session)) report(error);
  } finally {
    session.busy.delete("server");
    if (session.refreshAgain && current(session)) refreshServer(session);
  }
}

function renderServer(session, server) {
  session.server = server;
  setText("detail-title", server?.name ?? session.id);
  setText("detail-sub", server
    ? `${server.host}:${server.port} · ${server.connection_method.replace("_", " ")} · ${server.server_id}` : "");
  const stream = server?.stream;
  byId("stream").hidden = !stream;
  if (!stream) return;
  badge(byId("stream-state"), stream.state);
  setText("stream-lag", typeof stream.lag_seconds === "number" ? `${stream.lag_seconds.toFixed(1)} s` : "—");
  setText("stream-events", String(stream.events_indexed ?? 0));
  setText("stream-last-event", time(stream.last_event_at));
  setText("stream-position", stream.binlog_file ? `${stream.binlog_file}:${stream.binlog_position}` : "—");
  setText("stream-reconnects", String(stream.reconnects ?? 0));
  setText("stream-error", stream.error);
  byId("stream-error-box").hidden = !stream.error;
}

// Shows an OnboardingStatus unless a newer revision is already shown.
function applyStatus(session, status) {
  if (!current(session) || status.revision < session.revision) return;
  const changed = status.revision !== session.revision;
  session.revision = status.revision;
  session.status = status;
  renderStatus(session, status);
  if (changed) refreshServer(session);
}

function renderStatus(session, status) {
  badge(byId("server-status"), status?.server_status);
  setText("current-step", status?.current_step ?? "—");
  setText("revision", status ? String(status.revision) : "—");
  setText("agent-outbound-ip", status?.agent_outbound_ip);
  byId("firewall-box").hidden = !status?.agent_outbound_ip;
  setText("onboarding-error", status?.error);
  byId("error-box").hidden = !status?.error;
  byId("confirm-firewall").disabled = status?.current_step !== "awaiting_firewall"
    || session.busy.has("confirm") || session.confirmedRevision === status?.revision;
  byId("retry-onboarding").disabled = status?.server_status !== "error" || session.busy.has("retry");
  const steps = new Map((status?.steps ?? []).map((step) => [step.name, step]));
  byId("steps").replaceChildren(...STEPS.map((name) => renderStep(
    steps.get(name) ?? { name, status: "pending", attempts: 0, message: "" }, status?.current_step)));
}

function renderStep(step, currentStep) {
  const meta = [step.attempts > 1 && `attempt ${step.attempts}`,
    step.started_at && `started ${time(step.started_at)}`,
    step.completed_at && `done ${time(step.completed_at)}`].filter(Boolean).join(" · ");
  return el("li", {
    class: `step step-${step.status}${step.name === currentStep ? " current" : ""}`,
    "data-testid": "step", "data-step": step.name, "data-status": step.status,
  },
  el("span", { class: "step-icon", "aria-hidden": "true" }),
  el("span", { class: "step-body" },
    el("span", { class: "step-name" }, label(step.name)),
    el("span", { class: "step-status" }, step.status.replace("_", " ")),
    meta ? el("span", { class: "step-meta" }, meta) : null,
    step.message ? el("span", { class: "step-message" }, step.message) : null,
    ...(step.warnings ?? []).map((warning) =>
      el("span", { class: "step-warning", "data-testid": "step-warning" }, warning)),
    step.error ? el("span", { class: "step-error" }, step.error) : null));
}

// ---------------------------------------------------------------- actions

async function act(name, path, done) {
  const session = state.session;
  if (!session || session.busy.has(name)) return;
  session.busy.add(name);
  renderStatus(session, session.status);
  try {
    const body = await api(path, { method: "POST", signal: session.controller.signal });
    if (current(session)) done(session, body);
  } catch (error) {
    if (current(session)) report(error);
  } finally {
    session.busy.delete(name);
    if (current(session)) renderStatus(session, session.status);
  }
}

function confirmFirewall() {
  act("confirm", `${serverPath(state.session?.id)}/confirm-firewall`, (session) => {
    session.confirmedRevision = session.revision;
    showMessage("Firewall confirmed: the agent connects now.", "notice");
  });
}

function retryOnboarding() {
  act("retry", `${serverPath(state.session?.id)}/retry-onboarding`, (session, status) => {
    showMessage("Onboarding resumed.", "notice");
    applyStatus(session, status);
  });
}

// ---------------------------------------------------------------- change events

async function refreshEvents(session) {
  if (session.eventsDenied || session.busy.has("events")) return;
  session.busy.add("events");
  try {
    // From the newest event shown (again, as commit times have whole seconds), or at first from
    // a few minutes before the stream's last event: the newest ones, not the oldest stored.
    const lastEventAt = session.server?.stream?.last_event_at;
    const since = session.events[0]?.committed_at
      ?? (lastEventAt && new Date(Date.parse(lastEventAt) - EVENTS_WINDOW_MS).toISOString());
    let token = "";
    let pages = 0;
    while (since) {
      const query = new URLSearchParams({ page_size: "100", filter: `committed_at >= "${since}"` });
      if (token) query.set("page_token", token);
      const page = await api(`${serverPath(session.id)}/change-events?${query}`,
        { signal: session.controller.signal });
      if (!current(session)) return;
      for (const event of page.events) addEvent(session, event);
      token = page.next_page_token;
      if (!token || ++pages === 20) break;
    }
    renderEvents(session);
  } catch (error) {
    if (!current(session)) return;
    if (error.status === 403) {
      session.eventsDenied = true;
      renderEvents(session);
    } else {
      report(error);
    }
  } finally {
    session.busy.delete("events");
  }
}

function addEvent(session, event) {
  if (session.eventIds.has(event.event_id)) return;
  session.eventIds.add(event.event_id);
  session.events.unshift(event);
  if (session.events.length > EVENTS_SHOWN) {
    for (const old of session.events.splice(EVENTS_SHOWN)) session.eventIds.delete(old.event_id);
  }
}

function renderEvents(session) {
  const note = byId("events-note");
  note.classList.toggle("denied", session.eventsDenied);
  note.textContent = session.eventsDenied
    ? "This key lacks the changes:read permission, so row changes are not shown."
    : "No change events yet.";
  note.hidden = !session.eventsDenied && session.events.length > 0;
  byId("events-table").hidden = session.eventsDenied || session.events.length === 0;
  const json = (value) => (value ? JSON.stringify(value) : "");
  byId("events").replaceChildren(...session.events.map((event) => el("tr", {
    "data-testid": "change-event", "data-event-id": event.event_id,
  },
  el("td", { title: event.committed_at }, time(event.committed_at)),
  el("td", {}, el("span", { class: `kind kind-${event.type}` }, event.type)),
  el("td", {}, `${event.schema}.${event.table}`),
  el("td", {}, el("code", {}, json(event.primary_key))),
  el("td", { class: "row-data" }, el("code", {}, json(event.after ?? event.before))))));
}

// ---------------------------------------------------------------- the live watch (SSE over fetch)

// Returns a function fed with decoded text chunks that calls onEvent({event, data, id}) for each
// complete event; lines may end in \n, \r\n or \r and may be split anywhere between chunks.
function sseParser(onEvent) {
  let buffer = "";
  let data = [];
  let type = "";
  let id = null;
  const line = (text) => {
    if (text === "") {
      if (data.length) onEvent({ event: type || "message", data: data.join("\n"), id });
      data = [];
      type = "";
      return;
    }
    if (text.startsWith(":")) return;
    const colon = text.indexOf(":");
    const field = colon < 0 ? text : text.slice(0, colon);
    let value = colon < 0 ? "" : text.slice(colon + 1);
    if (value.startsWith(" ")) value = value.slice(1);
    if (field === "data") data.push(value);
    else if (field === "event") type = value;
    else if (field === "id" && !value.includes("\0")) id = value;
  };
  let skipLF = false; // the last chunk ended in \r: a \n starting this one belongs to it
  return (chunk) => {
    const text = skipLF && chunk.startsWith("\n") ? chunk.slice(1) : chunk;
    if (chunk) skipLF = text.endsWith("\r");
    const lines = (buffer + text).split(/\r\n|\r|\n/);
    buffer = lines.pop();
    lines.forEach(line);
  };
}

function setWatchState(session, text, kind) {
  if (!current(session)) return;
  const node = byId("watch-state");
  node.textContent = text;
  node.className = `watch watch-${kind}`;
}

const sleep = (ms, signal) => new Promise((resolve) => {
  const timer = setTimeout(resolve, ms);
  signal.addEventListener("abort", () => { clearTimeout(timer); resolve(); }, { once: true });
});

// gRPC codes after which reconnecting cannot help.
const FINAL_CODES = new Set([3, 5, 7, 16]); // INVALID_ARGUMENT, NOT_FOUND, PERMISSION_DENIED, UNAUTHENTICATED

async function watch(session) {
  const { signal } = session.controller;
  let lastEventId = null;
  let delay = 1000;
  setWatchState(session, "connecting", "wait");
  while (!signal.aborted) {
    try {
      const headers = authHeaders({ accept: "text/event-stream" });
      if (lastEventId !== null) headers["last-event-id"] = lastEventId;
      const response = await fetch(`${serverPath(session.id)}/onboarding-status/watch?follow=true`,
        { headers, signal, cache: "no-store" });
      if (!response.ok) {
        const body = await response.json().catch(() => null);
        throw new ApiError(response.status, body);
      }
      setWatchState(session, "live", "live");
      clearMessage("offline");
      let fatal = null;
      const feed = sseParser((event) => {
        if (event.id !== null) lastEventId = event.id;
        const body = JSON.parse(event.data);
        if (event.event === "error") {
          fatal = FINAL_CODES.has(body.code) ? body : null;
          showMessage(`Watch: ${body.message}`);
        } else {
          delay = 1000;
          applyStatus(session, body);
        }
      });
      const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        feed(value);
      }
      if (fatal) { setWatchState(session, "stopped", "stopped"); return; }
    } catch (error) {
      if (signal.aborted) return;
      if (error instanceof ApiError && [400, 401, 403, 404].includes(error.status)) {
        report(error);
        setWatchState(session, "stopped", "stopped");
        return;
      }
    }
    setWatchState(session, "reconnecting", "wait");
    await sleep(delay, signal);
    delay = Math.min(delay * 2, 30000);
  }
}

// ---------------------------------------------------------------- start

function start() {
  byId("key-form").addEventListener("submit", (event) => {
    event.preventDefault(); // nothing is ever submitted (form-action 'none')
    saveKey();
  });
  byId("key-forget").addEventListener("click", forgetKey);
  byId("servers-refresh").addEventListener("click", loadServers);
  byId("servers").addEventListener("click", onListClick);
  byId("confirm-firewall").addEventListener("click", confirmFirewall);
  byId("retry-onboarding").addEventListener("click", retryOnboarding);
  state.key = sessionStorage.getItem(KEY_ITEM) || "";
  if (state.key) {
    byId("key-input").value = state.key;
    loadServers();
  }
}

start();
