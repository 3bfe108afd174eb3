#!/usr/bin/env node
// Multi-node end to end, with real processes on loopback: a front node with no local
// workers (`inferd --workers 0 --worker-node A --worker-node B`) and two worker nodes
// (`inferd --role worker`), driven over WebSocket v1 by the npm `ws` client.
//
//   node tests/e2e/cluster-e2e.js --inferd build/bin/inferd [--requests 200] [--max-tokens 48]
//
// 1. 200 streaming greedy requests complete through the cluster with the same tokens as a
//    single-process inferd (the reference) gives.
// 2. kill -9 worker node A mid-run: every request still completes with identical tokens.
// 3. A restarted on its port rejoins: /readyz is 200, /v1/status shows it connected (2 joins).
// 4. kill -STOP worker node B mid-run (hung, not dead): the heartbeat timeout detects it (the
//    time it took is printed), its requests resume on A, all identical.
// 5. kill -CONT B: it is taken back cleanly (its old sequences dropped, it rejoins and serves
//    a new round with identical tokens) or refused; never half-used.
// 6. SIGTERM: every process exits 0.
'use strict';
const assert = require('node:assert/strict');
const {execFileSync} = require('node:child_process');
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');
const lib = require('./e2e-lib.js');
const {arg, sleep, waitFor, running} = lib;
const WebSocket = lib.need('ws');

const INFERD = arg('--inferd', path.join(lib.repo, 'build', 'bin', 'inferd'));
const N = parseInt(arg('--requests', '200'), 10);
const MAX_TOKENS = parseInt(arg('--max-tokens', '48'), 10);
// Generous for a loaded 2-core CI machine: a node silent for 1.5 s is lost.
const HEARTBEAT_MS = 100, NODE_TIMEOUT_MS = 1500;
const CLUSTER = ['--set', `cluster.heartbeat_ms=${HEARTBEAT_MS}`, '--set', `cluster.node_timeout_ms=${NODE_TIMEOUT_MS}`,
                 '--set', 'cluster.reconnect_initial_ms=100', '--set', 'cluster.reconnect_max_ms=1000'];
const COMMON = ['--backend', 'cpu', '--model', 'synthetic:tiny', '--seed', '77', '--set', 'backend.cpu_threads=1'];

// ---- processes --------------------------------------------------------------------------------

// --listen comes first: a later --listen in `args` (a restart on a fixed port) wins.
const startInferd = (name, args) => lib.startInferd(INFERD, name, ['--listen', '127.0.0.1:0', ...args]);
const startWorker = (name, listen) =>
  startInferd(name, ['--role', 'worker', ...COMMON, ...CLUSTER, ...(listen ? ['--listen', listen] : [])]);

const get = lib.httpGet;
// Before the service is attached (model loading) /v1/status has no tree yet.
const status = async (port) => {
  const r = await get(port, '/v1/status');
  const j = r.status === 200 ? r.json() : {};
  return {nodes: j.nodes || [], workers: j.workers || []};
};
const nodeOf = (st, port) => st.nodes.find((n) => n.address === `127.0.0.1:${port}`);

// ---- streaming ---------------------------------------------------------------------------------

// Runs requests 0..N-1 over `conns` WebSocket connections; `onToken(total)` sees the running
// count of tokens (to pick the moment of a fault). Resolves to each request's frames.
async function runRound(port, label, onToken = () => {}, conns = 8) {
  const results = new Array(N);
  let tokens = 0;
  const work = [];
  for (let c = 0; c < conns; ++c) {
    work.push(new Promise((resolve, reject) => {
      const ws = new WebSocket(`ws://127.0.0.1:${port}/v1/stream`);
      const mine = [];
      for (let i = c; i < N; i += conns) mine.push(i);
      let left = mine.length;
      ws.on('open', () => {
        for (const i of mine)
          ws.send(JSON.stringify({type: 'generate', id: `r${i}`, prompt: `Request ${i}: the quick brown fox`,
                                  max_tokens: MAX_TOKENS, temperature: 0, timeout_ms: 300000}));
      });
      ws.on('message', (data) => {
        const f = JSON.parse(data.toString());
        const i = parseInt(f.id.slice(1), 10);
        (results[i] = results[i] || []).push(f);
        if (f.type === 'token') onToken(++tokens);
        if (f.type === 'done' || f.type === 'error') {
          if (--left === 0) { ws.close(); resolve(); }
        }
      });
      ws.on('error', reject);
      ws.on('close', (code) => { if (left > 0) reject(new Error(`${label}: connection ${c} closed (${code}) with ${left} open`)); });
    }));
  }
  await Promise.all(work);
  return results;
}

// Every request: accepted, tokens 0..n-1 in order, exactly one terminal event, done(length).
function tokensOf(frames, i, label) {
  assert.ok(frames && frames.length, `${label}: r${i} got nothing`);
  assert.equal(frames[0].type, 'accepted', `${label}: r${i}: ${JSON.stringify(frames[0])}`);
  const terminals = frames.filter((f) => f.type === 'done' || f.type === 'error');
  assert.equal(terminals.length, 1, `${label}: r${i}: ${terminals.length} terminal events`);
  const last = frames[frames.length - 1];
  assert.equal(last.type, 'done', `${label}: r${i} ended with ${JSON.stringify(last)}`);
  assert.equal(last.finish_reason, 'length', `${label}: r${i}: ${JSON.stringify(last)}`);
  const toks = frames.filter((f) => f.type === 'token');
  toks.forEach((t, k) => assert.equal(t.index, k, `${label}: r${i}: token ${k} has index ${t.index} (gap or duplicate)`));
  assert.equal(toks.length, MAX_TOKENS, `${label}: r${i}`);
  return toks.map((t) => t.token);
}

function checkRound(results, reference, label) {
  for (let i = 0; i < N; ++i)
    assert.deepEqual(tokensOf(results[i], i, label), reference[i], `${label}: r${i} differs from the reference`);
  console.log(`  ${label}: ${N} requests done, tokens identical to the reference`);
}

// ---- the scenario ------------------------------------------------------------------------------

async function main() {
  const total = N * MAX_TOKENS;
  // The reference: one process, local workers.
  const ref = await startInferd('reference', [...COMMON, '--workers', '2']);
  await waitFor('reference ready', async () => (await get(ref.port, '/readyz')).status === 200);
  const refRound = await runRound(ref.port, 'reference');
  const reference = refRound.map((frames, i) => tokensOf(frames, i, 'reference'));
  assert.equal((await ref.stop()).code, 0);

  let A = await startWorker('worker A');
  const B = await startWorker('worker B');
  const front = await startInferd('front', [...COMMON, ...CLUSTER, '--workers', '0',
                                            '--worker-node', `127.0.0.1:${A.port}`, '--worker-node', `127.0.0.1:${B.port}`]);
  await waitFor('both nodes joined', async () => {
    const st = await status(front.port);
    return st.nodes.length === 2 && st.nodes.every((n) => n.state === 'connected') &&
           st.workers.filter((w) => w.state === 'running').length === 2;
  });
  assert.equal((await get(front.port, '/readyz')).status, 200);
  console.log('  front joined both worker nodes');

  // 1. Through the cluster.
  checkRound(await runRound(front.port, 'cluster'), reference, 'cluster');

  // 2. kill -9 A once a quarter of the tokens have streamed.
  let killed = false;
  const r2 = await runRound(front.port, 'kill -9', (n) => {
    if (!killed && n >= total / 4) { killed = true; A.proc.kill('SIGKILL'); }
  });
  assert.ok(killed, 'worker A was not killed mid-run');
  checkRound(r2, reference, 'kill -9 worker A mid-run');
  let st = await status(front.port);
  assert.equal(nodeOf(st, A.port).losses, 1, JSON.stringify(st));
  assert.ok(['down', 'connecting'].includes(nodeOf(st, A.port).state), JSON.stringify(st));
  const metrics = (await get(front.port, '/metrics')).body;
  assert.match(metrics, new RegExp(`infer_node_losses_total\\{node="127.0.0.1:${A.port}"\\} 1`));

  // 3. Restart A on its port: it rejoins.
  const portA = A.port;
  A = await startWorker('worker A (restarted)', `127.0.0.1:${portA}`);
  await waitFor('A rejoined', async () => {
    const s = await status(front.port);
    const n = nodeOf(s, portA);
    return n.state === 'connected' && n.joins === 2 &&
           s.workers.filter((w) => w.state === 'running').length === 2;
  });
  assert.equal((await get(front.port, '/readyz')).status, 200);
  console.log('  worker A restarted and rejoined (status: connected, 2 joins; readyz 200)');

  // 4. kill -STOP B mid-run: hung, not dead.
  let stoppedAt = 0, detectedAt = 0;
  const watch = (async () => {
    await waitFor('B stopped', async () => stoppedAt > 0, 120000);
    await waitFor('B detected', async () => nodeOf(await status(front.port), B.port).state !== 'connected', 60000);
    detectedAt = Date.now();
  })();
  const r4 = await runRound(front.port, 'kill -STOP', (n) => {
    if (!stoppedAt && n >= total / 4) { stoppedAt = Date.now(); B.proc.kill('SIGSTOP'); }
  });
  await watch;
  checkRound(r4, reference, 'kill -STOP worker B mid-run');
  console.log(`  worker B (stopped) detected after ${detectedAt - stoppedAt} ms ` +
              `(heartbeat ${HEARTBEAT_MS} ms, node timeout ${NODE_TIMEOUT_MS} ms)`);
  st = await status(front.port);
  assert.equal(nodeOf(st, B.port).losses, 1, JSON.stringify(st));

  // 5. kill -CONT B: taken back cleanly or refused, never half-used.
  B.proc.kill('SIGCONT');
  const back = await waitFor('B taken back or refused', async () => {
    const n = nodeOf(await status(front.port), B.port);
    return (n.state === 'connected' && n.joins === 2) || n.state === 'refused' ? n.state : null;
  }, 60000);
  console.log(`  worker B after kill -CONT: ${back}`);
  if (back === 'connected') {
    await waitFor('B serving', async () =>
      (await status(front.port)).workers.filter((w) => w.state === 'running').length === 2);
    assert.match(B.log, /lost the front node/, 'B should have noticed it lost the front and dropped its sequences');
  }
  checkRound(await runRound(front.port, 'after kill -CONT'), reference, 'after kill -CONT');

  // 6. Clean shutdown everywhere.
  for (const p of [front, A, B]) {
    const r = await p.stop();
    assert.equal(r.code, 0, `${p.name} exited with ${JSON.stringify(r)}:\n${p.log.slice(-2000)}`);
  }

  await tlsCluster(reference);
}

// 7. TLS between nodes (CA-signed certificates on both sides): a TLS front works alongside
//    a local worker; a front without TLS cannot join the node.
async function tlsCluster(reference) {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'cluster-tls-'));
  const f = (n) => path.join(dir, n);
  try {
    const ssl = (...a) => execFileSync('openssl', a, {stdio: 'ignore'});
    ssl('req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-keyout', f('ca.key'), '-out', f('ca.pem'), '-days', '2', '-subj', '/CN=test-ca');
    ssl('req', '-newkey', 'rsa:2048', '-nodes', '-keyout', f('node.key'), '-out', f('node.csr'), '-subj', '/CN=127.0.0.1');
    ssl('x509', '-req', '-in', f('node.csr'), '-CA', f('ca.pem'), '-CAkey', f('ca.key'), '-CAcreateserial', '-out', f('node.pem'), '-days', '2');
  } catch (e) {
    console.log('  (TLS skipped: no openssl tool to make certificates)');
    return;
  }
  const TLS = ['--set', `cluster.tls_cert="${f('node.pem')}"`, '--set', `cluster.tls_key="${f('node.key')}"`,
               '--set', `cluster.tls_ca="${f('ca.pem')}"`];
  const W = await startInferd('TLS worker', ['--role', 'worker', ...COMMON, ...CLUSTER, ...TLS]);
  // One local worker beside the remote one: both kinds are routed to.
  const F = await startInferd('TLS front', [...COMMON, ...CLUSTER, ...TLS, '--workers', '1', '--worker-node', `127.0.0.1:${W.port}`]);
  await waitFor('TLS node joined', async () => {
    const st = await status(F.port);
    return st.nodes.length === 1 && st.nodes[0].state === 'connected' &&
           st.workers.filter((w) => w.state === 'running').length === 2;
  });
  checkRound(await runRound(F.port, 'TLS'), reference, 'TLS, local + remote worker');
  const plain = await startInferd('plain front', [...COMMON, ...CLUSTER, '--workers', '0', '--worker-node', `127.0.0.1:${W.port}`]);
  // Its attempts fail at the handshake; it keeps retrying and never joins.
  const n = await waitFor('plain front refused', async () => {
    const x = nodeOf(await status(plain.port), W.port);
    return x && x.last_error ? x : null;
  });
  await sleep(1000);
  assert.notEqual(n.state, 'connected', `a front without TLS joined a TLS node: ${JSON.stringify(n)}`);
  assert.equal(n.joins, 0);
  console.log(`  TLS: front + local worker + TLS worker node ok; a plain front cannot join (${n.last_error})`);
  for (const p of [plain, F, W]) assert.equal((await p.stop()).code, 0, `${p.name}:\n${p.log.slice(-2000)}`);
}

main().then(() => { console.log('cluster e2e: ok'); process.exit(0); }, (e) => {
  console.error(`cluster e2e: FAILED: ${e.stack || e}`);
  for (const inst of running) {
    console.error(`---- ${inst.name} log (tail) ----\n${inst.log.slice(-3000)}`);
    inst.proc.kill('SIGCONT');
    inst.proc.kill('SIGKILL');
  }
  process.exit(1);
});
