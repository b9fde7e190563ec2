// Pools and claims: every pool with its utilisation and audit state; a pool's claims in key order, searched by key
// (its prefix) or by value, released after a confirmation; an audit begun or ended by an admin. Live: the pool's
// claims and the pool itself are watched (from the revision of what was read), so counts and rows follow.

import { api, ApiError, get } from '../api.js';
import { debounce, h, table } from '../dom.js';
import { count, percent } from '../format.js';
import { Watch } from '../watch.js';

const PAGE = 100;

export function mount(root, ctx) {
  const admin = ctx.who.role === 'admin';
  let pools = [];
  let selected = ctx.params.get('pool');
  let search = ctx.params.get('q') || '';
  let claims = []; // the rows shown
  let next = null;
  let watch = null;
  let closed = false;
  let generation = 0;

  const listBox = h('div', { id: 'pool-list' });
  const detail = h('section', { id: 'pool-detail', class: 'card', hidden: true, 'aria-live': 'polite' });
  const problem = h('p', { role: 'alert' });
  const dialog = h('dialog', { id: 'pool-confirm', 'aria-labelledby': 'pool-confirm-title' });
  root.append(h('h1', { id: 'view-title' }, 'Pools and claims'), problem, listBox, detail, dialog);

  function keepParams() {
    const p = new URLSearchParams();
    if (selected) p.set('pool', selected);
    if (search) p.set('q', search);
    ctx.setParams(p);
  }

  async function loadPools() {
    try {
      pools = (await get('/v1/pools')).pools;
    } catch (err) {
      problem.className = 'notice bad';
      problem.textContent = err.message;
      return;
    }
    if (closed) return;
    drawPools();
    if (selected) drawHeader();
  }
  const loadPoolsSoon = debounce(loadPools, 300);

  function drawPools() {
    listBox.replaceChildren(table(
      [{ label: 'pool' }, { label: 'used', num: true }, { label: 'size', num: true }, { label: 'utilisation' },
        { label: 'strategy' }, { label: 'open to' }, { label: 'audit' }],
      pools.map((p) => {
        const share = p.size ? p.used / p.size : 0;
        return [
          h('button', { type: 'button', class: 'linkish', dataset: { pool: p.name }, 'aria-pressed': String(p.name === selected),
            onclick: () => choose(p.name) }, p.name),
          count(p.used), count(p.size),
          h('span', { class: 'util', dataset: { pool: p.name, used: String(p.used), size: String(p.size) } },
            h('meter', { min: 0, max: 1, value: share, 'aria-label': `${p.name} utilisation` }), ' ', percent(share)),
          p.strategy, p.projects ? p.projects.join(', ') : 'everyone',
          p.auditing ? h('span', { class: 'state state-pending' }, `auditing (epoch ${p.audit_epoch})`) : '–',
        ];
      }),
      { empty: 'No pools.' },
    ));
  }

  function choose(name) {
    selected = name;
    search = '';
    keepParams();
    drawPools();
    openPool();
  }

  const searchInput = h('input', { id: 'claim-search', type: 'search', size: 24, placeholder: 'key prefix, or a value' });
  const rowsBox = h('div', { id: 'claim-rows' });
  const header = h('div');
  const more = h('button', { type: 'button', id: 'claim-more', hidden: true, onclick: () => page(false) }, 'More');

  function drawHeader() {
    const p = pools.find((x) => x.name === selected);
    if (!p) {
      header.replaceChildren(h('p', { class: 'error' }, `There is no pool ${selected} (or it is not open to you).`));
      return;
    }
    const share = p.size ? p.used / p.size : 0;
    header.replaceChildren(
      h('h2', null, `Pool ${p.name}`),
      h('p', { id: 'pool-util', dataset: { used: String(p.used), size: String(p.size) } },
        `${count(p.used)} of ${count(p.size)} used (${percent(share)}) · ranges `,
        p.ranges.map((r) => `${r[0]}-${r[1]}`).join(', '),
        p.reserved.length ? ` · reserved ${p.reserved.map((r) => `${r[0]}-${r[1]}`).join(', ')}` : '',
        ` · ${p.strategy} first`),
      h('p', { id: 'pool-audit' }, p.auditing
        ? `An audit is under way (epoch ${p.audit_epoch}): claims not made again before it ends are released.`
        : 'No audit under way.'),
      admin ? h('div', { class: 'toolbar' },
        h('button', { type: 'button', id: 'audit-toggle', onclick: () => confirmAudit(p) },
          p.auditing ? 'End the audit…' : 'Begin an audit…')) : null,
    );
  }

  async function openPool() {
    if (watch) watch.close();
    watch = null;
    detail.hidden = false;
    searchInput.value = search;
    detail.replaceChildren(header,
      h('form', { class: 'toolbar', role: 'search', onsubmit: (event) => {
        event.preventDefault();
        search = searchInput.value.trim();
        keepParams();
        page(true);
      } }, h('label', { for: 'claim-search' }, 'Find claims', searchInput), h('button', { type: 'submit' }, 'Find')),
      rowsBox, more);
    drawHeader();
    await page(true);
  }

  // The claims: with no search, in key order, a page at a time; a search looks up the exact key, the value (when
  // it is a number), and the keys that start with it.
  async function page(fresh) {
    const mine = fresh ? ++generation : generation;
    const base = `/v1/pools/${encodeURIComponent(selected)}`;
    let revision = null;
    try {
      if (fresh) {
        claims = [];
        next = null;
        if (search) {
          // The listing first, for its revision: the lookups after it may see later changes, which the watch
          // from that revision then brings again (a claim's event sets or removes it: no harm done twice).
          const found = new Map();
          const listed = await get(`${base}/claims?limit=${PAGE}&after=${encodeURIComponent(before(search))}`);
          revision = listed.revision;
          const tries = [get(`${base}/claims/${encodeURIComponent(search)}`)];
          if (/^\d+$/.test(search)) tries.push(get(`${base}/values/${search}`));
          for (const result of await Promise.allSettled(tries)) {
            if (result.status === 'fulfilled' && result.value && result.value.key !== undefined) {
              found.set(result.value.key, result.value);
            }
          }
          for (const c of listed.claims) if (c.key.startsWith(search)) found.set(c.key, c);
          claims = [...found.values()].sort((a, b) => (a.key < b.key ? -1 : a.key > b.key ? 1 : 0));
        }
      }
      if (!search) {
        const q = `${base}/claims?limit=${PAGE}${next ? `&after=${encodeURIComponent(next)}` : ''}`;
        const listed = await get(q);
        revision = revision ?? listed.revision;
        claims = claims.concat(listed.claims);
        next = listed.next;
      }
    } catch (err) {
      if (mine !== generation) return;
      rowsBox.replaceChildren(h('p', { class: 'notice bad' }, err instanceof ApiError ? `${err.message} (${err.code})` : String(err)));
      return;
    }
    if (mine !== generation || closed) return;
    more.hidden = !!search || !next;
    drawClaims();
    if (fresh && revision !== null) follow(revision);
  }

  function follow(revision) {
    if (watch) watch.close();
    watch = new Watch({ kind: ['claim', 'pool'], selector: `pool=${selected}` }, {
      since: revision,
      onEvent: (event) => {
        if (event.kind === 'pool') {
          loadPoolsSoon();
          return;
        }
        const c = event.object;
        const key = event.id.slice(selected.length + 1);
        const i = claims.findIndex((x) => x.key === key);
        if (event.type === 'deleted') {
          if (i >= 0) claims.splice(i, 1);
        } else if (i >= 0) {
          claims[i] = c;
        } else if (search ? key.startsWith(search) || String(c.value) === search : !next || key < next) {
          claims.push(c);
          claims.sort((a, b) => (a.key < b.key ? -1 : a.key > b.key ? 1 : 0));
        }
        drawClaimsSoon();
        loadPoolsSoon();
      },
      onReset: () => page(true),
      onError: (error) => { problem.className = 'notice bad'; problem.textContent = `${error.message} (${error.code})`; },
    }).start();
  }

  function drawClaims() {
    rowsBox.replaceChildren(table(
      [{ label: 'key' }, { label: 'value', num: true }, { label: 'project' }, { label: 'host' }, { label: '' }],
      claims.map((c) => [
        h('span', { class: 'mono', dataset: { key: c.key } }, c.key), String(c.value), c.project || '–', c.host || '–',
        h('button', { type: 'button', class: 'danger', dataset: { release: c.key }, onclick: () => confirmRelease(c) },
          'Release…')]),
      { empty: search ? 'No claim matches.' : 'No claims in this pool.', caption: search ? `Claims matching ${search}` : null },
    ));
  }
  const drawClaimsSoon = debounce(drawClaims, 100);

  function confirm(title, text, action, label) {
    const yes = h('button', { type: 'button', class: 'danger', id: 'pool-confirm-yes', onclick: async () => {
      dialog.close();
      try {
        await action();
      } catch (err) {
        problem.className = 'notice bad';
        problem.textContent = err instanceof ApiError ? `${err.message} (${err.code})` : String(err);
      }
    } }, label);
    dialog.replaceChildren(h('h2', { id: 'pool-confirm-title' }, title), h('p', null, text),
      h('div', { class: 'toolbar' }, yes, h('button', { type: 'button', onclick: () => dialog.close() }, 'Keep it')));
    dialog.showModal();
    yes.focus();
  }

  function confirmRelease(c) {
    confirm(`Release ${c.key}?`,
      `Value ${c.value} in ${selected} goes back to the pool; whoever holds it must claim again (and may get another value).`,
      async () => {
        await api('DELETE', `/v1/pools/${encodeURIComponent(selected)}/claims/${encodeURIComponent(c.key)}`);
        claims = claims.filter((x) => x.key !== c.key);
        drawClaims();
        loadPoolsSoon();
      }, 'Release it');
  }

  function confirmAudit(p) {
    const ending = p.auditing;
    confirm(ending ? `End the audit of ${p.name}?` : `Begin an audit of ${p.name}?`,
      ending ? 'Every claim not made again since the audit began is released now.'
        : 'Until the audit ends, holders claim again what they still use; what is not claimed again is released at the end.',
      async () => {
        await api('POST', `/v1/pools/${encodeURIComponent(p.name)}/audit:${ending ? 'end' : 'begin'}`);
        await loadPools();
        if (ending) page(true);
      }, ending ? 'End it' : 'Begin it');
  }

  loadPools().then(async () => {
    if (selected && !closed) await openPool();
    ctx.ready();
  });
  const poolWatch = new Watch({ kind: 'pool' }, {
    onConnected: loadPoolsSoon, onEvent: loadPoolsSoon, onReset: loadPoolsSoon,
    onError: (error) => { problem.className = 'notice bad'; problem.textContent = `${error.message} (${error.code})`; },
  }).start();

  return {
    unmount: () => {
      closed = true;
      if (watch) watch.close();
      poolWatch.close();
      loadPoolsSoon.cancel();
      drawClaimsSoon.cancel();
    },
  };
}

// The largest key below every key that starts with prefix (for ?after=, which lists the keys after it).
function before(prefix) {
  const last = prefix.charCodeAt(prefix.length - 1);
  return last > 0 ? `${prefix.slice(0, -1)}${String.fromCharCode(last - 1)}\uffff` : prefix.slice(0, -1);
}
