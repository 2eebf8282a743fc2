// Shared helpers of the browser tests: Chromium, redis-server and herald child processes,
// each started on a free port and killed at the end, even when a test fails.
import { spawn } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, writeFileSync, createWriteStream } from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';

export const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..');
export const ARTIFACTS = path.join(ROOT, 'test-artifacts');
export const HERALD_BIN = process.env.HERALD_BIN || path.join(ROOT, 'target', 'release', 'herald');
export const CHROMIUM = process.env.CHROMIUM_PATH || '/usr/bin/chromium';
export const STATIC_DIR = path.join(ROOT, 'static');

mkdirSync(ARTIFACTS, { recursive: true });

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

// ---- child processes ---------------------------------------------------------------

const children = new Set();

function killAllSync() {
  for (const child of children) {
    if (child.exitCode === null && child.signalCode === null) {
      try { child.kill('SIGKILL'); } catch { /* gone */ }
    }
  }
}
// Last line of defence: whatever happens to the test process, no child outlives it.
process.on('exit', killAllSync);
for (const sig of ['SIGINT', 'SIGTERM']) {
  process.once(sig, () => { killAllSync(); process.exit(130); });
}

/** SIGKILL every child still running and wait for them. */
export async function killAll() {
  const waits = [];
  for (const child of children) {
    if (child.exitCode === null && child.signalCode === null) {
      waits.push(new Promise((r) => child.once('exit', r)));
      try { child.kill('SIGKILL'); } catch { /* gone */ }
    }
  }
  await Promise.race([Promise.all(waits), sleep(5000)]);
}

function startChild(name, cmd, args, opts = {}) {
  const logPath = path.join(ARTIFACTS, `${name}.log`);
  const log = createWriteStream(logPath, { flags: 'a' });
  log.write(`\n==== ${new Date().toISOString()} ${cmd} ${args.join(' ')}\n`);
  const child = spawn(cmd, args, { cwd: ROOT, stdio: ['ignore', 'pipe', 'pipe'], ...opts });
  children.add(child);
  let tail = '';
  const keep = (chunk) => {
    log.write(chunk);
    tail = (tail + chunk.toString()).slice(-4000);
  };
  child.stdout.on('data', keep);
  child.stderr.on('data', keep);
  // Children must not keep the test process alive: if a test fails without cleaning up,
  // the process still ends, and its 'exit' handler SIGKILLs them.
  child.unref();
  child.stdout.unref();
  child.stderr.unref();
  child.once('exit', () => { children.delete(child); log.end(); });
  child.logTail = () => tail;
  child.logPath = logPath;
  return child;
}

/** Wait for a child to exit; SIGKILL it after timeoutMs. Resolves with the exit code/signal. */
export function waitExit(child, timeoutMs = 15000) {
  if (child.exitCode !== null || child.signalCode !== null) {
    return Promise.resolve({ code: child.exitCode, signal: child.signalCode });
  }
  return new Promise((resolve) => {
    const timer = setTimeout(() => { try { child.kill('SIGKILL'); } catch { /* gone */ } }, timeoutMs);
    child.once('exit', (code, signal) => { clearTimeout(timer); resolve({ code, signal }); });
  });
}

/** SIGTERM (graceful) and wait. */
export async function stop(child, timeoutMs = 15000) {
  if (child.exitCode === null && child.signalCode === null) child.kill('SIGTERM');
  return waitExit(child, timeoutMs);
}

export function freePort() {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.unref();
    srv.on('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const { port } = srv.address();
      srv.close(() => resolve(port));
    });
  });
}

function redisPing(port) {
  return new Promise((resolve) => {
    const sock = net.connect(port, '127.0.0.1');
    let buf = '';
    const done = (ok) => { sock.destroy(); resolve(ok); };
    sock.setTimeout(500, () => done(false));
    sock.on('error', () => done(false));
    sock.on('connect', () => sock.write('PING\r\n'));
    sock.on('data', (d) => { buf += d; if (buf.includes('\r\n')) done(buf.startsWith('+PONG')); });
  });
}

const MACHINE_REDIS = 6379; // never used by the tests: they start their own

/** A throwaway redis-server on a free port (never the machine's), no persistence. */
export async function startRedis() {
  const port = await freePort();
  // The machine's own Redis listens on MACHINE_REDIS; a free port never is it, but say so.
  if (port === MACHINE_REDIS) return startRedis();
  const child = startChild(`redis-${port}`, 'redis-server', [
    '--port', String(port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no',
  ]);
  const t0 = Date.now();
  while (!(await redisPing(port))) {
    if (child.exitCode !== null) throw new Error(`redis-server exited: ${child.logTail()}`);
    if (Date.now() - t0 > 10000) throw new Error(`redis-server not answering on ${port}`);
    await sleep(50);
  }
  return { port, child, url: `redis://127.0.0.1:${port}` };
}

/** Write a herald TOML config to a temporary file; returns its path. */
export function writeConfig(toml) {
  const dir = mkdtempSync(path.join(os.tmpdir(), 'herald-browser-'));
  const file = path.join(dir, 'herald.toml');
  writeFileSync(file, toml);
  return file;
}

/**
 * Start a herald node and wait until GET /readyz answers 200.
 * Returns { port, child, nodeId, base, restart() }.
 */
export async function startHerald({ nodeId, redisUrl, port, config, drainPeriod = '500ms' }) {
  const p = port || (await freePort());
  const args = [
    '--listen', `127.0.0.1:${p}`,
    '--redis', redisUrl,
    '--node-id', nodeId,
    '--drain-period', drainPeriod,
    '--log-format', 'text',
    '--static-dir', STATIC_DIR,
  ];
  if (config) args.push('--config', config);
  const child = startChild(`herald-${nodeId}`, HERALD_BIN, args, {
    env: { ...process.env, RUST_LOG: process.env.RUST_LOG || 'info' },
  });
  const base = `http://127.0.0.1:${p}`;
  const t0 = Date.now();
  for (;;) {
    if (child.exitCode !== null || child.signalCode !== null) {
      throw new Error(`herald ${nodeId} exited (${child.exitCode ?? child.signalCode}) before ready:\n${child.logTail()}`);
    }
    try {
      const res = await fetch(`${base}/readyz`, { signal: AbortSignal.timeout(1000) });
      if (res.status === 200) break;
    } catch { /* not listening yet */ }
    if (Date.now() - t0 > 30000) throw new Error(`herald ${nodeId} not ready on ${base}:\n${child.logTail()}`);
    await sleep(100);
  }
  const node = { port: p, child, nodeId, base, redisUrl, config, drainPeriod };
  node.restart = () => startHerald({ nodeId, redisUrl, port: p, config, drainPeriod });
  return node;
}

/** POST /api/publish; returns { status, body }. */
export async function httpPublish(node, body) {
  const res = await fetch(`${node.base}/api/publish`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify(body),
  });
  const text = await res.text();
  let json = null;
  try { json = JSON.parse(text); } catch { /* not JSON */ }
  return { status: res.status, body: json, text };
}

// ---- the browser ---------------------------------------------------------------------

export const CHROMIUM_ARGS = [
  '--no-sandbox', '--disable-gpu', '--disable-background-networking', '--disable-component-update',
  '--disable-sync', '--no-first-run', '--disable-quic',
];

export function haveChromium() {
  return existsSync(CHROMIUM);
}

export function launchBrowser() {
  return chromium.launch({ executablePath: CHROMIUM, headless: true, args: CHROMIUM_ARGS });
}

// Chromium itself logs a console error for every WebSocket that cannot connect (the node
// is down or draining while the page retries). Those are the expected cost of a restart,
// not page errors; everything else logged as an error fails the test.
const EXPECTED_CONSOLE = [/^WebSocket connection to '.*' failed/];
// The same goes for the HTTP streaming transports (PROTOCOL §2.5): while a node is down, or
// a proxy answers 502 for it, Chromium logs each failed GET /sse, POST /stream or POST
// /emulation (a 404/410 from /emulation is a session that is gone: the client reconnects).
const TRANSPORT_PATH = /^\/(sse|stream|emulation)$/;

function expectedConsole(msg) {
  const text = msg.text();
  if (EXPECTED_CONSOLE.some((re) => re.test(text))) return true;
  if (!/^Failed to load resource: /.test(text)) return false;
  try {
    return TRANSPORT_PATH.test(new URL(msg.location().url).pathname);
  } catch {
    return false;
  }
}

/** Record page errors and console errors of a page into `errors`. */
export function watchErrors(page, errors, label) {
  page.on('pageerror', (err) => errors.push(`${label}: pageerror: ${err.message}`));
  page.on('console', (msg) => {
    if (msg.type() !== 'error') return;
    if (expectedConsole(msg)) return;
    errors.push(`${label}: console.error: ${msg.text()} (${msg.location().url || 'no url'})`);
  });
  page.on('crash', () => errors.push(`${label}: page crashed`));
}

/** Keep the last WebSocket events of a page (page.wsLog), for failure reports. */
function recordWebSockets(page) {
  const log = [];
  page.wsLog = log;
  const add = (line) => { log.push(`${new Date().toISOString().slice(11, 23)} ${line}`); if (log.length > 200) log.shift(); };
  page.on('websocket', (ws) => {
    add(`open ${ws.url()}`);
    ws.on('framesent', (f) => add(`-> ${String(f.payload).slice(0, 300)}`));
    ws.on('framereceived', (f) => add(`<- ${String(f.payload).slice(0, 300)}`));
    ws.on('socketerror', (e) => add(`socketerror ${e}`));
    ws.on('close', () => add('close'));
  });
}

/**
 * A new page (own context: own storage) with its errors and WebSocket traffic recorded.
 * `viewport` defaults to 1100×760.
 */
export async function newPage(browser, errors, label, { viewport = { width: 1100, height: 760 } } = {}) {
  const context = await browser.newContext({ viewport });
  const page = await context.newPage();
  watchErrors(page, errors, label);
  recordWebSockets(page);
  return page;
}

/** Wait until the demo is connected and its chat:lobby subscription confirmed. */
export async function waitDemoReady(page, timeoutMs = 15000) {
  try {
    await page.waitForFunction(
      () => window.heraldDemo && window.heraldDemo.client.state === 'connected' && window.heraldDemo.subscription.active,
      null, { timeout: timeoutMs },
    );
  } catch (err) {
    let state = null;
    try {
      state = await page.evaluate(() => ({
        state: window.heraldDemo && window.heraldDemo.client.state,
        active: window.heraldDemo && window.heraldDemo.subscription.active,
        closes: window.__closes,
        shown: document.getElementById('state').textContent,
      }));
    } catch { /* page gone */ }
    err.message += `\npage: ${JSON.stringify(state)}\nWebSocket log:\n${(page.wsLog || []).slice(-40).join('\n')}`;
    throw err;
  }
}

/** The texts of the chat lines shown, in order. */
export function shownTexts(page) {
  return page.$$eval('#messages li:not(.system) .text', (els) => els.map((e) => e.textContent));
}

/** Wait until a chat line with exactly this text is shown. */
export async function waitForText(page, text, timeoutMs = 10000) {
  await page.waitForFunction(
    (t) => Array.from(document.querySelectorAll('#messages li:not(.system) .text')).some((e) => e.textContent === t),
    text, { timeout: timeoutMs },
  );
}

/** Type a message in the demo and send it; resolves once the publish succeeded (input cleared). */
export async function sendViaUi(page, name, text) {
  await page.fill('#name', name);
  await page.fill('#text', text);
  await page.click('#send');
  await page.waitForFunction(() => document.getElementById('text').value === '' && !document.getElementById('send').disabled, null, { timeout: 10000 });
}

/**
 * What of the page sticks out of the viewport sideways: the page's scroll width, and every
 * rendered element whose box reaches past the left or right edge of the viewport.
 */
export function horizontalOverflow(page) {
  return page.evaluate(() => {
    const vw = window.innerWidth;
    const cw = document.documentElement.clientWidth; // without a vertical scrollbar, if any
    const name = (el) => el.tagName.toLowerCase() + (el.id ? '#' + el.id : '') +
      (el.classList.length ? '.' + Array.from(el.classList).join('.') : '') +
      (el.dataset.seat ? `[data-seat=${el.dataset.seat}]` : '');
    const outside = [];
    for (const el of document.querySelectorAll('body, body *')) {
      const r = el.getBoundingClientRect();
      if (r.width === 0 && r.height === 0) continue; // not rendered
      if (r.left < -0.5 || r.right > cw + 0.5) outside.push(`${name(el)} ${r.left.toFixed(1)}…${r.right.toFixed(1)}`);
    }
    return { innerWidth: vw, clientWidth: cw, scrollWidth: document.documentElement.scrollWidth, outside };
  });
}
