// The console's shell: signing in (a one-time code from the URL's fragment, or a pasted token), the header, the
// theme, and the router. Every view is a module under views/ with mount(root, ctx) returning its unmount; its
// state is in its route (#/view?filters), so a link to it can be shared and a reload keeps it.

import { api, ApiError, get, onUnauthorized } from './api.js';
import { h } from './dom.js';
import { count } from './format.js';
import { onStatus } from './watch.js';

const VIEWS = ['overview', 'topology', 'reservations', 'pools', 'instances', 'events'];
const TITLES = {
  overview: 'Overview', topology: 'Topology', reservations: 'Reservations', pools: 'Pools and claims',
  instances: 'Instances and agents', events: 'Events',
};
const main = document.getElementById('main');
const state = { who: null, unmount: null, route: null, generation: 0 };

// ---- the route ----------------------------------------------------------------------------------------------

export function currentRoute() {
  const hash = location.hash.startsWith('#/') ? location.hash.slice(2) : 'overview';
  const [name, query = ''] = hash.split('?');
  return { view: VIEWS.includes(name) ? name : 'overview', params: new URLSearchParams(query) };
}

// Changes the route's filters without adding to the history (a view's own controls), or navigates.
export function setParams(params, { push = false } = {}) {
  const { view } = currentRoute();
  const query = params.toString();
  const hash = `#/${view}${query ? `?${query}` : ''}`;
  if (hash === location.hash) return;
  if (push) location.hash = hash;
  else history.replaceState(null, '', hash);
}

async function route() {
  if (!state.who) return;
  const { view, params } = currentRoute();
  if (state.route === view && state.unmount) {
    if (state.onParams) state.onParams(params);
    return;
  }
  teardown();
  state.route = view;
  const generation = ++state.generation;
  for (const link of document.querySelectorAll('#nav a')) {
    if (link.dataset.view === view) link.setAttribute('aria-current', 'page');
    else link.removeAttribute('aria-current');
  }
  document.title = `${TITLES[view]} · Tenure`;
  main.replaceChildren(h('p', { class: 'loading' }, 'Loading…'));
  let module;
  try {
    module = await import(`./views/${view}.js`);
  } catch (err) {
    main.replaceChildren(h('p', { class: 'error' }, `This view could not be loaded: ${err.message}`));
    return;
  }
  if (generation !== state.generation) return;
  const root = h('section', { 'aria-labelledby': 'view-title' });
  main.replaceChildren(root);
  delete main.dataset.ready;
  // A view calls ready() once its first data is drawn (the tests and the benchmarks wait for it).
  const ready = () => { if (generation === state.generation) main.dataset.ready = view; };
  const ctx = { who: state.who, params, setParams, ready };
  let mounted;
  try {
    mounted = module.mount(root, ctx) || {};
  } catch (err) {
    console.error(err);
    main.replaceChildren(h('p', { class: 'notice bad', role: 'alert' }, `This view failed: ${err.message}`));
    return;
  }
  state.unmount = mounted.unmount || (() => {});
  state.onParams = mounted.onParams || null;
}

function teardown() {
  if (state.unmount) {
    try { state.unmount(); } catch (err) { console.error(err); }
  }
  state.unmount = null;
  state.onParams = null;
  state.route = null;
}

// ---- signing in -----------------------------------------------------------------------------------------------

const SIGNIN_REASONS = {
  invalid_code: 'This sign-in link has expired or was used already. Run tenure ui again for a new one.',
  invalid_session: 'Your console session has ended (it expired, you signed out, or its token was revoked).',
  unauthorized: 'That token is not valid.',
  forbidden: 'An agent\'s token cannot sign in to the console.',
};

function signIn(reason) {
  teardown();
  state.who = null;
  state.generation++;
  document.getElementById('nav').hidden = true;
  document.getElementById('signout').hidden = true;
  document.getElementById('who').textContent = '';
  document.title = 'Sign in · Tenure';
  const input = h('input', {
    id: 'token', type: 'password', autocomplete: 'off', spellcheck: 'false', required: true,
    'aria-describedby': 'token-help',
  });
  const message = h('p', { id: 'signin-message', class: reason ? 'notice bad' : 'muted', role: 'alert' },
    reason ? (SIGNIN_REASONS[reason.code] || reason.message) : '');
  const submit = h('button', { type: 'submit', class: 'primary' }, 'Sign in');
  const form = h('form', {
    onsubmit: async (event) => {
      event.preventDefault();
      submit.disabled = true;
      try {
        await api('POST', '/v1/ui/session', { token: input.value.trim() }, { quiet401: true });
        input.value = '';
        await start();
      } catch (err) {
        message.className = 'notice bad';
        message.textContent = err instanceof ApiError
          ? (SIGNIN_REASONS[err.code] || err.message) : String(err);
        submit.disabled = false;
        input.focus();
      }
    },
  },
  h('label', { for: 'token' }, 'Token'),
  input,
  h('p', { id: 'token-help', class: 'muted' },
    'Run ', h('code', null, 'tenure ui'), ' for a sign-in link, or paste a token: it is exchanged for a session ',
    'and is kept nowhere in the browser.'),
  submit);
  main.replaceChildren(h('section', { class: 'signin', 'aria-labelledby': 'view-title' },
    h('h1', { id: 'view-title' }, 'Sign in to Tenure'), reason ? message : h('div', null, message), form));
  input.focus();
}

async function exchangeCode() {
  // #code=...: taken out of the address bar and the history before anything else happens.
  const match = /^#code=([^&]*)/.exec(location.hash);
  if (!match) return null;
  const code = decodeURIComponent(match[1]);
  history.replaceState(null, '', `${location.pathname}#/overview`);
  // Already signed in (another tab's link, or a link someone sent): say so before replacing the session. Only a
  // 401 means there is no session; when the server cannot tell, ask all the same.
  let current = null;
  try {
    current = await get('/v1/whoami', { quiet401: true });
  } catch (err) {
    current = err instanceof ApiError && err.status === 401 ? null : { unknown: true };
  }
  if (current && !await confirmReplace(current)) return null;
  try {
    await api('POST', '/v1/ui/session', { code }, { quiet401: true });
    return null;
  } catch (err) {
    const failed = err instanceof ApiError ? { code: err.code, message: err.message } : { code: 'error', message: String(err) };
    if (current && !current.unknown) {
      state.notice = `That sign-in link did not work (${failed.message}): you are still signed in as before.`;
      return null;
    }
    return failed;
  }
}

async function start() {
  let who;
  try {
    who = await get('/v1/whoami', { quiet401: true });
  } catch (err) {
    if (err instanceof ApiError && err.status === 401) {
      signIn(null);
      return;
    }
    main.replaceChildren(h('p', { class: 'notice bad', role: 'alert' },
      `The server cannot be reached (${err.message}). Retrying…`));
    const mine = state.generation;
    state.retry = setTimeout(() => { if (mine === state.generation) start(); }, 2000);
    return;
  }
  state.who = who;
  document.getElementById('nav').hidden = false;
  document.getElementById('signout').hidden = false;
  document.getElementById('who').textContent = who.role === 'admin' ? 'admin' : `${who.role} · ${who.project}`;
  if (!location.hash.startsWith('#/')) history.replaceState(null, '', '#/overview');
  await route();
}

// ---- the header -------------------------------------------------------------------------------------------

const THEMES = ['auto', 'light', 'dark'];

function applyTheme(theme) {
  if (theme === 'auto') delete document.documentElement.dataset.theme;
  else document.documentElement.dataset.theme = theme;
  const button = document.getElementById('theme');
  button.textContent = `Theme: ${theme}`;
  button.title = 'Change the theme (automatic follows the system)';
  window.dispatchEvent(new Event('tenure-theme'));
}

function storedTheme() {
  try { return localStorage.getItem('tenure-theme') || 'auto'; } catch { return 'auto'; }
}

function setupHeader() {
  applyTheme(storedTheme());
  // In the automatic theme the page follows the system as it changes; the graphs and charts are told so too.
  matchMedia('(prefers-color-scheme: dark)').addEventListener('change', () => {
    if (storedTheme() === 'auto') window.dispatchEvent(new Event('tenure-theme'));
  });
  document.getElementById('theme').addEventListener('click', () => {
    const next = THEMES[(THEMES.indexOf(storedTheme()) + 1) % THEMES.length];
    try { localStorage.setItem('tenure-theme', next); } catch { /* private mode: this page only */ }
    applyTheme(next);
  });
  document.getElementById('signout').addEventListener('click', async () => {
    try { await api('DELETE', '/v1/ui/session'); } catch { /* signed out either way */ }
    signIn({ code: 'signed_out', message: 'You have signed out.' });
  });
  document.getElementById('skip').addEventListener('click', (event) => {
    event.preventDefault(); // the fragment is the route: focus the content instead of following the link
    main.focus();
  });
  const status = document.getElementById('status');
  onStatus((summary, revision) => {
    status.className = `status ${summary}`;
    status.textContent = summary === 'reconnecting' ? 'Reconnecting…'
      : summary === 'connecting' ? 'Connecting…'
        : summary === 'live' ? `Live · revision ${revision === null ? '–' : count(revision)}` : '';
    status.dataset.state = summary;
    if (revision !== null) status.dataset.revision = String(revision);
  });
}

onUnauthorized((error) => signIn({ code: error.code === 'unauthorized' ? 'invalid_session' : error.code,
  message: error.message }));

window.addEventListener('hashchange', () => {
  if (location.hash.startsWith('#code=')) {
    boot();
    return;
  }
  route();
});

function confirmReplace(current) {
  return new Promise((resolve) => {
    const who = current.unknown ? 'someone (the server could not say who)'
      : current.role === 'admin' ? 'an admin' : `${current.role} of ${current.project}`;
    const yes = h('button', { type: 'button', class: 'primary', id: 'replace-yes', onclick: () => resolve(true) },
      'Use the link');
    const no = h('button', { type: 'button', id: 'replace-no', onclick: () => resolve(false) }, 'Stay as I am');
    main.replaceChildren(h('section', { class: 'signin', 'aria-labelledby': 'view-title' },
      h('h1', { id: 'view-title' }, 'A sign-in link was opened'),
      h('p', { id: 'replace-message' }, `You are signed in as ${who}. The link signs this browser in as whoever `
        + 'made it, in place of your session. Use it only if you asked for it.'),
      h('div', { class: 'toolbar' }, yes, no)));
    no.focus();
  });
}

async function boot() {
  teardown(); // a link opened in a tab already showing a view: nothing of the old session stays on screen
  clearTimeout(state.retry);
  state.who = null;
  document.getElementById('nav').hidden = true;
  document.getElementById('signout').hidden = true;
  document.getElementById('who').textContent = '';
  const mine = ++state.generation;
  const failed = await exchangeCode();
  if (mine !== state.generation) return; // another link was opened meanwhile: that boot goes on
  if (failed) {
    signIn(failed);
    return;
  }
  teardown();
  const notice = state.notice;
  state.notice = null;
  await start();
  if (notice) main.prepend(h('p', { class: 'notice bad', role: 'alert', id: 'boot-notice' }, notice));
}

setupHeader();
boot();
