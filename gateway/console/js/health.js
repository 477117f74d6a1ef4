// Health: every instance's /readyz and its NATS connection (GET /v1/admin/health through the
// gateway's /instances/<name>/...), and the events stream's state (messages, bytes, consumers,
// and leader and replicas on a cluster), refreshed every 2 s.

import { get } from './api.js';
import { bytes, every, fill, h, problemBox } from './dom.js';

export const title = 'Health';

export function mount(main) {
  const instancesBox = h('div', { id: 'health-instances' });
  const streamBox = h('div', { id: 'health-stream' });
  const updated = h('p', { class: 'meta' });
  main.append(h('h1', {}, 'Health'), h('h2', {}, 'Instances'), instancesBox, h('h2', {}, 'Stream'), streamBox, updated);

  const refresh = async () => {
    let list;
    try {
      list = (await get('/instances', { auth: false })).instances;
    } catch (e) {
      fill(instancesBox, problemBox(e));
      return;
    }
    const results = await Promise.all(
      list.map(async (inst) => {
        const base = `/instances/${encodeURIComponent(inst.name)}`;
        const [ready, health] = await Promise.allSettled([get(`${base}/readyz`, { auth: false }), get(`${base}/health`)]);
        return { inst, ready, health };
      }),
    );
    const rows = results.map(({ inst, ready, health }) =>
      h(
        'tr',
        { 'data-instance': inst.name },
        h('th', { scope: 'row' }, inst.name),
        h('td', {}, inst.service),
        h(
          'td',
          { class: 'readiness' },
          ready.status === 'fulfilled'
            ? h('span', { class: 'state state-running' }, 'ready')
            : h('div', {}, h('span', { class: 'state state-stalled' }, 'not ready'), problemBox(ready.reason)),
        ),
        h(
          'td',
          { class: 'nats' },
          health.status === 'fulfilled'
            ? h(
                'span',
                {},
                h('span', { class: `state state-${health.value.nats.state === 'connected' ? 'running' : 'stalled'}` }, health.value.nats.state),
                ` ${health.value.nats.server_name} (nats-server ${health.value.nats.server_version})`,
              )
            : problemBox(health.reason),
        ),
      ),
    );
    fill(
      instancesBox,
      h(
        'div',
        { class: 'scroll' },
        h(
          'table',
          { id: 'instances-table' },
          h('thead', {}, h('tr', {}, ['Instance', 'Service', 'Readiness (/readyz)', 'NATS connection'].map((t) => h('th', { scope: 'col' }, t)))),
          h('tbody', {}, rows),
        ),
      ),
    );
    const first = results.find((r) => r.health.status === 'fulfilled');
    if (!first) {
      const failed = results.find((r) => r.health.status === 'rejected');
      fill(streamBox, failed ? problemBox(failed.health.reason) : h('p', {}, 'No instance is running.'));
    } else {
      renderStream(streamBox, first.health.value);
    }
    updated.textContent = `Updated ${new Date().toLocaleTimeString()}`;
  };
  return every(2000, refresh);
}

function renderStream(box, health) {
  const s = health.stream;
  // a single server reports a group of one (itself as leader, no replicas, no cluster name)
  const clustered = Boolean(s.cluster && (s.cluster.name || s.cluster.replicas.length));
  const facts = [
    ['Name', s.name],
    ['Messages', s.messages],
    ['Bytes', bytes(s.bytes)],
    ['First / last sequence', `${s.first_seq} / ${s.last_seq}`],
    ['Consumers', s.consumers],
    ['Replicas', s.replicas],
    ['Cluster', clustered ? s.cluster.name ?? '(unnamed)' : 'none (single server)'],
    ['Leader', s.cluster ? s.cluster.leader ?? 'no leader' : '—'],
    ['As seen by', `${health.instance} (${health.service})`],
  ];
  fill(
    box,
    h('dl', { class: 'facts', id: 'stream-facts' }, facts.flatMap(([k, v]) => [h('dt', {}, k), h('dd', { 'data-fact': k }, String(v))])),
    clustered
      ? h(
          'div',
          { class: 'scroll' },
          h(
            'table',
            { id: 'replicas-table' },
            h('caption', {}, 'Replicas (followers of the leader)'),
            h('thead', {}, h('tr', {}, ['Server', 'Current', 'Offline', 'Last seen', 'Lag'].map((t) => h('th', { scope: 'col' }, t)))),
            h(
              'tbody',
              {},
              s.cluster.replicas.map((p) =>
                h(
                  'tr',
                  {},
                  h('th', { scope: 'row' }, p.name),
                  h('td', {}, p.current ? 'yes' : 'no'),
                  h('td', {}, p.offline ? 'yes' : 'no'),
                  h('td', {}, `${p.active_ms} ms ago`),
                  h('td', {}, String(p.lag ?? '—')),
                ),
              ),
            ),
          ),
        )
      : null,
  );
}
