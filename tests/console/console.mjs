// Drives GET /console in headless Chromium (Debian's, through playwright-core) against a running
// service, as a person running a fleet would, at 1400 px (light) and again at 390 px (dark):
// the key, the fleet overview and its filters, a server added with the register form (Test
// connection, Register) and watched to active, paused (confirmed in a dialog) and resumed, its
// change events explored (a filter, a time range, the before → after diff of an UPDATE, a schema
// change inline, the Undo SQL of the UPDATE shown, downloaded and copied, and the refusal of a
// table without a primary key), its settings edited (a bad host shown beside the host field, then a label
// saved), its lag and events/s drawn as sparklines in the list, decommissioned (confirmed by
// typing its name); an SSH-tunnel server confirmed past
// awaiting_firewall; no horizontal overflow at 390 px; axe-core finding no serious or critical
// accessibility violation; visible keyboard focus; no CSP violation or console error on the way.
// One line per check; exit code 0 when all pass, 1 on the first failure.
//
// Environment:
//   CONSOLE_URL       the page, e.g. http://127.0.0.1:8080/console             (required)
//   DBTRAIL_KEY       an API key of the tenant (servers:read/write/delete, changes:read) (required)
//   FORM_SERVER_NAME  the name the register form gives the server it adds; the caller runs, once
//                     it streams, CREATE TABLE shop.console_ddl and
//                     UPDATE shop.orders SET total = 12.34 WHERE id = 1 (was 9.99), and
//                     CREATE TABLE shop.console_nokey (v INT) with an INSERT into it (required)
//   TUNNEL_SERVER_ID  an ssh_tunnel server waiting at awaiting_firewall          (required)
//   MYSQL_PORT, MYSQL_USER, MYSQL_PASSWORD  the MySQL on 127.0.0.1 the form registers (required)
//   SCREENSHOT_DIR    where the PNG of each state goes (default .)
//   CHROMIUM_PATH     the browser (default /usr/bin/chromium)
//   ONBOARD_TIMEOUT_MS how long onboarding may take (default 90000)

import { chromium } from "playwright-core";
import { readFileSync } from "node:fs";
import { createRequire } from "node:module";
import path from "node:path";

const STEPS = ["provisioning", "awaiting_firewall", "waiting_for_agent",
  "initializing", "snapshotting", "streaming"];
const CSP_PARTS = ["default-src 'none'", "script-src 'self'", "style-src 'self'", "connect-src 'self'"];
// axe-core from tests/console's node_modules (npm ci, as playwright-core), evaluated through
// Playwright (the DevTools protocol), so the page's CSP neither blocks nor reports it.
const AXE_SOURCE = readFileSync(createRequire(import.meta.url).resolve("axe-core/axe.min.js"), "utf8");

class CheckFailed extends Error {}

function fail(text) {
  throw new CheckFailed(text);
}

function required(name) {
  const value = process.env[name];
  if (!value) fail(`environment variable ${name} is not set`);
  return value;
}

function readConfig() {
  return {
    url: required("CONSOLE_URL"),
    key: required("DBTRAIL_KEY"),
    formName: required("FORM_SERVER_NAME"),
    tunnel: required("TUNNEL_SERVER_ID"),
    mysql: { port: required("MYSQL_PORT"), user: required("MYSQL_USER"), password: required("MYSQL_PASSWORD") },
    screenshots: process.env.SCREENSHOT_DIR || ".",
    chromium: process.env.CHROMIUM_PATH || "/usr/bin/chromium",
    onboardTimeout: Number(process.env.ONBOARD_TIMEOUT_MS || 90000),
  };
}

let config = null;
let passed = 0;
let browser = null;

function ok(text) {
  passed += 1;
  console.log(`ok ${passed} - ${text}`);
}

// Polls probe() (which returns {done, seen}) until done or the timeout; fails with what it saw.
async function until(what, timeoutMs, probe) {
  const deadline = Date.now() + timeoutMs;
  let seen = null;
  for (;;) {
    const result = await probe();
    seen = result.seen;
    if (result.done) return seen;
    if (Date.now() > deadline) fail(`${what}: not within ${timeoutMs / 1000} s; last seen ${JSON.stringify(seen)}`);
    await new Promise((resolve) => setTimeout(resolve, 250));
  }
}

const byTestId = (id) => `[data-testid="${id}"]`;
const rowOf = (id) => `${byTestId("server-row")}[data-server-id="${id}"]`;

// ---------------------------------------------------------------- one browser context

// A page in a context of its own (its own sessionStorage), whose CSP violations, console errors
// and page errors are collected. `expectLoadErrors(n)` allows the next n "Failed to load
// resource" errors the browser logs for an API answer the test provokes (a 400 on purpose).
async function openPage({ width, height, colorScheme }) {
  const context = await browser.newContext({ viewport: { width, height }, colorScheme });
  // Collected in the page by the browser itself (CDP-injected, so the CSP does not apply to it).
  await context.addInitScript(() => {
    window.__cspViolations = [];
    document.addEventListener("securitypolicyviolation", (event) => {
      window.__cspViolations.push(`${event.violatedDirective} blocked ${event.blockedURI || "inline"}`);
    });
  });
  const page = await context.newPage();
  const problems = [];
  let allowedLoadErrors = 0;
  page.on("console", (message) => {
    const text = message.text();
    if (allowedLoadErrors > 0 && /^Failed to load resource: the server responded with a status of 400/.test(text)) {
      allowedLoadErrors -= 1;
      return;
    }
    if (message.type() === "error" || /Content[- ]Security[- ]Policy/i.test(text)) {
      problems.push(`console ${message.type()}: ${text}`);
    }
  });
  page.on("pageerror", (error) => problems.push(`page error: ${error.message}`));
  return {
    context, page, width,
    expectLoadErrors: (count) => { allowedLoadErrors += count; },
    async check(when) {
      for (const violation of await page.evaluate(() => window.__cspViolations.splice(0))) {
        problems.push(`CSP violation: ${violation}`);
      }
      if (problems.length) fail(`${when}: ${problems.length} CSP violation(s) or console error(s): ${problems.join(" | ")}`);
      ok(`no CSP violation, console error or page error ${when}`);
    },
    async shot(name) {
      const file = path.join(config.screenshots, `console-${width}-${name}.png`);
      await page.screenshot({ path: file, fullPage: true });
      return file;
    },
  };
}

// axe-core over the page as it is; fails on a serious or critical violation.
async function accessible(tab, when) {
  const { page } = tab;
  if (!(await page.evaluate(() => typeof window.axe === "object"))) await page.evaluate(AXE_SOURCE);
  const result = await page.evaluate(() => window.axe.run(document, { resultTypes: ["violations"] }));
  const bad = result.violations.filter((violation) => ["serious", "critical"].includes(violation.impact));
  if (bad.length) {
    fail(`axe-core at ${tab.width} px ${when}: ${bad.map((violation) => `${violation.impact} ${violation.id} (${violation.help}) at ${
      violation.nodes.slice(0, 3).map((node) => node.target.join(" ")).join(", ")}`).join("; ")}`);
  }
  const minor = result.violations.map((violation) => `${violation.impact} ${violation.id}`);
  ok(`axe-core at ${tab.width} px ${when}: no serious or critical violation${minor.length ? ` (minor: ${minor.join(", ")})` : ""}`);
}

// The page is no wider than its viewport, and no value in the timeline is squeezed to a sliver.
async function noOverflow(tab, when) {
  const seen = await tab.page.evaluate(() => {
    const narrow = [...document.querySelectorAll(".tl-item td, .tl-item dd, .tl-key, .statement")]
      .filter((node) => node.offsetParent !== null && node.textContent.length > 4 && node.getBoundingClientRect().width < 40)
      .map((node) => node.textContent.slice(0, 30));
    return { scrollWidth: document.documentElement.scrollWidth, innerWidth: window.innerWidth, narrow };
  });
  if (seen.scrollWidth > seen.innerWidth) fail(`at ${tab.width} px ${when}: the page is ${seen.scrollWidth} px wide`);
  if (seen.narrow.length) fail(`at ${tab.width} px ${when}: values squeezed under 40 px: ${JSON.stringify(seen.narrow)}`);
  ok(`at ${tab.width} px ${when}: no horizontal overflow (${seen.scrollWidth} px), no squeezed value`);
}

// ---------------------------------------------------------------- what the page shows

function detailState(page) {
  return page.evaluate(() => {
    const text = (id) => document.querySelector(`[data-testid="${id}"]`)?.textContent.trim() ?? null;
    const visible = (id) => {
      const node = document.querySelector(`[data-testid="${id}"]`);
      return Boolean(node && node.offsetParent !== null && node.getClientRects().length);
    };
    const enabled = (id) => !document.querySelector(`[data-testid="${id}"]`)?.disabled;
    const steps = {};
    for (const step of document.querySelectorAll('[data-testid="step"]')) steps[step.dataset.step] = step.dataset.status;
    return {
      steps,
      serverStatus: text("server-status"),
      currentStep: text("current-step"),
      ip: visible("agent-outbound-ip") ? text("agent-outbound-ip") : null,
      error: visible("onboarding-error") ? text("onboarding-error") : null,
      streamState: visible("stream") ? text("stream-state") : null,
      streamLag: visible("stream") ? text("stream-lag") : null,
      confirmEnabled: enabled("confirm-firewall"),
      retryEnabled: enabled("retry-onboarding"),
      pauseEnabled: enabled("pause-stream"),
      resumeEnabled: enabled("resume-stream"),
      message: visible("message") ? text("message") : null,
    };
  });
}

// The explorer's timeline: each item's kind, table, and for updates the changed columns.
function timeline(page) {
  return page.evaluate(() => [...document.querySelectorAll('[data-testid="timeline"] > li')].map((item) => ({
    kind: item.dataset.type ?? "schema",
    table: item.querySelector(".tl-table")?.textContent,
    text: item.textContent.slice(0, 200),
    changed: [...item.querySelectorAll('tr[data-changed="true"]')].map((row) => ({
      column: row.dataset.column,
      before: row.querySelector(".before").textContent,
      after: row.querySelector(".after").textContent,
      marked: getComputedStyle(row.querySelector(".after")).backgroundColor !== getComputedStyle(item).backgroundColor,
    })),
  })));
}

function overview(page) {
  return page.evaluate(() => ({
    counts: Object.fromEntries([...document.querySelectorAll('[data-testid="count"]')]
      .map((button) => [button.dataset.status, Number(button.querySelector(".count-number").textContent)])),
    needs: [...document.querySelectorAll('[data-testid="needs-action-row"]')]
      .map((row) => ({ id: row.dataset.serverId, kind: row.dataset.kind })),
    rows: [...document.querySelectorAll('[data-testid="server-row"]')].map((row) => row.dataset.serverId),
  }));
}

const allCompleted = (state) => STEPS.every((name) => state.steps[name] === "completed");

async function waitActive(page, what) {
  return until(what, config.onboardTimeout, async () => {
    const state = await detailState(page);
    return { done: allCompleted(state) && state.serverStatus === "active" && state.streamState === "running", seen: state };
  });
}

async function openServer(page, id) {
  await page.click(rowOf(id));
  await page.locator(byTestId("server-detail")).waitFor({ state: "visible", timeout: 10000 });
  await until(`the detail of ${id} shows its six steps`, 15000, async () => {
    const state = await detailState(page);
    const currentRow = await page.locator(rowOf(id)).getAttribute("aria-current");
    return { done: Object.keys(state.steps).length === 6 && state.serverStatus !== "—" && currentRow === "true", seen: state };
  });
}

async function saveKey(page) {
  await page.fill(byTestId("key-input"), config.key);
  await page.click(byTestId("key-save"));
}

// Answers the confirmation dialog: checks it is open and modal, then presses its confirm button.
async function confirmDialog(tab, shotName, typed = "") {
  const dialog = tab.page.locator(`${byTestId("confirm-dialog")}[open]`);
  await dialog.waitFor({ state: "visible", timeout: 5000 }).catch(() => fail("the confirmation dialog did not open"));
  const modal = await tab.page.evaluate(() => document.querySelector('[data-testid="confirm-dialog"]').matches(":modal"));
  if (!modal) fail("the confirmation dialog is not modal");
  if (typed) {
    if (!(await tab.page.isDisabled(byTestId("confirm-ok")))) fail("the confirm button is enabled before the name is typed");
    await tab.page.fill(byTestId("confirm-type"), typed);
  }
  if (shotName) await tab.shot(shotName);
  await tab.page.click(byTestId("confirm-ok"));
  await dialog.waitFor({ state: "hidden", timeout: 5000 });
}

// ---------------------------------------------------------------- the run

async function main() {
  config = readConfig();
  browser = await chromium.launch({
    executablePath: config.chromium,
    args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
      "--disable-background-networking", "--disable-component-update", "--disable-sync"],
  });
  const wide = await openPage({ width: 1400, height: 900, colorScheme: "light" });
  const { page } = wide;

  // The page and its policy.
  const response = await page.goto(config.url, { waitUntil: "load" });
  if (!response || response.status() !== 200) fail(`GET ${config.url} answered ${response?.status()}`);
  const csp = response.headers()["content-security-policy"] || "";
  const missing = CSP_PARTS.filter((part) => !csp.includes(part));
  if (missing.length) fail(`the page's Content-Security-Policy lacks ${missing.join(", ")}: "${csp}"`);
  ok("GET /console answers 200 with a strict Content-Security-Policy");

  // The key: kept in sessionStorage only.
  await saveKey(page);
  const tunnelRow = page.locator(rowOf(config.tunnel));
  await tunnelRow.waitFor({ state: "visible", timeout: 15000 }).catch(() => fail(`no server row for ${config.tunnel}`));
  const badgeText = (await tunnelRow.locator(byTestId("status-badge")).textContent()).trim();
  if (!badgeText || badgeText === "—") fail("the tunnel server's row has no status badge text");
  ok("the tunnel server's row appears with a status badge");
  const storage = await page.evaluate(() => ({
    session: Object.keys(sessionStorage).map((name) => sessionStorage.getItem(name)),
    local: localStorage.length,
  }));
  if (!storage.session.includes(config.key)) fail("sessionStorage does not hold the key");
  if (storage.local !== 0) fail(`localStorage is not empty (${storage.local} items)`);
  ok("the key is in sessionStorage and localStorage is empty");

  // The overview: the tunnel server is pending, and needs action while it awaits the firewall.
  await until("the overview lists the tunnel server as awaiting the firewall", 30000, async () => {
    const seen = await overview(page);
    const needs = seen.needs.find((item) => item.id === config.tunnel);
    return { done: seen.counts.pending >= 1 && needs?.kind === "awaiting_firewall", seen };
  });
  ok("the overview counts the tunnel server as pending and lists it under needs action: awaiting firewall");
  await wide.shot("fleet");

  // The list follows WatchServers: a server registered and decommissioned elsewhere comes and
  // goes within seconds, with no refresh.
  const elsewhere = await page.evaluate(async (key) => {
    const answer = await fetch("/servers", {
      method: "POST",
      headers: { authorization: `Bearer ${key}`, "content-type": "application/json" },
      body: JSON.stringify({ name: "registered-elsewhere", host: "db.example.com", port: 3306,
        mysql_user: "bintrail", mysql_password: "x", connection_method: "direct" }),
    });
    return { status: answer.status, body: await answer.json() };
  }, config.key);
  if (elsewhere.status !== 201) fail(`registering a server from the page: ${JSON.stringify(elsewhere)}`);
  const elsewhereRow = page.locator(rowOf(elsewhere.body.server_id));
  await elsewhereRow.waitFor({ state: "visible", timeout: 5000 })
    .catch(() => fail("a server registered elsewhere did not appear within 5 s"));
  const deleted = await page.evaluate(async ([key, id]) => (await fetch(`/servers/${id}`, {
    method: "DELETE", headers: { authorization: `Bearer ${key}` } })).status,
  [config.key, elsewhere.body.server_id]);
  if (deleted !== 200) fail(`decommissioning it: ${deleted}`);
  await elsewhereRow.waitFor({ state: "detached", timeout: 5000 })
    .catch(() => fail("a decommissioned server stayed in the list over 5 s"));
  ok("a server registered, then decommissioned, elsewhere appears and leaves the list live");

  // Add a server with the form: Test connection lists CheckServer's checks, registers nothing.
  await page.click(`${byTestId("register")} summary`);
  await page.fill(byTestId("register-name"), config.formName);
  await page.fill(byTestId("register-host"), "127.0.0.1");
  await page.fill(byTestId("register-port"), config.mysql.port);
  await page.fill(byTestId("register-user"), config.mysql.user);
  await page.fill(byTestId("register-password"), config.mysql.password);
  await page.click(byTestId("test-connection"));
  const checks = await until("Test connection lists the checks", 30000, async () => {
    const seen = await page.evaluate(() => [...document.querySelectorAll('[data-testid="check"]')]
      .map((item) => ({ name: item.dataset.name, result: item.querySelector(".badge")?.textContent })));
    return { done: seen.length > 0, seen };
  });
  const login = checks.find((check) => check.name === "login");
  if (!login || login.result !== "pass") fail(`the login check did not pass: ${JSON.stringify(checks)}`);
  if (checks.some((check) => check.result === "fail")) fail(`a check failed: ${JSON.stringify(checks)}`);
  const rows = await page.locator(byTestId("server-row")).count();
  if (rows !== 1) fail(`Test connection changed the server list: ${rows} rows`);
  ok(`Test connection lists ${checks.length} checks, login passed, none failed, nothing registered`);
  await wide.shot("register");
  await page.click(byTestId("register-submit"));
  const formId = await until("Register opens the new server", 15000, async () => {
    const seen = await page.evaluate(() => ({
      id: decodeURIComponent(location.hash.slice(1)),
      title: document.querySelector("#detail-title")?.textContent,
    }));
    return { done: seen.id && seen.title === config.formName, seen };
  }).then((seen) => seen.id);
  await page.locator(rowOf(formId)).waitFor({ state: "visible", timeout: 5000 });
  ok(`Register adds ${config.formName} to the list and opens it`);

  // Active: six steps completed, stream running, the stream and the events above the fold.
  const active = await waitActive(page, "the registered server onboards to active with its stream running");
  ok("the registered server shows all six steps completed, server-status active, stream-state running");
  if (!active.streamLag) fail("stream-lag is empty");
  if (active.confirmEnabled || active.retryEnabled) fail(`an action is enabled on an active server: ${JSON.stringify(active)}`);
  ok(`the stream shows its lag (${active.streamLag}); Confirm firewall and Retry are disabled`);
  const fold = await page.evaluate(() => ({
    stream: document.querySelector('[data-testid="stream"]').getBoundingClientRect().top,
    explorer: document.querySelector('[data-testid="explorer"]').getBoundingClientRect().top,
    stepsOpen: document.querySelector('[data-testid="steps-box"]').open,
    height: window.innerHeight,
  }));
  if (fold.stream > fold.height * 0.5 || fold.explorer > fold.height * 0.6) fail(`the stream and events are not above the fold: ${JSON.stringify(fold)}`);
  if (fold.stepsOpen) fail("the completed steps are not folded away for an active server");
  ok(`the stream (at ${Math.round(fold.stream)} px) and the events (at ${Math.round(fold.explorer)} px) are above the fold; the steps fold below`);
  const counted = await overview(page);
  if (counted.counts.active < 1) fail(`the overview counts no active server: ${JSON.stringify(counted)}`);
  ok("the overview counts the active server");

  // Pause behind a confirmation: Escape cancels it, the confirm button pauses; then Resume.
  await page.click(byTestId("pause-stream"));
  await page.locator(`${byTestId("confirm-dialog")}[open]`).waitFor({ state: "visible", timeout: 5000 });
  await page.keyboard.press("Escape");
  await page.locator(`${byTestId("confirm-dialog")}[open]`).waitFor({ state: "hidden", timeout: 5000 });
  if ((await detailState(page)).serverStatus !== "active") fail("Escape in the pause dialog paused the stream");
  ok("Pause asks first; Escape closes the dialog and nothing is paused");
  await page.click(byTestId("pause-stream"));
  await confirmDialog(wide, "pause-dialog");
  await until("the server is paused, its stream stopped", 30000, async () => {
    const state = await detailState(page);
    return { done: state.serverStatus === "paused" && state.streamState === "stopped" && state.resumeEnabled, seen: state };
  });
  ok("after confirming Pause the server is paused, its stream stopped, and Resume is enabled");
  await page.click(byTestId("resume-stream"));
  await confirmDialog(wide, "resume-dialog");
  await until("the resumed stream runs again", config.onboardTimeout, async () => {
    const state = await detailState(page);
    return { done: state.serverStatus === "active" && state.streamState === "running" && state.pauseEnabled, seen: state };
  });
  ok("after Resume the stream runs again");

  // The explorer: the UPDATE's diff and the CREATE TABLE in one timeline.
  const latest = await until("the explorer shows the UPDATE's diff and the CREATE TABLE", 45000, async () => {
    const items = await timeline(page);
    const update = items.find((item) => item.kind === "update" && item.table === "shop.orders");
    const ddl = items.find((item) => item.kind === "schema" && item.text.includes("shop.console_ddl"));
    return { done: Boolean(update && ddl), seen: { update, ddl, count: items.length } };
  });
  const total = latest.update.changed.find((change) => change.column === "total");
  if (!total || total.before !== "9.99" || total.after !== "12.34") fail(`the diff of total is not 9.99 → 12.34: ${JSON.stringify(latest.update)}`);
  if (latest.update.changed.length !== 1) fail(`columns other than total are marked changed: ${JSON.stringify(latest.update.changed)}`);
  if (!total.marked) fail("the changed column is not highlighted");
  ok("the explorer shows the UPDATE as a before → after diff, total 9.99 → 12.34 highlighted, and the CREATE TABLE inline");
  await page.fill(byTestId("explorer-table"), "orders");
  await page.selectOption(byTestId("explorer-type"), "update");
  await page.click(byTestId("explorer-apply"));
  const filtered = await until("the explorer filters to updates of orders", 15000, async () => {
    const items = await timeline(page);
    return { done: items.length > 0 && items.every((item) => item.kind === "update" && item.table === "shop.orders"), seen: items };
  });
  ok(`filtered to table orders and type update: ${filtered.length} update(s), no schema change`);
  // Undo SQL of that selection: the script that sets total back to 9.99, shown, copied, downloaded.
  await page.click(byTestId("undo-sql"));
  const undo = await until("the undo script of the orders updates is shown", 15000, async () => {
    const seen = await page.evaluate(() => ({
      script: document.querySelector('[data-testid="undo-result"]').hidden ? null
        : document.querySelector('[data-testid="undo-script"]').textContent,
      note: document.querySelector('[data-testid="undo-note"]').textContent,
      error: document.querySelector('[data-testid="undo-error"]').hidden ? null
        : document.querySelector('[data-testid="undo-error"]').textContent,
    }));
    return { done: Boolean(seen.script || seen.error), seen };
  });
  if (undo.error) fail(`Undo SQL shows an error: ${undo.error}`);
  const restore = /^UPDATE `shop`\.`orders` SET [^;\n]*`total` = 9\.99 WHERE [^;\n]*`total` <=> 12\.34[^;\n]*;$/m;
  if (!undo.script.includes("START TRANSACTION;") || !restore.test(undo.script) || !/^COMMIT;$/m.test(undo.script)) {
    fail(`the undo script lacks START TRANSACTION, the UPDATE back to 9.99 or COMMIT: ${undo.script}`);
  }
  if (!undo.note.includes('table = "orders" AND type = "update"')) fail(`the undo note does not name the filter: ${undo.note}`);
  ok(`Undo SQL shows the script of ${undo.note.replace(/^The strict undo script of /, "")} START TRANSACTION, ${
    undo.script.match(restore)[0].slice(0, 60)}…, COMMIT`);
  const [download] = await Promise.all([page.waitForEvent("download", { timeout: 10000 }), page.click(byTestId("undo-download"))]);
  const downloaded = readFileSync(await download.path(), "utf8");
  if (downloaded !== undo.script || !/^revert-.+\.sql$/.test(download.suggestedFilename())) {
    fail(`the download (${download.suggestedFilename()}, ${downloaded.length} chars) is not the script shown`);
  }
  ok(`Download saves the script shown as ${download.suggestedFilename()} (a Blob URL)`);
  await wide.context.grantPermissions(["clipboard-read", "clipboard-write"]);
  await page.click(byTestId("undo-copy"));
  const copied = await until("Copy puts the script on the clipboard", 5000, async () => {
    const seen = await page.evaluate(async () => ({
      note: document.querySelector('[data-testid="undo-note"]').textContent,
      clipboard: await navigator.clipboard.readText().catch((error) => `(${error.message})`),
    }));
    return { done: seen.note.includes("copied"), seen };
  });
  if (copied.clipboard !== undo.script) fail(`the clipboard holds ${JSON.stringify(copied.clipboard.slice(0, 80))}`);
  ok("Copy puts the script on the clipboard");
  await page.locator(byTestId("undo")).scrollIntoViewIfNeeded();
  await wide.shot("undo");
  await accessible(wide, "with the undo script");
  // A table without a primary key: the API's refusal, shown readably.
  await page.fill(byTestId("explorer-table"), "console_nokey");
  await page.selectOption(byTestId("explorer-type"), "");
  await page.click(byTestId("explorer-apply"));
  wide.expectLoadErrors(1);
  await page.click(byTestId("undo-sql"));
  const refused = await until("Undo SQL of a table without a primary key shows the refusal", 15000, async () => {
    const seen = await page.evaluate(() => ({
      error: document.querySelector('[data-testid="undo-error"]').hidden ? null
        : document.querySelector('[data-testid="undo-error"]').textContent,
      result: !document.querySelector('[data-testid="undo-result"]').hidden,
    }));
    return { done: Boolean(seen.error), seen };
  });
  if (!refused.error.includes("TABLE_WITHOUT_PRIMARY_KEY") || !refused.error.includes("console_nokey")
    || !refused.error.includes("HTTP 400") || refused.result) {
    fail(`the refusal is not shown readably: ${JSON.stringify(refused)}`);
  }
  ok(`Undo SQL of a table without a primary key shows: "${refused.error}"`);
  // A time range pages oldest first; schema changes are merged in binlog order.
  await page.evaluate(() => {
    const hourAgo = new Date(Date.now() - 3600 * 1000);
    const local = new Date(hourAgo.getTime() - hourAgo.getTimezoneOffset() * 60000).toISOString().slice(0, 19);
    document.querySelector('[data-testid="explorer-from"]').value = local;
  });
  await page.fill(byTestId("explorer-table"), "");
  await page.selectOption(byTestId("explorer-type"), "");
  await page.click(byTestId("explorer-apply"));
  const paged = await until("the last hour's first page", 15000, async () => {
    const items = await timeline(page);
    const pageLabel = await page.textContent(byTestId("explorer-page"));
    const ddl = items.findIndex((item) => item.kind === "schema" && item.text.includes("shop.console_ddl"));
    const update = items.findIndex((item) => item.kind === "update");
    return { done: pageLabel === "Page 1" && ddl >= 0 && update > ddl, seen: { pageLabel, items } };
  });
  ok(`the last hour, page 1, oldest first: ${paged.items.length} item(s), the CREATE TABLE before the UPDATE`);
  await wide.shot("explorer");
  await accessible(wide, "with the explorer open");

  // Edit: a bad host is refused, and the error shows beside the host field; then a label saved.
  await page.click(byTestId("edit-server"));
  await page.locator(byTestId("edit-form")).waitFor({ state: "visible", timeout: 5000 });
  const prefilled = await page.inputValue(byTestId("edit-host"));
  if (prefilled !== "127.0.0.1") fail(`the edit form's host is ${JSON.stringify(prefilled)}`);
  if (await page.inputValue(byTestId("edit-password"))) fail("the edit form shows a password");
  await page.fill(byTestId("edit-host"), "not a host!");
  wide.expectLoadErrors(1);
  await page.click(byTestId("edit-save"));
  await confirmDialog(wide, "edit-dialog");
  const hostError = await until("the host error shows beside the host field", 10000, async () => {
    const seen = await page.evaluate(() => {
      const input = document.querySelector('[data-testid="edit-host"]');
      const note = input.nextElementSibling;
      return {
        invalid: input.getAttribute("aria-invalid"),
        describedBy: input.getAttribute("aria-describedby"),
        noteId: note?.id, field: note?.dataset.field, text: note?.textContent,
        focused: document.activeElement === input,
        errors: document.querySelectorAll('[data-testid="field-error"]').length,
      };
    });
    return { done: seen.field === "server.host", seen };
  });
  if (hostError.invalid !== "true" || hostError.describedBy !== hostError.noteId || !hostError.focused || hostError.errors !== 1) {
    fail(`the host error is not tied to its field: ${JSON.stringify(hostError)}`);
  }
  ok(`a bad host is refused and the error shows beside the host field: "${hostError.text}"`);
  await wide.shot("edit-error");
  await accessible(wide, "with the edit form and its error");
  await page.fill(byTestId("edit-host"), "127.0.0.1");
  await page.fill(byTestId("edit-labels"), "env=prod");
  await page.click(byTestId("edit-save"));
  await confirmDialog(wide, null);
  await until("the label is saved", 10000, async () => {
    const seen = await page.evaluate((id) => ({
      form: !document.querySelector('[data-testid="edit-form"]').hidden,
      row: document.querySelector(`[data-testid="server-row"][data-server-id="${id}"] .row-sub`)?.textContent,
    }), formId);
    return { done: !seen.form && seen.row?.includes("env=prod"), seen };
  });
  ok("the edit saves the label env=prod (PATCH with update_mask and etag) and the row shows it");

  // Search and filter the live list: by label, by status.
  await page.fill(byTestId("fleet-search"), "env=prod");
  await until("searching env=prod leaves the registered server", 5000, async () => {
    const seen = await overview(page);
    return { done: seen.rows.length === 1 && seen.rows[0] === formId, seen };
  });
  await page.fill(byTestId("fleet-search"), "");
  await page.click(`${byTestId("count")}[data-status="pending"]`);
  await until("the pending count filters to the tunnel server", 5000, async () => {
    const seen = await overview(page);
    return { done: seen.rows.length === 1 && seen.rows[0] === config.tunnel, seen };
  });
  await page.selectOption(byTestId("fleet-status"), "");
  await until("clearing the status filter shows both", 5000, async () => {
    const seen = await overview(page);
    return { done: seen.rows.length === 2, seen };
  });
  ok("search env=prod shows the labelled server only; the pending count shows the tunnel server only");

  // Sparklines: the registered server's row draws its lag and events/s from its stream's samples
  // (one per 10 s at most, so this waits for the second).
  const sparks = await until("the registered server's row draws its sparklines", 60000, async () => {
    const seen = await page.evaluate((id) => {
      const row = document.querySelector(`[data-testid="server-row"][data-server-id="${id}"]`);
      return {
        lines: [...row.querySelectorAll("svg.spark polyline")].map((line) => line.getAttribute("points").split(" ").length),
        text: row.querySelector('[data-testid="sparklines"]').textContent,
      };
    }, formId);
    return { done: seen.lines.length === 2 && seen.lines.every((count) => count >= 2), seen };
  });
  if (!/lag\s+\d+\.\d s/.test(sparks.text) || !/events\/s/.test(sparks.text)) fail(`the sparklines' values: ${JSON.stringify(sparks)}`);
  ok(`the registered server's row draws its lag and events/s sparklines (${sparks.text.replace(/\s+/g, " ").trim()})`);
  await wide.shot("sparklines");
  await wide.check("at 1400 px up to the edit");

  // The same at 390 px in dark mode: the list, the detail and the explorer fit the width.
  const narrow = await openPage({ width: 390, height: 844, colorScheme: "dark" });
  await narrow.page.goto(config.url, { waitUntil: "load" });
  await saveKey(narrow.page);
  await narrow.page.locator(rowOf(formId)).waitFor({ state: "visible", timeout: 15000 });
  await narrow.page.locator(`${rowOf(formId)} svg.spark`).first().waitFor({ state: "visible", timeout: 15000 })
    .catch(() => fail("no sparkline in the registered server's row at 390 px"));
  await noOverflow(narrow, "with the list and its sparklines");
  await narrow.shot("list");
  await accessible(narrow, "in dark mode with the list");
  await openServer(narrow.page, formId);
  await until("the explorer at 390 px shows the update", 30000, async () => {
    const items = await timeline(narrow.page);
    return { done: items.some((item) => item.kind === "update"), seen: items.length };
  });
  await noOverflow(narrow, "with the detail");
  await narrow.shot("detail");
  await narrow.page.fill(byTestId("explorer-table"), "orders");
  await narrow.page.click(byTestId("explorer-apply"));
  await until("the filtered explorer at 390 px", 15000, async () => {
    const items = await timeline(narrow.page);
    return { done: items.length > 0 && items.every((item) => item.table === "shop.orders"), seen: items.length };
  });
  await noOverflow(narrow, "with the explorer filtered");
  await narrow.page.locator(byTestId("explorer")).screenshot({ path: path.join(config.screenshots, "console-390-explorer.png") });
  await narrow.page.click(byTestId("undo-sql"));
  await until("the undo script at 390 px", 15000, async () => {
    const script = await narrow.page.evaluate(() => (document.querySelector('[data-testid="undo-result"]').hidden ? ""
      : document.querySelector('[data-testid="undo-script"]').textContent));
    return { done: script.includes("COMMIT;"), seen: script.length };
  });
  const wrapped = await narrow.page.evaluate(() => {
    const pre = document.querySelector('[data-testid="undo-script"]');
    return { scrollWidth: pre.scrollWidth, clientWidth: pre.clientWidth, whiteSpace: getComputedStyle(pre).whiteSpace };
  });
  if (wrapped.scrollWidth > wrapped.clientWidth || wrapped.whiteSpace !== "pre-wrap") fail(`the undo script does not wrap at 390 px: ${JSON.stringify(wrapped)}`);
  await noOverflow(narrow, "with the undo script");
  await narrow.page.locator(byTestId("undo")).screenshot({ path: path.join(config.screenshots, "console-390-undo.png") });
  await accessible(narrow, "in dark mode with the detail and explorer");
  await narrow.check("at 390 px");
  await narrow.context.close();

  // Decommission behind a confirmation that asks for the name.
  await page.click(byTestId("decommission"));
  await confirmDialog(wide, "decommission-dialog", config.formName);
  await page.locator(rowOf(formId)).waitFor({ state: "detached", timeout: 10000 })
    .catch(() => fail("the decommissioned server stayed in the list"));
  if (await page.isVisible(byTestId("server-detail"))) fail("the detail of the decommissioned server stayed open");
  ok("Decommission, confirmed by typing the name, removes the server from the list and closes it");

  // The SSH-tunnel server: awaiting_firewall with the agent's IP, confirmed, then onboarded.
  await openServer(page, config.tunnel);
  const waiting = await until("the tunnel server awaits the firewall and shows agent_outbound_ip", 30000, async () => {
    const state = await detailState(page);
    return { done: state.currentStep === "awaiting_firewall" && Boolean(state.ip) && state.confirmEnabled, seen: state };
  });
  ok(`the tunnel server awaits the firewall; agent-outbound-ip ${waiting.ip} is shown; Confirm is enabled`);
  await wide.shot("awaiting-firewall");
  await accessible(wide, "with a server awaiting the firewall");
  await page.click(byTestId("confirm-firewall"));
  await until("awaiting_firewall completes after Confirm", 30000, async () => {
    const state = await detailState(page);
    return { done: state.steps.awaiting_firewall === "completed", seen: state };
  });
  ok("after Confirm firewall the awaiting_firewall step is completed");
  await waitActive(page, "the tunnel server onboards to active with its stream running");
  ok("the tunnel server shows all six steps completed, server-status active, stream-state running");
  await until("nothing needs action any more", 15000, async () => {
    const seen = await overview(page);
    return { done: seen.needs.length === 0, seen };
  });
  ok("the needs-action list is empty once the tunnel server is active");
  await wide.shot("active");

  // The keyboard: the first Tab reaches the skip link, every focused control shows its focus.
  await page.evaluate(() => document.activeElement?.blur());
  const focused = [];
  for (let i = 0; i < 12; i++) {
    await page.keyboard.press("Tab");
    focused.push(await page.evaluate(() => {
      const node = document.activeElement;
      const style = getComputedStyle(node);
      return { what: node.dataset.testid || node.id || node.className || node.tagName, outline: style.outlineStyle,
        width: parseFloat(style.outlineWidth) };
    }));
  }
  const unmarked = focused.filter((item) => item.outline === "none" || item.width < 2);
  if (unmarked.length) fail(`focus not visible on ${JSON.stringify(unmarked)}`);
  ok(`keyboard focus is visible on each of ${focused.length} controls tabbed through (${focused.map((item) => item.what).join(", ")})`);

  // Forgetting the key clears it.
  await page.click(byTestId("key-forget"));
  const after = await page.evaluate(() => ({
    session: sessionStorage.length, rows: document.querySelectorAll('[data-testid="server-row"]').length,
  }));
  if (after.session !== 0 || after.rows !== 0) fail(`Forget leaves ${after.session} sessionStorage item(s) and ${after.rows} row(s)`);
  ok("Forget clears sessionStorage and the list");

  await wide.check("in the whole run");
  await browser.close();
  console.log(`console: ${passed} passed, 0 failed`);
}

main().then(
  () => process.exit(0),
  async (error) => {
    console.log(`FAIL - ${error instanceof CheckFailed ? error.message : error?.stack || error}`);
    console.log(`console: ${passed} passed, 1 failed`);
    if (browser) await browser.close().catch(() => {});
    process.exit(1);
  },
);
