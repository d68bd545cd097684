// Network: peers as cards, and the merged catalog of everything the LAN shares, with filters,
// free-text search and sorting. The catalog reloads when peers change.

import { state, onChange, attempt } from './app.js';
import { api } from './api.js';
import { h, bytes, ago } from './dom.js';
import { startClone } from './transfers.js';

const TYPES = ['', 'general', 'notebook', 'training', 'fine-tuning', 'inference', 'dataset', 'model', 'app', 'course'];

// Trusting asks the person to compare the key id with the one the peer's own machine shows.
async function trust(peer) {
  const typed = window.prompt(
    `Trust ${peer.name}? It will see what is shared with it by name.\n\n`
    + `Compare this key id with the one \`aienv node\` (or this dashboard) shows on ${peer.name}:\n\n${peer.key_id}\n\n`
    + 'Type or paste the key id you read there to confirm:');
  if (typed === null) return;
  await api('POST', `/peers/${encodeURIComponent(peer.id)}/trust`, { key_id: typed });
}

// Pairing: the code shown on the other node, typed here; both nodes then trust each other.
async function pair(peer) {
  const code = window.prompt(`Pair with ${peer.name}: on ${peer.name}, open Network and press "Show a pairing code" (or run \`aienv peers pair --show\`), then type the code here:`);
  if (code === null) return;
  await api('POST', `/peers/${encodeURIComponent(peer.id)}/pair`, { code });
}

function peerCard(peer) {
  const gpus = peer.resources.gpus.map((g) => g.model).join(', ') || 'no GPU';
  const conflict = peer.conflict && peer.conflict.active
    ? h('p', { class: 'warning', role: 'alert', 'data-conflict': peer.name,
      text: `Another key claims to be ${peer.name} (from ${peer.conflict.address}, ${peer.conflict.count}×, last ${ago(peer.conflict.last_seen)}): refused. Key presented: ${peer.conflict.key_id}` })
    : null;
  const action = state.role !== 'admin'
    ? null
    : peer.trusted
    ? h('button', { type: 'button', class: 'secondary', 'aria-label': `Stop trusting ${peer.name}`,
      onclick: () => attempt(() => api('DELETE', `/peers/${encodeURIComponent(peer.id)}/trust`)) }, 'Untrust')
    : h('span', {},
      h('button', { type: 'button', 'aria-label': `Trust ${peer.name}`, onclick: () => attempt(() => trust(peer)) }, 'Trust…'),
      ' ',
      h('button', { type: 'button', 'aria-label': `Pair with ${peer.name}`, onclick: () => attempt(() => pair(peer)) }, 'Pair…'));
  return h('article', { class: 'card peer', 'data-peer': peer.name, 'aria-label': `Peer ${peer.name}` },
    h('h3', {}, peer.name, h('span', { class: `badge state-${peer.state}`, 'data-state': peer.state, text: peer.state }),
      h('span', { class: `badge trust-${peer.trusted ? 'trusted' : 'known'}`, 'data-trust': peer.trusted ? 'trusted' : 'known', text: peer.trusted ? 'trusted' : 'known' })),
    h('p', { class: 'muted', text: `${peer.resources.cpu_cores} cores · ${bytes(peer.resources.memory_total)} RAM · ${gpus}` }),
    h('p', { class: 'muted', text: peer.state === 'online'
      ? `${peer.shared_workspaces} shared`
      : `${peer.shared_workspaces} shared · last seen ${ago(peer.last_seen)}` }),
    h('p', { class: 'key-id', title: 'Key id: compare it with the one shown on that machine', text: peer.key_id }),
    conflict,
    action);
}

/// Fills `region` with the lab's Slurm partitions, or empties it when this node has none.
export async function showPartitions(region) {
  const result = await api('GET', '/slurm/partitions').catch(() => null);
  if (!result || !result.configured) { region.replaceChildren(); return; }
  region.replaceChildren(h('h2', {}, 'Slurm partitions'),
    result.error
      ? h('p', { class: 'warning', role: 'alert', text: `slurmrestd: ${result.error}` })
      : h('div', { class: 'grid' }, ...result.partitions.map(partitionCard)));
}

// A Slurm partition beside the peers: what its nodes have and what is free now.
function partitionCard(p) {
  return h('article', { class: 'card peer', 'data-partition': p.name, 'aria-label': `Slurm partition ${p.name}` },
    h('h3', {}, p.name, h('span', { class: `badge state-${p.state === 'UP' ? 'online' : 'offline'}`, text: p.state }),
      h('span', { class: 'badge', text: 'slurm' })),
    h('p', { class: 'muted', text: `${p.nodes_idle}/${p.nodes} nodes idle · ${p.cpus_free}/${p.cpus} CPUs free` }),
    h('p', { class: 'muted', text: `${bytes(p.memory_free)} of ${bytes(p.memory)} RAM free${p.gpus ? ` · ${p.gpus_free}/${p.gpus} GPUs free` : ''}` }));
}

export function mount(main) {
  const peers = h('section', { class: 'grid', 'aria-label': 'Peers' });
  const slurm = h('section', { 'aria-label': 'Slurm partitions' });
  const field = (label, input) => {
    input.id = `net-${input.name}`;
    return h('div', {}, h('label', { for: input.id }, label), input);
  };
  const q = h('input', { type: 'search', name: 'q', placeholder: 'Search…' });
  const type = h('select', { name: 'type' }, TYPES.map((t) => h('option', { value: t, text: t || 'any' })));
  const tool = h('input', { name: 'tool', size: 10 });
  const lang = h('input', { name: 'lang', size: 10 });
  const tag = h('input', { name: 'tag', size: 10 });
  const peer = h('select', { name: 'peer' }, h('option', { value: '', text: 'any' }));
  const sort = h('select', { name: 'sort' },
    h('option', { value: 'name', text: 'name' }),
    h('option', { value: 'peer', text: 'peer' }),
    h('option', { value: 'updated', text: 'recently updated' }));
  const filters = h('form', { class: 'filters', role: 'search', onsubmit: (e) => e.preventDefault() },
    field('Search', q), field('Type', type), field('Tool', tool), field('Language', lang), field('Tag', tag),
    field('Peer', peer), field('Sort by', sort));
  const body = h('tbody');
  const table = h('table', { 'aria-label': 'Network catalog' },
    h('thead', {}, h('tr', {}, ['Workspace', 'Peer', '', 'Type', 'Tags', 'Updated'].map((c) => h('th', { scope: 'col', text: c || 'Action' })))),
    body);
  const status = h('p', { class: 'muted', role: 'status' });
  const pairing = h('p', { class: 'muted', id: 'pairing-code', 'aria-live': 'polite' });
  const showCode = h('button', { type: 'button', onclick: () => attempt(async () => {
    const shown = await api('POST', '/pairing');
    pairing.replaceChildren('Pairing code ', h('strong', { class: 'key-id', text: shown.code }),
      ` — type it on the other node before ${new Date(shown.expires_at).toLocaleTimeString()} (single use). This node's key id: ${shown.key_id}`);
  }) }, 'Show a pairing code');
  main.append(h('h2', {}, 'Peers'), state.role === 'admin' ? h('p', {}, showCode) : '', pairing, peers, slurm, h('h2', {}, 'Shared on the network'), filters, status, table);

  // The lab's Slurm partitions, when this node has one configured; refreshed every 10 s.
  const loadSlurm = () => showPartitions(slurm);
  loadSlurm();
  const slurmTimer = setInterval(loadSlurm, 10000);

  let entries = [];
  const renderPeers = () => {
    const list = [...state.peers.values()].sort((a, b) => a.name.localeCompare(b.name));
    peers.replaceChildren(...(list.length ? list.map(peerCard) : [h('p', { class: 'muted', text: 'No other node heard yet.' })]));
    const chosen = peer.value;
    peer.replaceChildren(h('option', { value: '', text: 'any' }), ...list.map((p) => h('option', { value: p.name, text: p.name })));
    peer.value = chosen;
  };
  const renderCatalog = () => {
    const sorted = [...entries].sort((a, b) => {
      if (sort.value === 'peer') return a.peer_name.localeCompare(b.peer_name) || a.workspace.name.localeCompare(b.workspace.name);
      if (sort.value === 'updated') return b.workspace.updated.localeCompare(a.workspace.updated);
      return a.workspace.name.localeCompare(b.workspace.name) || a.peer_name.localeCompare(b.peer_name);
    });
    body.replaceChildren(...sorted.map((e) => h('tr', { 'data-workspace': e.workspace.name },
      h('td', {}, h('strong', { text: e.workspace.name }), e.workspace.title ? h('div', { class: 'muted', text: e.workspace.title }) : null),
      h('td', { text: e.peer_name }),
      h('td', {}, h('button', { type: 'button', 'aria-label': `Clone ${e.workspace.name} from ${e.peer_name}`,
        onclick: (event) => {
          event.target.disabled = true;
          attempt(() => startClone(e.peer_id, e.workspace.id, e.workspace.name)).finally(() => { event.target.disabled = false; });
        } }, 'Clone')),
      h('td', { text: e.workspace.type }),
      h('td', { text: e.workspace.tags.join(', ') }),
      h('td', { text: ago(e.workspace.updated) }))));
    status.textContent = `${entries.length} shared workspace${entries.length === 1 ? '' : 's'}`;
  };
  const load = async () => {
    const params = new URLSearchParams();
    for (const [key, input] of [['q', q], ['type', type], ['tool', tool], ['lang', lang], ['tag', tag], ['peer', peer]]) {
      if (input.value.trim()) params.set(key, input.value.trim());
    }
    const query = params.toString();
    const result = await attempt(() => api('GET', `/network/catalog${query ? `?${query}` : ''}`));
    if (result) { entries = result; renderCatalog(); }
  };
  let timer = null;
  const soon = (delay) => { clearTimeout(timer); timer = setTimeout(load, delay); };
  filters.addEventListener('input', () => soon(150));
  sort.addEventListener('change', renderCatalog);

  renderPeers();
  load();
  const stop = onChange((kind) => {
    if (kind === 'peers' || kind === 'snapshot' || kind === 'tick') renderPeers();
    if (kind === 'peers' || kind === 'snapshot') soon(200);
  });
  return { unmount: () => { stop(); clearTimeout(timer); clearInterval(slurmTimer); } };
}
