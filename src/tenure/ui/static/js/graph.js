// The topology as a graph (Cytoscape.js): nodes in layers (hosts and middleboxes at the bottom, then each switch at
// its distance from them, so a fat tree or a leaf-spine draws as one), each link coloured by its reserved share at
// the chosen instant. Used by the Topology view and by the Reservations view's path preview.

import cytoscape from '../vendor/cytoscape.js';
import { themeColour } from './dom.js';
import { percent, rate } from './format.js';

const SHAPES = { host: 'ellipse', switch: 'round-rectangle', middlebox: 'diamond', gateway: 'hexagon' };

// A share of usable capacity as a colour: grey when nothing is reserved, then green through amber to red.
export function shareColour(share) {
  if (!share || share <= 0) return '#8c959f';
  const s = Math.min(share, 1);
  const hue = 120 * (1 - s);
  return `hsl(${hue.toFixed(0)}, 75%, ${(42 - 6 * s).toFixed(0)}%)`;
}

const STEP_COLOURS = Array.from({ length: 21 }, (_, i) => shareColour(i === 0 ? 0 : i / 20));

function stepOf(share) {
  return !share || share <= 0 ? 0 : Math.max(1, Math.min(20, Math.round(share * 20)));
}


// Layers: endpoints (hosts, middleboxes) at 0, every other node at its hop distance from the nearest endpoint.
// Order within a layer by the mean position of its neighbours in the layer above, top down, then bottom up.
export function layeredPositions(topology) {
  const adjacent = new Map(topology.nodes.map((n) => [n.id, []]));
  for (const link of topology.links) {
    if (adjacent.has(link.a) && adjacent.has(link.b)) {
      adjacent.get(link.a).push(link.b);
      adjacent.get(link.b).push(link.a);
    }
  }
  const layer = new Map();
  let frontier = topology.nodes.filter((n) => n.kind === 'host' || n.kind === 'middlebox').map((n) => n.id);
  if (!frontier.length && topology.nodes.length) {
    const least = Math.min(...topology.nodes.map((n) => adjacent.get(n.id).length));
    frontier = topology.nodes.filter((n) => adjacent.get(n.id).length === least).map((n) => n.id);
  }
  for (const id of frontier) layer.set(id, 0);
  let depth = 0;
  while (frontier.length) {
    depth += 1;
    const next = [];
    for (const id of frontier) {
      for (const other of adjacent.get(id)) {
        if (!layer.has(other)) {
          layer.set(other, depth);
          next.push(other);
        }
      }
    }
    frontier = next;
  }
  let top = Math.max(0, ...layer.values());
  for (const n of topology.nodes) if (!layer.has(n.id)) layer.set(n.id, top + 1); // not connected to an endpoint
  top = Math.max(0, ...layer.values());
  const layers = Array.from({ length: top + 1 }, () => []);
  const collator = new Intl.Collator('en', { numeric: true });
  for (const n of topology.nodes) layers[layer.get(n.id)].push(n.id);
  for (const ids of layers) ids.sort(collator.compare);
  const order = new Map();
  const place = (ids) => ids.forEach((id, i) => order.set(id, ids.length > 1 ? i / (ids.length - 1) : 0.5));
  place(layers[top]);
  const sweep = (from, to, step) => {
    for (let l = from; l !== to; l += step) {
      const near = l - step;
      const score = new Map(layers[l].map((id) => {
        const ns = adjacent.get(id).filter((o) => layer.get(o) === near);
        return [id, ns.length ? ns.reduce((s, o) => s + order.get(o), 0) / ns.length : order.get(id) ?? 0.5];
      }));
      layers[l].sort((x, y) => score.get(x) - score.get(y) || collator.compare(x, y));
      place(layers[l]);
    }
  };
  sweep(top - 1, -1, -1);
  sweep(1, top + 1, 1);
  const widest = Math.max(...layers.map((ids) => ids.length), 1);
  const width = Math.max(600, widest * 40);
  const positions = new Map();
  layers.forEach((ids, l) => {
    ids.forEach((id, i) => {
      positions.set(id, { x: ((i + 0.5) / ids.length) * width, y: (top - l) * Math.max(120, width / 8 / (top + 1)) });
    });
  });
  return positions;
}

export class TopologyGraph {
  // onSelect(linkId | null) when a link is chosen on the graph.
  constructor(container, topology, { onSelect } = {}) {
    this.container = container;
    this.onSelect = onSelect;
    this.usable = new Map(); // link -> {ab, ba}
    this.shares = new Map(); // link -> share (the larger of the two directions)
    this.cy = cytoscape({
      container,
      style: this.style(),
      minZoom: 0.02,
      maxZoom: 4,
      textureOnViewport: true,
      hideEdgesOnViewport: false,
      motionBlur: false,
      boxSelectionEnabled: false,
      autoungrabify: true,
    });
    this.cy.on('tap', 'edge', (event) => this.select(event.target.id(), true));
    this.cy.on('tap', (event) => { if (event.target === this.cy) this.select(null, true); });
    this.setTopology(topology);
  }

  style() {
    const fg = themeColour('--fg', '#1b1f24');
    const bg = themeColour('--bg', '#ffffff');
    const accent = themeColour('--accent', '#0a58ca');
    return [
      { selector: 'node', style: {
        'background-color': themeColour('--muted', '#57606a'), width: 14, height: 14, shape: 'data(shape)',
        label: 'data(id)', 'font-size': 9, color: fg, 'text-valign': 'bottom', 'text-margin-y': 3,
        'min-zoomed-font-size': 7, 'text-background-color': bg, 'text-background-opacity': 0.7,
        'text-background-padding': 1,
      } },
      { selector: 'node[kind = "switch"]', style: { width: 20, height: 14 } },
      { selector: 'node[kind = "middlebox"]', style: { 'background-color': '#8250df' } },
      { selector: 'edge', style: {
        'curve-style': 'haystack', 'haystack-radius': 0, width: 'data(width)', 'line-color': 'data(colour)',
        opacity: 0.9,
      } },
      { selector: 'edge.path', style: { 'line-color': accent, width: 6, 'z-index': 10, opacity: 1 } },
      { selector: 'node.path', style: { 'background-color': accent } },
      { selector: 'edge.refused', style: {
        'line-color': themeColour('--bad', '#cf222e'), 'line-style': 'dashed', width: 8, 'z-index': 20, opacity: 1,
      } },
      { selector: 'edge:selected', style: { 'underlay-color': accent, 'underlay-opacity': 0.35,
        'underlay-padding': 5, 'z-index': 30 } },
    ];
  }

  restyle() {
    this.cy.style(this.style());
  }

  setTopology(topology) {
    this.topology = topology;
    const positions = layeredPositions(topology);
    const maxCap = Math.max(1, ...topology.links.map((l) => linkCapacity(l)));
    this.usable.clear();
    for (const link of topology.links) this.usable.set(link.id, usableOf(topology, link));
    const elements = [
      ...topology.nodes.map((n) => ({ group: 'nodes', data: { id: n.id, kind: n.kind, shape: SHAPES[n.kind] || 'ellipse' },
        position: positions.get(n.id) })),
      ...topology.links.map((l) => ({ group: 'edges', data: { id: l.id, source: l.a, target: l.b,
        colour: STEP_COLOURS[stepOf(this.shares.get(l.id))],
        width: 1.5 + 3.5 * (Math.log10(linkCapacity(l)) / Math.log10(maxCap)) } })),
    ];
    this.cy.batch(() => {
      this.cy.elements().remove();
      this.cy.add(elements);
    });
    this.cy.fit(undefined, 20);
    this.container.setAttribute('aria-label', `Topology graph: ${topology.nodes.length} nodes, `
      + `${topology.links.length} links, each coloured by its reserved share; the links are also listed in a table.`);
  }

  // rows: GET /v1/links/usage's links. Answers the shares, link -> share of usable capacity (the busier direction).
  setUsage(rows) {
    this.shares.clear();
    for (const row of rows) {
      const usable = this.usable.get(row.link);
      if (!usable) continue;
      const share = Math.max(usable.ab ? row.ab / usable.ab : 0, usable.ba ? row.ba / usable.ba : 0);
      this.shares.set(row.link, share);
    }
    // Colours in 21 steps (none, then every 5 %): only links whose step changed are touched, so a slider move
    // restyles the few links that changed rather than all of them.
    this.cy.batch(() => {
      this.cy.edges().forEach((edge) => {
        const step = stepOf(this.shares.get(edge.id()));
        if (edge.scratch('_step') !== step) {
          edge.scratch('_step', step);
          edge.data('colour', STEP_COLOURS[step]);
        }
      });
    });
    return this.shares;
  }

  select(linkId, fromGraph = false) {
    this.cy.batch(() => {
      this.cy.edges(':selected').unselect();
      if (linkId) {
        const edge = this.cy.getElementById(linkId);
        if (edge.nonempty()) edge.select();
      }
    });
    if (fromGraph && this.onSelect) this.onSelect(linkId);
  }

  center(linkId) {
    const edge = this.cy.getElementById(linkId);
    if (edge.nonempty()) this.cy.animate({ center: { eles: edge }, duration: 200 });
  }

  // The nodes and links of a path (a preview or a reservation's), drawn over the colours.
  showPath(paths) {
    this.container.dataset.path = (paths || []).flatMap((p) => p.links || []).join(' ');
    this.cy.batch(() => {
      this.cy.elements('.path').removeClass('path');
      for (const path of paths || []) {
        for (const id of path.links || []) this.cy.getElementById(id).addClass('path');
        for (const id of path.nodes || []) this.cy.getElementById(id).addClass('path');
      }
    });
  }

  markRefused(linkId) {
    this.container.dataset.refused = linkId || '';
    this.cy.batch(() => {
      this.cy.edges('.refused').removeClass('refused');
      if (linkId) this.cy.getElementById(linkId).addClass('refused');
    });
  }

  destroy() {
    this.cy.destroy();
  }
}

export function linkCapacity(link) {
  return Math.max(link.capacity ?? 0, link.capacity_ab ?? 0, link.capacity_ba ?? 0);
}

// Usable capacity per direction: capacity minus headroom (the link's own, else the topology's).
export function usableOf(topology, link) {
  const headroom = parseShare(link.headroom ?? topology.headroom ?? 0);
  const ab = link.capacity_ab ?? link.capacity ?? 0;
  const ba = link.capacity_ba ?? link.capacity ?? 0;
  return { ab: Math.floor(ab * (1 - headroom)), ba: Math.floor(ba * (1 - headroom)), capacity_ab: ab, capacity_ba: ba };
}

function parseShare(value) {
  if (typeof value === 'number') return value;
  const text = String(value).trim();
  return text.endsWith('%') ? Number(text.slice(0, -1)) / 100 : Number(text) || 0;
}

export function describeShare(row, usable) {
  return `${rate(row.ab)} of ${rate(usable.ab)} (${percent(usable.ab ? row.ab / usable.ab : 0)}) one way, `
    + `${rate(row.ba)} of ${rate(usable.ba)} (${percent(usable.ba ? row.ba / usable.ba : 0)}) the other`;
}
