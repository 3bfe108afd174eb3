#!/usr/bin/env node
// Issue 20 end to end: constrained decoding through the real inferd on a random-weight model
// (synthetic:llama-tiny, whose unconstrained output is noise, so a valid output is the
// constraint's doing), CPU backend. 50 requests per kind, sampled at temperature 1 with
// distinct seeds: every JSON schema output parses and validates with an independent
// validator (npm ajv), every json_object output is a JSON object, every regex output matches
// (JavaScript's RegExp), every choice output is one of the choices. Unconstrained requests
// batched with constrained ones get the tokens they get alone. A heavy logit_bias cannot
// bring a masked token back. max_tokens inside an unfinished structure ends with "length".
// Unsupported keywords are 400s whose param names the field. The OpenAI SDK drives
// response_format on completions and chat completions; the WebSocket protocol the vLLM fields.
//
//   node tests/e2e/structured-e2e.js --inferd build/bin/inferd
'use strict';
const assert = require('node:assert/strict');
const path = require('node:path');
const lib = require('./e2e-lib.js');
const {arg, waitFor, running, httpGet} = lib;
const WebSocket = lib.need('ws');
const {OpenAI, BadRequestError} = lib.need('openai');
const Ajv = lib.need('ajv');
const addFormats = lib.need('ajv-formats');

const INFERD = arg('--inferd', path.join(lib.repo, 'build', 'bin', 'inferd'));
const TEMPLATE = path.join(lib.repo, 'tests', 'e2e', 'data', 'chatml.jinja');
const N = 50;

// One WebSocket, many generate frames; resolves to id -> {tokens, text, done}.
function wsBatch(port, frames) {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(`ws://127.0.0.1:${port}/v1/stream`);
    const got = new Map();
    let open = frames.length;
    ws.on('error', reject);
    ws.on('open', () => frames.forEach((f) => ws.send(JSON.stringify({type: 'generate', ...f}))));
    ws.on('message', (data) => {
      const f = JSON.parse(data.toString());
      if (!got.has(f.id)) got.set(f.id, {tokens: [], text: '', done: null});
      const g = got.get(f.id);
      if (f.type === 'token') { g.tokens.push(f.token); g.text += f.text; }
      if (f.type === 'done' || f.type === 'error') {
        g.done = f;
        if (--open === 0) { ws.close(); resolve(got); }
      }
    });
  });
}

const toolSchema = {
  type: 'object',
  properties: {
    name: {type: 'string', enum: ['get_weather', 'search', 'book_flight']},
    arguments: {
      type: 'object',
      properties: {
        city: {type: 'string', minLength: 1, maxLength: 12},
        days: {type: 'integer'},
        unit: {anyOf: [{const: 'celsius'}, {const: 'fahrenheit'}, {type: 'null'}]},
        tags: {type: 'array', items: {type: 'string', maxLength: 4}, maxItems: 3},
        when: {type: 'string', format: 'date'},
        ok: {type: 'boolean'},
      },
      required: ['city', 'days'],
      additionalProperties: false,
    },
    score: {type: 'number'},
  },
  required: ['name', 'arguments'],
  additionalProperties: false,
};

async function main() {
  const srv = await lib.startInferd(INFERD, 'structured', ['--listen', '127.0.0.1:0', '--backend', 'cpu', '--model',
    'synthetic:llama-tiny', '--seed', '20', '--served-model-name', 'm', '--chat-template', TEMPLATE,
    '--max-model-len', '1024']);
  await waitFor('structured: /readyz', async () => {
    if (srv.exited) throw new Error(`exited:\n${srv.log}`);
    return (await httpGet(srv.port, '/readyz')).status === 200;
  }, 120000);
  const client = new OpenAI({baseURL: `http://127.0.0.1:${srv.port}/v1`, apiKey: 'unused', maxRetries: 0});
  const ajv = new Ajv({strict: true});
  addFormats(ajv);
  const finishes = (xs) => xs.reduce((m, x) => ((m[x] = (m[x] || 0) + 1), m), {});
  // Strings, numbers and nesting are open-ended: a random model closes them by chance, so
  // a few digits or bytes more or less are fine, but every output must be complete.
  const MAX = 400;

  // 1. json_schema through the SDK's completions (response_format), 50 seeds at once.
  const validate = ajv.compile(toolSchema);
  const rf = {type: 'json_schema', json_schema: {name: 'tool_call', strict: true, schema: toolSchema}};
  const schemaOut = await Promise.all([...Array(N).keys()].map((i) =>
    client.completions.create({model: 'm', prompt: `call ${i}:`, max_tokens: MAX, temperature: 1, seed: i,
      response_format: rf})));
  const fr1 = finishes(schemaOut.map((r) => r.choices[0].finish_reason));
  assert.deepEqual(fr1, {stop: N}, `json_schema finish reasons ${JSON.stringify(fr1)}`);
  const names = new Set();
  for (const r of schemaOut) {
    const text = r.choices[0].text;
    const v = JSON.parse(text);
    assert.ok(validate(v), `ajv: ${JSON.stringify(validate.errors)} for ${text}`);
    names.add(v.name);
  }
  assert.ok(names.size >= 2, 'the seeds should pick different enum values');
  assert.equal(new Set(schemaOut.map((r) => r.choices[0].text)).size > N / 2, true, 'outputs should differ by seed');
  console.log(`ok    json_schema: ${N} outputs valid (ajv), e.g. ${schemaOut[0].choices[0].text}`);

  // 2. json_object through the SDK's chat completions. Biasing the closing bytes keeps a random
  // model's nesting short; the mask still decides what may close where.
  const objOut = await Promise.all([...Array(N).keys()].map((i) =>
    client.chat.completions.create({model: 'm', messages: [{role: 'user', content: `object ${i}`}],
      max_tokens: MAX, temperature: 1, seed: 100 + i, response_format: {type: 'json_object'},
      logit_bias: {34: 2, 125: 2, 93: 2}})));
  const fr2 = finishes(objOut.map((r) => r.choices[0].finish_reason));
  assert.deepEqual(fr2, {stop: N}, `json_object finish reasons ${JSON.stringify(fr2)}`);
  let nonEmpty = 0, nested = 0;
  for (const r of objOut) {
    const v = JSON.parse(r.choices[0].message.content);
    assert.ok(v !== null && typeof v === 'object' && !Array.isArray(v), r.choices[0].message.content);
    if (Object.keys(v).length > 0) ++nonEmpty;
    if (Object.values(v).some((x) => x !== null && typeof x === 'object')) ++nested;
  }
  // Not a test of {} alone: members and nested containers are produced too.
  assert.ok(nonEmpty >= N / 4 && nested >= 1, `json_object: ${nonEmpty} non-empty, ${nested} nested of ${N}`);
  console.log(`ok    json_object: ${N} outputs are JSON objects, ${nonEmpty} non-empty, ${nested} nested`);

  // 3. regex through the WebSocket protocol (vLLM's structured_outputs), 4. choice (guided_choice).
  const re = '(\\d{3}-\\d{4}|[A-Z][a-z]{2,6}) (ok|fail)!?';
  const choices = ['positive', 'negative', 'neutral', 'no opinion'];
  const frames = [];
  for (let i = 0; i < N; i++) {
    frames.push({id: `r${i}`, prompt: `regex ${i}`, max_tokens: 64, temperature: 1, seed: i,
      structured_outputs: {regex: re}});
    // A heavy bias on 'x' (never allowed by the choices) must not leak through the mask.
    frames.push({id: `c${i}`, prompt: `choice ${i}`, max_tokens: 64, temperature: 1, seed: i,
      guided_choice: choices, logit_bias: {120: 100}});
  }
  const got = await wsBatch(srv.port, frames);
  const rx = new RegExp(`^(?:${re})$`, 'u');
  const seenChoices = new Set();
  for (let i = 0; i < N; i++) {
    const r = got.get(`r${i}`), c = got.get(`c${i}`);
    assert.equal(r.done.type, 'done', JSON.stringify(r.done));
    assert.equal(r.done.finish_reason, 'stop');
    assert.match(r.text, rx);
    assert.equal(c.done.finish_reason, 'stop');
    assert.ok(choices.includes(c.text), `choice output ${JSON.stringify(c.text)}`);
    assert.ok(!c.tokens.includes(120));
    seenChoices.add(c.text);
  }
  assert.ok(seenChoices.size >= 2, `choices seen: ${[...seenChoices]}`);
  console.log(`ok    regex: ${N} outputs match /${re}/, e.g. ${got.get('r0').text}; choice: ${N} in the list`);

  // 5. Mixed batches: unconstrained requests get the same tokens alone as beside constrained ones.
  const plain = [...Array(6).keys()].map((i) => ({id: `p${i}`, prompt: `plain ${i} text`, max_tokens: 24,
    temperature: i % 2 ? 0.8 : 0, seed: 7 + i}));
  const alone = await wsBatch(srv.port, plain);
  const mixedFrames = [...plain];
  for (let i = 0; i < 10; i++) {
    mixedFrames.push({id: `m${i}`, prompt: `mixed ${i}`, max_tokens: 48, temperature: 1, seed: i,
      guided_json: {type: 'object', properties: {a: {type: 'integer'}, b: {type: 'string', maxLength: 5}},
        required: ['a', 'b']}});
  }
  const mixed = await wsBatch(srv.port, mixedFrames);
  for (const p of plain) {
    assert.equal(alone.get(p.id).tokens.length, 24);
    assert.deepEqual(mixed.get(p.id).tokens, alone.get(p.id).tokens, `${p.id} changed when batched`);
  }
  const mixedValid = ajv.compile({type: 'object', properties: {a: {type: 'integer'}, b: {type: 'string', maxLength: 5}},
    required: ['a', 'b']});
  let mixedDone = 0;
  for (let i = 0; i < 10; i++) {
    const m = mixed.get(`m${i}`);
    if (m.done.finish_reason !== 'stop') continue;
    assert.ok(mixedValid(JSON.parse(m.text)), m.text);
    ++mixedDone;
  }
  assert.ok(mixedDone >= 5, `only ${mixedDone} of the mixed constrained requests completed`);
  console.log('ok    mixed batches: unconstrained tokens unchanged beside constrained ones');

  // 6. max_tokens inside an unfinished structure: "length", and the text is a prefix of the language.
  const cut = await client.completions.create({model: 'm', prompt: 'cut', max_tokens: 6, temperature: 1, seed: 3,
    response_format: {type: 'json_schema', json_schema: {name: 'c', schema: {type: 'object',
      properties: {long: {type: 'string', minLength: 30}}, required: ['long']}}}});
  assert.equal(cut.choices[0].finish_reason, 'length');
  assert.ok(cut.choices[0].text.startsWith('{'), cut.choices[0].text);
  assert.throws(() => JSON.parse(cut.choices[0].text));
  console.log('ok    max_tokens inside a structure: finish_reason length');

  // n choices: each fork keeps its own matcher.
  const multi = await client.completions.create({model: 'm', prompt: 'pick', max_tokens: 16, temperature: 1.5, seed: 9,
    n: 4, response_format: {type: 'json_schema', json_schema: {name: 'p', schema: {enum: ['red', 'green', 'blue', 7]}}}});
  assert.equal(multi.choices.length, 4);
  for (const c of multi.choices) {
    assert.equal(c.finish_reason, 'stop');
    assert.ok(['red', 'green', 'blue', 7].includes(JSON.parse(c.text)), c.text);
  }
  console.log(`ok    n=4 choices, each in the enum: ${multi.choices.map((c) => c.text).join(' ')}`);

  // 7. The same schema again: the grammar cache answers (the outputs are the same for a seed).
  const again = await client.completions.create({model: 'm', prompt: 'call 0:', max_tokens: MAX, temperature: 1,
    seed: 0, response_format: rf});
  assert.equal(again.choices[0].text, schemaOut[0].choices[0].text);

  // 8. Refusals: 400 with param naming the field; the message names the keyword.
  const refused = [
    [{response_format: {type: 'json_schema', json_schema: {name: 'x', schema: {type: 'integer', minimum: 0}}}},
      'response_format', /unsupported keyword "minimum"/],
    [{response_format: {type: 'json_schema', json_schema: {name: 'x', schema: {type: 'object',
      patternProperties: {a: {}}}}}}, 'response_format', /"patternProperties"/],
    [{guided_regex: 'a(?=b)'}, 'guided_regex', /lookaround/],
    [{guided_grammar: 'root ::= "a"'}, 'guided_grammar', /not supported/],
    [{structured_outputs: {regex: 'a', choice: ['a']}}, 'structured_outputs', /exactly one/],
  ];
  for (const [extra, param, msg] of refused) {
    await assert.rejects(client.completions.create({model: 'm', prompt: 'x', max_tokens: 4, ...extra}), (e) => {
      assert.ok(e instanceof BadRequestError, String(e));
      assert.equal(e.param, param);
      assert.match(e.message, msg);
      return true;
    });
  }
  // Too large for the automaton limit: found when compiling (after the protocol's check), still a 400.
  await assert.rejects(client.completions.create({model: 'm', prompt: 'x', max_tokens: 4,
    guided_regex: '(a|b)*a(a|b){24}'}), (e) => {
    assert.ok(e instanceof BadRequestError, String(e));
    assert.match(e.message, /too large/);
    return true;
  });
  const wsLarge = await wsBatch(srv.port, [{id: 'big', prompt: 'x', max_tokens: 4, guided_regex: '(a|b)*a(a|b){24}'}]);
  assert.equal(wsLarge.get('big').done.type, 'error');
  assert.equal(wsLarge.get('big').done.code, 'invalid_request');
  const chatRefused = await httpGet(srv.port, '/v1/chat/completions', {model: 'm', messages: [{role: 'user',
    content: 'x'}], response_format: {type: 'json_schema', json_schema: {name: 'x', schema: {oneOf: []}}}});
  assert.equal(chatRefused.status, 400);
  assert.match(chatRefused.json().error.message, /"oneOf"/);
  console.log('ok    unsupported constraints: 400 naming the field and the keyword');

  // 9. The server is still healthy and serves an unconstrained request.
  assert.equal((await httpGet(srv.port, '/readyz')).status, 200);
  const after = await client.completions.create({model: 'm', prompt: 'x', max_tokens: 3});
  assert.equal(after.choices[0].finish_reason, 'length');
  await srv.stop();
  console.log('structured-e2e: all passed');
}

main().catch(async (e) => {
  console.error(`FAIL  ${(e && e.stack) || e}`);
  for (const inst of running) {
    console.error(`--- ${inst.name} log tail ---\n${inst.log.slice(-3000)}`);
    inst.proc.kill('SIGKILL');
  }
  process.exit(1);
});
