// The demo page's UI in Chromium against an in-page stand-in for the node (a fake
// WebSocket installed before the page's scripts run). Needs no herald binary, so it
// checks the page itself: rendering, escaping of user text, notices, the live panel.
import { describe, it, before, after, beforeEach } from 'node:test';
import assert from 'node:assert/strict';
import http from 'node:http';
import { readFile } from 'node:fs/promises';
import path from 'node:path';
import { STATIC_DIR, haveChromium, launchBrowser, newPage, shownTexts, waitForText } from './helpers.mjs';

const MIME = { '.html': 'text/html; charset=utf-8', '.js': 'text/javascript', '.mjs': 'text/javascript', '.css': 'text/css' };

function serveStatic() {
  const server = http.createServer(async (req, res) => {
    const url = new URL(req.url, 'http://x');
    const rel = url.pathname === '/' ? 'index.html' : url.pathname.slice(1);
    const file = path.join(STATIC_DIR, path.normalize(rel));
    if (!file.startsWith(STATIC_DIR)) { res.writeHead(403).end(); return; }
    try {
      const body = await readFile(file);
      res.writeHead(200, { 'content-type': MIME[path.extname(file)] || 'application/octet-stream' }).end(body);
    } catch {
      res.writeHead(404).end('not found');
    }
  });
  return new Promise((resolve) => server.listen(0, '127.0.0.1', () => resolve(server)));
}

// Runs in the page before its scripts: a WebSocket that behaves like a developer node for
// chat:lobby (subscribe ok, publish echoes back), with hooks for the test. While
// window.__fake.down is set, every new connection fails (1006) before a welcome, as when
// the node is not running.
function installFakeNode() {
  const sockets = [];
  window.__fake = { sockets, frames: [], refuse: null, down: false };
  class FakeNodeSocket {
    constructor(url) {
      this.url = url;
      this.readyState = 0;
      sockets.push(this);
      setTimeout(() => {
        if (window.__fake.down) { this.serverClose(1006, ''); return; }
        this.readyState = 1;
        if (this.onopen) this.onopen({});
        this.push({ type: 'welcome', session: 's-stub-' + sockets.length, node: 'stub-node', ping_interval_ms: 25000 });
      }, 10);
    }
    push(frame) { if (this.readyState === 1 && this.onmessage) this.onmessage({ data: JSON.stringify(frame) }); }
    send(text) {
      const f = JSON.parse(text);
      window.__fake.frames.push(f);
      if (f.op === 'publish' && window.__fake.refuse) {
        this.push({ type: 'reply', id: f.id, error: { code: window.__fake.refuse, message: 'publish not allowed in namespace \'chat\'' } });
        return;
      }
      this.push({ type: 'reply', id: f.id, result: {} });
      if (f.op === 'publish') this.push({ type: 'message', channel: f.channel, data: f.data });
    }
    close(code, reason) { this.serverClose(code || 1005, reason || ''); }
    serverClose(code, reason) {
      if (this.readyState === 3) return;
      this.readyState = 3;
      if (this.onclose) this.onclose({ code, reason });
    }
  }
  window.WebSocket = FakeNodeSocket;
}

describe('demo page UI (stub node)', { skip: !haveChromium() && 'no Chromium at /usr/bin/chromium' }, () => {
  let server;
  let browser;
  let base;
  const errors = [];

  before(async () => {
    server = await serveStatic();
    base = `http://127.0.0.1:${server.address().port}`;
    browser = await launchBrowser();
  });

  beforeEach(() => { errors.length = 0; });

  after(async () => {
    if (browser) await browser.close();
    if (server) await new Promise((r) => server.close(r));
  });

  async function openPage(label) {
    const page = await newPage(browser, errors, label);
    await page.addInitScript(installFakeNode);
    // The fake is a WebSocket only: no falling back to SSE / http-stream against this
    // static server when the fake node is "down" (fallback.test.mjs covers that).
    await page.goto(base + '/?transports=websocket');
    await page.waitForFunction(() => window.heraldDemo && window.heraldDemo.subscription.active);
    return page;
  }

  it('shows connection state, node and session from the welcome frame', async () => {
    const page = await openPage('state');
    assert.equal(await page.textContent('#state'), 'connected');
    assert.equal(await page.textContent('#node'), 'stub-node');
    assert.match(await page.textContent('#session'), /^s-stub-/);
    const sub = await page.evaluate(() => window.__fake.frames.find((f) => f.op === 'subscribe'));
    assert.equal(sub.channel, 'chat:lobby');
    await page.context().close();
    assert.deepEqual(errors, []);
  });

  it('sends {user, text} with the publish op and shows the message', async () => {
    const page = await openPage('send');
    await page.fill('#name', 'ada');
    await page.fill('#text', 'hello lobby');
    await page.press('#text', 'Enter');
    await waitForText(page, 'hello lobby');
    const pub = await page.evaluate(() => window.__fake.frames.find((f) => f.op === 'publish'));
    assert.deepEqual({ channel: pub.channel, data: pub.data }, { channel: 'chat:lobby', data: { user: 'ada', text: 'hello lobby' } });
    assert.equal(await page.textContent('#messages li .user'), 'ada');
    assert.equal(await page.inputValue('#text'), '', 'input cleared after a successful publish');
    await page.context().close();
    assert.deepEqual(errors, []);
  });

  it('shows hostile user text as text, never as HTML', async () => {
    const page = await openPage('escape');
    const evil = '<img src=x onerror="window.__pwned=1"><b>bold</b>';
    await page.evaluate((text) => {
      window.__fake.sockets[0].push({ type: 'message', channel: 'chat:lobby', data: { user: '<i>mallory</i>', text } });
    }, evil);
    await waitForText(page, evil);
    assert.equal(await page.$$eval('#messages img, #messages b, #messages i', (els) => els.length), 0);
    assert.equal(await page.textContent('#messages li .user'), '<i>mallory</i>');
    await page.waitForTimeout(100);
    assert.equal(await page.evaluate(() => window.__pwned), undefined);
    await page.context().close();
    assert.deepEqual(errors, []);
  });

  it('shows a clear notice when the node refuses the publish', async () => {
    const page = await openPage('refused');
    await page.evaluate(() => { window.__fake.refuse = 'forbidden'; });
    await page.fill('#text', 'will be refused');
    await page.click('#send');
    await page.waitForSelector('#notice:not([hidden])');
    const notice = await page.textContent('#notice-text');
    assert.match(notice, /refused/);
    assert.match(notice, /publish = "anyone"/);
    assert.equal(await page.inputValue('#text'), 'will be refused', 'the text is kept for another try');
    assert.deepEqual(await shownTexts(page), []);
    await page.context().close();
    assert.deepEqual(errors, []);
  });

  it('says "not connected" at once when sending while the connection is closed', async () => {
    const page = await openPage('closed');
    await page.evaluate(() => window.__fake.sockets[0].serverClose(1008, 'policy'));
    await page.waitForFunction(() => document.getElementById('state').textContent === 'closed');
    await page.fill('#text', 'lost?');
    await page.click('#send');
    await page.waitForSelector('#notice:not([hidden])');
    assert.match(await page.textContent('#notice-text'), /Not connected/);
    assert.equal(await page.evaluate(() => window.__fake.sockets.length), 1, 'no reconnect after 1008');
    await page.context().close();
    assert.deepEqual(errors, []);
  });

  it('herald.mjs works as an ES module in the browser and gives the same class as the global', async () => {
    const page = await openPage('esm');
    const r = await page.evaluate(async () => {
      const m = await import('/herald.mjs');
      return {
        same: m.Herald === window.Herald && m.default === window.Herald,
        fns: [typeof m.backoffDelay, typeof m.closeAction, typeof m.HeraldError],
        action: m.closeAction(4008, false),
      };
    });
    assert.deepEqual(r, { same: true, fns: ['function', 'function', 'function'], action: 'reconnect' });
    await page.context().close();
    assert.deepEqual(errors, []);
  });

  it('reconnects after an abnormal close and counts messages per second', async () => {
    const page = await openPage('rate');
    await page.evaluate(() => window.__fake.sockets[0].serverClose(1006, ''));
    await page.waitForFunction(() => window.__fake.sockets.length === 2 && window.heraldDemo.subscription.active, null, { timeout: 10000 });
    assert.equal(await page.textContent('#reconnects'), '1');
    assert.equal(await page.textContent('#failed-attempts'), '0');
    await page.evaluate(() => {
      for (let i = 0; i < 7; i++) window.__fake.sockets[1].push({ type: 'message', channel: 'chat:lobby', data: { user: 'bot', text: 'm' + i } });
    });
    await page.waitForFunction(() => Number(document.getElementById('rate').textContent) === 7);
    assert.equal(await page.textContent('#total'), '7');
    // The window slides: a second later the rate is back to 0.
    await page.waitForFunction(() => document.getElementById('rate').textContent === '0', null, { timeout: 3000 });
    await page.context().close();
    assert.deepEqual(errors, []);
  });

  // Issue 27: "Reconnects" counted every failed attempt, so one node restart showed 5-6.
  it('counts a node outage with several failed attempts as one reconnect, and the attempts apart', async () => {
    const page = await openPage('outage');
    assert.equal(await page.textContent('#reconnects'), '0');
    await page.evaluate(() => {
      window.__fake.down = true;
      window.__fake.sockets[0].serverClose(1001, 'draining');
    });
    // The page retries (backoff 250 ms doubling, full jitter): let at least four attempts fail.
    // Six sockets: the first, four that failed, and one that may still be opening when
    // the node comes back (it may then be the one that succeeds).
    await page.waitForFunction(() => window.__fake.sockets.length >= 6, null, { timeout: 15000 });
    assert.equal(await page.textContent('#reconnects'), '0', 'no reconnect while every attempt fails');
    await page.evaluate(() => { window.__fake.down = false; });
    await page.waitForFunction(() => window.heraldDemo.client.state === 'connected' && window.heraldDemo.subscription.active, null, { timeout: 15000 });
    const failed = await page.evaluate(() => window.__fake.sockets.length - 2); // all but the first and the last
    assert.ok(failed >= 4);
    assert.equal(await page.textContent('#reconnects'), '1');
    assert.equal(await page.textContent('#failed-attempts'), String(failed));
    assert.equal(await page.textContent('#state'), 'connected');
    await page.context().close();
    assert.deepEqual(errors, []);
  });
});
