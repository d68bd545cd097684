// The dashboard shell: login, the live event stream (one WebSocket, snapshot then deltas,
// reconnecting with backoff), and the hash router for the views.

import { api, setCsrf, ApiError } from './api.js';
import * as overview from './overview.js';
import * as network from './network.js';
import * as workspaces from './workspaces.js';
import * as transfers from './transfers.js';
import * as run from './run.js';
import * as cluster from './cluster.js';
import * as ci from './ci.js';

export const state = {
  user: null,
  // admin, member or viewer: what the page offers (the node checks every request itself).
  role: null,
  node: null,
  workspaces: new Map(),
  peers: new Map(),
  transfers: new Map(),
  // CI runs seen since the page loaded (the CI view lists the kept ones first), by id.
  ci: new Map(),
  runtimes: new Map(),
  // Where this node's environments run on peers, by `workspace_id/environment`.
  placements: new Map(),
  // Trusted peers' offers (asked while the cluster view is open), by node id.
  offers: new Map(),
  feed: [],
  connected: false,
};

const views = { overview, network, workspaces, transfers, run, cluster, ci };
const listeners = new Set();
let current = null;
let socket = null;
let retryDelay = 500;

export function onChange(listener) {
  listeners.add(listener);
  return () => listeners.delete(listener);
}

const pending = new Set();
let scheduled = false;

/// Tells the views what changed, at most once per animation frame: a burst of events costs
/// one render, not one per event.
function changed(kind) {
  pending.add(kind);
  if (scheduled) return;
  scheduled = true;
  requestAnimationFrame(() => {
    scheduled = false;
    const kinds = [...pending];
    pending.clear();
    for (const listener of listeners) {
      for (const each of kinds) listener(each);
    }
  });
}

export function flash(message) {
  const box = document.getElementById('flash');
  if (!message) { box.hidden = true; return; }
  box.textContent = message;
  box.hidden = false;
  clearTimeout(flash.timer);
  flash.timer = setTimeout(() => { box.hidden = true; }, 8000);
}

/// Runs an action and shows its failure in place of a silent error.
export async function attempt(action) {
  try {
    return await action();
  } catch (error) {
    if (error instanceof ApiError && error.status === 401) return showLogin();
    flash(error.message);
    return undefined;
  }
}

function record(text) {
  state.feed.unshift({ at: new Date(), text });
  state.feed.length = Math.min(state.feed.length, 30);
}

function handle(message) {
  switch (message.type) {
    case 'snapshot':
      state.node = message.node;
      state.workspaces = new Map(message.workspaces.map((w) => [w.id, w]));
      state.peers = new Map((message.peers || []).map((p) => [p.id, p]));
      state.transfers = new Map((message.transfers || []).map((t) => [t.id, t]));
      state.runtimes = new Map((message.runtimes || []).map((e) => [`${e.workspace_id}/${e.environment}`, e]));
      state.placements = new Map((message.placements || []).map((p) => [`${p.workspace_id}/${p.environment}`, p]));
      document.getElementById('node-name').textContent = `${message.node.name}`;
      changed('snapshot');
      break;
    case 'workspace_changed':
      if (message.workspace) state.workspaces.set(message.id, message.workspace);
      else state.workspaces.delete(message.id);
      record(`workspace ${message.name} ${message.change} by ${message.by}`);
      changed('workspaces');
      break;
    case 'peer_joined':
    case 'peer_updated':
    case 'peer_left': {
      const before = state.peers.get(message.peer.id);
      state.peers.set(message.peer.id, message.peer);
      if (message.type === 'peer_joined') record(`peer ${message.peer.name} joined`);
      else if (!before || before.state !== message.peer.state) record(`peer ${message.peer.name} is ${message.peer.state}`);
      changed('peers');
      break;
    }
    case 'peer_conflict': {
      const c = message.conflict;
      record(`refused another key claiming to be ${c.name} (${c.id}) from ${c.address}`);
      if (state.node) state.node.discovery.key_conflicts = (state.node.discovery.key_conflicts || 0) + 1;
      changed('peers');
      break;
    }
    case 'trust_changed':
      record(`trusted peers: ${message.trusted.map((t) => t.name).join(', ') || 'none'}`);
      changed('peers');
      break;
    case 'transfer_changed': {
      const job = message.transfer;
      const before = state.transfers.get(job.id);
      state.transfers.set(job.id, job);
      if (!before || before.state !== job.state) {
        const what = `${job.kind} of ${job.peer_name}/${job.workspace_name}`;
        if (job.state === 'failed') record(`${what} failed: ${job.error}`);
        else if (['queued', 'done', 'cancelled'].includes(job.state)) record(`${what} ${job.state}`);
      }
      changed('transfers');
      break;
    }
    case 'ci_run_changed': {
      const run = message.run;
      const before = state.ci.get(run.id);
      state.ci.set(run.id, run);
      if (!before || before.state !== run.state) record(`CI run #${run.number} of ${run.workspace} ${run.state}`);
      changed('ci');
      break;
    }
    case 'runtime_changed':
    case 'tool_ready': {
      const env = message.environment;
      const key = `${env.workspace_id}/${env.environment}`;
      const before = state.runtimes.get(key);
      state.runtimes.set(key, env);
      if (message.type === 'tool_ready') record(`${env.workspace}/${env.environment}: ${message.tool} is ready`);
      else if (!before || before.state !== env.state) record(`${env.workspace}/${env.environment} ${env.state}${env.error ? `: ${env.error}` : ''}`);
      changed('runtimes');
      break;
    }
    case 'placement_changed': {
      const p = message.placement;
      const key = `${p.workspace_id}/${p.environment}`;
      const before = state.placements.get(key);
      if (message.removed) {
        state.placements.delete(key);
        record(`${p.workspace}/${p.environment} no longer placed on ${p.peer_name}`);
      } else {
        state.placements.set(key, p);
        if (!before || before.state !== p.state) {
          const since = p.lost_since ? ` since ${new Date(p.lost_since).toLocaleTimeString()}` : '';
          record(`${p.workspace}/${p.environment} on ${p.peer_name}: ${p.state}${since}`);
        }
      }
      changed('placements');
      break;
    }
    case 'cluster_changed':
      for (const answer of message.offers) state.offers.set(answer.node_id, answer);
      changed('cluster');
      break;
    default:
      break;
  }
}

function setConnected(connected) {
  state.connected = connected;
  const status = document.getElementById('connection');
  status.textContent = connected ? 'live' : 'offline — reconnecting';
  status.classList.toggle('offline', !connected);
  changed('connection');
}

function connect() {
  const scheme = location.protocol === 'https:' ? 'wss' : 'ws';
  socket = new WebSocket(`${scheme}://${location.host}/api/v1/events`);
  let opened = false;
  socket.onopen = () => { opened = true; retryDelay = 500; setConnected(true); };
  socket.onmessage = (event) => handle(JSON.parse(event.data));
  socket.onclose = async () => {
    setConnected(false);
    if (!state.user) return;
    if (!opened) {
      // The upgrade was refused: the session may have expired.
      try { await api('GET', '/session'); } catch (error) {
        if (error instanceof ApiError && error.status === 401) { showLogin(); return; }
      }
    }
    setTimeout(connect, retryDelay);
    retryDelay = Math.min(retryDelay * 2, 10000);
  };
}

function route() {
  const [name, ...rest] = (location.hash || '#overview').slice(1).split('/').map(decodeURIComponent);
  const view = views[name] || overview;
  if (current) current.unmount();
  for (const link of document.querySelectorAll('nav a')) {
    if (link.dataset.view === name) link.setAttribute('aria-current', 'page');
    else link.removeAttribute('aria-current');
  }
  const main = document.getElementById('main');
  main.replaceChildren();
  current = view.mount(main, rest);
  main.focus();
}

function showLogin() {
  state.user = null;
  if (socket) { socket.onclose = null; socket.close(); socket = null; }
  document.getElementById('app').hidden = true;
  document.getElementById('login-view').hidden = false;
  document.querySelector('#login-form input').focus();
}

function showApp(session) {
  state.user = session.user;
  state.role = session.role;
  document.getElementById('whoami').textContent = `${session.user} · ${session.role}`;
  setCsrf(session.csrf_token);
  document.getElementById('login-view').hidden = true;
  document.getElementById('app').hidden = false;
  connect();
  route();
}

async function login(event) {
  event.preventDefault();
  const form = new FormData(event.target);
  const error = document.getElementById('login-error');
  error.textContent = '';
  const token = form.get('token');
  const body = token ? { token } : { user: form.get('user'), password: form.get('password') };
  try {
    showApp(await api('POST', '/session', body));
    event.target.reset();
  } catch (failure) {
    error.textContent = failure.message;
  }
}

async function logout() {
  await attempt(() => api('DELETE', '/session'));
  showLogin();
}

window.addEventListener('hashchange', () => { if (state.user) route(); });
document.getElementById('login-form').addEventListener('submit', login);
document.getElementById('logout').addEventListener('click', logout);

api('GET', '/session').then(showApp, () => showLogin());

// Re-render relative times now and then.
setInterval(() => changed('tick'), 5000);

