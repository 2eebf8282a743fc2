/*!
 * herald.js — browser (and Node) client for the Herald WebSocket gateway, protocol v1.
 *
 * Transports: a WebSocket (PROTOCOL.md §2), or where one cannot be established, Server-Sent
 * Events or a fetch stream with ops posted to /emulation (§2.5), chosen by itself.
 * No dependencies, no build step. This file is a classic script: loading it with
 * <script src="/herald.js"></script> defines the global `Herald`. For ES modules, import
 * `herald.mjs` beside it, which loads this file and re-exports the same class.
 * Reference: docs/CLIENT.md. Wire contract: docs/PROTOCOL.md.
 */
(function (root) {
  'use strict';

  var DEFAULT_REQUEST_TIMEOUT_MS = 10000;
  var DEFAULT_PING_INTERVAL_MS = 25000;
  var DEFAULT_BACKOFF = { baseMs: 500, maxMs: 30000 };
  var CHANNEL_RE = /^[A-Za-z0-9_\-:.@/=,]{1,255}$/;
  // Subscribe refusals that may pass on a later try (PROTOCOL.md §2.3); others are final.
  var RETRYABLE = { unavailable: true, rate_limited: true, internal: true };
  /** Every transport, in the default order of preference (PROTOCOL.md §2, §2.5). */
  var TRANSPORTS = ['websocket', 'sse', 'http-stream'];
  /** An attempt that has no welcome frame this long after it started has failed. */
  var DEFAULT_OPEN_TIMEOUT_MS = 5000;
  /** Consecutive failed attempts on one transport before the next one is tried. */
  var FALLBACK_AFTER = 2;
  /** After falling back, the first transport is tried again at the first reconnect this much later. */
  var DEFAULT_FALLBACK_RETRY_MS = 5 * 60 * 1000;
  /** Waits before the retries of a POST /emulation answered 5xx or not answered at all. */
  var POST_RETRY_DELAYS_MS = [200, 500, 1000];

  /** An error with a stable `code`: a protocol code (PROTOCOL.md §2.3) or a client one. */
  class HeraldError extends Error {
    constructor(code, message, extra) {
      super(message || code);
      this.name = 'HeraldError';
      this.code = code;
      if (extra) Object.assign(this, extra);
    }
  }

  /**
   * Reconnect delay with "full jitter": a random integer in [0, min(maxMs, baseMs * 2^attempt)).
   * `attempt` is 0 for the first reconnect after a good connection.
   */
  function backoffDelay(attempt, backoff, random) {
    var b = backoff || DEFAULT_BACKOFF;
    var baseMs = b.baseMs != null ? b.baseMs : DEFAULT_BACKOFF.baseMs;
    var maxMs = b.maxMs != null ? b.maxMs : DEFAULT_BACKOFF.maxMs;
    var n = Math.floor(Number(attempt)) || 0;
    var cap = Math.min(maxMs, baseMs * Math.pow(2, Math.max(0, n)));
    if (!(cap > 0)) return 0;
    var r = (random || Math.random)();
    if (!(r >= 0)) r = 0;
    if (r >= 1) r = 0.9999999999;
    return Math.floor(r * cap);
  }

  /**
   * What to do when the socket closed with `code` (PROTOCOL.md §2.4):
   * 'stop' (do not reconnect), 'reconnect', or 'refresh_token' (get a new token, reconnect).
   * A close the application asked for (close()) always stops.
   */
  function closeAction(code, clientInitiated) {
    if (clientInitiated) return 'stop';
    switch (code) {
      case 1000: // normal close: nothing to do
      case 1008: // policy violation: do not reconnect blindly
      case 1009: // frame too large: a client bug, reconnecting would repeat it
        return 'stop';
      case 4001: // token expired and not refreshed
        return 'refresh_token';
      default: // 1001 draining, 1006 abnormal, 1011 internal, 4008 slow consumer / gap, others
        return 'reconnect';
    }
  }

  /** The WebSocket URL to open: relative URLs resolve against the page, http(s) becomes ws(s). */
  function buildUrl(url, token) {
    var loc = root.location && root.location.href ? root.location.href : undefined;
    var u;
    try {
      u = loc ? new URL(url, loc) : new URL(url);
    } catch (e) {
      throw new HeraldError('bad_request', 'invalid WebSocket URL: ' + url);
    }
    if (u.protocol === 'http:') u.protocol = 'ws:';
    else if (u.protocol === 'https:') u.protocol = 'wss:';
    if (token != null && token !== '') u.searchParams.set('token', String(token));
    return u.toString();
  }

  /**
   * The URL of an HTTP endpoint ('sse', 'stream' or 'emulation', PROTOCOL.md §2.5) of the node
   * whose WebSocket endpoint is `url`: ws(s) becomes http(s) and the endpoint replaces the
   * last path segment (`wss://h/ws` → `https://h/sse`), keeping the query. With
   * `options.httpUrl` the endpoint is appended to that base instead (`/herald` →
   * `/herald/sse`). `options.token` is added as `?token=`. 'emulation' gets no query.
   */
  function buildHttpUrl(url, endpoint, options) {
    var o = options || {};
    var loc = root.location && root.location.href ? root.location.href : undefined;
    var base = o.httpUrl != null && o.httpUrl !== '' ? o.httpUrl : url;
    var u;
    try {
      u = loc ? new URL(base, loc) : new URL(base);
    } catch (e) {
      throw new HeraldError('bad_request', 'invalid URL: ' + base);
    }
    if (u.protocol === 'ws:') u.protocol = 'http:';
    else if (u.protocol === 'wss:') u.protocol = 'https:';
    if (o.httpUrl != null && o.httpUrl !== '') u.pathname = u.pathname.replace(/\/+$/, '') + '/' + endpoint;
    else u.pathname = u.pathname.replace(/[^/]*$/, '') + endpoint;
    u.hash = '';
    if (endpoint === 'emulation') u.search = '';
    else if (o.token != null && o.token !== '') u.searchParams.set('token', String(o.token));
    return u.toString();
  }

  function callSafely(fn, self, args) {
    try {
      return fn.apply(self, args);
    } catch (err) {
      // A throwing application callback must not break the client; surface it like any
      // uncaught error (window.onerror / the console), outside our call stack.
      setTimeout(function () { throw err; }, 0);
    }
  }

  class Emitter {
    constructor() { this._listeners = new Map(); }
    /** Add a listener; returns a function that removes it. */
    on(event, fn) {
      if (typeof fn !== 'function') throw new TypeError('listener must be a function');
      var set = this._listeners.get(event);
      if (!set) { set = new Set(); this._listeners.set(event, set); }
      set.add(fn);
      var self = this;
      return function () { self.off(event, fn); };
    }
    off(event, fn) {
      var set = this._listeners.get(event);
      if (set) set.delete(fn);
    }
    _emit(event) {
      var set = this._listeners.get(event);
      if (!set || set.size === 0) return false;
      var args = Array.prototype.slice.call(arguments, 1);
      Array.from(set).forEach(function (fn) { callSafely(fn, null, args); }, this);
      return true;
    }
  }

  /** One subscribed channel. Made by Herald#subscribe. */
  class Subscription extends Emitter {
    constructor(client, channel, onMessage, opts) {
      super();
      this.client = client;
      this.channel = channel;
      this.recover = opts.recover !== false;
      /** Durable channels: the epoch and the last offset seen (null until known). */
      this.epoch = null;
      this.offset = null;
      /** True between a subscribe reply and the end of the connection. */
      this.active = false;
      /** Messages dropped because their offset was already seen. */
      this.duplicatesDropped = 0;
      /** The result of the latest subscribe reply. */
      this.lastReply = null;
      this._closed = false;
      this._recovering = false;
      this._retries = 0;
      this._retryTimer = null;
      if (typeof onMessage === 'function') this.on('message', onMessage);
      if (typeof opts.onJoin === 'function') this.on('join', opts.onJoin);
      if (typeof opts.onLeave === 'function') this.on('leave', opts.onLeave);
      if (typeof opts.onGap === 'function') this.on('gap', opts.onGap);
      if (typeof opts.onRecoveryFailed === 'function') {
        var cb = opts.onRecoveryFailed;
        this.on('gap', function (info) { if (info.reason === 'recovery_failed') cb(info); });
      }
      if (typeof opts.onError === 'function') this.on('error', opts.onError);
      if (typeof opts.onSubscribed === 'function') this.on('subscribed', opts.onSubscribed);
      var self = this;
      this.ready = new Promise(function (resolve, reject) {
        self._resolveReady = resolve;
        self._rejectReady = reject;
      });
      this.ready.catch(function () {}); // a refusal is also an 'error' event; never unhandled
    }

    /** Stop receiving; resolves when the node confirmed (or at once when not connected). */
    unsubscribe() {
      return this.client._unsubscribe(this);
    }

    /** Recover frame for a re-subscribe, or null. */
    _recoverFrame() {
      if (!this.recover || this.epoch == null || this.offset == null) return null;
      return { epoch: this.epoch, offset: this.offset };
    }

    _onSubscribed(result, recovering) {
      this.active = true;
      this._recovering = false;
      this.lastReply = result;
      var durable = result && result.epoch != null && typeof result.offset === 'number';
      if (durable) {
        if (recovering && result.recovered === false) {
          var info = {
            reason: 'recovery_failed', channel: this.channel,
            epoch: result.epoch, offset: result.offset,
            previousEpoch: this.epoch, previousOffset: this.offset,
          };
          this.epoch = result.epoch;
          this.offset = result.offset;
          this._emit('gap', info);
        } else if (recovering) {
          // recovered: the node sends every message after our offset, before newer ones;
          // our offset advances as they arrive (they may come after this reply).
          if (result.epoch !== this.epoch) {
            var prev = this.epoch;
            this.epoch = result.epoch;
            this.offset = result.offset;
            this._emit('gap', { reason: 'epoch_changed', channel: this.channel, epoch: result.epoch, offset: result.offset, previousEpoch: prev });
          }
        } else if (this.epoch !== result.epoch || this.offset == null) {
          this.epoch = result.epoch;
          this.offset = result.offset;
        } else {
          this.offset = Math.max(this.offset, result.offset);
        }
      }
      this._emit('subscribed', result, { recovering: recovering });
      if (this._resolveReady) {
        var r = this._resolveReady;
        this._resolveReady = this._rejectReady = null;
        r(result);
      }
    }

    _fail(err) {
      this.active = false;
      this._closed = true;
      this._emit('error', err);
      if (this._rejectReady) {
        var r = this._rejectReady;
        this._resolveReady = this._rejectReady = null;
        r(err);
      }
    }

    _deliver(frame) {
      if (typeof frame.offset === 'number' && frame.epoch != null) {
        if (this.epoch == null || this.offset == null) {
          this.epoch = frame.epoch;
          this.offset = frame.offset;
        } else if (frame.epoch !== this.epoch) {
          var prev = this.epoch;
          this.epoch = frame.epoch;
          this.offset = frame.offset;
          this._emit('gap', { reason: 'epoch_changed', channel: this.channel, epoch: frame.epoch, offset: frame.offset, previousEpoch: prev });
        } else if (frame.offset <= this.offset) {
          this.duplicatesDropped++;
          return;
        } else {
          if (frame.offset > this.offset + 1 && !this._recovering) {
            this._emit('gap', { reason: 'missing', channel: this.channel, epoch: this.epoch, from: this.offset + 1, to: frame.offset - 1 });
          }
          this.offset = frame.offset;
        }
      }
      this._emit('message', frame.data, frame);
    }
  }

  /**
   * One session on an HTTP streaming transport (PROTOCOL.md §2.5), behind the same face as
   * a WebSocket (send, close, onmessage, onclose), so that the client above does not care.
   * Server frames arrive on one long response; each frame the client sends is posted to
   * POST /emulation with the welcome frame's node, session and key, one at a time and in
   * order (the replies come on the stream). Subclasses open the response.
   */
  class StreamConnection {
    constructor(client, transport) {
      this.transport = transport;
      this.onmessage = this.onclose = this.onerror = this.onopen = null;
      this._client = client;
      this._fetch = client._fetch;
      this._emulationUrl = buildHttpUrl(client.url, 'emulation', { httpUrl: client.options.httpUrl });
      this._welcome = null;
      this._closed = false;
      this._queue = []; // frame texts waiting to be posted; [0] is in flight
      this._posting = false;
      this._retryTimer = null;
      this._watchdog = null;
      this._lastActivity = Date.now();
    }

    /** One frame (a line of the body or an SSE event's data); '' is a keep-alive. */
    _line(text) {
      if (this._closed) return;
      this._lastActivity = Date.now();
      if (text === '') return;
      var msg;
      try {
        msg = JSON.parse(text);
      } catch (e) {
        if (this.onmessage) this.onmessage({ data: text });
        return;
      }
      if (msg && msg.type === 'welcome' && !this._welcome) {
        this._welcome = msg;
        this._startWatchdog(msg);
      } else if (msg && msg.type === 'close') {
        // The last frame of a session: the WebSocket close with that code (§2.5).
        this._end(typeof msg.code === 'number' ? msg.code : 1006, typeof msg.reason === 'string' ? msg.reason : '');
        return;
      }
      if (this.onmessage) this.onmessage({ data: text, frame: msg });
    }

    /**
     * The node writes a keep-alive at least every ping_interval_ms, and the client's own
     * pings are answered on the stream: a stream silent for two intervals is dead.
     */
    _startWatchdog(welcome) {
      var client = this._client;
      var serverMs = welcome.ping_interval_ms > 0 ? welcome.ping_interval_ms : DEFAULT_PING_INTERVAL_MS;
      var silentMs = 2 * Math.max(serverMs, client.options.pingIntervalMs || serverMs);
      var self = this;
      this._watchdog = setInterval(function () {
        if (Date.now() - self._lastActivity > silentMs) self._end(1006, 'stream silent for ' + silentMs + ' ms');
      }, Math.max(50, Math.floor(silentMs / 4)));
    }

    send(text) {
      if (this._closed) throw new Error('the stream is closed');
      if (!this._welcome) throw new Error('the stream is not open yet');
      this._queue.push(text);
      if (!this._posting) this._nextPost();
    }

    _nextPost() {
      if (this._closed || this._queue.length === 0) { this._posting = false; return; }
      this._posting = true;
      this._post(this._queue[0], 0);
    }

    _post(text, tries) {
      var self = this;
      var w = this._welcome;
      var body = '{"node":' + JSON.stringify(w.node) + ',"session":' + JSON.stringify(w.session) +
        ',"key":' + JSON.stringify(w.key) + ',"frame":' + text + '}';
      var f = this._fetch;
      Promise.resolve().then(function () {
        return f(self._emulationUrl, {
          method: 'POST', headers: { 'Content-Type': 'application/json' }, body: body, cache: 'no-store',
        });
      }).then(function (res) {
        var status = res.status;
        if (res.body && typeof res.body.cancel === 'function') res.body.cancel().catch(function () {});
        if (self._closed) return;
        if (status >= 200 && status < 300) { self._queue.shift(); self._nextPost(); return; }
        if (status === 404 || status === 410) {
          // The session is gone (its node restarted, or left the fleet): reconnect.
          self._end(1006, 'session not found on its node (HTTP ' + status + ' from /emulation)');
          return;
        }
        if (status === 429) { self._failPost('rate_limited', 'the session has too many frames waiting (HTTP 429)'); return; }
        if (status === 504) {
          // The session's node did not say in time whether it took the frame: it may
          // have. Posting it again could run the op twice, so the request waits for its
          // reply on the stream, or for its own timeout.
          self._queue.shift(); self._nextPost(); return;
        }
        if (status >= 500) { self._retry(text, tries, 'HTTP ' + status); return; }
        var code = status === 403 ? 'forbidden' : status === 413 ? 'limit_exceeded' : status === 401 ? 'unauthorized' : 'bad_request';
        self._failPost(code, 'POST /emulation answered HTTP ' + status);
      }, function (err) {
        if (self._closed) return;
        self._retry(text, tries, (err && err.message) || String(err));
      });
    }

    /** 5xx or no answer: the same frame again, a few times, then an 'unavailable' reply. */
    _retry(text, tries, why) {
      if (tries >= POST_RETRY_DELAYS_MS.length) {
        this._failPost('unavailable', 'POST /emulation failed ' + (tries + 1) + ' times (' + why + ')');
        return;
      }
      var self = this;
      this._retryTimer = setTimeout(function () {
        self._retryTimer = null;
        if (!self._closed) self._post(text, tries + 1);
      }, POST_RETRY_DELAYS_MS[tries]);
    }

    /** The frame in flight did not reach the session: its request gets this error reply. */
    _failPost(code, message) {
      var text = this._queue.shift();
      var id = null;
      try { id = JSON.parse(text).id; } catch (e) { /* not ours to read */ }
      if (id != null && this.onmessage) {
        this.onmessage({ data: null, frame: { type: 'reply', id: id, error: { code: code, message: message } } });
      }
      this._nextPost();
    }

    _cleanup() {
      this._closed = true;
      this._queue = [];
      this._posting = false;
      if (this._retryTimer) { clearTimeout(this._retryTimer); this._retryTimer = null; }
      if (this._watchdog) { clearInterval(this._watchdog); this._watchdog = null; }
      this._stop();
    }

    /** The session ended on the server's side or the stream broke. */
    _end(code, reason) {
      if (this._closed) return;
      this._cleanup();
      if (this.onclose) this.onclose({ code: code, reason: reason || '' });
    }

    /** The client gives the stream up (no event follows). */
    close() {
      if (this._closed) return;
      this._cleanup();
    }
  }

  /** GET /sse with an EventSource; never left to reconnect by itself (§2.5). */
  class SseConnection extends StreamConnection {
    constructor(client, token) {
      super(client, 'sse');
      var self = this;
      var es = new client._EventSource(buildHttpUrl(client.url, 'sse', { token: token, httpUrl: client.options.httpUrl }));
      this._es = es;
      es.onmessage = function (ev) { self._line(typeof ev.data === 'string' ? ev.data : String(ev.data)); };
      es.onerror = function () { self._end(1006, self._welcome ? 'event stream failed' : 'could not open the event stream'); };
    }

    _stop() {
      var es = this._es;
      if (!es) return;
      this._es = null;
      es.onmessage = es.onerror = null;
      try { es.close(); } catch (e) { /* ignore */ }
    }
  }

  /** POST /stream with fetch, read line by line (NDJSON, empty lines are keep-alives). */
  class FetchStreamConnection extends StreamConnection {
    constructor(client, token) {
      super(client, 'http-stream');
      var self = this;
      var url = buildHttpUrl(client.url, 'stream', { httpUrl: client.options.httpUrl });
      var headers = {};
      if (token != null && token !== '') headers.Authorization = 'Bearer ' + token;
      this._abort = typeof AbortController === 'function' ? new AbortController() : null;
      this._reader = null;
      var init = { method: 'POST', headers: headers, cache: 'no-store' };
      if (this._abort) init.signal = this._abort.signal;
      var f = this._fetch;
      Promise.resolve().then(function () { return f(url, init); }).then(function (res) {
        if (self._closed) { if (res.body && res.body.cancel) res.body.cancel().catch(function () {}); return; }
        if (!res.ok || !res.body || typeof res.body.getReader !== 'function') {
          if (res.body && res.body.cancel) res.body.cancel().catch(function () {});
          self._end(1006, 'POST /stream answered HTTP ' + res.status);
          return;
        }
        var reader = res.body.getReader();
        self._reader = reader;
        var decoder = new TextDecoder();
        var buf = '';
        var pump = function () {
          return reader.read().then(function (r) {
            if (self._closed) return;
            if (r.done) {
              buf += decoder.decode();
              if (buf !== '') self._line(buf.replace(/\r$/, ''));
              self._end(1006, 'the stream ended without a close frame');
              return;
            }
            self._lastActivity = Date.now();
            buf += decoder.decode(r.value, { stream: true });
            var i;
            while (!self._closed && (i = buf.indexOf('\n')) >= 0) {
              var line = buf.slice(0, i);
              buf = buf.slice(i + 1);
              self._line(line.charCodeAt(line.length - 1) === 13 ? line.slice(0, -1) : line);
            }
            if (!self._closed) return pump();
          });
        };
        return pump();
      }).catch(function (err) {
        self._end(1006, (self._welcome ? 'the stream failed: ' : 'could not open the stream: ') + ((err && err.message) || err));
      });
    }

    _stop() {
      if (this._abort) { try { this._abort.abort(); } catch (e) { /* ignore */ } }
      if (this._reader) { this._reader.cancel().catch(function () {}); this._reader = null; }
    }
  }

  /** The transports list of the options: known names, each once, in the given order. */
  function transportList(list) {
    if (list == null) return TRANSPORTS.slice();
    if (!Array.isArray(list)) throw new TypeError('Herald: transports must be an array');
    var out = [];
    list.forEach(function (t) {
      if (TRANSPORTS.indexOf(t) < 0) throw new TypeError('Herald: unknown transport ' + JSON.stringify(t) + ' (known: ' + TRANSPORTS.join(', ') + ')');
      if (out.indexOf(t) < 0) out.push(t);
    });
    if (out.length === 0) throw new TypeError('Herald: transports is empty');
    return out;
  }

  /** A connection to one Herald node, with reconnects and re-subscription. */
  class Herald extends Emitter {
    constructor(url, options) {
      super();
      if (!url) throw new TypeError('Herald: url is required');
      var o = options || {};
      this.url = url;
      this.options = {
        requestTimeoutMs: o.requestTimeoutMs > 0 ? o.requestTimeoutMs : DEFAULT_REQUEST_TIMEOUT_MS,
        pingIntervalMs: o.pingIntervalMs > 0 ? o.pingIntervalMs : null,
        backoff: {
          baseMs: o.backoff && o.backoff.baseMs >= 0 ? o.backoff.baseMs : DEFAULT_BACKOFF.baseMs,
          maxMs: o.backoff && o.backoff.maxMs >= 0 ? o.backoff.maxMs : DEFAULT_BACKOFF.maxMs,
        },
        transports: transportList(o.transports),
        httpUrl: o.httpUrl != null && o.httpUrl !== '' ? String(o.httpUrl) : null,
        openTimeoutMs: o.openTimeoutMs > 0 ? o.openTimeoutMs : DEFAULT_OPEN_TIMEOUT_MS,
        fallbackRetryMs: o.fallbackRetryMs >= 0 ? o.fallbackRetryMs : DEFAULT_FALLBACK_RETRY_MS,
      };
      this._WebSocket = o.WebSocket || root.WebSocket;
      this._EventSource = o.EventSource || root.EventSource;
      this._fetch = typeof o.fetch === 'function' ? o.fetch
        : typeof root.fetch === 'function' ? root.fetch.bind(root) : null;
      this._random = typeof o.random === 'function' ? o.random : Math.random;
      this._token = o.token != null ? o.token : null;
      this._getToken = typeof o.getToken === 'function' ? o.getToken : null;
      this._subs = new Map();
      this._pending = new Map();
      this._nextId = 1;
      this._ws = null;
      this._state = 'idle';
      this._want = false;
      this._attempt = 0;
      this._gen = 0;
      this._reconnectTimer = null;
      this._pingTimer = null;
      this._pingInFlight = false;
      this._waiters = [];
      // Transport choice: the index in options.transports of the next attempt's transport,
      // the failed attempts on it in a row, and when the client left the first one.
      this._ti = 0;
      this._tFails = 0;
      this._fellBackAt = null;
      this._attemptOpen = false; // a connection of the current attempt was made
      this._welcomed = false; // and got its welcome frame
      this._lostWelcomed = false; // the last connection that ended had got its welcome frame
      // Failed attempts on a fallback transport since the last welcome frame, and whether the
      // fallback that worked had failed too before (a node outage rather than a blocked WebSocket).
      this._fallbackFailures = 0;
      this._outageSuspected = false;
      this._openTimer = null;
      /** The transport of the current connection or attempt ('websocket' | 'sse' | 'http-stream'). */
      this.transport = null;
      /** The latest welcome frame, and its session and node. */
      this.welcome = null;
      this.session = null;
      this.node = null;
    }

    /** 'idle' | 'connecting' | 'connected' | 'reconnecting' | 'closed' */
    get state() { return this._state; }

    /** The current subscriptions, by channel. */
    get subscriptions() { return new Map(this._subs); }

    /**
     * Start connecting (and keep reconnecting). Resolves with the welcome frame once
     * connected; rejects (code 'closed') if the client stops before that.
     */
    connect() {
      if (this._state === 'connected') return Promise.resolve(this.welcome);
      var self = this;
      var p = new Promise(function (resolve, reject) { self._waiters.push({ resolve: resolve, reject: reject }); });
      p.catch(function () {});
      if (!this._want) {
        this._want = true;
        this._attempt = 0;
        this._open();
      }
      return p;
    }

    /** Close the connection (code 1000) and stop reconnecting. Subscriptions are kept for a later connect(). */
    close() {
      this._want = false;
      this._gen++;
      this._clearReconnect();
      var ws = this._ws;
      if (ws) {
        this._ws = null;
        this._detach(ws);
        try { ws.close(1000, 'client closed'); } catch (e) { /* already closing */ }
        this._socketClosed(1000, 'client closed', true);
      } else if (this._state !== 'closed' && this._state !== 'idle') {
        this._setState('closed');
        this._emit('disconnected', { code: 1000, reason: 'client closed', willReconnect: false });
        this._rejectWaiters(new HeraldError('closed', 'the client was closed'));
      }
    }

    /**
     * Subscribe to a channel. The subscription is (re)sent on every connection until
     * unsubscribe(). Options: recover (default true), onJoin, onLeave, onGap,
     * onRecoveryFailed, onSubscribed, onError.
     */
    subscribe(channel, onMessage, options) {
      if (typeof channel !== 'string' || !CHANNEL_RE.test(channel)) {
        throw new HeraldError('bad_request', 'invalid channel name: ' + channel);
      }
      if (this._subs.has(channel)) {
        throw new HeraldError('already_subscribed', 'already subscribed to ' + channel + '; use the existing Subscription');
      }
      var sub = new Subscription(this, channel, onMessage, options || {});
      this._subs.set(channel, sub);
      if (this._state === 'connected') this._sendSubscribe(sub);
      return sub;
    }

    /** Publish; resolves with the reply result ({} or {epoch, offset} or {stream_id}). */
    publish(channel, data, options) {
      var frame = { op: 'publish', channel: channel, data: data };
      if (options && options.idempotencyKey != null) frame.idempotency_key = options.idempotencyKey;
      return this._request(frame);
    }

    /** History of a durable channel: options since {epoch, offset}, limit. */
    history(channel, options) {
      var frame = { op: 'history', channel: channel };
      if (options && options.since) frame.since = options.since;
      if (options && options.limit != null) frame.limit = options.limit;
      return this._request(frame);
    }

    presence(channel) { return this._request({ op: 'presence', channel: channel }); }

    presenceStats(channel) { return this._request({ op: 'presence_stats', channel: channel }); }

    /** Replace the session's token (op refresh); later reconnects use it too. */
    refresh(token) {
      var self = this;
      return this._request({ op: 'refresh', token: token }).then(function (r) { self._token = token; return r; });
    }

    /** Application-level ping; resolves with the round-trip time in ms. */
    ping() {
      var t0 = Date.now();
      return this._request({ op: 'ping' }).then(function () { return Date.now() - t0; });
    }

    // ---- internals -------------------------------------------------------------------

    _setState(s) {
      if (this._state === s) return;
      this._state = s;
      this._emit('state', s);
    }

    _clearReconnect() {
      if (this._reconnectTimer) { clearTimeout(this._reconnectTimer); this._reconnectTimer = null; }
    }

    /** The transport for the next attempt (PROTOCOL.md §2.5; CLIENT.md "Transports"). */
    _pickTransport() {
      var list = this.options.transports;
      if (this._ti !== 0 && this._lostWelcomed && this._fellBackAt != null &&
          (this._outageSuspected || Date.now() - this._fellBackAt >= this.options.fallbackRetryMs)) {
        // A reconnect after a working connection on a fallback, long enough after falling
        // back (or after a fallback chosen during what looked like an outage): try the first
        // transport again (it may pass now: another network, a fixed proxy, the node is back).
        this._ti = 0;
        this._outageSuspected = false;
        this._tFails = 0;
        this._fellBackAt = null;
      }
      for (var n = 0; n < list.length; n++) {
        var i = (this._ti + n) % list.length;
        if (this._transportAvailable(list[i])) {
          if (i !== this._ti) { this._ti = i; this._tFails = 0; }
          return list[i];
        }
      }
      return null;
    }

    _transportAvailable(kind) {
      if (kind === 'websocket') return typeof this._WebSocket === 'function';
      if (typeof this._fetch !== 'function') return false;
      if (kind === 'sse') return typeof this._EventSource === 'function';
      return typeof TextDecoder === 'function';
    }

    /** An attempt on the current transport ended before its welcome frame. */
    _transportFailed() {
      var list = this.options.transports;
      this._tFails++;
      if (this._ti !== 0) this._fallbackFailures++;
      if (this._tFails < FALLBACK_AFTER || list.length < 2) return;
      if (this._ti === 0) this._fellBackAt = Date.now();
      this._ti = (this._ti + 1) % list.length;
      this._tFails = 0;
      if (this._ti === 0) this._fellBackAt = null; // every transport failed: from the top
    }

    _clearOpenTimer() {
      if (this._openTimer) { clearTimeout(this._openTimer); this._openTimer = null; }
    }

    _open() {
      this._clearReconnect();
      var gen = ++this._gen;
      var self = this;
      this.transport = this._pickTransport();
      this._setState('connecting');
      this._emit('connecting', { attempt: this._attempt, transport: this.transport });
      if (!this._getToken) { this._openSocket(this._token); return; }
      Promise.resolve().then(function () { return self._getToken(); }).then(function (token) {
        if (gen !== self._gen || !self._want) return;
        self._token = token;
        self._openSocket(token);
      }, function (err) {
        if (gen !== self._gen || !self._want) return;
        self._emit('error', new HeraldError('token_error', 'getToken failed: ' + (err && err.message || err), { cause: err }));
        self._socketClosed(1006, 'getToken failed', false);
      });
    }

    _openSocket(token) {
      var ws;
      var kind = this.transport;
      this._welcomed = false;
      this._attemptOpen = kind != null;
      try {
        if (kind === 'websocket') ws = new this._WebSocket(buildUrl(this.url, token));
        else if (kind === 'sse') ws = new SseConnection(this, token);
        else if (kind === 'http-stream') ws = new FetchStreamConnection(this, token);
        else throw new HeraldError('unsupported', 'none of the transports ' + this.options.transports.join(', ') + ' is available here');
      } catch (err) {
        this._emit('error', err);
        this._socketClosed(1006, 'could not open ' + (kind || 'a connection'), false);
        return;
      }
      this._ws = ws;
      var self = this;
      // No welcome frame within openTimeoutMs: the attempt failed (a proxy that swallows
      // the upgrade, a response that a proxy buffers).
      var ms = this.options.openTimeoutMs;
      this._clearOpenTimer();
      this._openTimer = setTimeout(function () {
        self._openTimer = null;
        if (self._ws === ws && !self._welcomed) self._dropSocket(1006, 'no welcome frame within ' + ms + ' ms');
      }, ms);
      ws.onmessage = function (ev) { if (self._ws === ws) self._onFrame(ev.frame !== undefined ? ev.frame : ev.data); };
      ws.onclose = function (ev) {
        if (self._ws !== ws) return;
        self._ws = null;
        self._socketClosed(ev.code, ev.reason || '', false);
      };
      ws.onerror = function () { /* a close event follows */ };
    }

    _detach(ws) {
      ws.onmessage = ws.onclose = ws.onerror = ws.onopen = null;
    }

    /** Give up on the current socket now (no close handshake wait) and handle it as closed. */
    _dropSocket(code, reason) {
      var ws = this._ws;
      if (!ws) return;
      this._ws = null;
      this._detach(ws);
      try { ws.close(4000, reason); } catch (e) { /* ignore */ }
      this._socketClosed(code, reason, false);
    }

    _onFrame(data) {
      var msg;
      try {
        msg = data !== null && typeof data === 'object' ? data : JSON.parse(typeof data === 'string' ? data : String(data));
      } catch (e) {
        this._emit('error', new HeraldError('bad_frame', 'a frame from the node is not JSON'));
        return;
      }
      if (!msg || typeof msg !== 'object') return;
      switch (msg.type) {
        case 'welcome': this._onWelcome(msg); break;
        case 'reply': this._onReply(msg); break;
        case 'message': this._onMessage(msg); break;
        case 'join':
        case 'leave': this._onPresence(msg); break;
        default: break; // newer frame types: ignored (protocol v1 is extended compatibly)
      }
    }

    _onWelcome(msg) {
      this._welcomed = true;
      this._tFails = 0;
      // A fallback that had failed as well before it worked: every transport was failing,
      // as during a node outage, so the WebSocket may well pass; the next reconnect tries it.
      this._outageSuspected = this._ti !== 0 && this._fallbackFailures > 0;
      this._fallbackFailures = 0;
      this._clearOpenTimer();
      this.welcome = msg;
      this.session = msg.session != null ? msg.session : null;
      this.node = msg.node != null ? msg.node : null;
      this._attempt = 0;
      this._setState('connected');
      this._startPing(msg.ping_interval_ms);
      var self = this;
      this._subs.forEach(function (sub) { self._sendSubscribe(sub); });
      this._emit('connected', msg);
      var waiters = this._waiters;
      this._waiters = [];
      waiters.forEach(function (w) { w.resolve(msg); });
    }

    _onReply(msg) {
      if (msg.id == null) {
        if (msg.error) this._emit('error', new HeraldError(msg.error.code || 'internal', msg.error.message));
        return;
      }
      var p = this._pending.get(msg.id);
      if (!p) return; // timed out already
      this._pending.delete(msg.id);
      clearTimeout(p.timer);
      if (msg.error) {
        p.reject(new HeraldError(msg.error.code || 'internal', msg.error.message || msg.error.code, { op: p.op }));
      } else {
        p.resolve(msg.result != null ? msg.result : {});
      }
    }

    _onMessage(msg) {
      this._emit('message', msg);
      var sub = this._subs.get(msg.channel);
      if (sub) sub._deliver(msg);
    }

    _onPresence(msg) {
      var sub = this._subs.get(msg.channel);
      if (sub) sub._emit(msg.type, msg.client, msg);
    }

    _request(frame) {
      var self = this;
      return new Promise(function (resolve, reject) {
        var ws = self._ws;
        if (self._state !== 'connected' || !ws) {
          reject(new HeraldError('not_connected', frame.op + ': not connected', { op: frame.op }));
          return;
        }
        var id = self._nextId++;
        var out = { id: id };
        Object.keys(frame).forEach(function (k) { out[k] = frame[k]; });
        var ms = self.options.requestTimeoutMs;
        var timer = setTimeout(function () {
          if (!self._pending.has(id)) return;
          self._pending.delete(id);
          reject(new HeraldError('timeout', frame.op + ': no reply within ' + ms + ' ms', { op: frame.op }));
        }, ms);
        self._pending.set(id, { resolve: resolve, reject: reject, timer: timer, op: frame.op });
        try {
          ws.send(JSON.stringify(out));
        } catch (err) {
          clearTimeout(timer);
          self._pending.delete(id);
          reject(new HeraldError('not_connected', frame.op + ': send failed: ' + (err && err.message), { op: frame.op }));
        }
      });
    }

    _sendSubscribe(sub) {
      var self = this;
      var ws = this._ws;
      if (sub._retryTimer) { clearTimeout(sub._retryTimer); sub._retryTimer = null; }
      var frame = { op: 'subscribe', channel: sub.channel };
      var recover = sub._recoverFrame();
      if (recover) frame.recover = recover;
      sub._recovering = !!recover;
      this._request(frame).then(function (result) {
        if (self._subs.get(sub.channel) !== sub) return;
        sub._retries = 0;
        sub._onSubscribed(result, !!recover);
      }, function (err) {
        if (self._subs.get(sub.channel) !== sub) return;
        if (err.code === 'disconnected' || err.code === 'not_connected' || err.code === 'closed') return; // resent on reconnect
        if (err.code === 'timeout') { if (self._ws === ws) self._dropSocket(1006, 'subscribe timed out'); return; }
        if (RETRYABLE[err.code]) {
          // Transient (e.g. the node's backplane is not connected yet): try again on this
          // connection after a backoff delay; a reconnect meanwhile re-subscribes anyway.
          sub._recovering = false;
          var delay = backoffDelay(sub._retries++, self.options.backoff, self._random);
          self._emit('error', err);
          sub._retryTimer = setTimeout(function () {
            sub._retryTimer = null;
            if (self._subs.get(sub.channel) === sub && self._ws === ws && self._state === 'connected') self._sendSubscribe(sub);
          }, delay);
          return;
        }
        self._subs.delete(sub.channel);
        sub._fail(err);
      });
    }

    _unsubscribe(sub) {
      if (this._subs.get(sub.channel) !== sub) return Promise.resolve();
      this._subs.delete(sub.channel);
      sub.active = false;
      sub._closed = true;
      if (sub._retryTimer) { clearTimeout(sub._retryTimer); sub._retryTimer = null; }
      if (sub._rejectReady) {
        var r = sub._rejectReady;
        sub._resolveReady = sub._rejectReady = null;
        r(new HeraldError('unsubscribed', 'unsubscribed before the node confirmed'));
      }
      if (this._state !== 'connected') return Promise.resolve();
      return this._request({ op: 'unsubscribe', channel: sub.channel }).then(function () {}, function (err) {
        if (err.code === 'disconnected' || err.code === 'not_connected') return; // the session is gone anyway
        throw err;
      });
    }

    _startPing(welcomeMs) {
      this._stopPing();
      var ms = this.options.pingIntervalMs || (welcomeMs > 0 ? welcomeMs : DEFAULT_PING_INTERVAL_MS);
      var self = this;
      this._pingTimer = setInterval(function () { self._autoPing(); }, ms);
    }

    _stopPing() {
      if (this._pingTimer) { clearInterval(this._pingTimer); this._pingTimer = null; }
      this._pingInFlight = false;
    }

    _autoPing() {
      if (this._pingInFlight || this._state !== 'connected') return;
      this._pingInFlight = true;
      var self = this;
      var ws = this._ws;
      this._request({ op: 'ping' }).then(function () {
        self._pingInFlight = false;
      }, function (err) {
        self._pingInFlight = false;
        if (err.code === 'timeout' && self._ws === ws) self._dropSocket(1006, 'ping timeout');
      });
    }

    _rejectWaiters(err) {
      var waiters = this._waiters;
      this._waiters = [];
      waiters.forEach(function (w) { w.reject(err); });
    }

    _socketClosed(code, reason, clientInitiated) {
      this._stopPing();
      this._clearOpenTimer();
      if (this._attemptOpen && !this._welcomed && !clientInitiated) this._transportFailed();
      if (this._attemptOpen) this._lostWelcomed = this._welcomed;
      this._attemptOpen = false;
      this._welcomed = false;
      var pending = this._pending;
      this._pending = new Map();
      pending.forEach(function (p) {
        clearTimeout(p.timer);
        p.reject(new HeraldError('disconnected', p.op + ': the connection closed before the reply', { op: p.op }));
      });
      this._subs.forEach(function (sub) {
        sub.active = false;
        if (sub._retryTimer) { clearTimeout(sub._retryTimer); sub._retryTimer = null; }
      });

      var action = this._want ? closeAction(code, clientInitiated) : 'stop';
      if (action === 'refresh_token' && !this._getToken) {
        this._emit('error', new HeraldError('token_expired', 'the token expired (close 4001) and no getToken option was given'));
        action = 'stop';
      }
      if (action === 'stop') {
        this._want = false;
        this._setState('closed');
        this._emit('disconnected', { code: code, reason: reason, willReconnect: false });
        this._rejectWaiters(new HeraldError('closed', 'connection closed (' + code + (reason ? ' ' + reason : '') + ')', { closeCode: code }));
        return;
      }
      var delayMs = backoffDelay(this._attempt, this.options.backoff, this._random);
      this._attempt++;
      this._setState('reconnecting');
      this._emit('disconnected', { code: code, reason: reason, willReconnect: true, delayMs: delayMs });
      var self = this;
      this._clearReconnect();
      this._reconnectTimer = setTimeout(function () {
        self._reconnectTimer = null;
        if (self._want) self._open();
      }, delayMs);
    }
  }

  Herald.HeraldError = HeraldError;
  Herald.Subscription = Subscription;
  Herald.backoffDelay = backoffDelay;
  Herald.closeAction = closeAction;
  Herald.buildUrl = buildUrl;
  Herald.buildHttpUrl = buildHttpUrl;
  Herald.transports = TRANSPORTS.slice();
  Herald.version = '1.0.0';
  Herald.protocolVersion = 1;

  root.Herald = Herald;
  if (typeof module === 'object' && module && module.exports) module.exports = Herald;
})(typeof globalThis !== 'undefined' ? globalThis : typeof self !== 'undefined' ? self : this);
