// The open server: its onboarding watched live (SSE), its stream refreshed, and the actions on
// it: Confirm firewall, Retry, Pause (confirmed) and Resume, Edit settings (PATCH with an
// update_mask and the etag, confirmed, errors beside the fields) and Decommission (confirmed by
// typing its name).
"use strict";

const STEPS = ["provisioning", "awaiting_firewall", "waiting_for_agent",
  "initializing", "snapshotting", "streaming"];
const REFRESH_MS = 3000; // the open server, its stream and its latest events

// ---------------------------------------------------------------- open, close, refresh

function openServer(id) {
  if (state.session?.id === id) return;
  closeServer();
  const session = {
    id, controller: new AbortController(), revision: -1, status: null, server: null,
    busy: new Set(), timer: 0, refreshAgain: false, confirmedRevision: null,
  };
  state.session = session;
  history.replaceState(null, "", `#${encodeURIComponent(id)}`);
  byId("detail").hidden = false;
  byId("detail-empty").hidden = true;
  closeEditForm();
  openExplorer(session);
  renderServer(session, state.servers.get(id) || null);
  renderStatus(session, null);
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

// Refreshes the Server (stream state, lag) and the explorer's latest events.
async function tick(session) {
  clearTimeout(session.timer);
  await refreshServer(session);
  if (current(session) && session.server?.stream) await refreshExplorer(session);
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
    if (!current(session)) return;
    if (error instanceof ApiError && error.status === 404) {
      closeServer();
      showMessage("That server is decommissioned.", "notice");
    } else {
      report(error);
    }
  } finally {
    session.busy.delete("server");
    if (session.refreshAgain && current(session)) refreshServer(session);
  }
}

function renderServer(session, server) {
  session.server = server;
  setText("detail-title", server?.name ?? session.id);
  const labels = formatLabels(server?.labels);
  setText("detail-sub", server
    ? `${server.host}:${server.port} · ${server.connection_method.replace("_", " ")} · ${server.server_id}${labels ? ` · ${labels}` : ""}`
    : "");
  const stream = server?.stream;
  byId("stream").hidden = !stream;
  byId("explorer").hidden = !stream;
  placeSteps(Boolean(stream));
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

// Once a server streams, its stream and events come first and the (finished) steps fold away
// below them; while it onboards, the steps come first. The DOM order changes, not only the look,
// so the keyboard follows what is shown.
function placeSteps(streaming) {
  const box = byId("steps-box");
  const anchor = streaming ? byId("explorer").nextSibling : byId("stream");
  if (box.dataset.placed !== String(streaming)) {
    box.parentNode.insertBefore(box, anchor);
    box.dataset.placed = String(streaming);
    box.open = !streaming;
  }
}

// ---------------------------------------------------------------- onboarding

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
  const streaming = ["active", "disconnected"].includes(status?.server_status);
  byId("pause-stream").disabled = !streaming || session.busy.has("pause");
  byId("resume-stream").disabled = status?.server_status !== "paused" || session.busy.has("resume");
  byId("edit-server").disabled = !status || session.busy.has("edit");
  byId("decommission").disabled = !status || session.busy.has("decommission");
  const steps = new Map((status?.steps ?? []).map((step) => [step.name, step]));
  const done = STEPS.filter((name) => steps.get(name)?.status === "completed").length;
  setText("steps-summary", status ? `${done} of ${STEPS.length} completed` : "");
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

function setWatchState(session, text, kind) {
  if (!current(session)) return;
  const node = byId("watch-state");
  node.textContent = text;
  node.className = `watch watch-${kind}`;
}

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
      await readEvents(response, (event) => {
        if (event.id !== null) lastEventId = event.id;
        const body = JSON.parse(event.data);
        if (event.event === "error") {
          fatal = FINAL_CODES.has(body.code) ? body : null;
          if (!(fatal && body.code === 5)) showMessage(`Watch: ${body.message}`);
        } else {
          delay = 1000;
          applyStatus(session, body);
        }
      });
      if (fatal) { setWatchState(session, "stopped", "stopped"); return; }
    } catch (error) {
      if (signal.aborted) return;
      if (error instanceof ApiError && [400, 401, 403, 404].includes(error.status)) {
        if (error.status !== 404) report(error);
        setWatchState(session, "stopped", "stopped");
        return;
      }
    }
    setWatchState(session, "reconnecting", "wait");
    await sleep(delay, signal);
    delay = Math.min(delay * 2, 30000);
  }
}

// ---------------------------------------------------------------- actions

async function act(name, path, done, method = "POST", body = undefined) {
  const session = state.session;
  if (!session || session.busy.has(name)) return false;
  session.busy.add(name);
  renderStatus(session, session.status);
  try {
    const answer = await api(path, { method, body, signal: session.controller.signal });
    if (current(session)) done(session, answer);
    return true;
  } catch (error) {
    if (current(session)) report(error);
    return false;
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

async function retryOnboarding() {
  const name = state.session?.server?.name ?? state.session?.id;
  const yes = await confirmAction({
    title: `Retry the onboarding of ${name}?`,
    body: ["Onboarding resumes at the failed step; after a lost binlog position it snapshots again and starts the stream at the source's current position, recording the gap."],
    confirmLabel: "Retry onboarding",
  });
  if (!yes) return;
  act("retry", `${serverPath(state.session?.id)}/retry-onboarding`, (session, status) => {
    showMessage("Onboarding resumed.", "notice");
    applyStatus(session, status);
  });
}

async function pauseStream() {
  const name = state.session?.server?.name ?? state.session?.id;
  const yes = await confirmAction({
    title: `Pause the stream of ${name}?`,
    body: ["The binlog connection closes and no row change is captured until you resume.",
      "Resume starts from the checkpoint; if the source purges that binlog meanwhile, the stream loses its position."],
    confirmLabel: "Pause stream",
  });
  if (!yes) return;
  act("pause", `${serverPath(state.session?.id)}:pause-stream`, (session, server) => {
    showMessage("Stream paused: no binlog connection until you resume it.", "notice");
    renderServer(session, server);
    refreshServer(session);
  });
}

async function resumeStream() {
  const name = state.session?.server?.name ?? state.session?.id;
  const yes = await confirmAction({
    title: `Resume the stream of ${name}?`,
    body: ["The stream reconnects and captures from its checkpoint on; if the source purged that binlog meanwhile, the stream loses its position (never a silent skip)."],
    confirmLabel: "Resume stream",
  });
  if (!yes) return;
  act("resume", `${serverPath(state.session?.id)}:resume-stream`, (session, server) => {
    showMessage("Stream resumed from its checkpoint.", "notice");
    renderServer(session, server);
    refreshServer(session);
  });
}

async function decommissionServer() {
  const session = state.session;
  const server = session?.server;
  if (!server) return;
  const yes = await confirmAction({
    title: `Decommission ${server.name}?`,
    body: ["Its binlog stream closes and the server leaves the list. This cannot be undone; the name becomes free for a new registration."],
    confirmLabel: "Decommission", danger: true, typed: server.name,
  });
  if (!yes || !current(session)) return;
  const query = new URLSearchParams({ etag: server.etag });
  await act("decommission", `${serverPath(session.id)}?${query}`, (gone) => {
    state.servers.delete(gone.id);
    closeServer();
    renderServers();
    showMessage(`${server.name} is decommissioned.`, "notice");
  }, "DELETE");
}

// ---------------------------------------------------------------- edit settings

function openEditForm() {
  const server = state.session?.server;
  if (!server) return;
  const form = byId("edit-form");
  form.reset();
  clearFieldErrors(form);
  const fields = form.elements;
  fields.name.value = server.name;
  fields.host.value = server.host;
  fields.port.value = String(server.port || "");
  fields.mysql_user.value = server.mysql_user;
  fields.connection_method.value = server.connection_method;
  fields.labels.value = formatLabels(server.labels);
  const tunnel = server.ssh_tunnel;
  fields.ssh_host.value = tunnel?.host ?? "";
  fields.ssh_port.value = tunnel ? String(tunnel.port || "") : "";
  fields.ssh_user.value = tunnel?.user ?? "";
  fields.ssh_host_key_fingerprint.value = tunnel?.host_key_fingerprint ?? "";
  fields.ssh_private_key.placeholder = tunnel?.has_private_key ? "unchanged" : "";
  fields.mysql_password.placeholder = server.has_mysql_password ? "unchanged" : "";
  form.dataset.etag = server.etag;
  form.dataset.serverId = server.server_id;
  showSshFields(form);
  form.hidden = false;
  byId("edit-server").setAttribute("aria-expanded", "true");
  fields.name.focus();
}

function closeEditForm() {
  byId("edit-form").hidden = true;
  byId("edit-server").setAttribute("aria-expanded", "false");
}

const sameLabels = (a, b) => formatLabels(a) === formatLabels(b);

// The PATCH body and its update_mask: only what the form changed; empty secrets are unchanged.
function editChanges(server, edited) {
  const mask = [];
  const body = { etag: server.etag };
  for (const field of ["name", "host", "mysql_user", "connection_method"]) {
    if (edited[field] !== server[field]) { mask.push(field); body[field] = edited[field]; }
  }
  if ((edited.port ?? 3306) !== server.port) { mask.push("port"); body.port = edited.port ?? 0; }
  if (edited.mysql_password) { mask.push("mysql_password"); body.mysql_password = edited.mysql_password; }
  if (!sameLabels(edited.labels, server.labels)) { mask.push("labels"); body.labels = edited.labels; }
  const tunnel = edited.ssh_tunnel;
  const stored = server.ssh_tunnel;
  if (!tunnel && stored) {
    mask.push("ssh_tunnel");
  } else if (tunnel && !stored) {
    mask.push("ssh_tunnel");
    body.ssh_tunnel = tunnel;
  } else if (tunnel) {
    const sub = {};
    const changed = (name, value, was) => { if (value !== was) { mask.push(`ssh_tunnel.${name}`); sub[name] = value; } };
    changed("host", tunnel.host, stored.host);
    changed("port", tunnel.port ?? 22, stored.port);
    changed("user", tunnel.user, stored.user);
    changed("host_key_fingerprint", tunnel.host_key_fingerprint ?? "", stored.host_key_fingerprint ?? "");
    if (tunnel.private_key) changed("private_key", tunnel.private_key, null);
    if (Object.keys(sub).length) body.ssh_tunnel = { ...tunnel, private_key: tunnel.private_key || undefined, ...sub };
  }
  return { mask, body };
}

// What a change to these fields does, for the confirmation.
const RERUNS = ["host", "port", "mysql_user", "mysql_password", "connection_method", "ssh_tunnel"];

async function saveEdit() {
  const session = state.session;
  const form = byId("edit-form");
  const server = session?.server;
  if (!server || server.server_id !== form.dataset.serverId) return;
  clearFieldErrors(form);
  const { mask, body } = editChanges({ ...server, etag: form.dataset.etag }, serverFromForm(form));
  if (!mask.length) { showMessage("Nothing changed.", "notice"); return; }
  const reruns = mask.some((path) => RERUNS.includes(path.split(".")[0]));
  const yes = await confirmAction({
    title: `Save the settings of ${server.name}?`,
    body: [el("p", {}, "Changing: ", el("code", {}, mask.join(", "))),
      reruns ? "Connection settings change: onboarding runs again from waiting for agent, and the stream restarts."
        : "The stream is not interrupted."],
    confirmLabel: "Save",
  });
  if (!yes || !current(session)) return;
  const query = new URLSearchParams({ update_mask: mask.join(",") });
  session.busy.add("edit");
  try {
    const saved = await api(`${serverPath(session.id)}?${query}`, { method: "PATCH", body, signal: session.controller.signal });
    if (!current(session)) return;
    state.servers.set(saved.server_id, saved);
    renderServer(session, saved);
    renderServers();
    closeEditForm();
    showMessage(`Saved ${saved.name}.`, "notice");
  } catch (error) {
    if (!current(session)) return;
    if (error instanceof ApiError && error.reason === "ETAG_MISMATCH") {
      showMessage("The server changed since the form was opened: reopen Edit settings to start from its current values.");
    } else {
      showFieldErrors(form, error);
    }
  } finally {
    session.busy.delete("edit");
  }
}

// ---------------------------------------------------------------- start

function startServer() {
  byId("confirm-firewall").addEventListener("click", confirmFirewall);
  byId("retry-onboarding").addEventListener("click", retryOnboarding);
  byId("pause-stream").addEventListener("click", pauseStream);
  byId("resume-stream").addEventListener("click", resumeStream);
  byId("decommission").addEventListener("click", decommissionServer);
  byId("edit-server").addEventListener("click", () => (byId("edit-form").hidden ? openEditForm() : closeEditForm()));
  byId("edit-cancel").addEventListener("click", closeEditForm);
  const form = byId("edit-form");
  form.addEventListener("change", () => showSshFields(form));
  form.addEventListener("submit", (event) => {
    event.preventDefault(); // sent with fetch, never submitted (form-action 'none')
    saveEdit();
  });
}
