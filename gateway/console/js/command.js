// Send a command: the form is built from the aggregate service's OpenAPI document (the
// command operation's path parameters and its request body schema); the answer or the
// problem is shown.

import { claims, get, post } from './api.js';
import { fill, h, note, pretty, problemBox, routeParams } from './dom.js';

export const title = 'Send a command';
const OPENAPI = '/aggregate/openapi.json';
const COMMAND_PATH = '/v1/tenants/{tenant}/aggregates/{type}/{id}/commands';
const FIRST = ['type', 'payload'];

function resolve(doc, schema) {
  let s = schema ?? {};
  for (let i = 0; s.$ref && i < 10; i += 1) {
    const name = s.$ref.replace('#/components/schemas/', '');
    s = doc.components?.schemas?.[name] ?? {};
  }
  return s;
}

// 'string', 'integer', 'object', ... of a schema (nullable types and oneOf with null too).
function kindOf(doc, schema) {
  const s = resolve(doc, schema);
  const types = Array.isArray(s.type) ? s.type : s.type ? [s.type] : [];
  const t = types.find((x) => x !== 'null');
  if (t) return { type: t, format: s.format, nullable: types.includes('null') };
  const alt = (s.oneOf ?? s.anyOf ?? []).map((x) => resolve(doc, x)).find((x) => x.type && x.type !== 'null');
  if (alt) return { type: Array.isArray(alt.type) ? alt.type.find((x) => x !== 'null') : alt.type, format: alt.format, nullable: true };
  return { type: 'object', format: undefined, nullable: false };
}

function newId() {
  if (crypto.randomUUID) return crypto.randomUUID();
  const b = crypto.getRandomValues(new Uint8Array(16));
  b[6] = (b[6] & 0x0f) | 0x40;
  b[8] = (b[8] & 0x3f) | 0x80;
  const x = [...b].map((v) => v.toString(16).padStart(2, '0')).join('');
  return `${x.slice(0, 8)}-${x.slice(8, 12)}-${x.slice(12, 16)}-${x.slice(16, 20)}-${x.slice(20)}`;
}

export function mount(main) {
  const box = h('div', { id: 'command-box' }, note('Loading the OpenAPI document…'));
  main.append(h('h1', {}, 'Send a command'), box);
  let alive = true;
  (async () => {
    let doc;
    try {
      doc = await get(OPENAPI, { auth: false });
    } catch (e) {
      fill(box, problemBox(e));
      return;
    }
    if (!alive) return;
    const op = doc.paths?.[COMMAND_PATH]?.post;
    if (!op) {
      fill(box, problemBox({ problem: { title: 'No command operation', detail: `${OPENAPI} has no POST ${COMMAND_PATH}` } }));
      return;
    }
    build(box, doc, op);
  })();
  return () => {
    alive = false;
  };
}

function build(box, doc, op) {
  const given = routeParams();
  const defaults = { tenant: given.get('tenant') ?? claims()?.tenants?.[0] ?? '', type: given.get('type') ?? 'account', id: given.get('id') ?? '' };
  const form = h('form', { id: 'command-form', class: 'card', novalidate: true });
  const pathParams = (op.parameters ?? []).filter((p) => p.in === 'path');
  const address = h('div', { class: 'inline-form' });
  form.append(h('h2', {}, 'Address'), address);
  for (const p of pathParams) {
    const id = `cmd-path-${p.name}`;
    address.append(
      h(
        'div',
        { class: 'field' },
        h('label', { for: id }, p.name),
        h('input', { id, name: id, required: true, value: defaults[p.name] ?? '', autocomplete: 'off', spellcheck: 'false', 'aria-describedby': `${id}-help` }),
        h('p', { class: 'meta', id: `${id}-help` }, p.description ?? ''),
      ),
    );
  }
  const body = resolve(doc, op.requestBody?.content?.['application/json']?.schema);
  const required = new Set(body.required ?? []);
  const fields = [];
  form.append(h('h2', {}, 'Body'));
  // the command's type and payload first, then the rest in the document's order
  const rank = (name) => (FIRST.includes(name) ? FIRST.indexOf(name) : FIRST.length);
  const properties = Object.entries(body.properties ?? {}).sort(([a], [b]) => rank(a) - rank(b));
  for (const [name, propSchema] of properties) {
    const prop = resolve(doc, propSchema);
    const kind = kindOf(doc, propSchema);
    const id = `cmd-body-${name}`;
    const help = h('p', { class: 'meta', id: `${id}-help` }, `${prop.description ?? ''}${required.has(name) ? '' : ' (optional)'}`);
    let input;
    const extra = [];
    if (kind.type === 'object' || kind.type === 'array') {
      input = h('textarea', { id, name: id, rows: 3, spellcheck: 'false', 'aria-describedby': help.id });
      if (required.has(name)) input.value = kind.type === 'array' ? '[]' : '{}';
    } else if (kind.type === 'integer' || kind.type === 'number') {
      input = h('input', { id, name: id, type: 'number', min: prop.minimum ?? undefined, step: kind.type === 'integer' ? 1 : 'any', 'aria-describedby': help.id });
    } else {
      input = h('input', { id, name: id, autocomplete: 'off', spellcheck: 'false', 'aria-describedby': help.id });
      if (kind.format === 'uuid') {
        extra.push(h('button', { type: 'button', class: 'secondary', id: `${id}-new`, onclick: () => { input.value = newId(); } }, 'New id'));
      }
    }
    if (required.has(name)) input.required = true;
    fields.push({ name, kind, input, required: required.has(name) });
    form.append(h('div', { class: 'field' }, h('label', { for: id }, name), input, ...extra, help));
  }
  const answer = h('div', { id: 'command-answer', 'aria-live': 'polite' });
  form.append(h('button', { type: 'submit', id: 'command-send' }, 'Send'));
  fill(box, form, answer);

  form.addEventListener('submit', async (e) => {
    e.preventDefault();
    let path = COMMAND_PATH;
    const values = {};
    for (const p of pathParams) {
      const v = form.elements[`cmd-path-${p.name}`].value.trim();
      if (!v) {
        fill(answer, problemBox({ problem: { title: 'Missing value', detail: `${p.name} is required` } }));
        return;
      }
      values[p.name] = v;
      path = path.replace(`{${p.name}}`, encodeURIComponent(v));
    }
    const payload = {};
    for (const f of fields) {
      const raw = f.input.value.trim();
      if (!raw) {
        if (f.required) {
          fill(answer, problemBox({ problem: { title: 'Missing value', detail: `${f.name} is required` } }));
          return;
        }
        continue;
      }
      if (f.kind.type === 'object' || f.kind.type === 'array') {
        try {
          payload[f.name] = JSON.parse(raw);
        } catch (err) {
          fill(answer, problemBox({ problem: { title: 'Invalid JSON', detail: `${f.name}: ${err.message}` } }));
          return;
        }
      } else if (f.kind.type === 'integer' || f.kind.type === 'number') {
        payload[f.name] = Number(raw);
      } else {
        payload[f.name] = raw;
      }
    }
    fill(answer, note('Sending…'));
    try {
      const outcome = await post(path, payload);
      const link = `#/aggregates?${new URLSearchParams({ tenant: values.tenant ?? '', type: values.type ?? '', id: values.id ?? '' })}`;
      fill(
        answer,
        h(
          'div',
          { class: 'ok', role: 'status' },
          h('strong', { id: 'command-accepted' }, `Accepted: version ${outcome.version}, position ${outcome.position}`),
          ' ',
          h('a', { href: link, id: 'command-history-link' }, 'Open its history'),
          pretty(outcome),
        ),
      );
    } catch (err) {
      fill(answer, problemBox(err));
    }
  });
}
