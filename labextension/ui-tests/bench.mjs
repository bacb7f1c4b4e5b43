// Timings of the data browser in headless Chromium against a running JupyterLab with a large org.
// Prints `name: value` lines. Environment: LAB_URL, LAB_TOKEN, SEARCH_Q, CHROMIUM (optional).

import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

import { chromium } from 'playwright-core';

const LAB_URL = process.env.LAB_URL.replace(/\/?$/, '/');
const PANEL = '#atomscale-lab-browser';
const FLAGS = [
  '--headless',
  '--no-sandbox',
  '--disable-gpu',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
  '--no-first-run',
  '--disable-quic',
];

const profile = mkdtempSync(join(tmpdir(), 'atomscale-bench-chromium-'));
const context = await chromium.launchPersistentContext(profile, {
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  headless: true,
  args: FLAGS,
  viewport: { width: 1400, height: 900 },
});
try {
  const page = context.pages()[0] ?? (await context.newPage());
  let listRequests = 0;
  page.on('request', (r) => {
    if (/\/atomscale\/api\/v1\/runs(\?|$)/.test(r.url())) {
      listRequests++;
    }
  });
  await page.goto(`${LAB_URL}lab?token=${encodeURIComponent(process.env.LAB_TOKEN)}`);
  await page.waitForFunction(() => window.jupyterapp && window.jupyterapp.shell, null, {
    timeout: 120_000,
  });
  await page.evaluate(() => window.jupyterapp.restored);
  const loads = () => page.$eval(PANEL, (n) => n.dataset.loads || '0');
  const reloaded = (before) =>
    page.waitForFunction(
      ([sel, b]) => {
        const n = document.querySelector(sel);
        return n && n.dataset.listState === 'ready' && (n.dataset.loads || '0') !== b;
      },
      [PANEL, before],
      { timeout: 60_000 },
    );
  const median = (xs) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];

  let t = performance.now();
  await page.evaluate(() => window.jupyterapp.shell.activateById('atomscale-lab-browser'));
  await page.waitForSelector(`${PANEL} .jp-AtomscalePanel-run`, { timeout: 120_000 });
  console.log(`panel_first_page_ms: ${(performance.now() - t).toFixed(0)}`);
  console.log(`panel_total_runs: ${await page.$eval(PANEL, (n) => n.dataset.total)}`);

  const pages = [];
  for (let i = 0; i < 15; i++) {
    const b = await loads();
    t = performance.now();
    await page.click(`${PANEL} .jp-AtomscalePanel-next`);
    await reloaded(b);
    pages.push(performance.now() - t);
  }
  console.log(`panel_next_page_p50_ms: ${median(pages).toFixed(0)}`);
  console.log(`panel_next_page_max_ms: ${Math.max(...pages).toFixed(0)}`);

  let b = await loads();
  await page.click(`${PANEL} .jp-AtomscalePanel-search`);
  await page.keyboard.type(process.env.SEARCH_Q, { delay: 30 });
  t = performance.now();
  await reloaded(b);
  // includes the search delay setting (300 ms by default) before the request is sent
  console.log(`panel_search_after_last_key_ms: ${(performance.now() - t).toFixed(0)}`);
  console.log(`panel_search_total: ${await page.$eval(PANEL, (n) => n.dataset.total)}`);

  b = await loads();
  const first = await page.$eval(`${PANEL} .jp-AtomscalePanel-run`, (li) => li.dataset.runId);
  t = performance.now();
  await page.click(`${PANEL} .jp-AtomscalePanel-run[data-run-id="${first}"]`);
  await page.waitForSelector(`${PANEL} .jp-AtomscalePanel-detail[data-state="ready"]`);
  await page.waitForSelector(`${PANEL} .jp-AtomscalePanel-plot > *`);
  console.log(`panel_select_run_ms: ${(performance.now() - t).toFixed(0)}`);
  console.log(
    `panel_rows_in_dom: ${await page.$$eval(`${PANEL} .jp-AtomscalePanel-run`, (l) => l.length)}`,
  );
  console.log(`panel_list_requests: ${listRequests}`);
} finally {
  await context.close();
  rmSync(profile, { recursive: true, force: true });
}
