// Scripted stand-ins for the HTTP streaming transports (PROTOCOL.md §2.5), injected through
// Herald's `EventSource` and `fetch` options: a fake EventSource (GET /sse) and a fake
// fetch that answers POST /stream with a body the test writes into and POST /emulation
// with a status the test chooses. The test plays the node, as with fake-ws.mjs: each
// session (an EventSource or a /stream response) has welcome(), frame(), reply(),
// closeFrame(code), fail(), and `sent`: the frames posted to /emulation for it.

const encoder = new TextEncoder();

export function makeFakeHttp() {
  const sessions = []; // every session opened, SSE and http-stream, in order
  const posts = []; // every POST /emulation: { url, body, status }
  const calls = []; // every fetch: { url, init }
  const hooks = {
    /** Status for a POST /stream (200 opens the stream); 'network' rejects the fetch. */
    streamStatus: () => 200,
    /**
     * Status for a POST /emulation (default: 202 for a known session and key, else 404);
     * 'network' rejects the fetch. May return a promise.
     */
    emulation: null,
  };
  let n = 0;

  class FakeSession {
    constructor(transport, url) {
      this.transport = transport;
      this.url = url;
      this.index = n++;
      this.session = `s-${transport}-${this.index}`;
      this.key = `key-${this.index}`;
      this.node = 'node-a';
      this.sent = [];
      this.ended = false;
      sessions.push(this);
    }

    welcome(extra = {}) {
      this.frame({
        type: 'welcome', session: this.session, node: this.node, ping_interval_ms: 60000,
        transport: this.transport, key: this.key, ...extra,
      });
    }

    frame(f) { this.write(typeof f === 'string' ? f : JSON.stringify(f)); }
    reply(id, result = {}) { this.frame({ type: 'reply', id, result }); }
    replyError(id, code, message = code) { this.frame({ type: 'reply', id, error: { code, message } }); }

    /** The last frame of a session (§2.5), then the end of the response. */
    closeFrame(code, reason = '') {
      this.frame({ type: 'close', code, reason });
      this.finish();
    }

    ops(op) { return this.sent.filter((f) => f.op === op); }
    lastOp(op) { const all = this.ops(op); return all[all.length - 1]; }
  }

  class FakeEventSource extends FakeSession {
    constructor(url) {
      super('sse', url);
      this.readyState = 0;
      this.closedByClient = false;
      this.onmessage = this.onerror = this.onopen = null;
    }

    close() { this.closedByClient = true; this.readyState = 2; }

    write(text) {
      if (this.readyState === 2 || this.ended) return;
      this.readyState = 1;
      if (this.onmessage) this.onmessage({ data: text });
    }

    /** The response ended: a real EventSource reports an error (and would reconnect). */
    finish() {
      this.ended = true;
      if (this.readyState !== 2 && this.onerror) { this.readyState = 0; this.onerror({}); }
    }

    /** The connection broke (or the request was refused: an EventSource cannot tell). */
    fail() { this.finish(); }
  }

  class FakeStream extends FakeSession {
    constructor(url, init) {
      super('http-stream', url);
      this.init = init;
      this.headers = init.headers || {};
      this.aborted = false;
      this.body = new ReadableStream({ start: (c) => { this.controller = c; } });
      if (init.signal) {
        init.signal.addEventListener('abort', () => {
          this.aborted = true;
          this.ended = true;
          try { this.controller.error(new DOMException('aborted', 'AbortError')); } catch { /* closed */ }
        });
      }
    }

    /** Raw bytes of the body (to split a frame across chunks, say). */
    raw(text) {
      if (this.ended) return;
      this.controller.enqueue(encoder.encode(text));
    }

    write(text) { this.raw(text + '\n'); }
    keepAlive() { this.raw('\n'); }

    finish() {
      if (this.ended) return;
      this.ended = true;
      this.controller.close();
    }

    fail() {
      if (this.ended) return;
      this.ended = true;
      this.controller.error(new TypeError('network error'));
    }
  }

  function sessionOf(body) {
    return sessions.find((s) => s.session === body.session && s.key === body.key && s.node === body.node);
  }

  async function fetch(url, init = {}) {
    calls.push({ url, init });
    const path = new URL(url).pathname;
    if (path.endsWith('/stream') && init.method === 'POST') {
      const status = await hooks.streamStatus(url, init);
      if (status === 'network') throw new TypeError('fetch failed');
      if (status !== 200) return new Response('{"error":{"code":"unavailable","message":"no"}}', { status });
      const s = new FakeStream(url, init);
      return new Response(s.body, { status: 200, headers: { 'content-type': 'application/x-ndjson' } });
    }
    if (path.endsWith('/emulation') && init.method === 'POST') {
      const body = JSON.parse(init.body);
      const target = sessionOf(body);
      const status = hooks.emulation ? await hooks.emulation(body, target) : target && !target.ended ? 202 : 404;
      posts.push({ url, body, status });
      if (status === 'network') throw new TypeError('fetch failed');
      if (status === 202 && target) target.sent.push(typeof body.frame === 'string' ? JSON.parse(body.frame) : body.frame);
      return new Response(status === 202 ? '{}' : '{"error":{"code":"x","message":"x"}}', { status });
    }
    return new Response('not found', { status: 404 });
  }

  return {
    fetch, FakeEventSource, sessions, posts, calls, hooks,
    /** Sessions of one transport, in order. */
    of: (transport) => sessions.filter((s) => s.transport === transport),
    last: () => sessions[sessions.length - 1],
  };
}
