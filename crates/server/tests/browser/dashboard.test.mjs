#!/usr/bin/env node
// Headless-Chromium check of the server's dashboard page.
//
//   node dashboard.test.mjs --url http://127.0.0.1:PORT/ --expect-blocks N --expect-logical BYTES
//        [--expect-block-id ID]... [--expect-volume NAME]... [--token T [--token-via-form]]
//        [--screenshot PATH]
//
// Opens the page in Debian's Chromium (/usr/bin/chromium, or $CHROMIUM_PATH), waits until the
// figures match, checks the block rows and the chart, watches one more poll, and fails on any
// console error or warning, uncaught page error, or request to another origin.
// Exit 0 with "dashboard ok: ..." on success, 1 with the reason otherwise.

import { chromium } from 'playwright-core';
import { existsSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';

const OVERALL_TIMEOUT_MS = 45_000;
const FIGURES_TIMEOUT_MS = 15_000;
const POLL_CYCLE_TIMEOUT_MS = 6_000;
const TOKEN_KEY = 'aetherflow.dashboard.token';
const STATS_PATH = '/api/memory/stats';
const CHROMIUM_ARGS = [
  '--headless',
  '--no-sandbox',
  '--disable-gpu',
  '--disable-quic',
  '--no-first-run',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
];

const USAGE = `usage: node dashboard.test.mjs --url URL --expect-blocks N --expect-logical BYTES
       [--expect-block-id ID]... [--expect-volume NAME]... [--token T] [--token-via-form]
       [--screenshot PATH]

  --url URL             the dashboard page, e.g. http://127.0.0.1:5000/
  --expect-blocks N     the total block count the page must show
  --expect-logical B    the exact logical byte count the page must show
  --expect-block-id ID  a block that must appear as a table row (repeatable)
  --expect-volume NAME  a volume that must appear as a row of the volume table (repeatable);
                        the page's volume count must then equal the number given
  --token T             bearer token; seeded into the tab's sessionStorage before the page loads
  --token-via-form      with --token: type it into the page's token form instead (tolerates the
                        console's report of the first, unauthenticated 401 poll)
  --screenshot PATH     save a full-page PNG after the checks (also written on failure)
environment: CHROMIUM_PATH overrides /usr/bin/chromium`;

class Failure extends Error {}

function fail(reason) {
  throw new Failure(reason);
}

function parseArgs(argv) {
  const opts = { blockIds: [], volumes: [], tokenViaForm: false };
  const needValue = (i, name) => {
    if (i + 1 >= argv.length || argv[i + 1].startsWith('--')) fail(`${name} needs a value\n${USAGE}`);
    return argv[i + 1];
  };
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i];
    let name = arg;
    let inline;
    const eq = arg.indexOf('=');
    if (arg.startsWith('--') && eq > 0) {
      name = arg.slice(0, eq);
      inline = arg.slice(eq + 1);
    }
    const value = () => {
      if (inline !== undefined) return inline;
      const v = needValue(i, name);
      i += 1;
      return v;
    };
    switch (name) {
      case '--url': opts.url = value(); break;
      case '--expect-blocks': opts.blocks = value(); break;
      case '--expect-logical': opts.logical = value(); break;
      case '--expect-block-id': opts.blockIds.push(value()); break;
      case '--expect-volume': opts.volumes.push(value()); break;
      case '--token': opts.token = value(); break;
      case '--token-via-form': opts.tokenViaForm = true; break;
      case '--screenshot': opts.screenshot = value(); break;
      case '-h':
      case '--help':
        process.stdout.write(USAGE + '\n');
        process.exit(0);
        break;
      default: fail(`unknown argument: ${arg}\n${USAGE}`);
    }
  }
  if (!opts.url) fail(`--url is required\n${USAGE}`);
  if (opts.blocks === undefined) fail(`--expect-blocks is required\n${USAGE}`);
  if (opts.logical === undefined) fail(`--expect-logical is required\n${USAGE}`);
  if (!/^\d+$/.test(opts.blocks)) fail(`--expect-blocks must be a non-negative integer, got ${JSON.stringify(opts.blocks)}`);
  if (!/^\d+$/.test(opts.logical)) fail(`--expect-logical must be a non-negative integer, got ${JSON.stringify(opts.logical)}`);
  // Compare integers in canonical form ("007" -> "7").
  opts.blocks = BigInt(opts.blocks).toString();
  opts.logical = BigInt(opts.logical).toString();
  if (opts.tokenViaForm && !opts.token) fail('--token-via-form needs --token');
  try {
    opts.origin = new URL(opts.url).origin;
  } catch {
    fail(`--url is not a valid URL: ${opts.url}`);
  }
  if (!/^https?:/.test(opts.url)) fail(`--url must be http(s): ${opts.url}`);
  return opts;
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

async function textOf(page, testid) {
  const node = await page.$(`[data-testid="${testid}"]`);
  if (!node) return null;
  return ((await node.textContent()) ?? '').trim();
}

async function main(opts, state) {
  const executablePath = process.env.CHROMIUM_PATH || '/usr/bin/chromium';
  if (!existsSync(executablePath)) {
    fail(`no Chromium at ${executablePath} (install Debian's package: apt-get install -y chromium)`);
  }
  state.userDataDir = await mkdtemp(path.join(tmpdir(), 'aetherflow-dashboard-'));
  state.context = await chromium.launchPersistentContext(state.userDataDir, {
    executablePath,
    headless: true,
    args: CHROMIUM_ARGS,
    viewport: { width: 1280, height: 900 },
    timeout: 20_000,
  });
  const context = state.context;

  const problems = state.problems;
  let tolerate401 = false;
  const isStats = (url) => {
    try {
      const u = new URL(url);
      return u.origin === opts.origin && u.pathname.endsWith(STATS_PATH);
    } catch {
      return false;
    }
  };

  const sameDocument = (url) => {
    try {
      const u = new URL(url);
      const d = new URL(opts.url);
      return u.origin === d.origin && u.pathname === d.pathname;
    } catch {
      return false;
    }
  };

  context.on('request', (req) => {
    const url = req.url();
    if (url.startsWith('data:') || url.startsWith('blob:') || url === 'about:blank') return;
    let origin = null;
    try {
      origin = new URL(url).origin;
    } catch { /* recorded below */ }
    if (origin !== opts.origin) problems.push(`request to another origin: ${req.method()} ${url}`);
  });
  context.on('response', (res) => {
    if (isStats(res.url())) {
      state.statsResponses.push(res.status());
      if (res.status() === 200) state.okPolls += 1;
    }
  });

  if (opts.token && !opts.tokenViaForm) {
    await context.addInitScript(
      ({ origin, key, token }) => {
        try {
          if (window.location.origin === origin) window.sessionStorage.setItem(key, token);
        } catch { /* the page reports a missing token itself */ }
      },
      { origin: opts.origin, key: TOKEN_KEY, token: opts.token },
    );
  }

  const page = context.pages()[0] ?? (await context.newPage());
  state.page = page;
  page.on('console', (msg) => {
    const type = msg.type();
    if (type !== 'error' && type !== 'warning') return;
    const text = msg.text();
    const where = msg.location()?.url ?? '';
    if (/status of 401\b/.test(text)) {
      // With --token the server answers the page itself with 401 (a browser cannot send the header
      // on navigation) and the page then asks for the token; Chromium reports that 401 here.
      const isDocument = opts.token && sameDocument(where);
      if (isDocument || (tolerate401 && (isStats(where) || where === ''))) {
        state.tolerated.push(`${text} (${where})`);
        return;
      }
    }
    problems.push(`console ${type}: ${text}${where ? ` (${where})` : ''}`);
  });
  page.on('pageerror', (err) => problems.push(`uncaught page error: ${err.message}`));
  page.on('crash', () => problems.push('the page crashed'));

  tolerate401 = opts.tokenViaForm;
  let response;
  try {
    response = await page.goto(opts.url, { waitUntil: 'load', timeout: 15_000 });
  } catch (err) {
    fail(`cannot open ${opts.url}: ${String(err && err.message ? err.message : err).split('\n')[0]}`);
  }
  if (!response) fail(`no response for ${opts.url}`);
  if (response.status() === 401) {
    if (!opts.token) fail(`GET ${opts.url} answered HTTP 401: the server requires a token; pass --token`);
  } else if (!response.ok()) {
    fail(`GET ${opts.url} answered HTTP ${response.status()}`);
  }
  state.documentStatus = response.status();

  const deadline = Date.now() + FIGURES_TIMEOUT_MS;
  let tokenSubmitted = false;
  let seen = {};
  for (;;) {
    if (problems.length) fail(problems.join('\n  '));
    const formVisible = await page.isVisible('[data-testid="token-form"]');
    if (formVisible) {
      if (!opts.token) {
        fail(`the page asks for a token (status: ${JSON.stringify(await textOf(page, 'status'))}); pass --token`);
      }
      if (!opts.tokenViaForm || tokenSubmitted) {
        fail(`the token was not accepted (status: ${JSON.stringify(await textOf(page, 'status'))})`);
      }
      await page.fill('[data-testid="token-input"]', opts.token);
      await page.click('[data-testid="token-submit"]');
      tokenSubmitted = true;
      tolerate401 = false;
      continue;
    }
    seen = {
      blocks: await textOf(page, 'total-blocks'),
      logical: await textOf(page, 'logical-bytes'),
      status: await textOf(page, 'status'),
    };
    if (seen.blocks === opts.blocks && seen.logical === opts.logical && seen.status === 'live') break;
    if (Date.now() > deadline) {
      fail(
        `after ${FIGURES_TIMEOUT_MS / 1000}s the page shows total-blocks=${JSON.stringify(seen.blocks)} ` +
          `(want ${opts.blocks}), logical-bytes=${JSON.stringify(seen.logical)} (want ${opts.logical}), ` +
          `status=${JSON.stringify(seen.status)}`,
      );
    }
    await sleep(200);
  }
  tolerate401 = false;
  if (opts.tokenViaForm && !tokenSubmitted) fail('--token-via-form given, but the page never asked for a token');

  // Block rows.
  const rowIds = await page.$$eval('[data-testid="blocks-table"] [data-testid="block-row"]', (rows) =>
    rows.map((r) => r.getAttribute('data-block-id')),
  );
  const missing = opts.blockIds.filter((id) => !rowIds.includes(id));
  if (missing.length) {
    fail(`block rows missing for ${missing.join(', ')} (the table has ${rowIds.length} rows)`);
  }
  if (opts.blocks !== '0' && rowIds.length === 0) fail(`the page shows ${opts.blocks} blocks but the table has no rows`);
  if (opts.blocks === '0' && rowIds.length !== 0) fail(`the store is empty but the table has ${rowIds.length} rows`);

  // Volume rows: each expected one, and the count in the figures.
  if (opts.volumes.length) {
    const volumeDeadline = Date.now() + POLL_CYCLE_TIMEOUT_MS;
    let names = [];
    for (;;) {
      names = await page.$$eval('[data-testid="volumes-table"] [data-testid="volume-row"]', (rows) =>
        rows.map((r) => r.getAttribute('data-volume-name')),
      );
      if (opts.volumes.every((v) => names.includes(v))) break;
      if (Date.now() > volumeDeadline) {
        fail(`volume rows missing: want ${opts.volumes.join(', ')}, the table shows ${JSON.stringify(names)}`);
      }
      await sleep(200);
    }
    const count = await textOf(page, 'total-volumes');
    if (count !== String(opts.volumes.length)) {
      fail(`the page counts ${JSON.stringify(count)} volumes, want ${opts.volumes.length}`);
    }
  }

  // Chart: exists and has drawn content.
  const chart = await page.$eval('[data-testid="chart"]', (node) => {
    const tag = node.tagName.toLowerCase();
    const box = node.getBoundingClientRect();
    const out = { tag, width: box.width, height: box.height, drawn: 0, samples: Number(node.getAttribute('data-samples') || 0) };
    if (tag === 'canvas') {
      const ctx = node.getContext('2d');
      const data = ctx ? ctx.getImageData(0, 0, node.width, node.height).data : [];
      for (let i = 3; i < data.length; i += 4) if (data[i] !== 0) out.drawn += 1;
    } else if (tag === 'svg') {
      for (const shape of node.querySelectorAll('path, polyline, line, circle, rect')) {
        const b = shape.getBBox();
        if (b.width > 0 || b.height > 0) out.drawn += 1;
      }
      out.series = node.querySelectorAll('.series').length;
    }
    return out;
  }).catch(() => null);
  if (!chart) fail('no [data-testid="chart"] element');
  if (chart.tag !== 'svg' && chart.tag !== 'canvas') fail(`the chart is a <${chart.tag}>, not an svg or canvas`);
  if (!(chart.width > 0 && chart.height > 0)) fail(`the chart has no size (${chart.width}x${chart.height})`);
  if (chart.drawn === 0) fail('the chart has drawn nothing');
  if (chart.tag === 'svg' && !(chart.series > 0 && chart.samples > 0)) {
    fail(`the chart shows no data series (samples=${chart.samples}, series=${chart.series})`);
  }

  // One more poll cycle, then the page must still be live and quiet.
  const before = state.okPolls;
  const cycleDeadline = Date.now() + POLL_CYCLE_TIMEOUT_MS;
  while (state.okPolls === before) {
    if (Date.now() > cycleDeadline) fail(`no further successful poll of ${STATS_PATH} within ${POLL_CYCLE_TIMEOUT_MS / 1000}s`);
    await sleep(100);
  }
  await sleep(400);
  const status = await textOf(page, 'status');
  if (status !== 'live') fail(`status after another poll is ${JSON.stringify(status)}, not "live"`);
  const after = { blocks: await textOf(page, 'total-blocks'), logical: await textOf(page, 'logical-bytes') };
  if (after.blocks !== opts.blocks || after.logical !== opts.logical) {
    fail(`after another poll the page shows total-blocks=${after.blocks}, logical-bytes=${after.logical}`);
  }
  const backend = await textOf(page, 'backend');
  const ratio = await textOf(page, 'ratio-overall');
  const chartAfter = await page.$eval('[data-testid="chart"]', (n) => Number(n.getAttribute('data-samples') || 0)).catch(() => 0);

  if (problems.length) fail(problems.join('\n  '));

  if (opts.screenshot) {
    await page.screenshot({ path: opts.screenshot, fullPage: true });
    state.screenshotTaken = true;
  }
  if (problems.length) fail(problems.join('\n  '));

  return (
    `dashboard ok: ${opts.blocks} blocks, logical ${opts.logical} bytes, backend ${backend || '?'}, ` +
    `ratio ${ratio || '?'}, ${opts.blockIds.length} block id(s) found among ${rowIds.length} rows, ` +
    `${opts.volumes.length} volume(s) listed, ` +
    `chart ${chart.tag} with ${chartAfter} samples, ${state.okPolls} polls, ` +
    `auth ${opts.token ? (opts.tokenViaForm ? 'token via form' : 'token via sessionStorage') : 'none'}` +
    (opts.token ? ` (page HTTP ${state.documentStatus}, ${state.tolerated.length} expected 401 report(s) ignored)` : '') +
    (opts.screenshot ? `, screenshot ${opts.screenshot}` : '')
  );
}

async function cleanup(state, failed) {
  if (failed && state.page && state.options?.screenshot && !state.screenshotTaken) {
    await state.page.screenshot({ path: state.options.screenshot, fullPage: true, timeout: 3_000 }).catch(() => {});
  }
  if (state.context) await state.context.close().catch(() => {});
  if (state.userDataDir) await rm(state.userDataDir, { recursive: true, force: true }).catch(() => {});
}

async function run() {
  const state = { problems: [], statsResponses: [], okPolls: 0, tolerated: [] };
  let options;
  try {
    options = parseArgs(process.argv.slice(2));
  } catch (err) {
    process.stderr.write(`dashboard FAILED: ${err.message}\n`);
    return 1;
  }
  state.options = options;

  let timer;
  const overall = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Failure(`overall timeout of ${OVERALL_TIMEOUT_MS / 1000}s reached`)), OVERALL_TIMEOUT_MS);
  });
  try {
    const summary = await Promise.race([main(options, state), overall]);
    await cleanup(state, false);
    process.stdout.write(summary + '\n');
    return 0;
  } catch (err) {
    const reason = err instanceof Failure ? err.message : `unexpected error: ${err && err.stack ? err.stack : err}`;
    process.stderr.write(`dashboard FAILED: ${reason}\n`);
    if (state.problems.length && !reason.includes(state.problems[0])) {
      process.stderr.write(`  also seen:\n  ${state.problems.join('\n  ')}\n`);
    }
    await Promise.race([cleanup(state, true), sleep(10_000)]);
    return 1;
  } finally {
    clearTimeout(timer);
  }
}

process.exitCode = await run();
// Nothing of Playwright's may keep the process alive once the browser is closed.
setTimeout(() => process.exit(process.exitCode), 200);
