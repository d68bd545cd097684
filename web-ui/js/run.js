// Run: per workspace, Run / Stop, each environment's state, allocation and health, buttons
// that open its tools through the node's proxy, a live log view, and a terminal panel
// (xterm.js, loaded only when a terminal opens, on the node's terminal WebSocket). "Run on…"
// ranks the trusted peers and places an environment on one; a placed environment shows the
// peer's state and tools (relayed through this node), and one a peer placed here whose it is.

import { state, onChange, attempt, flash } from './app.js';
import { api } from './api.js';
import { h, bytes } from './dom.js';

const ACTIVE = new Set(['setting-up', 'queued', 'starting', 'running', 'degraded', 'stopping']);
const TOOL_OK = new Set(['ready']);

// Environments that never ran are not in the live state: their planned tools come from
// `GET /workspaces/{ws}/status` (asked once per workspace), so they are listed before a run.
const planned = new Map();
const asked = new Set();

function askPlanned(workspace, render) {
  // Asked again when its environments change (revision).
  const key = `${workspace.id}@${workspace.revision}`;
  if (asked.has(key)) return;
  asked.add(key);
  api('GET', `/workspaces/${workspace.id}/status`).then((answer) => {
    for (const env of answer.environments) planned.set(`${env.workspace_id}/${env.environment}`, env);
    render();
  }, () => asked.delete(key));
}

/// An environment placed on a peer, as the run view shows it: the peer's state and tools.
function placedEnv(workspace, name, p) {
  const remote = p.remote || { tools: [], notes: [] };
  const a = remote.allocation;
  const lost = p.lost_since ? `lost since ${new Date(p.lost_since).toLocaleTimeString()}: ${p.error || `${p.peer_name} is silent`}` : null;
  return {
    workspace_id: workspace.id, workspace: workspace.name, environment: name, state: p.state, backend: '',
    placement: p,
    tools: remote.tools.map((t) => ({ ...t, restarts: 0 })),
    notes: [`on ${p.peer_name}: ${p.reason}`, ...(remote.notes || [])],
    allocation: a ? { variant: a.variant, cpus: a.cpus, cpuset: [], memory: a.memory_bytes, gpus: Array.from({ length: a.gpus }, (_, i) => i), notes: [] } : null,
    error: lost || remote.error || null,
    transfer: remote.transfer,
  };
}

/// Every environment of a workspace: where it is placed on a peer, else the node's status
/// where it ran, else stopped.
function environments(workspace) {
  return workspace.environments.map((name) => {
    const p = state.placements.get(`${workspace.id}/${name}`);
    const local = state.runtimes.get(`${workspace.id}/${name}`);
    if (p && !(local && ACTIVE.has(local.state))) return placedEnv(workspace, name, p);
    return local || planned.get(`${workspace.id}/${name}`)
      || { workspace_id: workspace.id, workspace: workspace.name, environment: name, state: 'stopped', backend: '', tools: [], notes: [], allocation: null, error: null };
  });
}

/// The "Run on…" panel: every trusted online peer's fit for the environment, best first, and
/// a button to run it on each peer that fits.
function placementPanel(region) {
  const close = () => region.replaceChildren();
  const open = async (env) => {
    const box = h('section', { class: 'panel', 'aria-label': `Place ${env.workspace}/${env.environment} on a peer` },
      h('h3', {}, `Run ${env.workspace}/${env.environment} on…`, h('button', { type: 'button', class: 'link', onclick: close }, 'Close')),
      h('p', { class: 'muted', role: 'status', text: 'asking the trusted peers…' }));
    region.replaceChildren(box);
    const ranking = await api('GET', `/workspaces/${env.workspace_id}/placement?environment=${encodeURIComponent(env.environment)}`);
    const place = (peer) => attempt(async () => {
      await api('POST', `/workspaces/${env.workspace_id}/run`, { environment: env.environment, on: peer });
      close();
    });
    const rows = ranking.candidates.map((c, index) => h('tr', { 'data-peer': c.peer_name, 'data-fits': String(c.fits) },
      h('td', {}, c.peer_name, index === 0 && c.fits ? h('span', { class: 'badge state-online', text: 'best' }) : null),
      c.fits
        ? [h('td', { text: c.variant || '—' }),
          h('td', { text: `${c.allocation.cpus} CPU · ${bytes(c.allocation.memory_bytes)} · ${c.allocation.gpus} GPU` }),
          h('td', { text: c.preferred_met ? 'preferred' : 'minimum' }),
          h('td', { text: `${Math.round(c.load * 100)} %` }),
          h('td', { text: `${bytes(c.bytes_to_move)} (${c.eta_seconds.toFixed(1)} s); holds ${bytes(c.bytes_held)}` }),
          h('td', {}, h('button', { type: 'button', 'aria-label': `Run on ${c.peer_name}`, onclick: () => place(c.peer_name) }, 'Run here'))]
        : h('td', { colspan: 6, class: 'error', text: c.refusal })));
    box.replaceChildren(box.firstChild,
      h('p', {}, ranking.chosen ? `Best: ${ranking.chosen} — ${ranking.reason}` : ranking.reason,
        h('span', { class: 'muted', text: ` (asked in ${Math.round(ranking.decided_ms)} ms; workspace ${bytes(ranking.workspace_bytes)})` })),
      ranking.candidates.length
        ? h('table', { 'aria-label': 'Candidates' },
          h('thead', {}, h('tr', {}, ['Peer', 'Variant', 'Would give', 'Meets', 'Load', 'To move', ''].map((t) => h('th', { text: t })))),
          h('tbody', {}, rows))
        : h('p', { class: 'muted', text: 'No trusted peer is online: trust peers on the Network page; they must set cluster.accept: trusted.' }),
      ranking.chosen ? h('button', { type: 'button', onclick: () => place('best') }, `Run on the best (${ranking.chosen})`) : null);
  };
  return { open, close };
}

function allocationText(a) {
  if (!a) return '';
  const parts = [];
  if (a.variant) parts.push(`variant ${a.variant}`);
  parts.push(a.cpus ? `${a.cpus} CPU${a.cpuset.length ? ` (cores ${a.cpuset.join(',')})` : ''}` : 'all CPUs');
  parts.push(a.memory ? bytes(a.memory) : 'no memory limit');
  if (a.gpus.length) parts.push(`GPU ${a.gpus.join(',')}`);
  return parts.join(' · ');
}

function toolButton(env, tool, openTerminal) {
  const label = `${tool.name} (${tool.kind})`;
  if (tool.kind === 'terminal') {
    return h('button', { type: 'button', disabled: !ACTIVE.has(env.state), 'aria-label': `Open terminal ${tool.name} of ${env.workspace}/${env.environment}`,
      onclick: () => openTerminal(env) }, `Terminal ${tool.name}`);
  }
  const ready = TOOL_OK.has(tool.state);
  return h('span', { class: 'tool', 'data-tool': tool.name, 'data-state': tool.state },
    ready
      ? h('a', { class: 'button', href: tool.url, target: '_blank', rel: 'noopener', 'aria-label': `Open ${tool.name} of ${env.workspace}` }, `Open ${label}`)
      : h('span', { class: 'muted', text: label }),
    ' ', h('span', { class: `badge tool-${tool.state}`, text: tool.state }),
    tool.restarts ? h('span', { class: 'muted', text: ` ${tool.restarts} restart(s)` }) : null,
    tool.detail ? h('div', { class: 'muted detail', text: tool.detail }) : null);
}

function envSection(env, panels) {
  const placed = env.placement;
  const lent = env.lent_to;
  return h('section', { class: 'env', 'data-env': env.environment, 'data-state': env.state, 'aria-label': `Environment ${env.environment}` },
    h('h4', {}, `${env.environment} `, h('span', { class: `badge env-${env.state}`, 'data-state': env.state, text: env.state }),
      env.backend ? h('span', { class: 'muted', text: ` ${env.backend}` }) : null,
      placed ? h('span', { class: 'badge placed', 'data-placed-on': placed.peer_name, text: `on ${placed.peer_name}` }) : null,
      lent && ACTIVE.has(env.state) ? h('span', { class: 'badge lent', 'data-lent-to': lent.peer_name, title: `placed here by ${lent.user} on ${lent.peer_name}`, text: `for ${lent.peer_name} (${lent.user})` }) : null,
      env.sandbox && env.sandbox.startsWith('off') && env.state !== 'stopped'
        ? h('span', { class: 'badge unboxed', 'data-sandbox': 'off', title: env.sandbox, text: 'unboxed' }) : null),
    env.sandbox && env.state !== 'stopped' ? h('p', { class: 'muted sandbox', text: `sandbox ${env.sandbox}` }) : null,
    env.allocation ? h('p', { class: 'muted', text: allocationText(env.allocation) }) : null,
    env.instance ? h('p', { class: 'muted', text: env.instance }) : null,
    env.error ? h('p', { class: 'error', role: 'alert', text: env.error }) : null,
    [...new Set([...(env.notes || []), ...((env.allocation && env.allocation.notes) || [])])].map((n) => h('p', { class: 'note', text: n })),
    h('div', { class: 'tools' }, env.tools.map((t) => toolButton(env, t, panels.terminal))),
    env.transfer ? h('progress', { max: env.transfer.total || 1, value: env.transfer.done, 'aria-label': `Transfer to ${placed.peer_name}` }) : null,
    h('div', { class: 'actions' },
      h('button', { type: 'button', class: 'link', 'aria-label': `Logs of ${env.workspace}/${env.environment}`, onclick: () => panels.logs(env) }, 'Logs'),
      placed
        ? h('button', { type: 'button', class: 'link', 'aria-label': `Bring the results of ${env.workspace} back from ${placed.peer_name}`,
          onclick: () => attempt(async () => {
            const job = await api('POST', '/transfers', { kind: 'sync', workspace: env.workspace_id });
            flash(`bringing ${env.workspace} back from ${placed.peer_name} (transfer ${job.id.slice(0, 8)}): see Transfers`);
          }) }, 'Results back')
        : null,
      !ACTIVE.has(env.state) || (placed && placed.state === 'lost')
        ? h('button', { type: 'button', class: 'link', 'aria-label': `Place ${env.workspace}/${env.environment} on a peer`, onclick: () => panels.place(env) }, placed ? 'Place again…' : 'Run on…')
        : null));
}

function card(workspace, panels) {
  const envs = environments(workspace);
  const running = envs.some((e) => ACTIVE.has(e.state) || (e.placement && e.state !== 'stopped'));
  const run = h('button', { type: 'button', 'aria-label': `Run ${workspace.name}`, onclick: () => attempt(async () => {
    run.disabled = true;
    await api('POST', `/workspaces/${workspace.id}/run`, {});
  }) }, 'Run');
  const stop = h('button', { type: 'button', class: 'danger', 'aria-label': `Stop ${workspace.name}`, onclick: () => attempt(async () => {
    stop.disabled = true;
    await api('POST', `/workspaces/${workspace.id}/stop`, {});
  }) }, 'Stop');
  return h('article', { class: 'card runcard', 'data-workspace': workspace.name },
    h('h3', {}, h('span', { text: workspace.name }), h('span', { class: 'actions' }, running ? stop : run)),
    workspace.title ? h('p', { class: 'muted', text: workspace.title }) : null,
    envs.map((env) => envSection(env, panels)));
}

/// A panel below the cards: follows an environment's logs until closed.
function logPanel(region) {
  let controller = null;
  const close = () => { if (controller) controller.abort(); controller = null; region.replaceChildren(); };
  const open = async (env) => {
    close();
    controller = new AbortController();
    const pre = h('pre', { class: 'log', tabindex: 0, 'aria-label': `Logs of ${env.workspace}/${env.environment}` });
    region.replaceChildren(h('section', { class: 'panel', 'aria-label': 'Logs' },
      h('h3', {}, `Logs of ${env.workspace}/${env.environment}`, h('button', { type: 'button', class: 'link', onclick: close }, 'Close')), pre));
    try {
      const response = await fetch(`/api/v1/workspaces/${env.workspace_id}/logs?environment=${encodeURIComponent(env.environment)}&follow=true&tail=200`,
        { credentials: 'same-origin', signal: controller.signal });
      if (!response.ok) { flash((await response.json()).error.message); return; }
      const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        const atEnd = pre.scrollTop + pre.clientHeight >= pre.scrollHeight - 4;
        pre.append(value);
        // Bounded: keep the last 200 kB.
        if (pre.textContent.length > 200_000) pre.textContent = pre.textContent.slice(-150_000);
        if (atEnd) pre.scrollTop = pre.scrollHeight;
      }
    } catch (error) {
      if (error.name !== 'AbortError') flash(`logs: ${error.message}`);
    }
  };
  return { open, close };
}

let xtermLoaded = null;
/// xterm.js and its fit addon, fetched the first time a terminal opens.
function loadXterm() {
  if (!xtermLoaded) {
    const css = h('link', { rel: 'stylesheet', href: '/ui/vendor/xterm/xterm.css' });
    document.head.append(css);
    xtermLoaded = Promise.all([import('/ui/vendor/xterm/xterm.mjs'), import('/ui/vendor/xterm-addon-fit/addon-fit.mjs')]);
  }
  return xtermLoaded;
}

/// A terminal panel on the environment's terminal WebSocket; resizes with the panel.
function terminalPanel(region) {
  let session = null;
  const close = () => { if (session) session.dispose(); session = null; region.replaceChildren(); };
  const open = async (env) => {
    close();
    const [{ Terminal }, { FitAddon }] = await loadXterm();
    const box = h('div', { class: 'term-panel', role: 'region', 'aria-label': `Terminal of ${env.workspace}/${env.environment}` });
    const status = h('span', { class: 'muted', role: 'status', text: 'connecting…' });
    region.replaceChildren(h('section', { class: 'panel' },
      h('h3', {}, `Terminal: ${env.workspace}/${env.environment} `, status, h('button', { type: 'button', class: 'link', onclick: close }, 'Close')), box));
    const dark = window.matchMedia('(prefers-color-scheme: dark)').matches;
    const term = new Terminal({ cursorBlink: true, fontSize: 14, convertEol: false, screenReaderMode: true,
      theme: dark ? { background: '#12151b' } : { background: '#ffffff', foreground: '#1d2330', cursor: '#1d2330' } });
    const fit = new FitAddon();
    term.loadAddon(fit);
    term.open(box);
    fit.fit();
    const scheme = location.protocol === 'https:' ? 'wss' : 'ws';
    const url = `${scheme}://${location.host}/api/v1/workspaces/${env.workspace_id}/terminal?environment=${encodeURIComponent(env.environment)}&cols=${term.cols}&rows=${term.rows}`;
    const socket = new WebSocket(url);
    socket.binaryType = 'arraybuffer';
    const encoder = new TextEncoder();
    socket.onopen = () => { status.textContent = 'connected'; term.focus(); };
    socket.onmessage = (event) => term.write(typeof event.data === 'string' ? event.data : new Uint8Array(event.data));
    socket.onclose = (event) => { status.textContent = `closed${event.reason ? `: ${event.reason}` : ''}`; };
    term.onData((data) => { if (socket.readyState === WebSocket.OPEN) socket.send(encoder.encode(data)); });
    term.onResize(({ cols, rows }) => {
      if (socket.readyState === WebSocket.OPEN) socket.send(JSON.stringify({ type: 'resize', cols, rows }));
    });
    const observer = new ResizeObserver(() => fit.fit());
    observer.observe(box);
    session = { dispose: () => { observer.disconnect(); socket.close(); term.dispose(); } };
  };
  return { open, close };
}

export function mount(main, rest = []) {
  const cards = h('div', { class: 'grid runs' });
  const logs = h('div');
  const terminal = h('div');
  const placing = h('div');
  main.append(h('h2', {}, 'Run'), placing, cards, logs, terminal);
  const logPanelApi = logPanel(logs);
  const terminalApi = terminalPanel(terminal);
  const placeApi = placementPanel(placing);
  const panels = { logs: logPanelApi.open, terminal: (env) => attempt(() => terminalApi.open(env)),
    place: (env) => attempt(() => placeApi.open(env)) };
  const render = () => {
    const list = [...state.workspaces.values()].filter((w) => w.environments.length).sort((a, b) => a.name.localeCompare(b.name));
    if (!list.length) {
      cards.replaceChildren(h('p', { class: 'muted', text: 'No workspace has an environment yet: add one to a workspace (aienv env detect WS --write).' }));
      return;
    }
    for (const w of list) {
      if (w.environments.some((name) => !state.runtimes.has(`${w.id}/${name}`))) askPlanned(w, render);
    }
    const focused = document.activeElement && document.activeElement.getAttribute('aria-label');
    cards.replaceChildren(...list.map((w) => card(w, panels)));
    if (focused) {
      const again = [...cards.querySelectorAll('[aria-label]')].find((e) => e.getAttribute('aria-label') === focused);
      if (again) again.focus();
    }
  };
  render();
  // `#run/<workspace>/<environment>` opens that environment's terminal.
  if (rest.length === 2) {
    const workspace = [...state.workspaces.values()].find((w) => w.name === rest[0]);
    const env = workspace && environments(workspace).find((e) => e.environment === rest[1]);
    if (env) panels.terminal(env);
  }
  const stop = onChange((kind) => { if (['runtimes', 'workspaces', 'snapshot', 'placements'].includes(kind)) render(); });
  return { unmount: () => { stop(); logPanelApi.close(); terminalApi.close(); } };
}
