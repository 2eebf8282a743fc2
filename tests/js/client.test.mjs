// Herald client behaviour against a scripted fake WebSocket (tests/js/fake-ws.mjs).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Herald, HeraldError } from '../../static/herald.mjs';
import { makeFakeWebSocket, sleep, waitFor, settledState } from './fake-ws.mjs';

const URL_ = 'ws://127.0.0.1:9999/ws';

/** A client on a fake socket; closed after the test. */
function setup(t, options = {}) {
  const { FakeWebSocket, sockets } = makeFakeWebSocket();
  const client = new Herald(URL_, {
    WebSocket: FakeWebSocket,
    transports: ['websocket'], // the WebSocket alone; tests/js/transports.test.mjs has the others
    random: () => 0, // reconnect at once unless a test says otherwise
    requestTimeoutMs: 200,
    ...options,
  });
  const events = [];
  for (const ev of ['connecting', 'connected', 'disconnected', 'error', 'state']) {
    client.on(ev, (arg) => events.push([ev, arg]));
  }
  t.after(() => client.close());
  return { client, sockets, events, FakeWebSocket };
}

async function connected(t, options) {
  const ctx = setup(t, options);
  const p = ctx.client.connect();
  ctx.sockets[0].welcome({ node: 'node-a', session: 's-1' });
  await p;
  return ctx;
}

test('connect: resolves with the welcome frame and exposes node and session', async (t) => {
  const { client, sockets, events } = setup(t, { token: 'tok en' });
  const p = client.connect();
  assert.equal(client.state, 'connecting');
  assert.equal(sockets.length, 1);
  assert.equal(sockets[0].url, 'ws://127.0.0.1:9999/ws?token=tok+en');
  sockets[0].welcome({ node: 'node-b', session: 's-77' });
  const welcome = await p;
  assert.equal(welcome.node, 'node-b');
  assert.equal(client.state, 'connected');
  assert.equal(client.node, 'node-b');
  assert.equal(client.session, 's-77');
  const conn = events.find(([e]) => e === 'connected');
  assert.equal(conn[1].node, 'node-b');
});

test('relative URLs resolve against the page and http becomes ws', () => {
  assert.equal(Herald.buildUrl('http://example.com/ws', 'a/b'), 'ws://example.com/ws?token=a%2Fb');
  assert.equal(Herald.buildUrl('https://example.com/ws?x=1'), 'wss://example.com/ws?x=1');
  globalThis.location = { href: 'https://app.example.com/chat/index.html' };
  try {
    assert.equal(Herald.buildUrl('/ws'), 'wss://app.example.com/ws');
  } finally {
    delete globalThis.location;
  }
});

test('requests carry incrementing integer ids; replies are matched by id', async (t) => {
  const { client, sockets } = await connected(t);
  const ws = sockets[0];
  const p1 = client.publish('chat:a', { n: 1 });
  const p2 = client.history('chat:a', { limit: 5, since: { epoch: 'E', offset: 3 } });
  const p3 = client.presenceStats('chat:a');
  const [f1, f2, f3] = ws.sent;
  assert.deepEqual(f1, { id: f1.id, op: 'publish', channel: 'chat:a', data: { n: 1 } });
  assert.ok(Number.isInteger(f1.id));
  assert.equal(f2.id, f1.id + 1);
  assert.equal(f3.id, f2.id + 1);
  assert.deepEqual(f2.since, { epoch: 'E', offset: 3 });
  assert.equal(f2.limit, 5);
  assert.equal(f3.op, 'presence_stats');
  // Out of order on purpose.
  ws.reply(f3.id, { clients: 2, users: 1 });
  ws.reply(f1.id, { epoch: 'E', offset: 9 });
  ws.reply(f2.id, { epoch: 'E', offset: 9, messages: [] });
  assert.deepEqual(await p1, { epoch: 'E', offset: 9 });
  assert.deepEqual(await p2, { epoch: 'E', offset: 9, messages: [] });
  assert.deepEqual(await p3, { clients: 2, users: 1 });
});

test('publish sends idempotency_key', async (t) => {
  const { client, sockets } = await connected(t);
  client.publish('chat:a', 'x', { idempotencyKey: 'k-1' }).catch(() => {});
  assert.equal(sockets[0].lastOp('publish').idempotency_key, 'k-1');
});

test('a server error rejects with a HeraldError carrying the protocol code', async (t) => {
  const { client, sockets } = await connected(t);
  const p = client.publish('admin:x', 1);
  sockets[0].replyError(sockets[0].lastOp('publish').id, 'forbidden', "publish not allowed in namespace 'admin'");
  await assert.rejects(p, (err) => {
    assert.ok(err instanceof HeraldError);
    assert.equal(err.code, 'forbidden');
    assert.equal(err.message, "publish not allowed in namespace 'admin'");
    assert.equal(err.op, 'publish');
    return true;
  });
});

test('rate_limited with the request id rejects that request at once, not after its timeout', async (t) => {
  // The default 10 s request timeout: a rejection within it can only come from the reply.
  const { client, sockets, events } = await connected(t, { requestTimeoutMs: 10000 });
  const ws = sockets[0];
  const t0 = Date.now();
  const p = client.publish('chat:a', { n: 1 });
  const other = client.history('chat:a');
  const id = ws.lastOp('publish').id;
  assert.ok(Number.isInteger(id));
  ws.receive({ type: 'reply', id, error: { code: 'rate_limited', message: 'rate limit exceeded' } });
  assert.equal(await settledState(p), 'rejected', 'rejected right after the reply');
  await assert.rejects(p, (err) => {
    assert.ok(err instanceof HeraldError);
    assert.equal(err.code, 'rate_limited');
    assert.equal(err.op, 'publish');
    return true;
  });
  assert.ok(Date.now() - t0 < 1000, `rejected after ${Date.now() - t0} ms`);
  assert.equal(await settledState(other), 'pending', 'only the request with that id');
  assert.equal(events.filter(([e]) => e === 'error').length, 0, 'a reply with an id is not also an error event');
  assert.equal(client.state, 'connected', 'rate_limited does not drop the connection');
  ws.reply(ws.lastOp('history').id, { epoch: 'E', offset: 0, messages: [] });
  assert.deepEqual(await other, { epoch: 'E', offset: 0, messages: [] });
});

test('an error reply with id null is an "error" event and rejects no request', async (t) => {
  const { client, sockets, events } = await connected(t, { requestTimeoutMs: 10000 });
  const ws = sockets[0];
  const p = client.publish('chat:a', 1);
  ws.receive({ type: 'reply', id: null, error: { code: 'rate_limited', message: 'rate limit exceeded' } });
  const errs = events.filter(([e]) => e === 'error').map(([, err]) => err);
  assert.equal(errs.length, 1);
  assert.ok(errs[0] instanceof HeraldError);
  assert.equal(errs[0].code, 'rate_limited');
  assert.equal(await settledState(p), 'pending', 'no request can be matched to id null');
  assert.equal(client.state, 'connected');
  ws.reply(ws.lastOp('publish').id, {});
  assert.deepEqual(await p, {});
});

test('a request without a reply times out with code "timeout"; a late reply is ignored', async (t) => {
  const { client, sockets } = await connected(t, { requestTimeoutMs: 60 });
  const t0 = Date.now();
  const p = client.presence('chat:a');
  await assert.rejects(p, (err) => err.code === 'timeout' && err.op === 'presence');
  const took = Date.now() - t0;
  assert.ok(took >= 55 && took < 1000, `timed out after ${took} ms`);
  sockets[0].reply(sockets[0].lastOp('presence').id, { clients: [] }); // must not throw
  assert.equal(client.state, 'connected');
});

test('publish while disconnected rejects at once with "not_connected" and sends nothing', async (t) => {
  const { client, sockets } = setup(t, { random: () => 0.5, backoff: { baseMs: 10000, maxMs: 10000 } });
  // Never connected.
  let p = client.publish('chat:a', 1);
  assert.equal(await settledState(p), 'rejected');
  await assert.rejects(p, (err) => err.code === 'not_connected');
  // Connecting: socket open but no welcome yet.
  client.connect();
  sockets[0].open();
  p = client.publish('chat:a', 2);
  assert.equal(await settledState(p), 'rejected');
  await assert.rejects(p, (err) => err.code === 'not_connected');
  // Connected, then the node goes away: waiting 5 s for the next attempt.
  sockets[0].welcome();
  await waitFor(() => client.state === 'connected');
  sockets[0].serverClose(1006);
  assert.equal(client.state, 'reconnecting');
  p = client.publish('chat:a', 3);
  assert.equal(await settledState(p), 'rejected');
  await assert.rejects(p, (err) => err.code === 'not_connected');
  assert.equal(sockets[0].ops('publish').length, 0, 'nothing was buffered or sent');
  assert.equal(sockets.length, 1);
});

test('requests in flight when the socket closes reject with "disconnected"', async (t) => {
  const { client, sockets } = await connected(t);
  const p = client.publish('chat:a', 1);
  sockets[0].serverClose(1006);
  await assert.rejects(p, (err) => err.code === 'disconnected');
});

test('reconnects by itself after an abnormal close and reports it', async (t) => {
  const { client, sockets, events } = await connected(t);
  sockets[0].serverClose(1006, '');
  const d = events.find(([e]) => e === 'disconnected')[1];
  assert.equal(d.code, 1006);
  assert.equal(d.willReconnect, true);
  assert.equal(d.delayMs, 0);
  await waitFor(() => sockets.length === 2, { what: 'a second socket' });
  sockets[1].welcome({ node: 'node-b' });
  await waitFor(() => client.state === 'connected');
  assert.equal(client.node, 'node-b');
  assert.equal(events.filter(([e]) => e === 'connected').length, 2);
});

for (const code of [1001, 1011, 4008]) {
  test(`close ${code}: reconnects`, async (t) => {
    const { sockets } = await connected(t);
    sockets[0].serverClose(code, 'x');
    await waitFor(() => sockets.length === 2, { what: 'a reconnect' });
  });
}

for (const code of [1008, 1009, 1000]) {
  test(`close ${code} from the node: does not reconnect`, async (t) => {
    const { client, sockets, events } = await connected(t);
    sockets[0].serverClose(code, 'bye');
    await sleep(50);
    assert.equal(sockets.length, 1, 'no new socket');
    assert.equal(client.state, 'closed');
    const d = events.find(([e]) => e === 'disconnected')[1];
    assert.deepEqual(d, { code, reason: 'bye', willReconnect: false });
  });
}

test('close(): sends 1000, stops for good, rejects waiting connect()', async (t) => {
  const { client, sockets, events } = setup(t);
  const p = client.connect();
  client.close();
  await assert.rejects(p, (err) => err.code === 'closed');
  assert.deepEqual(sockets[0].closedByClient, { code: 1000, reason: 'client closed' });
  await sleep(50); // the socket's own close event arrives meanwhile, and must not reconnect
  assert.equal(sockets.length, 1);
  assert.equal(client.state, 'closed');
  assert.equal(events.filter(([e]) => e === 'disconnected').length, 1);
  assert.equal(events.find(([e]) => e === 'disconnected')[1].willReconnect, false);
});

test('close() while waiting to reconnect cancels the attempt', async (t) => {
  const { client, sockets } = await connected(t, { random: () => 0.5, backoff: { baseMs: 40, maxMs: 40 } });
  sockets[0].serverClose(1006);
  client.close();
  await sleep(80);
  assert.equal(sockets.length, 1);
  assert.equal(client.state, 'closed');
});

test('backoff grows over failed attempts and resets after a successful connection', async (t) => {
  const { client, sockets, events } = await connected(t, {
    random: () => 0.999999999,
    backoff: { baseMs: 10, maxMs: 1000 },
  });
  const delays = () => events.filter(([e]) => e === 'disconnected').map(([, d]) => d.delayMs);
  sockets[0].serverClose(1006);            // attempt 0
  await waitFor(() => sockets.length === 2);
  sockets[1].serverClose(1006);            // fails before a welcome: attempt 1
  await waitFor(() => sockets.length === 3);
  sockets[2].serverClose(1006);            // attempt 2
  await waitFor(() => sockets.length === 4);
  sockets[3].welcome();                    // success: reset
  await waitFor(() => client.state === 'connected');
  sockets[3].serverClose(1001);            // attempt 0 again
  await waitFor(() => sockets.length === 5);
  assert.deepEqual(delays(), [9, 19, 39, 9]);
});

test('4001: calls getToken for a new token, then reconnects with it', async (t) => {
  let n = 0;
  const { client, sockets } = setup(t, { getToken: async () => `t${++n}` });
  client.connect();
  await waitFor(() => sockets.length === 1);
  assert.match(sockets[0].url, /\?token=t1$/);
  sockets[0].welcome();
  await waitFor(() => client.state === 'connected');
  sockets[0].serverClose(4001, 'token expired');
  await waitFor(() => sockets.length === 2, { what: 'a reconnect' });
  assert.equal(n, 2);
  assert.match(sockets[1].url, /\?token=t2$/);
});

test('4001 without getToken: stops and reports token_expired', async (t) => {
  const { client, sockets, events } = await connected(t, { token: 'old' });
  sockets[0].serverClose(4001, 'token expired');
  await sleep(30);
  assert.equal(sockets.length, 1);
  assert.equal(client.state, 'closed');
  assert.ok(events.some(([e, err]) => e === 'error' && err.code === 'token_expired'));
});

test('a getToken that throws is retried with backoff', async (t) => {
  let n = 0;
  const { client, sockets, events } = setup(t, {
    getToken: () => { if (++n === 1) throw new Error('auth server down'); return 'ok'; },
  });
  client.connect();
  await waitFor(() => sockets.length === 1, { what: 'a socket after the retry' });
  assert.match(sockets[0].url, /token=ok/);
  assert.ok(events.some(([e, err]) => e === 'error' && err.code === 'token_error'));
});

test('subscribe: sent once connected; ready resolves with the reply; messages delivered', async (t) => {
  const { client, sockets } = setup(t);
  const got = [];
  const sub = client.subscribe('chat:lobby', (data, frame) => got.push([data, frame.channel]));
  client.connect();
  const ws = sockets[0];
  ws.welcome();
  const f = ws.lastOp('subscribe');
  assert.deepEqual(f, { id: f.id, op: 'subscribe', channel: 'chat:lobby' });
  ws.reply(f.id, {});
  assert.deepEqual(await sub.ready, {});
  assert.equal(sub.active, true);
  ws.receive({ type: 'message', channel: 'chat:lobby', data: { text: 'hi' } });
  ws.receive({ type: 'message', channel: 'other', data: 'not mine' });
  assert.deepEqual(got, [[{ text: 'hi' }, 'chat:lobby']]);
});

test('subscribe refused: ready rejects with the code, the subscription is dropped', async (t) => {
  const { client, sockets } = await connected(t);
  const errors = [];
  const sub = client.subscribe('admin:x', () => {}, { onError: (e) => errors.push(e.code) });
  sockets[0].replyError(sockets[0].lastOp('subscribe').id, 'forbidden');
  await assert.rejects(sub.ready, (err) => err.code === 'forbidden');
  assert.deepEqual(errors, ['forbidden']);
  assert.equal(client.subscriptions.has('admin:x'), false);
});

test('subscribe refused with a transient error (unavailable) is retried with backoff on the same connection', async (t) => {
  const { client, sockets, events } = await connected(t, { random: () => 0.5, backoff: { baseMs: 20, maxMs: 1000 } });
  const ws = sockets[0];
  const sub = client.subscribe('chat:lobby', () => {});
  ws.replyError(ws.lastOp('subscribe').id, 'unavailable', 'the backplane is unreachable');
  await waitFor(() => events.some(([e, err]) => e === 'error' && err.code === 'unavailable'));
  assert.equal(client.subscriptions.get('chat:lobby'), sub, 'still registered');
  await waitFor(() => ws.ops('subscribe').length === 2, { what: 'a second subscribe' });
  ws.replyError(ws.lastOp('subscribe').id, 'rate_limited');
  await waitFor(() => ws.ops('subscribe').length === 3, { what: 'a third subscribe' });
  ws.reply(ws.lastOp('subscribe').id, {});
  assert.deepEqual(await sub.ready, {});
  assert.equal(sub.active, true);
  await sleep(60);
  assert.equal(ws.ops('subscribe').length, 3, 'no more retries once subscribed');
});

test('a pending subscribe retry is cancelled by a reconnect (which re-subscribes once)', async (t) => {
  const { client, sockets } = await connected(t, { random: () => 0.999, backoff: { baseMs: 50, maxMs: 1000 } });
  client.subscribe('chat:lobby', () => {});
  sockets[0].replyError(sockets[0].lastOp('subscribe').id, 'unavailable');
  sockets[0].serverClose(1006);
  await waitFor(() => sockets.length === 2);
  sockets[1].welcome();
  await sleep(150);
  assert.equal(sockets[0].ops('subscribe').length, 1);
  assert.equal(sockets[1].ops('subscribe').length, 1);
});

test('subscribe: invalid names and duplicates throw', async (t) => {
  const { client } = setup(t);
  assert.throws(() => client.subscribe('bad channel!'), (e) => e.code === 'bad_request');
  client.subscribe('chat:a');
  assert.throws(() => client.subscribe('chat:a'), (e) => e.code === 'already_subscribed');
});

test('re-subscribes every subscription after a reconnect, with recover offsets for durable ones', async (t) => {
  const { client, sockets } = await connected(t);
  const ws = sockets[0];
  const plain = client.subscribe('chat:lobby', () => {});
  const durable = client.subscribe('news:eu', () => {});
  const noRecover = client.subscribe('news:us', () => {}, { recover: false });
  ws.reply(ws.sent[0].id, {});
  ws.reply(ws.sent[1].id, { epoch: 'E1', offset: 3 });
  ws.reply(ws.sent[2].id, { epoch: 'E2', offset: 10 });
  await Promise.all([plain.ready, durable.ready, noRecover.ready]);
  ws.receive({ type: 'message', channel: 'news:eu', data: 'four', offset: 4, epoch: 'E1' });
  ws.receive({ type: 'message', channel: 'news:eu', data: 'five', offset: 5, epoch: 'E1' });
  assert.deepEqual([durable.epoch, durable.offset], ['E1', 5]);

  ws.serverClose(1001, 'draining');
  assert.equal(durable.active, false);
  await waitFor(() => sockets.length === 2);
  const ws2 = sockets[1];
  ws2.welcome();
  const subs = ws2.ops('subscribe');
  const byChannel = Object.fromEntries(subs.map((f) => [f.channel, f]));
  assert.deepEqual(Object.keys(byChannel).sort(), ['chat:lobby', 'news:eu', 'news:us']);
  assert.equal(byChannel['chat:lobby'].recover, undefined);
  assert.deepEqual(byChannel['news:eu'].recover, { epoch: 'E1', offset: 5 });
  assert.equal(byChannel['news:us'].recover, undefined);
  // Re-subscribes go out before anything the app sends in its 'connected' handler.
  assert.equal(ws2.sent.slice(0, 3).every((f) => f.op === 'subscribe'), true);
});

test('recovery delivers each missed message exactly once (dedupe by offset)', async (t) => {
  const { client, sockets } = await connected(t);
  const got = [];
  const sub = client.subscribe('news:eu', (data, frame) => got.push(frame.offset));
  const ws = sockets[0];
  ws.reply(ws.lastOp('subscribe').id, { epoch: 'E1', offset: 2 });
  await sub.ready;
  for (const o of [3, 4]) ws.receive({ type: 'message', channel: 'news:eu', data: o, offset: o, epoch: 'E1' });
  ws.receive({ type: 'message', channel: 'news:eu', data: 4, offset: 4, epoch: 'E1' }); // duplicate
  ws.serverClose(1006);
  await waitFor(() => sockets.length === 2);
  const ws2 = sockets[1];
  ws2.welcome();
  const f = ws2.lastOp('subscribe');
  assert.deepEqual(f.recover, { epoch: 'E1', offset: 4 });
  // The node replays from 3 (overlap), then live ones; a live one repeats.
  ws2.reply(f.id, { epoch: 'E1', offset: 7, recovered: true });
  for (const o of [3, 4, 5, 6, 7, 7, 8]) ws2.receive({ type: 'message', channel: 'news:eu', data: o, offset: o, epoch: 'E1' });
  assert.deepEqual(got, [3, 4, 5, 6, 7, 8]);
  assert.equal(sub.duplicatesDropped, 4);
  assert.equal(sub.offset, 8);
});

test('recovered:false emits a recovery_failed gap so the app can reload', async (t) => {
  const { client, sockets } = await connected(t);
  const gaps = [];
  const failed = [];
  const got = [];
  const sub = client.subscribe('news:eu', (d, f) => got.push(f.offset), { onGap: (g) => gaps.push(g), onRecoveryFailed: (g) => failed.push(g) });
  sockets[0].reply(sockets[0].lastOp('subscribe').id, { epoch: 'E1', offset: 5 });
  await sub.ready;
  sockets[0].serverClose(4008, 'slow consumer');
  await waitFor(() => sockets.length === 2);
  sockets[1].welcome();
  const f = sockets[1].lastOp('subscribe');
  assert.deepEqual(f.recover, { epoch: 'E1', offset: 5 });
  sockets[1].reply(f.id, { epoch: 'E2', offset: 40, recovered: false });
  await waitFor(() => gaps.length === 1);
  assert.equal(gaps[0].reason, 'recovery_failed');
  assert.equal(gaps[0].previousOffset, 5);
  assert.equal(failed.length, 1);
  assert.deepEqual([sub.epoch, sub.offset], ['E2', 40]);
  sockets[1].receive({ type: 'message', channel: 'news:eu', data: 1, offset: 41, epoch: 'E2' });
  assert.deepEqual(got, [41]);
  assert.equal(gaps.length, 1, 'no further gap for the next offset');
});

test('a missing offset in the live stream is reported as a gap', async (t) => {
  const { client, sockets } = await connected(t);
  const gaps = [];
  const sub = client.subscribe('news:eu', () => {}, { onGap: (g) => gaps.push(g) });
  sockets[0].reply(sockets[0].lastOp('subscribe').id, { epoch: 'E1', offset: 1 });
  await sub.ready;
  sockets[0].receive({ type: 'message', channel: 'news:eu', data: 0, offset: 2, epoch: 'E1' });
  assert.equal(gaps.length, 0);
  sockets[0].receive({ type: 'message', channel: 'news:eu', data: 0, offset: 5, epoch: 'E1' });
  assert.deepEqual(gaps.map((g) => [g.reason, g.from, g.to]), [['missing', 3, 4]]);
});

test('unsubscribe: sends the op, stops delivery, and is not re-subscribed later', async (t) => {
  const { client, sockets } = await connected(t);
  const got = [];
  const sub = client.subscribe('chat:a', (d) => got.push(d));
  sockets[0].reply(sockets[0].lastOp('subscribe').id, {});
  await sub.ready;
  const p = sub.unsubscribe();
  const f = sockets[0].lastOp('unsubscribe');
  assert.equal(f.channel, 'chat:a');
  sockets[0].reply(f.id, {});
  await p;
  sockets[0].receive({ type: 'message', channel: 'chat:a', data: 'late' });
  assert.deepEqual(got, []);
  sockets[0].serverClose(1006);
  await waitFor(() => sockets.length === 2);
  sockets[1].welcome();
  assert.equal(sockets[1].ops('subscribe').length, 0);
});

test('join and leave events reach the subscription', async (t) => {
  const { client, sockets } = await connected(t);
  const seen = [];
  client.subscribe('chat:a', null, {
    onJoin: (c) => seen.push(['join', c.session]),
    onLeave: (c) => seen.push(['leave', c.session]),
  });
  sockets[0].receive({ type: 'join', channel: 'chat:a', client: { session: 's-9', user: 'u' } });
  sockets[0].receive({ type: 'leave', channel: 'chat:a', client: { session: 's-9' } });
  assert.deepEqual(seen, [['join', 's-9'], ['leave', 's-9']]);
});

test('app-level ping every interval; an unanswered ping drops the socket and reconnects', async (t) => {
  const { client, sockets, events } = await connected(t, { pingIntervalMs: 20, requestTimeoutMs: 40 });
  const ws = sockets[0];
  // Answered pings keep the connection.
  for (let i = 0; i < 3; i++) {
    await waitFor(() => ws.ops('ping').length > i, { what: `ping ${i + 1}` });
    ws.reply(ws.ops('ping')[i].id, {});
  }
  assert.equal(sockets.length, 1);
  assert.equal(client.state, 'connected');
  // Then the node goes silent.
  await waitFor(() => sockets.length === 2, { what: 'a reconnect after a ping timeout' });
  assert.equal(ws.closedByClient.code, 4000);
  const d = events.filter(([e]) => e === 'disconnected').pop()[1];
  assert.equal(d.reason, 'ping timeout');
  assert.equal(d.willReconnect, true);
});

test("the welcome's ping_interval_ms sets the ping period when no option is given", async (t) => {
  const { client, sockets } = setup(t);
  client.connect();
  sockets[0].welcome({ ping_interval_ms: 15 });
  for (let i = 0; i < 2; i++) {
    await waitFor(() => sockets[0].ops('ping').length > i, { timeoutMs: 300, what: `ping ${i + 1}` });
    sockets[0].reply(sockets[0].ops('ping')[i].id, {});
  }
  assert.equal(sockets.length, 1);
});

test('an exception in an application callback does not break the client', async (t) => {
  const { client, sockets } = await connected(t);
  const got = [];
  client.subscribe('chat:a', () => { throw new Error('app bug'); });
  client.on('message', (f) => got.push(f.data));
  // The client re-throws a callback's exception from a fresh task (so it shows up like any
  // uncaught error in a page); capture those tasks instead of letting them run.
  const rethrown = [];
  const realSetTimeout = globalThis.setTimeout;
  globalThis.setTimeout = (fn, ms) => { if (ms === 0) { rethrown.push(fn); return 0; } return realSetTimeout(fn, ms); };
  try {
    sockets[0].receive({ type: 'message', channel: 'chat:a', data: 1 });
    sockets[0].receive({ type: 'message', channel: 'chat:a', data: 2 });
  } finally {
    globalThis.setTimeout = realSetTimeout;
  }
  assert.deepEqual(got, [1, 2]);
  assert.equal(client.state, 'connected');
  assert.equal(rethrown.length, 2);
  assert.throws(rethrown[0], /app bug/);
});
