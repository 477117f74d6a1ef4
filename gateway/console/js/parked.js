// Parked events of a view: the list (cause, aggregate, stream position), one event's body and
// headers, retrying one aggregate's parked events or skipping one event, each confirmed.

import { get, post } from './api.js';
import { confirmAction, fill, h, note, pretty, problemBox, routeParams, setRouteParams } from './dom.js';

export const title = 'Parked events';

function decodeBody(b64) {
  try {
    const bin = atob(b64 ?? '');
    const bytes = Uint8Array.from(bin, (c) => c.charCodeAt(0));
    const text = new TextDecoder('utf-8', { fatal: false }).decode(bytes);
    try {
      return JSON.stringify(JSON.parse(text), null, 2);
    } catch {
      return text;
    }
  } catch {
    return '(the body is not valid base64)';
  }
}

export function mount(main) {
  const select = h('select', { id: 'parked-view' });
  const refreshButton = h('button', { type: 'button', id: 'parked-refresh' }, 'Refresh');
  const retryAll = h('button', { type: 'button', id: 'parked-retry-all' }, 'Retry all');
  const result = h('div', { id: 'parked-result', 'aria-live': 'polite' });
  const list = h('div', { id: 'parked-list' });
  main.append(
    h('h1', {}, 'Parked events'),
    h(
      'div',
      { class: 'toolbar' },
      h('label', { for: 'parked-view' }, 'View '),
      select,
      refreshButton,
      retryAll,
    ),
    result,
    list,
  );
  let alive = true;
  const view = () => select.value;

  // the list stays as it is while it reloads (aria-busy), and is replaced in one go
  const load = async () => {
    if (!view()) return;
    setRouteParams('parked', { view: view() });
    list.setAttribute('aria-busy', 'true');
    if (!list.firstChild) fill(list, note('Loading…'));
    try {
      const answer = await get(`/v1/admin/views/${encodeURIComponent(view())}/parked`);
      if (alive) render(answer.parked ?? []);
    } catch (e) {
      fill(list, problemBox(e));
    } finally {
      list.removeAttribute('aria-busy');
    }
  };

  const act = async (label, question, okLabel, path) => {
    if (!(await confirmAction(label, question, okLabel))) return;
    fill(result, note('Working…'));
    try {
      const answer = await post(path);
      fill(result, h('div', { class: 'ok', role: 'status' }, h('strong', {}, `${label}: done`), answer ? pretty(answer) : null));
    } catch (e) {
      fill(result, problemBox(e));
    }
    await load();
  };

  const render = (records) => {
    if (!records.length) {
      fill(list, h('p', { class: 'empty', id: 'parked-empty' }, `No parked events in ${view()}.`));
      return;
    }
    const tbody = h('tbody');
    for (const r of records) {
      const details = h(
        'tr',
        { class: 'details', hidden: true, id: `parked-details-${r.seq}` },
        h(
          'td',
          { colspan: 6 },
          h('h3', {}, `Event at stream position ${r.seq}`),
          h('p', {}, h('strong', {}, 'Subject '), h('code', {}, r.subject)),
          h('p', {}, `${r.body_len ?? '?'} bytes${r.body_truncated ? ' (only the start is kept here)' : ''}`),
          h('pre', { class: 'json parked-body' }, decodeBody(r.body_base64)),
          h('h4', {}, 'Headers'),
          pretty(r.headers ?? {}),
          r.holds?.length ? h('p', { class: 'meta' }, `Holds back: ${r.holds.join(', ')}`) : null,
        ),
      );
      const show = h(
        'button',
        {
          type: 'button',
          class: 'show',
          'aria-expanded': 'false',
          'aria-controls': details.id,
          onclick: () => {
            details.hidden = !details.hidden;
            show.setAttribute('aria-expanded', String(!details.hidden));
            show.textContent = details.hidden ? 'Show' : 'Hide';
          },
        },
        'Show',
      );
      const actions = [show];
      if (r.aggregate) {
        actions.push(
          h(
            'button',
            {
              type: 'button',
              class: 'retry',
              onclick: () =>
                act(
                  `Retry ${r.aggregate}`,
                  `Re-applies every parked event of ${r.aggregate} in ${view()}, in order. Events that fail again stay parked.`,
                  'Retry',
                  `/v1/admin/views/${encodeURIComponent(view())}/parked/retry?aggregate=${encodeURIComponent(r.aggregate)}`,
                ),
            },
            'Retry aggregate',
          ),
        );
      }
      actions.push(
        h(
          'button',
          {
            type: 'button',
            class: 'skip danger',
            onclick: () =>
              act(
                `Skip event ${r.seq}`,
                `Drops the parked event at stream position ${r.seq} from ${view()} for good: the view never applies it.`,
                'Skip',
                `/v1/admin/views/${encodeURIComponent(view())}/parked/${r.seq}/skip`,
              ),
          },
          'Skip',
        ),
      );
      tbody.append(
        h(
          'tr',
          { 'data-seq': r.seq, class: 'parked-row' },
          h('th', { scope: 'row' }, String(r.seq)),
          h('td', {}, r.aggregate ?? h('code', {}, r.subject)),
          h('td', { class: 'cause' }, r.error, r.transient ? h('span', { class: 'meta' }, ' (transient: retried in the background)') : null),
          h('td', {}, r.parked_at),
          h('td', {}, String(r.body_len ?? '')),
          h('td', { class: 'actions' }, actions),
        ),
        details,
      );
    }
    fill(
      list,
      h(
        'div',
        { class: 'scroll' },
        h(
          'table',
          { id: 'parked-table' },
          h('caption', {}, `${records.length} parked event(s) in ${view()}`),
          h(
            'thead',
            {},
            h('tr', {}, ['Position', 'Aggregate', 'Cause', 'Parked at', 'Bytes', 'Actions'].map((t) => h('th', { scope: 'col' }, t))),
          ),
          tbody,
        ),
      ),
    );
  };

  select.addEventListener('change', () => {
    result.replaceChildren();
    list.replaceChildren();
    load();
  });
  refreshButton.addEventListener('click', load);
  retryAll.addEventListener('click', () =>
    act(
      `Retry all of ${view()}`,
      `Re-applies every parked event of ${view()}, in order.`,
      'Retry all',
      `/v1/admin/views/${encodeURIComponent(view())}/parked/retry`,
    ),
  );

  (async () => {
    let names;
    try {
      names = (await get('/v1/admin/views')).views.map((v) => v.view);
    } catch (e) {
      fill(list, problemBox(e));
      return;
    }
    if (!alive) return;
    const wanted = routeParams().get('view');
    for (const n of names) select.append(h('option', { value: n, selected: n === wanted }, n));
    load();
  })();
  return () => {
    alive = false;
  };
}
