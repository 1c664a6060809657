/* chorus console: one small hash-routed app over the JSON API.
 *
 *   #/                   overview (groups, dead letters, sagas per second)
 *   #/find               find a checkout or a client
 *   #/client/<id>        a client's recent checkouts
 *   #/checkout/<id>      a checkout's causal timeline (live while it runs)
 *   #/dead-letters       dead letters, retry one or a group's worth
 *
 * Every text that comes from the API is put in the page with textContent
 * (el() below), never as HTML. The admin token lives in one variable only.
 * JavaScript errors are recorded in #js-errors so a test can read them.
 * #page carries data-page and data-ready="1" once the page has its data. */
'use strict';

(function () {
  var errorsEl = document.getElementById('js-errors');
  function recordError(text) {
    var li = document.createElement('li');
    li.textContent = String(text);
    errorsEl.appendChild(li);
  }
  window.onerror = function (msg, src, line, col) {
    recordError(msg + ' at ' + src + ':' + line + ':' + col);
  };
  window.addEventListener('unhandledrejection', function (e) {
    var r = e.reason;
    recordError('unhandled rejection: ' + (r && r.stack ? r.stack : r));
  });

  var TERMINAL = { SUCCEEDED: true, FAILED: true };
  var STATS_WINDOW_S = 300;  /* the overview's saga counts and rates cover this */
  var STATE_TEXT = { done: 'done', in_flight: 'in flight', parked: 'parked', undelivered: 'not yet' };
  var page = document.getElementById('page');
  var gen = 0;             /* bumped on every navigation: loops of old pages stop */
  var adminToken = '';     /* typed into the dead-letter page; memory only */

  /* el('td', {class: 'x', 'data-state': 'done'}, 'text', child...) */
  function el(tag, attrs) {
    var e = document.createElement(tag);
    var a = attrs || {};
    Object.keys(a).forEach(function (k) {
      if (a[k] === undefined || a[k] === null) return;
      if (k === 'class') e.className = a[k];
      else if (k === 'text') e.textContent = a[k];
      else if (k.slice(0, 2) === 'on') e.addEventListener(k.slice(2), a[k]);
      else e.setAttribute(k, String(a[k]));
    });
    for (var i = 2; i < arguments.length; i++) {
      var c = arguments[i];
      if (c === undefined || c === null) continue;
      e.appendChild(typeof c === 'object' ? c : document.createTextNode(String(c)));
    }
    return e;
  }

  function clear(node) {
    while (node.firstChild) node.removeChild(node.firstChild);
  }

  /* fetch + JSON; resolves {status, body} (body null when not JSON). */
  function api(method, path, body, headers) {
    var opts = { method: method, headers: headers || {} };
    if (body !== undefined) {
      opts.body = JSON.stringify(body);
      opts.headers['Content-Type'] = 'application/json';
    }
    return fetch(path, opts).then(function (r) {
      return r.text().then(function (t) {
        var j = null;
        try { j = t ? JSON.parse(t) : null; } catch (e) { j = null; }
        return { status: r.status, body: j };
      });
    });
  }

  function errText(res) {
    var e = res.body && res.body.error;
    return 'HTTP ' + res.status + (e ? ': ' + e.code + ' - ' + e.message : '');
  }

  function sleep(ms) {
    return new Promise(function (res) { setTimeout(res, ms); });
  }

  function stamp() {
    document.getElementById('live').textContent = 'updated ' + new Date().toLocaleTimeString();
  }

  function begin(name, title) {
    gen++;
    clear(page);
    page.setAttribute('data-page', name);
    page.setAttribute('data-ready', '0');
    document.title = title + ' - chorus';
    Array.prototype.forEach.call(document.querySelectorAll('[data-nav]'), function (a) {
      a.classList.toggle('active', a.getAttribute('data-nav') === name ||
        (name === 'checkout' || name === 'client') && a.getAttribute('data-nav') === 'find');
    });
    return gen;
  }

  function ready() {
    page.setAttribute('data-ready', '1');
    stamp();
  }

  function fmtMs(ms) {
    if (ms === null || ms === undefined) return '';
    if (ms >= 1000) return (ms / 1000).toFixed(2) + ' s';
    return ms.toFixed(1) + ' ms';
  }

  function shortGroup(g) {
    return String(g).replace(/^choreo-/, '');
  }

  /* ---- overview ---------------------------------------------------------- */

  function overview() {
    var my = begin('overview', 'Overview');
    var stats = el('div', { id: 'saga-stats', class: 'stats' });
    var groups = el('tbody');
    var err = el('p', { id: 'overview-error', class: 'error' });
    page.appendChild(el('h1', { text: 'Overview' }));
    page.appendChild(err);
    page.appendChild(el('h2', { text: 'Sagas, last ' + STATS_WINDOW_S / 60 + ' min' }));
    page.appendChild(stats);
    page.appendChild(el('h2', { text: 'Consumer groups' }));
    page.appendChild(el('table', { id: 'groups' },
      el('thead', null, el('tr', null, el('th', { text: 'group' }), el('th', { class: 'num', text: 'consumers' }),
        el('th', { class: 'num', text: 'pending' }), el('th', { class: 'num', text: 'lag' }),
        el('th', { class: 'num', text: 'dead letters' }), el('th', { text: 'last delivered' }))),
      groups));

    function stat(key, label, value, cls) {
      return el('div', { class: 'card stat ' + (cls || ''), 'data-stat': key },
        el('div', { class: 'v', text: value }), el('div', { class: 'k', text: label }));
    }

    function render(w, d, s) {
      err.textContent = '';
      var dl = {};
      (d.body.dead_letters || []).forEach(function (x) { dl[x.group] = (dl[x.group] || 0) + 1; });
      clear(groups);
      (w.body.groups || []).forEach(function (g) {
        groups.appendChild(el('tr', { class: 'group-row', 'data-group': g.group },
          el('td', { class: 'mono', text: g.group }),
          el('td', { class: 'num consumers', text: g.consumers }),
          el('td', { class: 'num pending', text: g.pending }),
          el('td', { class: 'num lag', text: g.lag === null ? '?' : g.lag }),
          el('td', { class: 'num dead-letters' }, dl[g.group] ? el('a', { href: '#/dead-letters', text: dl[g.group] }) : '0'),
          el('td', { class: 'mono muted', text: g.last_delivered_id || '' })));
      });
      if (!(w.body.groups || []).length)
        groups.appendChild(el('tr', null, el('td', { colspan: 6, class: 'muted', text: 'no consumer groups yet (workers not started?)' })));
      clear(stats);
      var b = s.body, win = b.window_s || STATS_WINDOW_S;
      var done = b.succeeded + b.failed;
      stats.appendChild(stat('started', 'started / s', (b.started / win).toFixed(2)));
      stats.appendChild(stat('finished', 'finished / s', (done / win).toFixed(2)));
      stats.appendChild(stat('succeeded', 'succeeded', b.succeeded, 'ok'));
      var reasons = Object.keys(b.failed_by_reason || {}).map(function (r) {
        return r + ' ' + b.failed_by_reason[r];
      }).join(', ');
      var failed = stat('failed', 'failed' + (reasons ? ' (' + reasons + ')' : ''), b.failed, 'bad');
      var split = el('div', { class: 'split', title: b.succeeded + ' succeeded, ' + b.failed + ' failed' },
        el('div', { class: 'ok' }), el('div', { class: 'bad' }));
      split.firstChild.style.width = (done ? 100 * b.succeeded / done : 0) + '%';
      split.lastChild.style.width = (done ? 100 * b.failed / done : 0) + '%';
      failed.appendChild(split);
      stats.appendChild(failed);
      if (b.truncated) stats.appendChild(el('p', { class: 'muted', text: 'more entries than counted: figures are a lower bound' }));
    }

    function loop() {
      if (my !== gen) return;
      Promise.all([api('GET', '/api/workers'), api('GET', '/api/dead-letters'), api('GET', '/api/stats/sagas?window_s=' + STATS_WINDOW_S)])
        .then(function (r) {
          if (my !== gen) return;
          var bad = r.filter(function (x) { return x.status !== 200 || !x.body; });
          if (bad.length) err.textContent = 'cannot load: ' + errText(bad[0]);
          else render(r[0], r[1], r[2]);
          ready();
        }, function (e) {
          err.textContent = 'cannot reach the API: ' + e;
          ready();
        })
        .then(function () { return sleep(3000); })
        .then(loop);
    }
    loop();
  }

  /* ---- find ---------------------------------------------------------------- */

  function findForms(client) {
    var co = el('input', { type: 'text', id: 'find-checkout', placeholder: 'checkout id', spellcheck: 'false' });
    var cl = el('input', { type: 'text', id: 'find-client', placeholder: 'client id', spellcheck: 'false' });
    cl.value = client || '';
    return el('div', { class: 'card' },
      el('form', { class: 'find', id: 'find-checkout-form', onsubmit: function (e) {
        e.preventDefault();
        if (co.value.trim()) location.hash = '#/checkout/' + encodeURIComponent(co.value.trim());
      } }, el('label', { for: 'find-checkout', text: 'Checkout' }), co, el('button', { type: 'submit', text: 'Open timeline' })),
      el('form', { class: 'find', id: 'find-client-form', onsubmit: function (e) {
        e.preventDefault();
        if (cl.value.trim()) location.hash = '#/client/' + encodeURIComponent(cl.value.trim());
      } }, el('label', { for: 'find-client', text: 'Client' }), cl, el('button', { type: 'submit', text: 'Recent checkouts' })));
  }

  function find() {
    begin('find', 'Find');
    page.appendChild(el('h1', { text: 'Find' }));
    page.appendChild(findForms());
    ready();
  }

  function client(id) {
    var my = begin('client', 'Client ' + id);
    page.appendChild(el('h1', null, 'Client ', el('span', { class: 'mono', id: 'client-id', text: id })));
    page.appendChild(findForms(id));
    var body = el('tbody');
    var msg = el('p', { id: 'client-message', class: 'muted' });
    page.appendChild(el('h2', { text: 'Recent checkouts (newest first)' }));
    page.appendChild(msg);
    page.appendChild(el('table', { id: 'client-checkouts' },
      el('thead', null, el('tr', null, el('th', { text: 'checkout' }), el('th', { text: 'status' }),
        el('th', { text: 'reason' }), el('th', { text: 'updated' }))), body));
    api('GET', '/api/clients/' + encodeURIComponent(id) + '/checkouts?count=50').then(function (r) {
      if (my !== gen) return;
      if (r.status !== 200 || !r.body) {
        msg.textContent = errText(r);
        msg.className = 'error';
      } else {
        r.body.checkouts.forEach(function (c) {
          body.appendChild(el('tr', { class: 'client-checkout', 'data-checkout-id': c.checkout_id, 'data-status': c.status },
            el('td', null, el('a', { class: 'mono', href: '#/checkout/' + encodeURIComponent(c.checkout_id), text: c.checkout_id })),
            el('td', null, el('span', { class: 'badge', 'data-status': c.status, text: c.status })),
            el('td', { text: c.reason || '' }),
            el('td', { class: 'muted', text: typeof c.updated_at === 'number' ? new Date(c.updated_at * 1000).toLocaleString() : '' })));
        });
        msg.textContent = r.body.checkouts.length ? '' : 'no checkouts for this client';
      }
      ready();
    });
  }

  /* ---- checkout timeline --------------------------------------------------- */

  function groupCell(g) {
    var tip = [g.group + ': ' + g.state];
    if (g.consumer) tip.push('consumer ' + g.consumer);
    if (g.deliveries !== undefined) tip.push('deliveries ' + g.deliveries);
    if (g.idle_ms !== undefined) tip.push('idle ' + g.idle_ms + ' ms');
    if (g.reason) tip.push('reason ' + g.reason);
    var text = STATE_TEXT[g.state] || g.state;
    if (g.state === 'in_flight') text += ' \u00d7' + g.deliveries;
    var cell = el('div', { class: 'tl-group', 'data-group': g.group, 'data-state': g.state, title: tip.join('\n') },
      el('span', { text: text }));
    if (g.state === 'in_flight')
      cell.appendChild(el('span', { class: 'detail', text: (g.consumer || '?') + ', idle ' + g.idle_ms + ' ms' }));
    if (g.state === 'parked' && g.reason)
      cell.appendChild(el('span', { class: 'detail', text: g.reason.length > 40 ? g.reason.slice(0, 40) + '\u2026' : g.reason }));
    return cell;
  }

  function renderTimeline(box, head, tl) {
    clear(head);
    head.appendChild(el('span', { class: 'id', text: tl.checkout_id }));
    head.appendChild(el('span', { id: 'checkout-status', class: 'badge', 'data-status': tl.status, text: tl.status }));
    head.appendChild(el('span', { id: 'checkout-reason', class: tl.reason ? 'error' : 'muted', text: tl.reason ? 'reason: ' + tl.reason : '' }));
    var client = tl.events.length && tl.events[0].payload && tl.events[0].payload.data && tl.events[0].payload.data.client_id;
    if (client) head.appendChild(el('a', { href: '#/client/' + encodeURIComponent(client), text: 'client ' + client }));

    var evs = tl.events;
    var em = evs.map(function (e) { return (e.payload && typeof e.payload.emitted_at === 'number') ? e.payload.emitted_at : Number(e.ts); });
    var t0 = Math.min.apply(null, em), t1 = Math.max.apply(null, em);
    var span = Math.max((t1 - t0) * 1000, 1);
    var groups = evs.length ? evs[0].groups.map(function (g) { return g.group; }) : [];

    clear(box);
    var hd = el('div', { class: 'tl-head' }, el('div', { text: 'event' }),
      el('div', null, el('div', { class: 'tl-scale' }, el('span', { text: '0 ms' }), el('span', { id: 'tl-span', text: fmtMs(span) }))),
      el('div', { text: 'hop' }), el('div', { text: 'producer' }));
    groups.forEach(function (g) { hd.appendChild(el('div', { class: 'tl-gh', title: g, text: shortGroup(g) })); });
    box.appendChild(hd);

    evs.forEach(function (e, i) {
      var p = e.payload || {};
      var depth = e.depth || 0;
      var end = (em[i] - t0) * 1000;
      var start = e.hop_ms === null || e.hop_ms === undefined ? end : Math.max(end - e.hop_ms, 0);
      var bar = el('div', { class: 'tl-bar', title: 'emitted at +' + fmtMs(end) + (e.hop_ms !== null ? ', ' + fmtMs(e.hop_ms) + ' after its cause' : '') });
      bar.style.left = (100 * start / span) + '%';
      bar.style.width = Math.max(100 * (end - start) / span, 0.6) + '%';
      if (start + 0.006 * span >= span) bar.style.left = 'calc(' + (100 * start / span) + '% - 3px)';
      var label = el('div', { class: 'tl-type', title: 'event ' + (p.event_id || '') + '\ncaused by ' + (p.causation_id || '(none)') },
        el('span', { class: 'tree', text: depth ? '\u2514\u2500 ' : '' }), el('span', { class: 'seq', text: '#' + (p.seq || '?') }),
        el('span', { text: e.type }));
      label.style.paddingLeft = (8 + 18 * Math.max(depth - 1, 0)) + 'px';   /* the glyph marks depth 1 */
      var row = el('div', {
        class: 'tl-row' + (e.branch === 'compensation' ? ' branch-compensation' : ' branch-main'),
        'data-type': e.type, 'data-seq': p.seq, 'data-depth': depth, 'data-branch': e.branch,
        'data-event-id': p.event_id, 'data-causation-id': p.causation_id || ''
      }, label, el('div', null, el('div', { class: 'tl-axis' }, bar)),
        el('div', { class: 'tl-hop', text: e.hop_ms === null || e.hop_ms === undefined ? '' : '+' + fmtMs(e.hop_ms) }),
        el('div', { class: 'tl-producer', text: p.producer || '' }));
      e.groups.forEach(function (g) { row.appendChild(groupCell(g)); });
      box.appendChild(row);
    });
  }

  function settled(tl) {
    return TERMINAL[tl.status] && tl.events.every(function (e) {
      return e.groups.every(function (g) { return g.state === 'done' || g.state === 'parked'; });
    });
  }

  function checkout(id) {
    var my = begin('checkout', 'Checkout ' + id);
    var head = el('div', { id: 'checkout-head' });
    var msg = el('p', { id: 'checkout-message', class: 'muted' });
    var box = el('div', { id: 'timeline' });
    page.appendChild(el('h1', { text: 'Checkout timeline' }));
    page.appendChild(head);
    page.appendChild(msg);
    page.appendChild(box);
    page.appendChild(el('p', { class: 'tl-legend' },
      el('span', { text: 'rows in causal order, indented under their cause; bars run from the cause\u2019s emission to the event\u2019s' }),
      el('span', { class: 'error', text: 'red rows: compensation branch' })));
    var path = '/api/checkouts/' + encodeURIComponent(id);

    function load() {
      return api('GET', path + '/timeline').then(function (r) {
        if (my !== gen) return null;
        if (r.status === 404) {
          msg.textContent = 'no checkout ' + id;
          msg.id = 'not-found';
          ready();
          return null;
        }
        if (r.status !== 200 || !r.body) {
          msg.textContent = errText(r);
          return { retry: true };
        }
        renderTimeline(box, head, r.body);
        msg.textContent = settled(r.body) ? '' : (TERMINAL[r.body.status] ? 'saga ended; groups still working' : 'running: updates live');
        ready();
        return r.body;
      });
    }

    function loop(tl) {
      if (my !== gen || tl === null) return;
      var next;
      if (tl.retry) next = sleep(2000);
      else if (!TERMINAL[tl.status]) next = api('GET', path + '?wait_ms=10000');   /* long-poll to terminal */
      else if (!settled(tl)) next = sleep(1000);
      else return;
      next.then(function () { return my === gen ? load() : null; }, function () { return sleep(2000).then(load); }).then(loop);
    }
    load().then(loop, function (e) { msg.textContent = 'cannot reach the API: ' + e; ready(); });
  }

  /* ---- dead letters -------------------------------------------------------- */

  function deadLetters() {
    var my = begin('dead-letters', 'Dead letters');
    var token = el('input', { type: 'password', id: 'admin-token', placeholder: 'admin token (kept in this page only)', autocomplete: 'off' });
    token.value = adminToken;
    token.addEventListener('input', function () { adminToken = token.value; });
    var msg = el('p', { id: 'dl-message', class: 'muted' });
    var body = el('tbody');
    var groupSel = el('select', { id: 'dl-group' });
    var count = el('input', { type: 'number', id: 'dl-count', min: 1, max: 1000, value: 100 });
    page.appendChild(el('h1', { text: 'Dead letters' }));
    page.appendChild(el('div', { class: 'card' },
      el('form', { class: 'find', onsubmit: function (e) { e.preventDefault(); } }, el('label', { for: 'admin-token', text: 'Admin token' }), token),
      el('form', { class: 'find', id: 'dl-group-form', onsubmit: function (e) {
        e.preventDefault();
        retry('/api/dead-letters/retry', { group: groupSel.value, count: Number(count.value) });
      } }, el('label', { for: 'dl-group', text: 'Retry a group' }), groupSel, count, el('button', { type: 'submit', text: 'Retry oldest' }))));
    page.appendChild(msg);
    page.appendChild(el('table', { id: 'dead-letters' },
      el('thead', null, el('tr', null, el('th', { text: 'id' }), el('th', { text: 'group' }), el('th', { text: 'reason' }),
        el('th', { class: 'num', text: 'attempts' }), el('th', { text: 'event' }), el('th', { text: '' }))), body));

    function say(text, result) {
      msg.textContent = text;
      msg.setAttribute('data-result', result);
      msg.className = result === 'ok' ? 'muted' : 'error';
    }

    function retry(path, payload) {
      if (!adminToken) { say('type the admin token first', 'error'); return; }
      api('POST', path, payload, { Authorization: 'Bearer ' + adminToken }).then(function (r) {
        if (my !== gen) return;
        if (r.status === 200) say('retried: ' + JSON.stringify(r.body), 'ok');
        else say('retry failed: ' + errText(r), 'error');
        load();
      });
    }

    function load() {
      return Promise.all([api('GET', '/api/dead-letters'), api('GET', '/api/workers')]).then(function (r) {
        if (my !== gen) return;
        var res = r[0];
        clear(body);
        if (res.status !== 200 || !res.body) {
          say(errText(res), 'error');
          ready();
          return;
        }
        var names = (r[1].body && r[1].body.groups || []).map(function (g) { return g.group; });
        res.body.dead_letters.forEach(function (d) { if (names.indexOf(d.group) < 0) names.push(d.group); });
        var keep = groupSel.value;
        clear(groupSel);
        names.forEach(function (n) { groupSel.appendChild(el('option', { value: n, text: n })); });
        if (keep) groupSel.value = keep;
        res.body.dead_letters.forEach(function (d) {
          var ev = d.event || {};
          var p = ev.payload && typeof ev.payload === 'object' ? ev.payload : null;
          var what = el('td', null, el('span', { class: 'mono', text: (ev.type || '(no type)') + ' ' + (ev.id || '') }));
          if (p && p.aggregate_id)
            what.appendChild(el('div', null, el('a', { href: '#/checkout/' + encodeURIComponent(p.aggregate_id), text: 'checkout ' + p.aggregate_id })));
          else if (typeof ev.payload === 'string')
            what.appendChild(el('div', { class: 'muted mono', text: ev.payload.slice(0, 120) }));
          body.appendChild(el('tr', { class: 'dl-row', 'data-id': d.id, 'data-group': d.group },
            el('td', { class: 'mono', text: d.id }), el('td', { class: 'mono', text: d.group }),
            el('td', { class: 'reason', text: d.reason }), el('td', { class: 'num attempts', text: d.attempts }), what,
            el('td', null, el('button', { class: 'secondary dl-retry', type: 'button', 'data-id': d.id, text: 'Retry',
              onclick: function () {
                retry('/api/dead-letters/' + encodeURIComponent(d.id) + '/retry?group=' + encodeURIComponent(d.group));
              } }))));
        });
        if (!res.body.dead_letters.length)
          body.appendChild(el('tr', { id: 'dl-empty' }, el('td', { colspan: 6, class: 'muted', text: 'no dead letters' })));
        ready();
      });
    }
    load();
  }

  /* ---- router -------------------------------------------------------------- */

  function route() {
    var h = location.hash.replace(/^#/, '') || '/';
    var m;
    if ((m = h.match(/^\/checkout\/(.+)$/))) checkout(decodeURIComponent(m[1]));
    else if ((m = h.match(/^\/client\/(.+)$/))) client(decodeURIComponent(m[1]));
    else if (h === '/find') find();
    else if (h === '/dead-letters') deadLetters();
    else overview();
  }
  window.addEventListener('hashchange', route);
  route();
})();
