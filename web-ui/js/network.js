// Network: peers as cards, and the merged catalog of everything the LAN shares, with filters,
// free-text search and sorting. The catalog reloads when peers change.

import { state, onChange, attempt } from './app.js';
import { api } from './api.js';
import { h, bytes, ago } from './dom.js';
import { startClone } from './transfers.js';

const TYPES = ['', 'general', 'notebook', 'training', 'fine-tuning', 'inference', 'dataset', 'model', 'app', 'course'];

function peerCard(peer) {
  const gpus = peer.resources.gpus.map((g) => g.model).join(', ') || 'no GPU';
  return h('article', { class: 'card peer', 'data-peer': peer.name, 'aria-label': `Peer ${peer.name}` },
    h('h3', {}, peer.name, h('span', { class: `badge state-${peer.state}`, 'data-state': peer.state, text: peer.state })),
    h('p', { class: 'muted', text: `${peer.resources.cpu_cores} cores · ${bytes(peer.resources.memory_total)} RAM · ${gpus}` }),
    h('p', { class: 'muted', text: peer.state === 'online'
      ? `${peer.shared_workspaces} shared`
      : `${peer.shared_workspaces} shared · last seen ${ago(peer.last_seen)}` }));
}

export function mount(main) {
  const peers = h('section', { class: 'grid', 'aria-label': 'Peers' });
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
  main.append(h('h2', {}, 'Peers'), peers, h('h2', {}, 'Shared on the network'), filters, status, table);

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
  return { unmount: () => { stop(); clearTimeout(timer); } };
}
