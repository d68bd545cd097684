// Workspaces: this node's workspaces — create, edit, share, history and restore, export and
// import, delete. Validation errors appear next to the field they name.

import { state, onChange, attempt, flash } from './app.js';
import { api, ApiError } from './api.js';
import { h, ago, reconcile } from './dom.js';

const TYPES = ['general', 'notebook', 'training', 'fine-tuning', 'inference', 'dataset', 'model', 'app', 'course'];

/// Shows an API failure next to the fields it names, or as one message.
function showErrors(form, error) {
  for (const slot of form.querySelectorAll('.field-error')) slot.textContent = '';
  const fields = error instanceof ApiError && error.details && (error.details.fields || (error.details.field ? [{ field: error.details.field, message: error.message }] : null));
  let placed = false;
  for (const { field, message } of fields || []) {
    const key = field.split(/[.[]/)[0];
    const slot = form.querySelector(`.field-error[data-field="${key}"]`);
    if (slot) { slot.textContent = message; placed = true; }
  }
  const general = form.querySelector('.field-error[data-field="_"]');
  if (!placed && general) general.textContent = error.message;
}

function input(label, name, attrs = {}) {
  const id = `f-${name}-${Math.random().toString(36).slice(2, 7)}`;
  return h('div', {},
    h('label', { for: id }, label),
    h('input', { id, name, ...attrs }),
    h('div', { class: 'field-error', 'data-field': name, 'aria-live': 'polite' }));
}

function createForm() {
  const form = h('form', { class: 'inline', 'aria-label': 'Create a workspace' },
    input('Name', 'name', { placeholder: 'my-project (or the repository\'s)' }),
    input('Title', 'title'),
    input('Tags (comma separated)', 'tags', { placeholder: 'nlp, llm' }),
    h('div', {}, h('label', { for: 'create-type' }, 'Type'), h('select', { id: 'create-type', name: 'type' }, TYPES.map((t) => h('option', { value: t, text: t }))), h('div', { class: 'field-error', 'data-field': 'type' })),
    h('div', {}, h('label', { for: 'create-template' }, 'Template'), templateSelect()),
    input('Parameters (key=value, comma separated)', 'parameters', { placeholder: 'python=3.11, model=llama' }),
    input('From directory on the node', 'from_dir', { placeholder: '/home/me/project' }),
    input('From git repository (URL, @branch/tag/commit optional)', 'git', { placeholder: 'https://git.example.org/team/model.git@main' }),
    h('button', { type: 'submit' }, 'Create'),
    h('div', { class: 'field-error', 'data-field': '_' }));
  form.addEventListener('submit', async (event) => {
    event.preventDefault();
    const data = new FormData(form);
    const body = { name: data.get('name').trim(), type: data.get('type') };
    if (data.get('title')) body.title = data.get('title');
    const tags = data.get('tags').split(',').map((t) => t.trim()).filter(Boolean);
    if (tags.length) body.tags = tags;
    if (data.get('template')) body.template = data.get('template');
    const parameters = Object.fromEntries(data.get('parameters').split(',').map((p) => p.trim()).filter(Boolean)
      .map((p) => { const at = p.indexOf('='); return at < 0 ? [p, ''] : [p.slice(0, at).trim(), p.slice(at + 1).trim()]; }));
    if (Object.keys(parameters).length) body.parameters = parameters;
    if (data.get('from_dir')) body.from_dir = data.get('from_dir');
    if (data.get('git').trim()) body.git = parseGit(data.get('git').trim());
    try {
      await api('POST', '/workspaces', body);
      form.reset();
      showErrors(form, new Error(''));
    } catch (error) {
      showErrors(form, error);
    }
  });
  return form;
}

/// The templates to start from: built-in, this node's, and those peers share (with their
/// parameters in the option's title).
function templateSelect() {
  const select = h('select', { id: 'create-template', name: 'template' },
    h('option', { value: '', text: 'empty' }), h('option', { value: 'python', text: 'python' }), h('option', { value: 'notebook', text: 'notebook' }));
  attempt(async () => {
    const listed = await api('GET', '/templates');
    const describe = (t) => t.template.parameters.map((p) => (p.default !== undefined ? `${p.name}=${p.default}` : `${p.name} (required)`)).join(', ');
    const group = (label, items) => items.length ? h('optgroup', { label },
      items.map((t) => h('option', { value: t.name, text: t.name, title: describe(t) }))) : null;
    select.append(...[group('This node', listed.local), group('Shared by peers', listed.network)].filter(Boolean));
  });
  return select;
}

/// `URL@REF` as the CLI reads it: a ref only after an `@` that follows the repository's path
/// (the `@` of `git@host:` belongs to the URL).
function parseGit(text) {
  const at = text.lastIndexOf('@');
  if (at > 0) {
    const url = text.slice(0, at);
    const ref = text.slice(at + 1);
    const scheme = url.indexOf('://');
    const afterHost = scheme >= 0 ? url.slice(scheme + 3).includes('/') : url.includes(':');
    if (afterHost && ref && !ref.includes(':')) return { url, ref };
  }
  return { url: text };
}

/// Each project's checkout as the node reads it: commit, branch, upstream, uncommitted work.
function projectsView(workspace) {
  const list = h('ul', { class: 'projects', 'aria-label': `Projects of ${workspace.name}` });
  const section = h('section', {}, h('h3', {}, 'Projects'), list);
  if (!workspace.projects.length) {
    list.append(h('li', { class: 'muted', text: 'no projects' }));
    return section;
  }
  attempt(async () => {
    const detail = await api('GET', `/workspaces/${workspace.id}`);
    list.replaceChildren(...detail.projects.map((p) => h('li', { 'data-project': p.name },
      h('strong', { text: p.name }), ` ${p.path} `, gitLine(p))));
  });
  return section;
}

function gitLine(project) {
  const git = project.git;
  if (!git) return h('span', { class: 'muted', text: project.git_url ? `declared ${project.git_url} (not a checkout here)` : '' });
  if (git.error) return h('span', { class: 'field-error', text: `git not read: ${git.error}` });
  const parts = [`${git.commit ? git.commit.slice(0, 12) : 'no commit yet'} ${git.branch ? `on ${git.branch}` : '(detached)'}`];
  if (git.upstream) parts.push(`${git.upstream}${git.ahead ? `, ${git.ahead} ahead` : ''}${git.behind ? `, ${git.behind} behind` : ''}`);
  parts.push(git.dirty ? `${git.changed_count} uncommitted: ${git.changed.slice(0, 5).join(', ')}${git.changed_count > 5 ? ' …' : ''}` : 'clean');
  const remotes = git.remotes.map((r) => `${r.name} ${r.url}`).join('; ');
  return h('span', { class: git.dirty ? 'git dirty' : 'git', title: remotes, text: parts.join(' · ') },
    ...git.warnings.map((w) => h('div', { class: 'field-error', text: w })));
}

function importForm() {
  const file = h('input', { type: 'file', name: 'archive', accept: '.zst,.tar.zst', required: true });
  const form = h('form', { class: 'inline', 'aria-label': 'Import a workspace' },
    h('label', {}, 'Archive (.tar.zst)', file),
    input('Import as (optional)', 'as'),
    h('button', { type: 'submit' }, 'Import'),
    h('div', { class: 'field-error', 'data-field': '_' }));
  form.addEventListener('submit', async (event) => {
    event.preventDefault();
    const name = new FormData(form).get('as');
    try {
      const result = await api('POST', `/workspaces/import${name ? `?as=${encodeURIComponent(name)}` : ''}`, file.files[0], 'application/zstd');
      form.reset();
      flash(null);
      for (const note of result.notes) flash(note);
    } catch (error) {
      showErrors(form, error);
    }
  });
  return form;
}

function editor(workspace) {
  const form = h('form', { class: 'inline', 'aria-label': `Edit ${workspace.name}` },
    input('Title', 'title', { value: workspace.title }),
    input('Description', 'description', { value: workspace.description }),
    input('Tags (comma separated)', 'tags', { value: workspace.tags.join(', ') }),
    h('button', { type: 'submit' }, 'Save'),
    h('span', { class: 'saved', role: 'status', 'aria-live': 'polite' }),
    h('div', { class: 'field-error', 'data-field': '_' }));
  form.addEventListener('submit', async (event) => {
    event.preventDefault();
    const data = new FormData(form);
    const tags = data.get('tags').split(',').map((t) => t.trim()).filter(Boolean);
    const saved = form.querySelector('.saved');
    saved.textContent = '';
    try {
      const updated = await api('PATCH', `/workspaces/${workspace.id}`, {
        title: data.get('title'), description: data.get('description'), tags, expected_revision: workspace.revision,
      });
      showErrors(form, new Error(''));
      saved.textContent = `Saved (r${updated.revision})`;
    } catch (error) {
      showErrors(form, error);
    }
  });
  const history = h('ol', { class: 'feed' });
  const load = h('button', { type: 'button', class: 'link', onclick: async () => {
    const revisions = await attempt(() => api('GET', `/workspaces/${workspace.id}/revisions`));
    if (!revisions) return;
    history.replaceChildren(...revisions.reverse().map((r) => h('li', {},
      `r${r.revision} ${r.change} by ${r.by}, ${ago(r.at)} `,
      r.revision === workspace.revision ? h('span', { class: 'muted', text: '(current)' })
        : h('button', { type: 'button', class: 'link', onclick: () => attempt(() => api('POST', `/workspaces/${workspace.id}/revisions/${r.revision}/restore`)) }, `Restore r${r.revision}`))));
  } }, 'Show history');
  return h('div', {}, form, projectsView(workspace), load, history, environmentsEditor(workspace));
}

/// Environment settings: each environment.yaml in an editor, saved with validation messages
/// next to it; a new one can start from what the project files suggest.
function environmentsEditor(workspace) {
  const section = h('section', { class: 'envs', 'aria-label': `Environments of ${workspace.name}` }, h('h3', {}, 'Environments'));
  const editorFor = (name, text, isNew) => {
    const id = `env-${workspace.name}-${name}-${Math.random().toString(36).slice(2, 7)}`;
    const area = h('textarea', { id, rows: 10, spellcheck: 'false', class: 'yaml' });
    area.value = text;
    const errors = h('div', { class: 'field-error', 'data-field': 'environment', 'aria-live': 'polite' });
    const form = h('form', { class: 'env-form', 'aria-label': `Environment ${name} of ${workspace.name}` },
      h('label', { for: id }, `environments/${name}/environment.yaml`), area, errors,
      h('button', { type: 'submit' }, isNew ? `Create ${name}` : `Save ${name}`));
    form.addEventListener('submit', async (event) => {
      event.preventDefault();
      errors.textContent = '';
      try {
        await api('PUT', `/workspaces/${workspace.id}/environments/${encodeURIComponent(name)}`, area.value, 'application/yaml');
        flash(null);
      } catch (error) {
        const fields = (error.details && error.details.fields) || [];
        errors.replaceChildren(h('div', { text: error.message }), ...fields.map((f) => h('div', { text: `${f.field}: ${f.message}` })));
      }
    });
    return form;
  };
  for (const name of workspace.environments) {
    const holder = h('div', {}, h('p', { class: 'muted', text: `loading ${name}…` }));
    section.append(holder);
    api('GET', `/workspaces/${workspace.id}/environments/${encodeURIComponent(name)}`)
      .then((text) => holder.replaceChildren(editorFor(name, text, false)))
      .catch((error) => holder.replaceChildren(h('p', { class: 'error', text: error.message })));
  }
  const newName = h('input', { name: 'env-name', value: workspace.environments.length ? '' : 'default', placeholder: 'default', 'aria-label': `New environment name for ${workspace.name}` });
  const slot = h('div');
  const propose = h('button', { type: 'button', 'aria-label': `Propose an environment for ${workspace.name}`, onclick: async () => {
    const name = newName.value.trim() || 'default';
    const proposal = await attempt(() => api('POST', `/workspaces/${workspace.id}/detect`));
    if (!proposal) return;
    slot.replaceChildren(h('ul', { class: 'feed' }, proposal.findings.map((f) => h('li', { text: f }))), editorFor(name, proposal.yaml, true));
  } }, 'Propose from project files');
  section.append(h('div', { class: 'inline' }, newName, propose), slot);
  return section;
}

function row(workspace, open) {
  const share = h('input', { type: 'checkbox', role: 'switch', checked: workspace.sharing.enabled, 'aria-label': `Share ${workspace.name}` });
  share.addEventListener('change', () => attempt(async () => {
    const updated = await api('POST', `/workspaces/${workspace.id}/${share.checked ? 'share' : 'unshare'}`);
    for (const warning of updated?.warnings ?? []) flash(warning);
  }));
  const remove = h('button', { type: 'button', class: 'danger', onclick: async () => {
    if (!window.confirm(`Delete workspace ${workspace.name} and all its files?`)) return;
    await attempt(() => api('DELETE', `/workspaces/${workspace.id}`));
  } }, 'Delete');
  // A clone syncs from its origin (keeping its own changes) and pushes them back there.
  const origin = workspace.origin;
  const push = origin && h('button', { type: 'button', 'aria-label': `Push ${workspace.name} to ${origin.peer_name}`, onclick: async () => {
    push.disabled = true;
    push.textContent = 'Pushing…';
    const result = await attempt(() => api('POST', `/workspaces/${workspace.id}/push`, {}));
    push.disabled = false;
    push.textContent = 'Push';
    if (result) {
      flash(result.state === 'done'
        ? `Pushed ${result.changes} changed paths to ${result.peer}/${result.workspace}: revision ${result.revision} there. ${result.notes.slice(1).join(' ')}`
        : `Nothing to push: ${result.peer}/${result.workspace} already has it. ${result.notes.slice(1).join(' ')}`);
    }
  } }, 'Push');
  const sync = origin && h('button', { type: 'button', 'aria-label': `Sync ${workspace.name} from ${origin.peer_name}`, onclick: () => attempt(async () => {
    await api('POST', '/transfers', { kind: 'sync', workspace: workspace.id });
    flash(`Syncing ${workspace.name} from ${origin.peer_name}: see Transfers`);
  }) }, 'Sync');
  // The editor is built when opened: a list of many workspaces renders fast.
  const details = h('details', { open, 'data-name': workspace.name }, h('summary', {}, 'Edit, history'));
  const fill = () => { if (details.open && details.childElementCount === 1) details.append(editor(workspace)); };
  details.addEventListener('toggle', fill);
  fill();
  return h('tr', { 'data-workspace': workspace.name },
    h('td', {}, h('strong', { text: workspace.name }), workspace.title ? h('div', { class: 'muted', text: workspace.title }) : null,
      workspace.tags.length ? h('div', { class: 'tags', 'aria-label': `Tags of ${workspace.name}` }, workspace.tags.map((t) => h('span', { class: 'tag', text: t }))) : null,
      details),
    h('td', { text: workspace.type }),
    h('td', { text: `r${workspace.revision}` }),
    h('td', {}, h('label', { class: 'switch' }, share, 'Shared')),
    h('td', {}, h('a', { href: `/api/v1/workspaces/${workspace.id}/export`, download: `${workspace.name}.tar.zst` }, 'Export'), ' ',
      ...(origin ? [sync, ' ', push, ' '] : []), remove));
}

export function mount(main) {
  const body = h('tbody');
  main.append(
    h('h2', {}, 'Create a workspace'), createForm(),
    h('h2', {}, 'Workspaces on this node'),
    h('table', { 'aria-label': 'Workspaces' },
      h('thead', {}, h('tr', {}, ['Workspace', 'Type', 'Revision', 'Sharing', 'Actions'].map((c) => h('th', { scope: 'col', text: c })))),
      body),
    h('h2', {}, 'Import'), importForm());
  // Rows are kept per workspace and rebuilt only when that workspace changed (the store
  // sends a new object for each change), so an event costs one row, not the whole table.
  const rows = new Map();
  const render = () => {
    const list = [...state.workspaces.values()].sort((a, b) => a.name.localeCompare(b.name));
    const next = new Map();
    for (const workspace of list) {
      const kept = rows.get(workspace.id);
      if (kept && kept.workspace === workspace) {
        next.set(workspace.id, kept);
      } else {
        const open = Boolean(kept && kept.element.querySelector('details[open]'));
        next.set(workspace.id, { workspace, element: row(workspace, open) });
      }
    }
    rows.clear();
    for (const [id, entry] of next) rows.set(id, entry);
    const elements = list.map((w) => rows.get(w.id).element);
    // Only touch the DOM where a row is new, moved or gone: replacing every row made the
    // browser lay the whole table out again for each event, which delayed the next events.
    reconcile(body, elements);
  };
  render();
  const stop = onChange((kind) => { if (kind === 'workspaces' || kind === 'snapshot') render(); });
  return { unmount: stop };
}
