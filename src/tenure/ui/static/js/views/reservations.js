// Reservations: a timeline (vis-timeline) of the reservations the filters select (project, kind, state, node, link;
// one row per reservation, or one per link), the same as a table (the keyboard's way in), a selected reservation's
// details with modify and cancel, and a form that previews the path (POST /v1/paths) before booking. A refusal is
// shown where it happened: the link of a 409 insufficient_capacity on the graph and its instant on the link's chart.
// Live: the list's revision, then the watch from it (since=), so nothing between the two is missed.

import { api, ApiError, get } from '../api.js';
import { debounce, h, table } from '../dom.js';
import { rate, time } from '../format.js';
import { TopologyGraph } from '../graph.js';
import { LinkChart } from '../linkchart.js';
import { Watch } from '../watch.js';

const STATES = ['pending', 'active', 'degraded', 'expired', 'cancelled'];
const KINDS = ['bandwidth', 'oneway', 'steering', 'mirror'];
const MAX_SHOWN = 10000;
const PAGE = 5000;
const TABLE_ROWS = 200;

export function mount(root, ctx) {
  const admin = ctx.who.role === 'admin';
  const filters = {
    project: admin ? ctx.params.get('project') || '' : '',
    kind: ctx.params.get('kind') || '',
    state: ctx.params.get('state') || '',
    node: ctx.params.get('node') || '',
    link: ctx.params.get('link') || '',
  };
  let groupBy = ctx.params.get('group') === 'link' ? 'link' : 'reservation';
  let selected = ctx.params.get('id') || null;
  const reservations = new Map();
  const itemIds = new Map(); // reservation id -> the ids of its timeline items
  let truncated = false;
  let watch = null;
  let timeline = null;
  let items = null;
  let groups = null;
  let topology = null;
  let closed = false;
  let generation = 0;
  let fitted = false;
  let firstDraw = null;

  // ---- the filters ----------------------------------------------------------------------------------------
  const input = (name, label, attrs = {}) => {
    const el = h('input', { id: `rf-${name}`, name, value: filters[name], size: 12, ...attrs });
    return { el, label: h('label', { for: `rf-${name}` }, label, el) };
  };
  const select = (name, label, values) => {
    const el = h('select', { id: `rf-${name}`, name },
      h('option', { value: '' }, 'any'), values.map((v) => h('option', { value: v, selected: filters[name] === v }, v)));
    return { el, label: h('label', { for: `rf-${name}` }, label, el) };
  };
  const fProject = input('project', 'Project');
  const fKind = select('kind', 'Kind', KINDS);
  const fState = select('state', 'State', STATES);
  const fNode = input('node', 'Node', { list: 'node-ids' });
  const fLink = input('link', 'Link', { list: 'link-ids' });
  const fGroup = h('select', { id: 'rf-group', onchange: () => { groupBy = fGroup.value; keepParams(); redrawAll(); } },
    h('option', { value: 'reservation', selected: groupBy === 'reservation' }, 'one per reservation'),
    h('option', { value: 'link', selected: groupBy === 'link' }, 'one per link'));
  const nodeList = h('datalist', { id: 'node-ids' });
  const linkList = h('datalist', { id: 'link-ids' });
  const filterForm = h('form', { class: 'toolbar', id: 'res-filters', onsubmit: (event) => {
    event.preventDefault();
    if (admin) filters.project = fProject.el.value.trim();
    filters.kind = fKind.el.value;
    filters.state = fState.el.value;
    filters.node = fNode.el.value.trim();
    filters.link = fLink.el.value.trim();
    keepParams();
    load();
  } },
  admin ? fProject.label : null, fKind.label, fState.label, fNode.label, fLink.label,
  h('button', { type: 'submit', class: 'primary' }, 'Filter'),
  h('label', { for: 'rf-group' }, 'Rows', fGroup),
  h('button', { type: 'button', id: 'res-new', 'aria-expanded': 'false', onclick: () => toggleForm() }, 'New reservation'));

  const info = h('p', { id: 'res-info', class: 'muted', 'aria-live': 'polite' });
  const problem = h('p', { id: 'res-problem', role: 'alert' });
  const formPanel = h('section', { id: 'res-form-panel', class: 'card', hidden: true, 'aria-labelledby': 'res-form-title' });
  const timelineBox = h('div', { id: 'res-timeline', class: 'timeline' });
  const detail = h('section', { id: 'res-detail', class: 'card', hidden: true, 'aria-live': 'polite' });
  const listBox = h('div', { id: 'res-table' });
  const dialog = h('dialog', { id: 'res-confirm', 'aria-labelledby': 'res-confirm-title' });
  root.append(h('h1', { id: 'view-title' }, 'Reservations'), filterForm, nodeList, linkList, formPanel, problem, info,
    h('div', { class: 'split' }, timelineBox, detail), h('h2', null, 'As a table'), listBox, dialog);

  function keepParams() {
    const p = new URLSearchParams();
    for (const [k, v] of Object.entries(filters)) if (v) p.set(k, v);
    if (groupBy === 'link') p.set('group', 'link');
    if (selected) p.set('id', selected);
    ctx.setParams(p);
  }

  // The same rules as GET /v1/reservations's filters, for the events that arrive after the list.
  function matches(r) {
    if (filters.project && r.project !== filters.project) return false;
    if (filters.kind && r.kind !== filters.kind) return false;
    if (filters.state && r.state !== filters.state) return false;
    if (filters.node && !(r.src === filters.node || r.dst === filters.node || (r.via || []).includes(filters.node)
      || r.paths.some((p) => p.nodes.includes(filters.node)))) return false;
    if (filters.link && !r.paths.some((p) => p.links.includes(filters.link))) return false;
    return true;
  }

  // ---- loading: the list, then the watch from its revision ---------------------------------------------------
  async function load() {
    const mine = ++generation;
    if (watch) watch.close();
    watch = null;
    reservations.clear();
    truncated = false;
    info.textContent = 'Loading…';
    problem.textContent = '';
    problem.className = '';
    const query = new URLSearchParams();
    for (const [k, v] of Object.entries(filters)) if (v) query.set(k, v);
    query.set('limit', String(PAGE));
    let revision = null;
    try {
      for (;;) {
        const page = await get(`/v1/reservations?${query}`);
        if (mine !== generation || closed) return;
        if (revision === null) revision = page.revision;
        for (const r of page.reservations) reservations.set(r.id, r);
        if (!page.next) break;
        if (reservations.size >= MAX_SHOWN) {
          truncated = true;
          break;
        }
        query.set('after', page.next);
      }
    } catch (err) {
      if (mine !== generation) return;
      problem.className = 'notice bad';
      problem.textContent = err instanceof ApiError ? `${err.message} (${err.code})` : String(err);
      info.textContent = '';
      return;
    }
    redrawAll();
    const selector = [];
    if (filters.kind) selector.push(`type=${filters.kind}`);
    if (filters.project) selector.push(`project=${filters.project}`);
    watch = new Watch({ kind: 'reservation', selector: selector.join(',') }, {
      since: revision,
      onEvent: (event) => {
        const r = event.object;
        if (event.type === 'deleted' || !matches(r)) {
          if (reservations.delete(event.id)) changed(event.id, null);
        } else if (reservations.has(r.id) || reservations.size < MAX_SHOWN) {
          reservations.set(r.id, r);
          changed(r.id, r);
        }
      },
      onReset: () => load(), // the server no longer has the events since our list: list again
      onError: (error) => { problem.className = 'notice bad'; problem.textContent = `${error.message} (${error.code})`; },
    }).start();
  }

  // ---- drawing ------------------------------------------------------------------------------------------------
  const sorted = () => [...reservations.values()].sort((a, b) => a.start.localeCompare(b.start) || a.id.localeCompare(b.id));

  function itemsOf(r) {
    const cls = `res state-${r.state}`;
    if (groupBy === 'reservation') {
      return [{ id: r.id, start: r.start, end: r.end, className: cls, r, label: `${r.src} → ${r.dst} · ${rateText(r)}` }];
    }
    const out = [];
    for (const path of r.paths) {
      path.links.forEach((link, i) => {
        out.push({ id: `${r.id}|${path.leg}|${link}|${i}`, group: link, start: r.start, end: r.end, className: cls, r,
          label: `${r.id} · ${rate(path.rate)}` });
      });
    }
    return out;
  }

  let making = null; // one timeline, however many draws ask for it before its library has loaded
  function ensureTimeline() {
    if (!making) making = makeTimeline();
    return making;
  }

  async function makeTimeline() {
    const { Timeline, DataSet } = await import('../../vendor/timeline.js');
    if (closed) return;
    items = new DataSet();
    groups = new DataSet();
    let drawn;
    firstDraw = new Promise((resolve) => { drawn = resolve; });
    timeline = new Timeline(timelineBox, items, {
      stack: true,
      verticalScroll: true,
      zoomKey: 'ctrlKey',
      maxHeight: 520,
      orientation: { axis: 'top' },
      selectable: true,
      multiselect: false,
      showCurrentTime: true,
      margin: { item: { horizontal: 0, vertical: 4 } },
      // Text, never markup: the item's label as a text node in an element we make.
      template: (item) => h('span', { class: 'res-label', dataset: { reservation: item.r.id } }, item.label),
      groupTemplate: (group) => h('span', { class: 'mono' }, group.id),
      tooltip: { followMouse: false },
      start: Date.now() - 3600e3,
      end: Date.now() + 86400e3,
      onInitialDrawComplete: () => drawn(),
    });
    timeline.on('select', ({ items: chosen }) => {
      const first = chosen[0];
      if (!first) return;
      const id = String(first).split('|')[0];
      choose(id, false);
    });
  }

  async function redrawAll() {
    await ensureTimeline();
    if (closed || !timeline) return;
    const all = sorted();
    const list = all.flatMap(itemsOf);
    items.clear();
    groups.clear();
    if (groupBy === 'link') {
      const links = [...new Set(list.map((i) => i.group))].sort();
      groups.add(links.map((id) => ({ id, content: id })));
      timeline.setGroups(groups);
    } else {
      timeline.setGroups(null);
    }
    itemIds.clear();
    for (const item of list) {
      if (!itemIds.has(item.r.id)) itemIds.set(item.r.id, []);
      itemIds.get(item.r.id).push(item.id);
    }
    items.add(list);
    timelineBox.dataset.items = String(items.length);
    if (!fitted && list.length) { // the next day, unless nothing is in it: then all of them
      fitted = true;
      const from = Date.now() - 3600e3;
      const to = Date.now() + 86400e3;
      if (!list.some((i) => Date.parse(i.start) < to && Date.parse(i.end) > from)) timeline.fit({ animation: false });
    }
    drawTable(all);
    say();
    if (selected) choose(selected, true);
    if (list.length) firstDraw.then(() => ctx.ready()); // the timeline shows itself once it has drawn its items
    else ctx.ready();
  }

  function changed(id, r) {
    if (!timeline) return;
    items.remove(itemIds.get(id) || []);
    itemIds.delete(id);
    if (r) {
      const next = itemsOf(r);
      itemIds.set(id, next.map((item) => item.id));
      if (groupBy === 'link') {
        for (const item of next) if (!groups.get(item.group)) groups.add({ id: item.group, content: item.group });
      }
      items.add(next);
    }
    timelineBox.dataset.items = String(items.length);
    timelineBox.dataset.revision = String(Watch.revision ?? '');
    colourPreviewSoon();
    redrawTable();
    say();
    if (selected === id) {
      if (r) showDetail(r);
      else detail.hidden = true;
    }
  }
  const redrawTable = debounce(() => drawTable(sorted()), 200);

  function drawTable(all) {
    listBox.replaceChildren(table(
      [{ label: 'reservation' }, { label: 'kind' }, { label: 'project' }, { label: 'route' }, { label: 'rate', num: true },
        { label: 'from' }, { label: 'to' }, { label: 'state' }],
      all.slice(0, TABLE_ROWS).map((r) => [
        h('button', { type: 'button', class: 'linkish mono', dataset: { reservation: r.id }, onclick: () => choose(r.id, true) }, r.id),
        r.kind, r.project || '–', route(r), rateText(r), time(r.start), time(r.end),
        h('span', { class: `state state-${r.state}` }, r.state)]),
      { empty: 'No reservation matches.' },
    ));
    if (all.length > TABLE_ROWS) listBox.append(h('p', { class: 'muted' }, `The first ${TABLE_ROWS} by start; narrow the filters for the others.`));
  }

  function say() {
    info.textContent = `${reservations.size.toLocaleString('en')} reservation${reservations.size === 1 ? '' : 's'}`
      + (truncated ? ` (the first ${MAX_SHOWN.toLocaleString('en')}: narrow the filters)` : '')
      + '. Drag to scroll the timeline, Ctrl and the wheel to zoom.';
  }

  // ---- one reservation --------------------------------------------------------------------------------------
  function choose(id, focusTimeline) {
    selected = id;
    keepParams();
    const r = reservations.get(id);
    if (!r) {
      get(`/v1/reservations/${encodeURIComponent(id)}`).then((found) => { if (selected === id) showDetail(found); })
        .catch((err) => { detail.hidden = false; detail.replaceChildren(h('p', { class: 'error' }, err.message)); });
      return;
    }
    if (timeline) {
      const ids = itemIds.get(id) || [];
      timeline.setSelection(ids, { focus: focusTimeline && ids.length > 0, animation: false });
    }
    showDetail(r);
  }

  function showDetail(r) {
    const live = r.state === 'pending' || r.state === 'active' || r.state === 'degraded';
    const fields = [
      ['kind', r.kind], ['project', r.project || '–'], ['state', h('span', { class: `state state-${r.state}` }, r.state)],
      ['route', route(r)], ['rate', rateText(r)], ['from', time(r.start)], ['to', time(r.end)],
      ['paths', h('ul', null, r.paths.map((p) => h('li', null, `${p.leg}: ${p.nodes.length ? p.nodes.join(' → ') : '(no path)'} · ${rate(p.rate)}`)))],
      ['labels', Object.entries(r.labels || {}).map(([k, v]) => `${k}=${v}`).join(', ') || '–'],
    ];
    if (r.reason) fields.push(['reason', r.reason]);
    const firstLink = r.paths.find((p) => p.links.length)?.links[0];
    detail.hidden = false;
    detail.dataset.reservation = r.id;
    detail.replaceChildren(
      h('h2', null, `Reservation ${r.id}`),
      h('dl', { class: 'fields' }, fields.flatMap(([k, v]) => [h('dt', null, k), h('dd', { dataset: { field: k } }, v)])),
      h('div', { class: 'toolbar' },
        firstLink ? h('a', { class: 'button', href: `#/topology?link=${encodeURIComponent(firstLink)}` }, 'On the topology') : null,
        live ? h('button', { type: 'button', id: 'res-modify', onclick: () => modifyForm(r) }, 'Modify') : null,
        live ? h('button', { type: 'button', class: 'danger', id: 'res-cancel', onclick: () => confirmCancel(r) }, 'Cancel reservation') : null),
    );
  }

  function modifyForm(r) {
    const pending = r.state === 'pending';
    const start = h('input', { id: 'mod-start', type: 'datetime-local', step: 1, value: localInput(r.start), disabled: !pending });
    const end = h('input', { id: 'mod-end', type: 'datetime-local', step: 1, value: localInput(r.end) });
    const rateIn = h('input', { id: 'mod-rate', value: rate(r.rate_out), size: 8 });
    const message = h('p', { role: 'alert' });
    const form = h('form', { class: 'toolbar', id: 'res-modify-form', onsubmit: async (event) => {
      event.preventDefault();
      const body = {};
      if (pending && start.value && isoOf(start.value) !== new Date(r.start).toISOString()) body.start = isoOf(start.value);
      if (end.value && isoOf(end.value) !== new Date(r.end).toISOString()) body.end = isoOf(end.value);
      if (rateIn.value.trim() && rateIn.value.trim() !== rate(r.rate_out)) body.rate = rateIn.value.trim();
      if (!Object.keys(body).length) { message.textContent = 'Nothing changed.'; return; }
      try {
        const next = await api('PATCH', `/v1/reservations/${encodeURIComponent(r.id)}`, body);
        reservations.set(next.id, next);
        changed(next.id, matches(next) ? next : null);
        showDetail(next);
      } catch (err) {
        message.className = 'notice bad';
        message.textContent = `${err.message} (${err.code})`;
      }
    } },
    h('label', { for: 'mod-start' }, 'From', start), h('label', { for: 'mod-end' }, 'To', end),
    h('label', { for: 'mod-rate' }, 'Rate', rateIn), h('button', { type: 'submit', class: 'primary' }, 'Save'));
    detail.append(form, message);
    end.focus();
  }

  function confirmCancel(r) {
    const yes = h('button', { type: 'button', class: 'danger', id: 'res-confirm-yes', onclick: async () => {
      dialog.close();
      try {
        const next = await api('DELETE', `/v1/reservations/${encodeURIComponent(r.id)}`);
        changed(next.id, matches(next) ? next : null);
        if (matches(next)) reservations.set(next.id, next);
        showDetail(next);
      } catch (err) {
        problem.className = 'notice bad';
        problem.textContent = `${err.message} (${err.code})`;
      }
    } }, 'Cancel it');
    dialog.replaceChildren(
      h('h2', { id: 'res-confirm-title' }, `Cancel reservation ${r.id}?`),
      h('p', null, `${route(r)} at ${rateText(r)}: its capacity is given back at once. This cannot be undone.`),
      h('div', { class: 'toolbar' }, yes, h('button', { type: 'button', onclick: () => dialog.close() }, 'Keep it')));
    dialog.showModal();
    yes.focus();
  }

  // ---- the form: preview, then book ---------------------------------------------------------------------------
  let previewGraph = null;
  let refusalChart = null;

  // The form's graph is coloured by what is reserved now, and follows every booking.
  async function colourPreview() {
    if (!previewGraph || closed) return;
    try {
      const usage = await get('/v1/links/usage');
      if (previewGraph) previewGraph.setUsage(usage.links);
    } catch { /* the colours stay as they were */ }
  }
  const colourPreviewSoon = debounce(colourPreview, 200);

  function toggleForm() {
    const open = formPanel.hidden;
    formPanel.hidden = !open;
    document.getElementById('res-new').setAttribute('aria-expanded', String(open));
    if (open && !formPanel.firstChild) buildForm();
    if (open) formPanel.querySelector('select, input').focus();
  }

  function buildForm() {
    const now = new Date();
    const field = (name, label, attrs = {}) => {
      const el = h('input', { id: `nf-${name}`, name, ...attrs });
      return { el, wrap: h('label', { for: `nf-${name}` }, label, el) };
    };
    const kind = h('select', { id: 'nf-kind', name: 'kind' }, KINDS.map((k) => h('option', { value: k }, k)));
    const src = field('src', 'From', { list: 'node-ids', required: true, size: 10 });
    const dst = field('dst', 'To', { list: 'node-ids', required: true, size: 10 });
    const via = field('via', 'Through (middleboxes, comma-separated)', { size: 16 });
    const port = field('port', 'Port (link)', { list: 'link-ids', size: 12 });
    const rateField = field('rate', 'Rate', { required: true, size: 8, placeholder: '1G' });
    const rateInField = field('rate_in', 'Rate back (bandwidth)', { size: 8, placeholder: 'as out' });
    const start = field('start', 'From (empty: now)', { type: 'datetime-local', step: 1 });
    const end = field('end', 'To', { type: 'datetime-local', step: 1, required: true,
      value: localInput(new Date(now.getTime() + 3600e3).toISOString()) });
    const project = field('project', 'Project', { size: 10 });
    const mode = h('select', { id: 'nf-mode', name: 'path_mode' }, h('option', { value: 'shortest' }, 'shortest'),
      h('option', { value: 'widest' }, 'widest'));
    const labels = field('labels', 'Labels (key=value, …)', { size: 18 });
    const result = h('div', { id: 'nf-result', 'aria-live': 'polite' });
    const graphBox = h('div', { class: 'graph small', id: 'nf-graph', role: 'img', 'aria-label': 'The path on the topology' });
    const chartBox = h('div', { class: 'chart', id: 'nf-chart' });
    const showFor = () => {
      const k = kind.value;
      via.wrap.hidden = k !== 'steering';
      port.wrap.hidden = k !== 'mirror';
      rateInField.wrap.hidden = k !== 'bandwidth';
      dst.wrap.firstChild.textContent = k === 'mirror' ? 'Collector' : 'To';
    };
    kind.addEventListener('change', showFor);

    const body = () => {
      const k = kind.value;
      const b = { kind: k, src: src.el.value.trim(), rate: rateField.el.value.trim(), end: isoOf(end.el.value) };
      if (start.el.value) b.start = isoOf(start.el.value);
      if (k === 'mirror') b.collector = dst.el.value.trim();
      else b.dst = dst.el.value.trim();
      if (k === 'steering') b.via = via.el.value.split(',').map((v) => v.trim()).filter(Boolean);
      if (k === 'mirror' && port.el.value.trim()) b.port = port.el.value.trim();
      if (k === 'bandwidth' && rateInField.el.value.trim()) b.rate_in = rateInField.el.value.trim();
      if (admin && project.el.value.trim()) b.project = project.el.value.trim();
      if (mode.value !== 'shortest') b.path_mode = mode.value;
      const text = labels.el.value.trim();
      if (text) b.labels = Object.fromEntries(text.split(',').map((kv) => kv.split('=').map((x) => x.trim())));
      return b;
    };

    const invalid = (err) => {
      for (const el of formPanel.querySelectorAll('[aria-invalid]')) el.removeAttribute('aria-invalid');
      for (const d of err.details?.details || []) {
        const name = d.loc?.[d.loc.length - 1];
        const el = formPanel.querySelector(`[name="${CSS.escape(String(name))}"]`);
        if (el) el.setAttribute('aria-invalid', 'true');
      }
    };

    const preview = async () => {
      const b = body();
      const stops = b.kind === 'steering' ? [b.src, ...b.via, b.dst] : [b.src, b.kind === 'mirror' ? b.collector : b.dst];
      const legs = stops.slice(1).map((to, i) => ({ src: stops[i], dst: to }));
      result.replaceChildren(h('p', { class: 'muted' }, 'Finding the path…'));
      try {
        const found = [];
        for (const leg of legs) {
          const q = { src: leg.src, dst: leg.dst, rate: b.rate, end: b.end };
          if (b.start) q.start = b.start;
          if (b.path_mode) q.path_mode = b.path_mode;
          found.push((await api('POST', '/v1/paths', q)).paths[0]);
        }
        await drawGraph();
        previewGraph.markRefused(null);
        previewGraph.showPath(found.filter(Boolean));
        result.replaceChildren(h('div', { class: 'notice', id: 'nf-preview' },
          found.map((p, i) => (p ? h('p', null, `${legs[i].src} → ${legs[i].dst}: ${p.nodes.join(' → ')} `
            + `(${p.hops} hops; ${rate(p.residual)} left on its tightest hop)`)
            : h('p', { class: 'error' }, `${legs[i].src} → ${legs[i].dst}: no path has room.`)))));
      } catch (err) {
        if (err instanceof ApiError) invalid(err);
        result.replaceChildren(h('p', { class: 'notice bad' }, `${err.message} (${err.code})`));
      }
    };

    const book = async (event) => {
      event.preventDefault();
      const b = body();
      try {
        const made = await api('POST', '/v1/reservations', b);
        for (const el of formPanel.querySelectorAll('[aria-invalid]')) el.removeAttribute('aria-invalid');
        if (matches(made)) {
          reservations.set(made.id, made);
          changed(made.id, made);
        }
        await drawGraph();
        previewGraph.markRefused(null);
        previewGraph.showPath(made.paths);
        result.replaceChildren(h('p', { class: 'notice', id: 'nf-booked', dataset: { reservation: made.id } },
          `Booked ${made.id}: ${route(made)} at ${rateText(made)}, ${made.state}.`));
        choose(made.id, true);
      } catch (err) {
        if (!(err instanceof ApiError)) throw err;
        invalid(err);
        await refused(err);
      }
    };

    const refused = async (err) => {
      const e = err.details;
      if (err.code === 'insufficient_capacity') {
        await drawGraph();
        previewGraph.showPath([]);
        previewGraph.markRefused(e.link);
        const link = topology.links.find((l) => l.id === e.link);
        const arrow = link ? (e.direction === 'ab' ? `${link.a} → ${link.b}` : `${link.b} → ${link.a}`) : e.direction;
        result.replaceChildren(h('div', { class: 'notice bad', id: 'nf-refused', dataset: { link: e.link, when: e.when } },
          h('p', null, `Refused: link ${e.link} (${arrow}) has ${rate(e.available)} left of the ${rate(e.needed)} needed at `,
            time(e.when), '.'),
          h('p', null, h('a', { href: `#/topology?link=${encodeURIComponent(e.link)}&at=${encodeURIComponent(e.when)}&refused=1` },
            'Open it on the topology at that instant'))));
        try {
          const usage = await get(`/v1/links/${encodeURIComponent(e.link)}/usage?from=${encodeURIComponent(new Date(Math.min(Date.now(), Date.parse(e.when)) - 3600e3).toISOString())}`);
          if (refusalChart) refusalChart.destroy();
          refusalChart = new LinkChart(chartBox);
          refusalChart.show(usage, { marker: e.when });
        } catch { /* the notice says it all */ }
      } else {
        if (refusalChart) { refusalChart.destroy(); refusalChart = null; chartBox.replaceChildren(); }
        if (previewGraph) previewGraph.markRefused(null);
        const more = err.code === 'limit_exceeded' ? ` (project's limit ${rate(e.limit)}, held ${rate(e.held)} at ${new Date(e.when).toLocaleString()})` : '';
        result.replaceChildren(h('p', { class: 'notice bad', id: 'nf-refused', dataset: { code: err.code } },
          `${err.message}${more} (${err.code})`));
      }
    };

    async function drawGraph() {
      if (!topology) topology = await get('/v1/topology');
      if (!previewGraph) {
        previewGraph = new TopologyGraph(graphBox, topology);
        await colourPreview();
      }
    }

    showFor();
    formPanel.append(
      h('h2', { id: 'res-form-title' }, 'New reservation'),
      h('form', { id: 'res-form', class: 'toolbar wrap', onsubmit: book },
        h('label', { for: 'nf-kind' }, 'Kind', kind), src.wrap, dst.wrap, via.wrap, port.wrap, rateField.wrap,
        rateInField.wrap, start.wrap, end.wrap, admin ? project.wrap : null,
        h('label', { for: 'nf-mode' }, 'Path', mode), labels.wrap,
        h('button', { type: 'button', id: 'nf-preview-button', onclick: preview }, 'Preview path'),
        h('button', { type: 'submit', class: 'primary', id: 'nf-book' }, 'Book')),
      result, h('div', { class: 'split' }, graphBox, chartBox));
  }

  // ---- start -----------------------------------------------------------------------------------------------
  get('/v1/topology').then((t) => {
    topology = t;
    nodeList.replaceChildren(...t.nodes.map((n) => h('option', { value: n.id })));
    linkList.replaceChildren(...t.links.map((l) => h('option', { value: l.id })));
  }).catch(() => {});
  const themeChanged = () => { if (previewGraph) previewGraph.restyle(); };
  window.addEventListener('tenure-theme', themeChanged);
  keepParams();
  load();

  return {
    unmount: () => {
      closed = true;
      if (watch) watch.close();
      redrawTable.cancel();
      colourPreviewSoon.cancel();
      window.removeEventListener('tenure-theme', themeChanged);
      if (timeline) timeline.destroy();
      if (previewGraph) previewGraph.destroy();
      if (refusalChart) refusalChart.destroy();
    },
  };
}

function route(r) {
  return [r.src, ...(r.via || []), r.dst].join(' → ');
}

function rateText(r) {
  return r.kind === 'bandwidth' && r.rate_in !== r.rate_out ? `${rate(r.rate_out)}/${rate(r.rate_in)}` : rate(r.rate_out);
}

// datetime-local inputs are in the browser's zone, to the second.
function localInput(iso) {
  const d = new Date(iso);
  const pad = (n) => String(n).padStart(2, '0');
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())}T${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
}

function isoOf(local) {
  return new Date(local).toISOString();
}
