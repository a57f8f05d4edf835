// The console's core: the shared state, DOM helpers, messages, the REST client and its errors
// (including a BadRequest's field violations shown beside the form inputs they name), the key
// (sessionStorage only), the SSE reader, the confirmation dialog, and start-up.
// The other files: fleet.js (the server list, the overview, register), server.js (the open
// server: onboarding, stream, actions, edit, decommission), explorer.js (change events and
// schema changes). All are classic scripts sharing one global scope, loaded in that order.
// Plain DOM, no framework; everything it calls is this origin's REST API.
"use strict";

const KEY_ITEM = "dbtrail-console.key";

const state = {
  key: "",
  servers: new Map(),   // server_id -> Server
  session: null,        // the open server: {id, controller, revision, status, server, ...}
  listWatch: null,      // the AbortController of the server list's watch
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
  node.append(...children.flat().filter((child) => child !== null && child !== undefined && child !== false));
  return node;
}

function setText(id, text) { byId(id).textContent = text ?? ""; }

function badge(node, status) {
  node.textContent = (status || "—").replaceAll("_", " ");
  node.className = `badge badge-${status || "unknown"}`;
  return node;
}

const label = (name) => name[0].toUpperCase() + name.slice(1).replaceAll("_", " ");

const time = (ts) => (ts ? new Date(ts).toLocaleTimeString([], { hour12: false }) : "—");

const dateTime = (ts) => (ts ? new Date(ts).toLocaleString([], { hour12: false }) : "—");

const sleep = (ms, signal) => new Promise((resolve) => {
  const timer = setTimeout(resolve, ms);
  signal.addEventListener("abort", () => { clearTimeout(timer); resolve(); }, { once: true });
});

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

  detail(type) {
    return (this.body?.details ?? []).find((item) => item["@type"]?.endsWith(`/google.rpc.${type}`));
  }

  get reason() { return this.detail("ErrorInfo")?.reason ?? ""; }

  // [{field, description}] of a BadRequest, [] without one.
  get violations() { return this.detail("BadRequest")?.field_violations ?? []; }
}

function describe(error) {
  if (error instanceof ApiError) {
    if (error.status === 401) return `The key was refused: ${error.message}`;
    const failed = error.detail("PreconditionFailure")?.violations ?? [];
    const more = failed.map((item) => `${item.type}: ${item.description}`).join("; ");
    return `${error.message}${more ? ` (${more})` : ""} (HTTP ${error.status})`;
  }
  return `Cannot reach the service: ${error.message}`;
}

function authHeaders(extra = {}) {
  return { authorization: `Bearer ${state.key}`, ...extra };
}

async function api(path, { method = "GET", signal, body } = {}) {
  const headers = { accept: "application/json" };
  if (body !== undefined) headers["content-type"] = "application/json";
  const response = await fetch(path, {
    method, signal, cache: "no-store", headers: authHeaders(headers),
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = await response.text();
  let answer = null;
  try { answer = text ? JSON.parse(text) : null; } catch { answer = { message: text.slice(0, 200) }; }
  if (!response.ok) throw new ApiError(response.status, answer);
  return answer;
}

const serverPath = (id) => `/servers/${encodeURIComponent(id)}`;

// ---------------------------------------------------------------- errors beside fields

// The Server's field paths as the server forms name their inputs.
const FIELD_INPUTS = {
  "ssh_tunnel.host": "ssh_host", "ssh_tunnel.port": "ssh_port", "ssh_tunnel.user": "ssh_user",
  "ssh_tunnel.private_key": "ssh_private_key", "ssh_tunnel.host_key_fingerprint": "ssh_host_key_fingerprint",
  ssh_tunnel: "ssh_host",
};

function inputFor(form, field) {
  let path = field.replace(/^server\./, "");
  if (path.startsWith("labels")) path = "labels";
  const name = FIELD_INPUTS[path] ?? path;
  const input = form.elements.namedItem(name);
  return input instanceof Element ? input : null;
}

function clearFieldErrors(form) {
  for (const node of form.querySelectorAll(".field-error")) node.remove();
  for (const input of form.querySelectorAll("[aria-invalid]")) {
    input.removeAttribute("aria-invalid");
    input.removeAttribute("aria-describedby");
  }
}

// Shows each field violation beside its input; true when every one found its input (the rest,
// and any other error, go to the message line).
function showFieldErrors(form, error) {
  clearFieldErrors(form);
  const violations = error instanceof ApiError ? error.violations : [];
  const unplaced = [];
  let first = null;
  violations.forEach((violation, index) => {
    const input = inputFor(form, violation.field);
    if (!input) { unplaced.push(violation); return; }
    if (input.closest("fieldset")?.hidden) input.closest("fieldset").hidden = false;
    const id = `${form.id}-error-${index}`;
    const note = el("span", { class: "field-error", id, "data-testid": "field-error", "data-field": violation.field },
      violation.description);
    input.after(note);
    input.setAttribute("aria-invalid", "true");
    input.setAttribute("aria-describedby", id);
    first ??= input;
  });
  first?.focus();
  if (violations.length === 0 || unplaced.length) report(error);
  else showMessage(`Please correct the ${violations.length === 1 ? "field" : "fields"} marked below.`);
  return violations.length > 0 && unplaced.length === 0;
}

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
  state.listWatch?.abort();
  showMessage("The key is forgotten.", "notice");
}

// ---------------------------------------------------------------- SSE over fetch

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

// Reads an SSE response to its end, feeding each event to onEvent.
async function readEvents(response, onEvent) {
  const feed = sseParser(onEvent);
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    feed(value);
  }
}

// gRPC codes after which reconnecting cannot help.
const FINAL_CODES = new Set([3, 5, 7, 16]); // INVALID_ARGUMENT, NOT_FOUND, PERMISSION_DENIED, UNAUTHENTICATED
// Codes after which the server list's watch resumes where it was (else, after OUT_OF_RANGE say,
// it starts over from a fresh list): RESOURCE_EXHAUSTED (it fell behind), UNAVAILABLE (a
// replica shutting down).
const RESUMABLE_CODES = new Set([8, 14]);

// ---------------------------------------------------------------- the confirmation dialog

let confirmAnswer = null; // resolves the open dialog's promise

// Asks in a modal <dialog>; resolves true when confirmed. `typed`, when given, must be typed
// before the confirm button is enabled (for what cannot be undone).
function confirmAction({ title, body, confirmLabel, danger = false, typed = "" }) {
  const dialog = byId("confirm-dialog");
  setText("confirm-title", title);
  byId("confirm-body").replaceChildren(...[].concat(body).map((part) =>
    (typeof part === "string" ? el("p", {}, part) : part)));
  const ok = byId("confirm-ok");
  ok.textContent = confirmLabel;
  ok.className = danger ? "danger" : "";
  byId("confirm-type-label").hidden = !typed;
  setText("confirm-type-word", typed);
  const input = byId("confirm-type");
  input.value = "";
  ok.disabled = Boolean(typed);
  ok.dataset.typed = typed;
  confirmAnswer?.(false);
  return new Promise((resolve) => {
    confirmAnswer = resolve;
    dialog.showModal();
    (typed ? input : byId("confirm-cancel")).focus();
  });
}

function closeConfirm(answer) {
  const dialog = byId("confirm-dialog");
  if (dialog.open) dialog.close();
  const resolve = confirmAnswer;
  confirmAnswer = null;
  resolve?.(answer);
}

function startConfirmDialog() {
  const dialog = byId("confirm-dialog");
  byId("confirm-cancel").addEventListener("click", () => closeConfirm(false));
  byId("confirm-ok").addEventListener("click", () => closeConfirm(true));
  byId("confirm-type").addEventListener("input", (event) => {
    const ok = byId("confirm-ok");
    ok.disabled = event.target.value.trim() !== ok.dataset.typed;
  });
  byId("confirm-type").addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !byId("confirm-ok").disabled) closeConfirm(true);
  });
  dialog.addEventListener("close", () => closeConfirm(false)); // Escape, or closed otherwise
}

// ---------------------------------------------------------------- start

function start() {
  byId("key-form").addEventListener("submit", (event) => {
    event.preventDefault(); // nothing is ever submitted (form-action 'none')
    saveKey();
  });
  byId("key-forget").addEventListener("click", forgetKey);
  startConfirmDialog();
  startFleet();
  startServer();
  startExplorer();
  state.key = sessionStorage.getItem(KEY_ITEM) || "";
  if (state.key) {
    byId("key-input").value = state.key;
    loadServers();
  }
}

// Deferred scripts all run before DOMContentLoaded: every file is loaded when start() runs.
document.addEventListener("DOMContentLoaded", start);
