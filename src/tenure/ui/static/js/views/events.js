// Events: the live event stream with the watch's own filters (kind, label selector, id, op). Pausing closes the
// stream and keeps its revision; resuming opens it again from there (since=REV), so nothing is lost while paused.
// The newest KEEP events are kept; only the rows in sight are on the page (a fixed set of rows whose text is
// rewritten once a frame), so a thousand events a second cost the page no more than a few.

import { h } from '../dom.js';
import { count, time } from '../format.js';
import { Watch } from '../watch.js';

const KINDS = ['pool', 'claim', 'token', 'agent', 'reservation', 'topology', 'limit', 'instance'];
const OPS = ['created', 'updated', 'deleted', 'monitor_failed'];
const KEEP = 5000; // events kept (the newest)
const ROW = 32; // px: every row is one line high
const SHOWN = 40; // rows on the page at most

export function mount(root, ctx) {
  let watch = null;
  let paused = false;
  let revision = null;
  let received = 0;
  let events = []; // newest first

  const kinds = checkboxes('Kinds', 'kind', KINDS, ctx.params.getAll('kind').flatMap((k) => k.split(',')));
  const ops = checkboxes('Operations', 'op', OPS, ctx.params.getAll('op').flatMap((k) => k.split(',')));
  const selector = h('input', { id: 'ev-selector', name: 'selector', value: ctx.params.get('selector') || '',
    placeholder: 'project=blue,state!=expired', size: 28 });
  const ids = h('input', { id: 'ev-id', name: 'id', value: ctx.params.get('id') || '', placeholder: 'vlans/web', size: 18 });
  const pause = h('button', { type: 'button', id: 'ev-pause', 'aria-pressed': 'false', onclick: () => toggle() }, 'Pause');
  const info = h('p', { id: 'ev-info', class: 'muted', 'aria-live': 'polite' });
  const problem = h('p', { id: 'ev-problem', role: 'alert' });
  const tbody = h('tbody');
  const above = h('tr', { class: 'spacer', 'aria-hidden': 'true' }, h('td', { colspan: 7 }));
  const below = h('tr', { class: 'spacer', 'aria-hidden': 'true' }, h('td', { colspan: 7 }));
  const body = h('pre', { id: 'ev-object', class: 'mono card', hidden: true, tabindex: 0 });
  const scroller = h('div', { class: 'scroll events-scroll', id: 'events-scroll' });
  const form = h('form', { class: 'toolbar', onsubmit: (event) => { event.preventDefault(); apply(); } },
    kinds.fieldset, ops.fieldset,
    h('label', { for: 'ev-selector' }, 'Label selector', selector),
    h('label', { for: 'ev-id' }, 'Object id', ids),
    h('button', { type: 'submit', class: 'primary' }, 'Apply'),
    pause);
  root.append(
    h('h1', { id: 'view-title' }, 'Events'),
    form, problem, info,
    scroller, body,
  );
  scroller.append(h('table', { class: 'events', id: 'events' },
    h('thead', null, h('tr', null, ['revision', 'time', 'kind', 'op', 'id', 'labels', 'object'].map((c) =>
      h('th', { scope: 'col', class: c === 'revision' ? 'num' : null }, c)))),
    tbody));

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

  // Events are queued as they arrive and shown once a frame.
  let queued = [];
  let frame = null;
  const add = (event) => {
    revision = Math.max(revision || 0, event.revision || 0);
    queued.push(event);
    if (queued.length > KEEP) queued = queued.slice(-KEEP);
    schedule();
  };
  const schedule = () => { if (frame === null) frame = requestAnimationFrame(flush); };
  const flush = () => {
    frame = null;
    const top = scroller.scrollTop;
    const added = queued.length;
    if (added) {
      events = queued.reverse().concat(events);
      if (events.length > KEEP) events.length = KEEP;
      queued = [];
      say();
    }
    if (added && top > 0) { // scrolled down to older events: they stay in sight as newer ones come in above
      above.firstChild.style.height = `${(Math.floor(top / ROW) + added) * ROW}px`;
      scroller.scrollTop = top + added * ROW;
    }
    draw();
  };

  // The rows in sight: a fixed pool of rows, each cell's text rewritten; spacers stand for the rest.
  const pool = [];
  const cell = (label, cls) => h('td', { 'data-label': label, class: cls });
  const rowAt = (i) => {
    while (pool.length <= i) {
      const show = h('button', { type: 'button', class: 'linkish' }, 'show');
      const tr = h('tr', null, cell('revision', 'num'), cell('time'), cell('kind'), cell('op'), cell('id', 'mono'),
        cell('labels'), h('td', { 'data-label': 'object' }, show));
      show.addEventListener('click', () => reveal(tr.event));
      pool.push(tr);
    }
    return pool[i];
  };
  const draw = () => {
    const first = Math.max(0, Math.min(Math.floor(scroller.scrollTop / ROW) - 5, events.length - SHOWN));
    const last = Math.min(events.length, first + SHOWN);
    above.firstChild.style.height = `${first * ROW}px`;
    below.firstChild.style.height = `${(events.length - last) * ROW}px`;
    const wanted = [above];
    for (let i = first; i < last; i++) {
      const event = events[i];
      const tr = rowAt(i - first);
      if (tr.event !== event) {
        tr.event = event;
        tr.dataset.revision = String(event.revision);
        tr.dataset.kind = event.kind;
        tr.dataset.id = event.id;
        const c = tr.cells;
        c[0].textContent = String(event.revision);
        c[1].replaceChildren(time(event.ts));
        c[2].textContent = event.kind;
        c[3].textContent = event.type;
        c[4].textContent = event.id;
        c[5].textContent = Object.entries(event.labels || {}).map(([k, v]) => `${k}=${v}`).join(', ');
      }
      wanted.push(tr);
    }
    wanted.push(below);
    if (wanted.length !== tbody.children.length || wanted.some((tr, i) => tbody.children[i] !== tr)) {
      tbody.replaceChildren(...wanted);
    }
  };
  scroller.addEventListener('scroll', schedule, { passive: true });
  const reveal = (event) => {
    body.hidden = false;
    body.textContent = `${event.kind} ${event.id} (${event.type} at revision ${event.revision})\n\n`
      + JSON.stringify(event.object, null, 2);
    body.focus();
  };

  const apply = () => {
    const params = new URLSearchParams();
    for (const k of kinds.values()) params.append('kind', k);
    for (const o of ops.values()) params.append('op', o);
    if (selector.value.trim()) params.set('selector', selector.value.trim());
    if (ids.value.trim()) params.set('id', ids.value.trim());
    ctx.setParams(params);
    if (watch) watch.close();
    events = [];
    queued = [];
    received = 0;
    body.hidden = true;
    draw();
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
  return { unmount: () => { if (watch) watch.close(); if (frame !== null) cancelAnimationFrame(frame); } };
}

function checkboxes(legend, name, values, checked) {
  const boxes = values.map((v) => h('input', { type: 'checkbox', name, value: v, id: `ev-${name}-${v}`,
    checked: checked.includes(v) }));
  const fieldset = h('fieldset', null, h('legend', null, legend),
    boxes.map((box) => h('label', { class: 'inline', for: box.id }, box, box.value)));
  return { fieldset, values: () => boxes.filter((b) => b.checked).map((b) => b.value) };
}
