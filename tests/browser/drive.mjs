// The browser test of `loops ui`, run by tests/it/ui.rs (`browser_...`): Debian's chromium,
// driven by playwright-core, against a daemon serving the UI on 127.0.0.1. It opens the
// overview with the token, sees a run appear live after `loops trigger`, opens the run and
// its diff, ticks and completes a handoff, cancels a running job, takes screenshots, and
// fails if any request left 127.0.0.1.
//
// Environment: LOOPS_UI (http://127.0.0.1:PORT), LOOPS_TOKEN, LOOPS_BIN, LOOPS_WS (the
// workspace), LOOPS_JOB (a running job's id), LOOPS_SHOTS (where screenshots go).
import { chromium } from "playwright-core";
import { execFileSync } from "node:child_process";
import { mkdirSync } from "node:fs";

const env = (k) => {
  const v = process.env[k];
  if (!v) throw new Error(`${k} is not set`);
  return v;
};
const base = env("LOOPS_UI");
const token = env("LOOPS_TOKEN");
const bin = env("LOOPS_BIN");
const ws = env("LOOPS_WS");
const job = env("LOOPS_JOB");
const shots = env("LOOPS_SHOTS");
mkdirSync(shots, { recursive: true });

const step = (what) => console.log(`step: ${what}`);
const outside = [];
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  args: ["--no-sandbox", "--disable-dev-shm-usage"],
});
try {
  const context = await browser.newContext({ viewport: { width: 1280, height: 900 } });
  const page = await context.newPage();
  page.setDefaultTimeout(20000);
  const errors = [];
  page.on("pageerror", (e) => errors.push(String(e)));
  page.on("console", (m) => {
    // Failed loads are judged by their responses below (the browser's own favicon.ico asks 404).
    if (m.type() === "error" && !m.text().startsWith("Failed to load resource")) errors.push(m.text());
  });
  page.on("response", (r) => {
    if (r.status() >= 400 && !r.url().endsWith("/favicon.ico")) errors.push(`${r.status()} ${r.url()}`);
  });
  context.on("request", (r) => {
    const host = new URL(r.url()).hostname;
    if (host !== "127.0.0.1") outside.push(r.url());
  });

  step("the overview, with the token");
  await page.goto(`${base}/?token=${token}`);
  if (new URL(page.url()).search.includes("token")) throw new Error(`the token stayed in the address: ${page.url()}`);
  await page.waitForSelector("text=report");
  await page.waitForFunction(() => document.getElementById("live-status")?.textContent === "live");

  step("a run appears live after `loops trigger`");
  await page.evaluate(() => { window.__notReloaded = true; });
  execFileSync(bin, ["--workspace", ws, "trigger", "report"], { stdio: "inherit" });
  const runLink = page.locator('a[href^="/loops/report/runs/"]').first();
  await runLink.waitFor();
  if (!(await page.evaluate(() => window.__notReloaded === true))) throw new Error("the page reloaded instead of updating");
  await page.screenshot({ path: `${shots}/overview.png`, fullPage: true });

  step("its run and its diff");
  await runLink.click();
  await page.waitForSelector("text=Transcript");
  await page.waitForSelector(".diff .add");
  const diff = await page.locator(".diff").first().innerText();
  if (!diff.includes("+ran")) throw new Error(`the run's diff lacks its change:\n${diff}`);
  await page.screenshot({ path: `${shots}/run.png`, fullPage: true });

  step("tick a handoff's items and complete it");
  await page.goto(`${base}/inbox/h1`);
  for (let i = 0; i < 2; i++) {
    await page.locator('button:text("tick")').first().click();
    await page.waitForLoadState();
  }
  await page.screenshot({ path: `${shots}/handoff.png`, fullPage: true });
  await page.fill('input[name="summary"]', "done from the browser");
  await page.click('button:text("complete")');
  await page.waitForSelector(".tag.done");
  const log = execFileSync("git", ["-C", ws, "log", "--format=%s"]).toString();
  if (!log.includes("main: completed handoff: Morning brief")) throw new Error(`no completion commit:\n${log}`);

  step("cancel a running job");
  await page.goto(`${base}/jobs/${job}`);
  await page.click('button:text("cancel")');
  await page.waitForFunction(
    async () => {
      const r = await fetch(location.href);
      return (await r.text()).includes('class="tag cancelled"');
    },
    null,
    { polling: 500, timeout: 30000 },
  );
  await page.goto(`${base}/jobs`);
  await page.screenshot({ path: `${shots}/jobs.png`, fullPage: true });

  if (errors.length) throw new Error(`the pages logged errors:\n${errors.join("\n")}`);
} finally {
  await browser.close();
}
if (outside.length) {
  console.error(`requests left 127.0.0.1:\n${outside.join("\n")}`);
  process.exit(1);
}
console.log("browser: ok");
