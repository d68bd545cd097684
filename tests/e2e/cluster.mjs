// The cluster view and the "Run on…" dialog in Debian's Chromium with 50 peers. Started by
// tests/cluster_scale.rs with a requester node (NODE_URL, TOKEN) that trusts PEERS lending
// nodes and has a workspace `scale` with an environment `web`.

import assert from 'node:assert/strict';
import { chromium } from 'playwright-core';

const env = (name) => {
  const value = process.env[name];
  if (!value) throw new Error(`missing ${name}`);
  return value;
};
const peers = Number(env('PEERS'));
const shots = process.env.SCREENSHOT_DIR;
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  args: ['--headless=new', '--no-sandbox', '--disable-gpu', '--disable-dev-shm-usage', '--no-first-run'],
});
try {
  const page = await (await browser.newContext()).newPage();
  page.setDefaultTimeout(30_000);
  await page.goto(env('NODE_URL'));
  await page.getByLabel('Admin token').fill(env('TOKEN'));
  await page.getByRole('button', { name: 'Sign in' }).click();
  await page.locator('#connection', { hasText: 'live' }).waitFor();

  // Every node, with its offer (streamed over the event socket as the node asks them).
  const started = Date.now();
  await page.getByRole('link', { name: 'Cluster' }).click();
  const rows = page.locator('table[aria-label="Cluster nodes"] tbody tr');
  await page.waitForFunction((n) => {
    const all = [...document.querySelectorAll('table[aria-label="Cluster nodes"] tbody tr')];
    return all.length === n + 1 && all.every((row) => row.children[2].textContent.includes('CPU'));
  }, peers);
  console.log(`step: cluster view shows ${await rows.count()} nodes with their offers in ${Date.now() - started} ms`);
  assert.equal(await page.locator('table[aria-label="Cluster nodes"] tbody tr[data-state="online"]').count(), peers);
  assert.match(await page.locator('[role="status"]', { hasText: 'nodes' }).textContent(), new RegExp(`${peers + 1} nodes, ${peers} lending`));
  if (shots) await page.screenshot({ path: `${shots}/cluster-50.png`, fullPage: true });

  // "Run on…": every candidate's fit, best first.
  await page.getByRole('link', { name: 'Run', exact: true }).click();
  await page.getByRole('button', { name: 'Place scale/web on a peer' }).click();
  const candidates = page.locator('table[aria-label="Candidates"] tbody tr');
  await candidates.nth(peers - 1).waitFor();
  assert.equal(await candidates.count(), peers);
  assert.equal(await candidates.first().getAttribute('data-peer'), 'n03');
  await page.getByText('Best: n03').waitFor();
  console.log(`step: the Run on… dialog lists ${await candidates.count()} candidates, n03 first`);
  if (shots) await page.screenshot({ path: `${shots}/run-on-50.png`, fullPage: true });

  // Run it on the best: the card follows it there, and its tool opens through this node.
  await page.getByRole('button', { name: 'Run on the best (n03)' }).click();
  const card = page.locator('[data-workspace="scale"] [data-env="web"]');
  await card.locator('[data-placed-on="n03"]').waitFor();
  await page.locator('[data-workspace="scale"] [data-env="web"][data-state="running"]').waitFor({ timeout: 120_000 });
  const [tool] = await Promise.all([
    page.context().waitForEvent('page'),
    page.getByRole('link', { name: 'Open web of scale' }).click(),
  ]);
  await tool.waitForLoadState();
  await tool.getByText('Directory listing').first().waitFor();
  assert.notEqual(new URL(tool.url()).port, new URL(env('NODE_URL')).port, 'the tool opens on its own origin');
  console.log(`step: placed on n03; its tool opened through the hub at ${new URL(tool.url()).origin}`);
  console.log('PASS');
} finally {
  await browser.close();
}
