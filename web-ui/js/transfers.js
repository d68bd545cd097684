// Transfers: every clone, sync and push job with a live progress bar, rate, ETA, sources, state
// and cause of failure; cancel, retry and remove. Also the one place that starts a clone.

import { state, onChange, attempt, flash } from './app.js';
import { api, ApiError } from './api.js';
import { h, bytes, ago } from './dom.js';

const ACTIVE = new Set(['queued', 'fetching-manifest', 'transferring', 'verifying', 'materializing']);

/// Starts a clone of `workspace` (an id) from `peer` (an id); asks for another local name
/// when this node already has one with the same name. Returns the job, or undefined.
export async function startClone(peer, workspace, name) {
  const body = { kind: 'clone', peer, workspace };
  for (;;) {
    try {
      const job = await api('POST', '/transfers', body);
      location.hash = '#transfers';
      return job;
    } catch (error) {
      if (error instanceof ApiError && error.code === 'name-taken') {
        const other = window.prompt(`This node already has a workspace named “${name}”. Clone it as:`, `${name}-copy`);
        if (!other) return undefined;
        body.as = other.trim();
        continue;
      }
      if (error instanceof ApiError && error.status === 401) throw error;
      flash(error.message);
      return undefined;
    }
  }
}

function eta(seconds) {
  if (seconds === null || seconds === undefined) return '';
  if (seconds < 60) return `${seconds} s left`;
  return `${Math.round(seconds / 60)} min left`;
}

function jobRow(job) {
  const p = job.progress;
  const percent = p.bytes_total ? Math.floor((p.bytes_done * 100) / p.bytes_total) : (job.state === 'done' ? 100 : 0);
  const active = ACTIVE.has(job.state);
  const actions = [];
  if (active) {
    actions.push(h('button', { type: 'button', class: 'danger', 'aria-label': `Cancel transfer of ${job.workspace_name}`,
      onclick: () => attempt(() => api('DELETE', `/transfers/${job.id}`)) }, 'Cancel'));
  }
  if (job.state === 'failed' || job.state === 'cancelled') {
    actions.push(h('button', { type: 'button', 'aria-label': `Retry transfer of ${job.workspace_name}`,
      onclick: () => attempt(() => api('POST', `/transfers/${job.id}/retry`)) }, 'Retry'));
  }
  if (!active) {
    actions.push(h('button', { type: 'button', class: 'link', 'aria-label': `Remove transfer of ${job.workspace_name} from the list`,
      onclick: () => attempt(async () => { await api('DELETE', `/transfers/${job.id}`); state.transfers.delete(job.id); render(); }) }, 'Remove'));
  }
  const details = [
    `${bytes(p.bytes_done)} of ${bytes(p.bytes_total)}`,
    `${p.files_done}/${p.files_total} files`,
    p.rate ? `${bytes(p.rate)}/s` : null,
    active ? eta(p.eta_seconds) : null,
    p.bytes_local ? `${bytes(p.bytes_local)} from this node` : null,
    p.bytes_present ? `${bytes(p.bytes_present)} already here` : null,
    p.chunks_bad ? `${p.chunks_bad} corrupted chunk${p.chunks_bad === 1 ? '' : 's'} refetched` : null,
  ].filter(Boolean).join(' · ');
  return h('article', { class: 'card transfer', 'data-transfer': job.id, 'data-state': job.state, 'aria-label': `${job.kind} of ${job.workspace_name}` },
    h('h3', {},
      h('span', {}, `${{ clone: 'Clone', sync: 'Sync', push: 'Push from' }[job.kind] ?? job.kind} ${job.peer_name}/${job.workspace_name}`,
        job.target_name && (job.target_name !== job.workspace_name || job.kind === 'push') ? ` → ${job.target_name}` : ''),
      h('span', { class: `badge job-${job.state}`, text: job.state })),
    h('progress', { max: 100, value: percent, 'aria-label': `Progress of ${job.workspace_name}`, 'aria-valuetext': `${percent}%` }),
    h('p', { class: 'muted', text: details }),
    job.sources.length ? h('p', { class: 'muted', text: `from ${job.sources.join(', ')}` }) : null,
    job.error ? h('p', { class: 'error', role: 'alert', text: job.error }) : null,
    job.conflicts && job.conflicts.length
      ? h('details', {}, h('summary', {}, `Changed on both sides (${job.conflicts.length})`), h('ul', {}, job.conflicts.map((c) => h('li', { text: c }))))
      : null,
    job.hook_error ? h('pre', { class: 'error', role: 'alert', text: `Arrived, but ${job.hook_error}` }) : null,
    job.state === 'done' && job.notes.length
      ? h('details', {}, h('summary', {}, 'Notes'), h('ul', {}, job.notes.map((n) => h('li', { text: n }))))
      : null,
    h('p', { class: 'muted', text: `${job.finished ? `finished ${ago(job.finished)}` : `started ${ago(job.created)}`} by ${job.by}` }),
    actions.length ? h('div', { class: 'actions' }, actions) : null);
}

let region = null;

function render() {
  if (!region) return;
  const jobs = [...state.transfers.values()].sort((a, b) => b.created.localeCompare(a.created));
  region.replaceChildren(...(jobs.length
    ? jobs.map(jobRow)
    : [h('p', { class: 'muted', text: 'No transfers yet. Clone a workspace from the Network view.' })]));
}

export function mount(main) {
  region = h('section', { class: 'grid transfers', 'aria-label': 'Transfers', 'aria-live': 'polite' });
  main.append(h('h2', {}, 'Transfers'), region);
  render();
  const stop = onChange((kind) => {
    if (kind === 'transfers' || kind === 'snapshot' || kind === 'tick') render();
  });
  return { unmount: () => { stop(); region = null; } };
}
