// Instances and agents: the instances (desired state on hosts) with their state, generation and observed output,
// filtered by host, type, state and project; a selected instance's details and its dependency graph (what it
// depends on and what depends on it); each host's agent with its last heartbeat. Live: one watch lists the
// instances and agents and follows them.

import cytoscape from '../../vendor/cytoscape.js';
import { get } from '../api.js';
import { debounce, h, table, themeColour } from '../dom.js';
import { count, time } from '../format.js';
import { Watch } from '../watch.js';

const STATES = ['pending', 'provisioning', 'active', 'deleting', 'failed'];
const MAX_ROWS = 500;

export function mount(root, ctx) {
  const admin = ctx.who.role === 'admin';
  const filters = {
    host: ctx.params.get('host') || '', type: ctx.params.get('type') || '', state: ctx.params.get('state') || '',
    project: admin ? ctx.params.get('project') || '' : '',
  };
  let selected = ctx.params.get('id');
  const instances = new Map();
  const agents = new Map();
  let listed = false;
  let watch = null;
  let graph = null;
  let graphNames = new Set(); // the instances the dependency graph shows: it is drawn again when one's state moves
  let closed = false;
  const graphStates = () => [...graphNames].sort().map((name) => {
    const i = [...instances.values()].find((x) => x.name === name && x.project === instances.get(selected)?.project);
    return `${name}:${i ? i.state : '?'}`;
  }).join(' ');

  const field = (name, label, attrs = {}) => {
    const el = h('input', { id: `if-${name}`, name, value: filters[name], size: 12, ...attrs });
    return { el, wrap: h('label', { for: `if-${name}` }, label, el) };
  };
  const fHost = field('host', 'Host');
  const fType = field('type', 'Type');
  const fProject = field('project', 'Project');
  const fState = h('select', { id: 'if-state' }, h('option', { value: '' }, 'any'),
    STATES.map((s) => h('option', { value: s, selected: filters.state === s }, s)));
  const form = h('form', { class: 'toolbar', onsubmit: (event) => {
    event.preventDefault();
    filters.host = fHost.el.value.trim();
    filters.type = fType.el.value.trim();
    filters.state = fState.value;
    if (admin) filters.project = fProject.el.value.trim();
    keepParams();
    start();
  } }, fHost.wrap, fType.wrap, h('label', { for: 'if-state' }, 'State', fState), admin ? fProject.wrap : null,
  h('button', { type: 'submit', class: 'primary' }, 'Filter'));
  const info = h('p', { class: 'muted', id: 'inst-info', 'aria-live': 'polite' });
  const listBox = h('div', { id: 'inst-table' });
  const detail = h('section', { id: 'inst-detail', class: 'card', hidden: true, 'aria-live': 'polite' });
  const agentsBox = h('div', { id: 'agents-table' });
  root.append(h('h1', { id: 'view-title' }, 'Instances and agents'), form, info,
    h('div', { class: 'split' }, listBox, detail), h('h2', null, 'Agents'), agentsBox);

  function keepParams() {
    const p = new URLSearchParams();
    for (const [k, v] of Object.entries(filters)) if (v) p.set(k, v);
    if (selected) p.set('id', selected);
    ctx.setParams(p);
  }

  const shown = (i) => (!filters.state || i.state === filters.state) && i.state !== 'deleted';

  function start() {
    if (watch) watch.close();
    instances.clear();
    agents.clear();
    listed = false;
    const selector = [];
    if (filters.host) selector.push(`host=${filters.host}`);
    if (filters.type) selector.push(`type=${filters.type}`);
    if (filters.project) selector.push(`project=${filters.project}`);
    // The state is not in the selector: an instance that leaves the chosen state must be seen leaving it.
    watch = new Watch({ kind: ['instance', 'agent'], selector: selector.join(',') }, {
      initial: true,
      onReset: () => { instances.clear(); agents.clear(); },
      onEvent: (event) => {
        const map = event.kind === 'agent' ? agents : instances;
        if (event.type === 'deleted') map.delete(event.id);
        else map.set(event.id, event.object);
        if (listed) redraw();
      },
      onListed: () => { listed = true; redraw(); },
      onError: (error) => { info.textContent = `${error.message} (${error.code})`; },
    }).start();
    info.textContent = 'Loading…';
  }

  const redraw = debounce(() => {
    const rows = [...instances.values()].filter(shown)
      .sort((a, b) => (a.host + a.name).localeCompare(b.host + b.name));
    info.textContent = `${count(rows.length)} instance${rows.length === 1 ? '' : 's'}`
      + (rows.length > MAX_ROWS ? ` (the first ${MAX_ROWS} shown: narrow the filters)` : '') + '.';
    listBox.replaceChildren(table(
      [{ label: 'name' }, { label: 'host' }, { label: 'type' }, { label: 'project' }, { label: 'state' },
        { label: 'generation', num: true }, { label: 'updated' }],
      rows.slice(0, MAX_ROWS).map((i) => [
        h('button', { type: 'button', class: 'linkish', dataset: { instance: i.id }, onclick: () => choose(i.id) }, i.name),
        i.host, i.type, i.project || '–',
        h('span', { class: `state state-${i.state}`, title: i.reason || '' }, i.state),
        `${i.generation} (${i.observed} seen)`, time(i.updated_at)]),
      { empty: 'No instance matches.' },
    ));
    drawAgents();
    ctx.ready();
    if (selected) {
      const i = instances.get(selected);
      if (i && String(i.revision) !== detail.dataset.revision) showDetail(i, false);
      else if (i && graphStates() !== detail.dataset.states) drawGraph(detail.querySelector('#inst-graph'), i);
    }
  }, 100);

  function drawAgents() {
    const list = [...agents.values()].sort((a, b) => a.host.localeCompare(b.host));
    agentsBox.replaceChildren(table(
      [{ label: 'host' }, { label: 'state' }, { label: 'version' }, { label: 'kinds' }, { label: 'last heartbeat' },
        { label: 'registered' }],
      list.map((a) => [a.host, h('span', { class: `state state-${a.state}`, dataset: { agent: a.host } }, a.state),
        a.version, (a.kinds || []).join(', '), time(a.last_seen), time(a.registered_at)]),
      { empty: admin ? 'No agent has registered.' : 'Agents are shown to admins and to each host\'s own agent.' },
    ));
  }

  function choose(id) {
    selected = id;
    keepParams();
    const i = instances.get(id);
    if (i) showDetail(i, true);
  }

  async function showDetail(i, fresh) {
    detail.hidden = false;
    detail.dataset.instance = i.id;
    detail.dataset.revision = String(i.revision);
    const kv = (obj) => (Object.keys(obj || {}).length
      ? h('ul', null, Object.entries(obj).map(([k, v]) => h('li', null, h('span', { class: 'mono' }, k), ' = ', String(v))))
      : '–');
    const observedBox = h('div', { id: 'inst-observed' }, fresh ? 'Loading…' : detail.querySelector('#inst-observed')?.textContent || '');
    const graphBox = h('div', { class: 'graph small', id: 'inst-graph', role: 'img' });
    detail.replaceChildren(
      h('h2', null, `${i.name}`),
      h('dl', { class: 'fields' }, [
        ['id', h('span', { class: 'mono' }, i.id)], ['host', i.host], ['type', i.type], ['project', i.project || '–'],
        ['state', h('span', { class: `state state-${i.state}` }, i.state)], ['reason', i.reason || '–'],
        ['generation', `${i.generation}: sent ${i.dispatched}, seen ${i.observed}`], ['owner', i.owner || '–'],
        ['parameters', kv(i.parameters)], ['resolved', kv(i.resolved)], ['outputs', kv(i.outputs)],
        ['depends on', i.depends_on.length ? i.depends_on.join(', ') : '–'], ['labels', kv(i.labels)],
      ].flatMap(([k, v]) => [h('dt', null, k), h('dd', { dataset: { field: k } }, v)])),
      h('h3', null, 'On the wire'), observedBox,
      h('h3', null, 'Dependencies'), graphBox,
      h('p', { class: 'muted' }, 'Among the instances listed: widen the filters to see dependents on other hosts.'));
    drawGraph(graphBox, i);
    try {
      const observed = await get(`/v1/instances/${encodeURIComponent(i.id)}/observed`);
      if (closed || selected !== i.id) return;
      observedBox.replaceChildren(observed.observed && Object.keys(observed.observed).length
        ? h('div', null, h('p', { class: 'muted' }, 'As its agent last saw it, at ', time(observed.observed_at)),
          kv(observed.observed))
        : h('p', { class: 'muted' }, 'Nothing observed yet.'));
    } catch (err) {
      observedBox.replaceChildren(h('p', { class: 'muted' }, err.status === 404 ? 'Nothing observed yet.' : err.message));
    }
  }

  // The instance, what it depends on and what depends on it (by name, in its project), transitively.
  function drawGraph(box, root) {
    const byName = new Map([...instances.values()].filter((i) => i.project === root.project).map((i) => [i.name, i]));
    const dependents = new Map();
    for (const i of byName.values()) for (const d of i.depends_on) {
      if (!dependents.has(d)) dependents.set(d, []);
      dependents.get(d).push(i.name);
    }
    const seen = new Set([root.name]);
    const todo = [root.name];
    while (todo.length) {
      const name = todo.pop();
      const i = byName.get(name);
      for (const other of [...(i ? i.depends_on : []), ...(dependents.get(name) || [])]) {
        if (!seen.has(other)) { seen.add(other); todo.push(other); }
      }
    }
    box.setAttribute('aria-label', `${root.name} and the ${seen.size - 1} instances linked to it by dependencies`);
    box.dataset.nodes = [...seen].sort().join(' ');
    graphNames = seen;
    detail.dataset.states = graphStates();
    if (graph) graph.destroy();
    graph = null;
    if (seen.size === 1) {
      box.replaceChildren(h('p', { class: 'muted' }, 'It depends on nothing, and nothing depends on it.'));
      box.classList.remove('graph');
      return;
    }
    box.classList.add('graph');
    const fg = themeColour('--fg', '#1b1f24');
    const elements = [...seen].map((name) => ({ data: { id: name, state: byName.get(name)?.state || 'unknown' } }));
    for (const name of seen) {
      for (const dep of byName.get(name)?.depends_on || []) elements.push({ data: { id: `${name}>${dep}`, source: name, target: dep } });
    }
    graph = cytoscape({
      container: box, elements, autoungrabify: true, boxSelectionEnabled: false,
      layout: { name: 'breadthfirst', directed: true, spacingFactor: 1.2 },
      style: [
        { selector: 'node', style: { label: 'data(id)', color: fg, 'font-size': 11, 'background-color': '#8c959f', 'text-valign': 'bottom' } },
        { selector: 'node[state = "active"]', style: { 'background-color': '#2da44e' } },
        { selector: 'node[state = "failed"]', style: { 'background-color': '#cf222e' } },
        { selector: 'node[state = "pending"], node[state = "provisioning"]', style: { 'background-color': '#bf8700' } },
        { selector: `node[id = "${root.name.replace(/["\\]/g, '\\$&')}"]`, style: { 'border-width': 3, 'border-color': fg } },
        { selector: 'edge', style: { 'curve-style': 'bezier', 'target-arrow-shape': 'triangle', width: 2 } },
      ],
    });
  }

  start();
  return {
    unmount: () => {
      closed = true;
      if (watch) watch.close();
      redraw.cancel();
      if (graph) graph.destroy();
    },
  };
}
