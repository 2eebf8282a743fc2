// The seat demo end to end in Chromium: one throwaway redis-server, two herald nodes with
// examples/seats.toml, two instances of the seat service (target/release/examples/seats),
// and demo pages on both nodes. Also the chat's "who's online" list (presence), and what
// the page says on a node without that configuration.
import { describe, it, before, after, beforeEach, afterEach } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, execFileSync } from 'node:child_process';
import { createWriteStream, existsSync } from 'node:fs';
import path from 'node:path';
import {
  ROOT, ARTIFACTS, HERALD_BIN, haveChromium, launchBrowser, newPage, startRedis, startHerald,
  killAll, sleep, stop, waitDemoReady, waitForText, sendViaUi,
} from './helpers.mjs';

const SEATS_BIN = process.env.SEATS_BIN || path.join(ROOT, 'target', 'release', 'examples', 'seats');
const SEATS_CONFIG = path.join(ROOT, 'examples', 'seats.toml');

const skipReason = !existsSync(HERALD_BIN)
  ? `${HERALD_BIN} not built (cargo build --release)`
  : !existsSync(SEATS_BIN)
    ? `${SEATS_BIN} not built (cargo build --release --example seats)`
    : !haveChromium() ? 'no Chromium at /usr/bin/chromium' : false;

// ---- the seat service processes (helpers.mjs tracks only its own children) ----------

const services = new Set();
const killServicesSync = () => {
  for (const c of services) if (c.exitCode === null && c.signalCode === null) { try { c.kill('SIGKILL'); } catch { /* gone */ } }
};
process.on('exit', killServicesSync);

async function killServices() {
  const waits = [];
  for (const c of services) {
    if (c.exitCode === null && c.signalCode === null) {
      waits.push(new Promise((r) => c.once('exit', r)));
      try { c.kill('SIGKILL'); } catch { /* gone */ }
    }
  }
  await Promise.race([Promise.all(waits), sleep(5000)]);
}

/** Start one instance of the seat service; resolves once it reads the request stream. */
async function startSeatService(redisUrl, name) {
  const log = createWriteStream(path.join(ARTIFACTS, `${name}.log`), { flags: 'a' });
  log.write(`\n==== ${new Date().toISOString()} ${SEATS_BIN} --redis ${redisUrl} --name ${name}\n`);
  const child = spawn(SEATS_BIN, ['--redis', redisUrl, '--name', name], { cwd: ROOT, stdio: ['ignore', 'pipe', 'pipe'] });
  services.add(child);
  let out = '';
  const keep = (chunk) => { log.write(chunk); out = (out + chunk).slice(-4000); };
  child.stdout.on('data', keep);
  child.stderr.on('data', keep);
  child.unref();
  child.stdout.unref();
  child.stderr.unref();
  child.once('exit', () => { services.delete(child); log.end(); });
  const t0 = Date.now();
  while (!out.includes(`${name} reading`)) {
    if (child.exitCode !== null || child.signalCode !== null) throw new Error(`seat service ${name} exited: ${out}`);
    if (Date.now() - t0 > 15000) throw new Error(`seat service ${name} did not start: ${out}`);
    await sleep(50);
  }
  return child;
}

// ---- page helpers -------------------------------------------------------------------

const openPages = new Set();

/** Close the pages a test left open (a failed test must not leave sessions present). */
async function closeOpenPages() {
  for (const p of openPages) { try { await p.context().close(); } catch { /* closed */ } }
  openPages.clear();
}

async function openSeatsPage(browser, node, errors, label) {
  const page = await newPage(browser, errors, label);
  openPages.add(page);
  page.label = label;
  await page.goto(`${node.base}/`);
  await waitDemoReady(page);
  await page.waitForSelector('#seat-map[data-ready="true"]', { timeout: 15000 });
  return page;
}

/** The rendered state of every seat: seat -> {state, holder}. */
function seatMap(page) {
  return page.$$eval('#seat-map .seat', (els) => Object.fromEntries(
    els.map((b) => [b.dataset.seat, { state: b.dataset.state, holder: b.dataset.holder }]),
  ));
}

/** What must be equal on every page: who holds each seat ("" = free). */
function holders(map) {
  return Object.fromEntries(Object.entries(map).map(([seat, v]) => [seat, v.holder]));
}

const seatState = (page, seat) => page.$eval(`[data-seat="${seat}"]`, (b) => b.dataset.state);

/** Wait until the seat is settled (no request of this page pending on it) and in one of `states`. */
function waitSeat(page, seat, states, timeout = 15000) {
  return page.waitForFunction(
    ([s, st]) => st.includes(document.querySelector(`[data-seat="${s}"]`).dataset.state),
    [seat, states], { timeout },
  );
}

/** Wait until every page applied the same outcome offset (at least `min`). */
async function waitSameOffset(pages, min, timeout = 15000) {
  const t0 = Date.now();
  for (;;) {
    const offsets = await Promise.all(pages.map((p) => p.evaluate(() => window.heraldDemo.seats.applied)));
    if (offsets[0] >= min && offsets.every((o) => o === offsets[0])) return offsets[0];
    if (Date.now() - t0 > timeout) throw new Error(`pages did not converge: applied offsets ${offsets}, want >= ${min}`);
    await sleep(50);
  }
}

/** What Redis holds of the seat demo, for failure reports. */
function redisDump(port) {
  const cli = (...args) => {
    try {
      return execFileSync('redis-cli', ['-p', String(port), ...args], { encoding: 'utf8', timeout: 5000 }).trim();
    } catch (e) { return `(${e.message})`; }
  };
  return [
    ['XRANGE', 'herald:upstream:seats-req', '-', '+'],
    ['XINFO', 'GROUPS', 'herald:upstream:seats-req'],
    ['XPENDING', 'herald:upstream:seats-req', 'seat-service'],
    ['HGETALL', 'seats:{s1}'],
    ['XRANGE', 'seats.events', '-', '+'],
    ['XINFO', 'GROUPS', 'seats.events'],
    ['XPENDING', 'seats.events', 'herald'],
    ['HGETALL', 'herald:{seats:s1}:meta'],
    ['XRANGE', 'herald:{seats:s1}:stream', '-', '+'],
  ].map((a) => `> ${a.join(' ')}\n${cli(...a)}`).join('\n');
}

/** Run `fn`; on failure, add the pages' WebSocket logs and Redis's seat state to the error. */
async function withReport(redis, pages, fn) {
  try {
    return await fn();
  } catch (err) {
    const logs = pages.map((p) => `--- ${p.label} WebSocket log:\n${(p.wsLog || []).slice(-30).join('\n')}`).join('\n');
    err.message += `\n${logs}\n--- redis:\n${redisDump(redis.port)}`;
    throw err;
  }
}

const onlineSessions = (page) => page.$$eval('#online li', (els) => els.map((e) => e.dataset.session));

describe('seat demo: two nodes, two seat services', { skip: skipReason }, () => {
  let redis;
  let nodeA;
  let nodeB;
  let nodeDev;
  let browser;
  const errors = [];

  before(async () => {
    redis = await startRedis();
    [nodeA, nodeB, nodeDev] = await Promise.all([
      startHerald({ nodeId: 'seats-node-a', redisUrl: redis.url, config: SEATS_CONFIG }),
      startHerald({ nodeId: 'seats-node-b', redisUrl: redis.url, config: SEATS_CONFIG }),
      startHerald({ nodeId: 'dev-node', redisUrl: redis.url }), // no --config: a developer's node
    ]);
    await Promise.all([startSeatService(redis.url, 'seats-1'), startSeatService(redis.url, 'seats-2')]);
    browser = await launchBrowser();
  });

  after(async () => {
    try { if (browser) await browser.close(); } finally { await killServices(); await killAll(); }
  });

  beforeEach(() => { errors.length = 0; });
  afterEach(closeOpenPages);

  it('two pages on two nodes click the same seat: exactly one gets it, both show the same map', async () => {
    const alice = await openSeatsPage(browser, nodeA, errors, 'alice@node-a');
    const bob = await openSeatsPage(browser, nodeB, errors, 'bob@node-b');
    assert.equal(await alice.textContent('#node'), 'seats-node-a');
    assert.equal(await bob.textContent('#node'), 'seats-node-b');
    const sessions = {
      alice: await alice.evaluate(() => window.heraldDemo.client.session),
      bob: await bob.evaluate(() => window.heraldDemo.client.session),
    };
    assert.equal(await alice.isHidden('#seats-howto'), true);

    const seat = 'C4';
    assert.equal(await seatState(alice, seat), 'free');
    assert.equal(await seatState(bob, seat), 'free');
    // Both pages click at the same moment (one timer per page, same wall-clock time). The seat
    // services are paused meanwhile, so that both requests are really in flight together:
    // otherwise, on a loaded machine, the first outcome can reach the second page before its
    // click, and the seat is simply taken there (no race at all).
    for (const c of services) c.kill('SIGSTOP');
    try {
      const at = Date.now() + 300;
      await Promise.all([alice, bob].map((p) => p.evaluate(([s, t]) => new Promise((resolve) => {
        setTimeout(() => { document.querySelector(`[data-seat="${s}"]`).click(); resolve(); }, Math.max(0, t - Date.now()));
      }), [seat, at])));
      // Each page's request went upstream: it holds the stream id of its request.
      await withReport(redis, [alice, bob], () => Promise.all([alice, bob].map((p) => p.waitForFunction((s) => {
        const pending = window.heraldDemo.seats.pending.get(s);
        return pending && typeof pending.streamId === 'string';
      }, seat, { timeout: 10000 }))));
    } finally {
      for (const c of services) c.kill('SIGCONT');
    }
    await withReport(redis, [alice, bob], async () => {
      await waitSameOffset([alice, bob], 2); // both outcomes (one win, one loss) on both pages
      await Promise.all([waitSeat(alice, seat, ['mine', 'taken']), waitSeat(bob, seat, ['mine', 'taken'])]);
    });

    const states = [await seatState(alice, seat), await seatState(bob, seat)].sort();
    assert.deepEqual(states, ['mine', 'taken'], 'exactly one page holds the seat');
    const [mapA, mapB] = [await seatMap(alice), await seatMap(bob)];
    assert.deepEqual(holders(mapA), holders(mapB), 'both pages show the same map');
    const winner = mapA[seat].state === 'mine' ? 'alice' : 'bob';
    const [winPage, losePage] = winner === 'alice' ? [alice, bob] : [bob, alice];
    assert.equal(mapA[seat].holder, sessions[winner], 'the holder is the winning session');
    for (const [s, v] of Object.entries(mapA)) {
      if (s !== seat) assert.deepEqual([v, mapB[s]], [{ state: 'free', holder: '' }, { state: 'free', holder: '' }], s);
    }
    assert.match(await winPage.textContent('#seats-status'), new RegExp(`${seat} is yours`));
    assert.match(await losePage.textContent('#seats-status'), new RegExp(`${seat} went to someone else`));
    assert.equal(await losePage.$eval(`[data-seat="${seat}"]`, (b) => b.disabled), true, 'a taken seat cannot be clicked');

    // The winner releases it; the other page then gets it.
    await winPage.click(`[data-seat="${seat}"]`);
    await Promise.all([waitSeat(winPage, seat, ['free']), waitSeat(losePage, seat, ['free'])]);
    await losePage.click(`[data-seat="${seat}"]`);
    await waitSeat(losePage, seat, ['mine']);
    await waitSeat(winPage, seat, ['taken']);

    // A few more seats each, then compare the whole map again.
    for (const s of ['A1', 'A2']) { await alice.click(`[data-seat="${s}"]`); await waitSeat(alice, s, ['mine']); }
    await bob.click('[data-seat="E8"]');
    await waitSeat(bob, 'E8', ['mine']);
    const last = await waitSameOffset([alice, bob], 7);
    const [finalA, finalB] = [await seatMap(alice), await seatMap(bob)];
    assert.deepEqual(holders(finalA), holders(finalB));
    for (const [s, v] of Object.entries(finalA)) {
      const w = finalB[s];
      if (!v.holder) assert.deepEqual([v.state, w.state], ['free', 'free'], s);
      else assert.deepEqual([v.state, w.state].sort(), ['mine', 'taken'], `${s}: mine on one page, taken on the other`);
    }

    // A page opened later rebuilds the same map from history.
    const carol = await openSeatsPage(browser, nodeB, errors, 'carol@node-b');
    await waitSameOffset([carol, alice], last);
    assert.deepEqual(holders(await seatMap(carol)), holders(finalA));
    assert.ok(Object.values(await seatMap(carol)).every((v) => v.state === 'free' || v.state === 'taken'));
    await carol.context().close();

    // A picture of the demo: chat, who's online, the map.
    await sendViaUi(alice, 'alice', 'I took A1 and A2');
    await sendViaUi(bob, 'bob', 'E8 for me');
    await waitForText(alice, 'E8 for me');
    await alice.waitForFunction(() => document.querySelectorAll('#online li').length === 2);
    await alice.screenshot({ path: path.join(ARTIFACTS, 'seats.png'), fullPage: true });
    assert.ok(existsSync(path.join(ARTIFACTS, 'seats.png')));

    await alice.context().close();
    await bob.context().close();
    assert.deepEqual(errors, []);
  });

  it('the chat shows who is online: a page on the other node appears, and leaves when closed', async () => {
    const alice = await openSeatsPage(browser, nodeA, errors, 'alice@node-a');
    const aliceSession = await alice.evaluate(() => window.heraldDemo.client.session);
    await alice.waitForFunction((s) => Array.from(document.querySelectorAll('#online li')).some((li) => li.dataset.session === s), aliceSession);
    assert.equal(await alice.$eval('#online li.me', (li) => li.dataset.session), aliceSession, 'own session marked');
    assert.match(await alice.textContent('#online li.me .you'), /^you/);

    const bob = await openSeatsPage(browser, nodeB, errors, 'bob@node-b');
    const bobSession = await bob.evaluate(() => window.heraldDemo.client.session);
    await alice.waitForFunction((s) => Array.from(document.querySelectorAll('#online li')).some((li) => li.dataset.session === s), bobSession, { timeout: 10000 });
    // Bob's page built its list from the presence snapshot: Alice was there before him.
    await bob.waitForFunction((s) => Array.from(document.querySelectorAll('#online li')).some((li) => li.dataset.session === s), aliceSession, { timeout: 10000 });
    assert.deepEqual((await onlineSessions(alice)).sort(), [aliceSession, bobSession].sort());
    assert.equal(await alice.textContent('#online-count'), '2');
    assert.equal(await alice.$eval(`#online li[data-session="${bobSession}"] .who`, (e) => e.textContent), `${bobSession.slice(0, 8)}…`);

    await bob.context().close();
    await alice.waitForFunction((s) => !Array.from(document.querySelectorAll('#online li')).some((li) => li.dataset.session === s), bobSession, { timeout: 10000 });
    assert.deepEqual(await onlineSessions(alice), [aliceSession]);
    assert.equal(await alice.textContent('#online-count'), '1');
    await alice.context().close();
    assert.deepEqual(errors, []);
  });

  it('after its node restarts, a page rebuilds the map; its earlier session\'s hold is no longer "yours"', async () => {
    const alice = await openSeatsPage(browser, nodeA, errors, 'alice@node-a');
    const bob = await openSeatsPage(browser, nodeB, errors, 'bob@node-b');
    const first = await alice.evaluate(() => window.heraldDemo.client.session);
    await alice.click('[data-seat="B1"]');
    await waitSeat(alice, 'B1', ['mine']);
    await waitSeat(bob, 'B1', ['taken']);

    const exit = await stop(nodeA.child); // SIGTERM: drains, closes the page's socket with 1001
    assert.notEqual(exit.signal, 'SIGKILL', 'node-a did not stop within 15 s of SIGTERM');
    // Meanwhile Bob takes a seat: the reconnected page must show it too.
    await bob.click('[data-seat="D3"]');
    await waitSeat(bob, 'D3', ['mine']);
    nodeA = await nodeA.restart();
    await waitDemoReady(alice, 20000);
    const second = await alice.evaluate(() => window.heraldDemo.client.session);
    assert.notEqual(second, first, 'a new connection is a new session');
    await waitSeat(alice, 'D3', ['taken']);
    await waitSameOffset([alice, bob], 1);
    assert.equal(await seatState(alice, 'B1'), 'earlier', 'held by the page\'s earlier session');
    assert.equal(await alice.$eval('[data-seat="B1"]', (b) => b.disabled), true);
    assert.deepEqual(holders(await seatMap(alice)), holders(await seatMap(bob)));

    // The new session holds seats as usual; Bob's list saw the old session leave and the new one join.
    await alice.click('[data-seat="B2"]');
    await waitSeat(alice, 'B2', ['mine']);
    await waitSeat(bob, 'B2', ['taken']);
    await bob.waitForFunction(([gone, now]) => {
      const shown = Array.from(document.querySelectorAll('#online li')).map((li) => li.dataset.session);
      return !shown.includes(gone) && shown.includes(now);
    }, [first, second], { timeout: 10000 });
    await alice.context().close();
    await bob.context().close();
    assert.deepEqual(errors, []);
  });

  it('on a node without the seat configuration the page explains instead of failing', async () => {
    const page = await newPage(browser, errors, 'page@dev-node');
    openPages.add(page);
    await page.goto(`${nodeDev.base}/`);
    await waitDemoReady(page);
    await page.waitForSelector('#online-note[data-state="off"]', { timeout: 10000 });
    assert.match(await page.textContent('#online-note'), /presence is off on this node/);
    assert.equal(await page.$$eval('#online li', (els) => els.length), 0);
    await page.waitForSelector('#seats-howto:not([hidden])', { timeout: 10000 });
    assert.match(await page.textContent('#seats-howto'), /--example seats/);
    assert.match(await page.textContent('#seats-howto-reason'), /plain channel/);
    assert.equal(await page.$eval('#seat-map', (m) => m.classList.contains('off')), true);
    assert.equal(await page.$$eval('#seat-map .seat:not(:disabled)', (els) => els.length), 0);
    // The chat itself works as before.
    await sendViaUi(page, 'dev', 'still chatting');
    await waitForText(page, 'still chatting');
    await page.context().close();
    assert.deepEqual(errors, []);
  });
});
