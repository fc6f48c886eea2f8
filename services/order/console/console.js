// The admin console: plain JavaScript over the admin APIs of the three
// services, all through this origin (the order service forwards to the
// other two, see services/order/src/console.rs). Everything a service
// answers is put on the page as text, never as HTML: a dead letter's
// payload is whatever someone published.
'use strict';

(() => {
  const TOKEN_KEY = 'adminConsoleToken';
  const REFRESH_MS = 5000;
  const PAGE_SIZE = 20;

  const state = {
    settings: null,
    refreshing: false,
    timer: null,
    // The order whose timeline is open ('' for none).
    openOrder: '',
    // Failed calls by what they were for; a later success clears its entry.
    errors: new Map(),
    // Dead letters whose payload is open, and discard notes being typed,
    // kept across refreshes.
    expanded: new Set(),
    discarding: new Map(),
    // Per list: the cursors of the pages visited, and the next one.
    pages: new Map(),
  };

  const $ = (id) => document.getElementById(id);

  // ---- DOM helpers -------------------------------------------------------

  function el(tag, attrs = {}, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs)) {
      if (value === undefined || value === null || value === false) continue;
      if (key === 'class') node.className = value;
      else if (key.startsWith('on')) node.addEventListener(key.slice(2), value);
      else node.setAttribute(key, value === true ? '' : String(value));
    }
    for (const child of children.flat()) {
      if (child === undefined || child === null || child === false) continue;
      node.append(child instanceof Node ? child : String(child));
    }
    return node;
  }

  function when(iso) {
    if (!iso) return '';
    const date = new Date(iso);
    const seconds = Math.max(0, Math.round((Date.now() - date.getTime()) / 1000));
    return el('time', { datetime: iso, title: iso }, `${date.toLocaleString()} (${age(seconds)} ago)`);
  }

  function age(seconds) {
    if (seconds === null || seconds === undefined) return '';
    const s = Math.round(Number(seconds));
    if (s < 120) return `${s} s`;
    if (s < 7200) return `${Math.round(s / 60)} min`;
    if (s < 172800) return `${Math.round(s / 3600)} h`;
    return `${Math.round(s / 86400)} d`;
  }

  // A queue name, which may break after each dot: long namespaced names
  // fit a narrow column.
  function queueName(name) {
    return el('span', { class: 'queue' }, name.split('.').flatMap((part, i, all) => (
      i < all.length - 1 ? [`${part}.`, el('wbr')] : [part])));
  }

  // A link only to http(s) or this origin.
  function safeUrl(url) {
    if (typeof url !== 'string') return null;
    if (url.startsWith('/') && !url.startsWith('//')) return url;
    try {
      const parsed = new URL(url);
      return parsed.protocol === 'http:' || parsed.protocol === 'https:' ? parsed.href : null;
    } catch {
      return null;
    }
  }

  // columns: [[title, row => cell]]; rowAttrs: row => attributes of its <tr>.
  function table(columns, rows, rowAttrs = () => ({}), after = () => null) {
    if (!rows.length) return el('p', { class: 'empty' }, 'none');
    return el('table', {},
      el('thead', {}, el('tr', {}, columns.map(([title]) => el('th', {}, title)))),
      el('tbody', {}, rows.flatMap((row) => [
        el('tr', rowAttrs(row), columns.map(([, cell]) => el('td', {}, cell(row)))),
        after(row, columns.length),
      ])));
  }

  function replace(container, ...nodes) {
    container.replaceChildren(...nodes.filter(Boolean));
  }

  // ---- calls -------------------------------------------------------------

  class CallError extends Error {
    constructor(call, status, code, message) {
      super(message);
      this.call = call;
      this.status = status;
      this.code = code;
    }

    describe() {
      if (this.status === 0) return `${this.call} → no answer: ${this.message}`;
      return `${this.call} → ${this.status}${this.code ? ` ${this.code}` : ''}: ${this.message}`;
    }
  }

  function token() {
    return sessionStorage.getItem(TOKEN_KEY);
  }

  function api(service) {
    const entry = state.settings.services.find((s) => s.name === service);
    return entry ? entry.api : '';
  }

  // method path [body] → the decoded JSON; a CallError otherwise. `accept`
  // lists statuses besides 2xx whose JSON body is an answer (/ready's 503).
  async function call(method, path, { body, accept = [] } = {}) {
    const label = `${method} ${path}`;
    const current = token();
    if (!current) throw new CallError(label, 401, 'unauthorized', 'no admin token given yet');
    const init = { method, headers: { Authorization: `Bearer ${current}`, Accept: 'application/json' } };
    if (body !== undefined) {
      init.headers['Content-Type'] = 'application/json';
      init.body = JSON.stringify(body);
    }
    let response;
    try {
      response = await fetch(path, init);
    } catch (error) {
      throw new CallError(label, 0, '', `the order service did not answer (${error.message})`);
    }
    const text = await response.text();
    let json = null;
    try {
      json = text ? JSON.parse(text) : null;
    } catch {
      json = null;
    }
    if (response.ok || (accept.includes(response.status) && json)) return json;
    const code = json && json.error ? json.error : '';
    const message = json && json.message ? json.message : (text.slice(0, 300) || response.statusText);
    if (response.status === 401 && token() === current) {
      sessionStorage.removeItem(TOKEN_KEY);
      askForToken(`The token was refused: ${message}`);
    }
    throw new CallError(label, response.status, code, message);
  }

  function withQuery(path, params) {
    const query = new URLSearchParams();
    for (const [key, value] of Object.entries(params)) {
      if (value !== null && value !== undefined && value !== '') query.set(key, value);
    }
    const text = query.toString();
    return text ? `${path}?${text}` : path;
  }

  // ---- errors and notices --------------------------------------------------

  function renderErrors() {
    const list = $('error-list');
    replace(list, ...[...state.errors.entries()].map(([key, text]) => el('li', { 'data-key': key }, text)));
    $('error-banner').hidden = state.errors.size === 0;
  }

  // Runs a loader; its failure goes into the banner under `key` and, in
  // place of the data, into `where` (a container, or a function that
  // shows it), so nothing stale passes for current. Its success takes the
  // entry out. A 401 is the token prompt's, not the banner's.
  async function guarded(key, work, where) {
    try {
      await work();
      state.errors.delete(key);
    } catch (error) {
      if (!(error instanceof CallError)) throw error;
      if (error.status === 401) {
        state.errors.clear();
      } else {
        state.errors.set(key, error.describe());
        const failed = el('p', { class: 'error', 'data-testid': `failed-${key}` }, `Not loaded: ${error.describe()}`);
        if (typeof where === 'function') where(failed);
        else if (where) replace(where, failed);
      }
    }
    renderErrors();
  }

  let noticeTimer = null;
  function notice(text) {
    const box = $('notice');
    box.textContent = text;
    box.hidden = false;
    clearTimeout(noticeTimer);
    noticeTimer = setTimeout(() => { box.hidden = true; }, 8000);
  }

  // An operator's action (replay, discard, retry): its failure stays in the
  // banner until the same action succeeds or the banner is refreshed clean.
  async function act(key, button, work) {
    if (button) button.disabled = true;
    try {
      await work();
      state.errors.delete(key);
    } catch (error) {
      if (!(error instanceof CallError)) throw error;
      if (error.status !== 401) state.errors.set(key, error.describe());
    } finally {
      if (button) button.disabled = false;
      renderErrors();
    }
  }

  // ---- token ---------------------------------------------------------------

  function askForToken(message) {
    const dialog = $('token-dialog');
    const error = $('token-error');
    error.textContent = message || '';
    error.hidden = !message;
    $('token-input').value = '';
    if (!dialog.open) dialog.showModal();
    $('token-input').focus();
  }

  function onTokenSubmit(event) {
    event.preventDefault();
    const value = $('token-input').value.trim();
    if (!value) return;
    sessionStorage.setItem(TOKEN_KEY, value);
    $('token-dialog').close();
    refresh();
  }

  // ---- paging --------------------------------------------------------------

  function page(key) {
    if (!state.pages.has(key)) state.pages.set(key, { cursors: [null], next: null });
    return state.pages.get(key);
  }

  function cursor(key) {
    const p = page(key);
    return p.cursors[p.cursors.length - 1];
  }

  function resetPage(key) {
    state.pages.delete(key);
  }

  function pager(key, nextCursor, reload) {
    const p = page(key);
    p.next = nextCursor || null;
    if (p.cursors.length === 1 && !p.next) return null;
    return el('div', { class: 'pager' },
      el('span', { class: 'muted' }, `page ${p.cursors.length}`),
      p.cursors.length > 1 && el('button', {
        type: 'button',
        'data-testid': `${key}-first-page`,
        onclick: () => { resetPage(key); reload(); },
      }, 'First page'),
      p.next && el('button', {
        type: 'button',
        'data-testid': `${key}-next-page`,
        onclick: () => { p.cursors.push(p.next); reload(); },
      }, 'Next page'));
  }

  // ---- sections ------------------------------------------------------------

  function loadSagas() {
    return guarded('sagas', async () => {
      const oldest = await call('GET', '/admin/sagas/stuck?olderThanSeconds=0&limit=1');
      const first = oldest.items[0];
      $('oldest-saga').textContent = first
        ? `Oldest unfinished saga: order ${first.orderId} (${first.status}), ${age(first.ageSeconds)} old, waiting for ${first.waitingFor}.`
        : 'No saga is unfinished.';
      const after = Math.max(0, Number($('stuck-after').value) || 0);
      const stuck = await call('GET', withQuery('/admin/sagas/stuck', {
        olderThanSeconds: after, limit: PAGE_SIZE, cursor: cursor('stuck'),
      }));
      replace($('stuck-sagas'),
        table([
          ['order', (s) => orderLink(s.orderId)],
          ['customer', (s) => s.customerId],
          ['status', (s) => el('span', { class: `status ${s.status}` }, s.status)],
          ['age', (s) => age(s.ageSeconds)],
          ['accepted', (s) => when(s.createdAt)],
          ['waiting for', (s) => s.waitingFor],
        ], stuck.items, (s) => ({ 'data-testid': `saga-${s.orderId}` })),
        pager('stuck', stuck.nextCursor, loadSagas));
    }, $('stuck-sagas'));
  }

  function loadOrders() {
    return guarded('orders', async () => {
      const status = $('order-status').value;
      const orders = await call('GET', withQuery(`/api/orders/status/${encodeURIComponent(status)}`, {
        limit: PAGE_SIZE, cursor: cursor('orders'),
      }));
      replace($('orders-table'),
        table([
          ['order', (o) => orderLink(o.orderId)],
          ['customer', (o) => `${o.customerId} <${o.customerEmail}>`],
          ['items', (o) => o.items.map((i) => `${i.quantity} × ${i.productId}`).join(', ')],
          ['total', (o) => (typeof o.totalAmount === 'number' ? o.totalAmount.toFixed(2) : '')],
          ['status', (o) => el('span', { class: `status ${o.status}` }, o.status)],
          ['reason', (o) => o.reason || ''],
          ['version', (o) => o.version],
          ['updated', (o) => when(o.updatedAt)],
        ], orders.items, (o) => ({ 'data-testid': `order-${o.orderId}` })),
        pager('orders', orders.nextCursor, loadOrders));
    }, $('orders-table'));
  }

  function loadLowStock() {
    return guarded('low-stock', async () => {
      const products = await call('GET', withQuery(`${api('inventory')}/api/products/low-stock`, {
        limit: PAGE_SIZE, cursor: cursor('low-stock'),
      }));
      replace($('low-stock-table'),
        table([
          ['sku', (p) => p.sku],
          ['name', (p) => p.name],
          ['available', (p) => el('strong', {}, p.stock)],
          ['reserved', (p) => p.reserved],
          ['threshold', (p) => p.lowStockThreshold],
          ['price', (p) => p.price.toFixed(2)],
          ['product', (p) => p.productId],
          ['changed', (p) => when(p.updatedAt)],
        ], products.items, (p) => ({ 'data-testid': `product-${p.productId}` })),
        pager('low-stock', products.nextCursor, loadLowStock));
    }, $('low-stock-table'));
  }

  function notificationColumns(withRetry) {
    const columns = [
      ['created', (n) => when(n.createdAt)],
      ['kind', (n) => n.kind],
      ['recipient', (n) => n.recipient],
      ['subject', (n) => n.subject],
      ['attempts', (n) => n.attempts],
      ['last error', (n) => n.lastError || ''],
      ['order', (n) => n.orderId || n.productId || ''],
    ];
    if (withRetry) {
      columns.push(['', (n) => el('button', {
        type: 'button',
        'data-testid': `retry-notification-${n.notificationId}`,
        onclick: (event) => act(`retry:${n.notificationId}`, event.currentTarget, async () => {
          await call('POST', `${api('notification')}/admin/notifications/${encodeURIComponent(n.notificationId)}/retry`);
          notice(`Notification ${n.notificationId} is PENDING again.`);
          await loadNotifications();
        }),
      }, 'Retry')]);
    }
    return columns;
  }

  function loadNotifications() {
    return guarded('notifications', async () => {
      const base = `${api('notification')}/api/notifications/status`;
      const [failed, pending] = await Promise.all([
        call('GET', withQuery(`${base}/FAILED`, { limit: PAGE_SIZE, cursor: cursor('failed') })),
        call('GET', withQuery(`${base}/PENDING`, { limit: PAGE_SIZE, cursor: cursor('pending') })),
      ]);
      const attrs = (n) => ({ 'data-testid': `notification-${n.notificationId}` });
      replace($('failed-notifications'),
        table(notificationColumns(true), failed.items, attrs),
        pager('failed', failed.nextCursor, loadNotifications));
      replace($('pending-notifications'),
        table(notificationColumns(false), pending.items, attrs),
        pager('pending', pending.nextCursor, loadNotifications));
      $('retry-all-notifications').disabled = failed.items.length === 0;
    }, (failed) => {
      replace($('failed-notifications'), failed);
      replace($('pending-notifications'), failed.cloneNode(true));
    });
  }

  function retryAllNotifications(event) {
    act('retry-all', event.currentTarget, async () => {
      const result = await call('POST', `${api('notification')}/admin/notifications/retry`, { body: {} });
      notice(`${result.requeued} FAILED notification(s) sent again.`);
      await loadNotifications();
    });
  }

  function prettyPayload(payload) {
    try {
      return JSON.stringify(JSON.parse(payload), null, 2);
    } catch {
      return payload;
    }
  }

  function deadLetterActions(service, d) {
    if (d.status !== 'DEAD') return '';
    const base = `${api(service)}/admin/dead-letters/${encodeURIComponent(d.deadLetterId)}`;
    return el('span', { class: 'actions' },
      el('button', {
        type: 'button',
        'data-testid': `replay-${d.deadLetterId}`,
        onclick: (event) => act(`replay:${d.deadLetterId}`, event.currentTarget, async () => {
          const replayed = await call('POST', `${base}/replay`);
          notice(`Dead letter ${d.deadLetterId} (${service}) sent back to ${replayed.queue}.`);
          await loadDeadLetters(service);
        }),
      }, 'Replay'),
      el('button', {
        type: 'button',
        'data-testid': `discard-${d.deadLetterId}`,
        onclick: () => {
          state.discarding.set(d.deadLetterId, state.discarding.get(d.deadLetterId) || '');
          loadDeadLetters(service);
        },
      }, 'Discard…'));
  }

  function discardForm(service, d, span) {
    if (!state.discarding.has(d.deadLetterId) || d.status !== 'DEAD') return null;
    const id = d.deadLetterId;
    const input = el('input', {
      type: 'text',
      'data-testid': `discard-note-${id}`,
      placeholder: 'why it is given up on (kept on record)',
      maxlength: 1000,
      value: state.discarding.get(id),
      oninput: (event) => state.discarding.set(id, event.currentTarget.value),
    });
    const form = el('form', {
      class: 'discard-form',
      onsubmit: (event) => {
        event.preventDefault();
        act(`discard:${id}`, form.querySelector('button[type=submit]'), async () => {
          await call('POST', `${api(service)}/admin/dead-letters/${encodeURIComponent(id)}/discard`, {
            body: { note: input.value },
          });
          state.discarding.delete(id);
          notice(`Dead letter ${id} (${service}) discarded.`);
          await loadDeadLetters(service);
        });
      },
    },
    input,
    el('button', { type: 'submit', 'data-testid': `discard-confirm-${id}` }, 'Discard'),
    el('button', {
      type: 'button',
      onclick: () => { state.discarding.delete(id); loadDeadLetters(service); },
    }, 'Cancel'));
    return el('tr', { class: 'discard-row' }, el('td', { colspan: span }, form));
  }

  function deadLetterBox(service) {
    let box = document.querySelector(`[data-dead-letters="${service}"]`);
    if (!box) {
      box = el('div', { class: 'service-dead-letters', 'data-dead-letters': service, 'data-testid': `dead-letters-${service}` });
      $('dead-letter-services').append(box);
    }
    return box;
  }

  function loadDeadLetters(service) {
    if (!service) return Promise.all(state.settings.services.map((s) => loadDeadLetters(s.name)));
    if (deadLettersGrouped()) return loadDeadLetterGroups(service);
    const key = `dead-${service}`;
    return guarded(key, async () => {
      const status = $('dead-letter-status').value;
      const orderId = deadLetterOrder();
      const letters = await call('GET', withQuery(`${api(service)}/admin/dead-letters`, {
        status, orderId, limit: PAGE_SIZE, cursor: cursor(key),
      }));
      const box = deadLetterBox(service);
      // Not while a note is being typed in it: the input would be rebuilt.
      if (document.activeElement && box.contains(document.activeElement)
          && document.activeElement.matches('.discard-form input')) return;
      const replayAll = status === 'DEAD' && letters.items.length > 0 && el('button', {
        type: 'button',
        'data-testid': `replay-all-${service}`,
        onclick: (event) => {
          const of = orderId ? ` of order ${orderId}` : '';
          if (!window.confirm(`Replay every DEAD letter${of} of the ${service} service (up to 1000)?`)) return;
          act(`replay-all:${service}`, event.currentTarget, async () => {
            const result = await call('POST', `${api(service)}/admin/dead-letters/replay`, {
              body: orderId ? { orderId } : {},
            });
            notice(`${result.replayed} dead letter(s) of the ${service} service sent back.`);
            await loadDeadLetters(service);
          });
        },
      }, 'Replay all DEAD');
      replace(box,
        el('h3', {}, `${service} service `, replayAll),
        table([
          ['died', (d) => when(d.deadAt)],
          ['event', (d) => el('span', {}, d.eventType || d.routingKey, el('br'),
            el('small', { class: 'muted' }, queueName(d.queue)))],
          ['reason', (d) => el('span', { class: 'reason', 'data-testid': `reason-${d.deadLetterId}` }, d.reason)],
          ['order', (d) => deadLetterOrderCell(d)],
          ['attempts', (d) => d.attempts],
          ['last error', (d) => d.lastError || ''],
          ['replays', (d) => d.replayCount],
          ['status', (d) => el('span', { class: `status ${d.status}` }, d.status,
            d.discardNote ? el('small', { class: 'muted' }, ` (${d.discardNote})`) : null)],
          ['payload', (d) => {
            const details = el('details', {
              'data-testid': `payload-${d.deadLetterId}`,
              open: state.expanded.has(d.deadLetterId),
              ontoggle: (event) => {
                if (event.currentTarget.open) state.expanded.add(d.deadLetterId);
                else state.expanded.delete(d.deadLetterId);
              },
            }, el('summary', {}, `${d.payload.length} bytes`), el('pre', {}, prettyPayload(d.payload)));
            return details;
          }],
          ['', (d) => deadLetterActions(service, d)],
        ], letters.items,
        (d) => ({ id: `dead-letter-${d.deadLetterId}`, 'data-testid': `dead-letter-${d.deadLetterId}` }),
        (d, span) => discardForm(service, d, span)),
        pager(key, letters.nextCursor, () => loadDeadLetters(service)));
    }, (failed) => replace(deadLetterBox(service), el('h3', {}, `${service} service`), failed));
  }

  // ---- dead letters by order and by cause ----------------------------------
  // The order filter, the view grouped by cause, and the hook that opens one
  // order's dead letters: `#dead-letters?orderId=<id>` (a link from anywhere)
  // or `window.adminConsole.showDeadLettersOfOrder(id)`.

  const DEAD_LETTERS_HASH = '#dead-letters';

  // ---- one order: its timeline across the services, and its retry --------

  const ORDER_HASH = '#order';

  // A link that opens the order's timeline.
  function orderLink(orderId) {
    return el('a', {
      href: `${ORDER_HASH}?orderId=${encodeURIComponent(orderId)}`,
      'data-testid': `open-${orderId}`,
      title: 'its life in every service',
    }, orderId);
  }

  // What a line of the history is about, in a few words.
  function historySubject(item) {
    switch (item.kind) {
      case 'status_changed':
        return `${item.from ? `${item.from} → ` : ''}${item.to}`;
      case 'email':
        return `${item.eventType} to ${item.recipient}: ${item.status}`;
      case 'retried':
        return `${item.eventType}: ${item.attempt} failed attempt(s) before`;
      default:
        return item.eventType || '';
    }
  }

  function historyDetail(item) {
    const parts = [];
    if (item.detail) parts.push(item.detail);
    if (item.messageId) parts.push(`Message-ID ${item.messageId}`);
    if (item.eventId) parts.push(`event ${item.eventId}`);
    if (item.causationId) parts.push(`caused by ${item.causationId}`);
    if (item.kind === 'event_handled' && item.attempt > 1) parts.push(`attempt ${item.attempt}`);
    const text = parts.join(' · ');
    if (!item.deadLetterId) return text;
    return el('span', {}, `${text} `, el('a', {
      href: '#', 'data-testid': `timeline-dead-letter-${item.deadLetterId}`,
      onclick: (event) => { event.preventDefault(); showDeadLettersOfOrder(state.openOrder); },
    }, 'dead letters of this order'));
  }

  function retryButton(order) {
    if (order.status !== 'FAILED') return null;
    const button = el('button', { type: 'button', 'data-testid': 'retry-saga' }, 'Retry saga');
    button.addEventListener('click', () => act(`retry-${order.orderId}`, button, async () => {
      const retried = await call('POST', `/admin/orders/${encodeURIComponent(order.orderId)}/retry`);
      notice(`Order ${retried.orderId} runs its saga again (attempt ${retried.attempt}).`);
      await loadOpenOrder();
    }));
    return button;
  }

  // The open order's summary and timeline (nothing when none is open).
  function loadOpenOrder() {
    const id = state.openOrder;
    if (!id) return Promise.resolve();
    const path = `/api/orders/${encodeURIComponent(id)}`;
    return guarded('order', async () => {
      const [order, history] = await Promise.all([call('GET', path), call('GET', `${path}/history`)]);
      const deadLetters = history.items.filter((i) => i.kind === 'dead_lettered').length;
      replace($('order-summary'),
        el('p', {},
          `${order.orderId}: `, el('span', { class: `status ${order.status}` }, order.status),
          ` · attempt ${order.attempt} · ${order.customerId} <${order.customerEmail}> · `,
          order.items.map((i) => `${i.quantity} × ${i.productId}`).join(', '),
          order.reason ? ` · ${order.reason}` : '', ' ',
          retryButton(order), ' ',
          el('a', {
            href: `${DEAD_LETTERS_HASH}?orderId=${encodeURIComponent(order.orderId)}`,
            'data-testid': 'order-dead-letters',
          }, `dead letters of this order (${deadLetters})`)),
        history.incomplete.length
          ? el('p', { class: 'error', 'data-testid': 'timeline-incomplete' },
            `Missing: ${history.incomplete.map((m) => `${m.service} (${m.reason})`).join('; ')}`)
          : null);
      replace($('order-timeline'), table([
        ['at', (i) => when(i.at)],
        ['service', (i) => i.service],
        ['what', (i) => el('span', { class: `kind ${i.kind}` }, i.kind.replace(/_/g, ' '))],
        ['', historySubject],
        ['details', historyDetail],
      ], history.items, (i) => ({ 'data-testid': `timeline-${i.kind}` })));
    }, $('order-summary'));
  }

  // Opens `orderId`'s timeline and keeps the address in step.
  function openOrder(orderId) {
    const id = String(orderId || '').trim();
    state.openOrder = id;
    $('order-id').value = id;
    const hash = id ? `${ORDER_HASH}?orderId=${encodeURIComponent(id)}` : '';
    if (hash && window.location.hash !== hash) window.history.replaceState(null, '', hash);
    $('order').scrollIntoView();
    return state.settings && token() ? loadOpenOrder() : Promise.resolve();
  }

  function followOrderHash() {
    const hash = window.location.hash;
    if (!hash.startsWith(`${ORDER_HASH}?`)) return;
    openOrder(new URLSearchParams(hash.slice(ORDER_HASH.length + 1)).get('orderId'));
  }

  function startOrderView() {
    $('order-form').addEventListener('submit', (event) => {
      event.preventDefault();
      openOrder($('order-id').value);
    });
    window.addEventListener('hashchange', followOrderHash);
  }

  function deadLetterOrder() {
    return $('dead-letter-order').value.trim();
  }

  function deadLettersGrouped() {
    return $('dead-letter-grouped').checked;
  }

  function deadLetterOrderCell(d) {
    if (!d.orderId) return '';
    return el('a', {
      href: `${DEAD_LETTERS_HASH}?orderId=${encodeURIComponent(d.orderId)}`,
      'data-testid': `order-of-${d.deadLetterId}`,
      title: 'every dead letter of this order',
    }, d.orderId);
  }

  function reloadDeadLetters() {
    for (const s of state.settings.services) resetPage(`dead-${s.name}`);
    return loadDeadLetters();
  }

  // Shows the dead letters of `orderId` (every status) in every service, or
  // all of them again for an empty id, and keeps the address in step.
  // `load: false` only sets the filter (the first refresh loads).
  function showDeadLettersOfOrder(orderId, { load = true } = {}) {
    const id = String(orderId || '').trim();
    $('dead-letter-order').value = id;
    $('dead-letter-grouped').checked = false;
    if (id) $('dead-letter-status').value = '';
    const hash = id ? `${DEAD_LETTERS_HASH}?orderId=${encodeURIComponent(id)}` : DEAD_LETTERS_HASH;
    if (window.location.hash !== hash) window.history.replaceState(null, '', hash);
    $('dead-letters').scrollIntoView();
    return load && state.settings && token() ? reloadDeadLetters() : Promise.resolve();
  }

  // `#dead-letters?orderId=…` in the address, when the page opens or the
  // hash changes (a link followed while the console is open).
  function followDeadLettersHash(options) {
    const hash = window.location.hash;
    if (hash !== DEAD_LETTERS_HASH && !hash.startsWith(`${DEAD_LETTERS_HASH}?`)) return;
    const params = new URLSearchParams(hash.slice(DEAD_LETTERS_HASH.length + 1));
    showDeadLettersOfOrder(params.get('orderId') || '', options);
  }

  // The body of a filtered replay or discard that selects exactly `g`.
  function groupFilter(g) {
    const filter = { reasonClass: g.reasonClass, queue: g.queue };
    if (g.eventType) filter.eventType = g.eventType;
    else filter.hasEventType = false;
    return filter;
  }

  function groupKey(service, g) {
    return `${service}-${g.reasonClass}-${g.eventType || 'none'}`;
  }

  function groupActions(service, g) {
    const key = groupKey(service, g);
    return el('span', { class: 'actions' },
      el('button', {
        type: 'button',
        'data-testid': `replay-group-${key}`,
        onclick: (event) => {
          if (!window.confirm(`Replay the ${g.count} DEAD letter(s) of this group (up to 1000)?`)) return;
          act(`replay-group:${key}`, event.currentTarget, async () => {
            const result = await call('POST', `${api(service)}/admin/dead-letters/replay`, { body: groupFilter(g) });
            notice(`${result.replayed} dead letter(s) of the ${service} service (${g.reasonClass}) sent back.`);
            await loadDeadLetters(service);
          });
        },
      }, 'Replay group'),
      el('button', {
        type: 'button',
        'data-testid': `discard-group-${key}`,
        onclick: () => {
          state.discarding.set(`group:${key}`, state.discarding.get(`group:${key}`) || '');
          loadDeadLetters(service);
        },
      }, 'Discard group…'));
  }

  function groupDiscardForm(service, g, span) {
    const key = groupKey(service, g);
    const id = `group:${key}`;
    if (!state.discarding.has(id)) return null;
    const input = el('input', {
      type: 'text',
      'data-testid': `discard-group-note-${key}`,
      placeholder: 'why this group is given up on (kept on each record)',
      maxlength: 1000,
      value: state.discarding.get(id),
      oninput: (event) => state.discarding.set(id, event.currentTarget.value),
    });
    const form = el('form', {
      class: 'discard-form',
      onsubmit: (event) => {
        event.preventDefault();
        act(`discard-group:${key}`, form.querySelector('button[type=submit]'), async () => {
          const result = await call('POST', `${api(service)}/admin/dead-letters/discard`, {
            body: { ...groupFilter(g), note: input.value },
          });
          state.discarding.delete(id);
          notice(`${result.discarded} dead letter(s) of the ${service} service (${g.reasonClass}) discarded.`);
          await loadDeadLetters(service);
        });
      },
    },
    input,
    el('button', { type: 'submit', 'data-testid': `discard-group-confirm-${key}` }, 'Discard group'),
    el('button', {
      type: 'button',
      onclick: () => { state.discarding.delete(id); loadDeadLetters(service); },
    }, 'Cancel'));
    return el('tr', { class: 'discard-row' }, el('td', { colspan: span }, form));
  }

  // The DEAD letters of `service` by cause, each group with its actions.
  function loadDeadLetterGroups(service) {
    return guarded(`dead-${service}`, async () => {
      const { groups } = await call('GET', `${api(service)}/admin/dead-letters/groups`);
      const box = deadLetterBox(service);
      if (document.activeElement && box.contains(document.activeElement)
          && document.activeElement.matches('.discard-form input')) return;
      replace(box,
        el('h3', {}, `${service} service: DEAD letters by cause`),
        table([
          ['cause', (g) => el('span', { class: 'reason' }, g.reasonClass)],
          ['event', (g) => el('span', {}, g.eventType || '(not an event)', el('br'),
            el('small', { class: 'muted' }, queueName(g.queue)))],
          ['count', (g) => el('strong', { 'data-testid': `group-count-${groupKey(service, g)}` }, g.count)],
          ['oldest', (g) => when(g.oldestDeadAt)],
          ['newest', (g) => when(g.newestDeadAt)],
          ['sample reason', (g) => el('span', { class: 'reason' }, g.sampleReason)],
          ['', (g) => groupActions(service, g)],
        ], groups,
        (g) => ({ 'data-testid': `group-${groupKey(service, g)}` }),
        (g, span) => groupDiscardForm(service, g, span)));
    }, (failed) => replace(deadLetterBox(service), el('h3', {}, `${service} service`), failed));
  }

  function startDeadLetterFilters() {
    $('dead-letter-order').addEventListener('change', () => showDeadLettersOfOrder(deadLetterOrder()));
    $('dead-letter-grouped').addEventListener('change', reloadDeadLetters);
    window.addEventListener('hashchange', () => followDeadLettersHash());
    window.adminConsole = Object.assign(window.adminConsole || {}, { showDeadLettersOfOrder });
  }

  // ---- end of dead letters by order and by cause ---------------------------

  function healthBox(service) {
    let box = document.querySelector(`[data-health="${service}"]`);
    if (!box) {
      box = el('div', { class: 'card', 'data-health': service, 'data-testid': `health-${service}` });
      $('health-services').append(box);
    }
    return box;
  }

  function loadHealth() {
    return Promise.all(state.settings.services.map((s) => guarded(`ready-${s.name}`, async () => {
      const ready = await call('GET', `${s.api}/ready`, { accept: [503] });
      const up = (text) => el('span', { class: text === 'up' ? 'ok' : 'bad' }, text);
      replace(healthBox(s.name),
        el('h3', {}, `${s.name} `, el('span', {
          class: ready.status === 'ready' ? 'ok' : 'bad',
          'data-testid': `ready-${s.name}`,
        }, ready.status)),
        el('p', {}, 'MongoDB: ', up(ready.mongodb), ' · RabbitMQ: ', up(ready.rabbitmq)),
        el('h4', {}, 'Circuit breakers'),
        table([
          ['breaker', ([breaker]) => breaker],
          ['state', ([breaker, value]) => el('span', {
            class: value === 'closed' ? 'ok' : 'bad',
            'data-testid': `breaker-${s.name}-${breaker}`,
          }, value)],
        ], Object.entries(ready.breakers || {})),
        el('h4', {}, 'Consumers'),
        table([
          ['queue', (c) => el('span', {}, queueName(c.queue), el('br'), el('small', { class: 'muted' }, c.role))],
          ['connected', (c) => {
            if (c.connected) return el('span', { class: 'ok' }, 'yes');
            // Paused by an operator: no channel, on purpose (see Consumers).
            if (c.state === 'paused') return el('span', { class: 'consumer-state paused' }, 'no, paused');
            return el('span', { class: 'bad' }, `no, for ${age(c.disconnectedSeconds)}`);
          }],
          ['in flight', (c) => c.inFlight],
          ['last ack', (c) => (c.lastAckAgeSeconds === null ? 'never' : `${age(c.lastAckAgeSeconds)} ago`)],
          ['restarts / timeouts', (c) => `${c.restarts} / ${c.timeouts}`],
        ], ready.consumers || [], (c) => ({ 'data-testid': `consumer-${c.queue}` })));
    }, (failed) => replace(healthBox(s.name),
      el('h3', {}, `${s.name} `, el('span', { class: 'bad', 'data-testid': `ready-${s.name}` }, 'no answer')),
      failed))));
  }

  // ---- consumers: pause and resume ---------------------------------------
  // The Consumers panel: each service's consumers (GET /admin/consumers)
  // with a Pause or Resume button. A pause is stored by the service and
  // applies to all its instances; the state shown is the instance's that
  // answered.

  function consumersBox(service) {
    let box = document.querySelector(`[data-consumers="${service}"]`);
    if (!box) {
      box = el('div', { class: 'card', 'data-consumers': service, 'data-testid': `consumers-${service}` });
      $('consumer-services').append(box);
    }
    return box;
  }

  function consumerState(c) {
    // Asked for and not yet in effect: its deliveries in hand are settling.
    const pending = c.pauseRequested !== (c.state === 'paused');
    const label = pending ? `${c.state} (${c.pauseRequested ? 'pausing' : 'resuming'})` : c.state;
    return el('span', {
      class: `consumer-state ${c.state}`,
      'data-testid': `consumer-state-${c.queue}`,
      title: c.pausedSince ? `paused since ${c.pausedSince}` : null,
    }, label);
  }

  function consumerAction(service, c) {
    const action = c.pauseRequested ? 'resume' : 'pause';
    return el('button', {
      type: 'button',
      'data-testid': `${action}-consumer-${c.queue}`,
      onclick: (event) => {
        if (action === 'pause' && !window.confirm(
          `Pause the consumer of ${c.queue} on every instance of the ${service} service? `
          + 'Its messages wait in the queue until it is resumed.')) return;
        act(`${action}:${c.queue}`, event.currentTarget, async () => {
          const after = await call('POST',
            `${api(service)}/admin/consumers/${encodeURIComponent(c.queue)}/${action}`);
          const pending = after.pauseRequested && after.state !== 'paused';
          notice(`${c.queue} (${service}): ${after.state}${pending ? ', pausing once its deliveries in hand are settled' : ''}.`);
          await loadConsumers(service);
        });
      },
    }, action === 'pause' ? 'Pause' : 'Resume');
  }

  function loadConsumers(service) {
    if (!service) {
      // The boxes in the services' order, whichever answers first.
      for (const s of state.settings.services) consumersBox(s.name);
      return Promise.all(state.settings.services.map((s) => loadConsumers(s.name)));
    }
    return guarded(`consumers-${service}`, async () => {
      const list = await call('GET', `${api(service)}/admin/consumers`);
      replace(consumersBox(service),
        el('h3', {}, `${service} service`),
        table([
          ['queue', (c) => el('span', {}, queueName(c.queue), el('br'), el('small', { class: 'muted' }, c.role))],
          ['state', (c) => consumerState(c)],
          ['in flight', (c) => c.inFlight],
          ['last ack', (c) => (c.lastAckAt ? when(c.lastAckAt) : 'never')],
          ['', (c) => consumerAction(service, c)],
        ], list.consumers, (c) => ({ 'data-testid': `consumer-row-${c.queue}` })));
    }, (failed) => replace(consumersBox(service), el('h3', {}, `${service} service`), failed));
  }

  function renderLinks() {
    const links = [
      ...state.settings.services.filter((s) => safeUrl(s.docs)).map((s) => [`Swagger UI: ${s.name}`, s.docs, `docs-${s.name}`]),
      ...state.settings.links.filter((l) => safeUrl(l.url)).map((l) => [l.label, l.url, `link-${l.label.split(' ')[0].toLowerCase()}`]),
    ];
    replace($('links'), ...links.map(([label, url, testid]) => el('a', {
      href: safeUrl(url), target: '_blank', rel: 'noopener noreferrer', 'data-testid': testid,
    }, label)));
  }

  // ---- refresh ---------------------------------------------------------------

  async function refresh() {
    if (state.refreshing || !token() || !state.settings) return;
    state.refreshing = true;
    try {
      await Promise.all([loadSagas(), loadOrders(), loadOpenOrder(), loadLowStock(), loadNotifications(),
        loadDeadLetters(), loadHealth(), loadConsumers()]);
      if (token()) $('last-refresh').textContent = `updated ${new Date().toLocaleTimeString()}`;
    } finally {
      state.refreshing = false;
    }
  }

  function schedule() {
    clearInterval(state.timer);
    state.timer = $('auto-refresh').checked ? setInterval(refresh, REFRESH_MS) : null;
    $('last-refresh').classList.toggle('paused', !$('auto-refresh').checked);
  }

  async function start() {
    $('token-form').addEventListener('submit', onTokenSubmit);
    // Without a token there is nothing to show: Escape does not close it.
    $('token-dialog').addEventListener('cancel', (event) => { if (!token()) event.preventDefault(); });
    $('auto-refresh').addEventListener('change', schedule);
    $('refresh-now').addEventListener('click', refresh);
    $('sign-out').addEventListener('click', () => {
      sessionStorage.removeItem(TOKEN_KEY);
      askForToken('');
    });
    $('order-status').addEventListener('change', () => { resetPage('orders'); loadOrders(); });
    $('stuck-after').addEventListener('change', () => { resetPage('stuck'); loadSagas(); });
    $('dead-letter-status').addEventListener('change', () => {
      for (const s of state.settings.services) resetPage(`dead-${s.name}`);
      loadDeadLetters();
    });
    $('retry-all-notifications').addEventListener('click', retryAllNotifications);
    startDeadLetterFilters();
    startOrderView();

    try {
      const response = await fetch('/admin/console/config.json');
      if (!response.ok) throw new Error(`${response.status} ${response.statusText}`);
      state.settings = await response.json();
    } catch (error) {
      state.errors.set('settings', `GET /admin/console/config.json → ${error.message}: the console cannot start`);
      renderErrors();
      return;
    }
    renderLinks();
    // The boxes in the services' order, whichever answers first.
    for (const s of state.settings.services) {
      deadLetterBox(s.name);
      healthBox(s.name);
    }
    schedule();
    followDeadLettersHash({ load: false });
    followOrderHash();
    if (token()) refresh();
    else askForToken('');
  }

  document.addEventListener('DOMContentLoaded', start);
})();
