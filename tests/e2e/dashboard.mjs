// Dashboard end-to-end test in Debian's Chromium, driven by Playwright. Started by
// tests/dashboard.rs, which runs three real nodes (A, B, C) discovering each other over
// loopback and passes their addresses in the environment. Protocol with the harness: this
// script prints `ACTION kill-c` and waits for a line on stdin before checking C's card.

import assert from 'node:assert/strict';
import readline from 'node:readline';
import { chromium } from 'playwright-core';

const env = (name) => {
  const value = process.env[name];
  if (!value) throw new Error(`missing ${name}`);
  return value;
};
const A = env('NODE_A_URL');
const B = env('NODE_B_URL');
const shots = process.env.SCREENSHOT_DIR;
const timeout = 20_000;

const stdin = readline.createInterface({ input: process.stdin });
const lines = stdin[Symbol.asyncIterator]();
async function action(name) {
  console.log(`ACTION ${name}`);
  const { value } = await lines.next();
  assert.equal(value, 'done', `harness answered ${value} to ${name}`);
}

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  args: ['--headless=new', '--no-sandbox', '--disable-gpu', '--disable-dev-shm-usage', '--disable-quic',
    '--no-first-run', '--disable-background-networking', '--disable-component-update', '--disable-sync'],
});
const step = (text) => console.log(`step: ${text}`);

try {
  // Without a session the page shows only the login.
  const a = await (await browser.newContext()).newPage();
  a.setDefaultTimeout(timeout);
  await a.goto(A);
  await a.locator('#login-form').waitFor();
  assert.equal(await a.locator('#app').isVisible(), false);
  step('login page only');

  // A wrong login is refused in place.
  await a.getByLabel('Admin token').fill('not-the-token');
  await a.getByRole('button', { name: 'Sign in' }).click();
  await a.locator('#login-error', { hasText: 'wrong' }).waitFor();
  assert.equal(await a.locator('#app').isVisible(), false);
  step('wrong login refused');

  // Log in with the admin token; the overview shows the node.
  await a.getByLabel('Admin token').fill(env('TOKEN_A'));
  await a.getByRole('button', { name: 'Sign in' }).click();
  await a.locator('#app').waitFor();
  await a.locator('#connection', { hasText: 'live' }).waitFor();
  await a.getByRole('heading', { name: `Node ${env('NAME_A')}` }).waitFor();
  step('logged in on A');

  // Create a workspace; a bad name is explained next to the field.
  await a.getByRole('link', { name: 'Workspaces' }).click();
  const create = a.getByRole('form', { name: 'Create a workspace' });
  await create.getByLabel('Name').fill('Bad Name');
  await create.getByRole('button', { name: 'Create' }).click();
  await create.locator('.field-error[data-field="name"]', { hasText: 'not a valid name' }).waitFor();
  await create.getByLabel('Name').fill('vision-lab');
  await create.getByLabel('Title').fill('Vision lab');
  await create.getByLabel('Tags (comma separated)').fill('vision, cnn');
  await create.getByLabel('Type').selectOption('training');
  await create.getByRole('button', { name: 'Create' }).click();
  const row = a.locator('tr[data-workspace="vision-lab"]');
  await row.waitFor();
  await row.getByLabel('Tags of vision-lab').getByText('cnn').waitFor();
  step('workspace created, its tags listed');

  // A workspace from a git repository: named after it, its checkout shown with its state.
  await create.getByLabel('From git repository').fill(`${env('GIT_URL')}@main`);
  await create.getByRole('button', { name: 'Create' }).click();
  const toolRow = a.locator('tr[data-workspace="tool"]');
  await toolRow.waitFor();
  await toolRow.getByText('Edit, history').click();
  const project = toolRow.getByRole('list', { name: 'Projects of tool' }).locator('li[data-project="tool"]');
  await project.getByText(/on main · origin\/main · clean/).waitFor();
  await toolRow.getByText('Edit, history').click();
  step('workspace from git, its checkout state shown');

  // Environment settings: a proposal from the project files, a validation error shown next to
  // the editor, then saved.
  await row.getByText('Edit, history').click();
  await row.getByRole('button', { name: 'Propose an environment for vision-lab' }).click();
  const envForm = row.getByRole('form', { name: 'Environment default of vision-lab' });
  await envForm.waitFor();
  const yaml = await envForm.getByRole('textbox').inputValue();
  assert.match(yaml, /kind: terminal/);
  await envForm.getByRole('textbox').fill(`${yaml}ports: [{port: 0}]\n`);
  await envForm.getByRole('button', { name: 'Create default' }).click();
  await envForm.locator('.field-error', { hasText: 'ports[0]' }).waitFor();
  await envForm.getByRole('textbox').fill(yaml);
  await envForm.getByRole('button', { name: 'Create default' }).click();
  await a.locator('tr[data-workspace="vision-lab"] td', { hasText: 'r2' }).waitFor();
  step('environment proposed, refused with the field, saved');
  await row.getByText('Edit, history').click();

  // Share it.
  await row.getByRole('switch', { name: 'Share vision-lab' }).check();
  await a.locator('tr[data-workspace="vision-lab"] td', { hasText: 'r3' }).waitFor();
  step('shared');
  if (shots) await a.screenshot({ path: `${shots}/workspaces.png`, fullPage: true });

  // On B (logged in as a user), it appears in the network catalog without a reload.
  const b = await (await browser.newContext()).newPage();
  b.setDefaultTimeout(timeout);
  await b.goto(`${B}/#network`);
  await b.getByLabel('User').fill(env('USER_B'));
  await b.getByLabel('Password').fill(env('PASSWORD_B'));
  await b.getByRole('button', { name: 'Sign in' }).click();
  await b.getByRole('link', { name: 'Network' }).click();
  const entry = b.locator('table[aria-label="Network catalog"] tr[data-workspace="vision-lab"]');
  await entry.waitFor();
  step('B sees the share live');

  // Search and filter.
  const catalog = b.getByRole('search');
  await catalog.getByLabel('Search', { exact: true }).fill('nothing-like-this');
  await entry.waitFor({ state: 'detached' });
  await catalog.getByLabel('Search', { exact: true }).fill('VISION');
  await entry.waitFor();
  await catalog.getByLabel('Type', { exact: true }).selectOption('dataset');
  await entry.waitFor({ state: 'detached' });
  await catalog.getByLabel('Type', { exact: true }).selectOption('training');
  await entry.waitFor();
  await catalog.getByLabel('Peer', { exact: true }).selectOption(env('NAME_A'));
  await entry.waitFor();
  step('search and filters');

  // Clone it on B: the progress bar moves, and the workspace appears in B's Workspaces.
  await action('fill-a');
  await entry.getByRole('button', { name: `Clone vision-lab from ${env('NAME_A')}` }).click();
  await b.getByRole('heading', { name: 'Transfers' }).waitFor();
  const job = b.locator('article.transfer').first();
  await job.waitFor();
  await b.waitForFunction(() => {
    const bar = document.querySelector('article.transfer progress');
    return bar && bar.value > 0 && bar.value < 100;
  });
  step('clone progress moves');
  if (shots) await b.screenshot({ path: `${shots}/transfers.png`, fullPage: true });
  await b.locator('article.transfer[data-state="done"]').waitFor();
  await b.getByRole('link', { name: 'Workspaces' }).click();
  await b.locator('tr[data-workspace="vision-lab"]').waitFor();
  step('clone done and listed in Workspaces');
  // A clone offers Sync and Push back to its origin; unchanged, it has nothing to push.
  const cloneRow = b.locator('tr[data-workspace="vision-lab"]');
  await cloneRow.getByRole('button', { name: `Sync vision-lab from ${env('NAME_A')}` }).waitFor();
  await cloneRow.getByRole('button', { name: `Push vision-lab to ${env('NAME_A')}` }).click();
  await b.locator('#flash', { hasText: 'Nothing to push' }).waitFor();
  step('a clone pushes back');
  await b.getByRole('link', { name: 'Network' }).click();
  await entry.waitFor();

  // Unsharing on A removes it from B live.
  await row.getByRole('switch', { name: 'Share vision-lab' }).uncheck();
  await entry.waitFor({ state: 'detached' });
  step('unshare reaches B');
  if (shots) await b.screenshot({ path: `${shots}/network.png`, fullPage: true });

  // Run a workspace with an HTTP tool on A: the tool button opens it through the proxy, the
  // terminal panel runs a command, the logs show the tool's output, Stop stops it.
  await action('prepare-run');
  await a.getByRole('link', { name: 'Run' }).click();
  const runCard = a.locator('article.runcard[data-workspace="serve-demo"]');
  await runCard.waitFor();
  await runCard.getByRole('button', { name: 'Run serve-demo' }).click();
  const openTool = runCard.getByRole('link', { name: 'Open app of serve-demo' });
  await openTool.waitFor();
  await runCard.locator('.badge[data-state="running"]').waitFor();
  step('run: the tool is ready');
  const [tab] = await Promise.all([a.context().waitForEvent('page'), openTool.click()]);
  await tab.waitForLoadState();
  const toolText = await tab.textContent('body');
  assert.match(toolText, /^hello \/w\/serve-demo\/app\/ base=\/w\/serve-demo\/app\//);
  assert.notEqual(new URL(tab.url()).origin, new URL(A).origin, 'the tool has an origin of its own');
  await tab.close();
  step('tool opened on its own origin, signed in by a ticket');
  await runCard.getByRole('button', { name: 'Open terminal term of serve-demo/web' }).click();
  await a.locator('.term-panel .xterm-screen').waitFor();
  await a.locator('.panel [role="status"]', { hasText: 'connected' }).waitFor();
  await a.locator('.term-panel').click();
  await a.keyboard.type('echo $((6*7))');
  await a.keyboard.press('Enter');
  await a.waitForFunction(() => [...document.querySelectorAll('.term-panel .xterm-rows > div')]
    .some((row) => row.textContent.trim() === '42'));
  step('terminal panel runs a command');
  await runCard.getByRole('button', { name: 'Logs of serve-demo/web' }).click();
  await a.locator('pre.log', { hasText: '[web/app] hello tool listening' }).waitFor();
  step('live logs');
  if (shots) {
    await a.screenshot({ path: `${shots}/run.png`, fullPage: true });
    await a.setViewportSize({ width: 390, height: 844 });
    await a.screenshot({ path: `${shots}/run-phone.png`, fullPage: true });
    for (const view of ['overview', 'network', 'workspaces', 'transfers']) {
      await a.getByRole('link', { name: view[0].toUpperCase() + view.slice(1) }).click();
      await a.screenshot({ path: `${shots}/${view}-phone.png`, fullPage: true });
    }
    await a.setViewportSize({ width: 1280, height: 900 });
    await a.emulateMedia({ colorScheme: 'dark' });
    await a.getByRole('link', { name: 'Run' }).click();
    await a.screenshot({ path: `${shots}/run-dark.png`, fullPage: true });
    await a.emulateMedia({ colorScheme: 'light' });
    for (const view of ['overview', 'network']) {
      await a.getByRole('link', { name: view[0].toUpperCase() + view.slice(1) }).click();
      await a.screenshot({ path: `${shots}/${view}.png`, fullPage: true });
    }
    await a.getByRole('link', { name: 'Run' }).click();
  }
  await runCard.getByRole('button', { name: 'Stop serve-demo' }).click();
  await runCard.locator('.badge[data-state="stopped"]').waitFor();
  step('stopped');

  // CI: a run started from the CLI appears live with its exit code, and its log opens.
  await a.getByRole('link', { name: 'CI' }).click();
  await a.getByRole('heading', { name: 'CI runs' }).waitFor();
  await action('ci-run');
  const ciCard = a.locator('article.ci-run[data-state="failed"]', { hasText: 'serve-demo' });
  await ciCard.waitFor();
  await ciCard.locator('p.muted', { hasText: 'exit 3' }).waitFor();
  await ciCard.getByText('Log', { exact: true }).click();
  await ciCard.locator('pre.log', { hasText: 'from-the-ci-run' }).waitFor();
  step('CI run listed live with its log');
  if (shots) await a.screenshot({ path: `${shots}/ci.png`, fullPage: true });

  // Trust: C is known, with its key id; trusting it after comparing the key id shows it
  // trusted, live.
  const card = b.locator('article[data-peer="gamma"] .badge[data-state]');
  await b.locator('article[data-peer="gamma"] .badge[data-state="online"]').waitFor();
  await b.locator('article[data-peer="gamma"] .badge[data-trust="known"]').waitFor();
  const keyId = (await b.locator('article[data-peer="gamma"] .key-id').textContent()).trim();
  assert.match(keyId, /^[A-Z2-7]{7}(-[A-Z2-7]{7}){7}$/);
  b.once('dialog', (dialog) => dialog.accept(keyId));
  await b.getByRole('button', { name: 'Trust gamma' }).click();
  await b.locator('article[data-peer="gamma"] .badge[data-trust="trusted"]').waitFor();
  step('peer trusted after comparing its key id');
  await b.getByRole('button', { name: 'Stop trusting gamma' }).click();
  await b.locator('article[data-peer="gamma"] .badge[data-trust="known"]').waitFor();
  step('trust revoked');

  // Kill C: its card turns stale, then gone, live.
  await action('kill-c');
  await b.locator('article[data-peer="gamma"] .badge[data-state="stale"]').waitFor();
  await b.locator('article[data-peer="gamma"] .badge[data-state="gone"]').waitFor();
  assert.equal(await card.textContent(), 'gone');
  step('killed peer turns stale then gone');

  // Sign out returns to the login.
  await b.getByRole('button', { name: 'Sign out' }).click();
  await b.locator('#login-form').waitFor();
  await b.reload();
  await b.locator('#login-form').waitFor();
  assert.equal(await b.locator('#app').isVisible(), false);
  step('signed out');
  console.log('PASS');
} finally {
  await browser.close();
  stdin.close();
}
