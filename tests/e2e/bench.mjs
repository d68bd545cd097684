// Dashboard benchmark in Debian's Chromium (started by tests/bench/dashboard.rs): the page's
// first render on loopback, what the first load downloads (and that nothing leaves the
// node), and the time from an event on the node to the DOM showing it, over N events.

import { createRequire } from 'node:module';
import { chromium } from 'playwright-core';

// playwright-core bundles `ws`: a WebSocket client outside the browser.
const { ws: WebSocketClient } = createRequire(import.meta.url)('playwright-core/lib/utilsBundle');

const URL_ = process.env.NODE_URL;
const TOKEN = process.env.TOKEN;
const EVENTS = Number(process.env.EVENTS || 200);

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  args: ['--headless=new', '--no-sandbox', '--disable-gpu', '--disable-dev-shm-usage', '--disable-quic',
    '--no-first-run', '--disable-background-networking', '--disable-component-update', '--disable-sync'],
});
const pct = (sorted, p) => sorted[Math.min(sorted.length - 1, Math.round((sorted.length - 1) * p))];
try {
  const context = await browser.newContext();
  const page = await context.newPage();
  const requests = [];
  page.on('request', (request) => requests.push(request.url()));
  await page.goto(URL_);
  await page.getByLabel('Admin token').fill(TOKEN);
  await page.getByRole('button', { name: 'Sign in' }).click();
  await page.locator('#connection', { hasText: 'live' }).waitFor();

  // First render: a fresh load with the session, until the overview shows the node.
  const renders = [];
  const sizes = [];
  for (let i = 0; i < 5; i += 1) {
    requests.length = 0;
    await page.goto('about:blank');
    await page.goto(`${URL_}/#overview`, { waitUntil: 'commit' });
    await page.waitForFunction(() => {
      const heading = document.querySelector('#main h2');
      return heading && heading.textContent.startsWith('Node ');
    });
    renders.push(await page.evaluate(() => performance.now()));
    sizes.push(await page.evaluate(() => performance.getEntriesByType('navigation').concat(performance.getEntriesByType('resource'))
      .reduce((sum, e) => sum + (e.transferSize || e.encodedBodySize || 0), 0)));
  }
  const outside = requests.filter((u) => !u.startsWith(URL_) && !u.startsWith(URL_.replace('http', 'ws')));
  renders.sort((a, b) => a - b);
  console.log(`first render (navigation start to the overview showing the node, 5 loads): median ${pct(renders, 0.5).toFixed(0)} ms, worst ${renders[4].toFixed(0)} ms (target < 300 ms)`);
  console.log(`first load: ${(sizes[sizes.length - 1] / 1024).toFixed(1)} KiB in ${requests.length} requests (target < 200 KB; xterm.js loads only with a terminal); requests leaving the node: ${outside.length}`);

  // Event to DOM: the node's event time (`at`) to the row appearing in Workspaces.
  await page.getByRole('link', { name: 'Workspaces' }).click();
  await page.evaluate(() => {
    window.seen = {};
    window.at = {};
    window.recv = {};
    new MutationObserver(() => {
      const now = Date.now();
      for (const row of document.querySelectorAll('tr[data-workspace^="ev-"]')) {
        const name = row.dataset.workspace;
        if (!(name in window.seen)) window.seen[name] = now;
      }
    }).observe(document.getElementById('main'), { childList: true, subtree: true });
    // A second subscriber only to learn each event's time on the node.
    const socket = new WebSocket(`ws://${location.host}/api/v1/events`);
    socket.onmessage = (event) => {
      const message = JSON.parse(event.data);
      if (message.type === 'workspace_changed' && message.change === 'created') {
        window.at[message.name] = Date.parse(message.at);
        window.recv[message.name] = Date.now();
      }
    };
    return new Promise((resolve) => { socket.onopen = resolve; });
  });
  // The same events to a client outside the browser: what the node and the network take,
  // without the page's main thread.
  const outsideAt = {};
  const outsideRecv = {};
  const outside_ = new WebSocketClient(`${URL_.replace('http', 'ws')}/api/v1/events`, { headers: { Authorization: `Bearer ${TOKEN}` } });
  outside_.on('message', (data) => {
    const message = JSON.parse(data.toString());
    if (message.type === 'workspace_changed' && message.change === 'created') {
      outsideAt[message.name] = Date.parse(message.at);
      outsideRecv[message.name] = Date.now();
    }
  });
  await new Promise((resolve, reject) => { outside_.on('open', resolve); outside_.on('error', reject); });
  for (let i = 0; i < EVENTS; i += 1) {
    const response = await fetch(`${URL_}/api/v1/workspaces`, {
      method: 'POST', headers: { Authorization: `Bearer ${TOKEN}`, 'Content-Type': 'application/json' },
      body: JSON.stringify({ name: `ev-${i}` }),
    });
    if (response.status !== 201) throw new Error(`create ev-${i}: ${response.status}`);
    await new Promise((resolve) => setTimeout(resolve, Number(process.env.GAP_MS || 15)));
  }
  for (let waited = 0; ; waited += 100) {
    const [seen, at] = await page.evaluate(() => [Object.keys(window.seen).length, Object.keys(window.at).length]);
    if (seen >= EVENTS && at >= EVENTS) break;
    if (waited > 60_000) throw new Error(`only ${seen} rows and ${at} events after 60 s`);
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
  const latencies = await page.evaluate(() => Object.keys(window.at).map((name) => window.seen[name] - window.at[name]));
  const delivery = await page.evaluate(() => Object.keys(window.at).map((name) => window.recv[name] - window.at[name]));
  const direct = Object.keys(outsideAt).map((name) => outsideRecv[name] - outsideAt[name]).sort((a, b) => a - b);
  outside_.close();
  console.log(`  node to a client outside the browser (same events, ${direct.length}): p50 ${pct(direct, 0.5)} ms, p99 ${pct(direct, 0.99)} ms`);
  delivery.sort((a, b) => a - b);
  console.log(`  of which node to browser (the event's WebSocket message arriving): p50 ${pct(delivery, 0.5)} ms, p99 ${pct(delivery, 0.99)} ms`);
  latencies.sort((a, b) => a - b);
  console.log(`event to DOM over ${latencies.length} events (Workspaces view, growing to ${latencies.length} rows): p50 ${pct(latencies, 0.5)} ms, p99 ${pct(latencies, 0.99)} ms, max ${latencies[latencies.length - 1]} ms (target p99 < 100 ms)`);
} finally {
  await browser.close();
}
