// Topology: the graph of nodes and links, each link coloured by its reserved share now or at the instant of the time
// slider (GET /v1/links/usage?at=); the busiest links as a table (the graph's keyboard way in); a selected link's
// usage over time as a step chart (GET /v1/links/{id}/usage) with the reservations that make each step. A refusal
// (#/topology?link=L&at=WHEN&refused=1, from the Reservations view) is drawn on the link and at its instant.
// Live: reservation and topology events recolour at once (for members, whose stream shows only their own project's
// reservations, the colours are also read again every 15 s: every project's bookings count on a link).

import { get } from '../api.js';
import { debounce, h, table } from '../dom.js';
import { percent, rate, time } from '../format.js';
import { describeShare, TopologyGraph } from '../graph.js';
import { LinkChart } from '../linkchart.js';
import { Watch } from '../watch.js';

const STEP_MINUTES = 15;
const HORIZONS = { '1 day': 1, '7 days': 7, '30 days': 30, '366 days': 366 };

export function mount(root, ctx) {
  const params = ctx.params;
  let topology = null;
  let graph = null;
  let usage = new Map(); // link -> {ab, ba} at the slider's instant
  let selected = params.get('link');
  let refused = params.get('refused') ? { link: selected, when: params.get('at') } : null;
  let base = Date.now(); // the slider's 0 (now, rounded down to the minute)
  base -= base % 60000;
  let horizonDays = Number(params.get('days')) || 7;
  let at = params.get('at') ? Date.parse(params.get('at')) : null; // null: now
  if (!Number.isFinite(at)) at = null; // a link with a bad instant shows now
  let chart = null;
  let closed = false;
  let selectedAsk = 0;
  let topologyRevision = null;

  const slider = h('input', { type: 'range', id: 'topo-at', min: 0, max: (horizonDays * 24 * 60) / STEP_MINUTES,
    step: 1, value: 0, 'aria-describedby': 'topo-at-text', oninput: () => {
      at = base + Number(slider.value) * STEP_MINUTES * 60000;
      if (Number(slider.value) === 0) at = null;
      say();
      recolour();
    } });
  const atText = h('output', { id: 'topo-at-text', for: 'topo-at' });
  const horizon = h('select', { id: 'topo-days', onchange: () => {
    horizonDays = Number(horizon.value);
    slider.max = String((horizonDays * 24 * 60) / STEP_MINUTES);
    keepParams();
  } }, Object.entries(HORIZONS).map(([label, days]) => h('option', { value: days, selected: days === horizonDays }, label)));
  const nowButton = h('button', { type: 'button', onclick: () => { at = null; slider.value = 0; say(); recolour(); } }, 'Now');
  const canvas = h('div', { class: 'graph', id: 'topo-graph', role: 'img', 'aria-label': 'Topology graph' });
  const legend = h('div', { class: 'legend', 'aria-hidden': 'true' },
    h('span', null, '0 %'), h('span', { class: 'ramp' }), h('span', null, '100 % of usable'));
  const busiest = h('div', { id: 'topo-links' });
  const panel = h('section', { id: 'link-panel', class: 'card', hidden: true });
  const problem = h('p', { role: 'alert' });
  root.append(
    h('h1', { id: 'view-title' }, 'Topology'),
    h('div', { class: 'toolbar' },
      h('label', { for: 'topo-at', class: 'grow' }, 'Reserved share at', slider),
      atText, nowButton,
      h('label', { for: 'topo-days' }, 'Slider spans', horizon)),
    problem,
    h('div', { class: 'split' }, h('div', { class: 'graph-wrap' }, canvas, legend), panel),
    h('h2', null, 'Busiest links'),
    busiest,
  );

  if (at !== null) {
    const offset = Math.round((at - base) / (STEP_MINUTES * 60000));
    slider.value = String(Math.max(0, Math.min(Number(slider.max), offset)));
  }

  function say() {
    atText.replaceChildren(at === null ? 'now' : time(new Date(at).toISOString()));
    keepParams();
  }

  function keepParams() {
    const p = new URLSearchParams();
    if (selected) p.set('link', selected);
    if (at !== null) p.set('at', new Date(at).toISOString());
    if (refused) p.set('refused', '1');
    if (horizonDays !== 7) p.set('days', String(horizonDays));
    ctx.setParams(p);
  }

  // The colours at the slider's instant; one request at a time, the newest wins.
  let pending = false;
  let again = false;
  async function recolour() {
    if (!graph) return;
    if (pending) { again = true; return; }
    pending = true;
    const started = performance.now();
    try {
      const query = at === null ? '' : `?at=${encodeURIComponent(new Date(at).toISOString())}`;
      const body = await get(`/v1/links/usage${query}`);
      if (closed) return;
      const fetched = performance.now();
      usage = new Map(body.links.map((row) => [row.link, row]));
      const shares = graph.setUsage(body.links);
      const coloured = performance.now();
      drawBusiest(shares);
      sayLinkNow();
      canvas.dataset.at = body.at;
      canvas.dataset.revision = String(body.revision);
      canvas.dataset.timing = `fetch ${Math.round(fetched - started)} colour ${Math.round(coloured - fetched)} `
        + `table ${Math.round(performance.now() - coloured)}`;
    } catch (err) {
      problem.className = 'notice bad';
      problem.textContent = err.message;
    } finally {
      pending = false;
      if (again && !closed) { again = false; recolour(); }
    }
  }
  const recolourSoon = debounce(recolour, 150);

  function drawBusiest(shares) {
    const rows = [...shares.entries()].sort((a, b) => b[1] - a[1]).slice(0, 15);
    busiest.replaceChildren(table(
      [{ label: 'link' }, { label: 'ends' }, { label: 'reserved', num: true }, { label: 'share of usable', num: true }],
      rows.map(([id, share]) => {
        const link = topology.links.find((l) => l.id === id);
        const row = usage.get(id) || { ab: 0, ba: 0 };
        return [h('button', { type: 'button', class: 'linkish', dataset: { link: id },
          onclick: () => { choose(id); graph.center(id); } }, id),
        `${link.a} ↔ ${link.b}`, `${rate(row.ab)} / ${rate(row.ba)}`,
        h('span', { dataset: { share: String(share) } }, percent(share))];
      }),
      { empty: 'No links.' },
    ));
  }

  function sayLinkNow() {
    const line = panel.querySelector('#link-now');
    if (!line || !selected || !panel.dataset.usable || panel.dataset.link !== selected) return;
    const row = usage.get(selected) || { ab: 0, ba: 0 };
    line.textContent = `${at === null ? 'Now' : 'At the slider\'s instant'}: ${describeShare(row, JSON.parse(panel.dataset.usable))}`;
  }

  function choose(id) {
    selected = id;
    if (refused && refused.link !== id) refused = null;
    graph.select(id);
    graph.markRefused(refused ? refused.link : null);
    keepParams();
    drawSelected(true);
  }

  async function drawSelected(fresh) {
    if (!selected) {
      panel.hidden = true;
      return;
    }
    const link = topology.links.find((l) => l.id === selected);
    if (!link) {
      panel.hidden = false;
      panel.replaceChildren(h('p', { class: 'error' }, `There is no link ${selected}.`));
      return;
    }
    const from = Math.min(Date.now() - 3600e3, at ?? Infinity);
    const to = Math.max(Date.now(), at ?? 0) + 6 * 3600e3; // the chart reaches further when the steps do
    let body;
    let reservations;
    const asked = ++selectedAsk; // answers that come back out of order are dropped
    try {
      [body, reservations] = await Promise.all([
        get(`/v1/links/${encodeURIComponent(selected)}/usage?from=${encodeURIComponent(new Date(from).toISOString())}`),
        get(`/v1/reservations?link=${encodeURIComponent(selected)}&limit=1000`),
      ]);
    } catch (err) {
      if (closed || asked !== selectedAsk) return;
      panel.hidden = false;
      panel.replaceChildren(h('p', { class: 'error' }, err.message));
      return;
    }
    if (closed || selected !== link.id || asked !== selectedAsk) return;
    const live = reservations.reservations.filter((r) => r.state === 'pending' || r.state === 'active');
    const row = usage.get(link.id) || { ab: 0, ba: 0 };
    const usable = { ab: body.directions.ab.usable, ba: body.directions.ba.usable };
    const chartBox = h('div', { class: 'chart', id: 'link-chart' });
    const cursorText = h('p', { id: 'link-cursor', class: 'muted' }, 'Point at the chart: the reservations of that instant are marked below.');
    const rows = live.map((r) => {
      const legs = r.paths.filter((p) => p.links.includes(link.id));
      return { r, legs, el: null };
    });
    const listing = table(
      [{ label: 'reservation' }, { label: 'project' }, { label: 'kind' }, { label: 'on this link', num: true },
        { label: 'from' }, { label: 'to' }, { label: 'state' }],
      rows.map(({ r, legs }) => [
        h('a', { href: `#/reservations?id=${encodeURIComponent(r.id)}` }, r.id), r.project || '–', r.kind,
        legs.map((leg) => `${rate(leg.rate)} ${leg.directions[leg.links.indexOf(link.id)] === 'ab' ? '→' : '←'}`).join(' '),
        time(r.start), time(r.end), h('span', { class: `state state-${r.state}` }, r.state)]),
      { empty: ctx.who.role === 'admin' ? 'No reservation crosses this link.' : 'None of your project\'s reservations crosses this link.' },
    );
    listing.querySelectorAll('tbody tr').forEach((tr, i) => {
      if (rows[i]) {
        rows[i].el = tr;
        tr.dataset.reservation = rows[i].r.id;
      }
    });
    panel.hidden = false;
    panel.dataset.usable = JSON.stringify(usable);
    panel.dataset.link = link.id;
    panel.replaceChildren(...[
      h('h2', null, `Link ${link.id}`),
      h('p', null, `${link.a} ↔ ${link.b} · usable ${rate(usable.ab)} → / ${rate(usable.ba)} ←`),
      h('p', { id: 'link-now', 'aria-live': 'polite' }, `${at === null ? 'Now' : 'At the slider\'s instant'}: ${describeShare(row, usable)}`),
      refused && refused.link === link.id
        ? h('p', { class: 'notice bad', id: 'link-refusal' }, 'A reservation was refused here: this link had too little capacity left at ',
          time(refused.when), ' (marked on the chart).')
        : null,
      chartBox, cursorText, h('h3', null, 'Reservations on this link'), listing].filter(Boolean));
    if (chart) chart.destroy();
    chart = new LinkChart(chartBox, {
      onCursor: (t) => {
        if (t === null) return;
        let count = 0;
        for (const { r, el } of rows) {
          const on = Date.parse(r.start) <= t && t < Date.parse(r.end);
          if (el) el.classList.toggle('at-cursor', on);
          if (on) count += 1;
        }
        cursorText.textContent = `${new Date(t).toLocaleString()}: ${count} reservation${count === 1 ? '' : 's'} on this link.`;
      },
    });
    chart.show(body, { from, to, marker: refused && refused.link === link.id ? refused.when : null });
    if (fresh) panel.scrollIntoView({ block: 'nearest' });
  }

  async function load() {
    try {
      topology = await get('/v1/topology');
    } catch (err) {
      problem.className = 'notice bad';
      problem.textContent = err.message;
      return;
    }
    if (closed) return;
    if (topologyRevision !== null && topology.revision < topologyRevision) return; // an older read answered late
    if (graph && topology.revision === topologyRevision) { // the same topology: only the colours may have moved
      await recolour();
      if (selected) drawSelected(false);
      return;
    }
    topologyRevision = topology.revision;
    if (!topology.nodes.length) {
      canvas.replaceChildren(h('p', { class: 'muted' }, 'No topology yet: an admin loads one with tenure topology load FILE.'));
      ctx.ready();
      return;
    }
    if (graph) graph.setTopology(topology);
    else graph = new TopologyGraph(canvas, topology, { onSelect: (id) => { if (id) choose(id); } });
    if (selected) {
      graph.select(selected);
      graph.markRefused(refused ? refused.link : null);
    }
    await recolour();
    if (selected) drawSelected(false);
    canvas.dataset.ready = '1';
    ctx.ready();
  }

  // The watch first, and every read on its (re)connection: a change between a read and the stream is never missed.
  const refreshSelected = debounce(() => { if (selected && graph) drawSelected(false); }, 300);
  const watch = new Watch({ kind: ['reservation', 'topology'] }, {
    onConnected: () => load(),
    onEvent: (event) => {
      if (event.kind === 'topology') {
        load();
        return;
      }
      recolourSoon();
      // The selected link's panel is read again only for a reservation that crosses it (or did: it is listed).
      const r = event.object || {};
      const crosses = (r.paths || []).some((p) => (p.links || []).includes(selected))
        || panel.querySelector(`tr[data-reservation="${CSS.escape(event.id)}"]`);
      if (selected && crosses) refreshSelected();
    },
    onReset: () => load(),
    onError: (error) => { problem.className = 'notice bad'; problem.textContent = `${error.message} (${error.code})`; },
  }).start();
  const timer = ctx.who.role === 'admin' ? null : setInterval(recolour, 15000);
  const themeChanged = () => { if (graph) graph.restyle(); if (selected) drawSelected(false); };
  window.addEventListener('tenure-theme', themeChanged);

  say();
  load(); // at once, and again when the watch connects (what changed between the two is then in the second read)

  return {
    unmount: () => {
      closed = true;
      watch.close();
      recolourSoon.cancel();
      refreshSelected.cancel();
      if (timer) clearInterval(timer);
      window.removeEventListener('tenure-theme', themeChanged);
      if (chart) chart.destroy();
      if (graph) graph.destroy();
    },
    onParams: (next) => {
      const link = next.get('link');
      if (link && link !== selected && graph) {
        refused = next.get('refused') ? { link, when: next.get('at') } : null;
        choose(link);
      }
    },
  };
}
