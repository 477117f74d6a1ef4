// Aggregates: one aggregate's current state and version, its event history newest first in
// pages, and new events as they are appended (the live feed, Server-Sent Events).

import { claims, follow, get } from './api.js';
import { fill, h, note, pretty, problemBox, routeParams, setRouteParams } from './dom.js';

export const title = 'Aggregates';
export const PAGE_SIZE = 20;

function field(id, label, value, extra = {}) {
  return h(
    'div',
    { class: 'field' },
    h('label', { for: id }, label),
    h('input', { id, name: id, value: value ?? '', required: true, autocomplete: 'off', spellcheck: 'false', ...extra }),
  );
}

function eventRow(position, e) {
  const meta = e.metadata ?? {};
  return h(
    'tr',
    { class: 'event', 'data-version': e.version, 'data-position': position },
    h('th', { scope: 'row' }, String(e.version)),
    h('td', { class: 'event-type' }, e.event_type),
    h('td', {}, String(position)),
    h('td', {}, e.occurred_at),
    h('td', {}, h('details', {}, h('summary', {}, 'payload'), pretty(e.payload))),
    h(
      'td',
      { class: 'metadata' },
      meta.request_id ? h('div', {}, 'request id ', h('code', {}, meta.request_id)) : null,
      meta.traceparent ? h('div', {}, 'traceparent ', h('code', {}, meta.traceparent)) : null,
      h('details', {}, h('summary', {}, 'all'), pretty({ event_id: e.event_id, command_id: e.command_id, metadata: meta })),
    ),
  );
}

export function mount(main) {
  const params = routeParams();
  const tenant = params.get('tenant') ?? claims()?.tenants?.[0] ?? '';
  const form = h(
    'form',
    { id: 'aggregate-form', class: 'inline-form' },
    field('agg-tenant', 'Tenant', tenant),
    field('agg-type', 'Aggregate type', params.get('type') ?? 'account'),
    field('agg-id', 'Aggregate id', params.get('id') ?? ''),
    h('button', { type: 'submit', id: 'agg-open' }, 'Open'),
  );
  const out = h('div', { id: 'aggregate-out' });
  main.append(h('h1', {}, 'Aggregates'), form, out);
  let current = null; // { stop() }

  const open = async (t, ty, id) => {
    current?.stop();
    current = show(out, t, ty, id);
  };
  form.addEventListener('submit', (e) => {
    e.preventDefault();
    const [t, ty, id] = ['agg-tenant', 'agg-type', 'agg-id'].map((n) => form.elements[n].value.trim());
    setRouteParams('aggregates', { tenant: t, type: ty, id });
    open(t, ty, id);
  });
  if (params.get('id')) open(tenant, params.get('type') ?? 'account', params.get('id'));
  else form.elements['agg-id'].focus();
  return () => current?.stop();
}

// Shows one aggregate; returns { stop } that ends its live feed.
function show(out, tenant, type, id) {
  const base = `/v1/tenants/${encodeURIComponent(tenant)}/aggregates/${encodeURIComponent(type)}/${encodeURIComponent(id)}`;
  const abort = new AbortController();
  const stateBox = h('div', { id: 'aggregate-state' });
  const tbody = h('tbody', { id: 'history-rows' });
  const pager = h('div', { class: 'toolbar', id: 'history-pager' });
  const liveStatus = h('p', { class: 'meta', id: 'live-status', 'aria-live': 'polite' });
  const historyProblem = h('div');
  fill(
    out,
    h('h2', {}, `${tenant} / ${type} / ${id}`),
    stateBox,
    h('h3', {}, 'History (newest first)'),
    liveStatus,
    historyProblem,
    h(
      'div',
      { class: 'scroll' },
      h(
        'table',
        { id: 'history' },
        h(
          'thead',
          {},
          h('tr', {}, ['Version', 'Type', 'Position', 'Time', 'Payload', 'Metadata'].map((t) => h('th', { scope: 'col' }, t))),
        ),
        tbody,
      ),
    ),
    pager,
  );
  // the page shown: versions [from, to]; page 0 is the newest and grows with live events
  const page = { from: 1, to: 0, newest: true };
  let version = 0;

  const loadState = async () => {
    const s = await get(base, { signal: abort.signal });
    version = s.version;
    fill(
      stateBox,
      h(
        'dl',
        { class: 'facts' },
        h('dt', {}, 'Version'),
        h('dd', { id: 'aggregate-version' }, String(s.version)),
        h('dt', {}, 'Position'),
        h('dd', {}, String(s.position)),
      ),
      pretty(s.state),
    );
    return s;
  };

  const loadPage = async (to) => {
    const from = Math.max(1, to - PAGE_SIZE + 1);
    const a = await get(`${base}/events?from_version=${from}&limit=${to - from + 1}`, { signal: abort.signal });
    page.from = from;
    page.to = to;
    page.newest = to >= version;
    tbody.replaceChildren(...a.events.slice().reverse().map((x) => eventRow(x.position, x.event)));
    renderPager();
  };

  const renderPager = () => {
    fill(
      pager,
      h('button', { type: 'button', id: 'history-newer', disabled: page.newest, onclick: () => go(Math.min(version, page.to + PAGE_SIZE)) }, 'Newer'),
      h('span', { class: 'meta' }, ` versions ${page.from}–${page.to} of ${version} `),
      h('button', { type: 'button', id: 'history-older', disabled: page.from <= 1, onclick: () => go(page.from - 1) }, 'Older'),
    );
  };

  const go = async (to) => {
    try {
      historyProblem.replaceChildren();
      await loadPage(to);
    } catch (e) {
      if (e.name !== 'AbortError') fill(historyProblem, problemBox(e));
    }
  };

  (async () => {
    let s;
    try {
      s = await loadState();
      await loadPage(s.version);
    } catch (e) {
      if (e.name !== 'AbortError') fill(stateBox, problemBox(e));
      return;
    }
    // follow new events: resume after the state's position
    liveStatus.textContent = 'Following new events live…';
    try {
      await follow(
        `${base}/events?follow=true&from_version=${s.version + 1}`,
        s.position,
        (ev) => {
          if (ev.event === 'corrupt') {
            fill(historyProblem, note(`The stream holds a message at position ${ev.id} that is not an event.`, 'problem'));
            return;
          }
          let data;
          try {
            data = JSON.parse(ev.data);
          } catch {
            return;
          }
          const e = data.event;
          if (!e || e.version <= version) return;
          version = e.version;
          if (page.newest) {
            tbody.prepend(eventRow(data.position, e));
            page.to = e.version;
            while (tbody.children.length > PAGE_SIZE) tbody.lastElementChild.remove();
            page.from = Math.max(1, page.to - tbody.children.length + 1);
          }
          renderPager();
          loadState().catch((err) => {
            if (err.name !== 'AbortError') fill(stateBox, problemBox(err));
          });
        },
        abort.signal,
      );
      if (!abort.signal.aborted) liveStatus.textContent = 'The live feed ended; open the aggregate again to follow it.';
    } catch (e) {
      liveStatus.textContent = '';
      fill(historyProblem, problemBox(e));
    }
  })();
  return { stop: () => abort.abort() };
}
