// Oracle for tests/test-hf-tokenizer.cpp: ids and decoded text from @huggingface/tokenizers
// (the JavaScript port of the Hugging Face tokenizers library) for one tokenizer.json.
// usage: node hf-tokenizer-oracle.js <tokenizer.json> < input > output
// input: one hex-encoded byte string per line. output: one JSON object per line:
//   {"utf8": hex of the text the tokenizer saw (Node's UTF-8 decoding of the bytes),
//    "ids": ids without special tokens, "ids_special": with add_special_tokens,
//    "decoded": hex of decode(ids), "decoded_skip": hex of decode(ids_special,
//    skip_special_tokens)}.
// The tokenizer gets no tokenizer_config.json, so that only the tokenizer.json pipeline
// is compared (clean_up_tokenization_spaces is a transformers option, off here).
'use strict';
const fs = require('fs');
const path = require('path');
if (process.argv.length < 4) {
  process.stderr.write('usage: node hf-tokenizer-oracle.js <npm dir> <tokenizer.json>\n');
  process.exit(2);
}
const { Tokenizer } = require(path.resolve(process.argv[2], 'node_modules/@huggingface/tokenizers'));
const tj = JSON.parse(fs.readFileSync(process.argv[3], 'utf8'));
const tok = new Tokenizer(tj, { clean_up_tokenization_spaces: false });
const hex = (s) => Buffer.from(s, 'utf8').toString('hex');
const lines = fs.readFileSync(0, 'utf8').split('\n');
const out = [];
for (const line of lines) {
  if (line.length === 0) continue;
  const text = Buffer.from(line, 'hex').toString('utf8');
  const ids = tok.encode(text, { add_special_tokens: false }).ids;
  const ids_special = tok.encode(text, { add_special_tokens: true }).ids;
  if (ids.some(x => typeof x !== 'number')) throw new Error('oracle produced a non-id for ' + line);
  const decoded = ids.length ? tok.decode(ids, { skip_special_tokens: false }) : '';
  const decoded_skip = ids_special.length ? tok.decode(ids_special, { skip_special_tokens: true }) : '';
  out.push(JSON.stringify({ utf8: hex(text), ids, ids_special, decoded: hex(decoded), decoded_skip: hex(decoded_skip) }));
}
fs.writeFileSync(1, out.join('\n') + '\n');
