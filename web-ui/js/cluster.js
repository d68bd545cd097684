// Cluster: this node and every trusted peer — state, resources, what it lends, what peers hold
// of it, its load — every environment active anywhere (where it runs and for whom), and the
// lab's Slurm partitions when this node has one. The
// node asks its peers' offers while this view is open (renewed every 20 s) and streams them
// as `cluster_changed` events; this node's own row follows its runtime events.

import { state, onChange, attempt } from './app.js';
import { api } from './api.js';
import { h, bytes } from './dom.js';
import { showPartitions } from './network.js';

let nodes = [];

function amounts(a) {
  return a ? `${+a.cpus.toFixed(2)} CPU · ${bytes(a.memory_bytes)} · ${a.gpus} GPU` : '—';
}

function limits(offer) {
  if (!offer) return '—';
  if (offer.accept !== 'trusted') return 'lends nothing (accept: off)';
  const l = offer.limits;
  const part = (value, unit, show) => (value === null ? `all ${unit}` : show(value));
  return [part(l.cpus, 'CPUs', (v) => `${v} CPU`), part(l.memory_bytes, 'memory', (v) => bytes(v)), part(l.gpus, 'GPUs', (v) => `${v} GPU`)].join(' · ');
}

/// The node rows, with the latest offers streamed since the last full answer.
function merged() {
  return nodes.map((node) => {
    const streamed = state.offers.get(node.node_id);
    if (!streamed || node.state === 'this node') return node;
    return { ...node, offer: streamed.offer ? { ...streamed.offer, name: node.name } : node.offer, error: streamed.error };
  });
}

function nodeRow(node) {
  const o = node.offer;
  return h('tr', { 'data-node': node.name, 'data-state': node.state },
    h('td', {}, node.name, node.state === 'this node' ? h('span', { class: 'muted', text: ' (this node)' }) : null),
    h('td', {}, h('span', { class: `badge state-${node.state === 'this node' ? 'online' : node.state}`, text: node.state })),
    h('td', { text: o ? amounts(o.host) : '—' }),
    h('td', { text: limits(o) }),
    h('td', { text: o && o.accept === 'trusted' ? `${amounts(o.lent)} held; ${amounts(o.left)} left` : '—' }),
    h('td', {}, o ? h('meter', { min: 0, max: 1, value: Math.min(o.load, 1), title: `${Math.round(o.load * 100)} %` }) : null,
      o ? h('span', { class: 'muted', text: ` ${Math.round(o.load * 100)} %` }) : null),
    h('td', { text: o ? String(o.runs.length) : '' }),
    h('td', { class: 'error', text: node.error || '' }));
}

function environmentRows(list) {
  const rows = [];
  for (const node of list) {
    for (const run of (node.offer && node.offer.runs) || []) {
      rows.push(h('tr', { 'data-where': node.name },
        h('td', { text: run.workspace ? `${run.workspace}/${run.environment}` : '(not shared with this node)' }),
        h('td', { text: node.name }),
        h('td', { text: run.lent_to ? `${run.lent_to.peer_name} (${run.lent_to.user})` : node.name }),
        h('td', {}, h('span', { class: `badge env-${run.state}`, text: run.state })),
        h('td', { text: amounts(run.allocation) })));
    }
  }
  // Placed by this node but not (yet) in the peer's answer: lost, or still arriving.
  for (const p of state.placements.values()) {
    if (['running', 'degraded', 'starting', 'setting-up', 'stopping'].includes(p.state)) continue;
    rows.push(h('tr', { 'data-where': p.peer_name },
      h('td', { text: `${p.workspace}/${p.environment}` }),
      h('td', { text: p.peer_name }),
      h('td', { text: `${state.node ? state.node.name : 'this node'} (${p.by})` }),
      h('td', {}, h('span', { class: `badge env-${p.state}`, text: p.state })),
      h('td', { text: p.lost_since ? `since ${new Date(p.lost_since).toLocaleTimeString()}` : '' })));
  }
  return rows;
}

export function mount(main) {
  const summary = h('p', { class: 'muted', role: 'status' });
  const table = h('tbody');
  const envs = h('tbody');
  const slurm = h('section', { 'aria-label': 'Slurm partitions' });
  main.append(h('h2', {}, 'Cluster'), summary,
    h('table', { 'aria-label': 'Cluster nodes' },
      h('thead', {}, h('tr', {}, ['Node', 'State', 'Has', 'Lends', 'Peers hold', 'Load', 'Environments', ''].map((t) => h('th', { text: t })))),
      table),
    h('h2', {}, 'Environments anywhere'),
    h('table', { 'aria-label': 'Cluster environments' },
      h('thead', {}, h('tr', {}, ['Environment', 'Runs on', 'For', 'State', 'Holds'].map((t) => h('th', { text: t })))),
      envs),
    slurm);
  // The lab's Slurm partitions beside the peers, when this node has one configured.
  const loadSlurm = () => showPartitions(slurm);
  loadSlurm();
  const render = () => {
    const list = merged();
    const lending = list.filter((n) => n.offer && n.offer.accept === 'trusted').length;
    summary.textContent = `${list.length} node${list.length === 1 ? '' : 's'}, ${lending} lending to trusted peers`;
    table.replaceChildren(...list.map(nodeRow));
    envs.replaceChildren(...environmentRows(list));
  };
  let loading = false;
  const load = () => {
    if (loading) return;
    loading = true;
    attempt(async () => {
      const answer = await api('GET', '/cluster');
      nodes = answer.nodes;
      render();
    }).finally(() => { loading = false; });
  };
  load();
  // The node asks its peers while someone watches: keep the watch alive.
  const renew = setInterval(() => { load(); loadSlurm(); }, 20000);
  let ownTimer = null;
  const stop = onChange((kind) => {
    if (kind === 'cluster' || kind === 'placements') render();
    // This node's own row follows its environments (at most once a second).
    if (['runtimes', 'peers'].includes(kind) && !ownTimer) ownTimer = setTimeout(() => { ownTimer = null; load(); }, 1000);
  });
  return { unmount: () => { stop(); clearInterval(renew); clearTimeout(ownTimer); } };
}
