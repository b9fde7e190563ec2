// Overview: pools with utilisation, reservations by state, agents up and down, instances by state, the server's
// revision and (with replicas) the replicas and the leader. Live: one watch lists reservations, agents and instances
// and follows them; pools are read again (at most every half second) when a pool or a claim changes.

import { get } from '../api.js';
import { debounce, h, table } from '../dom.js';
import { count, percent, time } from '../format.js';
import { Watch } from '../watch.js';

const RESERVATION_STATES = ['pending', 'active', 'degraded', 'expired', 'cancelled'];
const INSTANCE_STATES = ['pending', 'provisioning', 'active', 'deleting', 'failed'];

export function mount(root, ctx) {
  const objects = { reservation: new Map(), agent: new Map(), instance: new Map() };
  let pools = null;
  let poolsError = null;
  let replicas = null;
  let listed = false;

  const title = h('h1', { id: 'view-title' }, 'Overview');
  const body = h('div', { class: 'grid' });
  root.append(title, body);

  const render = () => {
    if (!listed) {
      body.replaceChildren(h('p', { class: 'loading' }, 'Loading…'));
      return;
    }
    body.replaceChildren(
      poolsCard(pools, poolsError),
      byState('Reservations', 'reservations', objects.reservation, RESERVATION_STATES, '#/reservations?state='),
      agentsCard(objects.agent, ctx.who),
      byState('Instances', 'instances', objects.instance, INSTANCE_STATES, '#/instances?state='),
      serverCard(replicas),
    );
  };
  const redraw = debounce(render, 100);

  const loadPools = async () => {
    try {
      pools = (await get('/v1/pools')).pools;
      poolsError = null;
    } catch (err) {
      poolsError = err.message;
    }
    redraw();
  };
  const reloadPools = debounce(loadPools, 500);

  const watch = new Watch({ kind: ['reservation', 'agent', 'instance'] }, {
    initial: true,
    onReset: () => { for (const map of Object.values(objects)) map.clear(); },
    onEvent: (event) => {
      const map = objects[event.kind];
      if (!map) return;
      if (event.type === 'deleted') map.delete(event.id);
      else map.set(event.id, event.object);
      if (listed) redraw();
    },
    onListed: () => { listed = true; render(); ctx.ready(); },
    onBookmark: () => { if (listed) redraw(); },
    onError: (error) => { body.replaceChildren(h('p', { class: 'notice bad', role: 'alert' }, error.message)); },
  }).start();
  // Pools are read on every (re)connection of their watch and again when a pool or a claim changes.
  loadPools();
  const poolWatch = new Watch({ kind: ['pool', 'claim'] }, {
    onConnected: loadPools, onEvent: reloadPools, onReset: reloadPools,
    onError: (error) => { poolsError = error.message; redraw(); },
  }).start();

  // Replicas' roles are not events: an admin's overview reads them again every 5 s (members may not read them).
  const loadReplicas = () => get('/v1/replicas').then((r) => { replicas = r; redraw(); }).catch(() => {});
  const replicaTimer = ctx.who.role === 'admin' ? setInterval(loadReplicas, 5000) : null;
  if (replicaTimer !== null) loadReplicas();
  render();

  return {
    unmount: () => {
      watch.close();
      poolWatch.close();
      if (replicaTimer !== null) clearInterval(replicaTimer);
      redraw.cancel();
      reloadPools.cancel();
    },
  };
}

function poolsCard(pools, error) {
  const card = h('div', { class: 'card wide', id: 'pools-card' }, h('h2', null, 'Pools'));
  if (error) card.append(h('p', { class: 'error' }, error));
  if (pools === null) {
    card.append(h('p', { class: 'loading' }, 'Loading…'));
    return card;
  }
  card.append(table(
    [{ label: 'pool' }, { label: 'used', num: true }, { label: 'size', num: true }, { label: 'utilisation' }],
    pools.map((p) => {
      const share = p.size ? p.used / p.size : 0;
      return [
        h('a', { href: `#/pools?pool=${encodeURIComponent(p.name)}` }, p.name),
        count(p.used),
        count(p.size),
        h('span', { class: 'util', dataset: { pool: p.name, used: String(p.used), size: String(p.size) } },
          h('meter', { min: 0, max: 1, value: share, 'aria-label': `${p.name} utilisation` }), ' ', percent(share)),
      ];
    }),
    { empty: 'No pools.' },
  ));
  return card;
}

function byState(name, id, map, states, link) {
  const counts = Object.fromEntries(states.map((s) => [s, 0]));
  for (const object of map.values()) counts[object.state] = (counts[object.state] || 0) + 1;
  return h('div', { class: 'card', id: `${id}-card` },
    h('h2', null, name),
    h('p', { class: 'big', dataset: { total: String(map.size) } }, count(map.size)),
    h('ul', { class: 'states' }, Object.entries(counts).map(([state, n]) =>
      h('li', { dataset: { state, count: String(n) } },
        h('a', { href: `${link}${encodeURIComponent(state)}`, class: `state state-${state}` }, state), ' ', count(n)))));
}

function agentsCard(agents, who) {
  const card = h('div', { class: 'card', id: 'agents-card' }, h('h2', null, 'Agents'));
  if (who.role !== 'admin' && agents.size === 0) {
    card.append(h('p', { class: 'muted' }, 'Agents are shown to admins.'));
    return card;
  }
  const list = [...agents.values()].sort((a, b) => a.host.localeCompare(b.host));
  const up = list.filter((a) => a.state === 'up').length;
  card.append(
    h('p', { class: 'big', dataset: { up: String(up), down: String(list.length - up) } },
      count(up), h('span', { class: 'muted' }, ` up · ${count(list.length - up)} down`)),
    table([{ label: 'host' }, { label: 'state' }, { label: 'last heartbeat' }],
      list.slice(0, 20).map((a) => [a.host, h('span', { class: `state state-${a.state}` }, a.state), time(a.last_seen)]),
      { empty: 'No agent has registered.' }),
  );
  if (list.length > 20) card.append(h('p', null, h('a', { href: '#/instances' }, `All ${count(list.length)} agents`)));
  return card;
}

function serverCard(replicas) {
  const card = h('div', { class: 'card', id: 'server-card' }, h('h2', null, 'Server'));
  card.append(h('p', null, 'Revision ', h('span', { class: 'big', id: 'revision' },
    Watch.revision === null ? '–' : count(Watch.revision))));
  if (replicas && replicas.replicas && replicas.replicas.length) {
    const leader = replicas.leader ? replicas.leader.name : null;
    card.append(h('p', null, leader ? `Leader: ${leader} (epoch ${replicas.leader.epoch})` : 'No leader right now.'),
      table([{ label: 'replica' }, { label: 'role' }, { label: 'revision', num: true }, { label: 'last seen' }],
        replicas.replicas.map((r) => [r.name, r.role, count(r.revision), `${r.seen_seconds_ago} s ago`])));
  } else if (replicas) {
    card.append(h('p', { class: 'muted' }, 'One server (no replicas).'));
  }
  return card;
}
