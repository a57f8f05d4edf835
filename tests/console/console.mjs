// Drives GET /console in headless Chromium (Debian's, through playwright-core) against a running
// service: key handling, the server list, a direct server watched to active with its stream
// running, an SSH-tunnel server confirmed past awaiting_firewall, and no CSP violation or console
// error on the way. One line per check; exit code 0 when all pass, 1 on the first failure.
//
// Environment:
//   CONSOLE_URL       the page, e.g. http://127.0.0.1:8080/console             (required)
//   DBTRAIL_KEY       an API key of the tenant (servers:read/write, changes:read) (required)
//   DIRECT_SERVER_ID  a direct server that onboards to active by itself         (required)
//   TUNNEL_SERVER_ID  an ssh_tunnel server waiting at awaiting_firewall          (required)
//   SCREENSHOT_PATH   where the full-page PNG goes (default console.png)
//   CHROMIUM_PATH     the browser (default /usr/bin/chromium)
//   ONBOARD_TIMEOUT_MS how long onboarding may take (default 90000)

import { chromium } from "playwright-core";

const STEPS = ["provisioning", "awaiting_firewall", "waiting_for_agent",
  "initializing", "snapshotting", "streaming"];
const CSP_PARTS = ["default-src 'none'", "script-src 'self'", "style-src 'self'", "connect-src 'self'"];

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
    direct: required("DIRECT_SERVER_ID"),
    tunnel: required("TUNNEL_SERVER_ID"),
    screenshot: process.env.SCREENSHOT_PATH || "console.png",
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

// What the detail panel shows now, read in the page.
function detailState(page) {
  return page.evaluate(() => {
    const text = (id) => document.querySelector(`[data-testid="${id}"]`)?.textContent.trim() ?? null;
    const visible = (id) => {
      const node = document.querySelector(`[data-testid="${id}"]`);
      return Boolean(node && node.offsetParent !== null && node.getClientRects().length);
    };
    const steps = {};
    for (const step of document.querySelectorAll('[data-testid="step"]')) {
      steps[step.dataset.step] = step.dataset.status;
    }
    return {
      steps,
      serverStatus: text("server-status"),
      currentStep: text("current-step"),
      ip: visible("agent-outbound-ip") ? text("agent-outbound-ip") : null,
      error: visible("onboarding-error") ? text("onboarding-error") : null,
      streamState: visible("stream") ? text("stream-state") : null,
      streamLag: visible("stream") ? text("stream-lag") : null,
      changeEvents: document.querySelectorAll('[data-testid="change-event"]').length,
      confirmEnabled: !document.querySelector('[data-testid="confirm-firewall"]')?.disabled,
      retryEnabled: !document.querySelector('[data-testid="retry-onboarding"]')?.disabled,
      message: visible("message") ? text("message") : null,
    };
  });
}

const allCompleted = (state) => STEPS.every((name) => state.steps[name] === "completed");

function problemsCheck(problems, when) {
  if (problems.length) fail(`${when}: ${problems.length} CSP violation(s) or console error(s): ${problems.join(" | ")}`);
  ok(`no CSP violation, console error or page error ${when}`);
}

async function openServer(page, id) {
  await page.click(`${byTestId("server-row")}[data-server-id="${id}"]`);
  await page.locator(byTestId("server-detail")).waitFor({ state: "visible", timeout: 10000 });
  await until(`the detail of ${id} shows its six steps`, 15000, async () => {
    const state = await detailState(page);
    const title = await page.locator(`${byTestId("server-row")}[data-server-id="${id}"]`).getAttribute("aria-current");
    return { done: Object.keys(state.steps).length === 6 && state.serverStatus !== "—" && title === "true", seen: state };
  });
}

async function main() {
  config = readConfig();
  browser = await chromium.launch({
    executablePath: config.chromium,
    args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
      "--disable-background-networking", "--disable-component-update", "--disable-sync"],
  });
  const context = await browser.newContext({ viewport: { width: 1360, height: 900 } });
  // Collected in the page by the browser itself (CDP-injected, so the CSP does not apply to it).
  await context.addInitScript(() => {
    window.__cspViolations = [];
    document.addEventListener("securitypolicyviolation", (event) => {
      window.__cspViolations.push(`${event.violatedDirective} blocked ${event.blockedURI || "inline"}`);
    });
  });
  const page = await context.newPage();
  const problems = [];
  page.on("console", (message) => {
    if (message.type() === "error" || /Content[- ]Security[- ]Policy/i.test(message.text())) {
      problems.push(`console ${message.type()}: ${message.text()}`);
    }
  });
  page.on("pageerror", (error) => problems.push(`page error: ${error.message}`));
  const collectViolations = async () => {
    for (const violation of await page.evaluate(() => window.__cspViolations.splice(0))) {
      problems.push(`CSP violation: ${violation}`);
    }
  };

  // The page and its policy.
  const response = await page.goto(config.url, { waitUntil: "load" });
  if (!response || response.status() !== 200) fail(`GET ${config.url} answered ${response?.status()}`);
  const csp = response.headers()["content-security-policy"] || "";
  const missing = CSP_PARTS.filter((part) => !csp.includes(part));
  if (missing.length) fail(`the page's Content-Security-Policy lacks ${missing.join(", ")}: "${csp}"`);
  ok("GET /console answers 200 with a strict Content-Security-Policy");

  // The key: kept in sessionStorage only.
  await page.fill(byTestId("key-input"), config.key);
  await page.click(byTestId("key-save"));
  for (const id of [config.direct, config.tunnel]) {
    const row = page.locator(`${byTestId("server-row")}[data-server-id="${id}"]`);
    await row.waitFor({ state: "visible", timeout: 15000 }).catch(() => fail(`no server row for ${id}`));
    const badgeText = (await row.locator(byTestId("status-badge")).textContent()).trim();
    if (!badgeText || badgeText === "—") fail(`the row of ${id} has no status badge text`);
  }
  ok("both server rows appear, each with a status badge");
  const storage = await page.evaluate(() => ({
    session: Object.keys(sessionStorage).map((name) => sessionStorage.getItem(name)),
    local: localStorage.length,
  }));
  if (!storage.session.includes(config.key)) fail("sessionStorage does not hold the key");
  if (storage.local !== 0) fail(`localStorage is not empty (${storage.local} items)`);
  ok("the key is in sessionStorage and localStorage is empty");

  // The direct server: six steps completed live, active, stream running.
  await openServer(page, config.direct);
  ok("the direct server's detail opens with its six steps");
  const direct = await until("the direct server onboards to active with its stream running",
    config.onboardTimeout, async () => {
      const state = await detailState(page);
      return { done: allCompleted(state) && state.serverStatus === "active" && state.streamState === "running", seen: state };
    });
  ok("the direct server shows all six steps completed, server-status active, stream-state running");
  if (!direct.streamLag) fail("stream-lag is empty");
  ok(`the stream shows its lag (${direct.streamLag}) and ${direct.changeEvents} change event row(s)`);
  if (direct.confirmEnabled || direct.retryEnabled) fail(`an action is enabled on an active server: ${JSON.stringify(direct)}`);
  ok("Confirm firewall and Retry are disabled on an active server");
  await collectViolations();
  problemsCheck(problems, "while watching the direct server");

  // The SSH-tunnel server: awaiting_firewall with the agent's IP, confirmed, then onboarded.
  await openServer(page, config.tunnel);
  const waiting = await until("the tunnel server awaits the firewall and shows agent_outbound_ip", 30000, async () => {
    const state = await detailState(page);
    return { done: state.currentStep === "awaiting_firewall" && Boolean(state.ip) && state.confirmEnabled, seen: state };
  });
  ok(`the tunnel server awaits the firewall; agent-outbound-ip ${waiting.ip} is shown; Confirm is enabled`);
  await page.click(byTestId("confirm-firewall"));
  await until("awaiting_firewall completes after Confirm", 30000, async () => {
    const state = await detailState(page);
    return { done: state.steps.awaiting_firewall === "completed", seen: state };
  });
  ok("after Confirm firewall the awaiting_firewall step is completed");
  await until("the tunnel server onboards to active with its stream running", config.onboardTimeout, async () => {
    const state = await detailState(page);
    return { done: allCompleted(state) && state.serverStatus === "active" && state.streamState === "running", seen: state };
  });
  ok("the tunnel server shows all six steps completed, server-status active, stream-state running");

  await page.screenshot({ path: config.screenshot, fullPage: true });
  ok(`full-page screenshot written to ${config.screenshot}`);

  // Forgetting the key clears it.
  await page.click(byTestId("key-forget"));
  const after = await page.evaluate(() => ({
    session: sessionStorage.length, rows: document.querySelectorAll('[data-testid="server-row"]').length,
  }));
  if (after.session !== 0 || after.rows !== 0) fail(`Forget leaves ${after.session} sessionStorage item(s) and ${after.rows} row(s)`);
  ok("Forget clears sessionStorage and the list");

  await collectViolations();
  problemsCheck(problems, "in the whole run");
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
