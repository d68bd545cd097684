// Overview: this node, its resources, counts, and recent activity.

import { state, onChange } from './app.js';
import { h, bytes } from './dom.js';

function gauge(label, used, total, text) {
  return h('div', { class: 'card' },
    h('h3', {}, label),
    h('meter', { min: 0, max: total || 1, value: used, 'aria-label': label }),
    h('p', { class: 'muted', text }));
}

function render(region) {
  const node = state.node;
  if (!node) { region.replaceChildren(h('p', { class: 'muted', text: 'Loading…' })); return; }
  const r = node.resources;
  const peers = [...state.peers.values()];
  const online = peers.filter((p) => p.state === 'online').length;
  const shared = [...state.workspaces.values()].filter((w) => w.sharing.enabled).length;
  const running = [...state.runtimes.values()].filter((e) => ['setting-up', 'queued', 'starting', 'running', 'degraded'].includes(e.state)).length;
  const active = [...state.transfers.values()].filter((t) => !['done', 'failed', 'cancelled'].includes(t.state)).length;
  const gpus = r.gpus.length
    ? r.gpus.map((g) => h('div', { class: 'card' }, h('h3', {}, 'GPU'), h('p', { text: `${g.model}` }), h('p', { class: 'muted', text: g.memory ? bytes(g.memory) : '' })))
    : [h('div', { class: 'card' }, h('h3', {}, 'GPU'), h('p', { class: 'muted', text: 'none' }))];
  region.replaceChildren(
    h('h2', {}, `Node ${node.name}`),
    h('p', { class: 'muted', text: `id ${node.id} · version ${node.version} · ${r.os}/${r.arch}` }),
    h('p', {}, 'Key id ', h('code', { class: 'key-id', id: 'node-key-id', text: node.key_id }),
      h('span', { class: 'muted', text: ' · compare it when another node trusts this one' })),
    node.discovery.key_conflicts
      ? h('p', { class: 'warning', role: 'alert', text: `${node.discovery.key_conflicts} announcements or answers refused: another key claimed a known node's id (see Network).` })
      : null,
    h('section', { class: 'grid', 'aria-label': 'Resources' },
      h('div', { class: 'card' }, h('h3', {}, 'CPU'), h('p', { class: 'stat', text: `${r.cpu_cores}` }), h('p', { class: 'muted', text: r.cpu_model || 'cores' })),
      gauge('Memory', r.memory_total - r.memory_available, r.memory_total, `${bytes(r.memory_available)} free of ${bytes(r.memory_total)}`),
      h('div', { class: 'card' }, h('h3', {}, 'Disk'), h('p', { class: 'stat', text: bytes(r.disk_free) }), h('p', { class: 'muted', text: 'free in the data dir' })),
      ...gpus),
    h('section', { class: 'grid', 'aria-label': 'Counts' },
      h('div', { class: 'card' }, h('h3', {}, 'Peers online'), h('p', { class: 'stat', id: 'count-peers', text: `${online}` })),
      h('div', { class: 'card' }, h('h3', {}, 'Workspaces'), h('p', { class: 'stat', text: `${state.workspaces.size}` })),
      h('div', { class: 'card' }, h('h3', {}, 'Shared'), h('p', { class: 'stat', id: 'count-shared', text: `${shared}` })),
      h('div', { class: 'card' }, h('h3', {}, 'Running environments'), h('p', { class: 'stat', id: 'count-running', text: `${running}` })),
      h('div', { class: 'card' }, h('h3', {}, 'Active transfers'), h('p', { class: 'stat', id: 'count-transfers', text: `${active}` }))),
    h('h2', {}, 'Activity'),
    state.feed.length
      ? h('ul', { class: 'feed', 'aria-live': 'polite' }, state.feed.map((e) => h('li', {}, h('span', { class: 'muted', text: `${e.at.toLocaleTimeString()} ` }), e.text)))
      : h('p', { class: 'muted', text: 'Nothing yet.' }));
}

export function mount(main) {
  const region = h('div');
  main.append(region);
  render(region);
  const stop = onChange(() => render(region));
  return { unmount: stop };
}
