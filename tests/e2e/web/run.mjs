#!/usr/bin/env node
// Browser end-to-end test of the playground and dashboard (web/) served by the real inferd:
// playwright-core drives Debian's chromium headless, the page talks to inferd over its own
// WebSocket and fetches, exactly as a person's browser would.
//
//   node tests/e2e/web/run.mjs --inferd build/bin/inferd [--artifacts build/test-artifacts]
//        [--chromium /usr/bin/chromium] [--only NAME]
//
// Each inferd starts on a free loopback port (--listen 127.0.0.1:0 --port-file) with
// --model synthetic:tiny --backend cpu. Screenshots land in the artifacts folder.
// Exit status 0 when every check passes.
import assert from 'node:assert/strict';
import fs from 'node:fs';
import http from 'node:http';
import os from 'node:os';
import path from 'node:path';
import { createRequire } from 'node:module';

const lib = createRequire(import.meta.url)('../e2e-lib.js');
const { repo, arg, sleep, waitFor, running } = lib;
const require = createRequire(path.join(lib.npmModules, 'x.js'));
const { chromium } = require('playwright-core');
const WebSocket = require('ws');

const INFERD = arg('--inferd', path.join(repo, 'build', 'bin', 'inferd'));
const ARTIFACTS = arg('--artifacts', path.join(repo, 'build', 'test-artifacts'));
const CHROMIUM = arg('--chromium', '/usr/bin/chromium');
const ONLY = arg('--only', null);

// ---- inferd ---------------------------------------------------------------------------

async function startInferd(name, extra = []) {
  const inst = await lib.startInferd(INFERD, name, ['--listen', '127.0.0.1:0', '--model', 'synthetic:tiny',
    '--backend', 'cpu', '--log-level', 'warn', ...extra]);
  await waitFor(`${name}: /readyz`, async () => {
    if (inst.exited) throw new Error(`${name}: inferd exited (${JSON.stringify(inst.exited)}):\n${inst.log}`);
    return (await request(inst.port, 'GET', '/readyz')).status === 200;
  }, 180000);
  inst.url = `http://127.0.0.1:${inst.port}`;
  return inst;
}

function request(port, method, p, body) {
  return new Promise((resolve, reject) => {
    const data = body === undefined ? undefined : JSON.stringify(body);
    const req = http.request({ host: '127.0.0.1', port, method, path: p,
      headers: data !== undefined ? { 'Content-Type': 'application/json', 'Content-Length': Buffer.byteLength(data) } : {} },
    (res) => {
      let buf = '';
      res.setEncoding('utf8');
      res.on('data', (c) => { buf += c; });
      res.on('end', () => resolve({ status: res.statusCode, headers: res.headers, body: buf }));
    });
    req.on('error', reject);
    req.setTimeout(60000, () => req.destroy(new Error('http timeout')));
    if (data !== undefined) req.write(data);
    req.end();
  });
}

// Keeps `depth` long requests in flight on one connection, resubmitting as each ends,
// until stop(). Counts the terminal events it saw by type/code.
async function flood(port, { depth = 4, maxTokens = 1000 } = {}) {
  const ws = new WebSocket(`ws://127.0.0.1:${port}/v1/stream`);
  await new Promise((res, rej) => { ws.once('open', res); ws.once('error', rej); });
  let n = 0, stopped = false;
  const seen = {};
  const submit = () => {
    if (stopped) return;
    ws.send(JSON.stringify({ type: 'generate', id: `f${n++}`, prompt: 'flood', max_tokens: maxTokens, temperature: 0.9, seed: n }));
  };
  ws.on('message', (d) => {
    const ev = JSON.parse(d);
    if (ev.type === 'done' || ev.type === 'error') {
      const k = ev.type === 'done' ? `done_${ev.finish_reason}` : ev.code;
      seen[k] = (seen[k] || 0) + 1;
      // A rejected request comes back at once: wait a little rather than spin.
      if (ev.type === 'error') setTimeout(submit, 20); else submit();
    }
  });
  for (let i = 0; i < depth; i++) submit();
  return {
    seen,
    stop() { stopped = true; ws.close(); },
  };
}

// ---- browser --------------------------------------------------------------------------

let context;
const pageErrors = [];

async function launch() {
  const userDataDir = fs.mkdtempSync(path.join(os.tmpdir(), 'inferd-web-chromium-'));
  context = await chromium.launchPersistentContext(userDataDir, {
    executablePath: CHROMIUM,
    headless: true,
    viewport: { width: 1400, height: 1000 },
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking',
      '--disable-component-update', '--no-first-run', '--disable-sync', '--disable-quic'],
  });
  context.setDefaultTimeout(60000);
  return userDataDir;
}

async function openPage(inst, p = '/') {
  const page = await context.newPage();
  page.on('pageerror', (e) => pageErrors.push(`${p}: ${e.message}`));
  await page.goto(inst.url + p);
  await page.waitForSelector('#conn[data-state="open"]');
  return page;
}

async function screenshot(page, name) {
  fs.mkdirSync(ARTIFACTS, { recursive: true });
  const file = path.join(ARTIFACTS, `web-${name}.png`);
  await page.screenshot({ path: file, fullPage: true });
  console.log(`  screenshot ${file}`);
}

async function fillParams(page, params) {
  for (const [k, v] of Object.entries(params)) await page.fill(`#${k}`, String(v));
}

// Records the token counter's text at each change, with the run state at that moment.
// A MutationObserver callback runs after each task, and each WebSocket message is its own
// task: one observation per token frame if the page renders each token as it arrives.
async function watchCounter(page, { cancelAt = 0 } = {}) {
  await page.evaluate((cancelAt) => {
    const seen = (window.__seen = []);
    window.__cancelled = false;
    const count = document.getElementById('token-count');
    const status = document.getElementById('status');
    window.__observer?.disconnect();
    window.__observer = new MutationObserver(() => {
      const n = Number(count.textContent);
      // 0 is the page clearing the previous run.
      if (n > 0) seen.push({ n, state: status.dataset.state });
      // >=, once: two token frames can land in one task under load, skipping the count.
      if (cancelAt && n >= cancelAt && !window.__cancelled) {
        window.__cancelled = true;
        document.getElementById('cancel').click();
      }
    });
    window.__observer.observe(count, { childList: true, characterData: true, subtree: true });
  }, cancelAt);
}

async function terminalState(page) {
  const el = await page.waitForSelector('#status[data-state="done"], #status[data-state="cancelled"], #status[data-state="error"]');
  return el.getAttribute('data-state');
}

// ---- tests ----------------------------------------------------------------------------

const tests = [];
const test = (name, fn) => tests.push({ name, fn });

test('static', async ({ main }) => {
  const root = await request(main.port, 'GET', '/');
  assert.equal(root.status, 200);
  assert.match(root.headers['content-type'], /^text\/html/);
  assert.match(root.body, /<canvas id="plot-tokens"/);
  const js = await request(main.port, 'GET', '/app.js');
  assert.equal(js.status, 200);
  assert.match(js.headers['content-type'], /^text\/javascript/);
  assert.equal(js.body, fs.readFileSync(path.join(repo, 'web', 'app.js'), 'utf8'));
  assert.equal((await request(main.port, 'GET', '/dashboard')).body, root.body);
  // The API is untouched by the static routes.
  assert.equal((await request(main.port, 'GET', '/no-such-file.js')).status, 404);
  assert.equal((await request(main.port, 'GET', '/healthz')).status, 200);
  assert.match((await request(main.port, 'GET', '/metrics')).body, /infer_tokens_generated_total/);
});

test('stream', async ({ main }) => {
  const page = await openPage(main);
  assert.equal(await page.getAttribute('#status', 'data-state'), 'idle');
  await page.fill('#prompt', 'The playground streams');
  await fillParams(page, { max_tokens: 48, temperature: 0, top_k: 0, top_p: 1, seed: 3 });
  await watchCounter(page);
  await page.click('#generate');
  assert.equal(await terminalState(page), 'done');
  const seen = await page.evaluate(() => window.__seen);
  // Each token was on screen on its own, while the request was still running.
  assert.deepEqual(seen.map((s) => s.n), Array.from({ length: 48 }, (_, i) => i + 1),
    `counter observations: ${JSON.stringify(seen.map((s) => s.n))}`);
  assert.ok(seen.every((s) => s.state === 'running'), `states while counting: ${JSON.stringify(seen)}`);
  assert.equal(await page.textContent('#token-count'), '48');
  assert.equal(await page.locator('#output-text .tok').count(), 48);
  assert.match(await page.getAttribute('#output-text .tok >> nth=0', 'title'), /^#0 id \d+$/);
  assert.match(await page.getAttribute('#output-text .tok >> nth=47', 'title'), /^#47 id \d+$/);
  assert.equal(await page.textContent('#status'), 'done (length)');
  assert.equal(await page.isVisible('#result'), true);
  assert.equal(await page.textContent('#r-finish'), 'length');
  assert.equal(await page.textContent('#r-completion'), '48');
  assert.match(await page.textContent('#r-total'), /^\d+(\.\d)? ms$/);
  assert.equal(await page.isVisible('#error'), false);
  // What the page shows is the server's completion: the same request through the OpenAI
  // endpoint (greedy, so deterministic) gives the same text.
  const shown = await page.textContent('#output-text');
  const ref = await request(main.port, 'POST', '/v1/completions',
    { prompt: 'The playground streams', max_tokens: 48, temperature: 0, seed: 3 });
  assert.equal(ref.status, 200, ref.body);
  assert.equal(shown, JSON.parse(ref.body).choices[0].text);
  await screenshot(page, 'stream');

  // A second request on the same page and connection.
  await fillParams(page, { max_tokens: 5 });
  await watchCounter(page);
  await page.click('#generate');
  assert.equal(await terminalState(page), 'done');
  assert.deepEqual((await page.evaluate(() => window.__seen)).map((s) => s.n), [1, 2, 3, 4, 5]);
  assert.equal(await page.textContent('#r-completion'), '5');
  await page.close();
});

test('cancel', async ({ main }) => {
  const page = await openPage(main);
  await page.fill('#prompt', 'A long story');
  await fillParams(page, { max_tokens: 1000, temperature: 0.8, seed: 11 });
  assert.equal(await page.isDisabled('#cancel'), true);
  // The page clicks Cancel itself on the 5th token, so the test does not race the model.
  await watchCounter(page, { cancelAt: 5 });
  await page.click('#generate');
  assert.equal(await terminalState(page), 'cancelled');
  assert.equal(await page.textContent('#status'), 'cancelled');
  assert.equal(await page.textContent('#r-finish'), 'cancelled');
  const shown = Number(await page.textContent('#token-count'));
  assert.ok(shown >= 5 && shown < 1000, `tokens shown: ${shown}`);
  assert.equal(Number(await page.textContent('#r-completion')), shown);
  assert.equal(await page.isDisabled('#cancel'), true);
  assert.equal(await page.isEnabled('#generate'), true);
  assert.equal(await page.isVisible('#error'), false);
  await screenshot(page, 'cancel');
  await page.close();
});

test('invalid', async ({ main }) => {
  const page = await openPage(main);
  await page.fill('#prompt', 'x');
  await fillParams(page, { max_tokens: 4, top_p: 2 });
  await page.click('#generate');
  assert.equal(await terminalState(page), 'error');
  assert.equal(await page.getAttribute('#error', 'data-code'), 'invalid_request');
  assert.equal(await page.textContent('#error-code'), 'invalid_request');
  assert.match(await page.textContent('#error-message'), /top_p/);
  assert.equal(await page.textContent('#status'), 'error: invalid_request');
  await screenshot(page, 'invalid');
  // The connection stays usable: fix the value and generate.
  await fillParams(page, { top_p: 1 });
  await page.click('#generate');
  assert.equal(await terminalState(page), 'done');
  assert.equal(await page.isVisible('#error'), false);
  assert.equal(await page.textContent('#token-count'), '4');
  await page.close();
});

test('overloaded', async () => {
  const small = await startInferd('small', ['--queue-capacity', '1', '--max-running', '1']);
  const f = await flood(small.port, { depth: 6 });
  try {
    const page = await openPage(small);
    await page.fill('#prompt', 'let me in');
    await fillParams(page, { max_tokens: 3 });
    // The flood keeps the one running slot and the one queue slot taken; a request of the
    // page can still slip into a gap between two flood requests, so try a few times.
    let state = null;
    for (let i = 0; i < 20 && state !== 'error'; i++) {
      await page.click('#generate');
      state = await terminalState(page);
    }
    assert.equal(state, 'error');
    assert.equal(await page.getAttribute('#error', 'data-code'), 'overloaded');
    assert.equal(await page.textContent('#status'), 'error: overloaded');
    assert.ok((await page.textContent('#error-message')).length > 0);
    assert.match(await page.textContent('#error-retry'), /retry after \d+ ms/);
    assert.match(await page.textContent('#error-hint'), /queue is full/);
    assert.ok(f.seen.overloaded > 0, `flood saw ${JSON.stringify(f.seen)}`);
    // The dashboard of that server counts the rejections.
    await page.waitForFunction(() => Number(document.querySelector('#outcomes tr[data-outcome="overloaded"] td')?.textContent) > 0);
    await screenshot(page, 'overloaded');

    // The server going away mid-request: the page ends the request (the server cancels it
    // as it shuts down, or the connection drops first) and says it is disconnected.
    f.stop();
    await page.waitForFunction(() => Number(document.getElementById('t-running').textContent) === 0);
    await fillParams(page, { max_tokens: 1000 });
    await watchCounter(page);
    await page.click('#generate');
    await page.waitForFunction(() => window.__seen.length >= 3);
    await small.stop();
    const end = await terminalState(page);
    if (end === 'error') assert.equal(await page.getAttribute('#error', 'data-code'), 'disconnected');
    // A shutdown drains: a request that finished before the drain ended is done (length).
    else if (end === 'done') assert.equal(await page.textContent('#status'), 'done (length)');
    else assert.equal(end, 'cancelled');
    await page.waitForSelector('#conn:not([data-state="open"])');
    assert.match(await page.textContent('#conn'), /connecting|disconnected/);
    // The dashboard says its scrapes fail rather than freezing on the last numbers.
    await page.waitForSelector('#scrape[data-state="error"]');
    await page.close();
  } finally {
    f.stop();
    await small.stop();
  }
});

test('dashboard', async ({ main }) => {
  const page = await openPage(main, '/dashboard');
  assert.equal(await page.isVisible('#playground'), false);
  assert.equal(await page.isVisible('#dashboard'), true);
  const plots = ['plot-tokens', 'plot-load', 'plot-batch', 'plot-ttft', 'plot-itl', 'plot-outcomes'];
  const points = () => page.evaluate((ids) => ids.map((id) => Number(document.getElementById(id).dataset.points)), plots);
  await page.waitForFunction(() => Number(document.getElementById('plot-tokens').dataset.points) >= 2);
  const before = await points();
  const tokensBefore = Number(await page.textContent('#t-tokens'));
  assert.equal(await page.getAttribute('#scrape', 'data-state'), 'ok');
  assert.equal(await page.textContent('#t-ready'), 'yes');

  const f = await flood(main.port, { depth: 2, maxTokens: 200 });
  try {
    // Live traffic shows up: a positive tokens/s point, a TTFT percentile, tokens counted.
    await page.waitForFunction(() => (JSON.parse(document.getElementById('plot-tokens').dataset.last || '[0]')[0] || 0) > 0);
    await page.waitForFunction(() => JSON.parse(document.getElementById('plot-ttft').dataset.last || '[null]')[0] > 0);
    await page.waitForFunction(() => JSON.parse(document.getElementById('plot-itl').dataset.last || '[null]')[0] > 0);
    await page.waitForFunction(() => JSON.parse(document.getElementById('plot-batch').dataset.last || '[null]')[0] >= 1);
    await page.waitForFunction((n) => Number(document.getElementById('t-tokens').textContent) > n, tokensBefore);
  } finally {
    f.stop();
  }
  const after = await points();
  plots.forEach((id, i) => assert.ok(after[i] > before[i], `${id}: ${before[i]} -> ${after[i]} points`));
  // The supervision panel either shows the tree or says plainly that there is none.
  await page.waitForSelector('#supervision:not([data-state="waiting"])');
  const sup = await page.getAttribute('#supervision', 'data-state');
  if (sup === 'ok') {
    assert.ok(Number(await page.getAttribute('#supervision', 'data-workers')) >= 1);
    await page.waitForSelector('#supervision tr[data-worker="0"]');
  } else {
    assert.equal(sup, 'unavailable');
    assert.match(await page.textContent('#supervision'), /not available/);
  }
  await screenshot(page, 'dashboard');
  await page.close();

  // The playground and the dashboard on one page, after some traffic.
  const both = await openPage(main, '/');
  await both.waitForFunction(() => Number(document.getElementById('plot-tokens').dataset.points) >= 3);
  await both.fill('#prompt', 'Once upon a time');
  await fillParams(both, { max_tokens: 40, temperature: 0.7, seed: 5 });
  await both.click('#generate');
  assert.equal(await terminalState(both), 'done');
  await screenshot(both, 'playground');
  await both.close();
});

// The supervision tree as the page draws it from the proposed GET /v1/status shape
// (web/README.md). The browser answers /v1/status itself here, so this checks the page
// whether or not this inferd has the endpoint; the server's own answer is checked above.
// The served model in the header; behind --api-key the page asks for the key, then uses it
// for the WebSocket (subprotocol bearer.KEY) and for its fetches.
test('model-and-key', async ({ main }) => {
  const page = await openPage(main);
  await page.waitForFunction(() => document.getElementById('model').textContent === 'synthetic:tiny');
  assert.equal(await page.isVisible('#key-form'), false);
  await page.close();

  const srv = await startInferd('keyed', ['--api-key', 'web-e2e-key', '--served-model-name', 'tiny-web']);
  try {
    const keyed = await context.newPage();
    keyed.on('pageerror', (e) => pageErrors.push(`model-and-key: ${e.message}`));
    await keyed.goto(srv.url + '/');
    await keyed.waitForSelector('#key-form:not([hidden])');
    assert.match(await keyed.textContent('#model'), /API key needed/);
    assert.notEqual(await keyed.getAttribute('#conn', 'data-state'), 'open');
    await keyed.fill('#api-key', 'web-e2e-key');
    await keyed.click('#key-use');
    await keyed.waitForFunction(() => document.getElementById('model').textContent === 'tiny-web');
    await keyed.waitForSelector('#conn[data-state="open"]');
    await keyed.waitForSelector('#supervision[data-state="ok"]');  // /v1/status fetched with the key
    await keyed.fill('#prompt', 'With a key');
    await fillParams(keyed, { max_tokens: 3, temperature: 0, top_k: 0, top_p: 1, seed: 1 });
    await watchCounter(keyed);
    await keyed.click('#generate');
    assert.equal(await terminalState(keyed), 'done');
    assert.equal(await keyed.textContent('#token-count'), '3');
    await screenshot(keyed, 'api-key');
    await keyed.close();
  } finally {
    await srv.stop();
  }
});

test('supervision', async ({ main }) => {
  let status = {
    workers: [
      { id: 0, backend: 'cpu', state: 'running', restarts: 0, breaker: 'closed', running: 2, kv_free: 100 },
      { id: 1, backend: 'cpu', state: 'restarting', restarts: 3, breaker: 'open', running: 0, kv_free: 0, last_error: 'engine crashed' },
    ],
    queue_depth: 4,
  };
  const page = await context.newPage();
  page.on('pageerror', (e) => pageErrors.push(`supervision: ${e.message}`));
  await page.route('**/v1/status', (route) =>
    route.fulfill({ status: 200, contentType: 'application/json', body: JSON.stringify(status) }));
  await page.goto(main.url + '/dashboard');
  await page.waitForSelector('#supervision[data-state="ok"] tr[data-worker="1"]');
  assert.equal(await page.getAttribute('#supervision', 'data-workers'), '2');
  assert.equal(await page.getAttribute('tr[data-worker="0"]', 'data-state'), 'running');
  assert.equal(await page.getAttribute('tr[data-worker="1"]', 'data-breaker'), 'open');
  assert.equal(await page.textContent('tr[data-worker="1"] .badge.state-restarting'), 'restarting');
  assert.equal(await page.textContent('tr[data-worker="1"] .badge.breaker-open'), 'open');
  assert.match(await page.textContent('#supervision .tree-root'), /queue_depth 4/);
  // An extra field becomes a column.
  assert.match(await page.textContent('#supervision table'), /last_error[\s\S]*engine crashed/);
  await screenshot(page, 'supervision');
  // The worker comes back: the next scrape shows it running, breaker closed, 4 restarts.
  status = { ...status, workers: [status.workers[0], { ...status.workers[1], state: 'running', restarts: 4, breaker: 'closed' }] };
  await page.waitForSelector('tr[data-worker="1"][data-state="running"][data-breaker="closed"]');
  assert.equal(await page.textContent('tr[data-worker="1"] td:nth-child(4)'), '4');
  // And the endpoint going away is said plainly.
  await page.unroute('**/v1/status');
  await page.route('**/v1/status', (route) => route.fulfill({ status: 404, contentType: 'application/json', body: '{}' }));
  await page.waitForSelector('#supervision[data-state="unavailable"]');
  assert.match(await page.textContent('#supervision'), /not available/);
  await page.close();
});

// Chat mode: a conversation over the WebSocket's messages, replies streamed into the
// assistant's bubble, the system prompt editable between turns. What the page sends is
// checked against the server itself: the same conversation through /v1/chat/completions
// (greedy) gives the same reply, and the prompt size it reports is /tokenize's.
test('chat', async ({ main }) => {
  const srv = await startInferd('chat', ['--chat-template', path.join(repo, 'tests', 'e2e', 'data', 'chatml.jinja')]);
  try {
    const page = await openPage(srv);
    assert.equal(await page.isVisible('#system'), false);
    await page.check('#mode-chat');
    assert.equal(await page.isVisible('#system'), true);
    assert.equal(await page.isVisible('#chat-log'), true);
    assert.equal(await page.isVisible('#output'), false);
    assert.equal(await page.textContent('#generate'), 'Send');
    await fillParams(page, { max_tokens: 6, temperature: 0, top_k: 0, top_p: 1, seed: 1 });
    const reference = async (messages) => {
      const r = await request(srv.port, 'POST', '/v1/chat/completions', { messages, max_tokens: 6, temperature: 0 });
      assert.equal(r.status, 200, r.body);
      return JSON.parse(r.body).choices[0].message.content;
    };
    const promptTokens = async (messages) =>
      JSON.parse((await request(srv.port, 'POST', '/tokenize', { messages })).body).count;
    const turn = async (text) => {
      await page.fill('#prompt', text);
      await watchCounter(page);
      await page.click('#generate');
      assert.equal(await terminalState(page), 'done');
      return page.evaluate(() => [...document.querySelectorAll('#chat-log .msg')].map((m) => ({
        role: m.dataset.role, state: m.dataset.state ?? null, text: m.querySelector('.content').textContent,
        tokens: m.querySelectorAll('.tok').length })));
    };

    await page.fill('#system', 'Be brief.');
    let log = await turn('Hello there');
    assert.equal(log.length, 2);
    assert.deepEqual(log[0], { role: 'user', state: null, text: 'Hello there', tokens: 0 });
    assert.equal(log[1].role, 'assistant');
    assert.equal(log[1].state, 'done');
    assert.equal(log[1].tokens, 6);  // streamed token by token into the bubble
    assert.deepEqual((await page.evaluate(() => window.__seen)).map((s) => s.n), [1, 2, 3, 4, 5, 6]);
    assert.equal(await page.inputValue('#prompt'), '');
    const first = [{ role: 'system', content: 'Be brief.' }, { role: 'user', content: 'Hello there' }];
    assert.equal(log[1].text, await reference(first));
    assert.equal(Number(await page.textContent('#r-prompt')), await promptTokens(first));

    // The second turn carries the first; a changed system prompt applies from now on.
    await page.fill('#system', 'Be very brief.');
    log = await turn('And again?');
    assert.equal(log.length, 4);
    const second = [{ role: 'system', content: 'Be very brief.' }, { role: 'user', content: 'Hello there' },
      { role: 'assistant', content: log[1].text }, { role: 'user', content: 'And again?' }];
    assert.equal(log[3].text, await reference(second));
    assert.equal(Number(await page.textContent('#r-prompt')), await promptTokens(second));
    await screenshot(page, 'chat');

    // A turn the server refuses leaves the conversation as it was and gives the text back.
    await fillParams(page, { top_p: 2 });
    await page.fill('#prompt', 'third');
    await page.click('#generate');
    assert.equal(await terminalState(page), 'error');
    assert.match(await page.textContent('#error-message'), /top_p/);
    assert.equal(await page.locator('#chat-log .msg').count(), 4);
    assert.equal(await page.inputValue('#prompt'), 'third');
    await fillParams(page, { top_p: 1 });

    // New chat empties it.
    await page.click('#clear');
    assert.equal(await page.locator('#chat-log .msg').count(), 0);
    await page.close();

    // A server without a chat template says how to get one.
    const plain = await openPage(main);
    await plain.check('#mode-chat');
    await plain.fill('#prompt', 'hi');
    await plain.click('#generate');
    assert.equal(await terminalState(plain), 'error');
    assert.equal(await plain.getAttribute('#error', 'data-code'), 'invalid_request');
    assert.match(await plain.textContent('#error-message'), /--chat-template/);
    assert.equal(await plain.locator('#chat-log .msg').count(), 0);
    await plain.close();
  } finally {
    await srv.stop();
  }
});

// ---- main -----------------------------------------------------------------------------

let failed = 0;
let main;
try {
  main = await startInferd('main');
  await launch();
  for (const t of tests) {
    if (ONLY && t.name !== ONLY) continue;
    const t0 = Date.now();
    try {
      await t.fn({ main });
      console.log(`ok   ${t.name} (${Date.now() - t0} ms)`);
    } catch (e) {
      failed++;
      console.log(`FAIL ${t.name}: ${e.stack || e}`);
      for (const p of context.pages()) await screenshot(p, `${t.name}-failure`).catch(() => {});
    }
  }
  if (pageErrors.length) {
    failed++;
    console.log(`FAIL uncaught errors in the page:\n  ${pageErrors.join('\n  ')}`);
  }
} catch (e) {
  failed++;
  console.log(`FAIL setup: ${e.stack || e}`);
} finally {
  if (context) await context.close().catch(() => {});
  for (const inst of [...running]) {
    await inst.stop();
    if (inst.exited.code !== 0) console.log(`note: ${inst.name} exited ${JSON.stringify(inst.exited)}\n${inst.log.slice(-2000)}`);
  }
}
console.log(failed ? `${failed} failed` : 'all passed');
process.exit(failed ? 1 : 0);
