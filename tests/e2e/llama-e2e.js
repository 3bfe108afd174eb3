#!/usr/bin/env node
// End to end on a Llama-family model (synthetic:llama-tiny: GQA, RoPE, SwiGLU, untied head):
// the real inferd over the WebSocket protocol and /v1/completions must give the same greedy
// tokens as the CPU engine alone (tests/engine-generate.cpp), for requests run one at a
// time and batched together.
//
//   node tests/e2e/llama-e2e.js --inferd build/bin/inferd --engine build/tests/engine-generate
'use strict';
const assert = require('node:assert/strict');
const {execFileSync} = require('node:child_process');
const lib = require('./e2e-lib.js');
const {arg, waitFor, running} = lib;
const WebSocket = lib.need('ws');

const INFERD = arg('--inferd', `${lib.repo}/build/bin/inferd`);
const ENGINE = arg('--engine', `${lib.repo}/build/tests/engine-generate`);
const MODEL = 'synthetic:llama-tiny';
const SEED = '77';
const MAX = 24;
const prompts = ['Hello', 'The capital of France is', 'x', 'Once upon a time, in a land far away,', 'GLM', '1 2 3 4'];
const ids = (s) => [...Buffer.from(s, 'utf8')];

function engineAlone() {
  const args = ['--model', MODEL, '--seed', SEED, '--max-tokens', String(MAX)];
  for (const p of prompts) args.push('--prompt-tokens', ids(p).join(','));
  const out = execFileSync(ENGINE, args, {encoding: 'utf8', timeout: 300000});
  return out.trim().split('\n').map((l) => JSON.parse(l).tokens);
}

function wsRun(port, reqs) {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(`ws://127.0.0.1:${port}/v1/stream`);
    const got = new Map();
    let open = reqs.length;
    ws.on('error', reject);
    ws.on('open', () => reqs.forEach((r) => ws.send(JSON.stringify(r))));
    ws.on('message', (data) => {
      const f = JSON.parse(data.toString());
      if (!got.has(f.id)) got.set(f.id, {tokens: [], terminal: null});
      const g = got.get(f.id);
      if (f.type === 'token') g.tokens.push(f.token);
      if (f.type === 'done' || f.type === 'error') {
        g.terminal = f;
        if (--open === 0) {
          ws.close();
          resolve(got);
        }
      }
    });
  });
}

async function main() {
  let failed = 0;
  const check = async (name, fn) => {
    try {
      await fn();
      console.log(`ok    ${name}`);
    } catch (e) {
      failed++;
      console.log(`FAIL  ${name}\n      ${(e && e.stack) || e}`);
    }
  };
  let inst;
  try {
    const want = engineAlone();
    assert.equal(want.length, prompts.length);
    // The tokens must not be trivially constant, or the comparison would prove little.
    assert.ok(new Set(want.flat()).size > 5, `engine tokens too uniform: ${JSON.stringify(want)}`);
    inst = await lib.startInferd(INFERD, 'llama', ['--listen', '127.0.0.1:0', '--backend', 'cpu', '--model', MODEL,
      '--seed', SEED, '--max-model-len', '512']);
    await waitFor('readyz', async () => {
      if (inst.exited) throw new Error(`inferd exited: ${inst.log}`);
      return (await lib.httpGet(inst.port, '/readyz')).status === 200;
    }, 180000);
    await check('start-up log states the context served', async () => {
      assert.match(inst.log, /serving a context of 512 tokens \(max_position_embeddings 2048, --max-model-len 512\)/);
      const t = (await lib.httpGet(inst.port, '/tokenize', {prompt: 'ab'})).json();
      assert.equal(t.max_model_len, 512);
    });
    await check('ws: each prompt alone gives the engine\'s greedy tokens', async () => {
      for (let i = 0; i < prompts.length; i++) {
        const got = await wsRun(inst.port, [{type: 'generate', id: `a${i}`, prompt: prompts[i], max_tokens: MAX, temperature: 0}]);
        const g = got.get(`a${i}`);
        assert.equal(g.terminal.type, 'done', JSON.stringify(g.terminal));
        assert.deepEqual(g.tokens, want[i], `prompt ${JSON.stringify(prompts[i])}`);
      }
    });
    await check('ws: all prompts batched together give the same tokens', async () => {
      const got = await wsRun(inst.port, prompts.map((p, i) => ({type: 'generate', id: `b${i}`, prompt_tokens: ids(p), max_tokens: MAX})));
      prompts.forEach((p, i) => assert.deepEqual(got.get(`b${i}`).tokens, want[i], `prompt ${JSON.stringify(p)}`));
    });
    await check('/v1/completions: the text of the engine\'s tokens, plain and streamed, alone and concurrent', async () => {
      // The byte tokenizer knows ids 0..255; the model's padding ids above decode to nothing.
      const texts = await Promise.all(want.map(async (toks) => {
        const r = await lib.httpGet(inst.port, '/detokenize', {tokens: toks.filter((t) => t < 256)});
        assert.equal(r.status, 200, r.body);
        return r.json().prompt;
      }));
      const rs = await Promise.all(prompts.map((p) => lib.httpGet(inst.port, '/v1/completions', {prompt: p, max_tokens: MAX, temperature: 0})));
      rs.forEach((r, i) => {
        assert.equal(r.status, 200, r.body);
        const j = r.json();
        assert.equal(j.usage.completion_tokens, MAX);
        assert.equal(j.choices[0].text, texts[i], `prompt ${JSON.stringify(prompts[i])}`);
      });
      const s = await lib.httpGet(inst.port, '/v1/completions', {prompt: prompts[3], max_tokens: MAX, temperature: 0, stream: true});
      const chunks = s.body.split('\n\n').filter((e) => e.startsWith('data: {')).map((e) => JSON.parse(e.slice(6)));
      assert.equal(chunks.map((c) => c.choices[0].text).join(''), texts[3]);
    });
    await check('a prompt longer than --max-model-len is refused', async () => {
      const got = await wsRun(inst.port, [{type: 'generate', id: 'long', prompt_tokens: new Array(600).fill(65), max_tokens: 4}]);
      assert.equal(got.get('long').terminal.type, 'error');
    });
    const r = await inst.stop();
    if (r.code !== 0) {
      failed++;
      console.log(`FAIL  inferd exit ${JSON.stringify(r)} after SIGTERM`);
    }
  } catch (e) {
    failed++;
    console.log(`FAIL  setup: ${(e && e.stack) || e}`);
  } finally {
    for (const i of running) i.proc.kill('SIGKILL');
  }
  if (failed && inst) console.log(`---- inferd log (tail)\n${inst.log.split('\n').slice(-40).join('\n')}`);
  console.log(failed ? `${failed} failed` : 'all passed');
  process.exit(failed ? 1 : 0);
}

main();
