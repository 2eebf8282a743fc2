// Transport choice and the HTTP streaming transports (PROTOCOL.md §2.5) of the client:
// falling back from a WebSocket that cannot be established, SSE and http-stream sessions
// with ops posted to /emulation, close frames, and trying the WebSocket again later.
// The node is played by fake-ws.mjs and fake-http.mjs.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Herald, buildHttpUrl } from '../../static/herald.mjs';
import { makeFakeWebSocket, sleep, waitFor } from './fake-ws.mjs';
import { makeFakeHttp } from './fake-http.mjs';

const URL_ = 'ws://127.0.0.1:9999/ws';

/** A client with every transport faked; closed after the test. */
function setup(t, options = {}) {
  const { FakeWebSocket, sockets } = makeFakeWebSocket();
  const http = makeFakeHttp();
  const client = new Herald(URL_, {
    WebSocket: FakeWebSocket,
    EventSource: http.FakeEventSource,
    fetch: http.fetch,
    random: () => 0, // reconnect at once
    requestTimeoutMs: 300,
    ...options,
  });
  const events = [];
  for (const ev of ['connecting', 'connected', 'disconnected', 'error']) {
    client.on(ev, (arg) => events.push([ev, arg]));
  }
  t.after(() => client.close());
  return { client, sockets, http, events };
}

/** The WebSocket attempts fail the way a proxy's refused upgrade looks in a browser. */
async function refuseWebSockets(sockets, count) {
  for (let i = 0; i < count; i++) {
    await waitFor(() => sockets[i], { what: `WebSocket attempt ${i}` });
    sockets[i].serverClose(1006, '');
  }
}

/** The latest event of this name, or undefined. */
function lastEvent(events, name) {
  const all = events.filter(([e]) => e === name);
  return all.length ? all[all.length - 1][1] : undefined;
}

/** Connected over SSE after two refused WebSocket attempts. */
async function onSse(t, options) {
  const ctx = setup(t, options);
  const p = ctx.client.connect();
  await refuseWebSockets(ctx.sockets, 2);
  const es = await waitFor(() => ctx.http.of('sse')[0], { what: 'an EventSource' });
  es.welcome();
  await p;
  return { ...ctx, es };
}

test('HTTP endpoint URLs: siblings of the WebSocket endpoint, ws(s) → http(s); httpUrl overrides', () => {
  assert.equal(buildHttpUrl('ws://h:1/ws', 'sse'), 'http://h:1/sse');
  assert.equal(buildHttpUrl('wss://h/herald/ws?x=1', 'stream'), 'https://h/herald/stream?x=1');
  assert.equal(buildHttpUrl('wss://h/herald/ws?x=1', 'emulation', { token: 't' }), 'https://h/herald/emulation');
  assert.equal(buildHttpUrl('https://h/ws', 'sse', { token: 'a/b' }), 'https://h/sse?token=a%2Fb');
  assert.equal(buildHttpUrl('wss://h/ws', 'sse', { httpUrl: 'https://other/base/' }), 'https://other/base/sse');
  assert.equal(buildHttpUrl('wss://h/ws', 'emulation', { httpUrl: 'https://other' }), 'https://other/emulation');
  globalThis.location = { href: 'https://app.example.com/chat/index.html' };
  try {
    assert.equal(buildHttpUrl('/ws', 'sse', { token: 'x' }), 'https://app.example.com/sse?token=x');
    assert.equal(buildHttpUrl('/ws', 'emulation', { httpUrl: '/herald' }), 'https://app.example.com/herald/emulation');
  } finally {
    delete globalThis.location;
  }
});

test('transports: unknown names are refused; the default is all three, WebSocket first', (t) => {
  assert.throws(() => new Herald(URL_, { transports: ['websocket', 'long-polling'] }), TypeError);
  assert.throws(() => new Herald(URL_, { transports: [] }), TypeError);
  assert.deepEqual(new Herald(URL_).options.transports, ['websocket', 'sse', 'http-stream']);
  assert.deepEqual(Herald.transports, ['websocket', 'sse', 'http-stream']);
  const { client } = setup(t);
  assert.equal(client.transport, null);
});

test('two refused WebSocket upgrades in a row: falls back to SSE, same API and events', async (t) => {
  const { client, sockets, http, events } = setup(t, { token: 'tok' });
  const p = client.connect();
  assert.equal(client.transport, 'websocket');
  await refuseWebSockets(sockets, 2);
  const es = await waitFor(() => http.of('sse')[0], { what: 'an EventSource' });
  assert.equal(es.url, 'http://127.0.0.1:9999/sse?token=tok');
  assert.equal(client.transport, 'sse');
  assert.equal(sockets.length, 2, 'no third WebSocket');
  es.welcome({ node: 'node-a' });
  const welcome = await p;
  assert.equal(welcome.transport, 'sse');
  assert.equal(client.state, 'connected');
  assert.equal(client.node, 'node-a');
  assert.deepEqual(events.filter(([e]) => e === 'connecting').map(([, a]) => a.transport), ['websocket', 'websocket', 'sse']);

  // Ops are posted to /emulation with the welcome's node, session and key; replies come on the stream.
  const got = [];
  const sub = client.subscribe('chat:a', (data) => got.push(data));
  const f = await waitFor(() => es.lastOp('subscribe'), { what: 'subscribe posted' });
  const post = http.posts.find((x) => x.body.frame.op === 'subscribe');
  assert.equal(post.url, 'http://127.0.0.1:9999/emulation');
  assert.deepEqual(Object.keys(post.body), ['node', 'session', 'key', 'frame']);
  assert.deepEqual([post.body.node, post.body.session, post.body.key], ['node-a', es.session, es.key]);
  const postCall = http.calls.find((c) => c.url.endsWith('/emulation'));
  assert.equal(postCall.init.headers['Content-Type'], 'application/json');
  es.reply(f.id, { epoch: 'E', offset: 3 });
  assert.deepEqual(await sub.ready, { epoch: 'E', offset: 3 });
  es.frame({ type: 'message', channel: 'chat:a', data: 'm4', offset: 4, epoch: 'E' });
  assert.deepEqual(got, ['m4']);

  const pub = client.publish('chat:a', { x: 1 });
  const pf = await waitFor(() => es.lastOp('publish'), { what: 'publish posted' });
  assert.deepEqual(pf.data, { x: 1 });
  es.reply(pf.id, { epoch: 'E', offset: 5 });
  assert.deepEqual(await pub, { epoch: 'E', offset: 5 });
});

test('one failed WebSocket attempt is not enough to fall back', async (t) => {
  const { client, sockets, http } = setup(t);
  const p = client.connect();
  await refuseWebSockets(sockets, 1);
  await waitFor(() => sockets[1], { what: 'a second WebSocket' });
  sockets[1].welcome();
  await p;
  assert.equal(client.transport, 'websocket');
  // Failures that are not in a row do not add up.
  sockets[1].serverClose(1006);
  await waitFor(() => sockets[2]);
  sockets[2].serverClose(1006);
  await waitFor(() => sockets[3]);
  sockets[3].welcome();
  await waitFor(() => client.state === 'connected');
  assert.equal(client.transport, 'websocket');
  assert.equal(http.sessions.length, 0);
});

test('no welcome within openTimeoutMs, twice: falls back', async (t) => {
  const { client, sockets, http } = setup(t, { openTimeoutMs: 40 });
  const p = client.connect();
  sockets[0].open(); // the upgrade passed, but no welcome frame ever comes
  await waitFor(() => sockets[1], { what: 'a second attempt after the open timeout' });
  assert.deepEqual(sockets[0].closedByClient.code, 4000);
  await waitFor(() => http.of('sse')[0], { what: 'an EventSource after two timeouts' });
  http.of('sse')[0].welcome();
  await p;
  assert.equal(client.transport, 'sse');
});

test('SSE: an error closes the EventSource; the client reconnects itself, on SSE, and recovers', async (t) => {
  const { client, sockets, http, es, events } = await onSse(t);
  const got = [];
  client.subscribe('news:eu', (d) => got.push(d));
  const f = await waitFor(() => es.lastOp('subscribe'));
  es.reply(f.id, { epoch: 'E', offset: 7 });
  es.frame({ type: 'message', channel: 'news:eu', data: 8, offset: 8, epoch: 'E' });
  es.fail();
  assert.equal(es.closedByClient, true, 'never left to reconnect by itself');
  assert.equal(lastEvent(events, 'disconnected').code, 1006);
  const es2 = await waitFor(() => http.of('sse')[1], { what: 'a new EventSource' });
  assert.equal(sockets.length, 2, 'stays on SSE after it worked');
  es2.welcome();
  const f2 = await waitFor(() => es2.lastOp('subscribe'));
  assert.deepEqual(f2.recover, { epoch: 'E', offset: 8 });
  es2.reply(f2.id, { epoch: 'E', offset: 10, recovered: true });
  for (const o of [8, 9, 10]) es2.frame({ type: 'message', channel: 'news:eu', data: o, offset: o, epoch: 'E' });
  assert.deepEqual(got, [8, 9, 10], 'each offset once');
  // A late event of the old EventSource is ignored.
  es.frame({ type: 'message', channel: 'news:eu', data: 'stale', offset: 11, epoch: 'E' });
  assert.deepEqual(got, [8, 9, 10]);
});

test('a close frame is the WebSocket close with that code', async (t) => {
  await t.test('1001: reconnect (with jitter) and recover', async (t) => {
    const { client, http, es, events } = await onSse(t);
    es.closeFrame(1001, 'draining');
    const d = lastEvent(events, 'disconnected');
    assert.deepEqual([d.code, d.reason, d.willReconnect], [1001, 'draining', true]);
    assert.equal(es.closedByClient, true);
    const es2 = await waitFor(() => http.of('sse')[1]);
    es2.welcome();
    await waitFor(() => client.state === 'connected');
  });
  await t.test('4008: reconnect', async (t) => {
    const { http, es, events } = await onSse(t);
    es.closeFrame(4008, 'slow consumer');
    assert.deepEqual([lastEvent(events, 'disconnected').code, lastEvent(events, 'disconnected').willReconnect], [4008, true]);
    await waitFor(() => http.of('sse')[1]);
  });
  await t.test('4001: a new token from getToken, then reconnect', async (t) => {
    let n = 0;
    const { http, es } = await onSse(t, { getToken: () => `t${++n}` });
    assert.match(es.url, /\/sse\?token=t3$/); // t1 and t2 went to the refused WebSockets
    es.closeFrame(4001, 'token expired');
    const es2 = await waitFor(() => http.of('sse')[1]);
    assert.match(es2.url, /\/sse\?token=t4$/);
  });
  await t.test('1008: stops', async (t) => {
    const { client, http, es } = await onSse(t);
    es.closeFrame(1008, 'policy');
    assert.equal(client.state, 'closed');
    await sleep(20);
    assert.equal(http.of('sse').length, 1);
  });
});

test('http-stream forced: POST /stream with a Bearer token, lines across chunks, keep-alives skipped', async (t) => {
  const { client, sockets, http, events } = setup(t, { transports: ['http-stream'], token: 'tok' });
  const p = client.connect();
  const s = await waitFor(() => http.of('http-stream')[0], { what: 'a POST /stream' });
  assert.equal(sockets.length, 0, 'no WebSocket');
  assert.equal(s.url, 'http://127.0.0.1:9999/stream');
  assert.equal(s.headers.Authorization, 'Bearer tok');
  assert.equal(client.transport, 'http-stream');
  s.keepAlive();
  s.welcome();
  await p;
  const got = [];
  client.subscribe('chat:a', (d) => got.push(d));
  const f = await waitFor(() => s.lastOp('subscribe'));
  s.reply(f.id, {});
  const line = JSON.stringify({ type: 'message', channel: 'chat:a', data: 'split' });
  s.raw(line.slice(0, 10));
  s.raw(line.slice(10) + '\r\n\n');
  s.keepAlive();
  s.frame({ type: 'message', channel: 'chat:a', data: 'next' });
  await waitFor(() => got.length === 2, { what: 'two messages' });
  assert.deepEqual(got, ['split', 'next']);
  assert.equal(events.filter(([e]) => e === 'error').length, 0, 'empty lines are not frames');

  // A response that ends without a close frame is a dropped connection.
  s.finish();
  await waitFor(() => events.some(([e, a]) => e === 'disconnected' && a.code === 1006));
  const s2 = await waitFor(() => http.of('http-stream')[1], { what: 'a new POST /stream' });
  s2.welcome();
  await waitFor(() => client.state === 'connected');
  assert.equal(sockets.length, 0);
});

test('http-stream: a refused POST /stream is a failed attempt; closing aborts the fetch', async (t) => {
  const { client, http } = setup(t, { transports: ['http-stream'] });
  let refuse = 2;
  http.hooks.streamStatus = () => (refuse-- > 0 ? 503 : 200);
  const p = client.connect();
  const s = await waitFor(() => http.of('http-stream')[0], { what: 'a stream after two refusals' });
  s.welcome();
  await p;
  assert.equal(http.calls.filter((c) => c.url.endsWith('/stream')).length, 3);
  client.close();
  assert.equal(s.aborted, true);
});

test('/emulation: frames are posted one at a time, in order', async (t) => {
  const { client, http, es } = await onSse(t);
  const gates = [];
  http.hooks.emulation = (body, target) => new Promise((resolve) => gates.push(() => resolve(target ? 202 : 404)));
  const p1 = client.publish('chat:a', 1);
  const p2 = client.publish('chat:a', 2);
  const p3 = client.publish('chat:a', 3);
  await waitFor(() => gates.length === 1);
  await sleep(10);
  assert.equal(gates.length, 1, 'the second waits for the first answer');
  gates[0]();
  await waitFor(() => gates.length === 2);
  gates[1]();
  await waitFor(() => gates.length === 3);
  gates[2]();
  await waitFor(() => es.ops('publish').length === 3);
  assert.deepEqual(es.ops('publish').map((f) => f.data), [1, 2, 3]);
  for (const f of es.ops('publish')) es.reply(f.id, {});
  await Promise.all([p1, p2, p3]);
});

test('/emulation 429: that request is rate_limited; later ones go on', async (t) => {
  const { client, http, es } = await onSse(t);
  let first = true;
  http.hooks.emulation = (body, target) => { if (first) { first = false; return 429; } return 202; };
  const p1 = client.publish('chat:a', 1);
  const p2 = client.publish('chat:a', 2);
  await assert.rejects(p1, (err) => err.code === 'rate_limited' && err.op === 'publish');
  const f = await waitFor(() => es.lastOp('publish'));
  assert.equal(f.data, 2);
  es.reply(f.id, {});
  await p2;
  assert.equal(client.state, 'connected');
});

test('/emulation 503 and network errors: the post is retried; after a few tries the request gets unavailable', async (t) => {
  const { client, http, es } = await onSse(t, { requestTimeoutMs: 5000 });
  const script = [503, 'network', 202];
  http.hooks.emulation = () => script.shift() ?? 503;
  const p = client.publish('chat:a', 'x');
  const f = await waitFor(() => es.lastOp('publish'), { timeoutMs: 3000, what: 'the third try accepted' });
  assert.equal(http.posts.length, 3);
  es.reply(f.id, { ok: 1 });
  assert.deepEqual(await p, { ok: 1 });

  // Always 503: four tries (200 + 500 + 1000 ms apart), then 'unavailable'.
  const t0 = Date.now();
  await assert.rejects(client.publish('chat:a', 'y'), (err) => err.code === 'unavailable');
  assert.equal(http.posts.length, 3 + 4);
  assert.ok(Date.now() - t0 >= 1600, `gave up after ${Date.now() - t0} ms`);
  assert.equal(client.state, 'connected', 'the session itself is fine');
});

test('/emulation 504: the frame may have arrived, so it is not posted again; the reply still resolves the request', async (t) => {
  const { client, http, es } = await onSse(t, { requestTimeoutMs: 5000 });
  http.hooks.emulation = (body, target) => {
    // The node relayed the frame but its answer was lost.
    target.sent.push(body.frame);
    return 504;
  };
  const p = client.publish('chat:a', 'once');
  const f = await waitFor(() => es.lastOp('publish'));
  await new Promise((r) => setTimeout(r, 300));
  assert.equal(http.posts.length, 1, 'not posted again');
  es.reply(f.id, { ok: 1 });
  assert.deepEqual(await p, { ok: 1 });
});

for (const status of [404, 410]) {
  test(`/emulation ${status}: the session is gone, reconnect and recover`, async (t) => {
    const { client, http, es, events } = await onSse(t);
    http.hooks.emulation = () => status;
    const p = client.publish('chat:a', 1);
    await assert.rejects(p, (err) => err.code === 'disconnected');
    const d = lastEvent(events, 'disconnected');
    assert.equal(d.willReconnect, true);
    assert.match(d.reason, new RegExp(`HTTP ${status}`));
    assert.equal(es.closedByClient, true);
    http.hooks.emulation = null;
    const es2 = await waitFor(() => http.of('sse')[1]);
    es2.welcome();
    await waitFor(() => client.state === 'connected');
  });
}

test('a stream silent for two ping intervals is dead: reconnect', async (t) => {
  const { client, sockets, http, events } = setup(t, { transports: ['http-stream'], pingIntervalMs: 40, requestTimeoutMs: 5000 });
  const p = client.connect();
  const s = await waitFor(() => http.of('http-stream')[0]);
  s.welcome({ ping_interval_ms: 40 });
  await p;
  // Keep-alives (empty lines) keep it alive, though no ping is answered;
  http.hooks.emulation = () => 202; // accepted, never answered on the stream
  for (let i = 0; i < 4; i++) { await sleep(30); s.keepAlive(); }
  assert.equal(http.of('http-stream').length, 1);
  // then silence: dropped after 2 × 40 ms (plus the check period), and a new stream.
  const s2 = await waitFor(() => http.of('http-stream')[1], { timeoutMs: 2000, what: 'a new stream after silence' });
  assert.equal(s.aborted, true);
  assert.match(lastEvent(events, 'disconnected').reason, /stream silent for 80 ms/);
  assert.equal(sockets.length, 0);
  s2.welcome();
  await waitFor(() => client.state === 'connected');
});

test('every transport failing: tried in turn, twice each, then the WebSocket again', async (t) => {
  const { client, sockets, http, events } = setup(t);
  http.hooks.streamStatus = () => 'network';
  client.connect();
  await refuseWebSockets(sockets, 2);
  (await waitFor(() => http.of('sse')[0])).fail();
  (await waitFor(() => http.of('sse')[1])).fail();
  await waitFor(() => sockets[2], { what: 'back to the WebSocket after both http-stream attempts' });
  const order = events.filter(([e]) => e === 'connecting').map(([, a]) => a.transport);
  assert.deepEqual(order, ['websocket', 'websocket', 'sse', 'sse', 'http-stream', 'http-stream', 'websocket']);
});

test('transports without an implementation here are skipped', async (t) => {
  const { client, sockets, http } = setup(t, { EventSource: null });
  client._EventSource = undefined; // as in Node 20: no EventSource
  const p = client.connect();
  await refuseWebSockets(sockets, 2);
  const s = await waitFor(() => http.of('http-stream')[0], { what: 'http-stream, SSE being unavailable' });
  s.welcome();
  await p;
  assert.equal(client.transport, 'http-stream');
});

test('the WebSocket is tried again at the first reconnect fallbackRetryMs after the fallback', async (t) => {
  const { client, sockets, http, es } = await onSse(t, { fallbackRetryMs: 150 });
  // A reconnect soon after: still SSE.
  es.fail();
  const es2 = await waitFor(() => http.of('sse')[1]);
  assert.equal(sockets.length, 2);
  es2.welcome();
  await waitFor(() => client.state === 'connected');
  await sleep(200);
  // Later: the WebSocket first; it works now, so the client is back on it.
  es2.fail();
  await waitFor(() => sockets[2], { what: 'a WebSocket attempt after fallbackRetryMs' });
  assert.equal(client.transport, 'websocket');
  sockets[2].welcome();
  await waitFor(() => client.state === 'connected');
  assert.equal(client.transport, 'websocket');
  assert.equal(http.of('sse').length, 2);
});

test('the WebSocket tried again and still refused: back on SSE after two attempts', async (t) => {
  const { client, sockets, http, es } = await onSse(t, { fallbackRetryMs: 0 });
  es.fail();
  (await waitFor(() => sockets[2])).serverClose(1006);
  (await waitFor(() => sockets[3])).serverClose(1006);
  const es2 = await waitFor(() => http.of('sse')[1]);
  es2.welcome();
  await waitFor(() => client.state === 'connected');
  assert.equal(client.transport, 'sse');
});

test('a fallback that failed too before it worked (an outage, not a blocked WebSocket): the next reconnect tries the WebSocket', async (t) => {
  const { client, sockets, http } = setup(t); // fallbackRetryMs: the default 5 minutes
  client.connect();
  await refuseWebSockets(sockets, 2);
  (await waitFor(() => http.of('sse')[0])).fail(); // the node is down: SSE fails as well
  const es = await waitFor(() => http.of('sse')[1]);
  es.welcome(); // ...and is back
  await waitFor(() => client.state === 'connected');
  assert.equal(client.transport, 'sse');
  es.fail();
  const ws = await waitFor(() => sockets[2], { what: 'a WebSocket attempt at the next reconnect' });
  ws.welcome();
  await waitFor(() => client.state === 'connected');
  assert.equal(client.transport, 'websocket');
  assert.equal(http.of('sse').length, 2);
});

test('a fallback that worked at once (a blocked WebSocket) is kept at the next reconnect', async (t) => {
  const { client, sockets, http, es } = await onSse(t);
  es.closeFrame(1001, 'draining');
  const es2 = await waitFor(() => http.of('sse')[1]);
  assert.equal(sockets.length, 2, 'no WebSocket tried within fallbackRetryMs');
  es2.welcome();
  await waitFor(() => client.state === 'connected');
  assert.equal(client.transport, 'sse');
});
