// The demo page, on herald.js: a chat room on `chat:lobby`, a live status panel, who is
// online in the chat (presence), and a seat map fed by the seat service (examples/seats.rs).
// User text only ever reaches the page through textContent (no innerHTML).
(function () {
  'use strict';

  var CHANNEL = 'chat:lobby';
  var $ = function (id) { return document.getElementById(id); };
  var els = {
    messages: $('messages'), compose: $('compose'), name: $('name'), text: $('text'), send: $('send'),
    notice: $('notice'), noticeText: $('notice-text'), noticeClose: $('notice-close'),
    state: $('state'), dot: $('state-dot'), node: $('node'), session: $('session'), transport: $('transport'),
    rate: $('rate'), total: $('total'), offset: $('offset'), reconnects: $('reconnects'),
    failedAttempts: $('failed-attempts'),
    online: $('online'), onlineNote: $('online-note'), onlineCount: $('online-count'),
    seatMap: $('seat-map'), seatsHowto: $('seats-howto'), seatsHowtoReason: $('seats-howto-reason'),
    seatsSummary: $('seats-summary'), seatsStatus: $('seats-status'),
  };

  // ---- name ----
  var savedName = null;
  try { savedName = window.localStorage.getItem('herald-demo-name'); } catch (e) { /* storage off */ }
  els.name.value = savedName || 'guest-' + Math.floor(1000 + Math.random() * 9000);
  els.name.addEventListener('change', function () {
    try { window.localStorage.setItem('herald-demo-name', els.name.value.trim()); } catch (e) { /* ignore */ }
  });

  // ---- notices ----
  function showNotice(text, kind) {
    els.noticeText.textContent = text;
    els.notice.className = 'notice' + (kind === 'error' ? ' error' : '');
    els.notice.dataset.kind = kind || 'info';
    els.notice.hidden = false;
  }
  function hideNotice() { els.notice.hidden = true; }
  els.noticeClose.addEventListener('click', hideNotice);

  // ---- messages ----
  // reconnects: connections welcomed after an earlier one (a node restart that takes several
  // attempts is one reconnect); failedAttempts: attempts that ended before a welcome.
  var stats = { total: 0, times: [], reconnects: 0, failedAttempts: 0, connections: 0 };
  var welcomed = false; // the current connection (attempt) got its welcome frame

  function timeString(d) {
    return d.toLocaleTimeString([], { hour: '2-digit', minute: '2-digit', second: '2-digit' });
  }

  function addLine(user, text, opts) {
    var o = opts || {};
    var atBottom = els.messages.scrollHeight - els.messages.scrollTop - els.messages.clientHeight < 40;
    var li = document.createElement('li');
    if (o.system) li.className = 'system';
    if (o.mine) li.classList.add('mine');
    if (o.offset != null) li.dataset.offset = String(o.offset);
    if (!o.system) {
      var u = document.createElement('span');
      u.className = 'user';
      u.textContent = user;
      li.appendChild(u);
    }
    var t = document.createElement('span');
    t.className = 'text';
    t.textContent = text;
    li.appendChild(t);
    var time = document.createElement('time');
    time.className = 'time';
    var now = new Date();
    time.dateTime = now.toISOString();
    time.textContent = timeString(now);
    li.appendChild(time);
    els.messages.appendChild(li);
    while (els.messages.children.length > 500) els.messages.removeChild(els.messages.firstChild);
    if (atBottom || o.mine) els.messages.scrollTop = els.messages.scrollHeight;
  }

  function onChat(data, frame) {
    stats.total++;
    stats.times.push(Date.now());
    var user = 'anonymous';
    var text;
    if (data && typeof data === 'object' && !Array.isArray(data)) {
      if (data.user != null) user = String(data.user);
      text = typeof data.text === 'string' ? data.text : JSON.stringify(data.text !== undefined ? data.text : data);
    } else {
      text = typeof data === 'string' ? data : JSON.stringify(data);
    }
    addLine(user, text, { mine: user === els.name.value.trim(), offset: frame.offset });
    updateCounters();
    if (frame.offset != null) els.offset.textContent = frame.offset + ' (' + frame.epoch + ')';
  }

  // ---- the client ----
  // ?transports=sse or ?transports=http-stream,sse picks the transports (in that order);
  // by default herald.js starts with the WebSocket and falls back by itself.
  function transportsFromQuery() {
    var q = null;
    try { q = new URLSearchParams(window.location.search).get('transports'); } catch (e) { /* old browser */ }
    if (!q) return undefined;
    var list = q.split(',').map(function (t) { return t.trim(); }).filter(function (t) { return Herald.transports.indexOf(t) >= 0; });
    return list.length ? list : undefined;
  }
  var client = new Herald('/ws', { backoff: { baseMs: 250, maxMs: 4000 }, transports: transportsFromQuery() });

  function showTransport(transport, connected) {
    els.transport.textContent = transport ? (connected ? transport : 'trying ' + transport) : '–';
    els.transport.dataset.transport = connected && transport ? transport : '';
  }

  function setState(state, detail) {
    els.state.textContent = detail ? state + ' ' + detail : state;
    els.state.dataset.state = state;
    els.dot.className = 'dot ' + state;
    document.body.dataset.state = state;
  }

  client.on('connecting', function (info) {
    setState('connecting');
    showTransport(info.transport, false);
  });
  client.on('connected', function (welcome) {
    welcomed = true;
    if (++stats.connections > 1) {
      stats.reconnects++;
      els.reconnects.textContent = String(stats.reconnects);
    }
    setState('connected');
    els.node.textContent = welcome.node || '?';
    els.session.textContent = welcome.session || '?';
    els.session.title = welcome.session || '';
    showTransport(client.transport, true);
    if (els.notice.dataset.kind === 'connection') hideNotice();
    // Seats are held by the session that asked: this page's earlier sessions are gone.
    if (seats.lastSession && seats.lastSession !== welcome.session) seats.pastSessions.add(seats.lastSession);
    seats.lastSession = welcome.session;
    renderOnline();
    renderSeats();
  });
  client.on('disconnected', function (ev) {
    els.node.textContent = '–';
    els.session.textContent = '–';
    showTransport(null, false);
    if (!welcomed) {
      stats.failedAttempts++;
      els.failedAttempts.textContent = String(stats.failedAttempts);
    }
    welcomed = false;
    if (ev.willReconnect) {
      setState('reconnecting', '(in ' + (ev.delayMs / 1000).toFixed(1) + ' s)');
    } else {
      setState('closed');
      showNotice('Disconnected (' + ev.code + (ev.reason ? ': ' + ev.reason : '') + '). Reload the page to connect again.', 'error');
      els.notice.dataset.kind = 'connection';
    }
    presenceDisconnected();
    seatsDisconnected();
  });

  var sub = client.subscribe(CHANNEL, onChat, {
    onJoin: function (c) { presenceEvent('join', c); },
    onLeave: function (c) { presenceEvent('leave', c); },
    onSubscribed: function (result, meta) {
      loadPresence();
      if (result && result.epoch != null) {
        els.offset.textContent = (sub.offset != null ? sub.offset : result.offset) + ' (' + result.epoch + ')';
      }
      if (meta.recovering && result.recovered) {
        addLine('', 'Reconnected: caught up on missed messages.', { system: true });
      }
    },
    onGap: function (info) {
      if (info.reason === 'recovery_failed' || info.reason === 'epoch_changed') {
        showNotice('Some messages could not be recovered after the reconnect (history expired or reset).', 'info');
      } else {
        showNotice('Messages ' + info.from + '–' + info.to + ' were missed.', 'info');
      }
    },
    onError: function (err) {
      var hint = err.code === 'not_found'
        ? ' This node has no "chat" namespace in its configuration.'
        : err.code === 'forbidden' ? ' Subscribing to "chat" is not allowed for this session.' : '';
      showNotice('Cannot subscribe to ' + CHANNEL + ': ' + err.code + '.' + hint, 'error');
      online.state = 'unsubscribed';
      renderOnline();
    },
  });

  // ---- who's online (presence of chat:lobby) ----
  // The list is the `presence` snapshot taken after every (re)subscribe, kept current by
  // the join / leave events. Events that arrive while the snapshot is on its way are
  // applied again on top of it, in order: adding a present session or removing an absent
  // one changes nothing, so the result is right whichever side of the snapshot they fell.
  var online = {
    state: 'loading', // loading | on | off | forbidden | error | offline | unsubscribed
    members: new Map(), // session -> client {session, user, info}
    pendingEvents: null, // events seen while a snapshot is in flight
    gen: 0,
    error: null,
  };

  function applyPresence(type, c) {
    if (type === 'join') online.members.set(c.session, c);
    else online.members.delete(c.session);
  }

  function presenceEvent(type, c) {
    if (!c || typeof c.session !== 'string') return;
    if (online.pendingEvents) online.pendingEvents.push({ type: type, client: c });
    applyPresence(type, c);
    if (online.state === 'on') renderOnline();
  }

  function loadPresence() {
    var gen = ++online.gen;
    online.pendingEvents = [];
    if (online.state !== 'on') { online.state = 'loading'; renderOnline(); }
    client.presence(CHANNEL).then(function (result) {
      if (gen !== online.gen) return;
      var events = online.pendingEvents || [];
      online.pendingEvents = null;
      online.members = new Map();
      var list = result && Array.isArray(result.clients) ? result.clients : [];
      list.forEach(function (c) { if (c && typeof c.session === 'string') online.members.set(c.session, c); });
      events.forEach(function (e) { applyPresence(e.type, e.client); });
      online.state = 'on';
      renderOnline();
    }, function (err) {
      if (gen !== online.gen) return;
      online.pendingEvents = null;
      online.members = new Map();
      if (err.code === 'not_connected' || err.code === 'disconnected') return; // asked again on re-subscribe
      // A namespace without `presence = true` answers the presence op with bad_request
      // (a developer's node, with no configuration, enables presence nowhere).
      online.state = err.code === 'bad_request' ? 'off' : err.code === 'forbidden' ? 'forbidden' : 'error';
      online.error = err;
      renderOnline();
    });
  }

  function presenceDisconnected() {
    online.gen++;
    online.pendingEvents = null;
    online.members = new Map();
    if (online.state !== 'unsubscribed') online.state = 'offline';
    renderOnline();
  }

  function shortSession(session) {
    // "s-" + 16 random hex digits + a counter: the first 6 random digits tell sessions apart.
    return session.length > 10 ? session.slice(0, 8) + '…' : session;
  }

  function renderOnline() {
    var notes = {
      loading: 'loading…',
      off: 'presence is off on this node (the chat namespace needs presence = true and join_leave = true).',
      forbidden: 'this session may not read presence here (forbidden).',
      offline: 'not connected: the list comes back after the reconnect.',
      unsubscribed: 'not subscribed to ' + CHANNEL + '.',
      error: 'presence unavailable' + (online.error ? ' (' + online.error.code + ')' : '') + '.',
    };
    var on = online.state === 'on';
    els.onlineNote.dataset.state = online.state;
    els.onlineNote.textContent = on ? '' : notes[online.state] || online.state;
    els.onlineNote.hidden = on;
    els.onlineCount.hidden = !on;
    els.onlineCount.textContent = String(online.members.size);
    while (els.online.firstChild) els.online.removeChild(els.online.firstChild);
    if (!on) return;
    var me = client.session;
    var list = Array.from(online.members.values());
    list.sort(function (a, b) { return (a.session === me ? 0 : 1) - (b.session === me ? 0 : 1); });
    list.forEach(function (c) {
      var li = document.createElement('li');
      li.dataset.session = c.session;
      li.title = c.session;
      var who = document.createElement('span');
      who.className = 'who';
      who.textContent = c.user != null ? String(c.user) : shortSession(c.session);
      li.appendChild(who);
      if (c.user != null) {
        var sid = document.createElement('span');
        sid.className = 'sid mono';
        sid.textContent = shortSession(c.session);
        li.appendChild(sid);
      }
      if (c.session === me) {
        li.classList.add('me');
        var you = document.createElement('span');
        you.className = 'you';
        var name = els.name.value.trim();
        you.textContent = name ? 'you · ' + name : 'you';
        li.appendChild(you);
      }
      els.online.appendChild(li);
    });
  }
  els.name.addEventListener('input', function () { if (online.state === 'on') renderOnline(); });

  // ---- the seat map (show s1) ----
  // The map is the fold of the seat service's outcomes {seat, action, ok, holder, by,
  // request} on the durable channel seats:s1: each outcome carries the seat's holder right
  // after the request was handled (null: free). On every subscribe reply the map is rebuilt
  // from history; live outcomes that arrive meanwhile wait, and only those with a higher
  // offset than the history's are applied after it. A click publishes a request upstream to
  // seats-req:s1; the reply's stream_id is the `request` of the outcome that answers it.
  var SHOW = 's1';
  var SEAT_CHANNEL = 'seats:' + SHOW;
  var SEAT_REQUESTS = 'seats-req:' + SHOW;
  var ROWS = ['A', 'B', 'C', 'D', 'E'];
  var COLS = 8;
  var NO_ANSWER_MS = 10000;
  var seats = {
    available: null, // null: not known yet; true; false (see unavailableReason)
    unavailableReason: null,
    ready: false, // the map reflects history (and live outcomes after it)
    holders: new Map(), // seat -> holder (session, or user with a token)
    pending: new Map(), // seat -> {action, streamId, timer}
    answered: new Map(), // request stream id -> outcome, for outcomes that beat their publish reply
    epoch: null,
    applied: 0, // offset of the last outcome applied
    building: false,
    buffer: [],
    gen: 0,
    pastSessions: new Set(), // this page's earlier sessions (their holds cannot be released)
    lastSession: null,
    buttons: new Map(), // seat -> button
  };

  function buildSeatMap() {
    ROWS.forEach(function (row) {
      var label = document.createElement('span');
      label.className = 'row-label';
      label.textContent = row;
      els.seatMap.appendChild(label);
      for (var n = 1; n <= COLS; n++) {
        var seat = row + n;
        var b = document.createElement('button');
        b.type = 'button';
        b.className = 'seat';
        b.dataset.seat = seat;
        b.dataset.state = 'free';
        b.dataset.holder = '';
        b.textContent = String(n);
        b.addEventListener('click', onSeatClick.bind(null, seat));
        els.seatMap.appendChild(b);
        seats.buttons.set(seat, b);
      }
    });
  }
  buildSeatMap();

  function setSeatStatus(text, kind) {
    els.seatsStatus.textContent = text;
    els.seatsStatus.dataset.kind = kind || 'info';
  }

  function seatsUnavailable(reason) {
    seats.available = false;
    seats.unavailableReason = reason;
    els.seatsHowtoReason.textContent = reason;
    els.seatsHowto.hidden = false;
    seats.pending.forEach(function (p) { clearTimeout(p.timer); });
    seats.pending.clear();
    renderSeats();
  }

  function applyOutcome(o) {
    if (!o || typeof o !== 'object' || typeof o.seat !== 'string') return;
    if (o.holder == null) seats.holders.delete(o.seat);
    else seats.holders.set(o.seat, String(o.holder));
    if (typeof o.request === 'string') {
      seats.answered.set(o.request, o);
      if (seats.answered.size > 500) seats.answered.delete(seats.answered.keys().next().value);
      var p = seats.pending.get(o.seat);
      if (p && p.streamId === o.request) settle(o.seat, o);
    }
  }

  function settle(seat, o) {
    var p = seats.pending.get(seat);
    if (!p) return;
    clearTimeout(p.timer);
    seats.pending.delete(seat);
    if (p.action === 'hold') {
      setSeatStatus(o.ok ? seat + ' is yours.' : seat + ' went to someone else.', o.ok ? 'ok' : 'lost');
    } else {
      setSeatStatus(o.ok ? seat + ' released.' : seat + ' could not be released (it is not held by this session).', o.ok ? 'ok' : 'lost');
    }
  }

  function rebuildSeats() {
    var gen = ++seats.gen;
    seats.building = true;
    seats.buffer = [];
    client.history(SEAT_CHANNEL).then(function (h) {
      if (gen !== seats.gen) return;
      seats.holders = new Map();
      var msgs = h && Array.isArray(h.messages) ? h.messages : [];
      msgs.forEach(function (m) { applyOutcome(m.data); });
      seats.epoch = h && h.epoch != null ? h.epoch : seatSub.epoch;
      seats.applied = h && typeof h.offset === 'number' ? h.offset : msgs.length ? msgs[msgs.length - 1].offset : 0;
      seats.building = false;
      var buffered = seats.buffer;
      seats.buffer = [];
      buffered.forEach(function (f) { onSeatOutcome(f.data, f.frame, true); });
      seats.ready = true;
      renderSeats();
    }, function (err) {
      if (gen !== seats.gen) return;
      seats.building = false;
      seats.buffer = [];
      if (err.code === 'not_connected' || err.code === 'disconnected') return; // rebuilt on re-subscribe
      setSeatStatus('Cannot read the seat history (' + err.code + ').', 'error');
    });
  }

  function onSeatOutcome(data, frame, replaying) {
    if (seats.building) { seats.buffer.push({ data: data, frame: frame }); return; }
    if (typeof frame.offset === 'number') {
      if (seats.epoch == null) seats.epoch = frame.epoch;
      if (frame.epoch !== seats.epoch) {
        // The channel's history was reset (Redis lost it): start again from the new history.
        // A frame waiting through a rebuild with another epoch than that history is stale.
        if (!replaying) { seats.buffer.push({ data: data, frame: frame }); rebuildSeats(); }
        return;
      }
      if (frame.offset <= seats.applied) return; // already in the history the map was built from
      seats.applied = frame.offset;
    }
    applyOutcome(data);
    renderSeats();
  }

  function seatsDisconnected() {
    seats.gen++;
    seats.building = false;
    seats.buffer = [];
    seats.pending.forEach(function (p) { clearTimeout(p.timer); });
    if (seats.pending.size) setSeatStatus('Disconnected while asking: the map shows the outcome after the reconnect.', 'info');
    seats.pending.clear();
    renderSeats();
  }

  var seatSub = client.subscribe(SEAT_CHANNEL, onSeatOutcome, {
    onSubscribed: function (result) {
      if (!result || result.epoch == null) {
        // A plain channel: this node has no durable `seats` namespace (a developer's node).
        seatsUnavailable('This node has no durable "seats" namespace: seats:s1 is a plain channel here.');
        seatSub.unsubscribe();
        return;
      }
      seats.available = true;
      els.seatsHowto.hidden = true;
      rebuildSeats();
    },
    onError: function (err) {
      seatsUnavailable(err.code === 'not_found'
        ? 'Subscribing to seats:s1 answered not_found: the "seats" namespace is not configured.'
        : 'Subscribing to seats:s1 was refused (' + err.code + ').');
    },
  });

  function seatView(seat) {
    var holder = seats.holders.get(seat);
    if (seats.pending.has(seat)) return { state: 'pending', holder: holder };
    if (holder == null) return { state: 'free', holder: null };
    if (holder === client.session) return { state: 'mine', holder: holder };
    if (seats.pastSessions.has(holder)) return { state: 'earlier', holder: holder };
    return { state: 'taken', holder: holder };
  }

  function renderSeats() {
    var usable = seats.available === true && seats.ready && client.state === 'connected';
    els.seatMap.dataset.ready = String(seats.available === true && seats.ready);
    els.seatMap.classList.toggle('off', !usable);
    var mine = [];
    var free = 0;
    var taken = 0;
    seats.buttons.forEach(function (b, seat) {
      var v = seatView(seat);
      b.dataset.state = v.state;
      b.dataset.holder = v.holder || '';
      var what = {
        free: 'free', mine: 'yours', taken: 'taken', pending: 'asking the seat service…',
        earlier: 'held by this page\'s earlier session (gone after a reconnect)',
      }[v.state];
      b.title = seat + ': ' + what + (v.holder && v.state !== 'mine' ? ' (' + v.holder + ')' : '');
      b.setAttribute('aria-label', seat + ' ' + what);
      b.disabled = !usable || v.state === 'taken' || v.state === 'earlier' || v.state === 'pending';
      if (v.state === 'mine') mine.push(seat);
      else if (v.state === 'free') free++;
      else if (v.state !== 'pending') taken++;
    });
    if (seats.available === false) els.seatsSummary.textContent = 'Seat map unavailable on this node.';
    else if (!seats.ready) els.seatsSummary.textContent = 'Loading the map…';
    else {
      els.seatsSummary.textContent = 'Yours: ' + (mine.length ? mine.join(', ') : 'none') +
        ' · free ' + free + ' · taken ' + taken;
    }
  }

  function onSeatClick(seat) {
    var v = seatView(seat);
    var action = v.state === 'free' ? 'hold' : v.state === 'mine' ? 'release' : null;
    if (!action || seats.available !== true) return;
    var p = { action: action, streamId: null, timer: null };
    p.timer = setTimeout(function () {
      if (seats.pending.get(seat) !== p) return;
      seats.pending.delete(seat);
      setSeatStatus('No answer for ' + seat + ' from the seat service within ' + NO_ANSWER_MS / 1000 +
        ' s: is it running (cargo run --release --example seats -- --redis …)?', 'error');
      renderSeats();
    }, NO_ANSWER_MS);
    seats.pending.set(seat, p);
    setSeatStatus((action === 'hold' ? 'Asking for ' : 'Releasing ') + seat + '…', 'info');
    renderSeats();
    client.publish(SEAT_REQUESTS, { show: SHOW, seat: seat, action: action }).then(function (r) {
      if (seats.pending.get(seat) !== p) return;
      if (!r || typeof r.stream_id !== 'string') {
        // Published as a plain message: seats-req is not an upstream namespace here.
        seatsUnavailable('Publishing to seats-req:s1 was not sent upstream: the "seats-req" namespace has no upstream = true.');
        return;
      }
      p.streamId = r.stream_id;
      var early = seats.answered.get(r.stream_id);
      if (early) { settle(seat, early); renderSeats(); }
    }, function (err) {
      if (seats.pending.get(seat) !== p) return;
      clearTimeout(p.timer);
      seats.pending.delete(seat);
      if (err.code === 'forbidden' || err.code === 'not_found') {
        seatsUnavailable('Publishing to seats-req:s1 answered ' + err.code + ': no seat requests on this node.');
        return;
      }
      setSeatStatus(err.code === 'not_connected'
        ? 'Not connected: the request for ' + seat + ' was not sent.'
        : 'The request for ' + seat + ' failed (' + err.code + '); the map shows what happened.', 'error');
      renderSeats();
    });
  }
  renderSeats();

  // ---- sending ----
  els.compose.addEventListener('submit', function (ev) {
    ev.preventDefault();
    var name = els.name.value.trim();
    var text = els.text.value;
    if (!name || !text.trim()) return;
    els.send.disabled = true;
    client.publish(CHANNEL, { user: name, text: text }).then(function () {
      els.text.value = '';
      if (els.notice.dataset.kind === 'publish') hideNotice();
    }, function (err) {
      var msg;
      if (err.code === 'not_connected') {
        msg = 'Not connected: the message was not sent. It will not be retried; send it again once connected.';
      } else if (err.code === 'forbidden') {
        msg = 'Publishing to ' + CHANNEL + ' is refused by this node (forbidden). A configured node must set ' +
          'publish = "anyone" in [namespaces.chat].';
      } else if (err.code === 'not_found') {
        msg = 'Publishing refused: this node has no "chat" namespace (not_found).';
      } else if (err.code === 'timeout' || err.code === 'disconnected') {
        msg = 'No answer from the node (' + err.code + '): the message may or may not have been sent.';
      } else {
        msg = 'Publish refused: ' + err.code + (err.message ? ' (' + err.message + ')' : '') + '.';
      }
      showNotice(msg, 'error');
      els.notice.dataset.kind = 'publish';
    }).then(function () {
      els.send.disabled = false;
      els.text.focus();
    });
  });

  // ---- messages per second (sliding one-second window) ----
  function updateCounters() {
    var cutoff = Date.now() - 1000;
    while (stats.times.length && stats.times[0] < cutoff) stats.times.shift();
    els.rate.textContent = String(stats.times.length);
    els.total.textContent = String(stats.total);
  }
  setInterval(updateCounters, 250); // also lets the rate fall back when messages stop

  // For the browser tests and for poking around in the console.
  window.heraldDemo = {
    client: client, subscription: sub, stats: stats, channel: CHANNEL,
    online: online, seats: seats, seatSubscription: seatSub,
  };

  client.connect();
})();
