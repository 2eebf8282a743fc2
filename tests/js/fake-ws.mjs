// A scripted stand-in for the browser WebSocket, injected through Herald's `WebSocket`
// option. The test plays the node: open()/welcome(), receive(frame), reply(...),
// serverClose(code). Frames the client sent are parsed into `sent`.

export function makeFakeWebSocket() {
  const sockets = [];

  class FakeWebSocket {
    constructor(url) {
      this.url = url;
      this.sent = [];
      this.readyState = 0; // CONNECTING
      this.closedByClient = null;
      this.onopen = this.onmessage = this.onclose = this.onerror = null;
      sockets.push(this);
    }

    send(data) {
      if (this.readyState !== 1) throw new Error('InvalidStateError: not open');
      this.sent.push(JSON.parse(data));
    }

    close(code, reason) {
      if (this.readyState >= 2) return;
      this.closedByClient = { code, reason };
      this.readyState = 2;
      // Browsers report the close later, after the closing handshake.
      setTimeout(() => {
        this.readyState = 3;
        if (this.onclose) this.onclose({ code: code ?? 1005, reason: reason ?? '' });
      }, 5);
    }

    // ---- the node's side ----
    open() {
      this.readyState = 1;
      if (this.onopen) this.onopen({});
    }

    welcome(extra = {}) {
      this.open();
      this.receive({ type: 'welcome', session: `s-${sockets.indexOf(this)}`, node: 'node-a', ping_interval_ms: 60000, ...extra });
    }

    receive(frame) {
      if (this.onmessage) this.onmessage({ data: typeof frame === 'string' ? frame : JSON.stringify(frame) });
    }

    reply(id, result = {}) {
      this.receive({ type: 'reply', id, result });
    }

    replyError(id, code, message = code) {
      this.receive({ type: 'reply', id, error: { code, message } });
    }

    /** The node (or the network) closes the connection. */
    serverClose(code, reason = '') {
      this.readyState = 3;
      if (this.onclose) this.onclose({ code, reason });
    }

    /** The frames sent with this op. */
    ops(op) {
      return this.sent.filter((f) => f.op === op);
    }

    lastOp(op) {
      const all = this.ops(op);
      return all[all.length - 1];
    }
  }

  return { FakeWebSocket, sockets };
}

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** Poll until fn() is truthy; returns its value. */
export async function waitFor(fn, { timeoutMs = 1000, what = 'condition' } = {}) {
  const t0 = Date.now();
  for (;;) {
    const v = fn();
    if (v) return v;
    if (Date.now() - t0 > timeoutMs) throw new Error(`timed out waiting for ${what}`);
    await sleep(2);
  }
}

/** Resolves 'pending' if p has not settled after the current macrotask turn. */
export async function settledState(p) {
  let state = 'pending';
  p.then(() => { state = 'fulfilled'; }, () => { state = 'rejected'; });
  await new Promise((r) => setImmediate(r));
  return state;
}
