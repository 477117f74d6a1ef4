// Talking to the gateway: the token kept in session storage, every request with it, every
// failure turned into a problem (RFC 9457) the page can show.

const KEY = 'nats-es-console.token';

export function token() {
  return sessionStorage.getItem(KEY);
}

export function setToken(t) {
  sessionStorage.setItem(KEY, t);
}

export function clearToken() {
  sessionStorage.removeItem(KEY);
}

// The token's claims (not verified here: the services do that), or null when it is not a JWT.
export function claims(t = token()) {
  try {
    const part = t.split('.')[1].replace(/-/g, '+').replace(/_/g, '/');
    const padded = part + '='.repeat((4 - (part.length % 4)) % 4);
    const bytes = Uint8Array.from(atob(padded), (c) => c.charCodeAt(0));
    const value = JSON.parse(new TextDecoder().decode(bytes));
    return value && typeof value === 'object' ? value : null;
  } catch {
    return null;
  }
}

// A failed request: `problem` has at least title, status and detail.
export class ProblemError extends Error {
  constructor(problem) {
    super(`${problem.title}: ${problem.detail ?? ''}`);
    this.problem = problem;
  }
}

async function asProblem(resp) {
  const text = await resp.text();
  let body = null;
  try {
    body = text ? JSON.parse(text) : null;
  } catch {
    body = null;
  }
  const problem =
    body && typeof body === 'object' && typeof body.title === 'string'
      ? body
      : {
          title: `HTTP ${resp.status} ${resp.statusText}`.trim(),
          status: resp.status,
          detail: text.slice(0, 500) || 'the answer had no problem details',
        };
  problem.request_id = resp.headers.get('X-Request-Id');
  return new ProblemError(problem);
}

// `fetch` with the token; resolves to the parsed JSON (null for an empty answer), rejects with
// a ProblemError. `opts.auth = false` sends no token, `opts.signal` aborts.
export async function request(method, path, body, opts = {}) {
  const headers = { Accept: 'application/json' };
  if (opts.auth !== false && token()) headers.Authorization = `Bearer ${token()}`;
  if (body !== undefined) headers['Content-Type'] = 'application/json';
  let resp;
  try {
    resp = await fetch(path, {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
      signal: opts.signal,
      cache: 'no-store',
    });
  } catch (e) {
    if (e.name === 'AbortError') throw e;
    throw new ProblemError({
      title: 'Gateway unreachable',
      status: 0,
      detail: `${method} ${path}: ${e.message ?? e}`,
    });
  }
  if (!resp.ok) throw await asProblem(resp);
  const text = await resp.text();
  return text ? JSON.parse(text) : null;
}

export const get = (path, opts) => request('GET', path, undefined, opts);
export const post = (path, body, opts) => request('POST', path, body, opts);

// Follows a Server-Sent Events feed with the token (an EventSource cannot send one). Calls
// `onEvent({id, event, data})` per event; resumes after `lastId`; rejects with a ProblemError
// when the feed cannot start, resolves when it ends or `signal` aborts.
export async function follow(path, lastId, onEvent, signal) {
  const headers = { Accept: 'text/event-stream', Authorization: `Bearer ${token()}` };
  if (lastId !== undefined && lastId !== null) headers['Last-Event-ID'] = String(lastId);
  let resp;
  try {
    resp = await fetch(path, { headers, signal, cache: 'no-store' });
  } catch (e) {
    if (e.name === 'AbortError') return;
    throw new ProblemError({ title: 'Gateway unreachable', status: 0, detail: String(e.message ?? e) });
  }
  if (!resp.ok) throw await asProblem(resp);
  const reader = resp.body.getReader();
  const decoder = new TextDecoder();
  let buf = '';
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return;
      buf += decoder.decode(value, { stream: true }).replace(/\r\n?/g, '\n');
      for (let i = buf.indexOf('\n\n'); i >= 0; i = buf.indexOf('\n\n')) {
        const frame = buf.slice(0, i);
        buf = buf.slice(i + 2);
        const ev = { id: null, event: 'message', data: '' };
        const data = [];
        for (const line of frame.split('\n')) {
          if (line.startsWith(':')) continue;
          const colon = line.indexOf(':');
          const field = colon < 0 ? line : line.slice(0, colon);
          const val = colon < 0 ? '' : line.slice(colon + 1).replace(/^ /, '');
          if (field === 'id') ev.id = val;
          else if (field === 'event') ev.event = val;
          else if (field === 'data') data.push(val);
        }
        if (data.length) {
          ev.data = data.join('\n');
          onEvent(ev);
        }
      }
    }
  } catch (e) {
    if (e.name !== 'AbortError') throw e;
  }
}
