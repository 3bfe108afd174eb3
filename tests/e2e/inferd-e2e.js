#!/usr/bin/env node
// End-to-end test of the real inferd binary with independent clients: the npm `ws`
// package for WebSocket protocol v1, Node's own http module for HTTP, the npm
// `gpt-3-encoder` as the oracle of /tokenize, and the project's infer-bench.
//
//   node tests/e2e/inferd-e2e.js --inferd build/bin/inferd --bench build/bin/infer-bench
//        [--only NAME] [--skip-gpt2]
// Needs NODE_PATH (or third_party/npm/node_modules beside this repository) to find ws.
// Each inferd starts on a free loopback port (--listen 127.0.0.1:0 --port-file) with
// --backend cpu. Exit status 0 when every check passes.
'use strict';
const assert = require('node:assert/strict');
const {execFile} = require('node:child_process');
const fs = require('node:fs');
const http = require('node:http');
const https = require('node:https');
const os = require('node:os');
const path = require('node:path');
const lib = require('./e2e-lib.js');
const {arg, sleep, waitFor, running} = lib;
const WebSocket = lib.need('ws');
const repo = lib.repo;

const argv = process.argv.slice(2);
const INFERD = arg('--inferd', path.join(repo, 'build', 'bin', 'inferd'));
const BENCH = arg('--bench', path.join(repo, 'build', 'bin', 'infer-bench'));
const ONLY = arg('--only', null);
const SKIP_GPT2 = argv.includes('--skip-gpt2');

// ---- inferd processes -------------------------------------------------------------------

const startInferd = (name, extra) =>
  lib.startInferd(INFERD, name, ['--listen', '127.0.0.1:0', '--backend', 'cpu', ...extra]);

// Polls /readyz until 200; returns every status seen, in order.
async function waitReady(inst) {
  const seen = [];
  await waitFor(`${inst.name}: /readyz`, async () => {
    if (inst.exited) throw new Error(`${inst.name}: inferd exited (${JSON.stringify(inst.exited)}):\n${inst.log}`);
    const r = await request(inst.port, 'GET', '/readyz', undefined, {}, !!inst.tls);
    seen.push(r.status);
    return r.status === 200;
  }, 180000);
  return seen;
}

// ---- HTTP -----------------------------------------------------------------------------------

function request(port, method, p, body, headers = {}, tls = false) {
  return new Promise((resolve, reject) => {
    const data = body === undefined ? undefined : (typeof body === 'string' ? body : JSON.stringify(body));
    const req = (tls ? https : http).request({host: '127.0.0.1', port, method, path: p, rejectUnauthorized: false,
      headers: {...(data !== undefined ? {'Content-Type': 'application/json', 'Content-Length': Buffer.byteLength(data)} : {}), ...headers}},
    (res) => {
      let buf = '';
      res.setEncoding('utf8');
      res.on('data', (c) => { buf += c; });
      res.on('end', () => resolve({status: res.statusCode, headers: res.headers, body: buf,
        json() { return JSON.parse(buf); }}));
    });
    req.on('error', reject);
    req.setTimeout(120000, () => req.destroy(new Error('http timeout')));
    if (data !== undefined) req.write(data);
    req.end();
  });
}

function metric(text, name) {
  const m = text.match(new RegExp(`^${name} (\\S+)$`, 'm'));
  return m ? Number(m[1]) : NaN;
}

// ---- WebSocket client ---------------------------------------------------------------------

class Client {
  constructor(port, headers = {}, tls = false) {
    this.ws = new WebSocket(`${tls ? 'wss' : 'ws'}://127.0.0.1:${port}/v1/stream`, {headers, rejectUnauthorized: false});
    this.queue = [];
    this.waiters = [];
    this.closeCode = null;
    this.opened = new Promise((resolve, reject) => {
      this.ws.on('open', resolve);
      this.ws.on('unexpected-response', (req, res) => reject(Object.assign(new Error(`HTTP ${res.statusCode}`), {status: res.statusCode})));
      this.ws.on('error', reject);
    });
    this.closed = new Promise((resolve) => this.ws.on('close', (code) => { this.closeCode = code; resolve(code); this.flush(); }));
    this.ws.on('message', (data, isBinary) => {
      this.queue.push(JSON.parse(data.toString()));
      this.flush();
    });
  }
  flush() {
    while (this.waiters.length && (this.queue.length || this.closeCode !== null)) {
      const w = this.waiters.shift();
      clearTimeout(w.timer);
      if (this.queue.length) w.resolve(this.queue.shift());
      else w.reject(new Error(`connection closed (${this.closeCode})`));
    }
  }
  send(obj) { this.ws.send(typeof obj === 'string' ? obj : JSON.stringify(obj)); }
  next(timeoutMs = 60000) {
    return new Promise((resolve, reject) => {
      const w = {resolve, reject};
      w.timer = setTimeout(() => {
        this.waiters = this.waiters.filter((x) => x !== w);
        reject(new Error('no frame within timeout'));
      }, timeoutMs);
      this.waiters.push(w);
      this.flush();
    });
  }
  // Collects one request's frames until its terminal event.
  async collect(id) {
    const frames = [];
    for (;;) {
      const f = await this.next();
      assert.equal(f.id, id, `frame for another id: ${JSON.stringify(f)}`);
      frames.push(f);
      if (f.type === 'done' || f.type === 'error') return frames;
    }
  }
  close() { this.ws.close(); }
}

function checkStream(frames, id) {
  assert.equal(frames[0].type, 'accepted', JSON.stringify(frames[0]));
  const tokens = frames.filter((f) => f.type === 'token');
  tokens.forEach((t, i) => {
    assert.equal(t.index, i);
    assert.equal(typeof t.token, 'number');
    assert.equal(typeof t.text, 'string');
  });
  const last = frames[frames.length - 1];
  assert.equal(last.type, 'done', JSON.stringify(last));
  assert.equal(frames.filter((f) => f.type === 'done' || f.type === 'error').length, 1);
  assert.equal(last.usage.completion_tokens, tokens.length);
  return {tokens, done: last, text: tokens.map((t) => t.text).join('')};
}

// ---- tests ----------------------------------------------------------------------------------

const tests = [];
const test = (name, fn) => tests.push({name, fn});

let A; // synthetic:tiny, max frame 64 KiB
let B; // synthetic:gpt2-small, API key
let C; // synthetic:tiny, one running sequence, admission queue of 1
let D; // synthetic:tiny over TLS (self-signed certificate), when the openssl tool exists

test('readyz: 503 while the model loads, then 200 (gpt2-small)', async () => {
  if (SKIP_GPT2) return;
  const seen = await waitReady(B);
  const first200 = seen.indexOf(200);
  assert.ok(seen.slice(0, first200).every((s) => s === 503), `statuses: ${seen}`);
  assert.ok(first200 > 0, `a 503 was expected before the model loaded: ${seen}`);
  assert.equal((await request(B.port, 'GET', '/healthz')).status, 200);
});

test('ws: streaming one request, greedy output is reproducible', async () => {
  const c = new Client(A.port);
  await c.opened;
  c.send({type: 'generate', id: 'c1', prompt: 'Hello', max_tokens: 12, temperature: 0});
  const r1 = checkStream(await c.collect('c1'), 'c1');
  assert.equal(r1.tokens.length, 12);
  assert.equal(r1.done.finish_reason, 'length');
  assert.equal(r1.done.usage.prompt_tokens, 5);
  for (const k of ['queue', 'first_token', 'total']) assert.equal(typeof r1.done.timing_ms[k], 'number');
  c.send({type: 'generate', id: 'c1', prompt: 'Hello', max_tokens: 12, temperature: 0});
  const r2 = checkStream(await c.collect('c1'), 'c1');
  assert.deepEqual(r2.tokens.map((t) => t.token), r1.tokens.map((t) => t.token));
  // prompt_tokens instead of prompt: the same ids give the same output
  c.send({type: 'generate', id: 'c2', prompt_tokens: [...Buffer.from('Hello')], max_tokens: 12});
  const r3 = checkStream(await c.collect('c2'), 'c2');
  assert.deepEqual(r3.tokens.map((t) => t.token), r1.tokens.map((t) => t.token));
  c.close();
});

test('ws: 50 requests multiplexed on one connection', async () => {
  const c = new Client(A.port);
  await c.opened;
  const n = 50;
  for (let i = 0; i < n; i++)
    c.send({type: 'generate', id: `m${i}`, prompt: `request ${i}:`, max_tokens: 4 + (i % 5), temperature: 0.7, seed: i});
  const byId = new Map();
  let terminal = 0;
  while (terminal < n) {
    const f = await c.next();
    if (!byId.has(f.id)) byId.set(f.id, []);
    byId.get(f.id).push(f);
    if (f.type === 'done' || f.type === 'error') terminal++;
  }
  assert.equal(byId.size, n);
  for (let i = 0; i < n; i++) {
    const r = checkStream(byId.get(`m${i}`), `m${i}`);
    assert.equal(r.tokens.length, 4 + (i % 5));
  }
  c.close();
});

test('ws: cancel mid-stream ends with done(cancelled)', async () => {
  const c = new Client(A.port);
  await c.opened;
  c.send({type: 'generate', id: 'k', prompt: 'cancel me', max_tokens: 1000});
  assert.equal((await c.next()).type, 'accepted');
  assert.equal((await c.next()).type, 'token');
  c.send({type: 'cancel', id: 'k'});
  let f;
  let tokens = 1;
  while ((f = await c.next()).type === 'token') tokens++;
  assert.equal(f.type, 'done');
  assert.equal(f.finish_reason, 'cancelled');
  assert.equal(f.usage.completion_tokens, tokens);
  assert.ok(tokens < 1000);
  c.send({type: 'cancel', id: 'k'}); // no longer live: nothing happens
  c.send({type: 'generate', id: 'k', prompt: 'again', max_tokens: 2});
  checkStream(await c.collect('k'), 'k');
  c.close();
});

test('ws: a client that vanishes mid-stream frees its KV blocks', async () => {
  const c = new Client(A.port);
  await c.opened;
  for (let i = 0; i < 5; i++) c.send({type: 'generate', id: `d${i}`, prompt: `disconnect ${i}`, max_tokens: 1000});
  const started = new Set();
  while (started.size < 5) {
    const f = await c.next();
    if (f.type === 'token') started.add(f.id);
  }
  const during = (await request(A.port, 'GET', '/metrics')).body;
  assert.ok(metric(during, 'infer_kv_blocks_used') > 0, 'KV blocks in use while streaming');
  c.ws.terminate(); // TCP gone, no close frame
  await waitFor('KV blocks freed', async () => {
    const m = (await request(A.port, 'GET', '/metrics')).body;
    return metric(m, 'infer_kv_blocks_used') === 0 && metric(m, 'infer_running_sequences') === 0;
  });
  const m = (await request(A.port, 'GET', '/metrics')).body;
  assert.ok(/infer_requests_total\{outcome="cancelled"\} [1-9]/.test(m), 'cancelled outcomes counted');
});

test('ws: every malformed frame gets invalid_request, the connection stays usable', async () => {
  const c = new Client(A.port);
  await c.opened;
  c.send({type: 'generate', id: 'live', prompt: 'stay', max_tokens: 200});
  assert.equal((await c.next()).type, 'accepted');
  const cases = [
    ['not json at all', null],
    ['[1,2]', null],
    [{type: 'generate', prompt: 'no id'}, null],
    [{type: 'generate', id: 5, prompt: 'numeric id'}, null],
    [{type: 'dance', id: 'u1'}, 'u1'],
    [{id: 'u2', prompt: 'no type'}, 'u2'],
    [{type: 'generate', id: 'u3'}, 'u3'],
    [{type: 'generate', id: 'u4', prompt: ['x']}, 'u4'],
    [{type: 'generate', id: 'u5', prompt: 'x', max_tokens: -1}, 'u5'],
    [{type: 'generate', id: 'u6', prompt: 'x', temperature: -0.5}, 'u6'],
    [{type: 'generate', id: 'u7', prompt: 'x', top_p: 0}, 'u7'],
    [{type: 'generate', id: 'u8', prompt: 'x', top_p: 1.2}, 'u8'],
    [{type: 'generate', id: 'u9', prompt: 'x'.repeat(1024)}, 'u9'], // n_ctx 1024
    [{type: 'generate', id: 'u10', prompt_tokens: [1, 256]}, 'u10'], // byte vocabulary
    [{type: 'generate', id: 'u11', prompt: 'x', max_tokens: '5'}, 'u11'],
    [{type: 'generate', id: 'u12', prompt: 'x', seed: 1.5}, 'u12'],
    [{type: 'generate', id: 'live', prompt: 'duplicate'}, 'live'],
  ];
  let live = [];
  for (const [frame, id] of cases) {
    c.send(frame);
    let f;
    while ((f = await c.next()).id === 'live' && f.type === 'token') live.push(f);
    assert.equal(f.type, 'error', `${JSON.stringify(frame)} -> ${JSON.stringify(f)}`);
    assert.equal(f.code, 'invalid_request');
    assert.equal(f.id, id);
    assert.ok(f.message.length > 0);
  }
  let f;
  while ((f = await c.next()).type === 'token') live.push(f);
  assert.equal(f.type, 'done');
  assert.equal(f.id, 'live');
  assert.equal(f.usage.completion_tokens, live.length);
  c.send({type: 'generate', id: 'after', prompt: 'still fine', max_tokens: 3});
  checkStream(await c.collect('after'), 'after');
  c.close();
});

test('ws: binary frame closes with 1003, oversize frame with 1009; others unaffected', async () => {
  const bystander = new Client(A.port);
  await bystander.opened;
  const b = new Client(A.port);
  await b.opened;
  b.ws.send(Buffer.from(JSON.stringify({type: 'generate', id: 'x', prompt: 'y'})), {binary: true});
  assert.equal(await b.closed, 1003);
  const o = new Client(A.port);
  await o.opened;
  o.send(JSON.stringify({type: 'generate', id: 'big', prompt: 'z'.repeat(70000)}));
  assert.equal(await o.closed, 1009);
  bystander.send({type: 'generate', id: 'ok', prompt: 'fine', max_tokens: 3});
  checkStream(await bystander.collect('ok'), 'ok');
  bystander.close();
});

test('ws and http: overloaded when the admission queue is full', async () => {
  await waitReady(C);
  const c = new Client(C.port);
  await c.opened;
  const n = 12;
  for (let i = 0; i < n; i++) c.send({type: 'generate', id: `q${i}`, prompt: 'load', max_tokens: 1000});
  const first = new Map();
  while (first.size < n) {
    const f = await c.next();
    if (!first.has(f.id) && (f.type === 'accepted' || f.type === 'error')) first.set(f.id, f);
  }
  const rejected = [...first.values()].filter((f) => f.type === 'error');
  assert.ok(rejected.length > 0, 'some requests rejected');
  for (const f of rejected) {
    assert.equal(f.code, 'overloaded', JSON.stringify(f));
    assert.ok(f.retry_after_ms >= 0);
  }
  // while the queue is still full, the OpenAI endpoint answers 429
  const r = await request(C.port, 'POST', '/v1/completions', {prompt: 'x', max_tokens: 5});
  assert.equal(r.status, 429, r.body);
  assert.equal(r.json().error.code, 'overloaded');
  c.ws.terminate();
});

test('openai: completion without and with streaming', async () => {
  const r = await request(A.port, 'POST', '/v1/completions', {model: 'synthetic:tiny', prompt: 'Hello', max_tokens: 6, temperature: 0});
  assert.equal(r.status, 200, r.body);
  const j = r.json();
  assert.equal(j.object, 'text_completion');
  assert.equal(j.choices.length, 1);
  assert.equal(j.choices[0].finish_reason, 'length');
  assert.equal(j.usage.completion_tokens, 6);
  assert.equal(j.usage.prompt_tokens, 5);
  assert.equal(j.usage.total_tokens, 11);
  // the same greedy completion over the WebSocket gives the same text
  const c = new Client(A.port);
  await c.opened;
  c.send({type: 'generate', id: 'same', prompt: 'Hello', max_tokens: 6});
  assert.equal(checkStream(await c.collect('same'), 'same').text, j.choices[0].text);
  c.close();

  const s = await request(A.port, 'POST', '/v1/completions', {prompt: 'Hello', max_tokens: 6, temperature: 0, stream: true});
  assert.equal(s.status, 200);
  assert.match(s.headers['content-type'], /text\/event-stream/);
  const events = s.body.split('\n\n').filter((e) => e.length).map((e) => {
    assert.ok(e.startsWith('data: '), e);
    return e.slice(6);
  });
  assert.equal(events[events.length - 1], '[DONE]');
  const chunks = events.slice(0, -1).map((e) => JSON.parse(e));
  assert.equal(chunks.map((ch) => ch.choices[0].text).join(''), j.choices[0].text);
  assert.equal(chunks[chunks.length - 1].choices[0].finish_reason, 'length');

  for (const bad of [{prompt: 'x', max_tokens: -2}, {prompt: 'x', top_p: 3}, {max_tokens: 3}, {prompt: 'x', n: 17}]) {
    const e = await request(A.port, 'POST', '/v1/completions', bad);
    assert.equal(e.status, 400, JSON.stringify(bad));
    assert.equal(e.json().error.type, 'invalid_request_error');
    assert.equal(typeof e.json().error.message, 'string');
  }
  assert.equal((await request(A.port, 'POST', '/v1/completions', '{nope')).status, 400);
});

test('prefix cache: a repeated prompt reports cached_tokens and gives the same text', async () => {
  // 70 byte-level tokens: four full 16-token blocks precede the last token.
  const prompt = 'You are a helpful assistant. Answer briefly and exactly. Question: why?';
  const ask = async (port) => {
    const r = await request(port, 'POST', '/v1/completions', {prompt, max_tokens: 5, temperature: 0});
    assert.equal(r.status, 200, r.body);
    return r.json();
  };
  const first = await ask(A.port);
  assert.equal(first.usage.prompt_tokens, prompt.length);
  assert.equal(typeof first.usage.prompt_tokens_details.cached_tokens, 'number');
  const again = await ask(A.port);
  assert.equal(again.usage.prompt_tokens_details.cached_tokens, 64);
  assert.equal(again.choices[0].text, first.choices[0].text);
  // The WebSocket done event carries it too, and the stream's usage chunk.
  const c = new Client(A.port);
  await c.opened;
  c.send({type: 'generate', id: 'pc', prompt, max_tokens: 5, temperature: 0});
  const r = checkStream(await c.collect('pc'), 'pc');
  c.close();
  assert.equal(r.done.usage.prompt_tokens_details.cached_tokens, 64);
  assert.equal(r.text, first.choices[0].text);
  const s = await request(A.port, 'POST', '/v1/completions',
    {prompt, max_tokens: 5, temperature: 0, stream: true, stream_options: {include_usage: true}});
  const usage = s.body.split('\n\n').filter((e) => e.startsWith('data: {')).map((e) => JSON.parse(e.slice(6)))
    .find((ch) => ch.usage);
  assert.equal(usage.usage.prompt_tokens_details.cached_tokens, 64);
  const m = (await request(A.port, 'GET', '/metrics')).body;
  assert.ok(metric(m, 'infer_prefix_cache_hits_total') >= 3 * 64, m);
  assert.ok(metric(m, 'infer_prefix_cache_queries_total') >= 4 * prompt.length);
  assert.ok(metric(m, 'infer_prefix_cache_blocks') >= 4);
  const st = (await request(A.port, 'GET', '/v1/status')).json();
  assert.equal(st.prefix_cache.enabled, true);
  assert.ok(st.prefix_cache.hits >= 3 * 64);
  assert.ok(st.prefix_cache.hit_rate > 0 && st.prefix_cache.hit_rate <= 1);
  // --no-prefix-caching (instance C): nothing is reused, the output is the same.
  await ask(C.port);
  const off = await ask(C.port);
  assert.equal(off.usage.prompt_tokens_details.cached_tokens, 0);
  assert.equal(off.choices[0].text, first.choices[0].text);
  const offStatus = (await request(C.port, 'GET', '/v1/status')).json();
  assert.equal(offStatus.prefix_cache.enabled, false);
  assert.equal(offStatus.prefix_cache.hits, 0);
});

test('metrics: the required series are exposed', async () => {
  const m = (await request(A.port, 'GET', '/metrics'));
  assert.equal(m.status, 200);
  for (const name of ['infer_requests_total{outcome=', 'infer_queue_depth', 'infer_running_sequences',
    'infer_tokens_generated_total', 'infer_worker_restarts_total', 'infer_time_to_first_token_seconds_bucket',
    'infer_inter_token_latency_seconds_bucket', 'infer_batch_size_bucket', 'infer_kv_blocks_used'])
    assert.ok(m.body.includes(name), `missing ${name}`);
  assert.ok(metric(m.body, 'infer_tokens_generated_total') > 0);
});

test('tokenize / detokenize on the GPT-2 vocabulary match gpt-3-encoder', async () => {
  if (SKIP_GPT2) return;
  await waitReady(B);
  const enc = lib.need('gpt-3-encoder');
  const auth = {Authorization: 'Bearer e2e-key'};
  for (const text of ['Hello world', "It's a   test\n\nwith  spaces", 'naïve café 東京 🎉', '']) {
    const r = await request(B.port, 'POST', '/tokenize', {prompt: text}, auth);
    assert.equal(r.status, 200, r.body);
    const want = enc.encode(text);
    assert.deepEqual(r.json().tokens, want, text);
    assert.equal(r.json().count, want.length);
    const d = await request(B.port, 'POST', '/detokenize', {tokens: want}, auth);
    assert.equal(d.status, 200);
    assert.equal(d.json().prompt, text);
  }
  assert.equal((await request(B.port, 'POST', '/detokenize', {tokens: [50257]}, auth)).status, 400);
  // Special tokens stay in /detokenize's text (vLLM's behaviour): the EOS is spelled out.
  assert.equal((await request(B.port, 'POST', '/detokenize', {tokens: [15496, 50256]}, auth)).json().prompt, 'Hello<|endoftext|>');
});

test('bearer token: required on upgrade and HTTP when set', async () => {
  if (SKIP_GPT2) return;
  await waitReady(B);
  await assert.rejects(new Client(B.port).opened, (e) => e.status === 401);
  await assert.rejects(new Client(B.port, {Authorization: 'Bearer wrong'}).opened, (e) => e.status === 401);
  const c = new Client(B.port, {Authorization: 'Bearer e2e-key'});
  await c.opened;
  c.send({type: 'generate', id: 'g', prompt: 'The', max_tokens: 2});
  checkStream(await c.collect('g'), 'g');
  c.close();
  assert.equal((await request(B.port, 'POST', '/v1/completions', {prompt: 'x', max_tokens: 1})).status, 401);
  // /metrics is open for scrapers (server.metrics_require_key false, as vLLM); /v1/status is not.
  assert.equal((await request(B.port, 'GET', '/metrics')).status, 200);
  assert.equal((await request(B.port, 'GET', '/v1/status')).status, 401);
  assert.equal((await request(B.port, 'GET', '/v1/status', undefined, {Authorization: 'Bearer e2e-key'})).status, 200);
  const ok = await request(B.port, 'POST', '/v1/completions', {prompt: 'The', max_tokens: 2}, {Authorization: 'Bearer e2e-key'});
  assert.equal(ok.status, 200, ok.body);
  assert.equal(ok.json().usage.completion_tokens, 2);
  assert.equal((await request(B.port, 'GET', '/readyz')).status, 200);
});

test('infer-bench: concurrent and serial runs complete', async () => {
  for (const extra of [['--concurrency', '8'], ['--serial']]) {
    const out = await new Promise((resolve, reject) => execFile(BENCH,
      ['--url', `ws://127.0.0.1:${A.port}/v1/stream`, '--requests', '16', '--prompt-tokens', '8',
        '--max-tokens', '8', '--json', ...extra], {timeout: 120000}, (err, stdout, stderr) => {
        if (err) reject(new Error(`${err.message}\n${stderr}`));
        else resolve(stdout);
      }));
    const j = JSON.parse(out);
    assert.equal(j.completed, 16);
    assert.equal(j.errors, 0);
    assert.equal(j.tokens_generated, 16 * 8);
    assert.ok(j.requests_per_s > 0 && j.tokens_per_s > 0);
    assert.ok(j.ttft_ms.p50 > 0 && j.e2e_ms.p99 >= j.e2e_ms.p50);
  }
});

// infer-bench as an OpenAI client (SSE), beside its WebSocket mode above.
const runBench = (args) => new Promise((resolve, reject) => execFile(BENCH, args, {timeout: 120000},
  (err, stdout, stderr) => (err ? reject(new Error(`${err.message}\n${stderr}`)) : resolve(stdout))));

test('infer-bench over SSE: completions and chat, warm-up, goodput, --save-result rows and metadata', async () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'infer-bench-e2e-'));
  for (const [ep, backend] of [['/v1/completions', 'openai'], ['/v1/chat/completions', 'openai-chat']]) {
    const file = path.join(dir, `${backend}.json`);
    const j = JSON.parse(await runBench(['--url', `http://127.0.0.1:${A.port}${ep}`, '--requests', '12',
      '--concurrency', '4', '--prompt-tokens', '8', '--max-tokens', '6', '--warmup', '2', '--json',
      '--goodput', 'ttft:600000', 'tpot:600000', '--save-result', file, '--metadata', 'run=e2e']));
    assert.equal(j.backend, backend);
    assert.equal(j.completed, 12, JSON.stringify(j.error_codes));
    assert.equal(j.errors, 0);
    assert.equal(j.tokens_generated, 12 * 6);  // the server's usage counts (stream_options.include_usage)
    assert.equal(j.connections, 4);
    assert.equal(j.goodput.good_requests, 12);
    assert.ok(j.ttft_ms.p50 > 0 && j.tpot_ms.p50 > 0 && j.e2e_ms.p99 >= j.e2e_ms.p50);
    const saved = JSON.parse(fs.readFileSync(file, 'utf8'));
    assert.equal(saved.metadata.run, 'e2e');
    assert.equal(saved.metadata.warmup_requests, 2);
    assert.equal(saved.summary.completed, 12);
    assert.equal(saved.requests.length, 12);
    for (const r of saved.requests) {
      assert.equal(r.ok, true);
      assert.equal(r.output_len, 6);
      assert.equal(r.meets_slo, true);
      assert.ok(r.ttft_ms > 0 && r.e2el_ms >= r.ttft_ms);
      // completions: a chunk per token (inferd sends one even for a token with no text yet);
      // chat: chunks with content only, so at most one gap per token after the first
      if (backend === 'openai') assert.equal(r.itl_ms.length, 5);
      else assert.ok(r.itl_ms.length <= 5);
    }
    if (backend === 'openai-chat') assert.ok(saved.requests.some((r) => r.input_len > 8));  // the template's tokens
  }
  // Random lengths at a request rate (gamma arrivals); a limit no request can meet.
  const file = path.join(dir, 'random.json');
  const j = JSON.parse(await runBench(['--url', `http://127.0.0.1:${A.port}/v1/completions`, '--requests', '16',
    '--concurrency', '16', '--dataset', 'random', '--random-input-len', '8', '--random-output-len', '6',
    '--random-range-ratio', '0.5', '--request-rate', '400', '--burstiness', '0.5', '--goodput', 'ttft:0', '--json',
    '--save-result', file]));
  assert.equal(j.completed, 16);
  assert.equal(j.request_rate, 400);
  assert.equal(j.goodput.good_requests, 0);
  const rows = JSON.parse(fs.readFileSync(file, 'utf8')).requests;
  for (const r of rows) {
    assert.ok(r.input_len >= 4 && r.input_len <= 12, `input_len ${r.input_len}`);
    assert.ok(r.max_tokens >= 3 && r.max_tokens <= 9, `max_tokens ${r.max_tokens}`);
    assert.equal(r.output_len, r.max_tokens);
    assert.equal(r.meets_slo, false);
  }
  assert.ok(new Set(rows.map((r) => r.max_tokens)).size > 1);
  for (let i = 1; i < rows.length; ++i) assert.ok(rows[i].start_s >= rows[i - 1].start_s);
  assert.ok(rows[rows.length - 1].start_s > 0);  // spread out, not all at once
  // A request the server refuses ends as an error carrying the status and the OpenAI code.
  const bad = JSON.parse(await runBench(['--url', `http://127.0.0.1:${A.port}/v1/completions`, '--requests', '2',
    '--max-tokens', '100000', '--json']));
  assert.equal(bad.completed, 0);
  assert.equal(bad.errors, 2);
  assert.deepEqual(bad.error_codes, {'400 invalid_request': 2});
});

test('tls: https and wss with a certificate from files', async () => {
  if (!D) return console.log('      (skipped: no openssl tool to make a certificate)');
  await waitReady(D);
  assert.equal((await request(D.port, 'GET', '/healthz', undefined, {}, true)).status, 200);
  const r = await request(D.port, 'POST', '/v1/completions', {prompt: 'Hi', max_tokens: 3, stream: true}, {}, true);
  assert.equal(r.status, 200);
  assert.ok(r.body.endsWith('data: [DONE]\n\n'));
  const c = new Client(D.port, {}, true);
  await c.opened;
  c.send({type: 'generate', id: 't', prompt: 'secure', max_tokens: 4});
  assert.equal(checkStream(await c.collect('t'), 't').tokens.length, 4);
  c.close();
  // plain HTTP on the TLS port gets nowhere
  await assert.rejects(request(D.port, 'GET', '/healthz'));
  const out = await new Promise((resolve, reject) => execFile(BENCH,
    ['--url', `wss://127.0.0.1:${D.port}/v1/stream`, '--insecure', '--requests', '4', '--max-tokens', '4', '--json'],
    {timeout: 120000}, (err, stdout, stderr) => (err ? reject(new Error(`${err.message}\n${stderr}`)) : resolve(stdout))));
  assert.equal(JSON.parse(out).completed, 4);
  const sse = JSON.parse(await runBench(['--url', `https://127.0.0.1:${D.port}/v1/completions`, '--insecure',
    '--requests', '4', '--concurrency', '2', '--max-tokens', '4', '--json']));
  assert.equal(sse.completed, 4);
  assert.equal(sse.tokens_generated, 16);
});

test('logs: one line per request outcome with its id', async () => {
  assert.match(A.log, /request id=c1 conn=\d+ rid=\d+ api=ws outcome=done_length prompt_tokens=5 completion_tokens=12/);
  assert.match(A.log, /request id=u5 conn=\d+ api=ws outcome=invalid_request/);
  assert.match(A.log, /request id=k conn=\d+ rid=\d+ api=ws outcome=cancelled/);
});

async function main() {
  let failed = 0;
  try {
    A = await startInferd('A', ['--model', 'synthetic:tiny', '--set', 'server.max_frame_bytes=65536',
      '--chat-template', path.join(repo, 'tests', 'e2e', 'data', 'chatml.jinja')]);
    C = await startInferd('C', ['--model', 'synthetic:tiny', '--max-running', '1', '--queue-capacity', '1',
      '--no-prefix-caching']);
    if (!SKIP_GPT2) B = await startInferd('B', ['--model', 'synthetic:gpt2-small', '--api-key', 'e2e-key']);
    const certDir = fs.mkdtempSync(path.join(os.tmpdir(), 'inferd-e2e-tls-'));
    const cert = path.join(certDir, 'cert.pem'), key = path.join(certDir, 'key.pem');
    const made = await new Promise((resolve) => execFile('openssl', ['req', '-x509', '-newkey', 'ec', '-pkeyopt',
      'ec_paramgen_curve:prime256v1', '-nodes', '-keyout', key, '-out', cert, '-days', '1', '-subj', '/CN=127.0.0.1'],
    (err) => resolve(!err)));
    if (made) {
      D = await startInferd('D', ['--model', 'synthetic:tiny', '--tls-cert', cert, '--tls-key', key]);
      D.tls = true;
    }
    await waitReady(A);
    for (const t of tests) {
      if (ONLY && !t.name.includes(ONLY)) continue;
      const t0 = Date.now();
      try {
        await t.fn();
        console.log(`ok    ${t.name} (${Date.now() - t0} ms)`);
      } catch (e) {
        failed++;
        console.log(`FAIL  ${t.name}\n      ${(e && e.stack) || e}`);
      }
    }
    for (const inst of [A, B, C, D]) {
      if (!inst) continue;
      const r = await inst.stop();
      if (r.code !== 0) {
        failed++;
        console.log(`FAIL  ${inst.name}: inferd exit ${JSON.stringify(r)} after SIGTERM`);
      }
    }
  } catch (e) {
    failed++;
    console.log(`FAIL  setup: ${(e && e.stack) || e}`);
  } finally {
    for (const inst of running) inst.proc.kill('SIGKILL');
  }
  if (failed) {
    for (const inst of [A, B, C, D]) if (inst) console.log(`---- ${inst.name} log (tail)\n${inst.log.split('\n').slice(-40).join('\n')}`);
  }
  console.log(failed ? `${failed} failed` : 'all passed');
  process.exit(failed ? 1 : 0);
}

main();
