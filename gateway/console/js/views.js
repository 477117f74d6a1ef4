// Views: every view's status from GET /v1/admin/views, polled every 2 s, and rebuilds with
// their progress.

import { get, post } from './api.js';
import { confirmAction, every, fill, h, problemBox } from './dom.js';

export const title = 'Views';
const POLL_MS = 2000;

// Rebuilds started from this tab, by view: {startGeneration, done, total, state, error,
// generation}. Kept across page changes.
const rebuilds = new Map();

const COLUMNS = [
  ['view', 'View'],
  ['version', 'Version'],
  ['generation', 'Generation'],
  ['position', 'Position / stream'],
  ['lag_events', 'Lag (events)'],
  ['lag_seconds', 'Lag (s)'],
  ['state', 'State'],
  ['parked', 'Parked'],
  ['active_instance', 'Active instance'],
  ['actions', 'Actions'],
];

export function mount(main) {
  const status = h('div', { id: 'views-status', 'aria-live': 'polite' });
  const tbody = h('tbody');
  const updated = h('p', { class: 'meta', id: 'views-updated' });
  const table = h(
    'table',
    { id: 'views-table' },
    h('caption', {}, 'Views of the projection service, refreshed every 2 s'),
    h('thead', {}, h('tr', {}, COLUMNS.map(([, label]) => h('th', { scope: 'col' }, label)))),
    tbody,
  );
  main.append(h('h1', {}, 'Views'), status, h('div', { class: 'scroll' }, table), updated);
  const rows = new Map();

  const refresh = async () => {
    let answer;
    try {
      answer = await get('/v1/admin/views');
    } catch (e) {
      fill(status, problemBox(e));
      return;
    }
    status.replaceChildren();
    for (const v of answer.views) {
      let row = rows.get(v.view);
      if (!row) {
        row = makeRow(v.view, () => refresh());
        rows.set(v.view, row);
        tbody.append(row.tr);
      }
      updateRow(row, v);
    }
    updated.textContent = `Updated ${new Date().toLocaleTimeString()}`;
  };
  const stop = every(POLL_MS, refresh);
  return stop;
}

function makeRow(name, refresh) {
  const cells = {};
  const tr = h('tr', { 'data-view': name });
  const row = { tr, cells };
  for (const [key] of COLUMNS) {
    cells[key] = h(key === 'view' ? 'th' : 'td', key === 'view' ? { scope: 'row' } : { class: key });
    tr.append(cells[key]);
  }
  const button = h(
    'button',
    {
      type: 'button',
      class: 'rebuild',
      onclick: async () => {
        const ok = await confirmAction(
          `Rebuild ${name}?`,
          `Replays the whole stream into a new generation of ${name}; queries keep reading the current one until the new one has caught up.`,
          'Rebuild',
        );
        if (!ok) return;
        const start = tr.row?.generation ?? 0;
        rebuilds.set(name, { startGeneration: start, done: 0, total: 0, state: 'starting' });
        try {
          await post(`/v1/admin/views/${encodeURIComponent(name)}/rebuild`);
          rebuilds.get(name).state = 'running';
        } catch (e) {
          rebuilds.set(name, { state: 'failed', problem: e });
        }
        watchRebuild(name, () => tr.row && renderRebuild(row, tr.row));
        refresh();
      },
    },
    'Rebuild',
  );
  const progress = h('div', { class: 'rebuild-progress' });
  cells.actions.append(button, progress);
  row.progress = progress;
  row.button = button;
  return row;
}

// Polls the rebuild's progress (GET .../rebuild) until it is done or failed. With several
// projection instances an answer may come from one that did not start it ("idle"): the
// generation of the view moving past the one at the start is then what says it finished.
function watchRebuild(name, onChange) {
  const stop = every(500, async () => {
    const r = rebuilds.get(name);
    if (!r || r.state === 'done' || r.state === 'failed') {
      stop();
      return;
    }
    try {
      const a = await get(`/v1/admin/views/${encodeURIComponent(name)}/rebuild`);
      const s = a.rebuild ?? {};
      if (s.state === 'running' || s.state === 'done') {
        r.done = Math.max(r.done ?? 0, s.done ?? 0);
        r.total = Math.max(r.total ?? 0, s.total ?? 0);
      }
      if (s.state === 'failed') {
        r.state = 'failed';
        r.error = s.error;
      } else if (s.state === 'done' || a.live_generation > r.startGeneration) {
        r.state = 'done';
        r.generation = Math.max(s.generation ?? 0, a.live_generation);
      }
      r.problem = null;
    } catch (e) {
      r.problem = e;
    }
    onChange();
  });
}

function updateRow(row, v) {
  row.tr.row = v;
  const c = row.cells;
  c.view.textContent = v.view;
  c.version.textContent = v.version;
  c.generation.textContent = v.generation;
  c.position.textContent = `${v.position} / ${v.stream_last_seq}`;
  c.lag_events.textContent = v.lag_events;
  c.lag_seconds.textContent = Number(v.lag_seconds).toFixed(1);
  fill(
    c.state,
    h('span', { class: `state state-${v.state}` }, v.state),
    v.cause ? h('span', { class: 'cause' }, ` ${v.cause}`) : null,
    v.stalled_since ? h('span', { class: 'meta' }, ` since ${v.stalled_since}`) : null,
  );
  fill(
    c.parked,
    v.parked > 0
      ? h('a', { href: `#/parked?view=${encodeURIComponent(v.view)}`, class: 'parked-link' }, `${v.parked}`)
      : '0',
  );
  c.active_instance.textContent = v.active_instance ?? '—';
  renderRebuild(row, v);
}

function renderRebuild(row, v) {
  const r = rebuilds.get(v.view);
  // the view's own report of a rebuild running (started from anywhere)
  const running = v.state === 'rebuilding' && v.rebuild ? v.rebuild : null;
  if (!r && !running) {
    row.progress.replaceChildren();
    row.button.disabled = false;
    return;
  }
  if (r?.state === 'failed') {
    row.button.disabled = false;
    fill(
      row.progress,
      r.problem ? problemBox(r.problem) : h('p', { class: 'problem', role: 'alert' }, `Rebuild failed: ${r.error ?? 'unknown error'}`),
    );
    return;
  }
  if (r?.state === 'done') {
    row.button.disabled = false;
    const bar = h('progress', { max: 1, value: 1, 'aria-label': `Rebuild of ${v.view}` });
    fill(row.progress, bar, h('span', { class: 'rebuild-done', role: 'status' }, ` Rebuild finished: generation ${r.generation}`));
    return;
  }
  row.button.disabled = true;
  const done = Math.max(r?.done ?? 0, running?.done ?? 0);
  const total = Math.max(r?.total ?? 0, running?.total ?? 0);
  const bar = h('progress', { max: total || 1, value: total ? done : 0, 'aria-label': `Rebuild of ${v.view}` });
  const pct = total ? Math.floor((100 * done) / total) : 0;
  fill(
    row.progress,
    bar,
    h('span', { class: 'rebuild-running', role: 'status' }, ` Rebuilding: ${done} / ${total} (${pct} %)`),
    r?.problem ? problemBox(r.problem) : null,
  );
}
