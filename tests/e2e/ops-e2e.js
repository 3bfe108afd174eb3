#!/usr/bin/env node
// Operator conventions (issue 17) against the real inferd: the command lines of `vllm serve`
// and `llama-server` docs start a server that answers; every alias is honoured (not just
// accepted); a request naming another model gets OpenAI's 404 model_not_found on
// completions, chat and the WebSocket; /health, /ping and /version; X-Request-Id round-trips
// (plain and streamed, and in the log); /health is 503 while no worker can serve and 200
// after; /metrics passes `promtool check metrics` after traffic (with --promtool).
//
//   node tests/e2e/ops-e2e.js --inferd build/bin/inferd [--promtool /usr/bin/promtool]
'use strict';
const assert = require('node:assert/strict');
const {execFileSync} = require('node:child_process');
const http = require('node:http');
const path = require('node:path');
const lib = require('./e2e-lib.js');
const {arg, waitFor, running} = lib;
const WebSocket = lib.need('ws');

const INFERD = arg('--inferd', path.join(lib.repo, 'build', 'bin', 'inferd'));
const PROMTOOL = arg('--promtool', null);
const KEY = 'ops-e2e-key';
const CPU = ['--backend', 'cpu', '--set', 'backend.cpu_threads=1'];

function call(port, method, p, body, headers = {}) {
  return new Promise((resolve, reject) => {
    const data = body === undefined ? undefined : JSON.stringify(body);
    const h = {...headers};
    if (data !== undefined) Object.assign(h, {'Content-Type': 'application/json', 'Content-Length': Buffer.byteLength(data)});
    const req = http.request({host: '127.0.0.1', port, method, path: p, headers: h}, (res) => {
      let buf = '';
      res.setEncoding('utf8');
      res.on('data', (c) => { buf += c; });
      res.on('end', () => resolve({status: res.statusCode, headers: res.headers, body: buf, json: () => JSON.parse(buf)}));
    });
    req.on('error', reject);
    req.setTimeout(60000, () => req.destroy(new Error('http timeout')));
    if (data !== undefined) req.write(data);
    req.end();
  });
}

async function ready(inst) {
  await waitFor(`${inst.name}: /health 200`, async () => (await call(inst.port, 'GET', '/health')).status === 200, 120000);
}

// One WebSocket exchange: the frames of request `id` up to its terminal one.
function wsRun(port, frame, protocols) {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(`ws://127.0.0.1:${port}/v1/stream`, protocols);
    const frames = [];
    ws.on('open', () => ws.send(JSON.stringify(frame)));
    ws.on('message', (d) => {
      const f = JSON.parse(d.toString());
      frames.push(f);
      if (f.type === 'done' || f.type === 'error') { ws.close(); resolve(frames); }
    });
    ws.on('error', reject);
  });
}

async function start(name, args, env = {}) {
  const saved = {};
  for (const [k, v] of Object.entries(env)) { saved[k] = process.env[k]; process.env[k] = v; }
  try {
    return await lib.startInferd(INFERD, name, args);
  } finally {
    for (const k of Object.keys(env)) { if (saved[k] === undefined) delete process.env[k]; else process.env[k] = saved[k]; }
  }
}

async function completes(inst, model, headers = {}) {
  const body = {prompt: 'Hello', max_tokens: 3, temperature: 0};
  if (model !== undefined) body.model = model;
  const r = await call(inst.port, 'POST', '/v1/completions', body, headers);
  assert.equal(r.status, 200, `${inst.name}: ${r.body}`);
  return r;
}

async function main() {
  // ---- vllm serve, as its docs write it --------------------------------------------------
  const V = await start('vllm-style', ['serve', 'synthetic:tiny', '--host', '127.0.0.1', '--port', '0',
    '--served-model-name', 'tiny-a', 'org/tiny-b', '--max-model-len', '48', '--api-key', KEY, '--max-num-seqs', '2',
    '--dtype', 'auto', '--gpu-memory-utilization', '0.9', '--tensor-parallel-size', '1', ...CPU]);
  await ready(V);
  const auth = {Authorization: `Bearer ${KEY}`};
  assert.equal((await call(V.port, 'POST', '/v1/completions', {prompt: 'x'})).status, 401, 'the api key is enforced');
  const models = (await call(V.port, 'GET', '/v1/models', undefined, auth)).json();
  assert.equal(models.data[0].id, 'tiny-a');
  assert.equal(models.data[0].max_model_len, 48, '--max-model-len is the context served');
  assert.equal((await call(V.port, 'GET', '/v1/models/org%2Ftiny-b', undefined, auth)).json().id, 'org/tiny-b');
  assert.equal((await completes(V, 'tiny-a', auth)).json().model, 'tiny-a');
  await completes(V, 'org/tiny-b', auth);
  assert.equal((await completes(V, undefined, auth)).json().model, 'tiny-a', 'no model: the default one');
  for (const [p, body] of [['/v1/completions', {model: 'gpt-4', prompt: 'x'}],
    ['/v1/chat/completions', {model: 'gpt-4', messages: [{role: 'user', content: 'x'}]}]]) {
    const r = await call(V.port, 'POST', p, body, auth);
    assert.equal(r.status, 404, `${p}: ${r.body}`);
    const e = r.json().error;
    assert.equal(e.code, 'model_not_found');
    assert.equal(e.type, 'invalid_request_error');
    assert.equal(e.param, 'model');
    assert.match(e.message, /gpt-4/);
  }
  const wsBad = await wsRun(V.port, {type: 'generate', id: 'w', model: 'gpt-4', prompt: 'x', max_tokens: 1},
    [`bearer.${KEY}`]);
  assert.equal(wsBad[0].code, 'model_not_found');
  const wsOk = await wsRun(V.port, {type: 'generate', id: 'w', model: 'org/tiny-b', prompt: 'x', max_tokens: 1},
    [`bearer.${KEY}`]);
  assert.equal(wsOk.at(-1).type, 'done');
  // A context of 48: a longer prompt is refused by that limit.
  const long = await call(V.port, 'POST', '/v1/completions', {prompt: 'word '.repeat(80), max_tokens: 1}, auth);
  assert.equal(long.status, 400, long.body);
  // --max-num-seqs 2: the per-worker running cap.
  const status = (await call(V.port, 'GET', '/v1/status', undefined, auth)).json();
  assert.ok(status.workers.length >= 1);
  assert.match(V.log, /gpu_memory_utilization 0.9 does not apply to CPU workers/);

  // X-Request-Id: the client's, echoed on plain and streamed answers and logged; else a fresh one.
  const given = await completes(V, 'tiny-a', {...auth, 'X-Request-Id': 'ops-e2e-rid-1'});
  assert.equal(given.headers['x-request-id'], 'ops-e2e-rid-1');
  const streamed = await call(V.port, 'POST', '/v1/completions', {prompt: 'Hi', max_tokens: 2, stream: true},
    {...auth, 'X-Request-Id': 'ops-e2e-rid-2'});
  assert.equal(streamed.status, 200);
  assert.equal(streamed.headers['x-request-id'], 'ops-e2e-rid-2');
  const fresh = await completes(V, 'tiny-a', auth);
  const fresh2 = await completes(V, 'tiny-a', auth);
  assert.match(fresh.headers['x-request-id'], /^[0-9a-f]{32}$/);
  assert.notEqual(fresh.headers['x-request-id'], fresh2.headers['x-request-id']);
  assert.match(fresh.json().id, /^cmpl-[0-9a-f]{32}$/, 'completion ids are not sequence numbers');
  assert.equal((await call(V.port, 'GET', '/nope', undefined, {...auth, 'X-Request-Id': 'r404'})).headers['x-request-id'], 'r404');
  const wsRid = await new Promise((resolve, reject) => {
    const ws = new WebSocket(`ws://127.0.0.1:${V.port}/v1/stream`, [`bearer.${KEY}`], {headers: {'X-Request-Id': 'ops-ws-rid'}});
    ws.on('upgrade', (res) => { resolve(res.headers['x-request-id']); });
    ws.on('open', () => ws.close());
    ws.on('error', reject);
  });
  assert.equal(wsRid, 'ops-ws-rid', 'the WebSocket handshake carries X-Request-Id too');
  await waitFor('request ids in the log', () => /request_id=ops-e2e-rid-1 /.test(V.log) && /request_id=ops-e2e-rid-2 /.test(V.log));

  // Probes: public, as vLLM's and SageMaker's.
  assert.equal((await call(V.port, 'GET', '/health')).status, 200);
  assert.equal((await call(V.port, 'GET', '/ping')).status, 200);
  const version = await call(V.port, 'GET', '/version');
  assert.equal(version.status, 200);
  assert.match(version.json().version, /^\d+\.\d+\.\d+/);

  // promtool on /metrics after that traffic (open without the key: server.metrics_require_key false).
  const metrics = await call(V.port, 'GET', '/metrics');
  assert.equal(metrics.status, 200);
  for (const family of ['infer_e2e_request_latency_seconds_count', 'infer_request_queue_time_seconds_count',
    'infer_request_prefill_time_seconds_count', 'infer_request_decode_time_seconds_count',
    'infer_prompt_tokens_total', 'infer_generation_tokens_total', 'infer_request_prompt_tokens_count',
    'infer_request_generation_tokens_count', 'infer_kv_cache_usage_ratio', 'infer_preemptions_total',
    'infer_build_info', 'process_resident_memory_bytes', 'process_cpu_seconds_total', 'process_open_fds'])
    assert.match(metrics.body, new RegExp(`^${family}[{ ]`, 'm'), family);
  assert.match(metrics.body, /^infer_e2e_request_latency_seconds_count\{model_name="tiny-a"\} [1-9]/m);
  assert.match(metrics.body, /^infer_worker_up\{worker="0",device="cpu"\} 1$/m);
  if (PROMTOOL) {
    execFileSync(PROMTOOL, ['check', 'metrics'], {input: metrics.body, stdio: ['pipe', 'pipe', 'pipe']});
    console.log('  promtool check metrics: clean');
  }
  await V.stop();
  console.log('vllm serve command line: ok');

  // ---- llama-server, as its README writes it -------------------------------------------------
  const L = await start('llama-server-style', ['-m', 'synthetic:tiny', '--host', '127.0.0.1', '--port', '0',
    '--ctx-size', '40', '--api-key', KEY, ...CPU]);
  await ready(L);
  const lm = (await call(L.port, 'GET', '/v1/models', undefined, auth)).json();
  assert.equal(lm.data[0].id, 'synthetic:tiny', 'the served name is the model as given');
  assert.equal(lm.data[0].max_model_len, 40);
  await completes(L, 'synthetic:tiny', auth);
  await L.stop();
  console.log('llama-server command line: ok');

  // ---- the positional MODEL, --model and the environment ----------------------------------
  const P = await start('positional', ['synthetic:tiny', '--listen', '127.0.0.1:0', ...CPU]);
  await ready(P);
  await completes(P, 'synthetic:tiny');
  await P.stop();
  const E = await start('environment', CPU, {INFERD_MODEL: 'synthetic:tiny', INFERD_HOST: '127.0.0.1', INFERD_PORT: '0'});
  await ready(E);
  assert.equal((await call(E.port, 'GET', '/v1/models')).json().data[0].id, 'synthetic:tiny');
  await E.stop();
  console.log('positional MODEL, INFERD_MODEL/HOST/PORT: ok');

  // ---- /health: 503 while no worker can serve, 200 after ------------------------------------
  // A poison token fails every step holding it; one failure opens the breaker for 1.5 s.
  const H = await start('health', ['--model', 'synthetic:tiny', '--listen', '127.0.0.1:0', '--workers', '1',
    '--fault-poison-token', '200', '--set', 'supervision.breaker_failures=1', '--set', 'supervision.breaker_open_ms=1500',
    ...CPU]);
  await ready(H);
  const poison = wsRun(H.port, {type: 'generate', id: 'p', prompt_tokens: [200], max_tokens: 1});
  await waitFor('/health 503 with the breaker open', async () => (await call(H.port, 'GET', '/health')).status === 503);
  const r503 = await call(H.port, 'GET', '/health');
  assert.equal(r503.status, 503);
  assert.match(r503.body, /breaker|worker/);
  const poisoned = await poison;
  assert.equal(poisoned.at(-1).type, 'error');
  await waitFor('/health 200 after the breaker closes', async () => (await call(H.port, 'GET', '/health')).status === 200);
  const after = await call(H.port, 'POST', '/v1/completions', {prompt: [1, 2, 3], max_tokens: 1, temperature: 0});
  assert.equal(after.status, 200, after.body);
  await H.stop();
  console.log('/health 503 while no worker can serve, 200 after: ok');

  // ---- refusals at start-up ---------------------------------------------------------------
  for (const [args, re] of [[['--tensor-parallel-size', '2'], /not yet/], [['-c', '512'], /--ctx-size 512/],
    [['--max-model-lenn', '5'], /did you mean --max-model-len/]]) {
    let out = '';
    try { execFileSync(INFERD, args, {stdio: ['ignore', 'pipe', 'pipe']}); } catch (e) { out = String(e.stderr); assert.equal(e.status, 2); }
    assert.match(out, re, args.join(' '));
  }
  console.log('start-up refusals: ok');
}

main().then(() => { console.log('ops-e2e: all passed'); }, async (e) => {
  console.error(e);
  for (const inst of running) { console.error(`---- ${inst.name} log ----\n${inst.log}`); inst.proc.kill('SIGKILL'); }
  process.exit(1);
});
