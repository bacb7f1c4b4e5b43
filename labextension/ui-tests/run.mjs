// Drives a running JupyterLab with the data browser in headless Chromium and reports what it saw.
//
// Environment:
//   LAB_URL        the server's base URL, e.g. http://127.0.0.1:8899/
//   LAB_TOKEN      its token
//   SEARCH_Q       a search text that matches some runs but not all
//   FACET_INSTRUMENT  an instrument whose runs have RHEED traces (picked in the facet filter)
//   MATERIAL_SYSTEM   a material system (context label) picked in the material-system facet
//   MODE           `full` (default: every step) or `viewer` (a user without context:join: open
//                  the panel and record which facets it offers and what it asked the server)
//   ARTIFACTS      folder for screenshots (created if missing)
//   CHROMIUM       browser executable (default /usr/bin/chromium)
//   OUT            file to write the observations to (JSON)
//
// The script performs the steps a person would (open the panel, search, page, select a run, open
// it in a notebook, switch to the dark theme) and records observations; the pytest that starts it
// compares them with the REST API. It exits non-zero naming the step that did not complete.

import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

import { chromium } from 'playwright-core';

const env = (name) => {
  const v = process.env[name];
  if (!v) {
    console.error(`${name} is not set`);
    process.exit(2);
  }
  return v;
};

const LAB_URL = env('LAB_URL').replace(/\/?$/, '/');
const TOKEN = env('LAB_TOKEN');
const SEARCH_Q = env('SEARCH_Q');
const FACET_INSTRUMENT = env('FACET_INSTRUMENT');
const MODE = process.env.MODE || 'full';
const MATERIAL_SYSTEM = MODE === 'full' ? env('MATERIAL_SYSTEM') : '';
const ARTIFACTS = env('ARTIFACTS');
const OUT = env('OUT');
const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium';
const STEP_TIMEOUT = 30_000;

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

const PANEL = '#atomscale-lab-browser';
const obs = { steps: [], consoleErrors: [], runsRequests: [] };
let step = 'start';
let currentPage = null;

function begin(name) {
  step = name;
  obs.steps.push(name);
  console.log(`step: ${name}`);
}

async function shot(page, name) {
  const path = join(ARTIFACTS, name);
  await page.screenshot({ path });
  (obs.screenshots ??= []).push(name);
}

/** Wait until the run list has been (re)loaded after `action`. */
async function listReloaded(page, action) {
  const before = await page.$eval(PANEL, (n) => n.dataset.loads || '0');
  await action();
  await page.waitForFunction(
    ([sel, b]) => {
      const n = document.querySelector(sel);
      return n && n.dataset.listState === 'ready' && (n.dataset.loads || '0') !== b;
    },
    [PANEL, before],
    { timeout: STEP_TIMEOUT },
  );
}

/** Show the panel without toggling it closed (a click on an open tab collapses the sidebar). */
async function showPanel(page) {
  await page.evaluate(() => window.jupyterapp.shell.activateById('atomscale-lab-browser'));
  await page.waitForSelector(PANEL, { state: 'visible' });
}

const runIds = (page) =>
  page.$$eval(`${PANEL} .jp-AtomscalePanel-run`, (lis) => lis.map((li) => li.dataset.runId));

const activeSource = (page) =>
  page.evaluate(() => {
    const w = window.jupyterapp.shell.currentWidget;
    const nb = w && w.context && w.content;
    if (!nb || !nb.model || !nb.model.cells) {
      return null;
    }
    const cells = [];
    for (let i = 0; i < nb.model.cells.length; i++) {
      cells.push(nb.model.cells.get(i).sharedModel.getSource());
    }
    return { id: w.id, path: w.context.path, cells };
  });

/** A user without context:join: which facets the panel offers, and what the server answers. */
async function viewerSteps(page) {
  begin('viewer facets');
  await page.waitForSelector(`${PANEL} .jp-AtomscalePanel-org dd`);
  await page.waitForSelector(`${PANEL} .jp-AtomscalePanel-facets[data-state="ready"]`);
  obs.role = await page.$eval(
    `${PANEL} .jp-AtomscalePanel-org .jp-AtomscalePanel-role`,
    (n) => n.textContent,
  );
  obs.viewerFacets = await page.$$eval(`${PANEL} .jp-AtomscalePanel-facet`, (ss) =>
    ss.map((s) => s.dataset.facet),
  );
  obs.viewerTotal = Number(await page.$eval(PANEL, (n) => n.dataset.total));
  obs.panelContextRequests = (obs.contextFacetRequests ?? []).length;
  await shot(page, 'panel-viewer.png');
  // asked directly (as a curious user could from the browser), the server refuses
  obs.viewerContextStatus = await page.evaluate(
    async ([base, token]) => {
      const r = await fetch(`${base}atomscale/api/v1/facets/context?purpose=curious`, {
        headers: { Authorization: `token ${token}` },
      });
      return r.status;
    },
    [LAB_URL, TOKEN],
  );
}

async function main() {
  mkdirSync(ARTIFACTS, { recursive: true });
  const profile = mkdtempSync(join(tmpdir(), 'atomscale-chromium-'));
  const context = await chromium.launchPersistentContext(profile, {
    executablePath: CHROMIUM,
    headless: true,
    args: FLAGS,
    viewport: { width: 1400, height: 900 },
  });
  try {
    const page = context.pages()[0] ?? (await context.newPage());
    currentPage = page;
    page.setDefaultTimeout(STEP_TIMEOUT);
    page.on('console', (msg) => {
      if (msg.type() === 'error') {
        obs.consoleErrors.push(msg.text());
      }
    });
    page.on('request', (req) => {
      const url = req.url();
      if (/\/atomscale\/api\/v1\/runs(\?|$)/.test(url)) {
        obs.runsRequests.push({ url, t: Date.now() });
      }
      if (/\/atomscale\/api\/v1\/facets\/context(\?|$)/.test(url)) {
        (obs.contextFacetRequests ??= []).push(url);
      }
    });

    begin('open lab');
    await page.goto(`${LAB_URL}lab?token=${encodeURIComponent(TOKEN)}`);
    await page.waitForFunction(() => window.jupyterapp && window.jupyterapp.shell, null, {
      timeout: 90_000,
    });
    await page.evaluate(() => window.jupyterapp.restored);

    begin('open panel');
    await page.waitForSelector(`.jp-SideBar [data-id="atomscale-lab-browser"]`);
    await showPanel(page);
    await page.waitForSelector(`${PANEL} .jp-AtomscalePanel-run`);
    if (MODE === 'viewer') {
      await viewerSteps(page);
      begin('done');
      return;
    }
    await page.waitForSelector(`${PANEL} .jp-AtomscalePanel-org dd`);
    await page.waitForSelector(`${PANEL} .jp-AtomscalePanel-category`);
    obs.org = await page.$eval(`${PANEL} .jp-AtomscalePanel-org`, (n) =>
      Object.fromEntries(
        Array.from(n.querySelectorAll('dd')).map((dd) => [dd.className, dd.textContent]),
      ),
    );
    obs.categories = await page.$$eval(`${PANEL} .jp-AtomscalePanel-category`, (lis) =>
      lis.map((li) => ({ name: li.dataset.category, text: li.textContent })),
    );
    obs.firstPage = await runIds(page);
    obs.total = Number(await page.$eval(PANEL, (n) => n.dataset.total));
    obs.range = await page.textContent(`${PANEL} .jp-AtomscalePanel-range`);
    await shot(page, 'panel-light.png');

    begin('next page');
    await listReloaded(page, () => page.click(`${PANEL} .jp-AtomscalePanel-next`));
    obs.secondPage = await runIds(page);
    obs.secondRange = await page.textContent(`${PANEL} .jp-AtomscalePanel-range`);

    begin('search');
    const typingStart = Date.now();
    await listReloaded(page, async () => {
      await page.click(`${PANEL} .jp-AtomscalePanel-search`);
      // One input event: on a loaded machine a stalled main thread can let the debounce timer
      // fire between typed keys; per-keystroke debouncing is covered by the unit tests.
      await page.keyboard.insertText(SEARCH_Q);
    });
    obs.typingStart = typingStart;
    obs.searchRuns = await runIds(page);
    obs.searchTotal = Number(await page.$eval(PANEL, (n) => n.dataset.total));
    obs.searchRange = await page.textContent(`${PANEL} .jp-AtomscalePanel-range`);
    obs.requestsUntilSearch = obs.runsRequests.length;
    await shot(page, 'panel-search.png');

    begin('select run');
    const target = obs.searchRuns[0];
    await page.click(`${PANEL} .jp-AtomscalePanel-run[data-run-id="${target}"]`);
    await page.waitForSelector(`${PANEL} .jp-AtomscalePanel-detail[data-state="ready"]`);
    await page.waitForSelector(`${PANEL} .jp-AtomscalePanel-sparkline path`);
    obs.detail = await page.$eval(`${PANEL} .jp-AtomscalePanel-detail`, (n) => {
      const dts = Array.from(n.querySelectorAll('.jp-AtomscalePanel-fields dt'));
      const plot = n.querySelector('.jp-AtomscalePanel-plot');
      return {
        runId: n.dataset.runId,
        title: n.querySelector('.jp-AtomscalePanel-detailTitle')?.textContent,
        fields: Object.fromEntries(
          dts.map((dt) => [dt.textContent, dt.nextElementSibling?.textContent]),
        ),
        process: Array.from(
          n.querySelectorAll('[data-category="process"] .jp-AtomscalePanel-chip'),
        ).map((c) => c.textContent),
        toolState: Array.from(
          n.querySelectorAll('[data-category="tool_state"] .jp-AtomscalePanel-chip'),
        ).map((c) => c.textContent),
        metrology: Array.from(
          n.querySelectorAll('.jp-AtomscalePanel-metrologyList li[data-item-id]'),
        ).map((li) => li.dataset.itemId),
        plotChannel: plot?.dataset.channel,
        plotPoints: Number(plot?.dataset.points),
        path: n.querySelector('.jp-AtomscalePanel-sparkline path')?.getAttribute('d'),
        selected: Array.from(
          document.querySelectorAll('.jp-AtomscalePanel-run.jp-mod-selected'),
        ).map((li) => li.dataset.runId),
      };
    });
    await shot(page, 'run-summary.png');

    begin('open in new notebook');
    obs.notebookBefore = await activeSource(page);
    await page.click(`${PANEL} .jp-AtomscalePanel-open`);
    await page.waitForFunction(
      () => {
        const w = window.jupyterapp.shell.currentWidget;
        const nb = w && w.context && w.content.model;
        if (!nb || !nb.cells) {
          return false;
        }
        for (let i = 0; i < nb.cells.length; i++) {
          if (nb.cells.get(i).sharedModel.getSource().includes('plot_rheed(ws, run_id)')) {
            return true;
          }
        }
        return false;
      },
      null,
      { timeout: 60_000 },
    );
    obs.newNotebook = await activeSource(page);
    await page.waitForSelector('.jp-NotebookPanel .jp-Cell .cm-content');

    begin('run inserted cell');
    // The cell is meant to be ready to run: run it in the new notebook's kernel once that is up
    // (a cell run before the kernel exists is not queued).
    await page.waitForFunction(
      () => {
        const w = window.jupyterapp.shell.currentWidget;
        const k =
          w && w.sessionContext && w.sessionContext.session && w.sessionContext.session.kernel;
        return !!k && k.connectionStatus === 'connected' && k.status === 'idle';
      },
      null,
      { timeout: 120_000 },
    );
    await page.evaluate(() => window.jupyterapp.commands.execute('notebook:run-cell'));
    await page.waitForFunction(
      (rid) =>
        Array.from(document.querySelectorAll('.jp-NotebookPanel .jp-OutputArea-output')).some(
          (n) => n.textContent.includes(rid) || /Error|Traceback/.test(n.textContent),
        ),
      target,
      { timeout: 120_000 },
    );
    // the RHEED figure is an interactive plotly widget (anywidget): wait until it has drawn
    await page
      .waitForSelector('.jp-NotebookPanel .jp-OutputArea-output .js-plotly-plot .main-svg', {
        timeout: 60_000,
      })
      .catch(() => undefined);
    obs.cellOutput = await page.$$eval('.jp-NotebookPanel .jp-OutputArea-output', (ns) =>
      ns
        .map((n) => n.textContent)
        .join('\n')
        .slice(0, 4000),
    );
    obs.cellImages = await page.$$eval('.jp-NotebookPanel .jp-OutputArea-output img', (ns) =>
      ns.map((n) => n.naturalWidth),
    );
    obs.cellPlotly = await page.$$eval(
      '.jp-NotebookPanel .js-plotly-plot .main-svg',
      (ns) => ns.length,
    );
    await shot(page, 'open-in-notebook.png');

    begin('insert into active notebook');
    const second = obs.searchRuns[1] ?? obs.firstPage[1];
    await showPanel(page);
    await page.click(`${PANEL} .jp-AtomscalePanel-run[data-run-id="${second}"]`);
    await page.waitForSelector(
      `${PANEL} .jp-AtomscalePanel-detail[data-state="ready"][data-run-id="${second}"]`,
    );
    await page.click(`${PANEL} .jp-AtomscalePanel-open`);
    await page.waitForFunction(
      ([id, rid]) => {
        const w = window.jupyterapp.shell.currentWidget;
        const nb = w && w.id === id && w.content.model;
        if (!nb || !nb.cells) {
          return false;
        }
        for (let i = 0; i < nb.cells.length; i++) {
          if (nb.cells.get(i).sharedModel.getSource().includes(JSON.stringify(rid))) {
            return true;
          }
        }
        return false;
      },
      [obs.newNotebook.id, second],
      { timeout: STEP_TIMEOUT },
    );
    obs.secondRun = second;
    obs.activeNotebook = await activeSource(page);

    begin('api error is shown');
    await page.route('**/atomscale/api/v1/runs/*', (route) =>
      route.fulfill({
        status: 503,
        contentType: 'application/json',
        body: JSON.stringify({
          message: 'the key service did not answer',
          reason: 'Service Unavailable',
        }),
      }),
    );
    await showPanel(page);
    await page.click(`${PANEL} .jp-AtomscalePanel-run[data-run-id="${target}"]`);
    await page.waitForSelector(`${PANEL} .jp-AtomscalePanel-detail[data-state="error"]`);
    obs.errorText = await page.textContent(
      `${PANEL} .jp-AtomscalePanel-detail .jp-AtomscalePanel-error`,
    );
    await page.unroute('**/atomscale/api/v1/runs/*');
    await page.click(`${PANEL} .jp-AtomscalePanel-run[data-run-id="${target}"]`);
    await page.waitForSelector(`${PANEL} .jp-AtomscalePanel-sparkline path`);

    begin('missing server extension is explained');
    await page.route('**/atomscale/api/v1/status*', (route) =>
      route.fulfill({
        status: 404,
        contentType: 'text/html',
        body: '<html><h1>404: Not Found</h1></html>',
      }),
    );
    await page.click(`${PANEL} .jp-AtomscalePanel-refresh`);
    await page.waitForSelector(`${PANEL} > .jp-AtomscalePanel-error:not([hidden])`);
    obs.statusErrorText = await page.textContent(`${PANEL} > .jp-AtomscalePanel-error`);
    await page.unroute('**/atomscale/api/v1/status*');
    await page.click(`${PANEL} .jp-AtomscalePanel-refresh`);
    await page.waitForSelector(`${PANEL} > .jp-AtomscalePanel-error`, { state: 'hidden' });
    await page.waitForSelector(`${PANEL} .jp-AtomscalePanel-org dd`);

    begin('facets narrow the list');
    await page.waitForSelector(`${PANEL} .jp-AtomscalePanel-facets[data-state="ready"]`);
    obs.facetOptions = await page.$$eval(`${PANEL} .jp-AtomscalePanel-facet`, (ss) =>
      Object.fromEntries(
        ss.map((s) => [s.dataset.facet, Array.from(s.options).map((o) => o.value)]),
      ),
    );
    await listReloaded(page, async () => {
      await page.fill(`${PANEL} .jp-AtomscalePanel-search`, '');
      await page.keyboard.press('Enter');
    });
    obs.unfilteredTotal = Number(await page.$eval(PANEL, (n) => n.dataset.total));
    await listReloaded(page, () =>
      page.selectOption(
        `${PANEL} .jp-AtomscalePanel-facet[data-facet="instrument"]`,
        FACET_INSTRUMENT,
      ),
    );
    obs.facetRuns = await runIds(page);
    obs.facetTotal = Number(await page.$eval(PANEL, (n) => n.dataset.total));
    obs.facetRequest = obs.runsRequests[obs.runsRequests.length - 1].url;

    begin('rheed plot');
    const rheedRun = obs.facetRuns[0];
    await page.click(`${PANEL} .jp-AtomscalePanel-run[data-run-id="${rheedRun}"]`);
    await page.waitForSelector(
      `${PANEL} .jp-AtomscalePanel-rheedBox[data-state="ready"] .jp-AtomscalePanel-rheedPlot path`,
    );
    const rheedState = () =>
      page.$eval(`${PANEL} .jp-AtomscalePanel-rheed`, (n) => ({
        lo: Number(n.dataset.lo),
        hi: Number(n.dataset.hi),
        points: Number(n.dataset.points),
        layers: Number(n.dataset.layers),
        path: n.querySelector('path')?.getAttribute('d'),
        label: n.querySelector('.jp-AtomscalePanel-rheedWindow')?.textContent,
      }));
    obs.rheed = { runId: rheedRun, before: await rheedState() };
    obs.rheed.summary = await page.textContent(`${PANEL} .jp-AtomscalePanel-rheedSummary`);
    await page.locator(`${PANEL} .jp-AtomscalePanel-rheedPlot`).scrollIntoViewIfNeeded();
    const box = await page.locator(`${PANEL} .jp-AtomscalePanel-rheedPlot`).boundingBox();
    await page.mouse.move(box.x + box.width * 0.3, box.y + box.height / 2);
    await page.mouse.wheel(0, -300);
    await page.mouse.wheel(0, -300);
    await page.waitForFunction(
      ([sel, hi]) => Number(document.querySelector(sel)?.dataset.hi) !== hi,
      [`${PANEL} .jp-AtomscalePanel-rheed`, obs.rheed.before.hi],
      { timeout: STEP_TIMEOUT },
    );
    obs.rheed.zoomed = await rheedState();
    await shot(page, 'rheed-zoomed.png');
    await page.dblclick(`${PANEL} .jp-AtomscalePanel-rheedPlot`);
    obs.rheed.reset = await rheedState();
    await listReloaded(page, () =>
      page.selectOption(`${PANEL} .jp-AtomscalePanel-facet[data-facet="instrument"]`, ''),
    );

    begin('material-system facet narrows the list');
    const MATERIAL = `${PANEL} .jp-AtomscalePanel-facet[data-facet="material_system"]`;
    await page.waitForSelector(MATERIAL);
    obs.materialOptions = await page.$$eval(`${MATERIAL} option`, (os) =>
      os.map((o) => ({ value: o.value, text: o.textContent })),
    );
    await listReloaded(page, () => page.selectOption(MATERIAL, MATERIAL_SYSTEM));
    obs.materialRuns = await runIds(page);
    obs.materialTotal = Number(await page.$eval(PANEL, (n) => n.dataset.total));
    obs.materialRequest = obs.runsRequests[obs.runsRequests.length - 1].url;
    await shot(page, 'panel-material.png');
    await listReloaded(page, () => page.selectOption(MATERIAL, ''));
    obs.materialClearedTotal = Number(await page.$eval(PANEL, (n) => n.dataset.total));

    begin('dark theme');
    const lightBg = await page.$eval(PANEL, (n) => getComputedStyle(n).backgroundColor);
    await page.evaluate(() =>
      window.jupyterapp.commands.execute('apputils:change-theme', { theme: 'JupyterLab Dark' }),
    );
    await page.waitForFunction(() => document.body.dataset.jpThemeLight === 'false', null, {
      timeout: STEP_TIMEOUT,
    });
    await page.waitForTimeout(500); // let the theme's stylesheet apply before the screenshot
    obs.theme = {
      lightBg,
      darkBg: await page.$eval(PANEL, (n) => getComputedStyle(n).backgroundColor),
      darkText: await page.$eval(
        `${PANEL} .jp-AtomscalePanel-run:not(.jp-mod-selected) .jp-AtomscalePanel-runId`,
        (n) => getComputedStyle(n).color,
      ),
      darkLayout1: await page.evaluate(() =>
        getComputedStyle(document.body).getPropertyValue('--jp-layout-color1').trim(),
      ),
    };
    await shot(page, 'panel-dark.png');
    // Leave the theme as it was for whoever opens this server next.
    await page.evaluate(() =>
      window.jupyterapp.commands.execute('apputils:change-theme', { theme: 'JupyterLab Light' }),
    );
    begin('done');
  } catch (err) {
    // What the page looked like when a step failed is the most useful clue.
    await currentPage?.screenshot({ path: join(ARTIFACTS, 'failure.png') }).catch(() => undefined);
    throw err;
  } finally {
    await context.close();
    rmSync(profile, { recursive: true, force: true });
  }
}

main()
  .then(() => {
    writeFileSync(OUT, JSON.stringify(obs, null, 2));
  })
  .catch((err) => {
    obs.failedStep = step;
    obs.error = String(err && err.stack ? err.stack : err);
    writeFileSync(OUT, JSON.stringify(obs, null, 2));
    console.error(`failed at step "${step}": ${err}`);
    process.exit(1);
  });
