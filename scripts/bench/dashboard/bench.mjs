// The browser's figures for scripts/bench/dashboard.sh, in headless Chromium:
//   grid_dom_nodes  elements of the job page's grid of 1,000 intervals
//   cell_click_ms   p95 of click on a grid cell → its attempts shown (one request)
//   live_update_ms  p95 of a step record changed in the store → its cell repainted (over SSE)
//   log_tail_ms     p95 of opening a 50 MB log's page → its last 1,000 lines shown
// Usage: node bench.mjs BASE_URL UNTIL DB_PATH NEWEST_START STEPS
import { execFileSync } from "node:child_process";

// playwright-core as tests/browser installs it (this file is outside that package).
const { chromium } = await import(new URL("../../../tests/browser/node_modules/playwright-core/index.mjs", import.meta.url));

const [base, until, db, newest, stepsArg] = process.argv.slice(2);
const steps = Number(stepsArg);
const p95 = (xs) => { const s = [...xs].sort((a, b) => a - b); return s[Math.min(s.length - 1, Math.ceil(0.95 * s.length) - 1)]; };
const round = (x) => Math.round(x * 10) / 10;

const browser = await chromium.launch({ executablePath: process.env.CHROMIUM || "/usr/bin/chromium", args: ["--no-sandbox"] });
const page = await browser.newPage({ viewport: { width: 1400, height: 900 } });
const jobUrl = `${base}/jobs/job_00?n=1000&until=${until}`;
await page.goto(jobUrl);
const gridDomNodes = await page.evaluate(() => document.querySelectorAll("svg.grid, svg.grid *").length);
const columns = await page.evaluate(() => document.querySelector("svg.grid").dataset.starts.split(" ").length);
if (columns !== 1000) throw new Error(`the grid has ${columns} columns, not 1000`);

// Cell clicks.
const box = await page.locator("svg.grid").boundingBox();
const clicks = [];
for (let i = 0; i < 20; i++) {
  const col = 3 + i * 5, row = i % steps; // within the visible part of the grid
  await page.locator("svg.grid").scrollIntoViewIfNeeded();
  const b = await page.locator("svg.grid").boundingBox();
  const x = b.x + 180 + col * 10 + 4, y = b.y + 18 + row * 16 + 6;
  const before = await page.evaluate(() => document.querySelector("#panel").dataset.loaded || "");
  const t0 = Date.now();
  await page.mouse.click(x, y);
  await page.waitForFunction((prev) => (document.querySelector("#panel").dataset.loaded || "") !== prev && document.querySelector("#panel table.attempts"), before);
  clicks.push(Date.now() - t0);
}
void box;

// Live updates: a record changed in the store, its cell repainted.
await page.goto(jobUrl);
await page.waitForTimeout(1500); // the EventSource is connected and the poller runs
const lives = [];
for (let r = 0; r < 10; r++) {
  const step = `step_${String(r).padStart(2, "0")}`;
  const out = execFileSync("python3", ["-c", `
import sqlite3, sys, time, datetime
db = sqlite3.connect(sys.argv[1], timeout=10)
now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
db.execute("UPDATE step_intervals SET state = 'running', updated_at = ? WHERE job = 'job_00' AND step = ? AND interval_start = ?", (now, sys.argv[2], sys.argv[3]))
if db.total_changes != 1: sys.exit("no such step record: " + sys.argv[3])
db.commit()
print(int(time.time() * 1000))
`, db, step, newest.replace("Z", ".000000Z")]).toString().trim();
  const committed = Number(out);
  await page.waitForSelector(`svg.grid g.live rect[data-cell='c0-${r}'].s-running`, { timeout: 10e3 });
  lives.push(Date.now() - committed);
}

// The big log.
const logUrl = `${base}/jobs/job_00/intervals/${newest}/steps/step_00/log`;
const logs = [];
for (let i = 0; i < 10; i++) {
  const t0 = Date.now();
  await page.goto(logUrl, { waitUntil: "load" });
  logs.push(Date.now() - t0);
}
const lines = await page.evaluate(() => document.querySelector("pre.log").textContent.split("\n").filter(Boolean).length);
if (lines !== 1000) throw new Error(`the log page shows ${lines} lines, not 1000`);
await browser.close();
console.log(JSON.stringify({
  grid_dom_nodes: gridDomNodes,
  cell_click_ms: round(p95(clicks)),
  live_update_ms: round(p95(lives)),
  log_tail_ms: round(p95(logs)),
}));
