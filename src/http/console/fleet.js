// The fleet: the server list kept live by WatchServers, each server's lag and events/s drawn
// as sparklines from its stream's samples (ListServers every few seconds: the watch carries
// no progress), the overview (counts by status, the servers that need action), search and
// filter over the live list (client-side), and the register form with its Test connection.
"use strict";

const OVERVIEW_STATUSES = ["pending", "active", "disconnected", "paused", "error"];
const PROGRESS_MS = 10000; // how often the list's stream progress (and samples) is read
const SVG = "http://www.w3.org/2000/svg";

const fleetFilter = { text: "", status: "" };

// ---------------------------------------------------------------- the watch

// The list follows WatchServers (SSE): the list, then each change as it commits; a dropped
// connection resumes after the last revision, and a resume the service can no longer serve
// (OUT_OF_RANGE, or the watch fell behind) starts over from a fresh list.
function loadServers() {
  const { key } = state;
  if (!key) return;
  state.listWatch?.abort();
  const controller = new AbortController();
  state.listWatch = controller;
  watchServers(key, controller.signal);
  followProgress(key, controller.signal);
}

// Reads the stream progress of the listed servers (ListServers, at most 10 pages) every
// PROGRESS_MS, for the sparklines; the watch keeps everything else.
async function followProgress(key, signal) {
  let delay = 1500; // the first read soon after the watch's list
  while (!signal.aborted && state.key === key) {
    await sleep(delay, signal);
    delay = PROGRESS_MS;
    try {
      let token = "";
      for (let pages = 0; pages < 10 && !signal.aborted; pages++) {
        const query = new URLSearchParams({ page_size: "100" });
        if (token) query.set("page_token", token);
        const page = await api(`/servers?${query}`, { signal });
        for (const server of page.servers) keepProgress(server);
        token = page.next_page_token;
        if (!token) break;
      }
      renderServers();
    } catch {
      // The watch reports what is wrong; the next round tries again.
    }
  }
}

// The stream of `server` as read now, kept when the list shows the same version of it.
function keepProgress(server) {
  const known = state.servers.get(server.server_id);
  if (known && known.etag === server.etag && server.stream) known.stream = server.stream;
}

async function watchServers(key, signal) {
  let lastEventId = null;
  let delay = 1000;
  let listing = null; // the pages of a list being received
  const apply = (body) => {
    if (body.type === "list") {
      listing = (listing ?? []).concat(body.servers ?? []);
      if (body.more) return;
      state.servers = new Map(listing.map((server) => [server.server_id, server]));
      listing = null;
      const wanted = decodeURIComponent(location.hash.slice(1));
      if (!state.session && state.servers.has(wanted)) openServer(wanted);
    } else if (body.type === "deleted") {
      state.servers.delete(body.server.server_id);
    } else if (body.server) {
      keepNewer(body.server);
    }
    renderServers();
  };
  while (!signal.aborted && state.key === key) {
    try {
      const headers = authHeaders({ accept: "text/event-stream" });
      if (lastEventId !== null) headers["last-event-id"] = lastEventId;
      const response = await fetch("/servers:watch", { headers, signal, cache: "no-store" });
      if (!response.ok) {
        const body = await response.json().catch(() => null);
        throw new ApiError(response.status, body);
      }
      let fatal = false;
      await readEvents(response, (event) => {
        const body = JSON.parse(event.data);
        if (event.event === "error") {
          fatal = FINAL_CODES.has(body.code);
          if (fatal) showMessage(`Server list: ${body.message}`);
          else lastEventId = RESUMABLE_CODES.has(body.code) ? lastEventId : null;
          return;
        }
        if (event.id !== null) lastEventId = event.id;
        delay = 1000;
        apply(body);
      });
      if (fatal) return;
    } catch (error) {
      if (signal.aborted || state.key !== key) return;
      if (error instanceof ApiError && [400, 401, 403].includes(error.status)) {
        report(error);
        return;
      }
    }
    listing = null;
    await sleep(delay, signal);
    delay = Math.min(delay * 2, 30000);
  }
}

// A watched change carries the Server as committed, with the stream's progress of that moment;
// GetServer's fresher progress of the same version is kept.
function keepNewer(server) {
  const known = state.servers.get(server.server_id);
  if (known && known.etag === server.etag && known.stream && server.stream) {
    server = { ...server, stream: known.stream };
  }
  state.servers.set(server.server_id, server);
}

// ---------------------------------------------------------------- what needs action

// Why a server needs a person now, or null: read from its status, onboarding step and stream.
function attention(server) {
  const stream = server.stream;
  if (server.onboarding_step === "awaiting_firewall") return { kind: "awaiting_firewall", text: "awaiting firewall" };
  if (stream?.state === "lost_position") return { kind: "lost_position", text: "lost binlog position" };
  if (server.status === "error") return { kind: "error", text: server.error ? `error: ${server.error}` : "error" };
  if (server.status === "disconnected" || stream?.state === "disconnected") {
    return { kind: "disconnected", text: stream?.error ? `disconnected: ${stream.error}` : "disconnected" };
  }
  if (stream?.state === "failed" || stream?.state === "stalled") {
    return { kind: stream.state, text: `stream ${stream.state}${stream.error ? `: ${stream.error}` : ""}` };
  }
  return null;
}

function renderOverview(servers) {
  const counts = Object.fromEntries(OVERVIEW_STATUSES.map((status) => [status, 0]));
  for (const server of servers) if (server.status in counts) counts[server.status] += 1;
  const overview = byId("overview");
  if (!overview.children.length) {
    overview.append(...OVERVIEW_STATUSES.map((status) => el("button", {
      type: "button", class: `count count-${status}`, "data-status": status, "data-testid": "count",
      "aria-pressed": "false",
    }, el("span", { class: "count-number" }), el("span", { class: "count-label" }, status))));
  }
  for (const button of overview.children) {
    const { status } = button.dataset;
    button.querySelector(".count-number").textContent = String(counts[status]);
    button.setAttribute("aria-pressed", String(fleetFilter.status === status));
    button.title = fleetFilter.status === status ? "Show every status" : `Show only ${status} servers`;
  }
  const needing = servers.map((server) => ({ server, why: attention(server) })).filter((item) => item.why);
  byId("needs-action").hidden = needing.length === 0;
  byId("needs-action-list").replaceChildren(...needing.map(({ server, why }) => el("li", {},
    el("button", {
      type: "button", class: `attention-row attention-${why.kind}`, "data-testid": "needs-action-row",
      "data-server-id": server.server_id, "data-kind": why.kind,
    }, el("span", { class: "row-name" }, server.name), el("span", { class: "attention-why" }, why.text)))));
}

// ---------------------------------------------------------------- search and filter

// Whether a server matches the search: each word is a name part, or a label key=value
// (key= for any value), all must match; and the status filter.
function matches(server) {
  if (fleetFilter.status && server.status !== fleetFilter.status) return false;
  const words = fleetFilter.text.toLowerCase().split(/[\s,]+/).filter(Boolean);
  const labels = Object.entries(server.labels ?? {}).map(([key, value]) => [key.toLowerCase(), value.toLowerCase()]);
  return words.every((word) => {
    const equals = word.indexOf("=");
    if (equals < 0) {
      return server.name.toLowerCase().includes(word) || server.host.toLowerCase().includes(word);
    }
    const key = word.slice(0, equals);
    const value = word.slice(equals + 1);
    return labels.some(([k, v]) => k === key && (value === "" || v === value));
  });
}

function onFilterChange() {
  fleetFilter.text = byId("fleet-search").value.trim();
  fleetFilter.status = byId("fleet-status").value;
  renderServers();
}

function onCountClick(event) {
  const button = event.target.closest("[data-testid=count]");
  if (!button) return;
  const status = fleetFilter.status === button.dataset.status ? "" : button.dataset.status;
  byId("fleet-status").value = status;
  onFilterChange();
}

// ---------------------------------------------------------------- the list

function renderServers() {
  const list = byId("servers");
  const rows = new Map([...list.children].map((item) => [item.dataset.serverId, item]));
  const newestFirst = (a, b) => (Date.parse(b.created_at) - Date.parse(a.created_at))
    || b.server_id.localeCompare(a.server_id);
  const all = [...state.servers.values()].sort(newestFirst);
  const shown = all.filter(matches);
  const items = shown.map((server) =>
    updateServerRow(rows.get(server.server_id) ?? newServerRow(server.server_id), server));
  // Rows are kept (not rebuilt) so that a click in progress is never lost to a refresh.
  if (items.length !== list.children.length || items.some((item, i) => list.children[i] !== item)) {
    list.replaceChildren(...items);
  }
  renderOverview(all);
  const filtered = Boolean(fleetFilter.text || fleetFilter.status);
  setText("servers-shown", filtered ? `${shown.length} of ${all.length} servers shown` : "");
  const empty = byId("servers-empty");
  empty.hidden = shown.length > 0;
  empty.textContent = !state.key ? "Paste an API key and press Save to see the tenant's servers."
    : all.length ? "No server matches the filter." : "This tenant has no servers yet.";
}

function newServerRow(id) {
  return el("li", { "data-server-id": id },
    el("button", { type: "button", class: "server-row", "data-testid": "server-row", "data-server-id": id },
      el("span", { class: "row-main" }, el("span", { class: "row-name" }), el("span", { class: "row-sub" }),
        el("span", { class: "row-spark", "data-testid": "sparklines" })),
      el("span", { "data-testid": "status-badge" })));
}

// ---------------------------------------------------------------- sparklines

// [{t, v}] of the stream's samples: lag in seconds, and events per second between samples.
function series(samples) {
  const points = samples.map((sample) => ({ t: Date.parse(sample.at), lag: sample.lag_millis / 1000, n: sample.events_indexed }));
  const lag = points.map((point) => ({ t: point.t, v: point.lag }));
  const rate = points.slice(1).map((point, i) => {
    const seconds = (point.t - points[i].t) / 1000;
    return { t: point.t, v: seconds > 0 ? Math.max(0, point.n - points[i].n) / seconds : 0 };
  });
  return { lag, rate };
}

// An inline SVG polyline of `values` over their time span (decorative: the text beside it says
// the newest value).
function sparkline(points, kind) {
  const values = points.length > 1 ? points : [{ t: 0, v: points[0].v }, { t: 1, v: points[0].v }];
  const width = 64;
  const height = 16;
  const svg = document.createElementNS(SVG, "svg");
  svg.setAttribute("viewBox", `0 0 ${width} ${height}`);
  svg.setAttribute("width", String(width));
  svg.setAttribute("height", String(height));
  svg.setAttribute("class", `spark spark-${kind}`);
  svg.setAttribute("aria-hidden", "true");
  svg.setAttribute("focusable", "false");
  const first = values[0].t;
  const span = Math.max(1, values[values.length - 1].t - first);
  const top = Math.max(...values.map((point) => point.v)) || 1;
  const line = document.createElementNS(SVG, "polyline");
  line.setAttribute("points", values.map((point) =>
    `${((point.t - first) / span * (width - 2) + 1).toFixed(1)},${(height - 1 - point.v / top * (height - 2)).toFixed(1)}`).join(" "));
  svg.append(line);
  return svg;
}

const rateText = (value) => (value >= 10 ? value.toFixed(0) : value.toFixed(1));

function renderSparklines(node, server) {
  const samples = server.stream?.samples ?? [];
  const key = samples.length ? `${samples.length}:${samples[samples.length - 1].at}` : "";
  if (node.dataset.drawn === key) return;
  node.dataset.drawn = key;
  if (samples.length < 2) { node.replaceChildren(); return; }
  const { lag, rate } = series(samples);
  const last = (values) => values[values.length - 1].v;
  node.title = `the last ${Math.round((lag[lag.length - 1].t - lag[0].t) / 60000) || 1} min`;
  node.replaceChildren(
    el("span", { class: "spark-item", "data-testid": "spark-lag" }, "lag ", sparkline(lag, "lag"), ` ${last(lag).toFixed(1)} s`),
    el("span", { class: "spark-item", "data-testid": "spark-rate" }, sparkline(rate, "rate"), ` ${rateText(last(rate))} events/s`));
}

function updateServerRow(item, server) {
  const button = item.firstElementChild;
  button.querySelector(".row-name").textContent = server.name;
  const labels = Object.entries(server.labels ?? {}).map(([key, value]) => `${key}=${value}`).join(" ");
  button.querySelector(".row-sub").textContent =
    `${server.host}:${server.port} · ${server.connection_method.replace("_", " ")}${labels ? ` · ${labels}` : ""}`;
  badge(button.querySelector("[data-testid=status-badge]"), server.status);
  renderSparklines(button.querySelector(".row-spark"), server);
  if (server.server_id === state.session?.id) button.setAttribute("aria-current", "true");
  else button.removeAttribute("aria-current");
  return item;
}

// Opens the server clicked; in one column (a phone) the page moves on to it.
function onListClick(event) {
  const row = event.target.closest("[data-testid=server-row], [data-testid=needs-action-row]");
  if (!row) return;
  openServer(row.dataset.serverId);
  if (matchMedia("(max-width: 860px)").matches) byId("detail-panel").focus();
}

// ---------------------------------------------------------------- register, test connection

// "env=prod, team=payments" as a labels map; a word without "=" is a key with an empty value.
function parseLabels(text) {
  const labels = {};
  for (const word of text.split(/[\s,]+/).filter(Boolean)) {
    const equals = word.indexOf("=");
    if (equals < 0) labels[word] = "";
    else labels[word.slice(0, equals)] = word.slice(equals + 1);
  }
  return labels;
}

const formatLabels = (labels) => Object.entries(labels ?? {})
  .map(([key, value]) => `${key}=${value}`).join(", ");

// A server form (register or edit) as a Server; empty optional fields are left out.
function serverFromForm(form) {
  const data = new FormData(form);
  const value = (name) => String(data.get(name) ?? "").trim();
  const number = (name) => (value(name) ? Number(value(name)) : undefined);
  const server = {
    name: value("name"), host: value("host"), port: number("port"),
    mysql_user: value("mysql_user"), mysql_password: String(data.get("mysql_password") ?? ""),
    connection_method: value("connection_method"), labels: parseLabels(value("labels")),
  };
  if (server.connection_method === "ssh_tunnel") {
    server.ssh_tunnel = {
      host: value("ssh_host"), port: number("ssh_port"), user: value("ssh_user"),
      private_key: String(data.get("ssh_private_key") ?? ""),
      host_key_fingerprint: value("ssh_host_key_fingerprint") || undefined,
    };
  }
  return server;
}

function showSshFields(form) {
  form.querySelector(".ssh-fields").hidden = form.elements.connection_method.value !== "ssh_tunnel";
}

function renderChecks(response) {
  const summary = byId("check-summary");
  const failed = response.checks.filter((check) => check.result === "fail").length;
  const warned = response.checks.filter((check) => check.result === "warn").length;
  summary.textContent = response.ok
    ? `Every check passed${warned ? `, ${warned} with a warning` : ""}.`
    : `${failed} check${failed === 1 ? "" : "s"} failed.`;
  if (response.host_key_fingerprint) summary.textContent += ` Jumphost host key: ${response.host_key_fingerprint}`;
  summary.hidden = false;
  byId("check-results").replaceChildren(...response.checks.map((check) =>
    el("li", { class: `check check-${check.result}`, "data-testid": "check", "data-name": check.name },
      badge(el("span"), check.result),
      el("code", { class: "check-name" }, check.name),
      el("span", { class: "check-message" }, check.message),
      check.remedy ? el("span", { class: "check-remedy" }, check.remedy) : null)));
}

async function testConnection() {
  const button = byId("test-connection");
  const form = byId("register-form");
  if (!state.key) { showMessage("Paste an API key first."); return; }
  button.disabled = true;
  clearFieldErrors(form);
  try {
    renderChecks(await api("/servers:check", { method: "POST", body: { server: serverFromForm(form) } }));
    clearMessage();
  } catch (error) {
    showFieldErrors(form, error);
  } finally {
    button.disabled = false;
  }
}

async function registerServer() {
  const form = byId("register-form");
  if (!state.key) { showMessage("Paste an API key first."); return; }
  clearFieldErrors(form);
  try {
    const server = await api("/servers", { method: "POST", body: serverFromForm(form) });
    showMessage(`Registered ${server.name}.`, "notice");
    form.reset();
    showSshFields(form);
    byId("check-results").replaceChildren();
    byId("check-summary").hidden = true;
    byId("register").open = false;
    state.servers.set(server.server_id, server);
    renderServers();
    openServer(server.server_id);
  } catch (error) {
    showFieldErrors(form, error);
  }
}

// ---------------------------------------------------------------- start

function startFleet() {
  byId("servers-refresh").addEventListener("click", loadServers);
  byId("servers").addEventListener("click", onListClick);
  byId("needs-action-list").addEventListener("click", onListClick);
  byId("overview").addEventListener("click", onCountClick);
  byId("fleet-filter").addEventListener("submit", (event) => event.preventDefault());
  byId("fleet-search").addEventListener("input", onFilterChange);
  byId("fleet-status").addEventListener("change", onFilterChange);
  const form = byId("register-form");
  byId("test-connection").addEventListener("click", testConnection);
  form.addEventListener("change", () => showSshFields(form));
  form.addEventListener("submit", (event) => {
    event.preventDefault(); // sent with fetch, never submitted (form-action 'none')
    registerServer();
  });
  renderOverview([]);
}
