#!/usr/bin/env node
// Issue 16 end to end, driven by the official `openai` npm SDK: every sampling and output
// field of /v1/completions and /v1/chat/completions changes the output as OpenAI / vLLM
// document it (penalties, logit_bias, min_p, min_tokens, ignore_eos, stop_token_ids,
// max_completion_tokens, seed, logprobs / top_logprobs plain and streamed, echo, user, n), and
// every out-of-range or unsupported value is a 400 whose `param` names the field. The
// WebSocket token event carries logprobs when asked.
//
//   node tests/e2e/sampling-e2e.js --inferd build/bin/inferd
'use strict';
const assert = require('node:assert/strict');
const path = require('node:path');
const lib = require('./e2e-lib.js');
const {arg, waitFor, running, httpGet} = lib;
const WebSocket = lib.need('ws');
const {OpenAI, BadRequestError} = lib.need('openai');

const INFERD = arg('--inferd', path.join(lib.repo, 'build', 'bin', 'inferd'));
const TEMPLATE = path.join(lib.repo, 'tests', 'e2e', 'data', 'chatml.jinja');

function wsGenerate(port, frame) {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(`ws://127.0.0.1:${port}/v1/stream`);
    const tokens = [], frames = [];
    ws.on('open', () => ws.send(JSON.stringify({type: 'generate', id: 's1', ...frame})));
    ws.on('message', (m) => {
      const f = JSON.parse(m.toString());
      if (f.type === 'token') { tokens.push(f.token); frames.push(f); }
      if (f.type === 'done' || f.type === 'error') { ws.close(); resolve({tokens, frames, done: f}); }
    });
    ws.on('error', reject);
  });
}

const repeats = (xs) => xs.length - new Set(xs).size;
const close = (a, b, eps = 1e-4) => Math.abs(a - b) <= eps;

async function main() {
  const srv = await lib.startInferd(INFERD, 'sampling', ['--listen', '127.0.0.1:0', '--backend', 'cpu', '--model',
    'synthetic:tiny', '--served-model-name', 'm', '--chat-template', TEMPLATE]);
  await waitFor('sampling: /readyz', async () => {
    if (srv.exited) throw new Error(`exited:\n${srv.log}`);
    return (await httpGet(srv.port, '/readyz')).status === 200;
  }, 120000);
  const client = new OpenAI({baseURL: `http://127.0.0.1:${srv.port}/v1`, apiKey: 'unused', maxRetries: 0});
  const prompt = 'The quick brown fox';
  const N = 24;
  const cmpl = (extra) => client.completions.create({model: 'm', prompt, max_tokens: N, temperature: 0, ...extra});
  const ws = (extra) => wsGenerate(srv.port, {prompt, max_tokens: N, ...extra});

  // Greedy baseline (token ids from the WebSocket); the tiny model repeats itself.
  const base = await ws({});
  assert.equal(base.tokens.length, N);
  assert.ok(repeats(base.tokens) > 0, `no repeats in ${base.tokens}`);
  const baseText = (await cmpl({})).choices[0].text;

  // Penalties: fewer repeats, a different text, and the same ranges through the SDK.
  for (const [field, value] of [['frequency_penalty', 2], ['presence_penalty', 2], ['repetition_penalty', 2.0]]) {
    const p = await ws({[field]: value});
    assert.ok(repeats(p.tokens) < repeats(base.tokens), `${field}: ${repeats(p.tokens)} repeats vs ${repeats(base.tokens)}`);
    const r = await client.completions.create({model: 'm', prompt, max_tokens: N, temperature: 0, [field]: value});
    assert.notEqual(r.choices[0].text, baseText, field);
  }
  // A negative presence penalty favours what was said: more repeats.
  const neg = await ws({presence_penalty: -2});
  assert.ok(repeats(neg.tokens) >= repeats(base.tokens));

  // logit_bias: +100 forces an id (every token), -100 bans the greedy first token.
  const x = (base.tokens[0] + 17) % 256;
  const forced = await ws({logit_bias: {[x]: 100}});
  assert.deepEqual(forced.tokens, Array(N).fill(x));
  const fText = (await cmpl({logit_bias: {[x]: 100}, max_tokens: 4})).choices[0].text;
  assert.equal(fText, (await httpGet(srv.port, '/detokenize', {tokens: [x, x, x, x]})).json().prompt);
  const banned = await ws({logit_bias: {[base.tokens[0]]: -100}});
  assert.notEqual(banned.tokens[0], base.tokens[0]);

  // min_p 1 keeps only the most likely id: sampling at temperature 1.5 becomes greedy.
  const mp = await ws({temperature: 1.5, min_p: 1.0, seed: 4});
  assert.deepEqual(mp.tokens, base.tokens);
  const hot = await ws({temperature: 1.5, seed: 4});
  assert.notDeepEqual(hot.tokens, base.tokens);

  // seed: equal seeds equal outputs, another seed another output.
  const s1 = await cmpl({temperature: 1, seed: 11}), s2 = await cmpl({temperature: 1, seed: 11});
  const s3 = await cmpl({temperature: 1, seed: 12});
  assert.equal(s1.choices[0].text, s2.choices[0].text);
  assert.notEqual(s1.choices[0].text, s3.choices[0].text);

  // stop_token_ids ends at the first occurrence; min_tokens holds it back; ignore_eos
  // keeps going past an EOS forced by logit_bias (the tokenizer's EOS ids are refused below
  // when it has none: then ignore_eos changes nothing and is checked to change nothing).
  const stopId = base.tokens[5];
  const firstAt = base.tokens.indexOf(stopId);
  const st = await cmpl({stop_token_ids: [stopId]});
  assert.equal(st.choices[0].finish_reason, 'stop');
  assert.equal(st.usage.completion_tokens, firstAt + 1);
  const held = await ws({stop_token_ids: [stopId], min_tokens: firstAt + 3});
  assert.ok(held.tokens.length >= firstAt + 3);
  assert.ok(held.tokens.slice(0, firstAt + 3).every((t) => t !== stopId));
  const forcedStop = await ws({stop_token_ids: [x], logit_bias: {[x]: 100}, min_tokens: 5});
  assert.equal(forcedStop.tokens.length, 6);  // five others, then the stop id
  assert.equal(forcedStop.done.finish_reason, 'stop');
  const ign = await ws({ignore_eos: true});
  assert.deepEqual(ign.tokens, base.tokens);

  // logprobs (completions): OpenAI's shape, the token's logprob in its top dict, greedy = the best.
  const lp = await cmpl({logprobs: 3, max_tokens: 8});
  const L = lp.choices[0].logprobs;
  assert.equal(L.tokens.length, 8);
  assert.equal(L.token_logprobs.length, 8);
  assert.equal(L.top_logprobs.length, 8);
  assert.equal(L.text_offset.length, 8);
  assert.equal(L.tokens.join(''), lp.choices[0].text);
  for (let i = 0; i < 8; ++i) {
    const top = L.top_logprobs[i];
    assert.ok(Object.keys(top).length >= 3 && Object.keys(top).length <= 4);
    assert.ok(L.token_logprobs[i] <= 0);
    assert.ok(close(top[L.tokens[i]], L.token_logprobs[i]));
    assert.ok(Object.values(top).every((v) => v <= L.token_logprobs[i] + 1e-6), 'greedy picks the most likely');
    if (i) assert.equal(L.text_offset[i], L.text_offset[i - 1] + Buffer.byteLength(L.tokens[i - 1]));
  }
  // Temperature and penalties change the pick, not the reported (raw) distribution.
  const lpHot = await cmpl({logprobs: 3, max_tokens: 1, temperature: 1.5, frequency_penalty: 1, seed: 1});
  assert.ok(close(Math.max(...Object.values(lpHot.choices[0].logprobs.top_logprobs[0])),
    Math.max(...Object.values(L.top_logprobs[0]))));
  // Streamed: one token's logprobs per chunk, the same as above.
  const stream = await client.completions.create({model: 'm', prompt, max_tokens: 8, temperature: 0, logprobs: 3,
    stream: true});
  const sTok = [], sLp = [];
  for await (const ch of stream) {
    const l = ch.choices[0] && ch.choices[0].logprobs;
    if (l) { sTok.push(...l.tokens); sLp.push(...l.token_logprobs); }
  }
  assert.deepEqual(sTok, L.tokens);
  sLp.forEach((v, i) => assert.ok(close(v, L.token_logprobs[i])));

  // echo: the prompt, then the completion (streamed: the prompt first).
  const ec = await cmpl({echo: true, max_tokens: 6});
  assert.ok(ec.choices[0].text.startsWith(prompt));
  assert.equal(ec.choices[0].text, prompt + (await cmpl({max_tokens: 6})).choices[0].text);
  const es = await client.completions.create({model: 'm', prompt, max_tokens: 6, temperature: 0, echo: true, stream: true});
  let esText = '';
  for await (const ch of es) esText += (ch.choices[0] && ch.choices[0].text) || '';
  assert.equal(esText, ec.choices[0].text);
  // echo with logprobs: the prompt's tokens first (the first null), then the completion's;
  // the prompt's equal what a longer completion reports at those positions, with or without
  // the prompt in the prefix cache (it was computed above).
  const el = await cmpl({echo: true, logprobs: 2, max_tokens: 3});
  const EL = el.choices[0].logprobs;
  const nPrompt = el.usage.prompt_tokens;
  assert.equal(EL.tokens.length, nPrompt + 3);
  assert.equal(EL.token_logprobs[0], null);
  assert.equal(EL.top_logprobs[0], null);
  for (let i = 1; i < nPrompt; ++i) {
    assert.ok(EL.token_logprobs[i] <= 0);
    assert.ok(Object.keys(EL.top_logprobs[i]).length >= 2);
  }
  assert.equal(EL.tokens.join(''), el.choices[0].text);
  assert.equal(EL.text_offset[0], 0);
  assert.equal(EL.text_offset[nPrompt], prompt.length);
  assert.deepEqual(EL.tokens.slice(nPrompt), (await cmpl({logprobs: 2, max_tokens: 3})).choices[0].logprobs.tokens);
  // The prompt's last token's logprob is what a completion of the prompt minus it reports first.
  const head = await httpGet(srv.port, '/tokenize', {prompt});
  const ids = head.json().tokens;
  const shorter = await client.completions.create({model: 'm', prompt: [ids.slice(0, -1)], max_tokens: 1,
    temperature: 0, logprobs: 2, logit_bias: {[ids[ids.length - 1]]: 100}});
  assert.ok(close(shorter.choices[0].logprobs.token_logprobs[0], EL.token_logprobs[nPrompt - 1], 1e-3));
  const els = await client.completions.create({model: 'm', prompt, max_tokens: 3, temperature: 0, echo: true,
    logprobs: 2, stream: true});
  const elsTok = [];
  let elsText = '';
  for await (const k of els) {
    elsText += k.choices[0].text;
    if (k.choices[0].logprobs) elsTok.push(...k.choices[0].logprobs.tokens);
  }
  assert.equal(elsText, el.choices[0].text);
  assert.deepEqual(elsTok, EL.tokens);
  // user: accepted, changes nothing.
  assert.equal((await cmpl({user: 'someone'})).choices[0].text, baseText);

  // WebSocket: logprobs on the token events.
  const wl = await ws({logprobs: 2, max_tokens: 4});
  assert.equal(wl.frames.length, 4);
  for (const f of wl.frames) {
    assert.equal(f.top_logprobs.length, 2);
    assert.equal(f.top_logprobs[0].token, f.token);  // greedy
    assert.ok(close(f.top_logprobs[0].logprob, f.logprob));
  }
  assert.equal(base.frames[0].logprob, undefined);

  // Chat: logprobs + top_logprobs (content[] with bytes), streamed too; max_completion_tokens.
  const messages = [{role: 'user', content: 'Say something.'}];
  const ch = await client.chat.completions.create({model: 'm', messages, max_completion_tokens: 5, max_tokens: 9,
    temperature: 0, logprobs: true, top_logprobs: 2});
  assert.equal(ch.usage.completion_tokens, 5);
  const C = ch.choices[0].logprobs.content;
  assert.equal(C.length, 5);
  for (const c of C) {
    assert.equal(c.top_logprobs.length, 2);
    assert.ok(Array.isArray(c.bytes) && c.bytes.length > 0);
    assert.equal(c.top_logprobs[0].token, c.token);
    assert.ok(close(c.top_logprobs[0].logprob, c.logprob));
    assert.ok(c.top_logprobs[1].logprob <= c.top_logprobs[0].logprob);
  }
  assert.equal(Buffer.concat(C.map((c) => Buffer.from(c.bytes))).toString('utf8'), ch.choices[0].message.content);
  const chs = await client.chat.completions.create({model: 'm', messages, max_completion_tokens: 5, temperature: 0,
    logprobs: true, top_logprobs: 2, stream: true});
  const sC = [];
  for await (const k of chs) if (k.choices[0] && k.choices[0].logprobs) sC.push(...k.choices[0].logprobs.content);
  assert.deepEqual(sC.map((c) => c.token), C.map((c) => c.token));
  const chNo = await client.chat.completions.create({model: 'm', messages, max_tokens: 3, temperature: 0});
  assert.equal(chNo.choices[0].logprobs, null);
  const chPen = await client.chat.completions.create({model: 'm', messages, max_tokens: N, temperature: 0,
    frequency_penalty: 2, logit_bias: {[x]: -100}, min_p: 0.1, min_tokens: 2, repetition_penalty: 1.5, seed: 3});
  const chBase = await client.chat.completions.create({model: 'm', messages, max_tokens: N, temperature: 0});
  assert.notEqual(chPen.choices[0].message.content, chBase.choices[0].message.content);

  // n choices (completions, chat, WebSocket; plain and streamed): distinct at temperature 1,
  // reproducible with a seed (choice 0 is what n = 1 gives), the prompt counted once.
  const n4 = await cmpl({n: 4, temperature: 1, seed: 21, max_tokens: 10});
  assert.deepEqual(n4.choices.map((c) => c.index), [0, 1, 2, 3]);
  assert.equal(new Set(n4.choices.map((c) => c.text)).size, 4, JSON.stringify(n4.choices));
  for (const c of n4.choices) assert.equal(c.finish_reason, 'length');
  const n1 = await cmpl({temperature: 1, seed: 21, max_tokens: 10});
  assert.equal(n4.choices[0].text, n1.choices[0].text);
  assert.equal(n4.usage.prompt_tokens, n1.usage.prompt_tokens);
  assert.equal(n4.usage.completion_tokens, 40);
  assert.deepEqual((await cmpl({n: 4, temperature: 1, seed: 21, max_tokens: 10})).choices.map((c) => c.text),
    n4.choices.map((c) => c.text));
  const n4s = await client.completions.create({model: 'm', prompt, n: 4, temperature: 1, seed: 21, max_tokens: 10,
    stream: true, stream_options: {include_usage: true}});
  const parts = ['', '', '', ''], fins = [], order = [];
  let n4usage = null;
  for await (const k of n4s) {
    if (k.usage) n4usage = k.usage;
    for (const c of k.choices) {
      parts[c.index] += c.text;
      order.push(c.index);
      if (c.finish_reason) fins[c.index] = c.finish_reason;
    }
  }
  assert.deepEqual(parts, n4.choices.map((c) => c.text));
  assert.deepEqual(fins, ['length', 'length', 'length', 'length']);
  assert.ok(order.slice(0, 8).some((i, k) => k > 0 && i !== order[k - 1]), `not interleaved: ${order}`);
  assert.equal(n4usage.completion_tokens, 40);
  assert.equal(n4usage.prompt_tokens, n1.usage.prompt_tokens);
  const nlp = await cmpl({n: 2, temperature: 1, seed: 5, max_tokens: 4, logprobs: 1});
  for (const c of nlp.choices) {
    assert.equal(c.logprobs.tokens.length, 4);
    assert.equal(c.logprobs.tokens.join(''), c.text);
  }
  for (const c of (await cmpl({n: 2, temperature: 1, seed: 5, max_tokens: 4, echo: true})).choices)
    assert.ok(c.text.startsWith(prompt));
  // A stop string ends each choice on its own (greedy: both the same, both stopped).
  const stopStr = baseText.slice(6, 9);
  const nst = await cmpl({n: 2, stop: [stopStr]});
  for (const c of nst.choices) {
    assert.equal(c.finish_reason, 'stop');
    assert.equal(c.text, baseText.slice(0, baseText.indexOf(stopStr)));
  }
  const cn = await client.chat.completions.create({model: 'm', messages, n: 3, temperature: 1, seed: 9, max_tokens: 8});
  assert.deepEqual(cn.choices.map((c) => c.index), [0, 1, 2]);
  assert.equal(new Set(cn.choices.map((c) => c.message.content)).size, 3);
  assert.equal(cn.usage.completion_tokens, 24);
  const cns = await client.chat.completions.create({model: 'm', messages, n: 3, temperature: 1, seed: 9, max_tokens: 8,
    stream: true});
  const cparts = ['', '', ''], roles = [], cfins = [];
  for await (const k of cns)
    for (const c of k.choices) {
      if (c.delta.role) roles[c.index] = c.delta.role;
      cparts[c.index] += c.delta.content || '';
      if (c.finish_reason) cfins[c.index] = c.finish_reason;
    }
  assert.deepEqual(cparts, cn.choices.map((c) => c.message.content));
  assert.deepEqual(roles, ['assistant', 'assistant', 'assistant']);
  assert.deepEqual(cfins, ['length', 'length', 'length']);
  const wn = await ws({n: 3, temperature: 1, seed: 9, max_tokens: 5});
  for (let i = 0; i < 3; ++i) {
    const mine = wn.frames.filter((f) => f.choice === i);
    assert.deepEqual(mine.map((f) => f.index), [0, 1, 2, 3, 4]);
    assert.equal(mine[4].finish_reason, 'length');
  }
  assert.equal(wn.done.usage.completion_tokens, 15);
  assert.deepEqual(wn.done.choices.map((c) => c.finish_reason), ['length', 'length', 'length']);

  // Errors: 400, the message and `param` name the field.
  const expect400 = async (make, param, re) => {
    await assert.rejects(make(), (e) => {
      assert.ok(e instanceof BadRequestError, String(e));
      assert.equal(e.status, 400);
      assert.equal(e.param, param, `${param}: ${e.message}`);
      if (re) assert.match(e.message, re);
      return true;
    });
  };
  const bc = (extra) => () => client.completions.create({model: 'm', prompt, max_tokens: 4, ...extra});
  const bch = (extra) => () => client.chat.completions.create({model: 'm', messages, max_tokens: 4, ...extra});
  await expect400(bc({presence_penalty: 2.5}), 'presence_penalty');
  await expect400(bc({frequency_penalty: -3}), 'frequency_penalty');
  await expect400(bc({repetition_penalty: 0}), 'repetition_penalty');
  await expect400(bc({min_p: 1.5}), 'min_p');
  await expect400(bc({min_tokens: 5}), 'min_tokens', /max_tokens/);
  await expect400(bc({logit_bias: {[x]: 101}}), 'logit_bias');
  await expect400(bc({logit_bias: {abc: 1}}), 'logit_bias');
  await expect400(bc({logit_bias: {99999: 1}}), 'logit_bias');
  await expect400(bc({logprobs: 21}), 'logprobs');
  await expect400(bc({prompt_logprobs: 1}), 'prompt_logprobs', /echo/);
  await expect400(bc({use_beam_search: true}), 'use_beam_search');
  await expect400(bc({suffix: 'tail'}), 'suffix');
  await expect400(bc({best_of: 2}), 'best_of', /n/);
  await expect400(bc({n: 17}), 'n', /16/);
  await expect400(bc({n: 0}), 'n');
  await expect400(bc({temperature: -1}), 'temperature');
  await expect400(bc({top_p: 0}), 'top_p');
  await expect400(bc({stop_token_ids: [100000]}), 'stop_token_ids');
  await expect400(bc({user: 5}), 'user');
  await expect400(bch({top_logprobs: 2}), 'top_logprobs', /logprobs/);
  await expect400(bch({logprobs: true, top_logprobs: 30}), 'top_logprobs');
  await expect400(bch({presence_penalty: 9}), 'presence_penalty');
  await expect400(bch({max_completion_tokens: 0}), 'max_completion_tokens');
  await expect400(bch({min_tokens: 3, max_completion_tokens: 2}), 'min_tokens');
  await expect400(bch({n: 17}), 'n');
  await expect400(bch({audio: {voice: 'x', format: 'mp3'}}), 'audio');
  const tooMany = {};
  for (let i = 0; i < 301; ++i) tooMany[i] = 1;
  await expect400(bc({logit_bias: tooMany}), 'logit_bias', /300/);
  const wsBad = await ws({presence_penalty: 7});
  assert.equal(wsBad.done.type, 'error');
  assert.match(wsBad.done.message, /presence_penalty/);

  await srv.stop();
  console.log('sampling e2e: all checks passed');
}

main().catch(async (e) => {
  console.error(e);
  for (const inst of running) {
    console.error(`--- ${inst.name} log ---\n${inst.log.slice(-4000)}`);
    inst.proc.kill('SIGKILL');
  }
  process.exit(1);
});
