// The demo page: a chat room on `chat:lobby` and a live status panel, on herald.js.
// User text only ever reaches the page through textContent (no innerHTML).
(function () {
  'use strict';

  var CHANNEL = 'chat:lobby';
  var $ = function (id) { return document.getElementById(id); };
  var els = {
    messages: $('messages'), compose: $('compose'), name: $('name'), text: $('text'), send: $('send'),
    notice: $('notice'), noticeText: $('notice-text'), noticeClose: $('notice-close'),
    state: $('state'), dot: $('state-dot'), node: $('node'), session: $('session'),
    rate: $('rate'), total: $('total'), offset: $('offset'), reconnects: $('reconnects'),
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
  var stats = { total: 0, times: [], reconnects: 0 };

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
  var client = new Herald('/ws', { backoff: { baseMs: 250, maxMs: 4000 } });

  function setState(state, detail) {
    els.state.textContent = detail ? state + ' ' + detail : state;
    els.state.dataset.state = state;
    els.dot.className = 'dot ' + state;
    document.body.dataset.state = state;
  }

  client.on('connecting', function () { setState('connecting'); });
  client.on('connected', function (welcome) {
    setState('connected');
    els.node.textContent = welcome.node || '?';
    els.session.textContent = welcome.session || '?';
    els.session.title = welcome.session || '';
    if (els.notice.dataset.kind === 'connection') hideNotice();
  });
  client.on('disconnected', function (ev) {
    els.node.textContent = '–';
    els.session.textContent = '–';
    if (ev.willReconnect) {
      stats.reconnects++;
      els.reconnects.textContent = String(stats.reconnects);
      setState('reconnecting', '(in ' + (ev.delayMs / 1000).toFixed(1) + ' s)');
    } else {
      setState('closed');
      showNotice('Disconnected (' + ev.code + (ev.reason ? ': ' + ev.reason : '') + '). Reload the page to connect again.', 'error');
      els.notice.dataset.kind = 'connection';
    }
  });

  var sub = client.subscribe(CHANNEL, onChat, {
    onSubscribed: function (result, meta) {
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
    },
  });

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
  window.heraldDemo = { client: client, subscription: sub, stats: stats, channel: CHANNEL };

  client.connect();
})();
