// The dashboard in real headless Chromium (Debian's /usr/bin/chromium, driven by playwright-core),
// against a real `cranium daemon` on a SQLite store and the real PostgreSQL: log in, pause a job,
// trigger an interval and watch its cells turn from running to success live (over the page's one
// EventSource, with no other request), click a cell, find a line of a failed step's log with the
// browser's own search, submit a backfill from its preview (an empty range first), clear a step
// with its downstream, and take screenshots checked for size and content.
//
// Run: node --test tests/browser/ (scripts/test.sh does, after the cargo tests built the binary).
// CRANIUM_BIN overrides the binary; SCREENSHOT_DIR keeps the screenshots.

import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { spawn, spawnSync } from "node:child_process";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import net from "node:net";
import { chromium } from "playwright-core";

const root = path.resolve(path.dirname(new URL(import.meta.url).pathname), "../..");
const bin = process.env.CRANIUM_BIN ||
  path.join(process.env.CARGO_TARGET_DIR || path.join(root, "target"), "debug", "cranium");
const chromiumPath = process.env.CHROMIUM || "/usr/bin/chromium";
const TOKEN = "browser-test-token-" + process.pid + "-0123456789";
const PG = process.env.WAREHOUSE_URL || "postgres://postgres@127.0.0.1:5432/test";

let dir, port, daemon, browser, page, shots;

function freePort() {
  return new Promise((resolve, reject) => {
    const s = net.createServer();
    s.listen(0, "127.0.0.1", () => {
      const p = s.address().port;
      s.close(() => resolve(p));
    });
    s.on("error", reject);
  });
}

function cranium(...args) {
  const r = spawnSync(bin, ["--project", dir, ...args], {
    encoding: "utf8",
    env: { ...process.env, CRANIUM_AUTH_TOKEN: TOKEN },
  });
  return r;
}

function write(rel, text) {
  fs.mkdirSync(path.dirname(path.join(dir, rel)), { recursive: true });
  fs.writeFileSync(path.join(dir, rel), text);
}

/** Width and height of a PNG, from its header. */
function pngSize(file) {
  const b = fs.readFileSync(file);
  assert.equal(b.toString("latin1", 1, 4), "PNG", `${file} is a PNG`);
  return { width: b.readUInt32BE(16), height: b.readUInt32BE(20), bytes: b.length };
}

async function shot(name, minBytes) {
  const file = path.join(shots, `${name}.png`);
  await page.screenshot({ path: file, fullPage: false });
  const s = pngSize(file);
  assert.equal(s.width, 1280, `${name}.png width`);
  assert.equal(s.height, 800, `${name}.png height`);
  // A blank or unstyled page compresses to a few KB; a drawn dashboard does not.
  assert.ok(s.bytes > minBytes, `${name}.png is ${s.bytes} bytes: is the page drawn?`);
  return file;
}

const yesterday = () => {
  const d = new Date();
  d.setUTCHours(0, 0, 0, 0);
  return new Date(d.getTime() - 86400e3).toISOString().replace(".000Z", "Z");
};

before(async () => {
  assert.ok(fs.existsSync(bin), `no cranium binary at ${bin}: build it (cargo build) or set CRANIUM_BIN`);
  assert.ok(fs.existsSync(chromiumPath), `no Chromium at ${chromiumPath}: apt-get install chromium`);
  dir = fs.mkdtempSync(path.join(os.tmpdir(), "cranium-browser-"));
  shots = process.env.SCREENSHOT_DIR || path.join(dir, "screenshots");
  fs.mkdirSync(shots, { recursive: true });
  port = await freePort();
  write("cranium.yaml", `state: sqlite://.cranium/state.db
connections:
  warehouse: { kind: postgres, url: "${PG}" }
daemon: { listen: "127.0.0.1:${port}", auth_token: "\${CRANIUM_AUTH_TOKEN}", lease_ttl: 5s }
`);
  write("jobs/slow.yaml", `job: slow
owner: web-team
description: Two seconds of warehouse work, then three quick steps.
schedule: "0 * * * *"
start: 2026-11-01
catchup: false
steps:
  - id: wait
    kind: sql
    connection: warehouse
    query: SELECT pg_sleep(2)
  - id: load
    kind: noop
    after: [wait]
  - id: report
    kind: noop
    after: [load]
  - id: audit
    kind: noop
    after: [wait]
`);
  write("jobs/broken.yaml", `job: broken
owner: web-team
schedule: "0 0 * * *"
start: 2026-11-01
catchup: false
steps:
  - id: fail
    kind: lua
    code: |
      for i = 1, 400 do cranium.log("info", "checking batch " .. i) end
      cranium.log("warn", "needle: batch 137 has 3 bad rows")
      for i = 401, 600 do cranium.log("info", "checking batch " .. i) end
      error("3 rows failed the check")
`);
  write("jobs/nightly.yaml", `job: nightly
owner: finance
schedule: "30 2 * * *"
timezone: Europe/Berlin
start: 2026-11-01
catchup: false
steps:
  - id: only
    kind: noop
`);
  for (const j of ["slow", "broken"]) {
    const r = cranium("pause", j);
    assert.equal(r.status, 0, r.stderr);
  }
  const r = cranium("run", "broken");
  assert.equal(r.status, 1, "broken fails: " + r.stdout + r.stderr);
  daemon = spawn(bin, ["--project", dir, "daemon", "--id", "browser"], {
    env: { ...process.env, CRANIUM_AUTH_TOKEN: TOKEN },
    stdio: ["ignore", "ignore", fs.openSync(path.join(dir, "daemon.log"), "w")],
  });
  for (let i = 0; ; i++) {
    try {
      const res = await fetch(`http://127.0.0.1:${port}/readyz`);
      if (res.ok) break;
    } catch { /* not yet */ }
    assert.ok(i < 200, "the daemon did not become ready: " + fs.readFileSync(path.join(dir, "daemon.log"), "utf8"));
    await new Promise((r) => setTimeout(r, 100));
  }
  browser = await chromium.launch({ executablePath: chromiumPath, args: ["--no-sandbox"] });
  page = await browser.newPage({ viewport: { width: 1280, height: 800 } });
});

after(async () => {
  if (browser) await browser.close();
  if (daemon && daemon.exitCode === null) {
    daemon.kill("SIGTERM");
    await new Promise((r) => daemon.once("exit", r));
  }
});

const base = () => `http://127.0.0.1:${port}`;

test("the dashboard of a running daemon, used as a person would", { timeout: 120e3 }, async (t) => {
  await t.test("log in", async () => {
    await page.goto(base() + "/login?next=/");
    await page.fill("input[name=name]", "browser");
    await page.fill("input[name=token]", TOKEN);
    await Promise.all([page.waitForURL(base() + "/"), page.click("form.login button")]);
    assert.equal(await page.locator("tr.job").count(), 3);
    assert.match(await page.locator("header .who").innerText(), /browser/);
    await shot("jobs", 20_000);
  });

  await t.test("pause a job", async () => {
    await page.goto(base() + "/jobs/nightly");
    await Promise.all([page.waitForURL(/msg=/), page.click("form[action$='/pause'] button")]);
    assert.match(await page.locator(".msg").innerText(), /paused nightly/);
    assert.equal(await page.locator("h1 .badge.paused").count(), 1);
    const status = cranium("status");
    assert.match(status.stdout, /nightly\s+paused/, status.stdout);
  });

  let started;
  await t.test("trigger an interval and watch its cells turn from running to success live", async () => {
    await page.goto(base() + "/jobs/slow");
    const requests = [];
    page.on("request", (r) => requests.push(r.url()));
    await Promise.all([page.waitForURL(/msg=request/), page.click("form[action$='/trigger'] button")]);
    started = Date.now();
    requests.length = 0;
    // The newest column is the interval triggered; its four cells go running, then success.
    await page.waitForSelector("svg.grid g.live rect[data-cell='c0-0'].s-running", { timeout: 15e3 });
    await page.waitForFunction(
      () => document.querySelectorAll("svg.grid g.live rect.s-success[data-cell^='c0-']").length === 4,
      null,
      { timeout: 20e3 },
    );
    const others = requests.filter((u) => !u.includes("/events"));
    assert.deepEqual(others, [], "live updates come over the page's one EventSource, no polling");
    assert.equal(await page.locator("svg.dag .node.s-success").count(), 4, "the DAG shows the states too");
    await shot("job", 25_000);
  });

  await t.test("click a cell: its attempts with one request", async () => {
    const requests = [];
    const listener = (r) => { if (!r.url().includes("/events")) requests.push(r.url()); };
    page.on("request", listener);
    const box = await page.locator("svg.grid").boundingBox();
    // Column 0, row 0 (`wait`): past the 180 px labels and the 18 px header.
    await page.mouse.click(box.x + 180 + 4, box.y + 18 + 6);
    await page.waitForSelector("#panel table.attempts");
    page.off("request", listener);
    assert.equal(requests.length, 1, requests.join("\n"));
    assert.match(requests[0], /fragment=1&step=wait/);
    assert.match(await page.locator("#panel").innerText(), /wait\s+1\s+\d+\s+success/);
  });

  await t.test("find a line of a failed step's log with the browser's search", async () => {
    await page.goto(base() + `/jobs/broken/intervals/${yesterday()}/steps/fail/log`);
    assert.equal(await page.locator("h1 .state.s-failed").count(), 1);
    const found = await page.evaluate(() => window.find("needle: batch 137 has 3 bad rows"));
    assert.equal(found, true, "window.find (the engine behind Ctrl-F) finds the line");
    const selected = await page.evaluate(() => String(window.getSelection()));
    assert.equal(selected, "needle: batch 137 has 3 bad rows");
    assert.match(await page.locator("pre.err").first().innerText(), /3 rows failed the check/);
    await shot("log", 20_000);
  });

  await t.test("submit a backfill from its preview", async () => {
    const before = (await (await fetch(base() + "/requests")).text()).match(/id="request-/g)?.length ?? 0;
    await page.goto(base() + "/jobs/slow/backfill?from=2026-12-01T06:00:00Z&to=2026-12-01T00:00:00Z");
    assert.match(await page.locator("p.error").innerText(), /empty or reversed/);
    assert.equal(await page.locator("form[action$='/backfill'][method=post]").count(), 0, "nothing to submit");
    await page.goto(base() + "/jobs/slow/backfill?from=2026-12-01T00:00:00Z&to=2026-12-01T03:00:00Z");
    assert.match(await page.locator("h2").first().innerText(), /3 interval\(s\) will run/);
    assert.deepEqual(
      await page.locator("ol.preview li time").evaluateAll((ts) => ts.filter((_, i) => i % 2 === 0).map((t) => t.getAttribute("datetime"))),
      ["2026-12-01T00:00:00Z", "2026-12-01T01:00:00Z", "2026-12-01T02:00:00Z"],
    );
    await Promise.all([page.waitForURL(/\/requests\?msg=/), page.click("form[action$='/backfill'] button")]);
    assert.match(await page.locator(".msg").innerText(), /backfill of slow over 3 interval/);
    const rows = await page.locator("tr[id^=request-]").count();
    assert.equal(rows, before + 1, "one request more");
    await shot("requests", 15_000);
  });

  await t.test("clear a step with its downstream", async () => {
    const latest = await page.goto(base() + "/jobs/slow").then(() =>
      page.locator("a", { hasText: "the newest interval" }).getAttribute("href"));
    await page.goto(base() + latest);
    await page.locator("tr[data-step=wait] input[name=downstream]").check();
    await Promise.all([page.waitForURL(/msg=/), page.click("tr[data-step=wait] form button")]);
    assert.match(await page.locator(".msg").innerText(), /cleared 4 step record\(s\) of slow \(wait, load, report, audit\)/);
    for (const s of ["wait", "load", "report", "audit"]) {
      assert.equal(await page.locator(`tr[data-step=${s}] .state`).innerText(), "pending", s);
    }
    await shot("interval", 20_000);
    const audit = await (await fetch(base() + "/audit")).text();
    for (const a of ["pause", "trigger", "backfill", "clear"]) {
      assert.match(audit, new RegExp(`<td>browser</td><td>${a}</td>`), `${a} is audited`);
    }
  });
  assert.ok(started, "the trigger step ran");
});
