// Small DOM helpers: elements built with textContent only (never innerHTML), problems shown
// as an alert, and the confirmation dialog.

// h('td', {class: 'num'}, 'text', otherNode): attributes starting with `on` are listeners.
export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs ?? {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith('on')) el.addEventListener(k.slice(2), v);
    else if (k === 'class') el.className = v;
    else if (k === 'text') el.textContent = v;
    else el.setAttribute(k, v === true ? '' : String(v));
  }
  for (const c of children.flat()) {
    if (c === undefined || c === null || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

// Replaces `el`'s content.
export function fill(el, ...children) {
  el.replaceChildren();
  for (const c of children.flat()) {
    if (c !== undefined && c !== null && c !== false) el.append(c instanceof Node ? c : String(c));
  }
  return el;
}

// A problem (or any error) as an alert: title, detail, type and request id.
export function problemBox(err) {
  const p = err?.problem ?? { title: 'Error', detail: String(err?.message ?? err) };
  return h(
    'div',
    { class: 'problem', role: 'alert' },
    h('strong', { class: 'problem-title' }, p.title ?? 'Error'),
    p.status ? h('span', { class: 'status' }, ` ${p.status}`) : null,
    p.detail ? h('p', { class: 'problem-detail' }, p.detail) : null,
    h(
      'p',
      { class: 'meta' },
      p.type ? h('code', {}, p.type) : null,
      p.request_id ? ` request id ${p.request_id}` : null,
    ),
  );
}

export function showProblem(el, err) {
  fill(el, problemBox(err));
}

export function note(text, cls = 'note') {
  return h('p', { class: cls, role: 'status' }, text);
}

export function pretty(value) {
  return h('pre', { class: 'json' }, JSON.stringify(value, null, 2));
}

// Asks with the modal dialog; resolves true on Confirm, false on Cancel or Escape.
export function confirmAction(title, text, okLabel = 'Confirm') {
  const dialog = document.getElementById('confirm');
  document.getElementById('confirm-title').textContent = title;
  document.getElementById('confirm-text').textContent = text;
  const ok = document.getElementById('confirm-ok');
  const cancel = document.getElementById('confirm-cancel');
  ok.textContent = okLabel;
  const opener = document.activeElement;
  return new Promise((resolve) => {
    const done = (answer) => {
      ok.removeEventListener('click', onOk);
      cancel.removeEventListener('click', onCancel);
      dialog.removeEventListener('close', onClose);
      if (dialog.open) dialog.close();
      if (opener && opener.isConnected) opener.focus();
      resolve(answer);
    };
    const onOk = () => done(true);
    const onCancel = () => done(false);
    const onClose = () => done(false);
    ok.addEventListener('click', onOk);
    cancel.addEventListener('click', onCancel);
    dialog.addEventListener('close', onClose);
    dialog.showModal();
    cancel.focus();
  });
}

// Repeats `fn` every `ms` (waiting for each run) until the returned stop function is called.
export function every(ms, fn) {
  let stopped = false;
  let timer = null;
  const tick = async () => {
    if (stopped) return;
    try {
      await fn();
    } finally {
      if (!stopped) timer = setTimeout(tick, ms);
    }
  };
  // the first run after the caller has the stop function
  queueMicrotask(tick);
  return () => {
    stopped = true;
    clearTimeout(timer);
  };
}

export function bytes(n) {
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let v = Number(n);
  let u = 0;
  while (v >= 1024 && u < units.length - 1) {
    v /= 1024;
    u += 1;
  }
  return `${u ? v.toFixed(1) : v} ${units[u]}`;
}

// The hash route's query (#/page?a=1&b=2) as URLSearchParams.
export function routeParams() {
  const q = location.hash.indexOf('?');
  return new URLSearchParams(q < 0 ? '' : location.hash.slice(q + 1));
}

export function setRouteParams(page, params) {
  const q = new URLSearchParams(params).toString();
  const target = `#/${page}${q ? `?${q}` : ''}`;
  if (location.hash !== target) history.replaceState(null, '', target);
}
