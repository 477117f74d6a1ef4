// The console's shell: sign-in (a token pasted once, or given in the URL's fragment by
// `just up`, kept in session storage), the navigation and the hash router.

import { claims, clearToken, setToken, token } from './api.js';
import { fill, h, note } from './dom.js';
import * as views from './views.js';
import * as parked from './parked.js';
import * as aggregates from './aggregates.js';
import * as command from './command.js';
import * as health from './health.js';

const PAGES = { views, parked, aggregates, command, health };
const main = document.getElementById('main');
let unmount = null;

// `#token=<jwt>` (what `just up` prints): keep it, then drop it from the address bar and the
// history so that it is not bookmarked or shared by accident.
function takeTokenFromFragment() {
  const m = /^#token=([^&]+)/.exec(location.hash);
  if (!m) return;
  setToken(decodeURIComponent(m[1]));
  history.replaceState(null, '', `${location.pathname}#/views`);
}

function describe(c) {
  if (!c) return 'token (not a JWT?)';
  const parts = [`signed in as ${c.sub ?? '?'}`];
  if (Array.isArray(c.tenants) && c.tenants.length) parts.push(`tenants ${c.tenants.join(', ')}`);
  if (c.admin === true) parts.push('admin');
  if (typeof c.exp === 'number') {
    const left = Math.round((c.exp * 1000 - Date.now()) / 60000);
    parts.push(left > 0 ? `expires in ${left} min` : 'expired');
  }
  return parts.join(' · ');
}

function signInPage() {
  const input = h('textarea', {
    id: 'token-input',
    rows: 4,
    required: true,
    spellcheck: 'false',
    autocomplete: 'off',
    'aria-describedby': 'token-help',
  });
  const msg = h('div', { id: 'sign-in-message' });
  const form = h(
    'form',
    {
      id: 'sign-in',
      class: 'card',
      onsubmit: (e) => {
        e.preventDefault();
        const t = input.value.trim().replace(/^Bearer\s+/i, '');
        if (!claims(t)) {
          fill(msg, note('That is not a JWT (three base64url parts separated by dots).', 'problem'));
          return;
        }
        setToken(t);
        if (location.hash === '#/views') route();
        else location.hash = '#/views';
      },
    },
    h('h1', {}, 'Sign in'),
    h('label', { for: 'token-input' }, 'Bearer token'),
    input,
    h(
      'p',
      { id: 'token-help', class: 'meta' },
      'Kept in this tab only (session storage). `just up` prints a link that signs in with the development token; `just token` or scripts/token.py --admin mints others. Views, parked events and health need a token that grants admin.',
    ),
    h('button', { type: 'submit', id: 'sign-in-button' }, 'Sign in'),
    msg,
  );
  fill(main, form);
  input.focus();
}

function route() {
  if (unmount) {
    unmount();
    unmount = null;
  }
  const signedIn = Boolean(token());
  document.getElementById('nav').hidden = !signedIn;
  document.getElementById('sign-out').hidden = !signedIn;
  document.getElementById('who').textContent = signedIn ? describe(claims()) : '';
  if (!signedIn) {
    signInPage();
    return;
  }
  const name = (/^#\/([a-z]+)/.exec(location.hash) ?? [])[1] ?? 'views';
  const page = PAGES[name] ?? views;
  for (const a of document.querySelectorAll('#nav a')) {
    if (a.getAttribute('href') === `#/${name}`) a.setAttribute('aria-current', 'page');
    else a.removeAttribute('aria-current');
  }
  document.title = `${page.title} · nats-es console`;
  main.replaceChildren();
  unmount = page.mount(main) ?? null;
}

document.getElementById('sign-out').addEventListener('click', () => {
  clearToken();
  history.replaceState(null, '', location.pathname);
  route();
});

// a link to the page already shown changes nothing in the hash: navigation then only moves
// the focus to the content, as a keyboard user expects
window.addEventListener('hashchange', () => {
  if (/^#token=/.test(location.hash)) takeTokenFromFragment();
  route();
  main.focus({ preventScroll: true });
});

// the skip link moves the focus to the content without touching the hash (the router's)
document.querySelector('.skip-link').addEventListener('click', (e) => {
  e.preventDefault();
  main.focus();
});

takeTokenFromFragment();
route();
