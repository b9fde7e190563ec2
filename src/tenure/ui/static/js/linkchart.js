// A link's usage over time as a step chart (uPlot), both directions, with each direction's usable capacity, an
// optional marked instant (a refusal's), and the same numbers as a table (the chart's text alternative).

import uPlot from '../vendor/uplot.js';
import { h, table, themeColour } from './dom.js';
import { rate, time } from './format.js';

// GET /v1/links/{id}/usage -> the instants where either direction changes, and each direction's usage there.
export function stepsOf(usage) {
  const dirs = ['ab', 'ba'].map((d) => usage.directions[d]);
  const instants = new Set();
  const spelling = new Map(); // ms -> the server's ISO text (which has microseconds)
  for (const dir of dirs) {
    for (const step of dir.steps) {
      for (const iso of [step.from, step.to]) {
        if (!iso) continue;
        const ms = Date.parse(iso);
        instants.add(ms);
        if (!spelling.has(ms)) spelling.set(ms, iso);
      }
    }
  }
  const xs = [...instants].sort((a, b) => a - b);
  const at = (dir, t) => {
    const step = dir.steps.find((s) => Date.parse(s.from) <= t && (!s.to || t < Date.parse(s.to)));
    return step ? step.used : 0;
  };
  return { xs, isos: xs.map((t) => spelling.get(t)), ab: xs.map((t) => at(dirs[0], t)), ba: xs.map((t) => at(dirs[1], t)) };
}

export class LinkChart {
  // onCursor(instantMs | null) as the pointer moves over the chart.
  constructor(container, { onCursor } = {}) {
    this.container = container;
    this.onCursor = onCursor;
    this.plot = null;
    this.marker = null;
  }

  show(usage, { from, to, marker = null } = {}) {
    this.usage = usage;
    this.marker = marker === null ? null : Date.parse(marker);
    const { xs, ab, ba } = stepsOf(usage);
    const lo = from ?? (xs.length ? xs[0] : Date.now());
    const last = xs.length ? xs[xs.length - 1] : lo;
    const hi = Math.max(to ?? lo + 86400e3, last + Math.max(3600e3, (last - lo) * 0.1),
      this.marker === null ? 0 : this.marker + 3600e3);
    // uPlot wants seconds; a step's value holds until the next instant, so the last one is carried to the end.
    const x = [lo / 1000, ...xs.filter((t) => t > lo && t < hi).map((t) => t / 1000), hi / 1000];
    const value = (series, t) => {
      let v = 0;
      for (let i = 0; i < xs.length && xs[i] <= t * 1000; i++) v = series[i];
      return v;
    };
    const dirs = usage.directions;
    const data = [x, x.map((t) => value(ab, t)), x.map((t) => value(ba, t)),
      x.map(() => dirs.ab.usable), x.map(() => dirs.ba.usable)];
    const stepped = uPlot.paths.stepped({ align: 1 });
    const fg = themeColour('--fg', '#1b1f24');
    const line = themeColour('--line', '#d0d7de');
    const bad = themeColour('--bad', '#cf222e');
    const width = Math.max(280, Math.min(this.container.clientWidth || 640, 900));
    const options = {
      width,
      height: 220,
      scales: { x: { time: true }, y: { range: (u, min, max) => [0, Math.max(max, dirs.ab.usable, dirs.ba.usable) * 1.05] } },
      axes: [
        { stroke: fg, grid: { stroke: line } },
        { stroke: fg, grid: { stroke: line }, size: 60, values: (u, ticks) => ticks.map((t) => rate(t)) },
      ],
      series: [
        { value: (u, t) => (t === null ? '' : new Date(t * 1000).toLocaleString()) },
        { label: `${dirs.ab.from} → ${dirs.ab.to}`, stroke: '#0a58ca', width: 2, paths: stepped, points: { show: false }, value: (u, v) => rate(v) },
        { label: `${dirs.ba.from} → ${dirs.ba.to}`, stroke: '#bf3989', width: 2, paths: stepped, points: { show: false }, value: (u, v) => rate(v) },
        { label: 'usable →', stroke: '#0a58ca', dash: [4, 4], width: 1, points: { show: false }, value: (u, v) => rate(v) },
        { label: 'usable ←', stroke: '#bf3989', dash: [2, 6], width: 1, points: { show: false }, value: (u, v) => rate(v) },
      ],
      cursor: { drag: { x: false, y: false }, points: { show: false } },
      hooks: {
        setCursor: [(u) => {
          if (!this.onCursor) return;
          const idx = u.cursor.idx;
          this.onCursor(idx === null || idx === undefined ? null : u.posToVal(u.cursor.left, 'x') * 1000);
        }],
        draw: [(u) => {
          if (this.marker === null) return;
          const px = u.valToPos(this.marker / 1000, 'x', true);
          const { ctx } = u;
          ctx.save();
          ctx.strokeStyle = bad;
          ctx.lineWidth = 3 * devicePixelRatio;
          ctx.setLineDash([6 * devicePixelRatio, 4 * devicePixelRatio]);
          ctx.beginPath();
          ctx.moveTo(px, u.bbox.top);
          ctx.lineTo(px, u.bbox.top + u.bbox.height);
          ctx.stroke();
          ctx.restore();
        }],
      },
    };
    if (this.plot) this.plot.destroy();
    this.container.replaceChildren();
    this.container.dataset.marker = marker || '';
    this.plot = new uPlot(options, data, this.container);
    this.container.append(this.stepsTable(usage));
  }

  stepsTable(usage) {
    const { xs, isos, ab, ba } = stepsOf(usage);
    const rows = xs.map((t, i) => [time(isos[i]), xs[i + 1] ? time(isos[i + 1]) : '…',
      h('span', { dataset: { used: String(ab[i]) } }, rate(ab[i])), h('span', { dataset: { used: String(ba[i]) } }, rate(ba[i]))]);
    const dirs = usage.directions;
    return h('details', { class: 'steps' }, h('summary', null, 'The steps as a table'),
      table([{ label: 'from' }, { label: 'to' }, { label: `${dirs.ab.from} → ${dirs.ab.to}`, num: true },
        { label: `${dirs.ba.from} → ${dirs.ba.to}`, num: true }], rows, { empty: 'Nothing reserved on this link.' }));
  }

  destroy() {
    if (this.plot) this.plot.destroy();
    this.plot = null;
  }
}
