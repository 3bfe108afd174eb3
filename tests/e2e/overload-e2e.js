#!/usr/bin/env node
// Overload end to end: 5,000 requests sent as fast as possible at the real inferd, whose
// admission queue holds 256.
//
//   node tests/e2e/overload-e2e.js --inferd build/bin/inferd [--requests 5000] [--rounds 2]
//
// Checks, per round: every request gets exactly one terminal event; every error is
// `overloaded` with a retry_after_ms > 0; some were served and some refused; /metrics counts
// the refusals; afterwards the queue is empty and no KV block is held. Memory: the process's
// peak resident size (VmHWM) stays under PEAK_BOUND_MIB, stated below, and a second round
// does not raise it by more than ROUND_GROWTH_MIB (nothing accumulates per request).
'use strict';
const assert = require('node:assert/strict');
const fs = require('node:fs');
const path = require('node:path');
const lib = require('./e2e-lib.js');
const {arg, waitFor, running} = lib;
const WebSocket = lib.need('ws');

const INFERD = arg('--inferd', path.join(lib.repo, 'build', 'bin', 'inferd'));
const N = parseInt(arg('--requests', '5000'), 10);
const ROUNDS = parseInt(arg('--rounds', '2'), 10);
const CONNECTIONS = 25;  // 200 requests each: under the per-connection cap (256), so only the queue refuses
const QUEUE = 256;
// The bound: synthetic:tiny (3 MB of weights), 2 workers with 32 MiB of KV cache each, 2 io
// threads. Measured peaks on the development machine are about 100 MiB; 5,000 requests whose
// state stayed alive (prompt, tokens, frames) would add far more.
const PEAK_BOUND_MIB = 256;
const ROUND_GROWTH_MIB = 16;

const get = lib.httpGet;
const metric = (text, name) => {
  const m = text.match(new RegExp(`^${name.replace(/[{}"]/g, (c) => '\\' + c)} (\\S+)$`, 'm'));
  return m ? Number(m[1]) : NaN;
};
const peakMiB = (pid) => {
  const m = fs.readFileSync(`/proc/${pid}/status`, 'utf8').match(/^VmHWM:\s+(\d+) kB$/m);
  return Number(m[1]) / 1024;
};

// All N requests written at once over CONNECTIONS sockets; resolves to the terminal frames
// by id, checking that no id gets two.
async function flood(port, round) {
  const terminal = new Map();
  const work = [];
  for (let c = 0; c < CONNECTIONS; ++c) {
    work.push(new Promise((resolve, reject) => {
      const ws = new WebSocket(`ws://127.0.0.1:${port}/v1/stream`);
      const mine = [];
      for (let i = c; i < N; i += CONNECTIONS) mine.push(`r${round}-${i}`);
      let left = mine.length;
      ws.on('open', () => {
        for (const id of mine)
          ws.send(JSON.stringify({type: 'generate', id, prompt: `overload ${id}`, max_tokens: 16, temperature: 0}));
      });
      ws.on('message', (data) => {
        const f = JSON.parse(data.toString());
        if (f.type !== 'done' && f.type !== 'error') return;
        assert.ok(!terminal.has(f.id), `${f.id}: a second terminal event ${JSON.stringify(f)}`);
        terminal.set(f.id, f);
        if (--left === 0) { ws.close(); resolve(); }
      });
      ws.on('error', reject);
      ws.on('close', (code) => { if (left > 0) reject(new Error(`connection ${c} closed (${code}) with ${left} open`)); });
    }));
  }
  await Promise.all(work);
  return terminal;
}

async function main() {
  const srv = await lib.startInferd(INFERD, 'overloaded inferd', [
    '--listen', '127.0.0.1:0', '--backend', 'cpu', '--model', 'synthetic:tiny', '--workers', '2',
    '--queue-capacity', String(QUEUE), '--kv-memory-mb', '32', '--max-running', '64',
    '--set', 'backend.cpu_threads=1', '--set', 'queue.default_timeout_ms=0', '--log-level', 'warn']);
  await waitFor('ready', async () => (await get(srv.port, '/readyz')).status === 200);
  let firstPeak = 0;
  let refusedBefore = 0;
  for (let round = 0; round < ROUNDS; ++round) {
    const t0 = Date.now();
    const terminal = await flood(srv.port, round);
    assert.equal(terminal.size, N, `round ${round}: ${terminal.size} of ${N} requests got a terminal event`);
    let done = 0, overloaded = 0;
    for (const f of terminal.values()) {
      if (f.type === 'done') { ++done; continue; }
      assert.equal(f.code, 'overloaded', `an error other than overloaded: ${JSON.stringify(f)}`);
      assert.ok(f.retry_after_ms > 0, JSON.stringify(f));
      ++overloaded;
    }
    assert.ok(done >= QUEUE, `round ${round}: only ${done} served`);
    assert.ok(overloaded > 0, `round ${round}: nothing was refused: the test did not overload the server`);
    const m = await waitFor('queue drained', async () => {
      const t = (await get(srv.port, '/metrics')).body;
      return metric(t, 'infer_queue_depth') === 0 && metric(t, 'infer_kv_blocks_used') === 0 ? t : null;
    });
    const counted = metric(m, 'infer_requests_total{outcome="overloaded"}');
    assert.equal(counted - refusedBefore, overloaded, 'infer_requests_total{outcome="overloaded"}');
    refusedBefore = counted;
    const peak = peakMiB(srv.proc.pid);
    console.log(`  round ${round}: ${N} requests in ${Date.now() - t0} ms: ${done} done, ${overloaded} overloaded; ` +
                `peak RSS ${peak.toFixed(1)} MiB (bound ${PEAK_BOUND_MIB} MiB)`);
    // Under a sanitizer (scripts/sanitize.sh) shadow memory and ASan's quarantine make the
    // resident size meaningless: the bound is checked by the plain build only.
    if (!process.env.INFER_SANITIZED)
      assert.ok(peak < PEAK_BOUND_MIB, `peak RSS ${peak.toFixed(1)} MiB over the bound of ${PEAK_BOUND_MIB} MiB`);
    if (round === 0) firstPeak = peak;
    else if (!process.env.INFER_SANITIZED) assert.ok(peak - firstPeak < ROUND_GROWTH_MIB, `peak grew from ${firstPeak} to ${peak} MiB across rounds`);
  }
  const r = await srv.stop();
  assert.equal(r.code, 0, `inferd exited with ${JSON.stringify(r)}`);
}

main().then(() => { console.log('overload e2e: ok'); process.exit(0); }, (e) => {
  console.error(`overload e2e: FAILED: ${e.stack || e}`);
  for (const inst of running) {
    console.error(`---- ${inst.name} log (tail) ----\n${inst.log.slice(-3000)}`);
    inst.proc.kill('SIGKILL');
  }
  process.exit(1);
});
