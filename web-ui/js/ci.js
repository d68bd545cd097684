// CI: every run kept (from `aienv ci`, the API and webhooks), live — state, exit code, where
// it ran (this node, a peer it ran on, a peer it ran for), timings, JUnit counts — and its
// log, followed while the run lasts.

import { state, onChange, attempt } from './app.js';
import { api } from './api.js';
import { h, ago } from './dom.js';

const ACTIVE = new Set(['queued', 'fetching', 'pulling', 'running']);

/// Reads the run's log from where `pre` got to, until the run is over or the panel closes.
async function follow(run, pre, details) {
  const decoder = new TextDecoder();
  let offset = Number(pre.dataset.offset || 0);
  for (;;) {
    const response = await fetch(`/api/v1/ci/runs/${run.id}/log?offset=${offset}`, { credentials: 'same-origin' });
    if (!response.ok) {
      pre.append(`\n[the log cannot be read: HTTP ${response.status}]`);
      return;
    }
    const chunk = new Uint8Array(await response.arrayBuffer());
    offset = Number(response.headers.get('X-Next-Offset') || offset + chunk.length);
    pre.dataset.offset = String(offset);
    if (chunk.length) pre.append(decoder.decode(chunk, { stream: true }));
    const over = !ACTIVE.has(response.headers.get('X-Run-State'));
    if (!details.isConnected || !details.open || (over && chunk.length === 0)) return;
    if (chunk.length === 0) await new Promise((resolve) => setTimeout(resolve, 1000));
  }
}

/// The argument vector as a shell would take it back (arguments with spaces or quotes quoted).
function shellLine(argv) {
  return argv.map((a) => (/^[\w@%+=:,./-]+$/.test(a) ? a : `'${a.replace(/'/g, "'\\''")}'`)).join(' ');
}

function tests(run) {
  if (!run.junit.length) return null;
  const sum = (key) => run.junit.reduce((total, report) => total + report[key], 0);
  return `tests ${sum('tests')}, failures ${sum('failures')}, errors ${sum('errors')}, skipped ${sum('skipped')}`;
}

function card(run) {
  const pre = h('pre', { class: 'log', 'aria-label': `Log of CI run ${run.number}` });
  const details = h('details', {}, h('summary', {}, 'Log'), pre);
  details.addEventListener('toggle', () => {
    if (details.open && !pre.dataset.following) {
      pre.dataset.following = 'yes';
      attempt(() => follow(run, pre, details)).finally(() => { delete pre.dataset.following; });
    }
  });
  const ended = run.exit_code !== null && run.exit_code !== undefined ? `exit ${run.exit_code}` : null;
  const seconds = run.timings && run.timings.total !== undefined ? `${run.timings.total.toFixed(1)} s` : null;
  const facts = [
    ended,
    run.reason && !ended ? run.reason : null,
    run.backend || (run.peer ? `on ${run.peer}` : null),
    run.for_peer ? `for ${run.for_peer}` : null,
    seconds,
    `by ${run.by}`,
    run.finished ? `finished ${ago(run.finished)}` : `started ${ago(run.created)}`,
  ].filter(Boolean).join(' · ');
  return h('article', { class: 'card ci-run', 'data-run': String(run.number), 'data-state': run.state, 'aria-label': `CI run ${run.number} of ${run.workspace}` },
    h('h3', {},
      h('span', { text: `#${run.number} ${run.workspace}${run.environment ? `/${run.environment}` : ''}` }),
      h('span', { class: `badge ci-${run.state}`, text: run.state })),
    h('p', { class: 'mono', text: shellLine(run.command) }),
    h('p', { class: 'muted', text: facts }),
    run.error ? h('p', { class: 'error', role: 'alert', text: run.error }) : null,
    tests(run) ? h('p', { text: tests(run) }) : null,
    details);
}

let region = null;
// One card per run, rebuilt only when that run changed (an open log keeps following).
const cards = new Map();

function render() {
  if (!region) return;
  const runs = [...state.ci.values()].sort((a, b) => b.number - a.number);
  if (!runs.length) {
    cards.clear();
    region.replaceChildren(h('p', { class: 'muted', text: 'No CI runs yet: `aienv ci WORKSPACE -- COMMAND`, POST /api/v1/ci/runs, or a webhook.' }));
    return;
  }
  const elements = runs.map((run) => {
    const kept = cards.get(run.id);
    if (kept && kept.run === run) return kept.element;
    const element = card(run);
    const wasOpen = kept && kept.element.querySelector('details[open]');
    if (wasOpen) {
      // Keep the log already read; the new card's panel picks up where it stopped.
      const old = kept.element.querySelector('pre');
      const pre = element.querySelector('pre');
      pre.append(old.textContent);
      pre.dataset.offset = old.dataset.offset || '0';
      element.querySelector('details').open = true;
    }
    cards.set(run.id, { run, element });
    return element;
  });
  region.replaceChildren(...elements);
}

export function mount(main) {
  region = h('section', { class: 'grid ci', 'aria-label': 'CI runs', 'aria-live': 'polite' });
  main.append(h('h2', {}, 'CI runs'), region);
  cards.clear();
  render();
  attempt(async () => {
    const listed = await api('GET', '/ci/runs');
    for (const run of listed.runs) if (!state.ci.has(run.id)) state.ci.set(run.id, run);
    render();
  });
  const stop = onChange((kind) => { if (kind === 'ci' || kind === 'tick') render(); });
  return { unmount: () => { stop(); region = null; cards.clear(); } };
}
