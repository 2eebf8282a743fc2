// Where WebSocket cannot pass (issue 21, PROTOCOL §2.5), end to end in Chromium: two herald
// nodes on one throwaway redis-server behind a proxy written here, which refuses every
// WebSocket upgrade and sends each HTTP request to the next node in turn (no stickiness:
// the page, its GET /sse, every POST /emulation alternate). The demo page, served through
// the proxy, must fall back by itself, chat, get what is published on either node, and
// survive the SIGKILL of the node that holds its session with every offset once, in order.
import { describe, it, before, after, beforeEach } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import http from 'node:http';
import path from 'node:path';
import {
  ARTIFACTS, HERALD_BIN, haveChromium, launchBrowser, newPage, startRedis, startHerald, killAll,
  waitExit, httpPublish, writeConfig, waitDemoReady, waitForText, shownTexts, sendViaUi, horizontalOverflow,
} from './helpers.mjs';

const skipReason = !existsSync(HERALD_BIN)
  ? `${HERALD_BIN} not built (cargo build --release)`
  : !haveChromium() ? 'no Chromium at /usr/bin/chromium' : false;

const DESKTOP = { width: 1280, height: 800 };
const PHONE = { width: 390, height: 844 };
const HOP_BY_HOP = ['connection', 'keep-alive', 'transfer-encoding', 'upgrade', 'proxy-connection'];

/**
 * A reverse proxy on a free port in front of `ports` (read at each request, so a node
 * restarted on its port is found again): strict round robin per request, responses piped
 * as they come (an SSE or NDJSON body is never buffered), WebSocket upgrades refused with
 * 403. A node that is down gets its turn too and is answered 502, as a plain balancer would.
 */
function startProxy(ports) {
  const stats = { requests: [], upgradesRefused: 0 };
  let next = 0;
  const server = http.createServer((req, res) => {
    const i = next++ % ports.length;
    stats.requests.push({ method: req.method, path: req.url.split('?')[0], node: i });
    const headers = { ...req.headers };
    for (const h of HOP_BY_HOP) delete headers[h];
    // A new connection per request (no pooling): the node a request reaches is the one picked here.
    const up = http.request({ host: '127.0.0.1', port: ports[i], method: req.method, path: req.url, headers, agent: false });
    up.on('response', (upRes) => {
      const out = { ...upRes.headers };
      for (const h of HOP_BY_HOP) delete out[h];
      res.writeHead(upRes.statusCode, out);
      res.flushHeaders();
      upRes.pipe(res);
      // The node died mid-response: the client must see a broken stream, not a clean end.
      upRes.on('close', () => { if (!upRes.complete) res.destroy(); });
    });
    up.on('error', (err) => {
      if (!res.headersSent) res.writeHead(502, { 'content-type': 'text/plain' }).end(`bad gateway: ${err.code}`);
      else res.destroy();
    });
    res.on('close', () => { if (!res.writableFinished) up.destroy(); });
    req.pipe(up);
  });
  server.on('upgrade', (req, socket) => {
    stats.upgradesRefused++;
    socket.end('HTTP/1.1 403 Forbidden\r\ncontent-length: 0\r\nconnection: close\r\n\r\n');
  });
  server.on('connection', (s) => s.unref());
  return new Promise((resolve) => server.listen(0, '127.0.0.1', () => {
    resolve({ server, stats, base: `http://127.0.0.1:${server.address().port}` });
  }));
}

/** Record every close the page's client sees. */
async function recordCloses(page) {
  await page.evaluate(() => {
    window.__closes = [];
    window.heraldDemo.client.on('disconnected', (e) => window.__closes.push({ code: e.code, reason: e.reason, willReconnect: e.willReconnect }));
  });
}

describe('demo page behind a proxy that blocks WebSocket, two nodes, round robin', { skip: skipReason }, () => {
  let redis;
  let nodes; // by node id
  let proxy;
  let browser;
  const errors = [];

  before(async () => {
    redis = await startRedis();
    const config = writeConfig([
      '[namespaces.chat]', 'history_size = 1000', 'publish = "anyone"', 'presence = true', 'join_leave = true', '',
    ].join('\n'));
    const [a, b] = await Promise.all([
      startHerald({ nodeId: 'node-a', redisUrl: redis.url, config }),
      startHerald({ nodeId: 'node-b', redisUrl: redis.url, config }),
    ]);
    nodes = { 'node-a': a, 'node-b': b };
    proxy = await startProxy([a.port, b.port]);
    browser = await launchBrowser();
  });

  after(async () => {
    try {
      if (browser) await browser.close();
      if (proxy) proxy.server.close();
    } finally {
      await killAll();
    }
  });

  beforeEach(() => { errors.length = 0; });

  async function openDemo(label, viewport, query = '') {
    const page = await newPage(browser, errors, label, { viewport });
    await page.goto(`${proxy.base}/${query}`);
    await waitDemoReady(page, 20000);
    await recordCloses(page);
    return page;
  }

  const transportOf = (page) => page.evaluate(() => ({
    transport: window.heraldDemo.client.transport,
    welcome: window.heraldDemo.client.welcome.transport,
    label: document.getElementById('transport').textContent,
    node: window.heraldDemo.client.node,
  }));

  async function publishOn(node, text) {
    const res = await httpPublish(node, { channel: 'chat:lobby', data: { user: 'backend', text } });
    assert.equal(res.status, 200, res.text);
    assert.equal(typeof res.body.offset, 'number', `durable publish answers an offset: ${res.text}`);
    return res.body.offset;
  }

  /** Shown offsets are consecutive and the texts are exactly `expected`, in order. */
  async function assertExactlyOnce(page, expected) {
    await page.waitForTimeout(300); // give a duplicate time to show up
    assert.deepEqual(await shownTexts(page), expected, 'each message exactly once, in order');
    const offsets = await page.$$eval('#messages li[data-offset]', (els) => els.map((e) => Number(e.dataset.offset)));
    assert.equal(offsets.length, expected.length);
    for (let i = 1; i < offsets.length; i++) assert.equal(offsets[i], offsets[i - 1] + 1, `offsets ${offsets}`);
  }

  /** SIGKILL the node holding the page's session; returns it and the other one. */
  async function killHolder(page) {
    const { node } = await transportOf(page);
    const holder = nodes[node];
    const other = Object.values(nodes).find((n) => n !== holder);
    holder.child.kill('SIGKILL');
    await waitExit(holder.child);
    await page.waitForFunction(() => window.__closes.length > 0, null, { timeout: 10000 });
    return { holder, other };
  }

  for (const viewport of [DESKTOP, PHONE]) {
    it(`${viewport.width}×${viewport.height}: falls back to SSE by itself; chats; gets what both nodes publish`, async () => {
      const refusedBefore = proxy.stats.upgradesRefused;
      const emulationBefore = proxy.stats.requests.filter((r) => r.path === '/emulation').length;
      const page = await openDemo(`sse-${viewport.width}`, viewport);
      const t = await transportOf(page);
      assert.deepEqual([t.transport, t.welcome, t.label], ['sse', 'sse', 'sse'], 'herald.transport, the welcome frame and the label');
      assert.ok(proxy.stats.upgradesRefused - refusedBefore >= 2, 'the WebSocket was tried (twice) first');
      assert.equal(await page.textContent('#failed-attempts'), '2', 'the two refused upgrades');
      assert.equal(await page.textContent('#state'), 'connected');

      // Through the page: publish goes as POST /emulation, to whichever node is next.
      await sendViaUi(page, 'ada', `hello over sse at ${viewport.width}`);
      await waitForText(page, `hello over sse at ${viewport.width}`);
      // Published on each node directly.
      await publishOn(nodes['node-a'], `from node-a at ${viewport.width}`);
      await publishOn(nodes['node-b'], `from node-b at ${viewport.width}`);
      await waitForText(page, `from node-b at ${viewport.width}`);
      const texts = await shownTexts(page);
      assert.deepEqual(texts.slice(-3), [`hello over sse at ${viewport.width}`, `from node-a at ${viewport.width}`, `from node-b at ${viewport.width}`]);
      // A request and a reply round trip (ping) and presence, also through either node.
      const rtt = await page.evaluate(() => window.heraldDemo.client.ping());
      assert.ok(rtt >= 0);
      await page.waitForFunction(() => document.querySelector('#online li.me') !== null, null, { timeout: 10000 });

      // No stickiness: the page's posts reached both nodes (relayed over the backplane to its session's node).
      const posts = proxy.stats.requests.filter((r) => r.path === '/emulation').slice(emulationBefore);
      assert.ok(new Set(posts.map((r) => r.node)).size === 2, `posts on both nodes: ${JSON.stringify(posts)}`);

      const overflow = await horizontalOverflow(page);
      assert.ok(overflow.scrollWidth <= overflow.clientWidth, `page wider than the viewport: ${JSON.stringify(overflow)}`);
      assert.deepEqual(overflow.outside, [], 'no element past the viewport edges');
      const label = await page.$eval('#transport', (e) => { const r = e.getBoundingClientRect(); return { w: r.width, h: r.height, right: r.right }; });
      assert.ok(label.w > 0 && label.h > 0 && label.right <= viewport.width, `transport label on screen: ${JSON.stringify(label)}`);
      await page.screenshot({ path: path.join(ARTIFACTS, `fallback-sse-${viewport.width}.png`), fullPage: true });
      await page.context().close();
      assert.deepEqual(errors, []);
    });
  }

  it('on SSE, survives a SIGKILL of the node holding its session: every offset once, in order', async () => {
    const page = await openDemo('sse-kill', DESKTOP);
    assert.equal((await transportOf(page)).transport, 'sse');
    const base = (await shownTexts(page)).length;
    const before = [await publishOn(nodes['node-a'], 'kill-before-a'), await publishOn(nodes['node-b'], 'kill-before-b')];
    await waitForText(page, 'kill-before-b');

    const { holder, other } = await killHolder(page);
    const away = [];
    for (let i = 1; i <= 5; i++) away.push(`kill-away-${i}`);
    const offsets = [];
    for (const text of away) offsets.push(await publishOn(other, text));
    assert.equal(offsets[0], before[1] + 1);

    await waitDemoReady(page, 20000);
    const after = await transportOf(page);
    assert.equal(after.node, other.nodeId, 'reconnected to the surviving node');
    assert.notEqual(after.transport, 'websocket');
    await waitForText(page, 'kill-away-5', 15000);
    await publishOn(other, 'kill-after');
    await waitForText(page, 'kill-after');
    const lastReply = await page.evaluate(() => window.heraldDemo.subscription.lastReply);
    assert.equal(lastReply.recovered, true);
    const texts = await shownTexts(page);
    assert.deepEqual(texts.slice(base), ['kill-before-a', 'kill-before-b', ...away, 'kill-after']);
    await assertExactlyOnce(page, texts);
    const closes = await page.evaluate(() => window.__closes);
    assert.equal(closes[0].code, 1006);

    nodes[holder.nodeId] = await holder.restart();
    await page.context().close();
    assert.deepEqual(errors, []);
  });

  it('http-stream forced (?transports=http-stream, 390×844): no WebSocket, chat, both nodes, a node kill recovered', async () => {
    const refusedBefore = proxy.stats.upgradesRefused;
    const page = await openDemo('http-stream', PHONE, '?transports=http-stream');
    const t = await transportOf(page);
    assert.deepEqual([t.transport, t.welcome, t.label], ['http-stream', 'http-stream', 'http-stream']);
    assert.equal(proxy.stats.upgradesRefused, refusedBefore, 'no WebSocket attempted');
    assert.equal(page.wsLog.filter((l) => l.includes(' open ')).length, 0);
    assert.equal(await page.textContent('#failed-attempts'), '0');
    const base = (await shownTexts(page)).length;

    await sendViaUi(page, 'bob', 'hello over http-stream');
    await waitForText(page, 'hello over http-stream');
    await publishOn(nodes['node-a'], 'hs-from-a');
    await publishOn(nodes['node-b'], 'hs-from-b');
    await waitForText(page, 'hs-from-b');

    const { holder, other } = await killHolder(page);
    await publishOn(other, 'hs-away-1');
    await publishOn(other, 'hs-away-2');
    await waitDemoReady(page, 20000);
    assert.equal((await transportOf(page)).transport, 'http-stream');
    await waitForText(page, 'hs-away-2', 15000);
    await sendViaUi(page, 'bob', 'hs-after');
    await waitForText(page, 'hs-after');
    const texts = await shownTexts(page);
    assert.deepEqual(texts.slice(base), ['hello over http-stream', 'hs-from-a', 'hs-from-b', 'hs-away-1', 'hs-away-2', 'hs-after']);
    await assertExactlyOnce(page, texts);
    assert.equal(page.wsLog.filter((l) => l.includes(' open ')).length, 0);

    const overflow = await horizontalOverflow(page);
    assert.deepEqual(overflow.outside, [], 'no element past the viewport edges');
    await page.screenshot({ path: path.join(ARTIFACTS, 'fallback-http-stream-390.png'), fullPage: true });
    nodes[holder.nodeId] = await holder.restart();
    await page.context().close();
    assert.deepEqual(errors, []);
  });
});
