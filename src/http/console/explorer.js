// The change-event explorer of the open server: one timeline of row changes
// (GET /servers/{id}/change-events) and schema changes (GET /servers/{id}/schema-changes) in
// binlog order, filtered by table, type and time range. Without a time range it shows the
// latest, newest first, refreshed live; with one it pages forward (oldest first) through what
// is stored, as ListChangeEvents pages. An update shows its before → after diff, the changed
// columns marked. "Undo SQL" fetches the script that undoes the applied selection
// (GET /servers/{id}/revert-sql) to read, copy or download; it is never run here.
"use strict";

const LATEST_SHOWN = 25;
const LATEST_SCHEMA_CHANGES = 10;
const PAGE_SIZE = 25;
const LATEST_WINDOW_MS = 5 * 60 * 1000; // the latest view starts this long before the last event
const MAX_PAGES = 20;                   // pages read in one refresh of the latest view

function newExplorer() {
  return {
    filter: { table: "", type: "", from: "", to: "" },
    denied: false,
    busy: false,
    latest: { events: [], eventIds: new Set(), changes: [], changeIds: new Set(), read: false },
    pages: { tokens: [""], after: [null], index: 0, items: [], next: "" },
  };
}

function openExplorer(session) {
  session.explorer = newExplorer();
  byId("explorer-form").reset();
  clearUndo();
  renderExplorer(session);
}

const paging = (explorer) => Boolean(explorer.filter.from || explorer.filter.to);

// ---------------------------------------------------------------- filters

const quote = (text) => `"${text.replaceAll("\\", "\\\\").replaceAll("\"", "\\\"")}"`;

// The AIP-160 filter of the explorer's fields, for change events (withType) or schema changes.
function filterText(filter, withType, extra = []) {
  const parts = [];
  const table = filter.table.trim();
  if (table.includes(".")) {
    const dot = table.indexOf(".");
    parts.push(`schema = ${quote(table.slice(0, dot))}`, `table = ${quote(table.slice(dot + 1))}`);
  } else if (table) {
    parts.push(`table = ${quote(table)}`);
  }
  if (withType && ["insert", "update", "delete"].includes(filter.type)) parts.push(`type = ${quote(filter.type)}`);
  if (filter.from) parts.push(`committed_at >= ${quote(filter.from)}`);
  if (filter.to) parts.push(`committed_at <= ${quote(filter.to)}`);
  return parts.concat(extra).join(" AND ");
}

const wantsEvents = (filter) => filter.type !== "schema";
const wantsSchema = (filter) => filter.type === "" || filter.type === "schema";

// A datetime-local value (the browser's time zone) as RFC 3339 UTC; "" when empty or invalid.
function isoOf(value) {
  if (!value) return "";
  const date = new Date(value);
  return Number.isNaN(date.getTime()) ? "" : date.toISOString().replace(/\.000Z$/, "Z");
}

function applyExplorerForm() {
  const session = state.session;
  if (!session) return;
  const data = new FormData(byId("explorer-form"));
  const value = (name) => String(data.get(name) ?? "").trim();
  session.explorer = newExplorer();
  session.explorer.filter = { table: value("table"), type: value("type"), from: isoOf(value("from")), to: isoOf(value("to")) };
  clearUndo();
  renderExplorer(session);
  if (paging(session.explorer)) loadPage(session, 0);
  else refreshExplorer(session);
}

// ---------------------------------------------------------------- reading

async function readPage(session, kind, filter, token, pageSize) {
  const query = new URLSearchParams({ page_size: String(pageSize) });
  if (filter) query.set("filter", filter);
  if (token) query.set("page_token", token);
  return api(`${serverPath(session.id)}/${kind}?${query}`, { signal: session.controller.signal });
}

// Runs read() unless this explorer (a new filter makes a new one) is busy or denied; a 403 marks it denied (the key lacks
// changes:read), other errors are reported.
async function explorerRead(session, read) {
  const explorer = session.explorer;
  if (explorer.denied || explorer.busy) return;
  explorer.busy = true;
  try {
    await read(explorer);
  } catch (error) {
    if (!current(session) || session.explorer !== explorer) return;
    if (error instanceof ApiError && error.status === 403) explorer.denied = true;
    else report(error);
  } finally {
    explorer.busy = false;
    if (current(session) && session.explorer === explorer) renderExplorer(session);
  }
}

// The latest view: reads what committed since the newest item shown (again from its second, as
// commit times have whole seconds), or at first from a few minutes before the stream's last event.
function refreshExplorer(session) {
  if (paging(session.explorer)) return Promise.resolve();
  return explorerRead(session, async (explorer) => {
    const { latest, filter } = explorer;
    const lastEventAt = session.server?.stream?.last_event_at;
    if (wantsEvents(filter)) {
      const since = latest.events[0]?.committed_at
        ?? (lastEventAt && new Date(Date.parse(lastEventAt) - LATEST_WINDOW_MS).toISOString());
      let token = "";
      for (let pages = 0; since && pages < MAX_PAGES; pages++) {
        const page = await readPage(session, "change-events",
          filterText(filter, true, [`committed_at >= ${quote(since)}`]), token, 100);
        if (session.explorer !== explorer) return;
        for (const event of page.events) keepLatest(latest.events, latest.eventIds, event.event_id, event, LATEST_SHOWN);
        token = page.next_page_token;
        if (!token) break;
      }
    }
    if (wantsSchema(filter)) {
      const since = latest.changes[0]?.committed_at;
      const extra = since ? [`committed_at >= ${quote(since)}`] : [];
      let token = "";
      for (let pages = 0; pages < MAX_PAGES; pages++) {
        const page = await readPage(session, "schema-changes", filterText(filter, false, extra), token, 100);
        if (session.explorer !== explorer) return;
        for (const change of page.schema_changes) {
          keepLatest(latest.changes, latest.changeIds, change.change_id, change, LATEST_SCHEMA_CHANGES);
        }
        token = page.next_page_token;
        if (!token) break;
      }
    }
    latest.read = true;
  });
}

// Adds item to a newest-first list of at most `limit`, once.
function keepLatest(list, ids, id, item, limit) {
  if (ids.has(id)) return;
  ids.add(id);
  list.unshift(item);
  list.sort((a, b) => compareBinlog(b, a));
  for (const old of list.splice(limit)) ids.delete(old.event_id ?? old.change_id);
}

// Page `index` of the paged view. Row changes page as ListChangeEvents does; the schema changes
// between the previous page's last row change and this page's last one are merged in.
function loadPage(session, index) {
  return explorerRead(session, async (explorer) => {
    const { pages, filter } = explorer;
    const token = pages.tokens[index];
    if (token === undefined) return;
    let items;
    let next;
    if (!wantsEvents(filter)) {
      const page = await readPage(session, "schema-changes", filterText(filter, false), token, PAGE_SIZE);
      items = page.schema_changes;
      next = page.next_page_token;
    } else {
      const page = await readPage(session, "change-events", filterText(filter, true), token, PAGE_SIZE);
      next = page.next_page_token;
      items = page.events;
      if (wantsSchema(filter)) items = items.concat(await schemaBetween(session, explorer, index, page.events, next));
    }
    if (session.explorer !== explorer) return;
    items.sort(compareBinlog);
    pages.index = index;
    pages.items = items;
    pages.next = next;
    if (next) {
      pages.tokens[index + 1] = next;
      pages.after[index + 1] = items.length ? items[items.length - 1] : pages.after[index];
    }
  });
}

async function schemaBetween(session, explorer, index, events, next) {
  const { filter, pages } = explorer;
  const after = pages.after[index];
  const last = next ? events[events.length - 1] : null;
  const extra = [];
  if (after) extra.push(`committed_at >= ${quote(after.committed_at)}`);
  if (last) extra.push(`committed_at <= ${quote(last.committed_at)}`);
  let found = [];
  let token = "";
  for (let pageNo = 0; pageNo < 5; pageNo++) {
    const page = await readPage(session, "schema-changes", filterText(filter, false, extra), token, 100);
    found = found.concat(page.schema_changes);
    token = page.next_page_token;
    if (!token) break;
  }
  return found.filter((change) => (!after || compareBinlog(change, after) > 0)
    && (!last || compareBinlog(change, last) < 0));
}

// Binlog order: file, then position, then the row's index within its event.
function compareBinlog(a, b) {
  if (a.binlog_file !== b.binlog_file) return a.binlog_file < b.binlog_file ? -1 : 1;
  if (a.binlog_position !== b.binlog_position) return a.binlog_position - b.binlog_position;
  return rowIndex(a) - rowIndex(b);
}

const rowIndex = (item) => (item.event_id ? Number(item.event_id.split(":").pop()) || 0 : -1);

// ---------------------------------------------------------------- rendering

function renderExplorer(session) {
  const explorer = session.explorer;
  if (!explorer) return;
  const paged = paging(explorer);
  const items = paged ? explorer.pages.items
    : explorer.latest.events.concat(explorer.latest.changes).sort((a, b) => compareBinlog(b, a)).slice(0, LATEST_SHOWN);
  byId("timeline").replaceChildren(...items.map((item) => (item.event_id ? eventItem(item) : schemaItem(item))));
  setText("explorer-note", explorerNote(explorer, items.length));
  byId("explorer-note").classList.toggle("denied", explorer.denied);
  const { pages } = explorer;
  byId("explorer-first").disabled = !paged || pages.index === 0;
  byId("explorer-prev").disabled = !paged || pages.index === 0;
  byId("explorer-next").disabled = !paged || !pages.next;
  setText("explorer-page", paged ? `Page ${pages.index + 1}` : "");
  byId("explorer").querySelector(".pager").hidden = !paged;
}

function explorerNote(explorer, count) {
  if (explorer.denied) return "This key lacks the changes:read permission, so row changes are not shown.";
  const what = { "": "changes", schema: "schema changes" }[explorer.filter.type] ?? `${explorer.filter.type}s`;
  if (paging(explorer)) {
    const range = [explorer.filter.from && `from ${dateTime(explorer.filter.from)}`,
      explorer.filter.to && `to ${dateTime(explorer.filter.to)}`].filter(Boolean).join(" ");
    return count ? `${count} ${what} on this page, oldest first, ${range}.` : `No ${what} ${range}.`;
  }
  if (!explorer.latest.read) return "Reading…";
  return count ? `The latest ${what}, newest first, kept live.` : `No ${what} in the last few minutes of the stream.`;
}

const show = (value) => {
  if (value === null || value === undefined) return "NULL";
  return typeof value === "string" ? value : JSON.stringify(value);
};

const keyText = (key) => Object.entries(key ?? {}).map(([name, value]) => `${name}=${show(value)}`).join(", ");

function itemHead(ts, kindClass, kindText, table, extra) {
  return el("div", { class: "tl-head" },
    el("time", { datetime: ts, title: ts }, time(ts)),
    el("span", { class: `kind ${kindClass}` }, kindText),
    el("span", { class: "tl-table" }, table),
    extra);
}

function eventItem(event) {
  return el("li", { class: `tl-item tl-${event.type}`, "data-testid": "change-event", "data-event-id": event.event_id,
    "data-type": event.type },
  itemHead(event.committed_at, `kind-${event.type}`, event.type, `${event.schema}.${event.table}`,
    el("code", { class: "tl-key" }, keyText(event.primary_key))),
  event.type === "update" ? diffTable(event.before ?? {}, event.after ?? {}) : rowValues(event.after ?? event.before ?? {}));
}

function schemaItem(change) {
  return el("li", { class: "tl-item tl-schema", "data-testid": "schema-change", "data-change-id": String(change.change_id) },
    itemHead(change.committed_at, "kind-schema", "schema change", `${change.schema}.${change.table}`,
      el("span", { class: "muted small-text" }, `snapshot v${change.snapshot_version}`)),
    el("pre", { class: "statement" }, change.statement_truncated ? `${change.statement}…` : change.statement));
}

// An update's columns: the changed ones first, marked, with before and after; the unchanged ones
// folded below.
function diffTable(before, after) {
  const columns = [...new Set(Object.keys(before).concat(Object.keys(after)))];
  const isChanged = (column) => JSON.stringify(before[column]) !== JSON.stringify(after[column]);
  const changed = columns.filter(isChanged);
  const same = columns.filter((column) => !isChanged(column));
  const row = (column, changedRow) => el("tr", { class: changedRow ? "changed" : null, "data-column": column,
    "data-changed": changedRow ? "true" : "false" },
  el("th", { scope: "row" }, column, changedRow ? el("span", { class: "visually-hidden" }, " (changed)") : null),
  el("td", { class: "before" }, show(before[column])),
  el("td", { class: "after" }, show(after[column])));
  const table = (rows, caption) => el("div", { class: "diff-scroll" },
    el("table", { class: "diff", "data-testid": "diff" },
      el("caption", { class: "visually-hidden" }, caption),
      el("thead", {}, el("tr", {}, el("th", { scope: "col" }, "Column"), el("th", { scope: "col" }, "Before"),
        el("th", { scope: "col" }, "After"))),
      el("tbody", {}, rows)));
  return el("div", { class: "tl-body" },
    changed.length ? table(changed.map((column) => row(column, true)), "Changed columns, before and after")
      : el("p", { class: "muted small-text" }, "No column changed."),
    same.length ? el("details", { class: "unchanged" },
      el("summary", {}, `${same.length} unchanged column${same.length === 1 ? "" : "s"}`),
      table(same.map((column) => row(column, false)), "Unchanged columns")) : null);
}

function rowValues(row) {
  return el("dl", { class: "tl-body row-values" }, Object.entries(row).map(([column, value]) =>
    el("div", {}, el("dt", {}, column), el("dd", {}, show(value)))));
}

// ---------------------------------------------------------------- undo SQL

let undoUrl = "";      // the Blob URL of the script shown, revoked when it goes
let undoRequest = 0;   // the latest request; an older answer arriving late is dropped

// Hides the script and its error (a new filter or another server makes it stale).
function clearUndo() {
  undoRequest += 1;
  if (undoUrl) URL.revokeObjectURL(undoUrl);
  undoUrl = "";
  byId("undo-result").hidden = true;
  byId("undo-error").hidden = true;
  setText("undo-script", "");
  setText("undo-note", "");
  byId("undo-sql").disabled = false;
}

// The API's error as a sentence: its reason, its message (which says what to do) and the HTTP status.
function undoErrorText(error) {
  if (!(error instanceof ApiError)) return `Cannot reach the service: ${error.message}`;
  if (error.status === 403) return "This key lacks the changes:read permission, so it cannot read the undo script.";
  const reason = error.reason;
  return `${reason ? `${reason}: ` : ""}${error.message} (HTTP ${error.status}).`;
}

function showUndoError(text) {
  const box = byId("undo-error");
  box.textContent = text;
  box.hidden = false;
}

// GET the script as text; a JSON error answer becomes an ApiError, as api() does.
async function fetchUndo(path, signal) {
  const response = await fetch(path, { signal, cache: "no-store", headers: authHeaders({ accept: "text/plain, application/json" }) });
  const text = await response.text();
  if (!response.ok) {
    let body = null;
    try { body = JSON.parse(text); } catch { body = { message: text.slice(0, 200) }; }
    throw new ApiError(response.status, body);
  }
  const disposition = response.headers.get("content-disposition") ?? "";
  return { text, filename: /filename="([^"]+)"/.exec(disposition)?.[1] ?? "" };
}

async function loadUndo() {
  const session = state.session;
  const explorer = session?.explorer;
  if (!explorer) return;
  clearUndo();
  const request = undoRequest;
  const { filter } = explorer;
  if (filter.type === "schema") {
    showUndoError("Schema changes cannot be undone: choose all, insert, update or delete as the type.");
    return;
  }
  const mode = byId("undo-mode").value === "force" ? "force" : "strict";
  const selection = filterText(filter, true);
  const query = new URLSearchParams({ mode });
  if (selection) query.set("filter", selection);
  const button = byId("undo-sql");
  button.disabled = true;
  setText("undo-note", `Reading the ${mode} undo script of ${selection || "every captured change of this server"}…`);
  try {
    const { text, filename } = await fetchUndo(`${serverPath(session.id)}/revert-sql?${query}`, session.controller.signal);
    if (request !== undoRequest || !current(session)) return;
    undoUrl = URL.createObjectURL(new Blob([text], { type: "application/sql" }));
    const link = byId("undo-download");
    link.href = undoUrl;
    link.download = filename || `revert-${session.id}.sql`;
    setText("undo-script", text);
    byId("undo-result").hidden = false;
    const lines = text.split("\n").length - (text.endsWith("\n") ? 1 : 0);
    setText("undo-note", `The ${mode} undo script of ${selection || "every captured change of this server"}: ${lines} lines.`);
    // A failure after the script began: its last line says so, and it has no COMMIT.
    const failed = /^-- ERROR: (.*)$/m.exec(text);
    if (failed) showUndoError(`The script stopped early (${failed[1]}); it has no COMMIT, so applying it changes nothing.`);
  } catch (error) {
    if (request !== undoRequest || !current(session)) return;
    setText("undo-note", "");
    showUndoError(undoErrorText(error));
  } finally {
    if (request === undoRequest) button.disabled = false;
  }
}

async function copyUndo() {
  const text = byId("undo-script").textContent;
  try {
    await navigator.clipboard.writeText(text);
    setText("undo-note", "The undo script is copied to the clipboard.");
  } catch (error) {
    setText("undo-note", `Could not copy (${error.message}): select the script and copy it, or download it.`);
  }
}

// ---------------------------------------------------------------- start

function startExplorer() {
  byId("explorer-form").addEventListener("submit", (event) => {
    event.preventDefault(); // read with fetch, never submitted (form-action 'none')
    applyExplorerForm();
  });
  byId("explorer-reset").addEventListener("click", () => {
    byId("explorer-form").reset();
    applyExplorerForm();
  });
  const go = (index) => () => { if (state.session) loadPage(state.session, index(state.session.explorer.pages)); };
  byId("undo-sql").addEventListener("click", loadUndo);
  byId("undo-mode").addEventListener("change", () => { if (!byId("undo-result").hidden) loadUndo(); });
  byId("undo-copy").addEventListener("click", copyUndo);
  byId("explorer-first").addEventListener("click", go(() => 0));
  byId("explorer-prev").addEventListener("click", go((pages) => Math.max(0, pages.index - 1)));
  byId("explorer-next").addEventListener("click", go((pages) => pages.index + 1));
}
