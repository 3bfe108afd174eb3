#!/usr/bin/env node
// Chaos end to end through the real inferd (supervision issue): greedy requests over
// WebSocket protocol v1 (npm `ws`), compared token for token with a fault-free run of the
// same binary and model.
//
//   node tests/e2e/chaos-e2e.js --inferd build/bin/inferd [--requests 1000] [--only chaos|poison]
//
// 1. fault-free: N greedy requests (synthetic:tiny, short prompts, 16 tokens) -> reference.
// 2. chaos: the same N with --fault-rate 0.01 --fault-kind mixed (throw | cuda | hang, the
//    hangs caught by a short step_timeout_ms): every request ends with done (none
//    quarantined), every token stream equals the reference, /metrics counts the failures
//    and the restarts.
// 3. poison: 100 of them with one prompt carrying --fault-poison-token: that one is
//    quarantined (error internal), the 99 others complete with their reference tokens.
// 4. fallback: a primary worker whose every step fails (a dead GPU) and one CPU fallback
//    worker: requests complete with their reference tokens and say "degraded":["cpu_fallback"]
//    (WebSocket done, OpenAI response and final SSE chunk); /metrics counts them.
// Exit status 0 when every check passes.
'use strict';
const assert = require('node:assert/strict');
const path = require('node:path');
const lib = require('./e2e-lib.js');
const {arg, sleep, waitFor, running} = lib;
const WebSocket = lib.need('ws');

const INFERD = arg('--inferd', path.join(lib.repo, 'build', 'bin', 'inferd'));
const N = parseInt(arg('--requests', '1000'), 10);
const ONLY = arg('--only', null);  // chaos | poison | fallback
const MAX_TOKENS = 16;
const CONNECTIONS = 8;
const VOCAB = 256;  // synthetic:tiny has a byte-level vocabulary

// ---- inferd -------------------------------------------------------------------------------

// Every server of this test: the same binary, model and batching; `extra` adds the faults.
async function startInferd(name, extra, workers = 2) {
  const args = ['--listen', '127.0.0.1:0', '--backend', 'cpu', '--model', 'synthetic:tiny',
    '--workers', String(workers), '--max-running', '16', '--queue-capacity', '4096',
    '--set', 'queue.default_timeout_ms=0', '--set', 'backend.cpu_threads=1', '--log-level', 'warn', ...extra];
  const inst = await lib.startInferd(INFERD, name, args, {stopAfterMs: 60000});
  await waitFor(`${name}: /readyz`, async () => {
    if (inst.exited) throw new Error(`${name}: inferd exited (${JSON.stringify(inst.exited)}):\n${inst.log}`);
    return (await get(inst.port, '/readyz')).status === 200;
  }, 120000);
  return inst;
}

const get = lib.httpGet;

// Value of one sample (`name` with its labels, exactly as exposed), NaN when absent.
function metric(text, name) {
  const esc = name.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
  const m = text.match(new RegExp(`^${esc} (\\S+)$`, 'm'));
  return m ? Number(m[1]) : NaN;
}
function metricSum(text, family) {
  let sum = 0;
  for (const m of text.matchAll(new RegExp(`^${family}\\{[^}]*\\} (\\S+)$`, 'gm'))) sum += Number(m[1]);
  return sum;
}

// ---- the workload -----------------------------------------------------------------------------

function splitmix(seed) {
  let x = BigInt.asUintN(64, BigInt(seed));
  return () => {
    x = BigInt.asUintN(64, x + 0x9E3779B97F4A7C15n);
    let z = x;
    z = BigInt.asUintN(64, (z ^ (z >> 30n)) * 0xBF58476D1CE4E5B9n);
    z = BigInt.asUintN(64, (z ^ (z >> 27n)) * 0x94D049BB133111EBn);
    return z ^ (z >> 31n);
  };
}

function makePrompts(n) {
  const next = splitmix(20261125);
  const prompts = [];
  for (let i = 0; i < n; i++) {
    const len = 4 + Number(next() % 8n);
    const p = [];
    for (let k = 0; k < len; k++) p.push(Number(next() % BigInt(VOCAB)));
    prompts.push(p);
  }
  return prompts;
}

// Sends every prompt (greedy, MAX_TOKENS) over CONNECTIONS WebSocket connections at once and
// collects each request's frames. Returns [{tokens, terminal, frames}] in prompt order.
async function runAll(port, prompts, timeoutMs = 600000) {
  const results = prompts.map(() => ({frames: [], tokens: [], terminal: null}));
  const conns = [];
  for (let c = 0; c < CONNECTIONS; c++) {
    const ws = new WebSocket(`ws://127.0.0.1:${port}/v1/stream`);
    await new Promise((resolve, reject) => { ws.on('open', resolve); ws.on('error', reject); });
    conns.push(ws);
  }
  let left = prompts.length;
  let done;
  const all = new Promise((resolve) => { done = resolve; });
  if (left === 0) done();
  for (const ws of conns) {
    ws.on('message', (data) => {
      const f = JSON.parse(data.toString());
      const r = results[Number(f.id)];
      assert.ok(r, `frame for an unknown id: ${data}`);
      assert.equal(r.terminal, null, `frame after the terminal one: ${data}`);
      r.frames.push(f);
      if (f.type === 'token') {
        assert.equal(f.index, r.tokens.length, `token index: ${data}`);
        r.tokens.push(f.token);
      }
      if (f.type === 'done' || f.type === 'error') {
        r.terminal = f;
        if (--left === 0) done();
      }
    });
  }
  prompts.forEach((p, i) => {
    conns[i % CONNECTIONS].send(JSON.stringify({type: 'generate', id: String(i), prompt_tokens: p,
      max_tokens: MAX_TOKENS, temperature: 0}));
  });
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${left} of ${prompts.length} requests without a terminal event`)),
      timeoutMs);
  });
  await Promise.race([all, timeout]);
  clearTimeout(timer);
  for (const ws of conns) ws.close();
  return results;
}

function expectDone(r, i, degraded) {
  assert.equal(r.frames[0].type, 'accepted', `request ${i}: ${JSON.stringify(r.frames[0])}`);
  assert.equal(r.terminal.type, 'done', `request ${i}: ${JSON.stringify(r.terminal)}`);
  assert.equal(r.terminal.finish_reason, 'length', `request ${i}: ${JSON.stringify(r.terminal)}`);
  assert.equal(r.terminal.usage.completion_tokens, r.tokens.length);
  assert.deepEqual(r.terminal.degraded, degraded, `request ${i} degraded: ${JSON.stringify(r.terminal)}`);
}

// ---- main -----------------------------------------------------------------------------------

async function main() {
  const prompts = makePrompts(N);
  const t0 = Date.now();
  const clean = await startInferd('fault-free', []);
  const ref = await runAll(clean.port, prompts);
  await clean.stop();
  ref.forEach((r, i) => {
    expectDone(r, i);
    assert.equal(r.tokens.length, MAX_TOKENS);
  });
  console.log(`fault-free: ${N} requests in ${Date.now() - t0} ms`);

  if (!ONLY || ONLY === 'chaos') {
    const t1 = Date.now();
    const chaos = await startInferd('chaos', ['--fault-rate', '0.01', '--fault-seed', '7', '--fault-kind', 'mixed',
      '--set', 'supervision.step_timeout_ms=500', '--set', 'supervision.max_restarts=1000',
      '--set', 'supervision.breaker_open_ms=100', '--set', 'supervision.backoff_max_ms=200']);
    const got = await runAll(chaos.port, prompts);
    // A worker restarts after its back-off, which may outlast the last request: read the
    // figures once every failed step has its restart (or fail on the timeout).
    const text = await waitFor('a restart for every failed step', async () => {
      const t = (await get(chaos.port, '/metrics')).body;
      return metric(t, 'infer_worker_restarts_total') >= metric(t, 'infer_step_failures_total') ? t : null;
    }, 20000).catch(async () => (await get(chaos.port, '/metrics')).body);
    const status = JSON.parse((await get(chaos.port, '/v1/status')).body);
    await chaos.stop();
    let mismatched = 0;
    got.forEach((r, i) => {
      expectDone(r, i);
      if (JSON.stringify(r.tokens) !== JSON.stringify(ref[i].tokens)) {
        if (mismatched++ < 5) console.error(`request ${i}: ${r.tokens} where the fault-free run gave ${ref[i].tokens}`);
      }
    });
    assert.equal(mismatched, 0, `${mismatched} token streams differ from the fault-free run`);
    const failures = metric(text, 'infer_step_failures_total');
    const timeouts = metric(text, 'infer_step_timeouts_total');
    const restarts = metric(text, 'infer_worker_restarts_total');
    console.log(`chaos: ${N} requests in ${Date.now() - t1} ms; step failures ${failures} ` +
      `(watchdog ${timeouts}), worker restarts ${restarts}`);
    assert.equal(metric(text, 'infer_requests_total{outcome="done_length"}'), N);
    assert.equal(metric(text, 'infer_requests_quarantined_total'), 0);
    assert.ok(failures > 0, 'no fault was injected: the run proves nothing');
    // Every failed step restarts its worker (a CUDA-like fault: the whole device's).
    assert.ok(restarts >= failures, `${restarts} restarts for ${failures} failed steps`);
    assert.equal(metricSum(text, 'infer_worker_restarts_by_worker_total'), restarts);
    assert.equal(status.workers.reduce((s, w) => s + w.restarts, 0), restarts);
  }

  if (!ONLY || ONLY === 'poison') {
    const t2 = Date.now();
    const n = Math.min(100, N);
    const planted = Math.floor(n / 3);
    // A poison token that no other request's prompt or output holds.
    const used = new Set();
    for (let i = 0; i < n; i++) {
      if (i === planted) continue;
      prompts[i].forEach((t) => used.add(t));
      ref[i].tokens.forEach((t) => used.add(t));
    }
    let poison = -1;
    for (let t = 0; t < VOCAB && poison < 0; t++) if (!used.has(t)) poison = t;
    assert.ok(poison >= 0, 'every token is in use: no poison token to plant');
    const batch = prompts.slice(0, n).map((p) => p.slice());
    batch[planted][Math.floor(batch[planted].length / 2)] = poison;
    const srv = await startInferd('poison', ['--fault-poison-token', String(poison)]);
    const got = await runAll(srv.port, batch);
    const text = (await get(srv.port, '/metrics')).body;
    await srv.stop();
    got.forEach((r, i) => {
      if (i === planted) return;
      expectDone(r, i);
      assert.deepEqual(r.tokens, ref[i].tokens, `request ${i}: tokens differ from the fault-free run`);
    });
    const bad = got[planted].terminal;
    assert.equal(bad.type, 'error', JSON.stringify(bad));
    assert.equal(bad.code, 'internal', JSON.stringify(bad));
    assert.match(bad.message, /quarantined/);
    assert.match(bad.message, new RegExp(`poison token ${poison}`));
    assert.equal(metric(text, 'infer_requests_quarantined_total'), 1);
    assert.equal(metric(text, 'infer_requests_total{outcome="internal"}'), 1);
    assert.equal(metric(text, 'infer_requests_total{outcome="done_length"}'), n - 1);
    console.log(`poison: token ${poison} planted in request ${planted} of ${n}: quarantined ` +
      `(${metric(text, 'infer_step_failures_total')} failed steps), the others done, in ${Date.now() - t2} ms`);
  }

  if (!ONLY || ONLY === 'fallback') {
    const t3 = Date.now();
    const n = Math.min(20, N);
    const srv = await startInferd('fallback', ['--fault-rate', '1', '--fault-kind', 'cuda',
      '--set', 'supervision.breaker_failures=1', '--set', 'supervision.breaker_open_ms=600000',
      '--set', 'supervision.max_restarts=1000', '--set', 'degradation.fallback_cpu_workers=1'], 1);
    const got = await runAll(srv.port, prompts.slice(0, n));
    got.forEach((r, i) => {
      expectDone(r, i, ['cpu_fallback']);
      assert.deepEqual(r.tokens, ref[i].tokens, `request ${i}: tokens differ from the fault-free run`);
    });
    // The OpenAI routes say so too: the whole response, and the final chunk of a stream.
    const body = {prompt: prompts[0], max_tokens: MAX_TOKENS, temperature: 0};
    const whole = JSON.parse((await get(srv.port, '/v1/completions', body)).body);
    assert.deepEqual(whole.degraded, ['cpu_fallback'], JSON.stringify(whole));
    const sse = (await get(srv.port, '/v1/completions', {...body, stream: true})).body;
    const chunks = sse.split('\n').filter((l) => l.startsWith('data: {')).map((l) => JSON.parse(l.slice(6)));
    const last = chunks[chunks.length - 1];
    assert.equal(last.choices[0].finish_reason, 'length', sse);
    assert.deepEqual(last.degraded, ['cpu_fallback'], sse);
    assert.ok(chunks.slice(0, -1).every((c) => c.degraded === undefined), sse);
    const text = (await get(srv.port, '/metrics')).body;
    const status = JSON.parse((await get(srv.port, '/v1/status')).body);
    await srv.stop();
    assert.equal(metric(text, 'infer_degraded_requests_total{kind="cpu_fallback"}'), n + 2);
    assert.equal(metric(text, 'infer_degradation_active{kind="cpu_fallback"}'), 1);
    assert.equal(metric(text, 'infer_requests_quarantined_total'), 0);
    const fb = status.workers.find((w) => w.id === 1);
    assert.ok(fb && fb.device === -2 && fb.state === 'running' && fb.backend === 'cpu', JSON.stringify(status));
    assert.equal(status.workers.find((w) => w.id === 0).breaker, 'open', JSON.stringify(status));
    console.log(`fallback: ${n} requests served by the CPU fallback worker in ${Date.now() - t3} ms`);
  }
}

main().then(() => {
  console.log('chaos e2e: all checks passed');
  process.exit(0);
}, async (e) => {
  console.error(e && e.stack ? e.stack : e);
  for (const inst of running) {
    console.error(`--- ${inst.name} log (tail) ---\n${inst.log.slice(-4000)}`);
    inst.proc.kill('SIGKILL');
  }
  process.exit(1);
});
