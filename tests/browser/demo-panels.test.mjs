// The demo page's "who's online" panel and seat map in Chromium against an in-page stand-in
// for the node (a scripted WebSocket installed before the page's scripts run). Needs no
// herald binary; it pins the orderings a real node only produces by chance: events that
// arrive while the presence snapshot or the seat history is on its way, an outcome that
// arrives before the reply to its own request, and the refusals of an unconfigured node.
import { describe, it, before, after, beforeEach } from 'node:test';
import assert from 'node:assert/strict';
import http from 'node:http';
import { readFile } from 'node:fs/promises';
import path from 'node:path';
import { ARTIFACTS, STATIC_DIR, haveChromium, horizontalOverflow, launchBrowser, newPage } from './helpers.mjs';

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

// Runs in the page before its scripts. `config.answers` maps "op channel" (or "op") to
// {result} or {error}; ops in `config.hold` are not answered until the test calls
// window.__fake.answer(frame, reply). Everything else answers {}.
function installFakeNode(config) {
  const sockets = [];
  const fake = { sockets, frames: [], held: [] };
  window.__fake = fake;
  const replyFor = (f) => config.answers[`${f.op} ${f.channel}`] || config.answers[f.op] || { result: {} };
  class FakeNodeSocket {
    constructor(url) {
      this.url = url;
      this.readyState = 0;
      sockets.push(this);
      setTimeout(() => {
        this.readyState = 1;
        if (this.onopen) this.onopen({});
        this.push({ type: 'welcome', session: 's-stub-' + sockets.length, node: 'stub-node', ping_interval_ms: 25000 });
      }, 10);
    }
    push(frame) { if (this.readyState === 1 && this.onmessage) this.onmessage({ data: JSON.stringify(frame) }); }
    send(text) {
      const f = JSON.parse(text);
      fake.frames.push(f);
      if ((config.hold || []).includes(f.op)) { fake.held.push(f); return; }
      this.reply(f, replyFor(f));
    }
    reply(f, r) { this.push({ type: 'reply', id: f.id, ...r }); }
    close(code, reason) { this.serverClose(code || 1005, reason || ''); }
    serverClose(code, reason) {
      if (this.readyState === 3) return;
      this.readyState = 3;
      if (this.onclose) this.onclose({ code, reason });
    }
  }
  fake.push = (frame) => sockets[sockets.length - 1].push(frame);
  /** Answer the first held frame of `op` (and channel) with `r`. */
  fake.answer = (op, channel, r) => {
    const i = fake.held.findIndex((f) => f.op === op && (!channel || f.channel === channel));
    if (i < 0) throw new Error(`no held ${op}`);
    const [f] = fake.held.splice(i, 1);
    sockets[sockets.length - 1].reply(f, r);
    return f;
  };
  window.WebSocket = FakeNodeSocket;
}

const SEATS_OK = {
  'subscribe seats:s1': { result: { epoch: 'e1', offset: 2 } },
  'publish seats-req:s1': { result: { stream_id: '1700000000000-0' } },
  'history seats:s1': { result: { epoch: 'e1', offset: 2, messages: [] } },
};

const outcome = (offset, data, epoch = 'e1') => ({ type: 'message', channel: 'seats:s1', data, offset, epoch, source: { stream: 'seats.events', id: `${offset}-0` } });
const onlineSessions = (page) => page.$$eval('#online li', (els) => els.map((e) => e.dataset.session));
const seatStates = (page) => page.$$eval('#seat-map .seat', (els) => Object.fromEntries(
  els.filter((b) => b.dataset.state !== 'free').map((b) => [b.dataset.seat, `${b.dataset.state}:${b.dataset.holder}`]),
));

describe('demo page: who is online and the seat map (stub node)', { skip: !haveChromium() && 'no Chromium at /usr/bin/chromium' }, () => {
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

  async function openPage(label, config, viewport) {
    const page = await newPage(browser, errors, label, viewport ? { viewport } : {});
    await page.addInitScript(installFakeNode, { answers: {}, hold: [], ...config });
    await page.goto(base + '/');
    await page.waitForFunction(() => window.heraldDemo && window.heraldDemo.subscription.active);
    return page;
  }

  it('merges join/leave events that arrive before the presence snapshot, then follows live events', async () => {
    const page = await openPage('presence', { answers: SEATS_OK, hold: ['presence'] });
    await page.waitForFunction(() => window.__fake.held.some((f) => f.op === 'presence'));
    assert.equal(await page.getAttribute('#online-note', 'data-state'), 'loading');
    await page.evaluate(() => {
      window.__fake.push({ type: 'join', channel: 'chat:lobby', client: { session: 's-stub-1' } });
      window.__fake.push({ type: 'join', channel: 'chat:lobby', client: { session: 's-aaaaaaaaaaaaaaaa1' } });
      window.__fake.push({ type: 'leave', channel: 'chat:lobby', client: { session: 's-bbbbbbbbbbbbbbbb2' } });
      // The snapshot was read before that leave reached this node.
      window.__fake.answer('presence', 'chat:lobby', { result: { clients: [
        { session: 's-bbbbbbbbbbbbbbbb2' }, { session: 's-stub-1' }, { session: 's-ccc', user: '<b>carol</b>' },
      ] } });
    });
    await page.waitForSelector('#online-note[data-state="on"]', { state: 'attached' });
    assert.deepEqual(await onlineSessions(page), ['s-stub-1', 's-ccc', 's-aaaaaaaaaaaaaaaa1'], 'own session first');
    assert.equal(await page.textContent('#online-count'), '3');
    assert.equal(await page.textContent('#online li[data-session="s-ccc"] .who'), '<b>carol</b>', 'user shown as text');
    assert.equal(await page.$$eval('#online b', (els) => els.length), 0);
    assert.equal(await page.textContent('#online li[data-session="s-aaaaaaaaaaaaaaaa1"] .who'), 's-aaaaaa…');
    assert.match(await page.textContent('#online li.me'), /you · /);

    await page.evaluate(() => window.__fake.push({ type: 'leave', channel: 'chat:lobby', client: { session: 's-ccc' } }));
    await page.waitForFunction(() => document.querySelectorAll('#online li').length === 2);

    // A disconnect empties the list; the re-subscribe asks for a fresh snapshot. The
    // reconnect can move the note on to "loading" before a poll would see "offline",
    // so every state the note takes is recorded.
    await page.evaluate(() => {
      const note = document.getElementById('online-note');
      window.__onlineStates = [];
      // Each record's old value, and the value now: a state set and replaced within
      // one task still shows up.
      new MutationObserver((records) => {
        for (const r of records) window.__onlineStates.push(r.oldValue);
        window.__onlineStates.push(note.dataset.state);
      }).observe(note, { attributes: true, attributeFilter: ['data-state'], attributeOldValue: true });
      window.__fake.sockets[0].serverClose(1006, '');
    });
    await page.waitForFunction(() => window.__onlineStates.includes('offline'));
    assert.deepEqual(await onlineSessions(page), []);
    await page.waitForFunction(() => window.__fake.held.some((f) => f.op === 'presence'));
    await page.evaluate(() => window.__fake.answer('presence', 'chat:lobby', { result: { clients: [{ session: 's-stub-2' }] } }));
    await page.waitForSelector('#online-note[data-state="on"]', { state: 'attached' });
    assert.deepEqual(await onlineSessions(page), ['s-stub-2']);
    await page.context().close();
    assert.deepEqual(errors, []);
  });

  it('says "presence is off on this node" when the presence op answers bad_request', async () => {
    const page = await openPage('presence-off', {
      answers: { presence: { error: { code: 'bad_request', message: "presence is not enabled in namespace 'chat'" } } },
    });
    await page.waitForSelector('#online-note[data-state="off"]');
    assert.match(await page.textContent('#online-note'), /^presence is off on this node/);
    assert.equal(await page.isHidden('#online-count'), true);
    await page.context().close();
    assert.deepEqual(errors, []);
  });

  it('rebuilds the seat map from history, applying only the live outcomes newer than it', async () => {
    const page = await openPage('history', { answers: SEATS_OK, hold: ['history'] });
    await page.waitForFunction(() => window.__fake.held.some((f) => f.op === 'history' && f.channel === 'seats:s1'));
    assert.equal(await page.getAttribute('#seat-map', 'data-ready'), 'false');
    await page.evaluate(({ a, b }) => {
      window.__fake.push(a); // offset 3: newer than the history below
      window.__fake.push(b); // offset 4
      window.__fake.answer('history', 'seats:s1', { result: { epoch: 'e1', offset: 3, messages: [
        { offset: 1, data: { seat: 'A2', action: 'hold', ok: true, holder: 's-q', by: 's-q', request: '1-0' } },
        { offset: 2, data: { seat: 'A2', action: 'release', ok: true, holder: null, by: 's-q', request: '2-0' } },
        { offset: 3, data: { seat: 'A1', action: 'hold', ok: true, holder: 's-z', by: 's-z', request: '3-0' } },
      ] } });
    }, {
      a: outcome(3, { seat: 'A1', action: 'hold', ok: true, holder: 's-z', by: 's-z', request: '3-0' }),
      b: outcome(4, { seat: 'E8', action: 'hold', ok: true, holder: 's-stub-1', by: 's-stub-1', request: '4-0' }),
    });
    await page.waitForSelector('#seat-map[data-ready="true"]');
    assert.deepEqual(await seatStates(page), { A1: 'taken:s-z', E8: 'mine:s-stub-1' });
    assert.equal(await page.evaluate(() => window.heraldDemo.seats.applied), 4);
    assert.equal(await page.textContent('#seats-summary'), 'Yours: E8 · free 38 · taken 1');
    assert.equal(await page.isHidden('#seats-howto'), true);

    // A new epoch (Redis lost the channel): the map is rebuilt from the new history.
    await page.evaluate((o) => window.__fake.push(o), outcome(1, { seat: 'C2', action: 'hold', ok: true, holder: 's-n', by: 's-n', request: '20-0' }, 'e2'));
    await page.waitForFunction(() => window.__fake.held.some((f) => f.op === 'history' && f.channel === 'seats:s1'));
    await page.evaluate(() => window.__fake.answer('history', 'seats:s1', { result: { epoch: 'e2', offset: 1, messages: [
      { offset: 1, data: { seat: 'C2', action: 'hold', ok: true, holder: 's-n', by: 's-n', request: '20-0' } },
    ] } }));
    await page.waitForFunction(() => window.heraldDemo.seats.epoch === 'e2');
    assert.deepEqual(await seatStates(page), { C2: 'taken:s-n' });
    await page.context().close();
    assert.deepEqual(errors, []);
  });

  it('a click holds a seat; an outcome that beats the publish reply still settles it', async () => {
    const page = await openPage('click', { answers: SEATS_OK, hold: ['publish'] });
    await page.waitForSelector('#seat-map[data-ready="true"]');
    await page.click('[data-seat="B3"]');
    const pub = await page.evaluate(() => window.__fake.held.find((f) => f.op === 'publish'));
    assert.deepEqual({ channel: pub.channel, data: pub.data }, { channel: 'seats-req:s1', data: { show: 's1', seat: 'B3', action: 'hold' } });
    assert.equal(await page.getAttribute('[data-seat="B3"]', 'data-state'), 'pending');
    await page.evaluate((o) => {
      window.__fake.push(o);
      window.__fake.answer('publish', 'seats-req:s1', { result: { stream_id: '9-0' } });
    }, outcome(3, { seat: 'B3', action: 'hold', ok: true, holder: 's-stub-1', by: 's-stub-1', request: '9-0' }));
    await page.waitForSelector('[data-seat="B3"][data-state="mine"]');
    assert.equal(await page.textContent('#seats-status'), 'B3 is yours.');

    // Lost race: someone else's outcome comes first, then ours says not ok.
    await page.click('[data-seat="B4"]');
    await page.evaluate(({ theirs, ours }) => {
      window.__fake.answer('publish', 'seats-req:s1', { result: { stream_id: '11-0' } });
      window.__fake.push(theirs);
      window.__fake.push(ours);
    }, {
      theirs: outcome(4, { seat: 'B4', action: 'hold', ok: true, holder: 's-x', by: 's-x', request: '10-0' }),
      ours: outcome(5, { seat: 'B4', action: 'hold', ok: false, holder: 's-x', by: 's-stub-1', request: '11-0' }),
    });
    await page.waitForSelector('[data-seat="B4"][data-state="taken"]');
    assert.equal(await page.textContent('#seats-status'), 'B4 went to someone else.');

    // Release: a click on one's own seat.
    await page.click('[data-seat="B3"]');
    const rel = await page.evaluate(() => window.__fake.held.find((f) => f.op === 'publish'));
    assert.equal(rel.data.action, 'release');
    await page.evaluate((o) => {
      window.__fake.answer('publish', 'seats-req:s1', { result: { stream_id: '12-0' } });
      window.__fake.push(o);
    }, outcome(6, { seat: 'B3', action: 'release', ok: true, holder: null, by: 's-stub-1', request: '12-0' }));
    await page.waitForSelector('[data-seat="B3"][data-state="free"]');
    assert.deepEqual(await seatStates(page), { B4: 'taken:s-x' });
    await page.context().close();
    assert.deepEqual(errors, []);
  });

  it('shows how to run the seat demo when the node has no seats namespace', async () => {
    const page = await openPage('not-found', {
      answers: { 'subscribe seats:s1': { error: { code: 'not_found', message: "unknown namespace 'seats'" } } },
    });
    await page.waitForSelector('#seats-howto:not([hidden])');
    assert.match(await page.textContent('#seats-howto-reason'), /not_found/);
    assert.match(await page.textContent('#seats-howto pre'), /--config examples\/seats\.toml/);
    assert.equal(await page.textContent('#seats-summary'), 'Seat map unavailable on this node.');
    assert.equal(await page.$$eval('#seat-map .seat:not(:disabled)', (els) => els.length), 0);
    await page.context().close();
    assert.deepEqual(errors, []);
  });

  it('explains when a seat request is refused (forbidden) by the node', async () => {
    const page = await openPage('forbidden', {
      answers: { ...SEATS_OK, 'publish seats-req:s1': { error: { code: 'forbidden', message: 'publish not allowed' } } },
    });
    await page.waitForSelector('#seat-map[data-ready="true"]');
    await page.click('[data-seat="C1"]');
    await page.waitForSelector('#seats-howto:not([hidden])');
    assert.match(await page.textContent('#seats-howto-reason'), /forbidden/);
    assert.equal(await page.getAttribute('[data-seat="C1"]', 'data-state'), 'free');
    await page.context().close();
    assert.deepEqual(errors, []);
  });
  // Issue 27: on a phone (390 px) the seat map was a fixed ~414 px grid: the row letters
  // sat at x = -12…12 px and the page scrolled sideways. At both sizes nothing may stick
  // out of the viewport, and every row letter and seat must be on screen.
  for (const { width, height, minSeat } of [
    { width: 390, height: 844, minSeat: 30 },
    { width: 1280, height: 800, minSeat: 40 },
  ]) {
    it(`fits a ${width}×${height} screen: nothing wider than the viewport, row letters and seats on screen`, async () => {
      const page = await openPage(`layout-${width}`, { answers: {
        ...SEATS_OK,
        presence: { result: { clients: [{ session: 's-stub-1' }, { session: 's-0123456789abcdef7', user: 'a-rather-long-user-name@example.com' }] } },
      } }, { width, height });
      await page.waitForSelector('#seat-map[data-ready="true"]');
      await page.waitForSelector('#online-note[data-state="on"]', { state: 'attached' });
      await page.evaluate((o) => {
        window.__fake.push({ type: 'message', channel: 'chat:lobby', data: { user: 'ada', text: 'hello from a phone' } });
        window.__fake.push({ type: 'message', channel: 'chat:lobby', data: { user: 'a-very-long-name-indeed', text: 'https://example.com/' + 'x'.repeat(120) } });
        window.__fake.push(o);
      }, outcome(3, { seat: 'C4', action: 'hold', ok: true, holder: 's-other', by: 's-other', request: '3-0' }));
      await page.waitForSelector('[data-seat="C4"][data-state="taken"]');

      const o = await horizontalOverflow(page);
      assert.ok(o.scrollWidth <= o.innerWidth, `the page scrolls sideways: scrollWidth ${o.scrollWidth} > innerWidth ${o.innerWidth}`);
      assert.deepEqual(o.outside, [], `elements past the edge of a ${o.clientWidth} px viewport`);

      const map = await page.evaluate(() => {
        const vw = document.documentElement.clientWidth;
        const box = (el) => { const r = el.getBoundingClientRect(); return { left: r.left, right: r.right, top: r.top, bottom: r.bottom, width: r.width }; };
        // Is the element's own text what is painted at its centre (not clipped or covered)?
        const onTop = (el) => {
          const r = el.getBoundingClientRect();
          el.scrollIntoView({ block: 'center' });
          const c = el.getBoundingClientRect();
          const hit = document.elementFromPoint(c.left + c.width / 2, c.top + c.height / 2);
          return r.width > 0 && (hit === el || el.contains(hit));
        };
        const labels = Array.from(document.querySelectorAll('#seat-map .row-label')).map((el) => ({ text: el.textContent, ...box(el), visible: onTop(el) }));
        const seats = Array.from(document.querySelectorAll('#seat-map .seat')).map((el) => ({ seat: el.dataset.seat, ...box(el), visible: onTop(el) }));
        window.scrollTo(0, 0);
        return { vw, labels, seats };
      });
      assert.deepEqual(map.labels.map((l) => l.text), ['A', 'B', 'C', 'D', 'E']);
      for (const l of map.labels) {
        assert.ok(l.left >= 0 && l.right <= map.vw, `row letter ${l.text} at ${l.left}…${l.right} is outside 0…${map.vw}`);
        assert.ok(l.visible, `row letter ${l.text} is not visible`);
      }
      assert.equal(map.seats.length, 40);
      for (const st of map.seats) {
        assert.ok(st.left >= 0 && st.right <= map.vw, `seat ${st.seat} at ${st.left}…${st.right} is outside 0…${map.vw}`);
        assert.ok(st.visible, `seat ${st.seat} is not visible`);
        assert.ok(st.width >= minSeat, `seat ${st.seat} is ${st.width} px wide, under ${minSeat} px`);
      }
      // A long chat line beside a long name keeps most of the list's width.
      const chat = await page.evaluate(() => {
        const lines = document.querySelectorAll('#messages li');
        const text = lines[lines.length - 1].querySelector('.text').getBoundingClientRect();
        return { text: text.width, list: document.getElementById('messages').clientWidth };
      });
      assert.ok(chat.text >= chat.list * 0.5, `a chat line's text is ${chat.text} px wide in a ${chat.list} px list`);
      // Each row letter stays left of its row's first seat.
      for (const l of map.labels) {
        const first = map.seats.find((st) => st.seat === `${l.text}1`);
        assert.ok(l.right <= first.left, `row letter ${l.text} overlaps seat ${l.text}1`);
      }
      await page.screenshot({ path: path.join(ARTIFACTS, `demo-${width}.png`), fullPage: true });
      await page.context().close();

      // The "how to run the seat demo" box (long command lines) must not widen the page either.
      const howto = await openPage(`layout-howto-${width}`, {
        answers: { 'subscribe seats:s1': { error: { code: 'not_found', message: "unknown namespace 'seats'" } } },
      }, { width, height });
      await howto.waitForSelector('#seats-howto:not([hidden])');
      const h = await horizontalOverflow(howto);
      assert.ok(h.scrollWidth <= h.innerWidth, `with the seat demo's commands shown the page scrolls sideways: ${h.scrollWidth} > ${h.innerWidth}`);
      assert.deepEqual(h.outside, []);
      await howto.screenshot({ path: path.join(ARTIFACTS, `demo-howto-${width}.png`), fullPage: true });
      await howto.context().close();
      assert.deepEqual(errors, []);
    });
  }
});
