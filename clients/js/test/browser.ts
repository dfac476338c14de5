/**
 * Real Chromium (playwright-core, the system's browser: no download), driven over JSON lines by
 * tests/js/test_browser.py (see rpc.ts). Pages are named; each gets its own browser context (its
 * own storage, like another user). Console errors and page errors are printed as events.
 */

import { chromium, type Browser, type CDPSession, type Page } from "playwright-core";

import { emit, serve } from "./rpc.js";

const FLAGS = [
  "--headless",
  "--no-sandbox",
  "--disable-gpu",
  "--no-first-run",
  "--disable-background-networking",
  "--disable-component-update",
  "--disable-sync",
];

let browser: Browser | null = null;
const pages = new Map<string, Page>();
const cdp = new Map<string, CDPSession>();

function page(name: string): Page {
  const p = pages.get(name);
  if (p === undefined) throw new Error(`no page ${name}`);
  return p;
}

serve(
  {
    /** `args`: more command-line flags (e.g. a certificate to trust). */
    async launch(a) {
      const args = [...FLAGS, ...((a["args"] as string[] | undefined) ?? [])];
      browser = await chromium.launch({ executablePath: a["executablePath"], args, headless: true });
      return browser.version();
    },
    async open(a) {
      if (browser === null) throw new Error("launch first");
      const context = await browser.newContext({ viewport: { width: 1180, height: 760 } });
      const p = await context.newPage();
      const name = a["page"] as string;
      p.on("console", (m) => {
        if (m.type() === "error" || m.type() === "warning") emit({ event: "console", page: name, type: m.type(), text: m.text() });
      });
      p.on("pageerror", (e) => emit({ event: "pageerror", page: name, text: String(e) }));
      pages.set(name, p);
      if (a["url"]) await p.goto(a["url"]);
      return null;
    },
    goto: async (a) => void (await page(a["page"]).goto(a["url"])),
    /** Requests matching the glob fail, as a missing file or a blocking policy would make them. */
    block: (a) => page(a["page"]).context().route(a["pattern"], (route) => route.abort()),
    workers: (a) => page(a["page"]).workers().map((w) => w.url()),
    reload: async (a) => void (await page(a["page"]).reload()),
    fill: (a) => page(a["page"]).fill(a["selector"], a["value"]),
    click: (a) => page(a["page"]).click(a["selector"]),
    select: (a) => page(a["page"]).selectOption(a["selector"], a["value"]),
    /** A JavaScript expression evaluated in the page (awaited if it is a promise). */
    eval: (a) => page(a["page"]).evaluate(a["expression"]),
    /** Polls with evaluate (Runtime.evaluate, which no page policy blocks): waitForFunction
     * compiles its predicate with `new Function` inside the page, which the demo's
     * Content-Security-Policy (no 'unsafe-eval') refuses. */
    async waitFor(a) {
      const deadline = Date.now() + (a["timeoutMs"] ?? 5000);
      while (!(await page(a["page"]).evaluate(a["expression"]))) {
        if (Date.now() > deadline) throw new Error(`timed out waiting for ${a["expression"]}`);
        await new Promise((resolve) => setTimeout(resolve, 25));
      }
      return null;
    },
    screenshot: async (a) => void (await page(a["page"]).screenshot({ path: a["path"], fullPage: true })),
    /** The browser's own performance counters for the page (CDP Performance.getMetrics). */
    async metrics(a) {
      let session = cdp.get(a["page"]);
      if (session === undefined) {
        session = await page(a["page"]).context().newCDPSession(page(a["page"]));
        await session.send("Performance.enable", { timeDomain: "threadTicks" });
        cdp.set(a["page"], session);
      }
      const { metrics } = await session.send("Performance.getMetrics");
      return Object.fromEntries(metrics.map((m) => [m.name, m.value]));
    },
  },
  async () => {
    await browser?.close();
  },
);
