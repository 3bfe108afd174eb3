// Oracle for tests/test-tokenizer.cpp: GPT-2 ids from the npm package gpt-3-encoder.
// usage: node tokenizer-oracle.js <gpt-3-encoder dir> < input > output
// input: one hex-encoded byte string per line. output: one JSON object per line,
//   {"ids": [...], "utf8": "<hex>"} where utf8 is the text the encoder actually saw:
//   the bytes decoded by Node's UTF-8 decoder (WHATWG: one U+FFFD per maximal
//   ill-formed subpart) and encoded back. It equals the input for valid UTF-8.
'use strict';
const fs = require('fs');
const path = require('path');
if (process.argv.length < 3) {
  process.stderr.write('usage: node tokenizer-oracle.js <gpt-3-encoder dir>\n');
  process.exit(2);
}
const { encode } = require(path.resolve(process.argv[2]));
const lines = fs.readFileSync(0, 'utf8').split('\n');
const out = [];
for (const line of lines) {
  if (line.length === 0) continue;
  const text = Buffer.from(line, 'hex').toString('utf8');
  const ids = encode(text);
  if (ids.some(x => typeof x !== 'number')) throw new Error('oracle produced a non-id for ' + line);
  out.push(JSON.stringify({ ids, utf8: Buffer.from(text, 'utf8').toString('hex') }));
}
fs.writeFileSync(1, out.join('\n') + '\n');
