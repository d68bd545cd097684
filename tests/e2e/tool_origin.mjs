// Tools on their own origins, in Debian's Chromium, driven by Playwright. Started by
// tests/tool_origin.rs with one node running workspace `nb`: JupyterLab (`lab`), an HTTP tool
// (`app`) and a terminal. Signs into the dashboard, opens both tools from it, checks
// JupyterLab opens without a token prompt, then runs a hostile script inside the JupyterLab
// page (as a notebook output or a cloned web app would) and checks every attack fails while
// the tool itself keeps working. Prints PASS at the end.

import assert from 'node:assert/strict';
import { chromium } from 'playwright-core';

const env = (name) => {
  const value = process.env[name];
  if (!value) throw new Error(`missing ${name}`);
  return value;
};
const dashboard = env('NODE_URL');
const step = (text) => console.log(`step: ${text}`);

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  args: ['--headless=new', '--no-sandbox', '--disable-gpu', '--disable-dev-shm-usage', '--disable-quic',
    '--no-first-run', '--disable-background-networking', '--disable-component-update', '--disable-sync'],
});

try {
  const context = await browser.newContext();
  const page = await context.newPage();
  page.setDefaultTimeout(30_000);
  await page.goto(dashboard);
  await page.getByLabel('Admin token').fill(env('TOKEN'));
  await page.getByRole('button', { name: 'Sign in' }).click();
  await page.locator('#app').waitFor();
  step('signed into the dashboard');

  // Opening a tool from the dashboard lands on the tool's own origin, signed in.
  const app = await context.newPage();
  await app.goto(`${dashboard}/w/nb/app/`);
  const appOrigin = new URL(app.url()).origin;
  assert.notEqual(appOrigin, new URL(dashboard).origin);
  assert.match(await app.textContent('body'), /^hello \/w\/nb\/app\//);
  assert.equal(new URL(app.url()).search, '', 'the ticket is gone from the address bar');
  step(`app opened on ${appOrigin}`);

  const lab = await context.newPage();
  lab.setDefaultTimeout(90_000);
  await lab.goto(`${dashboard}/w/nb/lab/lab`);
  const labOrigin = new URL(lab.url()).origin;
  assert.notEqual(labOrigin, new URL(dashboard).origin);
  assert.notEqual(labOrigin, appOrigin);
  await lab.locator('.jp-DirListing-item', { hasText: 'hello.ipynb' }).waitFor();
  assert.equal(await lab.locator('input[type=password]').count(), 0, 'JupyterLab asked for a token');
  step(`JupyterLab opened on ${labOrigin} without a token prompt`);

  // A hostile script in the JupyterLab page.
  const results = await lab.evaluate(async ({ dashboard, appOrigin }) => {
    const attempt = async (request) => {
      try {
        const response = await request();
        return `read ${response.status}: ${(await response.text()).slice(0, 80)}`;
      } catch (error) {
        return 'blocked';
      }
    };
    const socket = (url) => new Promise((resolve) => {
      const ws = new WebSocket(url);
      const timer = setTimeout(() => resolve('timeout'), 10_000);
      ws.onopen = () => { clearTimeout(timer); ws.close(); resolve('open'); };
      ws.onerror = () => { clearTimeout(timer); resolve('refused'); };
    });
    const wsBase = dashboard.replace(/^http/, 'ws');
    return {
      cookies: document.cookie,
      session: await attempt(() => fetch(`${dashboard}/api/v1/session`, { credentials: 'include' })),
      list: await attempt(() => fetch(`${dashboard}/api/v1/workspaces`, { credentials: 'include' })),
      remove: await attempt(() => fetch(`${dashboard}/api/v1/workspaces/nb`, { method: 'DELETE', credentials: 'include' })),
      // A "simple" request needs no preflight: it reaches the node, which must refuse it.
      create: await attempt(() => fetch(`${dashboard}/api/v1/workspaces`, {
        method: 'POST', mode: 'no-cors', credentials: 'include',
        headers: { 'content-type': 'text/plain' }, body: '{"name": "evil"}',
      })).then(() => 'sent'),
      events: await socket(`${wsBase}/api/v1/events`),
      terminal: await socket(`${wsBase}/api/v1/workspaces/nb/terminal`),
      otherTool: await attempt(() => fetch(`${appOrigin}/w/nb/app/`, { credentials: 'include' })),
      otherToolByDashboard: await attempt(() => fetch(`${dashboard}/w/nb/app/`, { credentials: 'include' })),
      ownApi: await attempt(() => fetch('/w/nb/lab/api/contents/hello.ipynb')),
    };
  }, { dashboard, appOrigin });
  console.log(`results: ${JSON.stringify(results)}`);
  assert.ok(!results.cookies.includes('aienv_'), `the node's cookies are readable: ${results.cookies}`);
  for (const name of ['session', 'list', 'remove', 'otherTool', 'otherToolByDashboard']) {
    assert.equal(results[name], 'blocked', `${name}: ${results[name]}`);
  }
  assert.equal(results.events, 'refused');
  assert.equal(results.terminal, 'refused');
  assert.match(results.ownApi, /^read 200: .*hello\.ipynb/);
  step('every attack from the tool page failed; the tool itself still works');

  // The page (dashboard) still works, and lists no workspace the script tried to make.
  const names = await page.evaluate(async () => {
    const response = await fetch('/api/v1/workspaces');
    return (await response.json()).items.map((w) => w.name);
  });
  assert.deepEqual(names, ['nb']);
  console.log('PASS');
} finally {
  await browser.close();
}
