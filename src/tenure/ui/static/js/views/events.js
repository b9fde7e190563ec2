// Events: the live event stream with the watch's own filters (kind, label selector, id, op). Pausing closes the
// stream and keeps its revision; resuming opens it again from there (since=REV), so nothing is lost while paused.

import { h } from '../dom.js';
import { count, time } from '../format.js';
import { Watch } from '../watch.js';

const KINDS = ['pool', 'claim', 'token', 'agent', 'reservation', 'topology', 'limit', 'instance'];
const OPS = ['created', 'updated', 'deleted', 'monitor_failed'];
const KEEP = 500; // rows kept on the page (the newest)

export function mount(root, ctx) {
  let watch = null;
  let paused = false;
  let revision = null;
  let received = 0;
  const rows = [];

  const kinds = checkboxes('Kinds', 'kind', KINDS, ctx.params.getAll('kind').flatMap((k) => k.split(',')));
  const ops = checkboxes('Operations', 'op', OPS, ctx.params.getAll('op').flatMap((k) => k.split(',')));
  const selector = h('input', { id: 'ev-selector', name: 'selector', value: ctx.params.get('selector') || '',
    placeholder: 'project=blue,state!=expired', size: 28 });
  const ids = h('input', { id: 'ev-id', name: 'id', value: ctx.params.get('id') || '', placeholder: 'vlans/web', size: 18 });
  const pause = h('button', { type: 'button', id: 'ev-pause', 'aria-pressed': 'false', onclick: () => toggle() }, 'Pause');
  const info = h('p', { id: 'ev-info', class: 'muted', 'aria-live': 'polite' });
  const problem = h('p', { id: 'ev-problem', role: 'alert' });
  const tbody = h('tbody');
  const form = h('form', { class: 'toolbar', onsubmit: (event) => { event.preventDefault(); apply(); } },
    kinds.fieldset, ops.fieldset,
    h('label', { for: 'ev-selector' }, 'Label selector', selector),
    h('label', { for: 'ev-id' }, 'Object id', ids),
    h('button', { type: 'submit', class: 'primary' }, 'Apply'),
    pause);
  root.append(
    h('h1', { id: 'view-title' }, 'Events'),
    form, problem, info,
    h('div', { class: 'scroll' }, h('table', { class: 'events list', id: 'events' },
      h('thead', null, h('tr', null, ['revision', 'time', 'kind', 'op', 'id', 'labels', 'object'].map((c) =>
        h('th', { scope: 'col', class: c === 'revision' ? 'num' : null }, c)))),
      tbody)),
  );

  const query = () => {
    const q = {};
    if (kinds.values().length) q.kind = kinds.values();
    if (ops.values().length) q.op = ops.values();
    if (selector.value.trim()) q.selector = selector.value.trim();
    if (ids.value.trim()) q.id = ids.value.trim();
    return q;
  };

  const say = () => {
    info.textContent = paused
      ? `Paused at revision ${revision === null ? '–' : count(revision)}: events keep being recorded and are shown when you resume.`
      : `${count(received)} events since this page opened${revision === null ? '' : ` · revision ${count(revision)}`}.`;
  };

  const open = (since) => {
    problem.textContent = '';
    problem.className = '';
    watch = new Watch(query(), {
      since,
      onEvent: (event) => { received++; add(event); },
      onBookmark: (rev) => { revision = rev; say(); ctx.ready(); },
      onReset: () => {
        problem.className = 'notice';
        problem.textContent = 'The server no longer holds the events after the revision this page had: some '
          + 'events are not shown. The stream continues from now.';
      },
      onError: (error) => {
        problem.className = 'notice bad';
        problem.textContent = `${error.message} (${error.code})`;
      },
    }).start();
  };

  const add = (event) => {
    revision = Math.max(revision || 0, event.revision || 0);
    const labels = Object.entries(event.labels || {}).map(([k, v]) => `${k}=${v}`).join(', ');
    const row = h('tr', { dataset: { revision: String(event.revision), kind: event.kind, id: event.id } },
      h('td', { class: 'num', 'data-label': 'revision' }, String(event.revision)),
      h('td', { 'data-label': 'time' }, time(event.ts)),
      h('td', { 'data-label': 'kind' }, event.kind),
      h('td', { 'data-label': 'op' }, event.type),
      h('td', { 'data-label': 'id', class: 'mono' }, event.id),
      h('td', { 'data-label': 'labels' }, labels),
      h('td', { 'data-label': 'object', class: 'body' },
        h('details', null, h('summary', null, 'show'), h('pre', { class: 'mono' }, JSON.stringify(event.object, null, 2)))));
    tbody.prepend(row);
    rows.unshift(row);
    while (rows.length > KEEP) rows.pop().remove();
    say();
  };

  const apply = () => {
    const params = new URLSearchParams();
    for (const k of kinds.values()) params.append('kind', k);
    for (const o of ops.values()) params.append('op', o);
    if (selector.value.trim()) params.set('selector', selector.value.trim());
    if (ids.value.trim()) params.set('id', ids.value.trim());
    ctx.setParams(params);
    if (watch) watch.close();
    rows.splice(0).forEach((r) => r.remove());
    received = 0;
    if (paused) toggle();
    else open(null);
  };

  const toggle = () => {
    paused = !paused;
    pause.textContent = paused ? 'Resume' : 'Pause';
    pause.setAttribute('aria-pressed', String(paused));
    if (paused) {
      if (watch) {
        revision = watch.revision;
        watch.close();
      }
      watch = null;
    } else {
      open(revision);
    }
    say();
  };

  open(null);
  say();
  return { unmount: () => { if (watch) watch.close(); } };
}

function checkboxes(legend, name, values, checked) {
  const boxes = values.map((v) => h('input', { type: 'checkbox', name, value: v, id: `ev-${name}-${v}`,
    checked: checked.includes(v) }));
  const fieldset = h('fieldset', null, h('legend', null, legend),
    boxes.map((box) => h('label', { class: 'inline', for: box.id }, box, box.value)));
  return { fieldset, values: () => boxes.filter((b) => b.checked).map((b) => b.value) };
}
